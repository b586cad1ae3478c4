//! Buckets shared with s3fs and other tools, through a real mount: what they
//! wrote (devices, old directory objects, directories without a marker) reads
//! right, and what s3mount writes carries s3fs's headers. Also the rest of the
//! POSIX surface such buckets meet: directory times, long names, hard links,
//! and how soon other writers' new files are seen.

mod common;

use std::collections::BTreeSet;
use std::time::{SystemTime, UNIX_EPOCH};

use common::{Mount, TestBucket, sh, sh_output};

/// The user-metadata names of an object.
fn metadata_names(bucket: &TestBucket, key: &str) -> BTreeSet<String> {
    bucket
        .head(key)
        .metadata()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default()
}

fn metadata(bucket: &TestBucket, key: &str, name: &str) -> Option<String> {
    bucket
        .head(key)
        .metadata()
        .and_then(|m| m.get(name).cloned())
}

fn names(list: &[&str]) -> BTreeSet<String> {
    list.iter().map(|s| s.to_string()).collect()
}

fn epoch_secs(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

#[test]
fn what_s3mount_writes_carries_s3fs_headers() {
    let bucket = TestBucket::new("s3fs-out");
    let mount = Mount::new(&bucket, &[]);
    let m = mount.path.display();
    sh(&format!(
        "mkdir {m}/d && echo x > {m}/d/f && mknod {m}/tty c 5 1 && mkfifo {m}/pipe && ln -s d/f {m}/link"
    ));
    mount.unmount();
    let posix = names(&["mode", "uid", "gid", "atime", "mtime", "ctime"]);
    assert_eq!(
        bucket.content_type("d/").as_deref(),
        Some("application/x-directory")
    );
    assert_eq!(metadata_names(&bucket, "d/"), posix);
    assert_eq!(metadata_names(&bucket, "d/f"), posix);
    assert_eq!(metadata_names(&bucket, "link"), posix);
    assert_eq!(bucket.get("link").unwrap(), b"d/f");
    let mut device = posix.clone();
    device.insert("rdev".into());
    assert_eq!(metadata_names(&bucket, "tty"), device);
    assert_eq!(metadata(&bucket, "tty", "rdev").as_deref(), Some("1281"));
    let mode = |key| metadata(&bucket, key, "mode").and_then(|m| m.parse::<u32>().ok());
    assert_eq!(mode("tty").map(|m| m & libc::S_IFMT), Some(libc::S_IFCHR));
    assert_eq!(mode("pipe").map(|m| m & libc::S_IFMT), Some(libc::S_IFIFO));
    assert_eq!(mode("link").map(|m| m & libc::S_IFMT), Some(libc::S_IFLNK));
}

#[test]
fn devices_old_directories_and_implicit_directories_other_tools_wrote_read_right() {
    let bucket = TestBucket::new("s3fs-in");
    let chr = (libc::S_IFCHR | 0o620).to_string();
    bucket.put_with("tty0", "", None, &[("mode", &chr), ("rdev", "1025")]);
    let blk = (libc::S_IFBLK | 0o660).to_string();
    bucket.put_with("sda", "", None, &[("mode", &blk), ("rdev", "2048")]);
    // s3fs's old directory form: `olddir`, no slash, with its Content-Type.
    bucket.put_with(
        "olddir",
        "",
        Some("application/x-directory"),
        &[("mode", "16872"), ("uid", "0"), ("gid", "0")],
    );
    // A directory with no marker: what the AWS CLI leaves.
    bucket.put("implicit/a", "1");
    bucket.put("implicit/b", "2");
    let newest = ["implicit/a", "implicit/b"]
        .iter()
        .filter_map(|k| bucket.head(k).last_modified().map(|t| t.secs()))
        .max()
        .unwrap();
    let mount = Mount::new(&bucket, &[]);
    let m = mount.path.display();
    assert_eq!(
        sh(&format!("stat -c '%F %t %T %a' {m}/tty0")).trim(),
        "character special file 4 1 620"
    );
    assert_eq!(
        sh(&format!("stat -c '%F %t %T' {m}/sda")).trim(),
        "block special file 8 0"
    );
    // The mount is nodev: a device node is never opened as one.
    assert!(!sh_output(&format!("head -c1 {m}/tty0")).status.success());
    assert_eq!(
        sh(&format!("stat -c '%F %a' {m}/olddir")).trim(),
        "directory 750"
    );
    assert_eq!(sh(&format!("ls -A {m}/olddir")), "");
    // A chmod rewrites it as s3fs does now: `olddir/`.
    sh(&format!("chmod 700 {m}/olddir"));
    let keys = bucket.keys();
    assert!(keys.contains(&"olddir/".to_string()), "{keys:?}");
    assert!(!keys.contains(&"olddir".to_string()), "{keys:?}");
    assert_eq!(
        bucket.content_type("olddir/").as_deref(),
        Some("application/x-directory")
    );
    // The implicit directory: the mount's mode, the time of its newest object.
    sh(&format!("ls {m}/implicit"));
    let out = sh(&format!("stat -c '%a %Y' {m}/implicit"));
    let (perm, mtime) = out.trim().split_once(' ').unwrap();
    assert_eq!(perm, "755");
    assert_eq!(mtime.parse::<i64>().unwrap(), newest);
    mount.unmount();
}

#[test]
fn directory_times_follow_their_entries_and_survive_a_remount() {
    let bucket = TestBucket::new("dir-times");
    let mount = Mount::new(&bucket, &[]);
    let m = mount.path.display();
    let stat = |what: &str| -> (i64, i64) {
        let out = sh(&format!("stat -c '%Y %Z' {m}/{what}"));
        let (a, b) = out.trim().split_once(' ').unwrap();
        (a.parse().unwrap(), b.parse().unwrap())
    };
    sh(&format!("mkdir {m}/d && touch -d @1000000000 {m}/d"));
    assert_eq!(stat("d").0, 1_000_000_000);
    let now = epoch_secs(SystemTime::now());
    sh(&format!("echo x > {m}/d/f"));
    let (mtime, ctime) = stat("d");
    assert!(mtime >= now && ctime >= now, "a create: {mtime} {ctime}");
    sh(&format!("touch -d @1000000000 {m}/d && rm {m}/d/f"));
    assert!(stat("d").0 >= now, "a removal");
    sh(&format!(
        "touch -d @1000000000 {m}/d && mkdir {m}/e && mv {m}/e {m}/d/e"
    ));
    assert!(stat("d").0 >= now, "a rename into it");
    // chmod and setxattr change the ctime alone.
    sh(&format!("touch -d @1000000000 {m}/d"));
    let before = stat("d").1;
    sh(&format!("chmod 700 {m}/d && setfattr -n user.x -v 1 {m}/d"));
    assert_eq!(stat("d").0, 1_000_000_000);
    assert!(stat("d").1 >= before);
    sh(&format!("echo y > {m}/d/g"));
    let last = stat("d");
    mount.unmount();
    let again = Mount::new(&bucket, &[]);
    let m = again.path.display();
    let out = sh(&format!("stat -c '%Y %Z' {m}/d"));
    assert_eq!(out.trim(), format!("{} {}", last.0, last.1));
    again.unmount();
}

#[test]
fn long_names_fit_up_to_s3s_key_limit_and_hard_links_are_not_supported() {
    let bucket = TestBucket::new("names");
    let mount = Mount::new(&bucket, &[]);
    let m = mount.path.display();
    let long = "n".repeat(1000);
    sh(&format!("echo x > {m}/{long} && mkdir {m}/{long}.d"));
    assert!(bucket.keys().contains(&long));
    assert_eq!(sh(&format!("ls {m} | grep -c nnnn")).trim(), "2");
    // NAME_MAX says what fits where: here, 1,023 bytes (a directory adds `/`).
    assert_eq!(sh(&format!("getconf NAME_MAX {m}")).trim(), "1023");
    let too_long = "n".repeat(1024);
    let out = sh_output(&format!("touch {m}/{too_long}"));
    assert!(String::from_utf8_lossy(&out.stderr).contains("File name too long"));
    sh(&format!("echo x > {m}/a"));
    let out = sh_output(&format!("ln {m}/a {m}/b"));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Operation not supported"),
        "{out:?}"
    );
    mount.unmount();
}

#[test]
fn the_negative_ttl_says_how_soon_other_writers_new_files_are_seen() {
    let bucket = TestBucket::new("neg-ttl");
    let eager = Mount::new(
        &bucket,
        &["--metadata-ttl", "1h", "--negative-metadata-ttl", "0"],
    );
    let lazy = Mount::new(
        &bucket,
        &["--metadata-ttl", "1h", "--negative-metadata-ttl", "1h"],
    );
    for m in [&eager, &lazy] {
        assert!(!m.join("late").exists());
        assert!(!m.join("d").exists());
    }
    bucket.put("late", "x");
    bucket.put("d/inner", "y");
    assert!(eager.join("late").exists(), "a missing name is asked again");
    assert!(eager.join("d/inner").exists());
    assert!(!lazy.join("late").exists(), "a missing name is trusted");
    eager.unmount();
    lazy.unmount();
}
