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
//! The server takes its listener and a shutdown future, so tests run it on
//! `127.0.0.1:0`. On shutdown it stops accepting and closes connections; the
//! runs in progress and those already admitted finish (a run is never cut in
//! the middle by the server; a killed process is recovered on the next
//! start), then it returns.

pub mod api;
pub mod client;
pub mod tls;

use std::future::Future;
use std::sync::Arc;
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
/// First and longest pause after a failed `accept` (EMFILE, ENFILE, ENOMEM).
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Shared by every connection.
pub(crate) struct Shared {
    pub settings: ServerSettings,
    pub runs: Arc<crate::service::RunService>,
    pub metrics: Arc<crate::service::metrics::Metrics>,
}

/// Open the runner (verifying its evidence log, recovering interrupted
/// runs) and serve the API on `listener` until `shutdown` completes.
///
/// # Errors
/// If the config has no `[server]`, the TLS material is unusable, or the
/// runner cannot open (a broken evidence log refuses to start, loudly).
pub async fn serve(
    config: RunnerConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
    ready: impl FnOnce(std::net::SocketAddr, Option<&str>),
) -> Result<()> {
    let settings =
        config.server.clone().context("the runner config has no [server] section: see `edge-runner init`")?;
    let tls = tls::server_config(&settings.cert, &settings.key, &settings.client_ca)?;
    let acceptor = TlsAcceptor::from(tls);
    let metrics = Arc::new(crate::service::metrics::Metrics::default());
    let runs = crate::service::RunService::start(config, settings.max_concurrent_runs, settings.queue, metrics.clone())
        .await?;
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
    // reload is recorded and changes nothing).
    let hangup = {
        let runs = runs.clone();
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .context("cannot install the SIGHUP (reload) handler")?;
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                if let Err(e) = runs.runner().reload("sighup").await {
                    tracing::error!(error = %format!("{e:#}"), "reload could not be recorded; nothing changed");
                }
            }
        })
        .abort_handle()
    };
    let shared = Arc::new(Shared { settings, runs: runs.clone(), metrics });
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "serving");
    ready(addr, console.as_ref().map(|(o, _)| o.as_str()));
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let mut connections = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    let mut backoff = ACCEPT_BACKOFF_MIN;
    loop {
        let permit = tokio::select! {
            () = &mut shutdown => break,
            p = permits.clone().acquire_owned() => p.expect("never closed"),
        };
        let (tcp, peer) = tokio::select! {
            () = &mut shutdown => break,
            a = listener.accept() => match a {
                Ok(a) => {
                    backoff = ACCEPT_BACKOFF_MIN;
                    a
                }
                Err(e) => {
                    // Out of descriptors (EMFILE/ENFILE) or memory: accepting
                    // again at once fails again and spins a core. Back off,
                    // doubling up to a second, and let connections finish.
                    tracing::warn!(error = %e, backoff_ms = backoff.as_millis() as u64, "accept failed; backing off");
                    tokio::select! {
                        () = &mut shutdown => break,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                    continue;
                }
            },
        };
        let (acceptor, shared) = (acceptor.clone(), shared.clone());
        connections.spawn(async move {
            let _permit = permit;
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
            let service = hyper::service::service_fn(move |req| api::handle(shared.clone(), peer, agent.clone(), req));
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(timeout)
                .keep_alive(true)
                .serve_connection(TokioIo::new(tls), service);
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "connection closed");
            }
        });
        // Reap finished connections so the set does not grow.
        while connections.try_join_next().is_some() {}
    }
    tracing::info!("shutting down: no new connections; finishing the runs in progress");
    hangup.abort();
    drop(listener);
    let _ = console_stop.send(());
    if let Some((_, task)) = console {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), task).await;
    }
    runs.shutdown().await;
    connections.abort_all();
    while connections.join_next().await.is_some() {}
    drop(shared);
    Ok(())
}
