//! Approvals: a named human's signed decision about exactly one proposal.
//!
//! An approval is a canonical-JSON [`Statement`] signed as an OpenSSH
//! signature (SSHSIG, what `ssh-keygen -Y sign` writes) in the namespace
//! [`NAMESPACE`]. So an approver can sign with the key they already have —
//! a key file, `ssh-agent`, or a FIDO token (`sk-ssh-ed25519`) — and a reviewer
//! can check it with `ssh-keygen -Y verify`.
//!
//! [`verify_approval`] checklist (each failure has its own reason code):
//! 1. the file parses: a strict statement and an armored SSHSIG;
//! 2. the signature's namespace is ours (never taken from the signature);
//! 3. the approver principal has an `allowed_signers` entry for our namespace,
//!    valid now (valid-after/valid-before, with the configured clock skew),
//!    and the signing key is that entry's key and not revoked;
//! 4. the signature verifies over the canonical statement; hardware-key
//!    signatures must assert user presence;
//! 5. the statement is bound to exactly this proposal, capsule, plan, policy,
//!    runner, tier and grant;
//! 6. it is not issued in the future, not expired, and not older than the
//!    tier's maximum approval age.
//!
//! An approver may instead sign the same statement with a passkey
//! (WebAuthn, [`passkey`]): the file then carries the assertion instead of
//! the SSHSIG, and steps 2–4 become: the approver has a passkey with the
//! assertion's credential id in the passkeys registry, its key is not
//! revoked, and [`passkey::verify_assertion`] passes over the statement's
//! digest (origin, relying party, user presence and verification). Steps 5
//! and 6 are the same code for both.
//!
//! Single use (the nonce, and a passkey's signature counter) is checked by
//! the runner against its durable log; quorum (distinct people and keys,
//! roles, proposer exclusion, veto, break-glass) by [`quorum::evaluate`].

use serde::{Deserialize, Serialize};
use ssh_key::public::KeyData;
use ssh_key::{Algorithm, PublicKey, SshSig};

use crate::admission::Grant;
use crate::digest::Sha256Digest;

pub mod passkey;
pub mod quorum;
pub mod registry;

pub use passkey::{
    CounterLedger, PASSKEYS_SCHEMA, PasskeyAlgorithm, PasskeyAssertion, PasskeyCredential, PasskeyEntry, PasskeysFile,
    parse_passkeys, passkey_fingerprint, statement_challenge, verify_assertion,
};
pub use registry::{Registry, RegistryError, fingerprint};

/// The SSHSIG namespace of approvals: a signature made for anything else
/// (git commits, files) can never count as an approval.
pub const NAMESPACE: &str = "approval.v1@edge-runner.dev";
/// Statement schema identifier.
pub const STATEMENT_SCHEMA: &str = "https://edge-runner.dev/approval/v1";
/// Largest approval file accepted.
pub const MAX_APPROVAL_BYTES: usize = 64 * 1024;

/// Approve or reject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    Approve,
    Reject,
}

/// What an approver signs. Every field is checked; nothing is advisory.
///
/// Fields are declared in lexicographic order (and so are those of `Grant`
/// and `Limits`), so the derived compact serialisation *is* the canonical
/// form: signing and verifying skip a generic canonicalisation pass. A test
/// pins this.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Statement {
    /// The approver principal, as in `allowed_signers`.
    pub approver: String,
    pub capsule: Sha256Digest,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    pub decision: Verdict,
    pub expires_at: u64,
    /// The tier and grant the approver was shown.
    pub grant: Grant,
    /// Unix seconds.
    pub issued_at: u64,
    /// 32 random bytes, hex: makes every approval single-use.
    pub nonce: String,
    pub plan: Sha256Digest,
    pub policy: Sha256Digest,
    pub proposal: String,
    /// The runner identity (`runner.name`).
    pub runner: String,
    pub schema: String,
    pub tier: u8,
}

impl Statement {
    /// The exact bytes that are signed (canonical JSON, RFC 8785).
    pub fn canonical_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("statements serialise")
    }
}

