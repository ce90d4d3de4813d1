//! The evidence plane end to end: a real runner makes more than fifty runs
//! (automatic, refused, denied, approved by a quorum, replayed), exports them,
//! and the offline verifier must accept the bundle — and detect every
//! tampering: byte flips all over the file, deleted, duplicated, reordered
//! and truncated records, records spliced from another runner, a checkpoint
//! re-signed with another key, swapped artifacts, and (with the runner's own
//! key) forged decisions and approvals. Plus SIGKILL during appends, the
//! stock sqlite3 tool, and the HTML report in headless Chromium.

use std::collections::BTreeMap;
use std::io::BufRead as _;
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use edge_core::evidence::{Event, GENESIS, Record};
use edge_core::merkle::{self, CompactRange};
use edge_core::note::{Checkpoint, NoteSigner, NoteVerifier};
use edge_core::signature::CapsuleSigningKey;
use edge_core::{Sha256Digest, canonical};
use edge_evidence::bundle::{self, Header, Scope};
use edge_evidence::{Failure, Level, verify};

use crate::harness::Env;

struct Fixture {
    env: Env,
    bundle: Vec<u8>,
    keys: Vec<NoteVerifier>,
    runs: usize,
}

/// The shared fixture: one runner, 50+ runs of every kind, exported in full.
fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let env = Env::new();
        let people: &[(&str, &[&str])] = &[("alice", &["sre"]), ("carol", &["payments-owner"])];
        env.write_policy_config("log-volume", &[]);
        env.write_approvers(people, "");
        let capsule = env.hostile("none");
        let mut runs = 0;
        for _ in 0..46 {
            let _ = std::fs::remove_file(env.path("data/ok.txt"));
            let run = env.exec(&capsule);
            assert_eq!(run.outcome(), "committed", "{:#}", run.report);
            runs += 1;
        }
        let untrusted =
            env.capsule("untrusted", test_programs::HOSTILE, &Env::hostile_manifest("none", ""), Some("other"));
        for _ in 0..2 {
            assert_eq!(env.exec(&untrusted).outcome(), "refused");
            runs += 1;
        }
        // Tier 2: propose, two approvals, commit; the same approvals again are refused.
        env.write_policy_config("payments-config", &[]);
        env.write_approvers(people, "");
        let _ = std::fs::remove_file(env.path("data/ok.txt"));
        let proposed = env.exec(&capsule);
        assert_eq!(proposed.outcome(), "awaiting-approval", "{:#}", proposed.report);
        let proposal = proposed.report["document"].as_str().unwrap().to_owned();
        let mut approvals = Vec::new();
        for who in ["alice", "carol"] {
            let out = format!("{who}.approval");
            env.sign_approval("approve", &proposal, who, &out);
            approvals.push(out);
        }
        let a: Vec<&str> = approvals.iter().map(String::as_str).collect();
        assert_eq!(env.exec_with(&capsule, &a).outcome(), "committed");
        assert_eq!(env.exec_with(&capsule, &a).outcome(), "refused");
        runs += 3;
        // Denied by policy.
        env.write_policy_config("ledger-db", &[]);
        assert_eq!(env.exec(&capsule).outcome(), "refused");
        runs += 1;

        env.cli(&["evidence", "export", "--config", "runner.toml", "-o", "full.bundle"]).success();
        let vkey = env.cli(&["evidence", "runner-key", "--config", "runner.toml"]).success().stdout();
        std::fs::write(env.path("runner.vkey"), &vkey).unwrap();
        let keys = edge_evidence::parse_keys(&vkey).unwrap();
        let bundle = std::fs::read(env.path("full.bundle")).unwrap();
        Fixture { env, bundle, keys, runs }
    })
}

/// A copy of the fixture's runner home, for tests that change it (an
/// export appends records and signs a checkpoint).
fn home_copy(f: &Fixture) -> tempfile::TempDir {
    let home = tempfile::tempdir().unwrap();
    let status = Command::new("cp").args(["-a", &format!("{}/.", f.env.path("").display())]).arg(home.path()).status();
    assert!(status.unwrap().success());
    home
}

