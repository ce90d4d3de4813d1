//! Capsule signatures: Sigstore bundles (v0.3) holding a DSSE envelope whose
//! in-toto Statement names the capsule digest.
//!
//! Two kinds of trusted signer:
//! * **keyed** — an Ed25519 or ECDSA P-256 public key the operator configured.
//!   Inside an enclave there is usually no transparency log, so a keyed bundle
//!   without log entries is verified offline: the DSSE signature over PAE with
//!   strict Ed25519 (`verify_strict`, which rejects small-order keys and
//!   non-canonical signatures) or aws-lc ECDSA, then the Statement. When the
//!   bundle carries transparency-log entries and a trusted root is configured,
//!   the full `sigstore-verify` check runs as well (inclusion proofs, SETs).
//! * **keyless** — a Fulcio certificate identity and OIDC issuer, verified by
//!   `sigstore-verify` against a local `trusted_root.json`, with no network.
//!
//! Verification checklist ([`verify_capsule`]):
//! 1. the capsule carries a bundle, and it parses as a Sigstore bundle v0.3;
//! 2. its content is a DSSE envelope of type `application/vnd.in-toto+json`;
//! 3. the Statement is in-toto v1 with our predicate type and exactly one
//!    subject whose SHA-256 is the capsule digest (sigstore-verify alone
//!    accepts *any* matching subject and ignores `_type`);
//! 4. the signature verifies for a trusted signer of the bundle's kind.

use base64::Engine as _;
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};
use sigstore_verify::crypto::{self as sc, SigningScheme};
use sigstore_verify::trust_root::TrustedRoot;
use sigstore_verify::types::bundle::VerificationMaterialContent;
use sigstore_verify::types::{Bundle, DerPublicKey, MediaType, SignatureContent, Statement};
use sigstore_verify::{PublicKeyVerificationPolicy, VerificationPolicy, Verifier};

use crate::container::CapsuleFile;
use crate::digest::Sha256Digest;
use crate::dsse::{self, CAPSULE_PREDICATE_TYPE, IN_TOTO_PAYLOAD_TYPE, STATEMENT_TYPE};

const BUNDLE_MEDIA_TYPE: &str = "application/vnd.dev.sigstore.bundle.v0.3+json";

/// Why a signature was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SignatureError {
    #[error("the capsule is not signed; sign it with `edge-runner capsule sign --key <key> <capsule>`")]
    Unsigned,
    #[error("the signature bundle is malformed: {0}")]
    Malformed(String),
    #[error("the signature bundle is not what capsules use: {0}")]
    Unsupported(String),
    #[error(
        "the signed statement does not name this capsule: {0} (the manifest was changed after signing, or the bundle belongs to another capsule)"
    )]
    SubjectMismatch(String),
    #[error(
        "the signature does not verify for any trusted signer ({0}); trust the signer in the policy (or runner config), or re-sign with a trusted key"
    )]
    UntrustedSigner(String),
    #[error("the key is unusable: {0}")]
    Key(String),
}

impl SignatureError {
    pub fn reason_code(&self) -> &'static str {
        match self {
            SignatureError::Unsigned => "signature.missing",
            SignatureError::Malformed(_) => "signature.malformed",
            SignatureError::Unsupported(_) => "signature.unsupported",
            SignatureError::SubjectMismatch(_) => "signature.subject_mismatch",
            SignatureError::UntrustedSigner(_) => "signature.untrusted_signer",
            SignatureError::Key(_) => "signature.bad_key",
        }
    }
}

/// A public key a keyed signer uses.
#[derive(Debug, Clone)]
enum PublicKey {
    Ed25519(Box<crate::strict::StrongKey>),
    P256(Box<DerPublicKey>),
}

#[derive(Debug, Clone)]
enum SignerKind {
    Keyed { key: PublicKey, der: Box<DerPublicKey>, key_id: String, pem: String },
    Keyless { identity: String, issuer: String },
}

/// One signer the operator trusts.
#[derive(Debug, Clone)]
pub struct TrustedSigner {
    name: String,
    kind: SignerKind,
}

