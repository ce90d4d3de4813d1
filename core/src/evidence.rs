//! Evidence records: typed JSON, each carrying the SHA-256 of the previous
//! record, so that any change, deletion or reordering breaks the chain.
//!
//! A record's hash is the SHA-256 of its canonical JSON (RFC 8785). The first
//! record of a log links to [`GENESIS`]. Large artifacts (manifests, signature
//! bundles, plans, diffs, captured output) are stored content-addressed beside
//! the log and referenced here by digest. Records never contain secrets.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::canonical::{self, CanonicalError};
use crate::digest::Sha256Digest;
use crate::plan::{DiffEntry, Finding};
use crate::policy::Decision;

/// The `prev` of the first record in a log.
pub const GENESIS: Sha256Digest = Sha256Digest([0; 32]);
/// Schema identifier written into every record.
pub const RECORD_SCHEMA: &str = "edge-runner.evidence/v1";

/// One entry of the evidence log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    pub schema: String,
    /// Position in the log, from 0, without gaps.
    pub seq: u64,
    /// When the record was written (RFC 3339, UTC).
    pub time: String,
    /// The run this record belongs to.
    pub run: String,
    /// SHA-256 of the previous record's canonical JSON ([`GENESIS`] for the first).
    pub prev: Sha256Digest,
    pub event: Event,
}

