//! From entity references to `depends_on` edges.
//!
//! In the graph, `a depends_on b` means touching `b` impacts `a`. Every
//! Backstage reference becomes such an edge, pointed so that impact flows
//! from what is touched to what would notice:
//!
//! | reference on entity `e` | edge |
//! | --- | --- |
//! | `dependsOn: t` | `e → t` |
//! | `dependencyOf: t` | `t → e` |
//! | `consumesApis: t` (API) | `e → t` |
//! | `providesApis: t` (API) | `t → e` (the API depends on its provider) |
//! | `apiConsumedBy: t` (on an API) | `t → e` |
//! | `apiProvidedBy: t` (on an API) | `e → t` |
//! | `subcomponentOf: t` | `t → e` (the whole depends on its part) |
//! | `system: t` | `t → e` |
//!
//! The same types in `relations` (`consumesApi`, `providesApi`, `partOf`,
//! `hasPart`, ...) map the same way; other relation types (ownership,
//! membership) are not dependencies and are ignored.
//!
//! Then parts: whoever depends on a subcomponent from outside its parent
//! also depends on the parent (and on the parent's parent), so touching the
//! whole impacts the users of its parts — without the cycle that a
//! part-depends-on-whole edge would create.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Context, Result, bail};

use super::entity::{EntityRef, NODE_KINDS};
use super::read::Sourced;

/// dependent → what it depends on.
pub(super) type Edges = BTreeMap<String, BTreeSet<String>>;

/// Which way a reference points.
#[derive(Clone, Copy)]
enum Dir {
    /// The entity depends on the target.
    Needs,
    /// The target depends on the entity.
    NeededBy,
}

/// How one reference field (or relation type) maps.
struct Field {
    name: &'static str,
    /// The kind of a reference that names none; `None`: look for a Component
    /// or a Resource (`dependsOn` has no default kind in Backstage).
    default_kind: Option<&'static str>,
    dir: Dir,
    /// The entity is a part of the target (Needs: the target is a part).
    part: bool,
}

const fn field(name: &'static str, default_kind: Option<&'static str>, dir: Dir) -> Field {
    Field { name, default_kind, dir, part: false }
}

const DEPENDS_ON: Field = field("dependsOn", None, Dir::Needs);
const DEPENDENCY_OF: Field = field("dependencyOf", None, Dir::NeededBy);
const CONSUMES_APIS: Field = field("consumesApis", Some("api"), Dir::Needs);
const PROVIDES_APIS: Field = field("providesApis", Some("api"), Dir::NeededBy);
const API_PROVIDED_BY: Field = field("apiProvidedBy", Some("component"), Dir::Needs);
const API_CONSUMED_BY: Field = field("apiConsumedBy", Some("component"), Dir::NeededBy);
const SUBCOMPONENT_OF: Field = Field { part: true, ..field("subcomponentOf", Some("component"), Dir::NeededBy) };
const SYSTEM: Field = field("system", Some("system"), Dir::NeededBy);

/// The relation types that are dependencies, and how each maps.
const RELATIONS: [Field; 8] = [
    field("dependsOn", None, Dir::Needs),
    field("dependencyOf", None, Dir::NeededBy),
    field("consumesApi", Some("api"), Dir::Needs),
    field("providesApi", Some("api"), Dir::NeededBy),
    field("apiProvidedBy", Some("component"), Dir::Needs),
    field("apiConsumedBy", Some("component"), Dir::NeededBy),
    Field { part: true, ..field("partOf", Some("component"), Dir::NeededBy) },
    Field { part: true, ..field("hasPart", Some("component"), Dir::Needs) },
];

struct Builder<'a> {
    ids: &'a BTreeSet<String>,
    edges: Edges,
    /// part → the components it is directly part of.
    wholes: BTreeMap<String, BTreeSet<String>>,
}

