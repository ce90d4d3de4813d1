//! `edge-runner init`: a runner home an operator can start from.
//!
//! ```text
//! HOME/
//!   runner.toml                 config: identity, policy, approvers, [server]
//!   state/identity.key          Ed25519 identity (signs checkpoints), 0600
//!   policy/policy.toml, graph.toml   example policy and system graph
//!   approvers/allowed_signers   empty: nobody can approve until you add keys
//!   approvers/roles.toml        example roles
//!   approvers/enrolled/passkeys.json  passkeys enrolled through the console:
//!                               the one operator-tree file the runner writes
//!   tls/ca.pem, ca.key          a development CA (0600 key)
//!   tls/server.pem, server.key  server certificate for localhost / 127.0.0.1 / ::1,
//!                               the listen address and every `--san`
//!   tls/agent.pem, agent.key    a client certificate for one agent (SPIFFE ID)
//!   tls/operator.pem, operator.key  a client certificate for operators and approvers
//!   edge-runner.service         a hardened systemd unit
//! ```
//!
//! The CA is for development: in production, point `server.cert`,
//! `server.key` and `server.client_ca` at the organisation's PKI
//! (`docs/operations.md`).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    SanType,
};

/// The SPIFFE trust domain of the development certificates.
pub const DEV_TRUST_DOMAIN: &str = "edge-runner.local";

/// What `init` created.
#[derive(Debug)]
pub struct Initialised {
    pub home: PathBuf,
    pub config: PathBuf,
    pub agent: String,
}

/// Create a runner home in `home` (which must not hold a runner.toml yet).
///
/// # Errors
/// If the home already holds a runner, or a file cannot be written.
pub fn init(home: &Path, name: &str, listen: &str, unit_user: &str) -> Result<Initialised> {
    init_with_sans(home, name, listen, unit_user, &[])
}

/// A server name for the development certificate (`init --san`): an IP
/// address, or a DNS name (no wildcards).
///
/// # Errors
/// If it is neither.
pub fn parse_san(s: &str) -> Result<SanType> {
    if let Ok(ip) = s.parse::<std::net::IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    let lower = s.to_ascii_lowercase();
    if lower.contains('*') || rustls::pki_types::DnsName::try_from(lower.as_str()).is_err() {
        bail!("--san `{s}` is not a DNS name or IP address (e.g. runner.bank.example or 10.0.0.5; no wildcards)");
    }
    Ok(SanType::DnsName(lower.as_str().try_into()?))
}

