//! The `[server]` section of `runner.toml`: where `edge-runner serve` listens,
//! its TLS material, who may submit, and its limits.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::Deserialize;

/// Runs in progress at once unless `server.max_concurrent_runs` says
/// otherwise: 16 per core, at least 8 and at most 64.
///
/// A run spends most of its time waiting for its records to be durable
/// (four group commits, each an `fsync`), not on a core, so a few runs per
/// core leave the cores idle: with 8 on two cores, a fifth of the CPU was
/// idle under load (`cargo bench --bench loadgen`: 701 runs/s at 8, 851 at
/// 16, 961 at 32; the runner's CPU per run also fell, 2.09 → 1.67 ms, as
/// more runs share each commit). The capsule instances alive at once, and
/// their memory, are bounded apart from this (`sandbox::phases_at_once`).
pub fn default_concurrent_runs() -> usize {
    crate::cores().saturating_mul(16).clamp(8, 64)
}
/// Runs waiting for a slot unless `server.queue` says otherwise.
pub const DEFAULT_QUEUE: usize = 256;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawServer {
    /// Address to listen on, e.g. `127.0.0.1:8443` (port 0: any free port).
    listen: String,
    /// Server certificate chain (PEM) and its private key (PEM, mode 0600).
    cert: PathBuf,
    key: PathBuf,
    /// CA certificates (PEM) that client certificates must chain to.
    client_ca: PathBuf,
    /// The CA (PEM) that issued `cert`: what clients verify this runner
    /// with (their `--ca`). Only `edge-runner check` reads it, to check the
    /// chain. Default: `client_ca` (`init`'s development CA issues both).
    #[serde(default)]
    server_ca: Option<PathBuf>,
    /// Agents allowed to submit proposals: SPIFFE IDs (URI SAN) or subject
    /// common names of their client certificates. Empty: nobody may submit.
    #[serde(default)]
    agents: Vec<String>,
    /// Largest request body (default 32 MiB: a capsule and its component).
    #[serde(default)]
    max_body_kib: Option<u64>,
    /// Runs in progress at once (default 16 per core, 8 to 64
    /// ([`default_concurrent_runs`]): they share the cores, and the
    /// evidence store commits their records together.
    #[serde(default)]
    max_concurrent_runs: Option<usize>,
    /// Runs waiting for a free slot before `429 Too Many Requests`
    /// (default 256).
    #[serde(default)]
    queue: Option<usize>,
    /// Time a client has to send a request's headers (also how long an idle
    /// keep-alive connection stays open), and its body (default 10s).
    #[serde(default)]
    request_timeout: Option<String>,
    /// Named groups of client identities, for `[server.access]` (`role:<name>`).
    #[serde(default)]
    roles: BTreeMap<String, Vec<String>>,
    /// Who may read what. Absent: only agents, each for its own proposals.
    #[serde(default)]
    access: RawAccess,
}

/// `[server.access]`: client identities (SPIFFE ID or certificate CN) or
/// `role:<name>` entries, per permission.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAccess {
    /// Read every proposal (list, show, preview, document) and post
    /// approvals. An agent always may for the proposals it submitted.
    #[serde(default)]
    proposals: Vec<String>,
    /// Download the evidence export and the signed checkpoint.
    #[serde(default)]
    evidence: Vec<String>,
    /// Read `/metrics` on the API listener.
    #[serde(default)]
    metrics: Vec<String>,
    /// Reload the configuration (`POST /v1/reload`, `edge-runner reload`).
    #[serde(default)]
    reload: Vec<String>,
}

/// What a client may do beyond submitting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    Proposals,
    Evidence,
    Metrics,
    Reload,
}

impl Permission {
    /// The `[server.access]` key.
    pub fn name(self) -> &'static str {
        match self {
            Permission::Proposals => "proposals",
            Permission::Evidence => "evidence",
            Permission::Metrics => "metrics",
            Permission::Reload => "reload",
        }
    }
}

/// Resolved `[server.access]`: identities per permission (roles expanded).
#[derive(Debug, Clone, Default)]
pub struct Access {
    grants: BTreeMap<&'static str, BTreeSet<String>>,
}

impl Access {
    /// Whether `identity` holds `p`.
    pub fn allows(&self, p: Permission, identity: &str) -> bool {
        self.grants.get(p.name()).is_some_and(|s| s.contains(identity))
    }
}

