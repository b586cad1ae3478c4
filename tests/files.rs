//! Files through a real mount: cp in and out, rm, mv, fsync, objects written by
//! other tools, and what close() says when an upload fails.

mod common;

use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant};

use common::{Mount, Noise, TestBucket, bytes_received, requests, sh, wait_until};

#[test]
fn cp_in_and_out_keeps_bytes_and_sets_content_type() {
    let bucket = TestBucket::new("cp");
    let mount = Mount::new(&bucket, &[]);
    let work = tempfile::tempdir().unwrap();
    let (w, m) = (work.path().display(), mount.path.display());
    sh(&format!(
        "head -c 3000000 /dev/urandom > {w}/photo.jpg; printf 'body {{}}' > {w}/style.css
         mkdir {m}/site
         cp {w}/photo.jpg {w}/style.css {m}/site/
         cp {m}/site/photo.jpg {w}/back.jpg
         cmp {w}/photo.jpg {w}/back.jpg"
    ));
    assert_eq!(bucket.get("site/style.css").unwrap(), b"body {}");
    assert_eq!(
        bucket.content_type("site/style.css").as_deref(),
        Some("text/css")
    );
    assert_eq!(
        bucket.content_type("site/photo.jpg").as_deref(),
        Some("image/jpeg")
    );
    assert_eq!(
        bucket.get("site/photo.jpg").unwrap(),
        std::fs::read(work.path().join("photo.jpg")).unwrap()
    );
    assert_eq!(
        std::fs::metadata(mount.join("site/photo.jpg"))
            .unwrap()
            .len(),
        3_000_000
    );
    // sha256sum through the mount agrees with the local copy.
    let sums = sh(&format!(
        "cd {w} && sha256sum photo.jpg; cd {m}/site && sha256sum photo.jpg"
    ));
    let lines: Vec<&str> = sums.lines().collect();
    assert_eq!(lines[0], lines[1]);
    mount.unmount();
}

#[test]
fn one_gib_round_trip() {
    let bucket = TestBucket::new("gib");
    let mount = Mount::new(&bucket, &[]);
    let work = tempfile::tempdir().unwrap();
    let (w, m) = (work.path().display(), mount.path.display());
    sh(&format!("head -c 1G /dev/urandom > {w}/big"));
    let t = Instant::now();
    sh(&format!("cp {w}/big {m}/big"));
    let cp_in = t.elapsed();
    let t = Instant::now();
    sh(&format!("cp {m}/big {w}/back"));
    let cp_out = t.elapsed();
    sh(&format!("cmp {w}/big {w}/back"));
    // Figures for the record; the benchmark script does the timing comparisons.
    eprintln!(
        "1 GiB cp in: {:.1} s, cp out: {:.1} s",
        cp_in.as_secs_f64(),
        cp_out.as_secs_f64()
    );
    assert_eq!(bucket.keys(), ["big"]);
    mount.unmount();
}

#[test]
fn rm_and_mv_change_the_bucket() {
    let bucket = TestBucket::new("rmmv");
    bucket.put("a.txt", "alpha");
    bucket.put("dir/b.txt", "beta");
    let mount = Mount::new(&bucket, &[]);
    let m = mount.path.display();
    sh(&format!("mv {m}/a.txt {m}/dir/a2.txt && rm {m}/dir/b.txt"));
    assert_eq!(bucket.keys(), ["dir/a2.txt"]);
    assert_eq!(bucket.get("dir/a2.txt").unwrap(), b"alpha");
    // A directory moves too, key by key (it had no marker, and gets none).
    sh(&format!("mkdir {m}/new && mv {m}/dir {m}/new/"));
    assert_eq!(bucket.keys(), ["new/", "new/dir/a2.txt"]);
    assert!(sh(&format!("ls {m}")).split_whitespace().eq(["new"]));
    mount.unmount();
}

#[test]
fn objects_from_other_tools_appear_and_changes_are_seen() {
    let bucket = TestBucket::new("other");
    bucket.put("report.txt", "version 1");
    // TTL 0: every open asks S3, so no waiting is needed to see a change.
    let mount = Mount::new(&bucket, &["--metadata-ttl", "0s"]);
    let f = mount.join("report.txt");
    assert_eq!(std::fs::read_to_string(&f).unwrap(), "version 1");
    bucket.put("report.txt", "version 2, longer");
    assert_eq!(std::fs::read_to_string(&f).unwrap(), "version 2, longer");
    bucket.put("later.txt", "new");
    assert_eq!(
        std::fs::read_to_string(mount.join("later.txt")).unwrap(),
        "new"
    );
    mount.unmount();
}

