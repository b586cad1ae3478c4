//! Mounting as a system does: `mount -t fuse.s3mount` with `-o` options, a line of
//! fstab through `mount -a -T`, and the helper name `mount.fuse.s3mount`.
//!
//! mount(8) runs `mount.fuse3`, which runs `s3mount` from mount(8)'s own PATH
//! (/usr/local/sbin first). Each test runs in a mount namespace of its own with a
//! directory holding `s3mount` bound over /usr/local/sbin, as `scripts/install.sh`
//! would have installed it, so the machine's own directories stay untouched.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::{BIN, S3Env, TestBucket, run_bounded, wait_until};

const LIMIT: Duration = Duration::from_secs(60);

/// A mountpoint, a cache directory, a log and the installed binary, in one temporary
/// directory.
struct Place {
    dir: tempfile::TempDir,
}

impl Place {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("mnt")).expect("mkdir mnt");
        std::fs::create_dir(dir.path().join("sbin")).expect("mkdir sbin");
        std::os::unix::fs::symlink(BIN, dir.path().join("sbin/s3mount")).expect("symlink");
        std::os::unix::fs::symlink(BIN, dir.path().join("sbin/mount.fuse.s3mount"))
            .expect("symlink");
        Self { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The options every test mount needs to reach the test server, as mount options.
    fn server_options(&self, env: &S3Env) -> String {
        format!(
            "endpoint-url={},region={},force_path_style,cache-dir={},log-file={},log-level=debug",
            env.endpoint,
            env.region,
            self.path("cache").display(),
            self.path("s3mount.log").display()
        )
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.path("s3mount.log")).unwrap_or_default()
    }

    /// Run `script` (bash) in a mount namespace of its own, with the binary
    /// installed where mount(8) looks, and the server's credentials in the
    /// environment as a service would have them.
    fn in_namespace(&self, env: &S3Env, script: &str) -> Output {
        let mut cmd = self.namespace_command(script);
        cmd.env("AWS_ACCESS_KEY_ID", &env.access_key)
            .env("AWS_SECRET_ACCESS_KEY", &env.secret_key);
        run_bounded(cmd, LIMIT)
    }

    /// The same without credentials in the environment: a mount at boot has none.
    fn namespace_command(&self, script: &str) -> Command {
        let mut cmd = Command::new("unshare");
        cmd.args([
            "--mount",
            "--propagation",
            "private",
            "--",
            "bash",
            "-euo",
            "pipefail",
            "-c",
        ])
        .arg(format!(
            "mount --bind {} /usr/local/sbin\n{script}",
            self.path("sbin").display()
        ))
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env_remove("AWS_SESSION_TOKEN")
        .env_remove("AWS_PROFILE")
        .env_remove("RUST_LOG")
        .env("AWS_EC2_METADATA_DISABLED", "true");
        cmd
    }

    /// The daemon outlives mount(8) and the namespace's shell: wait for it to say
    /// it has unmounted, and to exit.
    fn wait_for_exit(&self) {
        let pid = self.daemon_pid();
        assert!(!pid.is_empty(), "no process named in the cache lock");
        wait_until(LIMIT, "s3mount to exit after umount", || {
            self.log().contains("unmounted") && !Path::new(&format!("/proc/{pid}")).exists()
        });
    }

    /// The daemon's process id, from the note in the cache directory's lock file.
    fn daemon_pid(&self) -> String {
        let note = std::fs::read_to_string(self.path("cache/lock")).unwrap_or_default();
        note.rsplit("process ")
            .next()
            .filter(|pid| !pid.is_empty() && pid.chars().all(|c| c.is_ascii_digit()))
            .unwrap_or_default()
            .to_string()
    }
}

