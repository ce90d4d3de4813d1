//! One run as it goes through the stages: its report, the stage it stopped
//! at and why, and the helpers every stage records with.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Result;
use edge_core::Sha256Digest;
use edge_core::canonical;
use edge_core::evidence::{Event, Outcome, Record};
use edge_core::plan::{DiffEntry, Plan};
use edge_core::policy::Decision;
use serde::Serialize;

use super::Runner;
use crate::sandbox::Captured;
use crate::store::log::RunLog;

/// The stages of a run, in order. A refusal names the one it came from
/// (the `stage` of a `refused` record).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    /// The capsule file itself (container, manifest, component digest).
    Submission,
    /// Signature, compilation, imports ⊆ declared ⊆ granted.
    Admit,
    /// Policy over the blast radius.
    Decide,
    /// The read-only `plan` phase and the plan's validation.
    Plan,
    /// The staged result described for approvers, kept while they decide.
    Preview,
    /// Approvals and the quorum, bound to the plan.
    Authorize,
    /// Copying writable mounts into staging.
    Stage,
    /// The `apply` phase against the staged copies.
    Apply,
    /// The staged result compared with the plan.
    Diff,
    /// Preconditions and the journaled commit.
    Commit,
    /// The `verify` phase against the live mounts.
    Verify,
    /// The runner itself failed (I/O, disk full).
    Runner,
}

impl Stage {
    /// The name recorded in evidence.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Submission => "submission",
            Self::Admit => "admit",
            Self::Decide => "decide",
            Self::Plan => "plan",
            Self::Preview => "preview",
            Self::Authorize => "authorize",
            Self::Stage => "stage",
            Self::Apply => "apply",
            Self::Diff => "diff",
            Self::Commit => "commit",
            Self::Verify => "verify",
            Self::Runner => "runner",
        }
    }
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A stage's reason to refuse a run: every variant of a stage's error enum
/// has a stable reason code (documented in `docs/reason-codes.md`).
pub trait StageError: std::fmt::Display {
    /// The stage that refused.
    fn stage(&self) -> Stage;
    /// The stable reason code.
    fn reason_code(&self) -> &'static str;
}

/// Why a run stopped before committing anything.
#[derive(Debug, Clone, Serialize)]
pub struct Refusal {
    pub stage: Stage,
    pub reason_code: &'static str,
    pub detail: String,
}

/// How a stage ends the run early.
#[derive(Debug)]
pub(crate) enum Stop {
    /// Refused: the driver records the refusal and closes the run.
    Refused(Refusal),
    /// The run already ended, its terminal record written (awaiting
    /// approval, rolled back).
    Ended,
    /// The runner itself failed; the run is closed as `runner.error`.
    Failed(anyhow::Error),
}

impl<E: StageError> From<E> for Stop {
    fn from(e: E) -> Self {
        Self::Refused(Refusal { stage: e.stage(), reason_code: e.reason_code(), detail: e.to_string() })
    }
}

/// The runner failing (not the capsule): `.or_fail()?` on an I/O or
/// serialisation result in a stage. Explicit, so a capsule's error is never
/// turned into a runner failure by a bare `?`.
pub(crate) trait Fails<T> {
    fn or_fail(self) -> Result<T, Stop>;
}

impl<T, E: Into<anyhow::Error>> Fails<T> for Result<T, E> {
    fn or_fail(self) -> Result<T, Stop> {
        self.map_err(|e| Stop::Failed(e.into()))
    }
}

/// What a run did, for the CLI, the API and tests.
#[derive(Debug, Serialize)]
pub struct RunReport {
    pub run: String,
    pub outcome: Outcome,
    pub capsule: Option<Sha256Digest>,
    pub name: Option<String>,
    pub signer: Option<String>,
    pub tier: Option<u8>,
    pub decision: Option<Decision>,
    pub plan: Option<Plan>,
    pub plan_digest: Option<Sha256Digest>,
    pub diff: Vec<DiffEntry>,
    /// What each changed file looks like, with the content it shows.
    #[serde(skip)]
    pub shown: Option<edge_core::preview::Shown>,
    /// The waiting proposal this run continued (approvals were presented).
    pub resumed: Option<String>,
    pub verification: Option<VerificationReport>,
    /// The proposal document written when the run awaits approval.
    pub proposal: Option<PathBuf>,
    /// The capsule file of a run that awaits approval (written out again
    /// from what was admitted), for the service to keep until the approvals
    /// come: so that it need not hold a copy of every capsule it runs.
    #[serde(skip)]
    pub waiting_capsule: Option<Vec<u8>>,
    /// Where the run's receipt was written (command-line runs).
    pub receipt: Option<PathBuf>,
    /// The run's receipt: a C2SP tlog-proof of its terminal record against
    /// a signed checkpoint.
    pub receipt_proof: Option<String>,
    /// The quorum outcome, when approvals were presented.
    pub quorum: Option<serde_json::Value>,
    pub refusal: Option<Refusal>,
    pub captured: BTreeMap<String, Captured>,
    pub records: Vec<Record>,
    /// The authenticated agent that submitted the capsule (API submissions).
    pub submitted_by: Option<String>,
    /// The run's appends to the evidence log (its records, once durable).
    #[serde(skip)]
    pub(crate) log: RunLog,
    /// The run's requests to endpoints so far (they are numbered across
    /// its phases).
    #[serde(skip)]
    pub(crate) calls_made: u32,
    /// The bodies of this run's planned calls, by digest (kept as
    /// artifacts too).
    #[serde(skip)]
    pub(crate) call_bodies: BTreeMap<Sha256Digest, Vec<u8>>,
    /// What approvers see of each planned body, by its digest (the body,
    /// or masked); absent: its digest only.
    #[serde(skip)]
    pub(crate) call_shown: BTreeMap<Sha256Digest, Vec<u8>>,
    /// The endpoints' preview modes the resumed proposal recorded.
    #[serde(skip)]
    pub(crate) held_previews: BTreeMap<String, edge_core::preview::PreviewMode>,
    /// The mount locks the run holds, until its cleanup is done.
    #[serde(skip)]
    pub(crate) mount_guards: Vec<MountGuard>,
    /// What governs this run: the policy, signers and approvers in force
    /// when it started (a reload meanwhile does not change them).
    #[serde(skip)]
    pub(crate) governance: std::sync::Arc<crate::governance::Governance>,
}

