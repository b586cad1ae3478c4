//! The object store: the only door to S3.
//!
//! Everything the filesystem needs from S3 goes through [`ObjectStore`]. The
//! aws-sdk-s3 implementation lives in [`s3`], behind [`retry`], which makes
//! every request again while a fault may pass; [`memory`] is an in-memory store
//! with fault injection for unit tests.

pub mod checksum;
pub mod counting;
pub mod error;
pub mod etag;
pub mod memory;
pub mod retry;
pub mod s3;

use std::collections::BTreeMap;
use std::ops::Range;
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;

pub use checksum::Crc32c;
pub use error::StoreError;

/// The requests an object store makes, for counting them and injecting faults.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    Head,
    Get,
    List,
    Put,
    Copy,
    Delete,
    CreateMultipart,
    UploadPart,
    UploadPartCopy,
    CompleteMultipart,
    AbortMultipart,
    ListParts,
}

impl Op {
    pub const ALL: [Op; 12] = [
        Op::Head,
        Op::Get,
        Op::List,
        Op::Put,
        Op::Copy,
        Op::Delete,
        Op::CreateMultipart,
        Op::UploadPart,
        Op::UploadPartCopy,
        Op::CompleteMultipart,
        Op::AbortMultipart,
        Op::ListParts,
    ];

    /// The S3 API name of the request.
    pub fn name(self) -> &'static str {
        match self {
            Op::Head => "HeadObject",
            Op::Get => "GetObject",
            Op::List => "ListObjectsV2",
            Op::Put => "PutObject",
            Op::Copy => "CopyObject",
            Op::Delete => "DeleteObject",
            Op::CreateMultipart => "CreateMultipartUpload",
            Op::UploadPart => "UploadPart",
            Op::UploadPartCopy => "UploadPartCopy",
            Op::CompleteMultipart => "CompleteMultipartUpload",
            Op::AbortMultipart => "AbortMultipartUpload",
            Op::ListParts => "ListParts",
        }
    }
}

/// User metadata of an object: the `x-amz-meta-*` headers, names in lower case
/// without the prefix.
pub type UserMetadata = BTreeMap<String, String>;

/// What a HEAD or a listing tells about one object.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ObjectMeta {
    pub key: String,
    pub size: u64,
    pub etag: Option<String>,
    pub last_modified: Option<SystemTime>,
    /// Only a HEAD has these; a listing leaves them `None` (unknown).
    pub headers: Option<ObjectHeaders>,
}

/// The headers a HEAD returns besides size, ETag and time.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ObjectHeaders {
    pub content_type: Option<String>,
    pub metadata: UserMetadata,
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

impl<'a> ListRequest<'a> {
    /// The cheapest question S3 answers about `prefix`: one key or one
    /// subdirectory under it, if any. Checks that the bucket is there and
    /// readable, and that the server answers.
    pub fn one_entry(prefix: &'a str) -> Self {
        Self {
            prefix,
            delimiter: Some("/"),
            continuation: None,
            max_keys: Some(1),
        }
    }
}

/// Options of a PutObject or CreateMultipartUpload.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PutOptions {
    pub content_type: Option<String>,
    pub metadata: UserMetadata,
}

/// Options of a CopyObject.
#[derive(Debug, Clone, Default)]
pub struct CopyOptions {
    /// New Content-Type and metadata (`MetadataDirective: REPLACE`); `None` keeps the
    /// source's.
    pub replace: Option<PutOptions>,
    /// Copy only if the source still has this ETag, else
    /// [`StoreError::PreconditionFailed`].
    pub if_match: Option<String>,
}

/// A multipart upload just created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewUpload {
    pub id: String,
    /// Created with CRC32C checksums: each part must carry its own
    /// (see [`ObjectStore::upload_part`]).
    pub crc32c: bool,
}

/// What S3 answers for a part it stored: its ETag, and its CRC32C where known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartTag {
    pub etag: String,
    pub crc32c: Option<Crc32c>,
}

/// A part of a multipart upload, as CompleteMultipartUpload wants it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompletedPart {
    pub number: i32,
    pub tag: PartTag,
}

