//! A file of several GiB goes up as multipart and arrives intact.

mod common;

use std::io::Write;

use aws_sdk_s3::primitives::ByteStream;
use common::{Mount, Noise, TestBucket, close};
use sha2::{Digest, Sha256};

const GIB: u64 = 1 << 30;

async fn sha256_of(body: ByteStream) -> (u64, Vec<u8>) {
    let mut body = body.into_async_read();
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut len = 0;
    loop {
        let n = tokio::io::AsyncReadExt::read(&mut body, &mut buf)
            .await
            .unwrap();
        if n == 0 {
            return (len, hash.finalize().to_vec());
        }
        len += n as u64;
        hash.update(&buf[..n]);
    }
}

fn sha256_of_object(bucket: &TestBucket, key: &str) -> (u64, Vec<u8>) {
    let object = bucket
        .rt
        .block_on(
            bucket
                .client
                .get_object()
                .bucket(&bucket.name)
                .key(key)
                .send(),
        )
        .unwrap();
    bucket.rt.block_on(sha256_of(object.body))
}

#[test]
fn six_gib_file_goes_up_as_multipart_and_renames() {
    let bucket = TestBucket::new("six");
    let mount = Mount::new(&bucket, &[]);
    let size = 6 * GIB;
    let mut file = std::fs::File::create(mount.join("backup.tar")).unwrap();
    let mut noise = Noise::new(42);
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; 4 << 20];
    let mut written = 0;
    while written < size {
        noise.fill(&mut buf);
        hash.update(&buf);
        file.write_all(&buf).unwrap();
        written += buf.len() as u64;
    }
    close(file).unwrap();
    let expected = hash.finalize().to_vec();

    let head = bucket.head("backup.tar");
    assert_eq!(head.content_length(), Some(size as i64));
    // A multipart object's ETag ends in -<number of parts>.
    let etag = head
        .e_tag()
        .unwrap_or_default()
        .trim_matches('"')
        .to_string();
    assert!(etag.ends_with("-768"), "8 MiB parts expected, ETag {etag}");
    assert_eq!(
        sha256_of_object(&bucket, "backup.tar"),
        (size, expected.clone())
    );

    // Above 5 GiB a rename is a multipart copy, and so is a chmod (a copy of the
    // object onto itself with new metadata).
    let m = mount.path.display();
    common::sh(&format!(
        "mv {m}/backup.tar {m}/backup-1.tar && chmod 600 {m}/backup-1.tar"
    ));
    assert_eq!(bucket.keys(), ["backup-1.tar"]);
    let head = bucket
        .rt
        .block_on(
            bucket
                .client
                .head_object()
                .bucket(&bucket.name)
                .key("backup-1.tar")
                .send(),
        )
        .unwrap();
    let mode = head.metadata().and_then(|m| m.get("mode")).cloned();
    assert_eq!(mode, Some((libc::S_IFREG | 0o600).to_string()));
    assert_eq!(sha256_of_object(&bucket, "backup-1.tar"), (size, expected));
    mount.unmount();
}
