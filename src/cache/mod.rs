//! The block cache: object data in blocks (1 MiB by default), keyed by key, ETag
//! and block index, so a changed object never serves stale bytes.
//!
//! A block is looked for in a memory LRU, then on disk ([`disk`]), then fetched
//! with a ranged GET (neighbouring missing blocks in one request). Concurrent reads
//! of a block share one fetch. Fetched data is held within one memory budget:
//! reads wait for room, prefetches that find none are dropped.
//!
//! A reader that jumps about gets small pieces instead ([`BlockCache::read_random`]):
//! a 4 KiB read at a random place costs a 64 KiB GET, not a 1 MiB one, and the
//! pieces are kept in memory only, in a cache of their own with a share of the
//! memory budget. A reader whose random reads keep coming in an object that fits
//! the cache has the whole object fetched in the background ([`whole`]).

pub mod disk;
pub mod meta;
mod whole;

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::{Bytes, BytesMut};
use lru::LruCache;
use tokio::sync::{Semaphore, watch};

use crate::store::{ObjectStore, StoreError, StoreResult};
use disk::{DiskCache, DiskLimits};

/// The largest single GET the cache makes.
const MAX_FETCH: u64 = 8 << 20;
/// The memory budget is counted in units of this many bytes.
const UNIT: u64 = 64 << 10;
/// The piece a random read fetches: on Garage, a 64 KiB GET is answered about as
/// fast as any smaller one, and ten times faster than a 4 KiB one.
const PIECE: u64 = 64 << 10;
/// The share of the memory (and of the fetches in flight) that goes to pieces.
const PIECES_SHARE: u64 = 8;

/// One block of one version of an object.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BlockId {
    pub key: Arc<str>,
    pub etag: Arc<str>,
    pub index: u64,
}

/// A version of an object, as it is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectVersion {
    pub key: Arc<str>,
    /// Objects without an ETag are read directly, never cached.
    pub etag: Option<Arc<str>>,
    pub size: u64,
}

#[derive(Debug, Clone)]
pub struct CacheConfig {
    pub block_size: u64,
    /// Bytes of blocks kept in memory.
    pub memory_bytes: u64,
    /// Bytes of data being fetched at once (reads and prefetches together).
    pub in_flight_bytes: u64,
    /// The disk cache's directory and limits; `None` keeps blocks in memory only.
    pub disk: Option<(PathBuf, DiskLimits)>,
}

type FetchResult = Option<Result<Bytes, StoreError>>;

/// A block being fetched: its value once the fetch is done.
type Pending = watch::Receiver<FetchResult>;

enum Cell {
    Ready(Bytes),
    Pending(Pending),
}

pub struct BlockCache {
    store: Arc<dyn ObjectStore>,
    block_size: u64,
    memory: Mutex<LruCache<BlockId, Bytes>>,
    disk: Option<Arc<DiskCache>>,
    /// Blocks being fetched, so that a second reader waits for the same fetch.
    pending: Mutex<HashMap<BlockId, Pending>>,
    budget: Arc<Semaphore>,
    budget_units: usize,
    /// The pieces of random reads: a cache of small blocks, in memory only.
    pieces: Option<Arc<BlockCache>>,
    /// Whether an object is being fetched whole: one at a time.
    fetching_whole: AtomicBool,
    /// Blocks reads found in memory or on disk, and blocks they waited for S3.
    hits: AtomicU64,
    misses: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// How many budget units `bytes` takes.
fn units(bytes: u64) -> u32 {
    u32::try_from(bytes.div_ceil(UNIT)).unwrap_or(u32::MAX)
}

impl BlockCache {
    pub fn new(store: Arc<dyn ObjectStore>, mut config: CacheConfig) -> std::io::Result<Self> {
        let block_size = config.block_size.max(4096);
        let pieces = if block_size > PIECE {
            let share = CacheConfig {
                block_size: PIECE,
                memory_bytes: config.memory_bytes / PIECES_SHARE,
                in_flight_bytes: config.in_flight_bytes / PIECES_SHARE,
                disk: None,
            };
            config.memory_bytes -= share.memory_bytes;
            config.in_flight_bytes -= share.in_flight_bytes;
            Some(Arc::new(BlockCache::new(store.clone(), share)?))
        } else {
            None
        };
        let blocks = usize::try_from(config.memory_bytes / block_size).unwrap_or(usize::MAX);
        let disk = match config.disk {
            Some((dir, limits)) => Some(Arc::new(DiskCache::open(dir, limits)?)),
            None => None,
        };
        // At least one fetch must always fit.
        let in_flight = units(config.in_flight_bytes.max(MAX_FETCH.max(block_size)));
        Ok(Self {
            store,
            block_size,
            memory: Mutex::new(LruCache::new(
                NonZeroUsize::new(blocks).unwrap_or(NonZeroUsize::MIN),
            )),
            disk,
            pending: Mutex::new(HashMap::new()),
            budget: Arc::new(Semaphore::new(in_flight as usize)),
            budget_units: in_flight as usize,
            pieces,
            fetching_whole: AtomicBool::new(false),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        })
    }

