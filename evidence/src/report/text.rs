//! The text report, for terminals: the same story as the HTML page, one
//! proposal after another. Every field from the bundle goes through
//! `edge_core::text` (`Untrusted` / `line`): a comment or a diff line cannot
//! start a line of its own or move the cursor.

use std::fmt::Write as _;

use edge_core::evidence::Outcome;
use edge_core::policy::Access;
use edge_core::preview::DiffLine;
use edge_core::text::{Untrusted as U, line};

use super::model::{self, Report, Story};
use super::{Options, VERIFIER_VERSION};
use crate::bundle::Scope;
use crate::runs::QuorumSummary;
use crate::{Failure, Verified};

pub(crate) fn outcome_name(o: Option<Outcome>) -> &'static str {
    match o {
        Some(Outcome::Committed) => "committed",
        Some(Outcome::NoChanges) => "no-changes",
        Some(Outcome::Refused) => "refused",
        Some(Outcome::RolledBack) => "rolled-back",
        Some(Outcome::Interrupted) => "interrupted",
        Some(Outcome::Failed) => "failed",
        Some(Outcome::AwaitingApproval) => "awaiting-approval",
        None => "unfinished",
    }
}

pub(crate) fn scope_text(v: &Verified) -> String {
    match &v.header.scope {
        Scope::Full => "the whole log".into(),
        Scope::Since { .. } => {
            format!("records after checkpoint {} (consistency proven)", v.since.as_ref().map_or(0, |c| c.size))
        }
        Scope::Run { run, .. } => format!("run {run} only (inclusion proofs)"),
    }
}

pub(crate) fn b64(h: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(h)
}

/// Insecure switches (`dangerous_…`) in force for any run, and how many runs
/// each: shown in every report's banner (over the whole bundle, whatever
/// the filter lists).
pub(crate) fn dangerous(v: &Verified) -> Vec<(String, usize)> {
    let mut by: std::collections::BTreeMap<&str, usize> = std::collections::BTreeMap::new();
    for r in &v.runs {
        for d in &r.dangerous {
            *by.entry(d.as_str()).or_default() += 1;
        }
    }
    by.into_iter().map(|(k, n)| (line(k).into_owned(), n)).collect()
}

/// `met: 2 of 2 approvals`, `vetoed by bob: "…"`, `not met: 1 of 2`.
pub(crate) fn quorum_outcome(q: &QuorumSummary) -> String {
    use edge_core::approval::quorum::Outcome as Q;
    match &q.outcome {
        Q::Met { count, required, break_glass: true } => {
            format!("met as BREAK-GLASS: {count} break-glass approval(s) (the tier needs {required})")
        }
        Q::Met { count, required, .. } => format!("met: {count} of {required} approval(s)"),
        Q::Vetoed { by, comment } => match comment {
            Some(c) => format!("vetoed by {by}: \"{c}\""),
            None => format!("vetoed by {by}"),
        },
        Q::Insufficient { count, required } => format!("not met: {count} of {required} approval(s)"),
    }
}

/// The text report, generated now, listing every proposal.
pub fn text(v: &Verified) -> String {
    text_with(v, &Options::now())
}

/// The text report with options (generation time, filter).
pub fn text_with(v: &Verified, opts: &Options) -> String {
    let r = model::build(v, opts);
    let mut s = String::new();
    header(&mut s, &r);
    for story in &r.stories {
        proposal(&mut s, story);
    }
    s
}

