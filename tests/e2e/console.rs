//! The approval console and passkey approvals, end to end.
//!
//! In headless Chromium with a virtual authenticator: the operator enrolls
//! alice, alice signs in, opens a waiting tier-2 proposal, sees the changed
//! line and approves with her passkey; bob approves by SSH; the quorum
//! commits; the exported bundle verifies offline with the passkey approval
//! checked. A screenshot of the proposal page is written to
//! `target/console-proposal.png`.
//!
//! Without a browser: every way a passkey approval can be wrong is refused
//! with its reason code and recorded (a software authenticator in this
//! test signs them), and the console's sessions, CSRF and origin checks hold.

use std::path::PathBuf;

use base64::Engine as _;
use p256::ecdsa::signature::Signer as _;
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

use crate::harness::Env;
use crate::server::{Server, capsule, rt, setup, show, sign, submit};
use crate::webdriver::{self, Browser};

fn b64u(b: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

/// A runner home as `server::setup`, plus a console on 127.0.0.1:0.
fn console_env() -> Env {
    let env = setup(64);
    let mut config = std::fs::read_to_string(env.path("runner.toml")).unwrap();
    config.push_str("\n[console]\nlisten = \"127.0.0.1:0\"\nsession = \"5m\"\n");
    std::fs::write(env.path("runner.toml"), config).unwrap();
    env
}

/// Start `serve`; returns the server and the console origin it printed.
fn start_with_console(env: &Env) -> (Server, String) {
    let server = Server::start_lines(env, 2);
    let origin = server.lines[0].strip_prefix("console on ").expect("the console line").to_owned();
    (server, origin)
}

/// base64 SHA-256 of the server key's SubjectPublicKeyInfo (what
/// `--ignore-certificate-errors-spki-list` takes).
fn spki_hash(env: &Env) -> String {
    let key = rcgen::KeyPair::from_pem(&std::fs::read_to_string(env.path("tls/server.key")).unwrap()).unwrap();
    base64::engine::general_purpose::STANDARD
        .encode(Sha256::digest(rcgen::PublicKeyData::subject_public_key_info(&key)))
}

#[test]
fn an_approver_enrolls_signs_in_reviews_and_approves_with_a_passkey_and_the_bundle_verifies_offline() {
    if !webdriver::available() {
        // CI installs chromium and chromium-driver (scripts/test.sh); a
        // developer machine without them says so loudly instead of passing.
        panic!("this test needs Debian's chromium and chromium-driver: apt-get install chromium chromium-driver");
    }
    let env = console_env();
    let (server, origin) = start_with_console(&env);
    let alice = "alice@bank.example";

    // The operator makes a one-time enrollment code for alice.
    let out = env.cli(&["approvers", "enroll", "--config", "runner.toml", "--principal", alice]).success().stdout();
    let code = out.lines().find_map(|l| l.trim().strip_prefix("code")).expect("a code").trim().to_owned();

    // An agent submits a tier-2 proposal.
    let tier2 = capsule(&env, "none", true);
    let id = rt().block_on(async {
        let mut agent = server.client(&env, "agent");
        let r = submit(&mut agent, &tier2).await;
        assert_eq!(r.status, hyper::StatusCode::CREATED, "{}", r.error_message());
        r.json().unwrap()["id"].as_str().unwrap().to_owned()
    });

    let profile = tempfile::tempdir().unwrap();
    let mut b = Browser::start(profile.path(), &spki_hash(&env));
    b.add_authenticator();

    // Nothing is readable without signing in: the proposal redirects to sign-in.
    b.goto(&format!("{origin}/proposals/{id}"));
    assert!(b.find("#signin").is_some(), "{}", b.source());
    assert!(!b.source().contains("ok.txt"));

    // Enroll through the link (the code is in the fragment, never sent in a URL).
    b.goto(&format!("{origin}/enroll#{code}"));
    b.click("#enroll button[type=submit]");
    let said = b.wait_text("#status", |t| t.starts_with("Enrolled") || t.starts_with("Not enrolled"));
    assert!(said.starts_with("Enrolled"), "{said}");
    assert_eq!(b.credentials().len(), 1);
    let registry: Value = serde_json::from_slice(&std::fs::read(env.path("passkeys.json")).unwrap()).unwrap();
    assert_eq!(registry["credentials"][0]["principal"], alice);
    assert_eq!(registry["credentials"][0]["origin"], origin.as_str());
    // The code was one use.
    let again = env.cli(&["approvers", "enroll", "--config", "runner.toml", "--principal", "nobody@bank.example"]);
    assert_ne!(again.code(), 0, "an unknown principal got an enrollment code");

    // Sign in with the passkey, by keyboard: type the name, press Enter.
    b.goto(&format!("{origin}/"));
    b.type_into("#principal", &format!("{alice}\u{E007}"));
    b.wait_source(|s| s.contains("Waiting for your approval"));
    let list = b.source();
    assert!(list.contains(&format!("/proposals/{id}")), "the waiting proposal is not listed: {list}");

    // The proposal page: the changed line, the tier and rule, provenance, expiry, the form.
    b.goto(&format!("{origin}/proposals/{id}"));
    let page = b.wait_source(|s| s.contains("id=\"decide\""));
    for want in ["+ok", "ok.txt", "Decision: tier 2", "TEST-1", "Expires", "Still needed", "Blast radius", "<svg"] {
        assert!(page.contains(want), "the proposal page lacks `{want}`");
    }
    let png = b.screenshot();
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
    let shot = PathBuf::from(test_programs::ROOT).join("target/console-proposal.png");
    std::fs::write(&shot, &png).unwrap();
    eprintln!("screenshot of the proposal page: {}", shot.display());

    // Capsule-supplied text is escaped: markup, terminal escapes and bidi
    // overrides in the provenance never become markup or reach the page raw.
    let manifest = Env::hostile_manifest("none", "[[mounts]]\nname = \"config\"\nwritable = true\n").replace(
        "ticket = \"TEST-1\"",
        "ticket = \"TEST-1\"\nrationale = \"<script>alert(1)</script><img src=x onerror=alert(2)> \\u001b[2J \\u202eexe.txt\"",
    );
    let xss = env.capsule("xss", test_programs::HOSTILE, &manifest, Some("agent"));
    let hostile_id = rt().block_on(async {
        let mut agent = server.client(&env, "agent");
        let r = submit(&mut agent, &xss).await;
        assert_eq!(r.status, hyper::StatusCode::CREATED, "{}", r.error_message());
        r.json().unwrap()["id"].as_str().unwrap().to_owned()
    });
    b.goto(&format!("{origin}/proposals/{hostile_id}"));
    let page = b.wait_source(|s| s.contains("Provenance"));
    assert!(page.contains("&lt;script&gt;alert(1)"), "the rationale is not shown escaped");
    assert!(
        !page.contains("<script>alert") && !page.contains("<img src=\"x\""),
        "markup from the capsule reached the page"
    );
    assert!(!page.contains('\u{1b}') && !page.contains('\u{202e}'), "a control or bidi character reached the page");
    assert_eq!(b.script("return document.scripts.length + document.images.length"), json!(1));

    b.goto(&format!("{origin}/proposals/{id}"));
    b.wait_source(|s| s.contains("id=\"decide\""));
    b.type_into("#comment", "diff checked in the console");
    b.click("#decide button.approve");
    let said = b.wait_text("#status", |t| t.contains("recorded") || t.starts_with("Nothing was recorded"));
    assert!(said.contains("recorded and counts"), "{said}");
    // Her kept approval is listed, and the form is gone: she decided.
    b.goto(&format!("{origin}/proposals/{id}"));
    let page = b.wait_source(|s| s.contains("h-act"));
    assert!(page.contains("You have already decided this proposal.") && !page.contains("id=\"decide\""), "{page}");
    assert!(page.contains("1 of 2 counted"), "{page}");

    // Bob approves by SSH over the API; the quorum (2, distinct people) commits.
    let state = rt().block_on(async {
        let mut approver = server.client(&env, "approver");
        let file = sign(&env, &mut approver, &id, "bob", "approve").await;
        let r = approver.post(&format!("/v1/proposals/{id}/approvals"), file, "application/json").await.unwrap();
        assert_eq!(r.status, hyper::StatusCode::ACCEPTED, "{}", r.error_message());
        show(&mut approver, &id).await["state"].as_str().unwrap().to_owned()
    });
    assert_eq!(state, "committed");
    assert_eq!(std::fs::read_to_string(env.path("data/ok.txt")).unwrap(), "ok");

    // The page now says committed, with alice's passkey approval counted.
    b.goto(&format!("{origin}/proposals/{id}"));
    let page = b.wait_source(|s| s.contains("s-committed"));
    assert!(page.contains("diff checked in the console"));

    // The export verifies offline (edge-verify, in-process), the passkey approval checked.
    drop(b);
    drop(server);
    env.verify_offline();
    let records = env.evidence();
    let accepted: Vec<&Value> = records
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["event"]["type"] == "approval-accepted" && r["event"]["principal"] == alice)
        .collect();
    assert_eq!(accepted.len(), 1);
    assert!(accepted[0]["event"]["passkey"]["counter"].is_number(), "{}", accepted[0]);
    assert!(records.as_array().unwrap().iter().any(|r| r["event"]["type"] == "registry-changed"));
}

