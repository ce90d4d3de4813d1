//! Decision and authorization: the gate between admission and execution.
//!
//! The sandbox accepts only an [`Authorized`] value, and the only way to make
//! one is [`authorize`], which needs an [`Admitted`] capsule and an allowing
//! [`Decision`]. The policy plane (risk tiers) and approval plane (quorums)
//! plug in here: until they exist the decision is always
//! [`Decision::unapproved_tier0`], recorded as such.

use serde::{Deserialize, Serialize};

use crate::admission::Admitted;

/// The policy decision for one capsule and grant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    pub allowed: bool,
    pub tier: u8,
    pub approvals_required: u32,
    /// Reasons a person can read, each naming what produced it.
    pub reasons: Vec<String>,
}

impl Decision {
    /// The foundation's only decision: allowed at tier 0 with no approvals,
    /// because no policy plane is configured. Recorded verbatim in evidence so
    /// a reviewer can see that no policy was applied.
    pub fn unapproved_tier0() -> Self {
        Decision {
            allowed: true,
            tier: 0,
            approvals_required: 0,
            reasons: vec![
                "no policy plane configured in this runner version: every admitted capsule runs as an unapproved tier-0 change"
                    .to_owned(),
            ],
        }
    }
}

/// Why authorization refused to let a run proceed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthorizeError {
    #[error("policy denied the capsule: {}", .0.join("; "))]
    Denied(Vec<String>),
    #[error(
        "tier {tier} needs {required} approval(s) and none can be given by this runner version yet"
    )]
    ApprovalsRequired { tier: u8, required: u32 },
}

impl AuthorizeError {
    pub fn reason_code(&self) -> &'static str {
        match self {
            AuthorizeError::Denied(_) => "policy.denied",
            AuthorizeError::ApprovalsRequired { .. } => "authorize.approvals_missing",
        }
    }
}

/// Proof that a capsule was admitted, decided and authorized. The sandbox
/// takes this and nothing less.
#[derive(Debug)]
pub struct Authorized {
    admitted: Admitted,
    decision: Decision,
}

impl Authorized {
    pub fn admitted(&self) -> &Admitted {
        &self.admitted
    }
    pub fn decision(&self) -> &Decision {
        &self.decision
    }
}

/// Authorize an admitted capsule under a decision.
///
/// # Errors
/// [`AuthorizeError::Denied`] when the decision denies, and
/// [`AuthorizeError::ApprovalsRequired`] when approvals are needed (fail
/// closed: nothing here can supply them yet).
pub fn authorize(admitted: Admitted, decision: Decision) -> Result<Authorized, AuthorizeError> {
    if !decision.allowed {
        return Err(AuthorizeError::Denied(decision.reasons));
    }
    if decision.tier > 0 || decision.approvals_required > 0 {
        return Err(AuthorizeError::ApprovalsRequired {
            tier: decision.tier,
            required: decision.approvals_required,
        });
    }
    Ok(Authorized { admitted, decision })
}
