//! An [`ObjectStore`] wrapper that counts the requests made through it, so that a
//! mount can say at unmount how many S3 requests it made and how many bytes its
//! GETs brought (the benchmark and the tests read it), and follows the uploads
//! under way, so that `s3mount status` can show the bytes S3 has of each.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;

use super::{
    CompletedPart, Condition, CopyOptions, Crc32c, ListPage, ListRequest, ListedPart, NewUpload,
    ObjectMeta, ObjectStore, Op, PartTag, PutOptions, StoreResult,
};

/// Uploads followed at once; past this, a new one is not followed (its bytes
/// still count in the totals).
const FOLLOWED: usize = 10_000;

/// An upload under way: a multipart upload from its creation to its completion
/// or abort, or one PutObject.
struct Sending {
    key: String,
    /// Bytes S3 has confirmed.
    sent: u64,
    started: Instant,
}

/// Follow upload `id` of `key` from now, within [`FOLLOWED`].
fn follow_in(sending: &mut HashMap<String, Sending>, id: String, key: &str) {
    if sending.len() < FOLLOWED {
        sending.insert(
            id,
            Sending {
                key: key.to_string(),
                sent: 0,
                started: Instant::now(),
            },
        );
    }
}

pub struct CountingStore<S> {
    inner: S,
    counts: [AtomicU64; Op::ALL.len()],
    received: AtomicU64,
    sent: AtomicU64,
    /// By upload id, or `put N` for a PutObject.
    sending: Mutex<HashMap<String, Sending>>,
    puts: AtomicU64,
}

