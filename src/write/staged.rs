//! A file being changed: a sparse staging file laid over the object version it
//! started from (its base).
//!
//! The staging file has the object's offsets. It holds what was written and what
//! had to be fetched to be read back; every other byte below `base.len` is still
//! only in S3. A write never downloads anything, and at upload the parts that
//! nothing touched are copied server-side from the base (UploadPartCopy), so a
//! small change to a large object moves little data.

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use rangemap::RangeSet;

use super::WriteError;
use super::staging::StagingFile;
use crate::cache::{BlockCache, ObjectVersion};
use crate::store::StoreError;

/// The most base bytes fetched in one go to fill a gap (bounds the memory one fill
/// holds).
const MAX_FILL: u64 = 8 << 20;

/// The object version a staged file started from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Base {
    pub key: String,
    pub etag: Option<String>,
    /// Bytes `0..len` of the file are the base's until written: the object's size,
    /// or less after a truncation.
    pub len: u64,
}

pub struct Staged {
    file: StagingFile,
    base: Option<Base>,
    /// Ranges below `base.len` that the staging file holds.
    present: RangeSet<u64>,
    /// Ranges written since the last upload.
    dirty: RangeSet<u64>,
    /// Ranges S3 holds as confirmed parts of the upload under way, gone from the
    /// staging file (see [`super::offload`]).
    offloaded: RangeSet<u64>,
    size: u64,
}

/// Where the bytes of one part of an upload come from.
#[derive(Debug, PartialEq, Eq)]
pub enum PartSource {
    /// Unchanged bytes of the base: copy them server-side.
    Copy(Base),
    /// From the staging file, once the listed gaps are fetched from the base.
    Local { gaps: Vec<Range<u64>> },
}

fn insert(set: &mut RangeSet<u64>, r: Range<u64>) {
    if r.start < r.end {
        set.insert(r);
    }
}

fn remove(set: &mut RangeSet<u64>, r: Range<u64>) {
    if r.start < r.end {
        set.remove(r);
    }
}

impl Staged {
    /// A staged file of `size` bytes over `base` (`None`: a new or emptied file,
    /// all of whose bytes are in the staging file).
    pub fn new(file: StagingFile, base: Option<Base>, size: u64) -> Self {
        Self {
            file,
            base,
            present: RangeSet::new(),
            dirty: RangeSet::new(),
            offloaded: RangeSet::new(),
            size,
        }
    }

    /// A staged file found again after a restart: `local` are the ranges its
    /// staging file holds (below the base's length; everything above is local).
    pub fn restore(
        file: StagingFile,
        base: Option<Base>,
        size: u64,
        local: impl IntoIterator<Item = Range<u64>>,
    ) -> Self {
        let mut staged = Self::new(file, base, size);
        for r in local {
            insert(&mut staged.present, r.clone());
            insert(&mut staged.dirty, r);
        }
        let above = staged.base_len()..size;
        insert(&mut staged.dirty, above);
        staged
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// The ranges S3 holds as parts of the upload under way and the staging
    /// file no longer does.
    pub fn offloaded(&self) -> impl Iterator<Item = Range<u64>> + '_ {
        self.offloaded.iter().cloned()
    }

    pub fn has_offloaded(&self) -> bool {
        !self.offloaded.is_empty()
    }

    pub fn offloaded_bytes(&self) -> u64 {
        self.offloaded.iter().map(|r| r.end - r.start).sum()
    }

    /// Note `ranges` as offloaded, before their bytes leave the staging file (the
    /// journal must say so first): reads and writes of them fail from now on.
    pub fn mark_offloaded(&mut self, ranges: &[Range<u64>]) {
        for r in ranges {
            insert(&mut self.offloaded, r.clone());
        }
    }

    /// Take back a mark whose journal record could not be written.
    pub fn unmark_offloaded(&mut self, ranges: &[Range<u64>]) {
        for r in ranges {
            remove(&mut self.offloaded, r.clone());
        }
    }

    /// Has every byte of `range` been written (or fetched) into the staging
    /// file? Not the holes a truncation that extends leaves.
    pub fn is_written(&self, range: &Range<u64>) -> bool {
        self.present.gaps(range).next().is_none()
    }

    /// Bytes written into the staging file and still on disk there.
    pub fn bytes_on_disk(&self) -> u64 {
        let present: u64 = self.present.iter().map(|r| r.end - r.start).sum();
        present.saturating_sub(self.offloaded_bytes())
    }

    /// Is all of `range` offloaded?
    pub fn is_offloaded(&self, range: &Range<u64>) -> bool {
        self.offloaded.gaps(range).next().is_none()
    }

    /// The first offloaded range `range` touches, if any.
    fn offloaded_in(&self, range: Range<u64>) -> Option<Range<u64>> {
        if range.start >= range.end {
            return None;
        }
        self.offloaded.overlapping(&range).next().cloned()
    }

