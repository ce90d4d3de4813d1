//! `edge-runner serve`: the runner as a service.
//!
//! ```text
//!  agents / approvers / reviewers
//!        │  HTTPS, TLS 1.3, client certificate required (tls.rs)
//!        ▼
//!  accept loop ── per connection: handshake timeout, agent identity from the
//!        │        verified certificate, HTTP/1.1 with header/idle timeouts
//!        ▼
//!  api.rs routes ── bounded bodies, JSON ──► crate::service: run slots
//!                                             (max_concurrent_runs, then a
//!                                             bounded wait, then 429); each
//!                                             run is its own task on the one
//!                                             shared Runner (group-committed
//!                                             evidence, per-mount locks)
//! ```
//!
//! Beside it: the approval console (`[console]`, its own TLS listener) and
//! the probe listener (`[probes]`: health, readiness and optionally metrics
//! without a client certificate, on loopback or a Unix socket). All three
//! share one accept loop (`accept.rs`). Under systemd, `serve` reports
//! readiness, reloads and shutdown and pings the watchdog (`systemd.rs`).
//!
//! The server takes its listener and a shutdown future, so tests run it on
//! `127.0.0.1:0`. On shutdown it stops accepting and closes connections; the
//! runs in progress and those already admitted finish (a run is never cut in
//! the middle by the server; a killed process is recovered on the next
//! start), then it returns.

pub(crate) mod accept;
pub mod api;
pub mod client;
pub mod health;
pub(crate) mod probes;
pub mod systemd;
pub mod tls;

use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::{Context, Result};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::config::RunnerConfig;
use crate::config::server::ServerSettings;

/// How long a client has to complete the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once; more wait in the kernel backlog.
const MAX_CONNECTIONS: usize = 1024;
/// Largest read buffer a connection keeps (hyper's default is ~400 KiB): a
/// body arrives in TLS records of 16 KiB, and a buffer grown to hold a
/// whole upload stayed that large while its run waited in the queue.
/// (hyper's bound is loose: one read may fill the buffer's spare room past
/// it.) The console's connections use it too.
const READ_BUFFER: usize = 64 * 1024;
/// Largest request head (request line and headers) read; a larger one is
/// refused with 431, by hyper, with an empty body.
const MAX_HEAD: usize = 64 * 1024;

/// How a connection is served (the API's and the console's): keep-alive,
/// headers within `header_timeout` and [`MAX_HEAD`], a read buffer of about
/// [`READ_BUFFER`].
pub(crate) fn http1(header_timeout: Duration) -> hyper::server::conn::http1::Builder {
    let mut b = hyper::server::conn::http1::Builder::new();
    b.timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .keep_alive(true)
        .max_buf_size(READ_BUFFER)
        .max_header_size(MAX_HEAD);
    b
}

/// Shared by every connection.
pub(crate) struct Shared {
    pub settings: ServerSettings,
    pub runs: Arc<crate::service::RunService>,
    pub metrics: Arc<crate::service::metrics::Metrics>,
}

/// Where `serve` listens, once every listener is bound and the runner open.
#[derive(Debug)]
pub struct Bound<'a> {
    /// The mTLS API (`[server]`).
    pub api: Option<std::net::SocketAddr>,
    /// The spool's directory (`[spool]`).
    pub spool: Option<&'a std::path::Path>,
    /// The NATS server the runner dials out to (`[nats]`).
    pub nats: Option<&'a str>,
    /// The approval console's origin (`[console]`).
    pub console: Option<&'a str>,
    /// The probe listener (`[probes]`): `http://127.0.0.1:9464` or `unix:/…`.
    pub probes: Option<&'a str>,
}

/// Aborts a task when dropped (a start that fails half-way leaves nothing running).
struct Abort(tokio::task::AbortHandle);

