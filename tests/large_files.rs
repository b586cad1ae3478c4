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

#[test]
fn six_gib_file_goes_up_as_multipart() {
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

    let head = bucket
        .rt
        .block_on(
            bucket
                .client
                .head_object()
                .bucket(&bucket.name)
                .key("backup.tar")
                .send(),
        )
        .unwrap();
    assert_eq!(head.content_length(), Some(size as i64));
    // A multipart object's ETag ends in -<number of parts>.
    let etag = head
        .e_tag()
        .unwrap_or_default()
        .trim_matches('"')
        .to_string();
    assert!(etag.ends_with("-768"), "8 MiB parts expected, ETag {etag}");
    let object = bucket
        .rt
        .block_on(
            bucket
                .client
                .get_object()
                .bucket(&bucket.name)
                .key("backup.tar")
                .send(),
        )
        .unwrap();
    let (len, sum) = bucket.rt.block_on(sha256_of(object.body));
    assert_eq!(len, size);
    assert_eq!(sum, expected, "SHA-256 differs");
    mount.unmount();
}
