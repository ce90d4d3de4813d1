//! `evidence export`: one self-contained bundle (format in
//! `edge_evidence::bundle`) with a checkpoint signed at export time.

use std::collections::BTreeSet;

use anyhow::{Context, Result, anyhow, bail};
use edge_core::Sha256Digest;
use edge_core::evidence::Record;

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

/// An export, ready to write.
#[derive(Debug)]
pub struct Exported {
    pub bytes: Vec<u8>,
    pub records: usize,
    pub artifacts: usize,
    pub tree_size: u64,
    /// The checkpoint signed for this export (a later `--since` takes it).
    pub checkpoint: String,
}

/// The signed checkpoint inside a file given to `--since`: a checkpoint
/// note, a run receipt (C2SP tlog-proof, whose checkpoint is its last part),
/// or an earlier bundle (likewise).
///
/// # Errors
/// If the file is none of these.
pub fn since_checkpoint(bytes: &[u8]) -> Result<String> {
    if bytes.starts_with(bundle::MAGIC.as_bytes()) {
        let b = bundle::parse(bytes).map_err(|e| anyhow!("the earlier bundle does not parse: {e}"))?;
        return Ok(b.checkpoint.to_owned());
    }
    let text = String::from_utf8(bytes.to_vec())
        .map_err(|_| anyhow!("not a checkpoint note, a run receipt or an evidence bundle"))?;
    if text.starts_with("c2sp.org/tlog-proof@") {
        let p = edge_core::note::TlogProof::parse(&text).map_err(|e| anyhow!("the receipt does not parse: {e}"))?;
        return Ok(p.checkpoint);
    }
    Ok(text)
}

/// The key the log had in force at the tree size a `--since` note claims
/// (None when the log names none, or the note has no readable size).
fn since_key(log: &EvidenceLog, origin: &str, old_note: &str) -> Option<edge_core::note::NoteVerifier> {
    let text = &old_note[..old_note.find("\n\n")? + 1];
    let size = Checkpoint::parse(text).ok()?.size;
    let history = crate::store::trust::key_history(log, origin).ok()?;
    edge_core::note::NoteVerifier::parse(history.key_at(size)?).ok()
}

/// Build a bundle from the store, signing a checkpoint of the whole log now.
///
/// # Errors
/// If the earlier checkpoint is not this log's, the run is unknown, or the store cannot be read.
pub fn export(
    log: &EvidenceLog,
    signer: &std::sync::Arc<NoteSigner>,
    origin: &str,
    scope: &ExportScope,
) -> Result<Exported> {
    let note_text = log.checkpoint(signer, origin)?;
    let checkpoint = Checkpoint::parse(&note::open(&note_text, std::slice::from_ref(signer.verifier()))?.text)?;
    // Everything below is relative to the checkpoint just signed, even if
    // other writers append meanwhile.
    let size = checkpoint.size;
    let tree_size = usize::try_from(size)?;
    let db = read_only(log.dir())?;
    let mut bodies: Vec<String> = Vec::with_capacity(tree_size);
    {
        let mut stmt = db.prepare("SELECT body FROM records WHERE seq < ?1 ORDER BY seq")?;
        let mut rows = stmt.query([size as i64])?;
        while let Some(row) = rows.next()? {
            bodies.push(row.get(0)?);
        }
    }
    if bodies.len() as u64 != size {
        bail!("the store holds {} records, the tree {size}: the store changed under the runner", bodies.len());
    }
    let (scope, chosen): (Scope, Vec<usize>) = match scope {
        ExportScope::Full => (Scope::Full, (0..bodies.len()).collect()),
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
            let n = usize::try_from(old.size)?;
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
                (n..bodies.len()).collect(),
            )
        }
        ExportScope::Run(run) => {
            let chosen: Vec<usize> = log
                .run_seqs(run)?
                .into_iter()
                .filter(|&s| s < size)
                .map(|s| usize::try_from(s).expect("seq fits"))
                .collect();
            if chosen.is_empty() {
                bail!("no run `{run}` in the evidence log (`edge-runner evidence show` lists runs)");
            }
            let proofs = log
                .with_tree(|t| {
                    chosen
                        .iter()
                        .map(|&i| merkle::inclusion_proof_of(t, i as u64, size).map(|p| bundle::encode_hashes(&p)))
                        .collect::<Result<Vec<_>, _>>()
                })?
                .map_err(|e| anyhow!("the stored Merkle tree: {e}"))?;
            (Scope::Run { run: run.clone(), proofs }, chosen)
        }
    };
    let records: Vec<&str> = chosen.iter().map(|&i| bodies[i].as_str()).collect();
    let mut digests = BTreeSet::<Sha256Digest>::new();
    for &i in &chosen {
        let r: Record = serde_json::from_str(&bodies[i])?;
        digests.extend(r.artifacts());
    }
    let mut artifacts: Vec<(Sha256Digest, Vec<u8>)> = Vec::with_capacity(digests.len());
    let mut stmt = db.prepare("SELECT bytes FROM artifacts WHERE digest = ?1")?;
    for d in digests {
        let bytes: Vec<u8> = stmt
            .query_row([d.to_string()], |r| r.get(0))
            .with_context(|| format!("artifact {d} is referenced by the log but missing from the store"))?;
        if Sha256Digest::of(&bytes) != d {
            bail!("artifact {d} in the store does not match its digest: the store was altered");
        }
        artifacts.push((d, bytes));
    }
    let header = Header {
        origin: origin.to_owned(),
        scope,
        tree_size: size,
        records: records.len() as u64,
        artifacts: artifacts.len() as u64,
    };
    let refs: Vec<(Sha256Digest, &[u8])> = artifacts.iter().map(|(d, b)| (*d, b.as_slice())).collect();
    let bytes = bundle::write(&header, &records, &refs, &note_text)?;
    Ok(Exported { bytes, records: records.len(), artifacts: artifacts.len(), tree_size: size, checkpoint: note_text })
}
