//! The store is checked against what the runner itself signed.
//!
//! The chain check at open catches a record changed or removed *inside*
//! the log, but not a log cut short: delete the last rows (after dropping
//! the append-only triggers with `sqlite3`), or delete `evidence.db-wal`
//! before the WAL was copied into the database, and what is left is still a
//! valid chain. The runner would then append, and sign, a different history
//! for tree sizes it had already signed. So:
//!
//! 1. The latest checkpoint the runner signed is also kept *outside* the
//!    database, in `<state>/evidence/latest-checkpoint` (the signed note),
//!    written atomically and durably at every start (after signing a
//!    checkpoint), then off the commit path (on the WAL thread every 5 s:
//!    its directory fsync slows the commits runs wait for, so not every
//!    round; and at a clean close). It is only ever replaced by a larger
//!    one, and may lag the store by those 5 s after a crash.
//! 2. At open, before anything is appended, the store must hold every
//!    record both that file and its own newest `checkpoints` row cover, with
//!    the same Merkle root; each note must verify under the key the log had
//!    in force at its tree size (the key history: `key-event` and
//!    `key-rotation` records, every rotation signed by both keys — a forged
//!    rotation is refused here, before anything is appended). Otherwise the
//!    runner refuses to start, naming what is missing.
//! 3. At a clean close the WAL is copied into the database and truncated,
//!    so nothing acknowledged lives only in `evidence.db-wal`.
//!
//! The cost is O(log n) (the stored subtree hashes give any past root).
//! Deleting rows, checkpoints *and* this file together is not caught here;
//! receipts, earlier exports (`--since`) and witnesses are the defence
//! against a runner-side rewrite of the whole history.

use std::path::Path;

use anyhow::{Context, Result, bail};
use edge_core::evidence::Record;
use edge_core::merkle::{Hash, MerkleStore};
use edge_core::note::{self, Checkpoint, NoteVerifier};
use edge_core::rotation::KeyHistory;
use rusqlite::{Connection, OptionalExtension};

use crate::store::log::EvidenceLog;

/// Beside `evidence.db`: the latest checkpoint the runner signed.
pub const LATEST_CHECKPOINT_FILE: &str = "latest-checkpoint";

/// The newest stored checkpoint: (tree size, signed note).
///
/// # Errors
/// If the store cannot be read.
pub fn newest_checkpoint_row(db: &Connection) -> Result<Option<(u64, String)>> {
    Ok(db
        .query_row("SELECT size, note FROM checkpoints ORDER BY size DESC LIMIT 1", [], |r| {
            Ok((r.get::<_, i64>(0)? as u64, r.get::<_, String>(1)?))
        })
        .optional()?)
}

/// The largest tree size the runner's signed checkpoints claim (the
/// newest `checkpoints` row and the file kept outside the store), not yet
/// verified: where a start verifies records from. Claims are checked by
/// [`check_signed_history`] before anything is appended, so a false one
/// only makes the start fail.
///
/// # Errors
/// If the store cannot be read.
pub fn signed_size(db: &Connection, dir: &Path) -> Result<u64> {
    Ok(signed_size_beside(newest_checkpoint_row(db)?.map(|(size, _)| size), dir))
}

/// [`signed_size`], the newest row's size already read (`row`).
pub fn signed_size_beside(row: Option<u64>, dir: &Path) -> u64 {
    let file = std::fs::read_to_string(dir.join(LATEST_CHECKPOINT_FILE)).ok().and_then(|t| claimed_size(&t));
    row.max(file).unwrap_or(0)
}

/// The tree size a signed note claims, without verifying it (to decide
/// whether a newer one may replace it).
pub(crate) fn claimed_size(note: &str) -> Option<u64> {
    Checkpoint::claimed(note).ok().map(|c| c.size)
}

/// Write the newest stored checkpoint to [`LATEST_CHECKPOINT_FILE`] if it is
/// larger than the one there. Never replaces a larger one: a store that lost
/// records must not also lose the evidence that it did.
///
/// # Errors
/// If the store cannot be read or the file cannot be written.
pub fn publish_latest(db: &Connection, dir: &Path) -> Result<()> {
    publish_note(dir, newest_checkpoint_row(db)?)
}

