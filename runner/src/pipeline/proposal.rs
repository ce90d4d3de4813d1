//! Proposals: the document approvers review and sign for (written by the
//! authorize stage when a run above tier 0 has no approvals yet), where a
//! waiting proposal stands with the approvals collected so far, and expiry.
//!
//! A run above tier 0 without approvals ends `awaiting-approval` and writes a
//! *proposal document* (`<state>/proposals/<id>.json`, also an evidence
//! artifact): everything an approver must see — the canonical manifest, the
//! decision with its blast radius and reasons, the grant, the full plan — from
//! which `edge-runner approve` recomputes the capsule and plan digests before
//! showing anything. A later run of the same capsule with `--approval` files
//! re-admits, re-decides and re-plans; the approvals must be bound to that
//! proposal and to exactly the capsule, plan, policy, runner, tier and grant of
//! the new run, so a changed file, plan or policy voids them.
//!
//! Nonces are single-use: a met quorum consumes its nonces and the proposal,
//! and both are read back from the durable evidence log on every start, so a
//! replay after a restart is refused too.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, Result};
use edge_core::Sha256Digest;
use edge_core::admission::Grant;
use edge_core::approval::quorum::{self, Outcome as QuorumOutcome, Subject};
use edge_core::approval::{self, ApprovalFile, Binding};
use edge_core::canonical;
use edge_core::evidence::Event;
use edge_core::plan::Plan;
use edge_core::policy::Decision;
use edge_core::signature::Transparency;
use serde::{Deserialize, Serialize};

use super::Runner;

/// Proposal document schema.
pub const PROPOSAL_SCHEMA: &str = "https://edge-runner.dev/proposal/v1";

/// What approvers review and sign for.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Proposal {
    pub schema: String,
    pub id: String,
    pub runner: String,
    pub created_at: u64,
    pub capsule: Sha256Digest,
    /// The canonical manifest (its digest is `capsule`).
    pub manifest: serde_json::Value,
    pub signer: String,
    pub signer_detail: String,
    pub transparency: Transparency,
    pub decision: Decision,
    pub grant: Grant,
    pub plan: Plan,
    pub plan_digest: Sha256Digest,
    /// Artifact: the preview of the staged result (`edge_core::preview`):
    /// what each changed file looks like, as its mount's preview mode
    /// allows. Absent when the plan changes nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preview: Option<Sha256Digest>,
    /// The exact bodies of the plan's calls and compensations (base64), by
    /// the digest the plan names: what the approver sees is what is sent
    /// (endpoints previewed `full`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub bodies: BTreeMap<Sha256Digest, String>,
    /// Bodies of endpoints previewed `redacted`: the text with its
    /// secret-bearing lines masked, by the digest of the real body (which
    /// the approver signs, through the plan digest). `digest-only` bodies
    /// appear in neither map.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub masked: BTreeMap<Sha256Digest, String>,
    /// The preview mode of each endpoint whose bodies are not shown in full
    /// (endpoint → `redacted` | `digest-only`), as configured when the plan
    /// was made: held for the proposal's apply and compensations even if
    /// the config is loosened meanwhile.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub previews: BTreeMap<String, edge_core::preview::PreviewMode>,
}

impl Proposal {
    /// What the approver is shown of a planned body.
    pub fn shown_body(&self, digest: &Sha256Digest) -> crate::service::detail::ShownBody {
        use crate::service::detail::ShownBody;
        match (self.body(digest), self.masked.get(digest)) {
            (Ok(b), _) => ShownBody::Exact(b),
            (Err(_), Some(m)) => ShownBody::Masked(m.clone()),
            (Err(_), None) => ShownBody::DigestOnly,
        }
    }

