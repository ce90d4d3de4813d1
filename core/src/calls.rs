//! Calls to granted endpoints, planned like file changes.
//!
//! A capsule proposes, during `plan`, each HTTP request its `apply` will
//! make ([`Call`]): endpoint, method, path and query, body digest, why, and
//! for every call that changes something the request that undoes it (its
//! compensation, sent by the runner if `verify` fails). The calls are part
//! of the plan and so of the plan digest approvers sign.
//!
//! Checklist, in the order the runner applies it:
//! 1. [`check_calls`] (from [`crate::plan::Plan::validate`]): every call is
//!    well-formed, names a declared endpoint, and every non-read call has a
//!    compensation;
//! 2. [`CallCursor::admit`], for each request `apply` sends, *before it
//!    leaves*: it is the next planned call, exactly (endpoint, method, path,
//!    content type, body digest); each planned call is made at most once;
//! 3. [`CallCursor::finish`]: after `apply`, every planned call was made.
//!
//! The offline verifier runs the same cursor over the recorded intents.

use serde::{Deserialize, Serialize};

use crate::digest::Sha256Digest;

/// Most calls one plan may propose.
pub const MAX_CALLS: usize = 100;
/// Most bytes of one planned request body (and of a compensation's).
pub const MAX_CALL_BODY: usize = 1 << 20;
/// Longest path-and-query accepted.
pub const MAX_CALL_PATH: usize = 2048;
/// Methods a call may use.
pub const METHODS: [&str; 6] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"];
/// Methods that only read, for every endpoint (an operator may list more
/// reads per endpoint: `read_requests`).
pub const READ_METHODS: [&str; 2] = ["GET", "HEAD"];

/// One HTTP request to an endpoint, as planned and as checked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    /// Logical name of the endpoint (as in the manifest and the runner's config).
    pub endpoint: String,
    /// One of [`METHODS`].
    pub method: String,
    /// Path and query below the endpoint's base path, starting with `/`.
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    /// SHA-256 of the exact body; absent when there is none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<Sha256Digest>,
}

impl Request {
    /// Whether the method only reads (GET, HEAD): such a request needs no
    /// compensation. (An endpoint's configured reads are the runner's
    /// business: a plan cannot claim them.)
    pub fn is_read_method(&self) -> bool {
        READ_METHODS.contains(&self.method.as_str())
    }

    /// `METHOD endpoint/path` for people (neutralised).
    pub fn line(&self) -> String {
        crate::text::line(&format!("{} {}{}", self.method, self.endpoint, self.path)).into_owned()
    }
}

/// A call `apply` will make.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Call {
    pub request: Request,
    pub why: String,
    /// The request that undoes this one (required unless it is a read).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compensation: Option<Request>,
}

/// Why a planned or attempted call was refused. Each has a stable reason code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CallError {
    #[error("plan call #{index}: {reason}")]
    Invalid { index: usize, reason: String },
    #[error("plan call #{index} names endpoint `{endpoint}`, which the manifest does not request")]
    UnknownEndpoint { index: usize, endpoint: String },
    #[error("plan call #{index} ({method}) changes something but has no compensation (the request that undoes it)")]
    NoCompensation { index: usize, method: String },
    #[error("apply sent {actual}, which is not in the plan (it has {planned} call(s), {done} made)")]
    OutsidePlan { actual: String, planned: usize, done: usize },
    #[error("apply sent {actual} but the next planned call is {expected} ({what} differs)")]
    Mismatch { actual: String, expected: String, what: &'static str },
    #[error("apply made {done} of {planned} planned call(s); the first not made is {next}")]
    Incomplete { done: usize, planned: usize, next: String },
}

impl CallError {
    /// The stable reason code recorded in evidence.
    pub fn reason_code(&self) -> &'static str {
        match self {
            CallError::Invalid { .. } => "plan.call_invalid",
            CallError::UnknownEndpoint { .. } => "plan.unknown_endpoint",
            CallError::NoCompensation { .. } => "plan.no_compensation",
            CallError::OutsidePlan { .. } | CallError::Mismatch { .. } => "call.outside_plan",
            CallError::Incomplete { .. } => "call.incomplete",
        }
    }
}

