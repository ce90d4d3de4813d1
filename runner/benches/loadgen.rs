//! Load generator: `cargo bench -p edge-runner --bench loadgen`.
//!
//! Starts `edge-runner serve` (the real binary, its own process) on a fresh
//! runner home, then submits tier-0 runs of the diagnostic capsule
//! (cert-expiry) over mutual TLS with keep-alive connections, at concurrency
//! 1, 8 and 64, in interleaved rounds. The capsule is uploaded in full once
//! (warm-up); the measured submissions send it by reference (manifest and
//! signature; the runner takes the component it holds), and one more level
//! at 64 uploads the whole capsule every time, for comparison. Reports
//! runs/s, p50/p99 latency and the server's peak RSS (VmHWM). Targets:
//! ≥ 1,000 governed runs/s at 64, p99 < 100 ms (issue 14), RSS < 300 MB.
//!
//! The runner's store is pre-grown: a copy of the start-up benchmark's
//! store of `LOADGEN_LOG_RUNS` synthetic runs (~10 records each; default
//! 100000, a million records; `0` for an empty store), so the figures are
//! those of a runner with a long history. The client is this process; the
//! server is its own.
//!
//! The same runner also pulls from NATS JetStream (`[nats]`, a real
//! `nats-server` started here on 127.0.0.1): the same submissions are
//! published to its inbound stream and the answer awaited, at the same
//! concurrencies, interleaved with the HTTPS rounds; the report gives both
//! side by side (target for NATS at 64: ≥ 90% of the HTTPS throughput;
//! issue 16). Latency over NATS is from publish to answer.
//!
//! `LOADGEN_SECS` sets the length of each level in a round (default 4 s),
//! `LOADGEN_ROUNDS` the number of interleaved rounds (default 5; the
//! figures are medians over rounds, and the NATS/HTTPS ratio is also
//! printed round by round).

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::median_f64 as median;
use edge_runner::server::client::Client;

/// A level's transport and kind of submission, padded to line up.
fn level_name(via: Via, full: bool) -> (&'static str, &'static str) {
    (if via == Via::Nats { "NATS " } else { "HTTPS" }, if full { "full upload " } else { "by reference" })
}

