//! The one fold of the evidence log into proposals and their lifecycle,
//! shared by the runner's index, the API's proposal view, the offline
//! verifier and the report: each reads the same records the same way (the
//! log is the state: nothing here can disagree with what was recorded).
//!
//! A proposal is the run that submitted a capsule (id `p-…` for run `r-…`)
//! plus, above tier 0, the run that executed it once approvals were
//! presented (its `quorum` record names the proposal).

use std::collections::HashMap;

use crate::Sha256Digest;
use crate::approval::quorum::Outcome as QuorumOutcome;
use crate::evidence::{Event, Outcome, Record};
use crate::policy::Decision;
use serde::Serialize;

/// The runs of runner-level records (key events, policy changes, expiries,
/// insecure switches, failed cleanups): not capsule runs.
pub const RUNNER_RUNS: [&str; 2] = ["runner", "policy"];

/// Where a proposal is in its lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum State {
    Submitted,
    Refused,
    Decided,
    Planned,
    AwaitingApproval,
    Rejected,
    Expired,
    Approved,
    Applying,
    Verifying,
    Committed,
    /// Nothing to change (a diagnostic, or an empty plan): findings only.
    Completed,
    RolledBack,
    Failed,
}

impl State {
    pub const ALL: [State; 14] = [
        State::Submitted,
        State::Refused,
        State::Decided,
        State::Planned,
        State::AwaitingApproval,
        State::Rejected,
        State::Expired,
        State::Approved,
        State::Applying,
        State::Verifying,
        State::Committed,
        State::Completed,
        State::RolledBack,
        State::Failed,
    ];

    pub fn name(self) -> &'static str {
        match self {
            State::Submitted => "submitted",
            State::Refused => "refused",
            State::Decided => "decided",
            State::Planned => "planned",
            State::AwaitingApproval => "awaiting-approval",
            State::Rejected => "rejected",
            State::Expired => "expired",
            State::Approved => "approved",
            State::Applying => "applying",
            State::Verifying => "verifying",
            State::Committed => "committed",
            State::Completed => "completed",
            State::RolledBack => "rolled-back",
            State::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<State> {
        State::ALL.into_iter().find(|st| st.name() == s)
    }
}

/// One approval as the log recorded it.
#[derive(Debug, Clone, Serialize)]
pub struct ApprovalView {
    pub principal: Option<String>,
    pub verdict: Option<String>,
    pub accepted: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
    pub record: u64,
}

/// A proposal, as `GET /v1/proposals/{id}` returns it.
#[derive(Debug, Clone, Serialize)]
pub struct ProposalView {
    pub id: String,
    pub state: State,
    pub name: Option<String>,
    pub capsule: Option<Sha256Digest>,
    pub submitted_by: Option<String>,
    pub tier: Option<u8>,
    pub decision: Option<Decision>,
    pub plan: Option<Sha256Digest>,
    pub approvals_required: u32,
    pub approvals: Vec<ApprovalView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refusal: Option<String>,
    pub runs: Vec<String>,
    /// Sequence numbers of every evidence record of the proposal.
    pub records: Vec<u64>,
}

/// The proposal id of a run id (`r-…` → `p-…`).
pub fn proposal_id(run: &str) -> String {
    format!("p{}", run.strip_prefix('r').unwrap_or(run))
}

/// Every proposal in the log, by id, in submission order.
pub fn index(records: &[Record]) -> Vec<ProposalView> {
    let mut ix = ProposalIndex::default();
    for r in records {
        ix.push(r);
    }
    ix.order.into_iter().filter_map(|id| ix.by_id.remove(&id)).collect()
}

/// The proposals of a log, folded one record at a time (the runner keeps
/// one up to date as records commit, instead of keeping the records).
#[derive(Debug, Default)]
pub struct ProposalIndex {
    order: Vec<String>,
    by_id: HashMap<String, ProposalView>,
    /// Runs in progress that continue an earlier proposal, and which (any
    /// other run belongs to its own proposal, `proposal_id(run)`).
    run_to_id: HashMap<String, String>,
}

impl ProposalIndex {
    /// Every proposal, in submission order.
    pub fn iter(&self) -> impl Iterator<Item = &ProposalView> {
        self.order.iter().filter_map(|id| self.by_id.get(id))
    }

    pub fn get(&self, id: &str) -> Option<&ProposalView> {
        self.by_id.get(id)
    }

