//! The `[nats]` section of `runner.toml`: an outbound-only intake. The
//! runner dials out to a NATS server (typically a leaf node inside the
//! enclave that connects on to a hub) and pulls submissions and approvals
//! from JetStream (`crate::intake::nats`).
//!
//! ```toml
//! [nats]
//! url = "tls://nats.enclave.example:4222"
//! ca = "nats/ca.pem"              # the CA the server's certificate chains to
//! cert = "nats/runner.pem"        # client certificate (optional)
//! key = "nats/runner.key"
//! creds = "nats/runner.creds"     # NATS credentials (optional)
//! prefix = "edge"                 # subjects edge.<subject>.in.* / .out.*
//! subject = "payments-eu-1"       # default: runner.name, when it is one token
//! max_message_mib = 16
//! exports = false                 # answer in.export with an export in the object store
//! ```
//!
//! Plain `nats://` is accepted only to a loopback address; anywhere else it
//! needs `dangerous_plain_text = true`, which is recorded like every
//! insecure switch. The transport is not what makes a submission
//! trustworthy (capsules and approvals are signed and bound), but plain
//! text shows everything submitted to anyone on the path.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Result, bail};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawNats {
    /// `tls://host:port` or (loopback, or with `dangerous_plain_text`) `nats://host:port`.
    url: String,
    /// CA certificates (PEM) the server's certificate must chain to (required for `tls://`).
    #[serde(default)]
    ca: Option<PathBuf>,
    /// Client certificate and key (PEM), when the server asks for one.
    #[serde(default)]
    cert: Option<PathBuf>,
    #[serde(default)]
    key: Option<PathBuf>,
    /// A NATS credentials file (JWT and NKey seed), when the server uses them.
    #[serde(default)]
    creds: Option<PathBuf>,
    /// First subject token (default `edge`): the runner uses
    /// `<prefix>.<subject>.in.{submit,submit-ref,approve,export}` and
    /// publishes on `<prefix>.<subject>.out.>`.
    #[serde(default)]
    prefix: Option<String>,
    /// This runner's subject token (default: `runner.name`, when that is
    /// one token — letters, digits, `-`, `_`). Runners sharing a NATS
    /// deployment each need their own.
    #[serde(default)]
    subject: Option<String>,
    /// Largest message taken (default 16 MiB; the NATS server's
    /// `max_payload` must allow it too).
    #[serde(default)]
    max_message_mib: Option<u64>,
    /// How long the server waits for an acknowledgement before it delivers
    /// a message again (default 30s; the runner says "still working" every
    /// third of it, so a long run is not delivered twice). A message handed
    /// to a runner that was killed comes back after this long.
    #[serde(default)]
    ack_wait: Option<String>,
    /// Answer `in.export` requests with an evidence export in the object
    /// store bucket (default false: they are refused). Whoever may publish
    /// on `in.export` then gets the whole log: grant it to reviewers only.
    #[serde(default)]
    exports: bool,
    /// With `exports`: the most the bucket holds (default 4096 MiB; an
    /// export that does not fit is refused, not stored in part).
    #[serde(default)]
    export_bucket_mib: Option<u64>,
    /// With `exports`: how long an export stays in the bucket (default "7d").
    #[serde(default)]
    export_keep: Option<String>,
    /// Allow `nats://` (no TLS) to a non-loopback address. Recorded.
    #[serde(default)]
    dangerous_plain_text: bool,
}

/// Resolved NATS settings.
#[derive(Debug, Clone)]
pub struct NatsSettings {
    pub url: String,
    pub tls: bool,
    pub ca: Option<PathBuf>,
    pub client_cert: Option<(PathBuf, PathBuf)>,
    pub creds: Option<PathBuf>,
    pub prefix: String,
    /// This runner's subject token.
    pub subject: String,
    pub max_message_bytes: usize,
    /// `dangerous_plain_text` was needed.
    pub dangerous: bool,
    /// How long the server waits for an ack before redelivering (the
    /// runner says it is still working every third of this).
    pub ack_wait: Duration,
    /// `in.export` answered (into the bucket), with the bucket's size
    /// limit (bytes) and how long an export stays there; None: refused.
    pub exports: Option<(i64, Duration)>,
}

