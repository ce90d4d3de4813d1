//! `manifest.json`: what a backup holds (every file with its SHA-256, size
//! and mode), the store's head at the snapshot, and what was not copied and
//! why. Read back strictly: a path that is absolute, climbs out (`..`) or
//! does not sit under the folder its kind says is refused before anything is
//! restored.

use std::io::Read as _;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use anyhow::{Context, Result, bail};
use edge_core::Sha256Digest;
use edge_core::text::Untrusted as U;
use serde::{Deserialize, Serialize};
use sha2::Digest as _;

use crate::store::trust::LATEST_CHECKPOINT_FILE;

/// The manifest's schema.
pub const MANIFEST_SCHEMA: &str = "https://edge-runner.dev/backup/v1";
/// The manifest's file name in a backup.
pub const MANIFEST_FILE: &str = "manifest.json";
/// Where the state directory's copy lives in a backup.
pub const STATE: &str = "state";
/// Where the store's copy lives in a backup.
pub const STORE_DIR: &str = "state/evidence";
/// The identity key's copy.
pub const IDENTITY: &str = "identity.key";
/// Operator files named by the config, at their paths relative to it.
pub const CONFIG: &str = "config";
/// Operator files named by the config outside its directory.
pub const EXTERNAL: &str = "config/external";

/// A backup's manifest.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub schema: String,
    /// When the snapshot was taken (RFC 3339, UTC).
    pub created: String,
    pub runner: RunnerInfo,
    pub store: StoreHead,
    /// Where the copies came from (absolute paths on the machine backed up).
    pub source: Source,
    pub files: Vec<FileEntry>,
    /// What was left out on purpose or could not be copied, and why.
    pub not_copied: Vec<Skipped>,
    /// What an operator should know before relying on this backup.
    pub warnings: Vec<String>,
}

/// Which runner the backup is of.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunnerInfo {
    /// `runner.name`: the checkpoint origin.
    pub name: String,
    /// Its public identity key (`edge-runner evidence runner-key`).
    pub key: String,
    /// The edge-runner version that made the backup.
    pub version: String,
}

/// The evidence store's copy, as verified after writing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreHead {
    /// `PRAGMA user_version` of the copy (`crate::store::schema`).
    pub schema_version: u32,
    /// Records in the copy: a prefix of the live log.
    pub records: u64,
    /// Artifacts in the copy.
    pub artifacts: u64,
    /// The Merkle root of those records (hex).
    pub root: String,
    /// The SHA-256 of the last record's canonical bytes (None: empty log).
    pub head: Option<Sha256Digest>,
    /// The checkpoint of the copy's head signed by the runner's identity key
    /// when the backup was made (None: empty log).
    pub checkpoint: Option<String>,
}

/// The paths the backup was taken from.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Source {
    pub config: PathBuf,
    pub state_dir: PathBuf,
    pub identity_key: PathBuf,
}

/// What a file in the backup is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// `state/evidence/`: the store's snapshot and its latest checkpoint.
    Store,
    /// Anything else the runner keeps under its state directory.
    State,
    /// The runner's identity key.
    Identity,
    /// The config file and the files it names, under its directory.
    Config,
    /// A file the config names outside its directory.
    External,
}

impl Kind {
    /// The folder of the backup files of this kind live under.
    fn folder(self) -> &'static str {
        match self {
            Self::Store => STORE_DIR,
            Self::State => STATE,
            Self::Identity => IDENTITY,
            Self::Config => CONFIG,
            Self::External => EXTERNAL,
        }
    }
}

/// One file in the backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    /// Relative to the backup directory.
    pub path: String,
    pub kind: Kind,
    pub sha256: Sha256Digest,
    pub size: u64,
    /// The original's permission bits, in octal (restored with them; the
    /// backup's own copy is 0600).
    #[serde(with = "octal")]
    pub mode: u32,
    /// Where it came from (absolute).
    pub source: PathBuf,
}

