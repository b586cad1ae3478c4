//! The operation alphabet of `model_mount.rs`, run on the filesystem core over the
//! in-memory store (no FUSE, no server: thousands of sequences a minute), against
//! an in-memory model of the file. It adds what a mount cannot do cheaply: other
//! S3 clients replacing or deleting the object between operations, injected
//! faults (a part upload that fails once, a GET that fails part way, a PutObject
//! that fails), and a slow GET that finishes after a later write.
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
use s3mount::fs::{Caller, Errno, Fs, FsConfig, SetAttr};
use s3mount::store::StoreError;
use s3mount::store::memory::{MemoryStore, Op as StoreOp};

/// Operations of one case, at most.
const MAX_OPS: usize = 100;
const SHRINK_TIME: Duration = Duration::from_secs(5 * 60);
const ALPHABET: Alphabet = Alphabet {
    kernel: false,
    store: true,
};
const REPLAY: &str = "scripts/soak.sh --replay";
const ME: Caller = Caller {
    process: 100,
    uid: 1000,
    gid: 1000,
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
}

impl Model {
    fn named(&self) -> Option<&Vec<u8>> {
        self.named.map(|i| &self.files[i])
    }

    fn new_file(&mut self, data: Vec<u8>) -> usize {
        self.files.push(data);
        self.files.len() - 1
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
    /// An operation failed as an injected fault allowed: data may be kept aside.
    faulted: bool,
}

fn err(e: Errno) -> String {
    format!("{e:?}")
}

impl Core {
    fn new(case: &Case) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(MemoryStore::new());
        // Other writers are seen at the next open only with a TTL of zero; without
        // them, everything the mount records is trusted.
        let external = case
            .ops
            .iter()
            .any(|op| matches!(op, Op::ExternalPut { .. } | Op::ExternalDelete));
        let config = FsConfig {
            prefix: String::new(),
            uid: 1000,
            gid: 1000,
            file_mode: 0o644,
            dir_mode: 0o755,
            metadata_ttl: if external {
                Duration::ZERO
            } else {
                Duration::from_secs(3600)
            },
            head_listed: false,
            read_only: false,
            staging_dir: dir.path().join("staging"),
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
        };
        let fs = Arc::new(Fs::new(store.clone(), config.clone()).expect("fs"));
        Self {
            store,
            fs,
            config,
            dir,
            lookups: HashMap::new(),
            handle: None,
            model: Model::default(),
            armed: Armed::default(),
            faulted: false,
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
                (attr.ino, fh)
            }
            Err(e) => return Err(format!("lookup: {e:?}")),
        };
        let file = self.model.named.ok_or("the model has no file")?;
        if trunc {
            self.model.files[file].clear();
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

    /// close(): flush then release. A failure is allowed only for a fault
    /// injected into the upload; then the file shows what S3 has.
    async fn close(&mut self) -> Result<(), String> {
        let Some(h) = self.handle.take() else {
            return Ok(());
        };
        let put_faults = self.store.pending_faults(StoreOp::Put);
        // A new file still empty goes up at the release, which cannot report a
        // failure (a deliberate difference, docs/POSIX.md): it is then gone.
        let new_and_empty = self.model.named == Some(h.file)
            && self.model.saved.is_none()
            && self.model.files[h.file].is_empty();
        let flushed = self.fs.flush(h.fh, ME.process).await;
        self.fs.release(h.fh).await;
        match flushed {
            Ok(()) if self.store.pending_faults(StoreOp::Put) < put_faults => {
                if !new_and_empty {
                    return Err("a PutObject failed, but close() succeeded".into());
                }
                self.armed.put = self.store.pending_faults(StoreOp::Put) > 0;
                self.faulted = true;
                self.model.named = None;
                Ok(())
            }
            Ok(()) => {
                if self.model.named == Some(h.file) {
                    self.model.saved = Some(self.model.files[h.file].clone());
                }
                Ok(())
            }
            Err(e) => {
                self.allow_failure(e, put_faults)?;
                // What S3 has is what the file shows from now on.
                if self.model.named == Some(h.file) {
                    let saved = self.model.saved.clone();
                    match saved {
                        Some(data) => self.model.files[h.file] = data,
                        None => self.model.named = None,
                    }
                }
                Ok(())
            }
        }
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
        self.faulted = true;
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
            Err(e) => self.allow_failure(e, self.store.pending_faults(StoreOp::Put)),
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
                let changes = SetAttr {
                    size: Some(to),
                    ..SetAttr::default()
                };
                match self.fs.setattr(ino, changes).await {
                    Ok(_) => {
                        self.model.files[file].resize(to as usize, 0);
                        if !open {
                            // A closed file is uploaded at once.
                            self.model.saved = Some(self.model.files[file].clone());
                        }
                    }
                    // The cut was not made; the file shows what S3 has.
                    Err(e) if !open => {
                        self.allow_failure(e, put_faults)?;
                    }
                    Err(e) => return Err(format!("truncate: {e:?}")),
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
                self.fs.setattr(h.ino, changes).await.map_err(err)?;
                self.model.files[h.file].resize(to as usize, 0);
                format!("ftruncate {to}")
            }
            Op::Fsync => {
                let h = self.handle().await?;
                let put_faults = self.store.pending_faults(StoreOp::Put);
                match self.fs.fsync(h.fh).await {
                    Ok(()) => {
                        if self.model.named == Some(h.file) {
                            self.model.saved = Some(self.model.files[h.file].clone());
                        }
                    }
                    // The changes stay staged; the next close sends them.
                    Err(e) => self.allow_failure(e, put_faults)?,
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
                    // rename it.
                    self.allow_failure(e, put_faults)?;
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
                format!("rename a new file of {len} bytes over it")
            }
            Op::ExternalPut { len, seed } => {
                if !self.quiet() {
                    return Ok("external put (skipped: the file is open)".into());
                }
                let len = len.resolve(0);
                let data = pattern(seed.wrapping_add(1), 0, len);
                self.store.insert("f", data.clone());
                let file = self.model.new_file(data.clone());
                self.model.named = Some(file);
                self.model.saved = Some(data);
                format!("another client puts {len} bytes")
            }
            Op::ExternalDelete => {
                if !self.quiet() {
                    return Ok("external delete (skipped: the file is open)".into());
                }
                self.store.remove("f");
                self.model.named = None;
                self.model.saved = None;
                "another client deletes it".into()
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
        })
    }

    /// Nothing of the file is open or unsaved: another client may change it.
    fn quiet(&self) -> bool {
        self.handle.is_none() && self.model.named().cloned() == self.model.saved
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
            Err(e) => self.allow_failure(e, self.store.pending_faults(StoreOp::Put))?,
        }
        Ok(())
    }

