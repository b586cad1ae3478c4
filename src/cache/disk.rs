//! The disk cache: one file per block under `CACHE_DIR/blocks`, kept across mounts.
//!
//! A block file holds a header (the object key, its ETag, the block index, the
//! data's length and CRC-32) and the data. A read checks all of them, so a block of
//! another object version, a truncated file or flipped bits are never served: the
//! file is deleted and the block fetched again. The cache is bounded by a size and
//! by a minimum of free space on its filesystem; the least recently used blocks go
//! first. At mount the files found are indexed, oldest modification first (a hit
//! touches its file), so the order survives a remount.

use std::collections::HashSet;
use std::fs;
use std::io;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use bytes::Bytes;
use lru::LruCache;
use sha2::{Digest, Sha256};

use super::BlockId;

const MAGIC: &[u8; 8] = b"S3MBLK01";

/// Limits of the disk cache.
#[derive(Debug, Clone)]
pub struct DiskLimits {
    /// Most bytes of block data kept.
    pub max_bytes: u64,
    /// Blocks are evicted (and none written) while the filesystem has less free.
    pub min_free: u64,
}

pub struct DiskCache {
    dir: PathBuf,
    limits: DiskLimits,
    index: Arc<Mutex<Index>>,
    /// Numbers the temporary files of block writes.
    writes: AtomicU64,
    /// The files found at open are all in the index (until then, a block not
    /// in it may still be on disk).
    indexed: Arc<AtomicBool>,
}

struct Index {
    /// File name → data length, least recently used first.
    lru: LruCache<String, u64>,
    bytes: u64,
    /// Until the files found at open are indexed: the blocks this mount wrote or
    /// removed meanwhile. Its own record of them is the true one; what the scan
    /// saw of them may be stale (a file since removed, a write not yet indexed).
    touched: Option<HashSet<String>>,
}

impl Index {
    fn touch(&mut self, name: &str) {
        if let Some(touched) = &mut self.touched {
            touched.insert(name.to_owned());
        }
    }
}

