//! s3mount: mount an S3 bucket as a filesystem with FUSE.
//!
//! Data flows one way: [`fuse`] decodes kernel requests and hands them to the
//! filesystem core [`fs`], which reads through [`read`], writes through [`write`],
//! and reaches S3 only through the [`store::ObjectStore`] trait.

pub mod aws;
pub mod cache;
pub mod cdn;
pub mod config;
pub mod daemon;
pub mod fs;
pub mod fuse;
pub mod journal;
pub mod logging;
pub mod metrics;
pub mod mount;
pub mod mount_args;
pub mod mountpoint;
pub mod no_answer;
pub mod private;
pub mod read;
pub mod status;
pub mod store;
pub mod write;
