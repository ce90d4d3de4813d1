//! What the sandbox runs, and on what: a capsule's pre-linked component and
//! the host side of its grant, resolved once, and carried by the proof
//! values that allow each phase. The sandbox takes the component and every
//! mount's host path *from* these values, never beside them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use edge_core::Sha256Digest;
use edge_core::admission::{Admitted, Grant};
use edge_core::authorize::Authorized;

use super::egress::Gate;
use super::{CapsulePre, HostState, PhaseInput, PhaseMount, SandboxError};
use crate::config::endpoints::EndpointConfig;

/// A capsule ready to run: its pre-linked component and, from the config,
/// each granted mount's host path and each granted env value. Built from an
/// [`Admitted`] capsule only; its fields cannot be set from outside:
///
/// ```compile_fail,E0616
/// fn repoint(p: &mut edge_runner::sandbox::Prepared) {
///     p.mounts.clear();
/// }
/// ```
#[derive(Clone)]
pub struct Prepared {
    /// The component digest the manifest pins (and the container checked).
    component: Sha256Digest,
    pub(super) pre: CapsulePre<HostState>,
    params: BTreeMap<String, String>,
    /// Every granted mount at its live host path, read-only.
    pub(super) mounts: Vec<PhaseMount>,
    env: Vec<(String, String)>,
    /// Every granted endpoint, resolved from the config.
    pub(super) endpoints: BTreeMap<String, Arc<EndpointConfig>>,
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Env values may be secrets.
        f.debug_struct("Prepared")
            .field("component", &self.component)
            .field("mounts", &self.mounts)
            .finish_non_exhaustive()
    }
}

impl Prepared {
    /// Resolve an admitted capsule's grant against the host: `host_path`
    /// (mount name → live path) and `env_values` (name → value) come from
    /// the runner config.
    ///
    /// # Errors
    /// A granted mount the config does not place (a runner bug: the grant
    /// was resolved against the same config).
    pub fn new<'a>(
        pre: CapsulePre<HostState>,
        admitted: &Admitted,
        host_path: impl Fn(&str) -> Option<&'a Path>,
        env_values: &BTreeMap<String, String>,
        endpoints: &BTreeMap<String, Arc<EndpointConfig>>,
    ) -> Result<Self, SandboxError> {
        let grant = admitted.grant();
        let mounts = grant
            .mounts
            .iter()
            .map(|g| match host_path(&g.name) {
                Some(p) => Ok(PhaseMount { name: g.name.clone(), host_path: p.to_path_buf(), writable: false }),
                None => Err(SandboxError::Setup(format!("granted mount `{}` has no host path", g.name))),
            })
            .collect::<Result<_, _>>()?;
        let env = grant.env.iter().map(|k| (k.clone(), env_values.get(k).cloned().unwrap_or_default())).collect();
        let endpoints = grant
            .endpoints
            .iter()
            .map(|name| match endpoints.get(name) {
                Some(e) => Ok((name.clone(), e.clone())),
                None => Err(SandboxError::Setup(format!("granted endpoint `{name}` is not configured"))),
            })
            .collect::<Result<_, _>>()?;
        let m = admitted.capsule().file().manifest();
        Ok(Self { component: m.component.sha256, pre, params: m.params.clone(), mounts, env, endpoints })
    }

    /// The live host path of a granted mount.
    pub fn mount_path(&self, name: &str) -> Option<&Path> {
        self.mounts.iter().find(|m| m.name == name).map(|m| m.host_path.as_path())
    }

    /// The live host path of each mount `grant` lets the capsule write.
    pub fn writable_mounts(&self, grant: &Grant) -> BTreeMap<String, PathBuf> {
        grant
            .mounts
            .iter()
            .filter(|g| g.writable)
            .filter_map(|g| Some((g.name.clone(), self.mount_path(&g.name)?.to_path_buf())))
            .collect()
    }

    /// The mounts for `apply`: each writable mount at its staged copy,
    /// every other one read-only at its live path.
    pub(super) fn staged_mounts(
        &self,
        grant: &Grant,
        staged: &BTreeMap<String, PathBuf>,
    ) -> Result<Vec<PhaseMount>, SandboxError> {
        if let Some(name) = staged.keys().find(|n| !grant.mounts.iter().any(|g| g.writable && &g.name == *n)) {
            return Err(SandboxError::Setup(format!("mount `{name}` is staged but not granted writable")));
        }
        self.mounts
            .iter()
            .zip(&grant.mounts)
            .map(|(m, g)| match (g.writable, staged.get(&m.name)) {
                (true, Some(copy)) => Ok(PhaseMount { name: m.name.clone(), host_path: copy.clone(), writable: true }),
                (true, None) => Err(SandboxError::Setup(format!("writable mount `{}` has no staged copy", m.name))),
                (false, _) => Ok(m.clone()),
            })
            .collect()
    }

    /// Checks this was prepared for `admitted` (same component, same mounts).
    pub(super) fn made_for(&self, admitted: &Admitted) -> Result<(), SandboxError> {
        let grant = admitted.grant();
        let same_mounts = grant.mounts.len() == self.mounts.len()
            && grant.mounts.iter().zip(&self.mounts).all(|(g, m)| g.name == m.name);
        if admitted.capsule().file().manifest().component.sha256 != self.component || !same_mounts {
            return Err(SandboxError::Setup("the prepared component is not the one admitted".into()));
        }
        Ok(())
    }

    pub(super) fn input<'a>(&'a self, mounts: &'a [PhaseMount], gate: &'a Arc<Gate>) -> PhaseInput<'a> {
        PhaseInput { params: &self.params, mounts, env: &self.env, gate }
    }

    /// Keep each endpoint's bodies as a waiting proposal's approvers saw
    /// them previewed (endpoint → mode), where that is stricter than now.
    pub fn hold_previews(&mut self, held: &BTreeMap<String, edge_core::preview::PreviewMode>) {
        for ep in self.endpoints.values_mut() {
            *ep = ep.held(held);
        }
    }

    /// The granted endpoints, for a phase's gate.
    pub(super) fn endpoints(&self) -> BTreeMap<String, Arc<EndpointConfig>> {
        self.endpoints.clone()
    }
}

