//! Uploads and server-side copies: one PutObject for small files, a multipart upload
//! with parts sent in parallel for large ones. Parts that nothing changed are copied
//! from the base object server-side (UploadPartCopy) instead of being sent again;
//! a new file's parts may have been sent while it was written ([`Stream`]).

use std::ops::Range;
use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::WriteError;
use super::staged::{Base, PartSource, Staged};
use super::staging::StagingReader;
use super::stream::Stream;
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

/// Times a part is sent before its upload fails (the SDK retries each request too).
const PART_ATTEMPTS: u32 = 3;

/// Size of part `number` (from 1): 8 MiB for the first 1,000 parts, doubling every
/// 1,000 parts after that. Small files keep small parts, and 10,000 parts reach past
/// S3's 5 TiB object limit without knowing the size in advance.
pub fn part_size(number: i32) -> u64 {
    let doublings = (number.max(1) - 1) / PARTS_PER_SIZE;
    (FIRST_PART_SIZE << doublings).min(MAX_PART_SIZE)
}

/// Where the parts of size tier `tier` (parts `tier * 1000 + 1` on) begin.
fn tier_start(tier: u32) -> u64 {
    PARTS_PER_SIZE as u64 * FIRST_PART_SIZE * ((1u64 << tier) - 1)
}

/// The bytes of a file that part `number` holds (up to its full size).
pub fn part_range(number: i32) -> Range<u64> {
    let n = number.max(1) - 1;
    let tier = (n / PARTS_PER_SIZE) as u32;
    let start = tier_start(tier) + (n % PARTS_PER_SIZE) as u64 * (FIRST_PART_SIZE << tier);
    start..start + part_size(number)
}

