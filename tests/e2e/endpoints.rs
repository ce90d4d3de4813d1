//! Governed endpoints: capsules that call a service, through the real
//! binary, against a recording test server (what it received is the
//! evidence that nothing unplanned got through) and a real etcd.

use std::io::{BufRead as _, BufReader, Read as _, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::harness::{Env, FAST_LIMITS, STD_IMPORTS};

const TOKEN: &str = "s3cr3t-token-7f1c9e";

/// One request the test server received.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

/// A tiny HTTP/1.1 service (one request per connection) that records what
/// it receives and keeps one value at `/api/item` (initially `old`).
pub struct TestService {
    pub port: u16,
    pub received: Arc<Mutex<Vec<Received>>>,
}

impl TestService {
    pub fn start() -> Self {
        Self::start_with(None)
    }

    /// Over TLS with `config` (each connection's handshake first; one that
    /// fails records nothing).
    pub fn start_with(tls: Option<Arc<rustls::ServerConfig>>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let received = Arc::new(Mutex::new(Vec::new()));
        let item = Arc::new(Mutex::new(b"old".to_vec()));
        let rec = received.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let (rec, item, tls) = (rec.clone(), item.clone(), tls.clone());
                std::thread::spawn(move || match tls {
                    None => serve(conn, &rec, &item),
                    Some(config) => {
                        let mut tls = rustls::StreamOwned::new(rustls::ServerConnection::new(config).unwrap(), conn);
                        // The handshake: a client the CA does not vouch for gets no further.
                        while tls.conn.is_handshaking() {
                            if tls.conn.complete_io(&mut tls.sock).is_err() {
                                return;
                            }
                        }
                        serve(tls, &rec, &item)
                    }
                });
            }
        });
        Self { port, received }
    }

    pub fn requests(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// `METHOD path body` of each request, in order.
    pub fn lines(&self) -> Vec<String> {
        self.requests().iter().map(|r| format!("{} {} {}", r.method, r.path, r.body).trim_end().to_owned()).collect()
    }
}

fn serve<S: std::io::Read + Write>(mut conn: S, rec: &Mutex<Vec<Received>>, item: &Mutex<Vec<u8>>) {
    let mut reader = BufReader::new(&mut conn);
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return;
    }
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or("").to_owned(), parts.next().unwrap_or("").to_owned());
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).is_err() || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.trim().split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
        }
    }
    let len: usize = headers.iter().find(|(k, _)| k == "content-length").and_then(|(_, v)| v.parse().ok()).unwrap_or(0);
    let mut body = vec![0; len];
    let _ = reader.read_exact(&mut body);
    let body_text = String::from_utf8_lossy(&body).into_owned();
    rec.lock().unwrap().push(Received {
        method: method.clone(),
        path: path.clone(),
        headers: headers.clone(),
        body: body_text,
    });
    let mut out = conn;
    let (status, extra, content): (&str, String, Vec<u8>) = match (method.as_str(), path.as_str()) {
        ("GET", "/api/item") => ("200 OK", String::new(), item.lock().unwrap().clone()),
        ("PUT", "/api/item") => {
            *item.lock().unwrap() = body;
            ("200 OK", String::new(), b"stored".to_vec())
        }
        ("PUT", "/api/fail") => ("500 Internal Server Error", String::new(), b"broken".to_vec()),
        ("GET", "/api/big") => ("200 OK", String::new(), vec![b'x'; 2 << 20]),
        ("GET", "/api/stall") => {
            std::thread::sleep(Duration::from_secs(10));
            return;
        }
        ("GET", "/api/redirect") => ("302 Found", "location: http://evil.example/steal\r\n".into(), Vec::new()),
        ("GET", "/api/echo") => {
            let dump: String = headers.iter().map(|(k, v)| format!("{k}: {v}\n")).collect();
            ("200 OK", String::new(), dump.into_bytes())
        }
        _ => ("404 Not Found", String::new(), Vec::new()),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n{extra}\r\n",
        content.len()
    );
    let _ = out.write_all(head.as_bytes());
    let _ = out.write_all(&content);
}

/// The imports of a capsule that calls endpoints.
fn http_imports() -> String {
    STD_IMPORTS.replace(
        "\"edge-runner:capsule/host\",",
        "\"edge-runner:capsule/host\", \"edge-runner:capsule/calls\", \"wasi:http/types\", \"wasi:http/outgoing-handler\",",
    )
}

