//! The filesystem core: every operation, async, over an [`ObjectStore`], knowing
//! nothing of FUSE. Results are plain structs or an [`Errno`].
//!
//! The operations live in submodules by what they touch: [`lookup`](self) (names to
//! inodes, attributes), files (open, read, write, close), setattr, tree (create and
//! remove entries, list directories) and rename.

pub mod changes;
pub mod dir;
pub mod error;
pub mod inode;
pub mod meta;
pub mod xattr;

mod acl;
mod dir_times;
mod files;
mod list_ahead;
mod listing;
mod lookup;
mod probe;
mod rename;
mod setattr;
mod tree;
pub mod upload_state;
mod write_back;

use std::collections::HashMap;
use std::ffi::OsStr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant, SystemTime};

use crate::cache::meta::MetaCache;
use crate::cache::{BlockCache, CacheConfig};
use crate::journal::Journal;
use crate::read::Reader;
use crate::store::{ObjectStore, PutOptions};
use crate::write::offload::OffloadPolicy;
use crate::write::staged::Staged;
use crate::write::staging::StagingDir;
use crate::write::stream::Stream;
use crate::write::upload::Uploader;
use changes::{Change, Changes};
use dir::{DirHandle, S3FS_DIR_SUFFIX, is_showable};
pub use error::{Errno, FsResult};
use inode::{Attr, Inode, InodeTable, Kind, join};
pub use setattr::SetAttr;
pub use write_back::{OnConflict, RetryPolicy, conflict_key};

/// Longest key S3 accepts, in bytes.
const MAX_KEY_LEN: usize = 1024;
/// Parts one upload sends at once.
const PARALLEL_PARTS: usize = 4;
/// Objects a directory rename copies (and then deletes) at once.
const PARALLEL_COPIES: usize = 16;

#[derive(Debug, Clone)]
pub struct FsConfig {
    /// Key prefix of the mount root: `""` or ending in `/`.
    pub prefix: String,
    /// Owner and permissions of objects whose metadata does not say.
    pub uid: u32,
    pub gid: u32,
    pub file_mode: u16,
    pub dir_mode: u16,
    pub metadata_ttl: Duration,
    /// How long a name found missing (or a directory found or made empty) is
    /// trusted to stay so.
    pub negative_ttl: Duration,
    /// HEAD listed objects whose headers are not remembered, rather than show
    /// what the listing says of them.
    pub head_listed: bool,
    pub read_only: bool,
    /// The bucket, named in journal records.
    pub bucket: String,
    /// The cache directory: staging files, the journal, data put aside.
    pub cache_dir: PathBuf,
    /// Whose version wins when another writer changed an object.
    pub on_conflict: OnConflict,
    /// HEAD the object before each conditional upload (for servers that do not
    /// enforce `If-Match` / `If-None-Match`).
    pub check_before_upload: bool,
    /// How failed uploads are tried again.
    pub retry: RetryPolicy,
    /// The block cache for reads.
    pub cache: CacheConfig,
    /// Memory for parts being uploaded, across all uploads.
    pub upload_memory: u64,
    /// close() returns once the file is durable in the journal; the upload
    /// runs in the background.
    pub background_uploads: bool,
    /// A streamed file this large offloads the parts S3 confirmed (see
    /// [`crate::write::offload`]).
    pub offload_after: u64,
}

/// Who makes a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    /// The process (thread group id): only the opener's close() uploads.
    pub process: u32,
    /// Owner of what the request creates.
    pub uid: u32,
    pub gid: u32,
    /// The caller's umask, for what it creates (the kernel leaves it to us, so
    /// that a directory's default ACL can take its place).
    pub umask: u32,
}

