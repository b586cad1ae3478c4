//! Entries of the tree: mkdir, rmdir, unlink, symlink, readlink, and listing
//! directories.

use std::ffi::OsStr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bytes::Bytes;

use super::dir::{DirEntry, DirHandle, S3FS_DIR_SUFFIX};
use super::inode::{self, Attr, Kind, ROOT_INO, join};
use super::{Caller, Change, Errno, Fs, FsResult, Listed, synthetic_ino};
use crate::store::ListRequest;

/// What symlink or mknod makes: its kind, permission bits and device number.
struct Node {
    kind: Kind,
    perm: u32,
    rdev: Option<u32>,
}

/// The longest symlink target accepted (PATH_MAX).
const MAX_TARGET: usize = 4096;
/// HEADs one readdirplus batch makes at once, for entries whose headers are not
/// remembered.
const PARALLEL_HEADS: usize = 32;

impl Fs {
    pub async fn mkdir(
        &self,
        parent: u64,
        name: &OsStr,
        mode: u32,
        caller: Caller,
    ) -> FsResult<Attr> {
        self.check_writable()?;
        let path = self.child_path(parent, name)?;
        let begun = Instant::now();
        if self.kind_at(&path).await?.is_some() {
            return Err(Errno::EEXIST);
        }
        let now = SystemTime::now();
        let mut dir = inode::Inode::detached(&path, Kind::Dir, now);
        dir.meta = self
            .new_entry_meta(parent, Kind::Dir, mode, caller, now)
            .await?;
        let options = self.put_options(&path, &dir);
        let marker = self.dir_prefix(&path);
        let etag = self
            .store
            .put(&marker, Bytes::new(), &options, None)
            .await?;
        let headers = self.wrote_marker(&marker, &options);
        self.entry_changed(&path);
        self.listings().created_empty(&path, begun);
        let mut state = self.state();
        let inode = state.inodes.lookup(&path, Kind::Dir, now);
        inode.meta = dir.meta;
        inode.etag = Some(etag);
        inode.headers = Some(headers);
        inode.validated = Some(Instant::now());
        let inode = inode.clone();
        Ok(self.attr(&inode))
    }

    /// A symlink is an object whose body is the target and whose mode says S_IFLNK,
    /// as s3fs stores it.
    pub async fn symlink(
        &self,
        parent: u64,
        name: &OsStr,
        target: &OsStr,
        caller: Caller,
    ) -> FsResult<Attr> {
        let target = target.to_str().ok_or(Errno::EINVAL)?;
        if target.len() > MAX_TARGET {
            return Err(Errno::ENAMETOOLONG);
        }
        let node = Node {
            kind: Kind::Symlink,
            perm: 0o777,
            rdev: None,
        };
        self.create_special(parent, name, node, target, caller)
            .await
    }

    /// mknod of a fifo, a socket or a device: an empty object whose mode says
    /// which (and `x-amz-meta-rdev` the device number), as s3fs stores them; the
    /// kernel gives them their behaviour (the mount's `nodev` keeps devices
    /// from being opened). Regular files are created like any other.
    pub async fn mknod(
        &self,
        parent: u64,
        name: &OsStr,
        mode: u32,
        rdev: u32,
        caller: Caller,
    ) -> FsResult<Attr> {
        let (kind, rdev) = match mode & libc::S_IFMT {
            libc::S_IFIFO => (Kind::Fifo, None),
            libc::S_IFSOCK => (Kind::Socket, None),
            libc::S_IFBLK => (Kind::BlockDevice, Some(rdev)),
            libc::S_IFCHR => (Kind::CharDevice, Some(rdev)),
            libc::S_IFREG => {
                let flags = libc::O_WRONLY | libc::O_EXCL;
                let (attr, fh) = self.create(parent, name, mode, flags, caller).await?;
                let uploaded = self.flush(fh, caller.process).await;
                self.release(fh).await;
                uploaded?;
                return self.getattr(attr.ino).await;
            }
            _ => return Err(Errno::EINVAL),
        };
        let node = Node {
            kind,
            perm: mode & 0o7777,
            rdev,
        };
        self.create_special(parent, name, node, "", caller).await
    }

