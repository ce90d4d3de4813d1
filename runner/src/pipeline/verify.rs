//! Verify: the capsule's `verify` export runs against the live mounts
//! (read-only) and says whether the change did what it should; a failed or
//! broken verification rolls the commit back.

use edge_core::Sha256Digest;
use edge_core::evidence::{Event, Outcome};

use super::Runner;
use super::commit::Committed;
use super::run::{Fails, Refusal, RunReport, Stage, StageError, Stop, VerificationReport};
use crate::sandbox::{Authority, SandboxError, Verification};

/// Why a verification did not pass.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    #[error("{0}")]
    Failed(String),
}

impl StageError for VerifyError {
    fn stage(&self) -> Stage {
        Stage::Verify
    }

    fn reason_code(&self) -> &'static str {
        match self {
            Self::Sandbox(e) => e.reason_code(),
            Self::Failed(_) => "verify.failed",
        }
    }
}

impl Runner {
    /// A plan with no changes: verify read-only and finish.
    pub(crate) async fn verify_unchanged(&self, run: &Authority, report: &mut RunReport) -> Result<(), Stop> {
        report.barrier().await?;
        self.check(run, report).await??;
        report.close(Outcome::NoChanges)
    }

    /// Verify a commit: keep it when verification passes, roll it back when
    /// it fails or breaks.
    pub(crate) async fn verify(
        &self,
        run: &Authority,
        committed: Committed,
        report: &mut RunReport,
    ) -> Result<(), Stop> {
        match self.check(run, report).await? {
            Ok(()) => {
                report.close(Outcome::Committed)?;
                report.barrier().await?;
                committed.finalize().or_fail()
            }
            Err(e) => {
                // A failed verification was recorded with its result; a
                // broken one is recorded as refused.
                let detail = self.redact(&e.to_string());
                if let VerifyError::Sandbox(_) = e {
                    let stage = e.stage().as_str().into();
                    report.record(Event::Refused {
                        stage,
                        reason_code: e.reason_code().into(),
                        detail: detail.clone(),
                    })?;
                }
                self.roll_back(committed, report, e.reason_code(), &detail).await?;
                report.refusal = Some(Refusal { stage: Stage::Verify, reason_code: e.reason_code(), detail });
                Err(Stop::Ended)
            }
        }
    }

    /// Run `verify` and record its result.
    pub(crate) async fn check(&self, run: &Authority, report: &mut RunReport) -> Result<Result<(), VerifyError>, Stop> {
        // (What the phase's gate records follows the run's records so far.)
        report.barrier().await?;
        let log = self.call_log(report);
        let (verified, captured, log) = self.sandbox.verify(run, log).await;
        Self::absorb_calls(report, log);
        let output = self.store_output(report, "verify", captured)?;
        let v = match verified {
            Ok(v) => v,
            Err(e) => return Ok(Err(e.into())),
        };
        self.record_verification(report, &v, output)?;
        Ok(if v.passed { Ok(()) } else { Err(VerifyError::Failed(v.summary)) })
    }

    fn record_verification(
        &self,
        report: &mut RunReport,
        v: &Verification,
        output: Option<Sha256Digest>,
    ) -> Result<(), Stop> {
        let summary = self.redact(&v.summary);
        let mut findings = v.findings.clone();
        for f in &mut findings {
            f.message = self.redact(&f.message);
        }
        report.verification =
            Some(VerificationReport { passed: v.passed, summary: summary.clone(), findings: findings.clone() });
        report.record(Event::Verified { passed: v.passed, summary, findings, output })
    }
}