/// A software passkey: what an authenticator signs, made in the test.
struct SoftKey {
    key: p256::ecdsa::SigningKey,
    id: Vec<u8>,
}

impl SoftKey {
    fn new(seed: u8) -> Self {
        let key = p256::ecdsa::SigningKey::from_slice(&[seed; 32]).unwrap();
        Self { key, id: vec![seed; 16] }
    }

    fn entry(&self, principal: &str) -> Value {
        let point = self.key.verifying_key().to_encoded_point(false);
        json!({ "algorithm": "ES256", "credential_id": b64u(&self.id), "enrolled_at": 1_700_000_000u64,
                "origin": ORIGIN, "principal": principal, "public_key": b64u(point.as_bytes()), "rp_id": "localhost" })
    }

    fn fingerprint(&self) -> String {
        let point = self.key.verifying_key().to_encoded_point(false);
        format!("SHA256:{}", base64::engine::general_purpose::STANDARD_NO_PAD.encode(Sha256::digest(point.as_bytes())))
    }

    /// An assertion over `challenge`, with the flags, counter, origin, rp id and type given.
    fn assert(&self, challenge: &[u8], how: &How) -> Value {
        let mut auth = Sha256::digest(how.rp_id.as_bytes()).to_vec();
        auth.push(how.flags);
        auth.extend_from_slice(&how.counter.to_be_bytes());
        let client = format!(
            "{{\"type\":\"{}\",\"challenge\":\"{}\",\"origin\":\"{}\",\"crossOrigin\":false}}",
            how.kind,
            b64u(challenge),
            how.origin
        );
        let mut signed = auth.clone();
        signed.extend_from_slice(&Sha256::digest(client.as_bytes()));
        let sig: p256::ecdsa::Signature = self.key.sign(&signed);
        json!({ "authenticator_data": b64u(&auth), "client_data_json": b64u(client.as_bytes()),
                "credential_id": b64u(&self.id), "signature": b64u(sig.to_der().as_bytes()) })
    }
}

