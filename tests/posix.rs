//! POSIX conformance: the pjdfstest suite against a real mount. The failures it
//! may have are listed in tests/pjdfstest.toml and explained in docs/POSIX.md;
//! any other failure, or a listed one that passes, fails this test.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{Mount, TestBucket, run_bounded};

#[test]
fn pjdfstest_passes_but_for_the_documented_failures() {
    let pjdfstest = std::env::var("PJDFSTEST").unwrap_or_else(|_| {
        panic!("PJDFSTEST is not set: run the tests with scripts/test.sh, which builds it")
    });
    let bucket = TestBucket::new("posix");
    // The suite switches to other users, who must reach the mount.
    let mount = Mount::new(&bucket, &["--allow-other"]);
    let parent = mount.path.parent().expect("the mount's directory");
    std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o755)).unwrap();
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/pjdfstest.toml");

    let mut cmd = Command::new(pjdfstest);
    cmd.arg("-c")
        .arg(&config)
        .arg("-p")
        .arg(&mount.path)
        .env("RUST_BACKTRACE", "0");
    let out = run_bounded(cmd, Duration::from_secs(20 * 60));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let summary = stdout
        .lines()
        .find(|l| l.starts_with("Summary"))
        .unwrap_or("no summary");
    eprintln!("pjdfstest: {summary}");
    let failures: Vec<&str> = stdout
        .lines()
        .filter(|l| l.contains("FAILED") || l.contains("PASSED UNEXPECTEDLY"))
        .collect();
    assert!(
        out.status.success(),
        "pjdfstest: {summary}\n{}\n{}",
        failures.join("\n"),
        String::from_utf8_lossy(&out.stderr)
    );
    mount.unmount();
}
