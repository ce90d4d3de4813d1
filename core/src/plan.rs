//! Plans (what a capsule says it will do), diffs (what it really did) and the
//! checks between them.
//!
//! Checklist, in the order the runner applies it:
//! 1. [`Plan::validate`]: the plan is well-formed, names only declared mounts,
//!    writes only to writable ones, and stays within its size limit.
//! 2. [`check_preconditions`]: every "before" digest still matches the live file.
//! 3. [`check_diff`]: the diff computed from the staged copy equals the plan,
//!    change for change and digest for digest.
//!
//! Only a [`DiffMatchesPlan`] together with [`PreconditionsHold`] for the
//! same plan makes a [`CommitAllowed`], and committing takes one (it carries
//! the checked diff: what is committed is what was checked). Skipping a
//! check does not compile:
//!
//! ```compile_fail,E0423
//! // A proof cannot be made by hand…
//! let proof = edge_core::plan::DiffMatchesPlan(());
//! ```
//!
//! ```compile_fail,E0061
//! // …and a commit permission needs both proofs…
//! fn commit(d: edge_core::plan::DiffMatchesPlan) -> edge_core::plan::CommitAllowed {
//!     edge_core::plan::commit_allowed(d).unwrap()
//! }
//! ```
//!
//! ```compile_fail,E0061
//! // …and the authorization of the plan: a previewed diff whose live files
//! // still match is not enough.
//! use edge_core::plan::{CommitAllowed, DiffMatchesPlan, PreconditionsHold, commit_allowed};
//! fn commit(d: DiffMatchesPlan, h: PreconditionsHold) -> CommitAllowed {
//!     commit_allowed(d, h).unwrap()
//! }
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::authorize::Authorized;
use crate::canonical;
use crate::digest::Sha256Digest;
use crate::manifest::{Kind, Manifest};
use crate::paths::{MountPath, PathError};