const ORIGIN: &str = "https://localhost:8444";

struct How {
    flags: u8,
    counter: u32,
    origin: &'static str,
    rp_id: &'static str,
    kind: &'static str,
}

const GOOD: How = How { flags: 0x05, counter: 7, origin: ORIGIN, rp_id: "localhost", kind: "webauthn.get" };

/// A runner with alice's passkey (and a revoked one of hers) registered,
/// bob by SSH; returns the env and the capsule.
fn passkey_env() -> (Env, PathBuf, SoftKey, SoftKey) {
    let env = Env::new();
    env.write_policy_config("log-volume", &[("config", "payments-config", true)]);
    let (alice, revoked) = (SoftKey::new(11), SoftKey::new(12));
    env.write_approvers(
        &[("alice", &["sre"]), ("bob", &["sre"]), ("carol", &["sre"])],
        &format!("\n[revoked]\nkeys = [\"{}\"]\n", revoked.fingerprint()),
    );
    let file = json!({ "schema": "https://edge-runner.dev/passkeys/v1",
                       "credentials": [alice.entry("alice@bank.example"), revoked.entry("alice@bank.example")] });
    std::fs::write(env.path("passkeys.json"), serde_json::to_vec_pretty(&file).unwrap()).unwrap();
    let extra = "[[mounts]]\nname = \"config\"\nwritable = true\n";
    let capsule = env.capsule("pk", test_programs::HOSTILE, &Env::hostile_manifest("none", extra), Some("agent"));
    (env, capsule, alice, revoked)
}

