//! A tier-0 remediation, warm: `cargo bench -p edge-runner --bench remediation`.
//!
//! The config-drift capsule restores `max_connections` in a small TOML file
//! (tier 0: no policy, `dangerous_run_without_policy`): admission, plan,
//! apply on a staged copy (since the previewed-proposals issue: before
//! authorization, with the file described and its content kept as
//! evidence), commit, verify, evidence. Each iteration puts the drifted file
//! back first (not timed). Reports the median and p90 of whole runs.
//!
//! Written against the library API the runner had before previews, so the
//! same file measures the base and the new code side by side (run each
//! build's binary alternately; see the closing note of issue 12).

use std::path::Path;
use std::time::{Duration, Instant};

use edge_runner::config::RunnerConfig;
use edge_runner::pipeline::Runner;

const DRIFTED: &str =
    "# App config\n[server]\nhost = \"0.0.0.0\"\nmax_connections = 100 # tuned\n\n[log]\nlevel = \"info\"\n";

fn capsule(home: &Path) -> anyhow::Result<Vec<u8>> {
    let root = Path::new(test_programs::ROOT);
    let wasm = std::fs::read(test_programs::CONFIG_DRIFT)?;
    let key = edge_core::signature::CapsuleSigningKey::generate();
    std::fs::write(home.join("agent.pub"), key.public_key_pem())?;
    let text = std::fs::read_to_string(root.join("examples/capsules/config-drift/capsule.toml"))?;
    let manifest = edge_core::manifest::Manifest::from_authoring_toml(
        &text,
        edge_core::manifest::ComponentRef { sha256: edge_core::Sha256Digest::of(&wasm), size: wasm.len() as u64 },
    )?;
    let file = edge_core::container::CapsuleFile::new(manifest, wasm)?;
    Ok(file.clone().with_bundle(key.sign_capsule(&file)).to_bytes())
}

fn main() -> anyhow::Result<()> {
    let iters: usize = std::env::var("BENCH_ITERS").ok().and_then(|s| s.parse().ok()).unwrap_or(100);
    let home = tempfile::tempdir()?;
    let h = home.path();
    let capsule = capsule(h)?;
    std::fs::create_dir_all(h.join("config"))?;
    std::fs::write(
        h.join("runner.toml"),
        "[runner]\nname = \"bench\"\ndangerous_run_without_policy = true\n[[signers]]\nname = \"a\"\npublic_key = \"agent.pub\"\n\
         [mounts.config]\npath = \"config\"\nwritable = true\n",
    )?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let runner = Runner::open(RunnerConfig::load(&h.join("runner.toml"))?)?;
    let mut times = Vec::with_capacity(iters);
    for i in 0..iters + 5 {
        std::fs::write(h.join("config/app.toml"), DRIFTED)?;
        let t = Instant::now();
        let r = rt.block_on(runner.exec(&capsule))?;
        let took = t.elapsed();
        assert_eq!(r.outcome, edge_core::evidence::Outcome::Committed, "{:?}", r.refusal);
        if i >= 5 {
            times.push(took);
        }
    }
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "tier-0 remediation (config-drift), warm, {iters} runs: median {:.2} ms, p90 {:.2} ms",
        ms(times[times.len() / 2]),
        ms(times[times.len() * 9 / 10])
    );
    Ok(())
}
