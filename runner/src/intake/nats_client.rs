//! The client side of the NATS intake ([`super::nats`]): what `submit
//! --nats`, `approve --nats`, `proposals watch --nats` and the load
//! generator use. A request is published to the runner's inbound stream
//! with a fresh message id (JetStream drops a re-publish of the same id
//! within two minutes), and its answer awaited on
//! `<prefix>.<runner>.out.answer.<id>` — subscribed before publishing, and
//! read back from the outbound stream if it came before the subscription.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use async_nats::jetstream;
use clap::Args;
use edge_core::note::NoteVerifier;
use edge_core::outbound;
use futures_util::StreamExt as _;

/// `--nats` and its companions, on the client commands that can talk to a
/// runner through NATS.
#[derive(Debug, Clone, Args)]
pub struct NatsArgs {
    /// Talk to the runner through this NATS server instead of its HTTPS API
    /// (tls://host:port, or nats://127.0.0.1:port on this host).
    #[arg(long, env = "EDGE_RUNNER_NATS", value_name = "URL", requires = "runner")]
    pub nats: Option<String>,
    /// With --nats: the runner's subject token (`nats.subject`; by default its `runner.name`).
    #[arg(long, env = "EDGE_RUNNER_NAME", value_name = "NAME")]
    pub runner: Option<String>,
    /// With --nats: the CA (PEM) the NATS server's certificate chains to.
    #[arg(long, value_name = "PEM")]
    pub nats_ca: Option<PathBuf>,
    /// With --nats: a client certificate (PEM) and --nats-key.
    #[arg(long, value_name = "PEM", requires = "nats_key")]
    pub nats_cert: Option<PathBuf>,
    /// With --nats-cert: its private key (PEM).
    #[arg(long, value_name = "PEM")]
    pub nats_key: Option<PathBuf>,
    /// With --nats: a NATS credentials file.
    #[arg(long, value_name = "FILE")]
    pub nats_creds: Option<PathBuf>,
    /// With --nats: the runner's subject prefix (`nats.prefix`).
    #[arg(long, value_name = "PREFIX", default_value = "edge")]
    pub nats_prefix: String,
    /// With --nats: the runner's key, as `edge-runner evidence runner-key`
    /// prints it on the runner. What comes back through NATS (answers,
    /// proposal documents, events) counts only when signed by it.
    #[arg(long, env = "EDGE_RUNNER_VKEY", value_name = "FILE")]
    pub runner_key: Option<PathBuf>,
    /// With --nats: have answers come under this subject token
    /// (`out.answer.<TOKEN>.<id>`), and replies to this client under
    /// `_INBOX_<TOKEN>.>`, where NATS permissions can let this client alone
    /// read them. Without it, answers go to `out.answer.<id>`.
    #[arg(long, env = "EDGE_RUNNER_NATS_REPLY", value_name = "TOKEN")]
    pub nats_reply: Option<String>,
}

/// Answers awaited, by message id.
type Waiting = std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, Waiter>>>;

/// A request waiting for its answer: the runner's signed messages on its
/// answer subject, and why the last other one there was refused. Forged
/// messages never take a place in the channel, so no flood of them can
/// push the runner's answer out.
struct Waiter {
    /// The runner's messages, each with the request it says it answers
    /// (which its signature covers).
    tx: tokio::sync::mpsc::Sender<(async_nats::Message, String)>,
    refused: Option<outbound::OutboundError>,
}

/// The runner's messages held for one request (its answer, and genuine
/// answers to other requests on the same subject, which it refuses).
const ANSWERS_HELD: usize = 16;

/// An export fetched into a file: its size, and how many reload-refused
/// records in it quote the config file (`crate::export::Exported`).
#[derive(Debug, Clone, Copy)]
pub struct Fetched {
    pub bytes: u64,
    pub quoting_config: u64,
}

