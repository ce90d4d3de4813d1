//! `evidence export`: one self-contained bundle (format in
//! `edge_evidence::bundle`) with a checkpoint signed at export time.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};
use edge_core::Sha256Digest;
use edge_core::evidence::Record;
use rusqlite::{Connection, OptionalExtension as _};

use edge_core::note::{self, Checkpoint, NoteSigner};
use edge_evidence::bundle::{self, Header, Scope};

use crate::store::log::{EvidenceLog, read_only};
use crate::store::tree::RowError;
use edge_core::merkle::{self, TreeError};

/// What to export.
#[derive(Debug, Clone)]
pub enum ExportScope {
    /// The whole log.
    Full,
    /// Everything after an earlier checkpoint (its signed note), with a consistency proof.
    Since(String),
    /// One run's records with inclusion proofs.
    Run(String),
}

/// What an export wrote.
#[derive(Debug)]
pub struct Exported {
    pub records: u64,
    pub artifacts: u64,
    /// The bundle's size in bytes.
    pub bytes: u64,
    pub tree_size: u64,
    /// The checkpoint signed for this export (a later `--since` takes it).
    pub checkpoint: String,
    /// `reload-refused` records exported whose error quotes what the
    /// config file held where it stopped (a line, a value), as runners
    /// before 2026-12-06 recorded it: it may be a secret of that file
    /// ([`crate::config::quotes_config`]).
    pub quoting_config: u64,
}

/// The signed checkpoint inside a file given to `--since`: a checkpoint
/// note, a run receipt (C2SP tlog-proof, whose checkpoint is its last part),
/// or an earlier bundle (likewise; read through to its end without holding
/// or decoding it, however long the log it exports).
///
/// # Errors
/// If the file cannot be read or is none of these.
pub fn since_checkpoint(path: &Path) -> Result<String> {
    use std::io::{BufRead as _, Read as _};
    let cannot = |e: std::io::Error| anyhow!("cannot read {}: {e}", path.display());
    let mut input = std::io::BufReader::new(std::fs::File::open(path).map_err(cannot)?);
    if input.fill_buf().map_err(cannot)?.starts_with(bundle::MAGIC_PREFIX.as_bytes()) {
        return edge_evidence::checkpoint_of(input).map_err(|e| anyhow!("the earlier bundle does not parse: {e}"));
    }
    // A note or a receipt: small (a receipt holds one inclusion proof).
    let mut bytes = Vec::new();
    input.take(1 << 20).read_to_end(&mut bytes).map_err(cannot)?;
    let text =
        String::from_utf8(bytes).map_err(|_| anyhow!("not a checkpoint note, a run receipt or an evidence bundle"))?;
    if text.starts_with("c2sp.org/tlog-proof@") {
        let p = edge_core::note::TlogProof::parse(&text).map_err(|e| anyhow!("the receipt does not parse: {e}"))?;
        return Ok(p.checkpoint);
    }
    Ok(text)
}

/// The key the log had in force at the tree size a `--since` note claims
/// (None when the log names none, or the note has no readable size).
fn since_key(log: &EvidenceLog, origin: &str, old_note: &str) -> Option<edge_core::note::NoteVerifier> {
    let size = crate::store::trust::claimed_size(old_note)?;
    let history = crate::store::trust::key_history(log, origin).ok()?;
    edge_core::note::NoteVerifier::parse(history.key_at(size)?).ok()
}

/// An export streamed as an HTTP body (`GET /v1/evidence/export`): the
/// store is read on a blocking thread and handed over in chunks of 256 KiB
/// through a channel of four, so the server holds a few chunks, never the
/// bundle. A client that stops reading stops the export (the thread waits,
/// then fails when the connection goes). An export that fails after its
/// first byte ends the body with an error: the connection is cut, and the
/// client never sees a short body that looks complete.
#[derive(Debug)]
pub struct Streamed {
    /// Reload refusals in it that quote the config file, as
    /// [`Exported::quoting_config`] (what the API names in a header).
    pub quoting_config: u64,
    first: Option<bytes::Bytes>,
    rx: tokio::sync::mpsc::Receiver<Piece>,
    done: bool,
}

