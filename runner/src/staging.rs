//! Staged apply, atomic commit and rollback on the host filesystem.
//!
//! Every operation on a live mount goes through a directory handle opened on
//! the mount root (cap-std), so paths resolve *beneath* the root even if
//! someone swaps a directory for a symlink while we work: a race can make an
//! operation fail, never reach outside the mount.
//!
//! * [`stage`] copies a writable mount into a runner-owned staging directory
//!   (mode 0700; symlinks copied as links, never followed; special files
//!   refused; bounded in size), checking each copy against the snapshot.
//!   `apply` runs against the copy.
//! * [`Journal::commit`] applies the checked diff to the live mount one file
//!   at a time, each by an atomic rename (or a no-clobber link for creates),
//!   after writing a durable journal. The original of every modified or
//!   deleted file is first copied, digest-checked and fsync'd into the
//!   runner's state directory — never into the mount, so `verify` and other
//!   processes see only the intended state. A crash at any instant leaves
//!   enough on disk for [`Journal::rollback`] to restore the original state.
//! * Only files the diff names are touched; rollback restores a file only if
//!   it still holds what this run wrote, so later changes by others survive.
//! * Permission bits: a modified file keeps its original bits; a created file
//!   gets the staged file's bits. Set-user-ID, set-group-ID and sticky bits
//!   are always cleared.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use cap_fs_ext::{FollowSymlinks, OpenOptionsFollowExt, OpenOptionsMaybeDirExt};
use cap_std::ambient_authority;
use cap_std::fs::Dir;
use edge_core::Sha256Digest;
use edge_core::paths::MountPath;
use edge_core::plan::{Action, CommitAllowed};
use edge_core::snapshot::{Node, Snapshot};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// Most entries a staged mount may hold.
pub const MAX_STAGED_FILES: usize = 100_000;
/// Largest total file content staged per writable mount.
pub const MAX_STAGE_BYTES: u64 = 256 << 20;
/// Permission bits ever written by the runner: no set-id or sticky bits.
const MODE_MASK: u32 = 0o777;

/// Open a mount root as a directory handle.
///
/// # Errors
/// If the root is missing or not a directory.
pub fn open_root(path: &Path) -> Result<Dir> {
    Dir::open_ambient_dir(path, ambient_authority()).with_context(|| format!("cannot open mount {}", path.display()))
}

fn open_nofollow(dir: &Dir, rel: &str) -> io::Result<File> {
    let mut o = cap_std::fs::OpenOptions::new();
    o.read(true).follow(FollowSymlinks::No);
    Ok(dir.open_with(rel, &o)?.into_std())
}

fn create_new_in(dir: &Dir, rel: &str) -> io::Result<File> {
    let mut o = cap_std::fs::OpenOptions::new();
    o.write(true).create_new(true).follow(FollowSymlinks::No);
    Ok(dir.open_with(rel, &o)?.into_std())
}

fn digest_of(mut r: impl Read) -> io::Result<Sha256Digest> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(Sha256Digest(h.finalize().into()))
}

/// Digest of the regular file `rel` beneath `dir`, or None if it does not
/// exist or is not a regular file. Never follows a symlink.
pub fn digest_in(dir: &Dir, rel: &str) -> io::Result<Option<Sha256Digest>> {
    match dir.symlink_metadata(rel) {
        Ok(m) if m.is_file() => {}
        Ok(_) => return Ok(None),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    }
    match open_nofollow(dir, rel) {
        Ok(f) => digest_of(f).map(Some),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// The bytes of the regular file `rel` beneath `dir` (at most `max`), or
/// None if it does not exist or is not a regular file. Never follows a
/// symlink.
///
/// # Errors
/// I/O errors, and a file larger than `max`.
pub fn read_in(dir: &Dir, rel: &str, max: u64) -> io::Result<Option<Vec<u8>>> {
    match dir.symlink_metadata(rel) {
        Ok(m) if m.is_file() => {}
        Ok(_) => return Ok(None),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    }
    let f = match open_nofollow(dir, rel) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    f.take(max + 1).read_to_end(&mut out)?;
    if out.len() as u64 > max {
        return Err(io::Error::other(format!("{rel} is larger than {max} bytes")));
    }
    Ok(Some(out))
}

/// Digest of a runner-owned file (in the state directory), None if absent.
fn digest_path(path: &Path) -> io::Result<Option<Sha256Digest>> {
    match OpenOptions::new().read(true).custom_flags(O_NOFOLLOW).open(path) {
        Ok(f) => digest_of(f).map(Some),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

const O_NOFOLLOW: i32 = libc::O_NOFOLLOW;

/// Why a tree could not be snapshotted. After `apply`, each names who is
/// responsible: a limit the capsule hit, something it made that no plan can
/// name, or something it made unreadable.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SnapshotError {
    #[error("more than {MAX_STAGED_FILES} entries; narrow the mount")]
    TooManyEntries,
    #[error("more than {0} bytes of files; narrow the mount")]
    TooManyBytes(u64),
    #[error(
        "file name {0:?} cannot be represented (not UTF-8, a control character, or too long); plans name only plain paths"
    )]
    Name(String),
    #[error("{0} is a special file (fifo, socket or device); mounts may hold only files, directories and symlinks")]
    Special(String),
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
}

impl SnapshotError {
    /// The reason code when the tree is a staged copy after `apply`.
    pub fn after_apply_reason(&self) -> &'static str {
        match self {
            Self::TooManyEntries | Self::TooManyBytes(_) => "apply.too_large",
            Self::Name(_) | Self::Special(_) => "apply.outside_plan",
            Self::Io { .. } => "apply.unreadable",
        }
    }
}

