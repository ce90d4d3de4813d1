//! Recovery on start: every run the log shows unfinished is rolled back
//! (from its commit journal, when one exists) and closed as interrupted,
//! before the runner does anything else.

use std::collections::BTreeSet;
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;

use anyhow::{Context, Result};
use edge_core::evidence::{Event, Outcome};
use edge_core::lifecycle::State;

use super::Runner;
use crate::config::endpoints::EndpointConfig;
use crate::staging::Journal;

/// Send one compensation from synchronous start-up code (on its own thread
/// and runtime: the caller may be inside one). Returns the status, the
/// body's digest and size.
fn send_now(
    ep: &EndpointConfig,
    r: &edge_core::calls::Request,
    body: Vec<u8>,
) -> std::result::Result<(u16, edge_core::Sha256Digest, u64), (&'static str, String)> {
    std::thread::scope(|s| {
        s.spawn(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| ("runner.error", format!("no runtime: {e}")))?;
            rt.block_on(crate::sandbox::egress::exchange(
                ep,
                &r.method,
                &r.path,
                r.content_type.as_deref(),
                None,
                bytes::Bytes::from(body),
                None,
            ))
            .map(|(status, _, b)| (status.as_u16(), edge_core::Sha256Digest::of(&b), b.len() as u64))
            .map_err(|f| (f.reason_code, f.detail))
        })
        .join()
        .unwrap_or_else(|_| Err(("runner.error", "the compensation thread panicked".into())))
    })
}

