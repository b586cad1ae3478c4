//! Watching a running mount: `s3mount status` (uploads with bytes sent growing,
//! failed uploads with their reason and where the data is, `--json`, the list of
//! every mount, the log level changed through it) and `--metrics-addr` (scraped
//! and parsed as Prometheus text). Real mounts; the upload test runs on a Garage
//! of its own, reached through the delay proxy so that an upload takes long
//! enough to be watched.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::faults::DelayProxy;
use common::{
    BIN, Mount, PrivateGarage, TestBucket, assert_fails_with, close, mount_failing, wait_until,
};
use s3mount::status::Report;

const MIB: u64 = 1 << 20;

fn status(args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("status")
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("run s3mount status")
}

fn arg(path: &Path) -> &str {
    path.to_str().expect("a UTF-8 path")
}

/// What `s3mount status --json MOUNTPOINT` says.
fn report(mnt: &Path) -> Report {
    let out = status(&["--json", arg(mnt)]);
    assert!(
        out.status.success(),
        "s3mount status: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("{e}: {}", String::from_utf8_lossy(&out.stdout));
    })
}

#[test]
fn status_shows_an_upload_growing_then_a_failed_upload_with_its_reason_and_data() {
    let dir = tempfile::tempdir().unwrap();
    let garage = PrivateGarage::start(dir.path(), "watched");
    let proxy = DelayProxy::new(&garage.env, 2000);
    let bucket = TestBucket::existing(proxy.env.clone(), "watched");
    let mount = Mount::new(&bucket, &["--retry-for", "2s"]);

    // A backup script's cp of a large file: 16 parts of 8 MiB, four at a time,
    // each taking two seconds or more.
    let size = 128 * MIB;
    let writer = {
        let path = mount.join("backup.tar");
        std::thread::spawn(move || {
            let mut file = std::fs::File::create(path).unwrap();
            let chunk = vec![7u8; MIB as usize];
            for _ in 0..size / MIB {
                file.write_all(&chunk).unwrap();
            }
            close(file)
        })
    };
    let mut seen: Vec<(u64, Option<u64>)> = Vec::new();
    while !writer.is_finished() {
        if let Some(u) = report(&mount.path)
            .uploading
            .into_iter()
            .find(|u| u.key == "backup.tar")
        {
            seen.push((u.sent, u.total));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    writer.join().unwrap().expect("the upload succeeds");
    let sent: Vec<u64> = seen.iter().map(|(s, _)| *s).collect();
    assert!(
        sent.windows(2).all(|w| w[0] <= w[1]),
        "bytes sent never go back: {sent:?}"
    );
    let mut partial: Vec<u64> = sent
        .iter()
        .copied()
        .filter(|s| *s > 0 && *s < size)
        .collect();
    partial.dedup();
    assert!(
        partial.len() >= 2,
        "bytes sent seen growing while the file went up: {seen:?}"
    );
    assert!(
        seen.iter().any(|(_, total)| *total == Some(size)),
        "the file's size shown once it was complete: {seen:?}"
    );
    assert!(report(&mount.path).uploading.is_empty());

    // The server goes away: the close of a page fails, and status says why and
    // where the page is kept.
    let mut file = std::fs::File::create(mount.join("index.html")).unwrap();
    garage.stop();
    file.write_all(b"<h1>saved while the server was down</h1>\n")
        .unwrap();
    assert!(close(file).is_err(), "the upload fails");
    let now = report(&mount.path);
    let failed = now
        .failed
        .iter()
        .find(|f| f.key == "index.html")
        .unwrap_or_else(|| panic!("index.html among the failed: {now:?}"));
    assert!(!failed.reason.is_empty());
    let kept = failed.kept_in.as_ref().expect("where the data is");
    assert_eq!(
        std::fs::read(kept).unwrap(),
        b"<h1>saved while the server was down</h1>\n"
    );
    let screen = String::from_utf8(status(&[arg(&mount.path)]).stdout).unwrap();
    assert!(
        screen.contains(&format!(
            "index.html: {}; data kept in {}",
            failed.reason,
            kept.display()
        )),
        "{screen}"
    );
    // The 16 parts of the backup, and what they carried.
    assert!(
        now.requests.get("UploadPart").is_some_and(|n| *n >= 16),
        "{now:?}"
    );
    assert!(now.bytes_sent >= size, "{now:?}");

    // Back again: the retry stores it, and the failure is gone from the view.
    garage.resume();
    wait_until(Duration::from_secs(120), "the retried upload", || {
        report(&mount.path).failed.is_empty()
    });
    assert_eq!(
        bucket.get("index.html").unwrap(),
        b"<h1>saved while the server was down</h1>\n"
    );
    assert!(mount.unmount().success());
}

#[test]
fn plain_status_lists_every_mount_and_log_level_changes_a_running_one() {
    let first = TestBucket::new("status-a");
    let second = TestBucket::new("status-b");
    let (a, b) = (Mount::new(&first, &[]), Mount::new(&second, &[]));
    let out = status(&[]);
    assert!(out.status.success());
    let screen = String::from_utf8(out.stdout).unwrap();
    for (bucket, mount) in [(&first, &a), (&second, &b)] {
        assert!(
            screen.contains(&format!(
                "s3://{}/ on {} (process {}",
                bucket.name,
                mount.path.display(),
                mount.pid()
            )),
            "{screen}"
        );
    }
    let all: Vec<Report> = serde_json::from_slice(&status(&["--json"]).stdout).unwrap();
    assert!(all.iter().any(|r| r.mountpoint == b.path));

    // The tests mount at trace.
    let out = status(&["--log-level", "warn", arg(&a.path)]);
    assert!(out.status.success());
    assert_eq!(report(&a.path).log_level, "warn");
    assert!(a.log_text().contains("log level trace -> warn"));
    assert_eq!(
        report(&b.path).log_level,
        "trace",
        "the other mount keeps its level"
    );
    let out = status(&["--log-level", "verbose", arg(&a.path)]);
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("is not one of error, warn, info, debug, trace"),
        "{err}"
    );

    // A directory with no mount on it is one clear line and a failure.
    let plain = tempfile::tempdir().unwrap();
    let out = status(&[arg(plain.path())]);
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("no s3mount mount of this user on"), "{err}");

    // An unmounted mount leaves the list, and takes its socket with it.
    let gone = a.path.clone();
    assert!(a.unmount().success());
    let all: Vec<Report> = serde_json::from_slice(&status(&["--json"]).stdout).unwrap();
    assert!(all.iter().all(|r| r.mountpoint != gone));

    // --watch draws the screen again and again, and ends with the mount.
    let mut watch = Command::new(BIN)
        .args(["status", "--watch", arg(&b.path)])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // Lines as they come, so that a hang fails the test instead of stalling it.
    let (tx, lines) = std::sync::mpsc::channel();
    let screen = BufReader::new(watch.stdout.take().unwrap());
    std::thread::spawn(move || {
        for line in screen.lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let next = || lines.recv_timeout(Duration::from_secs(60));
    let header = format!("on {} (process", b.path.display());
    let mut drawn = 0;
    while drawn < 2 {
        let line = next().expect("--watch draws again");
        drawn += usize::from(line.contains(&header));
    }
    let watched = b.path.clone();
    assert!(b.unmount().success());
    let end = format!("no s3mount mount of this user on {}", watched.display());
    while !next()
        .expect("--watch says the mount is gone")
        .contains(&end)
    {}
    wait_until(Duration::from_secs(30), "--watch to exit", || {
        watch.try_wait().unwrap().is_some()
    });
    assert!(watch.wait().unwrap().success());
}

/// A port nothing listens on now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// The metrics served on `port`, parsed.
fn scrape(port: u16) -> prometheus_parse::Scrape {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to the metrics");
    // A bound on a hang.
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").expect("an HTTP answer");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_string())))
        .expect("Prometheus text")
}

/// The value of `metric` with `labels`: a counter's or gauge's value, a
/// histogram's count; 0 if there is none yet.
fn value(scrape: &prometheus_parse::Scrape, metric: &str, labels: &[(&str, &str)]) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == metric)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match &s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => *v,
            prometheus_parse::Value::Histogram(buckets) => {
                buckets.iter().map(|b| b.count).fold(0.0, f64::max)
            }
            prometheus_parse::Value::Summary(_) => panic!("{metric} is a summary"),
        })
        .sum()
}

