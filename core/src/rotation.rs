//! Identity-key rotation: the statement the old and the new key both sign,
//! and a log's key history — which key was in force at every tree size.
//!
//! A runner signs its checkpoints with its identity key. When the key is
//! replaced (`edge-runner keys rotate`) the log gets a `key-rotation` record
//! whose statement both keys sign, binding the runner, the two keys and the
//! record's own position (`seq`), `prev` (the hash of the record before it,
//! and so of the whole history up to it) and time:
//!
//! ```text
//!   old key K0 ──signs──►  statement(origin, K0, K1, seq r, prev, time)  ◄──signs── new key K1
//!                              = record r, event `key-rotation`
//!   checkpoints of size ≤ r: signed by K0        checkpoints of size > r: signed by K1
//! ```
//!
//! A reviewer who trusts K0 follows the chain: K0's signature says K0
//! handed over to K1 at exactly that point of exactly that history, and K1's
//! that the new key holder accepted it. A rotation signed by only one of the
//! two, or from a key that was not in force, is refused.
//!
//! The statement is a C2SP signed-note text, so any signed-note tool can
//! check it, and it can never be taken for a checkpoint: its first line
//! holds spaces, which no key name (and so no checkpoint origin) may, and a
//! checkpoint is exactly three lines. Checks are pure: records and keys in,
//! a verdict out.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::Serialize;

use crate::digest::Sha256Digest;
use crate::evidence::{Event, Record};
use crate::note::{self, NoteSigner, NoteVerifier};

/// The first line of every rotation statement.
pub const STATEMENT_HEADER: &str = "edge-runner key rotation v1";

/// What both keys sign. `seq`, `prev` and `time` are the `key-rotation`
/// record's own fields: the statement is rebuilt from the record, never
/// stored beside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement<'a> {
    /// The runner (checkpoint origin, and the name of both keys).
    pub origin: &'a str,
    /// The key in force until this record (C2SP verifier key).
    pub old_key: &'a str,
    /// The key in force from this record on.
    pub new_key: &'a str,
    pub seq: u64,
    pub prev: Sha256Digest,
    /// The record's time (RFC 3339, UTC).
    pub time: &'a str,
}

impl<'a> Statement<'a> {
    /// The statement of a `key-rotation` record (None for other events).
    pub fn of(origin: &'a str, r: &'a Record) -> Option<(Self, &'a str, &'a str)> {
        let Event::KeyRotation { old_key, new_key, old_signature, new_signature } = &r.event else {
            return None;
        };
        let st = Self { origin, old_key, new_key, seq: r.seq, prev: r.prev, time: &r.time };
        Some((st, old_signature.as_str(), new_signature.as_str()))
    }

    /// The signed-note text: seven lines, each ending in a newline.
    pub fn text(&self) -> String {
        format!(
            "{STATEMENT_HEADER}\norigin {}\nold {}\nnew {}\nrecord {}\nprev {}\ntime {}\n",
            self.origin, self.old_key, self.new_key, self.seq, self.prev, self.time
        )
    }

    /// Sign with the old and the new key: (old signature, new signature),
    /// each base64(key id ‖ Ed25519 signature) as on a note's signature line.
    ///
    /// # Errors
    /// If a signer is not the key the statement names, or the text is not
    /// a valid note text (a time with a newline in it).
    pub fn sign(&self, old: &NoteSigner, new: &NoteSigner) -> Result<(String, String), KeyError> {
        let malformed = |why: String| KeyError::Malformed { seq: self.seq, why };
        if old.verifier().to_vkey() != self.old_key || new.verifier().to_vkey() != self.new_key {
            return Err(malformed("the signers are not the keys the statement names".into()));
        }
        let text = self.text();
        let one = |s: &NoteSigner| -> Result<String, KeyError> {
            let note = s.sign(&text).map_err(|e| malformed(e.to_string()))?;
            let line = note.rsplit('\n').nth(1).unwrap_or_default();
            Ok(line.rsplit_once(' ').map(|(_, sig)| sig.to_owned()).unwrap_or_default())
        };
        Ok((one(old)?, one(new)?))
    }