/// Default and hard ceiling on the number of changes in a plan.
pub const MAX_PLAN_CHANGES: usize = 10_000;
pub const MAX_FINDINGS: usize = 1_000;
pub const MAX_FACTS: usize = 100;
pub const MAX_TEXT: usize = 2_048;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    Create,
    Modify,
    Delete,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::Create => "create",
            Action::Modify => "modify",
            Action::Delete => "delete",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Severity {
    Info,
    Low,
    Medium,
    High,
    Critical,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Info => "info",
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Finding {
    pub severity: Severity,
    pub code: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Change {
    pub mount: String,
    pub path: MountPath,
    pub action: Action,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest_before: Option<Sha256Digest>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest_after: Option<Sha256Digest>,
    /// The permission bits (at most `0o777`; never set-id or sticky) the
    /// file has after a create or modify (contract 0.2). Required to create
    /// an executable file; absent, a created file must not be executable and
    /// a modified one keeps its mode. Never set for a delete.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<u32>,
    pub why: String,
}

/// Execute bits: a created file with any of them must be declared.
pub const EXECUTE_BITS: u32 = 0o111;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fact {
    pub key: String,
    pub value: String,
}

/// A capsule's proposal, as the runner holds it after parsing the guest's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    pub summary: String,
    pub changes: Vec<Change>,
    pub findings: Vec<Finding>,
    pub facts: Vec<Fact>,
    /// Calls to granted endpoints `apply` will make, in order (proposed
    /// through the `calls` interface; absent from the canonical form when
    /// there are none, so plans without calls keep their digests).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub calls: Vec<crate::calls::Call>,
}

/// Why a plan, precondition or diff check failed. Each has a stable reason code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PlanError {
    #[error("plan has {count} changes; the limit is {limit}")]
    TooManyChanges { count: usize, limit: usize },
    #[error("plan has {count} {what}; the limit is {limit}")]
    TooMany { what: &'static str, count: usize, limit: usize },
    #[error("plan text field `{0}` is longer than {MAX_TEXT} bytes")]
    TextTooLong(&'static str),
    #[error("plan change #{index} path: {source}")]
    Path { index: usize, source: PathError },
    #[error("plan change #{index} has `{value}`, which is not a digest of the form sha256:<64 lowercase hex>")]
    BadDigest { index: usize, value: String },
    #[error("plan change #{index} names mount `{mount}`, which the manifest does not request")]
    UnknownMount { index: usize, mount: String },
    #[error("plan change #{index} writes to mount `{mount}`, which is read-only")]
    ReadOnlyMount { index: usize, mount: String },
    #[error("plan change #{index} ({action} {path}): {reason}")]
    Inconsistent { index: usize, action: Action, path: String, reason: &'static str },
    #[error("plan changes {mount}/{path} twice")]
    DuplicateChange { mount: String, path: String },
    #[error("a diagnostic capsule proposed {0} change(s); diagnostics may only report findings")]
    DiagnosticChanges(usize),
    #[error(
        "precondition failed for {mount}/{path}: planned against {expected}, now {actual}; the file changed since the plan was made, so re-plan"
    )]
    Precondition { mount: String, path: String, expected: String, actual: String },
    #[error("apply changed {mount}/{path} ({action}) which the plan does not include")]
    OutsidePlan { mount: String, path: String, action: Action },
    #[error("apply did {actual} {mount}/{path} but the plan says {planned}")]
    ActionMismatch { mount: String, path: String, planned: Action, actual: Action },
    #[error("apply wrote {mount}/{path} with content {actual} but the plan promised {planned}")]
    ContentMismatch { mount: String, path: String, planned: String, actual: String },
    #[error("apply did not make planned change {action} {mount}/{path}")]
    NotApplied { mount: String, path: String, action: Action },
    #[error(
        "apply left {mount}/{path} with mode {actual:04o} but the plan {}",
        match planned { Some(m) => format!("declares {m:04o}"), None => "declares no mode (an executable file must be declared with its mode)".to_owned() }
    )]
    ModeMismatch { mount: String, path: String, planned: Option<u32>, actual: u32 },
    #[error("the diff and precondition checks were made for different plans (a runner bug); nothing was committed")]
    ProofMismatch,
    #[error(transparent)]
    Call(#[from] crate::calls::CallError),
    #[error(
        "the plan proposes {calls} call(s) and {changes} file change(s); a plan changes files or calls endpoints, not both (split the capsule in two)"
    )]
    CallsWithChanges { calls: usize, changes: usize },
    #[error("a diagnostic capsule proposed {0} call(s) that are not reads; diagnostics may only report findings")]
    DiagnosticCalls(usize),
}

impl PlanError {
    /// The stable reason code recorded in evidence.
    pub fn reason_code(&self) -> &'static str {
        match self {
            PlanError::TooManyChanges { .. } | PlanError::TooMany { .. } | PlanError::TextTooLong(_) => {
                "plan.too_large"
            }
            PlanError::Path { .. } => "plan.path_escape",
            PlanError::UnknownMount { .. } => "plan.unknown_mount",
            PlanError::ReadOnlyMount { .. } => "plan.read_only_mount",
            PlanError::Inconsistent { .. } | PlanError::DuplicateChange { .. } | PlanError::BadDigest { .. } => {
                "plan.inconsistent"
            }
            PlanError::DiagnosticChanges(_) => "plan.diagnostic_changes",
            PlanError::Precondition { .. } => "commit.precondition_failed",
            PlanError::OutsidePlan { .. } => "apply.outside_plan",
            PlanError::ActionMismatch { .. } | PlanError::ContentMismatch { .. } => "apply.diff_mismatch",
            PlanError::ModeMismatch { planned: None, .. } => "apply.outside_plan",
            PlanError::ModeMismatch { planned: Some(_), .. } => "apply.diff_mismatch",
            PlanError::NotApplied { .. } => "apply.incomplete",
            PlanError::ProofMismatch => "authorize.plan_mismatch",
            PlanError::Call(e) => e.reason_code(),
            PlanError::CallsWithChanges { .. } => "plan.calls_with_changes",
            PlanError::DiagnosticCalls(_) => "plan.diagnostic_changes",
        }
    }
}