#[derive(Debug)]
enum Piece {
    /// Pass 1's count of old refusals quoting the config file
    /// ([`Exported::quoting_config`]), before any byte of the bundle.
    Counted(u64),
    Chunk(bytes::Bytes),
    Failed(String),
    Done,
}

/// Bytes per chunk of a streamed export.
const CHUNK: usize = 256 << 10;

/// What the export thread writes to: chunks into the channel.
struct ToChannel {
    tx: tokio::sync::mpsc::Sender<Piece>,
    buf: Vec<u8>,
}

impl ToChannel {
    fn send(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = bytes::Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK)));
        self.tx
            .blocking_send(Piece::Chunk(chunk))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the client went away"))
    }
}

impl Write for ToChannel {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.send()?;
        }
        Ok(data.len())
    }

    /// Chunks go when full and at the end; a flush does not cut one short.
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Streamed {
    /// Run `export` on a blocking thread; ready once its first chunk is.
    /// `export` may tell its count of old refusals quoting the config file
    /// (its second argument) before it writes.
    ///
    /// # Errors
    /// What `export` fails with before writing anything.
    pub async fn start(
        export: impl FnOnce(&mut dyn Write, &mut dyn FnMut(u64)) -> Result<()> + Send + 'static,
    ) -> Result<Self> {
        let (tx, mut rx) = tokio::sync::mpsc::channel(4);
        tokio::task::spawn_blocking(move || {
            let mut out = ToChannel { tx: tx.clone(), buf: Vec::with_capacity(CHUNK) };
            let counted_tx = tx.clone();
            let mut counted = move |n| {
                let _ = counted_tx.blocking_send(Piece::Counted(n));
            };
            let end = match export(&mut out, &mut counted).and_then(|()| out.send().map_err(anyhow::Error::from)) {
                Ok(()) => Piece::Done,
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "the evidence export stopped");
                    Piece::Failed(format!("{e:#}"))
                }
            };
            let _ = tx.blocking_send(end);
        });
        let mut quoting_config = 0;
        loop {
            return match rx.recv().await {
                Some(Piece::Counted(n)) => {
                    quoting_config = n;
                    continue;
                }
                Some(Piece::Chunk(first)) => Ok(Self { quoting_config, first: Some(first), rx, done: false }),
                Some(Piece::Done) => Ok(Self { quoting_config, first: None, rx, done: true }),
                Some(Piece::Failed(e)) => Err(anyhow!(e)),
                None => bail!("the export stopped before it began"),
            };
        }
    }
}

impl hyper::body::Body for Streamed {
    type Data = bytes::Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<std::result::Result<hyper::body::Frame<bytes::Bytes>, Self::Error>>> {
        use std::task::Poll;
        if let Some(b) = self.first.take() {
            return Poll::Ready(Some(Ok(hyper::body::Frame::data(b))));
        }
        if self.done {
            return Poll::Ready(None);
        }
        loop {
            return match std::task::ready!(self.rx.poll_recv(cx)) {
                // (Told before the first chunk, so never here; passed over.)
                Some(Piece::Counted(_)) => continue,
                Some(Piece::Chunk(b)) => Poll::Ready(Some(Ok(hyper::body::Frame::data(b)))),
                Some(Piece::Done) => {
                    self.done = true;
                    Poll::Ready(None)
                }
                Some(Piece::Failed(e)) => {
                    self.done = true;
                    Poll::Ready(Some(Err(format!("the evidence export failed: {e}").into())))
                }
                None => {
                    self.done = true;
                    Poll::Ready(Some(Err("the evidence export stopped mid-stream".into())))
                }
            };
        }
    }
}

/// Export to `path` durably, or not at all ([`write_whole`]): a leftover
/// `.partial` file ends before its checkpoint, so it never verifies.
///
/// # Errors
/// As [`export_to`], and on I/O errors writing the file.
pub fn export_file(
    log: &EvidenceLog,
    signer: &std::sync::Arc<NoteSigner>,
    origin: &str,
    scope: &ExportScope,
    path: &Path,
) -> Result<Exported> {
    write_whole(path, |w| export_to(log, signer, origin, scope, w).map(|(e, _)| e))
}

