//! Bad input at mount time: a clear one-line error and a non-zero exit, in time.

mod common;

use std::net::TcpListener;
use std::process::Output;

use common::{FAIL_LIMIT, Mount, S3Env, TestBucket, assert_fails_with, mount_failing, run_bounded};

fn mount_in_background(env: &S3Env, source: &str, mountpoint: &std::path::Path) -> Output {
    mount_failing(env, source, mountpoint, &[])
}

#[test]
fn missing_mountpoint() {
    let env = S3Env::from_env();
    let dir = tempfile::tempdir().unwrap();
    let out = mount_in_background(&env, "any", &dir.path().join("nope"));
    assert_fails_with(&out, "does not exist");
}

#[test]
fn mountpoint_that_is_a_file() {
    let env = S3Env::from_env();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("f");
    std::fs::write(&file, "").unwrap();
    let out = mount_in_background(&env, "any", &file);
    assert_fails_with(&out, "is not a directory");
}

#[test]
fn mountpoint_already_mounted() {
    let bucket = TestBucket::new("twice");
    let mount = Mount::new(&bucket, &[]);
    let out = mount_in_background(&bucket.env, &bucket.name, &mount.path);
    assert_fails_with(&out, "already mounted");
    mount.unmount();
}

#[test]
fn bucket_that_does_not_exist() {
    let env = S3Env::from_env();
    let dir = tempfile::tempdir().unwrap();
    let out = mount_in_background(&env, "no-such-bucket-here", dir.path());
    assert_fails_with(&out, "bucket no-such-bucket-here does not exist");
    assert!(!common::is_mounted(dir.path()));
}

#[test]
fn wrong_credentials() {
    let bucket = TestBucket::new("creds");
    let mut env = bucket.env.clone();
    env.secret_key = "0".repeat(64);
    let dir = tempfile::tempdir().unwrap();
    let out = mount_in_background(&env, &bucket.name, dir.path());
    assert_fails_with(&out, "access denied");
    let mut env = bucket.env.clone();
    env.access_key = "GK000000000000000000000000".into();
    let out = mount_in_background(&env, &bucket.name, dir.path());
    assert_fails_with(&out, "check the credentials");
}

#[test]
fn endpoint_that_refuses_connections() {
    let mut env = S3Env::from_env();
    // A port that was free a moment ago: nothing listens there.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    env.endpoint = format!("http://127.0.0.1:{port}");
    let dir = tempfile::tempdir().unwrap();
    let out = mount_in_background(&env, "b", dir.path());
    assert_fails_with(&out, &format!("cannot reach http://127.0.0.1:{port}"));
}

#[test]
fn endpoint_that_never_answers() {
    let mut env = S3Env::from_env();
    // Accepts connections (the kernel's backlog does) but never answers a request.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    env.endpoint = format!("http://{}", silent.local_addr().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let out = mount_in_background(&env, "b", dir.path());
    assert_fails_with(&out, "no answer from");
}

#[test]
fn bad_source_and_options() {
    let env = S3Env::from_env();
    let dir = tempfile::tempdir().unwrap();
    let out = mount_in_background(&env, "a/b", dir.path());
    assert_fails_with(&out, "is not BUCKET or BUCKET:PREFIX");
    let mut cmd = env.command();
    cmd.args(["b", "/tmp", "--file-mode", "999"]);
    let out = run_bounded(cmd, FAIL_LIMIT);
    assert_eq!(out.status.code(), Some(2), "clap's usage error");
    assert!(String::from_utf8_lossy(&out.stderr).contains("octal"));
}

#[test]
fn background_mount_returns_when_ready_and_unmounts() {
    let bucket = TestBucket::new("daemon");
    bucket.put("hello.txt", "hi");
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let out = mount_in_background(&bucket.env, &bucket.name, &mnt);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Mounted by the time the command returned: no waiting.
    assert!(common::is_mounted(&mnt));
    assert_eq!(
        std::fs::read_to_string(mnt.join("hello.txt")).unwrap(),
        "hi"
    );
    common::sh(&format!("fusermount3 -u '{}'", mnt.display()));
    assert!(!common::is_mounted(&mnt));
}
