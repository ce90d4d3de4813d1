//! One governed run, end to end:
//!
//! ```text
//! parse ─► verify signature ─► admit ─► decide ─► plan (read-only) ─► authorize
//!       ─► stage ─► apply (staged copy) ─► diff == plan? ─► preconditions hold?
//!       ─► commit (journaled) ─► verify ─► finalize | roll back
//! ```
//!
//! Every step appends an evidence record, durably, *before* its effect; a
//! refusal at any step is recorded with a stable reason code and ends the run
//! with a terminal `completed` record. Nothing on the host changes unless the
//! diff equals the plan and the plan's preconditions still hold.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use edge_core::Sha256Digest;
use edge_core::admission::{self, Admitted};
use edge_core::authorize::{self, Decision};
use edge_core::canonical;
use edge_core::container::CapsuleFile;
use edge_core::evidence::{Event, Outcome, Record};
use edge_core::plan::{self, DiffEntry, Plan, ValidPlan};
use edge_core::policy::DecisionInput;
use edge_core::signature;
use edge_core::snapshot;
use serde::Serialize;

use edge_core::note::NoteSigner;

use crate::config::RunnerConfig;
use crate::policy_files::PolicySet;
use crate::sandbox::{CapsulePre, Captured, HostState, PhaseInput, PhaseMount, Sandbox, SandboxError, Verification};
use crate::staging::{self, Journal};
use crate::store::log::{EvidenceLog, RunLog};

/// Largest total file content staged per writable mount.
pub const MAX_STAGE_BYTES: u64 = 256 << 20;

/// Why a run stopped before committing anything.
#[derive(Debug, Clone, Serialize)]
pub struct Refusal {
    pub stage: String,
    pub reason_code: String,
    pub detail: String,
}

/// What a run did, for the CLI and tests.
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
    pub verification: Option<VerificationReport>,
    /// The proposal document written when the run awaits approval.
    pub proposal: Option<PathBuf>,
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
    /// The mount locks the run holds, until its cleanup is done.
    #[serde(skip)]
    mount_guards: Vec<MountGuard>,
}

#[derive(Debug, Clone, Serialize)]
pub struct VerificationReport {
    pub passed: bool,
    pub summary: String,
}

impl RunReport {
    fn new(run: &str, log: RunLog) -> Self {
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
            verification: None,
            proposal: None,
            receipt: None,
            receipt_proof: None,
            quorum: None,
            refusal: None,
            captured: BTreeMap::new(),
            records: Vec::new(),
            submitted_by: None,
            log,
            mount_guards: Vec::new(),
        }
    }
}

/// A capsule as submitted: a capsule file, or one assembled from parts.
#[derive(Debug)]
pub enum Submitted<'a> {
    Bytes(&'a [u8]),
    File(Box<CapsuleFile>),
}

/// The runner: config, sandbox and evidence log, for one process. Runs may
/// proceed concurrently (`&self`): the evidence store commits their records
/// in groups, runs touching the same mount are serialised by that mount's
/// lock, and quorum evaluation (which consumes approval nonces) by one lock.
#[derive(Debug)]
pub struct Runner {
    pub config: RunnerConfig,
    pub sandbox: Sandbox,
    pub log: EvidenceLog,
    /// Signs checkpoints; its name is the log origin (`runner.name`).
    pub identity: std::sync::Arc<NoteSigner>,
    /// One lock per configured mount: shared for runs that only read it,
    /// exclusive from plan to the end of the run for runs that write it.
    mount_locks: BTreeMap<String, std::sync::Arc<tokio::sync::RwLock<()>>>,
    /// Held while approvals are counted and their nonces consumed, and while
    /// proposals are expired: a proposal is settled once.
    pub(crate) settling: tokio::sync::Mutex<()>,
    /// Write each run's receipt to `<state>/receipts/<run>.tlog-proof`
    /// (command-line runs); the daemon returns it in the answer instead (a
    /// file per run was a fifth of its CPU, in the file system).
    pub receipt_files: bool,
}