/// `edge-runner evidence export` of `home`'s whole log to `all.bundle`
/// there, which must succeed; what it printed.
fn export_all(home: &std::path::Path) -> String {
    let out = Command::new(crate::harness::BIN)
        .args(["evidence", "export", "--config", "runner.toml", "-o", "all.bundle"])
        .current_dir(home)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn fails(f: &Fixture, bytes: &[u8]) -> Failure {
    match verify(bytes, &f.keys, Level::Full) {
        Ok(v) => panic!("a tampered bundle verified ({} records)", v.record_count),
        Err(e) => e,
    }
}

/// The bundle's parts, to rebuild after changing them.
pub(crate) struct Parts {
    header: Header,
    pub(crate) records: Vec<String>,
    artifacts: Vec<(Sha256Digest, Vec<u8>)>,
    checkpoint: String,
}

pub(crate) fn parts(bytes: &[u8]) -> Parts {
    let b = bundle::parse(bytes).unwrap();
    Parts {
        header: b.header.clone(),
        records: b.records.iter().map(|s| (*s).to_owned()).collect(),
        artifacts: b.artifacts.clone(),
        checkpoint: b.checkpoint.to_owned(),
    }
}

impl Parts {
    /// Write back, with the header's counts made consistent (as a careful forger would).
    pub(crate) fn write(&self) -> Vec<u8> {
        let mut h = self.header.clone();
        h.records = self.records.len() as u64;
        h.artifacts = self.artifacts.len() as u64;
        let recs: Vec<&str> = self.records.iter().map(String::as_str).collect();
        let arts: Vec<(Sha256Digest, &[u8])> = self.artifacts.iter().map(|(d, b)| (*d, b.as_slice())).collect();
        bundle::write(&h, &recs, &arts, &self.checkpoint).unwrap()
    }

    /// Re-chain every record, rebuild the tree and sign a new checkpoint with `signer`.
    pub(crate) fn reseal(&mut self, signer: &NoteSigner) {
        let mut prev = GENESIS;
        let mut range = CompactRange::default();
        for (seq, line) in self.records.iter_mut().enumerate() {
            let mut r: Record = serde_json::from_str(line).unwrap();
            r.seq = seq as u64;
            r.prev = prev;
            *line = String::from_utf8(canonical::to_canonical_vec(&r).unwrap()).unwrap();
            prev = Sha256Digest::of(line.as_bytes());
            range.push(merkle::leaf_hash(line.as_bytes()));
        }
        // Keep only the artifacts the remaining records reference.
        let referenced: std::collections::BTreeSet<Sha256Digest> =
            self.records.iter().flat_map(|l| serde_json::from_str::<Record>(l).unwrap().artifacts()).collect();
        self.artifacts.retain(|(d, _)| referenced.contains(d));
        let cp = Checkpoint { origin: self.header.origin.clone(), size: range.size(), root: range.root() };
        self.header.tree_size = cp.size;
        self.checkpoint = signer.sign(&cp.text()).unwrap();
    }

    fn find(&self, kind: &str) -> usize {
        self.records.iter().position(|l| l.contains(&format!("\"type\":\"{kind}\""))).unwrap()
    }
}

/// The runner's own identity key (a compromised or buggy runner).
fn runner_signer(f: &Fixture) -> NoteSigner {
    identity_signer(&f.env)
}

/// The identity key of the runner in `env` (to forge with, in tests).
pub(crate) fn identity_signer(env: &Env) -> NoteSigner {
    let pem = std::fs::read_to_string(env.path("state/identity.key")).unwrap();
    CapsuleSigningKey::from_pkcs8_pem(&pem).unwrap().note_signer("test-runner").unwrap()
}

#[test]
fn a_fifty_run_export_verifies_offline_with_every_check() {
    let f = fixture();
    let v = verify(&f.bundle, &f.keys, Level::Full).unwrap();
    assert!(f.runs >= 50);
    assert_eq!(v.runs.len(), f.runs);
    let approved = v.runs.iter().find(|r| r.approvals.len() == 2).expect("the approved run");
    assert_eq!(approved.tier, Some(2));
    assert!(v.runs.iter().any(|r| r.refusals.iter().any(|x| x.1 == "policy.denied")));
    // The CLI says the same, and the per-run receipt is a C2SP tlog-proof.
    let out = f.env.cli(&["evidence", "verify", "full.bundle", "--key", "runner.vkey"]).success().stdout();
    assert!(out.contains(&format!("{} runs", f.runs)), "{out}");
    let receipts: Vec<_> = std::fs::read_dir(f.env.path("state/receipts")).unwrap().collect();
    assert_eq!(receipts.len(), f.runs);
    // The fold the runner kept in its store (proposals, what was spent) is
    // what folding the records gives, after runs that resumed a proposal
    // across the runner's commits; no proposal is listed twice.
    let out = f.env.cli(&["evidence", "check", "--full", "--config", "runner.toml"]).success();
    assert!(out.stdout().contains("verified in full"), "{}", out.stdout());
    // Off a terminal, progress only when asked for: then on stderr, ending
    // at every record checked.
    assert!(!out.stderr().contains("checking: records"), "{}", out.stderr());
    let shown = f.env.cli(&["evidence", "check", "--full", "--progress", "--config", "runner.toml"]).success();
    let records = shown.stdout().split(" records").next().unwrap().rsplit(' ').next().unwrap().to_owned();
    assert!(shown.stderr().contains(&format!("checking: records {records}/{records}\n")), "{}", shown.stderr());
    // The type name stored beside each record is its serde tag.
    for line in &parts(&f.bundle).records {
        let tag: serde_json::Value = serde_json::from_str(line).unwrap();
        let r: Record = serde_json::from_str(line).unwrap();
        assert_eq!(tag["event"]["type"].as_str(), Some(r.event_type()), "{line}");
    }
}

/// Which checks may fire for a change in each part of the file.
fn region_checks(offset: usize, p: &bundle::Bundle<'_>, bytes: &[u8]) -> &'static [&'static str] {
    let base = bytes.as_ptr() as usize;
    let records_start = p.records.first().map_or(usize::MAX, |r| r.as_ptr() as usize - base);
    let checkpoint_start = p.checkpoint.as_ptr() as usize - base;
    let artifacts_start = p.records.last().map_or(0, |r| r.as_ptr() as usize - base + r.len() + 1);
    if offset < records_start {
        &[
            "bundle.format",
            "checkpoint.size",
            "checkpoint.signature",
            "checkpoint.origin",
            "tree.size",
            "record.format",
            "record.sequence",
        ]
    } else if offset < artifacts_start {
        &["bundle.format", "record.format", "record.sequence", "record.chain", "tree.root", "tree.size"]
    } else if offset < checkpoint_start {
        &["bundle.format", "artifact.digest"]
    } else {
        // (its `—` is multi-byte: a flip there can break the UTF-8 of the file)
        &["checkpoint.signature", "checkpoint.format", "bundle.format"]
    }
}

#[test]
fn every_byte_flip_is_detected_for_the_right_reason() {
    let f = fixture();
    let parsed = bundle::parse(&f.bundle).unwrap();
    let n = f.bundle.len();
    let samples = 1200;
    // Spread over the whole file with a little jitter; plus every byte of the
    // small parts (magic, header, checkpoint) that an even spread would miss.
    let spread = (0..samples).map(|k| (k * n / samples + (k * 7919) % (n / samples).max(1)).min(n - 1));
    let records_start = parsed.records[0].as_ptr() as usize - f.bundle.as_ptr() as usize;
    let checkpoint_start = parsed.checkpoint.as_ptr() as usize - f.bundle.as_ptr() as usize;
    let positions: Vec<usize> = spread.chain(0..records_start).chain(checkpoint_start..n).collect();
    assert!(positions.len() >= 1000);
    let mut by_check: BTreeMap<&str, usize> = BTreeMap::new();
    for (k, &pos) in positions.iter().enumerate() {
        let mask = [0x01u8, 0x02, 0x04, 0x20, 0x40][k % 5];
        let mut bad = f.bundle.clone();
        bad[pos] ^= mask;
        let e = fails(f, &bad);
        let allowed = region_checks(pos, &parsed, &f.bundle);
        assert!(allowed.contains(&e.check), "flip at byte {pos} (of {n}) failed as `{e}`, expected one of {allowed:?}");
        assert!(!e.detail.is_empty());
        *by_check.entry(e.check).or_default() += 1;
    }
    eprintln!("{} byte flips over {n} bytes, all detected: {by_check:?}", positions.len());
    // The sample reached every part of the file.
    for check in ["bundle.format", "record.chain", "artifact.digest", "checkpoint.signature", "checkpoint.size"] {
        assert!(by_check.contains_key(check), "no flip was caught by {check}: {by_check:?}");
    }
}

#[test]
fn deleted_duplicated_reordered_and_truncated_records_are_detected() {
    let f = fixture();
    let p = parts(&f.bundle);
    let mid = p.records.len() / 2;

    let mut del = parts(&f.bundle);
    del.records.remove(mid);
    let e = fails(f, &del.write());
    assert_eq!((e.check, e.record), ("record.sequence", Some(mid as u64 + 1)), "{e}");

    let mut dup = parts(&f.bundle);
    dup.records.insert(mid, p.records[mid].clone());
    let e = fails(f, &dup.write());
    assert_eq!(e.check, "record.sequence", "{e}");

    let mut swap = parts(&f.bundle);
    swap.records.swap(mid, mid + 1);
    let e = fails(f, &swap.write());
    assert_eq!(e.check, "record.sequence", "{e}");

    // The log's tail cut off (with the counts fixed up): the signed tree is bigger.
    let mut cut = parts(&f.bundle);
    cut.records.truncate(p.records.len() - 5);
    let e = fails(f, &cut.write());
    assert_eq!(e.check, "tree.size", "{e}");

    // The file's tail cut off anywhere.
    for keep in [f.bundle.len() - 1, f.bundle.len() - 100, f.bundle.len() / 2, 200, 10] {
        let e = fails(f, &f.bundle[..keep]);
        assert!(["bundle.format", "checkpoint.signature"].contains(&e.check), "cut at {keep}: {e}");
    }

    // Removing a whole run's records and re-chaining without the key: the signature cannot follow.
    let mut gone = parts(&f.bundle);
    let run = serde_json::from_str::<Record>(&gone.records[mid]).unwrap().run;
    gone.records.retain(|l| !l.contains(&format!("\"run\":\"{run}\"")));
    gone.reseal(&CapsuleSigningKey::generate().note_signer("test-runner").unwrap());
    let e = fails(f, &gone.write());
    assert_eq!(e.check, "checkpoint.signature", "{e}");
}

#[test]
fn records_spliced_from_another_runner_and_foreign_checkpoints_are_detected() {
    let f = fixture();
    // Another runner with the same name, two runs.
    let other = Env::new();
    let c = other.hostile("none");
    other.exec(&c);
    other.exec(&c);
    other.cli(&["evidence", "export", "--config", "runner.toml", "-o", "other.bundle"]).success();
    let theirs = parts(&std::fs::read(other.path("other.bundle")).unwrap());

    let mut spliced = parts(&f.bundle);
    let at = spliced.records.len() / 3;
    spliced.records.splice(at..at + 3, theirs.records[3..6].iter().cloned());
    let e = fails(f, &spliced.write());
    assert!(["record.sequence", "record.chain"].contains(&e.check), "{e}");

    // Their whole bundle checked against our key: their checkpoint is not ours.
    let e = fails(f, &std::fs::read(other.path("other.bundle")).unwrap());
    assert_eq!(e.check, "checkpoint.signature", "{e}");

    // Our records under their checkpoint.
    let mut swapped = parts(&f.bundle);
    swapped.checkpoint = theirs.checkpoint.clone();
    let e = fails(f, &swapped.write());
    assert_eq!(e.check, "checkpoint.signature", "{e}");
}

#[test]
fn a_checkpoint_re_signed_with_another_key_is_refused() {
    let f = fixture();
    let mut p = parts(&f.bundle);
    // Rewrite history: the denied run never happened; re-seal with an attacker key of the same name.
    let i = p.find("refused");
    p.records.truncate(i);
    p.reseal(&CapsuleSigningKey::generate().note_signer("test-runner").unwrap());
    let e = fails(f, &p.write());
    assert_eq!(e.check, "checkpoint.signature", "{e}");
    assert!(e.detail.contains("not signed by a trusted runner key"), "{e}");
}

#[test]
fn swapped_artifacts_are_detected() {
    let f = fixture();
    // Same digest line, other bytes of the same size.
    let mut p = parts(&f.bundle);
    let (d, bytes) = &mut p.artifacts[0];
    let d = *d;
    bytes[0] ^= 0x01;
    let e = fails(f, &p.write());
    assert_eq!(e.check, "artifact.digest", "{e}");
    assert!(e.detail.contains(&d.to_string()), "{e}");

    // The policy artifact replaced by another document of the same size, under its own digest.
    let mut p = parts(&f.bundle);
    let policy = p.artifacts.iter().position(|(_, b)| b.starts_with(b"# Example policy")).unwrap();
    let mut other = p.artifacts[policy].1.clone();
    let at = other.windows(13).position(|w| w == b"default_tier ").unwrap();
    other[at + 15] = b'1';
    p.artifacts[policy] = (Sha256Digest::of(&other), other);
    p.artifacts.sort_by_key(|(d, _)| *d);
    let e = fails(f, &p.write());
    assert!(["artifact.missing", "artifact.unreferenced"].contains(&e.check), "{e}");
}

#[test]
fn even_with_the_runner_key_forged_decisions_and_approvals_fail_replay() {
    let f = fixture();
    let signer = runner_signer(f);
    // Sanity: re-sealing the untouched records with the runner key verifies.
    let mut same = parts(&f.bundle);
    same.reseal(&signer);
    verify(&same.write(), &f.keys, Level::Full).unwrap();

    // The tier-2 decision rewritten as tier 0.
    let mut p = parts(&f.bundle);
    let i = p.records.iter().position(|l| l.contains("\"type\":\"decision\"") && l.contains("\"tier\":2")).unwrap();
    let mut r: Record = serde_json::from_str(&p.records[i]).unwrap();
    let Event::Decision { decision, .. } = &mut r.event else { unreachable!() };
    decision.tier = 0;
    p.records[i] = String::from_utf8(canonical::to_canonical_vec(&r).unwrap()).unwrap();
    p.reseal(&signer);
    let e = fails(f, &p.write());
    assert_eq!((e.check, e.record), ("decision.replay", Some(i as u64)), "{e}");

    // An accepted approval credited to someone else.
    let mut p = parts(&f.bundle);
    let i = p.find("approval-accepted");
    p.records[i] = p.records[i].replace("alice@bank.example", "mallory@bank.example");
    p.reseal(&signer);
    let e = fails(f, &p.write());
    assert_eq!(e.check, "approval.record", "{e}");

    // The proposal recorded as expired before its quorum: it must not have run.
    let mut p = parts(&f.bundle);
    let q = p.find("quorum");
    let mut r: Record = serde_json::from_str(&p.records[q]).unwrap();
    let Event::Quorum { proposal, .. } = &r.event else { unreachable!() };
    r.event = Event::ProposalExpired { proposal: proposal.clone(), waited_secs: 90_000, limit_secs: 86_400 };
    r.run = "runner".into();
    p.records.insert(q, String::from_utf8(canonical::to_canonical_vec(&r).unwrap()).unwrap());
    p.reseal(&signer);
    let e = fails(f, &p.write());
    assert_eq!(e.check, "proposal.expired", "{e}");

    // The met quorum recorded a second time: the proposal would run twice
    // on the same approvals.
    let mut p = parts(&f.bundle);
    let q = p.find("quorum");
    let copy = p.records[q].clone();
    p.records.insert(q + 1, copy);
    p.reseal(&signer);
    let e = fails(f, &p.write());
    assert_eq!(e.check, "proposal.executed", "{e}");

    // The quorum and its approvals removed, the run left authorized.
    let mut p = parts(&f.bundle);
    let q = p.find("quorum");
    p.records.remove(q);
    p.reseal(&signer);
    let e = fails(f, &p.write());
    assert_eq!(e.check, "authorize.quorum", "{e}");

    // The verifier checks runs with identical inputs once and caches the
    // result (decision replay, capsule signature): a forgery in the last of
    // the 46 runs of the same capsule must still be found.
    let mut p = parts(&f.bundle);
    let i = p.records.iter().rposition(|l| l.contains("\"type\":\"decision\"") && l.contains("\"tier\":0")).unwrap();
    let mut r: Record = serde_json::from_str(&p.records[i]).unwrap();
    let Event::Decision { decision, .. } = &mut r.event else { unreachable!() };
    decision.reasons.clear();
    p.records[i] = String::from_utf8(canonical::to_canonical_vec(&r).unwrap()).unwrap();
    p.reseal(&signer);
    let e = fails(f, &p.write());
    assert_eq!((e.check, e.record), ("decision.replay", Some(i as u64)), "{e}");
    // The last submission of the trusted capsule made to carry the
    // signature bundle of the untrusted one (a real signature, over another manifest).
    let mut p = parts(&f.bundle);
    let bundles: Vec<(usize, Sha256Digest)> = p
        .records
        .iter()
        .enumerate()
        .filter_map(|(i, l)| match serde_json::from_str::<Record>(l).unwrap().event {
            Event::Submission { bundle: Some(b), .. } => Some((i, b)),
            _ => None,
        })
        .collect();
    let (last, trusted) = *bundles.iter().rev().find(|(_, b)| *b == bundles[0].1).unwrap();
    let (_, other) = *bundles.iter().find(|(_, b)| *b != trusted).unwrap();
    let mut r: Record = serde_json::from_str(&p.records[last]).unwrap();
    let Event::Submission { bundle, .. } = &mut r.event else { unreachable!() };
    *bundle = Some(other);
    p.records[last] = String::from_utf8(canonical::to_canonical_vec(&r).unwrap()).unwrap();
    p.reseal(&signer);
    let e = fails(f, &p.write());
    assert_eq!(e.check, "capsule.signature", "{e}");
    assert_eq!(e.run.as_deref(), Some(r.run.as_str()), "{e}");

    // A run's terminal record removed (the last run's: the export that
    // made the bundle recorded the runner's start after it).
    let mut p = parts(&f.bundle);
    let last = p.records.iter().rposition(|l| l.contains("\"type\":\"completed\"")).unwrap();
    p.records.remove(last);
    p.reseal(&signer);
    let e = fails(f, &p.write());
    assert_eq!(e.check, "run.terminal", "{e}");
}

#[test]
fn an_export_killed_or_failing_mid_stream_leaves_no_bundle_that_looks_complete() {
    let f = fixture();
    let home = home_copy(f);
    let export = |limit_kib: Option<u32>| {
        // `ulimit -f`: the kernel stops the export with SIGXFSZ once a
        // file it writes reaches the limit: above what the store's WAL
        // takes for the export's own records, below the bundle's size.
        let ulimit = limit_kib.map_or_else(String::new, |k| format!("ulimit -f {k}; "));
        Command::new("sh")
            .arg("-c")
            .arg(format!("{ulimit}exec \"$0\" \"$@\""))
            .arg(crate::harness::BIN)
            .args(["evidence", "export", "--config", "runner.toml", "-o", "all.bundle"])
            .current_dir(home.path())
            .output()
            .unwrap()
    };
    let bundle_path = home.path().join("all.bundle");
    let partial = home.path().join(".all.bundle.partial");
    // A symlink planted where the export writes its partial file is
    // removed, never followed.
    std::fs::write(home.path().join("victim"), "precious").unwrap();
    std::os::unix::fs::symlink(home.path().join("victim"), &partial).unwrap();
    let out = export(None);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read_to_string(home.path().join("victim")).unwrap(), "precious");
    let earlier = std::fs::read(&bundle_path).unwrap();
    assert!(earlier.len() > 450 * 1024, "the bundle must be larger than the limit below");
    verify(&earlier, &f.keys, Level::Full).unwrap();
    assert!(!partial.exists());

    // Killed mid-stream: the earlier bundle is untouched; what the export
    // had written is in the `.partial` file, which ends before its
    // checkpoint and so never verifies.
    // 400 blocks: 200 KiB (dash) or 400 KiB (bash).
    let out = export(Some(400));
    assert_eq!(std::os::unix::process::ExitStatusExt::signal(&out.status), Some(libc::SIGXFSZ), "{out:?}");
    assert_eq!(std::fs::read(&bundle_path).unwrap(), earlier);
    let cut = std::fs::read(&partial).unwrap();
    assert!(!cut.is_empty() && cut.len() < earlier.len(), "{} bytes", cut.len());
    let e = verify(&cut, &f.keys, Level::Integrity).unwrap_err();
    assert_eq!(e.check, "bundle.format", "{e}");
    assert!(e.detail.contains("the file ends before"), "{e}");

    // An artifact altered in the store is found while it is copied, after
    // the records were streamed: the export fails naming it, removes its
    // partial file and leaves the earlier bundle. The altered one is the
    // last the export copies (artifacts go out in digest order), chosen
    // among those it carries: the store also keeps documents no record
    // references as an artifact (the config text a `runner-started`
    // record names by digest), which an export leaves out and so never
    // reads.
    let digest = bundle::parse(&earlier).unwrap().artifacts.iter().map(|(d, _)| d.to_string()).max().unwrap();
    {
        let db = rusqlite::Connection::open(home.path().join("state/evidence/evidence.db")).unwrap();
        db.execute_batch("DROP TRIGGER artifacts_append_only_u").unwrap();
        let altered =
            db.execute("UPDATE artifacts SET bytes = CAST('forged' AS BLOB) WHERE digest = ?1", [&digest]).unwrap();
        assert_eq!(altered, 1, "{digest} is in the store");
    }
    let out = export(None);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("artifact {digest} in the store does not match its digest")), "{err}");
    assert_eq!(std::fs::read(&bundle_path).unwrap(), earlier);
    assert!(!partial.exists(), "a failed export removes its partial file");
}

