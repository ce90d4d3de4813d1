//! Quorum: do the verified approvals authorize this proposal?
//!
//! Rules, in order:
//! 1. approvals from the proposer — the capsule's signer and any principal the
//!    registry lists as that agent's owner — are refused;
//! 2. an approver is *eligible* when they hold one of the tier's roles (any
//!    registered approver when the tier names none);
//! 3. one valid rejection from an eligible approver (or a break-glass holder)
//!    vetoes;
//! 4. eligible approvals count as many *distinct people and distinct keys* as
//!    can be paired one-to-one (a maximum matching between principals and
//!    keys): one person with two keys counts once, one key registered under
//!    two principals counts once;
//! 5. if that count reaches the tier's requirement the quorum is met;
//!    otherwise, if a break-glass role is configured and its holders reach its
//!    own quorum (counted the same way), the quorum is met *as break-glass*,
//!    which is flagged in evidence and reports.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::{Registry, Verdict, VerifiedApproval};
use crate::digest::Sha256Digest;
use crate::policy::TierRequirement;

/// What happened to one approval in the quorum.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Counted {
    pub principal: String,
    pub key: String,
    pub counted: bool,
    pub note: String,
}

/// The quorum outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "kebab-case")]
pub enum Outcome {
    Met { count: u32, required: u32, break_glass: bool },
    Vetoed { by: String, comment: Option<String> },
    Insufficient { count: u32, required: u32 },
}

impl Outcome {
    /// Read the outcome a `quorum` evidence record holds (`None` if it is
    /// not one: a record of another version, or a forged one).
    pub fn from_recorded(value: &serde_json::Value) -> Option<Self> {
        Self::deserialize(value).ok()
    }

    pub fn is_met(&self) -> bool {
        matches!(self, Self::Met { .. })
    }
}

/// The full result: outcome, per-approval notes, and (when met) the proof.
#[derive(Debug)]
pub struct QuorumResult {
    pub outcome: Outcome,
    pub approvals: Vec<Counted>,
    pub met: Option<QuorumMet>,
}

/// Proof that a quorum authorized one proposal, plan, capsule and policy.
/// Only [`evaluate`] builds it; `authorize` requires it above tier 0.
#[derive(Debug)]
pub struct QuorumMet {
    proposal: String,
    capsule: Sha256Digest,
    plan: Sha256Digest,
    policy: Sha256Digest,
    break_glass: bool,
    nonces: Vec<String>,
}

impl QuorumMet {
    pub fn proposal(&self) -> &str {
        &self.proposal
    }
    pub fn capsule(&self) -> Sha256Digest {
        self.capsule
    }
    pub fn plan(&self) -> Sha256Digest {
        self.plan
    }
    pub fn policy(&self) -> Sha256Digest {
        self.policy
    }
    pub fn break_glass(&self) -> bool {
        self.break_glass
    }
    /// Nonces consumed by this authorization.
    pub fn nonces(&self) -> &[String] {
        &self.nonces
    }
}

/// What the quorum is about.
#[derive(Debug, Clone)]
pub struct Subject<'a> {
    pub proposal: &'a str,
    pub capsule: Sha256Digest,
    pub plan: Sha256Digest,
    pub policy: Sha256Digest,
    /// The capsule's signer (the proposing agent).
    pub signer: &'a str,
}

