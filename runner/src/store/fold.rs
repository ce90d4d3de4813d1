//! The fold of the log, kept in the store (schema version 2) so that a
//! start reads what was appended since, not the whole history, and memory
//! holds only the work in flight.
//!
//! ```sql
//! CREATE TABLE proposals (            -- one row per proposal: the API's view
//!     id    TEXT PRIMARY KEY,
//!     seq   INTEGER NOT NULL,         -- its first record (submission order)
//!     state TEXT NOT NULL,            -- lifecycle state (edge_core::lifecycle::State)
//!     tier  INTEGER,                  -- the decided tier
//!     at    INTEGER NOT NULL,         -- submitted, unix seconds
//!     view  TEXT NOT NULL             -- the whole ProposalView, JSON
//! );
//! CREATE TABLE spent (                -- what approvals and proposals used up
//!     kind TEXT NOT NULL,             -- nonce | executed | settled | expired
//!     key  TEXT NOT NULL,             -- the nonce or the proposal id
//!     seq  INTEGER NOT NULL,          -- the record that spent it (the first)
//!     PRIMARY KEY (kind, key)
//! ) WITHOUT ROWID;
//! CREATE TABLE counters (key TEXT NOT NULL, issued_at INTEGER NOT NULL, counter INTEGER NOT NULL);
//! CREATE TABLE fold (                 -- one row: how far the tables above are folded
//!     id      INTEGER PRIMARY KEY CHECK (id = 0),
//!     records INTEGER NOT NULL,       -- the tables fold records 0 .. records
//!     state   TEXT NOT NULL           -- the small rest (runs in progress, waiting proposals, …), JSON
//! );
//! CREATE TABLE proposal_counts (      -- proposals by state and tier (schema version 4), for /metrics
//!     state TEXT NOT NULL,
//!     tier  INTEGER NOT NULL,         -- the decided tier, -1 for none yet
//!     n     INTEGER NOT NULL,
//!     PRIMARY KEY (state, tier)
//! ) WITHOUT ROWID;                    -- kept by triggers on `proposals`, in the same transactions
//! ```
//!
//! **Derived, never authority.** Every row is what folding the records
//! gives (`crate::store::index::LogIndex`); the records stay the only
//! history. The writer stores what a batch changed right after the batch's
//! own commit, in a second transaction that does not wait for the disk
//! (`synchronous = OFF` for it alone: the next durable commit carries it,
//! and one lost in a crash is folded again at the next start from the
//! records after `fold.records`). A `fold` row ahead of the records, or
//! missing while the records are not empty, rebuilds the tables from the
//! records (a store migrated from version 1 does this once).
//!
//! These tables carry no signature: someone who can write `evidence.db`
//! could make the runner forget that a nonce was spent (as they could edit
//! a running process's memory before). What they cannot do is hide it:
//! every approval's use is in the signed records, which the offline
//! verifier folds itself (`nonce.reused`), and `edge-runner evidence check
//! --full` folds the records again and compares them with these tables.

use std::collections::{BTreeMap, HashMap};

use anyhow::{Context, Result};
use edge_core::Sha256Digest;
use edge_core::evidence::{PasskeyUse, Record};
use edge_core::lifecycle::{Changed, ProposalView, Settlements, State};
use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};

