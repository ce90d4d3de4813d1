//! Signed webhook notifications: the payload a runner sends when a
//! proposal's lifecycle changes, how it is signed, and the check a receiver
//! makes ([`verify_webhook`]). Pure: bytes, keys and `now` in; the runner's
//! `notify` module does the HTTP.
//!
//! A notification is a JSON body ([`Payload`], compact) and three headers:
//!
//! ```text
//! Edge-Runner-Timestamp: 1767225600                     Unix seconds, decimal
//! Edge-Runner-Signature: ed25519=<base64>               64 bytes, standard alphabet, padded
//! Edge-Runner-Key: <runner>+<key id>+<base64 key>       `edge-runner evidence runner-key`
//! ```
//!
//! The signature is Ed25519, by the runner's identity key (the key that
//! signs its evidence checkpoints, which reviewers already pin), over
//!
//! ```text
//! "edge-runner-webhook.v1\n" ‖ timestamp ‖ "\n" ‖ body
//! ```
//!
//! **Domain separation.** The same key signs C2SP checkpoint notes, whose
//! signed text always ends in a newline. A webhook signing input ends with
//! its body, which [`Body::new`] only produces as compact JSON (ending in
//! `}`) and [`verify_webhook`] refuses when it ends in a newline: no
//! webhook signature is a note signature, and no note signature is a
//! webhook signature.
//!
//! **What a receiver learns.** Proposal ids, states, the tier, the
//! capsule's name and version and a console link: never a secret, a diff,
//! file content or plan text. Capsule-supplied strings are neutralised
//! (`crate::text::line`) by the runner before they are put in a body.
//!
//! The `Edge-Runner-Key` header only says which key signed (a receiver that
//! trusts several runners picks the one it pinned); the key to check with
//! is always the pinned one, never the header's.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};

use crate::note::{NoteSigner, NoteVerifier};

/// The `schema` of every v1 body.
pub const SCHEMA: &str = "https://edge-runner.dev/webhook/v1";
/// The first line of the signing input.
pub const CONTEXT: &str = "edge-runner-webhook.v1";
/// Header names (HTTP header names are case-insensitive).
pub const HEADER_TIMESTAMP: &str = "Edge-Runner-Timestamp";
pub const HEADER_SIGNATURE: &str = "Edge-Runner-Signature";
pub const HEADER_KEY: &str = "Edge-Runner-Key";
/// The delivery id (also the body's `id`): retries of one notification
/// carry the same id and body, so a receiver can drop duplicates.
pub const HEADER_DELIVERY: &str = "Edge-Runner-Delivery";
/// How the signature header value starts.
pub const SIGNATURE_PREFIX: &str = "ed25519=";
/// The age a receiver should accept by default (seconds), each way: a
/// delivery is signed again, with the current time, at every attempt.
pub const DEFAULT_MAX_AGE_SECS: u64 = 300;

/// The body of a v1 notification. Receivers should ignore fields they do
/// not know (later v1 runners may add some).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payload {
    /// Always [`SCHEMA`].
    pub schema: String,
    /// Unique per notification (the same on every attempt to deliver it).
    pub id: String,
    /// What happened: `awaiting-approval`, `approved`, `vetoed`, `expired`,
    /// `committed`, `rolled-back`, `refused` or `failed`.
    pub event: String,
    /// The runner's name (`runner.name`, the origin of its checkpoints).
    pub runner: String,
    pub proposal: String,
    /// The proposal's lifecycle state after the record (`core::lifecycle`).
    pub state: String,
    pub tier: Option<u8>,
    /// Unknown when the capsule was refused before it was read.
    pub capsule: Option<CapsuleRef>,
    pub approvals_required: u32,
    /// Where an approver reviews the proposal (the console), when known.
    pub link: Option<String>,
    /// When the record was written (RFC 3339, UTC).
    pub at: String,
    /// The evidence record (sequence number) that made the change: the
    /// receiver can find it in an export.
    pub record: u64,
}

/// A capsule's name and version, as its signed manifest gives them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapsuleRef {
    pub name: String,
    pub version: String,
}

