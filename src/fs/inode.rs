//! The inode table: inode number ↔ path, with the attributes last seen in S3.
//!
//! Paths are relative to the mount root, without leading or trailing `/` (the root
//! is `""`). The kernel holds references through lookups; an inode lives until the
//! kernel forgets all of them.

use std::collections::HashMap;
use std::time::{Instant, SystemTime};

use crate::store::ObjectMeta;

pub const ROOT_INO: u64 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
}

/// What a stat call shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attr {
    pub ino: u64,
    pub kind: Kind,
    pub size: u64,
    pub mtime: SystemTime,
    pub perm: u16,
    pub uid: u32,
    pub gid: u32,
}

#[derive(Debug, Clone)]
pub struct Inode {
    pub ino: u64,
    pub path: String,
    pub kind: Kind,
    pub size: u64,
    pub mtime: SystemTime,
    pub etag: Option<String>,
    /// When S3 last confirmed these attributes; `None` if it never did or they
    /// must be checked again.
    pub validated: Option<Instant>,
    /// Created here and not uploaded yet: S3 does not know this file.
    pub local: bool,
    /// Written here since the last upload: the table, not S3, has the truth.
    pub dirty: bool,
    /// Permission bits changed with chmod, if any (else the mount's default).
    pub perm: Option<u16>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    lookups: u64,
    /// False once unlinked or renamed away: the path no longer names this inode.
    linked: bool,
}

impl Inode {
    /// Take the attributes of a HEAD or a listing.
    pub fn set_meta(&mut self, meta: &ObjectMeta) {
        self.size = meta.size;
        self.etag = meta.etag.clone();
        if let Some(t) = meta.last_modified {
            self.mtime = t;
        }
        self.validated = Some(Instant::now());
    }

    pub fn is_linked(&self) -> bool {
        self.linked
    }
}

pub struct InodeTable {
    by_ino: HashMap<u64, Inode>,
    by_path: HashMap<String, u64>,
    next_ino: u64,
}

impl InodeTable {
    pub fn new(mount_time: SystemTime) -> Self {
        let root = Inode {
            ino: ROOT_INO,
            path: String::new(),
            kind: Kind::Dir,
            size: 0,
            mtime: mount_time,
            etag: None,
            validated: Some(Instant::now()),
            local: false,
            dirty: false,
            perm: None,
            uid: None,
            gid: None,
            lookups: 1,
            linked: true,
        };
        Self {
            by_ino: HashMap::from([(ROOT_INO, root)]),
            by_path: HashMap::from([(String::new(), ROOT_INO)]),
            next_ino: ROOT_INO + 1,
        }
    }

    pub fn get(&self, ino: u64) -> Option<&Inode> {
        self.by_ino.get(&ino)
    }

    pub fn get_mut(&mut self, ino: u64) -> Option<&mut Inode> {
        self.by_ino.get_mut(&ino)
    }

    pub fn ino_of(&self, path: &str) -> Option<u64> {
        self.by_path.get(path).copied()
    }

    pub fn by_path_mut(&mut self, path: &str) -> Option<&mut Inode> {
        let ino = self.ino_of(path)?;
        self.by_ino.get_mut(&ino)
    }

    /// The inode for `path`, created if needed, with one more kernel reference.
    /// An existing inode of another kind is replaced (the object changed behind us).
    pub fn lookup(&mut self, path: &str, kind: Kind, mtime: SystemTime) -> &mut Inode {
        let existing = self
            .by_path
            .get(path)
            .copied()
            .filter(|ino| self.by_ino.get(ino).is_some_and(|i| i.kind == kind));
        let ino = match existing {
            Some(ino) => ino,
            None => {
                self.unlink(path);
                let ino = self.next_ino;
                self.next_ino += 1;
                self.by_ino.insert(
                    ino,
                    Inode {
                        ino,
                        path: path.to_string(),
                        kind,
                        size: 0,
                        mtime,
                        etag: None,
                        validated: None,
                        local: false,
                        dirty: false,
                        perm: None,
                        uid: None,
                        gid: None,
                        lookups: 0,
                        linked: true,
                    },
                );
                self.by_path.insert(path.to_string(), ino);
                ino
            }
        };
        let inode = self
            .by_ino
            .entry(ino)
            .or_insert_with(|| unreachable_inode(ino));
        inode.lookups += 1;
        inode
    }

