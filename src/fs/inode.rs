//! The inode table: inode number ↔ path, with the attributes last seen in S3.
//!
//! Paths are relative to the mount root, without leading or trailing `/` (the root
//! is `""`). The kernel holds references through lookups; an inode lives until the
//! kernel forgets all of them.

use std::collections::HashMap;
use std::time::{Instant, SystemTime};

use super::meta::FileMeta;
use crate::store::{ObjectHeaders, ObjectMeta};

pub const ROOT_INO: u64 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    Fifo,
    Socket,
    BlockDevice,
    CharDevice,
}

impl Kind {
    /// The kind the headers of an object of `size` bytes give it: a file unless
    /// its mode says otherwise (s3fs stores symlinks, fifos, sockets and devices
    /// this way); an empty one whose mode or Content-Type says directory is one
    /// (s3fs's old `dir` objects). An object with data is never a directory.
    pub fn of_headers(headers: &ObjectHeaders, size: u64) -> Kind {
        let meta = FileMeta::from_metadata(&headers.metadata);
        let dir_type = headers.content_type.as_deref() == Some(super::dir::DIR_CONTENT_TYPE)
            || meta.file_type() == Some(libc::S_IFDIR);
        match dir_type {
            true if size == 0 => Kind::Dir,
            _ => Kind::of_object(&meta),
        }
    }

    fn of_object(meta: &FileMeta) -> Kind {
        match meta.file_type() {
            Some(libc::S_IFLNK) => Kind::Symlink,
            Some(libc::S_IFIFO) => Kind::Fifo,
            Some(libc::S_IFSOCK) => Kind::Socket,
            Some(libc::S_IFBLK) => Kind::BlockDevice,
            Some(libc::S_IFCHR) => Kind::CharDevice,
            _ => Kind::File,
        }
    }

    /// The `st_mode` type bits of this kind.
    pub fn type_bits(self) -> u32 {
        match self {
            Kind::File => libc::S_IFREG,
            Kind::Dir => libc::S_IFDIR,
            Kind::Symlink => libc::S_IFLNK,
            Kind::Fifo => libc::S_IFIFO,
            Kind::Socket => libc::S_IFSOCK,
            Kind::BlockDevice => libc::S_IFBLK,
            Kind::CharDevice => libc::S_IFCHR,
        }
    }
}

/// What a stat call shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attr {
    pub ino: u64,
    pub kind: Kind,
    pub size: u64,
    pub atime: SystemTime,
    pub mtime: SystemTime,
    pub ctime: SystemTime,
    pub perm: u16,
    pub uid: u32,
    pub gid: u32,
    /// Names the inode has: 0 once unlinked (while handles keep it open).
    pub nlink: u32,
    /// A device node's number.
    pub rdev: u32,
}

#[derive(Debug, Clone)]
pub struct Inode {
    pub ino: u64,
    pub path: String,
    pub kind: Kind,
    pub size: u64,
    pub etag: Option<String>,
    /// Last-Modified in S3, or when this mount last changed the file: the time
    /// shown where the metadata gives none.
    pub modified: SystemTime,
    /// POSIX attributes from the object's metadata, or set here.
    pub meta: FileMeta,
    /// Content-Type and user metadata as the last HEAD saw them; `None` until a
    /// HEAD was made (a listing does not have them).
    pub headers: Option<ObjectHeaders>,
    /// A symlink's target, once read.
    pub target: Option<String>,
    /// A directory held by an object `dir` without the slash (s3fs's old
    /// form): rewritten as `dir/` when it changes.
    pub old_dir_object: bool,
    /// When S3 last confirmed these attributes; `None` if it never did or they
    /// must be checked again.
    pub validated: Option<Instant>,
    /// Created here and not uploaded yet: S3 does not know this file.
    pub local: bool,
    /// Changed here since the last upload: the table, not S3, has the truth.
    pub dirty: bool,
    /// Times were set by utimens (not by writes) since the last upload.
    pub times_set: bool,
    /// A directory's mtime and ctime changed here and its marker does not have
    /// them yet: what S3 says of the marker does not replace them.
    pub times_unsaved: bool,
    /// The object version whose data the kernel's page cache holds.
    pub cached_version: Option<String>,
    /// When this mount last changed the object in S3: a HEAD or a listing begun
    /// before then may show the version before the change, and is not taken.
    pub changed_here: Option<Instant>,
    lookups: u64,
    /// False once unlinked or renamed away: the path no longer names this inode.
    linked: bool,
}

impl Inode {
    fn new(ino: u64, path: &str, kind: Kind, modified: SystemTime, lookups: u64) -> Self {
        Self {
            ino,
            path: path.to_string(),
            kind,
            size: 0,
            etag: None,
            modified,
            meta: FileMeta::default(),
            headers: None,
            target: None,
            old_dir_object: false,
            validated: None,
            local: false,
            dirty: false,
            times_set: false,
            times_unsaved: false,
            cached_version: None,
            changed_here: None,
            lookups,
            linked: true,
        }
    }

    /// An inode outside the table: what a new entry will look like before S3 has it.
    pub fn detached(path: &str, kind: Kind, modified: SystemTime) -> Self {
        Self::new(0, path, kind, modified, 0)
    }

    /// This mount stored version `etag` of the object: it holds now, and what S3
    /// said of the object in answer to a request begun before now is older.
    pub fn stored(&mut self, etag: String) {
        let now = Instant::now();
        self.etag = Some(etag);
        self.validated = Some(now);
        self.changed_here = Some(now);
    }

