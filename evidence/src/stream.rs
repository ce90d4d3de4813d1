//! The bundle read from start to end, in memory that does not grow with it.
//!
//! [`pass`] is the integrity pass (checks 1–5 of [`crate::verify`]). Lines
//! are read in batches of a few MiB; within a batch every line is checked
//! and hashed on all cores (UTF-8, the record's position and link fields,
//! its chain digest and Merkle leaf hash; an artifact's digest, base64 and
//! hash), then the batch is folded in order into what the pass keeps: the
//! previous record's digest, the compact range of the tree (not every leaf),
//! the identity key records, and for a run export the run's leaves for their
//! inclusion proofs. Signatures are checked when the checkpoint, the file's
//! last part, is reached. For a full verification it also notes where each
//! artifact's line is ([`Index`]), not its bytes.
//!
//! A full verification ([`skim`], then [`full`]) reads each record once.
//! The per-run checks need the artifacts, which come after the records, so
//! a quick first pass only splits the records into lines and checks and
//! indexes the artifacts and reads the checkpoint's text; the pass over the
//! records then checks each for integrity and parses it, checks it
//! canonical and hands it to the per-run checks, in log order. Any
//! integrity failure is reported before any failure of a later check, as
//! though integrity had been verified first. The per-run checks read the
//! artifacts they need by position, hashing them again.
//!
//! What is held at once is three batches of records (one hashed, one read,
//! one folded) or one batch of artifacts, each as large as its longest
//! line; a line longer than [`MAX_LINE`] is refused.

use std::io::Read as _;

use edge_core::Sha256Digest;
use edge_core::evidence::{GENESIS, Record};
use edge_core::merkle::{self, CompactRange, Hash};
use edge_core::note::{Checkpoint, NoteVerifier};
use edge_core::rotation::KeyHistory;
use rayon::prelude::*;
use serde::Deserialize;

use crate::Failure;
use crate::bundle::{self, Format, Header, Scope};
use crate::verify::{Step, check_key_in_force, explain_untrusted, open_checkpoint};

/// The longest line a bundle may hold: a record, or an artifact in base64
/// (a 192 MiB artifact).
pub const MAX_LINE: usize = 256 << 20;
/// Bytes of lines checked together.
const BATCH_BYTES: usize = 8 << 20;
/// Lines checked together, at most (a few in unit tests, whose bundles
/// are small, so that they cross batches).
const BATCH_LINES: usize = if cfg!(test) { 16 } else { 16_384 };
/// The checkpoint note at the end, at most.
const MAX_CHECKPOINT: u64 = 64 << 10;

/// A bundle read by position: a file, or bytes in memory. A full
/// verification reads the records twice and each artifact when a run needs
/// it, so it needs one; the integrity pass reads once, start to end.
pub trait Source: Sync {
    /// Read into `buf` from `offset`, as [`std::os::unix::fs::FileExt::read_at`]
    /// (fewer bytes than asked is not the end; 0 is).
    ///
    /// # Errors
    /// As the underlying read.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize>;
}

impl Source for [u8] {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
        let start = usize::try_from(offset).unwrap_or(usize::MAX).min(self.len());
        let n = buf.len().min(self.len() - start);
        buf[..n].copy_from_slice(&self[start..start + n]);
        Ok(n)
    }
}

impl Source for std::fs::File {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
        std::os::unix::fs::FileExt::read_at(self, buf, offset)
    }
}

/// A [`Source`] read in order from `pos`.
pub(crate) struct At<'s, S: ?Sized> {
    pub source: &'s S,
    pub pos: u64,
}

impl<S: Source + ?Sized> std::io::Read for At<'_, S> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.source.read_at(buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// Where the artifacts are, for a full verification's pass over the records.
#[derive(Debug, Default)]
pub(crate) struct Index {
    /// The offset of the first record line, and of the line after the last.
    pub records_start: u64,
    pub records_end: u64,
    /// Each artifact's digest, and its line's offset and length, in digest order.
    pub artifacts: Vec<(Sha256Digest, u64, u32)>,
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
    /// The digest the record links to (None when what is written is not
    /// one in canonical form: it then links to nothing).
    prev: Option<Sha256Digest>,
    digest: Sha256Digest,
    leaf: Hash,
    /// Names a `key-event` or `key-rotation` type (parsed in order below).
    key: bool,
    /// In a run export: the record is of another run.
    other_run: bool,
}

/// Record line `i` (position `first_seq + i` in the log, when known).
fn facts(line: &[u8], i: u64, first_seq: Option<u64>, only_run: Option<&str>) -> Result<Facts, Failure> {
    let text = utf8(line, &|| format!("record line {i}"))?;
    let head: Head<'_> = serde_json::from_str(text).map_err(|e| Failure {
        check: "record.format",
        record: Some(first_seq.map_or(i, |f| f + i)),
        run: None,
        detail: format!("not a record: {e}"),
    })?;
    Ok(Facts::of(line, text, head.seq, head.prev.parse().ok(), only_run.is_some_and(|r| head.run != r)))
}

/// A record parsed and checked, or why it is not one (boxed: most are).
type Parsed = Result<Box<Record>, Box<Failure>>;

