//! Running under a service manager: systemd's notify protocol (`Type=notify`), the
//! README's unit as systemd runs it, and the log level of a running mount changed
//! with SIGUSR2.

mod common;

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{Mount, S3Env, TestBucket, is_mounted, wait_until};

/// The next notification on `socket`, as text.
fn next_notification(socket: &UnixDatagram) -> String {
    let mut buf = [0u8; 1024];
    let n = socket
        .recv(&mut buf)
        .expect("a notification within the socket's read timeout");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// A notification socket in `dir` as systemd gives one (`NOTIFY_SOCKET`), and
/// its path.
fn notify_socket(dir: &Path) -> (PathBuf, UnixDatagram) {
    let path = dir.join("notify.sock");
    let socket = UnixDatagram::bind(&path).unwrap();
    // A bound on a hang, not a timing: READY comes within a second or so.
    socket
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    (path, socket)
}

/// `systemctl stop`: SIGTERM, then STOPPING=1, a clean exit and no mount.
fn stop_as_systemd(mut child: Child, socket: &UnixDatagram, mnt: &Path) {
    // SAFETY: kill(2) on our own child process.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    assert_eq!(next_notification(socket), "STOPPING=1\n");
    assert!(child.wait().unwrap().success());
    assert!(!is_mounted(mnt));
}

/// `s3mount --foreground` of `bucket` on `mnt`, with its cache and log in `dir`.
fn foreground(env: &S3Env, bucket: &str, mnt: &Path, dir: &Path, log: &Path) -> Command {
    let mut cmd = env.command();
    cmd.arg(bucket)
        .arg(mnt)
        .arg("--foreground")
        .arg("--cache-dir")
        .arg(dir.join("cache"))
        .arg("--log-file")
        .arg(log)
        .stdin(Stdio::null());
    cmd
}

#[test]
fn ready_comes_once_the_mount_answers_and_stopping_when_it_unmounts() {
    let bucket = TestBucket::new("notify");
    bucket.put("hello.txt", "hi\n");
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let (socket_path, socket) = notify_socket(dir.path());
    let log = dir.path().join("s3mount.log");
    let mut cmd = foreground(&bucket.env, &bucket.name, &mnt, dir.path(), &log);
    let child = cmd.env("NOTIFY_SOCKET", &socket_path).spawn().unwrap();

    assert_eq!(next_notification(&socket), "READY=1\n");
    // READY came after the mount answered: it is there and serves the bucket.
    assert!(is_mounted(&mnt));
    assert_eq!(
        std::fs::read_to_string(mnt.join("hello.txt")).unwrap(),
        "hi\n"
    );

    stop_as_systemd(child, &socket, &mnt);
}

#[test]
fn sigusr2_steps_the_log_level_of_a_running_mount() {
    let bucket = TestBucket::new("loglevel");
    // The tests mount at trace: a close logs "uploaded KEY" (at debug).
    let mount = Mount::new(&bucket, &[]);
    let usr2 = |from: &str, to: &str| {
        // SAFETY: kill(2) on the mount's own child process.
        assert_eq!(unsafe { libc::kill(mount.pid() as i32, libc::SIGUSR2) }, 0);
        let said = format!("log level {from} -> {to}");
        wait_until(Duration::from_secs(30), &said, || {
            mount.log_text().contains(&said)
        });
    };
    usr2("trace", "error");
    std::fs::write(mount.join("quiet.txt"), "q").unwrap();
    assert!(!mount.log_text().contains("uploaded quiet.txt"));
    usr2("error", "warn");
    usr2("warn", "info");
    usr2("info", "debug");
    std::fs::write(mount.join("loud.txt"), "l").unwrap();
    assert!(mount.log_text().contains("uploaded loud.txt"));
    assert!(mount.unmount().success());
}

#[test]
fn no_secret_reaches_the_log_even_at_trace_level() {
    // moto takes any credentials, a session token included: these are ours alone.
    let secret = "s3cr3t-Kq81vZ-never-in-a-log";
    let token = "t0k3n-Zx77pQ-never-in-a-log";
    let bucket = TestBucket::on(S3Env::moto(), "secrets");
    bucket.put("there.txt", "x");
    let distribution = common::cdn::Distribution::new(&bucket.name);
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let log = dir.path().join("s3mount.log");
    let stderr = dir.path().join("stderr");
    let mut env = bucket.env.clone();
    env.access_key = "AKIASECRETSTEST0001".into();
    env.secret_key = secret.into();
    let mut cmd = foreground(&env, &bucket.name, &mnt, dir.path(), &log);
    cmd.arg("--cloudfront-distribution-id")
        .arg(&distribution.id)
        .arg("--cloudfront-endpoint-url")
        .arg(&env.endpoint)
        // Every crate at trace: the SDK's signing and HTTP layers too.
        .env("RUST_LOG", "trace")
        .env("AWS_SESSION_TOKEN", token)
        .stderr(std::fs::File::create(&stderr).unwrap());
    let mut child = cmd.spawn().unwrap();
    wait_until(Duration::from_secs(30), "the mount", || is_mounted(&mnt));
    std::fs::write(mnt.join("new.txt"), "secret-free").unwrap();
    assert_eq!(std::fs::read_to_string(mnt.join("there.txt")).unwrap(), "x");
    std::fs::rename(mnt.join("new.txt"), mnt.join("moved.txt")).unwrap();
    std::fs::remove_file(mnt.join("there.txt")).unwrap();
    let out = std::process::Command::new("fusermount3")
        .arg("-u")
        .arg(&mnt)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(child.wait().unwrap().success());
    let mut all = std::fs::read_to_string(&log).unwrap();
    all.push_str(&std::fs::read_to_string(&stderr).unwrap());
    assert!(all.contains("TRACE"), "the log is at trace level");
    assert!(all.contains("moved.txt"));
    assert!(!all.contains(secret), "the secret key is in the log");
    assert!(!all.contains(token), "the session token is in the log");
}

/// The words of the README unit's `ExecStart=`.
fn readme_exec_start() -> Vec<String> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let line = readme
        .lines()
        .find_map(|l| l.trim().strip_prefix("ExecStart="))
        .expect("README.md has a unit with ExecStart=");
    line.split_whitespace().map(str::to_string).collect()
}

