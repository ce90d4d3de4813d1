//! Authorize: tier 0 goes on under its policy; above it, a run without
//! approvals ends `awaiting-approval` with a proposal document (what the
//! approvers review: see `proposal.rs`), and a run with approvals has each
//! one verified, bound to exactly this proposal, capsule, plan, policy,
//! runner, tier and grant, single-use, and the quorum counted. The result
//! is the [`Authority`] the sandbox's `apply` and `verify` take.

use std::collections::HashSet;

use anyhow::Result;
use edge_core::approval::CounterLedger;
use edge_core::approval::quorum::{self, Outcome as QuorumOutcome, QuorumMet, Subject};
use edge_core::approval::{self, ApprovalError, ApprovalFile, Binding, VerifiedApproval};
use edge_core::authorize::{self, AuthorizeError as CoreAuthorizeError, Decided};
use edge_core::evidence::{Event, Outcome, PasskeyUse};
use edge_core::plan::ValidPlan;

use super::Runner;
use super::preview::{Previewed, proposal_named};
use super::proposal::{PROPOSAL_SCHEMA, Proposal, proposal_path, unix_now};
use super::run::{Fails, RunReport, Stage, StageError, Stop};
use crate::sandbox::{Authority, Prepared};
use crate::store::fold::Spent;

/// Why a run above tier 0 was not authorized.
#[derive(Debug, thiserror::Error)]
pub enum AuthorizeError {
    #[error("approvals were given but no [approvers] registry is configured")]
    NoApprovers,
    #[error("approvals need a policy that says what they must be")]
    NoPolicy,
    #[error("no approval file could be read")]
    Unreadable,
    #[error("the approvals name different proposals: {0}")]
    MixedProposals(String),
    #[error("proposal {0} was already executed; submit again")]
    Executed(String),
    #[error("proposal {0} waited longer than its tier allows and expired; submit again")]
    Expired(String),
    #[error("proposal {0} is not known to this runner")]
    Unknown(String),
    #[error("the approvals are for proposal {id}, of capsule {proposal}; this capsule is {capsule}")]
    OtherCapsule { id: String, proposal: edge_core::Sha256Digest, capsule: edge_core::Sha256Digest },
    #[error("{0}")]
    Clock(String),
    #[error("rejected by {by}{}", .comment.as_deref().map(|c| format!(": {c}")).unwrap_or_default())]
    Vetoed { by: String, comment: Option<String> },
    #[error("{count} of {required} required approval(s) counted (distinct people and keys, eligible roles)")]
    QuorumNotMet { count: u32, required: u32 },
    #[error(transparent)]
    Core(#[from] CoreAuthorizeError),
}

impl StageError for AuthorizeError {
    fn stage(&self) -> Stage {
        Stage::Authorize
    }

    fn reason_code(&self) -> &'static str {
        match self {
            Self::NoApprovers => "authorize.no_approvers",
            Self::NoPolicy => "authorize.no_policy",
            Self::Unreadable => "approval.malformed",
            Self::MixedProposals(_) => "authorize.mixed_proposals",
            Self::Executed(_) => "authorize.proposal_executed",
            Self::Expired(_) => "authorize.proposal_expired",
            Self::Unknown(_) => "authorize.unknown_proposal",
            Self::OtherCapsule { .. } => "authorize.other_capsule",
            Self::Clock(_) => "authorize.clock_error",
            Self::Vetoed { .. } => "authorize.vetoed",
            Self::QuorumNotMet { .. } => "authorize.quorum_not_met",
            Self::Core(e) => e.reason_code(),
        }
    }
}

/// What one batch of approvals used so far: nonces, and passkey counters
/// (checked with the log's, see [`Runner::single_use`]).
#[derive(Debug, Default)]
pub(crate) struct Batch {
    nonces: HashSet<String>,
    counters: CounterLedger,
}

impl Runner {
    pub(crate) async fn authorize(
        &self,
        decided: Decided,
        valid: ValidPlan,
        prepared: Prepared,
        previewed: Option<&Previewed>,
        approvals: &[Vec<u8>],
        report: &mut RunReport,
    ) -> Result<Authority, Stop> {
        let quorum = if decided.decision().tier == 0 {
            None
        } else if approvals.is_empty() {
            self.await_approval(report, &decided, &valid, previewed)?;
            return Err(Stop::Ended);
        } else {
            Some(self.gather_quorum(report, &decided, &valid, approvals).await?)
        };
        let authorized = authorize::authorize(decided, valid, quorum).map_err(AuthorizeError::from)?;
        let (approvals_used, note) = match (authorized.quorum(), authorized.decision().policy) {
            (Some(q), _) if q.break_glass() => {
                (q.nonces().to_vec(), format!("BREAK-GLASS authorization of proposal {}", q.proposal()))
            }
            (Some(q), _) => (q.nonces().to_vec(), format!("quorum met for proposal {}", q.proposal())),
            (None, Some(p)) => (Vec::new(), format!("tier 0 under policy {p}: automatic, no approvals required")),
            (None, None) => (Vec::new(), "unapproved tier-0 run: no policy configured".into()),
        };
        report.record(Event::Authorized { tier: authorized.decision().tier, approvals: approvals_used, note })?;
        Authority::new(authorized, prepared).or_fail()
    }

