//! The `[endpoints.<name>]` sections of `runner.toml`: services a capsule
//! may call, by logical name (`crate::sandbox::egress` makes the calls).
//!
//! ```toml
//! [endpoints.etcd]
//! node = "config-store"                    # the graph node it belongs to
//! url = "https://etcd.internal:2379/"      # scheme, host, port, base path
//! methods = ["GET", "POST"]                # the methods a capsule may use
//! read_requests = ["POST /v3/kv/range"]    # besides GET/HEAD: requests that only read
//! connect = ["10.20.0.5", "10.20.1.0/24"]  # the only addresses it may connect to
//! ca = "etcd-ca.pem"                       # trust for https: this bundle only
//! client_cert = "runner-etcd.pem"          # the runner's identity at the service
//! client_key = "runner-etcd.key"
//! credential_header = "Authorization"      # attached by the runner; the capsule
//! credential_file = "etcd-token"           #   never sees it (value = file's first line)
//! max_request_kib = 1024
//! max_response_kib = 1024
//! timeout = "5s"                           # connect + whole response, per call
//! preview = "redacted"                     # request bodies as approvers and evidence see
//!                                          #   them: "full", "redacted", "digest-only"
//! ```
//!
//! Fail closed: `https` needs `ca` (the system's roots are never trusted);
//! `http` is refused unless every `connect` address is loopback or
//! `dangerous_plain_http` is set (recorded in every run). A node the graph
//! does not have is a load error (checked with the mounts' nodes).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use edge_core::calls::{METHODS, READ_METHODS};
use edge_core::preview::PreviewMode;
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawEndpoint {
    /// The graph node this endpoint belongs to.
    pub(crate) node: String,
    url: Option<String>,
    #[serde(default)]
    methods: Vec<String>,
    #[serde(default)]
    read_requests: Vec<String>,
    #[serde(default)]
    connect: Vec<String>,
    ca: Option<PathBuf>,
    client_cert: Option<PathBuf>,
    client_key: Option<PathBuf>,
    credential_header: Option<String>,
    credential_file: Option<PathBuf>,
    max_request_kib: Option<u64>,
    max_response_kib: Option<u64>,
    timeout: Option<String>,
    #[serde(default)]
    dangerous_plain_http: bool,
    /// What approvers and the evidence see of request bodies: "full"
    /// (default), "redacted" (secret-bearing lines masked) or "digest-only".
    preview: Option<String>,
    /// Patterns of secret-bearing lines for "redacted" (default: the mounts' defaults).
    redact: Option<Vec<String>>,
}

/// An address range a connection may go to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// `10.0.0.5`, `10.0.0.0/24`, `::1`, `fd00::/8`.
    ///
    /// # Errors
    /// If it is neither an address nor a range.
    pub fn parse(s: &str) -> Result<Self> {
        let (a, p) = s.split_once('/').map_or((s, None), |(a, p)| (a, Some(p)));
        let addr: IpAddr = a.trim().parse().with_context(|| format!("`{s}` is not an IP address or range"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            None => max,
            Some(p) => p.parse::<u8>().ok().filter(|p| *p <= max).with_context(|| format!("`{s}`: bad prefix"))?,
        };
        Ok(Self { addr, prefix })
    }

    /// Whether `ip` is in the range (an IPv4-mapped IPv6 address counts as
    /// its IPv4 address).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(a), IpAddr::V4(b)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0);
                u32::from(a) & mask == u32::from(b) & mask
            }
            (IpAddr::V6(a), IpAddr::V6(b)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix)).unwrap_or(0);
                u128::from(a) & mask == u128::from(b) & mask
            }
            _ => false,
        }
    }

    fn is_loopback(&self) -> bool {
        match self.addr {
            IpAddr::V4(a) => a.is_loopback() && self.prefix >= 8,
            IpAddr::V6(a) => a.is_loopback() && self.prefix == 128,
        }
    }
}

/// A header the runner attaches to every request to an endpoint. The value
/// is a secret: never in evidence, a log or anything a capsule can read.
#[derive(Clone)]
pub struct Credential {
    pub header: http::HeaderName,
    pub value: http::HeaderValue,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credential({}: [redacted])", self.header)
    }
}

