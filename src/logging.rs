//! The log: its level, which SIGUSR2 changes while the mount runs, and its file,
//! rotated by size so that a mount that runs for months does not fill the disk.

use std::fs::OpenOptions;
use std::path::Path;
use std::sync::Mutex;

use file_rotate::compression::Compression;
use file_rotate::suffix::AppendCount;
use file_rotate::{ContentLimit, FileRotate};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Registry, reload};

/// A log file is rotated once it is past this size (FILE becomes FILE.1, FILE.1
/// FILE.2, ...), and this many older files are kept: at most 60 MiB of logs.
const ROTATE_BYTES: usize = 10 << 20;
const KEEP_ROTATED: usize = 5;

/// The levels SIGUSR2 steps through, round and round.
const LEVELS: [&str; 5] = ["error", "warn", "info", "debug", "trace"];

/// Changes the level of the running mount's log.
pub struct LogControl {
    handle: reload::Handle<EnvFilter, Registry>,
    level: Mutex<String>,
}

/// s3mount's own messages at `level`; the libraries' warnings and errors only
/// (fuser warns at every unmount that its own second unmount found nothing).
fn filter(level: &str) -> Result<EnvFilter, String> {
    EnvFilter::try_new(format!("warn,fuser::session=error,s3mount={level}"))
        .map_err(|e| format!("log level {level}: {e}"))
}

/// Log to `file` (rotated), or to stderr; RUST_LOG, if set, is the first filter.
pub fn init(level: &str, file: Option<&Path>) -> Result<LogControl, String> {
    let first = match EnvFilter::try_from_default_env() {
        Ok(f) => f,
        Err(_) => filter(level)?,
    };
    let (filter_layer, handle) = reload::Layer::new(first);
    let registry = tracing_subscriber::registry().with(filter_layer);
    let fmt = tracing_subscriber::fmt::layer();
    let started = match file {
        Some(path) => {
            let writer = rotating_writer(path)?;
            registry
                .with(fmt.with_ansi(false).with_writer(Mutex::new(writer)))
                .try_init()
        }
        None => registry.with(fmt.with_writer(std::io::stderr)).try_init(),
    };
    started.map_err(|e| format!("cannot start the log: {e}"))?;
    Ok(LogControl {
        handle,
        level: Mutex::new(level.to_string()),
    })
}

/// Appends to `path`, moving it aside past [`ROTATE_BYTES`].
fn rotating_writer(path: &Path) -> Result<FileRotate<AppendCount>, String> {
    // Opened once here for a clear error: the writer itself would only stop writing.
    let mut options = OpenOptions::new();
    options.read(true).create(true).append(true);
    options
        .open(path)
        .map_err(|e| format!("log file {}: {e}", path.display()))?;
    Ok(FileRotate::new(
        path,
        AppendCount::new(KEEP_ROTATED),
        ContentLimit::BytesSurpassed(ROTATE_BYTES),
        Compression::None,
        Some(options),
    ))
}

impl LogControl {
    /// Log s3mount's messages at `level` from now on.
    pub fn set_level(&self, level: &str) -> Result<(), String> {
        // A level only: a whole filter could turn on a library's trace.
        if !LEVELS.iter().any(|l| l.eq_ignore_ascii_case(level)) {
            return Err(format!(
                "log level {level:?} is not one of {}",
                LEVELS.join(", ")
            ));
        }
        let new = filter(level)?;
        let mut current = self.level.lock().unwrap_or_else(|e| e.into_inner());
        // Said at warn, under whichever of the two levels shows it.
        let said_before = !current.eq_ignore_ascii_case("error");
        if said_before {
            tracing::warn!("log level {current} -> {level}");
        }
        self.handle
            .reload(new)
            .map_err(|e| format!("cannot change the log level: {e}"))?;
        if !said_before {
            tracing::warn!("log level {current} -> {level}");
        }
        *current = level.to_string();
        Ok(())
    }

    /// The level now.
    pub fn level(&self) -> String {
        self.level.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// SIGUSR2: the next level, from error up to trace and round to error again.
    pub fn step(&self) {
        let next = {
            let level = self.level.lock().unwrap_or_else(|e| e.into_inner());
            let at = LEVELS.iter().position(|l| l.eq_ignore_ascii_case(&level));
            LEVELS[at.map_or(0, |i| (i + 1) % LEVELS.len())]
        };
        if let Err(e) = self.set_level(next) {
            tracing::error!("{e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn the_log_file_is_rotated_by_size_and_old_ones_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s3mount.log");
        std::fs::write(&path, "from an earlier run\n").unwrap();
        let mut log = rotating_writer(&path).unwrap();
        let line = [b'x'; 1023];
        for _ in 0..(ROTATE_BYTES / 1024) * (KEEP_ROTATED + 3) {
            log.write_all(&line).unwrap();
            log.write_all(b"\n").unwrap();
        }
        log.flush().unwrap();
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        let mut expected = vec!["s3mount.log".to_string()];
        expected.extend((1..=KEEP_ROTATED).map(|i| format!("s3mount.log.{i}")));
        expected.sort();
        assert_eq!(names, expected);
        for name in names {
            let len = std::fs::metadata(dir.path().join(name)).unwrap().len() as usize;
            assert!(len <= ROTATE_BYTES + 1024, "{len}");
        }
    }

    #[test]
    fn a_log_file_that_cannot_be_opened_is_one_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let Err(err) = rotating_writer(&dir.path().join("no/such/dir/s3mount.log")) else {
            panic!("a log file in a directory that does not exist opened");
        };
        assert!(err.starts_with("log file "), "{err}");
    }
}
