//! [`ObjectStore`] over aws-sdk-s3.

use std::ops::Range;
use std::time::SystemTime;

use async_trait::async_trait;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::{RequestChecksumCalculation, ResponseChecksumValidation};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{
    CompletedMultipartUpload, CompletedPart as SdkCompletedPart, MetadataDirective,
};
use bytes::{Bytes, BytesMut};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

use crate::aws::one_line;

use super::{
    CompletedPart, Condition, CopyOptions, ListPage, ListRequest, ListedPart, ObjectHeaders,
    ObjectMeta, ObjectStore, PutOptions, StoreError, StoreResult,
};

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
    /// Over TLS, bodies go unsigned: TLS guards them, and hashing them for the
    /// signature took a fifth of the CPU of a large copy. Over plain HTTP the
    /// signature is what guards them.
    unsigned_bodies: bool,
}

impl S3Store {
    /// A client with the AWS configuration (see [`crate::aws::load`]) and the
    /// settings given.
    pub fn new(sdk_config: &aws_config::SdkConfig, settings: &S3Settings) -> Self {
        let mut builder = aws_sdk_s3::config::Builder::from(sdk_config)
            .force_path_style(settings.force_path_style)
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
            // AWS itself is reached over https.
            unsigned_bodies: endpoint.is_none_or(|url| url.starts_with("https://")),
        }
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
                _ => StoreError::Other(format!(
                    "{} {message} (HTTP {status})",
                    code.unwrap_or("error")
                )),
            }
        }
        SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) => {
            StoreError::Unreachable(one_line(&err))
        }
        _ => StoreError::Other(one_line(&err)),
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
        let out = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .range(format!("bytes={}-{}", range.start, range.end - 1))
            .set_if_match(if_match.map(str::to_string))
            .send()
            .await
            .map_err(classify)?;
        // Straight into buffers of the pieces' sizes as the body arrives: one copy,
        // and no buffer holds the data twice.
        let mut left = range.end - range.start;
        let piece = piece.max(1);
        let mut pieces = Vec::with_capacity(usize::try_from(left.div_ceil(piece)).unwrap_or(0));
        let mut want = piece.min(left);
        let mut current = BytesMut::with_capacity(want as usize);
        let mut body = out.body;
        while let Some(mut chunk) = body
            .try_next()
            .await
            .map_err(|e| StoreError::Unreachable(one_line(&e)))?
        {
            while !chunk.is_empty() {
                let room = (want - current.len() as u64).min(chunk.len() as u64) as usize;
                current.extend_from_slice(&chunk.split_to(room));
                if current.len() as u64 == want {
                    pieces.push(std::mem::take(&mut current).freeze());
                    left -= want;
                    // Past the range (a server sending more than asked for): the
                    // rest goes in one more piece, which the caller finds too long.
                    (want, current) = match left {
                        0 => (u64::MAX, BytesMut::new()),
                        _ => (
                            piece.min(left),
                            BytesMut::with_capacity(piece.min(left) as usize),
                        ),
                    };
                }
            }
        }
        if !current.is_empty() {
            pieces.push(current.freeze());
        }
        Ok(pieces)
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
        let (if_match, if_none_match) = condition_headers(condition);
        let request = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .body(ByteStream::from(body))
            .set_content_type(options.content_type.clone())
            .set_metadata(metadata_of(options))
            .set_if_match(if_match)
            .set_if_none_match(if_none_match);
        let out = if self.unsigned_bodies {
            request.customize().disable_payload_signing().send().await
        } else {
            request.send().await
        }
        .map_err(classify)?;
        Ok(out.e_tag().unwrap_or_default().to_string())
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

    async fn create_multipart(&self, key: &str, options: &PutOptions) -> StoreResult<String> {
        let out = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .set_content_type(options.content_type.clone())
            .set_metadata(metadata_of(options))
            .send()
            .await
            .map_err(classify)?;
        out.upload_id()
            .map(str::to_string)
            .ok_or_else(|| StoreError::Other("CreateMultipartUpload returned no upload id".into()))
    }

    async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        number: i32,
        body: Bytes,
    ) -> StoreResult<String> {
        let request = self
            .client
            .upload_part()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .part_number(number)
            .body(ByteStream::from(body));
        let out = if self.unsigned_bodies {
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
    ) -> StoreResult<String> {
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
        out.copy_part_result()
            .and_then(|r| r.e_tag())
            .map(str::to_string)
            .ok_or_else(|| StoreError::Other(format!("UploadPartCopy {number} returned no ETag")))
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
                    .e_tag(p.etag)
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
                    etag: p.e_tag()?.to_string(),
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
