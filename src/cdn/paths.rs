//! URL paths of files, as CloudFront expects them, and the paths of one
//! invalidation: many files of one directory collapse into `/dir/*`, and the whole
//! stays within CloudFront's limits.

use std::collections::{BTreeMap, BTreeSet};

use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};

/// What CloudFront wants encoded in an invalidation path: non-ASCII, the
/// characters RFC 1738 calls unsafe, and `?`, which would start a query (and which
/// browsers encode in a file name). Anything else must stay as it is, or the path
/// would not match the cached URL.
const UNSAFE: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'[')
    .add(b'\\')
    .add(b']')
    .add(b'^')
    .add(b'`')
    .add(b'{')
    .add(b'|')
    .add(b'}')
    .add(b'~');

/// Maps paths in the mount to URL paths of the distribution.
#[derive(Debug, Clone)]
pub struct UrlPaths {
    /// URL path of the mount's root: `/`, or `/prefix/`.
    root: String,
    /// A file of this name is also served as its directory's URL (`/dir/`).
    index_document: Option<String>,
}

impl UrlPaths {
    /// `path_prefix`: the URL path the mount's root is served under, written as
    /// the names are (not encoded), with or without slashes around it.
    pub fn new(path_prefix: &str, index_document: Option<String>) -> Self {
        let prefix = path_prefix.trim_matches('/');
        let root = if prefix.is_empty() {
            "/".to_string()
        } else {
            format!("/{}/", encode(prefix))
        };
        Self {
            root,
            index_document,
        }
    }

    pub fn root(&self) -> &str {
        &self.root
    }

    /// The URL paths that serve the file at `path` (`dir/name` in the mount).
    pub fn of(&self, path: &str) -> Vec<String> {
        let mut paths = vec![format!("{}{}", self.root, encode(path))];
        let (dir, name) = match path.rsplit_once('/') {
            Some((dir, name)) => (Some(dir), name),
            None => (None, path),
        };
        if self.index_document.as_deref() == Some(name) {
            paths.push(match dir {
                Some(dir) => format!("{}{}/", self.root, encode(dir)),
                None => self.root.clone(),
            });
        }
        paths.into_iter().map(wildcard_at_star).collect()
    }
}

/// CloudFront reads `*` as a wildcard, allowed only at the end, and a `*` left
/// as it is in a name is what browsers request: a name with one is invalidated
/// as everything that starts like it, up to the first `*`.
fn wildcard_at_star(mut path: String) -> String {
    if let Some(star) = path.find('*') {
        path.truncate(star + 1);
    }
    path
}

fn encode(path: &str) -> String {
    utf8_percent_encode(path, UNSAFE).to_string()
}

/// How many paths one invalidation may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    pub files: usize,
    pub wildcards: usize,
}

/// The paths of one invalidation that covers every path of `paths` (all below
/// `root`), or None if even `root*` does not fit `budget`.
///
/// A directory with more than `collapse_above` entries changed becomes `dir/*`
/// while wildcards are left in the budget (so a budget short of wildcards sends
/// files rather than wait). Then, while the paths exceed the budget, the fullest
/// directories are collapsed (those holding wildcards first when wildcards are
/// short), up to `root*`.
pub fn plan(
    paths: &BTreeSet<String>,
    root: &str,
    collapse_above: usize,
    budget: Budget,
) -> Option<Vec<String>> {
    let mut items = paths.clone();
    let mut count = Count::of(&items);
    // Deepest directories first, so that a collapsed directory counts as one
    // entry of its parent.
    let deepest = items.iter().map(|p| depth(p)).max().unwrap_or(0);
    for level in (0..=deepest).rev() {
        for (dir, entries) in groups(&items, root) {
            if depth(&dir) != level || entries.len() <= collapse_above {
                continue;
            }
            let merges = entries.iter().any(|e| e.ends_with('*'));
            if merges || count.wildcards < budget.wildcards {
                count.collapse(&mut items, &dir);
            }
        }
    }
    // Each pass collapses directories until the paths fit: it lowers the count,
    // or moves paths up, so it ends at `root*` (which is in no directory).
    while !count.fits(budget) {
        let groups = groups(&items, root);
        if groups.is_empty() {
            return None;
        }
        let wildcards_short = count.wildcards > budget.wildcards;
        let mut order: Vec<(usize, usize, usize, String)> = groups
            .into_iter()
            .map(|(dir, entries)| {
                let wildcards = entries.iter().filter(|e| e.ends_with('*')).count();
                (wildcards, entries.len(), depth(&dir), dir)
            })
            .filter(|(wildcards, _, _, _)| !wildcards_short || *wildcards > 0)
            .collect();
        // What gains most first: merging the most wildcards, or removing the most
        // entries; when no directory holds two, the deepest move up.
        if wildcards_short {
            order.sort_by_key(|g| std::cmp::Reverse((g.0, g.1, g.2)));
        } else {
            order.sort_by_key(|g| std::cmp::Reverse((g.1, g.2)));
        }
        let gains = order.first().is_some_and(
            |(w, len, _, _)| {
                if wildcards_short { *w > 1 } else { *len > 1 }
            },
        );
        if !gains {
            let deepest = order.iter().map(|g| g.2).max().unwrap_or(0);
            order.retain(|g| g.2 == deepest);
        }
        for (_, len, _, dir) in order {
            if gains && len < 2 {
                break;
            }
            if !is_covered(&items, &dir, root) {
                count.collapse(&mut items, &dir);
                if count.fits(budget) {
                    break;
                }
            }
        }
    }
    Some(items.into_iter().collect())
}

