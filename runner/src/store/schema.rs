//! The evidence store's schema version, checked at every open.
//!
//! SQLite's `PRAGMA user_version` (four bytes at offset 60 of the database
//! header, readable with `sqlite3 evidence.db 'PRAGMA user_version'`) holds
//! the version of the schema a store was written with:
//!
//! | version | what |
//! | --- | --- |
//! | 0 | a new, empty file; or a store made before versions were stamped (releases up to and including the one that introduced this module), whose tables are exactly version 1: it is stamped 1 at its next open |
//! | 1 | `records`, `artifacts`, `checkpoints` and the append-only triggers ([`CREATE_V1`]; `docs/evidence.md#store`) |
//! | 2 | adds `tree`, the Merkle tree's subtree hashes, append-only, and the index `records_by_type` (`crate::store::tree`); and the fold of the log, derived from the records (`proposals`, `spent`, `counters`, `fold`: `crate::store::fold`): opening the store no longer reads every record |
//! | 3 | replaces `records_by_type` (every record) with `records_key_events`, a partial index of the key records only ([`KEY_RECORDS`]): appending other records no longer writes an index page per event type |
//! | 4 | adds `proposal_counts`, the proposals by state and tier, kept by triggers on `proposals` (`crate::store::fold`): `/metrics` no longer counts every proposal |
//!
//! At open ([`refuse_newer`], then [`prepare`]):
//!
//! 1. The version is read before anything opens the file for writing
//!    (from the header's bytes, or on a read-only connection when the WAL
//!    holds frames): a store written by a newer runner (a version above
//!    [`SCHEMA_VERSION`]) is refused without a byte of it changed and no
//!    file created beside it, naming both versions and what to do next (run
//!    the newer binary again, or restore the backup taken before the
//!    upgrade).
//! 2. A new store is created at [`SCHEMA_VERSION`].
//! 3. An older store is brought forward one [`Migration`] at a time; each
//!    step runs in its own transaction together with its version bump, so a
//!    store is always at exactly one known version, whatever the moment of a
//!    crash.
//!
//! **The next release that changes the schema** bumps [`SCHEMA_VERSION`],
//! changes `create` (the tables of a new store), appends one [`Migration`] to
//! [`MIGRATIONS`] taking a store at the previous version to the new one, and
//! commits a store made by the previous release as a fixture beside
//! `tests/data/store-v1/` (which every later runner must keep opening). A
//! migration may add tables, indexes and columns; it must never change or
//! remove a record, artifact or checkpoint (the bodies are signed history),
//! and the append-only triggers stay in force while it runs.

use std::path::Path;

use anyhow::{Context, Result, bail};
use rusqlite::{Connection, OpenFlags};

/// The schema this runner writes, and the newest it understands.
pub const SCHEMA_VERSION: u32 = 4;

/// The records a start reads by type: the key records, few in any log.
/// The query that reads them and the index that finds them use this same
/// text (SQLite uses a partial index when the query's condition is the
/// index's).
pub const KEY_RECORDS: &str = "type IN ('key-event', 'key-rotation')";

/// The index of the key records (version 3): only their rows are in it, so
/// appending any other record leaves it untouched.
fn key_records_index() -> String {
    format!("CREATE INDEX IF NOT EXISTS records_key_events ON records (type) WHERE {KEY_RECORDS};")
}

/// One step forward: takes a store at version `to - 1` to version `to`.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// The version this step produces.
    pub to: u32,
    /// What it changes, for the operator's log.
    pub what: &'static str,
    /// The change itself, inside the step's transaction.
    pub apply: fn(&Connection) -> rusqlite::Result<()>,
}

/// Every step from version 1 on, in order (`MIGRATIONS[i].to == i + 2`).
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        to: 2,
        what: "the Merkle tree's subtree hashes beside the records (built from every record, each verified), and the \
               tables of the fold (filled at the next open)",
        apply: to_2,
    },
    Migration {
        to: 3,
        what: "the index of records by type replaced by one of the key records only (every append wrote to the old \
               one; a start reads only key records by type)",
        apply: to_3,
    },
    Migration {
        to: 4,
        what: "the proposals counted by state and tier, kept by triggers (/metrics counted every proposal at each \
               scrape)",
        apply: to_4,
    },
];

