//! `edge-runner serve` end to end over real mutual TLS on 127.0.0.1:0:
//! who may connect and submit, the lifecycle per tier with approvals posted
//! over the API, restarts (a waiting proposal survives; a killed apply is
//! recovered), oversized bodies, slow clients and `429` under overload.

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use edge_runner::server::client::{Client, Reply};
use hyper::StatusCode;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType};
use serde_json::{Value, json};

use crate::harness::{BIN, Env};

const AGENT: &str = "spiffe://test.example/agent/remediator";

/// A running `edge-runner serve`; killed on drop.
pub(crate) struct Server {
    child: Child,
    pub(crate) url: String,
    /// What `serve` printed at start.
    pub(crate) lines: Vec<String>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    pub(crate) fn start(env: &Env) -> Server {
        Self::start_lines(env, 1)
    }

    /// Start `serve` and read its first `n` lines (the last names the API).
    pub(crate) fn start_lines(env: &Env, n: usize) -> Server {
        Self::start_with(env, n, Stdio::null(), &[])
    }

    /// Start `serve` with its standard error going to `stderr` and extra
    /// environment variables; read its first `n` lines.
    pub(crate) fn start_with(env: &Env, n: usize, stderr: Stdio, envs: &[(&str, &str)]) -> Server {
        let mut child = Command::new(BIN)
            .args(["serve", "--config", "runner.toml"])
            .current_dir(env.path(""))
            .envs(envs.iter().copied())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut lines = Vec::new();
        for _ in 0..n {
            let mut line = String::new();
            out.read_line(&mut line).unwrap();
            lines.push(line.trim().to_owned());
        }
        let last = lines.last().cloned().unwrap_or_default();
        let url = last.strip_prefix("listening on ").unwrap_or_else(|| panic!("serve printed `{last}`")).to_owned();
        Server { child, url, lines }
    }

    /// Send a signal by name (`HUP`, `TERM`) with kill(1).
    pub(crate) fn signal(&self, name: &str) {
        let st = Command::new("kill").args([&format!("-{name}"), &self.child.id().to_string()]).status().unwrap();
        assert!(st.success());
    }

    /// Whether the process is still running.
    pub(crate) fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// SIGTERM, and wait for a clean exit.
    pub(crate) fn stop(mut self) {
        self.signal("TERM");
        let code = self.child.wait().unwrap();
        assert!(code.success(), "serve exited with {code}");
    }

    /// SIGKILL: no chance to finish anything.
    pub(crate) fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// `/metrics`, read as the approver (who may).
    pub(crate) fn metrics(&self, env: &Env) -> String {
        rt().block_on(async {
            let r = self.client(env, "approver").get("/metrics").await.unwrap();
            assert_eq!(r.status, StatusCode::OK);
            String::from_utf8(r.body.to_vec()).unwrap()
        })
    }

    pub(crate) fn client(&self, env: &Env, who: &str) -> Client {
        let tls = env.path("tls");
        Client::new(&self.url, &tls.join("ca.pem"), &tls.join(format!("{who}.pem")), &tls.join(format!("{who}.key")))
            .unwrap()
    }
}

/// Wait up to `secs` seconds until the log file `log` holds `needle`; its text then.
fn wait_for_log(log: &Path, needle: &str, secs: u64) -> String {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let text = std::fs::read_to_string(log).unwrap();
        if text.contains(needle) {
            return text;
        }
        assert!(Instant::now() < deadline, "no `{needle}` in {}:\n{text}", log.display());
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The client flags of a command run as the approver against the runner
/// at `url` (`--server … --ca … --cert … --key …`).
pub(crate) fn approver_flags(url: &str) -> [&str; 8] {
    ["--server", url, "--ca", "tls/ca.pem", "--cert", "tls/approver.pem", "--key", "tls/approver.key"]
}

pub(crate) fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

/// Development PKI for the test: a CA with the server and clients `agent`
/// (allowed), `intruder` (valid, not allowed to submit), `expired`; and
/// `foreign`, an allowed identity from another CA.
pub(crate) fn pki(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let now = time::OffsetDateTime::now_utc();
    let ca = |cn: &str| {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        let cert = p.self_signed(&key).unwrap();
        (cert.pem(), Issuer::new(p, key))
    };
    let (ca_pem, issuer) = ca("test CA");
    let (_, other) = ca("another CA");
    std::fs::write(dir.join("ca.pem"), ca_pem).unwrap();
    let leaf_named = |name: &str, cn: &str, issuer: &Issuer<'_, KeyPair>, sans: Vec<SanType>, days: (i64, i64)| {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.subject_alt_names = sans;
        p.not_before = now + time::Duration::days(days.0);
        p.not_after = now + time::Duration::days(days.1);
        let cert = p.signed_by(&key, issuer).unwrap();
        std::fs::write(dir.join(format!("{name}.pem")), cert.pem()).unwrap();
        crate::harness::write_key(&dir.join(format!("{name}.key")), &key.serialize_pem());
    };
    let leaf = |name: &str, issuer: &Issuer<'_, KeyPair>, sans: Vec<SanType>, days: (i64, i64)| {
        leaf_named(name, name, issuer, sans, days);
    };
    let uri = |s: &str| SanType::URI(s.try_into().unwrap());
    leaf(
        "server",
        &issuer,
        vec![SanType::IpAddress("127.0.0.1".parse().unwrap()), SanType::DnsName("localhost".try_into().unwrap())],
        // Beyond `check`'s 30-day warning: `serve` starts without one.
        (-1, 90),
    );
    leaf("agent", &issuer, vec![uri(AGENT)], (-1, 30));
    leaf("intruder", &issuer, vec![uri("spiffe://test.example/agent/intruder")], (-1, 30));
    leaf("approver", &issuer, vec![uri("spiffe://test.example/people/alice")], (-1, 30));
    leaf("expired", &issuer, vec![uri(AGENT)], (-30, -1));
    leaf("foreign", &other, vec![uri(AGENT)], (-1, 30));
    // Valid, but its identity (the common name: no SPIFFE SAN) is text
    // that tries to drive a terminal and forge a log line.
    leaf_named("hostile-cn", HOSTILE_CN, &issuer, Vec::new(), (-1, 30));
}

/// The `hostile-cn` certificate's common name.
pub(crate) const HOSTILE_CN: &str = "evil\u{1b}[2J\u{202e}txt.exe\nINFO edge_runner::run: run finished";

/// Who may read what on the test runners: alice (the `approver`
/// certificate) is the operator; agents see their own proposals only.
/// (Dotted keys, so a test may append more `[server]` keys after it.)
pub(crate) const ACCESS: &str = "roles.operators = [\"spiffe://test.example/people/alice\"]\n\
     access.proposals = [\"role:operators\"]\naccess.evidence = [\"role:operators\"]\n\
     access.metrics = [\"role:operators\"]\naccess.reload = [\"role:operators\"]\n";

