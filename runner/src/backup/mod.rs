//! `edge-runner backup`: a consistent copy of a runner's evidence store and
//! state, taken while it serves and verified after writing;
//! `edge-runner restore` ([`restore`]) puts one back.
//!
//! ```text
//! DIR/                                   0700, every file 0600 (a backup is a secret)
//!   manifest.json                        every file below with SHA-256, size, original mode;
//!                                        the store's head; what was not copied and why
//!   identity.key                         the runner's identity key
//!   state/evidence/evidence.db           the store: one consistent snapshot (VACUUM INTO)
//!                                        plus a checkpoint of its head signed at backup time
//!   state/evidence/latest-checkpoint     that checkpoint (as the runner keeps it)
//!   state/proposals/, previews/, receipts/, console/, …   the rest of the state directory
//!   config/runner.toml, config/<files it names, at their paths relative to it>
//!   config/external/<absolute path>     files it names outside its directory
//! ```
//!
//! How the copy is made and checked, in order:
//!
//! 1. The newest checkpoint the live runner kept (`latest-checkpoint`) is
//!    read first.
//! 2. The store is copied with SQLite's `VACUUM INTO` on a read-only
//!    connection: one read transaction, so the copy is exactly the log at
//!    one instant (a prefix of what the runner appends meanwhile), and the
//!    serving runner's writer never waits (WAL: readers do not block it).
//! 3. The copy is verified as the runner verifies its store at start:
//!    schema version, every record's canonical form and chain link, every
//!    artifact's digest, and the runner's signed checkpoints (its newest
//!    row, and the live `latest-checkpoint` read in 1, which the copy must
//!    cover with the same Merkle root). The copy's last record must be the
//!    live log's record at that position (same SHA-256).
//! 4. A checkpoint of the copy's head is signed with the identity key and
//!    kept in the copy, so a backup cut short is refused at restore like a
//!    store cut short at start. The copy is checked again from disk: SQLite's
//!    `quick_check` of the whole file, the same records (count and last
//!    hash), and the signed history with the new checkpoint.
//! 5. The rest of the state directory, the identity key and the operator's
//!    files are copied (the manifest lists what is left out, and why), the
//!    manifest is written, and every file is read back against it.
//!
//! Any mismatch fails the backup with the file and the check that failed.

pub mod manifest;
pub mod restore;
pub mod verify;

use std::io::{Read as _, Write as _};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use edge_core::Sha256Digest;
use edge_core::note::{Checkpoint, NoteSigner};
use rusqlite::Connection;
use sha2::Digest as _;

use crate::config::RunnerConfig;
use crate::store::trust::LATEST_CHECKPOINT_FILE;
use manifest::{FileEntry, Kind, Manifest, Skipped};

/// A backup, written and verified.
#[derive(Debug)]
pub struct Done {
    pub dir: PathBuf,
    pub manifest: Manifest,
    /// SHA-256 of `manifest.json` (worth writing down with the backup).
    pub manifest_sha256: Sha256Digest,
    pub timings: Timings,
}

/// Where the time went.
#[derive(Debug, Clone, Copy, Default)]
pub struct Timings {
    /// `VACUUM INTO`: the only part that reads the live store.
    pub snapshot: Duration,
    /// Verifying the copy, signing its head and checking it again.
    pub verify: Duration,
    /// The other files, the manifest, and reading everything back.
    pub files: Duration,
    pub total: Duration,
}

