//! The authorize step above tier 0: proposals that wait for approvals, and
//! quorums gathered from approval files.
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

use std::collections::{BTreeSet, HashSet};
use std::path::PathBuf;

use anyhow::{Context, Result};
use edge_core::Sha256Digest;
use edge_core::admission::Grant;
use edge_core::approval::quorum::{self, Outcome as QuorumOutcome, QuorumMet, Subject};
use edge_core::approval::{self, ApprovalError, ApprovalFile, Binding, VerifiedApproval};
use edge_core::authorize::Decided;
use edge_core::canonical;
use edge_core::evidence::{Event, Outcome};
use edge_core::plan::{Plan, ValidPlan};
use edge_core::policy::Decision;
use edge_core::signature::Transparency;
use serde::{Deserialize, Serialize};

use crate::exec::{RunReport, Runner};

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
}

impl Proposal {
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
        Ok(())
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

pub fn proposal_path(runner: &Runner, id: &str) -> PathBuf {
    runner.config.state_dir.join("proposals").join(format!("{id}.json"))
}

impl Runner {
    /// Whether the log records a met quorum for the proposal.
    fn executed(&self, id: &str) -> bool {
        self.log.index().executed.contains(id)
    }

    /// Single use: an approval whose nonce a met quorum in the log spent, or
    /// that came earlier in this batch (`seen`), is a replay.
    fn single_use(&self, seen: &mut HashSet<String>, v: VerifiedApproval) -> Result<VerifiedApproval, ApprovalError> {
        if !self.log.index().nonces.contains(&v.nonce) && seen.insert(v.nonce.clone()) {
            Ok(v)
        } else {
            Err(ApprovalError::Replayed(v.nonce))
        }
    }

    /// Write the proposal document and end the run awaiting approval.
    pub(crate) async fn await_approval(
        &self,
        report: &mut RunReport,
        decided: &Decided,
        valid: &ValidPlan,
    ) -> Result<()> {
        let capsule = decided.admitted().capsule();
        let id = format!("p{}", &report.run[1..]);
        let proposal = Proposal {
            schema: PROPOSAL_SCHEMA.into(),
            id: id.clone(),
            runner: self.config.name.clone(),
            created_at: unix_now()?,
            capsule: capsule.file().digest(),
            manifest: serde_json::from_slice(capsule.file().manifest_bytes())?,
            signer: capsule.signer().to_owned(),
            signer_detail: capsule.signer_detail().to_owned(),
            transparency: capsule.transparency(),
            decision: decided.decision().clone(),
            grant: decided.admitted().grant().clone(),
            plan: valid.plan().clone(),
            plan_digest: valid.digest(),
        };
        let bytes = serde_json::to_vec_pretty(&proposal)?;
        let document = report.log.put_artifact(&bytes)?;
        let path = proposal_path(self, &id);
        crate::staging::write_durably(&path, &bytes)?;
        let required = decided.decision().approvals_required;
        self.record(report, Event::AwaitingApproval { proposal: id.clone(), document, approvals_required: required })?;
        self.record(report, Event::Completed { outcome: Outcome::AwaitingApproval })?;
        report.outcome = Outcome::AwaitingApproval;
        report.proposal = Some(path);
        Ok(())
    }

