//! Unit tests of the filesystem core over the in-memory store.

use std::ffi::OsStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::dir::DirEntry;
use super::inode::ROOT_INO;
use super::*;
use crate::store::StoreError;
use crate::store::memory::{MemoryStore, Op};

/// Who makes the requests of these tests.
pub(super) const ME: Caller = Caller {
    process: 100,
    uid: 1000,
    gid: 1000,
    umask: 0,
};
pub(super) const FILE_MODE: u32 = libc::S_IFREG | 0o644;
const DIR_MODE: u32 = 0o755;

/// A block cache in memory only.
pub(super) fn test_cache() -> crate::cache::CacheConfig {
    crate::cache::CacheConfig {
        block_size: 1 << 20,
        memory_bytes: 64 << 20,
        in_flight_bytes: 64 << 20,
        disk: None,
    }
}

pub(super) struct Setup {
    pub store: Arc<MemoryStore>,
    pub fs: Arc<Fs>,
    pub dir: tempfile::TempDir,
}

/// The configuration of these tests, with its cache directory in `dir`. Failed
/// uploads are retried only when a test asks ([`Fs::retry_pending`]).
pub(super) fn test_config(dir: &std::path::Path) -> FsConfig {
    FsConfig {
        prefix: String::new(),
        uid: 1000,
        gid: 1000,
        file_mode: 0o644,
        dir_mode: 0o755,
        metadata_ttl: Duration::from_secs(60),
        negative_ttl: Duration::from_secs(60),
        head_listed: false,
        read_only: false,
        bucket: "bucket".into(),
        cache_dir: dir.to_path_buf(),
        on_conflict: OnConflict::Keep,
        // The memory store enforces conditions, as AWS S3 does.
        check_before_upload: false,
        retry: RetryPolicy {
            first: Duration::from_secs(3600),
            max: Duration::from_secs(3600),
        },
        cache: test_cache(),
        upload_memory: 128 << 20,
        background_uploads: false,
        offload_after: 1 << 30,
    }
}

fn setup_with(prefix: &str, read_only: bool) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(MemoryStore::new());
    let config = FsConfig {
        prefix: prefix.into(),
        read_only,
        ..test_config(dir.path())
    };
    let fs = Fs::new(store.clone(), config, None).unwrap();
    Setup { store, fs, dir }
}

/// A setup whose block cache (and so its remembered headers) is on disk.
fn setup_with_disk_cache() -> Setup {
    let s = setup();
    let fs = remount_with_disk_cache(&s);
    Setup { fs, ..s }
}

/// Another mount of the same bucket, with the same disk cache.
fn remount_with_disk_cache(s: &Setup) -> Arc<Fs> {
    let mut cache = test_cache();
    cache.disk = Some((
        s.dir.path().join("blocks"),
        crate::cache::disk::DiskLimits {
            max_bytes: 1 << 30,
            min_free: 0,
        },
    ));
    let config = FsConfig {
        cache,
        ..test_config(s.dir.path())
    };
    Fs::new(s.store.clone(), config, None).unwrap()
}

/// A setup whose attributes are trusted for `ttl`.
pub(super) fn setup_with_ttl(ttl: Duration) -> Setup {
    let s = setup();
    let mut config = s.fs.config().clone();
    config.metadata_ttl = ttl;
    config.negative_ttl = ttl;
    let fs = Fs::new(s.store.clone(), config, None).unwrap();
    Setup { fs, ..s }
}

pub(super) fn setup() -> Setup {
    setup_with("", false)
}

pub(super) fn name(s: &str) -> &OsStr {
    OsStr::new(s)
}

fn staged_files(s: &Setup) -> Vec<std::path::PathBuf> {
    files_in(&s.dir.path().join("staging"))
}

pub(super) fn files_in(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(dir)
        .map(|d| d.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default()
}

pub(super) async fn write_file(fs: &Fs, parent: u64, file: &str, data: &[u8]) -> FsResult<u64> {
    let (attr, fh) = fs
        .create(parent, name(file), FILE_MODE, libc::O_WRONLY, ME)
        .await?;
    fs.write(fh, 0, data.to_vec()).await?;
    let flushed = fs.flush(fh, ME.process).await;
    fs.release(fh).await;
    flushed.map(|()| attr.ino)
}

pub(super) async fn read_all(fs: &Fs, ino: u64) -> Vec<u8> {
    let fh = fs.open(ino, libc::O_RDONLY, ME).await.unwrap();
    let mut out = Vec::new();
    loop {
        let chunk = fs.read(fh, out.len() as u64, 65536).await.unwrap();
        if chunk.is_empty() {
            break;
        }
        out.extend_from_slice(&chunk);
    }
    fs.release(fh).await;
    out
}

#[tokio::test]
async fn written_file_is_uploaded_on_close_with_content_type() {
    let s = setup_with("site/", false);
    let ino = write_file(&s.fs, ROOT_INO, "style.css", b"body {}")
        .await
        .unwrap();
    let o = s.store.object("site/style.css").unwrap();
    assert_eq!(&o.body[..], b"body {}");
    assert_eq!(o.content_type.as_deref(), Some("text/css"));
    assert_eq!(s.fs.getattr(ino).await.unwrap().size, 7);
    assert_eq!(read_all(&s.fs, ino).await, b"body {}");
    assert!(staged_files(&s).is_empty(), "staging file left behind");
}

#[tokio::test]
async fn nothing_reaches_the_bucket_before_close() {
    let s = setup();
    let (_, fh) =
        s.fs.create(ROOT_INO, name("a"), FILE_MODE, libc::O_WRONLY, ME)
            .await
            .unwrap();
    s.fs.write(fh, 0, b"partial".to_vec()).await.unwrap();
    assert!(s.store.object("a").is_none());
    s.fs.flush(fh, ME.process).await.unwrap();
    s.fs.release(fh).await;
    assert_eq!(&s.store.object("a").unwrap().body[..], b"partial");
}

#[tokio::test]
async fn only_the_openers_close_uploads() {
    let s = setup();
    let (_, fh) =
        s.fs.create(ROOT_INO, name("dump"), FILE_MODE, libc::O_WRONLY, ME)
            .await
            .unwrap();
    s.fs.write(fh, 0, b"first half".to_vec()).await.unwrap();
    // A child that inherited the descriptor closes its copy (fork, then exec).
    s.fs.flush(fh, ME.process + 1).await.unwrap();
    assert!(s.store.object("dump").is_none(), "uploaded half-written");
    s.fs.write(fh, 10, b", second half".to_vec()).await.unwrap();
    s.fs.flush(fh, ME.process).await.unwrap();
    assert_eq!(
        &s.store.object("dump").unwrap().body[..],
        b"first half, second half"
    );
    s.fs.release(fh).await;
}

#[tokio::test]
async fn failed_upload_fails_close_and_keeps_the_data() {
    let s = setup();
    for _ in 0..2 {
        s.store
            .fail_next(Op::Put, StoreError::Unreachable("server down".into()));
    }
    let err = write_file(&s.fs, ROOT_INO, "report.txt", b"precious")
        .await
        .unwrap_err();
    assert_eq!(err, Errno::EIO);
    assert!(s.store.object("report.txt").is_none());
    let kept = staged_files(&s);
    assert_eq!(kept.len(), 1);
    assert_eq!(std::fs::read(&kept[0]).unwrap(), b"precious");
    assert!(kept[0].to_string_lossy().ends_with("report.txt"));
    // The failed close is not retried behind the user's back at release.
    assert_eq!(s.store.calls(Op::Put), 1);
}

#[tokio::test]
async fn a_failed_upload_is_on_the_board_until_its_file_is_removed() {
    let s = setup();
    for _ in 0..2 {
        s.store
            .fail_next(Op::Put, StoreError::Unreachable("server down".into()));
    }
    write_file(&s.fs, ROOT_INO, "report.txt", b"precious")
        .await
        .unwrap_err();
    let (_, failed, _) = s.fs.board().snapshot();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].key, "report.txt");
    assert!(failed[0].reason.contains("server down"), "{failed:?}");
    let kept = failed[0].kept_in.as_ref().expect("the staging file");
    assert_eq!(std::fs::read(kept).unwrap(), b"precious");
    // Removed: nothing is waiting for S3 any more, and nothing says so.
    s.fs.unlink(ROOT_INO, name("report.txt")).await.unwrap();
    assert!(s.fs.board().snapshot().1.is_empty());
    assert_eq!(s.fs.unsaved_changes().0, 0);
}

