//! Writes: staging files on local disk, and their upload to S3.

pub mod staging;
pub mod upload;