fn to_2(db: &Connection) -> rusqlite::Result<()> {
    crate::store::tree::migrate(db)?;
    // Version 2's index of every record by type (dropped again by `to_3`).
    db.execute_batch("CREATE INDEX IF NOT EXISTS records_by_type ON records (type);")?;
    db.execute_batch(crate::store::fold::CREATE)
}

fn to_3(db: &Connection) -> rusqlite::Result<()> {
    db.execute_batch("DROP INDEX IF EXISTS records_by_type;")?;
    db.execute_batch(&key_records_index())
}

fn to_4(db: &Connection) -> rusqlite::Result<()> {
    // `fold::CREATE` only adds what is missing: the table and its triggers.
    db.execute_batch(crate::store::fold::CREATE)?;
    crate::store::fold::recount(db)
}

/// A new store at [`SCHEMA_VERSION`]: the tables of version 1, then those
/// each later version added.
fn create(db: &Connection) -> rusqlite::Result<()> {
    db.execute_batch(CREATE_V1)?;
    db.execute_batch(crate::store::tree::CREATE)?;
    db.execute_batch(crate::store::fold::CREATE)?;
    db.execute_batch(&key_records_index())
}

/// The tables of version 1.
pub const CREATE_V1: &str = "
CREATE TABLE IF NOT EXISTS records (
    seq   INTEGER PRIMARY KEY,   -- position in the log, from 0, no gaps
    run   TEXT NOT NULL,         -- run id (or 'policy' / 'runner' for runner-level records)
    type  TEXT NOT NULL,         -- event type
    time  TEXT NOT NULL,         -- RFC 3339, UTC
    prev  TEXT NOT NULL,         -- sha256 of the previous record's canonical JSON
    hash  TEXT NOT NULL,         -- sha256 of this record's canonical JSON
    body  TEXT NOT NULL          -- the canonical JSON record (the Merkle leaf)
);
CREATE INDEX IF NOT EXISTS records_by_run ON records (run);
CREATE TABLE IF NOT EXISTS artifacts (
    digest TEXT PRIMARY KEY,     -- sha256:<hex> of bytes
    size   INTEGER NOT NULL,
    bytes  BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS checkpoints (
    size  INTEGER PRIMARY KEY,   -- tree size
    root  TEXT NOT NULL,         -- base64 root
    note  TEXT NOT NULL,         -- the signed note (c2sp.org/tlog-checkpoint)
    time  TEXT NOT NULL
);
CREATE TRIGGER IF NOT EXISTS records_append_only_u BEFORE UPDATE ON records BEGIN SELECT RAISE(ABORT, 'evidence is append-only'); END;
CREATE TRIGGER IF NOT EXISTS records_append_only_d BEFORE DELETE ON records BEGIN SELECT RAISE(ABORT, 'evidence is append-only'); END;
CREATE TRIGGER IF NOT EXISTS artifacts_append_only_u BEFORE UPDATE ON artifacts BEGIN SELECT RAISE(ABORT, 'evidence is append-only'); END;
CREATE TRIGGER IF NOT EXISTS artifacts_append_only_d BEFORE DELETE ON artifacts BEGIN SELECT RAISE(ABORT, 'evidence is append-only'); END;
CREATE TRIGGER IF NOT EXISTS checkpoints_append_only_u BEFORE UPDATE ON checkpoints BEGIN SELECT RAISE(ABORT, 'evidence is append-only'); END;
CREATE TRIGGER IF NOT EXISTS checkpoints_append_only_d BEFORE DELETE ON checkpoints BEGIN SELECT RAISE(ABORT, 'evidence is append-only'); END;
";

/// The version a store was written with, read without writing to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    /// No file yet, or a file without the log's tables: a new store.
    New,
    /// A store at this schema version (an unstamped store with the log's
    /// tables is version 1).
    At(u32),
}

/// The version stamped in `db`, interpreting an unstamped store.
///
/// # Errors
/// If the database cannot be read (not a database, unreadable).
pub fn found(db: &Connection) -> Result<Found> {
    let version: i64 = db.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let version = u32::try_from(version).map_err(|_| anyhow::anyhow!("schema version {version} is out of range"))?;
    if version > 0 {
        return Ok(Found::At(version));
    }
    let tables: i64 =
        db.query_row("SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'records'", [], |r| r.get(0))?;
    Ok(if tables > 0 { Found::At(1) } else { Found::New })
}

