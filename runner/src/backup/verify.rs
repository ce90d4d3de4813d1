//! Verify a copy of the evidence store without opening it for writing: the
//! checks the runner makes at every start (`EvidenceLog::open`:
//! schema version, every record's canonical form, sequence and chain link;
//! `store::trust`: the store holds every record its newest checkpoint and
//! `latest-checkpoint` cover, with the same root, signed by the runner's
//! key or the key the log last recorded), and every artifact against its
//! digest.

use std::path::Path;

use anyhow::{Context, Result, bail};
use edge_core::Sha256Digest;
use edge_core::merkle::{CompactRange, Hash};
use edge_core::note::NoteVerifier;
use edge_core::rotation::KeyHistory;

use crate::backup::manifest::StoreHead;
use crate::store::index::LogIndex;
use crate::store::schema::{self, Found};

/// A store that passed every check.
#[derive(Debug)]
pub struct Verified {
    pub head: StoreHead,
    /// Its tree's roots at the sizes its signed checkpoints claim, and of the whole.
    pub tree: Roots,
    /// The fold of its records (proposals waiting, the key last recorded).
    pub index: LogIndex,
}

/// The roots a verification needs, taken as the records stream past (not
/// every leaf and level of the tree): at the sizes the store's signed
/// checkpoints claim, and of the whole store.
#[derive(Debug, Default)]
pub struct Roots {
    size: u64,
    at: std::collections::BTreeMap<u64, Hash>,
}

impl Roots {
    /// Records in the store.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The root of the whole store.
    pub fn root(&self) -> Hash {
        self.at.get(&self.size).copied().unwrap_or_else(edge_core::merkle::empty_root)
    }
}

impl crate::store::trust::History for Roots {
    fn records(&self) -> u64 {
        self.size
    }

    fn root_at(&self, size: u64) -> Result<Option<Hash>> {
        if size > self.size {
            return Ok(None);
        }
        self.at.get(&size).copied().map(Some).ok_or_else(|| anyhow::anyhow!("the root at size {size} was not kept"))
    }
}

/// The keys the store's checkpoints may be signed by: the runner's
/// identity key and the key the log last recorded (as at start).
fn key_history(identity: &NoteVerifier, index: &LogIndex) -> Result<KeyHistory> {
    crate::store::trust::key_history_of(&index.key_records, &identity.name)
}

/// How often the backup's fold lets go of what it need not keep.
const FORGET_EVERY: u64 = 4096;

/// Verify the store in `dir` (`evidence.db` and `latest-checkpoint`) as the
/// runner does at start, with `identity` the runner's public key.
///
/// # Errors
/// Naming the first check that fails.
pub fn store(dir: &Path, identity: &NoteVerifier) -> Result<Verified> {
    let db_path = dir.join("evidence.db");
    if !db_path.is_file() {
        bail!("{} is missing", db_path.display());
    }
    schema::refuse_newer(&db_path)?;
    let version = match schema::found(&crate::store::log::read_only(dir)?)? {
        Found::At(v) => v,
        Found::New => bail!("{} holds no evidence tables", db_path.display()),
    };
    // Every record checked as it streams past, folded and hashed into the
    // tree's compact range; the records themselves are not kept.
    let db = crate::store::log::read_only(dir)?;
    let mut wanted: std::collections::BTreeSet<u64> = [0].into();
    wanted.extend(crate::store::trust::newest_checkpoint_row(&db)?.map(|(size, _)| size));
    wanted.extend(crate::store::trust::read_kept(dir)?.and_then(|t| crate::store::trust::claimed_size(&t)));
    let size: i64 = db.query_row("SELECT coalesce(max(seq) + 1, 0) FROM records", [], |r| r.get(0))?;
    // The fold as the runner keeps it (bounded by the work in flight: the
    // final proposals are let go every `FORGET_EVERY` records), where an
    // index of every proposal grew with the log (~1.5 KB a run).
    let (mut range, mut tree, mut index) = (CompactRange::default(), Roots::default(), LogIndex::default());
    tree.at.insert(0, edge_core::merkle::empty_root());
    crate::store::tree::verify_records(&db, 0, size as u64, version >= 2, |r, leaf| {
        index.push(&r);
        if (r.seq + 1).is_multiple_of(FORGET_EVERY) {
            let changes = index.changes();
            index.stored(&changes);
        }
        range.push(leaf);
        if wanted.contains(&range.size()) {
            tree.at.insert(range.size(), range.root());
        }
        Ok(())
    })
    .with_context(|| format!("the evidence store {} failed verification", db_path.display()))?;
    tree.size = range.size();
    tree.at.insert(tree.size, range.root());
    // The `hash` column, checked against each body by `load_verified`.
    let head = rusqlite::OptionalExtension::optional(db.query_row(
        "SELECT hash FROM records ORDER BY seq DESC LIMIT 1",
        [],
        |r| r.get::<_, String>(0),
    ))?
    .map(|h| h.parse::<Sha256Digest>().map_err(|e| anyhow::anyhow!("record hash `{h}`: {e}")))
    .transpose()?;
    let artifacts = check_artifacts(&db).with_context(|| format!("evidence store {}", db_path.display()))?;
    crate::store::trust::check_signed_history_of(dir, &tree, &key_history(identity, &index)?, identity).with_context(
        || format!("the evidence store {} does not hold the history the runner signed", db_path.display()),
    )?;
    let checkpoint = crate::store::trust::newest_checkpoint_row(&db)?.map(|(_, note)| note);
    Ok(Verified {
        head: StoreHead {
            schema_version: version,
            records: tree.size(),
            artifacts,
            root: hex::encode(tree.root()),
            head,
            checkpoint,
        },
        tree,
        index,
    })
}

