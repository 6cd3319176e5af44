//! Certificate fingerprints: sha256 over the DER certificate. This is what peers pin.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fmt;
use std::str::FromStr;

#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Fingerprint(#[serde(with = "hex_bytes")] pub [u8; 32]);

impl Fingerprint {
    /// The fingerprint of a DER-encoded certificate.
    pub fn of_der(der: &[u8]) -> Self {
        Fingerprint(Sha256::digest(der).into())
    }

    /// A short form for tables and logs (first 8 bytes).
    pub fn short(&self) -> String {
        hex::encode(&self.0[..8])
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({})", self.short())
    }
}

#[derive(Debug, thiserror::Error)]
#[error("a fingerprint is 64 hex digits (sha256 of the DER certificate)")]
pub struct FingerprintParseError;

impl FromStr for Fingerprint {
    type Err = FingerprintParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let cleaned: String = s.chars().filter(|c| *c != ':').collect();
        let bytes = hex::decode(cleaned).map_err(|_| FingerprintParseError)?;
        let array: [u8; 32] = bytes.try_into().map_err(|_| FingerprintParseError)?;
        Ok(Fingerprint(array))
    }
}

/// Hex in human-readable formats (JSON state files), raw bytes in binary ones (wire frames).
mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(&hex::encode(bytes))
        } else {
            s.serialize_bytes(bytes)
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        use serde::de::Error;
        if d.is_human_readable() {
            let text = String::deserialize(d)?;
            let bytes = hex::decode(text).map_err(D::Error::custom)?;
            bytes
                .try_into()
                .map_err(|_| D::Error::custom("fingerprint must be 32 bytes"))
        } else {
            let bytes: serde_bytes::ByteBuf = serde_bytes::ByteBuf::deserialize(d)?;
            bytes
                .into_vec()
                .try_into()
                .map_err(|_| D::Error::custom("fingerprint must be 32 bytes"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_text_and_json() {
        let fp = Fingerprint::of_der(b"certificate");
        let parsed: Fingerprint = fp.to_string().parse().expect("parse");
        assert_eq!(fp, parsed);
        let json = serde_json::to_string(&fp).expect("json");
        assert_eq!(json, format!("\"{fp}\""));
        let back: Fingerprint = serde_json::from_str(&json).expect("json back");
        assert_eq!(fp, back);
        let wire = postcard::to_allocvec(&fp).expect("postcard");
        let back: Fingerprint = postcard::from_bytes(&wire).expect("postcard back");
        assert_eq!(fp, back);
    }

    #[test]
    fn rejects_wrong_length() {
        assert!("abcd".parse::<Fingerprint>().is_err());
    }
}
