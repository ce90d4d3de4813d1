//! `edge-runner check`: everything `serve` needs, checked at once, every
//! problem listed with its cause and the next step.
//!
//! ```text
//!  runner.toml ─► TOML ─► RunnerConfig::from_toml (policy, graph, approver
//!      │                  registry, signers, [server], [console], …: its
//!      │                  first error; policy and registry again on their
//!      │                  own when it fails, so both are reported)
//!      └─► the paths it names, each checked on its own:
//!            identity key ─ mode, owner, parses
//!            [server]     ─ key (mode, owner, parses, matches the cert),
//!                           cert (parses, chains to server_ca, validity,
//!                           SANs cover listen), client_ca (parses, validity)
//!            [console]    ─ its own cert/key likewise; SANs cover console.url
//!            mounts       ─ exist, directories, writable where granted
//!            state, staging, cache ─ directories or creatable, writable,
//!                           not world-writable; the state directory
//!                           neither group-writable nor another user's
//!                           (a warning: `exec` could not hand runs over)
//!            ports        ─ server.listen, console.listen and probes.listen can be
//!                           bound now (a probe socket: its directory exists, the
//!                           path is free or a stale socket)
//! ```
//!
//! `serve` runs the same check before it binds its listeners and refuses to
//! start on an error; warnings are logged. What counts as which
//! (`docs/operations.md`, "Checking a runner home"): a certificate that has
//! expired, is not valid yet, does not chain to its CA or does not name the
//! address clients use is an error; one that expires within
//! [`EXPIRY_WARNING`] is a warning (the runner still serves until then, and
//! `check` exits non-zero so a scheduled check notices).
//!
//! The certificate checks (`certs.rs`) take bytes and `now`; files,
//! sockets and the clock are read here.

mod certs;

pub use certs::certificate;

use std::ffi::CString;
use std::net::SocketAddr;
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde::Serialize;

use crate::config::RunnerConfig;
use certs::{listen_names, names, pem_certs, validity};

/// A certificate expiring sooner than this is reported (a warning).
pub const EXPIRY_WARNING: Duration = Duration::from_secs(30 * 86_400);

/// How bad a problem is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// `serve` refuses to start.
    Error,
    /// `serve` starts and logs it; `check` still exits non-zero.
    Warning,
}

/// One thing wrong, what caused it and what to do next.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    pub severity: Severity,
    /// What is wrong (names the file or setting; may quote file contents:
    /// neutralise before showing it).
    pub what: String,
    /// The next step.
    pub fix: String,
}

impl Problem {
    fn error(what: impl Into<String>, fix: impl Into<String>) -> Self {
        Self { severity: Severity::Error, what: what.into(), fix: fix.into() }
    }
    fn warning(what: impl Into<String>, fix: impl Into<String>) -> Self {
        Self { severity: Severity::Warning, what: what.into(), fix: fix.into() }
    }
}

/// Whether any problem stops `serve`.
pub fn has_errors(problems: &[Problem]) -> bool {
    problems.iter().any(|p| p.severity == Severity::Error)
}

