//! Backups and upgrades: `edge-runner backup` while a real `serve` appends,
//! `restore` into a new home whose runner continues the same log (and runs
//! a proposal that waited in the backup), a backup that was altered or cut
//! short refused, the schema version: a store made by this release (the
//! committed fixture `tests/data/store-v1/`) opens, verifies and continues,
//! and a store from a newer runner is refused untouched.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use hyper::StatusCode;
use serde_json::Value;

use crate::harness::Env;
use crate::server::{Server, capsule, rt, setup, show, sign, submit};

/// `edge-verify BUNDLE --key KEYFILE`, in process.
fn edge_verify(bundle: &Path, keys: &Path) -> (u8, String) {
    let args = vec![bundle.as_os_str().to_owned(), "--key".into(), keys.as_os_str().to_owned()];
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let code = edge_evidence::cli::run(args, &mut out, &mut err, false);
    (code, format!("{}{}", String::from_utf8_lossy(&out), String::from_utf8_lossy(&err)))
}

fn manifest(dir: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap()
}

/// Rewrite the manifest's entry for `path` to match the file as it is now
/// (an attacker who edits a file edits the unsigned manifest too).
fn refresh_manifest_entry(dir: &Path, path: &str) {
    let mut m = manifest(dir);
    let bytes = std::fs::read(dir.join(path)).unwrap();
    let f = m["files"].as_array_mut().unwrap().iter_mut().find(|f| f["path"] == path).unwrap();
    f["sha256"] = Value::String(edge_core::Sha256Digest::of(&bytes).to_string());
    f["size"] = Value::from(bytes.len());
    std::fs::write(dir.join("manifest.json"), serde_json::to_vec_pretty(&m).unwrap()).unwrap();
}

