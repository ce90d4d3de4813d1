//! The trust-core hostile tests: what an approver is shown cannot be forged,
//! a capsule cannot leave the runner unable to start, host-call floods have
//! their own reason, and a store that lost what the runner signed is refused.

use std::process::Command;

use crate::harness::{Env, FAST_LIMITS};

/// Bytes that must never reach a terminal from capsule text: ESC, CR, BEL,
/// C1 CSI/OSC, and the right-to-left override.
fn assert_terminal_safe(what: &str, out: &str) {
    for bad in ['\u{1b}', '\r', '\u{7}', '\u{9b}', '\u{9d}', '\u{202e}'] {
        assert!(!out.contains(bad), "{what} passed {:?} through:\n{out}", bad);
    }
}

#[test]
fn an_approver_sees_every_change_whatever_the_plan_text_tries() {
    let env = Env::new();
    env.write_policy_config("payments-config", &[]);
    env.write_approvers(&[("alice", &["sre"])], "");
    let capsule = env.hostile("forge-plan");
    let run = env.exec(&capsule);
    assert_eq!(run.outcome(), "awaiting-approval", "{:#}", run.report);
    let proposal = run.report["document"].as_str().unwrap().to_owned();

    // What the approver is shown before signing.
    let shown = env.cli(&[
        "approve",
        &proposal,
        "--principal",
        "alice@bank.example",
        "--ssh-key",
        "keys/alice",
        "--yes",
        "-o",
        "a.json",
    ]);
    let out = shown.stdout();
    assert_terminal_safe("approve", &out);
    // Each change is on a line of its own, in the runner's structure; the
    // capsule's text is quoted, labelled, and shows what it tried.
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines.contains(&"  create data/ok.txt"), "{out}");
    assert!(lines.contains(&"  create data/evil.sh"), "the hidden change is shown:\n{out}");
    assert!(out.contains("\\u{001b}[1A\\u{001b}[2K\\r"), "the escape is made visible:\n{out}");
    assert!(out.contains("\\u{202e}hs.live"), "the bidi override is made visible:\n{out}");
    assert!(out.contains("(the capsule's words)"), "{out}");
    // The capsule's text never starts a line of its own.
    assert!(!lines.iter().any(|l| l.trim_start().starts_with("create data/ok.txt (harmless)")), "{out}");

    // The same for the human run report, the evidence listing and the report.
    let human = env.cli(&["exec", capsule.to_str().unwrap(), "--config", "runner.toml"]);
    assert_terminal_safe("exec", &human.stdout());
    assert!(human.stdout().contains("create data/evil.sh"), "{}", human.stdout());
    let shown = env.cli(&["evidence", "show", "--config", "runner.toml"]);
    assert_terminal_safe("evidence show", &shown.stdout());
    env.cli(&["evidence", "export", "--config", "runner.toml", "-o", "all.bundle"]).success();
    let keys = env.cli(&["evidence", "runner-key", "--config", "runner.toml"]).success().stdout();
    std::fs::write(env.path("runner.keys"), keys).unwrap();
    let report = env.cli(&["evidence", "report", "all.bundle", "--key", "runner.keys", "--html", "r.html"]);
    assert_terminal_safe("evidence report", &report.stdout());
    let html = std::fs::read_to_string(env.path("r.html")).unwrap();
    assert_terminal_safe("the HTML report", &html);
}

/// The hostile capsule for `attack`, with generous CPU and wall time (it
/// does real work before the runner must stop it).
fn slow_capsule(env: &Env, attack: &str) -> std::path::PathBuf {
    let manifest = Env::hostile_manifest(attack, "")
        .replace(FAST_LIMITS, "[limits]\nmemory_mib = 64\ncpu_ms = 20000\nwall_ms = 60000\noutput_kib = 64\n");
    env.capsule(&format!("slow-{attack}"), test_programs::HOSTILE, &manifest, Some("agent"))
}

