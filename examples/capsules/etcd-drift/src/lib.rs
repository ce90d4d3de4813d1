//! etcd-drift: set one key in etcd back to its baseline value, through the
//! v3 JSON gateway of the endpoint `etcd`.
//!
//! * `plan` reads the key (`POST /v3/kv/range`, which the operator lists as
//!   a read) and, when it differs, proposes the write
//!   (`POST /v3/kv/put`) with its compensation: putting the old value back,
//!   or deleting the key when it did not exist.
//! * `apply` sends exactly the planned call.
//! * `verify` reads the key back.
//!
//! Parameters (from the signed manifest): `key`, `value`; `verify_value`
//! overrides what `verify` expects (to show a failed verification and its
//! compensation).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use capsule_sdk::http::{self, Request};
use capsule_sdk::{Capsule, Ctx, Plan, PlanBuilder, Severity, Verification, export_capsule};

struct EtcdDrift;

const ENDPOINT: &str = "etcd";
const JSON: &str = "application/json";

fn range_body(key: &str) -> Vec<u8> {
    format!("{{\"key\":\"{}\"}}", B64.encode(key)).into_bytes()
}

fn put_body(key: &str, value: &[u8]) -> Vec<u8> {
    format!("{{\"key\":\"{}\",\"value\":\"{}\"}}", B64.encode(key), B64.encode(value)).into_bytes()
}

/// The key's current value (None: no such key).
fn read(key: &str) -> Result<Option<Vec<u8>>, String> {
    let r = http::send(&Request::post(ENDPOINT, "/v3/kv/range", JSON, &range_body(key)))?;
    if !r.ok() {
        return Err(format!("etcd answered {} to the read of {key}", r.status));
    }
    let v: serde_json::Value =
        serde_json::from_slice(&r.body).map_err(|e| format!("etcd's answer is not JSON: {e}"))?;
    let Some(kv) = v.get("kvs").and_then(|k| k.as_array()).and_then(|a| a.first()) else { return Ok(None) };
    let value = kv.get("value").and_then(|v| v.as_str()).unwrap_or("");
    B64.decode(value).map(Some).map_err(|e| format!("etcd's value is not base64: {e}"))
}

impl Capsule for EtcdDrift {
    fn plan(ctx: &Ctx) -> Result<Plan, String> {
        let key = ctx.require("key")?;
        let want = ctx.require("value")?;
        let current = read(key)?;
        let mut plan = PlanBuilder::new(format!("set {key} in etcd to {want}"));
        if current.as_deref() == Some(want.as_bytes()) {
            plan.finding(Severity::Info, "config.in_sync", format!("{key} is {want}"), Some(key));
            return Ok(plan.build());
        }
        let shown = current.as_deref().map_or("(absent)".into(), |v| String::from_utf8_lossy(v).into_owned());
        plan.finding(Severity::Medium, "config.drift", format!("{key} is {shown}, baseline {want}"), Some(key));
        let undo = match &current {
            Some(old) => Request::post(ENDPOINT, "/v3/kv/put", JSON, &put_body(key, old)),
            None => Request::post(ENDPOINT, "/v3/kv/deleterange", JSON, &range_body(key)),
        };
        plan.call(
            Request::post(ENDPOINT, "/v3/kv/put", JSON, &put_body(key, want.as_bytes())),
            &format!("{key} drifted to {shown}; the baseline is {want}"),
            Some(undo),
        );
        plan.fact("key", key);
        Ok(plan.build())
    }

    fn apply(_ctx: &Ctx, _plan: &Plan) -> Result<(), String> {
        http::apply_planned().map(drop)
    }

    fn verify(ctx: &Ctx, _plan: &Plan) -> Result<Verification, String> {
        let key = ctx.require("key")?;
        let want = ctx.param("verify_value").unwrap_or(ctx.require("value")?);
        let now = read(key)?;
        let ok = now.as_deref() == Some(want.as_bytes());
        Ok(Verification::new(ok, if ok { format!("{key} is {want}") } else { format!("{key} is not {want}") }))
    }
}

export_capsule!(EtcdDrift);
