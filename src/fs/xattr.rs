//! Extended attributes, stored as s3fs stores them so that each tool reads the
//! other's: one header `x-amz-meta-xattr` holding the JSON object
//! `{"name":"base64 of the value",...}` (names sorted), percent-encoded but for
//! letters, digits and `-._~/`.
//!
//! The names kept are `user.*`, the POSIX ACLs ([`super::acl`]), and names of
//! no namespace the kernel knows (s3fs stores any name; its tests set `key1`);
//! `security.*`, `trusted.*` and other `system.*` names are refused with ENOTSUP
//! (and read as absent). `user.s3mount.upload` is the file's upload state
//! ([`super::upload_state`]), made up when read, never stored. A change is a change of the
//! object's metadata, like chmod: a copy of an unmodified object onto itself, or
//! part of the next upload of a file with pending changes.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::time::SystemTime;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};

use super::acl::{self, Acl};
use super::inode::{Inode, Kind};
use super::meta::FileMeta;
use super::{Errno, Fs, FsResult, upload_state};

/// The user-metadata name (after `x-amz-meta-`).
pub const HEADER: &str = "xattr";

/// Extended attributes by name.
pub type Xattrs = BTreeMap<String, Vec<u8>>;

/// What s3fs leaves unencoded.
const KEPT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b'/');

/// The attributes in a header value; what cannot be read is left out (as s3fs
/// does), never an error.
pub fn decode(header: &str) -> Xattrs {
    let json = percent_decode_str(header).decode_utf8_lossy();
    let Ok(map) = serde_json::from_str::<BTreeMap<String, String>>(&json) else {
        tracing::warn!("an x-amz-meta-xattr header is not s3fs's JSON; ignoring it");
        return Xattrs::new();
    };
    map.into_iter()
        .filter_map(|(k, v)| Some((k, STANDARD.decode(v).ok()?)))
        .collect()
}

pub fn encode(xattrs: &Xattrs) -> String {
    let map: BTreeMap<&str, String> = xattrs
        .iter()
        .map(|(k, v)| (k.as_str(), STANDARD.encode(v)))
        .collect();
    let json = serde_json::to_string(&map).unwrap_or_default();
    utf8_percent_encode(&json, KEPT).to_string()
}

/// Namespaces whose attributes mean something to the kernel or to security
/// modules: not stored in S3.
const NOT_KEPT: [&str; 3] = ["security.", "system.", "trusted."];

/// Can an attribute of this name be stored?
fn is_kept(name: &str) -> bool {
    if name == acl::ACCESS || name == acl::DEFAULT {
        return true;
    }
    if let Some(rest) = name.strip_prefix("user.") {
        return !rest.is_empty() && name != upload_state::NAME;
    }
    !name.is_empty() && !NOT_KEPT.iter().any(|ns| name.starts_with(ns))
}

/// `xattrs` after a chmod to `mode`, if they hold an access ACL (which must
/// say what the mode says); `None` if there is nothing to change.
pub fn chmod_acl(xattrs: Option<&Xattrs>, mode: u32) -> Option<Xattrs> {
    let xattrs = xattrs?;
    let mut a = Acl::parse(xattrs.get(acl::ACCESS)?)?;
    a.chmod(mode);
    let mut out = xattrs.clone();
    out.insert(acl::ACCESS.to_string(), a.to_bytes());
    Some(out)
}

/// `XATTR_CREATE` and `XATTR_REPLACE` of setxattr(2).
const CREATE: i32 = 1;
const REPLACE: i32 = 2;

impl Fs {
    /// The attributes of `ino` (a HEAD if its headers are not known yet).
    async fn xattrs(&self, ino: u64) -> FsResult<Xattrs> {
        self.ensure_headers(ino).await?;
        Ok(self.inode(ino)?.meta.xattrs.unwrap_or_default())
    }

    pub async fn getxattr(&self, ino: u64, name: &OsStr) -> FsResult<Vec<u8>> {
        let name = name.to_str().ok_or(Errno::ENODATA)?;
        if name == upload_state::NAME {
            return self.upload_state(ino);
        }
        if !is_kept(name) {
            return Err(Errno::ENODATA);
        }
        if (name == acl::ACCESS || name == acl::DEFAULT) && self.shows_defaults(ino)? {
            return Err(Errno::ENODATA);
        }
        self.xattrs(ino).await?.remove(name).ok_or(Errno::ENODATA)
    }