/// The tables (created by schema step 2, with the tree).
pub const CREATE: &str = "
CREATE TABLE IF NOT EXISTS proposals (
    id    TEXT PRIMARY KEY,
    seq   INTEGER NOT NULL,
    state TEXT NOT NULL,
    tier  INTEGER,
    at    INTEGER NOT NULL,
    view  TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS proposals_by_seq ON proposals (seq);
CREATE INDEX IF NOT EXISTS proposals_by_state ON proposals (state, tier, seq);
CREATE TABLE IF NOT EXISTS spent (
    kind TEXT NOT NULL,
    key  TEXT NOT NULL,
    seq  INTEGER NOT NULL,
    PRIMARY KEY (kind, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS counters (key TEXT NOT NULL, issued_at INTEGER NOT NULL, counter INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS fold (
    id      INTEGER PRIMARY KEY CHECK (id = 0),
    records INTEGER NOT NULL,
    state   TEXT NOT NULL
);
-- Kept by the triggers below (an UPSERT each, not `OR IGNORE`: a trigger's
-- statement takes the conflict policy of the statement that fired it).
CREATE TABLE IF NOT EXISTS proposal_counts (
    state TEXT NOT NULL,
    tier  INTEGER NOT NULL,
    n     INTEGER NOT NULL,
    PRIMARY KEY (state, tier)
) WITHOUT ROWID;
CREATE TRIGGER IF NOT EXISTS proposals_counted_i AFTER INSERT ON proposals BEGIN
    INSERT INTO proposal_counts VALUES (NEW.state, coalesce(NEW.tier, -1), 1)
        ON CONFLICT (state, tier) DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER IF NOT EXISTS proposals_counted_u AFTER UPDATE OF state, tier ON proposals BEGIN
    UPDATE proposal_counts SET n = n - 1 WHERE state = OLD.state AND tier = coalesce(OLD.tier, -1);
    INSERT INTO proposal_counts VALUES (NEW.state, coalesce(NEW.tier, -1), 1)
        ON CONFLICT (state, tier) DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER IF NOT EXISTS proposals_counted_d AFTER DELETE ON proposals BEGIN
    UPDATE proposal_counts SET n = n - 1 WHERE state = OLD.state AND tier = coalesce(OLD.tier, -1);
END;
";

/// Count the proposals already stored into `proposal_counts` (schema
/// version 4 adds the table to a store that has proposals; from then on the
/// triggers keep it).
///
/// # Errors
/// If the store cannot be written.
pub fn recount(db: &Connection) -> rusqlite::Result<()> {
    db.execute_batch(
        "DELETE FROM proposal_counts;
         INSERT INTO proposal_counts (state, tier, n)
             SELECT state, coalesce(tier, -1), count(*) FROM proposals GROUP BY state, coalesce(tier, -1);",
    )
}

/// What approvals and proposals use up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spent {
    /// An approval nonce a met quorum consumed.
    Nonce,
    /// A proposal executed (its quorum met).
    Executed,
    /// A proposal settled (met or vetoed).
    Settled,
    /// A proposal expired.
    Expired,
}

impl Spent {
    pub const ALL: [Spent; 4] = [Spent::Nonce, Spent::Executed, Spent::Settled, Spent::Expired];

    /// Where the fold keeps this kind in memory (what is not stored yet).
    pub fn of(self, s: &Settlements) -> &HashMap<String, u64> {
        match self {
            Spent::Nonce => &s.nonces,
            Spent::Executed => &s.executed,
            Spent::Settled => &s.settled,
            Spent::Expired => &s.expired,
        }
    }

    /// [`Spent::of`], to change.
    pub fn of_mut(self, s: &mut Settlements) -> &mut HashMap<String, u64> {
        match self {
            Spent::Nonce => &mut s.nonces,
            Spent::Executed => &mut s.executed,
            Spent::Settled => &mut s.settled,
            Spent::Expired => &mut s.expired,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Spent::Nonce => "nonce",
            Spent::Executed => "executed",
            Spent::Settled => "settled",
            Spent::Expired => "expired",
        }
    }
}

/// The small rest of the fold: bounded by the work in flight (runs in
/// progress, proposals waiting), the key records (few) and reason codes.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Rest {
    pub policy: (Option<Sha256Digest>, Option<Sha256Digest>),
    pub key: Option<String>,
    pub key_records: Vec<Record>,
    pub refusals: BTreeMap<String, u64>,
    pub open_runs: HashMap<String, u64>,
    pub awaiting: BTreeMap<String, u64>,
    pub pending: HashMap<String, Vec<(String, String, PasskeyUse)>>,
    pub continuing: HashMap<String, String>,
}

/// What a batch of folded records changed, to store.
#[derive(Debug, Default)]
pub struct Changes {
    /// The fold now covers records `0 .. records`.
    pub records: u64,
    pub proposals: Changed,
    pub spent: Vec<(Spent, String, u64)>,
    pub counters: Vec<(String, u64, u32)>,
    pub rest: Rest,
}

/// Where the stored fold stands: records folded and the rest, if stored.
///
/// # Errors
/// If the store cannot be read or the row does not parse.
pub fn stored(db: &Connection) -> Result<Option<(u64, Rest)>> {
    let row: Option<(i64, String)> =
        db.query_row("SELECT records, state FROM fold WHERE id = 0", [], |r| Ok((r.get(0)?, r.get(1)?))).optional()?;
    row.map(|(n, state)| {
        let rest: Rest = serde_json::from_str(&state).context("the stored fold's state does not parse")?;
        Ok((n as u64, rest))
    })
    .transpose()
}

/// Forget the stored fold (it is rebuilt from the records), and make its
/// tables and the triggers that keep `proposal_counts` again (someone who
/// can write the store could have dropped them). The triggers are dropped
/// while the tables are emptied: with a trigger on it, `DELETE FROM
/// proposals` deletes row by row and fires it for each (4.8 s against
/// 0.8 s on the start-up bench's ten-million-record store, 952,685
/// proposals, 2026-12-07); the counts are emptied with them. `CREATE` runs
/// twice: first so that every table and trigger exists to be emptied or
/// dropped (whatever was missing), then to make the triggers again. One
/// savepoint: all of it or none.
///
/// # Errors
/// If the store cannot be written.
pub fn clear(db: &Connection) -> rusqlite::Result<()> {
    db.execute_batch(&format!(
        "SAVEPOINT fold_clear; {CREATE}; \
         DROP TRIGGER proposals_counted_i; DROP TRIGGER proposals_counted_u; DROP TRIGGER proposals_counted_d; \
         DELETE FROM proposals; DELETE FROM spent; DELETE FROM counters; DELETE FROM fold; \
         DELETE FROM proposal_counts; {CREATE}; RELEASE fold_clear;"
    ))
}

/// Every passkey counter consumed: (key, issued at, counter).
///
/// # Errors
/// If the store cannot be read.
pub fn counters(db: &Connection) -> Result<Vec<(String, u64, u32)>> {
    let mut stmt = db.prepare("SELECT key, issued_at, counter FROM counters")?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64, r.get::<_, i64>(2)? as u32)))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Store what changed, in the caller's transaction.