/// Record line `i` for a full verification: its facts, and the record
/// parsed and checked ([`crate::verify::parse_record`]) or why it is not a
/// record. The facts of a record that parsed and is canonical are read off
/// the record (its bytes are exactly what it writes); of any other line, as
/// the integrity pass reads them ([`facts`]).
fn facts_and_record(
    line: &[u8],
    i: u64,
    first_seq: Option<u64>,
    only_run: Option<&str>,
) -> Result<(Facts, Parsed), Failure> {
    let text = utf8(line, &|| format!("record line {i}"))?;
    match crate::verify::parse_record(text) {
        Ok(r) => {
            let other_run = only_run.is_some_and(|run| r.run != run);
            Ok((Facts::of(line, text, r.seq, Some(r.prev), other_run), Ok(Box::new(r))))
        }
        Err(e) => Ok((facts(line, i, first_seq, only_run)?, Err(Box::new(e)))),
    }
}

impl Facts {
    fn of(line: &[u8], text: &str, seq: u64, prev: Option<Sha256Digest>, other_run: bool) -> Self {
        Facts {
            seq,
            prev,
            digest: Sha256Digest::of(line),
            leaf: merkle::leaf_hash(line),
            key: text.contains("\"type\":\"key-rotation\"") || text.contains("\"type\":\"key-event\""),
            other_run,
        }
    }
}

/// Lines read in batches straight into one buffer: no copy per line.
struct Lines<R> {
    input: R,
    /// Read but not yet handed out (the start of the next line).
    carry: Vec<u8>,
    /// Where `carry` starts in the input: the next line's offset.
    base: u64,
    eof: bool,
}

/// Complete lines in one buffer: line `i` is `data[start(i)..ends[i]]`.
#[derive(Default)]
struct Batch {
    /// Where `data` starts in the input.
    base: u64,
    data: Vec<u8>,
    /// Bytes of `data` read (the rest is spare room, initialized once).
    filled: usize,
    /// Where each line ends (its `\n`).
    ends: Vec<usize>,
}

impl Batch {
    fn len(&self) -> usize {
        self.ends.len()
    }

    fn start(&self, i: usize) -> usize {
        if i == 0 { 0 } else { self.ends[i - 1] + 1 }
    }

    fn line(&self, i: usize) -> &[u8] {
        &self.data[self.start(i)..self.ends[i]]
    }

    fn lines(&self) -> impl IndexedParallelIterator<Item = &[u8]> {
        (0..self.len()).into_par_iter().map(|i| self.line(i))
    }
}

impl<R: std::io::Read> Lines<R> {
    /// Lines of `input`, whose first byte is at `base`.
    fn new(input: R, base: u64) -> Self {
        Self { input, carry: Vec::new(), base, eof: false }
    }