    /// Check both signatures.
    ///
    /// 1. Both keys parse, are named after the runner and differ.
    /// 2. `old_signature` is the old key's over [`Statement::text`]
    ///    (`key.rotation_old_signature` otherwise): the key being retired
    ///    agreed to this hand-over, at this point of this history.
    /// 3. `new_signature` is the new key's (`key.rotation_new_signature`).
    ///
    /// # Errors
    /// The [`KeyError`] naming the record and what failed.
    pub fn verify(&self, old_signature: &str, new_signature: &str) -> Result<VerifiedRotation, KeyError> {
        let malformed = |why: String| KeyError::Malformed { seq: self.seq, why };
        let parse = |which: &str, k: &str| {
            NoteVerifier::parse(k).map_err(|e| malformed(format!("the {which} key `{}`: {e}", short(k))))
        };
        let (old, new) = (parse("old", self.old_key)?, parse("new", self.new_key)?);
        for (which, k) in [("old", &old), ("new", &new)] {
            if k.name != self.origin {
                return Err(malformed(format!(
                    "the {which} key is named `{}`, not after the runner `{}`",
                    k.name, self.origin
                )));
            }
        }
        if old.key_bytes() == new.key_bytes() {
            return Err(malformed("it rotates a key to itself".into()));
        }
        let text = self.text();
        let check = |k: &NoteVerifier, sig: &str| -> Result<(), String> {
            if sig.is_empty() || !sig.bytes().all(|b| b.is_ascii_alphanumeric() || b"+/=".contains(&b)) {
                return Err("no signature (not base64)".into());
            }
            if !B64.decode(sig).is_ok_and(|raw| raw.len() == 68) {
                return Err("not a key id and an Ed25519 signature".into());
            }
            let note = format!("{text}\n\u{2014} {} {sig}\n", k.name);
            note::open(&note, std::slice::from_ref(k)).map(drop).map_err(|e| match e {
                note::NoteError::NoTrustedSignature => "made by another key".to_owned(),
                other => other.to_string(),
            })
        };
        check(&old, old_signature).map_err(|why| KeyError::OldSignature {
            seq: self.seq,
            key: old.fingerprint(),
            why,
        })?;
        check(&new, new_signature).map_err(|why| KeyError::NewSignature {
            seq: self.seq,
            key: new.fingerprint(),
            why,
        })?;
        Ok(VerifiedRotation { old, new })
    }
}

/// A rotation whose two signatures verified (only [`Statement::verify`]
/// makes one).
#[derive(Debug)]
pub struct VerifiedRotation {
    old: NoteVerifier,
    new: NoteVerifier,
}

impl VerifiedRotation {
    /// The key the rotation retires.
    pub fn old(&self) -> &NoteVerifier {
        &self.old
    }

    /// The key it hands over to.
    pub fn new_key(&self) -> &NoteVerifier {
        &self.new
    }
}

/// A key record's key, shortened for a message when it does not parse.
fn short(k: &str) -> String {
    crate::text::line(&k.chars().take(80).collect::<String>()).into_owned()
}

/// `SHA256:…` of a verifier key, or the (shortened) text when it does not parse.
pub fn fingerprint(vkey: &str) -> String {
    NoteVerifier::parse(vkey).map_or_else(|_| short(vkey), |v| v.fingerprint())
}

/// Why a log's key history does not hold (the record is [`KeyError::seq`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    #[error("the key rotation is malformed: {why}")]
    Malformed { seq: u64, why: String },
    #[error(
        "the key rotation is not signed by the key it retires ({key}): {why}; a rotation needs both keys (`edge-runner keys rotate`)"
    )]
    OldSignature { seq: u64, key: String, why: String },
    #[error("the key rotation is not signed by the new key ({key}): {why}")]
    NewSignature { seq: u64, key: String, why: String },
    #[error("the key rotation retires {old}, but the key in force there is {current}")]
    Chain { seq: u64, old: String, current: String },
}

impl KeyError {
    /// The stable code (`docs/reason-codes.md`, "Identity keys").
    pub fn reason_code(&self) -> &'static str {
        match self {
            KeyError::Malformed { .. } => "key.rotation_malformed",
            KeyError::OldSignature { .. } => "key.rotation_old_signature",
            KeyError::NewSignature { .. } => "key.rotation_new_signature",
            KeyError::Chain { .. } => "key.rotation_chain",
        }
    }

    /// The record at fault.
    pub fn seq(&self) -> u64 {
        match self {
            KeyError::Malformed { seq, .. }
            | KeyError::OldSignature { seq, .. }
            | KeyError::NewSignature { seq, .. }
            | KeyError::Chain { seq, .. } => *seq,
        }
    }
}