/// Inside the staging directory: copies whose removal failed, retried at start.
const TRASH: &str = ".trash";

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
            if !terminal.contains(&run) && self.compensate_interrupted(&run)? {
                recovered.push(run);
                continue;
            }
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
        // Stale staging copies and earlier failed cleanups: removed, or kept
        // in the trash and recorded; never a reason not to start.
        if let Ok(entries) = std::fs::read_dir(&self.config.staging_dir) {
            for e in entries.flatten() {
                if e.file_name() != TRASH {
                    self.discard_staging(&e.path());
                }
            }
        }
        self.empty_trash();
        // Kept previews of proposals that no longer wait (ended, expired,
        // or never recorded as waiting: a crash between keeping and recording).
        if let Ok(entries) = std::fs::read_dir(self.config.state_dir.join("previews")) {
            for e in entries.flatten() {
                let id = e.file_name().to_string_lossy().into_owned();
                // Unreadable store: keep it (the next start looks again).
                let waits =
                    self.log.proposal(&id).map_or(true, |v| v.is_some_and(|v| v.state == State::AwaitingApproval));
                if !waits {
                    self.drop_preview(&id);
                }
            }
        }
        Ok(recovered)
    }

    /// A run interrupted after `apply` made calls: send the recorded
    /// compensations of the calls it made (and did not undo yet), last
    /// first, each recorded write-ahead, and close it — interrupted when
    /// every one succeeded, failed otherwise. False when it made no call.
    ///
    /// # Errors
    /// If its records cannot be read or written.
    fn compensate_interrupted(&self, run: &str) -> Result<bool> {
        let records = self.log.read_records_at(&self.log.run_seqs(run)?)?;
        let mut plan_digest = None;
        let mut proposal = edge_core::lifecycle::proposal_id(run);
        let mut made: Vec<u32> = Vec::new();
        let mut undone: BTreeSet<u32> = BTreeSet::new();
        let mut calls = 0;
        for r in &records {
            match &r.event {
                Event::Planned { plan, .. } => plan_digest = Some(*plan),
                Event::Resumed { plan, proposal: p, .. } => {
                    plan_digest = Some(*plan);
                    proposal.clone_from(p);
                }
                Event::CallIntent { phase, call, planned, .. } => {
                    calls = calls.max(*call);
                    match (phase.as_str(), planned) {
                        ("apply", Some(i)) => made.push(*i),
                        ("compensate", Some(i)) => {
                            undone.insert(*i);
                        }
                        _ => {}
                    }
                }
                _ => {}
            }
        }
        if made.is_empty() {
            return Ok(false);
        }
        let plan: edge_core::plan::Plan = plan_digest
            .and_then(|d| self.log.read_artifact(&d).ok().flatten())
            .and_then(|b| serde_json::from_slice(&b).ok())
            .with_context(|| format!("run {run} made calls but its plan is not in the store"))?;
        let redact = |s: &str| self.redact(s);
        let previews = self.held_previews(&proposal);
        let mut failed = Vec::new();
        let mut restored = 0;
        made.sort_unstable();
        for i in made.into_iter().rev().filter(|i| !undone.contains(i)) {
            let Some(comp) = plan.calls.get(i as usize).and_then(|c| c.compensation.clone()) else { continue };
            calls += 1;
            // The exact body the plan names; if it is gone, the compensation
            // is not sent with another (it fails, loudly, below).
            let body = match &comp.body {
                Some(d) => self.kept_call_body(&proposal, d)?,
                None => Some(Vec::new()),
            };
            // The endpoint as the proposal's approvers saw it previewed
            // (its mode only ever tightened since).
            let ep = self.config.endpoints.get(&comp.endpoint).map(|ep| ep.held(&previews));
            let intent = crate::sandbox::egress::intent_event(
                ("compensate", calls, Some(i)),
                &comp,
                body.as_deref().unwrap_or_default(),
                ep.as_deref().filter(|_| body.is_some()),
                |b| self.log.put_artifact(b),
            )?;
            self.log.append(run, intent)?;
            let result = match (ep, body) {
                (Some(ep), Some(body)) => send_now(&ep, &comp, body),
                (None, _) => {
                    Err(("call.undeclared_endpoint", format!("endpoint `{}` is no longer configured", comp.endpoint)))
                }
                (Some(_), None) => {
                    Err(("call.body_missing", "the compensation's planned body is no longer kept: not sent".to_owned()))
                }
            };
            let event = match result {
                Ok((status, digest, bytes)) => {
                    if (200..300).contains(&status) {
                        restored += 1;
                    } else {
                        failed.push(comp.line());
                    }
                    Event::CallOutcome {
                        call: calls,
                        status: Some(status),
                        headers: Default::default(),
                        body: Some(digest),
                        bytes,
                        content: None,
                        reason_code: None,
                        detail: None,
                    }
                }
                Err((code, detail)) => {
                    failed.push(comp.line());
                    Event::CallOutcome {
                        call: calls,
                        status: None,
                        headers: Default::default(),
                        body: None,
                        bytes: 0,
                        content: None,
                        reason_code: Some(code.into()),
                        detail: Some(redact(&detail)),
                    }
                }
            };
            self.log.append(run, event)?;
        }
        let detail = "found a run interrupted after it called endpoints; sent the compensations of its calls";
        self.log.append(
            run,
            Event::RolledBack { reason_code: "runner.interrupted".into(), detail: detail.into(), restored },
        )?;
        self.log.append(run, Event::Interrupted { restored, detail: detail.into() })?;
        let outcome = if failed.is_empty() {
            Outcome::Interrupted
        } else {
            tracing::error!(run, calls = ?failed, "a compensation failed at start: the service may be left changed");
            self.log.append(
                run,
                Event::Refused {
                    stage: "apply".into(),
                    reason_code: "call.compensation_failed".into(),
                    detail: format!("{} compensation(s) failed at start ({})", failed.len(), failed.join(", ")),
                },
            )?;
            Outcome::Failed
        };
        self.log.append(run, Event::Completed { outcome })?;
        Ok(true)
    }

    /// Remove a run's staging copy (a tree the capsule shaped: see
    /// [`crate::store::fs::remove_tree`]). When that fails, the copy is moved
    /// to `<staging>/.trash/` (same filesystem), the failure is recorded (run `runner`,
    /// `cleanup-failed`) and removal is retried at every start: one bad copy
    /// never blocks the next run or the next start.
    pub(crate) fn discard_staging(&self, dir: &Path) {
        if std::fs::symlink_metadata(dir).is_err() {
            return;
        }
        let Err(e) = crate::store::fs::remove_tree(dir) else { return };
        let trash = self.config.staging_dir.join(TRASH);
        let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let dest = trash.join(format!("{name}-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]));
        let kept = std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&trash).is_ok()
            && std::fs::rename(dir, &dest).is_ok();
        let path = if kept { &dest } else { dir };
        tracing::warn!(path = %path.display(), error = %e, "cannot remove a staging copy; kept for a retry at start");
        let event = Event::CleanupFailed { path: path.display().to_string(), error: e.to_string() };
        if let Err(e) = self.log.append("runner", event) {
            tracing::error!(error = %format!("{e:#}"), "cannot record a failed cleanup");
        }
    }

    /// Retry removing what earlier cleanups could not.
    fn empty_trash(&self) {
        let Ok(entries) = std::fs::read_dir(self.config.staging_dir.join(TRASH)) else { return };
        for e in entries.flatten() {
            if let Err(err) = crate::store::fs::remove_tree(&e.path()) {
                tracing::warn!(path = %e.path().display(), error = %err, "cannot remove an earlier staging copy yet");
            }
        }
    }
}
