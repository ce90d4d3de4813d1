//! Admission: from a capsule whose signature verified to a [`Grant`] the
//! sandbox can be built from, or a refusal.
//!
//! Checklist (each failure refuses the capsule; nothing is silently trimmed):
//! 1. every real import of the component is declared in the manifest;
//! 2. every declared import is granted by the runner;
//! 3. every requested mount is configured, and write access only where the
//!    config allows writes;
//! 4. every requested environment variable is one the config provides;
//! 5. every requested endpoint is configured, and `wasi:http` is declared
//!    only by a capsule that requests an endpoint;
//! 6. every requested limit is within the runner's ceiling.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::manifest::split_import_version;
use crate::signature::VerifiedCapsule;

/// Resource limits of one run (per phase for time and output).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    // Fields in lexicographic order: the derived serialisation is then
    // already canonical (RFC 8785), which approval statements rely on.
    pub cpu_ms: u64,
    pub max_plan_changes: u64,
    pub memory_mib: u64,
    pub output_kib: u64,
    pub wall_ms: u64,
}

impl Limits {
    /// Conservative defaults for runs that ask for nothing.
    pub const DEFAULT: Limits =
        Limits { memory_mib: 64, cpu_ms: 5_000, wall_ms: 10_000, output_kib: 256, max_plan_changes: 1_000 };
    /// Ceilings when the operator sets none.
    pub const CEILING: Limits =
        Limits { memory_mib: 512, cpu_ms: 60_000, wall_ms: 120_000, output_kib: 4_096, max_plan_changes: 10_000 };
}

/// What the operator's config allows, as the pure check sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ceiling {
    /// Configured mounts: logical name → whether writes may be granted.
    pub mounts: BTreeMap<String, bool>,
    /// Environment variable names the config provides values for.
    pub env: BTreeSet<String>,
    /// Unversioned interfaces the runner may link.
    pub imports: BTreeSet<String>,
    /// Configured endpoints (logical names).
    pub endpoints: BTreeSet<String>,
    pub default_limits: Limits,
    pub max_limits: Limits,
}

/// A granted mount (the runner's config resolves the name to a host path).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantedMount {
    pub name: String,
    pub writable: bool,
}

/// Exactly what one run may use. The sandbox is built from this and nothing else.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    // Lexicographic field order (see `Limits`).
    /// Granted endpoints (logical names; the runner's config resolves them).
    /// Absent from the serialised grant when there are none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<String>,
    pub env: Vec<String>,
    pub imports: BTreeSet<String>,
    pub limits: Limits,
    pub mounts: Vec<GrantedMount>,
}

/// Why admission refused a capsule. Every variant has a stable reason code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AdmissionError {
    #[error(
        "the component imports `{0}`, which the manifest does not declare; declare it in capsule.toml `imports` (and have the operator grant it) or remove the dependency"
    )]
    UndeclaredImport(String),
    #[error(
        "the manifest declares `{0}`, which this runner does not grant; ask the operator to add it to `grant.imports`, or remove it"
    )]
    ImportNotGranted(String),
    #[error(
        "the component imports `{0}`, a version this runner cannot provide (supported: wasi 0.2.x, edge-runner:capsule 0.2.x)"
    )]
    ImportVersion(String),
    #[error("the manifest requests mount `{0}`, which the runner config does not define")]
    MountNotConfigured(String),
    #[error("the manifest requests write access to mount `{0}`, which the runner config allows read-only")]
    MountReadOnly(String),
    #[error("the manifest requests environment variable `{0}`, which the runner config does not provide")]
    EnvNotAllowed(String),
    #[error("the manifest requests endpoint `{0}`, which the runner config does not define (`[endpoints.{0}]`)")]
    EndpointNotConfigured(String),
    #[error(
        "the manifest declares `{0}` but requests no endpoint; HTTP reaches only granted endpoints: declare one in `endpoints`, or remove the import"
    )]
    HttpWithoutEndpoint(String),
    #[error("the manifest asks for {field} = {asked}, above the runner's ceiling of {ceiling}")]
    LimitAboveCeiling { field: &'static str, asked: u64, ceiling: u64 },
}

impl AdmissionError {
    pub fn reason_code(&self) -> &'static str {
        match self {
            AdmissionError::UndeclaredImport(_) => "admission.undeclared_import",
            AdmissionError::ImportNotGranted(_) => "admission.import_not_granted",
            AdmissionError::ImportVersion(_) => "admission.import_version",
            AdmissionError::MountNotConfigured(_) => "admission.mount_not_configured",
            AdmissionError::MountReadOnly(_) => "admission.mount_read_only",
            AdmissionError::EnvNotAllowed(_) => "admission.env_not_allowed",
            AdmissionError::EndpointNotConfigured(_) => "admission.endpoint_not_configured",
            AdmissionError::HttpWithoutEndpoint(_) => "admission.http_without_endpoint",
            AdmissionError::LimitAboveCeiling { .. } => "admission.limit_above_ceiling",
        }
    }
}