/// Back up the runner configured at `config_path` into `out` (a new or
/// empty directory). The runner may be serving.
///
/// # Errors
/// If anything cannot be read or written, or any check of the copy fails;
/// the message names the file and the check. `out` is left as it was when
/// the error came (delete it before trying again).
pub fn backup(config_path: &Path, out: &Path) -> Result<Done> {
    let t0 = Instant::now();
    let config = RunnerConfig::load(config_path)?;
    let config_path = std::path::absolute(config_path)?;
    let live = std::path::absolute(config.state_dir.join("evidence"))?;
    let live_db = live.join("evidence.db");
    if !live_db.is_file() {
        bail!(
            "there is no evidence store at {}: nothing to back up (is `state_dir` in {} right?)",
            live_db.display(),
            config_path.display()
        );
    }
    // Never created here: `backup` does not make a runner.
    let key = crate::keys::load_signing_key(&config.identity_key)
        .with_context(|| format!("identity key {}", config.identity_key.display()))?;
    let signer =
        key.note_signer(&config.name).map_err(|e| anyhow::anyhow!("runner.name cannot name a checkpoint key: {e}"))?;
    let identity = signer.verifier().clone();
    let out = prepare_out(out, &config)?;
    let mut files: Vec<FileEntry> = Vec::new();
    let mut not_copied: Vec<Skipped> = Vec::new();

    // 1-2: what the live runner signed, then the snapshot.
    let kept_before = match std::fs::read_to_string(live.join(LATEST_CHECKPOINT_FILE)) {
        Ok(t) => Some(format!("{}\n", t.trim_end_matches('\n'))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => {
            return Err(e).with_context(|| format!("cannot read {}", live.join(LATEST_CHECKPOINT_FILE).display()));
        }
    };
    let store_dir = out.join(manifest::STORE_DIR);
    private_dirs(&store_dir)?;
    let copy_db = store_dir.join("evidence.db");
    let t_snap = Instant::now();
    let live_conn = snapshot(&live, &copy_db)?;
    let snapshot_time = t_snap.elapsed();

    // 3: the copy, as the runner checks its store at start, with the live
    // runner's latest-checkpoint beside it (read before the snapshot, so
    // the copy must cover it).
    let t_verify = Instant::now();
    match &kept_before {
        Some(kept) => crate::staging::write_durably(&store_dir.join(LATEST_CHECKPOINT_FILE), kept.as_bytes())?,
        None => crate::store::trust::publish_now(&store_dir)?,
    }
    let first = verify::store(&store_dir, &identity)
        .context("the backup's copy of the store failed verification (against the live runner's latest-checkpoint)")?;
    same_as_live(&live_conn, &first.head)?;
    drop(live_conn);

    // 4: sign the copy's head and keep it, as a runner does at close.
    if first.head.records > 0 {
        seal(&copy_db, &signer, &config.name, &first)?;
    }
    crate::store::trust::publish_now(&store_dir)?;
    sync_file(&copy_db)?;
    crate::staging::sync_dir(&store_dir)?;
    let verified = verify::resealed(&store_dir, first, &identity)
        .context("the backup's store failed verification after its head was signed")?;
    let verify_time = t_verify.elapsed();

    // 5: the rest.
    let t_files = Instant::now();
    for name in ["evidence.db", LATEST_CHECKPOINT_FILE] {
        let path = store_dir.join(name);
        if path.exists() {
            let (sha256, size) = manifest::digest_file(&path)?;
            files.push(FileEntry {
                path: format!("{}/{name}", manifest::STORE_DIR),
                kind: Kind::Store,
                sha256,
                size,
                mode: 0o600,
                source: live.join(name),
            });
        }
    }
    let identity_entry = copy_file(&config.identity_key, &out.join(manifest::IDENTITY), true)?
        .with_context(|| format!("the identity key {} disappeared", config.identity_key.display()))?;
    files.push(entry(
        manifest::IDENTITY.into(),
        Kind::Identity,
        identity_entry,
        &std::path::absolute(&config.identity_key)?,
    ));
    copy_state(&config, &out, &mut files, &mut not_copied)?;
    copy_config(&config_path, &config, &out, &mut files, &mut not_copied)?;
    not_copied.extend(left_out(&config));
    let warnings = warnings(&verified, &files);
    let m = Manifest {
        schema: manifest::MANIFEST_SCHEMA.into(),
        created: jiff::Timestamp::now().to_string(),
        runner: manifest::RunnerInfo {
            name: config.name.clone(),
            key: identity.to_vkey(),
            version: env!("CARGO_PKG_VERSION").into(),
        },
        store: verified.head.clone(),
        source: manifest::Source {
            config: config_path.clone(),
            state_dir: std::path::absolute(&config.state_dir)?,
            identity_key: std::path::absolute(&config.identity_key)?,
        },
        files,
        not_copied,
        warnings,
    };
    let mut text = serde_json::to_vec_pretty(&m)?;
    text.push(b'\n');
    crate::staging::write_durably(&out.join(manifest::MANIFEST_FILE), &text)?;
    sync_tree(&out)?;
    // Read everything back against the manifest as written.
    let read_back = manifest::read(&out)?;
    manifest::check_files(&out, &read_back).context("the backup does not match its manifest after writing")?;
    if read_back.store != m.store || read_back.files != m.files {
        bail!("{} does not read back as written", out.join(manifest::MANIFEST_FILE).display());
    }
    let files_time = t_files.elapsed();
    Ok(Done {
        manifest_sha256: Sha256Digest::of(&text),
        dir: out,
        manifest: m,
        timings: Timings { snapshot: snapshot_time, verify: verify_time, files: files_time, total: t0.elapsed() },
    })
}

/// A new or empty directory for the backup, mode 0700, outside the state
/// directory (a backup inside it would be copied into the next one).
fn prepare_out(out: &Path, config: &RunnerConfig) -> Result<PathBuf> {
    let out = std::path::absolute(out)?;
    let state = std::fs::canonicalize(&config.state_dir)
        .with_context(|| format!("cannot read the state directory {}", config.state_dir.display()))?;
    let inside =
        |p: &Path| p.starts_with(&state) || std::path::absolute(&config.state_dir).is_ok_and(|s| p.starts_with(s));
    let refuse = |p: &Path| {
        anyhow::anyhow!(
            "{} is inside the runner's state directory {}: put backups elsewhere (ideally on another disk)",
            p.display(),
            state.display()
        )
    };
    if inside(&out) {
        return Err(refuse(&out));
    }
    match std::fs::symlink_metadata(&out) {
        Ok(m) if m.is_dir() => {
            if std::fs::read_dir(&out)?.next().is_some() {
                bail!("{} is not empty: a backup goes into a new directory; choose another --out", out.display());
            }
        }
        Ok(_) => bail!("{} exists and is not a directory; choose another --out", out.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&out)
                .with_context(|| format!("cannot create {}", out.display()))?;
        }
        Err(e) => return Err(e).with_context(|| format!("cannot use {}", out.display())),
    }
    // Through symlinks too (checked now that the directory exists).
    let real = std::fs::canonicalize(&out)?;
    if inside(&real) {
        return Err(refuse(&real));
    }
    std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o700))?;
    Ok(real)
}