/// [`publish_latest`] of the newest stored checkpoint already read
/// ([`newest_checkpoint_row`]: its size and signed note; None, none yet).
///
/// # Errors
/// If the file cannot be written.
pub fn publish_note(dir: &Path, newest: Option<(u64, String)>) -> Result<()> {
    let Some((size, note)) = newest else { return Ok(()) };
    let path = dir.join(LATEST_CHECKPOINT_FILE);
    let current = std::fs::read_to_string(&path).ok().and_then(|t| claimed_size(&t));
    if current.is_some_and(|c| c >= size) {
        return Ok(());
    }
    crate::staging::write_durably(&path, note.as_bytes())
}

/// [`publish_latest`] now, from a fresh read-only connection.
///
/// # Errors
/// If the store cannot be read or the file cannot be written.
pub fn publish_now(dir: &Path) -> Result<()> {
    publish_latest(&crate::store::log::read_only(dir)?, dir)
}

/// What [`check_signed_history_of`] needs of a store: its size and the
/// Merkle root of any prefix.
pub trait History {
    /// Records in the store.
    fn records(&self) -> u64;
    /// The root of the first `size` records, if the store has them.
    ///
    /// # Errors
    /// If the store's tree cannot be read.
    fn root_at(&self, size: u64) -> Result<Option<Hash>>;
}

impl History for EvidenceLog {
    fn records(&self) -> u64 {
        EvidenceLog::len(self)
    }
    fn root_at(&self, size: u64) -> Result<Option<Hash>> {
        EvidenceLog::root_at(self, size)
    }
}

impl History for MerkleStore {
    fn records(&self) -> u64 {
        self.size() as u64
    }
    fn root_at(&self, size: u64) -> Result<Option<Hash>> {
        Ok((size <= self.size() as u64).then(|| self.root(size as usize)))
    }
}

impl History for crate::store::tree::StoredTree<'_> {
    fn records(&self) -> u64 {
        edge_core::merkle::Subtrees::tree_size(self)
    }
    fn root_at(&self, size: u64) -> Result<Option<Hash>> {
        if size > self.records() {
            return Ok(None);
        }
        edge_core::merkle::root_of(self, size).map(Some).map_err(|e| anyhow::anyhow!("the stored Merkle tree: {e}"))
    }
}

/// The key history of the log (`origin`: the runner's name), every
/// rotation's two signatures checked.
///
/// # Errors
/// A rotation that does not hold: the record, its reason code and the next step.
pub fn key_history(log: &EvidenceLog, origin: &str) -> Result<KeyHistory> {
    key_history_of(&log.index().key_records, origin)
}

/// [`key_history`] of the key records of a log (a backup's copy, read
/// without opening it for writing).
///
/// # Errors
/// As [`key_history`].
pub fn key_history_of(key_records: &[Record], origin: &str) -> Result<KeyHistory> {
    let mut history = KeyHistory::default();
    for r in key_records {
        history.push(origin, r).map_err(|e| {
            anyhow::anyhow!(
                "record {} ({}): {e}. The evidence store holds a key rotation this runner did not make: it was \
                 altered. Restore the state directory from a backup; do not start this runner on it",
                e.seq(),
                e.reason_code()
            )
        })?;
    }
    Ok(history)
}

/// Why a store does not hold what the runner signed.
fn check_one(log: &dyn History, what: &str, signed: &str, keys: &KeysAt<'_>) -> Result<()> {
    let size = claimed_size(signed).with_context(|| format!("{what} is not a signed checkpoint"))?;
    let verifier = keys(size);
    let opened = note::open(signed, std::slice::from_ref(&verifier)).map_err(|e| {
        anyhow::anyhow!(
            "{what} is not signed by the identity key this runner's log had in force at tree size {size} ({}: {e}); \
             it was altered or belongs elsewhere",
            verifier.fingerprint()
        )
    })?;
    let cp = Checkpoint::parse(&opened.text).with_context(|| format!("{what} is not a checkpoint"))?;
    let have = log.records();
    if cp.size > have {
        bail!(
            "the runner signed a checkpoint of {} records ({what}) but the store holds only {have}: records {have}..{} \
             are missing (rows deleted, or `evidence.db-wal` lost). Restore the state directory from a backup; \
             do not start this runner on it",
            cp.size,
            cp.size - 1
        );
    }
    if log.root_at(cp.size)? != Some(cp.root) {
        bail!(
            "the store's first {} records, as its persisted Merkle tree summarises them, are not the ones the runner \
             signed ({what}): the log was rewritten, or the tree (the `tree` table) altered. `edge-runner evidence \
             check --full` names the record or tree hash that differs. Restore the state directory from a backup; do \
             not start this runner on it",
            cp.size
        );
    }
    Ok(())
}