    /// The body a planned request names, checked against its digest.
    ///
    /// # Errors
    /// If the document does not hold it, or it is not what the digest names.
    pub fn body(&self, digest: &Sha256Digest) -> Result<Vec<u8>> {
        use base64::Engine as _;
        let text = self.bodies.get(digest).with_context(|| format!("the proposal does not hold the body {digest}"))?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text)
            .with_context(|| format!("the body {digest} is not base64"))?;
        if Sha256Digest::of(&bytes) != *digest {
            anyhow::bail!("the body held for {digest} is something else");
        }
        Ok(bytes)
    }

    /// Recompute the capsule and plan digests from the document's content:
    /// an approver never signs digests the document does not back.
    ///
    /// # Errors
    /// Names the digest that does not match.
    pub fn check(&self) -> Result<()> {
        if self.schema != PROPOSAL_SCHEMA {
            anyhow::bail!("not a proposal document (schema `{}`)", self.schema);
        }
        let manifest = canonical::to_canonical_vec(&self.manifest)?;
        if Sha256Digest::of(&manifest) != self.capsule {
            anyhow::bail!("the manifest in the proposal does not hash to its capsule digest {}", self.capsule);
        }
        let plan = canonical::to_canonical_vec(&self.plan)?;
        if Sha256Digest::of(&plan) != self.plan_digest {
            anyhow::bail!("the plan in the proposal does not hash to its plan digest {}", self.plan_digest);
        }
        if self.decision.policy.is_none() {
            anyhow::bail!("the proposal's decision names no policy");
        }
        for r in self.plan.calls.iter().flat_map(|c| std::iter::once(&c.request).chain(&c.compensation)) {
            if let Some(d) = &r.body {
                self.check_body(&r.endpoint, d)?;
            }
        }
        Ok(())
    }

    /// A planned body is held as its endpoint's mode says: exactly (`full`,
    /// checked against the digest the plan names), masked (`redacted`; or
    /// exactly, when nothing was masked), or not at all (`digest-only`).
    fn check_body(&self, endpoint: &str, d: &Sha256Digest) -> Result<()> {
        use edge_core::preview::PreviewMode;
        let mode = self.previews.get(endpoint).copied().unwrap_or(PreviewMode::Full);
        let (exact, masked) = (self.bodies.contains_key(d), self.masked.contains_key(d));
        match mode {
            PreviewMode::Full if masked => anyhow::bail!("the body {d} of `{endpoint}` (previewed in full) is masked"),
            PreviewMode::Full | PreviewMode::Redacted if exact => self.body(d).map(drop),
            PreviewMode::Full => anyhow::bail!("the proposal does not hold the body {d}"),
            PreviewMode::Redacted => Ok(()),
            PreviewMode::DigestOnly if exact || masked => {
                anyhow::bail!("the body {d} of `{endpoint}` (previewed digest-only) is held")
            }
            PreviewMode::DigestOnly => Ok(()),
        }
    }

    /// When the proposal can no longer be approved (Unix seconds).
    pub fn expires_at(&self) -> u64 {
        let ttl = self.decision.requirement.as_ref().and_then(|r| r.expires_after_secs);
        self.created_at.saturating_add(ttl.unwrap_or(super::DEFAULT_PROPOSAL_TTL_SECS))
    }

    /// The statement `approver` signs to decide this proposal: bound to its
    /// id, capsule, plan, policy, runner, tier and grant, issued `now`, valid
    /// for `lifetime` seconds (at most the tier's maximum approval age), with
    /// a fresh random nonce. Callers show the proposal (after [`Self::check`])
    /// before anyone signs it.
    ///
    /// # Errors
    /// The document names no policy or tier requirement.
    pub fn statement(
        &self,
        approver: &str,
        decision: approval::Verdict,
        comment: Option<String>,
        now: u64,
        lifetime: u64,
    ) -> Result<approval::Statement> {
        use rand_core::RngCore as _;
        let requirement =
            self.decision.requirement.as_ref().context("the proposal's decision has no tier requirement")?;
        let mut nonce = [0u8; 32];
        rand_core::OsRng.fill_bytes(&mut nonce);
        Ok(approval::Statement {
            schema: approval::STATEMENT_SCHEMA.into(),
            proposal: self.id.clone(),
            capsule: self.capsule,
            plan: self.plan_digest,
            policy: self.decision.policy.context("the proposal's decision names no policy")?,
            runner: self.runner.clone(),
            tier: self.decision.tier,
            grant: self.grant.clone(),
            decision,
            comment,
            approver: approver.to_owned(),
            issued_at: now,
            expires_at: now + lifetime.min(requirement.max_age_secs),
            nonce: hex::encode(nonce),
        })
    }
}

/// Unix seconds now.
/// The earliest time the system clock may read (2024-01-01T00:00:00Z): a
/// clock reset to 1970 (a dead RTC battery, a VM without time sync) would
/// make every approval "not yet expired" and no proposal ever expire.
const CLOCK_FLOOR: u64 = 1_704_067_200;

/// Now, in Unix seconds. A clock that cannot be read, or reads before
/// `CLOCK_FLOOR` (2024-01-01), is an error, never time 0: approvals, expiry and
/// evidence times depend on it, so callers fail closed.
///
/// # Errors
/// The clock is before 1970 or before 2024.
pub fn unix_now() -> Result<u64> {
    clock_check(std::time::SystemTime::now())
}

