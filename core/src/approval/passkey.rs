//! Passkey (WebAuthn) approvals: the same [`Statement`] as an SSH-signed
//! approval, signed instead by a passkey in a browser.
//!
//! The approval console runs a WebAuthn `get` ceremony whose challenge is the
//! statement's digest ([`statement_challenge`]) with user verification
//! required. The approval file keeps what the authenticator returned —
//! authenticator data, client data JSON and signature, each base64url — so
//! anyone holding the registry can check it again offline, as they can an
//! SSHSIG. Nothing here does I/O or talks to a browser: it takes bytes.
//!
//! [`verify_assertion`] checklist (each failure has its own reason code):
//! 1. every field decodes (base64url without padding) within its size bound;
//!    the credential id is the registered one;
//! 2. the signature verifies with the registered key over
//!    `authenticator_data || SHA-256(client_data_json)` — ES256 as strict
//!    ASN.1 DER (aws-lc: no BER, no trailing bytes; high-S accepted, as
//!    authenticators do not normalise), EdDSA with `verify_strict` —
//!    checked first, so a tampered field reads as a bad
//!    signature and a genuine assertion made for something else is named for
//!    what it was made for;
//! 3. the client data is a `webauthn.get` whose challenge is this
//!    statement's digest, from the registered origin, not in a cross-origin
//!    frame;
//! 4. the authenticator data is for the registered relying party (its
//!    SHA-256) and asserts user presence *and* user verification (PIN or
//!    biometric), and carries the signature counter, returned for
//!    [`CounterLedger`].
//!
//! The registry file (`passkeys.json`, [`PasskeysFile`]) lists each enrolled
//! credential with its principal, public key, relying party and origin;
//! [`parse_passkeys`] prepares every key once.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::{ApprovalError, RegistryError, Statement};

/// Schema identifier of the passkeys registry file.
pub const PASSKEYS_SCHEMA: &str = "https://edge-runner.dev/passkeys/v1";
/// Largest authenticator data accepted (decoded bytes). Assertions carry 37
/// bytes plus any extensions.
pub const MAX_AUTHENTICATOR_DATA: usize = 1024;
/// Largest client data JSON accepted (decoded bytes).
pub const MAX_CLIENT_DATA: usize = 4096;
/// Largest signature accepted (decoded bytes): a DER P-256 signature is at
/// most 72, an Ed25519 one 64.
pub const MAX_SIGNATURE: usize = 128;
/// Largest credential id (WebAuthn allows up to 1023 bytes).
pub const MAX_CREDENTIAL_ID: usize = 1023;

/// Authenticator data flags.
const FLAG_UP: u8 = 0x01;
const FLAG_UV: u8 = 0x04;
/// rpIdHash (32) + flags (1) + signCount (4).
const AUTH_DATA_MIN: usize = 37;

/// The COSE algorithm a credential signs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PasskeyAlgorithm {
    /// ECDSA P-256 with SHA-256 (COSE -7): what most passkeys use.
    #[serde(rename = "ES256")]
    Es256,
    /// Ed25519 (COSE -8).
    #[serde(rename = "EdDSA")]
    EdDsa,
}

/// The passkeys registry file (`passkeys.json`). Fields are declared in
/// lexicographic order, so the compact serialisation is canonical.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PasskeysFile {
    pub credentials: Vec<PasskeyEntry>,
    /// [`PASSKEYS_SCHEMA`].
    pub schema: String,
}

/// One enrolled credential.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PasskeyEntry {
    pub algorithm: PasskeyAlgorithm,
    /// The WebAuthn credential id, base64url without padding.
    pub credential_id: String,
    /// When it was enrolled (Unix seconds): for people, not checked.
    pub enrolled_at: u64,
    /// A name for people ("alice's laptop").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// The exact origin the console is reached at (`https://host[:port]`):
    /// an assertion made on any other page is refused, so a phishing page
    /// cannot collect approvals.
    pub origin: String,
    /// The approver principal: the statement's `approver` must be exactly
    /// this (no patterns, unlike allowed_signers).
    pub principal: String,
    /// The public key, base64url without padding: ES256 the SEC1
    /// uncompressed point (65 bytes, `0x04 || x || y`), EdDSA the 32-byte key.
    pub public_key: String,
    /// The WebAuthn relying-party id the credential is scoped to.
    pub rp_id: String,
}

