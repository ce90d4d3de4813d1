//! Key files. Private keys are written with mode 0600 (created that way, never
//! chmod'ed afterwards), never logged and never recorded in evidence.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use edge_core::signature::CapsuleSigningKey;

/// Paths of a generated key pair.
#[derive(Debug)]
pub struct KeyPairFiles {
    pub private: PathBuf,
    pub public: PathBuf,
    pub key_id: String,
}

/// Generate an Ed25519 key pair as `<out>.key` (PKCS#8 PEM, 0600) and
/// `<out>.pub` (SPKI PEM). Refuses to overwrite existing files.
///
/// # Errors
/// If either file exists or cannot be written.
pub fn generate(out: &Path) -> Result<KeyPairFiles> {
    let private = out.with_extension("key");
    let public = out.with_extension("pub");
    for p in [&private, &public] {
        if p.exists() {
            bail!("{} already exists; refusing to overwrite a key (choose another --out)", p.display());
        }
    }
    if let Some(dir) = private.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let key = CapsuleSigningKey::generate();
    write_secret(&private, key.to_pkcs8_pem().as_bytes())?;
    let mut f = OpenOptions::new().write(true).create_new(true).mode(0o644).open(&public)?;
    f.write_all(key.public_key_pem().as_bytes())?;
    f.sync_all()?;
    Ok(KeyPairFiles { private, public, key_id: key.key_id() })
}

/// Write a secret file: created new with mode 0600 (never chmod'ed
/// afterwards, so it is never readable by others, even briefly), synced.
///
/// # Errors
/// If the file exists or cannot be written.
pub fn write_secret(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {} (it must not exist yet)", path.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    Ok(())
}

/// Load a private signing key, refusing files others can read.
///
/// # Errors
/// If the file is group/world-accessible or not an Ed25519 PKCS#8 key.
pub fn load_signing_key(path: &Path) -> Result<CapsuleSigningKey> {
    let meta = std::fs::metadata(path).with_context(|| format!("cannot read key {}", path.display()))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        bail!(
            "private key {} has mode {mode:o}; it must not be readable by others (run `chmod 600 {}`)",
            path.display(),
            path.display()
        );
    }
    let pem = zeroize::Zeroizing::new(std::fs::read_to_string(path)?);
    Ok(CapsuleSigningKey::from_pkcs8_pem(&pem)?)
}