/// One entry of a readdir reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub ino: u64,
    /// The offset of the entry after this one.
    pub next_offset: u64,
    pub kind: Kind,
    pub name: String,
    /// With readdirplus: the entry's attributes (a lookup was counted for every
    /// entry but `.` and `..`).
    pub attr: Option<Attr>,
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
    /// The process that opened the handle: only its close() uploads.
    opener: u32,
    /// Built on the first read that goes to S3, for the version current then.
    reader: Mutex<Option<Arc<Reader>>>,
}

/// Write state of a file that has open handles, shared by all of them.
#[derive(Default)]
struct OpenFile {
    /// The file's changes, once it has any (or once it had to be kept locally).
    staged: Option<Staged>,
    /// The last upload failed; the staging file is kept for the user.
    upload_failed: bool,
    /// A write failed (a full disk): what was staged is incomplete, so it is never
    /// uploaded, and close() reports this error.
    write_error: Option<Errno>,
    /// The multipart upload under way: the parts of a new file sent while it is
    /// written, or those an earlier attempt sent.
    stream: Option<Stream>,
    /// The journal record of the changes, once there are any.
    record: Option<write_back::RecordState>,
    /// Complete, waiting for an upload that failed: a background task tries
    /// again, holding the state like an open handle. The number tells that
    /// task from those of earlier pending spells.
    pending: Option<u64>,
    /// Taken from the journal of an earlier run: an attempt of that run may
    /// have stored the file already.
    resumed: bool,
}

type SharedOpenFile = Arc<tokio::sync::Mutex<OpenFile>>;

#[derive(Default)]
struct Handles {
    files: HashMap<u64, Arc<FileHandle>>,
    dirs: HashMap<u64, Arc<tokio::sync::Mutex<DirHandle>>>,
    /// Open handles per inode, and the shared write state of that inode.
    open: HashMap<u64, (usize, SharedOpenFile)>,
}

struct State {
    inodes: InodeTable,
    handles: Handles,
}

pub struct Fs {
    store: Arc<dyn ObjectStore>,
    cache: Arc<BlockCache>,
    /// Headers of object versions, for listings.
    meta: Arc<MetaCache>,
    config: FsConfig,
    staging: StagingDir,
    uploader: Uploader,
    /// When the parts S3 confirmed of a file being written leave local disk.
    offload: OffloadPolicy,
    state: Mutex<State>,
    /// Shared with listings made in the background.
    listings: Arc<Mutex<listing::Listings>>,
    /// Bounds the listings made in the background.
    ahead: list_ahead::Ahead,
    next_fh: AtomicU64,
    mount_time: SystemTime,
    /// Told of each change S3 has.
    changes: Option<Arc<dyn Changes>>,
    journal: Journal,
    /// Stops the background tasks.
    halt: write_back::Halt,
    /// Background upload attempts at once (the resume of many files must not
    /// crowd out the requests of programs).
    retry_slots: tokio::sync::Semaphore,
    /// What uploads that failed for want of an answer wait for.
    prober: probe::Prober,
    /// Files whose upload is left to a background task (failed, or, with
    /// background uploads, not tried yet).
    pending_files: std::sync::atomic::AtomicUsize,
    /// Directory times waiting for their markers.
    dir_times: dir_times::DirTimes,
    /// The uploads under way, failed and in conflict, for `s3mount status`.
    board: crate::status::board::Board,
    /// Bytes S3 confirmed of an upload, by key (see [`upload_state`]).
    sent_bytes: std::sync::OnceLock<upload_state::SentBytes>,
    /// For the background tasks, which must not keep the filesystem alive.
    me: Weak<Fs>,
}

