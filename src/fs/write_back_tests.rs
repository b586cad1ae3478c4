//! Unit tests of write-back: the journal, retries, resume after a crash, and
//! conflicts with other writers, over the in-memory store.

use std::path::Path;
use std::sync::Arc;

use super::inode::ROOT_INO;
use super::tests::{FILE_MODE, ME, files_in, name, pattern, read_all, test_config, write_file};
use super::*;
use crate::fs::write_back::RETRIES_AT_ONCE;
use crate::store::StoreError;
use crate::store::memory::{MemoryStore, Op};

const MIB: usize = 1 << 20;

/// A mount over the memory store with its cache directory (the offload tests
/// use it too).
pub(super) struct Mount {
    pub(super) store: Arc<MemoryStore>,
    pub(super) fs: Arc<Fs>,
    pub(super) dir: tempfile::TempDir,
}

fn mount() -> Mount {
    mount_with(|_| {})
}

pub(super) fn mount_with(change: impl FnOnce(&mut FsConfig)) -> Mount {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(MemoryStore::new());
    let mut config = test_config(dir.path());
    change(&mut config);
    let fs = Fs::new(store.clone(), config, None).unwrap();
    Mount { store, fs, dir }
}

impl Mount {
    /// The daemon dies: nothing of its memory is kept, its cache directory and
    /// the bucket are; a new one mounts and takes up the journal.
    pub(super) async fn crash_and_remount(&mut self) -> usize {
        self.fs.halt();
        let config = self.fs.config().clone();
        self.fs = Fs::new(self.store.clone(), config, None).unwrap();
        self.fs.resume().await.unwrap()
    }

    /// The one staging file.
    pub(super) fn staging_file(&self) -> std::path::PathBuf {
        let files = files_in(&self.dir.path().join("staging"));
        assert_eq!(files.len(), 1, "{files:?}");
        files[0].clone()
    }

    /// The data and the record put aside in `recovered/`.
    pub(super) fn recovered(&self) -> (std::path::PathBuf, String) {
        let aside = files_in(&self.dir.path().join("recovered"));
        let data = aside
            .iter()
            .find(|p| p.extension().is_none_or(|e| e != "json"))
            .unwrap()
            .clone();
        let record = aside
            .iter()
            .find(|p| p.extension().is_some_and(|e| e == "json"))
            .unwrap();
        (data, std::fs::read_to_string(record).unwrap())
    }

    /// Another machine's mount of the same bucket, with its own cache.
    fn second(&self, dir: &Path) -> Arc<Fs> {
        let config = FsConfig {
            cache_dir: dir.to_path_buf(),
            ..self.fs.config().clone()
        };
        Fs::new(self.store.clone(), config, None).unwrap()
    }

    fn records(&self) -> Vec<std::path::PathBuf> {
        files_in(&self.dir.path().join("journal"))
    }

    fn body(&self, key: &str) -> Option<Vec<u8>> {
        self.store.object(key).map(|o| o.body.to_vec())
    }

    /// Keys other than `key`: the conflict copies.
    fn others(&self, key: &str) -> Vec<String> {
        self.store.keys().into_iter().filter(|k| k != key).collect()
    }
}

async fn lookup_read(fs: &Fs, file: &str) -> Vec<u8> {
    let ino = fs.lookup(ROOT_INO, name(file)).await.unwrap().ino;
    read_all(fs, ino).await
}

/// Open `file` read-write, write `data` at `offset`, close; the close's result.
async fn edit(fs: &Fs, file: &str, offset: u64, data: &[u8]) -> FsResult<()> {
    let ino = fs.lookup(ROOT_INO, name(file)).await?.ino;
    let fh = fs.open(ino, libc::O_RDWR, ME).await?;
    fs.write(fh, offset, data.to_vec()).await?;
    let closed = fs.flush(fh, ME.process).await;
    fs.release(fh).await;
    closed
}

fn down() -> StoreError {
    StoreError::Unreachable("server down".into())
}

