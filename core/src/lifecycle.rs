//! The one fold of the evidence log into proposals and their lifecycle,
//! shared by the runner's index, the API's proposal view, the offline
//! verifier and the report: each reads the same records the same way (the
//! log is the state: nothing here can disagree with what was recorded).
//!
//! A proposal is the run that submitted a capsule (id `p-…` for run `r-…`)
//! plus, above tier 0, the run that executed it once approvals were
//! presented (its `quorum` record names the proposal).

use std::collections::{BTreeSet, HashMap};

use crate::Sha256Digest;
use crate::approval::CounterLedger;
use crate::approval::quorum::Outcome as QuorumOutcome;
use crate::evidence::{Event, Outcome, PasskeyUse, Record};
use crate::policy::Decision;
use serde::{Deserialize, Serialize};

/// The runs of runner-level records (key events, policy changes, expiries,
/// insecure switches, failed cleanups): not capsule runs.
pub const RUNNER_RUNS: [&str; 2] = ["runner", "policy"];

/// Where a proposal is in its lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
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
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApprovalView {
    pub principal: Option<String>,
    pub verdict: Option<String>,
    pub accepted: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
    pub record: u64,
}

/// A proposal, as `GET /v1/proposals/{id}` returns it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProposalView {
    pub id: String,
    pub state: State,
    pub name: Option<String>,
    pub capsule: Option<Sha256Digest>,
    pub submitted_by: Option<String>,
    pub tier: Option<u8>,
    pub decision: Option<Decision>,
    pub plan: Option<Sha256Digest>,
    /// Artifact: the proposal document approvers review (above tier 0).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub document: Option<Sha256Digest>,
    /// Artifact: the preview of the staged result (`edge_core::preview`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub preview: Option<Sha256Digest>,
    /// When it was submitted (the time of its first record, RFC 3339).
    pub submitted_at: String,
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

/// Which proposal a record was folded into, and its state before the
/// record: with the proposal's state after it, what changed (the runner
/// announces lifecycle changes from this: `runner/src/events.rs`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Folded {
    pub proposal: String,
    /// [`State::Submitted`] for a proposal this record starts.
    pub before: State,
}

/// The proposals of a log, folded one record at a time (the runner keeps
/// one up to date as records commit, instead of keeping the records).
///
/// A [`ProposalIndex::bounded`] index (the runner's) keeps only the views
/// it is working on: the rest live in the runner's store, are loaded when a
/// record names them ([`ProposalIndex::push_with`]), and what changed is
/// handed over ([`ProposalIndex::changed`]) before views are dropped again
/// ([`ProposalIndex::evict`]).
#[derive(Debug, Default)]
pub struct ProposalIndex {
    /// Submission order (not kept by a bounded index).
    order: Vec<String>,
    by_id: HashMap<String, ProposalView>,
    /// Runs in progress that continue an earlier proposal, and which (any
    /// other run belongs to its own proposal, `proposal_id(run)`).
    run_to_id: HashMap<String, String>,
    /// Bounded: proposals changed, and removed (merged into the proposal a
    /// run continues), since the last [`ProposalIndex::changed`].
    bounded: Option<(BTreeSet<String>, BTreeSet<String>)>,
}

/// What changed in a bounded index: the views to store, the ids to remove.
#[derive(Debug, Clone, Default)]
pub struct Changed {
    pub views: Vec<ProposalView>,
    pub removed: Vec<String>,
}

/// Whether a proposal's state is final for the lifecycle (it may still
/// gain records: a late approval, refused, is recorded under it).
pub fn is_final(state: State) -> bool {
    matches!(
        state,
        State::Refused
            | State::Rejected
            | State::Expired
            | State::Committed
            | State::Completed
            | State::RolledBack
            | State::Failed
    )
}

impl ProposalIndex {
    /// An index that keeps no order and only the views it works on,
    /// resuming with the runs in progress that continue a proposal.
    pub fn bounded(continuing: HashMap<String, String>) -> Self {
        Self { run_to_id: continuing, bounded: Some(Default::default()), ..Self::default() }
    }

    /// Every proposal, in submission order (an unbounded index).
    pub fn iter(&self) -> impl Iterator<Item = &ProposalView> {
        self.order.iter().filter_map(|id| self.by_id.get(id))
    }