///
/// # Errors
/// If the store cannot be written.
pub fn store(db: &Connection, c: &Changes) -> Result<()> {
    {
        let mut put = db.prepare_cached(
            "INSERT INTO proposals (id, seq, state, tier, at, view) VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
             ON CONFLICT (id) DO UPDATE SET seq = ?2, state = ?3, tier = ?4, at = ?5, view = ?6",
        )?;
        for v in &c.proposals.views {
            let at = v.submitted_at.parse::<jiff::Timestamp>().map_or(0, |t| t.as_second());
            put.execute(params![
                v.id,
                v.records.first().copied().unwrap_or(0) as i64,
                v.state.name(),
                v.tier,
                at,
                serde_json::to_string(v)?
            ])?;
        }
        let mut remove = db.prepare_cached("DELETE FROM proposals WHERE id = ?1")?;
        for id in &c.proposals.removed {
            remove.execute([id])?;
        }
        let mut spend = db.prepare_cached("INSERT OR IGNORE INTO spent (kind, key, seq) VALUES (?1, ?2, ?3)")?;
        for (kind, key, seq) in &c.spent {
            spend.execute(params![kind.name(), key, *seq as i64])?;
        }
        let mut count = db.prepare_cached("INSERT INTO counters (key, issued_at, counter) VALUES (?1, ?2, ?3)")?;
        for (key, at, counter) in &c.counters {
            count.execute(params![key, *at as i64, counter])?;
        }
    }
    db.prepare_cached(
        "INSERT INTO fold (id, records, state) VALUES (0, ?1, ?2) ON CONFLICT (id) DO UPDATE SET records = ?1, state = ?2",
    )?
    .execute(params![c.records as i64, serde_json::to_string(&c.rest)?])?;
    Ok(())
}

/// One stored proposal view.
///
/// # Errors
/// If the store cannot be read or the view does not parse.
pub fn proposal(db: &Connection, id: &str) -> Result<Option<ProposalView>> {
    let view: Option<String> =
        db.prepare_cached("SELECT view FROM proposals WHERE id = ?1")?.query_row([id], |r| r.get(0)).optional()?;
    view.map(|v| serde_json::from_str(&v).with_context(|| format!("the stored view of proposal {id} does not parse")))
        .transpose()
}

/// Whether `key` is spent as `kind`: the record that spent it.
///
/// # Errors
/// If the store cannot be read.
pub fn spent(db: &Connection, kind: Spent, key: &str) -> Result<Option<u64>> {
    Ok(db
        .prepare_cached("SELECT seq FROM spent WHERE kind = ?1 AND key = ?2")?
        .query_row(params![kind.name(), key], |r| r.get::<_, i64>(0))
        .optional()?
        .map(|s| s as u64))
}

/// Which proposals a listing wants: newest first, one page.
#[derive(Debug, Clone, Default)]
pub struct Query {
    pub state: Option<State>,
    pub tier: Option<u8>,
    /// Submitted at or after (unix seconds).
    pub since: Option<i64>,
    /// Submitted before (unix seconds).
    pub until: Option<i64>,
    /// Only proposals whose first record is before this one (the cursor
    /// of the next page: the `seq` of the last proposal of this one).
    pub before: Option<u64>,
    /// At most this many (capped by the caller).
    pub limit: u32,
    /// Only proposals this agent submitted.
    pub submitted_by: Option<String>,
}

