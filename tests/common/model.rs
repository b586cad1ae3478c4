//! Running model-based tests: one case per seed (a fixed list in CI, fresh ones
//! for as long as `S3MOUNT_SOAK_SECONDS` says), each failure shrunk by proptest to
//! the shortest case that still fails, printed with its seed and written to a file
//! that can be replayed with one command.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use proptest::strategy::Strategy;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestError, TestRng, TestRunner};

use super::ops::Case;

/// Environment variable: run fresh seeds for this many seconds instead of the
/// fixed ones (scripts/soak.sh sets it).
pub const SOAK: &str = "S3MOUNT_SOAK_SECONDS";
/// Environment variable: replay only this saved case file.
pub const REPLAY: &str = "S3MOUNT_REPLAY";

/// What a run of cases did.
#[derive(Debug, Default)]
pub struct Tally {
    pub seeds: u64,
    pub ops: u64,
    pub failures: Vec<String>,
}

/// The seeds to run: `fixed` unless a soak run asks for fresh ones.
pub enum Seeds {
    Fixed(Vec<u64>),
    Until(Instant),
}

impl Seeds {
    pub fn from_env(fixed: impl IntoIterator<Item = u64>) -> Self {
        match std::env::var(SOAK).ok().and_then(|s| s.parse::<u64>().ok()) {
            Some(secs) => Seeds::Until(Instant::now() + Duration::from_secs(secs)),
            None => Seeds::Fixed(fixed.into_iter().collect()),
        }
    }

    fn next(&mut self, i: usize) -> Option<u64> {
        match self {
            Seeds::Fixed(list) => list.get(i).copied(),
            Seeds::Until(deadline) if Instant::now() < *deadline => Some(fresh_seed()),
            Seeds::Until(_) => None,
        }
    }

    pub fn is_soak(&self) -> bool {
        matches!(self, Seeds::Until(_))
    }
}

fn fresh_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    // RandomState is seeded from the OS for each instance.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(Instant::now().elapsed().as_nanos());
    h.finish()
}

/// A proptest runner whose cases come from `seed` alone.
fn runner(seed: u64, shrink_time: Duration) -> TestRunner {
    let mut bytes = [0u8; 32];
    for chunk in bytes.chunks_mut(8) {
        chunk.copy_from_slice(&seed.to_le_bytes());
    }
    let config = Config {
        cases: 1,
        failure_persistence: None,
        max_shrink_iters: 100_000,
        max_shrink_time: u32::try_from(shrink_time.as_millis()).unwrap_or(u32::MAX),
        ..Config::default()
    };
    TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &bytes))
}

/// Where failing cases are written.
pub fn failures_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("model-failures")
}

/// Run the case of each seed through `check`; a failure is shrunk (for at most
/// `shrink_time`), reported and saved as `NAME-SEED.json`, with `replay` (a
/// command taking the file) printed to run it again.
pub fn run_seeds<S>(
    name: &str,
    strategy: S,
    mut seeds: Seeds,
    shrink_time: Duration,
    replay: &str,
    check: impl Fn(&Case) -> Result<(), String>,
) -> Tally
where
    S: Strategy<Value = Case>,
{
    let mut tally = Tally::default();
    let mut i = 0;
    while let Some(seed) = seeds.next(i) {
        i += 1;
        tally.seeds += 1;
        let first = AtomicU64::new(0);
        let mut runner = runner(seed, shrink_time);
        let result = runner.run(&strategy, |case| {
            // Count the operations of the case as generated, not of its shrinks.
            let _ = first.compare_exchange(
                0,
                case.ops.len() as u64 + 1,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
            check(&case).map_err(TestCaseError::fail)
        });
        tally.ops += first.load(Ordering::Relaxed).saturating_sub(1);
        match result {
            Ok(()) => {}
            Err(TestError::Fail(reason, case)) => {
                let file = save(name, seed, &case);
                let report = format!(
                    "{name}: seed {seed} fails: {reason}\nshrunk to {case}\nsaved as {}\nreplay with: {replay} {}",
                    file.display(),
                    file.display()
                );
                eprintln!("{report}");
                tally.failures.push(report);
            }
            Err(TestError::Abort(reason)) => {
                tally
                    .failures
                    .push(format!("{name}: seed {seed} aborted: {reason}"));
            }
        }
    }
    eprintln!(
        "{name}: {} seeds, {} operations, {} failures",
        tally.seeds,
        tally.ops,
        tally.failures.len()
    );
    tally
}

/// Panic with every failure of `tally`.
pub fn assert_clean(tally: &Tally) {
    assert!(
        tally.failures.is_empty(),
        "{} failing seeds:\n{}",
        tally.failures.len(),
        tally.failures.join("\n\n")
    );
}

fn save(name: &str, seed: u64, case: &Case) -> PathBuf {
    let dir = failures_dir();
    let file = dir.join(format!("{name}-{seed}.json"));
    let written = std::fs::create_dir_all(&dir).and_then(|()| {
        let json = serde_json::to_string_pretty(case).map_err(std::io::Error::other)?;
        std::fs::write(&file, json)
    });
    if let Err(e) = written {
        eprintln!("cannot save the case as {}: {e}", file.display());
    }
    file
}

/// The saved cases to replay: the file `S3MOUNT_REPLAY` names, or else every
/// `.json` file in `dir` (the regression cases kept in the repository).
pub fn saved_cases(dir: &Path) -> Vec<(PathBuf, Case)> {
    let files: Vec<PathBuf> = match std::env::var_os(REPLAY) {
        Some(file) => vec![PathBuf::from(file)],
        None => {
            let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
                .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
                .map(|e| e.expect("read dir").path())
                .filter(|p| p.extension().is_some_and(|e| e == "json"))
                .collect();
            files.sort();
            files
        }
    };
    files
        .into_iter()
        .map(|f| {
            let text =
                std::fs::read_to_string(&f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
            let case =
                serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
            (f, case)
        })
        .collect()
}