#[test]
fn the_readme_unit_runs_as_systemd_runs_it() {
    let bucket = TestBucket::new("unit");
    bucket.put("site/index.html", "<h1>hi</h1>\n");
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let credentials = dir.path().join("credentials");
    bucket.env.write_credentials_file(&credentials);
    // The README's command, pointed at the test's bucket, directories and server.
    let words = readme_exec_start();
    assert!(words[0].ends_with("/s3mount"), "{words:?}");
    let mut args: Vec<String> = Vec::new();
    let mut rest = words[1..].iter();
    let mut positional = 0;
    while let Some(word) = rest.next() {
        match word.as_str() {
            "--cache-dir" => {
                rest.next();
                args.push(word.clone());
                args.push(dir.path().join("cache").display().to_string());
            }
            "--credentials-file" => {
                rest.next();
                args.push(word.clone());
                args.push(credentials.display().to_string());
            }
            w if w.starts_with('-') => args.push(word.clone()),
            source if positional == 0 => {
                positional += 1;
                let (_, prefix) = source.split_once(':').expect("BUCKET:PREFIX");
                args.push(format!("{}:{prefix}", bucket.name));
            }
            _ => {
                positional += 1;
                args.push(mnt.display().to_string());
            }
        }
    }
    assert_eq!(positional, 2, "{words:?}");
    assert!(args.iter().any(|a| a == "--foreground"), "{words:?}");
    let (socket_path, socket) = notify_socket(dir.path());
    let log = dir.path().join("s3mount.log");
    // As systemd starts it: no credentials in the environment, the file's.
    let child = Command::new(common::BIN)
        .args(&args)
        .args(["--endpoint-url", &bucket.env.endpoint])
        .args(["--region", &bucket.env.region, "--force-path-style"])
        .arg("--log-file")
        .arg(&log)
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env_remove("AWS_PROFILE")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("NOTIFY_SOCKET", &socket_path)
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    assert_eq!(next_notification(&socket), "READY=1\n");
    assert_eq!(
        std::fs::read_to_string(mnt.join("index.html")).unwrap(),
        "<h1>hi</h1>\n"
    );
    stop_as_systemd(child, &socket, &mnt);
}