#[tokio::test]
async fn access_denied_upload_is_eacces() {
    let s = setup();
    s.store
        .fail_next(Op::Put, StoreError::AccessDenied("AccessDenied".into()));
    let err = write_file(&s.fs, ROOT_INO, "x", b"x").await.unwrap_err();
    assert_eq!(err, Errno(libc::EACCES));
}

#[tokio::test]
async fn objects_written_elsewhere_are_listed_and_looked_up() {
    let s = setup();
    s.store.insert("docs/a.txt", "hello");
    s.store.insert("docs/sub/b.txt", "x");
    s.store.insert("empty/", "");
    let docs = s.fs.lookup(ROOT_INO, name("docs")).await.unwrap();
    assert_eq!(docs.kind, Kind::Dir);
    assert_eq!(
        s.fs.lookup(ROOT_INO, name("empty")).await.unwrap().kind,
        Kind::Dir
    );
    let a = s.fs.lookup(docs.ino, name("a.txt")).await.unwrap();
    assert_eq!((a.kind, a.size), (Kind::File, 5));
    assert_eq!(
        s.fs.lookup(docs.ino, name("missing")).await.unwrap_err(),
        Errno::ENOENT
    );
    let fh = s.fs.opendir(docs.ino).unwrap();
    let names: Vec<String> =
        s.fs.readdir(docs.ino, fh, 0, 100, false)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.name)
            .collect();
    assert_eq!(names, [".", "..", "sub", "a.txt"]);
    // Restarting from an offset gives the rest of the same snapshot.
    let rest = s.fs.readdir(docs.ino, fh, 3, 100, false).await.unwrap();
    assert_eq!(rest.len(), 1);
    assert_eq!(rest[0].name, "a.txt");
    s.fs.releasedir(fh);
}

#[tokio::test]
async fn created_file_is_listed_before_it_is_uploaded() {
    let s = setup();
    let (_, fh) =
        s.fs.create(ROOT_INO, name("new"), FILE_MODE, libc::O_WRONLY, ME)
            .await
            .unwrap();
    let dh = s.fs.opendir(ROOT_INO).unwrap();
    let listed = s.fs.readdir(ROOT_INO, dh, 2, 100, false).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].name, "new");
    s.fs.flush(fh, ME.process).await.unwrap();
    s.fs.release(fh).await;
    assert!(s.store.object("new").is_some());
}

#[tokio::test]
async fn mkdir_writes_a_marker_and_rmdir_refuses_a_non_empty_directory() {
    let s = setup();
    let d = s.fs.mkdir(ROOT_INO, name("d"), DIR_MODE, ME).await.unwrap();
    assert!(s.store.object("d/").is_some());
    assert_eq!(
        s.fs.mkdir(ROOT_INO, name("d"), DIR_MODE, ME)
            .await
            .unwrap_err(),
        Errno::EEXIST
    );
    write_file(&s.fs, d.ino, "f", b"1").await.unwrap();
    assert_eq!(
        s.fs.rmdir(ROOT_INO, name("d")).await.unwrap_err(),
        Errno::ENOTEMPTY
    );
    s.fs.unlink(d.ino, name("f")).await.unwrap();
    s.fs.rmdir(ROOT_INO, name("d")).await.unwrap();
    assert!(s.store.keys().is_empty(), "{:?}", s.store.keys());
}

#[tokio::test]
async fn rmdir_refuses_a_directory_with_a_file_not_yet_uploaded() {
    let s = setup();
    let d = s.fs.mkdir(ROOT_INO, name("d"), DIR_MODE, ME).await.unwrap();
    let (_, fh) =
        s.fs.create(d.ino, name("f"), FILE_MODE, libc::O_WRONLY, ME)
            .await
            .unwrap();
    assert_eq!(
        s.fs.rmdir(ROOT_INO, name("d")).await.unwrap_err(),
        Errno::ENOTEMPTY
    );
    s.fs.release(fh).await;
}

#[tokio::test]
async fn unlinked_open_file_is_never_uploaded() {
    let s = setup();
    let (_, fh) =
        s.fs.create(ROOT_INO, name("tmp"), FILE_MODE, libc::O_RDWR, ME)
            .await
            .unwrap();
    s.fs.write(fh, 0, b"scratch".to_vec()).await.unwrap();
    s.fs.unlink(ROOT_INO, name("tmp")).await.unwrap();
    // The handle still works.
    assert_eq!(&s.fs.read(fh, 0, 100).await.unwrap()[..], b"scratch");
    s.fs.flush(fh, ME.process).await.unwrap();
    s.fs.release(fh).await;
    assert!(s.store.keys().is_empty());
    assert!(staged_files(&s).is_empty());
}

#[tokio::test]
async fn rename_copies_then_deletes() {
    let s = setup();
    s.store.insert("a.txt", "data");
    s.fs.mkdir(ROOT_INO, name("d"), DIR_MODE, ME).await.unwrap();
    let d = s.fs.lookup(ROOT_INO, name("d")).await.unwrap();
    s.fs.rename(ROOT_INO, name("a.txt"), d.ino, name("b.txt"), 0)
        .await
        .unwrap();
    assert_eq!(s.store.keys(), ["d/", "d/b.txt"]);
    assert_eq!(
        s.fs.lookup(ROOT_INO, name("a.txt")).await.unwrap_err(),
        Errno::ENOENT
    );
}

#[tokio::test]
async fn renamed_file_with_unsaved_writes_is_uploaded_under_the_new_name() {
    let s = setup();
    let (_, fh) =
        s.fs.create(ROOT_INO, name("draft"), FILE_MODE, libc::O_WRONLY, ME)
            .await
            .unwrap();
    s.fs.write(fh, 0, b"v1".to_vec()).await.unwrap();
    s.fs.rename(ROOT_INO, name("draft"), ROOT_INO, name("final"), 0)
        .await
        .unwrap();
    s.fs.flush(fh, ME.process).await.unwrap();
    s.fs.release(fh).await;
    assert_eq!(s.store.keys(), ["final"]);
}

