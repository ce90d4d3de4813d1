//! Signed webhooks end to end: the real `edge-runner serve`, and a real
//! HTTPS receiver in this process (hyper + rustls, certificate from the
//! test's CA, which is also the runner's own CA and so its default trust
//! anchor for webhooks) that records what it is sent.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use edge_core::note::NoteVerifier;
use edge_core::webhook::{self, WebhookError, verify_webhook};
use edge_runner::server::client::Client;
use http_body_util::{BodyExt as _, Full};
use hyper::StatusCode;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType};
use serde_json::{Value, json};

use crate::harness::{BIN, Env};

const AGENT: &str = "spiffe://test.example/agent/notify";
const CONSOLE: &str = "https://approvals.test:8444";

/// The test's CA (`tls/ca.pem`: the runner's client CA) and, issued by it,
/// the runner's server certificate, the agent's and an approver's client
/// certificates, and the receiver's server certificate (`hook`).
fn pki(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let now = time::OffsetDateTime::now_utc();
    let key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.distinguished_name.push(DnType::CommonName, "notify test CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    std::fs::write(dir.join("ca.pem"), ca.self_signed(&key).unwrap().pem()).unwrap();
    let issuer = Issuer::new(ca, key);
    let leaf = |name: &str, san: SanType| {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, name);
        p.subject_alt_names = vec![san];
        p.not_before = now - time::Duration::days(1);
        // Beyond `check`'s 30-day warning: `serve` starts without one.
        p.not_after = now + time::Duration::days(90);
        std::fs::write(dir.join(format!("{name}.pem")), p.signed_by(&key, &issuer).unwrap().pem()).unwrap();
        crate::harness::write_key(&dir.join(format!("{name}.key")), &key.serialize_pem());
    };
    let local = || SanType::IpAddress("127.0.0.1".parse().unwrap());
    leaf("server", local());
    leaf("hook", local());
    leaf("agent", SanType::URI(AGENT.try_into().unwrap()));
    leaf("approver", SanType::URI("spiffe://test.example/people/alice".try_into().unwrap()));
}

/// A runner home like the server tests' (tier 0 on `data`, tier 2 with
/// `config`, approvers alice, carol and bob), serving on 127.0.0.1:0, with
/// `notify` appended.
fn setup(notify: &str) -> Env {
    let env = Env::new();
    env.write_policy_config("log-volume", &[("config", "payments-config", true)]);
    env.write_approvers(&[("alice", &["sre"]), ("carol", &["payments-owner"]), ("bob", &["sre"])], "");
    pki(&env.path("tls"));
    let mut config = std::fs::read_to_string(env.path("runner.toml")).unwrap();
    config.push_str(&format!(
        "\n[server]\nlisten = \"127.0.0.1:0\"\ncert = \"tls/server.pem\"\nkey = \"tls/server.key\"\n\
         client_ca = \"tls/ca.pem\"\nagents = [\"{AGENT}\"]\n{}\n{notify}",
        crate::server::ACCESS
    ));
    std::fs::write(env.path("runner.toml"), config).unwrap();
    env
}

fn capsule(env: &Env, tier2: bool) -> PathBuf {
    let extra = if tier2 { "[[mounts]]\nname = \"config\"\nwritable = true\n" } else { "" };
    env.capsule(
        &format!("notify-{tier2}"),
        test_programs::HOSTILE,
        &Env::hostile_manifest("none", extra),
        Some("agent"),
    )
}

/// A running `edge-runner serve`; killed on drop.
struct Server {
    child: Child,
    url: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn start(env: &Env) -> Server {
        let mut child = Command::new(BIN)
            .args(["serve", "--config", "runner.toml"])
            .current_dir(env.path(""))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let url = line.trim().strip_prefix("listening on ").unwrap_or_else(|| panic!("serve printed `{line}`")).into();
        Server { child, url }
    }

    fn client(&self, env: &Env, who: &str) -> Client {
        let tls = env.path("tls");
        Client::new(&self.url, &tls.join("ca.pem"), &tls.join(format!("{who}.pem")), &tls.join(format!("{who}.key")))
            .unwrap()
    }

    /// Submit a capsule file; the answer's JSON.
    fn submit(&self, env: &Env, capsule: &Path) -> Value {
        let bytes = std::fs::read(capsule).unwrap();
        let body =
            serde_json::to_vec(&json!({ "capsule": base64::engine::general_purpose::STANDARD.encode(bytes) })).unwrap();
        rt().block_on(async {
            let r = self.client(env, "agent").post("/v1/proposals", body, "application/json").await.unwrap();
            assert_eq!(r.status, StatusCode::CREATED, "{}", r.error_message());
            r.json().unwrap()
        })
    }