/// How the key in force changed at a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ChangeKind {
    /// The first key the log names (`key-event`, "identity key in use").
    First,
    /// A `key-rotation` signed by both keys.
    Rotated,
    /// A `key-event` naming another key, with no rotation: nothing the old
    /// key signed vouches for the new one (runners before key rotation
    /// recorded a replaced key file this way).
    Unattested,
}

/// One change of the key in force.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyChange {
    /// The record that made it.
    pub seq: u64,
    pub time: String,
    pub kind: ChangeKind,
    /// The key in force before (unknown for the first key, or when the log
    /// at hand starts after it).
    pub from: Option<String>,
    pub to: String,
}

impl KeyChange {
    /// One line for a person, keys as fingerprints.
    pub fn describe(&self) -> String {
        let from = self.from.as_deref().map_or_else(|| "(unknown)".to_owned(), fingerprint);
        match self.kind {
            ChangeKind::First => format!("identity key at record {}: {}", self.seq, fingerprint(&self.to)),
            ChangeKind::Rotated => format!(
                "identity key rotated at record {}: old {from} → new {} (signed by both keys, {})",
                self.seq,
                fingerprint(&self.to),
                self.time
            ),
            ChangeKind::Unattested => format!(
                "identity key CHANGED WITHOUT A ROTATION at record {}: old {from} → new {} ({}; no signature by the old key vouches for it)",
                self.seq,
                fingerprint(&self.to),
                self.time
            ),
        }
    }
}

/// Which key was in force when, folded from a log's key records
/// (`key-event`, `key-rotation`) in order. Every rotation's signatures are
/// checked as it is folded in.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyHistory {
    changes: Vec<KeyChange>,
}

/// A verifier key in its canonical form (as `to_vkey` writes it), or the
/// text as recorded when it does not parse.
fn canonical_key(k: &str) -> String {
    NoteVerifier::parse(k).map_or_else(|_| k.to_owned(), |v| v.to_vkey())
}

impl KeyHistory {
    /// Fold in the next record of the log (other events are ignored).
    ///
    /// # Errors
    /// A rotation whose statement does not verify for `origin`, or that
    /// retires another key than the one in force.
    pub fn push(&mut self, origin: &str, r: &Record) -> Result<(), KeyError> {
        let current = self.current().map(str::to_owned);
        match &r.event {
            Event::KeyEvent { key, .. } => {
                let key = canonical_key(key);
                if current.as_deref() == Some(key.as_str()) {
                    return Ok(());
                }
                let kind = if current.is_none() { ChangeKind::First } else { ChangeKind::Unattested };
                self.changes.push(KeyChange { seq: r.seq, time: r.time.clone(), kind, from: current, to: key });
            }
            Event::KeyRotation { .. } => {
                let (st, old_sig, new_sig) = Statement::of(origin, r).expect("a key-rotation record");
                let v = st.verify(old_sig, new_sig)?;
                let (old, new) = (v.old().to_vkey(), v.new_key().to_vkey());
                if let Some(c) = &current
                    && *c != old
                {
                    return Err(KeyError::Chain { seq: r.seq, old: v.old().fingerprint(), current: fingerprint(c) });
                }
                let change =
                    KeyChange { seq: r.seq, time: r.time.clone(), kind: ChangeKind::Rotated, from: Some(old), to: new };
                self.changes.push(change);
            }
            _ => {}
        }
        Ok(())
    }

    /// Whether `r` is a record [`KeyHistory::push`] looks at.
    pub fn is_key_record(r: &Record) -> bool {
        matches!(r.event, Event::KeyEvent { .. } | Event::KeyRotation { .. })
    }

    /// Every change, in log order.
    pub fn changes(&self) -> &[KeyChange] {
        &self.changes
    }

    /// The key in force after the last record folded in.
    pub fn current(&self) -> Option<&str> {
        self.changes.last().map(|c| c.to.as_str())
    }

    /// The key that must sign a checkpoint of `size` records: the key in
    /// force after record `size - 1` (a change at record `r` is covered by
    /// checkpoints of size `r + 1` on). Before the first change folded in,
    /// the key that change retired (a log that starts mid-way); None when
    /// nothing says.
    pub fn key_at(&self, size: u64) -> Option<&str> {
        match self.changes.iter().rev().find(|c| c.seq < size) {
            Some(c) => Some(&c.to),
            None => self.changes.first().and_then(|c| c.from.as_deref()),
        }
    }

