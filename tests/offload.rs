//! Streams larger than the local disk: once S3 has confirmed a part of a new
//! file being written, its bytes leave the staging file, and a writer faster
//! than the network waits for its parts instead of meeting ENOSPC. Real
//! mounts with their cache directory on a 64 MiB tmpfs, a real Garage, real
//! SIGKILLs.

mod common;

use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

use common::faults::{DelayProxy, FaultProxy, Rates};
use common::{Mount, Noise, SmallDisk, TestBucket, close, journal_records, requests, wait_until};
use md5::Md5;
use sha2::{Digest, Sha256};

const MIB: usize = 1 << 20;

/// Write `len` bytes of noise from `seed` to `file` in writes of 1 MiB;
/// returns their SHA-256 and the first 8 MiB (the part that stays on disk).
fn stream_into(file: &mut std::fs::File, len: usize, seed: u64) -> (Vec<u8>, Vec<u8>) {
    let mut noise = Noise::new(seed);
    let mut hash = Sha256::new();
    let mut head = Vec::new();
    let mut chunk = vec![0u8; MIB];
    for i in 0..len / MIB {
        noise.fill(&mut chunk);
        file.write_all(&chunk)
            .unwrap_or_else(|e| panic!("write at {i} MiB: {e}"));
        hash.update(&chunk);
        if head.len() < 8 * MIB {
            head.extend_from_slice(&chunk);
        }
    }
    (hash.finalize().to_vec(), head)
}

/// A mount of `bucket` on `cache` again, logging into `dir`: the mount and its log.
fn remount(bucket: &TestBucket, cache: &str, dir: &Path) -> (Mount, std::path::PathBuf) {
    let log = dir.join("again.log");
    let args = [
        "--cache-dir",
        cache,
        "--log-file",
        &log.display().to_string(),
    ];
    (Mount::new(bucket, &args), log)
}

#[test]
fn a_stream_four_times_the_cache_disk_goes_through_a_slow_network_whole() {
    let bucket = TestBucket::new("offload");
    let dir = tempfile::tempdir().unwrap();
    let disk = SmallDisk::new(dir.path().join("cache"), "64m");
    // 400 ms round trips: the writer is far faster than the network.
    let proxy = DelayProxy::new(&bucket.env, 400);
    let cache = disk.0.display().to_string();
    let mount = Mount::source(&proxy.env, &bucket.name, &["--cache-dir", &cache]);
    let mut file = std::fs::File::create(mount.join("backup.bin")).unwrap();
    let (hash, _) = stream_into(&mut file, 256 * MIB, 7);
    close(file).expect("close");
    // An independent client reads exactly what was written ...
    let stored = bucket.get("backup.bin").unwrap();
    assert_eq!(stored.len(), 256 * MIB);
    assert_eq!(Sha256::digest(&stored).to_vec(), hash);
    // ... and so does a read through the mount.
    let mut back = Sha256::new();
    let mut read = std::fs::File::open(mount.join("backup.bin")).unwrap();
    let mut buf = vec![0u8; MIB];
    loop {
        let n = read.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        back.update(&buf[..n]);
    }
    assert_eq!(back.finalize().to_vec(), hash);
    drop(read);
    let log = mount.log_text();
    assert!(mount.unmount().success());
    assert!(
        !log.contains("No space left"),
        "the disk never ran out:\n{log}"
    );
}

