//! A multipart upload of a file under way: streaming a new file's parts while it
//! is being written, and the parts S3 confirmed, kept across a failed close and
//! (through the journal) a restart so that they are not sent again.
//!
//! Once a new (or emptied) file grows past two parts, a multipart upload starts and
//! each part is sent in the background as soon as the writer has moved past it, a
//! few at a time per file, within the uploader's memory bound. A later write into
//! a part already sent makes it stale; at close the stale, missing and last parts
//! are sent and the upload completed, so close() waits only for what is left.
//!
//! A part written in order, from its start to its end, is collected in memory as it
//! is written (within the uploader's memory bound), its CRC32C computed as the
//! bytes pass, and sent from there: the usual `cp` of a large file does not read
//! its parts back from the staging file.
//!
//! A multipart upload takes its metadata when it starts, so the stream carries the
//! file's mode and owner but no times: the object's time is its Last-Modified,
//! the moment it was completed (see [`super::upload::Uploader::finish_stream`]).

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::{Bytes, BytesMut};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use super::WriteError;
use super::upload::{part_at, part_range};

use crate::store::checksum::Crc32cDigest;
use crate::store::{Crc32c, PartTag, PutOptions};

/// What a part's background upload returns: its number, the range it sent, the
/// write generation of that range when it started, and its ETag and CRC32C.
pub(super) type PartResult = (i32, Range<u64>, u64, Result<PartTag, WriteError>);

pub struct Stream {
    pub(super) key: String,
    pub(super) upload_id: String,
    /// The upload was created with CRC32C checksums: its parts carry theirs.
    pub(super) crc32c: bool,
    /// The metadata the upload was created with.
    pub(super) options: PutOptions,
    /// Parts sent: their range and tag, valid while their generation holds.
    pub(super) sent: BTreeMap<i32, (Range<u64>, u64, PartTag)>,
    pub(super) running: JoinSet<PartResult>,
    /// Bumped for a part each time a write touches it.
    pub(super) generation: HashMap<i32, u64>,
    /// The next part to send while the file is written (parts made stale after
    /// they were sent wait for the close).
    pub(super) next: i32,
    /// When the request creating the upload was sent: S3 may date the object
    /// from its creation.
    pub(super) created: SystemTime,
    /// Parts may be sent while the file is written (a new file, all of whose
    /// bytes are local); otherwise parts go only at upload.
    pub(super) streaming: bool,
    /// `sent` came from the journal of an earlier run: S3 must be asked which
    /// of them it still has before they are used.
    pub(super) unverified: bool,
    /// The part being written in order, collected so far.
    filling: Option<Filling>,
    /// Parts written whole and in order, not sent yet: their bytes as they are in
    /// the file.
    pub(super) filled: BTreeMap<i32, Filled>,
    /// Parts sent while the file was written that failed (they go at close).
    failed: u32,
}

/// A part's bytes in memory and their CRC32C, holding its share of the
/// uploader's memory bound.
pub(super) struct Filled {
    pub(super) bytes: Bytes,
    pub(super) crc32c: Crc32c,
    pub(super) slot: OwnedSemaphorePermit,
}

struct Filling {
    number: i32,
    range: Range<u64>,
    bytes: BytesMut,
    crc32c: Crc32cDigest,
    slot: OwnedSemaphorePermit,
}

impl Filling {
    /// The offset the next write in order starts at.
    fn end(&self) -> u64 {
        self.range.start + self.bytes.len() as u64
    }
}

fn overlap(a: &Range<u64>, b: &Range<u64>) -> bool {
    a.start < b.end && b.start < a.end
}

impl Stream {
    pub(super) fn new(
        key: String,
        upload_id: String,
        crc32c: bool,
        options: PutOptions,
        created: SystemTime,
    ) -> Self {
        Self {
            key,
            upload_id,
            crc32c,
            options,
            sent: BTreeMap::new(),
            running: JoinSet::new(),
            generation: HashMap::new(),
            next: 1,
            created,
            streaming: true,
            unverified: false,
            filling: None,
            filled: BTreeMap::new(),
            failed: 0,
        }
    }

