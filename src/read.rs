//! Reading one version of an object through the block cache, with prefetch for
//! sequential readers.
//!
//! A reader whose reads follow each other (near where the last one ended: the
//! kernel's read-ahead sends several at once, out of order) has the blocks ahead of
//! it fetched in the background. The window ahead grows with the length of the
//! sequential run, from 4 MiB up to 64 MiB (up to half the memory cache for an
//! object whose blocks the disk cache does not keep), and is dropped at the
//! first read elsewhere. A read smaller than a block elsewhere (the first read of a handle
//! counts as sequential only at the start of the object) is random: it fetches
//! only a small piece around it, unless its blocks are at hand
//! ([`BlockCache::read_random`]). Once a handle has made `WHOLE_AFTER` random
//! reads, the whole object is fetched in the background if it fits the cache
//! ([`BlockCache::fetch_whole`]), until the handle is closed.

use std::sync::{Arc, Mutex};

use bytes::Bytes;

use crate::cache::{BlockCache, ObjectVersion};
use crate::store::StoreResult;

const MIB: u64 = 1 << 20;
/// The first window ahead of a sequential reader, and the largest.
const FIRST_WINDOW: u64 = 4 * MIB;
const MAX_WINDOW: u64 = 64 * MIB;
/// How far from the end of the last read a read may start and still be sequential.
const SLACK: u64 = 2 * MIB;
/// Random reads of one handle after which the whole object is worth fetching.
const WHOLE_AFTER: u32 = 8;

pub struct Reader {
    cache: Arc<BlockCache>,
    obj: ObjectVersion,
    state: Mutex<ReadState>,
    /// Held while the handle is open: a whole fetch it started stops without it.
    open: Arc<()>,
}

#[derive(Default)]
struct ReadState {
    /// Where a sequential reader reads next.
    next: u64,
    /// Bytes read in the current sequential run.
    run: u64,
    /// Blocks before this one have been asked for already.
    ahead: u64,
    /// Random reads so far, up to the one that settled the whole fetch.
    random_reads: u32,
    /// A whole fetch was started for this handle, or the object does not fit.
    whole_decided: bool,
}

impl Reader {
    pub fn new(cache: Arc<BlockCache>, obj: ObjectVersion) -> Self {
        Self {
            cache,
            obj,
            state: Mutex::new(ReadState::default()),
            open: Arc::new(()),
        }
    }

    /// The object version this reader reads.
    pub fn version(&self) -> &ObjectVersion {
        &self.obj
    }

