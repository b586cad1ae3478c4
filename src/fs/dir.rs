//! The directory model and directory handles.
//!
//! A directory is a key prefix: it exists if some key starts with `dir/`, or a
//! marker object `dir/` (ours) or `dir_$folder$` (s3fs's) exists. Listing is
//! ListObjectsV2 with delimiter `/`, a page at a time as the reader advances.
//!
//! If a key `a` and keys under `a/` both exist, the directory wins and the file is
//! hidden. Keys come back sorted, and `a` sorts before `a/` and `a_$folder$`, so a
//! file is held back until the listing has gone past the names that could turn it
//! into a directory.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use crate::store::{ListRequest, ObjectMeta, ObjectStore, StoreResult};

use super::inode::Kind;

/// Suffix of the directory markers that s3fs writes.
pub const S3FS_DIR_SUFFIX: &str = "_$folder$";
/// The Content-Type of directory objects (s3fs's, and of its older `dir`
/// objects without the slash).
pub const DIR_CONTENT_TYPE: &str = "application/x-directory";
/// Longest name FUSE carries (and S3's longest key).
pub const NAME_MAX: usize = 1024;

/// Can this key segment be shown as a file name? (S3 keys may hold names that a
/// POSIX directory cannot: those are hidden, never an error.)
pub fn is_showable(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && name.len() <= NAME_MAX
        && !name.contains('\0')
        && !name.contains('/')
}

#[derive(Debug, Clone)]
pub struct DirEntry {
    pub name: String,
    pub kind: Kind,
    /// For files: size, ETag and time from the listing.
    pub meta: Option<ObjectMeta>,
}

/// One open directory: a snapshot built page by page, so `rewinddir` and restarted
/// offsets see the same entries.
pub struct DirHandle {
    /// Key prefix of the directory (`""` or ending in `/`).
    prefix: String,
    /// Entries ready to be served, in order; offsets index into this list.
    entries: Vec<DirEntry>,
    names: HashSet<String>,
    /// Files not yet known not to be directories.
    held: BTreeMap<String, DirEntry>,
    token: Option<String>,
    started: bool,
    done: bool,
    /// Entries that exist only locally (created, not yet uploaded), added at the end.
    local: Vec<DirEntry>,
    /// When the listing began: what it shows is current as of then.
    begun: Instant,
}

impl DirHandle {
    pub fn new(prefix: String, local: Vec<DirEntry>) -> Self {
        Self {
            prefix,
            entries: Vec::new(),
            names: HashSet::new(),
            held: BTreeMap::new(),
            token: None,
            started: false,
            done: false,
            local,
            begun: Instant::now(),
        }
    }

    /// A handle serving a complete listing begun at `begun`.
    pub fn listed(
        prefix: String,
        begun: Instant,
        listed: Vec<DirEntry>,
        local: Vec<DirEntry>,
    ) -> Self {
        let mut handle = Self::new(prefix, local);
        handle.begun = begun;
        handle.started = true;
        for e in listed {
            handle.push(e);
        }
        handle.finish();
        handle
    }

    pub fn begun(&self) -> Instant {
        self.begun
    }

    /// Has the listing reached its end?
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Every entry fetched so far, served or not.
    pub fn all(&self) -> &[DirEntry] {
        &self.entries
    }

    /// Entries from index `from` on, fetching pages until `want` are ready or the
    /// listing ends.
    pub async fn entries_from(
        &mut self,
        store: &Arc<dyn ObjectStore>,
        from: usize,
        want: usize,
    ) -> StoreResult<&[DirEntry]> {
        while self.entries.len() < from + want && !self.done {
            self.fetch_page(store).await?;
        }
        let from = from.min(self.entries.len());
        let to = (from + want).min(self.entries.len());
        Ok(&self.entries[from..to])
    }

    /// The entries of the first page of the listing (all of them if it
    /// [`is_done`](Self::is_done) then).
    pub async fn first_page(&mut self, store: &Arc<dyn ObjectStore>) -> StoreResult<&[DirEntry]> {
        if !self.started {
            self.fetch_page(store).await?;
        }
        Ok(&self.entries)
    }

