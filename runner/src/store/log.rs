//! The evidence store: an embedded SQLite database (`<state>/evidence/evidence.db`).
//!
//! * WAL journal, `synchronous=FULL`: a record is acknowledged only after the
//!   transaction holding it is durable.
//! * Append-only: triggers refuse every UPDATE and DELETE on records,
//!   artifacts and checkpoints (the runner never issues one; the triggers make
//!   sure nothing else through SQLite does either).
//! * Group commit: one writer thread owns the connection; appends from any
//!   number of threads queue up and the writer commits everything waiting in
//!   one transaction — one fsync for many records — before acknowledging each.
//! * Every record is a leaf of an RFC 6962 Merkle tree (leaf = the record's
//!   canonical JSON); a compact range of the tree is kept so the root is
//!   always at hand, and checkpoints are C2SP signed notes by the runner's
//!   identity key.
//!
//! Readable with the stock `sqlite3` tool; the schema is documented in
//! `docs/evidence.md` and versioned (`crate::store::schema`: a store written
//! by a newer runner is refused untouched, an older one is migrated). On open
//! the records appended since the last checkpoint the runner signed are
//! verified against the persisted tree, and the signed history against it
//! (`crate::store::trust`); a broken store refuses to start the runner. The
//! whole log is checked by `crate::store::check::full`, which `serve` runs
//! in the background after a start (and stops when it stops).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, mpsc};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use edge_core::Sha256Digest;
use edge_core::evidence::{Event, GENESIS, RECORD_SCHEMA, Record};
use edge_core::lifecycle::ProposalView;
use edge_core::merkle::{self, CompactRange, Hash};
use edge_core::note::{Checkpoint, NoteSigner};
use rusqlite::{Connection, params};
use tokio::sync::oneshot;

use crate::events::{ProposalEvent, ProposalEvents};
use crate::store::fold;
use crate::store::index::LogIndex;
use crate::store::tree::{self, StoredTree};

/// Set on every connection that writes (the tables are in `crate::store::schema`).
const PRAGMAS: &str = "
PRAGMA journal_mode = WAL;
PRAGMA synchronous = FULL;
";

/// Most appends committed in one transaction.
const MAX_BATCH: usize = 4096;

/// Longest a deferred append waits for a request that commits it (a
/// barrier's flush, an append someone waits for, a checkpoint): records
/// queued and then abandoned (a run dropped before its barrier) are still
/// committed, and a record's time is at most this late. Tests make it long,
/// so that whether a barrier or the timer committed a record is not left to
/// the scheduler.
const LINGER: Duration = if cfg!(test) { Duration::from_secs(3) } else { Duration::from_millis(5) };

/// When the writer commits an append or an artifact.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Commit {
    /// At once: its sender waits for it.
    Now,
    /// With the next request that commits, or [`LINGER`] after it was
    /// taken: a run's records between two barriers are one commit (one
    /// flush of the disk), not one each.
    Deferred,
}

enum Request {
    Append {
        run: String,
        event: Box<Event>,
        pinned: Option<Pinned>,
        commit: Commit,
        reply: oneshot::Sender<Result<Record>>,
    },
    Artifact {
        digest: Sha256Digest,
        bytes: Arc<Vec<u8>>,
        commit: Commit,
        reply: oneshot::Sender<Result<Sha256Digest>>,
    },
    /// Commit everything queued before it now (a barrier: its sender waits
    /// for the replies of its deferred appends).
    Flush,
    Checkpoint {
        signer: Arc<NoteSigner>,
        origin: String,
        reply: oneshot::Sender<Result<String>>,
    },
    /// Answered once the writer has taken everything queued before it
    /// (and committed it), or with why it commits nothing any more: how a
    /// readiness probe tells a working writer from a failed or wedged one.
    Ping {
        reply: oneshot::Sender<Result<()>>,
    },
    /// Commit nothing more in this process: the log was found altered.
    Poison {
        why: String,
    },
    /// A clean close, once everything queued before it is committed: the
    /// WAL folded into the database and truncated, the newest checkpoint
    /// kept outside it ([`close_store`]); nothing is committed after it.
    Close {
        reply: oneshot::Sender<()>,
    },
}

impl Request {
    /// Whether taking this request commits the batch at once.
    fn commits_now(&self) -> bool {
        match self {
            Self::Append { commit, .. } | Self::Artifact { commit, .. } => *commit == Commit::Now,
            Self::Checkpoint { .. } | Self::Flush | Self::Ping { .. } | Self::Poison { .. } | Self::Close { .. } => {
                true
            }
        }
    }
}

/// Where a record must land, for a record that signs its own position (a
/// key rotation: `edge_core::rotation::Statement` binds `seq`, `prev` and
/// `time`). The writer refuses the append, and writes nothing, when the log
/// is no longer there; it writes the record with exactly this time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pinned {
    pub seq: u64,
    pub prev: Sha256Digest,
    pub time: String,
}

/// A reply from the writer, awaited (async callers) or waited for.
type Reply<T> = oneshot::Receiver<Result<T>>;

async fn received<T>(rx: Reply<T>) -> Result<T> {
    rx.await.map_err(|_| anyhow!("the evidence writer stopped"))?
}

/// Wait for a future on this thread, with or without a runtime around it
/// (the writer's replies need no runtime to complete).
fn wait<F: std::future::Future>(f: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl std::task::Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = std::task::Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = std::task::Context::from_waker(&waker);
    let mut f = std::pin::pin!(f);
    loop {
        if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park();
    }
}

/// Artifact digests a [`StoreHandle`] remembers as durable, at most.
const KNOWN_MAX: usize = 1 << 16;

/// A cloneable handle: appends from any thread, acknowledged once durable.
#[derive(Clone, Debug)]
pub struct StoreHandle {
    tx: inbox::Sender<Request>,
    /// Digests of artifacts this process knows are durable in the store:
    /// storing one again is a no-op that need not wait for a commit. Filled
    /// as artifacts are stored, not read from the store at open (that grew
    /// start-up and memory with the log), and bounded ([`KNOWN_MAX`]): a
    /// digest not in it costs one idempotent insert, nothing more.
    known: Arc<edge_core::bounded::BoundedMap<Sha256Digest, ()>>,
}

impl StoreHandle {
    /// Append a record; returns once it is durable.
    ///
    /// # Errors
    /// If the transaction could not be committed (nothing was acknowledged).
    pub fn append(&self, run: &str, event: Event) -> Result<Record> {
        wait(received(self.send_append(run, event, None, Commit::Now)?))
    }

    /// Queue a request for the writer, ringing for it only if it must act now.
    fn send(&self, request: Request) -> Result<()> {
        let urgent = request.commits_now();
        self.tx.send(request, urgent).map_err(|_| anyhow!("the evidence writer stopped"))
    }

    /// Queue an append; the receiver yields the record once it is durable.
    fn send_append(&self, run: &str, event: Event, pinned: Option<Pinned>, commit: Commit) -> Result<Reply<Record>> {
        let (reply, rx) = oneshot::channel();
        self.send(Request::Append { run: run.to_owned(), event: Box::new(event), pinned, commit, reply })?;
        Ok(rx)
    }