/// Proof that a capsule's signature verified and its requests fit the runner.
#[derive(Debug)]
pub struct Admitted {
    capsule: VerifiedCapsule,
    grant: Grant,
    imports: Vec<String>,
}

impl Admitted {
    pub fn capsule(&self) -> &VerifiedCapsule {
        &self.capsule
    }
    pub fn grant(&self) -> &Grant {
        &self.grant
    }
    /// The component's real (versioned) imports.
    pub fn imports(&self) -> &[String] {
        &self.imports
    }
}

/// Admit a verified capsule, given the component's real imports (as the
/// engine reports them, versioned) and the runner's ceiling.
///
/// # Errors
/// The first [`AdmissionError`] in checklist order.
pub fn admit(
    capsule: VerifiedCapsule,
    component_imports: &[String],
    ceiling: &Ceiling,
) -> Result<Admitted, AdmissionError> {
    let grant = resolve_grant(&capsule, component_imports, ceiling)?;
    Ok(Admitted { capsule, grant, imports: component_imports.to_vec() })
}

fn resolve_grant(
    capsule: &VerifiedCapsule,
    component_imports: &[String],
    ceiling: &Ceiling,
) -> Result<Grant, AdmissionError> {
    let m = capsule.file().manifest();
    // 1. real imports ⊆ declared, at a version we can provide.
    for import in component_imports {
        let (iface, version) = split_import_version(import);
        if !m.imports.contains(iface) {
            return Err(AdmissionError::UndeclaredImport(import.clone()));
        }
        let supported = match version {
            Some(v) if iface.starts_with("wasi:") => v.starts_with("0.2."),
            Some(v) if iface.starts_with("edge-runner:") => v.starts_with("0.2."),
            _ => false,
        };
        if !supported {
            return Err(AdmissionError::ImportVersion(import.clone()));
        }
    }
    // 2. declared ⊆ granted.
    if let Some(i) = m.imports.iter().find(|i| !ceiling.imports.contains(*i)) {
        return Err(AdmissionError::ImportNotGranted(i.clone()));
    }
    // 3. mounts.
    let mut mounts = Vec::with_capacity(m.mounts.len());
    for req in &m.mounts {
        match ceiling.mounts.get(&req.name) {
            None => return Err(AdmissionError::MountNotConfigured(req.name.clone())),
            Some(false) if req.writable => {
                return Err(AdmissionError::MountReadOnly(req.name.clone()));
            }
            Some(_) => mounts.push(GrantedMount { name: req.name.clone(), writable: req.writable }),
        }
    }
    // 4. env.
    if let Some(e) = m.env.iter().find(|e| !ceiling.env.contains(*e)) {
        return Err(AdmissionError::EnvNotAllowed(e.clone()));
    }
    // 5. endpoints.
    if let Some(e) = m.endpoints.iter().find(|e| !ceiling.endpoints.contains(*e)) {
        return Err(AdmissionError::EndpointNotConfigured(e.clone()));
    }
    if m.endpoints.is_empty()
        && let Some(i) = m.imports.iter().find(|i| i.starts_with("wasi:http/"))
    {
        return Err(AdmissionError::HttpWithoutEndpoint(i.clone()));
    }
    // 6. limits.
    let (d, c, r) = (&ceiling.default_limits, &ceiling.max_limits, &m.limits);
    let pick = |field: &'static str, asked: Option<u64>, default: u64, max: u64| match asked {
        Some(a) if a > max => Err(AdmissionError::LimitAboveCeiling { field, asked: a, ceiling: max }),
        Some(a) => Ok(a),
        None => Ok(default.min(max)),
    };
    let limits = Limits {
        memory_mib: pick("limits.memory_mib", r.memory_mib, d.memory_mib, c.memory_mib)?,
        cpu_ms: pick("limits.cpu_ms", r.cpu_ms, d.cpu_ms, c.cpu_ms)?,
        wall_ms: pick("limits.wall_ms", r.wall_ms, d.wall_ms, c.wall_ms)?,
        output_kib: pick("limits.output_kib", r.output_kib, d.output_kib, c.output_kib)?,
        max_plan_changes: pick("limits.max_plan_changes", r.max_plan_changes, d.max_plan_changes, c.max_plan_changes)?,
    };
    Ok(Grant { endpoints: m.endpoints.clone(), mounts, env: m.env.clone(), imports: m.imports.clone(), limits })
}
