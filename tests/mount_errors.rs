//! Bad input at mount time: a clear one-line error and a non-zero exit, in time.

mod common;

use std::net::TcpListener;
use std::process::Output;

use common::{
    FAIL_LIMIT, Mount, PrivateGarage, S3Env, TestBucket, assert_fails_with, mount_failing,
    run_bounded,
};

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
fn mountpoint_that_holds_files() {
    let bucket = TestBucket::new("nonempty");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("mine.txt"), "keep").unwrap();
    let out = mount_in_background(&bucket.env, &bucket.name, dir.path());
    assert_fails_exactly(
        &out,
        &format!(
            "mountpoint {} is not empty (the mount would hide its files); \
             use --allow-nonempty to mount over them",
            dir.path().display()
        ),
    );
    assert!(!common::is_mounted(dir.path()));
    // Asked for, the mount goes over them; they are back once it is gone.
    let out = mount_failing(&bucket.env, &bucket.name, dir.path(), &["--allow-nonempty"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!dir.path().join("mine.txt").exists());
    common::sh(&format!("fusermount3 -u '{}'", dir.path().display()));
    assert_eq!(
        std::fs::read_to_string(dir.path().join("mine.txt")).unwrap(),
        "keep"
    );
}

#[test]
fn invalid_bucket_name_is_refused_before_any_request() {
    let mut env = S3Env::from_env();
    // Nothing listens there: a request would fail otherwise.
    env.endpoint = format!("http://127.0.0.1:{}", free_port());
    let dir = tempfile::tempdir().unwrap();
    let out = mount_in_background(&env, "My_Bucket", dir.path());
    assert_fails_exactly(
        &out,
        "\"My_Bucket\" is not a valid bucket name: S3 bucket names are 3 to 63 lowercase \
         letters, digits, dots and hyphens, begin and end with a letter or digit, and are \
         not IP addresses",
    );
}

#[test]
fn bucket_that_does_not_exist() {
    let env = S3Env::from_env();
    let dir = tempfile::tempdir().unwrap();
    let out = mount_in_background(&env, "no-such-bucket-here", dir.path());
    assert_fails_exactly(
        &out,
        &format!(
            "bucket no-such-bucket-here does not exist on {}",
            host_port(&env)
        ),
    );
    assert!(!common::is_mounted(dir.path()));
}