/// Proof that a plan passed [`Plan::validate`] for a given manifest.
#[derive(Debug)]
pub struct ValidPlan {
    plan: Plan,
    digest: Sha256Digest,
    capsule: Sha256Digest,
    /// The canonical JSON the digest is of.
    canonical: Vec<u8>,
}

impl ValidPlan {
    pub fn plan(&self) -> &Plan {
        &self.plan
    }
    /// SHA-256 of the canonical plan: what approvers sign.
    pub fn digest(&self) -> Sha256Digest {
        self.digest
    }
    /// The capsule (manifest digest) this plan was validated for.
    pub fn capsule(&self) -> Sha256Digest {
        self.capsule
    }
    /// The plan's canonical JSON (what [`ValidPlan::digest`] is of).
    pub fn canonical(&self) -> &[u8] {
        &self.canonical
    }
}

impl Plan {
    /// Check the plan against the manifest that produced it.
    ///
    /// # Errors
    /// The first problem found, as a [`PlanError`].
    pub fn validate(self, manifest: &Manifest, max_changes: usize) -> Result<ValidPlan, PlanError> {
        let capsule = manifest.digest().map_err(|_| PlanError::TextTooLong("manifest"))?;
        self.validate_with(manifest, capsule, max_changes)
    }

    /// As [`Plan::validate`], for the manifest of a parsed capsule file,
    /// whose digest the file already holds (it parsed the canonical bytes).
    ///
    /// # Errors
    /// As [`Plan::validate`].
    pub fn validate_for(
        self,
        file: &crate::container::CapsuleFile,
        max_changes: usize,
    ) -> Result<ValidPlan, PlanError> {
        self.validate_with(file.manifest(), file.digest(), max_changes)
    }

    /// As [`Plan::validate`], for a manifest parsed from its canonical
    /// bytes, whose digest is theirs.
    ///
    /// # Errors
    /// As [`Plan::validate`].
    pub fn validate_digested(
        self,
        manifest: &crate::manifest::DigestedManifest,
        max_changes: usize,
    ) -> Result<ValidPlan, PlanError> {
        self.validate_with(manifest.manifest(), manifest.digest(), max_changes)
    }

    fn validate_with(
        self,
        manifest: &Manifest,
        capsule: Sha256Digest,
        max_changes: usize,
    ) -> Result<ValidPlan, PlanError> {
        let limit = max_changes.min(MAX_PLAN_CHANGES);
        if self.changes.len() > limit {
            return Err(PlanError::TooManyChanges { count: self.changes.len(), limit });
        }
        if manifest.kind == Kind::Diagnostic && !self.changes.is_empty() {
            return Err(PlanError::DiagnosticChanges(self.changes.len()));
        }
        for (what, count, limit) in
            [("findings", self.findings.len(), MAX_FINDINGS), ("facts", self.facts.len(), MAX_FACTS)]
        {
            if count > limit {
                return Err(PlanError::TooMany { what, count, limit });
            }
        }
        if self.summary.len() > MAX_TEXT {
            return Err(PlanError::TextTooLong("summary"));
        }
        crate::calls::check_calls(&self.calls, &manifest.endpoints)?;
        if !self.calls.is_empty() && !self.changes.is_empty() {
            return Err(PlanError::CallsWithChanges { calls: self.calls.len(), changes: self.changes.len() });
        }
        let writes = self.calls.iter().filter(|c| !c.request.is_read_method()).count();
        if manifest.kind == Kind::Diagnostic && writes > 0 {
            return Err(PlanError::DiagnosticCalls(writes));
        }
        for f in &self.findings {
            check_finding(f)?;
        }
        for f in &self.facts {
            if f.key.len() > MAX_TEXT || f.value.len() > MAX_TEXT {
                return Err(PlanError::TextTooLong("facts"));
            }
        }
        let mounts: BTreeMap<&str, bool> = manifest.mounts.iter().map(|m| (m.name.as_str(), m.writable)).collect();
        let mut seen = BTreeSet::new();
        for (index, c) in self.changes.iter().enumerate() {
            match mounts.get(c.mount.as_str()) {
                None => {
                    return Err(PlanError::UnknownMount { index, mount: c.mount.clone() });
                }
                Some(false) => {
                    return Err(PlanError::ReadOnlyMount { index, mount: c.mount.clone() });
                }
                Some(true) => {}
            }
            if c.why.trim().is_empty() || c.why.len() > MAX_TEXT {
                return Err(inconsistent(index, c, "`why` must be one non-empty sentence"));
            }
            match (c.action, c.mode) {
                (_, None) => {}
                (Action::Delete, Some(_)) => return Err(inconsistent(index, c, "a delete declares no mode")),
                (_, Some(m)) if m & !0o777 != 0 => {
                    return Err(inconsistent(
                        index,
                        c,
                        "a mode is permission bits only (at most 0777; no set-id or sticky)",
                    ));
                }
                (_, Some(_)) => {}
            }
            match (c.action, &c.digest_before, &c.digest_after) {
                (Action::Create, None, Some(_)) => {}
                (Action::Create, _, _) => {
                    return Err(inconsistent(index, c, "create needs digest-after and no digest-before"));
                }
                (Action::Modify, Some(b), Some(a)) if b != a => {}
                (Action::Modify, Some(_), Some(_)) => {
                    return Err(inconsistent(index, c, "modify with identical before and after digests"));
                }
                (Action::Modify, _, _) => {
                    return Err(inconsistent(index, c, "modify needs digest-before and digest-after"));
                }
                (Action::Delete, Some(_), None) => {}
                (Action::Delete, _, _) => {
                    return Err(inconsistent(index, c, "delete needs digest-before and no digest-after"));
                }
            }
            if !seen.insert((c.mount.as_str(), c.path.as_str())) {
                return Err(PlanError::DuplicateChange { mount: c.mount.clone(), path: c.path.to_string() });
            }
        }
        // Serialising a validated plan cannot produce a float.
        let canonical = canonical::to_canonical_vec(&self).expect("plan has no floats");
        let digest = Sha256Digest::of(&canonical);
        Ok(ValidPlan { plan: self, digest, capsule, canonical })
    }
}