impl Fs {
    /// The filesystem over `store`, telling `changes` (if any) of every change
    /// S3 has. [`Fs::resume`] takes up the journal an earlier run left.
    pub fn new(
        store: Arc<dyn ObjectStore>,
        config: FsConfig,
        changes: Option<Arc<dyn Changes>>,
    ) -> std::io::Result<Arc<Self>> {
        crate::private::create_dir(&config.cache_dir)?;
        let journal = Journal::new(&config.cache_dir)?;
        let staging = StagingDir::new(journal.staging_dir().to_path_buf())?;
        let cache = Arc::new(BlockCache::new(store.clone(), config.cache.clone())?);
        let parts_in_memory =
            (config.upload_memory / crate::write::upload::FIRST_PART_SIZE).max(1) as usize;
        let uploader = Uploader::new(
            store.clone(),
            cache.clone(),
            PARALLEL_PARTS,
            parts_in_memory,
        );
        let meta = Arc::new(MetaCache::new(cache.disk()));
        let min_free = config.cache.disk.as_ref().map_or(0, |(_, l)| l.min_free);
        let offload =
            OffloadPolicy::new(staging.path().to_path_buf(), config.offload_after, min_free);
        let mount_time = SystemTime::now();
        let listings = Arc::new(Mutex::new(listing::Listings::new(
            config.metadata_ttl,
            config.negative_ttl,
        )));
        let prober = probe::Prober::new(store.clone(), config.prefix.clone());
        Ok(Arc::new_cyclic(|me| Self {
            store,
            cache,
            meta,
            config,
            staging,
            uploader,
            offload,
            state: Mutex::new(State {
                inodes: InodeTable::new(mount_time),
                handles: Handles::default(),
            }),
            listings,
            ahead: list_ahead::Ahead::default(),
            next_fh: AtomicU64::new(1),
            mount_time,
            changes,
            journal,
            halt: write_back::Halt::default(),
            retry_slots: tokio::sync::Semaphore::new(write_back::RETRIES_AT_ONCE),
            prober,
            pending_files: std::sync::atomic::AtomicUsize::new(0),
            dir_times: dir_times::DirTimes::default(),
            board: Default::default(),
            sent_bytes: std::sync::OnceLock::new(),
            me: me.clone(),
        }))
    }

    /// S3 has `change` of the object `key`. Directory markers are not reported:
    /// they are not served.
    fn published(&self, key: &str, change: Change) {
        let Some(changes) = &self.changes else {
            return;
        };
        if key.ends_with('/') || key.ends_with(S3FS_DIR_SUFFIX) {
            return;
        }
        if let Some(path) = key.strip_prefix(self.config.prefix.as_str()) {
            changes.changed(path, change);
        }
    }