impl<S: ObjectStore> CountingStore<S> {
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            counts: Default::default(),
            received: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            sending: Mutex::new(HashMap::new()),
            puts: AtomicU64::new(0),
        }
    }

    fn sending(&self) -> std::sync::MutexGuard<'_, HashMap<String, Sending>> {
        self.sending.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn follow(&self, id: String, key: &str) {
        follow_in(&mut self.sending(), id, key);
    }

    /// S3 has `bytes` more of upload `id` of `key` (one an earlier run began,
    /// and this one resumes, is followed from its first part).
    fn confirmed(&self, id: &str, key: &str, bytes: u64) {
        self.sent.fetch_add(bytes, Ordering::Relaxed);
        crate::metrics::bytes_sent(bytes);
        let mut sending = self.sending();
        if !sending.contains_key(id) {
            follow_in(&mut sending, id.to_string(), key);
        }
        if let Some(s) = sending.get_mut(id) {
            s.sent += bytes;
        }
    }

    /// The uploads under way by key: bytes S3 has confirmed, and seconds since
    /// the first began.
    pub fn uploads(&self) -> HashMap<String, (u64, f64)> {
        let mut by_key: HashMap<String, (u64, f64)> = HashMap::new();
        for s in self.sending().values() {
            let entry = by_key.entry(s.key.clone()).or_default();
            entry.0 += s.sent;
            entry.1 = entry.1.max(s.started.elapsed().as_secs_f64());
        }
        by_key
    }

    /// Requests made so far, by kind (those made at least once).
    pub fn requests(&self) -> Vec<(&'static str, u64)> {
        Op::ALL
            .iter()
            .map(|op| (op.name(), self.calls(*op)))
            .filter(|(_, n)| *n > 0)
            .collect()
    }

    /// Bytes sent in PutObject and UploadPart requests S3 confirmed, and bytes
    /// received from GETs.
    pub fn bytes(&self) -> (u64, u64) {
        (
            self.sent.load(Ordering::Relaxed),
            self.received.load(Ordering::Relaxed),
        )
    }

    /// `result` of a request of kind `op`, counted by outcome for the metrics.
    fn ended<T>(op: Op, result: StoreResult<T>) -> StoreResult<T> {
        crate::metrics::s3_request(op.name(), result.is_ok());
        result
    }

    fn count(&self, op: Op) {
        if let Some(i) = Op::ALL.iter().position(|o| *o == op) {
            self.counts[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn calls(&self, op: Op) -> u64 {
        Op::ALL
            .iter()
            .position(|o| *o == op)
            .map_or(0, |i| self.counts[i].load(Ordering::Relaxed))
    }

    /// `S3 requests: 12 (HeadObject 3, GetObject 9), 9437184 bytes received`: the
    /// total and every kind made, and the bytes of the GETs.
    pub fn summary(&self) -> String {
        let made = self.requests();
        let total: u64 = made.iter().map(|(_, n)| n).sum();
        let parts: Vec<String> = made.iter().map(|(name, n)| format!("{name} {n}")).collect();
        format!(
            "S3 requests: {total} ({}), {} bytes received",
            parts.join(", "),
            self.received.load(Ordering::Relaxed)
        )
    }
}

#[async_trait]
impl<S: ObjectStore> ObjectStore for CountingStore<S> {
    async fn head(&self, key: &str) -> StoreResult<ObjectMeta> {
        self.count(Op::Head);
        Self::ended(Op::Head, self.inner.head(key).await)
    }

    async fn get_range(
        &self,
        key: &str,
        range: Range<u64>,
        if_match: Option<&str>,
    ) -> StoreResult<Bytes> {
        self.count(Op::Get);
        let data = Self::ended(Op::Get, self.inner.get_range(key, range, if_match).await)?;
        self.received
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        crate::metrics::bytes_received(data.len() as u64);
        Ok(data)
    }

    async fn get_pieces(
        &self,
        key: &str,
        range: Range<u64>,
        if_match: Option<&str>,
        piece: u64,
    ) -> StoreResult<Vec<Bytes>> {
        self.count(Op::Get);
        let pieces = Self::ended(
            Op::Get,
            self.inner.get_pieces(key, range, if_match, piece).await,
        )?;
        let len: usize = pieces.iter().map(Bytes::len).sum();
        self.received.fetch_add(len as u64, Ordering::Relaxed);
        crate::metrics::bytes_received(len as u64);
        Ok(pieces)
    }

    async fn list(&self, request: ListRequest<'_>) -> StoreResult<ListPage> {
        self.count(Op::List);
        Self::ended(Op::List, self.inner.list(request).await)
    }

    async fn put(
        &self,
        key: &str,
        body: Bytes,
        options: &PutOptions,
        condition: Option<&Condition>,
    ) -> StoreResult<String> {
        self.count(Op::Put);
        let id = format!("put {}", self.puts.fetch_add(1, Ordering::Relaxed));
        let len = body.len() as u64;
        self.follow(id.clone(), key);
        let result = Self::ended(Op::Put, self.inner.put(key, body, options, condition).await);
        if result.is_ok() {
            self.confirmed(&id, key, len);
        }
        self.sending().remove(&id);
        result
    }

    async fn copy(&self, from: &str, to: &str, options: &CopyOptions) -> StoreResult<String> {
        self.count(Op::Copy);
        Self::ended(Op::Copy, self.inner.copy(from, to, options).await)
    }

    async fn delete(&self, key: &str) -> StoreResult<()> {
        self.count(Op::Delete);
        Self::ended(Op::Delete, self.inner.delete(key).await)
    }

    async fn create_multipart(&self, key: &str, options: &PutOptions) -> StoreResult<NewUpload> {
        self.count(Op::CreateMultipart);
        let upload = Self::ended(
            Op::CreateMultipart,
            self.inner.create_multipart(key, options).await,
        )?;
        self.follow(upload.id.clone(), key);
        Ok(upload)
    }

    async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        number: i32,
        body: Bytes,
        crc32c: Option<Crc32c>,
    ) -> StoreResult<String> {
        self.count(Op::UploadPart);
        let len = body.len() as u64;
        let etag = Self::ended(
            Op::UploadPart,
            self.inner
                .upload_part(key, upload_id, number, body, crc32c)
                .await,
        )?;
        self.confirmed(upload_id, key, len);
        Ok(etag)
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
        self.count(Op::UploadPartCopy);
        let result = self
            .inner
            .upload_part_copy(key, upload_id, number, source, range, if_match)
            .await;
        Self::ended(Op::UploadPartCopy, result)
    }

    async fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: Vec<CompletedPart>,
        condition: Option<&Condition>,
    ) -> StoreResult<String> {
        self.count(Op::CompleteMultipart);
        let result = self
            .inner
            .complete_multipart(key, upload_id, parts, condition)
            .await;
        let result = Self::ended(Op::CompleteMultipart, result);
        if result.is_ok() {
            self.sending().remove(upload_id);
        }
        result
    }

    async fn abort_multipart(&self, key: &str, upload_id: &str) -> StoreResult<()> {
        self.count(Op::AbortMultipart);
        self.sending().remove(upload_id);
        Self::ended(
            Op::AbortMultipart,
            self.inner.abort_multipart(key, upload_id).await,
        )
    }

    async fn list_parts(&self, key: &str, upload_id: &str) -> StoreResult<Vec<ListedPart>> {
        self.count(Op::ListParts);
        Self::ended(Op::ListParts, self.inner.list_parts(key, upload_id).await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryStore;

    #[tokio::test]
    async fn counts_each_kind_of_request() {
        let store = CountingStore::new(MemoryStore::new());
        store
            .put("a", Bytes::from("x"), &PutOptions::default(), None)
            .await
            .unwrap();
        store.head("a").await.unwrap();
        store.head("b").await.unwrap_err();
        assert_eq!(store.calls(Op::Head), 2);
        assert_eq!(
            store.summary(),
            "S3 requests: 3 (HeadObject 2, PutObject 1), 0 bytes received"
        );
    }

    #[tokio::test]
    async fn a_multipart_upload_is_followed_part_by_part_until_it_completes() {
        let store = CountingStore::new(MemoryStore::new());
        let options = PutOptions::default();
        let id = store.create_multipart("big", &options).await.unwrap().id;
        let part = Bytes::from(vec![7u8; 5 << 20]);
        let crc32c = Some(Crc32c::of(&part));
        let mut parts = Vec::new();
        for number in 1..=2 {
            let etag = store
                .upload_part("big", &id, number, part.clone(), crc32c)
                .await
                .unwrap();
            assert_eq!(store.uploads()["big"].0, number as u64 * (5 << 20));
            let tag = PartTag { etag, crc32c };
            parts.push(CompletedPart { number, tag });
        }
        store
            .complete_multipart("big", &id, parts, None)
            .await
            .unwrap();
        assert!(store.uploads().is_empty());
        assert_eq!(store.bytes(), (10 << 20, 0));
        // A PutObject is followed only while it is in flight.
        store
            .put("small", Bytes::from("abc"), &options, None)
            .await
            .unwrap();
        assert!(store.uploads().is_empty());
        assert_eq!(store.bytes().0, (10 << 20) + 3);
        // An upload an earlier run began is followed from its next part.
        let earlier = store
            .inner
            .create_multipart("old", &options)
            .await
            .unwrap()
            .id;
        let body = Bytes::from(vec![1u8; 100]);
        let crc32c = Some(Crc32c::of(&body));
        store
            .upload_part("old", &earlier, 3, body, crc32c)
            .await
            .unwrap();
        assert_eq!(store.uploads()["old"].0, 100);
        store.abort_multipart("old", &earlier).await.unwrap();
        assert!(store.uploads().is_empty());
    }
}