/// The statement `who` would sign for the proposal document `doc`, as
/// `edge-runner approve --statement-only` writes it.
fn statement(env: &Env, doc: &str, who: &str, tag: &str) -> (Value, Vec<u8>) {
    let out = format!("{who}-{tag}.statement.json");
    env.cli(&["approve", doc, "--principal", who, "--statement-only", "-o", &out]).success();
    let bytes = std::fs::read(env.path(&out)).unwrap();
    (serde_json::from_slice(&bytes).unwrap(), bytes)
}

fn write_approval(env: &Env, name: &str, statement: &Value, passkey: Value) -> String {
    let file = json!({ "statement": statement, "passkey": passkey });
    std::fs::write(env.path(name), serde_json::to_vec_pretty(&file).unwrap()).unwrap();
    name.to_owned()
}

fn refusals(env: &Env) -> Vec<(String, String)> {
    let records = env.evidence();
    let digests: std::collections::BTreeMap<String, String> = std::fs::read_dir(env.path(""))
        .unwrap()
        .filter_map(|e| {
            let p = e.unwrap().path();
            let n = p.file_name()?.to_str()?.to_owned();
            n.ends_with(".approval.json")
                .then(|| (format!("sha256:{}", hex::encode(Sha256::digest(std::fs::read(&p).unwrap()))), n))
        })
        .collect();
    records
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["event"]["type"] == "approval-refused")
        .map(|r| {
            let d = r["event"]["approval"].as_str().unwrap().to_owned();
            (digests.get(&d).cloned().unwrap_or(d), r["event"]["reason_code"].as_str().unwrap().to_owned())
        })
        .collect()
}

