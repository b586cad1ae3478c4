//! What the filesystem tells `s3mount status` about its uploads: which files are
//! being uploaded (their size), which uploads failed (why, and where the data
//! is kept), and the conflicts with other writers. The bytes sent come from the
//! request layer ([`crate::store::counting::CountingStore::sending`]).

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::Mutex;
use std::time::{Instant, SystemTime};

use super::{Conflict, Failure, unix_secs};

/// Conflicts remembered for the status view, the latest ones (the log has all).
const CONFLICTS_KEPT: usize = 100;
/// Failed uploads remembered; past this, the oldest failure is forgotten (its
/// file is still retried, and its data kept).
const FAILURES_KEPT: usize = 10_000;

/// A file's upload under way, as the filesystem sees it.
#[derive(Debug, Clone)]
pub struct Upload {
    pub key: String,
    pub total: u64,
    pub started: Instant,
}

#[derive(Default)]
struct State {
    uploads: HashMap<String, Upload>,
    failed: HashMap<String, Failure>,
    /// Order of `failed`, oldest first, to forget the oldest.
    failed_order: VecDeque<String>,
    conflicts: VecDeque<Conflict>,
    /// For each key whose last upload ended in a conflict, where this mount's
    /// version went (until the key's next upload begins), oldest first.
    conflict_at: HashMap<String, String>,
    conflict_order: VecDeque<String>,
}

#[derive(Default)]
pub struct Board {
    state: Mutex<State>,
}

impl Board {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The upload of `key`, `total` bytes, begins.
    pub fn upload_begins(&self, key: &str, total: u64) {
        let mut state = self.state();
        if state.conflict_at.remove(key).is_some() {
            state.conflict_order.retain(|k| k != key);
        }
        state.uploads.insert(
            key.to_string(),
            Upload {
                key: key.to_string(),
                total,
                started: Instant::now(),
            },
        );
    }

    /// The attempt to upload `key` is over, however it went.
    pub fn upload_ends(&self, key: &str) {
        self.state().uploads.remove(key);
    }

    /// The changes `id` (a staging file's name, or the key of a file without
    /// one) are in S3, or went elsewhere (removed, replaced, put aside): an
    /// earlier failure of theirs is over.
    pub fn settled(&self, id: &str) {
        let mut state = self.state();
        if state.failed.remove(id).is_some() {
            state.failed_order.retain(|k| k != id);
        }
    }

    /// The upload of the changes `id` to `key` failed for `reason`; their data
    /// is in `kept_in`. Known by `id`, not by key: a rename keeps the failure.
    pub fn failed(&self, id: &str, key: &str, reason: &str, kept_in: Option<&Path>) {
        let mut state = self.state();
        let failure = Failure {
            key: key.to_string(),
            reason: reason.to_string(),
            kept_in: kept_in.map(Path::to_path_buf),
            at: unix_secs(SystemTime::now()),
        };
        if state.failed.insert(id.to_string(), failure).is_none() {
            state.failed_order.push_back(id.to_string());
            if state.failed_order.len() > FAILURES_KEPT
                && let Some(oldest) = state.failed_order.pop_front()
            {
                state.failed.remove(&oldest);
            }
        }
    }

    /// Another writer changed `key`: this mount's version is at `saved_as` (a
    /// key beside it, or a file put aside in the cache directory).
    pub fn conflict(&self, key: &str, saved_as: String) {
        let mut state = self.state();
        if state
            .conflict_at
            .insert(key.to_string(), saved_as.clone())
            .is_none()
        {
            state.conflict_order.push_back(key.to_string());
            if state.conflict_order.len() > FAILURES_KEPT
                && let Some(oldest) = state.conflict_order.pop_front()
            {
                state.conflict_at.remove(&oldest);
            }
        }
        state.conflicts.push_back(Conflict {
            key: key.to_string(),
            saved_as,
            at: unix_secs(SystemTime::now()),
        });
        if state.conflicts.len() > CONFLICTS_KEPT {
            state.conflicts.pop_front();
        }
    }

    /// The upload of `key` under way, if one is.
    pub fn upload_of(&self, key: &str) -> Option<Upload> {
        self.state().uploads.get(key).cloned()
    }

    /// The last failure of an upload to `key`, if it is not settled.
    pub fn failure_of(&self, key: &str) -> Option<Failure> {
        self.state().failed.values().find(|f| f.key == key).cloned()
    }

    /// Where this mount's version of `key` went, if its last upload ended in a
    /// conflict.
    pub fn conflict_of(&self, key: &str) -> Option<String> {
        self.state().conflict_at.get(key).cloned()
    }

    /// The uploads under way, the failures (oldest first) and the conflicts
    /// (oldest first).
    pub fn snapshot(&self) -> (Vec<Upload>, Vec<Failure>, Vec<Conflict>) {
        let state = self.state();
        let uploads: Vec<Upload> = state.uploads.values().cloned().collect();
        let failed = state
            .failed_order
            .iter()
            .filter_map(|k| state.failed.get(k).cloned())
            .collect();
        let conflicts = state.conflicts.iter().cloned().collect();
        (uploads, failed, conflicts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_lasts_until_its_changes_are_settled() {
        let board = Board::default();
        board.upload_begins("a", 10);
        board.upload_ends("a");
        board.failed("1", "a", "server down", Some(Path::new("/c/staging/1")));
        board.failed("2", "b", "server down", None);
        // Renamed meanwhile: the same changes, under their new key.
        board.failed("1", "a2", "still down", Some(Path::new("/c/staging/1")));
        let (uploads, failed, _) = board.snapshot();
        assert!(uploads.is_empty());
        let keys: Vec<&str> = failed.iter().map(|f| f.key.as_str()).collect();
        assert_eq!(keys, ["a2", "b"]);
        assert_eq!(failed[0].reason, "still down");
        board.settled("1");
        board.conflict("b", "b.conflict-1".into());
        board.settled("2");
        let (_, failed, conflicts) = board.snapshot();
        assert!(failed.is_empty());
        assert_eq!(conflicts[0].saved_as, "b.conflict-1");
    }

    #[test]
    fn what_the_board_remembers_is_bounded() {
        let board = Board::default();
        for i in 0..FAILURES_KEPT + 5 {
            board.failed(&i.to_string(), &format!("k{i}"), "down", None);
        }
        for i in 0..CONFLICTS_KEPT + 5 {
            board.conflict(&format!("c{i}"), String::new());
        }
        let (_, failed, conflicts) = board.snapshot();
        assert_eq!(failed.len(), FAILURES_KEPT);
        assert_eq!(failed[0].key, "k5");
        assert_eq!(conflicts.len(), CONFLICTS_KEPT);
        assert_eq!(conflicts[0].key, "c5");
    }
}
