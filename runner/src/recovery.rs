//! Recovery on start: every run the log shows unfinished is rolled back
//! (from its commit journal, when one exists) and closed as interrupted,
//! before the runner does anything else.

use std::collections::{BTreeSet, HashSet};

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
        // Runs in order of their first record, and those that ended.
        let mut open: Vec<String> = Vec::new();
        let mut terminal: BTreeSet<String> = BTreeSet::new();
        {
            let mut seen: HashSet<&str> = HashSet::new();
            let records = self.log.records();
            for r in records.iter() {
                match &r.event {
                    Event::Completed { .. } => {
                        terminal.insert(r.run.clone());
                    }
                    // Runner-level records (key events, policy changes,
                    // expiries) are not part of any run.
                    _ if edge_evidence::RUNNER_RUNS.contains(&r.run.as_str()) => {}
                    _ if seen.insert(r.run.as_str()) => open.push(r.run.clone()),
                    _ => {}
                }
            }
        }
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
                match terminal.get(&run) {
                    // The run ended (committed, or already rolled back): its
                    // journal only lingers because the crash came before the
                    // cleanup. Never undo or redo anything for it now: files
                    // may have changed legitimately since.
                    Some(_) => {}
                    None => {
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
