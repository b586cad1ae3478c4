//! Shared pieces of the integration tests: the S3 server's settings, buckets made
//! for one test, and real mounts of the s3mount binary.
//!
//! The tests need a running S3 server, which `scripts/test.sh` starts (Garage) and
//! describes in the environment (S3_ENDPOINT, AWS_ACCESS_KEY_ID, ...).
#![allow(dead_code)] // each test binary uses its own part of this module

pub mod cdn;
pub mod faults;
pub mod model;
pub mod ops;
pub mod tmux;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use aws_sdk_s3::Client;
use aws_sdk_s3::primitives::ByteStream;

pub const BIN: &str = env!("CARGO_BIN_EXE_s3mount");

/// Settings of the S3 server the tests run against.
#[derive(Clone, Debug)]
pub struct S3Env {
    pub endpoint: String,
    pub access_key: String,
    pub secret_key: String,
    pub region: String,
}

impl S3Env {
    pub fn from_env() -> Self {
        let var = |name: &str| {
            std::env::var(name).unwrap_or_else(|_| {
                panic!("{name} is not set: run the tests with scripts/test.sh, which starts the S3 server")
            })
        };
        Self {
            endpoint: var("S3_ENDPOINT"),
            access_key: var("AWS_ACCESS_KEY_ID"),
            secret_key: var("AWS_SECRET_ACCESS_KEY"),
            region: var("AWS_REGION"),
        }
    }

    /// moto, the local CloudFront API `scripts/test.sh` starts, which also
    /// serves S3 and, unlike Garage, enforces conditional PutObject.
    pub fn moto() -> Self {
        Self {
            endpoint: cdn::endpoint(),
            access_key: "test".into(),
            secret_key: "test".into(),
            region: "us-east-1".into(),
        }
    }

    /// The settings of a private server started from `scripts/garage.sh start`.
    pub fn from_file(env_file: &Path) -> Self {
        let text = std::fs::read_to_string(env_file).expect("read garage env file");
        let get = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("export {name}=")))
                .unwrap_or_else(|| panic!("{name} missing in {}", env_file.display()))
                .to_string()
        };
        Self {
            endpoint: get("S3_ENDPOINT"),
            access_key: get("AWS_ACCESS_KEY_ID"),
            secret_key: get("AWS_SECRET_ACCESS_KEY"),
            region: get("AWS_REGION"),
        }
    }

    /// Write these credentials at `path`, in the format of ~/.aws/credentials.
    pub fn write_credentials_file(&self, path: &Path) {
        std::fs::write(
            path,
            format!(
                "[default]\naws_access_key_id = {}\naws_secret_access_key = {}\n",
                self.access_key, self.secret_key
            ),
        )
        .expect("write credentials");
    }

    /// A command for the s3mount binary with these credentials and endpoint.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.env("AWS_ACCESS_KEY_ID", &self.access_key)
            .env("AWS_SECRET_ACCESS_KEY", &self.secret_key)
            // scripts/test.sh searches the logs for it (the servers ignore it).
            .env("AWS_SESSION_TOKEN", session_token())
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env_remove("AWS_PROFILE")
            .env_remove("RUST_LOG")
            .args(["--endpoint-url", &self.endpoint, "--region", &self.region])
            .arg("--force-path-style");
        cmd
    }

    pub fn client(&self, rt: &tokio::runtime::Runtime) -> Client {
        let creds = aws_sdk_s3::config::Credentials::new(
            &self.access_key,
            &self.secret_key,
            None,
            None,
            "test",
        );
        let config = rt.block_on(
            aws_config::defaults(aws_config::BehaviorVersion::latest())
                .region(aws_config::Region::new(self.region.clone()))
                .credentials_provider(creds)
                .load(),
        );
        let s3 = aws_sdk_s3::config::Builder::from(&config)
            .endpoint_url(&self.endpoint)
            .force_path_style(true)
            .request_checksum_calculation(
                aws_sdk_s3::config::RequestChecksumCalculation::WhenRequired,
            )
            .response_checksum_validation(
                aws_sdk_s3::config::ResponseChecksumValidation::WhenRequired,
            )
            .build();
        Client::from_conf(s3)
    }
}