/// What a run did at one step. Refusals and traps are events too: every
/// decision, allow or deny, is recorded before its effect.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case", deny_unknown_fields)]
#[non_exhaustive]
pub enum Event {
    /// A capsule was handed to the runner.
    Submission {
        capsule: Sha256Digest,
        name: String,
        version: String,
        kind: String,
        /// Artifact: the canonical manifest.
        manifest: Sha256Digest,
        component: Sha256Digest,
        /// Artifact: the Sigstore bundle, if the capsule carried one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        bundle: Option<Sha256Digest>,
        /// Insecure switches in force for this run (`dangerous_*`), if any.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        dangerous: Vec<String>,
        /// Who handed it over, when authenticated: the agent identity from
        /// its client certificate (API submissions).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        submitted_by: Option<String>,
    },
    /// Signature, manifest and capability checks passed.
    Admitted {
        signer: String,
        /// The verifying signer, so a reviewer can check the signature again:
        /// its SPKI PEM (keyed) or `keyless <identity> <issuer>`.
        signer_key: String,
        /// What the run is granted (mounts with access, env names, imports, limits).
        grant: serde_json::Value,
        /// The component's real imports.
        imports: Vec<String>,
        /// Artifact: the Sigstore trusted root (`trusted_root.json`) the
        /// signature was checked against, when one is configured.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        trusted_root: Option<Sha256Digest>,
    },
    /// The policy decision, with its inputs' digests and the derivation.
    /// Without a policy every admitted capsule is an unapproved tier-0 run,
    /// and the decision says so.
    Decision {
        decision: Decision,
        /// Artifact: the canonical decision input (capsule, signer, grant,
        /// node mapping) — with the policy and graph it replays the decision.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        input: Option<Sha256Digest>,
    },
    /// The runner started with, or switched to, another policy or graph
    /// (or to none). Artifacts: the new policy document and graph, whose
    /// SHA-256 are their digests.
    PolicyChange {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        old_policy: Option<Sha256Digest>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        new_policy: Option<Sha256Digest>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        old_graph: Option<Sha256Digest>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        new_graph: Option<Sha256Digest>,
    },
    /// Above tier 0 without approvals: the proposal (artifact: the proposal
    /// document approvers review) waits for a quorum.
    AwaitingApproval { proposal: String, document: Sha256Digest, approvals_required: u32 },
    /// An approval file was presented (artifact: its exact bytes).
    ApprovalReceived { proposal: String, approval: Sha256Digest },
    /// It verified: signature, registry, binding, time, single use.
    ApprovalAccepted {
        approval: Sha256Digest,
        principal: String,
        key: String,
        verdict: String,
        nonce: String,
        /// A passkey approval's signature counter and statement issue time
        /// (what the counter rule orders by); absent for SSH signatures.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        passkey: Option<PasskeyUse>,
    },
    /// It did not, and why.
    ApprovalRefused {
        approval: Sha256Digest,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        principal: Option<String>,
        reason_code: String,
        detail: String,
    },
    /// The quorum outcome, written before anything is applied. When met, the
    /// listed nonces are consumed for good.
    Quorum {
        proposal: String,
        outcome: serde_json::Value,
        counted: serde_json::Value,
        break_glass: bool,
        nonces: Vec<String>,
        /// Artifacts: the allowed_signers and roles files the approvals were checked against.
        allowed_signers: Sha256Digest,
        roles: Sha256Digest,
        /// Artifact: the passkeys registry file the approvals were checked
        /// against, when one is configured.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        passkeys: Option<Sha256Digest>,
        /// The clock the approvals were checked at (Unix seconds) and the
        /// skew allowed, so a reviewer can check them again exactly.
        checked_at: u64,
        clock_skew_secs: u64,
    },
    /// The runner's identity key (which signs checkpoints) was created or changed.
    KeyEvent { action: String, key: String },
    /// The runner's identity key was rotated (`edge-runner keys rotate`):
    /// the key in force, `old_key`, hands over to `new_key`. Both keys sign
    /// one statement ([`crate::rotation::Statement`]) binding the runner,
    /// both keys and this record's own `seq`, `prev` and `time`, so a
    /// reviewer who trusts the old key can follow the chain to the new one,
    /// and a reviewer holding the new key learns the old one agreed.
    /// Checkpoints of a tree that holds this record are signed by the new
    /// key. Keys are C2SP verifier keys (`<name>+<id>+<key>`); signatures
    /// are base64(key id ‖ Ed25519 signature), as on a signed note's line.
    /// Run `runner`.
    KeyRotation { old_key: String, new_key: String, old_signature: String, new_signature: String },
    /// What the runner is, recorded at every start (its self-attestation;
    /// run `runner`): the SHA-256 of its executable, the version and source
    /// revision it was built from, and the digests of what it was started
    /// with. Runs that follow, until the next start, were executed by this
    /// build. Claimed by the runner about itself: it shows which build
    /// produced a run, it cannot prove a tampered binary did not lie.
    RunnerStarted {
        /// SHA-256 of the running executable (`/proc/self/exe`).
        binary: Sha256Digest,
        /// The crate version (`CARGO_PKG_VERSION`).
        version: String,
        /// The git commit the binary was built from, or `unknown`.
        revision: String,
        /// SHA-256 of the config file as read (absent when the runner was
        /// configured without a file). The file itself is neither stored
        /// nor exported: it may hold secrets (webhook URLs, env values).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        config: Option<Sha256Digest>,
        /// The config as a reviewer is shown it (an artifact): the file
        /// parsed and written out again without comments, secrets replaced
        /// (`edge_runner::config::shown`). Absent in records of runners
        /// before 2026-12-06.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        config_shown: Option<Sha256Digest>,
        /// The policy and graph digests in force (absent without a policy).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        policy: Option<Sha256Digest>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        graph: Option<Sha256Digest>,
        /// The approver registry's digest (allowed_signers, roles and
        /// passkeys files: `approval::Registry::digest`), when one is configured.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        approvers: Option<Sha256Digest>,
    },
    /// The approver registry changed at the runner (an approver enrolled a
    /// passkey through the console): who, which credential, the registry
    /// digest before and after, and the new passkeys file (artifact).
    /// Recorded by the runner (run `runner`).
    RegistryChanged {
        action: String,
        principal: String,
        key: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        before: Option<Sha256Digest>,
        after: Sha256Digest,
        passkeys: Sha256Digest,
    },
    /// A proposal waited longer than its tier allows (`expires_after`) and
    /// can no longer be approved; recorded by the runner (run `runner`).
    ProposalExpired { proposal: String, waited_secs: u64, limit_secs: u64 },
    /// A policy or graph failed to load; the previous one stays in force.
    PolicyRefused {
        file: String,
        error: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        kept_policy: Option<Sha256Digest>,
    },
    /// The run continues a waiting proposal (approvals were presented): its
    /// plan and staged result are the proposal's, as recorded when it was
    /// submitted and previewed — neither `plan` nor `apply` runs again.
    /// Artifacts: the proposal document, its plan, the preview and the
    /// content the preview shows.
    Resumed {
        proposal: String,
        document: Sha256Digest,
        plan: Sha256Digest,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        preview: Option<Sha256Digest>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        contents: Vec<Sha256Digest>,
    },
    /// Authorization outcome (tier 0: no approvals needed).
    Authorized { tier: u8, approvals: Vec<String>, note: String },
    /// The capsule's plan (artifact: canonical plan JSON).
    Planned {
        plan: Sha256Digest,
        summary: String,
        changes: usize,
        findings: Vec<Finding>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        output: Option<Sha256Digest>,
        /// Artifacts: the bodies of the plan's calls and compensations as
        /// each endpoint's preview mode keeps them (the bodies their digests
        /// name, or masked), so reviewers see the requests approvers saw.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        bodies: Vec<Sha256Digest>,
    },
    /// A request to a granted endpoint is about to leave: durable before it
    /// is sent. `call` numbers the run's requests from 1; `planned` is the
    /// plan's call (from 0) it makes (`phase` apply) or undoes (`phase`
    /// compensate). `kept`: the endpoint's preview mode for its body (set
    /// when the request has one); artifact `body`: the body as that mode
    /// keeps it — the body itself (`full`: then it is `request.body`),
    /// masked (`redacted`), or nothing (`digest-only`). Records written
    /// before preview modes existed have neither, and keep the body itself
    /// (artifact `request.body`).
    CallIntent {
        phase: String,
        call: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        planned: Option<u32>,
        request: crate::calls::Request,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        kept: Option<crate::preview::PreviewMode>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        body: Option<Sha256Digest>,
    },
    /// What came back for request `call`: status, a few safe headers, the
    /// body's digest and size and (artifact `content`) its first 64 KiB as
    /// the endpoint's preview mode keeps it (as is, masked, or none); or,
    /// with `reason_code`, why nothing usable did.
    CallOutcome {
        call: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        status: Option<u16>,
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        headers: BTreeMap<String, String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        body: Option<Sha256Digest>,
        #[serde(default)]
        bytes: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        content: Option<Sha256Digest>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason_code: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        detail: Option<String>,
    },
    /// A capsule's request was refused before it left (it was never sent).
    CallRefused {
        phase: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        request: Option<crate::calls::Request>,
        reason_code: String,
        detail: String,
    },
    /// `apply` ran against the staged copy (before anyone approves: the
    /// preview) and the runner computed the diff.
    Applied {
        diff: Vec<DiffEntry>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        output: Option<Sha256Digest>,
        /// Artifact: the preview document (`edge_core::preview::Preview`)
        /// describing each changed file, with its content artifacts as the
        /// mount's preview mode allows.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        preview: Option<Sha256Digest>,
        /// Artifacts: the content the preview shows (exactly the content
        /// digests its files name), so an export carries them.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        contents: Vec<Sha256Digest>,
    },
    /// About to commit: the journal of what will change (written before any rename).
    CommitIntent { changes: usize, journal: Sha256Digest },
    /// The diff is committed to the live mounts.
    Committed { changes: usize },
    /// `verify` ran.
    Verified {
        passed: bool,
        summary: String,
        findings: Vec<Finding>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        output: Option<Sha256Digest>,
    },
    /// A committed change was undone.
    RolledBack { reason_code: String, detail: String, restored: usize },
    /// Something was refused: a check failed, a limit was hit, the guest trapped.
    Refused { stage: String, reason_code: String, detail: String },
    /// A run found unfinished on start and rolled back.
    Interrupted { restored: usize, detail: String },
    /// The governing configuration was reloaded without a restart (`SIGHUP`
    /// or `edge-runner reload`): policy, graph, node mapping, trusted
    /// signers and approver registry, all at once. Runs already started
    /// keep what they began with. `old` and `new` name every document by
    /// digest (each stored as an artifact); `restart_needed` lists the
    /// changed config sections a reload does not apply. Run `runner`.
    ConfigReloaded {
        trigger: String,
        old: Box<ConfigDigests>,
        new: Box<ConfigDigests>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        restart_needed: Vec<String>,
    },
    /// A reload was refused (the new files do not load, or could not be
    /// recorded); the configuration in `kept` stays in force. Run `runner`.
    ReloadRefused { trigger: String, error: String, kept: ConfigDigests },
    /// The terminal record of a run.
    Completed { outcome: Outcome },
    /// The runner started with insecure switches (`dangerous_…`) on; run
    /// `runner`. Every run's submission lists them too.
    Insecure { switches: Vec<String> },
    /// A webhook notification was given up: its last attempt failed, it
    /// was not retried (a permanent error), or it was dropped (queue full,
    /// the runner stopping). Run `runner`; never blocks or fails a run.
    /// `url` is scheme, host, port and path only (never credentials or a
    /// query); `event` the notification's kind; `attempts` 0 when dropped.
    NotificationFailed { url: String, event: String, proposal: String, attempts: u32, error: String },
    /// A run's staging copy could not be removed (it is kept under
    /// the staging directory's `.trash/` and removal is retried at every
    /// start); run `runner`.
    CleanupFailed { path: String, error: String },
}

