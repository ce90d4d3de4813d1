//! `edge-runner check` on real runner homes (every problem listed at once;
//! a fresh `init` home passes), `serve` refusing to start on what `check`
//! finds, certificates from `pki issue` over real mutual TLS, and `init
//! --san` names a client verifies against.

use std::path::Path;

use edge_runner::server::client::Client;
use hyper::StatusCode;
use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, Issuer, KeyPair, SanType};
use serde_json::Value;

use crate::harness::{BIN, Env};
use crate::server::{Server, rt};

/// A fresh runner home made by `init` in a temporary directory (the
/// directory is the home), listening on `listen`, plus `args`.
fn init_home(listen: &str, args: &[&str]) -> Env {
    let env = Env { dir: tempfile::tempdir().unwrap() };
    let mut all = vec!["init", ".", "--listen", listen];
    all.extend_from_slice(args);
    env.cli(&all).success();
    env
}

fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A server certificate from the home's development CA, for `sans`, valid
/// for `days` from now; its key written with `key_mode`.
fn issue_server(env: &Env, name: &str, sans: &[&str], days: i64, key_mode: u32) {
    let tls = env.path("tls");
    let ca_key = KeyPair::from_pem(&std::fs::read_to_string(tls.join("ca.key")).unwrap()).unwrap();
    let issuer = Issuer::from_ca_cert_pem(&std::fs::read_to_string(tls.join("ca.pem")).unwrap(), ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(DnType::CommonName, name);
    p.subject_alt_names = sans.iter().map(|s| SanType::DnsName((*s).try_into().unwrap())).collect();
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let now = time::OffsetDateTime::now_utc();
    p.not_before = now - time::Duration::days(1);
    p.not_after = now + time::Duration::days(days);
    let cert = p.signed_by(&key, &issuer).unwrap();
    std::fs::write(tls.join(format!("{name}.pem")), cert.pem()).unwrap();
    let _ = std::fs::remove_file(tls.join(format!("{name}.key")));
    crate::harness::write_key(&tls.join(format!("{name}.key")), &key.serialize_pem());
    chmod(&tls.join(format!("{name}.key")), key_mode);
}

#[test]
fn check_passes_on_a_fresh_init_home() {
    let env = init_home("127.0.0.1:0", &[]);
    let out = env.cli(&["check", "--config", "runner.toml"]);
    assert_eq!(out.code(), 0, "{}{}", out.stdout(), out.stderr());
    assert!(out.stdout().starts_with("ok: runner.toml"), "{}", out.stdout());
    let json: Value =
        serde_json::from_str(&env.cli(&["check", "--config", "runner.toml", "--json"]).success().stdout()).unwrap();
    assert_eq!(json["ok"], true);
    assert_eq!(json["problems"], serde_json::json!([]));
}

#[test]
fn check_lists_every_problem_of_a_broken_home_at_once() {
    // Another process holds the port the runner is configured for.
    let squatter = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let listen = squatter.local_addr().unwrap().to_string();
    let env = init_home(&listen, &[]);
    // 1. The identity key and 2. the TLS server key readable by everyone
    //    (a new server certificate, 3. expiring in 10 days, with it).
    chmod(&env.path("state/identity.key"), 0o644);
    issue_server(&env, "server", &["localhost"], 10, 0o644);
    // 4. The console's own certificate does not name the host browsers use.
    issue_server(&env, "console", &["elsewhere.example"], 90, 0o600);
    // 5. A mount that does not exist; 6. an unparseable client CA.
    let config = std::fs::read_to_string(env.path("runner.toml")).unwrap();
    let config =
        config.replace("client_ca = \"tls/ca.pem\"", "client_ca = \"tls/broken-ca.pem\"\nserver_ca = \"tls/ca.pem\"");
    std::fs::write(
        env.path("tls/broken-ca.pem"),
        "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    std::fs::write(
        env.path("runner.toml"),
        format!(
            "{config}\n[console]\nlisten = \"127.0.0.1:0\"\nurl = \"https://localhost:8444\"\n\
             cert = \"tls/console.pem\"\nkey = \"tls/console.key\"\n\n\
             [mounts.app]\npath = \"missing-app\"\nwritable = true\nnode = \"payments-config\"\n"
        ),
    )
    .unwrap();

    let out = env.cli(&["check", "--config", "runner.toml"]);
    let text = out.stdout();
    assert_eq!(out.code(), 1, "{text}{}", out.stderr());
    let wants = [
        ("identity key ./state/identity.key has mode 0644", "chmod 600 ./state/identity.key"),
        ("server certificate's key ./tls/server.key has mode 0644", "chmod 600 ./tls/server.key"),
        ("server certificate ./tls/server.pem expires at", "issue a new one"),
        ("console certificate ./tls/console.pem does not name localhost (console.url)", "--san"),
        ("mount `app`: path ./missing-app does not exist", "create it, or correct mounts.app.path"),
        (&format!("server.listen {listen} cannot be bound: Address already in use"), "another process listens"),
        ("server.client_ca ./tls/broken-ca.pem is not a PEM certificate file", "point server.client_ca at"),
    ];
    for (what, fix) in wants {
        let at = text.find(what).unwrap_or_else(|| panic!("`{what}` is not listed:\n{text}"));
        let block = &text[at..];
        let fix_line = block.lines().nth(1).unwrap_or("");
        assert!(fix_line.trim_start().starts_with("fix:") && fix_line.contains(fix), "`{what}`: fix `{fix}`?\n{text}");
    }
    assert_eq!(text.matches("mount `app`").count(), 1, "the config's own mount error is not repeated:\n{text}");
    assert!(text.contains("6 error(s), 1 warning(s): `serve` would refuse to start"), "{text}");
    // The server certificate still chains to its CA and names localhost:
    // nothing is reported about it that is not wrong.
    assert!(!text.contains("does not chain") && !text.contains("does not name 127.0.0.1"), "{text}");

    // --json: the same problems, with their severity.
    let out = env.cli(&["check", "--config", "runner.toml", "--json"]);
    assert_eq!(out.code(), 1);
    let json: Value = serde_json::from_str(&out.stdout()).unwrap();
    assert_eq!(
        (json["ok"].as_bool(), json["errors"].as_u64(), json["warnings"].as_u64()),
        (Some(false), Some(6), Some(1))
    );
    for p in json["problems"].as_array().unwrap() {
        let expiring = p["what"].as_str().unwrap().contains("expires at");
        assert_eq!(p["severity"], if expiring { "warning" } else { "error" }, "{p}");
        assert!(!p["fix"].as_str().unwrap().is_empty());
    }

    // serve refuses with the same list, and binds nothing.
    let out = env.cli(&["serve", "--config", "runner.toml"]);
    assert_eq!(out.code(), 1);
    let err = out.stderr();
    assert!(err.contains("the configuration check found 6 error(s); serve refuses to start"), "{err}");
    assert!(err.contains("has mode 0644") && err.contains("Address already in use"), "{err}");
    assert!(!out.stdout().contains("listening"));
    drop(squatter);
}

#[test]
fn check_neutralises_text_from_files() {
    let env = init_home("127.0.0.1:0", &[]);
    // A mount path with an escape sequence and a bidi override in it.
    let config = std::fs::read_to_string(env.path("runner.toml")).unwrap();
    std::fs::write(
        env.path("runner.toml"),
        format!("{config}\n[mounts.evil]\npath = \"x\\u001b[2J\\u202eyz\"\nnode = \"payments-config\"\n"),
    )
    .unwrap();
    let out = env.cli(&["check", "--config", "runner.toml"]);
    assert_eq!(out.code(), 1);
    let text = out.stdout();
    assert!(text.contains("mount `evil`"), "{text}");
    assert!(!text.contains('\u{1b}') && !text.contains('\u{202e}'), "{text:?}");
    assert!(text.contains("x\\u{001b}[2J\\u{202e}yz does not exist"), "shown escaped: {text:?}");
}

#[test]
fn serve_refuses_a_tls_key_readable_by_others_with_the_checks_message() {
    let env = init_home("127.0.0.1:0", &[]);
    chmod(&env.path("tls/server.key"), 0o644);
    let out = env.cli(&["serve", "--config", "runner.toml"]);
    assert_eq!(out.code(), 1);
    let err = out.stderr();
    assert!(err.contains("serve refuses to start"), "{err}");
    assert!(err.contains("server certificate's key ./tls/server.key has mode 0644"), "{err}");
    assert!(err.contains("fix: run `chmod 600 ./tls/server.key`"), "{err}");
    assert!(!out.stdout().contains("listening"));
    // That was the only reason: at 0600 the same home serves.
    chmod(&env.path("tls/server.key"), 0o600);
    let server = Server::start(&env);
    let mut c = server.client(&env, "operator");
    let r = rt().block_on(c.get("/healthz")).unwrap();
    assert_eq!(r.status, StatusCode::OK);
}

fn client(server: &Server, env: &Env, dir: &str, who: &str) -> Client {
    Client::new(
        &server.url,
        &env.path("tls/ca.pem"),
        &env.path(&format!("{dir}/{who}.pem")),
        &env.path(&format!("{dir}/{who}.key")),
    )
    .unwrap()
}

#[test]
fn a_certificate_from_pki_issue_authenticates_over_mtls_and_gets_exactly_what_access_grants() {
    let env = init_home("127.0.0.1:0", &[]);
    let out = env.cli(&["pki", "issue", "--person", "carol", "--out", "people", "--config", "runner.toml"]).success();
    let carol = "spiffe://edge-runner.local/people/carol";
    let text = out.stdout();
    assert!(text.contains(&format!("issued  {carol}")) && text.contains("[server.access]"), "{text}");
    assert!(text.contains(&format!("proposals = [\"{carol}\"]")), "{text}");
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(std::fs::metadata(env.path("people/carol.key")).unwrap().permissions().mode() & 0o777, 0o600);
    // Never overwritten.
    let again = env.cli(&["pki", "issue", "--person", "carol", "--out", "people", "--config", "runner.toml"]);
    assert_eq!(again.code(), 1);
    assert!(again.stderr().contains("already exists; refusing to overwrite"), "{}", again.stderr());
    // A SPIFFE ID cannot hold an e-mail address: refused with the fix.
    let email = env.cli(&["pki", "issue", "--person", "alice@bank.example", "--out", "people"]);
    assert_eq!(email.code(), 1);
    assert!(email.stderr().contains("use a name like `alice`"), "{}", email.stderr());
    // dave gets a certificate but no grant; an agent too.
    env.cli(&["pki", "issue", "--person", "dave", "--out", "people", "--config", "runner.toml"]).success();
    let agent = env.cli(&["pki", "issue", "--agent", "fixer", "--out", "agents", "--valid", "7d"]).success().stdout();
    assert!(agent.contains("agents = [\"spiffe://edge-runner.local/agent/fixer\"]"), "{agent}");

    // carol may read proposals, nothing else.
    let config = std::fs::read_to_string(env.path("runner.toml")).unwrap();
    let config =
        config.replace("proposals = [\"role:operators\"]", &format!("proposals = [\"role:operators\", \"{carol}\"]"));
    std::fs::write(env.path("runner.toml"), config).unwrap();
    let server = Server::start(&env);
    rt().block_on(async {
        let mut c = client(&server, &env, "people", "carol");
        let r = c.get("/v1/proposals").await.unwrap();
        assert_eq!(r.status, StatusCode::OK, "{}", r.error_message());
        for path in ["/v1/evidence/export", "/v1/evidence/checkpoint", "/metrics"] {
            let r = c.get(path).await.unwrap();
            assert_eq!(r.status, StatusCode::FORBIDDEN, "{path}");
            assert!(r.error_message().contains(carol), "{}", r.error_message());
        }
        // dave authenticates (health answers) but is granted nothing.
        let mut d = client(&server, &env, "people", "dave");
        assert_eq!(d.get("/healthz").await.unwrap().status, StatusCode::OK);
        let r = d.get("/v1/proposals").await.unwrap();
        assert_eq!(r.status, StatusCode::FORBIDDEN);
        assert!(r.error_message().contains("server.access.proposals"), "{}", r.error_message());
        let mut a = client(&server, &env, "agents", "fixer");
        assert_eq!(a.get("/v1/proposals").await.unwrap().status, StatusCode::FORBIDDEN, "not in server.agents");
    });

    // A certificate from another runner's development CA does not connect.
    let other = init_home("127.0.0.1:0", &[]);
    other.cli(&["pki", "issue", "--person", "carol", "--out", "people", "--config", "runner.toml"]).success();
    let mut foreign = Client::new(
        &server.url,
        &env.path("tls/ca.pem"),
        &other.path("people/carol.pem"),
        &other.path("people/carol.key"),
    )
    .unwrap();
    let r = rt().block_on(foreign.get("/healthz"));
    assert!(r.is_err(), "a foreign certificate was accepted: {:?}", r.map(|r| r.status));
}

#[test]
fn init_san_names_are_in_the_certificate_and_a_client_using_one_verifies() {
    let env = init_home("127.0.0.1:0", &["--san", "runner.test.example", "--san", "10.9.8.7"]);
    let out = std::process::Command::new("openssl")
        .args(["x509", "-noout", "-ext", "subjectAltName", "-in"])
        .arg(env.path("tls/server.pem"))
        .output()
        .expect("openssl");
    let sans = String::from_utf8_lossy(&out.stdout);
    assert!(sans.contains("DNS:runner.test.example") && sans.contains("IP Address:10.9.8.7"), "{sans}");
    assert!(sans.contains("DNS:localhost") && sans.contains("IP Address:127.0.0.1"), "{sans}");
    let bad = std::process::Command::new(BIN)
        .args(["init", "bad", "--san", "*.example"])
        .current_dir(env.path(""))
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("is not a DNS name or IP address"));

    let server = Server::start(&env);
    let addr = server.url.strip_prefix("https://").unwrap().to_owned();
    let tls = env.path("tls");
    let handshake = |name: &'static str| {
        let (addr, tls) = (addr.clone(), tls.clone());
        rt().block_on(async move {
            use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
            let config = edge_runner::server::tls::client_config(
                &tls.join("ca.pem"),
                &tls.join("operator.pem"),
                &tls.join("operator.key"),
            )
            .unwrap();
            let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
            let name = rustls::pki_types::ServerName::try_from(name).unwrap();
            let mut s = tokio_rustls::TlsConnector::from(config).connect(name, tcp).await?;
            s.write_all(b"GET /healthz HTTP/1.1\r\nhost: runner.test.example\r\nconnection: close\r\n\r\n").await?;
            let mut answer = String::new();
            s.read_to_string(&mut answer).await?;
            Ok::<_, std::io::Error>(answer)
        })
    };
    let answer = handshake("runner.test.example").unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let refused = handshake("other.test.example").unwrap_err();
    assert!(format!("{refused:?}").contains("NotValidForName"), "{refused:?}");
}