    /// Drop `n` kernel references; the inode goes when none are left and `keep`
    /// (open handles) does not hold it.
    pub fn forget(&mut self, ino: u64, n: u64, keep: bool) {
        if ino == ROOT_INO {
            return;
        }
        let Some(inode) = self.by_ino.get_mut(&ino) else {
            return;
        };
        inode.lookups = inode.lookups.saturating_sub(n);
        if inode.lookups == 0 && !keep {
            self.remove(ino);
        }
    }

    /// Remove an inode that no kernel reference holds (used when its last handle closes).
    pub fn remove_if_unreferenced(&mut self, ino: u64) {
        if ino != ROOT_INO && self.by_ino.get(&ino).is_some_and(|i| i.lookups == 0) {
            self.remove(ino);
        }
    }

    fn remove(&mut self, ino: u64) {
        if let Some(inode) = self.by_ino.remove(&ino)
            && inode.linked
            && self.by_path.get(&inode.path) == Some(&ino)
        {
            self.by_path.remove(&inode.path);
        }
    }

    /// The path no longer names its inode (unlink, rmdir, replaced by a rename).
    pub fn unlink(&mut self, path: &str) {
        if let Some(ino) = self.by_path.remove(path)
            && let Some(inode) = self.by_ino.get_mut(&ino)
        {
            inode.linked = false;
        }
    }

    /// Give inode `ino` the new path `to` (a file rename), unlinking what was there.
    pub fn rename(&mut self, ino: u64, to: &str) {
        self.unlink(to);
        if let Some(inode) = self.by_ino.get_mut(&ino) {
            if self.by_path.get(&inode.path) == Some(&ino) {
                self.by_path.remove(&inode.path);
            }
            inode.path = to.to_string();
            inode.linked = true;
            self.by_path.insert(to.to_string(), ino);
        }
    }

    /// Inodes directly under directory `path` that exist only locally.
    pub fn local_children(&self, dir: &str) -> Vec<(String, u64)> {
        self.by_ino
            .values()
            .filter(|i| i.linked && i.local && parent_of(&i.path) == dir)
            .map(|i| (name_of(&i.path).to_string(), i.ino))
            .collect()
    }
}

/// Only reachable if the map and the index disagree, which `lookup` rules out; kept
/// total so that no request path can panic.
fn unreachable_inode(ino: u64) -> Inode {
    Inode {
        ino,
        path: String::new(),
        kind: Kind::File,
        size: 0,
        mtime: SystemTime::UNIX_EPOCH,
        etag: None,
        validated: None,
        local: false,
        dirty: false,
        perm: None,
        uid: None,
        gid: None,
        lookups: 0,
        linked: false,
    }
}

pub fn parent_of(path: &str) -> &str {
    path.rfind('/').map_or("", |i| &path[..i])
}

pub fn name_of(path: &str) -> &str {
    path.rfind('/').map_or(path, |i| &path[i + 1..])
}

pub fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups_and_forget_keep_the_table_consistent() {
        let mut t = InodeTable::new(SystemTime::UNIX_EPOCH);
        let a = t.lookup("a/b", Kind::File, SystemTime::UNIX_EPOCH).ino;
        assert_eq!(t.lookup("a/b", Kind::File, SystemTime::UNIX_EPOCH).ino, a);
        t.forget(a, 1, false);
        assert_eq!(t.ino_of("a/b"), Some(a));
        t.forget(a, 1, false);
        assert_eq!(t.ino_of("a/b"), None);
        assert!(t.get(a).is_none());
    }

    #[test]
    fn rename_moves_the_path_and_unlinks_the_target() {
        let mut t = InodeTable::new(SystemTime::UNIX_EPOCH);
        let a = t.lookup("a", Kind::File, SystemTime::UNIX_EPOCH).ino;
        let b = t.lookup("b", Kind::File, SystemTime::UNIX_EPOCH).ino;
        t.rename(a, "b");
        assert_eq!(t.ino_of("b"), Some(a));
        assert_eq!(t.ino_of("a"), None);
        assert!(!t.get(b).map(Inode::is_linked).unwrap_or(true));
        // Forgetting the replaced inode must not drop the new owner of the path.
        t.forget(b, 1, false);
        assert_eq!(t.ino_of("b"), Some(a));
    }

    #[test]
    fn paths_split_and_join() {
        assert_eq!(parent_of("a/b/c"), "a/b");
        assert_eq!(parent_of("a"), "");
        assert_eq!(name_of("a/b/c"), "c");
        assert_eq!(join("", "a"), "a");
        assert_eq!(join("a", "b"), "a/b");
    }
}