    /// Queue an artifact unless it is known durable already.
    fn send_artifact(&self, bytes: &[u8], commit: Commit) -> Result<(Sha256Digest, Option<Reply<Sha256Digest>>)> {
        self.send_artifact_digested(Sha256Digest::of(bytes), bytes, commit)
    }

    fn send_artifact_digested(
        &self,
        digest: Sha256Digest,
        bytes: &[u8],
        commit: Commit,
    ) -> Result<(Sha256Digest, Option<Reply<Sha256Digest>>)> {
        self.send_artifact_shared(digest, || Arc::new(bytes.to_vec()), commit)
    }

    /// Queue an artifact unless it is known durable already; `bytes` is
    /// only asked for then.
    fn send_artifact_shared(
        &self,
        digest: Sha256Digest,
        bytes: impl FnOnce() -> Arc<Vec<u8>>,
        commit: Commit,
    ) -> Result<(Sha256Digest, Option<Reply<Sha256Digest>>)> {
        if self.known.contains(&digest) {
            return Ok((digest, None));
        }
        let (reply, rx) = oneshot::channel();
        self.send(Request::Artifact { digest, bytes: bytes(), commit, reply })?;
        Ok((digest, Some(rx)))
    }

    fn artifact_durable(&self, d: Sha256Digest) {
        self.known.insert(d, ());
    }

    /// Store an artifact (content-addressed, idempotent); returns once durable.
    ///
    /// # Errors
    /// As [`StoreHandle::append`].
    pub fn put_artifact(&self, bytes: &[u8]) -> Result<Sha256Digest> {
        let (digest, rx) = self.send_artifact(bytes, Commit::Now)?;
        if let Some(rx) = rx {
            self.artifact_durable(wait(received(rx))?);
        }
        Ok(digest)
    }

    fn send_checkpoint(&self, signer: Arc<NoteSigner>, origin: &str) -> Result<Reply<String>> {
        let (reply, rx) = oneshot::channel();
        self.send(Request::Checkpoint { signer, origin: origin.to_owned(), reply })?;
        Ok(rx)
    }
}

/// The writer thread's state.
struct Writer {
    db: Connection,
    next_seq: u64,
    prev: Sha256Digest,
    range: CompactRange,
    head: Arc<Mutex<Head>>,
    index: Arc<RwLock<LogIndex>>,
    /// Lifecycle changes of proposals, sent once their records are durable.
    events: ProposalEvents,
    /// Tree hashes the readers keep: the writer adds those it commits.
    nodes: Arc<tree::NodeCache>,
    /// Set when a commit failed: nothing is committed after it in this
    /// process, so a run can never have a hole in its records.
    poisoned: Option<String>,
    /// The store's directory (where the newest checkpoint is kept at the close).
    dir: PathBuf,
}

impl Writer {
    fn run(mut self, rx: inbox::Receiver<Request>) {
        // Everything waiting goes into one transaction; deferred appends
        // wait (at most `LINGER`) for a request that commits them.
        while let Some(batch) = rx.next_batch(LINGER, Request::commits_now) {
            self.commit(batch);
        }
    }

    /// Commit a batch in one transaction; acknowledge each request after.
    fn commit(&mut self, batch: Vec<Request>) {
        // A poison comes first: nothing queued with it is committed.
        for r in &batch {
            if let Request::Poison { why } = r {
                self.poisoned.get_or_insert_with(|| why.clone());
            }
        }
        // A flush only asked for this commit.
        let batch: Vec<Request> =
            batch.into_iter().filter(|r| !matches!(r, Request::Poison { .. } | Request::Flush)).collect();
        // Pings and a close touch nothing: taken after what was queued
        // with them.
        let (after, batch): (Vec<Request>, Vec<Request>) =
            batch.into_iter().partition(|r| matches!(r, Request::Ping { .. } | Request::Close { .. }));
        if !batch.is_empty() {
            self.commit_batch(batch);
        }
        for r in after {
            match r {
                Request::Close { reply } => {
                    // On this connection: its schema is parsed and its WAL
                    // handle open (and its directory flushed) already.
                    close_store(&self.db, &self.dir);
                    self.poisoned.get_or_insert_with(|| "the evidence log is closed".to_owned());
                    let _ = reply.send(());
                }
                ping => {
                    let r = match &self.poisoned {
                        Some(why) => Err(why.clone()),
                        None => Ok(Outcome::Pong),
                    };
                    reply(ping, r);
                }
            }
        }
    }

