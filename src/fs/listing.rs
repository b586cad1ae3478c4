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
/// Names remembered as missing, as changed here, and directories too large to
/// list for a lookup.
const MAX_NAMES: usize = 10_000;

/// What the records say about a name.
pub enum Known {
    /// Listed, with what the listing said, when it began, and whether it was
    /// made for lookups (which then want the headers a HEAD would have given).
    Listed(DirEntry, Instant, bool),
    /// Not there: a complete listing did not have it, or a lookup found nothing.
    Missing,
    /// Nothing recent.
    Unknown,
}

struct Listing {
    /// When the listing began: it is complete as of then.
    started: Instant,
    complete: bool,
    /// Made to answer lookups rather than a readdir.
    for_lookups: bool,
    /// By name: when recorded, in which place of the listing, and what.
    entries: HashMap<String, (Instant, usize, DirEntry)>,
}

pub struct Listings {
    ttl: Duration,
    /// How long an absence is trusted: a name missing, a directory empty.
    negative_ttl: Duration,
    dirs: LruCache<String, Listing>,
    entries: usize,
    missing: LruCache<String, Instant>,
    /// Paths created, removed or renamed here, with their directory and when:
    /// what was recorded of them before then no longer holds.
    changed: LruCache<String, (String, Instant)>,
    /// The same, by directory: when something in it last changed here.
    dir_changed: LruCache<String, Instant>,
    /// When a directory last moved here.
    last_move: Option<Instant>,
    /// Directories in which a lookup found nothing.
    missed_in: LruCache<String, ()>,
    /// Directories whose listing takes more than one page.
    large: LruCache<String, ()>,
    /// The name last looked up in each directory.
    last_lookup: LruCache<String, String>,
}

impl Listings {
    pub fn new(ttl: Duration, negative_ttl: Duration) -> Self {
        Self {
            ttl,
            negative_ttl,
            dirs: LruCache::unbounded(),
            entries: 0,
            missing: LruCache::new(names()),
            changed: LruCache::new(names()),
            dir_changed: LruCache::new(names()),
            missed_in: LruCache::new(names()),
            last_move: None,
            large: LruCache::new(names()),
            last_lookup: LruCache::new(names()),
        }
    }

