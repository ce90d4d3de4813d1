//! The policy plane in a real run: decisions from the blast radius, recorded
//! before anything runs; policy changes and refused loads in the evidence.

use crate::harness::Env;
use crate::hostile::assert_refused;

fn decision(run: &crate::harness::Run) -> &serde_json::Value {
    &run.report["decision"]
}

#[test]
fn a_low_risk_write_runs_automatically_with_the_decision_recorded_first() {
    let env = Env::new();
    env.write_policy_config("log-volume", &[]);
    let run = env.exec(&env.hostile("none"));
    assert_eq!(run.outcome(), "committed", "{:#}", run.report);
    let d = decision(&run);
    assert_eq!(d["tier"], 0);
    assert_eq!(d["allowed"], true);
    assert!(d["policy"].as_str().unwrap().starts_with("sha256:"));
    assert_eq!(d["derivation"]["touched"].as_array().unwrap().len(), 2);
    let events = run.events();
    let (decided, planned) = (events.iter().position(|e| e == "decision"), events.iter().position(|e| e == "planned"));
    assert!(decided < planned, "{events:?}");
    // The decision record carries its replayable input, stored as an artifact.
    let rec = run.report["records"].as_array().unwrap().iter().find(|r| r["event"]["type"] == "decision").unwrap();
    let input = rec["event"]["input"].as_str().unwrap().to_owned();
    let stored = env.cli(&["evidence", "artifact", "--config", "runner.toml", &input]).success();
    let replay: serde_json::Value = serde_json::from_slice(&stored.0.stdout).unwrap();
    assert_eq!(replay["grant"], run.report["records"][1]["event"]["grant"], "the decision input holds the grant");
    // The policy in force was recorded when the runner started.
    let log = env.evidence();
    let types: Vec<&str> = log.as_array().unwrap().iter().map(|r| r["event"]["type"].as_str().unwrap()).collect();
    let change = types.iter().position(|t| *t == "policy-change").expect("policy change recorded");
    assert!(change < types.iter().position(|t| *t == "submission").unwrap(), "{types:?}");
    assert_eq!(log[change]["event"]["new_policy"], d["policy"]);
}

#[test]
fn a_write_reaching_the_revenue_path_waits_for_two_approvals() {
    let env = Env::new();
    env.write_policy_config("payments-config", &[]);
    let capsule = env.hostile("none");
    let before = env.host_files();
    let run = env.exec(&capsule);
    assert_eq!(run.outcome(), "awaiting-approval", "{:#}", run.report);
    assert_eq!(run.code, 5);
    assert_eq!(env.host_files(), before, "nothing changes while waiting");
    assert!(env.path(run.report["document"].as_str().unwrap()).exists(), "the proposal is written for approvers");
    let d = decision(&run);
    assert_eq!((d["tier"].as_u64(), d["approvals_required"].as_u64()), (Some(2), Some(2)));
    assert!(d["reasons"].as_array().unwrap().iter().any(|r| r["rule"] == "rules.revenue-path-writes"));
    assert!(run.events().contains(&"planned".to_owned()), "the plan is made for approvers to see");
}

#[test]
fn a_denied_capsule_never_runs() {
    let env = Env::new();
    env.write_policy_config("ledger-db", &[]);
    let capsule = env.hostile("none");
    let before = env.host_files();
    let run = env.exec(&capsule);
    assert_refused(&env, &run, "policy.denied", &before);
    assert!(run.detail().contains("deny.no-irreversible-writes"), "{}", run.detail());
    assert!(!run.events().contains(&"planned".to_owned()), "nothing ran");
}

#[test]
fn a_signer_outside_the_policy_is_refused() {
    let env = Env::new();
    env.write_policy_config("log-volume", &[]);
    let capsule = env.capsule("c", test_programs::HOSTILE, &Env::hostile_manifest("none", ""), Some("other"));
    let before = env.host_files();
    let run = env.exec(&capsule);
    assert_refused(&env, &run, "signature.untrusted_signer", &before);
}

#[test]
fn a_malformed_policy_stops_the_runner_with_file_and_line() {
    let env = Env::new();
    env.write_policy_config("log-volume", &[]);
    let text = std::fs::read_to_string(env.path("policy.toml")).unwrap();
    std::fs::write(env.path("policy.toml"), text.replacen("default_tier = 0", "default_tier = \"zero\"", 1)).unwrap();
    let capsule = env.hostile("none");
    let out = env.cli(&["exec", capsule.to_str().unwrap(), "--config", "runner.toml"]);
    assert_eq!(out.code(), 1);
    assert!(out.stderr().contains("policy.toml") && out.stderr().contains("line"), "{}", out.stderr());
    assert!(!env.path("state/evidence/evidence.db").exists(), "nothing ran, nothing was recorded");
}

