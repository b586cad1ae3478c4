//! A file's upload state, `user.s3mount.upload`, read with getfattr through real
//! mounts while a large upload goes through a slow network, after it, after a
//! failed one and once the server is back; never listed, so never copied. And
//! attribute names without a namespace, as s3fs keeps them.

mod common;

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use common::faults::DelayProxy;
use common::{Mount, Noise, PrivateGarage, TestBucket, close, sh, sh_output, wait_until};

const NAME: &str = "user.s3mount.upload";
const MIB: usize = 1 << 20;

/// The value of the extended attribute `name` of `path`, read with getfattr.
fn xattr(path: &Path, name: &str) -> String {
    sh(&format!(
        "getfattr --absolute-names --only-values -n {name} '{}'",
        path.display()
    ))
}

fn state(path: &Path) -> String {
    xattr(path, NAME)
}

/// The bytes sent of an `uploading SENT of TOTAL bytes` state.
fn sent_of(state: &str) -> Option<(u64, u64)> {
    let rest = state.strip_prefix("uploading ")?.strip_suffix(" bytes")?;
    let (sent, total) = rest.split_once(" of ")?;
    Some((sent.parse().ok()?, total.parse().ok()?))
}

#[test]
fn a_large_uploads_state_shows_its_bytes_growing_then_its_etag() {
    let bucket = TestBucket::new("state");
    // 400 ms round trips: the parts left at close take seconds to go.
    let proxy = DelayProxy::new(&bucket.env, 400);
    let mount = Mount::source(&proxy.env, &bucket.name, &[]);
    let path = mount.join("backup.bin");
    let mut file = std::fs::File::create(&path).unwrap();
    let mut chunk = vec![0u8; MIB];
    let mut noise = Noise::new(30);
    for _ in 0..96 {
        noise.fill(&mut chunk);
        file.write_all(&chunk).unwrap();
    }
    assert_eq!(state(&path), "waiting");
    assert_eq!(state(&mount.path), "1 files waiting");
    let closing = std::thread::spawn(move || close(file));
    let mut seen: Vec<(u64, u64)> = Vec::new();
    wait_until(Duration::from_secs(120), "the sent bytes to grow", || {
        if let Some(progress) = sent_of(&state(&path))
            && seen.last() != Some(&progress)
        {
            seen.push(progress);
        }
        seen.len() >= 2 || closing.is_finished()
    });
    assert!(seen.len() >= 2, "one state seen while uploading: {seen:?}");
    assert!(seen.windows(2).all(|w| w[0].0 < w[1].0), "{seen:?}");
    assert!(
        seen.iter()
            .all(|&(sent, total)| sent <= total && total == 96 * MIB as u64)
    );
    closing.join().unwrap().expect("the upload succeeds");
    let etag = bucket
        .head("backup.bin")
        .e_tag()
        .unwrap()
        .trim_matches('"')
        .to_string();
    assert_eq!(state(&path), format!("uploaded {etag}"));
    assert_eq!(state(&mount.path), "0 files waiting");
    assert!(mount.unmount().success());
}

#[test]
fn a_failed_upload_says_why_and_where_its_data_is_until_the_server_is_back() {
    let dir = tempfile::tempdir().unwrap();
    let garage = PrivateGarage::start(dir.path(), "failing");
    let bucket = TestBucket::existing(garage.env.clone(), "failing");
    let mount = Mount::new(&bucket, &["--retry-for", "2s"]);
    std::fs::create_dir(mount.join("logs")).unwrap();
    let path = mount.join("logs/app.log");
    let mut file = std::fs::File::create(&path).unwrap();
    garage.stop();
    file.write_all(b"while the server was down\n").unwrap();
    close(file).expect_err("the upload fails");
    let failed = state(&path);
    let kept = failed
        .strip_prefix("failed: ")
        .and_then(|rest| rest.split_once("; data kept in "))
        .map(|(_, kept)| kept.to_string())
        .unwrap_or_else(|| panic!("not a failure with its data: {failed}"));
    assert!(failed.contains("connection refused"), "{failed}");
    assert_eq!(
        std::fs::read(&kept).unwrap(),
        b"while the server was down\n"
    );
    assert_eq!(state(&mount.join("logs")), "1 files waiting");
    garage.resume();
    wait_until(Duration::from_secs(60), "the retried upload", || {
        state(&path).starts_with("uploaded ")
    });
    let etag = bucket
        .head("logs/app.log")
        .e_tag()
        .unwrap()
        .trim_matches('"')
        .to_string();
    assert_eq!(state(&path), format!("uploaded {etag}"));
    assert_eq!(state(&mount.join("logs")), "0 files waiting");
    assert!(mount.unmount().success());
}

#[test]
fn the_state_is_read_only_never_listed_and_never_copied() {
    let bucket = TestBucket::new("state-copy");
    let mount = Mount::new(&bucket, &[]);
    let f = mount.join("page.css");
    std::fs::write(&f, "body {}").unwrap();
    let m = mount.path.display();
    sh(&format!("setfattr -n user.color -v red {m}/page.css"));
    let refused = sh_output(&format!("setfattr -n {NAME} -v uploaded {m}/page.css"));
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("Operation not permitted"),
        "{refused:?}"
    );
    let dump = sh(&format!("getfattr --absolute-names -d -m - {m}/page.css"));
    assert!(dump.contains("user.color"), "{dump}");
    assert!(!dump.contains("s3mount"), "{dump}");
    let local = tempfile::tempdir().unwrap();
    let l = local.path().display();
    sh(&format!("rsync -X {m}/page.css {l}/rsynced.css"));
    sh(&format!("cp --preserve=xattr {m}/page.css {l}/copied.css"));
    for copy in ["rsynced.css", "copied.css"] {
        let dump = sh(&format!("getfattr --absolute-names -d -m - {l}/{copy}"));
        assert!(dump.contains("user.color=\"red\""), "{copy}: {dump}");
        assert!(!dump.contains("s3mount"), "{copy}: {dump}");
    }
    // Nor is it stored in S3.
    let stored = bucket.head("page.css");
    let header = stored.metadata().and_then(|m| m.get("xattr")).cloned();
    assert!(!header.unwrap_or_default().contains("s3mount"));
    assert!(mount.unmount().success());
}

#[test]
fn names_without_a_namespace_round_trip_as_s3fs_keeps_them() {
    let bucket = TestBucket::new("xattr-plain");
    // s3fs's test suite sets key1; this is what s3fs stores for key1=value1.
    bucket.put_with(
        "theirs.txt",
        "hello",
        Some("text/plain"),
        &[("xattr", "%7B%22key1%22%3A%22dmFsdWUx%22%7D")],
    );
    bucket.put("mine.txt", "hi");
    let mount = Mount::new(&bucket, &[]);
    assert_eq!(xattr(&mount.join("theirs.txt"), "key1"), "value1");
    sh(&format!(
        "setfattr -n key2 -v value2 '{}'",
        mount.join("mine.txt").display()
    ));
    mount.unmount();
    let again = Mount::new(&bucket, &[]);
    assert_eq!(xattr(&again.join("mine.txt"), "key2"), "value2");
    let stored = bucket.head("mine.txt");
    assert_eq!(
        stored
            .metadata()
            .and_then(|m| m.get("xattr"))
            .map(String::as_str),
        Some("%7B%22key2%22%3A%22dmFsdWUy%22%7D")
    );
    assert!(again.unmount().success());
}