/// As [`init`], with extra names (`--san`) in the server certificate
/// besides localhost, 127.0.0.1 and ::1. A listen address on one interface
/// (not 0.0.0.0 or ::) is added too, so clients can connect to it by IP.
///
/// # Errors
/// As [`init`], and a `--san` that is not a DNS name or IP address.
pub fn init_with_sans(home: &Path, name: &str, listen: &str, unit_user: &str, sans: &[String]) -> Result<Initialised> {
    let mut extra = Vec::new();
    for s in sans {
        let san = parse_san(s)?;
        if !extra.contains(&san) {
            extra.push(san);
        }
    }
    if let Ok(addr) = listen.parse::<std::net::SocketAddr>()
        && !addr.ip().is_unspecified()
        && !addr.ip().is_loopback()
    {
        let san = SanType::IpAddress(addr.ip());
        if !extra.contains(&san) {
            extra.push(san);
        }
    }
    let config_path = home.join("runner.toml");
    if config_path.exists() {
        bail!(
            "{} already exists: `init` never overwrites a runner home; pick another directory",
            config_path.display()
        );
    }
    for d in ["state", "policy", "approvers", "approvers/enrolled", "tls"] {
        std::fs::create_dir_all(home.join(d)).with_context(|| format!("cannot create {}", home.join(d).display()))?;
    }
    restrict_dir(&home.join("state"))?;
    restrict_dir(&home.join("tls"))?;
    write(home, "policy/policy.toml", include_str!("../../examples/policy/policy.toml"))?;
    write(home, "policy/graph.toml", include_str!("../../examples/policy/graph.toml"))?;
    write(
        home,
        "approvers/allowed_signers",
        "# principal key-type base64-key  (OpenSSH allowed_signers; see docs/approvals.md)\n",
    )?;
    write(home, "approvers/roles.toml", include_str!("../../examples/approvers/roles.toml"))?;
    // Passkey enrollments are the one part of the approver registry the
    // runner writes itself (each recorded as evidence first): in a directory
    // of their own, so the service unit can leave the rest of the home —
    // policy, allowed_signers, roles — read-only to the runner.
    write(
        home,
        "approvers/enrolled/passkeys.json",
        &format!("{{\"schema\": \"{}\", \"credentials\": []}}\n", edge_core::approval::PASSKEYS_SCHEMA),
    )?;

    // The identity key: created now, so the operator can hand reviewers the
    // public key before the first run.
    let identity = home.join("state/identity.key");
    crate::identity::create_identity(&identity)?;

    let agent = format!("spiffe://{DEV_TRUST_DOMAIN}/agent/dev");
    dev_pki(&home.join("tls"), &agent, extra)?;

    let config = format!(
        r#"# Runner home created by `edge-runner init`. Relative paths are relative to this file.

[runner]
# Identifies this runner in evidence and is the origin of its signed checkpoints.
name = "{name}"
state_dir = "state"
identity_key = "state/identity.key"

[policy]
file = "policy/policy.toml"
graph = "policy/graph.toml"

[approvers]
allowed_signers = "approvers/allowed_signers"
roles = "approvers/roles.toml"
clock_skew = "5m"
# Written by the runner when an approver enrolls a passkey in the console;
# the systemd unit lets it write only this directory (and state/).
passkeys = "approvers/enrolled/passkeys.json"

[server]
listen = "{listen}"
# Development certificates from `init`; use your organisation's PKI in production.
cert = "tls/server.pem"
key = "tls/server.key"
client_ca = "tls/ca.pem"
# The CA that issued `cert` (what clients pass as --ca); `edge-runner check`
# verifies the chain against it. Default: client_ca (the development CA issues both).
# server_ca = "tls/ca.pem"
# Agents allowed to submit (SPIFFE ID in the client certificate's URI SAN, or its subject CN).
agents = ["{agent}"]
max_body_kib = 32768
queue = 256
request_timeout = "10s"

# Who may read what (docs/operations.md, "Who may read what"). Agents see only
# the proposals they submitted; reading every proposal and posting approvals,
# the evidence export, /metrics and reloading are granted here, per identity
# or `role:<name>`. Give approvers and reviewers their own certificates
# (`edge-runner pki issue --person NAME --out DIR --config runner.toml`).
[server.roles]
operators = ["spiffe://{DEV_TRUST_DOMAIN}/operator"]

[server.access]
proposals = ["role:operators"]
evidence = ["role:operators"]
metrics = ["role:operators"]
reload = ["role:operators"]

# The approval console (docs/console.md): approvers review proposals in the
# browser and approve with a passkey. Enroll each with
#   edge-runner approvers enroll --config runner.toml --principal <name>
# [console]
# listen = "127.0.0.1:8444"
# url = "https://localhost:8444"   # the origin browsers use; passkeys are bound to it

# Health and readiness for an orchestrator or a monitoring agent without a
# client certificate (docs/operations.md, "Probes"): plain HTTP, so only on
# loopback or a Unix socket (/run/edge-runner is the unit's RuntimeDirectory).
# [probes]
# listen = "unix:/run/edge-runner/probes.sock"   # or "127.0.0.1:9464"
# metrics = false                                # true: /metrics here too

# Mounts: logical names capsules request -> host directories, each mapped to
# the system-graph node it belongs to (blast radius comes from the graph).
#
# `preview` says what approvers, the evidence and reports see of a changed
# file (docs/previews.md): "full" (the exact bytes), "redacted" (the default:
# the value of every line matching a `redact` pattern is masked, both sides of
# the diff), or "digest-only" (no content anywhere: digests, sizes and line
# counts only). A mount holding secrets should be digest-only:
# [mounts.config]
# path = "/srv/app/config"
# writable = true
# node = "payments-config"
# preview = "redacted"
# redact = ["(?i)password", "(?i)secret", "(?i)token"]
#
# [mounts.tls]
# path = "/etc/app/tls"
# writable = true
# node = "tls-certs"
# preview = "digest-only"

[limits.default]
memory_mib = 64
cpu_ms = 5000
wall_ms = 10000
output_kib = 256
max_plan_changes = 1000

[limits.ceiling]
memory_mib = 256
cpu_ms = 30000
wall_ms = 60000
output_kib = 4096
max_plan_changes = 10000
"#
    );
    write(home, "runner.toml", &config)?;
    let abs = std::fs::canonicalize(home)?;
    write(home, "edge-runner.service", &systemd_unit(&abs, unit_user))?;
    Ok(Initialised { home: abs, config: config_path, agent })
}

