//! The spool intake end to end (`[spool]`, no `[server]`): the real binary
//! takes capsules and approvals from an inbox directory and writes answers
//! to an outbox. Half-written files, the same name twice, hostile and
//! oversized files, a full outbox, and SIGKILL at any point: nothing is
//! lost and nothing runs twice.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{Env, Serve};

/// A running `edge-runner serve` with only a spool; killed on drop.
struct Spooler(Serve);

impl Spooler {
    fn start(env: &Env) -> Spooler {
        let serve = Serve::start(env, 1);
        serve.line(env, 0, "spool on ");
        Spooler(serve)
    }

    /// SIGKILL: no chance to finish anything.
    fn kill(self) {
        self.0.kill();
    }
}

const SPOOL: &str = "\n[spool]\ndir = \"spool\"\nsettle = \"0s\"\npoll = \"50ms\"\nmax_file_mib = 1\n";

/// A runner with only a spool, and a `certs` mount for the diagnostic.
fn spool_env() -> Env {
    let env = Env::new();
    std::fs::create_dir_all(env.path("certs")).unwrap();
    env.write_config(&format!("[mounts.certs]\npath = \"certs\"\nwritable = false\n{SPOOL}"));
    env
}

/// The cert-expiry diagnostic: changes nothing, so it may run any number of times.
pub(crate) fn diagnostic(env: &Env) -> Vec<u8> {
    let manifest =
        std::fs::read_to_string(format!("{}/examples/capsules/cert-expiry/capsule.toml", test_programs::ROOT)).unwrap();
    std::fs::read(env.capsule("spool-diag", test_programs::CERT_EXPIRY, &manifest, Some("agent"))).unwrap()
}

/// A tier-0 capsule that writes `data/ok.txt` (`attack` = "none"), signed by the agent.
fn capsule(env: &Env, attack: &str) -> PathBuf {
    env.capsule(&format!("spool-{attack}"), test_programs::HOSTILE, &Env::hostile_manifest(attack, ""), Some("agent"))
}

/// Drop a file as a careful writer does: under a `.part` name, then renamed.
fn drop_file(env: &Env, name: &str, bytes: &[u8]) {
    let part = env.path(&format!("spool/inbox/{name}.part"));
    std::fs::write(&part, bytes).unwrap();
    std::fs::rename(&part, env.path(&format!("spool/inbox/{name}"))).unwrap();
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = match std::fs::read_dir(dir) {
        Ok(d) => d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect(),
        Err(_) => Vec::new(),
    };
    v.sort();
    v
}