impl Drop for Abort {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Open the runner (verifying its evidence log, recovering interrupted
/// runs) and serve the API on `listener` until `shutdown` completes;
/// `ready` is called once every listener is bound and the runner is open,
/// and `systemd` is told so (and about reloads and the shutdown).
///
/// # Errors
/// If the config has no intake (`[server]`, `[spool]`), `[server]` has no
/// listener or one without it, the TLS material is unusable, a listener
/// cannot be bound, or the runner cannot open (a broken evidence log refuses
/// to start, loudly).
pub async fn serve(
    config: RunnerConfig,
    listener: Option<TcpListener>,
    shutdown: impl Future<Output = ()>,
    systemd: systemd::Notifier,
    ready: impl FnOnce(&Bound<'_>),
) -> Result<()> {
    // SIGHUP from the first moment: one that arrives while the runner opens
    // (verifying a long log) is kept and reloads once it is open, instead of
    // ending the process as the default disposition would.
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("cannot install the SIGHUP (reload) handler")?;
    anyhow::ensure!(
        config.server.is_some() || config.spool.is_some() || config.nats.is_some(),
        "the runner config has no intake: add [server] (the mTLS API; `edge-runner init` writes one), [spool] or \
         [nats] (docs/operations.md)"
    );
    let api = match (config.server.clone(), listener) {
        (Some(settings), Some(listener)) => {
            let tls = tls::server_config(&settings.cert, &settings.key, &settings.client_ca)?;
            Some((settings, TlsAcceptor::from(tls), listener))
        }
        (None, None) => None,
        _ => anyhow::bail!("[server] and the API listener go together"),
    };
    let (max_running, queue) = api
        .as_ref()
        .map_or((crate::config::server::default_concurrent_runs(), crate::config::server::DEFAULT_QUEUE), |(s, ..)| {
            (s.max_concurrent_runs, s.queue)
        });
    // The probes first: they answer while the runner opens (`/readyz`: 503
    // starting) and until the runs in progress have finished at shutdown.
    let opened: probes::Opened = Arc::new(OnceLock::new());
    let (probes_stop, probes_stopped) = tokio::sync::oneshot::channel::<()>();
    let probes = match config.probes.clone() {
        Some(p) => {
            let l = probes::bind(&p).await?;
            let shown = l.shown();
            if p.dangerous {
                tracing::warn!(listen = %shown, "probes on a network address (probes.dangerous_plain_http): \
                    anyone who reaches it reads them unauthenticated");
            }
            tracing::info!(listen = %shown, metrics = p.metrics, "probes serving");
            let task = tokio::spawn(probes::serve(l, opened.clone(), p.metrics, async {
                let _ = probes_stopped.await;
            }));
            Some((shown, Abort(task.abort_handle()), task))
        }
        None => None,
    };
    let metrics = Arc::new(crate::service::metrics::Metrics::default());
    let spool_settings = config.spool.clone();
    let nats_settings = config.nats.clone();
    let runs = crate::service::RunService::start(config, max_running, queue, metrics.clone()).await?;
    let _ = opened.set(runs.clone());
    // The approval console, on its own listener (`[console]`).
    let (console_stop, console_stopped) = tokio::sync::oneshot::channel::<()>();
    let console = match runs.runner().config.console.clone() {
        Some(c) => {
            let (console, l, acceptor) = crate::console::start(runs.clone(), &c, None).await?;
            tracing::info!(origin = %console.origin(), "console serving");
            let origin = console.origin().to_owned();
            let task = tokio::spawn(crate::console::serve(console, l, acceptor, async {
                let _ = console_stopped.await;
            }));
            Some((origin, task))
        }
        None => None,
    };
    // SIGHUP reloads policy, graph, signers and approvers (a refused
    // reload is recorded and changes nothing); systemd hears of it.
    let hangup = {
        let (runs, systemd) = (runs.clone(), systemd.clone());
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                systemd.reloading();
                let status = match runs.runner().reload("sighup").await {
                    Ok(r) if r.applied => "serving; reloaded".to_owned(),
                    Ok(r) => format!(
                        "serving; reload refused, the running configuration stays: {}",
                        r.error.as_deref().unwrap_or("")
                    ),
                    Err(e) => {
                        tracing::error!(error = %format!("{e:#}"), "reload could not be recorded; nothing changed");
                        "serving; reload could not be recorded, nothing changed".to_owned()
                    }
                };
                systemd.ready(&status);
            }
        })
        .abort_handle()
    };
    // `edge-runner exec` on this host hands its runs over a socket in the
    // state directory (`crate::intake::local`): the store is ours.
    let (exec_stop, exec_stopped) = tokio::sync::oneshot::channel::<()>();
    let exec_socket = crate::intake::local::bind(&runs.runner().config)?.map(|l| {
        tokio::spawn(crate::intake::local::serve(l, runs.clone(), async {
            let _ = exec_stopped.await;
        }))
    });
    // The spool (`[spool]`): its own task, stopped before the runs finish.
    let (spool_stop, spool_stopped) = tokio::sync::oneshot::channel::<()>();
    if api.is_some() {
        runs.intakes().set("api", Ok(()));
    }
    // NATS (`[nats]`): dials out in the background; the runner serves
    // without it and says so in /readyz while it is away.
    let (nats_stop, nats_stopped) = tokio::sync::oneshot::channel::<()>();
    let nats = nats_settings.map(|n| {
        let url = n.url.clone();
        let task = tokio::spawn(crate::intake::nats::serve(n, runs.clone(), async {
            let _ = nats_stopped.await;
        }));
        (url, task)
    });
    let spool = match spool_settings {
        Some(s) => {
            runs.intakes().set("spool", Ok(()));
            crate::intake::spool::prepare(&s)?;
            let dir = s.dir.clone();
            tracing::info!(dir = %dir.display(), "spool serving");
            let task = tokio::spawn(crate::intake::spool::serve(s, runs.clone(), async {
                let _ = spool_stopped.await;
            }));
            Some((dir, task))
        }
        None => None,
    };
    let api = api.map(|(settings, acceptor, listener)| {
        (Arc::new(Shared { settings, runs: runs.clone(), metrics: metrics.clone() }), acceptor, listener)
    });
    let addr = api.as_ref().map(|(_, _, l)| l.local_addr()).transpose()?;
    if let Some(addr) = addr {
        tracing::info!(%addr, "serving");
    }
    let bound = Bound {
        api: addr,
        spool: spool.as_ref().map(|(d, _)| d.as_path()),
        nats: nats.as_ref().map(|(u, _)| u.as_str()),
        console: console.as_ref().map(|(o, _)| o.as_str()),
        probes: probes.as_ref().map(|(p, ..)| p.as_str()),
    };
    ready(&bound);
    systemd.ready(&format!(
        "serving{}{}{}{}{}",
        addr.map(|a| format!(" on https://{a}")).unwrap_or_default(),
        bound.spool.map(|d| format!(", spool {}", d.display())).unwrap_or_default(),
        bound.nats.map(|u| format!(", nats {u}")).unwrap_or_default(),
        bound.console.map(|c| format!(", console {c}")).unwrap_or_default(),
        bound.probes.map(|p| format!(", probes {p}")).unwrap_or_default()
    ));
    let watchdog = systemd.spawn_watchdog(runs.clone()).map(Abort);
    let mut connections = match &api {
        Some((shared, acceptor, listener)) => {
            accept::accept_loop("api", listener, MAX_CONNECTIONS, shutdown, |tcp, peer| {
                let (acceptor, shared) = (acceptor.clone(), shared.clone());
                async move {
                    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            tracing::info!(%peer, error = %e, "TLS handshake refused");
                            shared.metrics.tls_refused();
                            return;
                        }
                        Err(_) => {
                            tracing::info!(%peer, "TLS handshake timed out");
                            shared.metrics.tls_refused();
                            return;
                        }
                    };
                    let agent = match tls.get_ref().1.peer_certificates().and_then(|c| c.first()) {
                        Some(der) => tls::agent_identity(der).map_err(|e| e.to_string()),
                        None => Err("no client certificate".to_owned()),
                    };
                    let timeout = shared.settings.request_timeout;
                    let service =
                        hyper::service::service_fn(move |req| api::handle(shared.clone(), peer, agent.clone(), req));
                    let conn = http1(timeout).serve_connection(TokioIo::new(tls), service);
                    if let Err(e) = conn.await {
                        tracing::debug!(%peer, error = %e, "connection closed");
                    }
                }
            })
            .await
        }
        None => {
            shutdown.await;
            tokio::task::JoinSet::new()
        }
    };
    tracing::info!("shutting down: no new connections; finishing the runs in progress");
    systemd.stopping("shutting down: finishing the runs in progress");
    hangup.abort();
    let _ = spool_stop.send(());
    let _ = nats_stop.send(());
    let _ = exec_stop.send(());
    if let Some((_, task)) = nats {
        match task.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %format!("{e:#}"), "the NATS intake stopped"),
            Err(e) => tracing::error!(error = %e, "the NATS intake task failed"),
        }
    }
    if let Some((_, task)) = spool {
        match task.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %format!("{e:#}"), "the spool stopped"),
            Err(e) => tracing::error!(error = %e, "the spool task failed"),
        }
    }
    let shared = api.map(|(shared, _, listener)| {
        drop(listener);
        shared
    });
    let _ = console_stop.send(());
    if let Some((_, task)) = console {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), task).await;
    }
    runs.shutdown().await;
    // The runs handed over have finished: their answers are sent.
    if let Some(task) = exec_socket {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), task).await;
    }
    drop(watchdog);
    let _ = probes_stop.send(());
    if let Some((_, _abort, task)) = probes {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), task).await;
    }
    connections.abort_all();
    while connections.join_next().await.is_some() {}
    drop(shared);
    Ok(())
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    /// The status line `http1` answers a request with headers of `header_bytes`.
    async fn status_for(header_bytes: usize) -> String {
        let (client, server) = tokio::io::duplex(1 << 20);
        let service = hyper::service::service_fn(|_req| async {
            Ok::<_, std::convert::Infallible>(hyper::Response::new(http_body_util::Empty::<bytes::Bytes>::new()))
        });
        let conn = tokio::spawn(async move {
            let _ = super::http1(std::time::Duration::from_secs(5))
                .serve_connection(hyper_util::rt::TokioIo::new(server), service)
                .await;
        });
        let (mut read, mut write) = tokio::io::split(client);
        let request = format!("GET /healthz HTTP/1.1\r\nhost: x\r\nx-pad: {}\r\n\r\n", "a".repeat(header_bytes));
        // Written beside the read: the server may answer before it has read it all.
        let writer = tokio::spawn(async move {
            let _ = write.write_all(request.as_bytes()).await;
            write
        });
        let mut answer = vec![0u8; 64];
        let n = read.read(&mut answer).await.unwrap();
        drop(writer);
        conn.abort();
        String::from_utf8_lossy(&answer[..n]).lines().next().unwrap_or("").to_owned()
    }

    #[tokio::test]
    async fn a_request_head_within_its_limit_is_served_and_a_larger_one_refused_with_431() {
        assert_eq!(status_for(60 * 1024).await, "HTTP/1.1 200 OK");
        assert_eq!(status_for(super::MAX_HEAD + 1024).await, "HTTP/1.1 431 Request Header Fields Too Large");
    }
}
