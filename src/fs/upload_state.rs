//! A file's upload state, for scripts and file managers: the read-only extended
//! attribute `user.s3mount.upload` (`getfattr -n user.s3mount.upload FILE`).
//! It is made up when asked, never stored in S3, and not named by listxattr, so
//! that `cp --preserve=xattr` and `rsync -X` do not copy it.
//!
//! A file says one of:
//! - `uploaded ETAG` — S3 has this version (and, with CloudFront,
//!   `uploaded ETAG; invalidation waiting` until CloudFront accepted its path);
//! - `waiting` — changes S3 does not have yet, being written or queued;
//! - `uploading SENT of TOTAL bytes`;
//! - `failed: REASON; data kept in PATH` — tried again in the background;
//! - `conflict: this mount's version is at NAME` — another writer's version is
//!   at the name.
//!
//! A directory says how many files below it S3 does not have yet:
//! `N files waiting` (`0 files waiting` once all are in S3).

use std::sync::Arc;

use super::inode::Kind;
use super::{Fs, FsResult};

/// The attribute's name.
pub const NAME: &str = "user.s3mount.upload";

/// Bytes of the upload of a key S3 has confirmed so far (from the request
/// layer, which counts them for `s3mount status`).
pub type SentBytes = Arc<dyn Fn(&str) -> u64 + Send + Sync>;

impl Fs {
    /// Where the bytes sent of an upload are counted.
    pub fn count_sent_with(&self, sent: SentBytes) {
        // Set once, at mount; a second call changes nothing.
        let _ = self.sent_bytes.set(sent);
    }

    /// The value of [`NAME`] for `ino`.
    pub(super) fn upload_state(&self, ino: u64) -> FsResult<Vec<u8>> {
        let inode = self.inode(ino)?;
        let text = if inode.kind == Kind::Dir {
            let waiting = self
                .state()
                .inodes
                .unsaved_below(&inode.path)
                .filter(|i| i.kind != Kind::Dir)
                .count();
            format!("{waiting} files waiting")
        } else {
            self.file_state(&inode.path, inode.dirty, inode.etag.as_deref())
        };
        Ok(text.into_bytes())
    }

    fn file_state(&self, path: &str, dirty: bool, etag: Option<&str>) -> String {
        let key = self.key(path);
        if let Some(upload) = self.board.upload_of(&key) {
            let sent = self.sent_bytes.get().map_or(0, |sent| sent(&key));
            return format!(
                "uploading {} of {} bytes",
                sent.min(upload.total),
                upload.total
            );
        }
        if let Some(failure) = self.board.failure_of(&key) {
            return match failure.kept_in {
                Some(kept) => format!(
                    "failed: {}; data kept in {}",
                    failure.reason,
                    kept.display()
                ),
                None => format!("failed: {}", failure.reason),
            };
        }
        if dirty {
            return "waiting".into();
        }
        if let Some(saved_as) = self.board.conflict_of(&key) {
            return format!("conflict: this mount's version is at {saved_as}");
        }
        let mut text = match etag {
            Some(etag) => format!("uploaded {}", etag.trim_matches('"')),
            None => "uploaded".into(),
        };
        if self.changes.as_ref().is_some_and(|c| c.waiting(path)) {
            text.push_str("; invalidation waiting");
        }
        text
    }
}
