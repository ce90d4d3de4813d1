//! The runner's config file (`runner.toml`): raw TOML parsed once into a
//! [`RunnerConfig`] whose paths are resolved and whose keys are loaded.
//!
//! Relative paths are relative to the directory holding the config file.

pub mod console;
pub mod endpoints;
pub mod nats;
pub mod notify;
pub mod probes;
pub mod server;
pub mod spool;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use edge_core::Sha256Digest;
use edge_core::admission::{Ceiling, Limits};
use edge_core::manifest::{is_env_name, is_interface_name};
use edge_core::paths::is_logical_name;
use edge_core::preview::{Patterns, PreviewMode};
use edge_core::signature::{TrustedSigner, TrustedSigners};

use std::sync::Arc;

use edge_core::approval::Registry;
use serde::Deserialize;

use crate::governance::Governance;
use crate::policy_files::PolicySet;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    runner: RawRunner,
    #[serde(default)]
    signers: Vec<RawSigner>,
    #[serde(default)]
    sigstore: RawSigstore,
    #[serde(default)]
    mounts: BTreeMap<String, RawMount>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    grant: RawGrant,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    policy: Option<RawPolicy>,
    #[serde(default)]
    endpoints: BTreeMap<String, endpoints::RawEndpoint>,
    #[serde(default)]
    approvers: Option<RawApprovers>,
    #[serde(default)]
    server: Option<server::RawServer>,
    #[serde(default)]
    console: Option<console::RawConsole>,
    #[serde(default)]
    notify: notify::RawNotify,
    #[serde(default)]
    probes: Option<probes::RawProbes>,
    #[serde(default)]
    spool: Option<spool::RawSpool>,
    #[serde(default)]
    nats: Option<nats::RawNats>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApprovers {
    /// OpenSSH allowed_signers file.
    allowed_signers: PathBuf,
    /// Roles, owners, break-glass, revoked keys (TOML).
    roles: PathBuf,
    /// Clock skew tolerated on approval times (default 5m).
    #[serde(default)]
    clock_skew: Option<String>,
    /// Registered passkeys (JSON, `edge-runner approvers enroll` adds to
    /// it); default `passkeys.json` beside allowed_signers, read when it
    /// exists (a configured path must exist).
    #[serde(default)]
    passkeys: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    /// The policy document (TOML).
    file: PathBuf,
    /// The system graph (TOML).
    graph: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRunner {
    name: String,
    #[serde(default = "default_state_dir")]
    state_dir: PathBuf,
    /// Where writable mounts are copied for `apply` (default
    /// `<state_dir>/staging`): put it on another filesystem to keep a
    /// capsule's writes (bounded by `MAX_STAGE_BYTES`) away from the
    /// evidence store's disk.
    #[serde(default)]
    staging_dir: Option<PathBuf>,
    /// Where compiled components are cached (default `<state_dir>/cache`).
    #[serde(default)]
    cache_dir: Option<PathBuf>,
    /// The runner's Ed25519 identity key, which signs log checkpoints
    /// (default `<state_dir>/identity.key`, created on first start, mode 0600).
    #[serde(default)]
    identity_key: Option<PathBuf>,
    /// Run without a policy: every admitted capsule becomes an unapproved
    /// tier-0 run. Off by default (a runner without `[policy]` refuses to
    /// start); when on, every run's submission record lists it and every
    /// report shows it in its banner.
    #[serde(default)]
    dangerous_run_without_policy: bool,
    /// Most bytes of file content one preview keeps as evidence (default
    /// 16 MiB); a larger preview refuses the proposal.
    #[serde(default)]
    max_preview_mib: Option<u64>,
    /// Most bytes all waiting proposals' staged results may hold together
    /// (default 1024 MiB); beyond it new proposals are refused until some
    /// are approved, rejected or expire.
    #[serde(default)]
    max_waiting_previews_mib: Option<u64>,
}

fn default_state_dir() -> PathBuf {
    PathBuf::from("state")
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSigner {
    name: String,
    #[serde(default)]
    public_key: Option<PathBuf>,
    #[serde(default)]
    identity: Option<String>,
    #[serde(default)]
    issuer: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSigstore {
    #[serde(default)]
    trusted_root: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMount {
    path: PathBuf,
    #[serde(default)]
    writable: bool,
    /// The graph node this mount belongs to (required with a policy).
    #[serde(default)]
    node: Option<String>,
    /// What approvers and the evidence see of changed files: `full`,
    /// `redacted` (the default) or `digest-only`.
    #[serde(default)]
    preview: Option<String>,
    /// Regular expressions: a matching line's value is masked in a
    /// `redacted` preview (default: password, secret, token, key, … names).
    #[serde(default)]
    redact: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGrant {
    #[serde(default)]
    imports: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    #[serde(default)]
    default: Option<Limits>,
    #[serde(default)]
    ceiling: Option<Limits>,
}

/// A configured mount.
#[derive(Debug, Clone)]
pub struct MountConfig {
    /// Canonical absolute host path of the mount root.
    pub path: PathBuf,
    pub writable: bool,
    /// What a preview of this mount's changed files keeps and shows.
    pub preview: PreviewMode,
    /// Patterns whose lines are masked in a `redacted` preview (compiled).
    pub redact: Patterns,
}

/// What of a config only a restart applies, kept as loaded so that its
/// digest ([`RunnerConfig::fixed`]) is made only where it is compared (a
/// serving runner, `exec` handing a run over), not at every load.
#[derive(Debug)]
struct Fixed {
    /// The config's text (the same `Arc` as the governance's at load).
    text: Arc<String>,
    /// The directory its relative paths are read from.
    base: PathBuf,
    /// Each file an endpoint read at load: path → digest.
    read_at_start: BTreeMap<String, String>,
}

/// The resolved runner configuration.
#[derive(Debug)]
pub struct RunnerConfig {
    pub name: String,
    pub state_dir: PathBuf,
    /// Staging copies of writable mounts, one directory per run; failed
    /// removals wait in `.trash/` for the next start.
    pub staging_dir: PathBuf,
    pub cache_dir: PathBuf,
    pub identity_key: PathBuf,
    /// The config file this was loaded from (a reload reads it again).
    pub source: Option<PathBuf>,
    /// Policy, graph, node mapping, trusted signers, approver registry.
    /// `None` once a [`crate::pipeline::Runner`] holds this config: read
    /// the one in force with `Runner::governance` (a reload replaces it).
    pub governance: Option<Governance>,
    /// What of the config only a restart applies ([`RunnerConfig::fixed`]).
    fixed: Fixed,
    pub mounts: BTreeMap<String, MountConfig>,
    /// Services a capsule may call (`[endpoints.<name>]`).
    pub endpoints: BTreeMap<String, Arc<endpoints::EndpointConfig>>,
    /// Environment values the runner may pass (only names a capsule requests are passed).
    pub env: BTreeMap<String, String>,
    pub ceiling: Ceiling,
    /// `edge-runner serve` settings (`[server]`).
    pub server: Option<server::ServerSettings>,
    /// The approval console (`[console]`), served by `edge-runner serve`.
    pub console: Option<console::ConsoleSettings>,
    /// Signed webhooks on proposal events (`[notify]`), sent by `edge-runner serve`.
    pub notify: notify::NotifySettings,
    /// Health, readiness (and optionally metrics) without a client
    /// certificate, on loopback or a Unix socket (`[probes]`).
    pub probes: Option<probes::ProbeSettings>,
    /// The air-gapped intake (`[spool]`), served by `edge-runner serve`.
    pub spool: Option<spool::SpoolSettings>,
    /// The outbound-only intake (`[nats]`), served by `edge-runner serve`.
    pub nats: Option<nats::NatsSettings>,
    /// Insecure switches in force (`dangerous_…` names), recorded in every
    /// run's submission record and shown in reports.
    pub dangerous: Vec<String>,
    /// Bounds on previews (bytes): content kept per proposal, and staged
    /// results kept for all waiting proposals.
    pub max_preview_bytes: u64,
    pub max_waiting_previews_bytes: u64,
}

/// How much of a config is compiled when it is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Depth {
    /// Everything: a config that runs, serves or checks.
    Full,
    /// All but the system graph's compilation (and the node lookups in it):
    /// only for [`RunnerConfig::load_to_hand_over`], which keeps digests
    /// and drops the config.
    Digests,
}

/// What `exec` needs to hand a run to the runner serving a config
/// ([`RunnerConfig::load_to_hand_over`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandOverView {
    /// Where the serving runner's socket and store are.
    pub state_dir: PathBuf,
    /// Every governing document by digest ([`Governance::digests`]).
    pub digests: edge_core::evidence::ConfigDigests,
    /// The trusted signers ([`crate::intake::local::signers_digest`]).
    pub signers: Sha256Digest,
    /// What only a restart applies ([`RunnerConfig::fixed`]).
    pub fixed: Sha256Digest,
}

impl HandOverView {
    /// What `config` names, by digest.
    fn of(config: &RunnerConfig) -> Result<Self> {
        let governance = config.governance.as_ref().context("a loaded config has its governance")?;
        Ok(HandOverView {
            state_dir: config.state_dir.clone(),
            digests: governance.digests(),
            signers: crate::intake::local::signers_digest(&governance.signers),
            fixed: config.fixed(),
        })
    }
}

/// What a command that only reads the evidence store needs of a config
/// ([`RunnerConfig::load_store_view`]): the runner's name (the origin of
/// its checkpoints), where its store is, and its identity key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreView {
    pub name: String,
    pub state_dir: PathBuf,
    pub identity_key: PathBuf,
}

impl StoreView {
    /// The evidence store's directory.
    pub fn evidence_dir(&self) -> PathBuf {
        self.state_dir.join("evidence")
    }
}

impl RawConfig {
    fn parse(text: &str) -> Result<Self> {
        toml::from_str(text).map_err(|e| anyhow!(toml_error(&e, text)))
    }
}

/// `p` as read from a config whose relative paths are read from `base`.
fn resolved(base: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() { p.to_path_buf() } else { base.join(p) }
}

impl RawRunner {
    /// The name, checked, with the state directory and identity key it
    /// names, resolved: all a loaded config and a [`StoreView`] share.
    fn store_view(&self, resolve: impl Fn(&Path) -> PathBuf) -> Result<StoreView> {
        let name = &self.name;
        if name.is_empty()
            || name.len() > 128
            || name.contains('+')
            || name.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            bail!(
                "`runner.name` must be 1-128 characters without spaces or `+`: it identifies this runner in evidence \
                 and is the origin of its signed checkpoints (e.g. edge-runner.bank.example/enclave-1)"
            );
        }
        let state_dir = resolve(&self.state_dir);
        let identity_key = self.identity_key.as_deref().map_or_else(|| state_dir.join("identity.key"), resolve);
        Ok(StoreView { name: name.clone(), state_dir, identity_key })
    }
}

impl RunnerConfig {
    /// What of this config only a restart applies, as one digest: the
    /// sections of its text a reload does not apply
    /// ([`crate::governance::fixed_digest`]), and what that text resolved
    /// to when it was loaded — the directory its relative paths are read
    /// from, each mount's canonical path (a link pointed elsewhere counts)
    /// and the digest of each file an endpoint reads (a credential
    /// rewritten counts). Equal for two loads exactly when a runner started
    /// from one runs what the other names.
    pub fn fixed(&self) -> Sha256Digest {
        let Fixed { text, base, read_at_start } = &self.fixed;
        let base = std::fs::canonicalize(base).unwrap_or_else(|_| base.clone());
        let mounts: BTreeMap<&String, String> =
            self.mounts.iter().map(|(k, m)| (k, m.path.display().to_string())).collect();
        let all = serde_json::json!({
            "sections": crate::governance::fixed_digest(text),
            "base": base.display().to_string(),
            "mounts": mounts,
            "read_at_start": read_at_start,
        });
        Sha256Digest::of(&serde_json::to_vec(&all).unwrap_or_default())
    }

    /// Read and resolve a config file.
    ///
    /// # Errors
    /// A message naming the file, the field and what to change.
    pub fn load(path: &Path) -> Result<Self> {
        let mut config = Self::read(path, Depth::Full)?;
        config.source = Some(path.to_path_buf());
        Ok(config)
    }

    /// The config at `path` as `exec` hands a run over with it
    /// ([`crate::intake::local::hand_over`]): where a runner serving it
    /// answers, and what governs it, by digest. Read and checked as
    /// [`RunnerConfig::load`] does, except that the system graph is hashed
    /// and not compiled (nor the mounts' and endpoints' nodes looked up in
    /// it): the serving runner compiled and checked its own, and takes
    /// nothing unless every digest equals its own. At 10,000 nodes that is
    /// ~41 ms and ~47 MB less per handed-over `exec`.
    ///
    /// # Errors
    /// As [`RunnerConfig::load`], but for the graph's contents.
    pub fn load_to_hand_over(path: &Path) -> Result<HandOverView> {
        HandOverView::of(&Self::read(path, Depth::Digests)?)
    }

    /// The config at `path` as the commands that only read the evidence
    /// store use it (`evidence show`, `check`, `artifact`, `runner-key`, a
    /// report's `--config`): the whole file is parsed, every field's type
    /// checked, and `[runner]` resolved as [`RunnerConfig::load`] resolves
    /// it; nothing else is read. So the store can be read and checked while
    /// the policy, the graph, a mount or a certificate the config names is
    /// broken or absent (a copy of the state directory on a reviewer's
    /// machine), and a large system graph is not compiled to do it.
    ///
    /// # Errors
    /// As [`RunnerConfig::load`], for the file's syntax, its fields' types
    /// and `[runner]`.
    pub fn load_store_view(path: &Path) -> Result<StoreView> {
        Self::parsed(path, |text, base| RawConfig::parse(text)?.runner.store_view(|p| resolved(base, p)))
    }

    /// This config's [`StoreView`].
    pub fn store_view(&self) -> StoreView {
        StoreView {
            name: self.name.clone(),
            state_dir: self.state_dir.clone(),
            identity_key: self.identity_key.clone(),
        }
    }

    fn read(path: &Path, depth: Depth) -> Result<Self> {
        Self::parsed(path, |text, base| Self::from_toml_as(text, base, depth))
    }

    /// `parse` of the text of the config at `path` and the directory its
    /// relative paths are read from, its errors naming the file.
    fn parsed<T>(path: &Path, parse: impl FnOnce(&str, &Path) -> Result<T>) -> Result<T> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("cannot read runner config {}", path.display()))?;
        let base =
            path.parent().map(|p| if p.as_os_str().is_empty() { Path::new(".") } else { p }).unwrap_or(Path::new("."));
        parse(&text, base).with_context(|| format!("runner config {} is invalid", path.display()))
    }

    /// Resolve a config from its text, with relative paths against `base`.
    ///
    /// # Errors
    /// As [`RunnerConfig::load`].
    pub fn from_toml(text: &str, base: &Path) -> Result<Self> {
        Self::from_toml_as(text, base, Depth::Full)
    }

    fn from_toml_as(text: &str, base: &Path, depth: Depth) -> Result<Self> {
        let raw = RawConfig::parse(text)?;
        let resolve = |p: &Path| resolved(base, p);
        let store = raw.runner.store_view(resolve)?;
        let trusted_root = match &raw.sigstore.trusted_root {
            Some(p) => {
                let p = resolve(p);
                Some(std::fs::read(&p).with_context(|| format!("cannot read sigstore.trusted_root {}", p.display()))?)
            }
            None => None,
        };
        let policy = match &raw.policy {
            Some(p) => Some(PolicySet::read(&resolve(&p.file), &resolve(&p.graph), depth == Depth::Full)?),
            None => None,
        };
        if policy.is_none() && !raw.runner.dangerous_run_without_policy {
            bail!(
                "no `[policy]` is configured: without one every admitted capsule would run at tier 0 with no human \
                 approval, so the runner refuses to start. Add `[policy]` with `file` and `graph` (see \
                 examples/runner.toml and `edge-runner policy check`), or, for a test bench only, set \
                 `dangerous_run_without_policy = true` under `[runner]` (recorded in every run's evidence)"
            );
        }
        if policy.is_some() && raw.runner.dangerous_run_without_policy {
            bail!("`dangerous_run_without_policy` is set but a `[policy]` is configured: remove the switch");
        }
        if policy.is_some() && !raw.signers.is_empty() {
            bail!("with a policy configured, trusted signers belong in the policy document, not in [[signers]] here");
        }
        let mut signers = policy.as_ref().map(|p| p.policy.signers().to_vec()).unwrap_or_default();
        if policy.is_some() && trusted_root.is_none() && signers.iter().any(|s| s.is_keyless()) {
            bail!("the policy trusts keyless signers: configure `sigstore.trusted_root` (a local trusted_root.json)");
        }
        let mut names = BTreeSet::new();
        for s in &raw.signers {
            if !names.insert(s.name.as_str()) {
                bail!("signer `{}` is listed twice", s.name);
            }
            let signer = match (&s.public_key, &s.identity, &s.issuer) {
                (Some(key), None, None) => {
                    let p = resolve(key);
                    let pem = std::fs::read_to_string(&p)
                        .with_context(|| format!("signer `{}`: cannot read public_key {}", s.name, p.display()))?;
                    TrustedSigner::from_public_key_pem(&s.name, &pem)
                        .with_context(|| format!("signer `{}`: {} is not a usable public key", s.name, p.display()))?
                }
                (None, Some(identity), Some(issuer)) => {
                    if trusted_root.is_none() {
                        bail!(
                            "signer `{}` is keyless and needs `sigstore.trusted_root` (a local trusted_root.json)",
                            s.name
                        );
                    }
                    TrustedSigner::keyless(&s.name, identity, issuer)
                }
                _ => bail!(
                    "signer `{}` needs either `public_key` (keyed) or both `identity` and `issuer` (keyless), not a mix",
                    s.name
                ),
            };
            signers.push(signer);
        }
        let signers = TrustedSigners::new(signers, trusted_root.as_deref())
            .context("`sigstore.trusted_root` is not a valid Sigstore trusted root")?;

        let mut mounts = BTreeMap::new();
        let mut nodes = BTreeMap::new();
        for (name, m) in raw.mounts {
            if !is_logical_name(&name) {
                bail!("mount name `{name}` must use [A-Za-z0-9._-]");
            }
            let p = resolve(&m.path);
            let canonical = std::fs::canonicalize(&p)
                .with_context(|| format!("mount `{name}`: path {} does not exist", p.display()))?;
            if !canonical.is_dir() {
                bail!("mount `{name}`: {} is not a directory", canonical.display());
            }
            if let Some(node) = m.node {
                nodes.insert(name.clone(), node);
            } else if policy.is_some() {
                bail!(
                    "mount `{name}` has no `node`: with a policy, every mount must name the graph node it belongs to"
                );
            }
            let preview = match m.preview.as_deref() {
                None => PreviewMode::default(),
                Some(s) => PreviewMode::parse(s).with_context(|| {
                    format!("mount `{name}`: preview = \"{s}\" is not one of \"full\", \"redacted\", \"digest-only\"")
                })?,
            };
            let redact = match &m.redact {
                None => Patterns::defaults(),
                Some(p) => {
                    Patterns::compile(p).with_context(|| format!("mount `{name}`: a `redact` pattern is invalid"))?
                }
            };
            mounts.insert(name, MountConfig { path: canonical, writable: m.writable, preview, redact });
        }
        // What the endpoints read at start, by digest: part of what only a
        // restart applies (`RunnerConfig::fixed`).
        let read_at_start: BTreeMap<String, String> = raw
            .endpoints
            .values()
            .flat_map(endpoints::RawEndpoint::files)
            .map(|f| {
                let p = resolve(f);
                let d =
                    std::fs::read(&p).map_or_else(|_| "unreadable".to_owned(), |b| Sha256Digest::of(&b).to_string());
                (p.display().to_string(), d)
            })
            .collect();
        let mut endpoints = BTreeMap::new();
        for (name, e) in raw.endpoints {
            if !is_logical_name(&name) {
                bail!("endpoint name `{name}` must use [A-Za-z0-9._-]");
            }
            if mounts.contains_key(&name) {
                bail!("`{name}` names both a mount and an endpoint; give them different names");
            }
            nodes.insert(name.clone(), e.node.clone());
            endpoints.insert(name.clone(), Arc::new(e.resolve(&name, resolve)?));
        }
        if let Some(p) = policy.as_ref().filter(|_| depth == Depth::Full) {
            p.check_nodes(&nodes)?;
        }
        for name in raw.env.keys() {
            if !is_env_name(name) {
                bail!("env name `{name}` must match [A-Za-z_][A-Za-z0-9_]*");
            }
        }
        let imports: BTreeSet<String> = match raw.grant.imports {
            Some(list) => {
                for i in &list {
                    if !is_interface_name(i) {
                        bail!("grant.imports: `{i}` is not an unversioned interface name like `wasi:filesystem/types`");
                    }
                    if !crate::sandbox::capability::is_linkable(i) {
                        bail!(
                            "grant.imports: `{i}` cannot be granted by this runner (sockets, HTTP and other interfaces are never linked)"
                        );
                    }
                }
                list.into_iter().collect()
            }
            None => crate::sandbox::capability::linkable_imports().map(str::to_owned).collect(),
        };
        let max_limits = raw.limits.ceiling.unwrap_or(Limits::CEILING);
        let default_limits = raw.limits.default.unwrap_or(Limits::DEFAULT);
        for (field, d, c) in [
            ("memory_mib", default_limits.memory_mib, max_limits.memory_mib),
            ("cpu_ms", default_limits.cpu_ms, max_limits.cpu_ms),
            ("wall_ms", default_limits.wall_ms, max_limits.wall_ms),
            ("output_kib", default_limits.output_kib, max_limits.output_kib),
            ("max_plan_changes", default_limits.max_plan_changes, max_limits.max_plan_changes),
        ] {
            if d == 0 || c == 0 || d > c {
                bail!("limits.{field}: default {d} and ceiling {c} must be positive with default <= ceiling");
            }
        }
        let ceiling = Ceiling {
            mounts: mounts.iter().map(|(n, m)| (n.clone(), m.writable)).collect(),
            env: raw.env.keys().cloned().collect(),
            imports,
            endpoints: endpoints.keys().cloned().collect(),
            default_limits,
            max_limits,
        };
        let StoreView { name, state_dir, identity_key } = store;
        let cache_dir = raw.runner.cache_dir.as_deref().map_or_else(|| state_dir.join("cache"), resolve);
        let staging_dir = raw.runner.staging_dir.as_deref().map_or_else(|| state_dir.join("staging"), resolve);
        // A mount must never expose the runner's own state (evidence log,
        // journals, compiled-code cache, staging copies) to a capsule, nor
        // overlap another mount.
        let (state_abs, cache_abs, staging_abs) =
            (absolute(&state_dir)?, absolute(&cache_dir)?, absolute(&staging_dir)?);
        for (name, m) in &mounts {
            for (what, p) in [("state_dir", &state_abs), ("cache_dir", &cache_abs), ("staging_dir", &staging_abs)] {
                if m.path.starts_with(p) || p.starts_with(&m.path) {
                    bail!(
                        "mount `{name}` ({}) overlaps the runner's {what} ({}); keep them apart",
                        m.path.display(),
                        p.display()
                    );
                }
            }
            for (other, o) in &mounts {
                if other != name && m.path.starts_with(&o.path) {
                    bail!("mount `{name}` ({}) lies inside mount `{other}` ({})", m.path.display(), o.path.display());
                }
            }
        }
        let approvers = match &raw.approvers {
            Some(a) => {
                let (sp, rp) = (resolve(&a.allowed_signers), resolve(&a.roles));
                let st = std::fs::read_to_string(&sp)
                    .with_context(|| format!("cannot read allowed_signers {}", sp.display()))?;
                let rt = std::fs::read_to_string(&rp)
                    .with_context(|| format!("cannot read approver roles {}", rp.display()))?;
                let registry = Registry::parse(&st, &sp.display().to_string(), &rt, &rp.display().to_string())?;
                // A configured passkeys file must exist; the default one
                // (beside allowed_signers) is read when it does.
                let passkeys = match &a.passkeys {
                    Some(p) => Some(resolve(p)),
                    None => Some(sp.with_file_name("passkeys.json")).filter(|p| p.exists()),
                };
                match passkeys {
                    Some(pp) => {
                        let pt = std::fs::read_to_string(&pp)
                            .with_context(|| format!("cannot read passkeys {} (approvers.passkeys)", pp.display()))?;
                        Some(registry.with_passkeys(&pt, &pp.display().to_string())?)
                    }
                    None => Some(registry),
                }
            }
            None => None,
        };
        let passkeys_file = raw.approvers.as_ref().map(|a| match &a.passkeys {
            Some(p) => resolve(p),
            None => resolve(&a.allowed_signers).with_file_name("passkeys.json"),
        });
        let clock_skew_secs = match raw.approvers.as_ref().and_then(|a| a.clock_skew.as_deref()) {
            Some(s) => edge_core::policy::parse_duration(s)
                .with_context(|| format!("approvers.clock_skew `{s}`: use a duration like \"5m\""))?,
            None => 300,
        };
        let server = raw.server.map(|s| s.resolve(resolve)).transpose()?;
        let console = raw
            .console
            .map(|c| c.resolve(resolve, server.as_ref().map(|s| (s.cert.as_path(), s.key.as_path()))))
            .transpose()?;
        if console.is_some() && approvers.is_none() {
            bail!("[console] needs an [approvers] registry: the console is where approvers approve");
        }
        let spool = raw.spool.map(|s| s.resolve(resolve)).transpose()?;
        let nats = raw.nats.map(|n| n.resolve(&raw.runner.name, resolve)).transpose()?;
        let probes = raw.probes.map(|p| p.resolve(resolve)).transpose()?;
        if probes.is_some() && server.is_none() && spool.is_none() && nats.is_none() {
            bail!("[probes] needs an intake ([server], [spool] or [nats]): the probes answer for `edge-runner serve`");
        }
        let notify = raw.notify.resolve(
            text,
            resolve,
            server.as_ref().map(|s| s.client_ca.as_path()),
            console.as_ref().and_then(|c| c.url.as_ref()),
        )?;
        let mut dangerous = Vec::new();
        if raw.runner.dangerous_run_without_policy {
            dangerous.push("dangerous_run_without_policy".to_owned());
        }
        if probes.as_ref().is_some_and(|p| p.dangerous) {
            dangerous.push("probes.dangerous_plain_http".to_owned());
        }
        if nats.as_ref().is_some_and(|n| n.dangerous) {
            dangerous.push("nats.dangerous_plain_text".to_owned());
        }
        for e in endpoints.values().filter(|e| e.dangerous_plain_http) {
            dangerous.push(format!("endpoints.{}.dangerous_plain_http", e.name));
        }
        let grants = server.as_ref().map(|s| Arc::new(s.grants.clone()));
        let config_text = Arc::new(text.to_owned());
        Ok(RunnerConfig {
            fixed: Fixed { text: config_text.clone(), base: base.to_path_buf(), read_at_start },
            server,
            console,
            notify,
            probes,
            spool,
            nats,
            identity_key,
            source: None,
            governance: Some(Governance {
                policy: policy.map(Arc::new),
                nodes: Arc::new(nodes),
                signers: Arc::new(signers),
                trusted_root: trusted_root.map(Arc::new),
                approvers: approvers.map(Arc::new),
                config_text,
                config_shown: Arc::new(shown(text)?),
                passkeys_file,
                clock_skew_secs,
                grants,
            }),
            name,
            state_dir,
            cache_dir,
            staging_dir,
            mounts,
            endpoints,
            env: raw.env,
            ceiling,
            dangerous,
            max_preview_bytes: raw.runner.max_preview_mib.unwrap_or(16) << 20,
            max_waiting_previews_bytes: raw.runner.max_waiting_previews_mib.unwrap_or(1024) << 20,
        })
    }
}

