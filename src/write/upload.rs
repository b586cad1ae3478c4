//! Uploads and server-side copies: one PutObject for small files, a multipart upload
//! with parts sent in parallel for large ones. Parts that nothing changed are copied
//! from the base object server-side (UploadPartCopy) instead of being sent again;
//! a new file's parts may have been sent while it was written ([`Stream`]).

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::WriteError;
use super::staged::{Base, PartSource, Staged};
use super::staging::StagingReader;
use super::stream::{Filled, Stream};
use crate::cache::BlockCache;
use crate::store::{
    CompletedPart, Condition, CopyOptions, Crc32c, ObjectStore, PartTag, PutOptions, StoreError,
};

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

/// Times a part is sent before its upload fails, over a store that does not
/// retry itself (over one that does, once: it has retried for `--retry-for`).
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
        /// Its bytes, collected as the file was written.
        filled: Option<Filled>,
    },
    /// Sent already (while the file was written, or by an earlier attempt).
    Sent,
}

/// What an upload writes, besides the staged file's bytes.
pub struct UploadJob<'a> {
    pub key: &'a str,
    pub options: &'a PutOptions,
    /// What the object at `key` must be for the upload to replace it.
    pub condition: Option<&'a Condition>,
    /// Check the condition with a HEAD right before completing a multipart
    /// upload too (for servers that ignore it): the window in which another
    /// writer's change is still replaced shrinks to the completion itself.
    pub check_before_complete: bool,
    /// Told of the multipart upload when it starts and each time S3 confirms a
    /// part (the journal notes them).
    pub on_part: &'a (dyn Fn(&Stream) + Send + Sync),
}

/// A failed upload: why, and the multipart upload with the parts S3 confirmed,
/// for the next attempt.
pub struct Failed {
    pub error: WriteError,
    pub stream: Option<Stream>,
}

impl Failed {
    fn new(error: WriteError, stream: Option<Stream>) -> Self {
        Self { error, stream }
    }
}

/// Uploads staged files, with a bound on the parts held in memory at once across
/// all uploads.
pub struct Uploader {
    store: Arc<dyn ObjectStore>,
    /// Where the bytes a staged file lacks are read from.
    cache: Arc<BlockCache>,
    part_slots: Arc<Semaphore>,
    /// Memory for parts collected as files are written: apart from `part_slots`,
    /// since a file written slowly holds its part for long, and uploads must not
    /// wait for it.
    fill_slots: Arc<Semaphore>,
    parallel_parts: usize,
}

/// Where a part's bytes come from.
enum PartBody {
    File(StagingReader, Range<u64>),
    /// Collected as the file was written, with their CRC32C.
    Memory(Bytes, Crc32c),
}

/// The upload a part goes into.
#[derive(Clone, Copy)]
struct Into<'a> {
    key: &'a str,
    upload_id: &'a str,
    /// Created with checksums: the part carries its CRC32C.
    crc32c: bool,
}