    /// The ranges below the base's length that the staging file holds (all
    /// above it is local), for the journal.
    pub fn local_ranges(&self) -> Vec<(u64, u64)> {
        let below = self.base_len();
        self.present
            .iter()
            .filter(|r| r.start < below)
            .map(|r| (r.start, r.end.min(below)))
            .collect()
    }

    /// Bytes `0..base_len()` not held locally are the base's.
    pub fn base_len(&self) -> u64 {
        self.base.as_ref().map_or(0, |b| b.len.min(self.size))
    }

    pub fn file(&self) -> &StagingFile {
        &self.file
    }

    pub fn file_mut(&mut self) -> &mut StagingFile {
        &mut self.file
    }

    pub fn into_file(self) -> StagingFile {
        self.file
    }

    /// Does nothing of the file come from an object (a new or emptied file)?
    pub fn is_new(&self) -> bool {
        self.base_len() == 0
    }

    /// Is every byte of the file on local disk?
    pub fn is_complete(&self) -> bool {
        self.offloaded.is_empty() && self.gaps(0..self.size).is_empty()
    }

    pub async fn write(&mut self, offset: u64, data: Bytes) -> Result<(), WriteError> {
        let end = offset
            .checked_add(data.len() as u64)
            .ok_or(WriteError::TooLarge(u64::MAX))?;
        if let Some(gone) = self.offloaded_in(offset..end) {
            return Err(WriteError::Offloaded(gone));
        }
        self.file.write_at(offset, data).await?;
        insert(&mut self.present, offset..end);
        insert(&mut self.dirty, offset..end);
        self.size = self.size.max(end);
        Ok(())
    }

    /// Truncate or extend. Bytes past the old end read as zeros; bytes cut off are
    /// gone from the base too.
    pub async fn set_len(&mut self, len: u64) -> Result<(), WriteError> {
        if let Some(gone) = self.offloaded_in(len..self.size) {
            return Err(WriteError::Offloaded(gone));
        }
        self.file.set_len(len).await?;
        if len < self.size {
            if let Some(base) = &mut self.base {
                base.len = base.len.min(len);
            }
            remove(&mut self.present, len..u64::MAX);
            remove(&mut self.dirty, len..u64::MAX);
        } else {
            insert(&mut self.dirty, self.size..len);
        }
        self.size = len;
        Ok(())
    }

    /// Up to `len` bytes at `offset`, fetching from the base what is not local yet.
    pub async fn read(
        &mut self,
        cache: &Arc<BlockCache>,
        offset: u64,
        len: u64,
    ) -> Result<Bytes, WriteError> {
        let end = offset.saturating_add(len).min(self.size);
        if offset >= end {
            return Ok(Bytes::new());
        }
        if let Some(gone) = self.offloaded_in(offset..end) {
            return Err(WriteError::Offloaded(gone));
        }
        // Whole blocks around the read, so that the next reads find them.
        let block = cache.block_size();
        let aligned = offset / block * block..end.div_ceil(block) * block;
        self.fill(cache, aligned).await?;
        Ok(self.file.read_at(offset, (end - offset) as usize).await?)
    }

    /// Fetch into the staging file the base bytes of `range` it lacks.
    pub async fn fill(
        &mut self,
        cache: &Arc<BlockCache>,
        range: Range<u64>,
    ) -> Result<(), WriteError> {
        let gaps = self.gaps(range);
        self.fetch(cache, &gaps).await?;
        self.mark_present(&gaps);
        Ok(())
    }

    /// Base bytes of `range` that are not in the staging file.
    fn gaps(&self, range: Range<u64>) -> Vec<Range<u64>> {
        let outer = range.start..range.end.min(self.base_len());
        if outer.start >= outer.end {
            return Vec::new();
        }
        self.present.gaps(&outer).collect()
    }

    /// Fetch `gaps` of the base into the staging file (several GETs where a gap is
    /// large). Takes `&self` so that the parts of an upload can fill in parallel;
    /// [`Self::mark_present`] records the result.
    pub async fn fetch(
        &self,
        cache: &Arc<BlockCache>,
        gaps: &[Range<u64>],
    ) -> Result<(), WriteError> {
        let Some(base) = &self.base else {
            return Ok(());
        };
        let version = ObjectVersion {
            key: Arc::from(base.key.as_str()),
            etag: base.etag.as_deref().map(Arc::from),
            size: base.len,
        };
        for gap in gaps {
            let mut start = gap.start;
            while start < gap.end {
                let end = gap.end.min(start + MAX_FILL);
                let data = match cache.read(&version, start..end).await {
                    Ok(data) => data,
                    // The version the file was changed over is gone: stale, as
                    // when it is replaced.
                    Err(StoreError::NotFound) => return Err(StoreError::PreconditionFailed.into()),
                    Err(e) => return Err(e.into()),
                };
                if data.len() as u64 != end - start {
                    return Err(WriteError::ShortRead(base.key.clone()));
                }
                self.file.write_at(start, data).await?;
                start = end;
            }
        }
        Ok(())
    }

