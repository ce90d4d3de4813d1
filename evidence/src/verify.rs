//! Offline verification of an evidence bundle. Pure: bytes and keys in, a
//! [`Verified`] value or the first [`Failure`] out; no files, clock or network.
//!
//! Checklist, in order (the check names appear in failure messages):
//!
//! 1. `bundle.format` — magic line, canonical header, counts, artifact lines
//!    (canonical digests, strictly increasing, strict base64).
//! 2. `checkpoint.signature` — the checkpoint is a signed note verified by a
//!    trusted runner key whose name is the bundle's origin; `checkpoint.format`,
//!    `checkpoint.origin`, `checkpoint.size`.
//! 3. `record.format`, `record.sequence`, `record.chain` — each record line
//!    names its position; each links to the SHA-256 of the one before (record 0
//!    to the all-zero genesis).
//! 4. `tree.size`, `tree.root` — the records are the leaves of the signed
//!    tree (full export); `since.*`, `tree.consistency` — the earlier
//!    checkpoint is signed by the same runner, the records extend its tree to
//!    the new root, and the consistency proof holds; `tree.inclusion` — each
//!    record of a run export is in the signed tree.
//! 5. `artifact.digest` — every artifact hashes to its digest.
//!
//! [`Level::Full`] adds:
//!
//! 6. `record.schema`, `record.canonical`, `record.time` — every record is a
//!    well-formed, canonical record of this schema.
//! 7. `artifact.missing`, `artifact.unreferenced` — the artifacts are exactly
//!    those the records reference.
//! 8. Per run (see `runs.rs`): `run.start`, `run.order`, `run.terminal`,
//!    `run.outcome`, `capsule.manifest`, `capsule.signature`, `decision.input`,
//!    `decision.replay`, `plan.artifact`, `approval.*`, `quorum.*`,
//!    `authorize.*`, `run.unauthorized`, `diff.plan`, `nonce.reused`.
//! 9. `key.event` — the key that signed the checkpoint is the identity key
//!    the log last recorded (full export).

use std::collections::{BTreeMap, BTreeSet};

use edge_core::evidence::{GENESIS, RECORD_SCHEMA, Record};
use edge_core::merkle::{self, CompactRange, Hash};
use edge_core::note::{self, Checkpoint, NoteVerifier};
use edge_core::{Sha256Digest, canonical};
use rayon::prelude::*;
use serde::Deserialize;

use crate::Failure;
use crate::bundle::{self, Header, Scope};
use crate::runs::{self, RunSummary};

/// How much to check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// Checkpoint signature, chain, tree and proofs, artifact digests.
    Integrity,
    /// Everything: also schemas, signatures, approvals, decision and quorum replay, run completeness.
    Full,
}

/// Where a verification is, for a progress display ([`verify_with_progress`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Records linked into the chain and hashed into the tree.
    Chain,
    /// Artifact digests checked (reported once, when done).
    Artifacts,
    /// Records parsed and checked for schema (reported once, when done).
    Records,
    /// Runs checked (signatures, decision and quorum replay).
    Runs,
}

impl Step {
    pub fn name(self) -> &'static str {
        match self {
            Step::Chain => "chain",
            Step::Artifacts => "artifacts",
            Step::Records => "records",
            Step::Runs => "runs",
        }
    }
}

/// A bundle that passed verification.
#[derive(Debug)]
pub struct Verified {
    pub level: Level,
    pub header: Header,
    pub checkpoint: Checkpoint,
    /// The verifier key (`<name>+<id>+<key>`) that signed the checkpoint.
    pub key: String,
    /// The earlier checkpoint of a `since` export.
    pub since: Option<Checkpoint>,
    /// The records (parsed at [`Level::Full`]; empty at [`Level::Integrity`]).
    pub records: Vec<Record>,
    pub record_count: usize,
    pub artifacts: BTreeMap<Sha256Digest, Vec<u8>>,
    /// Per-run summaries ([`Level::Full`]).
    pub runs: Vec<RunSummary>,
}

/// The fields the integrity pass reads from each record (the rest is skipped unparsed).
#[derive(Deserialize)]
struct Head<'a> {
    seq: u64,
    #[serde(borrow)]
    prev: &'a str,
    #[serde(borrow)]
    run: std::borrow::Cow<'a, str>,
}