/// A connection to a runner through NATS. One subscription takes every
/// answer (`out.answer.*`) and hands each to the request waiting for it.
pub struct NatsClient {
    client: async_nats::Client,
    js: jetstream::Context,
    runner: String,
    prefix: String,
    /// The runner's identity key: what it publishes must verify with it.
    key: NoteVerifier,
    /// The subject token answers come under (`--nats-reply`).
    reply: Option<String>,
    /// The runner's inbound stream as answers name it
    /// (`<stream>@<created>`), learnt before the first request.
    source: tokio::sync::OnceCell<String>,
    waiting: Waiting,
    dispatcher: tokio::task::AbortHandle,
}

impl Drop for NatsClient {
    fn drop(&mut self) {
        self.dispatcher.abort();
    }
}

impl std::fmt::Debug for NatsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsClient").field("runner", &self.runner).field("prefix", &self.prefix).finish_non_exhaustive()
    }
}

impl NatsClient {
    /// Connect as the flags say.
    ///
    /// # Errors
    /// No --nats, a bad runner name, unreadable credentials, or no server.
    pub async fn connect(a: &NatsArgs) -> Result<Self> {
        let url = a.nats.as_deref().context("give --nats URL")?;
        let runner = a.runner.clone().context("give --runner NAME (the runner's runner.name)")?;
        if !crate::config::nats::is_token(&runner)
            || !crate::config::nats::is_token(&a.nats_prefix)
            || a.nats_reply.as_deref().is_some_and(|t| !crate::config::nats::is_token(t))
        {
            bail!("--runner, --nats-prefix and --nats-reply are single subject tokens (letters, digits, - and _)");
        }
        // As the runner's own `nats.url`: plain text only on this host. (A
        // capsule or an approval crosses it; so would a forged answer.)
        let (tls, loopback) = crate::config::nats::parse_url(url, "--nats")?;
        if !tls && !loopback {
            bail!("--nats `{url}` is plain text to another host: use tls://host:port (with --nats-ca)");
        }
        // Fail closed: without the runner's key, anyone who may publish on
        // its outbound subjects could answer in its name.
        let key_file = a.runner_key.as_deref().context(
            "give --runner-key FILE with --nats: the runner's key, as `edge-runner evidence runner-key --config \
             runner.toml` prints it on the runner (what comes back through NATS counts only when signed by it)",
        )?;
        let key = read_runner_key(key_file)?;
        let mut opts = async_nats::ConnectOptions::new().name("edge-runner client");
        if let Some(token) = &a.nats_reply {
            // Replies to this client (publish confirmations, direct gets)
            // under its own inbox prefix too: a NATS permission can grant it
            // `_INBOX_<token>.>` rather than every client's `_INBOX.>`.
            opts = opts.custom_inbox_prefix(format!("_INBOX_{token}"));
        }
        if tls {
            opts = opts.require_tls(true);
        } else {
            // Not the cluster's other addresses it advertises: those are
            // not this host, and the connection would stay plain text.
            opts = opts.ignore_discovered_servers();
        }
        if let Some(ca) = &a.nats_ca {
            opts = opts.add_root_certificates(ca.clone());
        }
        if let (Some(c), Some(k)) = (&a.nats_cert, &a.nats_key) {
            opts = opts.add_client_certificate(c.clone(), k.clone());
        }
        if let Some(creds) = &a.nats_creds {
            opts = opts.credentials_file(creds).await.with_context(|| format!("cannot read {}", creds.display()))?;
        }
        let client = opts.connect(url).await.with_context(|| format!("cannot connect to {url}"))?;
        let js = jetstream::new(client.clone());
        let prefix = a.nats_prefix.clone();
        // Subscribed (and the server told) before any request is published.
        let reply = a.nats_reply.clone();
        let answer_subjects = match &reply {
            Some(token) => format!("{prefix}.{runner}.out.answer.{token}.*"),
            None => format!("{prefix}.{runner}.out.answer.*"),
        };
        let mut answers = client.subscribe(answer_subjects).await?;
        client.flush().await.context("cannot reach the NATS server")?;
        let waiting: Waiting = Default::default();
        let dispatcher = {
            let (waiting, key) = (waiting.clone(), key.clone());
            tokio::spawn(async move {
                while let Some(m) = answers.next().await {
                    let Some(id) = m.subject.as_str().rsplit('.').next() else { continue };
                    let lock = || waiting.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                    if !lock().contains_key(id) {
                        continue;
                    }
                    // Signed by the runner for this subject, whichever
                    // request it answers (the request checks that).
                    let verdict =
                        signed_answers(&key, m.subject.as_str(), m.headers.as_ref(), &m.payload).map(str::to_owned);
                    if let Some(w) = lock().get_mut(id) {
                        match verdict {
                            Ok(claimed) => {
                                let _ = w.tx.try_send((m, claimed));
                            }
                            Err(e) => w.refused = Some(e),
                        }
                    }
                }
            })
            .abort_handle()
        };
        Ok(Self { client, js, runner, prefix, key, reply, source: tokio::sync::OnceCell::new(), waiting, dispatcher })
    }