/// What stands in for a secret value in [`shown`].
pub const REDACTED: &str = "(redacted)";

/// The config as a reviewer is shown it (stored and exported as an
/// artifact; `config_shown` in `runner-started` and `config-reloaded`
/// records): `text` parsed and written out again, so no comment survives,
/// with what may be secret replaced — every `[env]` value (capsules read
/// them: tokens, passwords) by `(redacted)`, and every webhook URL by
/// scheme, host, port and a digest of its path (chat webhooks keep their
/// secret in the path, others in the query: [`notify::shown`]). Everything
/// else a reviewer may need is kept: mounts and their nodes, endpoints and
/// which requests they count as reads, signers, grants, limits, switches.
/// Deterministic: the same text always shows the same.
///
/// # Errors
/// If `text` is not TOML (a config that loads always is).
pub fn shown(text: &str) -> Result<String> {
    use toml::Value;
    let mut doc: toml::Table = toml::from_str(text)?;
    if let Some(Value::Table(env)) = doc.get_mut("env") {
        for (_, v) in env.iter_mut() {
            *v = Value::String(REDACTED.into());
        }
    }
    if let Some(Value::Table(n)) = doc.get_mut("notify")
        && let Some(Value::Array(hooks)) = n.get_mut("webhooks")
    {
        for url in hooks.iter_mut().filter_map(|h| h.as_table_mut()?.get_mut("url")) {
            let parsed = url.as_str().and_then(|u| url::Url::parse(u).ok());
            *url = Value::String(parsed.map_or_else(|| REDACTED.into(), |u| notify::shown(&u)));
        }
    }
    Ok(toml::to_string(&doc)?)
}

