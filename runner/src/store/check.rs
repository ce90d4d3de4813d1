//! The full check of a store (`edge-runner evidence check --full`, and
//! `serve` in the background after every start): what a start no longer
//! reads, read and checked.
//!
//! A start verifies the records since the last checkpoint the runner
//! signed, the persisted tree's summary of everything before it against
//! that signed checkpoint, and each record it reads back later by an
//! inclusion proof (`EvidenceLog::open`). A record altered *below* the
//! checkpoint (with its leaf and inner hashes, by someone who can write
//! `evidence.db`) is caught when it is read, exported or checked here: one
//! pass over every record, in one read transaction (a consistent snapshot;
//! the runner keeps appending meanwhile), in memory bounded by the work in
//! flight (the fold is made again as the writer keeps it: what is final
//! goes to a scratch database beside the store, `check-scratch-*/`,
//! deleted when done, and by the next check if a kill left it):
//!
//! * every record's canonical form, sequence, chain link and hash column;
//! * every hash of the persisted Merkle tree, against the records;
//! * every signed checkpoint in the store, and the one kept outside it,
//!   signed by the key in force at its size (every rotation's two
//!   signatures checked on the way) and with the root of the records;
//! * the stored fold (proposal views, what was spent, the proposals counted
//!   by state and tier) against folding the records again.
//!
//! It only reads: a kill at any point loses nothing.

use std::collections::BTreeSet;
use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};
use edge_core::evidence::Event;
use edge_core::note::{self, Checkpoint, NoteVerifier};
use edge_core::rotation::KeyHistory;
use rusqlite::Connection;

use crate::store::fold;
use crate::store::index::LogIndex;
use crate::store::tree;

/// What a full check covered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checked {
    pub records: u64,
    pub checkpoints: u64,
    pub proposals: u64,
}

/// The full check could not be made (its scratch space beside the store
/// could not be created or written): this says nothing about the store,
/// and is not a verification failure.
#[derive(Debug, thiserror::Error)]
#[error(
    "the full check could not run ({0:#}); the store was not found wrong: free space beside the store and run it again"
)]
pub struct CouldNotCheck(anyhow::Error);

/// The store is at schema version 1, without the persisted Merkle tree the
/// checks read: this release builds it the first time it opens the store
/// for writing (a check only reads). Not a verdict on the store. (Versions
/// 2 and 3 are checked as they are.)
#[derive(Debug, thiserror::Error)]
#[error(
    "the store is at schema version {0}, which has no persisted Merkle tree yet: this release adds it (reading and \
     verifying every record once) the first time it opens the store. Start the runner once (`edge-runner serve`, or \
     an `exec`), then check again; nothing was found wrong"
)]
pub struct NotMigrated(u32);

/// The full check was stopped before it finished (the runner is stopping):
/// nothing was found wrong, and nothing was found sound either.
#[derive(Debug, thiserror::Error)]
#[error("the full check was stopped before it finished (the runner is stopping); it runs again at the next start")]
pub struct Stopped;

/// Records between two progress reports.
const REPORT_EVERY: u64 = 16_384;

