//! One governed run, stage by stage, as in the design brief:
//!
//! ```text
//! submit ─► admit ─► decide ─► plan ─► authorize ─► apply ─► commit ─► verify ─► seal
//!           Admitted  Decided   ValidPlan  Authority   Applied   Committed
//! ```
//!
//! One file per stage; `Runner::drive` below calls them in that order.
//! Each stage takes the proof value the one before it returned (built only
//! by the check it stands for: see `docs/architecture.md`) and returns the
//! next, or stops the run: refused with its stage's error (a stable reason
//! code), ended early (awaiting approval, rolled back), or failed (the
//! runner itself: I/O, disk full).
//!
//! Every step appends an evidence record, durably, *before* its effect; a
//! refusal at any step is recorded with its reason code and ends the run
//! with a terminal `completed` record. Nothing on the host changes unless the
//! diff equals the plan and the plan's preconditions still hold.
//! `recovery.rs` closes, at start, every run a crash left open.

mod admit;
mod authorize;
mod calls;
mod commit;
mod decide;
mod plan;
mod preview;
mod proposal;
mod recovery;
mod reload;
mod run;
mod seal;
mod verify;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use edge_core::container::CapsuleFile;
use edge_core::evidence::{Event, Outcome, Record};
use edge_core::lifecycle::State;
use edge_core::note::NoteSigner;

pub use admit::AdmitError;
pub use authorize::AuthorizeError;
pub use commit::CommitError;
pub use decide::{DecideError, decision_input};
pub use plan::PlanError;
pub use preview::{PreviewError, shown_path};
pub use proposal::{
    ApproverView, DEFAULT_PROPOSAL_TTL_SECS, PROPOSAL_SCHEMA, Proposal, QuorumStatus, QuorumView, proposal_path,
    read_approvals, still_needed, unix_now, verdict_name,
};
pub use reload::Reloaded;
pub use run::{Refusal, RunReport, Stage, StageError, VerificationReport};
pub use verify::VerifyError;

use crate::config::RunnerConfig;
use crate::governance::Governance;
use crate::sandbox::{Instances, Sandbox};
use crate::staging::{self, Journal};
use crate::store::log::{EvidenceLog, StoreHandle};
use run::Stop;

/// A capsule as submitted: a capsule file, or one assembled from parts.
#[derive(Debug)]
pub enum Submitted<'a> {
    Bytes(&'a [u8]),
    /// A capsule file's bytes handed over: let go once parsed, so that the
    /// run does not hold them beside the parsed file.
    Owned(Vec<u8>),
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
    pub identity: Arc<NoteSigner>,
    /// One lock per configured mount: shared for runs that only read it,
    /// exclusive from plan to the end of the run for runs that write it.
    mount_locks: BTreeMap<String, Arc<tokio::sync::RwLock<()>>>,
    /// Held while approvals are counted and their nonces consumed, and while
    /// proposals are expired: a proposal is settled once.
    pub(crate) settling: tokio::sync::Mutex<()>,
    /// What governs decisions now (policy, graph, signers, approvers),
    /// replaced whole by a reload or a passkey enrollment; each run takes
    /// the one in force when it starts and keeps it.
    governance: std::sync::RwLock<Arc<Governance>>,
    /// Held while the governance is being replaced (reload, enrollment):
    /// one change at a time, each recorded before it is in force.
    pub(crate) changing_governance: tokio::sync::Mutex<()>,
    /// Write each run's receipt to `<state>/receipts/<run>.tlog-proof`
    /// (command-line runs); the daemon returns it in the answer instead (a
    /// file per run was a fifth of its CPU, in the file system).
    pub receipt_files: bool,
}

impl Runner {
    /// Open the evidence log (verifying it), build the sandbox and recover
    /// any run a crash left unfinished.
    ///
    /// # Errors
    /// If the log is broken or locked, or the sandbox cannot be built.
    pub fn open(config: RunnerConfig) -> Result<Self> {
        Self::open_for(config, Runs::Many, || {})
    }