/// An approval file: the statement and its proof, exactly one of an
/// armored SSHSIG (`signature`) or a passkey assertion (`passkey`). An
/// SSH-signed file serialises as it always has: `{"statement":…,"signature":…}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalFile {
    pub statement: Statement,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passkey: Option<PasskeyAssertion>,
}

/// The proof an approval file carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proof<'a> {
    /// An armored SSHSIG.
    Ssh(&'a str),
    /// A WebAuthn assertion.
    Passkey(&'a PasskeyAssertion),
}

impl ApprovalFile {
    /// Parse an approval file (strict).
    ///
    /// # Errors
    /// [`ApprovalError::Malformed`].
    pub fn parse(bytes: &[u8]) -> Result<Self, ApprovalError> {
        if bytes.len() > MAX_APPROVAL_BYTES {
            return Err(ApprovalError::Malformed(format!("{} bytes; the limit is {MAX_APPROVAL_BYTES}", bytes.len())));
        }
        let file: Self = serde_json::from_slice(bytes).map_err(|e| ApprovalError::Malformed(e.to_string()))?;
        file.proof()?;
        Ok(file)
    }

    /// An SSH-signed approval file.
    pub fn ssh(statement: Statement, signature: String) -> Self {
        Self { statement, signature: Some(signature), passkey: None }
    }

    /// A passkey-signed approval file.
    pub fn passkey(statement: Statement, assertion: PasskeyAssertion) -> Self {
        Self { statement, signature: None, passkey: Some(assertion) }
    }

    /// The one proof the file carries.
    ///
    /// # Errors
    /// [`ApprovalError::Malformed`] unless exactly one is present.
    pub fn proof(&self) -> Result<Proof<'_>, ApprovalError> {
        match (&self.signature, &self.passkey) {
            (Some(s), None) => Ok(Proof::Ssh(s)),
            (None, Some(a)) => Ok(Proof::Passkey(a)),
            _ => Err(ApprovalError::Malformed(
                "an approval file carries exactly one of `signature` (SSHSIG) or `passkey` (WebAuthn assertion)".into(),
            )),
        }
    }
}

/// What an approval must be bound to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    pub proposal: String,
    pub capsule: Sha256Digest,
    pub plan: Sha256Digest,
    pub policy: Sha256Digest,
    pub runner: String,
    pub tier: u8,
    pub grant: Grant,
    /// The tier's maximum approval age.
    pub max_age_secs: u64,
}