/// A registered credential, its key decoded and checked once at load.
#[derive(Debug, Clone)]
pub struct PasskeyCredential {
    pub entry: PasskeyEntry,
    /// The credential id, decoded.
    pub id: Vec<u8>,
    /// `SHA256:<base64>` of the raw public key bytes, the shape of an
    /// ssh fingerprint: `[revoked] keys` in roles.toml lists either, and the
    /// quorum counts distinct keys by it.
    pub fingerprint: String,
    /// SHA-256 of the relying-party id (what authenticator data starts with).
    rp_id_hash: [u8; 32],
    key: PreparedKey,
}

#[derive(Clone)]
enum PreparedKey {
    /// The point decoded and checked to be on P-256 once, at load.
    Es256(aws_lc_rs::signature::ParsedPublicKey),
    EdDsa(crate::strict::StrongKey),
}

impl std::fmt::Debug for PreparedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PreparedKey::Es256(_) => f.write_str("Es256(..)"),
            PreparedKey::EdDsa(k) => f.debug_tuple("EdDsa").field(k).finish(),
        }
    }
}

/// `SHA256:<base64, no padding>` of raw public key bytes.
pub fn passkey_fingerprint(public_key: &[u8]) -> String {
    format!("SHA256:{}", STANDARD_NO_PAD.encode(Sha256::digest(public_key)))
}

/// At most `n` characters of text an approver or the file controls.
fn clip(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

/// Decode base64url without padding, refusing (before decoding) anything
/// that would exceed `max` bytes.
fn b64url(s: &str, max: usize) -> Option<Vec<u8>> {
    if s.len() > max.div_ceil(3) * 4 {
        return None;
    }
    URL_SAFE_NO_PAD.decode(s).ok().filter(|b| b.len() <= max)
}

/// Whether `origin` is a serialised web origin we accept: `https://host[:port]`,
/// or plain http on the loopback host (development and tests).
fn valid_origin(origin: &str) -> bool {
    let host_port = |rest: &str| {
        let (host, port) = rest.rsplit_once(':').map_or((rest, None), |(h, p)| (h, Some(p)));
        !host.is_empty()
            && host.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'[' | b']' | b':'))
            && port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()))
    };
    if let Some(rest) = origin.strip_prefix("https://") {
        return host_port(rest);
    }
    if let Some(rest) = origin.strip_prefix("http://") {
        let host = rest.rsplit_once(':').map_or(rest, |(h, _)| h);
        return matches!(host, "localhost" | "127.0.0.1") && host_port(rest);
    }
    false
}

impl PasskeyCredential {
    /// Check an entry and prepare its key.
    ///
    /// # Errors
    /// Why the entry is unusable, and how to fix it.
    pub fn new(entry: PasskeyEntry) -> Result<Self, String> {
        if entry.principal.trim().is_empty() {
            return Err("`principal` is empty: name the approver, as the roles file does".into());
        }
        let id = b64url(&entry.credential_id, MAX_CREDENTIAL_ID).filter(|b| !b.is_empty()).ok_or_else(|| {
            format!(
                "`credential_id` `{}` is not 1 to {MAX_CREDENTIAL_ID} bytes of base64url without padding",
                clip(&entry.credential_id, 40)
            )
        })?;
        let raw = b64url(&entry.public_key, 65)
            .ok_or_else(|| "`public_key` is not base64url without padding (65 bytes at most)".to_owned())?;
        let key = match entry.algorithm {
            PasskeyAlgorithm::Es256 => {
                if raw.len() != 65 || raw[0] != 0x04 {
                    return Err(
                        "an ES256 `public_key` is the 65-byte uncompressed SEC1 point (0x04 || x || y)".to_owned()
                    );
                }
                PreparedKey::Es256(
                    aws_lc_rs::signature::ParsedPublicKey::new(&aws_lc_rs::signature::ECDSA_P256_SHA256_ASN1, &raw)
                        .map_err(|_| "the ES256 `public_key` is not a point on P-256".to_owned())?,
                )
            }
            PasskeyAlgorithm::EdDsa => {
                let bytes: [u8; 32] =
                    raw.as_slice().try_into().map_err(|_| "an EdDSA `public_key` is 32 bytes".to_owned())?;
                PreparedKey::EdDsa(
                    crate::strict::StrongKey::from_bytes(&bytes)
                        .ok_or_else(|| "the EdDSA `public_key` is invalid or weak (small order)".to_owned())?,
                )
            }
        };
        if entry.rp_id.is_empty() {
            return Err("`rp_id` is empty: use the relying-party id the console registers passkeys for".into());
        }
        if !valid_origin(&entry.origin) {
            return Err(format!(
                "`origin` `{}` is not `https://host[:port]` (or `http://localhost[:port]`, \
                 `http://127.0.0.1[:port]` for tests): use the console's origin exactly, without a path",
                clip(&entry.origin, 100)
            ));
        }
        let rp_id_hash = Sha256::digest(entry.rp_id.as_bytes()).into();
        Ok(Self { id, fingerprint: passkey_fingerprint(&raw), rp_id_hash, key, entry })
    }

