//! Preview: before anyone is asked to approve, each writable mount is
//! copied into staging, the capsule's `apply` export runs against the copies
//! (the same sandbox and limits; nothing live changes), the real diff is
//! computed and must equal the plan, and each changed file is described for
//! approvers and reviewers (`edge_core::preview`): digests, sizes, line
//! counts and — as the mount's preview mode allows — its content, kept as
//! evidence artifacts.
//!
//! Tier 0 commits this staged result in the same run. Above it, the staged
//! files are kept (`<state>/previews/<proposal>/`, bounded in total) until
//! the proposal ends; the run that meets the quorum *resumes* the proposal
//! ([`Runner::resume`]) and commits exactly those bytes. `apply` never runs
//! twice, so a capsule that would do something else the second time cannot.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use edge_core::Sha256Digest;
use edge_core::approval::ApprovalFile;
use edge_core::authorize::Decided;
use edge_core::evidence::Event;
use edge_core::plan::{self, DiffEntry, PlanError as InvalidPlan, ValidPlan};
use edge_core::preview::{self, FilePreview, PREVIEW_SCHEMA, Preview, Redactor, Shown};
use edge_core::snapshot::{self, Snapshot, SnapshotDiffError};

use super::Runner;
use super::authorize::AuthorizeError;
use super::proposal::Proposal;
use super::run::{Fails, RunReport, Stage, StageError, Stop};
use crate::sandbox::{Prepared, SandboxError};
use crate::staging::{self, MAX_STAGE_BYTES, SnapshotError};

/// Why no preview could be made, or kept.
#[derive(Debug, thiserror::Error)]
pub enum PreviewError {
    #[error("{0}")]
    Staging(String),
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    #[error("after apply, the staged copy of `{mount}`: {source}")]
    Snapshot { mount: String, source: SnapshotError },
    #[error(transparent)]
    Diff(#[from] SnapshotDiffError),
    #[error(transparent)]
    NotAsPlanned(InvalidPlan),
    #[error("{mount}/{path} changed on the host while its preview was made; submit again")]
    LiveChanged { mount: String, path: String },
    #[error(
        "the preview would keep more than {max} bytes of file content as evidence ({size} when it stopped; \
         runner.max_preview_mib): make the change smaller, or set the mount's preview to \"digest-only\""
    )]
    TooLarge { size: u64, max: u64 },
    #[error(
        "waiting proposals already hold {held} bytes of staged results; this one needs {need} more and the limit \
         is {max} (runner.max_waiting_previews_mib): approve, reject or let waiting proposals expire, then submit again"
    )]
    StoreFull { held: u64, need: u64, max: u64 },
    #[error(
        "the staged result of proposal {0} is no longer kept (it ended, or the state directory lost it); submit again"
    )]
    Missing(String),
    #[error("the recorded preview of proposal {id} is unusable: {why}")]
    Unusable { id: String, why: String },
    #[error("{0}")]
    Io(String),
}

impl StageError for PreviewError {
    fn stage(&self) -> Stage {
        match self {
            Self::Staging(_) => Stage::Stage,
            Self::Sandbox(_) => Stage::Apply,
            Self::Snapshot { .. } | Self::Diff(_) | Self::NotAsPlanned(_) => Stage::Diff,
            _ => Stage::Preview,
        }
    }

    fn reason_code(&self) -> &'static str {
        match self {
            Self::Staging(_) => "staging.failed",
            Self::Sandbox(e) => e.reason_code(),
            Self::Snapshot { source, .. } => source.after_apply_reason(),
            Self::Diff(e) => e.reason_code(),
            Self::NotAsPlanned(e) => e.reason_code(),
            Self::LiveChanged { .. } => "preview.live_changed",
            Self::TooLarge { .. } => "preview.too_large",
            Self::StoreFull { .. } => "preview.store_full",
            Self::Missing(_) => "preview.missing",
            Self::Unusable { .. } => "preview.unusable",
            Self::Io(_) => "preview.io_error",
        }
    }
}

/// A staged result checked against the plan and described: what the commit
/// takes once the plan is authorized.
#[derive(Debug)]
pub(crate) struct Previewed {
    pub diff: Vec<DiffEntry>,
    /// The preview with the content it shows.
    pub shown: Shown,
    /// Artifact: the preview document.
    pub document: Sha256Digest,
    /// Where the staged files are, by mount: this run's staging copies, or
    /// the kept store of the waiting proposal it resumes.
    pub copies: BTreeMap<String, PathBuf>,
    /// The proposal whose kept store this is (removed when it ends).
    pub kept: Option<String>,
}

