//! Proposal events: what subscribers (webhooks, the console, other intakes)
//! hear when a proposal's lifecycle changes.
//!
//! ```text
//!  evidence writer ── commit (durable) ── fold into LogIndex ── derive() ──► broadcast
//!                                                                          ├─► notify (webhooks)
//!                                                                          └─► console, NATS, …
//! ```
//!
//! An event is derived from a record only after the transaction holding it
//! is durable and folded into the runner's index, so a subscriber can never
//! hear of a state the log does not hold, and reading the proposal back
//! (`RunService::show`) already shows it. Sending never blocks the writer:
//! a `tokio::sync::broadcast` channel keeps the newest [`CAPACITY`] events;
//! a subscriber that falls further behind is told how many it missed
//! (`RecvError::Lagged`), and nobody listening costs nothing.
//!
//! Records written while the runner opens (a run found interrupted and
//! recorded as such at start) are folded before anyone can subscribe, and
//! are not announced.

use edge_core::evidence::{Event, Outcome, Record};
use edge_core::lifecycle::{Folded, ProposalView, State};
use edge_core::text;
use serde::Serialize;
use tokio::sync::broadcast;

/// Events kept for subscribers that are behind.
pub const CAPACITY: usize = 4096;

/// What happened to a proposal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum EventKind {
    /// Planned above tier 0 and previewed; the submitting run has ended, so
    /// approvals can be posted (`Completed { AwaitingApproval }`).
    AwaitingApproval,
    /// Its quorum was met (the `quorum` record, before anything is applied).
    Approved,
    /// An eligible approver rejected it.
    Vetoed,
    /// It waited longer than its tier allows.
    Expired,
    /// Changed and verified.
    Committed,
    /// Committed, failed verification, rolled back.
    RolledBack,
    /// Refused before anything changed.
    Refused,
    /// The runner failed while running it, or it was interrupted (found
    /// unfinished at a start) and rolled back.
    Failed,
}

impl EventKind {
    pub const ALL: [EventKind; 8] = [
        EventKind::AwaitingApproval,
        EventKind::Approved,
        EventKind::Vetoed,
        EventKind::Expired,
        EventKind::Committed,
        EventKind::RolledBack,
        EventKind::Refused,
        EventKind::Failed,
    ];

    pub fn name(self) -> &'static str {
        match self {
            EventKind::AwaitingApproval => "awaiting-approval",
            EventKind::Approved => "approved",
            EventKind::Vetoed => "vetoed",
            EventKind::Expired => "expired",
            EventKind::Committed => "committed",
            EventKind::RolledBack => "rolled-back",
            EventKind::Refused => "refused",
            EventKind::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<EventKind> {
        EventKind::ALL.into_iter().find(|k| k.name() == s)
    }
}

/// A capsule's name and version (neutralised: they come from the capsule).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CapsuleName {
    pub name: String,
    pub version: String,
}

/// One lifecycle change of one proposal. Every string a capsule supplied
/// has been through `edge_core::text::line`; nothing here is a secret, a
/// diff, file content or plan text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProposalEvent {
    pub kind: EventKind,
    pub proposal: String,
    /// The proposal's state after the record.
    pub state: State,
    pub tier: Option<u8>,
    pub capsule: Option<CapsuleName>,
    pub approvals_required: u32,
    /// The record's time (RFC 3339, UTC).
    pub at: String,
    /// The record's sequence number.
    pub seq: u64,
}

/// The event a durable record makes, if it changed where its proposal is
/// (`folded` is what `ProposalIndex::push` returned for it; `view` the
/// proposal after it).
/// A proposal's state now, told again as the event that last set it (for
/// a subscriber that missed events): None for a state no event announces
/// (a proposal still being submitted or run). `seq` is its latest record,
/// `at` when this was said.
pub fn restate(view: &ProposalView, at: String) -> Option<ProposalEvent> {
    let kind = match view.state {
        State::AwaitingApproval => EventKind::AwaitingApproval,
        State::Approved => EventKind::Approved,
        State::Rejected => EventKind::Vetoed,
        State::Expired => EventKind::Expired,
        State::Committed => EventKind::Committed,
        State::RolledBack => EventKind::RolledBack,
        State::Refused => EventKind::Refused,
        State::Failed => EventKind::Failed,
        _ => return None,
    };
    Some(ProposalEvent {
        kind,
        proposal: view.id.clone(),
        state: view.state,
        tier: view.tier,
        capsule: capsule_name(view),
        approvals_required: view.approvals_required,
        at,
        seq: view.records.last().copied().unwrap_or(0),
    })
}

