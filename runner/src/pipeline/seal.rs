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
        if self.receipt_files {
            let path = self.config.state_dir.join("receipts").join(format!("{}.tlog-proof", report.run));
            // The terminal record and the checkpoint are durable in the
            // store; the receipt restates them (a crash may lose the file,
            // and `evidence export --run` proves the same inclusion).
            staging::write_atomically(&path, receipt.as_bytes())?;
            report.receipt = Some(path);
        }
        report.receipt_proof = Some(receipt);
        Ok(())
    }
}