    /// A proposal this index holds (a bounded one: only those in memory).
    pub fn get(&self, id: &str) -> Option<&ProposalView> {
        self.by_id.get(id)
    }

    /// Runs in progress continuing an earlier proposal: run → proposal.
    pub fn continuing(&self) -> &HashMap<String, String> {
        &self.run_to_id
    }

    /// Bounded: the views changed and the ids removed since the last call
    /// (copies; the views stay until [`ProposalIndex::evict`]).
    pub fn changed(&mut self) -> Changed {
        let Some((changed, removed)) = &mut self.bounded else { return Changed::default() };
        let (changed, removed) = (std::mem::take(changed), std::mem::take(removed));
        Changed {
            views: changed.iter().filter_map(|id| self.by_id.get(id)).cloned().collect(),
            removed: removed.into_iter().filter(|id| !self.by_id.contains_key(id)).collect(),
        }
    }

    /// Bounded: drop the views not worth keeping in memory (they are
    /// loaded again when a record names them). Views changed since the last
    /// [`ProposalIndex::changed`] and views a run in progress continues are
    /// always kept.
    pub fn evict(&mut self, keep: impl Fn(&ProposalView) -> bool) {
        let Some((changed, _)) = &self.bounded else { return };
        let continued: BTreeSet<&String> = self.run_to_id.values().collect();
        self.by_id.retain(|id, v| keep(v) || changed.contains(id) || continued.contains(id));
    }

    /// Views in memory.
    pub fn in_memory(&self) -> usize {
        self.by_id.len()
    }

    /// Fold in the next record of the log (see [`ProposalIndex::push_with`]).
    pub fn push(&mut self, r: &Record) -> Option<Folded> {
        self.push_with(r, &mut |_| None)
    }

    /// Fold in the next record of the log; returns the proposal it was
    /// folded into (none for runner-level records other than an expiry).
    /// `load` gives a proposal this index does not hold (a bounded index's
    /// store; `None`: it does not exist).
    pub fn push_with(&mut self, r: &Record, load: &mut dyn FnMut(&str) -> Option<ProposalView>) -> Option<Folded> {
        // Every proposal the record can touch, in memory first. A run that
        // continues another proposal no longer has its own: its own view was
        // merged away (and its removal may not be stored yet), so it is not
        // loaded back.
        let runner_level = RUNNER_RUNS.contains(&r.run.as_str());
        let continues = self.run_to_id.get(r.run.as_str()).cloned();
        let mut wanted = if runner_level || continues.is_some() { Vec::new() } else { vec![proposal_id(&r.run)] };
        match &r.event {
            Event::ProposalExpired { proposal, .. }
            | Event::Resumed { proposal, .. }
            | Event::ApprovalReceived { proposal, .. }
            | Event::Quorum { proposal, .. } => wanted.push(proposal.clone()),
            _ => {}
        }
        wanted.extend(continues);
        for id in wanted {
            let removed = self.bounded.as_ref().is_some_and(|(_, removed)| removed.contains(&id));
            if !removed
                && !self.by_id.contains_key(&id)
                && let Some(v) = load(&id)
            {
                self.by_id.insert(id, v);
            }
        }
        let folded = self.fold(r);
        if let (Some((changed, _)), Some(f)) = (&mut self.bounded, &folded) {
            changed.insert(f.proposal.clone());
        }
        folded
    }