/// The documents that govern decisions, by digest: the config file, the
/// policy and graph, the approver registry (its files and the digest the
/// approvals bind to) and the Sigstore trusted root. Each is an artifact,
/// but for the config file: its digest names it, and `config_shown` the
/// artifact a reviewer reads (see [`Event::RunnerStarted`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigDigests {
    pub config: Sha256Digest,
    /// The config as shown (absent in records before 2026-12-06, whose
    /// bundles of format v1 carried the file itself).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_shown: Option<Sha256Digest>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<Sha256Digest>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub graph: Option<Sha256Digest>,
    /// The registry digest approvals and registry records name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry: Option<Sha256Digest>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_signers: Option<Sha256Digest>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub roles: Option<Sha256Digest>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passkeys: Option<Sha256Digest>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trusted_root: Option<Sha256Digest>,
}

impl ConfigDigests {
    /// The digests that name stored documents (not `registry`, which is
    /// computed over the registry's files, nor `config`, the file itself).
    pub fn documents(&self) -> impl Iterator<Item = Sha256Digest> + '_ {
        [self.config_shown, self.policy, self.graph, self.allowed_signers, self.roles, self.passkeys, self.trusted_root]
            .into_iter()
            .flatten()
    }
}

/// One use of a passkey in an accepted approval: its signature counter and
/// the issue time of the statement it signed. The runner and the verifier
/// fold these into a [`crate::approval::CounterLedger`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PasskeyUse {
    pub counter: u32,
    pub issued_at: u64,
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// Changes committed and verified.
    Committed,
    /// Diagnostic or empty plan: nothing to change, findings reported.
    NoChanges,
    /// Refused before anything changed.
    Refused,
    /// Committed, then verify failed and the change was rolled back (for
    /// calls: every compensation was sent and answered with success).
    RolledBack,
    /// Calls were made, then a step failed and a compensation failed too:
    /// the service may be left changed. The call records say what was sent
    /// and what came back.
    Failed,
    /// Interrupted (crash) and rolled back on restart.
    Interrupted,
    /// Planned; waits for approvals (a new run with the approvals continues it).
    AwaitingApproval,
}

