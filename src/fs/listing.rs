//! What recent listings and lookups said, trusted for the metadata TTL: a lookup
//! in a freshly listed directory needs no request, and neither does one of a name
//! that was just found missing.

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::time::{Duration, Instant};

use lru::LruCache;

use super::dir::DirEntry;

/// Entries of listings remembered, across directories.
const MAX_ENTRIES: usize = 200_000;
/// Names remembered as missing.
const MAX_MISSING: usize = 10_000;

/// What the records say about a name.
pub enum Known {
    /// Listed, with what the listing said.
    Listed(DirEntry),
    /// Not there: a complete listing did not have it, or a lookup found nothing.
    Missing,
    /// Nothing recent.
    Unknown,
}

struct Listing {
    /// When the listing began: it is complete as of then.
    started: Instant,
    complete: bool,
    entries: HashMap<String, (Instant, DirEntry)>,
}

pub struct Listings {
    ttl: Duration,
    dirs: LruCache<String, Listing>,
    entries: usize,
    missing: LruCache<String, Instant>,
}

impl Listings {
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            dirs: LruCache::unbounded(),
            entries: 0,
            missing: LruCache::new(NonZeroUsize::new(MAX_MISSING).unwrap_or(NonZeroUsize::MIN)),
        }
    }

    /// Entries of directory `dir` from a page of the listing begun at `started`.
    pub fn record(&mut self, dir: &str, started: Instant, page: &[DirEntry]) {
        if self.ttl.is_zero() {
            return;
        }
        let now = Instant::now();
        let listing = match self.dirs.get_mut(dir) {
            Some(l) if l.started == started => l,
            _ => {
                self.forget(dir);
                self.dirs.push(
                    dir.to_string(),
                    Listing {
                        started,
                        complete: false,
                        entries: HashMap::new(),
                    },
                );
                match self.dirs.get_mut(dir) {
                    Some(l) => l,
                    None => return,
                }
            }
        };
        for e in page {
            if listing
                .entries
                .insert(e.name.clone(), (now, e.clone()))
                .is_none()
            {
                self.entries += 1;
            }
        }
        while self.entries > MAX_ENTRIES {
            match self.dirs.pop_lru() {
                Some((_, l)) => self.entries -= l.entries.len(),
                None => break,
            }
        }
    }

    /// The listing of `dir` begun at `started` reached its end.
    pub fn complete(&mut self, dir: &str, started: Instant) {
        if let Some(l) = self.dirs.get_mut(dir)
            && l.started == started
        {
            l.complete = true;
        }
    }

    /// What is recent about `name` in `dir` (at `path`).
    pub fn find(&mut self, dir: &str, name: &str, path: &str) -> Known {
        let ttl = self.ttl;
        if let Some(at) = self.missing.get(path) {
            if at.elapsed() < ttl {
                return Known::Missing;
            }
            self.missing.pop(path);
        }
        let Some(listing) = self.dirs.get(dir) else {
            return Known::Unknown;
        };
        match listing.entries.get(name) {
            Some((at, e)) if at.elapsed() < ttl => Known::Listed(e.clone()),
            None if listing.complete && listing.started.elapsed() < ttl => Known::Missing,
            _ => Known::Unknown,
        }
    }

    /// A lookup of `path` found nothing.
    pub fn missing(&mut self, path: &str) {
        if !self.ttl.is_zero() {
            self.missing.put(path.to_string(), Instant::now());
        }
    }

    /// `path` in `dir` was created, removed or renamed here: what was recorded of
    /// the directory and of the name no longer holds.
    pub fn changed(&mut self, dir: &str, path: &str) {
        self.forget(dir);
        self.missing.pop(path);
    }

    /// Directory `dir` moved: nothing recorded at or below it holds.
    pub fn moved(&mut self, dir: &str) {
        let below = format!("{dir}/");
        let gone: Vec<String> = self
            .dirs
            .iter()
            .map(|(d, _)| d)
            .filter(|d| d.as_str() == dir || d.starts_with(&below))
            .cloned()
            .collect();
        for d in gone {
            self.forget(&d);
        }
        self.missing.clear();
    }

    fn forget(&mut self, dir: &str) {
        if let Some(l) = self.dirs.pop(dir) {
            self.entries -= l.entries.len();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::inode::Kind;

    fn entry(name: &str) -> DirEntry {
        DirEntry {
            name: name.into(),
            kind: Kind::File,
            meta: None,
        }
    }

    #[test]
    fn a_complete_listing_answers_for_present_and_missing_names() {
        let mut l = Listings::new(Duration::from_secs(60));
        let started = Instant::now();
        l.record("d", started, &[entry("a")]);
        assert!(matches!(l.find("d", "b", "d/b"), Known::Unknown));
        l.complete("d", started);
        assert!(matches!(l.find("d", "a", "d/a"), Known::Listed(_)));
        assert!(matches!(l.find("d", "b", "d/b"), Known::Missing));
        l.changed("d", "d/b");
        assert!(matches!(l.find("d", "a", "d/a"), Known::Unknown));
    }

    #[test]
    fn nothing_is_kept_with_a_zero_ttl() {
        let mut l = Listings::new(Duration::ZERO);
        let started = Instant::now();
        l.record("d", started, &[entry("a")]);
        l.complete("d", started);
        l.missing("d/x");
        assert!(matches!(l.find("d", "a", "d/a"), Known::Unknown));
        assert!(matches!(l.find("d", "x", "d/x"), Known::Unknown));
    }
}