/// A bucket of its own for one test, reached with the SDK directly ("another S3 tool").
pub struct TestBucket {
    pub name: String,
    pub env: S3Env,
    pub client: Client,
    pub rt: tokio::runtime::Runtime,
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

impl TestBucket {
    pub fn new(tag: &str) -> Self {
        Self::on(S3Env::from_env(), tag)
    }

    pub fn on(env: S3Env, tag: &str) -> Self {
        let name = format!(
            "t-{tag}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        )
        .to_lowercase();
        let bucket = Self::existing(env, &name);
        bucket
            .rt
            .block_on(bucket.client.create_bucket().bucket(&name).send())
            .unwrap_or_else(|e| panic!("create bucket {name}: {e:?}"));
        bucket
    }

    /// A bucket that exists already.
    pub fn existing(env: S3Env, name: &str) -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let client = env.client(&rt);
        Self {
            name: name.to_string(),
            env,
            client,
            rt,
        }
    }

    pub fn put(&self, key: &str, body: impl Into<Vec<u8>>) {
        let body = ByteStream::from(body.into());
        self.rt
            .block_on(
                self.client
                    .put_object()
                    .bucket(&self.name)
                    .key(key)
                    .body(body)
                    .send(),
            )
            .unwrap_or_else(|e| panic!("put {key}: {e:?}"));
    }

    /// Put an object as another tool would, with its Content-Type and user
    /// metadata (names without `x-amz-meta-`).
    pub fn put_with(
        &self,
        key: &str,
        body: impl Into<Vec<u8>>,
        content_type: Option<&str>,
        metadata: &[(&str, &str)],
    ) {
        let mut put = self
            .client
            .put_object()
            .bucket(&self.name)
            .key(key)
            .set_content_type(content_type.map(str::to_string))
            .body(ByteStream::from(body.into()));
        for (name, value) in metadata {
            put = put.metadata(*name, *value);
        }
        self.rt
            .block_on(put.send())
            .unwrap_or_else(|e| panic!("put {key}: {e:?}"));
    }

    /// Put many small objects, 32 at a time.
    pub fn put_many(&self, keys: impl IntoIterator<Item = String>) {
        use futures::StreamExt;
        let keys: Vec<String> = keys.into_iter().collect();
        self.rt.block_on(
            futures::stream::iter(keys).for_each_concurrent(32, |key| async move {
                self.client
                    .put_object()
                    .bucket(&self.name)
                    .key(&key)
                    .body(ByteStream::from(key.clone().into_bytes()))
                    .send()
                    .await
                    .unwrap_or_else(|e| panic!("put {key}: {e:?}"));
            }),
        );
    }

    pub fn get(&self, key: &str) -> Option<Vec<u8>> {
        let out = self
            .rt
            .block_on(self.client.get_object().bucket(&self.name).key(key).send());
        match out {
            Ok(o) => Some(
                self.rt
                    .block_on(o.body.collect())
                    .expect("read body")
                    .to_vec(),
            ),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => None,
            Err(e) => panic!("get {key}: {e:?}"),
        }
    }

    /// The HEAD of `key`, which must exist.
    pub fn head(&self, key: &str) -> aws_sdk_s3::operation::head_object::HeadObjectOutput {
        self.rt
            .block_on(self.client.head_object().bucket(&self.name).key(key).send())
            .unwrap_or_else(|e| panic!("head {key}: {e:?}"))
    }

    pub fn content_type(&self, key: &str) -> Option<String> {
        self.rt
            .block_on(self.client.head_object().bucket(&self.name).key(key).send())
            .ok()
            .and_then(|o| o.content_type().map(str::to_string))
    }

    /// The ids of the multipart uploads under way in the bucket.
    pub fn open_uploads(&self) -> Vec<String> {
        let listed = self
            .rt
            .block_on(
                self.client
                    .list_multipart_uploads()
                    .bucket(&self.name)
                    .send(),
            )
            .expect("ListMultipartUploads");
        listed
            .uploads()
            .iter()
            .filter_map(|u| u.upload_id().map(str::to_string))
            .collect()
    }