/// `VACUUM INTO` from a read-only connection to the live store: a
/// consistent copy of one instant. Returns the connection (for the
/// comparison with the live head).
fn snapshot(live: &Path, dest: &Path) -> Result<Connection> {
    let live_db = live.join("evidence.db");
    crate::store::schema::refuse_newer(&live_db)?;
    let conn = crate::store::log::read_only(live)?;
    conn.busy_timeout(Duration::from_secs(30))?;
    let dest_text = dest
        .to_str()
        .with_context(|| format!("the backup path {} is not UTF-8; choose another --out", dest.display()))?;
    conn.execute("VACUUM INTO ?1", [dest_text])
        .with_context(|| format!("cannot copy the evidence store {} to {}", live_db.display(), dest.display()))?;
    std::fs::set_permissions(dest, std::fs::Permissions::from_mode(0o600))?;
    Ok(conn)
}

/// The copy's last record must be the live log's record at that position.
fn same_as_live(live: &Connection, head: &manifest::StoreHead) -> Result<()> {
    let Some(want) = head.head else { return Ok(()) };
    let seq = head.records - 1;
    let body: String = live
        .query_row("SELECT body FROM records WHERE seq = ?1", [seq as i64], |r| r.get(0))
        .with_context(|| format!("the live store has no record {seq}, the copy's last"))?;
    let live_hash = Sha256Digest::of(body.as_bytes());
    if live_hash != want {
        bail!(
            "record {seq} of the backup's copy ({want}) is not the live log's record {seq} ({live_hash}): the copy \
             is not a prefix of the live log; nothing was kept"
        );
    }
    Ok(())
}