/// Modes as the octal text people read them in (`"0640"`).
mod octal {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(mode: &u32, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{mode:04o}"))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
        let text = String::deserialize(d)?;
        match u32::from_str_radix(&text, 8) {
            Ok(m) if m <= 0o7777 && text.len() == 4 => Ok(m),
            _ => Err(serde::de::Error::custom(format!("mode `{text}` is not four octal digits"))),
        }
    }
}

/// Something not in the backup, and why.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Skipped {
    pub path: PathBuf,
    pub why: String,
}

impl Manifest {
    /// The config file's entry (its path below `config/`).
    ///
    /// # Errors
    /// If the manifest lists none (a backup always holds it).
    pub fn config_file(&self) -> Result<&FileEntry> {
        let name = self.source.config.file_name().context("the manifest names no config file")?;
        let want = format!("{CONFIG}/{}", name.to_string_lossy());
        self.files
            .iter()
            .find(|f| f.kind == Kind::Config && f.path == want)
            .with_context(|| format!("the manifest lists no {want}"))
    }

    /// The files of one kind.
    pub fn of(&self, kind: Kind) -> impl Iterator<Item = &FileEntry> {
        self.files.iter().filter(move |f| f.kind == kind)
    }
}

/// A manifest path's part below its kind's folder, checked: relative,
/// plain names only (no `..`, no `.`, no root), under that folder.
///
/// # Errors
/// Naming the path and why it is refused.
pub fn below(entry: &FileEntry) -> Result<PathBuf> {
    let p = Path::new(&entry.path);
    let folder = entry.kind.folder();
    // Checked on the text: `Path::components` would quietly drop a `.`.
    let plain = entry.path.split('/').all(|s| !s.is_empty() && s != "." && s != "..")
        && p.components().all(|c| matches!(c, Component::Normal(_)));
    if !plain || entry.path.contains('\\') || entry.path.contains('\0') {
        bail!("the manifest lists `{}`: not a plain relative path; the backup was altered", U(&entry.path));
    }
    if entry.kind == Kind::Identity {
        return if entry.path == IDENTITY {
            Ok(PathBuf::new())
        } else {
            bail!("the manifest lists the identity key as `{}`; the backup was altered", U(&entry.path))
        };
    }
    let rest = p.strip_prefix(folder).map_err(|_| {
        anyhow::anyhow!("the manifest lists `{}` as {:?} but it is not under {folder}/", U(&entry.path), entry.kind)
    })?;
    // `config/external/…` is not a config file under the config directory.
    if entry.kind == Kind::Config && p.starts_with(EXTERNAL) {
        bail!("the manifest lists `{}` as a config file inside {EXTERNAL}/", U(&entry.path));
    }
    if rest.as_os_str().is_empty() {
        bail!("the manifest lists the folder `{}` as a file", U(&entry.path));
    }
    // The store is exactly its two files; a journal is never restored (at
    // start it would undo changes on live mounts).
    let store_file = rest == Path::new("evidence.db") || rest == Path::new(LATEST_CHECKPOINT_FILE);
    match entry.kind {
        Kind::Store if !store_file => bail!("the manifest lists `{}` as part of the store", U(&entry.path)),
        Kind::State if rest.starts_with("evidence") || rest.starts_with("journals") => {
            bail!("the manifest lists `{}`, which a backup never holds; the backup was altered", U(&entry.path))
        }
        _ => {}
    }
    Ok(rest.to_path_buf())
}

/// SHA-256 and size of a regular file, streamed; refuses symlinks.
///
/// # Errors
/// If it cannot be read or is not a regular file.
pub fn digest_file(path: &Path) -> Result<(Sha256Digest, u64)> {
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    if !f.metadata()?.is_file() {
        bail!("{} is not a regular file", path.display());
    }
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf).with_context(|| format!("cannot read {}", path.display()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        size += n as u64;
    }
    Ok((Sha256Digest(h.finalize().into()), size))
}

