//! Decision and authorization: the gate between admission and execution.
//!
//! The sandbox runs `plan` only for a [`Decided`] capsule (admitted, and
//! allowed by a decision that policy evaluation produced: an [`Evaluated`])
//! and `apply`/`verify` only for an [`Authorized`] one (decided, and
//! authorized for one validated plan, which it owns: `apply` and `verify`
//! read the plan from it). None of them can be built outside this crate
//! except through [`crate::policy::Policy::evaluate`], [`decide`] and
//! [`authorize`].
//!
//! A hand-made decision does not compile where a decision must be evaluated:
//!
//! ```compile_fail,E0308
//! use edge_core::authorize::decide;
//! use edge_core::policy::Decision;
//! fn run_anything(admitted: edge_core::admission::Admitted, d: Decision) {
//!     let _ = decide(admitted, d); // expected `Evaluated`, found `Decision`
//! }
//! ```
//!
//! and an [`Evaluated`] cannot be made from one (its field is private, and it
//! is neither `Clone` nor `Deserialize`):
//!
//! ```compile_fail,E0423
//! fn forge(d: edge_core::policy::Decision) -> edge_core::authorize::Evaluated {
//!     edge_core::authorize::Evaluated(d)
//! }
//! ```
//!
//! ```compile_fail,E0277
//! fn forge(json: &str) -> edge_core::authorize::Evaluated {
//!     serde_json::from_str(json).unwrap()
//! }
//! ```

use crate::admission::Admitted;
use crate::approval::quorum::QuorumMet;
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

/// A decision as policy evaluation produced it: the only input [`decide`]
/// accepts. Built by [`crate::policy::Policy::evaluate`], or by
/// [`Evaluated::dangerous_without_policy`] for a runner whose operator
/// switched the policy off (`dangerous_run_without_policy`).
#[derive(Debug)]
pub struct Evaluated(Decision);

impl Evaluated {
    pub(crate) fn new(decision: Decision) -> Self {
        Self(decision)
    }

    /// The decision of a runner configured without a policy (an insecure
    /// switch the operator must set by name): tier 0, no approvals, saying so.
    pub fn dangerous_without_policy() -> Self {
        Self(Decision::unapproved_tier0())
    }

    pub fn decision(&self) -> &Decision {
        &self.0
    }
}

/// Why authorization refused to let a run proceed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthorizeError {
    #[error("policy denied the capsule: {}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Denied(Vec<Reason>),
    #[error(
        "tier {tier} needs {required} approval(s); collect them with `edge-runner approve` and run again with --approval"
    )]
    ApprovalsRequired { tier: u8, required: u32 },
    #[error("the quorum was met for another {0}")]
    QuorumForAnother(&'static str),
    #[error("the plan was validated for capsule {plan_capsule}, not for {capsule}")]
    PlanForAnotherCapsule { capsule: Sha256Digest, plan_capsule: Sha256Digest },
}

impl AuthorizeError {
    pub fn reason_code(&self) -> &'static str {
        match self {
            AuthorizeError::Denied(_) => "policy.denied",
            AuthorizeError::ApprovalsRequired { .. } => "authorize.approvals_missing",
            AuthorizeError::PlanForAnotherCapsule { .. } => "authorize.plan_mismatch",
            AuthorizeError::QuorumForAnother(_) => "authorize.quorum_mismatch",
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
pub fn decide(admitted: Admitted, evaluated: Evaluated) -> Result<Decided, AuthorizeError> {
    let decision = evaluated.0;
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
    plan: ValidPlan,
    quorum: Option<QuorumMet>,
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
        self.plan.digest()
    }
    /// The validated plan this authorization is bound to: what `apply`
    /// and `verify` are given, and what the diff is checked against.
    pub fn plan(&self) -> &ValidPlan {
        &self.plan
    }
    /// The quorum that authorized it (None at tier 0).
    pub fn quorum(&self) -> Option<&QuorumMet> {
        self.quorum.as_ref()
    }
}

/// Authorize a decided capsule for one validated plan. Tier 0 needs no
/// quorum; above it, `quorum` must be a met quorum bound to exactly this
/// capsule, plan and policy.
///
/// # Errors
/// [`AuthorizeError::ApprovalsRequired`] without a quorum above tier 0,
/// [`AuthorizeError::QuorumForAnother`] for a quorum bound elsewhere.
pub fn authorize(decided: Decided, plan: ValidPlan, quorum: Option<QuorumMet>) -> Result<Authorized, AuthorizeError> {
    let capsule = decided.admitted.capsule().file().digest();
    if plan.capsule() != capsule {
        return Err(AuthorizeError::PlanForAnotherCapsule { capsule, plan_capsule: plan.capsule() });
    }
    let d = &decided.decision;
    if d.tier == 0 && d.approvals_required == 0 {
        return Ok(Authorized { plan, decided, quorum: None });
    }
    let Some(q) = quorum else {
        return Err(AuthorizeError::ApprovalsRequired { tier: d.tier, required: d.approvals_required });
    };
    for (what, bound, here) in [
        ("capsule", Some(q.capsule()), Some(capsule)),
        ("plan", Some(q.plan()), Some(plan.digest())),
        ("policy", Some(q.policy()), d.policy),
    ] {
        if bound != here {
            return Err(AuthorizeError::QuorumForAnother(what));
        }
    }
    Ok(Authorized { plan, decided, quorum: Some(q) })
}