#[test]
fn the_config_is_kept_and_exported_as_shown_never_with_its_secrets() {
    let f = fixture();
    let home = home_copy(f);
    // A config with secrets where operators put them: an env value a
    // capsule may read, a webhook whose path and query are its secret, and
    // a comment.
    let secrets = ["env-secret-5f2a", "path-secret-9c1d", "query-secret-77e0", "comment-secret-31ab"];
    let toml_path = home.path().join("runner.toml");
    let mut text = std::fs::read_to_string(&toml_path).unwrap();
    text.push_str(
        "\n[env]\nAPI_TOKEN = \"env-secret-5f2a\"\n\n# the old hook was /services/comment-secret-31ab\n\
         [[notify.webhooks]]\nurl = \"http://127.0.0.1:9/services/T0/path-secret-9c1d?token=query-secret-77e0\"\n\
         events = [\"committed\"]\n",
    );
    std::fs::write(&toml_path, &text).unwrap();
    export_all(home.path());
    let bytes = std::fs::read(home.path().join("all.bundle")).unwrap();
    assert!(bytes.starts_with(b"edge-runner evidence bundle v2\n"));
    verify(&bytes, &f.keys, Level::Full).unwrap();

    // No secret anywhere: not in the bundle (its text or any artifact
    // decoded), not in any record or artifact of the store.
    let b = bundle::parse(&bytes).unwrap();
    let db = rusqlite::Connection::open(home.path().join("state/evidence/evidence.db")).unwrap();
    let mut stored: Vec<Vec<u8>> = db
        .prepare("SELECT bytes FROM artifacts")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    stored.extend(
        db.prepare("SELECT body FROM records")
            .unwrap()
            .query_map([], |r| r.get::<_, String>(0))
            .unwrap()
            .map(|r| r.unwrap().into_bytes()),
    );
    let haystacks = std::iter::once(&bytes).chain(b.artifacts.iter().map(|(_, a)| a)).chain(stored.iter());
    for hay in haystacks {
        for s in secrets {
            assert!(!hay.windows(s.len()).any(|w| w == s.as_bytes()), "{s} leaked");
        }
    }

    // The export's own start names the file by its digest and carries the
    // config as shown: everything but the secrets, which are marked.
    let start = b
        .records
        .iter()
        .map(|l| serde_json::from_str::<Record>(l).unwrap())
        .rfind(|r| r.event_type() == "runner-started")
        .unwrap();
    let Event::RunnerStarted { config, config_shown, .. } = start.event else { unreachable!() };
    assert_eq!(config, Some(Sha256Digest::of(text.as_bytes())), "the file as read");
    let shown_d = config_shown.unwrap();
    let shown = &b.artifacts.iter().find(|(d, _)| *d == shown_d).expect("carried").1;
    let shown: toml::Table = toml::from_str(std::str::from_utf8(shown).unwrap()).unwrap();
    assert_eq!(shown["env"]["API_TOKEN"].as_str(), Some("(redacted)"));
    let url = shown["notify"]["webhooks"][0]["url"].as_str().unwrap();
    assert!(url.starts_with("http://127.0.0.1:9/…(path sha256:"), "{url}");
    assert_eq!(shown["mounts"]["data"]["node"].as_str(), Some("ledger-db"));
    assert_eq!(shown["runner"]["name"].as_str(), Some("test-runner"));
    // Everything else is shown as it is.
    let (mut raw, mut shown) = (toml::from_str::<toml::Table>(&text).unwrap(), shown);
    for t in [&mut raw, &mut shown] {
        t.remove("env").unwrap();
        t.remove("notify").unwrap();
    }
    assert_eq!(shown, raw);
    // The file itself is not in the store.
    let kept: i64 = db
        .query_row("SELECT count(*) FROM artifacts WHERE digest = ?1", [config.unwrap().to_string()], |r| r.get(0))
        .unwrap();
    assert_eq!(kept, 0);
}

