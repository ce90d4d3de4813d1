//! What the runner needs to know about its whole evidence log, folded one
//! record at a time as records commit, so the log itself stays on disk:
//! memory grows with the number of proposals, not with every record.
//!
//! Everything here is derived from the log alone (it is rebuilt from the
//! store on every start), so it can never disagree with what was recorded.

use std::collections::{BTreeMap, HashMap};

use edge_core::Sha256Digest;
use edge_core::evidence::{Event, Record};

use edge_core::lifecycle::{ProposalIndex, RUNNER_RUNS, Settlements};

use crate::events::ProposalEvent;

/// The fold of the log.
#[derive(Debug, Default)]
pub struct LogIndex {
    /// Records in the log.
    pub records: u64,
    /// Proposals and their lifecycle states (the API's view).
    pub proposals: ProposalIndex,
    /// Nonces spent, proposals executed, settled (met or vetoed) and
    /// expired, with the record of each, and the signature counters of the
    /// passkey approvals consumed (the fold the verifier uses too).
    pub settlements: Settlements,
    /// Proposals that waited for approval: id → unix seconds of the record.
    pub awaiting: BTreeMap<String, u64>,
    /// The policy and graph digests last recorded as in force.
    pub policy: (Option<Sha256Digest>, Option<Sha256Digest>),
    /// The identity key last recorded (by a key event or a rotation).
    pub key: Option<String>,
    /// The key records (`key-event`, `key-rotation`), in order: few, and
    /// what the start-up check folds into the key history
    /// (`edge_core::rotation::KeyHistory`) with the runner's name.
    pub key_records: Vec<Record>,
    /// Refusals by reason code.
    pub refusals: BTreeMap<String, u64>,
    /// Runs with records but no terminal record yet, and the sequence
    /// number of their first record.
    open_runs: HashMap<String, u64>,
}

impl LogIndex {
    /// Fold in the next record; returns the proposal event it makes, if it
    /// changed where a proposal is (`crate::events`).
    pub fn push(&mut self, r: &Record) -> Option<ProposalEvent> {
        self.records += 1;
        let folded = self.proposals.push(r);
        self.settlements.push(r);
        match &r.event {
            Event::AwaitingApproval { proposal, .. } => {
                let at = r.time.parse::<jiff::Timestamp>().map_or(0, |t| u64::try_from(t.as_second()).unwrap_or(0));
                self.awaiting.insert(proposal.clone(), at);
            }
            Event::PolicyChange { new_policy, new_graph, .. } => self.policy = (*new_policy, *new_graph),
            Event::KeyEvent { key, .. } | Event::KeyRotation { new_key: key, .. } => {
                self.key = Some(key.clone());
                self.key_records.push(r.clone());
            }
            Event::Refused { reason_code, .. } | Event::ApprovalRefused { reason_code, .. } => {
                *self.refusals.entry(reason_code.clone()).or_default() += 1;
            }
            _ => {}
        }
        // Runner-level records (key events, policy changes, expiries) are
        // not part of any run.
        if !RUNNER_RUNS.contains(&r.run.as_str()) {
            if r.is_terminal() {
                self.open_runs.remove(&r.run);
            } else {
                self.open_runs.entry(r.run.clone()).or_insert(r.seq);
            }
        }
        let folded = folded?;
        crate::events::derive(r, &folded, self.proposals.get(&folded.proposal)?)
    }

    /// Proposals waiting for approval (not settled, not expired), with the
    /// time they started waiting.
    pub fn waiting(&self) -> Vec<(String, u64)> {
        self.awaiting
            .iter()
            .filter(|(p, _)| !self.settlements.settled.contains_key(*p) && !self.settlements.expired.contains_key(*p))
            .map(|(p, t)| (p.clone(), *t))
            .collect()
    }

    /// Runs without a terminal record, oldest first.
    pub fn unfinished_runs(&self) -> Vec<String> {
        let mut runs: Vec<(&u64, &String)> = self.open_runs.iter().map(|(run, first)| (first, run)).collect();
        runs.sort();
        runs.into_iter().map(|(_, run)| run.clone()).collect()
    }
}