/// One page of proposals, newest first, and each one's first record (the
/// cursor).
///
/// # Errors
/// If the store cannot be read or a view does not parse.
pub fn page(db: &Connection, q: &Query) -> Result<Vec<(u64, ProposalView)>> {
    let mut stmt = db.prepare_cached(
        "SELECT seq, view FROM proposals \
         WHERE (?1 IS NULL OR state = ?1) AND (?2 IS NULL OR tier = ?2) AND (?3 IS NULL OR at >= ?3) \
           AND (?4 IS NULL OR at < ?4) AND (?5 IS NULL OR seq < ?5) \
           AND (?7 IS NULL OR json_extract(view, '$.submitted_by') = ?7) \
         ORDER BY seq DESC LIMIT ?6",
    )?;
    let rows = stmt.query_map(
        params![
            q.state.map(State::name),
            q.tier,
            q.since,
            q.until,
            q.before.map(|b| b as i64),
            q.limit,
            q.submitted_by
        ],
        |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, String>(1)?)),
    )?;
    let mut out = Vec::new();
    for row in rows {
        let (seq, view) = row?;
        out.push((seq, serde_json::from_str(&view).context("a stored proposal view does not parse")?));
    }
    Ok(out)
}

/// Proposals by state and tier (for metrics): the counts the triggers keep,
/// a handful of rows however many proposals there are (counting the
/// proposals themselves took 6.8 ms at 122,777, warm).
///
/// # Errors
/// If the store cannot be read.
pub fn counts(db: &Connection) -> Result<Vec<(String, Option<u8>, u64)>> {
    let mut stmt =
        db.prepare_cached("SELECT state, nullif(tier, -1), n FROM proposal_counts WHERE n > 0 ORDER BY state, tier")?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get::<_, i64>(2)? as u64)))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What counting every proposal gives (what `counts` answered before).
    fn grouped(db: &Connection) -> Vec<(String, Option<u8>, u64)> {
        let mut stmt = db
            .prepare(
                "SELECT state, tier, count(*) FROM proposals GROUP BY state, tier ORDER BY state, coalesce(tier, -1)",
            )
            .unwrap();
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get::<_, i64>(2)? as u64))).unwrap();
        rows.collect::<rusqlite::Result<_>>().unwrap()
    }

    /// The counts the triggers keep are what counting the proposals gives,
    /// through every way the fold writes them: a new proposal, one whose
    /// state or tier changes (and one rewritten unchanged), one removed,
    /// the fold cleared; and `recount` makes them from the rows alone.
    #[test]
    fn the_counts_kept_are_what_counting_the_proposals_gives() {
        let db = Connection::open_in_memory().unwrap();
        db.execute_batch(CREATE).unwrap();
        let put = |id: &str, state: &str, tier: Option<u8>| {
            db.execute(
                "INSERT INTO proposals (id, seq, state, tier, at, view) VALUES (?1, 0, ?2, ?3, 0, '{}') \
                 ON CONFLICT (id) DO UPDATE SET seq = 0, state = ?2, tier = ?3, at = 0, view = '{}'",
                params![id, state, tier],
            )
            .unwrap();
        };
        let check = |when: &str| {
            assert_eq!(counts(&db).unwrap(), grouped(&db), "{when}");
        };
        for i in 0..20 {
            put(&format!("p-{i}"), "received", None);
        }
        check("new proposals, no tier yet");
        for i in 0..12 {
            put(&format!("p-{i}"), "awaiting-approval", Some((i % 3) as u8));
        }
        check("decided: state and tier set");
        put("p-0", "awaiting-approval", Some(0));
        check("rewritten unchanged");
        for i in 0..5 {
            put(&format!("p-{i}"), "committed", Some((i % 3) as u8));
        }
        check("state changed, tier kept");
        put("p-19", "received", Some(2));
        check("tier changed alone");
        db.execute("DELETE FROM proposals WHERE id IN ('p-1', 'p-7', 'p-15')", []).unwrap();
        check("removed");
        assert_eq!(counts(&db).unwrap().iter().map(|c| c.2).sum::<u64>(), 17);
        assert!(counts(&db).unwrap().contains(&("received".to_owned(), None, 6)));

        db.execute("UPDATE proposal_counts SET n = n + 3", []).unwrap();
        assert_ne!(counts(&db).unwrap(), grouped(&db));
        recount(&db).unwrap();
        check("recounted");
        clear(&db).unwrap();
        assert!(counts(&db).unwrap().is_empty(), "cleared with the fold");
        put("p-x", "received", None);
        check("after a clear");
    }
}