    fn commit_batch(&mut self, batch: Vec<Request>) {
        if let Some(why) = &self.poisoned {
            for req in batch {
                reply(req, Err(why.clone()));
            }
            return;
        }
        let mut results: Vec<Result<Outcome, String>> = Vec::with_capacity(batch.len());
        let mut new_records = Vec::new();
        let mut new_nodes = Vec::new();
        let tx_result = (|| -> rusqlite::Result<()> {
            let tx = self.db.transaction()?;
            // Checkpoints asked for in this batch, signed together once the
            // records before them are in (`sign_checkpoints`).
            let mut asked: Vec<usize> = Vec::new();
            for (i, req) in batch.iter().enumerate() {
                if let Request::Append { event, .. } = req
                    && is_key_record(event)
                {
                    // A checkpoint is signed by the key in force at its
                    // size: one asked for before a key record is signed
                    // before it.
                    sign_checkpoints(&tx, (self.next_seq, &self.range), &batch, &mut asked, &mut results)?;
                }
                let r = match req {
                    Request::Append { pinned: Some(p), .. } if (p.seq, p.prev) != (self.next_seq, self.prev) => {
                        Err(format!(
                            "the record was signed for position {} after {}, but the log is at {} after {}: \
                             nothing was written",
                            p.seq, p.prev, self.next_seq, self.prev
                        ))
                    }
                    Request::Append { run, event, pinned, .. } => {
                        let record = Record {
                            schema: RECORD_SCHEMA.to_owned(),
                            seq: self.next_seq,
                            time: pinned
                                .as_ref()
                                .map_or_else(|| jiff::Timestamp::now().to_string(), |p| p.time.clone()),
                            run: run.clone(),
                            prev: self.prev,
                            event: (**event).clone(),
                        };
                        match record.canonical_bytes() {
                            Ok(body) => {
                                let hash = Sha256Digest::of(&body);
                                tx.prepare_cached(
                                    "INSERT INTO records (seq, run, type, time, prev, hash, body) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                                )?
                                .execute(params![
                                        record.seq as i64,
                                        record.run,
                                        record.event_type(),
                                        record.time,
                                        record.prev.to_string(),
                                        hash.to_string(),
                                        std::str::from_utf8(&body).expect("canonical JSON is UTF-8"),
                                ])?;
                                let mut stored = Ok(());
                                self.range.push_reporting(merkle::leaf_hash(&body), |level, index, hash| {
                                    if stored.is_ok() {
                                        stored = tree::insert(&tx, level, index, hash);
                                        new_nodes.push((level, index, *hash));
                                    }
                                });
                                stored?;
                                self.next_seq += 1;
                                self.prev = hash;
                                new_records.push(record.clone());
                                Ok(Outcome::Record(Box::new(record)))
                            }
                            Err(e) => Err(e.to_string()),
                        }
                    }
                    Request::Artifact { digest, bytes, .. } => {
                        let d = *digest;
                        // One already stored (a capsule's component, run
                        // again) is not copied into the statement again.
                        let key = d.to_string();
                        let stored =
                            tx.prepare_cached("SELECT 1 FROM artifacts WHERE digest = ?1")?.exists(params![key])?;
                        if !stored {
                            tx.prepare_cached(
                                "INSERT OR IGNORE INTO artifacts (digest, size, bytes) VALUES (?1, ?2, ?3)",
                            )?
                            .execute(params![key, bytes.len() as i64, &bytes[..]])?;
                        }
                        Ok(Outcome::Artifact(d))
                    }
                    Request::Ping { .. } | Request::Poison { .. } | Request::Flush | Request::Close { .. } => {
                        unreachable!("pings, poisons, flushes and closes are taken out of the batch")
                    }
                    Request::Checkpoint { .. } => {
                        asked.push(i);
                        // (Answered by `sign_checkpoints`.)
                        Err(String::new())
                    }
                };
                results.push(r);
            }
            sign_checkpoints(&tx, (self.next_seq, &self.range), &batch, &mut asked, &mut results)?;
            tx.commit()
        })();
        if let Err(e) = tx_result {
            // Nothing of the batch is durable: refuse it, and (poisoned)
            // everything after it, so the writer's view is never used again.
            self.poisoned =
                Some(format!("an earlier evidence commit failed ({e}); nothing more is accepted: restart the runner"));
            for req in batch {
                let msg = format!("the evidence store could not commit (nothing was acknowledged): {e}");
                reply(req, Err(msg));
            }
            return;
        }
        // Committed: the next receipt reads these from memory, not the store.
        for (level, index, hash) in new_nodes {
            self.nodes.put(level, index, hash);
        }
        *self.head.lock().expect("head lock") = Head { size: self.next_seq, root: self.range.root() };
        let mut changes = Vec::new();
        let mut load_error = None;
        {
            let mut index = self.index.write().expect("index lock");
            let db = &self.db;
            let mut load = |id: &str| {
                fold::proposal(db, id).unwrap_or_else(|e| {
                    load_error.get_or_insert(e);
                    None
                })
            };
            for r in &new_records {
                changes.extend(index.push_with(r, &mut load));
            }
        }
        // The records are durable (their appends succeed); a fold that
        // cannot be read or kept stops the writer, as a failed commit does
        // (the next start folds the records again).
        // (A batch of artifacts or checkpoints alone changes no fold.)
        let kept = match load_error {
            Some(e) => Err(e),
            None if new_records.is_empty() => Ok(()),
            None => self.keep_fold(),
        };
        if let Err(e) = kept {
            tracing::error!(error = %format!("{e:#}"), "cannot keep the fold of the evidence log; no more records are accepted");
            self.poisoned = Some(format!(
                "the fold of the evidence log could not be kept ({e:#}); nothing more is accepted: restart the runner"
            ));
        }
        for r in &new_records {
            crate::logging::record(r);
        }
        // Durable and folded: a subscriber reading the proposal back sees
        // the state it is told of. Sending never waits.
        for e in changes {
            self.events.emit(e);
        }
        for (req, r) in batch.into_iter().zip(results) {
            reply(req, r);
        }
    }
}

/// Sign the checkpoints `asked` for (indexes into `batch`) at the size
/// the log has now, and store them: one signature for every request
/// with the same key and origin. Each covers the records queued before
/// its request (they are in the batch before it, or committed), and a
/// few after it: a checkpoint of a larger tree proves the same
/// inclusion. Under load this is one signature and one row per commit
/// instead of one per run.
fn sign_checkpoints(
    tx: &rusqlite::Transaction<'_>,
    (size, range): (u64, &CompactRange),
    batch: &[Request],
    asked: &mut Vec<usize>,
    results: &mut [Result<Outcome, String>],
) -> rusqlite::Result<()> {
    // (Most commits ask for none: the root is computed only when one does.)
    if asked.is_empty() {
        return Ok(());
    }
    let root = range.root();
    let mut signed: Vec<(&Arc<NoteSigner>, &str, Result<String, String>)> = Vec::new();
    for i in asked.drain(..) {
        let Request::Checkpoint { signer, origin, .. } = &batch[i] else {
            unreachable!("only checkpoint requests are asked for")
        };
        let found = signed.iter().find(|(s, o, _)| Arc::ptr_eq(s, signer) && o == origin);
        let note = match found {
            Some((.., note)) => note.clone(),
            None => {
                let cp = Checkpoint { origin: origin.clone(), size, root };
                let note = signer.sign(&cp.text()).map_err(|e| e.to_string());
                if let Ok(note) = &note {
                    tx.prepare_cached(
                        "INSERT OR IGNORE INTO checkpoints (size, root, note, time) VALUES (?1, ?2, ?3, ?4)",
                    )?
                    .execute(params![
                        cp.size as i64,
                        base64_std(&cp.root),
                        note,
                        jiff::Timestamp::now().to_string()
                    ])?;
                }
                signed.push((signer, origin, note.clone()));
                note
            }
        };
        results[i] = note.map(Outcome::Checkpoint);
    }
    Ok(())
}

impl Writer {
    /// Store what the last batch changed in the fold, in a transaction of
    /// its own that does not wait for the disk (derived state: the next
    /// durable commit carries it, and a start folds again what a crash
    /// lost), then let memory forget what it need not keep.
    fn keep_fold(&mut self) -> Result<()> {
        let changes = self.index.write().expect("index lock").changes();
        // (Cached statements: this runs after every commit.)
        self.db.prepare_cached("PRAGMA synchronous = OFF")?.execute([])?;
        let stored = (|| -> Result<()> {
            let tx = self.db.transaction()?;
            fold::store(&tx, &changes)?;
            Ok(tx.commit()?)
        })();
        self.db.prepare_cached("PRAGMA synchronous = FULL")?.execute([])?;
        stored?;
        self.index.write().expect("index lock").stored(&changes);
        Ok(())
    }
}

enum Outcome {
    Record(Box<Record>),
    Artifact(Sha256Digest),
    Checkpoint(String),
    Pong,
}

fn reply(req: Request, r: Result<Outcome, String>) {
    match (req, r) {
        (Request::Append { reply, .. }, Ok(Outcome::Record(rec))) => drop(reply.send(Ok(*rec))),
        (Request::Artifact { reply, .. }, Ok(Outcome::Artifact(d))) => drop(reply.send(Ok(d))),
        (Request::Checkpoint { reply, .. }, Ok(Outcome::Checkpoint(n))) => drop(reply.send(Ok(n))),
        (Request::Append { reply, .. }, Err(e)) => drop(reply.send(Err(anyhow!(e)))),
        (Request::Artifact { reply, .. }, Err(e)) => drop(reply.send(Err(anyhow!(e)))),
        (Request::Checkpoint { reply, .. }, Err(e)) => drop(reply.send(Err(anyhow!(e)))),
        (Request::Ping { reply }, Ok(Outcome::Pong)) => drop(reply.send(Ok(()))),
        (Request::Ping { reply }, Err(e)) => drop(reply.send(Err(anyhow!(e)))),
        (Request::Poison { .. } | Request::Flush | Request::Close { .. }, _) => {}
        _ => unreachable!("each request gets its own kind of outcome"),
    }
}

/// A record that changes the key checkpoints are signed with.
fn is_key_record(event: &Event) -> bool {
    matches!(event, Event::KeyEvent { .. } | Event::KeyRotation { .. })
}

fn base64_std(b: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(b)
}

/// Why the evidence writer cannot take records (so the runner is not ready).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WriterUnhealthy {
    /// A commit failed; nothing is committed after it in this process.
    #[error("the evidence writer failed: {0}")]
    Failed(String),
    /// It did not answer in time (a disk that stopped answering, say).
    #[error("the evidence writer has not answered for {}s", .0.as_secs_f32())]
    Wedged(Duration),
    /// Its thread is gone.
    #[error("the evidence writer stopped; restart the runner")]
    Stopped,
}