#[test]
fn a_kill_during_a_stream_puts_its_bytes_aside_and_keeps_the_upload_with_the_rest() {
    let bucket = TestBucket::new("offloadkill");
    let dir = tempfile::tempdir().unwrap();
    let disk = SmallDisk::new(dir.path().join("cache"), "64m");
    let cache = disk.0.display().to_string();
    let mount = Mount::new(&bucket, &["--cache-dir", &cache]);
    let mut file = std::fs::File::create(mount.join("backup.bin")).unwrap();
    let (_, head) = stream_into(&mut file, 120 * MIB, 8);
    wait_until(Duration::from_secs(60), "offloaded bytes noted", || {
        journal_records(&disk.0)
            .iter()
            .any(|r| r["offloaded"].as_array().is_some_and(|a| !a.is_empty()))
    });
    mount.kill();
    drop(file);

    let (again, log_file) = remount(&bucket, &cache, dir.path());
    assert!(again.unmount().success());
    let log = std::fs::read_to_string(log_file).unwrap();
    assert!(bucket.keys().is_empty(), "a half-written file never shows");
    let aside: Vec<_> = std::fs::read_dir(disk.0.join("recovered"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    let data = aside
        .iter()
        .find(|p| p.extension().is_none_or(|e| e != "json"))
        .expect("the data put aside");
    let record = aside
        .iter()
        .find(|p| p.extension().is_some_and(|e| e == "json"))
        .expect("its record beside it");
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(record).unwrap()).unwrap();
    let id = record["upload"]["id"].as_str().unwrap().to_string();
    assert_eq!(
        bucket.open_uploads(),
        std::slice::from_ref(&id),
        "the upload is kept"
    );
    assert!(log.contains(&id), "the log names the upload:\n{log}");
    // Every byte written is in one of the two places: the offloaded ranges in
    // parts of the upload (their ETag is the MD5 of what was written there),
    // the rest in the file put aside.
    let mut written = vec![0u8; 120 * MIB];
    Noise::new(8).fill(&mut written);
    assert!(written[..8 * MIB] == head[..]);
    let kept = std::fs::read(data).unwrap();
    let parts = bucket
        .rt
        .block_on(
            bucket
                .client
                .list_parts()
                .bucket(&bucket.name)
                .key("backup.bin")
                .upload_id(&id)
                .send(),
        )
        .unwrap();
    let offloaded: Vec<(usize, usize)> =
        serde_json::from_value(record["offloaded"].clone()).unwrap();
    assert!(!offloaded.is_empty());
    let mut at = 0;
    for (start, end) in offloaded {
        assert!(
            kept[at..start] == written[at..start],
            "bytes {at}..{start} kept"
        );
        for part in (start..end).step_by(8 * MIB) {
            let number = (part / (8 * MIB) + 1) as i32;
            let md5 = format!("\"{:x}\"", Md5::digest(&written[part..part + 8 * MIB]));
            assert!(
                parts
                    .parts()
                    .iter()
                    .any(|p| p.part_number() == Some(number) && p.e_tag() == Some(md5.as_str())),
                "part {number} in S3 with the bytes written there: {:?}",
                parts.parts()
            );
        }
        at = end;
    }
    let end = kept.len().min(written.len());
    assert!(kept[at..end] == written[at..end], "bytes {at}..{end} kept");
    bucket
        .rt
        .block_on(
            bucket
                .client
                .abort_multipart_upload()
                .bucket(&bucket.name)
                .key("backup.bin")
                .upload_id(&id)
                .send(),
        )
        .unwrap();
}

#[test]
fn a_stream_whose_close_failed_is_finished_after_a_kill_from_the_parts_s3_has() {
    let bucket = TestBucket::new("offloadresume");
    let dir = tempfile::tempdir().unwrap();
    let disk = SmallDisk::new(dir.path().join("cache"), "64m");
    let cache = disk.0.display().to_string();
    // Every completion of a multipart upload is refused (503) for now.
    let refused = Rates {
        slowdown: 1.0,
        ..Rates::mixed(0.0)
    };
    let only = ["--only-method", "POST", "--only-query", "uploadId"];
    let proxy = FaultProxy::narrowed(&bucket.env, 1, refused, 0, &only);
    let mount = Mount::source(
        &proxy.env,
        &bucket.name,
        &["--cache-dir", &cache, "--retry-for", "3s"],
    );
    let mut file = std::fs::File::create(mount.join("backup.bin")).unwrap();
    let (hash, _) = stream_into(&mut file, 120 * MIB, 9);
    let err = close(file).expect_err("the completion is refused");
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    mount.kill();

    let (again, log_file) = remount(&bucket, &cache, dir.path());
    wait_until(Duration::from_secs(120), "the object", || {
        bucket.keys() == ["backup.bin"]
    });
    assert!(again.unmount().success());
    let stored = bucket.get("backup.bin").unwrap();
    assert_eq!(Sha256::digest(&stored).to_vec(), hash);
    let log = std::fs::read_to_string(log_file).unwrap();
    // The parts were taken from S3 by their checksums, none sent again.
    assert_eq!(requests(&log, "ListParts "), 1, "{log}");
    assert_eq!(requests(&log, "UploadPart "), 0, "{log}");
    assert!(bucket.open_uploads().is_empty());
}
