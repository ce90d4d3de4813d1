//! One attempt to deliver a notification: connect (TLS for https, trusting
//! only the webhook's configured CAs), POST the body, read the status. The
//! caller bounds the whole attempt in time; the response body is never read.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use bytes::Bytes;
use http_body_util::Full;
use hyper::StatusCode;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// Longest error text kept (it is recorded in evidence).
const MAX_ERROR: usize = 300;

/// What to send.
pub(super) struct Request<'a> {
    pub url: &'a url::Url,
    pub tls: Option<&'a TlsConnector>,
    pub headers: &'a [(&'static str, String)],
    pub body: &'a [u8],
}

/// How an attempt went.
pub(super) enum Attempt {
    Delivered,
    Failed {
        /// Connection errors, timeouts, `408`, `429` and `5xx` are retried;
        /// any other answer is final.
        retry: bool,
        error: String,
        /// The receiver's `Retry-After` (seconds form), if any.
        retry_after: Option<Duration>,
    },
}

fn failed(retry: bool, error: impl std::fmt::Display) -> Attempt {
    let mut error = edge_core::text::line(&error.to_string()).into_owned();
    if error.len() > MAX_ERROR {
        let cut = (0..=MAX_ERROR).rev().find(|i| error.is_char_boundary(*i)).unwrap_or(0);
        error.truncate(cut);
        error.push('…');
    }
    Attempt::Failed { retry, error, retry_after: None }
}

/// A TLS client trusting exactly `roots` (no system or bundled roots: a
/// runner sends only to receivers whose CA its operator named). TLS 1.2 and
/// 1.3, rustls's safe defaults: receivers are not ours to upgrade.
///
/// # Errors
/// If the provider rejects the protocol versions (it does not).
pub(super) fn connector(roots: Arc<rustls::RootCertStore>) -> Result<TlsConnector> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsConnector::from(Arc::new(config)))
}

/// One attempt.
pub(super) async fn post(req: Request<'_>) -> Attempt {
    let url = req.url;
    let port = url.port_or_known_default().unwrap_or(443);
    let (tcp, name) = match url.host() {
        Some(url::Host::Domain(d)) => (TcpStream::connect((d, port)).await, ServerName::try_from(d.to_owned()).ok()),
        Some(url::Host::Ipv4(ip)) => (TcpStream::connect((ip, port)).await, Some(IpAddr::V4(ip).into())),
        Some(url::Host::Ipv6(ip)) => (TcpStream::connect((ip, port)).await, Some(IpAddr::V6(ip).into())),
        None => return failed(false, "the URL has no host"),
    };
    let tcp = match tcp {
        Ok(t) => t,
        Err(e) => return failed(true, format!("cannot connect: {e}")),
    };
    let _ = tcp.set_nodelay(true);
    match req.tls {
        Some(tls) => {
            let Some(name) = name else { return failed(false, "the host is not a valid TLS server name") };
            match tls.connect(name, tcp).await {
                Ok(stream) => exchange(stream, &req).await,
                Err(e) => failed(true, format!("TLS: {e}")),
            }
        }
        None => exchange(tcp, &req).await,
    }
}

async fn exchange<IO>(io: IO, req: &Request<'_>) -> Attempt
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = match hyper::client::conn::http1::handshake(TokioIo::new(io)).await {
        Ok(c) => c,
        Err(e) => return failed(true, format!("HTTP: {e}")),
    };
    let conn = tokio::spawn(conn);
    let url = req.url;
    let mut b = hyper::Request::builder()
        .method(hyper::Method::POST)
        .uri(&url[url::Position::BeforePath..url::Position::AfterQuery])
        .header(hyper::header::HOST, &url[url::Position::BeforeHost..url::Position::AfterPort])
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .header(hyper::header::USER_AGENT, concat!("edge-runner/", env!("CARGO_PKG_VERSION")));
    for (name, value) in req.headers {
        b = b.header(*name, value);
    }
    let answer = match b.body(Full::new(Bytes::copy_from_slice(req.body))) {
        Ok(r) => sender.send_request(r).await,
        Err(e) => {
            conn.abort();
            return failed(false, format!("cannot build the request: {e}"));
        }
    };
    // Only the status matters; the body is not read.
    conn.abort();
    let resp = match answer {
        Ok(r) => r,
        Err(e) => return failed(true, format!("HTTP: {e}")),
    };
    let status = resp.status();
    if status.is_success() {
        return Attempt::Delivered;
    }
    let retry =
        status.is_server_error() || matches!(status, StatusCode::TOO_MANY_REQUESTS | StatusCode::REQUEST_TIMEOUT);
    let retry_after = resp
        .headers()
        .get(hyper::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    match failed(retry, format!("HTTP {status}")) {
        Attempt::Failed { retry, error, .. } => Attempt::Failed { retry, error, retry_after },
        Attempt::Delivered => Attempt::Delivered,
    }
}
