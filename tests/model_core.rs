//! The operation alphabet of `model_mount.rs`, run on the filesystem core over the
//! in-memory store (no FUSE, no server: thousands of sequences a minute), against
//! an in-memory model of the file. It adds what a mount cannot do cheaply: other
//! S3 clients replacing or deleting the object between operations (conflicts
//! with changes not uploaded yet), injected faults (a part upload that fails
//! once, a GET that fails part way, a PutObject that fails), a slow GET that
//! finishes after a later write, and crashes (every in-memory state dropped, the
//! cache directory and the bucket kept, the journal taken up by a new mount).
//!
//! What the model promises: a file whose close() succeeded, or failed after its
//! writer finished, is never lost (it is in S3, or is uploaded later and shows
//! meanwhile); another writer's version is never replaced silently (both are
//! kept); a file whose writer did not finish never becomes an object (its data
//! is put aside).
//!
//! The harness plays the kernel: it looks names up before opening them, counts
//! the references it holds and forgets them when "dropping caches", and writes in
//! pieces of at most 1 MiB. Failures are shrunk and saved like the mount test's
//! and replay with `scripts/soak.sh --replay FILE` (no server needed). Cases that
//! once failed are kept in `tests/model-cases/core/`.

mod common;

use std::collections::HashMap;
use std::ffi::OsStr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::model::{Seeds, assert_clean, run_seeds, saved_cases};
use common::ops::{Alphabet, At, Case, Fault, Len, MIB, Op, SizeClass, case, pattern};
use s3mount::cache::CacheConfig;
use s3mount::cache::disk::DiskLimits;
use s3mount::fs::inode::ROOT_INO;
use s3mount::fs::{Caller, Errno, Fs, FsConfig, FsResult, OnConflict, RetryPolicy, SetAttr};
use s3mount::store::StoreError;
use s3mount::store::memory::{MemoryStore, Op as StoreOp};

/// Operations of one case, at most.
const MAX_OPS: usize = 100;
const SHRINK_TIME: Duration = Duration::from_secs(5 * 60);
const ALPHABET: Alphabet = Alphabet {
    kernel: false,
    store: true,
    dirs: false,
};
const REPLAY: &str = "scripts/soak.sh --replay";
const ME: Caller = Caller {
    process: 100,
    uid: 1000,
    gid: 1000,
    umask: 0,
};
/// How long a slow GET is held at most for a write that cannot run meanwhile
/// (the read holds the file's lock): the outcome is checked either way.
const SLOW_GET_HOLD: Duration = Duration::from_millis(20);

fn name() -> &'static OsStr {
    OsStr::new("f")
}

fn tmp_name() -> &'static OsStr {
    OsStr::new("f.new")
}

/// The model: what the program sees.
#[derive(Default)]
struct Model {
    /// Contents of files, by a number of the model's own.
    files: Vec<Vec<u8>>,
    /// The file at the name, if there is one.
    named: Option<usize>,
    /// What S3 has at the name.
    saved: Option<Vec<u8>>,
    /// The named file has changes S3 does not have.
    unsaved: bool,
    /// What S3 had when those changes began: their upload requires that it
    /// still has it (else both versions are kept).
    base: Option<Vec<u8>>,
    /// The named file was finished (closed or fsync'ed) but its upload failed:
    /// it is uploaded later and shows meanwhile.
    pending: bool,
    /// The open handle changed the named file since it was last finished.
    writing: bool,
    /// Our versions kept beside another writer's (conflict copies), or put
    /// aside when they could not be rebuilt.
    copies: Vec<Vec<u8>>,
    /// Files put aside in `recovered/` because their writer never finished.
    aside: usize,
}

impl Model {
    fn named(&self) -> Option<&Vec<u8>> {
        self.named.map(|i| &self.files[i])
    }

    fn new_file(&mut self, data: Vec<u8>) -> usize {
        self.files.push(data);
        self.files.len() - 1
    }

    /// A program changes file `file`: if it is the named one and has no
    /// unsaved changes yet, they begin over what S3 has now.
    fn change(&mut self, file: usize) {
        if self.named != Some(file) {
            return;
        }
        if !self.unsaved {
            self.unsaved = true;
            self.base = self.saved.clone();
        }
        self.writing = true;
    }

    /// Would an upload of the named file meet another writer's version?
    fn conflict(&self) -> bool {
        self.unsaved && self.saved != self.base
    }

    /// An upload of the named file succeeded, or found another writer's
    /// version and kept both.
    fn uploaded(&mut self) {
        let Some(file) = self.named else { return };
        if self.conflict() {
            self.copies.push(self.files[file].clone());
            self.named = self.saved.clone().map(|theirs| {
                self.files.push(theirs);
                self.files.len() - 1
            });
        } else {
            self.saved = Some(self.files[file].clone());
        }
        self.settled();
    }