fn text(out: &Output) -> String {
    format!(
        "status {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn mount_t_fuse_s3mount_with_options_mounts_and_umount_unmounts() {
    let bucket = TestBucket::new("mount8");
    bucket.put("site/there.txt", "from S3\n");
    let place = Place::new();
    let mnt = place.path("mnt");
    let script = format!(
        r#"mount -t fuse.s3mount {bucket}:site {mnt} -o rw,noatime,nodev,_netdev,nofail,noexec,{options}
findmnt -n -o SOURCE,OPTIONS {mnt}
cat {mnt}/there.txt
echo written > {mnt}/new.txt
umount {mnt}"#,
        bucket = bucket.name,
        mnt = mnt.display(),
        options = place.server_options(&bucket.env),
    );
    let out = place.in_namespace(&bucket.env, &script);
    assert!(
        out.status.success(),
        "{}\nlog:\n{}",
        text(&out),
        place.log()
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let mut lines = stdout.lines();
    // Mounted by root, fuser mounts directly: the type is plain fuse.
    let mount_line = lines.next().unwrap_or_default();
    assert!(
        mount_line.starts_with(&format!("s3mount:{} ", bucket.name)),
        "{stdout}"
    );
    assert!(mount_line.contains("noexec"), "{stdout}");
    assert_eq!(lines.next(), Some("from S3"), "{stdout}");
    // close() waited for the upload: the object is there once the script ends.
    assert_eq!(
        bucket.get("site/new.txt").as_deref(),
        Some(&b"written\n"[..])
    );
    place.wait_for_exit();
}

/// The fstab line of the README, pointed at the test server.
fn readme_fstab_line() -> String {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    readme
        .lines()
        .map(str::trim)
        .find(|l| {
            let fields: Vec<&str> = l.split_whitespace().collect();
            fields.len() == 6 && fields[2] == "fuse.s3mount"
        })
        .expect("README.md has an fstab line of type fuse.s3mount")
        .to_string()
}

#[test]
fn the_readme_fstab_line_mounts_with_mount_a() {
    let bucket = TestBucket::new("fstab");
    bucket.put("site/index.html", "<h1>hi</h1>\n");
    let place = Place::new();
    let mnt = place.path("mnt");
    let line = readme_fstab_line();
    let fields: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(fields.len(), 6, "{line}");
    let (_, prefix) = fields[0]
        .split_once(':')
        .expect("BUCKET:PREFIX in the README line");
    // The README's options, pointed at the test server, cache and credentials.
    let credentials = place.path("credentials");
    bucket.env.write_credentials_file(&credentials);
    let mut options: Vec<String> = Vec::new();
    for option in fields[3].split(',') {
        match option.split_once('=') {
            Some(("endpoint-url" | "cache-dir", _)) => {}
            Some(("credentials-file", _)) => {
                options.push(format!("credentials-file={}", credentials.display()))
            }
            _ => options.push(option.to_string()),
        }
    }
    assert!(
        options.iter().any(|o| o.starts_with("credentials-file=")),
        "the README line names its credentials file"
    );
    let fstab = place.path("fstab");
    std::fs::write(
        &fstab,
        format!(
            "# a test fstab\n{}:{prefix} {} fuse.s3mount {},{} 0 0\n",
            bucket.name,
            mnt.display(),
            options.join(","),
            place.server_options(&bucket.env)
        ),
    )
    .expect("write fstab");
    let script = format!(
        "mount -a -T {fstab}\ncat {mnt}/index.html\numount {mnt}",
        fstab = fstab.display(),
        mnt = mnt.display()
    );
    // No credentials in the environment: those of the file the line names.
    let out = run_bounded(place.namespace_command(&script), LIMIT);
    assert!(
        out.status.success(),
        "{}\nlog:\n{}",
        text(&out),
        place.log()
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "<h1>hi</h1>\n");
    place.wait_for_exit();
}

#[test]
fn a_bad_mount_option_is_one_clear_line_and_a_failure() {
    let env = S3Env::from_env();
    let place = Place::new();
    let script = format!(
        "mount -t fuse.s3mount any {} -o cache-sise=1GiB,{}",
        place.path("mnt").display(),
        place.server_options(&env)
    );
    let out = place.in_namespace(&env, &script);
    assert!(!out.status.success(), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr.trim(),
        "s3mount: unknown mount option \"cache-sise\"",
        "{}",
        text(&out)
    );
}

#[test]
fn the_helper_name_takes_mount8_arguments_and_fake_mounts_nothing() {
    let bucket = TestBucket::new("helper");
    bucket.put("f.txt", "helper\n");
    let place = Place::new();
    let mnt = place.path("mnt");
    let helper = place.path("sbin/mount.fuse.s3mount");
    let options = place.server_options(&bucket.env);
    let mut cmd = Command::new(&helper);
    cmd.arg(&bucket.name)
        .arg(&mnt)
        .args(["-f", "-n", "-o", &options, "-t", "fuse.s3mount"]);
    let out = run_bounded(with_credentials(cmd, &bucket.env), LIMIT);
    assert!(out.status.success(), "{}", text(&out));
    assert!(!common::is_mounted(&mnt), "-f (fake) must not mount");

    let mut cmd = Command::new(&helper);
    cmd.arg(&bucket.name)
        .arg(&mnt)
        .args(["-n", "-o", &options, "-t", "fuse.s3mount"]);
    let out = run_bounded(with_credentials(cmd, &bucket.env), LIMIT);
    assert!(
        out.status.success(),
        "{}\nlog:\n{}",
        text(&out),
        place.log()
    );
    assert!(common::is_mounted(&mnt));
    assert_eq!(
        std::fs::read_to_string(mnt.join("f.txt")).unwrap(),
        "helper\n"
    );
    let out = Command::new("umount").arg(&mnt).output().expect("umount");
    assert!(out.status.success(), "{}", text(&out));
    place.wait_for_exit();
}

fn with_credentials(mut cmd: Command, env: &S3Env) -> Command {
    cmd.env("AWS_ACCESS_KEY_ID", &env.access_key)
        .env("AWS_SECRET_ACCESS_KEY", &env.secret_key)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env_remove("AWS_PROFILE")
        .env_remove("RUST_LOG");
    cmd
}

#[test]
fn version_names_the_commit() {
    let out = Command::new(BIN)
        .arg("--version")
        .output()
        .expect("s3mount --version");
    assert!(out.status.success());
    let version = String::from_utf8_lossy(&out.stdout);
    let head = Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("git");
    let head = String::from_utf8_lossy(&head.stdout).trim().to_string();
    assert!(
        version.starts_with(&format!(
            "s3mount {} (commit {head}",
            env!("CARGO_PKG_VERSION")
        )),
        "{version} (HEAD is {head})"
    );
}
