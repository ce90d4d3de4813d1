//! Apply: each writable mount is copied into staging, the capsule's `apply`
//! export runs against the copies (writes bounded while it writes), the real
//! diff is computed and must equal the plan, and the live files must still
//! be what the plan saw. The result is [`Applied`], holding the
//! [`CommitAllowed`] proof only both checks together can build.

use std::collections::BTreeMap;
use std::path::PathBuf;

use edge_core::evidence::Event;
use edge_core::plan::{self, CommitAllowed, PlanError};
use edge_core::snapshot::{self, SnapshotDiffError};

use super::Runner;
use super::run::{RunReport, Stage, StageError, Stop};
use crate::sandbox::{Authority, SandboxError};
use crate::staging::{self, MAX_STAGE_BYTES, SnapshotError};

/// Why the staged result may not be committed.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("{0}")]
    Staging(String),
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    #[error("after apply, the staged copy of `{mount}`: {source}")]
    Snapshot { mount: String, source: SnapshotError },
    #[error(transparent)]
    Diff(#[from] SnapshotDiffError),
    #[error(transparent)]
    NotAsPlanned(PlanError),
    #[error("{0}")]
    Io(String),
    #[error(transparent)]
    Preconditions(PlanError),
}

impl StageError for ApplyError {
    fn stage(&self) -> Stage {
        match self {
            Self::Staging(_) => Stage::Stage,
            Self::Sandbox(_) => Stage::Apply,
            Self::Snapshot { .. } | Self::Diff(_) | Self::NotAsPlanned(_) => Stage::Diff,
            Self::Io(_) | Self::Preconditions(_) => Stage::Commit,
        }
    }

    fn reason_code(&self) -> &'static str {
        match self {
            Self::Staging(_) => "staging.failed",
            Self::Sandbox(e) => e.reason_code(),
            Self::Snapshot { source, .. } => source.after_apply_reason(),
            Self::Diff(e) => e.reason_code(),
            Self::NotAsPlanned(e) | Self::Preconditions(e) => e.reason_code(),
            Self::Io(_) => "commit.io_error",
        }
    }
}

/// A staged result that may be committed: the proof, the staged copies and
/// the live roots they replace.
pub(crate) struct Applied {
    pub allowed: CommitAllowed,
    pub copies: BTreeMap<String, PathBuf>,
    pub live_roots: BTreeMap<String, PathBuf>,
}

impl Runner {
    pub(crate) async fn apply(&self, run: &Authority, report: &mut RunReport) -> Result<Applied, Stop> {
        // Stage each writable mount (at the host path the authority holds).
        let live_roots = run.writable_mounts();
        let stage_root = self.config.staging_dir.join(&report.run);
        let mut staged = BTreeMap::new();
        for (name, live) in &live_roots {
            let copy = stage_root.join(name);
            let before =
                staging::stage(live, &copy, MAX_STAGE_BYTES).map_err(|e| ApplyError::Staging(format!("{e:#}")))?;
            staged.insert(name.clone(), (copy, before));
        }
        let copies: BTreeMap<String, PathBuf> = staged.iter().map(|(n, (c, _))| (n.clone(), c.clone())).collect();
        report.barrier().await?;
        let (applied, captured) = self.sandbox.apply(run, &copies).await;
        let output = self.store_output(report, "apply", captured)?;
        applied.map_err(ApplyError::from)?;

        // The real diff must equal the plan.
        let mut diff = Vec::new();
        for (name, (copy, before)) in &staged {
            // Bounded: apply may have grown the copy (sparse files, floods).
            let after = staging::snapshot(copy, MAX_STAGE_BYTES)
                .map_err(|source| ApplyError::Snapshot { mount: name.clone(), source })?;
            match snapshot::diff(name, before, &after) {
                Ok(d) => diff.extend(d),
                Err(e) => {
                    report.record(Event::Applied { diff, output })?;
                    return Err(ApplyError::Diff(e).into());
                }
            }
        }
        report.diff = diff.clone();
        report.record(Event::Applied { diff: diff.clone(), output })?;
        let matches = plan::check_diff(run.authorized().plan(), &diff).map_err(ApplyError::NotAsPlanned)?;

        // Preconditions: the live files are still what the plan saw.
        let mut dirs = BTreeMap::new();
        for (name, root) in &live_roots {
            let dir = staging::open_root(root).map_err(|e| ApplyError::Io(format!("{e:#}")))?;
            dirs.insert(name.clone(), dir);
        }
        let mut io_error = None;
        let holds = plan::check_preconditions(run.authorized().plan(), |mount, path| {
            staging::digest_in(dirs.get(mount)?, path.as_str()).unwrap_or_else(|e| {
                io_error = Some(e.to_string());
                None
            })
        });
        if let Some(e) = io_error {
            return Err(ApplyError::Io(e).into());
        }
        let holds = holds.map_err(ApplyError::Preconditions)?;
        // Both proofs, for this plan, or no commit: the journal takes the diff from here.
        let allowed = plan::commit_allowed(matches, holds).map_err(ApplyError::Preconditions)?;
        Ok(Applied { allowed, copies, live_roots })
    }
}
