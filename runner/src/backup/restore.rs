//! `edge-runner restore`: check a backup, then put it back.
//!
//! [`check`] writes nothing: every file against the manifest, the identity
//! key against the manifest (and against keys the operator pinned), the
//! store as the runner verifies it at start, and its head against the
//! manifest. [`restore`] then writes, and only into places that hold
//! nothing yet: the state directory the config names (absent or empty), the
//! identity key (absent, or the same key), and with `--home` the config
//! files (none may exist). The restored store is verified again before it
//! is reported restored. Files the config named outside its directory are
//! never written: they are listed for the operator.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use edge_core::note::NoteVerifier;
use edge_core::signature::CapsuleSigningKey;
use edge_core::text::Untrusted as U;

use crate::backup::manifest::{self, FileEntry, Kind, Manifest};
use crate::backup::verify;
use crate::config::RunnerConfig;

/// Where to restore.
#[derive(Debug, Clone)]
pub enum Target {
    /// A runner config already in place: its state directory and identity
    /// key path receive the backup.
    Config(PathBuf),
    /// A new runner home: the backup's config files are written into it
    /// first, then as [`Target::Config`] with its config file.
    Home(PathBuf),
}

/// A backup that passed every check.
#[derive(Debug)]
pub struct Checked {
    pub dir: PathBuf,
    pub manifest: Manifest,
    /// The runner's public key, from the backup's identity key.
    pub identity: NoteVerifier,
}

/// What was restored.
#[derive(Debug)]
pub struct Restored {
    pub config: PathBuf,
    pub state_dir: PathBuf,
    pub identity_key: PathBuf,
    /// Files written into the state directory.
    pub state_files: usize,
    /// Config files written into the home (`--home`).
    pub config_files: usize,
    /// Files the config named outside its directory: not written.
    pub external: Vec<FileEntry>,
}

/// Check the backup in `from` without writing anything. `pinned`: runner
/// keys the operator trusts (from `edge-runner evidence runner-key`, kept
/// out of band); when given, the backup's key must be one of them.
///
/// # Errors
/// Naming the first check that fails: the backup must not be restored.
pub fn check(from: &Path, pinned: &[NoteVerifier]) -> Result<Checked> {
    let m = manifest::read(from)?;
    manifest::check_files(from, &m)?;
    let pem = zeroize::Zeroizing::new(
        std::fs::read_to_string(from.join(manifest::IDENTITY)).context("cannot read the backup's identity key")?,
    );
    let key = CapsuleSigningKey::from_pkcs8_pem(&pem).context("the backup's identity.key is not an Ed25519 key")?;
    let signer = key
        .note_signer(&m.runner.name)
        .map_err(|e| anyhow::anyhow!("the manifest's runner name cannot name a key: {e}"))?;
    let identity = signer.verifier().clone();
    if identity.to_vkey() != m.runner.key {
        bail!(
            "the backup's identity.key ({}) is not the key its manifest names ({}): the backup was altered",
            identity.to_vkey(),
            U(&m.runner.key)
        );
    }
    if !pinned.is_empty() && !pinned.iter().any(|k| k.to_vkey() == m.runner.key) {
        bail!(
            "the backup is of runner key {}, which is not one of the keys you pinned: it is another runner's \
             backup, or the runner's key was replaced",
            U(&m.runner.key)
        );
    }
    let v = verify::store(&from.join(manifest::STORE_DIR), &identity)
        .context("the backup's evidence store failed verification")?;
    if v.head != m.store {
        bail!(
            "the backup's store ({} records, root {}) is not the store its manifest names ({} records, root {}): \
             the backup was altered",
            v.head.records,
            v.head.root,
            m.store.records,
            U(&m.store.root)
        );
    }
    Ok(Checked { dir: from.to_path_buf(), manifest: m, identity })
}

