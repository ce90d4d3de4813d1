//! The HTTP routes (documented in `docs/openapi.yaml`).
//!
//! Every request arrives on a connection whose client certificate already
//! verified against the client CA; `agent` is the identity it names.
//! Submitting needs that identity in `server.agents`. Everything else is
//! granted per identity or role in `[server.access]` (docs/operations.md,
//! "Who may read what"): reading proposals and posting approvals
//! (`proposals`; an agent may always for the proposals it submitted), the
//! evidence export (`evidence`), `/metrics` (`metrics`), reloading
//! (`reload`). Health and readiness answer any valid certificate. A
//! proposal the client may not see is answered like an unknown one.

// Handlers answer `Err(response)` for refusals (a response, not an error).
#![allow(clippy::result_large_err)]

use std::borrow::Cow;
use std::convert::Infallible;
use std::sync::Arc;

use crate::config::server::Permission;
use crate::server::Shared;
use crate::server::health::{self, Probe};
use crate::service::{ApproveReply, ByReference, QueueError, Submission};
use crate::store::fold::Query;
use base64::Engine as _;
use bytes::Bytes;
use edge_core::lifecycle::State;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde::Deserialize;
use serde_json::json;

/// Why a streamed reply stopped: the connection is cut, so the client sees
/// an error, never a short body that looks complete.
pub(crate) type BodyError = Box<dyn std::error::Error + Send + Sync>;

/// A reply: a whole body, or one streamed (an evidence export).
pub(crate) type Resp = Response<http_body_util::combinators::BoxBody<Bytes, BodyError>>;

/// `POST /v1/proposals` body: a capsule file, or (once this runner holds
/// its component) the capsule by reference: manifest and signature only.
/// The fields are read in place from the body when they hold no JSON
/// escape (base64 has none), not copied: a full upload's base64 is a third
/// larger than the capsule, and 64 uploads are in flight at once.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SubmissionBody<'a> {
    /// The capsule file (as `edge-runner capsule pack` writes it), base64.
    #[serde(default, borrow, deserialize_with = "in_place")]
    capsule: Option<Cow<'a, str>>,
    /// The capsule's canonical manifest, base64 (by reference).
    #[serde(default, borrow, deserialize_with = "in_place")]
    manifest: Option<Cow<'a, str>>,
    /// The capsule's signature bundle, base64 (by reference).
    #[serde(default, borrow, deserialize_with = "in_place")]
    signature: Option<Cow<'a, str>>,
}

/// An optional string borrowed from the input unless it holds an escape
/// (serde borrows a `Cow<str>` only where it is not inside an `Option`).
fn in_place<'de: 'a, 'a, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Cow<'a, str>>, D::Error> {
    #[derive(Deserialize)]
    struct InPlace<'a>(#[serde(borrow)] Cow<'a, str>);
    Ok(Option::<InPlace>::deserialize(d)?.map(|s| s.0))
}