/// The file name of a block: a hash of what identifies it.
fn file_name(id: &BlockId) -> String {
    let mut h = Sha256::new();
    h.update(id.key.as_bytes());
    h.update([0]);
    h.update(id.etag.as_bytes());
    h.update([0]);
    h.update(id.index.to_le_bytes());
    h.finalize()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn header(id: &BlockId, data: &[u8]) -> Vec<u8> {
    let mut h = Vec::with_capacity(64 + id.key.len() + id.etag.len());
    h.extend_from_slice(MAGIC);
    for field in [id.key.as_bytes(), id.etag.as_bytes()] {
        h.extend_from_slice(&(field.len() as u32).to_le_bytes());
        h.extend_from_slice(field);
    }
    h.extend_from_slice(&id.index.to_le_bytes());
    h.extend_from_slice(&(data.len() as u64).to_le_bytes());
    h.extend_from_slice(&crc32fast::hash(data).to_le_bytes());
    h
}

/// The data of a block file, if it is whole and is block `id`.
fn parse(id: &BlockId, file: Vec<u8>) -> Option<Bytes> {
    let file = Bytes::from(file);
    let mut rest = file.strip_prefix(MAGIC.as_slice())?;
    let mut take = |n: usize| -> Option<&[u8]> {
        let (head, tail) = rest.split_at_checked(n)?;
        rest = tail;
        Some(head)
    };
    for expected in [id.key.as_bytes(), id.etag.as_bytes()] {
        let len = u32::from_le_bytes(take(4)?.try_into().ok()?) as usize;
        if take(len)? != expected {
            return None;
        }
    }
    let index = u64::from_le_bytes(take(8)?.try_into().ok()?);
    let len = u64::from_le_bytes(take(8)?.try_into().ok()?);
    let crc = u32::from_le_bytes(take(4)?.try_into().ok()?);
    let data = take(usize::try_from(len).ok()?)?;
    // The block is a view of the file's buffer: no copy.
    (index == id.index && rest.is_empty() && crc32fast::hash(data) == crc)
        .then(|| file.slice_ref(data))
}

impl DiskCache {
    /// Open the cache in `dir`. The files already there are indexed in the
    /// background (a cache of 100,000 blocks must not hold the mount up):
    /// meanwhile a block not in the index is looked for on disk all the same,
    /// and the limits are applied once the index is whole.
    pub fn open(dir: PathBuf, limits: DiskLimits) -> io::Result<Self> {
        let cache = Self::unindexed(dir.clone(), limits.clone())?;
        let (index, indexed) = (cache.index.clone(), cache.indexed.clone());
        let opened = SystemTime::now();
        std::thread::Builder::new()
            .name("s3mount-index".into())
            .spawn(move || {
                match scan(&dir, opened) {
                    Ok(found) => {
                        let mut index = lock(&index);
                        merge(&mut index, found);
                        // The limits may be smaller than at the last mount.
                        reserve_in(&mut index, &dir, &limits, 0);
                    }
                    Err(e) => tracing::warn!("cannot index the cache in {}: {e}", dir.display()),
                }
                indexed.store(true, Ordering::Release);
            })?;
        Ok(cache)
    }

    /// The cache in `dir`, its files not yet indexed.
    fn unindexed(dir: PathBuf, limits: DiskLimits) -> io::Result<Self> {
        crate::private::create_dir(&dir)?;
        Ok(Self {
            dir,
            limits,
            index: Arc::new(Mutex::new(Index {
                lru: LruCache::unbounded(),
                bytes: 0,
                touched: Some(HashSet::new()),
            })),
            writes: AtomicU64::new(0),
            indexed: Arc::new(AtomicBool::new(false)),
        })
    }

    /// Wait until the files found at open are indexed (tests).
    pub fn wait_indexed(&self) {
        while !self.indexed.load(Ordering::Acquire) {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn index(&self) -> std::sync::MutexGuard<'_, Index> {
        lock(&self.index)
    }

    /// The most bytes of block files the cache keeps.
    pub fn max_bytes(&self) -> u64 {
        self.limits.max_bytes
    }

    /// Bytes of block files on disk.
    pub fn bytes(&self) -> u64 {
        self.index().bytes
    }

    /// Whether the index has the block (no file system call: for counting).
    pub fn in_index(&self, id: &BlockId) -> bool {
        self.index().lru.contains(&file_name(id))
    }

    /// Whether the block may be on disk (without reading it).
    pub fn may_have(&self, id: &BlockId) -> bool {
        let name = file_name(id);
        self.index().lru.contains(&name)
            || (!self.indexed.load(Ordering::Acquire) && self.path(&name).exists())
    }

    /// The block, if a valid copy is on disk. A damaged or foreign file is removed.
    pub fn get(&self, id: &BlockId) -> Option<Bytes> {
        let name = file_name(id);
        // Known to the index (which also marks it as just used)? Before the
        // index is whole, a file of an earlier mount may be there all the same.
        let known = self.index().lru.get(&name).is_some();
        if !known && self.indexed.load(Ordering::Acquire) {
            return None;
        }
        let path = self.path(&name);
        let parsed = fs::read(&path).ok().and_then(|file| parse(id, file));
        match &parsed {
            Some(_) => {
                // Keeps the LRU order for the next mount.
                if let Ok(f) = fs::File::options().write(true).open(&path) {
                    let _ = f.set_modified(SystemTime::now());
                }
            }
            None => {
                tracing::warn!(
                    "cache file {} is damaged or stale; fetching the block again",
                    path.display()
                );
                self.remove(&name);
            }
        }
        parsed
    }

    /// Store a block (written to a temporary file, then renamed into place).
    pub fn put(&self, id: &BlockId, data: &[u8]) -> io::Result<()> {
        let name = file_name(id);
        let header = header(id, data);
        let size = (header.len() + data.len()) as u64;
        if !self.reserve(&name, size) {
            return Ok(());
        }
        let path = self.path(&name);
        // Its own temporary name: two writers of one block must not share it.
        let n = self.writes.fetch_add(1, Ordering::Relaxed);
        let tmp = self.path(&format!("{name}.{n}.tmp"));
        let written = (|| {
            let mut file = fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(crate::private::FILE_MODE)
                .open(&tmp)?;
            io::Write::write_all(&mut file, &header)?;
            io::Write::write_all(&mut file, data)?;
            fs::rename(&tmp, &path)
        })();
        let mut index = self.index();
        if let Err(e) = written {
            index.bytes -= size;
            drop(index);
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        if let Some(old) = index.lru.put(name, size) {
            index.bytes -= old;
        }
        Ok(())
    }

    fn remove(&self, name: &str) {
        let mut index = self.index();
        index.touch(name);
        if let Some(len) = index.lru.pop(name) {
            index.bytes -= len;
        }
        let _ = fs::remove_file(self.path(name));
    }

    /// Make room for the `incoming` bytes of block file `name`, removing the least
    /// recently used blocks, and count them in; `false` if there cannot be room
    /// (the block is not written).
    fn reserve(&self, name: &str, incoming: u64) -> bool {
        let mut index = self.index();
        index.touch(name);
        reserve_in(&mut index, &self.dir, &self.limits, incoming)
    }
}

fn lock(index: &Mutex<Index>) -> std::sync::MutexGuard<'_, Index> {
    index.lock().unwrap_or_else(|e| e.into_inner())
}

/// See [`DiskCache::reserve`].
fn reserve_in(index: &mut Index, dir: &Path, limits: &DiskLimits, incoming: u64) -> bool {
    loop {
        let free = free_space(dir).unwrap_or(u64::MAX);
        let over_size = index.bytes + incoming > limits.max_bytes;
        let low_disk = free < limits.min_free.saturating_add(incoming);
        if !over_size && !low_disk {
            index.bytes += incoming;
            return true;
        }
        match index.lru.pop_lru() {
            Some((name, len)) => {
                index.bytes -= len;
                index.touch(&name);
                let _ = fs::remove_file(dir.join(&name));
            }
            None => return false,
        }
    }
}

/// The block files in `dir`: (modified, name, length), oldest first. Temporary
/// files of writes an earlier mount did not finish go (those older than a
/// minute before `opened`: file times are coarse, and this mount's own must
/// stay); files readable by others are made private.
fn scan(dir: &Path, opened: SystemTime) -> io::Result<Vec<(SystemTime, String, u64)>> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let md = match entry.metadata() {
            Ok(md) => md,
            // Gone since the directory was read.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        let name = entry.file_name().to_string_lossy().into_owned();
        let modified = md.modified().unwrap_or(SystemTime::UNIX_EPOCH);
        if !md.is_file() || name.ends_with(".tmp") {
            let stale = opened
                .checked_sub(std::time::Duration::from_secs(60))
                .unwrap_or(SystemTime::UNIX_EPOCH);
            if modified < stale {
                // A block being written when the last mount ended.
                let _ = fs::remove_file(entry.path());
            }
            continue;
        }
        if md.permissions().mode() & !crate::private::FILE_MODE & 0o777 != 0 {
            // Written by a version that made them readable by all.
            let _ = crate::private::tighten_one(&entry.path(), crate::private::FILE_MODE);
        }
        found.push((modified, name, md.len()));
    }
    found.sort();
    Ok(found)
}

/// Add the files found at open to the index, as less recently used than every
/// block this mount used meanwhile; those this mount wrote or removed since are
/// as it left them.
fn merge(index: &mut Index, found: Vec<(SystemTime, String, u64)>) {
    let touched = index.touched.take().unwrap_or_default();
    for (_, name, len) in found.into_iter().rev() {
        if touched.contains(&name) || index.lru.contains(&name) {
            continue;
        }
        index.bytes += len;
        index.lru.put(name.clone(), len);
        index.lru.demote(&name);
    }
}

/// Free bytes for unprivileged users on the filesystem of `dir`.
pub(crate) fn free_space(dir: &Path) -> Option<u64> {
    let st = nix::sys::statvfs::statvfs(dir).ok()?;
    Some(st.blocks_available() as u64 * st.fragment_size() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn id(key: &str, etag: &str, index: u64) -> BlockId {
        BlockId {
            key: Arc::from(key),
            etag: Arc::from(etag),
            index,
        }
    }

    fn limits(max_bytes: u64) -> DiskLimits {
        DiskLimits {
            max_bytes,
            min_free: 0,
        }
    }

    #[test]
    fn blocks_survive_a_reopen_and_are_keyed_by_etag() {
        let dir = tempfile::tempdir().unwrap();
        let cache = DiskCache::open(dir.path().into(), limits(1 << 20)).unwrap();
        cache.put(&id("k", "e1", 0), b"version one").unwrap();
        drop(cache);
        let cache = DiskCache::open(dir.path().into(), limits(1 << 20)).unwrap();
        assert_eq!(
            cache.get(&id("k", "e1", 0)).as_deref(),
            Some(&b"version one"[..])
        );
        assert_eq!(cache.get(&id("k", "e2", 0)), None);
        assert_eq!(cache.get(&id("k", "e1", 1)), None);
    }

    #[test]
    fn damaged_files_are_not_served_and_go_away() {
        let dir = tempfile::tempdir().unwrap();
        let cache = DiskCache::open(dir.path().into(), limits(1 << 20)).unwrap();
        let block = id("k", "e", 3);
        let data = vec![7u8; 1000];
        for damage in [
            |f: &mut Vec<u8>| f.truncate(f.len() - 10),
            |f: &mut Vec<u8>| {
                let n = f.len();
                f[n - 1] ^= 1;
            },
        ] {
            cache.put(&block, &data).unwrap();
            let path = dir.path().join(file_name(&block));
            let mut file = fs::read(&path).unwrap();
            damage(&mut file);
            fs::write(&path, file).unwrap();
            assert_eq!(cache.get(&block), None);
            assert!(!path.exists());
            assert_eq!(cache.bytes(), 0);
        }
    }

    #[test]
    fn an_earlier_mounts_blocks_are_indexed_in_the_background_within_the_limits() {
        let dir = tempfile::tempdir().unwrap();
        let one = header(&id("k", "e", 0), &[0; 100]).len() as u64 + 100;
        let cache = DiskCache::open(dir.path().into(), limits(1 << 20)).unwrap();
        for i in 0..3 {
            cache.put(&id("k", "e", i), &[i as u8; 100]).unwrap();
            // Distinct times: the order survives the reopen.
            let path = dir.path().join(file_name(&id("k", "e", i)));
            let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1000 + i);
            fs::File::options()
                .write(true)
                .open(path)
                .unwrap()
                .set_modified(t)
                .unwrap();
        }
        drop(cache);
        let cache = DiskCache::open(dir.path().into(), limits(2 * one)).unwrap();
        cache.wait_indexed();
        assert_eq!(cache.bytes(), 2 * one);
        assert!(cache.get(&id("k", "e", 0)).is_none(), "the oldest went");
        assert!(cache.get(&id("k", "e", 2)).is_some());
    }

    // The scan at open races this mount's first reads and writes: what it found
    // may have changed by the time it is merged into the index.

    #[test]
    fn a_block_written_while_the_scan_ran_is_counted_once() {
        let dir = tempfile::tempdir().unwrap();
        let one = header(&id("k", "e", 0), &[0; 100]).len() as u64 + 100;
        let cache = DiskCache::unindexed(dir.path().into(), limits(2 * one)).unwrap();
        // A write counted in, its file in place, not yet in the index.
        let name = file_name(&id("k", "e", 0));
        assert!(cache.reserve(&name, one));
        fs::write(dir.path().join(&name), vec![0; one as usize]).unwrap();
        let found = scan(dir.path(), SystemTime::now()).unwrap();
        merge(&mut cache.index(), found);
        assert_eq!(cache.bytes(), one);
    }

    #[test]
    fn a_block_removed_while_the_scan_ran_stays_out() {
        let dir = tempfile::tempdir().unwrap();
        let cache = DiskCache::unindexed(dir.path().into(), limits(1 << 20)).unwrap();
        let (damaged, evicted) = (id("k", "e", 0), id("k", "e", 1));
        cache.put(&damaged, &[0; 100]).unwrap();
        cache.put(&evicted, &[1; 100]).unwrap();
        let found = scan(dir.path(), SystemTime::now()).unwrap();
        fs::write(dir.path().join(file_name(&damaged)), b"bad").unwrap();
        assert_eq!(cache.get(&damaged), None);
        let mut index = cache.index();
        reserve_in(&mut index, dir.path(), &limits(0), 0);
        merge(&mut index, found);
        assert_eq!(index.bytes, 0);
        assert_eq!(index.lru.len(), 0);
    }

    #[test]
    fn the_least_recently_used_blocks_go_first() {
        let dir = tempfile::tempdir().unwrap();
        let one = header(&id("k", "e", 0), &[0; 100]).len() as u64 + 100;
        let cache = DiskCache::open(dir.path().into(), limits(3 * one)).unwrap();
        for i in 0..3 {
            cache.put(&id("k", "e", i), &[i as u8; 100]).unwrap();
        }
        assert!(cache.get(&id("k", "e", 0)).is_some());
        cache.put(&id("k", "e", 3), &[3; 100]).unwrap();
        // Block 1 was the least recently used.
        assert!(cache.get(&id("k", "e", 1)).is_none());
        for i in [0, 2, 3] {
            assert!(cache.get(&id("k", "e", i)).is_some(), "block {i}");
        }
        assert!(cache.bytes() <= 3 * one);
    }
}
