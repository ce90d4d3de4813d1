//! Previews end to end: what approvers see is the staged result's real
//! diff, committed byte for byte once approved; secrets in redacted and
//! digest-only mounts reach no output, answer, evidence or report.

use crate::harness::{Env, Run};
use crate::hostile::assert_refused;

const ORIGINAL: &str = "# App config\n[server]\nhost = \"0.0.0.0\"\nmax_connections = 100 # tuned\n\
                        password = \"s3cr3t-HUNTER-2\"\n\n[log]\nlevel = \"info\"\n";
const SECRET: &str = "s3cr3t-HUNTER-2";

/// A runner whose `config` mount is payments config (tier 2: two approvals,
/// sre + payments-owner), the mount's preview settings given by `mount_extra`.
fn setup(mount_extra: &str, runner_extra: &str) -> (Env, std::path::PathBuf) {
    let env = Env::new();
    env.write_policy_config("log-volume", &[("config", "payments-config", true)]);
    let text = std::fs::read_to_string(env.path("runner.toml")).unwrap();
    let text = text
        .replace("[mounts.config]\n", &format!("[mounts.config]\n{mount_extra}"))
        .replace("[runner]\n", &format!("[runner]\n{runner_extra}"));
    std::fs::write(env.path("runner.toml"), text).unwrap();
    env.write_approvers(&[("alice", &["sre"]), ("carol", &["payments-owner"])], "");
    std::fs::write(env.path("config/app.toml"), ORIGINAL).unwrap();
    let capsule = env.config_drift_capsule("drift", Some("agent"));
    (env, capsule)
}

fn propose(env: &Env, capsule: &std::path::Path) -> (Run, String, String) {
    let run = env.exec(capsule);
    assert_eq!(run.outcome(), "awaiting-approval", "{:#}", run.report);
    let doc = run.report["document"].as_str().unwrap().to_owned();
    let id = run.report["id"].as_str().unwrap().to_owned();
    (run, doc, id)
}

/// Sign as `who`; returns the approval file and what the approver saw.
fn approve(env: &Env, doc: &str, who: &str) -> (String, String) {
    let out = format!("{who}.approval.json");
    let shown = env
        .cli(&[
            "approve",
            doc,
            "--principal",
            &format!("{who}@bank.example"),
            "--ssh-key",
            &format!("keys/{who}"),
            "--yes",
            "--comment",
            "checked the diff",
            "-o",
            &out,
        ])
        .success()
        .stdout();
    (out, shown)
}

