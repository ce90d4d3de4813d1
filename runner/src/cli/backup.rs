//! `edge-runner backup` and `edge-runner restore` (`crate::backup`).

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;
use edge_core::note::NoteVerifier;
use edge_core::text::Untrusted as U;

use crate::backup::manifest::Kind;
use crate::backup::restore::{self, Target};
use crate::cli::Exit;

/// `edge-runner backup`.
#[derive(Debug, Args)]
pub struct BackupArgs {
    /// The runner's config (its state directory and identity key are backed up).
    #[arg(long)]
    pub config: PathBuf,
    /// A new (or empty) directory for the backup, outside the state directory.
    #[arg(short = 'o', long = "out")]
    pub out: PathBuf,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `edge-runner restore`.
#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("target").args(["config", "home", "check"]).required(true))]
pub struct RestoreArgs {
    /// The backup directory (made by `edge-runner backup`).
    #[arg(long)]
    pub from: PathBuf,
    /// Restore into the state directory and identity key path this config
    /// names (the state directory must be absent or empty).
    #[arg(long, conflicts_with_all = ["home", "check"])]
    pub config: Option<PathBuf>,
    /// Restore into a new runner home: the backup's config files first,
    /// then the state its config names.
    #[arg(long, conflicts_with = "check")]
    pub home: Option<PathBuf>,
    /// Only check the backup (every file, the identity key, the store as
    /// the runner verifies it at start); write nothing. Exit 0 if it holds,
    /// 3 if not.
    #[arg(long)]
    pub check: bool,
    /// File of runner keys you pinned (`edge-runner evidence runner-key`);
    /// the backup's key must be one of them.
    #[arg(long)]
    pub key: Vec<PathBuf>,
    /// The manifest's SHA-256 that `backup` printed (noted with your backup
    /// records): the config, policy and approver files are pinned only by
    /// the manifest, so this is what proves them unchanged.
    #[arg(long, value_name = "HEX")]
    pub manifest_sha256: Option<String>,
}

/// Run `backup`.
///
/// # Errors
/// If the backup cannot be made or fails its verification (nothing is
/// reported as backed up then).
pub fn backup(a: &BackupArgs, out: &mut dyn Write) -> Result<Exit> {
    let done = crate::backup::backup(&a.config, &a.out)?;
    let m = &done.manifest;
    let count = |k: Kind| m.of(k).count();
    if a.json {
        let v = serde_json::json!({
            "dir": done.dir,
            "manifest_sha256": done.manifest_sha256,
            "runner": m.runner,
            "store": m.store,
            "files": m.files.len(),
            "warnings": m.warnings,
            "timings_ms": {
                "snapshot": done.timings.snapshot.as_millis() as u64,
                "verify": done.timings.verify.as_millis() as u64,
                "files": done.timings.files.as_millis() as u64,
                "total": done.timings.total.as_millis() as u64,
            },
        });
        serde_json::to_writer_pretty(&mut *out, &v)?;
        writeln!(out)?;
        return Ok(Exit::Ok);
    }
    writeln!(out, "backup of {} in {} — verified", U(&m.runner.name), done.dir.display())?;
    writeln!(
        out,
        "  store      {} records (schema {}), {} artifacts; head {}",
        m.store.records,
        m.store.schema_version,
        m.store.artifacts,
        m.store.head.map_or_else(|| "none (empty log)".to_owned(), |h| h.to_string())
    )?;
    if m.store.checkpoint.is_some() {
        writeln!(out, "             its head is signed: a restore refuses a copy cut short")?;
    }
    writeln!(out, "  state      {} file(s) (proposals, previews, receipts, console, …)", count(Kind::State))?;
    writeln!(out, "  identity   identity.key — this backup holds the runner's private key: keep it like the key")?;
    writeln!(
        out,
        "  config     {} file(s) from the config's directory, {} from elsewhere (config/external/)",
        count(Kind::Config),
        count(Kind::External)
    )?;
    writeln!(
        out,
        "  left out   {} path(s), each with the reason, in manifest.json (`not_copied`)",
        m.not_copied.len()
    )?;
    writeln!(out, "  manifest   manifest.json {} (note it with your backup records)", done.manifest_sha256)?;
    let t = done.timings;
    writeln!(
        out,
        "  took       {:.2} s (snapshot {:.2} s, verification {:.2} s, files {:.2} s)",
        t.total.as_secs_f64(),
        t.snapshot.as_secs_f64(),
        t.verify.as_secs_f64(),
        t.files.as_secs_f64()
    )?;
    for w in &m.warnings {
        writeln!(out, "warning: {}", U(w))?;
    }
    writeln!(
        out,
        "check it later: edge-runner restore --from {} --check --manifest-sha256 {}",
        done.dir.display(),
        done.manifest_sha256.hex()
    )?;
    Ok(Exit::Ok)
}

/// The runner keys in `files` (one per line, as `evidence runner-key` prints).
fn pinned(files: &[PathBuf]) -> Result<Vec<NoteVerifier>> {
    let mut keys = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(f).with_context(|| format!("cannot read runner keys {}", f.display()))?;
        keys.extend(edge_evidence::parse_keys(&text).map_err(|e| anyhow::anyhow!("runner keys {}: {e}", f.display()))?);
    }
    Ok(keys)
}