#[test]
fn partial_exports_prove_inclusion_and_consistency() {
    let f = fixture();
    let v = verify(&f.bundle, &f.keys, Level::Full).unwrap();
    let run = &v.runs.iter().find(|r| r.approvals.len() == 2).unwrap().run;
    // Exports write checkpoints: work on a copy of the runner home.
    let home = home_copy(f);
    let cli = |args: &[&str]| {
        let out = Command::new(crate::harness::BIN).args(args).current_dir(home.path()).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    };
    cli(&["evidence", "export", "--config", "runner.toml", "--run", run, "-o", "run.bundle"]);
    let one = std::fs::read(home.path().join("run.bundle")).unwrap();
    let v1 = verify(&one, &f.keys, Level::Full).unwrap();
    assert_eq!(v1.runs.len(), 1);
    assert!(matches!(v1.header.scope, Scope::Run { .. }));
    // A record of another run slipped into the run export.
    let mut p = parts(&one);
    p.records.insert(1, parts(&f.bundle).records[1].clone());
    if let Scope::Run { proofs, .. } = &mut p.header.scope {
        proofs.insert(1, proofs[0].clone());
    }
    assert!(verify(&p.write(), &f.keys, Level::Full).is_err());
    // Without any key: the run's leading records (and their proofs) dropped,
    // hiding the capsule and its approvals. A run export carries the whole run.
    let mut p = parts(&one);
    p.records.remove(0);
    if let Scope::Run { proofs, .. } = &mut p.header.scope {
        proofs.remove(0);
    }
    let referenced: std::collections::BTreeSet<Sha256Digest> =
        p.records.iter().flat_map(|l| serde_json::from_str::<Record>(l).unwrap().artifacts()).collect();
    p.artifacts.retain(|(d, _)| referenced.contains(d));
    let e = verify(&p.write(), &f.keys, Level::Full).unwrap_err();
    assert_eq!(e.check, "run.start", "{e}");

    // More runs, then an export since the first bundle: a consistency proof.
    cli(&["evidence", "export", "--config", "runner.toml", "--since", "full.bundle", "-o", "since.bundle"]);
    let since = std::fs::read(home.path().join("since.bundle")).unwrap();
    let vs = verify(&since, &f.keys, Level::Full).unwrap();
    assert_eq!(vs.since.as_ref().unwrap().size, v.checkpoint.size);
    // A forged consistency proof.
    let mut p = parts(&since);
    if let Scope::Since { consistency, prefix, .. } = &mut p.header.scope {
        consistency.clear();
        prefix.reverse();
    }
    let e = verify(&p.write(), &f.keys, Level::Full).unwrap_err();
    assert!(e.check.starts_with("since.") || e.check.starts_with("tree."), "{e}");

    // A run's receipt (tlog-proof) names a checkpoint too: export since it.
    let receipt_path = home.path().join(format!("state/receipts/{run}.tlog-proof"));
    let receipt = edge_core::note::TlogProof::parse(&std::fs::read_to_string(&receipt_path).unwrap()).unwrap();
    let receipt_arg = receipt_path.display().to_string();
    cli(&["evidence", "export", "--config", "runner.toml", "--since", &receipt_arg, "-o", "since-receipt.bundle"]);
    let vr = verify(&std::fs::read(home.path().join("since-receipt.bundle")).unwrap(), &f.keys, Level::Full).unwrap();
    let from = vr.since.as_ref().unwrap().size;
    assert!(from > receipt.index && from <= v.checkpoint.size, "since {from}, receipt index {}", receipt.index);
    assert_eq!(vr.record_count as u64, vr.checkpoint.size - from);
}

