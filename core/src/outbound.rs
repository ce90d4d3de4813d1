//! Signed outbound messages: what a runner publishes to NATS (answers,
//! proposal documents and previews, proposal events) carries a signature
//! by its identity key, so a client believes the runner and not whoever
//! may publish on the runner's outbound subjects. Pure: bytes and keys in.
//!
//! A message carries two headers:
//!
//! ```text
//! Edge-Runner-Signature: ed25519=<base64>      64 bytes, standard alphabet, padded
//! Edge-Runner-Answers: <stream>@<created>:<sequence>   an answer: the request it answers
//! ```
//!
//! The signature is Ed25519, by the runner's identity key (the key that
//! signs its checkpoints; `edge-runner evidence runner-key`), over
//!
//! ```text
//! "edge-runner-nats.v1\n" ‖ subject ‖ "\n" ‖ answers ‖ "\n" ‖ hex(SHA-256(body))
//! ```
//!
//! where `answers` is `-` for what answers no request.
//!
//! **What it binds.** The subject names what the message is (the answer to
//! request id X, the document of proposal P), so a genuine message copied
//! to another subject fails. `answers` binds an answer to the request the
//! runner took from its inbound stream: the client checks it against the
//! sequence the server confirmed for its own publish, so a genuine answer
//! to an earlier request with the same id is not this request's answer.
//! `<created>` (the stream's creation time, in nanoseconds) tells a stream
//! made again, whose sequence starts over, from the one the client used.
//!
//! **What it does not.** Freshness: a genuine message can be published
//! again on its own subject (an old state event after a newer one). Clients
//! treat a proposal's state as advisory; the runner decides.
//!
//! **Domain separation.** The signing input ends with 64 hex digits, never
//! a newline, so it is never a C2SP note text (which the same key signs);
//! its first line differs from a webhook's (`crate::webhook`).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;

use crate::Sha256Digest;
use crate::note::{NoteSigner, NoteVerifier};

/// The first line of the signing input.
pub const CONTEXT: &str = "edge-runner-nats.v1";
/// Header names.
pub const HEADER_SIGNATURE: &str = "Edge-Runner-Signature";
pub const HEADER_ANSWERS: &str = "Edge-Runner-Answers";
/// On a request (from the client): the subject token its answer goes
/// under (`out.answer.<token>.<message id>`), so that NATS permissions can
/// let each client read only its own answers.
pub const HEADER_REPLY: &str = "Edge-Runner-Reply";
/// How the signature header value starts.
pub const SIGNATURE_PREFIX: &str = "ed25519=";
/// `answers` for a message that answers no request.
pub const NO_REQUEST: &str = "-";

/// The exact bytes signed.
pub fn signing_input(subject: &str, answers: &str, body: &[u8]) -> Vec<u8> {
    format!("{CONTEXT}\n{subject}\n{answers}\n{}", Sha256Digest::of(body).hex()).into_bytes()
}

/// The `Edge-Runner-Signature` value for `body` published on `subject`.
pub fn sign(signer: &NoteSigner, subject: &str, answers: &str, body: &[u8]) -> String {
    let sig = signer.sign_raw(&signing_input(subject, answers, body));
    format!("{SIGNATURE_PREFIX}{}", B64.encode(sig.to_bytes()))
}

/// Why a message was refused by [`verify`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OutboundError {
    #[error("the message is not signed (no Edge-Runner-Signature header)")]
    Unsigned,
    #[error("the Edge-Runner-Signature header is not `ed25519=<base64 of 64 bytes>`")]
    SignatureFormat,
    #[error("it answers {found}, not the request the server stored as {expected}")]
    OtherRequest { expected: String, found: String },
    #[error(
        "the signature does not verify with the runner's key (altered, moved from another subject, or signed by \
         another key)"
    )]
    BadSignature,
}

