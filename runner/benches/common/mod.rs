//! Shared by the benchmarks: a runner home holding the diagnostic capsule.

use std::path::Path;

/// In `home`: a `certs` directory with two sample certificates and
/// `agent.pub`; returns the cert-expiry capsule, packed and signed by the
/// library with that agent key, and its component bytes.
pub fn diagnostic_capsule(home: &Path) -> anyhow::Result<(Vec<u8>, Vec<u8>)> {
    let root = Path::new(test_programs::ROOT);
    let wasm = std::fs::read(test_programs::CERT_EXPIRY)?;
    std::fs::create_dir_all(home.join("certs"))?;
    for f in ["legacy-billing.pem", "intranet.crt"] {
        std::fs::copy(root.join("examples/sample/certs").join(f), home.join("certs").join(f))?;
    }
    let key = edge_core::signature::CapsuleSigningKey::generate();
    std::fs::write(home.join("agent.pub"), key.public_key_pem())?;
    let manifest_text = std::fs::read_to_string(root.join("examples/capsules/cert-expiry/capsule.toml"))?;
    let manifest = edge_core::manifest::Manifest::from_authoring_toml(
        &manifest_text,
        edge_core::manifest::ComponentRef { sha256: edge_core::Sha256Digest::of(&wasm), size: wasm.len() as u64 },
    )?;
    let file = edge_core::container::CapsuleFile::new(manifest, wasm.clone())?;
    Ok((file.clone().with_bundle(key.sign_capsule(&file)).to_bytes(), wasm))
}
