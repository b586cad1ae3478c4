//! An in-memory [`ObjectStore`] with fault injection, for unit tests.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use tokio::sync::{Semaphore, watch};

pub use super::Op;
use super::etag;
use super::{
    CompletedPart, Condition, CopyOptions, Crc32c, ListPage, ListRequest, ListedPart, NewUpload,
    ObjectHeaders, ObjectMeta, ObjectStore, PartTag, PutOptions, StoreError, StoreResult,
    UserMetadata,
};

#[derive(Debug, Clone)]
pub struct StoredObject {
    pub body: Bytes,
    pub etag: String,
    pub last_modified: SystemTime,
    pub content_type: Option<String>,
    pub metadata: UserMetadata,
}

impl StoredObject {
    fn meta(&self, key: &str, headers: bool) -> ObjectMeta {
        ObjectMeta {
            key: key.to_string(),
            size: self.body.len() as u64,
            etag: Some(self.etag.clone()),
            last_modified: Some(self.last_modified),
            headers: headers.then(|| ObjectHeaders {
                content_type: self.content_type.clone(),
                metadata: self.metadata.clone(),
            }),
        }
    }
}

#[derive(Default)]
struct Upload {
    key: String,
    options: PutOptions,
    /// Created with CRC32C checksums: parts must carry theirs, as S3 wants.
    crc32c: bool,
    /// Parts by number: ETag, CRC32C and body.
    parts: BTreeMap<i32, (PartTag, Bytes)>,
}

