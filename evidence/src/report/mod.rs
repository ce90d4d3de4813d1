//! The human summary of a verified bundle, organised by proposal: text for
//! terminals, one self-contained HTML page, and JSON for tools.
//!
//! ```text
//! Verified ──► model::Report ──┬─► text::render   (terminal; every field through `edge_core::text`)
//!  records      one Story per  ├─► html::render   (inline CSS and SVG; no scripts, nothing loaded)
//!  runs         proposal, the  └─► json::render   (the verification result and a proposals summary)
//!  artifacts    summary tallies
//! ```
//!
//! A proposal is what a reviewer reasons about: the run that submitted a
//! capsule and, above tier 0, the run that executed it once approved. Each
//! story comes from the same fold the runner and its API use
//! (`edge_core::lifecycle::index`), joined with the verifier's per-run
//! summaries, and reads every fact from verified records and artifacts: the
//! diff from the preview artifact (content only as its preview mode kept it),
//! the blast radius from the recorded decision and graph, the quorum from
//! the replayed approvals, provenance from the signed manifest.
//!
//! Everything a capsule, client or approver wrote is hostile: text reports
//! pass each field through `edge_core::text::line` (via `Untrusted`), the
//! HTML page through [`html::esc`], which neutralises controls and bidi
//! characters before escaping markup. A bundle that fails verification gets
//! a FAILED banner and the failure, and none of its contents.
//!
//! [`Filter`] restricts what a report *lists* (time range, tier, state);
//! verification always covers the whole bundle, and the report says how
//! many proposals the filter left out.

mod blast;
mod diff;
mod html;
mod json;
mod model;
mod text;

use std::collections::BTreeSet;

use edge_core::lifecycle::{ProposalView, State};

pub use html::{blast_rows, esc, esc_content, html, html_failed, html_failed_with, html_with};

/// The blast-radius picture of decisions made over one graph, for pages
/// outside reports (the approval console): the graph is compiled once.
#[derive(Debug)]
pub struct BlastPicture(blast::Model);

impl BlastPicture {
    pub fn new(graph: edge_core::graph::Graph) -> Self {
        Self(blast::Model::new(graph))
    }

    /// The picture of `d` as inline SVG (every label escaped).
    pub fn svg(&self, d: &edge_core::policy::Derivation) -> String {
        blast::svg(&blast::picture(&self.0, d))
    }
}
pub use json::{json, json_failed};
pub use text::{text, text_failed, text_failed_with, text_with};

/// The verifier's version, shown in every report.
pub const VERIFIER_VERSION: &str = env!("CARGO_PKG_VERSION");

/// How to render a report.
#[derive(Debug, Clone)]
pub struct Options {
    /// When the report was generated (shown in it; an argument, so that
    /// rendering reads no clock and is reproducible in tests).
    pub generated_at: jiff::Timestamp,
    /// Which proposals to list.
    pub filter: Filter,
}

impl Options {
    /// Generated now (to the second), nothing filtered out.
    pub fn now() -> Self {
        let now = jiff::Timestamp::now();
        Self { generated_at: jiff::Timestamp::from_second(now.as_second()).unwrap_or(now), filter: Filter::default() }
    }
}

/// Which proposals a report lists. Empty sets and absent times match all.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Submitted at or after.
    pub since: Option<jiff::Timestamp>,
    /// Submitted before.
    pub until: Option<jiff::Timestamp>,
    /// Decided at one of these tiers (a proposal refused before its decision has none).
    pub tiers: BTreeSet<u8>,
    pub states: BTreeSet<State>,
}

impl Filter {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// Whether the report lists `p`.
    pub fn matches(&self, p: &ProposalView) -> bool {
        if self.since.is_some() || self.until.is_some() {
            let Ok(at) = p.submitted_at.parse::<jiff::Timestamp>() else { return false };
            if self.since.is_some_and(|s| at < s) || self.until.is_some_and(|u| at >= u) {
                return false;
            }
        }
        (self.tiers.is_empty() || p.tier.is_some_and(|t| self.tiers.contains(&t)))
            && (self.states.is_empty() || self.states.contains(&p.state))
    }

    /// What the filter keeps, in words (empty when it keeps everything).
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        match (self.since, self.until) {
            (Some(s), Some(u)) => parts.push(format!("submitted from {s} until {u}")),
            (Some(s), None) => parts.push(format!("submitted from {s}")),
            (None, Some(u)) => parts.push(format!("submitted before {u}")),
            (None, None) => {}
        }
        if !self.tiers.is_empty() {
            let t: Vec<String> = self.tiers.iter().map(u8::to_string).collect();
            parts.push(format!("tier {}", t.join(" or ")));
        }
        if !self.states.is_empty() {
            let s: Vec<&str> = self.states.iter().map(|s| s.name()).collect();
            parts.push(format!("state {}", s.join(" or ")));
        }
        parts.join("; ")
    }

    /// Parse a time for `--since-time`/`--until-time`: RFC 3339
    /// (`2026-03-01T12:00:00Z`) or a date (`2026-03-01`, midnight UTC).
    ///
    /// # Errors
    /// Says which forms are accepted.
    pub fn parse_time(s: &str) -> Result<jiff::Timestamp, String> {
        if let Ok(t) = s.parse::<jiff::Timestamp>() {
            return Ok(t);
        }
        s.parse::<jiff::civil::Date>()
            .ok()
            .and_then(|d| d.to_zoned(jiff::tz::TimeZone::UTC).ok())
            .map(|z| z.timestamp())
            .ok_or_else(|| {
                format!("`{}` is not a time: use RFC 3339 (2026-03-01T12:00:00Z) or a date (2026-03-01)", line(s))
            })
    }

    /// Add tiers from `--tier 2` or `--tier 1,2`.
    ///
    /// # Errors
    /// A value that is not a tier number.
    pub fn add_tiers(&mut self, s: &str) -> Result<(), String> {
        for t in s.split(',') {
            let tier = t
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|t| *t <= edge_core::policy::MAX_TIER)
                .ok_or_else(|| format!("`{}` is not a tier (0 to {})", line(t), edge_core::policy::MAX_TIER))?;
            self.tiers.insert(tier);
        }
        Ok(())
    }

    /// Add states from `--state committed` or `--state committed,refused`.
    ///
    /// # Errors
    /// Names the states there are.
    pub fn add_states(&mut self, s: &str) -> Result<(), String> {
        for name in s.split(',') {
            let st = State::parse(name.trim()).ok_or_else(|| {
                let all: Vec<&str> = State::ALL.iter().map(|s| s.name()).collect();
                format!("`{}` is not a state; the states are {}", line(name), all.join(", "))
            })?;
            self.states.insert(st);
        }
        Ok(())
    }
}

/// How a run was handed to the runner, from its recorded submitter: the
/// runner's intakes name themselves (`nats:…` a NATS message, `spool:…` a
/// spool file); anything else is a client certificate's identity.
fn submitted_via(submitted_by: &str) -> &'static str {
    if submitted_by.starts_with("nats:") {
        "NATS message"
    } else if submitted_by.starts_with("spool:") {
        "spool file"
    } else {
        "client certificate"
    }
}

fn line(s: &str) -> std::borrow::Cow<'_, str> {
    edge_core::text::line(s)
}

#[cfg(test)]
mod tests;
