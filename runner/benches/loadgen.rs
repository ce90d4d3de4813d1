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
//! `LOADGEN_SECS` sets the length of each round (default 4 s).

mod common;

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use edge_runner::server::client::Client;

const ROUNDS: usize = 3;
/// (concurrency, full upload every time?)
const LEVELS: [(usize, bool); 4] = [(1, false), (8, false), (64, false), (64, true)];

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> anyhow::Result<()> {
    let secs: u64 = std::env::var("LOADGEN_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(4);
    let log_runs: usize = std::env::var("LOADGEN_LOG_RUNS").ok().and_then(|s| s.parse().ok()).unwrap_or(100_000);
    let (grown, records) = common::log_home(log_runs)?;
    let home = tempfile::tempdir_in(grown.parent().expect("bench-stores"))?;
    let h = home.path();
    let st = Command::new("cp").arg("-a").arg(format!("{}/.", grown.display())).arg(h).status()?;
    anyhow::ensure!(st.success(), "copying the pre-grown runner home failed");
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
    std::fs::write(
        h.join("runner.toml"),
        "[runner]\nname = \"bench.example/runner-1\"\nstate_dir = \"state\"\nidentity_key = \"state/identity.key\"\n\
         dangerous_run_without_policy = true\n\
         [[signers]]\nname = \"agent\"\npublic_key = \"agent.pub\"\n[mounts.certs]\npath = \"certs\"\n\
         [server]\nlisten = \"127.0.0.1:0\"\ncert = \"tls/server.pem\"\nkey = \"tls/server.key\"\n\
         client_ca = \"tls/ca.pem\"\nagents = [\"spiffe://edge-runner.local/agent/dev\"]\nqueue = 1024\n",
    )?;

    // The server's log, for a failed request's reason.
    let log = grown.parent().expect("bench-stores").join("loadgen-serve.log");
    let mut server = Command::new(env!("CARGO_BIN_EXE_edge-runner"))
        .args(["serve", "--config", "runner.toml"])
        .current_dir(h)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log)?)
        .spawn()?;
    let mut line = String::new();
    BufReader::new(server.stdout.take().expect("piped")).read_line(&mut line)?;
    let url = line.trim().strip_prefix("listening on ").expect("serve prints its address").to_owned();
    // A start runs the full evidence check in the background (nice 10); the
    // figures are those of a runner past it, in its steady state.
    let t = Instant::now();
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        anyhow::ensure!(
            !text.contains("full evidence check failed"),
            "the full evidence check failed: see {}",
            log.display()
        );
        if text.contains("full evidence check passed") {
            break;
        }
        anyhow::ensure!(t.elapsed() < Duration::from_secs(600), "the full evidence check did not finish in 10 minutes");
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!("the background full check finished {:.1?} after the server was ready", t.elapsed());
    let tls = h.join("tls");

    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); LEVELS.len()];
    let mut lat: Vec<Vec<Duration>> = vec![Vec::new(); LEVELS.len()];
    let mut errors = 0usize;
    // Warm-up: compile and cache the component.
    rt.block_on(async {
        let mut c = Client::new(&url, &tls.join("ca.pem"), &tls.join("agent.pem"), &tls.join("agent.key"))?;
        let r = c.post("/v1/proposals", body.clone(), "application/json").await?;
        anyhow::ensure!(r.status.as_u16() == 201, "warm-up submission failed: {}", r.error_message());
        anyhow::ensure!(r.json()?["state"] == "completed", "the diagnostic did not complete: {:?}", r.json()?);
        Ok(())
    })?;
    for _ in 0..ROUNDS {
        for (li, &(conc, full)) in LEVELS.iter().enumerate() {
            let body = if full { body.clone() } else { by_ref.clone() };
            let (n, mut l, errs, elapsed) = rt.block_on(async {
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
                                Ok(r) if r.status.as_u16() == 201 => lat.push(t.elapsed()),
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
            });
            errors += errs;
            rates[li].push(n as f64 / elapsed.as_secs_f64());
            l.sort();
            lat[li].extend(l);
        }
    }
    let rss = common::peak_rss_mib(server.id());
    let _ = Command::new("kill").args(["-TERM", &server.id().to_string()]).status();
    let _ = server.wait();

    println!(
        "tier-0 runs of the diagnostic capsule over mTLS, keep-alive, {ROUNDS} interleaved rounds of {secs}s, \
         on a store of {records} records:"
    );
    for (li, (conc, full)) in LEVELS.iter().enumerate() {
        let mut l = lat[li].clone();
        l.sort();
        let how = if *full { "full upload " } else { "by reference" };
        println!(
            "  {how} concurrency {conc:>2}: {:>7.1} runs/s (median of rounds)  p50 {:>8.1?}  p99 {:>8.1?}  ({} runs)",
            median(rates[li].clone()),
            common::percentile(&l, 0.50),
            common::percentile(&l, 0.99),
            l.len()
        );
    }
    println!("  server peak RSS (VmHWM): {rss:.1} MiB; failed requests: {errors} (server log: {})", log.display());
    let at64 = median(rates[2].clone());
    let mut l64 = lat[2].clone();
    l64.sort();
    println!(
        "targets at 64 (by reference): >= 1000 runs/s {}, p99 < 100 ms {}, RSS < 300 MB {}",
        if at64 >= 1000.0 { "met" } else { "NOT met" },
        if common::percentile(&l64, 0.99) < Duration::from_millis(100) { "met" } else { "NOT met" },
        if rss < 300.0 { "met" } else { "NOT met" }
    );
    Ok(())
}