#[derive(Default)]
pub struct MemoryStore {
    objects: Mutex<BTreeMap<String, StoredObject>>,
    uploads: Mutex<HashMap<String, Upload>>,
    faults: Mutex<HashMap<Op, Vec<StoreError>>>,
    /// Operations held until their gate opens (see [`MemoryStore::hold`]).
    gates: Mutex<HashMap<Op, Arc<GateState>>>,
    counter: AtomicU64,
    calls: Mutex<HashMap<Op, u64>>,
    /// Accept conditional writes without checking them, as Garage 2.5 does.
    ignore_conditions: std::sync::atomic::AtomicBool,
    /// Create multipart uploads without checksums (as a server that has none,
    /// or an earlier version of s3mount, did).
    no_checksums: std::sync::atomic::AtomicBool,
    /// Calls that take effect but whose answer is lost (a timeout after the
    /// server acted), by operation.
    lost_answers: Mutex<HashMap<Op, usize>>,
    /// Bytes GETs returned.
    bytes_read: AtomicU64,
    /// How late every call answers (see [`MemoryStore::set_latency`]).
    latency: Mutex<std::time::Duration>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Answer every call `latency` late, as over a network (on tokio's paused
    /// clock, without a real wait).
    pub fn set_latency(&self, latency: std::time::Duration) {
        *lock(&self.latency) = latency;
    }

    /// Make the next call of `op` fail with `error` (queued: several calls fail in turn).
    pub fn fail_next(&self, op: Op, error: StoreError) {
        lock(&self.faults).entry(op).or_default().push(error);
    }

    /// Hold every call of `op` (counted, but not carried out) until the returned
    /// gate is opened, so a test can act while the call is under way.
    pub fn hold(&self, op: Op) -> Gate {
        let gate = Arc::new(GateState {
            open: Semaphore::new(0),
            waiting: watch::channel(0).0,
        });
        lock(&self.gates).insert(op, gate.clone());
        Gate(gate)
    }

    /// Take conditional writes without checking their conditions (what Garage 2.5
    /// does), or check them again (what AWS S3 does, the default).
    pub fn ignore_conditions(&self, ignore: bool) {
        self.ignore_conditions.store(ignore, Ordering::Relaxed);
    }

    /// Create the next multipart uploads without checksums (`true`), or with.
    pub fn no_checksums(&self, none: bool) {
        self.no_checksums.store(none, Ordering::Relaxed);
    }

    /// The multipart uploads started and neither completed nor aborted, by id.
    pub fn upload_ids(&self) -> Vec<String> {
        lock(&self.uploads).keys().cloned().collect()
    }

    /// The next call of `op` takes effect, but its caller gets an error, as when
    /// the connection drops after the server acted.
    pub fn lose_next_answer(&self, op: Op) {
        *lock(&self.lost_answers).entry(op).or_default() += 1;
    }

    /// `result`, unless the answer to this call of `op` is to be lost.
    fn answer<T>(&self, op: Op, result: StoreResult<T>) -> StoreResult<T> {
        let mut lost = lock(&self.lost_answers);
        match lost.get_mut(&op) {
            Some(n) if *n > 0 && result.is_ok() => {
                *n -= 1;
                Err(StoreError::Unreachable("the answer was lost".into()))
            }
            _ => result,
        }
    }

    /// Withdraw every fault not yet met.
    pub fn clear_faults(&self) {
        lock(&self.faults).clear();
    }

    /// Faults queued for `op` and not yet met by a call.
    pub fn pending_faults(&self, op: Op) -> usize {
        lock(&self.faults).get(&op).map_or(0, Vec::len)
    }

    /// How many times `op` was called (failed calls included).
    /// Bytes all GETs returned so far.
    pub fn bytes_read(&self) -> u64 {
        self.bytes_read.load(Ordering::Relaxed)
    }

    pub fn calls(&self, op: Op) -> u64 {
        lock(&self.calls).get(&op).copied().unwrap_or(0)
    }

    pub fn object(&self, key: &str) -> Option<StoredObject> {
        lock(&self.objects).get(key).cloned()
    }

    pub fn keys(&self) -> Vec<String> {
        lock(&self.objects).keys().cloned().collect()
    }

    /// Number of multipart uploads started and neither completed nor aborted.
    pub fn open_uploads(&self) -> usize {
        lock(&self.uploads).len()
    }

    /// Delete an object as another S3 client would.
    pub fn remove(&self, key: &str) {
        lock(&self.objects).remove(key);
    }

    /// Put an object as another S3 client would.
    pub fn insert(&self, key: &str, body: impl Into<Bytes>) {
        self.insert_with(key, body, UserMetadata::new());
    }

    /// Put an object with user metadata, as another S3 client would.
    pub fn insert_with(&self, key: &str, body: impl Into<Bytes>, metadata: UserMetadata) {
        let body = body.into();
        let etag = etag::of_body(&body);
        self.store(key, body, etag, None, metadata);
    }

    /// Fail unless the object at `key` meets `condition` (when conditions are
    /// checked).
    fn check(&self, key: &str, condition: Option<&Condition>) -> StoreResult<()> {
        let Some(condition) = condition else {
            return Ok(());
        };
        if self.ignore_conditions.load(Ordering::Relaxed) {
            return Ok(());
        }
        let objects = lock(&self.objects);
        let etag = objects.get(key).map(|o| o.etag.as_str());
        if condition.holds_for(etag) {
            Ok(())
        } else {
            Err(StoreError::PreconditionFailed)
        }
    }

    fn store(
        &self,
        key: &str,
        body: Bytes,
        etag: String,
        content_type: Option<String>,
        metadata: UserMetadata,
    ) {
        lock(&self.objects).insert(
            key.to_string(),
            StoredObject {
                body,
                etag,
                last_modified: SystemTime::now(),
                content_type,
                metadata,
            },
        );
    }

    async fn enter(&self, op: Op) -> StoreResult<()> {
        *lock(&self.calls).entry(op).or_default() += 1;
        let latency = *lock(&self.latency);
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        let gate = lock(&self.gates).get(&op).cloned();
        if let Some(gate) = gate {
            gate.waiting.send_modify(|n| *n += 1);
            let _ = gate.open.acquire().await;
        }
        let mut faults = lock(&self.faults);
        match faults.get_mut(&op) {
            Some(queue) if !queue.is_empty() => Err(queue.remove(0)),
            _ => Ok(()),
        }
    }

    /// The object `key`, if it exists and (when asked) still has ETag `if_match`.
    fn source(&self, key: &str, if_match: Option<&str>) -> StoreResult<StoredObject> {
        let o = self.object(key).ok_or(StoreError::NotFound)?;
        if if_match.is_some_and(|etag| etag != o.etag) {
            return Err(StoreError::PreconditionFailed);
        }
        Ok(o)
    }
}

impl MemoryStore {
    /// Store a part; `sent` is the CRC32C a part sent carries (`None` for a
    /// copy, whose checksum the store computes, as S3 does).
    fn add_part(
        &self,
        key: &str,
        upload_id: &str,
        number: i32,
        body: Bytes,
        sent: Option<Option<Crc32c>>,
    ) -> StoreResult<PartTag> {
        let mut uploads = lock(&self.uploads);
        let upload = uploads
            .get_mut(upload_id)
            .filter(|u| u.key == key)
            .ok_or(StoreError::NotFound)?;
        let crc32c = upload.crc32c.then(|| Crc32c::of(&body));
        // What S3 answers a part whose checksum is missing, unwanted or wrong.
        match (sent, crc32c) {
            (Some(Some(_)), None) => {
                return Err(StoreError::Other(
                    "InvalidRequest: a checksum in an upload created without".into(),
                ));
            }
            (Some(None), Some(_)) => {
                return Err(StoreError::Other(
                    "InvalidRequest: no checksum in an upload created with".into(),
                ));
            }
            (Some(Some(sent)), Some(crc32c)) if sent != crc32c => {
                return Err(StoreError::Damaged(format!(
                    "part {number} carries {sent:?}, its bytes give {crc32c:?}"
                )));
            }
            _ => {}
        }
        let tag = PartTag {
            etag: etag::of_body(&body),
            crc32c,
        };
        upload.parts.insert(number, (tag.clone(), body));
        Ok(tag)
    }
}

struct GateState {
    open: Semaphore,
    /// Calls that reached the gate.
    waiting: watch::Sender<usize>,
}

/// Opens (when dropped, or with [`Gate::open`]) the calls held by [`MemoryStore::hold`].
pub struct Gate(Arc<GateState>);

impl Gate {
    pub fn open(self) {}

