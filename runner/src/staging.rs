//! Staged apply, atomic commit and rollback on the host filesystem.
//!
//! * [`stage`] copies a writable mount into a runner-owned staging directory
//!   (never following symlinks, refusing special files, bounded in size) and
//!   snapshots it; `apply` runs against the copy.
//! * [`Journal::commit`] applies the checked diff to the live mount one file
//!   at a time, each by an atomic rename, after writing a durable journal that
//!   lists every step and keeps the original of every modified or deleted file
//!   as a hard link beside it. A crash at any instant leaves enough on disk
//!   for [`Journal::rollback`] (run by recovery on the next start) to restore
//!   the original state, so a run is either fully committed and verified or
//!   fully undone.
//! * Only files the diff names are touched: the rest of the mount, including
//!   files that changed concurrently, is left alone.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use edge_core::Sha256Digest;
use edge_core::paths::MountPath;
use edge_core::plan::{Action, DiffEntry};
use edge_core::snapshot::{Node, Snapshot};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// Most files a staged mount may hold.
pub const MAX_STAGED_FILES: usize = 100_000;

/// Digest of a file's content, or None if it does not exist (or is not a regular file).
pub fn file_digest(path: &Path) -> io::Result<Option<Sha256Digest>> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_file() => {}
        Ok(_) => return Ok(None),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    }
    let mut f = OpenOptions::new().read(true).custom_flags(libc_o_nofollow()).open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(Some(Sha256Digest(h.finalize().into())))
}

const fn libc_o_nofollow() -> i32 {
    // O_NOFOLLOW on Linux (all architectures we build for).
    0o400000
}

/// Snapshot a tree without following symlinks.
///
/// # Errors
/// On I/O errors, special files, non-UTF-8 names, or more than [`MAX_STAGED_FILES`] entries.
pub fn snapshot(root: &Path) -> Result<Snapshot> {
    let mut out = Snapshot::new();
    walk(root, root, &mut out)?;
    Ok(out)
}

fn walk(root: &Path, dir: &Path, out: &mut Snapshot) -> Result<()> {
    let mut entries: Vec<_> =
        fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))?.collect::<io::Result<_>>()?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        if out.len() >= MAX_STAGED_FILES {
            bail!("mount has more than {MAX_STAGED_FILES} entries; narrow the mount");
        }
        let path = e.path();
        let rel = path.strip_prefix(root).expect("walk stays under root");
        let rel_str = rel.to_str().with_context(|| format!("{} is not UTF-8", path.display()))?;
        let rel = MountPath::new(rel_str).with_context(|| format!("unsupported file name {}", path.display()))?;
        let ft = e.file_type()?;
        if ft.is_dir() {
            out.insert(rel, Node::Dir);
            walk(root, &path, out)?;
        } else if ft.is_file() {
            let digest = file_digest(&path)?.with_context(|| format!("{} vanished", path.display()))?;
            out.insert(rel, Node::File { digest, size: e.metadata()?.len() });
        } else if ft.is_symlink() {
            let target = fs::read_link(&path)?;
            out.insert(rel, Node::Symlink { target: target.to_string_lossy().into_owned() });
        } else {
            bail!(
                "{} is a special file (fifo, socket or device); mounts may hold only files, directories and symlinks",
                path.display()
            );
        }
    }
    Ok(())
}

/// Copy `live` to `stage` (which must not exist) and return the snapshot of
/// what was copied. Symlinks are copied as symlinks, never followed.
///
/// # Errors
/// On I/O errors, special files, or more than `max_bytes` of file content.
pub fn stage(live: &Path, stage: &Path, max_bytes: u64) -> Result<Snapshot> {
    fs::create_dir_all(stage.parent().unwrap_or(Path::new("/")))?;
    fs::create_dir(stage).with_context(|| format!("cannot create staging dir {}", stage.display()))?;
    let snap = snapshot(live)?;
    let total: u64 = snap.values().map(|n| if let Node::File { size, .. } = n { *size } else { 0 }).sum();
    if total > max_bytes {
        bail!(
            "mount holds {total} bytes; staging is limited to {max_bytes} (raise sandbox.max_stage_mib or narrow the mount)"
        );
    }
    for (rel, node) in &snap {
        let src = live.join(rel.as_str());
        let dst = stage.join(rel.as_str());
        match node {
            Node::Dir => fs::create_dir(&dst)?,
            Node::File { .. } => {
                fs::copy(&src, &dst).with_context(|| format!("cannot stage {}", src.display()))?;
                let mtime = fs::metadata(&src)?.modified()?;
                File::options().write(true).open(&dst)?.set_modified(mtime)?;
            }
            Node::Symlink { target } => std::os::unix::fs::symlink(target, &dst)?,
        }
    }
    // The staged copy may differ from `snap` if the live mount changed while
    // copying; snapshot the copy itself so the diff is computed against what
    // the capsule actually saw.
    snapshot(stage)
}

