//! Calls: a plan that calls granted endpoints cannot be staged, so its
//! `apply` runs only after authorization, and each request it sends is
//! checked against the plan before it leaves (`sandbox::egress`). Every
//! request's intent is durable before it is sent and its outcome recorded
//! after; when `apply` or `verify` fails, the runner itself sends the
//! recorded compensations of the calls made, in reverse order, and records
//! each outcome. A compensation that fails ends the run `failed`, loudly.

use std::collections::BTreeMap;
use std::sync::Arc;

use edge_core::Sha256Digest;
use edge_core::evidence::{Event, Outcome};
use edge_core::preview::PreviewMode;

use super::Runner;
use super::run::{Fails, Refusal, RunReport, Stage, Stop};
use crate::sandbox::Authority;
use crate::sandbox::CallLog;
use crate::sandbox::egress::{self, CallResult};

impl Runner {
    /// Where a phase's gate records the run's requests (its own log,
    /// handed back with [`Runner::absorb_calls`]).
    pub(crate) fn call_log(&self, report: &RunReport) -> CallLog {
        let env: Vec<(String, String)> = self.config.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        CallLog {
            run: report.run.clone(),
            log: self.log.run_log(),
            calls: report.calls_made,
            redact: Arc::new(move |s: &str| {
                super::run::redact_env(env.iter().map(|(k, v)| (k.as_str(), v.as_str())), s)
            }),
        }
    }

    /// Take back what a phase's gate recorded.
    pub(crate) fn absorb_calls(report: &mut RunReport, log: Option<CallLog>) {
        if let Some(l) = log {
            report.calls_made = l.calls;
            report.log.absorb(l.log);
        }
    }

    /// Where a planned body that is not kept as evidence (an endpoint
    /// previewed `redacted` or `digest-only`) waits for its apply: beside the
    /// proposal's kept preview (0600), removed when the proposal ends.
    pub(crate) fn call_body_path(&self, proposal: &str, d: &Sha256Digest) -> std::path::PathBuf {
        super::preview::preview_dir(self, proposal).join(".calls").join(d.hex())
    }

    /// A planned body by its digest: kept as evidence (a `full` endpoint),
    /// or beside the proposal (checked against the digest either way).
    ///
    /// # Errors
    /// If the store cannot be read.
    pub(crate) fn kept_call_body(&self, proposal: &str, d: &Sha256Digest) -> anyhow::Result<Option<Vec<u8>>> {
        if let Some(b) = self.log.read_artifact(d)?.filter(|b| Sha256Digest::of(b) == *d) {
            return Ok(Some(b));
        }
        Ok(std::fs::read(self.call_body_path(proposal, d)).ok().filter(|b| Sha256Digest::of(b) == *d))
    }

    /// The preview modes a waiting proposal's document recorded for its
    /// endpoints (none: not a proposal, or every body shown in full).
    pub(crate) fn held_previews(&self, proposal: &str) -> BTreeMap<String, PreviewMode> {
        let document = self.log.proposal(proposal).ok().flatten().and_then(|v| v.document);
        let bytes = document.and_then(|d| self.log.read_artifact(&d).ok().flatten());
        bytes
            .and_then(|b| serde_json::from_slice::<super::proposal::Proposal>(&b).ok())
            .map(|p| p.previews)
            .unwrap_or_default()
    }