/// A resolved endpoint.
#[derive(Debug, Clone)]
pub struct EndpointConfig {
    pub name: String,
    pub node: String,
    pub https: bool,
    /// Host as in the URL (a DNS name or an IP address), without brackets.
    pub host: String,
    pub port: u16,
    /// The base path every call's path is appended to (no trailing `/`).
    pub base_path: String,
    /// Methods a capsule may use.
    pub methods: Vec<String>,
    /// `METHOD /path` requests that only read, besides GET and HEAD.
    pub read_requests: Vec<(String, String)>,
    pub connect: Vec<Cidr>,
    pub tls: Option<Arc<rustls::ClientConfig>>,
    pub credential: Option<Credential>,
    pub max_request_bytes: usize,
    pub max_response_bytes: usize,
    pub timeout: Duration,
    pub dangerous_plain_http: bool,
    /// What approvers and the evidence see of request bodies.
    pub preview: edge_core::preview::PreviewMode,
    pub redact: edge_core::preview::Patterns,
}

impl EndpointConfig {
    /// This endpoint with its preview mode as a waiting proposal recorded it
    /// (`held`: endpoint → mode) when that is stricter than the config's now:
    /// loosening the config never shows or keeps more of what approvers saw
    /// masked.
    pub fn held(self: &Arc<Self>, held: &BTreeMap<String, PreviewMode>) -> Arc<Self> {
        match held.get(&self.name) {
            Some(&mode) if mode < self.preview => Arc::new(Self { preview: mode, ..(**self).clone() }),
            _ => self.clone(),
        }
    }

    /// What of a request body is kept as evidence and shown to approvers,
    /// under this endpoint's preview mode (None: the digest only).
    pub fn shown_body(&self, body: &[u8]) -> Option<Vec<u8>> {
        use edge_core::preview::{PreviewMode, Redactor, is_text};
        match self.preview {
            _ if body.is_empty() => None,
            PreviewMode::Full => Some(body.to_vec()),
            PreviewMode::Redacted if is_text(body) => {
                Some(Redactor::new(&self.redact).mask(std::str::from_utf8(body).unwrap_or_default()).0.into_bytes())
            }
            PreviewMode::Redacted | PreviewMode::DigestOnly => None,
        }
    }

    /// Whether a request only reads: GET, HEAD, or one the operator listed
    /// in `read_requests` (its path without the query).
    pub fn is_read(&self, method: &str, path: &str) -> bool {
        let route = path.split('?').next().unwrap_or(path);
        READ_METHODS.contains(&method) || self.read_requests.iter().any(|(m, p)| m == method && p == route)
    }

    /// Whether any allowed method changes something (the blast radius then
    /// counts a write to the node).
    pub fn may_write(&self) -> bool {
        self.methods.iter().any(|m| !READ_METHODS.contains(&m.as_str()))
    }

    /// `scheme://host:port/base` (no credentials: none are ever in a URL).
    pub fn url(&self) -> String {
        let host = if self.host.contains(':') { format!("[{}]", self.host) } else { self.host.clone() };
        format!("{}://{host}:{}{}", if self.https { "https" } else { "http" }, self.port, self.base_path)
    }
}

impl RawEndpoint {
    /// The files this endpoint reads at start (CA bundle, client
    /// certificate and key, credential), as written in the config.
    pub(crate) fn files(&self) -> impl Iterator<Item = &Path> {
        [&self.ca, &self.client_cert, &self.client_key, &self.credential_file]
            .into_iter()
            .flatten()
            .map(PathBuf::as_path)
    }

