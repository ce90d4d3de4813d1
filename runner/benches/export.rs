//! Export and offline verification of a long log:
//! `cargo bench -p edge-runner --bench export`.
//!
//! The runner homes of the start-up benchmark (`common::log_home`: the
//! synthetic log written as the runner writes it, signed by the runner's
//! own key). For each, in interleaved rounds, each program as its own
//! process, wall time and peak RSS:
//!
//! * `edge-runner evidence export` of the whole log to a file: throughput
//!   in records/s and MiB/s of bundle written; target (issue 14) constant
//!   memory, ≤ 100 MiB RSS at 1M records;
//! * on that bundle, `sha256sum` (coreutils) as the baseline, then the
//!   reviewer's `edge-verify --integrity-only` (target ≥ 1.0× sha256sum's
//!   throughput) and `edge-verify` (full; target ≥ 0.5×), both ≤ 200 MiB RSS.
//!
//! `edge-verify` is built here (`cargo build --release -p edge-evidence`),
//! as a reviewer builds it. `EXPORT_RUNS` (comma-separated synthetic runs,
//! ~10 records each; default `100000`, a million records) and
//! `EXPORT_ROUNDS` (default 3).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{measured, median_f64 as median};

fn edge_verify() -> anyhow::Result<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let st = Command::new(env!("CARGO"))
        .args(["build", "--release", "--quiet", "-p", "edge-evidence", "--bin", "edge-verify"])
        .current_dir(&root)
        .status()?;
    anyhow::ensure!(st.success(), "building edge-verify failed");
    Ok(root.join("target/release/edge-verify"))
}

#[derive(Default)]
struct Series {
    secs: Vec<f64>,
    mib: Vec<f64>,
}

impl Series {
    fn push(&mut self, (t, rss): (std::time::Duration, f64)) {
        self.secs.push(t.as_secs_f64());
        self.mib.push(rss);
    }
    fn secs(&self) -> f64 {
        median(self.secs.clone())
    }
    fn mib(&self) -> f64 {
        median(self.mib.clone())
    }
}

fn main() -> anyhow::Result<()> {
    let runs = common::env_list("EXPORT_RUNS", "100000")?;
    let rounds: usize = std::env::var("EXPORT_ROUNDS").ok().and_then(|s| s.parse().ok()).unwrap_or(3);
    let verifier = edge_verify()?;
    let homes = runs.into_iter().map(common::log_home).collect::<anyhow::Result<Vec<_>>>()?;
    for (dir, _) in &homes {
        common::write_runner_key(dir)?;
    }
    let n = homes.len();
    let mut export: Vec<Series> = (0..n).map(|_| Series::default()).collect();
    let mut sha: Vec<Series> = (0..n).map(|_| Series::default()).collect();
    let mut integrity: Vec<Series> = (0..n).map(|_| Series::default()).collect();
    let mut full: Vec<Series> = (0..n).map(|_| Series::default()).collect();
    let mut sizes = vec![0u64; n];
    for round in 0..rounds {
        eprintln!("round {}/{rounds}", round + 1);
        for (i, (dir, _)) in homes.iter().enumerate() {
            let bundle = dir.join("all.bundle");
            export[i].push(measured(Command::new(env!("CARGO_BIN_EXE_edge-runner")).current_dir(dir).args([
                "evidence",
                "export",
                "--config",
                "runner.toml",
                "-o",
                "all.bundle",
            ]))?);
            sizes[i] = std::fs::metadata(&bundle)?.len();
            sha[i].push(measured(Command::new("sha256sum").arg(&bundle))?);
            integrity[i].push(measured(
                Command::new(&verifier)
                    .arg(&bundle)
                    .args(["--key", "runner.vkey", "--integrity-only"])
                    .current_dir(dir),
            )?);
            full[i]
                .push(measured(Command::new(&verifier).arg(&bundle).args(["--key", "runner.vkey"]).current_dir(dir))?);
        }
    }
    println!("export and verification by log size (medians of {rounds} interleaved rounds, each its own process)");
    for (i, (_, records)) in homes.iter().enumerate() {
        let mib = sizes[i] as f64 / f64::from(1 << 20);
        let e = &export[i];
        println!("{records} records, bundle {mib:.1} MiB:");
        println!(
            "  evidence export            {:>8.2} s {:>9.0} records/s {:>7.1} MiB/s   peak RSS {:>6.1} MiB",
            e.secs(),
            *records as f64 / e.secs(),
            mib / e.secs(),
            e.mib()
        );
        let base = sha[i].secs();
        for (name, s) in
            [("sha256sum", &sha[i]), ("edge-verify --integrity-only", &integrity[i]), ("edge-verify (full)", &full[i])]
        {
            println!(
                "  {name:<28} {:>6.2} s {:>7.1} MiB/s ({:.2}x sha256sum)   peak RSS {:>6.1} MiB",
                s.secs(),
                mib / s.secs(),
                base / s.secs(),
                s.mib()
            );
        }
    }
    Ok(())
}