/// Why an approval was refused. Each variant has a stable reason code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ApprovalError {
    #[error("the approval file is malformed: {0}")]
    Malformed(String),
    #[error("signed in namespace `{0}`, not `{NAMESPACE}`: a signature made for something else is never an approval")]
    WrongNamespace(String),
    #[error(
        "`{0}` is not a registered approver for this namespace: add them to allowed_signers (a running runner \
         takes the change on reload: `systemctl reload edge-runner` or `edge-runner reload`)"
    )]
    UnknownApprover(String),
    #[error("the key of `{principal}` is not valid {when}")]
    KeyNotValid { principal: String, when: String },
    /// `key` names the key ("key SHA256:…" or "passkey credential …"),
    /// `registry` the file that registers that kind for the principal.
    #[error("`{principal}` signed with {key}, which {registry} does not register for them")]
    KeyMismatch { principal: String, key: String, registry: &'static str },
    /// A passkey approval where no passkeys file is in use: nothing can
    /// register the credential (the same reason code as `KeyMismatch`).
    #[error(
        "`{principal}` signed with passkey credential {credential}, but no passkeys file is in use, so no passkey can count: enrol the approver's passkey (`edge-runner approvers enroll`, which writes passkeys.json beside allowed_signers) or approve with their SSH key"
    )]
    NoPasskeys { principal: String, credential: String },
    #[error("key {0} is revoked")]
    RevokedKey(String),
    #[error("the signature does not verify: {0}")]
    BadSignature(String),
    #[error("the hardware-key signature does not assert user presence (touch)")]
    NoUserPresence,
    #[error(
        "the passkey assertion was made without user verification (PIN or biometric); approve again and unlock the passkey when asked"
    )]
    NoUserVerification,
    #[error(
        "the passkey signed another statement (its challenge is not this statement's digest): the statement was changed after signing"
    )]
    WrongChallenge,
    #[error("the passkey signed on `{found}`, not on the console's origin `{expected}`; approve in the console")]
    WrongOrigin { expected: String, found: String },
    #[error("the passkey assertion is for another relying party than `{expected}`; approve in the console")]
    WrongRelyingParty { expected: String },
    #[error(
        "passkey {key} signed with counter {counter}, which does not move forward from the counter {seen} it used before (a cloned authenticator?); revoke the passkey and enroll a new one"
    )]
    CounterWentBack { key: String, counter: u32, seen: u32 },
    #[error("the approval is for another {field} ({found}, this run is {expected}); approvals cannot be moved")]
    WrongBinding { field: &'static str, expected: String, found: String },
    #[error("issued at {issued_at}, in the future (now {now}, allowed skew {skew}s)")]
    NotYetValid { issued_at: u64, now: u64, skew: u64 },
    #[error("expired at {expires_at} (now {now}); ask for a new one with `edge-runner approve`")]
    Expired { expires_at: u64, now: u64 },
    #[error("issued at {issued_at}, older than the {max_age}s this tier accepts; ask for a new one")]
    TooOld { issued_at: u64, max_age: u64 },
    #[error("nonce {0} was already used: an approval counts once")]
    Replayed(String),
}

impl ApprovalError {
    pub fn reason_code(&self) -> &'static str {
        match self {
            ApprovalError::Malformed(_) => "approval.malformed",
            ApprovalError::WrongNamespace(_) => "approval.wrong_namespace",
            ApprovalError::UnknownApprover(_) => "approval.unknown_approver",
            ApprovalError::KeyNotValid { .. } => "approval.key_not_valid",
            ApprovalError::KeyMismatch { .. } | ApprovalError::NoPasskeys { .. } => "approval.key_mismatch",
            ApprovalError::RevokedKey(_) => "approval.revoked_key",
            ApprovalError::BadSignature(_) => "approval.bad_signature",
            ApprovalError::NoUserPresence => "approval.no_user_presence",
            ApprovalError::NoUserVerification => "approval.no_user_verification",
            ApprovalError::WrongChallenge => "approval.wrong_challenge",
            ApprovalError::WrongOrigin { .. } => "approval.wrong_origin",
            ApprovalError::WrongRelyingParty { .. } => "approval.wrong_rp",
            ApprovalError::CounterWentBack { .. } => "approval.counter_regressed",
            ApprovalError::WrongBinding { .. } => "approval.wrong_binding",
            ApprovalError::NotYetValid { .. } => "approval.not_yet_valid",
            ApprovalError::Expired { .. } => "approval.expired",
            ApprovalError::TooOld { .. } => "approval.too_old",
            ApprovalError::Replayed(_) => "approval.replayed",
        }
    }
}

/// An approval that passed [`verify_approval`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerifiedApproval {
    pub principal: String,
    /// `SHA256:…` fingerprint of the signing key (SSH key or passkey).
    pub key: String,
    pub verdict: Verdict,
    pub nonce: String,
    pub issued_at: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    /// A passkey's signature counter (None for SSH signatures): checked
    /// against the credential's earlier approvals with [`CounterLedger`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub counter: Option<u32>,
}