/// Every file under `dir`: relative path → bytes.
fn files_under(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                pending.push(p);
            } else {
                out.insert(p.strip_prefix(dir).unwrap().to_string_lossy().into_owned(), std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

#[test]
fn a_backup_taken_while_serving_verifies_and_restores_into_a_runner_that_continues_the_log() {
    let env = setup(256);
    let server = Server::start(&env);
    let (tier0, tier2) = (capsule(&env, "none", false), capsule(&env, "none", true));
    // One proposal waits for approval: its document and preview are state.
    let waiting = rt().block_on(async {
        let mut agent = server.client(&env, "agent");
        let r = submit(&mut agent, &tier2).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.error_message());
        r.json().unwrap()["id"].as_str().unwrap().to_owned()
    });
    let before = env.evidence().as_array().unwrap().len();

    // Tier-0 runs keep the runner appending while the backup is taken.
    let stop = Arc::new(AtomicBool::new(false));
    let submitted = Arc::new(AtomicUsize::new(0));
    let submitter = std::thread::spawn({
        let (stop, submitted, url, dir, tier0) =
            (stop.clone(), submitted.clone(), server.url.clone(), env.path("tls"), tier0.clone());
        move || {
            rt().block_on(async {
                let mut c = edge_runner::server::client::Client::new(
                    &url,
                    &dir.join("ca.pem"),
                    &dir.join("agent.pem"),
                    &dir.join("agent.key"),
                )
                .unwrap();
                while !stop.load(Ordering::Relaxed) {
                    let r = submit(&mut c, &tier0).await;
                    assert!(r.status == StatusCode::CREATED || r.status.is_client_error(), "{}", r.error_message());
                    submitted.fetch_add(1, Ordering::Relaxed);
                }
            })
        }
    });
    while submitted.load(Ordering::Relaxed) < 3 {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let at_start = submitted.load(Ordering::Relaxed);
    let out = env.cli(&["backup", "--config", "runner.toml", "--out", "backup", "--json"]).success();
    let during = submitted.load(Ordering::Relaxed) - at_start;
    std::thread::sleep(std::time::Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    submitter.join().unwrap();
    drop(server);

    let result: Value = serde_json::from_slice(&out.0.stdout).unwrap();
    let records = result["store"]["records"].as_u64().unwrap() as usize;
    let live = env.evidence();
    let live = live.as_array().unwrap();
    assert!(records > before, "the backup holds the runs before it ({before} records, backup {records})");
    assert!(live.len() > records, "the runner appended after the snapshot ({} > {records})", live.len());
    eprintln!("backup of {records} records while serving; {during} submission(s) answered during it");
    let dir = env.path("backup");
    let m = manifest(&dir);
    let paths: Vec<&str> = m["files"].as_array().unwrap().iter().map(|f| f["path"].as_str().unwrap()).collect();
    for want in [
        "state/evidence/evidence.db",
        "state/evidence/latest-checkpoint",
        "identity.key",
        "config/runner.toml",
        "config/policy.toml",
        "config/graph.toml",
        "config/allowed_signers",
        "config/roles.toml",
        "config/tls/server.key",
        &format!("state/proposals/{waiting}.json"),
        &format!("state/proposals/{waiting}.capsule"),
    ] {
        assert!(paths.contains(&want), "{want} is not in the backup: {paths:?}");
    }
    assert!(paths.iter().any(|p| p.starts_with(&format!("state/previews/{waiting}/"))), "{paths:?}");
    assert!(!paths.iter().any(|p| p.contains("journals") || p.ends_with("-wal") || p.ends_with("/lock")), "{paths:?}");
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700);
    assert_eq!(std::fs::metadata(dir.join("identity.key")).unwrap().permissions().mode() & 0o777, 0o600);

    // A new home, somewhere else: the mounts are the systems the runner
    // changes (not in a backup); the rest comes from the backup.
    let home = Env { dir: tempfile::tempdir().unwrap() };
    for d in ["data", "ro", "config"] {
        std::fs::create_dir_all(home.path(d)).unwrap();
    }
    let r = env.cli(&["restore", "--from", "backup", "--home", home.path("").to_str().unwrap()]).success();
    assert!(r.stdout().contains(&format!("verified  the restored store: {records} records")), "{}", r.stdout());
    // The restored log is the live log's first `records` records, exactly.
    let restored = home.evidence();
    assert_eq!(restored.as_array().unwrap().as_slice(), &live[..records]);

    // The restored runner serves, continues the same log and runs the
    // proposal that waited in the backup once two people approve it.
    let server = Server::start(&home);
    rt().block_on(async {
        let mut agent = server.client(&env, "agent");
        assert_eq!(show(&mut agent, &waiting).await["state"], "awaiting-approval");
        let mut approver = server.client(&env, "approver");
        for who in ["alice", "carol"] {
            let a = sign(&env, &mut approver, &waiting, who, "approve").await;
            let r = approver.post(&format!("/v1/proposals/{waiting}/approvals"), a, "application/json").await.unwrap();
            assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.error_message());
        }
        assert_eq!(show(&mut agent, &waiting).await["state"], "committed");
    });
    drop(server);
    assert_eq!(std::fs::read_to_string(home.path("data/ok.txt")).unwrap(), "ok");
    let after = home.evidence();
    let after = after.as_array().unwrap();
    assert!(after.len() > records);
    assert_eq!(&after[..records], &live[..records], "the chain continues from the backup's head");

    // Exported after the restore, the whole log verifies offline with the key.
    home.cli(&["evidence", "export", "--config", "runner.toml", "-o", "after.bundle"]).success();
    let key = home.cli(&["evidence", "runner-key", "--config", "runner.toml"]).success().stdout();
    assert_eq!(key.trim(), m["runner"]["key"].as_str().unwrap());
    std::fs::write(home.path("runner.vkey"), key).unwrap();
    let (code, text) = edge_verify(&home.path("after.bundle"), &home.path("runner.vkey"));
    assert_eq!(code, 0, "{text}");
}

/// A runner home with a few runs (stopped) and, after them, records no
/// checkpoint in the store covers yet; a backup of it in `backup`.
fn backed_up() -> Env {
    let env = Env::new();
    for _ in 0..2 {
        assert_eq!(env.exec(&env.hostile("none")).outcome(), "committed");
        std::fs::remove_file(env.path("data/ok.txt")).unwrap();
    }
    env.cli(&["evidence", "stress", "--config", "runner.toml", "--writers", "1", "--runs", "3"]).success();
    env.cli(&["backup", "--config", "runner.toml", "--out", "backup"]).success();
    env.cli(&["restore", "--from", "backup", "--check"]).success();
    env
}

fn refused(env: &Env, needle: &str) {
    let out = env.cli(&["restore", "--from", "backup", "--check"]);
    assert_eq!(out.code(), 3, "{}{}", out.stdout(), out.stderr());
    assert!(out.stdout().contains("REFUSED") && out.stdout().contains(needle), "{}", out.stdout());
}

#[test]
fn an_altered_or_shortened_backup_is_refused_and_nothing_is_restored() {
    // A file edited after the backup: its digest no longer matches.
    let env = backed_up();
    let cfg = env.path("backup/config/runner.toml");
    std::fs::write(&cfg, std::fs::read_to_string(&cfg).unwrap().replace("test-runner", "evil-runner")).unwrap();
    refused(&env, "config/runner.toml in the backup is not the file the manifest lists");

    // The store cut short (only records no live checkpoint covered), and
    // the manifest edited to match its file: the checkpoint of its head
    // signed at backup time names what is missing.
    let env = backed_up();
    let db = env.path("backup/state/evidence/evidence.db");
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute_batch(
        "DROP TRIGGER records_append_only_d; DELETE FROM records WHERE seq >= (SELECT max(seq) - 2 FROM records);",
    )
    .unwrap();
    drop(conn);
    refresh_manifest_entry(&env.path("backup"), "state/evidence/evidence.db");
    let mut m = manifest(&env.path("backup"));
    let conn = rusqlite::Connection::open(&db).unwrap();
    let bodies: Vec<String> = conn
        .prepare("SELECT body FROM records ORDER BY seq")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let leaves: Vec<_> = bodies.iter().map(|b| edge_core::merkle::leaf_hash(b.as_bytes())).collect();
    m["store"]["records"] = Value::from(bodies.len());
    m["store"]["root"] = Value::String(hex::encode(edge_core::merkle::root(&leaves)));
    m["store"]["head"] = Value::String(edge_core::Sha256Digest::of(bodies.last().unwrap().as_bytes()).to_string());
    std::fs::write(env.path("backup/manifest.json"), serde_json::to_vec_pretty(&m).unwrap()).unwrap();
    refused(&env, "are missing");

    // Another runner's backup, checked against the key the operator pinned.
    let env = backed_up();
    let other = Env::new();
    other.exec(&other.hostile("none"));
    let key = other.cli(&["evidence", "runner-key", "--config", "runner.toml"]).success().stdout();
    std::fs::write(env.path("pinned.vkey"), key).unwrap();
    let out = env.cli(&["restore", "--from", "backup", "--check", "--key", "pinned.vkey"]);
    assert_eq!(out.code(), 3, "{}", out.stdout());
    assert!(out.stdout().contains("not one of the keys you pinned"), "{}", out.stdout());

    // The trusted signer's key in the backup's config replaced (any
    // capsule the attacker signs would be admitted after a restore), the
    // manifest fixed up to match: the files agree with it, but not with the
    // digest `backup` printed — which the operator noted.
    let env = Env::new();
    assert_eq!(env.exec(&env.hostile("none")).outcome(), "committed");
    let out = env.cli(&["backup", "--config", "runner.toml", "--out", "backup"]).success().stdout();
    let noted = out
        .split("--manifest-sha256 ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .unwrap_or_else(|| panic!("backup printed no manifest digest: {out}"))
        .to_owned();
    env.cli(&["restore", "--from", "backup", "--check", "--manifest-sha256", &noted]).success();
    let signers = manifest(&env.path("backup"))["files"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|f| f["path"].as_str().filter(|p| p.ends_with("keys/agent.pub")).map(str::to_owned))
        .expect("the backup holds the trusted signer's key");
    let mallory = edge_core::signature::CapsuleSigningKey::generate();
    std::fs::write(env.path("backup").join(&signers), mallory.public_key_pem()).unwrap();
    refresh_manifest_entry(&env.path("backup"), &signers);
    env.cli(&["restore", "--from", "backup", "--check"]).success(); // the manifest alone cannot tell
    let out = env.cli(&["restore", "--from", "backup", "--check", "--manifest-sha256", &noted]);
    assert_eq!(out.code(), 3, "{}", out.stdout());
    assert!(out.stdout().contains("not the") && out.stdout().contains("you noted"), "{}", out.stdout());

    // A manifest that points outside the backup's folders is refused
    // before anything is read or written.
    let env = backed_up();
    let mut m = manifest(&env.path("backup"));
    let entry = m["files"].as_array_mut().unwrap().iter_mut().find(|f| f["kind"] == "config").unwrap();
    entry["path"] = Value::String("config/../../escape".into());
    std::fs::write(env.path("backup/manifest.json"), serde_json::to_vec(&m).unwrap()).unwrap();
    refused(&env, "not a plain relative path");
}

#[test]
fn a_restore_never_merges_into_existing_state_or_another_runners_config() {
    let env = Env::new();
    assert_eq!(env.exec(&env.hostile("none")).outcome(), "committed");
    env.cli(&["backup", "--config", "runner.toml", "--out", "backup"]).success();
    // A backup goes into a new directory, never into the state directory.
    let e = env.cli(&["backup", "--config", "runner.toml", "--out", "backup"]);
    assert!(e.code() == 1 && e.stderr().contains("is not empty"), "{}", e.stderr());
    let e = env.cli(&["backup", "--config", "runner.toml", "--out", "state/b"]);
    assert!(e.code() == 1 && e.stderr().contains("inside the runner's state directory"), "{}", e.stderr());

    // Into the live home: its state directory is not empty.
    let e = env.cli(&["restore", "--from", "backup", "--config", "runner.toml"]);
    assert_eq!(e.code(), 1);
    assert!(e.stderr().contains("is not empty") && e.stderr().contains("never merges"), "{}", e.stderr());
    // A config naming another runner is refused, naming the fix.
    let text = std::fs::read_to_string(env.path("runner.toml")).unwrap();
    std::fs::write(
        env.path("other.toml"),
        text.replace("name = \"test-runner\"", "name = \"other\"")
            .replace("state_dir = \"state\"", "state_dir = \"s2\""),
    )
    .unwrap();
    let e = env.cli(&["restore", "--from", "backup", "--config", "other.toml"]);
    assert!(e.stderr().contains("names runner `other` but the backup is of `test-runner`"), "{}", e.stderr());
    assert!(!env.path("s2").exists(), "nothing was written");
    // --home never overwrites a config.
    let e = env.cli(&["restore", "--from", "backup", "--home", "."]);
    assert!(e.stderr().contains("already exists") && e.stderr().contains("never overwrites"), "{}", e.stderr());
}

/// The committed store made by this release (schema version 1).
/// The committed store made by the release that wrote schema `version`.
fn fixture_of(version: u32) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../tests/data/store-v{version}"))
}

/// A home whose state is a copy of the fixture (identity key 0600).
fn home_with_fixture() -> Env {
    home_with_fixture_of(edge_runner::store::schema::SCHEMA_VERSION)
}

/// A home whose state is a copy of the fixture of schema `version`.
fn home_with_fixture_of(version: u32) -> Env {
    use std::os::unix::fs::PermissionsExt as _;
    let env = Env::new();
    let ev = env.path("state/evidence");
    std::fs::create_dir_all(&ev).unwrap();
    for f in ["evidence.db", "latest-checkpoint"] {
        std::fs::copy(fixture_of(version).join(f), ev.join(f)).unwrap();
    }
    std::fs::copy(fixture_of(version).join("identity.key"), env.path("state/identity.key")).unwrap();
    std::fs::set_permissions(env.path("state/identity.key"), std::fs::Permissions::from_mode(0o600)).unwrap();
    env
}

#[test]
fn a_store_made_by_this_release_opens_verifies_and_continues() {
    // Every schema version ever written: the older ones are migrated.
    for version in 1..=edge_runner::store::schema::SCHEMA_VERSION {
        opens_verifies_and_continues(version);
    }
}

fn opens_verifies_and_continues(version: u32) {
    let fixture = || fixture_of(version);
    let expect: Value = serde_json::from_slice(&std::fs::read(fixture().join("expect.json")).unwrap()).unwrap();
    let env = home_with_fixture_of(version);
    let db = rusqlite::Connection::open_with_flags(
        env.path("state/evidence/evidence.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let version: i64 = db.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
    assert_eq!(version, expect["schema_version"].as_i64().unwrap());
    drop(db);
    // Verified as it is: every record, as the fixture says.
    let log = env.evidence();
    let log = log.as_array().unwrap();
    assert_eq!(log.len() as u64, expect["records"].as_u64().unwrap());
    let types: Vec<&str> = log.iter().map(|r| r["event"]["type"].as_str().unwrap()).collect();
    for t in expect["event_types"].as_array().unwrap() {
        assert!(types.contains(&t.as_str().unwrap()), "the fixture's {t} record is read");
    }
    let outcomes: Vec<&str> = log
        .iter()
        .filter(|r| r["event"]["type"] == "completed")
        .map(|r| r["event"]["outcome"].as_str().unwrap())
        .collect();
    let want: Vec<&str> = expect["outcomes"].as_array().unwrap().iter().map(|o| o.as_str().unwrap()).collect();
    assert_eq!(outcomes, want);

    // Checked in full before this runner first opens it for writing (the
    // full check reads; it does not migrate): what is there holds.
    // Version 1 has no persisted tree to check yet: not a verdict, and
    // nothing changed.
    for full in [true, false] {
        let mut args = vec!["evidence", "check", "--config", "runner.toml"];
        if full {
            args.push("--full");
        }
        let before = env.cli(&args);
        if version == 1 {
            assert_eq!(before.code(), 1, "{}", before.stdout());
            assert!(!before.stdout().contains("FAILED"), "{}", before.stdout());
            assert!(before.stderr().contains("schema version 1") && before.stderr().contains("Start the runner once"));
        } else {
            assert_eq!(before.code(), 0, "v{version}: {}", before.stdout());
        }
    }
    let db = rusqlite::Connection::open_with_flags(
        env.path("state/evidence/evidence.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    assert_eq!(db.query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0)).unwrap(), version);
    drop(db);

    // This runner opens it (schema, chain, signed history), runs, appends.
    let run = env.exec(&env.hostile("none"));
    assert_eq!(run.outcome(), "committed", "{}", run.stderr);
    let first = run.report["records"][0]["seq"].as_u64().unwrap();
    assert!(first >= expect["records"].as_u64().unwrap(), "the log continues after the fixture's records");
    // Everything the start did not read holds too: records, tree, signed
    // checkpoints, and the fold this release keeps (built or continued).
    let out = env.cli(&["evidence", "check", "--full", "--config", "runner.toml"]).success().stdout();
    assert!(out.contains("verified in full"), "{out}");
    env.cli(&["evidence", "export", "--config", "runner.toml", "-o", "all.bundle"]).success();
    std::fs::copy(fixture().join("runner.vkey"), env.path("runner.vkey")).unwrap();
    let (code, text) = edge_verify(&env.path("all.bundle"), &env.path("runner.vkey"));
    assert_eq!(code, 0, "{text}");
}

#[test]
fn a_store_from_a_newer_runner_is_refused_and_left_untouched() {
    let env = home_with_fixture();
    let db = rusqlite::Connection::open(env.path("state/evidence/evidence.db")).unwrap();
    let newer = edge_runner::store::schema::SCHEMA_VERSION + 1;
    db.pragma_update(None, "user_version", newer).unwrap();
    drop(db);
    let before = files_under(&env.path("state/evidence"));
    let run = env.cli(&["exec", env.hostile("none").to_str().unwrap(), "--config", "runner.toml", "--json"]);
    assert_eq!(run.code(), 1, "{}", run.stdout());
    for needle in [
        &format!("has schema version {newer}, written by a newer edge-runner"),
        &format!("understands versions up to {}", newer - 1),
        "Nothing in the store was changed",
        "restore the backup taken before the upgrade",
    ] {
        assert!(run.stderr().contains(needle), "{needle}: {}", run.stderr());
    }
    assert!(!env.path("data/ok.txt").exists(), "nothing ran");
    // Every file of the store is as it was (the lock file aside, which
    // holds nothing), and so are the commands that only read it.
    let mut after = files_under(&env.path("state/evidence"));
    after.remove("lock");
    assert_eq!(before, after, "the store was not modified");
    for args in
        [vec!["evidence", "show", "--config", "runner.toml"], vec!["backup", "--config", "runner.toml", "--out", "b"]]
    {
        let out = env.cli(&args);
        assert_eq!(out.code(), 1, "{args:?}");
        assert!(out.stderr().contains("written by a newer edge-runner"), "{args:?}: {}", out.stderr());
    }
    let mut after = files_under(&env.path("state/evidence"));
    after.remove("lock");
    assert_eq!(before, after, "the store was not modified");
}

/// Writes `tests/data/store-v<SCHEMA_VERSION>/` (run by hand, once per schema version:
/// `cargo test -p edge-runner --test e2e write_store_fixture -- --ignored`).
/// A runner home with a policy and two approvers: a tier-0 run committed,
/// a capsule refused, a tier-2 proposal waiting and then approved by two
/// people and committed, a reload applied and one refused, a key rotation
/// and a run after it; the store copied as the runner left it at a clean
/// exit, its identity key (a throwaway key, for this fixture only; the key
/// after the rotation), the key pinned before the rotation, and what the
/// test expects to read.
#[test]
#[ignore = "writes the committed fixture; run by hand"]
fn write_store_fixture() {
    let env = Env::new();
    env.write_policy_config("log-volume", &[("config", "payments-config", true)]);
    env.write_approvers(&[("alice", &["sre"]), ("carol", &["payments-owner"])], "");
    assert_eq!(env.exec(&env.hostile("none")).outcome(), "committed");
    std::fs::remove_file(env.path("data/ok.txt")).unwrap();
    let unsigned = env.capsule("unsigned", test_programs::HOSTILE, &Env::hostile_manifest("none", ""), None);
    assert_eq!(env.exec(&unsigned).outcome(), "refused");
    let tier2 = env.capsule(
        "tier2",
        test_programs::HOSTILE,
        &Env::hostile_manifest("none", "[[mounts]]\nname = \"config\"\nwritable = true\n"),
        Some("agent"),
    );
    let waiting = env.exec(&tier2);
    assert_eq!(waiting.outcome(), "awaiting-approval", "{:#}", waiting.report);
    let doc = waiting.report["document"].as_str().unwrap().to_owned();
    env.sign_approval("approve", &doc, "alice", "alice.json");
    env.sign_approval("approve", &doc, "carol", "carol.json");
    assert_eq!(env.exec_with(&tier2, &["alice.json", "carol.json"]).outcome(), "committed");
    // The records this release adds: reloads (one applied with a changed
    // registry, one refused), a key rotation, then a run signed by the new
    // key. (Every start above already wrote a `runner-started` record.)
    let pinned = env.cli(&["evidence", "runner-key", "--config", "runner.toml"]).success().stdout();
    {
        let config = edge_runner::config::RunnerConfig::load(&env.path("runner.toml")).unwrap();
        let runner = edge_runner::pipeline::Runner::open(config).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        env.write_approvers(&[("alice", &["sre"]), ("carol", &["payments-owner"]), ("bob", &["sre"])], "");
        assert!(rt.block_on(runner.reload("fixture")).unwrap().applied);
        let policy = std::fs::read_to_string(env.path("policy.toml")).unwrap();
        std::fs::write(env.path("policy.toml"), "version = 99\n").unwrap();
        assert!(!rt.block_on(runner.reload("fixture")).unwrap().applied);
        std::fs::write(env.path("policy.toml"), policy).unwrap();
    }
    env.cli(&["keys", "rotate", "--config", "runner.toml"]).success();
    std::fs::remove_file(env.path("data/ok.txt")).unwrap();
    assert_eq!(env.exec(&env.hostile("none")).outcome(), "committed");

    let version = edge_runner::store::schema::SCHEMA_VERSION;
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../tests/data/store-v{version}"));
    std::fs::create_dir_all(&out).unwrap();
    for f in ["evidence.db", "latest-checkpoint"] {
        std::fs::copy(env.path(&format!("state/evidence/{f}")), out.join(f)).unwrap();
    }
    std::fs::copy(env.path("state/identity.key"), out.join("identity.key")).unwrap();
    // The key pinned before the rotation: a verifier follows the rotation from it.
    std::fs::write(out.join("runner.vkey"), pinned).unwrap();
    let log = env.evidence();
    let log = log.as_array().unwrap();
    let mut types: Vec<&str> = log.iter().map(|r| r["event"]["type"].as_str().unwrap()).collect();
    types.sort_unstable();
    types.dedup();
    let outcomes: Vec<&Value> =
        log.iter().filter(|r| r["event"]["type"] == "completed").map(|r| &r["event"]["outcome"]).collect();
    let expect = serde_json::json!({
        "schema_version": version,
        "runner": "test-runner",
        "records": log.len(),
        "event_types": types,
        "outcomes": outcomes,
    });
    std::fs::write(out.join("expect.json"), serde_json::to_string_pretty(&expect).unwrap() + "\n").unwrap();
}
