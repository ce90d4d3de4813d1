//! The integrity pass over a bundle, read once from start to end
//! (checks 1–5 of [`crate::verify`]): memory does not grow with the bundle.
//!
//! Lines are read in batches of a few MiB; within a batch every line is
//! checked and hashed on all cores (UTF-8, the record's position and link
//! fields, its chain digest and Merkle leaf hash; an artifact's digest,
//! base64 and hash), then the batch is folded in order into what the pass
//! keeps: the previous record's digest, the compact range of the tree (not
//! every leaf), the identity key records, and for a run export the run's
//! leaves for their inclusion proofs. Signatures are checked when the
//! checkpoint, the file's last part, is reached.
//!
//! What is held at once is one batch of lines, or one artifact when it is
//! larger than a batch; a line longer than [`MAX_LINE`] is refused.

use std::io::{BufRead, Read as _};

use edge_core::Sha256Digest;
use edge_core::evidence::{GENESIS, Record};
use edge_core::merkle::{self, CompactRange, Hash};
use edge_core::note::{Checkpoint, NoteVerifier};
use edge_core::rotation::KeyHistory;
use rayon::prelude::*;
use serde::Deserialize;

use crate::Failure;
use crate::bundle::{self, Header, MAGIC, Scope};
use crate::verify::{Step, check_key_in_force, explain_untrusted, open_checkpoint};

/// The longest line a bundle may hold: a record, or an artifact in base64
/// (a 192 MiB artifact).
pub const MAX_LINE: usize = 256 << 20;
/// Bytes of lines checked together.
const BATCH_BYTES: usize = 8 << 20;
/// Lines checked together, at most.
const BATCH_LINES: usize = 16_384;
/// The checkpoint note at the end, at most.
const MAX_CHECKPOINT: u64 = 64 << 10;

/// What a full verification keeps of the pass for the record-level checks.
#[derive(Debug, Default)]
pub(crate) struct Kept {
    /// Every record, parsed and checked canonical ([`crate::verify::parse_record`]).
    pub records: Vec<Record>,
    /// The first record that did not parse or was not canonical.
    pub first_bad: Option<Failure>,
    pub artifacts: Vec<(Sha256Digest, Vec<u8>)>,
}

/// What the integrity pass established.
pub(crate) struct Passed {
    pub header: Header,
    pub checkpoint: Checkpoint,
    /// The verifier key that signed the checkpoint.
    pub key: String,
    pub history: KeyHistory,
    pub since: Option<Checkpoint>,
    pub records: u64,
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

/// One record line, checked and hashed (on any thread).
struct Facts {
    seq: u64,
    /// The digest the record links to, as written (None when it is not
    /// the length of one).
    prev: Option<[u8; 71]>,
    digest: Sha256Digest,
    leaf: Hash,
    /// Names a `key-event` or `key-rotation` type (parsed in order below).
    key: bool,
    /// In a run export: the record is of another run.
    other_run: bool,
    /// The parsed record, when the full checks keep records.
    record: Option<Result<Record, Failure>>,
}

/// Record line `i` (position `first_seq + i` in the log, when known).
fn facts(line: &[u8], i: u64, first_seq: Option<u64>, only_run: Option<&str>, parse: bool) -> Result<Facts, Failure> {
    let text = utf8(line, &|| format!("record line {i}"))?;
    let head: Head<'_> = serde_json::from_str(text).map_err(|e| Failure {
        check: "record.format",
        record: Some(first_seq.map_or(i, |f| f + i)),
        run: None,
        detail: format!("not a record: {e}"),
    })?;
    Ok(Facts {
        seq: head.seq,
        prev: head.prev.as_bytes().try_into().ok(),
        digest: Sha256Digest::of(line),
        leaf: merkle::leaf_hash(line),
        key: text.contains("\"type\":\"key-rotation\"") || text.contains("\"type\":\"key-event\""),
        other_run: only_run.is_some_and(|r| head.run != r),
        record: parse.then(|| crate::verify::parse_record(text)),
    })
}

struct Lines<R> {
    input: R,
}

impl<R: BufRead> Lines<R> {
    /// The next line into `buf` (without its `\n`), or a `bundle.format`
    /// failure naming `what` when the file ends first.
    fn next(&mut self, buf: &mut Vec<u8>, what: &dyn Fn() -> String) -> Result<(), Failure> {
        buf.clear();
        let n = (&mut self.input)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', buf)
            .map_err(|e| Failure::bundle("bundle.read", format!("cannot read the bundle: {e}")))?;
        if buf.last() != Some(&b'\n') {
            if n > MAX_LINE {
                return Err(format_failure(format!("{} is longer than {} MiB", what(), MAX_LINE >> 20)));
            }
            return Err(format_failure(format!("the file ends before {}", what())));
        }
        buf.pop();
        Ok(())
    }
}