    async fn fetch_page(&mut self, store: &Arc<dyn ObjectStore>) -> StoreResult<()> {
        if self.started && self.token.is_none() {
            self.finish();
            return Ok(());
        }
        let page = store
            .list(ListRequest {
                prefix: &self.prefix,
                delimiter: Some("/"),
                continuation: self.token.take(),
                max_keys: None,
            })
            .await?;
        self.started = true;
        let mut last_key = String::new();
        for p in &page.prefixes {
            last_key = last_key.max(p.clone());
            let name = p
                .strip_prefix(self.prefix.as_str())
                .and_then(|rest| rest.strip_suffix('/'))
                .unwrap_or_default();
            self.add_dir(name);
        }
        for o in page.objects {
            last_key = last_key.max(o.key.clone());
            let Some(name) = o.key.strip_prefix(self.prefix.as_str()) else {
                continue;
            };
            let name = name.to_string();
            if let Some(dir) = name.strip_suffix(S3FS_DIR_SUFFIX) {
                self.add_dir(dir);
            } else if is_showable(&name) && !self.names.contains(&name) {
                self.held.insert(
                    name.clone(),
                    DirEntry {
                        name,
                        kind: Kind::File,
                        meta: Some(o),
                    },
                );
            }
        }
        self.token = page.next_token;
        if self.token.is_none() {
            self.finish();
        } else {
            self.release_held(&last_key);
        }
        Ok(())
    }

    fn add_dir(&mut self, name: &str) {
        if !is_showable(name) {
            return;
        }
        if self.held.remove(name).is_some() {
            tracing::info!(
                "{}{name} is both a file and a directory in the bucket; showing the directory",
                self.prefix
            );
        }
        if self.names.insert(name.to_string()) {
            self.entries.push(DirEntry {
                name: name.to_string(),
                kind: Kind::Dir,
                meta: None,
            });
        }
    }

    /// Serve the held files that no later key can turn into a directory: the listing
    /// has passed both `name/` and `name_$folder$` (`_` sorts after `/`).
    fn release_held(&mut self, last_key: &str) {
        let prefix = &self.prefix;
        let safe: Vec<String> = self
            .held
            .keys()
            .take_while(|name| format!("{prefix}{name}{S3FS_DIR_SUFFIX}").as_str() <= last_key)
            .cloned()
            .collect();
        for name in safe {
            if let Some(e) = self.held.remove(&name) {
                self.push(e);
            }
        }
    }

    fn finish(&mut self) {
        self.done = true;
        let held = std::mem::take(&mut self.held);
        for e in held.into_values() {
            self.push(e);
        }
        for e in std::mem::take(&mut self.local) {
            self.push(e);
        }
    }

    fn push(&mut self, e: DirEntry) {
        if self.names.insert(e.name.clone()) {
            self.entries.push(e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryStore;

    async fn list(store: MemoryStore, prefix: &str) -> Vec<(String, Kind)> {
        let store: Arc<dyn ObjectStore> = Arc::new(store);
        let mut h = DirHandle::new(prefix.into(), Vec::new());
        let all = h.entries_from(&store, 0, usize::MAX / 2).await.unwrap();
        all.iter().map(|e| (e.name.clone(), e.kind)).collect()
    }

    #[tokio::test]
    async fn shows_files_implicit_dirs_and_markers() {
        let s = MemoryStore::new();
        for k in ["d/a", "d/b/x", "d/c/", "d/e_$folder$", "d/", "f"] {
            s.insert(k, "");
        }
        let mut got = list(s, "d/").await;
        got.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            got,
            [
                ("a".to_string(), Kind::File),
                ("b".into(), Kind::Dir),
                ("c".into(), Kind::Dir),
                ("e".into(), Kind::Dir),
            ]
        );
    }

    #[tokio::test]
    async fn directory_wins_over_file_of_the_same_name() {
        let s = MemoryStore::new();
        for k in ["a", "a!", "a/x", "b", "b_$folder$"] {
            s.insert(k, "");
        }
        let mut got = list(s, "").await;
        got.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            got,
            [
                ("a".to_string(), Kind::Dir),
                ("a!".into(), Kind::File),
                ("b".into(), Kind::Dir),
            ]
        );
    }

    #[tokio::test]
    async fn hides_names_a_directory_cannot_hold() {
        let s = MemoryStore::new();
        let long = "x".repeat(1025);
        for k in ["./a", "../b", "//c", &long, "ok"] {
            s.insert(k, "");
        }
        assert_eq!(list(s, "").await, [("ok".to_string(), Kind::File)]);
    }

    #[tokio::test]
    async fn large_directory_lists_completely_across_pages() {
        let s = MemoryStore::new();
        for i in 0..2500 {
            s.insert(&format!("big/{i:05}"), "");
        }
        let got = list(s, "big/").await;
        assert_eq!(got.len(), 2500);
        assert_eq!(got[0].0, "00000");
        assert_eq!(got[2499].0, "02499");
    }
}
