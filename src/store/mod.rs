//! The object store: the only door to S3.
//!
//! Everything the filesystem needs from S3 goes through [`ObjectStore`]. The
//! aws-sdk-s3 implementation lives in [`s3`]; [`memory`] is an in-memory store with
//! fault injection for unit tests.

pub mod error;
pub mod memory;
pub mod s3;

use std::ops::Range;
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;

pub use error::StoreError;

/// What a HEAD or a listing tells about one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    pub key: String,
    pub size: u64,
    pub etag: Option<String>,
    pub last_modified: Option<SystemTime>,
}

/// One page of a ListObjectsV2 call.
#[derive(Debug, Clone, Default)]
pub struct ListPage {
    pub objects: Vec<ObjectMeta>,
    /// Common prefixes (with the delimiter at the end).
    pub prefixes: Vec<String>,
    /// Continuation token for the next page; `None` on the last page.
    pub next_token: Option<String>,
}

/// Options of a listing request.
#[derive(Debug, Clone, Default)]
pub struct ListRequest<'a> {
    pub prefix: &'a str,
    pub delimiter: Option<&'a str>,
    pub continuation: Option<String>,
    /// Page size; the server's default (1,000) when `None`.
    pub max_keys: Option<i32>,
}

/// Options of a PutObject or CreateMultipartUpload.
#[derive(Debug, Clone, Default)]
pub struct PutOptions {
    pub content_type: Option<String>,
}

/// A part of a multipart upload, as CompleteMultipartUpload wants it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompletedPart {
    pub number: i32,
    pub etag: String,
}

pub type StoreResult<T> = Result<T, StoreError>;

#[async_trait]
pub trait ObjectStore: Send + Sync + 'static {
    /// Metadata of one object; [`StoreError::NotFound`] if there is none.
    async fn head(&self, key: &str) -> StoreResult<ObjectMeta>;

    /// Bytes `range` of an object. With `if_match`, fails with
    /// [`StoreError::PreconditionFailed`] when the object's ETag differs.
    async fn get_range(
        &self,
        key: &str,
        range: Range<u64>,
        if_match: Option<&str>,
    ) -> StoreResult<Bytes>;

    async fn list(&self, request: ListRequest<'_>) -> StoreResult<ListPage>;

    /// Store a whole object; returns its ETag.
    async fn put(&self, key: &str, body: Bytes, options: &PutOptions) -> StoreResult<String>;

    /// Server-side copy of a whole object (up to 5 GiB), metadata kept.
    async fn copy(&self, from: &str, to: &str) -> StoreResult<()>;

    /// Delete an object; deleting a missing key is not an error (S3 semantics).
    async fn delete(&self, key: &str) -> StoreResult<()>;

    /// Start a multipart upload; returns its upload id.
    async fn create_multipart(&self, key: &str, options: &PutOptions) -> StoreResult<String>;

    /// Upload one part (numbers start at 1); returns the part's ETag.
    async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        number: i32,
        body: Bytes,
    ) -> StoreResult<String>;

    /// Complete a multipart upload; returns the object's ETag.
    async fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: Vec<CompletedPart>,
    ) -> StoreResult<String>;

    async fn abort_multipart(&self, key: &str, upload_id: &str) -> StoreResult<()>;
}
