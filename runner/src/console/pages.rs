//! The console's pages, rendered on the server. Every text that came from a
//! capsule, an agent, an approver or the operator's graph goes through
//! [`esc`] (controls, escape sequences and bidi overrides neutralised, then
//! HTML-escaped); file content through [`esc_content`]. Pages carry no
//! inline script or style: the Content-Security-Policy allows only the
//! console's own `/static/` files.

use std::fmt::Write as _;

use edge_core::lifecycle::{ProposalView, State};
use edge_core::preview::DiffLine;
use edge_evidence::report::{esc, esc_content};

use crate::pipeline::{QuorumStatus, QuorumView};
use crate::service::detail::{FileDiff, ProposalDetail};

/// Who is looking, for the page header and the forms.
pub(crate) struct Viewer<'a> {
    pub principal: &'a str,
    pub csrf: &'a str,
    pub runner: &'a str,
}

/// A whole page: header, `body`, and the console's script and style.
pub(crate) fn page(title: &str, viewer: Option<&Viewer<'_>>, body: &str) -> String {
    let mut b = String::with_capacity(body.len() + 2048);
    let _ = write!(
        b,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<title>{} · Edge Runner</title><link rel=\"stylesheet\" href=\"/static/console.css\">\
<script src=\"/static/console.js\" defer></script>",
        esc(title)
    );
    if let Some(v) = viewer {
        let _ = write!(b, "<meta name=\"csrf\" content=\"{}\">", esc(v.csrf));
    }
    b.push_str("</head><body><a class=\"skip\" href=\"#main\">Skip to content</a><header><a href=\"/\" class=\"brand\">Edge Runner approvals</a>");
    if let Some(v) = viewer {
        let _ = write!(
            b,
            "<span class=\"runner\">runner <code>{}</code></span><span class=\"who\">Signed in as <strong>{}</strong></span>\
<button type=\"button\" id=\"signout\">Sign out</button>",
            esc(v.runner),
            esc(v.principal)
        );
    }
    let _ = writeln!(b, "</header><main id=\"main\" tabindex=\"-1\">{body}</main></body></html>");
    b
}

/// A page that says what went wrong and what to do next.
pub(crate) fn message(title: &str, text: &str, next: &str) -> String {
    page(
        title,
        None,
        &format!("<h1>{}</h1><p>{}</p><p><a href=\"{}\">Continue</a></p>", esc(title), esc(text), esc(next)),
    )
}

/// Sign in with a passkey (the name says whose passkeys to offer).
pub(crate) fn signin(note: Option<&str>) -> String {
    let mut b = String::from("<h1>Sign in</h1>");
    if let Some(n) = note {
        let _ = write!(b, "<p class=\"notice\" role=\"status\">{}</p>", esc(n));
    }
    b.push_str(
        "<form id=\"signin\" class=\"card\"><label for=\"principal\">Your approver name (as your operator registered it)</label>\
<input id=\"principal\" name=\"principal\" autocomplete=\"username webauthn\" required autofocus>\
<button type=\"submit\">Sign in with your passkey</button></form>\
<p id=\"status\" role=\"alert\" class=\"status\"></p>\
<p class=\"hint\">No passkey yet? Your operator gives you an enrollment link (<code>edge-runner approvers enroll</code>).</p>",
    );
    page("Sign in", None, &b)
}

/// Enroll a passkey with a one-time code (from the link's fragment or typed).
pub(crate) fn enroll() -> String {
    page(
        "Enroll a passkey",
        None,
        "<h1>Enroll a passkey</h1><p>Your operator gave you a one-time enrollment link or code. \
Enrolling registers a passkey on this device (or your security key) under your approver name; \
you will use it to sign in and to sign approvals.</p>\
<form id=\"enroll\" class=\"card\"><label for=\"code\">Enrollment code</label>\
<input id=\"code\" name=\"code\" autocomplete=\"one-time-code\" required spellcheck=\"false\">\
<button type=\"submit\">Create my passkey</button></form><p id=\"status\" role=\"alert\" class=\"status\"></p>",
    )
}