    /// Connect with a URL, runner name and the runner's key file only
    /// (tests, the load generator).
    ///
    /// # Errors
    /// As [`NatsClient::connect`].
    pub async fn plain(url: &str, runner: &str, runner_key: &std::path::Path) -> Result<Self> {
        Self::connect(&NatsArgs {
            nats: Some(url.to_owned()),
            runner: Some(runner.to_owned()),
            nats_ca: None,
            nats_cert: None,
            nats_key: None,
            nats_creds: None,
            nats_prefix: "edge".to_owned(),
            runner_key: Some(runner_key.to_owned()),
            nats_reply: None,
        })
        .await
    }

    fn subject(&self, dir: &str, kind: &str) -> String {
        format!("{}.{}.{dir}.{kind}", self.prefix, self.runner)
    }

    /// Publish a request (`submit`, `approve`, `export`) and wait up to
    /// `timeout` for the runner's answer.
    ///
    /// # Errors
    /// The server refused the message (no such stream: is the runner
    /// connected?), or no answer came in time.
    pub async fn request(&self, kind: &str, payload: Vec<u8>, timeout: Duration) -> Result<serde_json::Value> {
        let deadline = tokio::time::Instant::now() + timeout;
        // Which stream, made when, before publishing: an answer must name
        // this one (a stream made again since would fail closed).
        let source = tokio::time::timeout_at(deadline, self.source())
            .await
            .map_err(|_| anyhow!("the NATS server did not answer within {}s", timeout.as_secs()))??;
        let id = uuid::Uuid::new_v4().simple().to_string();
        let answers = self.await_answers(&id);
        let forget = Forget(&self.waiting, &id);
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(async_nats::header::NATS_MESSAGE_ID, id.as_str());
        if let Some(token) = &self.reply {
            headers.insert(outbound::HEADER_REPLY, token.as_str());
        }
        let stored = self
            .js
            .publish_with_headers(self.subject("in", kind), headers, payload.into())
            .await
            .map_err(|e| anyhow!("cannot publish to the runner: {e}"))?;
        // The server's confirmation first (answers, if they come sooner,
        // wait in the channel): only an answer to a message that was stored
        // as this request, not dropped as a copy, is this request's.
        let ack = tokio::time::timeout_at(deadline, stored)
            .await
            .map_err(|_| anyhow!("the NATS server did not confirm the request within {}s", timeout.as_secs()))?
            .map_err(|e| {
                anyhow!("the NATS server did not store the request ({e}); has runner `{}` connected yet?", self.runner)
            })?;
        if ack.duplicate {
            bail!(
                "the NATS server took this request for a copy of an earlier message with id {id} and did not store \
                 it: what answers on that id answers that message, not this request; submit again"
            );
        }
        let (inbound, _) = streams(&self.prefix, &self.runner);
        if ack.stream != inbound {
            bail!(
                "the NATS server stored the request in stream `{}`, not the runner's {inbound}: the subjects are \
                 not set up as the runner sets them up",
                edge_core::text::line(&ack.stream)
            );
        }
        let answer = self.verified_answer(answers, &id, &format!("{source}:{}", ack.sequence), deadline).await;
        drop(forget);
        answer
    }