/// One step of a commit.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Step {
    pub mount: String,
    pub path: MountPath,
    pub action: Action,
    pub before: Option<Sha256Digest>,
    pub after: Option<Sha256Digest>,
    /// Live target path.
    pub target: PathBuf,
    /// New content, written beside the target (same filesystem) before the rename.
    pub temp: PathBuf,
    /// Copy of the original (modify/delete), in the runner's state directory,
    /// so the mount itself never shows runner files to `verify` or to others.
    pub backup: PathBuf,
    /// Permission bits of the original, restored with it.
    pub mode: Option<u32>,
    /// Directories created for this step (removed on rollback if empty).
    pub created_dirs: Vec<PathBuf>,
}

/// The durable record of a commit in progress.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Journal {
    pub run: String,
    /// Where the originals are kept until the run is finalized.
    pub backup_dir: PathBuf,
    pub steps: Vec<Step>,
}

/// Stable location of a run's journal.
pub fn journal_path(state_dir: &Path, run: &str) -> PathBuf {
    state_dir.join("journals").join(format!("{run}.json"))
}

impl Journal {
    /// Build the journal for a diff. `live_root` maps mount names to live
    /// mount roots; originals will be kept under `backup_dir`.
    pub fn new(
        run: &str,
        diff: &[DiffEntry],
        live_root: &BTreeMap<String, PathBuf>,
        backup_dir: &Path,
    ) -> Result<Self> {
        let mut steps = Vec::with_capacity(diff.len());
        for (i, d) in diff.iter().enumerate() {
            let root = live_root.get(&d.mount).with_context(|| format!("mount {} not staged", d.mount))?;
            let target = root.join(d.path.as_str());
            let dir = target.parent().expect("mount path has a parent").to_path_buf();
            steps.push(Step {
                mount: d.mount.clone(),
                path: d.path.clone(),
                action: d.action,
                before: d.before,
                after: d.after,
                temp: dir.join(format!(".edge-runner.{run}.{i}.new")),
                backup: backup_dir.join(format!("{i}.orig")),
                mode: None,
                target,
                created_dirs: Vec::new(),
            });
        }
        Ok(Self { run: run.to_owned(), backup_dir: backup_dir.to_path_buf(), steps })
    }

    /// Write the journal durably (before any live file is touched).
    pub fn persist(&self, path: &Path) -> Result<Vec<u8>> {
        let bytes = serde_json::to_vec_pretty(self)?;
        write_durably(path, &bytes)?;
        Ok(bytes)
    }

    /// Apply every step. On error the caller must call [`Journal::rollback`].
    /// `stage_root` maps mount names to staged copies.
    pub fn commit(&mut self, stage_root: &BTreeMap<String, PathBuf>, journal_file: &Path) -> Result<()> {
        fs::create_dir_all(&self.backup_dir).with_context(|| format!("cannot create {}", self.backup_dir.display()))?;
        for i in 0..self.steps.len() {
            let staged = {
                let s = &self.steps[i];
                stage_root.get(&s.mount).with_context(|| format!("mount {} not staged", s.mount))?.join(s.path.as_str())
            };
            // Journal what this step will create (parent directories) or
            // restore (the original's mode) before doing it.
            let changed;
            if self.steps[i].action == Action::Create {
                let parent = self.steps[i].target.parent().expect("has parent").to_path_buf();
                let mut missing = Vec::new();
                let mut p = parent.as_path();
                while !p.exists() {
                    missing.push(p.to_path_buf());
                    p = p.parent().context("no existing ancestor")?;
                }
                missing.reverse();
                changed = !missing.is_empty();
                self.steps[i].created_dirs = missing;
            } else {
                let meta = fs::symlink_metadata(&self.steps[i].target)
                    .with_context(|| format!("{} vanished before commit", self.steps[i].target.display()))?;
                self.steps[i].mode = Some(meta.permissions().mode());
                changed = true;
            }
            if changed {
                self.persist(journal_file)?;
            }
            let s = &self.steps[i];
            for d in &s.created_dirs {
                fs::create_dir(d).with_context(|| format!("cannot create {}", d.display()))?;
            }
            match s.action {
                Action::Create => {
                    copy_durably(&staged, &s.temp, s.after)?;
                    set_mode(&s.temp, Some(fs::symlink_metadata(&staged)?.permissions().mode()))?;
                    // link() fails if the target appeared meanwhile: never clobber.
                    fs::hard_link(&s.temp, &s.target).with_context(|| {
                        format!("cannot create {} (did it appear since the plan?)", s.target.display())
                    })?;
                    fs::remove_file(&s.temp)?;
                }
                Action::Modify => {
                    // The copy is checked against the plan's "before" digest:
                    // a file changed since the precondition check aborts here.
                    copy_durably(&s.target, &s.backup, s.before)?;
                    copy_durably(&staged, &s.temp, s.after)?;
                    set_mode(&s.temp, s.mode)?;
                    fs::rename(&s.temp, &s.target)?;
                }
                Action::Delete => {
                    copy_durably(&s.target, &s.backup, s.before)?;
                    fs::remove_file(&s.target)?;
                }
            }
            sync_dir(s.target.parent().expect("has parent"))?;
        }
        Ok(())
    }