/// Write `path` durably, or not at all: `write` streams into a new
/// temporary file beside it (`.<name>.partial`, mode 0600), which is
/// synced and renamed into place only when `write` succeeded. A failure or
/// a kill leaves no file at `path` (an earlier one there is untouched).
///
/// # Errors
/// What `write` fails with, and I/O errors making, syncing or moving the file.
pub fn write_whole<T>(
    path: &Path,
    write: impl FnOnce(&mut std::io::BufWriter<std::fs::File>) -> Result<T>,
) -> Result<T> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = path.file_name().and_then(|n| n.to_str()).context("the output path names no file")?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create the directory {}", dir.display()))?;
    let tmp = dir.join(format!(".{name}.partial"));
    // A leftover of a killed export is removed, never followed.
    let file = crate::staging::create_fresh(&tmp)
        .with_context(|| format!("cannot create {} (is the directory writable?)", tmp.display()))?;
    let mut w = std::io::BufWriter::with_capacity(1 << 20, file);
    let written = write(&mut w).and_then(|t| {
        let f = w.into_inner().map_err(|e| anyhow!("writing {}: {}", tmp.display(), e.error()))?;
        f.sync_all().with_context(|| format!("cannot sync {}", tmp.display()))?;
        Ok(t)
    });
    let t = match written {
        Ok(t) => t,
        Err(err) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(err);
        }
    };
    std::fs::rename(&tmp, path).with_context(|| format!("cannot move the export into place at {}", path.display()))?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(t)
}

/// Stream a bundle from the store to `out`, signing a checkpoint of the
/// whole log now. Memory does not grow with the log: records are copied
/// row by row, the artifacts they reference are collected in a temporary
/// table of the store's read connection and copied one at a time, in
/// digest order, each checked against its digest.
///
/// # Errors
/// If the earlier checkpoint is not this log's, the run is unknown, the
/// store cannot be read or disagrees with itself, or `out` fails.
pub fn export_to<W: Write>(
    log: &EvidenceLog,
    signer: &std::sync::Arc<NoteSigner>,
    origin: &str,
    scope: &ExportScope,
    out: W,
) -> Result<(Exported, W)> {
    export_counted(log, signer, origin, scope, out, &mut |_| {})
}