fn io_at(path: &str) -> impl FnOnce(io::Error) -> SnapshotError + '_ {
    move |source| SnapshotError::Io { path: if path.is_empty() { ".".into() } else { path.to_owned() }, source }
}

/// Snapshot a tree without following symlinks, refusing more than
/// [`MAX_STAGED_FILES`] entries or `max_bytes` of file content (checked from
/// metadata before anything is read).
///
/// # Errors
/// On I/O errors, special files, unsupported names, or a limit exceeded.
pub fn snapshot(root: &Path, max_bytes: u64) -> Result<Snapshot, SnapshotError> {
    let dir = open_root(root).map_err(|e| SnapshotError::Io {
        path: root.display().to_string(),
        source: io::Error::other(format!("{e:#}")),
    })?;
    let mut out = Snapshot::new();
    let mut bytes = 0u64;
    walk(&dir, "", &mut out, &mut bytes, max_bytes)?;
    Ok(out)
}

fn walk(dir: &Dir, rel: &str, out: &mut Snapshot, bytes: &mut u64, max_bytes: u64) -> Result<(), SnapshotError> {
    let listing = if rel.is_empty() { dir.entries() } else { dir.read_dir(rel) }.map_err(io_at(rel))?;
    let mut names = Vec::new();
    for e in listing {
        if out.len() + names.len() >= MAX_STAGED_FILES {
            return Err(SnapshotError::TooManyEntries);
        }
        let name = e.map_err(io_at(rel))?.file_name();
        names.push(name.into_string().map_err(|n| SnapshotError::Name(format!("{rel}/{}", n.to_string_lossy())))?);
    }
    names.sort();
    for name in names {
        let child = if rel.is_empty() { name } else { format!("{rel}/{name}") };
        let path = MountPath::new(&child).map_err(|_| SnapshotError::Name(child.clone()))?;
        let meta = dir.symlink_metadata(&child).map_err(io_at(&child))?;
        let ft = meta.file_type();
        if ft.is_dir() {
            out.insert(path, Node::Dir);
            walk(dir, &child, out, bytes, max_bytes)?;
        } else if ft.is_file() {
            *bytes = bytes.saturating_add(meta.len());
            if *bytes > max_bytes {
                return Err(SnapshotError::TooManyBytes(max_bytes));
            }
            let digest = digest_in(dir, &child)
                .map_err(io_at(&child))?
                .ok_or_else(|| SnapshotError::Io { path: child.clone(), source: io::ErrorKind::NotFound.into() })?;
            // Set-id and sticky bits are never carried (staging and commit clear them).
            let mode = cap_std::fs::PermissionsExt::mode(&meta.permissions()) & MODE_MASK;
            out.insert(path, Node::File { digest, size: meta.len(), mode });
        } else if ft.is_symlink() {
            let target = dir.read_link_contents(&child).map_err(io_at(&child))?;
            out.insert(path, Node::Symlink { target: target.to_string_lossy().into_owned() });
        } else {
            return Err(SnapshotError::Special(child));
        }
    }
    Ok(())
}