    async fn remount(&mut self) -> Result<(), String> {
        self.fs.shutdown().await;
        self.lookups.clear();
        self.fs =
            Arc::new(Fs::new(self.store.clone(), self.config.clone()).map_err(|e| e.to_string())?);
        Ok(())
    }

    /// After the last operation: closed, read back whole, the bucket checked,
    /// and no staging file left unless a fault made one stay.
    async fn finish(&mut self) -> Result<(), String> {
        self.close().await?;
        // What is checked from here on must not meet a fault left armed.
        self.store.clear_faults();
        self.armed = Armed::default();
        match (self.lookup(name()).await, self.model.named) {
            (Ok((ino, size)), Some(file)) => {
                let fh = self.fs.open(ino, libc::O_RDONLY, ME).await.map_err(err)?;
                let got = self.read_at(fh, 0, size.max(1) + 1).await.map_err(err);
                self.fs.release(fh).await;
                same("final read", &got?, &self.model.files[file])?;
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
        let keys = self.store.keys();
        if keys.iter().any(|k| k != "f") {
            return Err(format!("the bucket holds {keys:?}"));
        }
        if self.store.open_uploads() > 0 {
            return Err(format!(
                "{} multipart uploads left open",
                self.store.open_uploads()
            ));
        }
        let staged = std::fs::read_dir(self.dir.path().join("staging"))
            .map(|d| d.count())
            .unwrap_or(0);
        if staged > 0 && !self.faulted {
            return Err(format!("{staged} staging files left behind"));
        }
        Ok(())
    }
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
