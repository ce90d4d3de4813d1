//! Identity-key rotation and self-attestation with the real binary: `keys
//! rotate` hands the log over from the old key to a new one, signed by
//! both; a reviewer who pinned the old key verifies across it and is told;
//! the runner refuses a forged rotation, a swapped key file and a rotation
//! while it serves; an interrupted rotation is finished at the next start;
//! and every start records which build is running, which reports show.

use std::os::unix::fs::PermissionsExt;

use edge_core::Sha256Digest;
use edge_core::evidence::{Event, RECORD_SCHEMA, Record};
use edge_core::note::NoteSigner;
use edge_core::rotation::Statement;
use edge_core::signature::CapsuleSigningKey;

use crate::harness::{BIN, Env};

const RUNNER: &str = "test-runner";

/// One committed run (the capsule creates `data/ok.txt`, so it is removed first).
/// Commit one tier-0 run; its run id.
fn commit_one(env: &Env) -> String {
    let _ = std::fs::remove_file(env.path("data/ok.txt"));
    let run = env.exec(&env.hostile("none"));
    assert_eq!(run.outcome(), "committed", "{:#}", run.report);
    run.report["run"].as_str().unwrap().to_owned()
}

fn mode(p: &std::path::Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

/// The runner's verifier key, as `evidence runner-key` prints it, into `file`.
fn pin(env: &Env, file: &str) -> String {
    let key = env.cli(&["evidence", "runner-key", "--config", "runner.toml"]).success().stdout();
    std::fs::write(env.path(file), &key).unwrap();
    key.trim().to_owned()
}

fn fingerprint(vkey: &str) -> String {
    edge_core::note::NoteVerifier::parse(vkey).unwrap().fingerprint()
}

/// `edge-verify BUNDLE --key KEYS` in-process (the verifier's own command line).
fn edge_verify(env: &Env, bundle: &str, keys: &str) -> (u8, String, String) {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let args = vec![env.path(bundle).into_os_string(), "--key".into(), env.path(keys).into_os_string()];
    let code = edge_evidence::cli::run(args, &mut out, &mut err, false);
    (code, String::from_utf8(out).unwrap(), String::from_utf8(err).unwrap())
}

/// A private key file as the runner writes one (PKCS#8 PEM, mode 0600).
fn write_key_file(path: &std::path::Path, key: &CapsuleSigningKey) {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).unwrap();
    f.write_all(key.to_pkcs8_pem().as_bytes()).unwrap();
}

fn retired_keys(env: &Env) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(env.path("state"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("identity.key.retired-"))
        .collect();
    v.sort();
    v
}

