//! Decide: the policy, over the blast radius of the grant in the system
//! graph (never the capsule's claims), gives the tier and the approvals it
//! needs. Recorded, with its input, before anything runs. Also: which
//! policy is in force, and reloading it.

use std::collections::BTreeMap;

use anyhow::Result;
use edge_core::admission::Admitted;
use edge_core::authorize::{self, AuthorizeError, Decided};
use edge_core::canonical;
use edge_core::evidence::Event;
use edge_core::policy::DecisionInput;

use super::Runner;
use super::run::{Fails, RunReport, Stage, StageError, Stop};
use crate::policy_files::PolicySet;

/// Why the policy did not let the capsule go further.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct DecideError(#[from] AuthorizeError);

impl StageError for DecideError {
    fn stage(&self) -> Stage {
        Stage::Decide
    }

    fn reason_code(&self) -> &'static str {
        self.0.reason_code()
    }
}

impl Runner {
    pub(crate) fn decide(&self, admitted: Admitted, report: &mut RunReport) -> Result<Decided, Stop> {
        let (evaluated, input_d) = match &self.config.policy {
            Some(set) => {
                let input = decision_input(&admitted, &self.config.nodes);
                let input_d = report.artifact(&canonical::to_canonical_vec(&input).or_fail()?)?;
                (set.policy.evaluate(&set.graph, &input), Some(input_d))
            }
            // Config refuses to load without a policy unless the operator
            // set `dangerous_run_without_policy` (recorded in the submission).
            None => (authorize::Evaluated::dangerous_without_policy(), None),
        };
        let decision = evaluated.decision().clone();
        report.tier = Some(decision.tier);
        report.decision = Some(decision.clone());
        report.record(Event::Decision { decision, input: input_d })?;
        Ok(authorize::decide(admitted, evaluated).map_err(DecideError)?)
    }

    /// The policy and graph digests the log last recorded as in force.
    fn recorded_policy(&self) -> (Option<edge_core::Sha256Digest>, Option<edge_core::Sha256Digest>) {
        self.log.index().policy
    }

    /// If the policy or graph in force differs from what the log last
    /// recorded, record the change (with both documents as artifacts) before
    /// any decision uses it.
    pub(crate) fn record_policy_in_force(&mut self) -> Result<()> {
        let (old_policy, old_graph) = self.recorded_policy();
        let (new_policy, new_graph) = match &self.config.policy {
            Some(p) => (Some(p.policy.digest()), Some(p.graph.digest())),
            None => (None, None),
        };
        if (old_policy, old_graph) == (new_policy, new_graph) {
            return Ok(());
        }
        if let Some(p) = &self.config.policy {
            let (pt, gt) = (p.policy_text.clone(), p.graph_text.clone());
            self.log.put_artifact(pt.as_bytes())?;
            self.log.put_artifact(gt.as_bytes())?;
        }
        self.log.append("policy", Event::PolicyChange { old_policy, new_policy, old_graph, new_graph })?;
        Ok(())
    }

    /// Reload the policy and graph from their files. A new policy takes
    /// effect atomically (one assignment, recorded first); a bad one is
    /// refused, recorded, and the last good one stays in force.
    ///
    /// # Errors
    /// Only if the evidence log cannot be written. A refused reload returns
    /// `Ok(false)`.
    pub fn reload_policy(&mut self) -> Result<bool> {
        let Some(current) = &self.config.policy else { return Ok(false) };
        let (policy_path, graph_path) = (current.policy_path.clone(), current.graph_path.clone());
        let kept = Some(current.policy.digest());
        let has_root = self.config.signers.has_trusted_root();
        let loaded = PolicySet::load(&policy_path, &graph_path).and_then(|set| {
            set.check_nodes(&self.config.nodes)?;
            if !has_root && set.policy.signers().iter().any(|s| s.is_keyless()) {
                anyhow::bail!("the policy trusts keyless signers but no `sigstore.trusted_root` is configured");
            }
            Ok(set)
        });
        match loaded {
            Ok(set) => {
                let signers = set.policy.signers().to_vec();
                let old = self.config.policy.replace(set);
                if let Err(e) = self.record_policy_in_force() {
                    self.config.policy = old;
                    return Err(e);
                }
                self.config.signers.set_signers(signers);
                Ok(true)
            }
            Err(e) => {
                let file = format!("{} / {}", policy_path.display(), graph_path.display());
                self.log.append("policy", Event::PolicyRefused { file, error: format!("{e:#}"), kept_policy: kept })?;
                Ok(false)
            }
        }
    }
}

/// Everything the policy decides on, from an admitted capsule.
pub fn decision_input(admitted: &Admitted, nodes: &BTreeMap<String, String>) -> DecisionInput {
    let capsule = admitted.capsule();
    let m = capsule.file().manifest();
    DecisionInput {
        capsule: capsule.file().digest(),
        name: format!("{}@{}", m.name, m.version),
        kind: m.kind,
        signer: capsule.signer().to_owned(),
        transparency: capsule.transparency(),
        grant: admitted.grant().clone(),
        endpoints: m.endpoints.clone(),
        // Only the mappings this grant uses: the decision input stays small
        // and replayable.
        nodes: nodes
            .iter()
            .filter(|(k, _)| admitted.grant().mounts.iter().any(|g| &g.name == *k) || m.endpoints.contains(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        ticket: m.provenance.ticket.clone(),
    }
}
