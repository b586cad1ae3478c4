//! CloudFront invalidation: the URL paths of changed files are queued, gathered into
//! batches, and sent one CreateInvalidation per batch, in the background.
//!
//! File operations only record their change in memory ([`Invalidator::changed`]);
//! nothing they do waits for CloudFront. A batch goes once no change came for the
//! delay (2 s by default). A file created and removed inside a batch is not sent,
//! nor are editors' swap, backup and lock files (by name). Many files of one
//! directory become `/dir/*`. Transient errors are retried with backoff, with
//! what changed meanwhile in the same request. At unmount the queue is flushed,
//! for a bounded time.

pub mod cloudfront;
pub mod paths;
mod pending;
pub mod saved;
mod sender;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::fs::changes::{Change, Changes};
use cloudfront::Cdn;
use paths::UrlPaths;
use pending::Pending;
use saved::{Saved, SavedQueue};

/// Files of one batch kept by name; beyond, the batch invalidates everything.
const MAX_PENDING: usize = 100_000;

/// Names of editors' temporary files, never invalidated by default: vim's swap
/// files, backups (`name~`) and the file it creates to test a directory, emacs's
/// lock and auto-save files.
pub const EDITOR_FILES: &[&str] = &[".*.sw?", "*~", "4913", ".#*", "#*#"];

/// Where invalidations go and how they are made, from the command line.
#[derive(Debug, Clone)]
pub struct CdnSettings {
    pub distribution_id: String,
    pub endpoint_url: Option<String>,
    pub urls: UrlPaths,
    pub batching: Batching,
}

/// A directory with more entries changed than this in one batch is sent as
/// `/dir/*`: one path, where CloudFront bills each path beyond 1,000 a month.
pub const COLLAPSE_ABOVE: usize = 10;

/// How the queue batches.
#[derive(Debug, Clone)]
pub struct Batching {
    /// Quiet time after the last change before a batch goes.
    pub delay: Duration,
    /// A directory with more entries changed than this is sent as `/dir/*`.
    pub collapse_above: usize,
    /// File names (not paths) never invalidated.
    pub ignore: Vec<glob::Pattern>,
}

#[derive(Default)]
struct Counters {
    /// URL paths queued, duplicates removed.
    queued: AtomicU64,
    /// Paths sent in invalidations (what CloudFront bills).
    sent: AtomicU64,
    invalidations: AtomicU64,
    /// URL paths given up: refused by CloudFront, or not sent by unmount.
    failed: AtomicU64,
}

/// What file operations touch: the batch being gathered.
struct State {
    pending: Pending,
    /// Unmounting: send what there is now.
    finishing: bool,
}

/// URL paths taken from batches and not sent yet (a request failed), kept by
/// the sending task apart from [`State`] so that file operations never wait
/// behind it.
#[derive(Default)]
struct Unsent {
    paths: BTreeSet<String>,
    /// Too many paths: invalidate everything under the root instead.
    everything: bool,
}

impl Unsent {
    /// Add `paths`; returns how many were not there yet.
    fn extend(&mut self, paths: impl IntoIterator<Item = String>) -> usize {
        let before = self.paths.len();
        if !self.everything {
            self.paths.extend(paths);
        }
        let added = self.paths.len().saturating_sub(before);
        if self.paths.len() > MAX_PENDING {
            tracing::warn!(
                "more than {MAX_PENDING} paths waiting for CloudFront: invalidating everything"
            );
            self.paths.clear();
            self.everything = true;
        }
        added
    }
}

struct Shared {
    state: Mutex<State>,
    unsent: Mutex<Unsent>,
    wake: Notify,
    urls: UrlPaths,
    batching: Batching,
    counters: Counters,
    /// The queue on disk, when there is one. Taken before `state`.
    saved: Option<Mutex<SavedQueue>>,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn unsent(&self) -> MutexGuard<'_, Unsent> {
        self.unsent.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Once a batch is settled, the queue on disk keeps only what waits.
    fn save_waiting(&self) {
        let Some(saved) = &self.saved else { return };
        let mut saved = saved.lock().unwrap_or_else(|e| e.into_inner());
        let (changes, everything) = self.state().pending.changes();
        if let Err(e) = saved.rewrite(&Saved {
            changes,
            everything,
        }) {
            tracing::warn!("CloudFront: cannot rewrite the saved queue: {e}");
        }
    }

    /// Move the pending batch into the unsent paths, counting them as queued.
    fn take_batch(&self) {
        // Unsent first, as in `waiting`: a path is always in one or the other.
        let mut unsent = self.unsent();
        let batch = self.state().pending.take();
        let urls = batch.paths.iter().flat_map(|p| self.urls.of(p));
        let added = unsent.extend(urls);
        unsent.everything |= batch.everything;
        self.counters
            .queued
            .fetch_add(added as u64, Ordering::Relaxed);
    }
}

