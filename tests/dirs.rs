//! Directories as key prefixes through a real mount.

mod common;

use common::{Mount, TestBucket, requests, sh, sh_output};

#[test]
fn ten_thousand_objects_list_completely() {
    let bucket = TestBucket::new("tenk");
    bucket.put_many((0..10_000).map(|i| format!("logs/host1/app-{i:05}.log")));
    bucket.put_many((0..20).map(|i| format!("logs/host1/sub{}/x", i % 4)));
    // ls -l first, on a mount of its own: the listing has all it shows, ACLs
    // included, so there is no request per entry.
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("s3mount.log");
    let mount = Mount::new(&bucket, &["--log-file", log.to_str().unwrap()]);
    let long = sh(&format!(
        "ls -l {}/logs/host1 | grep -c '^-'",
        mount.path.display()
    ));
    assert_eq!(long.trim(), "10000");
    mount.unmount();
    let log = std::fs::read_to_string(&log).unwrap();
    let heads = requests(&log, "HeadObject ");
    assert!(heads < 20, "{heads} HEADs for ls -l of 10,000 objects");

    let mount = Mount::new(&bucket, &[]);
    let m = mount.path.display();
    assert_eq!(sh(&format!("ls {m}/logs/host1 | wc -l")).trim(), "10004");
    assert_eq!(
        sh(&format!("ls {m}/logs/host1/*.log | wc -l")).trim(),
        "10000"
    );
    // A rewinding reader (ls -l) sees the same entries.
    let long = sh(&format!("ls -l {m}/logs/host1 | grep -c '^-'"));
    assert_eq!(long.trim(), "10000");
    mount.unmount();
}

#[test]
fn find_walks_nested_prefixes() {
    let bucket = TestBucket::new("find");
    for key in [
        "a/b/c/d.txt",
        "a/b/e.txt",
        "a/f/",
        "g.txt",
        "s3fs_$folder$",
        "s3fs/inner",
    ] {
        bucket.put(key, "x");
    }
    let mount = Mount::new(&bucket, &[]);
    let out = sh(&format!("cd {} && find . | sort", mount.path.display()));
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        [
            ".",
            "./a",
            "./a/b",
            "./a/b/c",
            "./a/b/c/d.txt",
            "./a/b/e.txt",
            "./a/f",
            "./g.txt",
            "./s3fs",
            "./s3fs/inner"
        ]
    );
    let files = sh(&format!("find {} -type f | wc -l", mount.path.display()));
    assert_eq!(files.trim(), "4");
    mount.unmount();
}

#[test]
fn file_and_directory_of_the_same_name_show_the_directory() {
    let bucket = TestBucket::new("clash");
    bucket.put("same", "file");
    bucket.put("same/inside", "x");
    let mount = Mount::new(&bucket, &[]);
    let m = mount.path.display();
    assert_eq!(sh(&format!("ls {m}")).trim(), "same");
    assert!(mount.join("same").is_dir());
    assert_eq!(sh(&format!("ls {m}/same")).trim(), "inside");
    mount.unmount();
}

#[test]
fn mkdir_rmdir_and_rm_survive_a_remount() {
    let bucket = TestBucket::new("remount");
    let mount = Mount::new(&bucket, &[]);
    let m = mount.path.display();
    sh(&format!(
        "mkdir -p {m}/empty {m}/full/deeper && echo data > {m}/full/deeper/f && echo gone > {m}/gone"
    ));
    let out = sh_output(&format!("rmdir {m}/full"));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("Directory not empty"));
    sh(&format!("rm {m}/gone"));
    mount.unmount();

    assert_eq!(
        bucket.keys(),
        ["empty/", "full/", "full/deeper/", "full/deeper/f"]
    );
    let mount = Mount::new(&bucket, &[]);
    let m = mount.path.display();
    // The empty directory survived; the removed file did not come back.
    assert_eq!(
        sh(&format!("ls {m}"))
            .split_whitespace()
            .collect::<Vec<_>>(),
        ["empty", "full"]
    );
    assert_eq!(sh(&format!("cat {m}/full/deeper/f")), "data\n");
    sh(&format!("rmdir {m}/empty && rm -r {m}/full"));
    assert_eq!(sh(&format!("ls -A {m} | wc -l")).trim(), "0");
    mount.unmount();
    assert!(bucket.keys().is_empty(), "{:?}", bucket.keys());
}

/// rm -rf reads a directory while it removes what it read: every entry that
/// stays must still come, exactly once, whatever the kernel's readdir buffers
/// hold, at the default TTL and at 0.
#[test]
fn rm_rf_of_a_directory_made_through_the_mount_removes_everything() {
    let bucket = TestBucket::new("rmrf");
    for ttl in ["1s", "0"] {
        let mount = Mount::new(&bucket, &["--metadata-ttl", ttl]);
        let m = mount.path.display();
        sh(&format!(
            "mkdir {m}/d && cd {m}/d && for i in $(seq 300); do touch $i; done && ls > /dev/null"
        ));
        let out = sh_output(&format!("rm -rf {m}/d"));
        assert!(
            out.status.success(),
            "rm -rf at TTL {ttl}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!mount.join("d").exists());
        mount.unmount();
        assert_eq!(bucket.keys(), Vec::<String>::new(), "at TTL {ttl}");
    }
}

/// The same over several listing pages and while other entries are created.
#[test]
fn readdir_while_entries_are_removed_and_created_returns_each_staying_entry_once() {
    let bucket = TestBucket::new("rdchg");
    bucket.put_many((0..2500).map(|i| format!("d/{i:05}")));
    let mount = Mount::new(&bucket, &[]);
    let d = mount.join("d");
    let mut seen = std::collections::BTreeMap::<String, u32>::new();
    let mut removed = std::collections::BTreeSet::new();
    for (n, entry) in std::fs::read_dir(&d).unwrap().enumerate() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        *seen.entry(name.clone()).or_default() += 1;
        // Every other entry read is removed, and a new one made, as the read goes.
        if n % 2 == 0 {
            std::fs::remove_file(d.join(&name)).unwrap();
            removed.insert(name);
            std::fs::write(d.join(format!("new-{n:05}")), "x").unwrap();
        }
    }
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "read twice: {twice:?}");
    let missed: Vec<String> = (0..2500)
        .map(|i| format!("{i:05}"))
        .filter(|name| !seen.contains_key(name))
        .collect();
    assert!(
        missed.is_empty(),
        "{} entries never read: {missed:?}",
        missed.len()
    );
    // One file made for each removed: as many entries as at the start.
    let left = std::fs::read_dir(&d).unwrap().count();
    assert_eq!(left, 2500, "after the read");
    mount.unmount();
}
