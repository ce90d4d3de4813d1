//! The approval console: approvers review a proposal in the browser and
//! approve or reject it with a passkey.
//!
//! ```text
//!  browser ── HTTPS (TLS 1.3, no client certificate) ── console listener
//!     │  GET  /                      proposals waiting for the signed-in approver
//!     │  GET  /proposals/{id}        everything the approver authorises + the form
//!     │  GET  /enroll                enroll a passkey with a one-time code
//!     │  POST /api/enroll/{begin,finish}    WebAuthn registration (webauthn-rs)
//!     │  POST /api/signin/{begin,finish}    WebAuthn sign-in (webauthn-rs) → session
//!     │  POST /api/proposals/{id}/begin     the approval statement; challenge = its digest
//!     │  POST /api/proposals/{id}/finish    the assertion → an approval file →
//!     ▼                                     the same path as an SSH approval
//!  RunService::approve (verify, keep, count, run)
//! ```
//!
//! Nothing but the sign-in and enrollment pages is readable without a
//! session. Sessions are short-lived (`console.session`, default 15 min),
//! kept in memory only (a restart signs everyone out), carried in a
//! `__Host-` cookie that is `Secure; HttpOnly; SameSite=Strict`. Every POST
//! must come from the console's own origin (the `Origin` header) with a JSON
//! body; once signed in, it must also carry the session's CSRF token. Pages
//! load nothing from elsewhere: the Content-Security-Policy allows only the
//! console's own script and style.
//!
//! The approval statement is built here, held in the session, and signed by
//! the passkey (the WebAuthn challenge is the statement's SHA-256); the
//! assertion is then checked by `edge_core::approval::verify_approval` — the
//! same pure check the runner and `edge-verify` apply — never trusted
//! because this console started the ceremony.

// Handlers answer with a response either way (`Err` is the error page or
// JSON error); it is built once per request, never propagated far.
#![allow(clippy::result_large_err)]

pub mod enroll;
mod pages;
mod session;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use base64::Engine as _;
use bytes::Bytes;
use edge_core::Sha256Digest;
use edge_core::approval::passkey::{PasskeyAssertion, statement_challenge};
use edge_core::approval::{ApprovalFile, Registry, Verdict};
use edge_core::lifecycle::{ProposalView, State};
use edge_evidence::report::BlastPicture;
use hyper::body::Incoming;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use serde_json::json;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use webauthn_rs::prelude::{PublicKeyCredential, RegisterPublicKeyCredential, Url, Webauthn, WebauthnBuilder};

use crate::config::console::ConsoleSettings;
use crate::pipeline::{Proposal, unix_now};
use crate::server::api::{Resp, body, error, json_reply, reply};
use crate::service::{ApproveReply, QueueError, RunService};
use crate::store::fold::Query;
use session::{Ceremony, Session, Sessions};

/// Largest console request body (a WebAuthn credential, a comment).
const MAX_BODY: usize = 64 * 1024;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Browser connections served at once; more wait in the kernel backlog.
const MAX_CONNECTIONS: usize = 256;
/// How long a browser has to complete a WebAuthn ceremony.
const CEREMONY_TTL: Duration = Duration::from_secs(180);
/// Most comment characters kept (the statement carries it).
const MAX_COMMENT: usize = 2000;
const JS: &str = include_str!("static/console.js");
const CSS: &str = include_str!("static/console.css");
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; \
form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The console's state, shared by its connections.
pub struct Console {
    runs: Arc<RunService>,
    origin: String,
    rp_id: String,
    webauthn: Webauthn,
    sessions: Sessions,
    creds: enroll::Credentials,
    /// The blast-radius picture of the graph last drawn (by digest).
    blast: Mutex<Option<(Sha256Digest, Arc<BlastPicture>)>>,
    /// Enrollments change the registry one at a time.
    enrolling: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Console {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Console").field("origin", &self.origin).field("rp_id", &self.rp_id).finish_non_exhaustive()
    }
}

