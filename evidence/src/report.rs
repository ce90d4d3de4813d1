//! The human summary of a bundle: text for terminals and one self-contained
//! HTML page (inline CSS, no scripts, no external resources; a
//! Content-Security-Policy forbids loading anything). Everything shown comes
//! from a fully verified bundle; a bundle that fails gets a FAILED banner and
//! the failure, and none of its contents.

use std::fmt::Write as _;

use edge_core::evidence::Outcome;
use edge_core::text::{Untrusted as U, line};

use crate::bundle::Scope;
use crate::runs::RunSummary;
use crate::{Failure, Verified};

fn outcome_name(o: Option<Outcome>) -> &'static str {
    match o {
        Some(Outcome::Committed) => "committed",
        Some(Outcome::NoChanges) => "no-changes",
        Some(Outcome::Refused) => "refused",
        Some(Outcome::RolledBack) => "rolled-back",
        Some(Outcome::Interrupted) => "interrupted",
        Some(Outcome::AwaitingApproval) => "awaiting-approval",
        None => "unfinished",
    }
}

fn scope_text(v: &Verified) -> String {
    match &v.header.scope {
        Scope::Full => "the whole log".into(),
        Scope::Since { .. } => {
            format!("records after checkpoint {} (consistency proven)", v.since.as_ref().map_or(0, |c| c.size))
        }
        Scope::Run { run, .. } => format!("run {run} only (inclusion proofs)"),
    }
}

/// `3 committed, 1 refused`: how many of each name, in name order.
fn tally<'a>(names: impl Iterator<Item = &'a str>) -> String {
    let mut by: std::collections::BTreeMap<&str, usize> = std::collections::BTreeMap::new();
    for name in names {
        *by.entry(name).or_default() += 1;
    }
    by.iter().map(|(k, n)| format!("{n} {k}")).collect::<Vec<_>>().join(", ")
}

fn counts(v: &Verified) -> String {
    tally(v.runs.iter().map(|r| outcome_name(r.outcome)))
}

/// Proposals (a submission and the run that executed it once approved are
/// one proposal), by lifecycle state: the same fold the runner and its API
/// use (`edge_core::lifecycle`).
fn proposal_counts(v: &Verified) -> (usize, String) {
    let proposals = edge_core::lifecycle::index(&v.records);
    (proposals.len(), tally(proposals.iter().map(|p| p.state.name())))
}

/// Insecure switches (`dangerous_…`) in force for any run, and how many runs
/// each: shown in every report's banner.
fn dangerous(v: &Verified) -> Vec<(String, usize)> {
    let mut by: std::collections::BTreeMap<&str, usize> = std::collections::BTreeMap::new();
    for r in &v.runs {
        for d in &r.dangerous {
            *by.entry(d.as_str()).or_default() += 1;
        }
    }
    by.into_iter().map(|(k, n)| (line(k).into_owned(), n)).collect()
}

fn tier_text(r: &RunSummary) -> String {
    match (r.allowed, r.tier) {
        (Some(false), Some(t)) => format!("denied (tier {t})"),
        (Some(true), Some(t)) => format!("tier {t}"),
        _ => "-".into(),
    }
}

fn who(r: &RunSummary) -> String {
    if r.approvals.is_empty() {
        return match r.tier {
            Some(0) if r.allowed == Some(true) => "policy (tier 0, no human)".into(),
            _ => "-".into(),
        };
    }
    let list: Vec<String> = r.approvals.iter().map(|(p, v)| format!("{} ({v})", U(p))).collect();
    format!("{}{}", list.join(", "), if r.break_glass { " — BREAK-GLASS" } else { "" })
}

