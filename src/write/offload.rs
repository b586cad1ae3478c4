//! Offloading: once S3 has confirmed a part of a new file being written, its
//! bytes may leave the staging file (a punched hole), so that a stream larger
//! than the local disk goes through. It happens once the file passes
//! `--offload-after` (1 GiB), or while the staging filesystem runs short of space; a
//! writer that outruns the network then waits for its parts (back-pressure)
//! rather than fill the disk.
//!
//! The first part never leaves (formats that patch a header at the start do
//! it when they finish). An offloaded range can be neither read nor changed
//! until the upload ends (EIO). The journal names the offloaded ranges and the
//! upload before the bytes go: after a crash the staging file (with its holes)
//! goes to `recovered/` and the multipart upload that holds the rest is kept.

use std::ops::Range;
use std::path::PathBuf;

use super::staged::Staged;
use super::stream::Stream;
use super::upload::{part_range, part_size};
use crate::cache::disk::free_space;

/// Offload while the staging filesystem has less free than the cache's
/// `--cache-min-free` plus this.
const MARGIN: u64 = 256 << 20;

pub struct OffloadPolicy {
    /// The staging directory, whose filesystem's free space counts.
    dir: PathBuf,
    /// A streamed file this large offloads whatever the free space.
    after: u64,
    min_free: u64,
}

impl OffloadPolicy {
    pub fn new(dir: PathBuf, after: u64, min_free: u64) -> Self {
        Self {
            dir,
            after,
            min_free,
        }
    }

    /// Does a streamed file of `size` bytes offload its confirmed parts now?
    pub fn wanted(&self, size: u64) -> bool {
        size > self.after
            || free_space(&self.dir).is_some_and(|free| free < self.min_free.saturating_add(MARGIN))
    }
}

/// The parts of `stream` S3 confirmed whose bytes may leave `staged` now: all
/// but the first, whole (not a short last part), written in full (not the
/// holes a truncation that extends leaves, which a writer may fill later),
/// not offloaded yet, of a new
/// file streamed while it is written (not of an upload at close, nor of one
/// an earlier run left, whose parts S3 has not been asked about).
pub fn offloadable(staged: &Staged, stream: &Stream) -> Vec<Range<u64>> {
    if !applies(staged, stream) {
        return Vec::new();
    }
    stream
        .sent_parts()
        .filter(|(number, range, _)| {
            *number > 1
                && *range == part_range(*number)
                && staged.is_written(range)
                && !staged.is_offloaded(range)
        })
        .map(|(_, range, _)| range)
        .collect()
}

/// Does offloading apply to `staged` with `stream` at all: a new file whose
/// parts go up while it is written?
pub fn applies(staged: &Staged, stream: &Stream) -> bool {
    staged.is_new() && stream.streaming && !stream.unverified
}

/// Bytes of an offloading file that may be on local disk and not in S3 before
/// its writer waits: the parts in flight and two more.
pub fn backlog_limit(stream: &Stream, parallel_parts: usize) -> u64 {
    part_size(stream.next_part()) * (parallel_parts as u64 + 2)
}