/// Copy `live` to `stage` (which must not exist) and return the snapshot of
/// what was copied. Each file copy is checked against the snapshot digest, so
/// a file swapped while copying refuses the staging rather than leaking in.
///
/// # Errors
/// On I/O errors, special files, a file changing while staged, or more than
/// `max_bytes` of file content.
pub fn stage(live: &Path, stage: &Path, max_bytes: u64) -> Result<Snapshot> {
    let mut builder = fs::DirBuilder::new();
    builder.mode(0o700).recursive(true);
    builder.create(stage.parent().unwrap_or(Path::new("/")))?;
    builder.recursive(false);
    builder.create(stage).with_context(|| format!("cannot create staging dir {}", stage.display()))?;
    let snap = snapshot(live, max_bytes).with_context(|| format!("cannot snapshot {}", live.display()))?;
    let src = open_root(live)?;
    for (rel, node) in &snap {
        let dst = stage.join(rel.as_str());
        match node {
            Node::Dir => builder.create(&dst)?,
            Node::File { digest, .. } => {
                let mut input = open_nofollow(&src, rel.as_str()).with_context(|| format!("cannot stage {rel}"))?;
                let meta = input.metadata()?;
                let mut out = OpenOptions::new().write(true).create_new(true).mode(0o600).open(&dst)?;
                let got = copy_hashing(&mut input, &mut out)?;
                if got != *digest {
                    bail!("{rel} changed while it was being staged; retry when the mount is quiet");
                }
                out.set_permissions(fs::Permissions::from_mode(meta.permissions().mode() & MODE_MASK))?;
                out.set_modified(meta.modified()?)?;
            }
            Node::Symlink { target } => std::os::unix::fs::symlink(target, &dst)?,
        }
    }
    // Snapshot the copy itself: the diff is computed against what the capsule saw.
    snapshot(stage, max_bytes).with_context(|| format!("cannot snapshot {}", stage.display()))
}

fn copy_hashing(input: &mut impl Read, out: &mut File) -> Result<Sha256Digest> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = input.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        out.write_all(&buf[..n])?;
    }
    out.sync_all()?;
    Ok(Sha256Digest(h.finalize().into()))
}

/// One step of a commit. Paths of live files are relative to the mount root.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Step {
    pub mount: String,
    pub path: MountPath,
    pub action: Action,
    pub before: Option<Sha256Digest>,
    pub after: Option<Sha256Digest>,
    /// New content, written beside the target (same directory, same
    /// filesystem) before the rename; relative to the mount root.
    pub temp: String,
    /// Copy of the original (modify/delete), in the runner's state directory.
    pub backup: PathBuf,
    /// Permission bits the committed file gets (restored with the original).
    pub mode: Option<u32>,
    /// Directories created for this step, relative to the mount root.
    pub created_dirs: Vec<String>,
}

/// The durable record of a commit in progress.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Journal {
    pub run: String,
    /// Mount name → live root.
    pub roots: BTreeMap<String, PathBuf>,
    /// Where the originals are kept until the run is finalized.
    pub backup_dir: PathBuf,
    pub steps: Vec<Step>,
}

/// Stable location of a run's journal.
pub fn journal_path(state_dir: &Path, run: &str) -> PathBuf {
    state_dir.join("journals").join(format!("{run}.json"))
}

fn parent_of(rel: &str) -> &str {
    rel.rsplit_once('/').map_or("", |(p, _)| p)
}

/// fsync the directory `rel` beneath `dir` (so renames in it are durable).
fn sync_in(dir: &Dir, rel: &str) -> io::Result<()> {
    let mut o = cap_std::fs::OpenOptions::new();
    o.read(true).maybe_dir(true).follow(FollowSymlinks::No);
    dir.open_with(if rel.is_empty() { "." } else { rel }, &o)?.into_std().sync_all()
}