    /// The named file has no changes left to upload.
    fn settled(&mut self) {
        self.unsaved = false;
        self.pending = false;
        self.writing = false;
        self.base = None;
    }
}

/// The open handle: its fuse handle, inode, model file and flags.
#[derive(Clone, Copy)]
struct Handle {
    fh: u64,
    ino: u64,
    file: usize,
    append: bool,
}

/// Faults injected and not yet accounted for.
#[derive(Default)]
struct Armed {
    /// A GET fault met by some call: one operation may fail with EIO for it.
    get: bool,
    /// A PutObject fault queued.
    put: bool,
}

/// How an upload of the named file may end.
#[derive(Debug, PartialEq, Eq)]
enum Upload {
    Stored,
    /// Failed for an injected fault: the file is pending.
    Failed,
    /// Another writer's version is there: both kept, the call fails.
    Conflict,
}

struct Core {
    store: Arc<MemoryStore>,
    fs: Arc<Fs>,
    config: FsConfig,
    dir: tempfile::TempDir,
    /// References the "kernel" holds, by inode.
    lookups: HashMap<u64, u64>,
    handle: Option<Handle>,
    model: Model,
    armed: Armed,
}

/// A cache directory for one case: on tmpfs where there is one, since every case
/// creates and removes hundreds of small files (a sixth of the run on ext4).
fn scratch_dir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    let builder = tempfile::Builder::new();
    if shm.is_dir() {
        builder.tempdir_in(shm)
    } else {
        builder.tempdir()
    }
    .expect("tempdir")
}

fn err(e: Errno) -> String {
    format!("{e:?}")
}

impl Core {
    fn new(case: &Case) -> Self {
        let dir = scratch_dir();
        let store = Arc::new(MemoryStore::new());
        // Other writers are seen at the next open only with a TTL of zero; without
        // them, everything the mount records is trusted.
        let external = case
            .ops
            .iter()
            .any(|op| matches!(op, Op::ExternalPut { .. } | Op::ExternalDelete));
        let ttl = if external {
            Duration::ZERO
        } else {
            Duration::from_secs(3600)
        };
        let config = FsConfig {
            prefix: String::new(),
            uid: 1000,
            gid: 1000,
            file_mode: 0o644,
            dir_mode: 0o755,
            metadata_ttl: ttl,
            negative_ttl: ttl,
            head_listed: false,
            read_only: false,
            bucket: "model".into(),
            cache_dir: dir.path().to_path_buf(),
            on_conflict: OnConflict::Keep,
            check_before_upload: false,
            // Retried only by the operations (deterministic): never in the
            // background while a case runs.
            retry: RetryPolicy {
                first: Duration::from_secs(3600),
                max: Duration::from_secs(3600),
            },
            cache: CacheConfig {
                block_size: MIB,
                memory_bytes: 8 * MIB,
                in_flight_bytes: 32 * MIB,
                disk: Some((
                    dir.path().join("blocks"),
                    DiskLimits {
                        max_bytes: 64 * MIB,
                        min_free: 0,
                    },
                )),
            },
            upload_memory: 64 * MIB,
            background_uploads: false,
            // Offloading refuses reads of what it dropped: the model's files
            // never reach it (tests/offload.rs writes such files).
            offload_after: 1 << 30,
        };
        let fs = Fs::new(store.clone(), config.clone(), None).expect("fs");
        Self {
            store,
            fs,
            config,
            dir,
            lookups: HashMap::new(),
            handle: None,
            model: Model::default(),
            armed: Armed::default(),
        }
    }

    async fn lookup(&mut self, name: &OsStr) -> Result<(u64, u64), Errno> {
        let attr = self.fs.lookup(ROOT_INO, name).await?;
        *self.lookups.entry(attr.ino).or_default() += 1;
        Ok((attr.ino, attr.size))
    }

    /// Create the file as the program would (O_CREAT|O_TRUNC), write it, close it.
    async fn create(&mut self, case: &Case) -> Result<(), String> {
        let data = pattern(case.seed, 0, case.initial_size());
        if case.class == SizeClass::External {
            self.store.insert("f", data.clone());
        } else {
            self.open(true, false).await?;
            let h = self.handle.ok_or("no handle")?;
            self.write_at(h, 0, &data).await.map_err(err)?;
            self.close().await?;
        }
        let file = self.model.new_file(data.clone());
        self.model.named = Some(file);
        self.model.saved = Some(data);
        Ok(())
    }

    /// The size operations are resolved against: the open handle's file, else
    /// the named one.
    fn size(&self) -> u64 {
        let file = self.handle.map(|h| h.file).or(self.model.named);
        file.map_or(0, |f| self.model.files[f].len() as u64)
    }