    pub async fn read(&self, offset: u64, len: u32) -> StoreResult<Bytes> {
        let end = offset.saturating_add(u64::from(len)).min(self.obj.size);
        if offset >= end {
            return Ok(Bytes::new());
        }
        let (ahead, random, whole) = {
            let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
            let sequential = offset <= st.next + SLACK && offset + SLACK >= st.next;
            let random = !sequential && end - offset < self.cache.block_size();
            if random && !st.whole_decided {
                st.random_reads += 1;
            }
            let whole = !st.whole_decided && st.random_reads >= WHOLE_AFTER;
            if sequential {
                st.run += end - offset;
                st.next = st.next.max(end);
            } else {
                st.run = 0;
                st.ahead = 0;
                st.next = end;
            }
            let ahead = if sequential {
                let window = (2 * st.run)
                    .clamp(FIRST_WINDOW, MAX_WINDOW)
                    .min(self.cache.window_limit(&self.obj));
                let wanted = self.cache.blocks(&self.obj, end..end + window);
                let from = wanted.start.max(st.ahead);
                // Ask in large steps (half a window), so that fetches are few and big,
                // unless the reader has caught up with what was asked.
                let step = (window / 2).div_ceil(self.cache.block_size());
                let due =
                    from < wanted.end && (wanted.end - from >= step || st.ahead <= wanted.start);
                if due {
                    st.ahead = wanted.end;
                }
                due.then_some(from..wanted.end)
            } else {
                None
            };
            (ahead, random, whole)
        };
        // An object that does not fit is never fetched whole: stop asking. One
        // that does is asked for again while another object is being fetched.
        if whole
            && (!self.cache.fits_whole(&self.obj)
                || self
                    .cache
                    .fetch_whole(&self.obj, Arc::downgrade(&self.open))
                    .is_some())
        {
            self.state
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .whole_decided = true;
        }
        if let Some(blocks) = ahead {
            self.cache.prefetch(&self.obj, blocks).await;
        }
        if random {
            self.cache.read_random(&self.obj, offset..end).await
        } else {
            self.cache.read(&self.obj, offset..end).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::CacheConfig;
    use crate::store::StoreError;
    use crate::store::memory::{MemoryStore, Op};

    fn data(len: u64) -> Vec<u8> {
        (0..len).map(|i| (i * 7 % 256) as u8).collect()
    }

    fn cache(store: &Arc<MemoryStore>) -> Arc<BlockCache> {
        let config = CacheConfig {
            block_size: MIB,
            memory_bytes: 128 * MIB,
            in_flight_bytes: 128 * MIB,
            disk: None,
        };
        Arc::new(BlockCache::new(store.clone(), config).unwrap())
    }

    /// A reader of `key`, as a new handle of it opens one, sharing `cache`.
    fn reader_in(cache: &Arc<BlockCache>, store: &MemoryStore, key: &str) -> Reader {
        let o = store.object(key).unwrap();
        let obj = ObjectVersion {
            key: Arc::from(key),
            etag: Some(Arc::from(o.etag.as_str())),
            size: o.body.len() as u64,
        };
        Reader::new(cache.clone(), obj)
    }

    fn reader(store: &Arc<MemoryStore>, key: &str) -> Reader {
        reader_in(&cache(store), store, key)
    }

    #[tokio::test]
    async fn sequential_reads_return_the_object_with_few_requests() {
        let body = data(40 * MIB + 1000);
        let store = Arc::new(MemoryStore::new());
        store.insert("k", body.clone());
        let r = reader(&store, "k");
        let mut got = Vec::new();
        loop {
            let chunk = r.read(got.len() as u64, 128 * 1024).await.unwrap();
            if chunk.is_empty() {
                break;
            }
            got.extend_from_slice(&chunk);
        }
        assert_eq!(got, body);
        // Prefetched in large requests, not one per read or per block.
        let gets = store.calls(Op::Get);
        assert!((5..=20).contains(&gets), "{gets} GETs");
    }

    #[tokio::test]
    async fn random_reads_of_an_object_too_big_to_fetch_whole_stop_asking() {
        let body = data(64 * MIB);
        let store = Arc::new(MemoryStore::new());
        store.insert("k", body.clone());
        let r = reader(&store, "k");
        assert!(!r.cache.fits_whole(r.version()));
        for i in 0..u64::from(WHOLE_AFTER) + 2 {
            let off = (i * 7 + 3) % 60 * MIB;
            let got = r.read(off, 4096).await.unwrap();
            assert_eq!(&got[..], &body[off as usize..off as usize + 4096]);
        }
        let st = r.state.lock().unwrap();
        assert!(st.whole_decided);
        assert_eq!(
            st.random_reads, WHOLE_AFTER,
            "no more counting once settled"
        );
    }

    #[tokio::test]
    async fn a_small_random_read_fetches_only_a_piece_around_it() {
        let body = data(64 * MIB);
        let store = Arc::new(MemoryStore::new());
        store.insert("k", body.clone());
        let r = reader(&store, "k");
        // The last one straddles two pieces: one GET all the same.
        for off in [40 * MIB + 17, 3 * MIB, 60 * MIB + 5, 20 * MIB - 100] {
            let got = r.read(off, 4096).await.unwrap();
            assert_eq!(&got[..], &body[off as usize..off as usize + 4096]);
        }
        assert_eq!(store.calls(Op::Get), 4);
        assert_eq!(store.bytes_read(), 5 * 64 * 1024);
    }

    #[tokio::test]
    async fn random_reads_that_turn_sequential_get_blocks_and_prefetch() {
        let body = data(64 * MIB);
        let store = Arc::new(MemoryStore::new());
        store.insert("k", body.clone());
        let r = reader(&store, "k");
        let start = 30 * MIB + 4096;
        let got = r.read(start, 4096).await.unwrap();
        assert_eq!(&got[..], &body[start as usize..start as usize + 4096]);
        let mut at = start + 4096;
        while at < 40 * MIB {
            let got = r.read(at, 128 * 1024).await.unwrap();
            assert_eq!(&got[..], &body[at as usize..at as usize + got.len()]);
            at += got.len() as u64;
        }
        // A piece, then blocks ahead in a few large GETs, not one per read.
        let gets = store.calls(Op::Get);
        assert!((2..=8).contains(&gets), "{gets} GETs");
    }

    #[tokio::test]
    async fn a_random_read_of_a_cached_block_fetches_nothing() {
        let body = data(8 * MIB);
        let store = Arc::new(MemoryStore::new());
        store.insert("k", body.clone());
        let cache = cache(&store);
        let whole = reader_in(&cache, &store, "k").read(0, MIB as u32).await;
        assert_eq!(&whole.unwrap()[..], &body[..MIB as usize]);
        cache.settle().await;
        let gets = store.calls(Op::Get);
        let off = MIB / 2 + 3;
        let got = reader_in(&cache, &store, "k")
            .read(off, 4096)
            .await
            .unwrap();
        assert_eq!(&got[..], &body[off as usize..off as usize + 4096]);
        assert_eq!(store.calls(Op::Get), gets);
    }

    #[tokio::test]
    async fn concurrent_random_reads_of_one_piece_share_its_fetch() {
        let body = data(64 * MIB);
        let store = Arc::new(MemoryStore::new());
        store.insert("k", body.clone());
        let cache = cache(&store);
        let gate = store.hold(Op::Get);
        // Three programs, each with its own handle, read in the same piece.
        let offsets = [50 * MIB, 50 * MIB + 8192, 50 * MIB + 30_000];
        let reads: Vec<_> = offsets
            .iter()
            .map(|&off| {
                let r = reader_in(&cache, &store, "k");
                tokio::spawn(async move { r.read(off, 4096).await })
            })
            .collect();
        gate.reached(1).await;
        drop(gate);
        for (read, off) in reads.into_iter().zip(offsets) {
            let got = read.await.unwrap().unwrap();
            assert_eq!(&got[..], &body[off as usize..off as usize + 4096]);
        }
        assert_eq!(store.calls(Op::Get), 1);
    }

    #[tokio::test]
    async fn a_changed_object_is_stale_not_mixed() {
        let store = Arc::new(MemoryStore::new());
        store.insert("k", data(1000));
        let r = reader(&store, "k");
        store.insert("k", vec![7u8; 1000]);
        assert_eq!(r.read(0, 10).await, Err(StoreError::PreconditionFailed));
    }

    #[tokio::test]
    async fn a_failed_block_is_fetched_again_on_retry() {
        let store = Arc::new(MemoryStore::new());
        store.insert("k", data(1000));
        let r = reader(&store, "k");
        store.fail_next(Op::Get, StoreError::Unreachable("down".into()));
        assert!(r.read(0, 100).await.is_err());
        assert_eq!(&r.read(0, 100).await.unwrap()[..], &data(1000)[..100]);
    }

    /// Read all of `r` in reads of `len`.
    async fn read_through(r: &Reader, len: u32) -> Vec<u8> {
        let mut got = Vec::new();
        loop {
            let chunk = r.read(got.len() as u64, len).await.unwrap();
            if chunk.is_empty() {
                return got;
            }
            got.extend_from_slice(&chunk);
        }
    }

    #[tokio::test]
    async fn a_big_cold_read_keeps_the_hot_blocks_and_fetches_each_byte_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(MemoryStore::new());
        let config = CacheConfig {
            block_size: MIB,
            memory_bytes: 8 * MIB,
            in_flight_bytes: 64 * MIB,
            disk: Some((
                dir.path().join("blocks"),
                crate::cache::disk::DiskLimits {
                    max_bytes: 16 * MIB,
                    min_free: 0,
                },
            )),
        };
        let cache = Arc::new(BlockCache::new(store.clone(), config).unwrap());
        store.insert("site.css", data(3 * MIB));
        store.insert("backup.tar", data(64 * MIB));
        let hot = reader_in(&cache, &store, "site.css");
        assert_eq!(read_through(&hot, 128 * 1024).await, data(3 * MIB));
        cache.settle().await;
        let disk = cache.disk().unwrap();
        let hot_bytes = disk.bytes();
        assert!(hot_bytes >= 3 * MIB, "{hot_bytes}");

        let read_before = store.bytes_read();
        let big = reader_in(&cache, &store, "backup.tar");
        assert!(!cache.keeps_on_disk(big.version()));
        assert!(read_through(&big, 128 * 1024).await == data(64 * MIB));
        cache.settle().await;
        // Four times the disk cache went by without a byte of it written, and
        // nothing read ahead was pushed out of memory before it was read.
        assert_eq!(disk.bytes(), hot_bytes);
        assert_eq!(store.bytes_read() - read_before, 64 * MIB);
        // The hot file is still served from the cache.
        let gets = store.calls(Op::Get);
        let again = reader_in(&cache, &store, "site.css");
        assert_eq!(read_through(&again, 128 * 1024).await, data(3 * MIB));
        assert_eq!(store.calls(Op::Get), gets);
    }
}