impl Runner {
    /// Stage, run `apply` on the copies, check the diff against the plan and
    /// describe it. None when the plan changes nothing.
    pub(crate) async fn preview(
        &self,
        decided: &Decided,
        valid: &ValidPlan,
        prepared: &Prepared,
        report: &mut RunReport,
    ) -> Result<Option<Previewed>, Stop> {
        if valid.plan().changes.is_empty() {
            return Ok(None);
        }
        let live_roots = prepared.writable_mounts(decided.admitted().grant());
        let stage_root = self.config.staging_dir.join(&report.run);
        let mut staged = BTreeMap::new();
        for (name, live) in &live_roots {
            let copy = stage_root.join(name);
            let before =
                staging::stage(live, &copy, MAX_STAGE_BYTES).map_err(|e| PreviewError::Staging(format!("{e:#}")))?;
            staged.insert(name.clone(), (copy, before));
        }
        let copies: BTreeMap<String, PathBuf> = staged.iter().map(|(n, (c, _))| (n.clone(), c.clone())).collect();
        report.barrier().await?;
        let (applied, captured) = self.sandbox.apply(decided, valid, prepared, &copies).await;
        let output = self.store_output(report, "apply", captured)?;
        applied.map_err(PreviewError::from)?;

        // The real diff must equal the plan.
        let mut diff = Vec::new();
        let mut befores = BTreeMap::new();
        for (name, (copy, before)) in staged {
            // Bounded: apply may have grown the copy (sparse files, floods).
            let after = staging::snapshot(&copy, MAX_STAGE_BYTES)
                .map_err(|source| PreviewError::Snapshot { mount: name.clone(), source })?;
            match snapshot::diff(&name, &before, &after) {
                Ok(d) => diff.extend(d),
                Err(e) => {
                    report.record(Event::Applied { diff, output, preview: None, contents: Vec::new() })?;
                    return Err(PreviewError::Diff(e).into());
                }
            }
            befores.insert(name, before);
        }
        report.diff = diff.clone();
        if let Err(e) = plan::check_diff(valid, &diff) {
            report.record(Event::Applied { diff, output, preview: None, contents: Vec::new() })?;
            return Err(PreviewError::NotAsPlanned(e).into());
        }
        let (preview, contents) = self.describe(valid.digest(), &diff, &befores, &live_roots, &copies)?;
        for (d, bytes) in &contents {
            report.log.put_artifact_digested(*d, bytes).or_fail()?;
        }
        let document = report.artifact(&serde_json::to_vec(&preview).or_fail()?)?;
        let shown = Shown::new(preview, |d| contents.get(d).cloned());
        report.shown = Some(shown.clone());
        report.record(Event::Applied {
            diff: diff.clone(),
            output,
            preview: Some(document),
            contents: shown.preview.contents(),
        })?;
        Ok(Some(Previewed { diff, shown, document, copies, kept: None }))
    }

