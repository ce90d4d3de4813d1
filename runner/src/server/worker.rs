//! The runner thread: owns the [`Runner`] (its evidence store lock, sandbox
//! and policy) and executes jobs one at a time from a bounded queue. Runs of
//! one runner home are sequential; the queue bound turns overload into `429`
//! instead of unbounded memory.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, anyhow};
use edge_core::Sha256Digest;
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};

use crate::approvals::QuorumStatus;
use crate::config::RunnerConfig;
use crate::exec::{RunReport, Runner};
use crate::export::ExportScope;
use crate::server::metrics::Metrics;
use crate::server::proposals::{self, ProposalView, State};

/// What an API request asks of the runner.
pub(crate) enum Job {
    Submit {
        capsule: Vec<u8>,
        agent: String,
        reply: oneshot::Sender<Result<Value>>,
    },
    Approve {
        id: String,
        approval: Vec<u8>,
        reply: oneshot::Sender<Result<ApproveReply>>,
    },
    List {
        state: Option<State>,
        reply: oneshot::Sender<Vec<ProposalView>>,
    },
    Show {
        id: String,
        reply: oneshot::Sender<Option<ProposalView>>,
    },
    Document {
        id: String,
        reply: oneshot::Sender<Option<Vec<u8>>>,
    },
    Checkpoint {
        reply: oneshot::Sender<Result<String>>,
    },
    Export {
        since: Option<String>,
        reply: oneshot::Sender<Result<Vec<u8>>>,
    },
    /// `queue_depth`: jobs waiting when the request was queued.
    Metrics {
        queue_depth: usize,
        reply: oneshot::Sender<String>,
    },
}

/// What became of a posted approval.
pub(crate) enum ApproveReply {
    /// No such proposal.
    Unknown,
    /// Not kept: it does not verify for this proposal (reason given).
    Refused(String),
    /// Kept; the quorum status, and the run when it ran.
    Kept(Value),
}

/// Largest approval file accepted (ours are about 1 KiB).
const MAX_APPROVAL_BYTES: usize = 64 << 10;

/// The sending side, shared by connections.
pub(crate) struct Queue {
    tx: mpsc::Sender<Job>,
}

/// Why a job could not be queued.
pub(crate) enum QueueError {
    Full,
    Stopped,
}

impl Queue {
    /// Jobs waiting for the runner thread (the channel knows).
    pub(crate) fn depth(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }

    /// Whether the runner thread is still taking jobs (it was open before
    /// the server accepted anything; its exit or panic closes the channel).
    pub(crate) fn is_open(&self) -> bool {
        !self.tx.is_closed()
    }

    /// Queue a job without waiting: a full queue is the caller's `429`.
    pub(crate) fn try_send(&self, job: Job) -> Result<(), QueueError> {
        match self.tx.try_send(job) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => Err(QueueError::Full),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(QueueError::Stopped),
        }
    }
}

/// Open the runner on its own thread and return the queue feeding it.
///
/// # Errors
/// If the runner cannot open (a broken or locked evidence log refuses to
/// start; the error says which check failed).
pub(crate) fn start(
    config: RunnerConfig,
    depth: usize,
    metrics: Arc<Metrics>,
) -> Result<(Queue, std::thread::JoinHandle<Result<()>>)> {
    let (tx, mut rx) = mpsc::channel::<Job>(depth.max(1));
    let (opened_tx, opened_rx) = std::sync::mpsc::channel::<Result<()>>();
    let m = metrics.clone();
    let thread = std::thread::Builder::new().name("runner".into()).spawn(move || -> Result<()> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let mut runner = match Runner::open(config) {
            Ok(r) => r,
            Err(e) => {
                let msg = format!("{e:#}");
                let _ = opened_tx.send(Err(e));
                return Err(anyhow!(msg));
            }
        };
        let _ = opened_tx.send(Ok(()));
        rt.block_on(async {
            // Expiry is checked between jobs, at least every second.
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    job = rx.recv() => {
                        let Some(job) = job else { break };
                        run_job(&mut runner, &m, job).await;
                    }
                    _ = tick.tick() => {
                        match runner.expire_proposals(crate::approvals::unix_now(), None) {
                            Ok(ids) => for id in ids {
                                tracing::info!(proposal = %id, "proposal expired");
                            },
                            Err(e) => tracing::error!(error = %format!("{e:#}"), "cannot record expiry"),
                        }
                    }
                }
            }
        });
        Ok(())
    })?;
    opened_rx.recv().context("the runner thread stopped while opening")??;
    Ok((Queue { tx }, thread))
}