#[test]
fn check_names_a_server_certificate_from_another_ca_a_key_that_is_not_its_own_and_an_open_state_dir() {
    let env = init_home("127.0.0.1:0", &[]);
    let other = init_home("127.0.0.1:0", &[]);
    // Another runner's certificate (same CA name, another CA key), with this
    // runner's key; the state directory writable by everyone; a console
    // whose URL names a host the certificate does not.
    std::fs::copy(other.path("tls/server.pem"), env.path("tls/server.pem")).unwrap();
    chmod(&env.path("state"), 0o777);
    let config = std::fs::read_to_string(env.path("runner.toml")).unwrap();
    std::fs::write(
        env.path("runner.toml"),
        format!("{config}\n[console]\nlisten = \"127.0.0.1:0\"\nurl = \"https://approvals.example:8444\"\n"),
    )
    .unwrap();
    let out = env.cli(&["check", "--config", "runner.toml"]);
    assert_eq!(out.code(), 1);
    let text = out.stdout();
    for want in [
        "server certificate ./tls/server.pem does not chain to server.client_ca ./tls/ca.pem",
        "set server.server_ca to that CA's certificate",
        "server certificate ./tls/server.pem and its key ./tls/server.key (server.key) do not match",
        "runner.state_dir ./state has mode 0777",
        "does not name approvals.example (console.url)",
    ] {
        assert!(text.contains(want), "`{want}` is not listed:\n{text}");
    }
    assert!(text.contains("4 error(s), 0 warning(s)"), "{text}");
    // With server.server_ca naming the CA that issued the certificate, the
    // chain passes; the key is still not the certificate's.
    std::fs::remove_file(env.path("tls/server.pem")).unwrap();
    std::fs::copy(other.path("tls/server.pem"), env.path("tls/other.pem")).unwrap();
    chmod(&env.path("state"), 0o700);
    let config = std::fs::read_to_string(env.path("runner.toml")).unwrap();
    std::fs::write(
        env.path("runner.toml"),
        config.replace("cert = \"tls/server.pem\"", "cert = \"tls/other.pem\"\nserver_ca = \"tls/other-ca.pem\""),
    )
    .unwrap();
    std::fs::copy(other.path("tls/ca.pem"), env.path("tls/other-ca.pem")).unwrap();
    let text = env.cli(&["check", "--config", "runner.toml"]).stdout();
    assert!(!text.contains("does not chain"), "server_ca names the CA that issued it:\n{text}");
    assert!(text.contains("do not match") && text.contains("approvals.example"), "{text}");
}

