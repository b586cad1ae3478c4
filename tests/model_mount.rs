//! The data path through a real mount, against a model: random sequences of
//! operations (`common/ops.rs`) applied both to a file on the mount and to a file
//! on local disk, with the result of every call, every read and every size
//! compared, the final content read back through the mount, and the object read
//! back with another S3 client after the unmount.
//!
//! Each size class runs a fixed list of seeds. A failure is shrunk to the
//! shortest sequence that still fails, printed with its seed and saved; it
//! replays with `scripts/soak.sh --replay FILE`. `scripts/soak.sh SECONDS` runs
//! fresh seeds for that long. Cases that once failed are kept in
//! `tests/model-cases/mount/` and replayed by `saved_cases_pass`.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::time::Duration;

use common::faults::{FaultProxy, Rates};
use common::model::{Seeds, assert_clean, run_seeds, saved_cases};
use common::ops::{Alphabet, Case, Op, SizeClass, case, pattern};
use common::{Mount, S3Env, TestBucket, close};

/// Operations of one case, at most.
const MAX_OPS: usize = 400;
/// The same through the fault proxy, where every fault costs time.
const FAULT_OPS: usize = 150;
/// How long a failure is shrunk for, at most.
const SHRINK_TIME: Duration = Duration::from_secs(20 * 60);
const ALPHABET: Alphabet = Alphabet {
    kernel: true,
    store: false,
    dirs: false,
};
/// The same with a directory beside the file, read while it changes.
const WITH_DIRS: Alphabet = Alphabet {
    dirs: true,
    ..ALPHABET
};
const REPLAY: &str = "scripts/soak.sh --replay";

/// What one call returned: compared between the mount and the model.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Done,
    Data(Vec<u8>),
    /// The size by path, and by the open handle.
    Sizes(u64, Option<u64>),
    /// A mapping was not made: the file is shorter than the range (touching the
    /// mapping past the end would kill the test with SIGBUS).
    ShorterThanMapping(u64),
    /// A directory's names, sorted.
    Names(Vec<String>),
    /// A directory read while it changed: how many entries stayed, and what the
    /// read got wrong about them (nothing, on a correct filesystem).
    Listing {
        staying: usize,
        problems: Vec<String>,
    },
}

type Res = Result<Outcome, i32>;

fn errno(e: io::Error) -> i32 {
    e.raw_os_error().unwrap_or(-1)
}

/// One side of the comparison: the mount, or the model's local directory.
struct Side {
    dir: PathBuf,
    file: Option<File>,
}

impl Side {
    fn new(dir: PathBuf) -> Self {
        Self { dir, file: None }
    }

    fn path(&self) -> PathBuf {
        self.dir.join("f")
    }

    /// The directory beside the file.
    fn entries(&self) -> PathBuf {
        self.dir.join("d")
    }

    fn fill(&self, make_dir: bool, names: &[String]) -> Res {
        let d = self.entries();
        if make_dir {
            std::fs::create_dir(&d).map_err(errno)?;
        }
        for name in names {
            close(File::create(d.join(name)).map_err(errno)?).map_err(errno)?;
        }
        Ok(Outcome::Done)
    }

    /// Read the directory; after `first` entries remove `removed` and create
    /// `created`, then read on to the end.
    fn read_while_changing(
        &self,
        before: &BTreeSet<String>,
        first: usize,
        removed: &[String],
        created: &[String],
    ) -> Res {
        let d = self.entries();
        let mut reader = std::fs::read_dir(&d).map_err(errno)?;
        let mut next = || match reader.next() {
            None => Ok(None),
            Some(Ok(e)) => Ok(Some(e.file_name().to_string_lossy().into_owned())),
            Some(Err(e)) => Err(errno(e)),
        };
        let mut seen = Vec::new();
        while seen.len() < first {
            match next()? {
                Some(name) => seen.push(name),
                None => break,
            }
        }
        for name in removed {
            std::fs::remove_file(d.join(name)).map_err(errno)?;
        }
        self.fill(false, created)?;
        while let Some(name) = next()? {
            seen.push(name);
        }
        Ok(listing_verdict(before, removed, created, &seen))
    }

    fn list_dir(&self) -> Res {
        let mut names = std::fs::read_dir(self.entries())
            .map_err(errno)?
            .map(|e| {
                e.map(|e| e.file_name().to_string_lossy().into_owned())
                    .map_err(errno)
            })
            .collect::<Result<Vec<_>, _>>()?;
        names.sort();
        Ok(Outcome::Names(names))
    }