/// [`export_to`], telling `counted` the number of old refusals quoting
/// the config file ([`Exported::quoting_config`]) before the first byte is
/// written (a streamed answer names it in a header).
///
/// # Errors
/// As [`export_to`].
pub fn export_counted<W: Write>(
    log: &EvidenceLog,
    signer: &std::sync::Arc<NoteSigner>,
    origin: &str,
    scope: &ExportScope,
    out: W,
    counted: &mut dyn FnMut(u64),
) -> Result<(Exported, W)> {
    let note_text = log.checkpoint(signer, origin)?;
    let checkpoint = Checkpoint::parse(&note::open(&note_text, std::slice::from_ref(signer.verifier()))?.text)?;
    // Everything below is relative to the checkpoint just signed, even if
    // other writers append meanwhile.
    let size = checkpoint.size;
    let db = read_only(log.dir())?;
    let (scope, chosen) = match scope {
        ExportScope::Full => (Scope::Full, Chosen::Range(0, size)),
        ExportScope::Since(old_note) => {
            // Signed by the key the log had in force at that size: an
            // earlier export stays a valid starting point across a rotation.
            let verifier = since_key(log, origin, old_note).unwrap_or_else(|| signer.verifier().clone());
            let opened = note::open(old_note, std::slice::from_ref(&verifier)).map_err(|e| {
                anyhow!("the --since checkpoint is not signed by this runner's identity key ({e}): give a checkpoint (or bundle) this runner exported")
            })?;
            let old = Checkpoint::parse(&opened.text)?;
            if old.origin != origin {
                bail!("the --since checkpoint is from runner `{}`, not `{origin}`", old.origin);
            }
            if old.size == 0 || old.size > size {
                bail!(
                    "the --since checkpoint has tree size {}, this log {size}: nothing to prove consistency from",
                    old.size
                );
            }
            let (old_root, prefix, consistency) = log
                .with_tree(|t| -> Result<_, TreeError<RowError>> {
                    let m = old.size;
                    Ok((merkle::root_of(t, m)?, merkle::compact_of(t, m)?, merkle::consistency_proof_of(t, m, size)?))
                })?
                .map_err(|e| anyhow!("the stored Merkle tree: {e}"))?;
            if old_root != old.root {
                bail!(
                    "the --since checkpoint's root is not this log's root at size {}: the log was rewritten",
                    old.size
                );
            }
            (
                Scope::Since {
                    checkpoint: old_note.clone(),
                    consistency: bundle::encode_hashes(&consistency),
                    prefix: bundle::encode_hashes(&prefix.hashes()),
                },
                Chosen::Range(old.size, size),
            )
        }
        ExportScope::Run(run) => {
            let chosen: Vec<u64> = log.run_seqs(run)?.into_iter().filter(|&s| s < size).collect();
            if chosen.is_empty() {
                bail!("no run `{run}` in the evidence log (`edge-runner evidence show` lists runs)");
            }
            let proofs = log
                .with_tree(|t| {
                    chosen
                        .iter()
                        .map(|&i| merkle::inclusion_proof_of(t, i, size).map(|p| bundle::encode_hashes(&p)))
                        .collect::<Result<Vec<_>, _>>()
                })?
                .map_err(|e| anyhow!("the stored Merkle tree: {e}"))?;
            (Scope::Run { run: run.clone(), proofs }, Chosen::Seqs(chosen))
        }
    };

    // Pass 1: the artifacts the chosen records reference.
    db.execute_batch("CREATE TEMP TABLE wanted (digest TEXT PRIMARY KEY) WITHOUT ROWID")?;
    let mut quoting_config = 0;
    let records = chosen.each(&db, |body| {
        let r: Record = serde_json::from_str(body).context("a record in the store does not parse")?;
        if let edge_core::evidence::Event::ReloadRefused { error, .. } = &r.event
            && crate::config::quotes_config(error)
        {
            quoting_config += 1;
        }
        let mut add = db.prepare_cached("INSERT OR IGNORE INTO temp.wanted (digest) VALUES (?1)")?;
        for d in r.artifacts() {
            add.execute([d.to_string()])?;
        }
        Ok(())
    })?;
    if records != chosen.len() {
        bail!(
            "the store holds {records} of the {} records wanted, the tree {size}: the store changed under the runner",
            chosen.len()
        );
    }
    let artifacts: u64 = db.query_row("SELECT count(*) FROM temp.wanted", [], |r| r.get::<_, i64>(0))? as u64;
    if let Some(missing) = db
        .query_row(
            "SELECT w.digest FROM temp.wanted w LEFT JOIN artifacts a ON a.digest = w.digest WHERE a.digest IS NULL LIMIT 1",
            [],
            |r| r.get::<_, String>(0),
        )
        .optional()?
    {
        bail!("artifact {missing} is referenced by the log but missing from the store: the store was altered");
    }

    counted(quoting_config);

    // Pass 2: the bundle.
    let header = Header {
        format: bundle::Format::default(),
        origin: origin.to_owned(),
        scope,
        tree_size: size,
        records,
        artifacts,
    };
    let mut w = bundle::Writer::start(out, &header)?;
    let copied = chosen.each(&db, |body| Ok(w.record(body)?))?;
    if copied != records {
        bail!("the store changed under the export: {copied} records the second time, {records} the first");
    }
    let mut stmt = db.prepare(
        "SELECT w.digest, a.bytes FROM temp.wanted w JOIN artifacts a ON a.digest = w.digest ORDER BY w.digest",
    )?;
    let mut rows = stmt.query([])?;
    while let Some(row) = rows.next()? {
        let text = row.get_ref(0)?.as_str()?;
        let d: Sha256Digest =
            text.parse().map_err(|_| anyhow!("the store holds an artifact named `{}`", edge_core::text::line(text)))?;
        let bytes = row.get_ref(1)?.as_blob()?;
        if Sha256Digest::of(bytes) != d {
            bail!("artifact {d} in the store does not match its digest: the store was altered");
        }
        w.artifact(&d, bytes)?;
    }
    let bytes = w.bytes + note_text.len() as u64;
    let out = w.finish(&note_text)?;
    Ok((Exported { records, artifacts, bytes, tree_size: size, checkpoint: note_text, quoting_config }, out))
}