#[derive(Debug, Clone, Serialize)]
pub struct VerificationReport {
    pub passed: bool,
    pub summary: String,
    pub findings: Vec<edge_core::plan::Finding>,
}

/// The mount locks a run holds (released when dropped).
#[derive(Debug)]
pub(crate) enum MountGuard {
    Read(#[allow(dead_code)] tokio::sync::OwnedRwLockReadGuard<()>),
    Write(#[allow(dead_code)] tokio::sync::OwnedRwLockWriteGuard<()>),
}

impl RunReport {
    pub(crate) fn new(run: &str, log: RunLog, governance: std::sync::Arc<crate::governance::Governance>) -> Self {
        Self {
            run: run.to_owned(),
            outcome: Outcome::Refused,
            capsule: None,
            name: None,
            signer: None,
            tier: None,
            decision: None,
            plan: None,
            plan_digest: None,
            diff: Vec::new(),
            shown: None,
            resumed: None,
            verification: None,
            proposal: None,
            waiting_capsule: None,
            receipt: None,
            receipt_proof: None,
            quorum: None,
            refusal: None,
            captured: BTreeMap::new(),
            records: Vec::new(),
            submitted_by: None,
            log,
            calls_made: 0,
            call_bodies: BTreeMap::new(),
            call_shown: BTreeMap::new(),
            held_previews: BTreeMap::new(),
            mount_guards: Vec::new(),
            governance,
        }
    }

    /// Record a step. Deferred: the records of a step become durable
    /// together at the next barrier, which comes before every effect they
    /// announce (a guest running, a live mount or journal touched, the end
    /// of the run).
    pub(crate) fn record(&mut self, event: Event) -> Result<(), Stop> {
        self.log.append_deferred(&self.run, event).or_fail()
    }

    /// Make every record so far durable (before an effect they announce).
    pub(crate) async fn barrier(&mut self) -> Result<(), Stop> {
        self.log.barrier().await.or_fail()
    }

    /// Keep bytes as an artifact of the run.
    pub(crate) fn artifact(&mut self, bytes: &[u8]) -> Result<Sha256Digest, Stop> {
        self.log.put_artifact(bytes).or_fail()
    }

    /// End the run with a terminal record of `outcome`.
    pub(crate) fn close(&mut self, outcome: Outcome) -> Result<(), Stop> {
        self.record(Event::Completed { outcome })?;
        self.outcome = outcome;
        Ok(())
    }
}

impl Runner {
    /// Record a refusal and close the run (details are bounded and free of
    /// granted env values: they can carry guest text).
    pub(crate) fn refuse(&self, report: &mut RunReport, refusal: Refusal) -> Result<()> {
        let detail = truncate(self.redact(&refusal.detail), 2048);
        let stage = refusal.stage.as_str().to_owned();
        let reason_code = refusal.reason_code.to_owned();
        report.log.append_deferred(&report.run, Event::Refused { stage, reason_code, detail: detail.clone() })?;
        report.log.append_deferred(&report.run, Event::Completed { outcome: Outcome::Refused })?;
        report.outcome = Outcome::Refused;
        report.refusal = Some(Refusal { detail, ..refusal });
        Ok(())
    }

    /// Keep what a phase printed, logged and found (redacted) as an artifact.
    pub(crate) fn store_output(
        &self,
        report: &mut RunReport,
        phase: &str,
        mut captured: Captured,
    ) -> Result<Option<Sha256Digest>, Stop> {
        if captured.is_empty() {
            return Ok(None);
        }
        captured.stdout = self.redact(&captured.stdout);
        captured.stderr = self.redact(&captured.stderr);
        for line in &mut captured.log {
            *line = self.redact(line);
        }
        for f in &mut captured.findings {
            f.message = self.redact(&f.message);
        }
        let bytes = canonical::to_canonical_vec(&captured).or_fail()?;
        let d = report.artifact(&bytes)?;
        report.captured.insert(phase.to_owned(), captured);
        Ok(Some(d))
    }

    /// Environment values may be secrets: guest text (output, findings,
    /// error messages, verify summaries) must not carry them into evidence.
    /// The plan is bound to its digest and cannot be rewritten: a capsule
    /// could still encode a granted value there (docs/foundation.md).
    pub(crate) fn redact(&self, s: &str) -> String {
        redact_env(self.config.env.iter().map(|(k, v)| (k.as_str(), v.as_str())), s)
    }
}

/// `s` with every granted environment value (of 4 bytes or more) replaced
/// by a mark naming its variable.
pub(crate) fn redact_env<'a>(env: impl Iterator<Item = (&'a str, &'a str)>, s: &str) -> String {
    let mut out = s.to_owned();
    for (name, value) in env {
        if value.len() >= 4 && out.contains(value) {
            out = out.replace(value, &format!("[env {name} redacted]"));
        }
    }
    out
}

fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let cut = (0..=max).rev().find(|i| s.is_char_boundary(*i)).unwrap_or(0);
        s.truncate(cut);
        s.push_str(" …(truncated)");
    }
    s
}