    /// Verify the approvals and evaluate the quorum. `Ok(None)` means the run
    /// was refused (and recorded as such).
    pub(crate) async fn gather_quorum(
        &self,
        report: &mut RunReport,
        decided: &Decided,
        valid: &ValidPlan,
        approvals: &[Vec<u8>],
    ) -> Result<Option<QuorumMet>> {
        // Nonces and executed proposals are read from the log: all of it,
        // and nobody else settles a proposal until this quorum is recorded.
        report.log.barrier().await?;
        let _settling = self.settling.lock().await;
        let Some(registry) = self.config.approvers.clone() else {
            self.refuse(
                report,
                "authorize",
                "authorize.no_approvers",
                "approvals were given but no [approvers] registry is configured".into(),
            )?;
            return Ok(None);
        };
        let decision = decided.decision();
        let (Some(policy), Some(requirement)) = (decision.policy, decision.requirement.clone()) else {
            self.refuse(
                report,
                "authorize",
                "authorize.no_policy",
                "approvals need a policy that says what they must be".into(),
            )?;
            return Ok(None);
        };
        // Which proposal: every readable approval must name the same one.
        let ids: BTreeSet<String> =
            approvals.iter().filter_map(|b| ApprovalFile::parse(b).ok()).map(|f| f.statement.proposal).collect();
        let id = match ids.len() {
            1 => ids.into_iter().next().expect("one id"),
            0 => {
                self.refuse(report, "authorize", "approval.malformed", "no approval file could be read".into())?;
                return Ok(None);
            }
            _ => {
                let list = ids.into_iter().collect::<Vec<_>>().join(", ");
                self.refuse(
                    report,
                    "authorize",
                    "authorize.mixed_proposals",
                    format!("the approvals name different proposals: {list}"),
                )?;
                return Ok(None);
            }
        };
        if self.executed(&id) {
            // Still record each approval and why it does not count.
            for bytes in approvals {
                let d = report.log.put_artifact(bytes)?;
                self.record(report, Event::ApprovalReceived { proposal: id.clone(), approval: d })?;
                let nonce = ApprovalFile::parse(bytes).map(|f| f.statement.nonce).unwrap_or_default();
                let e = ApprovalError::Replayed(nonce);
                self.record(
                    report,
                    Event::ApprovalRefused {
                        approval: d,
                        principal: None,
                        reason_code: e.reason_code().into(),
                        detail: e.to_string(),
                    },
                )?;
            }
            self.refuse(
                report,
                "authorize",
                "authorize.proposal_executed",
                format!("proposal {id} was already executed; submit again"),
            )?;
            return Ok(None);
        }
        if self.log.index().expired.contains(&id) || !self.expire_settling(unix_now()?, Some(&id)).await?.is_empty() {
            self.refuse(
                report,
                "authorize",
                "authorize.proposal_expired",
                format!("proposal {id} waited longer than its tier allows and expired; submit again"),
            )?;
            return Ok(None);
        }
        if !proposal_path(self, &id).exists() {
            self.refuse(
                report,
                "authorize",
                "authorize.unknown_proposal",
                format!("proposal {id} is not known to this runner"),
            )?;
            return Ok(None);
        }
        let binding = Binding {
            proposal: id.clone(),
            capsule: decided.admitted().capsule().file().digest(),
            plan: valid.digest(),
            policy,
            runner: self.config.name.clone(),
            tier: decision.tier,
            grant: decided.admitted().grant().clone(),
            max_age_secs: requirement.max_age_secs,
        };
        let now = match unix_now() {
            Ok(now) => now,
            Err(e) => {
                self.refuse(report, "authorize", "authorize.clock_error", format!("{e:#}"))?;
                return Ok(None);
            }
        };
        let results = approval::verify_approvals(approvals, &registry, &binding, now, self.config.clock_skew_secs);
        let mut accepted: Vec<VerifiedApproval> = Vec::new();
        let mut seen = HashSet::new();
        for (bytes, result) in approvals.iter().zip(results) {
            let d = report.log.put_artifact(bytes)?;
            self.record(report, Event::ApprovalReceived { proposal: id.clone(), approval: d })?;
            let checked = result.and_then(|v| self.single_use(&mut seen, v));
            match checked {
                Ok(v) => {
                    self.record(
                        report,
                        Event::ApprovalAccepted {
                            approval: d,
                            principal: v.principal.clone(),
                            key: v.key.clone(),
                            verdict: serde_json::to_value(v.verdict)?.as_str().unwrap_or("?").to_owned(),
                            nonce: v.nonce.clone(),
                        },
                    )?;
                    accepted.push(v);
                }
                Err(e) => {
                    let principal = ApprovalFile::parse(bytes).ok().map(|f| f.statement.approver);
                    self.record(
                        report,
                        Event::ApprovalRefused {
                            approval: d,
                            principal,
                            reason_code: e.reason_code().into(),
                            detail: e.to_string(),
                        },
                    )?;
                }
            }
        }
        let subject = Subject {
            proposal: &id,
            capsule: binding.capsule,
            plan: binding.plan,
            policy,
            signer: decided.admitted().capsule().signer(),
        };
        let result = quorum::evaluate(&accepted, &requirement, &registry, &subject);
        let allowed_signers = report.log.put_artifact(registry.allowed_signers_text.as_bytes())?;
        let roles = report.log.put_artifact(registry.roles_text.as_bytes())?;
        let break_glass = matches!(result.outcome, QuorumOutcome::Met { break_glass: true, .. });
        // Durable before the settling lock is released: the nonces are spent.
        report
            .log
            .append(
                &report.run,
                Event::Quorum {
                    proposal: id.clone(),
                    outcome: serde_json::to_value(&result.outcome)?,
                    counted: serde_json::to_value(&result.approvals)?,
                    break_glass,
                    nonces: result.met.as_ref().map(|m| m.nonces().to_vec()).unwrap_or_default(),
                    allowed_signers,
                    roles,
                    checked_at: now,
                    clock_skew_secs: self.config.clock_skew_secs,
                },
            )
            .await?;
        report.quorum = Some(serde_json::to_value(&result.outcome)?);
        match (result.met, result.outcome) {
            (Some(met), _) => Ok(Some(met)),
            (None, QuorumOutcome::Vetoed { by, comment }) => {
                let why = comment.map(|c| format!(": {c}")).unwrap_or_default();
                self.refuse(report, "authorize", "authorize.vetoed", format!("rejected by {by}{why}"))?;
                Ok(None)
            }
            (None, QuorumOutcome::Insufficient { count, required }) => {
                self.refuse(
                    report,
                    "authorize",
                    "authorize.quorum_not_met",
                    format!(
                        "{count} of {required} required approval(s) counted (distinct people and keys, eligible roles)"
                    ),
                )?;
                Ok(None)
            }
            (None, QuorumOutcome::Met { .. }) => unreachable!("a met outcome always carries its proof"),
        }
    }
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

impl Runner {
    /// Check collected approvals against a waiting proposal's document.
    ///
    /// # Errors
    /// If the proposal is unknown, already executed, or no approver
    /// registry is configured.
    pub fn quorum_status(&self, id: &str, approvals: &[Vec<u8>]) -> Result<QuorumStatus> {
        let path = proposal_path(self, id);
        let bytes = std::fs::read(&path).with_context(|| format!("proposal {id} is not known to this runner"))?;
        let doc: Proposal =
            serde_json::from_slice(&bytes).with_context(|| format!("{} is unreadable", path.display()))?;
        doc.check()?;
        let registry =
            self.config.approvers.as_ref().context("no [approvers] registry is configured: nobody can approve")?;
        if self.executed(id) {
            anyhow::bail!("proposal {id} was already executed");
        }
        if self.log.index().expired.contains(id) {
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
        let results =
            approval::verify_approvals(approvals, registry, &binding, unix_now()?, self.config.clock_skew_secs);
        let mut seen = HashSet::new();
        let mut accepted = Vec::new();
        let mut refused = Vec::new();
        for r in results {
            match r.and_then(|v| self.single_use(&mut seen, v)) {
                Ok(v) => accepted.push(v),
                Err(e) => refused.push(format!("[{}] {e}", e.reason_code())),
            }
        }
        let subject =
            Subject { proposal: id, capsule: doc.capsule, plan: doc.plan_digest, policy, signer: &doc.signer };
        Ok(match quorum::evaluate(&accepted, &requirement, registry, &subject).outcome {
            QuorumOutcome::Met { .. } => QuorumStatus::Met,
            QuorumOutcome::Vetoed { by, .. } => QuorumStatus::Vetoed { by },
            QuorumOutcome::Insufficient { count, required } => QuorumStatus::Pending { count, required, refused },
        })
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
    async fn expire_settling(&self, now: u64, only: Option<&str>) -> Result<Vec<String>> {
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