#[test]
fn every_wrong_passkey_approval_is_refused_with_its_reason_and_recorded() {
    let (env, capsule, alice, revoked) = passkey_env();
    let run = env.exec(&capsule);
    assert_eq!(run.outcome(), "awaiting-approval", "{:#}", run.report);
    let doc = run.report["document"].as_str().unwrap().to_owned();
    let (st, bytes) = statement(&env, &doc, "alice@bank.example", "a");
    let challenge = Sha256::digest(&bytes);
    let (_, other_bytes) = statement(&env, &doc, "alice@bank.example", "b");
    let stranger = SoftKey::new(13);
    let cases: Vec<(&str, Value, &str)> = vec![
        ("other-statement", alice.assert(&Sha256::digest(&other_bytes), &GOOD), "approval.wrong_challenge"),
        ("no-uv", alice.assert(&challenge, &How { flags: 0x01, ..GOOD }), "approval.no_user_verification"),
        ("no-up", alice.assert(&challenge, &How { flags: 0x04, ..GOOD }), "approval.no_user_presence"),
        ("origin", alice.assert(&challenge, &How { origin: "https://evil.example", ..GOOD }), "approval.wrong_origin"),
        ("rp", alice.assert(&challenge, &How { rp_id: "evil.example", ..GOOD }), "approval.wrong_rp"),
        ("create", alice.assert(&challenge, &How { kind: "webauthn.create", ..GOOD }), "approval.malformed"),
        ("unregistered", stranger.assert(&challenge, &GOOD), "approval.key_mismatch"),
        ("revoked", revoked.assert(&challenge, &GOOD), "approval.revoked_key"),
    ];
    let mut files = Vec::new();
    for (name, passkey, _) in &cases {
        files.push(write_approval(&env, &format!("{name}.approval.json"), &st, passkey.clone()));
    }
    // Tampered after signing: the signature no longer covers it.
    let mut tampered = alice.assert(&challenge, &GOOD);
    let mut auth = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(tampered["authenticator_data"].as_str().unwrap())
        .unwrap();
    auth[36] ^= 1;
    tampered["authenticator_data"] = json!(b64u(&auth));
    files.push(write_approval(&env, "tampered.approval.json", &st, tampered));
    let refs: Vec<&str> = files.iter().map(String::as_str).collect();
    let run = env.exec_with(&capsule, &refs);
    assert_eq!(run.outcome(), "refused", "{:#}", run.report);
    assert_eq!(run.reason(), "authorize.quorum_not_met");
    let got: std::collections::BTreeMap<String, String> = refusals(&env).into_iter().collect();
    for (name, _, code) in &cases {
        assert_eq!(got.get(&format!("{name}.approval.json")).map(String::as_str), Some(*code), "{name}: {got:?}");
    }
    assert_eq!(got.get("tampered.approval.json").map(String::as_str), Some("approval.bad_signature"));
    assert!(!env.path("data/ok.txt").exists(), "a refused quorum changed a file");
}

#[test]
fn one_person_by_passkey_and_by_ssh_counts_once_and_a_counter_never_goes_back() {
    let (env, capsule, alice, _) = passkey_env();
    let run = env.exec(&capsule);
    let doc = run.report["document"].as_str().unwrap().to_owned();
    let (st, bytes) = statement(&env, &doc, "alice@bank.example", "a");
    let pk = write_approval(&env, "alice-pk.approval.json", &st, alice.assert(&Sha256::digest(&bytes), &GOOD));
    env.sign_approval("approve", &doc, "alice", "alice-ssh.approval.json");
    let run = env.exec_with(&capsule, &[&pk, "alice-ssh.approval.json"]);
    assert_eq!(run.reason(), "authorize.quorum_not_met", "{:#}", run.report);
    assert!(run.detail().contains("1 of 2"), "{}", run.detail());

    // A second proposal: alice's passkey (counter 7 already recorded? no —
    // that quorum was not met) approves with bob: committed, counter 7 recorded.
    let run = env.exec(&capsule);
    let doc = run.report["document"].as_str().unwrap().to_owned();
    let (st, bytes) = statement(&env, &doc, "alice@bank.example", "c");
    let pk = write_approval(&env, "alice-c7.approval.json", &st, alice.assert(&Sha256::digest(&bytes), &GOOD));
    env.sign_approval("approve", &doc, "bob", "bob-c.approval.json");
    let run = env.exec_with(&capsule, &[&pk, "bob-c.approval.json"]);
    assert_eq!(run.outcome(), "committed", "{:#}", run.report);

    // A third: alice's authenticator now says 3 — a cloned key, or a replayed
    // old signature counter. Refused; carol and bob alone would be needed.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    std::fs::remove_file(env.path("data/ok.txt")).unwrap();
    let run = env.exec(&capsule);
    let doc = run.report["document"].as_str().unwrap().to_owned();
    let (st, bytes) = statement(&env, &doc, "alice@bank.example", "d");
    let back = write_approval(
        &env,
        "alice-back.approval.json",
        &st,
        alice.assert(&Sha256::digest(&bytes), &How { counter: 3, ..GOOD }),
    );
    env.sign_approval("approve", &doc, "bob", "bob-d.approval.json");
    let run = env.exec_with(&capsule, &[&back, "bob-d.approval.json"]);
    assert_eq!(run.reason(), "authorize.quorum_not_met", "{:#}", run.report);
    let got: std::collections::BTreeMap<String, String> = refusals(&env).into_iter().collect();
    assert_eq!(got.get("alice-back.approval.json").map(String::as_str), Some("approval.counter_regressed"), "{got:?}");

    // The same passkey approval presented again after its quorum spent it: replayed.
    let run = env.exec_with(&capsule, &["alice-c7.approval.json"]);
    assert_eq!(run.reason(), "authorize.proposal_executed", "{:#}", run.report);
    let refused: Vec<(String, String)> = refusals(&env);
    assert!(refused.contains(&("alice-c7.approval.json".into(), "approval.replayed".into())), "{refused:?}");
}