/// Check the runner home configured in `config`: the config and everything
/// it names, the certificates against the clock, and the ports (bound and
/// released at once).
pub fn check(config: &Path) -> Vec<Problem> {
    let now = match std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => d,
        Err(_) => {
            return vec![Problem::error(
                "the system clock is before 1970",
                "set the clock (certificate validity cannot be checked, and evidence needs the time)",
            )];
        }
    };
    let mut problems = Vec::new();
    let text = match std::fs::read_to_string(config) {
        Ok(t) => t,
        Err(e) => {
            problems.push(Problem::error(
                format!("cannot read runner config {}: {e}", config.display()),
                "give the path of the runner's runner.toml (`edge-runner init DIR` creates one)",
            ));
            return problems;
        }
    };
    let table: toml::Table = match toml::from_str(&text) {
        Ok(t) => t,
        Err(e) => {
            problems.push(Problem::error(
                format!(
                    "runner config {} is not valid TOML: {}",
                    config.display(),
                    crate::config::toml_error(&e, &text)
                ),
                format!(
                    "correct the file at that line and column, then run `edge-runner check --config {}`",
                    config.display()
                ),
            ));
            return problems;
        }
    };
    let base = match config.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let layout = Layout::read(&table, &base);

    identity_key(&layout.identity_key, &mut problems);
    let mut mount_problems = Vec::new();
    for m in &layout.mounts {
        if mount(m, &mut problems) {
            mount_problems.push(m.name.clone());
        }
    }
    for (setting, dir) in [
        ("runner.state_dir", &layout.state_dir),
        ("runner.staging_dir", &layout.staging),
        ("runner.cache_dir", &layout.cache),
    ] {
        directory(setting, dir, &mut problems);
    }
    if let Some(listen) = &layout.probes {
        let taken = |c: &Option<String>| c.as_deref().and_then(|l| l.parse::<SocketAddr>().ok());
        let others = [
            layout.server.as_ref().and_then(|s| taken(&s.listen)),
            layout.console.as_ref().and_then(|c| taken(&c.listen)),
        ];
        probes(listen, &others, &mut problems);
    }
    match &layout.server {
        Some(s) => server(s, layout.console.as_ref(), now, &mut problems),
        None if table.contains_key("spool") || table.contains_key("nats") => {}
        None => problems.push(Problem::error(
            format!(
                "runner config {} has no intake ([server], [spool] or [nats]): `serve` has nothing to take submissions from",
                config.display()
            ),
            "add [server] with listen, cert, key and client_ca (`edge-runner init` writes one), [spool] with \
             dir, or [nats] with url (docs/operations.md)",
        )),
    }

    // Everything `RunnerConfig::load` validates, with its own messages. It
    // stops at its first error: a mount already reported above is not
    // repeated, and the policy and approver registry are checked on their
    // own so that a problem in one does not hide one in the other.
    if let Err(e) = RunnerConfig::from_toml(&text, &base) {
        let msg = format!("{e:#}");
        let fix = format!(
            "edit {} (or the file the message names) as it says, then run `edge-runner check --config {}` again",
            config.display(),
            config.display()
        );
        let known = mount_problems.iter().any(|m| msg.starts_with(&format!("mount `{m}`")));
        let mut first = Vec::new();
        if !known {
            first.push(Problem::error(format!("runner config {} is invalid: {msg}", config.display()), fix.clone()));
        }
        for other in layout.independent_files() {
            if let Err(e) = other {
                let m = format!("{e:#}");
                if m != msg && !msg.ends_with(&m) {
                    first.push(Problem::error(m, fix.clone()));
                }
            }
        }
        problems.splice(0..0, first);
    }
    problems
}

/// The paths and addresses the config names, read from its TOML with the
/// same defaults `RunnerConfig` applies (so they can be checked even when the
/// config as a whole does not load).
#[derive(Debug)]
struct Layout {
    state_dir: PathBuf,
    staging: PathBuf,
    cache: PathBuf,
    identity_key: PathBuf,
    mounts: Vec<MountPaths>,
    server: Option<ServerPaths>,
    console: Option<ConsolePaths>,
    policy: Option<(PathBuf, PathBuf)>,
    approvers: Option<(PathBuf, PathBuf)>,
    /// `probes.listen`: a TCP address, or a Unix socket path (resolved).
    probes: Option<Result<SocketAddr, PathBuf>>,
}

#[derive(Debug)]
struct MountPaths {
    name: String,
    path: PathBuf,
    writable: bool,
}

#[derive(Debug)]
struct ServerPaths {
    listen: Option<String>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    client_ca: Option<PathBuf>,
    /// `server_ca`, else `client_ca`.
    server_ca: Option<PathBuf>,
    server_ca_set: bool,
}

#[derive(Debug)]
struct ConsolePaths {
    listen: Option<String>,
    url: Option<String>,
    /// Its own certificate and key, when not the server's.
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
}

