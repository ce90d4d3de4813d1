//! Reload under load: `cargo bench -p edge-runner --bench reload`.
//!
//! Starts `edge-runner serve` (the real binary, its own process) on a runner
//! home whose graph has 10,008 nodes (the example graph plus 10,000 services
//! in layers under `payments-config`) and whose policy is the example
//! policy. This process, separately, keeps 8 clients submitting tier-0 runs
//! of the diagnostic capsule (cert-expiry, reading a mount on a leaf node,
//! sent by reference) over mutual TLS the whole time, in three phases:
//!
//! 1. steady: `RELOAD_BENCH_SECS` seconds (default 5) with no reload;
//! 2. reloading: `RELOAD_BENCH_RELOADS` reloads (default 10) one after the
//!    other by the operator (`POST /v1/reload`), each with a graph and a
//!    policy that differ from the ones in force (so each is parsed,
//!    compiled, stored as evidence and swapped in), 100 ms apart;
//! 3. after: `RELOAD_BENCH_SECS` seconds with no reload.
//!
//! Reports each reload's time (as the operator sees it: request to answer,
//! recorded and in force), the runs' p50/p99 in each phase — "during" is
//! every run whose request overlapped a reload — and failed runs. Target:
//! no run fails, p99 during < 2× the steady p99.

mod common;

use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use edge_runner::server::client::Client;

const NODES: usize = 10_000;
const CONCURRENCY: usize = 8;

/// One submitted run: when its request started and ended (since the
/// benchmark's start), and whether it succeeded.
struct Sample {
    start: Duration,
    end: Duration,
    ok: bool,
}

/// The policy and graph texts of variant `n` (each variant's digests differ).
fn governance(n: usize, pem: &str) -> anyhow::Result<(String, String)> {
    let root = Path::new(test_programs::ROOT);
    let policy = format!(
        "{}\n[[signers]]\nname = \"agent\"\npublic_key = \"\"\"{pem}\"\"\"\nmounts = [\"*\"]\n",
        std::fs::read_to_string(root.join("examples/policy/policy.toml"))?
            .replace("name = \"example-enclave\"", &format!("name = \"example-enclave-{n}\""))
    );
    Ok((policy, common::wide_graph(NODES, n)?))
}