impl TrustedSigner {
    /// A keyed signer from an SPKI PEM public key (Ed25519 or ECDSA P-256).
    ///
    /// # Errors
    /// If the key is not one of those, or is a weak (small-order) Ed25519 key.
    pub fn from_public_key_pem(name: &str, pem: &str) -> Result<Self, SignatureError> {
        let der = DerPublicKey::from_pem(pem).map_err(|e| SignatureError::Key(e.to_string()))?;
        let key = match sc::KeyAlgorithm::from_spki(&der).map_err(|e| SignatureError::Key(e.to_string()))? {
            sc::KeyAlgorithm::Ed25519 => {
                let vk = VerifyingKey::from_public_key_der(der.as_bytes())
                    .map_err(|e| SignatureError::Key(e.to_string()))?;
                let Some(strong) = crate::strict::StrongKey::new(vk) else {
                    return Err(SignatureError::Key("Ed25519 key has small order and would accept forgeries".into()));
                };
                PublicKey::Ed25519(Box::new(strong))
            }
            sc::KeyAlgorithm::EcdsaP256 => PublicKey::P256(Box::new(der.clone())),
            other => {
                return Err(SignatureError::Key(format!(
                    "{other:?} keys are not accepted; use Ed25519 or ECDSA P-256"
                )));
            }
        };
        let key_id = key_id(der.as_bytes());
        Ok(Self {
            name: name.to_owned(),
            kind: SignerKind::Keyed { key, der: Box::new(der), key_id, pem: pem.trim().to_owned() },
        })
    }

    /// A keyless signer: exact certificate identity (SAN) and OIDC issuer.
    pub fn keyless(name: &str, identity: &str, issuer: &str) -> Self {
        Self {
            name: name.to_owned(),
            kind: SignerKind::Keyless { identity: identity.to_owned(), issuer: issuer.to_owned() },
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// How evidence names this signer so a verifier can rebuild it: the SPKI
    /// PEM of a keyed signer, or `keyless <identity> <issuer>`.
    pub fn evidence_key(&self) -> String {
        match &self.kind {
            SignerKind::Keyed { pem, .. } => pem.clone(),
            SignerKind::Keyless { identity, issuer } => format!("keyless {identity} {issuer}"),
        }
    }

    /// Rebuild a signer from [`TrustedSigner::evidence_key`].
    ///
    /// # Errors
    /// If the key is unusable.
    pub fn from_evidence_key(name: &str, key: &str) -> Result<Self, SignatureError> {
        match key.strip_prefix("keyless ") {
            Some(rest) => {
                let (identity, issuer) = rest
                    .rsplit_once(' ')
                    .ok_or_else(|| SignatureError::Key("keyless signer without an issuer".into()))?;
                Ok(Self::keyless(name, identity, issuer))
            }
            None => Self::from_public_key_pem(name, key),
        }
    }

    /// Whether this is a keyless (certificate identity) signer.
    pub fn is_keyless(&self) -> bool {
        matches!(self.kind, SignerKind::Keyless { .. })
    }

    /// A one-line description for people (`keyed ed25519 sha256:…` / `keyless <identity> via <issuer>`).
    pub fn describe(&self) -> String {
        match &self.kind {
            SignerKind::Keyed { key: PublicKey::Ed25519(_), key_id, .. } => format!("keyed ed25519 {key_id}"),
            SignerKind::Keyed { key: PublicKey::P256(_), key_id, .. } => format!("keyed ecdsa-p256 {key_id}"),
            SignerKind::Keyless { identity, issuer } => format!("keyless {identity} via {issuer}"),
        }
    }
}

/// The signers a runner trusts, and the trusted root for keyless ones.
pub struct TrustedSigners {
    signers: Vec<TrustedSigner>,
    root: Option<TrustedRoot>,
    /// Keyed signatures already verified against exactly these signers,
    /// by the digest of everything the check reads (see [`verify_capsule`]).
    verified: crate::bounded::BoundedMap<Sha256Digest, Verified>,
}

/// At most this many verified signatures are remembered (emptied when full).
const VERIFIED_MAX: usize = 4096;

impl std::fmt::Debug for TrustedSigners {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrustedSigners").field("signers", &self.signers).field("root", &self.root.is_some()).finish()
    }
}

impl TrustedSigners {
    /// # Errors
    /// If `trusted_root_json` is given and is not a valid trusted root.
    pub fn new(signers: Vec<TrustedSigner>, trusted_root_json: Option<&[u8]>) -> Result<Self, SignatureError> {
        let root = match trusted_root_json {
            Some(bytes) => {
                let text = std::str::from_utf8(bytes).map_err(|e| SignatureError::Malformed(e.to_string()))?;
                Some(
                    TrustedRoot::from_json(text)
                        .map_err(|e| SignatureError::Malformed(format!("trusted root: {e}")))?,
                )
            }
            None => None,
        };
        Ok(Self { signers, root, verified: crate::bounded::BoundedMap::new(VERIFIED_MAX) })
    }