    /// The runner's inbound stream and its creation time
    /// (`<stream>@<created>`), asked of the server once.
    async fn source(&self) -> Result<String> {
        let (inbound, _) = streams(&self.prefix, &self.runner);
        self.source
            .get_or_try_init(|| async {
                let mut stream = self.js.get_stream(&inbound).await.map_err(|e| {
                    anyhow!("no stream {inbound} on the NATS server ({e}); has runner `{}` connected yet?", self.runner)
                })?;
                let created = stream.info().await.map_err(|e| anyhow!("stream {inbound}: {e}"))?.created;
                anyhow::Ok(format!("{inbound}@{}", created.unix_timestamp_nanos()))
            })
            .await
            .cloned()
    }

    /// The answer to an earlier request, by the handle a timed-out
    /// [`NatsClient::request`] named (`<id>@<stream>@<created>:<sequence>`): from the
    /// outbound stream if the runner answered meanwhile, else awaited up to
    /// `timeout`. Checked as a fresh answer is: signed, and for that request.
    ///
    /// # Errors
    /// A malformed handle, or no answer in time.
    pub async fn answer_of(&self, handle: &str, timeout: Duration) -> Result<serde_json::Value> {
        let deadline = tokio::time::Instant::now() + timeout;
        let (id, request) = parse_handle(handle)?;
        // Listening before the stream is read: nothing falls between.
        let answers = self.await_answers(id);
        let forget = Forget(&self.waiting, id);
        if let Some(m) = self.last_on(&self.answer_kind(id)).await?
            && self.check(&m.subject, request, Some(&m.headers), &m.payload).is_ok()
        {
            return serde_json::from_slice(&m.payload).context("the runner's answer is not JSON");
        }
        let answer = self.verified_answer(answers, id, request, deadline).await;
        drop(forget);
        answer
    }

    /// `answer.[<reply token>.]<id>`: where the answer to request `id` goes.
    fn answer_kind(&self, id: &str) -> String {
        match &self.reply {
            Some(token) => format!("answer.{token}.{id}"),
            None => format!("answer.{id}"),
        }
    }

    /// Take every message on request `id`'s answer subject from now on.
    fn await_answers(&self, id: &str) -> tokio::sync::mpsc::Receiver<(async_nats::Message, String)> {
        let (tx, rx) = tokio::sync::mpsc::channel(ANSWERS_HELD);
        self.waiting
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(id.to_owned(), Waiter { tx, refused: None });
        rx
    }

    /// The runner's answer to the message stored as `request`, signed;
    /// anything else on the subject is refused and waited past.
    async fn verified_answer(
        &self,
        mut answers: tokio::sync::mpsc::Receiver<(async_nats::Message, String)>,
        id: &str,
        request: &str,
        deadline: tokio::time::Instant,
    ) -> Result<serde_json::Value> {
        let mut refused = None;
        let got = tokio::time::timeout_at(deadline, async {
            loop {
                // (Signed by the runner: the dispatcher checked.) This
                // request's answer, or the runner's answer to another one.
                let (m, claimed) = answers.recv().await.context("the answer subscription ended")?;
                match outbound::answering(&claimed, request) {
                    Ok(()) => return anyhow::Ok(m.payload),
                    Err(e) => refused = Some(e),
                }
            }
        })
        .await;
        // (A forgery the dispatcher refused, if this request saw no other refusal.)
        if refused.is_none() {
            refused = self
                .waiting
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .get_mut(id)
                .and_then(|w| w.refused.take());
        }
        let answer = got.map_err(|_| {
            let mut e = anyhow!(
                "no answer from runner `{}` yet. The request is stored ({request}): the runner answers it when it \
                 gets to it, and the answer is kept 30 days. Read it later with `edge-runner answer {id}@{request}` \
                 and the same --nats flags",
                self.runner
            );
            if let Some(why) = refused.take() {
                e = e.context(format!(
                    "a message that claimed to answer this request was refused ({why}): someone who may publish on \
                     the runner's outbound subjects forged it, or --runner-key is not this runner's key"
                ));
            }
            e
        })??;
        serde_json::from_slice(&answer).context("the runner's answer is not JSON")
    }