/// The refusal of a store newer than this runner: cause and next step.
fn too_new(path: &Path, version: u32) -> anyhow::Error {
    anyhow::anyhow!(
        "evidence store {} has schema version {version}, written by a newer edge-runner; this one ({}) understands \
         versions up to {SCHEMA_VERSION}. Nothing in the store was changed. Run the newer edge-runner again, or, to \
         go back to this version, restore the backup taken before the upgrade (`edge-runner restore`, \
         docs/operations.md#upgrading)",
        path.display(),
        env!("CARGO_PKG_VERSION"),
    )
}

/// The SQLite database header's first 16 bytes.
const SQLITE_MAGIC: &[u8; 16] = b"SQLite format 3\0";
/// Where the header holds `user_version` (4 bytes, big-endian).
const USER_VERSION_AT: usize = 60;

/// Refuse the store at `path` if a newer runner wrote it, without writing
/// anything, not even SQLite's `-wal` and `-shm` files a connection would
/// create: when no WAL holds frames, the database header is the whole
/// truth and is read as bytes; otherwise a read-only connection reads
/// through the WAL (whose files exist already).
///
/// # Errors
/// A store newer than [`SCHEMA_VERSION`], or one that cannot be read.
pub fn refuse_newer(path: &Path) -> Result<()> {
    use std::io::Read as _;
    let mut f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("cannot open evidence store {}", path.display())),
    };
    let wal = path.with_file_name(format!("{}-wal", path.file_name().unwrap_or_default().to_string_lossy()));
    let wal_frames = std::fs::metadata(&wal).is_ok_and(|m| m.len() > 0);
    let version = if wal_frames {
        let db = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)
            .with_context(|| format!("cannot open evidence store {}", path.display()))?;
        let v: i64 = db
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .with_context(|| format!("cannot read the schema version of {}", path.display()))?;
        u32::try_from(v).map_err(|_| anyhow::anyhow!("{}: schema version {v} is out of range", path.display()))?
    } else {
        let mut header = [0u8; 100];
        let mut read = 0;
        while read < header.len() {
            match f.read(&mut header[read..])? {
                0 => break,
                n => read += n,
            }
        }
        if read == 0 {
            return Ok(()); // an empty file: SQLite makes it a new store
        }
        if read < header.len() || &header[..16] != SQLITE_MAGIC {
            bail!(
                "{} is not an SQLite database: it is not an evidence store (restore the state directory from a backup)",
                path.display()
            );
        }
        u32::from_be_bytes(header[USER_VERSION_AT..USER_VERSION_AT + 4].try_into().expect("4 bytes"))
    };
    if version > SCHEMA_VERSION { Err(too_new(path, version)) } else { Ok(()) }
}

/// Create a new store, or bring an older one forward to [`SCHEMA_VERSION`]
/// (see the module docs). `db` is the writer's connection.
///
/// # Errors
/// A newer store (checked again here, under the writer's connection), or a
/// step that fails (its transaction is rolled back: the store stays at the
/// version before it).
pub fn prepare(db: &mut Connection, path: &Path) -> Result<u32> {
    bring_forward(db, path, SCHEMA_VERSION, MIGRATIONS)
}