impl Record {
    /// Canonical bytes (what is hashed and stored).
    ///
    /// # Errors
    /// Only if a field holds a float, which the types prevent.
    pub fn canonical_bytes(&self) -> Result<Vec<u8>, CanonicalError> {
        canonical::to_canonical_vec(self)
    }

    /// SHA-256 of the canonical bytes: the next record's `prev`.
    ///
    /// # Errors
    /// As [`Record::canonical_bytes`].
    pub fn hash(&self) -> Result<Sha256Digest, CanonicalError> {
        Ok(Sha256Digest::of(&self.canonical_bytes()?))
    }

    /// Whether this record ends its run.
    pub fn is_terminal(&self) -> bool {
        matches!(self.event, Event::Completed { .. })
    }

    /// Every artifact this record references by digest (stored beside the
    /// records; an export carries exactly these). Bundles of the first
    /// format carried other ones for the config (the file itself, for a
    /// reload): the verifier's `Format::artifacts_of` says which a bundle
    /// must carry.
    pub fn artifacts(&self) -> Vec<Sha256Digest> {
        let mut out = Vec::new();
        let mut add = |d: &Option<Sha256Digest>| out.extend(d.iter().copied());
        match &self.event {
            Event::Submission { manifest, component, bundle, .. } => {
                add(&Some(*manifest));
                add(&Some(*component));
                add(bundle);
            }
            Event::Admitted { trusted_root, .. } => add(trusted_root),
            Event::Decision { decision, input } => {
                add(input);
                add(&decision.policy);
                add(&decision.graph);
            }
            Event::PolicyChange { old_policy, new_policy, old_graph, new_graph } => {
                for d in [old_policy, new_policy, old_graph, new_graph] {
                    add(d);
                }
            }
            Event::AwaitingApproval { document, .. } => add(&Some(*document)),
            Event::ApprovalReceived { approval, .. }
            | Event::ApprovalAccepted { approval, .. }
            | Event::ApprovalRefused { approval, .. } => add(&Some(*approval)),
            Event::Quorum { allowed_signers, roles, passkeys, .. } => {
                add(&Some(*allowed_signers));
                add(&Some(*roles));
                add(passkeys);
            }
            Event::Planned { plan, output, bodies, .. } => {
                add(&Some(*plan));
                add(output);
                out.extend(bodies.iter().copied());
            }
            Event::CallIntent { kept: Some(_), body, .. } => add(body),
            Event::CallIntent { kept: None, request, .. } => add(&request.body),
            Event::CallOutcome { content, .. } => add(content),
            Event::CallRefused { .. } => {}
            Event::Applied { output, preview, contents, .. } => {
                add(output);
                add(preview);
                out.extend(contents.iter().copied());
            }
            Event::Resumed { document, plan, preview, contents, .. } => {
                add(&Some(*document));
                add(&Some(*plan));
                add(preview);
                out.extend(contents.iter().copied());
            }
            Event::Verified { output, .. } => add(output),
            Event::CommitIntent { journal, .. } => add(&Some(*journal)),
            Event::PolicyRefused { kept_policy, .. } => add(kept_policy),
            Event::RegistryChanged { passkeys, .. } => add(&Some(*passkeys)),
            Event::ConfigReloaded { old, new, .. } => {
                for d in old.documents().chain(new.documents()) {
                    add(&Some(d));
                }
            }
            Event::ReloadRefused { kept, .. } => {
                for d in kept.documents() {
                    add(&Some(d));
                }
            }
            // The config as shown (stored at every start, with the other
            // governing documents).
            Event::RunnerStarted { config_shown, .. } => add(config_shown),
            Event::KeyEvent { .. }
            | Event::KeyRotation { .. }
            | Event::ProposalExpired { .. }
            | Event::Authorized { .. }
            | Event::Committed { .. }
            | Event::RolledBack { .. }
            | Event::Refused { .. }
            | Event::Interrupted { .. }
            | Event::Completed { .. }
            | Event::Insecure { .. }
            | Event::NotificationFailed { .. }
            | Event::CleanupFailed { .. } => {}
        }
        out.sort();
        out.dedup();
        out
    }

