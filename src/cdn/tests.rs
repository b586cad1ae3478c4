//! The queue against a CDN that records what it is sent, on tokio's paused clock.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;

use async_trait::async_trait;
use tokio::sync::mpsc;

use super::cloudfront::{Accepted, Cdn, CdnError};
use super::*;

const DELAY: Duration = Duration::from_secs(2);
const NEW: Change = Change::Written { new: true };

/// Answers each invalidation with the next scripted error, then accepts; every
/// request (accepted or not) is sent on the channel.
struct FakeCdn {
    failures: Mutex<VecDeque<CdnError>>,
    /// Answers of `in_progress`, in turn; then "completed".
    progress: Mutex<VecDeque<bool>>,
    accept_in_progress: bool,
    requests: mpsc::UnboundedSender<Vec<String>>,
    accepted: AtomicU64,
}

#[async_trait]
impl Cdn for FakeCdn {
    async fn invalidate(&self, paths: Vec<String>, _: String) -> Result<Accepted, CdnError> {
        let _ = self.requests.send(paths);
        if let Some(e) = self.failures.lock().unwrap().pop_front() {
            return Err(e);
        }
        let n = self.accepted.fetch_add(1, Ordering::Relaxed) + 1;
        Ok(Accepted {
            id: format!("I{n}"),
            in_progress: self.accept_in_progress,
        })
    }

    async fn in_progress(&self, _: &str) -> Result<bool, CdnError> {
        Ok(self.progress.lock().unwrap().pop_front().unwrap_or(false))
    }
}

struct Setup {
    queue: Invalidator,
    requests: mpsc::UnboundedReceiver<Vec<String>>,
}

fn setup(failures: Vec<CdnError>) -> Setup {
    setup_with(failures, false, vec![])
}

fn setup_with(failures: Vec<CdnError>, accept_in_progress: bool, progress: Vec<bool>) -> Setup {
    let (tx, requests) = mpsc::unbounded_channel();
    let cdn = Arc::new(FakeCdn {
        failures: Mutex::new(failures.into()),
        progress: Mutex::new(progress.into()),
        accept_in_progress,
        requests: tx,
        accepted: AtomicU64::new(0),
    });
    let batching = Batching {
        delay: DELAY,
        collapse_above: 10,
        ignore: EDITOR_FILES
            .iter()
            .map(|p| glob::Pattern::new(p).unwrap())
            .collect(),
    };
    let queue = Invalidator::start(
        cdn,
        UrlPaths::new("", None),
        batching,
        &tokio::runtime::Handle::current(),
        None,
    );
    Setup { queue, requests }
}

impl Setup {
    async fn next(&mut self) -> Vec<String> {
        self.requests.recv().await.expect("a request")
    }

    fn counters(&self) -> [u64; 4] {
        let c = &self.queue.shared.counters;
        [&c.queued, &c.sent, &c.invalidations, &c.failed].map(|n| n.load(Ordering::Relaxed))
    }
}

#[tokio::test(start_paused = true)]
async fn changes_go_in_one_request_after_a_quiet_delay() {
    let mut s = setup(vec![]);
    let t0 = Instant::now();
    s.queue.changed("a.css", NEW);
    tokio::time::sleep(Duration::from_secs(1)).await;
    s.queue.changed("img/b c.png", Change::Deleted);
    s.queue.changed("a.css", Change::Written { new: false });
    assert_eq!(s.next().await, ["/a.css", "/img/b%20c.png"]);
    assert_eq!(Instant::now() - t0, Duration::from_secs(3));
    s.queue.finish(Duration::from_secs(30)).await;
    assert!(s.requests.try_recv().is_err(), "one request only");
    assert_eq!(s.counters(), [2, 2, 1, 0]);
}

#[tokio::test(start_paused = true)]
async fn editor_files_and_files_made_and_removed_are_not_sent() {
    let mut s = setup(vec![]);
    for name in [
        ".style.css.swp",
        "style.css~",
        "4913",
        ".#style.css",
        "tmp.html",
    ] {
        s.queue.changed(name, NEW);
        s.queue.changed(name, Change::Deleted);
    }
    s.queue.changed(".style.css.swx", NEW);
    s.queue.changed("style.css", Change::Written { new: false });
    assert_eq!(s.next().await, ["/style.css"]);
    s.queue.finish(Duration::from_secs(30)).await;
}

#[tokio::test(start_paused = true)]
async fn unmount_sends_at_once_what_is_queued() {
    let mut s = setup(vec![]);
    let t0 = Instant::now();
    s.queue.changed("a", NEW);
    s.queue.finish(Duration::from_secs(30)).await;
    assert_eq!(s.next().await, ["/a"]);
    assert!(Instant::now() - t0 < DELAY);
}

