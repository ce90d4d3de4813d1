//! `policy check`: static checks of a policy against its graph and the
//! runner's node mapping. Errors make a policy unusable; warnings point at
//! rules that can never fire or surfaces nothing carries.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::{Condition, Policy};
use crate::graph::Graph;
use crate::manifest::Kind;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Level {
    Error,
    Warning,
}

/// One finding of `policy check`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckFinding {
    pub level: Level,
    pub subject: String,
    pub text: String,
}

fn push(out: &mut Vec<CheckFinding>, level: Level, subject: impl Into<String>, text: impl Into<String>) {
    out.push(CheckFinding { level, subject: subject.into(), text: text.into() });
}

/// Check a policy, its graph, and the mount/endpoint → node mapping.
pub fn check(policy: &Policy, graph: &Graph, nodes: &BTreeMap<String, String>) -> Vec<CheckFinding> {
    let mut out = Vec::new();
    for (what, node) in nodes {
        if graph.index_of(node).is_none() {
            push(&mut out, Level::Error, format!("mapping.{what}"), format!("node `{node}` is not in the graph"));
        }
    }
    let na = policy.never_automate();
    for n in &na.nodes {
        if graph.index_of(n).is_none() {
            push(&mut out, Level::Error, "never_automate.nodes", format!("node `{n}` is not in the graph"));
        }
    }
    for t in &na.tags {
        if graph.tag_bit(t).is_none() {
            push(
                &mut out,
                Level::Warning,
                "never_automate.tags",
                format!("no node carries tag `{t}`; it protects nothing"),
            );
        }
    }
    for cycle in graph.cycles() {
        push(&mut out, Level::Warning, "graph", format!("dependency cycle: {}", cycle.join(" -> ")));
    }
    let signers: BTreeSet<&str> = policy.spec.signers.iter().map(|s| s.name.as_str()).collect();
    let max_score: u64 = graph.nodes().iter().map(|n| 2 * n.spec.criticality.weight()).sum();
    let conditions = policy
        .rules()
        .iter()
        .map(|r| (format!("rules.{}", r.name), &r.when, Some(r.tier)))
        .chain(policy.denials().iter().map(|d| (format!("deny.{}", d.name), &d.when, None)));
    for (subject, when, tier) in conditions {
        let never = |out: &mut Vec<CheckFinding>, why: String| {
            push(out, Level::Warning, &subject, format!("can never fire: {why}"));
        };
        for id in when.touched_nodes_any.iter().chain(&when.impacted_nodes_any) {
            if graph.index_of(id).is_none() {
                push(&mut out, Level::Error, &subject, format!("node `{id}` is not in the graph"));
            }
        }
        for s in &when.signer_any {
            if !signers.contains(s.as_str()) {
                push(&mut out, Level::Warning, &subject, format!("signer `{s}` is not trusted by this policy"));
            }
        }
        for (field, tags) in tag_lists(when) {
            if !tags.is_empty() && tags.iter().all(|t| graph.tag_bit(t).is_none()) {
                never(&mut out, format!("no node carries any of the tags in `{field}`"));
            }
        }
        if let Some(m) = when.min_score
            && m > max_score
        {
            never(&mut out, format!("min_score {m} exceeds the largest possible score {max_score}"));
        }
        if let Some(m) = when.min_impacted
            && m > graph.len()
        {
            never(&mut out, format!("min_impacted {m} exceeds the {} nodes in the graph", graph.len()));
        }
        if when.kind == Some(Kind::Diagnostic) && when.writes == Some(true) {
            never(&mut out, "diagnostic capsules never write".into());
        }
        if let Some(t) = tier
            && t <= policy.default_tier()
        {
            push(
                &mut out,
                Level::Warning,
                &subject,
                format!(
                    "tier {t} is not above the default tier {}: the rule never changes a decision",
                    policy.default_tier()
                ),
            );
        }
    }
    out
}

fn tag_lists(c: &Condition) -> [(&'static str, &Vec<String>); 3] {
    [
        ("touched_tags_any", &c.touched_tags_any),
        ("impacted_tags_any", &c.impacted_tags_any),
        ("write_impacted_tags_any", &c.write_impacted_tags_any),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_unknown_nodes_cycles_and_dead_rules() {
        let graph = Graph::from_toml(
            "version = 1\n[[nodes]]\nid = \"a\"\ntags = [\"auth\"]\ndepends_on = [\"b\"]\n[[nodes]]\nid = \"b\"\ndepends_on = [\"a\"]\n",
        )
        .unwrap();
        let policy = Policy::from_toml(
            "version = 1\n[never_automate]\nnodes = [\"ghost\"]\ntags = [\"payments\"]\n\
             [[rules]]\nname = \"t\"\nwhen = { impacted_tags_any = [\"revenue-path\"] }\ntier = 1\nreason = \"x\"\n\
             [[rules]]\nname = \"s\"\nwhen = { min_score = 1000 }\ntier = 1\nreason = \"x\"\n\
             [[rules]]\nname = \"z\"\nwhen = { writes = true }\ntier = 0\nreason = \"x\"\n\
             [[rules]]\nname = \"n\"\nwhen = { touched_nodes_any = [\"nope\"] }\ntier = 1\nreason = \"x\"\n\
             [tiers.0]\napprovals = 0\n[tiers.1]\napprovals = 1\n",
        )
        .unwrap();
        let nodes = [("data".to_owned(), "missing".to_owned())].into();
        let f = check(&policy, &graph, &nodes);
        let has = |level: Level, subject: &str, text: &str| {
            f.iter().any(|x| x.level == level && x.subject == subject && x.text.contains(text))
        };
        assert!(has(Level::Error, "mapping.data", "missing"), "{f:#?}");
        assert!(has(Level::Error, "never_automate.nodes", "ghost"));
        assert!(has(Level::Warning, "never_automate.tags", "payments"));
        assert!(has(Level::Warning, "graph", "cycle"));
        assert!(has(Level::Warning, "rules.t", "can never fire"));
        assert!(has(Level::Warning, "rules.s", "largest possible score"));
        assert!(has(Level::Warning, "rules.z", "never changes a decision"));
        assert!(has(Level::Error, "rules.n", "nope"));
    }
}