/// Check the store in `dir` in full (see the module docs). `identity`: the
/// runner's key, for a log that names none yet; `progress(done, total)`
/// is called as records are checked. Once `stop` is set the check ends,
/// with [`Stopped`], and lets go of the snapshot it reads (which a clean
/// close of the store waits for).
///
/// # Errors
/// The first thing that does not hold, naming the record, checkpoint or
/// row, and what to do; [`Stopped`] when stopped.
pub fn full(
    dir: &Path,
    scratch: Option<&Path>,
    origin: &str,
    identity: &NoteVerifier,
    progress: &mut dyn FnMut(u64, u64),
    stop: &std::sync::atomic::AtomicBool,
) -> Result<Checked> {
    let stopped = || stop.load(std::sync::atomic::Ordering::Acquire);
    // Before the snapshot: a runner serving meanwhile keeps newer ones.
    let kept_note = crate::store::trust::read_kept(dir)?;
    let (db, records) = snapshot(dir)?;
    let stored_fold = fold::stored(&db)?.map(|(n, _)| n);
    let mut checkpoints = db.prepare("SELECT size, note FROM checkpoints ORDER BY size")?;
    let mut checkpoints = checkpoints.query([])?;
    let mut next_checkpoint = next_row(&mut checkpoints)?;
    let fold = ScratchFold::new(dir, scratch).map_err(CouldNotCheck)?;
    let (mut history, mut fold, mut checked) = (KeyHistory::default(), fold, 0u64);
    let mut failed: Option<anyhow::Error> = None;
    let mut compared = false;
    let result = tree::verify_records(&db, 0, records, true, |r, _| {
        // A failure already found is reported, stopped or not.
        if stopped() {
            return Err(failed.take().unwrap_or_else(|| Stopped.into()));
        }
        if failed.is_some() {
            return Ok(());
        }
        let seq = r.seq;
        if matches!(r.event, Event::KeyEvent { .. } | Event::KeyRotation { .. })
            && let Err(e) = history.push(origin, &r)
        {
            failed = Some(anyhow!("record {seq} ({}): {e}", e.reason_code()));
            return Ok(());
        }
        if let Err(e) = fold.push(&r) {
            failed = Some(CouldNotCheck(e).into());
            return Ok(());
        }
        if stored_fold == Some(seq + 1) {
            compared = true;
            if let Err(e) =
                fold.keep().map_err(|e| CouldNotCheck(e).into()).and_then(|()| compare_fold(&db, &fold.db, &stopped))
            {
                failed = Some(e);
                return Ok(());
            }
        }
        if (seq + 1).is_multiple_of(REPORT_EVERY) {
            progress(seq + 1, records);
        }
        Ok(())
    });
    // The signed checkpoints need the tree's roots: checked from the
    // stored tree once every hash of it was (above).
    let tail = result?;
    if let Some(e) = failed {
        return Err(e);
    }
    progress(records, records);
    let stored = tree::StoredTree::new(&db, records);
    let key_at = |size: u64| {
        history
            .key_at(size)
            .map_or_else(|| Ok(identity.clone()), |k| NoteVerifier::parse(k).map_err(|e| anyhow!("{e}")))
    };
    // `stored_as`: the size of the row holding it (the file has none).
    let check = |stored_as: Option<u64>, signed: &str, what: &str| -> Result<()> {
        let size = stored_as
            .or_else(|| crate::store::trust::claimed_size(signed))
            .with_context(|| format!("{what} is not a checkpoint"))?;
        let verifier = key_at(size)?;
        let opened = note::open(signed, std::slice::from_ref(&verifier))
            .map_err(|e| anyhow!("{what} is not signed by the key in force at tree size {size}: {e}"))?;
        let cp = Checkpoint::parse(&opened.text).with_context(|| format!("{what} is not a checkpoint"))?;
        if cp.size != size {
            bail!("{what} claims tree size {} but is stored as {size}", cp.size);
        }
        if cp.size > records {
            bail!("{what} covers {} records; the store holds {records}: records are missing", cp.size);
        }
        let root = edge_core::merkle::root_of(&stored, cp.size).map_err(|e| anyhow!("{e}"))?;
        if root != cp.root {
            bail!("{what} (tree size {}) is not the root of the store's records: the log was rewritten", cp.size);
        }
        Ok(())
    };
    while let Some((size, signed)) = next_checkpoint {
        if stopped() {
            return Err(Stopped.into());
        }
        check(Some(size), &signed, &format!("the checkpoint of {size} records"))?;
        checked += 1;
        next_checkpoint = next_row(&mut checkpoints)?;
    }
    if let Some(signed) = &kept_note {
        let kept = dir.join(crate::store::trust::LATEST_CHECKPOINT_FILE);
        check(None, signed, &format!("the checkpoint kept in {}", kept.display()))?;
    }
    if !compared && stored_fold.is_some_and(|n| n > 0) {
        bail!("the stored fold covers {} records; the store holds {records}", stored_fold.unwrap_or(0));
    }
    drop(tail);
    Ok(Checked { records, checkpoints: checked, proposals: fold.proposals().map_err(CouldNotCheck)? })
}

