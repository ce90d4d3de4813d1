//! Signed webhook notifications on proposal events (`[notify]`).
//!
//! ```text
//!  evidence writer ─► crate::events (broadcast) ─► dispatcher: per webhook, its filter, then
//!                                                   try_send into its bounded queue
//!                                                     │ full: dropped, counted, recorded
//!                                                     ▼
//!                                      one worker per webhook (delivery.rs): sign with the
//!                                      identity key, POST (http.rs), retry 5xx/429/connection
//!                                      errors with backoff, give up after max_attempts
//!                                                     │ given up / dropped
//!                                                     ▼
//!                                      recorder: a `notification-failed` record (run `runner`)
//! ```
//!
//! Nothing here is on a run's path: the writer's send never waits, the
//! dispatcher never waits for a webhook (a full queue drops), and failures
//! are recorded by their own task. What a body holds is in
//! `edge_core::webhook` (ids, states, the tier, the capsule's name and
//! version, a console link; never secrets, diffs, file content or plan
//! text). The webhook URL's query (a receiver's token) is sent, never
//! logged, counted or recorded.
//!
//! `edge-runner serve` runs the notifier (`RunService::start` starts it
//! before anything can change a proposal, and `shutdown` stops it within
//! about a second, recording what it could not deliver).

mod delivery;
mod http;
mod metrics;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use edge_core::evidence::Event;
use edge_core::webhook::{Body, CapsuleRef, Payload, SCHEMA};
use tokio::sync::{broadcast, mpsc, watch};
use tokio::task::JoinHandle;

use crate::config::notify::WebhookSettings;
use crate::events::ProposalEvent;
use crate::pipeline::Runner;
pub use metrics::Counters;

/// Failures waiting to be recorded.
const RECORD_QUEUE: usize = 1024;
/// How long shutdown waits for the workers and the recorder.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

/// One notification for one webhook: its id and body are the same on
/// every attempt (the timestamp and signature are made per attempt).
#[derive(Debug)]
struct Delivery {
    id: String,
    event: &'static str,
    proposal: String,
    body: Body,
}

/// A notification given up, to be recorded.
#[derive(Debug)]
struct Failure {
    url: String,
    event: String,
    proposal: String,
    attempts: u32,
    error: String,
}

impl Failure {
    fn into_event(self) -> Event {
        let Failure { url, event, proposal, attempts, error } = self;
        Event::NotificationFailed { url, event, proposal, attempts, error }
    }
}

/// The running notifier: a dispatcher, one worker per webhook, a recorder.
#[derive(Debug)]
pub struct Notifier {
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Notifier {
    /// Subscribe to the runner's proposal events and start delivering to
    /// its configured webhooks (none configured: nothing runs). Webhooks
    /// using `dangerous_plain_http` are recorded first (an `insecure`
    /// record).
    ///
    /// # Errors
    /// If that record cannot be written.
    pub async fn start(runner: &Runner, counters: Arc<Counters>) -> Result<Self> {
        let (stop, _) = watch::channel(false);
        let settings = &runner.config.notify;
        if settings.webhooks.is_empty() {
            return Ok(Self { stop, tasks: Vec::new() });
        }
        let plain: Vec<String> = settings
            .webhooks
            .iter()
            .filter(|w| w.dangerous_plain_http)
            .map(|w| format!("dangerous_plain_http ({})", w.shown))
            .collect();
        if !plain.is_empty() {
            tracing::warn!(webhooks = ?plain, "webhooks over plain HTTP");
            runner.log.run_log().append("runner", Event::Insecure { switches: plain }).await?;
        }
        let events = runner.log.subscribe();
        let (record_tx, record_rx) = mpsc::channel(RECORD_QUEUE);
        let mut tasks = vec![tokio::spawn(record(runner.log.run_log(), record_rx))];
        let mut queues = Vec::new();
        let key = runner.identity.verifier().to_vkey();
        for w in &settings.webhooks {
            counters.register(&w.shown);
            let (tx, rx) = mpsc::channel(w.queue);
            let hook = delivery::Hook::new(w.clone(), runner.identity.clone(), key.clone(), counters.clone())?;
            tasks.push(tokio::spawn(delivery::run(hook, rx, record_tx.clone(), stop.subscribe())));
            queues.push((w.clone(), tx));
        }
        let dispatch = Dispatch {
            runner: runner.config.name.clone(),
            console: settings.console_url.as_ref().map(|u| u.as_str().trim_end_matches('/').to_owned()),
            queues,
            record: record_tx,
            counters,
        };
        tasks.push(tokio::spawn(dispatch.run(events, stop.subscribe())));
        Ok(Self { stop, tasks })
    }

    /// Stop: no new attempts; what is queued or in flight is recorded as
    /// dropped. Returns within about a second.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let mut tasks = self.tasks;
        let all = async {
            for t in &mut tasks {
                let _ = t.await;
            }
        };
        if tokio::time::timeout(SHUTDOWN_GRACE, all).await.is_err() {
            tracing::warn!("the notifier did not stop in time; abandoning it");
            for t in &tasks {
                t.abort();
            }
        }
    }
}

