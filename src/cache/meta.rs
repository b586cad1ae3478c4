//! Object headers remembered per object version, so that a listing (which has only
//! size, ETag and time) can show an object's mode, owner and times without a HEAD.
//!
//! Entries are keyed by key and ETag and also record the Last-Modified time when
//! it is known: a metadata-only change by another tool (a copy onto itself) keeps
//! the ETag but moves the time. They live in a memory LRU and in the disk cache,
//! so they survive a remount; what s3mount uploads is entered at once.

use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lru::LruCache;
use tokio::sync::Notify;

use super::BlockId;
use super::disk::DiskCache;
use crate::store::{ObjectHeaders, UserMetadata};

/// The block index under which headers are kept in the disk cache.
const HEADERS_INDEX: u64 = u64::MAX;
/// Entries kept in memory.
const MEMORY_ENTRIES: usize = 65_536;

#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    headers: ObjectHeaders,
    last_modified: Option<SystemTime>,
    /// For a version this mount wrote whose time is not known yet: when the
    /// requests that made it began. It cannot be dated before then.
    written_since: Option<SystemTime>,
}

/// Key and ETag.
type Version = (Arc<str>, Arc<str>);

pub struct MetaCache {
    memory: Mutex<LruCache<Version, Entry>>,
    disk: Option<Arc<DiskCache>>,
    /// Disk writes under way, and a wake-up when the last one ends.
    writing: Arc<(AtomicUsize, Notify)>,
}

impl MetaCache {
    pub fn new(disk: Option<Arc<DiskCache>>) -> Self {
        let entries = NonZeroUsize::new(MEMORY_ENTRIES).unwrap_or(NonZeroUsize::MIN);
        Self {
            memory: Mutex::new(LruCache::new(entries)),
            disk,
            writing: Arc::default(),
        }
    }

    /// Wait until the entries put so far are on disk.
    pub async fn settle(&self) {
        let (count, done) = &*self.writing;
        loop {
            let notified = done.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if count.load(Ordering::SeqCst) == 0 {
                return;
            }
            notified.await;
        }
    }

    fn block(key: &str, etag: &str) -> BlockId {
        BlockId {
            key: Arc::from(key),
            etag: Arc::from(etag),
            index: HEADERS_INDEX,
        }
    }

    /// The headers of `key` at version `etag`, if known and not older than a
    /// `last_modified` the caller has seen. Reads the disk: call it off the
    /// runtime's worker threads for many keys.
    pub fn get(
        &self,
        key: &str,
        etag: &str,
        last_modified: Option<SystemTime>,
    ) -> Option<ObjectHeaders> {
        let id = (Arc::from(key), Arc::from(etag));
        let memory = self
            .memory
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id)
            .cloned();
        let entry = match memory {
            Some(entry) => entry,
            None => {
                let data = self.disk.as_ref()?.get(&Self::block(key, etag))?;
                let entry = decode(&data)?;
                self.remember(id.clone(), entry.clone());
                entry
            }
        };
        match (entry.last_modified, last_modified) {
            (Some(ours), Some(listed)) if !same_second(ours, listed) => None,
            // An older version with the same ETag (before a chmod's copy onto
            // itself, say), seen by a listing begun before the write.
            (None, Some(listed)) if entry.written_since.is_some_and(|w| secs(listed) < secs(w)) => {
                None
            }
            (None, Some(listed)) => {
                // First seen since we wrote it: from now on the time must match.
                let entry = Entry {
                    last_modified: Some(listed),
                    written_since: None,
                    headers: entry.headers,
                };
                self.store(key, etag, &entry);
                Some(entry.headers)
            }
            _ => Some(entry.headers),
        }
    }

    /// Remember the headers of `key` at version `etag`.
    pub fn put(
        &self,
        key: &str,
        etag: &str,
        last_modified: Option<SystemTime>,
        headers: &ObjectHeaders,
    ) {
        let entry = Entry {
            headers: headers.clone(),
            last_modified,
            written_since: None,
        };
        self.store(key, etag, &entry);
    }

    /// Remember the headers of `key` at version `etag`, which this mount wrote in
    /// requests sent after `since`: the first listing dated since then gives
    /// its time.
    pub fn put_written(&self, key: &str, etag: &str, since: SystemTime, headers: &ObjectHeaders) {
        let entry = Entry {
            headers: headers.clone(),
            last_modified: None,
            written_since: Some(since),
        };
        self.store(key, etag, &entry);
    }

    /// Into memory at once; onto disk in the background when on the runtime.
    fn store(&self, key: &str, etag: &str, entry: &Entry) {
        self.remember((Arc::from(key), Arc::from(etag)), entry.clone());
        let (Some(disk), Some(data)) = (self.disk.clone(), encode(entry)) else {
            return;
        };
        let block = Self::block(key, etag);
        let writing = self.writing.clone();
        writing.0.fetch_add(1, Ordering::SeqCst);
        let write = move || {
            if let Err(e) = disk.put(&block, &data) {
                tracing::warn!("cannot write to the disk cache: {e}");
            }
            if writing.0.fetch_sub(1, Ordering::SeqCst) == 1 {
                writing.1.notify_waiters();
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => drop(rt.spawn_blocking(write)),
            Err(_) => write(),
        }
    }

    fn remember(&self, id: Version, entry: Entry) {
        self.memory
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .put(id, entry);
    }
}

