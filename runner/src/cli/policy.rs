//! `edge-runner policy …` and `edge-runner graph …`.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use edge_core::admission::{self, Grant, GrantedMount};
use edge_core::container::CapsuleFile;
use edge_core::manifest::Kind;
use edge_core::policy::check::{self, Level};
use edge_core::policy::{Decision, DecisionInput};
use edge_core::signature::{self, Transparency};
use edge_core::text::Untrusted as U;
use serde::Deserialize;

use crate::cli::{Exit, component_imports};
use crate::config::RunnerConfig;
use crate::policy_files::PolicySet;

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Validate the policy and graph: unknown nodes, cycles, unreachable tags,
    /// rules that can never fire. Exit 1 on errors.
    Check {
        /// The runner config (runner.toml).
        #[arg(long)]
        config: PathBuf,
    },
    /// The decision for a capsule, and why.
    Explain {
        /// The capsule file (signed or not: the signature is checked and reported).
        capsule: PathBuf,
        /// The runner config (runner.toml).
        #[arg(long)]
        config: PathBuf,
        /// Print the decision as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run a table of cases (TOML) and compare tiers and decisions. Exit 1 on a mismatch.
    Test {
        /// The cases file (TOML; see examples/policy/cases.toml).
        cases: PathBuf,
        /// The runner config (runner.toml).
        #[arg(long)]
        config: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum GraphCommand {
    /// Import a system graph from a Backstage catalog: catalog-info.yaml files
    /// (a root Location file is enough: its targets are followed) or
    /// directories (every YAML file under them is read; what is not an entity
    /// is skipped and listed).
    ImportBackstage {
        /// catalog-info.yaml files or directories of them.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Where to write the graph (TOML).
        #[arg(short, long)]
        out: PathBuf,
        /// Nothing outside this directory is read, even when a Location points
        /// there (default: each directory named, or the directory of each file).
        #[arg(long)]
        root: Option<PathBuf>,
    },
}

fn load(config: &Path) -> Result<RunnerConfig> {
    let c = RunnerConfig::load(config)?;
    if c.governance.as_ref().is_none_or(|g| g.policy.is_none()) {
        bail!("{} configures no policy: add [policy] file = \"policy.toml\", graph = \"graph.toml\"", config.display());
    }
    Ok(c)
}

fn set(c: &RunnerConfig) -> &PolicySet {
    gov(c).policy.as_deref().expect("checked in load")
}

fn gov(c: &RunnerConfig) -> &crate::governance::Governance {
    c.governance.as_ref().expect("a loaded config has its governance")
}

pub fn policy(cmd: PolicyCommand, out: &mut dyn Write) -> Result<Exit> {
    match cmd {
        PolicyCommand::Check { config } => {
            let c = load(&config)?;
            let s = set(&c);
            let findings = check::check(&s.policy, s.graph(), &gov(&c).nodes);
            writeln!(
                out,
                "policy  {} ({}) \"{}\": {} rule(s), {} denial(s), {} tier(s), {} signer(s)",
                s.policy_path.display(),
                s.policy.digest(),
                s.policy.name(),
                s.policy.rules().len(),
                s.policy.denials().len(),
                s.policy.tiers().len(),
                s.policy.signers().len()
            )?;
            writeln!(
                out,
                "graph   {} ({}): {} node(s), {} cycle(s), tags: {}",
                s.graph_path.display(),
                s.graph_digest,
                s.graph().len(),
                s.graph().cycles().len(),
                s.graph().tag_names().join(", ")
            )?;
            for (what, node) in gov(&c).nodes.iter() {
                writeln!(out, "mapping {what} -> {node}")?;
            }
            let errors = findings.iter().filter(|f| f.level == Level::Error).count();
            for f in &findings {
                let level = if f.level == Level::Error { "error" } else { "warning" };
                writeln!(out, "{level}: [{}] {}", f.subject, f.text)?;
            }
            writeln!(out, "{}", if errors == 0 { "OK".to_owned() } else { format!("{errors} error(s)") })?;
            Ok(if errors == 0 { Exit::Ok } else { Exit::Error })
        }
        PolicyCommand::Explain { capsule, config, json } => {
            let c = load(&config)?;
            let bytes = std::fs::read(&capsule).with_context(|| format!("cannot read {}", capsule.display()))?;
            let file =
                CapsuleFile::parse(&bytes).with_context(|| format!("{} is not a valid capsule", capsule.display()))?;
            let imports = component_imports(file.component())?;
            let verified = match signature::verify_capsule(file, &gov(&c).signers) {
                Ok(v) => v,
                Err(e) => {
                    writeln!(out, "refused at admission ({}): {e}", e.reason_code())?;
                    return Ok(Exit::Refused);
                }
            };
            let admitted = match admission::admit(verified, &imports, &c.ceiling) {
                Ok(a) => a,
                Err(e) => {
                    writeln!(out, "refused at admission ({}): {e}", e.reason_code())?;
                    return Ok(Exit::Refused);
                }
            };
            let input = crate::pipeline::decision_input(&admitted, &gov(&c).nodes, &c.endpoints);
            let s = set(&c);
            let d = s.policy.decide(s.graph(), &input);
            if json {
                serde_json::to_writer_pretty(&mut *out, &serde_json::json!({"input": input, "decision": d}))?;
                writeln!(out)?;
            } else {
                writeln!(out, "capsule      {} ({})", edge_core::text::line(&input.name), input.capsule)?;
                writeln!(out, "signer       {}", input.signer)?;
                print_decision(&d, out)?;
            }
            Ok(if d.allowed { Exit::Ok } else { Exit::Refused })
        }
        PolicyCommand::Test { cases, config } => {
            let c = load(&config)?;
            let text = std::fs::read_to_string(&cases).with_context(|| format!("cannot read {}", cases.display()))?;
            let table: CaseTable =
                toml::from_str(&text).map_err(|e| anyhow::anyhow!("cases {} are invalid: {e}", cases.display()))?;
            if table.case.is_empty() {
                bail!("{} holds no [[case]]", cases.display());
            }
            let s = set(&c);
            let mut failed = 0;
            for case in &table.case {
                let input = case.input(&c)?;
                let d = s.policy.decide(s.graph(), &input);
                let mut problems = Vec::new();
                if let Some(a) = case.expect.allowed
                    && a != d.allowed
                {
                    problems.push(format!("allowed: expected {a}, got {}", d.allowed));
                }
                if let Some(t) = case.expect.tier
                    && t != d.tier
                {
                    problems.push(format!("tier: expected {t}, got {}", d.tier));
                }
                for r in &case.expect.rules {
                    if !d.reasons.iter().any(|x| &x.rule == r) {
                        problems.push(format!("rule `{r}` did not fire"));
                    }
                }
                if problems.is_empty() {
                    writeln!(out, "PASS  {}", case.name)?;
                } else {
                    failed += 1;
                    writeln!(out, "FAIL  {}: {}", case.name, problems.join("; "))?;
                    for r in &d.reasons {
                        writeln!(out, "        {r}")?;
                    }
                }
            }
            writeln!(out, "{} case(s), {} passed, {failed} failed", table.case.len(), table.case.len() - failed)?;
            Ok(if failed == 0 { Exit::Ok } else { Exit::Error })
        }
    }
}

pub fn graph(cmd: GraphCommand, out: &mut dyn Write) -> Result<Exit> {
    match cmd {
        GraphCommand::ImportBackstage { paths, out: dest, root } => {
            let import = crate::backstage::import(&paths, root.as_deref())?;
            // Compile it, so a graph that would not load is never written.
            let text = crate::backstage::to_toml(&import.graph, &paths[0])?;
            edge_core::graph::Graph::from_toml(&text).map_err(|e| anyhow::anyhow!("imported graph is invalid: {e}"))?;
            crate::staging::write_durably(&dest, text.as_bytes())?;
            let edges: usize = import.graph.nodes.iter().map(|n| n.depends_on.len()).sum();
            writeln!(
                out,
                "imported {} node(s), {edges} edge(s) from {} file(s) into {}",
                import.graph.nodes.len(),
                import.files,
                dest.display()
            )?;
            if !import.unmapped.is_empty() {
                let counts: Vec<String> = import.unmapped.iter().map(|(kind, n)| format!("{n} {kind}")).collect();
                writeln!(out, "not graph nodes: {}", counts.join(", "))?;
            }
            for s in &import.skipped {
                writeln!(out, "skipped {s}")?;
            }
            Ok(Exit::Ok)
        }
    }
}

/// Human summary of a decision.
pub fn print_decision(d: &Decision, out: &mut dyn Write) -> Result<()> {
    let verdict = if d.allowed { "allowed" } else { "DENIED" };
    let approvals = match (&d.requirement, d.approvals_required) {
        (_, 0) => "no approvals".to_owned(),
        (Some(r), n) => format!(
            "{n} approval(s){}{}, at most {}s old",
            if r.roles.is_empty() { String::new() } else { format!(" from {}", U(&r.roles.join("/"))) },
            if r.distinct { ", distinct people and keys" } else { "" },
            r.max_age_secs
        ),
        (None, n) => format!("{n} approval(s)"),
    };
    writeln!(out, "decision     {verdict}, tier {}, {approvals}", d.tier)?;
    if let Some(p) = &d.policy {
        writeln!(out, "policy       {p}")?;
    }
    if let Some(g) = &d.graph {
        writeln!(out, "graph        {g}")?;
    }
    if let Some(x) = &d.derivation {
        for t in &x.touched {
            let access = if t.access == edge_core::policy::Access::Write { "write" } else { "read" };
            writeln!(out, "touches      {} via {} ({access})", U(&t.node), U(&t.via))?;
        }
        writeln!(
            out,
            "blast radius {} node(s), score {}{}",
            x.impacted_count,
            x.score,
            x.most_critical
                .as_ref()
                .map(|m| format!(", most critical {} ({})", U(&m.node), m.criticality))
                .unwrap_or_default()
        )?;
        if !x.impacted.is_empty() {
            writeln!(out, "impacted     {}", U(&x.impacted.join(", ")))?;
        }
        if !x.sensitive_tags.is_empty() {
            writeln!(out, "sensitive    {}", U(&x.sensitive_tags.join(", ")))?;
        }
    }
    for r in &d.reasons {
        writeln!(out, "  because    {}", edge_core::text::line(&r.to_string()))?;
    }
    Ok(())
}

/// `policy test` cases.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseTable {
    #[serde(default)]
    case: Vec<Case>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    signer: String,
    kind: Kind,
    #[serde(default)]
    mounts: Vec<GrantedMount>,
    #[serde(default)]
    endpoints: Vec<String>,
    #[serde(default)]
    ticket: Option<String>,
    /// The signature carried a verified transparency-log entry.
    #[serde(default)]
    tlog: bool,
    expect: Expect,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Expect {
    #[serde(default)]
    allowed: Option<bool>,
    #[serde(default)]
    tier: Option<u8>,
    /// Rules that must be among the decision's reasons.
    #[serde(default)]
    rules: Vec<String>,
}

impl Case {
    /// The decision input a capsule requesting these mounts would get (admission never trims).
    fn input(&self, c: &RunnerConfig) -> Result<DecisionInput> {
        for m in &self.mounts {
            if !c.mounts.contains_key(&m.name) {
                bail!("case `{}`: mount `{}` is not configured in the runner config", self.name, m.name);
            }
        }
        let nodes: BTreeMap<String, String> = gov(c)
            .nodes
            .iter()
            .filter(|(k, _)| self.mounts.iter().any(|m| &m.name == *k) || self.endpoints.contains(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        Ok(DecisionInput {
            read_endpoints: vec![],
            capsule: edge_core::Sha256Digest::of(self.name.as_bytes()),
            name: self.name.clone(),
            kind: self.kind,
            signer: self.signer.clone(),
            transparency: if self.tlog { Transparency::Verified } else { Transparency::None },
            grant: Grant {
                endpoints: self.endpoints.clone(),
                mounts: self.mounts.clone(),
                env: Vec::new(),
                imports: Default::default(),
                limits: c.ceiling.default_limits,
            },
            endpoints: self.endpoints.clone(),
            nodes,
            ticket: self.ticket.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_lists_what_it_skipped() {
        let t = tempfile::tempdir().unwrap();
        let dest = t.path().join("graph.toml");
        let mut out = Vec::new();
        let cmd = GraphCommand::ImportBackstage {
            paths: vec![
                std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data/backstage/example-catalog"),
            ],
            out: dest.clone(),
            root: None,
        };
        assert_eq!(graph(cmd, &mut out).unwrap(), crate::cli::Exit::Ok);
        let out = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = out.lines().collect();
        assert!(lines[0].starts_with("imported 16 node(s), 22 edge(s) from 14 file(s) into "), "{out}");
        assert_eq!(lines[1], "not graph nodes: 2 Domain, 3 Group, 5 Location, 2 User");
        assert!(lines[2..].iter().all(|l| l.starts_with("skipped ")), "{out}");
        assert!(out.contains("artist-api.oas.yaml: not a Backstage entity"), "{out}");
        edge_core::graph::Graph::from_toml(&std::fs::read_to_string(dest).unwrap()).unwrap();
    }
}