    /// Read up to `left` lines (fewer once a batch's worth of bytes or
    /// lines is in) into `batch`, naming line `i` by `what(i)` when the
    /// file ends before it or it is too long. `first` is the first line's number.
    fn fill(
        &mut self,
        batch: &mut Batch,
        first: u64,
        left: u64,
        what: &dyn Fn(u64) -> String,
    ) -> Result<usize, Failure> {
        batch.ends.clear();
        batch.filled = 0;
        batch.base = self.base;
        if left == 0 {
            return Ok(0);
        }
        // Small at first (a small bundle needs little), grown as lines come.
        if batch.data.len() < self.carry.len().max(64 << 10) {
            batch.data.resize(self.carry.len().max(64 << 10), 0);
        }
        batch.data[..self.carry.len()].copy_from_slice(&self.carry);
        batch.filled = self.carry.len();
        self.carry.clear();
        let mut scan = 0;
        loop {
            while (batch.ends.len() as u64) < left && batch.ends.len() < BATCH_LINES && scan < BATCH_BYTES {
                let Some(p) = memchr::memchr(b'\n', &batch.data[scan..batch.filled]) else { break };
                batch.ends.push(scan + p);
                scan += p + 1;
            }
            let n = batch.ends.len();
            if n as u64 == left || n == BATCH_LINES || (n > 0 && scan >= BATCH_BYTES) {
                break;
            }
            // The next line is not complete in what was read.
            let partial = batch.filled - scan;
            let i = first + n as u64;
            if partial > MAX_LINE {
                return Err(format_failure(format!("{} is longer than {} MiB", what(i), MAX_LINE >> 20)));
            }
            if self.eof {
                if n > 0 {
                    break;
                }
                return Err(format_failure(format!("the file ends before {}", what(i))));
            }
            if batch.filled == batch.data.len() {
                let grown = (batch.data.len() * 2).min(MAX_LINE + BATCH_BYTES);
                batch.data.resize(grown, 0);
            }
            match self.input.read(&mut batch.data[batch.filled..]) {
                Ok(0) => self.eof = true,
                Ok(got) => batch.filled += got,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Failure::bundle("bundle.read", format!("cannot read the bundle: {e}"))),
            }
        }
        self.carry.extend_from_slice(&batch.data[scan..batch.filled]);
        self.base += scan as u64;
        Ok(batch.ends.len())
    }

    /// One line, copied out.
    fn next(&mut self, what: &str) -> Result<Vec<u8>, Failure> {
        let mut one = Batch::default();
        self.fill(&mut one, 0, 1, &|_| what.to_owned())?;
        Ok(one.line(0).to_vec())
    }

    /// The rest of the input, at most `limit` bytes (None when longer).
    fn rest(mut self, limit: u64) -> Result<Option<Vec<u8>>, Failure> {
        let mut out = std::mem::take(&mut self.carry);
        (&mut self.input)
            .take(limit.saturating_sub(out.len() as u64) + 1)
            .read_to_end(&mut out)
            .map_err(|e| Failure::bundle("bundle.read", format!("cannot read the bundle: {e}")))?;
        Ok((out.len() as u64 <= limit).then_some(out))
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

/// Lines `0..total` of `lines` in three stages at once: `each(line, i)` on
/// all cores for one batch while the next batch is read and the batch
/// before is folded, in order, by `fold(values, batch, first line)` (which
/// returns the first failure among the values it reaches: a batch with one
/// is folded only up to it).
/// `progress(lines folded)` after each batch. Returns a spare batch.
fn pipeline<R, T, W, E, F>(
    lines: &mut Lines<R>,
    total: u64,
    what: &W,
    each: &E,
    fold: &mut F,
    progress: &mut dyn FnMut(u64),
) -> Result<Batch, Failure>
where
    R: std::io::Read + Send,
    T: Send,
    W: Fn(u64) -> String + Sync,
    E: Fn(&[u8], u64) -> Result<T, Failure> + Sync,
    F: FnMut(Vec<Result<T, Failure>>, &Batch, u64) -> Result<(), Failure> + Send,
{
    // `hashing` is worked on now, `reading` filled now, `folding` (with its
    // values, from `folded` on) folded now.
    let (mut hashing, mut reading, mut folding) = (Batch::default(), Batch::default(), Batch::default());
    let mut n = lines.fill(&mut hashing, 0, total, what)?;
    let (mut hashed_from, mut folded): (u64, u64) = (0, 0);
    let mut pending: Vec<Result<T, Failure>> = Vec::new();
    while n > 0 || !pending.is_empty() {
        let read_from = hashed_from + n as u64;
        let mut values = Vec::new();
        let (read, folding_done) = rayon::join(
            || {
                rayon::join(
                    || lines.fill(&mut reading, read_from, total - read_from, what),
                    || fold(std::mem::take(&mut pending), &folding, folded),
                )
            },
            // Written in place, in order (no list of pieces joined after).
            || {
                hashing
                    .lines()
                    .enumerate()
                    .map(|(j, line)| each(line, hashed_from + j as u64))
                    .collect_into_vec(&mut values)
            },
        )
        .0;
        // A failure in order: the batch folded comes before the one worked
        // on, and a line of that one before anything read after it.
        folding_done?;
        folded = hashed_from;
        if folded > 0 {
            progress(folded);
        }
        if let Some(at) = values.iter().position(Result::is_err) {
            let failure = values.split_off(at).into_iter().find_map(Result::err);
            fold(values, &hashing, hashed_from)?;
            return Err(failure.expect("found above"));
        }
        pending = values;
        let m = read?;
        // Rotate: what was worked on is folded next, what was read is worked on.
        std::mem::swap(&mut folding, &mut hashing);
        std::mem::swap(&mut hashing, &mut reading);
        hashed_from = read_from;
        n = m;
    }
    progress(total);
    Ok(hashing)
}

/// The integrity pass over `input` (checks 1–5 of [`crate::verify`]).
/// `progress(step, done, total)` as in [`crate::verify_with_progress`].
pub(crate) fn pass<R: std::io::Read + Send>(
    input: R,
    keys: &[NoteVerifier],
    progress: &mut dyn FnMut(Step, usize, usize),
) -> Result<Passed, Failure> {
    let mut lines = Lines::new(input, 0);
    let header = header(&mut lines)?;
    let h = &header;
    let mut chain = Chain::new(h)?;
    let total = usize::try_from(h.records).unwrap_or(usize::MAX);
    let (first_seq, only_run) = (chain.first_seq, chain.only_run);
    let mut batch = pipeline(
        &mut lines,
        h.records,
        &|i| format!("record line {i} of {}", h.records),
        &|line, i| facts(line, i, first_seq, only_run),
        &mut |facts, batch, from| chain.fold(facts, batch, from),
        &mut |done| progress(Step::Chain, usize::try_from(done).unwrap_or(usize::MAX), total),
    )?;
    artifacts(&mut lines, &mut batch, h, None, progress)?;
    let note = checkpoint_text(lines)?;
    Ok(conclude(chain, &note, keys)?.passed(header))
}

/// The first, quick pass of a full verification: the header, the records
/// only split into lines, the artifacts checked and indexed (the per-run
/// checks read them by position, and they come after the records), and the
/// checkpoint's text. When it fails, the integrity pass is run instead, for
/// the failure it finds first (a broken record before a broken artifact).
pub(crate) fn skim<S: Source + ?Sized>(
    source: &S,
    keys: &[NoteVerifier],
    index: &mut Index,
    progress: &mut dyn FnMut(Step, usize, usize),
) -> Result<Skimmed, Failure> {
    let read = |index: &mut Index, progress: &mut dyn FnMut(Step, usize, usize)| {
        let mut lines = Lines::new(At { source, pos: 0 }, 0);
        let header = header(&mut lines)?;
        index.records_start = lines.base;
        let mut batch = Batch::default();
        skip(&mut lines, &mut batch, header.records, &|i| format!("record line {i} of {}", header.records))?;
        index.records_end = lines.base;
        artifacts(&mut lines, &mut batch, &header, Some(index), progress)?;
        Ok(Skimmed { header, note: checkpoint_text(lines)? })
    };
    read(index, progress).or_else(|skim_failed: Failure| {
        pass(At { source, pos: 0 }, keys, progress)?;
        // The integrity pass read what the skim could not.
        Err(changed(&format!("the bundle ({})", skim_failed.detail)))
    })
}

/// What [`skim`] found.
pub(crate) struct Skimmed {
    pub header: Header,
    note: Vec<u8>,
}

/// A full verification's pass over the records, after [`skim`]: each is
/// read once, checked for integrity (UTF-8, position, chain, tree) and
/// parsed, checked canonical and handed to `sink` in log order on the way.
///
/// Every integrity failure is reported before any failure of a later
/// check, as though integrity had been verified first: the first failure
/// `sink` or a record's parse reports is kept aside until the records, the
/// tree and the checkpoint have held, and returned then with what passed
/// (`Ok((passed, Some(failure)))`); `sink` is not called after it.
pub(crate) fn full<S, K>(
    source: &S,
    skimmed: Skimmed,
    index: &Index,
    keys: &[NoteVerifier],
    sink: &mut K,
    progress: &mut dyn FnMut(Step, usize, usize),
) -> Result<(Passed, Option<Failure>), Failure>
where
    S: Source + ?Sized,
    K: FnMut(Box<Record>) -> Result<(), Failure> + Send,
{
    let Skimmed { header, note } = skimmed;
    let h = &header;
    let mut lines = Lines::new(At { source, pos: index.records_start }, index.records_start);
    let mut chain = Chain::new(h)?;
    let (first_seq, only_run) = (chain.first_seq, chain.only_run);
    let total = usize::try_from(h.records).unwrap_or(usize::MAX);
    let mut later: Option<Failure> = None;
    pipeline(
        &mut lines,
        h.records,
        &|i| format!("record line {i} of {}", h.records),
        &|line, i| facts_and_record(line, i, first_seq, only_run),
        &mut |items: Vec<Result<(Facts, Parsed), Failure>>, batch, from| {
            for (j, item) in items.into_iter().enumerate() {
                let (facts, record) = item?;
                chain.link(facts, batch.line(j), from + j as u64)?;
                if later.is_none()
                    && let Err(f) = record.map_err(|f| *f).and_then(&mut *sink)
                {
                    later = Some(f);
                }
            }
            Ok(())
        },
        &mut |done| progress(Step::Records, usize::try_from(done).unwrap_or(usize::MAX), total),
    )?;
    if lines.base != index.records_end {
        return Err(changed("its records"));
    }
    let concluded = conclude(chain, &note, keys)?;
    progress(Step::Chain, total, total);
    Ok((concluded.passed(header), later))
}

/// Past `count` lines, read but not looked at (`what(i)` names line `i`).
fn skip<R: std::io::Read>(
    lines: &mut Lines<R>,
    batch: &mut Batch,
    count: u64,
    what: &dyn Fn(u64) -> String,
) -> Result<(), Failure> {
    let mut done = 0;
    while done < count {
        done += lines.fill(batch, done, count - done, what)? as u64;
    }
    Ok(())
}

/// The magic line and the header.
fn header<R: std::io::Read>(lines: &mut Lines<R>) -> Result<Header, Failure> {
    let format = Format::of_magic(&lines.next("the magic line")?)?;
    let head = lines.next("the header")?;
    Ok(Header { format, ..bundle::header_line(utf8(&head, &|| "the header".into())?)? })
}

/// The artifact lines, checked: canonical digests, strictly increasing,
/// strict base64, each hashing to its digest; with `index`, where each is.
fn artifacts<R: std::io::Read>(
    lines: &mut Lines<R>,
    batch: &mut Batch,
    h: &Header,
    mut index: Option<&mut Index>,
    progress: &mut dyn FnMut(Step, usize, usize),
) -> Result<(), Failure> {
    let mut last: Option<Sha256Digest> = None;
    let mut done: u64 = 0;
    while done < h.artifacts {
        let n = lines.fill(batch, done, h.artifacts - done, &|i| format!("artifact line {i} of {}", h.artifacts))?;
        let checked: Vec<Sha256Digest> = batch
            .lines()
            .enumerate()
            .map(|(j, line)| artifact(line, done + j as u64).map(|(d, _)| d))
            .collect::<Result<_, Failure>>()?;
        for (j, digest) in checked.into_iter().enumerate() {
            if last.is_some_and(|p| p >= digest) {
                return Err(format_failure(format!(
                    "artifact line {}: artifacts must be in strictly increasing digest order",
                    done + j as u64
                )));
            }
            last = Some(digest);
            if let Some(ix) = index.as_deref_mut() {
                let len = u32::try_from(batch.line(j).len()).expect("a line is at most MAX_LINE");
                ix.artifacts.push((digest, batch.base + batch.start(j) as u64, len));
            }
        }
        done += n as u64;
    }
    let artifacts = usize::try_from(h.artifacts).unwrap_or(usize::MAX);
    progress(Step::Artifacts, artifacts, artifacts);

    Ok(())
}

/// The rest of the input: the checkpoint note.
fn checkpoint_text<R: std::io::Read>(lines: Lines<R>) -> Result<Vec<u8>, Failure> {
    lines
        .rest(MAX_CHECKPOINT)?
        .ok_or_else(|| format_failure(format!("the checkpoint is longer than {} KiB", MAX_CHECKPOINT >> 10)))
}

/// The checkpoint `note` and the keys, then the tree the records folded
/// into `chain`: what an integrity pass establishes.
fn conclude(chain: Chain<'_>, note: &[u8], keys: &[NoteVerifier]) -> Result<Concluded, Failure> {
    let Chain { header: h, range, run_leaves, history, unsigned_since, .. } = chain;
    // 2. The checkpoint, the rest of the file, and the keys.
    let note = utf8(note, &|| "the checkpoint".into())?;
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
            // The records were placed and the prefix checked by the text
            // read before the signature: it must be what was signed.
            if unsigned_since.as_ref() != Some(&old) {
                return Err(Failure::bundle(
                    "since.format",
                    "the earlier checkpoint's text is not what its signature covers",
                ));
            }
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
    Ok(Concluded { checkpoint, key, history, since })
}

/// What [`conclude`] established.
struct Concluded {
    checkpoint: Checkpoint,
    key: String,
    history: KeyHistory,
    since: Option<Checkpoint>,
}

impl Concluded {
    fn passed(self, header: Header) -> Passed {
        let Concluded { checkpoint, key, history, since } = self;
        let records = header.records;
        Passed { header, checkpoint, key, history, since, records }
    }
}

fn changed(what: &str) -> Failure {
    Failure::bundle(
        "bundle.changed",
        format!("{what} changed while the bundle was verified: verify a copy nothing else writes to"),
    )
}

/// The bundle's artifacts, read by position when a check needs one (and
/// hashed again then: what is used is what hashes to its digest).
pub(crate) struct Artifacts<'s> {
    source: &'s (dyn Source + 's),
    index: Vec<(Sha256Digest, u64, u32)>,
    /// Each digest's first eight bytes, big-endian: searched instead of the
    /// digests (every record's references are looked up).
    prefixes: Vec<u64>,
    referenced: Vec<std::sync::atomic::AtomicBool>,
    /// Small artifacts read and hashed already: runs of the same capsule
    /// share their decision input and plan, and reading, decoding and
    /// hashing them again for every run was a sixteenth of a full
    /// verification. What is kept hashed to its digest when read, which is
    /// all a fresh read would show.
    recent: edge_core::bounded::BoundedMap<Sha256Digest, std::sync::Arc<Vec<u8>>>,
}