/// A body as the runner sends it: the compact JSON of a [`Payload`]
/// (never ending in a newline: see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Body(Vec<u8>);

impl Body {
    /// Serialise a payload.
    pub fn new(p: &Payload) -> Self {
        // Strings, integers, options and a nested struct: serialising
        // cannot fail, and compact JSON of an object ends in `}`.
        Self(serde_json::to_vec(p).unwrap_or_else(|_| b"{}".to_vec()))
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

/// The exact bytes signed for `timestamp` and `body`.
pub fn signing_input(timestamp: u64, body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(CONTEXT.len() + 22 + body.len());
    m.extend_from_slice(CONTEXT.as_bytes());
    m.push(b'\n');
    m.extend_from_slice(timestamp.to_string().as_bytes());
    m.push(b'\n');
    m.extend_from_slice(body);
    m
}

/// The `Edge-Runner-Signature` value for `body` sent at `timestamp`.
pub fn sign(signer: &NoteSigner, timestamp: u64, body: &Body) -> String {
    let sig = signer.sign_raw(&signing_input(timestamp, body.as_bytes()));
    format!("{SIGNATURE_PREFIX}{}", B64.encode(sig.to_bytes()))
}

/// Why a notification was refused by [`verify_webhook`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WebhookError {
    #[error("the Edge-Runner-Timestamp header is not decimal Unix seconds")]
    Timestamp,
    #[error("the Edge-Runner-Signature header is not `ed25519=<base64 of 64 bytes>`")]
    SignatureFormat,
    #[error("the body ends in a newline: it is not a webhook body")]
    Body,
    #[error("the signature does not verify with the pinned runner key (body or timestamp altered, or another key)")]
    BadSignature,
    #[error("signed {age}s ago, more than the {max_age}s accepted (a replay, or delivered too late)")]
    Stale { age: u64, max_age: u64 },
    #[error("signed {ahead}s in the future, more than the {max_age}s accepted (check the clocks)")]
    Future { ahead: u64, max_age: u64 },
    #[error("the body is not a v1 webhook payload: {0}")]
    Payload(String),
}

/// A notification whose signature and age were checked: only
/// [`verify_webhook`] makes one, so code that takes it cannot skip the check.
#[derive(Debug)]
pub struct Verified<'b> {
    timestamp: u64,
    body: &'b [u8],
}

impl<'b> Verified<'b> {
    /// When the runner signed it (Unix seconds).
    pub fn timestamp(&self) -> u64 {
        self.timestamp
    }

    /// The verified body, byte for byte.
    pub fn body(&self) -> &'b [u8] {
        self.body
    }

    /// The verified body as a v1 payload.
    ///
    /// # Errors
    /// [`WebhookError::Payload`] if it is not one (another schema, or not JSON).
    pub fn payload(&self) -> Result<Payload, WebhookError> {
        let p: Payload = serde_json::from_slice(self.body).map_err(|e| WebhookError::Payload(e.to_string()))?;
        if p.schema != SCHEMA {
            return Err(WebhookError::Payload(format!("schema is not {SCHEMA}")));
        }
        Ok(p)
    }
}

