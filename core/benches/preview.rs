//! Preview benchmark: `cargo bench -p edge-core --bench preview`.
//!
//! A 2,000-line config file of which 1,000 lines change (every other line):
//! describing both sides (`full` and `redacted`), bundling them for an
//! approver's tool, checking them against the plan's digests
//! (`Shown::check`, what `approve` does before showing anything), and
//! rendering the unified diff — the work of the proposal view and of
//! `approve` for a 1,000-line diff. Reports medians.

use std::time::{Duration, Instant};

use edge_core::Sha256Digest;
use edge_core::paths::MountPath;
use edge_core::plan::{Action, Change, Plan};
use edge_core::preview::{self, FilePreview, PREVIEW_SCHEMA, Patterns, Preview, PreviewMode, Redactor, Shown};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let iters: usize = std::env::var("BENCH_ITERS").ok().and_then(|s| s.parse().ok()).unwrap_or(200);
    let mut before = String::new();
    let mut after = String::new();
    for i in 0..2_000 {
        let key = if i % 100 == 7 { format!("password_{i}") } else { format!("key_{i}") };
        before.push_str(&format!("{key} = value-{i}\n"));
        if i % 2 == 0 {
            after.push_str(&format!("{key} = changed-{i}\n"));
        } else {
            after.push_str(&format!("{key} = value-{i}\n"));
        }
    }
    let (before, after) = (before.into_bytes(), after.into_bytes());
    let patterns = Patterns::defaults();
    let plan = Plan {
        summary: "bench".into(),
        changes: vec![Change {
            mount: "config".into(),
            path: MountPath::new("big.conf").unwrap(),
            action: Action::Modify,
            digest_before: Some(Sha256Digest::of(&before)),
            digest_after: Some(Sha256Digest::of(&after)),
            mode: None,
            why: "bench".into(),
        }],
        findings: vec![],
        facts: vec![],
        calls: vec![],
    };
    let plan_digest = Sha256Digest::of(&edge_core::canonical::to_canonical_vec(&plan).unwrap());
    for mode in [PreviewMode::Full, PreviewMode::Redacted] {
        let (mut describe, mut check, mut render) = (Vec::new(), Vec::new(), Vec::new());
        let mut changed = (0, 0);
        for _ in 0..iters {
            let t = Instant::now();
            let r = Redactor::new(&patterns);
            let (b, bc, bm) = preview::describe(mode, &before, &r);
            let (a, ac, am) = preview::describe(mode, &after, &r);
            let file = FilePreview {
                mount: "config".into(),
                path: MountPath::new("big.conf").unwrap(),
                action: Action::Modify,
                preview: mode,
                before: Some(b),
                after: Some(a),
                mode_before: Some(0o644),
                mode_after: Some(0o644),
                redacted_lines: bm + am,
            };
            let contents: Vec<Vec<u8>> = [bc, ac].into_iter().flatten().collect();
            let p = Preview { schema: PREVIEW_SCHEMA.into(), plan: plan_digest, files: vec![file] };
            let shown = Shown::new(p, |d| contents.iter().find(|c| Sha256Digest::of(c) == *d).cloned());
            describe.push(t.elapsed());
            let t = Instant::now();
            if mode == PreviewMode::Full {
                shown.check(&plan, &plan_digest).unwrap();
            }
            check.push(t.elapsed());
            let t = Instant::now();
            let lines = shown.render(&shown.preview.files[0]);
            render.push(t.elapsed());
            changed = preview::changed_lines(&lines);
        }
        println!(
            "{mode}: describe {:.2} ms, check against the plan {:.2} ms, render {:.2} ms (+{} -{} lines)",
            median(describe).as_secs_f64() * 1e3,
            median(check).as_secs_f64() * 1e3,
            median(render).as_secs_f64() * 1e3,
            changed.0,
            changed.1
        );
    }
}
