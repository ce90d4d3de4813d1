//! Import a system graph from a Backstage software catalog.
//!
//! ```text
//! paths ──read──▶ documents ──classify──▶ entities ──edges──▶ GraphSpec
//!   │ walk dirs,        │ not an entity:       │ refs resolved with
//!   │ follow Locations  │ skipped and listed   │ Backstage's defaults
//! ```
//!
//! `read.rs` reads the files named, walks the directories named, and
//! follows `Location` entities (`spec.target`, `spec.targets`) relative to
//! the Location file. It never leaves a catalog root (`--root`, else a
//! directory argument, or a file argument's directory): targets outside it, URLs and glob
//! patterns are listed as skipped, nothing is fetched, and each file is read
//! once, which also ends Location cycles.
//!
//! `entity.rs` decides what each YAML document is. Documents that are
//! not Backstage entities (an OpenAPI spec, a JSON schema, a Kubernetes
//! manifest) are skipped and listed; an entity that is malformed is an error
//! naming the file.
//!
//! Entities of kind `Component`, `Resource`, `System` and `API` become nodes;
//! Group, User, Domain, Location, Template (and custom kinds) are counted.
//!
//! | Backstage | graph |
//! | --- | --- |
//! | entity `kind:namespace/name` | node id, lowercase (namespace `default` kept explicit) |
//! | `API` entity | a node of kind `api` between providers and consumers |
//! | `spec.type` | node kind (`service`/`website` → service, `database` → datastore, …) |
//! | `spec.owner` | owner, as a full ref (default kind `group`) |
//! | `metadata.tags` | tags (lowercase) |
//! | `dependsOn`, `dependencyOf`, `consumesApis`, `providesApis`, `apiConsumedBy`, `apiProvidedBy`, `subcomponentOf`, `system`, `relations` | `depends_on`, pointed so impact flows to whoever would notice (see `edges.rs`) |
//! | annotation `edge-runner.dev/criticality` | criticality (default `medium`) |
//!
//! So a write to a component that provides an API impacts the API, every
//! consumer of it and everything depending on those consumers; a write to a
//! subcomponent impacts its parent and everything depending on the parent.
//!
//! References follow Backstage: `[kind:][namespace/]name`, case-insensitive,
//! namespace defaulting to the referring entity's, kind defaulting per field
//! (`api` for `consumesApis`/`providesApis`, `component` for `subcomponentOf`
//! and `apiProvidedBy`/`apiConsumedBy`, `system` for `system`, `group` for
//! `owner`). `dependsOn`/`dependencyOf` have no default kind: a reference
//! without one must match exactly one Component or Resource. A reference to
//! an entity that is not in the catalog is an error naming the file, the
//! entity and the reference: a dependency must never silently vanish from
//! the blast radius.

mod edges;
mod entity;
mod read;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use edge_core::graph::{Criticality, GRAPH_VERSION, GraphSpec, NodeKind, NodeSpec};

use self::entity::EntityRef;
pub use self::read::Skipped;
use self::read::Sourced;

/// What an import produced.
#[derive(Debug)]
pub struct Import {
    pub graph: GraphSpec,
    /// Files read.
    pub files: usize,
    /// Entities of kinds that are not graph nodes (Group, User, Domain,
    /// Location, ...), with counts.
    pub unmapped: BTreeMap<String, usize>,
    /// Documents that are not entities, and Location targets not followed,
    /// each with the reason.
    pub skipped: Vec<Skipped>,
}

fn node_kind(entity_kind: &str, spec_type: Option<&str>) -> NodeKind {
    match (entity_kind, spec_type.map(str::to_lowercase).as_deref()) {
        ("system", _) => NodeKind::System,
        ("api", _) => NodeKind::Api,
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

fn criticality(e: &Sourced) -> Result<Criticality> {
    let Some(c) = e.entity.annotations.get("edge-runner.dev/criticality") else {
        return Ok(Criticality::Medium);
    };
    Ok(match c.trim().to_lowercase().as_str() {
        "low" => Criticality::Low,
        "medium" => Criticality::Medium,
        "high" => Criticality::High,
        "critical" => Criticality::Critical,
        other => bail!(
            "{}: {}: annotation edge-runner.dev/criticality `{other}` is not low, medium, high or critical",
            e.file.display(),
            e.entity.id()
        ),
    })
}

/// `spec.owner` as a full reference (default kind `group`). Owners are
/// informational and often live outside the catalog, so they are not checked.
fn owner(e: &Sourced) -> String {
    let Some(o) = &e.entity.spec.owner else { return String::new() };
    EntityRef::parse(o).map_or_else(|_| o.trim().to_lowercase(), |r| r.full("group", &e.entity.namespace))
}

/// Import the catalog found at `paths` (files or directories). Nothing
/// outside `root` is read; without one, each path is its own root (a file's
/// root is its directory).
///
/// # Errors
/// Unreadable paths, a path outside `root`, YAML errors (with the file),
/// malformed entities, duplicate entities, unresolved or ambiguous
/// references, a missing required Location target.
pub fn import(paths: &[PathBuf], root: Option<&Path>) -> Result<Import> {
    let catalog = read::read(paths, root)?;
    let mut by_id: BTreeMap<String, &Sourced> = BTreeMap::new();
    for e in &catalog.entities {
        if let Some(first) = by_id.insert(e.entity.id(), e) {
            bail!(
                "{} is defined in both {} and {}: keep one (names are case-insensitive)",
                e.entity.id(),
                first.file.display(),
                e.file.display()
            );
        }
    }
    let ids: BTreeSet<String> = by_id.keys().cloned().collect();
    let entities: Vec<&Sourced> = by_id.values().copied().collect();
    let mut depends = edges::edges(&entities, &ids)?;
    let mut nodes = Vec::with_capacity(entities.len());
    for (id, e) in &by_id {
        nodes.push(NodeSpec {
            id: id.clone(),
            kind: node_kind(&e.entity.kind, e.entity.spec.spec_type.as_deref()),
            owner: owner(e),
            criticality: criticality(e)?,
            tags: e.entity.tags.iter().cloned().collect(),
            depends_on: depends.remove(id).unwrap_or_default(),
            description: e.entity.description.clone(),
        });
    }
    Ok(Import {
        graph: GraphSpec { version: GRAPH_VERSION, nodes },
        files: catalog.files,
        unmapped: catalog.unmapped,
        skipped: catalog.skipped,
    })
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