pub(crate) fn reply(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Resp {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .header("cache-control", "no-store")
        .body(Full::new(body.into()).map_err(|never| match never {}).boxed())
        .expect("static headers are valid")
}

pub(crate) fn json_reply(status: StatusCode, v: &impl serde::Serialize) -> Resp {
    // Replies are JSON values or the service's typed replies: string-keyed, always serialisable.
    reply(status, "application/json", serde_json::to_vec(v).expect("replies serialise"))
}

/// An error body: what failed and what to do next.
pub(crate) fn error(status: StatusCode, message: impl Into<String>) -> Resp {
    json_reply(status, &json!({ "error": message.into() }))
}

fn overloaded() -> Resp {
    let mut r = error(StatusCode::TOO_MANY_REQUESTS, "the runner's queue is full; retry after the indicated delay");
    r.headers_mut().insert("retry-after", hyper::header::HeaderValue::from_static("1"));
    r
}

/// A run that could not be admitted, as its HTTP answer.
fn not_admitted(e: QueueError) -> Resp {
    match e {
        QueueError::Full => overloaded(),
        QueueError::Stopped => {
            error(StatusCode::SERVICE_UNAVAILABLE, "the runner is shutting down; retry on another runner")
        }
    }
}

/// Largest over-limit body drained before the 413 is sent.
const DRAIN_BEFORE_REFUSING: usize = 1 << 20;

/// Most of an announced length reserved on the body's first piece; the rest
/// is reserved once that much has arrived.
const RESERVE_AHEAD: usize = 1 << 20;

/// Read a body within the size and time limits: at most `limit` bytes
/// (refused with 413 as soon as it is announced or read past it).
///
/// The body is copied into one buffer as it arrives, each piece let go once
/// copied. Collecting the pieces and joining them at the end held the body
/// twice, and the pieces kept the connection's read buffers alive (hyper
/// lends slices of them): at 64 full uploads in flight, most of the
/// server's peak memory.
pub(crate) async fn body<B>(req: Request<B>, limit: usize, timeout: std::time::Duration) -> Result<Bytes, Resp>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
    B::Error: Into<BodyError>,
{
    let announced = req
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|len| len.parse::<usize>().ok());
    if let Some(n) = announced
        && n > limit
    {
        // A small body is drained first, so the client reads a clean 413
        // instead of a reset while it is still sending; a large one is not read.
        if n <= DRAIN_BEFORE_REFUSING {
            let drain = async {
                let mut body = Limited::new(req.into_body(), DRAIN_BEFORE_REFUSING);
                while let Some(Ok(_)) = body.frame().await {}
            };
            let _ = tokio::time::timeout(timeout, drain).await;
        }
        return Err(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body is larger than the limit of {limit} bytes"),
        ));
    }
    let read = async {
        let mut body = Limited::new(req.into_body(), limit);
        let mut buf = Vec::new();
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame?.into_data() {
                make_room(&mut buf, data.len(), announced);
                buf.extend_from_slice(&data);
            }
        }
        Ok::<_, BodyError>(buf)
    };
    match tokio::time::timeout(timeout, read).await {
        Ok(Ok(b)) => Ok(Bytes::from(b)),
        Ok(Err(e)) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => {
            Err(error(StatusCode::PAYLOAD_TOO_LARGE, format!("the body is larger than the limit of {limit} bytes")))
        }
        Ok(Err(e)) => Err(error(StatusCode::BAD_REQUEST, format!("cannot read the body: {e}"))),
        Err(_) => Err(error(StatusCode::REQUEST_TIMEOUT, "the body did not arrive in time")),
    }
}

/// Room in `buf` for `more` bytes of a body, reserved as the body arrives,
/// not on its announcement alone: with a length announced (hyper holds the
/// body to it), the first RESERVE_AHEAD of it, then the rest at once, so the
/// buffer is never copied more than once and holds no slack; without one,
/// by doubling.
fn make_room(buf: &mut Vec<u8>, more: usize, announced: Option<usize>) {
    let need = buf.len() + more;
    if need <= buf.capacity() {
        return;
    }
    let target = match announced {
        Some(n) if need <= RESERVE_AHEAD => n.min(RESERVE_AHEAD),
        Some(n) => n,
        None => 0,
    };
    if target >= need {
        buf.reserve_exact(target - buf.len());
    } else {
        buf.reserve(more);
    }
}

/// The export's header naming how many reload-refused records in it, written
/// by a runner before 2026-12-06, quote the config file (`evidence fetch`
/// prints the same note as `evidence export`).
pub const QUOTING_CONFIG_HEADER: &str = "edge-runner-refusals-quoting-config";

/// Who may submit, read and reload: the governance in force (a reload
/// replaces it). Without one (no `[server]`: not served) nobody may.
fn grants(shared: &Shared) -> Arc<crate::config::server::Grants> {
    shared.runs.runner().governance().grants.clone().unwrap_or_default()
}