#[test]
fn no_credentials_anywhere() {
    let bucket = TestBucket::new("nocreds");
    let home = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let mnt = tempfile::tempdir().unwrap();
    let mut cmd = bucket.env.command();
    for var in [
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_SHARED_CREDENTIALS_FILE",
        "AWS_CONFIG_FILE",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("HOME", home.path())
        .arg(&bucket.name)
        .arg(mnt.path())
        .arg("--cache-dir")
        .arg(cache.path());
    let out = run_bounded(cmd, FAIL_LIMIT);
    assert_fails_exactly(
        &out,
        "no AWS credentials found; looked in the environment (AWS_ACCESS_KEY_ID and \
         AWS_SECRET_ACCESS_KEY), the profile in ~/.aws/credentials and ~/.aws/config \
         (AWS_PROFILE, --profile, --credentials-file), a web identity token \
         (AWS_WEB_IDENTITY_TOKEN_FILE), container and instance metadata",
    );
}

#[test]
fn credentials_the_server_refuses() {
    let bucket = TestBucket::new("creds");
    let dir = tempfile::tempdir().unwrap();
    let expected_start = format!(
        "s3mount: {} refused the credentials (",
        host_port(&bucket.env)
    );
    let expected_end = "); check the access key and the secret key\n";
    let mut wrong_secret = bucket.env.clone();
    wrong_secret.secret_key = "0".repeat(64);
    let mut unknown_key = bucket.env.clone();
    unknown_key.access_key = "GK000000000000000000000000".into();
    for env in [wrong_secret, unknown_key] {
        let out = mount_in_background(&env, &bucket.name, dir.path());
        assert_fails_around(&out, &expected_start, expected_end);
    }
}

#[test]
fn key_that_may_not_list_the_bucket() {
    let garage =
        std::env::var("GARAGE_DIR").expect("GARAGE_DIR: run the tests with scripts/test.sh");
    let scripts = common::scripts();
    let env = S3Env::from_env();
    // A bucket the garage CLI knows by name (one made through S3 has a name
    // only its key sees), and a key that may write to it, not read: Garage
    // does not show a bucket to a key with no right on it at all.
    let name = format!("denied-{}", std::process::id());
    common::sh(&format!(
        "{}/garage.sh add-bucket '{garage}' {name}",
        scripts.display()
    ));
    let bucket = TestBucket::existing(env.clone(), &name);
    let mut env = env;
    env.access_key = format!("GK{:024x}", std::process::id());
    env.secret_key = format!("{:064x}", std::process::id());
    common::sh(&format!(
        "{}/garage.sh add-key '{garage}' {} {} {name} --write",
        scripts.display(),
        env.access_key,
        env.secret_key
    ));
    let dir = tempfile::tempdir().unwrap();
    let out = mount_in_background(&env, &bucket.name, dir.path());
    let start = format!(
        "s3mount: access denied to bucket {}: listing it (ListObjectsV2) was refused (",
        bucket.name
    );
    assert_fails_around(
        &out,
        &start,
        "); check the credentials and the bucket's policy\n",
    );
}

#[test]
fn wrong_region_names_the_servers() {
    let bucket = TestBucket::new("region");
    let mut env = bucket.env.clone();
    env.region = "us-west-2".into();
    let dir = tempfile::tempdir().unwrap();
    let out = mount_in_background(&env, &bucket.name, dir.path());
    assert_fails_exactly(
        &out,
        &format!(
            "wrong region us-west-2: {} expects region {}; use --region {}",
            host_port(&env),
            bucket.env.region,
            bucket.env.region
        ),
    );
}

#[test]
fn stopped_server() {
    let dir = tempfile::tempdir().unwrap();
    let garage = PrivateGarage::start(dir.path(), "stopped");
    garage.stop();
    let mnt = tempfile::tempdir().unwrap();
    let out = mount_in_background(&garage.env, "stopped", mnt.path());
    assert_fails_exactly(
        &out,
        &format!(
            "cannot reach {}: connection refused",
            host_port(&garage.env)
        ),
    );
}

#[test]
fn tls_endpoint_with_an_unknown_ca() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    // A CA of the test's own, and a certificate for 127.0.0.1 it signed.
    common::sh(&format!(
        "cd '{d}' && openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=test-ca \
           -keyout ca.key -out ca.pem 2>/dev/null && \
         openssl req -newkey rsa:2048 -nodes -subj /CN=127.0.0.1 -keyout leaf.key \
           -out leaf.csr 2>/dev/null && \
         printf 'subjectAltName=IP:127.0.0.1\\nbasicConstraints=CA:FALSE\\n' > ext && \
         openssl x509 -req -in leaf.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 1 \
           -extfile ext -out leaf.pem 2>/dev/null"
    ));
    let port = free_port();
    let server = std::process::Command::new("openssl")
        .args(["s_server", "-quiet", "-www", "-accept"])
        .arg(format!("127.0.0.1:{port}"))
        .args(["-cert", "leaf.pem", "-key", "leaf.key"])
        .current_dir(dir.path())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("openssl s_server");
    let _server = KillOnDrop(server);
    wait_for_listener(port);
    let mut env = S3Env::from_env();
    env.endpoint = format!("https://127.0.0.1:{port}");
    let mnt = tempfile::tempdir().unwrap();
    let out = mount_in_background(&env, "any-bucket", mnt.path());
    assert_fails_exactly(
        &out,
        &format!(
            "cannot reach 127.0.0.1:{port}: the server's TLS certificate is not trusted \
             (invalid peer certificate: UnknownIssuer); if your own CA signed it, set \
             AWS_CA_BUNDLE to that CA's PEM file"
        ),
    );
}

/// The one line a failed mount prints, exactly, and exit status 1.
fn assert_fails_exactly(out: &Output, line: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    assert_eq!(stderr, format!("s3mount: {line}\n"));
}

/// The one line a failed mount prints begins with `start` and ends with `end`
/// (the server's own words between), and exit status 1.
fn assert_fails_around(out: &Output, start: &str, end: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.starts_with(start), "{stderr}");
    assert!(stderr.ends_with(end), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}

fn host_port(env: &S3Env) -> &str {
    env.endpoint
        .split_once("://")
        .map_or(env.endpoint.as_str(), |(_, rest)| rest)
}

/// A port that was free a moment ago: nothing listens there.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_for_listener(port: u16) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "nothing listens on {port}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn endpoint_that_never_answers() {
    let mut env = S3Env::from_env();
    // Accepts connections (the kernel's backlog does) but never answers a request.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    env.endpoint = format!("http://{}", silent.local_addr().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let out = mount_in_background(&env, "any-bucket", dir.path());
    assert_fails_exactly(
        &out,
        &format!("no answer from {} within 10 s", host_port(&env)),
    );
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
