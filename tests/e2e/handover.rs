//! `edge-runner exec` while the runner serves the same state directory: the
//! run is handed to the serving process over `<state>/exec.sock`, governed
//! by the same documents or not at all, and reported, recorded and exited
//! as `exec` itself would. Requests that are not what `exec` sends are
//! answered with an error and run nothing.

use std::io::{Read as _, Write as _};
use std::os::unix::net::UnixStream;

use serde_json::Value;

use crate::harness::Env;
use crate::server::{Server, capsule, gauge, setup, setup_running, submit_in_thread};

const HANDED: &str = "exec: run by the runner serving";

/// The submissions in the log (read while the runner serves: `evidence
/// show` reads the store without taking it).
fn submissions(env: &Env) -> usize {
    env.evidence().as_array().unwrap().iter().filter(|r| r["event"]["type"] == "submission").count()
}

fn runner_starts(env: &Env) -> usize {
    env.evidence().as_array().unwrap().iter().filter(|r| r["event"]["type"] == "runner-started").count()
}

#[test]
fn exec_while_the_runner_serves_hands_the_run_over_and_reports_it_as_exec_does() {
    let env = setup(64);
    // Alone first: what `exec` prints and records when it runs the capsule itself.
    let tier0 = capsule(&env, "none", false);
    let alone = env.exec(&tier0);
    assert_eq!(alone.outcome(), "committed", "{:#}", alone.report);
    assert!(!alone.stderr.contains(HANDED), "{}", alone.stderr);
    std::fs::remove_file(env.path("data/ok.txt")).unwrap();
    // A forged capsule: one byte of its manifest changed after signing.
    let forged = env.path("forged.capsule");
    let mut bytes = std::fs::read(&tier0).unwrap();
    let at = bytes.windows(4).position(|w| w == b"none").unwrap();
    bytes[at] = b'N';
    std::fs::write(&forged, bytes).unwrap();
    let forged_alone = env.exec(&forged);
    assert_eq!(forged_alone.code, 3, "{:#}", forged_alone.report);

    let server = Server::start(&env);
    let (starts, runs) = (runner_starts(&env), submissions(&env));
    let handed = env.exec(&tier0);
    assert!(handed.stderr.contains(HANDED), "{}", handed.stderr);
    assert_eq!(handed.code, 0);
    assert_eq!(handed.outcome(), "committed", "{:#}", handed.report);
    assert_eq!(std::fs::read_to_string(env.path("data/ok.txt")).unwrap(), "ok");
    // The same run as exec's own: the same records, no agent named, the
    // receipt beside exec's.
    assert_eq!(handed.events(), alone.events());
    assert!(handed.report.get("submitted_by").is_none_or(Value::is_null), "{:#}", handed.report);
    let run = handed.report["run"].as_str().unwrap();
    let receipt = std::fs::read_to_string(env.path(&format!("state/receipts/{run}.tlog-proof"))).unwrap();
    assert_eq!(receipt, handed.report["receipt"].as_str().unwrap());
    // Run by the serving process: no start of another runner in between.
    assert_eq!(runner_starts(&env), starts);
    assert_eq!(submissions(&env), runs + 1);
    std::fs::remove_file(env.path("data/ok.txt")).unwrap();

    // Text, as exec prints it.
    let text = env.cli(&["exec", tier0.to_str().unwrap(), "--config", "runner.toml"]).success();
    let out = String::from_utf8_lossy(&text.0.stdout).into_owned();
    assert!(out.contains("outcome      committed and verified"), "{out}");
    assert!(out.contains("receipt      "), "{out}");
    assert!(String::from_utf8_lossy(&text.0.stderr).contains(HANDED));
    std::fs::remove_file(env.path("data/ok.txt")).unwrap();

    // Tier 2: waits (exit 5), then runs with exec's approvals, handed over too.
    let tier2 = capsule(&env, "none", true);
    let waiting = env.exec(&tier2);
    assert_eq!((waiting.code, waiting.outcome()), (5, "awaiting-approval"), "{:#}", waiting.report);
    assert!(waiting.stderr.contains(HANDED));
    let doc = waiting.report["document"].as_str().unwrap().to_owned();
    let id = waiting.report["id"].as_str().unwrap().to_owned();
    // Kept for approvals from any intake, as a submission's capsule is.
    assert!(env.path(&format!("state/proposals/{id}.capsule")).exists());
    assert!(!env.path("data/ok.txt").exists());
    env.sign_approval("approve", &doc, "alice", "alice.json");
    env.sign_approval("approve", &doc, "carol", "carol.json");
    let approved = env.exec_with(&tier2, &["alice.json", "carol.json"]);
    assert!(approved.stderr.contains(HANDED));
    assert_eq!((approved.code, approved.outcome()), (0, "committed"), "{:#}", approved.report);
    assert_eq!(approved.events_of("approval-accepted").len(), 2);
    assert_eq!(std::fs::read_to_string(env.path("data/ok.txt")).unwrap(), "ok");
    // Replayed: refused as exec refuses it.
    let again = env.exec_with(&tier2, &["alice.json", "carol.json"]);
    assert_eq!((again.code, again.reason()), (3, "authorize.proposal_executed"), "{:#}", again.report);

    // The forged capsule is refused and recorded as exec alone refused it.
    let refused = env.exec(&forged);
    assert!(refused.stderr.contains(HANDED));
    assert_eq!(refused.code, 3, "{:#}", refused.report);
    assert_eq!(refused.reason(), forged_alone.reason());
    assert_eq!(refused.events(), forged_alone.events());

    // Stopped, the runner leaves no socket; exec runs alone again.
    server.stop();
    assert!(!env.path("state/exec.sock").exists());
    std::fs::remove_file(env.path("data/ok.txt")).unwrap();
    let alone = env.exec(&tier0);
    assert_eq!(alone.outcome(), "committed");
    assert!(!alone.stderr.contains(HANDED));
    std::fs::remove_file(env.path("data/ok.txt")).unwrap();
    // Killed, it leaves its socket, which nobody answers on: exec runs
    // alone, and the next start replaces it.
    let server = Server::start(&env);
    server.kill();
    assert!(env.path("state/exec.sock").exists());
    let alone = env.exec(&tier0);
    assert_eq!(alone.outcome(), "committed", "{:#}", alone.report);
    assert!(!alone.stderr.contains(HANDED));
    let server = Server::start(&env);
    std::fs::remove_file(env.path("data/ok.txt")).unwrap();
    assert!(env.exec(&tier0).stderr.contains(HANDED));
    server.stop();
    // And the whole log, handed-over runs included, verifies.
    env.cli(&["evidence", "check", "--full", "--config", "runner.toml"]).success();
}

