//! Fixed keys and inputs shared by the fuzz targets and the seed-corpus
//! generator (`cargo run --example gen_corpus --no-default-features`).
//!
//! Every key here is derived from a constant seed: these are test keys,
//! never trusted anywhere but in the fuzzers. With fixed keys, a seed that
//! verifies keeps verifying, so the fuzzer starts from inputs that pass
//! every check and mutates its way into the refusals.

use std::sync::LazyLock;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::EncodePrivateKey as _;
use edge_core::Sha256Digest;
use edge_core::admission::{Grant, GrantedMount, Limits};
use edge_core::approval::{
    Binding, PASSKEYS_SCHEMA, PasskeyAlgorithm, PasskeyAssertion, PasskeyEntry, PasskeysFile, Registry, Statement,
};
use edge_core::container::CapsuleFile;
use edge_core::manifest::{ComponentRef, Manifest};
use edge_core::note::{NoteSigner, NoteVerifier};
use edge_core::signature::{CapsuleSigningKey, TrustedSigner, TrustedSigners};

/// The Sigstore public-good trusted root and the keyless bundle checked in for tests.
pub const PUBLIC_GOOD_ROOT: &[u8] = include_bytes!("../../tests/data/sigstore/public-good.json");
pub const CONDA_ARTIFACT: &[u8] = include_bytes!("../../tests/data/sigstore/signed-package-2.1.0-hb0f4dca_0.conda");
pub const KEYLESS_ID: &str =
    "https://github.com/prefix-dev/sigstore-example/.github/workflows/action.yaml@refs/heads/main";
pub const KEYLESS_ISSUER: &str = "https://token.actions.githubusercontent.com";

/// The runner identity (checkpoint origin and note key name) of the evidence seeds.
pub const ORIGIN: &str = "fuzz.runner.example";
/// The leaf the seed receipts prove inclusion of.
pub const RECEIPT_LEAF: &[u8] = b"{\"fuzz\":\"terminal record\"}";
/// "Now" for approval checks: the seed approvals are valid at this time.
pub const NOW: u64 = 1_795_500_000;

/// The capsule signing key (Ed25519 from a fixed seed).
pub fn capsule_key() -> CapsuleSigningKey {
    let pem = SigningKey::from_bytes(&[0x5e; 32]).to_pkcs8_pem(Default::default()).expect("pkcs8");
    CapsuleSigningKey::from_pkcs8_pem(&pem).expect("fixed key")
}

const MANIFEST_TOML: &str = r#"name = "fuzz-cleanup"
version = "1.0.0"
kind = "remediation"
description = "Seed capsule for the fuzzers"
imports = ["edge-runner:capsule/host"]

[params]
max_age_days = "7"

[[mounts]]
name = "logs"
writable = true

[provenance]
agent = "spiffe://example.internal/agent/fuzz"
ticket = "FUZZ-1"
"#;

/// The component of the seed capsule.
pub const COMPONENT: &[u8] = b"\0asm\x0d\0\x01\0 fuzz seed component";

/// The seed capsule (unsigned).
pub fn capsule() -> CapsuleFile {
    let pinned = ComponentRef { sha256: Sha256Digest::of(COMPONENT), size: COMPONENT.len() as u64 };
    let manifest = Manifest::from_authoring_toml(MANIFEST_TOML, pinned).expect("seed manifest");
    CapsuleFile::new(manifest, COMPONENT.to_vec()).expect("seed capsule")
}

/// The seed capsule's canonical manifest bytes.
pub fn manifest_bytes() -> Vec<u8> {
    capsule().manifest().to_canonical_json().expect("canonical")
}

/// Trusted capsule signers: the fixed key, and the keyless identity of the
/// checked-in conda attestation under the public-good root (so both the keyed
/// and the keyless verification paths run).
pub static TRUSTED: LazyLock<TrustedSigners> = LazyLock::new(|| {
    let keyed = TrustedSigner::from_public_key_pem("fuzz-agent", &capsule_key().public_key_pem()).expect("key");
    let keyless = TrustedSigner::keyless("ci", KEYLESS_ID, KEYLESS_ISSUER);
    TrustedSigners::new(vec![keyed, keyless], Some(PUBLIC_GOOD_ROOT)).expect("trusted signers")
});