impl Verified {
    /// One line for a terminal: what was verified, at which level.
    #[must_use]
    pub fn summary(&self) -> String {
        let plural = |n: usize, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
        let runs = match self.level {
            Level::Full => format!(", {}", plural(self.runs.len(), "run", "runs")),
            Level::Integrity => String::new(),
        };
        format!(
            "verified ({:?}): {}{runs}, runner {}, tree size {}",
            self.level,
            plural(self.record_count, "record", "records"),
            self.header.origin,
            self.checkpoint.size
        )
    }
}

/// Verify a bundle against trusted runner keys.
///
/// # Errors
/// The first failed check, naming the record (when one) and the check.
pub fn verify(bytes: &[u8], keys: &[NoteVerifier], level: Level) -> Result<Verified, Failure> {
    verify_with_progress(bytes, keys, level, &mut |_, _, _| {})
}

/// [`verify()`], calling `progress(step, done, total)` as it goes (from one
/// thread, in order; often enough for a display, rarely enough to cost
/// nothing).
///
/// # Errors
/// As [`verify()`].
pub fn verify_with_progress(
    bytes: &[u8],
    keys: &[NoteVerifier],
    level: Level,
    progress: &mut dyn FnMut(Step, usize, usize),
) -> Result<Verified, Failure> {
    let b = bundle::parse(bytes)?;
    let h = &b.header;
    let (checkpoint, key) = open_checkpoint(b.checkpoint, keys, &h.origin, "checkpoint")?;
    if checkpoint.size != h.tree_size {
        return Err(Failure::bundle(
            "checkpoint.size",
            format!("the header says tree size {}, the signed checkpoint {}", h.tree_size, checkpoint.size),
        ));
    }

    // 3. Sequence and chain, and the leaf hashes.
    let since = match &h.scope {
        Scope::Since { checkpoint: old, .. } => Some(open_checkpoint(old, keys, &h.origin, "since")?.0),
        _ => None,
    };
    let first_seq = match (&h.scope, &since) {
        (Scope::Full, _) => Some(0),
        (Scope::Since { .. }, Some(old)) => Some(old.size),
        _ => None,
    };
    let mut leaves: Vec<Hash> = Vec::with_capacity(b.records.len());
    let mut seqs: Vec<u64> = Vec::with_capacity(b.records.len());
    let mut prev: Option<(u64, Sha256Digest)> = None;
    for (i, line) in b.records.iter().enumerate() {
        let at = first_seq.map_or(i as u64, |f| f + i as u64);
        let head: Head<'_> = serde_json::from_str(line).map_err(|e| Failure {
            check: "record.format",
            record: Some(at),
            run: None,
            detail: format!("not a record: {e}"),
        })?;
        let fail = |check: &'static str, detail: String| Failure::record(check, head.seq, &head.run, detail);
        match first_seq {
            Some(_) if head.seq != at => {
                return Err(fail(
                    "record.sequence",
                    format!("found at position {at}: records were removed, duplicated or reordered"),
                ));
            }
            None if prev.is_some_and(|(p, _)| head.seq <= p) || head.seq >= h.tree_size => {
                return Err(fail("record.sequence", "out of order or beyond the checkpoint".into()));
            }
            _ => {}
        }
        if let Scope::Run { run, .. } = &h.scope
            && head.run != *run
        {
            return Err(fail("scope.run", format!("a record of another run in an export of run {run}")));
        }
        let linked = match prev {
            Some((p, d)) if p + 1 == head.seq => Some(d),
            _ if head.seq == 0 => Some(GENESIS),
            _ => None,
        };
        if let Some(want) = linked
            && head.prev != want.to_string()
        {
            return Err(fail(
                "record.chain",
                format!(
                    "links to {}, but record {} hashes to {want}: one of the two was altered, or records were removed between them",
                    head.prev.chars().take(80).collect::<String>(),
                    head.seq.saturating_sub(1)
                ),
            ));
        }
        prev = Some((head.seq, Sha256Digest::of(line.as_bytes())));
        leaves.push(merkle::leaf_hash(line.as_bytes()));
        seqs.push(head.seq);
        if i % 8192 == 8191 {
            progress(Step::Chain, i + 1, b.records.len());
        }
    }
    progress(Step::Chain, b.records.len(), b.records.len());

    // 4. The tree.
    match &h.scope {
        Scope::Full => {
            if h.records != h.tree_size {
                return Err(Failure::bundle(
                    "tree.size",
                    format!(
                        "the signed checkpoint covers {} records, the bundle holds {}: records were removed or added",
                        h.tree_size, h.records
                    ),
                ));
            }
            let mut range = CompactRange::default();
            for l in &leaves {
                range.push(*l);
            }
            if range.root() != checkpoint.root {
                return Err(Failure::bundle(
                    "tree.root",
                    "the records do not hash to the signed root: a record was altered, removed, added or reordered",
                ));
            }
        }
        Scope::Since { consistency, prefix, .. } => {
            let old = since.as_ref().expect("opened above");
            if old.size == 0 || old.size + h.records != h.tree_size {
                return Err(Failure::bundle(
                    "tree.size",
                    format!(
                        "the earlier checkpoint ({} records) plus {} records is not the signed size {}",
                        old.size, h.records, h.tree_size
                    ),
                ));
            }
            let prefix: Vec<Hash> = bundle::decode_hashes(prefix)
                .map_err(|e| Failure::bundle("since.prefix", e))?
                .into_iter()
                .map(|v| v.try_into().expect("32 bytes"))
                .collect();
            let mut range =
                CompactRange::from_hashes(old.size, &prefix).filter(|r| r.root() == old.root).ok_or_else(|| {
                    Failure::bundle("since.prefix", "the earlier tree's subtree hashes do not give its signed root")
                })?;
            for l in &leaves {
                range.push(*l);
            }
            if range.root() != checkpoint.root {
                return Err(Failure::bundle(
                    "tree.root",
                    "the records do not extend the earlier tree to the signed root: a record was altered, removed, added or reordered",
                ));
            }
            let proof = bundle::decode_hashes(consistency).map_err(|e| Failure::bundle("tree.consistency", e))?;
            merkle::verify_consistency(old.size, checkpoint.size, &proof, &old.root, &checkpoint.root).map_err(
                |e| {
                    Failure::bundle(
                        "tree.consistency",
                        format!("the log is not an extension of the earlier checkpoint: {e}"),
                    )
                },
            )?;
        }
        Scope::Run { proofs, .. } => {
            if proofs.len() != leaves.len() || leaves.is_empty() {
                return Err(Failure::bundle("tree.inclusion", "a run export needs one inclusion proof per record"));
            }
            for ((seq, leaf), proof) in seqs.iter().zip(&leaves).zip(proofs) {
                let proof = bundle::decode_hashes(proof).map_err(|e| Failure::bundle("tree.inclusion", e))?;
                merkle::verify_inclusion(*seq, checkpoint.size, leaf, &proof, &checkpoint.root).map_err(|e| {
                    Failure {
                        check: "tree.inclusion",
                        record: Some(*seq),
                        run: None,
                        detail: format!("not in the signed tree: {e}"),
                    }
                })?;
            }
        }
    }

    // 5. Artifacts.
    b.artifacts.par_iter().try_for_each(|(d, bytes)| {
        let got = Sha256Digest::of(bytes);
        if got == *d {
            Ok(())
        } else {
            Err(Failure::bundle("artifact.digest", format!("artifact {d} hashes to {got}: it was altered or swapped")))
        }
    })?;
    progress(Step::Artifacts, b.artifacts.len(), b.artifacts.len());

    let mut v = Verified {
        level,
        header: b.header.clone(),
        checkpoint,
        key,
        since,
        records: Vec::new(),
        record_count: b.records.len(),
        artifacts: BTreeMap::new(),
        runs: Vec::new(),
    };
    let artifacts: BTreeMap<Sha256Digest, Vec<u8>> = b.artifacts.into_iter().collect();
    if level == Level::Full {
        v.records = parse_records(&b.records)?;
        progress(Step::Records, v.records.len(), v.records.len());
        check_artifact_refs(&v.records, &artifacts)?;
        let ctx = runs::Ctx {
            artifacts: &artifacts,
            runner: &v.header.origin,
            // Only a `since` export may begin in the middle of a run; a run
            // export carries every record of its run.
            partial_start: matches!(v.header.scope, Scope::Since { .. }),
            documents: &std::collections::HashMap::new(),
        };
        v.runs = runs::check_runs(&v.records, &ctx, &mut |done, total| progress(Step::Runs, done, total))?;
        if matches!(v.header.scope, Scope::Full) {
            check_key_event(&v.records, &v.key)?;
        }
    }
    v.artifacts = artifacts;
    Ok(v)
}