    /// Whether the log records a met quorum for the proposal.
    ///
    /// # Errors
    /// If the store cannot be read (nothing is authorized then).
    pub(crate) fn executed(&self, id: &str) -> Result<bool> {
        Ok(self.log.spent(Spent::Executed, id)?.is_some())
    }

    /// Whether the log records the proposal's expiry.
    ///
    /// # Errors
    /// If the store cannot be read.
    pub(crate) fn expired(&self, id: &str) -> Result<bool> {
        Ok(self.log.spent(Spent::Expired, id)?.is_some())
    }

    /// Single use: an approval whose nonce a met quorum in the log spent, or
    /// that came earlier in this batch (`seen`), is a replay; a passkey
    /// approval whose signature counter does not move forward from the
    /// credential's approvals the log consumed, or that came earlier in this
    /// batch, is refused (`approval.counter_regressed`: a cloned
    /// authenticator).
    ///
    /// # Errors
    /// The outer error: the store cannot be read (nothing is accepted then).
    pub(crate) fn single_use(
        &self,
        seen: &mut Batch,
        v: Result<VerifiedApproval, ApprovalError>,
    ) -> Result<Result<VerifiedApproval, ApprovalError>> {
        let v = match v {
            Ok(v) => v,
            Err(e) => return Ok(Err(e)),
        };
        if self.log.spent(Spent::Nonce, &v.nonce)?.is_some() || !seen.nonces.insert(v.nonce.clone()) {
            return Ok(Err(ApprovalError::Replayed(v.nonce)));
        }
        if let Some(counter) = v.counter {
            let index = self.log.index();
            if let Err(e) = index.settlements.counters.check_with(&seen.counters, &v.key, v.issued_at, counter) {
                return Ok(Err(e));
            }
            seen.counters.note(&v.key, v.issued_at, counter);
        }
        Ok(Ok(v))
    }

    /// Keep the staged result, write the proposal document and end the run
    /// awaiting approval.
    fn await_approval(
        &self,
        report: &mut RunReport,
        decided: &Decided,
        valid: &ValidPlan,
        previewed: Option<&Previewed>,
    ) -> Result<(), Stop> {
        let capsule = decided.admitted().capsule();
        let id = edge_core::lifecycle::proposal_id(&report.run);
        if let Some(p) = previewed {
            self.keep_preview(&id, p)?;
        }
        let proposal = Proposal {
            schema: PROPOSAL_SCHEMA.into(),
            id: id.clone(),
            runner: self.config.name.clone(),
            created_at: unix_now().or_fail()?,
            capsule: capsule.file().digest(),
            manifest: serde_json::from_slice(capsule.file().manifest_bytes()).or_fail()?,
            signer: capsule.signer().to_owned(),
            signer_detail: capsule.signer_detail().to_owned(),
            transparency: capsule.transparency(),
            decision: decided.decision().clone(),
            grant: decided.admitted().grant().clone(),
            plan: valid.plan().clone(),
            plan_digest: valid.digest(),
            preview: previewed.map(|p| p.document),
            bodies: report
                .call_shown
                .iter()
                .filter(|(d, b)| edge_core::Sha256Digest::of(b) == **d)
                .map(|(d, b)| {
                    use base64::Engine as _;
                    (*d, base64::engine::general_purpose::STANDARD.encode(b))
                })
                .collect(),
            masked: report
                .call_shown
                .iter()
                .filter(|(d, b)| edge_core::Sha256Digest::of(b) != **d)
                .map(|(d, b)| (*d, String::from_utf8_lossy(b).into_owned()))
                .collect(),
            previews: valid
                .plan()
                .calls
                .iter()
                .flat_map(|c| std::iter::once(&c.request).chain(&c.compensation))
                .filter_map(|r| self.config.endpoints.get(&r.endpoint))
                .filter(|ep| ep.preview != edge_core::preview::PreviewMode::Full)
                .map(|ep| (ep.name.clone(), ep.preview))
                .collect(),
        };
        let bytes = serde_json::to_vec_pretty(&proposal).or_fail()?;
        let document = report.artifact(&bytes)?;
        let path = proposal_path(self, &id);
        crate::staging::write_durably(&path, &bytes).or_fail()?;
        let required = decided.decision().approvals_required;
        report.record(Event::AwaitingApproval { proposal: id, document, approvals_required: required })?;
        report.close(Outcome::AwaitingApproval)?;
        report.proposal = Some(path);
        report.waiting_capsule = Some(capsule.file().to_bytes());
        Ok(())
    }