fn clock_check(now: std::time::SystemTime) -> Result<u64> {
    let secs = now
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| anyhow::anyhow!("the system clock reads a time before 1970"))?
        .as_secs();
    if secs < CLOCK_FLOOR {
        anyhow::bail!(
            "the system clock reads {secs} (Unix seconds), before 2024-01-01: fix the clock (NTP) and retry; \
             nothing runs while approval and expiry times cannot be trusted"
        );
    }
    Ok(secs)
}

/// Where a proposal's document is kept.
pub fn proposal_path(runner: &Runner, id: &str) -> PathBuf {
    runner.config.state_dir.join("proposals").join(format!("{id}.json"))
}

/// Read approval files given on the command line.
///
/// # Errors
/// If a file cannot be read.
pub fn read_approvals(paths: &[PathBuf]) -> Result<Vec<Vec<u8>>> {
    paths.iter().map(|p| std::fs::read(p).with_context(|| format!("cannot read approval {}", p.display()))).collect()
}

/// Where a waiting proposal stands with the approvals collected so far,
/// checked without running anything or writing evidence (the daemon runs the
/// proposal, which records everything, once this says met or vetoed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "quorum", rename_all = "kebab-case")]
pub enum QuorumStatus {
    /// Not yet: `count` of `required` counted; refusals by reason.
    Pending {
        count: u32,
        required: u32,
        refused: Vec<String>,
    },
    Met,
    Vetoed {
        by: String,
    },
}

/// Who has approved a proposal so far, whether each counted (and why
/// not), and what is still needed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct QuorumView {
    pub status: QuorumStatus,
    pub approvals: Vec<ApproverView>,
    /// What is still needed, in words.
    pub needed: String,
}

/// One approval as it stands in a quorum.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct ApproverView {
    pub principal: String,
    /// The roles the registry gives them.
    pub roles: Vec<String>,
    /// `SHA256:…` fingerprint of the signing key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verdict: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issued_at: Option<u64>,
    pub counted: bool,
    /// Why it did not count (duplicate person or key, ineligible role, the
    /// proposer, a rejection, a signature or binding that does not verify).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub why_not: Option<String>,
}

/// `approve` or `reject`.
pub fn verdict_name(v: approval::Verdict) -> &'static str {
    match v {
        approval::Verdict::Approve => "approve",
        approval::Verdict::Reject => "reject",
    }
}

/// What a tier requirement still needs, in words.
pub fn still_needed(status: &QuorumStatus, roles: &[String]) -> String {
    match status {
        QuorumStatus::Met => "nothing: the quorum is met".into(),
        QuorumStatus::Vetoed { by } => format!("nothing: rejected by {by}"),
        QuorumStatus::Pending { count, required, .. } => {
            let from = if roles.is_empty() { "any registered approver".to_owned() } else { roles.join(" or ") };
            format!(
                "{} more approval(s) from {from} (distinct people and keys; not the proposer or the agent's owner)",
                required.saturating_sub(*count)
            )
        }
    }
}

impl Runner {
    /// Check collected approvals against a waiting proposal's document.
    ///
    /// # Errors
    /// If the proposal is unknown, already executed, or no approver
    /// registry is configured.
    pub fn quorum_status(&self, id: &str, approvals: &[Vec<u8>]) -> Result<QuorumStatus> {
        Ok(self.quorum_view(id, approvals)?.status)
    }