    /// The change that retired `key` before a tree of `size` records, if
    /// it was retired (it is not the key in force there).
    pub fn retired_before(&self, key: &str, size: u64) -> Option<&KeyChange> {
        let key = canonical_key(key);
        self.changes.iter().filter(|c| c.seq < size).find(|c| c.from.as_deref() == Some(key.as_str()))
    }

    /// The keys a reviewer who trusts `trusted` may accept: those, and
    /// every key a rotation from an accepted key handed over to, in log
    /// order. An unattested change adds nothing.
    pub fn follow(&self, trusted: &[NoteVerifier]) -> Vec<NoteVerifier> {
        let mut keys = trusted.to_vec();
        for c in &self.changes {
            if c.kind != ChangeKind::Rotated {
                continue;
            }
            let (Some(from), Ok(to)) = (c.from.as_deref(), NoteVerifier::parse(&c.to)) else { continue };
            if keys.iter().any(|k| k.to_vkey() == from) && !keys.contains(&to) {
                keys.push(to);
            }
        }
        keys
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::evidence::RECORD_SCHEMA;
    use crate::note::Checkpoint;
    use crate::signature::CapsuleSigningKey;

    const ORIGIN: &str = "runner.example";

    fn signer() -> NoteSigner {
        CapsuleSigningKey::generate().note_signer(ORIGIN).unwrap()
    }

    fn record(seq: u64, event: Event) -> Record {
        Record {
            schema: RECORD_SCHEMA.into(),
            seq,
            time: "2026-12-01T10:00:00Z".into(),
            run: "runner".into(),
            prev: Sha256Digest::of(&seq.to_be_bytes()),
            event,
        }
    }

    /// A rotation record from `old` to `new` at `seq`, signed by `by_old`
    /// (in the old key's place) and `new`.
    fn rotation(seq: u64, old: &NoteSigner, new: &NoteSigner, by_old: &NoteSigner) -> Record {
        let (old_key, new_key) = (old.verifier().to_vkey(), new.verifier().to_vkey());
        let mut r = record(
            seq,
            Event::KeyRotation {
                old_key: old_key.clone(),
                new_key: new_key.clone(),
                old_signature: String::new(),
                new_signature: String::new(),
            },
        );
        let st = Statement { origin: ORIGIN, old_key: &old_key, new_key: &new_key, seq, prev: r.prev, time: &r.time };
        let text = st.text();
        let sig = |s: &NoteSigner| {
            let line = s.signature_line(&text);
            line.trim_end().rsplit_once(' ').unwrap().1.to_owned()
        };
        let (os, ns) = (sig(by_old), sig(new));
        if let Event::KeyRotation { old_signature, new_signature, .. } = &mut r.event {
            *old_signature = os;
            *new_signature = ns;
        }
        r
    }

    fn in_use(seq: u64, k: &NoteSigner) -> Record {
        record(seq, Event::KeyEvent { action: "identity key in use".into(), key: k.verifier().to_vkey() })
    }

    #[test]
    fn sign_then_verify_and_the_statement_is_never_a_checkpoint() {
        let (old, new) = (signer(), signer());
        let (ok, nk) = (old.verifier().to_vkey(), new.verifier().to_vkey());
        let prev = Sha256Digest::of(b"r6");
        let st = Statement { origin: ORIGIN, old_key: &ok, new_key: &nk, seq: 7, prev, time: "2026-12-01T10:00:00Z" };
        let (os, ns) = st.sign(&old, &new).unwrap();
        let v = st.verify(&os, &ns).unwrap();
        assert_eq!((v.old().to_vkey(), v.new_key().to_vkey()), (ok.clone(), nk.clone()));
        assert!(Checkpoint::parse(&st.text()).is_err());
        // The signatures are bound to every field.
        let moved = Statement { seq: 8, ..st.clone() };
        assert_eq!(moved.verify(&os, &ns).unwrap_err().reason_code(), "key.rotation_old_signature");
        let other_prev = Statement { prev: Sha256Digest::of(b"x"), ..st.clone() };
        assert_eq!(other_prev.verify(&os, &ns).unwrap_err().reason_code(), "key.rotation_old_signature");
        let later = Statement { time: "2026-12-01T10:00:01Z", ..st.clone() };
        assert_eq!(later.verify(&os, &ns).unwrap_err().reason_code(), "key.rotation_old_signature");
        // Swapped, missing or spliced signatures.
        assert_eq!(st.verify(&ns, &os).unwrap_err().reason_code(), "key.rotation_old_signature");
        assert_eq!(st.verify("", &ns).unwrap_err().reason_code(), "key.rotation_old_signature");
        assert_eq!(st.verify(&os, &os).unwrap_err().reason_code(), "key.rotation_new_signature");
        let spliced = format!("{os}\n\u{2014} {ORIGIN} {ns}");
        assert_eq!(st.verify(&spliced, &ns).unwrap_err().reason_code(), "key.rotation_old_signature");
        // Signers other than the named keys cannot sign it.
        assert!(st.sign(&new, &old).is_err());
        // A rotation to the same key, or to a key of another runner.
        let same = Statement { new_key: &ok, ..st.clone() };
        assert_eq!(same.verify(&os, &os).unwrap_err().reason_code(), "key.rotation_malformed");
        let elsewhere = CapsuleSigningKey::generate().note_signer("other.example").unwrap().verifier().to_vkey();
        let foreign = Statement { new_key: &elsewhere, ..st };
        assert_eq!(foreign.verify(&os, &ns).unwrap_err().reason_code(), "key.rotation_malformed");
    }

    #[test]
    fn history_follows_rotations_and_names_the_key_for_each_size() {
        let (k0, k1, k2) = (signer(), signer(), signer());
        let mut h = KeyHistory::default();
        for r in [in_use(0, &k0), rotation(5, &k0, &k1, &k0), rotation(9, &k1, &k2, &k1)] {
            h.push(ORIGIN, &r).unwrap();
        }
        let [a, b, c] = [&k0, &k1, &k2].map(|k| k.verifier().to_vkey());
        assert_eq!(h.current(), Some(c.as_str()));
        assert_eq!(h.key_at(5), Some(a.as_str()), "a checkpoint of 5 records precedes record 5");
        assert_eq!(h.key_at(6), Some(b.as_str()));
        assert_eq!(h.key_at(10), Some(c.as_str()));
        assert_eq!(h.retired_before(&a, 10).map(|c| c.seq), Some(5));
        assert!(h.retired_before(&c, 10).is_none());
        // Trusting k0 reaches k2; trusting k1 reaches k2 but not k0.
        let follow = |t: &NoteSigner| h.follow(&[t.verifier().clone()]).iter().map(|v| v.to_vkey()).collect::<Vec<_>>();
        assert_eq!(follow(&k0), [a.clone(), b.clone(), c.clone()]);
        assert_eq!(follow(&k1), [b.clone(), c.clone()]);
        assert!(h.changes()[1].describe().starts_with("identity key rotated at record 5: old SHA256:"));
    }

    #[test]
    fn a_forged_or_out_of_chain_rotation_is_refused_and_a_swap_is_unattested() {
        let (k0, k1, kx) = (signer(), signer(), signer());
        let start = || {
            let mut h = KeyHistory::default();
            h.push(ORIGIN, &in_use(0, &k0)).unwrap();
            h
        };
        // Signed only by the new key (in both places).
        let e = start().push(ORIGIN, &rotation(3, &k0, &kx, &kx)).unwrap_err();
        assert_eq!((e.reason_code(), e.seq()), ("key.rotation_old_signature", 3));
        // A properly signed rotation from a key that is not in force.
        let e = start().push(ORIGIN, &rotation(3, &k1, &kx, &k1)).unwrap_err();
        assert_eq!(e.reason_code(), "key.rotation_chain");
        // A statement for another runner does not verify here.
        let e = start().push("other.example", &rotation(3, &k0, &k1, &k0)).unwrap_err();
        assert_eq!(e.reason_code(), "key.rotation_malformed");
        // A key event naming another key: an unattested change, followed by nobody.
        let mut h = start();
        h.push(ORIGIN, &in_use(4, &kx)).unwrap();
        assert_eq!(h.changes()[1].kind, ChangeKind::Unattested);
        assert_eq!(h.follow(&[k0.verifier().clone()]).len(), 1);
        assert!(h.changes()[1].describe().contains("WITHOUT A ROTATION"));
    }
}
