//! One journal record: what s3mount must know to finish a file's upload after a
//! crash, or to put its data aside.

use std::collections::BTreeMap;
use std::ops::Range;

use serde::{Deserialize, Serialize};

use crate::store::Crc32c;

/// The format of the records this version writes. A record of a higher format is
/// left alone (a newer s3mount wrote it); lower ones are read as they were
/// written (format 1 is the first).
pub const FORMAT: u32 = 1;

/// How far the writer of a file got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Progress {
    /// A program is changing the file: its data must never become an object on
    /// its behalf (after a crash it goes to `recovered/`).
    Writing,
    /// The writer closed the file (or called fsync): it is to be uploaded, after
    /// a crash too.
    Complete,
}

/// A multipart upload under way for the file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadRecord {
    /// The key the upload was created for (the file may have been renamed
    /// since: such an upload is aborted, not completed).
    pub key: String,
    pub id: String,
    /// Created with CRC32C checksums (its parts carry theirs). Records written
    /// before checksums have none.
    #[serde(default)]
    pub crc32c: bool,
    /// The Content-Type and metadata the upload was created with.
    pub content_type: Option<String>,
    pub metadata: BTreeMap<String, String>,
    /// Parts S3 confirmed, with the bytes of the file each holds.
    pub parts: Vec<PartRecord>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartRecord {
    pub number: i32,
    pub etag: String,
    /// Its CRC32C, for an upload with checksums: a resumed upload takes a part
    /// S3 lists as its own only if S3 has the same.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crc32c: Option<Crc32c>,
    pub start: u64,
    pub end: u64,
}

impl PartRecord {
    pub fn range(&self) -> Range<u64> {
        self.start..self.end
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub format: u32,
    pub bucket: String,
    pub key: String,
    /// The staging file (in `staging/`) that holds the changes; also the
    /// record's own name, so that a record that cannot be read still says where
    /// its data is.
    pub staging: String,
    pub progress: Progress,
    /// The ETag of the object the changes were made to; `None` for a file that
    /// had no object (the upload requires that there still is none).
    pub based_on: Option<String>,
    /// Bytes `0..base_len` not in `local` are the base object's (the file was
    /// changed in place without being read whole).
    pub base_len: u64,
    /// Ranges the staging file holds.
    pub local: Vec<(u64, u64)>,
    pub size: u64,
    /// Ranges gone from the staging file: S3 holds them as parts of `upload`
    /// alone (records written before offloading have none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub offloaded: Vec<(u64, u64)>,
    pub content_type: Option<String>,
    /// The object's user metadata (mode, owner, times) as it is to be uploaded.
    pub metadata: BTreeMap<String, String>,
    pub upload: Option<UploadRecord>,
}

impl Record {
    pub fn local_ranges(&self) -> impl Iterator<Item = Range<u64>> + '_ {
        self.local.iter().map(|(a, b)| *a..*b)
    }

    pub fn offloaded_ranges(&self) -> Vec<Range<u64>> {
        self.offloaded.iter().map(|(a, b)| *a..*b).collect()
    }
}
