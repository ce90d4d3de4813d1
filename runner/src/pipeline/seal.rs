//! Seal: a finished run gets a signed checkpoint of the log and a receipt
//! (a C2SP tlog-proof of its terminal record). Also the checks of the
//! runner's own history at start: the store must hold what this runner
//! signed, and the identity key in use is recorded.

use anyhow::{Context, Result};
use edge_core::evidence::Event;

use super::Runner;
use super::run::RunReport;
use crate::staging;

impl Runner {
    /// Refuse to work on a store that lacks what this runner signed
    /// (`crate::store::trust`): each checkpoint checked with the key the
    /// log had in force at its size, every key rotation with both its keys.
    pub(crate) fn check_signed_history(&self) -> Result<()> {
        let refuse = || {
            format!(
                "evidence store {} does not hold the history this runner signed; the runner refuses to run on it",
                self.log.dir().display()
            )
        };
        let history = crate::store::trust::key_history(&self.log, &self.config.name).with_context(refuse)?;
        crate::store::trust::check_signed_history(&self.log, &history, self.identity.verifier()).with_context(refuse)
    }

    /// Record the identity key when the log names none yet. A key other
    /// than the one the log has in force is refused: replaced without a
    /// rotation signed by both keys, no reviewer could follow it.
    pub(crate) fn record_identity(&mut self) -> Result<()> {
        let own = self.identity.verifier();
        let vkey = own.to_vkey();
        let history = crate::store::trust::key_history(&self.log, &self.config.name)?;
        match history.current() {
            None => {
                self.log.append("runner", Event::KeyEvent { action: "identity key in use".into(), key: vkey })?;
                Ok(())
            }
            Some(k) if k == vkey => Ok(()),
            Some(k) => anyhow::bail!(
                "the identity key {} is {}, but the evidence log's identity key is {} (record {}): a key replaced \
                 without `edge-runner keys rotate` leaves a log no reviewer can follow across the change, so the \
                 runner refuses to start. Put the log's key back in place (keys retired by a rotation are kept \
                 beside it as `{}.retired-*`), and to change keys run `edge-runner keys rotate --config <runner.toml>`. \
                 If that key is lost, keep this state directory (its exports still verify with that key) and start \
                 the runner with a new state directory",
                self.config.identity_key.display(),
                own.fingerprint(),
                edge_core::rotation::fingerprint(k),
                history.changes().last().map_or(0, |c| c.seq),
                self.config.identity_key.file_name().map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
            ),
        }
    }

    /// Seal a finished run: a signed checkpoint and a receipt (C2SP tlog-proof)
    /// for its terminal record.
    /// `signed` is a checkpoint signed after the run's records, when the
    /// run's last barrier asked for one; otherwise (or if it does not cover
    /// the terminal record) one is signed now.
    pub(crate) async fn seal(&self, report: &mut RunReport, signed: Option<String>) -> Result<()> {
        let Some(last) = report.log.records().iter().rev().find(|r| r.is_terminal()) else {
            return Ok(());
        };
        let index = last.seq;
        // The size of a checkpoint is the second line of its note.
        let size_of = |note: &str| -> Result<usize> {
            note.lines().nth(1).and_then(|l| l.parse().ok()).context("a checkpoint without a size")
        };
        let note = match signed {
            Some(n) if size_of(&n)? > index as usize => n,
            _ => report.log.barrier_with_checkpoint(&self.identity, &self.config.name).await?,
        };
        let size = size_of(&note)?;
        let hashes = self
            .log
            .with_tree(|t| edge_core::merkle::inclusion_proof_of(t, index, size as u64))?
            .map_err(|e| anyhow::anyhow!("the receipt's inclusion proof: {e}"))?;
        let receipt = edge_core::note::TlogProof { index, hashes, checkpoint: note }.encode();
        report.receipt_proof = Some(receipt);
        if self.receipt_files {
            self.write_receipt(report)?;
        }
        Ok(())
    }

    /// Write a sealed run's receipt to `<state>/receipts/<run>.tlog-proof`,
    /// as command-line runs have it (the daemon returns it in the answer
    /// instead); nothing for a run without one.
    ///
    /// # Errors
    /// If the file cannot be written.
    pub(crate) fn write_receipt(&self, report: &mut RunReport) -> Result<()> {
        let Some(receipt) = &report.receipt_proof else { return Ok(()) };
        let path = self.config.state_dir.join("receipts").join(format!("{}.tlog-proof", report.run));
        // The terminal record and the checkpoint are durable in the store;
        // the receipt restates them (a crash may lose the file, and
        // `evidence export --run` proves the same inclusion).
        staging::write_atomically(&path, receipt.as_bytes())?;
        report.receipt = Some(path);
        Ok(())
    }

    /// The receipt of a finished run, made from the store on request (the
    /// daemon writes no file per run): an inclusion proof of its terminal
    /// record against the newest stored checkpoint that covers it, or one
    /// signed now when none does. The record is read through an inclusion
    /// proof against the root this process verified, and the checkpoint must
    /// be signed by the runner's key and be the log's tree at its size. None
    /// when the run is unknown or has not ended.
    ///
    /// # Errors
    /// If the store cannot be read, or what it holds is not what the log verified.
    pub fn receipt_of(&self, run: &str) -> Result<Option<String>> {
        use edge_core::merkle;
        use edge_core::note::{self, Checkpoint, TlogProof};
        let Some(&index) = self.log.run_seqs(run)?.last() else { return Ok(None) };
        if !self.log.read_records_at(&[index])?.first().is_some_and(edge_core::evidence::Record::is_terminal) {
            return Ok(None);
        }
        let opened = |n: &str| {
            let text = note::open(n, std::slice::from_ref(self.identity.verifier())).ok()?.text;
            Checkpoint::parse(&text).ok()
        };
        // A stored row that does not open with this runner's key (altered,
        // or signed before a rotation) is passed over: a new one is signed.
        let stored = self.log.newest_checkpoint()?.filter(|(size, n)| *size > index && opened(n).is_some());
        let note = match stored {
            Some((_, n)) => n,
            None => self.log.checkpoint(&self.identity, &self.config.name)?,
        };
        let cp = opened(&note).context("the checkpoint just signed does not open")?;
        let (root, hashes) =
            self.log.with_tree(|t| (merkle::root_of(t, cp.size), merkle::inclusion_proof_of(t, index, cp.size)))?;
        if root.ok() != Some(cp.root) {
            anyhow::bail!("the stored checkpoint of size {} is not the log's tree: the store was altered", cp.size);
        }
        let hashes = hashes.map_err(|e| anyhow::anyhow!("the receipt's inclusion proof: {e}"))?;
        Ok(Some(TlogProof { index, hashes, checkpoint: note }.encode()))
    }
}
