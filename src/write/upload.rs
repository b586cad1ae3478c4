//! Uploading a staging file: one PutObject for small files, a multipart upload with
//! parts sent in parallel for large ones.

use std::io;
use std::ops::Range;
use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use tokio::sync::Semaphore;

use super::staging::StagingFile;
use crate::store::{CompletedPart, ObjectStore, PutOptions, StoreError};

const MIB: u64 = 1024 * 1024;

/// Size of the first parts, and the largest file sent in one PutObject.
pub const FIRST_PART_SIZE: u64 = 8 * MIB;
/// S3's limit on the number of parts of one upload.
pub const MAX_PARTS: i32 = 10_000;
/// Parts keep their size for this many parts, then double.
const PARTS_PER_SIZE: i32 = 1_000;
/// S3's limit on the size of one part.
const MAX_PART_SIZE: u64 = 5 * 1024 * MIB;

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

#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot read the staging file: {0}")]
    Local(#[from] io::Error),
    #[error("{0} bytes is more than S3 can store in one object")]
    TooLarge(u64),
}

impl UploadError {
    pub fn errno(&self) -> i32 {
        match self {
            UploadError::Store(e) => e.errno(),
            UploadError::Local(e) => e.raw_os_error().unwrap_or(libc::EIO),
            UploadError::TooLarge(_) => libc::EFBIG,
        }
    }
}

/// Uploads staging files, with a bound on the parts held in memory at once across
/// all uploads.
pub struct Uploader {
    store: Arc<dyn ObjectStore>,
    part_slots: Arc<Semaphore>,
    parallel_parts: usize,
}

impl Uploader {
    /// `parallel_parts`: parts one upload sends at once; `max_parts_in_memory`: the
    /// bound across all uploads.
    pub fn new(
        store: Arc<dyn ObjectStore>,
        parallel_parts: usize,
        max_parts_in_memory: usize,
    ) -> Self {
        Self {
            store,
            part_slots: Arc::new(Semaphore::new(max_parts_in_memory.max(1))),
            parallel_parts: parallel_parts.max(1),
        }
    }

    /// Upload the first `size` bytes of `file` as `key`; returns the new ETag. On
    /// failure nothing is left in the bucket: a multipart upload is aborted.
    pub async fn upload(
        &self,
        key: &str,
        file: &StagingFile,
        size: u64,
        options: &PutOptions,
    ) -> Result<String, UploadError> {
        if size <= FIRST_PART_SIZE {
            let _slot = self.part_slots.acquire().await;
            let body = file.read_at(0, size as usize).await?;
            return Ok(self.store.put(key, body, options).await?);
        }
        let parts = part_ranges(size).ok_or(UploadError::TooLarge(size))?;
        let upload_id = self.store.create_multipart(key, options).await?;
        match self.upload_parts(key, &upload_id, file, parts).await {
            Ok(done) => match self.store.complete_multipart(key, &upload_id, done).await {
                Ok(etag) => Ok(etag),
                Err(e) => {
                    self.abort(key, &upload_id).await;
                    Err(e.into())
                }
            },
            Err(e) => {
                self.abort(key, &upload_id).await;
                Err(e)
            }
        }
    }

    async fn upload_parts(
        &self,
        key: &str,
        upload_id: &str,
        file: &StagingFile,
        parts: Vec<(i32, Range<u64>)>,
    ) -> Result<Vec<CompletedPart>, UploadError> {
        let mut done: Vec<CompletedPart> = futures::stream::iter(parts)
            .map(|(number, range)| async move {
                let _slot = self.part_slots.acquire().await;
                let body = file
                    .read_at(range.start, (range.end - range.start) as usize)
                    .await?;
                let etag = self.store.upload_part(key, upload_id, number, body).await?;
                Ok::<_, UploadError>(CompletedPart { number, etag })
            })
            .buffer_unordered(self.parallel_parts)
            .try_collect()
            .await?;
        done.sort_by_key(|p| p.number);
        Ok(done)
    }

    async fn abort(&self, key: &str, upload_id: &str) {
        if let Err(e) = self.store.abort_multipart(key, upload_id).await {
            tracing::warn!("cannot abort multipart upload {upload_id} of {key}: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::{MemoryStore, Op};
    use crate::write::staging::StagingDir;

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

    async fn staged(data: &[u8]) -> (tempfile::TempDir, StagingFile) {
        let dir = tempfile::tempdir().unwrap();
        let staging = StagingDir::new(dir.path().to_path_buf()).unwrap();
        let file = staging.create("k").unwrap();
        file.write_at(0, data.to_vec()).await.unwrap();
        (dir, file)
    }

    #[tokio::test]
    async fn large_file_goes_up_as_multipart_in_order() {
        let data: Vec<u8> = (0..(17 * MIB) as usize).map(|i| (i % 251) as u8).collect();
        let (_dir, file) = staged(&data).await;
        let store = Arc::new(MemoryStore::new());
        let uploader = Uploader::new(store.clone(), 4, 8);
        let opts = PutOptions::default();
        uploader
            .upload("big", &file, data.len() as u64, &opts)
            .await
            .unwrap();
        assert_eq!(store.object("big").unwrap().body, data);
        assert_eq!(store.calls(Op::UploadPart), 3);
        assert_eq!(store.calls(Op::Put), 0);
    }

    #[tokio::test]
    async fn failed_part_aborts_and_leaves_nothing() {
        let data = vec![7u8; (9 * MIB) as usize];
        let (_dir, file) = staged(&data).await;
        let store = Arc::new(MemoryStore::new());
        store.fail_next(Op::UploadPart, StoreError::Unreachable("down".into()));
        let uploader = Uploader::new(store.clone(), 4, 8);
        let err = uploader
            .upload("big", &file, data.len() as u64, &PutOptions::default())
            .await
            .unwrap_err();
        assert_eq!(err.errno(), libc::EIO);
        assert!(store.object("big").is_none());
        assert_eq!(store.open_uploads(), 0);
    }
}
