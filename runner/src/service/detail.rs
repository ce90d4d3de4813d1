//! A proposal as people read it (`GET /v1/proposals/{id}`, `proposals
//! show`): the lifecycle view plus what the evidence holds about it — the
//! diff as previewed, findings, provenance, who approved and whether each
//! counted, what is still needed, age and expiry. Everything comes from the
//! evidence store (checked against the verified log) and, for a waiting
//! proposal, the approvals kept for it; nothing here runs a capsule.

use anyhow::Result;
use edge_core::Sha256Digest;
use edge_core::approval::ApprovalFile;
use edge_core::evidence::{Event, Record};
use edge_core::lifecycle::{ProposalView, State};
use edge_core::manifest::{Manifest, Provenance};
use edge_core::plan::{Finding, Plan};
use edge_core::preview::{DiffLine, FilePreview, Preview, Shown};
use serde::Serialize;

use crate::pipeline::{ApproverView, Proposal, QuorumStatus, QuorumView, Runner, still_needed};

/// A proposal with everything a person needs to judge it.
#[derive(Debug, Clone, Serialize)]
pub struct ProposalDetail {
    #[serde(flatten)]
    pub view: ProposalView,
    /// Seconds since it was submitted.
    pub age_secs: u64,
    /// When it can no longer be approved (Unix seconds; while it waits).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provenance: Option<Provenance>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
    /// The plan's findings, then the verify phase's.
    pub findings: Vec<Finding>,
    /// Each changed file as previewed: what it shows, and its diff lines.
    pub files: Vec<FileDiff>,
    /// Each planned call to an endpoint: the exact request and its undo.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub calls: Vec<CallView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quorum: Option<QuorumView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verify: Option<VerifyView>,
}

/// One changed file and its rendered diff.
#[derive(Debug, Clone, Serialize)]
pub struct FileDiff {
    #[serde(flatten)]
    pub file: FilePreview,
    pub lines: Vec<DiffLine>,
}

/// Every file of a preview, with its rendered diff.
pub fn files(shown: &Shown) -> Vec<FileDiff> {
    shown.preview.files.iter().map(|f| FileDiff { file: f.clone(), lines: shown.render(f) }).collect()
}

/// A planned call as people read it.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct CallView {
    pub request: RequestView,
    pub why: String,
    /// The request the runner sends to undo it if `verify` fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub undo: Option<RequestView>,
}

/// What a person is shown of a planned request body.
#[derive(Debug, Clone)]
pub enum ShownBody {
    /// The exact bytes (an endpoint previewed `full`).
    Exact(Vec<u8>),
    /// The text with secret-bearing lines masked (`redacted`).
    Masked(String),
    /// Its digest and size only (`digest-only`, or not available).
    DigestOnly,
}

/// One request: `METHOD endpoint/path`, and its body.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct RequestView {
    pub line: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_digest: Option<Sha256Digest>,
    /// How the body is shown: `full`, `redacted` (secret-bearing lines
    /// masked) or `digest-only`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_shown: Option<String>,
    /// The body's size, when it is shown exactly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_bytes: Option<usize>,
    /// The body (masked, for `redacted`) when it is UTF-8 (at most
    /// [`MAX_SHOWN_BODY`] bytes; the digest covers all of the real body).
    /// Capsule text: renderers neutralise it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_text: Option<String>,
}

/// Most bytes of a request body shown to people.
pub const MAX_SHOWN_BODY: usize = 16 << 10;

/// The plan's calls for people, each body as `shown` says.
pub fn call_views(plan: &Plan, shown: impl Fn(&Sha256Digest) -> ShownBody) -> Vec<CallView> {
    let request = |r: &edge_core::calls::Request| {
        let cut = |t: &str| t.char_indices().nth(MAX_SHOWN_BODY).map_or(t, |(i, _)| &t[..i]).to_owned();
        let (how, text, bytes) = match r.body.as_ref().map(&shown) {
            None => (None, None, None),
            Some(ShownBody::Exact(b)) => (Some("full"), std::str::from_utf8(&b).ok().map(cut), Some(b.len())),
            Some(ShownBody::Masked(m)) => (Some("redacted"), Some(cut(&m)), None),
            Some(ShownBody::DigestOnly) => (Some("digest-only"), None, None),
        };
        RequestView {
            line: r.line(),
            content_type: r.content_type.clone(),
            body_digest: r.body,
            body_shown: how.map(str::to_owned),
            body_bytes: bytes,
            body_text: text.filter(|t| !t.is_empty()),
        }
    };
    plan.calls
        .iter()
        .map(|c| CallView {
            request: request(&c.request),
            why: c.why.clone(),
            undo: c.compensation.as_ref().map(request),
        })
        .collect()
}

#[derive(Debug, Clone, Serialize)]
pub struct VerifyView {
    pub passed: bool,
    pub summary: String,
}

impl Runner {
    /// The preview of a proposal with its content (for approvers' tools).
    ///
    /// # Errors
    /// If the store cannot be read.
    pub fn shown(&self, view: &ProposalView) -> Result<Option<Shown>> {
        let Some(d) = view.preview else { return Ok(None) };
        let Some(bytes) = self.log.read_artifact(&d)? else { return Ok(None) };
        let preview: Preview = serde_json::from_slice(&bytes)?;
        Ok(Some(Shown::new(preview, |c| self.log.read_artifact(c).ok().flatten())))
    }

