//! How a proposal reads on a terminal: the diff as previewed, the
//! approvals and whether each counted, what is still needed. Every piece of
//! file content and capsule or client text is neutralised (`text::line`):
//! a diff line cannot move the cursor or print a line that looks like the
//! runner's.

use std::io::Write;

use anyhow::Result;
use edge_core::preview::{DiffLine, FilePreview, Shown};
use edge_core::text::{Untrusted as U, line};
use serde_json::Value;

use crate::service::detail::{CallView, RequestView};

/// One file's header and diff lines.
pub fn print_file(f: &FilePreview, lines: &[DiffLine], out: &mut dyn Write) -> Result<()> {
    let (added, removed) = edge_core::preview::changed_lines(lines);
    writeln!(out, "  {} {}/{}  (preview: {}; +{added} -{removed})", f.action, f.mount, U(f.path.as_str()), f.preview)?;
    for l in lines {
        match l {
            DiffLine::Hunk(h) => writeln!(out, "    {}", line(h))?,
            DiffLine::Context(t) => writeln!(out, "     {}", line(t))?,
            DiffLine::Added(t) => writeln!(out, "    +{}", line(t))?,
            DiffLine::Removed(t) => writeln!(out, "    -{}", line(t))?,
            DiffLine::Note(n) => writeln!(out, "    [{}]", line(n))?,
        }
    }
    Ok(())
}

/// Every file of a preview.
pub fn print_shown(shown: &Shown, out: &mut dyn Write) -> Result<()> {
    writeln!(out, "diff         what the staged result changes, checked against the plan's digests:")?;
    for f in &shown.preview.files {
        print_file(f, &shown.render(f), out)?;
    }
    Ok(())
}

fn s(v: &Value) -> String {
    line(v.as_str().unwrap_or("-")).into_owned()
}

fn when(secs: u64) -> String {
    i64::try_from(secs)
        .ok()
        .and_then(|s| jiff::Timestamp::from_second(s).ok())
        .map_or_else(|| secs.to_string(), |t| t.to_string())
}