/// Verify an SSHSIG over `message` in `namespace` by `key`: Ed25519 with
/// `verify_strict` (ssh-key itself uses the lenient check), and for
/// `sk-ssh-ed25519` keys the FIDO signed data with the user-presence flag
/// required (neither ssh-key nor `ssh-keygen -Y verify` checks the flags).
///
/// # Errors
/// [`ApprovalError::BadSignature`], [`ApprovalError::NoUserPresence`].
pub fn verify_sshsig(key: &PublicKey, namespace: &str, message: &[u8], sig: &SshSig) -> Result<(), ApprovalError> {
    let vk = registry::ed25519_key(key).ok_or_else(|| {
        ApprovalError::BadSignature("approvals are signed with ssh-ed25519 or sk-ssh-ed25519@openssh.com keys".into())
    })?;
    verify_prepared(key, &vk, namespace, message, sig, &crate::strict::VerifiedSignatures::default())
}

/// As [`verify_sshsig`], with the key's decompressed, weak-checked Ed25519
/// point precomputed (the registry does this once at load).
fn verify_prepared(
    key: &PublicKey,
    vk: &crate::strict::StrongKey,
    namespace: &str,
    message: &[u8],
    sig: &SshSig,
    verified: &crate::strict::VerifiedSignatures,
) -> Result<(), ApprovalError> {
    let check = prepare_sshsig(key, vk, namespace, message, sig)?;
    let mut verdicts = verified.check_ed25519(&[check.as_tuple()]);
    verdicts.pop().expect("one verdict").map_err(|_| SigCheck::failed())
}

/// An SSHSIG's Ed25519 check with everything before the arithmetic done:
/// the key and the exact bytes its signature is over.
struct SigCheck {
    vk: crate::strict::StrongKey,
    signed: Vec<u8>,
    signature: ed25519_dalek::Signature,
}

impl SigCheck {
    fn as_tuple(&self) -> (&crate::strict::StrongKey, &[u8], &ed25519_dalek::Signature) {
        (&self.vk, &self.signed, &self.signature)
    }

    fn failed() -> ApprovalError {
        ApprovalError::BadSignature("the Ed25519 signature does not verify".into())
    }
}

/// Step 4 of an SSHSIG up to the arithmetic: the signature is by `key`, in
/// `namespace`, of a supported kind (a hardware key's with user presence);
/// what its Ed25519 signature must be over.
fn prepare_sshsig(
    key: &PublicKey,
    vk: &crate::strict::StrongKey,
    namespace: &str,
    message: &[u8],
    sig: &SshSig,
) -> Result<SigCheck, ApprovalError> {
    use ed25519_dalek::Signature as EdSignature;
    let bad = |why: &str| ApprovalError::BadSignature(why.to_owned());
    if sig.public_key() != key.key_data() {
        return Err(bad("signed by another key"));
    }
    if sig.namespace() != namespace {
        return Err(ApprovalError::WrongNamespace(sig.namespace().chars().take(100).collect()));
    }
    let data = SshSig::signed_data(namespace, sig.hash_alg(), message).map_err(|e| bad(&e.to_string()))?;
    let raw = sig.signature_bytes();
    let (signed, sig64): (Vec<u8>, &[u8]) = match (key.key_data(), sig.algorithm()) {
        (KeyData::Ed25519(_), Algorithm::Ed25519) => (data, raw),
        (KeyData::SkEd25519(sk), Algorithm::SkEd25519) => {
            // raw = signature(64) || flags(1) || counter(4)
            if raw.len() != 69 {
                return Err(bad("malformed sk-ssh-ed25519 signature"));
            }
            let (flags_counter, sha256) = (&raw[64..], |x: &[u8]| <sha2::Sha256 as sha2::Digest>::digest(x));
            if flags_counter[0] & 0x01 == 0 {
                return Err(ApprovalError::NoUserPresence);
            }
            let mut tbs = sha256(sk.application().as_bytes()).to_vec();
            tbs.extend_from_slice(flags_counter);
            tbs.extend_from_slice(&sha256(&data));
            (tbs, &raw[..64])
        }
        _ => return Err(bad("approvals are signed with ssh-ed25519 or sk-ssh-ed25519@openssh.com keys")),
    };
    let signature = EdSignature::from_slice(sig64).map_err(|_| bad("malformed Ed25519 signature"))?;
    Ok(SigCheck { vk: vk.clone(), signed, signature })
}

