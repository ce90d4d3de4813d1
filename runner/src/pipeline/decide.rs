//! Decide: the policy, over the blast radius of the grant in the system
//! graph (never the capsule's claims), gives the tier and the approvals it
//! needs. Recorded, with its input, before anything runs. Also: which
//! policy is in force (reloading it: `reload.rs`).

use std::collections::BTreeMap;

use anyhow::Result;
use edge_core::admission::Admitted;
use edge_core::authorize::{self, AuthorizeError, Decided};
use edge_core::canonical;
use edge_core::evidence::Event;
use edge_core::policy::DecisionInput;

use super::Runner;
use super::run::{Fails, RunReport, Stage, StageError, Stop};
use crate::governance::Governance;

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
        let governance = report.governance.clone();
        let (evaluated, input_d) = match &governance.policy {
            Some(set) => {
                let input = decision_input(&admitted, &governance.nodes, &self.config.endpoints);
                let input_d = report.artifact(&canonical::to_canonical_vec(&input).or_fail()?)?;
                (set.policy.evaluate(set.graph(), &input), Some(input_d))
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
    /// any decision uses it. Every governing document is stored as an
    /// artifact, so a later reload record can name what it replaced.
    pub(crate) fn record_policy_in_force(&self) -> Result<()> {
        let governance = self.governance();
        for doc in governance.documents() {
            self.log.put_artifact(doc)?;
        }
        if let Some(event) = self.policy_change(&governance) {
            self.log.append("policy", event)?;
        }
        Ok(())
    }

    /// The `policy-change` record that puts `governance`'s policy and graph
    /// in force, if they differ from what the log last recorded.
    pub(crate) fn policy_change(&self, governance: &Governance) -> Option<Event> {
        let (old_policy, old_graph) = self.recorded_policy();
        let (new_policy, new_graph) = match &governance.policy {
            Some(p) => (Some(p.policy.digest()), Some(p.graph_digest)),
            None => (None, None),
        };
        ((old_policy, old_graph) != (new_policy, new_graph)).then_some(Event::PolicyChange {
            old_policy,
            new_policy,
            old_graph,
            new_graph,
        })
    }
}

/// Everything the policy decides on, from an admitted capsule.
pub fn decision_input(
    admitted: &Admitted,
    nodes: &BTreeMap<String, String>,
    endpoints: &BTreeMap<String, std::sync::Arc<crate::config::endpoints::EndpointConfig>>,
) -> DecisionInput {
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
        read_endpoints: m
            .endpoints
            .iter()
            .filter(|e| endpoints.get(*e).is_some_and(|c| !c.may_write()))
            .cloned()
            .collect(),
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