fn open_checkpoint(
    text: &str,
    keys: &[NoteVerifier],
    origin: &str,
    which: &'static str,
) -> Result<(Checkpoint, String), Failure> {
    let (sig, format, org) = match which {
        "since" => ("since.signature", "since.format", "since.origin"),
        _ => ("checkpoint.signature", "checkpoint.format", "checkpoint.origin"),
    };
    let opened = note::open(text, keys).map_err(|e| {
        Failure::bundle(sig, format!("{e}: the {which} checkpoint is not signed by a trusted runner key"))
    })?;
    let Some(key) = keys.iter().find(|k| k.name == origin && opened.signed_by.contains(&k.name)) else {
        return Err(Failure::bundle(
            sig,
            format!("signed by {}, not by the runner `{origin}` the bundle names", opened.signed_by.join(", ")),
        ));
    };
    // A signed note may carry other signatures (ignored when their key is
    // unknown, or repeated); a bundle's checkpoint carries exactly the
    // runner's, so no byte of it goes unchecked.
    if opened.signature_lines != 1 {
        return Err(Failure::bundle(
            format,
            format!(
                "the {which} checkpoint carries {} signature lines; a bundle's carries exactly one, the runner's",
                opened.signature_lines
            ),
        ));
    }
    let cp = Checkpoint::parse(&opened.text).map_err(|e| Failure::bundle(format, e.to_string()))?;
    if cp.origin != origin {
        return Err(Failure::bundle(
            org,
            format!("the checkpoint's origin is `{}`, the bundle's `{origin}`", cp.origin),
        ));
    }
    Ok((cp, key.to_vkey()))
}