impl Journal {
    /// Build the journal for a diff. `roots` maps mount names to live mount
    /// roots; originals will be kept under `backup_dir`.
    ///
    /// # Errors
    /// If a diff entry names a mount without a root.
    pub fn new(
        run: &str,
        allowed: &CommitAllowed,
        roots: &BTreeMap<String, PathBuf>,
        backup_dir: &Path,
    ) -> Result<Self> {
        // Only a diff that passed both checks can be journaled and committed.
        let diff = allowed.diff();
        let mut steps = Vec::with_capacity(diff.len());
        for (i, d) in diff.iter().enumerate() {
            if !roots.contains_key(&d.mount) {
                bail!("mount {} has no live root", d.mount);
            }
            let parent = parent_of(d.path.as_str());
            let temp_name = format!(".edge-runner.{run}.{i}.new");
            steps.push(Step {
                mount: d.mount.clone(),
                path: d.path.clone(),
                action: d.action,
                before: d.before,
                after: d.after,
                temp: if parent.is_empty() { temp_name } else { format!("{parent}/{temp_name}") },
                backup: backup_dir.join(format!("{i}.orig")),
                // Creates: the checked mode, in the journal before anything is
                // touched. Modify/delete: the original's, read at commit.
                mode: if d.action == Action::Create { d.mode.map(|m| m & MODE_MASK) } else { None },
                created_dirs: Vec::new(),
            });
        }
        Ok(Self { run: run.to_owned(), roots: roots.clone(), backup_dir: backup_dir.to_path_buf(), steps })
    }

    /// Write the journal durably (before any live file is touched).
    ///
    /// # Errors
    /// On I/O failure.
    pub fn persist(&self, path: &Path) -> Result<Vec<u8>> {
        let bytes = serde_json::to_vec_pretty(self)?;
        write_durably(path, &bytes)?;
        Ok(bytes)
    }

    fn open_roots(&self) -> Result<BTreeMap<String, Dir>> {
        self.roots.iter().map(|(name, p)| Ok((name.clone(), open_root(p)?))).collect()
    }

    /// Apply every step. On error the caller must call [`Journal::rollback`].
    /// `stage_root` maps mount names to staged copies (runner-owned).
    ///
    /// # Errors
    /// On any I/O failure, or when a live file no longer matches the plan.
    pub fn commit(&mut self, stage_root: &BTreeMap<String, PathBuf>, journal_file: &Path) -> Result<()> {
        let dirs = self.open_roots()?;
        let mut b = fs::DirBuilder::new();
        b.mode(0o700).recursive(true).create(&self.backup_dir)?;
        sync_dir(self.backup_dir.parent().unwrap_or(Path::new("/")))?;
        for i in 0..self.steps.len() {
            let (mount, rel, action) =
                (self.steps[i].mount.clone(), self.steps[i].path.to_string(), self.steps[i].action);
            let dir = &dirs[&mount];
            let staged = stage_root.get(&mount).with_context(|| format!("mount {mount} not staged"))?.join(&rel);
            // Journal what this step will create or restore before doing it.
            match action {
                Action::Create => {
                    let mut missing = Vec::new();
                    let mut prefix = String::new();
                    for part in parent_of(&rel).split('/').filter(|p| !p.is_empty()) {
                        prefix = if prefix.is_empty() { part.to_owned() } else { format!("{prefix}/{part}") };
                        match dir.symlink_metadata(&prefix) {
                            Ok(m) if m.is_dir() => {}
                            Ok(_) => bail!("{mount}/{prefix} is not a directory (changed since the plan?)"),
                            Err(e) if e.kind() == io::ErrorKind::NotFound => missing.push(prefix.clone()),
                            Err(e) => return Err(e.into()),
                        }
                    }
                    // The mode the diff check saw (executable only when the
                    // plan declared it; never set-id), not whatever the
                    // staged file holds now.
                    self.steps[i].created_dirs = missing;
                    let checked = self.steps[i].mode.context("a create step without its checked mode")?;
                    self.steps[i].mode = Some(checked & MODE_MASK);
                }
                Action::Modify | Action::Delete => {
                    let f =
                        open_nofollow(dir, &rel).with_context(|| format!("{mount}/{rel} vanished before commit"))?;
                    self.steps[i].mode = Some(f.metadata()?.permissions().mode() & MODE_MASK);
                }
            }
            self.persist(journal_file)?;
            let s = &self.steps[i];
            for d in &s.created_dirs {
                dir.create_dir(d).with_context(|| format!("cannot create {mount}/{d}"))?;
            }
            if matches!(action, Action::Modify | Action::Delete) {
                // Keep the original, checked against the plan: a file changed
                // since the precondition check aborts the commit here.
                let mut input = open_nofollow(dir, &rel)?;
                let mut out = OpenOptions::new().write(true).create_new(true).mode(0o600).open(&s.backup)?;
                if copy_hashing(&mut input, &mut out)? != s.before.context("modify/delete without a before digest")? {
                    bail!("{mount}/{rel} changed since the plan was checked; nothing of it was committed");
                }
                sync_dir(&self.backup_dir)?;
            }
            match action {
                Action::Create => {
                    self.write_temp(dir, s, &staged)?;
                    // link() fails if the target appeared meanwhile: never clobber.
                    dir.hard_link(&s.temp, dir, &rel)
                        .with_context(|| format!("cannot create {mount}/{rel} (did it appear since the plan?)"))?;
                    dir.remove_file(&s.temp)?;
                }
                Action::Modify => {
                    self.write_temp(dir, s, &staged)?;
                    dir.rename(&s.temp, dir, &rel)?;
                }
                Action::Delete => dir.remove_file(&rel)?,
            }
            sync_in(dir, parent_of(&rel))?;
        }
        Ok(())
    }