/// Sign a checkpoint of the copy's head and add it to the copy.
fn seal(copy_db: &Path, signer: &NoteSigner, origin: &str, v: &verify::Verified) -> Result<()> {
    let cp = Checkpoint { origin: origin.to_owned(), size: v.tree.size(), root: v.tree.root() };
    let note = signer.sign(&cp.text()).map_err(|e| anyhow::anyhow!("cannot sign the backup's checkpoint: {e}"))?;
    let db = Connection::open(copy_db)?;
    use base64::Engine as _;
    db.execute(
        "INSERT OR IGNORE INTO checkpoints (size, root, note, time) VALUES (?1, ?2, ?3, ?4)",
        rusqlite::params![
            cp.size as i64,
            base64::engine::general_purpose::STANDARD.encode(cp.root),
            note,
            jiff::Timestamp::now().to_string()
        ],
    )?;
    Ok(())
}

fn entry(path: String, kind: Kind, (sha256, size, mode): (Sha256Digest, u64, u32), source: &Path) -> FileEntry {
    FileEntry { path, kind, sha256, size, mode, source: source.to_path_buf() }
}

/// Directories (and their parents) with mode 0700.
fn private_dirs(dir: &Path) -> Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create {}", dir.display()))
}

fn sync_file(path: &Path) -> Result<()> {
    std::fs::File::open(path)?.sync_all().with_context(|| format!("cannot sync {}", path.display()))
}

/// fsync every directory under `root` (files are synced as they are written).
pub(crate) fn sync_tree(root: &Path) -> Result<()> {
    let mut pending = vec![root.to_path_buf()];
    while let Some(d) = pending.pop() {
        for e in std::fs::read_dir(&d)? {
            let e = e?;
            if e.file_type()?.is_dir() {
                pending.push(e.path());
            }
        }
        crate::staging::sync_dir(&d)?;
    }
    Ok(())
}

/// Copy a regular file to `dest` (created new, 0600, synced), hashing it on
/// the way. `follow`: follow a symlink at `src` (operator files), or refuse
/// it (the runner's state). None: `src` vanished (the runner removed it).
///
/// # Errors
/// If it cannot be read or written, or is not a regular file.
pub(crate) fn copy_file(src: &Path, dest: &Path, follow: bool) -> Result<Option<(Sha256Digest, u64, u32)>> {
    let flags = if follow { 0 } else { libc::O_NOFOLLOW };
    let mut from = match std::fs::OpenOptions::new().read(true).custom_flags(flags).open(src) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", src.display())),
    };
    let meta = from.metadata()?;
    if !meta.is_file() {
        bail!("{} is not a regular file", src.display());
    }
    if let Some(parent) = dest.parent() {
        private_dirs(parent)?;
    }
    let mut to = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(dest)
        .with_context(|| format!("cannot create {}", dest.display()))?;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = from.read(&mut buf).with_context(|| format!("cannot read {}", src.display()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        to.write_all(&buf[..n]).with_context(|| format!("cannot write {}", dest.display()))?;
        size += n as u64;
    }
    to.sync_all().with_context(|| format!("cannot sync {}", dest.display()))?;
    Ok(Some((Sha256Digest(h.finalize().into()), size, manifest::mode_of(&meta))))
}

/// Whether `p` is `dir` or inside it (both absolute).
fn within(p: &Path, dir: &Path) -> bool {
    p.starts_with(dir)
}