fn lines_of(report: &serde_json::Value) -> Vec<(String, String)> {
    report["files"][0]["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| (l["kind"].as_str().unwrap().to_owned(), l["text"].as_str().unwrap_or("").to_owned()))
        .collect()
}

#[test]
fn a_tier_2_config_change_is_previewed_then_committed_byte_for_byte_and_checked_offline() {
    let (env, capsule) = setup("preview = \"full\"\n", "");
    let (run, doc, id) = propose(&env, &capsule);
    // The agent's answer and the approver both see the changed line.
    let lines = lines_of(&run.report);
    assert!(lines.contains(&("removed".into(), "max_connections = 100 # tuned".into())), "{lines:?}");
    assert!(lines.contains(&("added".into(), "max_connections = 512 # tuned".into())), "{lines:?}");
    let (a, shown) = approve(&env, &doc, "alice");
    assert!(shown.contains("-max_connections = 100 # tuned"), "{shown}");
    assert!(shown.contains("+max_connections = 512 # tuned"), "{shown}");
    assert!(shown.contains("preview: full"), "{shown}");
    let (b, _) = approve(&env, &doc, "carol");
    // The staged result is kept while the proposal waits; nothing live changed.
    let kept = std::fs::read(env.path(&format!("state/previews/{id}/config/app.toml"))).unwrap();
    assert_eq!(std::fs::read_to_string(env.path("config/app.toml")).unwrap(), ORIGINAL);

    let done = env.exec_with(&capsule, &[&a, &b]);
    assert_eq!(done.outcome(), "committed", "{:#}", done.report);
    assert_eq!(done.report["id"], id.as_str(), "one proposal id from submission to outcome");
    assert_eq!(std::fs::read(env.path("config/app.toml")).unwrap(), kept, "exactly the previewed bytes");
    let events = done.events();
    assert!(events.contains(&"resumed".to_owned()) && !events.contains(&"applied".to_owned()), "{events:?}");

    // Offline: the bundle carries the preview and its content, and verifies.
    env.cli(&["evidence", "export", "--config", "runner.toml", "-o", "full.bundle"]).success();
    let vkey = env.cli(&["evidence", "runner-key", "--config", "runner.toml"]).success().stdout();
    std::fs::write(env.path("runner.vkey"), &vkey).unwrap();
    env.cli(&["evidence", "verify", "full.bundle", "--key", "runner.vkey"]).success();
    let bundle = String::from_utf8_lossy(&std::fs::read(env.path("full.bundle")).unwrap()).into_owned();
    let after = String::from_utf8(kept).unwrap();
    assert!(after.contains("max_connections = 512"));
    let keys = edge_evidence::parse_keys(&vkey).unwrap();
    let v = edge_evidence::verify(&std::fs::read(env.path("full.bundle")).unwrap(), &keys, edge_evidence::Level::Full)
        .unwrap();
    let committed = v.runs.iter().find(|r| r.outcome == Some(edge_core::evidence::Outcome::Committed)).unwrap();
    assert!(committed.preview.is_some(), "the committed run names the preview it committed");
    assert!(!bundle.is_empty());
}

#[test]
fn a_redacted_mounts_secret_appears_in_no_output_answer_evidence_or_report() {
    // The default preview mode is `redacted`, with the default patterns.
    let (env, capsule) = setup("", "");
    let human = env.cli(&["exec", capsule.to_str().unwrap(), "--config", "runner.toml"]).stdout();
    let (run, doc, _) = propose(&env, &capsule);
    let (a, shown_a) = approve(&env, &doc, "alice");
    let (b, shown_b) = approve(&env, &doc, "carol");
    let done = env.exec_with(&capsule, &[&a, &b]);
    assert_eq!(done.outcome(), "committed", "{:#}", done.report);
    // The change itself is visible; the secret is masked, visibly.
    assert!(shown_a.contains("+max_connections = 512"), "{shown_a}");
    assert!(shown_a.contains("password = [redacted "), "{shown_a}");
    assert!(human.contains("password = [redacted "), "{human}");

    env.cli(&["evidence", "export", "--config", "runner.toml", "-o", "full.bundle"]).success();
    let vkey = env.cli(&["evidence", "runner-key", "--config", "runner.toml"]).success().stdout();
    std::fs::write(env.path("runner.vkey"), &vkey).unwrap();
    let report = env.cli(&["evidence", "report", "full.bundle", "--key", "runner.vkey"]).success().stdout();
    env.cli(&["evidence", "report", "full.bundle", "--key", "runner.vkey", "--html", "report.html"]).success();
    let evidence = env.cli(&["evidence", "show", "--config", "runner.toml", "--json"]).success().stdout();
    let json = env
        .cli(&[
            "evidence",
            "report",
            "full.bundle",
            "--key",
            "runner.vkey",
            "--json",
            "--tier",
            "2",
            "--state",
            "committed",
        ])
        .success()
        .stdout();
    let listed: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(listed["proposals_listed"], 1, "{listed:#}");
    assert_eq!(listed["proposals"][0]["state"], "committed", "{listed:#}");

    let mut places: Vec<(String, Vec<u8>)> = vec![
        ("exec output".into(), human.into_bytes()),
        ("exec --json".into(), run.report.to_string().into_bytes()),
        ("approver's view (alice)".into(), shown_a.into_bytes()),
        ("approver's view (carol)".into(), shown_b.into_bytes()),
        ("approved run --json".into(), done.report.to_string().into_bytes()),
        ("text report".into(), report.into_bytes()),
        ("evidence show".into(), evidence.into_bytes()),
        ("json report".into(), json.into_bytes()),
        ("bundle".into(), std::fs::read(env.path("full.bundle")).unwrap()),
        ("html report".into(), std::fs::read(env.path("report.html")).unwrap()),
    ];
    // Everything the runner keeps, except the live mount itself: the
    // evidence store, proposal documents and previews, journals.
    for f in walk_files(&env.path("state")) {
        places.push((f.display().to_string(), std::fs::read(&f).unwrap()));
    }
    for (what, bytes) in &places {
        assert!(!bytes.windows(SECRET.len()).any(|w| w == SECRET.as_bytes()), "the secret reached {what}");
    }
}

#[test]
fn a_digest_only_mount_keeps_no_content_and_loosening_it_later_shows_none() {
    let (env, capsule) = setup("preview = \"digest-only\"\n", "");
    let (run, doc, _) = propose(&env, &capsule);
    let lines = lines_of(&run.report);
    assert!(lines.iter().all(|(k, _)| k == "note"), "{lines:?}");
    assert!(lines.iter().any(|(_, t)| t.contains("digest-only")), "{lines:?}");
    assert!(lines.iter().any(|(_, t)| t.contains("8 lines")), "line counts are kept: {lines:?}");
    // The operator loosens the mount while the proposal waits: what it
    // recorded stays what approvers and reviewers get.
    let text = std::fs::read_to_string(env.path("runner.toml")).unwrap();
    std::fs::write(env.path("runner.toml"), text.replace("preview = \"digest-only\"", "preview = \"full\"")).unwrap();
    let (a, shown) = approve(&env, &doc, "alice");
    assert!(shown.contains("digest-only mount: content is not kept"), "{shown}");
    assert!(!shown.contains("+max_connections") && !shown.contains("-max_connections"), "{shown}");
    let (b, _) = approve(&env, &doc, "carol");
    let done = env.exec_with(&capsule, &[&a, &b]);
    assert_eq!(done.outcome(), "committed", "{:#}", done.report);
    env.cli(&["evidence", "export", "--config", "runner.toml", "-o", "full.bundle"]).success();
    let bundle = std::fs::read(env.path("full.bundle")).unwrap();
    // (The plan's own words name the key; the file's content appears nowhere.)
    for text in ["max_connections = 512 # tuned", "max_connections = 100 # tuned", SECRET] {
        assert!(!bundle.windows(text.len()).any(|w| w == text.as_bytes()), "the bundle holds `{text}`");
    }
}

#[test]
fn a_preview_larger_than_its_bound_refuses_the_proposal() {
    let (env, capsule) = setup("preview = \"full\"\n", "max_preview_mib = 0\n");
    let before = env.host_files();
    let run = env.exec(&capsule);
    assert_refused(&env, &run, "preview.too_large", &before);
    assert!(run.detail().contains("max_preview_mib") && run.detail().contains("digest-only"), "{}", run.detail());
}

fn walk_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            let kind = e.file_type().unwrap();
            if kind.is_dir() {
                // The kept staged result is the file to be committed: as
                // private as the live mount (docs/previews.md).
                if p.file_name().is_some_and(|n| n == "previews") {
                    continue;
                }
                pending.push(p);
            } else if kind.is_file() {
                out.push(p);
            }
        }
    }
    out
}