    /// Create at once an object for `node` (not a regular file or a directory)
    /// holding `body`.
    async fn create_special(
        &self,
        parent: u64,
        name: &OsStr,
        node: Node,
        body: &str,
        caller: Caller,
    ) -> FsResult<Attr> {
        let Node { kind, perm, rdev } = node;
        self.check_writable()?;
        let path = self.child_path(parent, name)?;
        if self.kind_at(&path).await?.is_some() {
            return Err(Errno::EEXIST);
        }
        let now = SystemTime::now();
        let mut new = inode::Inode::detached(&path, kind, now);
        new.meta = self.new_entry_meta(parent, kind, perm, caller, now).await?;
        new.meta.rdev = rdev;
        let key = self.key(&path);
        let options = self.put_options(&key, &new);
        let since = SystemTime::now();
        let etag = self
            .store
            .put(
                &key,
                Bytes::copy_from_slice(body.as_bytes()),
                &options,
                None,
            )
            .await?;
        let headers = self.wrote(&key, &etag, &options, since);
        self.published(&key, Change::Written { new: true });
        self.entry_changed(&path);
        let mut state = self.state();
        let inode = state.inodes.lookup(&path, kind, now);
        inode.meta = new.meta;
        inode.size = body.len() as u64;
        inode.etag = Some(etag);
        if kind == Kind::Symlink {
            inode.target = Some(body.to_string());
        }
        inode.headers = Some(headers);
        inode.validated = Some(Instant::now());
        let inode = inode.clone();
        Ok(self.attr(&inode))
    }

    pub async fn readlink(&self, ino: u64) -> FsResult<String> {
        let inode = self.inode(ino)?;
        if inode.kind != Kind::Symlink {
            return Err(Errno::EINVAL);
        }
        if let Some(target) = inode.target {
            return Ok(target);
        }
        if inode.size as usize > MAX_TARGET {
            return Err(Errno::EIO);
        }
        let body = self
            .store
            .get_range(&self.key(&inode.path), 0..inode.size, inode.etag.as_deref())
            .await?;
        let target = String::from_utf8(body.to_vec()).map_err(|_| Errno::EIO)?;
        if let Some(stored) = self.state().inodes.get_mut(ino) {
            stored.target = Some(target.clone());
        }
        Ok(target)
    }

    pub async fn unlink(&self, parent: u64, name: &OsStr) -> FsResult<()> {
        self.check_writable()?;
        let path = self.child_path(parent, name)?;
        match self.kind_at(&path).await? {
            None => return Err(Errno::ENOENT),
            Some(Kind::Dir) => return Err(Errno::EISDIR),
            Some(_) => {}
        }
        let ino = self.state().inodes.ino_of(&path);
        // An upload of the file under way (its last close) ends first: only then
        // is it settled whether there is an object to delete.
        let open = ino.and_then(|ino| self.open_state(ino));
        let mut guard = match &open {
            Some(of) => Some(of.lock().await),
            None => None,
        };
        let local = ino
            .and_then(|ino| self.state().inodes.get(ino).map(|i| i.local))
            .unwrap_or(false);
        if !local {
            // Handles still open on the file keep reading it after the delete.
            if let (Some(ino), Some(of)) = (ino, guard.as_deref_mut()) {
                self.keep_locked(ino, of).await?;
            }
            let key = self.key(&path);
            self.store.delete(&key).await?;
            self.published(&key, Change::Deleted);
        }
        self.state().inodes.unlink(&path);
        if let Some(of) = guard.as_deref_mut() {
            self.drop_changes(of).await;
        }
        self.entry_changed(&path);
        Ok(())
    }