    pub fn principal(&self) -> &str {
        &self.entry.principal
    }

    fn verify(
        &self,
        message: &[u8],
        signature: &[u8],
        verified: &crate::strict::VerifiedSignatures,
    ) -> Result<(), ApprovalError> {
        let scheme = match &self.key {
            PreparedKey::Es256(_) => "passkey-es256",
            PreparedKey::EdDsa(_) => "passkey-eddsa",
        };
        // The fingerprint stands for the key: a SHA-256 of its bytes.
        verified.check(scheme, self.fingerprint.as_bytes(), message, signature, || self.verify_now(message, signature))
    }

    fn verify_now(&self, message: &[u8], signature: &[u8]) -> Result<(), ApprovalError> {
        let bad = |why: &str| ApprovalError::BadSignature(why.to_owned());
        match &self.key {
            // aws-lc parses the signature as strict DER and verifies it;
            // it does not say which failed.
            PreparedKey::Es256(key) => key
                .verify_sig(message, signature)
                .map_err(|_| bad("the ES256 passkey signature is not valid ASN.1 DER or does not verify")),
            PreparedKey::EdDsa(vk) => {
                let sig = ed25519_dalek::Signature::from_slice(signature)
                    .map_err(|_| bad("malformed Ed25519 passkey signature"))?;
                vk.verify_strict(message, &sig).map_err(|_| bad("the EdDSA passkey signature does not verify"))
            }
        }
    }
}

/// Parse and check a passkeys registry file; `file` names it in errors.
///
/// # Errors
/// A [`RegistryError`] naming the file and the entry (`line` is the entry's
/// 1-based index; 0 for the file as a whole) with the fix.
pub fn parse_passkeys(text: &str, file: &str) -> Result<Vec<PasskeyCredential>, RegistryError> {
    let err = |line: usize, reason: String| RegistryError { file: file.to_owned(), line, reason };
    let parsed: PasskeysFile = serde_json::from_str(text).map_err(|e| {
        err(0, format!("not a passkeys file (JSON with `schema` and `credentials`, nothing else): {e}"))
    })?;
    if parsed.schema != PASSKEYS_SCHEMA {
        return Err(err(0, format!("schema `{}`: use `{PASSKEYS_SCHEMA}`", clip(&parsed.schema, 100))));
    }
    let mut ids = BTreeSet::new();
    let mut out = Vec::with_capacity(parsed.credentials.len());
    for (i, entry) in parsed.credentials.into_iter().enumerate() {
        let what = format!("credentials[{i}]");
        let cred = PasskeyCredential::new(entry).map_err(|why| err(i + 1, format!("{what}: {why}")))?;
        if !ids.insert(cred.id.clone()) {
            return Err(err(
                i + 1,
                format!(
                    "{what}: credential id `{}` is listed twice: remove the duplicate",
                    clip(&cred.entry.credential_id, 40)
                ),
            ));
        }
        out.push(cred);
    }
    Ok(out)
}

/// A passkey assertion as the browser returned it, each field base64url
/// without padding. Fields in lexicographic order (canonical serialisation).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PasskeyAssertion {
    pub authenticator_data: String,
    pub client_data_json: String,
    pub credential_id: String,
    pub signature: String,
}

/// The WebAuthn challenge for a statement: SHA-256 of its canonical bytes.
pub fn statement_challenge(st: &Statement) -> [u8; 32] {
    Sha256::digest(st.canonical_bytes()).into()
}