/// The runner's note key (checkpoints, receipts).
pub fn note_signer() -> NoteSigner {
    NoteSigner::new(ORIGIN, SigningKey::from_bytes(&[0x3c; 32])).expect("note key")
}

/// Note verifiers: the runner's, plus the published test keys (`PeterNeumann`
/// from `golang.org/x/mod/sumdb/note`, the c2sp.org/signed-note example) so notes from the published vectors verify too.
pub static NOTE_VERIFIERS: LazyLock<Vec<NoteVerifier>> = LazyLock::new(|| {
    vec![
        note_signer().verifier().clone(),
        NoteVerifier::parse("PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW").expect("vkey"),
        NoteVerifier::parse("example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k").expect("vkey"),
    ]
});

/// The approver's SSH key (Ed25519 from a fixed seed).
pub fn approver_key() -> ssh_key::PrivateKey {
    ssh_key::PrivateKey::from(ssh_key::private::Ed25519Keypair::from_seed(&[0x11; 32]))
}

/// The approver's passkey (an EdDSA credential from a fixed seed).
pub fn approver_passkey() -> SigningKey {
    SigningKey::from_bytes(&[0x22; 32])
}

/// The passkey's credential id, relying party and console origin.
pub const PASSKEY_ID: &[u8] = b"fuzz passkey";
pub const PASSKEY_RP: &str = "console.fuzz.example";
pub const PASSKEY_ORIGIN: &str = "https://console.fuzz.example";

/// The passkeys registry file: alice's passkey.
pub fn passkeys_json() -> String {
    let entry = PasskeyEntry {
        algorithm: PasskeyAlgorithm::EdDsa,
        credential_id: B64URL.encode(PASSKEY_ID),
        enrolled_at: NOW - 86_400,
        label: None,
        origin: PASSKEY_ORIGIN.into(),
        principal: "alice".into(),
        public_key: B64URL.encode(approver_passkey().verifying_key().to_bytes()),
        rp_id: PASSKEY_RP.into(),
    };
    serde_json::to_string(&PasskeysFile { credentials: vec![entry], schema: PASSKEYS_SCHEMA.into() }).expect("json")
}

/// A passkey assertion by alice's passkey over `st`, as a browser returns it.
pub fn passkey_assertion(st: &Statement) -> PasskeyAssertion {
    use ed25519_dalek::Signer as _;
    let client = format!(
        r#"{{"type":"webauthn.get","challenge":"{}","origin":"{PASSKEY_ORIGIN}","crossOrigin":false}}"#,
        B64URL.encode(edge_core::approval::statement_challenge(st))
    );
    let mut auth = Sha256Digest::of(PASSKEY_RP.as_bytes()).0.to_vec();
    auth.push(0x05);
    auth.extend(1u32.to_be_bytes());
    let mut signed = auth.clone();
    signed.extend(Sha256Digest::of(client.as_bytes()).0);
    PasskeyAssertion {
        authenticator_data: B64URL.encode(&auth),
        client_data_json: B64URL.encode(client.as_bytes()),
        credential_id: B64URL.encode(PASSKEY_ID),
        signature: B64URL.encode(approver_passkey().sign(&signed).to_bytes()),
    }
}

/// The approval registry: `alice` with the approver key, for our namespace,
/// and with her passkey.
pub static REGISTRY: LazyLock<Registry> = LazyLock::new(|| {
    let line = format!(
        "alice namespaces=\"{}\",valid-after=\"20250101Z\" {}\n",
        edge_core::approval::NAMESPACE,
        approver_key().public_key().to_openssh().expect("openssh")
    );
    Registry::parse(&line, "allowed_signers", "[principals]\nalice = [\"sre\"]\n", "roles.toml")
        .and_then(|r| r.with_passkeys(&passkeys_json(), "passkeys.json"))
        .expect("registry")
});

/// What the seed approvals are bound to.
pub fn binding() -> Binding {
    Binding {
        proposal: "p-1".into(),
        capsule: Sha256Digest::of(b"capsule"),
        plan: Sha256Digest::of(b"plan A"),
        policy: Sha256Digest::of(b"policy X"),
        runner: "runner-1".into(),
        tier: 2,
        grant: Grant {
            endpoints: vec![],
            mounts: vec![GrantedMount { name: "config".into(), writable: true }],
            env: vec![],
            imports: Default::default(),
            limits: Limits::DEFAULT,
        },
        max_age_secs: 7200,
    }
}