    /// Open for one run in this process (`exec`): as [`Runner::open`], with
    /// the sandbox's instances made on demand, and the start's records are
    /// not waited for. Their commit's disk flushes overlap the run's
    /// admission; the run's first wait on the log covers them (commits are
    /// in order), and if their commit fails the run fails, naming it. A
    /// store's first start still waits: the checkpoint kept outside the
    /// store is written from it. The caller runs its capsule next (every
    /// `exec_*` ends in a barrier, whatever the run finds), with its inputs
    /// read beforehand: a process that ended in between could cut the
    /// queued commit short. `beside` is the caller's own preparation, done
    /// on the second thread the start uses (after the engine is built
    /// there, while the store opens on this one): off the start's path.
    ///
    /// # Errors
    /// As [`Runner::open`].
    pub fn open_for_one_run(config: RunnerConfig, beside: impl FnOnce() + Send) -> Result<Self> {
        Self::open_for(config, Runs::One, beside)
    }

    fn open_for(mut config: RunnerConfig, runs: Runs, beside: impl FnOnce() + Send) -> Result<Self> {
        let instances = match runs {
            Runs::Many => Instances::Pooled,
            Runs::One => Instances::OnDemand,
        };
        std::fs::create_dir_all(&config.state_dir)
            .with_context(|| format!("cannot create state dir {}", config.state_dir.display()))?;
        // The engine is built while the store opens: neither needs the
        // other, and a start does little else on the second core.
        let (log, sandbox) = std::thread::scope(|s| {
            let sandbox = std::thread::Builder::new().name("engine".into()).spawn_scoped(s, || {
                let sandbox =
                    Sandbox::with_instances(&config.cache_dir, config.ceiling.max_limits.memory_mib, instances);
                beside();
                sandbox
            });
            let log = EvidenceLog::open(&config.state_dir.join("evidence"));
            let sandbox = match sandbox {
                Ok(t) => t.join().unwrap_or_else(|_| {
                    Err(anyhow::anyhow!(
                        "the start's second thread (the WebAssembly engine, and what was done beside it) panicked"
                    ))
                }),
                Err(e) => Err(anyhow::Error::from(e).context("cannot start a thread to build the WebAssembly engine")),
            };
            (log, sandbox)
        });
        let log = log?;
        crate::rotate::finish_interrupted(&config, &log)?;
        let identity = Arc::new(crate::identity::load_identity(&config.store_view())?);
        let sandbox = sandbox?;
        // Mounts and endpoints (their names never clash): runs that write
        // one wait for each other.
        let mount_locks =
            config.mounts.keys().chain(config.endpoints.keys()).map(|k| (k.clone(), Arc::default())).collect();
        let settling = tokio::sync::Mutex::new(());
        let governance = config.governance.take().context("this runner config is already held by a runner")?;
        let governance = std::sync::RwLock::new(Arc::new(governance));
        let mut runner = Self {
            config,
            sandbox,
            log,
            identity,
            mount_locks,
            settling,
            governance,
            changing_governance: tokio::sync::Mutex::new(()),
            receipt_files: true,
        };
        // Before anything is appended: the store must hold what this runner signed.
        runner.check_signed_history()?;
        runner.record_identity()?;
        runner.recover()?;
        runner.record_policy_in_force()?;
        let mut start = vec![crate::attest::start_record(&runner)?];
        if !runner.config.dangerous.is_empty() {
            tracing::warn!(switches = ?runner.config.dangerous, "running with insecure switches");
            start.push(Event::Insecure { switches: runner.config.dangerous.clone() });
        }
        // The start's records and a checkpoint over them: one commit.
        // From the first start on, the newest signed checkpoint is kept
        // outside the database (a crash before the WAL thread wrote it must
        // not look like a deleted file at the next start). Later starts
        // leave the file to the WAL thread and the close (as every commit
        // between them does): rewriting it here was two disk flushes more
        // per start, and a one-run `exec` closes moments later.
        let (log, name, identity) = (&runner.log, &runner.config.name, &runner.identity);
        let first = !log.dir().join(crate::store::trust::LATEST_CHECKPOINT_FILE).exists();
        if runs == Runs::One && !first {
            log.queue_with_checkpoint("runner", start, identity, name)?;
        } else {
            log.append_with_checkpoint("runner", start, identity, name)?;
        }
        if first {
            crate::store::trust::publish_now(log.dir())?;
        }
        Ok(runner)
    }

