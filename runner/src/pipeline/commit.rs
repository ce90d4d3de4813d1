//! Commit: once the plan is authorized, the previewed diff is checked
//! against it again, the live files must still be what the plan saw (else
//! the proposal is refused: the agent resubmits), and only the
//! [`CommitAllowed`] proof both checks and the authorization build lets the
//! journal be written. The journal (recorded as an artifact before any live
//! file changes) says what is replaced and where the backups are; the
//! previewed files — byte for byte, re-hashed as they are copied — replace
//! the live ones; a failure on the way rolls back everything it names.

use std::collections::BTreeMap;

use edge_core::evidence::{Event, Outcome};
use edge_core::plan::{self, CommitAllowed, PlanError};

use super::Runner;
use super::preview::Previewed;
use super::run::{Fails, Refusal, RunReport, Stage, StageError, Stop};
use crate::sandbox::Authority;
use crate::staging::{self, Journal};

/// Why an authorized, previewed change may not be committed.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    #[error("the previewed diff is not the authorized plan: {0}")]
    NotAsPlanned(PlanError),
    #[error("{0}; the live file changed after the preview, so nothing was written: submit again")]
    Preconditions(PlanError),
    #[error("{0}")]
    Io(String),
}

impl StageError for CommitError {
    fn stage(&self) -> Stage {
        Stage::Commit
    }

    fn reason_code(&self) -> &'static str {
        match self {
            Self::NotAsPlanned(e) | Self::Preconditions(e) => e.reason_code(),
            Self::Io(_) => "commit.io_error",
        }
    }
}

/// A commit done and journaled: verification decides whether it stays.
pub(crate) struct Committed {
    pub journal: Journal,
    pub journal_path: std::path::PathBuf,
}

impl Committed {
    /// Keep the change: the journal and its backups go.
    pub(crate) fn finalize(self) -> anyhow::Result<()> {
        self.journal.finalize()?;
        std::fs::remove_file(&self.journal_path)?;
        Ok(())
    }
}

impl Runner {
    /// The permission to commit the previewed diff for this authorization.
    fn commit_allowed(&self, run: &Authority, previewed: &Previewed) -> Result<CommitAllowed, Stop> {
        let authorized = run.authorized();
        let matched = plan::check_diff(authorized.plan(), &previewed.diff).map_err(CommitError::NotAsPlanned)?;
        let mut dirs = BTreeMap::new();
        for (name, root) in run.writable_mounts() {
            let dir = staging::open_root(&root).map_err(|e| CommitError::Io(format!("{e:#}")))?;
            dirs.insert(name, dir);
        }
        let mut io_error = None;
        let holds = plan::check_preconditions(authorized.plan(), |mount, path| {
            staging::digest_in(dirs.get(mount)?, path.as_str()).unwrap_or_else(|e| {
                io_error = Some(e.to_string());
                None
            })
        });
        if let Some(e) = io_error {
            return Err(CommitError::Io(e).into());
        }
        let holds = holds.map_err(CommitError::Preconditions)?;
        Ok(plan::commit_allowed(authorized, matched, holds).map_err(CommitError::NotAsPlanned)?)
    }

    pub(crate) async fn commit(
        &self,
        run: &Authority,
        previewed: Previewed,
        report: &mut RunReport,
    ) -> Result<Committed, Stop> {
        if let Some(id) = &previewed.kept
            && !self.has_preview(id)
        {
            return Err(super::preview::PreviewError::Missing(id.clone()).into());
        }
        let allowed = self.commit_allowed(run, &previewed)?;
        let live_roots = run.writable_mounts();
        let journal_path = staging::journal_path(&self.config.state_dir, &report.run);
        let backup_dir = self.config.state_dir.join("journals").join(format!("{}.backup", report.run));
        let journal = Journal::new(&report.run, &allowed, &live_roots, &backup_dir).or_fail()?;
        let journal_bytes = journal.persist(&journal_path).or_fail()?;
        let journal_d = report.artifact(&journal_bytes)?;
        let changes = allowed.diff().len();
        report.record(Event::CommitIntent { changes, journal: journal_d })?;
        report.barrier().await?;
        let mut committed = Committed { journal, journal_path };
        if let Err(e) = committed.journal.commit(&previewed.copies, &committed.journal_path) {
            let detail = format!("{e:#}");
            self.roll_back(committed, report, "commit.io_error", &detail).await?;
            report.refusal = Some(Refusal { stage: Stage::Commit, reason_code: "commit.io_error", detail });
            return Err(Stop::Ended);
        }
        report.record(Event::Committed { changes })?;
        Ok(committed)
    }

    /// Undo a commit (the reason is durable first), record it and end the run
    /// rolled back.
    pub(crate) async fn roll_back(
        &self,
        committed: Committed,
        report: &mut RunReport,
        reason_code: &str,
        detail: &str,
    ) -> Result<(), Stop> {
        report.barrier().await?;
        let restored = committed.journal.rollback().or_fail()?;
        report.record(Event::RolledBack { reason_code: reason_code.into(), detail: detail.into(), restored })?;
        report.close(Outcome::RolledBack)?;
        report.barrier().await?;
        committed.finalize().or_fail()
    }
}
