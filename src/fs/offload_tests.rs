//! Unit tests of offloading: the parts S3 confirmed of a large new file leave
//! its staging file while it is written, and nothing written is ever lost or
//! replaced by zeros for it, through a crash or a lost upload.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::inode::ROOT_INO;
use super::tests::{FILE_MODE, ME, name, pattern, read_all, write_in_pieces};
use super::write_back_tests::{Mount, mount_with};
use super::*;
use crate::cache::disk::DiskLimits;
use crate::store::memory::Op;
use crate::store::{ObjectStore, StoreError};

const MIB: usize = 1 << 20;
const OFFLOAD_AFTER: u64 = 16 << 20;
/// The most a writer may be ahead of S3: the four parts in flight and two
/// more, of 8 MiB. A file of 64 MiB written in order has offloaded some of
/// its parts by the time its last write returns, however slow the machine.
const BACKLOG: u64 = 48 << 20;

/// Files past 16 MiB offload.
fn mount() -> Mount {
    mount_with(|c| c.offload_after = OFFLOAD_AFTER)
}

/// Bytes of disk a file takes (its holes take none).
fn allocated(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().blocks() * 512
}

#[tokio::test]
async fn a_file_written_past_the_offload_size_leaves_local_disk_and_is_stored_whole() {
    let m = mount();
    let data = pattern(80 * MIB + 5);
    let (ino, fh) = write_in_pieces(&m.fs, "backup.bin", &data).await;
    let staging = m.staging_file();
    assert!(
        allocated(&staging) <= BACKLOG,
        "{} bytes on disk",
        allocated(&staging)
    );
    // What left can be neither read nor changed before close, and the file
    // is not spoilt by the attempt.
    let eio = Err(Errno::EIO);
    assert_eq!(m.fs.read(fh, (20 * MIB) as u64, 10).await.map(|_| ()), eio);
    assert_eq!(
        m.fs.write(fh, (20 * MIB) as u64, b"x".to_vec())
            .await
            .map(|_| ()),
        eio
    );
    let cut = SetAttr {
        size: Some((20 * MIB) as u64),
        ..Default::default()
    };
    assert_eq!(m.fs.setattr(ino, cut).await.map(|_| ()), eio);
    assert_eq!(
        m.fs.rename(ROOT_INO, name("backup.bin"), ROOT_INO, name("b2"), 0)
            .await,
        Err(Errno::EBUSY)
    );
    // The first part stays: a header patched at the end goes up as written.
    m.fs.write(fh, 3, b"header".to_vec()).await.unwrap();
    let mut expected = data.clone();
    expected[3..9].copy_from_slice(b"header");
    m.fs.flush(fh, ME.process).await.unwrap();
    m.fs.release(fh).await;
    assert!(m.store.object("backup.bin").unwrap().body[..] == expected[..]);
    // Read back after close: from S3.
    assert!(read_all(&m.fs, ino).await == expected);
    assert_eq!(m.store.open_uploads(), 0);
}

#[tokio::test]
async fn a_short_disk_offloads_any_streamed_file() {
    // A block cache that must leave more free than any disk has.
    let m = mount_with(|c| {
        c.cache.disk = Some((
            c.cache_dir.join("blocks"),
            DiskLimits {
                max_bytes: 64 << 20,
                min_free: u64::MAX / 2,
            },
        ));
    });
    let data = pattern(64 * MIB);
    let (_, fh) = write_in_pieces(&m.fs, "log", &data).await;
    assert!(allocated(&m.staging_file()) <= BACKLOG);
    m.fs.flush(fh, ME.process).await.unwrap();
    m.fs.release(fh).await;
    assert!(m.store.object("log").unwrap().body[..] == data[..]);
}

#[tokio::test]
async fn a_streamed_file_below_the_offload_size_keeps_its_bytes() {
    let m = mount_with(|c| c.offload_after = 64 << 20);
    let data = pattern(40 * MIB);
    let (_, fh) = write_in_pieces(&m.fs, "f", &data).await;
    assert_eq!(m.store.calls(Op::CreateMultipart), 1, "it is streamed");
    assert!(
        allocated(&m.staging_file()) >= 40 << 20,
        "nothing left the disk"
    );
    assert_eq!(
        m.fs.read(fh, 9 << 20, 3).await.unwrap()[..],
        data[9 * MIB..][..3]
    );
}

