//! Backup scripts and log shipping onto the mount: rsync, tar, appending shell
//! loops, truncate and dd, chmod and touch, each checked against a local copy made
//! by the same program and, where it matters, after a remount.

mod common;

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use common::{Mount, Noise, TestBucket, requests, sh};

fn noise_bytes(noise: &mut Noise, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    noise.fill(&mut buf);
    buf
}

/// Paths of the regular files under `root`, relative to it.
fn files_under(root: &Path) -> BTreeSet<String> {
    sh(&format!(
        "cd '{}' && find . -type f -printf '%P\\n'",
        root.display()
    ))
    .lines()
    .map(str::to_string)
    .collect()
}

/// The object keys that are files (not directory markers).
fn file_keys(bucket: &TestBucket, prefix: &str) -> BTreeSet<String> {
    bucket
        .keys()
        .into_iter()
        .filter(|k| !k.ends_with('/'))
        .map(|k| {
            k.strip_prefix(prefix)
                .unwrap_or_else(|| panic!("key {k} outside {prefix}"))
                .to_string()
        })
        .collect()
}

/// A tree of 2,000 files in nested directories, most small, three over 8 MiB.
fn make_tree(root: &Path) -> Vec<PathBuf> {
    let mut dirs = vec![root.to_path_buf()];
    for a in 0..4 {
        dirs.push(root.join(format!("lvl{a}")));
        for b in 0..4 {
            dirs.push(root.join(format!("lvl{a}/sub{b}")));
            for c in 0..3 {
                dirs.push(root.join(format!("lvl{a}/sub{b}/deep{c}")));
            }
        }
    }
    for d in &dirs {
        std::fs::create_dir_all(d).unwrap();
    }
    let mut noise = Noise::new(2024);
    let sizes = [0, 1, 17, 512, 4096, 9_000, 20_000, 40_000];
    let mut files = Vec::new();
    for i in 0..1997 {
        let path = dirs[i % dirs.len()].join(format!("file{i:04}.dat"));
        let mut pick = [0u8; 1];
        noise.fill(&mut pick);
        let size = sizes[pick[0] as usize % sizes.len()];
        std::fs::write(&path, noise_bytes(&mut noise, size)).unwrap();
        files.push(path);
    }
    for (i, size) in [(8 << 20) + 1, (9 << 20) + 4321, 12 << 20]
        .into_iter()
        .enumerate()
    {
        let path = dirs[1 + i * 5].join(format!("big{i}.bin"));
        std::fs::write(&path, noise_bytes(&mut noise, size)).unwrap();
        files.push(path);
    }
    // Some modes other than the umask's.
    for (i, path) in files.iter().enumerate().step_by(97) {
        let mode = if i % 2 == 0 { 0o600 } else { 0o755 };
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    files
}

/// A cache directory for a test's mounts: a remount on the same machine finds
/// there what s3mount knows of the objects it wrote.
fn cache_dir() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let arg = dir.path().display().to_string();
    (dir, arg)
}