/// Everything under the state directory except the store (copied by the
/// snapshot), journals, the cache and staging copies, the identity key
/// (copied on its own), temporary files, symlinks and special files.
fn copy_state(config: &RunnerConfig, out: &Path, files: &mut Vec<FileEntry>, skipped: &mut Vec<Skipped>) -> Result<()> {
    let state = std::fs::canonicalize(&config.state_dir)?;
    let abs = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    let (cache, staging, identity) = (abs(&config.cache_dir), abs(&config.staging_dir), abs(&config.identity_key));
    let mut pending = vec![state.clone()];
    while let Some(dir) = pending.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", dir.display())),
        };
        for e in entries {
            let e = e?;
            let path = e.path();
            let rel = path.strip_prefix(&state).expect("under the state directory").to_path_buf();
            let ft = match e.file_type() {
                Ok(t) => t,
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
                Err(err) => return Err(err.into()),
            };
            let top = rel.components().next().map(|c| c.as_os_str().to_string_lossy().into_owned());
            if matches!(top.as_deref(), Some("evidence")) && dir == state {
                continue; // the snapshot
            }
            if matches!(top.as_deref(), Some("journals")) && dir == state {
                skipped.push(Skipped {
                    path: path.clone(),
                    why: "commit journals of runs in flight: restored later they would undo changes on live mounts; \
                          runs in flight at the snapshot are closed as interrupted at the restored runner's first \
                          start"
                        .into(),
                });
                continue;
            }
            if within(&path, &cache) || within(&path, &staging) || path == identity {
                continue; // listed by `left_out`, or copied on its own
            }
            let name = e.file_name().to_string_lossy().into_owned();
            if is_retired_key(&path, &identity) {
                skipped.push(Skipped {
                    path: path.clone(),
                    why: "an identity key retired by `keys rotate`: the runner never signs with it again, and a copy \
                          could sign a forged history from before its retirement; verifying needs only its public key \
                          (in the evidence)"
                        .into(),
                });
                continue;
            }
            if ft.is_dir() {
                pending.push(path);
            } else if ft.is_file() {
                if name.starts_with('.') && name.ends_with(".tmp") {
                    continue; // a file being written atomically: its final name is copied
                }
                let dest_rel = format!("{}/{}", manifest::STATE, rel.to_string_lossy());
                match copy_file(&path, &out.join(&dest_rel), false)? {
                    Some(d) => files.push(entry(dest_rel, Kind::State, d, &path)),
                    None => skipped.push(Skipped { path, why: "removed by the runner while the backup ran".into() }),
                }
            } else {
                let what = if ft.is_symlink() { "a symlink" } else { "not a regular file" };
                skipped.push(Skipped { path, why: format!("{what}: the runner never makes one in its state") });
            }
        }
    }
    Ok(())
}

/// The files the config names, by their keys (the identity key is copied
/// on its own; mounts, state, cache and staging are directories).
const CONFIG_PATHS: &[&[&str]] = &[
    &["signers", "*", "public_key"],
    &["sigstore", "trusted_root"],
    &["policy", "file"],
    &["policy", "graph"],
    &["approvers", "allowed_signers"],
    &["approvers", "roles"],
    &["approvers", "passkeys"],
    &["server", "cert"],
    &["server", "key"],
    &["server", "client_ca"],
    &["console", "cert"],
    &["console", "key"],
    &["notify", "webhooks", "*", "ca"],
];

/// Every string at `keys` in `v` (`*`: each element of an array).
fn strings_at<'a>(v: &'a toml::Value, keys: &[&str], out: &mut Vec<&'a str>) {
    match keys.split_first() {
        None => out.extend(v.as_str()),
        Some((&"*", rest)) => {
            for item in v.as_array().into_iter().flatten() {
                strings_at(item, rest, out);
            }
        }
        Some((k, rest)) => {
            if let Some(next) = v.get(k) {
                strings_at(next, rest, out);
            }
        }
    }
}