impl Console {
    /// The console for `runs`, reached by browsers at `origin`.
    ///
    /// # Errors
    /// An origin WebAuthn cannot use, or unreadable enrolled credentials.
    pub fn new(runs: Arc<RunService>, settings: &ConsoleSettings, origin: &Url) -> Result<Self> {
        let rp_id = settings.rp_id(origin);
        let webauthn = WebauthnBuilder::new(&rp_id, origin)
            .and_then(|b| b.rp_name("Edge Runner").timeout(CEREMONY_TTL).build())
            .map_err(|e| anyhow::anyhow!("console: rp_id `{rp_id}` cannot serve origin {origin}: {e}"))?;
        let creds = enroll::Credentials::open(&runs.runner().config.state_dir)?;
        Ok(Self {
            origin: origin.as_str().trim_end_matches('/').to_owned(),
            rp_id,
            webauthn,
            sessions: Sessions::new(settings.session),
            creds,
            blast: Mutex::new(None),
            enrolling: tokio::sync::Mutex::new(()),
            runs,
        })
    }

    pub fn origin(&self) -> &str {
        &self.origin
    }

    fn registry(&self) -> Option<Arc<Registry>> {
        self.runs.runner().approvers()
    }
}

/// Serve the console on `listener` until `shutdown`.
pub async fn serve(
    console: Arc<Console>,
    listener: TcpListener,
    acceptor: TlsAcceptor,
    shutdown: impl Future<Output = ()>,
) {
    let mut connections =
        crate::server::accept::accept_loop("console", &listener, MAX_CONNECTIONS, shutdown, |tcp, peer| {
            let (acceptor, console) = (acceptor.clone(), console.clone());
            async move {
                let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(s)) => s,
                    _ => {
                        tracing::debug!(%peer, "console: TLS handshake failed");
                        return;
                    }
                };
                let service = hyper::service::service_fn(move |req| handle(console.clone(), peer, req));
                let conn = crate::server::http1(REQUEST_TIMEOUT).serve_connection(TokioIo::new(tls), service);
                let _ = conn.await;
            }
        })
        .await;
    connections.abort_all();
}

async fn handle(console: Arc<Console>, peer: SocketAddr, req: Request<Incoming>) -> Result<Resp, Infallible> {
    let (method, path, started) = (req.method().clone(), req.uri().path().to_owned(), std::time::Instant::now());
    let mut resp = match route(&console, req).await {
        Ok(r) | Err(r) => r,
    };
    crate::logging::access("console", peer, None, &method, &path, resp.status(), started);
    harden(&mut resp);
    Ok(resp)
}

/// Security headers on every answer.
fn harden(resp: &mut Resp) {
    let h = resp.headers_mut();
    for (k, v) in [
        ("content-security-policy", CSP),
        ("x-content-type-options", "nosniff"),
        ("x-frame-options", "DENY"),
        ("referrer-policy", "no-referrer"),
        ("strict-transport-security", "max-age=31536000"),
        ("cross-origin-opener-policy", "same-origin"),
        ("cross-origin-resource-policy", "same-origin"),
        ("permissions-policy", "publickey-credentials-get=(self), publickey-credentials-create=(self)"),
    ] {
        h.insert(k, hyper::header::HeaderValue::from_static(v));
    }
    h.entry("cache-control").or_insert(hyper::header::HeaderValue::from_static("no-store"));
}

fn html(status: StatusCode, page: String) -> Resp {
    reply(status, "text/html; charset=utf-8", page)
}

fn redirect(to: &str) -> Resp {
    let mut r = reply(StatusCode::SEE_OTHER, "text/plain", Bytes::new());
    r.headers_mut().insert("location", hyper::header::HeaderValue::from_str(to).expect("a path"));
    r
}

