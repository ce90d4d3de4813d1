//! The NATS intake: the runner dials *out* to a NATS server and pulls
//! submissions and approvals from JetStream; nothing connects in.
//!
//! ```text
//!  agents (outside) ── publish ──► hub ◄── leaf node (enclave edge)
//!                                              ▲
//!                         runner dials out ────┘  (tls, creds or client cert)
//!
//!  <prefix>.<runner>.in.submit   a capsule file            ┐ stream <prefix>_<runner>_in
//!  <prefix>.<runner>.in.submit-ref {"manifest","signature"} │ (by reference, as the API)
//!  <prefix>.<runner>.in.approve  an approval file          │ (work queue; durable pull
//!  <prefix>.<runner>.in.export   "" or an earlier checkpoint┘  consumer "runner")
//!  <prefix>.<runner>.out.answer.<msg id>  the answer        ┐ stream <prefix>_<runner>_out
//!  <prefix>.<runner>.out.events           proposal events   │ (kept 30 days, for clients
//!  <prefix>.<runner>.out.checkpoint       signed checkpoints┘  that were away)
//!  object store <prefix>_<runner>_exports: evidence exports
//! ```
//!
//! A message is acknowledged only after its answer is stored in the
//! outbound stream, and so after its submission record is durable in the
//! evidence log. The run a message becomes is named by the message itself
//! — its stream, the stream's creation time, its sequence number and the
//! time the server took it ([`run_id_for`]) — and recorded as the run's
//! submitter (`nats:<stream>@<created>:<seq>`). A message delivered again
//! (its ack lost) names the same run; if the log holds it, submitted by
//! that message, it is answered from the log and not run again (a run of
//! the same id submitted otherwise — a 32-bit clash — moves the message to
//! the next id of its sequence). A runner killed at any point therefore
//! loses nothing (unacknowledged messages are delivered again) and runs
//! nothing twice, without a write of its own before each run.
//!
//! The runner keeps running without NATS: the client reconnects with
//! backoff; `/readyz` and `/metrics` say whether the intake is connected.
//! Every message is hostile: its size is checked before anything else, its
//! subject picks the handler, and a message that cannot be processed is
//! terminated (never redelivered forever) with its reason in the answer and
//! the log.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use async_nats::jetstream::{self, AckKind, consumer, stream};
use edge_core::outbound;
use futures_util::StreamExt as _;
use serde_json::json;

use crate::config::nats::NatsSettings;
use crate::service::{ByReference, Delivered, QueueError, RunService, Submission};

/// The intake's name in `/readyz` and `/metrics`.
pub const INTAKE: &str = "nats";
/// Messages processed at once (the run service bounds runs itself).
const MAX_IN_FLIGHT: usize = 256;
/// The durable consumer's name.
const CONSUMER: &str = "runner";
/// Deliveries of a message the runner fails on before it is answered
/// `runner.failed` and terminated (with the pauses between, ~15 minutes).
const MAX_DELIVERIES: i64 = 20;