/// Check a notification as a receiver got it: the header values as sent,
/// the raw body (before any JSON parsing), the runner key the receiver
/// pinned, its clock and the largest age it accepts (each way).
///
/// Checklist, in order:
///
/// 1. the body does not end in a newline (domain separation from notes);
/// 2. the timestamp is 1-19 ASCII digits;
/// 3. the signature is `ed25519=` and the strict base64 of 64 bytes;
/// 4. it verifies (`verify_strict`) over [`signing_input`] with `key`;
/// 5. the timestamp is within `max_age_secs` of `now` (a captured
///    notification replayed later is refused; dedupe by `id` within the
///    window).
///
/// # Errors
/// The first check that failed.
pub fn verify_webhook<'b>(
    key: &NoteVerifier,
    timestamp: &str,
    body: &'b [u8],
    signature: &str,
    now: u64,
    max_age_secs: u64,
) -> Result<Verified<'b>, WebhookError> {
    if body.last() == Some(&b'\n') {
        return Err(WebhookError::Body);
    }
    if timestamp.is_empty() || timestamp.len() > 19 || !timestamp.bytes().all(|b| b.is_ascii_digit()) {
        return Err(WebhookError::Timestamp);
    }
    let ts: u64 = timestamp.parse().map_err(|_| WebhookError::Timestamp)?;
    let raw = signature
        .strip_prefix(SIGNATURE_PREFIX)
        .and_then(|b| B64.decode(b).ok())
        .ok_or(WebhookError::SignatureFormat)?;
    let sig = ed25519_dalek::Signature::from_slice(&raw).map_err(|_| WebhookError::SignatureFormat)?;
    key.verify_strict(&signing_input(ts, body), &sig).map_err(|_| WebhookError::BadSignature)?;
    if now > ts && now - ts > max_age_secs {
        return Err(WebhookError::Stale { age: now - ts, max_age: max_age_secs });
    }
    if ts > now && ts - now > max_age_secs {
        return Err(WebhookError::Future { ahead: ts - now, max_age: max_age_secs });
    }
    Ok(Verified { timestamp: ts, body })
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_767_225_600;

    fn signer() -> NoteSigner {
        NoteSigner::new("edge-runner.test/r1", ed25519_dalek::SigningKey::from_bytes(&[7; 32])).unwrap()
    }

    fn payload() -> Payload {
        Payload {
            schema: SCHEMA.into(),
            id: "d-1".into(),
            event: "awaiting-approval".into(),
            runner: "edge-runner.test/r1".into(),
            proposal: "p-1767225600000-0123abcd".into(),
            state: "awaiting-approval".into(),
            tier: Some(2),
            capsule: Some(CapsuleRef { name: "config-drift".into(), version: "1.0.0".into() }),
            approvals_required: 2,
            link: Some("https://console.test/proposals/p-1767225600000-0123abcd".into()),
            at: "2026-01-01T00:00:00Z".into(),
            record: 42,
        }
    }

    #[test]
    fn a_signed_notification_verifies_and_parses() {
        let s = signer();
        let body = Body::new(&payload());
        let sig = sign(&s, NOW, &body);
        let v = verify_webhook(s.verifier(), &NOW.to_string(), body.as_bytes(), &sig, NOW + 10, 300).unwrap();
        assert_eq!(v.timestamp(), NOW);
        assert_eq!(v.payload().unwrap(), payload());
        // The pinned key as reviewers hold it (`evidence runner-key`).
        let pinned = NoteVerifier::parse(&s.verifier().to_vkey()).unwrap();
        verify_webhook(&pinned, &NOW.to_string(), body.as_bytes(), &sig, NOW, 300).unwrap();
    }

    #[test]
    fn a_tampered_body_timestamp_or_key_fails() {
        let s = signer();
        let body = Body::new(&payload());
        let sig = sign(&s, NOW, &body);
        let ts = NOW.to_string();
        let tampered = String::from_utf8(body.as_bytes().to_vec()).unwrap().replace("\"tier\":2", "\"tier\":0");
        let v = |t: &str, b: &[u8], sig: &str| verify_webhook(s.verifier(), t, b, sig, NOW, 300).map(drop);
        assert_eq!(v(&ts, tampered.as_bytes(), &sig), Err(WebhookError::BadSignature));
        assert_eq!(v(&(NOW - 1).to_string(), body.as_bytes(), &sig), Err(WebhookError::BadSignature));
        let other = NoteSigner::new("edge-runner.test/r1", ed25519_dalek::SigningKey::from_bytes(&[8; 32])).unwrap();
        assert_eq!(
            verify_webhook(other.verifier(), &ts, body.as_bytes(), &sig, NOW, 300).map(drop),
            Err(WebhookError::BadSignature)
        );
        // Malformed headers.
        for bad_ts in ["", "+1767225600", " 1767225600", "1767225600.0", "-1", "99999999999999999999"] {
            assert_eq!(v(bad_ts, body.as_bytes(), &sig), Err(WebhookError::Timestamp), "{bad_ts:?}");
        }
        let raw = sig.strip_prefix(SIGNATURE_PREFIX).unwrap();
        for bad_sig in [raw.to_owned(), format!("ed25519:{raw}"), "ed25519=AAAA".to_owned(), format!("{sig}=")] {
            assert_eq!(v(&ts, body.as_bytes(), &bad_sig), Err(WebhookError::SignatureFormat), "{bad_sig}");
        }
    }

    #[test]
    fn an_old_or_future_timestamp_fails_even_when_signed() {
        let s = signer();
        let body = Body::new(&payload());
        let old = NOW - 301;
        let sig = sign(&s, old, &body);
        assert_eq!(
            verify_webhook(s.verifier(), &old.to_string(), body.as_bytes(), &sig, NOW, 300).map(drop),
            Err(WebhookError::Stale { age: 301, max_age: 300 })
        );
        let ahead = NOW + 301;
        let sig = sign(&s, ahead, &body);
        assert_eq!(
            verify_webhook(s.verifier(), &ahead.to_string(), body.as_bytes(), &sig, NOW, 300).map(drop),
            Err(WebhookError::Future { ahead: 301, max_age: 300 })
        );
        // At the edge of the window it is accepted.
        let edge = NOW - 300;
        let sig = sign(&s, edge, &body);
        verify_webhook(s.verifier(), &edge.to_string(), body.as_bytes(), &sig, NOW, 300).unwrap();
    }

    #[test]
    fn webhook_and_checkpoint_signatures_never_stand_for_each_other() {
        let s = signer();
        // A note whose text is the signing input plus the newline notes need.
        let body = br#"{"a":1}"#;
        let text = format!("{}\n", String::from_utf8(signing_input(NOW, body)).unwrap());
        let note_line = s.signature_line(&text);
        let note_sig = B64.decode(note_line.rsplit(' ').next().unwrap().trim()).unwrap();
        let as_webhook = format!("{SIGNATURE_PREFIX}{}", B64.encode(&note_sig[4..]));
        let with_newline = [body.as_slice(), b"\n"].concat();
        assert_eq!(
            verify_webhook(s.verifier(), &NOW.to_string(), &with_newline, &as_webhook, NOW, 300).map(drop),
            Err(WebhookError::Body)
        );
        // A webhook signature is over text without the final newline.
        let sig = sign(&s, NOW, &Body(body.to_vec()));
        let raw = B64.decode(sig.strip_prefix(SIGNATURE_PREFIX).unwrap()).unwrap();
        let key_id = &note_sig[..4];
        let genuine = format!("{text}\n{note_line}");
        assert!(crate::note::open(&genuine, &[s.verifier().clone()]).is_ok(), "the note itself opens");
        let forged = format!("{text}\n\u{2014} {} {}\n", s.verifier().name, B64.encode([key_id, &raw].concat()));
        assert!(crate::note::open(&forged, &[s.verifier().clone()]).is_err());
    }

    #[test]
    fn another_schema_is_not_a_v1_payload() {
        let s = signer();
        let mut p = payload();
        p.schema = "https://example.test/other".into();
        let body = Body::new(&p);
        let sig = sign(&s, NOW, &body);
        let v = verify_webhook(s.verifier(), &NOW.to_string(), body.as_bytes(), &sig, NOW, 300).unwrap();
        assert!(matches!(v.payload(), Err(WebhookError::Payload(_))));
    }

    proptest::proptest! {
        #[test]
        fn sign_then_verify_round_trips_and_any_flipped_byte_fails(
            proposal in "[a-z0-9-]{1,40}", tier in proptest::option::of(0u8..4), at in 0u64..(1 << 40), flip in 0usize..4096
        ) {
            let s = signer();
            let mut p = payload();
            p.proposal = proposal;
            p.tier = tier;
            let body = Body::new(&p);
            let sig = sign(&s, at, &body);
            let ok = verify_webhook(s.verifier(), &at.to_string(), body.as_bytes(), &sig, at, 0).unwrap();
            proptest::prop_assert_eq!(ok.payload().unwrap(), p);
            let mut bad = body.as_bytes().to_vec();
            let i = flip % bad.len();
            bad[i] ^= 0x20;
            proptest::prop_assert!(verify_webhook(s.verifier(), &at.to_string(), &bad, &sig, at, 0).is_err());
        }
    }
}
