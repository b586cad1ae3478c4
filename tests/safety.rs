//! Nothing written is lost silently: failed uploads, a full disk, unmounting with
//! files still open. (Crashes and other writers: `durability.rs`.)

mod common;

use std::io::Write;

use common::{Mount, Noise, PrivateGarage, SmallDisk, TestBucket, close, sh};
use sha2::{Digest, Sha256};

fn staged_files(cache: &std::path::Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(cache.join("staging"))
        .map(|d| d.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default()
}

#[test]
fn server_stopped_while_writing_fails_close_and_keeps_the_data() {
    let dir = tempfile::tempdir().unwrap();
    let garage = PrivateGarage::start(dir.path(), "backups");
    // A cache directory of the test's own, to look into after the unmount.
    let cache = dir.path().join("cache");
    let cache_arg = cache.display().to_string();
    // Requests are retried for 2 s, then the error reaches close().
    let mount = Mount::source(
        &garage.env,
        "backups",
        &["--cache-dir", &cache_arg, "--retry-for", "2s"],
    );
    let mut file = std::fs::File::create(mount.join("db.dump")).unwrap();
    let mut noise = Noise::new(7);
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    for i in 0..24 {
        if i == 20 {
            garage.stop();
        }
        noise.fill(&mut buf);
        hash.update(&buf);
        file.write_all(&buf).unwrap();
    }
    let err = close(file).expect_err("close must report the failed upload");
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");

    // The data is still on disk, complete, where the log says.
    let staged = staged_files(&mount.cache);
    assert_eq!(staged.len(), 1, "{staged:?}");
    let kept = std::fs::read(&staged[0]).unwrap();
    let hash_of_all = hash.finalize();
    assert_eq!(Sha256::digest(&kept), hash_of_all);
    let log = mount.log_text();
    assert!(
        log.contains(&format!("the data is kept in {}", staged[0].display())),
        "{log}"
    );

    // The writer finished (close), so the file goes up once the server is back:
    // whole, never half-written.
    garage.resume();
    let bucket = TestBucket::existing(garage.env.clone(), "backups");
    common::wait_until(std::time::Duration::from_secs(120), "the retry", || {
        bucket.keys() == ["db.dump"]
    });
    let got = bucket.get("db.dump").unwrap();
    assert_eq!(Sha256::digest(&got), hash_of_all);
    mount.unmount();
    assert!(staged_files(&cache).is_empty(), "uploaded: nothing kept");
}

#[test]
fn full_disk_is_enospc_and_nothing_half_written_is_uploaded() {
    let bucket = TestBucket::new("full");
    let dir = tempfile::tempdir().unwrap();
    let disk = SmallDisk::new(dir.path().join("cache"), "4m");
    let cache = disk.0.display().to_string();
    let mount = Mount::new(&bucket, &["--cache-dir", &cache]);
    let mut file = std::fs::File::create(mount.join("big")).unwrap();
    let buf = vec![1u8; 1 << 20];
    let err = (0..8)
        .find_map(|_| file.write_all(&buf).err())
        .expect("a write must fail on a full disk");
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");
    let err = close(file).expect_err("close must fail too");
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC));
    assert!(bucket.keys().is_empty(), "{:?}", bucket.keys());
    mount.unmount();
}

#[test]
fn sigterm_unmounts_after_open_files_are_written() {
    let bucket = TestBucket::new("sigterm");
    let mut mount = Mount::new(&bucket, &[]);
    let mut file = std::fs::File::create(mount.join("late.txt")).unwrap();
    file.write_all(b"written before the signal\n").unwrap();
    sh(&format!("kill -TERM {}", mount.pid()));
    // The open file keeps the (detached) mount alive until it is closed.
    file.write_all(b"and after it\n").unwrap();
    close(file).unwrap();
    let status = mount.wait_exit();
    assert!(status.success(), "{status}\n{}", mount.log_text());
    assert!(!common::is_mounted(&mount.path));
    assert_eq!(
        bucket.get("late.txt").unwrap(),
        b"written before the signal\nand after it\n"
    );
}