/// Who may do what on the API: the agents that may submit and the read
/// and reload grants. Part of the governance a reload replaces
/// (`crate::governance::Governance::grants`).
#[derive(Debug, Clone, Default)]
pub struct Grants {
    pub agents: BTreeSet<String>,
    pub access: Access,
}

/// Resolved server settings.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    pub listen: SocketAddr,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: PathBuf,
    /// The CA that issued `cert` (`server_ca`, default `client_ca`).
    pub server_ca: PathBuf,
    pub max_body_bytes: usize,
    pub max_concurrent_runs: usize,
    pub queue: usize,
    pub request_timeout: Duration,
    /// Who may submit (`agents`) and read or reload (`[server.access]`) as
    /// loaded: the API asks the runner's governance, which a reload
    /// replaces, never this copy.
    pub(crate) grants: Grants,
}

impl RawServer {
    pub(crate) fn resolve(self, resolve: impl Fn(&Path) -> PathBuf) -> Result<ServerSettings> {
        let listen: SocketAddr = self
            .listen
            .parse()
            .with_context(|| format!("server.listen `{}`: use an address like 127.0.0.1:8443", self.listen))?;
        let duration = |field: &str, v: Option<&str>, default: u64| -> Result<Duration> {
            match v {
                Some(s) => {
                    let secs = edge_core::policy::parse_duration(s)
                        .with_context(|| format!("server.{field} `{s}`: use a duration like \"10s\""))?;
                    if secs == 0 {
                        bail!("server.{field} must be at least one second");
                    }
                    Ok(Duration::from_secs(secs))
                }
                None => Ok(Duration::from_secs(default)),
            }
        };
        for a in &self.agents {
            if a.is_empty() || a.chars().any(char::is_control) {
                bail!("server.agents: `{a}` is not an agent identity (a SPIFFE ID or a certificate common name)");
            }
        }
        let access = resolve_access(&self.roles, &self.access)?;
        Ok(ServerSettings {
            grants: Grants { agents: self.agents.into_iter().collect(), access },
            listen,
            cert: resolve(&self.cert),
            key: resolve(&self.key),
            server_ca: resolve(self.server_ca.as_deref().unwrap_or(&self.client_ca)),
            client_ca: resolve(&self.client_ca),
            max_body_bytes: usize::try_from(self.max_body_kib.unwrap_or(32 << 10).saturating_mul(1024))
                .unwrap_or(usize::MAX),
            max_concurrent_runs: match self.max_concurrent_runs {
                Some(0) => bail!("server.max_concurrent_runs must be at least 1"),
                Some(n) => n.min(1024),
                None => default_concurrent_runs(),
            },
            queue: self.queue.unwrap_or(DEFAULT_QUEUE),
            request_timeout: duration("request_timeout", self.request_timeout.as_deref(), 10)?,
        })
    }
}

fn is_identity(s: &str) -> bool {
    !s.is_empty() && s.len() <= 512 && !s.chars().any(|c| c.is_control() || c.is_whitespace())
}

fn resolve_access(roles: &BTreeMap<String, Vec<String>>, raw: &RawAccess) -> Result<Access> {
    for (role, members) in roles {
        if !is_identity(role) || role.contains(':') {
            bail!("server.roles: `{role}` is not a role name (letters, digits, `-`, `_`, `.`)");
        }
        for m in members {
            if !is_identity(m) || m.starts_with("role:") {
                bail!("server.roles.{role}: `{m}` is not a client identity (a SPIFFE ID or certificate common name)");
            }
        }
    }
    let mut grants = BTreeMap::new();
    for (p, list) in [
        (Permission::Proposals, &raw.proposals),
        (Permission::Evidence, &raw.evidence),
        (Permission::Metrics, &raw.metrics),
        (Permission::Reload, &raw.reload),
    ] {
        let mut ids = BTreeSet::new();
        for entry in list {
            match entry.strip_prefix("role:") {
                Some(role) => {
                    let members = roles.get(role).with_context(|| {
                        format!(
                            "server.access.{}: `{entry}` names no role; define it under [server.roles] \
                             ({role} = [\"spiffe://…\"])",
                            p.name()
                        )
                    })?;
                    ids.extend(members.iter().cloned());
                }
                None if is_identity(entry) => {
                    ids.insert(entry.clone());
                }
                None => bail!("server.access.{}: `{entry}` is not a client identity or `role:<name>`", p.name()),
            }
        }
        grants.insert(p.name(), ids);
    }
    Ok(Access { grants })
}
