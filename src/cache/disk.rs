//! The disk cache: one file per block under `CACHE_DIR/blocks`, kept across mounts.
//!
//! A block file holds a header (the object key, its ETag, the block index, the
//! data's length and CRC-32) and the data. A read checks all of them, so a block of
//! another object version, a truncated file or flipped bits are never served: the
//! file is deleted and the block fetched again. The cache is bounded by a size and
//! by a minimum of free space on its filesystem; the least recently used blocks go
//! first. At mount the files found are indexed, oldest modification first (a hit
//! touches its file), so the order survives a remount.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
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
    index: Mutex<Index>,
}

struct Index {
    /// File name → data length, least recently used first.
    lru: LruCache<String, u64>,
    bytes: u64,
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
fn parse(id: &BlockId, file: &[u8]) -> Option<Bytes> {
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
    (index == id.index && rest.is_empty() && crc32fast::hash(data) == crc)
        .then(|| Bytes::copy_from_slice(data))
}

impl DiskCache {
    /// Open (and index) the cache in `dir`.
    pub fn open(dir: PathBuf, limits: DiskLimits) -> io::Result<Self> {
        fs::create_dir_all(&dir)?;
        let mut found: Vec<(SystemTime, String, u64)> = Vec::new();
        for entry in fs::read_dir(&dir)? {
            let entry = entry?;
            let md = entry.metadata()?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if !md.is_file() || name.ends_with(".tmp") {
                // A block being written when the last mount ended.
                let _ = fs::remove_file(entry.path());
                continue;
            }
            let len = md.len();
            found.push((md.modified().unwrap_or(SystemTime::UNIX_EPOCH), name, len));
        }
        found.sort();
        let mut index = Index {
            lru: LruCache::unbounded(),
            bytes: 0,
        };
        for (_, name, len) in found {
            index.bytes += len;
            index.lru.put(name, len);
        }
        let cache = Self {
            dir,
            limits,
            index: Mutex::new(index),
        };
        // The limits may be smaller than at the last mount.
        let _ = cache.reserve(0);
        Ok(cache)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn index(&self) -> std::sync::MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Bytes of block files on disk.
    pub fn bytes(&self) -> u64 {
        self.index().bytes
    }

    /// The block, if a valid copy is on disk. A damaged or foreign file is removed.
    pub fn get(&self, id: &BlockId) -> Option<Bytes> {
        let name = file_name(id);
        // Known to the index (which also marks it as just used)?
        self.index().lru.get(&name)?;
        let path = self.path(&name);
        let parsed = fs::read(&path).ok().and_then(|file| parse(id, &file));
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
        if !self.reserve(size) {
            return Ok(());
        }
        let path = self.path(&name);
        let tmp = self.path(&format!("{name}.tmp"));
        let written = (|| {
            let mut file = fs::File::create(&tmp)?;
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
        if let Some(len) = index.lru.pop(name) {
            index.bytes -= len;
        }
        let _ = fs::remove_file(self.path(name));
    }

    /// Make room for `incoming` bytes, removing the least recently used blocks, and
    /// count them in; `false` if there cannot be room (the block is not written).
    fn reserve(&self, incoming: u64) -> bool {
        let mut index = self.index();
        loop {
            let free = free_space(&self.dir).unwrap_or(u64::MAX);
            let over_size = index.bytes + incoming > self.limits.max_bytes;
            let low_disk = free < self.limits.min_free.saturating_add(incoming);
            if !over_size && !low_disk {
                index.bytes += incoming;
                return true;
            }
            match index.lru.pop_lru() {
                Some((name, len)) => {
                    index.bytes -= len;
                    let _ = fs::remove_file(self.path(&name));
                }
                None => return false,
            }
        }
    }
}

/// Free bytes for unprivileged users on the filesystem of `dir`.
fn free_space(dir: &Path) -> Option<u64> {
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