    pub fn mark_present(&mut self, ranges: &[Range<u64>]) {
        for r in ranges {
            insert(&mut self.present, r.clone());
        }
    }

    /// How to upload bytes `range` as one part.
    pub fn part_source(&self, range: Range<u64>) -> PartSource {
        match &self.base {
            Some(base) if range.end <= self.base_len() && !self.dirty.overlaps(&range) => {
                PartSource::Copy(base.clone())
            }
            _ => PartSource::Local {
                gaps: self.gaps(range),
            },
        }
    }

    /// The upload finished: the object now is this file, with ETag `etag`.
    pub fn uploaded(&mut self, key: &str, etag: String) {
        // What was offloaded is read from the object from now on.
        for r in std::mem::take(&mut self.offloaded).iter() {
            remove(&mut self.present, r.clone());
        }
        self.base = Some(Base {
            key: key.to_string(),
            etag: Some(etag),
            len: self.size,
        });
        self.dirty.clear();
    }

    /// The base object was copied to `key` (a rename): read it from there.
    pub fn rebase(&mut self, key: &str, etag: String) {
        if let Some(base) = &mut self.base {
            base.key = key.to_string();
            base.etag = Some(etag);
        }
    }

    pub fn base(&self) -> Option<&Base> {
        self.base.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::CacheConfig;
    use crate::store::memory::{MemoryStore, Op};
    use crate::write::staging::StagingDir;

    const MIB: u64 = 1 << 20;

    fn cache(store: &Arc<MemoryStore>) -> Arc<BlockCache> {
        let config = CacheConfig {
            block_size: MIB,
            memory_bytes: 64 * MIB,
            in_flight_bytes: 64 * MIB,
            disk: None,
        };
        Arc::new(BlockCache::new(store.clone(), config).unwrap())
    }

    fn body(len: u64) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8).collect()
    }

    async fn over(store: &Arc<MemoryStore>, len: u64) -> (tempfile::TempDir, Staged) {
        store.insert("k", body(len));
        let etag = store.object("k").unwrap().etag;
        let dir = tempfile::tempdir().unwrap();
        let staging = StagingDir::new(dir.path().to_path_buf()).unwrap();
        let base = Base {
            key: "k".into(),
            etag: Some(etag),
            len,
        };
        let staged = Staged::new(staging.create("k", false).unwrap(), Some(base), len);
        (dir, staged)
    }

    #[tokio::test]
    async fn writes_download_nothing_and_reads_fetch_only_their_blocks() {
        let store = Arc::new(MemoryStore::new());
        let (_dir, mut s) = over(&store, 10 * MIB).await;
        s.write(5 * MIB + 10, Bytes::from_static(b"hello"))
            .await
            .unwrap();
        assert_eq!(store.calls(Op::Get), 0);
        let got = s.read(&cache(&store), 5 * MIB, 20).await.unwrap();
        let mut want = body(10 * MIB)[(5 * MIB) as usize..(5 * MIB + 20) as usize].to_vec();
        want[10..15].copy_from_slice(b"hello");
        assert_eq!(&got[..], &want[..]);
        // The one block around the read.
        assert_eq!(store.calls(Op::Get), 1);
        assert!(!s.is_complete());
    }

    #[tokio::test]
    async fn unchanged_parts_are_copied_and_changed_ones_filled() {
        let store = Arc::new(MemoryStore::new());
        let (_dir, mut s) = over(&store, 20 * MIB).await;
        s.write(9 * MIB, vec![1; 10].into()).await.unwrap();
        assert!(matches!(s.part_source(0..8 * MIB), PartSource::Copy(_)));
        assert_eq!(
            s.part_source(8 * MIB..16 * MIB),
            PartSource::Local {
                gaps: vec![8 * MIB..9 * MIB, 9 * MIB + 10..16 * MIB]
            }
        );
        // Cut to 18 MiB, grow back to 20: the tail is zeros, not the base's bytes.
        s.set_len(18 * MIB).await.unwrap();
        s.set_len(20 * MIB).await.unwrap();
        let tail_gaps: Vec<Range<u64>> = std::iter::once(16 * MIB..18 * MIB).collect();
        assert_eq!(
            s.part_source(16 * MIB..20 * MIB),
            PartSource::Local { gaps: tail_gaps }
        );
        let tail = s.read(&cache(&store), 18 * MIB - 2, 4).await.unwrap();
        let b = body(20 * MIB);
        let at = (18 * MIB - 2) as usize;
        assert_eq!(&tail[..], &[b[at], b[at + 1], 0, 0]);
    }

    #[tokio::test]
    async fn a_changed_base_is_stale() {
        let store = Arc::new(MemoryStore::new());
        let (_dir, mut s) = over(&store, MIB).await;
        store.insert("k", "replaced");
        let err = s.read(&cache(&store), 0, 10).await.unwrap_err();
        assert_eq!(err.errno(), libc::ESTALE);
    }
}