/// A part S3 holds of a multipart upload not completed yet (ListParts).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedPart {
    pub number: i32,
    pub tag: PartTag,
    pub size: u64,
}

/// What a write requires of the object it replaces, so that it never silently
/// replaces another writer's version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Condition {
    /// No object at the key (`If-None-Match: *`).
    Absent,
    /// The object has this ETag (`If-Match`).
    Matches(String),
}

impl Condition {
    /// Does an object with ETag `etag` (`None`: no object) meet the condition?
    pub fn holds_for(&self, etag: Option<&str>) -> bool {
        match self {
            Condition::Absent => etag.is_none(),
            Condition::Matches(want) => etag == Some(want.as_str()),
        }
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

#[async_trait]
pub trait ObjectStore: Send + Sync + 'static {
    /// Whether this store makes a request that failed in a way that may pass
    /// again itself, for `--retry-for` (the retrying store). A caller then does
    /// not send it again on top, which would stretch that time.
    fn retries_itself(&self) -> bool {
        false
    }

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

    /// [`Self::get_range`] in pieces of `piece` bytes (the last may be shorter),
    /// each in a buffer of its own, so that a piece can be kept without the rest.
    async fn get_pieces(
        &self,
        key: &str,
        range: Range<u64>,
        if_match: Option<&str>,
        piece: u64,
    ) -> StoreResult<Vec<Bytes>> {
        let data = self.get_range(key, range, if_match).await?;
        let piece = usize::try_from(piece.max(1)).unwrap_or(usize::MAX);
        Ok(data.chunks(piece).map(Bytes::copy_from_slice).collect())
    }

    async fn list(&self, request: ListRequest<'_>) -> StoreResult<ListPage>;

    /// Store a whole object; returns its ETag. Its body goes with its CRC32C
    /// where the server takes checksums. With `condition`, fails with
    /// [`StoreError::PreconditionFailed`] when the object there does not meet it
    /// (servers that enforce conditions; see the conformance suite).
    async fn put(
        &self,
        key: &str,
        body: Bytes,
        options: &PutOptions,
        condition: Option<&Condition>,
    ) -> StoreResult<String>;

    /// Server-side copy of a whole object (up to 5 GiB); returns the new ETag.
    async fn copy(&self, from: &str, to: &str, options: &CopyOptions) -> StoreResult<String>;

    /// Delete an object; deleting a missing key is not an error (S3 semantics).
    async fn delete(&self, key: &str) -> StoreResult<()>;

    /// Start a multipart upload, with CRC32C checksums where the server takes them.
    async fn create_multipart(&self, key: &str, options: &PutOptions) -> StoreResult<NewUpload>;

    /// Upload one part (numbers start at 1) with its CRC32C, which an upload
    /// created with checksums requires and one created without must not have;
    /// returns the part's ETag.
    async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        number: i32,
        body: Bytes,
        crc32c: Option<Crc32c>,
    ) -> StoreResult<String>;

    /// Upload part `number` as a server-side copy of bytes `range` of object
    /// `source` (which must still have the ETag `if_match`, when given).
    async fn upload_part_copy(
        &self,
        key: &str,
        upload_id: &str,
        number: i32,
        source: &str,
        range: Range<u64>,
        if_match: Option<&str>,
    ) -> StoreResult<PartTag>;

    /// Complete a multipart upload; returns the object's ETag. With `condition`,
    /// as [`ObjectStore::put`]; a change of the object while the upload ran may
    /// also fail it with [`StoreError::Conflict`] (the upload must start again).
    async fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: Vec<CompletedPart>,
        condition: Option<&Condition>,
    ) -> StoreResult<String>;

    async fn abort_multipart(&self, key: &str, upload_id: &str) -> StoreResult<()>;

    /// The parts S3 holds of an upload not completed; [`StoreError::NotFound`]
    /// if the upload is gone (completed or aborted).
    async fn list_parts(&self, key: &str, upload_id: &str) -> StoreResult<Vec<ListedPart>>;
}