/// A TOML error as the runner reports it, at start as on a reload: where
/// it stopped (line and column) and why, never the file's text. toml's own
/// form quotes the line it stopped at (with a marker under the value), and
/// serde's messages quote the value they refused (`invalid type: string
/// "…"`, ``integer `1234` ``); the file may hold secrets ([`shown`]), and
/// this error reaches a terminal, the service's journal and a reload's
/// record. What the message names is kept: an unknown field and the fields
/// a table takes, the token the parser expected.
#[must_use]
pub fn toml_error(e: &toml::de::Error, text: &str) -> String {
    let message = unknown_field_masked(e.message());
    let message: Vec<String> = message.lines().map(str::trim).filter(|l| !l.is_empty()).map(values_masked).collect();
    let message = message.join("; ");
    let Some(span) = e.span() else {
        return format!("TOML parse error: {message}");
    };
    let (line, column) = line_column(text, span.start);
    format!(
        "TOML parse error at line {line}, column {column}: {message} (the file's text is not quoted here: it may hold \
         secrets)"
    )
}

/// The line and column (from 1, in characters) of byte `at` of `text`,
/// clamped to the text and to the character it falls in.
pub(crate) fn line_column(text: &str, at: usize) -> (usize, usize) {
    let mut at = at.min(text.len());
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    let before = &text[..at];
    (before.matches('\n').count() + 1, before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1)
}