/// The invalidation queue of one mount, with its sending task.
pub struct Invalidator {
    shared: Arc<Shared>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Invalidator {
    /// Start the sending task on `runtime`. With `saved` (the queue on disk
    /// and what an earlier run left in it), what was left is queued again and
    /// every change is noted there until it is sent.
    pub fn start(
        cdn: Arc<dyn Cdn>,
        urls: UrlPaths,
        batching: Batching,
        runtime: &tokio::runtime::Handle,
        saved: Option<(SavedQueue, Saved)>,
    ) -> Self {
        let mut pending = Pending::new(MAX_PENDING);
        let (saved, left) = match saved {
            Some((queue, left)) => (Some(Mutex::new(queue)), left),
            None => (None, Saved::default()),
        };
        if !left.changes.is_empty() || left.everything {
            tracing::info!(
                "CloudFront: {} paths left by an earlier run are queued again",
                left.changes.len()
            );
        }
        for (path, change) in &left.changes {
            pending.record(path, *change, Instant::now());
        }
        if left.everything {
            pending.record_everything(Instant::now());
        }
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                pending,
                finishing: false,
            }),
            unsent: Mutex::new(Unsent::default()),
            wake: Notify::new(),
            urls,
            batching,
            counters: Counters::default(),
            saved,
        });
        let task = runtime.spawn(sender::run(shared.clone(), cdn));
        Self {
            shared,
            task: Mutex::new(Some(task)),
        }
    }

    /// Send what is queued and stop, waiting `wait` at most; paths not sent by
    /// then are logged.
    pub async fn finish(&self, wait: Duration) {
        self.shared.state().finishing = true;
        self.shared.wake.notify_one();
        let task = self.task.lock().unwrap_or_else(|e| e.into_inner()).take();
        let Some(mut task) = task else { return };
        match tokio::time::timeout(wait, &mut task).await {
            Ok(Ok(())) => return,
            Ok(Err(e)) => tracing::error!("CloudFront: the sending task failed: {e}"),
            Err(_) => {
                task.abort();
                tracing::error!(
                    "CloudFront: invalidations not all sent after waiting {} s at unmount",
                    wait.as_secs()
                );
            }
        }
        self.shared.take_batch();
        let unsent = std::mem::take(&mut *self.shared.unsent());
        let mut lost: Vec<String> = unsent.paths.into_iter().collect();
        if unsent.everything {
            lost.push(format!("{}*", self.shared.urls.root()));
        }
        self.shared
            .counters
            .failed
            .fetch_add(lost.len() as u64, Ordering::Relaxed);
        let kept = if self.shared.saved.is_some() {
            " (kept for the next mount)"
        } else {
            ""
        };
        for path in lost {
            tracing::error!("not invalidated: {path}{kept}");
        }
    }

    /// The counters, for the log at unmount.
    /// Paths queued, sent, in how many invalidations, and given up.
    pub fn stats(&self) -> crate::status::CdnStats {
        let c = &self.shared.counters;
        crate::status::CdnStats {
            queued: c.queued.load(Ordering::Relaxed),
            sent: c.sent.load(Ordering::Relaxed),
            invalidations: c.invalidations.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
        }
    }

    pub fn summary(&self) -> String {
        let c = &self.shared.counters;
        format!(
            "CloudFront: {} paths queued, {} sent in {} invalidations, {} failed",
            c.queued.load(Ordering::Relaxed),
            c.sent.load(Ordering::Relaxed),
            c.invalidations.load(Ordering::Relaxed),
            c.failed.load(Ordering::Relaxed)
        )
    }
}

impl Changes for Invalidator {
    fn changed(&self, path: &str, change: Change) {
        let name = path.rsplit('/').next().unwrap_or(path);
        if self.shared.batching.ignore.iter().any(|p| p.matches(name)) {
            return;
        }
        // The line goes to disk before the change joins the batch, and under the
        // same lock as a rewrite, so none is lost between the two.
        let mut saved = self
            .shared
            .saved
            .as_ref()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()));
        if let Some(saved) = saved.as_mut()
            && let Err(e) = saved.append(path, change)
        {
            tracing::warn!("CloudFront: cannot save the path of {path} to the queue on disk: {e}");
        }
        let began = self
            .shared
            .state()
            .pending
            .record(path, change, Instant::now());
        drop(saved);
        if began {
            self.shared.wake.notify_one();
        }
    }

    fn waiting(&self, path: &str) -> bool {
        let unsent = self.shared.unsent();
        if self.shared.state().pending.holds(path) {
            return true;
        }
        unsent.everything
            || self
                .shared
                .urls
                .of(path)
                .iter()
                .any(|url| unsent.paths.contains(url))
    }
}

#[cfg(test)]
mod tests;