impl Layout {
    fn read(t: &toml::Table, base: &Path) -> Self {
        let resolve = |p: &str| {
            let p = Path::new(p);
            if p.is_absolute() { p.to_path_buf() } else { base.join(p) }
        };
        let get = |section: &str, key: &str| t.get(section).and_then(|s| s.get(key)).and_then(toml::Value::as_str);
        let path = |section: &str, key: &str| get(section, key).map(resolve);
        let state_dir = path("runner", "state_dir").unwrap_or_else(|| base.join("state"));
        let mounts = t
            .get("mounts")
            .and_then(toml::Value::as_table)
            .into_iter()
            .flatten()
            .filter_map(|(name, m)| {
                Some(MountPaths {
                    name: name.clone(),
                    path: resolve(m.get("path")?.as_str()?),
                    writable: m.get("writable").and_then(toml::Value::as_bool).unwrap_or(false),
                })
            })
            .collect();
        let server = t.get("server").map(|_| ServerPaths {
            listen: get("server", "listen").map(str::to_owned),
            cert: path("server", "cert"),
            key: path("server", "key"),
            client_ca: path("server", "client_ca"),
            server_ca: path("server", "server_ca").or_else(|| path("server", "client_ca")),
            server_ca_set: get("server", "server_ca").is_some(),
        });
        let console = t.get("console").map(|_| ConsolePaths {
            listen: get("console", "listen").map(str::to_owned),
            url: get("console", "url").map(str::to_owned),
            cert: path("console", "cert"),
            key: path("console", "key"),
        });
        Layout {
            staging: path("runner", "staging_dir").unwrap_or_else(|| state_dir.join("staging")),
            cache: path("runner", "cache_dir").unwrap_or_else(|| state_dir.join("cache")),
            identity_key: path("runner", "identity_key").unwrap_or_else(|| state_dir.join("identity.key")),
            state_dir,
            mounts,
            server,
            console,
            policy: path("policy", "file").zip(path("policy", "graph")),
            approvers: path("approvers", "allowed_signers").zip(path("approvers", "roles")),
            probes: get("probes", "listen").and_then(|l| match l.strip_prefix("unix:") {
                Some(p) if !p.is_empty() => Some(Err(resolve(p))),
                Some(_) => None,
                None => l.parse().ok().map(Ok),
            }),
        }
    }

    /// The policy (with its graph) and the approver registry, each loaded
    /// on its own.
    fn independent_files(&self) -> Vec<anyhow::Result<()>> {
        let mut out = Vec::new();
        if let Some((file, graph)) = &self.policy {
            out.push(crate::policy_files::PolicySet::load(file, graph).map(drop));
        }
        if let Some((signers, roles)) = &self.approvers {
            out.push((|| {
                use anyhow::Context as _;
                let st = std::fs::read_to_string(signers)
                    .with_context(|| format!("cannot read allowed_signers {}", signers.display()))?;
                let rt = std::fs::read_to_string(roles)
                    .with_context(|| format!("cannot read approver roles {}", roles.display()))?;
                edge_core::approval::Registry::parse(
                    &st,
                    &signers.display().to_string(),
                    &rt,
                    &roles.display().to_string(),
                )?;
                Ok(())
            })());
        }
        out
    }
}

/// The effective user id of this process.
pub(crate) fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Whether a key file owned by `owner` may be used by a process running as
/// `me`: its own files and root's. Another user could replace the key or
/// open its mode. Root (an administrator checking the service's home) does
/// not judge owners.
fn owner_ok(me: u32, owner: u32) -> bool {
    me == 0 || owner == me || owner == 0
}

/// Whether this process may access `path` as `mode` (`libc::W_OK`, …).
fn may(path: &Path, mode: libc::c_int) -> bool {
    let Ok(c) = CString::new(path.as_os_str().as_bytes()) else { return false };
    // SAFETY: `c` is a valid NUL-terminated string for the call's duration.
    unsafe { libc::access(c.as_ptr(), mode) == 0 }
}