    async fn open(&mut self, trunc: bool, append: bool) -> Result<(), String> {
        self.close().await?;
        let flags = libc::O_RDWR | if trunc { libc::O_TRUNC } else { 0 };
        let mut created = false;
        let (ino, fh) = match self.lookup(name()).await {
            Ok((ino, _)) => {
                let fh = self.fs.open(ino, flags, ME).await.map_err(err)?;
                (ino, fh)
            }
            Err(Errno::ENOENT) => {
                if self.model.named.is_some() {
                    return Err("lookup found nothing, but the file exists".into());
                }
                let (attr, fh) = self
                    .fs
                    .create(
                        ROOT_INO,
                        name(),
                        libc::S_IFREG | 0o644,
                        flags | libc::O_CREAT,
                        ME,
                    )
                    .await
                    .map_err(err)?;
                *self.lookups.entry(attr.ino).or_default() += 1;
                let file = self.model.new_file(Vec::new());
                self.model.named = Some(file);
                self.model.settled();
                created = true;
                (attr.ino, fh)
            }
            Err(e) => return Err(format!("lookup: {e:?}")),
        };
        let file = self.model.named.ok_or("the model has no file")?;
        if trunc {
            self.model.files[file].clear();
        }
        if trunc || created {
            self.model.change(file);
        }
        self.handle = Some(Handle {
            fh,
            ino,
            file,
            append,
        });
        Ok(())
    }

    async fn handle(&mut self) -> Result<Handle, String> {
        if self.handle.is_none() {
            self.open(false, false).await?;
        }
        self.handle.ok_or_else(|| "no handle".into())
    }

    /// close(): flush then release. It fails only for an injected fault (the
    /// file is then pending: uploaded later, shown meanwhile) or for another
    /// writer's version (both kept).
    async fn close(&mut self) -> Result<(), String> {
        let Some(h) = self.handle.take() else {
            return Ok(());
        };
        let named = self.model.named == Some(h.file);
        // Only an upload of the named file with changes S3 lacks can conflict.
        let expected_conflict = named && self.model.conflict();
        let put_faults = self.store.pending_faults(StoreOp::Put);
        let flushed = self.fs.flush(h.fh, ME.process).await;
        self.fs.release(h.fh).await;
        if !named {
            // An unlinked file: nothing of it is uploaded.
            return flushed.map_err(|e| format!("close of a removed file: {e:?}"));
        }
        self.closed(h.file, flushed, put_faults, expected_conflict)
    }

    /// The last close of the named file `file` ended with `flushed`: what
    /// became of its upload, checked against the model.
    fn closed(
        &mut self,
        file: usize,
        flushed: FsResult<()>,
        put_faults: usize,
        expected_conflict: bool,
    ) -> Result<(), String> {
        // A new file still empty goes up at the release, which cannot report a
        // failure (a deliberate difference, docs/POSIX.md): it is pending then.
        let outcome = match flushed {
            Ok(()) if self.store.pending_faults(StoreOp::Put) < put_faults => {
                let new_and_empty = self.model.saved.is_none() && self.model.files[file].is_empty();
                if !new_and_empty {
                    return Err("a PutObject failed, but close() succeeded".into());
                }
                self.armed.put = self.store.pending_faults(StoreOp::Put) > 0;
                Upload::Failed
            }
            Ok(()) => Upload::Stored,
            Err(e) => self.upload_failure(e, put_faults, expected_conflict)?,
        };
        self.upload_outcome(outcome, expected_conflict)
    }

    /// An upload of the named file (close, fsync, truncate of a closed file)
    /// failed with `e`: for an injected fault (EIO), or for a conflict
    /// (ESTALE) where one was due.
    fn upload_failure(
        &mut self,
        e: Errno,
        put_faults_before: usize,
        expected_conflict: bool,
    ) -> Result<Upload, String> {
        if e == Errno::ESTALE && expected_conflict {
            return Ok(Upload::Conflict);
        }
        self.allow_failure(e, put_faults_before)?;
        Ok(Upload::Failed)
    }

    /// What the model does after an upload of the named file ended so.
    fn upload_outcome(&mut self, outcome: Upload, expected_conflict: bool) -> Result<(), String> {
        match outcome {
            Upload::Stored if expected_conflict => {
                Err("the upload replaced another writer's version".into())
            }
            Upload::Stored | Upload::Conflict => {
                self.model.uploaded();
                Ok(())
            }
            Upload::Failed => {
                // The writer finished: kept, and uploaded later.
                if self.model.unsaved {
                    self.model.pending = true;
                }
                self.model.writing = false;
                Ok(())
            }
        }
    }

