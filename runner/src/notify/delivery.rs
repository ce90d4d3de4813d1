//! One webhook's worker: takes notifications from its queue in order,
//! signs and sends each, retries with backoff, and hands what it gives up
//! to the recorder.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use edge_core::note::NoteSigner;
use edge_core::webhook;
use tokio::sync::{mpsc, watch};

use super::http::{Attempt, Request};
use super::{Counters, Delivery, Failure};
use crate::config::notify::WebhookSettings;

/// The longest pause between two attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// What a worker needs to deliver to one webhook.
pub(super) struct Hook {
    settings: WebhookSettings,
    tls: Option<tokio_rustls::TlsConnector>,
    signer: Arc<NoteSigner>,
    /// The `Edge-Runner-Key` value: the identity key's C2SP verifier key.
    key: String,
    counters: Arc<Counters>,
}

impl Hook {
    pub(super) fn new(
        settings: WebhookSettings,
        signer: Arc<NoteSigner>,
        key: String,
        counters: Arc<Counters>,
    ) -> Result<Self> {
        let tls = settings.roots.clone().map(super::http::connector).transpose()?;
        Ok(Self { settings, tls, signer, key, counters })
    }
}

/// How one notification ended.
enum Ended {
    Delivered,
    GaveUp { attempts: u32, error: String },
    Stopped { attempts: u32, error: Option<String> },
}

/// Deliver what the queue holds, in order, until `stop`; then record what
/// is left as dropped (without waiting for the recorder).
pub(super) async fn run(
    hook: Hook,
    mut queue: mpsc::Receiver<Delivery>,
    record: mpsc::Sender<Failure>,
    mut stop: watch::Receiver<bool>,
) {
    let shown = hook.settings.shown.clone();
    let failure = |d: &Delivery, attempts: u32, error: String| Failure {
        url: shown.clone(),
        event: d.event.into(),
        proposal: d.proposal.clone(),
        attempts,
        error,
    };
    loop {
        let d = tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s) => break,
            d = queue.recv() => match d {
                Some(d) => d,
                None => break,
            },
        };
        match deliver(&hook, &d, &mut stop).await {
            Ended::Delivered => hook.counters.delivered(&shown),
            Ended::GaveUp { attempts, error } => {
                hook.counters.failed(&shown);
                // Not on a run's path: waiting for the recorder is fine.
                let _ = record.send(failure(&d, attempts, error)).await;
            }
            Ended::Stopped { attempts, error } => {
                hook.counters.dropped(&shown, 1);
                let why = match error {
                    Some(e) => format!("dropped: the runner stopped before it was delivered (last attempt: {e})"),
                    None => "dropped: the runner stopped before it was delivered".to_owned(),
                };
                let _ = record.try_send(failure(&d, attempts, why));
                break;
            }
        }
    }
    queue.close();
    while let Ok(d) = queue.try_recv() {
        hook.counters.dropped(&shown, 1);
        let _ = record.try_send(failure(&d, 0, "dropped: the runner stopped before it was sent".into()));
    }
}

/// Attempt until delivered, not retryable, `max_attempts`, or `stop`.
async fn deliver(hook: &Hook, d: &Delivery, stop: &mut watch::Receiver<bool>) -> Ended {
    let s = &hook.settings;
    let mut last = None;
    for attempt in 1..=s.max_attempts {
        hook.counters.attempt(&s.shown);
        // Signed now: a retry minutes later is not refused as stale.
        let now = u64::try_from(jiff::Timestamp::now().as_second()).unwrap_or(0);
        let headers = [
            (webhook::HEADER_TIMESTAMP, now.to_string()),
            (webhook::HEADER_SIGNATURE, webhook::sign(&hook.signer, now, &d.body)),
            (webhook::HEADER_KEY, hook.key.clone()),
            (webhook::HEADER_DELIVERY, d.id.clone()),
        ];
        let req = Request { url: &s.url, tls: hook.tls.as_ref(), headers: &headers, body: d.body.as_bytes() };
        let result = tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s) => return Ended::Stopped { attempts: attempt, error: last },
            r = tokio::time::timeout(s.timeout, super::http::post(req)) => r,
        };
        let failed = match result {
            Ok(Attempt::Delivered) => return Ended::Delivered,
            Ok(Attempt::Failed { retry, error, retry_after }) => (retry, error, retry_after),
            Err(_) => (true, format!("no answer within {}s", s.timeout.as_secs()), None),
        };
        let (retry, error, retry_after) = failed;
        tracing::info!(url = %s.shown, attempt, error = %error, retry, "notification attempt failed");
        if !retry {
            return Ended::GaveUp { attempts: attempt, error: format!("{error} (not retried)") };
        }
        if attempt == s.max_attempts {
            return Ended::GaveUp { attempts: attempt, error };
        }
        last = Some(error);
        let pause = backoff(s.initial_backoff, attempt, retry_after, jitter());
        tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s) => return Ended::Stopped { attempts: attempt, error: last },
            () = tokio::time::sleep(pause) => {}
        }
    }
    Ended::GaveUp { attempts: s.max_attempts, error: last.unwrap_or_default() }
}

/// The pause after `failed` attempts: `initial` doubled per failed attempt
/// after the first, at most [`MAX_BACKOFF`], scaled by a factor between 0.5
/// and 1 (`jitter` in [0, 1): receivers that came back are not hit by every
/// runner at once), and no shorter than a `Retry-After` the receiver asked
/// for (itself at most [`MAX_BACKOFF`]).
pub fn backoff(initial: Duration, failed: u32, retry_after: Option<Duration>, jitter: f64) -> Duration {
    let doubled = initial.saturating_mul(1u32 << failed.saturating_sub(1).min(20));
    let pause = doubled.min(MAX_BACKOFF).mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0));
    match retry_after {
        Some(r) => pause.max(r.min(MAX_BACKOFF)),
        None => pause,
    }
}

/// A uniform factor in [0, 1).
fn jitter() -> f64 {
    use rand_core::RngCore as _;
    (rand_core::OsRng.next_u32() as f64) / (f64::from(u32::MAX) + 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_one_second_to_five_minutes_with_jitter() {
        let s = Duration::from_secs;
        let full = |n| backoff(s(1), n, None, 0.999_999);
        assert_eq!([1, 2, 3, 4].map(|n| full(n).as_secs()), [0, 1, 3, 7], "just under 1, 2, 4, 8 s");
        assert_eq!(backoff(s(1), 1, None, 0.0), Duration::from_millis(500), "at least half");
        assert_eq!(backoff(s(1), 9, None, 0.0), s(128));
        assert_eq!(backoff(s(1), 10, None, 0.0), s(150), "capped at 5 min, then jittered");
        assert!(backoff(s(1), 40, None, 0.999) <= MAX_BACKOFF);
        assert_eq!(backoff(s(1), u32::MAX, None, 0.0), s(150), "no overflow");
        // Retry-After is honoured, up to the cap.
        assert_eq!(backoff(s(1), 1, Some(s(30)), 0.0), s(30));
        assert_eq!(backoff(s(1), 1, Some(s(3600)), 0.0), MAX_BACKOFF);
        let j = jitter();
        assert!((0.0..1.0).contains(&j));
    }
}