/// Every artifact's bytes against its digest and size; returns the count.
fn check_artifacts(db: &rusqlite::Connection) -> Result<u64> {
    let mut stmt = db.prepare("SELECT digest, size, bytes FROM artifacts")?;
    let mut rows = stmt.query([])?;
    let mut n = 0u64;
    while let Some(row) = rows.next()? {
        let (d, size): (String, i64) = (row.get(0)?, row.get(1)?);
        let bytes = row.get_ref(2)?.as_blob()?;
        let want: Sha256Digest = d.parse().map_err(|e| anyhow::anyhow!("artifact digest `{d}`: {e}"))?;
        if Sha256Digest::of(bytes) != want || usize::try_from(size).ok() != Some(bytes.len()) {
            bail!("artifact {want} does not match its digest or size: the store was altered or damaged");
        }
        n += 1;
    }
    Ok(n)
}

/// After the backup signed its head into a store `first` verified: the
/// store is still those records (count, last hash), SQLite finds the file
/// sound (`PRAGMA quick_check`: every page and index, after our write), and
/// the signed history holds with the new checkpoint — without reading every
/// record a second time. Returns the head with that checkpoint.
///
/// # Errors
/// Naming what differs.
pub fn resealed(dir: &Path, first: Verified, identity: &NoteVerifier) -> Result<Verified> {
    let db = crate::store::log::read_only(dir)?;
    let quick: String = db.query_row("PRAGMA quick_check", [], |r| r.get(0))?;
    if quick != "ok" {
        bail!("SQLite finds the store {} damaged: {quick}", dir.join("evidence.db").display());
    }
    let version = match schema::found(&db)? {
        Found::At(v) => v,
        Found::New => bail!("{} holds no evidence tables", dir.join("evidence.db").display()),
    };
    let (count, last): (i64, Option<String>) =
        db.query_row("SELECT count(*), (SELECT hash FROM records ORDER BY seq DESC LIMIT 1) FROM records", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?;
    let last =
        last.map(|h| h.parse::<Sha256Digest>().map_err(|e| anyhow::anyhow!("record hash `{h}`: {e}"))).transpose()?;
    if version != first.head.schema_version
        || u64::try_from(count).ok() != Some(first.head.records)
        || last != first.head.head
    {
        bail!("the store {} changed after it was verified: something else writes there", dir.display());
    }
    crate::store::trust::check_signed_history_of(dir, &first.tree, &key_history(identity, &first.index)?, identity)?;
    let checkpoint = crate::store::trust::newest_checkpoint_row(&db)?.map(|(_, note)| note);
    Ok(Verified { head: StoreHead { checkpoint, ..first.head }, ..first })
}