#[test]
fn check_warns_of_a_state_dir_its_group_may_write_where_exec_cannot_hand_runs_over() {
    let env = init_home("127.0.0.1:0", &[]);
    chmod(&env.path("state"), 0o770);
    let out = env.cli(&["check", "--config", "runner.toml"]);
    let text = out.stdout();
    // (Exit 1 for any problem, as `check` does; `serve` would start.)
    assert_eq!(out.code(), 1, "{text}");
    assert!(text.contains("`serve` would start and warn"), "{text}");
    assert!(text.contains("runner.state_dir ./state has mode 0770: its group may write to it"), "{text}");
    assert!(text.contains("chmod g-w ./state"), "{text}");
    assert!(text.contains("0 error(s), 1 warning(s)"), "{text}");
    // And `serve` there says so, and makes no socket.
    let log = std::fs::File::create(env.path("serve.log")).unwrap();
    let server = crate::server::Server::start_with(&env, 1, log.into(), &[]);
    assert!(!env.path("state/exec.sock").exists());
    server.stop();
    let err = std::fs::read_to_string(env.path("serve.log")).unwrap();
    assert!(err.contains("the state directory is not this user's alone"), "{err}");
    chmod(&env.path("state"), 0o700);
    let text = env.cli(&["check", "--config", "runner.toml"]).stdout();
    assert!(!text.contains("its group may write"), "{text}");
}