/// Whether `s` can be one subject token (and a stream name's part).
pub fn is_token(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl NatsSettings {
    /// The subject of an inbound kind (`submit`, `approve`, `export`).
    pub fn inbound(&self, kind: &str) -> String {
        format!("{}.{}.in.{kind}", self.prefix, self.subject)
    }
    /// The subject of an outbound kind (`answer.<id>`, `events`, `checkpoint`).
    pub fn outbound(&self, kind: &str) -> String {
        format!("{}.{}.out.{kind}", self.prefix, self.subject)
    }
    /// The JetStream stream names (inbound, outbound) and export bucket.
    pub fn streams(&self) -> (String, String, String) {
        let (inbound, outbound) = crate::intake::nats_client::streams(&self.prefix, &self.subject);
        (inbound, outbound, format!("{}_{}_exports", self.prefix, self.subject))
    }
}

/// A NATS URL as the runner and its clients take it: `tls://host:port`, or
/// `nats://host:port` (plain text); no credentials or path in it. Returns
/// (TLS, the host is this host's loopback). `what` names the setting in errors.
///
/// # Errors
/// Another scheme, no host, or credentials or a path in the URL.
pub fn parse_url(url: &str, what: &str) -> Result<(bool, bool)> {
    // First, whatever the scheme: no message below may repeat a URL with
    // credentials in it (what precedes the `@` may be a password).
    if url.contains('@') {
        bail!("{what}: give host:port only (credentials go in a credentials file, never in the URL)");
    }
    let (tls, rest) = match url.split_once("://") {
        Some(("tls", rest)) => (true, rest),
        Some(("nats", rest)) => (false, rest),
        _ => bail!("{what} `{url}`: use tls://host:port (or nats://127.0.0.1:port on this host)"),
    };
    let host = rest.rsplit_once(':').map_or(rest, |(h, _)| h).trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || rest.contains('/') {
        bail!("{what} `{url}`: give host:port only");
    }
    let loopback = host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|a| a.is_loopback());
    Ok((tls, loopback))
}

