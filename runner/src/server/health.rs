//! `/healthz`, `/readyz` and `/metrics`: one answer, served by the mTLS API
//! and by the probe listener (`probes.rs`), and the readiness check the
//! systemd watchdog pings on (`systemd.rs`).
//!
//! * healthz — the process answers HTTP (it is alive; nothing else).
//! * readyz — the runner is open (its evidence log verified at start), not
//!   shutting down, and its evidence writer is working: it answers within
//!   [`WRITER_TIMEOUT`] after committing what was queued before, and no
//!   commit has failed (a failed commit stops all runs until a restart).
//!   Otherwise `503` with the reason on one line.

use std::time::Duration;

use hyper::StatusCode;

use crate::server::api::{Resp, reply};
use crate::service::RunService;

/// How long the evidence writer may take to answer a readiness check.
pub const WRITER_TIMEOUT: Duration = Duration::from_secs(5);

/// Which probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Probe {
    Health,
    Ready,
    Metrics,
}

impl Probe {
    /// The probe a path names (`/healthz`, `/readyz`, `/metrics`).
    pub(crate) fn of_path(path: &str) -> Option<Self> {
        match path {
            "/healthz" => Some(Probe::Health),
            "/readyz" => Some(Probe::Ready),
            "/metrics" => Some(Probe::Metrics),
            _ => None,
        }
    }
}

/// Whether the runner can take work now; `Err` says why not. `Ok` lists
/// the intakes that cannot take work while another can (say, NATS away
/// while the API answers), one line each.
///
/// # Errors
/// `None` for the service: the runner is still opening (verifying its log).
pub async fn readiness(runs: Option<&RunService>) -> Result<Vec<String>, String> {
    let Some(runs) = runs else {
        return Err("starting: the runner is opening (verifying its evidence log)".to_owned());
    };
    if !runs.is_open() {
        return Err("shutting down: finishing the runs in progress".to_owned());
    }
    runs.runner().log.writer_health(WRITER_TIMEOUT).await.map_err(|e| e.to_string())?;
    runs.intakes().readiness()
}

/// The answer to `probe`; `runs` is `None` while the runner opens. (The
/// API checks `server.access.metrics` before asking for metrics.)
pub(crate) async fn answer(runs: Option<&RunService>, probe: Probe) -> Resp {
    match probe {
        Probe::Health => reply(StatusCode::OK, "text/plain", "ok\n"),
        Probe::Ready => match readiness(runs).await {
            Ok(down) => {
                let notes: String = down.iter().map(|d| format!("degraded: {d}\n")).collect();
                reply(StatusCode::OK, "text/plain", format!("ready\n{notes}"))
            }
            Err(why) => {
                tracing::debug!(reason = %why, "not ready");
                reply(StatusCode::SERVICE_UNAVAILABLE, "text/plain", format!("not ready: {why}\n"))
            }
        },
        Probe::Metrics => match runs {
            Some(runs) => reply(StatusCode::OK, "text/plain; version=0.0.4", runs.metrics()),
            None => reply(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "not ready: starting\n"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt as _;

    async fn text(r: Resp) -> (StatusCode, String) {
        let status = r.status();
        let body = r.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    /// Before the runner is open: alive, not ready, no metrics yet.
    #[tokio::test]
    async fn while_the_runner_opens_it_is_alive_but_not_ready() {
        assert_eq!(text(answer(None, Probe::Health).await).await, (StatusCode::OK, "ok\n".into()));
        let (status, body) = text(answer(None, Probe::Ready).await).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body, "not ready: starting: the runner is opening (verifying its evidence log)\n");
        assert_eq!(text(answer(None, Probe::Metrics).await).await.0, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(Probe::of_path("/readyz"), Some(Probe::Ready));
        assert_eq!(Probe::of_path("/readyz/"), None);
    }
}
