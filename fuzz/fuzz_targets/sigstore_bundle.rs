//! The Sigstore bundle (`signature.sigstore.json`) through every entry that
//! takes its bytes: `describe_bundle` (inspect), `verify_manifest_signature`
//! (the keyed and keyless capsule paths, against fixed trusted signers) and
//! `verify_sigstore_bundle` (the conformance entry, public-good root).
//! Invariant: no panic; only the fixed key's signature is accepted for the
//! seed manifest.
#![no_main]

use std::sync::LazyLock;

use edge_core::Sha256Digest;
use edge_core::signature::{
    BundleArtifact, BundlePolicy, describe_bundle, verify_manifest_signature, verify_sigstore_bundle,
};
use libfuzzer_sys::fuzz_target;

static MANIFEST: LazyLock<Vec<u8>> = LazyLock::new(edge_fuzz::manifest_bytes);

fuzz_target!(|data: &[u8]| {
    let _ = describe_bundle(data);
    if let Ok(signer) = verify_manifest_signature(&MANIFEST, data, &edge_fuzz::TRUSTED) {
        // Only the fixed key signed the seed manifest: a keyless acceptance would be a forgery.
        assert_eq!(signer, "fuzz-agent");
    }
    let policy =
        BundlePolicy::Identity { identity: edge_fuzz::KEYLESS_ID.into(), issuer: edge_fuzz::KEYLESS_ISSUER.into() };
    let artifact = BundleArtifact::Digest(Sha256Digest::of(edge_fuzz::CONDA_ARTIFACT));
    let _ = verify_sigstore_bundle(data, &policy, Some(edge_fuzz::PUBLIC_GOOD_ROOT), &artifact);
});