    /// As [`Runner::quorum_status`], with each approval's standing.
    ///
    /// # Errors
    /// As [`Runner::quorum_status`].
    pub fn quorum_view(&self, id: &str, approvals: &[Vec<u8>]) -> Result<QuorumView> {
        let path = proposal_path(self, id);
        let bytes = std::fs::read(&path).with_context(|| format!("proposal {id} is not known to this runner"))?;
        let doc: Proposal =
            serde_json::from_slice(&bytes).with_context(|| format!("{} is unreadable", path.display()))?;
        doc.check()?;
        let governance = self.governance();
        let registry =
            governance.approvers.clone().context("no [approvers] registry is configured: nobody can approve")?;
        let registry_skew = governance.clock_skew_secs;
        if self.executed(id)? {
            anyhow::bail!("proposal {id} was already executed");
        }
        if self.expired(id)? {
            anyhow::bail!("proposal {id} expired; the agent must submit again");
        }
        let (Some(policy), Some(requirement)) = (doc.decision.policy, doc.decision.requirement.clone()) else {
            anyhow::bail!("proposal {id} needs no approvals");
        };
        let binding = Binding {
            proposal: id.to_owned(),
            capsule: doc.capsule,
            plan: doc.plan_digest,
            policy,
            runner: self.config.name.clone(),
            tier: doc.decision.tier,
            grant: doc.grant.clone(),
            max_age_secs: requirement.max_age_secs,
        };
        let results = approval::verify_approvals(approvals, &registry, &binding, unix_now()?, registry_skew);
        let mut seen = super::authorize::Batch::default();
        let mut accepted = Vec::new();
        let mut refused = Vec::new();
        let mut views = Vec::new();
        for (bytes, r) in approvals.iter().zip(results) {
            match self.single_use(&mut seen, r)? {
                Ok(v) => accepted.push(v),
                Err(e) => {
                    let why = format!("[{}] {e}", e.reason_code());
                    let principal = ApprovalFile::parse(bytes).map(|f| f.statement.approver).unwrap_or_default();
                    views.push(ApproverView {
                        roles: registry.roles_of(&principal).to_vec(),
                        principal,
                        why_not: Some(why.clone()),
                        ..ApproverView::default()
                    });
                    refused.push(why);
                }
            }
        }
        let subject =
            Subject { proposal: id, capsule: doc.capsule, plan: doc.plan_digest, policy, signer: &doc.signer };
        let result = quorum::evaluate(&accepted, &requirement, &registry, &subject);
        for (c, v) in result.approvals.iter().zip(&accepted) {
            views.push(ApproverView {
                principal: c.principal.clone(),
                roles: registry.roles_of(&c.principal).to_vec(),
                key: Some(c.key.clone()),
                verdict: Some(verdict_name(v.verdict).into()),
                comment: v.comment.clone(),
                issued_at: Some(v.issued_at),
                counted: c.counted,
                why_not: (!c.counted).then(|| c.note.clone()),
            });
        }
        let status = match result.outcome {
            QuorumOutcome::Met { .. } => QuorumStatus::Met,
            QuorumOutcome::Vetoed { by, .. } => QuorumStatus::Vetoed { by },
            QuorumOutcome::Insufficient { count, required } => QuorumStatus::Pending { count, required, refused },
        };
        let needed = still_needed(&status, &requirement.roles);
        Ok(QuorumView { status, approvals: views, needed })
    }
}

/// How long a proposal may wait for approvals when its tier sets no
/// `expires_after`.
pub const DEFAULT_PROPOSAL_TTL_SECS: u64 = 24 * 3600;

impl Runner {
    /// Record as expired every waiting proposal (or only `only`) that has
    /// waited longer than its tier allows; returns their ids. The record is
    /// written before anyone is told, and an expired proposal never runs.
    ///
    /// # Errors
    /// If the evidence log cannot be written.
    pub async fn expire_proposals(&self, now: u64, only: Option<&str>) -> Result<Vec<String>> {
        let _settling = self.settling.lock().await;
        self.expire_settling(now, only).await
    }

    /// [`Runner::expire_proposals`], for a caller holding the settling lock.
    pub(crate) async fn expire_settling(&self, now: u64, only: Option<&str>) -> Result<Vec<String>> {
        // Settled (a quorum met or vetoed) or already expired: not waiting.
        let waiting = self.log.index().waiting();
        let mut due = Vec::new();
        for (proposal, created) in waiting {
            if only.is_some_and(|id| id != proposal) {
                continue;
            }
            let limit = std::fs::read(proposal_path(self, &proposal))
                .ok()
                .and_then(|b| serde_json::from_slice::<Proposal>(&b).ok())
                .and_then(|p| p.decision.requirement.and_then(|t| t.expires_after_secs))
                .unwrap_or(DEFAULT_PROPOSAL_TTL_SECS);
            let waited = now.saturating_sub(created);
            if waited >= limit {
                due.push((proposal, waited, limit));
            }
        }
        let mut ids = Vec::new();
        let mut log = self.log.run_log();
        for (proposal, waited_secs, limit_secs) in due {
            log.append_deferred(
                "runner",
                Event::ProposalExpired { proposal: proposal.clone(), waited_secs, limit_secs },
            )?;
            ids.push(proposal);
        }
        log.barrier().await?;
        for id in &ids {
            self.drop_preview(id);
        }
        Ok(ids)
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;

    #[test]
    fn a_clock_before_2024_or_1970_is_an_error_not_time_zero() {
        assert!(clock_check(UNIX_EPOCH).is_err());
        assert!(clock_check(UNIX_EPOCH - Duration::from_secs(5)).is_err());
        let e = format!("{:#}", clock_check(UNIX_EPOCH + Duration::from_secs(1_000)).unwrap_err());
        assert!(e.contains("fix the clock"), "{e}");
        assert_eq!(clock_check(UNIX_EPOCH + Duration::from_secs(1_800_000_000)).unwrap(), 1_800_000_000);
    }
}