/// The client data fields we check; the rest (`topOrigin`, future keys) is
/// ignored, as WebAuthn requires. Duplicate keys are refused by serde.
#[derive(Deserialize)]
struct ClientData {
    #[serde(rename = "type")]
    kind: String,
    challenge: String,
    origin: String,
    #[serde(rename = "crossOrigin", default)]
    cross_origin: Option<bool>,
}

/// Verify a passkey assertion by `cred` over `challenge` (see the module
/// checklist). Returns the authenticator's signature counter.
///
/// # Errors
/// [`ApprovalError::Malformed`], [`ApprovalError::KeyMismatch`],
/// [`ApprovalError::BadSignature`], [`ApprovalError::WrongChallenge`],
/// [`ApprovalError::WrongOrigin`], [`ApprovalError::WrongRelyingParty`],
/// [`ApprovalError::NoUserPresence`], [`ApprovalError::NoUserVerification`].
pub fn verify_assertion(
    cred: &PasskeyCredential,
    challenge: &[u8; 32],
    a: &PasskeyAssertion,
    verified: &crate::strict::VerifiedSignatures,
) -> Result<u32, ApprovalError> {
    // 1.
    let field = |name: &str, value: &str, max: usize| {
        b64url(value, max).ok_or_else(|| {
            ApprovalError::Malformed(format!("passkey `{name}` is not base64url without padding (at most {max} bytes)"))
        })
    };
    let id = field("credential_id", &a.credential_id, MAX_CREDENTIAL_ID)?;
    if id != cred.id {
        return Err(unregistered(&cred.entry.principal, a));
    }
    let auth = field("authenticator_data", &a.authenticator_data, MAX_AUTHENTICATOR_DATA)?;
    let client = field("client_data_json", &a.client_data_json, MAX_CLIENT_DATA)?;
    let signature = field("signature", &a.signature, MAX_SIGNATURE)?;
    if auth.len() < AUTH_DATA_MIN {
        return Err(ApprovalError::Malformed(format!(
            "passkey authenticator data is {} bytes; an assertion has at least {AUTH_DATA_MIN}",
            auth.len()
        )));
    }
    // 2.
    let mut signed = Vec::with_capacity(auth.len() + 32);
    signed.extend_from_slice(&auth);
    signed.extend_from_slice(&Sha256::digest(&client));
    cred.verify(&signed, &signature, verified)?;
    // 3.
    let cd: ClientData = serde_json::from_slice(&client)
        .map_err(|e| ApprovalError::Malformed(format!("passkey client data: {}", clip(&e.to_string(), 200))))?;
    if cd.kind != "webauthn.get" {
        return Err(ApprovalError::Malformed(format!(
            "passkey client data type `{}`, not `webauthn.get`: that is not an assertion",
            clip(&cd.kind, 40)
        )));
    }
    let signed_challenge = b64url(&cd.challenge, 64)
        .ok_or_else(|| ApprovalError::Malformed("passkey client data challenge is not base64url".into()))?;
    if signed_challenge != challenge {
        return Err(ApprovalError::WrongChallenge);
    }
    if cd.origin != cred.entry.origin {
        return Err(ApprovalError::WrongOrigin { expected: cred.entry.origin.clone(), found: clip(&cd.origin, 100) });
    }
    if cd.cross_origin == Some(true) {
        return Err(ApprovalError::WrongOrigin {
            expected: cred.entry.origin.clone(),
            found: format!("{} inside a cross-origin frame", clip(&cd.origin, 100)),
        });
    }
    // 4.
    if auth[..32] != cred.rp_id_hash {
        return Err(ApprovalError::WrongRelyingParty { expected: cred.entry.rp_id.clone() });
    }
    let flags = auth[32];
    if flags & FLAG_UP == 0 {
        return Err(ApprovalError::NoUserPresence);
    }
    if flags & FLAG_UV == 0 {
        return Err(ApprovalError::NoUserVerification);
    }
    Ok(u32::from_be_bytes([auth[33], auth[34], auth[35], auth[36]]))
}

/// Look up the credential an assertion names among `principal`'s passkeys.
///
/// # Errors
/// [`ApprovalError::KeyMismatch`] when none of them has that id.
pub(super) fn credential_for<'r>(
    principal: &str,
    creds: &[&'r PasskeyCredential],
    a: &PasskeyAssertion,
) -> Result<&'r PasskeyCredential, ApprovalError> {
    let id = b64url(&a.credential_id, MAX_CREDENTIAL_ID);
    creds.iter().copied().find(|c| id.as_deref() == Some(c.id.as_slice())).ok_or_else(|| unregistered(principal, a))
}

