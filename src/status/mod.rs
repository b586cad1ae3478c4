//! `s3mount status`: what a running mount is doing, for a person at a glance
//! (uploads with bytes sent, rate and ETA; failed uploads with their reason and
//! where the data is; conflicts; the cache; requests; CloudFront) or for a
//! script (`--json`). The mount answers over a socket only its user can open
//! ([`socket`]); [`command`] is the client.

pub mod board;
pub mod command;
pub mod server;
pub mod socket;

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use bytesize::ByteSize;
use serde::{Deserialize, Serialize};

/// Everything `s3mount status` shows of one mount.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Report {
    /// `s3://bucket/prefix/`
    pub source: String,
    pub mountpoint: PathBuf,
    pub pid: u32,
    pub cache_dir: PathBuf,
    pub log_level: String,
    /// Files being uploaded now, the longest running first.
    pub uploading: Vec<Uploading>,
    /// Files waiting for their upload (a retry after a failure, or with
    /// background uploads, their turn).
    pub waiting: u64,
    /// Files whose changes S3 lacks (being written, uploading, waiting or
    /// failed), all kept in the write-back journal.
    pub unsaved: Unsaved,
    pub failed: Vec<Failure>,
    pub conflicts: Vec<Conflict>,
    pub cache: CacheStats,
    /// S3 requests made, by kind (`GetObject`, `PutObject`, ...).
    pub requests: BTreeMap<String, u64>,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub cloudfront: Option<CdnStats>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Uploading {
    pub key: String,
    /// Bytes S3 has confirmed so far.
    pub sent: u64,
    /// The file's size, once it is complete (`None` while it is being written
    /// and its parts already go up).
    pub total: Option<u64>,
    /// Seconds since its first byte was sent.
    pub seconds: f64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Unsaved {
    pub files: u64,
    /// Their sizes as last noted in the journal (a file being written is
    /// noted as it begins and as it is closed).
    pub bytes: u64,
    /// Seconds since the oldest of them was first noted.
    pub oldest_seconds: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Failure {
    pub key: String,
    pub reason: String,
    /// The file holding the data until S3 has it.
    pub kept_in: Option<PathBuf>,
    /// When it failed last, in seconds since the Unix epoch.
    pub at: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Conflict {
    pub key: String,
    /// Where this mount's version went: a key beside it, or a file in the
    /// cache directory.
    pub saved_as: String,
    pub at: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct CacheStats {
    pub disk_bytes: u64,
    pub disk_limit: u64,
    /// Blocks read that were at hand (memory or disk), and those fetched.
    pub hits: u64,
    pub misses: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct CdnStats {
    pub queued: u64,
    pub sent: u64,
    pub invalidations: u64,
    pub failed: u64,
}

/// The uploads to show: the files the filesystem is uploading (with their
/// size), with the bytes the request layer saw S3 confirm (`sending`, by key),
/// then the uploads of files still being written, longest running first. A
/// multipart upload kept for the next attempt of a failed file is not shown:
/// the file is among the failed.
pub fn uploading(
    files: &[board::Upload],
    mut sending: HashMap<String, (u64, f64)>,
    failed: &[Failure],
) -> Vec<Uploading> {
    for f in failed {
        if !files.iter().any(|u| u.key == f.key) {
            sending.remove(&f.key);
        }
    }
    let mut out: Vec<Uploading> = files
        .iter()
        .map(|f| {
            let (sent, seconds) = sending.remove(&f.key).unwrap_or_default();
            Uploading {
                key: f.key.clone(),
                sent: sent.min(f.total),
                total: Some(f.total),
                seconds: seconds.max(f.started.elapsed().as_secs_f64()),
            }
        })
        .collect();
    // Of the rest, those that have sent something: a part of a file being
    // written. (A multipart copy or a marker's PutObject sends nothing here.)
    out.extend(sending.into_iter().filter(|(_, (sent, _))| *sent > 0).map(
        |(key, (sent, seconds))| Uploading {
            key,
            sent,
            total: None,
            seconds,
        },
    ));
    out.sort_by(|a, b| b.seconds.total_cmp(&a.seconds).then(a.key.cmp(&b.key)));
    out
}

pub fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// `text` with control characters escaped: keys, file names and S3's error
/// messages are printed to a terminal, and another user's file name must not
/// be able to send it escape sequences.
fn printable(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

fn size(bytes: u64) -> String {
    ByteSize(bytes).display().iec().to_string()
}

/// One line for an upload: `key  12.0 MiB / 64.0 MiB  19%  3.1 MiB/s  ETA 17s`.
fn upload_line(u: &Uploading) -> String {
    let rate = if u.seconds > 0.0 {
        u.sent as f64 / u.seconds
    } else {
        0.0
    };
    let rate_text = format!("{}/s", size(rate as u64));
    match u.total {
        Some(total) => {
            let percent = (u.sent * 100).checked_div(total).unwrap_or(100);
            let eta = if rate > 0.0 && total > u.sent {
                format!("ETA {}s", ((total - u.sent) as f64 / rate).ceil() as u64)
            } else {
                "ETA -".into()
            };
            format!(
                "  {}  {} / {}  {percent}%  {rate_text}  {eta}",
                printable(&u.key),
                size(u.sent),
                size(total)
            )
        }
        None => format!(
            "  {}  {} sent while it is written  {rate_text}",
            printable(&u.key),
            size(u.sent)
        ),
    }
}

impl Report {
    /// The screen a person reads.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{} on {} (process {}, log level {})",
            self.source,
            self.mountpoint.display(),
            self.pid,
            self.log_level
        );
        let _ = writeln!(out, "Uploading: {}", self.uploading.len());
        for u in &self.uploading {
            let _ = writeln!(out, "{}", upload_line(u));
        }
        let _ = writeln!(out, "Waiting: {}", self.waiting);
        if self.unsaved.files > 0 {
            let _ = writeln!(
                out,
                "Not in S3 yet: {} file{}, {}, the oldest noted {}s ago",
                self.unsaved.files,
                if self.unsaved.files == 1 { "" } else { "s" },
                size(self.unsaved.bytes),
                self.unsaved.oldest_seconds.unwrap_or(0.0).round() as u64
            );
        }
        let _ = writeln!(out, "Failed uploads: {}", self.failed.len());
        for f in &self.failed {
            let kept = f.kept_in.as_ref().map_or_else(String::new, |p| {
                format!("; data kept in {}", printable(&p.display().to_string()))
            });
            let _ = writeln!(
                out,
                "  {}: {}{kept} (tried again in the background)",
                printable(&f.key),
                printable(&f.reason)
            );
        }
        let _ = writeln!(out, "Conflicts: {}", self.conflicts.len());
        for c in &self.conflicts {
            let _ = writeln!(
                out,
                "  {}: changed by another writer; this mount's version is {}",
                printable(&c.key),
                printable(&c.saved_as)
            );
        }
        let reads = self.cache.hits + self.cache.misses;
        let hit_rate = (self.cache.hits * 100)
            .checked_div(reads)
            .map_or_else(|| "-".to_string(), |p| format!("{p}%"));
        let _ = writeln!(
            out,
            "Cache: {} of {} on disk in {}, hit rate {hit_rate} ({} of {} blocks read)",
            size(self.cache.disk_bytes),
            size(self.cache.disk_limit),
            self.cache_dir.display(),
            self.cache.hits,
            reads
        );
        let total: u64 = self.requests.values().sum();
        let kinds: Vec<String> = self
            .requests
            .iter()
            .map(|(kind, n)| format!("{kind} {n}"))
            .collect();
        let _ = writeln!(
            out,
            "Requests: {total} ({}), {} sent, {} received",
            kinds.join(", "),
            size(self.bytes_sent),
            size(self.bytes_received)
        );
        if let Some(c) = &self.cloudfront {
            let _ = writeln!(
                out,
                "CloudFront: {} paths queued, {} sent in {} invalidations, {} failed",
                c.queued, c.sent, c.invalidations, c.failed
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> Report {
        Report {
            source: "s3://site/www/".into(),
            mountpoint: "/srv/site".into(),
            pid: 42,
            cache_dir: "/var/cache/s3mount".into(),
            log_level: "info".into(),
            uploading: vec![
                Uploading {
                    key: "www/big.tif".into(),
                    sent: 16 << 20,
                    total: Some(64 << 20),
                    seconds: 4.0,
                },
                Uploading {
                    key: "www/log".into(),
                    sent: 8 << 20,
                    total: None,
                    seconds: 2.0,
                },
            ],
            waiting: 1,
            unsaved: Unsaved {
                files: 2,
                bytes: 3 << 20,
                oldest_seconds: Some(61.4),
            },
            failed: vec![Failure {
                key: "www/a.css".into(),
                reason: "cannot reach the endpoint".into(),
                kept_in: Some("/var/cache/s3mount/staging/7".into()),
                at: 1,
            }],
            conflicts: vec![],
            cache: CacheStats {
                disk_bytes: 1 << 30,
                disk_limit: 10 << 30,
                hits: 3,
                misses: 1,
            },
            requests: [("GetObject".to_string(), 4), ("PutObject".to_string(), 2)].into(),
            bytes_sent: 0,
            bytes_received: 4 << 20,
            cloudfront: None,
        }
    }

    #[test]
    fn the_screen_shows_progress_rate_and_eta_and_where_failed_data_is() {
        let text = report().render();
        assert!(
            text.contains("www/big.tif  16.0 MiB / 64.0 MiB  25%  4.0 MiB/s  ETA 12s"),
            "{text}"
        );
        assert!(
            text.contains("www/log  8.0 MiB sent while it is written"),
            "{text}"
        );
        assert!(
            text.contains(
                "www/a.css: cannot reach the endpoint; data kept in /var/cache/s3mount/staging/7"
            ),
            "{text}"
        );
        assert!(text.contains("hit rate 75%"), "{text}");
        assert!(
            text.contains("Not in S3 yet: 2 files, 3.0 MiB, the oldest noted 61s ago"),
            "{text}"
        );
        assert!(
            text.contains("Requests: 6 (GetObject 4, PutObject 2)"),
            "{text}"
        );
    }

    #[test]
    fn a_failed_file_is_not_shown_uploading_until_it_is_tried_again() {
        let sending: HashMap<String, (u64, f64)> = [
            ("failed.bin".to_string(), (8 << 20, 9.0)),
            ("written.log".to_string(), (16 << 20, 3.0)),
        ]
        .into();
        let failure = Failure {
            key: "failed.bin".into(),
            reason: "down".into(),
            kept_in: None,
            at: 0,
        };
        let shown = uploading(&[], sending.clone(), std::slice::from_ref(&failure));
        let keys: Vec<&str> = shown.iter().map(|u| u.key.as_str()).collect();
        assert_eq!(keys, ["written.log"]);
        // The retry begins: shown with its size and the parts S3 had already.
        let retry = board::Board::default();
        retry.upload_begins("failed.bin", 20 << 20);
        let (files, _, _) = retry.snapshot();
        let shown = uploading(&files, sending, &[failure]);
        assert_eq!(shown[0].key, "failed.bin");
        assert_eq!((shown[0].sent, shown[0].total), (8 << 20, Some(20 << 20)));
        assert_eq!(shown[1].total, None);
    }

    #[test]
    fn a_name_cannot_send_the_terminal_escape_sequences() {
        let mut r = report();
        r.failed[0].key = "www/\x1b]0;owned\x07x.css".into();
        let text = r.render();
        assert!(!text.contains('\x1b') && !text.contains('\x07'), "{text:?}");
        assert!(text.contains("www/\\u{1b}]0;owned\\u{7}x.css"), "{text}");
    }

    #[test]
    fn the_json_report_reads_back_the_same() {
        let r = report();
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(serde_json::from_str::<Report>(&json).unwrap(), r);
    }
}