/// Check a message as a client got it: the subject it arrived on, the
/// header values (None when absent), its body, the runner key the client
/// pinned, and what it must answer (`NO_REQUEST` for what answers none).
///
/// # Errors
/// The first check that failed: unsigned, malformed, a signature that does
/// not verify, or another request's answer.
pub fn verify(
    key: &NoteVerifier,
    subject: &str,
    expected_answers: &str,
    answers: Option<&str>,
    signature: Option<&str>,
    body: &[u8],
) -> Result<(), OutboundError> {
    answering(signed_answers(key, subject, answers, signature, body)?, expected_answers)
}

/// The request a message says it answers (`NO_REQUEST` when none), once
/// its signature is checked over that claim: an unsigned header is never
/// compared, nor repeated in an error.
///
/// # Errors
/// Unsigned, malformed, or a signature that does not verify.
pub fn signed_answers<'a>(
    key: &NoteVerifier,
    subject: &str,
    answers: Option<&'a str>,
    signature: Option<&str>,
    body: &[u8],
) -> Result<&'a str, OutboundError> {
    let signature = signature.ok_or(OutboundError::Unsigned)?;
    let raw = signature
        .strip_prefix(SIGNATURE_PREFIX)
        .and_then(|b| B64.decode(b).ok())
        .ok_or(OutboundError::SignatureFormat)?;
    let sig = ed25519_dalek::Signature::from_slice(&raw).map_err(|_| OutboundError::SignatureFormat)?;
    let found = answers.unwrap_or(NO_REQUEST);
    key.verify_strict(&signing_input(subject, found, body), &sig).map_err(|_| OutboundError::BadSignature)?;
    Ok(found)
}

