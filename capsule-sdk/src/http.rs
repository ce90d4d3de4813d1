//! Calls to granted endpoints: a small client over standard
//! `wasi:http/outgoing-handler`, and planning of calls.
//!
//! An endpoint is named by its logical name (the operator's config says
//! where it is, how it is trusted and which credential the runner attaches:
//! the capsule never sees any of it). What may be sent depends on the phase:
//!
//! * `plan` — reads (GET, HEAD, and what the operator lists as reads for
//!   the endpoint); propose each call `apply` will make with
//!   [`crate::PlanBuilder::call`], with the request that undoes it;
//! * `apply` — exactly the planned calls, in order, each once:
//!   [`apply_planned`] sends them;
//! * `verify` — reads.
//!
//! Anything else is refused before it leaves, and the run with it.
//!
//! ```no_run
//! use capsule_sdk::http::{self, Request};
//! # fn plan() -> Result<(), String> {
//! let flags = http::send(&Request::get("flags", "/v1/flags/checkout"))?;
//! let mut plan = capsule_sdk::PlanBuilder::new("turn the checkout flag off");
//! if flags.body != b"off" {
//!     plan.call(
//!         Request::put("flags", "/v1/flags/checkout", "text/plain", b"off"),
//!         "the flag breaks checkout",
//!         Some(Request::put("flags", "/v1/flags/checkout", "text/plain", &flags.body)),
//!     );
//! }
//! # Ok(()) }
//! ```

use crate::bindings::edge_runner::capsule::calls as host_calls;
use crate::bindings::wasi::http::outgoing_handler;
use crate::bindings::wasi::http::types::{Fields, Method, OutgoingBody, OutgoingRequest, Scheme};

/// One request to an endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The endpoint's logical name (as in the manifest).
    pub endpoint: String,
    /// `GET`, `HEAD`, `POST`, `PUT`, `PATCH` or `DELETE`.
    pub method: String,
    /// Path and query below the endpoint's base path, starting with `/`.
    pub path: String,
    pub content_type: Option<String>,
    pub body: Vec<u8>,
}

impl Request {
    /// A request with no body.
    pub fn new(method: &str, endpoint: &str, path: &str) -> Self {
        Self {
            endpoint: endpoint.into(),
            method: method.into(),
            path: path.into(),
            content_type: None,
            body: Vec::new(),
        }
    }

    pub fn get(endpoint: &str, path: &str) -> Self {
        Self::new("GET", endpoint, path)
    }

    /// A request with a body.
    pub fn with_body(method: &str, endpoint: &str, path: &str, content_type: &str, body: &[u8]) -> Self {
        Self { content_type: Some(content_type.into()), body: body.to_vec(), ..Self::new(method, endpoint, path) }
    }

    pub fn post(endpoint: &str, path: &str, content_type: &str, body: &[u8]) -> Self {
        Self::with_body("POST", endpoint, path, content_type, body)
    }

    pub fn put(endpoint: &str, path: &str, content_type: &str, body: &[u8]) -> Self {
        Self::with_body("PUT", endpoint, path, content_type, body)
    }

    pub(crate) fn to_host(&self) -> host_calls::Request {
        host_calls::Request {
            endpoint: self.endpoint.clone(),
            method: self.method.clone(),
            path: self.path.clone(),
            content_type: self.content_type.clone(),
            body: self.body.clone(),
        }
    }

    fn from_host(r: host_calls::Request) -> Self {
        Self { endpoint: r.endpoint, method: r.method, path: r.path, content_type: r.content_type, body: r.body }
    }
}

/// What came back.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Response {
    /// Whether the status is 2xx.
    pub fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// A call of the plan being applied or verified.
#[derive(Debug, Clone)]
pub struct PlannedCall {
    pub request: Request,
    pub why: String,
    pub compensation: Option<Request>,
}

