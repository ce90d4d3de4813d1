//! The `[notify]` section of `runner.toml`: signed webhooks on proposal
//! events (`crate::notify`), and the console link they carry.
//!
//! ```toml
//! [notify]
//! console_url = "https://approvals.bank.example:8444"   # default: console.url
//!
//! [[notify.webhooks]]
//! url = "https://hooks.bank.example/edge-runner"
//! ca = "tls/hooks-ca.pem"          # default: server.client_ca
//! events = ["awaiting-approval", "vetoed", "expired"]   # default: all
//! timeout_secs = 10
//! max_attempts = 6
//! ```
//!
//! Errors name the field and, for the URL and the event list, the line.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;
use serde::Deserialize;
use toml::Spanned;

use crate::events::EventKind;

/// Deliveries waiting per webhook unless `queue` says otherwise.
pub const DEFAULT_QUEUE: usize = 1024;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawNotify {
    /// The approval console's public URL, for the link in notifications
    /// (`<console_url>/proposals/<id>`). Default: `console.url`, if set.
    #[serde(default)]
    console_url: Option<Spanned<String>>,
    #[serde(default)]
    webhooks: Vec<RawWebhook>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWebhook {
    /// Where to POST. https; http only to a loopback address (or with
    /// `dangerous_plain_http`). A query (a receiver's token) is sent but
    /// never logged, counted or recorded.
    url: Spanned<String>,
    /// PEM file of the CAs that issue the receiver's certificate (default:
    /// `server.client_ca`, the runner's own CA). The system's roots are
    /// never used.
    #[serde(default)]
    ca: Option<PathBuf>,
    /// Only these kinds (default: all).
    #[serde(default)]
    events: Option<Spanned<Vec<String>>>,
    /// Per attempt: connect, TLS, request and the response's head (default 10).
    #[serde(default)]
    timeout_secs: Option<u64>,
    /// Attempts before a notification is given up and recorded (default 6).
    #[serde(default)]
    max_attempts: Option<u32>,
    /// The first pause between attempts; it doubles (with jitter) up to 5
    /// minutes (default 1000).
    #[serde(default)]
    initial_backoff_ms: Option<u64>,
    /// Notifications waiting for this webhook; beyond it new ones are
    /// dropped, counted and recorded (default 1024).
    #[serde(default)]
    queue: Option<usize>,
    /// Allow `http://` to a host that is not loopback: anyone on the path
    /// reads the notifications (they stay signed). Off by default; recorded
    /// as an `insecure` evidence record when the notifier starts.
    #[serde(default)]
    dangerous_plain_http: bool,
}

/// Resolved `[notify]` settings.
#[derive(Debug, Clone, Default)]
pub struct NotifySettings {
    /// The console's public URL, for links (`notify.console_url`, else `console.url`).
    pub console_url: Option<url::Url>,
    pub webhooks: Vec<WebhookSettings>,
}

/// One resolved webhook.
#[derive(Debug, Clone)]
pub struct WebhookSettings {
    /// Where to POST, as configured (its query may be a secret).
    pub url: url::Url,
    /// Scheme, host, port and path only: what logs, metrics and evidence show.
    pub shown: String,
    /// Trust anchors for the receiver (https), loaded once here.
    pub roots: Option<Arc<rustls::RootCertStore>>,
    pub events: BTreeSet<EventKind>,
    pub timeout: Duration,
    pub max_attempts: u32,
    pub initial_backoff: Duration,
    pub queue: usize,
    /// Plain HTTP to a host that is not loopback (`dangerous_plain_http`).
    pub dangerous_plain_http: bool,
}

/// Scheme, host and port of a URL, and a short digest of its path: never
/// credentials, a query, or the path itself (Slack, Teams and Discord
/// webhooks carry their secret in the path). This is what logs, metrics
/// labels and evidence records show; the digest (the first 12 hex digits
/// of the path's SHA-256) tells webhooks on one host apart.
pub fn shown(u: &url::Url) -> String {
    let origin = format!("{}://{}:{}", u.scheme(), u.host_str().unwrap_or(""), u.port_or_known_default().unwrap_or(0));
    match u.path() {
        "" | "/" => format!("{origin}/"),
        path => {
            let d = edge_core::Sha256Digest::of(path.as_bytes()).hex();
            format!("{origin}/…(path sha256:{})", &d[..12])
        }
    }
}

/// The line of `text` where `span` starts.
fn line(text: &str, start: usize) -> usize {
    crate::config::line_column(text, start).0
}

fn is_loopback(u: &url::Url) -> bool {
    match u.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

/// Parse a URL that must be http(s), carry no credentials and no fragment.
fn http_url(field: &str, s: &Spanned<String>, text: &str) -> Result<url::Url> {
    let at = format!("{field} (line {})", line(text, s.span().start));
    let u = url::Url::parse(s.get_ref()).with_context(|| format!("{at}: not a URL"))?;
    if !matches!(u.scheme(), "https" | "http") {
        bail!("{at}: use an https:// URL");
    }
    if !u.username().is_empty() || u.password().is_some() {
        bail!("{at}: a URL must not carry credentials (user:password@); receivers check the signature instead");
    }
    if u.fragment().is_some() || u.host_str().is_none_or(str::is_empty) {
        bail!("{at}: give scheme, host, optional port and path (no fragment)");
    }
    Ok(u)
}

fn load_roots(path: &Path) -> Result<Arc<rustls::RootCertStore>> {
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(path)
        .with_context(|| format!("cannot read {}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{} is not a PEM certificate file", path.display()))?;
    if certs.is_empty() {
        bail!("{} holds no PEM certificate", path.display());
    }
    for c in certs {
        roots.add(c).with_context(|| format!("{}: not a usable CA certificate", path.display()))?;
    }
    Ok(Arc::new(roots))
}

impl RawNotify {
    /// `text` is the config file (for line numbers); `client_ca` the
    /// `[server]` client CA (the default trust anchor); `console_url` the
    /// `[console]` public URL (the default link).
    pub(crate) fn resolve(
        self,
        text: &str,
        resolve: impl Fn(&Path) -> PathBuf,
        client_ca: Option<&Path>,
        console_url: Option<&url::Url>,
    ) -> Result<NotifySettings> {
        let console_url = match &self.console_url {
            Some(s) => {
                let u = http_url("notify.console_url", s, text)?;
                if u.query().is_some() {
                    bail!(
                        "notify.console_url (line {}): give the console's URL without a query (links add /proposals/<id>)",
                        line(text, s.span().start)
                    );
                }
                Some(u)
            }
            None => console_url.cloned(),
        };
        let mut webhooks = Vec::with_capacity(self.webhooks.len());
        for (i, w) in self.webhooks.into_iter().enumerate() {
            webhooks.push(w.resolve(&format!("notify.webhooks[{i}]"), text, &resolve, client_ca)?);
        }
        Ok(NotifySettings { console_url, webhooks })
    }
}

impl RawWebhook {
    fn resolve(
        self,
        field: &str,
        text: &str,
        resolve: impl Fn(&Path) -> PathBuf,
        client_ca: Option<&Path>,
    ) -> Result<WebhookSettings> {
        let url = http_url(&format!("{field}.url"), &self.url, text)?;
        let at = format!("{field}.url (line {})", line(text, self.url.span().start));
        let plain = url.scheme() == "http";
        let dangerous_plain_http = match (plain, is_loopback(&url), self.dangerous_plain_http) {
            (false, _, false) | (true, true, false) => false,
            (true, false, true) => true,
            (true, false, false) => bail!(
                "{at}: plain http:// is allowed only to a loopback address; use https://, or set \
                 `dangerous_plain_http = true` for this webhook (anyone on the path reads the notifications; \
                 recorded in evidence)"
            ),
            (false, _, true) | (true, true, true) => {
                bail!("{field}.dangerous_plain_http is set but {} needs no switch: remove it", shown(&url))
            }
        };
        let roots = if plain {
            if self.ca.is_some() {
                bail!("{field}.ca is set but {} is plain http: remove it, or use https://", shown(&url));
            }
            None
        } else {
            let ca = match (&self.ca, client_ca) {
                (Some(p), _) => resolve(p),
                (None, Some(p)) => p.to_path_buf(),
                (None, None) => bail!(
                    "{field}: give `ca`, the PEM file of the CAs that issue {}'s certificate (without a [server] \
                     section there is no runner CA to default to, and system roots are never used)",
                    shown(&url)
                ),
            };
            Some(load_roots(&ca).with_context(|| format!("{field}.ca"))?)
        };
        let events = match &self.events {
            None => EventKind::ALL.into_iter().collect(),
            Some(list) => {
                let at = format!("{field}.events (line {})", line(text, list.span().start));
                if list.get_ref().is_empty() {
                    bail!("{at}: an empty list would send nothing; remove the webhook, or the list for every event");
                }
                let mut out = BTreeSet::new();
                for e in list.get_ref() {
                    let Some(k) = EventKind::parse(e) else {
                        let known: Vec<&str> = EventKind::ALL.iter().map(|k| k.name()).collect();
                        bail!("{at}: `{}` is not an event; use some of {}", edge_core::text::line(e), known.join(", "));
                    };
                    out.insert(k);
                }
                out
            }
        };
        let bounded = |name: &str, v: Option<u64>, default: u64, max: u64| -> Result<u64> {
            match v {
                None => Ok(default),
                Some(n) if (1..=max).contains(&n) => Ok(n),
                Some(n) => bail!("{field}.{name} = {n}: use 1 to {max}"),
            }
        };
        Ok(WebhookSettings {
            shown: shown(&url),
            url,
            roots,
            events,
            timeout: Duration::from_secs(bounded("timeout_secs", self.timeout_secs, 10, 300)?),
            max_attempts: u32::try_from(bounded("max_attempts", self.max_attempts.map(u64::from), 6, 100)?)
                .unwrap_or(6),
            initial_backoff: Duration::from_millis(bounded(
                "initial_backoff_ms",
                self.initial_backoff_ms,
                1000,
                300_000,
            )?),
            queue: usize::try_from(bounded("queue", self.queue.map(|q| q as u64), DEFAULT_QUEUE as u64, 65_536)?)
                .unwrap_or(DEFAULT_QUEUE),
            dangerous_plain_http,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca(dir: &Path) -> PathBuf {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let path = dir.join("ca.pem");
        std::fs::write(&path, p.self_signed(&key).unwrap().pem()).unwrap();
        path
    }

    fn resolve(text: &str, client_ca: Option<&Path>) -> Result<NotifySettings> {
        #[derive(Deserialize)]
        struct Doc {
            notify: RawNotify,
        }
        let raw: Doc = toml::from_str(text)?;
        raw.notify.resolve(text, Path::to_path_buf, client_ca, None)
    }

    #[test]
    fn defaults_and_the_runner_ca() {
        let t = tempfile::tempdir().unwrap();
        let ca = ca(t.path());
        let n =
            resolve("[notify]\n[[notify.webhooks]]\nurl = \"https://hooks.test:8443/in?token=s3cret\"\n", Some(&ca))
                .unwrap();
        let w = &n.webhooks[0];
        let path = edge_core::Sha256Digest::of(b"/in").hex();
        assert_eq!(
            w.shown,
            format!("https://hooks.test:8443/…(path sha256:{})", &path[..12]),
            "no path or query shown"
        );
        assert_eq!(w.url.query(), Some("token=s3cret"), "but it is sent");
        assert_eq!(
            (w.timeout, w.max_attempts, w.initial_backoff),
            (Duration::from_secs(10), 6, Duration::from_secs(1))
        );
        assert_eq!(w.events.len(), EventKind::ALL.len());
        assert!(w.roots.is_some() && !w.dangerous_plain_http);
        assert!(n.console_url.is_none());
        // Without a runner CA, `ca` is required.
        let e = format!("{:#}", resolve("[[notify.webhooks]]\nurl = \"https://hooks.test/\"\n", None).unwrap_err());
        assert!(e.contains("give `ca`"), "{e}");
    }

    #[test]
    fn plain_http_only_to_loopback_unless_the_dangerous_switch_is_set() {
        let t = tempfile::tempdir().unwrap();
        let ca = ca(t.path());
        let hook = |url: &str, extra: &str| {
            resolve(&format!("[notify]\n\n[[notify.webhooks]]\nurl = \"{url}\"\n{extra}"), Some(&ca))
        };
        for ok in ["http://127.0.0.1:9000/h", "http://[::1]/h", "http://localhost/h"] {
            assert!(!hook(ok, "").unwrap().webhooks[0].dangerous_plain_http, "{ok}");
        }
        let e = format!("{:#}", hook("http://hooks.test/h", "").unwrap_err());
        assert!(e.contains("notify.webhooks[0].url (line 4)") && e.contains("dangerous_plain_http"), "{e}");
        assert!(hook("http://hooks.test/h", "dangerous_plain_http = true").unwrap().webhooks[0].dangerous_plain_http);
        for needless in ["https://hooks.test/h", "http://127.0.0.1/h"] {
            let e = format!("{:#}", hook(needless, "dangerous_plain_http = true").unwrap_err());
            assert!(e.contains("needs no switch"), "{e}");
        }
    }

    #[test]
    fn bad_values_name_the_field_and_line() {
        let t = tempfile::tempdir().unwrap();
        let ca = ca(t.path());
        let err = |body: &str| format!("{:#}", resolve(&format!("[notify]\n{body}"), Some(&ca)).unwrap_err());
        let base = "[[notify.webhooks]]\nurl = \"https://hooks.test/h\"\n";
        assert!(err(&format!("{base}events = [\"approved\", \"aproved\"]\n")).contains("events (line 4): `aproved`"));
        assert!(err(&format!("{base}events = []\n")).contains("empty list"));
        assert!(err(&format!("{base}max_attempts = 0\n")).contains("max_attempts = 0: use 1 to 100"));
        assert!(err(&format!("{base}timeout_secs = 301\n")).contains("timeout_secs"));
        assert!(err(&format!("{base}surprise = 1\n")).contains("surprise"));
        assert!(err("[[notify.webhooks]]\nurl = \"ftp://hooks.test/h\"\n").contains("line 3"));
        assert!(err("[[notify.webhooks]]\nurl = \"https://u:p@hooks.test/h\"\n").contains("credentials"));
        assert!(err(&format!("{base}ca = \"missing.pem\"\n")).contains("missing.pem"));
        assert!(err("[[notify.webhooks]]\nurl = \"http://127.0.0.1/h\"\nca = \"x.pem\"\n").contains("plain http"));
        assert!(err("console_url = \"javascript:alert(1)\"\n").contains("notify.console_url (line 2)"));
        let ok = resolve("[notify]\nconsole_url = \"https://approvals.test:8444/\"\n", None).unwrap();
        assert_eq!(ok.console_url.unwrap().as_str(), "https://approvals.test:8444/");
    }
}