#[test]
fn a_runner_killed_while_appending_loses_no_acknowledged_record() {
    let env = Env::new();
    let mut child = Command::new(crate::harness::BIN)
        .args(["evidence", "stress", "--config", "runner.toml", "--writers", "16", "--runs", "100000"])
        .current_dir(env.path(""))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut acked: Vec<(u64, String)> = Vec::new();
    let mut lines = std::io::BufReader::new(stdout).lines();
    while acked.len() < 3000 {
        let line = lines.next().expect("the stress writer stopped early").unwrap();
        let (seq, run) = line.split_once(' ').unwrap();
        acked.push((seq.parse().unwrap(), run.to_owned()));
    }
    // SIGKILL: no chance to flush or close anything.
    child.kill().unwrap();
    for line in lines.map_while(Result::ok) {
        if let Some((seq, run)) = line.split_once(' ')
            && let Ok(seq) = seq.parse()
        {
            acked.push((seq, run.to_owned()));
        }
    }
    child.wait().unwrap();

    // Restart: the open runs are closed as interrupted; the whole log verifies.
    env.cli(&["evidence", "export", "--config", "runner.toml", "-o", "after.bundle"]).success();
    let vkey = env.cli(&["evidence", "runner-key", "--config", "runner.toml"]).success().stdout();
    let keys = edge_evidence::parse_keys(&vkey).unwrap();
    let v = verify(&std::fs::read(env.path("after.bundle")).unwrap(), &keys, Level::Full).unwrap();
    for (seq, run) in &acked {
        let r = v.records.get(*seq as usize).unwrap_or_else(|| panic!("acknowledged record {seq} is missing"));
        assert_eq!(&r.run, run, "record {seq}");
    }
    assert!(v.records.iter().any(|r| matches!(r.event, Event::Interrupted { .. })), "the killed runs were closed");
}

