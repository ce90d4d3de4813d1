//! The example capsules doing real work, and the commit/rollback/recovery paths.

use std::time::{Duration, SystemTime};

use crate::harness::Env;

fn example_manifest(name: &str) -> String {
    std::fs::read_to_string(format!("{}/examples/capsules/{name}/capsule.toml", test_programs::ROOT)).unwrap()
}

fn with_mount(env: &Env, mount: &str, writable: bool) {
    std::fs::create_dir_all(env.path(mount)).unwrap();
    env.write_config(&format!("[mounts.{mount}]\npath = \"{mount}\"\nwritable = {writable}\n"));
}

#[test]
fn config_drift_fixes_the_key_and_keeps_the_rest() {
    let env = Env::new();
    with_mount(&env, "config", true);
    let original =
        "# App config\n[server]\nhost = \"0.0.0.0\"\nmax_connections = 100 # tuned\n\n[log]\nlevel = \"info\"\n";
    std::fs::write(env.path("config/app.toml"), original).unwrap();
    let capsule = env.capsule("drift", test_programs::CONFIG_DRIFT, &example_manifest("config-drift"), Some("agent"));
    let run = env.exec(&capsule);
    assert_eq!(run.outcome(), "committed", "{:#}", run.report);
    assert_eq!(run.code, 0);
    let after = std::fs::read_to_string(env.path("config/app.toml")).unwrap();
    assert_eq!(after, original.replace("max_connections = 100", "max_connections = 512"));
    let change = &run.report["plan"]["changes"][0];
    assert_eq!(change["action"], "modify");
    assert_eq!(change["digest_before"], edge_core::Sha256Digest::of(original.as_bytes()).to_string());
    assert_eq!(change["digest_after"], edge_core::Sha256Digest::of(after.as_bytes()).to_string());
    assert_eq!(run.report["verification"]["passed"], true);
    assert_eq!(
        run.events(),
        [
            "submission",
            "admitted",
            "decision",
            "planned",
            "applied",
            "authorized",
            "commit-intent",
            "committed",
            "verified",
            "completed"
        ]
    );
    // No leftovers beside the file.
    let names: Vec<String> =
        std::fs::read_dir(env.path("config")).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    assert_eq!(names, ["app.toml"]);

    // A second run finds nothing to do.
    let again = env.exec(&capsule);
    assert_eq!(again.outcome(), "no-changes", "{:#}", again.report);
    assert_eq!(again.report["plan"]["findings"][0]["code"], "config.compliant");
}

#[test]
fn cleanup_deletes_only_old_files_and_never_follows_symlinks() {
    let env = Env::new();
    with_mount(&env, "logs", true);
    let old = SystemTime::now() - Duration::from_secs(30 * 86_400);
    let set_old = |rel: &str| {
        std::fs::File::options().write(true).open(env.path(rel)).unwrap().set_modified(old).unwrap();
    };
    std::fs::create_dir_all(env.path("logs/app")).unwrap();
    for (rel, content) in [
        ("logs/app/old-1.log", "old"),
        ("logs/app/old-2.log", "old too"),
        ("logs/app/new.log", "fresh"),
        ("logs/old-notes.txt", "not a log"),
        ("outside/ancient.log", "outside the mount"),
    ] {
        std::fs::write(env.path(rel), content).unwrap();
    }
    for rel in ["logs/app/old-1.log", "logs/app/old-2.log", "logs/old-notes.txt", "outside/ancient.log"] {
        set_old(rel);
    }
    std::os::unix::fs::symlink(env.path("outside/ancient.log"), env.path("logs/ancient-link.log")).unwrap();
    std::os::unix::fs::symlink(env.path("outside"), env.path("logs/outside-dir")).unwrap();

    let capsule = env.capsule("cleanup", test_programs::CLEANUP, &example_manifest("cleanup"), Some("agent"));
    let run = env.exec(&capsule);
    assert_eq!(run.outcome(), "committed", "{:#}", run.report);
    let deleted: Vec<&str> =
        run.report["plan"]["changes"].as_array().unwrap().iter().map(|c| c["path"].as_str().unwrap()).collect();
    assert_eq!(deleted, ["app/old-1.log", "app/old-2.log"]);
    assert!(!env.path("logs/app/old-1.log").exists() && !env.path("logs/app/old-2.log").exists());
    assert!(env.path("logs/app/new.log").exists(), "new files stay");
    assert!(env.path("logs/old-notes.txt").exists(), "the suffix filter holds");
    assert!(std::fs::symlink_metadata(env.path("logs/ancient-link.log")).unwrap().file_type().is_symlink());
    assert_eq!(std::fs::read_to_string(env.path("outside/ancient.log")).unwrap(), "outside the mount");
    assert_eq!(run.report["verification"]["passed"], true);
}

fn cert(days_from_now: i64) -> String {
    let mut p = rcgen::CertificateParams::new(vec!["svc.example.internal".into()]).unwrap();
    let now = time::OffsetDateTime::now_utc();
    p.not_before = now - time::Duration::days(400);
    p.not_after = now + time::Duration::days(days_from_now);
    let key = rcgen::KeyPair::generate().unwrap();
    p.self_signed(&key).unwrap().pem()
}

