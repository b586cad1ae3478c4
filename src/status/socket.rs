//! Where a mount's status socket lives, and the one-line protocol on it.
//!
//! Each mount listens on `DIR/PID.sock`, DIR being `/run/s3mount` for root,
//! else `$XDG_RUNTIME_DIR/s3mount`, else `/tmp/s3mount-UID`. DIR is made with
//! mode 0700 and must belong to the user with no access for anyone else, so
//! only the mounting user (and root) can reach a socket; the mount also checks
//! the peer's uid. A request is one line (`status`, `log-level LEVEL`), the
//! answer one line of JSON ([`Reply`]).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::Report;

/// How long a client waits for a mount to answer.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    Status(Box<Report>),
    LogLevel(String),
    Error(String),
}

/// The directory of this user's status sockets (not created).
pub fn dir() -> PathBuf {
    let uid = nix::unistd::geteuid();
    if uid.is_root() {
        return PathBuf::from("/run/s3mount");
    }
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        Some(run) => PathBuf::from(run).join("s3mount"),
        None => PathBuf::from(format!("/tmp/s3mount-{uid}")),
    }
}

/// Make `dir` if need be, and check that it is this user's and no one else's.
pub fn prepare(dir: &Path) -> Result<(), String> {
    crate::private::create_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    check(dir)
}

/// `dir` must be a directory of this user that no one else may enter: in a
/// shared /tmp, another user could have made it first.
pub fn check(dir: &Path) -> Result<(), String> {
    let meta = std::fs::symlink_metadata(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    if !meta.is_dir() {
        return Err(format!("{} is not a directory", dir.display()));
    }
    if meta.uid() != nix::unistd::geteuid().as_raw() {
        return Err(format!(
            "{} belongs to another user (uid {})",
            dir.display(),
            meta.uid()
        ));
    }
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(format!(
            "{} may be entered by other users (mode {:o}); it must be 0700",
            dir.display(),
            meta.permissions().mode() & 0o7777
        ));
    }
    Ok(())
}

/// Where this user's mounts may have their sockets: [`dir`] first, then for a
/// user with a runtime directory, `/tmp/s3mount-UID` too (a mount started
/// without one, from cron or `su`, listens there).
pub fn dirs() -> Vec<PathBuf> {
    let uid = nix::unistd::geteuid();
    let mut dirs = vec![dir()];
    let fallback = PathBuf::from(format!("/tmp/s3mount-{uid}"));
    if !uid.is_root() && !dirs.contains(&fallback) {
        dirs.push(fallback);
    }
    dirs
}

/// The socket of the mount run by process `pid`.
pub fn path(dir: &Path, pid: u32) -> PathBuf {
    dir.join(format!("{pid}.sock"))
}

/// Send `request` to the mount at `socket`, and read its answer.
pub fn ask(socket: &Path, request: &str) -> std::io::Result<Reply> {
    let mut stream = UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(CLIENT_TIMEOUT))?;
    stream.set_write_timeout(Some(CLIENT_TIMEOUT))?;
    stream.write_all(format!("{request}\n").as_bytes())?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line)?;
    serde_json::from_str(&line).map_err(std::io::Error::other)
}

/// The sockets in `dir`, in the order of their process ids.
pub fn sockets(dir: &Path) -> Vec<PathBuf> {
    sockets_by_pid(dir).into_iter().map(|(_, p)| p).collect()
}

fn sockets_by_pid(dir: &Path) -> Vec<(u32, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut found: Vec<(u32, PathBuf)> = entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name();
            let pid = name.to_str()?.strip_suffix(".sock")?.parse().ok()?;
            Some((pid, e.path()))
        })
        .collect();
    found.sort();
    found
}

/// Remove the sockets in `dir` whose process is gone (a mount that was killed
/// leaves its socket behind). Judged by the process, not by a refused
/// connection: a mount that has just bound its socket refuses one until it
/// listens.
pub fn remove_stale(dir: &Path) {
    for (pid, socket) in sockets_by_pid(dir) {
        let gone = i32::try_from(pid).is_ok_and(|pid| {
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None)
                == Err(nix::errno::Errno::ESRCH)
        });
        if gone {
            let _ = std::fs::remove_file(&socket);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_others_may_enter_is_refused() {
        let top = tempfile::tempdir().unwrap();
        let dir = top.path().join("s3mount");
        prepare(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let err = check(&dir).unwrap_err();
        assert!(err.contains("must be 0700"), "{err}");
    }

    #[test]
    fn sockets_are_listed_by_process_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["20.sock", "3.sock", "notes.txt", "x.sock"] {
            std::fs::write(dir.path().join(name), "").unwrap();
        }
        let names: Vec<String> = sockets(dir.path())
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["3.sock", "20.sock"]);
    }

    #[test]
    fn only_the_sockets_of_processes_gone_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let mine = path(dir.path(), std::process::id());
        // Past the largest pid Linux hands out.
        let gone = path(dir.path(), 99_999_999);
        for socket in [&mine, &gone] {
            std::fs::write(socket, "").unwrap();
        }
        remove_stale(dir.path());
        assert_eq!(sockets(dir.path()), [mine]);
    }
}
