//! setattr: size, mode, owner and times.
//!
//! Mode, owner and times are the object's metadata. A file with changes not yet
//! uploaded takes them with its next upload; otherwise they are written at once by
//! copying the object onto itself with new metadata (server-side: no data moves).
//! A directory keeps them on its marker object.

use std::time::SystemTime;

use bytes::Bytes;

use super::inode::{Attr, Kind};
use super::meta::FileMeta;
use super::{Change, Errno, Fs, FsResult};
use crate::store::CopyOptions;

/// The changes of one setattr request; `None` leaves a field as it is.
#[derive(Debug, Clone, Copy, Default)]
pub struct SetAttr {
    pub size: Option<u64>,
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub atime: Option<SystemTime>,
    pub mtime: Option<SystemTime>,
}

impl SetAttr {
    fn changes_metadata(&self) -> bool {
        self.mode.is_some()
            || self.uid.is_some()
            || self.gid.is_some()
            || self.atime.is_some()
            || self.mtime.is_some()
    }

    /// `meta` with these changes, for an inode of `kind`.
    fn apply(&self, meta: &FileMeta, kind: Kind, now: SystemTime) -> FileMeta {
        FileMeta {
            mode: self
                .mode
                .map(|m| kind.type_bits() | (m & 0o7777))
                .or(meta.mode),
            uid: self.uid.or(meta.uid),
            gid: self.gid.or(meta.gid),
            atime: self.atime.or(meta.atime),
            mtime: self.mtime.or(meta.mtime),
            ctime: Some(now),
        }
    }
}

impl Fs {
    pub async fn setattr(&self, ino: u64, changes: SetAttr) -> FsResult<Attr> {
        if changes.size.is_some() || changes.changes_metadata() {
            self.check_writable()?;
        }
        if let Some(size) = changes.size {
            self.truncate(ino, size).await?;
        }
        if changes.changes_metadata() {
            self.set_metadata(ino, &changes).await?;
        }
        let inode = self.inode(ino)?;
        Ok(self.attr(&inode))
    }

    async fn set_metadata(&self, ino: u64, changes: &SetAttr) -> FsResult<()> {
        // Hold the file's write state (if open) so no upload runs meanwhile.
        let open = self.open_state(ino);
        let _guard = match &open {
            Some(of) => Some(of.lock().await),
            None => None,
        };
        self.ensure_headers(ino).await?;
        let inode = self.inode(ino)?;
        let now = SystemTime::now();
        let meta = changes.apply(&inode.meta, inode.kind, now);
        let pending = inode.local || inode.dirty || !inode.is_linked();
        if !pending {
            let mut changed = inode.clone();
            changed.meta = meta.clone();
            if inode.kind == Kind::Dir {
                self.write_marker(&changed).await?;
            } else {
                self.rewrite_metadata(&changed).await?;
            }
        }
        let mut state = self.state();
        let inode = state.inodes.get_mut(ino).ok_or(Errno::ENOENT)?;
        inode.meta = meta;
        if pending && (changes.atime.is_some() || changes.mtime.is_some()) {
            inode.times_set = true;
        }
        Ok(())
    }

    /// Copy the object onto itself with `inode`'s metadata.
    async fn rewrite_metadata(&self, inode: &super::inode::Inode) -> FsResult<()> {
        let key = self.key(&inode.path);
        let options = self.put_options(&key, inode);
        let copy = CopyOptions {
            replace: Some(options.clone()),
            if_match: inode.etag.clone(),
        };
        let since = SystemTime::now();
        let etag = self.uploader.copy(&key, &key, inode.size, &copy).await?;
        // The content is the same, but the headers served with it (Last-Modified,
        // ETag, maybe Content-Type) are not.
        self.published(&key, Change::Written { new: false });
        let headers = self.wrote(&key, &etag, &options, since);
        let mut state = self.state();
        if let Some(stored) = state.inodes.get_mut(inode.ino) {
            stored.stored(etag);
            stored.headers = Some(headers);
        }
        drop(state);
        self.object_stored(&inode.path);
        Ok(())
    }

    /// Write a directory's marker object with `inode`'s metadata (the root of a
    /// bucket has no key, so its attributes stay in memory).
    pub(super) async fn write_marker(&self, inode: &super::inode::Inode) -> FsResult<()> {
        let marker = self.dir_prefix(&inode.path);
        if marker.is_empty() {
            return Ok(());
        }
        let options = self.put_options(&marker, inode);
        let etag = self
            .store
            .put(&marker, Bytes::new(), &options, None)
            .await?;
        let headers = self.wrote_marker(&marker, &options);
        let mut state = self.state();
        if let Some(stored) = state.inodes.get_mut(inode.ino) {
            stored.stored(etag);
            stored.headers = Some(headers);
        }
        drop(state);
        self.object_stored(&inode.path);
        Ok(())
    }
}