#[test]
fn an_unknown_node_in_a_mount_mapping_is_a_load_error() {
    let env = Env::new();
    env.write_policy_config("no-such-node", &[]);
    let out = env.cli(&["policy", "check", "--config", "runner.toml"]);
    assert_eq!(out.code(), 1);
    assert!(out.stderr().contains("no-such-node") && out.stderr().contains("`data`"), "{}", out.stderr());
}

#[test]
fn a_policy_change_is_recorded_with_old_and_new_digests() {
    let env = Env::new();
    env.write_policy_config("log-volume", &[]);
    let first = env.exec(&env.hostile("none"));
    let old = decision(&first)["policy"].clone();
    let text = std::fs::read_to_string(env.path("policy.toml")).unwrap();
    std::fs::write(
        env.path("policy.toml"),
        text.replace("name = \"example-enclave\"", "name = \"example-enclave-v2\""),
    )
    .unwrap();
    std::fs::remove_file(env.path("data/ok.txt")).unwrap();
    let second = env.exec(&env.hostile("none"));
    let new = decision(&second)["policy"].clone();
    assert_ne!(old, new);
    let log = env.evidence();
    let changes: Vec<&serde_json::Value> =
        log.as_array().unwrap().iter().filter(|r| r["event"]["type"] == "policy-change").collect();
    assert_eq!(changes.len(), 2);
    assert_eq!(changes[1]["event"]["old_policy"], old);
    assert_eq!(changes[1]["event"]["new_policy"], new);
}

#[test]
fn a_bad_reload_keeps_the_running_configuration_and_is_recorded() {
    let env = Env::new();
    env.write_policy_config("log-volume", &[]);
    let config = edge_runner::config::RunnerConfig::load(&env.path("runner.toml")).unwrap();
    let runner = edge_runner::pipeline::Runner::open(config).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let before = runner.governance();
    let good = before.policy.as_ref().unwrap().policy.digest();
    let kept = before.digests();
    std::fs::write(env.path("policy.toml"), "version = 1\n[tiers.0]\napprovals = 3\n").unwrap();
    let r = rt.block_on(runner.reload("test")).unwrap();
    assert!(!r.applied);
    assert!(r.error.as_deref().unwrap().contains("tiers.0.approvals"), "{:?}", r.error);
    assert_eq!(runner.governance().policy.as_ref().unwrap().policy.digest(), good, "the last good policy stays");
    let last = runner.log.read_records().unwrap().last().unwrap().clone();
    match &last.event {
        edge_core::evidence::Event::ReloadRefused { error, kept: k, trigger } => {
            assert!(error.contains("tiers.0.approvals"), "{error}");
            assert_eq!(k, &kept);
            assert_eq!(trigger, "test");
        }
        other => panic!("{other:?}"),
    }
    // A config file the reload cannot parse: the refusal names where,
    // never the line (a webhook's URL may be its secret), in the answer
    // and in the record.
    let cfg = std::fs::read_to_string(env.path("runner.toml")).unwrap();
    let broken = format!("{cfg}\n[[notify.webhooks]]\nurl = \"https://hooks.example/T/path-secret-4e1b\n");
    std::fs::write(env.path("runner.toml"), broken).unwrap();
    let r = rt.block_on(runner.reload("test")).unwrap();
    assert!(!r.applied);
    let said = r.error.unwrap();
    assert!(said.contains("TOML parse error at line") && !said.contains("path-secret-4e1b"), "{said}");
    let last = runner.log.read_records().unwrap().last().unwrap().clone();
    let edge_core::evidence::Event::ReloadRefused { error, .. } = &last.event else { panic!("{last:?}") };
    assert_eq!(error, &said);
    std::fs::write(env.path("runner.toml"), cfg).unwrap();
    // A good reload takes effect, is recorded with old and new digests, and
    // leaves what a run already took untouched.
    let text =
        std::fs::read_to_string(std::path::Path::new(test_programs::ROOT).join("examples/policy/policy.toml")).unwrap();
    let pem = std::fs::read_to_string(env.path("keys/agent.pub")).unwrap();
    std::fs::write(
        env.path("policy.toml"),
        format!("{text}\n[[signers]]\nname = \"test-agent\"\npublic_key = \"\"\"{pem}\"\"\"\nmounts = [\"*\"]\n"),
    )
    .unwrap();
    let r = rt.block_on(runner.reload("test")).unwrap();
    assert!(r.applied, "{:?}", r.error);
    let now = runner.governance();
    let new_policy = now.policy.as_ref().unwrap().policy.digest();
    assert_ne!(new_policy, good);
    assert_eq!(before.policy.as_ref().unwrap().policy.digest(), good, "a run's governance is its own");
    let records = runner.log.read_records().unwrap();
    let n = records.len();
    assert!(matches!(records[n - 2].event, edge_core::evidence::Event::PolicyChange { .. }));
    match &records[n - 1].event {
        edge_core::evidence::Event::ConfigReloaded { old, new, restart_needed, .. } => {
            assert_eq!(**old, kept);
            assert_eq!(new.policy, Some(new_policy));
            assert_eq!(new.graph, kept.graph, "the graph did not change");
            assert!(restart_needed.is_empty(), "{restart_needed:?}");
            // Every document named is in the store: a reviewer can read what changed.
            for d in old.documents().chain(new.documents()) {
                assert!(runner.log.read_artifact(&d).unwrap().is_some(), "{d} missing");
            }
            // The config as shown, never the file itself (it may hold secrets).
            assert!(new.config_shown.is_some_and(|d| old.documents().chain(new.documents()).any(|x| x == d)));
            assert!(runner.log.read_artifact(&new.config).unwrap().is_none(), "the config file is stored");
        }
        other => panic!("{other:?}"),
    }
    // A change a reload does not apply is named, not silently ignored.
    let cfg = std::fs::read_to_string(env.path("runner.toml")).unwrap();
    std::fs::write(env.path("runner.toml"), cfg.replace("[runner]\n", "[runner]\nmax_preview_mib = 8\n")).unwrap();
    let r = rt.block_on(runner.reload("test")).unwrap();
    assert!(r.applied);
    assert_eq!(r.restart_needed, ["[runner]"]);
    // The whole log, reloads and all, still verifies offline.
    drop(runner);
    env.cli(&["evidence", "export", "--config", "runner.toml", "-o", "reload.bundle"]).success();
    let vkey = env.cli(&["evidence", "runner-key", "--config", "runner.toml"]).success().stdout();
    let keys = edge_evidence::parse_keys(&vkey).unwrap();
    let v =
        edge_evidence::verify(&std::fs::read(env.path("reload.bundle")).unwrap(), &keys, edge_evidence::Level::Full)
            .unwrap();
    assert_eq!(v.records.iter().filter(|r| r.event_type() == "config-reloaded").count(), 2);
}