/// A runner home: `data` on the log volume (tier 0 on its own), `config` on
/// the payments config (tier 2 when a capsule is granted it), approvers, and
/// a [server] on 127.0.0.1:0.
pub(crate) fn setup(queue: usize) -> Env {
    let env = Env::new();
    env.write_policy_config("log-volume", &[("config", "payments-config", true)]);
    env.write_approvers(&[("alice", &["sre"]), ("carol", &["payments-owner"]), ("bob", &["sre"])], "");
    pki(&env.path("tls"));
    let mut config = std::fs::read_to_string(env.path("runner.toml")).unwrap();
    config.push_str(&format!(
        "\n[server]\nlisten = \"127.0.0.1:0\"\ncert = \"tls/server.pem\"\nkey = \"tls/server.key\"\n\
         client_ca = \"tls/ca.pem\"\nagents = [\"{AGENT}\"]\nmax_body_kib = 4096\nqueue = {queue}\n\
         request_timeout = \"2s\"\n{ACCESS}"
    ));
    std::fs::write(env.path("runner.toml"), config).unwrap();
    env
}

/// [`setup`], with `runs` runs in progress at most (`server.max_concurrent_runs`).
pub(crate) fn setup_running(queue: usize, runs: usize) -> Env {
    let env = setup(queue);
    let config = std::fs::read_to_string(env.path("runner.toml")).unwrap();
    std::fs::write(env.path("runner.toml"), format!("{config}max_concurrent_runs = {runs}\n")).unwrap();
    env
}

/// A tier-0 capsule (writes `data/ok.txt`) or, granted `config` too, a tier-2 one.
pub(crate) fn capsule(env: &Env, attack: &str, tier2: bool) -> PathBuf {
    let extra = if tier2 { "[[mounts]]\nname = \"config\"\nwritable = true\n" } else { "" };
    let name = format!("srv-{attack}-{tier2}");
    env.capsule(&name, test_programs::HOSTILE, &Env::hostile_manifest(attack, extra), Some("agent"))
}

fn submission(path: &Path) -> Vec<u8> {
    let bytes = std::fs::read(path).unwrap();
    serde_json::to_vec(&json!({ "capsule": base64::engine::general_purpose::STANDARD.encode(bytes) })).unwrap()
}

/// Submit `path` as the agent from a thread of its own, with its own client;
/// the reply, and when it came.
pub(crate) fn submit_in_thread(server: &Server, env: &Env, path: &Path) -> std::thread::JoinHandle<(Reply, Instant)> {
    let (url, tls, body) = (server.url.clone(), env.path("tls"), submission(path));
    std::thread::spawn(move || {
        let r = rt().block_on(async {
            let mut c = Client::new(&url, &tls.join("ca.pem"), &tls.join("agent.pem"), &tls.join("agent.key")).unwrap();
            c.post("/v1/proposals", body, "application/json").await.unwrap()
        });
        (r, Instant::now())
    })
}

pub(crate) async fn submit(c: &mut Client, path: &Path) -> Reply {
    c.post("/v1/proposals", submission(path), "application/json").await.unwrap()
}

pub(crate) async fn show(c: &mut Client, id: &str) -> Value {
    let r = c.get(&format!("/v1/proposals/{id}")).await.unwrap();
    assert_eq!(r.status, StatusCode::OK, "{}", r.error_message());
    r.json().unwrap()
}

/// Sign an approval (or rejection) of a proposal fetched over the API.
pub(crate) async fn sign(env: &Env, c: &mut Client, id: &str, who: &str, verb: &str) -> Vec<u8> {
    let doc = c.get(&format!("/v1/proposals/{id}/document")).await.unwrap();
    assert_eq!(doc.status, StatusCode::OK, "{}", doc.error_message());
    let doc_path = env.path(&format!("{id}.json"));
    std::fs::write(&doc_path, &doc.body).unwrap();
    // The preview travels with it: `approve` refuses to sign without it.
    let preview = c.get(&format!("/v1/proposals/{id}/preview")).await.unwrap();
    if preview.status == StatusCode::OK {
        std::fs::write(env.path(&format!("{id}.preview.json")), &preview.body).unwrap();
    }
    let out = format!("{who}-{verb}-{id}.json");
    env.sign_approval(verb, doc_path.to_str().unwrap(), who, &out);
    std::fs::read(env.path(&out)).unwrap()
}

#[test]
fn only_clients_with_a_valid_certificate_connect_and_only_listed_agents_submit() {
    let env = setup(64);
    let server = Server::start(&env);
    let tier0 = capsule(&env, "none", false);
    rt().block_on(async {
        // Valid certificate: health, readiness, metrics.
        let mut ok = server.client(&env, "intruder");
        assert_eq!(ok.get("/healthz").await.unwrap().status, StatusCode::OK);
        assert_eq!(ok.get("/readyz").await.unwrap().status, StatusCode::OK);
        // …but not listed in server.agents: may not submit, and nothing runs.
        let r = submit(&mut ok, &tier0).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN);
        assert!(r.error_message().contains("server.agents"), "{}", r.error_message());

        // From another CA, or expired: the handshake is refused.
        for who in ["foreign", "expired"] {
            let mut c = server.client(&env, who);
            assert!(c.get("/healthz").await.is_err(), "{who} got through");
        }
        // No client certificate at all.
        assert!(
            no_client_cert(&server.url, &env.path("tls/ca.pem")).await,
            "a client without a certificate got through"
        );
    });
    assert!(!env.path("data/ok.txt").exists());
    assert!(env.evidence().as_array().unwrap().iter().all(|r| r["event"]["type"] != "submission"));
}

/// Connect with TLS but present no client certificate; true if refused.
pub(crate) async fn no_client_cert(url: &str, ca: &Path) -> bool {
    use rustls::pki_types::pem::PemObject as _;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let config =
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    let addr = url.strip_prefix("https://").unwrap();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let Ok(mut tls) = connector.connect(name, tcp).await else { return true };
    // TLS 1.3: the server checks the client's (missing) certificate after
    // the client finished; the refusal shows on the first read.
    if tls.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n").await.is_err() {
        return true;
    }
    let mut buf = Vec::new();
    match tls.read_to_end(&mut buf).await {
        Err(_) => true,
        Ok(_) => !String::from_utf8_lossy(&buf).contains("200 OK"),
    }
}

