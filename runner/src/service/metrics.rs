//! `GET /metrics` in the Prometheus text exposition format (0.0.4).
//!
//! Counters about proposals, refusals and traps are derived from the
//! evidence log at scrape time, so they survive restarts and can never
//! disagree with the record; request-level figures (queue depth, run
//! durations, TLS refusals, 429s) are kept in memory.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::pipeline::Runner;

/// Upper bounds (seconds) of the run-duration histogram buckets.
const BUCKETS: [f64; 12] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

#[derive(Debug, Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

/// In-memory figures; the rest comes from the log.
#[derive(Debug, Default)]
pub struct Metrics {
    tls_refused: AtomicU64,
    overloaded: AtomicU64,
    runs: Mutex<Histogram>,
    /// Webhook deliveries (`crate::notify`).
    pub(crate) notify: std::sync::Arc<crate::notify::Counters>,
    /// Messages intakes finished, by (intake, result).
    intake: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
}

impl Metrics {
    pub fn tls_refused(&self) {
        self.tls_refused.fetch_add(1, Ordering::Relaxed);
    }

    pub fn overloaded(&self) {
        self.overloaded.fetch_add(1, Ordering::Relaxed);
    }

    pub fn intake_message(&self, intake: &'static str, result: &'static str) {
        *self.intake.lock().unwrap_or_else(std::sync::PoisonError::into_inner).entry((intake, result)).or_default() +=
            1;
    }

    pub fn observe_run(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let mut h = self.runs.lock().expect("metrics lock");
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                h.counts[i] += 1;
            }
        }
        h.count += 1;
        h.sum += secs;
    }

    /// The exposition text.
    pub fn render(&self, runner: &Runner, queue_depth: usize, intakes: &crate::intake::Health) -> String {
        let counts = runner.log.proposal_counts().unwrap_or_else(|e| {
            tracing::error!(error = %format!("{e:#}"), "cannot count the proposals for metrics");
            Vec::new()
        });
        let index = runner.log.index();
        let mut s = String::new();
        let mut by_state: BTreeMap<(String, String), u64> = BTreeMap::new();
        for (state, tier, n) in counts {
            let tier = tier.map_or_else(|| "none".to_owned(), |t| t.to_string());
            *by_state.entry((state, tier)).or_default() += n;
        }
        header(&mut s, "edge_runner_proposals", "gauge", "Proposals by lifecycle state and tier.");
        for ((state, tier), n) in &by_state {
            let _ = writeln!(s, "edge_runner_proposals{{state=\"{}\",tier=\"{tier}\"}} {n}", label(state));
        }
        header(&mut s, "edge_runner_refusals_total", "counter", "Refusals recorded, by reason code.");
        for (code, n) in &index.refusals {
            let _ = writeln!(s, "edge_runner_refusals_total{{reason=\"{}\"}} {n}", label(code));
        }
        header(&mut s, "edge_runner_sandbox_traps_total", "counter", "Sandbox traps and limits hit, by kind.");
        for (code, n) in &index.refusals {
            if let Some(kind) = code.strip_prefix("sandbox.") {
                let _ = writeln!(s, "edge_runner_sandbox_traps_total{{kind=\"{}\"}} {n}", label(kind));
            }
        }
        header(&mut s, "edge_runner_evidence_records", "gauge", "Records in the evidence log.");
        let _ = writeln!(s, "edge_runner_evidence_records {}", index.records);
        drop(index);
        header(
            &mut s,
            "edge_runner_evidence_durable_wait_seconds_total",
            "counter",
            "Time runs spent waiting for evidence appends to become durable (fsync) since start, summed over runs (concurrent runs wait together).",
        );
        let _ =
            writeln!(s, "edge_runner_evidence_durable_wait_seconds_total {}", runner.log.durable_wait().as_secs_f64());
        let executing = runner.sandbox.executing();
        header(&mut s, "edge_runner_capsules_executing", "gauge", "Capsule phases executing now.");
        let _ = writeln!(s, "edge_runner_capsules_executing {}", executing.now);
        header(
            &mut s,
            "edge_runner_capsules_executing_peak",
            "gauge",
            "The most capsule phases executing at once since start.",
        );
        let _ = writeln!(s, "edge_runner_capsules_executing_peak {}", executing.peak);
        header(
            &mut s,
            "edge_runner_capsules_executing_limit",
            "gauge",
            "The most capsule phases this runner executes at once (4 per core, 4 to 16); runs past it wait their turn.",
        );
        let _ = writeln!(s, "edge_runner_capsules_executing_limit {}", executing.limit);
        header(&mut s, "edge_runner_queue_depth", "gauge", "Runs admitted and waiting for a run slot.");
        let _ = writeln!(s, "edge_runner_queue_depth {}", queue_depth);
        header(
            &mut s,
            "edge_runner_overloaded_total",
            "counter",
            "Requests refused with 429 (queue full) since start.",
        );
        let _ = writeln!(s, "edge_runner_overloaded_total {}", self.overloaded.load(Ordering::Relaxed));
        header(&mut s, "edge_runner_tls_refused_total", "counter", "TLS handshakes refused since start.");
        let _ = writeln!(s, "edge_runner_tls_refused_total {}", self.tls_refused.load(Ordering::Relaxed));
        header(&mut s, "edge_runner_run_duration_seconds", "histogram", "Time to run a submission or an approval.");
        let h = self.runs.lock().expect("metrics lock");
        for (i, b) in BUCKETS.iter().enumerate() {
            let _ = writeln!(s, "edge_runner_run_duration_seconds_bucket{{le=\"{b}\"}} {}", h.counts[i]);
        }
        let _ = writeln!(s, "edge_runner_run_duration_seconds_bucket{{le=\"+Inf\"}} {}", h.count);
        let _ = writeln!(s, "edge_runner_run_duration_seconds_sum {}", h.sum);
        let _ = writeln!(s, "edge_runner_run_duration_seconds_count {}", h.count);
        drop(h);
        self.notify.render(&mut s);
        header(&mut s, "edge_runner_intake_up", "gauge", "Whether each intake can take work (1) or not (0).");
        for (intake, state) in intakes.all() {
            let _ = writeln!(s, "edge_runner_intake_up{{intake=\"{intake}\"}} {}", u8::from(state.is_ok()));
        }
        header(&mut s, "edge_runner_intake_messages_total", "counter", "Messages intakes finished, by result.");
        for ((intake, result), n) in self.intake.lock().unwrap_or_else(std::sync::PoisonError::into_inner).iter() {
            let _ = writeln!(s, "edge_runner_intake_messages_total{{intake=\"{intake}\",result=\"{result}\"}} {n}");
        }
        s
    }
}

fn header(s: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(s, "# HELP {name} {help}");
    let _ = writeln!(s, "# TYPE {name} {kind}");
}

/// A label value with `\`, `"` and newlines escaped.
pub(crate) fn label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}
