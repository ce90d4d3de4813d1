//! The run service: submit, approve and query, with typed replies and no
//! transport. The HTTP API (the `server` module) is one intake over it; another
//! (an outbound pull, a spool directory) is a sibling module calling the
//! same methods, never a fork of the server.
//!
//! One [`Runner`] is shared by every caller. Runs execute concurrently up to
//! `max_running`; up to `queue` more wait for a slot, and beyond that a
//! submission is refused ([`QueueError::Full`]; HTTP answers `429`) before
//! anything of it is kept. Each run is its own task, so a caller that goes
//! away never cuts a run in the middle. Reads (lists, documents, metrics) go
//! straight to the evidence log's view.

pub mod detail;
pub mod metrics;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Instant;

use anyhow::{Context, Result, anyhow};
use edge_core::Sha256Digest;
use serde::Serialize;
use tokio::sync::{Notify, Semaphore};

use crate::config::RunnerConfig;
use crate::export::ExportScope;
use crate::governance::Governance;
use crate::pipeline::{QuorumStatus, Refusal, RunReport, Runner, Submitted, VerificationReport};
use crate::store::fold::Query;
use edge_core::container::{CapsuleFile, KnownComponent};
use edge_core::lifecycle::{self as proposals, ProposalView, State};
use metrics::Metrics;

/// What became of a posted approval.
#[derive(Debug)]
pub enum ApproveReply {
    /// No such proposal.
    Unknown,
    /// Not kept: it does not verify for this proposal (reason given).
    Refused(String),
    /// Not kept: the proposal no longer waits (ran, expired, withdrawn); its
    /// state now.
    NotWaiting(State),
    /// Kept; the quorum status, and the run when it ran.
    Kept(Box<ApprovalKept>),
}

/// Largest approval file accepted (ours are about 1 KiB).
const MAX_APPROVAL_BYTES: usize = 64 << 10;

/// Why a run could not be started.
#[derive(Debug)]
pub enum QueueError {
    Full,
    Stopped,
}

/// The runner and its run slots, shared by every intake.
pub struct RunService {
    /// The full check run after the start: stopped at shutdown, or when
    /// this is dropped (first: before the runner, whose store's close
    /// would wait for the check's snapshot).
    full_check: std::sync::Mutex<Option<FullCheck>>,
    runner: Arc<Runner>,
    metrics: Arc<Metrics>,
    /// One permit per run executing at once.
    slots: Arc<Semaphore>,
    max_running: usize,
    /// Runs admitted (executing or waiting for a slot), and their bound.
    admitted: AtomicUsize,
    limit: usize,
    /// Signalled whenever an admitted run finishes.
    finished: Notify,
    stopping: AtomicBool,
    /// Approvals posted are checked and kept one at a time.
    approving: tokio::sync::Mutex<()>,
    ticker: tokio::task::AbortHandle,
    /// Signed webhooks on proposal events (taken at shutdown).
    notifier: std::sync::Mutex<Option<crate::notify::Notifier>>,
    /// Components submitted earlier, by digest, for submissions by
    /// reference (bounded; a miss reads the evidence store).
    components: edge_core::bounded::BoundedMap<Sha256Digest, KnownComponent>,
    /// Whether each intake can take work (`/readyz`, `/metrics`).
    intakes: crate::intake::Health,
}

impl std::fmt::Debug for RunService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunService")
            .field("max_running", &self.max_running)
            .field("limit", &self.limit)
            .field("admitted", &self.admitted)
            .finish_non_exhaustive()
    }
}

/// Most components kept in memory for submissions by reference.
const MAX_COMPONENTS: usize = 16;

/// A submission: a capsule file, or a capsule assembled by reference.
#[derive(Debug)]
pub enum Submission {
    File(Vec<u8>),
    Assembled(Box<CapsuleFile>),
}

/// Why a submission by reference could not be assembled.
#[derive(Debug)]
pub enum ByReference {
    /// The manifest is not a capsule manifest.
    BadManifest(String),
    /// This runner does not hold the component the manifest pins.
    UnknownComponent(Sha256Digest),
}

/// An admitted run's place; gives it back when dropped.
struct Admission(Arc<RunService>);

impl Drop for Admission {
    fn drop(&mut self) {
        self.0.admitted.fetch_sub(1, Ordering::AcqRel);
        self.0.finished.notify_waiters();
    }
}