/// The fold of the records made again as the runner's writer keeps it: in
/// memory only what is in flight, every `KEEP_EVERY` records the rest
/// stored (`crate::store::fold`) in a scratch database of its own, from
/// where a proposal is loaded again when a record names it.
struct ScratchFold {
    db: Connection,
    index: LogIndex,
    /// Holds the scratch database; removed (with it) when dropped — before
    /// the lock is let go (fields drop in order).
    _dir: tempfile::TempDir,
    /// Held while the check runs: another check does not remove it.
    _lock: std::fs::File,
}

/// Remove the scratch directories of checks that were killed: those whose
/// lock no process holds. A lock file is put in place already locked
/// ([`ScratchFold::new`]), so one that is free was let go by its check's
/// end, however recent; a directory without one yet is being created (or
/// its check was killed before it), and is left alone for a minute.
fn remove_stale_scratch(store: &Path) {
    let Ok(entries) = std::fs::read_dir(store) else { return };
    for e in entries.flatten() {
        if !e.file_name().to_string_lossy().starts_with(SCRATCH_PREFIX) || !e.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let old =
            || e.metadata().and_then(|m| m.modified()).is_ok_and(|t| t.elapsed().unwrap_or_default() > STALE_AFTER);
        let stale = match std::fs::File::open(e.path().join("lock")) {
            Ok(lock) => lock.try_lock().is_ok(),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => old(),
            // Unreadable: not known to be free, so left alone.
            Err(_) => false,
        };
        if stale && let Err(err) = std::fs::remove_dir_all(e.path()) {
            tracing::warn!(dir = %e.path().display(), error = %err, "cannot remove a killed full check's scratch directory");
        }
    }
}

/// Records folded between two stores of the scratch fold.
const KEEP_EVERY: u64 = 4096;

/// What a scratch directory's name starts with.
const SCRATCH_PREFIX: &str = "check-scratch-";
/// How old a scratch directory must be before another check may remove it.
const STALE_AFTER: std::time::Duration = std::time::Duration::from_secs(60);

impl ScratchFold {
    /// A scratch database in a directory of its own beside the store in
    /// `store` (the operator's state disk, not a RAM-backed `/tmp`), locked
    /// while the check runs; what a killed check left there is removed.
    /// In `chosen` if given (`evidence check --scratch`), else beside the
    /// store — or, for a store the checking account may only read (an
    /// auditor's copy), under `$TMPDIR`.
    fn new(store: &Path, chosen: Option<&Path>) -> Result<Self> {
        let dir = match chosen {
            Some(d) => {
                remove_stale_scratch(d);
                tempfile::Builder::new().prefix(SCRATCH_PREFIX).tempdir_in(d).with_context(|| {
                    format!("cannot create the full check's scratch directory in {} (--scratch)", d.display())
                })?
            }
            None => {
                remove_stale_scratch(store);
                tempfile::Builder::new()
                    .prefix(SCRATCH_PREFIX)
                    .tempdir_in(store)
                    .or_else(|_| tempfile::Builder::new().prefix(&format!("edge-runner-{SCRATCH_PREFIX}")).tempdir())
                    .with_context(|| {
                        format!("cannot create the full check's scratch directory in {} or $TMPDIR", store.display())
                    })?
            }
        };
        // Locked before it takes its name: another check that finds `lock`
        // free knows this one has ended (`remove_stale_scratch`).
        let lock = std::fs::File::create(dir.path().join("lock.new"))?;
        lock.lock().context("cannot lock the full check's scratch directory")?;
        std::fs::rename(dir.path().join("lock.new"), dir.path().join("lock"))?;
        let db = Connection::open(dir.path().join("fold.db"))?;
        // Scratch: nothing in it needs to survive a crash.
        db.execute_batch("PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF;")?;
        db.execute_batch(fold::CREATE)?;
        Ok(Self { db, index: LogIndex::default(), _dir: dir, _lock: lock })
    }