/// Restore a checked backup into `target`.
///
/// # Errors
/// If a destination already holds something, the config does not fit the
/// backup (another runner name), or a write fails; the message says what
/// was written by then and what to do.
pub fn restore(c: &Checked, target: &Target) -> Result<Restored> {
    let m = &c.manifest;
    let (config_path, config_files) = match target {
        Target::Config(p) => (p.clone(), 0),
        Target::Home(home) => {
            let n = write_config(c, home)?;
            let name = m.source.config.file_name().context("the manifest names no config file")?;
            (home.join(name), n)
        }
    };
    let config = RunnerConfig::load(&config_path).map_err(|e| match target {
        Target::Home(home) => e.context(format!(
            "the config files were restored into {}, but the config does not load: fix it (mounts are not in a \
             backup: create them or point them at the systems), then run `edge-runner restore --from {} --config {}`",
            home.display(),
            c.dir.display(),
            config_path.display()
        )),
        Target::Config(_) => e,
    })?;
    if config.name != m.runner.name {
        bail!(
            "{} names runner `{}` but the backup is of `{}`: its checkpoints are signed under that name. Set \
             `name = \"{}\"` under [runner] and restore again",
            config_path.display(),
            U(&config.name),
            U(&m.runner.name),
            U(&m.runner.name)
        );
    }
    must_be_empty(&config.state_dir)?;
    let backup_key = c.dir.join(manifest::IDENTITY);
    let key_in_place = match std::fs::read(&config.identity_key) {
        Ok(bytes) if bytes == std::fs::read(&backup_key)? => true,
        Ok(_) => bail!(
            "{} holds another identity key than the backup's: the restored log's checkpoints are signed by the \
             backup's. Move that file away (keep it if it signed anything), then restore again",
            config.identity_key.display()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", config.identity_key.display())),
    };

    let written = || format!("restoring into {} failed: remove it and restore again", config.state_dir.display());
    let mut state_files = 0;
    for f in m.files.iter().filter(|f| matches!(f.kind, Kind::Store | Kind::State)) {
        let rel = manifest::below(f)?;
        let dest = match f.kind {
            Kind::Store => config.state_dir.join("evidence").join(rel),
            _ => config.state_dir.join(rel),
        };
        put(&c.dir.join(&f.path), &dest, f).with_context(written)?;
        state_files += 1;
    }
    if !key_in_place {
        let f = m.of(Kind::Identity).next().context("the manifest lists no identity key")?;
        put(&backup_key, &config.identity_key, f)?;
    }
    sync_dirs(&config.state_dir).with_context(written)?;
    let v = verify::store(&config.state_dir.join("evidence"), &c.identity)
        .context("the restored store failed verification")
        .with_context(written)?;
    if v.head != m.store {
        bail!(
            "the restored store is not the backup's ({} records, not {}): {}",
            v.head.records,
            m.store.records,
            written()
        );
    }
    Ok(Restored {
        config: config_path,
        state_dir: config.state_dir.clone(),
        identity_key: config.identity_key.clone(),
        state_files,
        config_files,
        external: m.of(Kind::External).cloned().collect(),
    })
}

/// Write the backup's config files into `home`; none may exist there yet
/// (all are checked before the first is written).
fn write_config(c: &Checked, home: &Path) -> Result<usize> {
    let entries: Vec<(&FileEntry, PathBuf)> =
        c.manifest.of(Kind::Config).map(|f| Ok((f, home.join(manifest::below(f)?)))).collect::<Result<_>>()?;
    if let Some((_, p)) = entries.iter().find(|(_, p)| std::fs::symlink_metadata(p).is_ok()) {
        bail!(
            "{} already exists: `restore --home` writes a new home and never overwrites; choose an empty directory, \
             or put the config in place yourself and use `--config`",
            p.display()
        );
    }
    for (f, dest) in &entries {
        put(&c.dir.join(&f.path), dest, f)?;
    }
    Ok(entries.len())
}

/// Copy one backup file to `dest` (new), check it against its entry and
/// give it its recorded mode.
fn put(src: &Path, dest: &Path, f: &FileEntry) -> Result<()> {
    let (digest, size, _) = crate::backup::copy_file(src, dest, false)?
        .with_context(|| format!("{} disappeared from the backup", src.display()))?;
    if digest != f.sha256 || size != f.size {
        bail!("{} changed while it was restored (sha256 {digest}); the backup is being written to", src.display());
    }
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(dest, std::fs::Permissions::from_mode(manifest::restored_mode(f)))
        .with_context(|| format!("cannot set the mode of {}", dest.display()))
}

/// A destination state directory must hold nothing yet.
fn must_be_empty(dir: &Path) -> Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", dir.display())),
    };
    let names: Vec<String> =
        entries.take(6).filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into()).collect();
    if !names.is_empty() {
        bail!(
            "the state directory {} is not empty ({}{}): a restore never merges into a runner's state. Move it \
             away (if `init` made it, it holds only a new identity key), then restore again",
            dir.display(),
            names.iter().take(5).map(|n| U(n).to_string()).collect::<Vec<_>>().join(", "),
            if names.len() > 5 { ", …" } else { "" }
        );
    }
    Ok(())
}

/// fsync every directory under `root`, and `root`'s parent.
fn sync_dirs(root: &Path) -> Result<()> {
    crate::backup::sync_tree(root)?;
    match root.parent() {
        Some(parent) => Ok(crate::staging::sync_dir(parent)?),
        None => Ok(()),
    }
}