/// A private key file: present, readable by its owner only, owned by the
/// user the runner runs as (or root). Returns its bytes when readable.
fn private_key_file(what: &str, setting: &str, path: &Path, problems: &mut Vec<Problem>) -> Option<Vec<u8>> {
    let p = path.display();
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) => {
            problems.push(Problem::error(
                format!("{what} {p} ({setting}) cannot be read: {e}"),
                format!("put the key at {p} (mode 0600), or point {setting} at it"),
            ));
            return None;
        }
    };
    if !meta.is_file() {
        problems.push(Problem::error(
            format!("{what} {p} ({setting}) is not a file"),
            format!("point {setting} at the PEM key file"),
        ));
        return None;
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        problems.push(Problem::error(
            format!("{what} {p} has mode {mode:04o}: others on this machine can read it"),
            format!("run `chmod 600 {p}` (and replace the key if others may have copied it)"),
        ));
    }
    let me = euid();
    if !owner_ok(me, meta.uid()) {
        problems.push(Problem::error(
            format!("{what} {p} is owned by uid {}, not by uid {me} that runs this check", meta.uid()),
            format!("run `chown {me} {p}` (the user that runs the runner must own its keys)"),
        ));
    }
    match std::fs::read(path) {
        Ok(b) => Some(b),
        Err(e) => {
            problems.push(Problem::error(
                format!("{what} {p} cannot be read: {e}"),
                "make it readable by the user that runs the runner (`chown` it, mode 0600)".to_owned(),
            ));
            None
        }
    }
}

fn identity_key(path: &Path, problems: &mut Vec<Problem>) {
    if !path.exists() {
        // Created on first start (mode 0600); its directory is checked with
        // the state directory.
        return;
    }
    let Some(bytes) = private_key_file("identity key", "runner.identity_key", path, problems) else { return };
    let parsed = std::str::from_utf8(&bytes).ok().and_then(|pem| {
        edge_core::signature::CapsuleSigningKey::from_pkcs8_pem(&zeroize::Zeroizing::new(pem.to_owned())).ok()
    });
    if parsed.is_none() {
        problems.push(Problem::error(
            format!("identity key {} is not an Ed25519 private key (PKCS#8 PEM)", path.display()),
            "restore the runner's identity key from backup (a new key cannot sign this runner's existing log: \
             docs/operations.md, \"The runner's identity key\")",
        ));
    }
}

/// A mount: exists, is a directory, accessible as granted. True when a
/// problem was reported.
fn mount(m: &MountPaths, problems: &mut Vec<Problem>) -> bool {
    let (name, p) = (&m.name, m.path.display());
    let fix_path = format!("create it, or correct mounts.{name}.path (or remove the mount)");
    match std::fs::metadata(&m.path) {
        Err(e) => {
            problems.push(Problem::error(format!("mount `{name}`: path {p} does not exist ({e})"), fix_path));
            true
        }
        Ok(meta) if !meta.is_dir() => {
            problems.push(Problem::error(format!("mount `{name}`: {p} is not a directory"), fix_path));
            true
        }
        Ok(_) if m.writable && !may(&m.path, libc::W_OK | libc::X_OK) => {
            problems.push(Problem::error(
                format!("mount `{name}` is granted writable but {p} is not writable by uid {}", euid()),
                format!(
                    "give the runner's user write access to {p} (and add it to ReadWritePaths in the systemd unit), \
                     or set mounts.{name}.writable = false"
                ),
            ));
            true
        }
        Ok(_) if !may(&m.path, libc::R_OK | libc::X_OK) => {
            problems.push(Problem::error(
                format!("mount `{name}`: {p} is not readable by uid {}", euid()),
                format!("give the runner's user read access to {p}"),
            ));
            true
        }
        Ok(_) => false,
    }
}