#[test]
fn tier_0_runs_through_and_tier_2_waits_for_approvals_posted_over_the_api() {
    let env = setup(64);
    let server = Server::start(&env);
    let (tier0, tier2) = (capsule(&env, "none", false), capsule(&env, "none", true));
    rt().block_on(async {
        let mut agent = server.client(&env, "agent");
        let r = submit(&mut agent, &tier0).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.error_message());
        let v = r.json().unwrap();
        assert_eq!(v["state"], "committed", "{v:#}");
        assert_eq!(v["decision"]["tier"], 0);
        assert_eq!(v["admission"]["admitted"], true);
        assert_eq!(std::fs::read_to_string(env.path("data/ok.txt")).unwrap(), "ok");
        std::fs::remove_file(env.path("data/ok.txt")).unwrap();
        let p = show(&mut agent, v["id"].as_str().unwrap()).await;
        assert_eq!(p["submitted_by"], AGENT);

        // Tier 2: planned, waiting; nothing written.
        let v = submit(&mut agent, &tier2).await.json().unwrap();
        assert_eq!(v["state"], "awaiting-approval", "{v:#}");
        assert_eq!(v["decision"]["tier"], 2);
        let id = v["id"].as_str().unwrap().to_owned();
        assert!(!env.path("data/ok.txt").exists());
        let waiting = agent.get("/v1/proposals?state=awaiting-approval").await.unwrap().json().unwrap();
        assert_eq!(waiting["proposals"].as_array().unwrap().len(), 1);

        // Approvals can be posted by anyone with a certificate: the signature counts.
        let mut approver = server.client(&env, "approver");
        let alice = sign(&env, &mut approver, &id, "alice", "approve").await;
        let r =
            approver.post(&format!("/v1/proposals/{id}/approvals"), alice.clone(), "application/json").await.unwrap();
        assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.error_message());
        let v = r.json().unwrap();
        assert_eq!(v["status"]["quorum"], "pending", "{v:#}");
        assert!(v.get("run").is_none());
        // The proposal view: the diff as previewed, who approved and
        // whether it counted, what is still needed, when it expires.
        let p = show(&mut agent, &id).await;
        assert_eq!(p["state"], "awaiting-approval", "{p:#}");
        assert!(p["expires_at"].as_u64().is_some(), "{p:#}");
        let lines = &p["files"][0]["lines"];
        assert!(lines.as_array().unwrap().iter().any(|l| l["kind"] == "added" && l["text"] == "ok"), "{p:#}");
        let q = &p["quorum"];
        assert_eq!(q["approvals"][0]["principal"], "alice@bank.example", "{q:#}");
        assert_eq!(q["approvals"][0]["counted"], true, "{q:#}");
        assert_eq!(q["approvals"][0]["roles"][0], "sre", "{q:#}");
        assert!(q["needed"].as_str().unwrap().starts_with("1 more approval"), "{q:#}");
        // Junk, a forged approval and one for another proposal are not kept.
        let forged = String::from_utf8(alice.clone()).unwrap().replace("alice@bank.example", "bob@bank.example");
        let other = String::from_utf8(alice.clone()).unwrap().replace(&id, "p-0000000000000-00000000");
        for bad in [b"not an approval".to_vec(), forged.into_bytes(), other.into_bytes()] {
            let r = approver.post(&format!("/v1/proposals/{id}/approvals"), bad, "application/json").await.unwrap();
            assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.error_message());
            assert!(r.error_message().contains("not kept"), "{}", r.error_message());
        }
        // An oversized approval is refused at the API before it is read (413).
        let r = approver
            .post(&format!("/v1/proposals/{id}/approvals"), vec![b' '; 100 << 10], "application/json")
            .await
            .unwrap();
        assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", r.error_message());
        let kept = std::fs::read_dir(env.path(&format!("state/proposals/{id}.approvals"))).unwrap().count();
        assert_eq!(kept, 1, "only the valid approval is on disk");
        // The same approval again does not count twice.
        let v = approver.post(&format!("/v1/proposals/{id}/approvals"), alice, "application/json").await.unwrap();
        assert_eq!(v.json().unwrap()["status"]["count"], 1);

        let carol = sign(&env, &mut approver, &id, "carol", "approve").await;
        let v = approver.post(&format!("/v1/proposals/{id}/approvals"), carol, "application/json").await.unwrap();
        let v = v.json().unwrap();
        assert_eq!(v["status"]["quorum"], "met", "{v:#}");
        assert_eq!(v["run"]["state"], "committed", "{v:#}");
        assert_eq!(std::fs::read_to_string(env.path("data/ok.txt")).unwrap(), "ok");
        let p = show(&mut agent, &id).await;
        assert_eq!(p["state"], "committed", "{p:#}");
        assert_eq!(p["runs"].as_array().unwrap().len(), 2);
        assert_eq!(p["approvals"].as_array().unwrap().iter().filter(|a| a["accepted"] == true).count(), 2);
        // After the fact, from the evidence: both counted, nothing needed.
        let q = &p["quorum"];
        assert_eq!(q["approvals"].as_array().unwrap().iter().filter(|a| a["counted"] == true).count(), 2, "{q:#}");
        assert_eq!(q["needed"], "nothing: the quorum is met", "{q:#}");
        assert_eq!(p["verify"]["passed"], true, "{p:#}");

        // Executed: further approvals conflict.
        let bob = sign(&env, &mut approver, &id, "bob", "approve").await;
        let r = approver.post(&format!("/v1/proposals/{id}/approvals"), bob, "application/json").await.unwrap();
        assert_eq!(r.status, StatusCode::CONFLICT);

        // A rejection vetoes: the proposal is rejected and nothing runs.
        std::fs::remove_file(env.path("data/ok.txt")).unwrap();
        let id2 = submit(&mut agent, &tier2).await.json().unwrap()["id"].as_str().unwrap().to_owned();
        let no = sign(&env, &mut approver, &id2, "bob", "reject").await;
        let v = approver.post(&format!("/v1/proposals/{id2}/approvals"), no, "application/json").await.unwrap();
        let v = v.json().unwrap();
        assert_eq!(v["status"]["quorum"], "vetoed", "{v:#}");
        assert_eq!(show(&mut agent, &id2).await["state"], "rejected");
        assert!(!env.path("data/ok.txt").exists());

        // The evidence, exported over the API, verifies offline.
        let cp = server.client(&env, "approver").get("/v1/evidence/checkpoint").await.unwrap();
        assert_eq!(cp.status, StatusCode::OK);
        let bundle = server.client(&env, "approver").get("/v1/evidence/export").await.unwrap();
        assert_eq!(bundle.status, StatusCode::OK);
        let key = env.cli(&["evidence", "runner-key", "--config", "runner.toml"]).success().stdout();
        let keys = edge_evidence::parse_keys(&key).unwrap();
        let verified = edge_evidence::verify(&bundle.body, &keys, edge_evidence::Level::Full).unwrap();
        assert!(verified.runs.iter().any(|r| r.submitted_by.as_deref() == Some(AGENT)));
        let since = form_urlencoded::byte_serialize(&cp.body).collect::<String>();
        let later = server.client(&env, "approver").get(&format!("/v1/evidence/export?since={since}")).await.unwrap();
        assert_eq!(later.status, StatusCode::OK, "{}", later.error_message());
        edge_evidence::verify(&later.body, &keys, edge_evidence::Level::Full).unwrap();

        // Metrics reflect the log.
        let m = server.client(&env, "approver").get("/metrics").await.unwrap();
        let text = String::from_utf8_lossy(&m.body).into_owned();
        assert!(text.contains("edge_runner_proposals{state=\"committed\",tier=\"2\"} 1"), "{text}");
        assert!(text.contains("edge_runner_proposals{state=\"rejected\",tier=\"2\"} 1"), "{text}");
        assert!(text.contains("edge_runner_refusals_total{reason=\"authorize.vetoed\"} 1"), "{text}");
        assert!(text.contains("edge_runner_run_duration_seconds_count 5"), "{text}");
    });
}

