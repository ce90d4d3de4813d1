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
//! the runner keeps appending meanwhile), constant memory but for the
//! fold's proposals:
//!
//! * every record's canonical form, sequence, chain link and hash column;
//! * every hash of the persisted Merkle tree, against the records;
//! * every signed checkpoint in the store, and the one kept outside it,
//!   signed by the key in force at its size (every rotation's two
//!   signatures checked on the way) and with the root of the records;
//! * the stored fold (proposal views, what was spent) against folding the
//!   records again.
//!
//! It only reads: a kill at any point loses nothing.

use std::collections::BTreeMap;
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

/// Records between two progress reports.
const REPORT_EVERY: u64 = 16_384;

/// Check the store in `dir` in full (see the module docs). `identity`: the
/// runner's key, for a log that names none yet; `progress(done, total)`
/// is called as records are checked.
///
/// # Errors
/// The first thing that does not hold, naming the record, checkpoint or
/// row, and what to do.
pub fn full(dir: &Path, origin: &str, identity: &NoteVerifier, progress: &mut dyn FnMut(u64, u64)) -> Result<Checked> {
    // Before the snapshot: a runner serving meanwhile keeps newer ones.
    let kept_note = crate::store::trust::read_kept(dir)?;
    let (db, records) = snapshot(dir)?;
    let stored_fold = fold::stored(&db)?.map(|(n, _)| n);
    let mut checkpoints = db.prepare("SELECT size, note FROM checkpoints ORDER BY size")?;
    let mut checkpoints = checkpoints.query([])?;
    let mut next_checkpoint = next_row(&mut checkpoints)?;
    let (mut history, mut fold, mut checked) = (KeyHistory::default(), LogIndex::in_memory(), 0u64);
    let mut failed: Option<anyhow::Error> = None;
    let mut compared = false;
    let result = tree::verify_records(&db, 0, records, true, |r, _| {
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
        fold.push(&r);
        if stored_fold == Some(seq + 1) {
            compared = true;
            if let Err(e) = compare_fold(&db, &fold) {
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
    Ok(Checked { records, checkpoints: checked, proposals: fold.proposals.iter().count() as u64 })
}

/// A read-only connection in one read transaction (a consistent snapshot
/// while the runner appends), and the records in it (as many as leaves in
/// the persisted tree).
fn snapshot(dir: &Path) -> Result<(Connection, u64)> {
    crate::store::schema::refuse_newer(&dir.join("evidence.db"))?;
    let db = crate::store::log::read_only(dir)?;
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
/// rotation checked). Returns the number of records.
///
/// # Errors
/// As a start would refuse.
pub fn quick(dir: &Path, origin: &str, identity: &NoteVerifier) -> Result<u64> {
    let kept = crate::store::trust::read_kept(dir)?;
    let (db, records) = snapshot(dir)?;
    let from = crate::store::trust::signed_size(&db, dir)?.min(records);
    tree::verify_records(&db, from, records, true, |_, _| Ok(()))?;
    let mut stmt = db.prepare("SELECT body FROM records WHERE type IN ('key-event', 'key-rotation') ORDER BY seq")?;
    let key_records = stmt
        .query_map([], |r| r.get::<_, String>(0))?
        .map(|b| Ok(serde_json::from_str(&b?)?))
        .collect::<Result<Vec<edge_core::evidence::Record>>>()?;
    let history = crate::store::trust::key_history_of(&key_records, origin)?;
    let stored = tree::StoredTree::new(&db, records);
    crate::store::trust::check_signed_history_in(dir, &db, kept, &stored, &history, identity)?;
    Ok(records)
}

/// The stored fold is what folding the records gives.
fn compare_fold(db: &Connection, fold: &LogIndex) -> Result<()> {
    let differs = |what: String| {
        anyhow!(
            "the stored fold of the log differs from its records: {what}. The records are intact; stop the runner \
             and delete the fold so the next start rebuilds it: sqlite3 evidence.db 'DELETE FROM fold'"
        )
    };
    // Row by row (the stored views are not all held at once).
    let mut stmt = db.prepare("SELECT id, view FROM proposals")?;
    let mut rows = stmt.query([])?;
    let mut matched = 0usize;
    while let Some(row) = rows.next()? {
        let id = row.get_ref(0)?.as_str()?;
        let Some(v) = fold.proposals.get(id) else {
            return Err(differs(format!("proposal {} is stored but not in the records", edge_core::text::line(id))));
        };
        let have: serde_json::Value = serde_json::from_str(row.get_ref(1)?.as_str()?)?;
        if have != serde_json::to_value(v)? {
            return Err(differs(format!("proposal {} is stored with another view", v.id)));
        }
        matched += 1;
    }
    if matched != fold.proposals.iter().count() {
        let mut exists = db.prepare("SELECT 1 FROM proposals WHERE id = ?1")?;
        for v in fold.proposals.iter() {
            if !exists.exists([&v.id])? {
                return Err(differs(format!("proposal {} is not stored", v.id)));
            }
        }
    }
    let mut want: BTreeMap<(&str, &str), u64> = BTreeMap::new();
    for kind in fold::Spent::ALL {
        want.extend(kind.of(&fold.settlements).iter().map(|(k, seq)| ((kind.name(), k.as_str()), *seq)));
    }
    let mut stmt = db.prepare("SELECT kind, key, seq FROM spent")?;
    let mut rows = stmt.query([])?;
    let mut have = 0usize;
    while let Some(row) = rows.next()? {
        let (kind, key, seq): (String, String, i64) = (row.get(0)?, row.get(1)?, row.get(2)?);
        have += 1;
        if want.get(&(kind.as_str(), key.as_str())) != Some(&(seq as u64)) {
            return Err(differs(format!(
                "`{}` {} spent at record {seq} is not what the records say",
                edge_core::text::line(&kind),
                edge_core::text::line(&key)
            )));
        }
    }
    if have != want.len() {
        return Err(differs(format!("{} entries of what was spent are missing", want.len() - have)));
    }
    Ok(())
}