fn age(secs: u64) -> String {
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

/// A proposal's detail (`GET /v1/proposals/{id}`), for people.
pub fn print_detail(v: &Value, now: u64, out: &mut dyn Write) -> Result<()> {
    let age_secs = v["age_secs"].as_u64().unwrap_or(0);
    writeln!(out, "proposal     {} — {} ({} old)", s(&v["id"]), s(&v["state"]), age(age_secs))?;
    if let Some(e) = v["expires_at"].as_u64() {
        writeln!(out, "expires      {} (in {})", when(e), age(e.saturating_sub(now)))?;
    }
    writeln!(out, "capsule      {} {}", s(&v["name"]), s(&v["capsule"]))?;
    if v["submitted_by"].is_string() {
        writeln!(out, "submitted by {}", s(&v["submitted_by"]))?;
    }
    if let Some(p) = v["provenance"].as_object() {
        for (k, val) in p {
            writeln!(out, "provenance   {}: \"{}\" (the agent's words)", U(k), s(val))?;
        }
    }
    if let Ok(d) = serde_json::from_value::<edge_core::policy::Decision>(v["decision"].clone()) {
        crate::cli::policy::print_decision(&d, out)?;
    }
    if v["summary"].is_string() {
        writeln!(out, "plan         {} — \"{}\" (the capsule's summary)", s(&v["plan"]), s(&v["summary"]))?;
    }
    let files = v["files"].as_array().cloned().unwrap_or_default();
    if !files.is_empty() {
        writeln!(out, "diff")?;
    }
    for f in &files {
        let (Ok(file), Ok(lines)) = (
            serde_json::from_value::<FilePreview>(strip_lines(f)),
            serde_json::from_value::<Vec<DiffLine>>(f["lines"].clone()),
        ) else {
            writeln!(out, "  (a file preview this tool cannot read)")?;
            continue;
        };
        print_file(&file, &lines, out)?;
    }
    if let Ok(calls) = serde_json::from_value::<Vec<CallView>>(v["calls"].clone()) {
        print_calls(&calls, out)?;
    }
    for f in v["findings"].as_array().into_iter().flatten() {
        writeln!(out, "finding      [{}] {}: {}", s(&f["severity"]), s(&f["code"]), s(&f["message"]))?;
    }
    if let Some(q) = v["quorum"].as_object() {
        let list = q["approvals"].as_array().cloned().unwrap_or_default();
        let counted = list.iter().filter(|a| a["counted"] == true).count();
        writeln!(out, "approvals    {counted} counted of {} received", list.len())?;
        for a in &list {
            let mark = if a["counted"] == true { "counted    " } else { "NOT counted" };
            let roles: Vec<String> = a["roles"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|r| line(r.as_str().unwrap_or("")).into_owned())
                .collect();
            let mut text = format!("  {mark} {} [{}]", s(&a["principal"]), roles.join(", "));
            if a["verdict"].is_string() {
                text.push_str(&format!(" {}", s(&a["verdict"])));
            }
            if a["key"].is_string() {
                text.push_str(&format!(" key {}", s(&a["key"])));
            }
            if let Some(t) = a["issued_at"].as_u64() {
                text.push_str(&format!(" at {}", when(t)));
            }
            writeln!(out, "{text}")?;
            if a["comment"].is_string() {
                writeln!(out, "               comment \"{}\"", s(&a["comment"]))?;
            }
            if a["why_not"].is_string() {
                writeln!(out, "               why not: {}", s(&a["why_not"]))?;
            }
        }
        writeln!(out, "still needed {}", s(&q["needed"]))?;
    }
    if let Some(vf) = v["verify"].as_object() {
        let passed = if vf["passed"] == true { "passed" } else { "FAILED" };
        writeln!(out, "verify       {passed} — \"{}\" (the capsule's words)", s(&vf["summary"]))?;
    }
    if v["refusal"].is_string() {
        writeln!(out, "refusal      {}", s(&v["refusal"]))?;
    }
    Ok(())
}

fn strip_lines(f: &Value) -> Value {
    let mut f = f.clone();
    if let Some(o) = f.as_object_mut() {
        o.remove("lines");
    }
    f
}

/// The plan's calls, for people: each exact request (its body as text when
/// it is text, neutralised) and the request that undoes it.
pub fn print_calls(calls: &[CallView], out: &mut dyn Write) -> Result<()> {
    if calls.is_empty() {
        return Ok(());
    }
    writeln!(
        out,
        "calls        {} request(s), sent in this order only after approval, each checked before it leaves; \
         if verify fails the runner sends each undo, last first",
        calls.len()
    )?;
    let request = |label: &str, r: &RequestView, out: &mut dyn Write| -> Result<()> {
        let ct = r.content_type.as_deref().map(|c| format!(" ({})", U(c))).unwrap_or_default();
        writeln!(out, "  {label:<5} {}{ct}", U(&r.line))?;
        if let Some(d) = &r.body_digest {
            let how = r.body_shown.as_deref().unwrap_or("digest-only");
            let size = r.body_bytes.map(|n| format!(", {n} bytes")).unwrap_or_default();
            writeln!(out, "        body {d} ({}{size})", U(how))?;
            match (&r.body_text, how) {
                (Some(text), _) => {
                    const LINES: usize = 40;
                    const WIDTH: usize = 200;
                    let mut cut = text.lines().count() > LINES;
                    for l in text.lines().take(LINES) {
                        cut |= l.chars().count() > WIDTH;
                        writeln!(out, "        | {}", U(&l.chars().take(WIDTH).collect::<String>()))?;
                    }
                    if cut || r.body_bytes.is_some_and(|n| n > text.len()) {
                        writeln!(
                            out,
                            "        | … (cut here: the proposal document holds the whole body, under its digest in `bodies`)"
                        )?;
                    }
                }
                (None, "digest-only") => {
                    writeln!(out, "        | (content not shown: the endpoint is previewed digest-only)")?
                }
                (None, _) => writeln!(out, "        | (binary content)")?,
            }
        }
        Ok(())
    };
    for (i, c) in calls.iter().enumerate() {
        request(&format!("{}.", i + 1), &c.request, out)?;
        writeln!(out, "        why: {}", U(&c.why))?;
        match &c.undo {
            Some(u) => request("undo", u, out)?,
            None => writeln!(out, "  undo  none (a read)")?,
        }
    }
    Ok(())
}