    /// Wait until `n` calls have reached the gate.
    pub async fn reached(&self, n: usize) {
        let mut rx = self.0.waiting.subscribe();
        let _ = rx.wait_for(|waiting| *waiting >= n).await;
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.0.open.close();
    }
}

/// A poisoned lock only means another test thread panicked; the data is still usable.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[async_trait]
impl ObjectStore for MemoryStore {
    async fn head(&self, key: &str) -> StoreResult<ObjectMeta> {
        self.enter(Op::Head).await?;
        if key.is_empty() {
            // What S3 answers: a HEAD of the bucket itself is not a HeadObject.
            return Err(StoreError::Other("empty key".into()));
        }
        let objects = lock(&self.objects);
        let o = objects.get(key).ok_or(StoreError::NotFound)?;
        Ok(o.meta(key, true))
    }

    async fn get_range(
        &self,
        key: &str,
        range: Range<u64>,
        if_match: Option<&str>,
    ) -> StoreResult<Bytes> {
        self.enter(Op::Get).await?;
        let objects = lock(&self.objects);
        let o = objects.get(key).ok_or(StoreError::NotFound)?;
        if if_match.is_some_and(|etag| etag != o.etag) {
            return Err(StoreError::PreconditionFailed);
        }
        let len = o.body.len() as u64;
        if range.is_empty() {
            return Ok(Bytes::new());
        }
        if range.start >= len {
            // What S3 answers: 416 InvalidRange.
            return Err(StoreError::Other("InvalidRange (HTTP 416)".into()));
        }
        let end = range.end.min(len) as usize;
        self.bytes_read
            .fetch_add((end - range.start as usize) as u64, Ordering::Relaxed);
        Ok(o.body.slice(range.start as usize..end))
    }

