//! The runner's identity: the Ed25519 key that signs checkpoints of its
//! evidence log (origin = `runner.name`): loaded, or created on first start.
//! What it signs is in `pipeline/seal.rs`.

use std::path::Path;

use anyhow::{Context, Result};
use edge_core::note::NoteSigner;

use crate::config::StoreView;

/// Load the identity key, creating it (mode 0600) on first start.
pub fn load_identity(store: &StoreView) -> Result<NoteSigner> {
    if !store.identity_key.exists() {
        create_identity(&store.identity_key)?;
    }
    read_identity(store)
}

/// The identity key for a command that only checks the store (`evidence
/// check`, `evidence show --run`, the runner's keys for a report): as
/// [`load_identity`], but a missing key is an error, never created — a
/// new key would name no checkpoint of this log (and the runner would
/// then refuse it as a replaced key).
///
/// # Errors
/// If the key file is missing or unreadable.
pub fn read_identity(store: &StoreView) -> Result<NoteSigner> {
    let path = &store.identity_key;
    if !path.exists() {
        anyhow::bail!(
            "the identity key {} does not exist: this command does not create one (the runner does, at its first \
             start); check `identity_key` in the config, or restore the key from the backup",
            path.display()
        );
    }
    let key = crate::keys::load_signing_key(path).with_context(|| format!("identity key {}", path.display()))?;
    key.note_signer(&store.name).map_err(|e| anyhow::anyhow!("runner.name cannot name a checkpoint key: {e}"))
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