    /// A read of `file` failed with `e`: for an injected fault, or because bytes
    /// it had not fetched went with a version another writer replaced (the
    /// file changed in place, its upload pending).
    fn read_failure(&mut self, e: Errno, file: usize) -> Result<(), String> {
        if e == Errno::ESTALE && self.model.named == Some(file) && self.model.conflict() {
            return Ok(());
        }
        self.allow_failure(e, self.store.pending_faults(StoreOp::Put))
    }

    /// An operation failed with `e`: only EIO, and only for an injected fault
    /// (a PutObject fault met during it, or a GET fault met since it was armed).
    fn allow_failure(&mut self, e: Errno, put_faults_before: usize) -> Result<(), String> {
        if e != Errno::EIO {
            return Err(format!("failed with {e:?}"));
        }
        let put_met = self.store.pending_faults(StoreOp::Put) < put_faults_before;
        let get_met = self.armed.get && self.store.pending_faults(StoreOp::Get) == 0;
        if put_met {
            self.armed.put = self.store.pending_faults(StoreOp::Put) > 0;
        } else if get_met {
            self.armed.get = false;
        } else {
            return Err(format!("failed with {e:?} without an injected fault"));
        }
        Ok(())
    }

    async fn write_at(&self, h: Handle, offset: u64, data: &[u8]) -> Result<(), Errno> {
        // As the kernel does: at most 1 MiB per request.
        let mut done = 0;
        while done < data.len() {
            let end = (done + MIB as usize).min(data.len());
            let n = self
                .fs
                .write(h.fh, offset + done as u64, data[done..end].to_vec())
                .await?;
            if n as usize != end - done {
                return Err(Errno::EIO);
            }
            done = end;
        }
        Ok(())
    }

    async fn read_at(&self, fh: u64, offset: u64, len: u64) -> Result<Vec<u8>, Errno> {
        let mut out = Vec::new();
        while (out.len() as u64) < len {
            let want = (len - out.len() as u64).min(MIB) as u32;
            let chunk = self.fs.read(fh, offset + out.len() as u64, want).await?;
            if chunk.is_empty() {
                break;
            }
            out.extend_from_slice(&chunk);
        }
        Ok(out)
    }

    fn expected(&self, file: usize, offset: u64, len: u64) -> Vec<u8> {
        let data = &self.model.files[file];
        let start = (offset as usize).min(data.len());
        let end = (offset.saturating_add(len) as usize).min(data.len());
        data[start..end].to_vec()
    }

    fn model_write(&mut self, file: usize, offset: u64, data: &[u8]) {
        let f = &mut self.model.files[file];
        let end = offset as usize + data.len();
        if f.len() < end {
            f.resize(end, 0);
        }
        f[offset as usize..end].copy_from_slice(data);
    }

    /// A read of the handle's file: compared, or failed for an injected GET fault.
    async fn compare_read(
        &mut self,
        fh: u64,
        file: usize,
        offset: u64,
        len: u64,
    ) -> Result<(), String> {
        match self.read_at(fh, offset, len).await {
            Ok(got) => same("read", &got, &self.expected(file, offset, len)),
            Err(e) => self.read_failure(e, file),
        }
    }

