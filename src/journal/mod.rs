//! The write-back journal: one record per file whose changes S3 does not have
//! yet, in `CACHE_DIR/journal/`, so that a crash loses nothing and uploads nothing
//! its writer did not finish.
//!
//! A record is named after the staging file that holds the file's changes
//! (`journal/NAME.json` for `staging/NAME`). It is replaced atomically (a
//! temporary file renamed over it); when s3mount is about to report a failure the
//! program must be able to rely on (a close() that fails after the writer
//! finished), the record and the data are also fsync'ed, with the directory. A
//! record is removed once S3 has the object. At mount, [`recover`] reads the
//! records (the journal directory is the index: the block cache is never walked)
//! and sorts them into uploads to resume and data to put aside.

pub mod record;
pub mod recover;

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::private::{FILE_MODE, create_dir};

pub use record::{FORMAT, PartRecord, Progress, Record, UploadRecord};
pub use recover::{Recovery, recover};

/// The records written, by staging name: when the first was written (this
/// run) and the file's size as last noted. What `s3mount status` and the
/// metrics say of the changes S3 lacks.
type Index = Arc<Mutex<HashMap<String, (Instant, u64)>>>;

/// Where the journal and the data it names live, under the cache directory.
#[derive(Debug, Clone)]
pub struct Journal {
    index: Index,
    /// Records.
    dir: PathBuf,
    /// Staging files, named by the records.
    staging: PathBuf,
    /// Data of files whose writer did not finish, put aside at mount.
    recovered: PathBuf,
    /// Records that could not be read, with their data.
    quarantine: PathBuf,
}

const RECORD_SUFFIX: &str = ".json";
const TMP_SUFFIX: &str = ".tmp";

impl Journal {
    /// The journal of cache directory `cache_dir` (its directories are made as
    /// they are needed).
    pub fn new(cache_dir: &Path) -> io::Result<Self> {
        let journal = Self {
            index: Index::default(),
            dir: cache_dir.join("journal"),
            staging: cache_dir.join("staging"),
            recovered: cache_dir.join("recovered"),
            quarantine: cache_dir.join("quarantine"),
        };
        create_dir(&journal.dir)?;
        create_dir(&journal.staging)?;
        Ok(journal)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn staging_dir(&self) -> &Path {
        &self.staging
    }

    fn index(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Instant, u64)>> {
        self.index.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Files with changes S3 lacks (records this run wrote or resumed): how
    /// many, their bytes as last noted, and how long ago the oldest was noted.
    pub fn unsaved(&self) -> (u64, u64, Option<Duration>) {
        let index = self.index();
        let bytes = index.values().map(|(_, size)| size).sum();
        let oldest = index.values().map(|(at, _)| at.elapsed()).max();
        (index.len() as u64, bytes, oldest)
    }

    /// A record of an earlier run is taken up: its changes count as S3 lacks
    /// them from now.
    pub fn resumed(&self, record: &Record) {
        self.index()
            .insert(record.staging.clone(), (Instant::now(), record.size));
    }

    fn record_path(&self, staging: &str) -> PathBuf {
        self.dir.join(format!("{staging}{RECORD_SUFFIX}"))
    }

    /// Write `record` in place of the one before (atomic: a crash leaves one or
    /// the other). With `durable`, also on disk when this returns.
    pub fn write(&self, record: &Record, durable: bool) -> io::Result<()> {
        let path = self.record_path(&record.staging);
        let tmp = self.dir.join(format!("{}{TMP_SUFFIX}", record.staging));
        let text = serde_json::to_vec(record).map_err(io::Error::other)?;
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(FILE_MODE)
            .open(&tmp)?;
        file.write_all(&text)?;
        if durable {
            file.sync_all()?;
        }
        drop(file);
        fs::rename(&tmp, &path)?;
        self.index()
            .entry(record.staging.clone())
            .or_insert((Instant::now(), 0))
            .1 = record.size;
        if durable {
            File::open(&self.dir)?.sync_all()?;
            // The staging file's name, which the record relies on.
            File::open(&self.staging)?.sync_all()?;
        }
        Ok(())
    }

    /// S3 has the file (or its data went elsewhere): its record goes.
    pub fn remove(&self, staging: &str) {
        self.index().remove(staging);
        let path = self.record_path(staging);
        if let Err(e) = fs::remove_file(&path)
            && e.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!("cannot remove journal record {}: {e}", path.display());
        }
    }

    /// Move the staging file `staging` of `key` (and its record, if any) to
    /// `recovered/`, named after the key; returns where the data went.
    pub fn put_aside(&self, key: &str, staging: &str) -> io::Result<PathBuf> {
        create_dir(&self.recovered)?;
        let stamp = chrono::Utc::now().format("%Y%m%d-%H%M%S");
        let name = format!("{}.{stamp}", file_name_of_key(key));
        let record = self.record_path(staging);
        let record = record.exists().then_some(record);
        let moved = move_aside(
            &self.recovered,
            &name,
            Some(&self.staging.join(staging)),
            record.as_deref(),
        );
        if moved.is_ok() {
            // The changes are no longer S3's to receive: they are in `recovered/`.
            self.index().remove(staging);
        }
        moved
    }
}

/// A file name that says which key it was: `/` and `%` percent-encoded, and
/// only the end of a key too long for a file name.
pub fn file_name_of_key(key: &str) -> String {
    const KEEP: usize = 200;
    let encoded = key.replace('%', "%25").replace('/', "%2F");
    if encoded.len() <= KEEP {
        return encoded;
    }
    let mut start = encoded.len() - KEEP;
    while !encoded.is_char_boundary(start) {
        start += 1;
    }
    format!("...{}", &encoded[start..])
}

/// Move `data` and its `record` (either may be absent) into `dir` as `NAME` and
/// `NAME.json`, NAME being `name`, or `name.N` for the first N with both free;
/// nothing already there is ever replaced. Returns `dir/NAME`.
fn move_aside(
    dir: &Path,
    name: &str,
    data: Option<&Path>,
    record: Option<&Path>,
) -> io::Result<PathBuf> {
    for n in 0..10_000 {
        let to = match n {
            0 => dir.join(name),
            n => dir.join(format!("{name}.{n}")),
        };
        let mut to_record = to.clone().into_os_string();
        to_record.push(RECORD_SUFFIX);
        let to_record = PathBuf::from(to_record);
        if to.exists() || to_record.exists() {
            continue;
        }
        // The name is claimed with a link, which fails rather than replace.
        let (first, first_to) = match (data, record) {
            (Some(data), _) => (data, &to),
            (None, Some(record)) => (record, &to_record),
            (None, None) => return Ok(to),
        };
        match fs::hard_link(first, first_to) {
            Ok(()) => fs::remove_file(first)?,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
        if let (Some(_), Some(record)) = (data, record) {
            fs::rename(record, &to_record)?;
        }
        return Ok(to);
    }
    Err(io::Error::new(
        io::ErrorKind::AlreadyExists,
        format!("no free name for {name} in {}", dir.display()),
    ))
}

#[cfg(test)]
mod tests;
