//! The capsule manifest: what a capsule is, what it needs, who made it and why.
//!
//! Authors write `capsule.toml`; `edge-runner capsule pack` pins the
//! component's digest into it and stores it as canonical JSON. The capsule
//! digest is the SHA-256 of those canonical bytes, so it covers the component
//! too. Parsing is strict: unknown fields, non-canonical bytes, bad names and
//! oversized values are refused, never ignored.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::canonical::{self, CanonicalError};
use crate::digest::Sha256Digest;
use crate::paths::is_logical_name;

/// The manifest schema identifier this runner understands.
pub const MANIFEST_SCHEMA: &str = "https://edge-runner.dev/capsule-manifest/v1";
/// Largest canonical manifest accepted.
pub const MAX_MANIFEST_BYTES: usize = 64 * 1024;
const MAX_PARAMS: usize = 64;
const MAX_PARAM_VALUE: usize = 4096;
const MAX_MOUNTS: usize = 16;
const MAX_LIST: usize = 64;
const MAX_TEXT: usize = 4096;

/// Diagnostic capsules only read; remediation capsules may write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    Diagnostic,
    Remediation,
}

/// The component a manifest pins.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComponentRef {
    pub sha256: Sha256Digest,
    pub size: u64,
}

/// A mount requested by logical name; the operator's config maps it to a host path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MountRequest {
    pub name: String,
    /// Write access during `apply` (always read-only during `plan` and `verify`).
    #[serde(default)]
    pub writable: bool,
}

/// Resource limits a capsule asks for. Each must be within the runner's
/// ceilings; absent values take the runner's defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mib: Option<u64>,
    /// CPU time per phase, enforced by epoch interruption.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_ms: Option<u64>,
    /// Wall time per phase, also while blocked in a host call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wall_ms: Option<u64>,
    /// Captured stdout+stderr per phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_kib: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_plan_changes: Option<u64>,
}

/// Where the capsule came from. Recorded in evidence and shown to approvers;
/// never used to derive risk.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Provenance {
    /// The agent that built the capsule (e.g. a SPIFFE ID).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_ref: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rationale: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ticket: Option<String>,
}

/// A validated manifest. Build it with [`Manifest::from_canonical_json`] or
/// [`Manifest::from_authoring_toml`]; both check every field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub schema: String,
    pub name: String,
    pub version: String,
    pub kind: Kind,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    pub component: ComponentRef,
    /// Parameters handed to every export, signed with the capsule.
    #[serde(default)]
    pub params: BTreeMap<String, String>,
    #[serde(default)]
    pub mounts: Vec<MountRequest>,
    /// Network endpoints by logical name (none can be granted by this runner yet).
    #[serde(default)]
    pub endpoints: Vec<String>,
    /// Environment variable names the capsule reads; values come from the runner config.
    #[serde(default)]
    pub env: Vec<String>,
    /// WIT interfaces the component imports, without version
    /// (e.g. `wasi:filesystem/types`). The real imports must be a subset.
    #[serde(default)]
    pub imports: BTreeSet<String>,
    #[serde(default)]
    pub limits: LimitRequest,
    #[serde(default)]
    pub provenance: Provenance,
}

/// Authoring form (`capsule.toml`): the manifest without `schema` and `component`,
/// which `pack` fills in.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuthoringManifest {
    name: String,
    version: String,
    kind: Kind,
    #[serde(default)]
    description: String,
    #[serde(default)]
    params: BTreeMap<String, String>,
    #[serde(default)]
    mounts: Vec<MountRequest>,
    #[serde(default)]
    endpoints: Vec<String>,
    #[serde(default)]
    env: Vec<String>,
    #[serde(default)]
    imports: BTreeSet<String>,
    #[serde(default)]
    limits: LimitRequest,
    #[serde(default)]
    provenance: Provenance,
}

