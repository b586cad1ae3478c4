//! Reading an object through ranged GETs, with prefetch for sequential readers.
//!
//! A reader is tied to one version of an object (its ETag, checked with `If-Match`),
//! so a file replaced while it is being read fails with ESTALE instead of mixing
//! two versions. Sequential reads are served from chunks fetched ahead of the reader
//! in parallel; a read elsewhere is one ranged GET of exactly what was asked.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::sync::{Mutex, OnceCell};

use crate::store::{ObjectStore, StoreError};

/// Size of one prefetched chunk.
pub const CHUNK_SIZE: u64 = 8 * 1024 * 1024;
/// Chunks fetched ahead of a sequential reader.
const WINDOW: u64 = 4;

type Chunk = Arc<OnceCell<Result<Bytes, StoreError>>>;

pub struct RemoteReader {
    store: Arc<dyn ObjectStore>,
    key: String,
    etag: Option<String>,
    size: u64,
    state: Mutex<ReadState>,
}

#[derive(Default)]
struct ReadState {
    /// Where a sequential reader reads next.
    next_offset: u64,
    chunks: BTreeMap<u64, Chunk>,
}

impl RemoteReader {
    pub fn new(store: Arc<dyn ObjectStore>, key: String, etag: Option<String>, size: u64) -> Self {
        Self {
            store,
            key,
            etag,
            size,
            state: Mutex::new(ReadState::default()),
        }
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    /// The version of the object this reader reads.
    pub fn etag(&self) -> Option<&str> {
        self.etag.as_deref()
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub async fn read(&self, offset: u64, len: u32) -> Result<Bytes, StoreError> {
        let end = offset.saturating_add(u64::from(len)).min(self.size);
        if offset >= end {
            return Ok(Bytes::new());
        }
        let first = offset / CHUNK_SIZE;
        let last = (end - 1) / CHUNK_SIZE;
        let chunks = {
            let mut state = self.state.lock().await;
            let expected = state.next_offset / CHUNK_SIZE;
            // The kernel sends read-ahead requests in parallel, so "sequential" means
            // near where the last read ended, not exactly there.
            let sequential = state.chunks.contains_key(&first)
                || (first + 1 >= expected && first <= expected + 1);
            state.next_offset = state.next_offset.max(end);
            if !sequential {
                state.next_offset = end;
                None
            } else {
                let last_chunk = (self.size - 1) / CHUNK_SIZE;
                let ahead = (last + WINDOW).min(last_chunk);
                for idx in first..=ahead {
                    if let std::collections::btree_map::Entry::Vacant(slot) =
                        state.chunks.entry(idx)
                    {
                        self.spawn_fetch(idx, slot.insert(Chunk::default()).clone());
                    }
                }
                // Chunks behind the reader are done with (one is kept for reads that
                // arrive slightly out of order).
                let keep_from = first.saturating_sub(1);
                state.chunks = state.chunks.split_off(&keep_from);
                Some(
                    (first..=last)
                        .filter_map(|i| state.chunks.get(&i).map(|c| (i, c.clone())))
                        .collect::<Vec<_>>(),
                )
            }
        };
        let Some(chunks) = chunks else {
            return self
                .store
                .get_range(&self.key, offset..end, self.etag.as_deref())
                .await;
        };
        let mut out = BytesMut::with_capacity((end - offset) as usize);
        for (idx, chunk) in chunks {
            let data = match chunk.get_or_init(|| self.fetch(idx)).await {
                Ok(data) => data.clone(),
                Err(e) => {
                    // Forget the failed chunk so that a retry fetches it again.
                    self.state.lock().await.chunks.remove(&idx);
                    return Err(e.clone());
                }
            };
            let base = idx * CHUNK_SIZE;
            let from = offset.max(base) - base;
            let to = (end.min(base + data.len() as u64) - base).max(from);
            out.extend_from_slice(&data[from as usize..to as usize]);
        }
        if (out.len() as u64) < end - offset {
            return Err(StoreError::Other(format!(
                "{}: short read (the object is smaller than its listed size)",
                self.key
            )));
        }
        Ok(out.freeze())
    }

    fn fetch(&self, idx: u64) -> impl Future<Output = Result<Bytes, StoreError>> + use<> {
        let store = self.store.clone();
        let key = self.key.clone();
        let etag = self.etag.clone();
        let start = idx * CHUNK_SIZE;
        let end = (start + CHUNK_SIZE).min(self.size);
        async move { store.get_range(&key, start..end, etag.as_deref()).await }
    }

    fn spawn_fetch(&self, idx: u64, chunk: Chunk) {
        let fetch = self.fetch(idx);
        tokio::spawn(async move {
            chunk.get_or_init(|| fetch).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::{MemoryStore, Op};

    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 % 256) as u8).collect()
    }

    #[tokio::test]
    async fn sequential_reads_return_the_object() {
        let body = data((CHUNK_SIZE * 2 + 1000) as usize);
        let store = Arc::new(MemoryStore::new());
        store.insert("k", body.clone());
        let etag = store.object("k").unwrap().etag;
        let r = RemoteReader::new(store.clone(), "k".into(), Some(etag), body.len() as u64);
        let mut got = Vec::new();
        let mut off = 0;
        loop {
            let chunk = r.read(off, 128 * 1024).await.unwrap();
            if chunk.is_empty() {
                break;
            }
            off += chunk.len() as u64;
            got.extend_from_slice(&chunk);
        }
        assert_eq!(got, body);
        // Three chunks, each fetched once.
        assert_eq!(store.calls(Op::Get), 3);
    }

    #[tokio::test]
    async fn random_read_fetches_only_the_range() {
        let body = data((CHUNK_SIZE * 3) as usize);
        let store = Arc::new(MemoryStore::new());
        store.insert("k", body.clone());
        let r = RemoteReader::new(store.clone(), "k".into(), None, body.len() as u64);
        let off = CHUNK_SIZE * 2 + 17;
        let got = r.read(off, 4096).await.unwrap();
        assert_eq!(&got[..], &body[off as usize..off as usize + 4096]);
        assert_eq!(store.calls(Op::Get), 1);
    }

    #[tokio::test]
    async fn changed_object_is_stale_not_mixed() {
        let store = Arc::new(MemoryStore::new());
        store.insert("k", data(1000));
        let etag = store.object("k").unwrap().etag;
        let r = RemoteReader::new(store.clone(), "k".into(), Some(etag), 1000);
        store.insert("k", data(1000));
        assert_eq!(r.read(0, 10).await, Err(StoreError::PreconditionFailed));
    }

    #[tokio::test]
    async fn failed_chunk_is_fetched_again_on_retry() {
        let store = Arc::new(MemoryStore::new());
        store.insert("k", data(1000));
        let r = RemoteReader::new(store.clone(), "k".into(), None, 1000);
        store.fail_next(Op::Get, StoreError::Unreachable("down".into()));
        assert!(r.read(0, 100).await.is_err());
        assert_eq!(&r.read(0, 100).await.unwrap()[..], &data(1000)[..100]);
    }
}