/// An open, verified evidence store, for one runner process. Shared by
/// concurrent runs: each appends through its own [`RunLog`].
#[derive(Debug)]
pub struct EvidenceLog {
    handle: StoreHandle,
    dir: PathBuf,
    /// The fold of every durable record (the writer folds records in on
    /// commit, before acknowledging them).
    index: Arc<RwLock<LogIndex>>,
    /// The size and root of the durable log as this process verified and
    /// extended it: what every record read back is checked against.
    head: Arc<Mutex<Head>>,
    /// Read-only connections, reused (proofs, records and artifacts read
    /// back while the writer appends).
    readers: Readers,
    /// Tree hashes read back or committed, kept (they never change).
    nodes: Arc<tree::NodeCache>,
    /// Nanoseconds spent waiting for durability, by every run.
    durable_wait: Arc<AtomicU64>,
    /// Proposal lifecycle events, for subscribers (`crate::events`).
    events: ProposalEvents,
    /// What the open read (taken by the start's check).
    at_open: Mutex<Option<AtOpen>>,
    /// Dropped with the log: stops the WAL checkpointer (joined in `Drop`,
    /// before the writer closes the store).
    stop_checkpoints: Option<mpsc::Sender<()>>,
    wal_thread: Option<std::thread::JoinHandle<()>>,
    _lock: std::fs::File,
}

/// The records the store held at open, and its newest checkpoint then
/// (size, signed note).
#[derive(Debug)]
struct AtOpen {
    records: u64,
    newest: Option<(u64, String)>,
}

impl Drop for EvidenceLog {
    fn drop(&mut self) {
        // The periodic checkpoints stop first: the close's must not wait
        // for one.
        drop(self.stop_checkpoints.take());
        if let Some(t) = self.wal_thread.take() {
            let _ = t.join();
        }
        // Then the writer commits what is queued (a request nobody waits
        // for is not cut short by the process's exit) and closes the store.
        let (reply, rx) = oneshot::channel();
        if self.handle.send(Request::Close { reply }).is_ok() && wait(rx).is_ok() {
            return;
        }
        // The writer is gone (it panicked): the close from a connection of
        // its own.
        match Connection::open(self.dir.join("evidence.db")) {
            Ok(db) => close_store(&db, &self.dir),
            Err(e) => tracing::warn!(error = %e, "cannot open the evidence store to close it"),
        }
    }
}

/// A clean close of the store: everything into the database file and the
/// WAL truncated (a deleted `-wal` file then loses nothing), and the newest
/// checkpoint kept outside it. The two wait on the disk apart, so they run
/// at once: the checkpoint's records are durable in the WAL already,
/// whether or not it has been folded. Failures are logged: there is no one
/// left to tell, and the next start checks the store either way.
fn close_store(db: &Connection, dir: &Path) {
    let newest = crate::store::trust::newest_checkpoint_row(db);
    std::thread::scope(|s| {
        s.spawn(|| {
            if let Err(e) = newest.and_then(|n| crate::store::trust::publish_note(dir, n)) {
                tracing::warn!(error = %format!("{e:#}"), "cannot keep the latest checkpoint");
            }
        });
        // Readers of other processes (an export) may hold the WAL a moment.
        let folded = db
            .busy_timeout(Duration::from_secs(5))
            .and_then(|()| db.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get::<_, i64>(0)));
        match folded {
            Ok(0) => {}
            Ok(_) => tracing::warn!("final WAL checkpoint could not finish: the WAL is folded at the next start"),
            Err(e) => tracing::warn!(error = %e, "final WAL checkpoint failed"),
        }
    });
}

/// How often the WAL is copied into the database.
const WAL_CHECKPOINT_EVERY: Duration = Duration::from_millis(500);
/// Every how many WAL rounds the latest checkpoint file is rewritten (5 s).
const PUBLISH_EVERY: u32 = 10;

/// One run's (or one task's) appends: deferred until a barrier, which
/// makes them durable together (group commit across concurrent runs) and
/// keeps the run's own records.
#[derive(Debug)]
pub struct RunLog {
    handle: StoreHandle,
    durable_wait: Arc<AtomicU64>,
    pending: Vec<Pending>,
    records: Vec<Record>,
}

#[derive(Debug)]
enum Pending {
    Record(Reply<Record>),
    Artifact(Reply<Sha256Digest>),
}

impl RunLog {
    /// Queue an append without waiting for it to become durable. The
    /// caller must call [`RunLog::barrier`] before any effect the records
    /// announce (running a guest, touching a live mount or a journal,
    /// answering a client).
    ///
    /// # Errors
    /// If the writer has stopped.
    pub fn append_deferred(&mut self, run: &str, event: Event) -> Result<()> {
        let rx = self.handle.send_append(run, event, None, Commit::Deferred)?;
        self.pending.push(Pending::Record(rx));
        Ok(())
    }

    /// Queue an artifact (content-addressed, idempotent); it is durable by
    /// the next barrier, before any record queued after it.
    ///
    /// # Errors
    /// If the writer has stopped.
    pub fn put_artifact(&mut self, bytes: &[u8]) -> Result<Sha256Digest> {
        let (d, rx) = self.handle.send_artifact(bytes, Commit::Deferred)?;
        self.pending.extend(rx.map(Pending::Artifact));
        Ok(d)
    }

    /// As [`RunLog::put_artifact`], for bytes whose digest the caller's
    /// types already prove (a parsed capsule's component): no re-hashing.
    ///
    /// # Errors
    /// If the writer has stopped.
    pub fn put_artifact_digested(&mut self, digest: Sha256Digest, bytes: &[u8]) -> Result<Sha256Digest> {
        let (d, rx) = self.handle.send_artifact_digested(digest, bytes, Commit::Deferred)?;
        self.pending.extend(rx.map(Pending::Artifact));
        Ok(d)
    }

    /// As [`RunLog::put_artifact_digested`], for bytes held shared (a
    /// capsule's component): queued without a copy.
    ///
    /// # Errors
    /// If the writer has stopped.
    pub fn put_artifact_shared(&mut self, digest: Sha256Digest, bytes: Arc<Vec<u8>>) -> Result<Sha256Digest> {
        let (d, rx) = self.handle.send_artifact_shared(digest, || bytes, Commit::Deferred)?;
        self.pending.extend(rx.map(Pending::Artifact));
        Ok(d)
    }