#[test]
fn keys_rotate_chains_the_old_pin_to_the_new_key_and_the_verifier_names_it() {
    let env = Env::new();
    commit_one(&env);
    let old = pin(&env, "old.keys");
    let old_key_file = std::fs::read(env.path("state/identity.key")).unwrap();
    env.cli(&["evidence", "export", "--config", "runner.toml", "-o", "before.bundle"]).success();

    let out = env.cli(&["keys", "rotate", "--config", "runner.toml"]).success().stdout();
    let new = pin(&env, "new.keys");
    assert_ne!(old, new);
    let record: u64 = out
        .split("at evidence record ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{out}"));
    assert!(out.contains(&format!("old  {}  {old}", fingerprint(&old))), "{out}");
    assert!(out.contains(&format!("new  {}  {new}", fingerprint(&new))), "{out}");
    // The new key is installed at mode 0600; the old one is kept, 0600, as it was.
    assert_eq!(mode(&env.path("state/identity.key")), 0o600);
    let retired = retired_keys(&env);
    assert_eq!(retired.len(), 1, "{retired:?}");
    assert_eq!(mode(&retired[0]), 0o600);
    assert_eq!(std::fs::read(&retired[0]).unwrap(), old_key_file);
    assert!(!env.path("state/identity.key.next").exists());
    // A backup leaves the retired key out (and says so): its bytes are
    // nowhere in it.
    let out = env.cli(&["backup", "--config", "runner.toml", "--out", "after-rotation", "--json"]).success();
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(env.path("after-rotation/manifest.json")).unwrap()).unwrap();
    let skipped = manifest["not_copied"].to_string();
    assert!(skipped.contains("identity.key.retired-") && skipped.contains("retired by `keys rotate`"), "{manifest:#}");
    let mut files = Vec::new();
    let mut dirs = vec![env.path("after-rotation")];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() { dirs.push(p) } else { files.push(p) }
        }
    }
    assert!(!files.is_empty(), "{}", out.stdout());
    for f in files {
        assert_ne!(std::fs::read(&f).unwrap(), old_key_file, "the retired key is in the backup as {}", f.display());
    }

    // The runner starts with the new key and signs with it.
    let after = commit_one(&env);
    env.cli(&["evidence", "export", "--config", "runner.toml", "-o", "all.bundle"]).success();
    env.cli(&["evidence", "export", "--config", "runner.toml", "--since", "before.bundle", "-o", "since.bundle"])
        .success();

    // A reviewer who pinned the old key: the chain leads to the new one, and
    // the output names the rotation.
    let named =
        format!("identity key rotated at record {record}: old {} → new {}", fingerprint(&old), fingerprint(&new));
    for bundle in ["all.bundle", "since.bundle"] {
        let (code, stdout, stderr) = edge_verify(&env, bundle, "old.keys");
        assert_eq!(code, 0, "{bundle}: {stdout}{stderr}");
        assert!(stdout.lines().any(|l| l.starts_with(&named)), "{bundle}: {stdout}");
    }
    let v = env.cli(&["evidence", "verify", "all.bundle", "--key", "old.keys"]).success().stdout();
    assert!(v.contains(&named), "{v}");
    // The new pin alone verifies too, and the bundle exported before the
    // rotation still verifies with the old key.
    assert_eq!(edge_verify(&env, "all.bundle", "new.keys").0, 0);
    assert_eq!(edge_verify(&env, "before.bundle", "old.keys").0, 0);
    // A one-run export after the rotation carries no rotation record: with
    // only the old pin it fails, and says which key signed and what to do.
    env.cli(&["evidence", "export", "--config", "runner.toml", "--run", &after, "-o", "run.bundle"]).success();
    let (code, stdout, stderr) = edge_verify(&env, "run.bundle", "old.keys");
    assert_ne!(code, 0, "{stdout}");
    let new_id = new.split('+').nth(1).unwrap();
    let said = format!("{stdout}{stderr}");
    assert!(said.contains("checkpoint.signature") && said.contains(&format!("key id {new_id}")), "{said}");
    assert!(said.contains("keys rotate") && said.contains("verify a full export with the key you pinned"), "{said}");
    assert_eq!(edge_verify(&env, "run.bundle", "new.keys").0, 0, "the new pin verifies it");
    // `evidence show` lists the rotation.
    let show = env.cli(&["evidence", "show", "--config", "runner.toml"]).success().stdout();
    assert!(show.contains(&format!("key         rotated: {} → {}", fingerprint(&old), fingerprint(&new))), "{show}");
}

#[test]
fn a_rotation_is_refused_while_the_runner_serves() {
    let env = crate::server::setup(16);
    let server = crate::server::Server::start(&env);
    let old = pin(&env, "old.keys");
    let refused = env.cli(&["keys", "rotate", "--config", "runner.toml"]);
    assert_eq!(refused.code(), 1, "{}", refused.stdout());
    let err = refused.stderr();
    assert!(err.contains("in use by a running runner") && err.contains("stop it first"), "{err}");
    assert_eq!(pin(&env, "now.keys"), old, "nothing rotated");
    assert!(retired_keys(&env).is_empty() && !env.path("state/identity.key.next").exists());
    drop(server);
    env.cli(&["keys", "rotate", "--config", "runner.toml"]).success();
    assert_ne!(pin(&env, "now.keys"), old);
}