    fn get(&self, env: &Env, path: &str) -> Bytes {
        rt().block_on(async {
            // The operator's certificate: agents may not read the evidence.
            let r = self.client(env, "approver").get(path).await.unwrap();
            assert_eq!(r.status, StatusCode::OK, "{path}: {}", r.error_message());
            r.body
        })
    }

    /// Every evidence record, from an export over the API, verified in full.
    fn evidence(&self, env: &Env) -> Vec<edge_core::evidence::Record> {
        let bundle = self.get(env, "/v1/evidence/export");
        let keys = edge_evidence::parse_keys(&runner_key(env)).unwrap();
        edge_evidence::verify(&bundle, &keys, edge_evidence::Level::Full).unwrap().records
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

fn runner_key(env: &Env) -> String {
    env.cli(&["evidence", "runner-key", "--config", "runner.toml"]).success().stdout()
}

/// One request as the receiver got it.
#[derive(Debug, Clone)]
struct Got {
    target: String,
    headers: BTreeMap<String, String>,
    body: Vec<u8>,
}

impl Got {
    fn header(&self, name: &str) -> &str {
        self.headers.get(&name.to_ascii_lowercase()).map_or("", String::as_str)
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }

    fn verify(&self, key: &NoteVerifier) -> Result<webhook::Payload, WebhookError> {
        let now = u64::try_from(jiff::Timestamp::now().as_second()).unwrap();
        let ts = self.header(webhook::HEADER_TIMESTAMP);
        verify_webhook(key, ts, &self.body, self.header(webhook::HEADER_SIGNATURE), now, 300)?.payload()
    }
}

/// A receiver on 127.0.0.1 — HTTPS with the certificate `tls/hook.pem`,
/// or plain HTTP without `tls` — that answers the statuses in `answers`,
/// then 200, and records every request.
struct Receiver {
    url: String,
    got: Arc<Mutex<Vec<Got>>>,
    _rt: tokio::runtime::Runtime,
}

impl Receiver {
    fn start(tls: &Path, answers: &[u16]) -> Receiver {
        Self::serve(Some(tls), answers)
    }

    fn plain() -> Receiver {
        Self::serve(None, &[])
    }

    fn serve(tls: Option<&Path>, answers: &[u16]) -> Receiver {
        use rustls::pki_types::pem::PemObject as _;
        let acceptor = tls.map(|tls| {
            let certs = rustls::pki_types::CertificateDer::pem_file_iter(tls.join("hook.pem"))
                .unwrap()
                .collect::<Result<Vec<_>, _>>()
                .unwrap();
            let key = rustls::pki_types::PrivateKeyDer::from_pem_file(tls.join("hook.key")).unwrap();
            let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
            let mut config = rustls::ServerConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(certs, key)
                .unwrap();
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
            tokio_rustls::TlsAcceptor::from(Arc::new(config))
        });
        let scheme = if acceptor.is_some() { "https" } else { "http" };
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
        let port = listener.local_addr().unwrap().port();
        let got = Arc::new(Mutex::new(Vec::new()));
        let answers = Arc::new(Mutex::new(answers.iter().copied().collect::<VecDeque<u16>>()));
        let (seen, left) = (got.clone(), answers);
        rt.spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, seen, left) = (acceptor.clone(), seen.clone(), left.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let (seen, left) = (seen.clone(), left.clone());
                        async move {
                            let target = req.uri().to_string();
                            let headers = req
                                .headers()
                                .iter()
                                .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
                                .collect();
                            let body = req.into_body().collect().await?.to_bytes().to_vec();
                            seen.lock().unwrap().push(Got { target, headers, body });
                            let status = left.lock().unwrap().pop_front().unwrap_or(200);
                            let mut resp = hyper::Response::new(Full::new(Bytes::from_static(b"{}")));
                            *resp.status_mut() = StatusCode::from_u16(status).unwrap();
                            Ok::<_, hyper::Error>(resp)
                        }
                    });
                    let http = hyper::server::conn::http1::Builder::new();
                    match acceptor {
                        Some(acceptor) => {
                            let Ok(tls) = acceptor.accept(tcp).await else { return };
                            let _ = http.serve_connection(hyper_util::rt::TokioIo::new(tls), service).await;
                        }
                        None => {
                            let _ = http.serve_connection(hyper_util::rt::TokioIo::new(tcp), service).await;
                        }
                    }
                });
            }
        });
        Receiver { url: format!("{scheme}://127.0.0.1:{port}/hooks/edge?token=s3cret"), got, _rt: rt }
    }

    /// Wait until `n` requests came (at most 20 s); all of them.
    fn wait_for(&self, n: usize) -> Vec<Got> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let got = self.got.lock().unwrap().clone();
            if got.len() >= n {
                return got;
            }
            assert!(Instant::now() < deadline, "the receiver got {} of {n} requests: {got:#?}", got.len());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// `edge-runner webhook verify`, the body on stdin; its exit code.