impl RunService {
    /// Open the runner (verifying its log, recovering interrupted runs) and
    /// start the expiry tick.
    ///
    /// # Errors
    /// If the runner cannot open (a broken or locked evidence log refuses to
    /// start; the error says which check failed).
    pub async fn start(
        config: RunnerConfig,
        max_running: usize,
        queue: usize,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Self>> {
        let mut runner = tokio::task::spawn_blocking(move || Runner::open(config))
            .await
            .map_err(|_| anyhow!("opening the runner panicked"))??;
        // Receipts go to the client in the answer, not to a file per run.
        runner.receipt_files = false;
        let runner = Arc::new(runner);
        // Subscribed before anything here can change a proposal (the
        // expiry tick below, runs, approvals).
        let notifier = crate::notify::Notifier::start(&runner, metrics.notify.clone()).await?;
        // Expiry is checked at least every second.
        let r = runner.clone();
        let ticker = tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let now = match crate::pipeline::unix_now() {
                    Ok(now) => now,
                    Err(e) => {
                        tracing::error!(error = %format!("{e:#}"), "cannot check proposal expiry");
                        continue;
                    }
                };
                match r.expire_proposals(now, None).await {
                    Ok(ids) => {
                        for id in ids {
                            tracing::info!(proposal = %id, "proposal expired");
                        }
                    }
                    Err(e) => tracing::error!(error = %format!("{e:#}"), "cannot record expiry"),
                }
            }
        })
        .abort_handle();
        let full_check = full_check_in_background(&runner)?;
        Ok(Arc::new(Self {
            runner,
            metrics,
            slots: Arc::new(Semaphore::new(max_running)),
            max_running,
            admitted: AtomicUsize::new(0),
            limit: max_running + queue,
            finished: Notify::new(),
            stopping: AtomicBool::new(false),
            approving: tokio::sync::Mutex::new(()),
            ticker,
            notifier: std::sync::Mutex::new(Some(notifier)),
            components: edge_core::bounded::BoundedMap::new(MAX_COMPONENTS),
            intakes: crate::intake::Health::default(),
            full_check: std::sync::Mutex::new(Some(full_check)),
        }))
    }

    /// Whether each intake can take work.
    pub fn intakes(&self) -> &crate::intake::Health {
        &self.intakes
    }

    /// Count a message an intake finished (`processed`, `terminated`, `retried`).
    pub fn metrics_intake(&self, intake: &'static str, result: &'static str) {
        self.metrics.intake_message(intake, result);
    }

    /// An approval file an intake delivered (NATS, spool): kept for the
    /// proposal it names, as [`RunService::approve`]; or refused with a
    /// reason code — a file that does not parse is recorded
    /// (`approval-refused`, `approval.malformed`).
    pub async fn approve_delivered(self: &Arc<Self>, bytes: Vec<u8>) -> Result<Result<Delivered>, QueueError> {
        let proposal = match edge_core::approval::ApprovalFile::parse(&bytes) {
            Ok(f) => f.statement.proposal,
            Err(e) => {
                let detail = format!("not an approval file: {e}");
                return Ok(self.record_malformed_approval(&bytes, &detail).await.map(|()| Delivered::Refused {
                    proposal: None,
                    reason_code: "approval.malformed".to_owned(),
                    detail,
                }));
            }
        };
        let refused = |reason_code: &str, detail: String| Delivered::Refused {
            proposal: Some(proposal.clone()),
            reason_code: reason_code.to_owned(),
            detail,
        };
        let digest = Sha256Digest::of(&bytes);
        Ok(Ok(match self.approve(proposal.clone(), bytes).await? {
            Ok(ApproveReply::Unknown) => {
                refused("approval.unknown-proposal", format!("no proposal {proposal} on this runner"))
            }
            Ok(ApproveReply::Refused(why)) => {
                let (code, detail) = split_reason(&why);
                refused(&code, detail)
            }
            Ok(ApproveReply::Kept(kept)) => Delivered::Kept(kept),
            Ok(ApproveReply::NotWaiting(state)) => match self.kept_earlier(&proposal, &digest).await {
                // This very file was kept before (delivered again: its answer
                // was lost to a kill or a full outbox): answered from the
                // store, with the run it led to.
                Ok(Some(again)) => Delivered::Again(Box::new(again)),
                Ok(None) => refused(
                    "approval.not-waiting",
                    format!("proposal {proposal} is {}, not awaiting approval", state.name()),
                ),
                Err(e) => return Ok(Err(e)),
            },
            // The runner failed (I/O): not a refusal; the intake tries again.
            Err(e) => return Ok(Err(e)),
        }))
    }

    /// If the approval file with this digest was kept for `proposal`: the
    /// proposal's state now and the answer of its latest run after the one
    /// that opened it (the run the quorum started).
    ///
    /// # Errors
    /// If the store cannot be read.
    async fn kept_earlier(&self, proposal: &str, approval: &Sha256Digest) -> Result<Option<KeptEarlier>> {
        let kept = approvals_dir(&self.runner, proposal).join(format!("{}.json", approval.hex()));
        match std::fs::symlink_metadata(&kept) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", kept.display())),
        }
        let Some(view) = self.show(proposal) else { return Ok(None) };
        // The run the quorum started (not the one that opened the proposal),
        // and its receipt: what the first answer held for this approver —
        // not the run's records, which whoever holds a copy of the file
        // (it is evidence, and travels) need not read.
        let run = view.runs.get(1..).and_then(<[String]>::last).cloned();
        let receipt = if run.is_some() { self.receipt(proposal).await? } else { None };
        Ok(Some(KeptEarlier {
            id: proposal.to_owned(),
            approval: *approval,
            state: view.state.name().to_owned(),
            run,
            receipt,
        }))
    }

    /// Record an approval that does not parse (outside any run, by the
    /// runner): kept as an artifact when small enough to be an approval at
    /// all, so a reviewer sees what was delivered.
    ///
    /// # Errors
    /// If the record cannot be made durable.
    async fn record_malformed_approval(&self, bytes: &[u8], detail: &str) -> Result<()> {
        if bytes.len() > MAX_APPROVAL_BYTES {
            tracing::info!(bytes = bytes.len(), "an oversized approval was refused unread");
            return Ok(());
        }
        let d = self.runner.log.put_artifact(bytes)?;
        let mut log = self.runner.log.run_log();
        log.append_deferred(
            "runner",
            edge_core::evidence::Event::ApprovalRefused {
                approval: d,
                principal: None,
                reason_code: "approval.malformed".into(),
                detail: edge_core::text::line(detail).chars().take(500).collect(),
            },
        )?;
        log.barrier().await
    }

    /// Runs admitted but waiting for a slot.
    pub fn depth(&self) -> usize {
        let running = self.max_running - self.slots.available_permits();
        self.admitted.load(Ordering::Acquire).saturating_sub(running)
    }

    /// Whether new runs are accepted.
    pub fn is_open(&self) -> bool {
        !self.stopping.load(Ordering::Acquire)
    }

    fn admit(self: &Arc<Self>) -> Result<Admission, QueueError> {
        if !self.is_open() {
            return Err(QueueError::Stopped);
        }
        if self.admitted.fetch_add(1, Ordering::AcqRel) >= self.limit {
            self.admitted.fetch_sub(1, Ordering::AcqRel);
            self.metrics.overloaded();
            return Err(QueueError::Full);
        }
        Ok(Admission(self.clone()))
    }

    /// Run `f` as its own task once a slot is free (a dropped request does
    /// not cancel it).
    async fn run<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl Future<Output = Result<T>> + Send + 'static,
    ) -> Result<Result<T>, QueueError> {
        let admission = self.admit()?;
        let slots = self.slots.clone();
        let task = tokio::spawn(async move {
            let _admission = admission;
            let _slot = slots.acquire_owned().await.map_err(|_| anyhow!("the runner is stopping"))?;
            f.await
        });
        Ok(task.await.unwrap_or_else(|e| Err(anyhow!("the run failed: {e}"))))
    }

    /// Stop admitting runs and wait for every admitted one to finish.
    pub async fn shutdown(&self) {
        self.stopping.store(true, Ordering::Release);
        loop {
            let finished = self.finished.notified();
            if self.admitted.load(Ordering::Acquire) == 0 {
                break;
            }
            finished.await;
        }
        self.ticker.abort();
        // A full check still running holds a snapshot of the store, which
        // the close's fold of the WAL would wait for (and then give up,
        // leaving the WAL in place): it stops within a record.
        let check = self.full_check.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
        if let Some(thread) = check.and_then(FullCheck::stop) {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
        // What it could not deliver is recorded; it takes at most a second.
        let notifier = self.notifier.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
        if let Some(n) = notifier {
            n.shutdown().await;
        }
    }

    /// Proposal lifecycle events from now on, each sent once its record is
    /// durable (`crate::events`): for intakes and consoles that follow
    /// proposals instead of polling.
    pub fn proposal_events(&self) -> tokio::sync::broadcast::Receiver<crate::events::ProposalEvent> {
        self.runner.log.subscribe()
    }

    /// Run a submitted capsule; above tier 0 keep it for when approvals come.
    pub async fn submit(
        self: &Arc<Self>,
        capsule: Submission,
        agent: String,
    ) -> Result<Result<SubmitReply>, QueueError> {
        let w = self.clone();
        self.run(async move { w.submit_now(capsule, &agent).await }).await
    }

    /// [`RunService::submit`] under a run id the intake chose and kept
    /// beforehand (`crate::intake`): after a crash it asks
    /// [`RunService::ran`] before handing the same delivery over again.
    pub async fn submit_as(
        self: &Arc<Self>,
        run: String,
        capsule: Submission,
        agent: String,
    ) -> Result<Result<SubmitReply>, QueueError> {
        let w = self.clone();
        self.run(async move { w.submit_now_as(Some(run), capsule, &agent).await }).await
    }

    /// Whether the log holds a record of `run` (its submission record is
    /// durable: it must not run again).
    ///
    /// # Errors
    /// If the store cannot be read.
    pub fn ran(&self, run: &str) -> Result<bool> {
        Ok(!self.runner.log.run_seqs(run)?.is_empty())
    }

    /// Who a run in the log was submitted by: `None` if the log holds no
    /// record of it, `Some(None)` if it has no submission record naming
    /// one (refused before its capsule could be read).
    ///
    /// # Errors
    /// If the store cannot be read or disagrees with the verified log.
    pub fn submitter_of(&self, run: &str) -> Result<Option<Option<String>>> {
        let seqs = self.runner.log.run_seqs(run)?;
        let Some(first) = seqs.first() else { return Ok(None) };
        let records = self.runner.log.read_records_at(std::slice::from_ref(first))?;
        Ok(Some(records.into_iter().find_map(|r| match r.event {
            edge_core::evidence::Event::Submission { submitted_by, .. } => submitted_by,
            _ => None,
        })))
    }

    /// The answer for a run already in the log, made from the store: the
    /// proposal's state, the run's verified records and its receipt (for a
    /// delivery whose answer was lost in a crash).
    ///
    /// # Errors
    /// If the store cannot be read or disagrees with the verified log.
    pub async fn answer_of(&self, run: &str) -> Result<serde_json::Value> {
        let r = self.runner.clone();
        let run = run.to_owned();
        tokio::task::spawn_blocking(move || {
            let records = r.log.read_records_at(&r.log.run_seqs(&run)?)?;
            let outcome = records.iter().rev().find_map(|rec| match &rec.event {
                edge_core::evidence::Event::Completed { outcome } => Some(*outcome),
                _ => None,
            });
            // (A submission's run: the proposal it opened.)
            let id = proposals::proposal_id(&run);
            let state = r.log.proposal(&id)?.map_or_else(|| "refused".to_owned(), |v| v.state.name().to_owned());
            let receipt = r.receipt_of(&run)?;
            Ok(serde_json::json!({
                "id": id, "run": run, "state": state, "outcome": outcome,
                "records": records, "receipt": receipt, "recovered": true,
            }))
        })
        .await
        .context("answer task")?
    }

    /// Assemble a capsule submitted by reference: its manifest and
    /// signature, with the component the manifest pins taken from what this
    /// runner already holds (an earlier submission stored it as evidence).
    /// The result goes through exactly the same checks as an uploaded capsule
    /// (the component, hashed once when it was loaded, is checked against the pin,
    /// the signature covers the manifest).
    pub fn by_reference(&self, manifest: Vec<u8>, signature: Vec<u8>) -> Result<Result<CapsuleFile, ByReference>> {
        /// Why no component: the runner does not hold it, or its store failed.
        enum Missing {
            Component(Sha256Digest),
            Store(anyhow::Error),
        }
        // The component the manifest pins, if this runner holds it.
        let found = CapsuleFile::from_parts(manifest, Some(signature), |digest| {
            if let Some(c) = self.components.get(&digest) {
                return Ok(c);
            }
            match self.runner.log.read_artifact(&digest) {
                Ok(Some(bytes)) => {
                    let c = KnownComponent::new(bytes);
                    self.components.insert(digest, c.clone());
                    Ok(c)
                }
                Ok(None) => Err(Missing::Component(digest)),
                Err(e) => Err(Missing::Store(e)),
            }
        });
        match found {
            Ok(made) => Ok(made.map_err(|e| ByReference::BadManifest(e.to_string()))),
            Err(Missing::Component(d)) => Ok(Err(ByReference::UnknownComponent(d))),
            Err(Missing::Store(e)) => Err(e),
        }
    }

    /// Keep an approval for a waiting proposal and run it once the quorum is
    /// met (or vetoed).
    pub async fn approve(self: &Arc<Self>, id: String, approval: Vec<u8>) -> Result<Result<ApproveReply>, QueueError> {
        let w = self.clone();
        self.run(async move { w.approve_now(&id, approval).await }).await
    }

    /// The runner this service runs on (for the console).
    pub(crate) fn runner(&self) -> &Arc<Runner> {
        &self.runner
    }

    /// One page of proposals, newest first, and the cursor of the next
    /// page (`Query::before`) when this one is full.
    ///
    /// # Errors
    /// If the store cannot be read.
    pub fn list(&self, q: &Query) -> Result<(Vec<ProposalView>, Option<u64>)> {
        let page = self.runner.log.proposals(q)?;
        let next = (page.len() == q.limit as usize).then(|| page.last().map(|(seq, _)| *seq)).flatten();
        Ok((page.into_iter().map(|(_, v)| v).collect(), next))
    }

    /// A proposal's view; None if unknown. A store that cannot be read
    /// answers as unknown, and says so in the runner's log.
    pub fn show(&self, id: &str) -> Option<ProposalView> {
        self.runner.log.proposal(id).unwrap_or_else(|e| {
            tracing::error!(error = %format!("{e:#}"), proposal = %edge_core::text::line(id), "cannot read a proposal");
            None
        })
    }

    /// The receipt of a proposal's latest finished run, made from the store
    /// now ([`Runner::receipt_of`]); None if unknown or not ended.
    ///
    /// # Errors
    /// If the store cannot be read or disagrees with the verified log.
    pub async fn receipt(&self, id: &str) -> Result<Option<String>> {
        let Some(view) = self.show(id) else { return Ok(None) };
        let r = self.runner.clone();
        tokio::task::spawn_blocking(move || {
            for run in view.runs.iter().rev() {
                if let Some(receipt) = r.receipt_of(run)? {
                    return Ok(Some(receipt));
                }
            }
            Ok(None)
        })
        .await
        .context("receipt task")?
    }

    /// Everything about one proposal (the diff, approvals and whether each
    /// counted, what is still needed, …); None if unknown.
    ///
    /// # Errors
    /// If the store cannot be read.
    pub fn detail(&self, id: &str) -> Result<Option<detail::ProposalDetail>> {
        let Some(view) = self.show(id) else { return Ok(None) };
        let kept = if view.state == State::AwaitingApproval { self.kept_approvals(id)? } else { Vec::new() };
        Ok(Some(self.runner.detail(view, &kept, crate::pipeline::unix_now()?)?))
    }

    /// The preview of a proposal with its content, for approvers' tools.
    ///
    /// # Errors
    /// If the store cannot be read.
    pub fn preview(&self, id: &str) -> Result<Option<edge_core::preview::Shown>> {
        match self.show(id) {
            Some(view) => self.runner.shown(&view),
            None => Ok(None),
        }
    }

    /// The approvals kept for a waiting proposal.
    fn kept_approvals(&self, id: &str) -> Result<Vec<Vec<u8>>> {
        let dir = approvals_dir(&self.runner, id);
        let mut approvals = Vec::new();
        match std::fs::read_dir(&dir) {
            Ok(entries) => {
                for entry in entries {
                    approvals.push(std::fs::read(entry?.path())?);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", dir.display())),
        }
        approvals.sort();
        Ok(approvals)
    }

    pub fn document(&self, id: &str) -> Option<Vec<u8>> {
        // Only ids the log knows (never a path from the request).
        let known = self.show(id).is_some();
        known.then(|| std::fs::read(crate::pipeline::proposal_path(&self.runner, id)).ok()).flatten()
    }

    pub async fn checkpoint(&self) -> Result<String> {
        let r = self.runner.clone();
        tokio::task::spawn_blocking(move || r.checkpoint()).await.context("checkpoint task")?
    }

    /// Export the log (or what follows `since`, an earlier checkpoint) as a
    /// body streamed from the store while it is sent: memory holds a few
    /// chunks, not the bundle ([`crate::export::Streamed`]).
    ///
    /// # Errors
    /// What fails before the bundle's first byte (the earlier checkpoint is
    /// not this log's, the store cannot be read).
    pub async fn export(&self, since: Option<String>) -> Result<crate::export::Streamed> {
        let r = self.runner.clone();
        let scope = since.map_or(ExportScope::Full, ExportScope::Since);
        crate::export::Streamed::start(move |out, counted| r.export_counted(&scope, out, counted).map(|_| ())).await
    }

    /// Export the log (or what follows `since`) to a file, durably or not
    /// at all ([`crate::export::export_file`]): for intakes that hand
    /// exports back as files.
    ///
    /// # Errors
    /// As [`crate::export::export_file`].
    pub async fn export_file(&self, since: Option<String>, path: PathBuf) -> Result<crate::export::Exported> {
        let r = self.runner.clone();
        let scope = since.map_or(ExportScope::Full, ExportScope::Since);
        tokio::task::spawn_blocking(move || r.export_file(&scope, &path)).await.context("export task")?
    }

    pub fn metrics(&self) -> String {
        self.metrics.render(&self.runner, self.depth(), &self.intakes)
    }

    async fn submit_now(&self, capsule: Submission, agent: &str) -> Result<SubmitReply> {
        self.submit_now_as(None, capsule, agent).await
    }

    async fn submit_now_as(&self, run: Option<String>, capsule: Submission, agent: &str) -> Result<SubmitReply> {
        let run = run.unwrap_or_else(crate::pipeline::new_run_id);
        // Handed over, not kept: the run lets an upload's bytes go once
        // parsed (a capsule is megabytes, and many runs are in flight).
        let submitted = match capsule {
            Submission::File(bytes) => Submitted::Owned(bytes),
            Submission::Assembled(f) => Submitted::File(f),
        };
        let report = self.run_now(run, submitted, &[], Some(agent), None).await?;
        Ok(summary(&proposals::proposal_id(&report.run), &report))
    }

    /// Run a capsule `edge-runner exec` on this host handed over
    /// (`crate::intake::local`), with the approvals it was given, as that
    /// command runs one itself: no agent is named, and its receipt is
    /// written to `<state>/receipts/<run>.tlog-proof`. Above tier 0 the
    /// capsule is kept for approvals, as a submission's is, so that the API,
    /// the console or another `exec --approval` may run it. `check` sees
    /// the governance the run will take, once it has a slot, and refuses it
    /// (nothing runs) by returning an error: a reload while the run waited
    /// for its slot cannot slip other documents under it.
    pub async fn exec_local(
        self: &Arc<Self>,
        capsule: Vec<u8>,
        approvals: Vec<Vec<u8>>,
        check: impl FnOnce(&Governance) -> Result<()> + Send + 'static,
    ) -> Result<Result<RunReport>, QueueError> {
        let w = self.clone();
        self.run(async move {
            // Approvals settle one proposal at a time, whichever intake
            // brought them (`approve_now`).
            let _one_at_a_time = if approvals.is_empty() { None } else { Some(w.approving.lock().await) };
            let governance = w.runner.governance();
            check(&governance)?;
            let run = crate::pipeline::new_run_id();
            let mut report = w.run_now(run, Submitted::Owned(capsule), &approvals, None, Some(governance)).await?;
            w.runner.write_receipt(&mut report)?;
            Ok(report)
        })
        .await
    }

    /// One run, as every intake starts it: timed, logged, and a proposal
    /// left waiting keeps its capsule file for when approvals come.
    async fn run_now(
        &self,
        run: String,
        submitted: Submitted<'_>,
        approvals: &[Vec<u8>],
        agent: Option<&str>,
        governance: Option<Arc<Governance>>,
    ) -> Result<RunReport> {
        let runner = &self.runner;
        let started = Instant::now();
        let governance = governance.unwrap_or_else(|| runner.governance());
        let mut report = runner.exec_governed(run, submitted, approvals, agent, governance).await?;
        self.metrics.observe_run(started.elapsed());
        let id = report.resumed.clone().unwrap_or_else(|| proposals::proposal_id(&report.run));
        log_finished(&id, &report, started, agent);
        if report.outcome == edge_core::evidence::Outcome::AwaitingApproval {
            let file = report.waiting_capsule.take().context("a run awaiting approval without its capsule")?;
            crate::staging::write_durably(&capsule_path(runner, &id), &file)?;
        }
        Ok(report)
    }

    /// Only approvals that verify for this proposal are kept (anyone with a
    /// certificate may post: nothing unverified accumulates on disk); once
    /// the approvals kept meet the quorum (or one vetoes), the proposal runs
    /// with them, which records every approval, the quorum and what follows.
    async fn approve_now(&self, id: &str, approval: Vec<u8>) -> Result<ApproveReply> {
        let _one_at_a_time = self.approving.lock().await;
        let runner = &self.runner;
        let Some(view) = self.show(id) else {
            return Ok(ApproveReply::Unknown);
        };
        if view.state != State::AwaitingApproval {
            return Ok(ApproveReply::NotWaiting(view.state));
        }
        if approval.len() > MAX_APPROVAL_BYTES {
            return Ok(ApproveReply::Refused(format!(
                "an approval file is at most {MAX_APPROVAL_BYTES} bytes; this is {}",
                approval.len()
            )));
        }
        if let QuorumStatus::Pending { refused, .. } = runner.quorum_status(id, std::slice::from_ref(&approval))?
            && let Some(why) = refused.into_iter().next()
        {
            // Recorded (outside any run, by the runner): who tried what, and
            // why it does not count. The poster is authenticated (a client
            // certificate, or a console session); the file is bounded.
            let d = runner.log.put_artifact(&approval)?;
            let (reason_code, detail) = split_reason(&why);
            let principal = edge_core::approval::ApprovalFile::parse(&approval).ok().map(|f| f.statement.approver);
            let mut log = runner.log.run_log();
            log.append_deferred(
                "runner",
                edge_core::evidence::Event::ApprovalRefused { approval: d, principal, reason_code, detail },
            )?;
            log.barrier().await?;
            return Ok(ApproveReply::Refused(why));
        }
        let dir = approvals_dir(runner, id);
        std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let digest = Sha256Digest::of(&approval);
        crate::staging::write_durably(&dir.join(format!("{}.json", digest.hex())), &approval)?;
        let approvals = self.kept_approvals(id)?;
        let status = runner.quorum_status(id, &approvals)?;
        let mut out = ApprovalKept { id: id.to_owned(), approval: digest, status: status.clone(), run: None };
        if matches!(status, QuorumStatus::Met | QuorumStatus::Vetoed { .. }) {
            let capsule = std::fs::read(capsule_path(runner, id))
                .with_context(|| format!("the capsule of proposal {id} is missing from the state directory"))?;
            let started = Instant::now();
            let report = runner.exec_submitted(&capsule, &approvals, view.submitted_by.as_deref()).await?;
            self.metrics.observe_run(started.elapsed());
            log_finished(id, &report, started, report.submitted_by.as_deref());
            out.run = Some(summary(id, &report));
        }
        Ok(ApproveReply::Kept(Box::new(out)))
    }
}

/// What became of an approval file an intake delivered.
#[derive(Debug)]
pub enum Delivered {
    Kept(Box<ApprovalKept>),
    /// Kept when it was delivered before.
    Again(Box<KeptEarlier>),
    Refused {
        proposal: Option<String>,
        reason_code: String,
        detail: String,
    },
}

/// A refusal's `[code] detail` text as (code, detail); `approval.refused`
/// when it names no code.
fn split_reason(why: &str) -> (String, String) {
    match why.strip_prefix('[').and_then(|w| w.split_once("] ")) {
        Some((code, detail)) => (code.to_owned(), detail.to_owned()),
        None => ("approval.refused".to_owned(), why.to_owned()),
    }
}

/// The operational log's line for a finished run (see `crate::logging`).
fn log_finished(proposal: &str, report: &RunReport, started: Instant, agent: Option<&str>) {
    tracing::info!(
        target: "edge_runner::run",
        proposal,
        run = %report.run,
        agent,
        outcome = serde_json::to_value(report.outcome).ok().as_ref().and_then(serde_json::Value::as_str),
        tier = report.tier,
        reason_code = report.refusal.as_ref().map(|r| r.reason_code),
        ms = started.elapsed().as_secs_f64() * 1e3,
        "run finished"
    );
}

fn capsule_path(runner: &Runner, id: &str) -> PathBuf {
    runner.config.state_dir.join("proposals").join(format!("{id}.capsule"))
}

fn approvals_dir(runner: &Runner, id: &str) -> PathBuf {
    runner.config.state_dir.join("proposals").join(format!("{id}.approvals"))
}

/// What a submission returns — over the API, and from `exec --json` and
/// `submit --json` alike (one shape): the proposal id and state, the
/// admission, the decision, the plan, the diff as previewed, findings, the
/// quorum, what happened, and the run's evidence records and receipt.
#[derive(Debug, Clone, Serialize)]
pub struct SubmitReply {
    pub id: String,
    pub run: String,
    /// The proposal's lifecycle state after this run (`edge_core::lifecycle`).
    pub state: String,
    pub outcome: edge_core::evidence::Outcome,
    pub admission: AdmissionReply,
    pub tier: Option<u8>,
    pub decision: Option<edge_core::policy::Decision>,
    pub plan: Option<edge_core::plan::Plan>,
    pub plan_digest: Option<Sha256Digest>,
    pub diff: Vec<edge_core::plan::DiffEntry>,
    /// Each changed file as previewed, with its diff lines.
    pub files: Vec<detail::FileDiff>,
    /// The plan's findings, then the verify phase's (a diagnostic's answer).
    pub findings: Vec<edge_core::plan::Finding>,
    pub verification: Option<VerificationReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quorum: Option<serde_json::Value>,
    pub refusal: Option<Refusal>,
    /// The run's evidence records.
    pub records: Vec<edge_core::evidence::Record>,
    /// The run's receipt (a C2SP tlog-proof of its terminal record).
    pub receipt: Option<String>,
    /// Command-line runs: where the proposal document approvers review was written.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub document: Option<PathBuf>,
    /// Command-line runs: where the receipt was written.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub receipt_file: Option<PathBuf>,
}

/// Whether the capsule was admitted, and as what.
#[derive(Debug, Clone, Serialize)]
pub struct AdmissionReply {
    pub admitted: bool,
    pub capsule: Option<Sha256Digest>,
    pub name: Option<String>,
    pub signer: Option<String>,
}

/// An approval kept for a waiting proposal: where the quorum stands, and
/// the run, when the quorum was met (or vetoed) and the proposal ran.
#[derive(Debug, Clone, Serialize)]
pub struct ApprovalKept {
    pub id: String,
    pub approval: Sha256Digest,
    pub status: QuorumStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run: Option<SubmitReply>,
}

/// An approval delivered again that was kept the first time: the
/// proposal's state now, and the run its quorum started with its receipt,
/// if it ran.
#[derive(Debug, Clone, Serialize)]
pub struct KeptEarlier {
    pub id: String,
    pub approval: Sha256Digest,
    /// The proposal's state now.
    pub state: String,
    /// The run its quorum started, and that run's receipt, if it ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub receipt: Option<String>,
}

/// The answer for a run (the proposal it belongs to is `id`).
pub fn summary(id: &str, r: &RunReport) -> SubmitReply {
    let state = proposals::index(&r.records)
        .into_iter()
        .last()
        .map_or_else(|| "refused".to_owned(), |p| p.state.name().to_owned());
    let files = r.shown.as_ref().map(detail::files).unwrap_or_default();
    let mut findings = r.plan.as_ref().map(|p| p.findings.clone()).unwrap_or_default();
    findings.extend(r.verification.iter().flat_map(|v| v.findings.iter().cloned()));
    SubmitReply {
        id: id.to_owned(),
        run: r.run.clone(),
        state,
        outcome: r.outcome,
        admission: AdmissionReply {
            admitted: r.signer.is_some(),
            capsule: r.capsule,
            name: r.name.clone(),
            signer: r.signer.clone(),
        },
        tier: r.tier,
        decision: r.decision.clone(),
        plan: r.plan.clone(),
        plan_digest: r.plan_digest,
        diff: r.diff.clone(),
        files,
        findings,
        verification: r.verification.clone(),
        quorum: r.quorum.clone(),
        refusal: r.refusal.clone(),
        records: r.records.clone(),
        receipt: r.receipt_proof.clone(),
        document: r.proposal.clone(),
        receipt_file: r.receipt.clone(),
    }
}

/// The background full check: its thread, and what stops it (also when
/// dropped: a `serve` that fails after its start leaves no check holding
/// the store).
struct FullCheck {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FullCheck {
    /// Stop it (the flag is set as it drops); its thread, to wait for.
    fn stop(mut self) -> Option<std::thread::JoinHandle<()>> {
        self.thread.take()
    }
}

impl Drop for FullCheck {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}

/// After every start, the whole log is checked on a low-priority thread
/// (`crate::store::check`): a start verifies only what was appended since
/// the last signed checkpoint. Progress goes to the log; a log found
/// altered stops the evidence writer (nothing more runs, readiness says
/// why) and is logged as an error. Stopped by [`RunService::shutdown`].
fn full_check_in_background(runner: &Arc<Runner>) -> Result<FullCheck> {
    let dir = runner.log.dir().to_path_buf();
    let (log, origin, identity) =
        (Arc::downgrade(runner), runner.config.name.clone(), runner.identity.verifier().clone());
    let stop = Arc::new(AtomicBool::new(false));
    let stopping = stop.clone();
    let thread = std::thread::Builder::new()
        .name("evidence-check".into())
        .spawn(move || {
            // SAFETY: plain syscalls on this thread's own id. A failure
            // only leaves the thread at normal priority.
            unsafe {
                libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, 10);
            }
            let started = std::time::Instant::now();
            let mut last = std::time::Instant::now();
            let mut progress = |done: u64, total: u64| {
                if last.elapsed() >= std::time::Duration::from_secs(10) {
                    last = std::time::Instant::now();
                    tracing::info!(done, total, "full evidence check");
                }
            };
            match crate::store::check::full(&dir, None, &origin, &identity, &mut progress, &stopping) {
                Ok(c) => tracing::info!(
                    records = c.records,
                    checkpoints = c.checkpoints,
                    secs = started.elapsed().as_secs_f32(),
                    "full evidence check passed"
                ),
                Err(e) if e.is::<crate::store::check::Stopped>() => {
                    tracing::info!(secs = started.elapsed().as_secs_f32(), "{e}");
                }
                Err(e) if e.is::<crate::store::check::CouldNotCheck>() => {
                    tracing::error!(error = %format!("{e:#}"), "full evidence check could not run; the runner carries on");
                }
                Err(e) => {
                    let why = format!(
                        "the evidence store failed verification ({e:#}); the runner refuses to run on a broken log: \
                         stop it and restore the state directory from a backup"
                    );
                    tracing::error!(error = %why, "full evidence check failed");
                    if let Some(runner) = log.upgrade() {
                        runner.log.poison(why);
                    }
                }
            }
        })
        .context("cannot start the background evidence check")?;
    Ok(FullCheck { stop, thread: Some(thread) })
}