    pub fn block_size(&self) -> u64 {
        self.block_size
    }

    /// Blocks (and pieces) reads found in memory or on disk, and those they
    /// waited for S3 to send.
    pub fn hits_and_misses(&self) -> (u64, u64) {
        let (mut hits, mut misses) = (
            self.hits.load(Ordering::Relaxed),
            self.misses.load(Ordering::Relaxed),
        );
        if let Some(pieces) = &self.pieces {
            let (h, m) = pieces.hits_and_misses();
            hits += h;
            misses += m;
        }
        (hits, misses)
    }

    /// Are the blocks of `obj` written to the disk cache? Not those of an
    /// object larger than half of it: a backup read once would push out what
    /// is read every day, and could not stay itself.
    pub fn keeps_on_disk(&self, obj: &ObjectVersion) -> bool {
        self.disk
            .as_ref()
            .is_some_and(|d| obj.size <= d.max_bytes() / 2)
    }

    /// The most a sequential reader of `obj` may have fetched ahead of it: for
    /// blocks that only memory holds, half of the memory cache, so that none is
    /// pushed out before it is read (and fetched again).
    pub fn window_limit(&self, obj: &ObjectVersion) -> u64 {
        if self.keeps_on_disk(obj) {
            return u64::MAX;
        }
        let blocks = lock(&self.memory).cap().get() as u64;
        (blocks / 2).max(1) * self.block_size
    }

    /// The disk cache, shared with the cache of object headers.
    pub fn disk(&self) -> Option<Arc<DiskCache>> {
        self.disk.clone()
    }

    /// The block indexes that hold bytes `range` of `obj`.
    pub fn blocks(&self, obj: &ObjectVersion, range: Range<u64>) -> Range<u64> {
        let end = range.end.min(obj.size);
        if range.start >= end {
            return 0..0;
        }
        range.start / self.block_size..end.div_ceil(self.block_size)
    }

    /// Bytes `range` of `obj` (fewer at its end).
    pub async fn read(
        self: &Arc<Self>,
        obj: &ObjectVersion,
        range: Range<u64>,
    ) -> StoreResult<Bytes> {
        let end = range.end.min(obj.size);
        if range.start >= end {
            return Ok(Bytes::new());
        }
        let Some(etag) = &obj.etag else {
            return self.store.get_range(&obj.key, range.start..end, None).await;
        };
        let blocks = self.blocks(obj, range.clone());
        let cells = self.start(obj, etag, blocks.clone(), true).await;
        // Within one block (the usual read), the answer is a view of it.
        let single = blocks.end - blocks.start == 1;
        let mut out = BytesMut::new();
        if !single {
            out.reserve((end - range.start) as usize);
        }
        for (index, cell) in blocks.zip(cells) {
            let data = match cell {
                // A read always gets room to fetch, so every block has a cell.
                None => return Err(StoreError::Other("a block fetch was lost".into())),
                Some(Cell::Ready(data)) => {
                    self.hits.fetch_add(1, Ordering::Relaxed);
                    data
                }
                Some(Cell::Pending(mut p)) => {
                    // Waiting for the disk is a hit, for S3 a miss.
                    let id = BlockId {
                        key: obj.key.clone(),
                        etag: etag.clone(),
                        index,
                    };
                    let on_disk = self.disk.as_ref().is_some_and(|d| d.in_index(&id));
                    let counter = if on_disk { &self.hits } else { &self.misses };
                    counter.fetch_add(1, Ordering::Relaxed);
                    let value = p
                        .wait_for(Option::is_some)
                        .await
                        .map(|v| v.clone())
                        .map_err(|_| StoreError::Other("a block fetch was lost".into()))?;
                    value.ok_or_else(|| StoreError::Other("a block fetch was lost".into()))??
                }
            };
            let base = index * self.block_size;
            let from = range.start.max(base) - base;
            let to = end.min(base + data.len() as u64).saturating_sub(base);
            if from >= to {
                return Err(StoreError::Other(format!(
                    "{}: short read (the object is smaller than its listed size)",
                    obj.key
                )));
            }
            if single {
                return Ok(data.slice(from as usize..to as usize));
            }
            out.extend_from_slice(&data[from as usize..to as usize]);
        }
        Ok(out.freeze())
    }

