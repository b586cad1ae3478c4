//! Staging files: where writes land before they are uploaded.
//!
//! A staging file is a plain file in `<cache-dir>/staging/`. Its name carries the
//! key's last segment so that a person looking for data that failed to upload can
//! recognise it. It is deleted only after a successful upload (or when the file it
//! stages was deleted); otherwise it stays, and its path is logged.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;

/// The start of the name of a staging file that only keeps what handles read of
/// a file removed or replaced: a copy of S3's data (and of writes to a file no
/// longer named), never uploaded. After a crash it is the only kind of staging
/// file that may be deleted without a record.
pub const KEPT_PREFIX: &str = "kept-";

/// Names tried for one staging file before giving up.
const MAX_TRIES: u32 = 10_000;

pub struct StagingDir {
    dir: PathBuf,
    counter: AtomicU64,
}

impl StagingDir {
    pub fn new(dir: PathBuf) -> io::Result<Self> {
        crate::private::create_dir(&dir)?;
        Ok(Self {
            dir,
            counter: AtomicU64::new(0),
        })
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The staging file `name` kept by an earlier mount (named by its journal
    /// record).
    pub fn open(&self, name: &str) -> io::Result<StagingFile> {
        let path = self.dir.join(name);
        let file = OpenOptions::new().read(true).write(true).open(&path)?;
        Ok(StagingFile {
            path,
            reader: StagingReader {
                file: Arc::new(file),
            },
        })
    }

    /// A new, empty staging file for `key`; `kept`: it only keeps what open
    /// handles read of a file removed or replaced, and holds nothing to upload
    /// (see [`KEPT_PREFIX`]).
    pub fn create(&self, key: &str, kept: bool) -> io::Result<StagingFile> {
        let base: String = key
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .chars()
            .map(|c| {
                if c.is_alphanumeric() || ".-_".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .take(100)
            .collect();
        // A file kept from an earlier mount may have the name (process ids are
        // reused, and a mount restarted in-process counts from 0 again): it is
        // left alone and the next number taken.
        let mut tries = 0;
        let (path, file) = loop {
            let n = self.counter.fetch_add(1, Ordering::Relaxed);
            let kind = if kept { KEPT_PREFIX } else { "" };
            let path = self
                .dir
                .join(format!("{kind}{}-{n}-{base}", std::process::id()));
            match OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .mode(crate::private::FILE_MODE)
                .open(&path)
            {
                Ok(file) => break (path, file),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && tries < MAX_TRIES => {
                    tries += 1;
                }
                Err(e) => return Err(e),
            }
        };
        Ok(StagingFile {
            path,
            reader: StagingReader {
                file: Arc::new(file),
            },
        })
    }
}

/// One staging file. Reads and writes run on tokio's blocking pool.
pub struct StagingFile {
    path: PathBuf,
    reader: StagingReader,
}

/// Read access to a staging file that a background upload can own.
#[derive(Clone)]
pub struct StagingReader {
    file: Arc<File>,
}

impl StagingReader {
    /// Up to `len` bytes at `offset` (fewer at the end of the file).
    pub async fn read_at(&self, offset: u64, len: usize) -> io::Result<Bytes> {
        let file = self.file.clone();
        blocking(move || {
            let mut buf = vec![0; len];
            let mut filled = 0;
            while filled < len {
                match file.read_at(&mut buf[filled..], offset + filled as u64) {
                    Ok(0) => break,
                    Ok(n) => filled += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            buf.truncate(filled);
            Ok(Bytes::from(buf))
        })
        .await
    }
}

impl StagingFile {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// From now on the file only keeps what open handles read (see
    /// [`KEPT_PREFIX`]): renamed so.
    pub fn mark_kept(&mut self) -> io::Result<()> {
        let name = self.name();
        if name.starts_with(KEPT_PREFIX) {
            return Ok(());
        }
        let kept = self.path.with_file_name(format!("{KEPT_PREFIX}{name}"));
        std::fs::rename(&self.path, &kept)?;
        self.path = kept;
        Ok(())
    }

    /// The file's name in the staging directory (its journal record's name).
    pub fn name(&self) -> String {
        self.path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    pub fn reader(&self) -> StagingReader {
        self.reader.clone()
    }

    pub async fn write_at(&self, offset: u64, data: Bytes) -> io::Result<()> {
        let file = self.reader.file.clone();
        blocking(move || file.write_all_at(&data, offset)).await
    }

    /// Up to `len` bytes at `offset` (fewer at the end of the file).
    pub async fn read_at(&self, offset: u64, len: usize) -> io::Result<Bytes> {
        self.reader.read_at(offset, len).await
    }

    pub async fn set_len(&self, len: u64) -> io::Result<()> {
        let file = self.reader.file.clone();
        blocking(move || file.set_len(len)).await
    }

    /// Free the disk blocks of `range` (S3 holds its bytes): the file keeps its
    /// size, and the range reads as zeros.
    pub async fn punch_hole(&self, range: std::ops::Range<u64>) -> io::Result<()> {
        use nix::fcntl::{FallocateFlags, fallocate};
        let file = self.reader.file.clone();
        let (start, len) = (range.start as i64, (range.end - range.start) as i64);
        let flags = FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE;
        blocking(move || Ok(fallocate(&*file, flags, start, len)?)).await
    }

    /// Flush to disk, so that data kept after a failed upload survives a crash.
    pub async fn sync(&self) -> io::Result<()> {
        let file = self.reader.file.clone();
        blocking(move || file.sync_data()).await
    }

    /// Delete the file (its data reached S3, or is no longer wanted).
    pub fn remove(self) {
        if let Err(e) = std::fs::remove_file(&self.path) {
            tracing::warn!("cannot remove staging file {}: {e}", self.path.display());
        }
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(io::Error::other(e)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn write_read_truncate_remove() {
        let dir = tempfile::tempdir().unwrap();
        let staging = StagingDir::new(dir.path().join("staging")).unwrap();
        let f = staging.create("a/b/report 1.txt", false).unwrap();
        assert!(
            f.path()
                .file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .ends_with("report_1.txt")
        );
        f.write_at(3, Bytes::from_static(b"xyz")).await.unwrap();
        assert_eq!(&f.read_at(0, 10).await.unwrap()[..], b"\0\0\0xyz");
        f.set_len(4).await.unwrap();
        assert_eq!(std::fs::metadata(f.path()).unwrap().len(), 4);
        let path = f.path().to_path_buf();
        f.remove();
        assert!(!path.exists());
    }

    #[test]
    fn files_kept_by_an_earlier_mount_are_not_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        let kept = {
            let earlier = StagingDir::new(dir.path().to_path_buf()).unwrap();
            let f = earlier.create("f", false).unwrap();
            std::fs::write(f.path(), b"kept").unwrap();
            f.path().to_path_buf()
        };
        // A mount in the same process counts from the start again.
        let staging = StagingDir::new(dir.path().to_path_buf()).unwrap();
        let f = staging.create("f", false).unwrap();
        assert_ne!(f.path(), kept);
        assert_eq!(std::fs::read(&kept).unwrap(), b"kept");
    }
}
