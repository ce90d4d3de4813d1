//! Offline verification of an evidence bundle. Pure: bytes and keys in, a
//! [`Verified`] value or the first [`Failure`] out; no files, clock or network.
//!
//! Checklist, in order (the check names appear in failure messages):
//!
//! 1. `bundle.format` — magic line, canonical header, counts, artifact lines
//!    (canonical digests, strictly increasing, strict base64).
//! 2. `key.rotation_*` — every `key-rotation` record in the bundle is signed
//!    by both the key it retires and the key it hands over to, and retires
//!    the key in force (`core::rotation`); the keys accepted are the trusted
//!    ones and every key a rotation from an accepted key handed over to.
//!    `checkpoint.signature` — the checkpoint is a signed note verified by an
//!    accepted runner key whose name is the bundle's origin (`key.unrotated`
//!    when the signer is a key the log switched to without a rotation);
//!    `key.retired` — it is the key in force at the checkpoint's tree size,
//!    not one a rotation before it retired; `checkpoint.format`,
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
//!    the log last recorded, by a `key-event` or a `key-rotation` (full export).

use std::collections::BTreeMap;

use edge_core::evidence::{RECORD_SCHEMA, Record};
use edge_core::note::{self, Checkpoint, NoteVerifier};
use edge_core::rotation::{ChangeKind, KeyChange, KeyHistory};
use edge_core::{Sha256Digest, canonical};

use crate::Failure;
use crate::bundle::{Header, Scope};
use crate::runs::{RunStream, RunSummary, RunnerBuild};
use crate::stream::{Artifacts, At, Index, Source};

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
    /// Records read again, parsed and checked for schema, and their runs
    /// checked as each ends (signatures, decision and quorum replay).
    Records,
    /// Runs checked (reported once, when done).
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
    /// How the identity key changed within the bundle's records, in log
    /// order (rotations, and changes without one): what a reviewer who
    /// pinned an older key followed to reach [`Verified::key`].
    pub key_changes: Vec<KeyChange>,
    /// The earlier checkpoint of a `since` export.
    pub since: Option<Checkpoint>,
    /// The records (parsed at [`Level::Full`]; empty at [`Level::Integrity`]).
    pub records: Vec<Record>,
    pub record_count: usize,
    pub artifacts: BTreeMap<Sha256Digest, Vec<u8>>,
    /// Per-run summaries ([`Level::Full`] with [`Keep::Everything`]).
    pub runs: Vec<RunSummary>,
    /// Runs checked ([`Level::Full`]).
    pub run_count: usize,
    /// The runner builds that executed the runs (by their `runner-started`
    /// records, in the order they started), each with its number of runs;
    /// and the number of runs no build is known for ([`Level::Full`]).
    pub builds: (Vec<(RunnerBuild, usize)>, usize),
}

impl Verified {
    /// One line for a terminal: what was verified, at which level.
    #[must_use]
    pub fn summary(&self) -> String {
        let plural = |n: usize, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
        let runs = match self.level {
            Level::Full => format!(", {}", plural(self.run_count, "run", "runs")),
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

    /// One line per runner build that executed the bundle's runs (from
    /// their `runner-started` records; full verification), and one for the
    /// runs no build is known for.
    #[must_use]
    pub fn build_notes(&self) -> Vec<String> {
        let (builds, unknown) = (&self.builds.0, self.builds.1);
        let mut out: Vec<String> = builds
            .iter()
            .map(|(b, n)| format!("runner build edge-runner {}: {n} run(s), started at record {}", b.short(), b.record))
            .collect();
        if unknown > 0 && !out.is_empty() {
            out.push(format!("runner build unknown for {unknown} run(s) (no runner-started record before them)"));
        }
        if self.header.format == crate::bundle::Format::V1 && !out.is_empty() {
            out.push(
                "bundle format v1 (runners before 2026-12-06): a reload recorded then carries its config file as \
                 read, which may hold secrets"
                    .into(),
            );
        }
        out
    }

    /// One line per change of the identity key the bundle records (the
    /// first key is not a change): rotations, each with both keys'
    /// fingerprints, and changes without a rotation, which were accepted
    /// only because the reviewer trusts the new key directly.
    #[must_use]
    pub fn key_notes(&self) -> Vec<String> {
        self.key_changes
            .iter()
            .filter(|c| c.kind != ChangeKind::First)
            .map(|c| match c.kind {
                ChangeKind::Unattested => format!("{}; accepted only because you trust the new key", c.describe()),
                _ => c.describe(),
            })
            .collect()
    }
}

/// What a full verification keeps for its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    /// Counts and the runner builds: memory does not grow with the bundle.
    Counts,
    /// Also every record, run summary and artifact (for a report).
    Everything,
}

/// Verify a bundle in memory against trusted runner keys, keeping
/// everything ([`Keep::Everything`]).
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
    verify_source(bytes, keys, level, Keep::Everything, progress)
}

