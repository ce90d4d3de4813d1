//! What the runner needs to know about its whole evidence log, folded one
//! record at a time as records commit. Memory holds the work in flight
//! (proposals not yet final, runs in progress, proposals waiting, what the
//! last batch changed); the rest is in the store (`crate::store::fold`),
//! where the writer puts what each batch changed and from where a proposal
//! is loaded again when a record names it.
//!
//! Everything here is derived from the log alone, so it can never disagree
//! with what was recorded: a start folds what was appended since the
//! stored fold, or rebuilds it from the records.

use std::collections::{BTreeMap, HashMap};

use edge_core::Sha256Digest;
use edge_core::evidence::{Event, Record};

use edge_core::lifecycle::{ProposalIndex, ProposalView, RUNNER_RUNS, Settlements, is_final};

use crate::events::ProposalEvent;
use crate::store::fold::{Changes, Rest, Spent};

/// The fold of the log.
#[derive(Debug)]
pub struct LogIndex {
    /// Records in the log.
    pub records: u64,
    /// Proposals in memory and their lifecycle states (the others are in
    /// the store: `EvidenceLog::proposal`).
    pub proposals: ProposalIndex,
    /// What approvals and proposals used up, not yet in the store (see
    /// `EvidenceLog::spent`), and the signature counters of the passkey
    /// approvals consumed (the fold the verifier uses too).
    pub settlements: Settlements,
    /// Proposals waiting for approval (not settled, not expired): id → unix
    /// seconds of the record.
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

impl Default for LogIndex {
    fn default() -> Self {
        Self::resume(0, Rest::default(), Vec::new())
    }
}

impl LogIndex {
    /// A fold that keeps every proposal in memory, in submission order
    /// (`proposals.iter()`): for tools reading a copy of a log.
    pub fn in_memory() -> Self {
        Self { proposals: ProposalIndex::default(), ..Self::default() }
    }

    /// The fold of the first `records` records, as the store kept it: the
    /// small rest and the passkey counters consumed.
    pub fn resume(records: u64, rest: Rest, counters: Vec<(String, u64, u32)>) -> Self {
        let mut settlements = Settlements::default();
        for (key, at, counter) in counters {
            settlements.counters.note(&key, at, counter);
        }
        settlements.set_pending(rest.pending);
        Self {
            records,
            proposals: ProposalIndex::bounded(rest.continuing),
            settlements,
            awaiting: rest.awaiting,
            policy: rest.policy,
            key: rest.key,
            key_records: rest.key_records,
            refusals: rest.refusals,
            open_runs: rest.open_runs,
        }
    }

    /// Fold in the next record, a proposal this index does not hold loaded
    /// from the fold tables of `db` (where [`LogIndex::keep_in`] put it):
    /// how a start and the full check fold a log too long to hold.
    ///
    /// # Errors
    /// If a proposal cannot be read from `db` (the record is folded as if
    /// it were not there: do not use the index after an error).
    pub fn push_from(&mut self, db: &rusqlite::Connection, r: &Record) -> anyhow::Result<()> {
        let mut failed = None;
        self.push_with(r, &mut |id| {
            crate::store::fold::proposal(db, id).unwrap_or_else(|e| {
                failed.get_or_insert(e);
                None
            })
        });
        failed.map_or(Ok(()), Err)
    }

    /// Store what changed since the last time in the fold tables of `db`, in
    /// one transaction; memory lets go of what it need not keep.
    ///
    /// # Errors
    /// If it cannot be stored (memory keeps it then).
    pub fn keep_in(&mut self, db: &rusqlite::Connection) -> anyhow::Result<()> {
        let changes = self.changes();
        let tx = db.unchecked_transaction()?;
        crate::store::fold::store(&tx, &changes)?;
        tx.commit()?;
        self.stored(&changes);
        Ok(())
    }

    /// Fold in the next record, for proposals that are all in memory (tests).
    pub fn push(&mut self, r: &Record) -> Option<ProposalEvent> {
        self.push_with(r, &mut |_| None)
    }

    /// Fold in the next record (`load`: a proposal from the store); returns
    /// the proposal event it makes, if it changed where a proposal is
    /// (`crate::events`).
    pub fn push_with(
        &mut self,
        r: &Record,
        load: &mut dyn FnMut(&str) -> Option<ProposalView>,
    ) -> Option<ProposalEvent> {
        self.records += 1;
        let folded = self.proposals.push_with(r, load);
        self.settlements.push(r);
        match &r.event {
            Event::AwaitingApproval { proposal, .. } => {
                let at = r.time.parse::<jiff::Timestamp>().map_or(0, |t| u64::try_from(t.as_second()).unwrap_or(0));
                self.awaiting.insert(proposal.clone(), at);
            }
            // Settled (a quorum met or vetoed) or expired: no longer waiting.
            Event::ProposalExpired { proposal, .. } => drop(self.awaiting.remove(proposal)),
            Event::Quorum { proposal, .. } if self.settlements.settled.contains_key(proposal) => {
                self.awaiting.remove(proposal);
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
        self.awaiting.iter().map(|(p, t)| (p.clone(), *t)).collect()
    }

    /// What changed since the last call, to store (`crate::store::fold`);
    /// memory keeps all of it until [`LogIndex::stored`].
    pub fn changes(&mut self) -> Changes {
        let s = &self.settlements;
        let spent = Spent::ALL
            .into_iter()
            .flat_map(|kind| kind.of(s).iter().map(move |(k, seq)| (kind, k.clone(), *seq)))
            .collect();
        Changes {
            records: self.records,
            proposals: self.proposals.changed(),
            spent,
            counters: self.settlements.take_noted(),
            rest: Rest {
                policy: self.policy,
                key: self.key.clone(),
                key_records: self.key_records.clone(),
                refusals: self.refusals.clone(),
                open_runs: self.open_runs.clone(),
                awaiting: self.awaiting.clone(),
                pending: self.settlements.pending().clone(),
                continuing: self.proposals.continuing().clone(),
            },
        }
    }

    /// `changes` are in the store: forget what memory need not keep (what
    /// was spent, and proposals that reached a final state).
    pub fn stored(&mut self, changes: &Changes) {
        for (kind, key, _) in &changes.spent {
            kind.of_mut(&mut self.settlements).remove(key);
        }
        self.proposals.evict(|v| !is_final(v.state));
    }

    /// Runs without a terminal record, oldest first.
    pub fn unfinished_runs(&self) -> Vec<String> {
        let mut runs: Vec<(&u64, &String)> = self.open_runs.iter().map(|(run, first)| (first, run)).collect();
        runs.sort();
        runs.into_iter().map(|(_, run)| run.clone()).collect()
    }
}