    /// What governs decisions now. A run takes this once, when it starts.
    pub fn governance(&self) -> Arc<Governance> {
        self.governance.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// The approver registry in force (None: nobody can approve).
    pub fn approvers(&self) -> Option<Arc<edge_core::approval::Registry>> {
        self.governance().approvers.clone()
    }

    /// Put new governance in force (after it was recorded; the caller
    /// holds `changing_governance`); returns what was in force.
    pub(crate) fn replace_governance(&self, next: Governance) -> Arc<Governance> {
        std::mem::replace(
            &mut *self.governance.write().unwrap_or_else(std::sync::PoisonError::into_inner),
            Arc::new(next),
        )
    }

    /// Sign a checkpoint of the whole log now.
    ///
    /// # Errors
    /// If it cannot be stored.
    pub fn checkpoint(&self) -> Result<String> {
        self.log.checkpoint(&self.identity, &self.config.name)
    }

    /// A handle for concurrent appends to the evidence store.
    pub fn store(&self) -> StoreHandle {
        self.log.handle()
    }

    /// Stream an export to `out`, signing a checkpoint now ([`crate::export::export_to`]).
    ///
    /// # Errors
    /// As [`crate::export::export_to`].
    pub fn export_to<W: std::io::Write>(
        &self,
        scope: &crate::export::ExportScope,
        out: W,
    ) -> Result<crate::export::Exported> {
        self.export_counted(scope, out, &mut |_| {})
    }

    /// [`Runner::export_to`], telling `counted` the count of old refusals
    /// quoting the config file before the first byte
    /// ([`crate::export::export_counted`]).
    ///
    /// # Errors
    /// As [`Runner::export_to`].
    pub fn export_counted<W: std::io::Write>(
        &self,
        scope: &crate::export::ExportScope,
        out: W,
        counted: &mut dyn FnMut(u64),
    ) -> Result<crate::export::Exported> {
        crate::export::export_counted(&self.log, &self.identity, &self.config.name, scope, out, counted).map(|(e, _)| e)
    }

    /// Stream an export to a file, durably or not at all ([`crate::export::export_file`]).
    ///
    /// # Errors
    /// As [`crate::export::export_file`].
    pub fn export_file(
        &self,
        scope: &crate::export::ExportScope,
        path: &std::path::Path,
    ) -> Result<crate::export::Exported> {
        crate::export::export_file(&self.log, &self.identity, &self.config.name, scope, path)
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
        self.exec_capsule_as(new_run_id(), capsule, approvals, submitted_by).await
    }

    /// [`Runner::exec_capsule`] under a run id the caller chose beforehand
    /// ([`new_run_id`]): an intake that must not run a delivery twice names
    /// the run before handing it over, and after a crash asks the log
    /// whether that run exists ([`crate::store::log::EvidenceLog::run_seqs`]).
    /// The caller makes sure the id is fresh and used once.
    ///
    /// # Errors
    /// As [`Runner::exec`]; a run id not of the form [`new_run_id`] makes.
    pub async fn exec_capsule_as(
        &self,
        run: String,
        capsule: Submitted<'_>,
        approvals: &[Vec<u8>],
        submitted_by: Option<&str>,
    ) -> Result<RunReport> {
        self.exec_governed(run, capsule, approvals, submitted_by, self.governance()).await
    }

    /// [`Runner::exec_capsule_as`] under `governance`, which the caller took
    /// from [`Runner::governance`] and checked (a hand-over compares it
    /// with the documents `exec` named: `crate::intake::local`).
    ///
    /// # Errors
    /// As [`Runner::exec_capsule_as`].
    pub async fn exec_governed(
        &self,
        run: String,
        capsule: Submitted<'_>,
        approvals: &[Vec<u8>],
        submitted_by: Option<&str>,
        governance: Arc<Governance>,
    ) -> Result<RunReport> {
        anyhow::ensure!(is_run_id(&run), "`{}` is not a run id", edge_core::text::line(&run));
        let mut report = RunReport::new(&run, self.log.run_log(), governance);
        report.submitted_by = submitted_by.map(str::to_owned);
        let mut result = match self.drive(capsule, approvals, &mut report).await {
            Ok(()) | Err(Stop::Ended) => Ok(()),
            Err(Stop::Refused(refusal)) => self.refuse(&mut report, refusal),
            Err(Stop::Failed(e)) => Err(e),
        };
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
        if let Err(e) = &result {
            result = self.close_failed_run(&mut report, e).await;
        }
        self.discard_staging(&self.config.staging_dir.join(&run));
        // A proposal that no longer waits (or never did: a tier-0 run whose
        // calls' bodies were kept out of evidence) keeps no staged result.
        // (Most runs kept none: the store is read only when there is one.)
        let id = report.resumed.clone().unwrap_or_else(|| edge_core::lifecycle::proposal_id(&run));
        // (Unreadable store: keep it; the next start looks again.)
        if self.has_preview(&id)
            && self.log.proposal(&id).is_ok_and(|v| v.is_none_or(|v| v.state != State::AwaitingApproval))
        {
            self.drop_preview(&id);
        }
        // Rolled back and cleaned up: the next run may have the mounts.
        report.mount_guards.clear();
        if result.is_ok() {
            self.seal(&mut report, sealed_by).await?;
        }
        report.records = report.log.take_records();
        result.map(|()| report)
    }

    /// The stages, in order. A run presenting approvals resumes the waiting
    /// proposal they name: its plan and previewed result, as the approvers
    /// saw them (nothing of the capsule runs again before the commit).
    async fn drive(&self, capsule: Submitted<'_>, approvals: &[Vec<u8>], run: &mut RunReport) -> Result<(), Stop> {
        let admission = self.admit(capsule, run)?;
        let mut prepared = admission.prepared;
        let decided = self.decide(admission.admitted, run)?;
        let (plan, previewed) = if approvals.is_empty() {
            let plan = self.plan(&decided, &prepared, run).await?;
            let previewed = self.preview(&decided, &plan, &prepared, run).await?;
            (plan, previewed)
        } else {
            let resumed = self.resume(&decided, approvals, run).await?;
            // Bodies kept as the approvers saw them previewed.
            prepared.hold_previews(&run.held_previews);
            resumed
        };
        let authority = self.authorize(decided, plan, prepared, previewed.as_ref(), approvals, run).await?;
        let Some(previewed) = previewed else {
            // Calls cannot be staged: `apply` runs now, each request checked
            // against the authorized plan before it leaves.
            if !authority.authorized().plan().plan().calls.is_empty() {
                let made = self.call(&authority, run).await?;
                return self.verify_calls(&authority, made, run).await;
            }
            return self.verify_unchanged(&authority, run).await;
        };
        let committed = self.commit(&authority, previewed, run).await?;
        self.verify(&authority, committed, run).await
    }

    /// The runner itself failed (I/O, disk full, …) before the run was
    /// closed. Undo any commit in progress and close the run with a recorded
    /// refusal while the log can still be written (fail closed); if it
    /// cannot, recovery on the next start closes the run as interrupted.
    async fn close_failed_run(&self, report: &mut RunReport, e: &anyhow::Error) -> Result<()> {
        if report.log.records().iter().any(Record::is_terminal) {
            return Err(anyhow::anyhow!("{e:#}"));
        }
        let detail = format!("{e:#}");
        let journal_path = staging::journal_path(&self.config.state_dir, &report.run);
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
            Event::Refused { stage: Stage::Runner.as_str().into(), reason_code: "runner.error".into(), detail };
        let closed = match report.log.append_deferred(&report.run, refused) {
            Ok(()) => report.log.append(&report.run, Event::Completed { outcome: Outcome::Refused }).await.map(drop),
            Err(e) => Err(e),
        };
        if closed.is_err() {
            return Err(anyhow::anyhow!("{e:#}"));
        }
        report.outcome = Outcome::Refused;
        report.refusal = Some(Refusal {
            stage: Stage::Runner,
            reason_code: "runner.error",
            detail: format!("{e:#} ({restored} file(s) restored)"),
        });
        Ok(())
    }
}

/// What a runner is opened for ([`Runner::open_for`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Runs {
    /// Many runs (`serve`, tests): instances from the pool, the start's
    /// records durable before the runner is returned.
    Many,
    /// One run in this process (`exec`): instances made on demand, the
    /// start's records queued for the run's first wait.
    One,
}