    /// Does `ino` show the mount's defaults, its headers never read? A listed
    /// object does (without --head-listed), and its ACLs are then none, like its
    /// mode and owner: `ls -l` asks for the ACL of every entry it shows, and a HEAD
    /// for each would make it one request per entry. A lookup by name, and any
    /// other attribute asked for, read the headers.
    fn shows_defaults(&self, ino: u64) -> FsResult<bool> {
        let inode = self.inode(ino)?;
        Ok(inode.headers.is_none() && !inode.local)
    }

    /// The names, each followed by a NUL, as listxattr(2) returns them.
    pub async fn listxattr(&self, ino: u64) -> FsResult<Vec<u8>> {
        let mut out = Vec::new();
        for name in self.xattrs(ino).await?.keys() {
            out.extend_from_slice(name.as_bytes());
            out.push(0);
        }
        Ok(out)
    }

    pub async fn setxattr(&self, ino: u64, name: &OsStr, value: &[u8], flags: i32) -> FsResult<()> {
        let name = self.storable_name(ino, name)?;
        let value = value.to_vec();
        self.change_xattrs(ino, move |xattrs| {
            let exists = xattrs.contains_key(&name);
            if flags & CREATE != 0 && exists {
                return Err(Errno::EEXIST);
            }
            if flags & REPLACE != 0 && !exists {
                return Err(Errno::ENODATA);
            }
            if name == acl::ACCESS {
                return set_access_acl(xattrs, &value);
            }
            if name == acl::DEFAULT && Acl::parse(&value).is_none() {
                return Err(Errno::EINVAL);
            }
            xattrs.insert(name, value);
            Ok(None)
        })
        .await
    }

    pub async fn removexattr(&self, ino: u64, name: &OsStr) -> FsResult<()> {
        let name = self.storable_name(ino, name)?;
        let is_acl = name == acl::ACCESS || name == acl::DEFAULT;
        if is_acl && !self.xattrs(ino).await?.contains_key(&name) {
            // Removing an ACL there is none of succeeds, as on ext4.
            return Ok(());
        }
        self.change_xattrs(ino, move |xattrs| {
            xattrs.remove(&name).ok_or(Errno::ENODATA)?;
            Ok(None)
        })
        .await
    }

    /// `name` if `ino` can keep an attribute of that name (the root of a bucket
    /// has no object to keep it on).
    fn storable_name(&self, ino: u64, name: &OsStr) -> FsResult<String> {
        self.check_writable()?;
        if name == upload_state::NAME {
            // Read-only: it says what the mount is doing.
            return Err(Errno::EPERM);
        }
        let name = name
            .to_str()
            .filter(|n| is_kept(n))
            .ok_or(Errno::EOPNOTSUPP)?;
        let inode = self.inode(ino)?;
        if inode.kind == Kind::Dir && self.dir_prefix(&inode.path).is_empty() {
            return Err(Errno::EOPNOTSUPP);
        }
        Ok(name.to_string())
    }

    /// Change the attributes of `ino` with `change`, which may also give new
    /// permission bits; the ctime moves, as on a local disk.
    async fn change_xattrs(
        &self,
        ino: u64,
        change: impl FnOnce(&mut Xattrs) -> FsResult<Option<u32>>,
    ) -> FsResult<()> {
        let now = SystemTime::now();
        self.change_metadata(ino, false, |inode| {
            let mut xattrs = inode.meta.xattrs.clone().unwrap_or_default();
            let perm = change(&mut xattrs)?;
            let mode = match perm {
                Some(bits) => Some(self.mode_of(inode) & !0o777 | bits),
                None => inode.meta.mode,
            };
            Ok(FileMeta {
                mode,
                ctime: Some(now),
                xattrs: Some(xattrs),
                ..inode.meta.clone()
            })
        })
        .await
    }

    /// The full `st_mode` of `inode`, the mount's default where it has none.
    fn mode_of(&self, inode: &Inode) -> u32 {
        inode.kind.type_bits() | u32::from(self.attr(inode).perm)
    }