/// Send part `number` of an upload, again after a failure that may pass unless
/// the store has retried it already.
async fn send_part(
    store: Arc<dyn ObjectStore>,
    into: Into<'_>,
    number: i32,
    body: PartBody,
) -> Result<PartTag, WriteError> {
    let Into {
        key,
        upload_id,
        crc32c,
    } = into;
    let (body, collected) = match body {
        PartBody::Memory(bytes, crc) => (bytes, Some(crc)),
        PartBody::File(reader, range) => {
            let bytes = reader
                .read_at(range.start, (range.end - range.start) as usize)
                .await?;
            (bytes, None)
        }
    };
    // A part read back from the file is checksummed only for an upload that wants it.
    let crc32c = crc32c.then(|| collected.unwrap_or_else(|| Crc32c::of(&body)));
    let attempts = if store.retries_itself() {
        1
    } else {
        PART_ATTEMPTS
    };
    let mut attempt = 1;
    loop {
        match store
            .upload_part(key, upload_id, number, body.clone(), crc32c)
            .await
        {
            Ok(etag) => return Ok(PartTag { etag, crc32c }),
            Err(e) if e.is_transient() && attempt < attempts => {
                tracing::warn!("part {number} of {key} failed ({e}); sending it again");
                attempt += 1;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

impl Uploader {
    /// `parallel_parts`: parts one upload sends at once; `max_parts_in_memory`: the
    /// bound across all uploads, half of it for parts collected as they are
    /// written.
    pub fn new(
        store: Arc<dyn ObjectStore>,
        cache: Arc<BlockCache>,
        parallel_parts: usize,
        max_parts_in_memory: usize,
    ) -> Self {
        let fill = max_parts_in_memory / 2;
        Self {
            store,
            cache,
            part_slots: Arc::new(Semaphore::new((max_parts_in_memory - fill).max(1))),
            fill_slots: Arc::new(Semaphore::new(fill)),
            parallel_parts: parallel_parts.max(1),
        }
    }

    /// Wait until a part could be sent (a slot of the uploads' memory is free).
    pub async fn wait_for_part_slot(&self) {
        drop(self.part_slots.acquire().await);
    }

    /// Room for one part's bytes in memory, out of the uploads' budget (for
    /// reading a part's worth of a file outside an upload).
    pub async fn part_memory(&self) -> Option<tokio::sync::SemaphorePermit<'_>> {
        self.part_slots.acquire().await.ok()
    }

    /// Upload `staged` as `job.key`; returns the new ETag. The parts `stream`
    /// holds (sent while the file was written, or by an earlier attempt) are used
    /// where they are still right. A failed multipart upload is not aborted: it
    /// comes back in [`Failed`] with the parts S3 confirmed, for the next attempt.
    pub async fn upload(
        &self,
        job: UploadJob<'_>,
        staged: &mut Staged,
        stream: Option<Stream>,
    ) -> Result<String, Failed> {
        let size = staged.size();
        // Offloaded bytes are only in the parts of this file's upload: that upload
        // is completed, or nothing is (and it is kept).
        if let Some(gone) = staged.offloaded().next() {
            let holds = stream
                .as_ref()
                .is_some_and(|s| s.key == job.key && staged.offloaded().all(|r| s.holds(&r)));
            if !holds {
                return Err(Failed::new(WriteError::Offloaded(gone), stream));
            }
        }
        let Some(ranges) = part_ranges(size) else {
            let stream = match stream {
                Some(s) if !staged.has_offloaded() => {
                    self.abort_stream(s).await;
                    None
                }
                kept => kept,
            };
            return Err(Failed::new(WriteError::TooLarge(size), stream));
        };
        let stream = match stream {
            Some(s) if s.key == job.key && size > FIRST_PART_SIZE => Some(s),
            Some(s) => {
                self.abort_stream(s).await;
                None
            }
            None => None,
        };
        if size <= FIRST_PART_SIZE {
            let put = async {
                let _slot = self.part_slots.acquire().await;
                staged.fill(&self.cache, 0..size).await?;
                let body = staged.file().read_at(0, size as usize).await?;
                Ok::<_, WriteError>(
                    self.store
                        .put(job.key, body, job.options, job.condition)
                        .await?,
                )
            };
            let etag = put.await.map_err(|e| Failed::new(e, None))?;
            staged.uploaded(job.key, etag.clone());
            return Ok(etag);
        }
        let mut stream = match stream {
            Some(s) => s,
            None => match self.store.create_multipart(job.key, job.options).await {
                Ok(upload) => {
                    let mut s = Stream::new(
                        job.key.to_string(),
                        upload.id,
                        upload.crc32c,
                        job.options.clone(),
                        std::time::SystemTime::now(),
                    );
                    s.streaming = false;
                    s
                }
                Err(e) => return Err(Failed::new(e.into(), None)),
            },
        };
        (job.on_part)(&stream);
        while let Some(done) = stream.running.join_next().await {
            stream.take(done);
        }
        let mut filled = stream.take_filled();
        let parts: Vec<(i32, Part)> = ranges
            .iter()
            .map(|(n, range)| {
                let sent = stream.sent.get(n).is_some_and(|(r, generation, _)| {
                    r == range && *generation == stream.generation_of(*n)
                });
                let part = match (sent, staged.part_source(range.clone())) {
                    (true, _) => Part::Sent,
                    (false, PartSource::Copy(from)) => Part::Copy {
                        from,
                        range: range.clone(),
                    },
                    (false, PartSource::Local { gaps }) => Part::Local {
                        range: range.clone(),
                        filled: filled.remove(n).filter(|f| {
                            gaps.is_empty() && f.bytes.len() as u64 == range.end - range.start
                        }),
                        gaps,
                    },
                };
                (*n, part)
            })
            .collect();
        let filled: Vec<Range<u64>> = parts
            .iter()
            .flat_map(|(_, p)| match p {
                Part::Local { gaps, .. } => gaps.clone(),
                Part::Copy { .. } | Part::Sent => Vec::new(),
            })
            .collect();
        if let Err(e) = self.send_into(&mut stream, &job, parts, staged).await {
            return Err(Failed::new(e, Some(stream)));
        }
        let done: Option<Vec<CompletedPart>> = ranges
            .iter()
            .map(|(n, _)| {
                let (_, _, tag) = stream.sent.get(n)?;
                Some(CompletedPart {
                    number: *n,
                    tag: tag.clone(),
                })
            })
            .collect();
        let Some(done) = done else {
            let missing = std::io::Error::other("a part of the upload was not sent");
            return Err(Failed::new(missing.into(), Some(stream)));
        };
        if let Some(condition) = job.condition
            && job.check_before_complete
        {
            let now = match self.store.head(job.key).await {
                Ok(head) => head.etag,
                Err(StoreError::NotFound) => None,
                Err(e) => return Err(Failed::new(e.into(), Some(stream))),
            };
            if !condition.holds_for(now.as_deref()) {
                let changed = StoreError::PreconditionFailed.into();
                return Err(Failed::new(changed, Some(stream)));
            }
        }
        match self
            .store
            .complete_multipart(job.key, &stream.upload_id, done, job.condition)
            .await
        {
            Ok(etag) => {
                staged.mark_present(&filled);
                staged.uploaded(job.key, etag.clone());
                Ok(etag)
            }
            Err(StoreError::Conflict) if staged.offloaded().next().is_some() => {
                Err(Failed::new(StoreError::Conflict.into(), Some(stream)))
            }
            Err(StoreError::Conflict) => {
                // The object changed while the upload ran: this upload can never
                // complete, the next attempt starts another.
                self.abort_stream(stream).await;
                Err(Failed::new(StoreError::Conflict.into(), None))
            }
            Err(e) => Err(Failed::new(e.into(), Some(stream))),
        }
    }

    /// Send `parts` of `stream`'s upload that it does not have yet, noting each
    /// in the stream as S3 confirms it.
    async fn send_into(
        &self,
        stream: &mut Stream,
        job: &UploadJob<'_>,
        parts: Vec<(i32, Part)>,
        staged: &Staged,
    ) -> Result<(), WriteError> {
        let upload_id = stream.upload_id.clone();
        let crc32c = stream.crc32c;
        let key = job.key;
        let sending = futures::stream::iter(parts)
            .filter_map(|(number, part)| async move {
                match part {
                    Part::Sent => None,
                    Part::Copy { from, range } => {
                        Some((number, range, Some(from), Vec::new(), None))
                    }
                    Part::Local {
                        range,
                        gaps,
                        filled,
                    } => Some((number, range, None, gaps, filled)),
                }
            })
            .map(|(number, range, from, gaps, filled)| {
                let into = Into {
                    key,
                    upload_id: upload_id.as_str(),
                    crc32c,
                };
                async move {
                    let tag = match from {
                        Some(from) => {
                            self.store
                                .upload_part_copy(
                                    key,
                                    into.upload_id,
                                    number,
                                    &from.key,
                                    range.clone(),
                                    from.etag.as_deref(),
                                )
                                .await?
                        }
                        None => {
                            let (body, _slot) = match filled {
                                Some(f) => (PartBody::Memory(f.bytes, f.crc32c), Some(f.slot)),
                                None => {
                                    let slot = self.part_slots.clone().acquire_owned().await.ok();
                                    staged.fetch(&self.cache, &gaps).await?;
                                    let reader = staged.file().reader();
                                    (PartBody::File(reader, range.clone()), slot)
                                }
                            };
                            send_part(self.store.clone(), into, number, body).await?
                        }
                    };
                    Ok::<_, WriteError>((number, range, tag))
                }
            })
            .buffer_unordered(self.parallel_parts);
        let mut sending = std::pin::pin!(sending);
        while let Some(sent) = sending.next().await {
            let (number, range, tag) = sent?;
            let generation = stream.generation_of(number);
            stream.sent.insert(number, (range, generation, tag));
            (job.on_part)(stream);
        }
        Ok(())
    }

    /// Which of the parts an earlier run noted S3 still has (the others are sent
    /// again); `false` if the upload itself is gone (completed or aborted).
    pub async fn verify(&self, stream: &mut Stream) -> Result<bool, StoreError> {
        if !stream.unverified {
            return Ok(true);
        }
        let listed = match self.store.list_parts(&stream.key, &stream.upload_id).await {
            Ok(listed) => listed,
            Err(StoreError::NotFound) => return Ok(false),
            Err(e) => return Err(e),
        };
        // A part is taken as S3 has it by its ETag, and by its checksum where
        // both sides have one.
        stream.sent.retain(|number, (range, _, tag)| {
            listed.iter().any(|p| {
                p.number == *number
                    && p.tag.etag == tag.etag
                    && (p.tag.crc32c.is_none()
                        || tag.crc32c.is_none()
                        || p.tag.crc32c == tag.crc32c)
                    && p.size == range.end - range.start
            })
        });
        stream.unverified = false;
        Ok(true)
    }

    /// Start sending the parts of a new file while it is written.
    pub async fn start_stream(&self, key: &str, options: PutOptions) -> Result<Stream, WriteError> {
        let created = std::time::SystemTime::now();
        let upload = self.store.create_multipart(key, &options).await?;
        Ok(Stream::new(
            key.to_string(),
            upload.id,
            upload.crc32c,
            options,
            created,
        ))
    }

    /// The file of `stream` is now `size` bytes, with bytes `written` changed (to
    /// `data` for a write): send in the background the parts the writer has moved
    /// past, as far as this file's share and the memory bound allow.
    pub fn stream_written(
        &self,
        stream: &mut Stream,
        reader: &StagingReader,
        size: u64,
        written: Range<u64>,
        data: Option<&[u8]>,
    ) {
        stream.touched(written.clone());
        stream.keep(written, data, &self.fill_slots);
        self.send_ready(stream, reader, size);
    }

    /// Take the results of `stream`'s parts that ended, and send in the
    /// background the parts the writer of the file (now `size` bytes) has moved
    /// past, as far as this file's share and the memory bound allow.
    pub fn send_ready(&self, stream: &mut Stream, reader: &StagingReader, size: u64) {
        stream.collect();
        while stream.streaming && stream.running.len() < self.parallel_parts {
            let number = stream.next;
            let range = part_range(number);
            // The writer is past this part (a part after the last is not sent yet:
            // it may still be shorter).
            if range.end >= size {
                break;
            }
            let (body, slot) = match stream.filled.remove(&number) {
                Some(f) => (PartBody::Memory(f.bytes, f.crc32c), f.slot),
                None => match self.part_slots.clone().try_acquire_owned() {
                    Ok(slot) => (PartBody::File(reader.clone(), range.clone()), slot),
                    Err(_) => break,
                },
            };
            stream.next += 1;
            let generation = stream.generation_of(number);
            let job = PartJob {
                store: self.store.clone(),
                key: stream.key.clone(),
                upload_id: stream.upload_id.clone(),
                crc32c: stream.crc32c,
                body,
                slot,
            };
            stream.running.spawn(async move {
                let into = Into {
                    key: &job.key,
                    upload_id: &job.upload_id,
                    crc32c: job.crc32c,
                };
                let result = send_part(job.store, into, number, job.body).await;
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
        match self.store.abort_multipart(key, upload_id).await {
            // Completed or aborted already.
            Ok(()) | Err(StoreError::NotFound) => {}
            Err(e) => tracing::warn!("cannot abort multipart upload {upload_id} of {key}: {e}"),
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
        let ranges: Vec<(i32, Range<u64>)> = (0..size.div_ceil(part))
            .map(|i| (i as i32 + 1, i * part..((i + 1) * part).min(size)))
            .collect();
        let put = options.replace.clone().unwrap_or_default();
        let upload_id = self.store.create_multipart(to, &put).await?.id;
        let result = async {
            let mut done: Vec<CompletedPart> = futures::stream::iter(ranges)
                .map(|(number, range)| {
                    let (base, upload_id) = (&base, upload_id.as_str());
                    async move {
                        let tag = self
                            .store
                            .upload_part_copy(
                                to,
                                upload_id,
                                number,
                                &base.key,
                                range,
                                base.etag.as_deref(),
                            )
                            .await?;
                        Ok::<_, StoreError>(CompletedPart { number, tag })
                    }
                })
                .buffer_unordered(self.parallel_parts)
                .try_collect()
                .await?;
            done.sort_by_key(|p| p.number);
            self.store
                .complete_multipart(to, &upload_id, done, None)
                .await
        }
        .await;
        if result.is_err() {
            self.abort(to, &upload_id).await;
        }
        Ok(result?)
    }
}

/// What a background part upload owns.
struct PartJob {
    store: Arc<dyn ObjectStore>,
    key: String,
    upload_id: String,
    crc32c: bool,
    body: PartBody,
    /// Its share of the memory bound, held until the part is sent.
    slot: OwnedSemaphorePermit,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::CacheConfig;
    use crate::store::StoreError;
    use crate::store::memory::{MemoryStore, Op};
    use crate::store::retry::{RetrySettings, RetryingStore};
    use crate::write::staging::StagingDir;
    use std::time::Duration;

    fn job(key: &str) -> UploadJob<'_> {
        static OPTIONS: std::sync::LazyLock<PutOptions> =
            std::sync::LazyLock::new(PutOptions::default);
        UploadJob {
            key,
            options: &OPTIONS,
            condition: None,
            check_before_complete: false,
            on_part: &|_| {},
        }
    }

    fn uploader(store: &Arc<MemoryStore>) -> Uploader {
        uploader_over(store.clone())
    }

    fn uploader_over(store: Arc<dyn ObjectStore>) -> Uploader {
        let config = CacheConfig {
            block_size: MIB,
            memory_bytes: 64 * MIB,
            in_flight_bytes: 64 * MIB,
            disk: None,
        };
        let cache = Arc::new(BlockCache::new(store.clone(), config).unwrap());
        Uploader::new(store, cache, 4, 8)
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
            .upload(job("big"), &mut file, None)
            .await
            .map_err(|f| f.error)
            .unwrap();
        assert_eq!(store.object("big").unwrap().body, data);
        assert_eq!(store.calls(Op::UploadPart), 4, "three parts, one twice");
    }

    /// Over the retrying store, a part that keeps failing fails its upload once
    /// `--retry-for` has passed, not after sending it again for as long twice.
    #[tokio::test(start_paused = true)]
    async fn over_a_retrying_store_a_failing_part_ends_the_upload_after_the_retry_time() {
        let data = data(20 * MIB);
        let (_dir, mut file) = staged(&data, None).await;
        let memory = MemoryStore::new();
        for _ in 0..10_000 {
            memory.fail_next(Op::UploadPart, StoreError::Unreachable("down".into()));
        }
        let retry_for = Duration::from_secs(10);
        let settings = RetrySettings {
            retry_for,
            ..RetrySettings::default()
        };
        let uploader = uploader_over(Arc::new(RetryingStore::new(memory, settings)));
        let started = tokio::time::Instant::now();
        let failed = uploader.upload(job("big"), &mut file, None).await.err();
        let spent = started.elapsed();
        assert_eq!(failed.map(|f| f.error.errno()), Some(libc::EIO));
        assert!(
            spent >= retry_for && spent < 2 * retry_for,
            "the upload failed after {spent:?}, with --retry-for {retry_for:?}"
        );
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
        let mut file = Staged::new(staging.create("k", false).unwrap(), base, len);
        if !data.is_empty() {
            file.write(0, Bytes::copy_from_slice(data)).await.unwrap();
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
            .upload(job("big"), &mut file, None)
            .await
            .map_err(|f| f.error)
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
        file.write(20 * MIB + 3, Bytes::from_static(b"edit"))
            .await
            .unwrap();
        body[(20 * MIB + 3) as usize..(20 * MIB + 7) as usize].copy_from_slice(b"edit");
        let uploader = uploader(&store);
        uploader
            .upload(job("big"), &mut file, None)
            .await
            .map_err(|f| f.error)
            .unwrap();
        assert_eq!(store.object("big").unwrap().body, body);
        // Five 8 MiB parts: four copied server-side, one sent; only that one's
        // missing bytes were downloaded.
        assert_eq!(store.calls(Op::UploadPartCopy), 4);
        assert_eq!(store.calls(Op::UploadPart), 1);
        assert_eq!(store.calls(Op::Get), 2);
    }

    #[tokio::test]
    async fn a_failed_upload_leaves_no_object_and_keeps_its_parts_for_the_next_attempt() {
        let data = data(20 * MIB);
        let (_dir, mut file) = staged(&data, None).await;
        let store = Arc::new(MemoryStore::new());
        let failed = two_parts_sent(&store, &mut file).await;
        assert_eq!(failed.error.errno(), libc::EIO);
        assert!(store.object("big").is_none());
        let stream = failed.stream.expect("the upload is kept");
        assert_eq!(store.open_uploads(), 1);
        assert_eq!(stream.sent_parts().count(), 2);
        let sends = store.calls(Op::UploadPart);
        let etag = uploader(&store)
            .upload(job("big"), &mut file, Some(stream))
            .await
            .map_err(|f| f.error)
            .unwrap();
        assert_eq!(store.object("big").unwrap().body, data);
        assert_eq!(store.object("big").unwrap().etag, etag);
        assert_eq!(
            store.calls(Op::UploadPart) - sends,
            1,
            "only the part S3 lacked is sent again"
        );
        assert_eq!(store.open_uploads(), 0);
    }

    /// A failed upload of `file` as "big" that S3 has the first two parts of:
    /// one part at a time, the third fails every attempt.
    async fn two_parts_sent(store: &Arc<MemoryStore>, file: &mut Staged) -> Failed {
        let cache = uploader(store).cache.clone();
        let uploader = Uploader::new(store.clone(), cache, 1, 8);
        let fail_third = |s: &Stream| {
            if s.sent_parts().count() == 2 {
                for _ in 0..PART_ATTEMPTS {
                    store.fail_next(Op::UploadPart, StoreError::Unreachable("down".into()));
                }
            }
        };
        let job_failing = UploadJob {
            on_part: &fail_third,
            ..job("big")
        };
        uploader
            .upload(job_failing, file, None)
            .await
            .err()
            .unwrap()
    }

    /// `stream` as the journal gives it back to the next run, its parts' tags
    /// passed through `tag`.
    fn as_resumed(stream: &Stream, tag: impl Fn(i32, &PartTag) -> PartTag) -> Stream {
        let parts: Vec<_> = stream
            .sent_parts()
            .map(|(n, range, t)| (n, range, tag(n, t)))
            .collect();
        let options = stream.options().clone();
        let (key, id) = (stream.key().to_string(), stream.upload_id().to_string());
        Stream::resumed(key, id, stream.crc32c(), options, parts)
    }

    #[tokio::test]
    async fn a_resumed_upload_takes_a_part_as_sent_only_if_s3_has_its_checksum() {
        let data = data(20 * MIB);
        let (_dir, mut file) = staged(&data, None).await;
        let store = Arc::new(MemoryStore::new());
        let stream = two_parts_sent(&store, &mut file).await.stream.unwrap();
        assert!(stream.crc32c());
        // The journal says part 2 had other bytes than S3 holds for it.
        let mut resumed = as_resumed(&stream, |n, t| PartTag {
            crc32c: if n == 2 {
                Some(Crc32c::of(b"other"))
            } else {
                t.crc32c
            },
            ..t.clone()
        });
        let uploader = uploader(&store);
        assert!(uploader.verify(&mut resumed).await.unwrap());
        let kept: Vec<i32> = resumed.sent_parts().map(|(n, _, _)| n).collect();
        assert_eq!(kept, vec![1]);
        let sends = store.calls(Op::UploadPart);
        uploader
            .upload(job("big"), &mut file, Some(resumed))
            .await
            .map_err(|f| f.error)
            .unwrap();
        assert_eq!(store.object("big").unwrap().body, data);
        assert_eq!(store.calls(Op::UploadPart) - sends, 2, "parts 2 and 3");
    }

    #[tokio::test]
    async fn an_upload_begun_without_checksums_is_finished_without() {
        // As an earlier version of s3mount, or a server without checksums, left
        // it: the store refuses a part with a checksum in such an upload.
        let data = data(20 * MIB);
        let (_dir, mut file) = staged(&data, None).await;
        let store = Arc::new(MemoryStore::new());
        store.no_checksums(true);
        let stream = two_parts_sent(&store, &mut file).await.stream.unwrap();
        store.no_checksums(false);
        assert!(!stream.crc32c());
        let mut resumed = as_resumed(&stream, |_, t| t.clone());
        let uploader = uploader(&store);
        assert!(uploader.verify(&mut resumed).await.unwrap());
        uploader
            .upload(job("big"), &mut file, Some(resumed))
            .await
            .map_err(|f| f.error)
            .unwrap();
        assert_eq!(store.object("big").unwrap().body, data);
    }

    #[tokio::test]
    async fn a_condition_that_fails_leaves_the_object_alone() {
        let store = Arc::new(MemoryStore::new());
        store.insert("k", "theirs");
        let (_dir, mut file) = staged(b"ours", None).await;
        let condition = Condition::Absent;
        let job = UploadJob {
            condition: Some(&condition),
            ..job("k")
        };
        let failed = uploader(&store)
            .upload(job, &mut file, None)
            .await
            .err()
            .unwrap();
        assert!(matches!(
            failed.error,
            WriteError::Store(StoreError::PreconditionFailed)
        ));
        assert_eq!(&store.object("k").unwrap().body[..], b"theirs");
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