fn cli_verify(env: &Env, got: &Got, body: &[u8]) -> i32 {
    let mut child = Command::new(BIN)
        .args(["webhook", "verify", "--key", "runner.vkey", "--timestamp"])
        .arg(got.header(webhook::HEADER_TIMESTAMP))
        .arg("--signature")
        .arg(got.header(webhook::HEADER_SIGNATURE))
        .current_dir(env.path(""))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(body).unwrap();
    child.wait().unwrap().code().unwrap_or(-1)
}

#[test]
fn a_waiting_proposal_is_announced_signed_with_its_link_and_without_content_then_approved_and_committed() {
    let env = setup("");
    let receiver = Receiver::start(&env.path("tls"), &[]);
    let mut config = std::fs::read_to_string(env.path("runner.toml")).unwrap();
    config.push_str(&format!(
        "[notify]\nconsole_url = \"{CONSOLE}/\"\n\n[[notify.webhooks]]\nurl = \"{}\"\n",
        receiver.url
    ));
    std::fs::write(env.path("runner.toml"), config).unwrap();
    let vkey = runner_key(&env);
    std::fs::write(env.path("runner.vkey"), &vkey).unwrap();
    let key = NoteVerifier::parse(&vkey).unwrap();
    let server = Server::start(&env);

    let v = server.submit(&env, &capsule(&env, true));
    assert_eq!(v["state"], "awaiting-approval", "{v:#}");
    let id = v["id"].as_str().unwrap().to_owned();
    let got = receiver.wait_for(1);
    let n = &got[0];
    assert_eq!(n.target, "/hooks/edge?token=s3cret", "sent to the configured URL, query and all");
    let p = n.verify(&key).expect("the signature verifies with the runner's key");
    assert_eq!(p.event, "awaiting-approval");
    assert_eq!(p.proposal, id);
    assert_eq!((p.state.as_str(), p.tier, p.approvals_required), ("awaiting-approval", Some(2), 2));
    assert_eq!(p.runner, "test-runner");
    assert_eq!(p.link.as_deref(), Some(format!("{CONSOLE}/proposals/{id}").as_str()));
    let c = p.capsule.unwrap();
    assert_eq!((c.name.as_str(), c.version.as_str()), ("hostile", "0.0.1"));
    assert_eq!(n.header(webhook::HEADER_KEY), vkey.trim());
    assert_eq!(n.header(webhook::HEADER_DELIVERY), p.id);
    assert_eq!(n.header("content-type"), "application/json");
    // Exactly these fields: no plan text, no diff, no file content.
    let fields: BTreeSet<String> = n.json().as_object().unwrap().keys().cloned().collect();
    let expected = [
        "schema",
        "id",
        "event",
        "runner",
        "proposal",
        "state",
        "tier",
        "capsule",
        "approvals_required",
        "link",
        "at",
        "record",
    ];
    assert_eq!(fields, expected.iter().map(|f| (*f).to_owned()).collect(), "{}", n.json());
    let text = String::from_utf8_lossy(&n.body);
    for leaked in ["ok.txt", "create ok.txt", "the test asks", "\"ok\""] {
        assert!(!text.contains(leaked), "the body carries `{leaked}`: {text}");
    }

    // A receiver's check refuses a tampered body, a replayed old
    // timestamp and another key; the command line agrees.
    let ts = n.header(webhook::HEADER_TIMESTAMP);
    let sig = n.header(webhook::HEADER_SIGNATURE);
    let now: u64 = ts.parse().unwrap();
    let tampered = text.replace("\"tier\":2", "\"tier\":0");
    assert_ne!(tampered, text);
    assert_eq!(verify_webhook(&key, ts, tampered.as_bytes(), sig, now, 300).err(), Some(WebhookError::BadSignature));
    assert!(matches!(verify_webhook(&key, ts, &n.body, sig, now + 301, 300), Err(WebhookError::Stale { .. })));
    let other = edge_core::signature::CapsuleSigningKey::generate().note_signer("test-runner").unwrap();
    let other = other.verifier();
    assert_eq!(verify_webhook(other, ts, &n.body, sig, now, 300).err(), Some(WebhookError::BadSignature));
    assert_eq!(cli_verify(&env, n, &n.body), 0);
    assert_eq!(cli_verify(&env, n, tampered.as_bytes()), 3);

    // Approved by alice and carol (over the API): `approved` (the quorum),
    // then `committed`, each once.
    for who in ["alice", "carol"] {
        let (principal, key_file, out) = (format!("{who}@bank.example"), format!("keys/{who}"), format!("{who}.json"));
        let flags = crate::server::approver_flags(&server.url);
        let rest = ["--principal", &principal, "--ssh-key", &key_file, "--yes", "-o", &out];
        env.cli(&[&["approve", &id][..], &flags, &rest].concat()).success();
    }
    let got = receiver.wait_for(3);
    let events: Vec<(String, String)> =
        got.iter().map(|g| g.verify(&key).unwrap()).map(|p| (p.event, p.state)).collect();
    let expected = [("awaiting-approval", "awaiting-approval"), ("approved", "approved"), ("committed", "committed")];
    assert_eq!(events, expected.map(|(e, s)| (e.to_owned(), s.to_owned())));
    let ids: BTreeSet<&str> = got.iter().map(|g| g.header(webhook::HEADER_DELIVERY)).collect();
    assert_eq!(ids.len(), 3, "each notification has its own delivery id");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(receiver.got.lock().unwrap().len(), 3, "nothing announced twice");
}

