//! Decision and authorization: the gate between admission and execution.
//!
//! The sandbox runs `plan` only for a [`Decided`] capsule (admitted, and
//! allowed by a [`Decision`]) and `apply`/`verify` only for an [`Authorized`]
//! one (decided, and authorized for one validated plan). Neither can be built
//! outside this crate except through [`decide`] and [`authorize`]. The policy plane (risk tiers) and approval plane (quorums)
//! plug in here: until they exist the decision is always
//! [`Decision::unapproved_tier0`], recorded as such.

use crate::admission::Admitted;
use crate::digest::Sha256Digest;
use crate::plan::ValidPlan;

pub use crate::policy::Decision;
use crate::policy::Reason;

impl Decision {
    /// The decision of a runner without a policy: allowed at tier 0 with no
    /// approvals, and saying so, so a reviewer can see no policy applied.
    pub fn unapproved_tier0() -> Self {
        Decision {
            allowed: true,
            tier: 0,
            approvals_required: 0,
            requirement: None,
            reasons: vec![Reason::new(
                "no-policy",
                "no policy configured: every admitted capsule runs as an unapproved tier-0 change",
            )],
            policy: None,
            graph: None,
            derivation: None,
        }
    }
}

/// Why authorization refused to let a run proceed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthorizeError {
    #[error("policy denied the capsule: {}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Denied(Vec<Reason>),
    #[error("tier {tier} needs {required} approval(s) and none can be given by this runner version yet")]
    ApprovalsRequired { tier: u8, required: u32 },
    #[error("the plan was validated for capsule {plan_capsule}, not for {capsule}")]
    PlanForAnotherCapsule { capsule: Sha256Digest, plan_capsule: Sha256Digest },
}

impl AuthorizeError {
    pub fn reason_code(&self) -> &'static str {
        match self {
            AuthorizeError::Denied(_) => "policy.denied",
            AuthorizeError::ApprovalsRequired { .. } => "authorize.approvals_missing",
            AuthorizeError::PlanForAnotherCapsule { .. } => "authorize.plan_mismatch",
        }
    }
}

/// Proof that a capsule was admitted and the policy allowed it. Enough to
/// run `plan` (read-only); not enough to change anything.
#[derive(Debug)]
pub struct Decided {
    admitted: Admitted,
    decision: Decision,
}

impl Decided {
    pub fn admitted(&self) -> &Admitted {
        &self.admitted
    }
    pub fn decision(&self) -> &Decision {
        &self.decision
    }
}

/// Apply a decision to an admitted capsule.
///
/// # Errors
/// [`AuthorizeError::Denied`] when the decision denies.
pub fn decide(admitted: Admitted, decision: Decision) -> Result<Decided, AuthorizeError> {
    if !decision.allowed {
        return Err(AuthorizeError::Denied(decision.reasons));
    }
    Ok(Decided { admitted, decision })
}

/// Proof that a capsule was admitted, decided and authorized for exactly one
/// plan. `apply` and `verify` take this and nothing less.
#[derive(Debug)]
pub struct Authorized {
    decided: Decided,
    plan: Sha256Digest,
}

impl Authorized {
    pub fn admitted(&self) -> &Admitted {
        &self.decided.admitted
    }
    pub fn decision(&self) -> &Decision {
        &self.decided.decision
    }
    /// The plan digest this authorization is bound to.
    pub fn plan_digest(&self) -> Sha256Digest {
        self.plan
    }
}

/// Authorize a decided capsule for one validated plan.
///
/// # Errors
/// [`AuthorizeError::ApprovalsRequired`] above tier 0 (fail closed: this
/// runner version cannot collect approvals yet).
pub fn authorize(decided: Decided, plan: &ValidPlan) -> Result<Authorized, AuthorizeError> {
    let capsule = decided.admitted.capsule().file().digest();
    if plan.capsule() != capsule {
        return Err(AuthorizeError::PlanForAnotherCapsule { capsule, plan_capsule: plan.capsule() });
    }
    let d = &decided.decision;
    if d.tier > 0 || d.approvals_required > 0 {
        return Err(AuthorizeError::ApprovalsRequired { tier: d.tier, required: d.approvals_required });
    }
    Ok(Authorized { plan: plan.digest(), decided })
}
