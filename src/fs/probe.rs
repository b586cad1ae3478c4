//! After an outage, uploads left pending go as soon as S3 answers again, not
//! after a back-off of minutes: the files waiting share one cheap probe (a
//! listing of one key of the mount's prefix), and all go once it is answered.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::store::{ListRequest, ObjectStore};

/// Pause between probes that found no answer (each probe itself is retried by
/// the store for its retry time first).
const PROBE_PAUSE: Duration = Duration::from_secs(1);

pub struct Prober {
    store: Arc<dyn ObjectStore>,
    prefix: String,
    /// When the last probe ended and whether S3 answered it; the lock makes one
    /// probe at a time.
    last: tokio::sync::Mutex<Option<(Instant, bool)>>,
}

impl Prober {
    pub fn new(store: Arc<dyn ObjectStore>, prefix: String) -> Self {
        Self {
            store,
            prefix,
            last: tokio::sync::Mutex::new(None),
        }
    }

    /// Wait until S3 answers a request made after this call began: one probe
    /// answered serves every file that waited for it. Did it take a while (an
    /// outage, rather than an error of another kind)?
    pub async fn answered(&self) -> bool {
        let since = Instant::now();
        let waited = || since.elapsed() >= PROBE_PAUSE;
        loop {
            let mut last = self.last.lock().await;
            match *last {
                Some((at, true)) if at >= since => return waited(),
                // Another waiter's probe found no answer a moment ago.
                Some((at, false)) if at.elapsed() < PROBE_PAUSE => {
                    drop(last);
                    tokio::time::sleep(PROBE_PAUSE - at.elapsed()).await;
                    continue;
                }
                _ => {}
            }
            let request = ListRequest::one_entry(&self.prefix);
            // Any answer of the server's own (access denied, say) is one.
            let answered = !matches!(self.store.list(request).await, Err(e) if e.is_transient());
            *last = Some((Instant::now(), answered));
            if answered {
                return waited();
            }
            drop(last);
            tokio::time::sleep(PROBE_PAUSE).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoreError;
    use crate::store::memory::{MemoryStore, Op};

    #[tokio::test(start_paused = true)]
    async fn files_waiting_share_one_probe_and_go_once_it_is_answered() {
        let memory = Arc::new(MemoryStore::new());
        for _ in 0..5 {
            memory.fail_next(Op::List, StoreError::Unreachable("down".into()));
        }
        let prober = Arc::new(Prober::new(memory.clone(), String::new()));
        let waiting: Vec<_> = (0..100)
            .map(|_| {
                let prober = prober.clone();
                tokio::spawn(async move { prober.answered().await })
            })
            .collect();
        let started = Instant::now();
        for w in waiting {
            assert!(w.await.unwrap(), "an outage");
        }
        assert_eq!(memory.calls(Op::List), 6, "five unanswered, one answered");
        assert!(
            started.elapsed() <= PROBE_PAUSE * 5,
            "{:?}",
            started.elapsed()
        );
        // Later, a server that answers at once: the error was of another kind.
        tokio::time::sleep(PROBE_PAUSE).await;
        assert!(!prober.answered().await);
        assert_eq!(memory.calls(Op::List), 7);
    }
}