    /// Whether a message on `subject` is the runner's: signed by its key
    /// (and, for an answer, answering `request`).
    fn check(
        &self,
        subject: &async_nats::Subject,
        request: &str,
        headers: Option<&async_nats::HeaderMap>,
        body: &[u8],
    ) -> Result<(), outbound::OutboundError> {
        outbound::answering(signed_answers(&self.key, subject.as_str(), headers, body)?, request)
    }

    /// Check a proposal event from [`NatsClient::events`] or
    /// [`NatsClient::proposal_events`]: signed by the runner's key, on the
    /// subject it came on.
    ///
    /// # Errors
    /// Unsigned, or signed by another key, or for another subject.
    pub fn verify_event(&self, m: &async_nats::Message) -> Result<(), outbound::OutboundError> {
        self.check(&m.subject, outbound::NO_REQUEST, m.headers.as_ref(), &m.payload)
    }

    /// Ask the runner for an export (the whole log, or what follows the
    /// checkpoint `since`) and write it to `path` from the object store it
    /// went to — durably, or not at all (`crate::export::write_whole`).
    /// Returns its size.
    ///
    /// # Errors
    /// The runner refused (the answer's reason), or the bundle cannot be
    /// read or written.
    pub async fn fetch_export(&self, since: Option<String>, path: &std::path::Path) -> Result<Fetched> {
        let answer = self.request("export", since.unwrap_or_default().into_bytes(), Duration::from_secs(600)).await?;
        if let Some(r) = answer.get("refused") {
            bail!(
                "the runner did not export [{}]: {}",
                edge_core::text::line(r["reason_code"].as_str().unwrap_or("?")),
                edge_core::text::line(r["detail"].as_str().unwrap_or(""))
            );
        }
        let (bucket, object) = match (answer["export"]["bucket"].as_str(), answer["export"]["object"].as_str()) {
            (Some(b), Some(o)) => (b.to_owned(), o.to_owned()),
            _ => bail!("the runner's answer names no export"),
        };
        let store = self.js.get_object_store(&bucket).await.map_err(|e| anyhow!("object store {bucket}: {e}"))?;
        let mut object_reader = store.get(&object).await.map_err(|e| anyhow!("{bucket}/{object}: {e}"))?;
        // Streamed to a `.partial` file beside `path` (memory holds a chunk,
        // not the bundle; the object store checks the object's digest at
        // its end), synced, then renamed into place: no file at `path`
        // unless whole.
        let name = path.file_name().and_then(|n| n.to_str()).context("the output path names no file")?;
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => std::path::PathBuf::from("."),
        };
        let tmp = dir.join(format!(".{name}.partial"));
        let file = crate::staging::create_fresh(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
        let mut file = tokio::fs::File::from_std(file);
        let copied = async {
            let n = tokio::io::copy(&mut object_reader, &mut file).await?;
            file.sync_all().await?;
            std::io::Result::Ok(n)
        }
        .await;
        let n = match copied {
            Ok(n) => n,
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(anyhow!("cannot read {bucket}/{object} into {}: {e}", tmp.display()));
            }
        };
        std::fs::rename(&tmp, path).with_context(|| format!("cannot move {} to {}", tmp.display(), path.display()))?;
        crate::staging::sync_dir(&dir).with_context(|| format!("cannot sync {}", dir.display()))?;
        // (A runner before this field names none.)
        let quoting_config = answer["export"]["quoting_config"].as_u64().unwrap_or(0);
        Ok(Fetched { bytes: n, quoting_config })
    }

    /// The latest message the runner published on `out.<kind>.<id>` (kept
    /// in its outbound stream); `None` if none was.
    ///
    /// # Errors
    /// `id` is not a proposal id, or the stream cannot be read.
    async fn latest(&self, kind: &str, id: &str) -> Result<Option<Vec<u8>>> {
        if !crate::config::nats::is_token(id) {
            bail!("`{}` is not a proposal id", edge_core::text::line(id));
        }
        let subject = self.subject("out", &format!("{kind}.{id}"));
        let Some(m) = self.last_on(&format!("{kind}.{id}")).await? else { return Ok(None) };
        self.check(&m.subject, outbound::NO_REQUEST, Some(&m.headers), &m.payload).map_err(|e| {
            anyhow!(
                "the {kind} of {id} on {subject} is not runner `{}`'s ({e}): do not trust it; someone who may \
                 publish there forged it, or --runner-key is not this runner's key",
                self.runner
            )
        })?;
        Ok(Some(m.payload.to_vec()))
    }

    /// The latest message on the outbound subject `kind`, by direct get
    /// (`$JS.API.DIRECT.GET.<stream>.<subject>`: a NATS permission can
    /// allow each client the subjects it may read); `None` if there is none.
    ///
    /// # Errors
    /// The server refused or failed the get.
    async fn last_on(&self, kind: &str) -> Result<Option<async_nats::jetstream::message::StreamMessage>> {
        use async_nats::jetstream::stream::DirectGetErrorKind;
        let (_, outbound) = streams(&self.prefix, &self.runner);
        let subject = self.subject("out", kind);
        let stream = self.js.get_stream_no_info(&outbound).await.map_err(|e| anyhow!("stream {outbound}: {e}"))?;
        match stream.direct_get_last_for_subject(subject.as_str()).await {
            Ok(m) => Ok(Some(m)),
            Err(e) if e.kind() == DirectGetErrorKind::NotFound => Ok(None),
            Err(e) => Err(anyhow!("cannot read {subject} from the stream {outbound}: {e}")),
        }
    }

    /// A waiting proposal's document and preview, as the runner published
    /// them when it began to wait (from its outbound stream).
    ///
    /// # Errors
    /// No such proposal published (unknown, or not waiting).
    pub async fn proposal(&self, id: &str) -> Result<(Vec<u8>, Option<Vec<u8>>)> {
        let doc = self
            .latest("proposal", id)
            .await?
            .with_context(|| format!("runner `{}` published no proposal {id}", self.runner))?;
        Ok((doc, self.latest("preview", id).await?))
    }

    /// A proposal's state as the runner last published it (its latest
    /// event on `out.state.<id>`).
    ///
    /// # Errors
    /// No event of that proposal was published.
    pub async fn state(&self, id: &str) -> Result<String> {
        let m = self
            .latest("state", id)
            .await?
            .with_context(|| format!("runner `{}` published nothing of proposal {id}", self.runner))?;
        let v: serde_json::Value = serde_json::from_slice(&m).context("a proposal event that is not JSON")?;
        Ok(v["state"].as_str().unwrap_or("?").to_owned())
    }

    /// One proposal's events from now on (`out.state.<id>`).
    ///
    /// # Errors
    /// A bad id, or the subscription cannot be made.
    pub async fn proposal_events(&self, id: &str) -> Result<async_nats::Subscriber> {
        if !crate::config::nats::is_token(id) {
            bail!("`{}` is not a proposal id", edge_core::text::line(id));
        }
        Ok(self.client.subscribe(self.subject("out", &format!("state.{id}"))).await?)
    }

    /// Proposal events from now on.
    ///
    /// # Errors
    /// If the subscription cannot be made.
    pub async fn events(&self) -> Result<async_nats::Subscriber> {
        Ok(self.client.subscribe(self.subject("out", "events")).await?)
    }
}