/// Artifacts kept by [`Artifacts::get`], at most, each at most [`RECENT_BYTES`] long (≤ 32 MiB in all).
const RECENT: usize = 512;
const RECENT_BYTES: usize = 64 << 10;

impl<'s> Artifacts<'s> {
    pub fn new(source: &'s (dyn Source + 's), index: Vec<(Sha256Digest, u64, u32)>) -> Self {
        let referenced = index.iter().map(|_| std::sync::atomic::AtomicBool::new(false)).collect();
        let prefixes = index.iter().map(|(d, ..)| prefix(d)).collect();
        Self { source, index, prefixes, referenced, recent: edge_core::bounded::BoundedMap::new(RECENT) }
    }

    fn find(&self, d: &Sha256Digest) -> Option<usize> {
        // The index is in digest order, so its prefixes are in order too.
        let key = prefix(d);
        let from = self.prefixes.partition_point(|&p| p < key);
        let same = self.prefixes[from..].iter().take_while(|&&p| p == key).count();
        (from..from + same).find(|&i| self.index[i].0 == *d)
    }

    /// Note that a record references `d`; false when the bundle does not hold it.
    pub fn reference(&self, d: &Sha256Digest) -> bool {
        self.find(d).inspect(|&i| self.referenced[i].store(true, std::sync::atomic::Ordering::Relaxed)).is_some()
    }

    /// The first artifact no record referenced.
    pub fn unreferenced(&self) -> Option<Sha256Digest> {
        let i = self.referenced.iter().position(|r| !r.load(std::sync::atomic::Ordering::Relaxed))?;
        Some(self.index[i].0)
    }

    pub fn digests(&self) -> impl Iterator<Item = &Sha256Digest> {
        self.index.iter().map(|(d, ..)| d)
    }

    /// Artifact `d`'s bytes (None when the bundle does not hold it).
    pub fn get(&self, d: &Sha256Digest) -> Option<Result<Vec<u8>, Failure>> {
        let i = self.find(d)?;
        if let Some(bytes) = self.recent.get(d) {
            return Some(Ok(bytes.to_vec()));
        }
        let (_, offset, len) = self.index[i];
        let mut line = vec![0; len as usize];
        let mut read = 0;
        while read < line.len() {
            match self.source.read_at(&mut line[read..], offset + read as u64) {
                Ok(0) => return Some(Err(changed(&format!("artifact {d}")))),
                Ok(n) => read += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Some(Err(Failure::bundle("bundle.read", format!("cannot read the bundle: {e}")))),
            }
        }
        Some(match artifact(&line, i as u64) {
            Ok((got, bytes)) if got == *d => {
                if bytes.len() <= RECENT_BYTES {
                    self.recent.insert(*d, std::sync::Arc::new(bytes.clone()));
                }
                Ok(bytes)
            }
            _ => Err(changed(&format!("artifact {d}"))),
        })
    }
}

