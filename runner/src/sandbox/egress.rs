//! Governed endpoints: every HTTP request a capsule makes, checked before it
//! leaves and sent by the runner itself.
//!
//! A capsule uses standard `wasi:http/outgoing-handler` and names an
//! endpoint by its logical name as the authority (`http://etcd/v3/kv/put`).
//! The request never reaches a socket of wasmtime's: [`Egress`] is the
//! `send_request` hook, and for each request, in this order,
//!
//! 1. the authority must be a granted endpoint, the method one it allows,
//!    the path well-formed, the headers only `content-type`/`accept`, the
//!    body within the endpoint's limit;
//! 2. the phase decides what may leave — `plan` and `verify`: reads only
//!    (GET, HEAD, the endpoint's `read_requests`); `apply`: exactly the next
//!    planned call ([`CallCursor`]), each at most once; any other phase:
//!    nothing;
//! 3. the intent is recorded, durably, before anything is sent;
//! 4. the runner resolves the endpoint's host itself and connects only to an
//!    address its `connect` list allows (a name that resolves elsewhere is
//!    refused: no DNS rebinding), with the endpoint's own TLS trust and
//!    client identity, its `Host`, and the credential it attaches (which the
//!    capsule never sees); no proxy, no redirect is followed; the whole
//!    exchange is bounded by the endpoint's timeout and the response by its
//!    size limit (and the phase's wall time bounds it all);
//! 5. the outcome is recorded (status, a few safe headers, the body's
//!    digest and its first 64 KiB).
//!
//! A request refused at 1, 2 or 4 is never sent; the guest gets
//! `HTTP-request-denied` (or the transport error) and the run is refused
//! afterwards with the first violation's reason code.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use edge_core::Sha256Digest;
use edge_core::calls::{Call, CallCursor, Request, check_path};
use edge_core::evidence::Event;
use http_body_util::{BodyExt, Full};
use wasmtime_wasi_http::{DEFAULT_FORBIDDEN_HEADERS, Error as HttpError, RequestOptions, WasiBody, WasiHttpHooks};

use crate::config::endpoints::EndpointConfig;
use crate::store::log::RunLog;

/// How much of a response body the evidence keeps (the digest covers all of it).
pub const KEPT_RESPONSE_BYTES: usize = 64 << 10;
/// A `call-intent` record: the body kept as the endpoint's preview mode
/// says (`ep` None: an endpoint no longer configured, nothing kept), as an
/// artifact `put` stores.
///
/// # Errors
/// If the artifact cannot be stored.
pub fn intent_event(
    (phase, call, planned): (&str, u32, Option<u32>),
    request: &Request,
    body: &[u8],
    ep: Option<&EndpointConfig>,
    put: impl FnOnce(&[u8]) -> anyhow::Result<Sha256Digest>,
) -> anyhow::Result<Event> {
    let kept = request.body.map(|_| ep.map_or(edge_core::preview::PreviewMode::DigestOnly, |e| e.preview));
    let shown = ep.filter(|_| request.body.is_some()).and_then(|e| e.shown_body(body));
    let body = shown.map(|b| put(&b)).transpose()?;
    Ok(Event::CallIntent { phase: phase.into(), call, planned, request: request.clone(), kept, body })
}

/// What the evidence keeps of a response body: its first
/// [`KEPT_RESPONSE_BYTES`] (cut back to a whole character), as the
/// endpoint's preview mode keeps request bodies — as is, masked, or nothing.
pub fn kept_response(ep: &EndpointConfig, body: &[u8]) -> Vec<u8> {
    let cut = &body[..body.len().min(KEPT_RESPONSE_BYTES)];
    let cut = match std::str::from_utf8(cut) {
        Err(e) if e.error_len().is_none() => &cut[..e.valid_up_to()],
        _ => cut,
    };
    ep.shown_body(cut).unwrap_or_default()
}

/// Request headers a capsule may set (the runner sets the rest).
const GUEST_HEADERS: [&str; 3] = ["content-type", "accept", "content-length"];
/// Response headers recorded as evidence (never cookies or auth challenges).
const RECORDED_HEADERS: [&str; 6] = ["content-type", "content-length", "etag", "location", "retry-after", "date"];

/// What may leave in a phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallMode {
    /// `plan`: reads, and calls may be proposed.
    Plan,
    /// `apply` after authorization: exactly the planned calls, in order.
    Apply,
    /// `verify`: reads only.
    Verify,
    /// Anything else (the preview's `apply`): nothing.
    None,
}