async fn route(c: &Console, req: Request<Incoming>) -> Result<Resp, Resp> {
    let path = req.uri().path().to_owned();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let method = req.method().clone();
    let session = c.sessions.find(req.headers());
    match (&method, segments.as_slice()) {
        (&Method::GET, ["static", "console.js"]) => {
            Ok(cached(reply(StatusCode::OK, "text/javascript; charset=utf-8", JS)))
        }
        (&Method::GET, ["static", "console.css"]) => Ok(cached(reply(StatusCode::OK, "text/css; charset=utf-8", CSS))),
        (&Method::GET, ["enroll"]) => Ok(html(StatusCode::OK, pages::enroll())),
        (&Method::GET, [""]) => match session {
            Ok(s) => Ok(html(StatusCode::OK, c.list_page(&s))),
            Err(note) => Ok(html(StatusCode::OK, pages::signin(note))),
        },
        (&Method::GET, ["proposals", id]) => match session {
            Ok(s) => c.proposal_page(&s, id),
            Err(_) => Ok(redirect("/")),
        },
        (&Method::POST, ["api", ..]) => {
            same_origin(c, &req)?;
            let csrf = req.headers().get("x-csrf-token").and_then(|v| v.to_str().ok()).map(str::to_owned);
            let bytes = body(req, MAX_BODY, REQUEST_TIMEOUT).await?;
            match segments.as_slice() {
                ["api", "enroll", "begin"] => c.enroll_begin(&parse(&bytes)?),
                ["api", "enroll", "finish"] => c.enroll_finish(parse(&bytes)?).await,
                ["api", "signin", "begin"] => c.signin_begin(&parse(&bytes)?),
                ["api", "signin", "finish"] => c.signin_finish(&parse(&bytes)?),
                rest => {
                    // Everything else needs a session and its CSRF token.
                    let s = session
                        .map_err(|n| error(StatusCode::UNAUTHORIZED, n.unwrap_or("sign in first").to_owned()))?;
                    if csrf.as_deref() != Some(s.csrf.as_str()) {
                        return Err(error(StatusCode::FORBIDDEN, "missing or wrong CSRF token: reload the page"));
                    }
                    match rest {
                        ["api", "signout"] => {
                            c.sessions.end(&s);
                            let mut r = json_reply(StatusCode::OK, &json!({ "signed_out": true }));
                            r.headers_mut().insert("set-cookie", session::clear_cookie());
                            Ok(r)
                        }
                        ["api", "proposals", id, "begin"] => c.decide_begin(&s, id, &parse(&bytes)?),
                        ["api", "proposals", id, "finish"] => c.decide_finish(&s, id, &parse(&bytes)?).await,
                        _ => Err(error(StatusCode::NOT_FOUND, format!("no route {}", edge_core::text::line(&path)))),
                    }
                }
            }
        }
        (&Method::GET, _) => {
            Err(html(StatusCode::NOT_FOUND, pages::message("Not found", "There is no such page on this console.", "/")))
        }
        _ => Err(error(StatusCode::METHOD_NOT_ALLOWED, format!("{method} is not allowed here"))),
    }
}

fn cached(mut r: Resp) -> Resp {
    r.headers_mut().insert("cache-control", hyper::header::HeaderValue::from_static("private, max-age=300"));
    r
}

/// A POST must come from the console's own pages: its `Origin` is ours and
/// its body JSON (a cross-site form cannot send either).
fn same_origin(c: &Console, req: &Request<Incoming>) -> Result<(), Resp> {
    let origin = req.headers().get("origin").and_then(|v| v.to_str().ok());
    if origin != Some(c.origin.as_str()) {
        return Err(error(StatusCode::FORBIDDEN, "requests must come from the console's own pages"));
    }
    let json = req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.split(';').next().is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json")));
    if !json {
        return Err(error(StatusCode::UNSUPPORTED_MEDIA_TYPE, "send JSON (application/json)"));
    }
    Ok(())
}

fn parse<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, Resp> {
    serde_json::from_slice(bytes).map_err(|e| error(StatusCode::BAD_REQUEST, format!("malformed request: {e}")))
}