    pub fn signers(&self) -> &[TrustedSigner] {
        &self.signers
    }

    /// Replace the signers, keeping the trusted root.
    pub fn set_signers(&mut self, signers: Vec<TrustedSigner>) {
        self.signers = signers;
        // What verified against the old signers proves nothing now.
        self.verified.clear();
    }

    pub fn has_trusted_root(&self) -> bool {
        self.root.is_some()
    }
}

/// How the signature's time and publication were established.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Transparency {
    /// Keyed, no transparency-log entry: verified offline against the configured key.
    None,
    /// A transparency-log entry (or timestamp) was verified by sigstore-verify.
    Verified,
}

/// Proof that a capsule's signature verified for a trusted signer.
#[derive(Debug)]
pub struct VerifiedCapsule {
    file: CapsuleFile,
    signer: String,
    signer_detail: String,
    signer_key: String,
    transparency: Transparency,
}

impl VerifiedCapsule {
    /// The verifying signer as evidence records it ([`TrustedSigner::evidence_key`]).
    pub fn signer_key(&self) -> &str {
        &self.signer_key
    }
    pub fn file(&self) -> &CapsuleFile {
        &self.file
    }
    /// The configured name of the signer that verified.
    pub fn signer(&self) -> &str {
        &self.signer
    }
    /// Key id or certificate identity of that signer.
    pub fn signer_detail(&self) -> &str {
        &self.signer_detail
    }
    pub fn transparency(&self) -> Transparency {
        self.transparency
    }
}

/// Verify a capsule's signature against the trusted signers.
///
/// # Errors
/// A [`SignatureError`] naming the failed step (see the module checklist).
///
/// A keyed signature without transparency-log entries is pure arithmetic
/// over the bundle and the two digests: once it verified against these
/// signers, the same bytes verify again, so the result is remembered by the
/// SHA-256 of exactly those inputs (a resubmitted capsule skips the curve
/// arithmetic; any changed byte is a different key and is checked in
/// full). Refusals, and signatures whose check involves a log or
/// certificates (and so time), are never remembered.
pub fn verify_capsule(file: CapsuleFile, trusted: &TrustedSigners) -> Result<VerifiedCapsule, SignatureError> {
    let bytes = file.bundle().ok_or(SignatureError::Unsigned)?;
    let (capsule, component) = (file.digest(), file.manifest().component.sha256);
    let key = {
        use sha2::Digest as _;
        let mut h = sha2::Sha256::new();
        h.update(b"edge-runner verified capsule signature\n");
        h.update(capsule.0);
        h.update(component.0);
        h.update(bytes);
        Sha256Digest(h.finalize().into())
    };
    let v = match trusted.verified.get(&key) {
        Some(v) => v,
        None => {
            let v = verify_parts(capsule, component, bytes, trusted)?;
            if v.2 == Transparency::None {
                trusted.verified.insert(key, v.clone());
            }
            v
        }
    };
    Ok(VerifiedCapsule { file, signer: v.0, signer_detail: v.1, signer_key: v.3, transparency: v.2 })
}

/// Verify a capsule's signature bundle from its canonical manifest alone
/// (the offline verifier has the manifest and bundle, not the component:
/// the manifest pins the component's digest). Returns the signer's name.
///
/// # Errors
/// As [`verify_capsule`].
pub fn verify_manifest_signature(
    manifest_bytes: &[u8],
    bundle: &[u8],
    trusted: &TrustedSigners,
) -> Result<String, SignatureError> {
    let m = crate::manifest::Manifest::from_canonical_json(manifest_bytes)
        .map_err(|e| SignatureError::Malformed(format!("manifest: {e}")))?;
    Ok(verify_parts(Sha256Digest::of(manifest_bytes), m.component.sha256, bundle, trusted)?.0)
}

type Verified = (String, String, Transparency, String);

fn verify_parts(
    capsule: Sha256Digest,
    component: Sha256Digest,
    bytes: &[u8],
    trusted: &TrustedSigners,
) -> Result<Verified, SignatureError> {
    let bundle = parse_bundle(bytes)?;
    let env = dsse_envelope(&bundle)?;
    check_statement(env.payload.as_bytes(), capsule, Some(component))?;
    let pae = env.pae();
    let sig = env.signature.sig.as_bytes();
    match &bundle.verification_material.content {
        VerificationMaterialContent::PublicKey(_) => verify_keyed(&bundle, &pae, sig, capsule, trusted),
        VerificationMaterialContent::Certificate(_) | VerificationMaterialContent::X509CertificateChain { .. } => {
            verify_keyless(&bundle, capsule, trusted)
        }
        _ => Err(SignatureError::Unsupported("unknown verification material".into())),
    }
}

