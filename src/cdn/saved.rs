//! The invalidation queue on disk, so that the paths of changes S3 has but
//! CloudFront was not told of survive a crash: each change is appended as it is
//! queued (one JSON line), the file is rewritten with what is still waiting once
//! a batch is settled (sent, or refused and logged), and a mount replays it.
//!
//! Past `MAX_LINES` the file says "everything" instead (bounded, like the
//! queue in memory). Appends are not fsync'ed: a daemon that is killed loses nothing (the kernel
//! has the bytes), a power failure may lose the last changes' paths.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::fs::changes::Change;

/// One line of the file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Line {
    /// A changed path, and whether its object is new, replaced or deleted.
    New(String),
    Replaced(String),
    Deleted(String),
    /// Too many paths: everything is to be invalidated.
    Everything,
}

/// What the file holds, as changes to queue again.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Saved {
    pub changes: Vec<(String, Change)>,
    pub everything: bool,
}

/// Lines the file holds at most: past it (CloudFront down for long, or a flood
/// of changes) it says "everything", as the queue in memory does past its own
/// limit.
const MAX_LINES: usize = 2 * super::MAX_PENDING;

pub struct SavedQueue {
    path: PathBuf,
    file: File,
    lines: usize,
    /// The file says everything is to be invalidated: appends add nothing.
    everything: bool,
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(crate::private::FILE_MODE)
        .open(path)
}

impl SavedQueue {
    /// Open the file at `path` and read what an earlier run left in it.
    pub fn open(path: PathBuf) -> io::Result<(Self, Saved)> {
        if let Some(dir) = path.parent() {
            crate::private::create_dir(dir)?;
        }
        let mut saved = Saved::default();
        match File::open(&path) {
            Ok(file) => {
                for line in io::BufReader::new(file).lines() {
                    // A line cut short by a crash is the last one: nothing follows.
                    match serde_json::from_str::<Line>(&line?) {
                        Ok(Line::New(p)) => saved.changes.push((p, Change::Written { new: true })),
                        Ok(Line::Replaced(p)) => {
                            saved.changes.push((p, Change::Written { new: false }));
                        }
                        Ok(Line::Deleted(p)) => saved.changes.push((p, Change::Deleted)),
                        Ok(Line::Everything) => saved.everything = true,
                        Err(e) => tracing::warn!(
                            "{}: a line that cannot be read ({e}) is skipped",
                            path.display()
                        ),
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let file = open_append(&path)?;
        let mut queue = Self {
            path,
            file,
            lines: 0,
            everything: false,
        };
        // Written out again whole: a line cut short by a crash must not run
        // into the next one appended.
        queue.rewrite(&saved)?;
        Ok((queue, saved))
    }

    /// Note one change queued.
    pub fn append(&mut self, path: &str, change: Change) -> io::Result<()> {
        if self.everything {
            return Ok(());
        }
        if self.lines >= MAX_LINES {
            return self.rewrite(&Saved {
                changes: Vec::new(),
                everything: true,
            });
        }
        let mut text = serde_json::to_vec(&line_of(path, change)).map_err(io::Error::other)?;
        text.push(b'\n');
        self.file.write_all(&text)?;
        self.lines += 1;
        Ok(())
    }

    /// Replace the file's content with `waiting` (atomically).
    pub fn rewrite(&mut self, waiting: &Saved) -> io::Result<()> {
        // (Not `.tmp`: the journal's recovery deletes those in this directory.)
        let tmp = self.path.with_extension("rewrite");
        let mut out = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .mode(crate::private::FILE_MODE)
            .open(&tmp)?;
        let mut text = Vec::new();
        let lines = waiting
            .changes
            .iter()
            .map(|(p, c)| line_of(p, *c))
            .chain(waiting.everything.then_some(Line::Everything));
        for line in lines {
            serde_json::to_writer(&mut text, &line).map_err(io::Error::other)?;
            text.push(b'\n');
        }
        out.write_all(&text)?;
        drop(out);
        fs::rename(&tmp, &self.path)?;
        self.file = open_append(&self.path)?;
        self.lines = waiting.changes.len();
        self.everything = waiting.everything;
        Ok(())
    }
}

fn line_of(path: &str, change: Change) -> Line {
    match change {
        Change::Written { new: true } => Line::New(path.to_string()),
        Change::Written { new: false } => Line::Replaced(path.to_string()),
        Change::Deleted => Line::Deleted(path.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_survive_a_reopen_and_a_rewrite_keeps_only_what_waits() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cloudfront.queue");
        let (mut q, saved) = SavedQueue::open(path.clone()).unwrap();
        assert_eq!(saved, Saved::default());
        q.append("a.css", Change::Written { new: false }).unwrap();
        q.append("dir/new\nline.html", Change::Written { new: true })
            .unwrap();
        q.append("gone", Change::Deleted).unwrap();
        drop(q);
        // A crash in the middle of an append leaves a partial last line.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"new\":\"cut sh").unwrap();
        let (mut q, saved) = SavedQueue::open(path.clone()).unwrap();
        assert_eq!(
            saved.changes,
            vec![
                ("a.css".to_string(), Change::Written { new: false }),
                (
                    "dir/new\nline.html".to_string(),
                    Change::Written { new: true }
                ),
                ("gone".to_string(), Change::Deleted),
            ]
        );
        q.rewrite(&Saved {
            changes: vec![("b".into(), Change::Deleted)],
            everything: false,
        })
        .unwrap();
        q.append("c", Change::Written { new: true }).unwrap();
        let (mut q, saved) = SavedQueue::open(path.clone()).unwrap();
        assert_eq!(
            saved.changes,
            vec![
                ("b".to_string(), Change::Deleted),
                ("c".to_string(), Change::Written { new: true })
            ]
        );
        assert!(!saved.everything);
        // Once everything is to be invalidated, paths add nothing.
        q.rewrite(&Saved {
            changes: vec![],
            everything: true,
        })
        .unwrap();
        q.append("d", Change::Deleted).unwrap();
        let (_, saved) = SavedQueue::open(path).unwrap();
        assert!(saved.changes.is_empty());
        assert!(saved.everything);
    }

    #[test]
    fn a_queue_past_its_limit_says_everything_and_stops_growing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cloudfront.queue");
        let (mut q, _) = SavedQueue::open(path.clone()).unwrap();
        for i in 0..MAX_LINES + 10 {
            q.append(&format!("p{i}"), Change::Deleted).unwrap();
        }
        let len = fs::metadata(&path).unwrap().len();
        q.append("more", Change::Deleted).unwrap();
        assert_eq!(fs::metadata(&path).unwrap().len(), len);
        let (_, saved) = SavedQueue::open(path).unwrap();
        assert!(saved.everything);
        assert!(saved.changes.is_empty());
    }
}
