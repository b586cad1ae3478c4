//! [`ObjectStore`] over aws-sdk-s3.

use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::{RequestChecksumCalculation, ResponseChecksumValidation};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::operation::create_multipart_upload::CreateMultipartUploadError;
use aws_sdk_s3::operation::put_object::PutObjectError;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{
    ChecksumAlgorithm, CompletedMultipartUpload, CompletedPart as SdkCompletedPart,
    MetadataDirective,
};
use bytes::{Bytes, BytesMut};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

use crate::aws::{CONNECT_TIMEOUT, one_line};
use crate::no_answer::{self, NoAnswer};

use super::{
    CompletedPart, Condition, CopyOptions, Crc32c, ListPage, ListRequest, ListedPart, NewUpload,
    ObjectHeaders, ObjectMeta, ObjectStore, PartTag, PutOptions, StoreError, StoreResult,
};

type HttpResponse = aws_sdk_s3::config::http::HttpResponse;

/// Where and how to reach the bucket.
#[derive(Debug, Clone, Default)]
pub struct S3Settings {
    pub bucket: String,
    pub endpoint_url: Option<String>,
    pub region: Option<String>,
    pub force_path_style: bool,
}

pub struct S3Store {
    client: Client,
    bucket: String,
    /// Bodies go unsigned with their CRC32C, which the server checks (hashing
    /// them for the signature took a fifth of the CPU of a large copy). Off
    /// once the server refused checksums: then a body is signed over plain
    /// HTTP (the signature is what guards it) and unsigned over TLS.
    checksums: AtomicBool,
    /// The endpoint is reached over TLS.
    tls: bool,
    /// How long a GET may bring no byte before it is taken up again.
    stall: Duration,
}

impl S3Store {
    /// A client with the AWS configuration (see [`crate::aws::load`]) and the
    /// settings given.
    /// Requests are made once: [`super::retry::RetryingStore`] retries them,
    /// bounded by time rather than by the SDK's retry quota, which a burst of
    /// faults empties. A GET that brings no byte for `stall` is taken up again.
    pub fn new(sdk_config: &aws_config::SdkConfig, settings: &S3Settings, stall: Duration) -> Self {
        let mut builder = aws_sdk_s3::config::Builder::from(sdk_config)
            .force_path_style(settings.force_path_style)
            .retry_config(RetryConfig::disabled())
            // No read timeout: an upload's answer comes after its body, however
            // long that takes; the retrying store bounds each attempt by its size.
            // (Left unset, the shared configuration's 60 s would apply: an 8 MiB
            // part that took longer failed with no time left to retry it.)
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(CONNECT_TIMEOUT)
                    .disable_read_timeout()
                    .build(),
            )
            // S3-compatible servers differ in their support of flexible checksums:
            // send and check them only where the API requires them.
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
        if let Some(url) = &settings.endpoint_url {
            builder = builder.endpoint_url(url);
        }
        let endpoint = settings
            .endpoint_url
            .as_deref()
            .or_else(|| sdk_config.endpoint_url());
        Self {
            client: Client::from_conf(builder.build()),
            bucket: settings.bucket.clone(),
            checksums: AtomicBool::new(true),
            // AWS itself is reached over https.
            tls: endpoint.is_none_or(|url| url.starts_with("https://")),
            stall,
        }
    }

    fn stalled(&self) -> StoreError {
        StoreError::Unreachable(format!("no data for {} s", self.stall.as_secs()))
    }

    /// The server refused a request with checksums that it took without: send
    /// bodies without them from now on, and say so once.
    fn without_checksums<E: ProvideErrorMetadata>(&self, refused: &SdkError<E, HttpResponse>) {
        if self.checksums.swap(false, Ordering::Relaxed) {
            let why = refused.message().unwrap_or("no reason given");
            tracing::warn!(
                "the S3 server refuses CRC32C checksums ({why}); bodies go without them, {}",
                if self.tls {
                    "guarded by TLS"
                } else {
                    "signed with SHA-256"
                }
            );
        }
    }

    async fn send_put(
        &self,
        key: &str,
        body: &Bytes,
        options: &PutOptions,
        condition: Option<&Condition>,
        crc32c: Option<Crc32c>,
    ) -> Result<String, SdkError<PutObjectError, HttpResponse>> {
        let (if_match, if_none_match) = condition_headers(condition);
        let request = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .body(ByteStream::from(body.clone()))
            .set_content_type(options.content_type.clone())
            .set_metadata(metadata_of(options))
            .set_if_match(if_match)
            .set_if_none_match(if_none_match)
            .set_checksum_crc32_c(crc32c.map(Crc32c::to_base64));
        let out = if crc32c.is_some() || self.tls {
            request.customize().disable_payload_signing().send().await
        } else {
            request.send().await
        }?;
        Ok(out.e_tag().unwrap_or_default().to_string())
    }

    async fn send_create(
        &self,
        key: &str,
        options: &PutOptions,
        crc32c: bool,
    ) -> Result<String, SdkError<CreateMultipartUploadError, HttpResponse>> {
        let out = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .set_content_type(options.content_type.clone())
            .set_metadata(metadata_of(options))
            .set_checksum_algorithm(crc32c.then_some(ChecksumAlgorithm::Crc32C))
            .send()
            .await?;
        Ok(out.upload_id().unwrap_or_default().to_string())
    }
}