    /// An upload an earlier run (or attempt) left, with the parts it noted as
    /// sent: `(number, range, tag)`. Nothing more is sent while the file is
    /// written; S3 is asked which of the parts it has before they are used.
    pub fn resumed(
        key: String,
        upload_id: String,
        crc32c: bool,
        options: PutOptions,
        parts: impl IntoIterator<Item = (i32, Range<u64>, PartTag)>,
    ) -> Self {
        let mut stream = Self::new(key, upload_id, crc32c, options, SystemTime::now());
        stream.sent = parts
            .into_iter()
            .map(|(number, range, tag)| (number, (range, 0, tag)))
            .collect();
        stream.streaming = false;
        stream.unverified = true;
        stream
    }

    pub fn upload_id(&self) -> &str {
        &self.upload_id
    }

    /// Whether the upload was created with CRC32C checksums.
    pub fn crc32c(&self) -> bool {
        self.crc32c
    }

    /// The parts sent and still right: `(number, range, tag)`.
    pub fn sent_parts(&self) -> impl Iterator<Item = (i32, Range<u64>, &PartTag)> {
        self.sent
            .iter()
            .map(|(n, (range, _, tag))| (*n, range.clone(), tag))
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    /// The next part to be sent while the file is written.
    pub fn next_part(&self) -> i32 {
        self.next
    }

    /// How many parts sent while the file was written failed.
    pub fn failed_parts(&self) -> u32 {
        self.failed
    }

    /// Do parts go up in the background now?
    pub fn in_flight(&self) -> bool {
        !self.running.is_empty()
    }

    /// Wait for one part in flight to end, and take its result.
    pub async fn next_done(&mut self) {
        if let Some(done) = self.running.join_next().await {
            self.take(done);
        }
    }

    /// The metadata the upload was created with.
    pub fn options(&self) -> &PutOptions {
        &self.options
    }

    /// A time no later than the object's Last-Modified will be.
    pub fn created(&self) -> SystemTime {
        self.created
    }

    /// Has S3 confirmed, and is still right, every part over `range`?
    pub fn holds(&self, range: &Range<u64>) -> bool {
        range.is_empty()
            || (part_at(range.start)..=part_at(range.end - 1)).all(|n| {
                self.sent.get(&n).is_some_and(|(r, generation, _)| {
                    *r == part_range(n) && *generation == self.generation_of(n)
                })
            })
    }

    pub(super) fn generation_of(&self, number: i32) -> u64 {
        self.generation.get(&number).copied().unwrap_or(0)
    }

    /// Bytes `range` changed: the parts over them must be sent again.
    pub(super) fn touched(&mut self, range: Range<u64>) {
        if range.is_empty() {
            return;
        }
        // Parts from `next` on were not sent while the file was written; those an
        // upload at close sent are in `sent`. None beyond both was sent.
        let highest = self
            .sent
            .keys()
            .next_back()
            .copied()
            .unwrap_or(0)
            .max(self.next);
        let last = part_at(range.end - 1).min(highest);
        for number in part_at(range.start)..=last {
            // A part being sent now is dropped when it reports (its generation is
            // behind); one sent already is sent again at close.
            *self.generation.entry(number).or_default() += 1;
            self.sent.remove(&number);
        }
    }

    /// Bytes `range` of the file changed: to `data` for a write, otherwise (a
    /// truncation) to whatever. Keeps the parts in memory true to the file, and
    /// collects a write that goes on in order; a part starts being collected only
    /// at its start, if a slot of `slots` is free.
    pub(super) fn keep(&mut self, range: Range<u64>, data: Option<&[u8]>, slots: &Arc<Semaphore>) {
        let in_order = data.is_some()
            && self
                .filling
                .as_ref()
                .is_some_and(|f| f.end() == range.start);
        self.filled.retain(|n, _| !overlap(&part_range(*n), &range));
        if !in_order
            && self
                .filling
                .as_ref()
                .is_some_and(|f| overlap(&f.range, &range))
        {
            self.filling = None;
        }
        let Some(mut data) = data else { return };
        let mut offset = range.start;
        while self.streaming && !data.is_empty() {
            let filling = match &mut self.filling {
                Some(f) if f.end() == offset => f,
                _ => {
                    let number = part_at(offset);
                    let part = part_range(number);
                    if part.start != offset || number < self.next {
                        return;
                    }
                    let Ok(slot) = slots.clone().try_acquire_owned() else {
                        return;
                    };
                    let bytes = BytesMut::with_capacity((part.end - part.start) as usize);
                    self.filling.insert(Filling {
                        number,
                        range: part,
                        bytes,
                        crc32c: Crc32cDigest::new(),
                        slot,
                    })
                }
            };
            let n = (filling.range.end - offset).min(data.len() as u64) as usize;
            filling.bytes.extend_from_slice(&data[..n]);
            filling.crc32c.update(&data[..n]);
            (offset, data) = (offset + n as u64, &data[n..]);
            if filling.end() == filling.range.end
                && let Some(done) = self.filling.take()
            {
                let filled = Filled {
                    bytes: done.bytes.freeze(),
                    crc32c: done.crc32c.finish(),
                    slot: done.slot,
                };
                self.filled.insert(done.number, filled);
            }
        }
    }

    /// Stop collecting the part being written, and hand over the parts collected.
    pub(super) fn take_filled(&mut self) -> BTreeMap<i32, Filled> {
        self.filling = None;
        std::mem::take(&mut self.filled)
    }

    /// Take the results of the parts that finished; a failed or stale part is
    /// left to be sent again.
    pub(super) fn collect(&mut self) {
        while let Some(done) = self.running.try_join_next() {
            self.take(done);
        }
    }

    pub(super) fn take(&mut self, done: Result<PartResult, tokio::task::JoinError>) {
        let Ok((number, range, generation, result)) = done else {
            return;
        };
        match result {
            Ok(tag) if generation == self.generation_of(number) => {
                self.sent.insert(number, (range, generation, tag));
            }
            Ok(_) => {}
            Err(e) => {
                self.failed += 1;
                tracing::warn!(
                    "part {number} of {} failed ({e}); it will be sent again at close",
                    self.key
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn stream() -> Stream {
        Stream::new(
            "k".into(),
            "id".into(),
            true,
            PutOptions::default(),
            SystemTime::now(),
        )
    }

    /// Write `len` bytes of `byte` at `offset`, in writes of 1 MiB.
    fn write(stream: &mut Stream, slots: &Arc<Semaphore>, offset: u64, len: u64, byte: u8) {
        let chunk = vec![byte; MIB as usize];
        let mut at = offset;
        while at < offset + len {
            let n = MIB.min(offset + len - at);
            stream.keep(at..at + n, Some(&chunk[..n as usize]), slots);
            at += n;
        }
    }

    #[test]
    fn parts_written_in_order_are_collected_within_the_slots() {
        let slots = Arc::new(Semaphore::new(2));
        let mut s = stream();
        write(&mut s, &slots, 0, 28 * MIB, 1);
        // Two parts whole; the third would need a slot there is none of.
        assert_eq!(s.filled.keys().copied().collect::<Vec<_>>(), vec![1, 2]);
        assert!(s.filled.values().all(|f| f.bytes.len() as u64 == 8 * MIB));
        // Their checksums were taken as the bytes came.
        assert!(s.filled.values().all(|f| f.crc32c == Crc32c::of(&f.bytes)));
        assert_eq!(slots.available_permits(), 0);
        let taken = s.take_filled();
        drop(taken);
        assert_eq!(slots.available_permits(), 2);
    }

    #[test]
    fn a_change_drops_the_parts_it_touches_and_a_write_elsewhere_collects_nothing() {
        let slots = Arc::new(Semaphore::new(4));
        let mut s = stream();
        write(&mut s, &slots, 0, 20 * MIB, 1);
        s.keep(9 * MIB..9 * MIB + 1, Some(b"x"), &slots);
        assert_eq!(s.filled.keys().copied().collect::<Vec<_>>(), vec![1]);
        // The part being collected (16..24 MiB) is cut: it is not collected.
        s.keep(18 * MIB..u64::MAX, None, &slots);
        write(&mut s, &slots, 18 * MIB, 6 * MIB, 2);
        assert_eq!(s.filled.keys().copied().collect::<Vec<_>>(), vec![1]);
        // A part written from the middle on is not collected either.
        write(&mut s, &slots, 28 * MIB, 4 * MIB, 3);
        assert_eq!(s.filled.keys().copied().collect::<Vec<_>>(), vec![1]);
        assert_eq!(slots.available_permits(), 3);
    }
}
