//! The log's Merkle tree, kept in the store beside the records (schema
//! version 2): every complete, aligned subtree hash, one row each, written
//! in the same transaction as the records it covers.
//!
//! ```sql
//! CREATE TABLE tree (
//!     level INTEGER NOT NULL,  -- 0: leaf hashes; k: complete subtrees of 2^k leaves
//!     idx   INTEGER NOT NULL,  -- which subtree of that level, from 0
//!     hash  BLOB NOT NULL,     -- 32 bytes
//!     PRIMARY KEY (level, idx)
//! ) WITHOUT ROWID;
//! ```
//!
//! The shape is that of C2SP `tlog-tiles` (the same hashes, addressed by
//! level and index) without the grouping into tiles of 256: a row per hash
//! costs one B-tree lookup however old the subtree, and the writer never
//! rewrites a partial tile. About 2n rows of ~45 bytes for n records.
//!
//! Why it exists: with the tree on disk, opening the store reads O(log n)
//! hashes (the compact range at the last signed checkpoint) instead of
//! every record, and roots, receipts and export proofs read O(log² n) rows
//! instead of holding ~2n hashes in memory (64 MiB a million records).
//! Rows are checked, never trusted: at open the root they give at the last
//! signed checkpoint must be the signed root and every row the records
//! after it complete must equal what those records hash to
//! (`EvidenceLog::open`); a record read later is checked by an inclusion
//! proof against the root held in memory (`EvidenceLog::read_records_at`).

use anyhow::{Result, anyhow, bail};
use edge_core::Sha256Digest;
use edge_core::evidence::{self, GENESIS};
use edge_core::merkle::{self, CompactRange, Hash, Subtrees};
use rusqlite::{Connection, OptionalExtension, params};

/// The table and its append-only triggers (the index of the key records
/// that came with it in version 2 is `crate::store::schema`'s).
pub const CREATE: &str = "
CREATE TABLE IF NOT EXISTS tree (
    level INTEGER NOT NULL,
    idx   INTEGER NOT NULL,
    hash  BLOB NOT NULL,
    PRIMARY KEY (level, idx)
) WITHOUT ROWID;
CREATE TRIGGER IF NOT EXISTS tree_append_only_u BEFORE UPDATE ON tree BEGIN SELECT RAISE(ABORT, 'evidence is append-only'); END;
CREATE TRIGGER IF NOT EXISTS tree_append_only_d BEFORE DELETE ON tree BEGIN SELECT RAISE(ABORT, 'evidence is append-only'); END;
";

/// The tree of the first `size` records, read from a store.
pub struct StoredTree<'a> {
    rows: Rows<'a>,
    size: u64,
    cache: Option<&'a NodeCache>,
}

/// A connection to the store, held for as long as a [`StoredTree`] reads.
pub type Held<'a> = Box<dyn std::ops::Deref<Target = Connection> + 'a>;

/// Where a [`StoredTree`] reads the hashes its cache does not hold.
enum Rows<'a> {
    Db(&'a Connection),
    /// A connection asked for at the first hash not cached: a proof made
    /// of cached hashes alone (a run's receipt, in a process that verified
    /// the tree's border at open) opens none.
    Lazy {
        open: &'a dyn Fn() -> Result<Held<'a>>,
        db: std::cell::OnceCell<Held<'a>>,
    },
}

impl std::fmt::Debug for StoredTree<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredTree").field("size", &self.size).field("cached", &self.cache.is_some()).finish()
    }
}

impl<'a> StoredTree<'a> {
    /// The tree of the first `size` records of `db` (which must hold them).
    pub fn new(db: &'a Connection, size: u64) -> Self {
        Self { rows: Rows::Db(db), size, cache: None }
    }

    /// As [`StoredTree::new`], keeping the hashes it reads in `cache`.
    pub fn cached(db: &'a Connection, size: u64, cache: &'a NodeCache) -> Self {
        Self { rows: Rows::Db(db), size, cache: Some(cache) }
    }

    /// As [`StoredTree::cached`], with a connection from `open` only once a
    /// hash is not in `cache`.
    pub fn cached_lazily(open: &'a dyn Fn() -> Result<Held<'a>>, size: u64, cache: &'a NodeCache) -> Self {
        Self { rows: Rows::Lazy { open, db: std::cell::OnceCell::new() }, size, cache: Some(cache) }
    }

    fn db(&self) -> Result<&Connection, RowError> {
        match &self.rows {
            Rows::Db(db) => Ok(db),
            Rows::Lazy { open, db } => {
                if db.get().is_none() {
                    let _ = db.set(open().map_err(|e| RowError::Open(format!("{e:#}")))?);
                }
                Ok(db.get().expect("just set"))
            }
        }
    }
}

