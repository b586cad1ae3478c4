//! Fetching a whole object in the background, for a reader that jumps about in
//! it: once its random reads keep coming, each costs a round trip, while the
//! whole object in large parallel GETs costs about as much as a sequential read
//! of it, after which every read is local. Only for an object that fits the
//! cache several times over, one object at a time, and only while a reader that
//! asked for it is still open.

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use tokio::task::JoinHandle;

use super::{BlockCache, BlockId, Cell, ObjectVersion, Pending, lock};

/// Runs of `MAX_FETCH` fetched at once: a share of the memory budget, so that
/// the reader's own reads still find room.
const RUNS_IN_FLIGHT: usize = 4;
/// An object is fetched whole only if it takes at most this share of the cache.
const SHARE: u64 = 4;

impl BlockCache {
    /// Whether `obj` is small enough to be fetched whole: a quarter of the disk
    /// cache, or without one, of the memory cache.
    pub fn fits_whole(&self, obj: &ObjectVersion) -> bool {
        let room = match &self.disk {
            Some(disk) => disk.max_bytes(),
            None => lock(&self.memory).cap().get() as u64 * self.block_size,
        };
        obj.etag.is_some() && obj.size <= room / SHARE
    }

    /// Start fetching every block of `obj` that the cache does not have, in the
    /// background, unless it does not fit or another object is being fetched
    /// whole (then `None`). The fetch stops at the first error, and once `reader`
    /// is gone.
    pub fn fetch_whole(
        self: &Arc<Self>,
        obj: &ObjectVersion,
        reader: Weak<()>,
    ) -> Option<JoinHandle<()>> {
        if !self.fits_whole(obj) {
            return None;
        }
        let free =
            self.fetching_whole
                .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire);
        if free.is_err() {
            return None;
        }
        let (this, obj) = (self.clone(), obj.clone());
        Some(tokio::spawn(async move {
            match this.fetch_all(&obj, &reader).await {
                Ok(()) => tracing::debug!("{}: fetched whole for a random reader", obj.key),
                Err(e) => tracing::debug!("{}: whole fetch stopped: {e}", obj.key),
            }
            this.fetching_whole.store(false, Ordering::Release);
        }))
    }

    async fn fetch_all(
        self: &Arc<Self>,
        obj: &ObjectVersion,
        reader: &Weak<()>,
    ) -> Result<(), String> {
        let Some(etag) = &obj.etag else {
            return Ok(());
        };
        let mut runs = self.missing_runs(obj, etag).into_iter();
        let mut in_flight: VecDeque<Vec<Pending>> = VecDeque::new();
        loop {
            while in_flight.len() < RUNS_IN_FLIGHT {
                let Some(run) = runs.next() else { break };
                if reader.strong_count() == 0 {
                    return Err("the reader is gone".into());
                }
                let cells = self.start(obj, etag, run, true).await;
                in_flight.push_back(
                    cells
                        .into_iter()
                        .filter_map(|cell| match cell {
                            Some(Cell::Pending(p)) => Some(p),
                            _ => None,
                        })
                        .collect(),
                );
            }
            let Some(run) = in_flight.pop_front() else {
                return Ok(());
            };
            for mut block in run {
                match block.wait_for(Option::is_some).await.map(|v| v.clone()) {
                    Ok(Some(Ok(_))) => {}
                    Ok(Some(Err(e))) => return Err(e.to_string()),
                    Ok(None) | Err(_) => return Err("a block fetch was lost".into()),
                }
            }
        }
    }

    /// The blocks of `obj` neither in memory nor on disk, in runs of at most
    /// `MAX_FETCH`.
    fn missing_runs(&self, obj: &ObjectVersion, etag: &Arc<str>) -> Vec<Range<u64>> {
        let missing = (0..obj.size.div_ceil(self.block_size)).filter(|&index| {
            let id = BlockId {
                key: obj.key.clone(),
                etag: etag.clone(),
                index,
            };
            !(lock(&self.memory).contains(&id)
                || self.disk.as_ref().is_some_and(|d| d.may_have(&id)))
        });
        self.runs(missing)
    }
}