#[test]
fn the_store_is_readable_and_append_only_with_the_stock_sqlite3_tool() {
    let f = fixture();
    let db = f.env.path("state/evidence/evidence.db");
    let sqlite = |sql: &str| Command::new("sqlite3").arg(&db).arg(sql).output().expect("sqlite3 must be installed");
    let out = sqlite("SELECT count(*) FROM records; PRAGMA journal_mode;");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let count: usize = text.lines().next().unwrap().parse().unwrap();
    assert!(count >= f.runs * 5, "{text}");
    assert_eq!(text.lines().nth(1), Some("wal"));
    let v = verify(&f.bundle, &f.keys, Level::Integrity).unwrap();
    for sql in [
        "UPDATE records SET body = 'x' WHERE seq = 3",
        "DELETE FROM records WHERE seq = 3",
        "UPDATE artifacts SET size = 0",
        "DELETE FROM checkpoints",
    ] {
        let out = sqlite(sql);
        assert!(!out.status.success(), "{sql} was allowed");
        assert!(String::from_utf8_lossy(&out.stderr).contains("append-only"), "{sql}");
    }
    let again = sqlite("SELECT count(*) FROM records");
    assert!(String::from_utf8_lossy(&again.stdout).trim().parse::<usize>().unwrap() >= v.record_count);
}

const CHROMIUM: [&str; 5] =
    ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-dev-shm-usage"];

/// Render the report in headless Chromium and return the DOM it built.
fn chromium_dom(html: &std::path::Path) -> String {
    let out = Command::new("chromium")
        .args(CHROMIUM)
        .arg("--dump-dom")
        .arg(format!("file://{}", html.display()))
        .output()
        .expect("chromium must be installed (Debian package `chromium`)");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// Render the report in headless Chromium into a PNG (to look at).
fn chromium_screenshot(html: &std::path::Path, png: &std::path::Path) {
    let _ = std::fs::remove_file(png);
    let out = Command::new("chromium")
        .args(CHROMIUM)
        .args(["--hide-scrollbars", "--window-size=1200,2000"])
        .arg(format!("--screenshot={}", png.display()))
        .arg(format!("file://{}", html.display()))
        .output()
        .expect("chromium must be installed (Debian package `chromium`)");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let bytes = std::fs::read(png).expect("chromium wrote the screenshot");
    assert!(bytes.starts_with(b"\x89PNG") && bytes.len() > 20_000, "a real picture: {} bytes", bytes.len());
}

#[test]
fn the_html_report_renders_in_chromium_with_a_clear_banner() {
    let f = fixture();
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.html");
    f.env
        .cli(&["evidence", "report", "full.bundle", "--key", "runner.vkey", "--html", good.to_str().unwrap()])
        .success();
    let dom = chromium_dom(&good);
    assert!(dom.contains("<div id=\"banner\" class=\"verified\">VERIFIED"), "{}", &dom[..dom.len().min(2000)]);
    assert_eq!(dom.matches("<tr class=\"run\"").count(), f.runs, "one row per run");
    assert_eq!(dom.matches("data-outcome=\"committed\"").count(), 47);
    // By proposal: the approved run and the run that waited are one
    // proposal, shown as committed, authorized by both approvers.
    assert_eq!(dom.matches("<section class=\"proposal\"").count(), f.runs - 2, "{}", &dom[..dom.len().min(3000)]);
    let approved = dom
        .split("<section class=\"proposal\"")
        .find(|s| s.contains("data-principal=\"alice@bank.example\""))
        .expect("the approved proposal");
    assert!(approved.contains("<th>Authorized by</th><td>alice@bank.example, carol@bank.example</td>"), "{approved}");
    // Its three runs: the one that waited, the one that committed, and the
    // replay of the same approvals, refused (and why).
    for outcome in [": awaiting-approval —", ": committed —", ": refused —"] {
        assert!(approved.contains(outcome), "{outcome}: {approved}");
    }
    assert!(approved.contains("authorize.proposal_executed") && approved.contains("approval.replayed"), "{approved}");
    // …and the replay does not rewrite how it ended.
    assert!(approved.contains("data-state=\"committed\""), "{approved}");
    assert!(dom.contains("policy.denied"), "refusals are shown");
    assert!(dom.contains("<div class=\"file\""), "diffs are shown");
    assert!(!dom.contains("<script"), "the page has no scripts");

    // A tampered bundle: a FAILED banner naming the check, and none of its contents.
    let mut bad = f.bundle.clone();
    let n = bad.len();
    bad[n / 2] ^= 0x01;
    std::fs::write(dir.path().join("bad.bundle"), &bad).unwrap();
    let failed = dir.path().join("bad.html");
    let out = Command::new(crate::harness::BIN)
        .args(["evidence", "report", "bad.bundle", "--key"])
        .arg(f.env.path("runner.vkey"))
        .args(["--html", failed.to_str().unwrap()])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    let dom = chromium_dom(&failed);
    assert!(dom.contains("<div id=\"banner\" class=\"failed\">FAILED"), "{dom}");
    assert!(!dom.contains("class=\"run\""), "nothing from a failed bundle is shown");
}

/// The section of the proposal `id` in a dumped DOM.
fn proposal_section<'a>(dom: &'a str, id: &str) -> &'a str {
    let start = dom
        .find(&format!("<section class=\"proposal\" id=\"{id}\""))
        .unwrap_or_else(|| panic!("no section for {id}: {}", &dom[..dom.len().min(3000)]));
    &dom[start..start + dom[start..].find("</section>").unwrap()]
}