    /// Wait until everything queued is durable.
    ///
    /// # Errors
    /// If any of it could not be made durable (the writer then refuses
    /// everything after it in this process).
    pub async fn barrier(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        // (A writer gone fails the replies awaited below.)
        let _ = self.handle.send(Request::Flush);
        self.settle().await
    }

    /// Wait for the replies to everything queued (committed by a flush or a
    /// checkpoint sent after it, or by the writer's timer).
    async fn settle(&mut self) -> Result<()> {
        let t0 = Instant::now();
        let mut first_error = None;
        for p in std::mem::take(&mut self.pending) {
            let r = match p {
                Pending::Record(rx) => received(rx).await.map(|r| self.records.push(r)),
                Pending::Artifact(rx) => received(rx).await.map(|d| self.handle.artifact_durable(d)),
            };
            if let Err(e) = r {
                first_error.get_or_insert(e);
            }
        }
        self.waited(t0);
        first_error.map_or(Ok(()), Err)
    }

    /// Append a record and make it (and everything queued before) durable.
    ///
    /// # Errors
    /// As [`RunLog::barrier`].
    pub async fn append(&mut self, run: &str, event: Event) -> Result<Record> {
        self.append_deferred(run, event)?;
        self.barrier().await?;
        Ok(self.records.last().expect("just appended").clone())
    }

    /// Take over `other`'s records and pending appends, made after this
    /// log's (a phase that recorded on its own thread hands its log back).
    pub fn absorb(&mut self, other: RunLog) {
        self.records.extend(other.records);
        self.pending.extend(other.pending);
    }

    /// This run's durable records, in order.
    pub fn records(&self) -> &[Record] {
        &self.records
    }

    /// Hand over this run's durable records (the run is over).
    pub fn take_records(&mut self) -> Vec<Record> {
        std::mem::take(&mut self.records)
    }

    /// Make everything queued durable and sign a checkpoint covering it, in
    /// the same commit when the writer takes them together (the checkpoint
    /// is queued after this run's records, so it includes them).
    ///
    /// # Errors
    /// As [`RunLog::barrier`], or if the checkpoint cannot be stored.
    pub async fn barrier_with_checkpoint(&mut self, signer: &Arc<NoteSigner>, origin: &str) -> Result<String> {
        // The checkpoint commits what was queued before it: no flush.
        let rx = self.handle.send_checkpoint(signer.clone(), origin)?;
        self.settle().await?;
        let t0 = Instant::now();
        let r = received(rx).await;
        self.waited(t0);
        r
    }

    fn waited(&self, since: Instant) {
        self.durable_wait.fetch_add(since.elapsed().as_nanos() as u64, Ordering::Relaxed);
    }
}