/// Handle one request.
///
/// # Errors
/// Never: every failure is an HTTP response.
pub(crate) async fn handle(
    shared: Arc<Shared>,
    peer: std::net::SocketAddr,
    agent: Result<String, String>,
    req: Request<Incoming>,
) -> Result<Resp, Infallible> {
    let (method, path, started) = (req.method().clone(), req.uri().path().to_owned(), std::time::Instant::now());
    let identity = agent.as_ref().ok().cloned();
    let resp = match route(&shared, agent, req).await {
        Ok(r) | Err(r) => r,
    };
    crate::logging::access("api", peer, identity.as_deref(), &method, &path, resp.status(), started);
    Ok(resp)
}

async fn route(shared: &Shared, agent: Result<String, String>, req: Request<Incoming>) -> Result<Resp, Resp> {
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or("").to_owned();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let method = req.method().clone();
    match (&method, segments.as_slice()) {
        (&Method::GET, ["healthz"]) => Ok(health::answer(Some(&shared.runs), Probe::Health).await),
        (&Method::GET, ["readyz"]) => Ok(health::answer(Some(&shared.runs), Probe::Ready).await),
        (&Method::GET, ["metrics"]) => {
            require(shared, &agent, Permission::Metrics)?;
            Ok(health::answer(Some(&shared.runs), Probe::Metrics).await)
        }
        (&Method::POST, ["v1", "reload"]) => {
            let who = require(shared, &agent, Permission::Reload)?;
            let done = shared.runs.runner().reload(&format!("api:{who}")).await.map_err(|e| runner_error(&e))?;
            let status = if done.applied { StatusCode::OK } else { StatusCode::UNPROCESSABLE_ENTITY };
            Ok(json_reply(status, &done))
        }
        (&Method::POST, ["v1", "proposals"]) => {
            // Read the (bounded) body first even when refusing, so the client
            // gets the answer rather than a connection reset mid-upload.
            let bytes = body(req, shared.settings.max_body_bytes, shared.settings.request_timeout).await?;
            let agent = agent.map_err(|e| error(StatusCode::FORBIDDEN, format!("no agent identity: {e}")))?;
            if !grants(shared).agents.contains(&agent) {
                return Err(error(
                    StatusCode::FORBIDDEN,
                    format!("agent `{agent}` may not submit proposals: an operator adds it to server.agents"),
                ));
            }
            const SHAPE: &str =
                "{\"capsule\": \"<base64>\"} or {\"manifest\": \"<base64>\", \"signature\": \"<base64>\"}";
            let sub: SubmissionBody = serde_json::from_slice(&bytes)
                .map_err(|e| error(StatusCode::BAD_REQUEST, format!("the body is not {SHAPE}: {e}")))?;
            let b64 = |field: &str, v: &str| {
                base64::engine::general_purpose::STANDARD
                    .decode(v.as_bytes())
                    .map_err(|e| format!("`{field}` is not base64: {e}"))
            };
            let bad = |m: String| error(StatusCode::BAD_REQUEST, m);
            let capsule = match (&sub.capsule, &sub.manifest, &sub.signature) {
                (Some(c), None, None) => Submission::File(b64("capsule", c).map_err(bad)?),
                (None, Some(m), Some(sig)) => {
                    let (m, sig) = (b64("manifest", m).map_err(bad)?, b64("signature", sig).map_err(bad)?);
                    match shared.runs.by_reference(m, sig) {
                        Ok(Ok(capsule)) => Submission::Assembled(Box::new(capsule)),
                        Ok(Err(ByReference::BadManifest(e))) => {
                            return Err(error(
                                StatusCode::BAD_REQUEST,
                                format!("`manifest` is not a capsule manifest: {e}"),
                            ));
                        }
                        Ok(Err(ByReference::UnknownComponent(d))) => {
                            return Err(error(
                                StatusCode::CONFLICT,
                                format!(
                                    "this runner does not hold component {d}: submit the full capsule once, then by reference"
                                ),
                            ));
                        }
                        Err(e) => return Err(runner_error(&e)),
                    }
                }
                _ => return Err(error(StatusCode::BAD_REQUEST, format!("the body is not {SHAPE}"))),
            };
            // Decoded: the body and its base64 (2.7 times the capsule, a
            // full upload's) are not kept while the run is in progress.
            drop(sub);
            drop(bytes);
            match shared.runs.submit(capsule, agent).await.map_err(not_admitted)? {
                Ok(v) => Ok(json_reply(StatusCode::CREATED, &v)),
                Err(e) => Err(runner_error(&e)),
            }
        }
        (&Method::GET, ["v1", "proposals"]) => {
            let mut q = proposal_query(&query)?;
            let who = identity(&agent)?;
            let g = grants(shared);
            if !g.access.allows(Permission::Proposals, who) {
                if !g.agents.contains(who) {
                    return Err(denied(who, Permission::Proposals));
                }
                q.submitted_by = Some(who.to_owned());
            }
            let (list, next) = shared.runs.list(&q).map_err(|e| runner_error(&e))?;
            Ok(json_reply(StatusCode::OK, &json!({ "proposals": list, "next": next.map(|n| n.to_string()) })))
        }
        (&Method::GET, ["v1", "proposals", id]) => {
            let id = (*id).to_owned();
            may_see(shared, &agent, &id)?;
            match shared.runs.detail(&id).map_err(|e| runner_error(&e))? {
                Some(p) => Ok(json_reply(StatusCode::OK, &serde_json::to_value(p).expect("serialisable"))),
                None => Err(error(StatusCode::NOT_FOUND, format!("no proposal {id} on this runner"))),
            }
        }
        (&Method::GET, ["v1", "proposals", id, "preview"]) => {
            let id = (*id).to_owned();
            may_see(shared, &agent, &id)?;
            match shared.runs.preview(&id).map_err(|e| runner_error(&e))? {
                Some(p) => Ok(json_reply(StatusCode::OK, &serde_json::to_value(p).expect("serialisable"))),
                None => Err(error(
                    StatusCode::NOT_FOUND,
                    format!("no preview for {id}: unknown, or its plan changes nothing"),
                )),
            }
        }
        (&Method::GET, ["v1", "proposals", id, "receipt"]) => {
            let id = (*id).to_owned();
            may_see(shared, &agent, &id)?;
            match shared.runs.receipt(&id).await.map_err(|e| runner_error(&e))? {
                Some(r) => Ok(reply(StatusCode::OK, "text/plain; charset=utf-8", r)),
                None => Err(error(
                    StatusCode::NOT_FOUND,
                    format!("no receipt for {id}: unknown, or no run of it has ended yet"),
                )),
            }
        }
        (&Method::GET, ["v1", "proposals", id, "document"]) => {
            let id = (*id).to_owned();
            may_see(shared, &agent, &id)?;
            match shared.runs.document(&id) {
                Some(doc) => Ok(reply(StatusCode::OK, "application/json", doc)),
                None => Err(error(
                    StatusCode::NOT_FOUND,
                    format!("no proposal document for {id}: unknown, or it never waited for approval"),
                )),
            }
        }
        (&Method::POST, ["v1", "proposals", id, "approvals"]) => {
            let id = (*id).to_owned();
            may_see(shared, &agent, &id)?;
            // An approval file is small: cap it here, before it is read into
            // memory, not at the general body limit (32 MiB by default).
            let limit = shared.settings.max_body_bytes.min(edge_core::approval::MAX_APPROVAL_BYTES);
            let approval = body(req, limit, shared.settings.request_timeout).await?.to_vec();
            match shared.runs.approve(id.clone(), approval).await.map_err(not_admitted)? {
                Ok(ApproveReply::Kept(v)) => Ok(json_reply(StatusCode::ACCEPTED, &v)),
                Ok(ApproveReply::Unknown) => {
                    Err(error(StatusCode::NOT_FOUND, format!("no proposal {id} on this runner")))
                }
                Ok(ApproveReply::Refused(why)) => Err(error(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    format!("the approval was not kept: {why}; sign this proposal's document again"),
                )),
                Ok(ApproveReply::NotWaiting(state)) => Err(error(
                    StatusCode::CONFLICT,
                    format!("proposal {id} is {}, not awaiting approval: nothing to approve", state.name()),
                )),
                Err(e) => Err(runner_error(&e)),
            }
        }
        (&Method::GET, ["v1", "evidence", "checkpoint"]) => {
            require(shared, &agent, Permission::Evidence)?;
            let note = shared.runs.checkpoint().await.map_err(|e| runner_error(&e))?;
            Ok(reply(StatusCode::OK, "text/plain; charset=utf-8", note))
        }
        (&Method::GET, ["v1", "evidence", "export"]) => {
            require(shared, &agent, Permission::Evidence)?;
            let since = query_param(&query, "since");
            // Streamed as it is read from the store: what fails before the
            // first byte (an unknown `since`) is a 400; what fails after it
            // cuts the connection.
            let body = shared.runs.export(since).await.map_err(|e| error(StatusCode::BAD_REQUEST, format!("{e:#}")))?;
            // Old reload refusals in it that quote the config file (see
            // `evidence export`'s note): a count, before the first byte.
            Ok(Response::builder()
                .status(StatusCode::OK)
                .header("content-type", "application/vnd.edge-runner.evidence-bundle")
                .header("cache-control", "no-store")
                .header(QUOTING_CONFIG_HEADER, body.quoting_config)
                .body(body.boxed())
                .expect("static headers are valid"))
        }
        (_, ["healthz" | "readyz" | "metrics"] | ["v1", "proposals" | "reload", ..] | ["v1", "evidence", ..]) => {
            Err(error(StatusCode::METHOD_NOT_ALLOWED, format!("{method} is not allowed on {path}")))
        }
        _ => Err(error(StatusCode::NOT_FOUND, format!("no route {path}; see docs/openapi.yaml"))),
    }
}