fn write(home: &Path, rel: &str, text: &str) -> Result<()> {
    let p = home.join(rel);
    std::fs::write(&p, text).with_context(|| format!("cannot write {}", p.display()))
}

fn restrict_dir(p: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("cannot restrict {}", p.display()))
}

/// A development CA, a server certificate and two client certificates.
fn dev_pki(dir: &Path, agent: &str, extra_sans: Vec<SanType>) -> Result<()> {
    let now = time::OffsetDateTime::now_utc();
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.distinguished_name.push(DnType::CommonName, "edge-runner development CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca.not_before = now - time::Duration::minutes(5);
    ca.not_after = now + time::Duration::days(365);
    let ca_cert = ca.self_signed(&ca_key)?;
    std::fs::write(dir.join("ca.pem"), ca_cert.pem())?;
    crate::keys::write_secret(&dir.join("ca.key"), ca_key.serialize_pem().as_bytes())?;
    let issuer = Issuer::new(ca, ca_key);

    let leaf = |file: &str, cn: &str, sans: Vec<SanType>, usage: ExtendedKeyUsagePurpose| -> Result<()> {
        let key = KeyPair::generate()?;
        let mut p = CertificateParams::new(Vec::<String>::new())?;
        p.distinguished_name.push(DnType::CommonName, cn);
        p.subject_alt_names = sans;
        p.extended_key_usages = vec![usage];
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.not_before = now - time::Duration::minutes(5);
        p.not_after = now + time::Duration::days(90);
        let cert = p.signed_by(&key, &issuer)?;
        std::fs::write(dir.join(format!("{file}.pem")), cert.pem())?;
        crate::keys::write_secret(&dir.join(format!("{file}.key")), key.serialize_pem().as_bytes())
    };
    let ip = |s: &str| SanType::IpAddress(s.parse().expect("literal address"));
    let uri = |s: &str| -> Result<SanType> { Ok(SanType::URI(s.try_into()?)) };
    let mut server_sans = vec![SanType::DnsName("localhost".try_into()?), ip("127.0.0.1"), ip("::1")];
    for s in extra_sans {
        if !server_sans.contains(&s) {
            server_sans.push(s);
        }
    }
    leaf("server", "localhost", server_sans, ExtendedKeyUsagePurpose::ServerAuth)?;
    leaf("agent", "agent-dev", vec![uri(agent)?], ExtendedKeyUsagePurpose::ClientAuth)?;
    leaf(
        "operator",
        "operator",
        vec![uri(&format!("spiffe://{DEV_TRUST_DOMAIN}/operator"))?],
        ExtendedKeyUsagePurpose::ClientAuth,
    )?;
    Ok(())
}

/// Unit directives that hide a part of the file system from the service,
/// and what they hide (for [`hidden_from_unit`]).
const HIDDEN: &[(&str, &str)] = &[
    ("/home", "ProtectHome=yes"),
    ("/root", "ProtectHome=yes"),
    ("/run/user", "ProtectHome=yes"),
    ("/tmp", "PrivateTmp=yes"),
    ("/var/tmp", "PrivateTmp=yes"),
];

/// Why the unit [`init`] writes cannot run a runner whose home is `home`
/// (absolute), if it cannot: the unit hides that path from the service.
pub fn hidden_from_unit(home: &Path) -> Option<String> {
    HIDDEN.iter().find(|(p, _)| home.starts_with(p)).map(|(p, directive)| {
        format!(
            "{} is under {p}, which the systemd unit hides from the service ({directive}): `systemctl start` would \
             not find runner.toml. Create the home elsewhere (e.g. /srv/edge-runner or /var/lib/edge-runner) for a \
             service; here it is fine for trying the runner by hand",
            home.display()
        )
    })
}

/// A hardened systemd unit for this home.
pub(crate) fn systemd_unit(home: &Path, user: &str) -> String {
    let h = home.display();
    format!(
        r#"# Install: copy to /etc/systemd/system/, create the `{user}` user, chown -R {user} {h},
# add each writable mount to ReadWritePaths, then `systemctl enable --now edge-runner`.
# Check it with: systemd-analyze security --offline=true edge-runner.service
[Unit]
Description=Edge Runner (governed execution of signed remediation capsules)
After=network-online.target
Wants=network-online.target

[Service]
# READY=1 once every listener is bound and the evidence log verified; the
# watchdog is pinged only while the runner is ready (its evidence writer
# answers), so a wedged runner is restarted.
Type=notify
NotifyAccess=main
WatchdogSec=30s
User={user}
Group={user}
ExecStart=/usr/local/bin/edge-runner serve --config {h}/runner.toml
Restart=on-failure
RestartSec=5s
# `systemctl reload`: policy, graph, signers and approvers, recorded as evidence.
ExecReload=/bin/kill -HUP $MAINPID
# Finish (or cleanly interrupt) the run in progress on stop.
KillSignal=SIGTERM
TimeoutStopSec=90s
# Descriptors: up to 1,024 TLS connections, 8 concurrent runs with their
# mounts and staging copies, the store; staging removal needs only two.
LimitNOFILE=16384
# /run/edge-runner (0750): for a probe socket, [probes] listen = "unix:/run/edge-runner/probes.sock".
RuntimeDirectory=edge-runner
RuntimeDirectoryMode=0750

NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
PrivateDevices=yes
ProtectProc=invisible
ProcSubset=pid
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
RestrictSUIDSGID=yes
RestrictRealtime=yes
RestrictNamespaces=yes
LockPersonality=yes
PrivateMounts=yes
RemoveIPC=yes
MemoryDenyWriteExecute=no
# (wasmtime compiles to executable memory: MemoryDenyWriteExecute must stay off.)
RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX
CapabilityBoundingSet=
AmbientCapabilities=
SystemCallArchitectures=native
# Everything the runner calls (wasmtime's mmap/mprotect included) is in
# @system-service. Nothing in @privileged (SQLite calls fchown only when
# running as root); from @resources only setpriority, with which a reload
# lowers its own thread's priority (the compile helper's limits are set
# with prlimit64, in @default). Anything else fails with EPERM instead of
# killing the runner.
SystemCallFilter=@system-service
SystemCallFilter=~@privileged @resources
SystemCallFilter=setpriority
SystemCallErrorNumber=EPERM
UMask=0077
# Writable: the state directory (evidence, receipts, staging, cache) and the
# passkeys the console enrolls. The config, policy, graph, allowed_signers,
# roles and TLS files stay read-only to the runner. Add each granted
# writable mount here (and staging_dir or cache_dir if moved out of state).
ReadWritePaths={h}/state {h}/approvers/enrolled
# ReadWritePaths=/srv/app/config

[Install]
WantedBy=multi-user.target
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn homes_the_unit_hides_are_named_with_the_directive() {
        for (home, directive) in [
            ("/home/alice/runner", "ProtectHome=yes"),
            ("/root/runner", "ProtectHome=yes"),
            ("/run/user/1000/runner", "ProtectHome=yes"),
            ("/tmp/runner", "PrivateTmp=yes"),
            ("/var/tmp/runner", "PrivateTmp=yes"),
        ] {
            let w = hidden_from_unit(Path::new(home)).unwrap_or_else(|| panic!("{home} is hidden"));
            assert!(w.contains(directive) && w.contains(home), "{w}");
        }
        for home in ["/srv/edge-runner", "/var/lib/edge-runner", "/opt/er", "/homestead/er", "/tmpfs/er"] {
            assert_eq!(hidden_from_unit(Path::new(home)), None, "{home}");
        }
    }

    /// The unit keeps the operator's files read-only: only the state
    /// directory and the enrolled-passkeys directory are writable.
    #[test]
    fn the_unit_makes_only_state_and_enrolled_passkeys_writable() {
        let unit = systemd_unit(Path::new("/srv/er"), "edge-runner");
        let writable: Vec<&str> = unit.lines().filter(|l| l.starts_with("ReadWritePaths=")).collect();
        assert_eq!(writable, ["ReadWritePaths=/srv/er/state /srv/er/approvers/enrolled"]);
        for line in [
            "Type=notify",
            "NotifyAccess=main",
            "WatchdogSec=30s",
            "LimitNOFILE=16384",
            "SystemCallFilter=@system-service",
            "SystemCallErrorNumber=EPERM",
            "ProtectProc=invisible",
            "ProcSubset=pid",
            "ProtectSystem=strict",
        ] {
            assert!(unit.lines().any(|l| l == line), "missing {line}");
        }
    }
}