/// Parse every record strictly and check it is canonical (in parallel).
fn parse_records(lines: &[&str]) -> Result<Vec<Record>, Failure> {
    lines
        .par_iter()
        .map(|line| {
            let r: Record = serde_json::from_str(line).map_err(|e| Failure {
                check: "record.schema",
                record: None,
                run: None,
                detail: format!("not a record of {RECORD_SCHEMA}: {e}"),
            })?;
            let fail = |check: &'static str, detail: String| Failure::record(check, r.seq, &r.run, detail);
            if r.schema != RECORD_SCHEMA {
                return Err(fail("record.schema", format!("schema `{}`", r.schema)));
            }
            let canonical = canonical::to_canonical_vec(&r).map_err(|e| fail("record.canonical", e.to_string()))?;
            if canonical != line.as_bytes() {
                return Err(fail("record.canonical", "not in canonical form".into()));
            }
            if r.time.parse::<jiff::Timestamp>().is_err() {
                return Err(fail("record.time", format!("`{}` is not an RFC 3339 time", r.time)));
            }
            Ok(r)
        })
        .collect()
}

/// The artifacts are exactly those the records reference.
fn check_artifact_refs(records: &[Record], artifacts: &BTreeMap<Sha256Digest, Vec<u8>>) -> Result<(), Failure> {
    let mut referenced = BTreeSet::new();
    for r in records {
        for d in r.artifacts() {
            if !artifacts.contains_key(&d) {
                return Err(Failure::record(
                    "artifact.missing",
                    r.seq,
                    &r.run,
                    format!("artifact {d} is not in the bundle"),
                ));
            }
            referenced.insert(d);
        }
    }
    if let Some(d) = artifacts.keys().find(|d| !referenced.contains(*d)) {
        return Err(Failure::bundle("artifact.unreferenced", format!("artifact {d} is referenced by no record")));
    }
    Ok(())
}

/// The checkpoint key must be the identity key the log last recorded.
fn check_key_event(records: &[Record], key: &str) -> Result<(), Failure> {
    let last = records.iter().rev().find_map(|r| match &r.event {
        edge_core::evidence::Event::KeyEvent { key: k, .. } => Some((r, k)),
        _ => None,
    });
    match last {
        Some((_, k)) if k == key => Ok(()),
        Some((r, k)) => Err(Failure::record(
            "key.event",
            r.seq,
            &r.run,
            format!("the log's identity key is {k}, but the checkpoint was signed by {key}"),
        )),
        None if records.is_empty() => Ok(()),
        None => Err(Failure::bundle("key.event", "the log never recorded the runner's identity key")),
    }
}