    pub fn config(&self) -> &FsConfig {
        &self.config
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere must not take every later request down with it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn listings(&self) -> MutexGuard<'_, listing::Listings> {
        self.listings.lock().unwrap_or_else(|e| e.into_inner())
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

    fn inode(&self, ino: u64) -> FsResult<Inode> {
        self.state().inodes.get(ino).cloned().ok_or(Errno::ENOENT)
    }

    fn attr(&self, inode: &Inode) -> Attr {
        let default_perm = match inode.kind {
            Kind::Dir => self.config.dir_mode,
            Kind::Symlink => 0o777,
            _ => self.config.file_mode,
        };
        let mtime = inode.meta.mtime.unwrap_or(inode.modified);
        Attr {
            ino: inode.ino,
            kind: inode.kind,
            size: inode.size,
            atime: inode.meta.atime.unwrap_or(mtime),
            mtime,
            ctime: inode.meta.ctime.unwrap_or(mtime),
            perm: inode
                .meta
                .mode
                .map_or(default_perm, |m| (m & 0o7777) as u16),
            uid: inode.meta.uid.unwrap_or(self.config.uid),
            gid: inode.meta.gid.unwrap_or(self.config.gid),
            nlink: match (inode.is_linked(), inode.kind) {
                (false, _) => 0,
                (true, Kind::Dir) => 2,
                (true, _) => 1,
            },
            rdev: inode.meta.rdev.unwrap_or(0),
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

    /// The inode at `path` if the table knows it well enough to answer without S3.
    fn known(&self, path: &str) -> Option<Inode> {
        let state = self.state();
        let ino = state.inodes.ino_of(path)?;
        let inode = state.inodes.get(ino)?;
        self.is_fresh(inode).then(|| inode.clone())
    }

    /// Every file with write state (open, or pending), and that state.
    fn open_states(&self) -> Vec<(u64, SharedOpenFile)> {
        self.state()
            .handles
            .open
            .iter()
            .map(|(ino, (_, of))| (*ino, of.clone()))
            .collect()
    }

    /// The write state of `ino` if it has open handles.
    fn open_state(&self, ino: u64) -> Option<SharedOpenFile> {
        self.state()
            .handles
            .open
            .get(&ino)
            .map(|(_, of)| of.clone())
    }

    /// Content-Type and metadata for uploading (or copying to) `key` with the
    /// attributes of `inode`.
    fn put_options(&self, key: &str, inode: &Inode) -> PutOptions {
        let existing = inode.headers.as_ref();
        let metadata = inode
            .meta
            .to_metadata(&existing.map(|h| h.metadata.clone()).unwrap_or_default());
        let content_type = match (inode.kind, mime_guess::from_path(key).first_raw()) {
            // As s3fs marks its directories.
            (Kind::Dir, _) => Some(dir::DIR_CONTENT_TYPE.to_string()),
            (Kind::File, Some(guess)) => Some(guess.to_string()),
            // Nothing to guess from the name: keep what the object had.
            (Kind::File, None) => existing
                .and_then(|h| h.content_type.clone())
                .or_else(|| Some("application/octet-stream".into())),
            _ => None,
        };
        PutOptions {
            content_type,
            metadata,
        }
    }

    /// The entry at `path` was created, removed or renamed here: its directory's
    /// mtime and ctime change (on its marker a moment later, see
    /// [`dir_times`]), and what was recorded of the name is dropped.
    fn entry_changed(&self, path: &str) {
        let dir = inode::parent_of(path);
        let now = SystemTime::now();
        self.listings().changed(dir, path);
        let mut state = self.state();
        let Some(inode) = state.inodes.by_path_mut(dir) else {
            return;
        };
        inode.meta.mtime = Some(now);
        inode.meta.ctime = Some(now);
        inode.times_unsaved = true;
        let ino = inode.ino;
        drop(state);
        self.dir_times_changed(ino);
    }

    /// This mount stored a new version of the object at `path`: what listings
    /// begun before now recorded of it no longer holds.
    fn object_stored(&self, path: &str) {
        self.listings().changed(inode::parent_of(path), path);
    }

    /// When this mount last changed what is at `path`, if recently: for an inode
    /// entered afresh (the one that saw the change may be forgotten).
    fn changed_here(&self, path: &str) -> Option<Instant> {
        self.listings().changed_at(path)
    }

    fn new_fh(&self) -> u64 {
        self.next_fh.fetch_add(1, Ordering::Relaxed)
    }

    /// What statfs reports for the directory `ino` (or the directory of a
    /// file): its `namelen` is the longest name that fits there, S3's key limit
    /// less the directory's key and the `/` a directory marker adds.
    pub fn statfs(&self, ino: u64) -> StatFs {
        let dir = self.state().inodes.get(ino).map(|i| match i.kind {
            Kind::Dir => i.path.clone(),
            _ => inode::parent_of(&i.path).to_string(),
        });
        let used = self.dir_prefix(&dir.unwrap_or_default()).len() + 1;
        let namelen = MAX_KEY_LEN.saturating_sub(used).min(dir::NAME_MAX);
        const BLOCKS: u64 = 1 << 40;
        StatFs {
            blocks: BLOCKS,
            bfree: BLOCKS,
            files: 1 << 32,
            ffree: 1 << 32,
            bsize: 4096,
            namelen: namelen as u32,
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

#[cfg(test)]
mod offload_tests;
#[cfg(test)]
mod stream_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod write_back_tests;
#[cfg(test)]
mod xattr_tests;
