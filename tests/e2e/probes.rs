//! The probe listener (`[probes]`) and systemd notifications, against the
//! real `edge-runner serve`: probes answer without a client certificate on
//! loopback and on a Unix socket and nothing else is served there; a network
//! address is refused at load; `/readyz` turns 503 while the runner shuts
//! down and when its evidence writer fails; `NOTIFY_SOCKET` receives
//! READY=1 once the API accepts connections, watchdog pings while healthy
//! (and none once the writer failed), RELOADING=1/READY=1 around SIGHUP and
//! STOPPING=1 on SIGTERM.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::{BIN, Env};
use crate::server::{capsule, no_client_cert, rt, setup, submit_until_apply_starts};

/// A running `serve` with the lines it printed at start; killed on drop.
struct Serving {
    child: Child,
    lines: Vec<String>,
}

impl Drop for Serving {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Serving {
    /// Start `serve` with `envs` and read its start lines up to `listening on`.
    fn start(env: &Env, envs: &[(&str, &str)]) -> Serving {
        let mut child = Command::new(BIN)
            .args(["serve", "--config", "runner.toml"])
            .current_dir(env.path(""))
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            .envs(envs.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            assert!(out.read_line(&mut line).unwrap() > 0, "serve exited after printing {lines:?}");
            lines.push(line.trim().to_owned());
            if line.starts_with("listening on ") {
                break;
            }
        }
        Serving { child, lines }
    }

    fn line(&self, prefix: &str) -> String {
        let l = self.lines.iter().find_map(|l| l.strip_prefix(prefix));
        l.unwrap_or_else(|| panic!("no `{prefix}` line in {:?}", self.lines)).to_owned()
    }

    fn api(&self) -> String {
        self.line("listening on https://")
    }

    fn signal(&self, name: &str) {
        let st = Command::new("kill").args([&format!("-{name}"), &self.child.id().to_string()]).status().unwrap();
        assert!(st.success());
    }

    /// Wait for the process to exit (at most `within`); its exit status.
    fn exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let t0 = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            assert!(t0.elapsed() < within, "serve did not exit within {within:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// One plain HTTP/1.1 exchange on a probe listener (`http://host:port` or
/// `unix:/path`): the status and the body.
fn http(probes: &str, request: &str) -> (u16, String) {
    let mut raw = Vec::new();
    let request = request.replace('\n', "\r\n");
    if let Some(addr) = probes.strip_prefix("http://") {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s.write_all(request.as_bytes()).unwrap();
        s.read_to_end(&mut raw).unwrap();
    } else {
        let path = probes.strip_prefix("unix:").unwrap();
        let mut s = UnixStream::connect(path).unwrap_or_else(|e| panic!("cannot connect to {path}: {e}"));
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s.write_all(request.as_bytes()).unwrap();
        s.read_to_end(&mut raw).unwrap();
    }
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("not HTTP: {text:?}"));
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (status, body)
}

pub(crate) fn get(probes: &str, path: &str) -> (u16, String) {
    http(probes, &format!("GET {path} HTTP/1.1\nhost: probe\n\n"))
}

fn with_probes(env: &Env, section: &str) {
    let mut config = std::fs::read_to_string(env.path("runner.toml")).unwrap();
    config.push_str(&format!("\n[probes]\n{section}\n"));
    std::fs::write(env.path("runner.toml"), config).unwrap();
}

#[test]
fn probes_answer_without_a_client_certificate_and_serve_nothing_else() {
    let env = setup(64);
    with_probes(&env, "listen = \"127.0.0.1:0\"");
    let server = Serving::start(&env, &[]);
    let probes = server.line("probes on ");
    assert!(probes.starts_with("http://127.0.0.1:"), "{probes}");

    assert_eq!(get(&probes, "/healthz"), (200, "ok\n".into()));
    assert_eq!(get(&probes, "/readyz"), (200, "ready\n".into()));
    // HEAD: the status, no body.
    assert_eq!(http(&probes, "HEAD /readyz HTTP/1.1\nhost: probe\n\n"), (200, String::new()));
    // Metrics only when configured; nothing else at all.
    for path in ["/metrics", "/v1/proposals", "/v1/evidence/export", "/", "/healthz/x"] {
        let (status, body) = get(&probes, path);
        assert_eq!(status, 404, "{path}: {body}");
        assert!(body.contains("serves only /healthz and /readyz"), "{body}");
    }
    for method in ["POST", "PUT", "DELETE", "OPTIONS"] {
        let (status, body) = http(&probes, &format!("{method} /readyz HTTP/1.1\nhost: probe\ncontent-length: 0\n\n"));
        assert_eq!(status, 405, "{method}: {body}");
    }
    let (status, _) = http(&probes, "GET /healthz HTTP/1.1\nhost: probe\ncontent-length: 5\n\nhello");
    assert_eq!(status, 413, "a probe with a body");
    // A request whose headers never end is cut off, not held open.
    let t0 = Instant::now();
    let mut s = std::net::TcpStream::connect(probes.strip_prefix("http://").unwrap()).unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nhost: probe\r\n").unwrap();
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    assert!(t0.elapsed() < Duration::from_secs(12), "a slow probe client held its connection {:?}", t0.elapsed());

    // The mTLS API is unchanged: plain HTTP and TLS without a client
    // certificate get nothing there.
    let api = server.api();
    let mut plain = std::net::TcpStream::connect(&api).unwrap();
    plain.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    plain.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n").unwrap();
    let mut answer = Vec::new();
    let _ = plain.read_to_end(&mut answer);
    assert!(!String::from_utf8_lossy(&answer).contains("200 OK"), "plain HTTP reached the API");
    assert!(
        rt().block_on(no_client_cert(&format!("https://{api}"), &env.path("tls/ca.pem"))),
        "a client without a certificate reached the API"
    );
}

#[test]
fn probes_and_metrics_on_a_unix_socket() {
    let env = setup(64);
    with_probes(&env, "listen = \"unix:probes.sock\"\nmetrics = true");
    // A stale socket from an earlier process is replaced.
    drop(std::os::unix::net::UnixListener::bind(env.path("probes.sock")).unwrap());
    let server = Serving::start(&env, &[]);
    let probes = server.line("probes on ");
    let shown = std::path::absolute(env.path("probes.sock")).unwrap();
    assert_eq!(probes, format!("unix:{}", shown.display()), "the socket's absolute path");
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(env.path("probes.sock")).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660, "the probe socket's mode");
    assert_eq!(get(&probes, "/healthz"), (200, "ok\n".into()));
    assert_eq!(get(&probes, "/readyz"), (200, "ready\n".into()));
    let (status, metrics) = get(&probes, "/metrics");
    assert_eq!(status, 200);
    assert!(metrics.contains("edge_runner_"), "{metrics}");
    assert_eq!(get(&probes, "/v1/proposals").0, 404);
    drop(server); // SIGKILL: the socket file stays behind, stale

