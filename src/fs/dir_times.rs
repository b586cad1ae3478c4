//! Directory times that outlive the mount: a directory whose entries change
//! here gets a new mtime and ctime at once in memory, and on its marker object
//! (where it has one) a moment later: changes that come together (a `cp -r`
//! into it) cost one marker write, not one each. Unmount writes what is left.
//!
//! A directory without a marker keeps its times in memory only; after a
//! remount it shows the newest time of what it holds. The marker is read
//! first and written back with its own metadata and our times only, under
//! `If-Match`: what another writer set on it (a chmod, say) is kept, and a
//! marker removed meanwhile is not brought back (where the server enforces
//! the condition).

use std::collections::HashSet;
use std::time::Duration;

use super::inode::Kind;
use super::meta::FileMeta;
use super::{Fs, FsResult};
use crate::store::{Condition, StoreError};

/// Quiet time after a change before the marker is written.
const DELAY: Duration = Duration::from_secs(1);

#[derive(Default)]
pub(super) struct DirTimes {
    waiting: std::sync::Mutex<Waiting>,
    /// Held while a marker is written (here, and by a directory's metadata
    /// changes), and by rmdir and directory renames: a write never brings back
    /// a directory removed meanwhile, nor puts back times older than a touch.
    pub markers: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct Waiting {
    /// Directories whose marker lacks their times, by inode.
    inos: HashSet<u64>,
    /// A task writes their markers, a second after it last did, for as long as
    /// there are any: one at most, however long a stream of changes lasts.
    writer: bool,
}

impl DirTimes {
    fn waiting(&self) -> std::sync::MutexGuard<'_, Waiting> {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `ino`'s times changed; true if a writer must be started for it.
    fn changed(&self, ino: u64) -> bool {
        let mut waiting = self.waiting();
        waiting.inos.insert(ino);
        !std::mem::replace(&mut waiting.writer, true)
    }