fn state_badge(s: State) -> String {
    format!("<span class=\"state s-{0}\">{0}</span>", s.name())
}

fn capsule_name(v: &ProposalView) -> String {
    esc(v.name.as_deref().unwrap_or("(capsule not admitted)"))
}

fn time(secs: u64) -> String {
    jiff::Timestamp::from_second(i64::try_from(secs).unwrap_or(i64::MAX))
        .map(|t| t.strftime("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_else(|_| secs.to_string())
}

fn duration(secs: u64) -> String {
    match secs {
        s if s < 120 => format!("{s} s"),
        s if s < 7200 => format!("{} min", s / 60),
        s if s < 172_800 => format!("{} h", s / 3600),
        s => format!("{} days", s / 86_400),
    }
}

/// The proposals waiting for this approver, and (below) the others waiting.
pub(crate) fn list(viewer: &Viewer<'_>, mine: &[ProposalView], others: &[ProposalView]) -> String {
    let mut b = String::from("<h1>Waiting for your approval</h1>");
    table(&mut b, mine, "Nothing waits for you.");
    if !others.is_empty() {
        b.push_str("<h2>Waiting for others</h2><p class=\"hint\">You cannot count toward these (your roles, or you proposed them).</p>");
        table(&mut b, others, "");
    }
    page("Waiting for approval", Some(viewer), &b)
}

fn table(b: &mut String, views: &[ProposalView], empty: &str) {
    if views.is_empty() {
        let _ = write!(b, "<p>{}</p>", esc(empty));
        return;
    }
    b.push_str("<table class=\"list\"><thead><tr><th scope=\"col\">Proposal</th><th scope=\"col\">Capsule</th><th scope=\"col\">Tier</th><th scope=\"col\">Approvals</th><th scope=\"col\">Submitted</th><th scope=\"col\">By</th></tr></thead><tbody>");
    for v in views {
        let _ = write!(
            b,
            "<tr><td><a href=\"/proposals/{id}\">{id}</a></td><td>{}</td><td>{}</td><td>{} of {}</td><td>{}</td><td>{}</td></tr>",
            capsule_name(v),
            v.tier.map_or_else(|| "?".into(), |t| t.to_string()),
            v.approvals.len(),
            v.approvals_required,
            esc(&v.submitted_at),
            esc(v.submitted_by.as_deref().unwrap_or("?")),
            id = esc(&v.id),
        );
    }
    b.push_str("</tbody></table>");
}

/// Whether the viewer may decide this proposal, and if not why.
pub(crate) enum Act {
    Decide,
    Not(String),
}

fn row(b: &mut String, k: &str, v: &str) {
    let _ = write!(b, "<tr><th scope=\"row\">{k}</th><td>{v}</td></tr>");
}

/// The proposal page: everything the approver authorises, then the form.
pub(crate) fn proposal(
    viewer: &Viewer<'_>,
    d: &ProposalDetail,
    blast_svg: Option<&str>,
    act: &Act,
    now: u64,
) -> String {
    let v = &d.view;
    let mut b = String::with_capacity(16 * 1024 + d.files.iter().map(|f| f.lines.len() * 64).sum::<usize>());
    let _ = write!(
        b,
        "<p><a href=\"/\">← Waiting for approval</a></p><h1>{} {}</h1>",
        capsule_name(v),
        state_badge(v.state)
    );
    b.push_str("<section aria-labelledby=\"h-facts\"><h2 id=\"h-facts\">Proposal</h2><table class=\"facts\">");
    row(&mut b, "Proposal", &format!("<code>{}</code>", esc(&v.id)));
    row(
        &mut b,
        "Submitted",
        &format!(
            "{} ({} ago) by <code>{}</code>",
            esc(&v.submitted_at),
            duration(d.age_secs),
            esc(v.submitted_by.as_deref().unwrap_or("?"))
        ),
    );
    if let Some(e) = d.expires_at {
        let left = if e > now { format!("in {}", duration(e - now)) } else { "expired".into() };
        row(&mut b, "Expires", &format!("<time>{}</time> ({left}): after that it cannot be approved", time(e)));
    }
    if let Some(c) = v.capsule {
        row(&mut b, "Capsule digest", &format!("<code>{c}</code>"));
    }
    if let Some(p) = v.plan {
        row(&mut b, "Plan digest", &format!("<code>{p}</code>"));
    }
    b.push_str("</table></section>");
    provenance(&mut b, d);
    decision(&mut b, v, blast_svg);
    findings(&mut b, d);
    change(&mut b, d);
    approvals(&mut b, d.quorum.as_ref(), v);
    actions(&mut b, v, act);
    page(&format!("Proposal {}", v.id), Some(viewer), &b)
}

fn provenance(b: &mut String, d: &ProposalDetail) {
    let Some(p) = &d.provenance else { return };
    b.push_str("<section aria-labelledby=\"h-prov\"><h2 id=\"h-prov\">Provenance <small>(as the agent states it)</small></h2><table class=\"facts\">");
    for (k, val) in [("Agent", &p.agent), ("Model", &p.model), ("Ticket", &p.ticket), ("Source", &p.source_ref)] {
        row(b, k, &val.as_deref().map_or_else(|| "<span class=\"none\">not stated</span>".into(), esc));
    }
    row(
        b,
        "Rationale",
        &p.rationale
            .as_deref()
            .map_or_else(|| "<span class=\"none\">not stated</span>".into(), |r| format!("<q>{}</q>", esc(r))),
    );
    b.push_str("</table></section>");
}

fn decision(b: &mut String, v: &ProposalView, blast_svg: Option<&str>) {
    let Some(d) = &v.decision else { return };
    let need = match &d.requirement {
        Some(q) if q.approvals > 0 => format!(
            "{} approval(s){}{}",
            q.approvals,
            if q.roles.is_empty() { String::new() } else { format!(" from {}", q.roles.join(", ")) },
            if q.distinct { ", distinct people and keys" } else { "" }
        ),
        _ => "none".into(),
    };
    let _ = write!(
        b,
        "<section aria-labelledby=\"h-dec\"><h2 id=\"h-dec\">Decision: tier {}</h2><p>Required: {}</p>\
<table class=\"reasons\"><thead><tr><th scope=\"col\">Rule</th><th scope=\"col\">Why</th></tr></thead><tbody>",
        d.tier,
        esc(&need)
    );
    for r in &d.reasons {
        let _ = write!(b, "<tr><td><code>{}</code></td><td>{}</td></tr>", esc(&r.rule), esc(&r.text));
    }
    b.push_str("</tbody></table>");
    if let Some(dv) = &d.derivation {
        b.push_str("<h3>Blast radius <small>(derived from the system graph, not from the agent)</small></h3><div class=\"blast\"><table class=\"facts\">");
        edge_evidence::report::blast_rows(b, dv);
        b.push_str("</table>");
        match blast_svg {
            Some(svg) => b.push_str(svg),
            None => {
                b.push_str("<p class=\"hint\">The graph this decision was made over is not available: no picture.</p>")
            }
        }
        b.push_str("</div>");
    }
    b.push_str("</section>");
}

fn findings(b: &mut String, d: &ProposalDetail) {
    if d.findings.is_empty() {
        return;
    }
    b.push_str("<section aria-labelledby=\"h-find\"><h2 id=\"h-find\">Findings</h2><table class=\"list\"><thead><tr><th scope=\"col\">Severity</th><th scope=\"col\">Code</th><th scope=\"col\">Finding</th></tr></thead><tbody>");
    for f in &d.findings {
        let _ = write!(
            b,
            "<tr class=\"sev-{0}\"><td>{0}</td><td><code>{1}</code></td><td>{2}{3}</td></tr>",
            f.severity,
            esc(&f.code),
            esc(&f.message),
            f.subject.as_deref().map(|s| format!(" <code>{}</code>", esc(s))).unwrap_or_default()
        );
    }
    b.push_str("</tbody></table></section>");
}

fn change(b: &mut String, d: &ProposalDetail) {
    b.push_str("<section aria-labelledby=\"h-change\"><h2 id=\"h-change\">What changes</h2>");
    if let Some(s) = &d.summary {
        let _ = write!(b, "<p><span class=\"hint\">The capsule's own summary:</span> <q>{}</q></p>", esc(s));
    }
    calls(b, d);
    if d.files.is_empty() && d.calls.is_empty() {
        b.push_str("<p>No file changes.</p>");
    } else {
        let _ = write!(
            b,
            "<p>{} file(s), as the runner computed them by running the capsule against staged copies (not the capsule's description):</p>",
            d.files.len()
        );
    }
    for f in &d.files {
        file(b, f);
    }
    b.push_str("</section>");
}

/// The plan's calls: each exact request as it will leave, in order, and
/// the request the runner sends to undo it.
fn calls(b: &mut String, d: &ProposalDetail) {
    if d.calls.is_empty() {
        return;
    }
    let _ = write!(
        b,
        "<p>{} request(s) to services, sent in this order only after approval; the runner checks each one \
against this plan before it leaves and refuses anything else. If verification fails it sends each \
<em>undo</em>, last first.</p><ol class=\"calls\">",
        d.calls.len()
    );
    let request = |b: &mut String, label: &str, r: &crate::service::detail::RequestView| {
        let _ = write!(
            b,
            "<div class=\"req\"><span class=\"hint\">{label}</span> <code>{}</code>{}",
            esc(&r.line),
            r.content_type.as_deref().map(|c| format!(" <small>({})</small>", esc(c))).unwrap_or_default()
        );
        if let Some(dg) = &r.body_digest {
            let how = r.body_shown.as_deref().unwrap_or("digest-only");
            let size = r.body_bytes.map(|n| format!(", {n} bytes")).unwrap_or_default();
            let _ = write!(
                b,
                "<div class=\"hint\">body <code>{dg}</code>{size} <span class=\"shown shown-{0}\">{0}</span></div>",
                esc(how)
            );
            match (&r.body_text, how) {
                (Some(t), _) => {
                    let lines: Vec<String> = t.lines().map(esc_content).collect();
                    let _ = write!(b, "<pre class=\"body\">{}</pre>", lines.join("\n"));
                    if r.body_bytes.is_some_and(|n| n > t.len()) {
                        b.push_str("<p class=\"hint\">(cut here: the whole body is what the digest names)</p>");
                    }
                }
                (None, "digest-only") => b.push_str("<p class=\"hint\">(content not shown: digest only)</p>"),
                (None, _) => b.push_str("<p class=\"hint\">(binary content)</p>"),
            }
        }
        b.push_str("</div>");
    };
    for c in &d.calls {
        b.push_str("<li class=\"call\">");
        request(b, "request", &c.request);
        let _ = write!(b, "<p><span class=\"hint\">why (the capsule's words):</span> <q>{}</q></p>", esc(&c.why));
        match &c.undo {
            Some(u) => request(b, "undo", u),
            None => b.push_str("<p class=\"hint\">undo: none (a read)</p>"),
        }
        b.push_str("</li>");
    }
    b.push_str("</ol>");
}

fn file(b: &mut String, f: &FileDiff) {
    let p = &f.file;
    let _ = write!(
        b,
        "<div class=\"file\"><div class=\"fhead\"><strong>{}</strong> {}/{} <span class=\"shown shown-{}\">{}</span></div><div class=\"diff\" role=\"region\" aria-label=\"diff of {1}/{2}\">",
        p.action,
        esc(&p.mount),
        esc(p.path.as_str()),
        p.preview.name(),
        match p.preview {
            edge_core::preview::PreviewMode::Full => "content shown",
            edge_core::preview::PreviewMode::Redacted => "secrets masked",
            edge_core::preview::PreviewMode::DigestOnly => "digests only",
        }
    );
    for l in &f.lines {
        let _ = match l {
            DiffLine::Hunk(t) => write!(b, "<div class=\"dl hunk\">{}</div>", esc(t)),
            DiffLine::Context(t) => write!(b, "<div class=\"dl ctx\"> {}</div>", esc_content(t)),
            DiffLine::Added(t) => {
                write!(b, "<div class=\"dl add\"><span class=\"sr\">added: </span>+{}</div>", esc_content(t))
            }
            DiffLine::Removed(t) => {
                write!(b, "<div class=\"dl del\"><span class=\"sr\">removed: </span>-{}</div>", esc_content(t))
            }
            DiffLine::Note(t) => write!(b, "<div class=\"dl note\">{}</div>", esc(t)),
        };
    }
    b.push_str("</div></div>");
}

fn approvals(b: &mut String, q: Option<&QuorumView>, v: &ProposalView) {
    b.push_str("<section aria-labelledby=\"h-appr\"><h2 id=\"h-appr\">Approvals</h2>");
    let Some(q) = q else {
        let _ =
            write!(b, "<p>{} required; where they stand cannot be said right now.</p></section>", v.approvals_required);
        return;
    };
    let status = match &q.status {
        QuorumStatus::Pending { count, required, .. } => format!("{count} of {required} counted"),
        QuorumStatus::Met => "quorum met".into(),
        QuorumStatus::Vetoed { by } => format!("vetoed by {}", esc(by)),
    };
    let _ = write!(b, "<p><strong>{status}</strong>. Still needed: {}.</p>", esc(&q.needed));
    if !q.approvals.is_empty() {
        b.push_str("<table class=\"list\"><thead><tr><th scope=\"col\">Who</th><th scope=\"col\">Roles</th><th scope=\"col\">Decision</th><th scope=\"col\">Key</th><th scope=\"col\">Counted</th><th scope=\"col\">Comment</th></tr></thead><tbody>");
        for a in &q.approvals {
            let _ = write!(
                b,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td><code>{}</code></td><td class=\"{}\">{}</td><td>{}</td></tr>",
                esc(&a.principal),
                esc(&a.roles.join(", ")),
                esc(a.verdict.as_deref().unwrap_or("?")),
                esc(a.key.as_deref().unwrap_or("")),
                if a.counted { "yes" } else { "no" },
                if a.counted {
                    "yes".to_owned()
                } else {
                    format!("no: {}", esc(a.why_not.as_deref().unwrap_or("not yet counted")))
                },
                a.comment.as_deref().map(|c| format!("<q>{}</q>", esc(c))).unwrap_or_default()
            );
        }
        b.push_str("</tbody></table>");
    }
    b.push_str("</section>");
}

fn actions(b: &mut String, v: &ProposalView, act: &Act) {
    b.push_str("<section aria-labelledby=\"h-act\"><h2 id=\"h-act\">Your decision</h2>");
    match act {
        Act::Not(why) => {
            let _ = write!(b, "<p>{}</p>", esc(why));
        }
        Act::Decide => {
            let _ = write!(
                b,
                "<form id=\"decide\" class=\"card\" data-proposal=\"{}\"><p>Approving signs, with your passkey, a statement bound to exactly this proposal, capsule, plan and policy; \
rejecting vetoes it. Your user verification (PIN or biometric) is required.</p>\
<label for=\"comment\">Comment (recorded with your decision)</label><textarea id=\"comment\" name=\"comment\" rows=\"3\" maxlength=\"2000\"></textarea>\
<div class=\"buttons\"><button type=\"submit\" name=\"decision\" value=\"approve\" class=\"approve\">Approve</button>\
<button type=\"submit\" name=\"decision\" value=\"reject\" class=\"reject\">Reject</button></div></form>\
<p id=\"status\" role=\"alert\" class=\"status\"></p>",
                esc(&v.id)
            );
        }
    }
    b.push_str("</section>");
}