#[test]
fn a_reviewer_sees_an_approved_tier_2_config_change_as_committed_with_its_quorum_diff_and_blast_radius() {
    // The config-drift example at tier 2: waits, two approvals with
    // comments, commits the previewed bytes.
    let env = Env::new();
    env.write_policy_config("payments-config", &[("config", "payments-config", true)]);
    env.write_approvers(&[("alice", &["sre"]), ("carol", &["payments-owner"])], "");
    std::fs::write(env.path("config/app.toml"), "[server]\nmax_connections = 100\n").unwrap();
    let capsule = env.config_drift_capsule("drift", Some("agent"));
    let first = env.exec(&capsule);
    assert_eq!(first.outcome(), "awaiting-approval", "{:#}", first.report);
    let document = first.report["document"].as_str().unwrap().to_owned();
    let mut approvals = Vec::new();
    for (who, comment) in [("alice", "pool exhaustion in INC-1042; 512 is the baseline"), ("carol", "ok for payments")]
    {
        let out = format!("{who}.approval");
        let principal = format!("{who}@bank.example");
        let key = format!("keys/{who}");
        env.cli(&[
            "approve",
            &document,
            "--principal",
            &principal,
            "--ssh-key",
            &key,
            "--comment",
            comment,
            "--yes",
            "-o",
            &out,
        ])
        .success();
        approvals.push(out);
    }
    let a: Vec<&str> = approvals.iter().map(String::as_str).collect();
    let run = env.exec_with(&capsule, &a);
    assert_eq!(run.outcome(), "committed", "{:#}", run.report);
    assert_eq!(std::fs::read_to_string(env.path("config/app.toml")).unwrap(), "[server]\nmax_connections = 512\n");

    env.cli(&["evidence", "export", "--config", "runner.toml", "-o", "tier2.bundle"]).success();
    let vkey = env.cli(&["evidence", "runner-key", "--config", "runner.toml"]).success().stdout();
    std::fs::write(env.path("runner.vkey"), &vkey).unwrap();
    // edge-verify, in-process (the binary is a thin wrapper over this call).
    let html = env.path("report.html");
    let path = |a: &str| env.path(a).into_os_string();
    let args = vec![
        "report".into(),
        path("tier2.bundle"),
        "--key".into(),
        path("runner.vkey"),
        "--html".into(),
        path("report.html"),
    ];
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let code = edge_evidence::cli::run(args, &mut out, &mut err, false);
    assert_eq!(code, 0, "{}", String::from_utf8_lossy(&err));
    let text = String::from_utf8(out).unwrap();
    assert!(text.contains("      +max_connections = 512"), "{text}");

    let dom = chromium_dom(&html);
    let proposal = edge_core::lifecycle::proposal_id(first.report["run"].as_str().unwrap());
    let s = proposal_section(&dom, &proposal);
    // Committed, not awaiting approval: the waiting run and the run that
    // executed it are one proposal.
    assert!(s.contains("data-state=\"committed\""), "{s}");
    assert!(s.contains("<span class=\"state s-committed\">committed</span>"), "{s}");
    assert!(!s.contains("s-awaiting-approval"), "{s}");
    assert_eq!(dom.matches("<section class=\"proposal\"").count(), 1, "one proposal, two runs");
    assert!(s.contains(": awaiting-approval —") && s.contains(": committed —"), "both runs are listed: {s}");
    // The quorum: both approvers, their roles and comments, both counted.
    assert!(s.contains("met: 2 of 2 approval(s)"), "{s}");
    for (who, role, comment) in [
        ("alice@bank.example", "sre", "pool exhaustion in INC-1042; 512 is the baseline"),
        ("carol@bank.example", "payments-owner", "ok for payments"),
    ] {
        let row = s
            .split("<tr class=\"approver ")
            .find(|r| r.contains(&format!("data-principal=\"{who}\"")))
            .unwrap_or_else(|| panic!("{who} is not in the quorum: {s}"));
        assert!(row.starts_with("counted\""), "{row}");
        assert!(row.contains(&format!("<td>{role}</td>")) && row.contains("SHA256:"), "{row}");
        assert!(row.contains(&format!("<td class=\"comment\">{comment}</td>")), "{row}");
    }
    // The diff: the changed line, from the preview artifact.
    assert!(s.contains("<div class=\"dl add\">+max_connections = 512</div>"), "{s}");
    assert!(s.contains("<div class=\"dl del\">-max_connections = 100</div>"), "{s}");
    assert!(s.contains("modify config/app.toml"), "{s}");
    // The blast radius and its picture.
    assert!(s.contains("<th>Touched</th><td>payments-config (write via <code>config</code>)</td>"), "{s}");
    assert!(s.contains("<th>Most critical</th><td>payments-api (high)</td>"), "{s}");
    assert!(s.contains("<th>Sensitive tags</th><td>payments, revenue-path</td>"), "{s}");
    assert!(
        s.contains("<svg class=\"blast\"") && s.contains("payments-config</text>") && s.contains(">storefront</text>")
    );
    // The tier and the rule behind it; the provenance.
    assert!(s.contains("Allowed at tier 2"), "{s}");
    assert!(s.contains("<code>rules.revenue-path-writes</code>"), "{s}");
    assert!(
        s.contains("<th>Ticket</th><td>INC-1042</td>") && s.contains("<th>Model</th><td>example-model-2026-10</td>")
    );
    assert!(s.contains("<span class=\"pass\">passed</span>"), "the verify result: {s}");
    assert!(!dom.contains("<script"), "the page has no scripts");

    // A picture to look at (the path is printed; CI keeps it as an artifact).
    let png = std::env::temp_dir().join("edge-verify-report-tier2.png");
    chromium_screenshot(&html, &png);
    eprintln!("screenshot of the report: {}", png.display());
}

#[test]
fn evidence_show_lists_as_it_verifies_and_stops_at_an_altered_record() {
    let env = Env::new();
    assert_eq!(env.exec(&env.hostile("none")).outcome(), "committed");
    // The same capsule again: refused as a replay, recorded all the same.
    assert_eq!(env.exec(&env.hostile("none")).outcome(), "refused");
    // The JSON listing is one array of every record, and `--run` only that run's.
    let all = env.evidence();
    let all = all.as_array().unwrap();
    assert!(all.len() >= 10, "{}", all.len());
    let run = all.iter().rev().find(|r| r["run"].as_str().unwrap().starts_with("r-")).unwrap()["run"].clone();
    let one = env.cli(&["evidence", "show", "--config", "runner.toml", "--json", "--run", run.as_str().unwrap()]);
    let one: serde_json::Value = serde_json::from_str(&one.success().stdout()).unwrap();
    let expected: Vec<&serde_json::Value> = all.iter().filter(|r| r["run"] == run).collect();
    assert_eq!(one.as_array().unwrap().iter().collect::<Vec<_>>(), expected);
    let none = env.cli(&["evidence", "show", "--config", "runner.toml", "--json", "--run", "r-none"]);
    assert_eq!(none.success().stdout(), "[]\n");
    // Without the runner's key (someone who may read the store, not the
    // key), the run comes from the whole log, the same; and no command that
    // only reads makes a key.
    let key = env.path("state/identity.key");
    std::fs::rename(&key, env.path("identity.key.away")).unwrap();
    let keyless = env.cli(&["evidence", "show", "--config", "runner.toml", "--json", "--run", run.as_str().unwrap()]);
    assert!(
        keyless.stderr().contains("does not exist") && keyless.stderr().contains("whole log"),
        "{}",
        keyless.stderr()
    );
    let keyless: serde_json::Value = serde_json::from_str(&keyless.success().stdout()).unwrap();
    assert_eq!(keyless.as_array().unwrap().iter().collect::<Vec<_>>(), expected);
    let check = env.cli(&["evidence", "check", "--config", "runner.toml"]);
    assert_eq!(check.code(), 1, "{}", check.stdout());
    assert!(!key.exists(), "a read-only command created an identity key");
    std::fs::rename(env.path("identity.key.away"), &key).unwrap();

    // Record 5 rewritten below the runner (its triggers dropped first).
    let db = env.path("state/evidence/evidence.db");
    let out = Command::new("sqlite3")
        .arg(&db)
        .arg(
            "DROP TRIGGER records_append_only_u; \
             UPDATE records SET body = replace(body, '\"seq\":5', '\"seq\":5 ') WHERE seq = 5;",
        )
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let shown = env.cli(&["evidence", "show", "--config", "runner.toml"]);
    assert_eq!(shown.code(), 1, "an altered store is not listed as verified");
    assert!(
        shown.stderr().contains("failed verification") && shown.stderr().contains("record 5"),
        "{}",
        shown.stderr()
    );
    // What verified before it was listed; nothing from it on, and no summary.
    let stdout = shown.stdout();
    let listed: Vec<&str> = stdout.lines().filter(|l| l.trim_start().starts_with('#')).collect();
    assert_eq!(listed.len(), 5, "{stdout}");
    assert!(!stdout.contains("chain verified"), "{stdout}");
    // One run is read by the run index, each record proved in the signed
    // tree: the run that holds record 5 is refused, naming it; another run
    // of the same store, intact, is shown.
    let of = |seq: usize| all[seq]["run"].as_str().unwrap().to_owned();
    let broken = env.cli(&["evidence", "show", "--config", "runner.toml", "--run", &of(5)]);
    assert_eq!(broken.code(), 1, "{}", broken.stdout());
    assert!(broken.stderr().contains("record 5") && broken.stderr().contains("altered"), "{}", broken.stderr());
    let intact = all.iter().map(|r| r["run"].as_str().unwrap()).find(|r| r.starts_with("r-") && *r != of(5)).unwrap();
    let shown = env.cli(&["evidence", "show", "--config", "runner.toml", "--run", intact]).success().stdout();
    assert!(shown.contains("each proved in the tree"), "{shown}");
}

