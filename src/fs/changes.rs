//! What the filesystem reports of the changes it made to objects, once S3 has them:
//! the CDN invalidation queue listens.

/// One change to the object of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// The object was written; `new` when there was no object under its key before.
    Written { new: bool },
    /// The object was deleted.
    Deleted,
}

/// Told of every change, by path in the mount (`dir/name`), as soon as S3 has
/// it. Called on file operations' paths: it must return at once.
pub trait Changes: Send + Sync {
    fn changed(&self, path: &str, change: Change);

    /// Is a change of `path` told here not passed on yet (for the CDN: its
    /// invalidation not yet accepted)?
    fn waiting(&self, path: &str) -> bool;
}
