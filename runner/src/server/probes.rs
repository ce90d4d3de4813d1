//! The probe listener (`[probes]`): `/healthz`, `/readyz` and, when
//! configured, `/metrics`, over plain HTTP/1.1 on a loopback address or a
//! Unix socket, for an orchestrator or a local monitoring agent that holds
//! no client certificate.
//!
//! It is bound before the runner opens, so `/healthz` answers (and
//! `/readyz` says `503 starting`) while a long evidence log is verified, and
//! it keeps answering `503 shutting down` while the runs in progress finish.
//! Nothing else is served: another path is `404`, another method `405`, a
//! request with a body `413`. One request per connection, headers within
//! 8 KiB and [`REQUEST_TIMEOUT`], the whole connection within
//! [`CONNECTION_TIMEOUT`], at most [`MAX_CONNECTIONS`] at once.
//!
//! A Unix socket is created mode 0660 (the service's user and group may
//! connect). A socket file left by an earlier process is replaced; anything
//! else at that path (a file, a directory, a socket another process still
//! answers on) is refused, never removed.

use std::convert::Infallible;
use std::future::Future;
use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use hyper::body::Incoming;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};

use crate::config::probes::{ProbeAddr, ProbeSettings};
use crate::server::accept::accept_loop;
use crate::server::api::{Resp, error};
use crate::server::health::{self, Probe};
use crate::service::RunService;

/// Probe connections served at once; more wait in the kernel backlog.
pub const MAX_CONNECTIONS: usize = 64;
/// Time to send a request's headers.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest a probe connection may stay open, answer included.
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);
/// Mode of a probe Unix socket.
pub const SOCKET_MODE: u32 = 0o660;

/// The runner, once it is open (the listener is up before).
pub(crate) type Opened = Arc<OnceLock<Arc<RunService>>>;

/// A bound probe listener.
#[derive(Debug)]
pub(crate) enum ProbeListener {
    Tcp(tokio::net::TcpListener),
    Unix(tokio::net::UnixListener, SocketFile),
}

/// The socket file this process created; removed when dropped if it is
/// still the one we bound.
#[derive(Debug)]
pub(crate) struct SocketFile {
    path: PathBuf,
    ino: (u64, u64),
}

impl SocketFile {
    /// The socket just bound at `path`.
    ///
    /// # Errors
    /// If it cannot be inspected.
    pub(crate) fn new(path: PathBuf) -> Result<Self> {
        let m = std::fs::symlink_metadata(&path).with_context(|| format!("cannot inspect {}", path.display()))?;
        Ok(Self { path, ino: (m.dev(), m.ino()) })
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        if let Ok(m) = std::fs::symlink_metadata(&self.path)
            && (m.dev(), m.ino()) == self.ino
        {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl ProbeListener {
    /// Where it listens, as printed at start (`http://127.0.0.1:9464`, `unix:/…`).
    pub(crate) fn shown(&self) -> String {
        match self {
            ProbeListener::Tcp(l) => {
                l.local_addr().map_or_else(|_| "http://?".to_owned(), |a| ProbeAddr::Tcp(a).to_string())
            }
            ProbeListener::Unix(_, f) => ProbeAddr::Unix(f.path.clone()).to_string(),
        }
    }
}

/// Bind the probe listener `settings` names.
///
/// # Errors
/// The address is taken, the socket's directory is missing or not
/// writable, or its path holds something that is not a stale socket.
pub(crate) async fn bind(settings: &ProbeSettings) -> Result<ProbeListener> {
    match &settings.listen {
        ProbeAddr::Tcp(a) => {
            let l = tokio::net::TcpListener::bind(a)
                .await
                .with_context(|| format!("cannot listen for probes on {a} (probes.listen)"))?;
            Ok(ProbeListener::Tcp(l))
        }
        ProbeAddr::Unix(p) => bind_unix(p),
    }
}

fn bind_unix(path: &Path) -> Result<ProbeListener> {
    // Absolute: shown at start, and removed at exit whatever the directory then.
    let path =
        &std::path::absolute(path).with_context(|| format!("probes.listen: cannot resolve {}", path.display()))?;
    match inspect_socket_path(path).with_context(|| format!("probes.listen: cannot inspect {}", path.display()))? {
        SocketPath::Free => {}
        SocketPath::Live => bail!(
            "probes.listen: another process is serving on {} (another runner?): stop it or choose another path",
            path.display()
        ),
        SocketPath::Stale => {
            std::fs::remove_file(path)
                .with_context(|| format!("cannot remove the stale probe socket {}", path.display()))?;
            tracing::info!(path = %path.display(), "removed a stale probe socket");
        }
        SocketPath::NotASocket(kind) => bail!(
            "probes.listen: {} exists and is not a socket (it is a {kind}); the runner replaces only a stale socket \
             there: move it away or choose another path",
            path.display()
        ),
    }
    let l = tokio::net::UnixListener::bind(path).with_context(|| {
        format!(
            "cannot listen for probes on unix:{} (probes.listen): its directory must exist and be writable by the \
             runner (the systemd unit's RuntimeDirectory= makes /run/edge-runner)",
            path.display()
        )
    })?;
    chmod_socket(path, SOCKET_MODE).with_context(|| format!("cannot set mode 0660 on {}", path.display()))?;
    Ok(ProbeListener::Unix(l, SocketFile::new(path.to_path_buf())?))
}

/// Set the mode of the socket just bound at `path` without following a
/// symbolic link: in a directory others may write (`/tmp`), someone could
/// put a link there between the bind and a chmod by path, and a runner
/// running as root would then change the mode of whatever it points to.
/// The socket is opened by path without following links (`O_PATH`), must
/// be a socket, and its mode is set through that descriptor
/// (`/proc/self/fd`); at worst that is another's socket put in its place,
/// whose mode is then ours to set.
///
/// # Errors
/// If it is not a socket (a link, a file), or the mode cannot be set.
pub(crate) fn chmod_socket(path: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)?;
    if !f.metadata()?.file_type().is_socket() {
        return Err(std::io::Error::other("not a socket (replaced after it was bound?)"));
    }
    let by_fd = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&f));
    std::fs::set_permissions(by_fd, std::fs::Permissions::from_mode(mode))
}