#[test]
fn rsync_backup_round_trips_and_then_syncs_changes() {
    let bucket = TestBucket::new("rsync");
    let (_cache, cache) = cache_dir();
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("s3mount.log");
    let log_arg = log.display().to_string();
    let mount = Mount::new(&bucket, &["--cache-dir", &cache, "--log-file", &log_arg]);
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    let files = make_tree(&src);
    assert_eq!(files.len(), 2000);
    let (s, b) = (src.display(), mount.join("backup"));
    let b = b.display();

    sh(&format!("rsync -a {s}/ {b}/"));
    let again = sh(&format!("rsync -a --itemize-changes {s}/ {b}/"));
    assert_eq!(again, "", "sizes, mtimes or modes did not survive");
    assert_eq!(file_keys(&bucket, "backup/"), files_under(&src));
    let big = &files[1999];
    let key = format!("backup/{}", big.strip_prefix(&src).unwrap().display());
    assert!(bucket.get(&key).unwrap() == std::fs::read(big).unwrap());

    // Change the source: modify (one of them the middle of a big file, size
    // unchanged), add, delete (files and a whole subtree), chmod a file and a
    // directory.
    let rel = |i: usize| files[i].strip_prefix(&src).unwrap().display().to_string();
    sh(&format!(
        "cd {s}
         for f in {} {} {}; do echo appended >> $f; done
         head -c 100000 /dev/urandom | dd of={big1} bs=1000 seek=5000 conv=notrunc status=none
         touch -d '2021-06-01 12:00:00' {big1}
         mkdir -p new/deeper/deepest
         for i in $(seq 1 12); do head -c $((i * 3000)) /dev/urandom > new/deeper/deepest/n$i.txt; done
         echo top > new/top.txt
         rm {} {} lvl3/sub1/deep2/*.dat
         rm -r lvl3/sub3
         chmod 600 {chmod}
         chmod 700 lvl0/sub2",
        rel(0),
        rel(4),
        rel(100),
        rel(2),
        rel(3),
        big1 = rel(1998),
        chmod = rel(5),
    ));
    sh(&format!("rsync -a --delete {s}/ {b}/"));
    let again = sh(&format!("rsync -a --delete --itemize-changes {s}/ {b}/"));
    assert_eq!(again, "", "the synced changes did not survive");
    sh(&format!("diff -r {s} {b}"));
    assert_eq!(
        sh(&format!("cd {b} && stat -c %a {} lvl0/sub2", rel(5))),
        "600\n700\n"
    );
    assert_eq!(file_keys(&bucket, "backup/"), files_under(&src));
    let left: Vec<String> = bucket
        .keys()
        .into_iter()
        .filter(|k| k.starts_with("backup/lvl3/sub3"))
        .collect();
    assert!(
        left.is_empty(),
        "the deleted directory is still there: {left:?}"
    );
    mount.unmount();
    // The three files over 8 MiB went up as multipart uploads (their ETags do
    // not show it: rsync renames its temporary file, and Garage gives the copy
    // of an object with checksums a plain ETag).
    let log = std::fs::read_to_string(log).unwrap();
    let completed = requests(&log, "CompleteMultipartUpload");
    assert!(completed >= 3, "{completed} multipart uploads");

    // What rsync compares survives a remount on this machine, and is in the
    // bucket for one that knows nothing of the objects (a new cache, and
    // --head-listed to read their metadata).
    let (_fresh, fresh) = cache_dir();
    for args in [
        vec!["--cache-dir", cache.as_str()],
        vec!["--cache-dir", fresh.as_str(), "--head-listed"],
    ] {
        let mount = Mount::new(&bucket, &args);
        let b = mount.join("backup");
        let again = sh(&format!(
            "rsync -a --delete --itemize-changes {s}/ {}/",
            b.display()
        ));
        assert_eq!(
            again, "",
            "the backup changed across a remount with {args:?}"
        );
        mount.unmount();
    }
}

/// The biggest cached tokio crate (a gzip tarball), present wherever this project
/// was built.
fn crate_tarball() -> PathBuf {
    let home = std::env::var("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").unwrap()).join(".cargo"));
    let is_tokio = |name: &str| {
        name.strip_prefix("tokio-")
            .is_some_and(|v| v.starts_with(|c: char| c.is_ascii_digit()) && v.ends_with(".crate"))
    };
    let mut found: Vec<(u64, PathBuf)> = Vec::new();
    for registry in std::fs::read_dir(home.join("registry/cache")).expect("cargo cache") {
        for entry in std::fs::read_dir(registry.unwrap().path()).unwrap() {
            let entry = entry.unwrap();
            if is_tokio(&entry.file_name().to_string_lossy()) {
                found.push((entry.metadata().unwrap().len(), entry.path()));
            }
        }
    }
    found.sort();
    found.pop().expect("no tokio crate in the cargo cache").1
}

/// `path size mode mtime` of every file under `root`, sorted.
fn file_listing(root: &Path) -> String {
    sh(&format!(
        "cd '{}' && find . -type f -printf '%P %s %m %T@\\n' | sort",
        root.display()
    ))
}

#[test]
fn tar_extraction_matches_a_local_one_and_survives_a_remount() {
    let bucket = TestBucket::new("tar");
    let (_cache, cache) = cache_dir();
    let mount = Mount::new(&bucket, &["--cache-dir", &cache]);
    let work = tempfile::tempdir().unwrap();
    let tarball = crate_tarball();
    let (t, w) = (tarball.display(), work.path().display());
    let local = work.path().join("local");
    sh(&format!("mkdir {w}/local && tar xzf {t} -C {w}/local"));
    let listing = file_listing(&local);
    assert!(listing.lines().count() > 200, "{t} is too small: {listing}");

    sh(&format!(
        "mkdir {m}/src && tar xzf {t} -C {m}/src",
        m = mount.path.display()
    ));
    let on_mount = mount.join("src");
    sh(&format!(
        "diff -r {} {}",
        local.display(),
        on_mount.display()
    ));
    assert_eq!(file_listing(&on_mount), listing);
    mount.unmount();

    // Remounted on this machine, and on one that knows nothing of the objects
    // (a new cache; --head-listed reads their metadata from the bucket).
    let (_fresh, fresh) = cache_dir();
    for args in [
        vec!["--cache-dir", cache.as_str()],
        vec!["--cache-dir", fresh.as_str(), "--head-listed"],
    ] {
        let mount = Mount::new(&bucket, &args);
        let on_mount = mount.join("src");
        sh(&format!(
            "diff -r {} {}",
            local.display(),
            on_mount.display()
        ));
        assert_eq!(file_listing(&on_mount), listing, "mounted with {args:?}");
        mount.unmount();
    }
}

#[test]
fn appends_from_a_shell_loop_build_the_whole_log() {
    let bucket = TestBucket::new("append");
    let mount = Mount::new(&bucket, &[]);
    let work = tempfile::tempdir().unwrap();
    let mut noise = Noise::new(99);
    let mut expected = Vec::new();
    // About 11 MiB in all: the last appends go to an object over 8 MiB.
    for i in 1..=100usize {
        let mut chunk = format!("entry {i}: ").into_bytes();
        let body: Vec<u8> = noise_bytes(&mut noise, 2000 + i * 2311)
            .into_iter()
            .map(|b| b'a' + b % 26)
            .collect();
        chunk.extend(body);
        chunk.push(b'\n');
        std::fs::write(work.path().join(format!("chunk{i}")), &chunk).unwrap();
        expected.extend(chunk);
    }
    let (w, m) = (work.path().display(), mount.path.display());
    sh(&format!(
        "mkdir {m}/logs
         for i in $(seq 1 100); do cat {w}/chunk$i >> {m}/logs/app.log; done"
    ));
    assert_eq!(std::fs::read(mount.join("logs/app.log")).unwrap(), expected);
    assert_eq!(bucket.get("logs/app.log").unwrap(), expected);
    assert_eq!(bucket.keys(), ["logs/", "logs/app.log"]);
    mount.unmount();
}

#[test]
fn truncate_and_dd_overwrites_match_a_local_model() {
    let bucket = TestBucket::new("dd");
    let work = tempfile::tempdir().unwrap();
    let mut noise = Noise::new(48);
    let original = noise_bytes(&mut noise, 48 << 20);
    bucket.put("data/big.bin", original.clone());
    let model = work.path().join("model");
    std::fs::write(&model, &original).unwrap();
    std::fs::write(work.path().join("patch"), noise_bytes(&mut noise, 4 << 20)).unwrap();
    let mount = Mount::new(&bucket, &[]);
    let file = mount.join("data/big.bin");

    // Each step runs the same command on the model and on the mount.
    let steps = [
        "truncate -s 41000000 FILE",
        "truncate -s 56M FILE",
        "dd if=PATCH of=FILE conv=notrunc bs=4096 seek=3 count=5 status=none",
        // Across the first 8 MiB part boundary.
        "dd if=PATCH of=FILE conv=notrunc bs=1000 skip=7 seek=8388 count=10 status=none",
        // Into the zeros the grow added.
        "dd if=PATCH of=FILE conv=notrunc bs=64k skip=3 seek=700 count=16 status=none",
        // Past the end: the file grows with a hole.
        "dd if=PATCH of=FILE conv=notrunc bs=1M skip=1 seek=60 count=2 status=none",
        "truncate -s 61000000 FILE",
    ];
    let patch = work.path().join("patch").display().to_string();
    let on = |step: &str, path: &Path| {
        step.replace("PATCH", &patch)
            .replace("FILE", &path.display().to_string())
    };
    for step in steps {
        sh(&format!("{} && {}", on(step, &model), on(step, &file)));
        sh(&format!("cmp {} {}", model.display(), file.display()));
    }
    let model_bytes = std::fs::read(&model).unwrap();
    assert_eq!(model_bytes.len(), 61_000_000);
    assert!(bucket.get("data/big.bin").unwrap() == model_bytes);
    mount.unmount();

    let mount = Mount::new(&bucket, &[]);
    sh(&format!(
        "cmp {} {}",
        model.display(),
        mount.join("data/big.bin").display()
    ));
    assert_eq!(bucket.keys(), ["data/big.bin"]);
    mount.unmount();
}

#[test]
fn chmod_and_touch_survive_a_remount() {
    let bucket = TestBucket::new("chmod");
    bucket.put("from-sdk.txt", "put by another tool\n");
    let mount = Mount::new(&bucket, &[]);
    let m = mount.path.display();
    sh(&format!("echo 'written here' > {m}/local.txt"));
    let when = "2020-01-02 03:04:05";
    sh(&format!(
        "cd {m}
         chmod 600 from-sdk.txt local.txt
         TZ=UTC0 touch -m -d '{when}' from-sdk.txt local.txt"
    ));
    let expected_mtime = sh(&format!("TZ=UTC0 date -d '{when}' +%s"));
    let expected = format!("600 {0}600 {0}", expected_mtime);
    assert_eq!(
        sh(&format!("cd {m} && stat -c '%a %Y' from-sdk.txt local.txt")),
        expected
    );
    mount.unmount();

    let mount = Mount::new(&bucket, &[]);
    let m = mount.path.display();
    assert_eq!(
        sh(&format!("cd {m} && stat -c '%a %Y' from-sdk.txt local.txt")),
        expected
    );
    // Only the metadata changed.
    assert_eq!(
        bucket.get("from-sdk.txt").unwrap(),
        b"put by another tool\n"
    );
    assert_eq!(bucket.get("local.txt").unwrap(), b"written here\n");
    mount.unmount();
}
