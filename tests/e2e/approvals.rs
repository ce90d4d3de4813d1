//! The approval plane end to end: proposals, approvals signed by our CLI, by
//! the stock `ssh-keygen -Y sign` and through `ssh-agent`, quorums, vetoes,
//! proposer exclusion, break-glass, and approvals that must not move.

use std::process::Command;

use crate::harness::Env;
use crate::hostile::assert_refused;

const NS: &str = "approval.v1@edge-runner.dev";

/// A runner whose `data` mount writes payments config (tier 2: two approvals
/// from sre/payments-owner), with approvers registered.
fn setup(extra_roles: &str) -> Env {
    let env = Env::new();
    env.write_policy_config("payments-config", &[]);
    env.write_approvers(
        &[
            ("alice", &["sre"]),
            ("bob", &["sre"]),
            ("carol", &["payments-owner"]),
            ("dave", &["dev"]),
            ("olga", &["sre"]),
            ("ic1", &["incident-commander"]),
            ("ic2", &["incident-commander"]),
        ],
        &format!("[owners]\n\"test-agent\" = [\"olga@bank.example\"]\n{extra_roles}"),
    );
    env
}

/// Submit; it must wait for approvals. Returns the capsule and proposal path.
fn propose(env: &Env) -> (std::path::PathBuf, String) {
    let capsule = env.hostile("none");
    let run = env.exec(&capsule);
    assert_eq!(run.outcome(), "awaiting-approval", "{:#}", run.report);
    assert_eq!(run.code, 5);
    assert!(!env.path("data/ok.txt").exists());
    (capsule, run.report["document"].as_str().unwrap().to_owned())
}

fn approve(env: &Env, who: &str, proposal: &str, verb: &str) -> String {
    let out = format!("{who}-{verb}.json");
    env.sign_approval(verb, proposal, who, &out);
    out
}

#[test]
fn two_approvals_authorize_a_tier_2_change_and_cannot_be_replayed() {
    let env = setup("");
    let (capsule, proposal) = propose(&env);
    let a = approve(&env, "alice", &proposal, "approve");
    let b = approve(&env, "carol", &proposal, "approve");
    let run = env.exec_with(&capsule, &[&a, &b]);
    assert_eq!(run.outcome(), "committed", "{:#}", run.report);
    assert_eq!(std::fs::read_to_string(env.path("data/ok.txt")).unwrap(), "ok");
    assert_eq!(run.events_of("approval-accepted").len(), 2);
    let quorum = &run.events_of("quorum")[0];
    assert_eq!(quorum["outcome"]["result"], "met");
    assert_eq!(quorum["break_glass"], false);
    let events = run.events();
    let q = events.iter().position(|e| e == "quorum").unwrap();
    let intent = events.iter().position(|e| e == "commit-intent").unwrap();
    assert!(q < intent, "the quorum is recorded before the commit: {events:?}");
    // The approved run resumes the proposal: the capsule neither plans nor
    // applies again; the previewed bytes are committed.
    assert!(events.contains(&"resumed".to_owned()), "{events:?}");
    assert!(!events.iter().any(|e| e == "planned" || e == "applied"), "{events:?}");
    let kept = env.path("state/previews").join(std::path::Path::new(&proposal).file_stem().unwrap());
    assert!(!kept.exists(), "the kept preview goes when the proposal ends");

    // The same approvals again, in a new process: refused, nothing changes.
    std::fs::remove_file(env.path("data/ok.txt")).unwrap();
    let before = env.host_files();
    let again = env.exec_with(&capsule, &[&a, &b]);
    assert_refused(&env, &again, "authorize.proposal_executed", &before);
    let refused = again.events_of("approval-refused");
    assert_eq!(refused.len(), 2);
    assert!(refused.iter().all(|r| r["reason_code"] == "approval.replayed"));
}

