//! One YAML document of a catalog: is it a Backstage entity at all, and if so
//! the parts of it the importer maps. No I/O here: the reader hands in parsed
//! documents and adds the file name to any error.

use std::collections::BTreeMap;
use std::fmt;

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use serde_yaml_ng::{Mapping, Value};

/// Entity kinds that become graph nodes (lowercase, as in node ids).
pub(super) const NODE_KINDS: [&str; 4] = ["api", "component", "resource", "system"];

/// What a YAML document turned out to be.
#[derive(Debug)]
pub(super) enum Document {
    /// An empty document (a stray `---`).
    Empty,
    /// Not a Backstage entity (an OpenAPI spec, a JSON schema, a Kubernetes
    /// manifest, ...): why, for the list of skipped documents.
    NotEntity(String),
    /// A Backstage entity of a kind the graph does not map (Group, User,
    /// Domain, Template, ...), by its canonical kind name.
    Unmapped(String),
    /// A Location: where else to read.
    Location(Location),
    /// An entity that becomes a node.
    Node(Box<Entity>),
}

/// A `Location` entity.
#[derive(Debug)]
pub(super) struct Location {
    pub name: String,
    /// `spec.type`, if given (`file`, `url`, ...).
    pub source_type: Option<String>,
    /// `spec.target` and `spec.targets`, as written.
    pub targets: Vec<String>,
    /// `spec.presence: optional`: a missing target is skipped rather than an error.
    pub optional: bool,
}

/// An entity that becomes a graph node, names lowercased.
#[derive(Debug)]
pub(super) struct Entity {
    /// `api`, `component`, `resource` or `system`.
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub description: String,
    pub tags: Vec<String>,
    pub annotations: BTreeMap<String, String>,
    pub spec: Spec,
    /// `relations`, present in entities exported from a running catalog.
    pub relations: Vec<Relation>,
}

impl Entity {
    /// The node id: `kind:namespace/name`.
    pub fn id(&self) -> String {
        format!("{}:{}/{}", self.kind, self.namespace, self.name)
    }
}

/// The `spec` fields the importer reads (the same names serve every node kind;
/// a kind that does not use a field simply leaves it empty).
#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub(super) struct Spec {
    #[serde(rename = "type")]
    pub spec_type: Option<String>,
    pub owner: Option<String>,
    pub system: Option<String>,
    pub subcomponent_of: Option<String>,
    pub depends_on: Vec<String>,
    pub dependency_of: Vec<String>,
    pub provides_apis: Vec<String>,
    pub consumes_apis: Vec<String>,
    /// Not in the Backstage descriptor format (where these are relations
    /// only), but accepted on API entities by tools that flatten relations.
    pub api_provided_by: Vec<String>,
    pub api_consumed_by: Vec<String>,
}

/// One entry of `relations`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Relation {
    #[serde(rename = "type")]
    pub relation_type: String,
    #[serde(default)]
    pub target_ref: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct LocationSpec {
    #[serde(rename = "type")]
    source_type: Option<String>,
    target: Option<String>,
    targets: Vec<String>,
    presence: Option<String>,
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

/// A parsed entity reference `[kind:][namespace/]name`, lowercased.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct EntityRef {
    pub kind: Option<String>,
    pub namespace: Option<String>,
    pub name: String,
}

impl EntityRef {
    /// Parse a string reference. Backstage refs are case-insensitive, so the
    /// parts are lowercased.
    ///
    /// # Errors
    /// An empty part, or whitespace inside the reference.
    pub fn parse(reference: &str) -> Result<Self> {
        let r = reference.trim().to_lowercase();
        let (kind, rest) = match r.split_once(':') {
            Some((k, rest)) => (Some(k.to_owned()), rest),
            None => (None, r.as_str()),
        };
        let (namespace, name) = match rest.split_once('/') {
            Some((ns, name)) => (Some(ns.to_owned()), name.to_owned()),
            None => (None, rest.to_owned()),
        };
        let parts = [kind.as_deref(), namespace.as_deref(), Some(name.as_str())];
        if parts.iter().flatten().any(|p| p.is_empty() || p.contains(char::is_whitespace) || p.contains(['/', ':'])) {
            bail!("`{reference}` is not an entity reference: write it as [kind:][namespace/]name");
        }
        Ok(Self { kind, namespace, name })
    }