/// From how many approvals [`verify_approvals`] uses every core.
const PARALLEL_FROM: usize = 16;

/// Verify several approvals (each independent of the others; many at once
/// in parallel).
pub fn verify_approvals(
    files: &[Vec<u8>],
    registry: &Registry,
    expected: &Binding,
    now: u64,
    skew: u64,
) -> Vec<Result<VerifiedApproval, ApprovalError>> {
    use rayon::prelude::*;
    // One approval takes ~40 µs; waking the pool's threads costs about as
    // much, so a quorum's handful is verified here, together (benches/
    // approval.rs: 5 in parallel 256-279 µs, one after another 203-221 µs,
    // on 2 cores). Many at once are spread over the cores.
    if files.len() < PARALLEL_FROM {
        let files: Vec<&[u8]> = files.iter().map(Vec::as_slice).collect();
        return verify_together(&files, registry, expected, now, skew);
    }
    files.par_iter().with_min_len(1).map(|f| verify_approval(f, registry, expected, now, skew)).collect()
}

/// Verify one approval (see the module checklist). Pure: `now` is an argument.
///
/// # Errors
/// The first failed check.
pub fn verify_approval(
    bytes: &[u8],
    registry: &Registry,
    expected: &Binding,
    now: u64,
    skew: u64,
) -> Result<VerifiedApproval, ApprovalError> {
    verify_together(&[bytes], registry, expected, now, skew).pop().expect("one verdict per file")
}

/// The checklist for each file, in order, each file's verdict its own first
/// failed check. Only the Ed25519 arithmetic of the SSHSIGs that reach step
/// 4 is done together ([`crate::strict::verify_strict_many`]: one field
/// inversion for all), between steps 1–3 and 5–6 of every file.
fn verify_together(
    files: &[&[u8]],
    registry: &Registry,
    expected: &Binding,
    now: u64,
    skew: u64,
) -> Vec<Result<VerifiedApproval, ApprovalError>> {
    let staged: Vec<Result<Staged, ApprovalError>> = files.iter().map(|f| stage(f, registry, now, skew)).collect();
    let checks: Vec<_> =
        staged.iter().filter_map(|s| s.as_ref().ok()?.signature.as_ref()).map(SigCheck::as_tuple).collect();
    let mut verdicts = registry.verified.check_ed25519(&checks).into_iter();
    staged
        .into_iter()
        .map(|staged| {
            let Staged { file, key, counter, signature } = staged?;
            if signature.is_some() {
                verdicts.next().expect("a verdict per check").map_err(|_| SigCheck::failed())?;
            }
            let st = file.statement;
            // 5., 6.
            check_binding_and_time(&st, expected, now, skew)?;
            Ok(VerifiedApproval {
                principal: st.approver,
                key,
                verdict: st.decision,
                nonce: st.nonce,
                issued_at: st.issued_at,
                comment: st.comment,
                counter,
            })
        })
        .collect()
}

/// An approval through steps 1–3, and step 4 but for an SSHSIG's
/// arithmetic (`signature`, still to be checked).
struct Staged {
    file: ApprovalFile,
    /// The signing key's fingerprint.
    key: String,
    /// A passkey's signature counter.
    counter: Option<u32>,
    signature: Option<SigCheck>,
}

fn stage(bytes: &[u8], registry: &Registry, now: u64, skew: u64) -> Result<Staged, ApprovalError> {
    // 1.
    let file = ApprovalFile::parse(bytes)?;
    let st = &file.statement;
    if st.schema != STATEMENT_SCHEMA {
        return Err(ApprovalError::Malformed(format!("schema `{}`", st.schema.chars().take(100).collect::<String>())));
    }
    if st.nonce.len() != 64 || !st.nonce.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ApprovalError::Malformed("the nonce must be 32 random bytes in hex".into()));
    }
    // 2.–4.
    let (key, counter, signature) = match file.proof()? {
        Proof::Ssh(armored) => {
            let (key, check) = stage_ssh_proof(st, armored, registry, now, skew)?;
            (key, None, Some(check))
        }
        Proof::Passkey(assertion) => {
            let (key, counter) = verify_passkey_proof(st, assertion, registry)?;
            (key, Some(counter), None)
        }
    };
    Ok(Staged { file, key, counter, signature })
}

