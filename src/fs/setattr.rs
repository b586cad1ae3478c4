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
use crate::store::{Condition, CopyOptions, UserMetadata};

/// Most user metadata S3 stores with an object (2 KiB).
const MAX_METADATA: usize = 2048;

/// The size of user metadata as S3 counts it, header names counted whole
/// (`x-amz-meta-` too) so that no S3 implementation finds it larger.
fn metadata_size(metadata: &UserMetadata) -> usize {
    metadata
        .iter()
        .map(|(k, v)| "x-amz-meta-".len() + k.len() + v.len())
        .sum()
}

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
        let xattrs = match self.mode {
            Some(mode) => super::xattr::chmod_acl(meta.xattrs.as_ref(), mode),
            None => None,
        };
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
            rdev: meta.rdev,
            xattrs: xattrs.or_else(|| meta.xattrs.clone()),
        }
    }
}

impl Fs {
    pub async fn setattr(&self, ino: u64, changes: SetAttr) -> FsResult<Attr> {
        if changes.size.is_some() || changes.changes_metadata() {
            self.check_writable()?;
        }
        if let Some(size) = changes.size {
            // Its upload keeps the object's metadata, which must be known.
            self.ensure_headers(ino).await?;
            self.truncate(ino, size).await?;
        }
        if changes.changes_metadata() {
            self.set_metadata(ino, &changes).await?;
        }
        let inode = self.inode(ino)?;
        Ok(self.attr(&inode))
    }

    async fn set_metadata(&self, ino: u64, changes: &SetAttr) -> FsResult<()> {
        let now = SystemTime::now();
        let times = changes.atime.is_some() || changes.mtime.is_some();
        self.change_metadata(ino, times, |inode| {
            Ok(changes.apply(&inode.meta, inode.kind, now))
        })
        .await
    }

    /// Give `ino` the metadata `change` makes of its inode: at once in S3 for an
    /// object with no pending changes, else with its next upload. `times` says
    /// the change sets the times (which the next upload must not replace). A
    /// change that makes the metadata larger than S3 stores fails with E2BIG.
    pub(super) async fn change_metadata(
        &self,
        ino: u64,
        times: bool,
        change: impl FnOnce(&super::inode::Inode) -> FsResult<FileMeta>,
    ) -> FsResult<()> {
        // Hold the file's write state (if open) so no upload runs meanwhile.
        let open = self.open_state(ino);
        let _guard = match &open {
            Some(of) => Some(of.lock().await),
            None => None,
        };
        // A directory's marker takes one write at a time: the directory-times
        // writer must not put back times older than these.
        let _marker = match self.inode(ino)?.kind {
            Kind::Dir => Some(self.dir_times.markers.lock().await),
            _ => None,
        };
        self.ensure_headers(ino).await?;
        let inode = self.inode(ino)?;
        let mut changed = inode.clone();
        changed.meta = change(&inode)?;
        let key = self.key(&inode.path);
        let size = |i: &super::inode::Inode| metadata_size(&self.put_options(&key, i).metadata);
        let (after, before) = (size(&changed), size(&inode));
        if after > MAX_METADATA && after > before {
            return Err(Errno::E2BIG);
        }
        let pending = inode.local || inode.dirty || !inode.is_linked();
        if !pending {
            if inode.kind == Kind::Dir {
                self.write_marker(&changed, None).await?;
            } else {
                self.rewrite_metadata(&changed).await?;
            }
        }
        let mut state = self.state();
        let stored = state.inodes.get_mut(ino).ok_or(Errno::ENOENT)?;
        stored.meta = changed.meta;
        if pending && times {
            stored.times_set = true;
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
    /// bucket has no key, so its attributes stay in memory). A directory held
    /// by an old `dir` object moves to `dir/`.
    pub(super) async fn write_marker(
        &self,
        inode: &super::inode::Inode,
        condition: Option<&Condition>,
    ) -> FsResult<()> {
        let marker = self.dir_prefix(&inode.path);
        if marker.is_empty() {
            return Ok(());
        }
        let options = self.put_options(&marker, inode);
        let etag = self
            .store
            .put(&marker, Bytes::new(), &options, condition)
            .await?;
        let headers = self.wrote_marker(&marker, &options);
        if inode.old_dir_object {
            self.store.delete(&self.key(&inode.path)).await?;
        }
        let mut state = self.state();
        if let Some(stored) = state.inodes.get_mut(inode.ino) {
            stored.stored(etag);
            stored.headers = Some(headers);
            stored.old_dir_object = false;
        }
        drop(state);
        self.object_stored(&inode.path);
        Ok(())
    }
}