/// The mount locks a run holds (released when dropped).
#[derive(Debug)]
enum MountGuard {
    Read(#[allow(dead_code)] tokio::sync::OwnedRwLockReadGuard<()>),
    Write(#[allow(dead_code)] tokio::sync::OwnedRwLockWriteGuard<()>),
}

impl Runner {
    /// Open the evidence log (verifying it), build the sandbox and recover
    /// any run a crash left unfinished.
    ///
    /// # Errors
    /// If the log is broken or locked, or the sandbox cannot be built.
    pub fn open(config: RunnerConfig) -> Result<Self> {
        std::fs::create_dir_all(&config.state_dir)
            .with_context(|| format!("cannot create state dir {}", config.state_dir.display()))?;
        let log = EvidenceLog::open(&config.state_dir.join("evidence"))?;
        let identity = std::sync::Arc::new(crate::identity::load_identity(&config)?);
        let sandbox = Sandbox::new(&config.cache_dir, config.ceiling.max_limits.memory_mib)?;
        let mount_locks = config.mounts.keys().map(|k| (k.clone(), std::sync::Arc::default())).collect();
        let settling = tokio::sync::Mutex::new(());
        let mut runner = Self { config, sandbox, log, identity, mount_locks, settling, receipt_files: true };
        // Before anything is appended: the store must hold what this runner signed.
        runner.check_signed_history()?;
        runner.record_identity()?;
        runner.recover()?;
        runner.record_policy_in_force()?;
        if !runner.config.dangerous.is_empty() {
            tracing::warn!(switches = ?runner.config.dangerous, "running with insecure switches");
            runner.log.append("runner", Event::Insecure { switches: runner.config.dangerous.clone() })?;
        }
        // From the first start on, the newest signed checkpoint is kept
        // outside the database (a crash before the WAL thread wrote it must
        // not look like a deleted file at the next start).
        runner.checkpoint()?;
        crate::store::trust::publish_now(runner.log.dir())?;
        Ok(runner)
    }

    /// Sign a checkpoint of the whole log now.
    ///
    /// # Errors
    /// If it cannot be stored.
    pub fn checkpoint(&self) -> Result<String> {
        self.log.checkpoint(&self.identity, &self.config.name)
    }

    /// A handle for concurrent appends to the evidence store.
    pub fn store(&self) -> crate::store::log::StoreHandle {
        self.log.handle()
    }

    /// Export the log (or part of it) as a bundle, signing a checkpoint now.
    ///
    /// # Errors
    /// As [`crate::export::export`].
    pub fn export(&self, scope: &crate::export::ExportScope) -> Result<crate::export::Exported> {
        crate::export::export(&self.log, &self.identity, &self.config.name, scope)
    }

    /// The policy and graph digests the log last recorded as in force.
    fn recorded_policy(&self) -> (Option<Sha256Digest>, Option<Sha256Digest>) {
        self.log.index().policy
    }

    /// If the policy or graph in force differs from what the log last
    /// recorded, record the change (with both documents as artifacts) before
    /// any decision uses it.
    fn record_policy_in_force(&mut self) -> Result<()> {
        let (old_policy, old_graph) = self.recorded_policy();
        let (new_policy, new_graph) = match &self.config.policy {
            Some(p) => (Some(p.policy.digest()), Some(p.graph.digest())),
            None => (None, None),
        };
        if (old_policy, old_graph) == (new_policy, new_graph) {
            return Ok(());
        }
        if let Some(p) = &self.config.policy {
            let (pt, gt) = (p.policy_text.clone(), p.graph_text.clone());
            self.log.put_artifact(pt.as_bytes())?;
            self.log.put_artifact(gt.as_bytes())?;
        }
        self.log.append("policy", Event::PolicyChange { old_policy, new_policy, old_graph, new_graph })?;
        Ok(())
    }

    /// Reload the policy and graph from their files. A new policy takes
    /// effect atomically (one assignment, recorded first); a bad one is
    /// refused, recorded, and the last good one stays in force.
    ///
    /// # Errors
    /// Only if the evidence log cannot be written. A refused reload returns
    /// `Ok(false)`.
    pub fn reload_policy(&mut self) -> Result<bool> {
        let Some(current) = &self.config.policy else { return Ok(false) };
        let (policy_path, graph_path) = (current.policy_path.clone(), current.graph_path.clone());
        let kept = Some(current.policy.digest());
        let has_root = self.config.signers.has_trusted_root();
        let loaded = PolicySet::load(&policy_path, &graph_path).and_then(|set| {
            set.check_nodes(&self.config.nodes)?;
            if !has_root && set.policy.signers().iter().any(|s| s.is_keyless()) {
                anyhow::bail!("the policy trusts keyless signers but no `sigstore.trusted_root` is configured");
            }
            Ok(set)
        });
        match loaded {
            Ok(set) => {
                let signers = set.policy.signers().to_vec();
                let old = self.config.policy.replace(set);
                if let Err(e) = self.record_policy_in_force() {
                    self.config.policy = old;
                    return Err(e);
                }
                self.config.signers.set_signers(signers);
                Ok(true)
            }
            Err(e) => {
                let file = format!("{} / {}", policy_path.display(), graph_path.display());
                self.log.append("policy", Event::PolicyRefused { file, error: format!("{e:#}"), kept_policy: kept })?;
                Ok(false)
            }
        }
    }

    /// Run a capsule file through every gate.
    ///
    /// # Errors
    /// Only for failures of the runner itself (evidence log, filesystem);
    /// refusals of the capsule are reported in the [`RunReport`].
    pub async fn exec(&self, capsule_bytes: &[u8]) -> Result<RunReport> {
        self.exec_with_approvals(capsule_bytes, &[]).await
    }

    /// Run a capsule, presenting approval files for a proposal above tier 0.
    ///
    /// # Errors
    /// As [`Runner::exec`].
    pub async fn exec_with_approvals(&self, capsule_bytes: &[u8], approvals: &[Vec<u8>]) -> Result<RunReport> {
        self.exec_submitted(capsule_bytes, approvals, None).await
    }

    /// Run a capsule submitted by an authenticated agent (recorded in the
    /// submission record).
    ///
    /// # Errors
    /// As [`Runner::exec`].
    pub async fn exec_submitted(
        &self,
        capsule_bytes: &[u8],
        approvals: &[Vec<u8>],
        submitted_by: Option<&str>,
    ) -> Result<RunReport> {
        self.exec_capsule(Submitted::Bytes(capsule_bytes), approvals, submitted_by).await
    }

    /// Run a capsule given as a file or already assembled (a submission by
    /// reference: [`CapsuleFile::from_parts`] made the same checks as
    /// parsing a file).
    ///
    /// # Errors
    /// As [`Runner::exec`].
    pub async fn exec_capsule(
        &self,
        capsule: Submitted<'_>,
        approvals: &[Vec<u8>],
        submitted_by: Option<&str>,
    ) -> Result<RunReport> {
        let run = new_run_id();
        let mut report = RunReport::new(&run, self.log.run_log());
        report.submitted_by = submitted_by.map(str::to_owned);
        let mut result = self.exec_inner(capsule, approvals, &mut report).await;
        // Every record of the run durable before anything reads the log or
        // the client hears of it; the checkpoint sealing it is signed in the
        // same commit (queued after the records).
        let synced = report.log.barrier_with_checkpoint(&self.identity, &self.config.name).await;
        let mut sealed_by = None;
        match synced {
            Ok(note) => sealed_by = Some(note),
            Err(e) if result.is_ok() => result = Err(e),
            Err(_) => {}
        }
        let closed_already = report.log.records().iter().any(Record::is_terminal);
        if let Err(e) = &result
            && !closed_already
        {
            // The runner itself failed (I/O, disk full, …). Undo any commit in
            // progress and close the run with a recorded denial while the log
            // can still be written (fail closed); if it cannot, recovery on
            // the next start closes the run as interrupted.
            let detail = format!("{e:#}");
            let journal_path = staging::journal_path(&self.config.state_dir, &run);
            let mut restored = 0;
            if let Ok(bytes) = std::fs::read(&journal_path)
                && let Ok(journal) = serde_json::from_slice::<Journal>(&bytes)
                && let Ok(n) = journal.rollback()
            {
                restored = n;
                let _ = journal.finalize();
                let _ = std::fs::remove_file(&journal_path);
            }
            let refused =
                Event::Refused { stage: "runner".into(), reason_code: "runner.error".into(), detail: detail.clone() };
            let closed = match report.log.append_deferred(&run, refused) {
                Ok(()) => report.log.append(&run, Event::Completed { outcome: Outcome::Refused }).await.map(drop),
                Err(e) => Err(e),
            };
            if closed.is_ok() {
                report.outcome = Outcome::Refused;
                report.refusal = Some(Refusal {
                    stage: "runner".into(),
                    reason_code: "runner.error".into(),
                    detail: format!("{detail} ({restored} file(s) restored)"),
                });
                result = Ok(());
            }
        }
        self.discard_staging(&self.config.staging_dir.join(&run));
        // Rolled back and cleaned up: the next run may have the mounts.
        report.mount_guards.clear();
        if result.is_ok() {
            self.seal(&mut report, sealed_by).await?;
        }
        report.records = report.log.take_records();
        result.map(|()| report)
    }

    /// Record a step. Deferred: the records of a step become durable
    /// together at the next barrier, which comes before every effect they
    /// announce (a guest running, a live mount or journal touched, the end
    /// of the run).
    pub(crate) fn record(&self, report: &mut RunReport, event: Event) -> Result<()> {
        report.log.append_deferred(&report.run, event)
    }

    pub(crate) fn refuse(&self, report: &mut RunReport, stage: &str, code: &str, detail: String) -> Result<()> {
        // Details can carry guest text (error messages): keep records
        // bounded and free of granted env values.
        let detail = truncate(self.redact(&detail), 2048);
        self.record(report, Event::Refused { stage: stage.into(), reason_code: code.into(), detail: detail.clone() })?;
        self.record(report, Event::Completed { outcome: Outcome::Refused })?;
        report.outcome = Outcome::Refused;
        report.refusal = Some(Refusal { stage: stage.into(), reason_code: code.into(), detail });
        Ok(())
    }

    fn store_output(
        &self,
        report: &mut RunReport,
        phase: &str,
        mut captured: Captured,
    ) -> Result<Option<Sha256Digest>> {
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
        let bytes = canonical::to_canonical_vec(&captured)?;
        let d = report.log.put_artifact(&bytes)?;
        report.captured.insert(phase.to_owned(), captured);
        Ok(Some(d))
    }

    async fn exec_inner(&self, capsule: Submitted<'_>, approvals: &[Vec<u8>], report: &mut RunReport) -> Result<()> {
        // 1. Parse: manifest canonical, component matches its pinned digest.
        let parsed = match capsule {
            Submitted::Bytes(b) => CapsuleFile::parse(b).map_err(|e| (e, Sha256Digest::of(b))),
            Submitted::File(f) => Ok(*f),
        };
        let file = match parsed {
            Ok(f) => f,
            Err((e, file_digest)) => {
                let detail = format!("{e} (capsule file {file_digest})");
                return self.refuse(report, "submission", e.reason_code(), detail);
            }
        };
        let m = file.manifest().clone();
        report.capsule = Some(file.digest());
        report.name = Some(format!("{}@{}", m.name, m.version));
        let manifest_d = report.log.put_artifact(file.manifest_bytes())?;
        // The container checked the component against the pinned digest.
        report.log.put_artifact_digested(m.component.sha256, file.component())?;
        let bundle_d = file.bundle().map(|b| report.log.put_artifact(b)).transpose()?;
        self.record(
            report,
            Event::Submission {
                capsule: file.digest(),
                name: m.name.clone(),
                version: m.version.clone(),
                kind: format!("{:?}", m.kind).to_lowercase(),
                manifest: manifest_d,
                component: m.component.sha256,
                bundle: bundle_d,
                dangerous: self.config.dangerous.clone(),
                submitted_by: report.submitted_by.clone(),
            },
        )?;

        // 2. Signature.
        let verified = match signature::verify_capsule(file, &self.config.signers) {
            Ok(v) => v,
            Err(e) => return self.refuse(report, "admit", e.reason_code(), e.to_string()),
        };
        report.signer = Some(verified.signer().to_owned());

        // 3. Admission: compile (or load from cache), then imports ⊆ declared ⊆ granted.
        let loaded = match self.sandbox.load_shared(verified.file().component(), &m.component.sha256) {
            Ok(l) => l,
            Err(e) => {
                return self.refuse(report, "admit", "capsule.invalid_component", format!("{e:#}"));
            }
        };
        let admitted: Admitted = match admission::admit(verified, &loaded.imports, &self.config.ceiling) {
            Ok(a) => a,
            Err(e) => return self.refuse(report, "admit", e.reason_code(), e.to_string()),
        };
        let pre = match loaded.prepare(&self.sandbox) {
            Ok(p) => p,
            Err(e) => {
                return self.refuse(report, "admit", "admission.link_failed", format!("{e:#}"));
            }
        };
        let trusted_root = self.config.trusted_root.as_deref().map(|b| report.log.put_artifact(b)).transpose()?;
        let signer_label = format!("{} ({})", admitted.capsule().signer(), admitted.capsule().signer_detail());
        self.record(
            report,
            Event::Admitted {
                signer: signer_label,
                signer_key: admitted.capsule().signer_key().to_owned(),
                grant: serde_json::to_value(admitted.grant())?,
                imports: admitted.imports().to_vec(),
                trusted_root,
            },
        )?;

        // 4. Decision: from the policy and the blast radius of the grant,
        // recorded (with its input) before anything runs.
        let (evaluated, input_d) = match &self.config.policy {
            Some(set) => {
                let input = decision_input(&admitted, &self.config.nodes);
                let input_d = report.log.put_artifact(&canonical::to_canonical_vec(&input)?)?;
                (set.policy.evaluate(&set.graph, &input), Some(input_d))
            }
            // Config refuses to load without a policy unless the operator
            // set `dangerous_run_without_policy` (recorded in the submission).
            None => (authorize::Evaluated::dangerous_without_policy(), None),
        };
        let decision = evaluated.decision().clone();
        report.tier = Some(decision.tier);
        report.decision = Some(decision.clone());
        self.record(report, Event::Decision { decision, input: input_d })?;
        let decided = match authorize::decide(admitted, evaluated) {
            Ok(d) => d,
            Err(e) => return self.refuse(report, "decide", e.reason_code(), e.to_string()),
        };

        // 5. Plan, read-only.
        let grant = decided.admitted().grant().clone();
        let env: Vec<(String, String)> =
            grant.env.iter().map(|k| (k.clone(), self.config.env.get(k).cloned().unwrap_or_default())).collect();
        let live_mounts: Vec<PhaseMount> = grant
            .mounts
            .iter()
            .map(|g| PhaseMount {
                name: g.name.clone(),
                host_path: self.config.mounts[&g.name].path.clone(),
                writable: false,
            })
            .collect();
        let input = PhaseInput { params: &m.params, mounts: &live_mounts, env: &env };
        // Runs writing a mount hold it from here to the end of the run
        // (its cleanup included: see exec_capsule).
        report.mount_guards = self.lock_mounts(&grant).await;
        report.log.barrier().await?;
        let (planned, captured) = self.sandbox.plan(pre, &decided, &input).await;
        let output = self.store_output(report, "plan", captured)?;
        let raw_plan = match planned {
            Ok(p) => p,
            Err(e) => return self.refuse_sandbox(report, "plan", &e),
        };
        let valid: ValidPlan = match raw_plan.validate(&m, grant.limits.max_plan_changes as usize) {
            Ok(v) => v,
            Err(e) => return self.refuse(report, "plan", e.reason_code(), e.to_string()),
        };
        let plan_bytes = canonical::to_canonical_vec(valid.plan())?;
        let plan_d = report.log.put_artifact(&plan_bytes)?;
        debug_assert_eq!(plan_d, valid.digest());
        report.plan = Some(valid.plan().clone());
        report.plan_digest = Some(valid.digest());
        self.record(
            report,
            Event::Planned {
                plan: plan_d,
                summary: valid.plan().summary.clone(),
                changes: valid.plan().changes.len(),
                findings: valid.plan().findings.clone(),
                output,
            },
        )?;

        // 6. Authorize: bound to this plan. Tier 0 needs no approvals; above
        // it, wait for them, or verify the ones presented and count the quorum.
        let quorum = if decided.decision().tier == 0 {
            None
        } else if approvals.is_empty() {
            return self.await_approval(report, &decided, &valid).await;
        } else {
            match self.gather_quorum(report, &decided, &valid, approvals).await? {
                Some(met) => Some(met),
                None => return Ok(()),
            }
        };
        let authorized = match authorize::authorize(decided, valid, quorum) {
            Ok(a) => a,
            Err(e) => return self.refuse(report, "authorize", e.reason_code(), e.to_string()),
        };
        let (approvals_used, note) = match (authorized.quorum(), authorized.decision().policy) {
            (Some(q), _) if q.break_glass() => {
                (q.nonces().to_vec(), format!("BREAK-GLASS authorization of proposal {}", q.proposal()))
            }
            (Some(q), _) => (q.nonces().to_vec(), format!("quorum met for proposal {}", q.proposal())),
            (None, Some(p)) => (Vec::new(), format!("tier 0 under policy {p}: automatic, no approvals required")),
            (None, None) => (Vec::new(), "unapproved tier-0 run: no policy configured".into()),
        };
        self.record(report, Event::Authorized { tier: authorized.decision().tier, approvals: approvals_used, note })?;

        // Nothing to change: verify read-only and finish.
        if authorized.plan().plan().changes.is_empty() {
            report.log.barrier().await?;
            let (verified, captured) = self.sandbox.verify(pre, &authorized, &input).await;
            let output = self.store_output(report, "verify", captured)?;
            return match verified {
                Ok(v) => {
                    self.record_verification(report, &v, output)?;
                    if v.passed {
                        self.record(report, Event::Completed { outcome: Outcome::NoChanges })?;
                        report.outcome = Outcome::NoChanges;
                        Ok(())
                    } else {
                        self.refuse(report, "verify", "verify.failed", v.summary)
                    }
                }
                Err(e) => self.refuse_sandbox(report, "verify", &e),
            };
        }

        // 7. Stage writable mounts, apply against the copies.
        let stage_root = self.config.staging_dir.join(&report.run);
        let mut staged: BTreeMap<String, (PathBuf, snapshot::Snapshot)> = BTreeMap::new();
        for g in grant.mounts.iter().filter(|g| g.writable) {
            let live = &self.config.mounts[&g.name].path;
            let copy = stage_root.join(&g.name);
            match staging::stage(live, &copy, MAX_STAGE_BYTES) {
                Ok(snap) => {
                    staged.insert(g.name.clone(), (copy, snap));
                }
                Err(e) => return self.refuse(report, "stage", "staging.failed", format!("{e:#}")),
            }
        }
        let apply_mounts: Vec<PhaseMount> = live_mounts
            .iter()
            .map(|m| match staged.get(&m.name) {
                Some((copy, _)) => PhaseMount { name: m.name.clone(), host_path: copy.clone(), writable: true },
                None => m.clone(),
            })
            .collect();
        let apply_input = PhaseInput { mounts: &apply_mounts, ..input };
        report.log.barrier().await?;
        let (applied, captured) = self.sandbox.apply(pre, &authorized, &apply_input).await;
        let output = self.store_output(report, "apply", captured)?;
        if let Err(e) = applied {
            return self.refuse_sandbox(report, "apply", &e);
        }

        // 8. The real diff must equal the plan.
        let mut diff = Vec::new();
        for (name, (copy, before)) in &staged {
            // Bounded: apply may have grown the copy (sparse files, floods).
            let after = match staging::snapshot(copy, MAX_STAGE_BYTES) {
                Ok(s) => s,
                Err(e) => {
                    let detail = format!("after apply, the staged copy of `{name}`: {e}");
                    return self.refuse(report, "diff", e.after_apply_reason(), detail);
                }
            };
            match snapshot::diff(name, before, &after) {
                Ok(d) => diff.extend(d),
                Err(e) => {
                    self.record(report, Event::Applied { diff: diff.clone(), output })?;
                    return self.refuse(report, "diff", e.reason_code(), e.to_string());
                }
            }
        }
        report.diff = diff.clone();
        self.record(report, Event::Applied { diff: diff.clone(), output })?;
        let matches = match plan::check_diff(authorized.plan(), &diff) {
            Ok(p) => p,
            Err(e) => return self.refuse(report, "diff", e.reason_code(), e.to_string()),
        };

        // 9. Preconditions: the live files are still what the plan saw.
        let live_roots: BTreeMap<String, PathBuf> =
            staged.keys().map(|n| (n.clone(), self.config.mounts[n].path.clone())).collect();
        let mut io_error = None;
        let mut dirs = BTreeMap::new();
        for (name, root) in &live_roots {
            match staging::open_root(root) {
                Ok(d) => {
                    dirs.insert(name.clone(), d);
                }
                Err(e) => io_error = Some(format!("{e:#}")),
            }
        }
        let holds = plan::check_preconditions(authorized.plan(), |mount, path| {
            staging::digest_in(dirs.get(mount)?, path.as_str()).unwrap_or_else(|e| {
                io_error = Some(e.to_string());
                None
            })
        });
        let holds = match (holds, io_error) {
            (_, Some(e)) => return self.refuse(report, "commit", "commit.io_error", e),
            (Ok(h), None) => h,
            (Err(e), None) => return self.refuse(report, "commit", e.reason_code(), e.to_string()),
        };
        // Both proofs, for this plan, or no commit: the journal takes the diff from here.
        let allowed = match plan::commit_allowed(matches, holds) {
            Ok(a) => a,
            Err(e) => return self.refuse(report, "commit", e.reason_code(), e.to_string()),
        };

        // 10. Commit, journaled.
        let journal_path = staging::journal_path(&self.config.state_dir, &report.run);
        let copies: BTreeMap<String, PathBuf> = staged.iter().map(|(n, (c, _))| (n.clone(), c.clone())).collect();
        let backup_dir = self.config.state_dir.join("journals").join(format!("{}.backup", report.run));
        let mut journal = Journal::new(&report.run, &allowed, &live_roots, &backup_dir)?;
        let journal_bytes = journal.persist(&journal_path)?;
        let journal_d = report.log.put_artifact(&journal_bytes)?;
        self.record(report, Event::CommitIntent { changes: allowed.diff().len(), journal: journal_d })?;
        report.log.barrier().await?;
        if let Err(e) = journal.commit(&copies, &journal_path) {
            let restored = journal.rollback()?;
            self.record(
                report,
                Event::RolledBack { reason_code: "commit.io_error".into(), detail: format!("{e:#}"), restored },
            )?;
            self.record(report, Event::Completed { outcome: Outcome::RolledBack })?;
            report.log.barrier().await?;
            journal.finalize()?;
            std::fs::remove_file(&journal_path)?;
            report.outcome = Outcome::RolledBack;
            report.refusal = Some(Refusal {
                stage: "commit".into(),
                reason_code: "commit.io_error".into(),
                detail: format!("{e:#}"),
            });
            return Ok(());
        }
        self.record(report, Event::Committed { changes: diff.len() })?;

        // 11. Verify against the live mounts; roll back on failure.
        let (verified, captured) = self.sandbox.verify(pre, &authorized, &input).await;
        let output = self.store_output(report, "verify", captured)?;
        let failure = match verified {
            Ok(v) => {
                self.record_verification(report, &v, output)?;
                (!v.passed).then(|| ("verify.failed".to_owned(), v.summary))
            }
            Err(e) => {
                self.record(
                    report,
                    Event::Refused {
                        stage: "verify".into(),
                        reason_code: e.reason_code().into(),
                        detail: e.to_string(),
                    },
                )?;
                Some((e.reason_code().to_owned(), e.to_string()))
            }
        };
        match failure {
            None => {
                self.record(report, Event::Completed { outcome: Outcome::Committed })?;
                report.log.barrier().await?;
                journal.finalize()?;
                std::fs::remove_file(&journal_path)?;
                report.outcome = Outcome::Committed;
            }
            Some((code, detail)) => {
                // The record of the verify result is durable; now undo.
                report.log.barrier().await?;
                let restored = journal.rollback()?;
                self.record(report, Event::RolledBack { reason_code: code.clone(), detail: detail.clone(), restored })?;
                self.record(report, Event::Completed { outcome: Outcome::RolledBack })?;
                report.log.barrier().await?;
                journal.finalize()?;
                std::fs::remove_file(&journal_path)?;
                report.outcome = Outcome::RolledBack;
                report.refusal = Some(Refusal { stage: "verify".into(), reason_code: code, detail });
            }
        }
        Ok(())
    }

    fn refuse_sandbox(&self, report: &mut RunReport, stage: &str, e: &SandboxError) -> Result<()> {
        self.refuse(report, stage, e.reason_code(), e.to_string())
    }

    fn record_verification(
        &self,
        report: &mut RunReport,
        v: &Verification,
        output: Option<Sha256Digest>,
    ) -> Result<()> {
        let summary = self.redact(&v.summary);
        let mut findings = v.findings.clone();
        for f in &mut findings {
            f.message = self.redact(&f.message);
        }
        report.verification = Some(VerificationReport { passed: v.passed, summary: summary.clone() });
        self.record(report, Event::Verified { passed: v.passed, summary, findings, output })
    }

    /// Take the locks of the grant's mounts, in name order (no deadlock
    /// between runs): exclusive for mounts it may write, shared otherwise.
    async fn lock_mounts(&self, grant: &edge_core::admission::Grant) -> Vec<MountGuard> {
        let mut guards = Vec::new();
        let mut mounts: Vec<_> = grant.mounts.iter().collect();
        mounts.sort_by(|a, b| a.name.cmp(&b.name));
        for g in mounts {
            let Some(lock) = self.mount_locks.get(&g.name) else { continue };
            guards.push(if g.writable {
                MountGuard::Write(lock.clone().write_owned().await)
            } else {
                MountGuard::Read(lock.clone().read_owned().await)
            });
        }
        guards
    }

    /// Environment values may be secrets: guest text (output, findings,
    /// error messages, verify summaries) must not carry them into evidence.
    /// The plan is bound to its digest and cannot be rewritten: a capsule
    /// could still encode a granted value there (docs/foundation.md).
    fn redact(&self, s: &str) -> String {
        let mut out = s.to_owned();
        for (name, value) in &self.config.env {
            if value.len() >= 4 && out.contains(value.as_str()) {
                out = out.replace(value.as_str(), &format!("[env {name} redacted]"));
            }
        }
        out
    }
}

fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let cut = (0..=max).rev().find(|i| s.is_char_boundary(*i)).unwrap_or(0);
        s.truncate(cut);
        s.push_str(" …(truncated)");
    }
    s
}