fn prefix(d: &Sha256Digest) -> u64 {
    u64::from_be_bytes(d.0[..8].try_into().expect("eight bytes"))
}

/// The signed checkpoint at the end of a bundle read from `input`, its
/// records and artifacts skipped unparsed (an earlier bundle given to
/// `--since`); nothing of it is verified here.
///
/// # Errors
/// `bundle.format` when the layout does not hold; `bundle.read` on a read error.
pub fn checkpoint_of(input: impl std::io::Read) -> Result<String, Failure> {
    let mut lines = Lines::new(input, 0);
    let h = header(&mut lines)?;
    let lines_in = h.records.saturating_add(h.artifacts);
    skip(&mut lines, &mut Batch::default(), lines_in, &|i| format!("line {i} of {lines_in} after the header"))?;
    let note = checkpoint_text(lines)?;
    Ok(utf8(&note, &|| "the checkpoint".into())?.to_owned())
}

/// The records' fold, in log order: sequence, chain, leaves, key records.
struct Chain<'h> {
    header: &'h Header,
    /// Where the records start in the log (None in a run export).
    first_seq: Option<u64>,
    only_run: Option<&'h str>,
    range: CompactRange,
    /// A `since` export's earlier checkpoint, as its text claims (its
    /// signature is checked with the others at the end).
    unsigned_since: Option<Checkpoint>,
    /// A run export's leaves, for their inclusion proofs.
    run_leaves: Vec<(u64, Hash)>,
    prev: Option<(u64, Sha256Digest)>,
    history: KeyHistory,
}