async fn run_job(runner: &mut Runner, m: &Metrics, job: Job) {
    match job {
        Job::Submit { capsule, agent, reply } => {
            let _ = reply.send(submit(runner, m, &capsule, &agent).await);
        }
        Job::Approve { id, approval, reply } => {
            let _ = reply.send(approve(runner, m, &id, approval).await);
        }
        Job::List { state, reply } => {
            let all = proposals::index(runner.log.records());
            let _ = reply.send(all.into_iter().filter(|p| state.is_none_or(|s| p.state == s)).collect());
        }
        Job::Show { id, reply } => {
            let _ = reply.send(proposals::index(runner.log.records()).into_iter().find(|p| p.id == id));
        }
        Job::Document { id, reply } => {
            // Only ids the log knows (never a path from the request).
            let known = proposals::index(runner.log.records()).iter().any(|p| p.id == id);
            let doc = known.then(|| std::fs::read(crate::approvals::proposal_path(runner, &id)).ok()).flatten();
            let _ = reply.send(doc);
        }
        Job::Checkpoint { reply } => {
            let _ = reply.send(runner.checkpoint());
        }
        Job::Export { since, reply } => {
            let scope = since.map_or(ExportScope::Full, ExportScope::Since);
            let _ = reply.send(runner.export(&scope).map(|e| e.bytes));
        }
        Job::Metrics { queue_depth, reply } => {
            let _ = reply.send(m.render(runner, queue_depth));
        }
    }
}

fn capsule_path(runner: &Runner, id: &str) -> PathBuf {
    runner.config.state_dir.join("proposals").join(format!("{id}.capsule"))
}

fn approvals_dir(runner: &Runner, id: &str) -> PathBuf {
    runner.config.state_dir.join("proposals").join(format!("{id}.approvals"))
}

/// Run a submitted capsule; above tier 0 keep it for when approvals come.
async fn submit(runner: &mut Runner, m: &Metrics, capsule: &[u8], agent: &str) -> Result<Value> {
    let started = Instant::now();
    let report = runner.exec_submitted(capsule, &[], Some(agent)).await?;
    m.observe_run(started.elapsed());
    let id = proposals::proposal_id(&report.run);
    if report.outcome == edge_core::evidence::Outcome::AwaitingApproval {
        crate::staging::write_durably(&capsule_path(runner, &id), capsule)?;
    }
    Ok(summary(&id, &report))
}

/// Keep an approval for a waiting proposal; once the approvals kept meet
/// the quorum (or one vetoes), run the proposal with them, which records
/// every approval, the quorum and what follows.
async fn approve(runner: &mut Runner, m: &Metrics, id: &str, approval: Vec<u8>) -> Result<ApproveReply> {
    let Some(view) = proposals::index(runner.log.records()).into_iter().find(|p| p.id == id) else {
        return Ok(ApproveReply::Unknown);
    };
    if view.state != State::AwaitingApproval {
        anyhow::bail!("proposal {id} is {}, not awaiting approval", view.state.name());
    }
    // Only approvals that verify for this proposal are kept (anyone with a
    // certificate may post: nothing unverified accumulates on disk).
    if approval.len() > MAX_APPROVAL_BYTES {
        return Ok(ApproveReply::Refused(format!(
            "an approval file is at most {MAX_APPROVAL_BYTES} bytes; this is {}",
            approval.len()
        )));
    }
    if let QuorumStatus::Pending { refused, .. } = runner.quorum_status(id, std::slice::from_ref(&approval))?
        && let Some(why) = refused.into_iter().next()
    {
        return Ok(ApproveReply::Refused(why));
    }
    let dir = approvals_dir(runner, id);
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let digest = Sha256Digest::of(&approval);
    crate::staging::write_durably(&dir.join(format!("{}.json", digest.hex())), &approval)?;
    let mut approvals = Vec::new();
    for entry in std::fs::read_dir(&dir)? {
        approvals.push(std::fs::read(entry?.path())?);
    }
    approvals.sort();
    let status = runner.quorum_status(id, &approvals)?;
    let mut out = json!({ "id": id, "approval": digest, "status": status });
    if matches!(status, QuorumStatus::Met | QuorumStatus::Vetoed { .. }) {
        let capsule = std::fs::read(capsule_path(runner, id))
            .with_context(|| format!("the capsule of proposal {id} is missing from the state directory"))?;
        let started = Instant::now();
        let report = runner.exec_submitted(&capsule, &approvals, view.submitted_by.as_deref()).await?;
        m.observe_run(started.elapsed());
        out["run"] = summary(id, &report);
    }
    Ok(ApproveReply::Kept(out))
}

/// What a submission returns: the proposal id, the admission result, the
/// decision and what happened.
fn summary(id: &str, r: &RunReport) -> Value {
    let admitted = r.signer.is_some();
    let state = proposals::index(&r.records)
        .into_iter()
        .last()
        .map_or_else(|| "refused".to_owned(), |p| p.state.name().to_owned());
    json!({
        "id": id,
        "run": r.run,
        "state": state,
        "outcome": r.outcome,
        "admission": {
            "admitted": admitted,
            "capsule": r.capsule,
            "name": r.name,
            "signer": r.signer,
        },
        "decision": r.decision.as_ref().map(|d| json!({
            "allowed": d.allowed,
            "tier": d.tier,
            "approvals_required": d.approvals_required,
            "reasons": d.reasons,
        })),
        "plan": r.plan_digest,
        "diff": r.diff,
        "verification": r.verification,
        "refusal": r.refusal,
        "records": r.records.iter().map(|x| x.seq).collect::<Vec<_>>(),
    })
}
