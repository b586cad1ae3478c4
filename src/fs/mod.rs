//! The filesystem core: every operation, async, over an [`ObjectStore`], knowing
//! nothing of FUSE. Results are plain structs or an [`Errno`].

pub mod dir;
pub mod error;
pub mod inode;

use std::collections::HashMap;
use std::ffi::OsStr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;

use crate::read::RemoteReader;
use crate::store::{ListRequest, ObjectMeta, ObjectStore, PutOptions, StoreError};
use crate::write::staging::{StagingDir, StagingFile};
use crate::write::upload::Uploader;
use dir::{DirEntry, DirHandle, S3FS_DIR_SUFFIX, is_showable};
pub use error::{Errno, FsResult};
use inode::{Attr, Inode, InodeTable, Kind, ROOT_INO, join};

/// Longest key S3 accepts, in bytes.
const MAX_KEY_LEN: usize = 1024;
/// Largest object CopyObject copies in one request.
const MAX_COPY_SIZE: u64 = 5 * 1024 * 1024 * 1024;
/// Parts one upload sends at once, and parts held in memory across all uploads.
const PARALLEL_PARTS: usize = 4;
const MAX_PARTS_IN_MEMORY: usize = 16;

#[derive(Debug, Clone)]
pub struct FsConfig {
    /// Key prefix of the mount root: `""` or ending in `/`.
    pub prefix: String,
    pub uid: u32,
    pub gid: u32,
    pub file_mode: u16,
    pub dir_mode: u16,
    pub metadata_ttl: Duration,
    pub read_only: bool,
    /// Where staging files go.
    pub staging_dir: PathBuf,
}

/// One entry of a readdir reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub ino: u64,
    /// The offset of the entry after this one.
    pub next_offset: u64,
    pub kind: Kind,
    pub name: String,
}

/// What statfs reports: S3 has no capacity, so a large constant.
#[derive(Debug, Clone, Copy)]
pub struct StatFs {
    pub blocks: u64,
    pub bfree: u64,
    pub files: u64,
    pub ffree: u64,
    pub bsize: u32,
    pub namelen: u32,
}

struct FileHandle {
    ino: u64,
    writable: bool,
    /// The process (thread group) that opened the handle: only its close() uploads.
    opener: u32,
    /// Built on the first read that goes to S3, for the ETag current then.
    reader: tokio::sync::Mutex<Option<Arc<RemoteReader>>>,
}

/// Write state of a file that has open handles.
#[derive(Default)]
struct OpenFile {
    staging: Option<StagingFile>,
    /// The last upload failed; the staging file is kept for the user.
    upload_failed: bool,
    /// A write failed (a full disk): what was staged is incomplete, so it is never
    /// uploaded, and close() reports this error.
    write_error: Option<Errno>,
}

#[derive(Default)]
struct Handles {
    files: HashMap<u64, Arc<FileHandle>>,
    dirs: HashMap<u64, Arc<tokio::sync::Mutex<DirHandle>>>,
    /// Open handles per inode, and the shared write state of that inode.
    open: HashMap<u64, (usize, Arc<tokio::sync::Mutex<OpenFile>>)>,
}

struct State {
    inodes: InodeTable,
    handles: Handles,
}

pub struct Fs {
    store: Arc<dyn ObjectStore>,
    config: FsConfig,
    staging: StagingDir,
    uploader: Uploader,
    state: Mutex<State>,
    next_fh: AtomicU64,
    mount_time: SystemTime,
}

impl Fs {
    pub fn new(store: Arc<dyn ObjectStore>, config: FsConfig) -> std::io::Result<Self> {
        let staging = StagingDir::new(config.staging_dir.clone())?;
        let uploader = Uploader::new(store.clone(), PARALLEL_PARTS, MAX_PARTS_IN_MEMORY);
        let mount_time = SystemTime::now();
        Ok(Self {
            store,
            config,
            staging,
            uploader,
            state: Mutex::new(State {
                inodes: InodeTable::new(mount_time),
                handles: Handles::default(),
            }),
            next_fh: AtomicU64::new(1),
            mount_time,
        })
    }