impl<'h> Chain<'h> {
    /// Where the records of the bundle `h` heads start, and the tree they
    /// extend: from the earlier checkpoint's text in a `since` export.
    fn new(h: &'h Header) -> Result<Self, Failure> {
        let mut range = CompactRange::default();
        let mut unsigned_since = None;
        let first_seq = match &h.scope {
            Scope::Full => Some(0),
            Scope::Since { checkpoint: old, prefix, .. } => {
                let old = Checkpoint::claimed(old).map_err(|e| Failure::bundle("since.format", e.to_string()))?;
                let prefix: Vec<Hash> = bundle::decode_hashes(prefix)
                    .map_err(|e| Failure::bundle("since.prefix", e))?
                    .into_iter()
                    .map(|v| v.try_into().expect("32 bytes"))
                    .collect();
                range =
                    CompactRange::from_hashes(old.size, &prefix).filter(|r| r.root() == old.root).ok_or_else(|| {
                        Failure::bundle("since.prefix", "the earlier tree's subtree hashes do not give its signed root")
                    })?;
                let size = old.size;
                unsigned_since = Some(old);
                Some(size)
            }
            Scope::Run { .. } => None,
        };
        let only_run = match &h.scope {
            Scope::Run { run, .. } => Some(run.as_str()),
            _ => None,
        };
        Ok(Chain {
            header: h,
            first_seq,
            only_run,
            range,
            unsigned_since,
            run_leaves: Vec::new(),
            prev: None,
            history: KeyHistory::default(),
        })
    }

    /// Fold the facts of record lines `from..` (`lines`, in order).
    fn fold(&mut self, facts: Vec<Result<Facts, Failure>>, lines: &Batch, from: u64) -> Result<(), Failure> {
        for (j, f) in facts.into_iter().enumerate() {
            self.link(f?, lines.line(j), from + j as u64)?;
        }
        Ok(())
    }