    /// Undo whatever part of the commit happened. Idempotent: safe to run
    /// after a crash at any point, and again after a crash during rollback.
    /// Returns how many files were restored or removed.
    pub fn rollback(&self) -> Result<usize> {
        let mut restored = 0;
        for s in self.steps.iter().rev() {
            let _ = fs::remove_file(&s.temp);
            match s.action {
                Action::Create => {
                    // Remove the file only if it is the content we created.
                    if s.after.is_some() && file_digest(&s.target)? == s.after {
                        fs::remove_file(&s.target)?;
                        restored += 1;
                    }
                    for d in s.created_dirs.iter().rev() {
                        let _ = fs::remove_dir(d);
                    }
                }
                Action::Modify | Action::Delete => {
                    // Only a complete backup (it matches the plan's "before")
                    // is ever restored; otherwise the target was never touched.
                    if file_digest(&s.backup)? == s.before && file_digest(&s.target)? != s.before {
                        let _ = fs::remove_file(&s.temp);
                        copy_durably(&s.backup, &s.temp, s.before)?;
                        set_mode(&s.temp, s.mode)?;
                        fs::rename(&s.temp, &s.target)?;
                        restored += 1;
                    }
                }
            }
            if let Some(dir) = s.target.parent() {
                let _ = sync_dir(dir);
            }
        }
        Ok(restored)
    }

    /// After a successful verify (or a completed rollback): drop the originals.
    pub fn finalize(&self) -> Result<()> {
        match fs::remove_dir_all(&self.backup_dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).with_context(|| format!("cannot remove {}", self.backup_dir.display())),
        }
    }
}

fn set_mode(path: &Path, mode: Option<u32>) -> Result<()> {
    if let Some(mode) = mode {
        fs::set_permissions(path, fs::Permissions::from_mode(mode & 0o7777))?;
    }
    Ok(())
}

fn copy_durably(src: &Path, dst: &Path, expect: Option<Sha256Digest>) -> Result<()> {
    let mut input = OpenOptions::new().read(true).custom_flags(libc_o_nofollow()).open(src)?;
    let mut out = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(dst)
        .with_context(|| format!("cannot write {}", dst.display()))?;
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
    let got = Sha256Digest(h.finalize().into());
    if Some(got) != expect {
        let _ = fs::remove_file(dst);
        bail!("staged file {} changed after the diff was checked", src.display());
    }
    Ok(())
}

/// Write a file atomically and durably (temp + fsync + rename + fsync dir).
pub fn write_durably(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".{}.tmp", path.file_name().and_then(|n| n.to_str()).unwrap_or("file")));
    {
        let mut f = OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    sync_dir(dir)?;
    Ok(())
}