    pub fn config(&self) -> &FsConfig {
        &self.config
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere must not take every later request down with it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn key(&self, path: &str) -> String {
        format!("{}{path}", self.config.prefix)
    }

    /// Key prefix under which a directory's children live.
    fn dir_prefix(&self, path: &str) -> String {
        if path.is_empty() {
            self.config.prefix.clone()
        } else {
            format!("{}{path}/", self.config.prefix)
        }
    }

    fn attr(&self, inode: &Inode) -> Attr {
        let default_perm = match inode.kind {
            Kind::File => self.config.file_mode,
            Kind::Dir => self.config.dir_mode,
        };
        Attr {
            ino: inode.ino,
            kind: inode.kind,
            size: inode.size,
            mtime: inode.mtime,
            perm: inode.perm.unwrap_or(default_perm),
            uid: inode.uid.unwrap_or(self.config.uid),
            gid: inode.gid.unwrap_or(self.config.gid),
        }
    }

    /// Can the attributes in the table be trusted without asking S3?
    fn is_fresh(&self, inode: &Inode) -> bool {
        inode.local
            || inode.dirty
            || inode
                .validated
                .is_some_and(|t| t.elapsed() < self.config.metadata_ttl)
    }

    fn check_writable(&self) -> FsResult<()> {
        if self.config.read_only {
            Err(Errno::EROFS)
        } else {
            Ok(())
        }
    }

    /// The path of `name` in directory `parent`, if S3 can store it.
    fn child_path(&self, parent: u64, name: &OsStr) -> FsResult<String> {
        let name = name.to_str().ok_or(Errno::EINVAL)?;
        if name.len() > dir::NAME_MAX {
            return Err(Errno::ENAMETOOLONG);
        }
        if !is_showable(name) || name.ends_with(S3FS_DIR_SUFFIX) {
            return Err(Errno::EINVAL);
        }
        let state = self.state();
        let dir = state.inodes.get(parent).ok_or(Errno::ENOENT)?;
        if dir.kind != Kind::Dir {
            return Err(Errno::ENOTDIR);
        }
        let path = join(&dir.path, name);
        // A directory needs room for its marker `path/` too.
        if self.key(&path).len() + 1 > MAX_KEY_LEN {
            return Err(Errno::ENAMETOOLONG);
        }
        Ok(path)
    }

    /// What S3 holds at `path`: a directory (prefix or marker), a file, or nothing.
    async fn resolve(&self, path: &str) -> FsResult<Option<(Kind, Option<ObjectMeta>)>> {
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
            return Ok(Some((Kind::Dir, None)));
        }
        match head {
            Ok(meta) => return Ok(Some((Kind::File, Some(meta)))),
            Err(StoreError::NotFound) => {}
            Err(e) => return Err(e.into()),
        }
        match self.store.head(&format!("{key}{S3FS_DIR_SUFFIX}")).await {
            Ok(_) => Ok(Some((Kind::Dir, None))),
            Err(StoreError::NotFound) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// The inode at `path` if the table knows it well enough to answer without S3.
    fn known(&self, path: &str) -> Option<Inode> {
        let state = self.state();
        let ino = state.inodes.ino_of(path)?;
        let inode = state.inodes.get(ino)?;
        self.is_fresh(inode).then(|| inode.clone())
    }

    /// Does anything exist at `path`, and what kind is it?
    async fn kind_at(&self, path: &str) -> FsResult<Option<Kind>> {
        if let Some(inode) = self.known(path) {
            return Ok(Some(inode.kind));
        }
        Ok(self.resolve(path).await?.map(|(kind, _)| kind))
    }

    pub async fn lookup(&self, parent: u64, name: &OsStr) -> FsResult<Attr> {
        let path = self.child_path(parent, name)?;
        if let Some(inode) = self.known(&path) {
            let mut state = self.state();
            let inode = state.inodes.lookup(&path, inode.kind, self.mount_time);
            return Ok(self.attr(&inode.clone()));
        }
        let (kind, meta) = self.resolve(&path).await?.ok_or(Errno::ENOENT)?;
        let mut state = self.state();
        let inode = state.inodes.lookup(&path, kind, self.mount_time);
        if !inode.dirty {
            match &meta {
                Some(meta) => inode.set_meta(meta),
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
        let inode = self.state().inodes.get(ino).cloned().ok_or(Errno::ENOENT)?;
        if self.is_fresh(&inode) || inode.kind == Kind::Dir || !inode.is_linked() {
            return Ok(self.attr(&inode));
        }
        self.revalidate(ino, &inode.path).await
    }

    /// HEAD the file again and take what S3 says.
    async fn revalidate(&self, ino: u64, path: &str) -> FsResult<Attr> {
        let result = self.store.head(&self.key(path)).await;
        let mut state = self.state();
        let inode = state.inodes.get_mut(ino).ok_or(Errno::ENOENT)?;
        if !inode.dirty {
            match result {
                Ok(meta) => inode.set_meta(&meta),
                Err(e) => return Err(e.into()),
            }
        }
        let inode = inode.clone();
        Ok(self.attr(&inode))
    }

    pub async fn setattr(
        &self,
        ino: u64,
        size: Option<u64>,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        mtime: Option<SystemTime>,
    ) -> FsResult<Attr> {
        if size.is_some() || mode.is_some() || uid.is_some() || gid.is_some() || mtime.is_some() {
            self.check_writable()?;
        }
        if let Some(size) = size {
            self.truncate(ino, size).await?;
        }
        let mut state = self.state();
        let inode = state.inodes.get_mut(ino).ok_or(Errno::ENOENT)?;
        if let Some(mode) = mode {
            inode.perm = Some((mode & 0o7777) as u16);
        }
        if uid.is_some() {
            inode.uid = uid;
        }
        if gid.is_some() {
            inode.gid = gid;
        }
        if let Some(mtime) = mtime {
            inode.mtime = mtime;
        }
        let inode = inode.clone();
        Ok(self.attr(&inode))
    }

    /// Set the size of a file: through its staging file if it is open, else at once
    /// (download, cut, upload).
    async fn truncate(&self, ino: u64, size: u64) -> FsResult<()> {
        let kind = self.state().inodes.get(ino).map(|i| i.kind);
        match kind {
            None => return Err(Errno::ENOENT),
            Some(Kind::Dir) => return Err(Errno::EISDIR),
            Some(Kind::File) => {}
        }
        let (open, temporary) = self.open_file(ino);
        let result = async {
            let mut of = open.lock().await;
            self.ensure_staging(ino, &mut of, size > 0).await?;
            if let Some(staging) = &of.staging {
                staging.set_len(size).await?;
            }
            self.mark_written(ino, size, true);
            if temporary {
                self.upload_locked(ino, &mut of).await?;
            }
            Ok(())
        }
        .await;
        if temporary {
            self.close_file(ino).await;
        }
        result
    }

    /// The write state of `ino`, registering one more user of it; `true` if this
    /// call opened it (and so must close it with [`Self::close_file`]).
    fn open_file(&self, ino: u64) -> (Arc<tokio::sync::Mutex<OpenFile>>, bool) {
        let mut state = self.state();
        let entry = state.handles.open.entry(ino).or_default();
        entry.0 += 1;
        (entry.1.clone(), entry.0 == 1)
    }

    /// Give `of` a staging file; with `load`, filled with the object's current bytes.
    async fn ensure_staging(&self, ino: u64, of: &mut OpenFile, load: bool) -> FsResult<()> {
        if of.staging.is_some() {
            return Ok(());
        }
        let inode = self.state().inodes.get(ino).cloned().ok_or(Errno::ENOENT)?;
        let key = self.key(&inode.path);
        let staging = self.staging.create(&key)?;
        if load && !inode.local && !inode.dirty && inode.size > 0 {
            let reader = RemoteReader::new(self.store.clone(), key, inode.etag, inode.size);
            let mut offset = 0;
            while offset < inode.size {
                let data = reader.read(offset, 1 << 20).await?;
                if data.is_empty() {
                    break;
                }
                let len = data.len() as u64;
                staging.write_at(offset, data.to_vec()).await?;
                offset += len;
            }
        }
        of.staging = Some(staging);
        Ok(())
    }

    /// Record a local change: the file is dirty, with this size (or at least this
    /// size when `exact` is false, for writes).
    fn mark_written(&self, ino: u64, size: u64, exact: bool) {
        let mut state = self.state();
        if let Some(inode) = state.inodes.get_mut(ino) {
            inode.dirty = true;
            inode.size = if exact { size } else { inode.size.max(size) };
            inode.mtime = SystemTime::now();
        }
    }

    /// Open a file for `process` (a thread group id), whose close() will upload it.
    pub async fn open(&self, ino: u64, flags: i32, process: u32) -> FsResult<u64> {
        let writable = flags & libc::O_ACCMODE != libc::O_RDONLY;
        if writable {
            self.check_writable()?;
        }
        let inode = self.state().inodes.get(ino).cloned().ok_or(Errno::ENOENT)?;
        if inode.kind == Kind::Dir {
            return Err(Errno::EISDIR);
        }
        // Close-to-open: a file opened after the TTL sees what S3 has now.
        if !self.is_fresh(&inode) && inode.is_linked() {
            self.revalidate(ino, &inode.path).await?;
        }
        let (open, _) = self.open_file(ino);
        if writable && flags & libc::O_TRUNC != 0 {
            let mut of = open.lock().await;
            let result = async {
                self.ensure_staging(ino, &mut of, false).await?;
                if let Some(staging) = &of.staging {
                    staging.set_len(0).await?;
                }
                Ok(())
            }
            .await;
            if let Err(e) = result {
                drop(of);
                self.close_file(ino).await;
                return Err(e);
            }
            self.mark_written(ino, 0, true);
        }
        Ok(self.new_handle(ino, writable, process))
    }

    fn new_handle(&self, ino: u64, writable: bool, opener: u32) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        let handle = FileHandle {
            ino,
            writable,
            opener,
            reader: tokio::sync::Mutex::new(None),
        };
        self.state().handles.files.insert(fh, Arc::new(handle));
        fh
    }

    /// Create and open a file (open with O_CREAT).
    pub async fn create(
        &self,
        parent: u64,
        name: &OsStr,
        flags: i32,
        process: u32,
    ) -> FsResult<(Attr, u64)> {
        self.check_writable()?;
        let path = self.child_path(parent, name)?;
        match self.kind_at(&path).await? {
            Some(_) if flags & libc::O_EXCL != 0 => return Err(Errno::EEXIST),
            Some(Kind::Dir) => return Err(Errno::EISDIR),
            Some(Kind::File) => {
                let attr = self.lookup(parent, name).await?;
                let fh = self.open(attr.ino, flags, process).await?;
                let attr = self.getattr(attr.ino).await?;
                return Ok((attr, fh));
            }
            None => {}
        }
        let now = SystemTime::now();
        let ino = {
            let mut state = self.state();
            let inode = state.inodes.lookup(&path, Kind::File, now);
            inode.local = true;
            inode.dirty = true;
            inode.size = 0;
            inode.mtime = now;
            inode.ino
        };
        let (open, _) = self.open_file(ino);
        let staged = {
            let mut of = open.lock().await;
            self.ensure_staging(ino, &mut of, false).await
        };
        if let Err(e) = staged {
            self.close_file(ino).await;
            self.state().inodes.unlink(&path);
            return Err(e);
        }
        let fh = self.new_handle(ino, true, process);
        let inode = self.state().inodes.get(ino).cloned().ok_or(Errno::ENOENT)?;
        Ok((self.attr(&inode), fh))
    }

    fn handle(&self, fh: u64) -> FsResult<Arc<FileHandle>> {
        self.state()
            .handles
            .files
            .get(&fh)
            .cloned()
            .ok_or(Errno::EBADF)
    }

    fn open_state(&self, ino: u64) -> FsResult<Arc<tokio::sync::Mutex<OpenFile>>> {
        self.state()
            .handles
            .open
            .get(&ino)
            .map(|(_, of)| of.clone())
            .ok_or(Errno::EBADF)
    }

    pub async fn read(&self, fh: u64, offset: u64, size: u32) -> FsResult<Bytes> {
        let handle = self.handle(fh)?;
        {
            let of = self.open_state(handle.ino)?;
            let of = of.lock().await;
            if let Some(staging) = &of.staging {
                return Ok(staging.read_at(offset, size as usize).await?);
            }
        }
        let inode = self
            .state()
            .inodes
            .get(handle.ino)
            .cloned()
            .ok_or(Errno::ENOENT)?;
        let reader = {
            let mut slot = handle.reader.lock().await;
            match &*slot {
                Some(r) if r.etag() == inode.etag.as_deref() && r.size() == inode.size => r.clone(),
                _ => {
                    let r = Arc::new(RemoteReader::new(
                        self.store.clone(),
                        self.key(&inode.path),
                        inode.etag.clone(),
                        inode.size,
                    ));
                    *slot = Some(r.clone());
                    r
                }
            }
        };
        Ok(reader.read(offset, size).await?)
    }

    pub async fn write(&self, fh: u64, offset: u64, data: Vec<u8>) -> FsResult<u32> {
        let handle = self.handle(fh)?;
        if !handle.writable {
            return Err(Errno::EBADF);
        }
        let len = data.len();
        let of = self.open_state(handle.ino)?;
        let mut of = of.lock().await;
        let written = async {
            self.ensure_staging(handle.ino, &mut of, true).await?;
            if let Some(staging) = &of.staging {
                staging.write_at(offset, data).await?;
            }
            Ok(())
        }
        .await;
        if let Err(e) = written {
            of.write_error = Some(e);
            return Err(e);
        }
        self.mark_written(handle.ino, offset + len as u64, false);
        u32::try_from(len).map_err(|_| Errno::EINVAL)
    }

    /// close() by `process`: upload what was written. The error, if any, is what
    /// close() returns.
    ///
    /// The kernel sends a flush for every close of every copy of the descriptor,
    /// including the copies a child inherits across fork() and closes at exec(). Only
    /// the opener's close uploads, so a program that forks while writing does not
    /// publish its file half-written; the last release uploads what is left.
    pub async fn flush(&self, fh: u64, process: u32) -> FsResult<()> {
        let handle = self.handle(fh)?;
        if handle.opener != process {
            return Ok(());
        }
        self.fsync(fh).await
    }

    /// fsync(): upload what was written, whoever asks.
    pub async fn fsync(&self, fh: u64) -> FsResult<()> {
        let handle = self.handle(fh)?;
        if !handle.writable {
            return Ok(());
        }
        let of = self.open_state(handle.ino)?;
        let mut of = of.lock().await;
        self.upload_locked(handle.ino, &mut of).await
    }

    /// Upload the staging file of a dirty file. On failure the staging file stays
    /// on disk and its path is logged.
    async fn upload_locked(&self, ino: u64, of: &mut OpenFile) -> FsResult<()> {
        let inode = self.state().inodes.get(ino).cloned().ok_or(Errno::ENOENT)?;
        if !inode.dirty || !inode.is_linked() {
            return Ok(());
        }
        if let Some(e) = of.write_error {
            if let Some(staging) = &of.staging {
                tracing::error!(
                    "{}: not uploaded because a write failed ({e:?}); what was written is kept in {}",
                    self.key(&inode.path),
                    staging.path().display()
                );
            }
            return Err(e);
        }
        self.ensure_staging(ino, of, true).await?;
        let Some(staging) = &of.staging else {
            return Err(Errno::EIO);
        };
        let key = self.key(&inode.path);
        let size = staging.len().await?;
        let options = PutOptions {
            content_type: Some(content_type(&key)),
        };
        match self.uploader.upload(&key, staging, size, &options).await {
            Ok(etag) => {
                of.upload_failed = false;
                let mut state = self.state();
                if let Some(inode) = state.inodes.get_mut(ino) {
                    inode.dirty = false;
                    inode.local = false;
                    inode.size = size;
                    inode.etag = Some(etag);
                    inode.validated = Some(Instant::now());
                }
                tracing::debug!("uploaded {key} ({size} bytes)");
                Ok(())
            }
            Err(e) => {
                of.upload_failed = true;
                if let Err(sync) = staging.sync().await {
                    tracing::error!("cannot sync {}: {sync}", staging.path().display());
                }
                tracing::error!(
                    "upload of {key} failed: {e}; the data is kept in {}",
                    staging.path().display()
                );
                Err(Errno(e.errno()))
            }
        }
    }

    /// The last close of a handle. Data not uploaded yet is uploaded now; data that
    /// failed to upload stays in its staging file.
    pub async fn release(&self, fh: u64) {
        let ino = match self.state().handles.files.remove(&fh) {
            Some(h) => h.ino,
            None => return,
        };
        self.close_file(ino).await;
    }

    async fn close_file(&self, ino: u64) {
        let last = {
            let mut state = self.state();
            match state.handles.open.get_mut(&ino) {
                Some((n, _)) if *n > 1 => {
                    *n -= 1;
                    None
                }
                Some(_) => state.handles.open.remove(&ino).map(|(_, of)| of),
                None => None,
            }
        };
        let Some(of) = last else { return };
        let mut of = of.lock().await;
        let (dirty, linked) = self
            .state()
            .inodes
            .get(ino)
            .map_or((false, false), |i| (i.dirty, i.is_linked()));
        if dirty && linked && !of.upload_failed && of.write_error.is_none() {
            // Errors are logged there; release cannot report them.
            let _ = self.upload_locked(ino, &mut of).await;
        }
        let still_dirty = self.state().inodes.get(ino).is_some_and(|i| i.dirty);
        if let Some(staging) = of.staging.take() {
            if still_dirty && linked {
                tracing::warn!(
                    "{}: not uploaded; the data is kept in {}",
                    self.state()
                        .inodes
                        .get(ino)
                        .map_or("?".into(), |i| self.key(&i.path)),
                    staging.path().display()
                );
                // What S3 has is what the file shows from now on.
                let mut state = self.state();
                if let Some(inode) = state.inodes.get_mut(ino) {
                    inode.dirty = false;
                    inode.local = false;
                    inode.validated = None;
                }
            } else {
                staging.remove();
            }
        }
        self.state().inodes.remove_if_unreferenced(ino);
    }

    pub async fn unlink(&self, parent: u64, name: &OsStr) -> FsResult<()> {
        self.check_writable()?;
        let path = self.child_path(parent, name)?;
        let known = self.known(&path);
        let remote = match &known {
            Some(inode) if inode.kind == Kind::Dir => return Err(Errno::EISDIR),
            Some(inode) => !inode.local,
            None => match self.resolve(&path).await? {
                None => return Err(Errno::ENOENT),
                Some((Kind::Dir, _)) => return Err(Errno::EISDIR),
                Some((Kind::File, _)) => true,
            },
        };
        if remote {
            self.store.delete(&self.key(&path)).await?;
        }
        self.state().inodes.unlink(&path);
        Ok(())
    }

    pub async fn mkdir(&self, parent: u64, name: &OsStr) -> FsResult<Attr> {
        self.check_writable()?;
        let path = self.child_path(parent, name)?;
        if self.kind_at(&path).await?.is_some() {
            return Err(Errno::EEXIST);
        }
        self.store
            .put(
                &format!("{}/", self.key(&path)),
                Bytes::new(),
                &PutOptions::default(),
            )
            .await?;
        let now = SystemTime::now();
        let mut state = self.state();
        let inode = state.inodes.lookup(&path, Kind::Dir, now);
        inode.mtime = now;
        inode.validated = Some(Instant::now());
        let inode = inode.clone();
        Ok(self.attr(&inode))
    }

    pub async fn rmdir(&self, parent: u64, name: &OsStr) -> FsResult<()> {
        self.check_writable()?;
        let path = self.child_path(parent, name)?;
        match self.kind_at(&path).await? {
            None => return Err(Errno::ENOENT),
            Some(Kind::File) => return Err(Errno::ENOTDIR),
            Some(Kind::Dir) => {}
        }
        if !self.state().inodes.local_children(&path).is_empty() {
            return Err(Errno::ENOTEMPTY);
        }
        let marker = format!("{}/", self.key(&path));
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
        self.store.delete(&marker).await?;
        self.store
            .delete(&format!("{}{S3FS_DIR_SUFFIX}", self.key(&path)))
            .await?;
        self.state().inodes.unlink(&path);
        Ok(())
    }

    /// Rename a file: CopyObject (metadata kept) then DeleteObject, so it is not
    /// atomic. A file with unsaved writes just takes the new name and is uploaded
    /// under it. Directories answer EXDEV for now, which makes `mv` copy and delete.
    pub async fn rename(
        &self,
        parent: u64,
        name: &OsStr,
        new_parent: u64,
        new_name: &OsStr,
        flags: u32,
    ) -> FsResult<()> {
        self.check_writable()?;
        if flags & !libc::RENAME_NOREPLACE != 0 {
            return Err(Errno::EINVAL);
        }
        let from = self.child_path(parent, name)?;
        let to = self.child_path(new_parent, new_name)?;
        if from == to {
            return Ok(());
        }
        let src = match self.known(&from) {
            Some(inode) => Some(inode),
            None => match self.resolve(&from).await? {
                None => return Err(Errno::ENOENT),
                Some((Kind::Dir, _)) => return Err(Errno::EXDEV),
                Some((Kind::File, meta)) => {
                    let size = meta.map_or(0, |m| m.size);
                    if size > MAX_COPY_SIZE {
                        return Err(Errno::EXDEV);
                    }
                    None
                }
            },
        };
        if src.as_ref().is_some_and(|i| i.kind == Kind::Dir) {
            return Err(Errno::EXDEV);
        }
        match self.kind_at(&to).await? {
            Some(Kind::Dir) => return Err(Errno::EISDIR),
            Some(Kind::File) if flags & libc::RENAME_NOREPLACE != 0 => {
                return Err(Errno::EEXIST);
            }
            _ => {}
        }
        let (from_key, to_key) = (self.key(&from), self.key(&to));
        let Some(src) = src else {
            self.store.copy(&from_key, &to_key).await?;
            self.store.delete(&from_key).await?;
            self.state().inodes.unlink(&to);
            return Ok(());
        };
        // Hold the file's write state so no upload runs under the old name meanwhile.
        let open = self
            .state()
            .handles
            .open
            .get(&src.ino)
            .map(|(_, of)| of.clone());
        let _guard = match &open {
            Some(of) => Some(of.lock().await),
            None => None,
        };
        let current = self
            .state()
            .inodes
            .get(src.ino)
            .cloned()
            .ok_or(Errno::ENOENT)?;
        if !current.local {
            if current.dirty {
                // The new content goes up under the new name at close.
                self.store.delete(&from_key).await?;
            } else {
                if current.size > MAX_COPY_SIZE {
                    return Err(Errno::EXDEV);
                }
                self.store.copy(&from_key, &to_key).await?;
                self.store.delete(&from_key).await?;
            }
        }
        self.state().inodes.rename(src.ino, &to);
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
        let handle = DirHandle::new(self.dir_prefix(&path), local);
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        state
            .handles
            .dirs
            .insert(fh, Arc::new(tokio::sync::Mutex::new(handle)));
        Ok(fh)
    }

    /// Up to `max` entries from `offset` on (0 and 1 are `.` and `..`).
    pub async fn readdir(
        &self,
        ino: u64,
        fh: u64,
        offset: u64,
        max: usize,
    ) -> FsResult<Vec<Listed>> {
        let handle = self
            .state()
            .handles
            .dirs
            .get(&fh)
            .cloned()
            .ok_or(Errno::EBADF)?;
        let (dir_path, parent_ino) = {
            let state = self.state();
            let dir = state.inodes.get(ino).ok_or(Errno::ENOENT)?;
            let parent = state
                .inodes
                .ino_of(inode::parent_of(&dir.path))
                .unwrap_or(ROOT_INO);
            (dir.path.clone(), parent)
        };
        let mut out = Vec::new();
        for (i, name, ino) in [(0, ".", ino), (1, "..", parent_ino)] {
            if offset <= i && out.len() < max {
                out.push(Listed {
                    ino,
                    next_offset: i + 1,
                    kind: Kind::Dir,
                    name: name.into(),
                });
            }
        }
        let from = offset.saturating_sub(2) as usize;
        let mut handle = handle.lock().await;
        let entries = handle
            .entries_from(&self.store, from, max - out.len())
            .await?;
        let mut state = self.state();
        for (i, e) in entries.iter().enumerate() {
            let path = join(&dir_path, &e.name);
            let ino = match state.inodes.by_path_mut(&path) {
                Some(inode) => {
                    // A listing is as good as a HEAD for the attributes.
                    if let (Some(meta), false, Kind::File) = (&e.meta, inode.dirty, inode.kind) {
                        inode.set_meta(meta);
                    }
                    inode.ino
                }
                None => synthetic_ino(&path),
            };
            out.push(Listed {
                ino,
                next_offset: (from + i + 3) as u64,
                kind: e.kind,
                name: e.name.clone(),
            });
        }
        Ok(out)
    }

    pub fn releasedir(&self, fh: u64) {
        self.state().handles.dirs.remove(&fh);
    }

    pub fn statfs(&self) -> StatFs {
        const BLOCKS: u64 = 1 << 40;
        StatFs {
            blocks: BLOCKS,
            bfree: BLOCKS,
            files: 1 << 32,
            ffree: 1 << 32,
            bsize: 4096,
            namelen: dir::NAME_MAX as u32,
        }
    }

    /// At unmount: upload every file that still has unsaved writes.
    pub async fn shutdown(&self) {
        let open: Vec<(u64, Arc<tokio::sync::Mutex<OpenFile>>)> = self
            .state()
            .handles
            .open
            .iter()
            .map(|(ino, (_, of))| (*ino, of.clone()))
            .collect();
        for (ino, of) in open {
            let mut of = of.lock().await;
            if self.upload_locked(ino, &mut of).await.is_ok()
                && let Some(staging) = of.staging.take()
            {
                staging.remove();
            }
        }
    }
}

/// Entries listed but never looked up get an inode number derived from their path,
/// with the top bit set so it cannot collide with the table's numbers. Allocating
/// real inodes here would grow the table with every listing.
fn synthetic_ino(path: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    path.hash(&mut h);
    h.finish() | (1 << 63)
}

/// The Content-Type of a key, from its extension (the CDN serves what we upload).
fn content_type(key: &str) -> String {
    mime_guess::from_path(key)
        .first_raw()
        .unwrap_or("application/octet-stream")
        .to_string()
}

#[cfg(test)]
mod tests;