/// The number of the part that holds byte `offset`.
pub fn part_at(offset: u64) -> i32 {
    let mut tier = 0;
    while tier < 16 && tier_start(tier + 1) <= offset {
        tier += 1;
    }
    let within = (offset - tier_start(tier)) / (FIRST_PART_SIZE << tier);
    i32::try_from(tier as u64 * PARTS_PER_SIZE as u64 + within + 1).unwrap_or(i32::MAX)
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
    /// Sent already (while the file was written).
    Sent(String),
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

/// Send part `number` of an upload from a staging file, again after a failure
/// that may pass.
async fn send_part(
    store: Arc<dyn ObjectStore>,
    key: &str,
    upload_id: &str,
    number: i32,
    reader: &StagingReader,
    range: Range<u64>,
) -> Result<String, WriteError> {
    let body = reader
        .read_at(range.start, (range.end - range.start) as usize)
        .await?;
    let mut attempt = 1;
    loop {
        match store
            .upload_part(key, upload_id, number, body.clone())
            .await
        {
            Ok(etag) => return Ok(etag),
            Err(e) if e.is_transient() && attempt < PART_ATTEMPTS => {
                tracing::warn!("part {number} of {key} failed ({e}); sending it again");
                attempt += 1;
            }
            Err(e) => return Err(e.into()),
        }
    }
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

    /// Upload `staged` as `key`; returns the new ETag. The parts `stream` sent
    /// while the file was written are used where they are still right. On failure
    /// nothing is left in the bucket: a multipart upload is aborted.
    pub async fn upload(
        &self,
        key: &str,
        staged: &mut Staged,
        options: &PutOptions,
        stream: Option<Stream>,
    ) -> Result<String, WriteError> {
        let size = staged.size();
        let Some(ranges) = part_ranges(size) else {
            if let Some(s) = stream {
                self.abort_stream(s).await;
            }
            return Err(WriteError::TooLarge(size));
        };
        let stream = match stream {
            Some(s) if s.key == key && size > FIRST_PART_SIZE => Some(s),
            Some(s) => {
                self.abort_stream(s).await;
                None
            }
            None => None,
        };
        let etag = if size <= FIRST_PART_SIZE {
            let _slot = self.part_slots.acquire().await;
            staged.fill(&self.cache, 0..size).await?;
            let body = staged.file().read_at(0, size as usize).await?;
            self.store.put(key, body, options).await?
        } else {
            let mut stream = stream;
            if let Some(s) = &mut stream {
                while let Some(done) = s.running.join_next().await {
                    s.take(done);
                }
            }
            let parts: Vec<(i32, Part)> = ranges
                .into_iter()
                .map(|(n, range)| {
                    let sent = stream.as_ref().and_then(|s| {
                        s.sent
                            .get(&n)
                            .filter(|(r, generation, _)| {
                                *r == range && *generation == s.generation_of(n)
                            })
                            .map(|(_, _, etag)| etag.clone())
                    });
                    let part = match (sent, staged.part_source(range.clone())) {
                        (Some(etag), _) => Part::Sent(etag),
                        (None, PartSource::Copy(from)) => Part::Copy { from, range },
                        (None, PartSource::Local { gaps }) => Part::Local { range, gaps },
                    };
                    (n, part)
                })
                .collect();
            let filled: Vec<Range<u64>> = parts
                .iter()
                .flat_map(|(_, p)| match p {
                    Part::Local { gaps, .. } => gaps.clone(),
                    Part::Copy { .. } | Part::Sent(_) => Vec::new(),
                })
                .collect();
            let upload_id = match &stream {
                Some(s) => s.upload_id.clone(),
                None => self.store.create_multipart(key, options).await?,
            };
            let etag = self.complete(key, &upload_id, parts, Some(staged)).await?;
            staged.mark_present(&filled);
            etag
        };
        staged.uploaded(key, etag.clone());
        Ok(etag)
    }

    /// Start sending the parts of a new file while it is written.
    pub async fn start_stream(&self, key: &str, options: PutOptions) -> Result<Stream, WriteError> {
        let created = std::time::SystemTime::now();
        let upload_id = self.store.create_multipart(key, &options).await?;
        Ok(Stream::new(key.to_string(), upload_id, options, created))
    }

    /// The file of `stream` is now `size` bytes, with bytes `written` changed: send
    /// in the background the parts the writer has moved past, as far as this
    /// file's share and the memory bound allow.
    pub fn stream_written(
        &self,
        stream: &mut Stream,
        reader: &StagingReader,
        size: u64,
        written: Range<u64>,
    ) {
        stream.touched(written);
        stream.collect();
        while stream.running.len() < self.parallel_parts {
            let number = stream.next;
            let range = part_range(number);
            // The writer is past this part (a part after the last is not sent yet:
            // it may still be shorter).
            if range.end >= size {
                break;
            }
            let Ok(slot) = self.part_slots.clone().try_acquire_owned() else {
                break;
            };
            stream.next += 1;
            let generation = stream.generation_of(number);
            let job = PartJob {
                store: self.store.clone(),
                key: stream.key.clone(),
                upload_id: stream.upload_id.clone(),
                reader: reader.clone(),
                slot,
            };
            stream.running.spawn(async move {
                let result = send_part(
                    job.store,
                    &job.key,
                    &job.upload_id,
                    number,
                    &job.reader,
                    range.clone(),
                )
                .await;
                drop(job.slot);
                (number, range, generation, result)
            });
        }
    }

    /// Give up a stream: its parts in flight stop and the upload is aborted.
    pub async fn abort_stream(&self, mut stream: Stream) {
        stream.running.abort_all();
        while stream.running.join_next().await.is_some() {}
        self.abort(&stream.key, &stream.upload_id).await;
    }

    async fn abort(&self, key: &str, upload_id: &str) {
        if let Err(e) = self.store.abort_multipart(key, upload_id).await {
            tracing::warn!("cannot abort multipart upload {upload_id} of {key}: {e}");
        }
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
        let upload_id = self.store.create_multipart(to, &put).await?;
        self.complete(to, &upload_id, parts, None).await
    }

    /// Send `parts` and complete the upload; abort it on failure.
    async fn complete(
        &self,
        key: &str,
        upload_id: &str,
        parts: Vec<(i32, Part)>,
        staged: Option<&Staged>,
    ) -> Result<String, WriteError> {
        let result = async {
            let done = self.send_parts(key, upload_id, parts, staged).await?;
            Ok::<_, WriteError>(self.store.complete_multipart(key, upload_id, done).await?)
        }
        .await;
        if result.is_err() {
            self.abort(key, upload_id).await;
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
                    Part::Sent(etag) => etag,
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
                        let reader = staged.file().reader();
                        send_part(self.store.clone(), key, upload_id, number, &reader, range)
                            .await?
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

/// What a background part upload owns.
struct PartJob {
    store: Arc<dyn ObjectStore>,
    key: String,
    upload_id: String,
    reader: StagingReader,
    /// Its share of the memory bound, held until the part is sent.
    slot: OwnedSemaphorePermit,
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
    fn part_numbers_and_offsets_agree() {
        let mut expected_start = 0;
        for n in 1..=MAX_PARTS {
            let r = part_range(n);
            assert_eq!(r.start, expected_start, "part {n}");
            assert_eq!(r.end - r.start, part_size(n));
            assert_eq!((part_at(r.start), part_at(r.end - 1)), (n, n));
            expected_start = r.end;
        }
    }

    #[tokio::test]
    async fn a_part_that_fails_once_is_sent_again() {
        let data = data(20 * MIB);
        let (_dir, mut file) = staged(&data, None).await;
        let store = Arc::new(MemoryStore::new());
        store.fail_next(Op::UploadPart, StoreError::Unreachable("reset".into()));
        uploader(&store)
            .upload("big", &mut file, &PutOptions::default(), None)
            .await
            .unwrap();
        assert_eq!(store.object("big").unwrap().body, data);
        assert_eq!(store.calls(Op::UploadPart), 4, "three parts, one twice");
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
            .upload("big", &mut file, &PutOptions::default(), None)
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
            .upload("big", &mut file, &PutOptions::default(), None)
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
    async fn a_part_that_keeps_failing_aborts_and_leaves_nothing() {
        let data = vec![7u8; (9 * MIB) as usize];
        let (_dir, mut file) = staged(&data, None).await;
        let store = Arc::new(MemoryStore::new());
        // Both parts fail every attempt.
        for _ in 0..2 * PART_ATTEMPTS {
            store.fail_next(Op::UploadPart, StoreError::Unreachable("down".into()));
        }
        let uploader = uploader(&store);
        let err = uploader
            .upload("big", &mut file, &PutOptions::default(), None)
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