/// fsync a directory so renames and creations inside it are durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use edge_core::snapshot::diff;

    fn setup() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let t = tempfile::tempdir().unwrap();
        let live = t.path().join("live");
        fs::create_dir_all(live.join("sub")).unwrap();
        fs::write(live.join("keep.txt"), "keep").unwrap();
        fs::write(live.join("mod.txt"), "old").unwrap();
        fs::write(live.join("sub/del.txt"), "bye").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", live.join("link")).unwrap();
        let stage_dir = t.path().join("stage/m");
        (t, live, stage_dir)
    }

    fn roots(p: &Path) -> BTreeMap<String, PathBuf> {
        [("m".to_owned(), p.to_path_buf())].into()
    }

    #[test]
    fn stage_commit_rollback_round_trip() {
        let (_t, live, st) = setup();
        let before_live = snapshot(&live).unwrap();
        let before = stage(&live, &st, 1 << 20).unwrap();
        assert_eq!(before, before_live);
        fs::write(st.join("mod.txt"), "new").unwrap();
        fs::remove_file(st.join("sub/del.txt")).unwrap();
        fs::create_dir_all(st.join("n/m")).unwrap();
        fs::write(st.join("n/m/new.txt"), "fresh").unwrap();
        let after = snapshot(&st).unwrap();
        let d = diff("m", &before, &after).unwrap();
        assert_eq!(d.len(), 3);

        let jpath = live.parent().unwrap().join("journal.json");
        let mut j = Journal::new("r1", &d, &roots(&live), &live.parent().unwrap().join("backup")).unwrap();
        j.persist(&jpath).unwrap();
        j.commit(&roots(&st), &jpath).unwrap();
        assert_eq!(fs::read_to_string(live.join("mod.txt")).unwrap(), "new");
        assert!(!live.join("sub/del.txt").exists());
        assert_eq!(fs::read_to_string(live.join("n/m/new.txt")).unwrap(), "fresh");

        let restored = j.rollback().unwrap();
        assert_eq!(restored, 3);
        assert_eq!(snapshot(&live).unwrap(), before_live, "rollback restores exactly");
        // Idempotent.
        assert_eq!(j.rollback().unwrap(), 0);
        assert_eq!(snapshot(&live).unwrap(), before_live);
    }

    #[test]
    fn finalize_leaves_only_the_new_state() {
        let (_t, live, st) = setup();
        let before = stage(&live, &st, 1 << 20).unwrap();
        fs::write(st.join("mod.txt"), "new").unwrap();
        let d = diff("m", &before, &snapshot(&st).unwrap()).unwrap();
        let jpath = live.parent().unwrap().join("journal.json");
        let mut j = Journal::new("r2", &d, &roots(&live), &live.parent().unwrap().join("backup")).unwrap();
        j.persist(&jpath).unwrap();
        j.commit(&roots(&st), &jpath).unwrap();
        j.finalize().unwrap();
        let names: Vec<String> =
            fs::read_dir(&live).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        assert!(names.iter().all(|n| !n.starts_with(".edge-runner")), "{names:?}");
    }

    #[test]
    fn crash_after_backup_before_replace_rolls_back() {
        let (_t, live, st) = setup();
        let before = stage(&live, &st, 1 << 20).unwrap();
        fs::write(st.join("mod.txt"), "new").unwrap();
        fs::remove_file(st.join("sub/del.txt")).unwrap();
        let d = diff("m", &before, &snapshot(&st).unwrap()).unwrap();
        let backup = live.parent().unwrap().join("backup");
        let j = Journal::new("r3", &d, &roots(&live), &backup).unwrap();
        // Simulate the first half of the first step, then a crash: the backup
        // and the temp file exist, the target is untouched.
        fs::create_dir_all(&backup).unwrap();
        fs::copy(&j.steps[0].target, &j.steps[0].backup).unwrap();
        fs::write(&j.steps[0].temp, "new").unwrap();
        assert_eq!(j.rollback().unwrap(), 0, "nothing to restore");
        assert_eq!(fs::read_to_string(live.join("mod.txt")).unwrap(), "old");
        assert!(!j.steps[0].temp.exists());
    }

    #[test]
    fn crash_mid_commit_restores_what_was_done() {
        let (_t, live, st) = setup();
        let before_live = snapshot(&live).unwrap();
        let before = stage(&live, &st, 1 << 20).unwrap();
        fs::write(st.join("mod.txt"), "new").unwrap();
        fs::remove_file(st.join("sub/del.txt")).unwrap();
        let d = diff("m", &before, &snapshot(&st).unwrap()).unwrap();
        let jpath = live.parent().unwrap().join("journal.json");
        let mut j = Journal::new("r4", &d, &roots(&live), &live.parent().unwrap().join("backup")).unwrap();
        j.persist(&jpath).unwrap();
        j.commit(&roots(&st), &jpath).unwrap();
        // A fresh process reads the journal back and rolls back.
        let reread: Journal = serde_json::from_slice(&fs::read(&jpath).unwrap()).unwrap();
        assert_eq!(reread.rollback().unwrap(), 2);
        assert_eq!(snapshot(&live).unwrap(), before_live);
    }

    #[test]
    fn staging_refuses_oversized_mounts() {
        let (_t, live, st) = setup();
        assert!(stage(&live, &st, 3).is_err());
    }
}