    pub async fn rmdir(&self, parent: u64, name: &OsStr) -> FsResult<()> {
        self.check_writable()?;
        let path = self.child_path(parent, name)?;
        match self.kind_at(&path).await? {
            None => return Err(Errno::ENOENT),
            Some(Kind::Dir) => {}
            Some(_) => return Err(Errno::ENOTDIR),
        }
        let _markers = self.dir_times.markers.lock().await;
        self.check_empty(&path).await?;
        let marker = self.dir_prefix(&path);
        self.store.delete(&marker).await?;
        let old_form = {
            let state = self.state();
            let ino = state.inodes.ino_of(&path);
            ino.and_then(|i| state.inodes.get(i))
                .is_some_and(|i| i.old_dir_object)
        };
        if old_form {
            self.store.delete(&self.key(&path)).await?;
        }
        self.store
            .delete(&format!("{}{S3FS_DIR_SUFFIX}", self.key(&path)))
            .await?;
        self.state().inodes.unlink(&path);
        self.entry_changed(&path);
        Ok(())
    }

    /// ENOTEMPTY unless directory `path` holds nothing but its own marker.
    pub(super) async fn check_empty(&self, path: &str) -> FsResult<()> {
        if !self.state().inodes.local_children(path).is_empty() {
            return Err(Errno::ENOTEMPTY);
        }
        let marker = self.dir_prefix(path);
        let page = self
            .store
            .list(ListRequest {
                prefix: &marker,
                delimiter: None,
                continuation: None,
                max_keys: Some(2),
            })
            .await?;
        if page.objects.iter().any(|o| o.key != marker) || !page.prefixes.is_empty() {
            return Err(Errno::ENOTEMPTY);
        }
        Ok(())
    }

    pub fn opendir(&self, ino: u64) -> FsResult<u64> {
        let mut state = self.state();
        let dir = state.inodes.get(ino).ok_or(Errno::ENOENT)?;
        if dir.kind != Kind::Dir {
            return Err(Errno::ENOTDIR);
        }
        let path = dir.path.clone();
        let local = state
            .inodes
            .local_children(&path)
            .into_iter()
            .map(|(name, _)| DirEntry {
                name,
                kind: Kind::File,
                meta: None,
            })
            .collect();
        // A fresh listing (made ahead, say) serves; otherwise S3 is listed.
        let handle = match self.listings().snapshot(&path) {
            Some((begun, listed)) => {
                DirHandle::listed(self.dir_prefix(&path), begun, listed, local)
            }
            None => DirHandle::new(self.dir_prefix(&path), local),
        };
        let fh = self.new_fh();
        state
            .handles
            .dirs
            .insert(fh, Arc::new(tokio::sync::Mutex::new(handle)));
        Ok(fh)
    }

