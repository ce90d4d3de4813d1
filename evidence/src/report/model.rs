//! What a report says, before any rendering: one story per proposal (the
//! lifecycle fold joined with the verifier's per-run summaries, the rendered
//! diff and the blast radius), the proposals the filter keeps, and the
//! tallies by state, tier and approver.

use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;

use edge_core::Sha256Digest;
use edge_core::graph::Graph;
use edge_core::lifecycle::{self, ProposalView, State};
use edge_core::manifest::Provenance;
use edge_core::plan::Finding;
use edge_core::policy::Derivation;
use edge_core::preview::Preview;

use super::Options;
use super::blast::{self, Picture};
use super::diff::{self, FileDiff};
use crate::Verified;
use crate::runs::{QuorumSummary, RefusedApproval, RunSummary, RunnerBuild};

/// A whole report.
pub(crate) struct Report<'v> {
    pub v: &'v Verified,
    pub opts: &'v Options,
    /// Proposals in the bundle (before filtering).
    pub total: usize,
    /// The proposals listed, in submission order.
    pub stories: Vec<Story<'v>>,
    pub summary: Summary,
}

/// One proposal, start to finish.
pub(crate) struct Story<'v> {
    pub view: ProposalView,
    /// Its runs, in order (the submission, then any that continued it).
    pub runs: Vec<&'v RunSummary>,
    /// The change: from the preview when one was recorded.
    pub files: Rc<Vec<FileDiff>>,
    pub blast: Option<Blast>,
}

/// The blast radius of the proposal's decision.
pub(crate) struct Blast {
    pub derivation: Derivation,
    /// Absent when the recorded graph is not in the bundle or does not load.
    pub picture: Option<Rc<(Picture, String)>>,
}

impl Story<'_> {
    pub fn signer(&self) -> Option<&str> {
        self.runs.iter().find_map(|r| r.signer.as_deref())
    }

    pub fn provenance(&self) -> Option<&Provenance> {
        self.runs.first().and_then(|r| r.provenance.as_ref())
    }

    pub fn plan_summary(&self) -> Option<&str> {
        self.runs.iter().find_map(|r| r.plan_summary.as_deref())
    }

    /// Plan and verify findings of every run, without repeats.
    pub fn findings(&self) -> Vec<&Finding> {
        let mut out: Vec<&Finding> = Vec::new();
        for f in self.runs.iter().flat_map(|r| &r.findings) {
            if !out.contains(&f) {
                out.push(f);
            }
        }
        out
    }

    /// Each quorum evaluated, with its run.
    pub fn quorums(&self) -> impl Iterator<Item = (&str, &QuorumSummary)> {
        self.runs.iter().filter_map(|r| r.quorum.as_ref().map(|q| (r.run.as_str(), q)))
    }

    pub fn refused_approvals(&self) -> impl Iterator<Item = (&str, &RefusedApproval)> {
        self.runs.iter().flat_map(|r| r.refused_approvals.iter().map(move |a| (r.run.as_str(), a)))
    }

    /// (run, stage, reason code, detail) of every refusal and rollback.
    pub fn refusals(&self) -> Vec<(&str, &str, &str, &str)> {
        let mut out = Vec::new();
        for r in &self.runs {
            for (stage, code, detail) in &r.refusals {
                out.push((r.run.as_str(), stage.as_str(), code.as_str(), detail.as_str()));
            }
            if let Some((code, detail)) = &r.rolled_back {
                out.push((r.run.as_str(), "rollback", code.as_str(), detail.as_str()));
            }
        }
        out
    }

    /// Each request its runs sent to an endpoint, in order: (run, `METHOD endpoint/path`).
    pub fn calls(&self) -> Vec<(&str, &str)> {
        self.runs.iter().flat_map(|r| r.calls.iter().map(move |c| (r.run.as_str(), c.as_str()))).collect()
    }

    /// The last verify phase: (passed, the capsule's summary).
    pub fn verify(&self) -> Option<(bool, &str)> {
        self.runs.iter().rev().find_map(|r| r.verify_passed.map(|p| (p, r.verify_summary.as_deref().unwrap_or(""))))
    }

    pub fn break_glass(&self) -> bool {
        self.runs.iter().any(|r| r.break_glass)
    }

    /// Principals whose approval counted toward a met quorum.
    pub fn approved_by(&self) -> Vec<&str> {
        self.quorums()
            .filter(|(_, q)| q.outcome.is_met())
            .flat_map(|(_, q)| q.approvers.iter().filter(|a| a.counted).map(|a| a.principal.as_str()))
            .collect()
    }

    /// Who authorized it, in a few words.
    pub fn authorized_by(&self) -> String {
        let who = self.approved_by();
        if !who.is_empty() {
            return format!("{}{}", who.join(", "), if self.break_glass() { " (BREAK-GLASS)" } else { "" });
        }
        match &self.view.decision {
            Some(d) if !d.allowed => "nobody: denied by policy".into(),
            Some(d) if d.tier == 0 && d.policy.is_none() => "nobody: no policy (dangerous_run_without_policy)".into(),
            Some(d) if d.tier == 0 => "policy (tier 0, no human)".into(),
            Some(_) => match self.view.state {
                State::AwaitingApproval => format!("nobody yet: {} approval(s) required", self.view.approvals_required),
                State::Rejected => "nobody: vetoed".into(),
                State::Expired => "nobody: expired waiting for approvals".into(),
                _ => "nobody: no quorum was met".into(),
            },
            None => "-".into(),
        }
    }
}

