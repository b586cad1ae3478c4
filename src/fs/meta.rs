//! POSIX attributes kept in an object's user metadata, the way s3fs and rclone keep
//! them, so a bucket can be shared between the tools: `x-amz-meta-mode` (decimal
//! `st_mode`, type bits included), `x-amz-meta-uid`, `x-amz-meta-gid`, and
//! `x-amz-meta-atime` / `-mtime` / `-ctime` (seconds since the epoch, with an
//! optional fraction), `x-amz-meta-rdev` (a device node's number) and
//! `x-amz-meta-xattr` (extended attributes, see [`super::xattr`]).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::xattr::{self, Xattrs};
use crate::store::UserMetadata;

const MODE: &str = "mode";
const UID: &str = "uid";
const GID: &str = "gid";
const ATIME: &str = "atime";
const MTIME: &str = "mtime";
const CTIME: &str = "ctime";
const RDEV: &str = "rdev";

/// The attributes an object's metadata sets; `None` where it says nothing (the
/// mount's defaults apply).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FileMeta {
    /// Full `st_mode`: type and permission bits.
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub atime: Option<SystemTime>,
    pub mtime: Option<SystemTime>,
    pub ctime: Option<SystemTime>,
    /// A device node's number (`st_rdev`).
    pub rdev: Option<u32>,
    /// Extended attributes; `Some` of an empty set removes the header.
    pub xattrs: Option<Xattrs>,
}

impl FileMeta {
    pub fn from_metadata(m: &UserMetadata) -> Self {
        let number = |name: &str| m.get(name).and_then(|v| v.trim().parse::<u32>().ok());
        let time = |name: &str| m.get(name).and_then(|v| parse_time(v));
        Self {
            mode: number(MODE),
            uid: number(UID),
            gid: number(GID),
            atime: time(ATIME),
            mtime: time(MTIME),
            ctime: time(CTIME),
            rdev: number(RDEV),
            xattrs: m.get(xattr::HEADER).map(|v| xattr::decode(v)),
        }
    }

    /// `base` (the object's other metadata, kept as it is) with these attributes
    /// written over it.
    pub fn to_metadata(&self, base: &UserMetadata) -> UserMetadata {
        let mut m = base.clone();
        let mut set = |name: &str, value: Option<String>| {
            if let Some(v) = value {
                m.insert(name.to_string(), v);
            }
        };
        set(MODE, self.mode.map(|v| v.to_string()));
        set(UID, self.uid.map(|v| v.to_string()));
        set(GID, self.gid.map(|v| v.to_string()));
        set(ATIME, self.atime.map(format_time));
        set(MTIME, self.mtime.map(format_time));
        set(CTIME, self.ctime.map(format_time));
        set(RDEV, self.rdev.map(|v| v.to_string()));
        match &self.xattrs {
            Some(x) if x.is_empty() => {
                m.remove(xattr::HEADER);
            }
            Some(x) => set(xattr::HEADER, Some(xattr::encode(x))),
            None => {}
        }
        m
    }

    /// The file type bits of `mode`, if the metadata has a mode.
    pub fn file_type(&self) -> Option<u32> {
        self.mode.map(|m| m & libc::S_IFMT)
    }
}

/// `metadata` without the times (for an upload whose time is its Last-Modified).
pub fn without_times(metadata: &UserMetadata) -> UserMetadata {
    let mut m = metadata.clone();
    for name in [ATIME, MTIME, CTIME] {
        m.remove(name);
    }
    m
}

/// Seconds since the epoch, with nanoseconds when there are any (as s3fs writes it).
pub fn format_time(t: SystemTime) -> String {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) if d.subsec_nanos() == 0 => d.as_secs().to_string(),
        Ok(d) => format!("{}.{:09}", d.as_secs(), d.subsec_nanos()),
        Err(before) => {
            let d = before.duration();
            if d.subsec_nanos() == 0 {
                format!("-{}", d.as_secs())
            } else {
                format!("-{}.{:09}", d.as_secs(), d.subsec_nanos())
            }
        }
    }
}

/// Seconds since the epoch (`1700000000`, `1700000000.5`, as s3fs and rclone write
/// them), or an RFC 3339 time.
pub fn parse_time(s: &str) -> Option<SystemTime> {
    let s = s.trim();
    let (negative, digits) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let (secs, frac) = digits.split_once('.').unwrap_or((digits, ""));
    if !secs.is_empty()
        && secs.bytes().all(|b| b.is_ascii_digit())
        && frac.bytes().all(|b| b.is_ascii_digit())
    {
        let secs: u64 = secs.parse().ok()?;
        let nanos: u32 = format!("{frac:0<9}").get(..9)?.parse().ok()?;
        let d = Duration::new(secs, nanos);
        return if negative {
            UNIX_EPOCH.checked_sub(d)
        } else {
            UNIX_EPOCH.checked_add(d)
        };
    }
    humantime::parse_rfc3339_weak(s).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_round_trip_with_and_without_fractions() {
        for t in [
            UNIX_EPOCH + Duration::new(1_700_000_000, 0),
            UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789),
            UNIX_EPOCH - Duration::new(86_400, 500_000_000),
        ] {
            assert_eq!(parse_time(&format_time(t)), Some(t));
        }
        assert_eq!(format_time(UNIX_EPOCH + Duration::new(5, 0)), "5");
        assert_eq!(
            parse_time("1700000000.5"),
            Some(UNIX_EPOCH + Duration::new(1_700_000_000, 500_000_000))
        );
        assert_eq!(
            parse_time("2023-11-14T22:13:20Z"),
            Some(UNIX_EPOCH + Duration::new(1_700_000_000, 0))
        );
        assert_eq!(parse_time("soon"), None);
    }

    #[test]
    fn metadata_as_s3fs_writes_it() {
        let m: UserMetadata = [
            ("mode", "33188"),
            ("uid", "1000"),
            ("gid", "100"),
            ("mtime", "1700000000"),
            ("other", "kept"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let meta = FileMeta::from_metadata(&m);
        assert_eq!(meta.mode, Some(libc::S_IFREG | 0o644));
        assert_eq!((meta.uid, meta.gid), (Some(1000), Some(100)));
        assert_eq!(meta.file_type(), Some(libc::S_IFREG));
        assert_eq!(meta.atime, None);
        assert_eq!(meta.to_metadata(&m), m);
        let changed = FileMeta {
            mode: Some(libc::S_IFREG | 0o600),
            ..meta
        };
        let out = changed.to_metadata(&m);
        assert_eq!(out["mode"], "33152");
        assert_eq!(out["other"], "kept");
    }
}
