//! The `[console]` section of `runner.toml`: the approval console that
//! `edge-runner serve` serves to browsers on its own TLS listener (no client
//! certificate; approvers sign in with a passkey).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConsole {
    /// Address to listen on, e.g. `0.0.0.0:8444` (port 0: any free port).
    listen: String,
    /// The console's public URL as browsers reach it, e.g.
    /// `https://approvals.bank.example:8444`: its origin is what passkeys
    /// are bound to. Default: `https://localhost:<port>`.
    #[serde(default)]
    url: Option<String>,
    /// The WebAuthn relying-party id (default: the URL's host).
    #[serde(default)]
    rp_id: Option<String>,
    /// Certificate chain and key for the console (default: the `[server]` ones).
    #[serde(default)]
    cert: Option<PathBuf>,
    #[serde(default)]
    key: Option<PathBuf>,
    /// How long a sign-in lasts (default 15m, at most 12h).
    #[serde(default)]
    session: Option<String>,
}

/// Resolved console settings.
#[derive(Debug, Clone)]
pub struct ConsoleSettings {
    pub listen: SocketAddr,
    /// The configured public URL (None: `https://localhost:<bound port>`).
    pub url: Option<url::Url>,
    pub rp_id: Option<String>,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub session: Duration,
}

impl ConsoleSettings {
    /// The origin browsers use, once the listener's port is known.
    ///
    /// # Errors
    /// Never for a URL that passed the config check.
    pub fn origin(&self, port: u16) -> Result<url::Url> {
        match &self.url {
            Some(u) => Ok(u.clone()),
            None => Ok(url::Url::parse(&format!("https://localhost:{port}"))?),
        }
    }

    /// The relying-party id passkeys are scoped to.
    pub fn rp_id(&self, origin: &url::Url) -> String {
        self.rp_id.clone().unwrap_or_else(|| origin.host_str().unwrap_or("localhost").to_owned())
    }
}

impl RawConsole {
    pub(crate) fn resolve(
        self,
        resolve: impl Fn(&Path) -> PathBuf,
        server: Option<(&Path, &Path)>,
    ) -> Result<ConsoleSettings> {
        let listen: SocketAddr = self
            .listen
            .parse()
            .with_context(|| format!("console.listen `{}`: use an address like 0.0.0.0:8444", self.listen))?;
        let url = match &self.url {
            Some(u) => {
                let parsed = url::Url::parse(u).with_context(|| format!("console.url `{u}` is not a URL"))?;
                if parsed.scheme() != "https" {
                    bail!("console.url `{u}`: passkeys need https://");
                }
                if parsed.path() != "/" || parsed.query().is_some() || parsed.fragment().is_some() {
                    bail!("console.url `{u}`: give the origin only (https://host[:port]), no path");
                }
                Some(parsed)
            }
            None => None,
        };
        if let (Some(rp), Some(u)) = (&self.rp_id, &url) {
            let host = u.host_str().unwrap_or("");
            if host != rp && !host.ends_with(&format!(".{rp}")) {
                bail!("console.rp_id `{rp}` must be console.url's host `{host}` or a parent domain of it");
            }
        }
        let (cert, key) = match (self.cert, self.key, server) {
            (Some(c), Some(k), _) => (resolve(&c), resolve(&k)),
            (None, None, Some((c, k))) => (c.to_path_buf(), k.to_path_buf()),
            (None, None, None) => bail!("console: give cert and key (or configure [server], whose are used)"),
            _ => bail!("console: give both cert and key, or neither (the [server] ones are used)"),
        };
        let session = match &self.session {
            Some(s) => edge_core::policy::parse_duration(s)
                .with_context(|| format!("console.session `{s}`: use a duration like \"15m\""))?,
            None => 15 * 60,
        };
        if !(60..=12 * 3600).contains(&session) {
            bail!("console.session must be between 1m and 12h");
        }
        Ok(ConsoleSettings { listen, url, rp_id: self.rp_id, cert, key, session: Duration::from_secs(session) })
    }
}