/// The text report.
pub fn text(v: &Verified) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "EVIDENCE REPORT: VERIFIED ({:?} verification)", v.level);
    let _ = writeln!(s, "runner      {}", v.header.origin);
    let _ = writeln!(s, "key         {}", v.key);
    let _ = writeln!(s, "checkpoint  tree size {}, root {}", v.checkpoint.size, b64(&v.checkpoint.root));
    let _ = writeln!(s, "scope       {}", scope_text(v));
    let _ = writeln!(s, "records     {}; runs {} ({})", v.record_count, v.runs.len(), counts(v));
    let (proposals, by_state) = proposal_counts(v);
    let _ = writeln!(s, "proposals   {proposals} ({by_state})");
    for (switch, n) in dangerous(v) {
        let _ = writeln!(s, "INSECURE    {n} run(s) ran with {switch} switched on");
    }
    let glass = v.runs.iter().filter(|r| r.break_glass).count();
    if glass > 0 {
        let _ = writeln!(s, "BREAK-GLASS {glass} run(s) were authorized by break-glass");
    }
    for r in &v.runs {
        let _ = writeln!(s, "\nrun {}  [{}]  records {}..{}", r.run, outcome_name(r.outcome), r.first_seq, r.last_seq);
        let _ = writeln!(s, "  time      {} .. {}", r.started, r.ended);
        if let Some(c) = &r.capsule {
            let _ = writeln!(s, "  capsule   {} {}", U(c), r.capsule_digest.map(|d| d.to_string()).unwrap_or_default());
        }
        if let Some(sg) = &r.signer {
            let _ = writeln!(s, "  signer    {}", U(sg));
        }
        if let Some(a) = &r.submitted_by {
            let _ = writeln!(s, "  agent     {} (client certificate)", U(a));
        }
        let _ = writeln!(s, "  decision  {}", tier_text(r));
        for reason in &r.reasons {
            let _ = writeln!(s, "            {}", U(reason));
        }
        let _ = writeln!(s, "  approved  {}", who(r));
        for (p, code) in &r.refused_approvals {
            let _ = writeln!(s, "  approval refused: {} ({code})", U(p));
        }
        if let Some(p) = &r.plan_summary {
            let _ = writeln!(s, "  plan      \"{}\" (the capsule's summary)", U(p));
        }
        for d in &r.diff {
            let _ = writeln!(
                s,
                "  changed   {} {}/{} {} -> {}{}",
                d.action,
                d.mount,
                U(d.path.as_str()),
                opt(d.before),
                opt(d.after),
                d.mode.map(|m| format!(" mode {m:04o}")).unwrap_or_default()
            );
        }
        for f in &r.findings {
            let _ = writeln!(s, "  finding   [{}] {}: {}", f.severity, U(&f.code), U(&f.message));
        }
        for (stage, code, detail) in &r.refusals {
            let _ = writeln!(s, "  refused   at {stage}: {code}: {}", U(detail));
        }
        if let Some((code, detail)) = &r.rolled_back {
            let _ = writeln!(s, "  rollback  {code}: {}", U(detail));
        }
    }
    s
}

fn opt(d: Option<edge_core::Sha256Digest>) -> String {
    d.map_or_else(|| "(none)".into(), |d| d.to_string())
}

fn b64(h: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(h)
}

/// Escape text for HTML element content and quoted attributes, after
/// neutralising controls and bidi overrides (`edge_core::text`).
fn esc(s: &str) -> String {
    let s = edge_core::text::line(s);
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            _ => o.push(c),
        }
    }
    o
}

const STYLE: &str = "body{font:14px/1.45 system-ui,sans-serif;margin:0;color:#1b1f24;background:#f6f7f9}\
main{max-width:1100px;margin:0 auto;padding:16px}\
#banner{padding:18px 24px;font-size:22px;font-weight:700;color:#fff}\
#banner.verified{background:#1a7f37}#banner.failed{background:#b42318}\
#banner small{display:block;font-size:14px;font-weight:400}\
table{border-collapse:collapse;width:100%;background:#fff;margin:8px 0}\
th,td{border:1px solid #d0d7de;padding:4px 8px;text-align:left;vertical-align:top}\
th{background:#eef1f4}code{font-size:12px;word-break:break-all}\
section.run{background:#fff;border:1px solid #d0d7de;margin:12px 0;padding:8px 16px}\
.o-committed{color:#1a7f37}.o-refused,.o-rolled-back,.o-interrupted{color:#b42318}\
.o-awaiting-approval{color:#9a6700}.glass{background:#b42318;color:#fff;padding:0 6px;border-radius:3px}";

fn page(title: &str, body: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">\
<title>{}</title><style>{STYLE}</style></head><body>{body}</body></html>\n",
        esc(title)
    )
}

/// The HTML report for a bundle that verified.
pub fn html(v: &Verified) -> String {
    let mut b = String::new();
    let _ = write!(
        b,
        "<div id=\"banner\" class=\"verified\">VERIFIED<small>{} verification of {} records from runner {} against key {}</small></div><main>",
        if v.level == crate::Level::Full { "Full" } else { "Integrity" },
        v.record_count,
        esc(&v.header.origin),
        esc(&v.key)
    );
    for (switch, n) in dangerous(v) {
        let _ = write!(
            b,
            "<p class=\"insecure\"><span class=\"glass\">INSECURE</span> {n} run(s) ran with <code>{}</code> switched on</p>",
            esc(&switch)
        );
    }
    let (proposals, by_state) = proposal_counts(v);
    let _ = write!(
        b,
        "<table id=\"summary\"><tr><th>Runner</th><td>{}</td></tr><tr><th>Checkpoint</th><td>tree size {}, root <code>{}</code></td></tr>\
<tr><th>Scope</th><td>{}</td></tr><tr><th>Runs</th><td>{} ({})</td></tr><tr><th>Proposals</th><td>{} ({})</td></tr></table>",
        esc(&v.header.origin),
        v.checkpoint.size,
        b64(&v.checkpoint.root),
        esc(&scope_text(v)),
        v.runs.len(),
        esc(&counts(v)),
        proposals,
        esc(&by_state)
    );
    b.push_str(
        "<h2>Timeline</h2><table id=\"timeline\"><tr><th>Started</th><th>Run</th><th>Capsule</th><th>Tier</th>\
<th>Authorized by</th><th>Outcome</th></tr>",
    );
    for r in &v.runs {
        let _ = write!(
            b,
            "<tr class=\"run\" data-run=\"{}\" data-outcome=\"{}\" data-tier=\"{}\" data-break-glass=\"{}\"><td>{}</td><td><a href=\"#run-{}\">{}</a></td><td>{}</td><td>{}</td><td>{}</td><td class=\"o-{1}\">{1}</td></tr>",
            esc(&r.run),
            outcome_name(r.outcome),
            r.tier.map(|t| t.to_string()).unwrap_or_default(),
            r.break_glass,
            esc(&r.started),
            esc(&r.run),
            esc(&r.run),
            esc(r.capsule.as_deref().unwrap_or("-")),
            esc(&tier_text(r)),
            if r.break_glass {
                format!("{} <span class=\"glass\">BREAK-GLASS</span>", esc(&who(r)))
            } else {
                esc(&who(r))
            },
        );
    }
    b.push_str("</table>");
    for r in &v.runs {
        run_section(&mut b, r);
    }
    b.push_str("</main>");
    page(&format!("Evidence report: VERIFIED — {}", v.header.origin), &b)
}

