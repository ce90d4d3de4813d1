//! Per-run checks of a verified record sequence: every capsule signature and
//! approval signature again, the decision and quorum replayed from the
//! embedded documents, the order of steps, and that every run ends.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use rayon::prelude::*;

use edge_core::Sha256Digest;
use edge_core::admission::Grant;
use edge_core::approval::{self, Binding, CounterLedger, Registry, VerifiedApproval, quorum};
use edge_core::bounded::BoundedMap;
use edge_core::evidence::{Event, Outcome, PasskeyUse, Record};
use edge_core::graph::Graph;
use edge_core::manifest::DigestedManifest;
use edge_core::plan::{self, DiffEntry, Plan};
use edge_core::policy::{Decision, DecisionInput, Policy};
use edge_core::preview::{self, Preview};
use edge_core::signature::{self, TrustedSigner, TrustedSigners};

use crate::bundle::Format;
use crate::stream::Artifacts;
pub use crate::summary::{Approver, QuorumSummary, RefusedApproval, RunSummary, RunnerBuild};
use crate::{Failure, RUNNER_RUNS};

/// What runs share — nonces spent, proposals executed and expired, each at
/// its record — is the same fold the runner keeps (`core::lifecycle`).
type Ledger = edge_core::lifecycle::Settlements;

/// A capsule signature check: (manifest, signature bundle, recorded
/// signer key, trusted root).
type SignatureCheck = (Sha256Digest, Sha256Digest, String, Option<Sha256Digest>);

/// What runs with identical inputs share, across the threads checking
/// them: compiled documents by digest, capsule signatures that verified,
/// and replayed decisions. Each entry is keyed by the digests of
/// everything its result depends on (artifacts are checked against their
/// digests before any run is), so a hit is the same computation.
struct Cache {
    policies: BoundedMap<Sha256Digest, Arc<Policy>>,
    graphs: BoundedMap<Sha256Digest, Arc<Graph>>,
    signatures: BoundedMap<SignatureCheck, ()>,
    /// (policy, graph, decision input) → the decision they yield.
    decisions: BoundedMap<(Sha256Digest, Sha256Digest, Sha256Digest), Decision>,
    /// Capsule manifests read (hashed to their digest) and parsed.
    manifests: BoundedMap<Sha256Digest, DigestedManifest>,
    /// Artifacts read and found to hash to their digest, for checks that
    /// only need one to be in the bundle (a submission's component).
    present: BoundedMap<Sha256Digest, ()>,
    /// Plans and decision inputs parsed (runs of one capsule share them).
    plans: BoundedMap<Sha256Digest, Arc<Plan>>,
    inputs: BoundedMap<Sha256Digest, Arc<DecisionInput>>,
    /// Approver registries parsed, by the digests of the recorded
    /// allowed_signers, roles and passkeys: keys decompressed once, and a
    /// key that checks again and again gets its table of multiples
    /// (`edge_core::strict::StrongKey`) instead of one registry per quorum.
    registries: BoundedMap<(Sha256Digest, Sha256Digest, Option<Sha256Digest>), Arc<Registry>>,
}

impl Default for Cache {
    /// Each holds at most [`PARSED`] entries, forgotten all at once when
    /// full: memory does not grow with the number of capsules, policies
    /// or graphs a bundle holds (a miss costs the check it would save).
    fn default() -> Self {
        Cache {
            policies: BoundedMap::new(PARSED),
            graphs: BoundedMap::new(PARSED),
            signatures: BoundedMap::new(PARSED),
            decisions: BoundedMap::new(PARSED),
            manifests: BoundedMap::new(PARSED),
            present: BoundedMap::new(PARSED),
            plans: BoundedMap::new(PARSED),
            inputs: BoundedMap::new(PARSED),
            registries: BoundedMap::new(PARSED),
        }
    }
}

/// Entries each of the caches keeps, at most.
const PARSED: usize = 1024;

/// Artifact `d` parsed as JSON, from `memo` when parsed before (a parse is
/// a function of the bytes, which hash to `d`).
fn parsed<T: serde::de::DeserializeOwned>(
    ctx: &Ctx<'_>,
    memo: &BoundedMap<Sha256Digest, Arc<T>>,
    d: &Sha256Digest,
    r: &Record,
    fail: impl FnOnce(serde_json::Error) -> Failure,
) -> Result<Arc<T>, Failure> {
    memoized(memo, d, || serde_json::from_slice(&artifact(ctx, d, r)?).map_err(fail))
}

/// What `make` makes for digest `d` (or digests), once per key while `memo`
/// holds it.
fn memoized<K: Eq + std::hash::Hash + Clone, T>(
    memo: &BoundedMap<K, Arc<T>>,
    d: &K,
    make: impl FnOnce() -> Result<T, Failure>,
) -> Result<Arc<T>, Failure> {
    if let Some(v) = memo.get(d) {
        return Ok(v);
    }
    let v = Arc::new(make()?);
    memo.insert(d.clone(), Arc::clone(&v));
    Ok(v)
}

pub(crate) struct Ctx<'a> {
    pub artifacts: &'a Artifacts<'a>,
    /// The runner name approvals are bound to (the checkpoint origin).
    pub runner: &'a str,
    /// Whether runs may have begun before the first record in the bundle.
    pub partial_start: bool,
    /// Proposal → the document it waited with (as of the records so far).
    pub documents: &'a HashMap<String, Sha256Digest>,
}

/// Runs checked on all cores this many at a time.
const CHUNK: usize = 512;

/// A run whose records are being gathered.
struct Open {
    // Boxed as the parser hands them over: unboxing would copy each ~700
    // bytes once more, for every record of the bundle.
    #[allow(clippy::vec_box)]
    records: Vec<Box<Record>>,
    /// The runner build in force when it started.
    build: Option<RunnerBuild>,
    /// Its id's hash in `RunStream::ended`, taken at its first record.
    ended_key: u128,
}

/// What [`RunStream::finish`] found.
pub(crate) struct Checked {
    /// Every run's summary, in order of first record (when kept).
    pub summaries: Vec<RunSummary>,
    pub count: usize,
    /// The builds that ran them (by the record that started each), each
    /// with its number of runs; and the runs no build is known for.
    pub builds: (Vec<(RunnerBuild, usize)>, usize),
    /// Every record (when kept).
    pub records: Vec<Record>,
    /// The last record naming the identity key: (sequence, run, key).
    pub last_key: Option<(u64, String, String)>,
}