    async fn apply(&mut self, op: &Op) -> Result<String, String> {
        let size = self.size();
        let span = |at: At, len: Len| {
            let start = at.resolve(size);
            (start, len.resolve(start))
        };
        Ok(match op {
            Op::Open { trunc, append } => {
                self.open(*trunc, *append).await?;
                format!("open trunc={trunc} append={append}")
            }
            Op::Close => {
                self.close().await?;
                "close".into()
            }
            Op::Write { at, len, seed } | Op::MmapWrite { at, len, seed } => {
                let h = self.handle().await?;
                let (mut start, len) = span(*at, *len);
                if h.append {
                    start = self.model.files[h.file].len() as u64;
                }
                let data = pattern(*seed, start, len);
                self.model.change(h.file);
                self.write_at(h, start, &data).await.map_err(err)?;
                self.model_write(h.file, start, &data);
                format!("write {start}+{len}")
            }
            Op::Read { at, len } | Op::MmapRead { at, len } => {
                let h = self.handle().await?;
                let (start, len) = span(*at, *len);
                self.compare_read(h.fh, h.file, start, len).await?;
                format!("read {start}+{len}")
            }
            Op::Truncate { to } => {
                let to = to.resolve(size);
                let Some(file) = self.model.named else {
                    return Ok("truncate (no file)".into());
                };
                let (ino, _) = self.lookup(name()).await.map_err(err)?;
                let put_faults = self.store.pending_faults(StoreOp::Put);
                let open = self.handle.is_some_and(|h| h.file == file);
                self.model.change(file);
                let expected_conflict = !open && self.model.conflict();
                let changes = SetAttr {
                    size: Some(to),
                    ..SetAttr::default()
                };
                let result = self.fs.setattr(ino, changes).await;
                // The cut is made, whether the upload that follows it (the file
                // is not open) succeeds or not.
                self.model.files[file].resize(to as usize, 0);
                if open {
                    result.map_err(|e| format!("truncate: {e:?}"))?;
                } else {
                    // Nobody has the file open: the truncate is its writer,
                    // finished, and uploads at once.
                    let outcome = match result {
                        Ok(_) => Upload::Stored,
                        Err(e) => self.upload_failure(e, put_faults, expected_conflict)?,
                    };
                    self.upload_outcome(outcome, expected_conflict)?;
                }
                format!("truncate {to}")
            }
            Op::Ftruncate { to } => {
                let h = self.handle().await?;
                let to = to.resolve(size);
                let changes = SetAttr {
                    size: Some(to),
                    ..SetAttr::default()
                };
                self.model.change(h.file);
                self.fs.setattr(h.ino, changes).await.map_err(err)?;
                self.model.files[h.file].resize(to as usize, 0);
                format!("ftruncate {to}")
            }
            Op::Fsync => {
                let h = self.handle().await?;
                let put_faults = self.store.pending_faults(StoreOp::Put);
                let named = self.model.named == Some(h.file);
                let expected_conflict = named && self.model.conflict();
                let result = self.fs.fsync(h.fh).await;
                if named {
                    let outcome = match result {
                        Ok(()) => Upload::Stored,
                        Err(e) => self.upload_failure(e, put_faults, expected_conflict)?,
                    };
                    let conflict = outcome == Upload::Conflict;
                    self.upload_outcome(outcome, expected_conflict)?;
                    if conflict {
                        // Told ESTALE, the program gives the descriptor up.
                        self.handle = None;
                        let flushed = self.fs.flush(h.fh, ME.process).await;
                        self.fs.release(h.fh).await;
                        flushed.map_err(|e| format!("close after a conflict: {e:?}"))?;
                    }
                } else {
                    result.map_err(|e| format!("fsync of a removed file: {e:?}"))?;
                }
                "fsync".into()
            }
            Op::Stat => {
                match (self.lookup(name()).await, self.model.named()) {
                    (Ok((_, got)), Some(want)) if got == want.len() as u64 => {}
                    (Err(Errno::ENOENT), None) => {}
                    (got, want) => {
                        return Err(format!(
                            "stat: {got:?}, the model has {:?} bytes",
                            want.map(Vec::len)
                        ));
                    }
                }
                if let Some(h) = self.handle {
                    let got = self.fs.getattr(h.ino).await.map_err(err)?.size;
                    let want = self.model.files[h.file].len() as u64;
                    if got != want {
                        return Err(format!("fstat: {got} bytes, the model has {want}"));
                    }
                }
                "stat".into()
            }
            Op::SecondRead { at, len } => {
                let Some(file) = self.model.named else {
                    return Ok("second read (no file)".into());
                };
                let (start, len) = span(*at, *len);
                let (ino, _) = self.lookup(name()).await.map_err(err)?;
                let fh = self.fs.open(ino, libc::O_RDONLY, ME).await.map_err(err)?;
                let result = self.compare_read(fh, file, start, len).await;
                let flushed = self.fs.flush(fh, ME.process).await;
                self.fs.release(fh).await;
                result?;
                flushed.map_err(err)?;
                format!("second handle read {start}+{len}")
            }
            Op::SecondTrunc => {
                let h = self.handle().await?;
                if self.model.named != Some(h.file) {
                    return Ok("second handle with O_TRUNC (file removed: skipped)".into());
                }
                let put_faults = self.store.pending_faults(StoreOp::Put);
                self.model.change(h.file);
                let expected_conflict = self.model.conflict();
                let fh = self
                    .fs
                    .open(h.ino, libc::O_WRONLY | libc::O_TRUNC, ME)
                    .await
                    .map_err(err)?;
                self.model.files[h.file].clear();
                let flushed = self.fs.flush(fh, ME.process).await;
                self.fs.release(fh).await;
                if self.model.saved.is_none() {
                    // A new file, now empty, goes up at its last release: the
                    // first handle's.
                    flushed.map_err(|e| format!("close of a second handle: {e:?}"))?;
                } else {
                    self.closed(h.file, flushed, put_faults, expected_conflict)?;
                }
                "second handle opened with O_TRUNC, closed".into()
            }
            Op::DropCaches => {
                // The kernel forgets every inode without an open file.
                let open = self.handle.map(|h| h.ino);
                for (ino, n) in std::mem::take(&mut self.lookups) {
                    if Some(ino) == open {
                        self.lookups.insert(ino, n);
                    } else {
                        self.fs.forget(ino, n);
                    }
                }
                "drop caches".into()
            }
            Op::Remount => {
                self.close().await?;
                self.remount().await?;
                "remount".into()
            }
            Op::RenameOver { len, seed } => {
                let len = len.resolve(0);
                let data = pattern(*seed, 0, len);
                let put_faults = self.store.pending_faults(StoreOp::Put);
                let (attr, fh) = self
                    .fs
                    .create(
                        ROOT_INO,
                        tmp_name(),
                        libc::S_IFREG | 0o644,
                        libc::O_RDWR | libc::O_CREAT | libc::O_TRUNC,
                        ME,
                    )
                    .await
                    .map_err(err)?;
                *self.lookups.entry(attr.ino).or_default() += 1;
                let tmp = Handle {
                    fh,
                    ino: attr.ino,
                    file: 0,
                    append: false,
                };
                let written = self.write_at(tmp, 0, &data).await;
                let flushed = self.fs.flush(fh, ME.process).await;
                self.fs.release(fh).await;
                written.map_err(err)?;
                if let Err(e) = flushed {
                    // A program whose temporary file failed to save does not
                    // rename it, and removes it.
                    self.allow_failure(e, put_faults)?;
                    self.fs.unlink(ROOT_INO, tmp_name()).await.map_err(err)?;
                    return Ok(format!("new file of {len} bytes: its close failed"));
                }
                if let Err(e) = self
                    .fs
                    .rename(ROOT_INO, tmp_name(), ROOT_INO, name(), 0)
                    .await
                {
                    // Replacing an open file first reads all of it (its handles
                    // keep working): a GET fault fails the rename, and the program
                    // removes its temporary file.
                    self.allow_failure(e, put_faults)
                        .map_err(|why| format!("rename: {why}"))?;
                    self.fs.unlink(ROOT_INO, tmp_name()).await.map_err(err)?;
                    return Ok(format!("new file of {len} bytes: its rename failed"));
                }
                let file = self.model.new_file(data.clone());
                self.model.named = Some(file);
                self.model.saved = Some(data);
                // Whatever the old file had not uploaded went with it.
                self.model.settled();
                format!("rename a new file of {len} bytes over it")
            }
            Op::ExternalPut { len, seed } => {
                if self.handle.is_some() {
                    return Ok("external put (skipped: the file is open)".into());
                }
                let len = len.resolve(0);
                let data = pattern(seed.wrapping_add(1), 0, len);
                self.store.insert("f", data.clone());
                if !self.model.unsaved {
                    let file = self.model.new_file(data.clone());
                    self.model.named = Some(file);
                }
                // Else the file shows its changes until their upload meets
                // this version.
                self.model.saved = Some(data);
                format!("another client puts {len} bytes")
            }
            Op::ExternalDelete => {
                if self.handle.is_some() {
                    return Ok("external delete (skipped: the file is open)".into());
                }
                self.store.remove("f");
                if !self.model.unsaved {
                    self.model.named = None;
                }
                self.model.saved = None;
                "another client deletes it".into()
            }
            Op::Crash => {
                self.crash().await?;
                "crash".into()
            }
            Op::Inject(fault) => {
                match fault {
                    // Once: faults queued together would fail one part again and again.
                    Fault::PartOnce if self.store.pending_faults(StoreOp::UploadPart) == 0 => {
                        self.store.fail_next(
                            StoreOp::UploadPart,
                            StoreError::Unreachable("connection reset".into()),
                        );
                    }
                    Fault::GetMidBody if self.store.pending_faults(StoreOp::Get) == 0 => {
                        self.armed.get = true;
                        self.store.fail_next(
                            StoreOp::Get,
                            StoreError::Unreachable(
                                "connection reset after part of the body".into(),
                            ),
                        );
                    }
                    Fault::PutDown if !self.armed.put => {
                        self.armed.put = true;
                        self.store
                            .fail_next(StoreOp::Put, StoreError::Unreachable("server down".into()));
                    }
                    Fault::PartOnce | Fault::GetMidBody | Fault::PutDown => {}
                }
                format!("inject {fault:?}")
            }
            Op::SlowRead { at, len, seed } => {
                let h = self.handle().await?;
                let (start, len) = span(*at, *len);
                self.slow_read(h, start, len, *seed).await?;
                format!("slow read {start}+{len} with a write there")
            }
            Op::Fill { .. } | Op::ReadWhileChanging { .. } | Op::ListDir | Op::RemoveDir => {
                "(run through a mount only)".into()
            }
        })
    }