/// A HEAD gives Last-Modified in whole seconds (an HTTP date), a listing in
/// milliseconds: the same time compares equal at the second.
fn same_second(a: SystemTime, b: SystemTime) -> bool {
    secs(a) == secs(b)
}

fn secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// One `name\tvalue` line per field; `None` if a value cannot be written so.
fn encode(entry: &Entry) -> Option<Vec<u8>> {
    let mut out = String::new();
    let mut line = |name: &str, value: &str| -> Option<()> {
        if [name, value].iter().any(|s| s.contains(['\t', '\n'])) {
            return None;
        }
        out.push_str(name);
        out.push('\t');
        out.push_str(value);
        out.push('\n');
        Some(())
    };
    if let Some(t) = entry.last_modified {
        let d = t.duration_since(UNIX_EPOCH).ok()?;
        line(":time", &format!("{}.{:09}", d.as_secs(), d.subsec_nanos()))?;
    }
    if let Some(t) = entry.written_since {
        let d = t.duration_since(UNIX_EPOCH).ok()?;
        line(
            ":since",
            &format!("{}.{:09}", d.as_secs(), d.subsec_nanos()),
        )?;
    }
    if let Some(ct) = &entry.headers.content_type {
        line(":type", ct)?;
    }
    for (k, v) in &entry.headers.metadata {
        if k.starts_with(':') {
            return None;
        }
        line(k, v)?;
    }
    Some(out.into_bytes())
}

fn decode(data: &[u8]) -> Option<Entry> {
    let text = std::str::from_utf8(data).ok()?;
    let mut entry = Entry {
        headers: ObjectHeaders {
            content_type: None,
            metadata: UserMetadata::new(),
        },
        last_modified: None,
        written_since: None,
    };
    for line in text.lines() {
        let (name, value) = line.split_once('\t')?;
        match name {
            ":time" => entry.last_modified = Some(decode_time(value)?),
            ":since" => entry.written_since = Some(decode_time(value)?),
            ":type" => entry.headers.content_type = Some(value.to_string()),
            _ => {
                entry
                    .headers
                    .metadata
                    .insert(name.to_string(), value.to_string());
            }
        }
    }
    Some(entry)
}

fn decode_time(value: &str) -> Option<SystemTime> {
    let (secs, nanos) = value.split_once('.')?;
    Some(UNIX_EPOCH + Duration::new(secs.parse().ok()?, nanos.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::disk::DiskLimits;

    fn headers(mode: &str) -> ObjectHeaders {
        ObjectHeaders {
            content_type: Some("text/css".into()),
            metadata: [("mode".to_string(), mode.to_string())].into(),
        }
    }

    fn disk(dir: &std::path::Path) -> Option<Arc<DiskCache>> {
        let limits = DiskLimits {
            max_bytes: 1 << 20,
            min_free: 0,
        };
        Some(Arc::new(DiskCache::open(dir.into(), limits).unwrap()))
    }

    #[test]
    fn headers_survive_a_remount_for_the_same_version_only() {
        let dir = tempfile::tempdir().unwrap();
        let t = UNIX_EPOCH + Duration::new(1_700_000_000, 5);
        MetaCache::new(disk(dir.path())).put("k", "e1", Some(t), &headers("33188"));
        let cache = MetaCache::new(disk(dir.path()));
        assert_eq!(cache.get("k", "e1", Some(t)), Some(headers("33188")));
        assert_eq!(cache.get("k", "e1", None), Some(headers("33188")));
        assert_eq!(cache.get("k", "e2", Some(t)), None);
        // Same ETag, later time: the metadata was changed by a copy onto itself.
        assert_eq!(cache.get("k", "e1", Some(t + Duration::from_secs(1))), None);
    }

    #[test]
    fn a_head_time_matches_the_listing_time_of_the_same_second() {
        let cache = MetaCache::new(None);
        let head = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        cache.put("k", "e", Some(head), &headers("33188"));
        let listed = head + Duration::from_millis(250);
        assert_eq!(cache.get("k", "e", Some(listed)), Some(headers("33188")));
    }

    #[test]
    fn our_own_upload_takes_the_time_of_the_first_listing() {
        let cache = MetaCache::new(None);
        let t = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        cache.put_written("k", "e", t, &headers("33152"));
        assert_eq!(cache.get("k", "e", Some(t)), Some(headers("33152")));
        assert_eq!(cache.get("k", "e", Some(t + Duration::from_secs(5))), None);
    }

    #[test]
    fn an_older_version_with_the_same_etag_does_not_take_new_headers() {
        let cache = MetaCache::new(None);
        let written = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        // A chmod copies the object onto itself: same ETag, new mode.
        cache.put_written("k", "e", written, &headers("33152"));
        // A listing begun before shows the version before the copy.
        let before = written - Duration::from_secs(3);
        assert_eq!(cache.get("k", "e", Some(before)), None);
        // And does not bind the entry to its time: the copy's listing matches.
        let copied = written + Duration::from_millis(1200);
        assert_eq!(cache.get("k", "e", Some(copied)), Some(headers("33152")));
        assert_eq!(cache.get("k", "e", Some(before)), None);
    }
}
