//! Evidence store append benchmark: `cargo bench -p edge-runner --bench evidence_append`.
//!
//! Durable appends (WAL, `synchronous=FULL`: each acknowledged record is on
//! disk) through group commit, with 1, 8 and 64 concurrent writers, each
//! waiting for its acknowledgement before appending again. Rounds are
//! interleaved (1, 8, 64, 1, 8, 64, …) so the three figures share the
//! machine's noise; medians are reported. Target: ≥ 20,000 records/s at 64.

use std::time::{Duration, Instant};

use edge_core::evidence::Event;
use edge_runner::store::log::EvidenceLog;

const ROUNDS: usize = 5;

fn round(writers: usize, per_writer: usize) -> f64 {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = EvidenceLog::open(&dir.path().join("evidence")).expect("open store");
    let handle = log.handle();
    let t0 = Instant::now();
    std::thread::scope(|s| {
        for w in 0..writers {
            let h = handle.clone();
            s.spawn(move || {
                for i in 0..per_writer {
                    let event = Event::Refused {
                        stage: "apply".into(),
                        reason_code: "bench.synthetic".into(),
                        detail: format!("writer {w} record {i}: a typical refusal detail of some eighty bytes or so"),
                    };
                    h.append(&format!("r-bench-{w}"), event).expect("durable append");
                }
            });
        }
    });
    let elapsed = t0.elapsed();
    (writers * per_writer) as f64 / elapsed.as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    // Roughly one second of work per round at the expected rates.
    let plan = [(1usize, 300usize), (8, 400), (64, 400)];
    let mut results: Vec<Vec<f64>> = vec![Vec::new(); plan.len()];
    for _ in 0..ROUNDS {
        for (i, (writers, per)) in plan.iter().enumerate() {
            results[i].push(round(*writers, *per));
        }
    }
    println!("durable appends with group commit (median of {ROUNDS} interleaved rounds):");
    let base = median(results[0].clone());
    for (i, (writers, per)) in plan.iter().enumerate() {
        let m = median(results[i].clone());
        println!(
            "  {writers:>2} writer(s) × {per:>3} records: {m:>9.0} records/s  ({:.1}× one writer; per record {:?})",
            m / base,
            Duration::from_secs_f64(1.0 / m)
        );
    }
    let at64 = median(results[2].clone());
    println!("target ≥ 20000 records/s at 64 writers: {}", if at64 >= 20_000.0 { "met" } else { "NOT met" });
}