/// Whether `s` is shown as a name in a message: letters, digits, `_`, `-`,
/// `.` (1 to 64 of them), or one mark (a token the parser expected).
fn is_name(s: &str) -> bool {
    ((1..=64).contains(&s.len()) && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')))
        || (s.len() == 1 && s.chars().all(|c| c.is_ascii_punctuation()))
}

/// serde's ``unknown field `…`, expected …`` with the field replaced by
/// `…` unless it is a name: it is a key of the file, written as the file
/// has it, and a quoted key may hold anything, backticks and line breaks
/// included — it cannot be told from the rest by its quotes.
fn unknown_field_masked(message: &str) -> std::borrow::Cow<'_, str> {
    let Some(rest) = message.strip_prefix("unknown field `") else {
        return message.into();
    };
    let Some(end) = rest.rfind("`, expected").or_else(|| rest.rfind("`, there are no fields")) else {
        return "unknown field `…`".into();
    };
    let (field, tail) = rest.split_at(end);
    format!("unknown field `{}{tail}", if is_name(field) { field } else { "…" }).into()
}

/// `message` with every value it quotes replaced by `…`: what is between
/// double quotes (a string, as serde quotes it, escapes and all), and what
/// is between backticks after serde's names for a value (`integer`,
/// `floating point`, `character`, `boolean`) or that is not a name (a
/// field, a variant, a token: letters, digits, `_`, `-`, `.`, or one mark).
fn values_masked(message: &str) -> String {
    const VALUE_KINDS: [&str; 4] = ["integer", "floating point", "character", "boolean"];
    quotes_masked(message, |quote, inner, before| {
        quote == '`' && is_name(inner) && !VALUE_KINDS.iter().any(|k| before.trim_end().ends_with(k))
    })
}