/// Connect (in the background: an unreachable server is retried with
/// backoff while the runner keeps running) and take messages until
/// `shutdown` completes; messages in progress finish first.
///
/// # Errors
/// If the credentials file cannot be read.
pub async fn serve(
    settings: NatsSettings,
    runs: Arc<RunService>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<()> {
    let runner = runs.runner().config.name.clone();
    runs.intakes().set(INTAKE, Err(format!("connecting to {}", settings.url)));
    // Whether the streams and consumer are set up: a connection alone is
    // not readiness (JetStream may be off, the stream refused).
    let pulling = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let client = connect(&settings, &runner, runs.clone(), pulling.clone()).await?;
    let js = jetstream::new(client.clone());
    // Exports a kill left half-made are no use to anyone.
    remove_partial_exports(&runs.runner().config.state_dir.join("exports"));
    let intake = Arc::new(Intake {
        settings,
        runs,
        js,
        in_flight: std::sync::Mutex::new(HashSet::new()),
        exporting: tokio::sync::Semaphore::new(1),
    });
    let events = tokio::spawn(intake.clone().publish_events()).abort_handle();
    tokio::pin!(shutdown);
    let mut backoff = Duration::from_millis(250);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
    let mut tasks = tokio::task::JoinSet::new();
    'connect: loop {
        // Streams and the consumer, made if missing (retried: the server
        // may be away, or JetStream not yet ready).
        let (source, mut messages) = tokio::select! {
            () = &mut shutdown => break 'connect,
            set = intake.set_up() => match set {
                Ok(s) => { backoff = Duration::from_millis(250); s }
                Err(e) => {
                    pulling.store(false, std::sync::atomic::Ordering::Release);
                    let why = format!("{e:#}");
                    tracing::warn!(error = %why, retry_in_ms = backoff.as_millis() as u64, "NATS intake not ready");
                    intake.runs.intakes().set(INTAKE, Err(edge_core::text::line(&why).into_owned()));
                    tokio::select! {
                        () = &mut shutdown => break 'connect,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                    continue 'connect;
                }
            },
        };
        pulling.store(true, std::sync::atomic::Ordering::Release);
        intake.runs.intakes().set(INTAKE, Ok(()));
        tracing::info!(url = %intake.settings.url, source = %source, "NATS intake pulling");
        let mut failing = 0u32;
        loop {
            let next = tokio::select! {
                () = &mut shutdown => break 'connect,
                next = messages.next() => next,
            };
            match next {
                Some(Ok(m)) => {
                    failing = 0;
                    let Ok(permit) = slots.clone().acquire_owned().await else { break 'connect };
                    let (i, source) = (intake.clone(), source.clone());
                    tasks.spawn(async move {
                        i.handle(&source, m).await;
                        drop(permit);
                    });
                }
                Some(Err(e)) => {
                    // Missed heartbeats and the like: the pull goes on (the
                    // client reconnects by itself). Errors one after another
                    // (the consumer deleted, …): set up again, with backoff.
                    tracing::warn!(error = %e, "NATS pull");
                    failing += 1;
                    if failing >= 3 {
                        pulling.store(false, std::sync::atomic::Ordering::Release);
                        intake.runs.intakes().set(INTAKE, Err(format!("pulling failed: {e}")));
                        tokio::select! {
                            () = &mut shutdown => break 'connect,
                            () = tokio::time::sleep(backoff) => {}
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(30));
                        continue 'connect;
                    }
                }
                None => {
                    tracing::warn!("NATS pull ended; setting up again");
                    continue 'connect;
                }
            }
            while let Some(done) = tasks.try_join_next() {
                if let Err(e) = done {
                    tracing::error!(error = %e, "a NATS message task failed");
                }
            }
        }
    }
    while tasks.join_next().await.is_some() {}
    events.abort();
    // What was answered is flushed before the connection goes.
    let _ = tokio::time::timeout(Duration::from_secs(2), client.flush()).await;
    Ok(())
}

/// The connection, with TLS, credentials and reconnection as configured;
/// its state goes to the intake's health.
async fn connect(
    settings: &NatsSettings,
    runner: &str,
    runs: Arc<RunService>,
    pulling: Arc<std::sync::atomic::AtomicBool>,
) -> Result<async_nats::Client> {
    let mut opts = async_nats::ConnectOptions::new()
        .name(format!("edge-runner {runner}"))
        .retry_on_initial_connect()
        .max_reconnects(None)
        .event_callback(move |event| {
            let (runs, pulling) = (runs.clone(), pulling.clone());
            async move {
                match &event {
                    async_nats::Event::Connected => {
                        tracing::info!("NATS connected");
                        // Back after a break: the pull resumes by itself.
                        // (Before the first set-up, that reports readiness.)
                        if pulling.load(std::sync::atomic::Ordering::Acquire) {
                            runs.intakes().set(INTAKE, Ok(()));
                        }
                    }
                    async_nats::Event::Disconnected | async_nats::Event::Closed => {
                        tracing::warn!(event = %event, "NATS connection lost; reconnecting");
                        runs.intakes().set(INTAKE, Err(format!("{event}; reconnecting")));
                    }
                    other => tracing::warn!(event = %edge_core::text::line(&other.to_string()), "NATS"),
                }
            }
        });
    if !settings.tls {
        // Plain text was allowed for the URL configured (this host, or a
        // recorded dangerous switch), not for the cluster's other
        // addresses the server advertises.
        opts = opts.ignore_discovered_servers();
    }
    if settings.tls {
        opts = opts.require_tls(true);
        if let Some(ca) = &settings.ca {
            opts = opts.add_root_certificates(ca.clone());
        }
        if let Some((cert, key)) = &settings.client_cert {
            opts = opts.add_client_certificate(cert.clone(), key.clone());
        }
    }
    if let Some(creds) = &settings.creds {
        opts = opts
            .credentials_file(creds)
            .await
            .with_context(|| format!("cannot read the NATS credentials {}", creds.display()))?;
    }
    opts.connect(settings.url.as_str()).await.with_context(|| format!("cannot connect to {}", settings.url))
}

struct Intake {
    settings: NatsSettings,
    runs: Arc<RunService>,
    js: jetstream::Context,
    /// Runs being made from messages now (a message delivered again while
    /// its first delivery still runs waits).
    in_flight: std::sync::Mutex<HashSet<String>>,
    /// Held by the export being made.
    exporting: tokio::sync::Semaphore,
}

/// How one message ends.
enum Disposition {
    /// Processed (its answer stored): acknowledge.
    Ack,
    /// Cannot ever be processed: terminate (never delivered again).
    Term,
    /// Not now (the run queue is full): delivered again after a while.
    Later,
}

impl Intake {
    /// The two streams and the durable consumer; the source name under which
    /// messages are known (the inbound stream and its creation time).
    async fn set_up(&self) -> Result<(String, consumer::pull::Stream)> {
        let (inbound, outbound, _) = self.settings.streams();
        let stream_in = self
            .js
            .get_or_create_stream(stream::Config {
                name: inbound.clone(),
                subjects: vec![self.settings.inbound(">")],
                retention: stream::RetentionPolicy::WorkQueue,
                max_message_size: i32::try_from(self.settings.max_message_bytes + 4096).unwrap_or(i32::MAX),
                duplicate_window: Duration::from_secs(120),
                storage: stream::StorageType::File,
                ..Default::default()
            })
            .await
            .with_context(|| format!("cannot make or find the stream {inbound}"))?;
        let mut stream_out = self
            .js
            .get_or_create_stream(stream::Config {
                name: outbound.clone(),
                subjects: vec![self.settings.outbound(">")],
                max_age: Duration::from_secs(30 * 86_400),
                storage: stream::StorageType::File,
                // Clients read answers and documents by direct get, whose
                // API subject names the message's subject: the NATS
                // operator can then scope who reads what.
                allow_direct: true,
                ..Default::default()
            })
            .await
            .with_context(|| format!("cannot make or find the stream {outbound}"))?;
        let mut config = stream_out.info().await.context("stream info")?.config.clone();
        if !config.allow_direct {
            // Made by an earlier version: turned on (nothing else changes).
            config.allow_direct = true;
            self.js.update_stream(&config).await.map_err(|e| {
                anyhow!(
                    "the stream {outbound} does not allow direct gets, and the runner may not turn them on ({e}): \
                     `nats stream edit {outbound} --allow-direct`"
                )
            })?;
        }
        usable(&format!("the stream {outbound}"), outbound_problems(&config, &self.settings))?;
        let (info, raw) = self.info::<stream::Info>(&format!("STREAM.INFO.{inbound}"), "the stream").await?;
        let mut problems = inbound_problems(&info.config, &self.settings);
        if raw["config"]["persist_mode"].as_str().is_some_and(|m| m != "default") {
            problems.push("persist_mode is async: a broker crash could lose requests it confirmed".to_owned());
        }
        usable(&format!("the stream {inbound}"), problems)?;
        let created = info.created.unix_timestamp_nanos();
        let source = format!("{inbound}@{created}");
        let consumer: consumer::PullConsumer = stream_in
            .get_or_create_consumer(
                CONSUMER,
                consumer::pull::Config {
                    durable_name: Some(CONSUMER.to_owned()),
                    ack_policy: consumer::AckPolicy::Explicit,
                    ack_wait: self.settings.ack_wait,
                    max_ack_pending: MAX_IN_FLIGHT as i64,
                    ..Default::default()
                },
            )
            .await
            .with_context(|| format!("cannot make or find the consumer {CONSUMER} on {inbound}"))?;
        let (info, raw) =
            self.info::<consumer::Info>(&format!("CONSUMER.INFO.{inbound}.{CONSUMER}"), "the consumer").await?;
        let mut problems = consumer_problems(&info.config, &self.settings);
        let inbound_all = self.settings.inbound(">");
        match raw["config"]["filter_subjects"].as_array() {
            Some(f) if !f.is_empty() && !f.iter().any(|x| x.as_str() == Some(inbound_all.as_str())) => {
                problems.push(format!("it is filtered to {f:?}: some requests would never be taken"));
            }
            _ => {}
        }
        usable(&format!("the consumer {CONSUMER} on {inbound}"), problems)?;
        let messages = consumer.messages().await.context("cannot start pulling")?;
        Ok((source, messages))
    }

    /// A stream's or consumer's info (`api`: `STREAM.INFO.…`,
    /// `CONSUMER.INFO.…`), as this client's types read it and as the
    /// server's own JSON, which also holds what the types do not carry
    /// (newer servers' settings): one request for both.
    async fn info<T: serde::de::DeserializeOwned>(&self, api: &str, what: &str) -> Result<(T, serde_json::Value)> {
        let raw: serde_json::Value =
            self.js.request(api.to_owned(), &serde_json::json!({})).await.map_err(|e| anyhow!("{api}: {e}"))?;
        let info = serde_json::from_value(raw.clone()).map_err(|e| {
            anyhow!("cannot read the settings of {what} ({e}): {}", edge_core::text::line(&raw["error"].to_string()))
        })?;
        Ok((info, raw))
    }

    /// Process one message to its disposition, telling the server it is
    /// still being worked on meanwhile.
    async fn handle(&self, source: &str, m: jetstream::Message) {
        let (seq, published, delivered) = match m.info() {
            Ok(i) => (i.stream_sequence, i.published.unix_timestamp_nanos() / 1_000_000, i.delivered),
            Err(e) => {
                tracing::warn!(error = %e, "a NATS message without JetStream metadata; terminated");
                let _ = m.ack_with(AckKind::Term).await;
                return;
            }
        };
        // The answer's subject: `answer.[<reply token>.]<message id>` — the
        // publisher's message id (one subject token), else the stream
        // sequence; under the token the publisher named, if any, so that
        // the NATS operator can let each client read only its own answers.
        let header = |name: &str| m.headers.as_ref().and_then(|h| h.get(name)).map(async_nats::HeaderValue::as_str);
        let reply_id = header(async_nats::header::NATS_MESSAGE_ID.as_ref())
            .filter(|id| crate::config::nats::is_token(id))
            .map_or_else(|| format!("seq-{seq}"), str::to_owned);
        let reply_to = match header(outbound::HEADER_REPLY) {
            None => format!("answer.{reply_id}"),
            Some(token) if crate::config::nats::is_token(token) => format!("answer.{token}.{reply_id}"),
            // A reply token that is not one subject token: terminated, not
            // answered where every client reads (it asked for privacy).
            Some(bad) => {
                tracing::info!(seq, reply = %edge_core::text::line(bad), "a NATS request with a malformed reply token; terminated");
                let _ = m.ack_with(AckKind::Term).await;
                self.runs.metrics_intake(INTAKE, "terminated");
                return;
            }
        };
        let kind = m.subject.as_str().rsplit('.').next().unwrap_or("").to_owned();
        // The payload goes to the work, and only what acks the message is
        // kept until the end: a capsule is not held twice while it runs.
        let (message, m) = m.split();
        // While it is processed, the server hears every third of its ack
        // wait that it still is (a long run is not delivered again).
        let outcome = {
            let work = self.process(source, seq, published, &kind, message.payload);
            tokio::pin!(work);
            let every = self.settings.ack_wait / 3;
            loop {
                tokio::select! {
                    r = &mut work => break r,
                    () = tokio::time::sleep(every) => {
                        let _ = m.ack_with(AckKind::Progress).await;
                    }
                }
            }
        };
        let later = retry_pause(delivered);
        let (answer, disposition) = match outcome {
            Ok(x) => x,
            Err(e) if delivered < MAX_DELIVERIES => {
                // The runner itself failed (I/O): delivered again later; a
                // capsule that ran is then answered from the log.
                tracing::error!(error = %format!("{e:#}"), seq, delivered, "NATS message not finished; it will be delivered again");
                (None, Disposition::Later)
            }
            Err(e) => {
                // Failing still after MAX_DELIVERIES tries (~15 minutes): not
                // a passing fault. Answered, so that the sender knows, and
                // terminated rather than tried forever.
                let detail = format!("{e:#}");
                tracing::error!(error = %detail, seq, delivered, "NATS message failed every time it was tried; terminated");
                let answer = json!({ "refused": { "reason_code": "runner.failed",
                    "detail": format!("the runner failed on this request {delivered} times: {detail}; see its log, then send it again") } });
                (Some(json_bytes(&answer)), Disposition::Term)
            }
        };
        if let Some(answer) = answer {
            // Signed, and bound to the request it answers: the stream, the
            // stream's creation time (a stream made again restarts its
            // sequence) and the sequence, which the client checks against
            // the sequence the server confirmed to it.
            let stored = self.publish(&reply_to, &format!("{source}:{seq}"), answer).await;
            if let Err(e) = stored {
                // No answer stored, no ack: delivered again, answered then
                // (from the log, if it ran).
                tracing::warn!(error = %e, seq, "cannot store a NATS answer; the message will be delivered again");
                let _ = m.ack_with(AckKind::Nak(Some(Duration::from_secs(1)))).await;
                self.runs.metrics_intake(INTAKE, "retried");
                return;
            }
        }
        let (kind, result) = match disposition {
            Disposition::Ack => (AckKind::Ack, "processed"),
            Disposition::Term => (AckKind::Term, "terminated"),
            Disposition::Later => (AckKind::Nak(Some(later)), "retried"),
        };
        // Not waited for: an ack that is lost means the message comes
        // again, and is then recognised by its delivery (see above).
        if let Err(e) = m.ack_with(kind).await {
            tracing::warn!(error = %e, seq, "NATS ack not sent");
        }
        self.runs.metrics_intake(INTAKE, result);
    }

    async fn process(
        &self,
        source: &str,
        seq: u64,
        published: i128,
        kind: &str,
        payload: bytes::Bytes,
    ) -> Result<(Option<Vec<u8>>, Disposition)> {
        let refused = |code: &str, detail: String| {
            tracing::info!(target: "edge_runner::nats", seq, reason_code = code, detail = %edge_core::text::line(&detail), "NATS message refused");
            Ok((Some(json_bytes(&json!({ "refused": { "reason_code": code, "detail": detail } }))), Disposition::Term))
        };
        if payload.len() > self.settings.max_message_bytes {
            return refused(
                "nats.too-large",
                format!("{} bytes; the largest message taken is {}", payload.len(), self.settings.max_message_bytes),
            );
        }
        match kind {
            "submit" => {
                // Copied to its own size, the message's buffer let go: a
                // `Vec` taken over from `Bytes` would keep the capacity of
                // the whole buffer the client read it into.
                let file = payload.to_vec();
                drop(payload);
                self.submit(source, seq, published, Submission::File(file)).await
            }
            "submit-ref" => match self.by_reference(&payload)? {
                Ok(capsule) => self.submit(source, seq, published, capsule).await,
                Err((code, detail)) => refused(code, detail),
            },
            "approve" => self.approve(&payload).await,
            "export" => self.export(seq, &payload).await,
            _ => refused(
                "nats.unknown-subject",
                "publish to in.submit, in.submit-ref, in.approve or in.export".to_owned(),
            ),
        }
    }

    /// A submission by reference: `{"manifest": "<base64>", "signature":
    /// "<base64>"}` (the HTTP API's shape), with the component this runner
    /// already holds. `Err` is a refusal (reason code, detail).
    fn by_reference(&self, payload: &[u8]) -> Result<Result<Submission, (&'static str, String)>> {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct ByRef {
            manifest: String,
            signature: String,
        }
        use base64::Engine as _;
        let b64 = |v: &str| base64::engine::general_purpose::STANDARD.decode(v.as_bytes());
        let parsed = serde_json::from_slice::<ByRef>(payload).map_err(|e| e.to_string()).and_then(|r| {
            Ok((b64(&r.manifest).map_err(|e| e.to_string())?, b64(&r.signature).map_err(|e| e.to_string())?))
        });
        let (manifest, signature) = match parsed {
            Ok(p) => p,
            Err(e) => {
                return Ok(Err((
                    "nats.bad-request",
                    format!("in.submit-ref takes {{\"manifest\": \"<base64>\", \"signature\": \"<base64>\"}}: {e}"),
                )));
            }
        };
        Ok(match self.runs.by_reference(manifest, signature)? {
            Ok(capsule) => Ok(Submission::Assembled(Box::new(capsule))),
            Err(ByReference::BadManifest(e)) => Err(("nats.bad-request", format!("not a capsule manifest: {e}"))),
            Err(ByReference::UnknownComponent(d)) => Err((
                "nats.unknown-component",
                format!("this runner does not hold component {d}: submit the full capsule once, then by reference"),
            )),
        })
    }

    async fn submit(
        &self,
        source: &str,
        seq: u64,
        published: i128,
        capsule: Submission,
    ) -> Result<(Option<Vec<u8>>, Disposition)> {
        let submitter = format!("nats:{source}:{seq}");
        // The message's run: the first id of its sequence that is free, or
        // that this message already became.
        let mut run = None;
        for attempt in 0..16 {
            let id = run_id_for(source, seq, published, attempt);
            match self.runs.submitter_of(&id)? {
                None => {
                    run = Some(id);
                    break;
                }
                Some(by) if by.as_deref().is_none_or(|b| b == submitter) => {
                    if self.in_flight.lock().unwrap_or_else(std::sync::PoisonError::into_inner).contains(&id) {
                        // Its first delivery is still running: answered then.
                        return Ok((None, Disposition::Later));
                    }
                    tracing::info!(seq, run = %id, "NATS message delivered again: answered from the log, not run again");
                    let answer = self.runs.answer_of(&id).await?;
                    // What approvers review, again: the first delivery may
                    // have ended (a kill, NATS away) before it was stored.
                    if answer["state"] == "awaiting-approval"
                        && let Some(proposal) = answer["id"].as_str()
                    {
                        self.publish_proposal(proposal).await?;
                    }
                    return Ok((Some(json_bytes(&answer)), Disposition::Ack));
                }
                Some(_) => {}
            }
        }
        let run = run.context("no free run id for this message (16 clashes)")?;
        if !self.in_flight.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(run.clone()) {
            // The same message delivered twice at once: one of them runs.
            return Ok((None, Disposition::Later));
        }
        let result = self.runs.submit_as(run.clone(), capsule, submitter).await;
        self.in_flight.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&run);
        match result {
            Ok(Ok(reply)) => {
                if reply.state == "awaiting-approval" {
                    self.publish_proposal(&reply.id).await?;
                }
                Ok((Some(serde_json::to_vec(&reply)?), Disposition::Ack))
            }
            Ok(Err(e)) => Err(e),
            Err(QueueError::Full | QueueError::Stopped) => Ok((None, Disposition::Later)),
        }
    }

    /// What approvers review, for `approve --nats`: a waiting proposal's
    /// document and preview on `out.proposal.<id>` and `out.preview.<id>`
    /// (kept in the outbound stream), stored before the answer is.
    async fn publish_proposal(&self, id: &str) -> Result<()> {
        let Some(doc) = self.runs.document(id) else { return Ok(()) };
        let mut out = vec![(format!("proposal.{id}"), doc)];
        if let Some(preview) = self.runs.preview(id)? {
            out.push((format!("preview.{id}"), serde_json::to_vec(&preview)?));
        }
        for (kind, body) in out {
            self.publish(&kind, outbound::NO_REQUEST, body).await.with_context(|| format!("cannot store {kind}"))?;
        }
        Ok(())
    }

    /// Publish `body` on the outbound subject `kind`, signed by the
    /// runner's identity key (`edge_core::outbound`; `answers` names the
    /// request an answer answers), and wait until the server stored it.
    async fn publish(&self, kind: &str, answers: &str, body: Vec<u8>) -> Result<()> {
        self.send(kind, answers, body).await?.await.map(drop).map_err(|e| anyhow!("{e}"))
    }

    /// As [`Intake::publish`], without waiting for the server to store it
    /// (the returned future says when it did).
    async fn send(&self, kind: &str, answers: &str, body: Vec<u8>) -> Result<jetstream::context::PublishAckFuture> {
        let subject = self.settings.outbound(kind);
        let mut headers = async_nats::HeaderMap::new();
        let signature = outbound::sign(&self.runs.runner().identity, &subject, answers, &body);
        headers.insert(outbound::HEADER_SIGNATURE, signature.as_str());
        if answers != outbound::NO_REQUEST {
            headers.insert(outbound::HEADER_ANSWERS, answers);
        }
        self.js.publish_with_headers(subject, headers, body.into()).await.map_err(|e| anyhow!("{e}"))
    }

    async fn approve(&self, payload: &[u8]) -> Result<(Option<Vec<u8>>, Disposition)> {
        match self.runs.approve_delivered(payload.to_vec()).await {
            Ok(Ok(Delivered::Kept(kept))) => Ok((Some(serde_json::to_vec(&kept)?), Disposition::Ack)),
            Ok(Ok(Delivered::Again(again))) => Ok((Some(serde_json::to_vec(&again)?), Disposition::Ack)),
            Ok(Ok(Delivered::Refused { proposal, reason_code, detail })) => {
                // A file that is no approval never will be: terminated.
                let disposition =
                    if reason_code == "approval.malformed" { Disposition::Term } else { Disposition::Ack };
                let answer =
                    json!({ "proposal": proposal, "refused": { "reason_code": reason_code, "detail": detail } });
                Ok((Some(json_bytes(&answer)), disposition))
            }
            Ok(Err(e)) => Err(e),
            Err(QueueError::Full | QueueError::Stopped) => Ok((None, Disposition::Later)),
        }
    }

    /// An export into the object store: the whole log, or what follows the
    /// earlier checkpoint the message holds.
    async fn export(&self, seq: u64, payload: &[u8]) -> Result<(Option<Vec<u8>>, Disposition)> {
        let refused = |code: &str, detail: String| {
            let answer = json!({ "refused": { "reason_code": code, "detail": detail } });
            Ok((Some(json_bytes(&answer)), Disposition::Term))
        };
        let Some((max_bytes, keep)) = self.settings.exports else {
            return refused(
                "nats.exports-off",
                "this runner does not answer export requests through NATS (nats.exports is off): ask its \
                 operator for an export"
                    .to_owned(),
            );
        };
        // One at a time (each reads the whole log and writes it out); while
        // one is made, others come back later without holding a slot.
        let Ok(_one) = self.exporting.try_acquire() else { return Ok((None, Disposition::Later)) };
        let since = match std::str::from_utf8(payload) {
            Ok(t) if t.trim().is_empty() => None,
            Ok(t) => Some(t.to_owned()),
            Err(_) => {
                return refused(
                    "nats.bad-request",
                    "an export request is empty or holds a checkpoint's text".to_owned(),
                );
            }
        };
        let (_, _, bucket) = self.settings.streams();
        let dir = self.runs.runner().config.state_dir.join("exports");
        let file = dir.join(format!("nats-{seq}.bundle"));
        let exported = match self.runs.export_file(since, file.clone()).await {
            Ok(e) => e,
            Err(e) => return refused("export.failed", format!("{e:#}")),
        };
        let object = format!("export-{}-{seq}.bundle", exported.tree_size);
        let mut made = None;
        let stored = async {
            let store = match self.js.get_object_store(&bucket).await {
                Ok(s) => {
                    self.bucket_limits(&bucket, max_bytes, keep).await?;
                    s
                }
                Err(_) => self
                    .js
                    .create_object_store(jetstream::object_store::Config {
                        bucket: bucket.clone(),
                        max_bytes,
                        max_age: keep,
                        storage: stream::StorageType::File,
                        ..Default::default()
                    })
                    .await
                    .map_err(|e| anyhow!("cannot make the object store {bucket}: {e}"))?,
            };
            let mut f =
                tokio::fs::File::open(&file).await.with_context(|| format!("cannot read {}", file.display()))?;
            made = Some(store.clone());
            store
                .put(object.as_str(), &mut f)
                .await
                .map_err(|e| anyhow!("cannot store the export in {bucket}: {e}"))?;
            anyhow::Ok(())
        }
        .await;
        if stored.is_err()
            && let Some(store) = made
        {
            // A put that failed part-way leaves the chunks it stored, which
            // no object names: they would fill the bucket until they expire.
            if let Err(e) = purge_orphan_chunks(&self.js, &store, &bucket).await {
                tracing::warn!(error = %format!("{e:#}"), bucket, "cannot remove the chunks of a failed export");
            }
        }
        // The local copy goes either way: a failed store is answered, not
        // tried again (and again) with a fresh export each time.
        let _ = tokio::fs::remove_file(&file).await;
        if let Err(e) = stored {
            tracing::warn!(error = %format!("{e:#}"), seq, "a NATS export was not stored");
            return refused(
                "export.store-failed",
                format!("{e:#}: the bucket may be full (nats.export_bucket_mib) or NATS away; ask again later"),
            );
        }
        Ok((
            Some(json_bytes(&json!({ "export": { "bucket": bucket, "object": object, "records": exported.records,
                "checkpoint": exported.checkpoint, "quoting_config": exported.quoting_config } }))),
            Disposition::Ack,
        ))
    }

    /// After missed events: the state now of every proposal that waits,
    /// and of those last published as waiting, on `out.state.<id>` (the
    /// `events` subject keeps only what happened as it happened). Returns
    /// the proposals that wait now.
    async fn restate(&self, last_waiting: HashSet<String>) -> HashSet<String> {
        let query = crate::store::fold::Query {
            state: Some(edge_core::lifecycle::State::AwaitingApproval),
            limit: 10_000,
            ..Default::default()
        };
        let now = match self.runs.list(&query) {
            Ok((views, _)) => views,
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "cannot list waiting proposals to publish their states again");
                return last_waiting;
            }
        };
        let waiting: HashSet<String> = now.iter().map(|v| v.id.clone()).collect();
        let moved_on = last_waiting.difference(&waiting).filter_map(|id| self.runs.show(id));
        let at = jiff::Timestamp::now().to_string();
        for view in now.iter().cloned().chain(moved_on) {
            let Some(event) = crate::events::restate(&view, at.clone()) else { continue };
            if !crate::config::nats::is_token(&event.proposal) {
                continue;
            }
            let body = serde_json::to_vec(&event).unwrap_or_default();
            if let Err(e) = self.publish(&format!("state.{}", event.proposal), outbound::NO_REQUEST, body).await {
                tracing::warn!(error = %format!("{e:#}"), proposal = %event.proposal, "cannot publish a proposal's state again");
            }
        }
        waiting
    }

    /// An export bucket made earlier (or by an earlier version) gets the
    /// configured size limit and expiry.
    async fn bucket_limits(&self, bucket: &str, max_bytes: i64, keep: Duration) -> Result<()> {
        let name = format!("OBJ_{bucket}");
        let mut stream = self.js.get_stream(&name).await.map_err(|e| anyhow!("stream {name}: {e}"))?;
        let mut config = stream.info().await.map_err(|e| anyhow!("stream {name}: {e}"))?.config.clone();
        if config.max_bytes != max_bytes || config.max_age != keep {
            (config.max_bytes, config.max_age) = (max_bytes, keep);
            self.js.update_stream(&config).await.map_err(|e| {
                anyhow!("cannot give the export bucket {bucket} its limits (nats.export_bucket_mib, export_keep): {e}")
            })?;
        }
        Ok(())
    }

    /// Proposal events and, after each, the signed checkpoint, to the
    /// outbound stream (for consoles and reviewers on the other side). An
    /// event that cannot be published while disconnected is logged: the
    /// log holds every one of them.
    async fn publish_events(self: Arc<Self>) {
        let mut events = self.runs.proposal_events();
        // Proposals last published as waiting: what a missed event could
        // have left stale on `out.state.<id>`.
        let mut waiting: HashSet<String> = HashSet::new();
        loop {
            let event = match events.recv().await {
                Ok(e) => e,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(
                        missed = n,
                        "NATS event publisher fell behind; publishing waiting proposals' states again"
                    );
                    waiting = self.restate(waiting).await;
                    continue;
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            };
            if event.state == edge_core::lifecycle::State::AwaitingApproval {
                waiting.insert(event.proposal.clone());
            } else {
                waiting.remove(&event.proposal);
            }
            let body = serde_json::to_vec(&event).unwrap_or_default();
            // On the events subject, and as the proposal's latest state
            // (`out.state.<id>`, what `approve --nats` checks). In order (one
            // connection); whether the server stored each is awaited aside,
            // so that one slow confirmation does not hold the next event.
            let mut kinds = vec!["events".to_owned()];
            if crate::config::nats::is_token(&event.proposal) {
                kinds.push(format!("state.{}", event.proposal));
            }
            for kind in kinds {
                match self.send(&kind, outbound::NO_REQUEST, body.clone()).await {
                    Ok(ack) => {
                        tokio::spawn(async move {
                            if let Err(e) = ack.await {
                                tracing::warn!(error = %e, subject = %kind, "NATS did not store a proposal event");
                            }
                        });
                    }
                    Err(e) => {
                        tracing::warn!(error = %format!("{e:#}"), proposal = %event.proposal, "cannot publish a proposal event to NATS");
                    }
                }
            }
            // Coalesced: one checkpoint for the events that came together.
            if events.is_empty()
                && let Ok(note) = self.runs.checkpoint().await
                && let Err(e) = self.publish("checkpoint", outbound::NO_REQUEST, note.into_bytes()).await
            {
                tracing::warn!(error = %format!("{e:#}"), "cannot publish the checkpoint to NATS");
            }
        }
    }
}