/// A directory the runner writes (state, staging, cache): a directory, or
/// creatable; writable; not world-writable.
fn directory(setting: &str, dir: &Path, problems: &mut Vec<Problem>) {
    let d = dir.display();
    match std::fs::metadata(dir) {
        Ok(meta) if !meta.is_dir() => problems.push(Problem::error(
            format!("{setting} {d} is not a directory"),
            format!("move the file away, or point {setting} at a directory"),
        )),
        Ok(meta) => {
            let mode = meta.permissions().mode() & 0o7777;
            if mode & 0o002 != 0 {
                problems.push(Problem::error(
                    format!("{setting} {d} has mode {mode:04o}: anyone on this machine can write to it"),
                    format!("run `chmod 700 {d}` (the runner's state must be writable by the runner only)"),
                ));
            }
            if !may(dir, libc::W_OK | libc::X_OK) {
                problems.push(Problem::error(
                    format!("{setting} {d} is not writable by uid {}", euid()),
                    format!("run `chown -R <runner user> {d}`, or run the runner as its owner"),
                ));
            }
            // `serve` makes the socket `exec` hands runs to only in a state
            // directory that is the runner user's alone
            // (`crate::intake::local::bind`).
            if setting == "runner.state_dir" && mode & 0o022 == 0o020 {
                problems.push(Problem::warning(
                    format!(
                        "{setting} {d} has mode {mode:04o}: its group may write to it, so `serve` makes no socket \
                         there for `edge-runner exec`, which then says the store is in use while the runner serves"
                    ),
                    format!("run `chmod g-w {d}` (0700, or 0750 for a group that reads)"),
                ));
            }
            if setting == "runner.state_dir" && euid() != 0 && meta.uid() != euid() {
                problems.push(Problem::warning(
                    format!(
                        "{setting} {d} is owned by uid {}, not by uid {} that checks it: `serve` makes no socket \
                         there for `edge-runner exec`",
                        meta.uid(),
                        euid()
                    ),
                    format!("run `chown <runner user> {d}`, and run the runner as its owner"),
                ));
            }
        }
        Err(_) => {
            // Created at start: the nearest existing ancestor must be writable.
            let mut parent = dir.parent();
            while let Some(p) = parent {
                if p.as_os_str().is_empty() {
                    parent = Some(Path::new("."));
                    continue;
                }
                if p.exists() {
                    if !may(p, libc::W_OK | libc::X_OK) {
                        problems.push(Problem::error(
                            format!(
                                "{setting} {d} does not exist and cannot be created: {} is not writable",
                                p.display()
                            ),
                            format!("create {d} owned by the runner's user (mode 0700)"),
                        ));
                    }
                    return;
                }
                parent = p.parent();
            }
        }
    }
}

fn server(s: &ServerPaths, console: Option<&ConsolePaths>, now: Duration, problems: &mut Vec<Problem>) {
    let listen = s.listen.as_deref().and_then(|l| l.parse::<SocketAddr>().ok());
    if let Some(addr) = listen {
        port("server.listen", addr, problems);
    }
    // The client CA: every client certificate must chain to it.
    let client_ca = s.client_ca.as_deref().and_then(|p| ca_file("server.client_ca", p, now, problems));
    let server_ca = match (&s.server_ca, s.server_ca_set) {
        (Some(p), true) => ca_file("server.server_ca", p, now, problems).map(|c| (p.as_path(), c)),
        (Some(p), false) => client_ca.clone().map(|c| (p.as_path(), c)),
        (None, _) => None,
    };
    let ca_setting = if s.server_ca_set { "server.server_ca" } else { "server.client_ca" };
    let wanted = listen.map(listen_names).unwrap_or_default();
    if let (Some(cert), Some(key)) = (&s.cert, &s.key) {
        let ca = server_ca.as_ref().map(|(p, c)| (ca_setting, *p, c.as_slice()));
        tls_pair(
            "server certificate",
            "server.cert",
            "server.key",
            cert,
            key,
            ca,
            &wanted,
            "server.listen",
            now,
            problems,
        );
    }
    if let Some(c) = console {
        let clisten = c.listen.as_deref().and_then(|l| l.parse::<SocketAddr>().ok());
        if let Some(addr) = clisten {
            if addr.port() != 0 && listen.is_some_and(|l| l.port() == addr.port()) {
                problems.push(Problem::error(
                    format!("console.listen {addr} uses the same port as server.listen"),
                    "give the console its own port (e.g. 8444)",
                ));
            } else {
                port("console.listen", addr, problems);
            }
        }
        // The name browsers use: console.url's host, else localhost.
        let host = c
            .url
            .as_deref()
            .and_then(|u| url::Url::parse(u).ok())
            .and_then(|u| u.host_str().map(|h| h.trim_start_matches('[').trim_end_matches(']').to_owned()))
            .unwrap_or_else(|| "localhost".to_owned());
        let wanted = match crate::server::tls::server_name(&host) {
            Ok(n) => vec![n],
            Err(_) => Vec::new(),
        };
        match (&c.cert, &c.key) {
            (Some(cert), Some(key)) => tls_pair(
                "console certificate",
                "console.cert",
                "console.key",
                cert,
                key,
                None,
                &wanted,
                "console.url",
                now,
                problems,
            ),
            // The server's pair: checked above; it must also name the console's host.
            _ => {
                if let Some(cert) = &s.cert
                    && let Ok(bytes) = std::fs::read(cert)
                    && let Ok(chain) = pem_certs(&bytes)
                    && let Some(p) =
                        names("server certificate (also the console's)", cert, &chain[0], &wanted, "console.url")
                {
                    problems.push(p);
                }
            }
        }
    }
}