/// `line` with what it quotes between double quotes or backticks replaced
/// by `…`, unless `keep(quote, what is quoted, what was written before)`.
/// Between double quotes a backslash escapes the next character (serde
/// writes a string as Rust's debug form: `\"` is a quote inside it). An
/// unclosed quote hides everything after it.
fn quotes_masked(line: &str, keep: impl Fn(char, &str, &str) -> bool) -> String {
    let mut out = String::with_capacity(line.len());
    let mut rest = line;
    while let Some(open) = rest.find(['"', '`']) {
        let q = char::from(rest.as_bytes()[open]);
        out.push_str(&rest[..=open]);
        let quoted = &rest[open + 1..];
        let mut end = None;
        let mut chars = quoted.char_indices();
        while let Some((i, c)) = chars.next() {
            if c == q {
                end = Some(i);
                break;
            }
            if c == '\\' && q == '"' {
                chars.next();
            }
        }
        let Some(len) = end else {
            out.push('…');
            return out;
        };
        let inner = &quoted[..len];
        let shown = keep(q, inner, &out[..out.len() - 1]);
        out.push_str(if shown { inner } else { "…" });
        out.push(q);
        rest = &quoted[len + 1..];
    }
    out.push_str(rest);
    out
}

/// Whether a `reload-refused` record's `error` quotes the config file
/// where it stopped (a line, a value), as runners before 2026-12-06
/// recorded it: whether [`error_shown`] would change more than its line
/// breaks. What a runner records since is already shown, and unchanged.
#[must_use]
pub fn quotes_config(error: &str) -> bool {
    error_shown(error) != error.lines().collect::<Vec<_>>().join("\n")
}