/// The per-run checks, fed records in log order: a run is checked (with
/// others, on all cores) once its terminal record is in, so what is held
/// is the runs in progress, not the log. What runs share is folded as the
/// records come ([`Ledger`], the proposal documents); a run is checked
/// against it only for what happened before its own records, so the
/// later records already folded change nothing.
pub(crate) struct RunStream<'a> {
    artifacts: &'a Artifacts<'a>,
    format: Format,
    runner: &'a str,
    partial_start: bool,
    keep: bool,
    cache: Cache,
    ledger: Ledger,
    documents: HashMap<String, Sha256Digest>,
    open: HashMap<String, Open>,
    /// Runs that ended, by a keyed 128-bit hash of their id (a record of
    /// one of them after its end is out of order).
    ended: crate::ended::EndedRuns,
    keys: (std::hash::RandomState, std::hash::RandomState),
    ready: Vec<Open>,
    build: Option<RunnerBuild>,
    /// The records the passkey counter check reads: approvals, and the
    /// quorums and ends of the runs that had passkey approvals.
    counter_records: Vec<Record>,
    counter_runs: HashSet<String>,
    claims: Vec<CounterClaim>,
    summaries: Vec<RunSummary>,
    count: usize,
    builds: BTreeMap<u64, (RunnerBuild, usize)>,
    unknown_build: usize,
    records: Vec<Record>,
    last_key: Option<(u64, String, String)>,
}

impl<'a> RunStream<'a> {
    /// `keep`: keep every record and run summary (for a report);
    /// `format`: the bundle's, which says which artifacts it carries.
    pub fn new(artifacts: &'a Artifacts<'a>, format: Format, runner: &'a str, partial_start: bool, keep: bool) -> Self {
        Self {
            artifacts,
            format,
            runner,
            partial_start,
            keep,
            cache: Cache::default(),
            ledger: Ledger::default(),
            documents: HashMap::new(),
            open: HashMap::new(),
            ended: Default::default(),
            keys: (std::hash::RandomState::new(), std::hash::RandomState::new()),
            ready: Vec::new(),
            build: None,
            counter_records: Vec::new(),
            counter_runs: HashSet::new(),
            claims: Vec::new(),
            summaries: Vec::new(),
            count: 0,
            builds: BTreeMap::new(),
            unknown_build: 0,
            records: Vec::new(),
            last_key: None,
        }
    }

    fn ended_key(&self, run: &str) -> u128 {
        use std::hash::BuildHasher as _;
        (u128::from(self.keys.0.hash_one(run)) << 64) | u128::from(self.keys.1.hash_one(run))
    }

    /// The next record in log order.
    ///
    /// # Errors
    /// A record that references an artifact the bundle lacks, a record of
    /// a run after its end, or the first failed check of a run checked now.
    pub fn push(&mut self, r: Box<Record>) -> Result<(), Failure> {
        for d in self.format.artifacts_of(&r) {
            if !self.artifacts.reference(&d) {
                return Err(Failure::record(
                    "artifact.missing",
                    r.seq,
                    &r.run,
                    format!("artifact {d} is not in the bundle"),
                ));
            }
        }
        self.ledger.push(&r);
        match &r.event {
            Event::AwaitingApproval { proposal, document, .. } => {
                self.documents.insert(proposal.clone(), *document);
            }
            Event::KeyEvent { key, .. } | Event::KeyRotation { new_key: key, .. } => {
                self.last_key = Some((r.seq, r.run.clone(), key.clone()));
            }
            Event::ApprovalAccepted { passkey: Some(_), .. } | Event::ApprovalRefused { .. } => {
                self.counter_runs.insert(r.run.clone());
                self.counter_records.push((*r).clone());
            }
            Event::Quorum { .. } if self.counter_runs.contains(&r.run) => self.counter_records.push((*r).clone()),
            Event::Completed { .. } if self.counter_runs.remove(&r.run) => self.counter_records.push((*r).clone()),
            _ => {}
        }
        if self.keep {
            self.records.push((*r).clone());
        }
        if RUNNER_RUNS.contains(&r.run.as_str()) {
            self.build = RunnerBuild::of(&r).or(self.build.take());
            return Ok(());
        }
        let ended = matches!(r.event, Event::Completed { .. }).then(|| r.run.clone());
        match self.open.get_mut(&r.run) {
            Some(open) => open.records.push(r),
            None => {
                let ended_key = self.ended_key(&r.run);
                if self.ended.contains(ended_key) {
                    return Err(Failure::record(
                        "run.order",
                        r.seq,
                        &r.run,
                        format!("`{}` after the run's terminal record", r.event_type()),
                    ));
                }
                let build = self.build.clone();
                self.open.insert(r.run.clone(), Open { records: vec![r], build, ended_key });
            }
        }
        if let Some(run) = ended {
            let open = self.open.remove(&run).expect("just pushed");
            self.ended.insert(open.ended_key);
            self.ready.push(open);
            if self.ready.len() >= CHUNK {
                self.check_ready()?;
            }
        }
        Ok(())
    }

    /// Check the runs that ended, on all cores; their results taken in
    /// the order they ended (the first failure among them is reported).
    fn check_ready(&mut self) -> Result<(), Failure> {
        let ready = std::mem::take(&mut self.ready);
        let ctx = &Ctx {
            artifacts: self.artifacts,
            runner: self.runner,
            partial_start: self.partial_start,
            documents: &self.documents,
        };
        let (cache, ledger) = (&self.cache, &self.ledger);
        let checked: Vec<Result<(RunSummary, Vec<CounterClaim>), Failure>> = ready
            .par_iter()
            .map(|open| {
                let recs: Vec<&Record> = open.records.iter().map(|r| &**r).collect();
                let mut c = Vec::new();
                check_run(&recs, ctx, cache, ledger, &mut c).map(|s| (s, c))
            })
            .collect();
        for (open, result) in ready.into_iter().zip(checked) {
            let (mut s, mut c) = result?;
            if self.keep {
                s.build.clone_from(&open.build);
            }
            match open.build {
                Some(b) => self.builds.entry(b.record).or_insert((b, 0)).1 += 1,
                None => self.unknown_build += 1,
            }
            self.count += 1;
            self.claims.append(&mut c);
            if self.keep {
                self.summaries.push(s);
            }
        }
        Ok(())
    }

