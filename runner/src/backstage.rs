//! Import a system graph from a Backstage software catalog.
//!
//! Reads every `*.yaml`/`*.yml` file given (directories are walked), each
//! possibly holding several YAML documents. Entities of kind `Component`,
//! `Resource` and `System` become nodes; other kinds (API, Group, User,
//! Domain, Location, Template) are skipped and counted.
//!
//! | Backstage | graph |
//! | --- | --- |
//! | entity ref `kind:namespace/name` | node id (lowercase; namespace `default` kept explicit) |
//! | `spec.type` | node kind (`service`/`website` → service, `database` → datastore, …) |
//! | `spec.owner` | owner |
//! | `metadata.tags` | tags |
//! | `spec.dependsOn` | `depends_on` |
//! | `spec.system` | the System node depends on its member (touching a member impacts the system) |
//! | annotation `edge-runner.dev/criticality` | criticality (default `medium`) |
//!
//! A `dependsOn` that names an entity not in the catalog is an error naming
//! the file, the entity and the reference: an unknown dependency must never
//! silently vanish from the blast radius.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use edge_core::graph::{Criticality, GRAPH_VERSION, GraphSpec, NodeKind, NodeSpec};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Entity {
    #[serde(default)]
    api_version: String,
    kind: String,
    metadata: Metadata,
    #[serde(default)]
    spec: Spec,
}

#[derive(Debug, Deserialize)]
struct Metadata {
    name: String,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Spec {
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    owner: Option<String>,
    #[serde(default)]
    system: Option<String>,
    #[serde(default)]
    depends_on: Vec<String>,
}

/// What an import produced.
#[derive(Debug)]
pub struct Import {
    pub graph: GraphSpec,
    pub files: usize,
    /// Entity kinds skipped, with counts.
    pub skipped: BTreeMap<String, usize>,
}

/// Normalise an entity reference (`[kind:][namespace/]name`) to
/// `kind:namespace/name`, with `default_kind` when the kind is omitted.
fn normalise(reference: &str, default_kind: &str) -> String {
    let r = reference.trim().to_lowercase();
    let (kind, rest) = match r.split_once(':') {
        Some((k, rest)) => (k.to_owned(), rest.to_owned()),
        None => (default_kind.to_owned(), r),
    };
    let (ns, name) =
        rest.split_once('/').map_or(("default".to_owned(), rest.clone()), |(n, m)| (n.to_owned(), m.to_owned()));
    format!("{kind}:{ns}/{name}")
}

fn node_kind(entity_kind: &str, spec_type: Option<&str>) -> NodeKind {
    match (entity_kind, spec_type.map(str::to_lowercase).as_deref()) {
        ("system", _) => NodeKind::System,
        ("component", Some("service" | "website" | "api" | "worker")) => NodeKind::Service,
        ("component", Some("pipeline" | "job")) => NodeKind::Pipeline,
        ("component", _) => NodeKind::Service,
        ("resource", Some("database" | "datastore" | "storage" | "bucket" | "s3-bucket" | "cache")) => {
            NodeKind::Datastore
        }
        ("resource", Some("queue" | "topic" | "kafka-topic" | "stream")) => NodeKind::Queue,
        ("resource", Some("host" | "server" | "vm" | "volume" | "cluster")) => NodeKind::Host,
        ("resource", Some("pipeline" | "ci" | "cd")) => NodeKind::Pipeline,
        _ => NodeKind::Other,
    }
}

fn yaml_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut entries: Vec<PathBuf> = std::fs::read_dir(p)
                .with_context(|| format!("cannot read {}", p.display()))?
                .map(|e| e.map(|e| e.path()))
                .collect::<std::io::Result<_>>()?;
            entries.sort();
            out.extend(yaml_files(&entries)?);
        } else if p.extension().and_then(|e| e.to_str()).is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(p.clone());
        } else if paths.len() == 1 {
            bail!("{} is not a YAML file or a directory", p.display());
        }
    }
    Ok(out)
}