    /// Everything about one proposal. `kept` are the approvals kept for it
    /// while it waits (the daemon's; empty on the command line).
    ///
    /// # Errors
    /// If the store cannot be read, or a record does not match the log.
    pub fn detail(&self, view: ProposalView, kept: &[Vec<u8>], now: u64) -> Result<ProposalDetail> {
        let records = self.log.read_records_at(&view.records)?;
        let artifact = |d: &Sha256Digest| self.log.read_artifact(d).ok().flatten();
        let plan: Option<Plan> = view.plan.and_then(|d| serde_json::from_slice(&artifact(&d)?).ok());
        let provenance =
            view.capsule.and_then(|d| Manifest::from_canonical_json(&artifact(&d)?).ok()).map(|m| m.provenance);
        let mut findings = plan.as_ref().map(|p| p.findings.clone()).unwrap_or_default();
        let mut verify = None;
        for r in &records {
            if let Event::Verified { passed, summary, findings: f, .. } = &r.event {
                findings.extend(f.iter().cloned());
                verify = Some(VerifyView { passed: *passed, summary: summary.clone() });
            }
        }
        let files = self.shown(&view)?.as_ref().map(files).unwrap_or_default();
        let doc: Option<Proposal> = view.document.and_then(|d| serde_json::from_slice(&artifact(&d)?).ok());
        let expires_at = doc.as_ref().filter(|_| view.state == State::AwaitingApproval).map(Proposal::expires_at);
        let quorum = if view.state == State::AwaitingApproval {
            // Where it stands cannot be said without an approver registry
            // (or once it expired meanwhile): the rest of the view still is.
            match self.quorum_view(&view.id, kept) {
                Ok(q) => Some(q),
                Err(e) => {
                    tracing::warn!(proposal = %view.id, error = %format!("{e:#}"), "no quorum view");
                    None
                }
            }
        } else {
            recorded_quorum(self, &records, &view)
        };
        let submitted = view.submitted_at.parse::<jiff::Timestamp>().map(|t| t.as_second()).unwrap_or(0);
        Ok(ProposalDetail {
            age_secs: now.saturating_sub(u64::try_from(submitted).unwrap_or(0)),
            expires_at,
            provenance,
            calls: plan
                .as_ref()
                .map(|p| {
                    call_views(p, |d| match (artifact(d).filter(|b| Sha256Digest::of(b) == *d), &doc) {
                        (Some(b), _) => ShownBody::Exact(b),
                        (None, Some(doc)) => doc.shown_body(d),
                        (None, None) => ShownBody::DigestOnly,
                    })
                })
                .unwrap_or_default(),
            summary: plan.map(|p| p.summary),
            findings,
            files,
            quorum,
            verify,
            view,
        })
    }
}

/// The quorum a proposal's runs recorded: each approval received, whether
/// it verified and counted, and why not.
fn recorded_quorum(runner: &Runner, records: &[Record], view: &ProposalView) -> Option<QuorumView> {
    let registry = runner.approvers();
    let registry = registry.as_deref();
    let roles = |p: &str| registry.map(|r| r.roles_of(p).to_vec()).unwrap_or_default();
    let statement = |d: &Sha256Digest| {
        runner.log.read_artifact(d).ok().flatten().and_then(|b| ApprovalFile::parse(&b).ok()).map(|f| f.statement)
    };
    let mut approvals: Vec<ApproverView> = Vec::new();
    let mut status = None;
    for r in records {
        match &r.event {
            Event::ApprovalAccepted { approval, principal, key, verdict, .. } => {
                let s = statement(approval);
                approvals.push(ApproverView {
                    principal: principal.clone(),
                    roles: roles(principal),
                    key: Some(key.clone()),
                    verdict: Some(verdict.clone()),
                    comment: s.as_ref().and_then(|s| s.comment.clone()),
                    issued_at: s.map(|s| s.issued_at),
                    counted: false,
                    why_not: None,
                });
            }
            Event::ApprovalRefused { approval, principal, reason_code, detail } => {
                let s = statement(approval);
                let principal = principal.clone().unwrap_or_else(|| "?".into());
                approvals.push(ApproverView {
                    roles: roles(&principal),
                    principal,
                    comment: s.as_ref().and_then(|s| s.comment.clone()),
                    issued_at: s.map(|s| s.issued_at),
                    why_not: Some(format!("[{reason_code}] {detail}")),
                    ..ApproverView::default()
                });
            }
            Event::Quorum { outcome, counted, .. } => {
                // Each verified approval's standing, in the order evaluated.
                let counted: Vec<serde_json::Value> = counted.as_array().cloned().unwrap_or_default();
                let mut it = counted.iter();
                for a in approvals.iter_mut().filter(|a| a.why_not.is_none() && a.key.is_some()) {
                    if let Some(c) = it.next() {
                        a.counted = c["counted"].as_bool().unwrap_or(false);
                        let note = c["note"].as_str().unwrap_or_default();
                        a.why_not = (!a.counted && !note.is_empty()).then(|| note.to_owned());
                    }
                }
                status = Some(match edge_core::approval::quorum::Outcome::from_recorded(outcome) {
                    Some(edge_core::approval::quorum::Outcome::Met { .. }) => QuorumStatus::Met,
                    Some(edge_core::approval::quorum::Outcome::Vetoed { by, .. }) => QuorumStatus::Vetoed { by },
                    Some(edge_core::approval::quorum::Outcome::Insufficient { count, required }) => {
                        QuorumStatus::Pending { count, required, refused: Vec::new() }
                    }
                    None => return None,
                });
            }
            _ => {}
        }
    }
    let status = status?;
    let required_roles =
        view.decision.as_ref().and_then(|d| d.requirement.as_ref()).map(|r| r.roles.clone()).unwrap_or_default();
    let needed = if view.state == State::Expired {
        "nothing: the proposal expired".to_owned()
    } else {
        still_needed(&status, &required_roles)
    };
    Some(QuorumView { status, approvals, needed })
}