/// Check a plan's calls against the endpoints its manifest declares.
///
/// # Errors
/// The first malformed call, as a [`CallError`].
pub fn check_calls(calls: &[Call], endpoints: &[String]) -> Result<(), CallError> {
    if calls.len() > MAX_CALLS {
        return Err(CallError::Invalid {
            index: MAX_CALLS,
            reason: format!("{} calls; the limit is {MAX_CALLS}", calls.len()),
        });
    }
    for (index, c) in calls.iter().enumerate() {
        check_request(index, &c.request, endpoints)?;
        if c.why.trim().is_empty() || c.why.len() > crate::plan::MAX_TEXT {
            return Err(CallError::Invalid { index, reason: "`why` must be one non-empty sentence".into() });
        }
        match &c.compensation {
            Some(comp) => check_request(index, comp, endpoints)?,
            None if !c.request.is_read_method() => {
                return Err(CallError::NoCompensation { index, method: c.request.method.clone() });
            }
            None => {}
        }
    }
    Ok(())
}

fn check_request(index: usize, r: &Request, endpoints: &[String]) -> Result<(), CallError> {
    let invalid = |reason: &str| CallError::Invalid { index, reason: reason.to_owned() };
    if !endpoints.contains(&r.endpoint) {
        return Err(CallError::UnknownEndpoint { index, endpoint: crate::text::line(&r.endpoint).into_owned() });
    }
    if !METHODS.contains(&r.method.as_str()) {
        return Err(invalid("the method must be one of GET, HEAD, POST, PUT, PATCH, DELETE"));
    }
    check_path(&r.path).map_err(&invalid)?;
    if let Some(ct) = &r.content_type
        && (ct.is_empty() || ct.len() > 128 || !ct.bytes().all(|b| (0x20..0x7f).contains(&b)))
    {
        return Err(invalid("a content type is 1 to 128 printable ASCII characters"));
    }
    if r.body.is_some() && r.is_read_method() {
        return Err(invalid("a GET or HEAD request has no body"));
    }
    Ok(())
}

/// Whether `path` is a path-and-query a call may use: it starts with one
/// `/`, has only printable ASCII without spaces or `#`, and no `.`/`..`
/// segment (plain or percent-encoded) or encoded `/`, so it cannot climb
/// out of the endpoint's base path or name another authority.
///
/// # Errors
/// What is wrong with it, for a person.
pub fn check_path(path: &str) -> Result<(), &'static str> {
    if path.len() > MAX_CALL_PATH {
        return Err("the path is longer than 2048 bytes");
    }
    if !path.starts_with('/') || path.starts_with("//") {
        return Err("the path must start with exactly one `/`");
    }
    if !path.bytes().all(|b| (0x21..0x7f).contains(&b) && b != b'#' && b != b'\\') {
        return Err("the path may hold only printable ASCII without spaces, `#` or `\\`");
    }
    let lower = path.to_ascii_lowercase();
    if lower.contains("%2f") || lower.contains("%5c") || lower.contains("%2e") {
        return Err("the path may not hold an encoded `/`, `\\` or `.`");
    }
    let route = path.split('?').next().unwrap_or("");
    if route.split('/').any(|seg| seg == "." || seg == "..") {
        return Err("the path may not hold a `.` or `..` segment");
    }
    Ok(())
}

/// Walks the planned calls as `apply` sends requests: each request must be
/// the next planned call, exactly, and is then used up.
#[derive(Debug, Clone)]
pub struct CallCursor<'a> {
    planned: &'a [Call],
    done: usize,
}

impl<'a> CallCursor<'a> {
    pub fn new(planned: &'a [Call]) -> Self {
        Self { planned, done: 0 }
    }

    /// A cursor after `done` calls were made (each was admitted).
    pub fn resume(planned: &'a [Call], done: usize) -> Self {
        Self { planned, done: done.min(planned.len()) }
    }

    /// How many planned calls were made.
    pub fn done(&self) -> usize {
        self.done
    }

    /// Check a request before it leaves; on success it is the call at the
    /// returned index, which is now used.
    ///
    /// # Errors
    /// [`CallError::OutsidePlan`] when every planned call was made (a call
    /// made twice is one of these) and [`CallError::Mismatch`] when it is
    /// not the next one.
    pub fn admit(&mut self, actual: &Request) -> Result<usize, CallError> {
        let Some(next) = self.planned.get(self.done) else {
            return Err(CallError::OutsidePlan { actual: actual.line(), planned: self.planned.len(), done: self.done });
        };
        let expected = &next.request;
        let what = if actual.endpoint != expected.endpoint {
            Some("endpoint")
        } else if actual.method != expected.method {
            Some("method")
        } else if actual.path != expected.path {
            Some("path or query")
        } else if actual.content_type != expected.content_type {
            Some("content type")
        } else if actual.body != expected.body {
            Some("body")
        } else {
            None
        };
        if let Some(what) = what {
            return Err(CallError::Mismatch { actual: actual.line(), expected: expected.line(), what });
        }
        self.done += 1;
        Ok(self.done - 1)
    }