fn parse_bundle(bytes: &[u8]) -> Result<Bundle, SignatureError> {
    let text = std::str::from_utf8(bytes).map_err(|e| SignatureError::Malformed(e.to_string()))?;
    let bundle = Bundle::from_json(text).map_err(|e| SignatureError::Malformed(e.to_string()))?;
    if bundle.media_type != MediaType::Bundle0_3 {
        return Err(SignatureError::Unsupported(format!(
            "bundle media type {}; capsules use v0.3",
            bundle.media_type.as_str()
        )));
    }
    Ok(bundle)
}

fn dsse_envelope(bundle: &Bundle) -> Result<&sigstore_verify::types::DsseEnvelope, SignatureError> {
    let SignatureContent::DsseEnvelope(env) = &bundle.content else {
        return Err(SignatureError::Unsupported(
            "capsule bundles carry a DSSE envelope, not a message signature".into(),
        ));
    };
    if env.payload_type != IN_TOTO_PAYLOAD_TYPE {
        return Err(SignatureError::Unsupported(format!("DSSE payload type `{}`", env.payload_type)));
    }
    Ok(env)
}

/// Check the in-toto Statement names exactly this capsule.
fn check_statement(
    payload: &[u8],
    capsule: Sha256Digest,
    component: Option<Sha256Digest>,
) -> Result<(), SignatureError> {
    let st: Statement =
        serde_json::from_slice(payload).map_err(|e| SignatureError::Malformed(format!("in-toto statement: {e}")))?;
    if st.type_ != STATEMENT_TYPE {
        return Err(SignatureError::Unsupported(format!("statement type `{}`", st.type_)));
    }
    if st.predicate_type != CAPSULE_PREDICATE_TYPE {
        return Err(SignatureError::Unsupported(format!("predicate type `{}`", st.predicate_type)));
    }
    let [subject] = st.subject.as_slice() else {
        return Err(SignatureError::SubjectMismatch(format!(
            "statement has {} subjects, expected 1",
            st.subject.len()
        )));
    };
    let named = subject.digest.sha256.as_ref().map(|d| Sha256Digest(*d.as_bytes()));
    if named != Some(capsule) {
        return Err(SignatureError::SubjectMismatch(format!(
            "signed subject is {}, capsule digest is {capsule}",
            named.map_or_else(|| "absent".into(), |d| d.to_string())
        )));
    }
    if let Some(component) = component {
        let pinned = st.predicate.pointer("/component/sha256").and_then(|v| v.as_str());
        if pinned != Some(component.hex().as_str()) {
            return Err(SignatureError::SubjectMismatch("signed component digest differs from the manifest's".into()));
        }
    }
    Ok(())
}

fn verify_keyed(
    bundle: &Bundle,
    pae: &[u8],
    sig: &[u8],
    capsule: Sha256Digest,
    trusted: &TrustedSigners,
) -> Result<Verified, SignatureError> {
    let has_log = !bundle.verification_material.tlog_entries.is_empty()
        || !bundle.verification_material.timestamp_verification_data.rfc3161_timestamps.is_empty();
    for s in &trusted.signers {
        let SignerKind::Keyed { key, der, key_id, .. } = &s.kind else {
            continue;
        };
        let ok = match key {
            PublicKey::Ed25519(vk) => {
                ed25519_dalek::Signature::from_slice(sig).is_ok_and(|sig| vk.verify_strict(pae, &sig).is_ok())
            }
            PublicKey::P256(der) => sc::verify_signature(
                der,
                pae,
                &sigstore_verify::types::SignatureBytes::from_bytes(sig),
                SigningScheme::EcdsaP256Sha256,
            )
            .is_ok(),
        };
        if !ok {
            continue;
        }
        if !has_log {
            return Ok((s.name.clone(), key_id.clone(), Transparency::None, s.evidence_key()));
        }
        // The bundle claims log entries: they must verify too, or we refuse.
        let root = trusted.root.as_ref().ok_or_else(|| {
            SignatureError::Unsupported(
                "bundle carries transparency-log entries but no `sigstore.trusted_root` is configured to check them"
                    .into(),
            )
        })?;
        let verifier = Verifier::new(root).map_err(|e| SignatureError::Malformed(e.to_string()))?;
        let policy = PublicKeyVerificationPolicy::new((**der).clone());
        let digest = sigstore_verify::types::Sha256Hash::new(capsule.0);
        verifier
            .verify(digest, bundle, &policy)
            .map_err(|e| SignatureError::UntrustedSigner(format!("transparency-log check failed: {e}")))?;
        return Ok((s.name.clone(), key_id.clone(), Transparency::Verified, s.evidence_key()));
    }
    Err(SignatureError::UntrustedSigner(format!(
        "keyed bundle, {} trusted key(s) tried",
        trusted.signers.iter().filter(|s| matches!(s.kind, SignerKind::Keyed { .. })).count()
    )))
}

