//! Listings made before they are asked for. A lookup in a small directory lists
//! it once rather than asking S3 for each name; the subdirectories a listing shows
//! are listed in the background, in parallel, so a `find` or `ls -R` that goes
//! down into them finds their listings ready.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures::StreamExt;
use tokio::sync::Semaphore;

use super::dir::{DirEntry, DirHandle};
use super::inode::{Kind, join};
use super::listing::Listings;
use super::{Fs, FsResult};
use crate::store::{ObjectStore, StoreResult};

/// Background listings in flight, across the mount.
const IN_FLIGHT: usize = 8;
/// Background listings waiting or in flight; beyond that, none are queued.
const QUEUED: usize = 1024;

impl Fs {
    /// List the first page of `dir` and record it: if that is the whole directory,
    /// it answers this lookup and those that follow for the TTL, one request where
    /// each name would take a HEAD and a LIST (a `cp -r` into a new directory).
    pub(super) async fn list_for_lookups(&self, dir: &str) -> FsResult<()> {
        first_page(&self.store, &self.listings, dir, self.dir_prefix(dir), true).await?;
        Ok(())
    }

    /// List, in the background, the subdirectories of `parent` among `entries`
    /// that have no fresh listing; the task doing so, if any.
    pub(super) fn list_ahead(
        &self,
        parent: &str,
        entries: &[DirEntry],
    ) -> Option<tokio::task::JoinHandle<()>> {
        let wanted: Vec<(String, String)> = {
            let mut listings = self.listings();
            entries
                .iter()
                .filter(|e| e.kind == Kind::Dir)
                .map(|e| join(parent, &e.name))
                .filter(|dir| listings.worth_listing_ahead(dir))
                .map(|dir| {
                    let prefix = self.dir_prefix(&dir);
                    (dir, prefix)
                })
                .collect()
        };
        // A full queue leaves the rest to be listed when asked for.
        let queued: Vec<_> = wanted
            .into_iter()
            .map_while(|dir| Some((dir, self.ahead.queued.clone().try_acquire_owned().ok()?)))
            .collect();
        if queued.is_empty() {
            return None;
        }
        let (store, listings, in_flight) = (
            self.store.clone(),
            self.listings.clone(),
            self.ahead.in_flight.clone(),
        );
        Some(tokio::spawn(async move {
            futures::stream::iter(queued)
                .for_each_concurrent(IN_FLIGHT, |((dir, prefix), _queued)| {
                    let (store, listings, in_flight) = (&store, &listings, &in_flight);
                    async move {
                        let Ok(_slot) = in_flight.acquire().await else {
                            return;
                        };
                        if let Err(e) = first_page(store, listings, &dir, prefix, false).await {
                            tracing::debug!("listing {dir} ahead: {e}");
                        }
                    }
                })
                .await;
        }))
    }
}

/// The bounds of listing ahead, across the mount.
pub struct Ahead {
    queued: Arc<Semaphore>,
    in_flight: Arc<Semaphore>,
}

impl Default for Ahead {
    fn default() -> Self {
        Self {
            queued: Arc::new(Semaphore::new(QUEUED)),
            in_flight: Arc::new(Semaphore::new(IN_FLIGHT)),
        }
    }
}

/// List the first page of directory `dir` (keys under `prefix`) and record it,
/// as made `for_lookups` or not.
async fn first_page(
    store: &Arc<dyn ObjectStore>,
    listings: &Mutex<Listings>,
    dir: &str,
    prefix: String,
    for_lookups: bool,
) -> StoreResult<()> {
    let mut handle = DirHandle::new(prefix, Vec::new());
    let begun: Instant = handle.begun();
    let entries = handle.first_page(store).await?;
    let mut listings = listings.lock().unwrap_or_else(|e| e.into_inner());
    listings.record(dir, begun, entries);
    if for_lookups {
        listings.made_for_lookups(dir, begun);
    }
    if handle.is_done() {
        listings.complete(dir, begun);
    } else {
        listings.large(dir);
    }
    Ok(())
}