impl CallMode {
    fn phase(self) -> &'static str {
        match self {
            CallMode::Plan => "plan",
            CallMode::Apply => "apply",
            CallMode::Verify => "verify",
            CallMode::None => "preview",
        }
    }
}

/// The first rule a capsule's requests broke in a phase: the run is refused
/// with it after the phase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub reason_code: &'static str,
    pub detail: String,
}

/// What a call came back with (or why nothing did).
#[derive(Debug, Clone, Default)]
pub struct CallResult {
    pub status: Option<u16>,
    pub headers: Vec<(String, String)>,
    pub body: Option<Sha256Digest>,
    pub bytes: u64,
    /// The first [`KEPT_RESPONSE_BYTES`] of the body.
    pub content: Vec<u8>,
    pub reason_code: Option<&'static str>,
    pub detail: Option<String>,
}

/// Where a phase's gate records its requests: the run's evidence log,
/// written from the phase's own thread (an intent is durable before its
/// request leaves, with no hop through another task). The run takes it
/// back after the phase ([`Gate::take_log`]) and keeps its records.
pub struct CallLog {
    pub run: String,
    pub log: RunLog,
    /// The run's requests so far (numbers continue across phases).
    pub calls: u32,
    /// Takes granted secret values out of text kept as evidence.
    pub redact: Arc<dyn Fn(&str) -> String + Send + Sync>,
}

impl std::fmt::Debug for CallLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallLog").field("run", &self.run).field("calls", &self.calls).finish_non_exhaustive()
    }
}

impl CallLog {
    fn refused(
        &mut self,
        phase: &str,
        request: Option<Request>,
        reason_code: &str,
        detail: &str,
    ) -> anyhow::Result<()> {
        let detail = (self.redact)(detail);
        let event = Event::CallRefused { phase: phase.into(), request, reason_code: reason_code.into(), detail };
        self.log.append_deferred(&self.run, event)
    }

    /// Record an intent and make it durable; returns the request's number.
    /// The body (`body`, the bytes `request.body` names) is kept as the
    /// endpoint's preview mode says (`ep` None: an endpoint no longer
    /// configured, nothing kept).
    pub async fn intent(
        &mut self,
        phase: &str,
        planned: Option<u32>,
        request: &Request,
        body: &[u8],
        ep: Option<&EndpointConfig>,
    ) -> anyhow::Result<u32> {
        self.calls += 1;
        let call = self.calls;
        let event = intent_event((phase, call, planned), request, body, ep, |b| self.log.put_artifact(b))?;
        self.log.append_deferred(&self.run, event)?;
        self.log.barrier().await?;
        Ok(call)
    }

    /// Record what came back (durable by the next barrier).
    pub fn outcome(&mut self, call: u32, r: CallResult) -> anyhow::Result<()> {
        let content = if r.content.is_empty() { None } else { Some(self.log.put_artifact(&r.content)?) };
        self.log.append_deferred(
            &self.run,
            Event::CallOutcome {
                call,
                status: r.status,
                headers: r.headers.into_iter().collect(),
                body: r.body,
                bytes: r.bytes,
                content,
                reason_code: r.reason_code.map(str::to_owned),
                detail: r.detail.map(|d| (self.redact)(&d)),
            },
        )
    }
}

/// A call proposed during `plan`, with the bodies its digests name.
#[derive(Debug, Clone)]
pub struct Proposed {
    pub call: Call,
    pub body: Vec<u8>,
    pub compensation_body: Vec<u8>,
}

#[derive(Debug, Default)]
struct GateState {
    done: usize,
    calls: u32,
    violation: Option<Violation>,
    proposed: Vec<Proposed>,
}

/// One phase's rules for requests, shared by the hook and the run.
#[derive(Debug)]
pub struct Gate {
    mode: CallMode,
    endpoints: BTreeMap<String, Arc<EndpointConfig>>,
    planned: Vec<Call>,
    /// The planned calls' bodies (what `calls.planned` returns).
    planned_bodies: Vec<(Vec<u8>, Vec<u8>)>,
    /// Where requests are recorded (taken back by the run after the phase).
    log: tokio::sync::Mutex<Option<CallLog>>,
    state: Mutex<GateState>,
}