#[test]
fn a_waiting_proposal_survives_a_kill_and_a_killed_apply_is_recovered() {
    let env = setup(64);
    let server = Server::start(&env);
    let (tier2, slow) = (capsule(&env, "none", true), capsule(&env, "slow-apply", false));
    let id = rt().block_on(async {
        let mut agent = server.client(&env, "agent");
        submit(&mut agent, &tier2).await.json().unwrap()["id"].as_str().unwrap().to_owned()
    });
    server.kill();

    // Restarted: still waiting, and approvals posted now (by `approve
    // --server`, which fetches the proposal over the API) run it.
    let server = Server::start(&env);
    rt().block_on(async {
        let mut c = server.client(&env, "approver");
        assert_eq!(show(&mut c, &id).await["state"], "awaiting-approval");
    });
    let mut last = String::new();
    for who in ["alice", "carol"] {
        let principal = format!("{who}@bank.example");
        let (key, out) = (format!("keys/{who}"), format!("{who}-remote.json"));
        let args = [
            &["approve", &id][..],
            &approver_flags(&server.url),
            &["--principal", &principal, "--ssh-key", &key, "--yes", "-o", &out],
        ]
        .concat();
        last = env.cli(&args).success().stdout();
    }
    assert!(last.contains("the proposal ran: committed"), "{last}");
    rt().block_on(async {
        let mut c = server.client(&env, "approver");
        assert_eq!(show(&mut c, &id).await["state"], "committed");
    });
    std::fs::remove_file(env.path("data/ok.txt")).unwrap();

    // Killed in the middle of an apply: nothing committed; on restart the
    // run is rolled back and recorded as interrupted.
    let submitter = submit_until_apply_starts(&env, &server.url, &slow);
    server.kill();
    assert!(submitter.join().unwrap().is_err(), "the killed server still answered");
    assert!(!env.path("data/ok.txt").exists());
    let server = Server::start(&env);
    rt().block_on(async {
        let mut c = server.client(&env, "agent");
        let list = c.get("/v1/proposals").await.unwrap().json().unwrap();
        // Newest first.
        let last = list["proposals"].as_array().unwrap().first().unwrap().clone();
        assert_eq!(last["state"], "failed", "{last:#}");
        let log = env.evidence();
        let run = last["runs"][0].as_str().unwrap();
        assert!(log.as_array().unwrap().iter().any(|r| r["run"] == run && r["event"]["type"] == "interrupted"));
    });
    assert!(!env.path("data/ok.txt").exists());
}

#[test]
fn oversized_bodies_slow_clients_and_overload_are_refused_without_losing_accepted_work() {
    // One run at a time, one waiting: the third concurrent submission is refused.
    let env = setup_running(1, 1);
    let server = Server::start(&env);
    let (tier0, sleeper) = (capsule(&env, "none", false), capsule(&env, "sleep", false));
    rt().block_on(async {
        let mut agent = server.client(&env, "agent");
        // Announced larger than max_body_kib (4 MiB): refused before a byte of it is read.
        let r = raw_request(
            &server.url,
            &env.path("tls"),
            b"POST /v1/proposals HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 5242880\r\n\r\n",
        )
        .await;
        assert!(r.starts_with("HTTP/1.1 413"), "{r}");
        assert!(r.contains("larger than the limit"), "{r}");
        let r = agent.post("/v1/proposals", b"{\"capsule\": 5}".to_vec(), "application/json").await.unwrap();
        assert_eq!(r.status, StatusCode::BAD_REQUEST);
    });

    // A slow client: headers never finish; the server hangs up after request_timeout.
    let slow = std::thread::spawn({
        let (url, ca, cert, key) =
            (server.url.clone(), env.path("tls/ca.pem"), env.path("tls/agent.pem"), env.path("tls/agent.key"));
        move || rt().block_on(slow_client(&url, &ca, &cert, &key))
    });

    // Overload: one run sleeping in the runner, one queued, the rest 429.
    let first = submit_in_thread(&server, &env, &sleeper);
    std::thread::sleep(Duration::from_millis(400));
    let rest: Vec<_> = (0..6).map(|_| submit_in_thread(&server, &env, &tier0)).collect();
    let mut accepted = vec![first.join().unwrap().0];
    let mut overloaded = 0;
    for h in rest {
        let (r, _) = h.join().unwrap();
        if r.status == StatusCode::TOO_MANY_REQUESTS {
            assert_eq!(r.retry_after.as_deref(), Some("1"));
            overloaded += 1;
        } else {
            accepted.push(r);
        }
    }
    assert!(overloaded >= 1, "no request was refused with 429");
    let slow_closed = slow.join().unwrap();
    assert!(slow_closed < Duration::from_secs(8), "a slow client held its connection for {slow_closed:?}");

    rt().block_on(async {
        let mut c = server.client(&env, "agent");
        let list = c.get("/v1/proposals").await.unwrap().json().unwrap();
        let ids: Vec<&str> = list["proposals"].as_array().unwrap().iter().map(|p| p["id"].as_str().unwrap()).collect();
        for r in &accepted {
            assert_eq!(r.status, StatusCode::CREATED, "{}", r.error_message());
            let id = r.json().unwrap()["id"].as_str().unwrap().to_owned();
            assert!(ids.contains(&id.as_str()), "accepted proposal {id} is missing");
        }
        assert_eq!(ids.len(), accepted.len(), "only accepted submissions became proposals");
        let text =
            String::from_utf8_lossy(&server.client(&env, "approver").get("/metrics").await.unwrap().body).into_owned();
        assert!(text.contains(&format!("edge_runner_overloaded_total {overloaded}")), "{text}");
    });
}

/// Open a connection with a valid certificate, send half a request, and
/// return how long until the server closes it.
async fn slow_client(url: &str, ca: &Path, cert: &Path, key: &Path) -> Duration {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let config = edge_runner::server::tls::client_config(ca, cert, key).unwrap();
    let tcp = tokio::net::TcpStream::connect(url.strip_prefix("https://").unwrap()).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(config).connect(name, tcp).await.unwrap();
    tls.write_all(b"POST /v1/proposals HTTP/1.1\r\nhost: x\r\n").await.unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(Duration::from_secs(30), tls.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) | Err(_) => return started.elapsed(),
            Ok(Ok(_)) => {}
        }
    }
}

