//! Checks of the mountpoint, made before anything else so the user hears at once.

use std::io;
use std::path::{Path, PathBuf};

/// The canonical path of a usable mountpoint, or a one-line reason it is not. A
/// directory that holds files is refused unless `allow_nonempty` (as s3fs does):
/// the mount would hide them.
pub fn check(path: &Path, allow_nonempty: bool) -> Result<PathBuf, String> {
    let shown = path.display();
    match std::fs::metadata(path) {
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {
            return Err(format!(
                "mountpoint {shown} is a dead mount (transport endpoint is not connected); \
                 run `fusermount3 -u {shown}` first"
            ));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(format!("mountpoint {shown} does not exist"));
        }
        Err(e) => return Err(format!("mountpoint {shown}: {e}")),
        Ok(m) if !m.is_dir() => return Err(format!("mountpoint {shown} is not a directory")),
        Ok(_) => {}
    }
    let canonical = path
        .canonicalize()
        .map_err(|e| format!("mountpoint {shown}: {e}"))?;
    if is_mount_point(&canonical) {
        return Err(format!(
            "mountpoint {shown} is already mounted; unmount it first"
        ));
    }
    if !allow_nonempty
        && holds_entries(&canonical).map_err(|e| format!("mountpoint {shown}: {e}"))?
    {
        return Err(format!(
            "mountpoint {shown} is not empty (the mount would hide its files); \
             use --allow-nonempty to mount over them"
        ));
    }
    Ok(canonical)
}

fn holds_entries(dir: &Path) -> io::Result<bool> {
    Ok(std::fs::read_dir(dir)?.next().transpose()?.is_some())
}

/// Is `path` (canonical) the mount point of some mount?
fn is_mount_point(path: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let wanted = path.to_string_lossy();
    info.lines()
        .filter_map(|line| line.split(' ').nth(4))
        .any(|mp| unescape(mp) == wanted)
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(s: &str) -> String {
    let mut out = Vec::with_capacity(s.len());
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let code = bytes
            .get(i + 1..i + 4)
            .and_then(|d| std::str::from_utf8(d).ok())
            .and_then(|d| u8::from_str_radix(d, 8).ok());
        if bytes[i] == b'\\'
            && let Some(v) = code
        {
            out.push(v);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_given() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        assert!(
            check(&missing, false)
                .unwrap_err()
                .contains("does not exist")
        );
        let empty = dir.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        assert!(check(&empty, false).is_ok());
        let file = dir.path().join("f");
        std::fs::write(&file, "").unwrap();
        assert!(check(&file, false).unwrap_err().contains("not a directory"));
        assert!(
            check(dir.path(), false)
                .unwrap_err()
                .contains("is not empty")
        );
        assert!(check(dir.path(), true).is_ok());
        assert!(
            check(Path::new("/proc"), true)
                .unwrap_err()
                .contains("already mounted")
        );
    }

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape(r"/mnt/a\040b"), "/mnt/a b");
        assert_eq!(unescape("/plain"), "/plain");
    }
}
