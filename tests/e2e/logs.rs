//! The operational log of `serve`: JSON lines off a terminal by default, an
//! access line per request, a line per run transition with the proposal id,
//! reason codes and timings; capsule text never raw; text format on request.

use std::process::Stdio;

use hyper::StatusCode;
use serde_json::Value;

use crate::server::{Server, capsule, rt, setup, submit};

/// Everything `serve` logged to `path`, each line parsed as JSON (a line
/// that is not JSON fails the test).
fn json_lines(path: &std::path::Path) -> Vec<Value> {
    json_lines_of(&std::fs::read_to_string(path).unwrap())
}

/// Each line of `text` parsed as JSON (a line that is not JSON fails the test).
fn json_lines_of(text: &str) -> Vec<Value> {
    text.lines()
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}")))
        .collect()
}

/// Wait until the log holds a line matching `pred` (the logger writes from
/// its own thread), up to 10 s.
fn wait_for(path: &std::path::Path, pred: impl Fn(&Value) -> bool) -> Vec<Value> {
    for _ in 0..200 {
        let lines = json_lines(path);
        if lines.iter().any(&pred) {
            return lines;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    panic!("no such line in:\n{}", std::fs::read_to_string(path).unwrap());
}

#[test]
fn serve_logs_json_lines_with_access_and_run_transitions_and_no_raw_capsule_text() {
    let env = setup(64);
    let log_path = env.path("serve.log");
    let file = std::fs::File::create(&log_path).unwrap();
    // No EDGE_RUNNER_LOG: the default for `serve` is info, JSON off a terminal.
    let server = Server::start_with(&env, 1, Stdio::from(file), &[]);
    let tier0 = capsule(&env, "none", false);
    let hostile = capsule(&env, "escape-content", false);
    let (id, hostile_id) = rt().block_on(async {
        let mut agent = server.client(&env, "agent");
        let v = submit(&mut agent, &tier0).await.json().unwrap();
        let id = v["id"].as_str().unwrap().to_owned();
        let h = submit(&mut agent, &hostile).await.json().unwrap();
        // Refused: the agent may not download the evidence.
        assert_eq!(agent.get("/v1/evidence/export").await.unwrap().status, StatusCode::FORBIDDEN);
        // A path that tries to smuggle text (percent-encoded, as HTTP requires).
        let _ = agent.get("/v1/proposals/%1b%5b2J%e2%80%ae").await.unwrap();
        // A valid certificate whose identity is hostile text: refused, logged.
        let mut hostile_cn = server.client(&env, "hostile-cn");
        let r = hostile_cn.get("/v1/evidence/export").await.unwrap();
        assert_eq!(r.status, StatusCode::FORBIDDEN);
        (id, h["id"].as_str().unwrap().to_owned())
    });
    // The access line of a refused request is written after its response:
    // wait for it as well as for the last run to finish.
    wait_for(&log_path, |l| l["identity"] == crate::server::HOSTILE_CN);
    let lines = wait_for(&log_path, |l| l["message"] == "run finished" && l["proposal"] == hostile_id.as_str());

    // Every line is structured: time, level, target, message.
    for l in &lines {
        for key in ["timestamp", "level", "target", "message"] {
            assert!(l.get(key).is_some(), "{key} missing: {l}");
        }
    }
    // The access log: the refused export, with who asked and the status.
    let refused = lines
        .iter()
        .find(|l| l["target"] == "edge_runner::access" && l["path"] == "/v1/evidence/export")
        .unwrap_or_else(|| panic!("no access line for the export: {lines:#?}"));
    assert_eq!(refused["status"], 403);
    assert_eq!(refused["method"], "GET");
    assert_eq!(refused["listener"], "api");
    assert_eq!(refused["identity"], "spiffe://test.example/agent/remediator");
    assert!(refused["ms"].as_f64().is_some() && refused["peer"].as_str().unwrap().starts_with("127.0.0.1:"));
    let submits = lines.iter().filter(|l| l["target"] == "edge_runner::access" && l["path"] == "/v1/proposals");
    assert!(submits.clone().count() >= 2 && submits.clone().all(|l| l["status"] == 201), "{lines:#?}");

    // Each run transition of the tier-0 run, in order, with its proposal id.
    let events: Vec<&str> = lines
        .iter()
        .filter(|l| l["target"] == "edge_runner::run" && l["message"] == "recorded" && l["proposal"] == id.as_str())
        .map(|l| l["event"].as_str().unwrap())
        .collect();
    for want in ["submission", "admitted", "decision", "planned", "authorized", "applied", "committed", "completed"] {
        assert!(events.contains(&want), "no `{want}` transition for {id}: {events:?}");
    }
    let decision = lines.iter().find(|l| l["event"] == "decision" && l["proposal"] == id.as_str()).unwrap();
    assert_eq!(decision["tier"], 0);
    let finished = lines.iter().find(|l| l["message"] == "run finished" && l["proposal"] == id.as_str()).unwrap();
    assert_eq!(finished["outcome"], "committed");
    assert_eq!(finished["agent"], "spiffe://test.example/agent/remediator");
    assert!(finished["ms"].as_f64().unwrap() > 0.0);

    // The hostile identity is logged — as data: the JSON value decodes to
    // exactly the name, and the line holds none of its raw characters.
    let line = std::fs::read_to_string(&log_path)
        .unwrap()
        .lines()
        .find(|l| l.contains("txt.exe"))
        .unwrap_or_else(|| panic!("no line names the hostile identity"))
        .to_owned();
    let v: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["identity"], crate::server::HOSTILE_CN, "{line}");
    assert_eq!(v["status"], 403);
    assert!(!line.contains('\n') && !line.contains('\u{1b}') && !line.contains('\u{202e}'), "{line:?}");

    // Capsule- and client-supplied text never arrives raw; no key material.
    let raw = std::fs::read_to_string(&log_path).unwrap();
    for bad in ['\u{1b}', '\u{7}', '\u{9b}', '\u{202e}'] {
        assert!(!raw.contains(bad), "{:?} reached the log", bad);
    }
    assert!(!raw.contains("BEGIN") && !raw.contains("PRIVATE KEY"), "key material in the log");
    drop(server);
}

#[test]
fn text_format_on_request_has_no_colour_codes_and_a_bad_format_is_named() {
    let env = setup(64);
    let log_path = env.path("serve.log");
    let file = std::fs::File::create(&log_path).unwrap();
    let server = Server::start_with(&env, 1, Stdio::from(file), &[("EDGE_RUNNER_LOG_FORMAT", "text")]);
    rt().block_on(async {
        let mut agent = server.client(&env, "agent");
        assert_eq!(agent.get("/healthz").await.unwrap().status, StatusCode::OK);
        let mut hostile_cn = server.client(&env, "hostile-cn");
        assert_eq!(hostile_cn.get("/v1/evidence/export").await.unwrap().status, StatusCode::FORBIDDEN);
    });
    let mut text = String::new();
    for _ in 0..200 {
        text = std::fs::read_to_string(&log_path).unwrap();
        if text.contains("/healthz") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    for _ in 0..200 {
        if text.contains("txt.exe") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
        text = std::fs::read_to_string(&log_path).unwrap();
    }
    // The hostile identity stays on its line and forges none.
    let hostile = text.lines().filter(|l| l.contains("txt.exe")).collect::<Vec<_>>();
    assert_eq!(hostile.len(), 1, "{text}");
    assert!(hostile[0].contains("status=403") && !hostile[0].contains('\u{202e}'), "{text}");
    assert!(!text.lines().any(|l| l.starts_with("INFO edge_runner::run: run finished")), "a forged line:\n{text}");
    let line = text.lines().find(|l| l.contains("/healthz")).unwrap_or_else(|| panic!("{text}"));
    assert!(line.contains("INFO") && line.contains("status=200") && !line.starts_with('{'), "{line}");
    assert!(!text.contains('\u{1b}'), "colour codes in a file:\n{text}");
    drop(server);

    // An unknown format falls back (JSON off a terminal) and says why.
    let file = std::fs::File::create(&log_path).unwrap();
    let server = Server::start_with(&env, 1, Stdio::from(file), &[("EDGE_RUNNER_LOG_FORMAT", "xml")]);
    let lines = wait_for(&log_path, |l| l["level"] == "WARN");
    let warn = lines.iter().find(|l| l["level"] == "WARN").unwrap();
    assert!(warn["message"].as_str().unwrap().contains("EDGE_RUNNER_LOG_FORMAT=`xml` is not a log format"), "{warn}");
    drop(server);
}

#[test]
fn a_command_other_than_serve_logs_a_line_per_record_in_order_and_goes_on_without_stderr() {
    // `exec` writes its lines directly (no writer thread, nothing dropped):
    // at `info`, one `recorded` line per evidence record, none missing.
    let env = crate::harness::Env::new();
    let capsule = env.hostile("none");
    let out = env.cli_env(
        &["exec", capsule.to_str().unwrap(), "--config", "runner.toml"],
        &[("EDGE_RUNNER_LOG", "info"), ("EDGE_RUNNER_LOG_FORMAT", "json")],
    );
    assert_eq!(out.code(), 0, "{}", out.stderr());
    let raw = out.stderr();
    let lines = json_lines_of(&raw);
    let seqs: Vec<u64> =
        lines.iter().filter(|l| l["message"] == "recorded").map(|l| l["seq"].as_u64().unwrap()).collect();
    let records = env.evidence().as_array().unwrap().len() as u64;
    assert_eq!(seqs, (0..records).collect::<Vec<_>>(), "a line per record, in order:\n{raw}");
    let events: Vec<&str> = lines.iter().filter_map(|l| l["event"].as_str()).collect();
    for want in ["runner-started", "submission", "admitted", "decision", "planned", "completed"] {
        assert!(events.contains(&want), "no `{want}` line: {events:?}");
    }

    // Standard error that cannot be written (a full disk; a closed pipe is
    // the same error): the lines are lost, the run is not. (The formatter
    // used to report the failed write on standard error itself, and that
    // panic, on the evidence writer's thread, stopped the command.)
    std::fs::remove_file(env.path("data/ok.txt")).unwrap(); // what the first run made: the capsule makes it again
    let full = std::fs::OpenOptions::new().write(true).open("/dev/full").unwrap();
    let run = std::process::Command::new(crate::harness::BIN)
        .args(["exec", capsule.to_str().unwrap(), "--config", "runner.toml"])
        .env("EDGE_RUNNER_LOG", "info")
        .current_dir(env.path(""))
        .stderr(full)
        .output()
        .unwrap();
    assert_eq!(run.status.code(), Some(0), "{}", String::from_utf8_lossy(&run.stdout));
    assert!(String::from_utf8_lossy(&run.stdout).contains("outcome"), "{}", String::from_utf8_lossy(&run.stdout));
    let after = env.evidence();
    let last = after.as_array().unwrap().last().unwrap();
    assert_eq!(last["event"]["type"], "completed", "{last:#}");
}