/// The approver registry changes between two approved runs: erin, already
/// a payments owner in `roles.toml`, gets her key into `allowed_signers`.
/// The exported log verifies offline, each quorum replayed against the
/// registry it recorded. `edge-verify` shares a parsed registry only between
/// quorums that recorded the same files: replayed against the first
/// registry, erin's approval would be an unknown approver's and the second
/// quorum would not be met.
#[test]
fn each_quorum_is_replayed_offline_against_the_registry_it_recorded() {
    let env = Env::new();
    env.write_policy_config("payments-config", &[]);
    env.write_approvers(&[("alice", &["sre"]), ("carol", &["payments-owner"]), ("erin", &["payments-owner"])], "");
    let signers = std::fs::read_to_string(env.path("allowed_signers")).unwrap();
    let without_erin: String = signers.lines().filter(|l| !l.starts_with("erin@")).map(|l| format!("{l}\n")).collect();
    std::fs::write(env.path("allowed_signers"), &without_erin).unwrap();
    let (capsule, proposal) = propose(&env);
    let (a, c) = (approve(&env, "alice", &proposal, "approve"), approve(&env, "carol", &proposal, "approve"));
    let run = env.exec_with(&capsule, &[&a, &c]);
    assert_eq!(run.outcome(), "committed", "{:#}", run.report);
    let first = run.events_of("quorum")[0].clone();

    std::fs::write(env.path("allowed_signers"), &signers).unwrap();
    std::fs::remove_file(env.path("data/ok.txt")).unwrap();
    let (capsule, proposal) = propose(&env);
    let (a, e) = (approve(&env, "alice", &proposal, "approve"), approve(&env, "erin", &proposal, "approve"));
    let run = env.exec_with(&capsule, &[&a, &e]);
    assert_eq!(run.outcome(), "committed", "{:#}", run.report);
    let second = run.events_of("quorum")[0].clone();
    assert!(first["allowed_signers"].is_string(), "{first}");
    assert_ne!(first["allowed_signers"], second["allowed_signers"], "two allowed_signers files recorded");
    assert_eq!(first["roles"], second["roles"], "one roles file");
    env.verify_offline();
    // On one thread the runs are checked in log order, so the second quorum
    // comes to the cache after the first registry is in it.
    let one_thread =
        env.cli_env(&["evidence", "verify", "all.bundle", "--key", "runner.vkey"], &[("RAYON_NUM_THREADS", "1")]);
    one_thread.success();
}

#[test]
fn our_approvals_pass_ssh_keygen_verify() {
    let env = setup("");
    let (_, proposal) = propose(&env);
    let a = approve(&env, "alice", &proposal, "approve");
    let file: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(env.path(&a)).unwrap()).unwrap();
    let statement = edge_core::canonical::to_canonical_vec(&file["statement"]).unwrap();
    std::fs::write(env.path("statement"), &statement).unwrap();
    std::fs::write(env.path("statement.sig"), file["signature"].as_str().unwrap()).unwrap();
    let verify = |msg: &[u8], ns: &str| {
        let mut c = Command::new("ssh-keygen")
            .args([
                "-Y",
                "verify",
                "-f",
                "allowed_signers",
                "-I",
                "alice@bank.example",
                "-n",
                ns,
                "-s",
                "statement.sig",
            ])
            .current_dir(env.path(""))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::io::Write::write_all(&mut c.stdin.take().unwrap(), msg).unwrap();
        c.wait().unwrap().success()
    };
    assert!(verify(&statement, NS), "ssh-keygen -Y verify accepts our approval");
    let mut tampered = statement.clone();
    tampered[10] ^= 1;
    assert!(!verify(&tampered, NS));
    assert!(!verify(&statement, "git"));
}

#[test]
fn approvals_made_with_stock_ssh_keygen_are_accepted() {
    let env = setup("");
    let (capsule, proposal) = propose(&env);
    env.cli(&["approve", &proposal, "--principal", "bob@bank.example", "--statement-only", "-o", "bob.statement"])
        .success();
    let st = Command::new("ssh-keygen")
        .args(["-q", "-Y", "sign", "-f", "keys/bob", "-n", NS, "bob.statement"])
        .current_dir(env.path(""))
        .status()
        .unwrap();
    assert!(st.success());
    env.cli(&[
        "approval",
        "assemble",
        "--statement",
        "bob.statement",
        "--signature",
        "bob.statement.sig",
        "-o",
        "bob.json",
    ])
    .success();
    let carol = approve(&env, "carol", &proposal, "approve");
    let run = env.exec_with(&capsule, &["bob.json", &carol]);
    assert_eq!(run.outcome(), "committed", "{:#}", run.report);

    // A signature in another namespace (here: `git`) is never an approval.
    let (capsule2, proposal2) = {
        std::fs::remove_file(env.path("data/ok.txt")).unwrap();
        propose(&env)
    };
    env.cli(&["approve", &proposal2, "--principal", "bob@bank.example", "--statement-only", "-o", "git.statement"])
        .success();
    Command::new("ssh-keygen")
        .args(["-q", "-Y", "sign", "-f", "keys/bob", "-n", "git", "git.statement"])
        .current_dir(env.path(""))
        .status()
        .unwrap();
    let statement: serde_json::Value =
        serde_json::from_slice(&std::fs::read(env.path("git.statement")).unwrap()).unwrap();
    let forged = serde_json::json!({"statement": statement, "signature": std::fs::read_to_string(env.path("git.statement.sig")).unwrap()});
    std::fs::write(env.path("git.json"), forged.to_string()).unwrap();
    let carol2 = approve(&env, "carol", &proposal2, "approve");
    let before = env.host_files();
    let run = env.exec_with(&capsule2, &["git.json", &carol2]);
    assert_refused(&env, &run, "authorize.quorum_not_met", &before);
    assert_eq!(run.events_of("approval-refused")[0]["reason_code"], "approval.wrong_namespace");
}