/// `name@version`, neutralised (a capsule name has no `@`: `[A-Za-z0-9._-]`).
fn capsule_name(view: &ProposalView) -> Option<CapsuleName> {
    view.name.as_deref().and_then(|n| n.split_once('@')).map(|(name, version)| CapsuleName {
        name: text::line(name).into_owned(),
        version: text::line(version).into_owned(),
    })
}

pub fn derive(r: &Record, folded: &Folded, view: &ProposalView) -> Option<ProposalEvent> {
    let after = view.state;
    let kind = match (&r.event, after) {
        // Announced when the submitting run has ended (its preview is kept
        // and approvals can be posted), not at its `awaiting-approval`
        // record: a run that fails after that record ends refused.
        (Event::Completed { outcome: Outcome::AwaitingApproval }, State::AwaitingApproval) if view.runs.len() == 1 => {
            EventKind::AwaitingApproval
        }
        _ if after == folded.before => return None,
        (_, State::Approved) => EventKind::Approved,
        (_, State::Rejected) => EventKind::Vetoed,
        (_, State::Expired) => EventKind::Expired,
        (_, State::Committed) => EventKind::Committed,
        (_, State::RolledBack) => EventKind::RolledBack,
        (_, State::Refused) => EventKind::Refused,
        (_, State::Failed) => EventKind::Failed,
        _ => return None,
    };
    Some(ProposalEvent {
        kind,
        proposal: view.id.clone(),
        state: after,
        tier: view.tier,
        capsule: capsule_name(view),
        approvals_required: view.approvals_required,
        at: r.time.clone(),
        seq: r.seq,
    })
}

/// The sending side, held by the evidence writer.
///
/// The channel (its [`CAPACITY`] slots) is made at the first subscription:
/// until then nobody can hear an event, and a one-capsule `exec`, which
/// never subscribes, does not pay for it.
#[derive(Debug, Clone, Default)]
pub struct ProposalEvents {
    tx: std::sync::Arc<std::sync::OnceLock<broadcast::Sender<ProposalEvent>>>,
}

impl ProposalEvents {
    /// Every event from now on (none from before).
    pub fn subscribe(&self) -> broadcast::Receiver<ProposalEvent> {
        self.tx.get_or_init(|| broadcast::channel(CAPACITY).0).subscribe()
    }