#[tokio::test]
async fn a_failed_upload_stays_pending_with_its_new_content_and_is_retried() {
    let m = mount();
    m.store.fail_next(Op::Put, down());
    let err = write_file(&m.fs, ROOT_INO, "notes.txt", b"precious")
        .await
        .unwrap_err();
    assert_eq!(err, Errno::EIO);
    assert!(m.body("notes.txt").is_none());
    // Until S3 has it, the file shows what was written, after the close too.
    assert_eq!(lookup_read(&m.fs, "notes.txt").await, b"precious");
    assert_eq!(m.fs.pending().await, 1);
    assert_eq!(m.records().len(), 1);
    m.fs.retry_pending().await;
    assert_eq!(m.body("notes.txt").unwrap(), b"precious");
    assert_eq!(m.fs.pending().await, 0);
    assert!(
        m.records().is_empty(),
        "the record goes once S3 has the file"
    );
    assert!(files_in(&m.dir.path().join("staging")).is_empty());
}

#[tokio::test(start_paused = true)]
async fn the_background_retry_backs_off_until_the_server_answers() {
    let m = mount_with(|c| {
        c.retry = RetryPolicy {
            first: std::time::Duration::from_secs(1),
            max: std::time::Duration::from_secs(8),
        }
    });
    for _ in 0..4 {
        m.store.fail_next(Op::Put, down());
    }
    write_file(&m.fs, ROOT_INO, "f", b"data").await.unwrap_err();
    // Tries after 1, 2 and 4 s fail; the one 8 s later succeeds.
    for _ in 0..100 {
        if m.body("f").is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    assert_eq!(m.body("f").unwrap(), b"data");
    assert_eq!(m.store.calls(Op::Put), 5);
    assert_eq!(m.fs.pending().await, 0);
}

#[tokio::test]
async fn a_file_whose_close_failed_is_uploaded_after_a_crash() {
    let mut m = mount();
    m.store.fail_next(Op::Put, down());
    write_file(&m.fs, ROOT_INO, "f", b"finished")
        .await
        .unwrap_err();
    assert_eq!(m.crash_and_remount().await, 1);
    assert_eq!(lookup_read(&m.fs, "f").await, b"finished");
    m.fs.retry_pending().await;
    assert_eq!(m.body("f").unwrap(), b"finished");
    assert!(m.records().is_empty());
}

#[tokio::test]
async fn a_file_still_being_written_at_a_crash_is_put_aside_never_uploaded() {
    let mut m = mount();
    let (_, fh) =
        m.fs.create(ROOT_INO, name("backup.tar"), FILE_MODE, libc::O_WRONLY, ME)
            .await
            .unwrap();
    m.fs.write(fh, 0, pattern(3 * MIB)).await.unwrap();
    assert_eq!(m.crash_and_remount().await, 0);
    m.fs.retry_pending().await;
    assert!(
        m.store.keys().is_empty(),
        "no object for an unfinished file"
    );
    let aside = files_in(&m.dir.path().join("recovered"));
    let data = aside
        .iter()
        .find(|p| p.extension().is_none_or(|e| e != "json"))
        .unwrap();
    assert!(
        data.file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("backup.tar.")
    );
    assert_eq!(std::fs::read(data).unwrap(), pattern(3 * MIB));
    assert!(m.fs.lookup(ROOT_INO, name("backup.tar")).await.is_err());
}

#[tokio::test]
async fn a_large_file_whose_upload_broke_resumes_without_sending_its_parts_again() {
    let mut m = mount();
    let data = pattern(30 * MIB);
    // Everything reaches S3 but the completion.
    m.store.fail_next(Op::CompleteMultipart, down());
    write_file(&m.fs, ROOT_INO, "big", &data).await.unwrap_err();
    let parts_sent = m.store.calls(Op::UploadPart);
    assert_eq!(parts_sent, 4);
    assert_eq!(m.crash_and_remount().await, 1);
    m.fs.retry_pending().await;
    assert_eq!(m.body("big").unwrap(), data);
    assert_eq!(
        m.store.calls(Op::UploadPart),
        parts_sent,
        "no part sent again"
    );
    assert_eq!(m.store.calls(Op::ListParts), 1);
    assert_eq!(m.store.open_uploads(), 0);
}

#[tokio::test]
async fn parts_s3_lost_are_sent_again_on_resume() {
    let mut m = mount();
    let data = pattern(30 * MIB);
    m.store.fail_next(Op::CompleteMultipart, down());
    write_file(&m.fs, ROOT_INO, "big", &data).await.unwrap_err();
    // The upload went (a lifecycle rule aborted it): all parts go again.
    let id = m.store.upload_ids().pop().unwrap();
    m.store.abort_multipart("big", &id).await.unwrap();
    let sent = m.store.calls(Op::UploadPart);
    m.crash_and_remount().await;
    m.fs.retry_pending().await;
    assert_eq!(m.body("big").unwrap(), data);
    assert_eq!(m.store.calls(Op::UploadPart) - sent, 4);
}

#[tokio::test]
async fn an_upload_whose_answer_was_lost_is_not_taken_for_another_writer() {
    for size in [5, 20 * MIB] {
        let mut m = mount();
        let data = pattern(size);
        m.store.lose_next_answer(Op::Put);
        m.store.lose_next_answer(Op::CompleteMultipart);
        write_file(&m.fs, ROOT_INO, "f", &data).await.unwrap_err();
        assert_eq!(m.body("f").unwrap(), data, "S3 took it all the same");
        m.crash_and_remount().await;
        m.fs.retry_pending().await;
        assert_eq!(m.fs.pending().await, 0);
        assert_eq!(m.body("f").unwrap(), data);
        assert!(
            m.others("f").is_empty(),
            "no conflict copy: {:?}",
            m.store.keys()
        );
        assert!(m.records().is_empty());
    }
}

/// Two mounts change one file without seeing each other's change: the second
/// close fails, and both versions are kept.
async fn second_writer_keeps_both(server_checks: bool) {
    let m = mount_with(|c| c.check_before_upload = !server_checks);
    m.store.ignore_conditions(!server_checks);
    write_file(&m.fs, ROOT_INO, "style.css", b"v1")
        .await
        .unwrap();
    let other_dir = tempfile::tempdir().unwrap();
    let other = m.second(other_dir.path());
    // Both read v1, then each saves its own change.
    assert_eq!(lookup_read(&other, "style.css").await, b"v1");
    edit(&other, "style.css", 0, b"theirs").await.unwrap();
    let err = edit(&m.fs, "style.css", 0, b"ours").await.unwrap_err();
    assert_eq!(err, Errno::ESTALE);
    assert_eq!(m.body("style.css").unwrap(), b"theirs");
    let copies = m.others("style.css");
    assert_eq!(copies.len(), 1, "{copies:?}");
    assert!(copies[0].starts_with("style.css.conflict-"), "{copies:?}");
    assert_eq!(m.body(&copies[0]).unwrap(), b"ours");
    assert_eq!(
        m.store.object(&copies[0]).unwrap().content_type.as_deref(),
        Some("text/css")
    );
    // Settled: nothing pending, and the file shows their version.
    assert_eq!(m.fs.pending().await, 0);
    assert!(m.records().is_empty());
    assert_eq!(lookup_read(&m.fs, "style.css").await, b"theirs");
}

#[tokio::test]
async fn a_conflict_on_a_server_that_enforces_conditions_keeps_both_versions() {
    second_writer_keeps_both(true).await;
}

#[tokio::test]
async fn a_conflict_on_a_server_that_ignores_conditions_is_caught_by_a_head() {
    second_writer_keeps_both(false).await;
}

#[tokio::test]
async fn a_new_file_over_one_another_writer_made_meanwhile_keeps_both() {
    let m = mount();
    let (_, fh) =
        m.fs.create(ROOT_INO, name("report.txt"), FILE_MODE, libc::O_WRONLY, ME)
            .await
            .unwrap();
    m.fs.write(fh, 0, b"mine".to_vec()).await.unwrap();
    m.store.insert("report.txt", "someone else's");
    assert_eq!(m.fs.flush(fh, ME.process).await, Err(Errno::ESTALE));
    m.fs.release(fh).await;
    assert_eq!(m.body("report.txt").unwrap(), b"someone else's");
    let copies = m.others("report.txt");
    assert_eq!(m.body(&copies[0]).unwrap(), b"mine");
}

#[tokio::test]
async fn overwrite_mode_lets_the_last_writer_win() {
    let m = mount_with(|c| c.on_conflict = OnConflict::Overwrite);
    write_file(&m.fs, ROOT_INO, "f", b"v1").await.unwrap();
    let ino = m.fs.lookup(ROOT_INO, name("f")).await.unwrap().ino;
    let fh = m.fs.open(ino, libc::O_RDWR, ME).await.unwrap();
    m.fs.write(fh, 0, b"ours".to_vec()).await.unwrap();
    m.store.insert("f", "theirs");
    m.fs.flush(fh, ME.process).await.unwrap();
    m.fs.release(fh).await;
    assert_eq!(m.body("f").unwrap(), b"ours");
    assert_eq!(m.store.keys(), ["f"]);
}

#[tokio::test]
async fn an_in_place_edit_whose_base_is_gone_puts_the_changes_aside() {
    let m = mount();
    m.store.insert("db.bin", pattern(20 * MIB));
    // Changed in place without being read whole: most bytes stay the base's.
    let ino = m.fs.lookup(ROOT_INO, name("db.bin")).await.unwrap().ino;
    let fh = m.fs.open(ino, libc::O_RDWR, ME).await.unwrap();
    m.fs.write(fh, 9 * MIB as u64, b"edit".to_vec())
        .await
        .unwrap();
    m.store.insert("db.bin", "replaced by another writer");
    assert_eq!(m.fs.flush(fh, ME.process).await, Err(Errno::ESTALE));
    m.fs.release(fh).await;
    assert_eq!(m.body("db.bin").unwrap(), b"replaced by another writer");
    assert_eq!(m.store.keys(), ["db.bin"]);
    let aside = files_in(&m.dir.path().join("recovered"));
    assert_eq!(aside.len(), 2, "the changes and their record: {aside:?}");
    let data = aside
        .iter()
        .find(|p| p.extension().is_none_or(|e| e != "json"))
        .unwrap();
    let kept = std::fs::read(data).unwrap();
    assert_eq!(&kept[9 * MIB..9 * MIB + 4], b"edit");
}

/// A file changed here, then replaced by another writer, then renamed: renaming
/// its directory moves their version, and the upload meets it as a conflict
/// instead of taking it for its base; renaming the file itself fails (the copy
/// is of the version this mount knows), and the upload meets theirs in place.
async fn rename_after_another_writer_keeps_both(whole_directory: bool) {
    let m = mount();
    m.store.insert("site/style.css", "v1");
    let site = m.fs.lookup(ROOT_INO, name("site")).await.unwrap().ino;
    let ino = m.fs.lookup(site, name("style.css")).await.unwrap().ino;
    let fh =
        m.fs.open(ino, libc::O_RDWR | libc::O_TRUNC, ME)
            .await
            .unwrap();
    m.fs.write(fh, 0, b"ours".to_vec()).await.unwrap();
    m.store.insert("site/style.css", "theirs");
    let key = if whole_directory {
        m.fs.rename(ROOT_INO, name("site"), ROOT_INO, name("www"), 0)
            .await
            .unwrap();
        "www/style.css"
    } else {
        let renamed =
            m.fs.rename(site, name("style.css"), site, name("main.css"), 0);
        assert_eq!(renamed.await, Err(Errno::ESTALE));
        "site/style.css"
    };
    assert_eq!(m.fs.flush(fh, ME.process).await, Err(Errno::ESTALE));
    m.fs.release(fh).await;
    assert_eq!(m.body(key).unwrap(), b"theirs");
    let copies = m.others(key);
    assert_eq!(copies.len(), 1, "{copies:?}");
    assert_eq!(m.body(&copies[0]).unwrap(), b"ours");
}

#[tokio::test]
async fn a_directory_renamed_after_another_writer_changed_a_file_keeps_both() {
    rename_after_another_writer_keeps_both(true).await;
}

#[tokio::test]
async fn a_file_renamed_after_another_writer_changed_it_is_not_moved_and_keeps_both() {
    rename_after_another_writer_keeps_both(false).await;
}

#[tokio::test]
async fn a_change_during_a_multipart_upload_starts_it_again() {
    let m = mount();
    m.store
        .fail_next(Op::CompleteMultipart, StoreError::Conflict);
    let data = pattern(20 * MIB);
    write_file(&m.fs, ROOT_INO, "big", &data).await.unwrap();
    assert_eq!(m.body("big").unwrap(), data);
    assert_eq!(m.store.calls(Op::CreateMultipart), 2);
    assert_eq!(m.store.open_uploads(), 0);
}

#[tokio::test]
async fn a_removed_pending_file_is_never_uploaded_even_after_a_crash() {
    let mut m = mount();
    m.store.fail_next(Op::Put, down());
    write_file(&m.fs, ROOT_INO, "tmp", b"x").await.unwrap_err();
    m.fs.lookup(ROOT_INO, name("tmp")).await.unwrap();
    m.fs.unlink(ROOT_INO, name("tmp")).await.unwrap();
    assert!(m.records().is_empty());
    m.crash_and_remount().await;
    m.fs.retry_pending().await;
    assert!(m.store.keys().is_empty());
}

/// A file whose upload failed (at `failing`) is renamed, then the daemon dies:
/// the next mount uploads it under the new name, and leaves no multipart
/// upload behind under the old one.
async fn pending_file_renamed_then_crash(failing: Op, data: &[u8]) {
    let mut m = mount();
    m.store.fail_next(failing, down());
    write_file(&m.fs, ROOT_INO, "draft", data)
        .await
        .unwrap_err();
    m.fs.lookup(ROOT_INO, name("draft")).await.unwrap();
    m.fs.rename(ROOT_INO, name("draft"), ROOT_INO, name("final"), 0)
        .await
        .unwrap();
    m.crash_and_remount().await;
    m.fs.retry_pending().await;
    assert_eq!(m.store.keys(), ["final"]);
    assert_eq!(m.body("final").unwrap(), data);
    assert_eq!(m.store.open_uploads(), 0);
}

#[tokio::test]
async fn a_pending_file_renamed_goes_up_under_its_new_name() {
    pending_file_renamed_then_crash(Op::Put, b"text").await;
}

#[tokio::test]
async fn a_multipart_upload_of_a_file_never_finished_is_aborted_at_the_next_mount() {
    let mut m = mount();
    let (_, fh) =
        m.fs.create(ROOT_INO, name("big"), FILE_MODE, libc::O_WRONLY, ME)
            .await
            .unwrap();
    for i in 0..20 {
        m.fs.write(fh, (i * MIB) as u64, pattern(MIB))
            .await
            .unwrap();
    }
    assert_eq!(
        m.store.open_uploads(),
        1,
        "parts go while the file is written"
    );
    m.crash_and_remount().await;
    assert_eq!(m.store.open_uploads(), 0);
    assert!(m.store.keys().is_empty());
}

#[tokio::test]
async fn a_part_sent_by_a_failed_upload_and_written_again_is_sent_again() {
    let m = mount();
    let mut data = pattern(20 * MIB);
    m.store.insert("big", data.clone());
    // An edit whose upload sends (or copies) all three parts, then fails.
    m.store.fail_next(Op::CompleteMultipart, down());
    edit(&m.fs, "big", MIB as u64, b"first").await.unwrap_err();
    data[MIB..MIB + 5].copy_from_slice(b"first");
    // The parts are kept for the next attempt; the last one changes.
    edit(&m.fs, "big", 17 * MIB as u64, b"second")
        .await
        .unwrap();
    data[17 * MIB..17 * MIB + 6].copy_from_slice(b"second");
    assert_eq!(m.body("big").unwrap(), data);
}

#[tokio::test]
async fn a_change_during_a_long_upload_is_caught_by_a_head_before_it_completes() {
    // A server that ignores conditions: only the HEADs can tell.
    let m = mount_with(|c| c.check_before_upload = true);
    m.store.ignore_conditions(true);
    m.store.insert("big", pattern(20 * MIB));
    let ours = vec![9u8; 20 * MIB];
    let gate = m.store.hold(Op::UploadPart);
    let (fs, body) = (m.fs.clone(), ours.clone());
    let saving = tokio::spawn(async move { edit(&fs, "big", 0, &body).await });
    // The HEAD before the upload has passed; its three parts are on their way.
    gate.reached(3).await;
    m.store.insert("big", "another writer's");
    drop(gate);
    assert_eq!(saving.await.unwrap(), Err(Errno::ESTALE));
    assert_eq!(m.body("big").unwrap(), b"another writer's");
    let copies = m.others("big");
    assert_eq!(copies.len(), 1, "{copies:?}");
    assert_eq!(m.body(&copies[0]).unwrap(), ours);
    assert_eq!(m.store.open_uploads(), 0);
}

#[tokio::test]
async fn a_create_the_journal_cannot_note_fails_and_uploads_nothing() {
    let m = mount();
    // The journal cannot be written (a full disk does the same).
    let journal = m.dir.path().join("journal");
    std::fs::remove_dir_all(&journal).unwrap();
    std::fs::write(&journal, b"not a directory").unwrap();
    let created =
        m.fs.create(ROOT_INO, name("new.txt"), FILE_MODE, libc::O_WRONLY, ME)
            .await;
    assert!(created.is_err(), "{created:?}");
    assert!(m.store.keys().is_empty(), "{:?}", m.store.keys());
    assert_eq!(
        m.fs.lookup(ROOT_INO, name("new.txt")).await.map(|a| a.ino),
        Err(Errno::ENOENT)
    );
    assert!(files_in(&m.dir.path().join("staging")).is_empty());
}

#[tokio::test]
async fn a_pending_file_another_writer_replaced_keeps_both_and_puts_nothing_aside() {
    let m = mount();
    write_file(&m.fs, ROOT_INO, "f", b"v1").await.unwrap();
    m.store.fail_next(Op::Put, down());
    edit(&m.fs, "f", 0, b"ours").await.unwrap_err();
    m.store.insert("f", "theirs");
    m.fs.retry_pending().await;
    assert_eq!(m.body("f").unwrap(), b"theirs");
    let copies = m.others("f");
    assert_eq!(copies.len(), 1, "{copies:?}");
    assert_eq!(m.body(&copies[0]).unwrap(), b"ours");
    assert!(files_in(&m.dir.path().join("recovered")).is_empty());
    assert_eq!(m.fs.pending().await, 0);
    assert!(m.records().is_empty());
}

#[tokio::test]
async fn a_pending_large_file_renamed_leaves_no_upload_behind_after_a_crash() {
    pending_file_renamed_then_crash(Op::CompleteMultipart, &pattern(20 * MIB)).await;
}

#[tokio::test]
async fn conflict_copies_made_in_the_same_second_never_replace_each_other() {
    // A server that ignores If-None-Match: the HEAD finds the name taken.
    let m = mount_with(|c| c.check_before_upload = true);
    m.store.ignore_conditions(true);
    write_file(&m.fs, ROOT_INO, "f", b"v1").await.unwrap();
    let taken = conflict_key("f", SystemTime::now());
    m.store.insert(&taken, "an earlier conflict copy");
    let ino = m.fs.lookup(ROOT_INO, name("f")).await.unwrap().ino;
    let fh = m.fs.open(ino, libc::O_RDWR, ME).await.unwrap();
    m.fs.write(fh, 0, b"ours".to_vec()).await.unwrap();
    m.store.insert("f", "theirs");
    assert_eq!(m.fs.flush(fh, ME.process).await, Err(Errno::ESTALE));
    m.fs.release(fh).await;
    // (Unless the second turned meanwhile: then the name is free anyway.)
    assert_eq!(m.body(&taken).unwrap(), b"an earlier conflict copy");
    let ours: Vec<String> = m
        .others("f")
        .into_iter()
        .filter(|k| m.body(k).unwrap() == b"ours")
        .collect();
    assert_eq!(ours.len(), 1, "{:?}", m.store.keys());
}

#[tokio::test]
async fn a_sparse_edit_whose_base_was_replaced_by_one_of_its_size_is_put_aside() {
    let m = mount();
    m.store.insert("f", vec![1u8; 100]);
    // Changed in place without being read: the other bytes are the base's.
    let ino = m.fs.lookup(ROOT_INO, name("f")).await.unwrap().ino;
    let fh = m.fs.open(ino, libc::O_RDWR, ME).await.unwrap();
    m.fs.write(fh, 50, b"more".to_vec()).await.unwrap();
    m.store.insert("f", vec![2u8; 100]);
    assert_eq!(m.fs.flush(fh, ME.process).await, Err(Errno::ESTALE));
    m.fs.release(fh).await;
    assert_eq!(m.body("f").unwrap(), vec![2u8; 100]);
    assert_eq!(m.fs.pending().await, 0);
    let aside = files_in(&m.dir.path().join("recovered"));
    assert_eq!(aside.len(), 2, "the changes and their record: {aside:?}");
}

#[tokio::test]
async fn a_conflict_met_by_the_last_release_puts_nothing_aside() {
    let m = mount();
    write_file(&m.fs, ROOT_INO, "f", b"v1").await.unwrap();
    let ino = m.fs.lookup(ROOT_INO, name("f")).await.unwrap().ino;
    let fh = m.fs.open(ino, libc::O_RDWR, ME).await.unwrap();
    m.fs.write(fh, 0, b"ours".to_vec()).await.unwrap();
    m.store.insert("f", "theirs");
    // No flush of the opener came first (another process closed the
    // descriptor): the release uploads, and meets theirs.
    m.fs.release(fh).await;
    assert_eq!(m.body("f").unwrap(), b"theirs");
    let copies = m.others("f");
    assert_eq!(copies.len(), 1, "{copies:?}");
    assert_eq!(m.body(&copies[0]).unwrap(), b"ours");
    assert!(files_in(&m.dir.path().join("recovered")).is_empty());
    assert!(m.records().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_resume_of_many_files_uploads_a_few_at_a_time() {
    let mut m = mount();
    for i in 0..20 {
        m.store.fail_next(Op::Put, down());
        write_file(&m.fs, ROOT_INO, &format!("f{i}"), b"data")
            .await
            .unwrap_err();
    }
    let before = m.store.calls(Op::Head);
    let gate = m.store.hold(Op::Head);
    assert_eq!(m.crash_and_remount().await, 20);
    gate.reached(RETRIES_AT_ONCE).await;
    // Every task runs until it waits (the clock is paused: it only moves once
    // nothing else can run).
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    assert_eq!(m.store.calls(Op::Head) - before, RETRIES_AT_ONCE as u64);
    gate.open();
    for _ in 0..100 {
        if m.store.keys().len() == 20 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
    assert_eq!(m.store.keys().len(), 20);
}

fn background() -> Mount {
    mount_with(|c| c.background_uploads = true)
}

#[tokio::test]
async fn a_background_close_returns_before_the_upload_and_unmount_waits_for_it() {
    let m = background();
    let gate = m.store.hold(Op::Put);
    write_file(&m.fs, ROOT_INO, "f", b"saved").await.unwrap();
    assert!(m.body("f").is_none());
    // Safe on disk: a crash now would leave it to the next mount.
    assert_eq!(m.records().len(), 1);
    drop(gate);
    assert_eq!(lookup_read(&m.fs, "f").await, b"saved");
    m.fs.shutdown().await;
    assert_eq!(m.body("f").unwrap(), b"saved");
    assert!(m.records().is_empty());
}

#[tokio::test]
async fn fsync_with_background_uploads_waits_for_s3_and_reports_its_error() {
    let m = background();
    let (_, fh) =
        m.fs.create(ROOT_INO, name("f"), FILE_MODE, libc::O_WRONLY, ME)
            .await
            .unwrap();
    m.fs.write(fh, 0, b"data".to_vec()).await.unwrap();
    m.store.fail_next(Op::Put, down());
    assert_eq!(m.fs.fsync(fh).await, Err(Errno::EIO));
    m.fs.fsync(fh).await.unwrap();
    assert_eq!(m.body("f").unwrap(), b"data");
    m.fs.flush(fh, ME.process).await.unwrap();
    m.fs.release(fh).await;
}

#[tokio::test]
async fn a_background_upload_cut_by_a_crash_is_made_by_the_next_mount() {
    let mut m = background();
    m.store.fail_next(Op::Put, down());
    let data = pattern(3 * MIB);
    write_file(&m.fs, ROOT_INO, "f", &data).await.unwrap();
    // The background attempt fails (and is over: a dead process writes
    // nothing more): the file waits for the next one.
    let (_, state) = m.fs.open_states().pop().unwrap();
    while !state.lock().await.upload_failed {
        tokio::task::yield_now().await;
    }
    assert!(m.body("f").is_none());
    assert_eq!(m.crash_and_remount().await, 1);
    m.fs.shutdown().await;
    assert_eq!(m.body("f").unwrap(), data);
}
