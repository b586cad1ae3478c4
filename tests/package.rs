//! The Debian package, as a user gets it: `scripts/package.sh` builds it, dpkg
//! installs it on this machine, `mount -t fuse.s3mount` mounts through the
//! helper it installs, `man s3mount` shows the options; dpkg removes it after.
//! A test binary of its own: nothing else runs while the package is installed.

mod common;

use std::time::Duration;

use common::{TestBucket, run_bounded, sh, sh_output, wait_until};

/// Removes the package however the test ends.
struct Installed;

impl Drop for Installed {
    fn drop(&mut self) {
        let _ = sh_output("dpkg --purge s3mount");
    }
}

#[test]
fn the_package_installs_mounts_through_mount_t_fuse_s3mount_and_has_a_man_page() {
    let bucket = TestBucket::new("package");
    let deb = sh(&format!("{}/package.sh", common::scripts().display()));
    let deb = deb.trim();
    let listed = sh(&format!("dpkg-deb --contents '{deb}'"));
    for path in [
        "./usr/bin/s3mount",
        "./sbin/mount.fuse.s3mount -> /usr/bin/s3mount",
        "./usr/share/man/man8/s3mount.8.gz",
        "./usr/share/doc/s3mount/s3mount@.service",
    ] {
        assert!(listed.contains(path), "{path} missing from {listed}");
    }
    // A package of the same name left by an earlier run is replaced.
    sh(&format!("dpkg -i '{deb}' > /dev/null"));
    let _installed = Installed;
    let man = sh("MANWIDTH=200 man -P cat s3mount 2>/dev/null");
    assert!(man.contains("--endpoint-url"), "{man}");
    assert!(man.contains("--allow-nonempty"), "{man}");

    let dir = tempfile::tempdir().unwrap();
    let (mnt, cache) = (dir.path().join("mnt"), dir.path().join("cache"));
    std::fs::create_dir(&mnt).unwrap();
    let env = &bucket.env;
    let mut mount = std::process::Command::new("mount");
    mount
        .args(["-t", "fuse.s3mount", &bucket.name])
        .arg(&mnt)
        .arg("-o")
        .arg(format!(
            "endpoint-url={},region={},force_path_style,cache-dir={}",
            env.endpoint,
            env.region,
            cache.display()
        ))
        .env("AWS_ACCESS_KEY_ID", &env.access_key)
        .env("AWS_SECRET_ACCESS_KEY", &env.secret_key)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env_remove("AWS_SESSION_TOKEN");
    let out = run_bounded(mount, Duration::from_secs(60));
    assert!(
        out.status.success(),
        "mount -t fuse.s3mount: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(common::is_mounted(&mnt));
    // The packaged binary serves it: the daemon named in the cache's lock.
    let lock = std::fs::read_to_string(cache.join("lock")).unwrap();
    let pid = lock.rsplit("process ").next().unwrap().trim();
    assert_eq!(
        std::fs::read_link(format!("/proc/{pid}/exe")).unwrap(),
        std::path::Path::new("/usr/bin/s3mount")
    );
    std::fs::write(mnt.join("from-the-package.txt"), "hello").unwrap();
    assert_eq!(bucket.get("from-the-package.txt").unwrap(), b"hello");
    sh(&format!("umount '{}'", mnt.display()));
    wait_until(Duration::from_secs(30), "the unmount", || {
        !common::is_mounted(&mnt)
    });
}