impl EvidenceLog {
    /// Open (creating if needed) the store in `dir`, take the lock, and verify
    /// every record's canonical form and chain link.
    ///
    /// # Errors
    /// If the store is locked by another runner, unreadable, or fails verification.
    pub fn open(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create evidence directory {}", dir.display()))?;
        let lock = lock_file(dir)?;
        lock.try_lock().map_err(|_| {
            anyhow!(
                "the evidence store {} is in use by another runner process (`serve` while it starts or stops, \
                     another `exec`, `keys rotate`); once a runner serves it, `exec` hands its run to that runner",
                dir.display()
            )
        })?;
        if dir.join("log.jsonl").exists() {
            bail!(
                "{} holds a JSONL evidence log from an earlier runner version; this version stores evidence in SQLite: \
                 keep that log for your records and use a fresh state directory",
                dir.display()
            );
        }
        let path = dir.join("evidence.db");
        // Before anything opens it for writing (which could change its
        // header): a store written by a newer runner is refused untouched.
        crate::store::schema::refuse_newer(&path)?;
        let mut db =
            Connection::open(&path).with_context(|| format!("cannot open evidence store {}", path.display()))?;
        db.execute_batch(PRAGMAS).with_context(|| format!("cannot initialise {}", path.display()))?;
        crate::store::schema::prepare(&mut db, &path)?;
        let mode: String = db.query_row("PRAGMA journal_mode", [], |r| r.get(0))?;
        if mode != "wal" {
            bail!("{} is not in WAL mode ({mode})", path.display());
        }
        // Commits only append to the WAL; copying it into the database (and
        // that fsync) happens on the checkpointer thread, never inside a
        // commit that runs are waiting for.
        db.pragma_update(None, "wal_autocheckpoint", 0)?;
        let (stop_checkpoints, stopped) = mpsc::channel::<()>();
        let (published, db_path) = (dir.to_path_buf(), path.clone());
        let wal_thread = std::thread::Builder::new().name("evidence-wal".into()).spawn(move || {
            // Until the log is closed (the sender dropped). Every
            // PUBLISH_EVERY rounds the newest signed checkpoint is also kept
            // outside the database: its durable write (two fsyncs, one of a
            // directory) slows the commits runs wait for, so not every round.
            // Its connection is opened at the first round: a process that
            // closes the log sooner (one `exec`) never needs it.
            let mut checkpointer = None;
            let mut round = 0u32;
            while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(WAL_CHECKPOINT_EVERY) {
                if checkpointer.is_none() {
                    match Connection::open(&db_path).and_then(|c| c.busy_timeout(Duration::from_secs(5)).map(|()| c)) {
                        Ok(c) => checkpointer = Some(c),
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot open the evidence store for WAL checkpoints; retrying")
                        }
                    }
                }
                let Some(checkpointer) = &checkpointer else { continue };
                if let Err(e) = checkpointer.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
                    tracing::warn!(error = %e, "WAL checkpoint failed; retrying");
                }
                round = round.wrapping_add(1);
                if round.is_multiple_of(PUBLISH_EVERY)
                    && let Err(e) = crate::store::trust::publish_latest(checkpointer, &published)
                {
                    tracing::warn!(error = %format!("{e:#}"), "cannot keep the latest checkpoint; retrying");
                }
            }
            // (The clean close is the writer's: `close_store`.)
        })?;
        let (records, leaves) = tree::sizes(&db)?;
        if leaves > records {
            bail!(
                "evidence store {}: its persisted Merkle tree covers {leaves} records but the store holds {records}: \
                 records {records}..{} are missing (rows deleted, or `evidence.db-wal` lost). Restore the state \
                 directory from a backup; do not start this runner on it",
                path.display(),
                leaves - 1
            );
        }
        if records > leaves {
            bail!(
                "evidence store {}: {} no hashes in its persisted Merkle tree (it covers {leaves}): the store was \
                 altered. Restore the state directory from a backup; do not start this runner on it",
                path.display(),
                if records - leaves == 1 {
                    format!("record {leaves} has")
                } else {
                    format!("records {leaves}..{} have", records - 1)
                }
            );
        }
        let newest = crate::store::trust::newest_checkpoint_row(&db)?;
        let (tail, fold) = resume(&db, dir, records, newest.as_ref().map(|(size, _)| *size)).with_context(|| {
            format!("evidence store {} failed verification; the runner refuses to run on a broken log", path.display())
        })?;
        let head = Arc::new(Mutex::new(Head { size: records, root: tail.range.root() }));
        let next_seq = records;
        let (range, prev) = (tail.range, tail.prev);
        let index = Arc::new(RwLock::new(fold));
        let events = ProposalEvents::default();
        let nodes = Arc::new(tree::NodeCache::default());
        nodes.put_border(&range);
        let at_open = AtOpen { records, newest };
        let writer = Writer {
            nodes: nodes.clone(),
            db,
            next_seq,
            prev,
            range,
            head: head.clone(),
            index: index.clone(),
            events: events.clone(),
            poisoned: None,
            dir: dir.to_path_buf(),
        };
        let (tx, rx) = inbox::inbox(MAX_BATCH);
        std::thread::Builder::new().name("evidence-writer".into()).spawn(move || writer.run(rx))?;
        Ok(Self {
            stop_checkpoints: Some(stop_checkpoints),
            wal_thread: Some(wal_thread),
            handle: StoreHandle { tx, known: Arc::new(edge_core::bounded::BoundedMap::new(KNOWN_MAX)) },
            dir: dir.to_path_buf(),
            index,
            head,
            readers: Readers { dir: dir.to_path_buf(), idle: Mutex::new(Vec::new()) },
            nodes,
            durable_wait: Arc::new(AtomicU64::new(0)),
            events,
            at_open: Mutex::new(Some(at_open)),
            _lock: lock,
        })
    }

    /// Proposal lifecycle events from now on, each sent once its record is
    /// durable and folded into [`EvidenceLog::index`] (`crate::events`).
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<ProposalEvent> {
        self.events.subscribe()
    }

    /// A handle for concurrent appenders (group commit).
    pub fn handle(&self) -> StoreHandle {
        self.handle.clone()
    }

    /// A fresh set of deferred appends for one run or task.
    pub fn run_log(&self) -> RunLog {
        RunLog {
            handle: self.handle.clone(),
            durable_wait: self.durable_wait.clone(),
            pending: Vec::new(),
            records: Vec::new(),
        }
    }

    /// Append a record and make it durable before returning (waits on this
    /// thread: for start-up and command-line paths; runs use [`RunLog`]).
    ///
    /// # Errors
    /// If it could not be made durable; nothing was acknowledged then.
    pub fn append(&self, run: &str, event: Event) -> Result<Record> {
        let t0 = Instant::now();
        let r = self.handle.append(run, event);
        self.account_durable_wait(t0.elapsed());
        r
    }

    /// Append a record at exactly the position and time it was made for
    /// ([`Pinned`]), durably.
    ///
    /// # Errors
    /// If the log has moved on (nothing is written), or as [`EvidenceLog::append`].
    pub fn append_pinned(&self, run: &str, event: Event, pinned: Pinned) -> Result<Record> {
        let t0 = Instant::now();
        let r = self.handle.send_append(run, event, Some(pinned), Commit::Now).and_then(|rx| wait(received(rx)));
        self.account_durable_wait(t0.elapsed());
        r
    }

    /// The position and `prev` the next record will have (exact while this
    /// process is the only appender).
    ///
    /// # Errors
    /// If the last record cannot be read back.
    pub fn tip(&self) -> Result<(u64, Sha256Digest)> {
        let n = self.len();
        if n == 0 {
            return Ok((0, GENESIS));
        }
        let last = self.read_records_at(&[n - 1])?.pop().context("the last record")?;
        Ok((n, last.hash()?))
    }

    /// Store an artifact content-addressed; returns its digest once durable.
    ///
    /// # Errors
    /// On I/O failure.
    pub fn put_artifact(&self, bytes: &[u8]) -> Result<Sha256Digest> {
        let t0 = Instant::now();
        let r = self.handle.put_artifact(bytes);
        self.account_durable_wait(t0.elapsed());
        r
    }

    /// Whether the writer is working: it answers within `within`, after
    /// committing everything queued before the question, and has not
    /// failed (a failed commit stops it for good: restart the runner).
    ///
    /// # Errors
    /// Why not, for a readiness probe and the systemd watchdog.
    pub async fn writer_health(&self, within: Duration) -> Result<(), WriterUnhealthy> {
        let (reply, rx) = oneshot::channel();
        self.handle.send(Request::Ping { reply }).map_err(|_| WriterUnhealthy::Stopped)?;
        match tokio::time::timeout(within, rx).await {
            Err(_) => Err(WriterUnhealthy::Wedged(within)),
            Ok(Err(_)) => Err(WriterUnhealthy::Stopped),
            Ok(Ok(Err(e))) => Err(WriterUnhealthy::Failed(format!("{e:#}"))),
            Ok(Ok(Ok(()))) => Ok(()),
        }
    }

    /// Stop the writer for good: nothing more is committed in this process
    /// (appends fail, readiness reports `why`). For a log found altered
    /// while serving (the background full check).
    pub fn poison(&self, why: String) {
        // A writer already gone accepts nothing anyway.
        let _ = self.handle.send(Request::Poison { why });
    }

    /// Append `events` and sign a checkpoint covering them, waiting until all
    /// of it is durable: one commit when the writer takes them together
    /// (they are queued back to back), where an append and a checkpoint
    /// each would be a commit (and a disk flush) of their own. For the
    /// records of a start.
    ///
    /// # Errors
    /// If any of it could not be made durable (the first error).
    pub fn append_with_checkpoint(
        &self,
        run: &str,
        events: Vec<Event>,
        signer: &Arc<NoteSigner>,
        origin: &str,
    ) -> Result<String> {
        // A run's deferred appends and barrier, waited for on this thread.
        wait(self.deferred(run, events)?.barrier_with_checkpoint(signer, origin))
    }

    /// `events` appended, deferred, on a run log of their own.
    fn deferred(&self, run: &str, events: Vec<Event>) -> Result<RunLog> {
        let mut log = self.run_log();
        for e in events {
            log.append_deferred(run, e)?;
        }
        Ok(log)
    }

    /// [`EvidenceLog::append_with_checkpoint`] without waiting for the
    /// commit: for a process that appends and waits again at once (a
    /// one-capsule `exec`), so the commit's disk flushes overlap its next
    /// steps. (Left for the run's first barrier to commit, the two
    /// commits became one, but nothing overlapped the flush: slower.)
    /// Commits are made in the order they are queued, so the next wait on
    /// this log covers this one; if it fails, the writer accepts nothing
    /// more, and every later append fails naming the cause.
    ///
    /// # Errors
    /// If the writer has stopped.
    pub fn queue_with_checkpoint(
        &self,
        run: &str,
        events: Vec<Event>,
        signer: &Arc<NoteSigner>,
        origin: &str,
    ) -> Result<()> {
        // Answered to nobody: the next wait on the log covers them.
        let log = self.deferred(run, events)?;
        drop(log.handle.send_checkpoint(signer.clone(), origin)?);
        Ok(())
    }

    /// Sign a checkpoint of the whole log with the runner's identity key and store it.
    ///
    /// # Errors
    /// If it cannot be stored.
    pub fn checkpoint(&self, signer: &Arc<NoteSigner>, origin: &str) -> Result<String> {
        let t0 = Instant::now();
        let r = self.handle.send_checkpoint(signer.clone(), origin).and_then(|rx| wait(received(rx)));
        self.account_durable_wait(t0.elapsed());
        r
    }

    /// The fold of every durable record so far (built at open, then
    /// updated as records are acknowledged). Hold the guard briefly, and
    /// never while waiting for an append: the writer needs it to publish a
    /// commit.
    pub fn index(&self) -> RwLockReadGuard<'_, LogIndex> {
        self.index.read().expect("index lock")
    }

    /// A proposal's view: from memory when the runner is working on it, else
    /// from the store.
    ///
    /// # Errors
    /// If the store cannot be read.
    pub fn proposal(&self, id: &str) -> Result<Option<ProposalView>> {
        if let Some(v) = self.index().proposals.get(id) {
            return Ok(Some(v.clone()));
        }
        let db = self.readers.get()?;
        fold::proposal(&db, id)
    }

    /// The record at which `key` was spent as `kind` (a nonce consumed, a
    /// proposal executed, settled or expired), if it was.
    ///
    /// # Errors
    /// If the store cannot be read.
    pub fn spent(&self, kind: fold::Spent, key: &str) -> Result<Option<u64>> {
        if let Some(seq) = kind.of(&self.index().settlements).get(key) {
            return Ok(Some(*seq));
        }
        // Not in memory: stored before memory forgot it, or never spent.
        let db = self.readers.get()?;
        fold::spent(&db, kind, key)
    }

    /// Run `f` on a read-only connection of the log's pool (outside any
    /// transaction: each statement reads the newest durable state).
    ///
    /// # Errors
    /// If no connection can be opened, or as `f`.
    pub(crate) fn with_reader<T>(&self, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        let db = self.readers.get()?;
        f(&db)
    }

    /// One page of proposals, newest first, with each one's first record
    /// (the cursor for the next page). Reads the store through its own
    /// connection: never holds anything the writer needs.
    ///
    /// # Errors
    /// If the store cannot be read.
    pub fn proposals(&self, q: &fold::Query) -> Result<Vec<(u64, ProposalView)>> {
        let db = self.readers.get()?;
        fold::page(&db, q)
    }

    /// Proposals by lifecycle state and tier.
    ///
    /// # Errors
    /// If the store cannot be read.
    pub fn proposal_counts(&self) -> Result<Vec<(String, Option<u8>, u64)>> {
        let db = self.readers.get()?;
        fold::counts(&db)
    }

    /// The Merkle root of the first `size` records, if the log has them.
    ///
    /// # Errors
    /// If the stored tree cannot be read.
    pub fn root_at(&self, size: u64) -> Result<Option<Hash>> {
        let head = self.head();
        if size >= head.size {
            return Ok((size == head.size).then_some(head.root));
        }
        self.with_tree(|t| merkle::root_of(t, size).map_err(|e| anyhow!("the stored Merkle tree: {e}")))?.map(Some)
    }

    /// The size and root of the durable log.
    fn head(&self) -> Head {
        *self.head.lock().expect("head lock")
    }

    /// Records in the log.
    pub fn len(&self) -> u64 {
        self.index().records
    }

    /// Whether the log has no records.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Read every record back from the store (for tools and tests; the
    /// runner itself works from [`EvidenceLog::index`]).
    ///
    /// # Errors
    /// If the store cannot be read or fails verification.
    pub fn read_records(&self) -> Result<Vec<Record>> {
        Ok(load_verified(&self.dir)?.0)
    }

    /// An artifact's bytes from the store, if it holds them (checked
    /// against the digest before they are returned).
    ///
    /// # Errors
    /// If the store cannot be read or the stored bytes do not match.
    pub fn read_artifact(&self, digest: &Sha256Digest) -> Result<Option<Vec<u8>>> {
        let db = self.readers.get()?;
        let bytes: Option<Vec<u8>> = db
            .query_row("SELECT bytes FROM artifacts WHERE digest = ?1", [digest.to_string()], |r| r.get(0))
            .map(Some)
            .or_else(|e| if e == rusqlite::Error::QueryReturnedNoRows { Ok(None) } else { Err(e) })?;
        if let Some(b) = &bytes
            && Sha256Digest::of(b) != *digest
        {
            bail!("artifact {digest} in the store does not match its digest: the store was altered");
        }
        Ok(bytes)
    }

    /// Read the records at `seqs` (for one proposal's view), each checked
    /// by an inclusion proof against the root this process verified and
    /// extended: a row altered in the store since it was verified (with or
    /// without the tree's hashes) is an error, never shown.
    ///
    /// # Errors
    /// If the store cannot be read, a record is missing, or it is not the
    /// leaf the log's root commits to.
    pub fn read_records_at(&self, seqs: &[u64]) -> Result<Vec<Record>> {
        let head = self.head();
        let db = self.readers.get()?;
        let tree = StoredTree::cached(&db, head.size, &self.nodes);
        proved_records(&db, &tree, head.size, &head.root, seqs)
    }

    /// The newest checkpoint stored: (tree size, signed note), not verified here.
    ///
    /// # Errors
    /// If the store cannot be read.
    pub fn newest_checkpoint(&self) -> Result<Option<(u64, String)>> {
        let db = self.readers.get()?;
        crate::store::trust::newest_checkpoint_row(&db)
    }

    /// The sequence numbers of one run's records.
    ///
    /// # Errors
    /// If the store cannot be read.
    pub fn run_seqs(&self, run: &str) -> Result<Vec<u64>> {
        let db = self.readers.get()?;
        run_seqs(&db, run)
    }

    /// Read the Merkle tree of every durable record from the store (roots
    /// and proofs for any size so far in O(log² n) rows:
    /// `edge_core::merkle::{root_of, inclusion_proof_of, …}`).
    ///
    /// # Errors
    /// If no connection to the store can be opened.
    pub fn with_tree<R>(&self, f: impl FnOnce(&StoredTree<'_>) -> R) -> Result<R> {
        let size = self.head().size;
        // A connection only for a hash not cached (the border verified at
        // open and what this process committed are).
        let open = || -> Result<tree::Held<'_>> { Ok(Box::new(self.readers.get()?)) };
        Ok(f(&StoredTree::cached_lazily(&open, size, &self.nodes)))
    }

    /// The store's newest checkpoint as the open read it, if nothing was
    /// appended since (once: for the start's check against the signed
    /// history, `crate::store::trust::check_signed_history`).
    pub(crate) fn checkpoint_row_at_open(&self) -> Option<Option<(u64, String)>> {
        let at_open = self.at_open.lock().expect("at-open lock").take()?;
        (self.head().size == at_open.records).then_some(at_open.newest)
    }

    /// Count time spent making something else of the run durable (the
    /// receipt file's fsyncs), so `durable_wait` covers every fsync wait.
    pub fn account_durable_wait(&self, d: Duration) {
        self.durable_wait.fetch_add(d.as_nanos() as u64, Ordering::Relaxed);
    }

    /// Total time spent waiting for durability.
    pub fn durable_wait(&self) -> Duration {
        Duration::from_nanos(self.durable_wait.load(Ordering::Relaxed))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// The durable log's size and root.
#[derive(Debug, Clone, Copy)]
struct Head {
    size: u64,
    root: Hash,
}

/// Read-only connections to the store, reused.
#[derive(Debug)]
struct Readers {
    dir: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

/// Most idle read-only connections kept.
const IDLE_READERS: usize = 8;

impl Readers {
    fn get(&self) -> Result<Reader<'_>> {
        let idle = self.idle.lock().expect("readers lock").pop();
        let conn = match idle {
            Some(c) => c,
            None => read_only(&self.dir)?,
        };
        Ok(Reader { pool: self, conn: Some(conn) })
    }
}

/// A read-only connection, back to the pool when dropped.
struct Reader<'a> {
    pool: &'a Readers,
    conn: Option<Connection>,
}

impl std::ops::Deref for Reader<'_> {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        self.conn.as_ref().expect("held until dropped")
    }
}