/// Removes a request's entry from the waiting answers when it ends (an
/// answer that never came leaves nothing behind).
struct Forget<'a>(&'a Waiting, &'a str);

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(self.1);
    }
}

/// What a message on `subject` says it answers, once its signature by the
/// runner's `key` is checked (`edge_core::outbound`).
fn signed_answers<'m>(
    key: &NoteVerifier,
    subject: &str,
    headers: Option<&'m async_nats::HeaderMap>,
    body: &[u8],
) -> Result<&'m str, outbound::OutboundError> {
    let header = |name: &str| headers.and_then(|h| h.get(name)).map(async_nats::HeaderValue::as_str);
    outbound::signed_answers(key, subject, header(outbound::HEADER_ANSWERS), header(outbound::HEADER_SIGNATURE), body)
}

/// A request's handle, `<id>@<stream>@<created>:<sequence>`, as (id,
/// `<stream>@<created>:<sequence>`: what its answer names).
///
/// # Errors
/// Not of that shape.
fn parse_handle(handle: &str) -> Result<(&str, &str)> {
    let digits = |s: &str| !s.is_empty() && s.len() <= 40 && s.bytes().all(|b| b.is_ascii_digit());
    let parsed = handle.split_once('@').filter(|(id, request)| {
        crate::config::nats::is_token(id)
            && request.rsplit_once(':').is_some_and(|(source, seq)| {
                digits(seq)
                    && source
                        .split_once('@')
                        .is_some_and(|(stream, created)| crate::config::nats::is_token(stream) && digits(created))
            })
    });
    parsed.with_context(|| {
        format!(
            "`{}` is not a request handle: give it as printed when the wait ended \
             (<id>@<stream>@<created>:<sequence>)",
            edge_core::text::line(handle)
        )
    })
}

