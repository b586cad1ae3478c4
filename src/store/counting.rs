//! An [`ObjectStore`] wrapper that counts the requests made through it, so that a
//! mount can say at unmount how many S3 requests it made and how many bytes its
//! GETs brought (the benchmark and the tests read it).

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use bytes::Bytes;

use super::{
    CompletedPart, Condition, CopyOptions, ListPage, ListRequest, ListedPart, ObjectMeta,
    ObjectStore, Op, PutOptions, StoreResult,
};

pub struct CountingStore<S> {
    inner: S,
    counts: [AtomicU64; Op::ALL.len()],
    received: AtomicU64,
}

impl<S: ObjectStore> CountingStore<S> {
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            counts: Default::default(),
            received: AtomicU64::new(0),
        }
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
        let made: Vec<(Op, u64)> = Op::ALL
            .iter()
            .map(|op| (*op, self.calls(*op)))
            .filter(|(_, n)| *n > 0)
            .collect();
        let total: u64 = made.iter().map(|(_, n)| n).sum();
        let parts: Vec<String> = made
            .iter()
            .map(|(op, n)| format!("{} {n}", op.name()))
            .collect();
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
        self.inner.head(key).await
    }

    async fn get_range(
        &self,
        key: &str,
        range: Range<u64>,
        if_match: Option<&str>,
    ) -> StoreResult<Bytes> {
        self.count(Op::Get);
        let data = self.inner.get_range(key, range, if_match).await?;
        self.received
            .fetch_add(data.len() as u64, Ordering::Relaxed);
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
        let pieces = self.inner.get_pieces(key, range, if_match, piece).await?;
        let len: usize = pieces.iter().map(Bytes::len).sum();
        self.received.fetch_add(len as u64, Ordering::Relaxed);
        Ok(pieces)
    }

    async fn list(&self, request: ListRequest<'_>) -> StoreResult<ListPage> {
        self.count(Op::List);
        self.inner.list(request).await
    }

    async fn put(
        &self,
        key: &str,
        body: Bytes,
        options: &PutOptions,
        condition: Option<&Condition>,
    ) -> StoreResult<String> {
        self.count(Op::Put);
        self.inner.put(key, body, options, condition).await
    }

    async fn copy(&self, from: &str, to: &str, options: &CopyOptions) -> StoreResult<String> {
        self.count(Op::Copy);
        self.inner.copy(from, to, options).await
    }

    async fn delete(&self, key: &str) -> StoreResult<()> {
        self.count(Op::Delete);
        self.inner.delete(key).await
    }

    async fn create_multipart(&self, key: &str, options: &PutOptions) -> StoreResult<String> {
        self.count(Op::CreateMultipart);
        self.inner.create_multipart(key, options).await
    }

    async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        number: i32,
        body: Bytes,
    ) -> StoreResult<String> {
        self.count(Op::UploadPart);
        self.inner.upload_part(key, upload_id, number, body).await
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
        self.count(Op::UploadPartCopy);
        self.inner
            .upload_part_copy(key, upload_id, number, source, range, if_match)
            .await
    }

    async fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: Vec<CompletedPart>,
        condition: Option<&Condition>,
    ) -> StoreResult<String> {
        self.count(Op::CompleteMultipart);
        self.inner
            .complete_multipart(key, upload_id, parts, condition)
            .await
    }

    async fn abort_multipart(&self, key: &str, upload_id: &str) -> StoreResult<()> {
        self.count(Op::AbortMultipart);
        self.inner.abort_multipart(key, upload_id).await
    }

    async fn list_parts(&self, key: &str, upload_id: &str) -> StoreResult<Vec<ListedPart>> {
        self.count(Op::ListParts);
        self.inner.list_parts(key, upload_id).await
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
}