/// Subtree hashes already read from the store, kept by a running log: a
/// row never changes once written (the tree only grows), and successive
/// receipts and record reads share all but their lowest levels, so each
/// reads a handful of rows instead of ~2 log n. Bounded: emptied when full.
/// A hash is held as read, never trusted more than a fresh read: proofs
/// built from it are still checked against the root the log verified
/// (`EvidenceLog::read_records_at`, `Runner::receipt_of`).
#[derive(Debug)]
pub struct NodeCache(edge_core::bounded::BoundedMap<(u32, u64), Hash>);

/// At most this many hashes are kept (about 1 MiB).
const NODE_CACHE_MAX: usize = 1 << 14;

impl Default for NodeCache {
    fn default() -> Self {
        Self(edge_core::bounded::BoundedMap::new(NODE_CACHE_MAX))
    }
}

impl NodeCache {
    /// Keep a hash the store holds (read, or committed by the writer).
    pub(crate) fn put(&self, level: u32, index: u64, hash: Hash) {
        self.0.insert((level, index), hash);
    }

    /// Keep the subtree hashes of a verified border (its complete subtrees,
    /// left to right): every left sibling of a proof for a record appended
    /// after it.
    pub(crate) fn put_border(&self, range: &CompactRange) {
        for ((level, index), hash) in merkle::border(range.size()).zip(range.hashes()) {
            self.put(level, index, hash);
        }
    }
}

/// A hash the store does not hold or holds damaged.
#[derive(Debug, thiserror::Error)]
pub enum RowError {
    #[error("the store has no tree hash at level {level}, index {index}: the store was altered")]
    Missing { level: u32, index: u64 },
    #[error("the tree hash at level {level}, index {index} is not 32 bytes: the store was altered")]
    Malformed { level: u32, index: u64 },
    #[error(transparent)]
    Sql(#[from] rusqlite::Error),
    #[error("{0}")]
    Open(String),
}

impl Subtrees for StoredTree<'_> {
    type Error = RowError;

    fn tree_size(&self) -> u64 {
        self.size
    }

    fn subtree(&self, level: u32, index: u64) -> Result<Hash, RowError> {
        if let Some(h) = self.cache.and_then(|c| c.0.get(&(level, index))) {
            return Ok(h);
        }
        let h = node(self.db()?, level, index)?.ok_or(RowError::Missing { level, index })?;
        if let Some(c) = self.cache {
            c.put(level, index, h);
        }
        Ok(h)
    }
}

/// One stored hash, if present.
///
/// # Errors
/// If it cannot be read or is not 32 bytes.
pub fn node(db: &Connection, level: u32, index: u64) -> Result<Option<Hash>, RowError> {
    let mut stmt = db.prepare_cached("SELECT hash FROM tree WHERE level = ?1 AND idx = ?2")?;
    let bytes: Option<Vec<u8>> = stmt.query_row(params![level, index as i64], |r| r.get(0)).optional()?;
    bytes.map(|b| Hash::try_from(b.as_slice()).map_err(|_| RowError::Malformed { level, index })).transpose()
}

/// Store one subtree hash (the writer, inside the transaction of the record
/// that completes it).
///
/// # Errors
/// If it cannot be written (a hash already there is an error: the tree
/// only grows).
pub fn insert(db: &Connection, level: u32, index: u64, hash: &Hash) -> rusqlite::Result<()> {
    db.prepare_cached("INSERT INTO tree (level, idx, hash) VALUES (?1, ?2, ?3)")?.execute(params![
        level,
        index as i64,
        &hash[..]
    ])?;
    Ok(())
}

/// Records in the store (one past the highest sequence number) and leaves
/// in its stored tree: O(log n) each.
///
/// # Errors
/// If the store cannot be read.
pub fn sizes(db: &Connection) -> Result<(u64, u64)> {
    let records: i64 = db.query_row("SELECT coalesce(max(seq) + 1, 0) FROM records", [], |r| r.get(0))?;
    let leaves: i64 = db.query_row("SELECT coalesce(max(idx) + 1, 0) FROM tree WHERE level = 0", [], |r| r.get(0))?;
    Ok((records as u64, leaves as u64))
}

/// What the records from `from` on establish (see [`verify_records`]).
#[derive(Debug)]
pub struct Tail {
    /// The compact range of the whole log.
    pub range: CompactRange,
    /// The hash of the last record (the next record's `prev`).
    pub prev: Sha256Digest,
}