    fn remove_dir(&self) -> Res {
        std::fs::remove_dir_all(self.entries()).map_err(errno)?;
        Ok(Outcome::Done)
    }

    fn close(&mut self) -> Res {
        match self.file.take() {
            Some(f) => close(f).map(|()| Outcome::Done).map_err(errno),
            None => Ok(Outcome::Done),
        }
    }

    fn open(&mut self, trunc: bool, append: bool) -> Res {
        self.close()?;
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(trunc)
            .append(append)
            .open(self.path())
            .map_err(errno)?;
        self.file = Some(f);
        Ok(Outcome::Done)
    }

    fn handle(&mut self) -> Result<&File, i32> {
        if self.file.is_none() {
            self.open(false, false)?;
        }
        self.file.as_ref().ok_or(-1)
    }

    fn write(&mut self, at: u64, data: &[u8]) -> Res {
        self.handle()?.write_all_at(data, at).map_err(errno)?;
        Ok(Outcome::Done)
    }

    fn read(&mut self, at: u64, len: u64) -> Res {
        read_at(self.handle()?, at, len)
    }

    fn sizes(&mut self) -> Res {
        let by_path = std::fs::metadata(self.path()).map_err(errno)?.len();
        let by_handle = match &self.file {
            Some(f) => Some(f.metadata().map_err(errno)?.len()),
            None => None,
        };
        Ok(Outcome::Sizes(by_path, by_handle))
    }

    /// The size operations are resolved against: the open handle's, else the
    /// path's (0 if there is no file).
    fn size(&self) -> u64 {
        match &self.file {
            Some(f) => f.metadata().map(|m| m.len()).unwrap_or(0),
            None => std::fs::metadata(self.path()).map(|m| m.len()).unwrap_or(0),
        }
    }

    fn second_read(&self, at: u64, len: u64) -> Res {
        let f = File::open(self.path()).map_err(errno)?;
        let data = read_at(&f, at, len)?;
        close(f).map_err(errno)?;
        Ok(data)
    }

    /// The open handle, if the file is at least `end` bytes long.
    fn handle_covering(&mut self, end: u64) -> Result<Result<&File, Outcome>, i32> {
        let f = self.handle()?;
        let size = f.metadata().map_err(errno)?.len();
        Ok(if size >= end {
            Ok(f)
        } else {
            Err(Outcome::ShorterThanMapping(size))
        })
    }

    fn mmap_read(&mut self, at: u64, len: u64) -> Res {
        let f = match self.handle_covering(at + len)? {
            Ok(f) => f,
            Err(short) => return Ok(short),
        };
        let start = at - at % PAGE;
        // SAFETY: the range is inside the file, the mapping is read at once and
        // dropped; no other process truncates the file meanwhile.
        let map = unsafe {
            memmap2::MmapOptions::new()
                .offset(start)
                .len((at + len - start) as usize)
                .map(f)
        }
        .map_err(errno)?;
        Ok(Outcome::Data(map[(at - start) as usize..].to_vec()))
    }

    fn mmap_write(&mut self, at: u64, data: &[u8]) -> Res {
        let f = match self.handle_covering(at + data.len() as u64)? {
            Ok(f) => f,
            Err(short) => return Ok(short),
        };
        let start = at - at % PAGE;
        let len = at + data.len() as u64 - start;
        // SAFETY: as above; the mapping is written, synced and dropped at once.
        let mut map = unsafe {
            memmap2::MmapOptions::new()
                .offset(start)
                .len(len as usize)
                .map_mut(f)
        }
        .map_err(errno)?;
        map[(at - start) as usize..].copy_from_slice(data);
        map.flush().map_err(errno)?;
        Ok(Outcome::Done)
    }

    fn rename_over(&self, data: &[u8]) -> Res {
        let tmp = self.dir.join("f.new");
        let f = File::create(&tmp).map_err(errno)?;
        f.write_all_at(data, 0).map_err(errno)?;
        close(f).map_err(errno)?;
        std::fs::rename(&tmp, self.path()).map_err(errno)?;
        Ok(Outcome::Done)
    }
}

const PAGE: u64 = 4096;

