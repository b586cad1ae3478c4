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
//! A multipart upload takes its metadata when it starts, so the stream carries the
//! file's mode and owner but no times: the object's time is its Last-Modified,
//! the moment it was completed (see [`super::upload::Uploader::finish_stream`]).

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::time::SystemTime;

use tokio::task::JoinSet;

use super::WriteError;
use super::upload::part_at;

use crate::store::PutOptions;

/// What a part's background upload returns: its number, the range it sent, the
/// write generation of that range when it started, and its ETag.
pub(super) type PartResult = (i32, Range<u64>, u64, Result<String, WriteError>);

pub struct Stream {
    pub(super) key: String,
    pub(super) upload_id: String,
    /// The metadata the upload was created with.
    pub(super) options: PutOptions,
    /// Parts sent: their range and ETag, valid while their generation holds.
    pub(super) sent: BTreeMap<i32, (Range<u64>, u64, String)>,
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
}

impl Stream {
    pub(super) fn new(
        key: String,
        upload_id: String,
        options: PutOptions,
        created: SystemTime,
    ) -> Self {
        Self {
            key,
            upload_id,
            options,
            sent: BTreeMap::new(),
            running: JoinSet::new(),
            generation: HashMap::new(),
            next: 1,
            created,
            streaming: true,
            unverified: false,
        }
    }

    /// An upload an earlier run (or attempt) left, with the parts it noted as
    /// sent: `(number, range, etag)`. Nothing more is sent while the file is
    /// written; S3 is asked which of the parts it has before they are used.
    pub fn resumed(
        key: String,
        upload_id: String,
        options: PutOptions,
        parts: impl IntoIterator<Item = (i32, Range<u64>, String)>,
    ) -> Self {
        let mut stream = Self::new(key, upload_id, options, SystemTime::now());
        stream.sent = parts
            .into_iter()
            .map(|(number, range, etag)| (number, (range, 0, etag)))
            .collect();
        stream.streaming = false;
        stream.unverified = true;
        stream
    }

    pub fn upload_id(&self) -> &str {
        &self.upload_id
    }

    /// The parts sent and still right: `(number, range, etag)`.
    pub fn sent_parts(&self) -> impl Iterator<Item = (i32, Range<u64>, &str)> {
        self.sent
            .iter()
            .map(|(n, (range, _, etag))| (*n, range.clone(), etag.as_str()))
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    /// The metadata the upload was created with.
    pub fn options(&self) -> &PutOptions {
        &self.options
    }

    /// A time no later than the object's Last-Modified will be.
    pub fn created(&self) -> SystemTime {
        self.created
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
            Ok(etag) if generation == self.generation_of(number) => {
                self.sent.insert(number, (range, generation, etag));
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(
                    "part {number} of {} failed ({e}); it will be sent again at close",
                    self.key
                );
            }
        }
    }
}