    fn push(&mut self, r: &edge_core::evidence::Record) -> Result<()> {
        self.index.push_from(&self.db, r).context("the full check's scratch fold")?;
        if (r.seq + 1).is_multiple_of(KEEP_EVERY) {
            self.keep()?;
        }
        Ok(())
    }

    /// Store what changed since the last time; memory lets go of it.
    fn keep(&mut self) -> Result<()> {
        self.index.keep_in(&self.db)
    }

    /// Proposals the records make.
    fn proposals(&mut self) -> Result<u64> {
        self.keep()?;
        Ok(self.db.query_row("SELECT count(*) FROM proposals", [], |r| r.get::<_, i64>(0))? as u64)
    }
}

/// A read-only connection in one read transaction (a consistent snapshot
/// while the runner appends), and the records in it (as many as leaves in
/// the persisted tree).
fn snapshot(dir: &Path) -> Result<(Connection, u64)> {
    crate::store::schema::refuse_newer(&dir.join("evidence.db"))?;
    let db = crate::store::log::read_only(dir)?;
    if let crate::store::schema::Found::At(version @ ..2) = crate::store::schema::found(&db)? {
        return Err(NotMigrated(version).into());
    }
    db.execute_batch("BEGIN")?;
    let (records, leaves) = tree::sizes(&db)?;
    if records != leaves {
        bail!("the store holds {records} records but its persisted Merkle tree {leaves} leaves");
    }
    Ok((db, records))
}

fn next_row(rows: &mut rusqlite::Rows<'_>) -> Result<Option<(u64, String)>> {
    Ok(match rows.next()? {
        Some(r) => Some((r.get::<_, i64>(0)? as u64, r.get(1)?)),
        None => None,
    })
}

/// The check a start makes, without opening the store for writing: the
/// records since the last checkpoint the runner signed, against the
/// persisted tree, and the signed checkpoints against the tree (every key
/// rotation checked). Returns the number of records and the Merkle root
/// of them all, read in the same snapshot (what a record read afterwards
/// is proved against).
///
/// # Errors
/// As a start would refuse.
pub fn quick(dir: &Path, origin: &str, identity: &NoteVerifier) -> Result<(u64, edge_core::merkle::Hash)> {
    let kept = crate::store::trust::read_kept(dir)?;
    let (db, records) = snapshot(dir)?;
    let from = crate::store::trust::signed_size(&db, dir)?.min(records);
    tree::verify_records(&db, from, records, true, |_, _| Ok(()))?;
    let mut stmt =
        db.prepare(&format!("SELECT body FROM records WHERE {} ORDER BY seq", crate::store::schema::KEY_RECORDS))?;
    let key_records = stmt
        .query_map([], |r| r.get::<_, String>(0))?
        .map(|b| Ok(serde_json::from_str(&b?)?))
        .collect::<Result<Vec<edge_core::evidence::Record>>>()?;
    let history = crate::store::trust::key_history_of(&key_records, origin)?;
    let stored = tree::StoredTree::new(&db, records);
    crate::store::trust::check_signed_history_in(dir, &db, kept, &stored, &history, identity)?;
    let root = edge_core::merkle::root_of(&stored, records).map_err(|e| anyhow!("the stored Merkle tree: {e}"))?;
    Ok((records, root))
}