/// Files and wildcards among the paths.
#[derive(Debug, Clone, Copy)]
struct Count {
    files: usize,
    wildcards: usize,
}

impl Count {
    fn of(items: &BTreeSet<String>) -> Self {
        let wildcards = items.iter().filter(|p| p.ends_with('*')).count();
        Self {
            files: items.len() - wildcards,
            wildcards,
        }
    }

    fn fits(&self, budget: Budget) -> bool {
        self.files <= budget.files && self.wildcards <= budget.wildcards
    }

    /// Replace everything under `dir` by `dir*`.
    fn collapse(&mut self, items: &mut BTreeSet<String>, dir: &str) {
        let under: Vec<String> = items
            .range(dir.to_string()..)
            .take_while(|p| p.starts_with(dir))
            .cloned()
            .collect();
        for p in under {
            if p.ends_with('*') {
                self.wildcards -= 1;
            } else {
                self.files -= 1;
            }
            items.remove(&p);
        }
        items.insert(format!("{dir}*"));
        self.wildcards += 1;
    }
}

/// Is `dir` (or a directory above it, up to `root`) already a wildcard?
fn is_covered(items: &BTreeSet<String>, dir: &str, root: &str) -> bool {
    let mut d = dir;
    loop {
        if items.contains(&format!("{d}*")) {
            return true;
        }
        if d.len() <= root.len() {
            return false;
        }
        d = parent(d);
    }
}

/// Slashes in a path: its depth in the tree.
fn depth(path: &str) -> usize {
    path.bytes().filter(|b| *b == b'/').count()
}

/// Each directory (ending in `/`) with the paths that are its entries: its files,
/// its own path (`/dir/`, for an index document) and wildcards of its
/// subdirectories. The wildcard of `root` is in no directory.
fn groups(items: &BTreeSet<String>, root: &str) -> BTreeMap<String, Vec<String>> {
    let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for item in items {
        let dir = match item.strip_suffix('*') {
            Some(wild) if wild == root => continue,
            Some(wild) => parent(wild),
            None => &item[..item.rfind('/').map_or(0, |i| i + 1)],
        };
        groups
            .entry(dir.to_string())
            .or_default()
            .push(item.clone());
    }
    groups
}