/// One HTTPS request to the console (no client certificate), answered in
/// full: status, headers (lower-case names) and body.
async fn console_request(origin: &str, ca: &std::path::Path, request: String) -> (u16, Vec<(String, String)>, String) {
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
    let port = origin.rsplit(':').next().unwrap();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port.parse::<u16>().unwrap())).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = connector.connect(name, tcp).await.expect("the console's TLS, without a client certificate");
    tls.write_all(request.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let _ = tls.read_to_end(&mut buf).await;
    let text = String::from_utf8_lossy(&buf).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines.next().and_then(|l| l.split(' ').nth(1)).and_then(|s| s.parse().ok()).unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    (status, headers, body.to_owned())
}

fn get(path: &str, cookie: Option<&str>) -> String {
    let cookie = cookie.map(|c| format!("Cookie: {c}\r\n")).unwrap_or_default();
    format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n{cookie}Connection: close\r\n\r\n")
}

fn post(path: &str, origin: Option<&str>, content_type: &str, extra: &str, body: &str) -> String {
    let origin = origin.map(|o| format!("Origin: {o}\r\n")).unwrap_or_default();
    format!(
        "POST {path} HTTP/1.1\r\nHost: localhost\r\n{origin}Content-Type: {content_type}\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

fn header<'h>(headers: &'h [(String, String)], name: &str) -> Option<&'h str> {
    headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

#[test]
fn the_console_shows_nothing_without_a_session_and_refuses_cross_site_and_forged_requests() {
    let env = console_env();
    let (server, origin) = start_with_console(&env);
    let ca = env.path("tls/ca.pem");
    let tier2 = capsule(&env, "none", true);
    let id = rt().block_on(async {
        let mut agent = server.client(&env, "agent");
        submit(&mut agent, &tier2).await.json().unwrap()["id"].as_str().unwrap().to_owned()
    });
    rt().block_on(async {
        // Without a session: the sign-in page, never a proposal.
        let (status, headers, body) = console_request(&origin, &ca, get("/", None)).await;
        assert_eq!(status, 200);
        assert!(body.contains("id=\"signin\"") && !body.contains(&id), "{body}");
        let csp = header(&headers, "content-security-policy").unwrap();
        assert!(
            csp.contains("default-src 'none'") && csp.contains("script-src 'self'") && !csp.contains("unsafe"),
            "{csp}"
        );
        assert_eq!(header(&headers, "x-frame-options"), Some("DENY"));
        assert_eq!(header(&headers, "x-content-type-options"), Some("nosniff"));
        let (status, headers, body) = console_request(&origin, &ca, get(&format!("/proposals/{id}"), None)).await;
        assert_eq!(status, 303, "{body}");
        assert_eq!(header(&headers, "location"), Some("/"));
        assert!(!body.contains("ok.txt"));

        // A forged or ended session cookie: the sign-in page says so.
        let forged = "__Host-edge-session=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
        let (status, _, body) = console_request(&origin, &ca, get("/", Some(forged))).await;
        assert_eq!(status, 200);
        assert!(body.contains("sign in again"), "{body}");
        let (status, _, _) = console_request(&origin, &ca, get(&format!("/proposals/{id}"), Some(forged))).await;
        assert_eq!(status, 303);

        // Cross-site: another Origin, no Origin, or a form body are refused
        // before anything is read or started.
        let body = "{\"principal\":\"alice@bank.example\"}";
        for (o, ct, want) in [
            (Some("https://evil.example"), "application/json", 403),
            (None, "application/json", 403),
            (Some(origin.as_str()), "application/x-www-form-urlencoded", 415),
            (Some(origin.as_str()), "text/plain", 415),
        ] {
            let (status, _, text) = console_request(&origin, &ca, post("/api/signin/begin", o, ct, "", body)).await;
            assert_eq!(status, want, "{o:?} {ct}: {text}");
        }
        // A decision without a session, or with a forged one: 401, nothing held.
        let decide = format!("/api/proposals/{id}/begin");
        let d = "{\"decision\":\"approve\",\"comment\":\"\"}";
        let (status, _, _) =
            console_request(&origin, &ca, post(&decide, Some(&origin), "application/json", "X-CSRF-Token: x\r\n", d))
                .await;
        assert_eq!(status, 401);
        let extra = format!("Cookie: {forged}\r\nX-CSRF-Token: x\r\n");
        let (status, _, _) =
            console_request(&origin, &ca, post(&decide, Some(&origin), "application/json", &extra, d)).await;
        assert_eq!(status, 401);

        // Nobody without a passkey can start a sign-in, and an unknown,
        // spent or expired enrollment code enrolls nothing.
        let (status, _, text) =
            console_request(&origin, &ca, post("/api/signin/begin", Some(&origin), "application/json", "", body)).await;
        assert_eq!(status, 403, "{text}");
        assert!(text.contains("no usable passkey"), "{text}");
        let (status, _, text) = console_request(
            &origin,
            &ca,
            post("/api/enroll/begin", Some(&origin), "application/json", "", "{\"code\":\"AAAA-BBBB\"}"),
        )
        .await;
        assert_eq!(status, 403);
        assert!(text.contains("unknown or was already used"), "{text}");
    });
    // An expired code: the page says so, and the invitation is gone.
    let out = env
        .cli(&["approvers", "enroll", "--config", "runner.toml", "--principal", "alice@bank.example", "--valid", "1m"])
        .success()
        .stdout();
    let code = out.lines().find_map(|l| l.trim().strip_prefix("code")).unwrap().trim().to_owned();
    let dir = env.path("state/console/enroll");
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        let mut v: Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
        v["expires_at"] = json!(1_700_000_000u64);
        std::fs::write(&p, serde_json::to_vec(&v).unwrap()).unwrap();
    }
    rt().block_on(async {
        let body = format!("{{\"code\":\"{code}\"}}");
        let (status, _, text) =
            console_request(&origin, &ca, post("/api/enroll/begin", Some(&origin), "application/json", "", &body))
                .await;
        assert_eq!(status, 403);
        assert!(text.contains("expired"), "{text}");
        // Unknown pages are a page, not a stack trace.
        let (status, _, text) = console_request(&origin, &ca, get("/../../etc/passwd", None)).await;
        assert!(status == 404 || status == 400, "{status}");
        assert!(!text.contains("panicked"));
    });
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0, "the expired invitation was kept");
    assert!(!env.path("passkeys.json").exists(), "something was enrolled");
}

#[test]
fn a_passkey_rejection_vetoes() {
    let (env, capsule, alice, _) = passkey_env();
    let run = env.exec(&capsule);
    let doc = run.report["document"].as_str().unwrap().to_owned();
    let out = "alice-reject.statement.json";
    env.cli(&["reject", &doc, "--principal", "alice@bank.example", "--statement-only", "-o", out]).success();
    let bytes = std::fs::read(env.path(out)).unwrap();
    let st: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(st["decision"], "reject");
    let no = write_approval(&env, "alice-no.approval.json", &st, alice.assert(&Sha256::digest(&bytes), &GOOD));
    env.sign_approval("approve", &doc, "bob", "bob-yes.approval.json");
    let run = env.exec_with(&capsule, &[&no, "bob-yes.approval.json"]);
    assert_eq!(run.reason(), "authorize.vetoed", "{:#}", run.report);
    assert!(!env.path("data/ok.txt").exists());
}