/// An authorized run as the sandbox and the commit see it: the
/// [`Authorized`] proof (the validated plan, the grant, the quorum) with the
/// component and host paths prepared for that same capsule. `verify` takes
/// only this, and the commit takes the live paths from it. (`apply` runs
/// before anyone approves — the preview — and only ever on staged copies:
/// see [`super::Sandbox::apply`].)
///
/// It is built only by [`Authority::new`], from an `Authorized` (which only
/// `edge_core::authorize::authorize` builds) and what was prepared at
/// admission for the same capsule:
///
/// ```no_run
/// use edge_runner::sandbox::{Authority, Prepared};
/// fn pair(authorized: edge_core::authorize::Authorized, prepared: Prepared) -> Authority {
///     Authority::new(authorized, prepared).expect("the same capsule")
/// }
/// ```
///
/// Assembling one by hand — say, with another component or other host paths
/// beside a real authorization — does not compile:
///
/// ```compile_fail,E0451
/// use edge_runner::sandbox::{Authority, Prepared};
/// fn forge(authorized: edge_core::authorize::Authorized, prepared: Prepared) -> Authority {
///     Authority { authorized, prepared }
/// }
/// ```
///
/// and neither does running `verify` on a capsule that was only decided:
///
/// ```compile_fail,E0308
/// use edge_runner::sandbox::Sandbox;
/// async fn skip(sandbox: &Sandbox, decided: &edge_core::authorize::Decided) {
///     let _ = sandbox.verify(decided).await;
/// }
/// ```
#[derive(Debug)]
pub struct Authority {
    pub(super) authorized: Authorized,
    pub(super) prepared: Prepared,
}

impl Authority {
    /// Pair an authorization with what was prepared at admission.
    ///
    /// # Errors
    /// If they are not for the same capsule.
    pub fn new(authorized: Authorized, prepared: Prepared) -> Result<Self, SandboxError> {
        prepared.made_for(authorized.admitted())?;
        Ok(Self { authorized, prepared })
    }

    pub fn authorized(&self) -> &Authorized {
        &self.authorized
    }

    /// The live host path of each mount the grant lets the capsule write.
    pub fn writable_mounts(&self) -> BTreeMap<String, PathBuf> {
        self.prepared.writable_mounts(self.authorized.admitted().grant())
    }

    /// A granted endpoint (compensations are sent by the runner through it).
    pub fn endpoint(&self, name: &str) -> Option<Arc<EndpointConfig>> {
        self.prepared.endpoints.get(name).cloned()
    }
}
