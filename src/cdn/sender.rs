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
const LIMITS: Budget = Budget {
    files: 3000,
    wildcards: 15,
};
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
    /// The paths and caller reference of the last request that failed: the same
    /// paths again go with the same reference, so that a request CloudFront did
    /// take (its answer lost) is not made twice.
    last_try: Option<(Vec<String>, String)>,
    sequence: u64,
    /// The unmount was seen: a retry waiting for its backoff goes at once.
    finishing: bool,
}

pub(super) async fn run(shared: Arc<Shared>, cdn: Arc<dyn Cdn>) {
    let mut sender = Sender {
        shared,
        cdn,
        in_progress: Vec::new(),
        retry_at: None,
        backoff: FIRST_RETRY,
        last_try: None,
        sequence: 0,
        finishing: false,
    };
    loop {
        let (pending_due, finishing) = {
            let state = sender.shared.state();
            let due = (!state.pending.is_empty()).then(|| {
                state
                    .pending
                    .due(sender.shared.batching.delay)
                    .unwrap_or_else(Instant::now)
            });
            (due, state.finishing)
        };
        if finishing && !sender.finishing {
            sender.finishing = true;
            sender.retry_at = None;
            sender.backoff = FIRST_RETRY;
        }
        let waiting = {
            let unsent = sender.shared.unsent();
            !unsent.paths.is_empty() || unsent.everything
        };
        let due = if waiting {
            Some(sender.retry_at.unwrap_or_else(Instant::now))
        } else if finishing {
            match pending_due {
                Some(_) => Some(Instant::now()),
                None => return,
            }
        } else {
            pending_due
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
        self.shared.take_batch();
        let root = self.shared.urls.root().to_string();
        let wanted = {
            let unsent = self.shared.unsent();
            if unsent.everything {
                BTreeSet::from([format!("{root}*")])
            } else {
                unsent.paths.clone()
            }
        };
        if wanted.is_empty() {
            return;
        }
        let wanted = Arc::new(wanted);
        let mut planned = self.plan(&wanted, self.budget()).await;
        // Ask after our invalidations in progress only when they change the plan.
        if !self.in_progress.is_empty() && planned != self.plan(&wanted, LIMITS).await {
            self.forget_completed().await;
            planned = self.plan(&wanted, self.budget()).await;
        }
        let Some(paths) = planned else {
            tracing::info!(
                "CloudFront: waiting for invalidations in progress before sending {} paths",
                wanted.len()
            );
            self.retry_later();
            return;
        };
        let reference = match &self.last_try {
            Some((tried, reference)) if *tried == paths => reference.clone(),
            _ => self.new_reference(),
        };
        match self.cdn.invalidate(paths.clone(), reference.clone()).await {
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
                self.last_try = Some((paths, reference));
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

    /// Plan off the runtime's workers: a large batch takes a while.
    async fn plan(&self, wanted: &Arc<BTreeSet<String>>, budget: Budget) -> Option<Vec<String>> {
        let (wanted, root) = (wanted.clone(), self.shared.urls.root().to_string());
        let collapse_above = self.shared.batching.collapse_above;
        tokio::task::spawn_blocking(move || plan(&wanted, &root, collapse_above, budget))
            .await
            .unwrap_or_else(|e| {
                tracing::error!("CloudFront: planning an invalidation failed: {e}");
                None
            })
    }

    fn new_reference(&mut self) -> String {
        self.sequence += 1;
        format!(
            "s3mount-{}-{}-{}",
            std::process::id(),
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis()),
            self.sequence
        )
    }

    /// The unsent paths are done with, sent or given up. (Only this task adds to
    /// them, so they are still those of the request.)
    fn settle(&mut self) {
        *self.shared.unsent() = Default::default();
        self.shared.save_waiting();
        self.retry_at = None;
        self.backoff = FIRST_RETRY;
        self.last_try = None;
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
            files: LIMITS.files.saturating_sub(files),
            wildcards: LIMITS.wildcards.saturating_sub(wildcards),
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