/// What an approver did across the listed proposals.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Tally {
    /// Approvals that counted toward a quorum.
    pub counted: usize,
    /// Approvals that verified but did not count (duplicate, role, proposer).
    pub not_counted: usize,
    pub rejections: usize,
    /// Approvals the runner refused (did not verify, replayed).
    pub refused: usize,
}

/// Tallies over the listed proposals.
#[derive(Debug, Default)]
pub(crate) struct Summary {
    pub by_state: BTreeMap<State, usize>,
    /// Tier (None: no decision) → state → proposals.
    pub by_tier: BTreeMap<Option<u8>, BTreeMap<State, usize>>,
    pub by_approver: BTreeMap<String, Tally>,
    pub runs: usize,
}

/// The runner builds that executed the bundle's runs (over the whole
/// bundle, whatever the filter lists), each with the number of its runs, in
/// the order they started; and the runs no build is known for.
pub(crate) fn builds(v: &Verified) -> (Vec<(&RunnerBuild, usize)>, usize) {
    RunnerBuild::tally(&v.runs)
}

/// Graphs and pictures shared between proposals (by digest).
#[derive(Default)]
struct Cache {
    graphs: HashMap<Sha256Digest, Option<Rc<blast::Model>>>,
    pictures: HashMap<(Sha256Digest, String), Rc<(Picture, String)>>,
    previews: HashMap<Sha256Digest, Rc<Vec<FileDiff>>>,
}

/// Build the report of a verified bundle.
pub(crate) fn build<'v>(v: &'v Verified, opts: &'v Options) -> Report<'v> {
    let runs: HashMap<&str, &RunSummary> = v.runs.iter().map(|r| (r.run.as_str(), r)).collect();
    let views = lifecycle::index(&v.records);
    let total = views.len();
    let mut cache = Cache::default();
    let mut summary = Summary::default();
    let mut stories = Vec::new();
    for view in views {
        if !opts.filter.matches(&view) {
            continue;
        }
        let story_runs: Vec<&RunSummary> = view.runs.iter().filter_map(|r| runs.get(r.as_str()).copied()).collect();
        let files = files(v, &view, &story_runs, &mut cache);
        let blast = view.decision.as_ref().and_then(|d| {
            let derivation = d.derivation.clone()?;
            let picture = d.graph.and_then(|g| picture(v, g, &derivation, &mut cache));
            Some(Blast { derivation, picture })
        });
        let story = Story { view, runs: story_runs, files, blast };
        tally(&mut summary, &story);
        stories.push(story);
    }
    Report { v, opts, total, stories, summary }
}

fn tally(s: &mut Summary, story: &Story<'_>) {
    *s.by_state.entry(story.view.state).or_default() += 1;
    *s.by_tier.entry(story.view.tier).or_default().entry(story.view.state).or_default() += 1;
    s.runs += story.runs.len();
    for (_, q) in story.quorums() {
        for a in &q.approvers {
            let t = s.by_approver.entry(a.principal.clone()).or_default();
            match (a.verdict.as_str(), a.counted) {
                ("reject", _) => t.rejections += 1,
                (_, true) => t.counted += 1,
                (_, false) => t.not_counted += 1,
            }
        }
    }
    for (_, a) in story.refused_approvals() {
        let who = a.principal.clone().unwrap_or_else(|| "(unnamed)".into());
        s.by_approver.entry(who).or_default().refused += 1;
    }
}

/// The proposal's change: its preview rendered, or the committed diff's
/// digests when no preview was recorded.
fn files(v: &Verified, view: &ProposalView, runs: &[&RunSummary], cache: &mut Cache) -> Rc<Vec<FileDiff>> {
    let preview = view.preview.or_else(|| runs.iter().find_map(|r| r.preview));
    if let Some(d) = preview {
        if let Some(f) = cache.previews.get(&d) {
            return f.clone();
        }
        // The verifier parsed and checked it; a bundle checked only for
        // integrity may hold anything, and then shows no lines.
        if let Some(pv) = v.artifacts.get(&d).and_then(|b| serde_json::from_slice::<Preview>(b).ok()) {
            let f = Rc::new(diff::of_preview(&pv, &v.artifacts));
            cache.previews.insert(d, f.clone());
            return f;
        }
    }
    let committed = runs.iter().rev().find(|r| !r.diff.is_empty());
    Rc::new(committed.map(|r| diff::of_entries(&r.diff)).unwrap_or_default())
}

fn picture(v: &Verified, g: Sha256Digest, d: &Derivation, cache: &mut Cache) -> Option<Rc<(Picture, String)>> {
    let model = cache
        .graphs
        .entry(g)
        .or_insert_with(|| {
            let text = std::str::from_utf8(v.artifacts.get(&g)?).ok()?;
            Graph::from_toml(text).ok().map(|graph| Rc::new(blast::Model::new(graph)))
        })
        .clone()?;
    let key = serde_json::to_string(&(&d.touched, &d.sensitive_tags, d.impacted_count)).unwrap_or_default();
    let p = cache
        .pictures
        .entry((g, key))
        .or_insert_with(|| {
            let p = blast::picture(&model, d);
            let svg = blast::svg(&p);
            Rc::new((p, svg))
        })
        .clone();
    Some(p)
}
