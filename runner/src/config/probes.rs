//! The `[probes]` section of `runner.toml`: `/healthz`, `/readyz` (and, if
//! asked, `/metrics`) for an orchestrator or a local monitoring agent, on a
//! listener of their own without TLS or client certificates.
//!
//! Plain HTTP without authentication is acceptable only where nobody else
//! can reach it: a loopback address or a Unix socket (whose file mode and
//! directory decide who connects). Any other address is refused at load
//! unless `dangerous_plain_http = true`, which is recorded as an insecure
//! switch (an `insecure` record at every start and in every run's
//! submission record) and logged.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::Deserialize;

/// Longest Unix socket path (`sun_path` holds 108 bytes with its NUL).
const MAX_SOCKET_PATH: usize = 107;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawProbes {
    /// `127.0.0.1:9464` (a loopback address; port 0: any free port) or
    /// `unix:/run/edge-runner/probes.sock` (a Unix socket, mode 0660).
    listen: String,
    /// Also serve `/metrics` (Prometheus text) here (default false).
    #[serde(default)]
    metrics: bool,
    /// Allow a non-loopback address: the probes (and `/metrics`, if on) are
    /// then readable by anyone on that network, unauthenticated. Recorded.
    #[serde(default)]
    dangerous_plain_http: bool,
}

/// Where the probe listener listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeAddr {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl std::fmt::Display for ProbeAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProbeAddr::Tcp(a) => write!(f, "http://{a}"),
            ProbeAddr::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// Resolved probe settings.
#[derive(Debug, Clone)]
pub struct ProbeSettings {
    pub listen: ProbeAddr,
    /// Whether `/metrics` is served on the probe listener.
    pub metrics: bool,
    /// `dangerous_plain_http` was needed (a non-loopback address).
    pub dangerous: bool,
}

impl RawProbes {
    pub(crate) fn resolve(self, resolve: impl Fn(&Path) -> PathBuf) -> Result<ProbeSettings> {
        let listen = match self.listen.strip_prefix("unix:") {
            Some(p) => {
                if p.is_empty() {
                    bail!(
                        "probes.listen `{}`: name the socket file, e.g. unix:/run/edge-runner/probes.sock",
                        self.listen
                    );
                }
                let path = resolve(Path::new(p));
                if path.as_os_str().len() > MAX_SOCKET_PATH {
                    bail!(
                        "probes.listen `{}`: a Unix socket path is at most {MAX_SOCKET_PATH} bytes ({} is {}); use a \
                         shorter one such as unix:/run/edge-runner/probes.sock",
                        self.listen,
                        path.display(),
                        path.as_os_str().len()
                    );
                }
                ProbeAddr::Unix(path)
            }
            None => ProbeAddr::Tcp(self.listen.parse().with_context(|| {
                format!(
                    "probes.listen `{}`: use a loopback address like 127.0.0.1:9464 or a Unix socket like \
                     unix:/run/edge-runner/probes.sock",
                    self.listen
                )
            })?),
        };
        let exposed = matches!(listen, ProbeAddr::Tcp(a) if !a.ip().is_loopback());
        if exposed && !self.dangerous_plain_http {
            bail!(
                "probes.listen `{}` is not a loopback address: the probe listener speaks plain HTTP without \
                 authentication{}, so it listens only on loopback (127.0.0.1, ::1) or a Unix socket. Use \
                 127.0.0.1:<port> or unix:/run/edge-runner/probes.sock, or, if the network is yours alone, set \
                 probes.dangerous_plain_http = true (recorded in the evidence of every run)",
                self.listen,
                if self.metrics { " (and metrics = true exposes the runner's metrics too)" } else { "" }
            );
        }
        if self.dangerous_plain_http && !exposed {
            bail!(
                "probes.dangerous_plain_http is set but probes.listen `{}` is loopback or a Unix socket: remove the \
                 switch",
                self.listen
            );
        }
        Ok(ProbeSettings { listen, metrics: self.metrics, dangerous: self.dangerous_plain_http })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<ProbeSettings> {
        let raw: RawProbes = toml::from_str(text)?;
        raw.resolve(|p| Path::new("/srv/er").join(p))
    }

    #[test]
    fn loopback_and_unix_sockets_load() {
        let p = load("listen = \"127.0.0.1:9464\"").unwrap();
        assert_eq!(p.listen, ProbeAddr::Tcp("127.0.0.1:9464".parse().unwrap()));
        assert!(!p.metrics && !p.dangerous);
        assert!(load("listen = \"[::1]:0\"\nmetrics = true").unwrap().metrics);
        let p = load("listen = \"unix:/run/edge-runner/probes.sock\"").unwrap();
        assert_eq!(p.listen, ProbeAddr::Unix("/run/edge-runner/probes.sock".into()));
        assert_eq!(p.listen.to_string(), "unix:/run/edge-runner/probes.sock");
        // Relative to the config's directory, like every path in it.
        let p = load("listen = \"unix:state/probes.sock\"").unwrap();
        assert_eq!(p.listen, ProbeAddr::Unix("/srv/er/state/probes.sock".into()));
    }

    #[test]
    fn a_network_address_needs_the_dangerous_switch() {
        for addr in ["0.0.0.0:9464", "10.1.2.3:9464", "[::]:9464", "[::ffff:127.0.0.1]:9464"] {
            let e = format!("{:#}", load(&format!("listen = \"{addr}\"")).unwrap_err());
            assert!(e.contains("not a loopback address") && e.contains("dangerous_plain_http"), "{addr}: {e}");
        }
        let p = load("listen = \"0.0.0.0:9464\"\ndangerous_plain_http = true").unwrap();
        assert!(p.dangerous);
        let e = format!("{:#}", load("listen = \"127.0.0.1:1\"\ndangerous_plain_http = true").unwrap_err());
        assert!(e.contains("remove the switch"), "{e}");
    }

    #[test]
    fn bad_addresses_and_fields_name_themselves() {
        for (text, needle) in [
            ("listen = \"localhost:9464\"", "probes.listen `localhost:9464`"),
            ("listen = \"unix:\"", "name the socket file"),
            ("listen = \"127.0.0.1:1\"\nmetric = true", "metric"),
        ] {
            let e = format!("{:#}", load(text).unwrap_err());
            assert!(e.contains(needle), "{text}: {e}");
        }
        let long = format!("listen = \"unix:/{}\"", "x".repeat(120));
        assert!(format!("{:#}", load(&long).unwrap_err()).contains("at most 107 bytes"));
    }
}