    /// Can what S3 said in an answer to a request begun at `seen` be taken? Not
    /// if this mount changed the object after that: the answer may be older than
    /// the change, and taking it would put an older version under the next edit.
    pub fn is_newer(&self, seen: Instant) -> bool {
        self.changed_here.is_none_or(|changed| seen >= changed)
    }

    /// Take what a HEAD begun at `seen` says about the object (unless it is older
    /// than a change made here).
    pub fn set_head(&mut self, meta: &ObjectMeta, seen: Instant) {
        if !self.is_newer(seen) {
            return;
        }
        if self.etag != meta.etag {
            self.target = None;
        }
        self.size = meta.size;
        self.etag = meta.etag.clone();
        if let Some(t) = meta.last_modified {
            self.modified = t;
        }
        if let Some(headers) = &meta.headers {
            self.take_meta(FileMeta::from_metadata(&headers.metadata));
            self.headers = Some(headers.clone());
        }
        self.validated = Some(Instant::now());
    }

    /// Take the attributes S3 has, but for a directory's times not yet on its
    /// marker.
    pub fn take_meta(&mut self, meta: FileMeta) {
        self.meta = if self.times_unsaved {
            FileMeta {
                mtime: self.meta.mtime,
                ctime: self.meta.ctime,
                ..meta
            }
        } else {
            meta
        };
    }

    /// Take what a listing begun at `seen` says, with the headers remembered for
    /// that version (if any): without them, a changed object shows the mount's
    /// defaults. A listing older than a change made here is not taken.
    pub fn set_listed(&mut self, meta: &ObjectMeta, headers: Option<ObjectHeaders>, seen: Instant) {
        if !self.is_newer(seen) {
            return;
        }
        let changed = self.etag != meta.etag;
        if changed {
            self.target = None;
        }
        self.size = meta.size;
        self.etag = meta.etag.clone();
        if let Some(t) = meta.last_modified {
            self.modified = t;
        }
        match headers {
            Some(h) => {
                self.take_meta(FileMeta::from_metadata(&h.metadata));
                self.headers = Some(h);
            }
            None if changed => {
                self.take_meta(FileMeta::default());
                self.headers = None;
            }
            None => {}
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
        let mut root = Inode::new(ROOT_INO, "", Kind::Dir, mount_time, 1);
        root.validated = Some(Instant::now());
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

    /// The linked inodes below directory `path` (`""`: the root) with changes
    /// S3 lacks.
    pub fn unsaved_below(&self, path: &str) -> impl Iterator<Item = &Inode> {
        let below = if path.is_empty() {
            String::new()
        } else {
            format!("{path}/")
        };
        self.by_ino
            .values()
            .filter(move |i| i.dirty && i.is_linked() && i.path.starts_with(&below))
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
        let inode = self.entry(path, kind, mtime);
        inode.lookups += 1;
        inode
    }

    /// The inode for `path`, created if needed, without a kernel reference (it
    /// goes with [`Self::remove_if_unreferenced`]).
    pub fn entry(&mut self, path: &str, kind: Kind, mtime: SystemTime) -> &mut Inode {
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
                self.by_ino
                    .insert(ino, Inode::new(ino, path, kind, mtime, 0));
                self.by_path.insert(path.to_string(), ino);
                ino
            }
        };
        self.by_ino
            .entry(ino)
            .or_insert_with(|| Inode::new(ino, path, kind, mtime, 0))
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

    /// A directory moved from `from` to `to`: every inode at or below it takes its
    /// new path (what was at `to` is unlinked first).
    pub fn rename_tree(&mut self, from: &str, to: &str) {
        self.unlink(to);
        let below = format!("{from}/");
        let moved: Vec<(String, u64)> = self
            .by_path
            .iter()
            .filter(|(p, _)| p.as_str() == from || p.starts_with(&below))
            .map(|(p, ino)| (p.clone(), *ino))
            .collect();
        for (old, ino) in moved {
            let new = format!("{to}{}", old.strip_prefix(from).unwrap_or_default());
            self.by_path.remove(&old);
            if let Some(inode) = self.by_ino.get_mut(&ino) {
                inode.path = new.clone();
            }
            self.by_path.insert(new, ino);
        }
    }

    /// Inodes at or below directory `dir` (the inodes a directory rename moves).
    pub fn tree(&self, dir: &str) -> Vec<u64> {
        let below = format!("{dir}/");
        self.by_path
            .iter()
            .filter(|(p, _)| p.as_str() == dir || p.starts_with(&below))
            .map(|(_, ino)| *ino)
            .collect()
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
    fn a_directory_rename_moves_everything_below_it() {
        let mut t = InodeTable::new(SystemTime::UNIX_EPOCH);
        let d = t.lookup("a/d", Kind::Dir, SystemTime::UNIX_EPOCH).ino;
        let f = t.lookup("a/d/x/f", Kind::File, SystemTime::UNIX_EPOCH).ino;
        let other = t.lookup("a/dd", Kind::File, SystemTime::UNIX_EPOCH).ino;
        let mut tree = t.tree("a/d");
        tree.sort();
        assert_eq!(tree, [d, f]);
        t.rename_tree("a/d", "b");
        assert_eq!(t.ino_of("b"), Some(d));
        assert_eq!(t.ino_of("b/x/f"), Some(f));
        assert_eq!(t.get(f).unwrap().path, "b/x/f");
        assert_eq!(t.ino_of("a/dd"), Some(other));
        assert_eq!(t.ino_of("a/d"), None);
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
