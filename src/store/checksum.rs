//! CRC32C checksums of bodies, as S3 takes them (`x-amz-checksum-crc32c`: the
//! big-endian CRC in base64). A body goes unsigned (UNSIGNED-PAYLOAD) with its
//! CRC32C, which the server checks: no SHA-256 of every byte for the signature,
//! and the body is guarded over plain http too.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use crc_fast::{CrcAlgorithm, Digest};
use serde::{Deserialize, Serialize};

/// The CRC32C of a body.
#[derive(Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub struct Crc32c(u32);

impl Crc32c {
    pub fn of(data: &[u8]) -> Self {
        let mut digest = Crc32cDigest::new();
        digest.update(data);
        digest.finish()
    }

    /// The value as S3 writes it in headers and listings.
    pub fn to_base64(self) -> String {
        STANDARD.encode(self.0.to_be_bytes())
    }

    /// A value as S3 writes it; `None` for anything else (a multipart object's
    /// checksum of checksums, `...-N`, among them).
    pub fn from_base64(s: &str) -> Option<Self> {
        let bytes: [u8; 4] = STANDARD.decode(s).ok()?.try_into().ok()?;
        Some(Self(u32::from_be_bytes(bytes)))
    }
}

impl fmt::Debug for Crc32c {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Crc32c({})", self.to_base64())
    }
}

impl From<Crc32c> for String {
    fn from(c: Crc32c) -> String {
        c.to_base64()
    }
}

impl TryFrom<String> for Crc32c {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        Self::from_base64(&s).ok_or_else(|| format!("not a CRC32C: {s:?}"))
    }
}

/// A CRC32C computed as the bytes pass.
pub struct Crc32cDigest(Digest);

impl Crc32cDigest {
    pub fn new() -> Self {
        Self(Digest::new(CrcAlgorithm::Crc32Iscsi))
    }

    pub fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }

    pub fn finish(&self) -> Crc32c {
        // A 32-bit CRC in a u64.
        Crc32c(self.0.finalize() as u32)
    }
}

impl Default for Crc32cDigest {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_those_s3_gives() {
        // Garage 2.5 and S3 answer "yZRlqg==" for "hello world".
        assert_eq!(Crc32c::of(b"hello world").to_base64(), "yZRlqg==");
        let mut digest = Crc32cDigest::new();
        digest.update(b"hello ");
        digest.update(b"world");
        assert_eq!(digest.finish(), Crc32c::of(b"hello world"));
        let c = Crc32c::of(b"x");
        assert_eq!(Crc32c::from_base64(&c.to_base64()), Some(c));
        assert_eq!(Crc32c::from_base64("LMlWjA==-2"), None);
        let json = serde_json::to_string(&c).unwrap();
        assert_eq!(serde_json::from_str::<Crc32c>(&json).unwrap(), c);
    }
}