    /// The attributes, mode and owner of a new entry of `kind` in directory
    /// `parent`, created with `mode` under `umask`: a directory with a default
    /// ACL gives it to the entry (and the umask does not apply), as on ext4.
    pub(super) async fn new_entry_meta(
        &self,
        parent: u64,
        kind: Kind,
        mode: u32,
        caller: super::Caller,
        now: SystemTime,
    ) -> FsResult<FileMeta> {
        if kind == Kind::Symlink {
            // A symlink's mode means nothing: always 0777, no ACL.
            return Ok(FileMeta {
                mode: Some(libc::S_IFLNK | 0o777),
                ..own(caller, now)
            });
        }
        let inherited = match self.xattrs(parent).await {
            Ok(mut x) => x.remove(acl::DEFAULT).and_then(|v| Acl::parse(&v)),
            // The parent is gone or unreadable: the create meets that itself.
            Err(_) => None,
        };
        let mut xattrs = Xattrs::new();
        let perm = match inherited {
            None => mode & 0o7777 & !caller.umask,
            Some(default) => {
                let mut access = default.clone();
                let bits = access.create_masq(mode & 0o777);
                if !access.is_minimal() {
                    xattrs.insert(acl::ACCESS.to_string(), access.to_bytes());
                }
                if kind == Kind::Dir {
                    xattrs.insert(acl::DEFAULT.to_string(), default.to_bytes());
                }
                mode & 0o7000 | bits
            }
        };
        Ok(FileMeta {
            mode: Some(kind.type_bits() | perm),
            xattrs: (!xattrs.is_empty()).then_some(xattrs),
            ..own(caller, now)
        })
    }
}

/// The owner and times of an entry `caller` creates at `now`.
fn own(caller: super::Caller, now: SystemTime) -> FileMeta {
    FileMeta {
        uid: Some(caller.uid),
        gid: Some(caller.gid),
        atime: Some(now),
        mtime: Some(now),
        ctime: Some(now),
        ..FileMeta::default()
    }
}

/// Set the access ACL `value` in `xattrs`; the mode takes the ACL's bits. An
/// ACL that says no more than the mode is not kept (as ext4 does).
fn set_access_acl(xattrs: &mut Xattrs, value: &[u8]) -> FsResult<Option<u32>> {
    let a = Acl::parse(value).ok_or(Errno::EINVAL)?;
    if a.is_minimal() {
        xattrs.remove(acl::ACCESS);
    } else {
        xattrs.insert(acl::ACCESS.to_string(), a.to_bytes());
    }
    Ok(Some(a.mode_bits()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_as_s3fs_does() {
        let x: Xattrs = [
            ("user.b".to_string(), b"\x00\xffvalue".to_vec()),
            ("user.a".to_string(), b"hello".to_vec()),
        ]
        .into_iter()
        .collect();
        // {"user.a":"aGVsbG8=","user.b":"AP92YWx1ZQ=="}, percent-encoded.
        assert_eq!(
            encode(&x),
            "%7B%22user.a%22%3A%22aGVsbG8%3D%22%2C%22user.b%22%3A%22AP92YWx1ZQ%3D%3D%22%7D"
        );
        assert_eq!(decode(&encode(&x)), x);
    }

    #[test]
    fn reads_what_s3fs_wrote_and_ignores_junk() {
        let header = "%7B%22user.k%22%3A%22dg%3D%3D%22%7D";
        assert_eq!(decode(header)["user.k"], b"v");
        assert!(decode("not json").is_empty());
        let mixed = decode("%7B%22user.ok%22%3A%22dg%3D%3D%22%2C%22user.bad%22%3A%22%21%21%22%7D");
        assert_eq!(mixed.keys().collect::<Vec<_>>(), ["user.ok"]);
    }

    #[test]
    fn user_acl_and_plain_names_are_kept() {
        assert!(is_kept("user.x"));
        assert!(is_kept(acl::ACCESS));
        assert!(is_kept("key1"));
        assert!(is_kept("com.example.tag"));
        assert!(!is_kept("user."));
        assert!(!is_kept(""));
        assert!(!is_kept(upload_state::NAME));
        assert!(!is_kept("security.capability"));
        assert!(!is_kept("system.other"));
        assert!(!is_kept("trusted.x"));
    }
}