#[test]
fn fsync_uploads_before_close() {
    let bucket = TestBucket::new("fsync");
    let mount = Mount::new(&bucket, &[]);
    let mut f = std::fs::File::create(mount.join("log.txt")).unwrap();
    f.write_all(b"line 1\n").unwrap();
    assert_eq!(
        bucket.get("log.txt"),
        None,
        "uploaded before fsync or close"
    );
    f.sync_all().unwrap();
    assert_eq!(bucket.get("log.txt").unwrap(), b"line 1\n");
    drop(f);
    mount.unmount();
}

#[test]
fn stat_shows_size_mode_and_owner() {
    let bucket = TestBucket::new("stat");
    bucket.put("x/y.bin", vec![1u8; 12345]);
    let mount = Mount::new(
        &bucket,
        &["--uid", "1234", "--gid", "2345", "--file-mode", "0640"],
    );
    let md = std::fs::metadata(mount.join("x/y.bin")).unwrap();
    assert_eq!(md.len(), 12345);
    assert_eq!(md.mode() & 0o7777, 0o640);
    assert_eq!((md.uid(), md.gid()), (1234, 2345));
    let dir = std::fs::metadata(mount.join("x")).unwrap();
    assert!(dir.is_dir());
    assert_eq!(dir.mode() & 0o7777, 0o755);
    let df = sh(&format!("df -P {}", mount.path.display()));
    assert!(df.contains("s3mount:"), "{df}");
    mount.unmount();
}

#[test]
fn prefix_mount_sees_only_its_keys() {
    let bucket = TestBucket::new("prefix");
    bucket.put("site/index.html", "<html>");
    bucket.put("other/secret", "no");
    let env = bucket.env.clone();
    let mount = Mount::source(&env, &format!("{}:site", bucket.name), &[]);
    let m = mount.path.display();
    assert_eq!(sh(&format!("ls {m}")).trim(), "index.html");
    sh(&format!("echo hi > {m}/new.txt"));
    assert_eq!(bucket.get("site/new.txt").unwrap(), b"hi\n");
    mount.unmount();
}

#[test]
fn read_only_mount_refuses_writes() {
    let bucket = TestBucket::new("ro");
    bucket.put("f", "x");
    let mount = Mount::new(&bucket, &["--read-only"]);
    let err = std::fs::write(mount.join("g"), "y").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS));
    assert_eq!(std::fs::read_to_string(mount.join("f")).unwrap(), "x");
    mount.unmount();
}

#[test]
fn names_s3_cannot_store_get_the_right_errno() {
    let bucket = TestBucket::new("names");
    let mount = Mount::new(&bucket, &[]);
    // A name longer than a key can hold (FUSE itself carries up to 1,024 bytes).
    let long = "n".repeat(1024);
    let err = std::fs::write(mount.join(&long), "x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENAMETOOLONG));
    // Spaces, unicode and URL-special characters are fine.
    let odd = "a b ü #?%+&.txt";
    std::fs::write(mount.join(odd), "ok").unwrap();
    assert_eq!(bucket.get(odd).unwrap(), b"ok");
    assert_eq!(std::fs::read_to_string(mount.join(odd)).unwrap(), "ok");
    mount.unmount();
}

const MIB: usize = 1 << 20;

/// `count` offsets for reads of `len` bytes within `size`, from `seed`.
fn random_offsets(seed: u64, count: usize, size: usize, len: usize) -> Vec<u64> {
    let mut raw = vec![0u8; count * 8];
    Noise::new(seed).fill(&mut raw);
    raw.chunks(8)
        .map(|b| u64::from_le_bytes(b.try_into().unwrap()) % (size - len) as u64)
        .collect()
}

fn pread(f: &std::fs::File, offset: u64, len: usize) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; len];
    f.read_exact_at(&mut buf, offset).unwrap();
    buf
}

