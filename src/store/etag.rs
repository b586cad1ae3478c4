//! ETags as S3 computes them for objects it stores without encryption by KMS: the
//! MD5 of the body for an object stored in one request, and for a multipart
//! object the MD5 of its parts' MD5s with the number of parts. s3mount uses them
//! to tell its own upload (finished by an earlier run that died before noting
//! it) from another writer's; a server whose ETags are something else only makes
//! s3mount keep both versions.

use md5::{Digest, Md5};

/// The ETag of an object stored in one request: the MD5 of `body`, quoted.
pub fn of_body(body: &[u8]) -> String {
    format!("\"{}\"", hex(&Md5::digest(body)))
}

/// The ETag of a multipart object whose parts have ETags `parts`, in order;
/// `None` if a part's ETag is not an MD5.
pub fn of_parts(parts: &[&str]) -> Option<String> {
    let mut digests = Md5::new();
    for etag in parts {
        digests.update(unhex(etag.trim_matches('"'))?);
    }
    Some(format!("\"{}-{}\"", hex(&digests.finalize()), parts.len()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() != 32 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etags_are_those_s3_gives() {
        // Values S3 gives: the MD5 of "hello", and a two-part upload of it twice.
        assert_eq!(of_body(b"hello"), "\"5d41402abc4b2a76b9719d911017c592\"");
        let part = of_body(b"hello");
        let two = of_parts(&[&part, &part]).unwrap();
        assert!(two.ends_with("-2\""), "{two}");
        assert_eq!(of_parts(&["\"not-an-md5\""]), None);
    }
}