#[test]
fn check_lists_a_broken_policy_and_a_broken_approver_registry_together() {
    let env = init_home("127.0.0.1:0", &[]);
    std::fs::write(env.path("policy/policy.toml"), "version = 99\n").unwrap();
    std::fs::write(env.path("approvers/allowed_signers"), "alice@bank.example ssh-ed25519 not-base64\n").unwrap();
    let out = env.cli(&["check", "--config", "runner.toml"]);
    assert_eq!(out.code(), 1);
    let text = out.stdout();
    // Loading the config stops at the policy; the registry is checked too.
    assert!(text.contains("runner config runner.toml is invalid") && text.contains("policy"), "{text}");
    assert!(text.contains("allowed_signers") && text.contains("line 1"), "{text}");
    assert!(text.contains("2 error(s)"), "{text}");
    assert_eq!(text.matches("fix: edit runner.toml (or the file the message names)").count(), 2, "{text}");
}

#[test]
fn check_names_every_probe_listener_serve_could_not_bind() {
    let env = init_home("127.0.0.1:0", &[]);
    let config = std::fs::read_to_string(env.path("runner.toml")).unwrap();
    let with_probes = |listen: &str| {
        std::fs::write(env.path("runner.toml"), format!("{config}\n[probes]\nlisten = \"{listen}\"\n")).unwrap();
        let out = env.cli(&["check", "--config", "runner.toml"]);
        (out.code(), out.stdout())
    };
    // A port another process holds.
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let (code, text) = with_probes(&held.local_addr().unwrap().to_string());
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("probes.listen") && text.contains("cannot be bound"), "{text}");
    // A socket whose directory does not exist.
    let (code, text) = with_probes("unix:run/missing/probes.sock");
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("its directory does not exist") && text.contains("RuntimeDirectory"), "{text}");
    // A file (not a socket) at the path: serve would refuse to replace it.
    std::fs::write(env.path("probes.sock"), "mine").unwrap();
    let (code, text) = with_probes("unix:probes.sock");
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("exists and is not a socket"), "{text}");
    // A live socket: another runner serving there.
    std::fs::remove_file(env.path("probes.sock")).unwrap();
    let live = std::os::unix::net::UnixListener::bind(env.path("probes.sock")).unwrap();
    let (code, text) = with_probes("unix:probes.sock");
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("another process is serving on it"), "{text}");
    drop(live);
    // A stale socket (nobody answers) is what serve replaces: fine.
    let (code, text) = with_probes("unix:probes.sock");
    assert_eq!(code, 0, "{text}");
}

