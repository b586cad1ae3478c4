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

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
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
        let mounted = f(&mut self.mounted);
        if model == mounted {
            return Ok(());
        }
        Err(format!(
            "{what}: the mount gave {}, the model {}",
            describe(&mounted),
            describe(&model)
        ))
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
        let keys: Vec<String> = self
            .bucket
            .keys()
            .into_iter()
            .filter(|k| k.starts_with(&prefix))
            .collect();
        // The directory's marker (put before the mount) and the file.
        if keys != [prefix.clone(), self.key()] {
            return Err(format!("the bucket holds {keys:?} under {prefix}"));
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

fn describe(r: &Res) -> String {
    match r {
        Ok(Outcome::Data(d)) => format!("{} bytes ({:02x?}…)", d.len(), &d[..d.len().min(8)]),
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

/// Run `case` from a fresh mount; the error says which operation disagreed, with
/// the operations before it resolved to offsets and lengths.
fn check(bucket: &TestBucket, via: &S3Env, case: &Case) -> Result<(), String> {
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
            .map_err(|e| format!("after the last operation: {e}"))
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

fn run_class(class: SizeClass, seeds: impl IntoIterator<Item = u64>, max_ops: usize) {
    let bucket = TestBucket::new("model");
    let tally = run_seeds(
        &format!("mount-{class:?}").to_lowercase(),
        case(class, ALPHABET, max_ops),
        Seeds::from_env(seeds),
        SHRINK_TIME,
        REPLAY,
        |case| check(&bucket, &bucket.env, case),
    );
    assert_clean(&tally);
}

/// The same through the fault proxy: 8% of the requests fail, every kind
/// mixed (a stalled answer is held for 5 s, past the mount's 2 s timeout). No
/// operation may return an error the model does not, no read may differ, and
/// the bucket must hold the model's bytes.
fn run_class_through_faults(class: SizeClass, seeds: std::ops::RangeInclusive<u64>) {
    let bucket = TestBucket::new("faults");
    let proxy = FaultProxy::new(&bucket.env, *seeds.start(), Rates::mixed(0.08), 5000);
    let tally = run_seeds(
        &format!("faults-{class:?}").to_lowercase(),
        case(class, ALPHABET, FAULT_OPS),
        Seeds::from_env(seeds),
        SHRINK_TIME,
        REPLAY,
        |case| check(&bucket, &proxy.env, case),
    );
    assert_clean(&tally);
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
    run_class(SizeClass::Small, 1..=40, MAX_OPS);
}

#[test]
fn files_of_several_blocks_match_the_model() {
    run_class(SizeClass::Blocks, 101..=130, MAX_OPS);
}

#[test]
fn multipart_files_match_the_model() {
    run_class(SizeClass::Large, 201..=220, MAX_OPS);
}

#[test]
fn objects_written_by_another_client_match_the_model() {
    run_class(SizeClass::External, 301..=330, MAX_OPS);
}

#[test]
fn small_files_match_the_model_through_faults() {
    run_class_through_faults(SizeClass::Small, 1001..=1004);
}

#[test]
fn multipart_files_match_the_model_through_faults() {
    run_class_through_faults(SizeClass::Large, 1201..=1204);
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