#[test]
fn cert_expiry_reports_findings_and_changes_nothing() {
    let env = Env::new();
    with_mount(&env, "certs", false);
    std::fs::create_dir_all(env.path("certs/chain")).unwrap();
    std::fs::write(env.path("certs/expired.pem"), cert(-3)).unwrap();
    std::fs::write(env.path("certs/soon.crt"), cert(10)).unwrap();
    std::fs::write(env.path("certs/chain/bundle.pem"), format!("{}{}", cert(400), cert(20))).unwrap();
    std::fs::write(env.path("certs/broken.pem"), "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
        .unwrap();
    std::fs::write(env.path("certs/README"), "not a cert").unwrap();
    let capsule = env.capsule("certs", test_programs::CERT_EXPIRY, &example_manifest("cert-expiry"), Some("agent"));
    let before = env.host_files();
    let run = env.exec(&capsule);
    assert_eq!(run.outcome(), "no-changes", "{:#}", run.report);
    assert_eq!(run.code, 0);
    let findings = run.report["plan"]["findings"].as_array().unwrap();
    let codes = |code: &str| findings.iter().filter(|f| f["code"] == code).count();
    assert_eq!(codes("cert.expired"), 1);
    assert_eq!(codes("cert.expiring"), 2, "{findings:#?}");
    assert_eq!(codes("cert.unparseable"), 1);
    let summary = findings.iter().find(|f| f["code"] == "cert.summary").unwrap();
    assert!(summary["message"].as_str().unwrap().starts_with("4 certificate(s) in 4 file(s)"), "{summary}");
    assert_eq!(env.host_files(), before, "a diagnostic changes nothing");
    assert!(!run.events().contains(&"applied".to_owned()));
}

#[test]
fn a_failed_verify_rolls_the_commit_back() {
    let env = Env::new();
    let capsule = env.hostile("verify-fail");
    let before = env.host_files();
    let run = env.exec(&capsule);
    assert_eq!(run.outcome(), "rolled-back", "{:#}", run.report);
    assert_eq!(run.code, 4);
    assert_eq!(run.reason(), "verify.failed");
    let events = run.events();
    assert!(
        events.ends_with(&["committed".into(), "verified".into(), "rolled-back".into(), "completed".into()]),
        "{events:?}"
    );
    assert_eq!(env.host_files(), before, "the rollback restores every file");
}

#[test]
fn a_trap_in_verify_rolls_the_commit_back() {
    let env = Env::new();
    let capsule = env.hostile("verify-trap");
    let before = env.host_files();
    let run = env.exec(&capsule);
    assert_eq!(run.outcome(), "rolled-back", "{:#}", run.report);
    assert_eq!(run.reason(), "sandbox.trap");
    assert_eq!(env.host_files(), before);
}

#[test]
fn a_killed_run_is_recorded_as_interrupted_on_the_next_start() {
    let env = Env::new();
    let capsule = env.hostile("slow-apply");
    let before = env.host_files();
    let mut child = std::process::Command::new(crate::harness::BIN)
        .args(["exec", capsule.to_str().unwrap(), "--config", "runner.toml"])
        .current_dir(env.path(""))
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let staging = env.path("state/staging");
    for _ in 0..500 {
        if staging.exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(staging.exists(), "apply never started");
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(env.host_files(), before, "nothing was committed");

    // The next start closes the killed run and the log still verifies.
    let next = env.exec(&env.hostile("none"));
    assert_eq!(next.outcome(), "committed", "{:#}", next.report);
    let log = env.evidence();
    let records = log.as_array().unwrap();
    // The first record of a capsule run (the log opens with the runner's key event).
    let killed = records.iter().find(|r| r["event"]["type"] == "submission").unwrap()["run"].as_str().unwrap();
    let events: Vec<&str> =
        records.iter().filter(|r| r["run"] == killed).map(|r| r["event"]["type"].as_str().unwrap()).collect();
    assert_eq!(events.last(), Some(&"completed"));
    assert!(events.contains(&"interrupted"), "{events:?}");
    assert!(!env.path("state/staging").join(killed).exists(), "stale staging copies are removed");
}

/// A plan that only deletes files keeps no staged file, and still waits for
/// approval above tier 0 (its preview store used to be synced before it
/// existed: `runner.error`); approved, the deletion commits.
#[test]
fn a_tier_2_cleanup_that_only_deletes_waits_for_approval_then_commits() {
    let env = Env::new();
    env.write_policy_config("log-volume", &[("logs", "payments-config", true)]);
    env.write_approvers(&[("alice", &["sre"]), ("bob", &["sre"])], "");
    std::fs::write(env.path("logs/app.1.log"), "old line\n".repeat(50)).unwrap();
    let old = SystemTime::now() - Duration::from_secs(30 * 86_400);
    std::fs::File::options().write(true).open(env.path("logs/app.1.log")).unwrap().set_modified(old).unwrap();
    let capsule = env.capsule("cleanup", test_programs::CLEANUP, &example_manifest("cleanup"), Some("agent"));
    let run = env.exec(&capsule);
    assert_eq!(run.outcome(), "awaiting-approval", "{:#}", run.report);
    assert!(env.path("logs/app.1.log").exists(), "deleted before approval");
    let doc = run.report["document"].as_str().unwrap().to_owned();
    env.sign_approval("approve", &doc, "alice", "alice.json");
    env.sign_approval("approve", &doc, "bob", "bob.json");
    let run = env.exec_with(&capsule, &["alice.json", "bob.json"]);
    assert_eq!(run.outcome(), "committed", "{:#}", run.report);
    assert!(!env.path("logs/app.1.log").exists());
}