/// Wait until `path` exists (a file finished by the spool).
fn wait_for(path: &Path, secs: u64) {
    let t = Instant::now();
    while !path.exists() {
        assert!(t.elapsed() < Duration::from_secs(secs), "{} did not appear", path.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The answer the outbox holds for `name` (the only one, or the newest).
fn answer(env: &Env, name: &str) -> Value {
    let outbox = env.path("spool/outbox");
    let mut found: Vec<String> = names(&outbox)
        .into_iter()
        .filter(|n| n.starts_with(&format!("{name}.r-")) && n.ends_with(".answer.json"))
        .collect();
    found.sort();
    let last = found.last().unwrap_or_else(|| panic!("no answer for {name} in {:?}", names(&outbox)));
    serde_json::from_slice(&std::fs::read(outbox.join(last)).unwrap()).unwrap()
}

fn submissions(env: &Env) -> usize {
    env.evidence().as_array().unwrap().iter().filter(|r| r["event"]["type"] == "submission").count()
}

fn reason(env: &Env, rel: &str) -> String {
    std::fs::read_to_string(env.path(&format!("spool/{rel}.reason"))).unwrap()
}

#[test]
fn a_dropped_capsule_runs_once_and_its_answer_receipt_and_checkpoint_come_back() {
    let env = spool_env();
    let spool = Spooler::start(&env);
    let bytes = std::fs::read(capsule(&env, "none")).unwrap();
    drop_file(&env, "fix.capsule", &bytes);
    wait_for(&env.path("spool/done/fix.capsule"), 60);
    let a = answer(&env, "fix.capsule");
    assert_eq!(a["state"], "committed", "{a:#}");
    assert!(a["admission"]["admitted"].as_bool().unwrap());
    assert_eq!(std::fs::read_to_string(env.path("data/ok.txt")).unwrap().trim(), "ok");
    assert!(reason(&env, "done/fix.capsule").starts_with("committed: run r-"), "{}", reason(&env, "done/fix.capsule"));
    // The receipt and the checkpoint, for the reviewer on the other side.
    let run = a["run"].as_str().unwrap();
    let receipt = std::fs::read_to_string(env.path(&format!("spool/outbox/{run}.receipt"))).unwrap();
    assert_eq!(receipt, a["receipt"].as_str().unwrap());
    wait_for(&env.path("spool/outbox/checkpoint.txt"), 10);
    assert!(std::fs::read_to_string(env.path("spool/outbox/checkpoint.txt")).unwrap().starts_with("test-runner\n"));
    // Recorded as the spool's delivery.
    let log = env.evidence();
    let sub = log.as_array().unwrap().iter().find(|r| r["event"]["type"] == "submission").unwrap();
    assert_eq!(sub["event"]["submitted_by"], "spool:fix.capsule");
    assert!(names(&env.path("spool/inbox")).is_empty() && names(&env.path("spool/work")).is_empty());

    // The same name and content again (a medium copied twice): refused as
    // a duplicate, not run again.
    std::fs::remove_file(env.path("data/ok.txt")).unwrap();
    drop_file(&env, "fix.capsule", &bytes);
    wait_for(&env.path("spool/refused/fix.capsule"), 30);
    assert!(
        reason(&env, "refused/fix.capsule").contains("[spool.duplicate]"),
        "{}",
        reason(&env, "refused/fix.capsule")
    );
    assert!(!env.path("data/ok.txt").exists(), "the duplicate ran");
    assert_eq!(submissions(&env), 1);

    // The same content under another name is another submission; the same
    // name with other content is processed and kept beside the first.
    drop_file(&env, "again.capsule", &bytes);
    wait_for(&env.path("spool/done/again.capsule"), 60);
    assert_eq!(answer(&env, "again.capsule")["state"], "committed");
    std::fs::remove_file(env.path("data/ok.txt")).unwrap();
    let manifest = Env::hostile_manifest("none", "").replace("0.0.1", "0.0.2");
    let other = std::fs::read(env.capsule("spool-v2", test_programs::HOSTILE, &manifest, Some("agent"))).unwrap();
    assert_ne!(other, bytes);
    drop_file(&env, "fix.capsule", &other);
    wait_for(&env.path("spool/done/fix.capsule.2"), 60);
    assert_eq!(std::fs::read(env.path("spool/done/fix.capsule")).unwrap(), bytes, "the first is untouched");
    assert_eq!(submissions(&env), 3);
    drop(spool);
}

#[test]
fn hostile_unknown_and_oversized_files_are_refused_with_a_reason_and_never_block_the_spool() {
    let env = spool_env();
    let spool = Spooler::start(&env);
    let good = std::fs::read(capsule(&env, "none")).unwrap();
    // Unsigned (signed by a key the runner does not trust), tampered, not
    // a capsule at all, too large, an unknown kind, a symlink, a hostile name.
    let untrusted = std::fs::read(env.untrusted_capsule()).unwrap();
    let mut tampered = good.clone();
    let last = tampered.len() / 2;
    tampered[last] ^= 0x55;
    drop_file(&env, "untrusted.capsule", &untrusted);
    drop_file(&env, "tampered.capsule", &tampered);
    drop_file(&env, "garbage.capsule", b"\x1b[2Jnot a capsule");
    drop_file(&env, "huge.capsule", &vec![0u8; 2 << 20]);
    drop_file(&env, "notes.txt", b"hello");
    std::os::unix::fs::symlink("/etc/passwd", env.path("spool/inbox/link.capsule")).unwrap();
    // Another name for the agent's private key, dropped as an approval: read,
    // it would be refused as malformed and kept as evidence.
    std::fs::hard_link(env.path("keys/agent.key"), env.path("spool/inbox/key.approval.json")).unwrap();
    let diag = diagnostic(&env);
    drop_file(&env, "evil\u{1b}[31m\u{202e}.capsule", &diag);
    drop_file(&env, "good.capsule", &diag);
    wait_for(&env.path("spool/done/good.capsule"), 60);
    for (name, why) in [
        ("untrusted.capsule", "[signature.untrusted_signer]"),
        ("tampered.capsule", "refused: run r-"),
        ("garbage.capsule", "refused: run r-"),
        ("huge.capsule", "[spool.too-large]"),
        ("notes.txt", "[spool.unknown-kind]"),
        ("link.capsule", "not a regular file"),
    ] {
        wait_for(&env.path(&format!("spool/refused/{name}")), 30);
        let r = reason(&env, &format!("refused/{name}"));
        assert!(r.contains(why), "{name}: {r}");
        assert!(!r.contains('\u{1b}'), "{name}: control characters reached the reason file");
    }
    // The hostile name is refused under a safe stand-in (it would reach
    // whoever lists the folders), though its content is a good capsule.
    let t = Instant::now();
    let stand_in = loop {
        if let Some(n) = names(&env.path("spool/refused"))
            .into_iter()
            .find(|n| n.starts_with("invalid-name-") && !n.ends_with(".reason"))
        {
            break n;
        }
        assert!(t.elapsed() < Duration::from_secs(30), "{:?}", names(&env.path("spool/refused")));
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(reason(&env, &format!("refused/{stand_in}")).contains("[spool.bad-name]"));
    assert!(names(&env.path("spool/done")).iter().all(|n| !n.contains('\u{1b}')));
    // The hard link: refused, and its name removed from the spool (the
    // key itself untouched).
    wait_for(&env.path("spool/refused/key.approval.json.reason"), 30);
    assert!(reason(&env, "refused/key.approval.json").contains("[spool.hard-link]"));
    assert!(!env.path("spool/refused/key.approval.json").exists(), "the spool kept a name for the key");
    assert!(std::fs::read(env.path("keys/agent.key")).is_ok_and(|k| !k.is_empty()));
    // The symlink's target was not read or moved; the key was not kept.
    assert!(std::fs::read_to_string("/etc/passwd").is_ok());
    assert!(
        !std::fs::read_dir(env.path("spool/outbox")).unwrap().any(|e| e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .starts_with("key."))
    );
    // Refused capsules are recorded like any refused submission.
    let log = env.evidence();
    for name in ["untrusted.capsule", "tampered.capsule", "garbage.capsule"] {
        let run = answer(&env, name)["run"].as_str().unwrap().to_owned();
        let recorded =
            log.as_array().unwrap().iter().any(|r| r["run"] == run.as_str() && r["event"]["type"] == "refused");
        assert!(recorded, "{name}: the refused submission is not recorded");
    }
    drop(spool);
}

#[test]
fn a_half_written_file_is_never_read_and_temporary_names_are_left_alone() {
    let env = Env::new();
    env.write_config(&SPOOL.replace("settle = \"0s\"", "settle = \"1s\""));
    let spool = Spooler::start(&env);
    let bytes = std::fs::read(capsule(&env, "none")).unwrap();
    // Written in place, slowly, in pieces: never taken while it grows.
    let path = env.path("spool/inbox/slow.capsule");
    let mut f = std::fs::File::create(&path).unwrap();
    let step = bytes.len() / 6 + 1;
    for chunk in bytes.chunks(step) {
        f.write_all(chunk).unwrap();
        f.flush().unwrap();
        std::thread::sleep(Duration::from_millis(400));
        assert!(path.exists(), "a growing file was taken");
        assert!(names(&env.path("spool/refused")).is_empty(), "a half-written file was read");
    }
    drop(f);
    std::fs::write(env.path("spool/inbox/.hidden.capsule"), &bytes).unwrap();
    std::fs::write(env.path("spool/inbox/copying.capsule.part"), &bytes).unwrap();
    wait_for(&env.path("spool/done/slow.capsule"), 60);
    assert_eq!(answer(&env, "slow.capsule")["state"], "committed");
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(names(&env.path("spool/inbox")), vec![".hidden.capsule", "copying.capsule.part"]);
    drop(spool);
}

#[test]
fn a_kill_at_any_point_loses_nothing_and_runs_nothing_twice() {
    let env = spool_env();
    let bytes = diagnostic(&env);
    std::fs::create_dir_all(env.path("spool/inbox")).unwrap();
    const N: usize = 40;
    for i in 0..N {
        drop_file(&env, &format!("c{i:02}.capsule"), &bytes);
    }
    // Killed again and again at different points of the work.
    let mut killed_mid_work = 0;
    for delay in [40u64, 80, 120, 160, 200, 260, 320, 400, 500] {
        let spool = Spooler::start(&env);
        std::thread::sleep(Duration::from_millis(delay));
        spool.kill();
        let done = names(&env.path("spool/done")).iter().filter(|n| n.ends_with(".capsule")).count();
        if done == N {
            break;
        }
        killed_mid_work += 1;
    }
    assert!(killed_mid_work > 1, "the kills came after the work was done");
    // Then left to finish.
    let spool = Spooler::start(&env);
    let t = Instant::now();
    while names(&env.path("spool/done")).iter().filter(|n| n.ends_with(".capsule")).count() < N {
        assert!(t.elapsed() < Duration::from_secs(120), "done: {:?}", names(&env.path("spool/done")));
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(spool);
    let done = names(&env.path("spool/done"));
    let mut interrupted = 0;
    for i in 0..N {
        let name = format!("c{i:02}.capsule");
        assert!(done.contains(&name), "{name} lost: {done:?}");
        assert!(!done.contains(&format!("{name}.2")), "{name} processed twice");
        // Completed, or (killed in the middle) closed as interrupted on
        // the next start: either way it ran once and is not run again.
        let a = answer(&env, &name);
        match a["state"].as_str() {
            Some("completed") => {}
            Some("failed") => interrupted += 1,
            other => panic!("{name}: {other:?}"),
        }
    }
    assert!(names(&env.path("spool/inbox")).is_empty() && names(&env.path("spool/work")).is_empty());
    assert!(names(&env.path("spool/refused")).is_empty(), "{:?}", names(&env.path("spool/refused")));
    assert_eq!(submissions(&env), N, "a delivery ran twice (or was lost)");
    let log = env.evidence();
    let closed = log.as_array().unwrap().iter().filter(|r| r["event"]["type"] == "interrupted").count();
    assert_eq!(closed, interrupted, "each run killed in the middle is closed as interrupted, once");

    // The narrowest window, made by hand: the run is durable, the process
    // died before the answer was written and the file moved. On restart
    // the run is found in the log and answered from it, not run again.
    let a = answer(&env, "c03.capsule");
    let run = a["run"].as_str().unwrap();
    for n in names(&env.path("spool/outbox")).into_iter().filter(|n| n.starts_with("c03.capsule.")) {
        std::fs::remove_file(env.path(&format!("spool/outbox/{n}"))).unwrap();
    }
    std::fs::remove_file(env.path("spool/done/c03.capsule.reason")).unwrap();
    std::fs::rename(env.path("spool/done/c03.capsule"), env.path(&format!("spool/work/{run}~c03.capsule"))).unwrap();
    let spool = Spooler::start(&env);
    wait_for(&env.path("spool/done/c03.capsule"), 30);
    let again = answer(&env, "c03.capsule");
    assert_eq!(again["recovered"], true, "{again:#}");
    assert_eq!(again["run"], run);
    assert_eq!(again["state"], a["state"]);
    drop(spool);
    assert_eq!(submissions(&env), N);
    env.cli(&["evidence", "check", "--config", "runner.toml", "--full"]).success();
}

#[test]
fn an_outbox_that_cannot_be_written_keeps_the_file_until_it_can_and_runs_it_once() {
    let env = spool_env();
    let mut config = std::fs::read_to_string(env.path("runner.toml")).unwrap();
    config.push_str("\n[probes]\nlisten = \"127.0.0.1:0\"\nmetrics = true\n");
    std::fs::write(env.path("runner.toml"), config).unwrap();
    let spool = Serve::start(&env, 2);
    let probes = spool.line(&env, 0, "probes on ");
    spool.line(&env, 1, "spool on ");
    // The outbox's place taken by a file: every answer write fails.
    std::fs::remove_dir(env.path("spool/outbox")).unwrap();
    std::fs::write(env.path("spool/outbox"), "not a directory").unwrap();
    drop_file(&env, "fix.capsule", &std::fs::read(capsule(&env, "none")).unwrap());
    let t = Instant::now();
    while submissions(&env) == 0 {
        assert!(t.elapsed() < Duration::from_secs(60), "{}", std::fs::read_to_string(env.path("serve.log")).unwrap());
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));
    // It ran; its answer could not be written: the file stays claimed.
    let work = names(&env.path("spool/work"));
    assert!(work.len() == 1 && work[0].ends_with("~fix.capsule"), "{work:?}");
    assert!(names(&env.path("spool/done")).is_empty());
    // Room again: answered (from the log), moved, and run only once.
    std::fs::remove_file(env.path("spool/outbox")).unwrap();
    std::fs::create_dir(env.path("spool/outbox")).unwrap();
    wait_for(&env.path("spool/done/fix.capsule"), 90);
    let a = answer(&env, "fix.capsule");
    assert_eq!(a["state"], "committed", "{a:#}");
    assert_eq!(submissions(&env), 1);
    // The tries and the outcome are counted.
    let (_, metrics) = crate::probes::get(&probes, "/metrics");
    for line in [
        "edge_runner_intake_up{intake=\"spool\"} 1",
        "edge_runner_intake_messages_total{intake=\"spool\",result=\"processed\"} 1",
        "edge_runner_intake_messages_total{intake=\"spool\",result=\"retried\"}",
    ] {
        assert!(metrics.contains(line), "{line} not in\n{metrics}");
    }
    drop(spool);
}

#[test]
fn approvals_dropped_in_the_spool_run_a_waiting_proposal_and_an_export_comes_back() {
    let env = Env::new();
    env.write_policy_config("log-volume", &[("config", "payments-config", true)]);
    env.write_approvers(&[("alice", &["sre"]), ("carol", &["payments-owner"]), ("mallory", &["sre"])], "");
    let mut config = std::fs::read_to_string(env.path("runner.toml")).unwrap();
    config.push_str(SPOOL);
    std::fs::write(env.path("runner.toml"), config).unwrap();
    let spool = Spooler::start(&env);
    let tier2 = env.capsule(
        "spool-tier2",
        test_programs::HOSTILE,
        &Env::hostile_manifest("none", "[[mounts]]\nname = \"config\"\nwritable = true\n"),
        Some("agent"),
    );
    drop_file(&env, "tier2.capsule", &std::fs::read(&tier2).unwrap());
    wait_for(&env.path("spool/done/tier2.capsule"), 60);
    let a = answer(&env, "tier2.capsule");
    assert_eq!(a["state"], "awaiting-approval", "{a:#}");
    let id = a["id"].as_str().unwrap().to_owned();
    // What approvers review came back in the outbox: sign from it.
    let doc = env.path(&format!("spool/outbox/{id}.json"));
    assert!(env.path(&format!("spool/outbox/{id}.preview.json")).exists());
    for who in ["alice", "carol", "mallory"] {
        let out = format!("{who}.approval.json");
        env.sign_approval("approve", doc.to_str().unwrap(), who, &out);
    }
    // An approval from a key that is not the principal's: refused, recorded.
    let forged = {
        let mut f: Value = serde_json::from_slice(&std::fs::read(env.path("alice.approval.json")).unwrap()).unwrap();
        f["statement"]["approver"] = Value::from("carol@bank.example");
        serde_json::to_vec(&f).unwrap()
    };
    drop_file(&env, "forged.approval.json", &forged);
    wait_for(&env.path("spool/refused/forged.approval.json"), 30);
    drop_file(&env, "alice.approval.json", &std::fs::read(env.path("alice.approval.json")).unwrap());
    wait_for(&env.path("spool/done/alice.approval.json"), 30);
    assert!(reason(&env, "done/alice.approval.json").contains("waits for more"));
    drop_file(&env, "carol.approval.json", &std::fs::read(env.path("carol.approval.json")).unwrap());
    wait_for(&env.path("spool/done/carol.approval.json"), 60);
    let a = answer(&env, "carol.approval.json");
    assert_eq!(a["run"].as_str().map(|r| r.starts_with("r-")), Some(true), "{a:#}");
    assert!(
        reason(&env, "done/carol.approval.json").contains("committed"),
        "{}",
        reason(&env, "done/carol.approval.json")
    );
    // Delivered again (a second copy of the medium, or the first answer
    // lost): kept the first time, so answered from the store with the run
    // and its receipt, not refused, and not run again.
    let receipt = std::fs::read(env.path(&format!("spool/outbox/{}.receipt", a["run"].as_str().unwrap())));
    drop_file(&env, "carol-again.approval.json", &std::fs::read(env.path("carol.approval.json")).unwrap());
    wait_for(&env.path("spool/done/carol-again.approval.json"), 30);
    let again = answer(&env, "carol-again.approval.json");
    assert!(
        reason(&env, "done/carol-again.approval.json")
            .contains("kept when it was delivered before; the proposal is committed"),
        "{}",
        reason(&env, "done/carol-again.approval.json")
    );
    assert_eq!(again["run"], a["run"], "{again:#}");
    assert_eq!(again["receipt"].as_str().map(str::as_bytes), receipt.as_deref().ok(), "{again:#}");
    // An approval never kept, for a proposal that no longer waits: refused.
    drop_file(&env, "mallory.approval.json", &std::fs::read(env.path("mallory.approval.json")).unwrap());
    wait_for(&env.path("spool/refused/mallory.approval.json"), 30);
    assert!(
        reason(&env, "refused/mallory.approval.json").contains("[approval.not-waiting] proposal"),
        "{}",
        reason(&env, "refused/mallory.approval.json")
    );
    let log = env.evidence();
    let runs_of = |t: &str| log.as_array().unwrap().iter().filter(|r| r["event"]["type"] == t).count();
    assert_eq!(runs_of("committed"), 1, "the proposal ran once");
    assert!(runs_of("approval-refused") >= 1, "the forged approval is recorded");

    // An export request: the bundle comes back and verifies offline.
    drop_file(&env, "all.export-request", b"");
    wait_for(&env.path("spool/done/all.export-request"), 60);
    let e = answer(&env, "all.export-request");
    let bundle = env.path(&format!("spool/outbox/{}", e["export"].as_str().unwrap()));
    drop(spool);
    let vkey = env.cli(&["evidence", "runner-key", "--config", "runner.toml"]).success().stdout();
    std::fs::write(env.path("runner.vkey"), &vkey).unwrap();
    let args = vec![bundle.into_os_string(), "--key".into(), env.path("runner.vkey").into_os_string()];
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let code = edge_evidence::cli::run(args, &mut out, &mut err, false);
    assert_eq!(code, 0, "{}{}", String::from_utf8_lossy(&out), String::from_utf8_lossy(&err));
}
