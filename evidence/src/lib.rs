//! Edge Runner evidence bundles and their offline verification.
//!
//! A reviewer builds this crate (and `edge-core`, which it uses for the
//! formats and the pure checks) without wasmtime, tokio or any network
//! client, and runs `edge-verify BUNDLE --key RUNNER.vkey`. See
//! `docs/evidence.md` for the bundle format and the verification checklist.
//!
//! * [`bundle`]: the file layout, writing and strict parsing.
//! * [`verify()`]: every check, in two levels — [`Level::Integrity`] (the
//!   signed checkpoint, every chain link, the Merkle tree and proofs, artifact
//!   digests) and [`Level::Full`] (also every record's schema, every capsule
//!   signature and approval signature, decision and quorum replay, run
//!   completeness and ordering).
//! * [`report`]: the human summary, by proposal (text, a self-contained HTML
//!   page, JSON for tools).
//! * [`cli`]: the `edge-verify` command line (the binary is a thin wrapper);
//!   [`cli_docs`]: completions, man pages and the help-text audit for both binaries.

pub mod bundle;
pub mod cli;
pub mod cli_docs;
mod ended;
pub mod report;
pub mod runs;
mod stream;
pub mod summary;
#[doc(hidden)]
pub mod synth;
pub mod verify;

pub use stream::{MAX_LINE, Source, checkpoint_of};
pub use verify::{Keep, Level, Step, Verified, verify, verify_file, verify_source, verify_with_progress};

use std::fmt;

/// A failed check: which record (if one), which check, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// Stable check name (`checkpoint.signature`, `record.chain`, `decision.replay`, …).
    pub check: &'static str,
    /// The record's sequence number, when the failure is about one record.
    pub record: Option<u64>,
    /// The run, when known.
    pub run: Option<String>,
    pub detail: String,
}

impl Failure {
    pub(crate) fn bundle(check: &'static str, detail: impl Into<String>) -> Self {
        Self { check, record: None, run: None, detail: detail.into() }
    }

    pub(crate) fn record(check: &'static str, seq: u64, run: &str, detail: impl Into<String>) -> Self {
        Self { check, record: Some(seq), run: Some(run.to_owned()), detail: detail.into() }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.record, &self.run) {
            (Some(seq), Some(run)) => write!(f, "record {seq} (run {run}): {}: {}", self.check, self.detail),
            (Some(seq), None) => write!(f, "record {seq}: {}: {}", self.check, self.detail),
            (None, Some(run)) => write!(f, "run {run}: {}: {}", self.check, self.detail),
            (None, None) => write!(f, "{}: {}", self.check, self.detail),
        }
    }
}

impl std::error::Error for Failure {}

/// Records of the runner itself rather than of a capsule run.
pub use edge_core::lifecycle::RUNNER_RUNS;

/// Parse a file of trusted runner keys: one C2SP note verifier key
/// (`<name>+<hex id>+<base64>`) per line; blank lines and `#` comments ignored.
///
/// # Errors
/// Names the line that is not a key.
pub fn parse_keys(text: &str) -> Result<Vec<edge_core::note::NoteVerifier>, String> {
    let mut keys = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        keys.push(
            edge_core::note::NoteVerifier::parse(line)
                .map_err(|e| format!("line {}: {e} (expected `<name>+<hex key id>+<base64 key>`)", i + 1))?,
        );
    }
    if keys.is_empty() {
        return Err("no keys in the file (expected `<name>+<hex key id>+<base64 key>` lines)".into());
    }
    Ok(keys)
}