#[tokio::test]
async fn truncate_and_overwrite_existing_object() {
    let s = setup();
    s.store.insert("f", "hello world");
    let f = s.fs.lookup(ROOT_INO, name("f")).await.unwrap();
    s.fs.setattr(
        f.ino,
        SetAttr {
            size: Some(5),
            ..SetAttr::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(&s.store.object("f").unwrap().body[..], b"hello");
    let fh = s.fs.open(f.ino, libc::O_WRONLY, ME).await.unwrap();
    s.fs.write(fh, 4, b"O!".to_vec()).await.unwrap();
    s.fs.flush(fh, ME.process).await.unwrap();
    s.fs.release(fh).await;
    assert_eq!(&s.store.object("f").unwrap().body[..], b"hellO!");
}

#[tokio::test]
async fn names_s3_cannot_store_are_refused() {
    let s = setup();
    // Names longer than 255 bytes fit in a key; FUSE carries up to 1,024.
    let long = "x".repeat(1000);
    let (_, fh) =
        s.fs.create(ROOT_INO, name(&long), FILE_MODE, 0, ME)
            .await
            .unwrap();
    s.fs.release(fh).await;
    assert!(s.store.object(&long).is_some());
    assert_eq!(s.fs.statfs(ROOT_INO).namelen, 1023);
    let too_long = "x".repeat(1024);
    assert_eq!(
        s.fs.create(ROOT_INO, name(&too_long), FILE_MODE, 0, ME)
            .await
            .unwrap_err(),
        Errno::ENAMETOOLONG
    );
    let mut parent = ROOT_INO;
    for _ in 0..5 {
        parent =
            s.fs.mkdir(parent, name(&"d".repeat(200)), DIR_MODE, ME)
                .await
                .unwrap()
                .ino;
    }
    // 5 × 201 bytes of directories plus a 30-byte name is over S3's 1,024; statfs
    // there says how long a name can be.
    assert_eq!(s.fs.statfs(parent).namelen, 1024 - 5 * 201 - 1);
    assert_eq!(
        s.fs.create(parent, name(&"f".repeat(30)), FILE_MODE, 0, ME)
            .await
            .unwrap_err(),
        Errno::ENAMETOOLONG
    );
    assert!(
        s.fs.create(parent, name("f"), FILE_MODE, 0, ME)
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn read_only_mount_refuses_changes() {
    let s = setup_with("", true);
    s.store.insert("f", "x");
    let f = s.fs.lookup(ROOT_INO, name("f")).await.unwrap();
    assert_eq!(
        s.fs.open(f.ino, libc::O_WRONLY, ME).await.unwrap_err(),
        Errno::EROFS
    );
    assert_eq!(
        s.fs.create(ROOT_INO, name("g"), FILE_MODE, 0, ME)
            .await
            .unwrap_err(),
        Errno::EROFS
    );
    assert_eq!(
        s.fs.unlink(ROOT_INO, name("f")).await.unwrap_err(),
        Errno::EROFS
    );
    assert_eq!(
        s.fs.mkdir(ROOT_INO, name("d"), DIR_MODE, ME)
            .await
            .unwrap_err(),
        Errno::EROFS
    );
    assert_eq!(read_all(&s.fs, f.ino).await, b"x");
}

#[tokio::test]
async fn large_file_is_uploaded_as_multipart() {
    let s = setup();
    let data: Vec<u8> = (0..20 * 1024 * 1024).map(|i| (i % 253) as u8).collect();
    let (_, fh) =
        s.fs.create(ROOT_INO, name("big.bin"), FILE_MODE, libc::O_WRONLY, ME)
            .await
            .unwrap();
    for (i, chunk) in data.chunks(1 << 20).enumerate() {
        s.fs.write(fh, (i << 20) as u64, chunk.to_vec())
            .await
            .unwrap();
    }
    s.fs.flush(fh, ME.process).await.unwrap();
    s.fs.release(fh).await;
    assert_eq!(s.store.object("big.bin").unwrap().body, data);
    assert_eq!(s.store.calls(Op::UploadPart), 3);
}

#[tokio::test]
async fn shutdown_leaves_a_file_still_being_written_to_be_put_aside() {
    let s = setup();
    let (_, fh) =
        s.fs.create(ROOT_INO, name("open"), FILE_MODE, libc::O_WRONLY, ME)
            .await
            .unwrap();
    s.fs.write(fh, 0, b"half of it".to_vec()).await.unwrap();
    s.fs.shutdown().await;
    assert!(s.store.object("open").is_none());
    let again = Fs::new(s.store.clone(), s.fs.config().clone(), None).unwrap();
    assert_eq!(again.resume().await.unwrap(), 0);
    assert!(s.store.object("open").is_none());
    let aside = files_in(&s.dir.path().join("recovered"));
    assert!(
        aside
            .iter()
            .any(|p| std::fs::read(p).unwrap() == b"half of it"),
        "{aside:?}"
    );
}

#[tokio::test]
async fn changed_object_is_seen_after_the_ttl() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(MemoryStore::new());
    let config = FsConfig {
        uid: 0,
        gid: 0,
        metadata_ttl: Duration::ZERO,
        negative_ttl: Duration::ZERO,
        ..test_config(dir.path())
    };
    let fs = Fs::new(store.clone(), config, None).unwrap();
    store.insert("f", "old");
    let f = fs.lookup(ROOT_INO, name("f")).await.unwrap();
    assert_eq!(read_all(&fs, f.ino).await, b"old");
    store.insert("f", "newer");
    assert_eq!(read_all(&fs, f.ino).await, b"newer");
}

#[tokio::test]
async fn failed_write_is_never_uploaded_half_done() {
    let s = setup();
    let (_, fh) =
        s.fs.create(ROOT_INO, name("f"), FILE_MODE, libc::O_WRONLY, ME)
            .await
            .unwrap();
    s.fs.write(fh, 0, b"first half".to_vec()).await.unwrap();
    // A write far past what a file may hold fails like a full disk would.
    let err =
        s.fs.write(fh, u64::MAX - 1, b"xx".to_vec())
            .await
            .unwrap_err();
    assert_eq!(s.fs.flush(fh, ME.process).await.unwrap_err(), err);
    s.fs.release(fh).await;
    assert!(s.store.keys().is_empty());
    // What was written is put aside, and no later mount uploads it.
    assert!(staged_files(&s).is_empty());
    let aside = files_in(&s.dir.path().join("recovered"));
    assert_eq!(aside.len(), 2, "the data and its record: {aside:?}");
    let data = aside
        .iter()
        .find(|p| p.extension().is_none_or(|e| e != "json"));
    assert!(
        std::fs::read(data.unwrap())
            .unwrap()
            .starts_with(b"first half")
    );
    let again = Fs::new(s.store.clone(), s.fs.config().clone(), None).unwrap();
    assert_eq!(again.resume().await.unwrap(), 0);
    assert!(s.store.keys().is_empty());
}

const MIB: usize = 1 << 20;

pub(super) fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

/// A second mount of the same bucket that remembers nothing and reads the
/// headers of what it finds (with --head-listed): it sees what S3 holds.
pub(super) fn remount(s: &Setup) -> Arc<Fs> {
    let config = FsConfig {
        head_listed: true,
        ..test_config(&s.dir.path().join("second"))
    };
    Fs::new(s.store.clone(), config, None).unwrap()
}

pub(super) fn meta_of(s: &Setup, key: &str) -> meta::FileMeta {
    meta::FileMeta::from_metadata(&s.store.object(key).unwrap().metadata)
}

#[tokio::test]
async fn a_small_change_to_a_large_object_moves_little_data() {
    let s = setup();
    let mut body = pattern(40 * MIB);
    s.store.insert("big.bin", body.clone());
    let f = s.fs.lookup(ROOT_INO, name("big.bin")).await.unwrap();
    let fh = s.fs.open(f.ino, libc::O_WRONLY, ME).await.unwrap();
    s.fs.write(fh, (20 * MIB + 3) as u64, b"edit".to_vec())
        .await
        .unwrap();
    assert_eq!(s.store.calls(Op::Get), 0, "a write downloads nothing");
    s.fs.flush(fh, ME.process).await.unwrap();
    s.fs.release(fh).await;
    body[20 * MIB + 3..20 * MIB + 7].copy_from_slice(b"edit");
    assert_eq!(s.store.object("big.bin").unwrap().body, body);
    assert_eq!(s.store.calls(Op::UploadPartCopy), 4);
    assert_eq!(s.store.calls(Op::UploadPart), 1);
    assert_eq!(
        s.store.calls(Op::Get),
        2,
        "only the changed part's other bytes"
    );
    assert!(staged_files(&s).is_empty());
}

#[tokio::test]
async fn writes_are_read_back_before_close_through_every_handle() {
    let s = setup();
    s.store.insert("log", "line 1\n");
    let f = s.fs.lookup(ROOT_INO, name("log")).await.unwrap();
    let writer = s.fs.open(f.ino, libc::O_WRONLY, ME).await.unwrap();
    let reader = s.fs.open(f.ino, libc::O_RDONLY, ME).await.unwrap();
    s.fs.write(writer, 7, b"line 2\n".to_vec()).await.unwrap();
    assert_eq!(
        &s.fs.read(reader, 0, 100).await.unwrap()[..],
        b"line 1\nline 2\n"
    );
    assert_eq!(s.fs.getattr(f.ino).await.unwrap().size, 14);
    assert_eq!(&s.store.object("log").unwrap().body[..], b"line 1\n");
    s.fs.release(reader).await;
    s.fs.flush(writer, ME.process).await.unwrap();
    s.fs.release(writer).await;
    assert_eq!(
        &s.store.object("log").unwrap().body[..],
        b"line 1\nline 2\n"
    );
}

#[tokio::test]
async fn truncate_shrinks_and_grows_with_zeros() {
    let s = setup();
    s.store.insert("f", "hello world");
    let f = s.fs.lookup(ROOT_INO, name("f")).await.unwrap();
    for size in [4, 8] {
        let changes = SetAttr {
            size: Some(size),
            ..SetAttr::default()
        };
        s.fs.setattr(f.ino, changes).await.unwrap();
    }
    assert_eq!(&s.store.object("f").unwrap().body[..], b"hell\0\0\0\0");
    assert_eq!(read_all(&s.fs, f.ino).await, b"hell\0\0\0\0");
}

#[tokio::test]
async fn fallocate_extends_the_file() {
    let s = setup();
    let (attr, fh) =
        s.fs.create(ROOT_INO, name("f"), FILE_MODE, libc::O_RDWR, ME)
            .await
            .unwrap();
    s.fs.fallocate(fh, 0, 100, 0).await.unwrap();
    s.fs.fallocate(fh, 0, 10, 0).await.unwrap();
    assert_eq!(s.fs.getattr(attr.ino).await.unwrap().size, 100);
    assert_eq!(
        s.fs.fallocate(fh, 0, 10, 0x02).await.unwrap_err(),
        Errno::EOPNOTSUPP
    );
    s.fs.flush(fh, ME.process).await.unwrap();
    s.fs.release(fh).await;
    assert_eq!(s.store.object("f").unwrap().body.len(), 100);
}

#[tokio::test]
async fn new_files_carry_mode_owner_and_time_in_s3fs_metadata() {
    let s = setup();
    let (_, fh) =
        s.fs.create(
            ROOT_INO,
            name("secret"),
            libc::S_IFREG | 0o600,
            libc::O_WRONLY,
            ME,
        )
        .await
        .unwrap();
    s.fs.flush(fh, ME.process).await.unwrap();
    s.fs.release(fh).await;
    let meta = meta_of(&s, "secret");
    assert_eq!(meta.mode, Some(libc::S_IFREG | 0o600));
    assert_eq!((meta.uid, meta.gid), (Some(1000), Some(1000)));
    assert!(meta.mtime.is_some());
}

#[tokio::test]
async fn chmod_chown_and_utimens_rewrite_only_the_metadata_and_survive_a_remount() {
    let s = setup();
    s.store.insert("page.html", "<html>");
    let f = s.fs.lookup(ROOT_INO, name("page.html")).await.unwrap();
    let when = SystemTime::UNIX_EPOCH + Duration::new(1_600_000_000, 5);
    let changes = SetAttr {
        mode: Some(0o600),
        uid: Some(7),
        gid: Some(8),
        mtime: Some(when),
        ..SetAttr::default()
    };
    let attr = s.fs.setattr(f.ino, changes).await.unwrap();
    assert_eq!(
        (attr.perm, attr.uid, attr.gid, attr.mtime),
        (0o600, 7, 8, when)
    );
    assert_eq!(s.store.calls(Op::Put), 0);
    assert_eq!(
        s.store.calls(Op::Get),
        0,
        "no download for a metadata change"
    );
    let o = s.store.object("page.html").unwrap();
    assert_eq!(&o.body[..], b"<html>");
    assert_eq!(o.content_type.as_deref(), Some("text/html"));

    let again = remount(&s);
    let attr = again.lookup(ROOT_INO, name("page.html")).await.unwrap();
    assert_eq!(
        (attr.perm, attr.uid, attr.gid, attr.mtime),
        (0o600, 7, 8, when)
    );
}

#[tokio::test]
async fn symlinks_are_stored_as_s3fs_stores_them() {
    let s = setup();
    let attr =
        s.fs.symlink(ROOT_INO, name("current"), OsStr::new("releases/v2"), ME)
            .await
            .unwrap();
    assert_eq!(attr.kind, Kind::Symlink);
    let o = s.store.object("current").unwrap();
    assert_eq!(&o.body[..], b"releases/v2");
    assert_eq!(meta_of(&s, "current").file_type(), Some(libc::S_IFLNK));

    let again = remount(&s);
    let attr = again.lookup(ROOT_INO, name("current")).await.unwrap();
    assert_eq!((attr.kind, attr.size), (Kind::Symlink, 11));
    assert_eq!(again.readlink(attr.ino).await.unwrap(), "releases/v2");
}

#[tokio::test]
async fn rename_over_a_file_takes_the_new_names_content_type() {
    let s = setup();
    s.store.insert("style.css", "old");
    write_file(&s.fs, ROOT_INO, "style.css.tmp", b"new")
        .await
        .unwrap();
    s.fs.lookup(ROOT_INO, name("style.css")).await.unwrap();
    s.fs.rename(
        ROOT_INO,
        name("style.css.tmp"),
        ROOT_INO,
        name("style.css"),
        0,
    )
    .await
    .unwrap();
    assert_eq!(s.store.keys(), ["style.css"]);
    let o = s.store.object("style.css").unwrap();
    assert_eq!(&o.body[..], b"new");
    assert_eq!(o.content_type.as_deref(), Some("text/css"));
}

#[tokio::test]
async fn a_renamed_files_content_type_follows_its_new_name_as_s3fs_makes_it() {
    let s = setup();
    let renames = [
        ("big.txt", "big.txt-copy", "application/octet-stream"),
        ("page.txt", "page.html", "text/html"),
        // A type no name gives: kept when neither name says one.
        ("data", "data2", "text/x-custom"),
    ];
    for (from, _, _) in renames {
        let options = PutOptions {
            content_type: (from == "data").then(|| "text/x-custom".to_string()),
            ..Default::default()
        };
        s.store
            .put(from, bytes::Bytes::from_static(b"x"), &options, None)
            .await
            .unwrap();
    }
    for (from, to, want) in renames {
        s.fs.lookup(ROOT_INO, name(from)).await.unwrap();
        s.fs.rename(ROOT_INO, name(from), ROOT_INO, name(to), 0)
            .await
            .unwrap();
        let o = s.store.object(to).unwrap();
        assert_eq!(o.content_type.as_deref(), Some(want), "{from} -> {to}");
    }
}

#[tokio::test]
async fn a_directory_renames_with_everything_under_it() {
    let s = setup();
    for k in ["d/", "d/a", "d/sub/b", "other"] {
        s.store.insert(k, k);
    }
    let mut meta = crate::store::UserMetadata::new();
    meta.insert("mode".into(), (libc::S_IFREG | 0o600).to_string());
    s.store.insert_with("d/secret", "s", meta);
    s.fs.lookup(ROOT_INO, name("d")).await.unwrap();
    s.fs.rename(ROOT_INO, name("d"), ROOT_INO, name("e"), 0)
        .await
        .unwrap();
    assert_eq!(
        s.store.keys(),
        ["e/", "e/a", "e/secret", "e/sub/b", "other"]
    );
    assert_eq!(&s.store.object("e/sub/b").unwrap().body[..], b"d/sub/b");
    assert_eq!(meta_of(&s, "e/secret").mode, Some(libc::S_IFREG | 0o600));
    let e = s.fs.lookup(ROOT_INO, name("e")).await.unwrap();
    let sub = s.fs.lookup(e.ino, name("sub")).await.unwrap();
    assert_eq!(sub.kind, Kind::Dir);
}

#[tokio::test]
async fn rename_refuses_what_posix_refuses() {
    let s = setup();
    for k in ["f", "g", "full/x", "empty/"] {
        s.store.insert(k, "");
    }
    let d = s.fs.lookup(ROOT_INO, name("full")).await.unwrap();
    let cases = [
        ("f", "full", 0, Errno::EISDIR),
        ("full", "f", 0, Errno::ENOTDIR),
        ("empty", "full", 0, Errno::ENOTEMPTY),
        ("f", "g", libc::RENAME_NOREPLACE, Errno::EEXIST),
        ("missing", "h", 0, Errno::ENOENT),
    ];
    for (from, to, flags, errno) in cases {
        assert_eq!(
            s.fs.rename(ROOT_INO, name(from), ROOT_INO, name(to), flags)
                .await
                .unwrap_err(),
            errno,
            "{from} -> {to}"
        );
    }
    assert_eq!(
        s.fs.rename(ROOT_INO, name("full"), d.ino, name("inside"), 0)
            .await
            .unwrap_err(),
        Errno::EINVAL
    );
    // An empty directory may be replaced.
    s.fs.rename(ROOT_INO, name("full"), ROOT_INO, name("empty"), 0)
        .await
        .unwrap();
    assert_eq!(s.store.keys(), ["empty/", "empty/x", "f", "g"]);
}

#[tokio::test]
async fn an_open_file_with_unsaved_changes_can_be_renamed() {
    let s = setup();
    let mut body = pattern(20 * MIB);
    s.store.insert("draft.bin", body.clone());
    let f = s.fs.lookup(ROOT_INO, name("draft.bin")).await.unwrap();
    let fh = s.fs.open(f.ino, libc::O_RDWR, ME).await.unwrap();
    s.fs.write(fh, 1, b"xy".to_vec()).await.unwrap();
    s.fs.rename(ROOT_INO, name("draft.bin"), ROOT_INO, name("final.bin"), 0)
        .await
        .unwrap();
    s.fs.flush(fh, ME.process).await.unwrap();
    s.fs.release(fh).await;
    body[1..3].copy_from_slice(b"xy");
    assert_eq!(s.store.keys(), ["final.bin"]);
    assert_eq!(s.store.object("final.bin").unwrap().body, body);
}

#[tokio::test]
async fn an_unlinked_open_file_keeps_reading() {
    let s = setup();
    s.store.insert("f", "still here");
    let f = s.fs.lookup(ROOT_INO, name("f")).await.unwrap();
    let fh = s.fs.open(f.ino, libc::O_RDONLY, ME).await.unwrap();
    s.fs.unlink(ROOT_INO, name("f")).await.unwrap();
    assert!(s.store.keys().is_empty());
    assert_eq!(s.fs.getattr(f.ino).await.unwrap().nlink, 0);
    assert_eq!(&s.fs.read(fh, 0, 100).await.unwrap()[..], b"still here");
    s.fs.release(fh).await;
    assert!(staged_files(&s).is_empty());
}

#[tokio::test]
async fn the_bucket_root_can_be_chmodded() {
    let s = setup();
    let changes = SetAttr {
        mode: Some(0o777),
        ..SetAttr::default()
    };
    assert_eq!(s.fs.setattr(ROOT_INO, changes).await.unwrap().perm, 0o777);
    assert!(s.store.keys().is_empty(), "the root has no marker to write");
}

#[tokio::test]
async fn fifos_sockets_and_devices_are_stored_as_s3fs_stores_them() {
    let s = setup();
    let fifo =
        s.fs.mknod(ROOT_INO, name("pipe"), libc::S_IFIFO | 0o640, 0, ME);
    assert_eq!(fifo.await.unwrap().kind, Kind::Fifo);
    let sock =
        s.fs.mknod(ROOT_INO, name("sock"), libc::S_IFSOCK | 0o600, 0, ME);
    assert_eq!(sock.await.unwrap().kind, Kind::Socket);
    let dev =
        s.fs.mknod(ROOT_INO, name("tty"), libc::S_IFCHR | 0o600, 0x0501, ME);
    assert_eq!(dev.await.unwrap().rdev, 0x0501);
    let blk =
        s.fs.mknod(ROOT_INO, name("sda"), libc::S_IFBLK | 0o660, 0x0800, ME);
    assert_eq!(blk.await.unwrap().kind, Kind::BlockDevice);
    assert_eq!(meta_of(&s, "pipe").mode, Some(libc::S_IFIFO | 0o640));
    let tty = s.store.object("tty").unwrap();
    assert_eq!(tty.metadata["rdev"], "1281");
    assert_eq!(tty.metadata["mode"], (libc::S_IFCHR | 0o600).to_string());
    let again = remount(&s);
    let attr = again.lookup(ROOT_INO, name("sock")).await.unwrap();
    assert_eq!((attr.kind, attr.perm), (Kind::Socket, 0o600));
    let attr = again.lookup(ROOT_INO, name("tty")).await.unwrap();
    assert_eq!((attr.kind, attr.rdev), (Kind::CharDevice, 0x0501));
}

#[tokio::test]
async fn a_file_open_in_a_renamed_directory_keeps_reading() {
    let s = setup();
    s.store.insert("d/f", "contents");
    let d = s.fs.lookup(ROOT_INO, name("d")).await.unwrap();
    let f = s.fs.lookup(d.ino, name("f")).await.unwrap();
    let fh = s.fs.open(f.ino, libc::O_RDONLY, ME).await.unwrap();
    assert_eq!(&s.fs.read(fh, 0, 4).await.unwrap()[..], b"cont");
    s.fs.rename(ROOT_INO, name("d"), ROOT_INO, name("e"), 0)
        .await
        .unwrap();
    assert_eq!(&s.fs.read(fh, 4, 100).await.unwrap()[..], b"ents");
    s.fs.release(fh).await;
}

/// Read a whole directory as the kernel does, `batch` entries at a time.
pub(super) async fn list_dir(fs: &Fs, ino: u64, plus: bool) -> Vec<Listed> {
    let fh = fs.opendir(ino).unwrap();
    let mut all: Vec<Listed> = Vec::new();
    loop {
        let offset = all.last().map_or(0, |e| e.next_offset);
        let page = fs.readdir(ino, fh, offset, 100, plus).await.unwrap();
        if page.is_empty() {
            break;
        }
        all.extend(page);
    }
    fs.releasedir(fh);
    all
}

/// A directory of 2,500 objects another tool wrote, one with s3fs metadata.
fn fill_big_directory(s: &Setup) {
    for i in 0..2500 {
        s.store.insert(&format!("big/f{i:04}"), "x");
    }
    let mut meta = crate::store::UserMetadata::new();
    meta.insert("mode".into(), (libc::S_IFREG | 0o600).to_string());
    s.store.insert_with("big/secret", "s", meta);
}

fn perm_of(listed: &[Listed], name: &str) -> u16 {
    listed
        .iter()
        .find(|e| e.name == name)
        .and_then(|e| e.attr.as_ref())
        .map_or(0, |a| a.perm)
}

#[tokio::test]
async fn ls_l_of_a_large_directory_costs_a_list_per_1000_entries() {
    let s = setup();
    fill_big_directory(&s);
    let big = s.fs.lookup(ROOT_INO, name("big")).await.unwrap();
    let (heads, lists) = (s.store.calls(Op::Head), s.store.calls(Op::List));
    let listed = list_dir(&s.fs, big.ino, true).await;
    assert_eq!(listed.len(), 2503);
    assert!(listed[2..].iter().all(|e| e.attr.is_some()));
    // A lookup of a listed name needs no request either.
    assert_eq!(s.fs.lookup(big.ino, name("f1234")).await.unwrap().size, 1);
    assert_eq!(s.store.calls(Op::Head), heads, "no HEAD");
    assert_eq!(s.store.calls(Op::List), lists + 3);
    // What the listing cannot say: metadata another tool wrote shows once read.
    assert_eq!(perm_of(&listed, "secret"), 0o644);
}

#[tokio::test]
async fn with_head_listed_metadata_is_read_once_and_then_remembered() {
    let mut s = setup_with_disk_cache();
    let mut config = s.fs.config().clone();
    config.head_listed = true;
    s.fs = Fs::new(s.store.clone(), config.clone(), None).unwrap();
    fill_big_directory(&s);
    let big = s.fs.lookup(ROOT_INO, name("big")).await.unwrap();
    let (heads, lists) = (s.store.calls(Op::Head), s.store.calls(Op::List));
    let listed = list_dir(&s.fs, big.ino, true).await;
    assert_eq!(perm_of(&listed, "secret"), 0o600);
    assert_eq!(s.store.calls(Op::List), lists + 3);
    assert_eq!(s.store.calls(Op::Head), heads + 2501, "each object once");
    s.fs.shutdown().await;

    // A remount with the same cache: listings only.
    let again = Fs::new(s.store.clone(), config, None).unwrap();
    let big = again.lookup(ROOT_INO, name("big")).await.unwrap();
    let heads = s.store.calls(Op::Head);
    let listed = list_dir(&again, big.ino, true).await;
    assert_eq!(perm_of(&listed, "secret"), 0o600);
    assert_eq!(s.store.calls(Op::Head), heads, "no HEAD");
}

#[tokio::test]
async fn missing_names_are_remembered_until_created_here() {
    let s = setup();
    s.store.insert("d/a", "x");
    let d = s.fs.lookup(ROOT_INO, name("d")).await.unwrap();
    list_dir(&s.fs, d.ino, false).await;
    let calls = s.store.calls(Op::Head) + s.store.calls(Op::List);
    for _ in 0..3 {
        assert_eq!(
            s.fs.lookup(d.ino, name("nope")).await.unwrap_err(),
            Errno::ENOENT
        );
    }
    assert_eq!(s.store.calls(Op::Head) + s.store.calls(Op::List), calls);
    write_file(&s.fs, d.ino, "nope", b"now").await.unwrap();
    assert_eq!(s.fs.lookup(d.ino, name("nope")).await.unwrap().size, 3);
    s.fs.unlink(d.ino, name("a")).await.unwrap();
    assert_eq!(
        s.fs.lookup(d.ino, name("a")).await.unwrap_err(),
        Errno::ENOENT
    );
}

#[tokio::test]
async fn copying_files_into_a_new_directory_costs_one_put_each() {
    let s = setup();
    assert_eq!(
        s.fs.lookup(ROOT_INO, name("new")).await.unwrap_err(),
        Errno::ENOENT
    );
    let d = s.fs.mkdir(ROOT_INO, name("new"), 0o755, ME).await.unwrap();
    let before = |op| s.store.calls(op);
    let (heads, lists, puts) = (before(Op::Head), before(Op::List), before(Op::Put));
    let mut inos = Vec::new();
    for i in 0..100 {
        let file = format!("f{i}");
        assert_eq!(
            s.fs.lookup(d.ino, name(&file)).await.unwrap_err(),
            Errno::ENOENT
        );
        inos.push(write_file(&s.fs, d.ino, &file, b"data").await.unwrap());
    }
    assert_eq!(s.store.calls(Op::Put), puts + 100);
    assert_eq!(s.store.calls(Op::Head), heads, "no HEAD");
    assert_eq!(s.store.calls(Op::List), lists, "a new directory is empty");
    // The directory was known empty before the files were made: it does not hide
    // them.
    s.fs.forget(inos[7], 1);
    assert_eq!(s.fs.lookup(d.ino, name("f7")).await.unwrap().size, 4);
}

#[tokio::test]
async fn copying_files_into_a_small_directory_lists_it_once() {
    let s = setup();
    s.store.insert("old/a", "1");
    let d = s.fs.lookup(ROOT_INO, name("old")).await.unwrap();
    let (heads, lists) = (s.store.calls(Op::Head), s.store.calls(Op::List));
    for i in 0..100 {
        let file = format!("f{i}");
        assert_eq!(
            s.fs.lookup(d.ino, name(&file)).await.unwrap_err(),
            Errno::ENOENT
        );
        write_file(&s.fs, d.ino, &file, b"data").await.unwrap();
    }
    // The first miss asks for its name alone; the second lists the directory.
    // The first create asks for the directory's marker (for a default ACL).
    assert_eq!(s.store.calls(Op::Head), heads + 3);
    assert_eq!(s.store.calls(Op::List), lists + 2);
}

/// An object at `key` as s3fs or s3mount wrote it, with its mtime in its headers.
fn insert_with_mtime(s: &Setup, key: &str, mtime: u64) {
    let metadata = [("mtime".to_string(), mtime.to_string())].into();
    s.store.insert_with(key, "data", metadata);
}

fn secs(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

#[tokio::test(start_paused = true)]
async fn names_looked_up_one_after_another_get_their_headers_in_few_round_trips() {
    let s = setup();
    for i in 0..100 {
        insert_with_mtime(&s, &format!("tree/f{i:03}"), 1_600_000_000 + i);
    }
    let d = s.fs.lookup(ROOT_INO, name("tree")).await.unwrap();
    let (heads, lists) = (s.store.calls(Op::Head), s.store.calls(Op::List));
    // 20 ms a request, on the paused clock: elapsed time counts round trips.
    s.store.set_latency(Duration::from_millis(20));
    let started = tokio::time::Instant::now();
    // What rsync does on the receiving side: lstat every name, in order.
    for i in 0..100 {
        let attr = s.fs.lookup(d.ino, name(&format!("f{i:03}"))).await.unwrap();
        assert_eq!(secs(attr.mtime), 1_600_000_000 + i, "f{i:03}");
    }
    // The first alone (a HEAD and a LIST at once), then a listing, then three
    // times the headers of a name and the 32 after it at once: 5 round trips,
    // where one a name would be 100.
    let round_trips = started.elapsed().as_millis() / 20;
    assert_eq!(round_trips, 5, "round trips");
    assert_eq!(s.store.calls(Op::List) - lists, 2, "LISTs");
    assert_eq!(s.store.calls(Op::Head) - heads, 100, "HEADs");
}

#[tokio::test]
async fn a_name_found_in_a_listing_made_for_lookups_has_the_mtime_of_its_headers() {
    let s = setup();
    insert_with_mtime(&s, "part/a", 1_600_000_001);
    insert_with_mtime(&s, "part/c", 1_600_000_003);
    let d = s.fs.lookup(ROOT_INO, name("part")).await.unwrap();
    // rsync into a directory copied in part: a name there, one missing (which
    // lists the directory), and one there again, out of order.
    let a = s.fs.lookup(d.ino, name("a")).await.unwrap();
    assert_eq!(secs(a.mtime), 1_600_000_001);
    assert_eq!(
        s.fs.lookup(d.ino, name("zz")).await.unwrap_err(),
        Errno::ENOENT
    );
    let c = s.fs.lookup(d.ino, name("c")).await.unwrap();
    assert_eq!(secs(c.mtime), 1_600_000_003, "not the time of the upload");
}

#[tokio::test]
async fn a_lookup_in_a_large_directory_asks_for_the_name_alone() {
    let s = setup();
    fill_big_directory(&s);
    let big = s.fs.lookup(ROOT_INO, name("big")).await.unwrap();
    let mut lists = s.store.calls(Op::List);
    for (file, listings) in [("nope", 1), ("other", 2), ("third", 1)] {
        assert_eq!(
            s.fs.lookup(big.ino, name(file)).await.unwrap_err(),
            Errno::ENOENT
        );
        // The second miss lists the directory and finds a page is not all; the
        // next ones do not try.
        assert_eq!(s.store.calls(Op::List), lists + listings, "{file}");
        lists = s.store.calls(Op::List);
    }
}

#[tokio::test]
async fn subdirectories_are_listed_ahead_and_served_from_that_listing() {
    let s = setup();
    for d in 0..20 {
        for f in 0..3 {
            s.store.insert(&format!("tree/d{d:02}/f{f}"), "x");
        }
    }
    let tree = s.fs.lookup(ROOT_INO, name("tree")).await.unwrap();
    let subdirs: Vec<DirEntry> = (0..20)
        .map(|d| DirEntry {
            name: format!("d{d:02}"),
            kind: Kind::Dir,
            meta: None,
        })
        .collect();
    let mut inos = Vec::new();
    for d in &subdirs {
        inos.push(s.fs.lookup(tree.ino, name(&d.name)).await.unwrap().ino);
    }
    // What a listing of `tree` starts in the background, awaited here.
    let ahead = s.fs.list_ahead("tree", &subdirs).unwrap();
    ahead.await.unwrap();
    assert!(s.fs.list_ahead("tree", &subdirs).is_none(), "all fresh");
    let lists = s.store.calls(Op::List);
    for ino in &inos {
        let names: Vec<String> = list_dir(&s.fs, *ino, true)
            .await
            .into_iter()
            .map(|e| e.name)
            .collect();
        assert_eq!(names, [".", "..", "f0", "f1", "f2"]);
    }
    assert_eq!(
        s.store.calls(Op::List),
        lists,
        "every listing was made ahead"
    );
    // Something created here is not hidden by a listing made before.
    let d00 = inos[0];
    write_file(&s.fs, d00, "new", b"1").await.unwrap();
    let names = list_dir(&s.fs, d00, false).await;
    assert_eq!(names.len(), 6);
}

#[tokio::test]
async fn a_listing_shows_the_metadata_this_mount_wrote_even_after_a_remount() {
    let s = setup_with_disk_cache();
    let (_, fh) =
        s.fs.create(
            ROOT_INO,
            name("private"),
            libc::S_IFREG | 0o600,
            libc::O_WRONLY,
            ME,
        )
        .await
        .unwrap();
    s.fs.write(fh, 0, b"secret".to_vec()).await.unwrap();
    s.fs.flush(fh, ME.process).await.unwrap();
    s.fs.release(fh).await;
    s.fs.symlink(ROOT_INO, name("link"), OsStr::new("private"), ME)
        .await
        .unwrap();
    s.fs.shutdown().await;

    let again = remount_with_disk_cache(&s);
    let heads = s.store.calls(Op::Head);
    let listed = list_dir(&again, ROOT_INO, true).await;
    let attr = |n: &str| {
        listed
            .iter()
            .find(|e| e.name == n)
            .and_then(|e| e.attr.clone())
            .unwrap()
    };
    assert_eq!((attr("private").perm, attr("private").uid), (0o600, 1000));
    assert_eq!(attr("link").kind, Kind::Symlink);
    assert_eq!(s.store.calls(Op::Head), heads, "no HEAD");
}

/// Write `data` to a new file in 1 MiB writes, as cp does; its inode and handle.
pub(super) async fn write_in_pieces(fs: &Fs, file: &str, data: &[u8]) -> (u64, u64) {
    let (attr, fh) = fs
        .create(ROOT_INO, name(file), FILE_MODE, libc::O_WRONLY, ME)
        .await
        .unwrap();
    for (i, chunk) in data.chunks(MIB).enumerate() {
        fs.write(fh, (i * MIB) as u64, chunk.to_vec())
            .await
            .unwrap();
    }
    (attr.ino, fh)
}

#[tokio::test]
async fn a_large_new_file_goes_up_while_it_is_written() {
    let s = setup();
    let data = pattern(40 * MIB + 3);
    let (_, fh) = write_in_pieces(&s.fs, "big.bin", &data).await;
    // The upload began while writing; nothing is in the bucket before close.
    assert_eq!(s.store.calls(Op::CreateMultipart), 1);
    assert!(s.store.object("big.bin").is_none());
    s.fs.flush(fh, ME.process).await.unwrap();
    s.fs.release(fh).await;
    let o = s.store.object("big.bin").unwrap();
    assert_eq!(o.body, data);
    assert_eq!(s.store.calls(Op::UploadPart), 6, "each part sent once");
    // Mode and owner were known at the start; the time is the object's own.
    let meta = meta::FileMeta::from_metadata(&o.metadata);
    assert_eq!(meta.mode, Some(FILE_MODE));
    assert_eq!(meta.mtime, None);
}

#[tokio::test]
async fn a_part_sent_early_and_written_again_is_sent_again() {
    let s = setup();
    let mut data = pattern(40 * MIB);
    let (_, fh) = write_in_pieces(&s.fs, "big.bin", &data).await;
    s.fs.write(fh, 5, b"again".to_vec()).await.unwrap();
    data[5..10].copy_from_slice(b"again");
    let when = SystemTime::UNIX_EPOCH + Duration::from_secs(1_500_000_000);
    let changes = SetAttr {
        mtime: Some(when),
        ..SetAttr::default()
    };
    let attr = s.fs.lookup(ROOT_INO, name("big.bin")).await.unwrap();
    s.fs.setattr(attr.ino, changes).await.unwrap();
    s.fs.flush(fh, ME.process).await.unwrap();
    s.fs.release(fh).await;
    let o = s.store.object("big.bin").unwrap();
    assert_eq!(o.body, data);
    // A time set before close is written after the upload (a copy onto itself).
    assert_eq!(meta::FileMeta::from_metadata(&o.metadata).mtime, Some(when));
    assert_eq!(s.store.open_uploads(), 0);
}

#[tokio::test]
async fn a_large_file_unlinked_before_close_leaves_no_upload_behind() {
    let s = setup();
    let (_, fh) = write_in_pieces(&s.fs, "tmp.bin", &pattern(30 * MIB)).await;
    s.fs.unlink(ROOT_INO, name("tmp.bin")).await.unwrap();
    s.fs.release(fh).await;
    assert!(s.store.keys().is_empty());
    assert_eq!(
        s.store.open_uploads(),
        0,
        "the multipart upload was aborted"
    );
    assert!(staged_files(&s).is_empty());
}

#[tokio::test]
async fn a_new_empty_file_goes_up_at_release_not_at_each_close() {
    let s = setup();
    let (_, fh) =
        s.fs.create(ROOT_INO, name("empty"), FILE_MODE, libc::O_WRONLY, ME)
            .await
            .unwrap();
    // A shell's `>` closes a copy of the descriptor before anything is written.
    s.fs.flush(fh, ME.process).await.unwrap();
    assert_eq!(s.store.calls(Op::Put), 0);
    s.fs.write(fh, 0, b"x".to_vec()).await.unwrap();
    s.fs.flush(fh, ME.process).await.unwrap();
    assert_eq!(s.store.calls(Op::Put), 1);
    s.fs.release(fh).await;
    let (_, fh) =
        s.fs.create(ROOT_INO, name("touched"), FILE_MODE, libc::O_WRONLY, ME)
            .await
            .unwrap();
    s.fs.flush(fh, ME.process).await.unwrap();
    s.fs.release(fh).await;
    assert_eq!(s.store.object("touched").unwrap().body.len(), 0);
}

#[tokio::test]
async fn the_page_cache_is_kept_while_the_object_is_unchanged() {
    let s = setup_with_ttl(Duration::ZERO);
    s.store.insert("f", "one");
    let f = s.fs.lookup(ROOT_INO, name("f")).await.unwrap();
    let mut opens = Vec::new();
    for _ in 0..2 {
        let fh = s.fs.open(f.ino, libc::O_RDONLY, ME).await.unwrap();
        opens.push(s.fs.keep_cache(f.ino));
        s.fs.release(fh).await;
    }
    s.store.insert("f", "two");
    let fh = s.fs.open(f.ino, libc::O_RDONLY, ME).await.unwrap();
    opens.push(s.fs.keep_cache(f.ino));
    s.fs.release(fh).await;
    assert_eq!(opens, [false, true, false]);
}

#[tokio::test]
async fn an_unlink_during_the_last_close_upload_deletes_the_object() {
    // vim's probe: create a file, close it, unlink it at once.
    let s = Arc::new(setup());
    let (_, fh) =
        s.fs.create(ROOT_INO, name("4913"), FILE_MODE, libc::O_WRONLY, ME)
            .await
            .unwrap();
    s.fs.flush(fh, ME.process).await.unwrap();
    let gate = s.store.hold(Op::Put);
    let closing = {
        let s = s.clone();
        tokio::spawn(async move { s.fs.release(fh).await })
    };
    // The release's upload is under way (held)...
    while s.store.calls(Op::Put) == 0 {
        tokio::task::yield_now().await;
    }
    let unlinking = {
        let s = s.clone();
        tokio::spawn(async move { s.fs.unlink(ROOT_INO, name("4913")).await })
    };
    // ...when the unlink comes; then the upload ends.
    gate.open();
    closing.await.unwrap();
    unlinking.await.unwrap().unwrap();
    assert!(s.store.keys().is_empty(), "{:?}", s.store.keys());
}

#[tokio::test]
async fn file_not_uploaded_yet_renamed_over_an_object_and_removed_leaves_nothing() {
    let s = setup();
    s.store.insert("final", "old");
    let (_, fh) =
        s.fs.create(ROOT_INO, name("draft"), FILE_MODE, libc::O_WRONLY, ME)
            .await
            .unwrap();
    s.fs.rename(ROOT_INO, name("draft"), ROOT_INO, name("final"), 0)
        .await
        .unwrap();
    s.fs.unlink(ROOT_INO, name("final")).await.unwrap();
    s.fs.release(fh).await;
    assert_eq!(s.store.keys(), Vec::<String>::new());
}

/// Records the changes the filesystem reports.
#[derive(Default)]
struct Recorded(std::sync::Mutex<Vec<(String, changes::Change)>>);

impl changes::Changes for Recorded {
    fn changed(&self, path: &str, change: changes::Change) {
        self.0.lock().unwrap().push((path.to_string(), change));
    }

    fn waiting(&self, _path: &str) -> bool {
        false
    }
}

#[tokio::test]
async fn changes_are_reported_once_s3_has_them_saying_whether_the_key_is_new() {
    use changes::Change::{Deleted, Written};
    let s = setup_with("site/", false);
    s.store.insert("site/old.css", "a");
    s.store.insert("site/dir/x", "b");
    let recorded = Arc::new(Recorded::default());
    let fs = Fs::new(
        s.store.clone(),
        s.fs.config().clone(),
        Some(recorded.clone()),
    )
    .unwrap();
    write_file(&fs, ROOT_INO, "new.css", b"new").await.unwrap();
    write_file(&fs, ROOT_INO, "old.css", b"new").await.unwrap();
    fs.rename(ROOT_INO, name("new.css"), ROOT_INO, name("moved.css"), 0)
        .await
        .unwrap();
    fs.unlink(ROOT_INO, name("old.css")).await.unwrap();
    let moved = fs.lookup(ROOT_INO, name("moved.css")).await.unwrap();
    let chmod = SetAttr {
        mode: Some(0o600),
        ..Default::default()
    };
    fs.setattr(moved.ino, chmod).await.unwrap();
    fs.mkdir(ROOT_INO, name("empty"), DIR_MODE, ME)
        .await
        .unwrap();
    fs.rename(ROOT_INO, name("dir"), ROOT_INO, name("dir2"), 0)
        .await
        .unwrap();
    // A file not uploaded yet renamed over an object: the object goes at once.
    let (_, fh) = fs
        .create(ROOT_INO, name("draft"), FILE_MODE, libc::O_WRONLY, ME)
        .await
        .unwrap();
    fs.rename(ROOT_INO, name("draft"), ROOT_INO, name("moved.css"), 0)
        .await
        .unwrap();
    fs.write(fh, 0, b"v2".to_vec()).await.unwrap();
    fs.flush(fh, ME.process).await.unwrap();
    fs.release(fh).await;
    let got = recorded.0.lock().unwrap().clone();
    let expected: Vec<(String, changes::Change)> = [
        ("new.css", Written { new: true }),
        ("old.css", Written { new: false }),
        ("moved.css", Written { new: true }),
        ("new.css", Deleted),
        ("old.css", Deleted),
        ("moved.css", Written { new: false }),
        ("dir2/x", Written { new: true }),
        ("dir/x", Deleted),
        ("moved.css", Deleted),
        ("moved.css", Written { new: true }),
    ]
    .into_iter()
    .map(|(p, c)| (p.to_string(), c))
    .collect();
    assert_eq!(got, expected);
}

/// Open `ino` read-write, write `data` at `offset`, close (flush and release).
async fn edit(fs: &Fs, ino: u64, offset: u64, data: &[u8]) {
    let fh = fs.open(ino, libc::O_RDWR, ME).await.unwrap();
    fs.write(fh, offset, data.to_vec()).await.unwrap();
    fs.flush(fh, ME.process).await.unwrap();
    fs.release(fh).await;
}

/// The 300 bytes of `a` with "second" saved at 0 and then "third" at 100: in
/// the bucket, and read through `ino`.
async fn assert_both_edits_kept(s: &Setup, ino: u64) {
    let mut want = vec![b'a'; 300];
    want[..6].copy_from_slice(b"second");
    want[100..105].copy_from_slice(b"third");
    assert_eq!(&s.store.object("f").unwrap().body[..], &want[..]);
    assert_eq!(read_all(&s.fs, ino).await, want);
}

#[tokio::test]
async fn an_edit_saved_here_is_not_undone_by_an_older_listing() {
    // The pattern of an editor saving in place, with the kernel dropping its
    // inodes in between: the listing made before the second save must not bring
    // back the version it saw, or the third save is staged over it.
    let s = setup();
    let missing = s.fs.lookup(ROOT_INO, name("f")).await.unwrap_err();
    assert_eq!(missing, Errno::ENOENT);
    let ino = write_file(&s.fs, ROOT_INO, "f", &vec![b'a'; 300])
        .await
        .unwrap();
    // The kernel forgets the inode; the next lookup lists the directory.
    s.fs.forget(ino, 1);
    let ino = s.fs.lookup(ROOT_INO, name("f")).await.unwrap().ino;
    edit(&s.fs, ino, 0, b"second").await;
    s.fs.forget(ino, 1);
    let ino = s.fs.lookup(ROOT_INO, name("f")).await.unwrap().ino;
    edit(&s.fs, ino, 100, b"third").await;
    assert_both_edits_kept(&s, ino).await;
}

#[tokio::test]
async fn a_directory_handle_listed_before_a_save_does_not_undo_it() {
    // `ls` started before the save and read on after it (or rewound): its
    // snapshot holds the version before the save.
    let s = setup();
    let ino = write_file(&s.fs, ROOT_INO, "f", &vec![b'a'; 300])
        .await
        .unwrap();
    let dh = s.fs.opendir(ROOT_INO).unwrap();
    s.fs.readdir(ROOT_INO, dh, 0, 100, true).await.unwrap();
    edit(&s.fs, ino, 0, b"second").await;
    // What the handle shows again must not bring back the version before.
    s.fs.readdir(ROOT_INO, dh, 0, 100, true).await.unwrap();
    s.fs.releasedir(dh);
    edit(&s.fs, ino, 100, b"third").await;
    assert_both_edits_kept(&s, ino).await;
}

#[tokio::test]
async fn truncating_an_open_file_leaves_nothing_behind_at_its_close() {
    // ftruncate() and truncate() of an open file: the write state is torn down at
    // the close as usual, so the staging file goes.
    let s = setup();
    let ino = write_file(&s.fs, ROOT_INO, "f", b"hello world")
        .await
        .unwrap();
    let fh = s.fs.open(ino, libc::O_RDWR, ME).await.unwrap();
    let cut = SetAttr {
        size: Some(5),
        ..SetAttr::default()
    };
    s.fs.setattr(ino, cut).await.unwrap();
    s.fs.flush(fh, ME.process).await.unwrap();
    s.fs.release(fh).await;
    assert_eq!(&s.store.object("f").unwrap().body[..], b"hello");
    assert!(staged_files(&s).is_empty(), "staging file left behind");
}

#[tokio::test]
async fn a_new_empty_file_whose_fsync_failed_is_uploaded_at_its_close() {
    // An empty new file normally goes up at the last release; after a failed
    // fsync, which the release does not retry, the close must upload it.
    let s = setup();
    let (_, fh) =
        s.fs.create(ROOT_INO, name("new"), FILE_MODE, libc::O_RDWR, ME)
            .await
            .unwrap();
    s.store
        .fail_next(Op::Put, StoreError::Unreachable("server down".into()));
    assert_eq!(s.fs.fsync(fh).await.unwrap_err(), Errno::EIO);
    s.fs.flush(fh, ME.process).await.unwrap();
    s.fs.release(fh).await;
    assert!(s.store.object("new").is_some());
    assert!(staged_files(&s).is_empty(), "staging file left behind");
}

/// rm -rf opens a directory, reads one batch to see whether it is empty and
/// closes it, then opens it again to read it all: the first look must not leave
/// a record of the directory as holding only that batch (before, the second
/// reader got the batch and then the end, and rmdir failed with ENOTEMPTY).
#[tokio::test]
async fn a_reader_that_stops_after_one_batch_leaves_the_whole_directory_to_the_next() {
    let s = setup();
    for i in 0..300 {
        s.store.insert(&format!("d/{i:03}"), "");
    }
    let d = s.fs.lookup(ROOT_INO, name("d")).await.unwrap();
    let fh = s.fs.opendir(d.ino).unwrap();
    let first = s.fs.readdir(d.ino, fh, 0, 32, true).await.unwrap();
    assert_eq!(first.len(), 32);
    s.fs.releasedir(fh);
    for plus in [true, false] {
        let all = list_dir(&s.fs, d.ino, plus).await;
        assert_eq!(all.len(), 302, "with . and .., plus: {plus}");
    }
}
