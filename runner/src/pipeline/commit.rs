//! Commit: the journal (written, and recorded as an artifact, before any
//! live file changes) says what is replaced and where the backups are; the
//! staged files replace the live ones; a failure on the way rolls back
//! everything the journal names. Only an [`Applied`] result — holding the
//! `CommitAllowed` proof — can be committed.

use edge_core::evidence::{Event, Outcome};

use super::Runner;
use super::apply::Applied;
use super::run::{Fails, Refusal, RunReport, Stage, Stop};
use crate::staging::{self, Journal};

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
    pub(crate) async fn commit(&self, applied: Applied, report: &mut RunReport) -> Result<Committed, Stop> {
        let journal_path = staging::journal_path(&self.config.state_dir, &report.run);
        let backup_dir = self.config.state_dir.join("journals").join(format!("{}.backup", report.run));
        let journal = Journal::new(&report.run, &applied.allowed, &applied.live_roots, &backup_dir).or_fail()?;
        let journal_bytes = journal.persist(&journal_path).or_fail()?;
        let journal_d = report.artifact(&journal_bytes)?;
        let changes = applied.allowed.diff().len();
        report.record(Event::CommitIntent { changes, journal: journal_d })?;
        report.barrier().await?;
        let mut committed = Committed { journal, journal_path };
        if let Err(e) = committed.journal.commit(&applied.copies, &committed.journal_path) {
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