#[test]
fn signing_through_ssh_agent_keeps_the_key_in_the_agent() {
    let env = setup("");
    let (capsule, proposal) = propose(&env);
    let sock = env.path("agent.sock");
    let out = Command::new("ssh-agent").args(["-s", "-a", sock.to_str().unwrap()]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let pid = text.split("SSH_AGENT_PID=").nth(1).and_then(|s| s.split(';').next()).unwrap().to_owned();
    let sock_s = sock.to_str().unwrap().to_owned();
    let added =
        Command::new("ssh-add").arg("-q").arg(env.path("keys/alice")).env("SSH_AUTH_SOCK", &sock_s).status().unwrap();
    // The private key file is not needed any more: remove it to prove the agent signs.
    std::fs::rename(env.path("keys/alice"), env.path("keys/alice.moved")).unwrap();
    let signed = env.cli_env(
        &["approve", &proposal, "--principal", "alice@bank.example", "--agent", "--yes", "-o", "alice-agent.json"],
        &[("SSH_AUTH_SOCK", &sock_s)],
    );
    let _ = Command::new("kill").arg(&pid).status();
    assert!(added.success());
    let signed = signed.success();
    assert!(signed.stdout().contains("approved proposal"), "{}", signed.stdout());
    let carol = approve(&env, "carol", &proposal, "approve");
    let run = env.exec_with(&capsule, &["alice-agent.json", &carol]);
    assert_eq!(run.outcome(), "committed", "{:#}", run.report);
}

#[test]
fn a_live_file_changed_while_waiting_is_refused_at_commit_and_nothing_is_written() {
    let env = setup("");
    env.write_policy_config("payments-config", &[("config", "payments-config", true)]);
    env.write_approvers(&[("alice", &["sre"]), ("carol", &["payments-owner"])], "");
    std::fs::write(env.path("config/app.toml"), "[server]\nmax_connections = 100\n").unwrap();
    let capsule = env.config_drift_capsule("drift", Some("agent"));
    let first = env.exec(&capsule);
    assert_eq!(first.outcome(), "awaiting-approval", "{:#}", first.report);
    let proposal = first.report["document"].as_str().unwrap().to_owned();
    let a = approve(&env, "alice", &proposal, "approve");
    let b = approve(&env, "carol", &proposal, "approve");
    let kept = env.path("state/previews").join(std::path::Path::new(&proposal).file_stem().unwrap());
    assert!(kept.join("config/app.toml").is_file(), "the staged result is kept while it waits");
    // The file drifts while the proposal waits: what was previewed and
    // approved no longer applies to it.
    std::fs::write(env.path("config/app.toml"), "[server]\nmax_connections = 200\n").unwrap();
    let before = env.host_files();
    let run = env.exec_with(&capsule, &[&a, &b]);
    assert_refused(&env, &run, "commit.precondition_failed", &before);
    assert_eq!(run.events_of("approval-accepted").len(), 2, "the approvals were valid");
    assert!(
        run.detail().contains("changed after the preview") && run.detail().contains("submit again"),
        "{}",
        run.detail()
    );
    assert_eq!(run.events().iter().filter(|e| *e == "commit-intent").count(), 0, "nothing was journaled");
    assert!(!kept.exists(), "the kept preview goes when the proposal ends");
}

#[test]
fn an_approval_under_policy_x_is_refused_after_the_policy_changed_to_y() {
    let env = setup("");
    let (capsule, proposal) = propose(&env);
    let a = approve(&env, "alice", &proposal, "approve");
    let b = approve(&env, "carol", &proposal, "approve");
    let text = std::fs::read_to_string(env.path("policy.toml")).unwrap();
    std::fs::write(env.path("policy.toml"), text.replace("name = \"example-enclave\"", "name = \"example-enclave-y\""))
        .unwrap();
    let before = env.host_files();
    let run = env.exec_with(&capsule, &[&a, &b]);
    assert_refused(&env, &run, "authorize.quorum_not_met", &before);
    for r in run.events_of("approval-refused") {
        assert!(r["detail"].as_str().unwrap().contains("policy"), "{r}");
    }
}

#[test]
fn a_rejection_vetoes_and_the_agents_owner_cannot_approve() {
    let env = setup("");
    let (capsule, proposal) = propose(&env);
    let a = approve(&env, "alice", &proposal, "approve");
    let c = approve(&env, "carol", &proposal, "approve");
    let no = approve(&env, "bob", &proposal, "reject");
    let olga = approve(&env, "olga", &proposal, "approve");
    let dave = approve(&env, "dave", &proposal, "approve");
    let before = env.host_files();
    let run = env.exec_with(&capsule, &[&a, &c, &no]);
    assert_refused(&env, &run, "authorize.vetoed", &before);
    assert!(run.detail().contains("bob@bank.example"));

    let run = env.exec_with(&capsule, &[&a, &olga, &dave]);
    assert_refused(&env, &run, "authorize.quorum_not_met", &before);
    let counted = &run.events_of("quorum")[0]["counted"];
    let note = |p: &str| {
        counted.as_array().unwrap().iter().find(|c| c["principal"] == p).unwrap()["note"].as_str().unwrap().to_owned()
    };
    assert!(note("olga@bank.example").contains("proposer"));
    assert!(note("dave@bank.example").contains("needs one of"));
}

#[test]
fn break_glass_needs_its_own_quorum_and_is_loud() {
    let env = setup("[break_glass]\nrole = \"incident-commander\"\nquorum = 2\n");
    let (capsule, proposal) = propose(&env);
    let one = approve(&env, "ic1", &proposal, "approve");
    let two = approve(&env, "ic2", &proposal, "approve");
    let before = env.host_files();
    let run = env.exec_with(&capsule, &[&one]);
    assert_refused(&env, &run, "authorize.quorum_not_met", &before);
    let run = env.exec_with(&capsule, &[&one, &two]);
    assert_eq!(run.outcome(), "committed", "{:#}", run.report);
    assert_eq!(run.events_of("quorum")[0]["break_glass"], true);
    assert!(run.events_of("authorized")[0]["note"].as_str().unwrap().starts_with("BREAK-GLASS"));
}

#[test]
fn approving_checks_the_proposal_and_asks_for_confirmation() {
    let env = setup("");
    let (_, proposal) = propose(&env);
    // No --yes and no confirmation on stdin: nothing is signed.
    let out = env.cli(&[
        "approve",
        &proposal,
        "--principal",
        "alice@bank.example",
        "--ssh-key",
        "keys/alice",
        "-o",
        "x.json",
    ]);
    assert_eq!(out.code(), 1);
    assert!(out.stderr().contains("not confirmed"), "{}", out.stderr());
    assert!(out.stdout().contains("plan") && out.stdout().contains("blast radius"), "{}", out.stdout());
    assert!(!env.path("x.json").exists());
    // A doctored proposal (plan swapped, digest kept) is refused before anything is shown as signable.
    let mut doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(env.path(&proposal)).unwrap()).unwrap();
    doc["plan"]["summary"] = "harmless, trust me".into();
    std::fs::write(env.path("doctored.json"), doc.to_string()).unwrap();
    let out = env.cli(&[
        "approve",
        "doctored.json",
        "--principal",
        "alice@bank.example",
        "--ssh-key",
        "keys/alice",
        "--yes",
        "-o",
        "y.json",
    ]);
    assert_eq!(out.code(), 1);
    assert!(out.stderr().contains("plan digest"), "{}", out.stderr());
}

#[test]
fn an_unreadable_approval_file_stops_exec_before_its_store_is_opened() {
    let env = Env::new();
    assert_eq!(env.exec(&env.hostile("none")).outcome(), "committed");
    let before = env.evidence().as_array().unwrap().len();
    let capsule = env.hostile("none");
    let out =
        env.cli(&["exec", capsule.to_str().unwrap(), "--config", "runner.toml", "--approval", "no-such-approval.json"]);
    assert_eq!(out.code(), 1, "{}", out.stderr());
    assert!(out.stderr().contains("cannot read approval no-such-approval.json"), "{}", out.stderr());
    // Not even a start record: the inputs are read before the runner opens
    // (its start is then queued for the run's first barrier).
    assert_eq!(env.evidence().as_array().unwrap().len(), before, "the store changed");
}
