//! The runner's identity: the Ed25519 key that signs checkpoints of its
//! evidence log (origin = `runner.name`): loaded, or created on first start.
//! What it signs is in `pipeline/seal.rs`.

use std::path::Path;

use anyhow::{Context, Result};
use edge_core::note::NoteSigner;

use crate::config::RunnerConfig;

/// Load the identity key, creating it (mode 0600) on first start.
pub fn load_identity(config: &RunnerConfig) -> Result<NoteSigner> {
    let path = &config.identity_key;
    if !path.exists() {
        create_identity(path)?;
    }
    let key = crate::keys::load_signing_key(path).with_context(|| format!("identity key {}", path.display()))?;
    key.note_signer(&config.name).map_err(|e| anyhow::anyhow!("runner.name cannot name a checkpoint key: {e}"))
}

/// Create a new identity key file (mode 0600).
///
/// # Errors
/// If it exists or cannot be written.
pub fn create_identity(path: &Path) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let key = edge_core::signature::CapsuleSigningKey::generate();
    crate::keys::write_secret(path, key.to_pkcs8_pem().as_bytes())
        .with_context(|| format!("cannot create identity key {}", path.display()))
}