impl Gate {
    /// A gate for one phase. `planned` (with its bodies) only for `apply`;
    /// without a `log`, nothing may leave (a request cannot be recorded).
    pub fn new(
        mode: CallMode,
        endpoints: BTreeMap<String, Arc<EndpointConfig>>,
        planned: Vec<(Call, Vec<u8>, Vec<u8>)>,
        log: Option<CallLog>,
    ) -> Arc<Self> {
        let (planned, planned_bodies) = planned.into_iter().map(|(c, b, cb)| (c, (b, cb))).unzip();
        Arc::new(Self {
            mode,
            endpoints,
            planned,
            planned_bodies,
            log: tokio::sync::Mutex::new(log),
            state: Mutex::default(),
        })
    }

    /// After the phase: the log its requests were recorded in.
    pub fn take_log(&self) -> Option<CallLog> {
        self.log.try_lock().ok().and_then(|mut l| l.take())
    }

    /// A gate that lets nothing out.
    pub fn closed() -> Arc<Self> {
        Self::new(CallMode::None, BTreeMap::new(), Vec::new(), None)
    }

    pub fn mode(&self) -> CallMode {
        self.mode
    }

    fn state(&self) -> std::sync::MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The first violation of the phase, if any.
    pub fn violation(&self) -> Option<Violation> {
        self.state().violation.clone()
    }

    /// How many requests were handed to the network (intents recorded).
    pub fn calls_sent(&self) -> u32 {
        self.state().calls
    }

    /// How many planned calls `apply` made.
    pub fn planned_done(&self) -> usize {
        self.state().done
    }

    /// The calls proposed during `plan`, in order.
    pub fn take_proposed(&self) -> Vec<Proposed> {
        std::mem::take(&mut self.state().proposed)
    }

    /// The plan's calls with their bodies (for `calls.planned`).
    pub fn planned(&self) -> impl Iterator<Item = (&Call, &[u8], &[u8])> {
        self.planned.iter().zip(&self.planned_bodies).map(|(c, (b, cb))| (c, b.as_slice(), cb.as_slice()))
    }

    /// Add a proposed call (during `plan` only).
    ///
    /// # Errors
    /// Outside `plan`, or beyond [`edge_core::calls::MAX_CALLS`].
    pub fn propose(&self, p: Proposed) -> Result<(), String> {
        if self.mode != CallMode::Plan {
            return Err(format!("calls.propose() during {}: calls are proposed during plan only", self.mode.phase()));
        }
        let mut s = self.state();
        if s.proposed.len() >= edge_core::calls::MAX_CALLS {
            return Err(format!("calls.propose(): more than {} calls", edge_core::calls::MAX_CALLS));
        }
        s.proposed.push(p);
        Ok(())
    }

    fn violate(&self, reason_code: &'static str, detail: String) {
        let mut s = self.state();
        if s.violation.is_none() {
            s.violation = Some(Violation { reason_code, detail });
        }
    }

    /// Refuse a request before it leaves: record it, remember the violation.
    async fn refuse(&self, request: Option<Request>, reason_code: &'static str, detail: String) -> HttpError {
        if let Some(log) = self.log.lock().await.as_mut()
            && let Err(e) = log.refused(self.mode.phase(), request, reason_code, &detail)
        {
            tracing::error!(error = %format!("{e:#}"), "a refused request could not be recorded");
        }
        self.violate(reason_code, detail);
        HttpError::HttpRequestDenied
    }