/// A home with endpoint `svc` (the test service under `/api`, a credential
/// the runner attaches) and `rebind` (a name that resolves to an address
/// it may not connect to).
fn home(svc: &TestService) -> Env {
    let env = Env::new();
    std::fs::write(env.path("svc-token"), format!("{TOKEN}\n")).unwrap();
    env.write_config(&format!(
        "[endpoints.svc]\nnode = \"svc\"\nurl = \"http://127.0.0.1:{p}/api\"\nmethods = [\"GET\", \"PUT\", \"POST\"]\n\
         connect = [\"127.0.0.1\"]\ncredential_header = \"X-Api-Token\"\ncredential_file = \"svc-token\"\n\
         max_response_kib = 64\ntimeout = \"1s\"\n\n\
         [endpoints.rebind]\nnode = \"svc\"\nurl = \"http://localhost:{p}\"\nmethods = [\"GET\"]\nconnect = [\"127.0.0.2\"]\n",
        p = svc.port
    ));
    env
}

fn hostile_http(env: &Env, attack: &str) -> std::path::PathBuf {
    let manifest = format!(
        "name = \"hostile-http\"\nversion = \"0.0.1\"\nkind = \"remediation\"\n{}\nendpoints = [\"svc\", \"rebind\"]\n\n\
         [params]\nattack = \"{attack}\"\n\n[provenance]\nticket = \"TEST-1\"\n\n{FAST_LIMITS}",
        http_imports()
    );
    env.capsule(&format!("http-{attack}"), test_programs::HOSTILE_HTTP, &manifest, Some("agent"))
}

#[test]
fn a_planned_call_is_made_once_with_the_runners_credential_and_recorded_write_ahead() {
    let svc = TestService::start();
    let env = home(&svc);
    let run = env.exec(&hostile_http(&env, "ok"));
    assert_eq!(run.outcome(), "committed", "{:#}", run.report);
    assert_eq!(svc.lines(), ["GET /api/item", "PUT /api/item new", "GET /api/item"]);
    for r in svc.requests() {
        let h = |k: &str| r.headers.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        assert_eq!(h("x-api-token").as_deref(), Some(TOKEN), "the runner attaches the credential");
        assert_eq!(h("host"), Some(format!("127.0.0.1:{}", svc.port)));
    }
    // Each request: its intent, then its outcome; the apply call names the plan's call 0.
    let ev = run.events();
    let calls: Vec<&String> = ev.iter().filter(|e| e.starts_with("call-")).collect();
    assert_eq!(calls, ["call-intent", "call-outcome", "call-intent", "call-outcome", "call-intent", "call-outcome"]);
    let intents = run.events_of("call-intent");
    assert_eq!(intents[1]["phase"], "apply");
    assert_eq!(intents[1]["planned"], 0);
    assert_eq!(intents[1]["request"]["path"], "/item");
    assert!(ev.iter().position(|e| e == "authorized") < ev.iter().position(|e| e == "committed"));
    assert_eq!(run.report["plan"]["calls"][0]["compensation"]["method"], "PUT");
    // The credential is nowhere in what the runner keeps or prints.
    let report = serde_json::to_string(&run.report).unwrap();
    assert!(!report.contains(TOKEN) && !run.stderr.contains(TOKEN));
    env.verify_offline();
    assert!(!std::fs::read(env.path("all.bundle")).unwrap().windows(TOKEN.len()).any(|w| w == TOKEN.as_bytes()));
    // The reviewer's report lists every request the run sent, in order.
    let args = vec![
        "report".into(),
        env.path("all.bundle").into_os_string(),
        "--key".into(),
        env.path("runner.vkey").into_os_string(),
    ];
    let (mut out, mut err) = (Vec::new(), Vec::new());
    assert_eq!(edge_evidence::cli::run(args, &mut out, &mut err, false), 0, "{}", String::from_utf8_lossy(&err));
    let text = String::from_utf8(out).unwrap();
    let calls: Vec<&str> = text.lines().filter(|l| l.trim_start().starts_with("call ")).map(str::trim).collect();
    assert_eq!(calls.len(), 3, "{text}");
    assert!(calls[1].starts_with("call        PUT svc/item"), "{text}");
}