/// `Ok` when a signed message's claim ([`signed_answers`]) is the request
/// expected; else the runner's genuine answer to another request.
///
/// # Errors
/// [`OutboundError::OtherRequest`].
pub fn answering(found: &str, expected_answers: &str) -> Result<(), OutboundError> {
    if found != expected_answers {
        return Err(OutboundError::OtherRequest {
            expected: expected_answers.to_owned(),
            found: crate::text::line(found).into_owned(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer(seed: u8) -> NoteSigner {
        NoteSigner::new("edge-runner.test/r1", ed25519_dalek::SigningKey::from_bytes(&[seed; 32])).unwrap()
    }

    const SUBJECT: &str = "edge.r1.out.answer.abc";

    #[test]
    fn a_signed_answer_verifies_with_the_pinned_key() {
        let s = signer(7);
        let sig = sign(&s, SUBJECT, "edge_r1_in:9", b"{\"state\":\"committed\"}");
        let pinned = NoteVerifier::parse(&s.verifier().to_vkey()).unwrap();
        verify(&pinned, SUBJECT, "edge_r1_in:9", Some("edge_r1_in:9"), Some(&sig), b"{\"state\":\"committed\"}")
            .unwrap();
        let doc = sign(&s, "edge.r1.out.proposal.p-1", NO_REQUEST, b"{}");
        verify(&pinned, "edge.r1.out.proposal.p-1", NO_REQUEST, None, Some(&doc), b"{}").unwrap();
    }

    #[test]
    fn a_forged_moved_replayed_or_unsigned_message_fails() {
        let s = signer(7);
        let body = b"{\"state\":\"committed\"}".as_slice();
        let sig = sign(&s, SUBJECT, "edge_r1_in:9", body);
        let v = |subject: &str, expected: &str, answers: Option<&str>, sig: Option<&str>, body: &[u8]| {
            verify(s.verifier(), subject, expected, answers, sig, body)
        };
        // Another body, another subject (a genuine answer moved to another id).
        assert_eq!(
            v(SUBJECT, "edge_r1_in:9", Some("edge_r1_in:9"), Some(&sig), b"{\"state\":\"refused\"}"),
            Err(OutboundError::BadSignature)
        );
        assert_eq!(
            v("edge.r1.out.answer.xyz", "edge_r1_in:9", Some("edge_r1_in:9"), Some(&sig), body),
            Err(OutboundError::BadSignature)
        );
        // A genuine answer to an earlier request of the same id.
        assert_eq!(
            v(SUBJECT, "edge_r1_in:12", Some("edge_r1_in:9"), Some(&sig), body),
            Err(OutboundError::OtherRequest { expected: "edge_r1_in:12".into(), found: "edge_r1_in:9".into() })
        );
        // A header claiming the right request over a signature for another.
        assert_eq!(
            v(SUBJECT, "edge_r1_in:12", Some("edge_r1_in:12"), Some(&sig), body),
            Err(OutboundError::BadSignature)
        );
        // Another key; unsigned; malformed.
        let other = signer(8);
        let forged = sign(&other, SUBJECT, "edge_r1_in:9", body);
        assert_eq!(
            v(SUBJECT, "edge_r1_in:9", Some("edge_r1_in:9"), Some(&forged), body),
            Err(OutboundError::BadSignature)
        );
        assert_eq!(v(SUBJECT, "edge_r1_in:9", Some("edge_r1_in:9"), None, body), Err(OutboundError::Unsigned));
        let raw = sig.strip_prefix(SIGNATURE_PREFIX).unwrap();
        for bad in [raw.to_owned(), "ed25519=AAAA".to_owned(), format!("{sig}=")] {
            assert_eq!(
                v(SUBJECT, "edge_r1_in:9", Some("edge_r1_in:9"), Some(&bad), body),
                Err(OutboundError::SignatureFormat),
                "{bad}"
            );
        }
    }

    #[test]
    fn no_outbound_signature_is_a_note_or_webhook_signature() {
        let s = signer(7);
        let input = signing_input(SUBJECT, NO_REQUEST, b"{}");
        assert!(!input.ends_with(b"\n"), "a note text ends in a newline");
        assert!(input.starts_with(b"edge-runner-nats.v1\n"));
        assert!(!input.starts_with(crate::webhook::CONTEXT.as_bytes()));
        // An outbound signature presented as a note's signature line over its
        // signing input (with the newline a note needs): refused.
        let sig = sign(&s, SUBJECT, NO_REQUEST, b"{}");
        let raw = B64.decode(sig.strip_prefix(SIGNATURE_PREFIX).unwrap()).unwrap();
        let note_line = s.signature_line("x\n");
        let key_id = &B64.decode(note_line.rsplit(' ').next().unwrap().trim()).unwrap()[..4];
        let text = format!("{}\n", String::from_utf8(input.clone()).unwrap());
        let note = format!("{text}\n\u{2014} {} {}\n", s.verifier().name, B64.encode([key_id, &raw].concat()));
        assert!(crate::note::open(&note, &[s.verifier().clone()]).is_err(), "an outbound signature opened a note");
        // (The same note with the key's own note signature opens: the form above is right.)
        let genuine = format!("{text}\n{}", s.signature_line(&text));
        crate::note::open(&genuine, &[s.verifier().clone()]).unwrap();
        // … and as a webhook's, over the same bytes.
        let body = String::from_utf8(input).unwrap();
        let as_webhook = format!("{}{}", crate::webhook::SIGNATURE_PREFIX, B64.encode(&raw));
        assert!(crate::webhook::verify_webhook(s.verifier(), "0", body.as_bytes(), &as_webhook, 0, 300).is_err());
        // A webhook signature is no outbound signature either.
        let hook = crate::webhook::sign(&s, 0, &crate::webhook::Body::new(&serde_json::from_str(WEBHOOK).unwrap()));
        let hook = format!("{SIGNATURE_PREFIX}{}", hook.strip_prefix(crate::webhook::SIGNATURE_PREFIX).unwrap());
        assert_eq!(
            verify(s.verifier(), SUBJECT, NO_REQUEST, None, Some(&hook), b"{}"),
            Err(OutboundError::BadSignature)
        );
    }

    const WEBHOOK: &str = r#"{"schema":"https://edge-runner.dev/webhook/v1","id":"d-1","event":"approved",
        "runner":"r1","proposal":"p-1","state":"approved","tier":2,"capsule":null,"approvals_required":2,
        "link":null,"at":"2026-01-01T00:00:00Z","record":1}"#;
}