/// Turns proposal events into deliveries, one per matching webhook.
struct Dispatch {
    runner: String,
    /// The console's public URL without a trailing `/`.
    console: Option<String>,
    queues: Vec<(WebhookSettings, mpsc::Sender<Delivery>)>,
    record: mpsc::Sender<Failure>,
    counters: Arc<Counters>,
}

impl Dispatch {
    async fn run(self, mut events: broadcast::Receiver<ProposalEvent>, mut stop: watch::Receiver<bool>) {
        loop {
            let e = tokio::select! {
                biased;
                _ = stop.wait_for(|s| *s) => break,
                e = events.recv() => e,
            };
            match e {
                Ok(e) => self.dispatch(&e),
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    for (w, _) in &self.queues {
                        self.counters.dropped(&w.shown, n);
                        self.failed(Failure {
                            url: w.shown.clone(),
                            event: "unknown".into(),
                            proposal: String::new(),
                            attempts: 0,
                            error: format!("dropped: {n} proposal events were lost (the notifier fell behind)"),
                        });
                    }
                }
                Err(broadcast::error::RecvError::Closed) => break,
            }
        }
    }

    fn dispatch(&self, e: &ProposalEvent) {
        for (w, queue) in &self.queues {
            if !w.events.contains(&e.kind) {
                continue;
            }
            let d = self.delivery(e);
            if let Err(mpsc::error::TrySendError::Full(d) | mpsc::error::TrySendError::Closed(d)) = queue.try_send(d) {
                self.counters.dropped(&w.shown, 1);
                self.failed(Failure {
                    url: w.shown.clone(),
                    event: d.event.into(),
                    proposal: d.proposal,
                    attempts: 0,
                    error: format!("dropped: {} notifications were already waiting for this webhook", w.queue),
                });
            }
        }
    }

    fn delivery(&self, e: &ProposalEvent) -> Delivery {
        let id = uuid::Uuid::new_v4().to_string();
        let payload = Payload {
            schema: SCHEMA.into(),
            id: id.clone(),
            event: e.kind.name().into(),
            runner: edge_core::text::line(&self.runner).into_owned(),
            proposal: e.proposal.clone(),
            state: e.state.name().into(),
            tier: e.tier,
            capsule: e.capsule.as_ref().map(|c| CapsuleRef { name: c.name.clone(), version: c.version.clone() }),
            approvals_required: e.approvals_required,
            link: self.console.as_ref().map(|c| format!("{c}/proposals/{}", e.proposal)),
            at: e.at.clone(),
            record: e.seq,
        };
        Delivery { id, event: e.kind.name(), proposal: e.proposal.clone(), body: Body::new(&payload) }
    }

    /// Queue a failure for the recorder, never waiting.
    fn failed(&self, f: Failure) {
        if let Err(e) = self.record.try_send(f) {
            tracing::error!(failure = ?e, "cannot record a failed notification: too many are waiting");
        }
    }
}

/// Record failures as they come, as runner-level records (group-committed
/// with whatever else is being written).
async fn record(mut log: crate::store::log::RunLog, mut rx: mpsc::Receiver<Failure>) {
    while let Some(f) = rx.recv().await {
        let mut batch = vec![f];
        while let Ok(f) = rx.try_recv() {
            batch.push(f);
        }
        for f in batch {
            tracing::warn!(url = %f.url, event = %f.event, proposal = %f.proposal, attempts = f.attempts,
                error = %f.error, "notification given up");
            if let Err(e) = log.append_deferred("runner", f.into_event()) {
                tracing::error!(error = %format!("{e:#}"), "cannot record a failed notification");
            }
        }
        if let Err(e) = log.barrier().await {
            tracing::error!(error = %format!("{e:#}"), "cannot record a failed notification");
        }
        // Only what was recorded is kept here; nothing reads it back.
        drop(log.take_records());
    }
}