    /// Check one request, record it, send it, record what came back.
    async fn send(self: Arc<Self>, request: http::Request<WasiBody>) -> Result<http::Response<WasiBody>, HttpError> {
        let (parts, body) = request.into_parts();
        let host = parts.uri.authority().map(|a| a.as_str().to_owned()).unwrap_or_default();
        let Some(ep) = self.endpoints.get(&host).cloned() else {
            return Err(self
                .refuse(
                    None,
                    "call.undeclared_endpoint",
                    format!(
                        "request to `{}`, which is not an endpoint granted to this capsule (granted: {})",
                        edge_core::text::line(&host),
                        if self.endpoints.is_empty() {
                            "none".to_owned()
                        } else {
                            self.endpoints.keys().cloned().collect::<Vec<_>>().join(", ")
                        }
                    ),
                )
                .await);
        };
        let method = parts.method.as_str().to_owned();
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
        let shown = edge_core::text::line(&format!("{method} {}{path}", ep.name)).into_owned();
        if !ep.methods.contains(&method) {
            return Err(self
                .refuse(
                    None,
                    "call.method_not_allowed",
                    format!("{shown}: endpoint `{}` allows {}", ep.name, ep.methods.join(", ")),
                )
                .await);
        }
        if let Err(why) = check_path(&path) {
            return Err(self.refuse(None, "call.bad_path", format!("{shown}: {why}")).await);
        }
        if let Some(h) = parts.headers.keys().find(|h| !GUEST_HEADERS.contains(&h.as_str())) {
            return Err(self
                .refuse(
                    None,
                    "call.header_refused",
                    format!("{shown} sets header `{h}`; a capsule may set only content-type and accept"),
                )
                .await);
        }
        let content_type = parts.headers.get(http::header::CONTENT_TYPE).map(|v| {
            let s = String::from_utf8_lossy(v.as_bytes()).into_owned();
            edge_core::text::line(&s).into_owned()
        });
        let accept = parts.headers.get(http::header::ACCEPT).cloned();
        let body = match http_body_util::Limited::new(body, ep.max_request_bytes).collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => {
                return Err(self
                    .refuse(
                        None,
                        "call.request_too_large",
                        format!("{shown}: the body is larger than the endpoint's {} bytes", ep.max_request_bytes),
                    )
                    .await);
            }
        };
        let request = Request {
            endpoint: ep.name.clone(),
            method: method.clone(),
            path: path.clone(),
            content_type,
            body: (!body.is_empty()).then(|| Sha256Digest::of(&body)),
        };
        // What this phase lets out.
        let planned =
            match self.mode {
                CallMode::Plan | CallMode::Verify if ep.is_read(&method, &path) => None,
                CallMode::Plan | CallMode::Verify => {
                    return Err(self.refuse(
                    Some(request),
                    "call.write_outside_apply",
                    format!(
                        "{shown} during {}: only reads (GET, HEAD and the endpoint's read_requests) may be sent \
                         outside apply",
                        self.mode.phase()
                    ),
                ).await);
                }
                CallMode::Apply => {
                    let admitted = {
                        let mut s = self.state();
                        let mut cursor = CallCursor::resume(&self.planned, s.done);
                        let r = cursor.admit(&request);
                        s.done = cursor.done();
                        r
                    };
                    match admitted {
                        Ok(i) => Some(u32::try_from(i).unwrap_or(u32::MAX)),
                        Err(e) => {
                            let code = e.reason_code();
                            return Err(self.refuse(Some(request), code, e.to_string()).await);
                        }
                    }
                }
                CallMode::None => {
                    return Err(self
                        .refuse(
                            Some(request),
                            "call.not_allowed",
                            format!("{shown} during the preview: no request leaves before the plan is authorized"),
                        )
                        .await);
                }
            };
        // The intent is durable before anything leaves; the log stays held
        // until the outcome is recorded (a phase's requests, one at a time).
        let mut held = self.log.lock().await;
        // The connection is opened while the intent commits (the allowed
        // address only; nothing is sent on it before the intent is durable,
        // and it is dropped if the intent cannot be recorded). One that
        // fails here is tried again below, where its failure is recorded.
        let (recorded, early) = tokio::join!(
            async {
                match held.as_mut() {
                    Some(log) => log.intent(self.mode.phase(), planned, &request, &body, Some(&ep)).await,
                    None => Err(anyhow::anyhow!("no evidence log for this phase")),
                }
            },
            tokio::time::timeout(ep.timeout, connect(&ep)),
        );
        let early = early.ok().and_then(Result::ok);
        let call = match recorded {
            Ok(call) => call,
            Err(e) => {
                self.violate("runner.error", format!("the intent of {shown} could not be recorded: {e:#}"));
                return Err(HttpError::InternalError(Some("the runner could not record the call".into())));
            }
        };
        self.state().calls += 1;
        let sent = exchange(&ep, &method, &path, request.content_type.as_deref(), accept, body, early).await;
        let (result, answer) = match sent {
            Ok((status, headers, bytes)) => {
                let recorded = headers
                    .iter()
                    .filter(|(k, _)| RECORDED_HEADERS.contains(&k.as_str()))
                    .map(|(k, v)| {
                        let v = String::from_utf8_lossy(v.as_bytes());
                        (k.as_str().to_owned(), edge_core::text::line(&v).chars().take(256).collect())
                    })
                    .collect();
                let result = CallResult {
                    status: Some(status.as_u16()),
                    headers: recorded,
                    body: Some(Sha256Digest::of(&bytes)),
                    bytes: bytes.len() as u64,
                    content: kept_response(&ep, &bytes),
                    ..CallResult::default()
                };
                let mut resp = http::Response::new(Full::new(bytes).map_err(|never| match never {}).boxed_unsync());
                *resp.status_mut() = status;
                *resp.headers_mut() = headers;
                (result, Ok(resp))
            }
            Err(f) => {
                self.violate(f.reason_code, format!("{shown}: {}", f.detail));
                let result = CallResult {
                    reason_code: Some(f.reason_code),
                    detail: Some(f.detail.clone()),
                    ..CallResult::default()
                };
                (result, Err(f.error))
            }
        };
        if let Some(log) = held.as_mut()
            && let Err(e) = log.outcome(call, result)
        {
            self.violate("runner.error", format!("the outcome of {shown} could not be recorded: {e:#}"));
        }
        answer
    }
}