/// The records an export takes.
enum Chosen {
    /// `seq` in `[from, to)`.
    Range(u64, u64),
    /// These (a run's), ascending.
    Seqs(Vec<u64>),
}

impl Chosen {
    fn len(&self) -> u64 {
        match self {
            Chosen::Range(a, b) => b - a,
            Chosen::Seqs(s) => s.len() as u64,
        }
    }

    /// Call `f(body)` for each chosen record in order, reading row by
    /// row; returns how many there were.
    fn each(&self, db: &Connection, mut f: impl FnMut(&str) -> Result<()>) -> Result<u64> {
        let mut n = 0;
        let mut visit = |row: &rusqlite::Row<'_>| -> Result<()> {
            f(row.get_ref(0)?.as_str()?)?;
            n += 1;
            Ok(())
        };
        match self {
            Chosen::Range(a, b) => {
                let mut stmt = db.prepare("SELECT body FROM records WHERE seq >= ?1 AND seq < ?2 ORDER BY seq")?;
                let mut rows = stmt.query([*a as i64, *b as i64])?;
                while let Some(row) = rows.next()? {
                    visit(row)?;
                }
            }
            Chosen::Seqs(seqs) => {
                let mut stmt = db.prepare_cached("SELECT body FROM records WHERE seq = ?1")?;
                for &s in seqs {
                    let mut rows = stmt.query([s as i64])?;
                    if let Some(row) = rows.next()? {
                        visit(row)?;
                    }
                }
            }
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt as _;

    use super::*;

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
    }

    #[test]
    fn a_failure_after_the_first_chunk_ends_the_body_with_an_error_not_a_clean_end() {
        rt().block_on(async {
            let body = Streamed::start(|out, _| {
                out.write_all(&vec![b'r'; 3 * CHUNK])?;
                bail!("artifact sha256:00 in the store does not match its digest")
            })
            .await
            .expect("the first chunk went out");
            let mut body = std::pin::pin!(body);
            let mut got = 0;
            let failed = loop {
                match body.frame().await {
                    Some(Ok(f)) => got += f.into_data().unwrap().len(),
                    Some(Err(e)) => break e.to_string(),
                    None => panic!("the body ended as if whole after {got} bytes"),
                }
            };
            assert!((CHUNK..=3 * CHUNK).contains(&got), "{got}");
            assert!(failed.contains("does not match its digest"), "{failed}");
        });
    }

    #[test]
    fn a_failure_before_the_first_byte_is_an_error_to_answer_with() {
        rt().block_on(async {
            let e = Streamed::start(|_, _| bail!("the earlier checkpoint is not this log's")).await.unwrap_err();
            assert!(e.to_string().contains("not this log's"), "{e}");
        });
    }

    #[test]
    fn a_whole_export_arrives_in_order_and_ends_cleanly() {
        rt().block_on(async {
            let data: Vec<u8> = (0..5 * CHUNK + 17).map(|i| (i % 251) as u8).collect();
            let sent = data.clone();
            let body = Streamed::start(move |out, _| Ok(out.write_all(&sent)?)).await.unwrap();
            let got = body.collect().await.unwrap().to_bytes();
            assert!(got == data, "the bytes differ");
        });
    }

    #[test]
    fn a_client_that_goes_away_stops_the_export_thread() {
        rt().block_on(async {
            let (done_tx, done_rx) = std::sync::mpsc::channel();
            let body = Streamed::start(move |out, _| {
                let r = (0..1000).try_for_each(|_| out.write_all(&vec![0; CHUNK]));
                done_tx.send(r.map_err(|e| e.kind())).unwrap();
                Ok(())
            })
            .await
            .unwrap();
            drop(body);
            let r = done_rx.recv_timeout(std::time::Duration::from_secs(10)).expect("the export thread stopped");
            assert_eq!(r, Err(std::io::ErrorKind::BrokenPipe));
        });
    }
}