/// What a read of a directory that changed while it was read got wrong: an
/// entry twice, an entry that stayed missing, or one that was never there.
fn listing_verdict(
    before: &BTreeSet<String>,
    removed: &[String],
    created: &[String],
    seen: &[String],
) -> Outcome {
    let removed: BTreeSet<&str> = removed.iter().map(String::as_str).collect();
    let created: BTreeSet<&str> = created.iter().map(String::as_str).collect();
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for name in seen {
        *counts.entry(name).or_default() += 1;
    }
    let mut problems = Vec::new();
    for (name, n) in &counts {
        if *n > 1 {
            problems.push(format!("{name} came {n} times"));
        }
        if !before.contains(*name) && !created.contains(name) {
            problems.push(format!("{name} came, though it was never there"));
        }
    }
    let staying: Vec<&str> = before
        .iter()
        .map(String::as_str)
        .filter(|n| !removed.contains(n))
        .collect();
    for name in &staying {
        if !counts.contains_key(name) {
            problems.push(format!("{name} stayed but did not come"));
        }
    }
    if problems.len() > 5 {
        let more = problems.len() - 5;
        problems.truncate(5);
        problems.push(format!("and {more} more"));
    }
    Outcome::Listing {
        staying: staying.len(),
        problems,
    }
}

/// The directory beside the file, as the operations left it (the same on both
/// sides while they agree).
#[derive(Default)]
struct Entries {
    exists: bool,
    names: BTreeSet<String>,
    made: u32,
    /// The most entries a read while changing met.
    largest_read: usize,
}

impl Entries {
    /// `n` names never used before in this case, of varied lengths (so readdir
    /// buffers hold varied numbers of them).
    fn new_names(&mut self, n: usize) -> Vec<String> {
        (0..n)
            .map(|_| {
                self.made += 1;
                let pad = "x".repeat(self.made as usize % 40);
                format!("entry-{:05}-{pad}", self.made)
            })
            .collect()
    }
}

fn read_at(f: &File, at: u64, len: u64) -> Res {
    let mut buf = vec![0u8; len as usize];
    let mut filled = 0;
    while filled < buf.len() {
        match f.read_at(&mut buf[filled..], at + filled as u64) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(errno(e)),
        }
    }
    buf.truncate(filled);
    Ok(Outcome::Data(buf))
}

fn drop_caches() -> Res {
    std::fs::write("/proc/sys/vm/drop_caches", "3").map_err(errno)?;
    Ok(Outcome::Done)
}

fn truncate(path: &Path, len: u64) -> Res {
    nix::unistd::truncate(path, len as i64).map_err(|e| e as i32)?;
    Ok(Outcome::Done)
}

static CASES: AtomicU32 = AtomicU32::new(0);

/// One run of a case: a mount of its own over a directory of the bucket.
struct Run<'a> {
    /// How the mount reaches the server (the bucket's own client goes direct).
    via: &'a S3Env,
    bucket: &'a TestBucket,
    /// The case's directory in the bucket.
    prefix: String,
    mount: Option<Mount>,
    cache: PathBuf,
    log: PathBuf,
    mounted: Side,
    model: Side,
    entries: Entries,
    _work: tempfile::TempDir,
}

impl<'a> Run<'a> {
    /// The case's directory exists in the bucket (with the object, for a file
    /// another client wrote) before the mount starts.
    fn start(bucket: &'a TestBucket, via: &'a S3Env, case: &Case) -> Result<Self, String> {
        let work = tempfile::tempdir().map_err(|e| e.to_string())?;
        let model_dir = work.path().join("model");
        std::fs::create_dir(&model_dir).map_err(|e| e.to_string())?;
        let prefix = format!("c{}", CASES.fetch_add(1, Ordering::Relaxed));
        bucket.put(&format!("{prefix}/"), "");
        let model = Side::new(model_dir);
        if case.class == SizeClass::External {
            let data = pattern(case.seed, 0, case.initial_size());
            bucket.put(&format!("{prefix}/f"), data.clone());
            std::fs::write(model.path(), &data).map_err(|e| e.to_string())?;
        }
        let (cache, log) = (work.path().join("cache"), work.path().join("s3mount.log"));
        let mount = mount(bucket, via, &cache, &log);
        let mounted = Side::new(mount.join(&prefix));
        let mut run = Self {
            via,
            bucket,
            prefix,
            mount: Some(mount),
            cache,
            log,
            mounted,
            model,
            entries: Entries::default(),
            _work: work,
        };
        if case.class != SizeClass::External {
            let data = pattern(case.seed, 0, case.initial_size());
            run.both("create", |side| {
                side.open(true, false)?;
                side.write(0, &data)?;
                side.close()
            })?;
        }
        Ok(run)
    }