#[test]
fn a_tree_deeper_than_the_descriptor_limit_does_not_stop_the_next_run() {
    let env = Env::new();
    // Generous limits: the capsule makes 1,500 nested directories.
    let capsule = slow_capsule(&env, "deep-tree");
    let exec = |c: &std::path::Path| {
        // The default soft limit of a service: 1,024 descriptors.
        let out = Command::new("bash")
            .arg("-c")
            .arg(format!(
                "ulimit -n 1024 && exec {} exec {} --config runner.toml --json",
                crate::harness::BIN,
                c.display()
            ))
            .current_dir(env.path(""))
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, stdout, stderr) = exec(&capsule);
    assert_eq!(code, Some(3), "refused: {stdout}\n{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["refusal"]["reason_code"], "apply.outside_plan", "{report:#}");
    assert!(!env.path("data/ok.txt").exists(), "nothing committed");
    let staging = env.path("state/staging");
    assert!(std::fs::read_dir(&staging).map_or(true, |mut d| d.next().is_none()), "the staging copy is gone");
    // The next run starts and commits.
    let (code, stdout, stderr) = exec(&env.hostile("none"));
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    assert_eq!(std::fs::read_to_string(env.path("data/ok.txt")).unwrap(), "ok");
}

#[test]
fn a_capsule_cannot_fill_the_disk_through_its_staged_copy() {
    let env = Env::new();
    let capsule = slow_capsule(&env, "staging-flood");
    let before = env.host_files();
    let run = env.exec(&capsule);
    crate::hostile::assert_refused(&env, &run, "apply.too_large", &before);
    assert!(run.detail().contains("staged copies"), "{}", run.detail());
}

#[test]
fn a_planned_create_cannot_land_executable() {
    use std::os::unix::fs::PermissionsExt;
    let env = Env::new();
    std::fs::write(env.path("data/tool.sh"), "#!/bin/sh\necho tool\n").unwrap();
    std::fs::set_permissions(env.path("data/tool.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let capsule = env.hostile("exec-mode");
    let before = env.host_files();
    let run = env.exec(&capsule);
    crate::hostile::assert_refused(&env, &run, "apply.outside_plan", &before);
    assert!(run.detail().contains("executable") && run.detail().contains("cron.sh"), "{}", run.detail());
    assert!(!env.path("data/cron.sh").exists());
    assert_eq!(std::fs::metadata(env.path("data/tool.sh")).unwrap().permissions().mode() & 0o777, 0o755);
}

#[test]
fn created_files_carry_their_mode_in_the_diff_and_the_journal() {
    let env = Env::new();
    let run = env.exec(&env.hostile("none"));
    assert_eq!(run.outcome(), "committed", "{:#}", run.report);
    let applied =
        run.report["records"].as_array().unwrap().iter().find(|r| r["event"]["type"] == "applied").unwrap().clone();
    let mode = applied["event"]["diff"][0]["mode"].as_u64().expect("the diff records the mode");
    assert_eq!(mode & 0o7111, 0, "not executable: {mode:o}");
}

#[test]
fn host_call_floods_are_named_as_such() {
    for attack in ["random-flood", "many-handles"] {
        let env = Env::new();
        let run = env.exec(&env.hostile(attack));
        assert_eq!(run.outcome(), "refused", "{attack}: {:#}", run.report);
        assert_eq!(run.reason(), "sandbox.hostcall_limit", "{attack}: {}", run.detail());
        assert!(!run.detail().trim().is_empty());
        assert_eq!(run.recorded_reason().as_deref(), Some("sandbox.hostcall_limit"));
    }
}

#[test]
fn refused_input_exits_3_from_capsule_verify() {
    let env = Env::new();
    std::fs::write(env.path("junk.capsule"), b"not a capsule at all").unwrap();
    let out = env.cli(&["capsule", "verify", "junk.capsule", "--key", "keys/agent.pub"]);
    assert_eq!(out.code(), 3, "{}{}", out.stdout(), out.stderr());
    assert!(out.stdout().contains("capsule.malformed"), "{}", out.stdout());
    let signed = env.hostile("none");
    let out = env.cli(&["capsule", "verify", signed.to_str().unwrap(), "--key", "keys/other.pub"]);
    assert_eq!(out.code(), 3, "{}{}", out.stdout(), out.stderr());
    let out = env.cli(&["capsule", "verify", "missing.capsule", "--key", "keys/agent.pub"]);
    assert_eq!(out.code(), 1, "an unreadable file is the runner's error: {}", out.stderr());
}

#[test]
fn a_runner_without_a_policy_refuses_to_start_unless_told_and_then_says_so() {
    let env = Env::new();
    let config = std::fs::read_to_string(env.path("runner.toml")).unwrap();
    std::fs::write(env.path("runner.toml"), config.replace("dangerous_run_without_policy = true\n", "")).unwrap();
    let capsule = env.hostile("none");
    let out = env.cli(&["exec", capsule.to_str().unwrap(), "--config", "runner.toml", "--json"]);
    assert_eq!(out.code(), 1, "{}", out.stdout());
    assert!(out.stderr().contains("no `[policy]`"), "{}", out.stderr());
    assert!(!env.path("data/ok.txt").exists());
    assert!(!env.path("state/evidence").exists(), "nothing was started");
    // With the switch: it runs, and the evidence and the report say so.
    std::fs::write(env.path("runner.toml"), config).unwrap();
    let run = env.exec(&capsule);
    assert_eq!(run.outcome(), "committed");
    let log = env.evidence();
    let records = log.as_array().unwrap();
    assert!(records.iter().any(|r| r["event"]["type"] == "insecure"), "recorded at start");
    assert!(records.iter().any(|r| r["event"]["type"] == "submission"
        && r["event"]["dangerous"][0] == "dangerous_run_without_policy"));
    env.cli(&["evidence", "export", "--config", "runner.toml", "-o", "all.bundle"]).success();
    let keys = env.cli(&["evidence", "runner-key", "--config", "runner.toml"]).success().stdout();
    std::fs::write(env.path("runner.keys"), keys).unwrap();
    let report = env.cli(&["evidence", "report", "all.bundle", "--key", "runner.keys", "--html", "r.html"]).success();
    assert!(report.stdout().contains("INSECURE"), "{}", report.stdout());
    assert!(std::fs::read_to_string(env.path("r.html")).unwrap().contains("dangerous_run_without_policy"));
}

fn sqlite(env: &Env, sql: &str) {
    let st = Command::new("sqlite3").arg(env.path("state/evidence/evidence.db")).arg(sql).status().unwrap();
    assert!(st.success(), "sqlite3 {sql}");
}

/// One value `sql` reads from the store.
fn sqlite_value(env: &Env, sql: &str) -> String {
    let out = Command::new("sqlite3").arg(env.path("state/evidence/evidence.db")).arg(sql).output().unwrap();
    assert!(out.status.success(), "sqlite3 {sql}");
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// Two committed runs' worth of log, the runner stopped cleanly.
fn with_history() -> Env {
    let env = Env::new();
    assert_eq!(env.exec(&env.hostile("none")).outcome(), "committed");
    std::fs::remove_file(env.path("data/ok.txt")).unwrap();
    assert_eq!(env.exec(&env.hostile("none")).outcome(), "committed");
    env
}

fn start_fails(env: &Env, needle: &str) {
    let capsule = env.hostile("none");
    std::fs::remove_file(env.path("data/ok.txt")).ok();
    let out = env.cli(&["exec", capsule.to_str().unwrap(), "--config", "runner.toml", "--json"]);
    assert_eq!(out.code(), 1, "the runner must refuse: {}", out.stdout());
    assert!(out.stderr().contains(needle), "{}", out.stderr());
    assert!(!env.path("data/ok.txt").exists(), "nothing ran");
}

#[test]
fn a_store_cut_short_below_what_the_runner_signed_is_refused() {
    let env = with_history();
    let before: u64 = sqlite_value(&env, "SELECT count(*) FROM records").parse().unwrap();
    // Drop the append-only trigger and delete the last run's records: the
    // chain that is left is valid, only shorter.
    sqlite(
        &env,
        "DROP TRIGGER records_append_only_d; DELETE FROM records WHERE seq >= (SELECT max(seq) - 5 FROM records);",
    );
    start_fails(&env, "are missing");
    // Cutting the persisted Merkle tree to match (every subtree that
    // reaches past the last record left), and deleting the checkpoints,
    // does not help: the newest signed checkpoint is kept outside.
    sqlite(
        &env,
        "DROP TRIGGER tree_append_only_d; \
         DELETE FROM tree WHERE ((idx + 1) << level) > (SELECT max(seq) + 1 FROM records);",
    );
    sqlite(&env, "DROP TRIGGER checkpoints_append_only_d; DELETE FROM checkpoints;");
    start_fails(&env, &format!("signed a checkpoint of {before} records"));
    // (With rows, checkpoints and that file all deleted, what is left is a
    // valid shorter log: the documented limit; receipts and earlier exports
    // checked with `--since` catch it.)
}

#[test]
fn a_persisted_tree_that_disagrees_with_the_records_is_refused_and_named() {
    let env = with_history();
    // The hash that summarises the oldest records (the highest complete
    // subtree: part of every root the runner will compute), replaced.
    sqlite(
        &env,
        "DROP TRIGGER tree_append_only_u; \
         UPDATE tree SET hash = zeroblob(32) WHERE idx = 0 AND level = (SELECT max(level) FROM tree);",
    );
    start_fails(&env, "persisted Merkle tree");
    start_fails(&env, "`edge-runner evidence check --full` names the record or tree hash that differs");
    // What differs, named by the full check the refusal points to: the
    // hash at the tree's top level, index 0.
    let full = env.cli(&["evidence", "check", "--full", "--config", "runner.toml"]);
    assert_eq!(full.code(), 3, "{}", full.stdout());
    let level = sqlite_value(&env, "SELECT max(level) FROM tree;");
    assert!(full.stdout().contains(&format!("at level {level}, index 0")), "{}", full.stdout());
}

#[test]
fn a_rewritten_history_is_refused_and_a_missing_checkpoint_file_is_named() {
    let env = with_history();
    std::fs::remove_file(env.path("state/evidence/latest-checkpoint")).unwrap();
    start_fails(&env, "latest-checkpoint is missing");
}

#[test]
fn after_a_clean_exit_deleting_the_wal_loses_nothing() {
    let env = with_history();
    let wal = env.path("state/evidence/evidence.db-wal");
    if wal.exists() {
        assert_eq!(std::fs::metadata(&wal).unwrap().len(), 0, "the WAL is truncated at a clean exit");
        std::fs::remove_file(&wal).unwrap();
    }
    std::fs::remove_file(env.path("data/ok.txt")).unwrap();
    let run = env.exec(&env.hostile("none"));
    assert_eq!(run.outcome(), "committed", "{}", run.stderr);
    let log = env.evidence();
    let runs: std::collections::BTreeSet<&str> = log
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["event"]["type"] == "completed")
        .map(|r| r["run"].as_str().unwrap())
        .collect();
    assert_eq!(runs.len(), 3, "all three runs are in the log");
}

#[test]
fn a_compilation_that_needs_more_memory_than_allowed_ends_its_helper_not_the_runner() {
    use edge_runner::sandbox::compile::in_child;
    let exe = std::path::Path::new(env!("CARGO_BIN_EXE_edge-runner"));
    let wasm = std::fs::read(test_programs::CERT_EXPIRY).unwrap();
    let timeout = std::time::Duration::from_secs(60);
    // Under a limit too small for Cranelift, the helper is stopped and the
    // reason names the limit.
    let e = format!("{:#}", in_child(exe, &wasm, 8 << 20, timeout).unwrap_err());
    assert!(e.contains("needed more than 8 MiB of memory"), "{e}");
    // Under the real limit the same component compiles, and the runner's
    // engine accepts the artifact (the helper's engine compiles the same code).
    let artifact = in_child(exe, &wasm, edge_runner::sandbox::compile::COMPILE_MEMORY_BYTES, timeout).unwrap();
    let sandbox = edge_runner::sandbox::Sandbox::new(tempfile::tempdir().unwrap().path(), 512).unwrap();
    // SAFETY: the artifact was compiled just now by the runner's own helper.
    unsafe { wasmtime::component::Component::deserialize(sandbox.engine(), &artifact) }.unwrap();
    // Garbage is a compile error, reported as such (not as a memory problem).
    let e = format!("{:#}", in_child(exe, b"\0asm garbage", 64 << 20, timeout).unwrap_err());
    assert!(!e.contains("memory") && !e.is_empty(), "{e}");
}

#[test]
fn an_executable_lands_when_the_plan_declares_it_and_only_with_the_declared_mode() {
    use std::os::unix::fs::PermissionsExt;
    let setup = || {
        let env = Env::new();
        std::fs::write(env.path("data/tool.sh"), "#!/bin/sh\necho tool\n").unwrap();
        std::fs::set_permissions(env.path("data/tool.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
        env
    };
    // Declared 0755 (contract 0.2): committed, with that mode, recorded in
    // the plan, the diff and the journal.
    let env = setup();
    let run = env.exec(&env.hostile("exec-declared"));
    assert_eq!(run.outcome(), "committed", "{:#}", run.report);
    assert_eq!(std::fs::metadata(env.path("data/cron.sh")).unwrap().permissions().mode() & 0o7777, 0o755);
    let event = |t: &str| {
        run.report["records"].as_array().unwrap().iter().find(|r| r["event"]["type"] == t).unwrap()["event"].clone()
    };
    let created =
        event("applied")["diff"].as_array().unwrap().iter().find(|d| d["action"] == "create").unwrap().clone();
    assert_eq!(created["mode"], 0o755);
    assert_eq!(run.report["plan"]["changes"][1]["mode"], 0o755, "{:#}", run.report["plan"]);

    // Declared 0644, landed 0755: refused, nothing changed.
    let env = setup();
    let capsule = env.hostile("exec-understated");
    let before = env.host_files();
    let run = env.exec(&capsule);
    crate::hostile::assert_refused(&env, &run, "apply.diff_mismatch", &before);
    assert!(run.detail().contains("0755") && run.detail().contains("0644"), "{}", run.detail());
}

#[test]
fn the_stored_fold_is_checked_in_full_and_rebuilt_from_the_records_when_missing() {
    let env = with_history();
    let check = |full: bool| {
        let mut args = vec!["evidence", "check", "--config", "runner.toml"];
        if full {
            args.push("--full");
        }
        env.cli(&args)
    };
    let ok = check(true);
    assert_eq!(ok.code(), 0, "{}", ok.stdout());
    assert!(ok.stdout().contains("verified in full") && ok.stdout().contains("2 proposals"), "{}", ok.stdout());
    assert_eq!(check(false).code(), 0);
    // The fold is derived, not signed: someone who rewrites a proposal's
    // stored view is caught by the full check, which folds the records again.
    sqlite(&env, "UPDATE proposals SET view = replace(view, '\"committed\"', '\"failed\"');");
    let bad = check(true);
    assert_eq!(bad.code(), 3, "{}", bad.stdout());
    assert!(
        bad.stdout().contains("stored fold of the log differs") && bad.stdout().contains("another view"),
        "{}",
        bad.stdout()
    );
    // The way out it names: delete the fold; the next start rebuilds it
    // from the records, and the runner carries on.
    sqlite(&env, "DELETE FROM fold;");
    std::fs::remove_file(env.path("data/ok.txt")).ok();
    assert_eq!(env.exec(&env.hostile("none")).outcome(), "committed");
    let again = check(true);
    assert_eq!(again.code(), 0, "{}", again.stdout());
    assert!(again.stdout().contains("3 proposals"), "{}", again.stdout());
    // The counts /metrics reads, kept beside the proposals by triggers:
    // rewritten, the full check names them too.
    sqlite(&env, "UPDATE proposal_counts SET n = n + 40 WHERE n > 0;");
    let bad = check(true);
    assert_eq!(bad.code(), 3, "{}", bad.stdout());
    assert!(bad.stdout().contains("the proposals counted by state and tier"), "{}", bad.stdout());
    sqlite(&env, "DELETE FROM fold;");
    std::fs::remove_file(env.path("data/ok.txt")).ok();
    assert_eq!(env.exec(&env.hostile("none")).outcome(), "committed");
    assert_eq!(check(true).code(), 0);
}

#[test]
fn a_full_check_that_cannot_make_its_scratch_fold_says_so_and_does_not_call_the_store_wrong() {
    let env = with_history();
    let args = ["evidence", "check", "--config", "runner.toml", "--full"];
    let mut nowhere = args.to_vec();
    nowhere.extend(["--scratch", "/nonexistent/edge-runner-tmp"]);
    let out = env.cli(&nowhere);
    assert_eq!(out.code(), 1, "an error, not a verdict: {}\n{}", out.stdout(), out.stderr());
    assert!(!out.stdout().contains("FAILED"), "{}", out.stdout());
    assert!(out.stderr().contains("could not run") && out.stderr().contains("--scratch"), "{}", out.stderr());
    // With somewhere to fold into, the same store verifies.
    assert_eq!(env.cli(&args).code(), 0);
}