#[test]
fn a_kept_preview_altered_on_disk_is_never_committed() {
    let (env, capsule) = setup("preview = \"full\"\n", "");
    let (_, doc, id) = propose(&env, &capsule);
    let (a, _) = approve(&env, &doc, "alice");
    let (b, _) = approve(&env, &doc, "carol");
    // Someone with access to the state directory swaps the approved bytes.
    let kept = env.path(&format!("state/previews/{id}/config/app.toml"));
    std::fs::write(&kept, ORIGINAL.replace("max_connections = 100", "max_connections = 1")).unwrap();
    let done = env.exec_with(&capsule, &[&a, &b]);
    assert_ne!(done.outcome(), "committed", "{:#}", done.report);
    assert_eq!(std::fs::read_to_string(env.path("config/app.toml")).unwrap(), ORIGINAL, "the live file is untouched");
    assert!(done.detail().contains("changed after the diff was checked"), "{}", done.detail());
}

#[test]
fn an_approver_is_never_shown_a_preview_the_plan_does_not_back() {
    let (env, capsule) = setup("preview = \"full\"\n", "");
    let (_, doc, id) = propose(&env, &capsule);
    let shown_path = env.path(&format!("state/proposals/{id}.preview.json"));
    let original: serde_json::Value = serde_json::from_slice(&std::fs::read(&shown_path).unwrap()).unwrap();
    let sign = |who: &str| {
        env.cli(&[
            "approve",
            &doc,
            "--principal",
            &format!("{who}@bank.example"),
            "--ssh-key",
            &format!("keys/{who}"),
            "--yes",
            "-o",
            "x.json",
        ])
    };
    // 1. Content swapped for something harmless-looking: it no longer hashes
    //    to the digests the preview and the plan name.
    let mut lying = original.clone();
    let benign = base64_of(ORIGINAL.replace("max_connections = 100", "max_connections = 101").as_bytes());
    for (_, v) in lying["contents"].as_object_mut().unwrap() {
        *v = serde_json::Value::String(benign.clone());
    }
    std::fs::write(&shown_path, serde_json::to_vec(&lying).unwrap()).unwrap();
    let out = sign("alice");
    assert!(!out.0.status.success());
    assert!(out.stderr().contains("do not sign"), "{}", out.stderr());
    // 2. A file left out of the preview: not the preview the document names.
    let mut lying = original.clone();
    lying["preview"]["files"] = serde_json::json!([]);
    std::fs::write(&shown_path, serde_json::to_vec(&lying).unwrap()).unwrap();
    let out = sign("alice");
    assert!(!out.0.status.success() && out.stderr().contains("do not sign"), "{}", out.stderr());
    // 3. No preview at all: nothing is signed without it.
    std::fs::remove_file(&shown_path).unwrap();
    let out = sign("alice");
    assert!(!out.0.status.success() && out.stderr().contains("do not sign without it"), "{}", out.stderr());
    assert!(!env.path("x.json").exists(), "no approval was written");
}

#[test]
fn escape_sequences_in_file_content_never_reach_the_approvers_terminal() {
    let env = Env::new();
    env.write_policy_config("payments-config", &[]);
    env.write_approvers(&[("alice", &["sre"]), ("carol", &["payments-owner"])], "");
    let capsule = env.hostile("escape-content");
    let human = env.cli(&["exec", capsule.to_str().unwrap(), "--config", "runner.toml"]).stdout();
    let (_, doc, _) = propose(&env, &capsule);
    let (_, shown) = approve(&env, &doc, "alice");
    for out in [&human, &shown] {
        assert!(out.contains("+second line"), "{out}");
        for bad in ['\u{1b}', '\u{7}', '\u{202e}'] {
            assert!(!out.contains(bad), "{bad:?} reached the terminal: {out}");
        }
        assert!(out.contains("+hello \\u{001b}[2J"), "made visible: {out}");
    }
}

fn base64_of(b: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(b)
}
