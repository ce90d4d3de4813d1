//! Webhook figures for `GET /metrics`, in memory since start (what was
//! given up is also in the evidence log, as `notification-failed` records).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;

/// Per webhook (by its shown URL: scheme, host, port and path).
#[derive(Debug, Default, Clone, Copy)]
struct Hook {
    delivered: u64,
    failed: u64,
    dropped: u64,
    attempts: u64,
}

/// Counters, shared by the notifier and the metrics page.
#[derive(Debug, Default)]
pub struct Counters {
    hooks: Mutex<BTreeMap<String, Hook>>,
}

impl Counters {
    fn add(&self, hook: &str, f: impl FnOnce(&mut Hook)) {
        f(self.hooks.lock().unwrap_or_else(std::sync::PoisonError::into_inner).entry(hook.to_owned()).or_default());
    }

    /// Show a configured webhook (at zero) before anything happens to it.
    pub fn register(&self, hook: &str) {
        self.add(hook, |_| {});
    }

    pub fn delivered(&self, hook: &str) {
        self.add(hook, |h| h.delivered += 1);
    }

    pub fn failed(&self, hook: &str) {
        self.add(hook, |h| h.failed += 1);
    }

    pub fn dropped(&self, hook: &str, n: u64) {
        self.add(hook, |h| h.dropped += n);
    }

    pub fn attempt(&self, hook: &str) {
        self.add(hook, |h| h.attempts += 1);
    }

    /// Append the exposition lines (nothing when no webhook is configured).
    pub fn render(&self, s: &mut String) {
        let hooks = self.hooks.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        if hooks.is_empty() {
            return;
        }
        let label = crate::service::metrics::label;
        let _ = writeln!(
            s,
            "# HELP edge_runner_webhook_notifications_total Webhook notifications since start, by outcome: \
             delivered; failed (given up after retries, or not retryable); dropped (queue full, or the runner stopping). \
             Failed and dropped ones are recorded as notification-failed evidence records."
        );
        let _ = writeln!(s, "# TYPE edge_runner_webhook_notifications_total counter");
        for (url, h) in &hooks {
            for (outcome, n) in [("delivered", h.delivered), ("failed", h.failed), ("dropped", h.dropped)] {
                let _ = writeln!(
                    s,
                    "edge_runner_webhook_notifications_total{{webhook=\"{}\",outcome=\"{outcome}\"}} {n}",
                    label(url)
                );
            }
        }
        let _ = writeln!(s, "# HELP edge_runner_webhook_attempts_total Webhook delivery attempts since start.");
        let _ = writeln!(s, "# TYPE edge_runner_webhook_attempts_total counter");
        for (url, h) in &hooks {
            let _ = writeln!(s, "edge_runner_webhook_attempts_total{{webhook=\"{}\"}} {}", label(url), h.attempts);
        }
    }
}
