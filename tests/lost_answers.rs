//! Answers lost after the server acted, one request at a time: the fault proxy
//! lets the request through, then answers 500. The mount's retry then meets
//! its own first attempt's effect, which must be taken for success: no error
//! reaches the program, and no conflict copy is made of our own upload.

mod common;

use std::io::Write;
use std::os::unix::fs::PermissionsExt;

use common::faults::{FaultProxy, Rates};
use common::{Mount, Noise, S3Env, TestBucket, close};

/// A mount of `bucket` through a proxy that loses the answer of the first
/// request the `only` options pick.
fn losing(bucket: &TestBucket, only: &[&str]) -> (FaultProxy, Mount) {
    let mut only = only.to_vec();
    only.extend(["--max-faults", "1"]);
    let proxy = FaultProxy::narrowed(&bucket.env, 1, Rates::lost(), 0, &only);
    let mount = Mount::source(&proxy.env, &bucket.name, &[]);
    (proxy, mount)
}

fn assert_one_lost(proxy: &FaultProxy) {
    assert_eq!(
        proxy.injected().get("lost").copied(),
        Some(1),
        "the fault was met"
    );
}

fn no_conflict_copy(bucket: &TestBucket) {
    let keys = bucket.keys();
    assert!(
        !keys.iter().any(|k| k.contains(".conflict-")),
        "a conflict copy of our own upload: {keys:?}"
    );
}

/// Garage ignores If-None-Match, moto enforces it: there the retry meets 412.
fn put_lost(env: S3Env, tag: &str) {
    let bucket = TestBucket::on(env, tag);
    let (proxy, mount) = losing(&bucket, &["--only-method", "PUT"]);
    let mut f = std::fs::File::create(mount.join("style.css")).unwrap();
    f.write_all(b"body { color: teal }\n").unwrap();
    close(f).expect("close succeeds");
    assert_one_lost(&proxy);
    assert!(mount.unmount().success());
    assert_eq!(
        bucket.get("style.css").as_deref(),
        Some(&b"body { color: teal }\n"[..])
    );
    no_conflict_copy(&bucket);
}

#[test]
fn a_put_whose_answer_was_lost_is_no_error_on_garage() {
    put_lost(S3Env::from_env(), "lostput");
}

#[test]
fn a_conditional_put_whose_answer_was_lost_is_no_error_on_a_server_that_enforces_it() {
    put_lost(S3Env::moto(), "lostcond");
}

#[test]
fn a_completion_whose_answer_was_lost_is_no_error() {
    let bucket = TestBucket::new("lostdone");
    let (proxy, mount) = losing(
        &bucket,
        &["--only-method", "POST", "--only-query", "uploadId"],
    );
    let mut data = vec![0u8; 20 << 20];
    Noise::new(9).fill(&mut data);
    let mut f = std::fs::File::create(mount.join("backup.tar")).unwrap();
    f.write_all(&data).unwrap();
    close(f).expect("close succeeds");
    assert_one_lost(&proxy);
    assert!(mount.unmount().success());
    assert!(
        bucket.get("backup.tar").unwrap() == data,
        "the object is ours"
    );
    no_conflict_copy(&bucket);
}

#[test]
fn a_delete_whose_answer_was_lost_is_no_error() {
    let bucket = TestBucket::new("lostdel");
    bucket.put("old.log", "x");
    let (proxy, mount) = losing(&bucket, &["--only-method", "DELETE"]);
    std::fs::remove_file(mount.join("old.log")).expect("rm succeeds");
    assert!(!mount.join("old.log").exists());
    assert_one_lost(&proxy);
    assert!(mount.unmount().success());
    assert_eq!(bucket.keys(), Vec::<String>::new());
}

#[test]
fn a_copy_whose_answer_was_lost_is_no_error_for_chmod_or_rename() {
    let bucket = TestBucket::new("lostcopy");
    bucket.put("a.html", "<p>a</p>");
    bucket.put("b.html", "<p>b</p>");
    for (n, step) in ["chmod", "rename"].into_iter().enumerate() {
        let (proxy, mount) = losing(&bucket, &["--only-header", "x-amz-copy-source"]);
        if n == 0 {
            let perms = std::fs::Permissions::from_mode(0o600);
            std::fs::set_permissions(mount.join("a.html"), perms).expect("chmod succeeds");
        } else {
            std::fs::rename(mount.join("b.html"), mount.join("c.html")).expect("mv succeeds");
        }
        assert_one_lost(&proxy);
        assert!(mount.unmount().success(), "{step}");
    }
    let mode = bucket.head("a.html").metadata().unwrap()["mode"].clone();
    assert_eq!(mode.parse::<u32>().unwrap() & 0o777, 0o600);
    assert_eq!(bucket.keys(), ["a.html", "c.html"]);
    assert_eq!(bucket.get("c.html").as_deref(), Some(&b"<p>b</p>"[..]));
}

#[test]
fn a_directory_marker_whose_answer_was_lost_is_no_error() {
    let bucket = TestBucket::new("lostdir");
    let (proxy, mount) = losing(&bucket, &["--only-method", "PUT"]);
    std::fs::create_dir(mount.join("site")).expect("mkdir succeeds");
    assert!(mount.join("site").is_dir());
    assert_one_lost(&proxy);
    assert!(mount.unmount().success());
    assert!(bucket.keys().contains(&"site/".to_string()));
}
