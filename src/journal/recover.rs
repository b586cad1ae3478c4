//! Reading the journal at mount: complete records are resumed, the data of
//! files whose writer never finished is put aside in `recovered/`, and records
//! that cannot be read go to `quarantine/` with their data. Nothing is deleted
//! but temporary files of records never renamed into place.

use std::collections::HashSet;
use std::fs;
use std::io;
use std::path::Path;

use super::record::{FORMAT, Progress, Record};
use super::{Journal, RECORD_SUFFIX, TMP_SUFFIX, move_aside};
use crate::private::create_dir;
use crate::write::staging::KEPT_PREFIX;

/// What the journal held for this mount.
#[derive(Debug, Default)]
pub struct Recovery {
    /// Files to upload: their writer finished.
    pub complete: Vec<Record>,
    /// Multipart uploads of files put aside: nothing references them any more.
    pub abandoned_uploads: Vec<(String, String)>,
}

/// Sort the journal of `bucket` (keys under `prefix`): see the module comment.
/// Records of other buckets or prefixes, or of a newer format, are left alone
/// with their data.
pub fn recover(journal: &Journal, bucket: &str, prefix: &str) -> io::Result<Recovery> {
    let mut recovery = Recovery::default();
    let mut named: HashSet<String> = HashSet::new();
    for entry in fs::read_dir(&journal.dir)? {
        let entry = entry?;
        let file = entry.file_name().to_string_lossy().into_owned();
        if file.ends_with(TMP_SUFFIX) {
            // A record never renamed into place: the one before it holds.
            let _ = fs::remove_file(entry.path());
            continue;
        }
        let Some(staging) = file.strip_suffix(RECORD_SUFFIX) else {
            continue;
        };
        named.insert(staging.to_string());
        let record = match read(&entry.path()) {
            Ok(record) => record,
            Err(why) => {
                quarantine(journal, staging, &why);
                continue;
            }
        };
        if record.format > FORMAT {
            tracing::warn!(
                "journal record {} was written by a newer s3mount (format {}, this one reads up to {FORMAT}): left alone with its data",
                entry.path().display(),
                record.format
            );
            continue;
        }
        if record.bucket != bucket || !record.key.starts_with(prefix) {
            tracing::info!(
                "journal record {} is for s3://{}/{}, not this mount: left alone",
                entry.path().display(),
                record.bucket,
                record.key
            );
            continue;
        }
        if record.staging != staging {
            quarantine(journal, staging, "it names another staging file");
            continue;
        }
        if !journal.staging.join(staging).is_file() {
            quarantine(journal, staging, "its staging file is missing");
            continue;
        }
        match record.progress {
            Progress::Complete => recovery.complete.push(record),
            Progress::Writing => {
                // Bytes that left the staging file are only in the upload's
                // parts: it stays, named by the record put aside with the data.
                let kept_upload = record
                    .upload
                    .as_ref()
                    .filter(|_| !record.offloaded.is_empty());
                if let Some(upload) = &record.upload
                    && kept_upload.is_none()
                {
                    recovery
                        .abandoned_uploads
                        .push((upload.key.clone(), upload.id.clone()));
                }
                match journal.put_aside(&record.key, staging) {
                    Ok(path) => match kept_upload {
                        Some(upload) => tracing::warn!(
                            "{}: the program writing it had not finished when s3mount stopped; not uploaded: the bytes it wrote are in {} (a sparse file) and, for the ranges the record beside it lists as offloaded, in the parts of multipart upload {} of {}, kept",
                            record.key,
                            path.display(),
                            upload.id,
                            upload.key
                        ),
                        None => tracing::warn!(
                            "{}: the program writing it had not finished when s3mount stopped; not uploaded, its data is in {}",
                            record.key,
                            path.display()
                        ),
                    },
                    Err(e) => tracing::error!(
                        "{}: the program writing it had not finished when s3mount stopped; its data stays in {} ({e})",
                        record.key,
                        journal.staging.join(staging).display()
                    ),
                }
            }
        }
    }
    put_aside_orphans(journal, &named)?;
    Ok(recovery)
}

fn read(path: &Path) -> Result<Record, String> {
    let text = fs::read(path).map_err(|e| e.to_string())?;
    serde_json::from_slice(&text).map_err(|e| e.to_string())
}

/// Move a record that cannot be used, and its staging file, to `quarantine/`.
fn quarantine(journal: &Journal, staging: &str, why: &str) {
    let moved = (|| -> io::Result<std::path::PathBuf> {
        create_dir(&journal.quarantine)?;
        let record = journal.dir.join(format!("{staging}{RECORD_SUFFIX}"));
        let data = journal.staging.join(staging);
        let data = data.exists().then_some(data);
        move_aside(&journal.quarantine, staging, data.as_deref(), Some(&record))?;
        Ok(journal.quarantine.clone())
    })();
    match moved {
        Ok(dir) => tracing::error!(
            "journal record {staging}{RECORD_SUFFIX} cannot be used ({why}): moved with its data to {}",
            dir.display()
        ),
        Err(e) => tracing::error!(
            "journal record {staging}{RECORD_SUFFIX} cannot be used ({why}) nor moved aside ({e}): left where it is"
        ),
    }
}

/// Staging files no record names: those that only kept what handles read
/// (`kept-`), and empty ones, go; others (left by a power failure before their
/// record reached the disk, or by an s3mount before the journal) are put aside,
/// never uploaded, since nothing says their writer finished.
fn put_aside_orphans(journal: &Journal, named: &HashSet<String>) -> io::Result<()> {
    for entry in fs::read_dir(&journal.staging)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if named.contains(&name) || !entry.file_type()?.is_file() {
            continue;
        }
        if name.starts_with(KEPT_PREFIX) || entry.metadata()?.len() == 0 {
            // What handles read of a file S3 has (or had), or nothing at all.
            let _ = fs::remove_file(entry.path());
            continue;
        }
        create_dir(&journal.recovered)?;
        match move_aside(&journal.recovered, &name, Some(&entry.path()), None) {
            Ok(to) => tracing::warn!(
                "staging file {} has no journal record (its writer is not known to have finished): moved to {}",
                entry.path().display(),
                to.display()
            ),
            Err(e) => tracing::error!(
                "staging file {} has no journal record and cannot be moved aside: {e}",
                entry.path().display()
            ),
        }
    }
    Ok(())
}
