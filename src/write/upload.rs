//! Uploads and server-side copies: one PutObject for small files, a multipart upload
//! with parts sent in parallel for large ones. Parts that nothing changed are copied
//! from the base object server-side (UploadPartCopy) instead of being sent again.

use std::ops::Range;
use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use tokio::sync::Semaphore;

use super::WriteError;
use super::staged::{Base, PartSource, Staged};
use crate::cache::BlockCache;
use crate::store::{CompletedPart, CopyOptions, ObjectStore, PutOptions};

const MIB: u64 = 1024 * 1024;

/// Size of the first parts, and the largest file sent in one PutObject.
pub const FIRST_PART_SIZE: u64 = 8 * MIB;
/// S3's limit on the number of parts of one upload.
pub const MAX_PARTS: i32 = 10_000;
/// Parts keep their size for this many parts, then double.
const PARTS_PER_SIZE: i32 = 1_000;
/// S3's limit on the size of one part, and of one CopyObject.
const MAX_PART_SIZE: u64 = 5 * 1024 * MIB;
/// The largest object CopyObject copies in one request.
pub const MAX_COPY_SIZE: u64 = MAX_PART_SIZE;
/// Parts of a multipart copy: large, since no data passes through here.
const COPY_PART_SIZE: u64 = 512 * MIB;

/// Size of part `number` (from 1): 8 MiB for the first 1,000 parts, doubling every
/// 1,000 parts after that. Small files keep small parts, and 10,000 parts reach past
/// S3's 5 TiB object limit without knowing the size in advance.
pub fn part_size(number: i32) -> u64 {
    let doublings = (number.max(1) - 1) / PARTS_PER_SIZE;
    (FIRST_PART_SIZE << doublings).min(MAX_PART_SIZE)
}

/// The parts of a file of `size` bytes, or `None` if it needs more than 10,000.
pub fn part_ranges(size: u64) -> Option<Vec<(i32, Range<u64>)>> {
    let mut parts = Vec::new();
    let mut offset = 0;
    let mut number = 1;
    while offset < size {
        if number > MAX_PARTS {
            return None;
        }
        let end = (offset + part_size(number)).min(size);
        parts.push((number, offset..end));
        offset = end;
        number += 1;
    }
    Some(parts)
}

/// One part of a multipart upload and where its bytes come from.
enum Part {
    Copy {
        from: Base,
        range: Range<u64>,
    },
    Local {
        range: Range<u64>,
        gaps: Vec<Range<u64>>,
    },
}

/// Uploads staged files, with a bound on the parts held in memory at once across
/// all uploads.
pub struct Uploader {
    store: Arc<dyn ObjectStore>,
    /// Where the bytes a staged file lacks are read from.
    cache: Arc<BlockCache>,
    part_slots: Arc<Semaphore>,
    parallel_parts: usize,
}

impl Uploader {
    /// `parallel_parts`: parts one upload sends at once; `max_parts_in_memory`: the
    /// bound across all uploads.
    pub fn new(
        store: Arc<dyn ObjectStore>,
        cache: Arc<BlockCache>,
        parallel_parts: usize,
        max_parts_in_memory: usize,
    ) -> Self {
        Self {
            store,
            cache,
            part_slots: Arc::new(Semaphore::new(max_parts_in_memory.max(1))),
            parallel_parts: parallel_parts.max(1),
        }
    }

    /// Upload `staged` as `key`; returns the new ETag. On failure nothing is left in
    /// the bucket: a multipart upload is aborted.
    pub async fn upload(
        &self,
        key: &str,
        staged: &mut Staged,
        options: &PutOptions,
    ) -> Result<String, WriteError> {
        let size = staged.size();
        let etag = if size <= FIRST_PART_SIZE {
            let _slot = self.part_slots.acquire().await;
            staged.fill(&self.cache, 0..size).await?;
            let body = staged.file().read_at(0, size as usize).await?;
            self.store.put(key, body, options).await?
        } else {
            let parts: Vec<(i32, Part)> = part_ranges(size)
                .ok_or(WriteError::TooLarge(size))?
                .into_iter()
                .map(|(n, range)| {
                    let part = match staged.part_source(range.clone()) {
                        PartSource::Copy(from) => Part::Copy { from, range },
                        PartSource::Local { gaps } => Part::Local { range, gaps },
                    };
                    (n, part)
                })
                .collect();
            let filled: Vec<Range<u64>> = parts
                .iter()
                .flat_map(|(_, p)| match p {
                    Part::Local { gaps, .. } => gaps.clone(),
                    Part::Copy { .. } => Vec::new(),
                })
                .collect();
            let etag = self.multipart(key, options, parts, Some(staged)).await?;
            staged.mark_present(&filled);
            etag
        };
        staged.uploaded(key, etag.clone());
        Ok(etag)
    }