/// `probes.listen`: a TCP port free now and not the API's or the console's;
/// a Unix socket whose directory exists and whose path is free or a stale
/// socket (what `serve` replaces), never something else.
fn probes(listen: &Result<SocketAddr, PathBuf>, others: &[Option<SocketAddr>], problems: &mut Vec<Problem>) {
    use crate::server::probes::SocketPath;
    match listen {
        Ok(addr) if addr.port() != 0 && others.iter().flatten().any(|o| o.port() == addr.port()) => {
            problems.push(Problem::error(
                format!("probes.listen {addr} uses the same port as server.listen or console.listen"),
                "give the probes their own port (e.g. 127.0.0.1:9464) or a Unix socket",
            ));
        }
        Ok(addr) => port("probes.listen", *addr, problems),
        Err(path) => {
            let shown = path.display().to_string();
            let shown = edge_core::text::line(&shown);
            match path.parent() {
                Some(dir) if !dir.as_os_str().is_empty() && !dir.is_dir() => problems.push(Problem::error(
                    format!("probes.listen unix:{shown}: its directory does not exist"),
                    "create it, writable by the runner's user (under systemd, the unit's RuntimeDirectory=edge-runner \
                     makes /run/edge-runner), or choose another path",
                )),
                _ => {}
            }
            match crate::server::probes::inspect_socket_path(path) {
                Ok(SocketPath::Live) => problems.push(Problem::error(
                    format!("probes.listen unix:{shown}: another process is serving on it"),
                    "stop it (a runner already serving?) or choose another path",
                )),
                Ok(SocketPath::NotASocket(_)) => problems.push(Problem::error(
                    format!("probes.listen unix:{shown} exists and is not a socket"),
                    "move it away or choose another path: `serve` replaces only a stale socket there",
                )),
                // Free, or stale (what `serve` replaces); an unreadable
                // directory is reported above or by `serve` itself.
                Ok(SocketPath::Free | SocketPath::Stale) | Err(_) => {}
            }
        }
    }
}

/// Bind `addr` and release it at once.
fn port(setting: &str, addr: SocketAddr, problems: &mut Vec<Problem>) {
    if addr.port() == 0 {
        return;
    }
    if let Err(e) = std::net::TcpListener::bind(addr) {
        let fix = match e.kind() {
            std::io::ErrorKind::AddrInUse => format!(
                "another process listens on {addr}: stop it (`ss -ltnp 'sport = :{}'` names it; a runner already \
                 serving?) or choose another {setting}",
                addr.port()
            ),
            std::io::ErrorKind::PermissionDenied => format!(
                "ports below 1024 need privileges the runner should not have: choose a port from 1024 up for {setting}"
            ),
            std::io::ErrorKind::AddrNotAvailable => {
                format!("no interface of this machine has the address {}: correct {setting}", addr.ip())
            }
            _ => format!("correct {setting}, or free the address"),
        };
        problems.push(Problem::error(format!("{setting} {addr} cannot be bound: {e}"), fix));
    }
}