/// The runner key a client pins (`edge-runner evidence runner-key`).
///
/// # Errors
/// The file cannot be read or holds no runner key.
pub fn read_runner_key(path: &std::path::Path) -> Result<NoteVerifier> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read the runner key {}", path.display()))?;
    NoteVerifier::parse(text.trim()).map_err(|e| {
        anyhow!(
            "{} is not a runner key ({e}): it holds one line, as `edge-runner evidence runner-key` prints it",
            path.display()
        )
    })
}

/// The inbound and outbound stream names of a runner (as
/// [`crate::config::nats::NatsSettings::streams`] names them).
pub fn streams(prefix: &str, runner: &str) -> (String, String) {
    (format!("{prefix}_{runner}_in"), format!("{prefix}_{runner}_out"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_goes_nowhere_but_this_host_and_the_url_holds_no_secret() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        // (192.0.2.1 is TEST-NET-1: were a connection tried, it would hang, not fail.)
        for (url, why) in [
            ("nats://192.0.2.1:4222", "plain text to another host"),
            ("nats://hub.example:4222", "plain text to another host"),
            ("nats://user:secret@127.0.0.1:4222", "never in the URL"),
            ("http://127.0.0.1:4222", "use tls://host:port"),
        ] {
            let e = rt
                .block_on(async {
                    tokio::time::timeout(
                        Duration::from_secs(5),
                        NatsClient::plain(url, "r1", std::path::Path::new("r1.vkey")),
                    )
                    .await
                })
                .expect("refused before any connection is tried")
                .unwrap_err();
            let e = format!("{e:#}");
            assert!(e.contains(why), "{url}: {e}");
            assert!(!e.contains("secret"), "the password was repeated: {e}");
        }
    }
}