    /// Keep the bodies of a plan's calls: as evidence as far as each
    /// endpoint's preview mode allows (returned: the artifacts), and the
    /// exact bytes for the apply to come (in memory for this run; beside the
    /// proposal when an endpoint keeps them out of evidence).
    pub(crate) fn keep_call_bodies(
        &self,
        report: &mut RunReport,
        proposed: &[crate::sandbox::Proposed],
    ) -> Result<Vec<Sha256Digest>, Stop> {
        let proposal = edge_core::lifecycle::proposal_id(&report.run);
        let mut kept = Vec::new();
        for p in proposed {
            let comp = p.call.compensation.as_ref().map(|r| (r, &p.compensation_body));
            for (r, b) in std::iter::once((&p.call.request, &p.body)).chain(comp) {
                let Some(d) = r.body else { continue };
                let ep = self.config.endpoints.get(&r.endpoint);
                let shown = ep.and_then(|e| e.shown_body(b));
                if shown.as_deref() != Some(b.as_slice()) {
                    let path = self.call_body_path(&proposal, &d);
                    if let Some(dir) = path.parent() {
                        use std::os::unix::fs::DirBuilderExt as _;
                        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).or_fail()?;
                        // `previews/<proposal>/.calls` durable, as the file will be.
                        for d in dir.ancestors().skip(1).take(2) {
                            crate::staging::sync_dir(d).or_fail()?;
                        }
                    }
                    crate::staging::write_durably(&path, b).or_fail()?;
                }
                if let Some(s) = shown {
                    let a = report.artifact(&s)?;
                    report.call_shown.insert(d, s);
                    kept.push(a);
                }
                report.call_bodies.insert(d, b.clone());
            }
        }
        Ok(kept)
    }

    /// The body a planned request's digest names.
    fn call_body(&self, report: &RunReport, digest: Option<&Sha256Digest>) -> Result<Vec<u8>, Stop> {
        let Some(d) = digest else { return Ok(Vec::new()) };
        // This run's plan (tier 0), or the waiting proposal's (kept).
        let proposal = report.resumed.clone().unwrap_or_else(|| edge_core::lifecycle::proposal_id(&report.run));
        let bytes = match report.call_bodies.get(d) {
            Some(b) => Some(b.clone()),
            None => self.kept_call_body(&proposal, d).or_fail()?,
        };
        bytes.filter(|b| Sha256Digest::of(b) == *d).ok_or_else(|| {
            Stop::Refused(Refusal {
                stage: Stage::Apply,
                reason_code: "call.body_missing",
                detail: format!("the body {d} of a planned call is not in the evidence store; submit again"),
            })
        })
    }

    /// Run `apply` for an authorized plan with calls. Returns how many
    /// planned calls were made; a failure has compensated them and ended
    /// the run.
    pub(crate) async fn call(&self, run: &Authority, report: &mut RunReport) -> Result<usize, Stop> {
        let plan = run.authorized().plan().plan();
        let mut bodies = Vec::with_capacity(plan.calls.len());
        for c in &plan.calls {
            let comp = c.compensation.as_ref().and_then(|r| r.body.as_ref());
            bodies.push((self.call_body(report, c.request.body.as_ref())?, self.call_body(report, comp)?));
        }
        // In hand for the compensations, whatever becomes of the kept copies.
        for (c, (b, cb)) in plan.calls.iter().zip(&bodies) {
            for (d, bytes) in [(c.request.body, b), (c.compensation.as_ref().and_then(|r| r.body), cb)] {
                if let Some(d) = d {
                    report.call_bodies.entry(d).or_insert_with(|| bytes.clone());
                }
            }
        }
        report.barrier().await?;
        let log = self.call_log(report);
        let (result, captured, gate) = self.sandbox.apply_calls(run, bodies.clone(), log).await;
        Self::absorb_calls(report, gate.take_log());
        self.store_output(report, "apply", captured)?;
        let made = gate.planned_done();
        match result {
            Ok(()) => {
                report.record(Event::Committed { changes: made })?;
                Ok(made)
            }
            Err(e) if made == 0 => Err(Stop::Refused(Refusal {
                stage: Stage::Apply,
                reason_code: e.reason_code(),
                detail: self.redact(&e.to_string()),
            })),
            Err(e) => {
                let detail = self.redact(&e.to_string());
                report.record(Event::Refused {
                    stage: Stage::Apply.as_str().into(),
                    reason_code: e.reason_code().into(),
                    detail: detail.clone(),
                })?;
                self.compensate(run, report, made, &bodies, e.reason_code(), &detail).await?;
                report.refusal = Some(Refusal { stage: Stage::Apply, reason_code: e.reason_code(), detail });
                Err(Stop::Ended)
            }
        }
    }

    /// Send the compensations of the first `made` planned calls, last
    /// first, and end the run: rolled back when every one succeeded (2xx),
    /// failed otherwise.
    pub(crate) async fn compensate(
        &self,
        run: &Authority,
        report: &mut RunReport,
        made: usize,
        bodies: &[(Vec<u8>, Vec<u8>)],
        reason_code: &str,
        detail: &str,
    ) -> Result<(), Stop> {
        let plan = run.authorized().plan().plan();
        let mut undone = 0;
        let mut failed = Vec::new();
        report.barrier().await?;
        let mut log = self.call_log(report);
        for i in (0..made.min(plan.calls.len())).rev() {
            let Some(comp) = &plan.calls[i].compensation else { continue };
            let body = bodies.get(i).map_or(&[][..], |b| b.1.as_slice());
            let ep = run.endpoint(&comp.endpoint);
            let call = log.intent("compensate", u32::try_from(i).ok(), comp, body, ep.as_deref()).await.or_fail()?;
            let result = match ep {
                None => CallResult {
                    reason_code: Some("call.undeclared_endpoint"),
                    detail: Some(format!("endpoint `{}` is not granted", comp.endpoint)),
                    ..CallResult::default()
                },
                Some(ep) => {
                    let body = bytes::Bytes::copy_from_slice(body);
                    match egress::exchange(
                        &ep,
                        &comp.method,
                        &comp.path,
                        comp.content_type.as_deref(),
                        None,
                        body,
                        None,
                    )
                    .await
                    {
                        Ok((status, _, bytes)) => CallResult {
                            status: Some(status.as_u16()),
                            body: Some(Sha256Digest::of(&bytes)),
                            bytes: bytes.len() as u64,
                            content: egress::kept_response(&ep, &bytes),
                            ..CallResult::default()
                        },
                        Err(f) => CallResult {
                            reason_code: Some(f.reason_code),
                            detail: Some(f.detail),
                            ..CallResult::default()
                        },
                    }
                }
            };
            let ok = result.reason_code.is_none() && result.status.is_some_and(|s| (200..300).contains(&s));
            if ok {
                undone += 1;
            } else {
                failed.push(comp.line());
                tracing::error!(run = %report.run, call = %comp.line(), "a compensation failed: the service may be left changed");
            }
            log.outcome(call, result).or_fail()?;
        }
        Self::absorb_calls(report, Some(log));
        report.record(Event::RolledBack {
            reason_code: reason_code.into(),
            detail: detail.into(),
            restored: undone,
        })?;
        if failed.is_empty() {
            report.close(Outcome::RolledBack)
        } else {
            report.record(Event::Refused {
                stage: Stage::Apply.as_str().into(),
                reason_code: "call.compensation_failed".into(),
                detail: format!(
                    "{} compensation(s) failed ({}): the service may be left changed; see the call records",
                    failed.len(),
                    failed.join(", ")
                ),
            })?;
            report.close(Outcome::Failed)
        }
    }

    /// Verify an applied plan with calls: kept when it passes, compensated
    /// when it fails or breaks.
    pub(crate) async fn verify_calls(&self, run: &Authority, made: usize, report: &mut RunReport) -> Result<(), Stop> {
        report.barrier().await?;
        match self.check(run, report).await? {
            Ok(()) => report.close(Outcome::Committed),
            Err(e) => {
                use super::run::StageError as _;
                let detail = self.redact(&e.to_string());
                if let super::VerifyError::Sandbox(_) = e {
                    report.record(Event::Refused {
                        stage: e.stage().as_str().into(),
                        reason_code: e.reason_code().into(),
                        detail: detail.clone(),
                    })?;
                }
                let plan = run.authorized().plan().plan();
                let mut bodies = Vec::with_capacity(plan.calls.len());
                for c in &plan.calls {
                    let comp = c.compensation.as_ref().and_then(|r| r.body.as_ref());
                    bodies.push((Vec::new(), self.call_body(report, comp)?));
                }
                self.compensate(run, report, made, &bodies, e.reason_code(), &detail).await?;
                report.refusal = Some(Refusal { stage: Stage::Verify, reason_code: e.reason_code(), detail });
                Err(Stop::Ended)
            }
        }
    }
}