    /// After `apply`: every planned call was made.
    ///
    /// # Errors
    /// [`CallError::Incomplete`] naming the first call not made.
    pub fn finish(&self) -> Result<(), CallError> {
        match self.planned.get(self.done) {
            None => Ok(()),
            Some(next) => {
                Err(CallError::Incomplete { done: self.done, planned: self.planned.len(), next: next.request.line() })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: &str, path: &str, body: Option<&[u8]>) -> Request {
        Request {
            endpoint: "etcd".into(),
            method: method.into(),
            path: path.into(),
            content_type: body.map(|_| "application/json".into()),
            body: body.map(Sha256Digest::of),
        }
    }

    fn call(r: Request, comp: Option<Request>) -> Call {
        Call { request: r, why: "fix the drift".into(), compensation: comp }
    }

    #[test]
    fn a_write_needs_a_compensation_and_a_declared_endpoint() {
        let eps = vec!["etcd".to_owned()];
        let put = req("POST", "/v3/kv/put", Some(b"{}"));
        assert_eq!(check_calls(&[call(put.clone(), None)], &eps).unwrap_err().reason_code(), "plan.no_compensation");
        check_calls(&[call(put.clone(), Some(put.clone()))], &eps).unwrap();
        check_calls(&[call(req("GET", "/health", None), None)], &eps).unwrap();
        let mut other = put.clone();
        other.endpoint = "vault".into();
        assert_eq!(check_calls(&[call(other, Some(put))], &eps).unwrap_err().reason_code(), "plan.unknown_endpoint");
    }

    #[test]
    fn hostile_paths_are_refused() {
        for p in [
            "v3/kv",
            "//evil.example/x",
            "/a/../b",
            "/a/./b",
            "/a/%2e%2e/b",
            "/a%2Fb",
            "/a b",
            "/a#frag",
            "/a\u{202e}b",
            "/a\\b",
            "/a\n",
            "",
        ] {
            assert!(check_path(p).is_err(), "{p:?} accepted");
        }
        for p in ["/", "/v3/kv/put", "/a/b?x=1&y=..", "/flags/%41"] {
            assert!(check_path(p).is_ok(), "{p:?} refused");
        }
        assert!(check_path(&format!("/{}", "a".repeat(MAX_CALL_PATH))).is_err());
    }

    #[test]
    fn the_cursor_takes_each_planned_call_once_in_order() {
        let a = req("POST", "/v3/kv/put", Some(b"a"));
        let b = req("POST", "/v3/kv/put", Some(b"b"));
        let plan = [call(a.clone(), Some(a.clone())), call(b.clone(), Some(b.clone()))];
        let mut c = CallCursor::new(&plan);
        // Out of order: refused, nothing used.
        assert_eq!(c.admit(&b).unwrap_err().reason_code(), "call.outside_plan");
        assert_eq!(c.admit(&a).unwrap(), 0);
        // The same call again is not the next one.
        assert!(matches!(c.admit(&a), Err(CallError::Mismatch { what: "body", .. })));
        assert_eq!(c.finish().unwrap_err().reason_code(), "call.incomplete");
        assert_eq!(c.admit(&b).unwrap(), 1);
        c.finish().unwrap();
        // Everything made: one more is outside the plan.
        assert!(matches!(c.admit(&a), Err(CallError::OutsidePlan { .. })));
        // Each field is held to the plan.
        let mut c = CallCursor::new(&plan);
        for (f, what) in [
            (Box::new(|r: &mut Request| r.method = "PUT".into()) as Box<dyn Fn(&mut Request)>, "method"),
            (Box::new(|r: &mut Request| r.path = "/v3/kv/put?x".into()), "path or query"),
            (Box::new(|r: &mut Request| r.endpoint = "vault".into()), "endpoint"),
            (Box::new(|r: &mut Request| r.content_type = None), "content type"),
        ] {
            let mut r = a.clone();
            f(&mut r);
            assert!(matches!(c.admit(&r), Err(CallError::Mismatch { what: w, .. }) if w == what));
        }
        assert_eq!(c.done(), 0);
    }
}
