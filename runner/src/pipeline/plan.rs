//! Plan: the capsule's `plan` export runs with every mount read-only and
//! says exactly what it will change (mount, path, action, the digests
//! before and after); the plan is validated against the manifest and the
//! grant's limits, kept as an artifact and recorded before anyone is asked
//! to authorize it.

use edge_core::authorize::Decided;
use edge_core::evidence::Event;
use edge_core::plan::{PlanError as InvalidPlan, ValidPlan};

use super::Runner;
use super::run::{Fails, RunReport, Stage, StageError, Stop};
use crate::sandbox::{Prepared, SandboxError};

/// Why no valid plan came out of the `plan` phase.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    #[error(transparent)]
    Invalid(#[from] InvalidPlan),
}

impl StageError for PlanError {
    fn stage(&self) -> Stage {
        Stage::Plan
    }

    fn reason_code(&self) -> &'static str {
        match self {
            Self::Sandbox(e) => e.reason_code(),
            Self::Invalid(e) => e.reason_code(),
        }
    }
}

impl Runner {
    pub(crate) async fn plan(
        &self,
        decided: &Decided,
        prepared: &Prepared,
        report: &mut RunReport,
    ) -> Result<ValidPlan, Stop> {
        let grant = decided.admitted().grant();
        // Runs writing a mount hold it from here to the end of the run
        // (its cleanup included: see `Runner::exec_capsule`).
        report.mount_guards = self.lock_mounts(grant).await;
        report.barrier().await?;
        let log = self.call_log(report);
        let (planned, captured, log) = self.sandbox.plan(decided, prepared, log).await;
        Self::absorb_calls(report, log);
        let output = self.store_output(report, "plan", captured)?;
        let file = decided.admitted().capsule().file();
        let (planned, proposed) = planned.map_err(PlanError::from)?;
        let valid = planned.validate_for(file, grant.limits.max_plan_changes as usize).map_err(PlanError::from)?;
        // The calls' bodies, so approvers and reviewers see the requests
        // (as each endpoint's preview mode allows) and apply has them.
        let bodies = self.keep_call_bodies(report, &proposed)?;
        // `ValidPlan` holds the digest of exactly these bytes: not hashed again.
        let plan_d = report.log.put_artifact_digested(valid.digest(), valid.canonical()).or_fail()?;
        report.plan = Some(valid.plan().clone());
        report.plan_digest = Some(valid.digest());
        report.record(Event::Planned {
            plan: plan_d,
            summary: valid.plan().summary.clone(),
            changes: valid.plan().changes.len(),
            findings: valid.plan().findings.clone(),
            output,
            bodies,
        })?;
        Ok(valid)
    }

    /// Take the locks of the grant's mounts and then its endpoints, each in
    /// name order (no deadlock between runs): exclusive for those it may
    /// write, shared otherwise.
    pub(crate) async fn lock_mounts(&self, grant: &edge_core::admission::Grant) -> Vec<super::run::MountGuard> {
        use super::run::MountGuard;
        let mut guards = Vec::new();
        let mut mounts: Vec<_> = grant.mounts.iter().collect();
        mounts.sort_by(|a, b| a.name.cmp(&b.name));
        for g in mounts {
            let Some(lock) = self.mount_locks.get(&g.name) else { continue };
            guards.push(if g.writable {
                MountGuard::Write(lock.clone().write_owned().await)
            } else {
                MountGuard::Read(lock.clone().read_owned().await)
            });
        }
        // An endpoint that may be written is held like a writable mount: a
        // run plans against the service state it applies to, and a second
        // run with the same proposal's approvals waits for the first.
        // (After every mount, in name order: one order for all runs.)
        let mut endpoints: Vec<_> = grant.endpoints.iter().collect();
        endpoints.sort();
        endpoints.dedup();
        for name in endpoints {
            let (Some(lock), Some(ep)) = (self.mount_locks.get(name), self.config.endpoints.get(name)) else {
                continue;
            };
            guards.push(if ep.may_write() {
                MountGuard::Write(lock.clone().write_owned().await)
            } else {
                MountGuard::Read(lock.clone().read_owned().await)
            });
        }
        guards
    }
}