fn format_failure(detail: String) -> Failure {
    Failure::bundle("bundle.format", detail)
}

fn utf8<'b>(line: &'b [u8], what: &dyn Fn() -> String) -> Result<&'b str, Failure> {
    std::str::from_utf8(line).map_err(|e| {
        format_failure(format!("{} is not UTF-8 at byte {}: this is not an evidence bundle", what(), e.valid_up_to()))
    })
}

/// Read `n` lines (or fewer bytes' worth) into the reusable `batch`.
fn fill<R: BufRead>(
    lines: &mut Lines<R>,
    batch: &mut Vec<Vec<u8>>,
    first: u64,
    left: u64,
    what: &dyn Fn(u64) -> String,
) -> Result<usize, Failure> {
    let mut bytes = 0;
    let mut n = 0;
    while (n as u64) < left && n < BATCH_LINES && bytes < BATCH_BYTES {
        if batch.len() == n {
            batch.push(Vec::new());
        }
        let i = first + n as u64;
        lines.next(&mut batch[n], &|| what(i))?;
        bytes += batch[n].len();
        n += 1;
    }
    Ok(n)
}

/// The integrity pass over `input`; `keep` collects records and artifacts
/// for the full checks. `progress(step, done, total)` as in
/// [`crate::verify_with_progress`].
pub(crate) fn pass<R: BufRead + Send>(
    input: R,
    keys: &[NoteVerifier],
    mut keep: Option<&mut Kept>,
    progress: &mut dyn FnMut(Step, usize, usize),
) -> Result<Passed, Failure> {
    let mut lines = Lines { input };
    let mut buf = Vec::new();
    lines.next(&mut buf, &|| "the magic line".into())?;
    if buf != MAGIC.as_bytes() {
        return Err(format_failure(format!(
            "the first line is not `{MAGIC}`: not an evidence bundle (or another version)"
        )));
    }
    lines.next(&mut buf, &|| "the header".into())?;
    let header = bundle::header_line(utf8(&buf, &|| "the header".into())?)?;
    let h = &header;

    // Where the records start, and the tree they extend: from the earlier
    // checkpoint's text (its signature is checked with the others at the end).
    let mut range = CompactRange::default();
    let first_seq = match &h.scope {
        Scope::Full => Some(0),
        Scope::Since { checkpoint: old, prefix, .. } => {
            let unsigned = old.find("\n\n").map_or(old.as_str(), |i| &old[..=i]);
            let old = Checkpoint::parse(unsigned).map_err(|e| Failure::bundle("since.format", e.to_string()))?;
            let prefix: Vec<Hash> = bundle::decode_hashes(prefix)
                .map_err(|e| Failure::bundle("since.prefix", e))?
                .into_iter()
                .map(|v| v.try_into().expect("32 bytes"))
                .collect();
            range = CompactRange::from_hashes(old.size, &prefix).filter(|r| r.root() == old.root).ok_or_else(|| {
                Failure::bundle("since.prefix", "the earlier tree's subtree hashes do not give its signed root")
            })?;
            Some(old.size)
        }
        Scope::Run { .. } => None,
    };

    // 3. Records: sequence, chain, leaves; the key records in order. While
    // one batch is checked on all cores, the next is read.
    let mut history = KeyHistory::default();
    let mut run_leaves: Vec<(u64, Hash)> = Vec::new();
    let mut prev: Option<(u64, Sha256Digest)> = None;
    let only_run = match &h.scope {
        Scope::Run { run, .. } => Some(run.as_str()),
        _ => None,
    };
    let record_line = |i: u64| format!("record line {i} of {}", h.records);
    let parse = keep.is_some();
    let (mut batch, mut next): (Vec<Vec<u8>>, Vec<Vec<u8>>) = (Vec::new(), Vec::new());
    let total = usize::try_from(h.records).unwrap_or(usize::MAX);
    let mut n = fill(&mut lines, &mut batch, 0, h.records, &record_line)?;
    let mut done: u64 = 0;
    while n > 0 {
        let read_from = done + n as u64;
        let (facts, read) = rayon::join(
            || {
                batch[..n]
                    .par_iter()
                    .enumerate()
                    .map(|(j, line)| facts(line, done + j as u64, first_seq, only_run, parse))
                    .collect::<Result<Vec<Facts>, Failure>>()
            },
            || fill(&mut lines, &mut next, read_from, h.records - read_from, &record_line),
        );
        for (j, f) in facts?.into_iter().enumerate() {
            let i = done + j as u64;
            let at = first_seq.map_or(i, |s| s + i);
            let text = || std::str::from_utf8(&batch[j]).expect("checked above");
            // The run, for a failure's message only.
            let fail = |check: &'static str, detail: String| {
                let run = serde_json::from_str::<Head<'_>>(text()).map(|h| h.run.into_owned()).unwrap_or_default();
                Failure::record(check, f.seq, &run, detail)
            };
            match first_seq {
                Some(_) if f.seq != at => {
                    return Err(fail(
                        "record.sequence",
                        format!("found at position {at}: records were removed, duplicated or reordered"),
                    ));
                }
                None if prev.is_some_and(|(p, _)| f.seq <= p) || f.seq >= h.tree_size => {
                    return Err(fail("record.sequence", "out of order or beyond the checkpoint".into()));
                }
                _ => {}
            }
            if let Some(run) = only_run
                && f.other_run
            {
                return Err(fail("scope.run", format!("a record of another run in an export of run {run}")));
            }
            let linked = match prev {
                Some((p, d)) if p + 1 == f.seq => Some(d),
                _ if f.seq == 0 => Some(GENESIS),
                _ => None,
            };
            if let Some(want) = linked
                && f.prev != Some(want.text())
            {
                let named = serde_json::from_str::<Head<'_>>(text()).map(|h| h.prev.to_owned()).unwrap_or_default();
                return Err(fail(
                    "record.chain",
                    format!(
                        "links to {}, but record {} hashes to {want}: one of the two was altered, or records were removed between them",
                        named.chars().take(80).collect::<String>(),
                        f.seq.saturating_sub(1)
                    ),
                ));
            }
            prev = Some((f.seq, f.digest));
            match only_run {
                Some(_) => run_leaves.push((f.seq, f.leaf)),
                None => range.push(f.leaf),
            }
            // A key line that does not parse is left to the record checks.
            let key_record = match (&f.record, f.key) {
                (_, false) => None,
                (Some(Ok(r)), true) => Some(r.clone()),
                (_, true) => serde_json::from_str::<Record>(text()).ok(),
            };
            if let Some(r) = key_record {
                history
                    .push(&h.origin, &r)
                    .map_err(|e| Failure::record(e.reason_code(), e.seq(), &r.run, e.to_string()))?;
            }
            if let (Some(k), Some(parsed)) = (keep.as_deref_mut(), f.record) {
                match parsed {
                    Ok(r) => k.records.push(r),
                    Err(e) => {
                        k.first_bad.get_or_insert(e);
                    }
                }
            }
        }
        done += n as u64;
        progress(Step::Chain, usize::try_from(done).unwrap_or(usize::MAX), total);
        n = read?;
        std::mem::swap(&mut batch, &mut next);
    }

    // 5. Artifacts: canonical digests, strictly increasing, strict base64, each hashing to its digest.
    let mut last: Option<Sha256Digest> = None;
    let mut done: u64 = 0;
    while done < h.artifacts {
        let n = fill(&mut lines, &mut batch, done, h.artifacts - done, &|i| {
            format!("artifact line {i} of {}", h.artifacts)
        })?;
        let checked: Vec<(Sha256Digest, Vec<u8>)> = batch[..n]
            .par_iter()
            .enumerate()
            .map(|(j, line)| artifact(line, done + j as u64))
            .collect::<Result<_, Failure>>()?;
        for (j, (digest, bytes)) in checked.into_iter().enumerate() {
            if last.is_some_and(|p| p >= digest) {
                return Err(format_failure(format!(
                    "artifact line {}: artifacts must be in strictly increasing digest order",
                    done + j as u64
                )));
            }
            last = Some(digest);
            if let Some(k) = keep.as_deref_mut() {
                k.artifacts.push((digest, bytes));
            }
        }
        done += n as u64;
    }
    let artifacts = usize::try_from(h.artifacts).unwrap_or(usize::MAX);
    progress(Step::Artifacts, artifacts, artifacts);

    // 2. The checkpoint, the rest of the file, and the keys.
    let mut note = Vec::new();
    let read = lines
        .input
        .take(MAX_CHECKPOINT + 1)
        .read_to_end(&mut note)
        .map_err(|e| Failure::bundle("bundle.read", format!("cannot read the bundle: {e}")))?;
    if read as u64 > MAX_CHECKPOINT {
        return Err(format_failure(format!("the checkpoint is longer than {} KiB", MAX_CHECKPOINT >> 10)));
    }
    let note = utf8(&note, &|| "the checkpoint".into())?;
    let accepted = history.follow(keys);
    let (checkpoint, key) =
        open_checkpoint(note, &accepted, &h.origin, "checkpoint").map_err(|f| explain_untrusted(f, note, &history))?;
    check_key_in_force(&history, checkpoint.size, &key, "checkpoint")?;
    if checkpoint.size != h.tree_size {
        return Err(Failure::bundle(
            "checkpoint.size",
            format!("the header says tree size {}, the signed checkpoint {}", h.tree_size, checkpoint.size),
        ));
    }
    let since = match &h.scope {
        Scope::Since { checkpoint: old, .. } => {
            let (old, old_key) = open_checkpoint(old, &accepted, &h.origin, "since")?;
            check_key_in_force(&history, old.size, &old_key, "since")?;
            Some(old)
        }
        _ => None,
    };

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
            if range.root() != checkpoint.root {
                return Err(Failure::bundle(
                    "tree.root",
                    "the records do not hash to the signed root: a record was altered, removed, added or reordered",
                ));
            }
        }
        Scope::Since { consistency, .. } => {
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
            if proofs.len() != run_leaves.len() || run_leaves.is_empty() {
                return Err(Failure::bundle("tree.inclusion", "a run export needs one inclusion proof per record"));
            }
            for ((seq, leaf), proof) in run_leaves.iter().zip(proofs) {
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
    let records = h.records;
    Ok(Passed { header, checkpoint, key, history, since, records })
}

/// One artifact line, checked ([`bundle::artifact_line`]) and hashed.
fn artifact(line: &[u8], i: u64) -> Result<(Sha256Digest, Vec<u8>), Failure> {
    let (digest, bytes) = bundle::artifact_line(line, i)?;
    let got = Sha256Digest::of(&bytes);
    if got != digest {
        return Err(Failure::bundle(
            "artifact.digest",
            format!("artifact {digest} hashes to {got}: it was altered or swapped"),
        ));
    }
    Ok((digest, bytes))
}

#[cfg(test)]
mod tests {
    use std::io::{BufReader, Read};

    use super::*;
    use crate::{Level, parse_keys, synth, verify_reader};

    fn verify_from(input: impl Read + Send, keys: &[NoteVerifier], level: Level) -> Result<crate::Verified, Failure> {
        verify_reader(BufReader::with_capacity(4096, input), keys, level, &mut |_, _, _| {})
    }

    #[test]
    fn a_bundle_read_in_small_pieces_verifies_like_one_in_memory() {
        let s = synth::full_bundle("stream.example/runner", 40);
        let keys = parse_keys(&s.vkey).unwrap();
        for level in [Level::Integrity, Level::Full] {
            let streamed = verify_from(&s.bundle[..], &keys, level).unwrap();
            let in_memory = crate::verify(&s.bundle, &keys, level).unwrap();
            assert_eq!(streamed.record_count, s.records);
            assert_eq!(streamed.checkpoint, in_memory.checkpoint);
            assert_eq!(streamed.runs.len(), in_memory.runs.len());
        }
    }

    #[test]
    fn an_endless_line_is_refused_at_the_bound_not_buffered_to_the_end() {
        let s = synth::full_bundle("stream.example/runner", 2);
        let keys = parse_keys(&s.vkey).unwrap();
        let text = std::str::from_utf8(&s.bundle).unwrap();
        let header_end = text.match_indices('\n').nth(1).unwrap().0 + 1;
        // The magic line and the header, then a "record" that never ends.
        let endless = (&s.bundle[..header_end]).chain(std::io::repeat(b'x'));
        let e = verify_from(endless, &keys, Level::Integrity).unwrap_err();
        assert_eq!(e.check, "bundle.format", "{e}");
        assert!(e.detail.contains("record line 0") && e.detail.contains("longer than 256 MiB"), "{e}");
    }

    #[test]
    fn a_read_error_mid_stream_is_named_and_nothing_verifies() {
        struct Failing<'a>(&'a [u8]);
        impl Read for Failing<'_> {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                if self.0.is_empty() {
                    return Err(std::io::Error::other("the disk went away"));
                }
                let n = buf.len().min(self.0.len());
                buf[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        let s = synth::full_bundle("stream.example/runner", 4);
        let keys = parse_keys(&s.vkey).unwrap();
        let e = verify_from(Failing(&s.bundle[..s.bundle.len() / 2]), &keys, Level::Integrity).unwrap_err();
        assert_eq!(e.check, "bundle.read", "{e}");
        assert!(e.detail.contains("the disk went away"), "{e}");
    }
}