    pub(crate) fn resolve(self, name: &str, resolve: impl Fn(&Path) -> PathBuf) -> Result<EndpointConfig> {
        let f = |field: &str| format!("endpoints.{name}.{field}");
        let url = self.url.with_context(|| {
            format!("{} is missing: the endpoint's base URL, e.g. \"https://etcd.internal:2379/\"", f("url"))
        })?;
        // First: no message below may repeat credentials or a query (either
        // may be a secret).
        let authority = url.split_once("://").map_or(url.as_str(), |(_, rest)| rest).split('/').next().unwrap_or("");
        if authority.contains('@') {
            bail!("{}: credentials in the URL are refused; use credential_header/credential_file", f("url"));
        }
        if url.contains(['?', '#']) {
            bail!("{}: a base URL has no query or fragment", f("url"));
        }
        let uri: http::Uri = url.parse().with_context(|| format!("{} `{url}` is not a URL", f("url")))?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => bail!("{} `{url}` must start with https:// (or http:// on loopback)", f("url")),
        };
        let authority = uri.authority().with_context(|| format!("{} `{url}` has no host", f("url")))?;
        let host = authority.host().trim_start_matches('[').trim_end_matches(']').to_owned();
        let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
        let base_path = uri.path().trim_end_matches('/').to_owned();
        if !base_path.is_empty() {
            edge_core::calls::check_path(&base_path).map_err(|e| anyhow::anyhow!("{}: {e}", f("url")))?;
        }
        if self.methods.is_empty() {
            bail!("{} is empty: list the methods a capsule may use, e.g. [\"GET\", \"PUT\"]", f("methods"));
        }
        for m in &self.methods {
            if !METHODS.contains(&m.as_str()) {
                bail!("{}: `{m}` is not one of {}", f("methods"), METHODS.join(", "));
            }
        }
        let mut read_requests = Vec::new();
        for r in &self.read_requests {
            let Some((m, p)) = r.split_once(' ') else {
                bail!("{}: `{r}` must be `METHOD /path`, e.g. \"POST /v3/kv/range\"", f("read_requests"));
            };
            if !METHODS.contains(&m) || edge_core::calls::check_path(p).is_err() || p.contains('?') {
                bail!("{}: `{r}` must be `METHOD /path` with a method and a path without a query", f("read_requests"));
            }
            read_requests.push((m.to_owned(), p.to_owned()));
        }
        if self.connect.is_empty() {
            bail!(
                "{} is empty: list the addresses (or ranges) this endpoint may connect to; names are resolved by \
                 the runner and any other address is refused",
                f("connect")
            );
        }
        let connect =
            self.connect.iter().map(|c| Cidr::parse(c)).collect::<Result<Vec<_>>>().with_context(|| f("connect"))?;
        if !https && !self.dangerous_plain_http && !connect.iter().all(Cidr::is_loopback) {
            bail!(
                "{} `{url}` is plain http to a non-loopback address: use https with `ca`, or (test bench only) set \
                 dangerous_plain_http = true (recorded in every run)",
                f("url")
            );
        }
        let identity = match (&self.client_cert, &self.client_key) {
            (Some(c), Some(k)) => Some((resolve(c), resolve(k))),
            (None, None) => None,
            _ => bail!("{} and {} go together", f("client_cert"), f("client_key")),
        };
        let tls = match (https, &self.ca) {
            (true, Some(ca)) => Some(
                crate::server::tls::endpoint_client_config(
                    &resolve(ca),
                    identity.as_ref().map(|(c, k)| (c.as_path(), k.as_path())),
                )
                .with_context(|| format!("endpoint `{name}`"))?,
            ),
            (true, None) => bail!(
                "{} is missing: an https endpoint is trusted through its own CA bundle only (never the system's roots)",
                f("ca")
            ),
            (false, _) if self.ca.is_some() || identity.is_some() => {
                bail!("endpoint `{name}`: `ca` and a client certificate need an https url")
            }
            (false, _) => None,
        };
        let credential = match (&self.credential_header, &self.credential_file) {
            (Some(h), Some(file)) => {
                let header = http::HeaderName::from_bytes(h.as_bytes())
                    .with_context(|| format!("{} `{h}` is not a header name", f("credential_header")))?;
                let p = resolve(file);
                let text = std::fs::read_to_string(&p)
                    .with_context(|| format!("{}: cannot read {}", f("credential_file"), p.display()))?;
                let line = text.lines().next().unwrap_or("").trim();
                if line.is_empty() {
                    bail!("{}: {} is empty", f("credential_file"), p.display());
                }
                let mut value = http::HeaderValue::from_str(line)
                    .with_context(|| format!("{}: {} is not a header value", f("credential_file"), p.display()))?;
                value.set_sensitive(true);
                Some(Credential { header, value })
            }
            (None, None) => None,
            _ => bail!("{} and {} go together", f("credential_header"), f("credential_file")),
        };
        let kib = |field: &str, v: Option<u64>, default: u64| -> Result<usize> {
            let v = v.unwrap_or(default);
            if v == 0 || v > 64 * 1024 {
                bail!("{} must be 1 to 65536 KiB", f(field));
            }
            Ok(usize::try_from(v << 10).unwrap_or(usize::MAX))
        };
        let timeout = match self.timeout.as_deref() {
            None => Duration::from_secs(10),
            Some(s) => Duration::from_secs(
                edge_core::policy::parse_duration(s)
                    .filter(|s| *s > 0)
                    .with_context(|| format!("{} `{s}`: use a duration like \"5s\"", f("timeout")))?,
            ),
        };
        let preview = match self.preview.as_deref() {
            None => edge_core::preview::PreviewMode::Full,
            Some(p) => edge_core::preview::PreviewMode::parse(p).with_context(|| {
                format!("{} = \"{p}\" is not one of \"full\", \"redacted\", \"digest-only\"", f("preview"))
            })?,
        };
        let redact = match &self.redact {
            None => edge_core::preview::Patterns::defaults(),
            Some(p) => edge_core::preview::Patterns::compile(p)
                .with_context(|| format!("{}: a pattern is invalid", f("redact")))?,
        };
        Ok(EndpointConfig {
            name: name.to_owned(),
            node: self.node,
            https,
            host,
            port,
            base_path,
            methods: self.methods,
            read_requests,
            connect,
            tls,
            credential,
            max_request_bytes: kib("max_request_kib", self.max_request_kib, 1024)?,
            max_response_bytes: kib("max_response_kib", self.max_response_kib, 1024)?,
            timeout,
            dangerous_plain_http: self.dangerous_plain_http,
            preview,
            redact,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(toml_text: &str) -> Result<EndpointConfig> {
        let raw: RawEndpoint = toml::from_str(toml_text)?;
        raw.resolve("etcd", |p| p.to_path_buf())
    }

    #[test]
    fn ranges_hold_what_they_say() {
        let c = Cidr::parse("10.1.0.0/16").unwrap();
        assert!(c.contains("10.1.200.3".parse().unwrap()));
        assert!(!c.contains("10.2.0.1".parse().unwrap()));
        assert!(c.contains("::ffff:10.1.0.9".parse().unwrap()), "a mapped address is its IPv4 address");
        assert!(Cidr::parse("127.0.0.1").unwrap().contains("127.0.0.1".parse().unwrap()));
        assert!(!Cidr::parse("127.0.0.1").unwrap().contains("127.0.0.2".parse().unwrap()));
        assert!(Cidr::parse("0.0.0.0/0").unwrap().contains("8.8.8.8".parse().unwrap()));
        assert!(Cidr::parse("10.0.0.0/33").is_err() && Cidr::parse("etcd").is_err());
    }

    #[test]
    fn unsafe_combinations_do_not_load() {
        let base = "node = \"n\"\nmethods = [\"GET\"]\n";
        // Plain http off loopback.
        let e = load(&format!("{base}url = \"http://10.0.0.5:2379\"\nconnect = [\"10.0.0.5\"]")).unwrap_err();
        assert!(format!("{e:#}").contains("dangerous_plain_http"), "{e:#}");
        // … unless switched on, or loopback only.
        load(&format!("{base}url = \"http://10.0.0.5:2379\"\nconnect = [\"10.0.0.5\"]\ndangerous_plain_http = true"))
            .unwrap();
        let ok = load(&format!("{base}url = \"http://127.0.0.1:2379/api/\"\nconnect = [\"127.0.0.1\"]")).unwrap();
        assert_eq!((ok.port, ok.base_path.as_str()), (2379, "/api"));
        // https without its own CA.
        let e = load(&format!("{base}url = \"https://etcd:2379\"\nconnect = [\"10.0.0.5\"]")).unwrap_err();
        assert!(format!("{e:#}").contains("ca"), "{e:#}");
        // No addresses, credentials in the URL, unknown method, lone half.
        for bad in [
            format!("{base}url = \"http://127.0.0.1:1\""),
            format!("{base}url = \"http://u:p@127.0.0.1:1\"\nconnect = [\"127.0.0.1\"]"),
            "node = \"n\"\nmethods = [\"TRACE\"]\nurl = \"http://127.0.0.1:1\"\nconnect = [\"127.0.0.1\"]".to_owned(),
            format!("{base}url = \"http://127.0.0.1:1\"\nconnect = [\"127.0.0.1\"]\ncredential_header = \"X\""),
            format!("{base}url = \"http://127.0.0.1:1?x=1\"\nconnect = [\"127.0.0.1\"]"),
            format!("{base}url = \"ftp://127.0.0.1:1\"\nconnect = [\"127.0.0.1\"]"),
        ] {
            assert!(load(&bad).is_err(), "{bad} loaded");
        }
        // A credential or a query is refused without being repeated,
        // whatever else is wrong with the URL.
        for url in
            ["ftp://u:p-secret@127.0.0.1:1", "http://u:p-secret@127.0.0.1:1/a", "ftp://h/?k=p-secret", "x#p-secret"]
        {
            let e = format!("{:#}", load(&format!("{base}url = \"{url}\"\nconnect = [\"127.0.0.1\"]")).unwrap_err());
            assert!(!e.contains("p-secret") && (e.contains("credentials") || e.contains("query")), "{e}");
        }
    }

    #[test]
    fn reads_are_the_operators_call() {
        let e = load(
            "node = \"n\"\nmethods = [\"POST\"]\nurl = \"http://127.0.0.1:2379\"\nconnect = [\"127.0.0.1\"]\n\
             read_requests = [\"POST /v3/kv/range\"]",
        )
        .unwrap();
        assert!(e.is_read("POST", "/v3/kv/range") && e.is_read("GET", "/x") && e.is_read("POST", "/v3/kv/range?a"));
        assert!(!e.is_read("POST", "/v3/kv/put") && !e.is_read("PUT", "/v3/kv/range"));
        assert!(e.may_write());
    }

    #[test]
    fn bodies_are_kept_as_the_preview_mode_says() {
        let base = "node = \"n\"\nmethods = [\"PUT\"]\nurl = \"http://127.0.0.1:1\"\nconnect = [\"127.0.0.1\"]\n";
        let body = b"mode = fast\napi_token = 5f0c\n";
        assert_eq!(load(base).unwrap().shown_body(body).as_deref(), Some(&body[..]), "full by default");
        let masked = load(&format!("{base}preview = \"redacted\"")).unwrap().shown_body(body).unwrap();
        let masked = String::from_utf8(masked).unwrap();
        assert!(masked.starts_with("mode = fast\napi_token = [redacted") && !masked.contains("5f0c"), "{masked}");
        let own = load(&format!("{base}preview = \"redacted\"\nredact = [\"^mode\"]")).unwrap();
        let masked = String::from_utf8(own.shown_body(body).unwrap()).unwrap();
        assert!(masked.contains("api_token = 5f0c") && !masked.contains("fast"), "the operator's patterns: {masked}");
        let redacted = load(&format!("{base}preview = \"redacted\"")).unwrap();
        assert_eq!(redacted.shown_body(&[0xff, 0, 1]), None, "a body that is not text: its digest only");
        assert_eq!(load(&format!("{base}preview = \"digest-only\"")).unwrap().shown_body(body), None);
        let e = load(&format!("{base}preview = \"partial\"")).unwrap_err();
        assert!(format!("{e:#}").contains("\"full\", \"redacted\", \"digest-only\""), "{e:#}");
        assert!(load(&format!("{base}preview = \"redacted\"\nredact = [\"(\"]")).is_err());
    }
}