/// The key that must have signed a checkpoint of a given tree size.
type KeysAt<'a> = dyn Fn(u64) -> NoteVerifier + 'a;

/// Check the store against the checkpoints the runner signed (see the
/// module docs): each under the key `history` has in force at its size,
/// or `identity` where the log names no key yet.
///
/// # Errors
/// Naming what is missing or different, and the next step.
pub fn check_signed_history(log: &EvidenceLog, history: &KeyHistory, identity: &NoteVerifier) -> Result<()> {
    let kept = read_kept(log.dir())?;
    // The newest checkpoint as the open read it, while nothing was appended
    // since: no connection to open (and no schema to parse) for it. The
    // file, read after it, is no older: only the holder of the store's lock
    // (this process) writes either.
    if let Some(row) = log.checkpoint_row_at_open() {
        return check_signed_rows(log.dir(), kept, row, log, history, identity);
    }
    log.with_reader(|db| check_signed_history_in(log.dir(), db, kept, log, history, identity))
}

/// [`check_signed_history`] for the store in `dir` whose verified records
/// `log` describes (a backup's copy, checked without opening it for writing).
///
/// # Errors
/// As [`check_signed_history`].
pub fn check_signed_history_of(
    dir: &Path,
    log: &dyn History,
    history: &KeyHistory,
    identity: &NoteVerifier,
) -> Result<()> {
    let kept = read_kept(dir)?;
    let db = crate::store::log::read_only(dir)?;
    check_signed_history_in(dir, &db, kept, log, history, identity)
}

/// The checkpoint kept outside the store, if there is one. Read it before
/// the snapshot it is compared with: it is written only after the records
/// it covers are durable, so a store read after it holds them all, however
/// many a serving runner appends meanwhile.
///
/// # Errors
/// If the file exists but cannot be read.
pub fn read_kept(dir: &Path) -> Result<Option<String>> {
    let file = dir.join(LATEST_CHECKPOINT_FILE);
    match std::fs::read_to_string(&file) {
        // Tolerate the extra newline `sqlite3` prints after the note.
        Ok(t) => Ok(Some(format!("{}\n", t.trim_end_matches('\n')))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", file.display())),
    }
}

/// [`check_signed_history_of`] within the read transaction `db` (the
/// snapshot `log` describes), with the kept checkpoint `kept` read before it.
///
/// # Errors
/// As [`check_signed_history`].
pub fn check_signed_history_in(
    dir: &Path,
    db: &rusqlite::Connection,
    kept: Option<String>,
    log: &dyn History,
    history: &KeyHistory,
    identity: &NoteVerifier,
) -> Result<()> {
    check_signed_rows(dir, kept, newest_checkpoint_row(db)?, log, history, identity)
}

/// [`check_signed_history_in`], with `row` the store's newest checkpoint:
/// read after `kept`, or while nothing but this process could write either
/// (at open, under the store's lock: [`check_signed_history`]).
fn check_signed_rows(
    dir: &Path,
    kept: Option<String>,
    row: Option<(u64, String)>,
    log: &dyn History,
    history: &KeyHistory,
    identity: &NoteVerifier,
) -> Result<()> {
    let keys =
        |size: u64| history.key_at(size).and_then(|k| NoteVerifier::parse(k).ok()).unwrap_or_else(|| identity.clone());
    let file = dir.join(LATEST_CHECKPOINT_FILE);
    match (&kept, &row) {
        (None, Some((size, _))) => bail!(
            "{} is missing but the store holds signed checkpoints (the newest of {size} records): it is written \
             beside every store this runner version keeps, so the store may have been replaced or cut short. If you \
             restored the state directory yourself and trust it, write the newest checkpoint back with \
             `sqlite3 {} \"SELECT note FROM checkpoints ORDER BY size DESC LIMIT 1\" > {}` and start again",
            file.display(),
            dir.join("evidence.db").display(),
            file.display()
        ),
        (Some(_), None) if log.records() == 0 => bail!(
            "{} names a signed history but the store is empty: the evidence database was deleted or replaced. \
             Restore the state directory from a backup",
            file.display()
        ),
        _ => {}
    }
    if let Some(kept) = &kept {
        check_one(log, &format!("the checkpoint kept in {}", file.display()), kept, &keys)?;
    }
    // (After a clean close the two are the same note: checked once.)
    if let Some((_, signed)) = &row
        && kept.as_deref() != Some(signed.as_str())
    {
        check_one(log, "the store's newest checkpoint", signed, &keys)?;
    }
    Ok(())
}