    /// Write the staged content to the step's temp file beside the target,
    /// checked against the planned "after" digest, with the step's mode.
    fn write_temp(&self, dir: &Dir, s: &Step, staged: &Path) -> Result<()> {
        let mut input = OpenOptions::new().read(true).custom_flags(O_NOFOLLOW).open(staged)?;
        let mut out = create_new_in(dir, &s.temp).with_context(|| format!("cannot write {}/{}", s.mount, s.temp))?;
        if let Some(mode) = s.mode {
            out.set_permissions(fs::Permissions::from_mode(mode))?;
        }
        if Some(copy_hashing(&mut input, &mut out)?) != s.after {
            let _ = dir.remove_file(&s.temp);
            bail!("staged file {} changed after the diff was checked", staged.display());
        }
        Ok(())
    }

    /// Undo whatever part of the commit happened. Idempotent: safe to run
    /// after a crash at any point, and again after a crash during rollback.
    /// A file is restored only if it still holds what this run wrote (or, for
    /// a delete, is still absent). Returns how many files were restored or removed.
    ///
    /// # Errors
    /// On I/O failure.
    pub fn rollback(&self) -> Result<usize> {
        let dirs = self.open_roots()?;
        let mut restored = 0;
        let mut failures = Vec::new();
        for s in self.steps.iter().rev() {
            // Keep going on a failed step: undo everything that can be undone.
            match self.rollback_step(&dirs[&s.mount], s) {
                Ok(n) => restored += n,
                Err(e) => failures.push(format!("{}/{}: {e:#}", s.mount, s.path)),
            }
        }
        if !failures.is_empty() {
            bail!("rollback restored {restored} file(s) but could not undo: {}", failures.join("; "));
        }
        Ok(restored)
    }

    fn rollback_step(&self, dir: &Dir, s: &Step) -> Result<usize> {
        let rel = s.path.as_str();
        let _ = dir.remove_file(&s.temp);
        let now = digest_in(dir, rel)?;
        let restored = match s.action {
            Action::Create => {
                let ours = s.after.is_some() && now == s.after;
                if ours {
                    dir.remove_file(rel)?;
                }
                for d in s.created_dirs.iter().rev() {
                    let _ = dir.remove_dir(d);
                }
                usize::from(ours)
            }
            Action::Modify | Action::Delete => {
                let ours = match s.action {
                    Action::Modify => now.is_some() && now == s.after,
                    _ => now.is_none() && dir.symlink_metadata(rel).is_err(),
                };
                if !ours {
                    if now != s.before {
                        tracing::warn!(mount = %s.mount, path = rel, "not restoring: the file changed after this run committed");
                    }
                    return Ok(0);
                }
                if digest_path(&s.backup)? != s.before {
                    bail!("the kept original is missing or damaged; restore it by hand");
                }
                let mut input = File::open(&s.backup)?;
                let mut out = create_new_in(dir, &s.temp)?;
                if let Some(mode) = s.mode {
                    out.set_permissions(fs::Permissions::from_mode(mode))?;
                }
                copy_hashing(&mut input, &mut out)?;
                if s.action == Action::Modify {
                    dir.rename(&s.temp, dir, rel)?;
                } else {
                    dir.hard_link(&s.temp, dir, rel)?;
                    dir.remove_file(&s.temp)?;
                }
                1
            }
        };
        let _ = sync_in(dir, parent_of(rel));
        Ok(restored)
    }