#[test]
fn a_receiver_that_fails_twice_gets_the_notification_on_the_third_attempt() {
    let env = setup("");
    let receiver = Receiver::start(&env.path("tls"), &[500, 503]);
    // Plain HTTP to loopback needs no switch; to another host it does, and
    // that is recorded (this one is never sent anything: `expired` only).
    let plain = Receiver::plain();
    let mut config = std::fs::read_to_string(env.path("runner.toml")).unwrap();
    config.push_str(&format!(
        "[[notify.webhooks]]\nurl = \"{}\"\nevents = [\"committed\"]\ninitial_backoff_ms = 50\n\n\
         [[notify.webhooks]]\nurl = \"{}\"\nevents = [\"committed\"]\n\n\
         [[notify.webhooks]]\nurl = \"http://192.0.2.1/h\"\nevents = [\"expired\"]\ndangerous_plain_http = true\n",
        receiver.url, plain.url
    ));
    std::fs::write(env.path("runner.toml"), config).unwrap();
    let key = NoteVerifier::parse(&runner_key(&env)).unwrap();
    let server = Server::start(&env);

    let v = server.submit(&env, &capsule(&env, false));
    assert_eq!(v["state"], "committed", "{v:#}");
    let got = receiver.wait_for(3);
    assert!(got.iter().all(|g| g.body == got[0].body), "every attempt sends the same body");
    let ids: BTreeSet<&str> = got.iter().map(|g| g.header(webhook::HEADER_DELIVERY)).collect();
    assert_eq!(ids.len(), 1, "and the same delivery id");
    for g in &got {
        assert_eq!(g.verify(&key).unwrap().event, "committed", "each attempt is signed");
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(receiver.got.lock().unwrap().len(), 3, "delivered on the third attempt: no fourth");
    let metrics = String::from_utf8(server.get(&env, "/metrics").to_vec()).unwrap();
    let path_digest = edge_core::Sha256Digest::of(b"/hooks/edge").hex();
    let hook = format!("{}/…(path sha256:{})", receiver.url.split("/hooks").next().unwrap(), &path_digest[..12]);
    for line in [
        format!("edge_runner_webhook_notifications_total{{webhook=\"{hook}\",outcome=\"delivered\"}} 1"),
        format!("edge_runner_webhook_notifications_total{{webhook=\"{hook}\",outcome=\"failed\"}} 0"),
        format!("edge_runner_webhook_attempts_total{{webhook=\"{hook}\"}} 3"),
    ] {
        assert!(metrics.contains(&line), "no `{line}` in\n{metrics}");
    }
    assert!(!metrics.contains("s3cret") && !metrics.contains("/hooks"), "the URL's path and query never show");
    let over_http = plain.wait_for(1);
    assert_eq!(over_http[0].verify(&key).unwrap().event, "committed");
    let records = server.evidence(&env);
    assert!(records.iter().all(|r| r.event_type() != "notification-failed"));
    let insecure: Vec<&edge_core::evidence::Event> =
        records.iter().filter(|r| r.run == "runner" && r.event_type() == "insecure").map(|r| &r.event).collect();
    assert_eq!(
        insecure,
        [&edge_core::evidence::Event::Insecure {
            switches: vec![format!(
                "dangerous_plain_http (http://192.0.2.1:80/…(path sha256:{}))",
                &edge_core::Sha256Digest::of(b"/h").hex()[..12]
            )]
        }]
    );
}

#[test]
fn a_receiver_that_does_not_answer_neither_slows_runs_nor_goes_unrecorded() {
    // Accepts connections (the kernel does) and never answers a byte.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("https://127.0.0.1:{}/hooks/edge?token=s3cret", silent.local_addr().unwrap().port());
    let env = setup(&format!(
        "[[notify.webhooks]]\nurl = \"{url}\"\nevents = [\"committed\"]\ntimeout_secs = 4\nmax_attempts = 2\n\
         initial_backoff_ms = 50\n"
    ));
    let server = Server::start(&env);

    let t0 = Instant::now();
    let v = server.submit(&env, &capsule(&env, false));
    let took = t0.elapsed();
    assert_eq!(v["state"], "committed", "{v:#}");
    assert!(took < Duration::from_secs(4), "the run waited for the webhook: {took:?}");
    // Still trying when the run has answered: nothing is recorded yet.
    let failed = |records: &[edge_core::evidence::Record]| {
        records.iter().filter(|r| r.event_type() == "notification-failed").cloned().collect::<Vec<_>>()
    };
    assert!(failed(&server.evidence(&env)).is_empty());

    // Given up after two attempts (4 s each): recorded, and the export verifies.
    let deadline = Instant::now() + Duration::from_secs(20);
    let recorded = loop {
        let f = failed(&server.evidence(&env));
        if !f.is_empty() {
            break f;
        }
        assert!(Instant::now() < deadline, "the failed notification was never recorded");
        std::thread::sleep(Duration::from_millis(250));
    };
    let r = &recorded[0];
    assert_eq!(r.run, "runner");
    let edge_core::evidence::Event::NotificationFailed { url: shown, event, proposal, attempts, error } = &r.event
    else {
        panic!("{r:?}")
    };
    // Scheme, host and port; the path (where chat webhooks keep their
    // secret) only as a digest; never the query.
    let path_digest = edge_core::Sha256Digest::of(b"/hooks/edge").hex();
    let origin = url.split("/hooks").next().unwrap();
    assert_eq!(shown, &format!("{origin}/…(path sha256:{})", &path_digest[..12]));
    assert!(!shown.contains("hooks") && !shown.contains("s3cret"), "{shown}");
    assert_eq!((event.as_str(), proposal.as_str(), *attempts), ("committed", v["id"].as_str().unwrap(), 2));
    assert!(error.contains("no answer within 4s"), "{error}");
    let bundle = server.get(&env, "/v1/evidence/export");
    assert!(!String::from_utf8_lossy(&bundle).contains("s3cret"), "the URL's query is never recorded");
    std::fs::write(env.path("full.bundle"), &bundle).unwrap();
    std::fs::write(env.path("runner.vkey"), runner_key(&env)).unwrap();
    env.cli(&["evidence", "verify", "full.bundle", "--key", "runner.vkey"]).success();
    let metrics = String::from_utf8(server.get(&env, "/metrics").to_vec()).unwrap();
    assert!(metrics.contains("outcome=\"failed\"} 1"), "{metrics}");

    // A notification still being tried when the runner stops does not hold
    // the stop up, and is recorded as dropped.
    std::fs::remove_file(env.path("data/ok.txt")).unwrap();
    let v = server.submit(&env, &capsule(&env, false));
    assert_eq!(v["state"], "committed", "{v:#}");
    let mut server = server;
    let t0 = Instant::now();
    let st = Command::new("kill").args(["-TERM", &server.child.id().to_string()]).status().unwrap();
    assert!(st.success());
    let deadline = t0 + Duration::from_secs(10);
    while server.child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "serve did not stop");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(t0.elapsed() < Duration::from_millis(2500), "stopping took {:?}", t0.elapsed());
    let all = env.evidence();
    let dropped: Vec<&Value> =
        all.as_array().unwrap().iter().filter(|r| r["event"]["type"] == "notification-failed").collect();
    assert_eq!(dropped.len(), 2, "{dropped:#?}");
    assert_eq!(dropped[1]["event"]["proposal"], v["id"]);
    assert!(dropped[1]["event"]["error"].as_str().unwrap().contains("the runner stopped"), "{:#}", dropped[1]);
    drop(silent);
}