/// Why a manifest was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ManifestError {
    #[error("manifest is {0} bytes; the limit is {MAX_MANIFEST_BYTES}")]
    TooLarge(usize),
    #[error("manifest is not valid JSON for this schema: {0}")]
    Json(#[source] serde_json::Error),
    #[error("capsule.toml is invalid: {0}")]
    Toml(#[source] toml::de::Error),
    #[error("manifest bytes are not canonical JSON (RFC 8785); repack it with `edge-runner capsule pack`")]
    NotCanonical,
    #[error("manifest schema `{0}` is not supported; expected `{MANIFEST_SCHEMA}`")]
    Schema(String),
    #[error("manifest field `{field}` is invalid: {reason}")]
    Field { field: String, reason: String },
    #[error(transparent)]
    Canonical(#[from] CanonicalError),
}

impl ManifestError {
    fn field(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Field { field: field.into(), reason: reason.into() }
    }
}

impl Manifest {
    /// Parse and validate the canonical JSON stored in a capsule file.
    ///
    /// # Errors
    /// Refuses oversized, non-canonical, unknown-field and invalid manifests.
    pub fn from_canonical_json(bytes: &[u8]) -> Result<Self, ManifestError> {
        if bytes.len() > MAX_MANIFEST_BYTES {
            return Err(ManifestError::TooLarge(bytes.len()));
        }
        let m: Manifest = serde_json::from_slice(bytes).map_err(ManifestError::Json)?;
        m.validate()?;
        // Written straight from `m` and compared (the `Value` path decides
        // when that differs or gives up), as the verifier checks records.
        if !canonical::is_canonical_form_of(&m, bytes)? {
            return Err(ManifestError::NotCanonical);
        }
        Ok(m)
    }

    /// Build a manifest from the authoring TOML and the component it pins.
    ///
    /// # Errors
    /// Refuses unknown fields and invalid values, naming the field.
    pub fn from_authoring_toml(text: &str, component: ComponentRef) -> Result<Self, ManifestError> {
        if text.len() > MAX_MANIFEST_BYTES {
            return Err(ManifestError::TooLarge(text.len()));
        }
        let a: AuthoringManifest = toml::from_str(text).map_err(ManifestError::Toml)?;
        let m = Manifest {
            schema: MANIFEST_SCHEMA.to_owned(),
            name: a.name,
            version: a.version,
            kind: a.kind,
            description: a.description,
            component,
            params: a.params,
            mounts: a.mounts,
            endpoints: a.endpoints,
            env: a.env,
            imports: a.imports,
            limits: a.limits,
            provenance: a.provenance,
        };
        m.validate()?;
        Ok(m)
    }

    /// The canonical JSON bytes (what is stored, hashed and signed).
    ///
    /// # Errors
    /// Only if the manifest somehow holds a float, which validation prevents.
    pub fn to_canonical_json(&self) -> Result<Vec<u8>, ManifestError> {
        let bytes = canonical::to_canonical_vec(self)?;
        if bytes.len() > MAX_MANIFEST_BYTES {
            return Err(ManifestError::TooLarge(bytes.len()));
        }
        Ok(bytes)
    }

    /// The capsule digest: SHA-256 of the canonical manifest.
    ///
    /// # Errors
    /// As [`Manifest::to_canonical_json`].
    pub fn digest(&self) -> Result<Sha256Digest, ManifestError> {
        Ok(Sha256Digest::of(&self.to_canonical_json()?))
    }

    /// Mounts requested with write access.
    pub fn writable_mounts(&self) -> impl Iterator<Item = &MountRequest> {
        self.mounts.iter().filter(|m| m.writable)
    }

    fn validate(&self) -> Result<(), ManifestError> {
        if self.schema != MANIFEST_SCHEMA {
            return Err(ManifestError::Schema(self.schema.clone()));
        }
        if !is_logical_name(&self.name) {
            return Err(ManifestError::field("name", "use 1-64 characters of [A-Za-z0-9._-]"));
        }
        if self.version.is_empty() || self.version.len() > 64 || self.version.chars().any(char::is_control) {
            return Err(ManifestError::field("version", "must be 1-64 printable characters"));
        }
        text("description", &self.description)?;
        if self.params.len() > MAX_PARAMS {
            return Err(ManifestError::field("params", format!("at most {MAX_PARAMS} parameters")));
        }
        for (k, v) in &self.params {
            if !is_logical_name(k) {
                return Err(ManifestError::field(format!("params.{k}"), "parameter names use [A-Za-z0-9._-]"));
            }
            if v.len() > MAX_PARAM_VALUE {
                return Err(ManifestError::field(
                    format!("params.{k}"),
                    format!("longer than {MAX_PARAM_VALUE} bytes"),
                ));
            }
        }
        if self.mounts.len() > MAX_MOUNTS {
            return Err(ManifestError::field("mounts", format!("at most {MAX_MOUNTS} mounts")));
        }
        let mut seen = BTreeSet::new();
        for m in &self.mounts {
            if !is_logical_name(&m.name) {
                return Err(ManifestError::field(
                    "mounts.name",
                    format!("`{}` is not a logical name ([A-Za-z0-9._-], not a host path)", m.name),
                ));
            }
            if !seen.insert(&m.name) {
                return Err(ManifestError::field("mounts", format!("mount `{}` listed twice", m.name)));
            }
        }
        if self.kind == Kind::Diagnostic && self.mounts.iter().any(|m| m.writable) {
            return Err(ManifestError::field("mounts", "a diagnostic capsule cannot request a writable mount"));
        }
        unique_names("endpoints", &self.endpoints, is_logical_name)?;
        unique_names("env", &self.env, is_env_name)?;
        if self.imports.len() > MAX_LIST {
            return Err(ManifestError::field("imports", format!("at most {MAX_LIST} interfaces")));
        }
        for i in &self.imports {
            if !is_interface_name(i) {
                return Err(ManifestError::field(
                    "imports",
                    format!("`{i}` is not an unversioned interface name like `wasi:filesystem/types`"),
                ));
            }
        }
        let l = &self.limits;
        for (name, v) in [
            ("limits.memory_mib", l.memory_mib),
            ("limits.cpu_ms", l.cpu_ms),
            ("limits.wall_ms", l.wall_ms),
            ("limits.output_kib", l.output_kib),
            ("limits.max_plan_changes", l.max_plan_changes),
        ] {
            if v == Some(0) {
                return Err(ManifestError::field(name, "must be greater than zero"));
            }
        }
        let p = &self.provenance;
        for (name, v) in [
            ("provenance.agent", &p.agent),
            ("provenance.model", &p.model),
            ("provenance.source_ref", &p.source_ref),
            ("provenance.rationale", &p.rationale),
            ("provenance.ticket", &p.ticket),
        ] {
            if let Some(v) = v {
                text(name, v)?;
            }
        }
        Ok(())
    }
}

fn text(field: &str, v: &str) -> Result<(), ManifestError> {
    if v.len() > MAX_TEXT {
        return Err(ManifestError::field(field, format!("longer than {MAX_TEXT} bytes")));
    }
    Ok(())
}

fn unique_names(field: &str, names: &[String], valid: fn(&str) -> bool) -> Result<(), ManifestError> {
    if names.len() > MAX_LIST {
        return Err(ManifestError::field(field, format!("at most {MAX_LIST} entries")));
    }
    let mut seen = BTreeSet::new();
    for n in names {
        if !valid(n) {
            return Err(ManifestError::field(field, format!("`{n}` is not a valid name")));
        }
        if !seen.insert(n) {
            return Err(ManifestError::field(field, format!("`{n}` listed twice")));
        }
    }
    Ok(())
}

/// `[A-Za-z_][A-Za-z0-9_]*`, at most 64 bytes.
pub fn is_env_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 64
        && (n.as_bytes()[0].is_ascii_alphabetic() || n.as_bytes()[0] == b'_')
        && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// `namespace:package/interface` with lowercase kebab-case parts, no version.
pub fn is_interface_name(n: &str) -> bool {
    let kebab = |s: &str| {
        !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    };
    match n.split_once(':') {
        Some((ns, rest)) => match rest.split_once('/') {
            Some((pkg, iface)) => kebab(ns) && kebab(pkg) && kebab(iface),
            None => false,
        },
        None => false,
    }
}

/// Split a component import name like `wasi:io/streams@0.2.12` into the
/// unversioned interface name and the version (if any).
pub fn split_import_version(name: &str) -> (&str, Option<&str>) {
    match name.split_once('@') {
        Some((iface, ver)) => (iface, Some(ver)),
        None => (name, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn component() -> ComponentRef {
        ComponentRef { sha256: Sha256Digest::of(b"wasm"), size: 4 }
    }

    const TOML: &str = r#"
name = "config-drift"
version = "0.1.0"
kind = "remediation"
imports = ["wasi:filesystem/types", "wasi:cli/stdout"]
[params]
key = "server.port"
[[mounts]]
name = "app-config"
writable = true
[limits]
memory_mib = 32
[provenance]
agent = "spiffe://bank.example/agent/fixer"
"#;

    #[test]
    fn toml_to_canonical_and_back() {
        let m = Manifest::from_authoring_toml(TOML, component()).unwrap();
        let bytes = m.to_canonical_json().unwrap();
        let back = Manifest::from_canonical_json(&bytes).unwrap();
        assert_eq!(back, m);
        assert_eq!(back.digest().unwrap(), Sha256Digest::of(&bytes));
        // Parsed with its digest: the same manifest, the same digest; and
        // only from canonical bytes.
        let digested = DigestedManifest::from_canonical_json(&bytes).unwrap();
        assert_eq!((digested.manifest(), digested.digest()), (&m, m.digest().unwrap()));
        let pretty = serde_json::to_vec_pretty(&m).unwrap();
        assert!(matches!(DigestedManifest::from_canonical_json(&pretty), Err(ManifestError::NotCanonical)));
        // The check takes the direct writer's path (no `Value`) for a
        // manifest, and compact JSON in the struct's field order (not the
        // keys' order) is still refused.
        assert_eq!(canonical::direct_canonical_vec(&m).as_deref(), Some(&bytes[..]));
        let compact = serde_json::to_vec(&m).unwrap();
        assert_ne!(compact, bytes);
        assert!(matches!(Manifest::from_canonical_json(&compact), Err(ManifestError::NotCanonical)));
    }

    #[test]
    fn refuses_non_canonical_and_unknown_fields() {
        let m = Manifest::from_authoring_toml(TOML, component()).unwrap();
        let mut v: serde_json::Value = serde_json::from_slice(&m.to_canonical_json().unwrap()).unwrap();
        let pretty = serde_json::to_vec_pretty(&v).unwrap();
        assert!(matches!(Manifest::from_canonical_json(&pretty), Err(ManifestError::NotCanonical)));
        v["surprise"] = serde_json::json!(1);
        let bytes = canonical::to_canonical_vec(&v).unwrap();
        assert!(matches!(Manifest::from_canonical_json(&bytes), Err(ManifestError::Json(_))));
        let bad = TOML.replace("kind = \"remediation\"", "kind = \"remediation\"\nhost_path = \"/etc\"");
        assert!(matches!(Manifest::from_authoring_toml(&bad, component()), Err(ManifestError::Toml(_))));
    }

    #[test]
    fn refuses_bad_fields() {
        let cases = [
            (TOML.replace("name = \"app-config\"", "name = \"/etc\""), "mounts.name"),
            (TOML.replace("kind = \"remediation\"", "kind = \"diagnostic\""), "mounts"),
            (TOML.replace("\"wasi:cli/stdout\"", "\"wasi:cli/stdout@0.2.0\""), "imports"),
            (TOML.replace("memory_mib = 32", "memory_mib = 0"), "limits.memory_mib"),
            (TOML.replace("name = \"config-drift\"", "name = \"../x\""), "name"),
        ];
        for (text, field) in cases {
            match Manifest::from_authoring_toml(&text, component()) {
                Err(ManifestError::Field { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{field}: {other:?}"),
            }
        }
    }

    #[test]
    fn interface_names() {
        assert!(is_interface_name("wasi:filesystem/types"));
        assert!(is_interface_name("edge-runner:capsule/host"));
        assert!(!is_interface_name("wasi:filesystem"));
        assert!(!is_interface_name("wasi:io/streams@0.2.0"));
        assert_eq!(split_import_version("wasi:io/streams@0.2.12"), ("wasi:io/streams", Some("0.2.12")));
    }
}

/// A manifest parsed from its canonical bytes, and their SHA-256 — the
/// manifest's digest (the capsule digest), known without serialising it
/// again. Made only by parsing canonical bytes.
#[derive(Debug, Clone)]
pub struct DigestedManifest {
    manifest: Manifest,
    digest: Sha256Digest,
}

impl DigestedManifest {
    /// As [`Manifest::from_canonical_json`], keeping the bytes' digest.
    ///
    /// # Errors
    /// As [`Manifest::from_canonical_json`].
    pub fn from_canonical_json(bytes: &[u8]) -> Result<Self, ManifestError> {
        let manifest = Manifest::from_canonical_json(bytes)?;
        Ok(Self { manifest, digest: Sha256Digest::of(bytes) })
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The manifest's digest: the SHA-256 of its canonical bytes.
    pub fn digest(&self) -> Sha256Digest {
        self.digest
    }
}