#[test]
fn nothing_unplanned_reaches_the_service() {
    let svc = TestService::start();
    let env = home(&svc);
    // (attack, outcome, reason code, what the service may have received)
    let cases: &[(&str, &str, &str, &[&str])] = &[
        ("undeclared", "refused", "call.undeclared_endpoint", &[]),
        ("post-in-plan", "refused", "call.write_outside_apply", &[]),
        ("host-header", "refused", "call.header_refused", &[]),
        ("rebind", "refused", "egress.address_not_allowed", &[]),
        ("redirect", "refused", "call.undeclared_endpoint", &["GET /api/redirect"]),
        ("big", "refused", "egress.response_too_large", &["GET /api/big"]),
        ("stall", "refused", "egress.timeout", &["GET /api/stall"]),
        ("apply-other-method", "refused", "call.outside_plan", &["GET /api/item"]),
        ("apply-other-path", "refused", "call.outside_plan", &["GET /api/item"]),
        ("apply-other-body", "refused", "call.outside_plan", &["GET /api/item"]),
        ("apply-other-host", "refused", "call.undeclared_endpoint", &["GET /api/item"]),
        ("apply-nothing", "refused", "call.incomplete", &["GET /api/item"]),
        // The planned call was made: its compensation is sent, nothing else.
        (
            "apply-twice",
            "rolled-back",
            "call.outside_plan",
            &["GET /api/item", "PUT /api/item new", "PUT /api/item old"],
        ),
        (
            "put-in-verify",
            "rolled-back",
            "call.write_outside_apply",
            &["GET /api/item", "PUT /api/item new", "PUT /api/item old"],
        ),
    ];
    for (attack, outcome, reason, expected) in cases {
        svc.received.lock().unwrap().clear();
        let run = env.exec(&hostile_http(&env, attack));
        assert_eq!((run.outcome(), run.reason()), (*outcome, *reason), "{attack}: {:#}", run.report);
        assert_eq!(svc.lines(), *expected, "{attack}: the service received something unplanned");
        // Refusals before the request left are recorded as such; a refused
        // address after its intent, as the call's outcome.
        if *attack == "rebind" {
            assert_eq!(run.events_of("call-outcome")[0]["reason_code"], *reason);
        } else if expected.is_empty() || attack.starts_with("apply-other") || *attack == "redirect" {
            let refused = run.events_of("call-refused");
            assert!(!refused.is_empty(), "{attack}: no call-refused record");
            assert_eq!(refused[0]["reason_code"], *reason, "{attack}");
        }
    }
    // After all that, the log still verifies offline, call by call.
    env.verify_offline();
}

#[test]
fn a_failed_verification_sends_the_compensation_and_a_failed_compensation_is_loud() {
    let svc = TestService::start();
    let env = home(&svc);
    let run = env.exec(&hostile_http(&env, "verify-fails"));
    assert_eq!((run.outcome(), run.reason()), ("rolled-back", "verify.failed"), "{:#}", run.report);
    assert_eq!(svc.lines(), ["GET /api/item", "PUT /api/item new", "PUT /api/item old"]);
    let intents = run.events_of("call-intent");
    assert_eq!(intents.last().unwrap()["phase"], "compensate");

    svc.received.lock().unwrap().clear();
    let run = env.exec(&hostile_http(&env, "comp-fails"));
    assert_eq!(run.outcome(), "failed", "{:#}", run.report);
    assert_eq!(run.reason(), "verify.failed");
    assert_eq!(svc.lines(), ["GET /api/item", "PUT /api/item new", "PUT /api/fail old"]);
    let refused: Vec<String> = run.events_of("refused").iter().map(|e| e["reason_code"].to_string()).collect();
    assert!(refused.iter().any(|r| r.contains("call.compensation_failed")), "{refused:?}");
    let outcome = run.events_of("call-outcome");
    assert_eq!(outcome.last().unwrap()["status"], 500);
    env.verify_offline();
}

#[test]
fn the_injected_credential_is_never_guest_visible_nor_kept() {
    let svc = TestService::start();
    let env = home(&svc);
    let run = env.exec(&hostile_http(&env, "credential"));
    assert_eq!(run.outcome(), "no-changes", "{:#}", run.report);
    // The service got it (the runner attached it) …
    assert!(svc.requests()[0].headers.iter().any(|(k, v)| k == "x-api-token" && v == TOKEN));
    // … and echoed it back; the capsule saw it redacted, as does the evidence.
    let seen = run.report["plan"]["findings"][0]["message"].as_str().unwrap().to_owned();
    assert!(seen.contains("x-api-token: [credential redacted]"), "{seen}");
    let all = serde_json::to_string(&run.report).unwrap();
    assert!(!all.contains(TOKEN) && !run.stderr.contains(TOKEN));
    env.verify_offline();
    let bundle = std::fs::read(env.path("all.bundle")).unwrap();
    assert!(!bundle.windows(TOKEN.len()).any(|w| w == TOKEN.as_bytes()), "the credential is in the export");
}