#[tokio::test]
async fn a_crash_while_offloading_puts_the_bytes_aside_and_keeps_the_upload() {
    let mut m = mount();
    let data = pattern(64 * MIB);
    write_in_pieces(&m.fs, "backup.bin", &data).await;
    assert_eq!(m.crash_and_remount().await, 0);
    assert!(
        m.store.keys().is_empty(),
        "no object for an unfinished file"
    );
    assert_eq!(
        m.store.open_uploads(),
        1,
        "the upload holding the bytes is kept"
    );
    let id = m.store.upload_ids().pop().unwrap();
    let (aside, record) = m.recovered();
    let record: serde_json::Value = serde_json::from_str(&record).unwrap();
    assert_eq!(record["upload"]["id"], id.as_str());
    // Every offloaded range is in parts S3 lists, and every other byte is in
    // the file put aside.
    let listed = m.store.list_parts("backup.bin", &id).await.unwrap();
    let kept = std::fs::read(&aside).unwrap();
    assert_eq!(kept.len(), data.len());
    let offloaded: Vec<(usize, usize)> =
        serde_json::from_value(record["offloaded"].clone()).unwrap();
    assert!(!offloaded.is_empty());
    let mut at = 0;
    for (start, end) in offloaded {
        assert!(
            kept[at..start] == data[at..start],
            "bytes {at}..{start} kept"
        );
        for part in start / (8 * MIB)..end / (8 * MIB) {
            let number = part as i32 + 1;
            assert!(
                listed.iter().any(|p| p.number == number),
                "part {number} in S3"
            );
        }
        at = end;
    }
    assert!(kept[at..] == data[at..]);
    assert!(allocated(&aside) < (64 << 20));
}

#[tokio::test]
async fn a_failed_write_keeps_the_upload_that_holds_the_offloaded_bytes() {
    let m = mount();
    let data = pattern(64 * MIB);
    let (_, fh) = write_in_pieces(&m.fs, "backup.bin", &data).await;
    // A write that fails locally poisons the file: it is never uploaded.
    assert!(m.fs.write(fh, u64::MAX - 1, b"xyz".to_vec()).await.is_err());
    assert!(m.fs.flush(fh, ME.process).await.is_err());
    m.fs.release(fh).await;
    assert!(m.store.keys().is_empty());
    assert_eq!(
        m.store.open_uploads(),
        1,
        "the upload holding the bytes is kept"
    );
    let id = m.store.upload_ids().pop().unwrap();
    let (_, record) = m.recovered();
    let record: serde_json::Value = serde_json::from_str(&record).unwrap();
    assert_eq!(record["upload"]["id"], id.as_str());
    let noted = record["upload"]["parts"].as_array().unwrap().len();
    let listed = m.store.list_parts("backup.bin", &id).await.unwrap().len();
    assert_eq!(noted, listed, "the record names every part S3 has");
}

#[tokio::test]
async fn a_directory_holding_an_offloading_file_cannot_be_renamed() {
    let m = mount();
    let dir = m.fs.mkdir(ROOT_INO, name("d"), 0o755, ME).await.unwrap();
    let (_, fh) =
        m.fs.create(dir.ino, name("f"), FILE_MODE, libc::O_WRONLY, ME)
            .await
            .unwrap();
    let data = pattern(64 * MIB);
    for (i, chunk) in data.chunks(MIB).enumerate() {
        m.fs.write(fh, (i * MIB) as u64, chunk.to_vec())
            .await
            .unwrap();
    }
    assert_eq!(
        m.fs.rename(ROOT_INO, name("d"), ROOT_INO, name("e"), 0)
            .await,
        Err(Errno::EBUSY)
    );
    m.fs.flush(fh, ME.process).await.unwrap();
    m.fs.release(fh).await;
    assert!(m.store.object("d/f").unwrap().body[..] == data[..]);
}

#[tokio::test]
async fn a_short_last_part_sent_by_a_failed_fsync_is_not_offloaded() {
    let m = mount();
    let mut data = pattern(40 * MIB + 5);
    let (_, fh) = write_in_pieces(&m.fs, "backup.bin", &data).await;
    m.store.fail_next(
        Op::CompleteMultipart,
        StoreError::Unreachable("down".into()),
    );
    assert_eq!(m.fs.fsync(fh).await, Err(Errno::EIO));
    // The header patched after the failed fsync: the file goes on being written.
    m.fs.write(fh, 3, b"header".to_vec()).await.unwrap();
    data[3..9].copy_from_slice(b"header");
    m.fs.flush(fh, ME.process).await.unwrap();
    m.fs.release(fh).await;
    assert!(m.store.object("backup.bin").unwrap().body[..] == data[..]);
}

/// A 64 MiB `backup.bin` written (offloading) and closed, whose completion
/// failed: its bytes.
async fn written_but_not_completed(m: &Mount) -> Vec<u8> {
    let data = pattern(64 * MIB);
    m.store.fail_next(
        Op::CompleteMultipart,
        StoreError::Unreachable("down".into()),
    );
    let (_, fh) = write_in_pieces(&m.fs, "backup.bin", &data).await;
    assert!(allocated(&m.staging_file()) < (64 << 20), "offloaded");
    assert_eq!(m.fs.flush(fh, ME.process).await, Err(Errno::EIO));
    m.fs.release(fh).await;
    data
}