// Streams and the consumer found made (by the hub's operator, or an
// earlier version) are used only when their settings keep the intake's
// guarantees: `get_or_create_*` returns what exists without comparing.

/// `Err` naming what is wrong with `what` and how to mend it, when
/// `problems` holds anything.
fn usable(what: &str, problems: Vec<String>) -> Result<()> {
    if problems.is_empty() {
        return Ok(());
    }
    anyhow::bail!(
        "{what} cannot be used as it is: {}. Correct it (`nats stream edit` / `nats consumer edit`), or delete it \
         and the runner makes it as docs/operations.md describes",
        problems.join("; ")
    )
}

/// What in the inbound stream's settings could lose a message before it
/// is processed, or keep it from coming.
fn inbound_problems(c: &stream::Config, s: &NatsSettings) -> Vec<String> {
    let mut p = Vec::new();
    if c.subjects != [s.inbound(">")] {
        p.push(format!(
            "its subjects are {:?}, not [{:?}] alone (another subject's messages would run here)",
            c.subjects,
            s.inbound(">")
        ));
    }
    if c.allow_rollup {
        p.push("allow_rollup is set: one publisher's rollup header would purge every waiting request".to_owned());
    }
    if c.retention != stream::RetentionPolicy::WorkQueue {
        p.push(format!("retention is {:?}, not WorkQueue", c.retention));
    }
    if c.storage != stream::StorageType::File {
        p.push("storage is memory: a broker restart would lose requests it confirmed".to_owned());
    }
    if !c.max_age.is_zero() {
        p.push(format!("max_age is {:?}: a request not taken within it would be lost", c.max_age));
    }
    if c.discard == stream::DiscardPolicy::Old
        && (c.max_messages > 0 || c.max_bytes > 0 || c.max_messages_per_subject > 0)
    {
        p.push("limits with discard old: a full stream would drop requests not yet taken".to_owned());
    }
    publishable(c, "a publisher would not know its request was stored", &mut p);
    p
}