    async fn list(&self, request: ListRequest<'_>) -> StoreResult<ListPage> {
        self.enter(Op::List).await?;
        let max = request.max_keys.unwrap_or(1000).max(1) as usize;
        let objects = lock(&self.objects);
        let mut page = ListPage::default();
        let mut count = 0;
        // Continuation tokens are simply the last key or prefix returned.
        let start = request.continuation.clone().unwrap_or_default();
        // The last entry returned, and whether it was a common prefix.
        let mut last: Option<(String, bool)> = None;
        for (key, o) in objects.range(request.prefix.to_string()..) {
            if !key.starts_with(request.prefix) {
                break;
            }
            if !start.is_empty() && key.as_str() <= start.as_str() {
                continue;
            }
            let rest = &key[request.prefix.len()..];
            let entry = match request.delimiter.and_then(|d| rest.find(d).map(|i| (d, i))) {
                Some((d, i)) => {
                    let prefix = format!("{}{}", request.prefix, &rest[..i + d.len()]);
                    if page.prefixes.last() == Some(&prefix) || prefix.as_str() <= start.as_str() {
                        continue;
                    }
                    page.prefixes.push(prefix.clone());
                    (prefix, true)
                }
                None => {
                    page.objects.push(o.meta(key, false));
                    (key.clone(), false)
                }
            };
            count += 1;
            last = Some(entry);
            if count == max {
                break;
            }
        }
        if count == max
            && let Some((last, is_prefix)) = last
        {
            // Only a page that is full can have a next page: one with a key after
            // the last entry (after every key under it, for a common prefix).
            let more = objects
                .range::<str, _>((
                    std::ops::Bound::Excluded(last.as_str()),
                    std::ops::Bound::Unbounded,
                ))
                .any(|(k, _)| {
                    k.starts_with(request.prefix) && !(is_prefix && k.starts_with(&last))
                });
            if more {
                page.next_token = Some(last);
            }
        }
        Ok(page)
    }

    async fn put(
        &self,
        key: &str,
        body: Bytes,
        options: &PutOptions,
        condition: Option<&Condition>,
    ) -> StoreResult<String> {
        self.enter(Op::Put).await?;
        self.check(key, condition)?;
        let etag = etag::of_body(&body);
        self.store(
            key,
            body,
            etag.clone(),
            options.content_type.clone(),
            options.metadata.clone(),
        );
        self.answer(Op::Put, Ok(etag))
    }

    async fn copy(&self, from: &str, to: &str, options: &CopyOptions) -> StoreResult<String> {
        self.enter(Op::Copy).await?;
        let source = self.source(from, options.if_match.as_deref())?;
        let (content_type, metadata) = match &options.replace {
            Some(r) => (r.content_type.clone(), r.metadata.clone()),
            None => (source.content_type, source.metadata),
        };
        let etag = etag::of_body(&source.body);
        self.store(to, source.body, etag.clone(), content_type, metadata);
        self.answer(Op::Copy, Ok(etag))
    }

    async fn delete(&self, key: &str) -> StoreResult<()> {
        self.enter(Op::Delete).await?;
        lock(&self.objects).remove(key);
        self.answer(Op::Delete, Ok(()))
    }

    async fn create_multipart(&self, key: &str, options: &PutOptions) -> StoreResult<NewUpload> {
        self.enter(Op::CreateMultipart).await?;
        let id = format!("upload-{}", self.counter.fetch_add(1, Ordering::Relaxed));
        let crc32c = !self.no_checksums.load(Ordering::Relaxed);
        lock(&self.uploads).insert(
            id.clone(),
            Upload {
                key: key.to_string(),
                options: options.clone(),
                crc32c,
                parts: BTreeMap::new(),
            },
        );
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
        self.enter(Op::UploadPart).await?;
        let tag = self.add_part(key, upload_id, number, body, Some(crc32c));
        self.answer(Op::UploadPart, tag.map(|t| t.etag))
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
        self.enter(Op::UploadPartCopy).await?;
        let body = self.source(source, if_match)?.body;
        if range.end > body.len() as u64 || range.is_empty() {
            return Err(StoreError::Other("InvalidRange".into()));
        }
        self.add_part(
            key,
            upload_id,
            number,
            body.slice(range.start as usize..range.end as usize),
            None,
        )
    }

