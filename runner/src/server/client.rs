//! A small HTTPS client with a client certificate, over one keep-alive
//! connection: what `edge-runner submit`, `proposals`, `approve --server`,
//! the tests and the load generator use.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// Where the runner is and which certificates to use. The same four flags,
/// with the same environment defaults, on every client command (`approve`
/// and `reject` take them as optional: `crate::cli::approve::RemoteArgs`).
#[derive(Debug, Clone, clap::Args)]
pub struct ClientArgs {
    /// The runner's API, e.g. https://127.0.0.1:8443.
    #[arg(long, env = ENV_SERVER, value_name = "URL")]
    pub server: String,
    /// CA certificate that signed the runner's server certificate (PEM).
    #[arg(long, env = ENV_CA, value_name = "PEM")]
    pub ca: PathBuf,
    /// This client's certificate (PEM), issued by the runner's CA.
    #[arg(long, env = ENV_CERT, value_name = "PEM")]
    pub cert: PathBuf,
    /// This client's private key (PEM), for --cert.
    #[arg(long, env = ENV_KEY, value_name = "PEM")]
    pub key: PathBuf,
}

/// Environment defaults of the client flags (`--server`, `--ca`, `--cert`,
/// `--key`); a flag given on the command line wins.
pub const ENV_SERVER: &str = "EDGE_RUNNER_SERVER";
/// See [`ENV_SERVER`].
pub const ENV_CA: &str = "EDGE_RUNNER_CA";
/// See [`ENV_SERVER`].
pub const ENV_CERT: &str = "EDGE_RUNNER_CERT";
/// See [`ENV_SERVER`].
pub const ENV_KEY: &str = "EDGE_RUNNER_KEY";

/// One connection to a runner (re-established if the server closed it).
pub struct Client {
    connector: TlsConnector,
    addr: String,
    host: String,
    sender: Option<SendRequest<Full<Bytes>>>,
}

/// A response: status, content type and body.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub content_type: String,
    pub retry_after: Option<String>,
    pub body: Bytes,
}

impl Reply {
    /// Read a whole response.
    ///
    /// # Errors
    /// If the body cannot be read.
    pub async fn read(resp: hyper::Response<hyper::body::Incoming>) -> Result<Self> {
        let status = resp.status();
        let header = |name: &str| resp.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let content_type = header("content-type").unwrap_or_default();
        let retry_after = header("retry-after");
        let body = resp.into_body().collect().await?.to_bytes();
        Ok(Self { status, content_type, retry_after, body })
    }

    /// The body as JSON.
    ///
    /// # Errors
    /// If it is not JSON.
    pub fn json(&self) -> Result<serde_json::Value> {
        serde_json::from_slice(&self.body).with_context(|| format!("the runner answered {} with non-JSON", self.status))
    }

    /// The error message of a JSON error body, or the status.
    pub fn error_message(&self) -> String {
        self.json()
            .ok()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
            .unwrap_or_else(|| format!("HTTP {}", self.status))
    }
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("addr", &self.addr).finish_non_exhaustive()
    }
}

impl Client {
    /// Prepare a client for `server` (`https://host:port`).
    ///
    /// # Errors
    /// A bad URL or unusable certificates.
    pub fn new(server: &str, ca: &Path, cert: &Path, key: &Path) -> Result<Self> {
        let rest = server
            .strip_prefix("https://")
            .ok_or_else(|| anyhow!("--server `{server}` must start with https:// (the API is TLS only)"))?;
        let addr = rest.trim_end_matches('/').to_owned();
        let host = match addr.rsplit_once(':') {
            Some((h, p)) if p.parse::<u16>().is_ok() => h.trim_start_matches('[').trim_end_matches(']').to_owned(),
            _ => bail!("--server `{server}` needs a port, e.g. https://127.0.0.1:8443"),
        };
        let config = super::tls::client_config(ca, cert, key)?;
        Ok(Self { connector: TlsConnector::from(Arc::clone(&config)), addr, host, sender: None })
    }

    /// From the command-line arguments.
    ///
    /// # Errors
    /// As [`Client::new`].
    pub fn from_args(a: &ClientArgs) -> Result<Self> {
        Self::new(&a.server, &a.ca, &a.cert, &a.key)
    }

    async fn connect(&mut self) -> Result<&mut SendRequest<Full<Bytes>>> {
        if self.sender.as_ref().is_none_or(SendRequest::is_closed) {
            let tcp =
                TcpStream::connect(&self.addr).await.with_context(|| format!("cannot connect to {}", self.addr))?;
            tcp.set_nodelay(true)?;
            let name = super::tls::server_name(&self.host)?;
            let tls = self
                .connector
                .connect(name, tcp)
                .await
                .with_context(|| format!("TLS with {} failed (server certificate, or ours refused)", self.addr))?;
            let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            self.sender = Some(sender);
        }
        Ok(self.sender.as_mut().expect("just set"))
    }

    /// Send one request; the caller reads the response's body (a download
    /// streamed to a file).
    ///
    /// # Errors
    /// Connection or protocol failures (not HTTP error statuses).
    pub async fn send(
        &mut self,
        method: Method,
        path: &str,
        body: Option<(Vec<u8>, &str)>,
    ) -> Result<hyper::Response<hyper::body::Incoming>> {
        let host = self.addr.clone();
        let sender = self.connect().await?;
        sender.ready().await.context("the connection to the runner closed")?;
        let mut b = Request::builder().method(method).uri(path).header("host", host);
        let body = match body {
            Some((bytes, ct)) => {
                b = b.header("content-type", ct);
                Full::new(Bytes::from(bytes))
            }
            None => Full::new(Bytes::new()),
        };
        sender.send_request(b.body(body)?).await.context("the runner closed the connection")
    }

    /// Send one request and read the whole response.
    ///
    /// # Errors
    /// Connection or protocol failures (not HTTP error statuses).
    pub async fn request(&mut self, method: Method, path: &str, body: Option<(Vec<u8>, &str)>) -> Result<Reply> {
        Reply::read(self.send(method, path, body).await?).await
    }

    /// `GET path`.
    ///
    /// # Errors
    /// As [`Client::request`].
    pub async fn get(&mut self, path: &str) -> Result<Reply> {
        self.request(Method::GET, path, None).await
    }

    /// `POST path` with a body.
    ///
    /// # Errors
    /// As [`Client::request`].
    pub async fn post(&mut self, path: &str, body: Vec<u8>, content_type: &str) -> Result<Reply> {
        self.request(Method::POST, path, Some((body, content_type))).await
    }
}