fn inconsistent(index: usize, c: &Change, reason: &'static str) -> PlanError {
    PlanError::Inconsistent { index, action: c.action, path: c.path.to_string(), reason }
}

/// Bound a finding's text fields.
///
/// # Errors
/// [`PlanError::TextTooLong`] when a field exceeds [`MAX_TEXT`].
pub fn check_finding(f: &Finding) -> Result<(), PlanError> {
    if f.code.len() > 128 {
        return Err(PlanError::TextTooLong("finding.code"));
    }
    if f.message.len() > MAX_TEXT || f.subject.as_ref().is_some_and(|s| s.len() > MAX_TEXT) {
        return Err(PlanError::TextTooLong("finding.message"));
    }
    Ok(())
}

/// One file-level difference between the live mount and the staged copy after `apply`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiffEntry {
    pub mount: String,
    pub path: MountPath,
    pub action: Action,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<Sha256Digest>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<Sha256Digest>,
    /// The permission bits the file lands with (create, modify), as the
    /// staged copy holds them (never set-id or sticky). [`check_diff`] holds
    /// it to the plan: a created file is executable only where the plan
    /// declared that mode, and a modified file keeps its original's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<u32>,
}

/// Proof that the staged diff is exactly the plan (it keeps that diff).
#[derive(Debug)]
pub struct DiffMatchesPlan(DiffMatched);

#[derive(Debug)]
struct DiffMatched {
    plan: Sha256Digest,
    diff: Vec<DiffEntry>,
}

/// Proof that every planned "before" digest matched the live files.
#[derive(Debug)]
pub struct PreconditionsHold(Sha256Digest);

/// Permission to commit one diff: it equals the plan, and the live files
/// still hold what the plan saw. Built only by [`commit_allowed`].
#[derive(Debug)]
pub struct CommitAllowed {
    plan: Sha256Digest,
    diff: Vec<DiffEntry>,
}

impl CommitAllowed {
    /// The diff that was checked: exactly what may be committed.
    pub fn diff(&self) -> &[DiffEntry] {
        &self.diff
    }
    /// The plan it was checked against.
    pub fn plan(&self) -> Sha256Digest {
        self.plan
    }
}