    async fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: Vec<CompletedPart>,
        condition: Option<&Condition>,
    ) -> StoreResult<String> {
        self.enter(Op::CompleteMultipart).await?;
        self.check(key, condition)?;
        let mut uploads = lock(&self.uploads);
        let upload = uploads
            .get(upload_id)
            .filter(|u| u.key == key)
            .ok_or(StoreError::NotFound)?;
        let mut body = BytesMut::new();
        for part in &parts {
            let data = match upload.parts.get(&part.number) {
                // S3 wants the checksum of each part of an upload that has them.
                Some((tag, data)) if *tag == part.tag => data,
                // What S3 answers for a part not sent, or sent again since; the
                // upload stays, to be completed right or aborted.
                _ => return Err(StoreError::Other(format!("InvalidPart {}", part.number))),
            };
            body.extend_from_slice(data);
        }
        let Some(upload) = uploads.remove(upload_id) else {
            return Err(StoreError::NotFound);
        };
        drop(uploads);
        let etags: Vec<&str> = parts.iter().map(|p| p.tag.etag.as_str()).collect();
        let etag = etag::of_parts(&etags)
            .ok_or_else(|| StoreError::Other("a part's ETag is not an MD5".into()))?;
        self.store(
            key,
            body.freeze(),
            etag.clone(),
            upload.options.content_type,
            upload.options.metadata,
        );
        self.answer(Op::CompleteMultipart, Ok(etag))
    }

    async fn abort_multipart(&self, _key: &str, upload_id: &str) -> StoreResult<()> {
        self.enter(Op::AbortMultipart).await?;
        match lock(&self.uploads).remove(upload_id) {
            Some(_) => self.answer(Op::AbortMultipart, Ok(())),
            // What S3 answers for an upload completed or aborted already.
            None => Err(StoreError::NotFound),
        }
    }

    async fn list_parts(&self, key: &str, upload_id: &str) -> StoreResult<Vec<ListedPart>> {
        self.enter(Op::ListParts).await?;
        let uploads = lock(&self.uploads);
        let upload = uploads
            .get(upload_id)
            .filter(|u| u.key == key)
            .ok_or(StoreError::NotFound)?;
        Ok(upload
            .parts
            .iter()
            .map(|(number, (tag, body))| ListedPart {
                number: *number,
                tag: tag.clone(),
                size: body.len() as u64,
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn list_all(store: &MemoryStore, prefix: &str, max: i32) -> (Vec<String>, Vec<String>) {
        let (mut keys, mut prefixes) = (Vec::new(), Vec::new());
        let mut token = None;
        loop {
            let page = store
                .list(ListRequest {
                    prefix,
                    delimiter: Some("/"),
                    continuation: token,
                    max_keys: Some(max),
                })
                .await
                .unwrap();
            keys.extend(page.objects.into_iter().map(|o| o.key));
            prefixes.extend(page.prefixes);
            token = page.next_token;
            if token.is_none() {
                return (keys, prefixes);
            }
        }
    }

    #[tokio::test]
    async fn listing_with_delimiter_pages_through_keys_and_prefixes() {
        let store = MemoryStore::new();
        for key in ["a", "b/1", "b/2", "b/c/3", "c", "d/", "e/x"] {
            store.insert(key, "x");
        }
        for max in [1, 2, 1000] {
            let (keys, prefixes) = list_all(&store, "", max).await;
            assert_eq!(keys, ["a", "c"], "page size {max}");
            assert_eq!(prefixes, ["b/", "d/", "e/"], "page size {max}");
        }
        let (keys, prefixes) = list_all(&store, "b/", 1).await;
        assert_eq!(keys, ["b/1", "b/2"]);
        assert_eq!(prefixes, ["b/c/"]);
    }

    #[tokio::test]
    async fn pieces_split_a_range_at_piece_boundaries() {
        let store = MemoryStore::new();
        let data: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
        store.insert("k", data.clone());
        let pieces = store.get_pieces("k", 100..750, None, 256).await.unwrap();
        let lens: Vec<usize> = pieces.iter().map(|p| p.len()).collect();
        assert_eq!(lens, [256, 256, 138]);
        assert_eq!(pieces.concat(), data[100..750]);
        assert!(
            store
                .get_pieces("k", 5..5, None, 256)
                .await
                .unwrap()
                .is_empty()
        );
    }

    #[tokio::test]
    async fn injected_faults_fail_calls_in_turn() {
        let store = MemoryStore::new();
        store.insert("k", "v");
        store.fail_next(Op::Head, StoreError::Unreachable("down".into()));
        assert!(matches!(
            store.head("k").await,
            Err(StoreError::Unreachable(_))
        ));
        assert_eq!(store.head("k").await.unwrap().size, 1);
        assert_eq!(store.calls(Op::Head), 2);
    }
}
