//! What the verifier found out about each run, from verified records only:
//! the facts a report tells (who submitted and signed it, the decision, the
//! change, the quorum, the outcome). Built by `runs::check_runs`.

use edge_core::Sha256Digest;
use edge_core::approval::quorum;
use edge_core::evidence::Outcome;
use edge_core::manifest::Provenance;
use edge_core::plan::{DiffEntry, Finding};
use serde::Serialize;

/// What a reviewer needs to know about one run (from verified records only).
#[derive(Debug, Clone, Default, Serialize)]
pub struct RunSummary {
    pub run: String,
    pub first_seq: u64,
    pub last_seq: u64,
    pub started: String,
    pub ended: String,
    /// `name@version`.
    pub capsule: Option<String>,
    pub capsule_digest: Option<Sha256Digest>,
    pub signer: Option<String>,
    pub tier: Option<u8>,
    pub allowed: Option<bool>,
    pub reasons: Vec<String>,
    pub plan_summary: Option<String>,
    /// (principal, verdict) of each accepted approval.
    pub approvals: Vec<(String, String)>,
    /// Each approval the runner refused, and why.
    pub refused_approvals: Vec<RefusedApproval>,
    /// The quorum this run evaluated (a run that presents approvals).
    pub quorum: Option<QuorumSummary>,
    /// Where the capsule says it came from (its signed manifest): shown to
    /// reviewers, never used to derive risk.
    pub provenance: Option<Provenance>,
    pub break_glass: bool,
    pub diff: Vec<DiffEntry>,
    /// Artifact: the preview of the staged result the run committed (or
    /// that waits for approval), checked against the plan's digests.
    pub preview: Option<Sha256Digest>,
    /// The proposal this run waits as, or continues.
    pub proposal: Option<String>,
    pub findings: Vec<Finding>,
    /// Each request the run sent to an endpoint (`METHOD endpoint/path`),
    /// in order: reads, the planned calls, compensations.
    pub calls: Vec<String>,
    /// (stage, reason code, detail).
    pub refusals: Vec<(String, String, String)>,
    pub rolled_back: Option<(String, String)>,
    pub verify_passed: Option<bool>,
    /// The capsule's own summary of its `verify` phase.
    pub verify_summary: Option<String>,
    pub outcome: Option<Outcome>,
    pub dangerous: Vec<String>,
    /// The authenticated agent that submitted the capsule (API submissions).
    pub submitted_by: Option<String>,
    /// The runner build that executed the run: the runner's self-attestation
    /// in force when the run started (absent when the bundle holds no
    /// `runner-started` record before it: a run export, a `since` export
    /// that begins after the start, or a log from a runner before 0.1's
    /// self-attestation).
    pub build: Option<RunnerBuild>,
}

/// What the runner said it was when it started (`runner-started`): its
/// executable's digest, version and source revision, and the digests of
/// what it was started with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RunnerBuild {
    /// The `runner-started` record.
    pub record: u64,
    pub started: String,
    pub binary: Sha256Digest,
    pub version: String,
    pub revision: String,
    /// The config file as read (by digest only: it may hold secrets).
    pub config: Option<Sha256Digest>,
    /// The config as shown, secrets replaced: an artifact of the bundle
    /// (absent for runners before 2026-12-06).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub config_shown: Option<Sha256Digest>,
    pub policy: Option<Sha256Digest>,
    pub graph: Option<Sha256Digest>,
    pub approvers: Option<Sha256Digest>,
}

impl RunnerBuild {
    /// The build a `runner-started` record names (None for other records).
    pub fn of(r: &edge_core::evidence::Record) -> Option<Self> {
        let edge_core::evidence::Event::RunnerStarted {
            binary,
            version,
            revision,
            config,
            config_shown,
            policy,
            graph,
            approvers,
        } = &r.event
        else {
            return None;
        };
        Some(Self {
            record: r.seq,
            started: r.time.clone(),
            binary: *binary,
            version: version.clone(),
            revision: revision.clone(),
            config: *config,
            config_shown: *config_shown,
            policy: *policy,
            graph: *graph,
            approvers: *approvers,
        })
    }

    /// The builds that executed `runs`, each with its number of runs, in
    /// the order they started; and the number of runs no build is known for.
    pub fn tally(runs: &[RunSummary]) -> (Vec<(&RunnerBuild, usize)>, usize) {
        let mut by: std::collections::BTreeMap<u64, (&RunnerBuild, usize)> = std::collections::BTreeMap::new();
        let mut unknown = 0;
        for r in runs {
            match &r.build {
                Some(b) => by.entry(b.record).or_insert((b, 0)).1 += 1,
                None => unknown += 1,
            }
        }
        (by.into_values().collect(), unknown)
    }

    /// `0.1.0 (rev 1a2b3c4d5e6f, binary sha256:…)`: the build in a few words.
    pub fn short(&self) -> String {
        let rev: String = self.revision.chars().take(12).collect();
        format!("{} (rev {rev}, binary {})", self.version, self.binary)
    }
}

/// An approval the runner refused (it did not verify, or was replayed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RefusedApproval {
    /// The principal, when the approval got far enough to name one.
    pub principal: Option<String>,
    pub reason_code: String,
    pub detail: String,
    pub record: u64,
}

/// A quorum as the verifier replayed it: who approved, with which key and
/// role, when, with what comment, and whether each counted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct QuorumSummary {
    pub proposal: String,
    pub record: u64,
    /// The record's time (RFC 3339).
    pub time: String,
    pub outcome: quorum::Outcome,
    pub break_glass: bool,
    /// Every verified approval, in the order presented.
    pub approvers: Vec<Approver>,
}

/// One verified approval in a quorum.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Approver {
    pub principal: String,
    /// `SHA256:…` fingerprint of the signing key.
    pub key: String,
    /// The principal's roles in the recorded registry.
    pub roles: Vec<String>,
    /// `approve` or `reject`.
    pub verdict: String,
    /// When the approver signed (RFC 3339, from the signed statement).
    pub issued_at: String,
    /// The approver's comment (signed; hostile text like any other).
    pub comment: Option<String>,
    /// Whether it counted toward the quorum.
    pub counted: bool,
    /// Why not, when it did not (duplicate person or key, role, proposer).
    pub note: String,
}