    /// Server-side copy of `from` (`size` bytes) to `to`: one CopyObject up to
    /// 5 GiB, a multipart copy above. A multipart copy cannot keep the source's
    /// metadata, so above 5 GiB `options.replace` must carry it.
    pub async fn copy(
        &self,
        from: &str,
        to: &str,
        size: u64,
        options: &CopyOptions,
    ) -> Result<String, WriteError> {
        if size <= MAX_COPY_SIZE {
            return Ok(self.store.copy(from, to, options).await?);
        }
        let part = COPY_PART_SIZE.max(size.div_ceil(MAX_PARTS as u64));
        if part > MAX_PART_SIZE {
            return Err(WriteError::TooLarge(size));
        }
        let base = Base {
            key: from.to_string(),
            etag: options.if_match.clone(),
            len: size,
        };
        let parts = (0..size.div_ceil(part))
            .map(|i| {
                let range = i * part..((i + 1) * part).min(size);
                let from = base.clone();
                (i as i32 + 1, Part::Copy { from, range })
            })
            .collect();
        let put = options.replace.clone().unwrap_or_default();
        self.multipart(to, &put, parts, None).await
    }

    async fn multipart(
        &self,
        key: &str,
        options: &PutOptions,
        parts: Vec<(i32, Part)>,
        staged: Option<&Staged>,
    ) -> Result<String, WriteError> {
        let upload_id = self.store.create_multipart(key, options).await?;
        let result = async {
            let done = self.send_parts(key, &upload_id, parts, staged).await?;
            Ok::<_, WriteError>(self.store.complete_multipart(key, &upload_id, done).await?)
        }
        .await;
        if result.is_err()
            && let Err(e) = self.store.abort_multipart(key, &upload_id).await
        {
            tracing::warn!("cannot abort multipart upload {upload_id} of {key}: {e}");
        }
        result
    }