/// Combine the two proofs for one *authorized* plan into the permission to
/// commit. The diff can be checked (and previewed) before anyone approves;
/// committing it needs the authorization of that plan too.
///
/// # Errors
/// [`PlanError::ProofMismatch`] if they were made for different plans (a
/// runner bug; nothing is committed).
pub fn commit_allowed(
    authorized: &Authorized,
    matched: DiffMatchesPlan,
    holds: PreconditionsHold,
) -> Result<CommitAllowed, PlanError> {
    let DiffMatchesPlan(DiffMatched { plan, diff }) = matched;
    if plan != holds.0 || plan != authorized.plan_digest() {
        return Err(PlanError::ProofMismatch);
    }
    Ok(CommitAllowed { plan, diff })
}

/// Check that the actual diff equals the plan, change for change.
///
/// # Errors
/// The first mismatch: a change outside the plan, a different action or
/// content, or a planned change that did not happen.
pub fn check_diff(plan: &ValidPlan, diff: &[DiffEntry]) -> Result<DiffMatchesPlan, PlanError> {
    let planned: BTreeMap<(&str, &str), &Change> =
        plan.plan.changes.iter().map(|c| ((c.mount.as_str(), c.path.as_str()), c)).collect();
    let mut done = BTreeSet::new();
    for d in diff {
        let key = (d.mount.as_str(), d.path.as_str());
        let Some(c) = planned.get(&key) else {
            return Err(PlanError::OutsidePlan { mount: d.mount.clone(), path: d.path.to_string(), action: d.action });
        };
        if c.action != d.action {
            return Err(PlanError::ActionMismatch {
                mount: d.mount.clone(),
                path: d.path.to_string(),
                planned: c.action,
                actual: d.action,
            });
        }
        check_mode(c, d)?;
        if c.digest_after != d.after || c.digest_before != d.before {
            let (planned, actual) = if c.digest_after != d.after {
                (show(&c.digest_after), show(&d.after))
            } else {
                (format!("before {}", show(&c.digest_before)), format!("before {}", show(&d.before)))
            };
            return Err(PlanError::ContentMismatch {
                mount: d.mount.clone(),
                path: d.path.to_string(),
                planned,
                actual,
            });
        }
        done.insert(key);
    }
    if let Some(c) = plan.plan.changes.iter().find(|c| !done.contains(&(c.mount.as_str(), c.path.as_str()))) {
        return Err(PlanError::NotApplied { mount: c.mount.clone(), path: c.path.to_string(), action: c.action });
    }
    Ok(DiffMatchesPlan(DiffMatched { plan: plan.digest, diff: diff.to_vec() }))
}

/// The mode rule: a declared mode must be the mode the file landed with; an
/// undeclared create must not be executable (a modify's mode never changes:
/// the snapshot diff refuses that before this).
fn check_mode(c: &Change, d: &DiffEntry) -> Result<(), PlanError> {
    let Some(actual) = d.mode else { return Ok(()) };
    let ok = match (c.mode, d.action) {
        (Some(declared), _) => declared == actual,
        // Execute for anyone, or set-id/sticky (never carried by a snapshot).
        (None, Action::Create) => actual & (EXECUTE_BITS | 0o7000) == 0,
        (None, _) => true,
    };
    if ok {
        Ok(())
    } else {
        Err(PlanError::ModeMismatch { mount: d.mount.clone(), path: d.path.to_string(), planned: c.mode, actual })
    }
}

/// Check every planned "before" digest against the live files. `live` gives the
/// current digest of a file (None when it does not exist).
///
/// # Errors
/// [`PlanError::Precondition`] for the first file that changed since the plan.
pub fn check_preconditions(
    plan: &ValidPlan,
    mut live: impl FnMut(&str, &MountPath) -> Option<Sha256Digest>,
) -> Result<PreconditionsHold, PlanError> {
    for c in &plan.plan.changes {
        let now = live(&c.mount, &c.path);
        if now != c.digest_before {
            return Err(PlanError::Precondition {
                mount: c.mount.clone(),
                path: c.path.to_string(),
                expected: show(&c.digest_before),
                actual: show(&now),
            });
        }
    }
    Ok(PreconditionsHold(plan.digest))
}