/// Whether an error may be the server refusing checksum headers: servers
/// without them answer 400 or 501 with one of these codes. A request that
/// then succeeds without them tells.
fn may_refuse_checksums<E: ProvideErrorMetadata>(err: &SdkError<E, HttpResponse>) -> bool {
    match err {
        SdkError::ServiceError(ctx) => {
            matches!(ctx.raw().status().as_u16(), 400 | 501)
                && matches!(
                    ctx.err().code(),
                    Some("InvalidArgument" | "InvalidRequest" | "NotImplemented")
                )
        }
        _ => false,
    }
}

/// Resumes of a broken GET body in a row that bring no byte before the GET
/// fails (and is retried whole, within the retry time).
const FRUITLESS_RESUMES: u32 = 3;

/// A GET's body, straight into buffers of the pieces' sizes as it arrives: one
/// copy, and no buffer holds the data twice.
struct Pieces {
    /// Bytes asked for.
    len: u64,
    piece: u64,
    /// Bytes received so far.
    received: u64,
    done: Vec<Bytes>,
    current: BytesMut,
}

impl Pieces {
    fn new(len: u64, piece: u64) -> Self {
        let piece = piece.max(1);
        Self {
            len,
            piece,
            received: 0,
            done: Vec::with_capacity(usize::try_from(len.div_ceil(piece)).unwrap_or(0)),
            current: BytesMut::new(),
        }
    }

    /// Size of the piece being filled: past the range (a server sending more
    /// than asked for), the rest goes in one more piece, which the caller finds
    /// too long.
    fn want(&self) -> u64 {
        match self.len.saturating_sub(self.done_bytes()) {
            0 => u64::MAX,
            left => self.piece.min(left),
        }
    }

    fn done_bytes(&self) -> u64 {
        self.received - self.current.len() as u64
    }

    fn push(&mut self, mut chunk: Bytes) {
        while !chunk.is_empty() {
            let want = self.want();
            if self.current.is_empty() && want != u64::MAX {
                self.current.reserve(want as usize);
            }
            let room = (want - self.current.len() as u64).min(chunk.len() as u64) as usize;
            self.current.extend_from_slice(&chunk.split_to(room));
            self.received += room as u64;
            if self.current.len() as u64 == want {
                self.done.push(std::mem::take(&mut self.current).freeze());
            }
        }
    }

    fn finish(mut self) -> Vec<Bytes> {
        if !self.current.is_empty() {
            self.done.push(self.current.freeze());
        }
        self.done
    }
}