    /// Describe each changed file under its mount's preview mode. Returns
    /// the preview and the content to keep, in the order it names it.
    fn describe(
        &self,
        plan: Sha256Digest,
        diff: &[DiffEntry],
        befores: &BTreeMap<String, Snapshot>,
        live_roots: &BTreeMap<String, PathBuf>,
        copies: &BTreeMap<String, PathBuf>,
    ) -> Result<(Preview, BTreeMap<Sha256Digest, Vec<u8>>), Stop> {
        let open = |roots: &BTreeMap<String, PathBuf>| -> Result<BTreeMap<String, cap_std::fs::Dir>, Stop> {
            roots
                .iter()
                .map(|(n, p)| Ok((n.clone(), staging::open_root(p).map_err(|e| PreviewError::Io(format!("{e:#}")))?)))
                .collect()
        };
        let (live, staged) = (open(live_roots)?, open(copies)?);
        let mut redactors = BTreeMap::new();
        let mut files = Vec::new();
        let mut contents: BTreeMap<Sha256Digest, Vec<u8>> = BTreeMap::new();
        let mut kept = 0u64;
        for d in diff {
            let mount =
                self.config.mounts.get(&d.mount).ok_or_else(|| PreviewError::Io(format!("no mount {}", d.mount)))?;
            let redactor = match redactors.entry(d.mount.clone()) {
                std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::btree_map::Entry::Vacant(e) => e.insert(Redactor::new(&mount.redact)),
            };
            let read = |dirs: &BTreeMap<String, cap_std::fs::Dir>, want: Option<Sha256Digest>| {
                let Some(want) = want else { return Ok(None) };
                let dir = &dirs[&d.mount];
                let bytes = staging::read_in(dir, d.path.as_str(), MAX_STAGE_BYTES)
                    .map_err(|e| PreviewError::Io(format!("{}/{}: {e}", d.mount, d.path)))?;
                match bytes {
                    Some(b) if Sha256Digest::of(&b) == want => Ok(Some(b)),
                    _ => Err(PreviewError::LiveChanged { mount: d.mount.clone(), path: d.path.to_string() }),
                }
            };
            let (before, after) = (read(&live, d.before)?, read(&staged, d.after)?);
            let mut masked = 0;
            let mut side = |bytes: Option<Vec<u8>>| {
                bytes.map(|b| {
                    let (side, content, n) = preview::describe(mount.preview, &b, redactor);
                    masked += n;
                    if let (Some(c), Some(d)) = (content, side.content)
                        && !contents.contains_key(&d)
                    {
                        kept += c.len() as u64;
                        contents.insert(d, c);
                    }
                    side
                })
            };
            let (before_side, after_side) = (side(before), side(after));
            // Refused as soon as the bound is passed (memory stays bounded too).
            if kept > self.config.max_preview_bytes {
                return Err(PreviewError::TooLarge { size: kept, max: self.config.max_preview_bytes }.into());
            }
            let mode_before = match befores.get(&d.mount).and_then(|s| s.get(&d.path)) {
                Some(snapshot::Node::File { mode, .. }) => Some(*mode),
                _ => None,
            };
            files.push(FilePreview {
                mount: d.mount.clone(),
                path: d.path.clone(),
                action: d.action,
                preview: mount.preview,
                before: before_side,
                after: after_side,
                mode_before,
                mode_after: d.mode,
                redacted_lines: masked,
            });
        }
        Ok((Preview { schema: PREVIEW_SCHEMA.into(), plan, files }, contents))
    }

    /// Keep a waiting proposal's staged files (created and modified ones)
    /// until it ends, within the store's bound.
    pub(crate) fn keep_preview(&self, id: &str, previewed: &Previewed) -> Result<(), Stop> {
        let store = self.config.state_dir.join("previews");
        let need: u64 = previewed.shown.preview.files.iter().filter_map(|f| f.after.as_ref()).map(|s| s.size).sum();
        let held = crate::store::fs::tree_size(&store).map_err(|e| PreviewError::Io(format!("{e:#}")))?;
        if held + need > self.config.max_waiting_previews_bytes {
            return Err(PreviewError::StoreFull { held, need, max: self.config.max_waiting_previews_bytes }.into());
        }
        let dest = preview_dir(self, id);
        for d in previewed.diff.iter().filter(|d| d.after.is_some()) {
            let from = previewed.copies[&d.mount].join(d.path.as_str());
            let to = dest.join(&d.mount).join(d.path.as_str());
            copy_private(&from, &to).or_fail()?;
        }
        // A plan that only deletes keeps no file, but the store must exist
        // to be synced (and the proposal's directory marks it as kept).
        std::fs::create_dir_all(&dest).or_fail()?;
        staging::sync_dir(&store).or_fail()?;
        // What an approver's tool shows, beside the proposal document.
        let shown = serde_json::to_vec(&previewed.shown).or_fail()?;
        staging::write_durably(&shown_path(self, id), &shown).or_fail()?;
        Ok(())
    }

    /// Whether a preview (a proposal's staged result) is kept for `id`.
    pub(crate) fn has_preview(&self, id: &str) -> bool {
        std::fs::symlink_metadata(preview_dir(self, id)).is_ok()
    }

    /// Remove the kept staged result of a proposal that no longer waits.
    pub(crate) fn drop_preview(&self, id: &str) {
        if self.has_preview(id)
            && let Err(e) = crate::store::fs::remove_tree(&preview_dir(self, id))
        {
            tracing::warn!(proposal = %id, error = %e, "cannot remove a kept preview; retried at the next start");
        }
    }