/// `/a/b/` -> `/a/`.
fn parent(dir: &str) -> &str {
    let inner = &dir[..dir.len() - 1];
    &dir[..inner.rfind('/').map_or(0, |i| i + 1)]
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Budget = Budget {
        files: 3000,
        wildcards: 15,
    };

    fn set(paths: &[&str]) -> BTreeSet<String> {
        paths.iter().map(|p| p.to_string()).collect()
    }

    #[test]
    fn names_are_encoded_as_cloudfront_expects() {
        let urls = UrlPaths::new("", None);
        assert_eq!(urls.of("style.css"), ["/style.css"]);
        assert_eq!(urls.of("img/a b.png"), ["/img/a%20b.png"]);
        assert_eq!(urls.of("café/menü.html"), ["/caf%C3%A9/men%C3%BC.html"]);
        assert_eq!(urls.of("a?c#d%e~"), ["/a%3Fc%23d%25e%7E"]);
        assert_eq!(urls.of("img/a*b.png"), ["/img/a*"]);
        // Characters CloudFront wants left alone.
        assert_eq!(urls.of("a+b&c=d(1)!$,;:@'"), ["/a+b&c=d(1)!$,;:@'"]);
    }

    #[test]
    fn a_path_prefix_and_an_index_document_map_to_more_urls() {
        let urls = UrlPaths::new("/my site/", Some("index.html".into()));
        assert_eq!(urls.root(), "/my%20site/");
        assert_eq!(urls.of("a.css"), ["/my%20site/a.css"]);
        assert_eq!(
            urls.of("docs/index.html"),
            ["/my%20site/docs/index.html", "/my%20site/docs/"]
        );
        assert_eq!(
            urls.of("index.html"),
            ["/my%20site/index.html", "/my%20site/"]
        );
        assert_eq!(UrlPaths::new("", None).root(), "/");
    }

    #[test]
    fn a_few_paths_are_sent_as_they_are() {
        let paths = set(&["/a.css", "/img/b.png", "/img/c.png"]);
        assert_eq!(
            plan(&paths, "/", 10, LIMITS).unwrap(),
            ["/a.css", "/img/b.png", "/img/c.png"]
        );
    }

    #[test]
    fn a_crowded_directory_becomes_a_wildcard() {
        let mut paths: BTreeSet<String> = (0..500).map(|i| format!("/img/{i}.png")).collect();
        paths.insert("/index.html".into());
        assert_eq!(
            plan(&paths, "/", 10, LIMITS).unwrap(),
            ["/img/*", "/index.html"]
        );
    }

    #[test]
    fn collapsed_subdirectories_count_as_entries_of_their_parent() {
        // Eleven crowded subdirectories crowd their parent in turn; files deeper
        // down go with it.
        let mut paths = BTreeSet::new();
        for d in 0..11 {
            for f in 0..11 {
                paths.insert(format!("/a/{d}/{f}.png"));
            }
        }
        paths.insert("/a/x/y/z.png".into());
        paths.insert("/b.css".into());
        assert_eq!(plan(&paths, "/", 10, LIMITS).unwrap(), ["/a/*", "/b.css"]);
    }

    #[test]
    fn never_collapses_above_the_mounts_root() {
        let paths: BTreeSet<String> = (0..20).map(|i| format!("/site/{i}.html")).collect();
        assert_eq!(plan(&paths, "/site/", 10, LIMITS).unwrap(), ["/site/*"]);
        assert_eq!(
            plan(&set(&["/site/*"]), "/site/", 10, LIMITS).unwrap(),
            ["/site/*"]
        );
    }

    #[test]
    fn collapses_more_to_fit_the_budget() {
        // Sparse directories, over the file budget: the fullest goes first.
        let mut paths = set(&["/a/1", "/a/2", "/a/3", "/b/1", "/b/2", "/c"]);
        let budget = Budget {
            files: 3,
            wildcards: 15,
        };
        assert_eq!(
            plan(&paths, "/", 10, budget).unwrap(),
            ["/a/*", "/b/1", "/b/2", "/c"]
        );
        // Over the wildcard budget: wildcards merge upwards.
        paths = (0..20).map(|i| format!("/d{i}/x/*")).collect();
        let budget = Budget {
            files: 3000,
            wildcards: 1,
        };
        assert_eq!(plan(&paths, "/", 10, budget).unwrap(), ["/*"]);
    }

    #[test]
    fn crowded_directories_stay_files_when_wildcards_run_short() {
        // Four crowded directories, three wildcards left: one stays files rather
        // than all becoming `/*`.
        let mut paths = BTreeSet::new();
        for d in 0..4 {
            for f in 0..11 {
                paths.insert(format!("/d{d}/{f:02}"));
            }
        }
        let budget = Budget {
            files: 3000,
            wildcards: 3,
        };
        let planned = plan(&paths, "/", 10, budget).unwrap();
        assert_eq!(planned[..3], ["/d0/*", "/d1/*", "/d2/*"]);
        assert_eq!(planned.len(), 3 + 11);
        // No wildcard left at all: the files go as they are.
        let files: BTreeSet<String> = (0..11).map(|i| format!("/img/{i}")).collect();
        let budget = Budget {
            files: 3000,
            wildcards: 0,
        };
        assert_eq!(plan(&files, "/", 10, budget).unwrap().len(), 11);
    }

    #[test]
    fn a_hundred_thousand_sparse_paths_are_planned_within_the_limits() {
        let paths: BTreeSet<String> = (0..100_000)
            .map(|i| format!("/{}/{}/{i}.html", i % 97, i % 13))
            .collect();
        let planned = plan(&paths, "/", 10_000, LIMITS).unwrap();
        let count = Count::of(&planned.iter().cloned().collect());
        assert!(count.fits(LIMITS), "{count:?}");
    }

    #[test]
    fn nothing_fits_without_a_wildcard_left() {
        let paths: BTreeSet<String> = (0..5).map(|i| format!("/{i}")).collect();
        let budget = Budget {
            files: 2,
            wildcards: 0,
        };
        assert_eq!(plan(&paths, "/", 10, budget), None);
        let budget = Budget {
            files: 5,
            wildcards: 0,
        };
        assert_eq!(plan(&paths, "/", 10, budget).unwrap().len(), 5);
    }
}