/// A CA file: read, parsed, each certificate a usable trust anchor within
/// its validity. Returns its certificates when they parse.
fn ca_file(
    setting: &str,
    path: &Path,
    now: Duration,
    problems: &mut Vec<Problem>,
) -> Option<Vec<CertificateDer<'static>>> {
    let p = path.display();
    let fix = format!("point {setting} at the PEM certificate(s) of the CA (init's development CA is tls/ca.pem)");
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) => {
            problems.push(Problem::error(format!("{setting} {p} cannot be read: {e}"), fix));
            return None;
        }
    };
    let certs = match pem_certs(&bytes) {
        Ok(c) => c,
        Err(e) => {
            problems.push(Problem::error(format!("{setting} {p} is not a PEM certificate file: {e}"), fix));
            return None;
        }
    };
    for c in &certs {
        if let Err(e) = webpki::anchor_from_trusted_cert(c) {
            problems.push(Problem::error(format!("{setting} {p}: a certificate does not parse ({e:?})"), fix));
            return None;
        }
        if let Some(pr) = validity(&format!("CA certificate in {setting}"), path, c, now) {
            problems.push(pr);
        }
    }
    Some(certs)
}

/// A certificate and its key: the key file as [`private_key_file`], the
/// certificate as [`certificate`], and the two belong together.
#[allow(clippy::too_many_arguments)]
fn tls_pair(
    what: &str,
    cert_setting: &str,
    key_setting: &str,
    cert: &Path,
    key: &Path,
    ca: Option<(&str, &Path, &[CertificateDer<'static>])>,
    wanted: &[ServerName<'static>],
    used: &str,
    now: Duration,
    problems: &mut Vec<Problem>,
) {
    let key_ok = private_key_file(&format!("{what}'s key"), key_setting, key, problems).is_some_and(|bytes| {
        let ok = PrivateKeyDer::from_pem_slice(&bytes).is_ok();
        if !ok {
            problems.push(Problem::error(
                format!("{key_setting} {} is not a PEM private key (PKCS#8, PKCS#1 or SEC1)", key.display()),
                format!("point {key_setting} at the private key of {}", cert.display()),
            ));
        }
        ok
    });
    let chain = match std::fs::read(cert).map_err(|e| e.to_string()).and_then(|b| pem_certs(&b)) {
        Ok(c) => c,
        Err(e) => {
            problems.push(Problem::error(
                format!("{what} {} ({cert_setting}) cannot be used: {e}", cert.display()),
                format!("point {cert_setting} at the PEM certificate (chain) of this runner"),
            ));
            return;
        }
    };
    problems.extend(certificate(what, cert, &chain, ca, wanted, used, now));
    if key_ok && let Err(e) = crate::server::tls::server_config_no_client_auth(cert, key) {
        problems.push(Problem::error(
            format!(
                "{what} {} and its key {} ({key_setting}) do not match ({})",
                cert.display(),
                key.display(),
                e.root_cause()
            ),
            format!("point {key_setting} at the key the certificate {} was issued for", cert.display()),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_owners_truth_table() {
        for (me, owner, ok) in [(1000, 1000, true), (1000, 0, true), (1000, 1001, false), (0, 1001, true), (0, 0, true)]
        {
            assert_eq!(owner_ok(me, owner), ok, "me {me}, owner {owner}");
        }
    }

    #[test]
    fn a_missing_config_and_bad_toml_are_one_problem_each() {
        let t = tempfile::tempdir().unwrap();
        let p = check(&t.path().join("runner.toml"));
        assert_eq!(p.len(), 1);
        assert!(p[0].what.contains("cannot read runner config") && p[0].fix.contains("edge-runner init"));
        std::fs::write(t.path().join("runner.toml"), "[runner\n").unwrap();
        let p = check(&t.path().join("runner.toml"));
        assert!(p.len() == 1 && p[0].what.contains("not valid TOML"), "{p:?}");
        // Where, never the line: it may be a secret's.
        std::fs::write(t.path().join("runner.toml"), "[env]\nTOKEN = \"tok-secret-9\n").unwrap();
        let p = check(&t.path().join("runner.toml"));
        assert!(
            p.len() == 1 && p[0].what.contains("TOML parse error at line 2, column 22: invalid basic string"),
            "{p:?}"
        );
        assert!(!format!("{p:?}").contains("tok-secret-9"), "{p:?}");
    }
}