/// A stream's `no_ack` (with what it would cost), sealed or mirror settings.
fn publishable(c: &stream::Config, no_ack_costs: &str, p: &mut Vec<String>) {
    if c.no_ack {
        p.push(format!("no_ack is set: {no_ack_costs}"));
    }
    if c.sealed || c.mirror.is_some() {
        p.push("it is sealed or a mirror: nothing can be published to it".to_owned());
    }
}

/// What in the outbound stream's settings could keep answers from being
/// stored or confirmed.
fn outbound_problems(c: &stream::Config, s: &NatsSettings) -> Vec<String> {
    let mut p = Vec::new();
    if !c.subjects.iter().any(|x| *x == s.outbound(">")) {
        p.push(format!("its subjects {:?} do not include {}", c.subjects, s.outbound(">")));
    }
    publishable(c, "the runner could not know an answer was stored before acknowledging", &mut p);
    p
}

/// What in the consumer's settings could lose a message, deliver part of
/// it, or stop delivering one that must come again.
fn consumer_problems(c: &consumer::Config, s: &NatsSettings) -> Vec<String> {
    let mut p = Vec::new();
    if c.ack_policy != consumer::AckPolicy::Explicit {
        p.push(format!("ack_policy is {:?}, not Explicit (a message must stay until it is processed)", c.ack_policy));
    }
    if c.max_deliver > 0 {
        p.push(format!(
            "max_deliver is {}: a message whose processing was cut short would never come again",
            c.max_deliver
        ));
    }
    if c.ack_wait < s.ack_wait {
        p.push(format!("ack_wait is {:?}, shorter than nats.ack_wait ({:?})", c.ack_wait, s.ack_wait));
    }
    if c.headers_only {
        p.push("headers_only is set: messages would come without their content".to_owned());
    }
    if c.deliver_policy != consumer::DeliverPolicy::All {
        p.push(format!(
            "deliver_policy is {:?}, not All (requests stored before it would be skipped)",
            c.deliver_policy
        ));
    }
    if !c.filter_subject.is_empty() && c.filter_subject != s.inbound(">") {
        p.push(format!("it is filtered to {}: some requests would never be taken", c.filter_subject));
    }
    p
}

