//! Which run each message delivery becomes, kept durably *before* the run
//! starts, so that a message delivered again (its ack lost to a crash or a
//! broken connection) is recognised and answered from the log instead of
//! run twice.
//!
//! `state_dir/intake.db` (SQLite, WAL, `synchronous=FULL`), one table:
//! `(source, id) → run`. The source names the message stream *and its
//! creation time*: a stream deleted and made again restarts its sequence
//! numbers, which must never be taken for the old stream's messages. Rows
//! whose messages the server will not deliver again (at or below the
//! consumer's acknowledged floor) are pruned.

use std::path::Path;
use std::sync::Mutex;

use anyhow::{Context, Result};
use rusqlite::{Connection, OptionalExtension as _, params};

/// The durable delivery → run map.
#[derive(Debug)]
pub struct Deliveries {
    db: Mutex<Connection>,
}

impl Deliveries {
    /// Open (or make) `dir/intake.db`.
    ///
    /// # Errors
    /// If the database cannot be opened or made.
    pub fn open(dir: &Path) -> Result<Self> {
        let path = dir.join("intake.db");
        let db = Connection::open(&path).with_context(|| format!("cannot open {}", path.display()))?;
        db.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = FULL;
             CREATE TABLE IF NOT EXISTS deliveries (
                 source TEXT NOT NULL,
                 id INTEGER NOT NULL,
                 run TEXT NOT NULL,
                 PRIMARY KEY (source, id)
             ) WITHOUT ROWID;",
        )
        .with_context(|| format!("cannot prepare {}", path.display()))?;
        Ok(Self { db: Mutex::new(db) })
    }

    /// The run of delivery `(source, id)`: the one kept earlier, or a new
    /// run id, kept durably before this returns.
    ///
    /// # Errors
    /// If the database cannot be read or written.
    pub fn run_for(&self, source: &str, id: u64) -> Result<(String, bool)> {
        let db = self.db.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let id = i64::try_from(id).context("delivery id out of range")?;
        let kept: Option<String> = db
            .query_row("SELECT run FROM deliveries WHERE source = ?1 AND id = ?2", params![source, id], |r| r.get(0))
            .optional()?;
        if let Some(run) = kept {
            return Ok((run, true));
        }
        let run = crate::pipeline::new_run_id();
        db.execute("INSERT INTO deliveries (source, id, run) VALUES (?1, ?2, ?3)", params![source, id, run])?;
        Ok((run, false))
    }

    /// Forget deliveries of `source` at or below `floor` (never delivered
    /// again), and every other source's (a stream that no longer exists).
    ///
    /// # Errors
    /// If the database cannot be written.
    pub fn prune(&self, source: &str, floor: u64) -> Result<usize> {
        let db = self.db.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let floor = i64::try_from(floor).unwrap_or(i64::MAX);
        Ok(db.execute("DELETE FROM deliveries WHERE source <> ?1 OR id <= ?2", params![source, floor])?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_delivery_keeps_its_run_across_a_reopen_and_a_new_stream_starts_afresh() {
        let dir = tempfile::tempdir().unwrap();
        let d = Deliveries::open(dir.path()).unwrap();
        let (run, again) = d.run_for("in@1", 7).unwrap();
        assert!(!again && crate::pipeline::is_run_id(&run));
        assert_eq!(d.run_for("in@1", 7).unwrap(), (run.clone(), true));
        drop(d);
        let d = Deliveries::open(dir.path()).unwrap();
        assert_eq!(d.run_for("in@1", 7).unwrap(), (run.clone(), true));
        // The same sequence number of a stream made again is another message.
        let (other, again) = d.run_for("in@2", 7).unwrap();
        assert!(!again && other != run);
        assert_eq!(d.prune("in@2", 7).unwrap(), 2);
        assert!(!d.run_for("in@2", 7).unwrap().1);
    }
}
