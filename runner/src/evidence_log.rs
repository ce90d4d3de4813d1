//! The first evidence log: canonical JSON lines in `<state>/evidence/log.jsonl`,
//! each record chained to the previous by SHA-256, fsync'd before the step it
//! records takes effect; artifacts content-addressed in
//! `<state>/evidence/artifacts/sha256/<hex>`.
//!
//! The log is opened under an exclusive file lock, its whole chain verified
//! on open (a broken log refuses to start the run), and only ever appended.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use edge_core::Sha256Digest;
use edge_core::evidence::{self, Event, GENESIS, RECORD_SCHEMA, Record};

use crate::staging::{sync_dir, write_durably};

/// An open, verified, locked evidence log.
#[derive(Debug)]
pub struct EvidenceLog {
    file: File,
    dir: PathBuf,
    next_seq: u64,
    prev: Sha256Digest,
    records: Vec<Record>,
    durable_wait: std::time::Duration,
    /// Set when an append failed: the log refuses further appends in this
    /// process rather than risk a gap or a reused sequence number.
    poisoned: bool,
}

impl EvidenceLog {
    /// Open (creating if needed) the log in `dir`, take the lock and verify the chain.
    ///
    /// # Errors
    /// If the log is locked by another process, unreadable, or its chain is broken.
    pub fn open(dir: &Path) -> Result<Self> {
        fs::create_dir_all(dir.join("artifacts/sha256"))
            .with_context(|| format!("cannot create evidence directory {}", dir.display()))?;
        let path = dir.join("log.jsonl");
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)
            .with_context(|| format!("cannot open evidence log {}", path.display()))?;
        file.lock().with_context(|| format!("cannot lock evidence log {}", path.display()))?;
        let mut text = Vec::new();
        std::io::Read::read_to_end(&mut file, &mut text)?;
        if !text.is_empty() && !text.ends_with(b"\n") {
            bail!(
                "evidence log {} ends with a partial record (a write was interrupted); \
                 it was never acknowledged, but the runner will not guess: inspect and repair the log",
                path.display()
            );
        }
        let (records, prev) = evidence::verify_chain_lines(&text).with_context(|| {
            format!("evidence log {} failed verification; the runner refuses to run on a broken log", path.display())
        })?;
        Ok(Self {
            file,
            dir: dir.to_path_buf(),
            next_seq: records.len() as u64,
            prev,
            records,
            durable_wait: std::time::Duration::ZERO,
            poisoned: false,
        })
    }

    /// Append a record and make it durable before returning.
    ///
    /// # Errors
    /// On any write or fsync failure; the caller must then stop (fail closed).
    pub fn append(&mut self, run: &str, event: Event) -> Result<Record> {
        if self.poisoned {
            bail!("the evidence log had a failed write earlier in this process; restart the runner");
        }
        let record = Record {
            schema: RECORD_SCHEMA.to_owned(),
            seq: self.next_seq,
            time: jiff::Timestamp::now().to_string(),
            run: run.to_owned(),
            prev: self.prev,
            event,
        };
        let mut line = record.canonical_bytes()?;
        line.push(b'\n');
        let len_before = self.file.metadata().context("cannot stat the evidence log")?.len();
        let t0 = std::time::Instant::now();
        let written = self.file.write_all(&line).and_then(|()| self.file.sync_data());
        self.durable_wait += t0.elapsed();
        if let Err(e) = written {
            // Never leave a partial or unacknowledged line behind: cut the
            // file back to the last acknowledged record and stop appending.
            self.poisoned = true;
            let _ = self.file.set_len(len_before).and_then(|()| self.file.sync_data());
            return Err(e)
                .context("cannot append to the evidence log (write or fsync failed); nothing was acknowledged");
        }
        self.prev = Sha256Digest::of(&line[..line.len() - 1]);
        self.next_seq += 1;
        self.records.push(record.clone());
        Ok(record)
    }

    /// Store an artifact content-addressed; returns its digest.
    ///
    /// # Errors
    /// On I/O failure.
    pub fn put_artifact(&mut self, bytes: &[u8]) -> Result<Sha256Digest> {
        let d = Sha256Digest::of(bytes);
        let path = self.artifact_path(&d);
        if !path.exists() {
            let t0 = std::time::Instant::now();
            write_durably(&path, bytes)?;
            sync_dir(path.parent().expect("has parent"))?;
            self.durable_wait += t0.elapsed();
        }
        Ok(d)
    }

    /// Total time spent waiting for durability (fsync of records and
    /// artifacts) since the log was opened. Benchmarks subtract it to compare
    /// the governed run's own work with a bare embedding.
    pub fn durable_wait(&self) -> std::time::Duration {
        self.durable_wait
    }

    pub fn artifact_path(&self, d: &Sha256Digest) -> PathBuf {
        self.dir.join("artifacts/sha256").join(d.hex())
    }

    /// Every record, in order (verified at open and appended since).
    pub fn records(&self) -> &[Record] {
        &self.records
    }

    /// Hash of the last record ([`GENESIS`] when empty).
    pub fn head(&self) -> Sha256Digest {
        if self.records.is_empty() { GENESIS } else { self.prev }
    }
}