/// The client's identity (every connection has a verified certificate; one
/// whose identity could not be read may do nothing but health checks).
fn identity(agent: &Result<String, String>) -> Result<&str, Resp> {
    agent.as_deref().map_err(|e| error(StatusCode::FORBIDDEN, format!("no client identity: {e}")))
}

fn denied(who: &str, p: Permission) -> Resp {
    error(
        StatusCode::FORBIDDEN,
        format!(
            "`{}` may not do this: an operator grants it with server.access.{} (the identity or a role it is in)",
            edge_core::text::line(who),
            p.name()
        ),
    )
}

/// The identity, if it holds `p`.
fn require<'a>(shared: &Shared, agent: &'a Result<String, String>, p: Permission) -> Result<&'a str, Resp> {
    let who = identity(agent)?;
    if grants(shared).access.allows(p, who) { Ok(who) } else { Err(denied(who, p)) }
}

/// Whether the client may see proposal `id`: with `proposals` access, or
/// as the agent that submitted it. Otherwise it is answered as unknown.
fn may_see(shared: &Shared, agent: &Result<String, String>, id: &str) -> Result<(), Resp> {
    let who = identity(agent)?;
    let g = grants(shared);
    if g.access.allows(Permission::Proposals, who) {
        return Ok(());
    }
    match shared.runs.show(id) {
        Some(p) if g.agents.contains(who) && p.submitted_by.as_deref() == Some(who) => Ok(()),
        _ => Err(error(StatusCode::NOT_FOUND, format!("no proposal {} on this runner", edge_core::text::line(id)))),
    }
}