    // A restart replaces it.
    let server = Serving::start(&env, &[]);
    assert_eq!(get(&probes, "/healthz").0, 200);
    drop(server);

    // Something that is not a socket at the path is refused, and kept.
    std::fs::remove_file(env.path("probes.sock")).unwrap();
    std::fs::write(env.path("probes.sock"), "not a socket").unwrap();
    let out = env.cli(&["serve", "--config", "runner.toml"]);
    assert_ne!(out.code(), 0);
    // `check` (run by serve before it binds) names it first.
    assert!(out.stderr().contains("probes.sock exists and is not a socket"), "{}", out.stderr());
    assert_eq!(std::fs::read_to_string(env.path("probes.sock")).unwrap(), "not a socket");
}

#[test]
fn a_network_probe_address_is_refused_at_load_unless_the_dangerous_switch_is_recorded() {
    let env = setup(64);
    let config = std::fs::read_to_string(env.path("runner.toml")).unwrap();
    with_probes(&env, "listen = \"0.0.0.0:0\"\nmetrics = true");
    let out = env.cli(&["serve", "--config", "runner.toml"]);
    assert_eq!(out.code(), 1, "{}", out.stderr());
    let e = out.stderr();
    assert!(e.contains("runner.toml") && e.contains("probes.listen `0.0.0.0:0` is not a loopback address"), "{e}");
    assert!(e.contains("dangerous_plain_http"), "the error names the switch: {e}");

    // With the switch: it serves, and says so in the evidence.
    std::fs::write(env.path("runner.toml"), &config).unwrap();
    with_probes(&env, "listen = \"0.0.0.0:0\"\ndangerous_plain_http = true");
    let server = Serving::start(&env, &[]);
    let port = server.line("probes on http://0.0.0.0:");
    assert_eq!(get(&format!("http://127.0.0.1:{port}"), "/readyz").0, 200);
    drop(server);
    let log = env.evidence();
    let insecure = log.as_array().unwrap().iter().find(|r| r["event"]["type"] == "insecure");
    let switches = &insecure.expect("an insecure record")["event"]["switches"];
    assert!(switches.as_array().unwrap().iter().any(|s| s == "probes.dangerous_plain_http"), "{switches}");
}

#[test]
fn readyz_turns_503_while_the_runs_in_progress_finish_at_shutdown() {
    let env = setup(64);
    with_probes(&env, "listen = \"unix:probes.sock\"");
    let mut server = Serving::start(&env, &[]);
    let probes = server.line("probes on ");
    let url = format!("https://{}", server.api());
    let slow = capsule(&env, "slow-apply", false);
    let submitter = submit_until_apply_starts(&env, &url, &slow);
    assert_eq!(get(&probes, "/readyz").0, 200, "serving a run is ready");
    server.signal("TERM");
    // The run goes on; the probe says why the runner is not ready.
    let t0 = Instant::now();
    let (status, body) = loop {
        let (status, body) = get(&probes, "/readyz");
        if status != 200 || t0.elapsed() > Duration::from_secs(10) {
            break (status, body);
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    assert_eq!((status, body.as_str()), (503, "not ready: shutting down: finishing the runs in progress\n"));
    assert_eq!(get(&probes, "/healthz").0, 200, "alive while it drains");
    assert!(server.exit(Duration::from_secs(60)).success());
    let _ = submitter.join().unwrap();
    assert_eq!(std::fs::read_to_string(env.path("data/ok.txt")).unwrap(), "ok", "the run finished");
    assert!(!env.path("probes.sock").exists(), "the socket is removed at exit");
}

/// A datagram socket standing in for systemd's notify socket.
struct Manager {
    sock: UnixDatagram,
    path: String,
}

impl Manager {
    fn new(dir: &Path) -> Manager {
        let path = dir.join("notify.sock");
        let sock = UnixDatagram::bind(&path).unwrap();
        Manager { sock, path: path.display().to_string() }
    }

    /// The next message (at most `within` away), or None.
    fn next(&self, within: Duration) -> Option<String> {
        self.sock.set_read_timeout(Some(within)).unwrap();
        let mut buf = [0u8; 4096];
        match self.sock.recv(&mut buf) {
            Ok(n) => Some(String::from_utf8(buf[..n].to_vec()).unwrap()),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => None,
            Err(e) => panic!("{e}"),
        }
    }

    /// Skip watchdog pings until a message that is not one; panics after `within`.
    fn next_other(&self, within: Duration) -> String {
        let t0 = Instant::now();
        loop {
            let left = within.saturating_sub(t0.elapsed()).max(Duration::from_millis(1));
            match self.next(left) {
                Some(m) if m == "WATCHDOG=1" => {}
                Some(m) => return m,
                None => panic!("nothing but watchdog pings for {within:?}"),
            }
        }
    }
}

#[test]
fn systemd_hears_ready_watchdog_reload_and_stopping_and_the_watchdog_stops_when_the_writer_fails() {
    let env = setup(64);
    with_probes(&env, "listen = \"127.0.0.1:0\"");
    let manager = Manager::new(env.dir.path());
    // A 600 ms watchdog: pings every 300 ms.
    let mut server = Serving::start(&env, &[("NOTIFY_SOCKET", &manager.path), ("WATCHDOG_USEC", "600000")]);
    let ready = manager.next(Duration::from_secs(30)).expect("READY=1");
    let api = server.api();
    assert!(ready.starts_with("READY=1\nSTATUS=serving on https://"), "{ready}");
    assert!(ready.contains(&api) && ready.contains("probes http://127.0.0.1:"), "{ready}");
    // Told ready: the API and the probes accept connections now.
    std::net::TcpStream::connect(&api).expect("READY=1 before the API accepts");
    assert_eq!(get(&server.line("probes on "), "/readyz").0, 200);

    // Pings at about half the timeout.
    let t0 = Instant::now();
    for _ in 0..3 {
        assert_eq!(manager.next(Duration::from_secs(5)).as_deref(), Some("WATCHDOG=1"));
    }
    let three = t0.elapsed();
    assert!(three < Duration::from_secs(3), "three pings took {three:?}");

    // SIGHUP: reloading, with the monotonic clock, then ready again.
    server.signal("HUP");
    let reloading = manager.next_other(Duration::from_secs(10));
    let usec = reloading.strip_prefix("RELOADING=1\nMONOTONIC_USEC=").unwrap_or_else(|| panic!("{reloading}"));
    assert!(usec.parse::<u64>().unwrap() > 0);
    let again = manager.next_other(Duration::from_secs(30));
    assert_eq!(again, "READY=1\nSTATUS=serving; reloaded");

    // The evidence store stops taking commits (a disk error, injected
    // below the runner): the next record fails, the writer stops for good,
    // readiness says so and the watchdog pings stop.
    let db = rusqlite::Connection::open(env.path("state/evidence/evidence.db")).unwrap();
    db.busy_timeout(Duration::from_secs(10)).unwrap();
    db.execute_batch(
        "CREATE TRIGGER injected BEFORE INSERT ON records BEGIN SELECT RAISE(ABORT, 'injected disk failure'); END;",
    )
    .unwrap();
    server.signal("HUP"); // a reload appends a record
    assert!(manager.next_other(Duration::from_secs(10)).starts_with("RELOADING=1"));
    // Both, in either order: the reload's outcome and the watchdog's refusal.
    let (mut reload_told, mut unhealthy) = (false, false);
    while !(reload_told && unhealthy) {
        let m = manager.next_other(Duration::from_secs(30));
        if m.starts_with("READY=1\nSTATUS=") {
            assert!(m.contains("reload could not be recorded"), "{m}");
            reload_told = true;
        } else {
            assert!(m.starts_with("STATUS=unhealthy: the evidence writer failed"), "{m}");
            unhealthy = true;
        }
    }
    let probes = server.line("probes on ");
    let (status, body) = get(&probes, "/readyz");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("the evidence writer failed") && body.contains("injected disk failure"), "{body}");
    // No ping for several intervals: systemd would restart the runner.
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_millis(1500) {
        if let Some(m) = manager.next(Duration::from_millis(100)) {
            assert_ne!(m, "WATCHDOG=1", "a ping while the evidence writer is broken");
        }
    }

    // SIGTERM: stopping, then exit.
    server.signal("TERM");
    let stopping = manager.next_other(Duration::from_secs(10));
    assert!(stopping.starts_with("STOPPING=1\nSTATUS=shutting down"), "{stopping}");
    assert!(server.exit(Duration::from_secs(30)).success());
}

#[test]
fn a_watchdog_set_for_another_process_is_not_pinged() {
    let env = setup(64);
    let manager = Manager::new(env.dir.path());
    // WATCHDOG_PID names another process: the watchdog is not ours.
    let _server =
        Serving::start(&env, &[("NOTIFY_SOCKET", &manager.path), ("WATCHDOG_USEC", "200000"), ("WATCHDOG_PID", "1")]);
    assert!(manager.next(Duration::from_secs(30)).unwrap().starts_with("READY=1"));
    assert_eq!(manager.next(Duration::from_millis(600)), None, "pinged a watchdog set for another process");
}

/// The unit `init` writes is one systemd accepts (`systemd-analyze verify`,
/// with ExecStart pointed at this build), scores at most 2.0 in
/// `systemd-analyze security --offline=true` (main's unit before issue 17
/// scored 3.2), and `init` warns when the home is somewhere the unit hides.
#[test]
fn the_generated_unit_verifies_and_init_warns_about_hidden_homes() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN).args(["init", "home"]).current_dir(dir.path()).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let home = std::fs::canonicalize(dir.path().join("home")).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    if home.starts_with("/tmp") || home.starts_with("/var/tmp") {
        assert!(stderr.contains("warning:") && stderr.contains("PrivateTmp=yes"), "no warning for {home:?}: {stderr}");
    }
    let unit = std::fs::read_to_string(home.join("edge-runner.service")).unwrap();
    assert!(unit.contains("ExecStart=/usr/local/bin/edge-runner serve"), "{unit}");
    // The home from init starts with this unit's read-only config: the
    // passkeys file the runner writes is in the one writable config directory.
    let config = std::fs::read_to_string(home.join("runner.toml")).unwrap();
    assert!(config.contains("passkeys = \"approvers/enrolled/passkeys.json\""), "{config}");
    assert!(unit.contains(&format!("ReadWritePaths={0}/state {0}/approvers/enrolled\n", home.display())), "{unit}");

