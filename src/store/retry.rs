//! An [`ObjectStore`] wrapper that makes a network that drops a request now and
//! then invisible to the filesystem: every request that fails in a way that may
//! pass (no connection, a reset, a stall, 5xx, 503 SlowDown, throttling) is made
//! again, after a growing delay with jitter, for as long as
//! [`RetrySettings::retry_for`] allows. The bound is time, not a count or a token
//! bucket: a burst of faults costs delay, never an error, while the network
//! answers at all.
//!
//! A retried request may meet the effect of an earlier attempt whose answer was
//! lost (the server acted, the answer never came). That is recognised here, by
//! looking at the object, never by the retry's status alone:
//! - PutObject with a condition answered 412: the object has our bytes' ETag;
//! - CompleteMultipartUpload answered NoSuchUpload, 412 or 409: the object has
//!   the ETag our parts give;
//! - CopyObject of metadata answered 412: the object has the metadata we set;
//! - DeleteObject and AbortMultipartUpload answered 404: gone, as asked.
//!
//! Anything else (another writer's change) is returned as the error it is.

use std::future::Future;
use std::ops::Range;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::time::Instant;

use super::{
    CompletedPart, Condition, CopyOptions, Crc32c, ListPage, ListRequest, ListedPart, NewUpload,
    ObjectMeta, ObjectStore, Op, PartTag, PutOptions, StoreError, StoreResult, etag,
};

/// How long requests are retried and how long one attempt may make no progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetrySettings {
    /// Retries stop once this much time has passed since the first attempt.
    pub retry_for: Duration,
    /// An attempt that makes no progress for this long is abandoned and retried.
    pub request_timeout: Duration,
}

impl Default for RetrySettings {
    fn default() -> Self {
        Self {
            retry_for: Duration::from_secs(60),
            request_timeout: Duration::from_secs(30),
        }
    }
}

/// Delay before the first retry; each later one is drawn between this and
/// three times the one before (decorrelated jitter), up to [`MAX_DELAY`].
const FIRST_DELAY: Duration = Duration::from_millis(50);
const MAX_DELAY: Duration = Duration::from_secs(2);
/// Attempts made however long they took: one attempt that stalls past the retry
/// time (an upload's limit grows with its size) still gets one more.
const MIN_ATTEMPTS: u32 = 2;
/// A body the server finds damaged this many times, sent unchanged each time,
/// does not match its own checksum: that will not pass, and is reported as it is
/// (not as whatever fault the last of a minute's attempts met).
const DAMAGED_ATTEMPTS: u32 = 3;
/// The slowest rate at which a body is still taken to be moving: an attempt
/// that carries one gets the request timeout plus the body's time at this rate.
const SLOWEST_RATE: u64 = 64 << 10;

pub struct RetryingStore<S> {
    inner: S,
    settings: RetrySettings,
}

/// How a request ended, and whether an earlier attempt of it failed first (so
/// that its effect may be what the last attempt met).
struct Ended<T> {
    result: StoreResult<T>,
    retried: bool,
}

impl<S: ObjectStore> RetryingStore<S> {
    pub fn new(inner: S, settings: RetrySettings) -> Self {
        Self { inner, settings }
    }

    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// Time an attempt that carries `bytes` (either way) may take.
    fn attempt_limit(&self, bytes: u64) -> Duration {
        self.settings.request_timeout + Duration::from_secs(bytes / SLOWEST_RATE)
    }