impl Drop for Reader<'_> {
    fn drop(&mut self) {
        let mut idle = self.pool.idle.lock().expect("readers lock");
        if idle.len() < IDLE_READERS {
            idle.extend(self.conn.take());
        }
    }
}

/// The store's lock file (`lock`, created if missing), not yet locked: a
/// process that writes the store holds an exclusive lock on it.
///
/// # Errors
/// If it cannot be opened.
pub fn lock_file(dir: &Path) -> Result<std::fs::File> {
    let path = lock_path(dir);
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))
}

/// Where the lock file of the store in `dir` is ([`lock_file`]).
pub fn lock_path(dir: &Path) -> PathBuf {
    dir.join("lock")
}

/// A read-only connection to a store (for export, `evidence show`, tools).
///
/// # Errors
/// If the database cannot be opened.
pub fn read_only(dir: &Path) -> Result<Connection> {
    let path = dir.join("evidence.db");
    Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .with_context(|| format!("cannot open evidence store {}", path.display()))
}

/// Records folded between two stores of the fold while it is rebuilt.
const REBUILD_EVERY: u64 = 65_536;

/// Verify what a start must (the records since the last checkpoint the
/// runner signed, and since the stored fold, against the persisted tree)
/// and fold the records the stored fold does not cover. A stored fold
/// that is missing or ahead of the records is rebuilt from all of them.
/// `newest`: the size of the newest stored checkpoint.
fn resume(db: &Connection, dir: &Path, records: u64, newest: Option<u64>) -> Result<(tree::Tail, LogIndex)> {
    let signed = crate::store::trust::signed_size_beside(newest, dir).min(records);
    let (mut index, folded) = match fold::stored(db)? {
        Some((folded, rest)) if folded <= records => (LogIndex::resume(folded, rest, fold::counters(db)?), folded),
        stale => {
            if stale.is_some() || records > 0 {
                tracing::info!(records, "rebuilding the fold of the evidence log from its records");
            }
            fold::clear(db)?;
            (LogIndex::default(), 0)
        }
    };
    let mut failed = None;
    let tail = tree::verify_records(db, signed.min(folded), records, true, |r, _| {
        if r.seq < folded || failed.is_some() {
            return Ok(());
        }
        let folded = index
            .push_from(db, &r)
            .and_then(|()| if (r.seq + 1).is_multiple_of(REBUILD_EVERY) { index.keep_in(db) } else { Ok(()) });
        if let Err(e) = folded {
            failed = Some(e);
        }
        Ok(())
    })?;
    if let Some(e) = failed {
        return Err(e.context("cannot fold the evidence log"));
    }
    index.keep_in(db).context("cannot keep the fold of the evidence log")?;
    Ok((tail, index))
}