    fn key(&self) -> String {
        format!("{}/f", self.prefix)
    }

    /// Both sides, the same call: the results must agree.
    fn both(&mut self, what: &str, f: impl Fn(&mut Side) -> Res) -> Result<(), String> {
        let model = f(&mut self.model);
        agree(what, &f(&mut self.mounted), &model)
    }

    /// Both sides, the same call, which must succeed on the model (the
    /// directory's bookkeeping follows it).
    fn both_succeed(&mut self, what: &str, f: impl Fn(&mut Side) -> Res) -> Result<(), String> {
        let model = f(&mut self.model);
        if model.is_err() {
            return Err(format!("{what}: the model gave {}", describe(&model)));
        }
        agree(what, &f(&mut self.mounted), &model)
    }

    fn apply(&mut self, op: &Op) -> Result<String, String> {
        let size = self.model.size();
        let span = |at: common::ops::At, len: common::ops::Len| {
            let start = at.resolve(size);
            (start, len.resolve(start))
        };
        // Mapped ranges stay inside the file: past its end a mapping faults.
        let mapped = |at: common::ops::At, len: common::ops::Len| {
            let start = at.resolve(size).min(size.saturating_sub(1));
            let len = len.resolve(start).min(size - start);
            (size > 0).then_some((start, len))
        };
        let what = match op {
            Op::Open { trunc, append } => {
                let (t, a) = (*trunc, *append);
                self.both("open", |s| s.open(t, a))?;
                format!("open trunc={t} append={a}")
            }
            Op::Close => {
                self.both("close", Side::close)?;
                "close".into()
            }
            Op::Write { at, len, seed } => {
                let (start, len) = span(*at, *len);
                let data = pattern(*seed, start, len);
                self.both("pwrite", |s| s.write(start, &data))?;
                format!("pwrite {start}+{len}")
            }
            Op::Read { at, len } => {
                let (start, len) = span(*at, *len);
                self.both("pread", |s| s.read(start, len))?;
                format!("pread {start}+{len}")
            }
            Op::Truncate { to } => {
                let to = to.resolve(size);
                self.both("truncate", |s| truncate(&s.path(), to))?;
                format!("truncate {to}")
            }
            Op::Ftruncate { to } => {
                let to = to.resolve(size);
                self.both("ftruncate", |s| {
                    s.handle()?.set_len(to).map_err(errno)?;
                    Ok(Outcome::Done)
                })?;
                format!("ftruncate {to}")
            }
            Op::Fsync => {
                self.both("fsync", |s| {
                    s.handle()?.sync_all().map_err(errno)?;
                    Ok(Outcome::Done)
                })?;
                "fsync".into()
            }
            Op::Stat => {
                self.both("stat", Side::sizes)?;
                "stat".into()
            }
            Op::SecondRead { at, len } => {
                let (start, len) = span(*at, *len);
                self.both("read through a second handle", |s| {
                    s.second_read(start, len)
                })?;
                format!("second handle pread {start}+{len}")
            }
            Op::SecondTrunc => {
                self.both("open with O_TRUNC through a second handle", |s| {
                    s.handle()?;
                    let f = OpenOptions::new()
                        .write(true)
                        .truncate(true)
                        .open(s.path())
                        .map_err(errno)?;
                    close(f).map(|()| Outcome::Done).map_err(errno)
                })?;
                "second handle opened with O_TRUNC, closed".into()
            }
            Op::MmapRead { at, len } => match mapped(*at, *len) {
                Some((start, len)) => {
                    self.both("mmap read", |s| s.mmap_read(start, len))?;
                    format!("mmap read {start}+{len}")
                }
                None => "mmap read (empty file: skipped)".into(),
            },
            Op::MmapWrite { at, len, seed } => match mapped(*at, *len) {
                Some((start, len)) => {
                    let data = pattern(*seed, start, len);
                    self.both("mmap write and msync", |s| s.mmap_write(start, &data))?;
                    format!("mmap write {start}+{len}")
                }
                None => "mmap write (empty file: skipped)".into(),
            },
            Op::DropCaches => {
                drop_caches().map_err(|e| format!("drop_caches: errno {e} (run as root)"))?;
                "drop caches".into()
            }
            Op::Remount => {
                self.both("close before the unmount", Side::close)?;
                self.remount()?;
                "remount".into()
            }
            Op::RenameOver { len, seed } => {
                let len = len.resolve(0);
                let data = pattern(*seed, 0, len);
                self.both("rename over", |s| s.rename_over(&data))?;
                format!("rename a new file of {len} bytes over it")
            }
            Op::Fill { n } => {
                let names = self.entries.new_names(usize::from(*n));
                let make_dir = !self.entries.exists;
                self.both_succeed("create files in d/", |s| s.fill(make_dir, &names))?;
                self.entries.exists = true;
                self.entries.names.extend(names);
                format!("create {n} files in d/")
            }
            Op::ReadWhileChanging {
                first,
                remove,
                create,
                pick,
            } => {
                if !self.entries.exists {
                    return Ok("read d/ while it changes (no d/: skipped)".into());
                }
                let before = self.entries.names.clone();
                let listed: Vec<&String> = before.iter().collect();
                let len = listed.len();
                let first = usize::from(*first) % (len + 1);
                let remove = usize::from(*remove).min(len);
                // Spread over the directory, so some were read and some not.
                let removed: Vec<String> = (0..remove)
                    .map(|i| listed[(usize::from(*pick) + i * len / remove) % len].clone())
                    .collect();
                let created = self.entries.new_names(usize::from(*create));
                self.both_succeed("read d/ while it changes", |s| {
                    s.read_while_changing(&before, first, &removed, &created)
                })?;
                self.entries.largest_read = self.entries.largest_read.max(len);
                for name in &removed {
                    self.entries.names.remove(name);
                }
                self.entries.names.extend(created);
                format!(
                    "read d/ of {len} entries, after {first} remove {remove} and create {create}"
                )
            }
            Op::ListDir => {
                self.both("list d/", |s| s.list_dir())?;
                "list d/".into()
            }
            Op::RemoveDir => {
                self.both("rm -rf d/", |s| s.remove_dir())?;
                self.entries = Entries {
                    made: self.entries.made,
                    largest_read: self.entries.largest_read,
                    ..Entries::default()
                };
                "rm -rf d/".into()
            }
            Op::ExternalPut { .. }
            | Op::ExternalDelete
            | Op::Crash
            | Op::Inject(_)
            | Op::SlowRead { .. } => "(not run through a mount)".into(),
        };
        Ok(what)
    }

