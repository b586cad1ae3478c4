//! Nothing is lost when s3mount dies or two machines write one file: the
//! write-back journal, resumed uploads, conflicts between mounts, and the cache
//! directory kept private and to one mount. Real mounts, real servers (Garage;
//! moto where a server must enforce conditional writes), real SIGKILLs.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::cdn::Distribution;
use common::{
    FAIL_LIMIT, Mount, Noise, PrivateGarage, S3Env, TestBucket, assert_fails_with, close,
    journal_records, requests, run_bounded, wait_until,
};
use sha2::{Digest, Sha256};

const MIB: usize = 1 << 20;
/// How long an upload left by a failure or a crash may take to appear.
const APPEAR: Duration = Duration::from_secs(120);

fn arg(path: &Path) -> String {
    path.display().to_string()
}

fn files_in(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default()
}

/// A Garage of the test's own with `bucket` (tests that stop or freeze it), the
/// bucket, and a cache directory to look into after the mount is gone.
fn private(dir: &Path, bucket: &str) -> (PrivateGarage, TestBucket, PathBuf) {
    let garage = PrivateGarage::start(dir, bucket);
    let reached = TestBucket::existing(garage.env.clone(), bucket);
    (garage, reached, dir.join("cache"))
}

/// `len` bytes of noise from `seed`, and their SHA-256.
fn noise(len: usize, seed: u64) -> (Vec<u8>, Vec<u8>) {
    let mut data = vec![0u8; len];
    Noise::new(seed).fill(&mut data);
    let hash = Sha256::digest(&data).to_vec();
    (data, hash)
}

#[test]
fn a_close_killed_while_waiting_for_its_parts_resumes_after_a_remount() {
    let dir = tempfile::tempdir().unwrap();
    let (garage, bucket, cache) = private(dir.path(), "backups");
    let mount = Mount::source(&garage.env, "backups", &["--cache-dir", &arg(&cache)]);
    let (data, hash) = noise(200 * MIB, 11);
    let mut file = std::fs::File::create(mount.join("db.dump")).unwrap();
    file.write_all(&data).unwrap();
    // Some parts are in S3 (sent while the file was written) ...
    wait_until(Duration::from_secs(60), "a part in S3", || {
        let uploads = bucket
            .rt
            .block_on(
                bucket
                    .client
                    .list_multipart_uploads()
                    .bucket("backups")
                    .send(),
            )
            .unwrap();
        uploads.uploads().iter().any(|u| {
            let parts = bucket.rt.block_on(
                bucket
                    .client
                    .list_parts()
                    .bucket("backups")
                    .key("db.dump")
                    .upload_id(u.upload_id().unwrap_or_default())
                    .send(),
            );
            parts.is_ok_and(|p| !p.parts().is_empty())
        })
    });
    // ... then the server stalls, and close() waits for the rest.
    garage.pause();
    let closing = std::thread::spawn(move || close(file));
    wait_until(Duration::from_secs(60), "the record says complete", || {
        journal_records(&cache)
            .iter()
            .any(|r| r["progress"] == "complete")
    });
    let noted = journal_records(&cache)[0]["upload"]["parts"]
        .as_array()
        .map_or(0, Vec::len) as u64;
    mount.kill();
    let _ = closing.join();
    garage.unpause();
    assert!(noted > 0, "the record notes the parts S3 confirmed");

    let log_path = dir.path().join("second.log");
    let again = Mount::source(
        &garage.env,
        "backups",
        &["--cache-dir", &arg(&cache), "--log-file", &arg(&log_path)],
    );
    wait_until(APPEAR, "the object after the remount", || {
        bucket.keys().contains(&"db.dump".to_string())
    });
    let got = bucket.get("db.dump").unwrap();
    assert_eq!(Sha256::digest(&got).to_vec(), hash, "the object is whole");
    assert!(again.unmount().success());
    let log = std::fs::read_to_string(log_path).unwrap();
    assert!(log.contains("resuming the upload of db.dump"), "{log}");
    assert_eq!(
        requests(&log, "UploadPart "),
        25 - noted,
        "only the parts S3 lacked were sent (of 25, {noted} noted):\n{log}"
    );
    assert!(journal_records(&cache).is_empty());
}

