//! `edge-runner keys rotate`: replace the runner's identity key (the key
//! that signs its checkpoints) so that a reviewer who trusts the old key can
//! follow the change.
//!
//! Offline, on purpose: the command takes the evidence store's lock, so it
//! is refused while `serve` (or any command holding the store) runs, and no
//! checkpoint can be signed by the retiring key after the rotation record.
//!
//! 1. Check the store as a start does: every record chained, every key
//!    rotation signed by both its keys, every kept checkpoint signed by the
//!    key in force at its size; the key file must hold the log's key.
//! 2. Generate the new key into `<identity_key>.next` (mode 0600).
//! 3. Append the `key-rotation` record: both keys sign a statement binding
//!    the runner, the two keys and the record's own position, `prev` and
//!    time (`edge_core::rotation`); the writer appends it exactly there or
//!    not at all.
//! 4. Sign a checkpoint covering it with the new key.
//! 5. Install the new key: the old key file is kept as
//!    `<identity_key>.retired-<time>-<key id>` (a hard link: the key file
//!    is never missing, and keeps mode 0600), then `<identity_key>.next` is
//!    renamed over `<identity_key>` and the directory synced.
//!
//! A crash between 3 and 5 leaves the log naming a key that only
//! `<identity_key>.next` holds: the next start (or `keys rotate` again)
//! finishes the installation ([`finish_interrupted`]). A crash before 3
//! leaves an unused `.next` file, which is deleted.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use edge_core::evidence::Event;
use edge_core::note::{NoteSigner, NoteVerifier};
use edge_core::rotation::{KeyHistory, Statement};
use edge_core::signature::CapsuleSigningKey;

use crate::cli::Exit;
use crate::config::RunnerConfig;
use crate::store::log::{EvidenceLog, Pinned};
use crate::store::trust;

/// A rotation done.
#[derive(Debug)]
pub struct Rotated {
    /// The `key-rotation` record.
    pub record: u64,
    pub old: NoteVerifier,
    pub new: NoteVerifier,
    /// Where the retired key file is kept.
    pub archived: PathBuf,
    /// The tree size of the first checkpoint the new key signed.
    pub checkpoint: u64,
}

/// What `keys rotate` did.
#[derive(Debug)]
pub enum Outcome {
    Rotated(Box<Rotated>),
    /// An earlier rotation had been interrupted after its record: only its
    /// key installation was finished (nothing new was rotated).
    Finished {
        archived: PathBuf,
        /// The installed key's fingerprint.
        key: String,
    },
}

/// `<identity_key>.next`: the new key while a rotation is under way.
pub fn pending_path(identity_key: &Path) -> PathBuf {
    let mut name = identity_key.file_name().unwrap_or_default().to_os_string();
    name.push(".next");
    identity_key.with_file_name(name)
}

/// `<identity_key>.retired-<UTC time>-<hex key id>`.
fn archive_path(identity_key: &Path, retired: &NoteVerifier) -> PathBuf {
    let vkey = retired.to_vkey();
    let id = vkey.split('+').nth(1).unwrap_or("key");
    let at = jiff::Timestamp::now().strftime("%Y%m%dT%H%M%SZ");
    let mut name = identity_key.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".retired-{at}-{id}"));
    identity_key.with_file_name(name)
}

fn signer_from(path: &Path, name: &str) -> Result<NoteSigner> {
    let key = crate::keys::load_signing_key(path).with_context(|| format!("identity key {}", path.display()))?;
    key.note_signer(name).map_err(|e| anyhow::anyhow!("runner.name cannot name a checkpoint key: {e}"))
}

fn sync_dir(path: &Path) -> Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("cannot sync directory {}", dir.display()))
}

/// Put the rotated-to key in place: keep the retiring key file (a hard
/// link, so `identity_key` is never missing), then rename the new key over
/// it. Idempotent after a crash part-way.
fn install(identity_key: &Path, pending: &Path, retiring: &NoteVerifier) -> Result<PathBuf> {
    let archived = archive_path(identity_key, retiring);
    std::fs::hard_link(identity_key, &archived).with_context(|| {
        format!("cannot keep the retiring key {} as {}", identity_key.display(), archived.display())
    })?;
    std::fs::rename(pending, identity_key)
        .with_context(|| format!("cannot install the new key {} as {}", pending.display(), identity_key.display()))?;
    sync_dir(identity_key)?;
    Ok(archived)
}