    /// Fold the facts `f` of record line `i`, `line`.
    fn link(&mut self, f: Facts, line: &[u8], i: u64) -> Result<(), Failure> {
        let h = self.header;
        {
            let at = self.first_seq.map_or(i, |s| s + i);
            let text = || std::str::from_utf8(line).expect("checked when hashed");
            // The run, for a failure's message only.
            let fail = |check: &'static str, detail: String| {
                let run = serde_json::from_str::<Head<'_>>(text()).map(|h| h.run.into_owned()).unwrap_or_default();
                Failure::record(check, f.seq, &run, detail)
            };
            match self.first_seq {
                Some(_) if f.seq != at => {
                    return Err(fail(
                        "record.sequence",
                        format!("found at position {at}: records were removed, duplicated or reordered"),
                    ));
                }
                None if self.prev.is_some_and(|(p, _)| f.seq <= p) || f.seq >= h.tree_size => {
                    return Err(fail("record.sequence", "out of order or beyond the checkpoint".into()));
                }
                _ => {}
            }
            if let Some(run) = self.only_run
                && f.other_run
            {
                return Err(fail("scope.run", format!("a record of another run in an export of run {run}")));
            }
            let linked = match self.prev {
                Some((p, d)) if p + 1 == f.seq => Some(d),
                _ if f.seq == 0 => Some(GENESIS),
                _ => None,
            };
            if let Some(want) = linked
                && f.prev != Some(want)
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
            self.prev = Some((f.seq, f.digest));
            match self.only_run {
                Some(_) => self.run_leaves.push((f.seq, f.leaf)),
                None => self.range.push(f.leaf),
            }
            // A key line that does not parse is left to the record checks.
            if f.key
                && let Ok(r) = serde_json::from_str::<Record>(text())
            {
                self.history
                    .push(&h.origin, &r)
                    .map_err(|e| Failure::record(e.reason_code(), e.seq(), &r.run, e.to_string()))?;
            }
        }
        Ok(())
    }
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
    use super::*;
    use crate::{Keep, Level, parse_keys, synth, verify_source};

    /// Bytes handed out at most 4 KiB per read, at any offset.
    struct Pieces<'a>(&'a [u8]);

    impl Source for Pieces<'_> {
        fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
            let n = buf.len().min(4096);
            self.0.read_at(&mut buf[..n], offset)
        }
    }

    fn verify_from(
        input: &(impl Source + ?Sized),
        keys: &[NoteVerifier],
        level: Level,
    ) -> Result<crate::Verified, Failure> {
        verify_source(input, keys, level, Keep::Counts, &mut |_, _, _| {})
    }

    #[test]
    fn a_bundle_read_in_small_pieces_verifies_like_one_in_memory() {
        let s = synth::full_bundle("stream.example/runner", 40);
        let keys = parse_keys(&s.vkey).unwrap();
        for level in [Level::Integrity, Level::Full] {
            let streamed = verify_from(&Pieces(&s.bundle), &keys, level).unwrap();
            let in_memory = crate::verify(&s.bundle, &keys, level).unwrap();
            assert_eq!(streamed.record_count, s.records);
            assert_eq!(streamed.checkpoint, in_memory.checkpoint);
            assert_eq!(streamed.run_count, in_memory.runs.len());
            assert_eq!(streamed.builds, in_memory.builds);
            // Counts only: nothing of the bundle is kept.
            assert!(streamed.records.is_empty() && streamed.runs.is_empty() && streamed.artifacts.is_empty());
        }
    }

    /// A full verification reads the records once, checking integrity and
    /// everything else together; it must fail as though integrity had been
    /// verified first: a flip anywhere fails it with the integrity pass's
    /// check at the same record, never with a later check of a record the
    /// integrity pass would have refused.
    #[test]
    fn a_full_verification_fails_first_as_the_integrity_pass_does() {
        let s = synth::full_bundle("stream.example/runner", 8);
        let keys = parse_keys(&s.vkey).unwrap();
        let n = s.bundle.len();
        let mut seen = std::collections::BTreeSet::new();
        // Spread over the file, and every byte of the checkpoint's end.
        let spread = (0..400).map(|k| (k * n / 400 + (k * 7919) % 97).min(n - 1));
        for (k, pos) in spread.chain(n - 120..n).enumerate() {
            let mut bad = s.bundle.clone();
            bad[pos] ^= [0x01u8, 0x02, 0x04, 0x20, 0x40][k % 5];
            let integrity = verify_from(&Pieces(&bad), &keys, Level::Integrity).unwrap_err();
            let full = verify_from(&Pieces(&bad), &keys, Level::Full).unwrap_err();
            assert_eq!((full.check, full.record), (integrity.check, integrity.record), "flip at {pos}: {full}");
            seen.insert(full.check);
        }
        // Records, artifacts and the checkpoint were all reached.
        for check in ["record.chain", "artifact.digest", "checkpoint.signature"] {
            assert!(seen.contains(check), "{seen:?}");
        }

        // A record that is not canonical, with a record after it that no
        // longer links to it (integrity), and one whose only fault is past
        // integrity: the time, re-signed as the runner would not write it.
        let text = String::from_utf8(s.bundle.clone()).unwrap();
        let lines: Vec<&str> = text.split_inclusive('\n').collect();
        let mut spaced = lines.clone();
        let with_space = lines[2 + 3].replacen("{", "{ ", 1);
        spaced[2 + 3] = &with_space;
        let bad = spaced.concat();
        let full = verify_from(&Pieces(bad.as_bytes()), &keys, Level::Full).unwrap_err();
        assert_eq!((full.check, full.record), ("record.chain", Some(4)), "{full}");
        // The last record not canonical: its parse fails before the tree
        // is checked, and the tree's failure is what is reported.
        let mut last = lines.clone();
        let spaced_last = lines[1 + s.records].replacen("{", "{ ", 1);
        last[1 + s.records] = &spaced_last;
        let bad = last.concat();
        let full = verify_from(&Pieces(bad.as_bytes()), &keys, Level::Full).unwrap_err();
        assert_eq!(full.check, "tree.root", "{full}");
        // A broken record and a broken artifact: the record's failure, as
        // the integrity pass reads the records first (the skim that found
        // the artifact is not what answers).
        let mut both = spaced.clone();
        let artifact = 2 + s.records;
        let flipped = flip_artifact(lines[artifact]);
        both[artifact] = &flipped;
        let bad = both.concat();
        let full = verify_from(&Pieces(bad.as_bytes()), &keys, Level::Full).unwrap_err();
        assert_eq!((full.check, full.record), ("record.chain", Some(4)), "{full}");
    }

    #[test]
    fn artifacts_are_found_by_digest_among_digests_sharing_their_first_bytes() {
        let digest = |first: u8, last: u8| {
            let mut d = [0u8; 32];
            d[..8].fill(first);
            d[31] = last;
            Sha256Digest(d)
        };
        let mut index: Vec<(Sha256Digest, u64, u32)> =
            [(1, 0), (1, 5), (1, 9), (2, 0), (7, 1), (7, 2), (255, 255)].map(|(f, l)| (digest(f, l), 0, 0)).to_vec();
        index.sort();
        let wanted: Vec<Sha256Digest> = index.iter().map(|(d, ..)| *d).collect();
        let artifacts = Artifacts::new(&Pieces(b""), index);
        for (i, d) in wanted.iter().enumerate() {
            assert_eq!(artifacts.find(d), Some(i));
        }
        for absent in [digest(1, 4), digest(0, 0), digest(7, 0), digest(255, 254), digest(3, 0)] {
            assert_eq!(artifacts.find(&absent), None);
        }
        assert_eq!(Artifacts::new(&Pieces(b""), Vec::new()).find(&digest(1, 0)), None);
    }

    #[test]
    fn the_checkpoint_of_a_bundle_is_found_without_parsing_what_comes_before() {
        let s = synth::full_bundle("stream.example/runner", 5);
        let parsed = bundle::parse(&s.bundle).unwrap();
        let read = checkpoint_of(At { source: &Pieces(&s.bundle), pos: 0 }).unwrap();
        assert_eq!(read, parsed.checkpoint);
        // Cut short: where it ends is named.
        let e = checkpoint_of(&s.bundle[..s.bundle.len() / 2]).unwrap_err();
        assert!(e.detail.contains("the file ends before"), "{e}");
    }

    #[test]
    fn an_endless_line_is_refused_at_the_bound_not_buffered_to_the_end() {
        /// The magic line and the header, then a "record" that never ends.
        struct Endless<'a>(&'a [u8]);
        impl Source for Endless<'_> {
            fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
                let n = self.0.read_at(buf, offset)?;
                buf[n..].fill(b'x');
                Ok(buf.len())
            }
        }
        let s = synth::full_bundle("stream.example/runner", 2);
        let keys = parse_keys(&s.vkey).unwrap();
        let text = std::str::from_utf8(&s.bundle).unwrap();
        let header_end = text.match_indices('\n').nth(1).unwrap().0 + 1;
        for level in [Level::Integrity, Level::Full] {
            let e = verify_from(&Endless(&s.bundle[..header_end]), &keys, level).unwrap_err();
            assert_eq!(e.check, "bundle.format", "{e}");
            assert!(e.detail.contains("record line 0") && e.detail.contains("longer than 256 MiB"), "{e}");
        }
    }

    #[test]
    fn a_header_announcing_more_than_the_file_holds_allocates_nothing_for_it() {
        let s = synth::full_bundle("stream.example/runner", 2);
        let keys = parse_keys(&s.vkey).unwrap();
        let text = String::from_utf8(s.bundle.clone()).unwrap();
        // The magic line, the header announcing u64::MAX records, the records, and nothing after.
        let lines: Vec<&str> = text.split_inclusive('\n').take(2 + s.records).collect();
        let forged =
            lines.concat().replacen(&format!("\"records\":{},", s.records), &format!("\"records\":{},", u64::MAX), 1);
        assert!(forged.contains(&u64::MAX.to_string()));
        let e = verify_from(forged.as_bytes(), &keys, Level::Full).unwrap_err();
        assert_eq!(e.check, "bundle.format", "{e}");
        assert!(e.detail.contains("the file ends before record line"), "{e}");
    }

    #[test]
    fn a_read_error_mid_stream_is_named_and_nothing_verifies() {
        /// The first half of a bundle, then a failing disk.
        struct Failing<'a>(&'a [u8]);
        impl Source for Failing<'_> {
            fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
                match self.0.read_at(buf, offset)? {
                    0 => Err(std::io::Error::other("the disk went away")),
                    n => Ok(n),
                }
            }
        }
        let s = synth::full_bundle("stream.example/runner", 4);
        let keys = parse_keys(&s.vkey).unwrap();
        for level in [Level::Integrity, Level::Full] {
            let e = verify_from(&Failing(&s.bundle[..s.bundle.len() / 2]), &keys, level).unwrap_err();
            assert_eq!(e.check, "bundle.read", "{e}");
            assert!(e.detail.contains("the disk went away"), "{e}");
        }
    }

    #[test]
    fn every_record_written_directly_is_what_the_value_path_writes() {
        let s = synth::full_bundle("stream.example/runner", 12);
        let text = std::str::from_utf8(&s.bundle).unwrap();
        let mut kinds = std::collections::BTreeSet::new();
        for line in text.lines().skip(2).take(s.records) {
            let r: Record = serde_json::from_str(line).unwrap();
            kinds.insert(r.event_type().to_owned());
            let direct = edge_core::canonical::direct_canonical_vec(&r).expect("written directly");
            assert_eq!(std::str::from_utf8(&direct).unwrap(), line);
            assert_eq!(edge_core::canonical::to_canonical_vec(&r).unwrap(), direct);
        }
        assert!(kinds.len() >= 10, "{kinds:?}");
    }

    /// An artifact line whose base64 says other bytes than its digest.
    fn flip_artifact(line: &str) -> String {
        let (digest, b64) = line.trim_end().split_once(' ').unwrap();
        let other = if b64.starts_with('A') { b64.replacen('A', "B", 1) } else { format!("A{}", &b64[1..]) };
        format!("{digest} {other}\n")
    }

    /// A bundle whose bytes change once they were read to the end (by the
    /// skim of a full verification): what is checked must be what is used.
    struct Changing<'a> {
        before: &'a [u8],
        after: &'a [u8],
        /// Reads of `before`'s last byte so far (the skim reads it once).
        reads: std::sync::atomic::AtomicUsize,
    }

    impl Source for Changing<'_> {
        fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
            let seen = self.reads.load(std::sync::atomic::Ordering::SeqCst);
            let n = if seen == 0 { self.before.read_at(buf, offset)? } else { self.after.read_at(buf, offset)? };
            if seen == 0 && n > 0 && offset + n as u64 == self.before.len() as u64 {
                self.reads.store(1, std::sync::atomic::Ordering::SeqCst);
            }
            Ok(n)
        }
    }

    #[test]
    fn records_or_artifacts_changed_after_the_skim_are_refused() {
        let a = synth::full_bundle("stream.example/runner", 6);
        let keys = parse_keys(&a.vkey).unwrap();
        let text = String::from_utf8(a.bundle.clone()).unwrap();
        let lines: Vec<&str> = text.split_inclusive('\n').collect();
        // A record's time changed (the same length, so every offset holds)
        // after the skim split the original into lines: the records are
        // checked as they are read once, so the change is a broken chain.
        let record = 2 + 3;
        let mut swapped = lines.clone();
        let altered = lines[record].replacen("\"time\":\"2", "\"time\":\"1", 1);
        assert_ne!(altered, lines[record]);
        swapped[record] = &altered;
        let after = swapped.concat();
        let source = Changing { before: &a.bundle, after: after.as_bytes(), reads: 0.into() };
        assert!(verify_from(&Pieces(after.as_bytes()), &keys, Level::Integrity).is_err(), "the swap is a tamper");
        let e = verify_from(&source, &keys, Level::Full).unwrap_err();
        assert_eq!((e.check, e.record), ("record.chain", Some(4)), "{e}");

        // An artifact's bytes changed after the skim checked its digest.
        let artifact = 2 + a.records;
        let mut swapped = lines.clone();
        let flipped = flip_artifact(lines[artifact]);
        swapped[artifact] = &flipped;
        let after = swapped.concat();
        let source = Changing { before: &a.bundle, after: after.as_bytes(), reads: 0.into() };
        let e = verify_from(&source, &keys, Level::Full).unwrap_err();
        assert_eq!(e.check, "bundle.changed", "{e}");
        assert!(e.detail.contains("artifact sha256:"), "{e}");
    }
}