/// A config error as evidence and logs may show it: errors quote what
/// they stop at, and that may be a secret (see [`shown`]). TOML's parse
/// errors quote the line of the file (`12 | url = …`, then a marker line
/// `   |      ^`): those lines are left out. Messages quote values between
/// double quotes or backticks (serde's `invalid type: string "…"`, a
/// check's ``url `…` ``): what is between is replaced by `…`. The field,
/// line and column stay named: they say where to look in the file. (A
/// config that does not parse is already reported so by [`toml_error`];
/// a reload's record masks further, every quoted word.)
#[must_use]
pub fn error_shown(error: &str) -> String {
    let source_line = |l: &&str| {
        let t = l.trim_start().trim_start_matches(|c: char| c.is_ascii_digit()).trim_start();
        t.starts_with('|')
    };
    let lines: Vec<String> =
        error.lines().filter(|l| !source_line(l)).map(|l| quotes_masked(l, |_, _, _| false)).collect();
    lines.join("\n")
}

/// An absolute, symlink-resolved form of a path that may not exist yet
/// (resolved through its nearest existing ancestor).
fn absolute(p: &Path) -> Result<PathBuf> {
    let mut missing = Vec::new();
    let mut cur = p.to_path_buf();
    loop {
        if let Ok(c) = std::fs::canonicalize(&cur) {
            let mut out = c;
            for part in missing.iter().rev() {
                out.push(part);
            }
            return Ok(out);
        }
        let name = cur.file_name().with_context(|| format!("cannot resolve {}", p.display()))?.to_owned();
        missing.push(name);
        cur = match cur.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
            _ => PathBuf::from("."),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn home() -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir(t.path().join("data")).unwrap();
        let key = edge_core::signature::CapsuleSigningKey::generate();
        std::fs::write(t.path().join("a.pub"), key.public_key_pem()).unwrap();
        t
    }

    /// The example policy (trusting `home`'s key `a`) and graph.
    fn example_documents(t: &tempfile::TempDir) -> (String, String) {
        let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/policy");
        let pem = std::fs::read_to_string(t.path().join("a.pub")).unwrap();
        let policy = std::fs::read_to_string(examples.join("policy.toml")).unwrap();
        let policy = format!("{policy}\n[[signers]]\nname = \"a\"\npublic_key = \"\"\"{pem}\"\"\"\nmounts = [\"*\"]\n");
        (policy, std::fs::read_to_string(examples.join("graph.toml")).unwrap())
    }

    const BASE: &str = "[runner]\nname = \"r\"\ndangerous_run_without_policy = true\n[[signers]]\nname = \"a\"\npublic_key = \"a.pub\"\n[mounts.data]\npath = \"data\"\nwritable = true\n";

    fn err(text: &str) -> String {
        let t = home();
        format!("{:#}", RunnerConfig::from_toml(text, t.path()).unwrap_err())
    }

    #[test]
    fn the_config_shown_keeps_no_secret_whatever_form_the_file_takes() {
        let secrets = ["env-secret", "path-secret", "query-secret", "comment-secret", "frag-secret"];
        // The same settings as tables, inline tables and dotted keys, with
        // a comment and a URL that does not parse.
        let forms = [
            "[runner]\nname = \"r\" # comment-secret\n[env]\nTOKEN = \"env-secret\"\nN = 3\n\
             [[notify.webhooks]]\nurl = \"https://hooks.example/T/path-secret?token=query-secret#frag-secret\"\n\
             [[notify.webhooks]]\nurl = \"not a url path-secret\"\n",
            "runner = { name = \"r\" }\nenv = { TOKEN = \"env-secret\", N = 3 }\nnotify = { webhooks = [\
             { url = \"https://hooks.example/T/path-secret?token=query-secret#frag-secret\" }, \
             { url = \"not a url path-secret\" } ] }\n",
            "runner.name = \"r\"\nenv.TOKEN = \"env-secret\"\nenv.N = 3\n\
             notify.webhooks = [{ url = \"https://hooks.example/T/path-secret?token=query-secret#frag-secret\" }, \
             { url = \"not a url path-secret\" }]\n",
        ];
        let shown_all: Vec<String> = forms.iter().map(|f| shown(f).unwrap()).collect();
        for s in &shown_all {
            for secret in secrets {
                assert!(!s.contains(secret), "{secret} in {s}");
            }
        }
        assert!(shown_all.iter().all(|s| s == &shown_all[0]), "one config, one text: {shown_all:?}");
        let t: toml::Table = toml::from_str(&shown_all[0]).unwrap();
        assert_eq!(t["runner"]["name"].as_str(), Some("r"), "what is not secret stays");
        assert_eq!(t["env"]["TOKEN"].as_str(), Some(REDACTED));
        assert_eq!(t["env"]["N"].as_str(), Some(REDACTED), "every env value, whatever its type");
        let hooks = t["notify"]["webhooks"].as_array().unwrap();
        let first = hooks[0]["url"].as_str().unwrap();
        assert!(first.starts_with("https://hooks.example:443/…(path sha256:"), "{first}");
        assert_eq!(hooks[1]["url"].as_str(), Some(REDACTED));
        assert!(shown("[runner\n").is_err());
    }

    /// toml's own form of the error loading `text` stops at.
    fn toml_err(text: &str) -> String {
        toml::from_str::<RawConfig>(text).unwrap_err().to_string()
    }

    #[test]
    fn a_config_that_does_not_parse_is_reported_by_line_and_column_without_its_text() {
        for (text, secret, said) in [
            // An unterminated string: toml quotes the line.
            (
                format!("{BASE}[[notify.webhooks]]\nurl = \"https://hooks.example/T/path-secret\n"),
                "path-secret",
                "TOML parse error at line 11, column 43: invalid basic string, expected `\"`",
            ),
            // serde quotes the value it refused, by its kind.
            (format!("{BASE}[env]\nPIN = 987654\n"), "987654", "line 11, column 7: invalid type: integer `…`"),
            (format!("{BASE}[env]\nON = true\n"), "true", "invalid type: boolean `…`, expected a string"),
            (format!("{BASE}[env]\nPI = 3.25\n"), "3.25", "invalid type: floating point `…`"),
            (
                format!("{BASE}[notify]\nwebhooks = \"https://hooks.example/\\\"quoted-s3cr3t\\\" tail-s3cr3t\"\n"),
                "s3cr3t",
                "line 11, column 12: invalid type: string \"…\", expected a sequence",
            ),
        ] {
            assert!(toml_err(&text).contains(secret), "toml's own form quotes it: {}", toml_err(&text));
            let e = err(&text);
            assert!(!e.contains(secret), "{e}");
            assert!(e.contains(said), "`{said}` not in: {e}");
            assert!(e.contains("not quoted here: it may hold secrets"), "{e}");
        }
        // What is a name stays named: an unknown field, the fields a table
        // takes, the token the parser expected.
        let e = err(&format!("{BASE}[server]\nlisten = \"127.0.0.1:0\"\nlisten_secret = 1\n"));
        assert!(e.contains("unknown field `listen_secret`, expected one of `listen`"), "{e}");
        // A key of the file that is not a name is not shown: it may hold
        // anything, backticks and line breaks too.
        for key in ["\"x`hunter2\"", "\"x\\nhunter2\"", "\"hunter2 with spaces\""] {
            let e = err(&format!("{BASE}[server]\nlisten = \"127.0.0.1:0\"\n{key} = 1\n"));
            assert!(e.contains("unknown field `…`, expected one of `listen`") && !e.contains("hunter2"), "{e}");
        }
        let e = err(&format!("{BASE}[env]\nX \"y\"\n"));
        assert!(e.contains("line 11, column 3") && e.contains("key with no value, expected `=`"), "{e}");
        assert_eq!(values_masked("a `b c` d `x.y-1` e `\"` f `1"), "a `…` d `x.y-1` e `\"` f `…");
        assert_eq!(values_masked("string \"a\\\\\" b\" c"), "string \"…\" b\"…", "an escaped backslash ends none");
    }

    #[test]
    fn a_config_error_shown_quotes_no_line_of_the_file() {
        let text = format!("{BASE}[[notify.webhooks]]\nurl = \"https://hooks.example/T/path-secret\n");
        let full = toml_err(&text);
        assert!(full.contains("path-secret"), "TOML quotes the line: {full}");
        let shown = error_shown(&full);
        assert!(!shown.contains("path-secret"), "{shown}");
        assert!(shown.contains("TOML parse error at line 11, column"), "{shown}");
        // Values in a message: a webhook given as a string, an env value of
        // another type, a URL a check quotes (an endpoint's of the wrong
        // scheme).
        for (text, secret) in [
            (format!("{BASE}[notify]\nwebhooks = [\"https://hooks.example/T/path-secret\"]\n"), "path-secret"),
            (format!("{BASE}[env]\nPIN = 987654\n"), "987654"),
            (
                format!(
                    "{BASE}[endpoints.e]\nurl = \"ftp://h.example/path-secret\"\nnode = \"n\"\nmethods = [\"GET\"]\n"
                ),
                "path-secret",
            ),
        ] {
            let full = if text.contains("ftp:") { err(&text) } else { toml_err(&text) };
            assert!(full.contains(secret), "the error quotes it: {full}");
            let shown = error_shown(&full);
            assert!(!shown.contains(secret), "{shown}");
        }
        assert_eq!(error_shown("a \"b\" c `d` e\n12 | f\n   |  ^\ng `h"), "a \"…\" c `…` e\ng `…");
        // A string with a quote in it, as serde writes it, is hidden whole.
        assert_eq!(error_shown("string \"a\\\"s3cr3t\", expected x"), "string \"…\", expected x");
        // What it shows, it shows unchanged: an export tells a refusal a
        // runner recorded before it from one recorded since by that.
        for e in ["a \"b\" c `d` e\n12 | f\n   |  ^\ng `h", "x \"unclosed", &full, "no quotes"] {
            assert_eq!(error_shown(&error_shown(e)), error_shown(e), "{e}");
        }
        // Which records an export counts as quoting the file: those whose
        // error masking changes, not one already shown, whatever its line
        // breaks.
        assert!(quotes_config(&full) && quotes_config("invalid type: string \"x\""));
        for e in [&error_shown(&full), "no quotes", "a\n\n", "a\r\r\n", "mount /x\n\n1 | y", "`…` \"…\""] {
            assert!(!quotes_config(&error_shown(e)), "{e:?}");
        }
        assert_eq!(
            error_shown("tiers.0.approvals: tiers above 0 need one"),
            "tiers.0.approvals: tiers above 0 need one"
        );
    }

    #[test]
    fn a_good_config_resolves_paths_and_defaults() {
        let t = home();
        let c = RunnerConfig::from_toml(BASE, t.path()).unwrap();
        assert_eq!(c.state_dir, t.path().join("state"));
        assert_eq!(c.cache_dir, t.path().join("state/cache"));
        assert!(c.mounts["data"].path.is_absolute() && c.mounts["data"].writable);
        assert!(c.ceiling.imports.contains("wasi:filesystem/types"));
        assert!(!c.ceiling.imports.iter().any(|i| i.starts_with("wasi:sockets")));
        assert_eq!(c.governance.as_ref().unwrap().signers.signers().len(), 1);
    }

    #[test]
    fn bad_configs_name_the_problem() {
        assert!(err(&format!("{BASE}surprise = 1\n")).contains("surprise"));
        assert!(err(&BASE.replace("path = \"data\"", "path = \"missing\"")).contains("does not exist"));
        assert!(err(&format!("{BASE}[grant]\nimports = [\"wasi:sockets/tcp\"]\n")).contains("cannot be granted"));
        assert!(
            err(&format!("{BASE}[[signers]]\nname = \"k\"\nidentity = \"x\"\nissuer = \"y\"\n"))
                .contains("sigstore.trusted_root")
        );
        assert!(err(&format!("{BASE}[[signers]]\nname = \"a\"\npublic_key = \"a.pub\"\n")).contains("twice"));
        let limits = "[limits.default]\nmemory_mib = 64\ncpu_ms = 1\nwall_ms = 1\noutput_kib = 1\nmax_plan_changes = 1\n\
                      [limits.ceiling]\nmemory_mib = 32\ncpu_ms = 1\nwall_ms = 1\noutput_kib = 1\nmax_plan_changes = 1\n";
        assert!(err(&format!("{BASE}{limits}")).contains("limits.memory_mib"));
        assert!(
            err(&BASE.replace("public_key = \"a.pub\"", "public_key = \"a.pub\"\nidentity = \"x\""))
                .contains("not a mix")
        );
        let nested_state =
            BASE.replace("[runner]\nname = \"r\"\n", "[runner]\nname = \"r\"\nstate_dir = \"data/state\"\n");
        assert!(err(&nested_state).contains("overlaps"));
        assert!(err(&format!("{BASE}[mounts.inner]\npath = \"data\"\n")).contains("inside mount"));
    }

    /// The config `exec` hands a run over with names exactly what the full
    /// load names — else every hand-over would be refused, or, worse, one
    /// accepted under other documents — while its graph is only hashed: a
    /// graph that does not compile (or lost the node a mount maps to)
    /// changes the digest the serving runner compares, and a full load
    /// still refuses it.
    #[test]
    fn the_config_read_to_hand_over_names_what_the_full_load_names() {
        let t = home();
        let (policy, graph) = example_documents(&t);
        std::fs::write(t.path().join("policy.toml"), policy).unwrap();
        std::fs::write(t.path().join("graph.toml"), &graph).unwrap();
        std::fs::write(
            t.path().join("runner.toml"),
            "[runner]\nname = \"r\"\n[policy]\nfile = \"policy.toml\"\ngraph = \"graph.toml\"\n\
             [mounts.data]\npath = \"data\"\nwritable = true\nnode = \"tls-certs\"\n",
        )
        .unwrap();
        let path = t.path().join("runner.toml");
        let full = RunnerConfig::load(&path).unwrap();
        let view = RunnerConfig::load_to_hand_over(&path).unwrap();
        assert_eq!(view, HandOverView::of(&full).unwrap());
        assert!(view.digests.graph.is_some() && view.digests.policy.is_some());
        assert_eq!(full.governance.as_ref().unwrap().policy.as_ref().unwrap().graph().len(), 8);

        for broken in
            [format!("{graph}\n[[nodes]]\nid = \"has space\"\nkind = \"service\"\n"), graph.replace("tls-certs", "tls")]
        {
            std::fs::write(t.path().join("graph.toml"), &broken).unwrap();
            let e = format!("{:#}", RunnerConfig::load(&path).unwrap_err());
            assert!(e.contains("graph") || e.contains("tls-certs"), "{e}");
            let other = RunnerConfig::load_to_hand_over(&path).unwrap();
            assert_ne!(other.digests.graph, view.digests.graph, "the serving runner sees another graph");
            assert_eq!(other.digests.policy, view.digests.policy);
        }
        // Everything but the graph is still read and checked in full.
        std::fs::write(t.path().join("policy.toml"), "version = 1\n").unwrap();
        assert!(format!("{:#}", RunnerConfig::load_to_hand_over(&path).unwrap_err()).contains("policy"));
    }

    /// The commands that only read the store read `[runner]` as a full
    /// load does and nothing else the config names: a broken policy, graph
    /// or mount does not stop them, a broken `[runner]` or file does.
    #[test]
    fn the_store_view_is_the_full_loads_and_needs_nothing_else_the_config_names() {
        let t = home();
        let (policy, graph) = example_documents(&t);
        let path = t.path().join("runner.toml");
        let config = "[runner]\nname = \"r\"\nstate_dir = \"var/state\"\nidentity_key = \"/keys/id.key\"\n\
                      [policy]\nfile = \"policy.toml\"\ngraph = \"graph.toml\"\n\
                      [mounts.data]\npath = \"data\"\nwritable = true\nnode = \"tls-certs\"\n";
        let write_all = |policy: &str, graph: &str, config: &str| {
            std::fs::write(t.path().join("policy.toml"), policy).unwrap();
            std::fs::write(t.path().join("graph.toml"), graph).unwrap();
            std::fs::write(&path, config).unwrap();
        };
        write_all(&policy, &graph, config);
        let view = RunnerConfig::load_store_view(&path).unwrap();
        assert_eq!(view, RunnerConfig::load(&path).unwrap().store_view());
        assert_eq!(
            view,
            StoreView {
                name: "r".into(),
                state_dir: t.path().join("var/state"),
                identity_key: PathBuf::from("/keys/id.key")
            }
        );
        assert_eq!(view.evidence_dir(), t.path().join("var/state/evidence"));
        // Broken elsewhere: the full load refuses, the view is the same.
        let no_mount = config.replace("path = \"data\"", "path = \"gone\"");
        for (policy, graph, config) in [
            ("version = 1\n", graph.as_str(), config),
            (policy.as_str(), "[[nodes]]\nid = \"has space\"\n", config),
            (policy.as_str(), graph.as_str(), no_mount.as_str()),
        ] {
            write_all(policy, graph, config);
            assert!(RunnerConfig::load(&path).is_err());
            assert_eq!(RunnerConfig::load_store_view(&path).unwrap(), view);
        }
        // Broken where the view reads: both refuse, saying the same.
        write_all(&policy, &graph, config);
        for config in [
            config.replace("name = \"r\"", "name = \"r s\""),
            config.replace("writable = true", "writable = \"yes\""),
            config.replace("[runner]\n", "[runner]\nnmae = 1\n"),
            config.replace("[mounts.data]", "[mounts.data"),
        ] {
            std::fs::write(&path, &config).unwrap();
            let full = format!("{:#}", RunnerConfig::load(&path).unwrap_err());
            assert_eq!(format!("{:#}", RunnerConfig::load_store_view(&path).unwrap_err()), full);
        }
    }

    #[test]
    fn no_policy_fails_closed_unless_the_dangerous_switch_is_set() {
        let without = BASE.replace("dangerous_run_without_policy = true\n", "");
        let e = err(&without);
        assert!(e.contains("no `[policy]`") && e.contains("dangerous_run_without_policy"), "{e}");
        let t = home();
        let c = RunnerConfig::from_toml(BASE, t.path()).unwrap();
        assert_eq!(c.dangerous, ["dangerous_run_without_policy"], "the switch is carried into evidence");
    }

    /// The passkeys file: read beside allowed_signers when it exists, a
    /// configured one must exist, a bad one names itself.
    #[test]
    fn passkeys_load_beside_allowed_signers_or_where_configured() {
        let t = home();
        std::fs::write(t.path().join("allowed_signers"), "").unwrap();
        std::fs::write(t.path().join("roles.toml"), "").unwrap();
        let approvers = format!("{BASE}[approvers]\nallowed_signers = \"allowed_signers\"\nroles = \"roles.toml\"\n");
        let load = |text: &str| RunnerConfig::from_toml(text, t.path());
        let c = load(&approvers).unwrap();
        assert!(
            c.governance.as_ref().unwrap().approvers.as_ref().unwrap().passkeys_text.is_none(),
            "no file, no passkeys"
        );
        let empty = format!("{{\"schema\":\"{}\",\"credentials\":[]}}", edge_core::approval::PASSKEYS_SCHEMA);
        std::fs::write(t.path().join("passkeys.json"), &empty).unwrap();
        let c = load(&approvers).unwrap();
        assert_eq!(
            c.governance.as_ref().unwrap().approvers.as_ref().unwrap().passkeys_text.as_deref(),
            Some(empty.as_str()),
            "the default file"
        );
        let e = format!("{:#}", load(&format!("{approvers}passkeys = \"elsewhere.json\"\n")).unwrap_err());
        assert!(e.contains("elsewhere.json"), "{e}");
        std::fs::write(t.path().join("passkeys.json"), "{\"schema\":\"v0\",\"credentials\":[]}").unwrap();
        let e = format!("{:#}", load(&approvers).unwrap_err());
        assert!(e.contains("passkeys.json") && e.contains("schema"), "{e}");
    }
}