    /// Continue a waiting proposal: the approvals name it; its plan and
    /// staged result are taken from the evidence (the proposal document
    /// the approvers reviewed, and its preview) and its kept store — the
    /// capsule's `plan` and `apply` do not run again.
    pub(crate) async fn resume(
        &self,
        decided: &Decided,
        approvals: &[Vec<u8>],
        report: &mut RunReport,
    ) -> Result<(ValidPlan, Option<Previewed>), Stop> {
        let id = proposal_named(approvals)?;
        let document = self.log.proposal(&id).or_fail()?.and_then(|v| v.document);
        let Some(document) = document else { return Err(AuthorizeError::Unknown(id).into()) };
        let unusable = |why: String| PreviewError::Unusable { id: id.clone(), why };
        let bytes = self.log.read_artifact(&document).or_fail()?.ok_or_else(|| unusable("no document".into()))?;
        let proposal: Proposal = serde_json::from_slice(&bytes).map_err(|e| unusable(e.to_string()))?;
        proposal.check().map_err(|e| unusable(format!("{e:#}")))?;
        let capsule = decided.admitted().capsule().file().digest();
        if proposal.capsule != capsule {
            return Err(AuthorizeError::OtherCapsule { id, proposal: proposal.capsule, capsule }.into());
        }
        let grant = decided.admitted().grant();
        report.mount_guards = self.lock_mounts(grant).await;
        let valid = proposal
            .plan
            .clone()
            .validate_for(decided.admitted().capsule().file(), grant.limits.max_plan_changes as usize)
            .map_err(super::PlanError::from)?;
        report.plan = Some(valid.plan().clone());
        report.plan_digest = Some(valid.digest());
        let previewed = match proposal.preview {
            None => None,
            Some(d) => {
                let bytes = self.log.read_artifact(&d).or_fail()?.ok_or_else(|| unusable("no preview".into()))?;
                let preview: Preview = serde_json::from_slice(&bytes).map_err(|e| unusable(e.to_string()))?;
                // Each content artifact read once; checked against the plan.
                let shown = Shown::new(preview, |c| self.log.read_artifact(c).ok().flatten());
                shown.check(valid.plan(), &valid.digest()).map_err(|e| unusable(e.to_string()))?;
                let diff = shown.preview.diff();
                let dir = preview_dir(self, &id);
                let copies = grant.mounts.iter().filter(|g| g.writable).map(|g| (g.name.clone(), dir.join(&g.name)));
                report.diff = diff.clone();
                report.shown = Some(shown.clone());
                Some(Previewed { diff, shown, document: d, copies: copies.collect(), kept: Some(id.clone()) })
            }
        };
        report.record(Event::Resumed {
            proposal: id.clone(),
            document,
            plan: valid.digest(),
            preview: previewed.as_ref().map(|p| p.document),
            contents: previewed.as_ref().map(|p| p.shown.preview.contents()).unwrap_or_default(),
        })?;
        report.held_previews = proposal.previews;
        report.resumed = Some(id);
        Ok((valid, previewed))
    }
}

/// The preview with its content, for approvers' tools
/// (`edge_core::preview::Shown`), beside the proposal document.
pub fn shown_path(runner: &Runner, id: &str) -> PathBuf {
    runner.config.state_dir.join("proposals").join(format!("{id}.preview.json"))
}

/// Where a waiting proposal's staged files are kept.
pub(crate) fn preview_dir(runner: &Runner, id: &str) -> PathBuf {
    runner.config.state_dir.join("previews").join(id)
}

/// The one proposal every readable approval names.
pub(crate) fn proposal_named(approvals: &[Vec<u8>]) -> Result<String, AuthorizeError> {
    let ids: std::collections::BTreeSet<String> =
        approvals.iter().filter_map(|b| ApprovalFile::parse(b).ok()).map(|f| f.statement.proposal).collect();
    match ids.len() {
        1 => Ok(ids.into_iter().next().expect("one id")),
        0 => Err(AuthorizeError::Unreadable),
        _ => Err(AuthorizeError::MixedProposals(ids.into_iter().collect::<Vec<_>>().join(", "))),
    }
}

/// Copy a staged file into the runner's private store (directories 0700,
/// the file 0600, durable).
fn copy_private(from: &Path, to: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let parent = to.parent().expect("a file in a directory");
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(parent)?;
    let mut input = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(from)?;
    let mut out = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(to)?;
    std::io::copy(&mut input, &mut out)?;
    out.sync_all()?;
    staging::sync_dir(parent)?;
    Ok(())
}