    /// Verify the approvals and evaluate the quorum, recording each approval
    /// and the quorum (durably, before the nonces count as spent).
    async fn gather_quorum(
        &self,
        report: &mut RunReport,
        decided: &Decided,
        valid: &ValidPlan,
        approvals: &[Vec<u8>],
    ) -> Result<QuorumMet, Stop> {
        // Nonces and executed proposals are read from the log: all of it,
        // and nobody else settles a proposal until this quorum is recorded.
        report.barrier().await?;
        let _settling = self.settling.lock().await;
        let registry = report.governance.approvers.clone().ok_or(AuthorizeError::NoApprovers)?;
        let decision = decided.decision();
        let (Some(policy), Some(requirement)) = (decision.policy, decision.requirement.clone()) else {
            return Err(AuthorizeError::NoPolicy.into());
        };
        // Which proposal: every readable approval must name the same one.
        let id = proposal_named(approvals)?;
        if self.executed(&id).or_fail()? {
            // Still record each approval and why it does not count.
            for bytes in approvals {
                let d = report.artifact(bytes)?;
                report.record(Event::ApprovalReceived { proposal: id.clone(), approval: d })?;
                let nonce = ApprovalFile::parse(bytes).map(|f| f.statement.nonce).unwrap_or_default();
                let e = ApprovalError::Replayed(nonce);
                report.record(Event::ApprovalRefused {
                    approval: d,
                    principal: None,
                    reason_code: e.reason_code().into(),
                    detail: e.to_string(),
                })?;
            }
            return Err(AuthorizeError::Executed(id).into());
        }
        let now = unix_now().map_err(|e| AuthorizeError::Clock(format!("{e:#}")))?;
        if self.expired(&id).or_fail()? || !self.expire_settling(now, Some(&id)).await.or_fail()?.is_empty() {
            return Err(AuthorizeError::Expired(id).into());
        }
        if !proposal_path(self, &id).exists() {
            return Err(AuthorizeError::Unknown(id).into());
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
        let results =
            approval::verify_approvals(approvals, &registry, &binding, now, report.governance.clock_skew_secs);
        let mut accepted: Vec<VerifiedApproval> = Vec::new();
        let mut seen = Batch::default();
        for (bytes, result) in approvals.iter().zip(results) {
            let d = report.artifact(bytes)?;
            report.record(Event::ApprovalReceived { proposal: id.clone(), approval: d })?;
            match self.single_use(&mut seen, result).or_fail()? {
                Ok(v) => {
                    let verdict = serde_json::to_value(v.verdict).or_fail()?;
                    report.record(Event::ApprovalAccepted {
                        approval: d,
                        principal: v.principal.clone(),
                        key: v.key.clone(),
                        verdict: verdict.as_str().unwrap_or("?").to_owned(),
                        nonce: v.nonce.clone(),
                        passkey: v.counter.map(|counter| PasskeyUse { counter, issued_at: v.issued_at }),
                    })?;
                    accepted.push(v);
                }
                Err(e) => {
                    let principal = ApprovalFile::parse(bytes).ok().map(|f| f.statement.approver);
                    report.record(Event::ApprovalRefused {
                        approval: d,
                        principal,
                        reason_code: e.reason_code().into(),
                        detail: e.to_string(),
                    })?;
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
        let allowed_signers = report.artifact(registry.allowed_signers_text.as_bytes())?;
        let roles = report.artifact(registry.roles_text.as_bytes())?;
        let passkeys = registry.passkeys_text.as_ref().map(|t| report.artifact(t.as_bytes())).transpose()?;
        let break_glass = matches!(result.outcome, QuorumOutcome::Met { break_glass: true, .. });
        // Durable before the settling lock is released: the nonces are spent.
        let quorum = Event::Quorum {
            proposal: id.clone(),
            outcome: serde_json::to_value(&result.outcome).or_fail()?,
            counted: serde_json::to_value(&result.approvals).or_fail()?,
            break_glass,
            nonces: result.met.as_ref().map(|m| m.nonces().to_vec()).unwrap_or_default(),
            allowed_signers,
            roles,
            passkeys,
            checked_at: now,
            clock_skew_secs: report.governance.clock_skew_secs,
        };
        report.log.append(&report.run, quorum).await.or_fail()?;
        report.quorum = Some(serde_json::to_value(&result.outcome).or_fail()?);
        match (result.met, result.outcome) {
            (Some(met), _) => Ok(met),
            (None, QuorumOutcome::Vetoed { by, comment }) => Err(AuthorizeError::Vetoed { by, comment }.into()),
            (None, QuorumOutcome::Insufficient { count, required }) => {
                Err(AuthorizeError::QuorumNotMet { count, required }.into())
            }
            (None, QuorumOutcome::Met { .. }) => unreachable!("a met outcome always carries its proof"),
        }
    }
}