    /// Run `attempt` until it succeeds, fails in a way that will not pass, or
    /// the retry time is spent.
    async fn run<T, F, Fut>(&self, op: Op, key: &str, bytes: u64, mut attempt: F) -> Ended<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = StoreResult<T>>,
    {
        let started = Instant::now();
        let limit = self.attempt_limit(bytes);
        let mut delay = FIRST_DELAY;
        let mut attempts = 0u32;
        let mut damaged = 0u32;
        loop {
            attempts += 1;
            let result = match tokio::time::timeout(limit, attempt()).await {
                Ok(result) => result,
                Err(_) => Err(StoreError::Unreachable(format!(
                    "no answer within {} s",
                    limit.as_secs()
                ))),
            };
            let retried = attempts > 1;
            let error = match result {
                Err(e) if e.is_transient() => e,
                result => {
                    if retried {
                        tracing::debug!("{} of {key}: done after {attempts} attempts", op.name());
                    }
                    return Ended { result, retried };
                }
            };
            if matches!(error, StoreError::Damaged(_)) {
                damaged += 1;
            }
            let spent = started.elapsed();
            let spent_all = spent >= self.settings.retry_for && attempts >= MIN_ATTEMPTS;
            if spent_all || damaged >= DAMAGED_ATTEMPTS {
                tracing::warn!(
                    "{} of {key} failed after {attempts} attempts in {:.1} s: {error}",
                    op.name(),
                    spent.as_secs_f64()
                );
                return Ended {
                    result: Err(error),
                    retried,
                };
            }
            // The last attempt goes when the retry time ends (at once, if one
            // attempt outlasted it).
            let wait = delay.min(self.settings.retry_for.saturating_sub(spent));
            tracing::debug!(
                "{} of {key} failed ({error}); again in {} ms",
                op.name(),
                wait.as_millis()
            );
            tokio::time::sleep(wait).await;
            delay = next_delay(delay);
        }
    }

    /// A retried write was refused: does the object at `key` look like what it
    /// would have made (`ours`)? Then an earlier attempt made it, and its answer
    /// was lost: the write succeeded, with the object's ETag.
    async fn made_by_earlier_attempt(
        &self,
        key: &str,
        error: StoreError,
        ours: impl Fn(&ObjectMeta) -> bool,
    ) -> StoreResult<String> {
        match self.head(key).await {
            Ok(head) if ours(&head) => {
                tracing::info!("{key}: an earlier attempt's answer was lost; S3 has what it sent");
                Ok(head.etag.unwrap_or_default())
            }
            Ok(_) | Err(StoreError::NotFound) => Err(error),
            Err(e) => Err(e),
        }
    }
}

/// The delay after `delay`: random between the first delay and three times
/// `delay`, at most [`MAX_DELAY`].
fn next_delay(delay: Duration) -> Duration {
    let low = FIRST_DELAY.as_millis() as u64;
    let high = (delay.as_millis() as u64 * 3).max(low + 1);
    Duration::from_millis(fastrand::u64(low..high)).min(MAX_DELAY)
}

#[async_trait]
impl<S: ObjectStore> ObjectStore for RetryingStore<S> {
    fn retries_itself(&self) -> bool {
        true
    }

    async fn head(&self, key: &str) -> StoreResult<ObjectMeta> {
        self.run(Op::Head, key, 0, || self.inner.head(key))
            .await
            .result
    }

    async fn get_range(
        &self,
        key: &str,
        range: Range<u64>,
        if_match: Option<&str>,
    ) -> StoreResult<Bytes> {
        let bytes = range.end.saturating_sub(range.start);
        self.run(Op::Get, key, bytes, || {
            self.inner.get_range(key, range.clone(), if_match)
        })
        .await
        .result
    }

    async fn get_pieces(
        &self,
        key: &str,
        range: Range<u64>,
        if_match: Option<&str>,
        piece: u64,
    ) -> StoreResult<Vec<Bytes>> {
        let bytes = range.end.saturating_sub(range.start);
        self.run(Op::Get, key, bytes, || {
            self.inner.get_pieces(key, range.clone(), if_match, piece)
        })
        .await
        .result
    }

    async fn list(&self, request: ListRequest<'_>) -> StoreResult<ListPage> {
        self.run(Op::List, request.prefix, 0, || {
            self.inner.list(request.clone())
        })
        .await
        .result
    }