#[test]
fn a_file_whose_close_failed_appears_once_the_server_is_back() {
    let dir = tempfile::tempdir().unwrap();
    let (garage, bucket, _) = private(dir.path(), "logs");
    let mount = Mount::new(&bucket, &["--retry-for", "3s"]);
    // A log shipper's cp: the file is created, then the server goes away.
    let mut file = std::fs::File::create(mount.join("app.log")).unwrap();
    garage.stop();
    file.write_all(b"shipped while the server was down\n")
        .unwrap();
    // The upload is tried again for --retry-for before close() gives up.
    let closing = std::time::Instant::now();
    let err = close(file).expect_err("the upload fails");
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    assert!(closing.elapsed() >= Duration::from_secs(3));
    // Meanwhile the file shows what was written.
    assert_eq!(
        std::fs::read(mount.join("app.log")).unwrap(),
        b"shipped while the server was down\n"
    );
    garage.resume();
    wait_until(APPEAR, "the retried upload", || {
        bucket.get("app.log").is_some()
    });
    assert_eq!(
        bucket.get("app.log").unwrap(),
        b"shipped while the server was down\n"
    );
    assert!(mount.log_text().contains("uploaded app.log on a retry"));
    assert!(mount.unmount().success());
}

#[test]
fn a_file_whose_close_failed_appears_after_a_crash_and_a_remount() {
    let dir = tempfile::tempdir().unwrap();
    let (garage, bucket, cache) = private(dir.path(), "logs");
    let mount = Mount::source(
        &garage.env,
        "logs",
        &["--cache-dir", &arg(&cache), "--retry-for", "2s"],
    );
    let (data, _) = noise(3 * MIB, 5);
    let mut file = std::fs::File::create(mount.join("app.log")).unwrap();
    garage.stop();
    file.write_all(&data).unwrap();
    assert!(close(file).is_err());
    mount.kill();
    garage.resume();
    let again = Mount::source(&garage.env, "logs", &["--cache-dir", &arg(&cache)]);
    wait_until(APPEAR, "the upload resumed", || {
        bucket.get("app.log").is_some()
    });
    assert_eq!(bucket.get("app.log").unwrap(), data);
    assert!(again.unmount().success());
}

#[test]
fn a_file_still_being_written_when_s3mount_dies_never_becomes_an_object() {
    let bucket = TestBucket::new("unfinished");
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let mount = Mount::new(&bucket, &["--cache-dir", &arg(&cache)]);
    // Large enough that its parts are sent while it is written.
    let (data, hash) = noise(40 * MIB, 3);
    let mut file = std::fs::File::create(mount.join("backup.tar")).unwrap();
    file.write_all(&data).unwrap();
    wait_until(Duration::from_secs(30), "the upload noted", || {
        journal_records(&cache)
            .iter()
            .any(|r| !r["upload"].is_null())
    });
    mount.kill();
    drop(file);

    let again = Mount::new(&bucket, &["--cache-dir", &arg(&cache)]);
    assert!(bucket.keys().is_empty(), "{:?}", bucket.keys());
    let aside: Vec<PathBuf> = files_in(&cache.join("recovered"))
        .into_iter()
        .filter(|p| p.extension().is_none_or(|e| e != "json"))
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    let name = aside[0].file_name().unwrap().to_string_lossy().into_owned();
    assert!(name.starts_with("backup.tar."), "{name}");
    assert_eq!(
        Sha256::digest(std::fs::read(&aside[0]).unwrap()).to_vec(),
        hash
    );
    let log = again.log_text();
    assert!(
        log.contains("had not finished") && log.contains(&arg(&aside[0])),
        "{log}"
    );
    // The parts it had sent are gone too.
    let uploads = bucket.open_uploads();
    assert!(uploads.is_empty(), "{uploads:?}");
    assert!(again.unmount().success());
    assert!(bucket.keys().is_empty());
}

