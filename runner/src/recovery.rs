//! Recovery on start: every run the log shows unfinished is rolled back
//! (from its commit journal, when one exists) and closed as interrupted,
//! before the runner does anything else.

use std::collections::BTreeSet;

use anyhow::{Context, Result};
use edge_core::evidence::{Event, Outcome};

use crate::exec::Runner;
use crate::staging::Journal;

impl Runner {
    /// Roll back and close every run that has no terminal record.
    ///
    /// # Errors
    /// If a rollback or a record write fails (the runner must not continue).
    pub fn recover(&mut self) -> Result<Vec<String>> {
        let journals_dir = self.config.state_dir.join("journals");
        // Runs without a terminal record, in order of their first record.
        let open: Vec<String> = self.log.index().unfinished_runs();
        let unfinished: BTreeSet<String> = open.iter().cloned().collect();
        let mut terminal: BTreeSet<String> = BTreeSet::new();
        let mut recovered = Vec::new();
        // Journals first: they say what to undo.
        if journals_dir.exists() {
            for entry in std::fs::read_dir(&journals_dir)? {
                let path = entry?.path();
                let Some(run) = path.file_stem().and_then(|s| s.to_str()).map(str::to_owned) else {
                    continue;
                };
                if path.extension().and_then(|e| e.to_str()) != Some("json") {
                    continue;
                }
                let journal: Journal = serde_json::from_slice(&std::fs::read(&path)?)
                    .with_context(|| format!("journal {} is unreadable; restore the files by hand", path.display()))?;
                // A journal is written after the run's first records are
                // durable, so its run is either unfinished or ended. An
                // ended run (committed, or already rolled back) only left its
                // journal because the crash came before the cleanup: never
                // undo or redo anything for it now, files may have changed
                // legitimately since.
                if unfinished.contains(&run) {
                    let restored = journal.rollback()?;
                    self.log.append(
                        &run,
                        Event::Interrupted {
                            restored,
                            detail: "found a commit in progress at start; rolled back".into(),
                        },
                    )?;
                    self.log.append(&run, Event::Completed { outcome: Outcome::Interrupted })?;
                    terminal.insert(run.clone());
                    recovered.push(run.clone());
                }
                journal.finalize()?;
                std::fs::remove_file(&path)?;
            }
        }
        for run in open {
            if !terminal.contains(&run) {
                self.log.append(
                    &run,
                    Event::Interrupted {
                        restored: 0,
                        detail: "run ended without a terminal record; nothing was committed".into(),
                    },
                )?;
                self.log.append(&run, Event::Completed { outcome: Outcome::Interrupted })?;
                recovered.push(run);
            }
        }
        let staging_dir = self.config.state_dir.join("staging");
        if staging_dir.exists() {
            std::fs::remove_dir_all(&staging_dir).context("cannot clear stale staging copies")?;
        }
        Ok(recovered)
    }
}