#[test]
fn policy_check_explain_and_test_commands() {
    let env = Env::new();
    env.write_policy_config("payments-config", &[("logs", "log-volume", true)]);
    let check = env.cli(&["policy", "check", "--config", "runner.toml"]).success();
    assert!(check.stdout().contains("OK"), "{}", check.stdout());
    assert!(check.stdout().contains("mapping data -> payments-config"));

    let capsule = env.hostile("none");
    let explain =
        env.cli(&["policy", "explain", capsule.to_str().unwrap(), "--config", "runner.toml", "--json"]).success();
    let v: serde_json::Value = serde_json::from_str(&explain.stdout()).unwrap();
    assert_eq!(v["decision"]["tier"], 2);
    assert_eq!(v["input"]["signer"], "test-agent");
    let text = env.cli(&["policy", "explain", capsule.to_str().unwrap(), "--config", "runner.toml"]).success();
    assert!(text.stdout().contains("because    [rules.revenue-path-writes]"), "{}", text.stdout());

    let cases = r#"
[[case]]
name = "cleaning logs is automatic"
signer = "test-agent"
kind = "remediation"
mounts = [{ name = "logs", writable = true }]
expect = { allowed = true, tier = 0 }

[[case]]
name = "payments config needs two approvers"
signer = "test-agent"
kind = "remediation"
mounts = [{ name = "data", writable = true }]
ticket = "INC-7"
expect = { allowed = true, tier = 2, rules = ["rules.revenue-path-writes"] }
"#;
    std::fs::write(env.path("cases.toml"), cases).unwrap();
    let pass = env.cli(&["policy", "test", "cases.toml", "--config", "runner.toml"]).success();
    assert!(pass.stdout().contains("2 passed, 0 failed"), "{}", pass.stdout());
    std::fs::write(env.path("cases.toml"), cases.replace("tier = 0", "tier = 1")).unwrap();
    let fail = env.cli(&["policy", "test", "cases.toml", "--config", "runner.toml"]);
    assert_eq!(fail.code(), 1);
    assert!(fail.stdout().contains("FAIL  cleaning logs is automatic: tier: expected 1, got 0"), "{}", fail.stdout());
}
