//! Offline verification benchmark: `cargo bench -p edge-evidence --bench verify`.
//!
//! Builds a valid synthetic log of 10,000 tier-0 runs (100,002 records),
//! exports it as one bundle file, then, in interleaved rounds so the figures
//! share the machine's noise, measures over the same bytes on disk:
//!
//! * `sha256sum FILE` (coreutils, wall time of the process): the baseline;
//! * integrity verification (read the file; checkpoint signature, chain,
//!   Merkle root, artifact digests), streamed from the file as `edge-verify`
//!   reads it: target (issue 14) ≥ 1.0× `sha256sum`'s throughput;
//! * full verification (integrity plus capsule signatures, approvals and
//!   decision replay), reported beside it.
//!
//! `VERIFY_TIER2_EVERY=n` makes every `n`-th proposal a tier-2 change with
//! a waiting run and a run that presents two approvals (so that the full
//! verification replays quorums: registry, SSHSIG and passkey checks).

// The allocator of edge-verify, whose work this measures.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::process::Command;
use std::time::{Duration, Instant};

use edge_evidence::{Keep, Level, parse_keys, synth, verify_file};

const RUNS: usize = 10_000;
const ROUNDS: usize = 5;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let built = Instant::now();
    let tier2_every =
        std::env::var("VERIFY_TIER2_EVERY").ok().map(|n| n.parse().expect("VERIFY_TIER2_EVERY: a number"));
    let spec = synth::Spec { runs: RUNS, tier2_every, passkeys: tier2_every.is_some(), ..synth::Spec::default() };
    let s = synth::bundle("bench.example/runner-1", &spec);
    let keys = parse_keys(&s.vkey).expect("runner key");
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("evidence.bundle");
    std::fs::write(&path, &s.bundle).expect("write bundle");
    let size = s.bundle.len();
    drop(s.bundle);
    println!(
        "bundle: {} records, {:.1} MiB (built in {:.1?})",
        s.records,
        size as f64 / (1 << 20) as f64,
        built.elapsed()
    );

    let mut sha = Vec::new();
    let mut integrity = Vec::new();
    let mut full = Vec::new();
    for _ in 0..ROUNDS {
        let t = Instant::now();
        let out = Command::new("sha256sum").arg(&path).output().expect("run sha256sum (coreutils)");
        assert!(out.status.success(), "sha256sum failed");
        sha.push(t.elapsed());

        let t = Instant::now();
        let file = std::fs::File::open(&path).expect("open bundle");
        let v = verify_file(&file, &keys, Level::Integrity, Keep::Counts, &mut |_, _, _| {})
            .expect("integrity verification");
        assert_eq!(v.record_count, s.records);
        integrity.push(t.elapsed());

        let t = Instant::now();
        let file = std::fs::File::open(&path).expect("open bundle");
        let v = verify_file(&file, &keys, Level::Full, Keep::Counts, &mut |_, _, _| {}).expect("full verification");
        assert_eq!(v.record_count, s.records);
        full.push(t.elapsed());
    }

    let mbps = |d: Duration| size as f64 / (1 << 20) as f64 / d.as_secs_f64();
    let (sha, integrity, full) = (median(sha), median(integrity), median(full));
    println!("median of {ROUNDS} interleaved rounds over the same file:");
    println!("  sha256sum               {sha:>10.1?}  {:>7.1} MiB/s", mbps(sha));
    println!(
        "  verify --integrity-only {integrity:>10.1?}  {:>7.1} MiB/s  ({:.2}x sha256sum's throughput)",
        mbps(integrity),
        sha.as_secs_f64() / integrity.as_secs_f64()
    );
    println!(
        "  verify (full)           {full:>10.1?}  {:>7.1} MiB/s  ({:.2}x sha256sum's throughput)",
        mbps(full),
        sha.as_secs_f64() / full.as_secs_f64()
    );
    let ratio = sha.as_secs_f64() / integrity.as_secs_f64();
    println!("target: integrity ≥ 1.0x sha256sum: {}", if ratio >= 1.0 { "met" } else { "NOT met" });
}