/// The stored fold is what folding the records gives (`made`: the scratch
/// fold, stored up to the same record). Both read row by row in key
/// order, side by side.
fn compare_fold(db: &Connection, made: &Connection, stopped: &dyn Fn() -> bool) -> Result<()> {
    let differs = |what: String| {
        anyhow!(
            "the stored fold of the log differs from its records: {what}. The records are intact; stop the runner \
             and delete the fold so the next start rebuilds it: sqlite3 evidence.db 'DELETE FROM fold'"
        )
    };
    let line = edge_core::text::line;
    let sql = "SELECT id, view FROM proposals ORDER BY id";
    let (mut stored, mut folded) = (db.prepare(sql)?, made.prepare(sql)?);
    let (mut stored, mut folded) = (stored.query([])?, folded.query([])?);
    let next = |rows: &mut rusqlite::Rows<'_>| -> Result<Option<(String, String)>> {
        Ok(match rows.next()? {
            Some(row) => Some((row.get(0)?, row.get(1)?)),
            None => None,
        })
    };
    let (mut a, mut b) = (next(&mut stored)?, next(&mut folded)?);
    for row in 0u64.. {
        // A store's whole list of proposals: a stop need not wait for it.
        if row.is_multiple_of(4096) && stopped() {
            return Err(Stopped.into());
        }
        match (&a, &b) {
            (None, None) => break,
            (Some((id, _)), None) => {
                return Err(differs(format!("proposal {} is stored but not in the records", line(id))));
            }
            (None, Some((id, _))) => return Err(differs(format!("proposal {} is not stored", line(id)))),
            (Some((x, _)), Some((y, _))) if x < y => {
                return Err(differs(format!("proposal {} is stored but not in the records", line(x))));
            }
            (Some((x, _)), Some((y, _))) if x > y => {
                return Err(differs(format!("proposal {} is not stored", line(y))));
            }
            (Some((id, have)), Some((_, want))) => {
                // The same text, or the same value written another way.
                if have != want
                    && serde_json::from_str::<serde_json::Value>(have)?
                        != serde_json::from_str::<serde_json::Value>(want)?
                {
                    return Err(differs(format!("proposal {} is stored with another view", line(id))));
                }
                (a, b) = (next(&mut stored)?, next(&mut folded)?);
            }
        }
    }
    let spent = |c: &Connection| -> Result<BTreeSet<(String, String, i64)>> {
        // What was spent is few (approvals' nonces): held as a set.
        let mut stmt = c.prepare("SELECT kind, key, seq FROM spent")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    };
    let (have, want) = (spent(db)?, spent(made)?);
    if let Some((kind, key, seq)) = have.difference(&want).next() {
        return Err(differs(format!(
            "`{}` {} spent at record {seq} is not what the records say",
            line(kind),
            line(key)
        )));
    }
    let missing = want.difference(&have).count();
    if missing > 0 {
        return Err(differs(format!("{missing} entries of what was spent are missing")));
    }
    // The counts its triggers keep (for /metrics), against the fold's own;
    // a store of schema version 3 or older, not yet opened by this release
    // (which migrates it), has none yet.
    let has_counts: bool = db.query_row(
        "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = 'proposal_counts'",
        [],
        |r| r.get(0),
    )?;
    if !has_counts {
        return Ok(());
    }
    let negative: i64 = db.query_row("SELECT count(*) FROM proposal_counts WHERE n < 0", [], |r| r.get(0))?;
    let (have, want) = (crate::store::fold::counts(db)?, crate::store::fold::counts(made)?);
    if have != want || negative > 0 {
        // A handful of rows each, unless the table was written to: the
        // message shows the first few.
        let shown = |counts: &[(String, Option<u8>, u64)]| {
            let each = counts.iter().take(6).map(|(state, tier, n)| {
                format!("{}/{}: {n}", line(state), tier.map_or_else(|| "none".to_owned(), |t| t.to_string()))
            });
            let more = if counts.len() > 6 { format!(", … {} more", counts.len() - 6) } else { String::new() };
            format!("{}{more}", each.collect::<Vec<_>>().join(", "))
        };
        return Err(differs(format!(
            "the proposals counted by state and tier ({}{}) are not the records' ({})",
            shown(&have),
            if negative > 0 { format!("; {negative} below zero") } else { String::new() },
            shown(&want)
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fold_db(proposals: &[(&str, &str)], spent: &[(&str, &str, i64)]) -> Connection {
        let db = Connection::open_in_memory().unwrap();
        db.execute_batch(fold::CREATE).unwrap();
        for (id, view) in proposals {
            db.execute(
                "INSERT INTO proposals (id, seq, state, tier, at, view) VALUES (?1, 0, 'committed', 0, 0, ?2)",
                [id, view],
            )
            .unwrap();
        }
        for (kind, key, seq) in spent {
            db.execute("INSERT INTO spent (kind, key, seq) VALUES (?1, ?2, ?3)", rusqlite::params![kind, key, seq])
                .unwrap();
        }
        db
    }

    fn compared(stored: &Connection, made: &Connection) -> String {
        compare_fold(stored, made, &|| false).map_or_else(|e| e.to_string(), |()| "same".into())
    }

    #[test]
    fn the_stored_fold_is_compared_row_by_row_with_the_one_made_again() {
        let made = fold_db(&[("p-1", r#"{"a":1,"b":2}"#), ("p-2", r#"{"a":3}"#)], &[("nonce", "n1", 7)]);
        // The same rows (a view written with its keys in another order is the same view).
        let same = fold_db(&[("p-1", r#"{"b":2,"a":1}"#), ("p-2", r#"{"a":3}"#)], &[("nonce", "n1", 7)]);
        assert_eq!(compared(&same, &made), "same");
        // Stopped (the runner stopping): no verdict.
        assert!(compare_fold(&same, &made, &|| true).unwrap_err().is::<Stopped>());
        for (stored, why) in [
            (
                fold_db(&[("p-1", r#"{"a":1,"b":2}"#), ("p-2", r#"{"a":4}"#)], &[("nonce", "n1", 7)]),
                "p-2 is stored with another view",
            ),
            (fold_db(&[("p-1", r#"{"a":1,"b":2}"#)], &[("nonce", "n1", 7)]), "p-2 is not stored"),
            (fold_db(&[("p-2", r#"{"a":3}"#)], &[("nonce", "n1", 7)]), "p-1 is not stored"),
            (
                fold_db(&[("p-0", "{}"), ("p-1", r#"{"a":1,"b":2}"#), ("p-2", r#"{"a":3}"#)], &[("nonce", "n1", 7)]),
                "p-0 is stored but not in the records",
            ),
            (
                fold_db(&[("p-1", r#"{"a":1,"b":2}"#), ("p-2", r#"{"a":3}"#), ("p-3", "{}")], &[("nonce", "n1", 7)]),
                "p-3 is stored but not in the records",
            ),
            (
                fold_db(&[("p-1", r#"{"a":1,"b":2}"#), ("p-2", r#"{"a":3}"#)], &[("nonce", "n1", 8)]),
                "n1 spent at record 8",
            ),
            (
                fold_db(&[("p-1", r#"{"a":1,"b":2}"#), ("p-2", r#"{"a":3}"#)], &[]),
                "1 entries of what was spent are missing",
            ),
            (
                {
                    let db = fold_db(&[("p-1", r#"{"b":2,"a":1}"#), ("p-2", r#"{"a":3}"#)], &[("nonce", "n1", 7)]);
                    db.execute("UPDATE proposal_counts SET n = 5", []).unwrap();
                    db
                },
                "the proposals counted by state and tier (committed/0: 5) are not the records' (committed/0: 2)",
            ),
        ] {
            let said = compared(&stored, &made);
            assert!(said.contains(why) && said.contains("stored fold of the log differs"), "{why}: {said}");
        }
    }
}

#[cfg(test)]
mod bounded {
    use super::*;

    #[test]
    fn a_killed_checks_scratch_is_removed_and_a_running_ones_kept() {
        let store = tempfile::tempdir().unwrap();
        let killed = store.path().join(format!("{SCRATCH_PREFIX}killed"));
        std::fs::create_dir(&killed).unwrap();
        std::fs::write(killed.join("lock"), b"").unwrap();
        std::fs::write(killed.join("fold.db"), b"left by a kill").unwrap();
        let young = store.path().join(format!("{SCRATCH_PREFIX}being-made"));
        std::fs::create_dir(&young).unwrap();
        let past = std::time::SystemTime::now() - STALE_AFTER * 2;
        std::fs::File::open(&killed).unwrap().set_modified(past).unwrap();
        // Killed a moment ago: its lock is free, so it goes too, young as it is.
        let just_killed = store.path().join(format!("{SCRATCH_PREFIX}just-killed"));
        std::fs::create_dir(&just_killed).unwrap();
        std::fs::write(just_killed.join("lock"), b"").unwrap();
        let running = ScratchFold::new(store.path(), None).unwrap();
        let running_dir = running._dir.path().to_path_buf();
        assert!(!killed.exists(), "a scratch directory no check holds is removed");
        assert!(!just_killed.exists(), "a scratch directory no check holds is removed, however young");
        assert!(young.exists(), "one just made (its lock not yet taken) is left alone");
        assert!(running_dir.join("lock").exists() && !running_dir.join("lock.new").exists());
        std::fs::remove_dir(&young).unwrap();
        // A second check meanwhile leaves the running one's scratch alone,
        // however long it has run: its lock is held.
        std::fs::File::open(&running_dir).unwrap().set_modified(past).unwrap();
        let second = ScratchFold::new(store.path(), None).unwrap();
        assert!(running_dir.join("fold.db").exists());
        drop((running, second));
        let left: Vec<_> = std::fs::read_dir(store.path()).unwrap().collect();
        assert!(left.is_empty(), "{left:?}");
    }

    #[test]
    fn the_scratch_fold_holds_only_the_work_in_flight() {
        let runs = 3 * KEEP_EVERY as usize / 10; // ~10 records a run
        let log = edge_evidence::synth::full_bundle("runner.test", runs);
        let bundle = edge_evidence::bundle::parse(&log.bundle).unwrap();
        let store = tempfile::tempdir().unwrap();
        let mut fold = ScratchFold::new(store.path(), None).unwrap();
        let mut most = 0;
        for line in &bundle.records {
            let r: edge_core::evidence::Record = serde_json::from_str(line).unwrap();
            fold.push(&r).unwrap();
            most = most.max(fold.index.proposals.in_memory());
        }
        // Every proposal is in the scratch database; memory never held more
        // than what changed between two stores of it.
        assert_eq!(fold.proposals().unwrap(), runs as u64);
        assert!(most <= KEEP_EVERY as usize / 5, "{most} proposals in memory at once");
        assert!(fold.index.proposals.in_memory() < 10, "{}", fold.index.proposals.in_memory());
    }
}

#[cfg(test)]
mod stopping {
    use std::sync::atomic::AtomicBool;

    use super::*;
    use crate::store::log::EvidenceLog;

    /// A runner stopping while its background check runs: the check ends
    /// with [`Stopped`] (not a verdict on the store) and lets go of its
    /// snapshot, so the close can fold the whole WAL into the database.
    #[test]
    fn a_stopped_full_check_is_no_verdict_and_lets_go_of_its_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let signer =
            edge_core::note::NoteSigner::new("runner.test", ed25519_dalek::SigningKey::from_bytes(&[7; 32])).unwrap();
        let log = EvidenceLog::open(dir.path()).unwrap();
        for i in 0..50 {
            let event =
                Event::Refused { stage: "test".into(), reason_code: "test.synthetic".into(), detail: i.to_string() };
            log.append("r-a", event).unwrap();
        }
        let check = |stop: &AtomicBool| full(dir.path(), None, "runner.test", signer.verifier(), &mut |_, _| {}, stop);
        assert_eq!(check(&AtomicBool::new(false)).unwrap().records, 50);
        let e = check(&AtomicBool::new(true)).unwrap_err();
        assert!(e.is::<Stopped>(), "{e:#}");
        assert!(!e.is::<CouldNotCheck>(), "{e:#}");
        // Nothing holds a snapshot any more: the fold takes every frame.
        let db = Connection::open(dir.path().join("evidence.db")).unwrap();
        // (The log's own checkpointer may hold the checkpoint a moment.)
        let mut busy = 1;
        for _ in 0..100 {
            busy = db.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get::<_, i64>(0)).unwrap();
            if busy == 0 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert_eq!(busy, 0, "the WAL could not be folded");
        assert_eq!(std::fs::metadata(dir.path().join("evidence.db-wal")).unwrap().len(), 0);
    }
}