fn verify_keyless(
    bundle: &Bundle,
    capsule: Sha256Digest,
    trusted: &TrustedSigners,
) -> Result<Verified, SignatureError> {
    let Some(root) = trusted.root.as_ref() else {
        return Err(SignatureError::UntrustedSigner(
            "keyless bundle, but no `sigstore.trusted_root` is configured".into(),
        ));
    };
    let verifier = Verifier::new(root).map_err(|e| SignatureError::Malformed(e.to_string()))?;
    let digest = sigstore_verify::types::Sha256Hash::new(capsule.0);
    let mut last = String::from("no keyless signer configured");
    for s in &trusted.signers {
        let SignerKind::Keyless { identity, issuer } = &s.kind else {
            continue;
        };
        match verifier.verify(digest, bundle, &VerificationPolicy::new(identity.as_str(), issuer.as_str())) {
            Ok(_) => {
                return Ok((
                    s.name.clone(),
                    format!("{identity} via {issuer}"),
                    Transparency::Verified,
                    s.evidence_key(),
                ));
            }
            Err(e) => last = e.to_string(),
        }
    }
    Err(SignatureError::UntrustedSigner(format!("keyless bundle: {last}")))
}

/// `sha256:<hex>` of a public key's SPKI DER: how keys are named in output and evidence.
pub fn key_id(spki_der: &[u8]) -> String {
    Sha256Digest::of(spki_der).to_string()
}

/// An Ed25519 signing key loaded from (or written to) PKCS#8 PEM.
pub struct CapsuleSigningKey(SigningKey);

impl std::fmt::Debug for CapsuleSigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CapsuleSigningKey({})", self.key_id())
    }
}

impl CapsuleSigningKey {
    /// This key as a signed-note signer named `name` (for log checkpoints).
    ///
    /// # Errors
    /// If `name` is not a valid note key name.
    pub fn note_signer(&self, name: &str) -> Result<crate::note::NoteSigner, crate::note::NoteError> {
        crate::note::NoteSigner::new(name, self.0.clone())
    }

    /// A fresh key from the operating system's RNG.
    pub fn generate() -> Self {
        Self(SigningKey::generate(&mut rand_core::OsRng))
    }

    /// # Errors
    /// If the PEM is not a PKCS#8 Ed25519 private key.
    pub fn from_pkcs8_pem(pem: &str) -> Result<Self, SignatureError> {
        SigningKey::from_pkcs8_pem(pem)
            .map(Self)
            .map_err(|e| SignatureError::Key(format!("not a PKCS#8 Ed25519 private key: {e}")))
    }

    /// PKCS#8 PEM of the private key (zeroised on drop). Never log this.
    pub fn to_pkcs8_pem(&self) -> zeroize::Zeroizing<String> {
        self.0
            .to_pkcs8_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
            .expect("encoding an Ed25519 key cannot fail")
    }

    /// SPKI PEM of the public key.
    pub fn public_key_pem(&self) -> String {
        self.0
            .verifying_key()
            .to_public_key_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
            .expect("encoding an Ed25519 key cannot fail")
    }

    pub fn key_id(&self) -> String {
        key_id(self.0.verifying_key().to_public_key_der().expect("encoding cannot fail").as_bytes())
    }

    /// Sign a capsule: a Sigstore bundle v0.3 (JSON) with a DSSE envelope
    /// over the capsule's in-toto Statement, a public-key hint and no
    /// transparency-log entries.
    pub fn sign_capsule(&self, file: &CapsuleFile) -> Vec<u8> {
        let m = file.manifest();
        let payload = dsse::capsule_statement(&m.name, &m.version, file.digest(), m.component.sha256);
        let sig = self.0.sign(&dsse::pae(IN_TOTO_PAYLOAD_TYPE, &payload));
        let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
        let bundle = serde_json::json!({
            "mediaType": BUNDLE_MEDIA_TYPE,
            "verificationMaterial": {
                "publicKey": {"hint": self.key_id()},
                "tlogEntries": [],
            },
            "dsseEnvelope": {
                "payload": b64(&payload),
                "payloadType": IN_TOTO_PAYLOAD_TYPE,
                "signatures": [{"sig": b64(&sig.to_bytes()), "keyid": ""}],
            },
        });
        serde_json::to_vec_pretty(&bundle).expect("bundle serialises")
    }
}

