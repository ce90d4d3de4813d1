//! Report benchmark: `cargo bench -p edge-evidence --bench report`.
//!
//! Builds a valid synthetic log of 10,000 runs — tier-0 cleanups, and every
//! tenth proposal a tier-2 config change (previewed, two SSH-signed
//! approvals, replayed quorum, committed by a second run) — verifies it in
//! full once, then times, in interleaved rounds over the same verified
//! bundle, the HTML report (target ≤ 2 s on the development VM) unfiltered
//! and with filters (tier 2; committed in the last tenth of the time range;
//! a filter nothing matches), and the text and JSON reports beside it.
//!
//! Then one proposal with a 1,000-line diff (every line of a 1,000-line
//! config changed) on a 10,000-node graph (all impacted): its HTML report.

use std::time::{Duration, Instant};

use edge_evidence::report::{self, Filter, Options};
use edge_evidence::synth::{self, Spec};
use edge_evidence::{Level, parse_keys, verify};

const RUNS: usize = 10_000;
const ROUNDS: usize = 5;
const TARGET: Duration = Duration::from_secs(2);

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let built = Instant::now();
    let s = synth::bundle("bench.example/runner-1", &Spec { runs: RUNS, tier2_every: Some(10), ..Spec::default() });
    let keys = parse_keys(&s.vkey).expect("runner key");
    println!(
        "bundle: {RUNS} runs, {} records, {:.1} MiB (built in {:.1?})",
        s.records,
        s.bundle.len() as f64 / (1 << 20) as f64,
        built.elapsed()
    );
    let t = Instant::now();
    let v = verify(&s.bundle, &keys, Level::Full).expect("full verification");
    let verified = t.elapsed();
    let proposals = edge_core::lifecycle::index(&v.records);
    let tier2 = proposals.iter().filter(|p| p.tier == Some(2)).count();
    println!("verified in {verified:.1?}: {} proposals, {tier2} of them tier 2", proposals.len());

    let at = |p: &edge_core::lifecycle::ProposalView| p.submitted_at.parse::<jiff::Timestamp>().expect("time");
    let (first, last) = (at(&proposals[0]), at(&proposals[proposals.len() - 1]));
    let tenth = first + jiff::SignedDuration::from_secs((last.as_second() - first.as_second()) * 9 / 10);
    let generated_at = jiff::Timestamp::from_second(1_800_000_000).expect("time");
    let mut tier_2 = Filter::default();
    tier_2.add_tiers("2").expect("tier");
    let mut recent = Filter { since: Some(tenth), ..Filter::default() };
    recent.add_states("committed").expect("state");
    let mut nothing = Filter::default();
    nothing.add_states("expired").expect("state");
    let cases: [(&str, Filter); 4] = [
        ("all proposals", Filter::default()),
        ("--tier 2", tier_2),
        ("recent, committed", recent),
        ("no match", nothing),
    ];

    let mut html: Vec<Vec<Duration>> = vec![Vec::new(); cases.len()];
    let mut sizes = vec![(0usize, 0usize); cases.len()];
    let (mut text, mut json) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        for (k, (_, filter)) in cases.iter().enumerate() {
            let opts = Options { generated_at, filter: filter.clone() };
            let t = Instant::now();
            let page = report::html_with(&v, &opts);
            html[k].push(t.elapsed());
            sizes[k] = (page.len(), page.matches("<section class=\"proposal\"").count());
        }
        let opts = Options { generated_at, filter: Filter::default() };
        let t = Instant::now();
        let out = report::text_with(&v, &opts);
        text.push(t.elapsed());
        assert!(out.len() > RUNS);
        let t = Instant::now();
        let out = serde_json::to_string(&report::json(&v, &opts)).expect("json");
        json.push(t.elapsed());
        assert!(out.len() > RUNS);
    }
    println!("median of {ROUNDS} interleaved rounds over the verified bundle:");
    let mut met = true;
    for (k, (name, _)) in cases.iter().enumerate() {
        let m = median(html[k].clone());
        met &= m <= TARGET;
        let (bytes, listed) = sizes[k];
        println!(
            "  HTML, {name:<18} {m:>9.1?}  {listed:>5} proposals listed, {:>6.1} MiB",
            bytes as f64 / (1 << 20) as f64
        );
    }
    println!("  text, all proposals     {:>9.1?}", median(text));
    println!("  JSON, all proposals     {:>9.1?}", median(json));
    println!("target: every HTML report ≤ {TARGET:?}: {}", if met { "met" } else { "NOT met" });
    big_proposal(generated_at);
}

/// One tier-2 proposal: a 1,000-line diff, a 10,000-node graph.
fn big_proposal(generated_at: jiff::Timestamp) {
    let nodes = 10_000 - 11; // the example graph has 11
    let spec = Spec { runs: 2, tier2_every: Some(1), extra_graph_nodes: nodes, config_lines: 1000, ..Spec::default() };
    let s = synth::bundle("bench.example/runner-1", &spec);
    let keys = parse_keys(&s.vkey).expect("runner key");
    let t = Instant::now();
    let v = verify(&s.bundle, &keys, Level::Full).expect("full verification");
    let verified = t.elapsed();
    let opts = Options { generated_at, filter: Filter::default() };
    let mut times = Vec::new();
    let mut page = String::new();
    for _ in 0..ROUNDS {
        let t = Instant::now();
        page = report::html_with(&v, &opts);
        times.push(t.elapsed());
    }
    assert_eq!(page.matches("<div class=\"dl add\">").count(), 1000, "the whole diff is shown");
    println!(
        "one proposal, 1,000-line diff, 10,000-node graph (verified in {verified:.1?}): HTML {:.1?} (median of {ROUNDS}), {:.0} KiB",
        median(times),
        page.len() as f64 / 1024.0
    );
}