    async fn put(
        &self,
        key: &str,
        body: Bytes,
        options: &PutOptions,
        condition: Option<&Condition>,
    ) -> StoreResult<String> {
        let ended = self
            .run(Op::Put, key, body.len() as u64, || {
                self.inner.put(key, body.clone(), options, condition)
            })
            .await;
        match ended.result {
            Err(e @ StoreError::PreconditionFailed) if ended.retried => {
                let expected = etag::of_body(&body);
                self.made_by_earlier_attempt(key, e, |head| {
                    head.etag.as_deref() == Some(expected.as_str())
                })
                .await
            }
            result => result,
        }
    }

    async fn copy(&self, from: &str, to: &str, options: &CopyOptions) -> StoreResult<String> {
        let ended = self
            .run(Op::Copy, to, 0, || self.inner.copy(from, to, options))
            .await;
        match (ended.result, &options.replace) {
            // A copy of metadata onto the object itself changes its ETag when the
            // object was stored in parts: the retry's If-Match then fails.
            (Err(e @ StoreError::PreconditionFailed), Some(replace))
                if ended.retried && from == to =>
            {
                self.made_by_earlier_attempt(to, e, |head| {
                    head.headers.as_ref().is_some_and(|h| {
                        h.metadata == replace.metadata
                            && (replace.content_type.is_none()
                                || h.content_type == replace.content_type)
                    })
                })
                .await
            }
            (result, _) => result,
        }
    }

    async fn delete(&self, key: &str) -> StoreResult<()> {
        let ended = self
            .run(Op::Delete, key, 0, || self.inner.delete(key))
            .await;
        match ended.result {
            Err(StoreError::NotFound) if ended.retried => Ok(()),
            result => result,
        }
    }

    async fn create_multipart(&self, key: &str, options: &PutOptions) -> StoreResult<NewUpload> {
        // An upload whose creation's answer was lost is left behind, unused; S3's
        // lifecycle rules (or `AbortIncompleteMultipartUpload`) clear such.
        self.run(Op::CreateMultipart, key, 0, || {
            self.inner.create_multipart(key, options)
        })
        .await
        .result
    }

    async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        number: i32,
        body: Bytes,
        crc32c: Option<Crc32c>,
    ) -> StoreResult<String> {
        self.run(Op::UploadPart, key, body.len() as u64, || {
            self.inner
                .upload_part(key, upload_id, number, body.clone(), crc32c)
        })
        .await
        .result
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
        let bytes = range.end.saturating_sub(range.start);
        self.run(Op::UploadPartCopy, key, bytes, || {
            self.inner
                .upload_part_copy(key, upload_id, number, source, range.clone(), if_match)
        })
        .await
        .result
    }

    async fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: Vec<CompletedPart>,
        condition: Option<&Condition>,
    ) -> StoreResult<String> {
        let ended = self
            .run(Op::CompleteMultipart, key, 0, || {
                self.inner
                    .complete_multipart(key, upload_id, parts.clone(), condition)
            })
            .await;
        match ended.result {
            Err(
                e @ (StoreError::NotFound | StoreError::PreconditionFailed | StoreError::Conflict),
            ) if ended.retried => {
                let etags: Vec<&str> = parts.iter().map(|p| p.tag.etag.as_str()).collect();
                match etag::of_parts(&etags) {
                    Some(expected) => {
                        self.made_by_earlier_attempt(key, e, |head| {
                            head.etag.as_deref() == Some(expected.as_str())
                        })
                        .await
                    }
                    None => Err(e),
                }
            }
            result => result,
        }
    }

    async fn abort_multipart(&self, key: &str, upload_id: &str) -> StoreResult<()> {
        let ended = self
            .run(Op::AbortMultipart, key, 0, || {
                self.inner.abort_multipart(key, upload_id)
            })
            .await;
        match ended.result {
            Err(StoreError::NotFound) if ended.retried => Ok(()),
            result => result,
        }
    }

    async fn list_parts(&self, key: &str, upload_id: &str) -> StoreResult<Vec<ListedPart>> {
        self.run(Op::ListParts, key, 0, || {
            self.inner.list_parts(key, upload_id)
        })
        .await
        .result
    }
}

#[cfg(test)]
mod tests;