/// The calls of the plan, in order (in `apply` and `verify`).
pub fn planned() -> Vec<PlannedCall> {
    host_calls::planned()
        .into_iter()
        .map(|c| PlannedCall {
            request: Request::from_host(c.request),
            why: c.why,
            compensation: c.compensation.map(Request::from_host),
        })
        .collect()
}

/// Send every planned call in order (the usual body of `apply`); stops at
/// the first that fails or answers other than 2xx.
///
/// # Errors
/// Which call failed, and how.
pub fn apply_planned() -> Result<Vec<Response>, String> {
    let mut out = Vec::new();
    for c in planned() {
        let r = send(&c.request)?;
        if !r.ok() {
            return Err(format!(
                "{} {}{} answered {}: {}",
                c.request.method,
                c.request.endpoint,
                c.request.path,
                r.status,
                String::from_utf8_lossy(&r.body).chars().take(200).collect::<String>()
            ));
        }
        out.push(r);
    }
    Ok(out)
}

fn method(m: &str) -> Method {
    match m {
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        "POST" => Method::Post,
        "PUT" => Method::Put,
        "PATCH" => Method::Patch,
        "DELETE" => Method::Delete,
        other => Method::Other(other.to_owned()),
    }
}

/// Send one request and read the whole response.
///
/// # Errors
/// The request could not be built or was refused (the runner refuses what
/// the phase does not allow), or the transport failed.
pub fn send(r: &Request) -> Result<Response, String> {
    let what = format!("{} {}{}", r.method, r.endpoint, r.path);
    let headers = Fields::new();
    if let Some(ct) = &r.content_type {
        headers.set("content-type", &[ct.as_bytes().to_vec()]).map_err(|e| format!("{what}: content-type: {e:?}"))?;
    }
    let req = OutgoingRequest::new(headers);
    req.set_method(&method(&r.method)).map_err(|()| format!("{what}: bad method"))?;
    req.set_scheme(Some(&Scheme::Http)).map_err(|()| format!("{what}: bad scheme"))?;
    req.set_authority(Some(&r.endpoint)).map_err(|()| format!("{what}: bad endpoint name"))?;
    req.set_path_with_query(Some(&r.path)).map_err(|()| format!("{what}: bad path"))?;
    let body = req.body().map_err(|()| format!("{what}: no body"))?;
    let pending = outgoing_handler::handle(req, None).map_err(|e| format!("{what}: {e:?}"))?;
    {
        let out = body.write().map_err(|()| format!("{what}: no body stream"))?;
        for chunk in r.body.chunks(4096) {
            out.blocking_write_and_flush(chunk).map_err(|e| format!("{what}: writing the body: {e:?}"))?;
        }
    }
    OutgoingBody::finish(body, None).map_err(|e| format!("{what}: {e:?}"))?;
    pending.subscribe().block();
    let resp = pending
        .get()
        .ok_or_else(|| format!("{what}: no response"))?
        .map_err(|()| format!("{what}: response taken twice"))?
        .map_err(|e| format!("{what}: {e:?}"))?;
    let status = resp.status();
    let incoming = resp.consume().map_err(|()| format!("{what}: no response body"))?;
    let mut bytes = Vec::new();
    {
        let stream = incoming.stream().map_err(|()| format!("{what}: no response stream"))?;
        loop {
            match stream.blocking_read(64 << 10) {
                Ok(chunk) => bytes.extend_from_slice(&chunk),
                Err(crate::bindings::wasi::io::streams::StreamError::Closed) => break,
                Err(e) => return Err(format!("{what}: reading the response: {e:?}")),
            }
        }
    }
    Ok(Response { status, body: bytes })
}

/// Propose a call (during `plan`); see [`crate::PlanBuilder::call`].
pub(crate) fn propose(request: &Request, why: &str, compensation: Option<&Request>) {
    host_calls::propose(&host_calls::PlannedCall {
        request: request.to_host(),
        why: why.into(),
        compensation: compensation.map(Request::to_host),
    });
}