#[test]
fn a_runner_governed_by_other_documents_than_exec_names_runs_nothing_until_reloaded() {
    let env = setup(64);
    let server = Server::start(&env);
    let tier0 = capsule(&env, "none", false);
    let runs = submissions(&env);
    // The policy changed on disk, not yet in force in the runner.
    let policy = env.path("policy.toml");
    let text = std::fs::read_to_string(&policy).unwrap();
    std::fs::write(&policy, format!("{text}\n# reviewed 2026-12-07\n")).unwrap();
    let err = env.exec_refused(&tier0);
    assert!(err.contains("governs with other documents than your --config names (policy)"), "{err}");
    assert!(err.contains("nothing ran") && err.contains("Reload"), "{err}");
    assert!(!env.path("data/ok.txt").exists());
    assert_eq!(submissions(&env), runs, "nothing was submitted");

    // The system graph edited so that it no longer compiles. To hand a run
    // over, exec only hashes the graph (the serving runner compiled its
    // own): the difference refuses it, nothing runs, and exec names the
    // graph's own error (a reload would be refused for it).
    let graph = env.path("graph.toml");
    let graph_text = std::fs::read_to_string(&graph).unwrap();
    std::fs::write(&graph, format!("{graph_text}\n[[nodes]]\nid = \"has space\"\nkind = \"service\"\n")).unwrap();
    let err = env.exec_refused(&tier0);
    assert!(err.contains("graph ./graph.toml is invalid: node id `has space` is invalid"), "{err}");
    assert!(!err.contains("Reload"), "{err}");
    assert!(!env.path("data/ok.txt").exists());
    std::fs::write(&graph, &graph_text).unwrap();
    assert_eq!(submissions(&env), runs, "nothing was submitted");

    // The runner config itself (a comment is a change to the file).
    let config = std::fs::read_to_string(env.path("runner.toml")).unwrap();
    std::fs::write(env.path("runner.toml"), format!("{config}\n# owner: payments-sre\n")).unwrap();
    let err = String::from_utf8_lossy(&env.cli(&["exec", tier0.to_str().unwrap(), "--config", "runner.toml"]).0.stderr)
        .into_owned();
    assert!(err.contains("(runner config, policy)"), "{err}");

    // Reloaded: the file is in force, and the run goes through.
    server.signal("HUP");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let run = loop {
        let run = env.cli(&["exec", tier0.to_str().unwrap(), "--config", "runner.toml", "--json"]);
        if run.0.status.success() || std::time::Instant::now() > deadline {
            break run;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let report: Value = serde_json::from_slice(&run.success().0.stdout).unwrap();
    assert_eq!(report["state"], "committed", "{report:#}");
    assert_eq!(submissions(&env), runs + 1);
    std::fs::remove_file(env.path("data/ok.txt")).unwrap();

    // What a reload does not apply (a mount's path): reloaded, the runner
    // still runs with the mount it started with, so exec is refused until
    // it restarts.
    std::fs::create_dir_all(env.path("ro2")).unwrap();
    let config = std::fs::read_to_string(env.path("runner.toml")).unwrap();
    assert!(config.contains("[mounts.ro]\npath = \"ro\"\n"), "{config}");
    std::fs::write(
        env.path("runner.toml"),
        config.replace("[mounts.ro]\npath = \"ro\"\n", "[mounts.ro]\npath = \"ro2\"\n"),
    )
    .unwrap();
    server.signal("HUP");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let err = loop {
        let out = env.cli(&["exec", tier0.to_str().unwrap(), "--config", "runner.toml"]);
        let err = String::from_utf8_lossy(&out.0.stderr).into_owned();
        if err.contains("started from another runner config") || std::time::Instant::now() > deadline {
            break err;
        }
        assert_eq!(out.0.status.code(), Some(1), "{err}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert!(err.contains("what only a restart applies") && err.contains("nothing ran"), "{err}");
    assert!(!env.path("data/ok.txt").exists());
    assert_eq!(submissions(&env), runs + 1, "nothing was submitted");
    server.stop();
    let server = Server::start(&env);
    let run = env.exec(&tier0);
    assert!(run.stderr.contains(HANDED));
    assert_eq!(run.outcome(), "committed", "{:#}", run.report);

    // The same text, resolving elsewhere: the mount's directory is now a
    // link to another one. The runner writes where it resolved it at
    // start; exec alone would write where the link points. Refused.
    std::fs::create_dir_all(env.path("data2")).unwrap();
    std::fs::rename(env.path("data"), env.path("data.was")).unwrap();
    std::os::unix::fs::symlink(env.path("data2"), env.path("data")).unwrap();
    let err = env.exec_refused(&tier0);
    assert!(err.contains("started from another runner config"), "{err}");
    assert!(!env.path("data2/ok.txt").exists() && env.path("data.was/ok.txt").exists());
    server.stop();
}

/// A reload that comes while a handed-over run waits for its slot: the run
/// is checked again once it has one, against the governance it would run
/// under, and refused (its request was checked on arrival, before the
/// reload, and passed).
#[test]
fn a_reload_while_a_handed_over_run_waits_for_its_slot_refuses_the_run_before_it_starts() {
    // One run at a time: a sleeper holds the slot.
    let env = setup_running(64, 1);
    let server = Server::start(&env);
    let manifest = Env::hostile_manifest("sleep", "").replace("wall_ms = 2500", "wall_ms = 15000");
    assert!(manifest.contains("wall_ms = 15000"), "{manifest}");
    let sleeper = env.capsule("slot-holder", test_programs::HOSTILE, &manifest, Some("agent"));
    let tier0 = capsule(&env, "none", false);
    let runs = submissions(&env);
    let metric = |name: &str| gauge(&server.metrics(&env), name);
    let until = |what: &str, done: &dyn Fn() -> bool| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(12);
        while !done() {
            assert!(std::time::Instant::now() < deadline, "timed out waiting until {what}");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    };
    let held = submit_in_thread(&server, &env, &sleeper);
    until("the sleeper runs", &|| metric("edge_runner_capsules_executing") == 1);
    std::thread::scope(|s| {
        // Its request names the documents in force now, and waits for the slot.
        let exec = s.spawn(|| env.cli(&["exec", tier0.to_str().unwrap(), "--config", "runner.toml"]));
        until("exec waits for the slot", &|| metric("edge_runner_queue_depth") == 1);
        let policy = env.path("policy.toml");
        let text = std::fs::read_to_string(&policy).unwrap();
        std::fs::write(&policy, format!("{text}\n# tightened while a run waited\n")).unwrap();
        server.signal("HUP");
        let reloaded = || env.evidence().as_array().unwrap().iter().any(|r| r["event"]["type"] == "config-reloaded");
        until("the reload is recorded", &reloaded);
        // (The test's premise: the reload came while exec still waited.)
        assert_eq!(metric("edge_runner_queue_depth"), 1, "the sleeper ended before the reload");
        let out = exec.join().unwrap();
        let err = String::from_utf8_lossy(&out.0.stderr).into_owned();
        assert_eq!(out.0.status.code(), Some(1), "{err}");
        assert!(err.contains("governs with other documents than your --config names (policy)"), "{err}");
        assert!(err.contains("nothing ran"), "{err}");
    });
    let (slept, _) = held.join().unwrap();
    assert_eq!(slept.status, hyper::StatusCode::CREATED, "{}", slept.error_message());
    // Only the sleeper was submitted; exec's capsule never ran.
    assert_eq!(submissions(&env), runs + 1);
    assert!(!env.path("data/ok.txt").exists());
    // With the file in force, the same exec runs.
    let run = env.exec(&tier0);
    assert!(run.stderr.contains(HANDED), "{}", run.stderr);
    assert_eq!(run.outcome(), "committed", "{:#}", run.report);
    server.stop();
}

#[test]
fn a_signer_key_file_replaced_on_disk_is_a_change_of_governance() {
    // Signers in runner.toml (no policy), each a key file.
    let env = Env::new();
    crate::server::pki(&env.path("tls"));
    let config = std::fs::read_to_string(env.path("runner.toml")).unwrap();
    std::fs::write(
        env.path("runner.toml"),
        format!(
            "{config}\n[server]\nlisten = \"127.0.0.1:0\"\ncert = \"tls/server.pem\"\nkey = \"tls/server.key\"\n\
             client_ca = \"tls/ca.pem\"\nagents = [\"spiffe://test.example/agent/remediator\"]\n"
        ),
    )
    .unwrap();
    let server = Server::start(&env);
    let capsule = env.hostile("none");
    let run = env.exec(&capsule);
    assert!(run.stderr.contains(HANDED));
    assert_eq!(run.outcome(), "committed", "{:#}", run.report);
    // Another key in the file the config names: the runner still trusts
    // the old one until it reloads, so exec is refused.
    std::fs::copy(env.path("keys/other.pub"), env.path("keys/agent.pub")).unwrap();
    let err = env.exec_refused(&capsule);
    assert!(err.contains("governs with other documents than your --config names (trusted signers)"), "{err}");
    server.stop();
}

/// What opens a request: the magic line, sent with `pass` (a descriptor)
/// or without one, or with two.
enum Opening<'a> {
    With(&'a std::fs::File, &'a [u8]),
    Without(&'a [u8]),
    WithTwo(&'a std::fs::File, &'a std::fs::File),
}

/// Open a request on the runner's socket, send `rest`, and read the answer.
fn raw(env: &Env, opening: Opening<'_>, rest: &[u8], close_after: bool) -> Value {
    use std::os::fd::AsRawFd as _;
    let mut s = UnixStream::connect(env.path("state/exec.sock")).unwrap();
    // The runner may answer and close before reading everything.
    let _ = match opening {
        Opening::With(file, first) => {
            let n = edge_runner::intake::local::send_with_fd(s.as_raw_fd(), first, file.as_raw_fd()).unwrap();
            s.write_all(&first[n..])
        }
        Opening::Without(first) => s.write_all(first),
        Opening::WithTwo(a, b) => {
            let n = edge_runner::intake::local::send_with_fds(s.as_raw_fd(), MAGIC, &[a.as_raw_fd(), b.as_raw_fd()])
                .unwrap();
            s.write_all(&MAGIC[n..])
        }
    };
    let _ = s.write_all(rest);
    if close_after {
        s.shutdown(std::net::Shutdown::Write).unwrap();
    }
    let mut len = [0u8; 4];
    s.read_exact(&mut len).unwrap();
    let mut body = vec![0; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut body).unwrap();
    serde_json::from_slice(&body).unwrap()
}

const MAGIC: &[u8] = b"edge-runner exec 2\n";

/// A header frame (its length, then the JSON).
fn frame(header: &Value) -> Vec<u8> {
    let h = serde_json::to_vec(header).unwrap();
    let mut b = (h.len() as u32).to_be_bytes().to_vec();
    b.extend_from_slice(&h);
    b
}

#[test]
fn requests_that_are_not_what_exec_sends_are_answered_with_an_error_and_run_nothing() {
    let env = setup(64);
    let server = Server::start(&env);
    let runs = submissions(&env);
    let lock = || std::fs::OpenOptions::new().read(true).write(true).open(env.path("state/evidence/lock")).unwrap();
    let program = format!("edge-runner {} ({})", edge_runner::attest::VERSION, edge_runner::attest::REVISION);
    // Digests of no document in force: the checks of the request's shape
    // come first, and a well-formed request is refused for them.
    let zero = format!("sha256:{}", "0".repeat(64));
    let header = |capsule: u64, approvals: Vec<u64>| {
        serde_json::json!({"program": program, "json": true, "governance": {"config": zero}, "signers": zero,
            "fixed": zero, "capsule": capsule, "approvals": approvals})
    };
    let error = |v: &Value| {
        assert_eq!(v["exit"], 1, "{v:#}");
        v["error"].as_str().unwrap().to_owned()
    };
    let (l, read_only, other) = (
        lock(),
        std::fs::File::open(env.path("state/evidence/lock")).unwrap(),
        std::fs::OpenOptions::new().read(true).write(true).open(env.path("runner.toml")).unwrap(),
    );
    let well_formed = frame(&header(0, vec![]));
    // A well-formed header with one field set (or added).
    let with = |field: &str, value: &str| {
        let mut h = header(0, vec![]);
        h[field] = value.into();
        frame(&h)
    };
    let cases: Vec<(Opening<'_>, Vec<u8>, bool, &str)> = vec![
        // Who may: only a process that may write the store.
        (Opening::Without(MAGIC), well_formed.clone(), false, "did not pass the evidence store's lock file"),
        (Opening::With(&read_only, MAGIC), well_formed.clone(), false, "lock file open for writing"),
        (Opening::With(&other, MAGIC), well_formed.clone(), false, "lock file open for writing"),
        (Opening::WithTwo(&l, &l), well_formed.clone(), false, "more than the one descriptor"),
        // What: exec's protocol, from this same program.
        (Opening::With(&l, b"GET / HTTP/1.1\r\nhost: x\r\n\r\n"), vec![], true, "not an `edge-runner exec` request"),
        (Opening::With(&l, MAGIC), u32::MAX.to_be_bytes().to_vec(), false, "a request header of 4294967295 bytes"),
        (
            Opening::With(&l, MAGIC),
            with("program", "edge-runner 0.0.1 (0000000)"),
            false,
            "restart the runner after an upgrade",
        ),
        (Opening::With(&l, MAGIC), frame(&header(1 << 40, vec![])), false, "a capsule of 1099511627776 bytes"),
        (Opening::With(&l, MAGIC), frame(&header(0, vec![1; 65])), false, "at most 64 approvals"),
        (Opening::With(&l, MAGIC), frame(&header(0, vec![(1 << 20) + 1])), false, "at most 64 approvals of at most"),
        (Opening::With(&l, MAGIC), with("run", "r-1"), false, "the request header does not parse"),
        // Cut short: a capsule of 1,000 bytes announced, 10 sent.
        (
            Opening::With(&l, MAGIC),
            [frame(&header(1000, vec![])), vec![0; 10]].concat(),
            true,
            "after 10 of 1000 bytes",
        ),
        // Well formed, but naming another file than the runner started from.
        (Opening::With(&l, MAGIC), well_formed.clone(), false, "started from another runner config"),
    ];
    for (opening, rest, close, expected) in cases {
        let e = error(&raw(&env, opening, &rest, close));
        assert!(e.contains(expected), "expected `{expected}` in: {e}");
    }
    assert_eq!(submissions(&env), runs, "nothing ran");
    // The runner is still serving, and takes exec's runs.
    let run = env.exec(&capsule(&env, "none", false));
    assert_eq!(run.outcome(), "committed", "{:#}", run.report);
    assert!(run.stderr.contains(HANDED));
    server.stop();
}

#[test]
fn the_socket_is_private_to_the_runner_and_replaces_a_stale_one_but_nothing_else() {
    use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};
    let env = setup(64);
    // A stale socket (its process gone) is replaced.
    std::fs::create_dir_all(env.path("state")).unwrap();
    drop(std::os::unix::net::UnixListener::bind(env.path("state/exec.sock")).unwrap());
    let server = Server::start(&env);
    let m = std::fs::symlink_metadata(env.path("state/exec.sock")).unwrap();
    assert!(m.file_type().is_socket());
    assert_eq!(m.permissions().mode() & 0o777, 0o600);
    server.stop();
    // Anything else there is refused, never removed.
    std::fs::write(env.path("state/exec.sock"), "not a socket").unwrap();
    let mut serve = std::process::Command::new(crate::harness::BIN)
        .args(["serve", "--config", "runner.toml"])
        .current_dir(env.path(""))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while serve.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = serve.kill();
            panic!("serve started over a regular file where its socket goes");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let out = serve.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(err.contains("exec.sock is a regular file") && err.contains("move it away"), "{err}");
    assert_eq!(std::fs::read_to_string(env.path("state/exec.sock")).unwrap(), "not a socket");
}