    /// Up to `max` entries from `offset` on (0 and 1 are `.` and `..`). With `plus`
    /// (readdirplus) every other entry comes with its attributes and counts as a
    /// lookup. What the listing shows is recorded for lookups during the TTL.
    pub async fn readdir(
        &self,
        ino: u64,
        fh: u64,
        offset: u64,
        max: usize,
        plus: bool,
    ) -> FsResult<Vec<Listed>> {
        let handle = self
            .state()
            .handles
            .dirs
            .get(&fh)
            .cloned()
            .ok_or(Errno::EBADF)?;
        let (dir, parent_ino) = {
            let state = self.state();
            let dir = state.inodes.get(ino).ok_or(Errno::ENOENT)?.clone();
            let parent = state
                .inodes
                .ino_of(inode::parent_of(&dir.path))
                .unwrap_or(ROOT_INO);
            (dir, parent)
        };
        let mut out = Vec::new();
        for (i, name, ino) in [(0, ".", ino), (1, "..", parent_ino)] {
            if offset <= i && out.len() < max {
                out.push(Listed {
                    ino,
                    next_offset: i + 1,
                    kind: Kind::Dir,
                    name: name.into(),
                    // The kernel takes no reference for these two.
                    attr: plus.then(|| self.attr(&dir)),
                });
            }
        }
        let from = offset.saturating_sub(2) as usize;
        let mut handle = handle.lock().await;
        let entries = handle
            .entries_from(&self.store, from, max - out.len())
            .await?
            .to_vec();
        tracing::trace!(
            "readdir{} of {:?} from {offset}: {} entries, done: {}",
            if plus { "plus" } else { "" },
            dir.path,
            entries.len(),
            handle.is_done()
        );
        let seen = handle.begun();
        self.dir_holds(ino, from == 0, &entries);
        {
            let mut listings = self.listings();
            if handle.is_done() {
                // Complete with every entry of the listing, not only those served
                // so far: a reader that stops after a batch (rm's first look, to
                // see whether the directory is empty) must not leave a record of
                // the directory as holding just that batch.
                listings.record(&dir.path, handle.begun(), handle.all());
                listings.complete(&dir.path, handle.begun());
            } else {
                listings.record(&dir.path, handle.begun(), &entries);
            }
        }
        drop(handle);
        // Runs on its own; what it finds is recorded.
        let _ahead = self.list_ahead(&dir.path, &entries);
        if plus {
            let paths: Vec<String> = entries.iter().map(|e| join(&dir.path, &e.name)).collect();
            let wanted = entries
                .iter()
                .zip(&paths)
                .map(|(e, path)| self.version_of(path, e).unwrap_or_default())
                .collect();
            let remembered = super::lookup::remembered_many(self.meta.clone(), wanted).await;
            // What is not remembered shows what the listing says, or (with
            // --head-listed) is asked for, a batch at a time.
            let mut completed = Vec::with_capacity(entries.len());
            let mut pending = entries.into_iter().zip(remembered).zip(&paths);
            loop {
                let mut batch = Vec::new();
                for ((e, remembered), path) in pending.by_ref().take(PARALLEL_HEADS) {
                    batch.push(async move {
                        match remembered {
                            None if !self.head_wanted(&e) => Ok::<_, Errno>(Some((e, None))),
                            remembered => Ok(self
                                .complete_listed(path, e, remembered)
                                .await?
                                .map(|(e, h)| (e, Some(h)))),
                        }
                    });
                }
                if batch.is_empty() {
                    break;
                }
                completed.extend(futures::future::join_all(batch).await);
            }
            for (i, (done, path)) in completed.into_iter().zip(&paths).enumerate() {
                // Gone since it was listed: leave it out.
                let Some((e, headers)) = done? else { continue };
                let attr = self.enter_listed(path, &e, headers, seen);
                out.push(Listed {
                    ino: attr.ino,
                    next_offset: (from + i + 3) as u64,
                    kind: attr.kind,
                    name: e.name.clone(),
                    attr: Some(attr),
                });
            }
            return Ok(out);
        }
        let mut state = self.state();
        for (i, e) in entries.iter().enumerate() {
            let path = join(&dir.path, &e.name);
            let (ino, kind) = match state.inodes.by_path_mut(&path) {
                Some(inode) => {
                    if let Some(meta) = &e.meta
                        && !inode.dirty
                        && !inode.local
                        && inode.kind != Kind::Dir
                    {
                        inode.set_listed(meta, None, seen);
                    }
                    (inode.ino, inode.kind)
                }
                None => (synthetic_ino(&path), e.kind),
            };
            out.push(Listed {
                ino,
                next_offset: (from + i + 3) as u64,
                kind,
                name: e.name.clone(),
                attr: None,
            });
        }
        Ok(out)
    }

    /// A directory without a time of its own (no marker, nothing changed here)
    /// shows the newest time of the objects in it, as a listing shows them;
    /// `first` starts the count again.
    fn dir_holds(&self, ino: u64, first: bool, entries: &[DirEntry]) {
        let newest = entries
            .iter()
            .filter_map(|e| e.meta.as_ref()?.last_modified)
            .max();
        let mut state = self.state();
        if let Some(dir) = state.inodes.get_mut(ino)
            && dir.meta.mtime.is_none()
            && let Some(newest) = newest
        {
            dir.modified = if first {
                newest
            } else {
                dir.modified.max(newest)
            };
        }
    }

    pub fn releasedir(&self, fh: u64) {
        self.state().handles.dirs.remove(&fh);
    }
}