/// Import the catalog found at `paths` (files or directories).
///
/// # Errors
/// YAML errors (with file and line), duplicate entities, unresolved references.
pub fn import(paths: &[PathBuf]) -> Result<Import> {
    let files = yaml_files(paths)?;
    if files.is_empty() {
        bail!("no catalog-info YAML files found");
    }
    let mut entities: BTreeMap<String, (Entity, PathBuf)> = BTreeMap::new();
    let mut skipped: BTreeMap<String, usize> = BTreeMap::new();
    for file in &files {
        let text = std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
        for doc in serde_yaml_ng::Deserializer::from_str(&text) {
            let value = serde_yaml_ng::Value::deserialize(doc)
                .with_context(|| format!("{} is not valid YAML", file.display()))?;
            if value.is_null() {
                continue;
            }
            let entity: Entity = serde_yaml_ng::from_value(value)
                .with_context(|| format!("{}: not a Backstage entity", file.display()))?;
            if !entity.api_version.starts_with("backstage.io/") {
                *skipped.entry(format!("apiVersion {}", entity.api_version)).or_default() += 1;
                continue;
            }
            let kind = entity.kind.to_lowercase();
            if !matches!(kind.as_str(), "component" | "resource" | "system") {
                *skipped.entry(entity.kind.clone()).or_default() += 1;
                continue;
            }
            let ns = entity.metadata.namespace.clone().unwrap_or_else(|| "default".into());
            let id = normalise(&format!("{kind}:{ns}/{}", entity.metadata.name), &kind);
            if let Some((_, first)) = entities.get(&id) {
                bail!("{id} is defined in both {} and {}", first.display(), file.display());
            }
            entities.insert(id, (entity, file.clone()));
        }
    }
    let mut depends: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (id, (e, file)) in &entities {
        for d in &e.spec.depends_on {
            let target = normalise(d, "component");
            if !entities.contains_key(&target) {
                bail!("{}: {id} depends on `{d}` ({target}), which is not in the catalog", file.display());
            }
            depends.entry(id.clone()).or_default().insert(target);
        }
        if let Some(system) = &e.spec.system {
            let sys = normalise(system, "system");
            if !entities.contains_key(&sys) {
                bail!("{}: {id} is part of system `{system}` ({sys}), which is not in the catalog", file.display());
            }
            depends.entry(sys).or_default().insert(id.clone());
        }
    }
    let mut nodes = Vec::with_capacity(entities.len());
    for (id, (e, file)) in &entities {
        let criticality =
            match e.metadata.annotations.get("edge-runner.dev/criticality").map(|s| s.trim().to_lowercase()) {
                None => Criticality::Medium,
                Some(c) => match c.as_str() {
                    "low" => Criticality::Low,
                    "medium" => Criticality::Medium,
                    "high" => Criticality::High,
                    "critical" => Criticality::Critical,
                    other => {
                        bail!("{}: {id}: criticality `{other}` is not low, medium, high or critical", file.display())
                    }
                },
            };
        nodes.push(NodeSpec {
            id: id.clone(),
            kind: node_kind(&e.kind.to_lowercase(), e.spec.kind.as_deref()),
            owner: e.spec.owner.clone().unwrap_or_default(),
            criticality,
            tags: e.metadata.tags.iter().map(|t| t.to_lowercase()).collect(),
            depends_on: depends.remove(id).unwrap_or_default(),
            description: e.metadata.description.clone().unwrap_or_default(),
        });
    }
    Ok(Import { graph: GraphSpec { version: GRAPH_VERSION, nodes }, files: files.len(), skipped })
}