/// (transport, concurrency, full upload every time?)
const LEVELS: [(Via, usize, bool); 8] = [
    (Via::Https, 1, false),
    (Via::Https, 8, false),
    (Via::Https, 64, false),
    (Via::Https, 64, true),
    (Via::Nats, 1, false),
    (Via::Nats, 8, false),
    (Via::Nats, 64, false),
    (Via::Nats, 64, true),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Via {
    Https,
    Nats,
}

/// A `nats-server` with JetStream on 127.0.0.1 (killed on drop).
struct NatsServer {
    child: std::process::Child,
    _store: tempfile::TempDir,
    port: u16,
}

impl NatsServer {
    fn start() -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let conf = dir.path().join("nats.conf");
        std::fs::write(
            &conf,
            format!(
                "listen: 127.0.0.1:{port}\nmax_payload: 4MB\njetstream {{ store_dir: {:?} }}\n",
                dir.path().join("js")
            ),
        )?;
        let child = Command::new("nats-server")
            .args(["-c", conf.to_str().expect("utf-8")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| anyhow::anyhow!("cannot start nats-server ({e}): apt-get install nats-server"))?;
        let t = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            anyhow::ensure!(t.elapsed() < Duration::from_secs(20), "nats-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Self { child, _store: dir, port })
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn main() -> anyhow::Result<()> {
    let secs: u64 = std::env::var("LOADGEN_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(4);
    let rounds: usize = std::env::var("LOADGEN_ROUNDS").ok().and_then(|s| s.parse().ok()).unwrap_or(5).max(1);
    let log_runs: usize = std::env::var("LOADGEN_LOG_RUNS").ok().and_then(|s| s.parse().ok()).unwrap_or(100_000);
    let (home, records) = common::copied_log_home(log_runs)?;
    let h = home.path();
    eprintln!("serving a store of {records} records");
    // The diagnostic capsule, signed by a key the runner trusts (no policy:
    // every admitted capsule is tier 0), reading a certs mount.
    let (capsule, _) = common::diagnostic_capsule(h)?;
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let body = serde_json::to_vec(&serde_json::json!({ "capsule": b64(&capsule) }))?;
    let parsed = edge_core::container::CapsuleFile::parse(&capsule)?;
    let by_ref = serde_json::to_vec(&serde_json::json!({
        "manifest": b64(parsed.manifest_bytes()),
        "signature": b64(parsed.bundle().expect("signed")),
    }))?;
    let nats = NatsServer::start()?;
    let nats_url = format!("nats://127.0.0.1:{}", nats.port);
    std::fs::write(
        h.join("runner.toml"),
        format!(
            "[runner]\nname = \"bench.example/runner-1\"\nstate_dir = \"state\"\nidentity_key = \"state/identity.key\"\n\
             dangerous_run_without_policy = true\n\
             [[signers]]\nname = \"agent\"\npublic_key = \"agent.pub\"\n[mounts.certs]\npath = \"certs\"\n\
             [server]\nlisten = \"127.0.0.1:0\"\ncert = \"tls/server.pem\"\nkey = \"tls/server.key\"\n\
             client_ca = \"tls/ca.pem\"\nagents = [\"spiffe://edge-runner.local/agent/dev\"]\nqueue = 1024\n\
             [nats]\nurl = \"{nats_url}\"\nsubject = \"runner-1\"\n"
        ),
    )?;

    // What NATS answers count only when signed with it.
    let runner_key = common::write_runner_key(h)?;
    // The server's log, for a failed request's reason.
    let log = h.parent().expect("bench-stores").join("loadgen-serve.log");
    let (mut server, url) = common::serve_until(h, &log, "listening on ")?;
    // A start runs the full evidence check in the background (nice 10); the
    // figures are those of a runner past it, in its steady state.
    let waited = common::wait_full_check(&log)?;
    eprintln!("the background full check finished {waited:.1?} after the server was ready");
    let tls = h.join("tls");

    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); LEVELS.len()];
    let mut lat: Vec<Vec<Duration>> = vec![Vec::new(); LEVELS.len()];
    let mut errors = 0usize;
    // CPU used per level (runner, broker, this client), and the runs it made.
    let mut cpu: Vec<[f64; 3]> = vec![[0.0; 3]; LEVELS.len()];
    let mut done = vec![0usize; LEVELS.len()];
    let (server_pid, nats_pid) = (server.id(), nats.child.id());
    let cpu_now = || [common::cpu_ms(Some(server_pid)), common::cpu_ms(Some(nats_pid)), common::cpu_ms(None)];
    // Warm-up: compile and cache the component.
    rt.block_on(async {
        let mut c = Client::new(&url, &tls.join("ca.pem"), &tls.join("agent.pem"), &tls.join("agent.key"))?;
        let r = c.post("/v1/proposals", body.clone(), "application/json").await?;
        anyhow::ensure!(r.status.as_u16() == 201, "warm-up submission failed: {}", r.error_message());
        anyhow::ensure!(r.json()?["state"] == "completed", "the diagnostic did not complete: {:?}", r.json()?);
        Ok(())
    })?;
    let nats_client = rt.block_on(async {
        // The runner sets up its streams once connected.
        let c = edge_runner::intake::nats_client::NatsClient::plain(&nats_url, "runner-1", &runner_key).await?;
        let t = Instant::now();
        loop {
            match c.request("submit", capsule.clone(), Duration::from_secs(30)).await {
                Ok(a) if a["state"] == "completed" => break,
                Ok(a) => anyhow::bail!("the NATS warm-up did not complete: {a}"),
                Err(e) if t.elapsed() > Duration::from_secs(60) => return Err(e),
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
        anyhow::Ok(std::sync::Arc::new(c))
    })?;
    let by_ref_nats = serde_json::to_vec(&serde_json::json!({
        "manifest": b64(parsed.manifest_bytes()),
        "signature": b64(parsed.bundle().expect("signed")),
    }))?;
    // Where the server's peak resident set grew: VmHWM read after each
    // level, each rise put down to the level that caused it.
    let at_ready = common::peak_rss_mib(server.id());
    let mut hwm = at_ready;
    let mut raised = vec![0.0f64; LEVELS.len()];
    for _ in 0..rounds {
        for (li, &(via, conc, full)) in LEVELS.iter().enumerate() {
            let body = if full { body.clone() } else { by_ref.clone() };
            let before = cpu_now();
            let (n, mut l, errs, elapsed) = if via == Via::Nats {
                let (kind, payload) =
                    if full { ("submit", capsule.clone()) } else { ("submit-ref", by_ref_nats.clone()) };
                rt.block_on(async {
                    let deadline = Instant::now() + Duration::from_secs(secs);
                    let started = Instant::now();
                    let mut tasks = tokio::task::JoinSet::new();
                    for _ in 0..conc {
                        let (c, payload) = (nats_client.clone(), payload.clone());
                        tasks.spawn(async move {
                            let (mut lat, mut errs) = (Vec::new(), 0);
                            while Instant::now() < deadline {
                                let t = Instant::now();
                                match c.request(kind, payload.clone(), Duration::from_secs(30)).await {
                                    Ok(a) if a["state"] == "completed" => lat.push(t.elapsed()),
                                    _ => errs += 1,
                                }
                            }
                            (lat, errs)
                        });
                    }
                    let (mut all, mut errs) = (Vec::new(), 0);
                    while let Some(r) = tasks.join_next().await {
                        let (l, e) = r.expect("task");
                        all.extend(l);
                        errs += e;
                    }
                    (all.len(), all, errs, started.elapsed())
                })
            } else {
                rt.block_on(async {
                    let deadline = Instant::now() + Duration::from_secs(secs);
                    let started = Instant::now();
                    let mut tasks = tokio::task::JoinSet::new();
                    for _ in 0..conc {
                        let (url, tls, body) = (url.clone(), tls.clone(), body.clone());
                        tasks.spawn(async move {
                            let mut c =
                                Client::new(&url, &tls.join("ca.pem"), &tls.join("agent.pem"), &tls.join("agent.key"))
                                    .expect("client");
                            let mut lat = Vec::new();
                            let mut errs = 0;
                            while Instant::now() < deadline {
                                let t = Instant::now();
                                match c.post("/v1/proposals", body.clone(), "application/json").await {
                                    // As over NATS: the answer read, and the run completed.
                                    Ok(r)
                                        if r.status.as_u16() == 201
                                            && r.json().is_ok_and(|a| a["state"] == "completed") =>
                                    {
                                        lat.push(t.elapsed())
                                    }
                                    _ => errs += 1,
                                }
                            }
                            (lat, errs)
                        });
                    }
                    let mut all = Vec::new();
                    let mut errs = 0;
                    while let Some(r) = tasks.join_next().await {
                        let (l, e) = r.expect("task");
                        all.extend(l);
                        errs += e;
                    }
                    (all.len(), all, errs, started.elapsed())
                })
            };
            let after = cpu_now();
            for (k, c) in cpu[li].iter_mut().enumerate() {
                *c += after[k] - before[k];
            }
            done[li] += n;
            errors += errs;
            rates[li].push(n as f64 / elapsed.as_secs_f64());
            l.sort();
            lat[li].extend(l);
            let now = common::peak_rss_mib(server.id());
            raised[li] += now - hwm;
            hwm = now;
        }
    }
    let rss = common::peak_rss_mib(server.id());
    let _ = Command::new("kill").args(["-TERM", &server.id().to_string()]).status();
    let _ = server.wait();

    drop(nats_client);
    drop(nats);
    println!(
        "tier-0 runs of the diagnostic capsule over mTLS (keep-alive) and over NATS JetStream (publish to \
         answer), {rounds} interleaved rounds of {secs}s, on a store of {records} records:"
    );
    for (li, (via, conc, full)) in LEVELS.iter().enumerate() {
        let mut l = lat[li].clone();
        l.sort();
        let (via, how) = level_name(*via, *full);
        println!(
            "  {via} {how} concurrency {conc:>2}: {:>7.1} runs/s (median of rounds)  p50 {:>8.1?}  p99 {:>8.1?}  ({} runs)",
            median(rates[li].clone()),
            common::percentile(&l, 0.50),
            common::percentile(&l, 0.99),
            l.len()
        );
    }
    println!("  CPU per run (all rounds; the broker runs beside both transports, idle for HTTPS):");
    for (li, (via, conc, full)) in LEVELS.iter().enumerate() {
        let per = |k: usize| cpu[li][k] * 1000.0 / done[li].max(1) as f64;
        let (via, how) = level_name(*via, *full);
        println!(
            "    {via} {how} {conc:>2}: runner {:>6.0} µs, nats-server {:>5.0} µs, load generator {:>5.0} µs",
            per(0),
            per(1),
            per(2)
        );
    }
    println!("  server peak RSS (VmHWM): {rss:.1} MiB; failed requests: {errors} (server log: {})", log.display());
    let grew: Vec<String> = LEVELS
        .iter()
        .zip(&raised)
        .filter(|(_, r)| **r > 0.0)
        .map(|((via, conc, full), r)| {
            let (via, how) = level_name(*via, *full);
            format!("{} {} {conc} +{r:.1}", via.trim_end(), how.trim_end())
        })
        .collect();
    println!("  where the peak grew (MiB, all rounds): {at_ready:.1} at ready; {}", grew.join(", "));
    let at64 = median(rates[2].clone());
    let mut l64 = lat[2].clone();
    l64.sort();
    println!(
        "targets at 64 (by reference): >= 1000 runs/s {}, p99 < 100 ms {}, RSS < 300 MB {}",
        if at64 >= 1000.0 { "met" } else { "NOT met" },
        if common::percentile(&l64, 0.99) < Duration::from_millis(100) { "met" } else { "NOT met" },
        if rss < 300.0 { "met" } else { "NOT met" }
    );
    let (nats64, nats64_full, https64_full) =
        (median(rates[6].clone()), median(rates[7].clone()), median(rates[3].clone()));
    println!(
        "NATS vs HTTPS at 64, side by side: by reference {:.2}x, full upload {:.2}x (target >= 0.90x: {})",
        nats64 / at64,
        nats64_full / https64_full,
        if nats64 / at64 >= 0.9 { "met" } else { "NOT met" }
    );
    // Each round's own ratio (its two levels a few seconds apart): the
    // spread the median above comes from.
    let per_round: Vec<String> = rates[6].iter().zip(&rates[2]).map(|(n, h)| format!("{:.2}", n / h)).collect();
    println!("  NATS vs HTTPS at 64 by reference, round by round: {}", per_round.join(" "));
    Ok(())
}