/// Finish a rotation a crash interrupted: when `<identity_key>.next` holds
/// the key the log's last rotation handed over to, and the key file the key
/// it retired, install it. An unused `.next` (the rotation stopped before
/// its record) is deleted. Called at every start, before the identity key
/// is loaded.
///
/// # Errors
/// A `.next` file that cannot be read, or a key file that is neither key of
/// the log's last rotation.
pub fn finish_interrupted(config: &RunnerConfig, log: &EvidenceLog) -> Result<Option<(PathBuf, NoteVerifier)>> {
    let pending = pending_path(&config.identity_key);
    if !pending.exists() {
        return Ok(None);
    }
    let next = signer_from(&pending, &config.name)?;
    let last = log.index().key_records.last().cloned();
    let Some(Event::KeyRotation { old_key, new_key, .. }) = last.as_ref().map(|r| &r.event) else {
        return discard(&pending);
    };
    if *new_key != next.verifier().to_vkey() {
        return discard(&pending);
    }
    let current = signer_from(&config.identity_key, &config.name)?;
    if current.verifier().to_vkey() != *old_key {
        bail!(
            "{} holds the key the log's last rotation handed over to, but the key file {} holds {}, which that \
             rotation did not retire: restore the key file from a backup, then start again",
            pending.display(),
            config.identity_key.display(),
            current.verifier().fingerprint()
        );
    }
    let archived = install(&config.identity_key, &pending, current.verifier())?;
    tracing::warn!(
        key = %next.verifier().fingerprint(),
        retired = %archived.display(),
        "finished an interrupted identity key rotation: the new key is installed"
    );
    Ok(Some((archived, next.verifier().clone())))
}

/// A `.next` key the log never named: the rotation stopped before its
/// record, so the key never signed anything. It is a secret nobody needs.
fn discard(pending: &Path) -> Result<Option<(PathBuf, NoteVerifier)>> {
    std::fs::remove_file(pending).with_context(|| format!("cannot remove the unused key {}", pending.display()))?;
    tracing::warn!(file = %pending.display(), "removed a new identity key an interrupted rotation never used");
    Ok(None)
}

/// Refuse while another process holds the store (a serving runner).
fn refuse_if_held(dir: &Path) -> Result<()> {
    if !dir.join("evidence.db").exists() {
        bail!(
            "there is no evidence store in {} yet: start the runner once (it records the identity key in use), \
             then rotate",
            dir.display()
        );
    }
    let lock = crate::store::log::lock_file(dir)?;
    if lock.try_lock().is_err() {
        bail!(
            "the evidence store {} is in use by a running runner (`edge-runner serve`, or another command): stop it \
             first (`systemctl stop edge-runner`), rotate, then start it again. A rotation is made offline so that \
             nothing is signed with the retiring key after the rotation record",
            dir.display()
        );
    }
    Ok(())
}