/// What is at a probe socket's path: what `serve` binds over (nothing, or
/// a stale socket) and what it refuses. Shared with `edge-runner check`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SocketPath {
    Free,
    /// A socket nothing answers on (its process is gone): replaced.
    Stale,
    /// A socket something still answers on.
    Live,
    /// Something else (its kind).
    NotASocket(&'static str),
}

/// Inspect `path` without following a symbolic link.
///
/// # Errors
/// If it cannot be inspected (other than being absent).
pub(crate) fn inspect_socket_path(path: &Path) -> std::io::Result<SocketPath> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            Ok(if std::os::unix::net::UnixStream::connect(path).is_ok() { SocketPath::Live } else { SocketPath::Stale })
        }
        Ok(m) => Ok(SocketPath::NotASocket(kind(&m.file_type()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(SocketPath::Free),
        Err(e) => Err(e),
    }
}

fn kind(t: &std::fs::FileType) -> &'static str {
    if t.is_dir() {
        "directory"
    } else if t.is_symlink() {
        "symbolic link"
    } else if t.is_file() {
        "regular file"
    } else {
        "special file"
    }
}

/// Serve probes on `listener` until `shutdown`. `runs` is filled in once
/// the runner is open; `metrics` serves `/metrics` too.
pub(crate) async fn serve(listener: ProbeListener, runs: Opened, metrics: bool, shutdown: impl Future<Output = ()>) {
    let open = match &listener {
        ProbeListener::Tcp(l) => {
            accept_loop("probes", l, MAX_CONNECTIONS, shutdown, |io, _| connection(io, runs.clone(), metrics)).await
        }
        ProbeListener::Unix(l, _) => {
            accept_loop("probes", l, MAX_CONNECTIONS, shutdown, |io, _| connection(io, runs.clone(), metrics)).await
        }
    };
    let mut open = open;
    open.abort_all();
    while open.join_next().await.is_some() {}
    drop(listener);
}

async fn connection<I>(io: I, runs: Opened, metrics: bool)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req| {
        let runs = runs.clone();
        async move {
            let started = std::time::Instant::now();
            let resp = handle(runs.get().map(|r| &**r), metrics, &req).await;
            access(&req, resp.status(), started);
            Ok::<_, Infallible>(resp)
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(REQUEST_TIMEOUT)
        .keep_alive(false)
        .max_buf_size(8192)
        .serve_connection(TokioIo::new(io), service);
    match tokio::time::timeout(CONNECTION_TIMEOUT, conn).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::debug!(error = %e, "probe connection closed"),
        Err(_) => tracing::debug!("probe connection timed out"),
    }
}

/// The access log of the probe listener: an orchestrator probes every few
/// seconds, so answered probes are logged at debug level and only refused
/// requests (another path, method or a body) at info.
fn access(req: &Request<Incoming>, status: StatusCode, started: std::time::Instant) {
    let path = edge_core::text::line(req.uri().path()).chars().take(256).collect::<String>();
    let ms = started.elapsed().as_secs_f64() * 1e3;
    let (method, status) = (req.method().as_str(), status.as_u16());
    if matches!(status, 404 | 405 | 413) {
        tracing::info!(target: "edge_runner::access", listener = "probes", method, path, status, ms, "request");
    } else {
        tracing::debug!(target: "edge_runner::access", listener = "probes", method, path, status, ms, "request");
    }
}