fn run_section(b: &mut String, r: &RunSummary) {
    let _ = write!(
        b,
        "<section class=\"run\" id=\"run-{}\"><h3>Run {} <span class=\"o-{2}\">{2}</span></h3><table>",
        esc(&r.run),
        esc(&r.run),
        outcome_name(r.outcome)
    );
    let row = |b: &mut String, k: &str, v: String| {
        let _ = write!(b, "<tr><th>{k}</th><td>{v}</td></tr>");
    };
    row(b, "Time", esc(&format!("{} .. {} (records {}..{})", r.started, r.ended, r.first_seq, r.last_seq)));
    if let Some(c) = &r.capsule {
        row(
            b,
            "Capsule",
            format!("{} <code>{}</code>", esc(c), r.capsule_digest.map(|d| d.to_string()).unwrap_or_default()),
        );
    }
    if let Some(s) = &r.signer {
        row(b, "Signer", esc(s));
    }
    if let Some(a) = &r.submitted_by {
        row(b, "Submitted by", format!("{} (client certificate)", esc(a)));
    }
    let reasons: String = r.reasons.iter().map(|x| format!("<li>{}</li>", esc(x))).collect();
    row(b, "Decision", format!("{}<ul class=\"reasons\">{reasons}</ul>", esc(&tier_text(r))));
    row(b, "Authorized by", esc(&who(r)));
    if !r.refused_approvals.is_empty() {
        let list: String =
            r.refused_approvals.iter().map(|(p, c)| format!("<li>{} — {}</li>", esc(p), esc(c))).collect();
        row(b, "Refused approvals", format!("<ul>{list}</ul>"));
    }
    if let Some(p) = &r.plan_summary {
        row(b, "Plan", esc(p));
    }
    b.push_str("</table>");
    if !r.diff.is_empty() {
        b.push_str("<table class=\"diff\"><tr><th>Change</th><th>Path</th><th>Before</th><th>After</th></tr>");
        for d in &r.diff {
            let _ = write!(
                b,
                "<tr><td>{}</td><td>{}/{}</td><td><code>{}</code></td><td><code>{}</code></td></tr>",
                d.action,
                esc(&d.mount),
                esc(d.path.as_str()),
                opt(d.before),
                opt(d.after)
            );
        }
        b.push_str("</table>");
    }
    if !r.findings.is_empty() {
        b.push_str("<table class=\"findings\"><tr><th>Severity</th><th>Code</th><th>Finding</th></tr>");
        for f in &r.findings {
            let _ = write!(b, "<tr><td>{}</td><td>{}</td><td>{}</td></tr>", f.severity, esc(&f.code), esc(&f.message));
        }
        b.push_str("</table>");
    }
    if !r.refusals.is_empty() || r.rolled_back.is_some() {
        b.push_str("<table class=\"refusals\"><tr><th>Stage</th><th>Reason</th><th>Detail</th></tr>");
        for (stage, code, detail) in &r.refusals {
            let _ = write!(b, "<tr><td>{}</td><td>{}</td><td>{}</td></tr>", esc(stage), esc(code), esc(detail));
        }
        if let Some((code, detail)) = &r.rolled_back {
            let _ = write!(b, "<tr><td>rollback</td><td>{}</td><td>{}</td></tr>", esc(code), esc(detail));
        }
        b.push_str("</table>");
    }
    b.push_str("</section>");
}

/// The HTML page for a bundle that failed verification: the banner and the
/// failure, and nothing from the bundle.
pub fn html_failed(f: &Failure) -> String {
    let body = format!(
        "<div id=\"banner\" class=\"failed\">FAILED<small id=\"failure\">{}</small></div><main><p>This bundle did not verify. \
Do not rely on anything it contains; ask the runner's operator for a fresh export and verify it again.</p></main>",
        esc(&f.to_string())
    );
    page("Evidence report: FAILED", &body)
}

/// The text for a failed bundle.
pub fn text_failed(f: &Failure) -> String {
    format!("EVIDENCE REPORT: FAILED\n{}\nDo not rely on anything this bundle contains.\n", U(&f.to_string()))
}