    /// The event's type name (`submission`, `decision`, …).
    pub fn event_type(&self) -> &'static str {
        self.event.type_name()
    }
}

impl Event {
    /// The serde tag (`type`) of this event, without serialising it: the
    /// evidence writer stores it beside every record.
    pub fn type_name(&self) -> &'static str {
        match self {
            Event::Submission { .. } => "submission",
            Event::Admitted { .. } => "admitted",
            Event::Decision { .. } => "decision",
            Event::PolicyChange { .. } => "policy-change",
            Event::AwaitingApproval { .. } => "awaiting-approval",
            Event::ApprovalReceived { .. } => "approval-received",
            Event::ApprovalAccepted { .. } => "approval-accepted",
            Event::ApprovalRefused { .. } => "approval-refused",
            Event::Quorum { .. } => "quorum",
            Event::KeyEvent { .. } => "key-event",
            Event::KeyRotation { .. } => "key-rotation",
            Event::RunnerStarted { .. } => "runner-started",
            Event::RegistryChanged { .. } => "registry-changed",
            Event::ProposalExpired { .. } => "proposal-expired",
            Event::PolicyRefused { .. } => "policy-refused",
            Event::Authorized { .. } => "authorized",
            Event::Planned { .. } => "planned",
            Event::CallIntent { .. } => "call-intent",
            Event::CallOutcome { .. } => "call-outcome",
            Event::CallRefused { .. } => "call-refused",
            Event::Resumed { .. } => "resumed",
            Event::Applied { .. } => "applied",
            Event::CommitIntent { .. } => "commit-intent",
            Event::Committed { .. } => "committed",
            Event::Verified { .. } => "verified",
            Event::RolledBack { .. } => "rolled-back",
            Event::Refused { .. } => "refused",
            Event::Interrupted { .. } => "interrupted",
            Event::Completed { .. } => "completed",
            Event::Insecure { .. } => "insecure",
            Event::CleanupFailed { .. } => "cleanup-failed",
            Event::ConfigReloaded { .. } => "config-reloaded",
            Event::ReloadRefused { .. } => "reload-refused",
            Event::NotificationFailed { .. } => "notification-failed",
        }
    }
}