#[test]
fn an_endpoint_config_that_is_unsafe_does_not_load() {
    let svc = TestService::start();
    let env = home(&svc);
    for (extra, says) in [
        (
            "[endpoints.x]\nnode = \"n\"\nurl = \"http://10.0.0.5:80\"\nmethods = [\"GET\"]\nconnect = [\"10.0.0.5\"]\n",
            "dangerous_plain_http",
        ),
        (
            "[endpoints.x]\nnode = \"n\"\nurl = \"https://svc.internal\"\nmethods = [\"GET\"]\nconnect = [\"10.0.0.5\"]\n",
            "ca",
        ),
        ("[endpoints.x]\nnode = \"n\"\nurl = \"http://127.0.0.1:1\"\nmethods = [\"GET\"]\n", "connect"),
    ] {
        let mut text = std::fs::read_to_string(env.path("runner.toml")).unwrap();
        text.push('\n');
        text.push_str(extra);
        std::fs::write(env.path("bad.toml"), text).unwrap();
        let out = env.cli(&["check", "--config", "bad.toml"]);
        assert_ne!(out.code(), 0);
        assert!(format!("{}{}", out.stdout(), out.stderr()).contains(says), "{}{}", out.stdout(), out.stderr());
    }
    // A capsule asking for an endpoint the config does not define is refused at admission.
    let manifest = format!(
        "name = \"hostile-http\"\nversion = \"0.0.1\"\nkind = \"remediation\"\n{}\nendpoints = [\"vault\"]\n\n[params]\nattack = \"ok\"\n",
        http_imports()
    );
    let run = env.exec(&env.capsule("vault", test_programs::HOSTILE_HTTP, &manifest, Some("agent")));
    assert_eq!(run.reason(), "admission.endpoint_not_configured", "{:#}", run.report);
    // wasi:http without an endpoint: refused before it runs.
    let manifest = format!(
        "name = \"hostile-http\"\nversion = \"0.0.1\"\nkind = \"remediation\"\n{}\n[params]\nattack = \"ok\"\n",
        http_imports()
    );
    let run = env.exec(&env.capsule("nohttp", test_programs::HOSTILE_HTTP, &manifest, Some("agent")));
    assert_eq!(run.reason(), "admission.http_without_endpoint", "{:#}", run.report);
    assert!(svc.lines().is_empty());
}