/// The answer to one probe request.
async fn handle(runs: Option<&RunService>, metrics: bool, req: &Request<Incoming>) -> Resp {
    let path = req.uri().path();
    let served = if metrics { "/healthz, /readyz and /metrics" } else { "/healthz and /readyz" };
    let Some(probe) = Probe::of_path(path).filter(|p| metrics || *p != Probe::Metrics) else {
        return error(
            StatusCode::NOT_FOUND,
            format!("no route {}: this listener serves only {served}", edge_core::text::line(path)),
        );
    };
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r =
            error(StatusCode::METHOD_NOT_ALLOWED, format!("{} is not allowed on {path}: GET or HEAD", req.method()));
        r.headers_mut().insert(hyper::header::ALLOW, hyper::header::HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    let has_body = req.headers().contains_key(hyper::header::TRANSFER_ENCODING)
        || req
            .headers()
            .get(hyper::header::CONTENT_LENGTH)
            .is_some_and(|v| v.to_str().ok().and_then(|s| s.parse::<u64>().ok()) != Some(0));
    if has_body {
        return error(StatusCode::PAYLOAD_TOO_LARGE, "a probe request has no body");
    }
    health::answer(runs, probe).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(listen: ProbeAddr) -> ProbeSettings {
        ProbeSettings { listen, metrics: false, dangerous: false }
    }

    /// A link put where the socket was bound is not followed: the file it
    /// points to keeps its mode.
    #[test]
    fn the_socket_mode_is_set_on_the_socket_never_through_a_link() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let _l = std::os::unix::net::UnixListener::bind(&path).unwrap();
        chmod_socket(&path, 0o600).unwrap();
        assert_eq!(std::fs::symlink_metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        chmod_socket(&path, 0o660).unwrap();
        assert_eq!(std::fs::symlink_metadata(&path).unwrap().permissions().mode() & 0o777, 0o660);
        // Swapped for a link to another socket (as someone with write
        // access to the directory could between the bind and the chmod):
        // the link is not followed, so that socket keeps its mode.
        let other = dir.path().join("other.sock");
        let _o = std::os::unix::net::UnixListener::bind(&other).unwrap();
        std::fs::set_permissions(&other, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink(&other, &path).unwrap();
        let e = chmod_socket(&path, 0o600).unwrap_err();
        assert!(e.to_string().contains("not a socket"), "{e}");
        assert_eq!(std::fs::symlink_metadata(&other).unwrap().permissions().mode() & 0o777, 0o644);
        // A link to a file, likewise.
        let target = dir.path().join("precious");
        std::fs::write(&target, "x").unwrap();
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink(&target, &path).unwrap();
        let e = chmod_socket(&path, 0o600).unwrap_err();
        assert!(e.to_string().contains("not a socket"), "{e}");
        assert_eq!(std::fs::metadata(&target).unwrap().permissions().mode() & 0o777, 0o644);
        // And a plain file there is not a socket either.
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, "y").unwrap();
        assert!(chmod_socket(&path, 0o600).is_err());
    }

    #[tokio::test]
    async fn a_stale_socket_is_replaced_and_anything_else_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("probes.sock");
        // A socket left behind by a dead process.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        let l = bind(&settings(ProbeAddr::Unix(path.clone()))).await.unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o660);
        // One that is alive is not taken over.
        let e = format!("{:#}", bind(&settings(ProbeAddr::Unix(path.clone()))).await.unwrap_err());
        assert!(e.contains("another process is serving"), "{e}");
        drop(l);
        assert!(!path.exists(), "the socket is removed when the listener goes");
        // A regular file or a directory at the path is never removed.
        std::fs::write(&path, "precious").unwrap();
        let e = format!("{:#}", bind(&settings(ProbeAddr::Unix(path.clone()))).await.unwrap_err());
        assert!(e.contains("is not a socket (it is a regular file)"), "{e}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "precious");
        let sub = dir.path().join("sub");
        std::fs::create_dir(&sub).unwrap();
        let e = format!("{:#}", bind(&settings(ProbeAddr::Unix(sub.clone()))).await.unwrap_err());
        assert!(e.contains("it is a directory"), "{e}");
        // A missing directory names what to do.
        let e = format!("{:#}", bind(&settings(ProbeAddr::Unix(dir.path().join("no/p.sock")))).await.unwrap_err());
        assert!(e.contains("directory must exist"), "{e}");
    }
}