#[test]
fn a_runner_whose_evidence_log_fails_verification_refuses_to_serve() {
    let env = setup(64);
    let server = Server::start(&env);
    rt().block_on(async {
        let mut agent = server.client(&env, "agent");
        assert_eq!(submit(&mut agent, &capsule(&env, "none", false)).await.status, StatusCode::CREATED);
    });
    server.kill();
    let db = env.path("state/evidence/evidence.db");
    let sqlite = |sql: &str| {
        let st = Command::new("sqlite3").arg(&db).arg(sql).status().expect("sqlite3 (installed by scripts/test.sh)");
        assert!(st.success(), "{sql}");
    };
    let serve = || Command::new(BIN).args(["serve", "--config", "runner.toml"]).current_dir(env.path("")).output();

    // A record slipped in after the last one (a copy of it, so the chain
    // check alone would have to find it): a start compares the records
    // with the persisted tree, and refuses.
    let last: i64 = {
        let c = rusqlite::Connection::open(&db).unwrap();
        c.query_row("SELECT size FROM checkpoints ORDER BY size DESC LIMIT 1", [], |r| r.get(0)).unwrap()
    };
    sqlite(&format!(
        "INSERT INTO records (seq, run, type, time, prev, hash, body) \
         SELECT {last}, run, type, time, prev, hash, body FROM records WHERE seq = {last} - 1 \
           AND NOT EXISTS (SELECT 1 FROM records WHERE seq = {last});"
    ));
    let out = serve().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("has no hashes in its persisted Merkle tree") && stderr.contains("altered"), "{stderr}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("listening"));
    sqlite(&format!("DROP TRIGGER records_append_only_d; DELETE FROM records WHERE seq >= {last};"));

    // One below it, rewritten by someone with write access to the database
    // (the planned record): a start only reads what the signed checkpoint's
    // tree summarises, so the runner serves, but the full check it runs in
    // the background finds the record and stops the evidence writer: no
    // run is accepted, and the log says why.
    sqlite(
        "DROP TRIGGER records_append_only_u; \
         UPDATE records SET body = replace(body, 'create ok.txt', 'create OK.txt') WHERE type = 'planned';",
    );
    let log = env.path("serve.log");
    let server = Server::start_with(&env, 1, Stdio::from(std::fs::File::create(&log).unwrap()), &[]);
    let text = wait_for_log(&log, "full evidence check failed", 30);
    assert!(text.contains("record ") && text.contains("refuses to run on a broken log"), "{text}");
    std::fs::remove_file(env.path("data/ok.txt")).ok();
    rt().block_on(async {
        let mut agent = server.client(&env, "agent");
        let r = submit(&mut agent, &capsule(&env, "none", false)).await;
        assert_ne!(r.status, StatusCode::CREATED, "a runner on a broken log runs nothing");
    });
    assert!(!env.path("data/ok.txt").exists(), "nothing ran");
    server.kill();

    // The same, by hand, while it serves or not: `evidence check --full`.
    let full = env.cli(&["evidence", "check", "--config", "runner.toml", "--full"]);
    assert_eq!(full.code(), 3, "{}", full.stdout());
    assert!(full.stdout().contains("FAILED") && full.stdout().contains("record "), "{}", full.stdout());
}

/// A runner stopped while its background full check still reads the store
/// stops the check and closes the store cleanly: at once, with the whole
/// WAL folded into the database (before, the close waited 5 s for the
/// check's snapshot, gave up and left the WAL in place). Killed instead,
/// it loses nothing.
#[test]
fn a_runner_stopped_or_killed_during_its_background_full_check_loses_nothing() {
    let env = setup(64);
    Server::start(&env).stop();
    // A long history (synthetic records, signed by the runner's key as it
    // would have signed them), so the check outlives the start.
    {
        let config = edge_runner::config::RunnerConfig::load(&env.path("runner.toml")).unwrap();
        let signer = std::sync::Arc::new(edge_runner::identity::load_identity(&config.store_view()).unwrap());
        let log = edge_runner::store::log::EvidenceLog::open(&env.path("state/evidence")).unwrap();
        rt().block_on(async {
            for batch in 0..40 {
                let mut run = log.run_log();
                for i in 0..500 {
                    let detail = format!("synthetic {batch}.{i}");
                    let event = edge_core::evidence::Event::Refused {
                        stage: "test".into(),
                        reason_code: "test.synthetic".into(),
                        detail,
                    };
                    run.append_deferred(&format!("r-synthetic-{batch}"), event).unwrap();
                }
                run.barrier_with_checkpoint(&signer, &config.name).await.unwrap();
            }
        });
    }
    let log = env.path("serve.log");
    let server = Server::start_with(&env, 1, Stdio::from(std::fs::File::create(&log).unwrap()), &[]);
    let stopping = Instant::now();
    server.stop();
    let took = stopping.elapsed();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(took < Duration::from_secs(3), "the stop took {took:?}:\n{text}");
    assert!(!text.contains("final WAL checkpoint"), "{text}");
    // It was running at the stop, and was stopped (were the history too
    // short for this machine, it would have passed first).
    assert!(text.contains("the full check was stopped before it finished"), "{text}");
    assert!(!text.contains("full evidence check passed"), "{text}");
    // A stop is no verdict: the store is not called broken.
    assert!(!text.contains("full evidence check failed") && !text.contains("failed verification"), "{text}");
    let wal = env.path("state/evidence/evidence.db-wal");
    assert!(std::fs::metadata(&wal).map_or(true, |m| m.len() == 0), "the WAL was left with frames in it");
    // Killed while the check runs: nothing is lost. Every record there was
    // is there after the next start, unchanged; the check's scratch
    // directory is removed; and that start's check passes.
    let db = env.path("state/evidence/evidence.db");
    let hashes = |below: &str| {
        let c = rusqlite::Connection::open(&db).unwrap();
        let sql = format!("SELECT count(*), coalesce(group_concat(hash, ','), '') FROM records WHERE seq < {below}");
        c.query_row(&sql, [], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))).unwrap()
    };
    let server = Server::start_with(&env, 1, Stdio::from(std::fs::File::create(&log).unwrap()), &[]);
    let before = hashes("(SELECT max(seq) + 1 FROM records)");
    server.kill();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!text.contains("full evidence check passed"), "the check ended before the kill:\n{text}");
    let server = Server::start_with(&env, 1, Stdio::from(std::fs::File::create(&log).unwrap()), &[]);
    wait_for_log(&log, "full evidence check passed", 60);
    assert_eq!(hashes(&before.0.to_string()), before, "records were lost or changed by the kill");
    let scratch: Vec<_> = std::fs::read_dir(env.path("state/evidence"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("check-scratch-"))
        .collect();
    assert!(scratch.is_empty(), "a full check's scratch is left: {scratch:?}");
    server.stop();
}

