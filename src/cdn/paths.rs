//! URL paths of files, as CloudFront expects them, and the paths of one
//! invalidation: many files of one directory collapse into `/dir/*`, and the whole
//! stays within CloudFront's limits.

use std::collections::{BTreeMap, BTreeSet};

use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};

/// What CloudFront wants encoded in an invalidation path: non-ASCII, the
/// characters RFC 1738 calls unsafe, and `?` and `*`, which would start a query or
/// make a wildcard. Anything else must stay as it is, or the path would not match
/// the cached URL.
const UNSAFE: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'*')
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
        paths
    }
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
/// `root`): a directory with more than `collapse_above` entries changed becomes
/// `dir/*`, and more is collapsed, the fullest directories first, until the
/// paths fit `budget`. None if even `root*` does not fit.
pub fn plan(
    paths: &BTreeSet<String>,
    root: &str,
    collapse_above: usize,
    budget: Budget,
) -> Option<Vec<String>> {
    let mut items = paths.clone();
    // Deepest directories first, so that a collapsed directory counts as one
    // entry of its parent.
    let deepest = items.iter().map(|p| depth(p)).max().unwrap_or(0);
    for level in (0..=deepest).rev() {
        let crowded: Vec<String> = groups(&items, root)
            .into_iter()
            .filter(|(dir, entries)| depth(dir) == level && entries.len() > collapse_above)
            .map(|(dir, _)| dir)
            .collect();
        for dir in crowded {
            collapse(&mut items, &dir);
        }
    }
    while !fits(&items, budget) {
        let groups = groups(&items, root);
        // The directory with the most entries (the deepest of equals) gains the
        // most; when each has one, moving the deepest up merges it with others.
        let fullest = groups
            .iter()
            .max_by_key(|(dir, entries)| (entries.len(), depth(dir)))
            .filter(|(_, entries)| entries.len() > 1)
            .or_else(|| groups.iter().max_by_key(|(dir, _)| depth(dir)));
        // Each step lowers the count or moves a path up: it ends at `root*`,
        // which is in no directory.
        let (dir, _) = fullest?;
        collapse(&mut items, &dir.clone());
    }
    Some(items.into_iter().collect())
}

fn fits(items: &BTreeSet<String>, budget: Budget) -> bool {
    let wildcards = items.iter().filter(|p| p.ends_with('*')).count();
    wildcards <= budget.wildcards && items.len() - wildcards <= budget.files
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

/// Replace everything under `dir` by `dir*`.
fn collapse(items: &mut BTreeSet<String>, dir: &str) {
    let under: Vec<String> = items
        .range(dir.to_string()..)
        .take_while(|p| p.starts_with(dir))
        .cloned()
        .collect();
    for p in under {
        items.remove(&p);
    }
    items.insert(format!("{dir}*"));
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
        assert_eq!(urls.of("a*b?c#d%e~"), ["/a%2Ab%3Fc%23d%25e%7E"]);
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