/// Who must have signed, for [`verify_sigstore_bundle`].
#[derive(Debug, Clone)]
pub enum BundlePolicy {
    /// Keyless: exact certificate identity (SAN) and OIDC issuer.
    Identity { identity: String, issuer: String },
    /// Keyed: an SPKI PEM public key.
    Key { pem: String },
}

/// What a bundle signs: the artifact bytes, or only their SHA-256.
#[derive(Debug, Clone)]
pub enum BundleArtifact {
    Bytes(Vec<u8>),
    Digest(Sha256Digest),
}

/// Verify any Sigstore bundle exactly as `sigstore-verify` does (the
/// sigstore-conformance client protocol): transparency-log entries, SCTs,
/// certificate chains and timestamps are all required as Sigstore requires
/// them. `trusted_root_json` defaults to the embedded public-good root, so no
/// network is needed.
///
/// # Errors
/// A message naming the failed check.
pub fn verify_sigstore_bundle(
    bundle_json: &[u8],
    policy: &BundlePolicy,
    trusted_root_json: Option<&[u8]>,
    artifact: &BundleArtifact,
) -> Result<(), String> {
    let text = std::str::from_utf8(bundle_json).map_err(|e| format!("bundle is not UTF-8: {e}"))?;
    let bundle = Bundle::from_json(text).map_err(|e| format!("bundle does not parse: {e}"))?;
    let root = match trusted_root_json {
        Some(b) => {
            let t = std::str::from_utf8(b).map_err(|e| format!("trusted root is not UTF-8: {e}"))?;
            TrustedRoot::from_json(t).map_err(|e| format!("trusted root does not parse: {e}"))?
        }
        None => TrustedRoot::from_json(sigstore_verify::trust_root::SIGSTORE_PRODUCTION_TRUSTED_ROOT)
            .map_err(|e| format!("embedded trusted root: {e}"))?,
    };
    let verifier = Verifier::new(&root).map_err(|e| format!("trusted root unusable: {e}"))?;
    let result = match (policy, artifact) {
        (BundlePolicy::Identity { identity, issuer }, a) => {
            let p = VerificationPolicy::new(identity.as_str(), issuer.as_str());
            match a {
                BundleArtifact::Bytes(b) => verifier.verify(b.as_slice(), &bundle, &p),
                BundleArtifact::Digest(d) => verifier.verify(sigstore_verify::types::Sha256Hash::new(d.0), &bundle, &p),
            }
        }
        (BundlePolicy::Key { pem }, a) => {
            let der = DerPublicKey::from_pem(pem).map_err(|e| format!("key: {e}"))?;
            let p = PublicKeyVerificationPolicy::new(der);
            match a {
                BundleArtifact::Bytes(b) => verifier.verify(b.as_slice(), &bundle, &p),
                BundleArtifact::Digest(d) => verifier.verify(sigstore_verify::types::Sha256Hash::new(d.0), &bundle, &p),
            }
        }
    };
    result.map(|_| ()).map_err(|e| e.to_string())
}