#[test]
fn random_reads_fetch_small_pieces_and_a_sequential_run_after_them_is_prefetched() {
    let bucket = TestBucket::new("random");
    let size = 128 * MIB;
    let mut data = vec![0u8; size];
    Noise::new(7).fill(&mut data);
    bucket.put("obj", data.clone());
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("s3mount.log");
    // Too large to be fetched whole (a quarter of the cache at most).
    let args = [
        "--log-file",
        log.to_str().unwrap(),
        "--cache-size",
        "256MiB",
    ];
    let mount = Mount::new(&bucket, &args);
    let f = std::fs::File::open(mount.join("obj")).unwrap();
    let offsets = random_offsets(1, 40, size, 4096);
    for &off in &offsets {
        let want = &data[off as usize..off as usize + 4096];
        assert!(pread(&f, off, 4096) == want, "4 KiB at {off}");
    }
    // Then the last quarter in order, through the same descriptor.
    let mut at = 3 * size / 4;
    while at < size {
        let got = pread(&f, at as u64, 128 * 1024);
        assert!(got == data[at..at + got.len()], "128 KiB at {at}");
        at += got.len();
    }
    drop(f);
    mount.unmount();
    let log = std::fs::read_to_string(&log).unwrap();
    // A whole block per random read would be 40 MiB or so; the sequential run is 32 MiB.
    let received = bytes_received(&log);
    assert!(
        received < (32 + 8) * MIB as u64,
        "{received} bytes received for 40 random reads of 4 KiB and 32 MiB read in order"
    );
    // Read in order, 32 MiB come in a few large GETs, not one per block.
    let gets = requests(&log, "GetObject ");
    assert!(gets <= 40 + 16, "{gets} GETs");
}

#[test]
fn random_reads_that_keep_coming_have_the_whole_object_fetched_once() {
    let bucket = TestBucket::new("whole");
    let size = 40 * MIB + 321;
    let mut data = vec![0u8; size];
    Noise::new(9).fill(&mut data);
    bucket.put("obj", data.clone());
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("s3mount.log");
    let mount = Mount::new(&bucket, &["--log-file", log.to_str().unwrap()]);
    let f = std::fs::File::open(mount.join("obj")).unwrap();
    let offsets = random_offsets(2, 300, size, 4096);
    let (first, rest) = offsets.split_at(8);
    for &off in first {
        assert!(pread(&f, off, 4096) == data[off as usize..off as usize + 4096]);
    }
    wait_until(Duration::from_secs(60), "the whole object fetched", || {
        mount.log_text().contains("obj: fetched whole")
    });
    for &off in rest {
        assert!(pread(&f, off, 4096) == data[off as usize..off as usize + 4096]);
    }
    drop(f);
    mount.unmount();
    let log = std::fs::read_to_string(&log).unwrap();
    // Eight pieces, then 41 blocks in six GETs of at most 8; the rest from the cache.
    let gets = requests(&log, "GetObject ");
    assert!(gets <= 8 + 6, "{gets} GETs");
    // A piece is 64 KiB, two for a read that straddles them.
    let received = bytes_received(&log);
    assert!(
        received <= (size + 8 * 2 * 64 * 1024) as u64,
        "{received} bytes received for an object of {size}"
    );
}

#[test]
fn concurrent_random_readers_and_a_sequential_one_each_read_the_object() {
    let bucket = TestBucket::new("readers");
    let size = 48 * MIB;
    let mut data = vec![0u8; size];
    Noise::new(8).fill(&mut data);
    bucket.put("obj", data.clone());
    let mount = Mount::new(&bucket, &[]);
    let path = mount.join("obj");
    std::thread::scope(|scope| {
        for reader in 0..4u64 {
            let (path, data) = (&path, &data);
            scope.spawn(move || {
                let f = std::fs::File::open(path).unwrap();
                for off in random_offsets(100 + reader, 60, size, 4096) {
                    let want = &data[off as usize..off as usize + 4096];
                    assert!(
                        pread(&f, off, 4096) == want,
                        "reader {reader}: 4 KiB at {off}"
                    );
                }
            });
        }
        scope.spawn(|| {
            let got = std::fs::read(&path).unwrap();
            assert!(got == data, "the sequential reader got {} bytes", got.len());
        });
    });
    mount.unmount();
}