    /// A read whose GET (if it makes one) is held while a write covers the same
    /// bytes; the read returns the bytes from before or after the write.
    async fn slow_read(&mut self, h: Handle, start: u64, len: u64, seed: u8) -> Result<(), String> {
        let before = self.expected(h.file, start, len);
        let data = pattern(seed, start, len.max(1));
        let gate = self.store.hold(StoreOp::Get);
        let fs = self.fs.clone();
        let read = tokio::spawn(async move { fs.read(h.fh, start, len.min(MIB) as u32).await });
        tokio::pin!(read);
        let held = tokio::select! {
            r = &mut read => Some(r),
            () = gate.reached(1) => None,
        };
        self.model.change(h.file);
        let fs = self.fs.clone();
        let write_data = data.clone();
        let write = tokio::spawn(async move { fs.write(h.fh, start, write_data).await });
        tokio::pin!(write);
        let written = match held {
            // The read needed no GET: it is done, and the write comes after it.
            Some(_) => Some((&mut write).await),
            // The write runs while the GET is held, unless the read holds the file.
            None => tokio::time::timeout(SLOW_GET_HOLD, &mut write).await.ok(),
        };
        gate.open();
        let read = match held {
            Some(r) => r,
            None => (&mut read).await,
        };
        let written = match written {
            Some(w) => w,
            None => (&mut write).await,
        };
        let n = written
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("write: {e:?}"))?;
        if n as usize != data.len() {
            return Err(format!("write: {n} bytes of {}", data.len()));
        }
        self.model_write(h.file, start, &data);
        let after = self.expected(h.file, start, len.min(MIB));
        match read.map_err(|e| e.to_string())? {
            Ok(got) => {
                let before = &before[..before.len().min(MIB as usize)];
                if got[..] != before[..] && got[..] != after[..] {
                    return Err(format!(
                        "slow read: neither before nor after the write ({})",
                        first_difference(&got, before)
                    ));
                }
            }
            Err(e) => self.read_failure(e, h.file)?,
        }
        Ok(())
    }

    /// Unmount (a last upload of what is pending) and mount again with the
    /// same cache directory.
    async fn remount(&mut self) -> Result<(), String> {
        self.fs.shutdown().await;
        self.mount_again().await
    }

    /// The daemon dies between two operations. A file open with changes its
    /// writer had not finished is put aside; finished ones are uploaded by the
    /// next mount.
    async fn crash(&mut self) -> Result<(), String> {
        if let Some(h) = self.handle.take()
            && self.model.named == Some(h.file)
            && self.model.writing
        {
            self.model.aside += 1;
            self.model.named = self.model.saved.clone().map(|d| self.model.new_file(d));
            self.model.settled();
        }
        self.fs.halt();
        // A dead process writes nothing more.
        self.fs.settle().await;
        self.mount_again().await
    }

    /// A new mount over the same cache directory and bucket; what the journal
    /// holds is uploaded (faults withdrawn, so that it is, now).
    async fn mount_again(&mut self) -> Result<(), String> {
        self.store.clear_faults();
        self.armed = Armed::default();
        self.lookups.clear();
        self.fs =
            Fs::new(self.store.clone(), self.config.clone(), None).map_err(|e| e.to_string())?;
        self.fs.resume().await.map_err(|e| format!("resume: {e}"))?;
        self.upload_pending().await
    }

    /// What is pending goes up now (or meets another writer's version): no
    /// fault is armed, so it must.
    async fn upload_pending(&mut self) -> Result<(), String> {
        self.fs.retry_pending().await;
        let left = self.fs.pending().await;
        if left > 0 {
            return Err(format!(
                "{left} files still pending after a retry without faults"
            ));
        }
        if self.model.pending {
            self.model.uploaded();
        }
        Ok(())
    }

    /// After the last operation: closed, read back whole, unmounted (what is
    /// pending goes up), and the bucket and the cache directory checked.
    async fn finish(&mut self) -> Result<(), String> {
        self.close().await?;
        // What is checked from here on must not meet a fault left armed.
        self.store.clear_faults();
        self.armed = Armed::default();
        self.upload_pending().await?;
        match (self.lookup(name()).await, self.model.named) {
            (Ok((ino, size)), Some(file)) => {
                let fh = self
                    .fs
                    .open(ino, libc::O_RDONLY, ME)
                    .await
                    .map_err(|e| format!("final open: {e:?}"))?;
                let got = self.read_at(fh, 0, size.max(1) + 1).await;
                self.fs.release(fh).await;
                let got = got.map_err(|e| format!("final read: {e:?}"))?;
                same("final read", &got, &self.model.files[file])?;
            }
            (Err(Errno::ENOENT), None) => {}
            (got, want) => {
                return Err(format!(
                    "final lookup: {got:?}, model has a file: {}",
                    want.is_some()
                ));
            }
        }
        self.fs.shutdown().await;
        let object = self.store.object("f").map(|o| o.body.to_vec());
        match (&object, &self.model.saved) {
            (Some(got), Some(want)) => same("the object in the bucket", got, want)?,
            (None, None) => {}
            (got, want) => {
                return Err(format!(
                    "the bucket has {:?} bytes, the model {:?}",
                    got.as_ref().map(Vec::len),
                    want.as_ref().map(Vec::len)
                ));
            }
        }
        self.check_kept_aside()?;
        if self.store.open_uploads() > 0 {
            return Err(format!(
                "{} multipart uploads left open",
                self.store.open_uploads()
            ));
        }
        let staged = files_in(&self.dir.path().join("staging")).len();
        if staged > 0 {
            return Err(format!("{staged} staging files left behind"));
        }
        let records = files_in(&self.dir.path().join("journal")).len();
        if records > 0 {
            return Err(format!("{records} journal records left behind"));
        }
        Ok(())
    }

    /// Every version of ours kept beside another writer's is in the bucket as
    /// a conflict copy, or (when it could not be rebuilt) in `recovered/`, as
    /// is every file whose writer never finished; nothing else is in either.
    fn check_kept_aside(&self) -> Result<(), String> {
        let mut expected = self.model.copies.clone();
        let mut copies = 0;
        for key in self.store.keys() {
            if key == "f" {
                continue;
            }
            if !key.starts_with("f.conflict-") {
                return Err(format!("the bucket holds {key}"));
            }
            let body = self.store.object(&key).map(|o| o.body.to_vec());
            match expected.iter().position(|e| Some(e) == body.as_ref()) {
                Some(i) => {
                    expected.remove(i);
                    copies += 1;
                }
                None => return Err(format!("{key} holds no version of ours")),
            }
        }
        let aside = files_in(&self.dir.path().join("recovered"))
            .iter()
            .filter(|p| p.extension().is_none_or(|e| e != "json"))
            .count();
        let want = self.model.copies.len() + self.model.aside;
        if copies + aside != want {
            return Err(format!(
                "{copies} conflict copies and {aside} files put aside; the model has {} versions kept beside another writer's and {} writers that never finished",
                self.model.copies.len(),
                self.model.aside
            ));
        }
        Ok(())
    }
}