/// Send raw bytes over a TLS connection with the agent's certificate and
/// return what the server answers (until it closes or 5 s pass).
async fn raw_request(url: &str, tls_dir: &Path, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let config = edge_runner::server::tls::client_config(
        &tls_dir.join("ca.pem"),
        &tls_dir.join("agent.pem"),
        &tls_dir.join("agent.key"),
    )
    .unwrap();
    let tcp = tokio::net::TcpStream::connect(url.strip_prefix("https://").unwrap()).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(config).connect(name, tcp).await.unwrap();
    tls.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(5), tls.read(&mut buf)).await {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
        if out.windows(4).any(|w| w == b"\r\n\r\n") && out.ends_with(b"}") {
            break;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn a_proposal_that_waits_longer_than_its_tier_allows_expires_and_never_runs() {
    let env = setup(64);
    let policy = std::fs::read_to_string(env.path("policy.toml")).unwrap();
    let policy = policy.replacen("max_age = \"2h\"", "max_age = \"2h\"\nexpires_after = \"2s\"", 1);
    assert!(policy.contains("expires_after"));
    std::fs::write(env.path("policy.toml"), policy).unwrap();
    let server = Server::start(&env);
    let tier2 = capsule(&env, "none", true);
    let id = rt().block_on(async {
        let mut agent = server.client(&env, "agent");
        let id = submit(&mut agent, &tier2).await.json().unwrap()["id"].as_str().unwrap().to_owned();
        let mut approver = server.client(&env, "approver");
        let alice = sign(&env, &mut approver, &id, "alice", "approve").await;
        let carol = sign(&env, &mut approver, &id, "carol", "approve").await;
        let started = Instant::now();
        while show(&mut agent, &id).await["state"] != "expired" {
            assert!(started.elapsed() < Duration::from_secs(10), "never expired");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        for a in [alice, carol] {
            let r = approver.post(&format!("/v1/proposals/{id}/approvals"), a, "application/json").await.unwrap();
            assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.error_message());
            assert!(r.error_message().contains("expired"), "{}", r.error_message());
        }
        let bundle = server.client(&env, "approver").get("/v1/evidence/export").await.unwrap();
        let key = env.cli(&["evidence", "runner-key", "--config", "runner.toml"]).success().stdout();
        edge_evidence::verify(&bundle.body, &edge_evidence::parse_keys(&key).unwrap(), edge_evidence::Level::Full)
            .unwrap();
        id
    });
    server.kill();
    // The CLI path refuses it too, with the signed approvals in hand.
    let (a, c) = (format!("alice-approve-{id}.json"), format!("carol-approve-{id}.json"));
    let run = env.exec_with(&tier2, &[&a, &c]);
    assert_eq!(run.outcome(), "refused", "{:#}", run.report);
    assert_eq!(run.reason(), "authorize.proposal_expired");
    assert!(!env.path("data/ok.txt").exists());
    let log = env.evidence();
    assert!(log.as_array().unwrap().iter().any(|r| r["event"]["type"] == "proposal-expired"));
    // Runner-level records are not runs: a restart does not "recover" them.
    assert!(log.as_array().unwrap().iter().all(|r| r["run"] != "runner" || r["event"]["type"] != "interrupted"));
}

#[test]
fn the_openapi_document_describes_the_server() {
    let text = std::fs::read_to_string(Path::new(test_programs::ROOT).join("docs/openapi.yaml")).unwrap();
    let doc: Value = serde_yaml_ng::from_str(&text).unwrap();
    let env = setup(64);
    let server = Server::start(&env);
    let (tier0, tier2) = (capsule(&env, "none", false), capsule(&env, "none", true));
    rt().block_on(async {
        let mut c = server.client(&env, "agent");
        let waiting = submit(&mut c, &tier2).await.json().unwrap()["id"].as_str().unwrap().to_owned();
        let alice = sign(&env, &mut c, &waiting, "alice", "approve").await;
        let paths = doc["paths"].as_object().unwrap();
        let mut exercised = 0;
        for (template, ops) in paths {
            for (method, op) in ops.as_object().unwrap() {
                let documented: Vec<&str> = op["responses"].as_object().unwrap().keys().map(String::as_str).collect();
                let path = template.replace("{id}", &waiting);
                let reply = match method.as_str() {
                    "get" => c.get(&path).await.unwrap(),
                    "post" if template == "/v1/proposals" => submit(&mut c, &tier0).await,
                    "post" => c.post(&path, alice.clone(), "application/json").await.unwrap(),
                    other => panic!("unexpected method {other} in the document"),
                };
                let status = reply.status.as_u16().to_string();
                assert!(documented.contains(&status.as_str()), "{method} {template} answered {status}, not documented");
                // Documented JSON bodies are JSON.
                if reply.content_type == "application/json" {
                    reply.json().unwrap();
                }
                // An unknown id is a documented 404 where the path takes one.
                if template.contains("{id}") && method == "get" {
                    let r = c.get(&template.replace("{id}", "p-unknown")).await.unwrap();
                    assert_eq!(r.status, StatusCode::NOT_FOUND, "{template}");
                    assert!(documented.contains(&"404"), "{template} answers 404 but does not document it");
                }
                // The router knows the path: another method is 405, not 404.
                let other = if method == "get" { hyper::Method::DELETE } else { hyper::Method::PUT };
                let r = c.request(other, &path, None).await.unwrap();
                assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED, "{template}");
                exercised += 1;
            }
        }
        assert_eq!(exercised, 13, "every operation in docs/openapi.yaml was exercised");
        // And what is not documented does not exist.
        for p in ["/v1/nope", "/v2/proposals", "/admin"] {
            assert_eq!(c.get(p).await.unwrap().status, StatusCode::NOT_FOUND, "{p}");
        }
    });
}

#[test]
fn sigterm_lets_the_run_in_progress_finish() {
    let env = setup(64);
    let server = Server::start(&env);
    let slow = capsule(&env, "slow-apply", false);
    let submitter = submit_until_apply_starts(&env, &server.url, &slow);
    // Mid-apply: ask the runner to stop.
    let mut server = server;
    let st = Command::new("kill").args(["-TERM", &server.child.id().to_string()]).status().unwrap();
    assert!(st.success());
    let code = server.child.wait().unwrap();
    assert!(code.success(), "serve exited with {code}");
    let _ = submitter.join().unwrap();
    // The run finished and committed; nothing was left half-done.
    assert_eq!(std::fs::read_to_string(env.path("data/ok.txt")).unwrap(), "ok");
    let log = env.evidence();
    let records = log.as_array().unwrap();
    assert!(records.iter().any(|r| r["event"]["type"] == "completed" && r["event"]["outcome"] == "committed"));
    assert!(records.iter().all(|r| r["event"]["type"] != "interrupted"));
}

/// Submit `capsule` from another thread and return once its apply has
/// started (its staging directory exists); the thread yields the reply.
pub(crate) fn submit_until_apply_starts(
    env: &Env,
    url: &str,
    capsule: &Path,
) -> std::thread::JoinHandle<anyhow::Result<Reply>> {
    let (url, body) = (url.to_owned(), submission(capsule));
    let (ca, cert, key) = (env.path("tls/ca.pem"), env.path("tls/agent.pem"), env.path("tls/agent.key"));
    let submitter = std::thread::spawn(move || {
        rt().block_on(async {
            let mut c = Client::new(&url, &ca, &cert, &key).unwrap();
            c.post("/v1/proposals", body, "application/json").await
        })
    });
    let staging = env.path("state/staging");
    let started = Instant::now();
    while !staging.exists() || std::fs::read_dir(&staging).unwrap().next().is_none() {
        assert!(started.elapsed() < Duration::from_secs(20), "apply never started");
        std::thread::sleep(Duration::from_millis(10));
    }
    submitter
}

#[test]
fn tier_1_needs_one_approval_from_the_right_role() {
    let env = setup(64);
    // Every write is tier 1 in this policy: one approval from an sre.
    let mut policy = std::fs::read_to_string(env.path("policy.toml")).unwrap();
    policy.push_str(
        "\n[[rules]]\nname = \"any-write\"\nwhen = { writes = true }\ntier = 1\nreason = \"writes need one sre\"\n",
    );
    std::fs::write(env.path("policy.toml"), policy).unwrap();
    let server = Server::start(&env);
    let capsule = capsule(&env, "none", false);
    rt().block_on(async {
        let mut agent = server.client(&env, "agent");
        let v = submit(&mut agent, &capsule).await.json().unwrap();
        assert_eq!(
            (v["state"].as_str(), v["decision"]["tier"].as_u64()),
            (Some("awaiting-approval"), Some(1)),
            "{v:#}"
        );
        let id = v["id"].as_str().unwrap().to_owned();
        // carol is not an sre: her approval does not count.
        let mut approver = server.client(&env, "approver");
        let carol = sign(&env, &mut approver, &id, "carol", "approve").await;
        let r = approver.post(&format!("/v1/proposals/{id}/approvals"), carol, "application/json").await.unwrap();
        assert_eq!(r.json().unwrap()["status"]["quorum"], "pending");
        assert!(!env.path("data/ok.txt").exists());
        let alice = sign(&env, &mut approver, &id, "alice", "approve").await;
        let r = approver.post(&format!("/v1/proposals/{id}/approvals"), alice, "application/json").await.unwrap();
        let v = r.json().unwrap();
        assert_eq!(v["run"]["state"], "committed", "{v:#}");
        assert_eq!(std::fs::read_to_string(env.path("data/ok.txt")).unwrap(), "ok");
    });
}

/// The number of marked blocks a `residue-*` capsule's scan reports.
fn residue_blocks(reply: &Value) -> usize {
    assert_eq!(reply["outcome"], "refused", "{reply:#}");
    let detail = reply["refusal"]["detail"].as_str().unwrap_or_default();
    let n = detail.split("residue scan: ").nth(1).and_then(|t| t.split(' ').next());
    n.and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("no scan result in {reply:#}"))
}