/// The commands that only read the store read `[runner]` and nothing else
/// the config names: with the policy broken, the graph unreadable and a
/// mount gone (a copy of the state on a reviewer's machine, or a runner
/// being mended), the evidence is still listed, checked and fetched and its
/// key printed, as before — while a run, which needs all of it, is refused
/// naming what is missing.
#[test]
fn the_store_is_read_and_checked_while_the_policy_graph_and_a_mount_are_broken() {
    let env = Env::new();
    env.write_policy_config("log-volume", &[]);
    let run = env.exec(&env.hostile("none"));
    assert_eq!(run.outcome(), "committed", "{:#}", run.report);
    let plan = run.events_of("planned")[0]["plan"].as_str().unwrap().to_owned();
    let read = |env: &Env| -> Vec<String> {
        [
            &["evidence", "show", "--config", "runner.toml", "--json"][..],
            &["evidence", "show", "--config", "runner.toml", "--run", run.report["run"].as_str().unwrap()],
            &["evidence", "check", "--config", "runner.toml"],
            &["evidence", "check", "--full", "--config", "runner.toml"],
            &["evidence", "artifact", "--config", "runner.toml", &plan],
            &["evidence", "runner-key", "--config", "runner.toml"],
        ]
        .iter()
        .map(|args| {
            let out = env.cli(args).success().stdout();
            // (`check --full` says how long it took.)
            out.split(" (").next().unwrap().to_owned()
        })
        .collect()
    };
    let before = read(&env);
    std::fs::write(env.path("policy.toml"), "version = 1\n").unwrap();
    std::fs::remove_file(env.path("graph.toml")).unwrap();
    std::fs::rename(env.path("ro"), env.path("ro.away")).unwrap();
    assert_eq!(read(&env), before);
    let refused = env.exec_refused(&env.hostile("none"));
    assert!(refused.contains("cannot read system graph ./graph.toml"), "{refused}");
    // A broken `[runner]` is refused by them too.
    let config = std::fs::read_to_string(env.path("runner.toml")).unwrap();
    std::fs::write(env.path("runner.toml"), config.replace("name = \"test-runner\"", "name = \"a b\"")).unwrap();
    let out = env.cli(&["evidence", "check", "--config", "runner.toml"]);
    assert_eq!(out.code(), 1, "{}", out.stdout());
    assert!(out.stderr().contains("`runner.name` must be"), "{}", out.stderr());
}

/// A store from before 2026-12-06 may hold `reload-refused` records whose
/// error quotes the config file where it stopped (a line, a value: a
/// secret, maybe). The log is append-only, so an export carries them: it
/// says how many, and where to read why. A refusal recorded as a runner
/// records one now quotes nothing and is not counted; nor is any record of
/// an ordinary store.
#[test]
fn an_export_names_the_old_reload_refusals_that_quote_the_config_file() {
    let f = fixture();
    let home = home_copy(f);
    let said = export_all(home.path());
    assert!(!said.contains("note:"), "{said}");

    let config = edge_runner::config::RunnerConfig::load(&home.path().join("runner.toml")).unwrap();
    let runner = edge_runner::pipeline::Runner::open(config).unwrap();
    let kept = runner.governance().digests();
    let old = "runner config runner.toml is invalid: TOML parse error at line 12, column 7\n   |\n12 | url = \
               \"https://hooks.example/T/old-secret-3d\n   |       ^\ninvalid basic string";
    for error in [old.to_owned(), edge_runner::config::error_shown(old), "tiers.0.approvals: need one".into()] {
        let refused = Event::ReloadRefused { trigger: "sighup".into(), error, kept: kept.clone() };
        runner.log.append("runner", refused).unwrap();
    }
    drop(runner);
    let said = export_all(home.path());
    assert!(said.contains("note: 1 reload-refused record(s) in it, written by a runner before 2026-12-06"), "{said}");
    assert!(said.contains("\"Not undone\"") && !said.contains("old-secret-3d"), "{said}");
    // The bundle carries it as recorded, and verifies.
    let bytes = std::fs::read(home.path().join("all.bundle")).unwrap();
    assert!(String::from_utf8_lossy(&bytes).contains("old-secret-3d"));
    verify(&bytes, &f.keys, Level::Full).unwrap();
}

#[test]
fn a_fetch_over_the_api_names_the_old_reload_refusals_too() {
    let env = crate::server::setup(64);
    let fetch = |server: &crate::server::Server| {
        let out = env.cli(
            &[&["evidence", "fetch"][..], &crate::server::approver_flags(&server.url), &["-o", "fetched.bundle"]]
                .concat(),
        );
        String::from_utf8_lossy(&out.success().0.stdout).into_owned()
    };
    let server = crate::server::Server::start(&env);
    let said = fetch(&server);
    assert!(said.contains("fetched ") && !said.contains("note:"), "{said}");
    server.stop();
    // An old-style refusal, as a runner before 2026-12-06 recorded it.
    let config = edge_runner::config::RunnerConfig::load(&env.path("runner.toml")).unwrap();
    let runner = edge_runner::pipeline::Runner::open(config).unwrap();
    let kept = runner.governance().digests();
    let old = "runner config runner.toml is invalid: TOML parse error at line 3, column 7\n   |\n3 | url = \
               \"https://hooks.example/T/old-secret-9f\n   |       ^\ninvalid basic string";
    runner.log.append("runner", Event::ReloadRefused { trigger: "sighup".into(), error: old.into(), kept }).unwrap();
    drop(runner);
    let server = crate::server::Server::start(&env);
    let said = fetch(&server);
    assert!(said.contains("note: 1 reload-refused record(s) in it, written by a runner before 2026-12-06"), "{said}");
    assert!(!said.contains("old-secret-9f"), "{said}");
    server.stop();
}
