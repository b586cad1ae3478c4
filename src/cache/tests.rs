//! Tests of the block cache over the in-memory store.

use std::sync::Arc;

use super::disk::DiskLimits;
use super::*;
use crate::store::memory::{MemoryStore, Op};

const KIB: u64 = 1024;
const BLOCK: u64 = 64 * KIB;

fn body(len: u64, seed: u64) -> Vec<u8> {
    (0..len).map(|i| ((i * 31 + seed) % 251) as u8).collect()
}

struct Setup {
    store: Arc<MemoryStore>,
    dir: tempfile::TempDir,
}

impl Setup {
    fn new() -> Self {
        Self {
            store: Arc::new(MemoryStore::new()),
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// A cache as a mount would build it, with a disk cache of `disk_bytes`.
    fn cache(&self, memory_bytes: u64, disk_bytes: u64) -> Arc<BlockCache> {
        let config = CacheConfig {
            block_size: BLOCK,
            memory_bytes,
            in_flight_bytes: 16 * BLOCK,
            disk: Some((
                self.dir.path().join("blocks"),
                DiskLimits {
                    max_bytes: disk_bytes,
                    min_free: 0,
                },
            )),
        };
        Arc::new(BlockCache::new(self.store.clone(), config).unwrap())
    }

    fn object(&self, key: &str, data: Vec<u8>) -> ObjectVersion {
        let size = data.len() as u64;
        self.store.insert(key, data);
        let etag = self.store.object(key).unwrap().etag;
        ObjectVersion {
            key: Arc::from(key),
            etag: Some(Arc::from(etag.as_str())),
            size,
        }
    }

    fn disk_files(&self) -> usize {
        std::fs::read_dir(self.dir.path().join("blocks"))
            .unwrap()
            .count()
    }
}

/// A replayable stream of pseudo-random numbers (an LCG): the same seed gives
/// the same reads.
fn pseudo_random(seed: u64) -> impl Iterator<Item = u64> {
    std::iter::successors(Some(seed), |x| {
        Some(
            x.wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407),
        )
    })
    .skip(1)
}

#[tokio::test]
async fn random_reads_match_the_object() {
    let s = Setup::new();
    let data = body(20 * BLOCK + 123, 1);
    let obj = s.object("k", data.clone());
    let cache = s.cache(4 * BLOCK, 1 << 30);
    for x in pseudo_random(12345).take(300) {
        let off = (x >> 33) % (data.len() as u64 + 10);
        let len = (x >> 13) % (3 * BLOCK);
        let got = cache.read(&obj, off..off + len).await.unwrap();
        let lo = off.min(data.len() as u64) as usize;
        let hi = (off + len).min(data.len() as u64) as usize;
        assert_eq!(&got[..], &data[lo..hi], "read {off}+{len}");
    }
}

#[tokio::test]
async fn concurrent_readers_share_one_fetch_per_block() {
    let s = Setup::new();
    let data = body(8 * BLOCK, 2);
    let obj = s.object("k", data.clone());
    let cache = s.cache(16 * BLOCK, 1 << 30);
    let reads = (0..8).map(|_| {
        let (cache, obj) = (cache.clone(), obj.clone());
        tokio::spawn(async move { cache.read(&obj, 0..8 * BLOCK).await.unwrap() })
    });
    for read in futures::future::join_all(reads).await {
        assert_eq!(&read.unwrap()[..], &data[..]);
    }
    assert_eq!(s.store.calls(Op::Get), 1, "one GET for all eight blocks");
}

#[tokio::test]
async fn a_changed_object_is_read_anew() {
    let s = Setup::new();
    let cache = s.cache(16 * BLOCK, 1 << 30);
    let old = s.object("k", body(2 * BLOCK, 3));
    cache.read(&old, 0..2 * BLOCK).await.unwrap();
    let new_data = body(2 * BLOCK, 4);
    let new = s.object("k", new_data.clone());
    assert_ne!(old.etag, new.etag);
    assert_eq!(
        &cache.read(&new, 0..2 * BLOCK).await.unwrap()[..],
        &new_data[..]
    );
}

#[tokio::test]
async fn blocks_on_disk_survive_a_remount() {
    let s = Setup::new();
    let data = body(6 * BLOCK, 5);
    let obj = s.object("k", data.clone());
    let cache = s.cache(16 * BLOCK, 1 << 30);
    cache.read(&obj, 0..6 * BLOCK).await.unwrap();
    cache.settle().await;
    let gets = s.store.calls(Op::Get);
    drop(cache);
    // A new cache over the same directory: the blocks come from disk.
    let cache = s.cache(16 * BLOCK, 1 << 30);
    assert_eq!(
        &cache.read(&obj, 0..6 * BLOCK).await.unwrap()[..],
        &data[..]
    );
    assert_eq!(s.store.calls(Op::Get), gets);
}

#[tokio::test]
async fn a_corrupted_block_file_is_fetched_again() {
    let s = Setup::new();
    let data = body(BLOCK, 6);
    let obj = s.object("k", data.clone());
    let first = s.cache(16 * BLOCK, 1 << 30);
    first.read(&obj, 0..BLOCK).await.unwrap();
    first.settle().await;
    for entry in std::fs::read_dir(s.dir.path().join("blocks")).unwrap() {
        let path = entry.unwrap().path();
        let mut file = std::fs::read(&path).unwrap();
        let n = file.len();
        file[n / 2] ^= 0xff;
        std::fs::write(&path, file).unwrap();
    }
    let gets = s.store.calls(Op::Get);
    let cache = s.cache(16 * BLOCK, 1 << 30);
    assert_eq!(&cache.read(&obj, 0..BLOCK).await.unwrap()[..], &data[..]);
    assert_eq!(s.store.calls(Op::Get), gets + 1);
}

#[tokio::test]
async fn the_disk_cache_stays_within_its_size() {
    let s = Setup::new();
    // 32 objects of two blocks: each small enough to be kept on disk.
    let objects: Vec<(ObjectVersion, Vec<u8>)> = (0..32)
        .map(|i| {
            let data = body(2 * BLOCK, i);
            (s.object(&format!("k{i}"), data.clone()), data)
        })
        .collect();
    // Room for about ten blocks on disk, one in memory.
    let cache = s.cache(BLOCK, 10 * BLOCK + 10 * KIB);
    for (obj, data) in &objects {
        let got = cache.read(obj, 0..2 * BLOCK).await.unwrap();
        assert_eq!(&got[..], &data[..]);
    }
    cache.settle().await;
    let cache_bytes = cache.disk.as_ref().unwrap().bytes();
    assert!(cache_bytes <= 10 * BLOCK + 10 * KIB, "{cache_bytes}");
    assert!(s.disk_files() <= 10, "{} files", s.disk_files());
    // The most recent blocks are the ones kept on disk, the oldest are gone.
    let gets = s.store.calls(Op::Get);
    cache.read(&objects[30].0, 0..BLOCK).await.unwrap();
    assert_eq!(s.store.calls(Op::Get), gets);
    cache.read(&objects[0].0, 0..BLOCK).await.unwrap();
    assert_eq!(s.store.calls(Op::Get), gets + 1);
}

#[tokio::test]
async fn an_object_larger_than_half_the_disk_cache_is_not_written_to_it() {
    let s = Setup::new();
    let cache = s.cache(4 * BLOCK, 10 * BLOCK);
    let small = s.object("small", body(5 * BLOCK, 1));
    let big = s.object("big", body(6 * BLOCK, 2));
    assert!(cache.keeps_on_disk(&small) && !cache.keeps_on_disk(&big));
    cache.read(&small, 0..5 * BLOCK).await.unwrap();
    cache.read(&big, 0..6 * BLOCK).await.unwrap();
    cache.settle().await;
    assert_eq!(s.disk_files(), 5);
}

#[tokio::test]
async fn a_prefetch_without_room_is_dropped_and_a_read_still_works() {
    let s = Setup::new();
    let data = body(64 * BLOCK, 8);
    let obj = s.object("k", data.clone());
    let cache = s.cache(4 * BLOCK, 1 << 30);
    // Take the whole budget, as fetches in flight would.
    let all = cache.budget.available_permits() as u32;
    let held = cache.budget.clone().try_acquire_many_owned(all).unwrap();
    cache.prefetch(&obj, 0..8).await;
    assert!(lock(&cache.pending).is_empty(), "nothing was started");
    drop(held);
    assert_eq!(
        &cache.read(&obj, 0..BLOCK).await.unwrap()[..],
        &data[..BLOCK as usize]
    );
}

#[tokio::test]
async fn a_workload_larger_than_the_cache_stays_within_its_bounds() {
    let s = Setup::new();
    let data = body(64 * BLOCK, 5);
    let obj = s.object("big", data.clone());
    // Room on disk for 8 blocks and their headers.
    let limit = 8 * (BLOCK + 256);
    let cache = s.cache(2 * BLOCK, limit);
    for round in 0..2 {
        for b in 0..64 {
            let got = cache.read(&obj, b * BLOCK..(b + 1) * BLOCK).await.unwrap();
            let at = (b * BLOCK) as usize;
            assert_eq!(&got[..], &data[at..at + BLOCK as usize], "round {round}");
        }
        cache.settle().await;
        let disk = cache.disk().unwrap();
        assert!(disk.bytes() <= limit, "{} bytes on disk", disk.bytes());
        assert!(s.disk_files() <= 8, "{} block files", s.disk_files());
    }
}

#[tokio::test]
async fn a_whole_fetch_brings_the_missing_blocks_in_large_gets() {
    let s = Setup::new();
    // 301 blocks: GETs of at most 128 (8 MiB), around one block already cached.
    let data = body(300 * BLOCK + 5, 9);
    let obj = s.object("k", data.clone());
    let cache = s.cache(16 * BLOCK, 1 << 30);
    cache.read(&obj, 130 * BLOCK..131 * BLOCK).await.unwrap();
    cache.settle().await;
    let open = Arc::new(());
    let fetch = cache.fetch_whole(&obj, Arc::downgrade(&open));
    fetch.expect("the object fits").await.unwrap();
    cache.settle().await;
    // 0..128, 128..130, 131..259, 259..301: no block twice.
    assert_eq!(s.store.calls(Op::Get), 1 + 4);
    assert_eq!(s.store.bytes_read(), data.len() as u64);
    for x in pseudo_random(99).take(200) {
        let off = (x >> 33) % (data.len() as u64 - 4096);
        let got = cache.read_random(&obj, off..off + 4096).await.unwrap();
        assert_eq!(
            &got[..],
            &data[off as usize..off as usize + 4096],
            "at {off}"
        );
    }
    assert_eq!(s.store.calls(Op::Get), 5, "random reads found every block");
}

#[tokio::test]
async fn only_an_object_that_fits_is_fetched_whole_and_one_at_a_time() {
    let s = Setup::new();
    // A quarter of the disk cache: 10 blocks.
    let cache = s.cache(16 * BLOCK, 40 * BLOCK);
    let big = s.object("big", body(10 * BLOCK + 1, 10));
    let small = s.object("small", body(10 * BLOCK, 11));
    let other = s.object("other", body(3 * BLOCK, 12));
    let open = Arc::new(());
    assert!(cache.fetch_whole(&big, Arc::downgrade(&open)).is_none());
    let first = cache.fetch_whole(&small, Arc::downgrade(&open)).unwrap();
    assert!(cache.fetch_whole(&other, Arc::downgrade(&open)).is_none());
    first.await.unwrap();
    let second = cache.fetch_whole(&other, Arc::downgrade(&open)).unwrap();
    second.await.unwrap();
    assert_eq!(s.store.calls(Op::Get), 2);
}

#[tokio::test]
async fn a_whole_fetch_stops_once_its_reader_is_closed() {
    let s = Setup::new();
    // Four GETs of 8 MiB, one at a time within the budget.
    let obj = s.object("k", body(512 * BLOCK, 13));
    let cache = s.cache(16 * BLOCK, 1 << 30);
    let gate = s.store.hold(Op::Get);
    let open = Arc::new(());
    let fetch = cache.fetch_whole(&obj, Arc::downgrade(&open)).unwrap();
    gate.reached(1).await;
    drop(open);
    drop(gate);
    fetch.await.unwrap();
    // The second was waiting for room when the reader closed; no more after it.
    let gets = s.store.calls(Op::Get);
    assert!(gets <= 2, "{gets} GETs after the reader closed");
}