    /// Bytes `range` of `obj` for a reader that jumps about: from the blocks if
    /// they are at hand (in memory, on disk or on their way), else from pieces
    /// fetched for it, neighbours in one GET.
    pub async fn read_random(
        self: &Arc<Self>,
        obj: &ObjectVersion,
        range: Range<u64>,
    ) -> StoreResult<Bytes> {
        let (Some(pieces), Some(etag)) = (&self.pieces, &obj.etag) else {
            return self.read(obj, range).await;
        };
        let at_hand = self.blocks(obj, range.clone()).all(|index| {
            let id = BlockId {
                key: obj.key.clone(),
                etag: etag.clone(),
                index,
            };
            lock(&self.memory).contains(&id)
                || lock(&self.pending).contains_key(&id)
                || self.disk.as_ref().is_some_and(|d| d.may_have(&id))
        });
        if at_hand {
            self.read(obj, range).await
        } else {
            pieces.read(obj, range).await
        }
    }

    /// Wait until no fetch is in flight (their blocks are in memory and on disk).
    pub async fn settle(&self) {
        let all = u32::try_from(self.budget_units).unwrap_or(u32::MAX);
        let _all = self.budget.acquire_many(all).await;
        if let Some(pieces) = &self.pieces {
            Box::pin(pieces.settle()).await;
        }
    }

    /// Fetch blocks `blocks` of `obj` in the background if the memory budget has
    /// room now; blocks already cached or being fetched are skipped.
    pub async fn prefetch(self: &Arc<Self>, obj: &ObjectVersion, blocks: Range<u64>) {
        if let Some(etag) = &obj.etag {
            let blocks = blocks.start..blocks.end.min(obj.size.div_ceil(self.block_size));
            self.start(obj, etag, blocks, false).await;
        }
    }

    /// Each block of `blocks`, from memory or from a fetch started (or joined) now.
    /// Missing neighbours are fetched together; with `wait`, a fetch waits for
    /// memory budget, else it is not started when there is none (and its blocks
    /// come back as `None`).
    async fn start(
        self: &Arc<Self>,
        obj: &ObjectVersion,
        etag: &Arc<str>,
        blocks: Range<u64>,
        wait: bool,
    ) -> Vec<Option<Cell>> {
        let id = |index| BlockId {
            key: obj.key.clone(),
            etag: etag.clone(),
            index,
        };
        let first = blocks.start;
        let mut cells: Vec<Option<Cell>> = blocks.map(|index| self.cached(&id(index))).collect();
        let missing = (first..).zip(&cells).filter(|(_, c)| c.is_none());
        let runs = self.runs(missing.map(|(index, _)| index));
        for run in runs {
            let need = units((run.end - run.start) * self.block_size);
            let permit = if wait {
                self.budget.clone().acquire_many_owned(need).await.ok()
            } else {
                self.budget.clone().try_acquire_many_owned(need).ok()
            };
            let Some(permit) = permit else {
                continue;
            };
            // Registered only now, with room to fetch: whoever joins a pending
            // block is sure to get it.
            let mut senders = Vec::new();
            {
                let memory = lock(&self.memory);
                let mut pending = lock(&self.pending);
                for index in run {
                    let block = id(index);
                    let slot = &mut cells[(index - first) as usize];
                    if let Some(data) = memory.peek(&block) {
                        *slot = Some(Cell::Ready(data.clone()));
                    } else if let Some(p) = pending.get(&block) {
                        *slot = Some(Cell::Pending(p.clone()));
                    } else {
                        let (tx, rx) = watch::channel(None);
                        pending.insert(block.clone(), rx.clone());
                        *slot = Some(Cell::Pending(rx));
                        senders.push((block, tx));
                    }
                }
            }
            if senders.is_empty() {
                continue;
            }
            let this = self.clone();
            let to_disk = self.keeps_on_disk(obj);
            tokio::spawn(async move {
                this.fetch(senders, to_disk).await;
                drop(permit);
            });
        }
        cells
    }