/// Remove the `nats-*.bundle` files in `dir` and their `.partial` files
/// (exports on their way to the bucket when the runner stopped).
fn remove_partial_exports(dir: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        let bare = name.strip_prefix('.').and_then(|n| n.strip_suffix(".partial")).unwrap_or(&name);
        if bare.starts_with("nats-")
            && bare.ends_with(".bundle")
            && let Err(err) = std::fs::remove_file(e.path())
        {
            tracing::warn!(error = %err, file = %edge_core::text::line(&name), "cannot remove an unfinished NATS export");
        }
    }
}

/// Purge the chunks in `bucket` that no object names (left by a put
/// that failed part-way; exports are made one at a time, so none is
/// being written now). Returns how many subjects were purged.
async fn purge_orphan_chunks(
    js: &jetstream::Context,
    store: &jetstream::object_store::ObjectStore,
    bucket: &str,
) -> Result<usize> {
    let mut named = HashSet::new();
    let mut list = store.list().await.map_err(|e| anyhow!("{e}"))?;
    while let Some(o) = list.next().await {
        named.insert(o.map_err(|e| anyhow!("{e}"))?.nuid);
    }
    let name = format!("OBJ_{bucket}");
    let stream = js.get_stream(&name).await.map_err(|e| anyhow!("stream {name}: {e}"))?;
    let mut subjects = stream.info_with_subjects(format!("$O.{bucket}.C.>")).await.map_err(|e| anyhow!("{e}"))?;
    let mut orphans = Vec::new();
    while let Some(s) = subjects.next().await {
        let (subject, _) = s.map_err(|e| anyhow!("{e}"))?;
        if subject.rsplit('.').next().is_some_and(|nuid| !named.contains(nuid)) {
            orphans.push(subject);
        }
    }
    for subject in &orphans {
        stream.purge().filter(subject.as_str()).await.map_err(|e| anyhow!("purge {subject}: {e}"))?;
    }
    Ok(orphans.len())
}

