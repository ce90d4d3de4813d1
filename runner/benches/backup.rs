//! Backup benchmark: `cargo bench -p edge-runner --bench backup`.
//!
//! A store of realistic size and shape: the synthetic log of
//! `edge_evidence::synth` (signed capsules, the example policy, tier-0
//! cleanups and every 20th proposal a tier-2 change approved by two people;
//! about 100,000 records with their artifacts), written into a runner's
//! store as the runner writes it, with a checkpoint signed by the runner's
//! identity key. Then `edge_runner::backup::backup` (snapshot, verification
//! of the copy, signing its head and checking it again, files, manifest, reading it all
//! back), a few rounds on a quiet store and a few while eight writers keep
//! appending through group commit, as a serving runner does. Medians.

mod common;

use std::path::{Path, PathBuf};

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use edge_core::evidence::Event;
use edge_evidence::synth;
use edge_runner::backup::{Done, backup};
use edge_runner::config::RunnerConfig;
use edge_runner::store::log::EvidenceLog;

const NAME: &str = "bench-runner";
const RUNS: usize = 10_000;
const ROUNDS: usize = 5;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// A runner home whose store holds the synthetic log; returns the config path.
fn home(dir: &Path) -> anyhow::Result<(PathBuf, u64, u64)> {
    std::fs::create_dir_all(dir.join("data"))?;
    let key = edge_core::signature::CapsuleSigningKey::generate();
    std::fs::write(dir.join("agent.pub"), key.public_key_pem())?;
    std::fs::write(
        dir.join("runner.toml"),
        format!(
            "[runner]\nname = \"{NAME}\"\nstate_dir = \"state\"\ndangerous_run_without_policy = true\n\
             [[signers]]\nname = \"a\"\npublic_key = \"agent.pub\"\n[mounts.data]\npath = \"data\"\nwritable = true\n"
        ),
    )?;
    edge_runner::identity::create_identity(&dir.join("state/identity.key"))?;
    let config = RunnerConfig::load(&dir.join("runner.toml"))?;
    let spec = synth::Spec { runs: RUNS, tier2_every: Some(20), ..synth::Spec::default() };
    let (records, bytes) = common::fill_store(&config, &spec)?;
    Ok((dir.join("runner.toml"), records, bytes))
}

fn report(what: &str, done: &[Done]) {
    let pick = |f: fn(&Done) -> Duration| median(done.iter().map(f).collect());
    println!(
        "  {what}: total {:.2} s (snapshot {:.2} s, verification {:.2} s, files {:.2} s)",
        pick(|d| d.timings.total).as_secs_f64(),
        pick(|d| d.timings.snapshot).as_secs_f64(),
        pick(|d| d.timings.verify).as_secs_f64(),
        pick(|d| d.timings.files).as_secs_f64(),
    );
}

fn main() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (config, records, bytes) = home(dir.path())?;
    let out = |i: usize| dir.path().join(format!("backup-{i}"));

    let mut quiet = Vec::new();
    for i in 0..ROUNDS {
        let d = backup(&config, &out(i))?;
        std::fs::remove_dir_all(&d.dir)?;
        quiet.push(d);
    }

    // As under `serve`: the store open, eight writers appending.
    let evidence = dir.path().join("state/evidence");
    let log = EvidenceLog::open(&evidence)?;
    let stop = AtomicBool::new(false);
    let mut busy = Vec::new();
    let mut appended_during = Vec::new();
    std::thread::scope(|s| -> anyhow::Result<()> {
        for w in 0..8 {
            let (h, stop) = (log.handle(), &stop);
            s.spawn(move || {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let event = Event::Refused {
                        stage: "apply".into(),
                        reason_code: "bench.synthetic".into(),
                        detail: format!("writer {w} record {i}: a typical refusal detail of some eighty bytes"),
                    };
                    h.append(&format!("r-bench-{w}"), event).expect("durable append");
                    i += 1;
                }
            });
        }
        let result = (|| {
            for i in 0..ROUNDS {
                let before = log.len();
                let d = backup(&config, &out(100 + i))?;
                appended_during.push(log.len() - before);
                std::fs::remove_dir_all(&d.dir)?;
                busy.push(d);
            }
            Ok(())
        })();
        stop.store(true, Ordering::Relaxed);
        result
    })?;

    println!(
        "backup of a store of {records} records ({:.1} MiB), median of {ROUNDS} rounds:",
        bytes as f64 / (1 << 20) as f64
    );
    report("quiet store             ", &quiet);
    report("8 writers appending     ", &busy);
    appended_during.sort_unstable();
    println!(
        "  records appended during each backup (median): {} — the store never waited for the backup",
        appended_during[appended_during.len() / 2]
    );
    Ok(())
}