#[test]
fn what_a_capsule_leaves_in_its_memory_never_reaches_the_next_run() {
    // The daemon reuses pooled instance slots (warm, with affinity to the
    // module), so the next run of the same component lands where the last
    // one was. A capsule fills 3 MiB of its heap with a marker (within the
    // first MiB of linear memory, which is reset by hand, and past it, which
    // is given back to the kernel); the next scans its whole linear memory.
    let env = setup(64);
    let server = Server::start(&env);
    let (write, read, own) = (
        capsule(&env, "residue-write", false),
        capsule(&env, "residue-read", false),
        capsule(&env, "residue-self", false),
    );
    rt().block_on(async {
        let mut agent = server.client(&env, "agent");
        // The scan finds a marker that is there: 1 MiB of its own, 16,384
        // blocks (the control that shows the scan can fail this test).
        let v = submit(&mut agent, &own).await.json().unwrap();
        assert!(residue_blocks(&v) >= 16_000, "{v:#}");
        for round in 0..4 {
            let v = submit(&mut agent, &write).await.json().unwrap();
            assert_eq!(v["outcome"], "committed", "{v:#}");
            std::fs::remove_file(env.path("data/ok.txt")).unwrap();
            let v = submit(&mut agent, &read).await.json().unwrap();
            assert_eq!(residue_blocks(&v), 0, "round {round}: the previous run's memory was readable: {v:#}");
        }
    });
}

#[test]
fn concurrent_runs_share_the_runner_and_runs_writing_one_mount_never_interleave() {
    let env = setup(64);
    let server = Server::start(&env);
    let tier0 = capsule(&env, "none", false);
    // Twelve agents at once, each creating `data/ok.txt`: the runs proceed
    // concurrently, but those writing `data` hold its lock from plan to the
    // end, so exactly one creates the file and every later one plans against
    // the file it made and is refused before touching it.
    let results: Vec<Value> = rt().block_on(async {
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..12 {
            let mut c = server.client(&env, "agent");
            let body = submission(&tier0);
            tasks.spawn(async move {
                let r = c.post("/v1/proposals", body, "application/json").await.unwrap();
                assert_eq!(r.status, StatusCode::CREATED, "{}", r.error_message());
                r.json().unwrap()
            });
        }
        tasks.join_all().await
    });
    let committed: Vec<&Value> = results.iter().filter(|r| r["outcome"] == "committed").collect();
    assert_eq!(committed.len(), 1, "{results:#?}");
    for r in results.iter().filter(|r| r["outcome"] != "committed") {
        assert_eq!(r["outcome"], "refused", "{r:#}");
        assert_eq!(r["refusal"]["stage"], "diff", "{r:#}");
    }
    assert_eq!(std::fs::read_to_string(env.path("data/ok.txt")).unwrap(), "ok");

    rt().block_on(async {
        let bundle = server.client(&env, "approver").get("/v1/evidence/export").await.unwrap();
        assert_eq!(bundle.status, StatusCode::OK);
        let key = env.cli(&["evidence", "runner-key", "--config", "runner.toml"]).success().stdout();
        let verified =
            edge_evidence::verify(&bundle.body, &edge_evidence::parse_keys(&key).unwrap(), edge_evidence::Level::Full)
                .unwrap();
        assert_eq!(verified.runs.len(), 12);
        // The runs really overlapped: some run's records interleave with another's.
        let spans: Vec<(u64, u64)> = results
            .iter()
            .map(|r| {
                let seqs: Vec<u64> =
                    r["records"].as_array().unwrap().iter().map(|s| s["seq"].as_u64().unwrap()).collect();
                (*seqs.iter().min().unwrap(), *seqs.iter().max().unwrap())
            })
            .collect();
        let overlapping = spans.iter().any(|a| spans.iter().any(|b| a != b && a.0 < b.0 && b.0 < a.1));
        assert!(overlapping, "no two runs overlapped: {spans:?}");
    });
}

/// A gauge's value in a `/metrics` text.
pub(crate) fn gauge(text: &str, name: &str) -> usize {
    let line = text.lines().find(|l| l.split_once(' ').is_some_and(|(n, _)| n == name));
    line.and_then(|l| l.split_once(' ')?.1.parse().ok()).unwrap_or_else(|| panic!("no `{name}` in\n{text}"))
}

#[test]
fn capsules_executing_at_once_stay_within_their_bound_however_many_runs_are_in_progress() {
    // More runs in progress than capsules may execute at once.
    let env = setup_running(64, 32);
    let server = Server::start(&env);
    // Sleeps until its wall-time limit (2.5 s), reading its mounts only, so
    // that no mount lock orders the runs: only the bound does.
    let manifest = Env::hostile_manifest("sleep", "")
        .replace("name = \"data\"\nwritable = true", "name = \"data\"\nwritable = false");
    assert!(manifest.contains("name = \"data\"\nwritable = false"), "{manifest}");
    let sleeper = env.capsule("srv-sleep-ro", test_programs::HOSTILE, &manifest, Some("agent"));
    let metrics = || server.metrics(&env);
    let before = metrics();
    let limit = gauge(&before, "edge_runner_capsules_executing_limit");
    assert!((4..=16).contains(&limit), "{before}");
    assert_eq!(gauge(&before, "edge_runner_capsules_executing"), 0, "{before}");
    assert_eq!(gauge(&before, "edge_runner_capsules_executing_peak"), 0, "{before}");

    // Four more sleepers than the bound, all at once; each answer timed.
    let start = Instant::now();
    let submitted: Vec<_> = (0..limit + 4).map(|_| submit_in_thread(&server, &env, &sleeper)).collect();
    // While they run, the bound holds.
    let mut seen_busy = 0;
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(200));
        let text = metrics();
        let now = gauge(&text, "edge_runner_capsules_executing");
        assert!(now <= limit, "{now} capsules executing at once, past the bound of {limit}");
        seen_busy = seen_busy.max(now);
    }
    let mut slowest = Duration::ZERO;
    for h in submitted {
        let (r, answered) = h.join().unwrap();
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.error_message());
        let v = r.json().unwrap();
        // Each ran until its wall-time limit stopped it: none failed while
        // it waited for its turn.
        assert_eq!(v["refusal"]["reason_code"], "sandbox.wall_time", "{v:#}");
        slowest = slowest.max(answered - start);
    }
    // The four past the bound waited a whole wall time (2.5 s) for a turn
    // and then had a whole one of their own: waiting is not counted against
    // the limit (were it, they would have been stopped with the first ones,
    // at ~2.5 s).
    assert!(slowest >= Duration::from_millis(4500), "the last sleepers answered after {slowest:?}");
    let after = metrics();
    assert_eq!(gauge(&after, "edge_runner_capsules_executing"), 0, "{after}");
    // The bound was reached, never passed: runs past it waited their turn.
    assert_eq!(gauge(&after, "edge_runner_capsules_executing_peak"), limit, "{after}");
    assert!(seen_busy >= 1, "no scrape saw a capsule executing");
}

