//! The console's proposal page: `cargo bench -p edge-runner --bench console`.
//!
//! A waiting tier-2 proposal whose diff deletes a 1,000-line log file, decided
//! over a 10,000-node graph (the example graph plus 10,000 services that all
//! depend, in layers, on the node the capsule writes: every one is in the
//! blast radius). Times what `GET /proposals/{id}` does on the server after
//! the session check: the proposal detail read back from the evidence store
//! (records, plan, manifest, preview and its content, quorum so far), the
//! blast-radius picture over the compiled graph (cached per graph digest,
//! as in the daemon), and the HTML with every text escaped. Target: median
//! ≤ 50 ms. Reports the median and p90, and the page size.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use edge_runner::config::RunnerConfig;
use edge_runner::console::Console;
use edge_runner::service::{RunService, Submission};

const NODES: usize = 10_000;
const LINES: usize = 1_000;

fn capsule(home: &Path) -> anyhow::Result<(Vec<u8>, String)> {
    let root = Path::new(test_programs::ROOT);
    let wasm = std::fs::read(test_programs::CLEANUP)?;
    let key = edge_core::signature::CapsuleSigningKey::generate();
    let text = std::fs::read_to_string(root.join("examples/capsules/cleanup/capsule.toml"))?;
    let manifest = edge_core::manifest::Manifest::from_authoring_toml(
        &text,
        edge_core::manifest::ComponentRef { sha256: edge_core::Sha256Digest::of(&wasm), size: wasm.len() as u64 },
    )?;
    let file = edge_core::container::CapsuleFile::new(manifest, wasm)?;
    std::fs::write(home.join("agent.pub"), key.public_key_pem())?;
    Ok((file.clone().with_bundle(key.sign_capsule(&file)).to_bytes(), key.public_key_pem()))
}

fn main() -> anyhow::Result<()> {
    let iters: usize = std::env::var("BENCH_ITERS").ok().and_then(|s| s.parse().ok()).unwrap_or(200);
    let home = tempfile::tempdir()?;
    let h = home.path();
    let (capsule, pem) = capsule(h)?;
    let root = Path::new(test_programs::ROOT);
    let policy = format!(
        "{}\n[[signers]]\nname = \"agent\"\npublic_key = \"\"\"{pem}\"\"\"\nmounts = [\"*\"]\nwritable_mounts = [\"logs\"]\n",
        std::fs::read_to_string(root.join("examples/policy/policy.toml"))?
    );
    std::fs::write(h.join("policy.toml"), policy)?;
    std::fs::write(h.join("graph.toml"), common::wide_graph(NODES, 0)?)?;
    std::fs::write(h.join("allowed_signers"), "")?;
    std::fs::write(h.join("roles.toml"), "[principals]\n\"alice@bank.example\" = [\"sre\"]\n")?;
    std::fs::create_dir_all(h.join("logs"))?;
    let log: String =
        (0..LINES).map(|i| format!("2026-11-01T00:00:{:02}Z INFO request {i} served in 12ms\n", i % 60)).collect();
    let old = h.join("logs/app.1.log");
    std::fs::write(&old, log)?;
    std::fs::File::options()
        .write(true)
        .open(&old)?
        .set_modified(SystemTime::now() - Duration::from_secs(30 * 86_400))?;
    let cache = root.join("target/test-component-cache");
    std::fs::write(
        h.join("runner.toml"),
        format!(
            "[runner]\nname = \"bench\"\nstate_dir = \"state\"\ncache_dir = {:?}\n\n[policy]\nfile = \"policy.toml\"\ngraph = \"graph.toml\"\n\n\
             [mounts.logs]\npath = \"logs\"\nwritable = true\nnode = \"payments-config\"\npreview = \"full\"\n\n\
             [approvers]\nallowed_signers = \"allowed_signers\"\nroles = \"roles.toml\"\n\n\
             [console]\nlisten = \"127.0.0.1:0\"\ncert = \"unused.pem\"\nkey = \"unused.key\"\n",
            cache.display().to_string()
        ),
    )?;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let config = RunnerConfig::load(&h.join("runner.toml"))?;
    let settings = config.console.clone().expect("[console]");
    let (console, id) = rt.block_on(async {
        let runs: Arc<RunService> = RunService::start(config, 2, 16, Arc::default()).await?;
        let reply = runs
            .submit(Submission::File(capsule), "bench-agent".into())
            .await
            .map_err(|e| anyhow::anyhow!("{e:?}"))??;
        anyhow::ensure!(
            reply.state == "awaiting-approval",
            "the proposal does not wait: {}",
            serde_json::to_string(&reply)?
        );
        let origin = webauthn_rs::prelude::Url::parse("https://localhost:8444")?;
        Ok::<_, anyhow::Error>((Console::new(runs, &settings, &origin)?, reply.id))
    })?;
    let page =
        console.render_proposal("alice@bank.example", "csrf", &id).map_err(|r| anyhow::anyhow!("{}", r.status()))?;
    let removed = page.matches("class=\"dl del\"").count();
    anyhow::ensure!(removed >= LINES, "the page shows {removed} removed lines, not {LINES}");
    anyhow::ensure!(page.contains("<svg"), "no blast-radius picture");
    let mut times = Vec::with_capacity(iters);
    for i in 0..iters + 5 {
        let t = Instant::now();
        let page = console
            .render_proposal("alice@bank.example", "csrf", &id)
            .map_err(|r| anyhow::anyhow!("{}", r.status()))?;
        let took = t.elapsed();
        std::hint::black_box(page);
        if i >= 5 {
            times.push(took);
        }
    }
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "console proposal page ({LINES}-line diff, {} graph nodes, {} KiB): median {:.2} ms, p90 {:.2} ms over {iters} (target: median ≤ 50 ms)",
        NODES + 8,
        page.len() / 1024,
        ms(times[times.len() / 2]),
        ms(times[times.len() * 9 / 10]),
    );
    Ok(())
}
