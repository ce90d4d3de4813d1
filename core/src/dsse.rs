//! DSSE v1 envelopes and the in-toto Statement that names a capsule.
//!
//! The signature covers PAE(payloadType, payload) — DSSE's domain-separated
//! encoding — never the raw payload, so a signature over a capsule statement
//! cannot be replayed as a signature over anything else.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};

use crate::digest::Sha256Digest;

/// DSSE payload type for in-toto statements.
pub const IN_TOTO_PAYLOAD_TYPE: &str = "application/vnd.in-toto+json";
/// in-toto Statement type.
pub const STATEMENT_TYPE: &str = "https://in-toto.io/Statement/v1";
/// Our predicate type: "this subject is an Edge Runner capsule manifest".
pub const CAPSULE_PREDICATE_TYPE: &str = "https://edge-runner.dev/capsule/v1";

/// DSSE pre-authentication encoding.
pub fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + payload_type.len() + 32);
    out.extend_from_slice(b"DSSEv1 ");
    out.extend_from_slice(payload_type.len().to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(payload_type.as_bytes());
    out.push(b' ');
    out.extend_from_slice(payload.len().to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(payload);
    out
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    pub payload: String,
    #[serde(rename = "payloadType")]
    pub payload_type: String,
    pub signatures: Vec<EnvelopeSignature>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvelopeSignature {
    pub sig: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub keyid: String,
}

impl Envelope {
    /// Decode the payload bytes.
    ///
    /// # Errors
    /// If the payload is not valid base64.
    pub fn payload_bytes(&self) -> Result<Vec<u8>, base64::DecodeError> {
        B64.decode(&self.payload)
    }
}

/// The in-toto Statement signed for a capsule: its subject is the capsule
/// digest (SHA-256 of the canonical manifest, which pins the component).
pub fn capsule_statement(name: &str, version: &str, capsule: Sha256Digest, component: Sha256Digest) -> Vec<u8> {
    let statement = serde_json::json!({
        "_type": STATEMENT_TYPE,
        "subject": [{"name": format!("{name}@{version}"), "digest": {"sha256": capsule.hex()}}],
        "predicateType": CAPSULE_PREDICATE_TYPE,
        "predicate": {"component": {"sha256": component.hex()}},
    });
    crate::canonical::to_canonical_vec(&statement).expect("statement has no floats")
}

/// Encode bytes as standard base64 (as DSSE and Sigstore bundles use).
pub fn b64(bytes: &[u8]) -> String {
    B64.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `../shared/vectors/dsse.json`: the published PAE example.
    #[test]
    fn pae_matches_published_vector() {
        let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/vectors/dsse.json"))
            .expect("shared vectors missing: ../shared/vectors/dsse.json must exist beside the project");
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        let got = pae(v["payload_type"].as_str().unwrap(), v["payload"].as_str().unwrap().as_bytes());
        assert_eq!(String::from_utf8(got).unwrap(), v["pae"].as_str().unwrap());
        assert_eq!(pae("", b""), b"DSSEv1 0  0 ");
    }
}