/// Rotate the identity key of the runner `config` describes (see the module docs).
///
/// # Errors
/// A running runner, a store that fails its checks, a key file that is not
/// the log's key, or I/O; nothing is rotated then.
pub fn rotate(config: &RunnerConfig) -> Result<Outcome> {
    let dir = config.state_dir.join("evidence");
    refuse_if_held(&dir)?;
    let log = EvidenceLog::open(&dir)?;
    if let Some((archived, key)) = finish_interrupted(config, &log)? {
        return Ok(Outcome::Finished { archived, key: key.fingerprint() });
    }
    if !config.identity_key.exists() {
        bail!("there is no identity key at {}: nothing to rotate", config.identity_key.display());
    }
    let old = signer_from(&config.identity_key, &config.name)?;
    let history = trust::key_history(&log, &config.name)?;
    trust::check_signed_history(&log, &history, old.verifier()).with_context(|| {
        format!("evidence store {} does not hold the history this runner signed; not rotating", dir.display())
    })?;
    match history.current() {
        None => bail!("the evidence log names no identity key yet: start the runner once, then rotate"),
        Some(k) if k != old.verifier().to_vkey() => bail!(
            "the key file {} holds {}, but the log's identity key is {}: rotate from the log's key (put it back \
             in place first)",
            config.identity_key.display(),
            old.verifier().fingerprint(),
            edge_core::rotation::fingerprint(k)
        ),
        Some(_) => {}
    }

    // 2. The new key, kept aside until the log has handed over to it.
    let pending = pending_path(&config.identity_key);
    let key = CapsuleSigningKey::generate();
    crate::keys::write_secret(&pending, key.to_pkcs8_pem().as_bytes())?;
    sync_dir(&pending)?;
    let new = key.note_signer(&config.name).map_err(|e| anyhow::anyhow!("{e}"))?;

    // 3. The record both keys sign, appended exactly where it was signed for.
    let (seq, prev) = log.tip()?;
    let time = jiff::Timestamp::now().to_string();
    let (old_key, new_key) = (old.verifier().to_vkey(), new.verifier().to_vkey());
    let statement = Statement { origin: &config.name, old_key: &old_key, new_key: &new_key, seq, prev, time: &time };
    let (old_signature, new_signature) = statement.sign(&old, &new).map_err(|e| anyhow::anyhow!("{e}"))?;
    let event = Event::KeyRotation { old_key: old_key.clone(), new_key: new_key.clone(), old_signature, new_signature };
    let record = log.append_pinned("runner", event, Pinned { seq, prev, time: time.clone() })?;
    // What was written is what a verifier will check.
    let mut check: KeyHistory = history.clone();
    check.push(&config.name, &record).map_err(|e| anyhow::anyhow!("the rotation just written does not verify: {e}"))?;

    // 4. The first checkpoint of the new key covers the rotation.
    let new = Arc::new(new);
    log.checkpoint(&new, &config.name)?;

    // 5. The new key in place, the old one kept.
    let archived = install(&config.identity_key, &pending, old.verifier())?;
    trust::publish_now(&dir)?;
    Ok(Outcome::Rotated(Box::new(Rotated {
        record: record.seq,
        old: old.verifier().clone(),
        new: new.verifier().clone(),
        archived,
        checkpoint: record.seq + 1,
    })))
}

/// `edge-runner keys rotate --config F`.
///
/// # Errors
/// As [`rotate`].
pub fn cli(config: &Path, out: &mut dyn Write) -> Result<Exit> {
    let config = RunnerConfig::load(config)?;
    match rotate(&config)? {
        Outcome::Finished { archived, key } => {
            writeln!(out, "finished an interrupted rotation: the identity key is now {key}")?;
            writeln!(out, "  retired key kept at {} (mode 0600)", archived.display())?;
        }
        Outcome::Rotated(r) => {
            writeln!(out, "rotated the identity key of runner {} at evidence record {}", config.name, r.record)?;
            writeln!(out, "  old  {}  {}", r.old.fingerprint(), r.old.to_vkey())?;
            writeln!(out, "  new  {}  {}", r.new.fingerprint(), r.new.to_vkey())?;
            writeln!(
                out,
                "  the rotation record is signed by both keys; checkpoints from tree size {} on by the new key",
                r.checkpoint
            )?;
            writeln!(out, "  retired key kept at {} (mode 0600)", r.archived.display())?;
            writeln!(out, "next:")?;
            writeln!(
                out,
                "  publish the new key where you published the old one (e.g. the change record), out of band:"
            )?;
            writeln!(out, "    edge-runner evidence runner-key --config <runner.toml>")?;
            writeln!(
                out,
                "  reviewers who pinned the old key verify across the rotation (edge-verify names it), then pin the new key"
            )?;
            writeln!(out, "  start the runner again (systemctl start edge-runner)")?;
        }
    }
    Ok(Exit::Ok)
}