/// Run `restore`: check, then (unless `--check`) write.
///
/// # Errors
/// If a destination is not empty or a write fails. A backup that fails
/// its checks is exit code 3, not an error.
pub fn restore(a: &RestoreArgs, out: &mut dyn Write) -> Result<Exit> {
    let keys = pinned(&a.key)?;
    if let Some(want) = &a.manifest_sha256 {
        let path = a.from.join(crate::backup::manifest::MANIFEST_FILE);
        let bytes = std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
        let have = edge_core::Sha256Digest::of(&bytes);
        if !have.hex().eq_ignore_ascii_case(want.trim().trim_start_matches("sha256:")) {
            writeln!(
                out,
                "REFUSED: {} has SHA-256 {have}, not the {} you noted: the backup was altered or is another one",
                path.display(),
                U(want)
            )?;
            writeln!(out, "nothing was written; use another backup")?;
            return Ok(Exit::Refused);
        }
    }
    let checked = match restore::check(&a.from, &keys) {
        Ok(c) => c,
        Err(e) => {
            writeln!(out, "REFUSED: the backup in {} does not hold: {e:#}", a.from.display())?;
            writeln!(out, "nothing was written; use another backup")?;
            return Ok(Exit::Refused);
        }
    };
    let m = &checked.manifest;
    writeln!(
        out,
        "backup of {} made {} by edge-runner {}: every file matches its manifest; {} records verified{}",
        U(&m.runner.name),
        U(&m.created),
        U(&m.runner.version),
        m.store.records,
        if m.store.checkpoint.is_some() { ", head signed" } else { "" }
    )?;
    writeln!(out, "  runner key {}", U(&m.runner.key))?;
    if a.key.is_empty() {
        writeln!(out, "  (pass --key with the runner key you pinned to check the backup is that runner's)")?;
    }
    if a.manifest_sha256.is_none() {
        writeln!(
            out,
            "  (pass --manifest-sha256 with the digest `backup` printed: the config, policy and approver files are \
             pinned only by the manifest)"
        )?;
    }
    for w in &m.warnings {
        writeln!(out, "warning: {}", U(w))?;
    }
    let target = match (&a.config, &a.home) {
        (Some(c), None) => Target::Config(c.clone()),
        (None, Some(h)) => Target::Home(h.clone()),
        _ => return Ok(Exit::Ok), // --check
    };
    let r = restore::restore(&checked, &target)?;
    if r.config_files > 0 {
        writeln!(out, "restored  {} config file(s) into {}", r.config_files, home_of(&r.config).display())?;
    }
    writeln!(out, "restored  {} file(s) into {}", r.state_files, r.state_dir.display())?;
    writeln!(out, "          identity key at {}", r.identity_key.display())?;
    writeln!(out, "verified  the restored store: {} records, as in the backup", m.store.records)?;
    for f in &r.external {
        writeln!(
            out,
            "not restored: {} (outside the config's directory; copy it from {} if this machine needs it)",
            f.source.display(),
            checked.dir.join(&f.path).display()
        )?;
    }
    writeln!(out, "next: edge-runner serve --config {}", r.config.display())?;
    writeln!(
        out,
        "      its first start verifies the log again, closes runs that were in flight as interrupted, and appends"
    )?;
    Ok(Exit::Ok)
}

fn home_of(config: &Path) -> &Path {
    config.parent().unwrap_or(Path::new("."))
}