    /// Every key in the bucket, sorted.
    pub fn keys(&self) -> Vec<String> {
        self.keys_under("")
    }

    /// Every key that starts with `prefix`, sorted.
    pub fn keys_under(&self, prefix: &str) -> Vec<String> {
        let mut keys = Vec::new();
        let mut token = None;
        loop {
            let page = self
                .rt
                .block_on(
                    self.client
                        .list_objects_v2()
                        .bucket(&self.name)
                        .prefix(prefix)
                        .set_continuation_token(token)
                        .send(),
                )
                .expect("list");
            keys.extend(
                page.contents()
                    .iter()
                    .filter_map(|o| o.key().map(str::to_string)),
            );
            token = page.next_continuation_token().map(str::to_string);
            if token.is_none() {
                return keys;
            }
        }
    }
}

/// A running `s3mount --foreground`, unmounted (and the process reaped) on drop even
/// when the test panics.
pub struct Mount {
    pub path: PathBuf,
    pub cache: PathBuf,
    pub log: PathBuf,
    child: Option<Child>,
    _dir: tempfile::TempDir,
}

impl Mount {
    pub fn new(bucket: &TestBucket, args: &[&str]) -> Self {
        Self::source(&bucket.env, &bucket.name, args)
    }

    pub fn source(env: &S3Env, source: &str, args: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("mnt");
        std::fs::create_dir(&path).expect("mkdir mnt");
        let mut cache = dir.path().join("cache");
        if let Some(i) = args.iter().position(|a| *a == "--cache-dir") {
            cache = PathBuf::from(args[i + 1]);
        }
        // Into the suite's log directory, which scripts/test.sh searches for
        // secrets, if there is one.
        let mut log = match std::env::var_os("S3MOUNT_TEST_LOGS") {
            Some(logs) => PathBuf::from(logs).join(format!(
                "{}-{}.log",
                std::process::id(),
                COUNTER.fetch_add(1, Ordering::Relaxed)
            )),
            None => dir.path().join("s3mount.log"),
        };
        if let Some(i) = args.iter().position(|a| *a == "--log-file") {
            log = PathBuf::from(args[i + 1]);
        }
        let mut cmd = env.command();
        // What s3mount says before its log is open (a refused option, say).
        let stderr = std::fs::File::create(dir.path().join("stderr")).expect("stderr file");
        cmd.arg(source)
            .arg(&path)
            .arg("--foreground")
            .args(["--log-level", "trace"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        if !args.contains(&"--cache-dir") {
            cmd.args(["--cache-dir".as_ref(), cache.as_os_str()]);
        }
        if !args.contains(&"--log-file") {
            cmd.args(["--log-file".as_ref(), log.as_os_str()]);
        }
        cmd.args(args);
        let child = cmd.spawn().expect("spawn s3mount");
        let mut mount = Self {
            path,
            cache,
            log,
            child: Some(child),
            _dir: dir,
        };
        mount.wait_until_mounted();
        mount
    }

    fn wait_until_mounted(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !is_mounted(&self.path) {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                let stderr =
                    std::fs::read_to_string(self._dir.path().join("stderr")).unwrap_or_default();
                panic!(
                    "s3mount exited ({status}) before mounting: {stderr}\n{}",
                    self.log_text()
                );
            }
            assert!(
                Instant::now() < deadline,
                "not mounted after 30 s:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn join(&self, rel: &str) -> PathBuf {
        self.path.join(rel)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).expect("running")
    }

    /// Unmount as a user would and wait for s3mount to finish its uploads and exit.
    ///
    /// The tests of one binary run in parallel threads of one process, so a program
    /// another test spawns at the wrong moment inherits this test's open descriptors
    /// until its exec() closes them: the mount can stay busy a moment after the test
    /// closed its files. A busy mount is retried until it is free (bounded); any
    /// other failure fails the test.
    pub fn unmount(mut self) -> ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let out = Command::new("fusermount3")
                .arg("-u")
                .arg(&self.path)
                .output()
                .expect("fusermount3");
            if out.status.success() {
                break;
            }
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(
                stderr.contains("Device or resource busy") && Instant::now() < deadline,
                "fusermount3 -u: {stderr}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        self.wait_exit()
    }

    /// The daemon dies (SIGKILL: no unmount, no last upload), and its dead mount
    /// is cleared away as an administrator would.
    pub fn kill(mut self) {
        let mut child = self.child.take().expect("running");
        let _ = child.kill();
        let _ = child.wait();
        let _ = Command::new("fusermount3")
            .arg("-uz")
            .arg(&self.path)
            .stderr(Stdio::null())
            .status();
    }

    /// Wait (bounded) for the s3mount process to exit on its own.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("s3mount did not exit after unmount:\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("fusermount3")
                .arg("-uz")
                .arg(&self.path)
                .stderr(Stdio::null())
                .status();
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The count of `kind` in the "S3 requests: ..." line a mount logs at unmount.
pub fn requests(log: &str, kind: &str) -> u64 {
    let line = log
        .lines()
        .rev()
        .find(|l| l.contains("S3 requests:"))
        .unwrap_or_else(|| panic!("no request count in the log:\n{log}"));
    line.split([',', '(', ')'])
        .filter_map(|part| part.trim().strip_prefix(kind)?.trim().parse().ok())
        .next()
        .unwrap_or(0)
}

/// The bytes the GETs of a mount brought, from the line it logs at unmount.
pub fn bytes_received(log: &str) -> u64 {
    let line = log
        .lines()
        .rev()
        .find(|l| l.contains("S3 requests:"))
        .unwrap_or_else(|| panic!("no request count in the log:\n{log}"));
    line.rsplit(", ")
        .next()
        .and_then(|tail| tail.strip_suffix(" bytes received"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no byte count in {line}"))
}

pub fn is_mounted(path: &Path) -> bool {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let wanted = path.to_string_lossy();
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|mp| mp == wanted)
}

/// Poll `cond` until it holds; panics with `what` after `limit`.
pub fn wait_until(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "gave up waiting: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The session token every mount of the suite carries (the servers ignore it):
/// scripts/test.sh picks a fresh one and searches the logs for it.
pub fn session_token() -> String {
    std::env::var("S3MOUNT_TEST_SESSION_TOKEN")
        .unwrap_or_else(|_| "s3mount-test-session-token".into())
}

/// A mount expected to fail may take no longer than this (a hang is a failure).
pub const FAIL_LIMIT: Duration = Duration::from_secs(40);

/// Run `s3mount SOURCE MOUNTPOINT ARGS` as a user would (going to the background
/// once mounted), for a mount expected to fail.
pub fn mount_failing(env: &S3Env, source: &str, mountpoint: &Path, args: &[&str]) -> Output {
    let cache = tempfile::tempdir().expect("tempdir");
    let mut cmd = env.command();
    cmd.arg(source)
        .arg(mountpoint)
        .args(["--cache-dir".as_ref(), cache.path().as_os_str()])
        .args(args);
    run_bounded(cmd, FAIL_LIMIT)
}

/// The error is one line, starts with `s3mount:` and says `what`.
pub fn assert_fails_with(out: &Output, what: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line expected: {stderr}");
    assert!(stderr.starts_with("s3mount: "), "{stderr}");
    assert!(stderr.contains(what), "expected {what:?} in: {stderr}");
}

/// Run a shell command line; panics with its output if it fails.
pub fn sh(script: &str) -> String {
    let out = sh_output(script);
    assert!(
        out.status.success(),
        "`{script}` failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn sh_output(script: &str) -> Output {
    Command::new("bash")
        .args(["-euo", "pipefail", "-c", script])
        .output()
        .expect("bash")
}

/// Run `cmd`, killing it if it runs longer than `limit` (a hang is a failure).
pub fn run_bounded(mut cmd: Command, limit: Duration) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + limit;
    loop {
        if child.try_wait().expect("wait").is_some() {
            return child.wait_with_output().expect("output");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "{cmd:?} still running after {limit:?}; stderr: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Fill `buf` with a deterministic pseudo-random stream (xorshift), fast enough to
/// produce gigabytes of incompressible test data.
pub struct Noise(u64);

impl Noise {
    pub fn new(seed: u64) -> Self {
        Self(seed | 1)
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
        }
    }
}

/// The project's scripts directory.
pub fn scripts() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts")
}

/// A Garage server of a test's own (for tests that stop the server), stopped on drop.
pub struct PrivateGarage {
    pub dir: PathBuf,
    pub env: S3Env,
}

impl PrivateGarage {
    pub fn start(dir: &Path, bucket: &str) -> Self {
        let dir = dir.join("garage");
        sh(&format!(
            "{}/garage.sh start '{}' '{bucket}' > /dev/null",
            scripts().display(),
            dir.display()
        ));
        let env = S3Env::from_file(&dir.join("env"));
        Self { dir, env }
    }

    pub fn stop(&self) {
        sh(&format!(
            "{}/garage.sh stop '{}'",
            scripts().display(),
            self.dir.display()
        ));
    }

    pub fn resume(&self) {
        sh(&format!(
            "{}/garage.sh resume '{}'",
            scripts().display(),
            self.dir.display()
        ));
    }

    /// Freeze the server (SIGSTOP): requests hang, as on a stalled network.
    pub fn pause(&self) {
        self.signal("STOP");
    }

    pub fn unpause(&self) {
        self.signal("CONT");
    }

    fn signal(&self, name: &str) {
        sh(&format!(
            "kill -{name} \"$(cat '{}/garage.pid')\"",
            self.dir.display()
        ));
    }
}

impl Drop for PrivateGarage {
    fn drop(&mut self) {
        // A paused server would not stop.
        let _ = sh_output(&format!(
            "kill -CONT \"$(cat '{}/garage.pid')\"",
            self.dir.display()
        ));
        let _ = sh_output(&format!(
            "{}/garage.sh stop '{}'",
            scripts().display(),
            self.dir.display()
        ));
    }
}

/// A three-node Garage of a test's own (replication factor 3), stopped on drop;
/// `env` talks to node 1.
pub struct PrivateCluster {
    pub dir: PathBuf,
    pub env: S3Env,
}

impl PrivateCluster {
    pub fn start(dir: &Path, bucket: &str) -> Self {
        let dir = dir.join("cluster");
        sh(&format!(
            "{}/garage.sh start-cluster '{}' '{bucket}' > /dev/null",
            scripts().display(),
            dir.display()
        ));
        let env = S3Env::from_file(&dir.join("env"));
        Self { dir, env }
    }

    /// Settings that talk to node `k` (1 to 3).
    pub fn node_env(&self, k: u32) -> S3Env {
        S3Env::from_file(&self.dir.join(format!("n{k}/env")))
    }

    pub fn stop(&self, k: u32) {
        self.script("stop", k);
    }

    pub fn resume(&self, k: u32) {
        self.script("resume", k);
    }

    fn script(&self, what: &str, k: u32) {
        sh(&format!(
            "{}/garage.sh {what} '{}/n{k}'",
            scripts().display(),
            self.dir.display()
        ));
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        let _ = sh_output(&format!(
            "{}/garage.sh stop-cluster '{}'",
            scripts().display(),
            self.dir.display()
        ));
    }
}

/// close(2) that reports its error, which dropping a `File` would swallow.
pub fn close(file: std::fs::File) -> std::io::Result<()> {
    use std::os::fd::IntoRawFd;
    let fd = file.into_raw_fd();
    // SAFETY: fd was just taken from the File, so it is open and owned here.
    if unsafe { libc::close(fd) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// A tmpfs of `size` (`4m`, `64m`) as a cache directory, unmounted on drop.
pub struct SmallDisk(pub PathBuf);

impl SmallDisk {
    pub fn new(path: PathBuf, size: &str) -> Self {
        std::fs::create_dir_all(&path).unwrap();
        sh(&format!(
            "mount -t tmpfs -o size={size} tmpfs '{}'",
            path.display()
        ));
        Self(path)
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// The journal records of a cache directory, parsed.
pub fn journal_records(cache: &Path) -> Vec<serde_json::Value> {
    std::fs::read_dir(cache.join("journal"))
        .map(|d| {
            d.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|e| e == "json"))
                .filter_map(|p| serde_json::from_slice(&std::fs::read(p).ok()?).ok())
                .collect()
        })
        .unwrap_or_default()
}