/// Why an exchange with an endpoint failed.
#[derive(Debug)]
pub struct Failure {
    pub reason_code: &'static str,
    pub detail: String,
    error: HttpError,
}

fn fail(reason_code: &'static str, detail: impl Into<String>, error: HttpError) -> Failure {
    Failure { reason_code, detail: detail.into(), error }
}

/// Resolve, connect (allowed addresses only), TLS, one HTTP/1.1 exchange,
/// the response read within its limit; all within the endpoint's timeout.
/// `connected` is a connection already opened to an allowed address (the
/// gate opens it while the intent commits); without one it is opened here.
///
/// # Errors
/// A [`Failure`] with its reason code.
pub async fn exchange(
    ep: &EndpointConfig,
    method: &str,
    path: &str,
    content_type: Option<&str>,
    accept: Option<http::HeaderValue>,
    body: Bytes,
    connected: Option<tokio::net::TcpStream>,
) -> Result<(http::StatusCode, http::HeaderMap, Bytes), Failure> {
    // The whole exchange is one future under the endpoint's time limit.
    let untimed = async move {
        let tcp = match connected {
            Some(tcp) => tcp,
            None => connect(ep).await?,
        };
        let mut req = http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", ep.base_path))
            .header(http::header::HOST, host_header(ep));
        if let Some(ct) = content_type {
            req = req.header(http::header::CONTENT_TYPE, ct);
        }
        if let Some(a) = accept {
            req = req.header(http::header::ACCEPT, a);
        }
        if let Some(c) = &ep.credential {
            req = req.header(c.header.clone(), c.value.clone());
        }
        let req = req.body(Full::new(body)).map_err(|e| {
            fail("call.bad_path", format!("cannot build the request: {e}"), HttpError::HttpRequestUriInvalid)
        })?;
        let resp = match &ep.tls {
            Some(tls) => {
                let name = crate::server::tls::server_name(&ep.host)
                    .map_err(|e| fail("egress.tls", format!("{e:#}"), HttpError::TlsCertificateError))?;
                let stream = tokio_rustls::TlsConnector::from(tls.clone()).connect(name, tcp).await.map_err(|e| {
                    fail("egress.tls", format!("TLS with {} failed: {e}", ep.url()), HttpError::TlsCertificateError)
                })?;
                round_trip(stream, req).await?
            }
            None => round_trip(tcp, req).await?,
        };
        let (parts, body) = resp.into_parts();
        let limit = ep.max_response_bytes;
        let bytes = match http_body_util::Limited::new(body, limit).collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => {
                return Err(fail(
                    "egress.response_too_large",
                    format!("the response is larger than the endpoint's {limit} bytes; it was cut off and not used"),
                    HttpError::HttpResponseBodySize(None),
                ));
            }
            Err(e) => {
                return Err(fail(
                    "egress.failed",
                    format!("reading the response failed: {e}"),
                    HttpError::HttpResponseIncomplete,
                ));
            }
        };
        let bytes = match &ep.credential {
            Some(c) => scrub(bytes, c.value.as_bytes()),
            None => bytes,
        };
        Ok((parts.status, parts.headers, bytes))
    };
    match tokio::time::timeout(ep.timeout, untimed).await {
        Ok(r) => r,
        Err(_) => Err(fail(
            "egress.timeout",
            format!("no complete answer within the endpoint's timeout of {} ms", ep.timeout.as_millis()),
            HttpError::HttpResponseTimeout,
        )),
    }
}