/// Put a variant in place: each file written whole, then renamed over the
/// old one (a reload never reads half a file).
fn install(h: &Path, (policy, graph): &(String, String)) -> std::io::Result<()> {
    for (name, text) in [("policy.toml", policy), ("graph.toml", graph)] {
        let tmp = h.join(format!("{name}.tmp"));
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, h.join(name))?;
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let secs: u64 = std::env::var("RELOAD_BENCH_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(5);
    let reloads: usize = std::env::var("RELOAD_BENCH_RELOADS").ok().and_then(|s| s.parse().ok()).unwrap_or(10);
    let home = tempfile::tempdir()?;
    let h = home.path();
    edge_runner::init::init(h, "bench.example/runner-1", "127.0.0.1:0", "edge-runner")?;
    let (capsule, _) = common::diagnostic_capsule(h)?;
    let pem = std::fs::read_to_string(h.join("agent.pub"))?;
    // Every variant made before the load starts: the benchmark's own work
    // does not compete with the server's during the reloads.
    let variants = (0..=reloads).map(|n| governance(n, &pem)).collect::<anyhow::Result<Vec<_>>>()?;
    install(h, &variants[0])?;
    std::fs::write(
        h.join("runner.toml"),
        "[runner]\nname = \"bench.example/runner-1\"\nstate_dir = \"state\"\nidentity_key = \"state/identity.key\"\n\
         [policy]\nfile = \"policy.toml\"\ngraph = \"graph.toml\"\n\
         [mounts.certs]\npath = \"certs\"\nnode = \"svc-09999\"\n\
         [server]\nlisten = \"127.0.0.1:0\"\ncert = \"tls/server.pem\"\nkey = \"tls/server.key\"\n\
         client_ca = \"tls/ca.pem\"\nagents = [\"spiffe://edge-runner.local/agent/dev\"]\nqueue = 1024\n\
         [server.access]\nreload = [\"spiffe://edge-runner.local/operator\"]\n",
    )?;
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let full = serde_json::to_vec(&serde_json::json!({ "capsule": b64(&capsule) }))?;
    let parsed = edge_core::container::CapsuleFile::parse(&capsule)?;
    let by_ref = serde_json::to_vec(&serde_json::json!({
        "manifest": b64(parsed.manifest_bytes()),
        "signature": b64(parsed.bundle().expect("signed")),
    }))?;

    let mut server = Command::new(env!("CARGO_BIN_EXE_edge-runner"))
        .args(["serve", "--config", "runner.toml"])
        .current_dir(h)
        .stdout(Stdio::piped())
        // RELOAD_BENCH_LOG=<file>: keep the server's log (its `configuration
        // reloaded` lines say how long loading took).
        .stderr(match std::env::var_os("RELOAD_BENCH_LOG") {
            Some(p) => Stdio::from(std::fs::File::create(p)?),
            None => Stdio::null(),
        })
        .env("EDGE_RUNNER_LOG", "warn,edge_runner::pipeline::reload=info")
        .spawn()?;
    let mut line = String::new();
    BufReader::new(server.stdout.take().expect("piped")).read_line(&mut line)?;
    let url = line.trim().strip_prefix("listening on ").expect("serve prints its address").to_owned();
    let tls = h.join("tls");
    let client = |who: &str| {
        Client::new(&url, &tls.join("ca.pem"), &tls.join(format!("{who}.pem")), &tls.join(format!("{who}.key")))
    };

    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    // Warm-up: the component compiled and cached; the run is tier 0.
    rt.block_on(async {
        let mut c = client("agent")?;
        let r = c.post("/v1/proposals", full.clone(), "application/json").await?;
        anyhow::ensure!(r.status.as_u16() == 201, "warm-up submission failed: {}", r.error_message());
        let v = r.json()?;
        anyhow::ensure!(
            v["state"] == "completed" && v["tier"] == 0,
            "the diagnostic is not a completed tier-0 run: {v}"
        );
        Ok(())
    })?;

    let t0 = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let (samples, reload_spans) = rt.block_on(async {
        let mut load = tokio::task::JoinSet::new();
        for _ in 0..CONCURRENCY {
            let mut c = client("agent")?;
            let (stop, body) = (stop.clone(), by_ref.clone());
            load.spawn(async move {
                let mut out = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let start = t0.elapsed();
                    let ok = matches!(c.post("/v1/proposals", body.clone(), "application/json").await,
                        Ok(r) if r.status.as_u16() == 201 && r.json().is_ok_and(|v| v["state"] == "completed"));
                    out.push(Sample { start, end: t0.elapsed(), ok });
                }
                out
            });
        }
        tokio::time::sleep(Duration::from_secs(secs)).await;
        let mut operator = client("operator")?;
        let mut spans = Vec::new();
        for (i, variant) in variants.iter().enumerate().skip(1) {
            install(h, variant)?;
            let start = t0.elapsed();
            let r = operator.post("/v1/reload", Vec::new(), "application/json").await?;
            let end = t0.elapsed();
            let v = r.json()?;
            anyhow::ensure!(
                r.status.as_u16() == 200 && v["applied"] == true && v["old"]["graph"] != v["new"]["graph"],
                "reload {i} was not applied with a new graph: {v}"
            );
            spans.push((start, end));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(Duration::from_secs(secs)).await;
        stop.store(true, Ordering::Relaxed);
        let mut all = Vec::new();
        while let Some(r) = load.join_next().await {
            all.extend(r?);
        }
        Ok::<_, anyhow::Error>((all, spans))
    })?;
    let rss = common::peak_rss_mib(server.id());
    let _ = Command::new("kill").args(["-TERM", &server.id().to_string()]).status();
    let _ = server.wait();

    let (first, last) = (reload_spans[0].0, reload_spans[reload_spans.len() - 1].1);
    let overlaps = |s: &Sample| reload_spans.iter().any(|&(a, b)| s.start < b && s.end > a);
    let mut phases: [(&str, Vec<Duration>, usize); 3] =
        [("steady (before)", Vec::new(), 0), ("during a reload", Vec::new(), 0), ("after", Vec::new(), 0)];
    for s in &samples {
        let phase = if overlaps(s) {
            1
        } else if s.end <= first {
            0
        } else if s.start >= last {
            2
        } else {
            continue; // between two reloads: neither steady nor during
        };
        if s.ok {
            phases[phase].1.push(s.end - s.start);
        } else {
            phases[phase].2 += 1;
        }
    }
    let failed: usize = samples.iter().filter(|s| !s.ok).count();
    let mut times: Vec<Duration> = reload_spans.iter().map(|&(a, b)| b - a).collect();
    times.sort();
    println!(
        "reload of a {}-node graph and the policy under {CONCURRENCY} concurrent tier-0 submitters (by reference, mTLS, keep-alive):",
        NODES + 8
    );
    println!(
        "  reload time ({reloads} reloads, request to answer, recorded and in force): median {:.1?}, max {:.1?}",
        common::percentile(&times, 0.5),
        times[times.len() - 1]
    );
    for (name, l, fails) in &mut phases {
        l.sort();
        println!(
            "  runs {name:<16}: {:>6} ok, {fails} failed, p50 {:>8.1?}, p99 {:>8.1?}",
            l.len(),
            common::percentile(l, 0.5),
            common::percentile(l, 0.99)
        );
    }
    let steady = common::percentile(&phases[0].1, 0.99);
    let during = common::percentile(&phases[1].1, 0.99);
    let after = common::percentile(&phases[2].1, 0.99);
    println!(
        "  p99 during / steady = {:.2}, after / steady = {:.2}; server peak RSS {rss:.1} MiB",
        during.as_secs_f64() / steady.as_secs_f64(),
        after.as_secs_f64() / steady.as_secs_f64()
    );
    println!(
        "targets: no run fails {} ({failed} failed), p99 during < 2x steady {}",
        if failed == 0 { "met" } else { "NOT met" },
        if during < steady * 2 { "met" } else { "NOT met" }
    );
    Ok(())
}