    /// Send without waiting; with no subscriber the event is dropped.
    pub fn emit(&self, e: ProposalEvent) {
        if let Some(tx) = self.tx.get() {
            let _ = tx.send(e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use edge_core::Sha256Digest;
    use edge_core::lifecycle::ProposalIndex;

    fn record(seq: u64, run: &str, event: Event) -> Record {
        Record {
            schema: String::new(),
            seq,
            time: format!("2026-12-03T00:00:{seq:02}Z"),
            run: run.into(),
            prev: Sha256Digest::of(b""),
            event,
        }
    }

    fn submission(seq: u64, run: &str, version: &str) -> Record {
        let d = Sha256Digest::of(b"c");
        record(
            seq,
            run,
            Event::Submission {
                capsule: d,
                name: "drift".into(),
                version: version.into(),
                kind: "remediation".into(),
                manifest: d,
                component: d,
                bundle: None,
                dangerous: vec![],
                submitted_by: None,
            },
        )
    }

    fn quorum(seq: u64, run: &str, outcome: serde_json::Value) -> Record {
        let d = Sha256Digest::of(b"a");
        record(
            seq,
            run,
            Event::Quorum {
                proposal: "p-1".into(),
                outcome,
                counted: serde_json::json!([]),
                break_glass: false,
                nonces: vec![],
                allowed_signers: d,
                roles: d,
                passkeys: None,
                checked_at: 0,
                clock_skew_secs: 0,
            },
        )
    }

    /// Fold `records` and collect the events, as the writer does.
    fn events(records: &[Record]) -> Vec<(EventKind, u64)> {
        let mut ix = ProposalIndex::default();
        let mut out = Vec::new();
        for r in records {
            if let Some(f) = ix.push(r)
                && let Some(e) = derive(r, &f, ix.get(&f.proposal).unwrap())
            {
                out.push((e.kind, e.seq));
            }
        }
        out
    }

    fn waiting(run: &str) -> Vec<Record> {
        vec![
            submission(0, run, "1.0"),
            record(
                1,
                run,
                Event::AwaitingApproval {
                    proposal: "p-1".into(),
                    document: Sha256Digest::of(b"d"),
                    approvals_required: 2,
                },
            ),
            record(2, run, Event::Completed { outcome: Outcome::AwaitingApproval }),
        ]
    }

    fn resumed(seq: u64, run: &str) -> Record {
        let d = Sha256Digest::of(b"d");
        record(
            seq,
            run,
            Event::Resumed { proposal: "p-1".into(), document: d, plan: d, preview: None, contents: vec![] },
        )
    }

    #[test]
    fn a_missed_state_is_told_again_as_the_event_that_set_it() {
        let mut ix = ProposalIndex::default();
        for r in waiting("r-1") {
            ix.push(&r);
        }
        let view = ix.get("p-1").unwrap().clone();
        let told = restate(&view, "2026-12-03T00:01:00Z".into()).unwrap();
        assert_eq!((told.kind, told.state, told.seq), (EventKind::AwaitingApproval, State::AwaitingApproval, 2));
        assert_eq!(told.approvals_required, view.approvals_required);
        assert_eq!(told.capsule.as_ref().map(|c| (c.name.as_str(), c.version.as_str())), Some(("drift", "1.0")));
        // What no event announces is not told.
        let mut running = view.clone();
        running.state = State::Applying;
        assert!(restate(&running, String::new()).is_none());
        let mut vetoed = view;
        vetoed.state = State::Rejected;
        assert_eq!(restate(&vetoed, String::new()).map(|e| e.kind), Some(EventKind::Vetoed));
    }

    #[test]
    fn a_proposal_is_announced_once_it_waits_then_approved_and_committed() {
        let mut log = waiting("r-1");
        log.extend([
            resumed(3, "r-2"),
            quorum(4, "r-2", serde_json::json!({"result": "met", "count": 2, "required": 2, "break_glass": false})),
            record(5, "r-2", Event::Committed { changes: 1 }),
            record(6, "r-2", Event::Completed { outcome: Outcome::Committed }),
        ]);
        assert_eq!(
            events(&log),
            [(EventKind::AwaitingApproval, 2), (EventKind::Approved, 4), (EventKind::Committed, 6)]
        );
    }

    #[test]
    fn too_few_approvals_announce_nothing_and_a_veto_or_expiry_is_announced_once() {
        let mut log = waiting("r-1");
        log.extend([
            resumed(3, "r-2"),
            quorum(4, "r-2", serde_json::json!({"result": "insufficient", "count": 1, "required": 2})),
            record(5, "r-2", Event::Completed { outcome: Outcome::Refused }),
        ]);
        assert_eq!(events(&log), [(EventKind::AwaitingApproval, 2)], "still waiting: nothing new");
        let mut vetoed = log.clone();
        vetoed.extend([
            resumed(6, "r-3"),
            quorum(7, "r-3", serde_json::json!({"result": "vetoed", "by": "bob", "comment": null})),
            record(8, "r-3", Event::Completed { outcome: Outcome::Refused }),
        ]);
        assert_eq!(events(&vetoed)[1..], [(EventKind::Vetoed, 7)]);
        let mut expired = log;
        expired.push(record(
            6,
            "runner",
            Event::ProposalExpired { proposal: "p-1".into(), waited_secs: 10, limit_secs: 5 },
        ));
        // A second expiry record (it cannot happen, but the fold must not re-announce).
        expired.push(record(
            7,
            "runner",
            Event::ProposalExpired { proposal: "p-1".into(), waited_secs: 11, limit_secs: 5 },
        ));
        assert_eq!(events(&expired)[1..], [(EventKind::Expired, 6)]);
    }

    #[test]
    fn refusals_failures_and_rollbacks_are_announced_and_capsule_text_is_neutralised() {
        let refused = [
            submission(0, "r-1", "1.0\u{202e}txt.exe"),
            record(1, "r-1", Event::Refused { stage: "admit".into(), reason_code: "x".into(), detail: "d".into() }),
            record(2, "r-1", Event::Completed { outcome: Outcome::Refused }),
        ];
        let mut ix = ProposalIndex::default();
        let mut got = Vec::new();
        for r in &refused {
            if let Some(f) = ix.push(r) {
                got.extend(derive(r, &f, ix.get(&f.proposal).unwrap()));
            }
        }
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].kind, EventKind::Refused);
        let c = got[0].capsule.as_ref().unwrap();
        assert_eq!((c.name.as_str(), c.version.as_str()), ("drift", "1.0\\u{202e}txt.exe"));
        let rolled = [
            submission(0, "r-1", "1"),
            record(1, "r-1", Event::Committed { changes: 1 }),
            record(
                2,
                "r-1",
                Event::RolledBack { reason_code: "verify.failed".into(), detail: String::new(), restored: 1 },
            ),
            record(3, "r-1", Event::Completed { outcome: Outcome::RolledBack }),
        ];
        assert_eq!(events(&rolled), [(EventKind::RolledBack, 3)]);
        let interrupted = [
            submission(0, "r-1", "1"),
            record(1, "r-1", Event::Interrupted { restored: 0, detail: String::new() }),
            record(2, "r-1", Event::Completed { outcome: Outcome::Interrupted }),
        ];
        assert_eq!(events(&interrupted), [(EventKind::Failed, 2)]);
        // A diagnostic with nothing to change is not a lifecycle event here.
        let nothing = [submission(0, "r-1", "1"), record(1, "r-1", Event::Completed { outcome: Outcome::NoChanges })];
        assert_eq!(events(&nothing), []);
    }

    #[test]
    fn kinds_round_trip_by_name() {
        for k in EventKind::ALL {
            assert_eq!(EventKind::parse(k.name()), Some(k));
            assert_eq!(serde_json::to_value(k).unwrap(), k.name());
        }
        assert_eq!(EventKind::parse("approved "), None);
    }

    #[test]
    fn a_sender_cloned_before_anyone_subscribed_reaches_later_subscribers_and_nothing_before_them() {
        let event = |seq| ProposalEvent {
            kind: EventKind::Approved,
            proposal: "p-1".into(),
            state: State::Approved,
            tier: Some(2),
            capsule: None,
            approvals_required: 2,
            at: "2026-12-03T00:00:00Z".into(),
            seq,
        };
        // The writer holds a clone made at open, before any subscriber.
        let events = ProposalEvents::default();
        let writer = events.clone();
        writer.emit(event(0)); // nobody listening: dropped, no channel made
        let mut rx = events.subscribe();
        writer.emit(event(1));
        assert_eq!(rx.try_recv().unwrap().seq, 1);
        assert!(rx.try_recv().is_err(), "an event from before the subscription was kept");
        // A second subscriber shares the same channel.
        let mut late = writer.subscribe();
        for seq in 2..2 + CAPACITY as u64 + 1 {
            writer.emit(event(seq));
        }
        assert!(matches!(late.try_recv(), Err(broadcast::error::TryRecvError::Lagged(1))));
        assert_eq!(rx.try_recv().unwrap_err(), broadcast::error::TryRecvError::Lagged(1));
    }
}