/// A real etcd (Debian's `etcd-server`) on 127.0.0.1 with a temporary data
/// directory; stopped on drop.
pub struct Etcd {
    child: std::process::Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Etcd {
    pub fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (port, peer) = (free_port(), free_port());
        let client = format!("http://127.0.0.1:{port}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let log = std::fs::File::create(dir.path().join("etcd.log")).unwrap();
        let child = std::process::Command::new("etcd")
            .args(["--name", "t", "--data-dir"])
            .arg(dir.path().join("data"))
            .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer_url, "--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("t={peer_url}")])
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .expect("etcd must be installed (Debian package etcd-server; scripts/test.sh installs it)");
        let etcd = Self { child, port, _dir: dir };
        for _ in 0..100 {
            if etcd.ctl(&["endpoint", "health"]).status.success() {
                return etcd;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("etcd did not become healthy");
    }

    fn ctl(&self, args: &[&str]) -> std::process::Output {
        std::process::Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints=http://127.0.0.1:{}", self.port))
            .args(args)
            .output()
            .expect("etcdctl must be installed (Debian package etcd-client)")
    }

    pub fn put(&self, key: &str, value: &str) {
        assert!(self.ctl(&["put", key, value]).status.success());
    }

    pub fn get(&self, key: &str) -> Option<String> {
        let out = self.ctl(&["get", key, "--print-value-only"]);
        assert!(out.status.success());
        let v = String::from_utf8_lossy(&out.stdout).trim_end_matches('\n').to_owned();
        (!v.is_empty()).then_some(v)
    }

    /// `[endpoints.etcd]` for this server, as the README's example shows it.
    pub fn endpoint_config(&self, node: &str) -> String {
        format!(
            "[endpoints.etcd]\nnode = \"{node}\"\nurl = \"http://127.0.0.1:{}\"\nmethods = [\"POST\"]\n\
             read_requests = [\"POST /v3/kv/range\"]\nconnect = [\"127.0.0.1\"]\ntimeout = \"5s\"\n",
            self.port
        )
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const KEY: &str = "/config/checkout/max_connections";

/// `edge-runner approve` of `document` by alice (what she is shown, on stdout).
fn alice_approves(env: &Env, document: &str, out: &str) -> crate::harness::Cli {
    env.cli(&["approve", document, "--principal", "alice@bank.example", "--ssh-key", "keys/alice", "--yes", "-o", out])
}

fn etcd_drift(env: &Env, extra_params: &str) -> std::path::PathBuf {
    let manifest =
        std::fs::read_to_string(format!("{}/examples/capsules/etcd-drift/capsule.toml", test_programs::ROOT)).unwrap();
    let manifest = manifest.replace("value = \"512\"\n", &format!("value = \"512\"\n{extra_params}"));
    env.capsule("etcd-drift", test_programs::ETCD_DRIFT, &manifest, Some("agent"))
}

#[test]
fn etcd_drift_is_remediated_through_a_planned_call_and_compensated_when_verify_fails() {
    let etcd = Etcd::start();
    let env = Env::new();
    env.write_config(&etcd.endpoint_config("config-store"));

    // Drift: remediated, verified.
    etcd.put(KEY, "100");
    let run = env.exec(&etcd_drift(&env, ""));
    assert_eq!(run.outcome(), "committed", "{:#}", run.report);
    assert_eq!(etcd.get(KEY).as_deref(), Some("512"));
    let call = &run.report["plan"]["calls"][0];
    assert_eq!(
        (call["request"]["method"].as_str(), call["request"]["path"].as_str()),
        (Some("POST"), Some("/v3/kv/put"))
    );
    assert_eq!(call["compensation"]["path"], "/v3/kv/put");

    // In sync: nothing to do, nothing written.
    let run = env.exec(&etcd_drift(&env, ""));
    assert_eq!(run.outcome(), "no-changes", "{:#}", run.report);

    // Verification fails: the runner puts the old value back.
    etcd.put(KEY, "100");
    let run = env.exec(&etcd_drift(&env, "verify_value = \"999\"\n"));
    assert_eq!((run.outcome(), run.reason()), ("rolled-back", "verify.failed"), "{:#}", run.report);
    assert_eq!(etcd.get(KEY).as_deref(), Some("100"), "the compensation restored the old value");

    // The key absent before: the compensation deletes it.
    assert!(etcd.ctl(&["del", KEY]).status.success());
    let run = env.exec(&etcd_drift(&env, "verify_value = \"999\"\n"));
    assert_eq!(run.outcome(), "rolled-back", "{:#}", run.report);
    assert_eq!(run.report["plan"]["calls"][0]["compensation"]["path"], "/v3/kv/deleterange");
    assert_eq!(etcd.get(KEY), None);
    env.verify_offline();
}

#[test]
fn an_etcd_change_at_tier_2_waits_shows_its_request_and_runs_once_approved() {
    let etcd = Etcd::start();
    let env = Env::new();
    env.write_policy_config("payments-config", &[]);
    let mut config = std::fs::read_to_string(env.path("runner.toml")).unwrap();
    config.push('\n');
    config.push_str(&etcd.endpoint_config("payments-config"));
    std::fs::write(env.path("runner.toml"), config).unwrap();
    env.write_approvers(&[("alice", &["sre"]), ("carol", &["payments-owner"])], "");
    etcd.put(KEY, "100");
    let capsule = etcd_drift(&env, "");
    let first = env.exec(&capsule);
    assert_eq!(first.outcome(), "awaiting-approval", "{:#}", first.report);
    assert_eq!(first.report["tier"], 2, "a write to payments-config reaches the revenue path");
    assert_eq!(etcd.get(KEY).as_deref(), Some("100"), "nothing is sent before approval");
    let document = first.report["document"].as_str().unwrap().to_owned();
    // What the approver is shown: the exact request, and its compensation.
    let shown = alice_approves(&env, &document, "alice.approval").success().stdout();
    assert!(shown.contains("1.    POST etcd/v3/kv/put (application/json)"), "{shown}");
    assert!(shown.contains("L2NvbmZpZy9jaGVja291dC9tYXhfY29ubmVjdGlvbnM"), "the body is shown: {shown}");
    assert!(shown.contains("undo  POST etcd/v3/kv/put"), "{shown}");
    env.sign_approval("approve", &document, "carol", "carol.approval");
    let run = env.exec_with(&capsule, &["alice.approval", "carol.approval"]);
    assert_eq!(run.outcome(), "committed", "{:#}", run.report);
    assert_eq!(etcd.get(KEY).as_deref(), Some("512"));
    env.verify_offline();
}

/// Even with the runner's own key, a request outside the approved plan, or
/// a compensation that is not the recorded one, is found offline.
#[test]
fn even_with_the_runner_key_an_unplanned_call_is_found_offline() {
    use crate::evidence::{identity_signer, parts};
    use edge_core::evidence::{Event, Record};
    let svc = TestService::start();
    let env = home(&svc);
    assert_eq!(env.exec(&hostile_http(&env, "ok")).outcome(), "committed");
    assert_eq!(env.exec(&hostile_http(&env, "verify-fails")).outcome(), "rolled-back");
    env.verify_offline();
    let bundle = std::fs::read(env.path("all.bundle")).unwrap();
    let keys = edge_evidence::parse_keys(&std::fs::read_to_string(env.path("runner.vkey")).unwrap()).unwrap();
    let signer = identity_signer(&env);
    let check = |p: &crate::evidence::Parts| match edge_evidence::verify(&p.write(), &keys, edge_evidence::Level::Full)
    {
        Ok(_) => panic!("a forged call verified"),
        Err(e) => e.check,
    };
    let rewrite = |edit: &dyn Fn(&mut Event) -> bool| {
        let mut p = parts(&bundle);
        let mut done = false;
        for line in &mut p.records {
            let mut r: Record = serde_json::from_str(line).unwrap();
            if !done && edit(&mut r.event) {
                *line = String::from_utf8(edge_core::canonical::to_canonical_vec(&r).unwrap()).unwrap();
                done = true;
            }
        }
        assert!(done, "nothing to rewrite");
        p.reseal(&signer);
        p
    };
    // The apply call recorded with another path than the approved plan's.
    let p = rewrite(&|e| match e {
        Event::CallIntent { phase, request, .. } if phase == "apply" => {
            request.path = "/item?all=1".into();
            true
        }
        _ => false,
    });
    assert_eq!(check(&p), "call.plan");
    // A write recorded as made during plan is fine only if it is a read;
    // recorded as an apply call it must be the next planned one.
    let p = rewrite(&|e| match e {
        Event::CallIntent { phase, planned, .. } if phase == "plan" => {
            *phase = "apply".into();
            *planned = Some(0);
            true
        }
        _ => false,
    });
    assert_eq!(check(&p), "run.unauthorized");
    // The compensation recorded as another request than the plan's undo.
    let p = rewrite(&|e| match e {
        Event::CallIntent { phase, request, .. } if phase == "compensate" => {
            request.path = "/item/all".into();
            true
        }
        _ => false,
    });
    assert_eq!(check(&p), "call.compensation");
    // An outcome for a request that was never announced.
    let p = rewrite(&|e| match e {
        Event::CallOutcome { call, .. } => {
            *call = 99;
            true
        }
        _ => false,
    });
    assert_eq!(check(&p), "call.plan");
    // A body said to be kept in full that is not (or kept as something else).
    let p = rewrite(&|e| match e {
        Event::CallIntent { phase, body, .. } if phase == "apply" => {
            *body = None;
            true
        }
        _ => false,
    });
    assert_eq!(check(&p), "call.plan");
    // A record from before preview modes (neither `kept` nor `body`; the
    // body is the artifact `request.body` names) still verifies.
    let p = rewrite(&|e| match e {
        Event::CallIntent { phase, kept, body, .. } if phase == "apply" => {
            (*kept, *body) = (None, None);
            true
        }
        _ => false,
    });
    edge_evidence::verify(&p.write(), &keys, edge_evidence::Level::Full).expect("an earlier version's record verifies");
}

/// `exec` the capsule in its own process and kill it once the service has
/// received the planned `PUT /api/item new`.
fn exec_killed_after_its_call(env: &Env, capsule: &std::path::Path, svc: &TestService) {
    let mut child = std::process::Command::new(crate::harness::BIN)
        .args(["exec", capsule.to_str().unwrap(), "--config", "runner.toml", "--json"])
        .current_dir(env.path(""))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !svc.lines().iter().any(|l| l == "PUT /api/item new") {
        assert!(std::time::Instant::now() < deadline, "the planned call never arrived: {:?}", svc.lines());
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
}

/// A runner killed after `apply` made its call: the next start sends the
/// recorded compensation and closes the run, and the log still verifies.
#[test]
fn a_run_killed_after_its_call_is_compensated_at_the_next_start() {
    let svc = TestService::start();
    let env = home(&svc);
    let manifest = format!(
        "name = \"hostile-http\"\nversion = \"0.0.1\"\nkind = \"remediation\"\n{}\nendpoints = [\"svc\"]\n\n\
         [params]\nattack = \"apply-then-wait\"\n\n[limits]\nwall_ms = 60000\n",
        http_imports()
    );
    let capsule = env.capsule("wait", test_programs::HOSTILE_HTTP, &manifest, Some("agent"));
    exec_killed_after_its_call(&env, &capsule, &svc);
    assert_eq!(svc.lines(), ["GET /api/item", "PUT /api/item new"]);

    // The next start (any command that opens the runner: here the export)
    // undoes the call, and the offline verifier accepts what it recorded.
    env.verify_offline();
    assert_eq!(svc.lines(), ["GET /api/item", "PUT /api/item new", "PUT /api/item old"]);
    let text = String::from_utf8_lossy(&std::fs::read(env.path("all.bundle")).unwrap()).into_owned();
    assert!(text.contains("\"phase\":\"compensate\""), "{text}");
    assert!(text.contains("\"outcome\":\"interrupted\""), "{text}");
    // And only once: a second start sends nothing more.
    env.verify_offline();
    assert_eq!(svc.lines().len(), 3);
}

/// The service's side of TLS: its certificate from `init`'s development CA,
/// and a client certificate from that CA required.
fn tls_server(home: &std::path::Path) -> Arc<rustls::ServerConfig> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let certs = |f: &str| -> Vec<CertificateDer<'static>> {
        CertificateDer::pem_file_iter(home.join(f)).unwrap().map(Result::unwrap).collect()
    };
    let mut roots = rustls::RootCertStore::empty();
    for c in certs("tls/ca.pem") {
        roots.add(c).unwrap();
    }
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone()).build().unwrap();
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs("tls/server.pem"), PrivateKeyDer::from_pem_file(home.join("tls/server.key")).unwrap())
        .unwrap();
    Arc::new(config)
}

/// An https endpoint is trusted through its own CA bundle only, and the
/// runner presents its client identity; with another CA nothing is sent.
#[test]
fn an_https_endpoint_is_reached_with_its_own_ca_and_the_runners_client_certificate() {
    let pki = tempfile::tempdir().unwrap();
    let other = tempfile::tempdir().unwrap();
    for d in [pki.path(), other.path()] {
        let out = std::process::Command::new(crate::harness::BIN)
            .args(["init", d.join("home").to_str().unwrap(), "--name", "pki", "--listen", "127.0.0.1:0"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let (home, other_home) = (pki.path().join("home"), other.path().join("home"));
    let svc = TestService::start_with(Some(tls_server(&home)));
    let env = Env::new();
    let endpoint = |ca: &std::path::Path, name: &str| {
        format!(
            "[endpoints.{name}]\nnode = \"svc\"\nurl = \"https://localhost:{}/api\"\nmethods = [\"GET\", \"PUT\"]\n\
             connect = [\"127.0.0.1\", \"::1\"]\nca = {:?}\nclient_cert = {:?}\nclient_key = {:?}\ntimeout = \"2s\"\n",
            svc.port,
            ca.join("tls/ca.pem"),
            home.join("tls/agent.pem"),
            home.join("tls/agent.key"),
        )
    };
    env.write_config(&format!("{}\n{}", endpoint(&home, "svc"), endpoint(&other_home, "rebind")));
    let run = env.exec(&hostile_http(&env, "ok"));
    assert_eq!(run.outcome(), "committed", "{:#}", run.report);
    assert_eq!(svc.lines(), ["GET /api/item", "PUT /api/item new", "GET /api/item"]);
    // The same service under a CA the endpoint does not trust: refused at
    // the handshake, before any request.
    svc.received.lock().unwrap().clear();
    let run = env.exec(&hostile_http(&env, "rebind"));
    assert_eq!((run.outcome(), run.reason()), ("refused", "egress.tls"), "{:#}", run.report);
    assert!(svc.lines().is_empty(), "{:?}", svc.lines());
}

/// Proxy variables in the runner's environment are not honoured: calls go
/// to the endpoint's allowed address, never through a proxy.
#[test]
fn proxy_variables_are_ignored() {
    let svc = TestService::start();
    let env = home(&svc);
    let capsule = hostile_http(&env, "ok");
    let dead = "http://127.0.0.1:9";
    let out = env.cli_env(
        &["exec", capsule.to_str().unwrap(), "--config", "runner.toml", "--json"],
        &[("HTTP_PROXY", dead), ("http_proxy", dead), ("HTTPS_PROXY", dead), ("ALL_PROXY", dead), ("NO_PROXY", "")],
    );
    let report: serde_json::Value = serde_json::from_str(&out.stdout()).unwrap();
    assert_eq!(report["outcome"], "committed", "{report:#}");
    assert_eq!(svc.lines(), ["GET /api/item", "PUT /api/item new", "GET /api/item"]);
}

/// `hostile-http` writing `value` to `svc` (`rotate`: a fresh credential
/// the capsule makes, `mode = fast\napi_token = <128 bits>\n`), with `attack`.
fn writer(env: &Env, attack: &str, value: &str, wall_ms: u64) -> std::path::PathBuf {
    let manifest = format!(
        "name = \"hostile-http\"\nversion = \"0.0.1\"\nkind = \"remediation\"\n{}\nendpoints = [\"svc\"]\n\n\
         [params]\nattack = \"{attack}\"\nvalue = \"{value}\"\n\n[provenance]\nticket = \"TEST-1\"\n\n[limits]\nwall_ms = {wall_ms}\n",
        http_imports()
    );
    env.capsule(&format!("{value}-{attack}"), test_programs::HOSTILE_HTTP, &manifest, Some("agent"))
}

/// The credential a `rotate` writer sent (what the service received).
fn rotated(svc: &TestService) -> String {
    let put = svc.requests().into_iter().find(|r| r.method == "PUT").expect("the rotation was sent");
    let token = put.body.strip_prefix("mode = fast\napi_token = ").and_then(|t| t.strip_suffix('\n'));
    let token = token.unwrap_or_else(|| panic!("not a rotation: {:?}", put.body)).to_owned();
    assert_eq!(token.len(), 32, "{token}");
    token
}

/// Every file under `dir` holding `needle` (the evidence store included).
fn files_holding(dir: &std::path::Path, needle: &str) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = e.path();
            if e.file_type().unwrap().is_dir() {
                todo.push(path);
            } else if std::fs::read(&path).unwrap_or_default().windows(needle.len()).any(|w| w == needle.as_bytes()) {
                found.push(path);
            }
        }
    }
    found
}

/// An endpoint previewed `redacted`: the approver sees the request body
/// with its secret-bearing line masked (and signs the real body's digest,
/// through the plan); the service receives exactly the planned bytes; the
/// secret is in no evidence, bundle or file the runner keeps afterwards.
#[test]
fn a_redacted_endpoint_shows_the_body_masked_and_sends_it_exact() {
    let svc = TestService::start();
    let env = Env::new();
    env.write_policy_config("payments-config", &[]);
    let mut config = std::fs::read_to_string(env.path("runner.toml")).unwrap();
    config.push_str(&format!(
        "\n[endpoints.svc]\nnode = \"payments-config\"\nurl = \"http://127.0.0.1:{}/api\"\nmethods = [\"GET\", \"PUT\"]\n\
         connect = [\"127.0.0.1\"]\npreview = \"redacted\"\n",
        svc.port
    ));
    std::fs::write(env.path("runner.toml"), config).unwrap();
    env.write_approvers(&[("alice", &["sre"]), ("carol", &["payments-owner"])], "");
    let capsule = writer(&env, "ok", "rotate", 10_000);
    let first = env.exec(&capsule);
    assert_eq!(first.outcome(), "awaiting-approval", "{:#}", first.report);
    assert_eq!(svc.lines(), ["GET /api/item"], "nothing is written before approval");
    let document = first.report["document"].as_str().unwrap().to_owned();
    let shown = alice_approves(&env, &document, "alice.approval").success().stdout();
    assert!(shown.contains("1.    PUT svc/item (text/plain)"), "{shown}");
    assert!(shown.contains("(redacted)") && shown.contains("| mode = fast"), "the body is shown masked: {shown}");
    assert!(shown.contains("api_token = [redacted"), "{shown}");

    // A document that claims the endpoint is previewed in full while its
    // body is only masked is refused before anything is shown.
    let mut forged: serde_json::Value = serde_json::from_slice(&std::fs::read(env.path(&document)).unwrap()).unwrap();
    forged.as_object_mut().unwrap().remove("previews");
    std::fs::write(env.path("forged.json"), serde_json::to_vec(&forged).unwrap()).unwrap();
    let out = alice_approves(&env, "forged.json", "forged.approval");
    assert_ne!(out.code(), 0);
    assert!(out.stderr().contains("(previewed in full) is masked"), "{}", out.stderr());
    assert!(!env.path("forged.approval").exists());

    // The operator loosens the endpoint to `full` while the proposal waits:
    // what its approvers saw masked stays masked in the evidence.
    let config = std::fs::read_to_string(env.path("runner.toml")).unwrap();
    std::fs::write(env.path("runner.toml"), config.replace("preview = \"redacted\"", "preview = \"full\"")).unwrap();
    env.sign_approval("approve", &document, "carol", "carol.approval");
    let run = env.exec_with(&capsule, &["alice.approval", "carol.approval"]);
    assert_eq!(run.outcome(), "committed", "{:#}", run.report);
    let intents = run.events_of("call-intent");
    assert!(intents.iter().any(|e| e["kept"] == "redacted" && e["phase"] == "apply"), "{intents:?}");
    let secret = rotated(&svc);
    assert!(!shown.contains(&secret), "{shown}");
    env.verify_offline();
    let holding = files_holding(&env.path(""), &secret);
    assert!(holding.is_empty(), "the credential is kept in {holding:?}");
}

/// `digest-only`: nothing of the body is kept or shown, yet the runner has
/// the exact bytes for the apply, and for a compensation at the next start
/// after a kill; once the run has ended, nothing keeps them.
#[test]
fn a_digest_only_endpoint_keeps_no_body_yet_applies_and_compensates_exactly() {
    let svc = TestService::start();
    let env = home(&svc);
    let config = std::fs::read_to_string(env.path("runner.toml")).unwrap();
    let config = config.replace("timeout = \"1s\"\n", "timeout = \"1s\"\npreview = \"digest-only\"\n");
    std::fs::write(env.path("runner.toml"), config).unwrap();
    let run = env.exec(&writer(&env, "ok", "rotate", 10_000));
    assert_eq!(run.outcome(), "committed", "{:#}", run.report);
    let secret = rotated(&svc);
    assert!(files_holding(&env.path(""), &secret).is_empty());
    // Nothing of a body is kept: no intent names one, no outcome keeps content.
    let (intents, outcomes) = (run.events_of("call-intent"), run.events_of("call-outcome"));
    assert_eq!((intents.len(), outcomes.len()), (3, 3));
    assert!(intents.iter().all(|e| e.get("body").is_none()), "{intents:?}");
    assert!(outcomes.iter().all(|e| e.get("content").is_none()), "{outcomes:?}");

    // Killed after its call: the compensation (the rotated value, which
    // only the run had) is sent exactly at the next start, then forgotten.
    let capsule = writer(&env, "apply-then-wait", "new", 60_000);
    exec_killed_after_its_call(&env, &capsule, &svc);
    assert!(
        !files_holding(&env.path("state/previews"), &secret).is_empty(),
        "the compensation's body waits beside the run, for the next start"
    );
    env.verify_offline();
    let puts: Vec<String> = svc.requests().into_iter().filter(|r| r.method == "PUT").map(|r| r.body).collect();
    assert_eq!(puts.len(), 3, "{puts:?}");
    assert_eq!(puts[2], puts[0], "the compensation restored the rotated value, exactly");
    let holding = files_holding(&env.path(""), &secret);
    assert!(holding.is_empty(), "the credential is kept in {holding:?}");
}
