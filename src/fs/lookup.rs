//! Names to inodes, and attributes: lookup, forget, getattr.

use std::ffi::OsStr;
use std::time::Instant;

use super::dir::S3FS_DIR_SUFFIX;
use super::inode::{Attr, Kind};
use super::meta::FileMeta;
use super::{Errno, Fs, FsResult};
use crate::store::{ListRequest, ObjectMeta, StoreError};

/// What S3 holds at a path.
pub(super) struct Resolved {
    pub kind: Kind,
    /// The HEAD of the object (a directory's: of its marker, if it has one).
    pub head: Option<ObjectMeta>,
}

impl Fs {
    /// What S3 holds at `path`: a directory (prefix or marker), a file, a symlink,
    /// or nothing. A directory wins over a file of the same name.
    pub(super) async fn resolve(&self, path: &str) -> FsResult<Option<Resolved>> {
        let key = self.key(path);
        let dir_prefix = format!("{key}/");
        let (head, list) = tokio::join!(
            self.store.head(&key),
            self.store.list(ListRequest {
                prefix: &dir_prefix,
                delimiter: None,
                continuation: None,
                max_keys: Some(1),
            })
        );
        let list = list?;
        if !list.objects.is_empty() || !list.prefixes.is_empty() {
            // The marker sorts first under its prefix; its metadata is the
            // directory's.
            let head = if list.objects.first().is_some_and(|o| o.key == dir_prefix) {
                self.store.head(&dir_prefix).await.ok()
            } else {
                None
            };
            return Ok(Some(Resolved {
                kind: Kind::Dir,
                head,
            }));
        }
        match head {
            Ok(meta) => {
                let kind = meta.headers.as_ref().map_or(Kind::File, |h| {
                    Kind::of_object(&FileMeta::from_metadata(&h.metadata))
                });
                return Ok(Some(Resolved {
                    kind,
                    head: Some(meta),
                }));
            }
            Err(StoreError::NotFound) => {}
            Err(e) => return Err(e.into()),
        }
        match self.store.head(&format!("{key}{S3FS_DIR_SUFFIX}")).await {
            Ok(_) => Ok(Some(Resolved {
                kind: Kind::Dir,
                head: None,
            })),
            Err(StoreError::NotFound) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    pub async fn lookup(&self, parent: u64, name: &OsStr) -> FsResult<Attr> {
        let path = self.child_path(parent, name)?;
        if let Some(inode) = self.known(&path) {
            let mut state = self.state();
            let inode = state.inodes.lookup(&path, inode.kind, self.mount_time);
            return Ok(self.attr(&inode.clone()));
        }
        let resolved = self.resolve(&path).await?.ok_or(Errno::ENOENT)?;
        let mut state = self.state();
        let inode = state.inodes.lookup(&path, resolved.kind, self.mount_time);
        if !inode.dirty {
            match &resolved.head {
                Some(head) => inode.set_head(head),
                None => inode.validated = Some(Instant::now()),
            }
        }
        let inode = inode.clone();
        Ok(self.attr(&inode))
    }

    pub fn forget(&self, ino: u64, n: u64) {
        let mut state = self.state();
        let open = state.handles.open.contains_key(&ino);
        state.inodes.forget(ino, n, open);
    }

    pub async fn getattr(&self, ino: u64) -> FsResult<Attr> {
        let inode = self.inode(ino)?;
        if self.is_fresh(&inode) || inode.kind == Kind::Dir || !inode.is_linked() {
            return Ok(self.attr(&inode));
        }
        self.revalidate(ino).await
    }

    /// HEAD the object again and take what S3 says.
    pub(super) async fn revalidate(&self, ino: u64) -> FsResult<Attr> {
        let path = self.inode(ino)?.path;
        let result = self.store.head(&self.key(&path)).await;
        let mut state = self.state();
        let inode = state.inodes.get_mut(ino).ok_or(Errno::ENOENT)?;
        if !inode.dirty && inode.path == path {
            inode.set_head(&result?);
        }
        let inode = inode.clone();
        Ok(self.attr(&inode))
    }

    /// The inode's Content-Type and metadata, with a HEAD if no HEAD has been made
    /// since it was listed.
    pub(super) async fn ensure_headers(&self, ino: u64) -> FsResult<()> {
        let inode = self.inode(ino)?;
        if inode.headers.is_some() || inode.local {
            return Ok(());
        }
        let key = if inode.kind == Kind::Dir {
            self.dir_prefix(&inode.path)
        } else {
            self.key(&inode.path)
        };
        if key.is_empty() {
            // The root of a bucket: no key, so no metadata.
            return Ok(());
        }
        let head = match self.store.head(&key).await {
            Ok(head) => head,
            // An implicit directory has no marker and so no metadata.
            Err(StoreError::NotFound) if inode.kind == Kind::Dir => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        let mut state = self.state();
        if let Some(inode) = state.inodes.get_mut(ino)
            && !inode.dirty
        {
            inode.set_head(&head);
        }
        Ok(())
    }
}