/// Characters escaped in the `x-amz-copy-source` header: everything but unreserved
/// characters and the `/` between key segments.
const COPY_SOURCE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'/')
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// Sort an SDK error into a [`StoreError`].
fn classify<E>(err: SdkError<E, aws_sdk_s3::config::http::HttpResponse>) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    match &err {
        SdkError::ServiceError(ctx) => {
            let status = ctx.raw().status().as_u16();
            let code = ctx.err().code();
            let message = ctx.err().message().unwrap_or_default();
            match (code, status) {
                (Some("NoSuchBucket"), _) => StoreError::NoSuchBucket,
                (Some("NoSuchKey" | "NotFound" | "NoSuchUpload"), _) | (None, 404) => {
                    StoreError::NotFound
                }
                (
                    Some(
                        "AccessDenied"
                        | "InvalidAccessKeyId"
                        | "SignatureDoesNotMatch"
                        | "InvalidToken"
                        | "ExpiredToken"
                        | "AllAccessDisabled",
                    ),
                    _,
                )
                | (None, 401 | 403) => StoreError::AccessDenied(
                    [code.unwrap_or("HTTP 403"), message]
                        .iter()
                        .filter(|s| !s.is_empty())
                        .copied()
                        .collect::<Vec<_>>()
                        .join(": "),
                ),
                (Some("PreconditionFailed"), _) | (None, 412) => StoreError::PreconditionFailed,
                (Some("ConditionalRequestConflict"), _) | (None, 409) => StoreError::Conflict,
                (Some("KeyTooLongError"), _) => StoreError::KeyTooLong,
                // The body's checksum did not match: damaged on the way.
                (Some("BadDigest" | "InvalidDigest" | "XAmzContentChecksumMismatch"), _) => {
                    StoreError::Damaged(format!("{message} (HTTP {status})"))
                }
                (
                    Some(
                        "SlowDown"
                        | "Throttling"
                        | "ThrottlingException"
                        | "RequestThrottled"
                        | "TooManyRequests"
                        | "RequestTimeout"
                        | "InternalError"
                        | "ServiceUnavailable",
                    ),
                    _,
                )
                // 501 Not Implemented will not pass.
                | (_, 429 | 500 | 502..=599) => StoreError::Busy(format!(
                    "{} {message} (HTTP {status})",
                    code.unwrap_or("error")
                )),
                _ => StoreError::Other(format!(
                    "{} {message} (HTTP {status})",
                    code.unwrap_or("error")
                )),
            }
        }
        // No answer, or one broken off before its end.
        SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) | SdkError::ResponseError(_) => {
            unanswered(&err)
        }
        _ => StoreError::Other(one_line(&err)),
    }
}