#[test]
fn a_capsule_submitted_by_reference_needs_a_component_the_runner_holds_and_passes_the_same_checks() {
    let env = setup(64);
    let server = Server::start(&env);
    let tier0 = capsule(&env, "none", false);
    let other = capsule(&env, "sleep", false);
    let file = edge_core::container::CapsuleFile::parse(&std::fs::read(&tier0).unwrap()).unwrap();
    let other = edge_core::container::CapsuleFile::parse(&std::fs::read(&other).unwrap()).unwrap();
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let by_ref = |manifest: &[u8], sig: &[u8]| {
        serde_json::to_vec(&json!({ "manifest": b64(manifest), "signature": b64(sig) })).unwrap()
    };
    rt().block_on(async {
        let mut agent = server.client(&env, "agent");
        // The runner has never seen the component: 409, and nothing is recorded.
        let r = agent
            .post("/v1/proposals", by_ref(file.manifest_bytes(), file.bundle().unwrap()), "application/json")
            .await
            .unwrap();
        assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.error_message());
        assert!(r.error_message().contains("submit the full capsule once"), "{}", r.error_message());
        let list = agent.get("/v1/proposals").await.unwrap().json().unwrap();
        assert_eq!(list["proposals"].as_array().unwrap().len(), 0, "{list:#}");

        // Once uploaded in full, the same capsule by reference runs the same way.
        let full = submit(&mut agent, &tier0).await.json().unwrap();
        assert_eq!(full["state"], "committed", "{full:#}");
        std::fs::remove_file(env.path("data/ok.txt")).unwrap();
        let r = agent
            .post("/v1/proposals", by_ref(file.manifest_bytes(), file.bundle().unwrap()), "application/json")
            .await
            .unwrap();
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.error_message());
        let v = r.json().unwrap();
        assert_eq!(v["state"], "committed", "{v:#}");
        assert_eq!(v["admission"]["capsule"], full["admission"]["capsule"]);
        // The answer carries the run's receipt: a tlog-proof of its last record.
        let receipt = edge_core::note::TlogProof::parse(v["receipt"].as_str().unwrap()).unwrap();
        let last = v["records"].as_array().unwrap().last().unwrap()["seq"].as_u64().unwrap();
        assert_eq!(receipt.index, last);
        assert!(!env.path("state/receipts").exists(), "the daemon writes no receipt files");
        assert_eq!(std::fs::read_to_string(env.path("data/ok.txt")).unwrap(), "ok");

        // Another capsule's signature does not cover this manifest: refused at
        // admission, recorded, exactly as for a capsule file.
        std::fs::remove_file(env.path("data/ok.txt")).unwrap();
        let r = agent
            .post("/v1/proposals", by_ref(file.manifest_bytes(), other.bundle().unwrap()), "application/json")
            .await
            .unwrap();
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.error_message());
        let v = r.json().unwrap();
        assert_eq!(v["state"], "refused", "{v:#}");
        assert_eq!(v["refusal"]["stage"], "admit", "{v:#}");
        assert!(!env.path("data/ok.txt").exists());

        // Not a manifest, or half of the by-reference form: 400.
        let r = agent.post("/v1/proposals", by_ref(b"{\"not\":1}", b"{}"), "application/json").await.unwrap();
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.error_message());
        let half = serde_json::to_vec(&json!({ "manifest": b64(file.manifest_bytes()) })).unwrap();
        let r = agent.post("/v1/proposals", half, "application/json").await.unwrap();
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.error_message());
    });
}

#[test]
fn proposals_are_listed_newest_first_a_page_at_a_time_and_filtered() {
    let env = setup(64);
    let server = Server::start(&env);
    rt().block_on(async {
        let mut agent = server.client(&env, "agent");
        let mut ids = Vec::new();
        for _ in 0..3 {
            let r = submit(&mut agent, &capsule(&env, "none", false)).await;
            assert_eq!(r.status, StatusCode::CREATED, "{}", r.error_message());
            ids.push(r.json().unwrap()["id"].as_str().unwrap().to_owned());
            std::fs::remove_file(env.path("data/ok.txt")).ok();
        }
        ids.reverse();
        let mut c = server.client(&env, "approver");
        let mut get = async |path: &str| {
            let r = c.get(path).await.unwrap();
            (r.status, r.json().unwrap_or_default())
        };
        let listed = |v: &Value| -> Vec<String> {
            v["proposals"].as_array().unwrap().iter().map(|p| p["id"].as_str().unwrap().to_owned()).collect()
        };
        // Two pages of two, newest first; the second has no next page.
        let (status, first) = get("/v1/proposals?limit=2").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(listed(&first), ids[..2]);
        let next = first["next"].as_str().expect("a full page names the next").to_owned();
        let (_, second) = get(&format!("/v1/proposals?limit=2&before={next}")).await;
        assert_eq!(listed(&second), ids[2..]);
        assert!(second["next"].is_null(), "{second:#}");
        // Filters: state, tier, submission time.
        assert_eq!(listed(&get("/v1/proposals?state=committed&tier=0").await.1), ids);
        assert!(listed(&get("/v1/proposals?state=awaiting-approval").await.1).is_empty());
        assert!(listed(&get("/v1/proposals?tier=2").await.1).is_empty());
        assert_eq!(listed(&get("/v1/proposals?since=2020-01-01T00:00:00Z").await.1), ids);
        assert!(listed(&get("/v1/proposals?since=2999-01-01T00:00:00Z").await.1).is_empty());
        assert!(listed(&get("/v1/proposals?until=2020-01-01T00:00:00Z").await.1).is_empty());
        // Bad parameters are named, with what is expected (and neutralised).
        for (query, needle) in [
            ("limit=0", "limit `0` is not 1..1000"),
            ("limit=5000", "limit `5000` is not 1..1000"),
            ("before=x%1b%5b31m", "before `x\\u{001b}[31m` is not a cursor"),
            ("since=yesterday", "since `yesterday` is not an RFC 3339 time"),
            ("tier=12", "tier `12` is not a tier 0..9"),
            ("state=bogus", "unknown state `bogus`"),
        ] {
            let (status, body) = get(&format!("/v1/proposals?{query}")).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{query}");
            let error = body["error"].as_str().unwrap_or_default();
            assert!(error.contains(needle) && !error.contains('\x1b'), "{query}: {body}");
        }
    });
}