/// Evaluate a quorum. `approvals` must all have passed `verify_approval` for
/// this subject (and the runner's nonce check).
pub fn evaluate(
    approvals: &[VerifiedApproval],
    requirement: &TierRequirement,
    registry: &Registry,
    subject: &Subject<'_>,
) -> QuorumResult {
    let mut excluded: BTreeSet<&str> = BTreeSet::from([subject.signer]);
    if let Some(owners) = registry.owners.get(subject.signer) {
        excluded.extend(owners.iter().map(String::as_str));
    }
    let glass = registry.break_glass.as_ref();
    let holds = |p: &str, role: &str| registry.roles_of(p).iter().any(|r| r == role);
    let eligible = |p: &str| {
        if requirement.roles.is_empty() {
            // Any registered approver (one with any role, or listed at all).
            registry.roles.contains_key(p)
                || registry.signers.entries.iter().any(|e| super::registry::pattern_list(p, &e.principals))
        } else {
            requirement.roles.iter().any(|r| holds(p, r))
        }
    };
    let is_glass = |p: &str| glass.is_some_and(|g| holds(p, &g.role));

    let mut notes = Vec::with_capacity(approvals.len());
    let mut normal: Vec<(&str, &str)> = Vec::new();
    let mut breakers: Vec<(&str, &str)> = Vec::new();
    let mut veto: Option<&VerifiedApproval> = None;
    for a in approvals {
        let note =
            |counted: bool, note: String| Counted { principal: a.principal.clone(), key: a.key.clone(), counted, note };
        if excluded.contains(a.principal.as_str()) {
            notes.push(note(
                false,
                "refused: the proposer (or the agent's owner) cannot approve its own proposal".into(),
            ));
            continue;
        }
        let (elig, glass_holder) = (eligible(&a.principal), is_glass(&a.principal));
        if !elig && !glass_holder {
            let roles = registry.roles_of(&a.principal).join(", ");
            notes.push(note(
                false,
                format!("refused: holds [{roles}], the tier needs one of [{}]", requirement.roles.join(", ")),
            ));
            continue;
        }
        if a.verdict == Verdict::Reject {
            veto.get_or_insert(a);
            notes.push(note(false, "rejection: vetoes the proposal".into()));
            continue;
        }
        if elig {
            normal.push((&a.principal, &a.key));
        }
        if glass_holder {
            breakers.push((&a.principal, &a.key));
        }
        notes.push(note(true, String::new()));
    }
    let required = requirement.approvals;
    if let Some(v) = veto {
        return QuorumResult {
            outcome: Outcome::Vetoed { by: v.principal.clone(), comment: v.comment.clone() },
            approvals: notes,
            met: None,
        };
    }
    let count = matching(&normal);
    let (met, break_glass, count) = if count >= required as usize {
        (true, false, count)
    } else if let Some(g) = glass {
        let n = matching(&breakers);
        if n >= g.quorum as usize { (true, true, n) } else { (false, false, count) }
    } else {
        (false, false, count)
    };
    // Mark duplicates (approvals that did not add a distinct person and key).
    mark_duplicates(&mut notes);
    let count = count as u32;
    if !met {
        return QuorumResult { outcome: Outcome::Insufficient { count, required }, approvals: notes, met: None };
    }
    let nonces = approvals.iter().filter(|a| a.verdict == Verdict::Approve).map(|a| a.nonce.clone()).collect();
    QuorumResult {
        outcome: Outcome::Met { count, required, break_glass },
        approvals: notes,
        met: Some(QuorumMet {
            proposal: subject.proposal.to_owned(),
            capsule: subject.capsule,
            plan: subject.plan,
            policy: subject.policy,
            break_glass,
            nonces,
        }),
    }
}

fn mark_duplicates(notes: &mut [Counted]) {
    let mut people = BTreeSet::new();
    let mut keys = BTreeSet::new();
    for n in notes.iter_mut().filter(|n| n.counted) {
        let new_person = people.insert(n.principal.clone());
        let new_key = keys.insert(n.key.clone());
        if !new_person || !new_key {
            n.note = "duplicate: the same person or key already approved; counted once".into();
        }
    }
}