    /// For the writer: the directories waiting, or `None`, and the writer stops,
    /// when there are none.
    fn take_or_stop(&self) -> Option<Vec<u64>> {
        let mut waiting = self.waiting();
        if waiting.inos.is_empty() {
            waiting.writer = false;
            return None;
        }
        Some(waiting.inos.drain().collect())
    }
}

impl Fs {
    /// The times of directory `ino` changed: have its marker take them.
    pub(super) fn dir_times_changed(&self, ino: u64) {
        if !self.dir_times.changed(ino) {
            return;
        }
        let me = self.me.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(DELAY).await;
                let Some(fs) = me.upgrade() else { return };
                let Some(inos) = fs.dir_times.take_or_stop() else {
                    return;
                };
                fs.write_markers(inos).await;
            }
        });
    }

    /// Write the markers of the directories waiting (at unmount).
    pub(super) async fn write_dir_times(&self) {
        let inos: Vec<u64> = self.dir_times.waiting().inos.drain().collect();
        self.write_markers(inos).await;
    }

    async fn write_markers(&self, inos: Vec<u64>) {
        for ino in inos {
            if let Err(e) = self.write_dir_time(ino).await {
                tracing::info!("the times of a directory were not stored: {e:?}");
            }
        }
    }

    async fn write_dir_time(&self, ino: u64) -> FsResult<()> {
        let _marker = self.dir_times.markers.lock().await;
        let Ok(mut dir) = self.inode(ino) else {
            return Ok(());
        };
        let marker = self.dir_prefix(&dir.path);
        if dir.kind != Kind::Dir || !dir.is_linked() || dir.old_dir_object || marker.is_empty() {
            return Ok(());
        }
        let head = match self.store.head(&marker).await {
            Ok(head) => head,
            // No marker (an implicit directory, or removed): nothing to hold
            // them; they stay in memory.
            Err(StoreError::NotFound) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        let written = (dir.meta.mtime, dir.meta.ctime);
        let (Some(etag), Some(headers)) = (head.etag, head.headers) else {
            return Ok(());
        };
        let theirs = FileMeta::from_metadata(&headers.metadata);
        dir.meta = FileMeta {
            mtime: dir.meta.mtime.or(theirs.mtime),
            ctime: dir.meta.ctime.or(theirs.ctime),
            ..theirs
        };
        dir.headers = Some(headers);
        match self
            .write_marker(&dir, Some(&Condition::Matches(etag)))
            .await
        {
            Err(e) if e == StoreError::PreconditionFailed.into() => Ok(()),
            Err(e) => Err(e),
            Ok(()) => {
                if let Some(stored) = self.state().inodes.get_mut(ino) {
                    stored.meta = FileMeta {
                        mtime: stored.meta.mtime,
                        ctime: stored.meta.ctime,
                        ..dir.meta
                    };
                    // Unless they changed again since: then the next write has them.
                    if (stored.meta.mtime, stored.meta.ctime) == written {
                        stored.times_unsaved = false;
                    }
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::inode::ROOT_INO;
    use super::super::meta::FileMeta;
    use std::time::{Duration, UNIX_EPOCH};

    use super::super::SetAttr;
    use super::super::tests::{ME, name, remount, setup, write_file};
    use crate::store::memory::Op;

    #[tokio::test]
    async fn the_times_go_onto_the_marker_another_writer_changed_without_undoing_it() {
        let s = setup();
        let d = s.fs.mkdir(ROOT_INO, name("d"), 0o755, ME).await.unwrap();
        // Another machine chmods the directory.
        let mut theirs = s.store.object("d/").unwrap().metadata;
        theirs.insert("mode".into(), (libc::S_IFDIR | 0o700).to_string());
        s.store.insert_with("d/", "", theirs);
        write_file(&s.fs, d.ino, "f", b"x").await.unwrap();
        let changed = s.fs.getattr(d.ino).await.unwrap().mtime;
        s.fs.shutdown().await;
        let stored = FileMeta::from_metadata(&s.store.object("d/").unwrap().metadata);
        assert_eq!(stored.mode, Some(libc::S_IFDIR | 0o700));
        assert_eq!(stored.mtime, Some(changed));
    }

    #[tokio::test(start_paused = true)]
    async fn a_steady_stream_of_changes_writes_the_marker_once_a_second() {
        let s = setup();
        let d = s.fs.mkdir(ROOT_INO, name("d"), 0o755, ME).await.unwrap();
        // 20 ms a request: changes keep coming while a marker is written.
        s.store.set_latency(Duration::from_millis(20));
        let (puts, started) = (s.store.calls(Op::Put), tokio::time::Instant::now());
        for i in 0..200 {
            write_file(&s.fs, d.ino, &format!("f{i}"), b"x")
                .await
                .unwrap();
        }
        let seconds = started.elapsed().as_secs();
        // Long enough for the last marker write.
        tokio::time::sleep(super::DELAY * 3).await;
        let markers = s.store.calls(Op::Put) - puts - 200;
        assert!(seconds >= 3, "{seconds} s");
        assert!(
            markers <= seconds + 2,
            "{markers} marker writes in {seconds} s of changes"
        );
    }

    #[tokio::test]
    async fn a_touch_during_the_times_write_is_not_undone_by_it() {
        let s = setup();
        let d = s.fs.mkdir(ROOT_INO, name("d"), 0o755, ME).await.unwrap();
        write_file(&s.fs, d.ino, "f", b"x").await.unwrap();
        // The times writer reads the marker, and is held there...
        let gate = s.store.hold(Op::Head);
        let fs = s.fs.clone();
        let writer = tokio::spawn(async move { fs.write_dir_times().await });
        gate.reached(1).await;
        // ... while rsync sets the directory's time, as it does last.
        let fs = s.fs.clone();
        let past = UNIX_EPOCH + Duration::from_secs(1_000_000_000);
        let touch = SetAttr {
            mtime: Some(past),
            ..SetAttr::default()
        };
        let touch = tokio::spawn(async move { fs.setattr(d.ino, touch).await });
        for _ in 0..100 {
            if touch.is_finished() {
                break;
            }
            tokio::task::yield_now().await;
        }
        gate.open();
        writer.await.unwrap();
        touch.await.unwrap().unwrap();
        let stored = FileMeta::from_metadata(&s.store.object("d/").unwrap().metadata);
        assert_eq!(stored.mtime, Some(past));
    }

    #[tokio::test]
    async fn at_ttl_zero_a_create_changes_the_directorys_times_before_its_marker_does() {
        let s = super::super::tests::setup_with_ttl(Duration::ZERO);
        let d = s.fs.mkdir(ROOT_INO, name("d"), 0o755, ME).await.unwrap();
        let before = s.fs.getattr(d.ino).await.unwrap();
        let marker = s.store.object("d/").unwrap().etag;
        write_file(&s.fs, d.ino, "f", b"x").await.unwrap();
        // The marker has not been written again yet; the kernel looks the
        // name up again at TTL 0, and S3 is asked.
        assert_eq!(s.store.object("d/").unwrap().etag, marker);
        let asked = || s.store.calls(Op::Head) + s.store.calls(Op::List);
        let before_lookup = asked();
        let after = s.fs.lookup(ROOT_INO, name("d")).await.unwrap();
        assert!(asked() > before_lookup, "S3 was not asked");
        assert!(
            after.mtime > before.mtime,
            "{:?} {:?}",
            after.mtime,
            before.mtime
        );
        assert!(after.ctime > before.ctime);
        // Once the marker has them, they are what S3 says.
        s.fs.write_dir_times().await;
        let stored = FileMeta::from_metadata(&s.store.object("d/").unwrap().metadata);
        assert_eq!(stored.mtime, Some(after.mtime));
        let again = s.fs.lookup(ROOT_INO, name("d")).await.unwrap();
        assert_eq!(again.mtime, after.mtime);
    }

    #[tokio::test]
    async fn a_directory_keeps_the_time_of_its_last_change_after_a_remount() {
        let s = setup();
        let d = s.fs.mkdir(ROOT_INO, name("d"), 0o755, ME).await.unwrap();
        let past = UNIX_EPOCH + Duration::from_secs(1_000_000_000);
        let touch = SetAttr {
            mtime: Some(past),
            ..SetAttr::default()
        };
        s.fs.setattr(d.ino, touch).await.unwrap();
        write_file(&s.fs, d.ino, "f", b"x").await.unwrap();
        let changed = s.fs.getattr(d.ino).await.unwrap().mtime;
        assert!(changed > past);
        // The marker takes it (unmount writes what is waiting).
        s.fs.shutdown().await;
        let again = remount(&s);
        let d = again.lookup(ROOT_INO, name("d")).await.unwrap();
        assert_eq!(d.mtime, changed);
        assert_eq!(d.ctime, changed);
    }
}