    let Ok(analyze) = which("systemd-analyze") else {
        eprintln!("SKIPPED: systemd-analyze is not installed (apt-get install systemd): the unit was not verified");
        return;
    };
    let checked = dir.path().join("edge-runner.service");
    std::fs::write(&checked, unit.replace("/usr/local/bin/edge-runner", BIN)).unwrap();
    let v = Command::new(&analyze).arg("verify").arg(&checked).output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&v.stdout), String::from_utf8_lossy(&v.stderr));
    assert!(v.status.success() && !said.contains("edge-runner.service:"), "systemd-analyze verify: {said}");
    // And a broken unit is caught by the same check (it is not a no-op).
    let broken = dir.path().join("broken").join("edge-runner.service");
    std::fs::create_dir(broken.parent().unwrap()).unwrap();
    std::fs::write(&broken, unit.replace("/usr/local/bin/edge-runner", "/nonexistent/edge-runner")).unwrap();
    assert!(!Command::new(&analyze).arg("verify").arg(&broken).output().unwrap().status.success());

    let s = Command::new(&analyze).args(["security", "--offline=true"]).arg(&checked).output().unwrap();
    let text = String::from_utf8_lossy(&s.stdout);
    let score: f64 = text
        .lines()
        .find_map(|l| l.split_once("Overall exposure level for edge-runner.service: "))
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in {text}{}", String::from_utf8_lossy(&s.stderr)));
    assert!(score <= 2.0, "exposure {score}: the unit lost hardening\n{text}");
}

fn which(name: &str) -> Result<std::path::PathBuf, ()> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .ok_or(())
}
