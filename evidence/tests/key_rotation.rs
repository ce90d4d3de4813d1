//! Identity-key rotation as a reviewer meets it: a bundle whose log rotated
//! the runner's key verifies from the key the reviewer pinned before the
//! rotation, and names the rotation; a forged or half-signed rotation, a
//! checkpoint by the retired key, and a key switched without a rotation are
//! each refused with their own check.

use edge_core::Sha256Digest;
use edge_core::evidence::{Event, GENESIS, RECORD_SCHEMA, Record};
use edge_core::merkle::{self, MerkleStore};
use edge_core::note::{Checkpoint, NoteSigner, NoteVerifier};
use edge_core::rotation::Statement;
use edge_core::signature::CapsuleSigningKey;
use edge_evidence::bundle::{self, Header, Scope};
use edge_evidence::{Failure, Level, Verified, verify};

const ORIGIN: &str = "runner.bank.example/enclave-1";

fn key() -> NoteSigner {
    CapsuleSigningKey::generate().note_signer(ORIGIN).unwrap()
}

/// Who signs a rotation's statement in each place.
struct Signers<'a> {
    old: &'a NoteSigner,
    new: &'a NoteSigner,
}

/// Records chained and put in a tree as the runner's store does, runner
/// records only (key records and self-attestations).
#[derive(Default)]
struct Log {
    lines: Vec<String>,
    tree: MerkleStore,
    prev: Option<Sha256Digest>,
}

impl Log {
    fn record(&self, event: Event) -> Record {
        let seq = self.lines.len() as u64;
        Record {
            schema: RECORD_SCHEMA.into(),
            seq,
            time: format!("2026-12-01T10:00:{:02}Z", seq % 60),
            run: "runner".into(),
            prev: self.prev.unwrap_or(GENESIS),
            event,
        }
    }

    fn push_record(&mut self, r: &Record) {
        let body = String::from_utf8(r.canonical_bytes().unwrap()).unwrap();
        self.prev = Some(Sha256Digest::of(body.as_bytes()));
        self.tree.push(merkle::leaf_hash(body.as_bytes()));
        self.lines.push(body);
    }

    fn push(&mut self, event: Event) {
        let r = self.record(event);
        self.push_record(&r);
    }

    fn key_event(&mut self, action: &str, k: &NoteSigner) {
        self.push(Event::KeyEvent { action: action.into(), key: k.verifier().to_vkey() });
    }

    /// A self-attestation, as a runner records at every start.
    fn started(&mut self) {
        self.push(Event::RunnerStarted {
            binary: Sha256Digest::of(b"edge-runner"),
            version: "0.1.0".into(),
            revision: "unknown".into(),
            config: None,
            config_shown: None,
            policy: None,
            graph: None,
            approvers: None,
        });
    }

    /// A rotation from `old` to `new`, its statement signed by `by.old`
    /// and `by.new` (the runner signs with `old` and `new`).
    fn rotate(&mut self, old: &NoteSigner, new: &NoteSigner, by: Signers<'_>) {
        let (old_key, new_key) = (old.verifier().to_vkey(), new.verifier().to_vkey());
        let mut r = self.record(Event::KeyRotation {
            old_key: old_key.clone(),
            new_key: new_key.clone(),
            old_signature: String::new(),
            new_signature: String::new(),
        });
        let st =
            Statement { origin: ORIGIN, old_key: &old_key, new_key: &new_key, seq: r.seq, prev: r.prev, time: &r.time };
        let text = st.text();
        let sig = |s: &NoteSigner| s.signature_line(&text).trim_end().rsplit_once(' ').unwrap().1.to_owned();
        let (os, ns) = (sig(by.old), sig(by.new));
        if let Event::KeyRotation { old_signature, new_signature, .. } = &mut r.event {
            (*old_signature, *new_signature) = (os, ns);
        }
        self.push_record(&r);
    }

    fn checkpoint(&self, size: usize, signer: &NoteSigner) -> String {
        signer
            .sign(&Checkpoint { origin: ORIGIN.into(), size: size as u64, root: self.tree.root(size) }.text())
            .unwrap()
    }

