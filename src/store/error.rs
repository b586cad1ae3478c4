//! Errors of the object store and their errno.

/// An error from the object store, already sorted into what the filesystem cares about.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("no such key")]
    NotFound,
    #[error("the bucket does not exist")]
    NoSuchBucket,
    #[error("access denied ({0})")]
    AccessDenied(String),
    /// No credentials to sign requests with (the text says where they were looked for).
    #[error("{0}")]
    NoCredentials(String),
    #[error("the object changed (precondition failed)")]
    PreconditionFailed,
    #[error("the object changed while the upload ran (conflict)")]
    Conflict,
    #[error("the key is too long for S3")]
    KeyTooLong,
    #[error("cannot reach the S3 endpoint: {0}")]
    Unreachable(String),
    /// The server answered, with an error that passes (5xx, SlowDown, throttling).
    #[error("the S3 server is busy or failing: {0}")]
    Busy(String),
    /// The server found a body's checksum wrong: damaged on the way, sent again.
    #[error("a request's body was damaged on the way: {0}")]
    Damaged(String),
    #[error("S3 error: {0}")]
    Other(String),
}

impl StoreError {
    /// Might the same request succeed if made again, unchanged?
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            StoreError::Unreachable(_) | StoreError::Busy(_) | StoreError::Damaged(_)
        )
    }

    /// The errno a filesystem call answers with when this error ends it.
    pub fn errno(&self) -> i32 {
        match self {
            StoreError::NotFound | StoreError::NoSuchBucket => libc::ENOENT,
            StoreError::AccessDenied(_) | StoreError::NoCredentials(_) => libc::EACCES,
            StoreError::PreconditionFailed | StoreError::Conflict => libc::ESTALE,
            StoreError::KeyTooLong => libc::ENAMETOOLONG,
            StoreError::Unreachable(_)
            | StoreError::Busy(_)
            | StoreError::Damaged(_)
            | StoreError::Other(_) => libc::EIO,
        }
    }
}