/// Check the records from `from` to the end (`size` records in all): each
/// one's canonical form, sequence number, chain link and hash column, and
/// (`compare_tree`) that every tree hash they complete is the stored one.
/// Record `from - 1` (the last one a signed checkpoint covers) is tied to
/// the stored tree by an inclusion proof, so the chain continues from signed
/// history. Each record is handed to `each` with its leaf hash, in order
/// (an error from `each` ends the reading there).
/// Returns the compact range of the whole log.
///
/// What is *not* checked here is that the stored tree's root at `from` is
/// the signed one: the caller checks that against the signed checkpoints
/// (`crate::store::trust`).
///
/// # Errors
/// Naming the record, or the tree hash that disagrees with the records.
pub fn verify_records(
    db: &Connection,
    from: u64,
    size: u64,
    compare_tree: bool,
    mut each: impl FnMut(edge_core::evidence::Record, Hash) -> Result<()>,
) -> Result<Tail> {
    let tree = StoredTree::new(db, size);
    let mut range = merkle::compact_of(&tree, from).map_err(|e| anyhow!("the stored tree at size {from}: {e}"))?;
    let mut prev = GENESIS;
    if from > 0 {
        let body: String = db
            .query_row("SELECT body FROM records WHERE seq = ?1", [from as i64 - 1], |r| r.get(0))
            .optional()?
            .ok_or_else(|| anyhow!("record {} is missing from the store: it was altered", from - 1))?;
        let leaf = merkle::leaf_hash(body.as_bytes());
        let proof: Vec<Vec<u8>> = merkle::inclusion_proof_of(&tree, from - 1, from)
            .map_err(|e| anyhow!("the stored tree at size {from}: {e}"))?
            .iter()
            .map(|h| h.to_vec())
            .collect();
        if merkle::verify_inclusion(from - 1, from, &leaf, &proof, &range.root()).is_err() {
            bail!(
                "record {} is not the leaf the stored Merkle tree holds for it: the records and the persisted tree \
                 disagree (the store was altered)",
                from - 1
            );
        }
        prev = Sha256Digest::of(body.as_bytes());
    }
    let mut stmt = db.prepare("SELECT seq, hash, body FROM records WHERE seq >= ?1 ORDER BY seq")?;
    let mut rows = stmt.query([from as i64])?;
    let mut expected = from;
    while let Some(row) = rows.next()? {
        let (seq, hash, body): (i64, String, String) = (row.get(0)?, row.get(1)?, row.get(2)?);
        let record =
            evidence::check_record(body.as_bytes(), expected, prev).map_err(|e| anyhow!("record {seq}: {e}"))?;
        let h = Sha256Digest::of(body.as_bytes());
        if h.to_string() != hash {
            bail!("record {seq}: stored hash column does not match the record");
        }
        let leaf = merkle::leaf_hash(body.as_bytes());
        let mut disagrees = None;
        range.push_reporting(leaf, |level, index, hash| {
            if compare_tree && disagrees.is_none() {
                match node(db, level, index) {
                    Ok(Some(stored)) if stored == *hash => {}
                    Ok(Some(_)) => disagrees = Some(format!("differs from what records up to {seq} hash to")),
                    Ok(None) => disagrees = Some("is missing".to_owned()),
                    Err(e) => disagrees = Some(format!("cannot be read ({e})")),
                }
                if let Some(why) = &mut disagrees {
                    *why = format!("the persisted Merkle tree's hash at level {level}, index {index} {why}");
                }
            }
        });
        if let Some(why) = disagrees {
            bail!("{why}: the records and the persisted tree disagree (the store was altered)");
        }
        each(record, leaf)?;
        prev = h;
        expected += 1;
    }
    if expected != size {
        bail!("the store holds records up to {} but only {expected} in sequence: records are missing", size - 1);
    }
    Ok(Tail { range, prev })
}

/// Schema step 2: the tree table, filled from the records (each checked
/// as the runner's open check used to: canonical form, sequence, chain
/// link, hash column) in the migration's transaction.
///
/// # Errors
/// A record that does not verify (the store stays at version 1), or SQL.
pub fn migrate(db: &Connection) -> rusqlite::Result<()> {
    db.execute_batch(CREATE)?;
    let fail =
        |e: String| rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CORRUPT), Some(e));
    let mut stmt = db.prepare("SELECT seq, hash, body FROM records ORDER BY seq")?;
    let mut rows = stmt.query([])?;
    let (mut range, mut prev, mut expected) = (CompactRange::default(), GENESIS, 0u64);
    while let Some(row) = rows.next()? {
        let (seq, hash, body): (i64, String, String) = (row.get(0)?, row.get(1)?, row.get(2)?);
        evidence::check_record(body.as_bytes(), expected, prev)
            .map_err(|e| fail(format!("record {seq} does not verify ({e}); the store is damaged")))?;
        let h = Sha256Digest::of(body.as_bytes());
        if h.to_string() != hash {
            return Err(fail(format!("record {seq}: stored hash column does not match the record")));
        }
        let mut failed = None;
        range.push_reporting(merkle::leaf_hash(body.as_bytes()), |level, index, hash| {
            if failed.is_none() {
                failed = insert(db, level, index, hash).err();
            }
        });
        if let Some(e) = failed {
            return Err(e);
        }
        prev = h;
        expected += 1;
    }
    Ok(())
}