/// Check one stored record: canonical bytes, expected sequence number and
/// chain link.
///
/// # Errors
/// The [`ChainError`] naming the record.
pub fn check_record(body: &[u8], expected_seq: u64, prev: Sha256Digest) -> Result<Record, ChainError> {
    let r: Record = serde_json::from_slice(body)
        .map_err(|e| ChainError::Malformed { line: expected_seq as usize + 1, reason: e.to_string() })?;
    if r.seq != expected_seq {
        return Err(ChainError::Sequence { seq: r.seq, expected: expected_seq });
    }
    if r.prev != prev {
        return Err(ChainError::Link { seq: r.seq, expected: prev, found: r.prev });
    }
    let bytes = r
        .canonical_bytes()
        .map_err(|e| ChainError::Malformed { line: expected_seq as usize + 1, reason: e.to_string() })?;
    if bytes != body {
        return Err(ChainError::NotCanonical { seq: r.seq });
    }
    Ok(r)
}

/// A break in the chain, naming the record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ChainError {
    #[error("record at line {line} is not a valid evidence record: {reason}")]
    Malformed { line: usize, reason: String },
    #[error("record {seq}: sequence number out of order (expected {expected})")]
    Sequence { seq: u64, expected: u64 },
    #[error("record {seq}: chain link broken (prev is {found}, previous record hashes to {expected})")]
    Link { seq: u64, expected: Sha256Digest, found: Sha256Digest },
    #[error("record {seq}: stored bytes are not its canonical form")]
    NotCanonical { seq: u64 },
}

/// Verify a log stored as canonical JSON lines (one record per line).
/// Returns the records and the hash of the last one.
///
/// # Errors
/// The first [`ChainError`].
pub fn verify_chain_lines(text: &[u8]) -> Result<(Vec<Record>, Sha256Digest), ChainError> {
    let mut records = Vec::new();
    let mut prev = GENESIS;
    for line in text.split(|b| *b == b'\n') {
        if line.is_empty() {
            continue;
        }
        let r = check_record(line, records.len() as u64, prev)?;
        prev = Sha256Digest::of(line);
        records.push(r);
    }
    Ok((records, prev))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(n: usize) -> Vec<u8> {
        let mut prev = GENESIS;
        let mut out = Vec::new();
        for seq in 0..n {
            let r = Record {
                schema: RECORD_SCHEMA.into(),
                seq: seq as u64,
                time: "2026-11-24T00:00:00Z".into(),
                run: format!("run-{}", seq / 2),
                prev,
                event: Event::Refused { stage: "admit".into(), reason_code: "x".into(), detail: format!("{seq}") },
            };
            let b = r.canonical_bytes().unwrap();
            prev = Sha256Digest::of(&b);
            out.extend_from_slice(&b);
            out.push(b'\n');
        }
        out
    }

    #[test]
    fn intact_chain_verifies() {
        let (records, _) = verify_chain_lines(&chain(5)).unwrap();
        assert_eq!(records.len(), 5);
    }

    #[test]
    fn deletion_reorder_and_edit_are_detected() {
        let text = chain(4);
        let lines: Vec<&[u8]> = text.split(|b| *b == b'\n').filter(|l| !l.is_empty()).collect();
        let join = |ls: &[&[u8]]| ls.iter().flat_map(|l| l.iter().copied().chain([b'\n'])).collect::<Vec<u8>>();
        assert!(matches!(verify_chain_lines(&join(&[lines[0], lines[2], lines[3]])), Err(ChainError::Sequence { .. })));
        assert!(matches!(verify_chain_lines(&join(&[lines[1], lines[0]])), Err(ChainError::Sequence { .. })));
        let edited = String::from_utf8(text.clone()).unwrap().replacen("\"detail\":\"1\"", "\"detail\":\"7\"", 1);
        assert!(matches!(verify_chain_lines(edited.as_bytes()), Err(ChainError::Link { seq: 2, .. })));
    }
}
