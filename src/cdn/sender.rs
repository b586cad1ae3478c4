//! The task that sends batches: waits for a batch to be due, plans its paths
//! within CloudFront's limits, sends it, and retries with backoff.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

use super::Shared;
use super::cloudfront::{Cdn, CdnError};
use super::paths::{Budget, plan};

/// CloudFront's limits on invalidations in progress per distribution.
const MAX_FILES_IN_PROGRESS: usize = 3000;
const MAX_WILDCARDS_IN_PROGRESS: usize = 15;
/// Backoff between tries of a batch that could not go.
const FIRST_RETRY: Duration = Duration::from_secs(1);
const LAST_RETRY: Duration = Duration::from_secs(60);
/// Paths named in the log line of each invalidation.
const LOGGED_PATHS: usize = 10;

/// An invalidation of ours CloudFront has not completed.
struct InProgress {
    id: String,
    files: usize,
    wildcards: usize,
}

struct Sender {
    shared: Arc<Shared>,
    cdn: Arc<dyn Cdn>,
    in_progress: Vec<InProgress>,
    /// Set after a failed try: when to try again, and the wait after that.
    retry_at: Option<Instant>,
    backoff: Duration,
    sequence: u64,
}

pub(super) async fn run(shared: Arc<Shared>, cdn: Arc<dyn Cdn>) {
    let mut sender = Sender {
        shared,
        cdn,
        in_progress: Vec::new(),
        retry_at: None,
        backoff: FIRST_RETRY,
        sequence: 0,
    };
    loop {
        let due = {
            let state = sender.shared.state();
            let waiting = !state.unsent.is_empty() || state.everything;
            if waiting {
                Some(sender.retry_at.unwrap_or_else(Instant::now))
            } else if state.pending.is_empty() {
                if state.finishing {
                    return;
                }
                None
            } else if state.finishing {
                Some(Instant::now())
            } else {
                state.pending.due(sender.shared.batching.delay)
            }
        };
        match due {
            Some(due) if due <= Instant::now() => sender.send_batch().await,
            // A first change, or the unmount, wakes the task early; a batch's
            // later changes move its due time, seen when the sleep ends.
            Some(due) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(due) => {}
                    _ = sender.shared.wake.notified() => {}
                }
            }
            None => sender.shared.wake.notified().await,
        }
    }
}

impl Sender {
    /// Move the pending batch into the unsent paths and try to send them all.
    async fn send_batch(&mut self) {
        let (unsent, everything) = {
            let mut state = self.shared.state();
            let batch = state.pending.take();
            let before = state.unsent.len();
            for path in &batch.paths {
                let urls = self.shared.urls.of(path);
                state.unsent.extend(urls);
            }
            let queued = state.unsent.len() - before;
            self.shared
                .counters
                .queued
                .fetch_add(queued as u64, Ordering::Relaxed);
            state.everything |= batch.everything;
            (state.unsent.clone(), state.everything)
        };
        if unsent.is_empty() && !everything {
            return;
        }
        self.forget_completed().await;
        let root = self.shared.urls.root();
        let wanted = if everything {
            BTreeSet::from([format!("{root}*")])
        } else {
            unsent
        };
        let budget = self.budget();
        let Some(paths) = plan(&wanted, root, self.shared.batching.collapse_above, budget) else {
            tracing::info!(
                "CloudFront: waiting for invalidations in progress before sending {} paths",
                wanted.len()
            );
            self.retry_later();
            return;
        };
        self.sequence += 1;
        let reference = format!(
            "s3mount-{}-{}-{}",
            std::process::id(),
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis()),
            self.sequence
        );
        match self.cdn.invalidate(paths.clone(), reference).await {
            Ok(accepted) => {
                let shown: Vec<&str> = paths
                    .iter()
                    .take(LOGGED_PATHS)
                    .map(String::as_str)
                    .collect();
                tracing::info!(
                    "CloudFront invalidation {} of {} paths: {}{}",
                    accepted.id,
                    paths.len(),
                    shown.join(" "),
                    if paths.len() > LOGGED_PATHS {
                        " ..."
                    } else {
                        ""
                    }
                );
                let counters = &self.shared.counters;
                counters
                    .sent
                    .fetch_add(paths.len() as u64, Ordering::Relaxed);
                counters.invalidations.fetch_add(1, Ordering::Relaxed);
                if accepted.in_progress {
                    let wildcards = paths.iter().filter(|p| p.ends_with('*')).count();
                    self.in_progress.push(InProgress {
                        id: accepted.id,
                        files: paths.len() - wildcards,
                        wildcards,
                    });
                }
                self.settle();
            }
            Err(e) if e.is_transient() => {
                tracing::warn!(
                    "CloudFront invalidation of {} paths failed: {e}; retrying in {} s",
                    paths.len(),
                    self.backoff.as_secs()
                );
                self.retry_later();
            }
            Err(e) => {
                let why = match &e {
                    CdnError::NoSuchDistribution => format!("{e}"),
                    _ => format!("refused: {e}"),
                };
                tracing::error!(
                    "CloudFront invalidation of {} paths {why}; not invalidated: {}",
                    wanted.len(),
                    wanted.iter().cloned().collect::<Vec<_>>().join(" ")
                );
                self.shared
                    .counters
                    .failed
                    .fetch_add(wanted.len() as u64, Ordering::Relaxed);
                self.settle();
            }
        }
    }

    /// The unsent paths are done with, sent or given up. (Only this task adds to
    /// them, so they are still those of the request.)
    fn settle(&mut self) {
        let mut state = self.shared.state();
        state.unsent.clear();
        state.everything = false;
        self.retry_at = None;
        self.backoff = FIRST_RETRY;
    }

    fn retry_later(&mut self) {
        self.retry_at = Some(Instant::now() + self.backoff);
        self.backoff = (self.backoff * 2).min(LAST_RETRY);
    }

    /// What CloudFront's limits leave for the next invalidation.
    fn budget(&self) -> Budget {
        let files: usize = self.in_progress.iter().map(|i| i.files).sum();
        let wildcards: usize = self.in_progress.iter().map(|i| i.wildcards).sum();
        Budget {
            files: MAX_FILES_IN_PROGRESS.saturating_sub(files),
            wildcards: MAX_WILDCARDS_IN_PROGRESS.saturating_sub(wildcards),
        }
    }

    /// Ask after our invalidations in progress; those completed (or unknown) no
    /// longer count against the limits.
    async fn forget_completed(&mut self) {
        let mut still = Vec::with_capacity(self.in_progress.len());
        for invalidation in std::mem::take(&mut self.in_progress) {
            match self.cdn.in_progress(&invalidation.id).await {
                Ok(false) => {}
                // Not known: CloudFront will say so if it still counts it.
                Err(e) if !e.is_transient() => {}
                Ok(true) | Err(_) => still.push(invalidation),
            }
        }
        self.in_progress = still;
    }
}