/// The config file and the files it names: under its directory they keep
/// their relative path (`config/…`), elsewhere their absolute one
/// (`config/external/…`).
fn copy_config(
    config_path: &Path,
    config: &RunnerConfig,
    out: &Path,
    files: &mut Vec<FileEntry>,
    skipped: &mut Vec<Skipped>,
) -> Result<()> {
    let base = std::path::absolute(config_path.parent().unwrap_or(Path::new(".")))?;
    let text = std::fs::read_to_string(config_path)?;
    let value: toml::Value =
        toml::from_str(&text).map_err(|e| anyhow::anyhow!(crate::config::toml_error(&e, &text)))?;
    let mut named: Vec<PathBuf> = vec![config_path.to_path_buf()];
    for keys in CONFIG_PATHS {
        let mut found = Vec::new();
        strings_at(&value, keys, &mut found);
        named.extend(found.into_iter().map(|s| base.join(s)));
    }
    // The default passkeys file beside allowed_signers, read when it exists.
    named.extend(config.governance.as_ref().and_then(|g| g.passkeys_file.clone()));
    let mut seen = std::collections::BTreeSet::new();
    for path in named {
        let path = std::path::absolute(&path)?;
        if !seen.insert(path.clone()) || !path.exists() {
            continue;
        }
        let (kind, dest_rel) = match path.strip_prefix(&base) {
            Ok(rel) => (Kind::Config, format!("{}/{}", manifest::CONFIG, rel.to_string_lossy())),
            Err(_) => (Kind::External, format!("{}{}", manifest::EXTERNAL, path.to_string_lossy())),
        };
        match copy_file(&path, &out.join(&dest_rel), true)? {
            Some(d) => files.push(entry(dest_rel, kind, d, &path)),
            None => skipped.push(Skipped { path, why: "removed while the backup ran".into() }),
        }
    }
    Ok(())
}

/// A retired identity key `keys rotate` kept beside the key
/// (`<identity_key>.retired-…`, see `crate::rotate`).
fn is_retired_key(path: &Path, identity: &Path) -> bool {
    let (Some(name), Some(key)) = (path.file_name(), identity.file_name()) else { return false };
    path.parent() == identity.parent()
        && name.to_string_lossy().starts_with(&format!("{}.retired-", key.to_string_lossy()))
}

/// What a backup never holds, and why (listed in the manifest).
fn left_out(config: &RunnerConfig) -> Vec<Skipped> {
    let mut v = vec![
        Skipped {
            path: config.state_dir.join("evidence/evidence.db-wal"),
            why: "the snapshot holds every record committed when it was taken (the WAL, the -shm index and the \
                  lock are the live runner's)"
                .into(),
        },
        Skipped { path: config.cache_dir.clone(), why: "compiled components: rebuilt from the store on demand".into() },
        Skipped {
            path: config.staging_dir.clone(),
            why: "staging copies of runs in flight: removed at every start".into(),
        },
    ];
    for (name, m) in &config.mounts {
        v.push(Skipped {
            path: m.path.clone(),
            why: format!("mount `{name}`: the systems the runner changes are backed up with those systems"),
        });
    }
    v
}

/// Proposals waiting in the copy whose documents were not copied, and runs
/// in flight at the snapshot.
fn warnings(v: &verify::Verified, files: &[FileEntry]) -> Vec<String> {
    let mut w = Vec::new();
    let have: std::collections::BTreeSet<&str> = files.iter().map(|f| f.path.as_str()).collect();
    for id in v.index.awaiting.keys() {
        if !have.contains(format!("{}/proposals/{id}.json", manifest::STATE).as_str()) {
            w.push(format!(
                "proposal {id} waits for approval in the backup's log but its document was not copied (it was settled \
                 while the backup ran): restored, it cannot be approved and expires; submit it again if needed"
            ));
        }
    }
    let open = v.index.unfinished_runs();
    if !open.is_empty() {
        w.push(format!(
            "{} run(s) were in progress at the snapshot ({}): a runner restored from this backup records them as \
             interrupted at its first start; their changes, if any, are on the mounts they named",
            open.len(),
            open.join(", ")
        ));
    }
    w
}

#[cfg(test)]
mod tests;