/// Verify the bundle in `file` (see [`verify_source`]).
///
/// # Errors
/// As [`verify()`]; `bundle.read` when the file cannot be read.
pub fn verify_file(
    file: &std::fs::File,
    keys: &[NoteVerifier],
    level: Level,
    keep: Keep,
    progress: &mut dyn FnMut(Step, usize, usize),
) -> Result<Verified, Failure> {
    verify_source(file, keys, level, keep, progress)
}

/// Verify the bundle `source` holds. The integrity pass reads it once,
/// start to end (`crate::stream`); [`Level::Full`] then reads the records
/// again and checks each run once its last record is in, reading the
/// artifacts it needs by position. With [`Keep::Counts`] memory does not
/// grow with the bundle (only with the runs in progress at any point, and
/// the approvals the log spent); [`Keep::Everything`] keeps every record,
/// run summary and artifact for a report.
///
/// # Errors
/// As [`verify()`]; `bundle.read` when `source` fails, `bundle.changed`
/// when what the second pass read is not what the first verified.
pub fn verify_source(
    source: &(impl Source + ?Sized),
    keys: &[NoteVerifier],
    level: Level,
    keep: Keep,
    progress: &mut dyn FnMut(Step, usize, usize),
) -> Result<Verified, Failure> {
    if level == Level::Integrity {
        let passed = crate::stream::pass(At { source, pos: 0 }, keys, progress)?;
        return Ok(Verified::new(level, passed));
    }
    let mut index = Index::default();
    let skimmed = crate::stream::skim(source, keys, &mut index, progress)?;
    let dyn_source: &dyn Source = &Dyn(source);
    let artifacts = Artifacts::new(dyn_source, std::mem::take(&mut index.artifacts));
    let origin = skimmed.header.origin.clone();
    // Only a `since` export may begin in the middle of a run; a run
    // export carries every record of its run.
    let partial_start = matches!(skimmed.header.scope, Scope::Since { .. });
    let mut runs = RunStream::new(&artifacts, skimmed.header.format, &origin, partial_start, keep == Keep::Everything);
    let (passed, later) = crate::stream::full(source, skimmed, &index, keys, &mut |r| runs.push(r), progress)?;
    if let Some(failure) = later {
        return Err(failure);
    }
    let mut v = Verified::new(level, passed);
    let checked = runs.finish()?;
    if let Some(d) = artifacts.unreferenced() {
        return Err(Failure::bundle("artifact.unreferenced", format!("artifact {d} is referenced by no record")));
    }
    progress(Step::Runs, checked.count, checked.count);
    if matches!(v.header.scope, Scope::Full) {
        check_key_event(checked.last_key.as_ref(), v.record_count, &v.key)?;
    }
    v.run_count = checked.count;
    v.builds = checked.builds;
    v.runs = checked.summaries;
    v.records = checked.records;
    if keep == Keep::Everything {
        for d in artifacts.digests() {
            let bytes = artifacts.get(d).expect("indexed")?;
            v.artifacts.insert(*d, bytes);
        }
    }
    Ok(v)
}

impl Verified {
    /// What an integrity pass established; the rest is filled in by a full verification.
    fn new(level: Level, passed: crate::stream::Passed) -> Self {
        Verified {
            level,
            record_count: usize::try_from(passed.records).unwrap_or(usize::MAX),
            header: passed.header,
            checkpoint: passed.checkpoint,
            key: passed.key,
            key_changes: passed.history.changes().to_vec(),
            since: passed.since,
            records: Vec::new(),
            artifacts: BTreeMap::new(),
            runs: Vec::new(),
            run_count: 0,
            builds: (Vec::new(), 0),
        }
    }
}

