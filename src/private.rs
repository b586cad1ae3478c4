//! The cache directory holds the bucket's data (blocks, staged writes, the
//! journal, the log), so only the user who mounts may read it, and only one
//! mount may use it at a time.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use nix::fcntl::{Flock, FlockArg};

/// Modes of what s3mount creates in the cache directory.
pub const DIR_MODE: u32 = 0o700;
pub const FILE_MODE: u32 = 0o600;

/// Directories of the cache directory, and its files that are not in them.
const SUBDIRS: &[&str] = &["blocks", "staging", "journal", "recovered", "quarantine"];
const FILES: &[&str] = &["s3mount.log", "lock"];

/// Make directory `path` (and its parents) with the owner-only mode.
pub fn create_dir(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(path)
}

/// Files and directories this process creates get no permission for others.
pub fn restrict_umask() {
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
}

/// Give the cache directory, its subdirectories and its top-level files the
/// owner-only modes, where an earlier version left them looser; returns what
/// was tightened. The files inside the subdirectories are not walked (the block
/// cache may hold 100,000 of them): a directory of mode 0700 keeps everyone
/// else out of all it holds, and the block cache tightens its files as it
/// indexes them.
pub fn tighten(cache_dir: &Path) -> io::Result<Vec<String>> {
    let mut tightened = Vec::new();
    let dirs =
        std::iter::once(cache_dir.to_path_buf()).chain(SUBDIRS.iter().map(|d| cache_dir.join(d)));
    for dir in dirs {
        if tighten_one(&dir, DIR_MODE)? {
            tightened.push(dir.display().to_string());
        }
    }
    for file in FILES {
        let path = cache_dir.join(file);
        if tighten_one(&path, FILE_MODE)? {
            tightened.push(path.display().to_string());
        }
    }
    Ok(tightened)
}

/// Take away the permissions `path` has beyond `mode`; `true` if it had any.
pub fn tighten_one(path: &Path, mode: u32) -> io::Result<bool> {
    let current = match fs::symlink_metadata(path) {
        Ok(md) => md.permissions().mode() & 0o7777,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    if current & !mode == 0 {
        return Ok(false);
    }
    fs::set_permissions(path, fs::Permissions::from_mode(current & mode))?;
    Ok(true)
}

/// The lock on a cache directory, held for the life of the mount.
pub struct CacheLock {
    _lock: Flock<File>,
}

/// Lock `cache_dir` for the mount described by `holder` (shown to a second
/// mount that finds it locked); the error names the mount holding it.
pub fn lock(cache_dir: &Path, holder: &str) -> Result<CacheLock, String> {
    let path = cache_dir.join("lock");
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(FILE_MODE)
        .open(&path)
        .map_err(|e| format!("cache directory lock {}: {e}", path.display()))?;
    let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => lock,
        Err((mut file, nix::errno::Errno::EWOULDBLOCK)) => {
            let mut other = String::new();
            let _ = file.read_to_string(&mut other);
            let other = other.trim();
            return Err(format!(
                "cache directory {} is in use by another mount ({}); give this mount its own --cache-dir",
                cache_dir.display(),
                if other.is_empty() { "unknown" } else { other }
            ));
        }
        Err((_, e)) => return Err(format!("cannot lock {}: {e}", path.display())),
    };
    let written = (|| -> io::Result<()> {
        lock.set_len(0)?;
        lock.rewind()?;
        lock.write_all(holder.as_bytes())?;
        Ok(())
    })();
    if let Err(e) = written {
        tracing::warn!("cannot note the mount in {}: {e}", path.display());
    }
    Ok(CacheLock { _lock: lock })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_fails_and_names_the_first() {
        let dir = tempfile::tempdir().unwrap();
        let held = lock(dir.path(), "s3://b on /mnt (process 42)").unwrap();
        let err = lock(dir.path(), "other").err().unwrap();
        assert!(err.contains("in use by another mount"), "{err}");
        assert!(err.contains("s3://b on /mnt (process 42)"), "{err}");
        drop(held);
        assert!(lock(dir.path(), "other").is_ok());
    }

    #[test]
    fn loose_modes_are_tightened_and_tight_ones_left() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cache");
        fs::create_dir_all(cache.join("blocks")).unwrap();
        fs::create_dir_all(cache.join("staging")).unwrap();
        fs::write(cache.join("s3mount.log"), "x").unwrap();
        for (p, m) in [
            (cache.clone(), 0o755),
            (cache.join("blocks"), 0o700),
            (cache.join("staging"), 0o775),
            (cache.join("s3mount.log"), 0o644),
        ] {
            fs::set_permissions(&p, fs::Permissions::from_mode(m)).unwrap();
        }
        let mut tightened = tighten(&cache).unwrap();
        tightened.sort();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&cache), 0o700);
        assert_eq!(mode(&cache.join("staging")), 0o700);
        assert_eq!(mode(&cache.join("s3mount.log")), 0o600);
        assert_eq!(tightened.len(), 3, "{tightened:?}");
        assert!(tighten(&cache).unwrap().is_empty());
    }
}