fn b64u(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EnrollBegin {
    code: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Finish<T> {
    ceremony: String,
    credential: T,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SigninBegin {
    principal: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DecideBegin {
    decision: Verdict,
    #[serde(default)]
    comment: String,
}

/// The browser's `PublicKeyCredential` from `navigator.credentials.get`.
#[derive(Deserialize)]
struct Assertion {
    #[serde(rename = "rawId")]
    raw_id: String,
    response: AssertionResponse,
    #[serde(rename = "type")]
    kind: String,
}

#[derive(Deserialize)]
struct AssertionResponse {
    #[serde(rename = "authenticatorData")]
    authenticator_data: String,
    #[serde(rename = "clientDataJSON")]
    client_data_json: String,
    signature: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DecideFinish {
    credential: Assertion,
}

impl Console {
    fn list_page(&self, s: &Session) -> String {
        let (mut mine, mut others) = (Vec::new(), Vec::new());
        let registry = self.registry();
        let waiting = Query { state: Some(State::AwaitingApproval), limit: 1000, ..Query::default() };
        let waiting = self.runs.list(&waiting).map(|(page, _)| page).unwrap_or_else(|e| {
            tracing::error!(error = %format!("{e:#}"), "cannot list the proposals waiting");
            Vec::new()
        });
        for v in waiting {
            if self.may_decide(registry.as_deref(), &s.principal, &v).is_ok() {
                mine.push(v);
            } else {
                others.push(v);
            }
        }
        let runner = self.runs.runner().config.name.clone();
        pages::list(&pages::Viewer { principal: &s.principal, csrf: &s.csrf, runner: &runner }, &mine, &others)
    }

    /// Whether `principal` can count toward `v`'s quorum (roles, proposer,
    /// already decided), and if not why — what the page says instead of
    /// the form. The runner checks all of it again when the approval arrives.
    fn may_decide(&self, registry: Option<&Registry>, principal: &str, v: &ProposalView) -> Result<(), String> {
        if v.state != State::AwaitingApproval {
            return Err(format!("This proposal is {}: there is nothing to decide.", v.state.name()));
        }
        let registry = registry.ok_or("No approver registry is configured on this runner.")?;
        let roles =
            v.decision.as_ref().and_then(|d| d.requirement.as_ref()).map(|r| r.roles.clone()).unwrap_or_default();
        let mine = registry.roles_of(principal);
        if !roles.is_empty() && !roles.iter().any(|r| mine.contains(r)) {
            return Err(format!(
                "Your roles ({}) cannot approve this tier; it needs one of: {}.",
                if mine.is_empty() { "none".to_owned() } else { mine.join(", ") },
                roles.join(", ")
            ));
        }
        if let Some(agent) = &v.submitted_by
            && registry.owners.get(agent).is_some_and(|o| o.iter().any(|p| p == principal))
        {
            return Err("You own the agent that proposed this: a proposer cannot approve their own change.".into());
        }
        if v.approvals.iter().any(|a| a.principal.as_deref() == Some(principal)) {
            return Err("You have already decided this proposal.".into());
        }
        Ok(())
    }

    fn proposal_page(&self, s: &Session, id: &str) -> Result<Resp, Resp> {
        self.render_proposal(&s.principal, &s.csrf, id).map(|page| html(StatusCode::OK, page))
    }

    /// The proposal page as `principal` sees it: what `GET /proposals/{id}`
    /// does after the session check (public for the page benchmark).
    ///
    /// # Errors
    /// An unknown proposal or an unreadable store, as the page to show.
    #[doc(hidden)]
    pub fn render_proposal(&self, principal: &str, csrf: &str, id: &str) -> Result<String, Resp> {
        let detail = match self.runs.detail(id) {
            Ok(Some(d)) => d,
            Ok(None) => {
                return Err(html(
                    StatusCode::NOT_FOUND,
                    pages::message("No such proposal", &format!("This runner has no proposal {id}."), "/"),
                ));
            }
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "console: proposal detail");
                return Err(html(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    pages::message("The runner could not read this proposal", "See the runner's log.", "/"),
                ));
            }
        };
        let svg = detail
            .view
            .decision
            .as_ref()
            .and_then(|d| Some((d.graph?, d.derivation.as_ref()?)))
            .and_then(|(graph, derivation)| self.blast_picture(graph).map(|p| p.svg(derivation)));
        let registry = self.registry();
        // Approvals kept for a waiting proposal are not in the log yet: the
        // detail's quorum view lists them.
        let kept = detail.quorum.as_ref().is_some_and(|q| q.approvals.iter().any(|a| a.principal == principal));
        let act = match self.may_decide(registry.as_deref(), principal, &detail.view) {
            Ok(()) if kept => pages::Act::Not("You have already decided this proposal.".into()),
            Ok(()) => pages::Act::Decide,
            Err(why) => pages::Act::Not(why),
        };
        let runner = self.runs.runner().config.name.clone();
        let viewer = pages::Viewer { principal, csrf, runner: &runner };
        let now = unix_now().unwrap_or(0);
        Ok(pages::proposal(&viewer, &detail, svg.as_deref(), &act, now))
    }

    /// The compiled graph a decision was made over, from the evidence store
    /// (cached: one graph is in force at a time).
    fn blast_picture(&self, graph: Sha256Digest) -> Option<Arc<BlastPicture>> {
        let mut cache = self.blast.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((d, p)) = cache.as_ref()
            && *d == graph
        {
            return Some(p.clone());
        }
        let bytes = self.runs.runner().log.read_artifact(&graph).ok().flatten()?;
        let g = edge_core::graph::Graph::from_toml(std::str::from_utf8(&bytes).ok()?).ok()?;
        let p = Arc::new(BlastPicture::new(g));
        *cache = Some((graph, p.clone()));
        Some(p)
    }

    fn enroll_begin(&self, req: &EnrollBegin) -> Result<Resp, Resp> {
        let invite = self.creds.invitation(&req.code).map_err(|e| error(StatusCode::FORBIDDEN, e))?;
        let existing: Vec<_> = self.creds.of(&invite.principal).iter().map(|p| p.cred_id().clone()).collect();
        let user = webauthn_rs::prelude::Uuid::new_v4();
        let (options, state) = self
            .webauthn
            .start_passkey_registration(user, &invite.principal, &invite.principal, Some(existing))
            .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, format!("cannot start enrollment: {e}")))?;
        let ceremony = self
            .sessions
            .start(Ceremony::Enroll { code: req.code.clone(), principal: invite.principal, state }, CEREMONY_TTL)
            .map_err(|e| error(StatusCode::TOO_MANY_REQUESTS, e))?;
        Ok(json_reply(StatusCode::OK, &json!({ "ceremony": ceremony, "options": options })))
    }

    async fn enroll_finish(&self, req: Finish<RegisterPublicKeyCredential>) -> Result<Resp, Resp> {
        let Some(Ceremony::Enroll { code, principal, state }) = self.sessions.take(&req.ceremony) else {
            return Err(error(
                StatusCode::BAD_REQUEST,
                "this enrollment timed out or was finished: reload and start again",
            ));
        };
        let passkey = self.webauthn.finish_passkey_registration(&req.credential, &state).map_err(|e| {
            error(StatusCode::BAD_REQUEST, format!("the passkey could not be registered: {e}; try again"))
        })?;
        let _one = self.enrolling.lock().await;
        // The code is spent only now, by the registration that used it.
        self.creds.redeem(&code, &principal).map_err(|e| error(StatusCode::FORBIDDEN, e))?;
        let entry = enroll::entry(&principal, &passkey, &self.rp_id, &self.origin)
            .map_err(|e| error(StatusCode::BAD_REQUEST, format!("{e:#}")))?;
        let key =
            self.runs.runner().enroll_passkey(entry).await.map_err(|e| {
                error(StatusCode::INTERNAL_SERVER_ERROR, format!("the registry was not changed: {e:#}"))
            })?;
        self.creds.add(&principal, passkey).map_err(|e| {
            error(StatusCode::INTERNAL_SERVER_ERROR, format!("registered, but the sign-in record failed: {e:#}"))
        })?;
        tracing::info!(principal = %edge_core::text::line(&principal), %key, "passkey enrolled");
        Ok(json_reply(StatusCode::OK, &json!({ "principal": principal, "key": key })))
    }

    fn signin_begin(&self, req: &SigninBegin) -> Result<Resp, Resp> {
        let principal = req.principal.trim().to_owned();
        let refuse = || {
            error(
                StatusCode::FORBIDDEN,
                "no usable passkey for this name (not enrolled, revoked, or not an approver): ask your operator",
            )
        };
        let registry = self.registry().ok_or_else(refuse)?;
        let usable: Vec<_> = self
            .creds
            .of(&principal)
            .into_iter()
            .filter(|p| enroll::registered(&registry, &principal, p.cred_id()).is_some())
            .collect();
        if usable.is_empty() {
            return Err(refuse());
        }
        let (options, state) = self
            .webauthn
            .start_passkey_authentication(&usable)
            .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, format!("cannot start sign-in: {e}")))?;
        let ceremony = self
            .sessions
            .start(Ceremony::SignIn { principal, state }, CEREMONY_TTL)
            .map_err(|e| error(StatusCode::TOO_MANY_REQUESTS, e))?;
        Ok(json_reply(StatusCode::OK, &json!({ "ceremony": ceremony, "options": options })))
    }

    fn signin_finish(&self, req: &Finish<PublicKeyCredential>) -> Result<Resp, Resp> {
        let Some(Ceremony::SignIn { principal, state }) = self.sessions.take(&req.ceremony) else {
            return Err(error(StatusCode::BAD_REQUEST, "this sign-in timed out or was finished: start again"));
        };
        let result = self
            .webauthn
            .finish_passkey_authentication(&req.credential, &state)
            .map_err(|e| error(StatusCode::FORBIDDEN, format!("the passkey did not sign you in: {e}")))?;
        if !result.user_verified() {
            return Err(error(StatusCode::FORBIDDEN, "user verification (PIN or biometric) is required"));
        }
        // Revoked or removed from the registry since the ceremony began?
        let registry = self.registry().ok_or_else(|| error(StatusCode::FORBIDDEN, "no approver registry"))?;
        if enroll::registered(&registry, &principal, result.cred_id()).is_none() {
            return Err(error(StatusCode::FORBIDDEN, "this passkey is no longer registered for you"));
        }
        self.creds.used(&principal, &result).map_err(|e| error(StatusCode::FORBIDDEN, format!("{e:#}")))?;
        let (cookie, _) = self.sessions.open(&principal).map_err(|e| error(StatusCode::TOO_MANY_REQUESTS, e))?;
        let mut r = json_reply(StatusCode::OK, &json!({ "principal": principal }));
        r.headers_mut().insert("set-cookie", cookie);
        Ok(r)
    }

    fn decide_begin(&self, s: &Session, id: &str, req: &DecideBegin) -> Result<Resp, Resp> {
        let registry = self.registry();
        let view = self.runs.show(id).ok_or_else(|| error(StatusCode::NOT_FOUND, format!("no proposal {id}")))?;
        self.may_decide(registry.as_deref(), &s.principal, &view).map_err(|why| error(StatusCode::CONFLICT, why))?;
        let doc = self.runs.document(id).ok_or_else(|| error(StatusCode::NOT_FOUND, "no proposal document"))?;
        let p: Proposal = serde_json::from_slice(&doc).map_err(|e| {
            error(StatusCode::INTERNAL_SERVER_ERROR, format!("the proposal document is unreadable: {e}"))
        })?;
        p.check().map_err(|e| error(StatusCode::CONFLICT, format!("the proposal document is inconsistent: {e:#}")))?;
        let now = unix_now().map_err(|e| error(StatusCode::SERVICE_UNAVAILABLE, format!("{e:#}")))?;
        let expires = p.expires_at();
        if now >= expires {
            return Err(error(StatusCode::CONFLICT, "the proposal expired: the agent must submit again"));
        }
        let comment: String = req.comment.trim().chars().take(MAX_COMMENT).collect();
        let comment = (!comment.is_empty()).then_some(comment);
        let statement = p
            .statement(&s.principal, req.decision, comment, now, expires - now)
            .map_err(|e| error(StatusCode::CONFLICT, format!("{e:#}")))?;
        let challenge = statement_challenge(&statement);
        let allow: Vec<_> = registry
            .as_deref()
            .map(|r| enroll::credentials_of(r, &s.principal))
            .unwrap_or_default()
            .into_iter()
            .map(|id| json!({ "type": "public-key", "id": id }))
            .collect();
        if allow.is_empty() {
            return Err(error(
                StatusCode::FORBIDDEN,
                "you have no registered passkey: ask your operator to enroll one",
            ));
        }
        self.sessions.hold(s, id, statement);
        let options = json!({ "publicKey": {
            "challenge": b64u(&challenge),
            "rpId": self.rp_id,
            "allowCredentials": allow,
            "userVerification": "required",
            "timeout": CEREMONY_TTL.as_millis() as u64,
        }});
        Ok(json_reply(StatusCode::OK, &json!({ "options": options, "digest": hex::encode(challenge) })))
    }

    async fn decide_finish(&self, s: &Session, id: &str, req: &DecideFinish) -> Result<Resp, Resp> {
        let statement = self.sessions.release(s, id).ok_or_else(|| {
            error(StatusCode::BAD_REQUEST, "no decision is being signed for this proposal: start again")
        })?;
        let a = &req.credential;
        if a.kind != "public-key" {
            return Err(error(StatusCode::BAD_REQUEST, "not a public-key credential"));
        }
        let verdict = statement.decision;
        let file = ApprovalFile {
            statement,
            signature: None,
            passkey: Some(PasskeyAssertion {
                credential_id: a.raw_id.clone(),
                authenticator_data: a.response.authenticator_data.clone(),
                client_data_json: a.response.client_data_json.clone(),
                signature: a.response.signature.clone(),
            }),
        };
        let bytes = serde_json::to_vec_pretty(&file).expect("approval files serialise");
        match self.runs.approve(id.to_owned(), bytes).await {
            Ok(Ok(ApproveReply::Kept(k))) => {
                let message = match &k.run {
                    Some(run) => format!(
                        "Your {} was recorded; the quorum is settled and the proposal ran: {}.",
                        crate::pipeline::verdict_name(verdict),
                        run.state
                    ),
                    None => format!(
                        "Your {} was recorded and counts; more approvals are needed.",
                        crate::pipeline::verdict_name(verdict)
                    ),
                };
                Ok(json_reply(StatusCode::OK, &json!({ "message": message, "kept": k })))
            }
            Ok(Ok(ApproveReply::Unknown)) => Err(error(StatusCode::NOT_FOUND, format!("no proposal {id}"))),
            Ok(Ok(ApproveReply::Refused(why))) => {
                Err(error(StatusCode::UNPROCESSABLE_ENTITY, format!("refused: {why}")))
            }
            Ok(Ok(ApproveReply::NotWaiting(state))) => Err(error(
                StatusCode::CONFLICT,
                format!("proposal {id} is {}, not awaiting approval: nothing to approve", state.name()),
            )),
            Ok(Err(e)) => {
                tracing::error!(error = %format!("{e:#}"), proposal = %edge_core::text::line(id), "cannot keep an approval");
                Err(error(StatusCode::INTERNAL_SERVER_ERROR, "the runner failed to keep the approval; see its log"))
            }
            Err(QueueError::Full) => Err(error(StatusCode::TOO_MANY_REQUESTS, "the runner is busy: try again")),
            Err(QueueError::Stopped) => Err(error(StatusCode::SERVICE_UNAVAILABLE, "the runner is shutting down")),
        }
    }
}

/// Bind the console's listener and build it (`serve` runs it).
///
/// # Errors
/// The address cannot be bound, or the TLS material or origin is unusable.
pub async fn start(
    runs: Arc<RunService>,
    settings: &ConsoleSettings,
    listener: Option<TcpListener>,
) -> Result<(Arc<Console>, TcpListener, TlsAcceptor)> {
    let listener = match listener {
        Some(l) => l,
        None => TcpListener::bind(settings.listen)
            .await
            .with_context(|| format!("console: cannot listen on {}", settings.listen))?,
    };
    let port = listener.local_addr()?.port();
    let origin = settings.origin(port)?;
    let tls = crate::server::tls::server_config_no_client_auth(&settings.cert, &settings.key)?;
    let console = Arc::new(Console::new(runs, settings, &origin)?);
    Ok((console, listener, TlsAcceptor::from(tls)))
}