/// `principal` signed `a` with a credential the passkeys file does not
/// register for them.
fn unregistered(principal: &str, a: &PasskeyAssertion) -> ApprovalError {
    ApprovalError::KeyMismatch {
        principal: clip(principal, 200),
        key: format!("passkey credential {}", clip(&a.credential_id, 16)),
        registry: "the passkeys file",
    }
}

/// `principal` signed `a` with a passkey where no passkeys file is in use.
pub(super) fn no_passkeys_file(principal: &str, a: &PasskeyAssertion) -> ApprovalError {
    ApprovalError::NoPasskeys { principal: clip(principal, 200), credential: clip(&a.credential_id, 16) }
}

/// Each credential's signature counters, by the issue time of the statement
/// they signed.
///
/// Rule, per credential (`key`, its fingerprint): an approval issued at `t`
/// with counter `c` is consistent with one already recorded, `(t', c')`, when
/// both counters are 0 (authenticators without a counter), or when `t' < t ⇒
/// c' < c`, `t' > t ⇒ c' > c` and `t' == t ⇒ c' ≠ c`. A counter that does not
/// move forward with time means two authenticators share the credential
/// (a clone). Issue time orders, not recording order: approvals for
/// different proposals are recorded when each quorum completes, not in the
/// order they were signed.
///
/// Every value passes [`CounterLedger::check`] before it is noted, so each
/// credential's counters never decrease with time; [`CounterLedger::check`]
/// then only needs the nearest recorded times either side (range queries).
#[derive(Default, Debug, Clone)]
pub struct CounterLedger {
    by_key: BTreeMap<String, BTreeMap<u64, Vec<u32>>>,
}

impl CounterLedger {
    /// Whether `counter`, on a statement issued at `issued_at`, is
    /// consistent with what this ledger recorded for `key`.
    ///
    /// # Errors
    /// [`ApprovalError::CounterWentBack`], naming a recorded counter it
    /// conflicts with.
    pub fn check(&self, key: &str, issued_at: u64, counter: u32) -> Result<(), ApprovalError> {
        Self::check_in(&[self], key, issued_at, counter)
    }

    /// As [`CounterLedger::check`], against this ledger and `batch` together
    /// (the approvals accepted earlier in the same batch).
    ///
    /// # Errors
    /// As [`CounterLedger::check`].
    pub fn check_with(
        &self,
        batch: &CounterLedger,
        key: &str,
        issued_at: u64,
        counter: u32,
    ) -> Result<(), ApprovalError> {
        Self::check_in(&[self, batch], key, issued_at, counter)
    }

    fn check_in(ledgers: &[&CounterLedger], key: &str, t: u64, c: u32) -> Result<(), ApprovalError> {
        let went_back = |seen: u32| ApprovalError::CounterWentBack { key: key.to_owned(), counter: c, seen };
        let times = || ledgers.iter().filter_map(|l| l.by_key.get(key));
        // Counters never decrease with time, so the latest entry holds the largest.
        let max = times().filter_map(|m| m.last_key_value()).flat_map(|(_, cs)| cs.iter().copied()).max();
        if c == 0 && max.is_none_or(|m| m == 0) {
            return Ok(());
        }
        for m in times() {
            if let Some((_, cs)) = m.range(..t).next_back()
                && let Some(&seen) = cs.iter().max().filter(|&&seen| seen >= c)
            {
                return Err(went_back(seen));
            }
            if let Some((_, cs)) = m.range((Bound::Excluded(t), Bound::Unbounded)).next()
                && let Some(&seen) = cs.iter().min().filter(|&&seen| seen <= c)
            {
                return Err(went_back(seen));
            }
            if m.get(&t).is_some_and(|cs| cs.contains(&c)) {
                return Err(went_back(c));
            }
        }
        Ok(())
    }

    /// Record that `key` signed with `counter` a statement issued at `issued_at`.
    pub fn note(&mut self, key: &str, issued_at: u64, counter: u32) {
        let at = self.by_key.entry(key.to_owned()).or_default().entry(issued_at).or_default();
        if !at.contains(&counter) {
            at.push(counter);
        }
    }

    /// Whether nothing is recorded.
    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }
}

#[cfg(test)]
mod tests;