impl RawNats {
    pub(crate) fn resolve(self, runner: &str, resolve: impl Fn(&Path) -> PathBuf) -> Result<NatsSettings> {
        let (tls, loopback) = parse_url(&self.url, "nats.url")?;
        if !tls && !loopback && !self.dangerous_plain_text {
            bail!(
                "nats.url `{}` is plain text to another host: anyone on the path reads every capsule and \
                 approval. Use tls:// with nats.ca, or set nats.dangerous_plain_text = true (recorded)",
                self.url
            );
        }
        if tls && self.ca.is_none() {
            bail!("nats.url `{}` is TLS: name the CA its certificate chains to in nats.ca", self.url);
        }
        let client_cert = match (self.cert, self.key) {
            (Some(c), Some(k)) => Some((resolve(&c), resolve(&k))),
            (None, None) => None,
            _ => bail!("nats.cert and nats.key go together (the client certificate and its key)"),
        };
        if client_cert.is_some() && !tls {
            bail!("nats.cert needs a tls:// url");
        }
        let prefix = self.prefix.unwrap_or_else(|| "edge".to_owned());
        if !is_token(&prefix) {
            bail!("nats.prefix `{prefix}`: letters, digits, - and _ only (one subject token)");
        }
        let subject = match self.subject {
            Some(t) if is_token(&t) => t,
            Some(t) => bail!("nats.subject `{t}`: letters, digits, - and _ only (one subject token)"),
            None if is_token(runner) => runner.to_owned(),
            None => bail!(
                "[nats] names subjects after runner.name, and `{runner}` is not one subject token: set \
                 nats.subject (letters, digits, - and _), e.g. subject = \"payments-eu-1\""
            ),
        };
        let ack_wait = match self.ack_wait.as_deref() {
            Some(s) => edge_core::policy::parse_duration(s)
                .filter(|secs| (1..=3600).contains(secs))
                .map(Duration::from_secs)
                .ok_or_else(|| anyhow::anyhow!("nats.ack_wait `{s}`: use a duration from \"1s\" to \"1h\""))?,
            None => Duration::from_secs(30),
        };
        let exports = if self.exports {
            let mib = self.export_bucket_mib.unwrap_or(4096);
            if mib == 0 || mib > 1 << 20 {
                bail!("nats.export_bucket_mib must be between 1 and 1048576");
            }
            let keep = self.export_keep.as_deref().unwrap_or("7d");
            let keep = edge_core::policy::parse_duration(keep)
                .filter(|secs| (60..=366 * 86_400).contains(secs))
                .map(Duration::from_secs)
                .ok_or_else(|| anyhow::anyhow!("nats.export_keep `{keep}`: use a duration from \"1m\" to \"366d\""))?;
            Some(((mib << 20) as i64, keep))
        } else {
            if self.export_bucket_mib.is_some() || self.export_keep.is_some() {
                bail!("nats.export_bucket_mib and nats.export_keep need nats.exports = true");
            }
            None
        };
        let mib = self.max_message_mib.unwrap_or(16);
        if mib == 0 || mib > 64 {
            bail!("nats.max_message_mib must be between 1 and 64");
        }
        Ok(NatsSettings {
            url: self.url,
            tls,
            ca: self.ca.as_deref().map(&resolve),
            client_cert,
            creds: self.creds.as_deref().map(&resolve),
            prefix,
            subject,
            max_message_bytes: (mib << 20) as usize,
            dangerous: self.dangerous_plain_text && !tls,
            ack_wait,
            exports,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<NatsSettings> {
        let raw: RawNats = toml::from_str(text)?;
        raw.resolve("runner-1", |p| p.to_path_buf())
    }

    #[test]
    fn plain_text_is_for_loopback_or_an_explicit_dangerous_switch() {
        assert!(load("url = \"nats://127.0.0.1:4222\"").is_ok());
        assert!(load("url = \"nats://localhost:4222\"").is_ok());
        let e = load("url = \"nats://hub.example:4222\"").unwrap_err().to_string();
        assert!(e.contains("dangerous_plain_text"), "{e}");
        let s = load("url = \"nats://hub.example:4222\"\ndangerous_plain_text = true").unwrap();
        assert!(s.dangerous);
        assert!(load("url = \"tls://hub.example:4222\"").unwrap_err().to_string().contains("nats.ca"));
        assert!(load("url = \"tls://hub.example:4222\"\nca = \"ca.pem\"").is_ok());
        assert!(load("url = \"nats://user:pw@127.0.0.1:4222\"").is_err());
        // Whatever the scheme, a URL with credentials is never repeated.
        for url in ["nats://user:pw-secret@127.0.0.1:4222", "wss://user:pw-secret@hub.example", "TLS://u:pw-secret@h:1"]
        {
            let e = format!("{:#}", load(&format!("url = \"{url}\"")).unwrap_err());
            assert!(e.contains("credentials") && !e.contains("pw-secret"), "{e}");
        }
        assert!(load("url = \"http://127.0.0.1:4222\"").is_err());
        assert!(load("url = \"nats://127.0.0.1:4222\"\nprefix = \"a.b\"").is_err());
    }

    #[test]
    fn subjects_and_streams_are_the_runners_own() {
        let s = load("url = \"nats://127.0.0.1:4222\"").unwrap();
        assert_eq!(s.inbound("submit"), "edge.runner-1.in.submit");
        assert_eq!(s.outbound("events"), "edge.runner-1.out.events");
        assert_eq!(
            s.streams(),
            ("edge_runner-1_in".into(), "edge_runner-1_out".into(), "edge_runner-1_exports".into())
        );
        let raw: RawNats = toml::from_str("url = \"nats://127.0.0.1:4222\"").unwrap();
        assert!(
            raw.resolve("bank.example/runner-1", |p| p.to_path_buf()).unwrap_err().to_string().contains("nats.subject")
        );
        let raw: RawNats = toml::from_str("url = \"nats://127.0.0.1:4222\"\nsubject = \"eu-1\"").unwrap();
        assert_eq!(
            raw.resolve("bank.example/runner-1", |p| p.to_path_buf()).unwrap().inbound("submit"),
            "edge.eu-1.in.submit"
        );
    }

    #[test]
    fn exports_are_off_unless_asked_for_and_then_bounded() {
        let off = "url = \"nats://127.0.0.1:4222\"";
        assert_eq!(load(off).unwrap().exports, None);
        let on = load(&format!("{off}\nexports = true")).unwrap().exports;
        assert_eq!(on, Some((4096 << 20, Duration::from_secs(7 * 86_400))));
        let on = load(&format!("{off}\nexports = true\nexport_bucket_mib = 64\nexport_keep = \"1d\"")).unwrap().exports;
        assert_eq!(on, Some((64 << 20, Duration::from_secs(86_400))));
        for (bad, why) in [
            ("export_bucket_mib = 64", "need nats.exports = true"),
            ("exports = true\nexport_bucket_mib = 0", "between 1 and"),
            ("exports = true\nexport_keep = \"1s\"", "export_keep"),
        ] {
            let e = load(&format!("{off}\n{bad}")).unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }
}