/// Render a graph as the TOML the runner reads.
///
/// # Errors
/// Only if serialisation fails.
pub fn to_toml(graph: &GraphSpec, source: &Path) -> Result<String> {
    let body = toml::to_string(graph)?;
    Ok(format!(
        "# System graph imported from the Backstage catalog at {}.\n# Regenerate with `edge-runner graph import-backstage`; edit the catalog, not this file.\n{body}",
        source.display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use edge_core::graph::Graph;

    fn catalog() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data/backstage")
    }

    #[test]
    fn imports_a_realistic_multi_file_catalog() {
        let import = import(&[catalog()]).unwrap();
        assert_eq!(import.files, 5);
        let ids: Vec<&str> = import.graph.nodes.iter().map(|n| n.id.as_str()).collect();
        assert_eq!(
            ids,
            [
                "component:default/nightly-reporting",
                "component:default/payments-api",
                "component:default/storefront",
                "component:identity/auth-service",
                "resource:default/ledger-db",
                "resource:default/log-volume",
                "resource:default/payments-queue",
                "resource:identity/user-directory",
                "system:default/payments",
            ]
        );
        for kind in ["API", "Domain", "Group", "Location", "User"] {
            assert_eq!(import.skipped.get(kind), Some(&1), "{kind}");
        }
        let node = |id: &str| import.graph.nodes.iter().find(|n| n.id == id).unwrap();
        let api = node("component:default/payments-api");
        assert_eq!(api.criticality, Criticality::High);
        assert_eq!(api.kind, NodeKind::Service);
        assert_eq!(api.owner, "team-payments");
        assert!(api.depends_on.contains("component:identity/auth-service"));
        assert_eq!(node("resource:default/ledger-db").kind, NodeKind::Datastore);
        assert_eq!(node("resource:default/payments-queue").kind, NodeKind::Queue);
        assert_eq!(node("resource:default/log-volume").kind, NodeKind::Host);
        assert!(node("component:default/storefront").tags.contains("website"), "tags are lowercased");
        // System membership: the system depends on its members.
        let sys = node("system:default/payments");
        assert_eq!(sys.kind, NodeKind::System);
        assert_eq!(sys.depends_on.len(), 3);

        // The result compiles, and the blast radius follows the catalog.
        let text = to_toml(&import.graph, &catalog()).unwrap();
        let g = Graph::from_toml(&text).unwrap();
        let dir = g.index_of("resource:identity/user-directory").unwrap();
        let impacted: Vec<String> = g.impact_of(dir).iter().map(|i| g.node(i).spec.id.clone()).collect();
        assert!(impacted.contains(&"component:default/storefront".to_owned()), "{impacted:?}");
        assert!(impacted.contains(&"system:default/payments".to_owned()), "{impacted:?}");
    }

    #[test]
    fn unresolved_references_and_duplicates_are_errors() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(
            t.path().join("a.yaml"),
            "apiVersion: backstage.io/v1alpha1\nkind: Component\nmetadata:\n  name: a\nspec:\n  dependsOn: [resource:ghost]\n",
        )
        .unwrap();
        let e = format!("{:#}", import(&[t.path().to_path_buf()]).unwrap_err());
        assert!(e.contains("a.yaml") && e.contains("resource:default/ghost"), "{e}");

        std::fs::write(
            t.path().join("a.yaml"),
            "apiVersion: backstage.io/v1alpha1\nkind: Component\nmetadata:\n  name: a\n",
        )
        .unwrap();
        std::fs::write(
            t.path().join("b.yaml"),
            "apiVersion: backstage.io/v1alpha1\nkind: Component\nmetadata:\n  name: A\n",
        )
        .unwrap();
        let e = format!("{:#}", import(&[t.path().to_path_buf()]).unwrap_err());
        assert!(e.contains("defined in both"), "{e}");

        std::fs::write(t.path().join("b.yaml"), "kind: [unclosed\n").unwrap();
        let e = format!("{:#}", import(&[t.path().to_path_buf()]).unwrap_err());
        assert!(e.contains("b.yaml"), "{e}");
    }
}