    /// Entries of directory `dir` from a page of the listing begun at `started`.
    pub fn record(&mut self, dir: &str, started: Instant, page: &[DirEntry]) {
        if self.ttl.is_zero() || self.last_move.is_some_and(|m| started < m) {
            return;
        }
        let now = Instant::now();
        let listing = match self.dirs.get_mut(dir) {
            Some(l) if l.started == started => l,
            // A listing begun later is already there.
            Some(l) if l.started > started => return,
            _ => {
                self.forget(dir);
                self.dirs.push(
                    dir.to_string(),
                    Listing {
                        started,
                        complete: false,
                        for_lookups: false,
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
            let place = listing.entries.len();
            match listing.entries.get_mut(&e.name) {
                // Recorded again (a listing served again): keeps its place.
                Some(recorded) => recorded.2 = e.clone(),
                None => {
                    listing
                        .entries
                        .insert(e.name.clone(), (now, place, e.clone()));
                    self.entries += 1;
                }
            }
        }
        while self.entries > MAX_ENTRIES {
            match self.dirs.pop_lru() {
                Some((_, l)) => self.entries -= l.entries.len(),
                None => break,
            }
        }
    }

    /// The listing of `dir` begun at `started` was made to answer lookups.
    pub fn made_for_lookups(&mut self, dir: &str, started: Instant) {
        if let Some(l) = self.dirs.get_mut(dir)
            && l.started == started
        {
            l.for_lookups = true;
        }
    }

    /// `name` in `dir` is being looked up: does it come after the name looked up
    /// there last, in listing order (`ls -l`, `rsync`, `cp` going through it)?
    pub fn in_order(&mut self, dir: &str, name: &str) -> bool {
        let last = self.last_lookup.push(dir.to_string(), name.to_string());
        last.is_some_and(|(last_dir, last)| last_dir == dir && last.as_str() < name)
    }

    /// Up to `n` entries that follow `name` in the listing of `dir`, still fresh.
    pub fn following(&mut self, dir: &str, name: &str, n: usize) -> Vec<DirEntry> {
        let ttl = self.ttl;
        let Some(listing) = self.dirs.get(dir) else {
            return Vec::new();
        };
        let Some((_, from, _)) = listing.entries.get(name) else {
            return Vec::new();
        };
        if listing.started.elapsed() >= ttl {
            return Vec::new();
        }
        let mut after: Vec<&(Instant, usize, DirEntry)> = listing
            .entries
            .values()
            .filter(|(at, place, _)| place > from && at.elapsed() < ttl)
            .collect();
        after.sort_by_key(|(_, place, _)| *place);
        after
            .into_iter()
            .take(n)
            .map(|(_, _, e)| e.clone())
            .collect()
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
        let (ttl, negative_ttl) = (self.ttl, self.negative_ttl);
        let changed = self.changed.get(path).map(|(_, at)| *at);
        // Only what was seen after the last change here holds.
        let holds =
            |seen: Instant, ttl: Duration| seen.elapsed() < ttl && changed.is_none_or(|c| c < seen);
        if let Some(at) = self.missing.get(path) {
            if holds(*at, negative_ttl) {
                return Known::Missing;
            }
            self.missing.pop(path);
        }
        let Some(listing) = self.dirs.get(dir) else {
            return Known::Unknown;
        };
        match listing.entries.get(name) {
            Some((at, _, e)) if holds(listing.started, ttl) && at.elapsed() < ttl => {
                Known::Listed(e.clone(), listing.started, listing.for_lookups)
            }
            None if listing.complete && holds(listing.started, negative_ttl) => Known::Missing,
            _ => Known::Unknown,
        }
    }

    /// All entries of `dir`, and when their listing began, if it is complete and
    /// nothing in `dir` changed here since it began.
    pub fn snapshot(&mut self, dir: &str) -> Option<(Instant, Vec<DirEntry>)> {
        let changed = self.dir_changed.get(dir).copied();
        let listing = self.dirs.get(dir)?;
        // An empty listing says only that names are absent.
        let ttl = if listing.entries.is_empty() {
            self.ttl.min(self.negative_ttl)
        } else {
            self.ttl
        };
        let holds = listing.complete
            && listing.started.elapsed() < ttl
            && changed.is_none_or(|c| c < listing.started);
        holds.then(|| {
            let mut entries: Vec<&(Instant, usize, DirEntry)> = listing.entries.values().collect();
            entries.sort_by_key(|(_, place, _)| *place);
            let entries = entries.into_iter().map(|(_, _, e)| e.clone()).collect();
            (listing.started, entries)
        })
    }

    /// Directory `dir`, found missing since `begun`, was created here: empty.
    pub fn created_empty(&mut self, dir: &str, begun: Instant) {
        self.record(dir, begun, &[]);
        self.complete(dir, begun);
    }

    /// Is `dir` worth listing ahead: not large, and not listed in full within
    /// the TTL?
    pub fn worth_listing_ahead(&mut self, dir: &str) -> bool {
        let fresh = self
            .dirs
            .peek(dir)
            .is_some_and(|l| l.complete && l.started.elapsed() < self.ttl);
        !self.ttl.is_zero() && !fresh && !self.large.contains(dir)
    }

    /// Is `dir` worth listing to answer a lookup in it: also, a name was found
    /// missing in it before (files are being created there, one after the
    /// other), or the lookup is `in_order` (names are being gone through)? A
    /// single lookup is cheaper alone: a listing with a delimiter may have to
    /// pass every key below the directory.
    pub fn worth_listing_for_lookups(&mut self, dir: &str, in_order: bool) -> bool {
        (in_order || self.missed_in.contains(dir)) && self.worth_listing_ahead(dir)
    }

    /// `dir` has more entries than a page of a listing.
    pub fn large(&mut self, dir: &str) {
        self.large.put(dir.to_string(), ());
    }

    /// A lookup of `path` in `dir` found nothing.
    pub fn missing(&mut self, dir: &str, path: &str) {
        if !self.negative_ttl.is_zero() {
            self.missing.put(path.to_string(), Instant::now());
            self.missed_in.put(dir.to_string(), ());
        }
    }

    /// `path` in `dir` was created, removed or renamed here: what was recorded of
    /// the name no longer holds; of the other names in `dir`, it still does.
    pub fn changed(&mut self, dir: &str, path: &str) {
        self.missing.pop(path);
        let now = Instant::now();
        if let Some((old, (old_dir, at))) = self.changed.push(path.to_string(), (dir.into(), now))
            && old != path
            && at.elapsed() < self.ttl
        {
            // A change still within the TTL is forgotten: so must be its directory.
            self.forget(&old_dir);
        }
        if let Some((old_dir, at)) = self.dir_changed.push(dir.to_string(), now)
            && old_dir != dir
            && at.elapsed() < self.ttl
        {
            self.forget(&old_dir);
        }
    }

    /// When `path` last changed here, if it is still remembered.
    pub fn changed_at(&mut self, path: &str) -> Option<Instant> {
        self.changed.peek(path).map(|(_, at)| *at)
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
        // A listing begun before, still in flight, may show either side.
        self.last_move = Some(Instant::now());
    }

    fn forget(&mut self, dir: &str) {
        if let Some(l) = self.dirs.pop(dir) {
            self.entries -= l.entries.len();
        }
    }
}

fn names() -> NonZeroUsize {
    NonZeroUsize::new(MAX_NAMES).unwrap_or(NonZeroUsize::MIN)
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
        let mut l = Listings::new(Duration::from_secs(60), Duration::from_secs(60));
        let started = Instant::now();
        l.record("d", started, &[entry("a")]);
        assert!(matches!(l.find("d", "b", "d/b"), Known::Unknown));
        l.complete("d", started);
        assert!(matches!(l.find("d", "a", "d/a"), Known::Listed(..)));
        assert!(matches!(l.find("d", "b", "d/b"), Known::Missing));
        l.changed("d", "d/b");
        assert!(matches!(l.find("d", "a", "d/a"), Known::Listed(..)));
        assert!(matches!(l.find("d", "b", "d/b"), Known::Unknown));
    }

    #[test]
    fn only_a_listing_begun_after_a_change_answers_for_the_name() {
        let mut l = Listings::new(Duration::from_secs(60), Duration::from_secs(60));
        let before = Instant::now();
        l.missing("d", "d/b");
        l.changed("d", "d/b");
        assert!(matches!(l.find("d", "b", "d/b"), Known::Unknown));
        l.record("d", before, &[]);
        l.complete("d", before);
        assert!(matches!(l.find("d", "b", "d/b"), Known::Unknown));
        assert!(matches!(l.find("d", "c", "d/c"), Known::Missing));
        let after = Instant::now();
        l.record("d", after, &[entry("b")]);
        l.complete("d", after);
        assert!(matches!(l.find("d", "b", "d/b"), Known::Listed(..)));
    }

    #[test]
    fn a_snapshot_is_a_complete_listing_with_no_change_since() {
        let mut l = Listings::new(Duration::from_secs(60), Duration::from_secs(60));
        let started = Instant::now();
        l.record("d", started, &[entry("b"), entry("a")]);
        assert!(l.snapshot("d").is_none(), "incomplete");
        l.complete("d", started);
        let (at, entries) = l.snapshot("d").unwrap();
        assert_eq!(at, started);
        let names: Vec<_> = entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["b", "a"], "in the order listed");
        // An older listing does not replace it.
        l.record("d", started - Duration::from_secs(1), &[]);
        assert_eq!(l.snapshot("d").unwrap().1.len(), 2);
        l.changed("d", "d/c");
        assert!(l.snapshot("d").is_none(), "changed since");
    }

    #[test]
    fn a_listing_begun_before_a_directory_moved_is_not_recorded() {
        let mut l = Listings::new(Duration::from_secs(60), Duration::from_secs(60));
        let before = Instant::now();
        l.moved("x");
        l.record("d", before, &[entry("a")]);
        l.complete("d", before);
        assert!(matches!(l.find("d", "a", "d/a"), Known::Unknown));
        assert!(l.snapshot("d").is_none());
    }

    #[test]
    fn a_directory_is_worth_listing_unless_fresh_or_large() {
        let mut l = Listings::new(Duration::from_secs(60), Duration::from_secs(60));
        assert!(l.worth_listing_ahead("d"));
        assert!(
            !l.worth_listing_for_lookups("d", false),
            "no name missed yet"
        );
        assert!(l.worth_listing_for_lookups("d", true), "names gone through");
        l.missing("d", "d/x");
        assert!(l.worth_listing_for_lookups("d", false));
        let started = Instant::now();
        l.record("d", started, &[entry("a")]);
        assert!(
            l.worth_listing_ahead("d"),
            "an incomplete listing answers too little"
        );
        l.complete("d", started);
        assert!(!l.worth_listing_ahead("d"));
        assert!(!l.worth_listing_for_lookups("d", true));
        l.large("e");
        assert!(!l.worth_listing_ahead("e"));
    }

    #[test]
    fn absences_are_trusted_for_their_own_ttl() {
        let mut l = Listings::new(Duration::from_secs(60), Duration::ZERO);
        let started = Instant::now();
        l.record("d", started, &[entry("a")]);
        l.complete("d", started);
        l.missing("d", "d/x");
        assert!(matches!(l.find("d", "a", "d/a"), Known::Listed(..)));
        assert!(matches!(l.find("d", "x", "d/x"), Known::Unknown));
        assert!(matches!(l.find("d", "y", "d/y"), Known::Unknown));
        l.created_empty("e", Instant::now());
        assert!(l.snapshot("e").is_none(), "an empty listing is an absence");
        assert!(l.snapshot("d").is_some());
    }

    #[test]
    fn nothing_is_kept_with_a_zero_ttl() {
        let mut l = Listings::new(Duration::ZERO, Duration::ZERO);
        let started = Instant::now();
        l.record("d", started, &[entry("a")]);
        l.complete("d", started);
        l.missing("d", "d/x");
        assert!(matches!(l.find("d", "a", "d/a"), Known::Unknown));
        assert!(matches!(l.find("d", "x", "d/x"), Known::Unknown));
    }
}