fn show(d: &Option<Sha256Digest>) -> String {
    d.map_or_else(|| "absent".to_owned(), |d| d.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::ComponentRef;

    fn manifest() -> Manifest {
        Manifest::from_authoring_toml(
            "name = \"x\"\nversion = \"1\"\nkind = \"remediation\"\n[[mounts]]\nname = \"cfg\"\nwritable = true\n[[mounts]]\nname = \"ro\"\n",
            ComponentRef { sha256: Sha256Digest::of(b""), size: 0 },
        )
        .unwrap()
    }

    fn d(s: &str) -> Sha256Digest {
        Sha256Digest::of(s.as_bytes())
    }

    fn change(action: Action, path: &str, before: Option<&str>, after: Option<&str>) -> Change {
        Change {
            mount: "cfg".into(),
            path: MountPath::new(path).unwrap(),
            action,
            digest_before: before.map(d),
            digest_after: after.map(d),
            mode: None,
            why: "because".into(),
        }
    }

    fn plan(changes: Vec<Change>) -> Plan {
        Plan { summary: "s".into(), changes, findings: vec![], facts: vec![], calls: vec![] }
    }

    #[test]
    fn validating_for_a_capsule_file_is_validating_for_its_manifest() {
        let m = manifest();
        let file = crate::container::CapsuleFile::new(m.clone(), Vec::new()).unwrap();
        let p = plan(vec![change(Action::Create, "a", None, Some("1"))]);
        let (by_manifest, by_file) = (p.clone().validate(&m, 10).unwrap(), p.validate_for(&file, 10).unwrap());
        assert_eq!(by_manifest.capsule(), by_file.capsule());
        assert_eq!(by_file.capsule(), m.digest().unwrap());
        assert_eq!(by_manifest.digest(), by_file.digest());
        assert_eq!(by_file.canonical(), canonical::to_canonical_vec(by_file.plan()).unwrap());
        assert_eq!(Sha256Digest::of(by_file.canonical()), by_file.digest());
    }

    fn entry(c: &Change) -> DiffEntry {
        DiffEntry {
            mount: c.mount.clone(),
            path: c.path.clone(),
            action: c.action,
            before: c.digest_before,
            after: c.digest_after,
            mode: None,
        }
    }

    #[test]
    fn an_executable_lands_only_where_the_plan_declares_its_mode() {
        let m = manifest();
        let created = |declared: Option<u32>| {
            let mut c = change(Action::Create, "cron.sh", None, Some("x"));
            c.mode = declared;
            c
        };
        let landed = |c: &Change, mode: u32| DiffEntry { mode: Some(mode), ..entry(c) };
        for (declared, actual, ok) in [
            (None, 0o644, true),
            (None, 0o755, false),
            (None, 0o744, false),
            (Some(0o755), 0o755, true),
            (Some(0o755), 0o644, false),
            (Some(0o644), 0o755, false),
        ] {
            let c = created(declared);
            let valid = plan(vec![c.clone()]).validate(&m, 10).unwrap();
            let r = check_diff(&valid, &[landed(&c, actual)]);
            assert_eq!(r.is_ok(), ok, "declared {declared:?}, landed {actual:o}: {:?}", r.err());
            if let Err(e) = r {
                let want = if declared.is_none() { "apply.outside_plan" } else { "apply.diff_mismatch" };
                assert_eq!(e.reason_code(), want);
            }
        }
        // A declared mode is permission bits only, and never on a delete.
        for bad in [0o4755, 0o1777, 0o10644] {
            let e = plan(vec![created(Some(bad))]).validate(&m, 10).unwrap_err();
            assert_eq!(e.reason_code(), "plan.inconsistent", "{bad:o}");
        }
        let mut del = change(Action::Delete, "old.sh", Some("x"), None);
        del.mode = Some(0o644);
        assert_eq!(plan(vec![del]).validate(&m, 10).unwrap_err().reason_code(), "plan.inconsistent");
    }

    #[test]
    fn validate_truth_table() {
        let m = manifest();
        let ok = [
            change(Action::Create, "a", None, Some("1")),
            change(Action::Modify, "b", Some("1"), Some("2")),
            change(Action::Delete, "c", Some("1"), None),
        ];
        assert!(plan(ok.to_vec()).validate(&m, 100).is_ok());
        let bad = [
            change(Action::Create, "a", Some("0"), Some("1")),
            change(Action::Create, "a", None, None),
            change(Action::Modify, "b", None, Some("2")),
            change(Action::Modify, "b", Some("1"), Some("1")),
            change(Action::Delete, "c", Some("1"), Some("2")),
            change(Action::Delete, "c", None, None),
        ];
        for c in bad {
            let e = plan(vec![c.clone()]).validate(&m, 100).unwrap_err();
            assert_eq!(e.reason_code(), "plan.inconsistent", "{c:?}");
        }
        let mut ro = change(Action::Create, "a", None, Some("1"));
        ro.mount = "ro".into();
        assert_eq!(plan(vec![ro]).validate(&m, 100).unwrap_err().reason_code(), "plan.read_only_mount");
        let mut unknown = change(Action::Create, "a", None, Some("1"));
        unknown.mount = "etc".into();
        assert_eq!(plan(vec![unknown]).validate(&m, 100).unwrap_err().reason_code(), "plan.unknown_mount");
        let dup = vec![change(Action::Create, "a", None, Some("1")), change(Action::Delete, "a", Some("1"), None)];
        assert_eq!(plan(dup).validate(&m, 100).unwrap_err().reason_code(), "plan.inconsistent");
        let many = (0..11).map(|i| change(Action::Create, &format!("f{i}"), None, Some("1"))).collect();
        assert_eq!(plan(many).validate(&m, 10).unwrap_err().reason_code(), "plan.too_large");
    }

    #[test]
    fn diff_must_equal_plan() {
        let m = manifest();
        let changes =
            vec![change(Action::Modify, "b", Some("1"), Some("2")), change(Action::Delete, "c", Some("1"), None)];
        let vp = plan(changes.clone()).validate(&m, 100).unwrap();
        let exact: Vec<DiffEntry> = changes.iter().map(entry).collect();
        assert!(check_diff(&vp, &exact).is_ok());

        let mut extra = exact.clone();
        extra.push(entry(&change(Action::Create, "evil", None, Some("x"))));
        assert_eq!(check_diff(&vp, &extra).unwrap_err().reason_code(), "apply.outside_plan");

        let mut other_content = exact.clone();
        other_content[0].after = Some(d("3"));
        assert_eq!(check_diff(&vp, &other_content).unwrap_err().reason_code(), "apply.diff_mismatch");

        let mut other_action = exact.clone();
        other_action[1].action = Action::Modify;
        assert_eq!(check_diff(&vp, &other_action).unwrap_err().reason_code(), "apply.diff_mismatch");

        assert_eq!(check_diff(&vp, &exact[..1]).unwrap_err().reason_code(), "apply.incomplete");
    }

    #[test]
    fn preconditions() {
        let m = manifest();
        let vp =
            plan(vec![change(Action::Modify, "b", Some("1"), Some("2")), change(Action::Create, "n", None, Some("2"))])
                .validate(&m, 100)
                .unwrap();
        assert!(check_preconditions(&vp, |_, p| (p.as_str() == "b").then(|| d("1"))).is_ok());
        let e = check_preconditions(&vp, |_, _| Some(d("9"))).unwrap_err();
        assert_eq!(e.reason_code(), "commit.precondition_failed");
        assert!(e.to_string().contains("re-plan"));
    }

    #[test]
    fn plan_digest_is_stable_and_sensitive() {
        let m = manifest();
        let a = plan(vec![change(Action::Create, "a", None, Some("1"))]).validate(&m, 10).unwrap();
        let b = plan(vec![change(Action::Create, "a", None, Some("1"))]).validate(&m, 10).unwrap();
        let c = plan(vec![change(Action::Create, "a", None, Some("2"))]).validate(&m, 10).unwrap();
        assert_eq!(a.digest(), b.digest());
        assert_ne!(a.digest(), c.digest());
    }
}