/// Everything the policy decides on, from an admitted capsule.
pub fn decision_input(admitted: &Admitted, nodes: &BTreeMap<String, String>) -> DecisionInput {
    let capsule = admitted.capsule();
    let m = capsule.file().manifest();
    DecisionInput {
        capsule: capsule.file().digest(),
        name: format!("{}@{}", m.name, m.version),
        kind: m.kind,
        signer: capsule.signer().to_owned(),
        transparency: capsule.transparency(),
        grant: admitted.grant().clone(),
        endpoints: m.endpoints.clone(),
        // Only the mappings this grant uses: the decision input stays small
        // and replayable.
        nodes: nodes
            .iter()
            .filter(|(k, _)| admitted.grant().mounts.iter().any(|g| &g.name == *k) || m.endpoints.contains(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        ticket: m.provenance.ticket.clone(),
    }
}

/// A run id: time-ordered and unique (`r-<unix ms>-<8 hex>`).
pub fn new_run_id() -> String {
    let ms = jiff::Timestamp::now().as_millisecond();
    let rand = uuid::Uuid::new_v4().simple().to_string();
    format!("r-{ms}-{}", &rand[..8])
}

/// Load and run a capsule file with a config file: the `exec` command.
///
/// # Errors
/// As [`Runner::open`] and [`Runner::exec`].
pub async fn exec_file(config: &Path, capsule: &Path, approvals: &[PathBuf]) -> Result<RunReport> {
    let config = RunnerConfig::load(config)?;
    let size = std::fs::metadata(capsule).with_context(|| format!("cannot read capsule {}", capsule.display()))?.len();
    let max = edge_core::container::MAX_COMPONENT_BYTES + edge_core::container::MAX_BUNDLE_BYTES + (1 << 20);
    if size > max {
        bail!("capsule {} is {size} bytes; the largest accepted is {max}", capsule.display());
    }
    let bytes = std::fs::read(capsule).with_context(|| format!("cannot read capsule {}", capsule.display()))?;
    let runner = Runner::open(config)?;
    let approvals = crate::approvals::read_approvals(approvals)?;
    runner.exec_with_approvals(&bytes, &approvals).await
}

#[doc(hidden)]
pub type Pre = CapsulePre<HostState>;