/// A response that echoes the credential does not carry it on: not to the
/// capsule, not into evidence.
fn scrub(bytes: Bytes, secret: &[u8]) -> Bytes {
    if secret.len() < 4 || !bytes.windows(secret.len()).any(|w| w == secret) {
        return bytes;
    }
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i..].starts_with(secret) {
            out.extend_from_slice(b"[credential redacted]");
            i += secret.len();
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Bytes::from(out)
}

fn host_header(ep: &EndpointConfig) -> String {
    let host = if ep.host.contains(':') { format!("[{}]", ep.host) } else { ep.host.clone() };
    match (ep.https, ep.port) {
        (true, 443) | (false, 80) => host,
        (_, p) => format!("{host}:{p}"),
    }
}

async fn round_trip<S>(
    stream: S,
    req: http::Request<Full<Bytes>>,
) -> Result<http::Response<hyper::body::Incoming>, Failure>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
        .await
        .map_err(|e| fail("egress.failed", format!("HTTP handshake failed: {e}"), HttpError::HttpProtocolError))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    sender
        .send_request(req)
        .await
        .map_err(|e| fail("egress.failed", format!("the request failed: {e}"), HttpError::HttpProtocolError))
}

/// Resolve the endpoint's host (the runner's resolver, never the capsule's)
/// and connect to the first address its `connect` list allows.
async fn connect(ep: &EndpointConfig) -> Result<tokio::net::TcpStream, Failure> {
    let addrs: Vec<SocketAddr> = match ep.host.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, ep.port)],
        Err(_) => tokio::net::lookup_host((ep.host.as_str(), ep.port))
            .await
            .map_err(|e| {
                fail(
                    "egress.dns",
                    format!("cannot resolve {}: {e}", ep.host),
                    HttpError::DnsError { rcode: None, info_code: None },
                )
            })?
            .collect(),
    };
    let allowed: Vec<SocketAddr> =
        addrs.iter().copied().filter(|a| ep.connect.iter().any(|c| c.contains(a.ip()))).collect();
    if allowed.is_empty() {
        let found: Vec<String> = addrs.iter().map(|a| a.ip().to_string()).collect();
        return Err(fail(
            "egress.address_not_allowed",
            format!(
                "{} resolves to {}, which endpoint `{}` may not connect to (its `connect` list); nothing was sent",
                ep.host,
                if found.is_empty() { "nothing".to_owned() } else { found.join(", ") },
                ep.name
            ),
            HttpError::DestinationIpProhibited,
        ));
    }
    let mut last = None;
    for a in allowed {
        match tokio::net::TcpStream::connect(a).await {
            Ok(s) => {
                let _ = s.set_nodelay(true);
                return Ok(s);
            }
            Err(e) => last = Some(format!("{a}: {e}")),
        }
    }
    Err(fail(
        "egress.connect",
        format!("cannot connect to {}: {}", ep.url(), last.unwrap_or_default()),
        HttpError::ConnectionRefused,
    ))
}

/// The `wasi:http` hooks of one phase.
#[derive(Debug, Clone)]
pub struct Egress {
    pub gate: Arc<Gate>,
}

impl WasiHttpHooks for Egress {
    fn is_forbidden_header(&mut self, name: &http::HeaderName) -> bool {
        // `host` is left to `send`, which refuses it with a reason code.
        *name != http::header::HOST && DEFAULT_FORBIDDEN_HEADERS.contains(name)
    }

    fn forbidden_header_filter(&mut self) -> wasmtime_wasi_http::ForbiddenHeaderFilter {
        Arc::new(|name| *name != http::header::HOST && DEFAULT_FORBIDDEN_HEADERS.contains(name))
    }

    fn set_host_header(&mut self) -> bool {
        false
    }

    fn default_scheme(&mut self) -> Option<http::uri::Scheme> {
        Some(http::uri::Scheme::HTTP)
    }

    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        _options: Option<RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), HttpError>> + Send>,
    ) -> Box<
        dyn Future<
                Output = Result<
                    (http::Response<WasiBody>, Box<dyn Future<Output = Result<(), HttpError>> + Send>),
                    HttpError,
                >,
            > + Send,
    > {
        let gate = self.gate.clone();
        Box::new(async move {
            let resp = gate.send(request).await?;
            Ok((resp, Box::new(async { Ok(()) }) as Box<dyn Future<Output = Result<(), HttpError>> + Send>))
        })
    }
}