/// The sequence numbers of one run's records in `db` (by the run index).
///
/// # Errors
/// If the store cannot be read.
pub fn run_seqs(db: &Connection, run: &str) -> Result<Vec<u64>> {
    let mut stmt = db.prepare_cached("SELECT seq FROM records WHERE run = ?1 ORDER BY seq")?;
    let seqs = stmt.query_map([run], |r| r.get::<_, i64>(0))?.collect::<rusqlite::Result<Vec<i64>>>()?;
    Ok(seqs.into_iter().map(|s| s as u64).collect())
}

/// Records `seqs` of the first `size` records of the store, each proved by
/// an inclusion proof (from `tree`) against `root`, a root verified before:
/// a row altered in the store since (with or without the tree's hashes) is
/// an error, never shown.
///
/// # Errors
/// If the store cannot be read, a record is missing, or it is not the
/// leaf `root` commits to.
pub fn proved_records(
    db: &Connection,
    tree: &StoredTree<'_>,
    size: u64,
    root: &Hash,
    seqs: &[u64],
) -> Result<Vec<Record>> {
    let mut stmt = db.prepare_cached("SELECT body FROM records WHERE seq = ?1")?;
    let mut out = Vec::with_capacity(seqs.len());
    for &seq in seqs {
        let altered = || anyhow!("record {seq} in the store is not the record the log verified: the store was altered");
        if seq >= size {
            bail!("record {seq} is beyond the log's {size} records");
        }
        let body: String = stmt.query_row([seq as i64], |r| r.get(0)).map_err(|_| altered())?;
        let proof: Vec<Vec<u8>> = merkle::inclusion_proof_of(tree, seq, size)
            .map_err(|e| anyhow!("record {seq}: the stored Merkle tree: {e}"))?
            .iter()
            .map(|h| h.to_vec())
            .collect();
        merkle::verify_inclusion(seq, size, &merkle::leaf_hash(body.as_bytes()), &proof, root)
            .map_err(|_| altered())?;
        out.push(serde_json::from_str(&body).with_context(|| format!("record {seq} does not parse"))?);
    }
    Ok(out)
}

/// Read and verify a store without writing to it: records and leaf hashes
/// (every record in memory: for tools and tests on logs of modest size).
///
/// # Errors
/// If it cannot be read or fails verification (naming the record).
pub fn load_verified(dir: &Path) -> Result<(Vec<Record>, Vec<Hash>)> {
    let (mut records, mut leaves) = (Vec::new(), Vec::new());
    each_verified(dir, |r, leaf| {
        records.push(r);
        leaves.push(leaf);
        Ok(())
    })?;
    Ok((records, leaves))
}

/// Read and verify a store without writing to it, handing each record and
/// its leaf hash to `each` in order as it is verified (memory independent
/// of the log's length). Returns the number of records and the Merkle root
/// of the whole log. A record that fails verification ends it with an
/// error (naming the record) after the records before it were handed
/// over; an error from `each` ends it too.
///
/// # Errors
/// If the store cannot be read, fails verification, or `each` fails.
pub fn each_verified(dir: &Path, each: impl FnMut(Record, Hash) -> Result<()>) -> Result<(u64, Hash)> {
    crate::store::schema::refuse_newer(&dir.join("evidence.db"))?;
    let db = read_only(dir)?;
    // One snapshot for every read below: a serving runner appends while
    // this reads, and the count and the records it reads must be of the
    // same store (apart, the count could lag the records and a sound store
    // read as one with records missing).
    let db = db.unchecked_transaction()?;
    // A store not yet migrated (a backup's copy of an older one) has no
    // tree to compare with; its chain is checked all the same.
    let has_tree = matches!(crate::store::schema::found(&db)?, crate::store::schema::Found::At(v) if v >= 2);
    let records: i64 = db.query_row("SELECT coalesce(max(seq) + 1, 0) FROM records", [], |r| r.get(0))?;
    let tail = tree::verify_records(&db, 0, records as u64, has_tree, each)?;
    Ok((records as u64, tail.range.root()))
}

mod inbox;
#[cfg(test)]
mod tests;