fn header(s: &mut String, r: &Report<'_>) {
    let v = r.v;
    let _ = writeln!(s, "EVIDENCE REPORT: VERIFIED ({:?} verification)", v.level);
    let _ = writeln!(s, "generated   {} by edge-verify {VERIFIER_VERSION}", r.opts.generated_at);
    let _ = writeln!(s, "runner      {}", U(&v.header.origin));
    let _ = writeln!(s, "key         {} ({})", U(&v.key), edge_core::rotation::fingerprint(&v.key));
    for note in v.key_notes() {
        let _ = writeln!(s, "key change  {}", U(&note));
    }
    let (builds, unknown) = model::builds(v);
    for (b, n) in builds {
        let _ = writeln!(
            s,
            "build       edge-runner {}: {n} run(s), started {} (record {})",
            U(&b.short()),
            U(&b.started),
            b.record
        );
    }
    if unknown > 0 {
        let _ = writeln!(
            s,
            "build       unknown for {unknown} run(s) (no runner-started record before them in this bundle)"
        );
    }
    let _ = writeln!(s, "checkpoint  tree size {}, root {}", v.checkpoint.size, b64(&v.checkpoint.root));
    let _ = writeln!(s, "scope       {}", U(&scope_text(v)));
    let _ = writeln!(s, "records     {}; runs {}", v.record_count, v.runs.len());
    if r.opts.filter.is_empty() {
        let _ = writeln!(s, "proposals   {}", r.total);
    } else {
        let _ = writeln!(
            s,
            "proposals   {} of {} listed (filter: {}); verification covered the whole bundle",
            r.stories.len(),
            r.total,
            r.opts.filter.describe()
        );
    }
    for (switch, n) in dangerous(v) {
        let _ = writeln!(s, "INSECURE    {n} run(s) ran with {switch} switched on");
    }
    let glass = r.stories.iter().filter(|s| s.break_glass()).count();
    if glass > 0 {
        let _ = writeln!(s, "BREAK-GLASS {glass} proposal(s) were authorized by break-glass");
    }
    let sum = &r.summary;
    let _ = writeln!(s, "\nSUMMARY");
    let _ = writeln!(s, "  by state     {}", super::html::by_state_text(&sum.by_state));
    for (tier, states) in &sum.by_tier {
        let n: usize = states.values().sum();
        let t = tier.map_or_else(|| "no decision".to_owned(), |t| format!("tier {t}"));
        let _ = writeln!(s, "  {t:<12} {n} ({})", super::html::by_state_text(states));
    }
    for (who, t) in &sum.by_approver {
        let _ = writeln!(
            s,
            "  approver     {}: {} counted, {} not counted, {} rejection(s), {} refused",
            U(who),
            t.counted,
            t.not_counted,
            t.rejections,
            t.refused
        );
    }
}