/// The homes the server tests run (their own PKI, written by the harness)
/// pass the check: `serve` starts them with nothing to warn about.
#[test]
fn the_server_tests_home_passes_check() {
    let env = crate::server::setup(64);
    let out = env.cli(&["check", "--config", "runner.toml"]);
    assert_eq!(out.code(), 0, "{}{}", out.stdout(), out.stderr());
}

/// A config that does not load is reported by line and column, never by
/// its text, by every command that loads it: the error goes to a terminal
/// or to the service's journal, and the file may hold secrets (`[env]`
/// values, a webhook's URL). Unknown fields stay named.
#[test]
fn a_config_that_does_not_load_is_reported_where_it_stops_never_with_its_secrets() {
    let env = init_home("127.0.0.1:0", &[]);
    let good = std::fs::read_to_string(env.path("runner.toml")).unwrap();
    let lines = good.lines().count();
    for (tail, secret, said) in [
        // An unterminated string: toml would quote the line.
        (
            "[[notify.webhooks]]\nurl = \"https://hooks.example/T/path-secret-71c2\n".to_owned(),
            "path-secret-71c2",
            format!("TOML parse error at line {}, column", lines + 3),
        ),
        // A value of the wrong type: serde would quote the value.
        ("[env]\nPIN = 40917133\n".into(), "40917133", format!("line {}, column 7: invalid type: integer", lines + 3)),
        ("[notify]\nwebhooks = \"https://hooks.example/T/s3cr3t-9a\"\n".into(), "s3cr3t-9a", "string \"…\"".into()),
    ] {
        std::fs::write(env.path("runner.toml"), format!("{good}\n{tail}")).unwrap();
        for args in [
            &["serve", "--config", "runner.toml"][..],
            &["exec", "missing.capsule", "--config", "runner.toml"],
            &["check", "--config", "runner.toml"],
            &["evidence", "check", "--config", "runner.toml"],
            &["evidence", "export", "--config", "runner.toml", "-o", "all.bundle"],
            &["policy", "check", "--config", "runner.toml"],
            &["backup", "--config", "runner.toml", "-o", "backup.tar"],
        ] {
            let out = env.cli(args);
            let text = format!("{}{}", out.stdout(), out.stderr());
            assert_ne!(out.code(), 0, "{args:?}: {text}");
            assert!(!text.contains(secret), "{args:?} quotes the file's secret: {text}");
            assert!(text.contains(&said), "{args:?} does not say `{said}`: {text}");
        }
    }
    assert!(!env.path("all.bundle").exists() && !env.path("backup.tar").exists());
    // A misspelt field is named, and the fields the table takes.
    std::fs::write(env.path("runner.toml"), good.replacen("[runner]\n", "[runner]\nnmae = \"x\"\n", 1)).unwrap();
    let text = env.cli(&["serve", "--config", "runner.toml"]).stderr();
    assert!(text.contains("unknown field `nmae`, expected one of `name`"), "{text}");
}