    /// Fold in the next record of the log.
    pub fn push(&mut self, r: &Record) {
        let (order, by_id, run_to_id) = (&mut self.order, &mut self.by_id, &mut self.run_to_id);
        if RUNNER_RUNS.contains(&r.run.as_str()) {
            if let Event::ProposalExpired { proposal, .. } = &r.event
                && let Some(v) = by_id.get_mut(proposal)
            {
                // Only a proposal still waiting expires (not a rejected one).
                if v.state == State::AwaitingApproval {
                    v.state = State::Expired;
                }
                v.records.push(r.seq);
            }
            return;
        }
        // A run continues an earlier proposal once it records approvals for it.
        let proposal_of_event = match &r.event {
            Event::ApprovalReceived { proposal, .. } | Event::Quorum { proposal, .. } => Some(proposal),
            _ => None,
        };
        let own = || proposal_id(&r.run);
        if let Some(p) = proposal_of_event
            && by_id.contains_key(p)
            && run_to_id.get(r.run.as_str()).map_or_else(|| *p != own(), |cur| cur != p)
        {
            let own = own();
            // Move what this run recorded so far under the proposal it continues.
            if let Some(mine) = by_id.remove(&own) {
                if let Some(i) = order.iter().rposition(|id| id == &own) {
                    order.remove(i);
                }
                let target = by_id.get_mut(p).expect("checked");
                target.records.extend(mine.records);
                target.runs.push(r.run.clone());
            }
            run_to_id.insert(r.run.clone(), p.clone());
        }
        let id = run_to_id.get(r.run.as_str()).cloned().unwrap_or_else(own);
        if !by_id.contains_key(&id) {
            order.push(id.clone());
            let view = ProposalView {
                id: id.clone(),
                state: State::Submitted,
                name: None,
                capsule: None,
                submitted_by: None,
                tier: None,
                decision: None,
                plan: None,
                approvals_required: 0,
                approvals: Vec::new(),
                refusal: None,
                runs: vec![r.run.clone()],
                records: Vec::new(),
            };
            by_id.insert(id.clone(), view);
        }
        let v = by_id.get_mut(&id).expect("inserted above");
        v.records.push(r.seq);
        apply(v, r);
        if r.is_terminal() {
            run_to_id.remove(r.run.as_str());
        }
    }
}

fn apply(v: &mut ProposalView, r: &Record) {
    let continuing = v.runs.len() > 1;
    match &r.event {
        Event::Submission { capsule, name, version, submitted_by, .. } if !continuing => {
            v.capsule = Some(*capsule);
            v.name = Some(format!("{name}@{version}"));
            v.submitted_by.clone_from(submitted_by);
        }
        Event::Decision { decision, .. } if !continuing => {
            v.tier = Some(decision.tier);
            v.approvals_required = decision.approvals_required;
            v.decision = Some(decision.clone());
            v.state = State::Decided;
        }
        Event::Planned { plan, .. } if !continuing => {
            v.plan = Some(*plan);
            v.state = State::Planned;
        }
        Event::AwaitingApproval { .. } => v.state = State::AwaitingApproval,
        Event::ApprovalAccepted { principal, verdict, .. } => v.approvals.push(ApprovalView {
            principal: Some(principal.clone()),
            verdict: Some(verdict.clone()),
            accepted: true,
            refused: None,
            record: r.seq,
        }),
        Event::ApprovalRefused { principal, reason_code, .. } => v.approvals.push(ApprovalView {
            principal: principal.clone(),
            verdict: None,
            accepted: false,
            refused: Some(reason_code.clone()),
            record: r.seq,
        }),
        Event::Quorum { outcome, .. } => {
            v.state = match QuorumOutcome::from_recorded(outcome) {
                Some(QuorumOutcome::Met { .. }) => State::Approved,
                Some(QuorumOutcome::Vetoed { .. }) => State::Rejected,
                Some(QuorumOutcome::Insufficient { .. }) | None => State::AwaitingApproval,
            };
        }
        Event::Applied { .. } | Event::CommitIntent { .. } => v.state = State::Applying,
        Event::Committed { .. } => v.state = State::Verifying,
        Event::Refused { reason_code, detail, .. } => {
            v.refusal = Some(format!("[{reason_code}] {detail}"));
        }
        Event::Completed { outcome } => {
            v.state = match outcome {
                Outcome::Committed => State::Committed,
                Outcome::NoChanges => State::Completed,
                Outcome::RolledBack => State::RolledBack,
                Outcome::Interrupted => State::Failed,
                Outcome::AwaitingApproval => State::AwaitingApproval,
                // A continuation refused for want of a quorum leaves the
                // proposal waiting; a veto rejected it; else it was refused.
                Outcome::Refused => match v.state {
                    State::Rejected => State::Rejected,
                    State::AwaitingApproval if continuing => State::AwaitingApproval,
                    _ if continuing => State::Failed,
                    _ => State::Refused,
                },
            };
        }
        _ => {}
    }
}
