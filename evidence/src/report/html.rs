//! The HTML report: one self-contained page (inline CSS and SVG, no
//! scripts, no external resources; a Content-Security-Policy forbids loading
//! anything), with a print stylesheet. Every text from the bundle goes
//! through [`esc`].

use std::fmt::Write as _;

use edge_core::lifecycle::State;
use edge_core::policy::Access;
use edge_core::preview::DiffLine;

use super::diff::FileDiff;
use super::model::{self, Report, Story};
use super::{Options, VERIFIER_VERSION};
use crate::runs::RunSummary;
use crate::{Failure, Level, Verified};

/// Escape text for HTML element content and quoted attributes, after
/// neutralising controls, bidi overrides and invisible characters
/// (`edge_core::text::line`: they become visible `\u{…}` escapes).
pub fn esc(s: &str) -> String {
    escape(&edge_core::text::line(s))
}

/// As [`esc`], keeping tabs (file content in a diff, shown preformatted).
pub fn esc_content(s: &str) -> String {
    let t = edge_core::text::block(s);
    if t.contains('\n') { escape(&t.replace('\n', "\\n")) } else { escape(&t) }
}

fn escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 8);
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
main{max-width:1180px;margin:0 auto;padding:16px}\
#banner{padding:18px 24px;font-size:22px;font-weight:700;color:#fff}\
#banner.verified{background:#1a7f37}#banner.failed{background:#b42318}\
#banner small{display:block;font-size:14px;font-weight:400}\
h2{margin:24px 0 8px}h4{margin:14px 0 4px;font-size:14px;text-transform:uppercase;letter-spacing:.04em;color:#57606a}\
table{border-collapse:collapse;width:100%;background:#fff;margin:6px 0}\
th,td{border:1px solid #d0d7de;padding:4px 8px;text-align:left;vertical-align:top}\
th{background:#eef1f4;font-weight:600}table.facts th{width:150px}\
code{font:12px ui-monospace,monospace;word-break:break-all}\
.tallies{display:grid;grid-template-columns:minmax(0,2fr) minmax(0,3fr) minmax(0,4fr);gap:16px;align-items:start}\
@media (max-width:800px){.tallies{grid-template-columns:minmax(0,1fr)}}\
caption{text-align:left;font-weight:600;padding:6px 0 2px}\
section.proposal{background:#fff;border:1px solid #d0d7de;border-radius:6px;margin:16px 0;padding:8px 16px 16px}\
section.proposal h3{margin:8px 0;font-size:18px}\
.state{padding:1px 8px;border-radius:10px;font-size:13px;font-weight:600;background:#eef1f4}\
.s-committed,.s-completed{background:#dafbe1;color:#1a7f37}\
.s-refused,.s-rolled-back,.s-failed,.s-rejected,.s-expired{background:#ffebe9;color:#b42318}\
.s-awaiting-approval,.s-approved,.s-applying,.s-verifying{background:#fff8c5;color:#9a6700}\
.tier{font-size:13px;color:#57606a}\
.glass{background:#b42318;color:#fff;padding:0 6px;border-radius:3px}\
.file{border:1px solid #d0d7de;border-radius:4px;margin:8px 0;overflow:hidden}\
.fhead{background:#eef1f4;padding:4px 8px;font:12px ui-monospace,monospace}\
.shown{font:12px system-ui,sans-serif;margin-left:8px;padding:0 6px;border-radius:3px;background:#fff}\
.shown-redacted{background:#fff8c5;color:#9a6700;font-weight:600}\
.diff{font:12px/1.5 ui-monospace,monospace;white-space:pre-wrap;word-break:break-all;background:#fff}\
.dl{padding:0 8px}.add{background:#e6ffec}.del{background:#ffebe9}.hunk{background:#ddf4ff;color:#57606a}\
.note{color:#57606a;font-style:italic;font-family:system-ui,sans-serif}\
.blast{display:flex;gap:16px;flex-wrap:wrap;align-items:flex-start}.blast table{flex:1 1 320px;width:auto;max-width:520px;margin:0}\
svg.blast{flex:0 1 auto;background:#fff;border:1px solid #d0d7de;border-radius:4px;max-width:100%;height:auto}\
tr.not-counted td{color:#57606a}td.yes{color:#1a7f37;font-weight:600}td.no{color:#b42318}\
.comment{font-style:italic}.quoted{color:#57606a}\
.pass{color:#1a7f37;font-weight:600}.fail{color:#b42318;font-weight:600}\
footer{color:#57606a;font-size:12px;padding:16px;text-align:center}\
@media print{body{background:#fff;font-size:11px}main{max-width:none;padding:0}\
#banner{-webkit-print-color-adjust:exact;print-color-adjust:exact;color:#000;border:3px solid #000}\
#banner.verified{background:#fff}#banner.failed{background:#fff}\
section.proposal{border:0;border-top:2px solid #000;border-radius:0;break-before:auto;padding:4px 0}\
section.proposal h3,h4,.file .fhead,tr{break-inside:avoid;break-after:avoid}\
.add,.del,.hunk,.state,.glass,.shown-redacted{-webkit-print-color-adjust:exact;print-color-adjust:exact}\
a{color:inherit;text-decoration:none}svg.blast{border:0}#proposals a::after{content:''}}";

fn page(title: &str, body: &str, opts: &Options) -> String {
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">\
<meta name=\"generator\" content=\"edge-verify {VERIFIER_VERSION}\">\
<title>{}</title><style>{STYLE}</style></head><body>{body}\
<footer id=\"generated\">Generated at <time>{}</time> by edge-verify {VERIFIER_VERSION}.</footer></body></html>\n",
        esc(title),
        opts.generated_at
    )
}

/// The HTML report for a bundle that verified, generated now, listing every proposal.
pub fn html(v: &Verified) -> String {
    html_with(v, &Options::now())
}

/// The HTML report with options (generation time, filter).
pub fn html_with(v: &Verified, opts: &Options) -> String {
    let r = model::build(v, opts);
    let mut b = String::with_capacity(4096 + r.stories.len() * 6000);
    banner(&mut b, &r);
    overview(&mut b, &r);
    tallies(&mut b, &r);
    index(&mut b, &r);
    for s in &r.stories {
        proposal(&mut b, s);
    }
    runs(&mut b, &r);
    b.push_str("</main>");
    page(&format!("Evidence report: VERIFIED — {}", v.header.origin), &b, opts)
}

fn banner(b: &mut String, r: &Report<'_>) {
    let v = r.v;
    let _ = write!(
        b,
        "<div id=\"banner\" class=\"verified\">VERIFIED<small>{} verification of {} records from runner {} against key {}</small>\
<small>generated at {} by edge-verify {VERIFIER_VERSION}</small></div><main>",
        if v.level == Level::Full { "Full" } else { "Integrity" },
        v.record_count,
        esc(&v.header.origin),
        esc(&v.key),
        r.opts.generated_at
    );
    for (switch, n) in super::text::dangerous(v) {
        let _ = write!(
            b,
            "<p class=\"insecure\"><span class=\"glass\">INSECURE</span> {n} run(s) ran with <code>{}</code> switched on</p>",
            esc(&switch)
        );
    }
    let glass = r.stories.iter().filter(|s| s.break_glass()).count();
    if glass > 0 {
        let _ = write!(
            b,
            "<p class=\"insecure\"><span class=\"glass\">BREAK-GLASS</span> {glass} proposal(s) were authorized by break-glass</p>"
        );
    }
}

fn overview(b: &mut String, r: &Report<'_>) {
    let v = r.v;
    let listed = if r.opts.filter.is_empty() {
        format!("{} (all)", r.total)
    } else {
        format!("{} of {} (filter: {})", r.stories.len(), r.total, r.opts.filter.describe())
    };
    let _ = write!(
        b,
        "<table id=\"summary\" class=\"facts\"><tr><th>Runner</th><td>{}</td></tr>\
<tr><th>Checkpoint</th><td>tree size {}, root <code>{}</code></td></tr>\
<tr><th>Scope</th><td>{}</td></tr><tr><th>Verification</th><td>{} — every record, run and artifact of the bundle, whatever is listed</td></tr>\
<tr><th>Runs</th><td>{}</td></tr><tr><th>Proposals listed</th><td id=\"listed\">{}</td></tr>\
<tr><th>Generated</th><td>{} by edge-verify {VERIFIER_VERSION}</td></tr>",
        esc(&v.header.origin),
        v.checkpoint.size,
        super::text::b64(&v.checkpoint.root),
        esc(&super::text::scope_text(v)),
        if v.level == Level::Full { "full" } else { "integrity only" },
        v.runs.len(),
        esc(&listed),
        r.opts.generated_at
    );
    let fingerprint = edge_core::rotation::fingerprint(&v.key);
    let _ = write!(b, "<tr><th>Identity key</th><td id=\"identity-key\"><code>{}</code></td></tr>", esc(&fingerprint));
    let notes = v.key_notes();
    if !notes.is_empty() {
        b.push_str("<tr><th>Key changes</th><td><ul id=\"key-changes\">");
        for (n, c) in
            notes.iter().zip(v.key_changes.iter().filter(|c| c.kind != edge_core::rotation::ChangeKind::First))
        {
            let class = if c.kind == edge_core::rotation::ChangeKind::Rotated { "rotated" } else { "insecure" };
            let _ = write!(b, "<li class=\"{class}\" data-record=\"{}\">{}</li>", c.seq, esc(n));
        }
        b.push_str("</ul></td></tr>");
    }
    let (builds, unknown) = model::builds(v);
    if !builds.is_empty() || unknown > 0 {
        b.push_str("<tr><th>Runner builds</th><td><ul id=\"runner-builds\">");
        for (build, n) in builds {
            let _ = write!(
                b,
                "<li class=\"build\" data-record=\"{}\">edge-runner <span class=\"version\">{}</span>, revision <code>{}</code>, \
binary <code class=\"binary\">{}</code>: {n} run(s), started {} (record {})</li>",
                build.record,
                esc(&build.version),
                esc(&build.revision),
                build.binary,
                esc(&build.started),
                build.record
            );
        }
        if unknown > 0 {
            let _ = write!(b, "<li>{unknown} run(s) with no runner-started record before them in this bundle</li>");
        }
        b.push_str("</ul></td></tr>");
    }
    b.push_str("</table>");
}

fn tallies(b: &mut String, r: &Report<'_>) {
    let s = &r.summary;
    b.push_str("<h2>Summary");
    if !r.opts.filter.is_empty() {
        let _ = write!(b, " <small class=\"quoted\">of the {} proposal(s) listed</small>", r.stories.len());
    }
    b.push_str("</h2><div class=\"tallies\"><div><table id=\"by-state\"><tr><th>State</th><th>Proposals</th></tr>");
    for (st, n) in &s.by_state {
        let _ = write!(
            b,
            "<tr data-state=\"{0}\"><td><span class=\"state s-{0}\">{0}</span></td><td>{n}</td></tr>",
            st.name()
        );
    }
    b.push_str("</table></div><div><table id=\"by-tier\"><tr><th>Tier</th><th>Proposals</th><th>Outcomes</th></tr>");
    for (tier, states) in &s.by_tier {
        let n: usize = states.values().sum();
        let _ = write!(
            b,
            "<tr data-tier=\"{}\"><td>{}</td><td>{n}</td><td>{}</td></tr>",
            tier.map(|t| t.to_string()).unwrap_or_default(),
            tier.map_or_else(|| "no decision".to_owned(), |t| format!("tier {t}")),
            esc(&by_state_text(states))
        );
    }
    b.push_str(
        "</table></div><div><table id=\"by-approver\"><tr><th>Approver</th><th>Counted</th><th>Not counted</th>\
<th>Rejections</th><th>Refused</th></tr>",
    );
    if s.by_approver.is_empty() {
        b.push_str("<tr><td colspan=\"5\">no approvals</td></tr>");
    }
    for (who, t) in &s.by_approver {
        let _ = write!(
            b,
            "<tr class=\"approver\"><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(who),
            t.counted,
            t.not_counted,
            t.rejections,
            t.refused
        );
    }
    b.push_str("</table></div></div>");
}

pub(crate) fn by_state_text(states: &std::collections::BTreeMap<State, usize>) -> String {
    states.iter().map(|(st, n)| format!("{n} {}", st.name())).collect::<Vec<_>>().join(", ")
}

fn index(b: &mut String, r: &Report<'_>) {
    b.push_str(
        "<h2>Proposals</h2><table id=\"proposals\"><tr><th>Submitted</th><th>Proposal</th><th>Capsule</th><th>Tier</th>\
<th>State</th><th>Authorized by</th><th>Change</th></tr>",
    );
    if r.stories.is_empty() {
        b.push_str("<tr><td colspan=\"7\">no proposal matches</td></tr>");
    }
    for s in &r.stories {
        let p = &s.view;
        let _ = write!(
            b,
            "<tr class=\"proposal\" data-proposal=\"{id}\" data-state=\"{st}\" data-tier=\"{tier}\"><td>{}</td>\
<td><a href=\"#{id}\">{id}</a></td><td>{}</td><td>{}</td><td><span class=\"state s-{st}\">{st}</span></td><td>{}</td><td>{}</td></tr>",
            esc(&p.submitted_at),
            esc(p.name.as_deref().unwrap_or("-")),
            tier_short(s),
            esc(&s.authorized_by()),
            esc(&change_short(&s.files)),
            id = esc(&p.id),
            st = p.state.name(),
            tier = p.tier.map(|t| t.to_string()).unwrap_or_default(),
        );
    }
    b.push_str("</table>");
}

fn tier_short(s: &Story<'_>) -> String {
    match &s.view.decision {
        Some(d) if !d.allowed => format!("denied (tier {})", d.tier),
        Some(d) => format!("tier {}", d.tier),
        None => "-".into(),
    }
}

pub(crate) fn change_short(files: &[FileDiff]) -> String {
    if files.is_empty() {
        return "none".into();
    }
    let (a, r) = files.iter().fold((0, 0), |(a, r), f| (a + f.added, r + f.removed));
    let shown = if files.iter().all(|f| f.shown == super::diff::Shown::Digests) {
        String::new()
    } else {
        format!(" (+{a} −{r})")
    };
    match files {
        [f] => format!("{} {}/{}{shown}", f.action, f.mount, f.path),
        _ => format!("{} files{shown}", files.len()),
    }
}

fn proposal(b: &mut String, s: &Story<'_>) {
    let p = &s.view;
    let _ = write!(
        b,
        "<section class=\"proposal\" id=\"{id}\" data-state=\"{st}\" data-tier=\"{tier}\"><h3>{id} <span class=\"state s-{st}\">{st}</span> \
<span class=\"name\">{}</span> <span class=\"tier\">{}</span>{}</h3>",
        esc(p.name.as_deref().unwrap_or("(no capsule)")),
        tier_short(s),
        if s.break_glass() { " <span class=\"glass\">BREAK-GLASS</span>" } else { "" },
        id = esc(&p.id),
        st = p.state.name(),
        tier = p.tier.map(|t| t.to_string()).unwrap_or_default(),
    );
    facts(b, s);
    decision(b, s);
    blast(b, s);
    change(b, s);
    quorum(b, s);
    outcome(b, s);
    b.push_str("</section>");
}

fn row(b: &mut String, k: &str, v: &str) {
    let _ = write!(b, "<tr><th>{k}</th><td>{v}</td></tr>");
}

fn facts(b: &mut String, s: &Story<'_>) {
    let p = &s.view;
    b.push_str("<table class=\"facts\">");
    let by =
        p.submitted_by.as_deref().map(|a| format!(" by {} ({})", esc(a), super::submitted_via(a))).unwrap_or_default();
    row(b, "Submitted", &format!("{}{by}", esc(&p.submitted_at)));
    if let Some(c) = &p.capsule {
        row(b, "Capsule", &format!("{} <code>{c}</code>", esc(p.name.as_deref().unwrap_or("-"))));
    }
    if let Some(sg) = s.signer() {
        row(b, "Signed by", &esc(sg));
    }
    if let Some(pr) = s.provenance() {
        let fields = [
            ("Agent", &pr.agent),
            ("Model", &pr.model),
            ("Ticket", &pr.ticket),
            ("Rationale", &pr.rationale),
            ("Source", &pr.source_ref),
        ];
        for (k, v) in fields {
            if let Some(v) = v {
                let _ = write!(b, "<tr class=\"provenance\"><th>{k}</th><td>{}</td></tr>", esc(v));
            }
        }
    }
    let mut runs = String::from("<ul class=\"runs\">");
    for r in &s.runs {
        let _ = write!(
            runs,
            "<li><a href=\"#run-{0}\">{0}</a>: {1} — {2} .. {3} (records {4}..{5}){6}</li>",
            esc(&r.run),
            super::text::outcome_name(r.outcome),
            esc(&r.started),
            esc(&r.ended),
            r.first_seq,
            r.last_seq,
            r.build.as_ref().map(|b| format!(" by edge-runner {}", esc(&b.short()))).unwrap_or_default()
        );
    }
    runs.push_str("</ul>");
    row(b, "Runs", &runs);
    row(b, "Authorized by", &esc(&s.authorized_by()));
    b.push_str("</table>");
}

fn decision(b: &mut String, s: &Story<'_>) {
    let Some(d) = &s.view.decision else { return };
    b.push_str("<h4>Decision</h4>");
    let need = match &d.requirement {
        Some(q) if q.approvals > 0 => format!(
            ": {} approval(s){}{}",
            q.approvals,
            if q.roles.is_empty() { String::new() } else { format!(" from {}", q.roles.join(", ")) },
            if q.distinct { ", distinct people and keys" } else { "" }
        ),
        _ if d.allowed && d.tier == 0 => ": automatic, no approvals".into(),
        _ => String::new(),
    };
    let _ = write!(
        b,
        "<p class=\"decided\"><strong>{} tier {}</strong>{}</p><table class=\"reasons\"><tr><th>Rule</th><th>Reason</th></tr>",
        if d.allowed { "Allowed at" } else { "DENIED at" },
        d.tier,
        esc(&need)
    );
    for reason in &d.reasons {
        let _ = write!(
            b,
            "<tr class=\"reason\"><td><code>{}</code></td><td>{}</td></tr>",
            esc(&reason.rule),
            esc(&reason.text)
        );
    }
    b.push_str("</table>");
}

fn blast(b: &mut String, s: &Story<'_>) {
    let Some(bl) = &s.blast else { return };
    let d = &bl.derivation;
    b.push_str("<h4>Blast radius</h4><div class=\"blast\"><table class=\"facts radius\">");
    blast_rows(b, d);
    b.push_str("</table>");
    match &bl.picture {
        Some(p) => b.push_str(&p.1),
        None => b.push_str("<p class=\"note\">The recorded graph is not in this bundle: no picture.</p>"),
    }
    b.push_str("</div>");
}

/// The rows of a blast-radius facts table (also the approval console's):
/// touched nodes and how, impacted, most critical, sensitive tags, score.
pub fn blast_rows(b: &mut String, d: &edge_core::policy::Derivation) {
    let touched: Vec<String> = d
        .touched
        .iter()
        .map(|t| {
            format!(
                "{} ({} via <code>{}</code>)",
                esc(&t.node),
                if t.access == Access::Write { "write" } else { "read" },
                esc(&t.via)
            )
        })
        .collect();
    row(b, "Touched", &if touched.is_empty() { "nothing in the graph".into() } else { touched.join("<br>") });
    let mut listed: Vec<String> = d.impacted.iter().take(8).map(|n| esc(n)).collect();
    if d.impacted_count > listed.len() {
        listed.push(format!("… {} more", d.impacted_count - listed.len()));
    }
    row(b, "Impacted", &format!("{} node(s): {}", d.impacted_count, listed.join(", ")));
    if let Some(m) = &d.most_critical {
        row(b, "Most critical", &format!("{} ({})", esc(&m.node), m.criticality));
    }
    let tags = if d.sensitive_tags.is_empty() { "none".into() } else { esc(&d.sensitive_tags.join(", ")) };
    row(b, "Sensitive tags", &tags);
    row(b, "Score", &d.score.to_string());
}

fn change(b: &mut String, s: &Story<'_>) {
    let committed = s.runs.iter().any(|r| r.outcome == Some(edge_core::evidence::Outcome::Committed));
    if s.files.is_empty() && s.plan_summary().is_none() {
        return;
    }
    let _ = write!(
        b,
        "<h4>Change{}</h4>",
        if s.files.is_empty() {
            ""
        } else if committed {
            " — committed"
        } else {
            " — previewed, not committed"
        }
    );
    if let Some(p) = s.plan_summary() {
        let _ = write!(b, "<p class=\"plan\"><span class=\"quoted\">The capsule's summary:</span> “{}”</p>", esc(p));
    }
    for f in s.files.iter() {
        file(b, f);
    }
}

fn file(b: &mut String, f: &FileDiff) {
    let _ = write!(
        b,
        "<div class=\"file\" data-shown=\"{}\"><div class=\"fhead\">{} {}/{}{} <span class=\"shown shown-{0}\">{}</span></div><div class=\"diff\">",
        f.shown.name(),
        f.action,
        esc(&f.mount),
        esc(&f.path),
        if f.shown == super::diff::Shown::Digests {
            String::new()
        } else {
            format!(" (+{} −{})", f.added, f.removed)
        },
        f.shown.label(f.mode)
    );
    for (label, d) in [("before", f.before), ("after", f.after)] {
        if let Some(d) = d {
            let _ = write!(b, "<div class=\"dl note\">{label}: <code>{d}</code></div>");
        }
    }
    for l in &f.lines {
        let _ = match l {
            DiffLine::Hunk(t) => write!(b, "<div class=\"dl hunk\">{}</div>", esc(t)),
            DiffLine::Context(t) => write!(b, "<div class=\"dl ctx\"> {}</div>", esc_content(t)),
            DiffLine::Added(t) => write!(b, "<div class=\"dl add\">+{}</div>", esc_content(t)),
            DiffLine::Removed(t) => write!(b, "<div class=\"dl del\">-{}</div>", esc_content(t)),
            DiffLine::Note(t) => write!(b, "<div class=\"dl note\">{}</div>", esc(t)),
        };
    }
    if f.omitted > 0 {
        let _ = write!(
            b,
            "<div class=\"dl note\">… {} more line(s) not shown (in the bundle's artifacts)</div>",
            f.omitted
        );
    }
    b.push_str("</div></div>");
}

fn quorum(b: &mut String, s: &Story<'_>) {
    let refused: Vec<_> = s.refused_approvals().collect();
    if s.quorums().next().is_none() && refused.is_empty() {
        if s.view.approvals_required > 0 {
            let _ = write!(
                b,
                "<h4>Quorum</h4><p class=\"quorum-none\">{} approval(s) required; none presented yet.</p>",
                s.view.approvals_required
            );
        }
        return;
    }
    b.push_str("<h4>Quorum</h4>");
    for (run, q) in s.quorums() {
        let _ = write!(
            b,
            "<table class=\"quorum\" data-run=\"{}\" data-outcome=\"{}\"><caption>{} — run {} at {}</caption>\
<tr><th>Approver</th><th>Role</th><th>Key</th><th>Signed at</th><th>Verdict</th><th>Counted</th><th>Comment</th></tr>",
            esc(run),
            if q.outcome.is_met() { "met" } else { "not-met" },
            esc(&super::text::quorum_outcome(q)),
            esc(run),
            esc(&q.time)
        );
        for a in &q.approvers {
            let _ = write!(
                b,
                "<tr class=\"approver {}\" data-principal=\"{}\"><td>{1}</td><td>{}</td><td><code>{}</code></td><td>{}</td><td>{}</td>\
<td class=\"{}\">{}</td><td class=\"comment\">{}</td></tr>",
                if a.counted { "counted" } else { "not-counted" },
                esc(&a.principal),
                esc(&if a.roles.is_empty() { "-".to_owned() } else { a.roles.join(", ") }),
                esc(&a.key),
                esc(&a.issued_at),
                esc(&a.verdict),
                if a.counted { "yes" } else { "no" },
                if a.counted { "yes".to_owned() } else { format!("no: {}", esc(&a.note)) },
                a.comment.as_deref().map(esc).unwrap_or_default()
            );
        }
        b.push_str("</table>");
    }
    if !refused.is_empty() {
        b.push_str(
            "<table class=\"refused-approvals\"><caption>Approvals the runner refused</caption>\
<tr><th>Approver</th><th>Reason</th><th>Detail</th><th>Run</th></tr>",
        );
        for (run, a) in refused {
            let _ = write!(
                b,
                "<tr><td>{}</td><td><code>{}</code></td><td>{}</td><td>{}</td></tr>",
                esc(a.principal.as_deref().unwrap_or("(unnamed)")),
                esc(&a.reason_code),
                esc(&a.detail),
                esc(run)
            );
        }
        b.push_str("</table>");
    }
}

fn outcome(b: &mut String, s: &Story<'_>) {
    let findings = s.findings();
    if !findings.is_empty() {
        b.push_str(
            "<h4>Findings</h4><table class=\"findings\"><tr><th>Severity</th><th>Code</th><th>Finding</th></tr>",
        );
        for f in findings {
            let _ = write!(
                b,
                "<tr><td>{}</td><td><code>{}</code></td><td>{}</td></tr>",
                f.severity,
                esc(&f.code),
                esc(&f.message)
            );
        }
        b.push_str("</table>");
    }
    let calls = s.calls();
    if !calls.is_empty() {
        b.push_str("<h4>Requests sent to services</h4><table class=\"calls\"><tr><th>Request</th><th>Run</th></tr>");
        for (run, call) in calls {
            let _ = write!(b, "<tr><td><code>{}</code></td><td>{}</td></tr>", esc(call), esc(run));
        }
        b.push_str("</table>");
    }
    if let Some((passed, summary)) = s.verify() {
        let _ = write!(
            b,
            "<h4>Verify</h4><p class=\"verify\"><span class=\"{}\">{}</span> <span class=\"quoted\">the capsule's summary:</span> “{}”</p>",
            if passed { "pass" } else { "fail" },
            if passed { "passed" } else { "FAILED" },
            esc(summary)
        );
    }
    let refusals = s.refusals();
    if !refusals.is_empty() {
        b.push_str("<h4>Refusals</h4><table class=\"refusals\"><tr><th>Stage</th><th>Reason</th><th>Detail</th><th>Run</th></tr>");
        for (run, stage, code, detail) in refusals {
            let _ = write!(
                b,
                "<tr><td>{}</td><td><code>{}</code></td><td>{}</td><td>{}</td></tr>",
                esc(stage),
                esc(code),
                esc(detail),
                esc(run)
            );
        }
        b.push_str("</table>");
    }
}

fn runs(b: &mut String, r: &Report<'_>) {
    b.push_str(
        "<h2>Runs</h2><table id=\"runs\"><tr><th>Run</th><th>Proposal</th><th>Started</th><th>Capsule</th><th>Outcome</th><th>Records</th><th>Runner build</th></tr>",
    );
    for s in &r.stories {
        for run in &s.runs {
            run_row(b, run, &s.view.id);
        }
    }
    b.push_str("</table>");
}

fn run_row(b: &mut String, r: &RunSummary, proposal: &str) {
    let _ = write!(
        b,
        "<tr class=\"run\" id=\"run-{0}\" data-run=\"{0}\" data-outcome=\"{1}\" data-tier=\"{2}\" data-break-glass=\"{3}\">\
<td>{0}</td><td><a href=\"#{4}\">{4}</a></td><td>{5}</td><td>{6}</td><td>{1}</td><td>{7}..{8}</td>\
<td class=\"build\">{9}</td></tr>",
        esc(&r.run),
        super::text::outcome_name(r.outcome),
        r.tier.map(|t| t.to_string()).unwrap_or_default(),
        r.break_glass,
        esc(proposal),
        esc(&r.started),
        esc(r.capsule.as_deref().unwrap_or("-")),
        r.first_seq,
        r.last_seq,
        r.build.as_ref().map_or_else(|| "unknown".to_owned(), |b| esc(&b.short()))
    );
}

/// The HTML page for a bundle that failed verification: the banner and the
/// failure, and nothing from the bundle.
pub fn html_failed(f: &Failure) -> String {
    html_failed_with(f, &Options::now())
}

/// As [`html_failed`], with options (the generation time).
pub fn html_failed_with(f: &Failure, opts: &Options) -> String {
    let body = format!(
        "<div id=\"banner\" class=\"failed\">FAILED<small id=\"failure\">{}</small>\
<small>generated at {} by edge-verify {VERIFIER_VERSION}</small></div><main><p>This bundle did not verify. \
Do not rely on anything it contains; ask the runner's operator for a fresh export and verify it again.</p></main>",
        esc(&f.to_string()),
        opts.generated_at
    );
    page("Evidence report: FAILED", &body, opts)
}
