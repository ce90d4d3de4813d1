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
    /// (`crate::store::trust`): checked with the identity key, and with the
    /// key the log last recorded (the identity key may have been rotated).
    pub(crate) fn check_signed_history(&self) -> Result<()> {
        let mut verifiers = vec![self.identity.verifier().clone()];
        if let Some(k) = self.log.index().key.as_deref()
            && let Ok(v) = edge_core::note::NoteVerifier::parse(k)
        {
            verifiers.push(v);
        }
        crate::store::trust::check_signed_history(&self.log, &verifiers).with_context(|| {
            format!(
                "evidence store {} does not hold the history this runner signed; the runner refuses to run on it",
                self.log.dir().display()
            )
        })
    }

    /// Record the identity key when it is new to the log (or changed).
    pub(crate) fn record_identity(&mut self) -> Result<()> {
        let vkey = self.identity.verifier().to_vkey();
        let last = self.log.index().key.clone();
        if last.as_deref() != Some(vkey.as_str()) {
            let action = if last.is_none() { "identity key in use" } else { "identity key changed" };
            self.log.append("runner", Event::KeyEvent { action: action.into(), key: vkey })?;
        }
        Ok(())
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
        let hashes = self.log.with_tree(|t| t.inclusion_proof(index as usize, size));
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
