//! Bodies go with UNSIGNED-PAYLOAD and their CRC32C, which the server checks,
//! over plain http too: seen on the wire in the fault proxy's request log. A
//! server that refuses checksums gets signed bodies instead, and the mount's
//! log says so once.

mod common;

use std::io::Write;

use aws_sdk_s3::types::ChecksumMode;
use common::faults::{FaultProxy, Rates};
use common::{Mount, Noise, TestBucket, close};
use s3mount::store::Crc32c;

/// The proxy's request lines: `request method=M path=P query=Q header=value...`.
fn requests(proxy: &FaultProxy) -> Vec<String> {
    std::fs::read_to_string(&proxy.log)
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("request "))
        .map(str::to_string)
        .collect()
}

/// PutObject and UploadPart: the requests that carry a body.
fn with_body(lines: &[String]) -> Vec<&String> {
    lines
        .iter()
        .filter(|l| l.contains("method=PUT") && !l.contains("x-amz-copy-source="))
        .collect()
}

/// Write a small file and one of several parts through `mount`; returns both.
fn write_two(mount: &Mount) -> (Vec<u8>, Vec<u8>) {
    let small = b"<html>the new front page</html>\n".to_vec();
    let mut f = std::fs::File::create(mount.join("index.html")).unwrap();
    f.write_all(&small).unwrap();
    close(f).expect("close of the small file");
    let mut big = vec![0u8; 40 << 20];
    Noise::new(29).fill(&mut big);
    let mut f = std::fs::File::create(mount.join("backup.bin")).unwrap();
    for chunk in big.chunks(1 << 20) {
        f.write_all(chunk).unwrap();
    }
    close(f).expect("close of the large file");
    (small, big)
}

fn assert_stored(bucket: &TestBucket, small: &[u8], big: &[u8]) {
    assert_eq!(bucket.get("index.html").as_deref(), Some(small));
    assert!(
        bucket.get("backup.bin").as_deref() == Some(big),
        "the large file is whole"
    );
}

#[test]
fn bodies_go_unsigned_with_a_crc32c_the_server_checks() {
    let bucket = TestBucket::new("crcwire");
    let proxy = FaultProxy::narrowed(&bucket.env, 1, Rates::mixed(0.0), 0, &["--log-requests"]);
    let mount = Mount::source(&proxy.env, &bucket.name, &[]);
    let (small, big) = write_two(&mount);
    assert!(mount.unmount().success());
    assert_stored(&bucket, &small, &big);

    let lines = requests(&proxy);
    let bodies = with_body(&lines);
    let parts = bodies.iter().filter(|l| l.contains("partNumber=")).count();
    assert!(parts >= 5, "40 MiB went in 8 MiB parts: {bodies:#?}");
    assert!(
        bodies.len() > parts,
        "and the small file in a PutObject: {bodies:#?}"
    );
    for line in &bodies {
        assert!(
            line.contains("x-amz-content-sha256=UNSIGNED-PAYLOAD")
                && line.contains("x-amz-checksum-crc32c="),
            "a body not sent unsigned with its CRC32C: {line}"
        );
    }
    let created: Vec<_> = lines
        .iter()
        .filter(|l| l.contains("query=uploads"))
        .collect();
    assert!(!created.is_empty());
    for line in created {
        assert!(
            line.contains("x-amz-checksum-algorithm=CRC32C"),
            "an upload created without checksums: {line}"
        );
    }
    // The server took the checksum and keeps it: it checked it.
    let head = bucket
        .rt
        .block_on(
            bucket
                .client
                .head_object()
                .bucket(&bucket.name)
                .key("index.html")
                .checksum_mode(ChecksumMode::Enabled)
                .send(),
        )
        .unwrap();
    assert_eq!(
        head.checksum_crc32_c(),
        Some(Crc32c::of(&small).to_base64().as_str())
    );
}

#[test]
fn a_server_that_refuses_checksums_gets_signed_bodies_and_the_log_says_so_once() {
    let bucket = TestBucket::new("crcrefused");
    let only = ["--log-requests", "--refuse-checksums"];
    let proxy = FaultProxy::narrowed(&bucket.env, 1, Rates::mixed(0.0), 0, &only);
    let mount = Mount::source(&proxy.env, &bucket.name, &[]);
    let (small, big) = write_two(&mount);
    let log = mount.log_text();
    assert!(mount.unmount().success());
    assert_stored(&bucket, &small, &big);

    let said = log
        .lines()
        .filter(|l| l.contains("refuses CRC32C checksums"))
        .count();
    assert_eq!(said, 1, "said once: {log}");
    // Past the first refusal, every body is signed: over plain http the
    // signature is what guards it.
    let lines = requests(&proxy);
    let bodies = with_body(&lines);
    let refused = bodies
        .iter()
        .take_while(|l| l.contains("x-amz-checksum-crc32c="))
        .count();
    assert_eq!(
        refused, 1,
        "one request with a checksum, refused: {bodies:#?}"
    );
    for line in &bodies[refused..] {
        let signed = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("x-amz-content-sha256="))
            .is_some_and(|v| v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit()));
        assert!(
            signed && !line.contains("x-amz-checksum"),
            "a body neither signed nor without checksum: {line}"
        );
    }
    assert!(bodies[refused..].iter().any(|l| l.contains("partNumber=")));
}