fn files_in(dir: &Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default()
}

fn same(what: &str, got: &[u8], want: &[u8]) -> Result<(), String> {
    if got == want {
        Ok(())
    } else {
        Err(format!("{what}: {}", first_difference(got, want)))
    }
}

fn first_difference(got: &[u8], want: &[u8]) -> String {
    match got.iter().zip(want).position(|(a, b)| a != b) {
        Some(i) => format!(
            "differs first at byte {i} (got {} bytes, want {})",
            got.len(),
            want.len()
        ),
        None => format!("got {} bytes, want {}", got.len(), want.len()),
    }
}

fn check(rt: &tokio::runtime::Runtime, case: &Case) -> Result<(), String> {
    // S3MOUNT_LOG=debug shows what the core does (for a replay).
    if std::env::var_os("S3MOUNT_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_env("S3MOUNT_LOG"))
            .with_test_writer()
            .try_init();
    }
    rt.block_on(async {
        let mut core = Core::new(case);
        let mut done = Vec::new();
        let result = async {
            core.create(case)
                .await
                .map_err(|e| format!("create: {e}"))?;
            for (i, op) in case.ops.iter().enumerate() {
                match core.apply(op).await {
                    Ok(what) => done.push(what),
                    Err(e) => return Err(format!("operation {i} ({op}): {e}")),
                }
            }
            core.finish()
                .await
                .map_err(|e| format!("after the last operation: {e}"))
        }
        .await;
        result.map_err(|e| format!("{e}\nresolved: {}", done.join("; ")))
    })
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

fn run_class(class: SizeClass, seeds: std::ops::Range<u64>) {
    let rt = runtime();
    let tally = run_seeds(
        &format!("core-{class:?}").to_lowercase(),
        case(class, ALPHABET, MAX_OPS),
        Seeds::from_env(seeds),
        SHRINK_TIME,
        REPLAY,
        |case| check(&rt, case),
    );
    assert_clean(&tally);
}

#[test]
fn small_files_match_the_model() {
    run_class(SizeClass::Small, 0..1000);
}

#[test]
fn files_of_several_blocks_match_the_model() {
    run_class(SizeClass::Blocks, 10_000..10_500);
}

#[test]
fn multipart_files_match_the_model() {
    run_class(SizeClass::Large, 20_000..20_200);
}

#[test]
fn objects_written_by_another_client_match_the_model() {
    run_class(SizeClass::External, 30_000..30_500);
}

#[test]
fn saved_cases_pass() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/model-cases/core");
    let rt = runtime();
    let cases = saved_cases(&dir);
    assert!(!cases.is_empty(), "no saved cases in {}", dir.display());
    for (file, case) in cases {
        if let Err(e) = check(&rt, &case) {
            panic!("{} fails: {e}\n{case}", file.display());
        }
    }
}
