//! Loading the policy document and the system graph from files, with errors
//! that name the file (and, for syntax errors, the line).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use edge_core::Sha256Digest;
use edge_core::graph::Graph;
use edge_core::policy::Policy;

/// A loaded policy, its graph, and the runner's mapping of mounts and
/// endpoints to graph nodes. Replaced as a whole, never edited in place.
#[derive(Debug)]
pub struct PolicySet {
    pub policy: Policy,
    /// Compiled at load; only the config read to hand a run over
    /// ([`crate::config::RunnerConfig::load_to_hand_over`], which never lets
    /// its `PolicySet` out) leaves it out.
    graph: Option<Graph>,
    /// SHA-256 of `graph_text`: the graph digest, known without compiling.
    pub graph_digest: Sha256Digest,
    /// Exact bytes (stored as evidence artifacts: their digests are the policy and graph digests).
    pub policy_text: String,
    pub graph_text: String,
    pub policy_path: PathBuf,
    pub graph_path: PathBuf,
}

impl PolicySet {
    /// Load and compile both files.
    ///
    /// # Errors
    /// `policy <file>: <reason>` or `graph <file>: <reason>`.
    pub fn load(policy_path: &Path, graph_path: &Path) -> Result<Self> {
        Self::read(policy_path, graph_path, true)
    }

    /// Both files, the graph compiled only if `compile_graph` (else only
    /// hashed: see [`PolicySet::graph`]).
    pub(crate) fn read(policy_path: &Path, graph_path: &Path, compile_graph: bool) -> Result<Self> {
        let policy_text = std::fs::read_to_string(policy_path)
            .with_context(|| format!("cannot read policy {}", policy_path.display()))?;
        let graph_text = std::fs::read_to_string(graph_path)
            .with_context(|| format!("cannot read system graph {}", graph_path.display()))?;
        let policy = Policy::from_toml(&policy_text)
            .map_err(|e| anyhow::anyhow!("policy {} is invalid: {e}", policy_path.display()))?;
        // The digest is the text's SHA-256: taken from the compiled graph,
        // which hashed it, or hashed here.
        let (graph, graph_digest) = if compile_graph {
            let graph = Graph::from_toml(&graph_text)
                .map_err(|e| anyhow::anyhow!("graph {} is invalid: {e}", graph_path.display()))?;
            let digest = graph.digest();
            (Some(graph), digest)
        } else {
            (None, Sha256Digest::of(graph_text.as_bytes()))
        };
        Ok(Self {
            policy,
            graph,
            graph_digest,
            policy_text,
            graph_text,
            policy_path: policy_path.to_path_buf(),
            graph_path: graph_path.to_path_buf(),
        })
    }

    /// The compiled system graph.
    ///
    /// # Panics
    /// Never for a `PolicySet` outside `crate::config`: every one a loaded
    /// config holds was compiled by [`PolicySet::load`]; the one read to hand
    /// a run over is dropped inside `config.rs` after its digests are taken.
    pub fn graph(&self) -> &Graph {
        self.graph.as_ref().expect("a loaded config's system graph is compiled")
    }

    /// Check that every mapped node exists. An unknown node is an error, never
    /// a silent zero-risk.
    ///
    /// # Errors
    /// Names the mount or endpoint and the missing node.
    pub fn check_nodes(&self, nodes: &BTreeMap<String, String>) -> Result<()> {
        for (what, node) in nodes {
            if self.graph().index_of(node).is_none() {
                bail!("`{what}` maps to node `{node}`, which is not in the system graph {}", self.graph_path.display());
            }
        }
        Ok(())
    }
}
