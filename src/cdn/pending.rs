//! The changes of the batch being gathered: for each path, whether an object was
//! there before the batch began and whether one is there now. A file made and
//! removed again inside the batch (an editor's temporary file) was never served,
//! so it is not sent.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

use crate::fs::changes::Change;

/// A batch waits for this many quiet delays at most, under a steady stream of
/// changes.
const MAX_DELAYS: u32 = 10;

#[derive(Debug, Clone, Copy)]
struct Entry {
    existed_before: bool,
    exists_now: bool,
}

/// What one batch invalidates.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Batch {
    /// Paths in the mount, sorted.
    pub paths: Vec<String>,
    /// More paths changed than are kept: invalidate everything.
    pub everything: bool,
}

pub struct Pending {
    entries: HashMap<String, Entry>,
    everything: bool,
    /// Paths kept at most; beyond, the batch becomes "everything".
    limit: usize,
    first: Option<Instant>,
    last: Option<Instant>,
}

impl Pending {
    pub fn new(limit: usize) -> Self {
        Self {
            entries: HashMap::new(),
            everything: false,
            limit,
            first: None,
            last: None,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.first.is_none()
    }

    /// Is a change of `path` in this batch?
    pub fn holds(&self, path: &str) -> bool {
        self.everything || self.entries.contains_key(path)
    }

    /// Record `change` of `path`; true if it began a batch.
    pub fn record(&mut self, path: &str, change: Change, now: Instant) -> bool {
        let began = self.first.is_none();
        self.first.get_or_insert(now);
        self.last = Some(now);
        if self.everything {
            return began;
        }
        let exists_now = matches!(change, Change::Written { .. });
        if let Some(entry) = self.entries.get_mut(path) {
            entry.exists_now = exists_now;
            return began;
        }
        if self.entries.len() >= self.limit {
            tracing::warn!(
                "more than {} files changed in one CloudFront batch: invalidating everything",
                self.limit
            );
            self.entries.clear();
            self.everything = true;
            return began;
        }
        let existed_before = !matches!(change, Change::Written { new: true });
        self.entries.insert(
            path.to_string(),
            Entry {
                existed_before,
                exists_now,
            },
        );
        began
    }

    /// Everything is to be invalidated (an earlier run's queue said so).
    pub fn record_everything(&mut self, now: Instant) {
        self.first.get_or_insert(now);
        self.last = Some(now);
        self.entries.clear();
        self.everything = true;
    }

    /// When the batch goes: after `delay` without a change, or `MAX_DELAYS`
    /// delays after its first change.
    pub fn due(&self, delay: Duration) -> Option<Instant> {
        let (first, last) = (self.first?, self.last?);
        let quiet = last.checked_add(delay)?;
        Some(match first.checked_add(delay.saturating_mul(MAX_DELAYS)) {
            Some(longest) => quiet.min(longest),
            None => quiet,
        })
    }

    /// The changes gathered, as changes again (to be saved): `(path, change)`,
    /// and whether everything is to be invalidated.
    pub fn changes(&self) -> (Vec<(String, Change)>, bool) {
        let changes = self
            .entries
            .iter()
            .filter_map(|(path, e)| {
                let change = match (e.existed_before, e.exists_now) {
                    (_, true) => Change::Written {
                        new: !e.existed_before,
                    },
                    (true, false) => Change::Deleted,
                    (false, false) => return None,
                };
                Some((path.clone(), change))
            })
            .collect();
        (changes, self.everything)
    }

    /// Take the batch, leaving an empty one.
    pub fn take(&mut self) -> Batch {
        let mut paths: Vec<String> = self
            .entries
            .drain()
            .filter(|(_, e)| e.existed_before || e.exists_now)
            .map(|(path, _)| path)
            .collect();
        paths.sort();
        let everything = std::mem::take(&mut self.everything);
        self.first = None;
        self.last = None;
        Batch { paths, everything }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NEW: Change = Change::Written { new: true };
    const OVER: Change = Change::Written { new: false };
    const GONE: Change = Change::Deleted;

    fn batch(changes: &[(&str, Change)]) -> Batch {
        let mut p = Pending::new(100);
        let now = Instant::now();
        for (path, change) in changes {
            p.record(path, *change, now);
        }
        p.take()
    }

    #[test]
    fn a_file_made_and_removed_inside_the_batch_is_not_sent() {
        let b = batch(&[
            (".a.swp", NEW),
            ("a", OVER),
            (".a.swp", OVER),
            (".a.swp", GONE),
        ]);
        assert_eq!(b.paths, ["a"]);
    }

    #[test]
    fn what_existed_before_is_sent_whatever_happened_to_it() {
        // Renamed away and written anew (vim's backup), deleted, replaced.
        let b = batch(&[
            ("a", GONE),
            ("a~", NEW),
            ("a", NEW),
            ("a~", GONE),
            ("b", GONE),
            ("c", OVER),
            ("d", NEW),
        ]);
        assert_eq!(b.paths, ["a", "b", "c", "d"]);
        assert!(!b.everything);
    }

    #[test]
    fn too_many_paths_make_the_batch_everything() {
        let mut p = Pending::new(3);
        let now = Instant::now();
        for i in 0..4 {
            p.record(&format!("f{i}"), NEW, now);
        }
        p.record("g", NEW, now);
        assert_eq!(
            p.take(),
            Batch {
                paths: vec![],
                everything: true
            }
        );
        assert!(p.is_empty());
        p.record("h", NEW, now);
        assert_eq!(p.take().paths, ["h"]);
    }

    #[test]
    fn the_batch_goes_after_a_quiet_delay_or_at_most_ten_delays() {
        let mut p = Pending::new(10);
        let t0 = Instant::now();
        let delay = Duration::from_secs(2);
        assert_eq!(p.due(delay), None);
        assert!(p.record("a", NEW, t0));
        assert!(!p.record("b", NEW, t0 + Duration::from_secs(1)));
        assert_eq!(p.due(delay), Some(t0 + Duration::from_secs(3)));
        p.record("c", NEW, t0 + Duration::from_secs(19));
        assert_eq!(p.due(delay), Some(t0 + Duration::from_secs(20)));
    }
}