/// What a bundle says about its signer, without verifying it (for `inspect`).
pub fn describe_bundle(bytes: &[u8]) -> String {
    match parse_bundle(bytes) {
        Ok(b) => match &b.verification_material.content {
            VerificationMaterialContent::PublicKey(p) => format!(
                "keyed, key hint {} ({} transparency-log entries)",
                p.hint,
                b.verification_material.tlog_entries.len()
            ),
            VerificationMaterialContent::Certificate(_) | VerificationMaterialContent::X509CertificateChain { .. } => {
                format!("keyless certificate ({} transparency-log entries)", b.verification_material.tlog_entries.len())
            }
            _ => "unknown verification material".into(),
        },
        Err(e) => format!("unparseable: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{ComponentRef, Manifest};

    fn capsule(name: &str) -> CapsuleFile {
        let wasm = b"\0asm component".to_vec();
        let m = Manifest::from_authoring_toml(
            &format!("name = \"{name}\"\nversion = \"1\"\nkind = \"diagnostic\"\n"),
            ComponentRef { sha256: Sha256Digest::of(&wasm), size: wasm.len() as u64 },
        )
        .unwrap();
        CapsuleFile::new(m, wasm).unwrap()
    }

    fn trusted(key: &CapsuleSigningKey) -> TrustedSigners {
        let s = TrustedSigner::from_public_key_pem("agent", &key.public_key_pem()).unwrap();
        TrustedSigners::new(vec![s], None).unwrap()
    }

    #[test]
    fn sign_then_verify() {
        let key = CapsuleSigningKey::generate();
        let c = capsule("a");
        let signed = c.clone().with_bundle(key.sign_capsule(&c));
        let v = verify_capsule(signed, &trusted(&key)).unwrap();
        assert_eq!(v.signer(), "agent");
        assert_eq!(v.transparency(), Transparency::None);
    }

    #[test]
    fn refusals_name_their_cause() {
        let key = CapsuleSigningKey::generate();
        let other = CapsuleSigningKey::generate();
        let c = capsule("a");
        let e = verify_capsule(c.clone(), &trusted(&key)).unwrap_err();
        assert_eq!(e.reason_code(), "signature.missing");

        let by_other = c.clone().with_bundle(other.sign_capsule(&c));
        assert_eq!(verify_capsule(by_other, &trusted(&key)).unwrap_err().reason_code(), "signature.untrusted_signer");

        // A valid signature for capsule "b" moved onto capsule "a".
        let b = capsule("b");
        let moved = c.clone().with_bundle(key.sign_capsule(&b));
        assert_eq!(verify_capsule(moved, &trusted(&key)).unwrap_err().reason_code(), "signature.subject_mismatch");

        let garbage = c.clone().with_bundle(b"{\"mediaType\":1}".to_vec());
        assert_eq!(verify_capsule(garbage, &trusted(&key)).unwrap_err().reason_code(), "signature.malformed");
    }

    #[test]
    fn flipped_signature_bit_is_refused() {
        let key = CapsuleSigningKey::generate();
        let c = capsule("a");
        let mut v: serde_json::Value = serde_json::from_slice(&key.sign_capsule(&c)).unwrap();
        let sig = v["dsseEnvelope"]["signatures"][0]["sig"].as_str().unwrap().to_owned();
        let mut raw = base64::engine::general_purpose::STANDARD.decode(sig).unwrap();
        raw[10] ^= 1;
        v["dsseEnvelope"]["signatures"][0]["sig"] = base64::engine::general_purpose::STANDARD.encode(raw).into();
        let bad = c.with_bundle(serde_json::to_vec(&v).unwrap());
        assert_eq!(verify_capsule(bad, &trusted(&key)).unwrap_err().reason_code(), "signature.untrusted_signer");
    }

    #[test]
    fn a_remembered_signature_vouches_only_for_the_same_bytes_and_signers() {
        let key = CapsuleSigningKey::generate();
        let mut t = trusted(&key);
        let c = capsule("a");
        let bundle = key.sign_capsule(&c);
        let signed = c.clone().with_bundle(bundle.clone());
        assert_eq!(verify_capsule(signed.clone(), &t).unwrap().signer(), "agent");
        assert_eq!(t.verified.len(), 1, "a keyed success is remembered");
        assert_eq!(verify_capsule(signed.clone(), &t).unwrap().signer(), "agent");

        // The remembered bundle moved onto another capsule: checked in full, refused.
        let moved = capsule("b").with_bundle(bundle.clone());
        assert_eq!(verify_capsule(moved, &t).unwrap_err().reason_code(), "signature.subject_mismatch");
        // One byte of the signature changed: refused, and not remembered.
        let mut v: serde_json::Value = serde_json::from_slice(&bundle).unwrap();
        let sig = v["dsseEnvelope"]["signatures"][0]["sig"].as_str().unwrap().to_owned();
        let mut raw = base64::engine::general_purpose::STANDARD.decode(sig).unwrap();
        raw[3] ^= 0x40;
        v["dsseEnvelope"]["signatures"][0]["sig"] = base64::engine::general_purpose::STANDARD.encode(raw).into();
        let flipped = c.clone().with_bundle(serde_json::to_vec(&v).unwrap());
        assert_eq!(verify_capsule(flipped, &t).unwrap_err().reason_code(), "signature.untrusted_signer");
        assert_eq!(t.verified.len(), 1, "refusals are never remembered");

        // The signer is no longer trusted: what verified before proves nothing.
        let other = CapsuleSigningKey::generate();
        t.set_signers(vec![TrustedSigner::from_public_key_pem("other", &other.public_key_pem()).unwrap()]);
        assert_eq!(verify_capsule(signed, &t).unwrap_err().reason_code(), "signature.untrusted_signer");
    }

    const KEYLESS_ID: &str =
        "https://github.com/prefix-dev/sigstore-example/.github/workflows/action.yaml@refs/heads/main";
    const KEYLESS_ISSUER: &str = "https://token.actions.githubusercontent.com";

    fn data(name: &str) -> Vec<u8> {
        std::fs::read(format!("{}/../tests/data/sigstore/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
    }

    /// Keyless verification runs offline against a local trusted root and
    /// checks the exact identity and issuer.
    #[test]
    fn keyless_bundles_verify_offline_with_exact_identity() {
        let bundle = parse_bundle(&data("conda-attestation.sigstore.json")).unwrap();
        let artifact = Sha256Digest::of(&data("signed-package-2.1.0-hb0f4dca_0.conda"));
        let root = data("public-good.json");
        let ok =
            TrustedSigners::new(vec![TrustedSigner::keyless("ci", KEYLESS_ID, KEYLESS_ISSUER)], Some(&root)).unwrap();
        let (signer, detail, transparency, key) = verify_keyless(&bundle, artifact, &ok).unwrap();
        assert!(key.starts_with("keyless "));
        assert_eq!((signer.as_str(), transparency), ("ci", Transparency::Verified));
        assert!(detail.contains(KEYLESS_ID));

        for (id, issuer) in [
            ("https://github.com/evil/repo/.github/workflows/x.yaml@refs/heads/main", KEYLESS_ISSUER),
            (KEYLESS_ID, "https://accounts.google.com"),
        ] {
            let wrong = TrustedSigners::new(vec![TrustedSigner::keyless("x", id, issuer)], Some(&root)).unwrap();
            let e = verify_keyless(&bundle, artifact, &wrong).unwrap_err();
            assert_eq!(e.reason_code(), "signature.untrusted_signer");
        }
        let other = Sha256Digest::of(b"another artifact");
        assert!(verify_keyless(&bundle, other, &ok).is_err(), "subject must match");
        let no_root =
            TrustedSigners::new(vec![TrustedSigner::keyless("ci", KEYLESS_ID, KEYLESS_ISSUER)], None).unwrap();
        assert!(verify_keyless(&bundle, artifact, &no_root).is_err(), "no trusted root, no keyless trust");
    }

    #[test]
    fn conformance_verification_is_sigstores_own() {
        let bundle = data("conda-attestation.sigstore.json");
        let root = data("public-good.json");
        let artifact = data("signed-package-2.1.0-hb0f4dca_0.conda");
        let id = BundlePolicy::Identity { identity: KEYLESS_ID.into(), issuer: KEYLESS_ISSUER.into() };
        verify_sigstore_bundle(&bundle, &id, Some(&root), &BundleArtifact::Bytes(artifact.clone())).unwrap();
        verify_sigstore_bundle(&bundle, &id, Some(&root), &BundleArtifact::Digest(Sha256Digest::of(&artifact)))
            .unwrap();
        let mut tampered = artifact;
        tampered[100] ^= 1;
        assert!(verify_sigstore_bundle(&bundle, &id, Some(&root), &BundleArtifact::Bytes(tampered)).is_err());
        // Our keyed, log-less capsule bundles are not valid *Sigstore* bundles:
        // Sigstore requires a log entry or timestamp.
        let key = CapsuleSigningKey::generate();
        let c = capsule("a");
        let ours = key.sign_capsule(&c);
        let policy = BundlePolicy::Key { pem: key.public_key_pem() };
        let e = verify_sigstore_bundle(&ours, &policy, None, &BundleArtifact::Digest(c.digest())).unwrap_err();
        assert!(!e.is_empty());
    }

    #[test]
    fn weak_keys_are_refused_at_registration() {
        // SPKI for the Ed25519 identity point (small order).
        let mut der = hex::decode("302a300506032b6570032100").unwrap();
        let mut ident = [0u8; 32];
        ident[0] = 1;
        der.extend_from_slice(&ident);
        let pem = format!(
            "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
            base64::engine::general_purpose::STANDARD.encode(&der)
        );
        assert!(matches!(TrustedSigner::from_public_key_pem("weak", &pem), Err(SignatureError::Key(_))));
    }
}
