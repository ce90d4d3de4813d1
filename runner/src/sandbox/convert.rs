//! Between the WIT types a capsule speaks and the core types the runner
//! checks: plans, findings. Paths and digests are checked on the way in.

use edge_core::Sha256Digest;
use edge_core::plan::{self as core_plan, PlanError};

use super::egress::Proposed;
use super::{wit, wit_calls};

pub(super) fn finding_from_wit(f: wit::Finding) -> core_plan::Finding {
    core_plan::Finding {
        severity: match f.severity {
            wit::Severity::Info => core_plan::Severity::Info,
            wit::Severity::Low => core_plan::Severity::Low,
            wit::Severity::Medium => core_plan::Severity::Medium,
            wit::Severity::High => core_plan::Severity::High,
            wit::Severity::Critical => core_plan::Severity::Critical,
        },
        code: f.code,
        message: f.message,
        subject: f.subject,
    }
}

fn finding_to_wit(f: &core_plan::Finding) -> wit::Finding {
    wit::Finding {
        severity: match f.severity {
            core_plan::Severity::Info => wit::Severity::Info,
            core_plan::Severity::Low => wit::Severity::Low,
            core_plan::Severity::Medium => wit::Severity::Medium,
            core_plan::Severity::High => wit::Severity::High,
            core_plan::Severity::Critical => wit::Severity::Critical,
        },
        code: f.code.clone(),
        message: f.message.clone(),
        subject: f.subject.clone(),
    }
}

/// Parse the guest's plan into the core type; paths and digests are checked here.
pub(super) fn plan_from_wit(p: wit::Plan) -> Result<core_plan::Plan, PlanError> {
    let mut changes = Vec::with_capacity(p.changes.len().min(core_plan::MAX_PLAN_CHANGES));
    if p.changes.len() > core_plan::MAX_PLAN_CHANGES {
        return Err(PlanError::TooManyChanges { count: p.changes.len(), limit: core_plan::MAX_PLAN_CHANGES });
    }
    for (index, c) in p.changes.into_iter().enumerate() {
        let path = edge_core::paths::MountPath::new(&c.path).map_err(|source| PlanError::Path { index, source })?;
        let digest = |d: Option<String>| -> Result<Option<Sha256Digest>, PlanError> {
            d.map(|s| s.parse().map_err(|_| PlanError::BadDigest { index, value: s.chars().take(100).collect() }))
                .transpose()
        };
        changes.push(core_plan::Change {
            mount: c.mount,
            path,
            action: match c.action {
                wit::Action::Create => core_plan::Action::Create,
                wit::Action::Modify => core_plan::Action::Modify,
                wit::Action::Delete => core_plan::Action::Delete,
            },
            digest_before: digest(c.digest_before)?,
            digest_after: digest(c.digest_after)?,
            mode: c.mode,
            why: c.why,
        });
    }
    Ok(core_plan::Plan {
        summary: p.summary,
        changes,
        findings: p.findings.into_iter().map(finding_from_wit).collect(),
        facts: p.facts.into_iter().map(|f| core_plan::Fact { key: f.key, value: f.value }).collect(),
        // Filled from the calls proposed through `calls.propose`.
        calls: Vec::new(),
    })
}

pub(super) fn plan_to_wit(p: &core_plan::Plan) -> wit::Plan {
    wit::Plan {
        summary: p.summary.clone(),
        changes: p
            .changes
            .iter()
            .map(|c| wit::Change {
                mount: c.mount.clone(),
                path: c.path.to_string(),
                action: match c.action {
                    core_plan::Action::Create => wit::Action::Create,
                    core_plan::Action::Modify => wit::Action::Modify,
                    core_plan::Action::Delete => wit::Action::Delete,
                },
                digest_before: c.digest_before.map(|d| d.to_string()),
                digest_after: c.digest_after.map(|d| d.to_string()),
                mode: c.mode,
                why: c.why.clone(),
            })
            .collect(),
        findings: p.findings.iter().map(finding_to_wit).collect(),
        facts: p.facts.iter().map(|f| wit::Fact { key: f.key.clone(), value: f.value.clone() }).collect(),
    }
}

/// A call proposed by the guest, with its bodies (checked for size; the
/// plan's validation checks the rest).
pub(super) fn proposed_from_wit(c: wit_calls::PlannedCall) -> Result<Proposed, String> {
    fn request(r: wit_calls::Request) -> Result<(edge_core::calls::Request, Vec<u8>), String> {
        if r.body.len() > edge_core::calls::MAX_CALL_BODY {
            return Err(format!("a body of {} bytes; the limit is {}", r.body.len(), edge_core::calls::MAX_CALL_BODY));
        }
        if r.endpoint.len() > 256 || r.method.len() > 16 || r.path.len() > edge_core::calls::MAX_CALL_PATH + 1 {
            return Err("an oversized endpoint, method or path".into());
        }
        let req = edge_core::calls::Request {
            endpoint: r.endpoint,
            method: r.method,
            path: r.path,
            content_type: r.content_type,
            body: (!r.body.is_empty()).then(|| Sha256Digest::of(&r.body)),
        };
        Ok((req, r.body))
    }
    if c.why.len() > core_plan::MAX_TEXT {
        return Err("a `why` longer than 2048 bytes".into());
    }
    let (req, body) = request(c.request)?;
    let (compensation, compensation_body) = match c.compensation {
        Some(r) => {
            let (r, b) = request(r)?;
            (Some(r), b)
        }
        None => (None, Vec::new()),
    };
    Ok(Proposed { call: edge_core::calls::Call { request: req, why: c.why, compensation }, body, compensation_body })
}

pub(super) fn planned_to_wit(c: &edge_core::calls::Call, body: &[u8], comp: &[u8]) -> wit_calls::PlannedCall {
    let request = |r: &edge_core::calls::Request, body: &[u8]| wit_calls::Request {
        endpoint: r.endpoint.clone(),
        method: r.method.clone(),
        path: r.path.clone(),
        content_type: r.content_type.clone(),
        body: body.to_vec(),
    };
    wit_calls::PlannedCall {
        request: request(&c.request, body),
        why: c.why.clone(),
        compensation: c.compensation.as_ref().map(|r| request(r, comp)),
    }
}