impl Builder<'_> {
    /// Resolve `reference`, written in `field` of `e`, to a node id.
    fn resolve(&self, e: &Sourced, field: &str, reference: &str, default_kind: Option<&str>) -> Result<String> {
        let at = || format!("{}: {}: {field} `{reference}`", e.file.display(), e.entity.id());
        let r = EntityRef::parse(reference).with_context(at)?;
        let namespace = r.namespace.as_deref().unwrap_or(&e.entity.namespace);
        let kinds: Vec<&str> = match (r.kind.as_deref(), default_kind) {
            (Some(k), _) => vec![k],
            (None, Some(k)) => vec![k],
            (None, None) => vec!["component", "resource"],
        };
        if let Some(k) = kinds.iter().find(|k| !NODE_KINDS.contains(k)) {
            bail!(
                "{} names a {k}, which is not a graph node (only API, Component, Resource and System are): fix the reference",
                at()
            );
        }
        let candidates: Vec<String> = kinds.iter().map(|k| r.full(k, namespace)).collect();
        let found: Vec<&String> = candidates.iter().filter(|id| self.ids.contains(*id)).collect();
        match found.as_slice() {
            [one] => Ok((*one).clone()),
            [] => bail!(
                "{} ({}) is not in the catalog: add that entity to the catalog (or to a Location the import follows), or fix the reference",
                at(),
                candidates.join(" or ")
            ),
            _ => bail!(
                "{} is ambiguous: both {} exist; write the kind, e.g. `{}`",
                at(),
                candidates.join(" and "),
                candidates[0]
            ),
        }
    }

    /// Add the edge for `reference`, written in `label` (a spec field, or a relation) of `e`.
    fn add(&mut self, e: &Sourced, f: &Field, label: &str, reference: &str) -> Result<()> {
        let target = self.resolve(e, label, reference, f.default_kind)?;
        let this = e.entity.id();
        let (dependent, dependency) = match f.dir {
            Dir::Needs => (this, target),
            Dir::NeededBy => (target, this),
        };
        if dependent == dependency {
            return Ok(()); // Touching a node always impacts itself.
        }
        // A part and its whole are both components; `partOf` a System or a
        // Domain is membership, which `system` (or nothing) already maps.
        if f.part && dependent.starts_with("component:") && dependency.starts_with("component:") {
            self.wholes.entry(dependency.clone()).or_default().insert(dependent.clone());
        }
        self.edges.entry(dependent).or_default().insert(dependency);
        Ok(())
    }

    fn entity(&mut self, e: &Sourced) -> Result<()> {
        let s = &e.entity.spec;
        let lists = [
            (&DEPENDS_ON, &s.depends_on),
            (&DEPENDENCY_OF, &s.dependency_of),
            (&CONSUMES_APIS, &s.consumes_apis),
            (&PROVIDES_APIS, &s.provides_apis),
            (&API_PROVIDED_BY, &s.api_provided_by),
            (&API_CONSUMED_BY, &s.api_consumed_by),
        ];
        for (f, refs) in lists {
            for r in refs {
                self.add(e, f, f.name, r)?;
            }
        }
        for (f, r) in [(&SUBCOMPONENT_OF, &s.subcomponent_of), (&SYSTEM, &s.system)] {
            if let Some(r) = r {
                self.add(e, f, f.name, r)?;
            }
        }
        for rel in &e.entity.relations {
            let Some(f) = RELATIONS.iter().find(|f| f.name.eq_ignore_ascii_case(&rel.relation_type)) else {
                continue;
            };
            let Some(target) = &rel.target_ref else {
                bail!(
                    "{}: {}: relation `{}` has no targetRef: re-export the entity, or remove the relation",
                    e.file.display(),
                    e.entity.id(),
                    rel.relation_type
                );
            };
            // `partOf`/`hasPart` also link Systems to Domains, which are not nodes.
            let kind = EntityRef::parse(target).ok().and_then(|r| r.kind);
            if f.part && kind.is_some_and(|k| !NODE_KINDS.contains(&k.as_str())) {
                continue;
            }
            self.add(e, f, &format!("relation {}", f.name), target)?;
        }
        Ok(())
    }

    /// Every component `part` is transitively part of.
    fn wholes_of(&self, part: &str) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        let mut todo = vec![part.to_owned()];
        while let Some(p) = todo.pop() {
            for w in self.wholes.get(&p).into_iter().flatten() {
                if w != part && out.insert(w.clone()) {
                    todo.push(w.clone());
                }
            }
        }
        out
    }

    /// Whoever depends on a part from outside its whole depends on the whole.
    fn propagate_parts(&mut self) {
        let pairs: Vec<(String, String)> =
            self.edges.iter().flat_map(|(d, deps)| deps.iter().map(move |s| (d.clone(), s.clone()))).collect();
        for (dependent, part) in pairs {
            let wholes = self.wholes_of(&part);
            if wholes.is_empty() {
                continue;
            }
            let inside = self.wholes_of(&dependent);
            for w in wholes {
                if w != dependent && !inside.contains(&w) {
                    self.edges.entry(dependent.clone()).or_default().insert(w);
                }
            }
        }
    }
}

/// The `depends_on` edges of the catalog's entities (`ids`: every node id).
///
/// # Errors
/// A reference that is malformed, names an entity that is not in the catalog
/// (or is ambiguous), or names a kind that is not a node. Each error names
/// the file, the entity, the field and the reference.
pub(super) fn edges(entities: &[&Sourced], ids: &BTreeSet<String>) -> Result<Edges> {
    let mut b = Builder { ids, edges: Edges::new(), wholes: BTreeMap::new() };
    for e in entities {
        b.entity(e)?;
    }
    b.propagate_parts();
    Ok(b.edges)
}