/// A run id: time-ordered and unique (`r-<unix ms>-<8 hex>`).
pub fn new_run_id() -> String {
    let ms = jiff::Timestamp::now().as_millisecond();
    let rand = uuid::Uuid::new_v4().simple().to_string();
    format!("r-{ms}-{}", &rand[..8])
}

/// Whether `s` has the form [`new_run_id`] makes.
pub fn is_run_id(s: &str) -> bool {
    let Some(rest) = s.strip_prefix("r-") else { return false };
    let Some((ms, rand)) = rest.split_once('-') else { return false };
    (1..=19).contains(&ms.len())
        && ms.bytes().all(|b| b.is_ascii_digit())
        && rand.len() == 8
        && rand.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// What `exec` reads before anything else: the capsule file (bounded)
/// and the approval files, whichever process then runs it (this one, or
/// the runner serving the state directory: `crate::intake::local`).
#[derive(Debug)]
pub struct ExecInputs {
    pub capsule: Vec<u8>,
    pub approvals: Vec<Vec<u8>>,
}

/// Largest capsule file `exec` reads: a component, its bundle and a
/// megabyte for the rest of the archive.
pub const MAX_CAPSULE_FILE_BYTES: u64 =
    edge_core::container::MAX_COMPONENT_BYTES + edge_core::container::MAX_BUNDLE_BYTES + (1 << 20);

impl ExecInputs {
    /// Read the capsule file and the approval files.
    ///
    /// # Errors
    /// A file cannot be read, or the capsule is larger than any accepted.
    pub fn read(capsule: &Path, approvals: &[PathBuf]) -> Result<Self> {
        let size =
            std::fs::metadata(capsule).with_context(|| format!("cannot read capsule {}", capsule.display()))?.len();
        if size > MAX_CAPSULE_FILE_BYTES {
            bail!("capsule {} is {size} bytes; the largest accepted is {MAX_CAPSULE_FILE_BYTES}", capsule.display());
        }
        let bytes = std::fs::read(capsule).with_context(|| format!("cannot read capsule {}", capsule.display()))?;
        Ok(Self { capsule: bytes, approvals: read_approvals(approvals)? })
    }
}

/// Run a capsule file's bytes under a loaded config: the `exec` command,
/// whose process ends after it. The store is closed before this returns;
/// the sandbox (the engine, its code mappings, the loaded component) is
/// left to the process's exit, which unmaps it with everything else at
/// once, instead of being taken apart piece by piece on the way out.
///
/// # Errors
/// As [`Runner::open`] and [`Runner::exec`].
pub async fn exec_file(config: RunnerConfig, inputs: ExecInputs) -> Result<RunReport> {
    // Every input is read before the runner opens: once it has, the run
    // (which ends in a barrier, whatever it finds) is what makes its queued
    // start durable, so nothing may stop the command between the two.
    let ExecInputs { capsule: bytes, approvals } = inputs;
    // The capsule is parsed (its component hashed) while the store opens.
    // One that does not parse is handed over as bytes: the run refuses it,
    // and records why, as for any submission.
    let mut parsed = None;
    let runner = Runner::open_for_one_run(config, || parsed = CapsuleFile::parse(&bytes).ok())?;
    let capsule = match parsed {
        Some(file) => Submitted::File(Box::new(file)),
        None => Submitted::Bytes(&bytes),
    };
    let report = runner.exec_capsule(capsule, &approvals, None).await;
    let Runner { sandbox, .. } = runner;
    std::mem::forget(sandbox);
    report
}