/// Steps 2–4 for an SSHSIG: namespace, allowed_signers entry, key, validity,
/// signature but for its arithmetic. Returns the key's fingerprint and the
/// signature check still to be made.
fn stage_ssh_proof(
    st: &Statement,
    armored: &str,
    registry: &Registry,
    now: u64,
    skew: u64,
) -> Result<(String, SigCheck), ApprovalError> {
    let sig = parse_armored(armored)?;
    // 2.
    if sig.namespace() != NAMESPACE {
        return Err(ApprovalError::WrongNamespace(sig.namespace().chars().take(100).collect()));
    }
    // 3.
    let key = PublicKey::from(sig.public_key().clone());
    let entries = registry.signer_entries(&st.approver);
    if entries.is_empty() {
        return Err(ApprovalError::UnknownApprover(st.approver.chars().take(200).collect()));
    }
    let with_key: Vec<&&registry::SignerEntry> =
        entries.iter().filter(|e| e.key.key_data() == key.key_data()).collect();
    if with_key.is_empty() {
        return Err(ApprovalError::KeyMismatch {
            principal: st.approver.clone(),
            key: format!("key {}", fingerprint(&key)),
            registry: "allowed_signers",
        });
    }
    // The entries' key is this key: their fingerprint is its.
    let fp = with_key[0].fingerprint.clone();
    if registry.revoked.contains(&fp) {
        return Err(ApprovalError::RevokedKey(fp));
    }
    let valid = |e: &registry::SignerEntry| {
        e.valid_after.is_none_or(|t| now.saturating_add(skew) >= t)
            && e.valid_before.is_none_or(|t| now <= t.saturating_add(skew))
    };
    if !with_key.iter().any(|e| valid(e)) {
        let e = with_key[0];
        let when = match (e.valid_after, e.valid_before) {
            (Some(a), _) if now.saturating_add(skew) < a => format!("before {a} (allowed_signers line {})", e.line),
            (_, Some(b)) => format!("after {b} (allowed_signers line {})", e.line),
            _ => "now".into(),
        };
        return Err(ApprovalError::KeyNotValid { principal: st.approver.clone(), when });
    }
    // 4.
    let check = prepare_sshsig(&key, &with_key[0].ed25519, NAMESPACE, &st.canonical_bytes(), &sig)?;
    Ok((fp, check))
}

/// An armored SSHSIG, as `SshSig::from_pem` reads it.
///
/// An armor written as `ssh-keygen -Y sign` and ssh-key write one — the
/// `BEGIN` line, the base64 in lines of 70 characters (the last 1 to 70),
/// the `END` line, each ending in `\n` — is decoded here, ~4× faster than
/// the general PEM reader; anything else, and anything this path does not
/// decode to a whole signature, goes to `from_pem`, whose verdict and
/// error it is. So this path only ever returns what `from_pem` returns for
/// the same text (tests: `the_armor_shortcut_reads_what_from_pem_reads`).
///
/// # Errors
/// [`ApprovalError::Malformed`] with `from_pem`'s reason.
pub fn parse_armored(armored: &str) -> Result<SshSig, ApprovalError> {
    if let Some(sig) = written_as_ssh_keygen_writes(armored) {
        return Ok(sig);
    }
    SshSig::from_pem(armored).map_err(|e| ApprovalError::Malformed(format!("signature: {e}")))
}