    /// The whole log, its checkpoint signed by `signer`.
    fn full(&self, signer: &NoteSigner) -> Vec<u8> {
        let n = self.lines.len();
        let header = Header {
            format: Default::default(),
            origin: ORIGIN.into(),
            scope: Scope::Full,
            tree_size: n as u64,
            records: n as u64,
            artifacts: 0,
        };
        let lines: Vec<&str> = self.lines.iter().map(String::as_str).collect();
        bundle::write(&header, &lines, &[], &self.checkpoint(n, signer)).unwrap()
    }

    /// The records after the first `m`, from a checkpoint of `m` signed by
    /// `earlier` to one of the whole log signed by `signer`.
    fn since(&self, m: usize, earlier: &NoteSigner, signer: &NoteSigner) -> Vec<u8> {
        let n = self.lines.len();
        let scope = Scope::Since {
            checkpoint: self.checkpoint(m, earlier),
            consistency: bundle::encode_hashes(&self.tree.consistency_proof(m, n)),
            prefix: bundle::encode_hashes(&self.tree.compact(m).hashes()),
        };
        let header = Header {
            format: Default::default(),
            origin: ORIGIN.into(),
            scope,
            tree_size: n as u64,
            records: (n - m) as u64,
            artifacts: 0,
        };
        let lines: Vec<&str> = self.lines[m..].iter().map(String::as_str).collect();
        bundle::write(&header, &lines, &[], &self.checkpoint(n, signer)).unwrap()
    }
}

fn pins(keys: &[&NoteSigner]) -> Vec<NoteVerifier> {
    keys.iter().map(|k| k.verifier().clone()).collect()
}

fn both_levels(bundle: &[u8], trusted: &[&NoteSigner]) -> Result<Verified, Failure> {
    let integrity = verify(bundle, &pins(trusted), Level::Integrity);
    let full = verify(bundle, &pins(trusted), Level::Full);
    match (&integrity, &full) {
        (Ok(_), Ok(_)) => {}
        (Err(a), Err(b)) => assert_eq!(a.check, b.check, "both levels refuse for the same reason: {a} / {b}"),
        _ => panic!("the levels disagree: {:?} / {:?}", integrity.map(|v| v.key), full.as_ref().map(|v| &v.key)),
    }
    full
}

/// Key K0 in use, a start, the rotation K0 → K1 at record 2, two starts.
fn rotated(k0: &NoteSigner, k1: &NoteSigner, by: Signers<'_>) -> Log {
    let mut log = Log::default();
    log.key_event("identity key in use", k0);
    log.started();
    log.rotate(k0, k1, by);
    log.started();
    log.started();
    log
}

#[test]
fn a_rotated_key_verifies_from_the_old_pin_and_the_rotation_is_named() {
    let (k0, k1) = (key(), key());
    let log = rotated(&k0, &k1, Signers { old: &k0, new: &k1 });
    let bundle = log.full(&k1);
    // The reviewer pinned K0 before the rotation: the chain leads to K1.
    let v = both_levels(&bundle, &[&k0]).unwrap();
    assert_eq!(v.key, k1.verifier().to_vkey(), "the checkpoint key is the new one");
    let notes = v.key_notes();
    let want = format!(
        "identity key rotated at record 2: old {} → new {} (signed by both keys, 2026-12-01T10:00:02Z)",
        k0.verifier().fingerprint(),
        k1.verifier().fingerprint()
    );
    assert_eq!(notes, std::slice::from_ref(&want));
    // Pinning the new key alone works as well; an unrelated pin does not.
    assert!(both_levels(&bundle, &[&k1]).is_ok());
    assert_eq!(both_levels(&bundle, &[&key()]).unwrap_err().check, "checkpoint.signature");

    // edge-verify prints the rotation under its result.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("b"), &bundle).unwrap();
    std::fs::write(dir.path().join("k"), format!("{}\n", k0.verifier().to_vkey())).unwrap();
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let args = ["b", "--key", "k"].map(|a| dir.path().join(a).into_os_string());
    let args = vec![args[0].clone(), "--key".into(), args[2].clone()];
    assert_eq!(edge_evidence::cli::run(args, &mut out, &mut err, false), 0, "{}", String::from_utf8_lossy(&err));
    let out = String::from_utf8(out).unwrap();
    assert!(out.lines().any(|l| l == want), "{out}");

    // A since export that starts before the rotation, from a checkpoint the
    // old key signed, verifies from the old pin too and names it.
    let since = log.since(1, &k0, &k1);
    let v = both_levels(&since, &[&k0]).unwrap();
    assert_eq!(v.key_notes(), [want]);
}