fn proposal(s: &mut String, st: &Story<'_>) {
    let p = &st.view;
    let _ = writeln!(s, "\nproposal {}  [{}]  {}", U(&p.id), p.state.name(), U(p.name.as_deref().unwrap_or("-")));
    let by =
        p.submitted_by.as_deref().map(|a| format!(" by {} ({})", U(a), super::submitted_via(a))).unwrap_or_default();
    let _ = writeln!(s, "  submitted   {}{by}", U(&p.submitted_at));
    if let Some(c) = &p.capsule {
        let _ = writeln!(s, "  capsule     {c}");
    }
    if let Some(sg) = st.signer() {
        let _ = writeln!(s, "  signed by   {}", U(sg));
    }
    if let Some(pr) = st.provenance() {
        for (k, v) in [
            ("agent", &pr.agent),
            ("model", &pr.model),
            ("ticket", &pr.ticket),
            ("rationale", &pr.rationale),
            ("source", &pr.source_ref),
        ] {
            if let Some(v) = v {
                let _ = writeln!(s, "  {k:<11} {}", U(v));
            }
        }
    }
    for r in &st.runs {
        let _ = writeln!(
            s,
            "  run         {} [{}] {} .. {} (records {}..{}){}",
            U(&r.run),
            outcome_name(r.outcome),
            U(&r.started),
            U(&r.ended),
            r.first_seq,
            r.last_seq,
            r.build.as_ref().map(|b| format!(" by edge-runner {}", U(&b.short()))).unwrap_or_default()
        );
    }
    if let Some(d) = &p.decision {
        let _ = writeln!(s, "  decision    {} tier {}", if d.allowed { "allowed at" } else { "DENIED at" }, d.tier);
        for reason in &d.reasons {
            let _ = writeln!(s, "    rule      [{}] {}", U(&reason.rule), U(&reason.text));
        }
    }
    if let Some(b) = &st.blast {
        let d = &b.derivation;
        for t in &d.touched {
            let access = if t.access == Access::Write { "write" } else { "read" };
            let _ = writeln!(s, "  touched     {} ({access} via {})", U(&t.node), U(&t.via));
        }
        let mut listed: Vec<String> = d.impacted.iter().take(8).map(|n| line(n).into_owned()).collect();
        if d.impacted_count > listed.len() {
            listed.push(format!("… {} more", d.impacted_count - listed.len()));
        }
        let _ = writeln!(s, "  impacted    {} node(s): {}", d.impacted_count, listed.join(", "));
        if let Some(m) = &d.most_critical {
            let _ = writeln!(s, "  critical    {} ({})", U(&m.node), m.criticality);
        }
        if !d.sensitive_tags.is_empty() {
            let _ = writeln!(s, "  sensitive   {}", U(&d.sensitive_tags.join(", ")));
        }
    }
    if let Some(plan) = st.plan_summary() {
        let _ = writeln!(s, "  plan        \"{}\" (the capsule's summary)", U(plan));
    }
    for f in st.files.iter() {
        let _ = writeln!(s, "  change      {} {}/{} — {}", f.action, U(&f.mount), U(&f.path), f.shown.label(f.mode));
        for l in &f.lines {
            let _ = match l {
                DiffLine::Hunk(t) => writeln!(s, "      {}", U(t)),
                DiffLine::Context(t) => writeln!(s, "       {}", U(t)),
                DiffLine::Added(t) => writeln!(s, "      +{}", U(t)),
                DiffLine::Removed(t) => writeln!(s, "      -{}", U(t)),
                DiffLine::Note(t) => writeln!(s, "      ({})", U(t)),
            };
        }
        if f.omitted > 0 {
            let _ = writeln!(s, "      (… {} more line(s) not shown)", f.omitted);
        }
    }
    for (run, q) in st.quorums() {
        let _ = writeln!(s, "  quorum      {} (run {}, {})", U(&quorum_outcome(q)), U(run), U(&q.time));
        for a in &q.approvers {
            let roles = if a.roles.is_empty() { "-".to_owned() } else { a.roles.join(", ") };
            let counted = if a.counted { "counted".to_owned() } else { format!("NOT counted: {}", a.note) };
            let _ = writeln!(
                s,
                "    {} {} [{}] key {} signed {} — {}",
                a.verdict,
                U(&a.principal),
                U(&roles),
                U(&a.key),
                U(&a.issued_at),
                U(&counted)
            );
            if let Some(c) = &a.comment {
                let _ = writeln!(s, "      comment \"{}\"", U(c));
            }
        }
    }
    for (run, a) in st.refused_approvals() {
        let _ = writeln!(
            s,
            "  approval refused: {} ({}): {} (run {})",
            U(a.principal.as_deref().unwrap_or("(unnamed)")),
            U(&a.reason_code),
            U(&a.detail),
            U(run)
        );
    }
    if p.approvals_required > 0 && st.quorums().next().is_none() {
        let _ = writeln!(s, "  quorum      {} approval(s) required; none presented yet", p.approvals_required);
    }
    let _ = writeln!(s, "  authorized  {}", U(&st.authorized_by()));
    for f in st.findings() {
        let _ = writeln!(s, "  finding     [{}] {}: {}", f.severity, U(&f.code), U(&f.message));
    }
    for (run, call) in st.calls() {
        let _ = writeln!(s, "  call        {} (run {})", U(call), U(run));
    }
    if let Some((passed, summary)) = st.verify() {
        let _ = writeln!(s, "  verify      {}: \"{}\"", if passed { "passed" } else { "FAILED" }, U(summary));
    }
    for (run, stage, code, detail) in st.refusals() {
        let _ = writeln!(s, "  refused     at {}: {}: {} (run {})", U(stage), U(code), U(detail), U(run));
    }
}

/// The text for a failed bundle, generated now.
pub fn text_failed(f: &Failure) -> String {
    text_failed_with(f, &Options::now())
}

/// The text for a failed bundle.
pub fn text_failed_with(f: &Failure, opts: &Options) -> String {
    format!(
        "EVIDENCE REPORT: FAILED\n{}\nDo not rely on anything this bundle contains.\ngenerated   {} by edge-verify {VERIFIER_VERSION}\n",
        U(&f.to_string()),
        opts.generated_at
    )
}