#[tokio::test(start_paused = true)]
async fn a_transient_error_is_retried_with_what_changed_meanwhile() {
    let down = CdnError::Transient("connection refused".into());
    let mut s = setup(vec![down.clone(), down]);
    let t0 = Instant::now();
    s.queue.changed("a", NEW);
    assert_eq!(s.next().await, ["/a"]);
    s.queue.changed("b", NEW);
    // Backoff: 1 s, then 2 s.
    assert_eq!(s.next().await, ["/a", "/b"]);
    assert_eq!(Instant::now() - t0, DELAY + Duration::from_secs(1));
    assert_eq!(s.next().await, ["/a", "/b"]);
    assert_eq!(Instant::now() - t0, DELAY + Duration::from_secs(3));
    s.queue.finish(Duration::from_secs(30)).await;
    assert_eq!(s.counters(), [2, 2, 1, 0]);
}

#[tokio::test(start_paused = true)]
async fn a_path_waits_until_cloudfront_has_accepted_its_invalidation() {
    let mut s = setup(vec![CdnError::Transient("connection refused".into())]);
    assert!(!s.queue.waiting("a"));
    s.queue.changed("a", NEW);
    // In the batch being gathered, then refused and waiting for its retry.
    assert!(s.queue.waiting("a"));
    assert_eq!(s.next().await, ["/a"]);
    assert!(s.queue.waiting("a"));
    assert!(!s.queue.waiting("b"));
    assert_eq!(s.next().await, ["/a"]);
    // Accepted: the sender settles the batch once CloudFront's answer is in.
    for _ in 0..100 {
        if !s.queue.waiting("a") {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert!(!s.queue.waiting("a"));
    s.queue.finish(Duration::from_secs(30)).await;
}

#[tokio::test(start_paused = true)]
async fn a_refused_batch_is_counted_failed_and_the_next_goes() {
    let mut s = setup(vec![CdnError::AccessDenied("no".into())]);
    s.queue.changed("a", NEW);
    assert_eq!(s.next().await, ["/a"]);
    s.queue.changed("b", NEW);
    assert_eq!(s.next().await, ["/b"]);
    s.queue.finish(Duration::from_secs(30)).await;
    assert_eq!(s.counters(), [2, 1, 1, 1]);
}

#[tokio::test(start_paused = true)]
async fn unmount_waits_a_bounded_time_for_a_cdn_that_is_down() {
    let down = || CdnError::Transient("timeout".into());
    let mut s = setup((0..100).map(|_| down()).collect());
    s.queue.changed("a", NEW);
    let t0 = Instant::now();
    s.queue.finish(Duration::from_secs(30)).await;
    assert_eq!(Instant::now() - t0, Duration::from_secs(30));
    assert_eq!(s.next().await, ["/a"]);
    assert_eq!(s.counters(), [1, 0, 0, 1]);
}

#[tokio::test(start_paused = true)]
async fn invalidations_in_progress_hold_back_what_would_exceed_the_limits() {
    // Crowded directories become wildcards: ten, then five, fill the limit of 15
    // wildcards in progress (the fake says "in progress" to the first five asks).
    let mut s = setup_with(vec![], true, vec![true; 5]);
    let crowd = |s: &Setup, dirs: std::ops::Range<usize>| {
        for d in dirs {
            for f in 0..11 {
                s.queue.changed(&format!("d{d}/{f}"), NEW);
            }
        }
    };
    crowd(&s, 0..10);
    assert_eq!(s.next().await.len(), 10);
    crowd(&s, 10..15);
    assert_eq!(s.next().await.len(), 5);
    // Crowded files alone go as files while no wildcard is left...
    let t0 = Instant::now();
    crowd(&s, 15..16);
    assert_eq!(s.next().await.len(), 11);
    assert_eq!(Instant::now() - t0, DELAY);
    // ...but more files than the limit need one: they wait until CloudFront says
    // the first ones completed, one backoff later.
    let t0 = Instant::now();
    for f in 0..3001 {
        s.queue.changed(&format!("big/{f}"), NEW);
    }
    assert_eq!(s.next().await, ["/big/*"]);
    assert_eq!(Instant::now() - t0, DELAY + Duration::from_secs(1));
    s.queue.finish(Duration::from_secs(30)).await;
}

#[tokio::test(start_paused = true)]
async fn unmount_retries_at_once_a_batch_waiting_for_its_backoff() {
    let down = || CdnError::Transient("timeout".into());
    let mut s = setup((0..5).map(|_| down()).collect());
    s.queue.changed("a", NEW);
    for _ in 0..5 {
        assert_eq!(s.next().await, ["/a"]);
    }
    // The next try is 16 s away; the unmount does not wait for it.
    let t0 = Instant::now();
    s.queue.finish(Duration::from_secs(30)).await;
    assert_eq!(s.next().await, ["/a"]);
    assert!(Instant::now() - t0 < Duration::from_secs(1));
    assert_eq!(s.counters(), [1, 1, 1, 0]);
}

#[test]
fn paths_waiting_beyond_the_bound_become_everything() {
    let mut unsent = Unsent::default();
    assert_eq!(unsent.extend(["/a".to_string()]), 1);
    unsent.extend((0..MAX_PENDING).map(|i| format!("/f{i}")));
    assert!(unsent.everything);
    assert!(unsent.paths.is_empty());
    assert_eq!(unsent.extend(["/b".to_string()]), 0);
}