fn runner_error(e: &anyhow::Error) -> Resp {
    tracing::error!(error = %format!("{e:#}"), "runner error");
    error(StatusCode::INTERNAL_SERVER_ERROR, format!("the runner failed: {e:#}; see its log"))
}

/// Proposals per page unless the client asks for fewer (or more, up to
/// [`MAX_PAGE`]).
const PAGE: u32 = 100;
const MAX_PAGE: u32 = 1000;

/// `GET /v1/proposals?state=…&tier=…&since=…&until=…&limit=…&before=…`:
/// newest first; `since`/`until` are RFC 3339 times of submission;
/// `before` is the `next` cursor of the previous page.
fn proposal_query(query: &str) -> Result<Query, Resp> {
    let bad = |what: &str, v: &str, want: &str| {
        error(StatusCode::BAD_REQUEST, format!("{what} `{}` is not {want}", edge_core::text::line(v)))
    };
    let time = |name: &str| -> Result<Option<i64>, Resp> {
        query_param(query, name)
            .map(|v| v.parse::<jiff::Timestamp>().map(|t| t.as_second()).map_err(|_| bad(name, &v, "an RFC 3339 time")))
            .transpose()
    };
    let state = match query_param(query, "state") {
        Some(s) => Some(State::parse(&s).ok_or_else(|| {
            let names: Vec<&str> = State::ALL.iter().map(|s| s.name()).collect();
            error(
                StatusCode::BAD_REQUEST,
                format!("unknown state `{}`; one of {}", edge_core::text::line(&s), names.join(", ")),
            )
        })?),
        None => None,
    };
    let tier = query_param(query, "tier")
        .map(|v| {
            let max = edge_core::policy::MAX_TIER;
            v.parse::<u8>().ok().filter(|t| *t <= max).ok_or_else(|| bad("tier", &v, &format!("a tier 0..{max}")))
        })
        .transpose()?;
    let limit = query_param(query, "limit")
        .map(|v| {
            v.parse::<u32>().ok().filter(|n| (1..=MAX_PAGE).contains(n)).ok_or_else(|| bad("limit", &v, "1..1000"))
        })
        .transpose()?
        .unwrap_or(PAGE);
    let before = query_param(query, "before")
        .map(|v| v.parse::<u64>().map_err(|_| bad("before", &v, "a cursor from `next`")))
        .transpose()?;
    Ok(Query { state, tier, since: time("since")?, until: time("until")?, before, limit, submitted_by: None })
}

