//! Content digests: `sha256:<64 lowercase hex>`, the one form wasmrun stores,
//! verifies and names files by.
//!
//! The OCI image spec (descriptor.md, "Digests") gives the grammar
//!
//! ```text
//! digest    ::= algorithm ":" encoded
//! algorithm ::= [a-z0-9]+ ([+._-] [a-z0-9]+)*
//! encoded   ::= [a-zA-Z0-9=_-]+
//! ```
//!
//! and, under "Registered algorithms", that the encoded part of `sha256` MUST
//! match `/[a-f0-9]{64}/`: lowercase hex only. wasmrun accepts exactly that
//! and nothing else: every blob it stores is verified with SHA-256, so another
//! algorithm (`sha512`, well-formed as it may be) is refused as unsupported,
//! and an uppercase or short hex is refused as malformed. Since a valid digest
//! holds only `[a-z0-9:]`, its hex can name a file without any escaping: no
//! digest can lead out of a directory.

use std::fmt;
use std::str::FromStr;

use sha2::Digest as _;

/// The only algorithm wasmrun verifies content with.
pub const SHA256: &str = "sha256";

/// A SHA-256 content digest, `sha256:<64 lowercase hex>`.
///
/// Parsed with [`FromStr`] or [`TryFrom`]; shown (and serialised) as that
/// same string.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Digest(String);

/// Why a string is not a digest wasmrun accepts; the message quotes the
/// string (cut to [`crate::error::MAX_ECHOED`] characters) and says what is
/// expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Not `algorithm:encoded` as the OCI grammar gives it.
    #[error("{} is not a digest: expected sha256:<64 lowercase hex>", crate::error::quoted(.0))]
    Malformed(String),
    /// A well-formed digest of an algorithm other than sha256.
    #[error("unsupported digest {}: only sha256 is supported", crate::error::quoted(.0))]
    Unsupported(String),
    /// `sha256:` followed by anything but 64 lowercase hex digits.
    #[error("unsupported digest {}: expected sha256:<64 lowercase hex>", crate::error::quoted(.0))]
    BadHex(String),
}

impl Digest {
    /// The digest of `bytes`.
    pub fn sha256(bytes: &[u8]) -> Self {
        Self::from_sha256(sha2::Sha256::digest(bytes).into())
    }

    /// The digest whose hash is `hash`, a finished SHA-256.
    pub fn from_sha256(hash: [u8; 32]) -> Self {
        Self(format!("{SHA256}:{}", hex::encode(hash)))
    }

    /// Always `sha256`.
    pub fn algorithm(&self) -> &str {
        SHA256
    }

    /// The 64 lowercase hex digits after `sha256:`.
    pub fn hex(&self) -> &str {
        &self.0[SHA256.len() + 1..]
    }

    /// The whole digest, `sha256:<hex>`.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Digest {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, ParseError> {
        Self::try_from(s.to_owned())
    }
}

impl TryFrom<String> for Digest {
    type Error = ParseError;

    fn try_from(s: String) -> Result<Self, ParseError> {
        let Some((algorithm, encoded)) = s.split_once(':') else {
            return Err(ParseError::Malformed(s));
        };
        if algorithm == SHA256 {
            if encoded.len() == 64 && encoded.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
                return Ok(Self(s));
            }
            return Err(ParseError::BadHex(s));
        }
        if well_formed_algorithm(algorithm) && well_formed_encoded(encoded) {
            Err(ParseError::Unsupported(s))
        } else {
            Err(ParseError::Malformed(s))
        }
    }
}

impl TryFrom<&str> for Digest {
    type Error = ParseError;

    fn try_from(s: &str) -> Result<Self, ParseError> {
        s.parse()
    }
}

impl From<Digest> for String {
    fn from(digest: Digest) -> Self {
        digest.0
    }
}

impl AsRef<str> for Digest {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl PartialEq<str> for Digest {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", self.0)
    }
}

/// `[a-z0-9]+ ([+._-] [a-z0-9]+)*`
fn well_formed_algorithm(algorithm: &str) -> bool {
    algorithm.split(['+', '.', '_', '-']).all(|component| {
        !component.is_empty() && component.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    })
}

/// `[a-zA-Z0-9=_-]+`
fn well_formed_encoded(encoded: &str) -> bool {
    !encoded.is_empty() && encoded.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'=' | b'_' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";

    #[test]
    fn parses_sha256_with_lowercase_hex() {
        let digest: Digest = format!("sha256:{HEX}").parse().unwrap();
        assert_eq!(digest.algorithm(), "sha256");
        assert_eq!(digest.hex(), HEX);
        assert_eq!(digest.to_string(), format!("sha256:{HEX}"));
        assert_eq!(digest, Digest::sha256(b"hello"));
        assert_eq!(Digest::try_from(format!("sha256:{HEX}").as_str()).unwrap(), digest);
    }

    #[test]
    fn refuses_what_the_spec_does_not_allow_for_sha256() {
        let upper = format!("sha256:{}", HEX.to_uppercase());
        let short = format!("sha256:{}", &HEX[..63]);
        let long = format!("sha256:{HEX}0");
        let non_hex = format!("sha256:{}g", &HEX[..63]);
        for bad in [upper.as_str(), &short, &long, &non_hex, "sha256:", "sha256:../../etc/passwd"] {
            assert!(matches!(bad.parse::<Digest>(), Err(ParseError::BadHex(_))), "{bad:?}");
        }
    }

    #[test]
    fn tells_an_unsupported_algorithm_from_a_malformed_digest() {
        let sha512 = format!("sha512:{}", "a".repeat(128));
        for unsupported in [sha512.as_str(), "multihash+base58:QmRZxt2b1FVZPNqd8hsiykDL3TdBDeTSPX9Kv46HmX4Gx8"] {
            assert!(matches!(unsupported.parse::<Digest>(), Err(ParseError::Unsupported(_))), "{unsupported:?}");
        }
        for malformed in ["", HEX, ":abc", "SHA256:abc", "sha256+:abc", "sha512:a/b", "sha512:", " sha256:abc"] {
            assert!(matches!(malformed.parse::<Digest>(), Err(ParseError::Malformed(_))), "{malformed:?}");
        }
    }

    #[test]
    fn errors_quote_the_input_cut_short() {
        let message = format!("sha256:{}", "x".repeat(10_000)).parse::<Digest>().unwrap_err().to_string();
        assert!(message.len() < 300, "{message}");
        assert!(message.contains("64 lowercase hex"), "{message}");
    }

    #[test]
    fn serialises_as_its_string() {
        let digest = Digest::sha256(b"hello");
        let json = serde_json::to_string(&digest).unwrap();
        assert_eq!(json, format!("\"sha256:{HEX}\""));
        assert_eq!(serde_json::from_str::<Digest>(&json).unwrap(), digest);
        assert!(serde_json::from_str::<Digest>("\"sha256:ABC\"").is_err());
    }
}