#[tokio::test]
async fn an_offloaded_file_whose_close_failed_is_finished_by_the_next_mount() {
    let mut m = mount();
    let data = written_but_not_completed(&m).await;
    assert_eq!(m.crash_and_remount().await, 1);
    m.fs.retry_pending().await;
    assert!(m.store.object("backup.bin").unwrap().body[..] == data[..]);
}

#[tokio::test]
async fn an_offloaded_file_whose_upload_is_gone_is_put_aside_not_stored_with_holes() {
    let mut m = mount();
    let data = written_but_not_completed(&m).await;
    // A lifecycle rule aborts the upload meanwhile.
    let id = m.store.upload_ids().pop().unwrap();
    m.store.abort_multipart("backup.bin", &id).await.unwrap();
    m.crash_and_remount().await;
    m.fs.retry_pending().await;
    assert!(m.store.keys().is_empty(), "{:?}", m.store.keys());
    let (aside, _) = m.recovered();
    assert!(std::fs::read(&aside).unwrap()[..8 * MIB] == data[..8 * MIB]);
    assert!(m.fs.lookup(ROOT_INO, name("backup.bin")).await.is_err());
}

#[tokio::test]
async fn another_writers_object_met_at_close_keeps_theirs_and_puts_ours_aside() {
    let m = mount();
    let data = pattern(64 * MIB);
    let (_, fh) = write_in_pieces(&m.fs, "backup.bin", &data).await;
    m.store.insert("backup.bin", "someone else's");
    assert_eq!(m.fs.flush(fh, ME.process).await, Err(Errno::ESTALE));
    m.fs.release(fh).await;
    // No conflict copy can be made of bytes only the upload holds: theirs
    // stays, ours is in recovered/ and in the upload, kept.
    assert_eq!(m.store.keys(), ["backup.bin"]);
    assert_eq!(
        &m.store.object("backup.bin").unwrap().body[..],
        b"someone else's"
    );
    assert_eq!(m.store.open_uploads(), 1);
    let (aside, record) = m.recovered();
    assert!(record.contains(&m.store.upload_ids().pop().unwrap()));
    assert!(std::fs::read(&aside).unwrap()[..8 * MIB] == data[..8 * MIB]);
}

#[tokio::test]
async fn writes_after_a_failed_upload_of_a_file_changed_in_place_go_on() {
    let m = mount();
    m.store.insert("big", pattern(64 * MIB));
    let ino = m.fs.lookup(ROOT_INO, name("big")).await.unwrap().ino;
    let fh = m.fs.open(ino, libc::O_RDWR, ME).await.unwrap();
    m.fs.write(fh, 0, b"a".to_vec()).await.unwrap();
    m.store.fail_next(
        Op::CompleteMultipart,
        StoreError::Unreachable("down".into()),
    );
    assert_eq!(m.fs.flush(fh, ME.process).await, Err(Errno::EIO));
    // The upload the close began is kept for the next attempt; it sends
    // nothing while the file is written, so a write has nothing to wait for.
    let written = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        m.fs.write(fh, 100, b"b".to_vec()),
    )
    .await;
    assert_eq!(written.expect("the write returns"), Ok(1));
    m.fs.flush(fh, ME.process).await.unwrap();
    m.fs.release(fh).await;
    let mut expected = pattern(64 * MIB);
    expected[0] = b'a';
    expected[100] = b'b';
    assert!(m.store.object("big").unwrap().body[..] == expected[..]);
}

#[tokio::test]
async fn a_file_extended_by_truncation_then_written_anywhere_keeps_its_holes_writable() {
    let m = mount();
    let (attr, fh) =
        m.fs.create(ROOT_INO, name("disk.img"), FILE_MODE, libc::O_RDWR, ME)
            .await
            .unwrap();
    let size = 256 * MIB;
    let grow = SetAttr {
        size: Some(size as u64),
        ..Default::default()
    };
    m.fs.setattr(attr.ino, grow).await.unwrap();
    // A write far into the file waits for nothing: the holes below it are
    // no backlog, and none of them is offloaded.
    m.fs.write(fh, (200 * MIB) as u64, pattern(MIB))
        .await
        .unwrap();
    assert!(
        m.store.calls(Op::UploadPart) <= 4,
        "{} parts sent",
        m.store.calls(Op::UploadPart)
    );
    m.fs.write(fh, (8 * MIB) as u64, pattern(MIB))
        .await
        .unwrap();
    m.fs.flush(fh, ME.process).await.unwrap();
    m.fs.release(fh).await;
    let mut expected = vec![0u8; size];
    expected[200 * MIB..201 * MIB].copy_from_slice(&pattern(MIB));
    expected[8 * MIB..9 * MIB].copy_from_slice(&pattern(MIB));
    assert!(m.store.object("disk.img").unwrap().body[..] == expected[..]);
}