    /// After a successful verify (or a completed rollback): drop the originals.
    ///
    /// # Errors
    /// If the backup directory cannot be removed.
    pub fn finalize(&self) -> Result<()> {
        match fs::remove_dir_all(&self.backup_dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).with_context(|| format!("cannot remove {}", self.backup_dir.display())),
        }
    }
}

/// Write a file atomically and durably (temp + fsync + rename + fsync dir).
pub fn write_durably(path: &Path, bytes: &[u8]) -> Result<()> {
    write_via_temp(path, bytes, true)
}

/// Write a file atomically (temporary file, then rename) but without
/// waiting for the disk: for copies of what is durable elsewhere (a run's
/// receipt restates records and a checkpoint already committed in the
/// evidence store). A crash may lose the file, never leave half of it.
///
/// # Errors
/// On I/O failure.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    write_via_temp(path, bytes, false)
}

fn write_via_temp(path: &Path, bytes: &[u8], durable: bool) -> Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".{}.tmp", path.file_name().and_then(|n| n.to_str()).unwrap_or("file")));
    {
        let mut f = create_fresh(&tmp)?;
        f.write_all(bytes)?;
        if durable {
            f.sync_all()?;
        }
    }
    fs::rename(&tmp, path)?;
    if durable {
        sync_dir(dir)?;
    }
    Ok(())
}

/// A new file at `tmp` (mode 0600) that is ours: a leftover there (a crash)
/// is removed, never written through — if something planted a link there,
/// removing it removes the link — and `create_new` (O_EXCL) refuses any
/// name that exists again by then, symbolic links included, so the bytes
/// never land outside `tmp`'s directory.
///
/// # Errors
/// If the leftover cannot be removed or the file cannot be created.
pub fn create_fresh(tmp: &Path) -> io::Result<File> {
    match fs::remove_file(tmp) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    OpenOptions::new().write(true).create_new(true).mode(0o600).open(tmp)
}