/// Maximum matching between principals and keys (augmenting paths; tiny inputs).
fn matching(pairs: &[(&str, &str)]) -> usize {
    let mut adj: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for (p, k) in pairs {
        adj.entry(p).or_default().insert(k);
    }
    let mut owner: BTreeMap<&str, &str> = BTreeMap::new();
    fn augment<'a>(
        p: &'a str,
        adj: &BTreeMap<&'a str, BTreeSet<&'a str>>,
        owner: &mut BTreeMap<&'a str, &'a str>,
        seen: &mut BTreeSet<&'a str>,
    ) -> bool {
        for &k in &adj[p] {
            if seen.insert(k) {
                let free = match owner.get(k) {
                    None => true,
                    Some(&q) => augment(q, adj, owner, seen),
                };
                if free {
                    owner.insert(k, p);
                    return true;
                }
            }
        }
        false
    }
    let people: Vec<&str> = adj.keys().copied().collect();
    people.into_iter().filter(|p| augment(p, &adj, &mut owner, &mut BTreeSet::new())).count()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::approval::registry::BreakGlass;

    fn req(n: u32, roles: &[&str]) -> TierRequirement {
        TierRequirement {
            tier: 2,
            approvals: n,
            roles: roles.iter().map(|s| (*s).to_owned()).collect(),
            distinct: true,
            max_age_secs: 3600,
            expires_after_secs: None,
            allow_writes: true,
            allow_endpoints: false,
            max_memory_mib: None,
            max_cpu_ms: None,
            max_wall_ms: None,
        }
    }

    fn registry() -> Registry {
        let mut r = Registry::default();
        for (p, roles) in [
            ("alice", vec!["sre"]),
            ("bob", vec!["sre"]),
            ("carol", vec!["payments-owner"]),
            ("dave", vec!["dev"]),
            ("olga", vec!["sre"]),
            ("ic1", vec!["incident-commander"]),
            ("ic2", vec!["incident-commander"]),
        ] {
            r.roles.insert(p.into(), roles.into_iter().map(String::from).collect());
        }
        r.owners.insert("agent".into(), vec!["olga".into()]);
        r
    }

    fn a(p: &str, k: &str, v: Verdict) -> VerifiedApproval {
        VerifiedApproval {
            principal: p.into(),
            key: k.into(),
            verdict: v,
            nonce: format!("{p}-{k}"),
            issued_at: 0,
            comment: None,
            counter: None,
        }
    }
    use Verdict::{Approve as Y, Reject as N};

    fn run(approvals: &[VerifiedApproval], r: &TierRequirement, reg: &Registry) -> Outcome {
        let subject = Subject {
            proposal: "p",
            capsule: Sha256Digest::of(b"c"),
            plan: Sha256Digest::of(b"p"),
            policy: Sha256Digest::of(b"x"),
            signer: "agent",
        };
        let res = evaluate(approvals, r, reg, &subject);
        assert_eq!(res.met.is_some(), matches!(res.outcome, Outcome::Met { .. }));
        res.outcome
    }

    fn met(o: &Outcome) -> bool {
        matches!(o, Outcome::Met { .. })
    }

    /// m-of-n, roles, duplicates by key and by principal, proposer exclusion, veto.
    #[test]
    fn quorum_truth_table() {
        let reg = registry();
        let two_sre = req(2, &["sre"]);
        let cases: Vec<(&str, Vec<VerifiedApproval>, &TierRequirement, bool)> = vec![
            ("2 of 2 distinct", vec![a("alice", "k1", Y), a("bob", "k2", Y)], &two_sre, true),
            ("1 of 2", vec![a("alice", "k1", Y)], &two_sre, false),
            ("one person, two keys", vec![a("alice", "k1", Y), a("alice", "k2", Y)], &two_sre, false),
            ("one key, two people", vec![a("alice", "k1", Y), a("bob", "k1", Y)], &two_sre, false),
            ("wrong role does not count", vec![a("alice", "k1", Y), a("dave", "k4", Y)], &two_sre, false),
            ("owner of the agent excluded", vec![a("alice", "k1", Y), a("olga", "k5", Y)], &two_sre, false),
            ("the agent itself excluded", vec![a("alice", "k1", Y), a("agent", "k9", Y)], &two_sre, false),
            (
                "the owner's rejection is refused, not a veto",
                vec![a("alice", "k1", Y), a("bob", "k2", Y), a("olga", "k5", N)],
                &two_sre,
                true,
            ),
            ("eligible rejection vetoes", vec![a("alice", "k1", Y), a("bob", "k2", N)], &two_sre, false),
            (
                "matching, not min(people, keys)",
                vec![
                    a("alice", "k1", Y),
                    a("alice", "k2", Y),
                    a("alice", "k3", Y),
                    a("bob", "k1", Y),
                    a("olga", "k1", Y),
                ],
                &two_sre,
                true,
            ),
        ];
        for (name, approvals, r, want) in cases {
            let o = run(&approvals, r, &reg);
            assert_eq!(met(&o), want, "{name}: {o:?}");
        }
        // The excluded owner's rejection does not veto (they cannot take part at all).
        let o = run(&[a("alice", "k1", Y), a("bob", "k2", Y), a("olga", "k5", N)], &two_sre, &reg);
        assert!(met(&o));
        // An eligible rejection names who vetoed.
        let o = run(&[a("alice", "k1", Y), a("bob", "k2", N)], &two_sre, &reg);
        assert_eq!(o, Outcome::Vetoed { by: "bob".into(), comment: None });
        // Any-of roles.
        let mixed = req(2, &["sre", "payments-owner"]);
        assert!(met(&run(&[a("alice", "k1", Y), a("carol", "k3", Y)], &mixed, &reg)));
        // 3 of 5.
        let three = req(3, &["sre", "payments-owner"]);
        let five =
            [a("alice", "k1", Y), a("bob", "k2", Y), a("carol", "k3", Y), a("dave", "k4", Y), a("olga", "k5", Y)];
        assert_eq!(run(&five, &three, &reg), Outcome::Met { count: 3, required: 3, break_glass: false });
    }

    #[test]
    fn break_glass_needs_its_own_quorum_and_is_flagged() {
        let mut reg = registry();
        reg.break_glass = Some(BreakGlass { role: "incident-commander".into(), quorum: 2 });
        let two_sre = req(2, &["sre"]);
        assert!(!met(&run(&[a("ic1", "k7", Y)], &two_sre, &reg)));
        assert_eq!(
            run(&[a("ic1", "k7", Y), a("ic2", "k8", Y)], &two_sre, &reg),
            Outcome::Met { count: 2, required: 2, break_glass: true }
        );
        assert!(!met(&run(&[a("ic1", "k7", Y), a("ic1", "k8", Y)], &two_sre, &reg)), "distinct people");
        // Without a configured break-glass role, incident commanders are nobody.
        assert!(!met(&run(&[a("ic1", "k7", Y), a("ic2", "k8", Y)], &two_sre, &registry())));
        // A normal quorum is not break-glass.
        assert_eq!(
            run(&[a("alice", "k1", Y), a("bob", "k2", Y), a("ic1", "k7", Y)], &two_sre, &reg),
            Outcome::Met { count: 2, required: 2, break_glass: false }
        );
    }
}
