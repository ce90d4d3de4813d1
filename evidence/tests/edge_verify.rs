//! The `edge-verify` binary on synthetic bundles: exit codes and messages.

use std::process::Command;

use edge_evidence::{Level, synth, verify};

const BIN: &str = env!("CARGO_BIN_EXE_edge-verify");

fn write(dir: &std::path::Path, name: &str, bytes: &[u8]) -> String {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p.to_str().unwrap().to_owned()
}

#[test]
fn a_valid_bundle_verifies_and_a_tampered_one_fails_naming_the_record() {
    let s = synth::full_bundle("synthetic.example/runner-1", 20);
    let keys = edge_evidence::parse_keys(&s.vkey).unwrap();
    let v = verify(&s.bundle, &keys, Level::Full).unwrap();
    assert_eq!((v.record_count, v.runs.len()), (202, 20));

    let dir = tempfile::tempdir().unwrap();
    let key = write(dir.path(), "runner.vkey", format!("# the runner\n{}\n", s.vkey).as_bytes());
    let good = write(dir.path(), "good.bundle", &s.bundle);
    let out = Command::new(BIN).args([&good, "--key", &key]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("verified (Full): 202 records, 20 runs"));

    // Change the tier of one recorded decision, keeping the line's length.
    let text = String::from_utf8(s.bundle.clone()).unwrap();
    let at = text.find("\"tier\":0").unwrap();
    let mut bad = s.bundle.clone();
    bad[at + 7] = b'3';
    let bad = write(dir.path(), "bad.bundle", &bad);
    let out = Command::new(BIN).args([&bad, "--key", &key]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("FAILED: record 5") && err.contains("record.chain") && err.contains("record 4 hashes"),
        "{err}"
    );

    // Another runner's key: the checkpoint signature is refused.
    let other = synth::full_bundle("synthetic.example/runner-1", 1);
    let other_key = write(dir.path(), "other.vkey", other.vkey.as_bytes());
    let out = Command::new(BIN).args([&good, "--key", &other_key]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("checkpoint.signature"));

    // Usage errors are 2: no key, unreadable key file.
    assert_eq!(Command::new(BIN).arg(&good).output().unwrap().status.code(), Some(2));
    let out = Command::new(BIN).args([&good, "--key", &good]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("runner keys"));
}

#[test]
fn the_report_writes_a_self_contained_page() {
    let s = synth::full_bundle("synthetic.example/runner-1", 3);
    let dir = tempfile::tempdir().unwrap();
    let key = write(dir.path(), "runner.vkey", s.vkey.as_bytes());
    let good = write(dir.path(), "good.bundle", &s.bundle);
    let html = dir.path().join("report.html");
    let out =
        Command::new(BIN).args(["report", &good, "--key", &key, "--html", html.to_str().unwrap()]).output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("EVIDENCE REPORT: VERIFIED"), "{text}");
    assert_eq!(text.matches("\nproposal p-").count(), 3);
    assert!(text.contains(&format!("by edge-verify {}", env!("CARGO_PKG_VERSION"))), "{text}");
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(page.contains("id=\"banner\" class=\"verified\""));
    for external in ["src=", "href=\"http", "<script", "<link", "url("] {
        assert!(!page.contains(external), "the page must load nothing: found {external}");
    }
}

#[test]
fn json_version_filters_and_progress() {
    let s = synth::bundle(
        "synthetic.example/runner-1",
        &synth::Spec { runs: 8, tier2_every: Some(2), ..synth::Spec::default() },
    );
    let dir = tempfile::tempdir().unwrap();
    let key = write(dir.path(), "runner.vkey", s.vkey.as_bytes());
    let good = write(dir.path(), "good.bundle", &s.bundle);

    let out = Command::new(BIN).arg("--version").output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(String::from_utf8_lossy(&out.stdout), format!("edge-verify {}\n", env!("CARGO_PKG_VERSION")));

    // --json: the result and each listed proposal; a filter lists fewer,
    // verification still covers everything.
    let json = |extra: &[&str]| {
        let out = Command::new(BIN).args([&good, "--key", &key, "--json"]).args(extra).output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
        assert!(out.stderr.is_empty(), "no progress unless asked (stderr is not a terminal here)");
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let all = json(&[]);
    assert_eq!((all["verified"].as_bool(), all["runs"].as_u64()), (Some(true), Some(8)));
    assert_eq!(all["proposals_total"], 6);
    assert_eq!(all["summary"]["by_tier"]["2"]["committed"], 2);
    let tier2 = json(&["--tier", "2", "--state", "committed"]);
    assert_eq!((tier2["proposals_listed"].as_u64(), tier2["runs"].as_u64()), (Some(2), Some(8)));
    assert_eq!(tier2["filter"], "tier 2; state committed");
    let none = json(&["--until-time", "2000-01-01"]);
    assert_eq!(none["proposals_listed"], 0);

    // A failed bundle in JSON: the failure, exit 1.
    let mut bad = s.bundle.clone();
    let n = bad.len();
    bad[n / 2] ^= 1;
    let bad = write(dir.path(), "bad.bundle", &bad);
    let out = Command::new(BIN).args([&bad, "--key", &key, "--json"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["verified"], false);
    assert!(v["failure"]["check"].as_str().is_some());

    // Progress on request: one line per step on a non-terminal.
    let out = Command::new(BIN).args([&good, "--key", &key, "--progress"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let err = String::from_utf8_lossy(&out.stderr);
    for step in ["chain", "artifacts", "records", "runs 8/8"] {
        assert!(err.contains(&format!("verifying: {step}")), "{err}");
    }

    // A filtered HTML report says what it left out.
    let html = dir.path().join("r.html");
    let out = Command::new(BIN)
        .args(["report", &good, "--key", &key, "--tier", "0", "--html", html.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(page.contains("4 of 6 (filter: tier 0)"), "{page}");
    // Filters without a report or --json are a usage error.
    let out = Command::new(BIN).args([&good, "--key", &key, "--tier", "0"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}
