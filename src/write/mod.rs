//! Writes: staging files on local disk, the staged view of a file being changed,
//! and uploads to S3.

pub mod offload;
pub mod staged;
pub mod staging;
pub mod stream;
pub mod upload;

use std::io;

use crate::store::StoreError;

/// Why staging or uploading a file failed.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("staging file: {0}")]
    Local(#[from] io::Error),
    #[error("{0} bytes is more than S3 can store in one object")]
    TooLarge(u64),
    #[error("{0}: the object is shorter than its listed size")]
    ShortRead(String),
    /// Bytes S3 holds as parts of the file's upload left local disk (see
    /// [`offload`]): they can be neither read nor changed until the upload ends.
    #[error("bytes {}..{} were sent to S3 and dropped from local disk", .0.start, .0.end)]
    Offloaded(std::ops::Range<u64>),
}

impl WriteError {
    /// The errno the file operation answers with.
    pub fn errno(&self) -> i32 {
        match self {
            WriteError::Store(e) => e.errno(),
            WriteError::Local(e) => e.raw_os_error().unwrap_or(libc::EIO),
            WriteError::TooLarge(_) => libc::EFBIG,
            WriteError::ShortRead(_) | WriteError::Offloaded(_) => libc::EIO,
        }
    }
}