/// How long a message waits before it is delivered again, after its
/// `delivered`th delivery was not finished: 1 s, 2 s, 4 s, … at most 60 s.
fn retry_pause(delivered: i64) -> Duration {
    Duration::from_secs(1u64 << (delivered.clamp(1, 7) - 1)).min(Duration::from_secs(60))
}

/// An answer's bytes (a `Value` always serialises).
fn json_bytes(v: &serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_default()
}

/// The run a message becomes: `r-<ms the server took it>-<8 hex>`, the hex
/// from the message's stream, the stream's creation time, its sequence and
/// the attempt (0 unless an id clashed with another run's). The same
/// message delivered again names the same run.
pub fn run_id_for(source: &str, seq: u64, published_ms: i128, attempt: u32) -> String {
    let d = edge_core::Sha256Digest::of(format!("edge-runner nats delivery\n{source}\n{seq}\n{attempt}").as_bytes());
    format!("r-{}-{}", published_ms.max(0), &d.hex()[..8])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chunks_of_an_export_that_did_not_fit_are_purged_and_the_bucket_takes_the_next() {
        use tokio::io::AsyncReadExt as _;
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        // (Stopped however the test ends.)
        struct Server(std::process::Child);
        impl Drop for Server {
            fn drop(&mut self) {
                let _ = self.0.kill();
                let _ = self.0.wait();
            }
        }
        let _server = Server(
            std::process::Command::new("nats-server")
                .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
                .arg(dir.path())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("nats-server is not installed: apt-get install nats-server (the README's test command does)"),
        );
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let client = loop {
                match async_nats::connect(format!("nats://127.0.0.1:{port}")).await {
                    Ok(c) => break c,
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            };
            let js = jetstream::new(client);
            let store = js
                .create_object_store(jetstream::object_store::Config {
                    bucket: "exports".into(),
                    max_bytes: 400 << 10,
                    ..Default::default()
                })
                .await
                .unwrap();
            let bytes = |n: usize| vec![7u8; n];
            store.put("first", &mut bytes(100 << 10).as_slice()).await.unwrap();
            // Too large for what is left: fails part-way, its chunks left behind.
            assert!(store.put("too-large", &mut bytes(600 << 10).as_slice()).await.is_err());
            let purged = purge_orphan_chunks(&js, &store, "exports").await.unwrap();
            assert_eq!(purged, 1, "the failed object's chunks are one subject");
            // Room again, and the first export untouched.
            store.put("second", &mut bytes(250 << 10).as_slice()).await.unwrap();
            let mut first = Vec::new();
            store.get("first").await.unwrap().read_to_end(&mut first).await.unwrap();
            assert_eq!(first.len(), 100 << 10);
            assert_eq!(purge_orphan_chunks(&js, &store, "exports").await.unwrap(), 0, "nothing else is purged");
        });
    }

    #[test]
    fn a_message_the_runner_fails_on_comes_back_ever_later_and_at_last_is_answered() {
        let pauses: Vec<u64> = (0..=MAX_DELIVERIES).map(|d| retry_pause(d).as_secs()).collect();
        assert_eq!(&pauses[..9], &[1, 1, 2, 4, 8, 16, 32, 60, 60]);
        // What the deliveries before the last wait in all: minutes, not hours or seconds.
        let total: u64 = pauses[1..MAX_DELIVERIES as usize].iter().sum();
        assert!((600..=1200).contains(&total), "{total} s");
    }

    #[test]
    fn a_message_names_its_run_and_another_message_another() {
        let a = run_id_for("edge_r1_in@1", 7, 1_796_000_000_000, 0);
        assert!(crate::pipeline::is_run_id(&a), "{a}");
        assert_eq!(a, run_id_for("edge_r1_in@1", 7, 1_796_000_000_000, 0));
        assert!(a.starts_with("r-1796000000000-"));
        for other in [
            run_id_for("edge_r1_in@1", 8, 1_796_000_000_000, 0),
            run_id_for("edge_r1_in@2", 7, 1_796_000_000_000, 0),
            run_id_for("edge_r1_in@1", 7, 1_796_000_000_000, 1),
        ] {
            assert_ne!(a, other);
        }
    }
}