#[test]
fn a_rotation_not_signed_by_the_old_key_is_refused() {
    let (k0, k1, kx) = (key(), key(), key());
    // An attacker holding only a key of their own: signed by the new key
    // in both places, or with a signature by a third key in the old one.
    for forger in [&k1, &kx] {
        let log = rotated(&k0, &k1, Signers { old: forger, new: &k1 });
        let f = both_levels(&log.full(&k1), &[&k0]).unwrap_err();
        assert_eq!((f.check, f.record), ("key.rotation_old_signature", Some(2)), "{f}");
        assert!(f.detail.contains(&k0.verifier().fingerprint()) && f.detail.contains("made by another key"), "{f}");
        // Refused whoever the reviewer trusts: the record itself is false.
        assert_eq!(both_levels(&log.full(&k1), &[&k1]).unwrap_err().check, "key.rotation_old_signature");
    }
    // The new key must sign too.
    let log = rotated(&k0, &k1, Signers { old: &k0, new: &kx });
    let f = both_levels(&log.full(&k1), &[&k0]).unwrap_err();
    assert_eq!((f.check, f.record), ("key.rotation_new_signature", Some(2)), "{f}");
    // A rotation of a key that is not the one in force, properly signed by it.
    let mut log = Log::default();
    log.key_event("identity key in use", &k0);
    log.rotate(&kx, &k1, Signers { old: &kx, new: &k1 });
    let f = both_levels(&log.full(&k1), &[&kx]).unwrap_err();
    assert_eq!((f.check, f.record), ("key.rotation_chain", Some(1)), "{f}");
}

#[test]
fn a_checkpoint_after_the_rotation_signed_by_the_old_key_is_refused() {
    let (k0, k1) = (key(), key());
    let log = rotated(&k0, &k1, Signers { old: &k0, new: &k1 });
    // The old key holder signs the whole log, rotation included.
    let f = both_levels(&log.full(&k0), &[&k0]).unwrap_err();
    assert_eq!((f.check, f.record), ("key.retired", Some(2)), "{f}");
    assert!(f.detail.contains("retired in favour of"), "{f}");
    // Trusting both keys does not make it acceptable.
    assert_eq!(both_levels(&log.full(&k0), &[&k0, &k1]).unwrap_err().check, "key.retired");
    // Nor may the new key sign a checkpoint from before the rotation.
    let f = both_levels(&log.since(1, &k1, &k1), &[&k0, &k1]).unwrap_err();
    assert_eq!(f.check, "key.event", "{f}");
    assert!(f.detail.contains("since checkpoint (tree size 1)"), "{f}");
}

#[test]
fn a_key_switched_without_a_rotation_is_refused_with_a_clear_reason() {
    let (k0, k1) = (key(), key());
    let mut log = Log::default();
    log.key_event("identity key in use", &k0);
    log.started();
    log.key_event("identity key changed", &k1);
    log.started();
    let bundle = log.full(&k1);
    let f = both_levels(&bundle, &[&k0]).unwrap_err();
    assert_eq!((f.check, f.record), ("key.unrotated", Some(2)), "{f}");
    let fp1 = k1.verifier().fingerprint();
    assert!(
        f.detail
            .contains(&format!("signed by {fp1}, which the log switched to here from {}", k0.verifier().fingerprint())),
        "{f}"
    );
    assert!(f.detail.contains("edge-runner keys rotate") && f.detail.contains("out of band"), "{f}");
    // A reviewer who pinned both keys out of band accepts it, and is told.
    let v = both_levels(&bundle, &[&k0, &k1]).unwrap();
    assert_eq!(v.key_notes().len(), 1);
    assert!(v.key_notes()[0].contains("WITHOUT A ROTATION") && v.key_notes()[0].contains("you trust the new key"));
    // A checkpoint by a key the log never names stays a plain signature failure.
    let f = both_levels(&log.full(&key()), &[&k0]).unwrap_err();
    assert_eq!(f.check, "checkpoint.signature", "{f}");
}