    fn remount(&mut self) -> Result<(), String> {
        if let Some(m) = self.mount.take() {
            let status = m.unmount();
            if !status.success() {
                return Err(format!("s3mount exited with {status} at the unmount"));
            }
        }
        let mount = mount(self.bucket, self.via, &self.cache, &self.log);
        // A new mount has a mountpoint of its own.
        self.mounted = Side::new(mount.join(&self.prefix));
        self.mount = Some(mount);
        Ok(())
    }

    /// After the last operation: everything closed, the content read through
    /// the mount, the bucket read after the unmount.
    fn finish(&mut self) -> Result<(), String> {
        self.both("close", Side::close)?;
        self.both("final stat", Side::sizes)?;
        self.both("final read", |s| {
            let f = File::open(s.path()).map_err(errno)?;
            let len = f.metadata().map_err(errno)?.len();
            let data = read_at(&f, 0, len)?;
            close(f).map_err(errno)?;
            Ok(data)
        })?;
        if self.entries.exists {
            self.both("final listing of d/", |s| s.list_dir())?;
        }
        let status = self.mount.take().map(Mount::unmount);
        if let Some(status) = status.filter(|s| !s.success()) {
            return Err(format!("s3mount exited with {status} at the unmount"));
        }
        let want = std::fs::read(self.model.path()).map_err(|e| e.to_string())?;
        match self.bucket.get(&self.key()) {
            Some(got) if got == want => {}
            Some(got) => {
                return Err(format!(
                    "the object in the bucket differs from the model: {}",
                    first_difference(&got, &want)
                ));
            }
            None => return Err("the object is missing from the bucket".into()),
        }
        let prefix = format!("{}/", self.prefix);
        let marker = format!("{prefix}d/");
        let mut keys = self.bucket.keys_under(&prefix);
        // An empty d/ lives on as its marker; with files in it, the marker may stay.
        let has_marker = keys.contains(&marker);
        if self.entries.exists && self.entries.names.is_empty() && !has_marker {
            return Err(format!("the empty directory {marker} is missing"));
        }
        if !self.entries.exists && has_marker {
            return Err(format!("the removed directory {marker} is still there"));
        }
        keys.retain(|k| *k != marker);
        // The case's marker (put before the mount), d/'s files and the file.
        let mut want = vec![prefix.clone()];
        want.extend(self.entries.names.iter().map(|n| format!("{marker}{n}")));
        want.push(self.key());
        if keys != want {
            return Err(format!(
                "the bucket holds {} keys under {prefix}, the model {}: {}",
                keys.len(),
                want.len(),
                first_key_difference(&keys, &want)
            ));
        }
        Ok(())
    }
}

