//! Evidence store append benchmark: `cargo bench -p edge-runner --bench evidence_append`.
//!
//! Durable appends (WAL, `synchronous=FULL`: each acknowledged record is on
//! disk) through group commit, with 1, 8 and 64 concurrent writers, each
//! waiting for its acknowledgement before appending again. Rounds are
//! interleaved (1, 8, 64, 1, 8, 64, …) so the three figures share the
//! machine's noise; medians are reported. Target: ≥ 20,000 records/s at 64.
//!
//! Beside them, in the same rounds: 64 writers appending seven event types
//! in turn (a run writes a record of each kind as it goes) to a copy of a
//! store grown to 100,000 such records, as schema 3 makes it, and to a
//! copy with schema 2's index of every record by type added back
//! (`records_by_type`, which schema 3 dropped). Same code, same process:
//! the difference is that index alone.

mod common;

use std::time::{Duration, Instant};

use common::median_f64 as median;

use edge_core::evidence::Event;
use edge_runner::store::log::EvidenceLog;

const ROUNDS: usize = 5;

fn round(writers: usize, per_writer: usize) -> f64 {
    timed_on(None, writers, per_writer, false, |w, i| Event::Refused {
        stage: "apply".into(),
        reason_code: "bench.synthetic".into(),
        detail: format!("writer {w} record {i}: a typical refusal detail of some eighty bytes or so"),
    })
}

/// Records/s of `writers` threads appending `per_writer` records each,
/// `event(writer, i)`, to a new store, or to a copy of `grown`; with
/// `by_type` (a grown copy only), schema 2's index added first.
fn timed_on(
    grown: Option<&std::path::Path>,
    writers: usize,
    per_writer: usize,
    by_type: bool,
    event: fn(usize, usize) -> Event,
) -> f64 {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = dir.path().join("evidence");
    if let Some(grown) = grown {
        common::copy_dir(grown, &store).expect("copy the grown store");
    }
    if by_type {
        // (On the grown copy, whose tables are there.)
        let db = rusqlite::Connection::open(store.join("evidence.db")).expect("second connection");
        db.execute_batch("CREATE INDEX records_by_type ON records (type);").expect("schema 2's index");
    }
    let log = EvidenceLog::open(&store).expect("open store");
    let handle = log.handle();
    let t0 = Instant::now();
    std::thread::scope(|s| {
        for w in 0..writers {
            let h = handle.clone();
            s.spawn(move || {
                for i in 0..per_writer {
                    h.append(&format!("r-bench-{w}"), event(w, i)).expect("durable append");
                }
            });
        }
    });
    let elapsed = t0.elapsed();
    (writers * per_writer) as f64 / elapsed.as_secs_f64()
}

/// Seven event types in turn, as a run's records come.
fn mixed(w: usize, i: usize) -> Event {
    let d = edge_core::Sha256Digest::of(format!("{w}/{i}").as_bytes());
    let proposal = format!("p-bench-{w}");
    match i % 7 {
        0 => Event::AwaitingApproval { proposal, document: d, approvals_required: 2 },
        1 => Event::ApprovalReceived { proposal, approval: d },
        2 => Event::Authorized { tier: 2, approvals: vec![d.to_string()], note: "two approvals".into() },
        3 => Event::ProposalExpired { proposal, waited_secs: 7200, limit_secs: 3600 },
        4 => Event::PolicyRefused { file: "policy.toml".into(), error: "line 3".into(), kept_policy: Some(d) },
        5 => Event::CleanupFailed { path: format!("staging/{w}-{i}"), error: "busy".into() },
        _ => {
            Event::Refused { stage: "apply".into(), reason_code: "bench.synthetic".into(), detail: format!("{w} {i}") }
        }
    }
}

fn main() {
    // Roughly one second of work per round at the expected rates.
    let plan = [(1usize, 300usize), (8, 400), (64, 400)];
    let mut results: Vec<Vec<f64>> = vec![Vec::new(); plan.len()];
    let (mut schema3, mut with_v2_index) = (Vec::new(), Vec::new());
    let grown = tempfile::tempdir().expect("temp dir");
    {
        let log = EvidenceLog::open(grown.path()).expect("open store");
        let handle = log.handle();
        std::thread::scope(|s| {
            for w in 0..64 {
                let h = handle.clone();
                s.spawn(move || {
                    for i in 0..1_563 {
                        h.append(&format!("r-grown-{w}"), mixed(w, i)).expect("durable append");
                    }
                });
            }
        });
    }
    for _ in 0..ROUNDS {
        for (i, (writers, per)) in plan.iter().enumerate() {
            results[i].push(round(*writers, *per));
        }
        schema3.push(timed_on(Some(grown.path()), 64, 140, false, mixed));
        with_v2_index.push(timed_on(Some(grown.path()), 64, 140, true, mixed));
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
    let (a, b) = (median(schema3), median(with_v2_index));
    println!(
        "seven event types in turn, 64 writers, on a store of 100,000 records: schema 3 {a:.0} records/s, with \
         schema 2's index by type {b:.0} records/s ({:.2}×)",
        a / b
    );
}