    /// Check the runs still open (each fails for its missing end, unless
    /// the check finds something earlier) and the passkey counters.
    ///
    /// # Errors
    /// The first failed check.
    pub fn finish(mut self) -> Result<Checked, Failure> {
        let mut open: Vec<Open> = self.open.drain().map(|(_, o)| o).collect();
        open.sort_by_key(|o| o.records[0].seq);
        for o in open {
            self.ready.push(o);
            if self.ready.len() >= CHUNK {
                self.check_ready()?;
            }
        }
        self.check_ready()?;
        // Every accepted approval's record was checked against its signed
        // assertion above, so the counters the records carry are the signed ones.
        check_counters(&self.counter_records, &self.claims)?;
        self.summaries.sort_by_key(|s| s.first_seq);
        Ok(Checked {
            summaries: self.summaries,
            count: self.count,
            builds: (self.builds.into_values().collect(), self.unknown_build),
            records: self.records,
            last_key: self.last_key,
        })
    }
}

/// A passkey approval the runner refused for its counter (it verifies
/// otherwise): the record, the credential and the use it made.
pub(crate) struct CounterClaim {
    seq: u64,
    key: String,
    used: PasskeyUse,
}

/// Passkey signature counters across the whole bundle, in record order as
/// the runner consumed them: each accepted passkey approval must be
/// consistent ([`CounterLedger`]) with the credential's approvals spent by
/// met quorums before it and with those accepted earlier in its own batch
/// (`approval.counter`), and each refused for its counter must indeed not
/// be (`approval.refusal`).
fn check_counters(records: &[Record], claims: &[CounterClaim]) -> Result<(), Failure> {
    if claims.is_empty() && !records.iter().any(|r| matches!(r.event, Event::ApprovalAccepted { passkey: Some(_), .. }))
    {
        return Ok(());
    }
    let claimed: HashMap<u64, &CounterClaim> = claims.iter().map(|c| (c.seq, c)).collect();
    let mut spent = Ledger::default();
    let mut batches: HashMap<&str, CounterLedger> = HashMap::new();
    for r in records {
        match &r.event {
            Event::ApprovalAccepted { key, passkey: Some(u), .. } => {
                let batch = batches.entry(r.run.as_str()).or_default();
                spent.counters.check_with(batch, key, u.issued_at, u.counter).map_err(|e| {
                    Failure::record("approval.counter", r.seq, &r.run, format!("recorded as accepted, but: {e}"))
                })?;
                batch.note(key, u.issued_at, u.counter);
            }
            Event::ApprovalRefused { .. } if claimed.contains_key(&r.seq) => {
                let c = claimed[&r.seq];
                let batch = batches.entry(r.run.as_str()).or_default();
                if spent.counters.check_with(batch, &c.key, c.used.issued_at, c.used.counter).is_ok() {
                    return Err(Failure::record(
                        "approval.refusal",
                        r.seq,
                        &r.run,
                        format!(
                            "recorded as refused (approval.counter_regressed), but counter {} of {} does not go back",
                            c.used.counter, c.key
                        ),
                    ));
                }
            }
            Event::Quorum { .. } | Event::Completed { .. } => {
                batches.remove(r.run.as_str());
            }
            _ => {}
        }
        spent.push(r);
    }
    Ok(())
}

struct Submission<'r> {
    capsule: Sha256Digest,
    manifest: DigestedManifest,
    bundle: Option<&'r Sha256Digest>,
}