/// The signature in an armor laid out exactly as `ssh-keygen` lays it out,
/// if it decodes (canonical base64: padding as written, no stray bits) to
/// an SSHSIG with nothing left over; `None` otherwise.
fn written_as_ssh_keygen_writes(armored: &str) -> Option<SshSig> {
    use base64::Engine as _;
    use ssh_encoding::Decode as _;
    const WIDTH: usize = 70;
    let body =
        armored.strip_prefix("-----BEGIN SSH SIGNATURE-----\n")?.strip_suffix("\n-----END SSH SIGNATURE-----\n")?;
    let mut base64 = Vec::with_capacity(body.len());
    let mut lines = body.split('\n').peekable();
    while let Some(line) = lines.next() {
        let last = lines.peek().is_none();
        if line.is_empty() || line.len() > WIDTH || (!last && line.len() != WIDTH) {
            return None;
        }
        base64.extend_from_slice(line.as_bytes());
    }
    let bytes = base64::engine::general_purpose::STANDARD.decode(&base64).ok()?;
    let mut rest = bytes.as_slice();
    let sig = SshSig::decode(&mut rest).ok()?;
    rest.is_empty().then_some(sig)
}

/// Steps 2–4 for a passkey: the principal's registered credential with the
/// assertion's id, not revoked, and the assertion over the statement's
/// digest. Returns the credential's fingerprint and signature counter.
fn verify_passkey_proof(
    st: &Statement,
    assertion: &PasskeyAssertion,
    registry: &Registry,
) -> Result<(String, u32), ApprovalError> {
    let creds: Vec<&PasskeyCredential> = registry.passkeys_of(&st.approver).collect();
    if creds.is_empty() && registry.signer_entries(&st.approver).is_empty() {
        return Err(ApprovalError::UnknownApprover(st.approver.chars().take(200).collect()));
    }
    if registry.passkeys_text.is_none() {
        return Err(passkey::no_passkeys_file(&st.approver, assertion));
    }
    let cred = passkey::credential_for(&st.approver, &creds, assertion)?;
    if registry.revoked.contains(&cred.fingerprint) {
        return Err(ApprovalError::RevokedKey(cred.fingerprint.clone()));
    }
    let counter = verify_assertion(cred, &statement_challenge(st), assertion, &registry.verified)?;
    Ok((cred.fingerprint.clone(), counter))
}

/// Steps 5 and 6, the same whatever signed the statement: bound to exactly
/// this proposal, capsule, plan, policy, runner, tier and grant; not issued
/// in the future, not expired, not older than the tier allows.
fn check_binding_and_time(st: &Statement, expected: &Binding, now: u64, skew: u64) -> Result<(), ApprovalError> {
    // 5.
    // Compared as values; written out only for the message when they differ.
    fn bind<T: PartialEq + ToString + ?Sized>(
        field: &'static str,
        expected: &T,
        found: &T,
    ) -> Result<(), ApprovalError> {
        if expected == found {
            Ok(())
        } else {
            Err(ApprovalError::WrongBinding { field, expected: expected.to_string(), found: found.to_string() })
        }
    }
    bind("proposal", expected.proposal.as_str(), st.proposal.as_str())?;
    bind("capsule", &expected.capsule, &st.capsule)?;
    bind("plan", &expected.plan, &st.plan)?;
    bind("policy", &expected.policy, &st.policy)?;
    bind("runner", expected.runner.as_str(), st.runner.as_str())?;
    bind("tier", &expected.tier, &st.tier)?;
    if st.grant != expected.grant {
        return Err(ApprovalError::WrongBinding {
            field: "grant",
            expected: serde_json::to_string(&expected.grant).unwrap_or_default(),
            found: serde_json::to_string(&st.grant).unwrap_or_default(),
        });
    }
    // 6.
    if st.issued_at > now.saturating_add(skew) {
        return Err(ApprovalError::NotYetValid { issued_at: st.issued_at, now, skew });
    }
    if now > st.expires_at.saturating_add(skew) || st.expires_at < st.issued_at {
        return Err(ApprovalError::Expired { expires_at: st.expires_at, now });
    }
    if now.saturating_sub(st.issued_at) > expected.max_age_secs.saturating_add(skew) {
        return Err(ApprovalError::TooOld { issued_at: st.issued_at, max_age: expected.max_age_secs });
    }
    Ok(())
}

#[cfg(test)]
mod tests;