/// The last record's position and hash, and the chain a forged record must continue.
fn tip(env: &Env) -> (u64, Sha256Digest) {
    let db = rusqlite::Connection::open(env.path("state/evidence/evidence.db")).unwrap();
    let (n, hash): (i64, String) = db
        .query_row("SELECT seq, hash FROM records ORDER BY seq DESC LIMIT 1", [], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap();
    (n as u64 + 1, hash.parse().unwrap())
}

/// Append a record straight into the store, chained properly (what someone
/// with write access to the state directory can do: the triggers only
/// stop UPDATE and DELETE), with its hashes in the persisted Merkle tree.
fn append_raw(env: &Env, r: &Record) {
    use edge_runner::store::tree::{self, StoredTree};
    let db = rusqlite::Connection::open(env.path("state/evidence/evidence.db")).unwrap();
    let body = String::from_utf8(r.canonical_bytes().unwrap()).unwrap();
    let mut range = edge_core::merkle::compact_of(&StoredTree::new(&db, r.seq), r.seq).unwrap();
    range.push_reporting(edge_core::merkle::leaf_hash(body.as_bytes()), |level, index, hash| {
        tree::insert(&db, level, index, hash).unwrap();
    });
    db.execute(
        "INSERT INTO records (seq, run, type, time, prev, hash, body) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        rusqlite::params![
            r.seq as i64,
            r.run,
            r.event_type(),
            r.time,
            r.prev.to_string(),
            Sha256Digest::of(body.as_bytes()).to_string(),
            body
        ],
    )
    .unwrap();
}

fn start_fails(env: &Env, needles: &[&str]) -> String {
    let out = env.cli(&["exec", env.hostile("none").to_str().unwrap(), "--config", "runner.toml"]);
    assert_eq!(out.code(), 1, "the runner must refuse to start:\n{}\n{}", out.stdout(), out.stderr());
    let err = out.stderr();
    for n in needles {
        assert!(err.contains(n), "`{n}` not in:\n{err}");
    }
    err
}

#[test]
fn a_forged_rotation_in_the_store_is_refused_at_start() {
    let env = Env::new();
    commit_one(&env);
    let old = pin(&env, "old.keys");
    // An attacker's key, "rotated to" with a statement it signed itself in
    // the old key's place.
    let evil: NoteSigner = CapsuleSigningKey::generate().note_signer(RUNNER).unwrap();
    let (seq, prev) = tip(&env);
    let (old_key, new_key) = (old.clone(), evil.verifier().to_vkey());
    let time = "2026-12-03T12:00:00Z";
    let st = Statement { origin: RUNNER, old_key: &old_key, new_key: &new_key, seq, prev, time };
    let sig = |s: &NoteSigner| s.signature_line(&st.text()).trim_end().rsplit_once(' ').unwrap().1.to_owned();
    let (old_signature, new_signature) = (sig(&evil), sig(&evil));
    let forged = Record {
        schema: RECORD_SCHEMA.into(),
        seq,
        time: time.into(),
        run: "runner".into(),
        prev,
        event: Event::KeyRotation { old_key: old_key.clone(), new_key: new_key.clone(), old_signature, new_signature },
    };
    append_raw(&env, &forged);
    // With the attacker's key file in place, or without: refused, naming the record and why.
    let why = ["key.rotation_old_signature", &format!("record {seq}"), &fingerprint(&old), "made by another key"];
    start_fails(&env, &why);
    std::fs::remove_file(env.path("state/identity.key")).unwrap();
    write_key_file(&env.path("state/identity.key"), &CapsuleSigningKey::generate());
    start_fails(&env, &why);
}

#[test]
fn a_key_file_replaced_without_a_rotation_is_refused_at_start() {
    let env = Env::new();
    commit_one(&env);
    let old = pin(&env, "old.keys");
    std::fs::remove_file(env.path("state/identity.key")).unwrap();
    let other = CapsuleSigningKey::generate();
    write_key_file(&env.path("state/identity.key"), &other);
    let fp_other = other.note_signer(RUNNER).unwrap().verifier().fingerprint();
    start_fails(&env, &[&fp_other, &fingerprint(&old), "keys rotate", "refuses to start"]);
    // `keys rotate` will not rotate from it either.
    let r = env.cli(&["keys", "rotate", "--config", "runner.toml"]);
    assert_eq!(r.code(), 1);
    assert!(r.stderr().contains("rotate from the log's key"), "{}", r.stderr());
}