#[derive(Default)]
struct State<'r> {
    submission: Option<Submission<'r>>,
    grant: Option<Grant>,
    decision: Option<(&'r Decision, Option<Arc<DecisionInput>>)>,
    plan: Option<(Sha256Digest, Arc<Plan>)>,
    received: BTreeSet<Sha256Digest>,
    proposal: Option<String>,
    accepted: Vec<(&'r Record, Sha256Digest)>,
    refused: Vec<(&'r Record, Sha256Digest, String)>,
    quorum_met: bool,
    authorized: bool,
    applied: Option<Vec<DiffEntry>>,
    intent: Option<usize>,
    committed: bool,
    rolled_back: bool,
    refused_run: bool,
    interrupted: bool,
    awaiting: bool,
    /// Planned calls made by `apply` (each checked against the plan).
    calls_done: usize,
    /// Request numbers whose intent was recorded.
    calls: BTreeSet<u32>,
    /// The plan call the last compensation undid (they go in reverse).
    compensated: Option<u32>,
    /// A compensation came back without success.
    compensation_failed: bool,
}

fn artifact(ctx: &Ctx<'_>, d: &Sha256Digest, r: &Record) -> Result<Vec<u8>, Failure> {
    ctx.artifacts.get(d).unwrap_or_else(|| {
        Err(Failure::record("artifact.missing", r.seq, &r.run, format!("artifact {d} is not in the bundle")))
    })
}

fn text(ctx: &Ctx<'_>, d: &Sha256Digest, r: &Record) -> Result<String, Failure> {
    String::from_utf8(artifact(ctx, d, r)?)
        .map_err(|_| Failure::record("artifact.format", r.seq, &r.run, format!("artifact {d} is not UTF-8")))
}

fn check_run(
    recs: &[&Record],
    ctx: &Ctx<'_>,
    cache: &Cache,
    ledger: &Ledger,
    claims: &mut Vec<CounterClaim>,
) -> Result<RunSummary, Failure> {
    let first = recs[0];
    let last = recs[recs.len() - 1];
    let mut sum = RunSummary {
        run: first.run.clone(),
        first_seq: first.seq,
        last_seq: last.seq,
        started: first.time.clone(),
        ended: last.time.clone(),
        ..RunSummary::default()
    };
    let starts = matches!(first.event, Event::Submission { .. })
        || matches!(&first.event, Event::Refused { stage, .. } if stage == "submission");
    if !starts && !ctx.partial_start {
        return Err(Failure::record(
            "run.start",
            first.seq,
            &first.run,
            format!("the run's first record is `{}`, not a submission: its beginning was removed", first.event_type()),
        ));
    }
    let mut st = State::default();
    for (i, r) in recs.iter().enumerate() {
        let fail = |check: &'static str, detail: String| Failure::record(check, r.seq, &r.run, detail);
        let order = |what: &str| fail("run.order", format!("`{}` {what}", r.event_type()));
        if st.interrupted && !matches!(r.event, Event::Completed { .. }) {
            return Err(order("after the run was recorded as interrupted"));
        }
        match &r.event {
            Event::Submission {
                capsule,
                name,
                version,
                kind,
                manifest,
                component,
                bundle,
                dangerous,
                submitted_by,
            } => {
                if i != 0 {
                    return Err(order("in the middle of a run"));
                }
                if manifest != capsule {
                    return Err(fail("capsule.manifest", "the capsule digest is not the manifest's digest".into()));
                }
                let known = cache.manifests.get(manifest);
                let digested = match known {
                    Some(m) => m,
                    None => {
                        let m = DigestedManifest::from_canonical_json(&artifact(ctx, manifest, r)?).map_err(|e| {
                            fail("capsule.manifest", format!("the recorded manifest does not parse: {e}"))
                        })?;
                        cache.manifests.insert(*manifest, m.clone());
                        m
                    }
                };
                let m = digested.manifest();
                let kind_now = format!("{:?}", m.kind).to_lowercase();
                if (&m.name, &m.version, &kind_now, &m.component.sha256) != (name, version, kind, component) {
                    return Err(fail(
                        "capsule.manifest",
                        "name, version, kind or component differ from the manifest".into(),
                    ));
                }
                if !cache.present.contains(component) {
                    artifact(ctx, component, r)?;
                    cache.present.insert(*component, ());
                }
                sum.capsule = Some(format!("{name}@{version}"));
                sum.capsule_digest = Some(*capsule);
                sum.dangerous.clone_from(dangerous);
                sum.submitted_by.clone_from(submitted_by);
                sum.provenance = Some(m.provenance.clone());
                st.submission = Some(Submission { capsule: *capsule, manifest: digested, bundle: bundle.as_ref() });
            }
            Event::Admitted { signer, signer_key, grant, trusted_root, .. } => {
                let sub = st.submission.as_ref().ok_or_else(|| order("without a submission"))?;
                let bundle = sub.bundle.ok_or_else(|| {
                    fail("capsule.signature", "admitted, but the submission recorded no signature bundle".into())
                })?;
                // The same check (manifest, bundle, key, root) passed for an earlier run: it passes again.
                let checked = (sub.capsule, *bundle, signer_key.clone(), *trusted_root);
                if !cache.signatures.contains(&checked) {
                    let key = TrustedSigner::from_evidence_key("recorded-signer", signer_key)
                        .map_err(|e| fail("capsule.signature", format!("the recorded signer key is unusable: {e}")))?;
                    let root = trusted_root.as_ref().map(|d| artifact(ctx, d, r)).transpose()?;
                    let trusted = TrustedSigners::new(vec![key], root.as_deref())
                        .map_err(|e| fail("capsule.signature", format!("the recorded trusted root: {e}")))?;
                    let manifest = artifact(ctx, &sub.capsule, r)?;
                    signature::verify_manifest_signature(&manifest, &artifact(ctx, bundle, r)?, &trusted).map_err(
                        |e| {
                            fail(
                                "capsule.signature",
                                format!("the capsule signature does not verify for the recorded signer: {e}"),
                            )
                        },
                    )?;
                    cache.signatures.insert(checked, ());
                }
                let g: Grant = serde_json::from_value(grant.clone())
                    .map_err(|e| fail("record.schema", format!("the recorded grant: {e}")))?;
                st.grant = Some(g);
                sum.signer = Some(signer.clone());
            }
            Event::Decision { decision, input } => {
                let (Some(sub), Some(grant)) = (&st.submission, &st.grant) else {
                    return Err(order("before the capsule was admitted"));
                };
                let replayed = match input {
                    Some(d) => {
                        let inp = parsed(ctx, &cache.inputs, d, r, |e| {
                            fail("decision.input", format!("the decision input does not parse: {e}"))
                        })?;
                        if inp.capsule != sub.capsule || &inp.grant != grant {
                            return Err(fail(
                                "decision.input",
                                "the decision input names another capsule or grant than the run admitted".into(),
                            ));
                        }
                        // Everything else the policy reads comes from the
                        // manifest and the admitted signer.
                        let m = sub.manifest.manifest();
                        let signer_ok =
                            sum.signer.as_deref().is_some_and(|s| s.starts_with(&format!("{} (", inp.signer)));
                        if inp.name != format!("{}@{}", m.name, m.version)
                            || inp.kind != m.kind
                            || inp.endpoints != m.endpoints
                            || inp.ticket != m.provenance.ticket
                            || !signer_ok
                        {
                            return Err(fail(
                                "decision.input",
                                "the decision input's name, kind, endpoints, ticket or signer differ from the \
                                 manifest and the admitted signer"
                                    .into(),
                            ));
                        }
                        let (Some(pd), Some(gd)) = (decision.policy, decision.graph) else {
                            return Err(fail("decision.replay", "a decision input without a policy and graph".into()));
                        };
                        let known = cache.decisions.get(&(pd, gd, *d));
                        let again = match known {
                            Some(again) => again,
                            None => {
                                let policy = load_policy(ctx, cache, &pd, r)?;
                                let graph = load_graph(ctx, cache, &gd, r)?;
                                let again = policy.decide(&graph, &inp);
                                cache.decisions.insert((pd, gd, *d), again.clone());
                                again
                            }
                        };
                        st.decision = Some((decision, Some(inp)));
                        again
                    }
                    None => {
                        st.decision = Some((decision, None));
                        Decision::unapproved_tier0()
                    }
                };
                if &replayed != decision {
                    return Err(fail(
                        "decision.replay",
                        format!(
                            "recorded {}, tier {}; the embedded policy and graph yield {}, tier {}{}",
                            if decision.allowed { "allow" } else { "deny" },
                            decision.tier,
                            if replayed.allowed { "allow" } else { "deny" },
                            replayed.tier,
                            if replayed.allowed == decision.allowed && replayed.tier == decision.tier {
                                " (the reasons or derivation differ)"
                            } else {
                                ""
                            }
                        ),
                    ));
                }
                sum.tier = Some(decision.tier);
                sum.allowed = Some(decision.allowed);
                sum.reasons = decision.reasons.iter().map(ToString::to_string).collect();
            }
            Event::Planned { plan: d, summary, changes, findings, .. } => {
                match &st.decision {
                    Some((dec, _)) if dec.allowed => {}
                    Some(_) => return Err(order("after a deny decision")),
                    None => return Err(order("before a decision")),
                }
                let p = parsed(ctx, &cache.plans, d, r, |e| {
                    fail("plan.artifact", format!("the plan does not parse: {e}"))
                })?;
                if &p.summary != summary || p.changes.len() != *changes || &p.findings != findings {
                    return Err(fail(
                        "plan.artifact",
                        "the record's summary, changes or findings differ from the plan".into(),
                    ));
                }
                sum.plan_summary = Some(summary.clone());
                sum.findings.extend(findings.iter().cloned());
                st.plan = Some((*d, p));
            }
            Event::AwaitingApproval { proposal, approvals_required, .. } => {
                sum.proposal = Some(proposal.clone());
                let Some((dec, _)) = &st.decision else { return Err(order("before a decision")) };
                if st.plan.is_none() {
                    return Err(order("before a plan"));
                }
                if *approvals_required != dec.approvals_required {
                    return Err(fail("decision.replay", "approvals required differ from the decision".into()));
                }
                st.proposal = Some(proposal.clone());
                st.awaiting = true;
            }
            Event::ApprovalReceived { proposal, approval } => {
                if st.plan.is_none() {
                    return Err(order("before a plan"));
                }
                if st.proposal.as_ref().is_some_and(|p| p != proposal) {
                    return Err(fail("approval.binding", "approvals for different proposals in one run".into()));
                }
                st.proposal = Some(proposal.clone());
                st.received.insert(*approval);
            }
            Event::ApprovalAccepted { approval, .. } => {
                if !st.received.contains(approval) {
                    return Err(order("for an approval that was never received"));
                }
                st.accepted.push((r, *approval));
            }
            Event::ApprovalRefused { approval, reason_code, principal, detail } => {
                if !st.received.contains(approval) {
                    return Err(order("for an approval that was never received"));
                }
                sum.refused_approvals.push(RefusedApproval {
                    principal: principal.clone(),
                    reason_code: reason_code.clone(),
                    detail: detail.clone(),
                    record: r.seq,
                });
                st.refused.push((r, *approval, reason_code.clone()));
            }
            Event::Quorum { .. } => {
                check_quorum(r, ctx, cache, &st, &mut sum, ledger, claims)?;
                st.quorum_met = matches!(&r.event, Event::Quorum { outcome, .. }
                    if quorum::Outcome::from_recorded(outcome).is_some_and(|o| o.is_met()));
            }
            Event::Authorized { tier, .. } => {
                let Some((dec, _)) = &st.decision else { return Err(order("before a decision")) };
                if !dec.allowed || st.plan.is_none() {
                    return Err(order("without an allowing decision and a plan"));
                }
                if *tier != dec.tier {
                    return Err(fail(
                        "authorize.tier",
                        format!("authorized at tier {tier}, decided tier {}", dec.tier),
                    ));
                }
                if *tier > 0 && !st.quorum_met {
                    return Err(fail("authorize.quorum", format!("tier {tier} authorized without a met quorum")));
                }
                st.authorized = true;
            }
            Event::Applied { diff, preview, contents, .. } => {
                let Some((plan_d, _)) = &st.plan else { return Err(order("before a plan")) };
                if let Some(d) = preview {
                    check_preview(ctx, r, d, plan_d, diff, contents)?;
                    sum.preview = Some(*d);
                }
                st.applied = Some(diff.clone());
            }
            Event::Resumed { proposal, document, plan: plan_d, preview, contents } => {
                match &st.decision {
                    Some((dec, _)) if dec.allowed => {}
                    _ => return Err(order("without an allowing decision")),
                }
                if st.plan.is_some() {
                    return Err(order("after the run planned for itself"));
                }
                if ctx.documents.get(proposal.as_str()).is_some_and(|d| d != document) {
                    return Err(fail("proposal.document", format!("resumes {proposal} with another document")));
                }
                let doc: serde_json::Value = serde_json::from_slice(&artifact(ctx, document, r)?)
                    .map_err(|e| fail("proposal.document", format!("the proposal document does not parse: {e}")))?;
                let named = |k: &str| doc.get(k).and_then(|v| serde_json::from_value::<Sha256Digest>(v.clone()).ok());
                let capsule = st.submission.as_ref().map(|s| s.capsule);
                if named("capsule") != capsule || named("plan_digest") != Some(*plan_d) || named("preview") != *preview
                {
                    return Err(fail(
                        "proposal.document",
                        format!("the run resumes {proposal} with another capsule, plan or preview than it waited with"),
                    ));
                }
                let p = parsed(ctx, &cache.plans, plan_d, r, |e| {
                    fail("plan.artifact", format!("the plan does not parse: {e}"))
                })?;
                if let Some(d) = preview {
                    let pv = load_preview(ctx, r, d)?;
                    let diff = pv.diff();
                    check_preview(ctx, r, d, plan_d, &diff, contents)?;
                    sum.preview = Some(*d);
                    st.applied = Some(diff);
                }
                sum.plan_summary = Some(p.summary.clone());
                sum.proposal = Some(proposal.clone());
                st.proposal = Some(proposal.clone());
                st.plan = Some((*plan_d, p));
            }
            Event::CommitIntent { changes, .. } => {
                let (true, Some(diff), Some((_, p)), Some(sub), Some(grant)) =
                    (st.authorized, &st.applied, &st.plan, &st.submission, &st.grant)
                else {
                    return Err(fail("run.unauthorized", "a commit without an applied, authorized plan".into()));
                };
                let valid = Plan::clone(p)
                    .validate_digested(
                        &sub.manifest,
                        usize::try_from(grant.limits.max_plan_changes).unwrap_or(usize::MAX),
                    )
                    .map_err(|e| fail("plan.artifact", format!("the plan does not validate: {e}")))?;
                plan::check_diff(&valid, diff)
                    .map_err(|e| fail("diff.plan", format!("committed a diff that is not the plan: {e}")))?;
                if *changes != diff.len() {
                    return Err(fail("diff.plan", "the commit intent counts another number of changes".into()));
                }
                st.intent = Some(*changes);
            }
            Event::CallIntent { phase, call, planned, request, kept, body } => {
                if !st.calls.insert(*call) {
                    return Err(fail("call.plan", format!("request #{call} is recorded twice")));
                }
                // What is kept of the body is what its preview mode says.
                use edge_core::preview::PreviewMode;
                let kept_right = match (kept, request.body) {
                    (None, _) => body.is_none(),
                    (Some(_), None) => false,
                    (Some(PreviewMode::Full), Some(d)) => *body == Some(d),
                    // Masked, the body itself (nothing to mask), or none (not text).
                    (Some(PreviewMode::Redacted), Some(_)) => true,
                    (Some(PreviewMode::DigestOnly), Some(_)) => body.is_none(),
                };
                if !kept_right {
                    return Err(fail("call.plan", format!("request #{call} keeps its body otherwise than it says")));
                }
                match phase.as_str() {
                    // Reads (the runner's endpoint config says which) before the plan is recorded.
                    "plan" if st.plan.is_none() && planned.is_none() => {}
                    "verify" if st.authorized && planned.is_none() => {}
                    "apply" => {
                        let (true, Some((_, p))) = (st.authorized, &st.plan) else {
                            return Err(fail("run.unauthorized", "a call made before the plan was authorized".into()));
                        };
                        let i = edge_core::calls::CallCursor::resume(&p.calls, st.calls_done).admit(request).map_err(
                            |e| fail("call.plan", format!("request #{call} was not in the approved plan: {e}")),
                        )?;
                        if *planned != u32::try_from(i).ok() {
                            return Err(fail("call.plan", format!("request #{call} names another planned call")));
                        }
                        st.calls_done = i + 1;
                    }
                    "compensate" => {
                        let Some((_, p)) = &st.plan else { return Err(order("before a plan")) };
                        let Some(i) = planned.filter(|i| (*i as usize) < st.calls_done) else {
                            return Err(fail("call.compensation", format!("request #{call} undoes a call never made")));
                        };
                        if st.compensated.is_some_and(|last| i >= last) {
                            return Err(fail("call.compensation", "compensations are not in reverse order".into()));
                        }
                        if p.calls[i as usize].compensation.as_ref() != Some(request) {
                            return Err(fail(
                                "call.compensation",
                                format!("request #{call} is not the compensation the plan recorded for call {i}"),
                            ));
                        }
                        st.compensated = Some(i);
                    }
                    _ => return Err(order(&format!("a `{phase}` call here"))),
                }
                sum.calls.push(request.line());
            }
            Event::CallOutcome { call, status, reason_code, .. } => {
                if !st.calls.contains(call) {
                    return Err(fail("call.plan", format!("an outcome for request #{call}, which has no intent")));
                }
                if st.compensated.is_some()
                    && (reason_code.is_some() || !status.is_some_and(|s| (200..300).contains(&s)))
                {
                    st.compensation_failed = true;
                }
            }
            Event::CallRefused { phase, reason_code, detail, .. } => {
                sum.refusals.push((phase.clone(), reason_code.clone(), detail.clone()));
            }
            Event::Committed { changes } => {
                let calls_made =
                    st.plan.as_ref().is_some_and(|(_, p)| !p.calls.is_empty() && p.calls.len() == st.calls_done);
                if calls_made && *changes == st.calls_done && st.authorized {
                    st.committed = true;
                    continue;
                }
                if st.intent != Some(*changes) {
                    return Err(fail("run.unauthorized", "committed without a matching commit intent".into()));
                }
                st.committed = true;
                sum.diff = st.applied.clone().unwrap_or_default();
            }
            Event::Verified { passed, findings, summary, .. } => {
                sum.verify_passed = Some(*passed);
                sum.verify_summary = Some(summary.clone());
                sum.findings.extend(findings.iter().cloned());
            }
            Event::RolledBack { reason_code, detail, .. } => {
                st.rolled_back = true;
                sum.rolled_back = Some((reason_code.clone(), detail.clone()));
            }
            Event::Refused { stage, reason_code, detail } => {
                st.refused_run = true;
                sum.refusals.push((stage.clone(), reason_code.clone(), detail.clone()));
            }
            Event::Interrupted { .. } => st.interrupted = true,
            Event::Completed { outcome } => {
                if i + 1 != recs.len() {
                    return Err(order("is not the run's last record"));
                }
                check_outcome(*outcome, &st).map_err(|why| fail("run.outcome", why))?;
                sum.outcome = Some(*outcome);
            }
            Event::PolicyChange { .. }
            | Event::PolicyRefused { .. }
            | Event::KeyEvent { .. }
            | Event::KeyRotation { .. }
            | Event::RunnerStarted { .. }
            | Event::RegistryChanged { .. }
            | Event::ConfigReloaded { .. }
            | Event::ReloadRefused { .. }
            | Event::Insecure { .. }
            | Event::NotificationFailed { .. }
            | Event::CleanupFailed { .. } => {
                return Err(order("belongs to the runner, not to a capsule run"));
            }
            _ => return Err(fail("record.schema", format!("unknown event `{}`", r.event_type()))),
        }
    }
    if sum.outcome.is_none() {
        return Err(Failure::record(
            "run.terminal",
            last.seq,
            &last.run,
            "the run has no terminal record: records were removed from its end, or the log was cut",
        ));
    }
    Ok(sum)
}

fn load_preview(ctx: &Ctx<'_>, r: &Record, d: &Sha256Digest) -> Result<Preview, Failure> {
    serde_json::from_slice(&artifact(ctx, d, r)?)
        .map_err(|e| Failure::record("preview.document", r.seq, &r.run, format!("the preview does not parse: {e}")))
}

/// The preview describes exactly the diff, for this plan; `full` content
/// hashes to the plan's digests; the record names exactly its content.
fn check_preview(
    ctx: &Ctx<'_>,
    r: &Record,
    d: &Sha256Digest,
    plan: &Sha256Digest,
    diff: &[DiffEntry],
    contents: &[Sha256Digest],
) -> Result<(), Failure> {
    let pv = load_preview(ctx, r, d)?;
    preview::check(&pv, plan, diff, |c| ctx.artifacts.get(c).and_then(Result::ok))
        .map_err(|e| Failure::record("preview.content", r.seq, &r.run, e.to_string()))?;
    if pv.contents() != contents {
        return Err(Failure::record(
            "preview.content",
            r.seq,
            &r.run,
            "the record names other content than the preview shows",
        ));
    }
    Ok(())
}

fn check_outcome(outcome: Outcome, st: &State<'_>) -> Result<(), String> {
    let ok = match outcome {
        Outcome::Committed => st.committed && !st.rolled_back,
        Outcome::NoChanges => !st.committed && st.plan.is_some(),
        Outcome::Refused => st.refused_run && (!st.committed || st.rolled_back),
        Outcome::RolledBack => st.rolled_back,
        Outcome::Interrupted => st.interrupted,
        Outcome::Failed => st.calls_done > 0 && st.compensation_failed,
        Outcome::AwaitingApproval => st.awaiting && !st.authorized,
    };
    if ok { Ok(()) } else { Err(format!("the run ends `{outcome:?}`, which its records do not support")) }
}

fn check_quorum(
    r: &Record,
    ctx: &Ctx<'_>,
    cache: &Cache,
    st: &State<'_>,
    sum: &mut RunSummary,
    ledger: &Ledger,
    claims: &mut Vec<CounterClaim>,
) -> Result<(), Failure> {
    let Event::Quorum {
        proposal,
        outcome,
        counted,
        break_glass,
        nonces,
        allowed_signers,
        roles,
        passkeys,
        checked_at,
        clock_skew_secs,
    } = &r.event
    else {
        unreachable!("called for quorum records");
    };
    let fail = |check: &'static str, detail: String| Failure::record(check, r.seq, &r.run, detail);
    let (Some(sub), Some(grant), Some((dec, Some(input))), Some((plan_d, _))) =
        (&st.submission, &st.grant, &st.decision, &st.plan)
    else {
        return Err(fail("run.order", "a quorum before the capsule was admitted, decided and planned".into()));
    };
    let (Some(req), Some(policy)) = (&dec.requirement, dec.policy) else {
        return Err(fail("quorum.replay", "a quorum for a decision that requires none".into()));
    };
    if st.proposal.as_ref() != Some(proposal) {
        return Err(fail("approval.binding", "the quorum names another proposal than the approvals".into()));
    }
    let time = r
        .time
        .parse::<jiff::Timestamp>()
        .map_err(|_| fail("record.time", format!("`{}` is not an RFC 3339 time", r.time)))?
        .as_second();
    // The recorded clock must be the record's own (within a minute), or a
    // forger could choose the time approvals are checked at.
    if (time - i64::try_from(*checked_at).unwrap_or(i64::MAX)).abs() > 60 {
        return Err(fail("quorum.time", "the approvals were checked at a time far from the record's".into()));
    }
    let registry = memoized(&cache.registries, &(*allowed_signers, *roles, *passkeys), || {
        let passkeys = passkeys.as_ref().map(|d| text(ctx, d, r)).transpose()?;
        Registry::parse(
            &text(ctx, allowed_signers, r)?,
            "allowed_signers (recorded)",
            &text(ctx, roles, r)?,
            "roles (recorded)",
        )
        .and_then(|reg| match passkeys {
            Some(t) => reg.with_passkeys(&t, "passkeys (recorded)"),
            None => Ok(reg),
        })
        .map_err(|e| fail("quorum.registry", format!("the recorded approver registry does not parse: {e}")))
    })?;
    let binding = Binding {
        proposal: proposal.clone(),
        capsule: sub.capsule,
        plan: *plan_d,
        policy,
        runner: ctx.runner.to_owned(),
        tier: dec.tier,
        grant: grant.clone(),
        max_age_secs: req.max_age_secs,
    };
    let mut verified: Vec<VerifiedApproval> = Vec::new();
    for (rec, d) in &st.accepted {
        let Event::ApprovalAccepted { principal, key, verdict, nonce, passkey, .. } = &rec.event else { continue };
        let v = approval::verify_approval(&artifact(ctx, d, rec)?, &registry, &binding, *checked_at, *clock_skew_secs)
            .map_err(|e| {
                Failure::record("approval.signature", rec.seq, &rec.run, format!("recorded as accepted, but: {e}"))
            })?;
        let v_verdict = serde_json::to_value(v.verdict).ok();
        let v_passkey = v.counter.map(|counter| PasskeyUse { counter, issued_at: v.issued_at });
        if (&v.principal, &v.key, &v.nonce, &v_passkey) != (principal, key, nonce, passkey)
            || v_verdict.as_ref().and_then(|x| x.as_str()) != Some(verdict)
        {
            return Err(Failure::record(
                "approval.record",
                rec.seq,
                &rec.run,
                "the record's principal, key, verdict, nonce or passkey counter differ from the signed approval",
            ));
        }
        sum.approvals.push((principal.clone(), verdict.clone()));
        verified.push(v);
    }
    for (rec, d, code) in &st.refused {
        let again =
            approval::verify_approval(&artifact(ctx, d, rec)?, &registry, &binding, *checked_at, *clock_skew_secs);
        // A passkey approval refused for its counter verifies: whether its
        // counter did go back is checked in log order (`check_counters`).
        if code == "approval.counter_regressed"
            && let Ok(v) = &again
            && let Some(counter) = v.counter
        {
            let used = PasskeyUse { counter, issued_at: v.issued_at };
            claims.push(CounterClaim { seq: rec.seq, key: v.key.clone(), used });
            continue;
        }
        if again.is_ok() && code != "approval.replayed" {
            return Err(Failure::record(
                "approval.refusal",
                rec.seq,
                &rec.run,
                format!("recorded as refused ({code}), but the approval verifies"),
            ));
        }
    }
    let subject = quorum::Subject { proposal, capsule: sub.capsule, plan: *plan_d, policy, signer: &input.signer };
    let result = quorum::evaluate(&verified, req, &registry, &subject);
    let same = serde_json::to_value(&result.outcome).ok().as_ref() == Some(outcome)
        && serde_json::to_value(&result.approvals).ok().as_ref() == Some(counted)
        && result.met.as_ref().map(|m| m.nonces().to_vec()).unwrap_or_default() == *nonces
        && result.met.as_ref().is_some_and(quorum::QuorumMet::break_glass) == *break_glass;
    if !same {
        return Err(fail(
            "quorum.replay",
            format!(
                "the recorded quorum ({}) is not what the recorded approvals and registry yield ({})",
                outcome["result"].as_str().unwrap_or("?"),
                serde_json::to_value(&result.outcome)
                    .ok()
                    .and_then(|v| v["result"].as_str().map(str::to_owned))
                    .unwrap_or_default()
            ),
        ));
    }
    if result.met.is_some()
        && let Some(at) = ledger.expired_before(proposal, r.seq)
    {
        return Err(fail(
            "proposal.expired",
            format!("a quorum for proposal {proposal}, which expired at record {at}"),
        ));
    }
    if result.met.is_some()
        && let Some(prev) = ledger.executed_before(proposal, r.seq)
    {
        return Err(fail("proposal.executed", format!("proposal {proposal} was already executed at record {prev}")));
    }
    let mut in_this_quorum = BTreeSet::new();
    for n in nonces {
        let prev = ledger.nonce_spent_before(n, r.seq).or_else(|| (!in_this_quorum.insert(n)).then_some(r.seq));
        if let Some(prev) = prev {
            return Err(fail("nonce.reused", format!("approval nonce {n} was already consumed at record {prev}")));
        }
    }
    sum.break_glass = *break_glass;
    // `evaluate` notes every approval, in order: pair each with its note.
    let approvers = verified
        .into_iter()
        .zip(result.approvals)
        .map(|(v, c)| Approver {
            roles: registry.roles_of(&v.principal).to_vec(),
            verdict: if v.verdict == approval::Verdict::Approve { "approve" } else { "reject" }.into(),
            issued_at: jiff::Timestamp::from_second(i64::try_from(v.issued_at).unwrap_or(i64::MAX))
                .map_or_else(|_| v.issued_at.to_string(), |t| t.to_string()),
            comment: v.comment,
            counted: c.counted,
            note: c.note,
            principal: v.principal,
            key: v.key,
        })
        .collect();
    sum.quorum = Some(QuorumSummary {
        proposal: proposal.clone(),
        record: r.seq,
        time: r.time.clone(),
        outcome: result.outcome,
        break_glass: *break_glass,
        approvers,
    });
    Ok(())
}

fn load_policy(ctx: &Ctx<'_>, cache: &Cache, d: &Sha256Digest, r: &Record) -> Result<Arc<Policy>, Failure> {
    load_cached(ctx, &cache.policies, d, r, "policy", Policy::from_toml, Policy::digest)
}

fn load_graph(ctx: &Ctx<'_>, cache: &Cache, d: &Sha256Digest, r: &Record) -> Result<Arc<Graph>, Failure> {
    load_cached(ctx, &cache.graphs, d, r, "graph", Graph::from_toml, Graph::digest)
}

/// Load a recorded policy or graph once per digest, checking that what
/// loads is what the record names.
fn load_cached<T, E: std::fmt::Display>(
    ctx: &Ctx<'_>,
    cache: &BoundedMap<Sha256Digest, Arc<T>>,
    d: &Sha256Digest,
    r: &Record,
    what: &str,
    parse: impl FnOnce(&str) -> Result<T, E>,
    digest: impl FnOnce(&T) -> Sha256Digest,
) -> Result<Arc<T>, Failure> {
    memoized(cache, d, || {
        let v = parse(&text(ctx, d, r)?).map_err(|e| {
            Failure::record("decision.replay", r.seq, &r.run, format!("the recorded {what} does not load: {e}"))
        })?;
        if digest(&v) != *d {
            return Err(Failure::record("decision.replay", r.seq, &r.run, format!("the {what}'s digest differs")));
        }
        Ok(v)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(seq: u64, run: &str, event: Event) -> Record {
        Record {
            schema: String::new(),
            seq,
            time: "2026-12-03T00:00:00Z".into(),
            run: run.into(),
            prev: Sha256Digest::of(b""),
            event,
        }
    }

    fn accepted(seq: u64, run: &str, nonce: &str, issued_at: u64, counter: u32) -> Record {
        let approval = Sha256Digest::of(nonce.as_bytes());
        let passkey = Some(PasskeyUse { counter, issued_at });
        let (principal, key, verdict) = ("carol".into(), "SHA256:k".into(), "approve".into());
        record(seq, run, Event::ApprovalAccepted { approval, principal, key, verdict, nonce: nonce.into(), passkey })
    }

    fn refused(seq: u64, run: &str) -> Record {
        let e = Event::ApprovalRefused {
            approval: Sha256Digest::of(b"x"),
            principal: None,
            reason_code: "approval.counter_regressed".into(),
            detail: String::new(),
        };
        record(seq, run, e)
    }

    fn quorum(seq: u64, run: &str, met: bool, nonces: &[&str]) -> Record {
        let outcome = if met {
            serde_json::json!({"result": "met", "count": 1, "required": 1, "break_glass": false})
        } else {
            serde_json::json!({"result": "insufficient", "count": 0, "required": 1})
        };
        let d = Sha256Digest::of(b"r");
        record(
            seq,
            run,
            Event::Quorum {
                proposal: format!("p-{run}"),
                outcome,
                counted: serde_json::json!([]),
                break_glass: false,
                nonces: nonces.iter().map(|n| (*n).to_owned()).collect(),
                allowed_signers: d,
                roles: d,
                passkeys: Some(d),
                checked_at: 0,
                clock_skew_secs: 0,
            },
        )
    }

    fn claim(seq: u64, issued_at: u64, counter: u32) -> CounterClaim {
        CounterClaim { seq, key: "SHA256:k".into(), used: PasskeyUse { counter, issued_at } }
    }

    #[test]
    fn counters_are_checked_in_log_order_against_what_was_spent() {
        let first = [accepted(0, "a", "n1", 100, 5), quorum(1, "a", true, &["n1"])];
        // Forward: fine. Back, after the first was spent: a clone.
        assert!(check_counters(&[&first[..], &[accepted(2, "b", "n2", 200, 6)]].concat(), &[]).is_ok());
        let e = check_counters(&[&first[..], &[accepted(2, "b", "n2", 200, 3)]].concat(), &[]).unwrap_err();
        assert_eq!((e.check, e.record), ("approval.counter", Some(2)), "{e}");
        // Not spent (the quorum was not met): the approval may come again.
        let unspent = [accepted(0, "a", "n1", 100, 5), quorum(1, "a", false, &[])];
        assert!(check_counters(&[&unspent[..], &[accepted(2, "b", "n2", 200, 3)]].concat(), &[]).is_ok());
        // Earlier in the same batch counts too.
        let batch = [accepted(0, "a", "n1", 100, 5), accepted(1, "a", "n2", 200, 5)];
        assert_eq!(check_counters(&batch, &[]).unwrap_err().check, "approval.counter");
        // A refusal for the counter must be one.
        let refusal = [&first[..], &[refused(2, "b")]].concat();
        assert!(check_counters(&refusal, &[claim(2, 200, 3)]).is_ok());
        let e = check_counters(&refusal, &[claim(2, 200, 9)]).unwrap_err();
        assert_eq!((e.check, e.record), ("approval.refusal", Some(2)), "{e}");
    }
}