/// fsync a directory so renames and creations inside it are durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use edge_core::plan::DiffEntry;
    use edge_core::snapshot::diff;

    const MAX: u64 = 1 << 20;

    #[test]
    fn a_planted_temporary_link_is_not_written_through() {
        let t = tempfile::tempdir().unwrap();
        let victim = t.path().join("victim");
        fs::write(&victim, "untouched").unwrap();
        let dir = t.path().join("state");
        fs::create_dir_all(&dir).unwrap();
        std::os::unix::fs::symlink(&victim, dir.join(".receipt.tmp")).unwrap();
        write_durably(&dir.join("receipt"), b"written").unwrap();
        assert_eq!(fs::read_to_string(&victim).unwrap(), "untouched");
        assert_eq!(fs::read_to_string(dir.join("receipt")).unwrap(), "written");
        assert!(!dir.join(".receipt.tmp").exists());
        // And again with a stale plain temporary left by a crash.
        fs::write(dir.join(".receipt.tmp"), "stale").unwrap();
        write_atomically(&dir.join("receipt"), b"again").unwrap();
        assert_eq!(fs::read_to_string(dir.join("receipt")).unwrap(), "again");
    }

    fn setup() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let t = tempfile::tempdir().unwrap();
        let live = t.path().join("live");
        fs::create_dir_all(live.join("sub")).unwrap();
        fs::write(live.join("keep.txt"), "keep").unwrap();
        fs::write(live.join("mod.txt"), "old").unwrap();
        fs::set_permissions(live.join("mod.txt"), fs::Permissions::from_mode(0o4751)).unwrap();
        fs::write(live.join("sub/del.txt"), "bye").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", live.join("link")).unwrap();
        let stage_dir = t.path().join("state/staging/run/m");
        (t, live, stage_dir)
    }

    fn roots(p: &Path) -> BTreeMap<String, PathBuf> {
        [("m".to_owned(), p.to_path_buf())].into()
    }

    /// The permission to commit `d`, earned the way the runner earns it: a
    /// plan naming exactly these changes, validated, the diff checked
    /// against it, and the live files checked against its "before" digests.
    fn allowed(d: &[DiffEntry], live: &Path) -> CommitAllowed {
        use edge_core::admission::{Ceiling, Limits, admit};
        use edge_core::authorize::{Evaluated, authorize, decide};
        use edge_core::container::CapsuleFile;
        use edge_core::manifest::{ComponentRef, Manifest};
        use edge_core::plan::{Change, Plan, check_diff, check_preconditions, commit_allowed};
        use edge_core::signature::{CapsuleSigningKey, TrustedSigner, TrustedSigners, verify_capsule};
        let component = ComponentRef { sha256: Sha256Digest::of(b"test"), size: 4 };
        let manifest = Manifest::from_authoring_toml(
            "name = \"t\"\nversion = \"0.0.1\"\nkind = \"remediation\"\n[[mounts]]\nname = \"m\"\nwritable = true\n",
            component,
        )
        .unwrap();
        // The authorization of a signed, admitted tier-0 capsule: the
        // permission to commit needs it.
        let key = CapsuleSigningKey::generate();
        let file = CapsuleFile::new(manifest.clone(), b"test".to_vec()).unwrap();
        let file = file.clone().with_bundle(key.sign_capsule(&file));
        let signer = TrustedSigner::from_public_key_pem("t", &key.public_key_pem()).unwrap();
        let verified = verify_capsule(file, &TrustedSigners::new(vec![signer], None).unwrap()).unwrap();
        let ceiling = Ceiling {
            endpoints: Default::default(),
            mounts: [("m".to_owned(), true)].into(),
            env: Default::default(),
            imports: Default::default(),
            default_limits: Limits::DEFAULT,
            max_limits: Limits::DEFAULT,
        };
        let decided = decide(admit(verified, &[], &ceiling).unwrap(), Evaluated::dangerous_without_policy()).unwrap();
        let changes = d
            .iter()
            .map(|e| Change {
                mount: e.mount.clone(),
                path: e.path.clone(),
                action: e.action,
                digest_before: e.before,
                digest_after: e.after,
                mode: None,
                why: "the test".into(),
            })
            .collect();
        let plan = Plan { summary: "t".into(), changes, findings: vec![], facts: vec![], calls: vec![] }
            .validate(&manifest, 100)
            .unwrap();
        let root = open_root(live).unwrap();
        let matched = check_diff(&plan, d).unwrap();
        let holds = check_preconditions(&plan, |_, p| digest_in(&root, p.as_str()).unwrap()).unwrap();
        let authorized = authorize(decided, plan, None).unwrap();
        commit_allowed(&authorized, matched, holds).unwrap()
    }

    fn journal(t: &tempfile::TempDir, run: &str, d: &[DiffEntry], live: &Path) -> (Journal, PathBuf) {
        let jpath = t.path().join(format!("state/journals/{run}.json"));
        let backup = t.path().join(format!("state/journals/{run}.backup"));
        let j = Journal::new(run, &allowed(d, live), &roots(live), &backup).unwrap();
        j.persist(&jpath).unwrap();
        (j, jpath)
    }

    /// Change the staged copy: modify, delete, and create in a new directory.
    fn change_stage(st: &Path) {
        fs::write(st.join("mod.txt"), "new").unwrap();
        fs::remove_file(st.join("sub/del.txt")).unwrap();
        fs::create_dir_all(st.join("n/m")).unwrap();
        fs::write(st.join("n/m/new.txt"), "fresh").unwrap();
    }

    #[test]
    fn stage_commit_rollback_round_trip() {
        let (t, live, st) = setup();
        let before_live = snapshot(&live, MAX).unwrap();
        let before = stage(&live, &st, MAX).unwrap();
        assert_eq!(before, before_live);
        assert_eq!(fs::metadata(&st).unwrap().permissions().mode() & 0o777, 0o700);
        assert_eq!(
            fs::metadata(st.join("mod.txt")).unwrap().permissions().mode() & 0o7777,
            0o751,
            "no setuid in staging"
        );
        change_stage(&st);
        let d = diff("m", &before, &snapshot(&st, MAX).unwrap()).unwrap();
        assert_eq!(d.len(), 3);
        let (mut j, jpath) = journal(&t, "r1", &d, &live);
        j.commit(&roots(&st), &jpath).unwrap();
        assert_eq!(fs::read_to_string(live.join("mod.txt")).unwrap(), "new");
        assert_eq!(fs::metadata(live.join("mod.txt")).unwrap().permissions().mode() & 0o7777, 0o751, "set-id cleared");
        assert!(!live.join("sub/del.txt").exists());
        assert_eq!(fs::read_to_string(live.join("n/m/new.txt")).unwrap(), "fresh");
        let names: Vec<String> =
            fs::read_dir(&live).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        assert!(names.iter().all(|n| !n.starts_with(".edge-runner")), "no runner files in the mount: {names:?}");

        assert_eq!(j.rollback().unwrap(), 3);
        assert_eq!(snapshot(&live, MAX).unwrap(), before_live, "rollback restores the content exactly");
        assert_eq!(j.rollback().unwrap(), 0, "idempotent");
        j.finalize().unwrap();
        assert!(!j.backup_dir.exists());
    }

    #[test]
    fn crash_after_backup_before_replace_rolls_back_nothing() {
        let (t, live, st) = setup();
        let before = stage(&live, &st, MAX).unwrap();
        change_stage(&st);
        let d = diff("m", &before, &snapshot(&st, MAX).unwrap()).unwrap();
        let (j, _) = journal(&t, "r3", &d, &live);
        // First half of the modify step, then a crash: backup and temp exist.
        fs::create_dir_all(&j.backup_dir).unwrap();
        let s = j.steps.iter().find(|s| s.action == Action::Modify).unwrap();
        fs::copy(live.join("mod.txt"), &s.backup).unwrap();
        fs::write(live.join(&s.temp), "new").unwrap();
        assert_eq!(j.rollback().unwrap(), 0);
        assert_eq!(fs::read_to_string(live.join("mod.txt")).unwrap(), "old");
        assert!(!live.join(&s.temp).exists());
    }

    #[test]
    fn a_fresh_process_rolls_back_from_the_journal() {
        let (t, live, st) = setup();
        let before_live = snapshot(&live, MAX).unwrap();
        let before = stage(&live, &st, MAX).unwrap();
        change_stage(&st);
        let d = diff("m", &before, &snapshot(&st, MAX).unwrap()).unwrap();
        let (mut j, jpath) = journal(&t, "r4", &d, &live);
        j.commit(&roots(&st), &jpath).unwrap();
        let reread: Journal = serde_json::from_slice(&fs::read(&jpath).unwrap()).unwrap();
        assert_eq!(reread.rollback().unwrap(), 3);
        assert_eq!(snapshot(&live, MAX).unwrap(), before_live);
    }

    #[test]
    fn rollback_leaves_later_changes_by_others_alone() {
        let (t, live, st) = setup();
        let before = stage(&live, &st, MAX).unwrap();
        change_stage(&st);
        let d = diff("m", &before, &snapshot(&st, MAX).unwrap()).unwrap();
        let (mut j, jpath) = journal(&t, "r5", &d, &live);
        j.commit(&roots(&st), &jpath).unwrap();
        fs::write(live.join("mod.txt"), "edited by an operator").unwrap();
        fs::write(live.join("sub/del.txt"), "recreated by an operator").unwrap();
        assert_eq!(j.rollback().unwrap(), 1, "only the created file is ours to remove");
        assert_eq!(fs::read_to_string(live.join("mod.txt")).unwrap(), "edited by an operator");
        assert_eq!(fs::read_to_string(live.join("sub/del.txt")).unwrap(), "recreated by an operator");
    }

    #[test]
    fn a_directory_swapped_for_a_symlink_cannot_redirect_the_commit() {
        let (t, live, st) = setup();
        let outside = t.path().join("outside");
        fs::create_dir_all(&outside).unwrap();
        fs::create_dir_all(live.join("n")).unwrap();
        let before = stage(&live, &st, MAX).unwrap();
        fs::write(st.join("n/x.txt"), "x").unwrap();
        let d = diff("m", &before, &snapshot(&st, MAX).unwrap()).unwrap();
        // Checked, then someone replaces live/n with a symlink to a directory
        // outside the mount before the commit.
        let allowed = allowed(&d, &live);
        fs::remove_dir(live.join("n")).unwrap();
        std::os::unix::fs::symlink(&outside, live.join("n")).unwrap();
        let jpath = t.path().join("state/journals/r6.json");
        let mut j = Journal::new("r6", &allowed, &roots(&live), &t.path().join("state/journals/r6.backup")).unwrap();
        j.persist(&jpath).unwrap();
        assert!(j.commit(&roots(&st), &jpath).is_err());
        // The step cannot be resolved beneath the mount either way: rollback
        // reports it and touches nothing outside.
        let _ = j.rollback();
        assert_eq!(fs::read_dir(&outside).unwrap().count(), 0, "nothing was written outside the mount");
    }

    #[test]
    fn staging_refuses_oversized_mounts() {
        let (_t, live, st) = setup();
        assert!(stage(&live, &st, 3).is_err());
    }
}