/// A `Source` of any size behind one pointer.
struct Dyn<'s, S: ?Sized>(&'s S);

impl<S: Source + ?Sized> Source for Dyn<'_, S> {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
        self.0.read_at(buf, offset)
    }
}

pub(crate) fn open_checkpoint(
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
    // Which key: several accepted keys share the runner's name across a
    // rotation, so the one whose signature verifies, not the first by name.
    let signer = |k: &&NoteVerifier| k.name == origin && note::open(text, std::slice::from_ref(*k)).is_ok();
    let Some(key) = keys.iter().find(signer) else {
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

/// Parse a record line strictly and check it is canonical.
///
/// Runs of one capsule record many events that are byte for byte the same
/// (the same submission, admission, decision, plan, outcome), so an event
/// parsed and found canonical is remembered by its exact bytes
/// ([`EventMemo`]): a record whose event is one of them is parsed from its
/// other fields alone. Parsing is a function of the bytes, so the record is
/// the one a fresh parse gives; anything out of the ordinary takes the full
/// parse, which decides (and names the failure).
pub(crate) fn parse_record(line: &str) -> Result<Record, Failure> {
    let split = EventMemo::split(line);
    EVENTS.with_borrow_mut(|memo| {
        if let Some(r) = memo.parse(split) {
            return r;
        }
        let r = parse_record_fully(line)?;
        memo.remember(split, &r);
        Ok(r)
    })
}

fn parse_record_fully(line: &str) -> Result<Record, Failure> {
    let r: Record = serde_json::from_str(line).map_err(|e| Failure {
        check: "record.schema",
        record: None,
        run: None,
        detail: format!("not a record of {RECORD_SCHEMA}: {e}"),
    })?;
    let canonical = canonical::is_canonical_form_of(&r, line.as_bytes())
        .map_err(|e| record_failure(&r, "record.canonical", e.to_string()))?;
    if !canonical {
        return Err(record_failure(&r, "record.canonical", "not in canonical form".into()));
    }
    checked_fields(r)
}

fn record_failure(r: &Record, check: &'static str, detail: String) -> Failure {
    Failure::record(check, r.seq, &r.run, detail)
}

/// The checks of a record's own fields, once it parsed and is canonical.
fn checked_fields(r: Record) -> Result<Record, Failure> {
    if r.schema != RECORD_SCHEMA {
        return Err(record_failure(&r, "record.schema", format!("schema `{}`", r.schema)));
    }
    if r.time.parse::<jiff::Timestamp>().is_err() {
        return Err(record_failure(&r, "record.time", format!("`{}` is not an RFC 3339 time", r.time)));
    }
    Ok(r)
}

thread_local! {
    /// Each verifying thread's events parsed already.
    static EVENTS: std::cell::RefCell<EventMemo> = std::cell::RefCell::new(EventMemo::default());
}

/// Events of canonical records, by their exact bytes: at most
/// [`EventMemo::MAX`] of them and [`EventMemo::BUDGET`] bytes of them,
/// each at most [`EventMemo::MAX_BYTES`] long, forgotten all at once when
/// full (a few MiB per verifying thread, whatever the bundle holds).
#[derive(Default)]
struct EventMemo(std::collections::HashMap<Box<[u8]>, edge_core::evidence::Event>, usize);

/// A record's fields besides its event, as a canonical record writes
/// them after it (`event` sorts before all of them).
struct Rest<'l> {
    prev: Sha256Digest,
    run: &'l str,
    schema: &'l str,
    seq: u64,
    time: &'l str,
}

impl<'l> Rest<'l> {
    /// `text`, when it is exactly what the canonical writer writes for a
    /// record's fields after its event:
    /// `,"prev":"sha256:<hex>","run":"…","schema":"…","seq":<n>,"time":"…"}`,
    /// each string without an escape (None for anything else, which the
    /// full parse then decides: an escaped character, a number with a
    /// leading zero or too large, another field, a space).
    fn canonical(text: &'l str) -> Option<Self> {
        /// A string's characters up to its closing quote, when none needs
        /// an escape (the writer writes them as they are); and what follows.
        fn string(t: &str) -> Option<(&str, &str)> {
            let end = t.bytes().position(|b| b == b'"' || b == b'\\' || b < 0x20)?;
            (t.as_bytes()[end] == b'"').then(|| (&t[..end], &t[end + 1..]))
        }
        let t = text.strip_prefix(",\"prev\":\"sha256:")?;
        let prev = Sha256Digest::from_hex(t.get(..64)?).ok()?;
        let (run, t) = string(t.get(64..)?.strip_prefix("\",\"run\":\"")?)?;
        let (schema, t) = string(t.strip_prefix(",\"schema\":\"")?)?;
        let t = t.strip_prefix(",\"seq\":")?;
        let digits = t.bytes().take_while(u8::is_ascii_digit).count();
        let (number, t) = t.split_at(digits);
        if number.is_empty() || (number.len() > 1 && number.starts_with('0')) {
            return None;
        }
        let seq = number.parse().ok()?;
        let (time, t) = string(t.strip_prefix(",\"time\":\"")?)?;
        (t == "}").then_some(Rest { prev, run, schema, seq, time })
    }
}

impl EventMemo {
    const MAX: usize = 4096;
    const MAX_BYTES: usize = 4 << 10;
    const BUDGET: usize = 2 << 20;

    /// A canonical record's event and the rest after it (from its `,`).
    /// The rest's strings cannot hold an unescaped `"`, so the last
    /// `,"prev":"sha256:` is where the event ends.
    fn split(line: &str) -> Option<(&str, &str)> {
        static PREV: std::sync::LazyLock<memchr::memmem::FinderRev<'static>> =
            std::sync::LazyLock::new(|| memchr::memmem::FinderRev::new(",\"prev\":\"sha256:"));
        let body = line.strip_prefix("{\"event\":")?;
        let at = PREV.rfind(body.as_bytes())?;
        Some(body.split_at(at))
    }

    /// The record a line ([`EventMemo::split`]) holds, when its event is
    /// one remembered and the rest parses and is canonical; None for the
    /// full parse to decide.
    fn parse(&self, split: Option<(&str, &str)>) -> Option<Result<Record, Failure>> {
        let (event, rest) = split?;
        let known = self.0.get(event.as_bytes())?;
        // The record is canonical: its event is (it was, remembered by
        // these bytes), and so is the rest.
        let Rest { prev, run, schema, seq, time } = Rest::canonical(rest)?;
        let (schema, time, run) = (schema.to_owned(), time.to_owned(), run.to_owned());
        Some(checked_fields(Record { schema, seq, time, run, prev, event: known.clone() }))
    }

    /// Remember the event of `r`, which parsed and is canonical (`split`: its line, split).
    fn remember(&mut self, split: Option<(&str, &str)>, r: &Record) {
        let Some((event, _)) = split else { return };
        if event.len() > Self::MAX_BYTES || self.0.contains_key(event.as_bytes()) {
            return;
        }
        if self.0.len() >= Self::MAX || self.1 + event.len() > Self::BUDGET {
            self.0.clear();
            self.1 = 0;
        }
        self.1 += event.len();
        self.0.insert(event.as_bytes().into(), r.event.clone());
    }
}

/// The checkpoint key must be the identity key the log last recorded
/// (`last`: the last record naming it, as (sequence, run, key)).
fn check_key_event(last: Option<&(u64, String, String)>, records: usize, key: &str) -> Result<(), Failure> {
    match last {
        Some((_, _, k)) if k == key => Ok(()),
        Some((seq, run, k)) => Err(Failure::record(
            "key.event",
            *seq,
            run,
            format!("the log's identity key is {k}, but the checkpoint was signed by {key}"),
        )),
        None if records == 0 => Ok(()),
        None => Err(Failure::bundle("key.event", "the log never recorded the runner's identity key")),
    }
}

/// A checkpoint must be signed by the key in force at its tree size: a key
/// a rotation in the bundle retired before that size may not sign it.
pub(crate) fn check_key_in_force(history: &KeyHistory, size: u64, key: &str, which: &str) -> Result<(), Failure> {
    let Some(want) = history.key_at(size) else { return Ok(()) };
    if want == key {
        return Ok(());
    }
    let fp = edge_core::rotation::fingerprint;
    match history.retired_before(key, size) {
        Some(c) => Err(Failure::record(
            "key.retired",
            c.seq,
            "runner",
            format!(
                "the {which} checkpoint (tree size {size}) is signed by {}, which this record retired in favour of {}: \
                 a checkpoint of a tree that holds the change must be signed by the new key",
                fp(key),
                fp(want)
            ),
        )),
        None => Err(Failure::bundle(
            "key.event",
            format!(
                "the {which} checkpoint (tree size {size}) is signed by {}, but the log's identity key at that size is {}",
                fp(key),
                fp(want)
            ),
        )),
    }
}

/// When no accepted key signed the checkpoint, say which key the log knows
/// did, and how the log came to it: a change without a rotation is
/// `key.unrotated`.
pub(crate) fn explain_untrusted(f: Failure, note: &str, history: &KeyHistory) -> Failure {
    if f.check != "checkpoint.signature" {
        return f;
    }
    let signed_by = |k: &str| NoteVerifier::parse(k).is_ok_and(|v| note::open(note, std::slice::from_ref(&v)).is_ok());
    let Some(c) = history.changes().iter().rev().find(|c| signed_by(&c.to)) else {
        // The bundle names no key that signed it (a `--run` or `--since`
        // export carries no earlier key records): say which key did.
        let claimed: Vec<String> = note::claimed_signers(note)
            .into_iter()
            .map(|(name, id)| format!("`{}` with key id {id}", edge_core::text::line(&name)))
            .collect();
        if claimed.is_empty() {
            return f;
        }
        return Failure {
            detail: format!(
                "{}; it is signed by {}, which is not in your keys file. If the runner rotated its identity key \
                 (`edge-runner keys rotate`), this bundle holds no rotation record to follow (a `--run` or \
                 `--since` export after the rotation): verify a full export with the key you pinned, which \
                 follows the rotation and names the new key, or add the new key its operator announced",
                f.detail,
                claimed.join(" and ")
            ),
            ..f
        };
    };
    let fp = edge_core::rotation::fingerprint;
    let from = c.from.as_deref().map_or_else(|| "(unknown)".to_owned(), fp);
    match c.kind {
        ChangeKind::Unattested => Failure::record(
            "key.unrotated",
            c.seq,
            "runner",
            format!(
                "the checkpoint is signed by {}, which the log switched to here from {from} without a key rotation: \
                 nothing signed by the earlier key vouches for it (a rotation is recorded by `edge-runner keys rotate`, \
                 signed by both keys). If the runner's operator published {} out of band, add that key to your keys \
                 file; otherwise treat this bundle as forged",
                fp(&c.to),
                fp(&c.to)
            ),
        ),
        ChangeKind::Rotated => Failure {
            detail: format!(
                "{}; it is signed by {}, which record {} rotated to from {from}, and neither is a key you trust",
                f.detail,
                fp(&c.to),
                c.seq
            ),
            ..f
        },
        ChangeKind::First => Failure {
            detail: format!(
                "{}; it is signed by {}, the identity key the log names at record {}, which is not a key you trust",
                f.detail,
                fp(&c.to),
                c.seq
            ),
            ..f
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The record lines of a synthetic bundle with every kind of run.
    fn lines() -> Vec<String> {
        let spec = crate::synth::Spec { runs: 12, tier2_every: Some(3), passkeys: true, ..Default::default() };
        let s = crate::synth::bundle("memo.example/runner", &spec);
        let text = String::from_utf8(s.bundle).unwrap();
        text.lines().skip(2).take(s.records).map(str::to_owned).collect()
    }

    /// The lines, and a memo of every one's event.
    fn remembered() -> (Vec<String>, EventMemo) {
        let lines = lines();
        let mut memo = EventMemo::default();
        for line in &lines {
            memo.remember(EventMemo::split(line), &parse_record_fully(line).unwrap());
        }
        (lines, memo)
    }

    /// What the full parse makes of a line, for comparing failures.
    fn outcome(r: Result<Record, Failure>) -> Result<Record, (&'static str, Option<u64>)> {
        r.map_err(|f| (f.check, f.record))
    }

    #[test]
    fn a_remembered_event_gives_the_record_a_full_parse_gives() {
        let (lines, memo) = remembered();
        let mut hits = 0;
        for line in &lines {
            if let Some(r) = memo.parse(EventMemo::split(line)) {
                hits += 1;
                assert_eq!(r.unwrap(), parse_record_fully(line).unwrap());
            }
        }
        // Every record's event is remembered (events repeat across runs, and each is its own).
        assert_eq!(hits, lines.len());
    }

    /// Lines whose event is remembered, altered outside it (and in it):
    /// the memo answers exactly as the full parse does, or not at all (and
    /// never for a string with an escape, which it leaves to the full parse).
    #[test]
    fn a_remembered_event_with_anything_else_altered_is_decided_as_a_full_parse_decides() {
        let (lines, memo) = remembered();
        let line = lines.iter().find(|l| l.contains("\"type\":\"decision\"")).unwrap();
        let (event, rest) = EventMemo::split(line).unwrap();
        let r = parse_record_fully(line).unwrap();
        let digest = r.prev.to_string();
        let variants = [
            rest.replacen(",\"run\":", ", \"run\":", 1),
            rest.replacen(",\"seq\":", ",\"extra\":1,\"seq\":", 1),
            rest.replacen(",\"seq\":", ",\"seq\":7,\"seq\":", 1),
            rest.replacen(",\"seq\":", ",\"event\":{},\"seq\":", 1),
            rest.replacen(&format!(",\"seq\":{}", r.seq), "", 1),
            rest.replacen(&format!("\"seq\":{}", r.seq), &format!("\"seq\":0{}", r.seq), 1),
            rest.replacen("edge-runner.evidence/v1", "edge-runner.evidence/v2", 1),
            rest.replacen(&r.time, "yesterday", 1),
            rest.replacen(&digest, &digest.to_uppercase().replacen("SHA256", "sha256", 1), 1),
            rest.replacen(&r.run, "run\\u0041", 1),
            rest.replacen(&r.run, "run\\\"", 1),
            rest.replacen(&r.run, "run\t", 1),
            rest.replacen(&format!("\"seq\":{}", r.seq), "\"seq\":18446744073709551616", 1),
            rest.replacen(&format!("\"seq\":{}", r.seq), "\"seq\":-1", 1),
            rest.replacen(&format!("\"seq\":{}", r.seq), "\"seq\":4.0", 1),
            rest.replacen(&r.time, &format!("{}\\n", r.time), 1),
            rest.replacen("\"run\":", "\"run\" :", 1),
            rest.replacen(&digest, &digest[..70], 1),
            format!("{rest} "),
            format!("{rest}}}"),
        ];
        let mut answered = 0;
        for rest in &variants {
            assert_ne!(rest.as_str(), EventMemo::split(line).unwrap().1);
            let altered = format!("{{\"event\":{event}{rest}");
            // (An escaped quote in the run is canonical: that one parses.)
            let full = outcome(parse_record_fully(&altered));
            if let Some(got) = memo.parse(EventMemo::split(&altered)) {
                answered += 1;
                assert_eq!(outcome(got), full, "{altered}");
            }
            assert_eq!(outcome(parse_record(&altered)), full, "{altered}");
        }
        // Some were answered by the memo (a bad schema or time is found after the rest parsed).
        assert!(answered >= 2, "{answered}");
        // The event itself altered: not remembered, so the full parse decides.
        let spaced = line.replacen("{\"event\":{", "{\"event\":{ ", 1);
        assert!(memo.parse(EventMemo::split(&spaced)).is_none());
        assert_eq!(outcome(parse_record(&spaced)).unwrap_err().0, "record.canonical");
    }

    #[test]
    fn the_memo_holds_at_most_its_bound() {
        let lines = lines();
        let mut memo = EventMemo::default();
        let r = parse_record_fully(&lines[0]).unwrap();
        let (event, rest) = EventMemo::split(&lines[0]).unwrap();
        for i in 0..EventMemo::MAX + 10 {
            // Distinct event bytes (the memo does not parse what it keeps).
            let line = format!("{{\"event\":{event}{}{rest}", " ".repeat(i % 64) + &"\t".repeat(i / 64));
            memo.remember(EventMemo::split(&line), &r);
            assert!(memo.0.len() <= EventMemo::MAX && memo.1 <= EventMemo::BUDGET);
            assert_eq!(memo.1, memo.0.keys().map(|k| k.len()).sum::<usize>());
        }
        // An event longer than the bound is not kept.
        let long = format!("{{\"event\":{event}{}{rest}", " ".repeat(EventMemo::MAX_BYTES));
        let held = memo.0.len();
        memo.remember(EventMemo::split(&long), &r);
        assert_eq!(memo.0.len(), held);
    }
}
