//! The machine-readable result (`edge-verify --json`): what was verified,
//! and a summary of every listed proposal. Strings are as recorded (JSON
//! escapes what must be escaped; a terminal writer neutralises the rest).
//!
//! ```json
//! {"verified": true, "level": "full", "runner": "…", "key": "…", "key_fingerprint": "SHA256:…",
//!  "key_changes": [{"record", "time", "kind", "from", "to", "from_fingerprint", "to_fingerprint", "description"}],
//!  "runner_builds": [{"build": {"record", "started", "binary", "version", "revision", …}, "runs": n}],
//!  "checkpoint": {"size": 52, "root": "…"}, "scope": "full", "records": 527, "runs": 52,
//!  "generated_at": "…", "verifier_version": "0.1.0",
//!  "filter": null | "tier 2; state committed",
//!  "proposals_total": 50, "proposals_listed": 50,
//!  "summary": {"by_state": {…}, "by_tier": {"2": {…}}, "by_approver": {"alice@…": {…}}},
//!  "proposals": [{"id", "state", "name", "tier", "submitted_at", "runs", "reasons",
//!                 "changes", "blast_radius", "quorum", "refused_approvals", "provenance",
//!                 "findings", "verify", "refusals", "calls" (when any)}]}
//! {"verified": false, "failure": {"check", "record", "run", "detail"}, …}
//! ```

use serde_json::{Value, json};

use super::model::{self, Story};
use super::{Options, VERIFIER_VERSION};
use crate::bundle::Scope;
use crate::{Failure, Level, Verified};

/// The verification result and the proposals the filter lists.
pub fn json(v: &Verified, opts: &Options) -> Value {
    let r = model::build(v, opts);
    let s = &r.summary;
    let by_state: serde_json::Map<String, Value> =
        s.by_state.iter().map(|(st, n)| (st.name().to_owned(), json!(n))).collect();
    let by_tier: serde_json::Map<String, Value> = s
        .by_tier
        .iter()
        .map(|(t, states)| {
            let m: serde_json::Map<String, Value> =
                states.iter().map(|(st, n)| (st.name().to_owned(), json!(n))).collect();
            (t.map_or_else(|| "none".to_owned(), |t| t.to_string()), Value::Object(m))
        })
        .collect();
    let by_approver: serde_json::Map<String, Value> = s
        .by_approver
        .iter()
        .map(|(who, t)| {
            (
                who.clone(),
                json!({"counted": t.counted, "not_counted": t.not_counted, "rejections": t.rejections, "refused": t.refused}),
            )
        })
        .collect();
    json!({
        "verified": true,
        "level": if v.level == Level::Full { "full" } else { "integrity" },
        "runner": v.header.origin,
        "key": v.key,
        "key_fingerprint": edge_core::rotation::fingerprint(&v.key),
        "key_changes": v.key_changes.iter().map(|c| json!({
            "record": c.seq, "time": c.time, "kind": c.kind, "from": c.from, "to": c.to,
            "from_fingerprint": c.from.as_deref().map(edge_core::rotation::fingerprint),
            "to_fingerprint": edge_core::rotation::fingerprint(&c.to),
            "description": c.describe(),
        })).collect::<Vec<_>>(),
        "runner_builds": model::builds(v).0.iter().map(|(b, n)| json!({"build": b, "runs": n})).collect::<Vec<_>>(),
        "checkpoint": {"size": v.checkpoint.size, "root": super::text::b64(&v.checkpoint.root)},
        "scope": match v.header.scope { Scope::Full => "full", Scope::Since { .. } => "since", Scope::Run { .. } => "run" },
        "records": v.record_count,
        "runs": v.runs.len(),
        "generated_at": opts.generated_at.to_string(),
        "verifier_version": VERIFIER_VERSION,
        "filter": if opts.filter.is_empty() { Value::Null } else { json!(opts.filter.describe()) },
        "proposals_total": r.total,
        "proposals_listed": r.stories.len(),
        "summary": {"by_state": by_state, "by_tier": by_tier, "by_approver": by_approver},
        "proposals": r.stories.iter().map(story).collect::<Vec<_>>(),
    })
}

fn story(s: &Story<'_>) -> Value {
    let p = &s.view;
    let runs: Vec<Value> = s
        .runs
        .iter()
        .map(|r| {
            json!({"run": r.run, "outcome": super::text::outcome_name(r.outcome), "started": r.started,
                   "ended": r.ended, "records": [r.first_seq, r.last_seq], "runner_build": r.build})
        })
        .collect();
    let changes: Vec<Value> = s
        .files
        .iter()
        .map(|f| {
            json!({"mount": f.mount, "path": f.path, "action": f.action.to_string(),
                   "preview": f.mode.map(|m| m.name()), "shown": f.shown.name(),
                   "before": f.before, "after": f.after, "added": f.added, "removed": f.removed})
        })
        .collect();
    let blast = s.blast.as_ref().map(|b| {
        let d = &b.derivation;
        json!({"touched": d.touched, "impacted_count": d.impacted_count, "impacted": d.impacted,
               "most_critical": d.most_critical, "sensitive_tags": d.sensitive_tags, "score": d.score})
    });
    let quorum: Vec<Value> = s
        .quorums()
        .map(|(run, q)| {
            json!({"run": run, "time": q.time, "outcome": q.outcome, "break_glass": q.break_glass,
                   "approvers": q.approvers})
        })
        .collect();
    let refused: Vec<Value> = s
        .refused_approvals()
        .map(|(run, a)| json!({"run": run, "principal": a.principal, "reason_code": a.reason_code, "detail": a.detail}))
        .collect();
    let refusals: Vec<Value> = s
        .refusals()
        .into_iter()
        .map(|(run, stage, code, detail)| json!({"run": run, "stage": stage, "reason_code": code, "detail": detail}))
        .collect();
    let calls: Vec<Value> = s.calls().into_iter().map(|(run, call)| json!({"run": run, "request": call})).collect();
    let mut out = json!({
        "id": p.id,
        "state": p.state.name(),
        "name": p.name,
        "capsule": p.capsule,
        "submitted_at": p.submitted_at,
        "submitted_by": p.submitted_by,
        "signer": s.signer(),
        "tier": p.tier,
        "allowed": p.decision.as_ref().map(|d| d.allowed),
        "approvals_required": p.approvals_required,
        "reasons": p.decision.as_ref().map(|d| d.reasons.clone()).unwrap_or_default(),
        "runs": runs,
        "plan_summary": s.plan_summary(),
        "changes": changes,
        "blast_radius": blast,
        "quorum": quorum,
        "refused_approvals": refused,
        "authorized_by": s.authorized_by(),
        "break_glass": s.break_glass(),
        "provenance": s.provenance(),
        "findings": s.findings(),
        "verify": s.verify().map(|(passed, summary)| json!({"passed": passed, "summary": summary})),
        "refusals": refusals,
    });
    // (Only when there are any: reports of logs without calls are unchanged.)
    if !calls.is_empty() {
        out["calls"] = Value::Array(calls);
    }
    out
}

/// The result for a bundle that failed: the failure, nothing from the bundle.
pub fn json_failed(f: &Failure, opts: &Options) -> Value {
    json!({
        "verified": false,
        "failure": {"check": f.check, "record": f.record, "run": f.run, "detail": f.detail},
        "generated_at": opts.generated_at.to_string(),
        "verifier_version": VERIFIER_VERSION,
    })
}