/// A request (or a body) the server did not answer (in full).
fn unanswered(err: &(dyn std::error::Error + 'static)) -> StoreError {
    match no_answer::classify(err) {
        NoAnswer::NoCredentials(why) => StoreError::NoCredentials(why),
        NoAnswer::Unreachable(why) => StoreError::Unreachable(why),
    }
}

fn to_system_time(t: Option<&aws_sdk_s3::primitives::DateTime>) -> Option<SystemTime> {
    t.and_then(|t| SystemTime::try_from(*t).ok())
}

fn size_of(len: Option<i64>) -> u64 {
    len.and_then(|n| u64::try_from(n).ok()).unwrap_or(0)
}

/// The `x-amz-copy-source` value for `key` of `bucket`.
fn copy_source(bucket: &str, key: &str) -> String {
    format!("{bucket}/{}", utf8_percent_encode(key, COPY_SOURCE))
}

/// The `If-Match` and `If-None-Match` headers of `condition`.
fn condition_headers(condition: Option<&Condition>) -> (Option<String>, Option<String>) {
    match condition {
        None => (None, None),
        Some(Condition::Absent) => (None, Some("*".to_string())),
        Some(Condition::Matches(etag)) => (Some(etag.clone()), None),
    }
}

/// User metadata as the SDK wants it (`None` when empty, so no header is sent).
fn metadata_of(options: &PutOptions) -> Option<std::collections::HashMap<String, String>> {
    (!options.metadata.is_empty()).then(|| {
        options
            .metadata
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    })
}

#[async_trait]
impl ObjectStore for S3Store {
    async fn head(&self, key: &str) -> StoreResult<ObjectMeta> {
        let out = self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(classify)?;
        let metadata = out
            .metadata()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
                    .collect()
            })
            .unwrap_or_default();
        Ok(ObjectMeta {
            key: key.to_string(),
            size: size_of(out.content_length()),
            etag: out.e_tag().map(str::to_string),
            last_modified: to_system_time(out.last_modified()),
            headers: Some(ObjectHeaders {
                content_type: out.content_type().map(str::to_string),
                metadata,
            }),
        })
    }

    async fn get_range(
        &self,
        key: &str,
        range: Range<u64>,
        if_match: Option<&str>,
    ) -> StoreResult<Bytes> {
        let mut pieces = self.get_pieces(key, range, if_match, u64::MAX).await?;
        // One piece, unless the server sent more than asked for: keep the surplus,
        // for the caller to see the length is wrong.
        Ok(match pieces.len() {
            0 | 1 => pieces.pop().unwrap_or_default(),
            _ => pieces.concat().into(),
        })
    }

    async fn get_pieces(
        &self,
        key: &str,
        range: Range<u64>,
        if_match: Option<&str>,
        piece: u64,
    ) -> StoreResult<Vec<Bytes>> {
        if range.is_empty() {
            return Ok(Vec::new());
        }
        let mut pieces = Pieces::new(range.end - range.start, piece);
        // A body that breaks off is taken up again from the byte it reached, of
        // the same version of the object.
        let mut version = if_match.map(str::to_string);
        let mut fruitless = 0;
        loop {
            let from = range.start + pieces.received;
            let request = self
                .client
                .get_object()
                .bucket(&self.bucket)
                .key(key)
                .range(format!("bytes={from}-{}", range.end - 1))
                .set_if_match(version.clone())
                .send();
            let out = match tokio::time::timeout(self.stall, request).await {
                Ok(Ok(out)) => out,
                Ok(Err(e)) => {
                    return Err(match classify(e) {
                        // The version this read began with is gone: the caller
                        // asked for none in particular, so it may start again.
                        StoreError::PreconditionFailed if if_match.is_none() => {
                            StoreError::Unreachable("the object changed during the read".into())
                        }
                        e => e,
                    });
                }
                Err(_) => return Err(self.stalled()),
            };
            if version.is_none() {
                version = out.e_tag().map(str::to_string);
            }
            let before = pieces.received;
            let mut body = out.body;
            let broke = loop {
                match tokio::time::timeout(self.stall, body.try_next()).await {
                    Ok(Ok(Some(chunk))) => pieces.push(chunk),
                    Ok(Ok(None)) => break None,
                    Ok(Err(e)) => break Some(unanswered(&e)),
                    Err(_) => break Some(self.stalled()),
                }
            };
            // Every byte asked for came: what broke came after them.
            let Some(error) = broke.filter(|_| pieces.received < pieces.len) else {
                return Ok(pieces.finish());
            };
            fruitless = if pieces.received > before {
                0
            } else {
                fruitless + 1
            };
            if fruitless >= FRUITLESS_RESUMES {
                return Err(error);
            }
            tracing::debug!(
                "GET of {key} broke off at byte {} ({error}); taking it up from there",
                range.start + pieces.received
            );
        }
    }

    async fn list(&self, request: ListRequest<'_>) -> StoreResult<ListPage> {
        let out = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(request.prefix)
            .set_delimiter(request.delimiter.map(str::to_string))
            .set_continuation_token(request.continuation)
            .set_max_keys(request.max_keys)
            .send()
            .await
            .map_err(classify)?;
        let objects = out
            .contents()
            .iter()
            .filter_map(|o| {
                Some(ObjectMeta {
                    key: o.key()?.to_string(),
                    size: size_of(o.size()),
                    etag: o.e_tag().map(str::to_string),
                    last_modified: to_system_time(o.last_modified()),
                    headers: None,
                })
            })
            .collect();
        let prefixes = out
            .common_prefixes()
            .iter()
            .filter_map(|p| p.prefix().map(str::to_string))
            .collect();
        let next_token = if out.is_truncated().unwrap_or(false) {
            out.next_continuation_token().map(str::to_string)
        } else {
            None
        };
        Ok(ListPage {
            objects,
            prefixes,
            next_token,
        })
    }

    async fn put(
        &self,
        key: &str,
        body: Bytes,
        options: &PutOptions,
        condition: Option<&Condition>,
    ) -> StoreResult<String> {
        if self.checksums.load(Ordering::Relaxed) {
            let crc32c = Some(Crc32c::of(&body));
            match self.send_put(key, &body, options, condition, crc32c).await {
                Err(refused) if may_refuse_checksums(&refused) => {
                    let etag = self
                        .send_put(key, &body, options, condition, None)
                        .await
                        .map_err(classify)?;
                    self.without_checksums(&refused);
                    return Ok(etag);
                }
                result => return result.map_err(classify),
            }
        }
        self.send_put(key, &body, options, condition, None)
            .await
            .map_err(classify)
    }

    async fn copy(&self, from: &str, to: &str, options: &CopyOptions) -> StoreResult<String> {
        let mut request = self
            .client
            .copy_object()
            .bucket(&self.bucket)
            .key(to)
            .copy_source(copy_source(&self.bucket, from))
            .set_copy_source_if_match(options.if_match.clone());
        if let Some(replace) = &options.replace {
            request = request
                .metadata_directive(MetadataDirective::Replace)
                .set_content_type(replace.content_type.clone())
                .set_metadata(metadata_of(replace));
        }
        let out = request.send().await.map_err(classify)?;
        Ok(out
            .copy_object_result()
            .and_then(|r| r.e_tag())
            .unwrap_or_default()
            .to_string())
    }

    async fn delete(&self, key: &str) -> StoreResult<()> {
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(classify)?;
        Ok(())
    }

    async fn create_multipart(&self, key: &str, options: &PutOptions) -> StoreResult<NewUpload> {
        let mut crc32c = self.checksums.load(Ordering::Relaxed);
        let id = match self.send_create(key, options, crc32c).await {
            Err(refused) if crc32c && may_refuse_checksums(&refused) => {
                let id = self
                    .send_create(key, options, false)
                    .await
                    .map_err(classify)?;
                self.without_checksums(&refused);
                crc32c = false;
                id
            }
            result => result.map_err(classify)?,
        };
        if id.is_empty() {
            return Err(StoreError::Other(
                "CreateMultipartUpload returned no upload id".into(),
            ));
        }
        Ok(NewUpload { id, crc32c })
    }

    async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        number: i32,
        body: Bytes,
        crc32c: Option<Crc32c>,
    ) -> StoreResult<String> {
        let request = self
            .client
            .upload_part()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .part_number(number)
            .body(ByteStream::from(body))
            .set_checksum_crc32_c(crc32c.map(Crc32c::to_base64));
        let out = if crc32c.is_some() || self.tls {
            request.customize().disable_payload_signing().send().await
        } else {
            request.send().await
        }
        .map_err(classify)?;
        out.e_tag()
            .map(str::to_string)
            .ok_or_else(|| StoreError::Other(format!("UploadPart {number} returned no ETag")))
    }

    async fn upload_part_copy(
        &self,
        key: &str,
        upload_id: &str,
        number: i32,
        source: &str,
        range: Range<u64>,
        if_match: Option<&str>,
    ) -> StoreResult<PartTag> {
        let out = self
            .client
            .upload_part_copy()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .part_number(number)
            .copy_source(copy_source(&self.bucket, source))
            .copy_source_range(format!(
                "bytes={}-{}",
                range.start,
                range.end.saturating_sub(1)
            ))
            .set_copy_source_if_match(if_match.map(str::to_string))
            .send()
            .await
            .map_err(classify)?;
        let result = out.copy_part_result();
        let etag = result.and_then(|r| r.e_tag()).ok_or_else(|| {
            StoreError::Other(format!("UploadPartCopy {number} returned no ETag"))
        })?;
        Ok(PartTag {
            etag: etag.to_string(),
            // S3 gives the copy's checksum in an upload that has them (Garage 2.5
            // does not, and completes without).
            crc32c: result
                .and_then(|r| r.checksum_crc32_c())
                .and_then(Crc32c::from_base64),
        })
    }

    async fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: Vec<CompletedPart>,
        condition: Option<&Condition>,
    ) -> StoreResult<String> {
        let (if_match, if_none_match) = condition_headers(condition);
        let parts = parts
            .into_iter()
            .map(|p| {
                SdkCompletedPart::builder()
                    .part_number(p.number)
                    .e_tag(p.tag.etag)
                    .set_checksum_crc32_c(p.tag.crc32c.map(Crc32c::to_base64))
                    .build()
            })
            .collect();
        let out = self
            .client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .set_if_match(if_match)
            .set_if_none_match(if_none_match)
            .send()
            .await
            .map_err(classify)?;
        Ok(out.e_tag().unwrap_or_default().to_string())
    }

    async fn abort_multipart(&self, key: &str, upload_id: &str) -> StoreResult<()> {
        self.client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .send()
            .await
            .map_err(classify)?;
        Ok(())
    }

    async fn list_parts(&self, key: &str, upload_id: &str) -> StoreResult<Vec<ListedPart>> {
        let mut parts = Vec::new();
        let mut marker = None;
        loop {
            let out = self
                .client
                .list_parts()
                .bucket(&self.bucket)
                .key(key)
                .upload_id(upload_id)
                .set_part_number_marker(marker.take())
                .send()
                .await
                .map_err(classify)?;
            parts.extend(out.parts().iter().filter_map(|p| {
                Some(ListedPart {
                    number: p.part_number()?,
                    tag: PartTag {
                        etag: p.e_tag()?.to_string(),
                        crc32c: p.checksum_crc32_c().and_then(Crc32c::from_base64),
                    },
                    size: size_of(p.size()),
                })
            }));
            match out.next_part_number_marker() {
                Some(next) if out.is_truncated().unwrap_or(false) => {
                    marker = Some(next.to_string());
                }
                _ => return Ok(parts),
            }
        }
    }
}