    async fn send_parts(
        &self,
        key: &str,
        upload_id: &str,
        parts: Vec<(i32, Part)>,
        staged: Option<&Staged>,
    ) -> Result<Vec<CompletedPart>, WriteError> {
        let mut done: Vec<CompletedPart> = futures::stream::iter(parts)
            .map(|(number, part)| async move {
                let etag = match part {
                    Part::Copy { from, range } => {
                        self.store
                            .upload_part_copy(
                                key,
                                upload_id,
                                number,
                                &from.key,
                                range,
                                from.etag.as_deref(),
                            )
                            .await?
                    }
                    Part::Local { range, gaps } => {
                        let staged = staged.ok_or_else(|| {
                            std::io::Error::other("a part to send without a staged file")
                        })?;
                        let _slot = self.part_slots.acquire().await;
                        staged.fetch(&self.cache, &gaps).await?;
                        let body = staged
                            .file()
                            .read_at(range.start, (range.end - range.start) as usize)
                            .await?;
                        self.store.upload_part(key, upload_id, number, body).await?
                    }
                };
                Ok::<_, WriteError>(CompletedPart { number, etag })
            })
            .buffer_unordered(self.parallel_parts)
            .try_collect()
            .await?;
        done.sort_by_key(|p| p.number);
        Ok(done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::CacheConfig;
    use crate::store::StoreError;
    use crate::store::memory::{MemoryStore, Op};
    use crate::write::staging::StagingDir;

    fn uploader(store: &Arc<MemoryStore>) -> Uploader {
        let config = CacheConfig {
            block_size: MIB,
            memory_bytes: 64 * MIB,
            in_flight_bytes: 64 * MIB,
            disk: None,
        };
        let cache = Arc::new(BlockCache::new(store.clone(), config).unwrap());
        Uploader::new(store.clone(), cache, 4, 8)
    }

    #[test]
    fn ten_thousand_parts_hold_five_tib() {
        let total: u64 = (1..=MAX_PARTS).map(part_size).sum();
        assert!(total >= 5 * 1024 * 1024 * MIB, "{total}");
        assert_eq!(part_size(1), 8 * MIB);
        assert_eq!(part_size(1000), 8 * MIB);
        assert_eq!(part_size(1001), 16 * MIB);
        assert!(part_ranges(5 * 1024 * 1024 * MIB).is_some());
        assert!(part_ranges(total + 1).is_none());
    }

    #[test]
    fn part_ranges_cover_the_file_exactly() {
        let parts = part_ranges(20 * MIB + 5).unwrap();
        assert_eq!(
            parts,
            vec![
                (1, 0..8 * MIB),
                (2, 8 * MIB..16 * MIB),
                (3, 16 * MIB..20 * MIB + 5)
            ]
        );
        assert!(part_ranges(0).unwrap().is_empty());
    }

    async fn staged(data: &[u8], base: Option<Base>) -> (tempfile::TempDir, Staged) {
        let dir = tempfile::tempdir().unwrap();
        let staging = StagingDir::new(dir.path().to_path_buf()).unwrap();
        let len = base.as_ref().map_or(0, |b| b.len);
        let mut file = Staged::new(staging.create("k").unwrap(), base, len);
        if !data.is_empty() {
            file.write(0, data.to_vec()).await.unwrap();
        }
        (dir, file)
    }

    fn data(len: u64) -> Vec<u8> {
        (0..len as usize).map(|i| (i % 251) as u8).collect()
    }

    #[tokio::test]
    async fn large_file_goes_up_as_multipart_in_order() {
        let data = data(17 * MIB);
        let (_dir, mut file) = staged(&data, None).await;
        let store = Arc::new(MemoryStore::new());
        let uploader = uploader(&store);
        uploader
            .upload("big", &mut file, &PutOptions::default())
            .await
            .unwrap();
        assert_eq!(store.object("big").unwrap().body, data);
        assert_eq!(store.calls(Op::UploadPart), 3);
        assert_eq!(store.calls(Op::Put), 0);
    }

    #[tokio::test]
    async fn small_change_to_a_large_object_copies_the_unchanged_parts() {
        let store = Arc::new(MemoryStore::new());
        let mut body = data(40 * MIB);
        store.insert("big", body.clone());
        let base = Base {
            key: "big".into(),
            etag: Some(store.object("big").unwrap().etag),
            len: body.len() as u64,
        };
        let (_dir, mut file) = staged(&[], Some(base)).await;
        file.write(20 * MIB + 3, b"edit".to_vec()).await.unwrap();
        body[(20 * MIB + 3) as usize..(20 * MIB + 7) as usize].copy_from_slice(b"edit");
        let uploader = uploader(&store);
        uploader
            .upload("big", &mut file, &PutOptions::default())
            .await
            .unwrap();
        assert_eq!(store.object("big").unwrap().body, body);
        // Five 8 MiB parts: four copied server-side, one sent; only that one's
        // missing bytes were downloaded.
        assert_eq!(store.calls(Op::UploadPartCopy), 4);
        assert_eq!(store.calls(Op::UploadPart), 1);
        assert_eq!(store.calls(Op::Get), 2);
    }

    #[tokio::test]
    async fn failed_part_aborts_and_leaves_nothing() {
        let data = vec![7u8; (9 * MIB) as usize];
        let (_dir, mut file) = staged(&data, None).await;
        let store = Arc::new(MemoryStore::new());
        store.fail_next(Op::UploadPart, StoreError::Unreachable("down".into()));
        let uploader = uploader(&store);
        let err = uploader
            .upload("big", &mut file, &PutOptions::default())
            .await
            .unwrap_err();
        assert_eq!(err.errno(), libc::EIO);
        assert!(store.object("big").is_none());
        assert_eq!(store.open_uploads(), 0);
    }

    #[tokio::test]
    async fn copies_above_five_gib_go_part_by_part_with_the_new_metadata() {
        // The memory store holds no 5 GiB object; the multipart path is exercised
        // through its part arithmetic on a small source instead.
        let store = Arc::new(MemoryStore::new());
        let uploader = uploader(&store);
        let err = uploader
            .copy("missing", "to", 6 * 1024 * MIB, &CopyOptions::default())
            .await
            .unwrap_err();
        assert_eq!(err.errno(), libc::ENOENT);
        assert_eq!(store.calls(Op::CreateMultipart), 1);
        assert_eq!(store.open_uploads(), 0, "the failed copy was aborted");
    }
}