/// Two machines' mounts change one file, each without seeing the other's
/// change: the second close fails, and both versions are kept.
fn two_writers_keep_both(env: &S3Env, bucket: &TestBucket, extra: &[&str]) {
    bucket.put("site/style.css", "body { color: black; }\n");
    let a = Mount::source(env, &bucket.name, extra);
    let b = Mount::source(env, &bucket.name, extra);
    // B begins saving the file (an editor writing it anew), then A saves a
    // change ...
    let mut at_b = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(b.join("site/style.css"))
        .unwrap();
    std::fs::write(a.join("site/style.css"), "body { color: red; }\n").unwrap();
    // ... and B saves its own, made to the version it had.
    at_b.write_all(b"body { color: blue; }\n").unwrap();
    let err = close(at_b).expect_err("the second save must fail");
    assert_eq!(err.raw_os_error(), Some(libc::ESTALE), "{err}");
    assert_eq!(
        bucket.get("site/style.css").unwrap(),
        b"body { color: red; }\n"
    );
    let copies: Vec<String> = bucket
        .keys()
        .into_iter()
        .filter(|k| k.starts_with("site/style.css.conflict-"))
        .collect();
    assert_eq!(copies.len(), 1, "{:?}", bucket.keys());
    assert_eq!(bucket.get(&copies[0]).unwrap(), b"body { color: blue; }\n");
    assert_eq!(bucket.content_type(&copies[0]).as_deref(), Some("text/css"));
    let log = b.log_text();
    assert!(
        log.contains(&copies[0]) && log.contains("site/style.css keeps their version"),
        "{log}"
    );
    // s3mount status says so too, for the mount that kept both.
    let out = Command::new(common::BIN)
        .args(["status", "--json"])
        .arg(&b.path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: s3mount::status::Report = serde_json::from_slice(&out.stdout).unwrap();
    let conflicts: Vec<(&str, &str)> = report
        .conflicts
        .iter()
        .map(|c| (c.key.as_str(), c.saved_as.as_str()))
        .collect();
    assert_eq!(conflicts, [("site/style.css", copies[0].as_str())]);
    assert!(a.unmount().success());
    assert!(b.unmount().success());
}

#[test]
fn two_mounts_on_a_server_that_enforces_conditions_keep_both_versions() {
    let env = S3Env::moto();
    let bucket = TestBucket::on(env.clone(), "conflict");
    // The server's 412 alone catches it: no HEAD before the upload.
    two_writers_keep_both(&env, &bucket, &["--check-before-upload", "never"]);
}

#[test]
fn two_mounts_on_garage_keep_both_versions() {
    let bucket = TestBucket::new("conflict");
    two_writers_keep_both(&bucket.env.clone(), &bucket, &[]);
}

#[test]
fn a_torn_journal_record_is_quarantined_and_the_others_resumed() {
    let bucket = TestBucket::new("torn");
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    std::fs::create_dir_all(cache.join("journal")).unwrap();
    std::fs::create_dir_all(cache.join("staging")).unwrap();
    // A record cut short by a crash, with its data ...
    std::fs::write(
        cache.join("journal/1-2-torn.txt.json"),
        b"{\"format\":1,\"buc",
    )
    .unwrap();
    std::fs::write(cache.join("staging/1-2-torn.txt"), b"precious").unwrap();
    // ... and a complete one.
    let record = serde_json::json!({
        "format": 1, "bucket": bucket.name, "key": "notes/done.txt",
        "staging": "1-3-done.txt", "progress": "complete", "based_on": null,
        "base_len": 0, "local": [[0, 9]], "size": 9, "content_type": "text/plain",
        "metadata": {"mode": "33188"}, "upload": null,
    });
    std::fs::write(
        cache.join("journal/1-3-done.txt.json"),
        serde_json::to_vec(&record).unwrap(),
    )
    .unwrap();
    std::fs::write(cache.join("staging/1-3-done.txt"), b"finished\n").unwrap();

    let mount = Mount::new(&bucket, &["--cache-dir", &arg(&cache)]);
    wait_until(APPEAR, "the complete record's upload", || {
        bucket.get("notes/done.txt").is_some()
    });
    assert_eq!(bucket.get("notes/done.txt").unwrap(), b"finished\n");
    let mut quarantined: Vec<String> = files_in(&cache.join("quarantine"))
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    quarantined.sort();
    assert_eq!(quarantined, ["1-2-torn.txt", "1-2-torn.txt.json"]);
    assert_eq!(
        std::fs::read(cache.join("quarantine/1-2-torn.txt")).unwrap(),
        b"precious"
    );
    assert!(mount.log_text().contains("quarantine"));
    assert!(mount.unmount().success());
    assert_eq!(bucket.keys(), ["notes/done.txt"]);
}

#[test]
fn a_second_mount_on_a_cache_directory_in_use_fails_naming_the_first() {
    let bucket = TestBucket::new("locked");
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let first = Mount::new(&bucket, &["--cache-dir", &arg(&cache)]);
    let second_mnt = dir.path().join("second");
    std::fs::create_dir(&second_mnt).unwrap();
    let mut cmd = bucket.env.command();
    cmd.arg(&bucket.name)
        .arg(&second_mnt)
        .args(["--cache-dir", &arg(&cache)]);
    // Refused before S3 is asked anything (a hang is a failure).
    let out = run_bounded(cmd, FAIL_LIMIT);
    assert_fails_with(&out, "is in use by another mount");
    assert_fails_with(&out, &arg(&first.path));
    assert!(!common::is_mounted(&second_mnt));
    assert!(first.unmount().success());
}

/// Every directory and file under `dir`, with its mode.
fn modes(dir: &Path) -> Vec<(PathBuf, u32)> {
    use std::os::unix::fs::PermissionsExt;
    let mut out = Vec::new();
    for path in files_in(dir) {
        let md = std::fs::symlink_metadata(&path).unwrap();
        out.push((path.clone(), md.permissions().mode() & 0o7777));
        if md.is_dir() {
            out.extend(modes(&path));
        }
    }
    out
}

#[test]
fn nothing_in_the_cache_directory_is_readable_by_other_users() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let (garage, bucket, cache) = private(dir.path(), "private");
    // A cache an earlier version made readable by all.
    std::fs::create_dir_all(cache.join("blocks")).unwrap();
    std::fs::write(cache.join("blocks/0123456789abcdef"), b"an old block").unwrap();
    for (path, mode) in [
        (cache.clone(), 0o755),
        (cache.join("blocks"), 0o755),
        (cache.join("blocks/0123456789abcdef"), 0o644),
    ] {
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    let log = dir.path().join("s3mount.log");
    let mount = Mount::source(
        &garage.env,
        "private",
        &[
            "--cache-dir",
            &arg(&cache),
            "--log-file",
            &arg(&log),
            "--retry-for",
            "2s",
        ],
    );
    // Written, read back (blocks cached), and an upload that fails.
    std::fs::write(mount.join("secret.txt"), vec![7u8; 3 * MIB]).unwrap();
    bucket.put("other.bin", vec![1u8; 2 * MIB]);
    assert_eq!(
        std::fs::read(mount.join("other.bin")).unwrap().len(),
        2 * MIB
    );
    let mut file = std::fs::File::create(mount.join("failed.txt")).unwrap();
    garage.stop();
    file.write_all(b"kept").unwrap();
    assert!(close(file).is_err());

    let all = modes(&cache);
    assert!(all.len() > 5, "{all:?}");
    let open: Vec<&(PathBuf, u32)> = all.iter().filter(|(_, m)| m & 0o077 != 0).collect();
    assert!(open.is_empty(), "readable by others: {open:?}");
    let log_mode = std::fs::metadata(&log).unwrap().permissions().mode();
    assert_eq!(log_mode & 0o077, 0, "the log is private");
    assert!(
        std::fs::read_to_string(&log)
            .unwrap()
            .contains("made private")
    );
    garage.resume();
    assert!(mount.unmount().success());
}

#[test]
fn a_cloudfront_path_queued_before_a_crash_is_invalidated_after_the_remount() {
    let bucket = TestBucket::new("cdn-crash");
    let cdn = Distribution::new(&bucket.name);
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let mut args = cdn.mount_args(&cdn.endpoint);
    args.extend(["--cache-dir".into(), arg(&cache)]);
    let mut waiting = args.clone();
    // Long enough that the path is still queued when the daemon dies.
    waiting.extend(["--cloudfront-delay".into(), "1h".into()]);
    let waiting: Vec<&str> = waiting.iter().map(String::as_str).collect();
    let mount = Mount::new(&bucket, &waiting);
    std::fs::write(mount.join("index.html"), "<h1>new</h1>").unwrap();
    mount.kill();
    assert!(cdn.invalidations().is_empty());

    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let again = Mount::new(&bucket, &args);
    let made = cdn.wait_for(1, Duration::from_secs(30));
    assert_eq!(made, vec![vec!["/index.html".to_string()]]);
    assert!(again.unmount().success());
    assert_eq!(cdn.invalidations().len(), 1, "sent once");
}

#[test]
fn background_uploads_close_at_once_fsync_reports_a_failure_and_unmount_waits() {
    let dir = tempfile::tempdir().unwrap();
    let (garage, bucket, cache) = private(dir.path(), "background");
    let mount = Mount::source(
        &garage.env,
        "background",
        &[
            "--background-uploads",
            "--cache-dir",
            &arg(&cache),
            "--retry-for",
            "2s",
        ],
    );
    std::fs::create_dir(mount.join("many")).unwrap();
    let mut closed = std::fs::File::create(mount.join("closed")).unwrap();
    let mut synced = std::fs::File::create(mount.join("synced")).unwrap();
    garage.stop();
    // The server is down: close() succeeds all the same, the file is safe on disk...
    closed
        .write_all(b"closed while the server was down")
        .unwrap();
    close(closed).unwrap();
    let noted = journal_records(&cache);
    assert!(
        noted
            .iter()
            .any(|r| r["key"] == "closed" && r["progress"] == "complete"),
        "{noted:?}"
    );
    // ...but fsync() waits for S3, and says it does not have the file.
    synced.write_all(b"synced").unwrap();
    let err = synced.sync_all().expect_err("the upload fails");
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    close(synced).unwrap();
    assert_eq!(
        std::fs::read(mount.join("closed")).unwrap(),
        b"closed while the server was down"
    );
    garage.resume();
    for i in 0..200 {
        std::fs::write(mount.join(&format!("many/{i}")), i.to_string()).unwrap();
    }
    // Unmounted at once: it waits for every upload left.
    assert!(mount.unmount().success());
    assert_eq!(
        bucket.get("closed").unwrap(),
        b"closed while the server was down"
    );
    assert_eq!(bucket.get("synced").unwrap(), b"synced");
    for i in 0..200 {
        let key = format!("many/{i}");
        assert_eq!(bucket.get(&key), Some(i.to_string().into_bytes()), "{key}");
    }
    assert!(journal_records(&cache).is_empty());
}

#[test]
fn a_background_upload_cut_by_a_kill_is_made_by_the_next_mount() {
    let dir = tempfile::tempdir().unwrap();
    let (garage, bucket, cache) = private(dir.path(), "killed");
    let mount = Mount::source(
        &garage.env,
        "killed",
        &["--background-uploads", "--cache-dir", &arg(&cache)],
    );
    let (data, hash) = noise(3 << 20, 11);
    let mut file = std::fs::File::create(mount.join("site.css")).unwrap();
    // The server hangs: the upload that close() leaves to the background with it.
    garage.pause();
    file.write_all(&data).unwrap();
    close(file).unwrap();
    mount.kill();
    garage.unpause();
    let again = Mount::source(&garage.env, "killed", &["--cache-dir", &arg(&cache)]);
    wait_until(APPEAR, "the object after the remount", || {
        bucket.keys().contains(&"site.css".to_string())
    });
    let got = bucket.get("site.css").unwrap();
    assert_eq!(Sha256::digest(&got).to_vec(), hash, "the object is whole");
    assert!(again.unmount().success());
    assert!(journal_records(&cache).is_empty());
}

#[test]
fn sigterm_stops_within_the_stop_timeout_and_the_next_mount_makes_the_upload() {
    let dir = tempfile::tempdir().unwrap();
    let (garage, bucket, cache) = private(dir.path(), "termed");
    let mut mount = Mount::source(
        &garage.env,
        "termed",
        &[
            "--background-uploads",
            "--stop-timeout",
            "2s",
            "--cache-dir",
            &arg(&cache),
        ],
    );
    let (data, hash) = noise(3 << 20, 12);
    let mut file = std::fs::File::create(mount.join("backup.tar")).unwrap();
    // The server hangs: the upload cannot finish before the stop timeout.
    garage.pause();
    file.write_all(&data).unwrap();
    close(file).unwrap();
    // SAFETY: kill(2) on the mount's own child process.
    assert_eq!(unsafe { libc::kill(mount.pid() as i32, libc::SIGTERM) }, 0);
    assert!(mount.wait_exit().success());
    let log = mount.log_text();
    assert!(
        log.contains("uploads not finished 2s after the signal"),
        "{log}"
    );
    assert!(
        !journal_records(&cache).is_empty(),
        "the journal keeps the upload"
    );
    garage.unpause();
    let again = Mount::source(&garage.env, "termed", &["--cache-dir", &arg(&cache)]);
    wait_until(APPEAR, "the object after the remount", || {
        bucket.keys().contains(&"backup.tar".to_string())
    });
    let got = bucket.get("backup.tar").unwrap();
    assert_eq!(Sha256::digest(&got).to_vec(), hash, "the object is whole");
    assert!(again.unmount().success());
    assert!(journal_records(&cache).is_empty());
}