#[test]
fn the_metrics_endpoint_is_parsed_and_its_counters_move_with_the_operations() {
    let bucket = TestBucket::new("metrics");
    bucket.put("page.html", "<p>old</p>\n");
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mount = Mount::new(&bucket, &["--metrics-addr", &addr]);
    let before = scrape(port);

    assert_eq!(
        std::fs::read(mount.join("page.html")).unwrap(),
        b"<p>old</p>\n"
    );
    std::fs::write(mount.join("style.css"), "body { color: red }\n").unwrap();
    // S3's answers are counted before the program has its own.
    let after = scrape(port);
    let moved = |metric: &str, labels: &[(&str, &str)]| {
        value(&after, metric, labels) - value(&before, metric, labels)
    };
    let requests = "s3mount_s3_requests_total";
    assert!(moved(requests, &[("kind", "GetObject"), ("outcome", "ok")]) >= 1.0);
    assert!(moved(requests, &[("kind", "PutObject"), ("outcome", "ok")]) >= 1.0);
    assert!(moved("s3mount_s3_bytes_received_total", &[]) >= 11.0);
    assert!(moved("s3mount_s3_bytes_sent_total", &[]) >= 20.0);
    // A FUSE request's time is recorded just after its answer; what the report
    // gives, within a second.
    let fuse = "s3mount_fuse_request_duration_seconds";
    wait_until(
        Duration::from_secs(30),
        "the FUSE requests and the report",
        || {
            let now = scrape(port);
            ["read", "create", "write", "flush"]
                .iter()
                .all(|op| value(&now, fuse, &[("op", op)]) > value(&before, fuse, &[("op", op)]))
                && value(&now, "s3mount_cache_misses_total", &[]) >= 1.0
                && value(&now, "s3mount_dirty_bytes", &[]) == 0.0
        },
    );
    let now = scrape(port);
    for gauge in [
        "s3mount_uploads_in_progress",
        "s3mount_uploads_waiting",
        "s3mount_unsaved_files",
        "s3mount_dirty_bytes",
        "s3mount_oldest_unsaved_change_seconds",
        "s3mount_cache_disk_limit_bytes",
    ] {
        assert!(
            now.samples.iter().any(|s| s.metric == gauge),
            "{gauge} served"
        );
    }

    // A file being written counts as unsaved until its close has stored it.
    let mut open = std::fs::File::create(mount.join("draft.txt")).unwrap();
    open.write_all(b"half a thought").unwrap();
    wait_until(Duration::from_secs(30), "the open file counted", || {
        value(&scrape(port), "s3mount_unsaved_files", &[]) == 1.0
    });
    close(open).unwrap();
    wait_until(
        Duration::from_secs(30),
        "the stored file no longer counted",
        || value(&scrape(port), "s3mount_unsaved_files", &[]) == 0.0,
    );

    // The address is taken now: a second mount says so and does not start.
    let mnt = tempfile::tempdir().unwrap();
    let out = mount_failing(
        &bucket.env,
        &bucket.name,
        mnt.path(),
        &["--metrics-addr", &addr],
    );
    assert_fails_with(&out, &format!("--metrics-addr {addr}"));
    let out = mount_failing(
        &bucket.env,
        &bucket.name,
        mnt.path(),
        &["--metrics-addr", "nonsense"],
    );
    assert_fails_with(&out, "--metrics-addr nonsense");
    assert!(mount.unmount().success());
}