/// A query parameter, percent-decoded.
fn query_param(query: &str, name: &str) -> Option<String> {
    form_urlencoded::parse(query.as_bytes()).find(|(k, _)| k == name).map(|(_, v)| v.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_submission_body_is_read_in_place_unless_it_holds_an_escape() {
        let plain = br#"{"capsule": "QUJD+/=="}"#;
        let sub: SubmissionBody = serde_json::from_slice(plain).unwrap();
        assert!(matches!(sub.capsule, Some(Cow::Borrowed("QUJD+/=="))), "copied, not borrowed");
        // Some encoders write `/` as `\/`: decoded, not refused.
        let escaped = br#"{"capsule": "QUJD+\/=="}"#;
        let sub: SubmissionBody = serde_json::from_slice(escaped).unwrap();
        assert_eq!(sub.capsule.as_deref(), Some("QUJD+/=="));
        // Unknown fields are still refused.
        assert!(serde_json::from_slice::<SubmissionBody>(br#"{"capsule": "", "x": 1}"#).is_err());
    }

    /// A request whose body is `frames`, with `content-length` if given.
    fn request<S>(frames: S, announced: Option<usize>) -> Request<http_body_util::StreamBody<S>> {
        let mut r = Request::new(http_body_util::StreamBody::new(frames));
        if let Some(n) = announced {
            r.headers_mut().insert(hyper::header::CONTENT_LENGTH, n.into());
        }
        r
    }

    type Piece = Result<hyper::body::Frame<Bytes>, std::io::Error>;

    /// The body's pieces, as a stream of data frames.
    fn pieces(p: &[&[u8]]) -> futures_util::stream::Iter<std::vec::IntoIter<Piece>> {
        let frames: Vec<Piece> = p.iter().map(|b| Ok(hyper::body::Frame::data(Bytes::copy_from_slice(b)))).collect();
        futures_util::stream::iter(frames)
    }

    async fn read<S>(req: Request<http_body_util::StreamBody<S>>, limit: usize) -> Result<Bytes, StatusCode>
    where
        S: futures_util::Stream<Item = Piece> + Unpin,
    {
        body(req, limit, std::time::Duration::from_millis(200)).await.map_err(|r| r.status())
    }

    #[tokio::test]
    async fn a_body_is_joined_from_its_pieces_within_the_limit_and_refused_past_it() {
        let body: &[&[u8]] = &[b"abc", b"", b"defg", b"h"];
        // Announced or not, the pieces in order.
        assert_eq!(read(request(pieces(body), Some(8)), 8).await.unwrap(), &b"abcdefgh"[..]);
        assert_eq!(read(request(pieces(body), None), 8).await.unwrap(), &b"abcdefgh"[..]);
        // An announcement is not believed: at most RESERVE_AHEAD is reserved
        // for it (reserving this one would abort on capacity overflow).
        assert_eq!(read(request(pieces(body), Some(usize::MAX)), usize::MAX).await.unwrap(), &b"abcdefgh"[..]);
        // Past the limit: announced, or found while reading (no length, or one that lies).
        assert_eq!(read(request(pieces(body), Some(9)), 8).await, Err(StatusCode::PAYLOAD_TOO_LARGE));
        assert_eq!(read(request(pieces(body), None), 7).await, Err(StatusCode::PAYLOAD_TOO_LARGE));
        assert_eq!(read(request(pieces(body), Some(4)), 7).await, Err(StatusCode::PAYLOAD_TOO_LARGE));
    }

    #[tokio::test]
    async fn a_body_past_the_first_reserve_is_read_whole_and_trailers_are_not_body() {
        // Larger than RESERVE_AHEAD, in uneven pieces, announced and not.
        let whole: Vec<u8> = (0..RESERVE_AHEAD * 2 + 12_345).map(|i| (i % 251) as u8).collect();
        let split: Vec<&[u8]> = whole.chunks(16_411).collect();
        for announced in [Some(whole.len()), None] {
            let got = read(request(pieces(&split), announced), 32 << 20).await.unwrap();
            assert!(got == whole, "{} bytes read of {} ({announced:?})", got.len(), whole.len());
        }
        // Trailers after the data are not part of it.
        let mut trailers = hyper::HeaderMap::new();
        trailers.insert("x-digest", "abc".parse().unwrap());
        let frames: Vec<Piece> =
            vec![Ok(hyper::body::Frame::data(Bytes::from_static(b"abc"))), Ok(hyper::body::Frame::trailers(trailers))];
        assert_eq!(read(request(futures_util::stream::iter(frames), None), 8).await.unwrap(), &b"abc"[..]);
    }

    #[tokio::test]
    async fn a_body_that_breaks_or_stalls_is_refused_with_its_own_status() {
        // The connection fails mid-body: 400, not a short body.
        let frames: Vec<Piece> = vec![
            Ok(hyper::body::Frame::data(Bytes::from_static(b"abc"))),
            Err(std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset")),
        ];
        assert_eq!(read(request(futures_util::stream::iter(frames), Some(6)), 8).await, Err(StatusCode::BAD_REQUEST));
        // The rest never comes: 408 once the time is up.
        let stalled = futures_util::StreamExt::chain(pieces(&[b"abc"]), futures_util::stream::pending());
        assert_eq!(read(request(stalled, Some(6)), 8).await, Err(StatusCode::REQUEST_TIMEOUT));
    }
}