/// Read and parse `manifest.json` strictly, checking every path.
///
/// # Errors
/// Unreadable, not a manifest of this version, or a path that is refused.
pub fn read(dir: &Path) -> Result<Manifest> {
    let path = dir.join(MANIFEST_FILE);
    let bytes = std::fs::read(&path).with_context(|| {
        format!("cannot read {}: is {} a backup made by `edge-runner backup`?", path.display(), dir.display())
    })?;
    let m: Manifest =
        serde_json::from_slice(&bytes).with_context(|| format!("{} is not a backup manifest", path.display()))?;
    if m.schema != MANIFEST_SCHEMA {
        bail!(
            "{} is a backup manifest of schema `{}`; this edge-runner reads `{MANIFEST_SCHEMA}`: restore it with the \
             edge-runner version that made it ({})",
            path.display(),
            U(&m.schema),
            U(&m.runner.version)
        );
    }
    let mut seen = std::collections::BTreeSet::new();
    for f in &m.files {
        below(f)?;
        if !seen.insert(&f.path) {
            bail!("the manifest lists `{}` twice; the backup was altered", U(&f.path));
        }
    }
    if m.of(Kind::Identity).count() != 1 {
        bail!("the manifest must list exactly one identity key; the backup was altered");
    }
    Ok(m)
}

/// Check every file the manifest lists in `dir`: a regular file (never a
/// symlink), with the listed size and SHA-256.
///
/// # Errors
/// Naming the first file that is missing or differs.
pub fn check_files(dir: &Path, m: &Manifest) -> Result<()> {
    for f in &m.files {
        let (digest, size) =
            digest_file(&dir.join(&f.path)).with_context(|| format!("{} is listed in the manifest", U(&f.path)))?;
        if digest != f.sha256 || size != f.size {
            bail!(
                "{} in the backup is not the file the manifest lists (sha256 {digest}, {size} bytes; listed {}, {} \
                 bytes): the backup was altered or damaged; use another backup",
                U(&f.path),
                f.sha256,
                f.size
            );
        }
    }
    Ok(())
}

/// The mode a restored file gets: the original's permission bits, never
/// more than the owner's read and write for a secret.
pub fn restored_mode(f: &FileEntry) -> u32 {
    match f.kind {
        Kind::Identity => 0o600,
        _ => f.mode & 0o777,
    }
}

/// Permission bits of a file's metadata.
pub fn mode_of(meta: &std::fs::Metadata) -> u32 {
    meta.permissions().mode() & 0o7777
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str, kind: Kind) -> FileEntry {
        FileEntry {
            path: path.into(),
            kind,
            sha256: Sha256Digest::of(b""),
            size: 0,
            mode: 0o600,
            source: PathBuf::from("/x"),
        }
    }

    #[test]
    fn only_plain_paths_under_their_kinds_folder_are_accepted() {
        assert_eq!(below(&entry("state/proposals/p.json", Kind::State)).unwrap(), Path::new("proposals/p.json"));
        assert_eq!(below(&entry("state/evidence/evidence.db", Kind::Store)).unwrap(), Path::new("evidence.db"));
        assert_eq!(below(&entry("config/policy/policy.toml", Kind::Config)).unwrap(), Path::new("policy/policy.toml"));
        assert_eq!(below(&entry("identity.key", Kind::Identity)).unwrap(), Path::new(""));
        for (path, kind, why) in [
            ("state/../../etc/passwd", Kind::State, "not a plain relative path"),
            ("/etc/passwd", Kind::State, "not a plain relative path"),
            ("state/./x", Kind::State, "not a plain relative path"),
            ("config/runner.toml", Kind::State, "not under state/"),
            ("state/evidence/evidence.db", Kind::Config, "not under config/"),
            ("config/external/etc/x", Kind::Config, "inside config/external/"),
            ("state", Kind::State, "as a file"),
            ("keys/identity.key", Kind::Identity, "identity key as"),
            ("state/evidence/evil", Kind::Store, "as part of the store"),
            ("state/evidence/evidence.db", Kind::State, "never holds"),
            ("state/journals/r-1.json", Kind::State, "never holds"),
        ] {
            let e = format!("{:#}", below(&entry(path, kind)).unwrap_err());
            assert!(e.contains(why), "{path}: {e}");
        }
    }
}