    fn fold(&mut self, r: &Record) -> Option<Folded> {
        let keep_order = self.bounded.is_none();
        let (order, by_id, run_to_id) = (&mut self.order, &mut self.by_id, &mut self.run_to_id);
        if RUNNER_RUNS.contains(&r.run.as_str()) {
            if let Event::ProposalExpired { proposal, .. } = &r.event
                && let Some(v) = by_id.get_mut(proposal)
            {
                let before = v.state;
                // Only a proposal still waiting expires (not a rejected one).
                if v.state == State::AwaitingApproval {
                    v.state = State::Expired;
                }
                v.records.push(r.seq);
                return Some(Folded { proposal: proposal.clone(), before });
            }
            return None;
        }
        // A run continues an earlier proposal once it names it (resumes it,
        // or records approvals for it).
        let proposal_of_event = match &r.event {
            Event::Resumed { proposal, .. }
            | Event::ApprovalReceived { proposal, .. }
            | Event::Quorum { proposal, .. } => Some(proposal),
            _ => None,
        };
        let own = || proposal_id(&r.run);
        if let Some(p) = proposal_of_event
            && by_id.contains_key(p)
            && run_to_id.get(r.run.as_str()).map_or_else(|| *p != own(), |cur| cur != p)
        {
            let own = own();
            // Move what this run recorded so far under the proposal it continues.
            let mine = by_id.remove(&own);
            if mine.is_some()
                && let Some(i) = order.iter().rposition(|id| id == &own)
            {
                order.remove(i);
            }
            if mine.is_some()
                && let Some((changed, removed)) = &mut self.bounded
            {
                changed.remove(&own);
                removed.insert(own.clone());
            }
            let target = by_id.get_mut(p).expect("checked");
            target.records.extend(mine.into_iter().flat_map(|m| m.records));
            if !target.runs.contains(&r.run) {
                target.runs.push(r.run.clone());
            }
            run_to_id.insert(r.run.clone(), p.clone());
        }
        let id = run_to_id.get(r.run.as_str()).cloned().unwrap_or_else(own);
        let before = by_id.get(&id).map_or(State::Submitted, |v| v.state);
        if !by_id.contains_key(&id) {
            if keep_order {
                order.push(id.clone());
            }
            let view = ProposalView {
                id: id.clone(),
                state: State::Submitted,
                name: None,
                capsule: None,
                submitted_by: None,
                tier: None,
                decision: None,
                plan: None,
                document: None,
                preview: None,
                submitted_at: r.time.clone(),
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
        Some(Folded { proposal: id, before })
    }
}

fn apply(v: &mut ProposalView, r: &Record) {
    let continuing = v.runs.len() > 1;
    // A proposal that has ended keeps its outcome: a later attempt on it
    // (replayed approvals, a late approval after expiry) is refused and
    // recorded under it, but does not rewrite how it ended.
    let ended = matches!(
        v.state,
        State::Committed | State::Completed | State::RolledBack | State::Rejected | State::Expired | State::Failed
    );
    if continuing && ended && matches!(r.event, Event::Refused { .. } | Event::Completed { .. }) {
        return;
    }
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
        Event::AwaitingApproval { document, .. } => {
            v.document = Some(*document);
            v.state = State::AwaitingApproval;
        }
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
        Event::Applied { preview, .. } => {
            v.preview = *preview;
            v.state = State::Applying;
        }
        Event::CommitIntent { .. } => v.state = State::Applying,
        Event::CallIntent { phase, .. } if phase == "apply" => v.state = State::Applying,
        Event::Committed { .. } => v.state = State::Verifying,
        Event::Refused { reason_code, detail, .. } => {
            v.refusal = Some(format!("[{reason_code}] {detail}"));
        }
        Event::Completed { outcome } => {
            v.state = match outcome {
                Outcome::Committed => State::Committed,
                Outcome::NoChanges => State::Completed,
                Outcome::RolledBack => State::RolledBack,
                Outcome::Interrupted | Outcome::Failed => State::Failed,
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

/// What proposals and approvals have used up, folded from the log in record
/// order: the record (`seq`) at which each approval nonce was first spent,
/// each proposal first executed (a met quorum), first settled (met or
/// vetoed) and first expired. The runner asks whether a nonce is spent or a
/// proposal settled; the offline verifier asks whether that happened
/// *before* the record it checks. Both read the same fold.
///
/// Passkey counters are consumed with their nonces: the uses recorded on a
/// run's `approval-accepted` records join [`Settlements::counters`] when the
/// run's quorum is met and spends their nonces (an approval presented to a
/// quorum that was not met may be presented again).
#[derive(Debug, Default)]
pub struct Settlements {
    pub nonces: HashMap<String, u64>,
    pub executed: HashMap<String, u64>,
    pub settled: HashMap<String, u64>,
    pub expired: HashMap<String, u64>,
    /// The signature counters of passkey approvals whose nonces were spent.
    pub counters: CounterLedger,
    /// Passkey uses accepted in runs whose quorum is not recorded yet: run →
    /// (nonce, key, use).
    pending: HashMap<String, Vec<(String, String, PasskeyUse)>>,
    /// The counters noted in [`Settlements::counters`], in order, since
    /// the last [`Settlements::take_noted`] (the runner stores them).
    noted: Vec<(String, u64, u32)>,
}

impl Settlements {
    /// Every settlement in `records`, in order.
    pub fn of(records: &[Record]) -> Self {
        let mut s = Self::default();
        for r in records {
            s.push(r);
        }
        s
    }

    /// Fold in the next record.
    pub fn push(&mut self, r: &Record) {
        match &r.event {
            Event::ApprovalAccepted { key, nonce, passkey: Some(u), .. } => {
                self.pending.entry(r.run.clone()).or_default().push((nonce.clone(), key.clone(), *u));
            }
            Event::Quorum { proposal, nonces, outcome, .. } => {
                let pending = self.pending.remove(&r.run).unwrap_or_default();
                match QuorumOutcome::from_recorded(outcome) {
                    Some(QuorumOutcome::Met { .. }) => {
                        for n in nonces {
                            self.nonces.entry(n.clone()).or_insert(r.seq);
                        }
                        for (_, key, u) in pending.iter().filter(|(n, ..)| nonces.contains(n)) {
                            self.counters.note(key, u.issued_at, u.counter);
                            self.noted.push((key.clone(), u.issued_at, u.counter));
                        }
                        self.executed.entry(proposal.clone()).or_insert(r.seq);
                        self.settled.entry(proposal.clone()).or_insert(r.seq);
                    }
                    Some(QuorumOutcome::Vetoed { .. }) => {
                        self.settled.entry(proposal.clone()).or_insert(r.seq);
                    }
                    Some(QuorumOutcome::Insufficient { .. }) | None => {}
                }
            }
            Event::Completed { .. } => {
                self.pending.remove(&r.run);
            }
            Event::ProposalExpired { proposal, .. } => {
                self.expired.entry(proposal.clone()).or_insert(r.seq);
            }
            _ => {}
        }
    }

    /// Passkey uses waiting for their run's quorum (run → (nonce, key, use)).
    pub fn pending(&self) -> &HashMap<String, Vec<(String, String, PasskeyUse)>> {
        &self.pending
    }

    /// Resume with the passkey uses of runs in progress.
    pub fn set_pending(&mut self, pending: HashMap<String, Vec<(String, String, PasskeyUse)>>) {
        self.pending = pending;
    }

    /// The counters noted since the last call: (key, issued at, counter).
    pub fn take_noted(&mut self) -> Vec<(String, u64, u32)> {
        std::mem::take(&mut self.noted)
    }

    /// The record before `seq` at which `nonce` was spent, if any.
    pub fn nonce_spent_before(&self, nonce: &str, seq: u64) -> Option<u64> {
        self.nonces.get(nonce).copied().filter(|at| *at < seq)
    }

    /// The record before `seq` at which `proposal` was executed, if any.
    pub fn executed_before(&self, proposal: &str, seq: u64) -> Option<u64> {
        self.executed.get(proposal).copied().filter(|at| *at < seq)
    }

    /// The record before `seq` at which `proposal` expired, if any.
    pub fn expired_before(&self, proposal: &str, seq: u64) -> Option<u64> {
        self.expired.get(proposal).copied().filter(|at| *at < seq)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn record(seq: u64, run: &str, event: Event) -> Record {
        Record {
            schema: String::new(),
            seq,
            time: "2026-12-03T00:00:00Z".into(),
            run: run.into(),
            prev: Sha256Digest::of(b""),
            event,
        }
    }

    fn quorum(seq: u64, result: &str, nonces: &[&str]) -> Record {
        let outcome = match result {
            "met" => serde_json::json!({"result": "met", "count": 1, "required": 1, "break_glass": false}),
            "vetoed" => serde_json::json!({"result": "vetoed", "by": "bob", "comment": null}),
            other => serde_json::json!({"result": other, "count": 0, "required": 1}),
        };
        record(
            seq,
            "r-2",
            Event::Quorum {
                proposal: "p-1".into(),
                outcome,
                counted: serde_json::json!([]),
                break_glass: false,
                nonces: nonces.iter().map(|n| (*n).to_owned()).collect(),
                allowed_signers: Sha256Digest::of(b"a"),
                roles: Sha256Digest::of(b"r"),
                passkeys: None,
                checked_at: 0,
                clock_skew_secs: 0,
            },
        )
    }

    fn resumed(seq: u64, run: &str) -> Record {
        let d = Sha256Digest::of(b"d");
        record(
            seq,
            run,
            Event::Resumed { proposal: "p-1".into(), document: d, plan: d, preview: None, contents: vec![] },
        )
    }

    /// Run `run` waits for approval of proposal p-1.
    fn awaiting(seq: u64, run: &str) -> Record {
        let document = Sha256Digest::of(b"d");
        record(seq, run, Event::AwaitingApproval { proposal: "p-1".into(), document, approvals_required: 1 })
    }

    fn done(seq: u64, run: &str, outcome: Outcome) -> Record {
        record(seq, run, Event::Completed { outcome })
    }

    #[test]
    fn a_proposal_that_ended_keeps_its_outcome_when_it_is_tried_again() {
        let refused = |seq, run: &str| {
            record(seq, run, Event::Refused { stage: "authorize".into(), reason_code: "x".into(), detail: "d".into() })
        };
        let records = [
            awaiting(0, "r-1"),
            done(1, "r-1", Outcome::AwaitingApproval),
            resumed(2, "r-2"),
            quorum(3, "met", &["n1"]),
            record(4, "r-2", Event::Committed { changes: 1 }),
            done(5, "r-2", Outcome::Committed),
            // The same approvals again: refused, recorded under the proposal.
            resumed(6, "r-3"),
            refused(7, "r-3"),
            done(8, "r-3", Outcome::Refused),
        ];
        let p = &index(&records)[0];
        assert_eq!(p.id, "p-1");
        assert_eq!(p.state, State::Committed, "{p:?}");
        assert_eq!(p.refusal, None);
        assert_eq!(p.runs, ["r-1", "r-2", "r-3"]);
        assert_eq!(p.records.len(), 9);
        // A continuation that fails at commit does end it as failed.
        let failed = [&records[..5], &[refused(5, "r-2"), done(6, "r-2", Outcome::Refused)]].concat();
        assert_eq!(index(&failed)[0].state, State::Failed);
    }

    /// A bounded index, stored and evicted after any record (the runner's
    /// writer after each batch; a rebuild every 65,536 records), keeps in
    /// its store exactly what an unbounded index holds: in particular a run
    /// that resumes a proposal after recording under its own.
    #[test]
    fn a_bounded_index_stored_at_any_point_keeps_what_an_unbounded_one_holds() {
        let own = |seq, run: &str| record(seq, run, Event::Authorized { tier: 2, approvals: vec![], note: "n".into() });
        let records = [
            awaiting(0, "r-1"),
            done(1, "r-1", Outcome::AwaitingApproval),
            own(2, "r-2"),
            resumed(3, "r-2"),
            quorum(4, "met", &["n1"]),
            record(5, "r-2", Event::Committed { changes: 1 }),
            done(6, "r-2", Outcome::Committed),
            own(7, "r-3"),
            resumed(8, "r-3"),
            record(9, "r-3", Event::Refused { stage: "authorize".into(), reason_code: "x".into(), detail: "d".into() }),
            done(10, "r-3", Outcome::Refused),
        ];
        let want: BTreeMap<String, serde_json::Value> =
            index(&records).into_iter().map(|v| (v.id.clone(), serde_json::to_value(&v).unwrap())).collect();
        let stores: Vec<Vec<bool>> = (0..records.len())
            .map(|k| (0..records.len()).map(|i| i == k).collect())
            .chain([vec![true; records.len()]])
            .collect();
        for store_after in stores {
            let mut ix = ProposalIndex::bounded(HashMap::new());
            let mut stored: BTreeMap<String, ProposalView> = BTreeMap::new();
            let keep = |ix: &mut ProposalIndex, stored: &mut BTreeMap<String, ProposalView>| {
                let c = ix.changed();
                for v in c.views {
                    stored.insert(v.id.clone(), v);
                }
                for id in c.removed {
                    stored.remove(&id);
                }
                ix.evict(|v| !is_final(v.state));
            };
            for (r, &at) in records.iter().zip(&store_after) {
                let snapshot = stored.clone();
                ix.push_with(r, &mut |id| snapshot.get(id).cloned());
                if at {
                    keep(&mut ix, &mut stored);
                }
            }
            keep(&mut ix, &mut stored);
            let have: BTreeMap<String, serde_json::Value> =
                stored.iter().map(|(id, v)| (id.clone(), serde_json::to_value(v).unwrap())).collect();
            assert_eq!(have, want, "stored after records {store_after:?}");
        }
    }

    #[test]
    fn settlements_say_what_was_used_up_and_where() {
        let s = Settlements::of(&[
            quorum(3, "insufficient", &[]),
            quorum(5, "met", &["n1", "n2"]),
            quorum(9, "met", &["n1"]),
        ]);
        assert_eq!(s.executed_before("p-1", 5), None, "the first execution is not before itself");
        assert_eq!(s.executed_before("p-1", 9), Some(5));
        assert_eq!(s.nonce_spent_before("n1", 9), Some(5));
        assert_eq!(s.nonce_spent_before("n2", 5), None);
        assert_eq!(s.settled.get("p-1"), Some(&5));
        // A vetoed proposal is settled, not executed; its nonces are not spent.
        let v = Settlements::of(&[quorum(4, "vetoed", &["n3"])]);
        assert!(v.settled.contains_key("p-1") && v.executed.is_empty() && v.nonces.is_empty());
        // An outcome that does not parse counts for nothing (the verifier's
        // replay refuses such a record).
        let forged = Settlements::of(&[quorum(4, "MET", &["n4"])]);
        assert!(forged.executed.is_empty() && forged.nonces.is_empty());
        let e = Settlements::of(&[record(
            7,
            "runner",
            Event::ProposalExpired { proposal: "p-1".into(), waited_secs: 10, limit_secs: 5 },
        )]);
        assert_eq!(e.expired_before("p-1", 8), Some(7));
        assert_eq!(e.expired_before("p-1", 7), None);
    }

    /// Passkey counters join the ledger with their nonces: only when the
    /// run's quorum is met, and only the uses whose nonces it spent.
    #[test]
    fn passkey_counters_are_consumed_with_their_nonces() {
        let accepted = |seq, nonce: &str, counter| {
            record(
                seq,
                "r-2",
                Event::ApprovalAccepted {
                    approval: Sha256Digest::of(nonce.as_bytes()),
                    principal: "alice".into(),
                    key: "SHA256:k".into(),
                    verdict: "approve".into(),
                    nonce: nonce.into(),
                    passkey: Some(PasskeyUse { counter, issued_at: 100 }),
                },
            )
        };
        let not_met = Settlements::of(&[accepted(1, "n1", 5), quorum(2, "insufficient", &[])]);
        assert!(not_met.counters.is_empty(), "an approval that did not count may be presented again");
        assert!(not_met.counters.check("SHA256:k", 100, 5).is_ok());
        let met = Settlements::of(&[accepted(1, "n1", 5), accepted(2, "n9", 6), quorum(3, "met", &["n1"])]);
        assert!(met.counters.check("SHA256:k", 100, 5).is_err(), "spent with its nonce");
        assert!(met.counters.check("SHA256:k", 100, 6).is_ok(), "its nonce was not spent");
        assert!(met.counters.check("SHA256:k", 200, 4).is_err());
        // A run that ended without a quorum leaves nothing pending.
        let mut s =
            Settlements::of(&[accepted(1, "n1", 5), record(2, "r-2", Event::Completed { outcome: Outcome::Refused })]);
        s.push(&quorum(3, "met", &["n1"]));
        assert!(s.counters.is_empty());
    }

    /// Records written before passkeys existed read and hash as they did.
    #[test]
    fn records_without_passkeys_are_unchanged() {
        let line = r#"{"event":{"approval":"sha256:0000000000000000000000000000000000000000000000000000000000000000","key":"SHA256:k","nonce":"n","principal":"alice","type":"approval-accepted","verdict":"approve"},"prev":"sha256:0000000000000000000000000000000000000000000000000000000000000000","run":"r-1","schema":"edge-runner.evidence/v1","seq":0,"time":"2026-12-03T00:00:00Z"}"#;
        let r = crate::evidence::check_record(line.as_bytes(), 0, crate::evidence::GENESIS).unwrap();
        assert!(matches!(r.event, Event::ApprovalAccepted { passkey: None, .. }));
        assert_eq!(r.canonical_bytes().unwrap(), line.as_bytes());
        let mut q = quorum(0, "met", &["n"]);
        let before = String::from_utf8(q.canonical_bytes().unwrap()).unwrap();
        assert!(!before.contains("passkeys"), "{before}");
        if let Event::Quorum { passkeys, .. } = &mut q.event {
            *passkeys = Some(Sha256Digest::of(b"p"));
        }
        assert!(q.artifacts().contains(&Sha256Digest::of(b"p")), "the passkeys file is an artifact of the quorum");
    }
}