fn mount(bucket: &TestBucket, via: &S3Env, cache: &Path, log: &Path) -> Mount {
    let (cache, log) = (cache.display().to_string(), log.display().to_string());
    let args = ["--cache-dir", &cache, "--log-file", &log];
    if via.endpoint == bucket.env.endpoint {
        Mount::new(bucket, &args)
    } else {
        // Through the fault proxy: stalls are abandoned after 2 s.
        let mut args = args.to_vec();
        args.extend(["--request-timeout", "2s"]);
        Mount::source(via, &bucket.name, &args)
    }
}

/// The mount's result of a call against the model's.
fn agree(what: &str, mounted: &Res, model: &Res) -> Result<(), String> {
    if mounted == model {
        return Ok(());
    }
    Err(format!(
        "{what}: the mount gave {}, the model {}",
        describe(mounted),
        describe(model)
    ))
}

fn describe(r: &Res) -> String {
    match r {
        Ok(Outcome::Data(d)) => format!("{} bytes ({:02x?}…)", d.len(), &d[..d.len().min(8)]),
        Ok(Outcome::Names(names)) => format!(
            "{} names ({:?}…)",
            names.len(),
            &names[..names.len().min(3)]
        ),
        Ok(o) => format!("{o:?}"),
        Err(e) => format!("errno {e} ({})", io::Error::from_raw_os_error(*e)),
    }
}

/// Where two byte strings first differ, for the report.
fn first_difference(got: &[u8], want: &[u8]) -> String {
    match got.iter().zip(want).position(|(a, b)| a != b) {
        Some(i) => format!(
            "first at byte {i} (of {} and {} bytes)",
            got.len(),
            want.len()
        ),
        None => format!("{} bytes against {}", got.len(), want.len()),
    }
}

/// The first key one sorted list has and the other lacks, for the report.
fn first_key_difference(got: &[String], want: &[String]) -> String {
    let got_set: BTreeSet<&String> = got.iter().collect();
    let want_set: BTreeSet<&String> = want.iter().collect();
    match (
        got_set.difference(&want_set).next(),
        want_set.difference(&got_set).next(),
    ) {
        (Some(extra), _) => format!("{extra} should not be there"),
        (None, Some(missing)) => format!("{missing} is missing"),
        (None, None) => "a key is there twice".into(),
    }
}

/// Run `case` from a fresh mount; the error says which operation disagreed, with
/// the operations before it resolved to offsets and lengths. Gives the number of
/// entries of the largest directory read while it changed.
fn check(bucket: &TestBucket, via: &S3Env, case: &Case) -> Result<usize, String> {
    let mut run = Run::start(bucket, via, case)?;
    let mut done = Vec::new();
    let result = (|| {
        for (i, op) in case.ops.iter().enumerate() {
            match run.apply(op) {
                Ok(what) => done.push(what),
                Err(e) => return Err(format!("operation {i} ({op}): {e}")),
            }
        }
        run.finish()
            .map_err(|e| format!("after the last operation: {e}"))?;
        Ok(run.entries.largest_read)
    })();
    result.map_err(|e| {
        let log = std::fs::read_to_string(&run.log).unwrap_or_default();
        format!(
            "{e}\nresolved: {}\nmount log (end):\n{}",
            done.join("; "),
            last_lines(&log, 20)
        )
    })
}

fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn run_class(
    name: &str,
    class: SizeClass,
    alphabet: Alphabet,
    seeds: impl IntoIterator<Item = u64>,
    max_ops: usize,
) {
    let bucket = TestBucket::new("model");
    let largest = AtomicUsize::new(0);
    let tally = run_seeds(
        &format!("mount-{name}"),
        case(class, alphabet, max_ops),
        Seeds::from_env(seeds),
        SHRINK_TIME,
        REPLAY,
        |case| check(&bucket, &bucket.env, case).map(|n| keep_largest(&largest, n)),
    );
    assert_clean(&tally);
    assert_large_directory_read(alphabet, &largest);
}

fn keep_largest(largest: &AtomicUsize, n: usize) {
    largest.fetch_max(n, Ordering::Relaxed);
}

/// A run with directories read one larger than a listing page (1,000 keys),
/// or it did not test what it claims.
fn assert_large_directory_read(alphabet: Alphabet, largest: &AtomicUsize) {
    let largest = largest.load(Ordering::Relaxed);
    eprintln!("largest directory read while it changed: {largest} entries");
    if alphabet.dirs {
        assert!(
            largest > 1000,
            "no directory read while it changed had more than 1,000 entries (at most {largest})"
        );
    }
}

/// The same through the fault proxy: 8% of the requests fail, every kind
/// mixed (a stalled answer is held for 5 s, past the mount's 2 s timeout). No
/// operation may return an error the model does not, no read may differ, and
/// the bucket must hold the model's bytes.
fn run_class_through_faults(
    name: &str,
    class: SizeClass,
    alphabet: Alphabet,
    seeds: std::ops::RangeInclusive<u64>,
) {
    let bucket = TestBucket::new("faults");
    let proxy = FaultProxy::new(&bucket.env, *seeds.start(), Rates::mixed(0.08), 5000);
    let largest = AtomicUsize::new(0);
    let tally = run_seeds(
        &format!("faults-{name}"),
        case(class, alphabet, FAULT_OPS),
        Seeds::from_env(seeds),
        SHRINK_TIME,
        REPLAY,
        |case| check(&bucket, &proxy.env, case).map(|n| keep_largest(&largest, n)),
    );
    assert_clean(&tally);
    assert_large_directory_read(alphabet, &largest);
    let injected = proxy.injected();
    eprintln!("faults injected: {injected:?}");
    for kind in ["slowdown", "lost", "reset", "stall", "close"] {
        assert!(
            injected.get(kind).copied().unwrap_or(0) > 0,
            "no {kind} fault was injected: {injected:?}"
        );
    }
}

#[test]
fn small_files_match_the_model() {
    run_class("small", SizeClass::Small, ALPHABET, 1..=40, MAX_OPS);
}

#[test]
fn files_of_several_blocks_match_the_model() {
    run_class("blocks", SizeClass::Blocks, ALPHABET, 101..=130, MAX_OPS);
}

#[test]
fn multipart_files_match_the_model() {
    run_class("large", SizeClass::Large, ALPHABET, 201..=220, MAX_OPS);
}

#[test]
fn objects_written_by_another_client_match_the_model() {
    run_class(
        "external",
        SizeClass::External,
        ALPHABET,
        301..=330,
        MAX_OPS,
    );
}

/// A directory beside the file grows past a listing page (1,000 keys) and many
/// readdir buffers, and is read while files are removed from it and created in
/// it, and removed whole as `rm -rf` does.
#[test]
fn directories_read_while_changing_match_the_model() {
    run_class("dirs", SizeClass::Small, WITH_DIRS, 401..=408, MAX_OPS);
}

#[test]
fn small_files_match_the_model_through_faults() {
    run_class_through_faults("small", SizeClass::Small, ALPHABET, 1001..=1004);
}

#[test]
fn multipart_files_match_the_model_through_faults() {
    run_class_through_faults("large", SizeClass::Large, ALPHABET, 1201..=1204);
}

#[test]
fn directories_match_the_model_through_faults() {
    run_class_through_faults("dirs", SizeClass::Small, WITH_DIRS, 1401..=1403);
}

#[test]
fn saved_cases_pass() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/model-cases/mount");
    let bucket = TestBucket::new("saved");
    let cases = saved_cases(&dir);
    assert!(!cases.is_empty(), "no saved cases in {}", dir.display());
    for (file, case) in cases {
        if let Err(e) = check(&bucket, &bucket.env, &case) {
            panic!("{} fails: {e}\n{case}", file.display());
        }
    }
}