#[test]
fn an_interrupted_rotation_is_finished_at_the_next_start_and_an_unused_key_removed() {
    let env = Env::new();
    commit_one(&env);
    env.cli(&["keys", "rotate", "--config", "runner.toml"]).success();
    let new = pin(&env, "new.keys");
    // Put the files back as a crash after the record (and the new key's
    // checkpoint) but before the installation leaves them.
    let retired = retired_keys(&env).pop().unwrap();
    std::fs::rename(env.path("state/identity.key"), env.path("state/identity.key.next")).unwrap();
    std::fs::rename(&retired, env.path("state/identity.key")).unwrap();
    assert_ne!(pin(&env, "now.keys"), new, "the old key file is back");
    // The next start finishes it: the new key is installed, the old kept.
    commit_one(&env);
    assert_eq!(pin(&env, "now.keys"), new);
    assert!(!env.path("state/identity.key.next").exists());
    assert_eq!(retired_keys(&env).len(), 1);
    // A new key a rotation never recorded (a crash before its record) is removed.
    write_key_file(&env.path("state/identity.key.next"), &CapsuleSigningKey::generate());
    commit_one(&env);
    assert!(!env.path("state/identity.key.next").exists());
    assert_eq!(pin(&env, "now.keys"), new);
    env.cli(&["evidence", "export", "--config", "runner.toml", "-o", "all.bundle"]).success();
    assert_eq!(edge_verify(&env, "all.bundle", "new.keys").0, 0);
}

#[test]
fn every_start_records_the_runner_build_and_the_report_names_it_for_each_run() {
    let env = Env::new();
    let run = env.exec(&env.hostile("none"));
    assert_eq!(run.outcome(), "committed");
    let binary = Sha256Digest::of(&std::fs::read(BIN).unwrap()).to_string();
    let version = env!("CARGO_PKG_VERSION");
    let config = Sha256Digest::of(&std::fs::read(env.path("runner.toml")).unwrap()).to_string();
    // The record, before the run.
    let records = env.evidence();
    let started: Vec<&serde_json::Value> =
        records.as_array().unwrap().iter().filter(|r| r["event"]["type"] == "runner-started").collect();
    assert_eq!(started.len(), 1, "one start so far");
    let e = &started[0]["event"];
    assert_eq!((e["binary"].as_str(), e["version"].as_str()), (Some(binary.as_str()), Some(version)));
    assert_eq!(e["config"].as_str(), Some(config.as_str()));
    let rev = e["revision"].as_str().unwrap();
    assert!(rev == "unknown" || (rev.len() == 40 && rev.bytes().all(|b| b.is_ascii_hexdigit())), "{rev}");
    // Every start records one: the export is a start too.
    env.cli(&["evidence", "export", "--config", "runner.toml", "-o", "all.bundle"]).success();
    pin(&env, "runner.keys");
    let verified = env.cli(&["evidence", "verify", "all.bundle", "--key", "runner.keys"]).success().stdout();
    assert!(
        verified.contains(&format!("runner build edge-runner {version} (rev")) && verified.contains(&binary),
        "{verified}"
    );
    let report = env.cli(&["evidence", "report", "all.bundle", "--key", "runner.keys", "--html", "r.html"]).success();
    assert!(report.stdout().contains(&format!("build       edge-runner {version} (rev")), "{}", report.stdout());
    let html = std::fs::read_to_string(env.path("r.html")).unwrap();
    let row = html.split(&format!("id=\"run-{}\"", run.report["run"].as_str().unwrap())).nth(1).unwrap();
    let row = &row[..row.find("</tr>").unwrap()];
    assert!(row.contains(&format!("<td class=\"build\">{version} (rev")) && row.contains(&binary), "{row}");
    let builds = &html[html.find("<ul id=\"runner-builds\">").unwrap()..];
    assert!(builds[..builds.find("</ul>").unwrap()].contains(&binary), "{builds}");
}