    /// The full reference with `kind` and `namespace` filled in where the
    /// reference leaves them out.
    pub fn full(&self, kind: &str, namespace: &str) -> String {
        format!(
            "{}:{}/{}",
            self.kind.as_deref().unwrap_or(kind),
            self.namespace.as_deref().unwrap_or(namespace),
            self.name
        )
    }
}

impl fmt::Display for EntityRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(k) = &self.kind {
            write!(f, "{k}:")?;
        }
        if let Some(ns) = &self.namespace {
            write!(f, "{ns}/")?;
        }
        f.write_str(&self.name)
    }
}

/// Backstage's own entities have an `apiVersion` in the `backstage.io`
/// group (`backstage.io/v1alpha1`, `scaffolder.backstage.io/v1beta3`, ...).
fn is_backstage_api_version(v: &str) -> bool {
    v.split_once('/').is_some_and(|(group, _)| group == "backstage.io" || group.ends_with(".backstage.io"))
}

/// The usual spelling of a kind, for counts ("Group", not "group").
fn canonical_kind(kind: &str) -> String {
    const KNOWN: [&str; 10] =
        ["API", "Component", "Domain", "Group", "Location", "Resource", "System", "Template", "User", "Environment"];
    KNOWN.iter().find(|k| k.eq_ignore_ascii_case(kind)).map_or_else(|| kind.to_owned(), |k| (*k).to_owned())
}

/// A name or namespace as it may appear in a node id.
fn id_part(what: &str, value: &str) -> Result<String> {
    let v = value.trim().to_lowercase();
    if v.is_empty() || v.contains(|c: char| c.is_whitespace() || c.is_control() || c == ':' || c == '/') {
        bail!("metadata.{what} `{value}` is not a valid entity {what}: use letters, digits, `-`, `_` and `.`");
    }
    Ok(v)
}

/// Decide what a parsed YAML document is.
///
/// A document is a Backstage entity when its `apiVersion` is in the
/// `backstage.io` group. A document with another `apiVersion`, or with
/// neither `apiVersion` nor `kind`/`metadata`, is not an entity and is
/// skipped. A document that has `kind` and `metadata` but no `apiVersion`
/// looks like an entity with a typo, and is an error rather than a silent
/// skip: a dropped entity would shrink blast radii.
///
/// # Errors
/// An entity whose envelope or mapped fields are malformed.
pub(super) fn classify(value: Value) -> Result<Document> {
    let Value::Mapping(map) = value else {
        return Ok(if value.is_null() {
            Document::Empty
        } else {
            Document::NotEntity("not a Backstage entity (not a mapping)".into())
        });
    };
    let entity_shaped = map.contains_key("kind") && map.contains_key("metadata");
    match map.get("apiVersion") {
        Some(Value::String(v)) if is_backstage_api_version(v) => {}
        Some(Value::String(v)) => {
            let kind = map.get("kind").and_then(Value::as_str).unwrap_or("?");
            return Ok(Document::NotEntity(format!("not a Backstage entity (apiVersion `{v}`, kind `{kind}`)")));
        }
        Some(_) if entity_shaped => bail!("apiVersion must be a string such as `backstage.io/v1alpha1`"),
        None if entity_shaped => {
            bail!("has `kind` and `metadata` but no `apiVersion`: add `apiVersion: backstage.io/v1alpha1`")
        }
        _ => return Ok(Document::NotEntity("not a Backstage entity (no apiVersion and kind)".into())),
    }
    entity(map)
}