    /// Block indexes (ascending) in runs of consecutive ones, each at most
    /// `MAX_FETCH` long: what one GET fetches.
    fn runs(&self, indexes: impl Iterator<Item = u64>) -> Vec<Range<u64>> {
        let per_fetch = (MAX_FETCH / self.block_size).max(1);
        let mut runs: Vec<Range<u64>> = Vec::new();
        for index in indexes {
            match runs.last_mut() {
                Some(run) if run.end == index && run.end - run.start < per_fetch => run.end += 1,
                _ => runs.push(index..index + 1),
            }
        }
        runs
    }

    /// The block if it is in memory or being fetched.
    fn cached(&self, id: &BlockId) -> Option<Cell> {
        if let Some(data) = lock(&self.memory).get(id) {
            return Some(Cell::Ready(data.clone()));
        }
        lock(&self.pending).get(id).cloned().map(Cell::Pending)
    }

    /// Fetch blocks (of one object, in order): from disk where it has them, the
    /// rest with one ranged GET; then hand each block to its waiters and cache it
    /// in memory, and on disk if `to_disk`.
    async fn fetch(
        self: Arc<Self>,
        blocks: Vec<(BlockId, watch::Sender<FetchResult>)>,
        to_disk: bool,
    ) {
        let mut results: Vec<FetchResult> = vec![None; blocks.len()];
        if self.disk.is_some() {
            let ids: Vec<BlockId> = blocks.iter().map(|(id, _)| id.clone()).collect();
            let this = self.clone();
            let found = tokio::task::spawn_blocking(move || {
                ids.iter()
                    .map(|id| this.disk.as_ref().and_then(|d| d.get(id)))
                    .collect::<Vec<_>>()
            })
            .await
            .unwrap_or_default();
            for (slot, data) in results.iter_mut().zip(found) {
                *slot = data.map(Ok);
            }
        }
        let missing: Vec<usize> = (0..blocks.len())
            .filter(|i| results[*i].is_none())
            .collect();
        let mut written = Vec::new();
        if let (Some(&lo), Some(&hi)) = (missing.first(), missing.last()) {
            let (first, last) = (&blocks[lo].0, &blocks[hi].0);
            let start = first.index * self.block_size;
            let end = (last.index + 1) * self.block_size;
            match self
                .store
                .get_pieces(&first.key, start..end, Some(&first.etag), self.block_size)
                .await
            {
                Ok(pieces) => {
                    // A piece per block, each its own buffer: the memory cache may
                    // keep one block of a GET without the others.
                    for &i in &missing {
                        let n = blocks[i].0.index - first.index;
                        let block = usize::try_from(n)
                            .ok()
                            .and_then(|n| pieces.get(n))
                            .filter(|p| p.len() as u64 <= self.block_size)
                            .cloned()
                            .unwrap_or_default();
                        if to_disk && !block.is_empty() {
                            written.push((blocks[i].0.clone(), block.clone()));
                        }
                        results[i] = Some(Ok(block));
                    }
                }
                Err(e) => {
                    for &i in &missing {
                        results[i] = Some(Err(e.clone()));
                    }
                }
            }
        }
        {
            let mut memory = lock(&self.memory);
            let mut pending = lock(&self.pending);
            for ((id, tx), result) in blocks.into_iter().zip(results) {
                pending.remove(&id);
                if let Some(Ok(data)) = &result
                    && !data.is_empty()
                {
                    memory.put(id, data.clone());
                }
                let _ = tx.send(result);
            }
        }
        if !written.is_empty() && self.disk.is_some() {
            // Inside the fetch's memory budget: the data is held until written.
            let this = self.clone();
            let _ = tokio::task::spawn_blocking(move || {
                for (id, data) in written {
                    if let Some(disk) = &this.disk
                        && let Err(e) = disk.put(&id, &data)
                    {
                        tracing::warn!("cannot write a block to the disk cache: {e}");
                    }
                }
            })
            .await;
        }
    }
}

#[cfg(test)]
mod tests;