/// [`prepare`] with the target version and steps as arguments (tests give
/// their own, as the next release will).
fn bring_forward(db: &mut Connection, path: &Path, target: u32, steps: &[Migration]) -> Result<u32> {
    let mut at = match found(db)? {
        Found::At(v) if v > target => return Err(too_new(path, v)),
        Found::At(v) => v,
        Found::New => {
            let tx = db.transaction()?;
            create(&tx).with_context(|| format!("cannot create the evidence store {}", path.display()))?;
            tx.pragma_update(None, "user_version", target)?;
            tx.commit()?;
            return Ok(target);
        }
    };
    // An unstamped version-1 store (made before versions were stamped).
    if db.query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0))? == 0 {
        db.pragma_update(None, "user_version", at)?;
    }
    while at < target {
        let Some(step) = steps.iter().find(|m| m.to == at + 1) else {
            bail!(
                "evidence store {} is at schema version {at} and this runner has no migration to {}: it cannot \
                 open it. Upgrade through the release that migrates it (docs/operations.md#upgrading)",
                path.display(),
                at + 1
            );
        };
        let tx = db.transaction()?;
        (step.apply)(&tx).with_context(|| {
            format!(
                "migrating evidence store {} to schema version {} ({}) failed; it stays at version {at}, \
                 unchanged (nothing needs restoring): fix the cause (disk space, permissions) and start again",
                path.display(),
                step.to,
                step.what
            )
        })?;
        tx.pragma_update(None, "user_version", step.to)?;
        tx.commit()?;
        tracing::info!(store = %path.display(), from = at, to = step.to, what = step.what, "evidence store migrated");
        at = step.to;
    }
    Ok(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(db: &Connection) -> i64 {
        db.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap()
    }

    #[test]
    fn a_new_store_is_created_at_the_current_version_and_an_unstamped_one_is_stamped_1() {
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("evidence.db");
        refuse_newer(&path).unwrap();
        assert!(!path.exists(), "probing creates nothing");
        let mut db = Connection::open(&path).unwrap();
        assert_eq!(prepare(&mut db, &path).unwrap(), SCHEMA_VERSION);
        assert_eq!(version(&db), i64::from(SCHEMA_VERSION));

        // A store from before versions were stamped: version-1 tables,
        // version 0. It is stamped 1, then brought forward.
        let old = t.path().join("old.db");
        let mut db = Connection::open(&old).unwrap();
        db.execute_batch(CREATE_V1).unwrap();
        assert_eq!(version(&db), 0);
        assert_eq!(found(&db).unwrap(), Found::At(1));
        assert_eq!(bring_forward(&mut db, &old, 1, &[]).unwrap(), 1);
        assert_eq!(version(&db), 1);
        assert_eq!(prepare(&mut db, &old).unwrap(), SCHEMA_VERSION);
        assert_eq!(version(&db), i64::from(SCHEMA_VERSION));
    }

    /// New and migrated stores alike: the key records are found through
    /// the partial index, which holds only them (the index of every record
    /// by type is gone), so appending another record writes no index by type.
    #[test]
    fn key_records_are_found_by_their_own_index_and_other_records_are_not_in_it() {
        let t = tempfile::tempdir().unwrap();
        let plan = |db: &Connection| -> String {
            let q = format!("EXPLAIN QUERY PLAN SELECT body FROM records WHERE {KEY_RECORDS} ORDER BY seq");
            let mut stmt = db.prepare(&q).unwrap();
            let rows = stmt.query_map([], |r| r.get::<_, String>(3)).unwrap();
            rows.map(Result::unwrap).collect::<Vec<_>>().join("; ")
        };
        let indexes = |db: &Connection| -> Vec<String> {
            let mut stmt = db
                .prepare("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'records' ORDER BY name")
                .unwrap();
            stmt.query_map([], |r| r.get(0)).unwrap().map(Result::unwrap).collect()
        };
        let definition = |db: &Connection| -> String {
            db.query_row("SELECT sql FROM sqlite_master WHERE name = 'records_key_events'", [], |r| r.get(0)).unwrap()
        };
        let new = t.path().join("new.db");
        let mut db = Connection::open(&new).unwrap();
        prepare(&mut db, &new).unwrap();
        let old = t.path().join("v2.db");
        let mut v2 = Connection::open(&old).unwrap();
        v2.execute_batch(CREATE_V1).unwrap();
        bring_forward(&mut v2, &old, 2, &MIGRATIONS[..1]).unwrap();
        assert_eq!(version(&v2), 2);
        assert!(indexes(&v2).contains(&"records_by_type".to_owned()), "{:?}", indexes(&v2));
        assert_eq!(prepare(&mut v2, &old).unwrap(), SCHEMA_VERSION);
        for db in [&db, &v2] {
            assert_eq!(indexes(db), ["records_by_run", "records_key_events"]);
            assert!(plan(db).contains("USING INDEX records_key_events"), "{}", plan(db));
            assert!(definition(db).ends_with(&format!("WHERE {KEY_RECORDS}")), "{}", definition(db));
        }
    }

    #[test]
    fn an_older_store_is_migrated_step_by_step_and_a_failed_step_leaves_it_where_it_was() {
        fn add_index(db: &Connection) -> rusqlite::Result<()> {
            db.execute_batch("CREATE INDEX records_by_time ON records (time);")
        }
        fn add_table(db: &Connection) -> rusqlite::Result<()> {
            db.execute_batch("CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT NOT NULL);")
        }
        fn rewrite_history(db: &Connection) -> rusqlite::Result<()> {
            db.execute_batch("CREATE TABLE half (x); UPDATE records SET body = 'rewritten';")
        }
        let steps = [
            Migration { to: 2, what: "index records by time", apply: add_index },
            Migration { to: 3, what: "a notes table", apply: add_table },
        ];
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("evidence.db");
        let mut db = Connection::open(&path).unwrap();
        assert_eq!(bring_forward(&mut db, &path, 1, &steps).unwrap(), 1);
        db.execute("INSERT INTO records VALUES (0, 'r', 't', 'now', 'p', 'h', '{}')", []).unwrap();
        assert_eq!(bring_forward(&mut db, &path, 3, &steps).unwrap(), 3);
        assert_eq!(version(&db), 3);
        let objects: i64 = db
            .query_row("SELECT count(*) FROM sqlite_master WHERE name IN ('records_by_time', 'notes')", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(objects, 2);
        // Already current: nothing to do. A version above the target is refused.
        assert_eq!(bring_forward(&mut db, &path, 3, &steps).unwrap(), 3);
        let e = format!("{:#}", bring_forward(&mut db, &path, 2, &steps).unwrap_err());
        assert!(e.contains("schema version 3, written by a newer edge-runner"), "{e}");

        // A step that fails (here: the append-only trigger stops it) is
        // rolled back whole, version included.
        let bad = [Migration { to: 4, what: "rewrite", apply: rewrite_history }];
        let e = format!("{:#}", bring_forward(&mut db, &path, 4, &bad).unwrap_err());
        assert!(e.contains("stays at version 3") && e.contains("append-only"), "{e}");
        assert_eq!(version(&db), 3);
        let half: i64 =
            db.query_row("SELECT count(*) FROM sqlite_master WHERE name = 'half'", [], |r| r.get(0)).unwrap();
        assert_eq!(half, 0, "nothing of the failed step is left");
        // A gap in the steps is named.
        let e = format!("{:#}", bring_forward(&mut db, &path, 5, &steps).unwrap_err());
        assert!(e.contains("no migration to 4"), "{e}");
    }

    #[test]
    fn a_newer_store_is_refused_from_its_header_or_through_its_wal_and_nothing_is_written() {
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("evidence.db");
        let mut db = Connection::open(&path).unwrap();
        db.execute_batch("PRAGMA journal_mode = WAL;").unwrap();
        prepare(&mut db, &path).unwrap();
        db.pragma_update(None, "user_version", SCHEMA_VERSION + 1).unwrap();
        drop(db); // a clean close: everything in the database file
        let listing = || {
            let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(t.path())
                .unwrap()
                .map(|e| e.unwrap().path())
                .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(&p).unwrap()))
                .collect();
            v.sort();
            v
        };
        let before = listing();
        assert_eq!(before.len(), 1, "only the database file");
        let e = format!("{:#}", refuse_newer(&path).unwrap_err());
        assert!(e.contains(&format!("schema version {}, written by a newer", SCHEMA_VERSION + 1)), "{e}");
        assert!(e.contains("Nothing in the store was changed"), "{e}");
        assert_eq!(listing(), before, "no byte changed, no file created");

        // A newer runner that crashed with its version bump still in the WAL.
        let other = t.path().join("crashed.db");
        let db = Connection::open(&other).unwrap();
        db.execute_batch("PRAGMA journal_mode = WAL; PRAGMA wal_autocheckpoint = 0;").unwrap();
        db.pragma_update(None, "user_version", SCHEMA_VERSION + 3).unwrap();
        assert!(std::fs::metadata(t.path().join("crashed.db-wal")).unwrap().len() > 0);
        let e = format!("{:#}", refuse_newer(&other).unwrap_err());
        assert!(e.contains(&format!("schema version {}", SCHEMA_VERSION + 3)), "{e}");
        drop(db);

        // Not a database at all.
        std::fs::write(t.path().join("junk.db"), vec![b'x'; 200]).unwrap();
        let e = format!("{:#}", refuse_newer(&t.path().join("junk.db")).unwrap_err());
        assert!(e.contains("is not an SQLite database"), "{e}");
    }

    #[test]
    fn the_steps_are_in_order_and_end_at_the_current_version() {
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.to as usize, i + 2, "MIGRATIONS[{i}] must produce version {}", i + 2);
        }
        assert_eq!(MIGRATIONS.last().map_or(1, |m| m.to), SCHEMA_VERSION);
    }
}