fn entity(mut map: Mapping) -> Result<Document> {
    let kind = match map.get("kind") {
        Some(Value::String(k)) if !k.trim().is_empty() => k.trim().to_owned(),
        _ => bail!("an entity needs a `kind` (Component, API, Resource, System, Location, ...)"),
    };
    let metadata = map.remove("metadata").unwrap_or(Value::Null);
    let name = metadata.get("name").and_then(Value::as_str).map(str::to_owned);
    let label = format!("{kind} `{}`", name.as_deref().unwrap_or("?"));
    let Some(name) = name else {
        bail!("{kind} entity has no metadata.name: every entity needs one");
    };
    let lower = kind.to_lowercase();
    let spec = match map.remove("spec") {
        None | Some(Value::Null) => Value::Mapping(Mapping::new()),
        Some(s) => s,
    };
    if lower == "location" {
        let s: LocationSpec = serde_yaml_ng::from_value(spec).with_context(|| format!("{label}: malformed spec"))?;
        let optional = match s.presence.as_deref().map(str::to_lowercase).as_deref() {
            None | Some("required") => false,
            Some("optional") => true,
            Some(other) => bail!("{label}: spec.presence `{other}` is neither `required` nor `optional`"),
        };
        return Ok(Document::Location(Location {
            name,
            source_type: s.source_type.map(|t| t.to_lowercase()),
            targets: s.target.into_iter().chain(s.targets).collect(),
            optional,
        }));
    }
    if !NODE_KINDS.contains(&lower.as_str()) {
        return Ok(Document::Unmapped(canonical_kind(&kind)));
    }
    let metadata: Metadata =
        serde_yaml_ng::from_value(metadata).with_context(|| format!("{label}: malformed metadata"))?;
    let spec: Spec = serde_yaml_ng::from_value(spec).with_context(|| format!("{label}: malformed spec"))?;
    let relations: Vec<Relation> = match map.remove("relations") {
        None | Some(Value::Null) => Vec::new(),
        Some(r) => serde_yaml_ng::from_value(r).with_context(|| format!("{label}: malformed relations"))?,
    };
    Ok(Document::Node(Box::new(Entity {
        kind: lower,
        namespace: id_part("namespace", metadata.namespace.as_deref().unwrap_or("default"))
            .with_context(|| label.clone())?,
        name: id_part("name", &metadata.name).with_context(|| label.clone())?,
        description: metadata.description.unwrap_or_default(),
        tags: metadata.tags.iter().map(|t| t.to_lowercase()).collect(),
        annotations: metadata.annotations,
        spec,
        relations,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(text: &str) -> Result<Document> {
        classify(serde_yaml_ng::from_str(text).unwrap())
    }

    #[test]
    fn references_take_defaults_only_where_left_out() {
        let r = EntityRef::parse(" API:Payments/Ledger ").unwrap();
        assert_eq!(r.full("component", "default"), "api:payments/ledger");
        let r = EntityRef::parse("ledger").unwrap();
        assert_eq!(r.full("api", "billing"), "api:billing/ledger");
        assert_eq!(r.to_string(), "ledger");
        for bad in ["", "component:", ":x", "a/b/c", "ns/", "two words", "a:b:c"] {
            assert!(EntityRef::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn documents_are_entities_skips_or_errors() {
        assert!(matches!(doc("openapi: 3.0.0\ninfo: {title: x}\n").unwrap(), Document::NotEntity(_)));
        assert!(matches!(doc("$schema: http://json-schema.org/draft-07/schema#\n").unwrap(), Document::NotEntity(_)));
        assert!(matches!(doc("- a\n- b\n").unwrap(), Document::NotEntity(_)));
        assert!(matches!(doc("~\n").unwrap(), Document::Empty));
        let k8s = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\n";
        assert!(matches!(doc(k8s).unwrap(), Document::NotEntity(r) if r.contains("apps/v1")));
        let template =
            "apiVersion: scaffolder.backstage.io/v1beta3\nkind: Template\nmetadata: {name: t}\nspec: {steps: 3}\n";
        assert!(matches!(doc(template).unwrap(), Document::Unmapped(k) if k == "Template"));
        // Entity-shaped but broken: errors, never skips.
        assert!(doc("kind: Component\nmetadata: {name: x}\n").unwrap_err().to_string().contains("apiVersion"));
        let no_name = "apiVersion: backstage.io/v1alpha1\nkind: Component\nmetadata: {}\n";
        assert!(doc(no_name).unwrap_err().to_string().contains("metadata.name"));
        let bad_spec =
            "apiVersion: backstage.io/v1alpha1\nkind: Component\nmetadata: {name: x}\nspec: {dependsOn: 3}\n";
        assert!(format!("{:#}", doc(bad_spec).unwrap_err()).contains("Component `x`: malformed spec"));
        let bad_name = "apiVersion: backstage.io/v1alpha1\nkind: Resource\nmetadata: {name: 'a b'}\n";
        assert!(format!("{:#}", doc(bad_name).unwrap_err()).contains("not a valid entity name"));
        let presence =
            "apiVersion: backstage.io/v1alpha1\nkind: Location\nmetadata: {name: l}\nspec: {presence: maybe}\n";
        assert!(doc(presence).unwrap_err().to_string().contains("presence"));
    }
}
