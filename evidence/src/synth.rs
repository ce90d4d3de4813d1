//! Synthetic but fully valid evidence logs, for benchmarks and for testing
//! the verifier binary without a runner: a signed capsule, the example policy
//! and graph, and any number of tier-0 runs (submission → completed, ten
//! records each), exported as a full bundle under a fresh runner key.
//!
//! Not used by the runner; every record here passes [`crate::verify()`] at
//! [`crate::Level::Full`] because it is built the way the runner builds it.

use std::collections::{BTreeMap, BTreeSet};

use edge_core::admission::{Grant, GrantedMount, Limits};
use edge_core::container::CapsuleFile;
use edge_core::evidence::{Event, GENESIS, Outcome, RECORD_SCHEMA, Record};
use edge_core::graph::Graph;
use edge_core::manifest::{ComponentRef, Manifest};
use edge_core::merkle::{self, CompactRange};
use edge_core::note::{Checkpoint, NoteSigner};
use edge_core::plan::{Action, Change, DiffEntry, Plan};
use edge_core::policy::{DecisionInput, Policy};
use edge_core::preview::{FilePreview, PREVIEW_SCHEMA, Preview, PreviewMode, Side};
use edge_core::signature::{CapsuleSigningKey, Transparency, TrustedSigner};
use edge_core::{Sha256Digest, canonical};

use crate::bundle::{self, Header, Scope};

const MANIFEST: &str = r#"name = "synthetic-cleanup"
version = "1.0.0"
kind = "remediation"
imports = ["edge-runner:capsule/host"]

[[mounts]]
name = "logs"
writable = true

[provenance]
agent = "spiffe://example.internal/agent/synthetic"
ticket = "SYN-1"
"#;

/// A synthetic log, exported.
#[derive(Debug)]
pub struct Synthetic {
    pub bundle: Vec<u8>,
    /// The runner's verifier key (`<name>+<id>+<key>`).
    pub vkey: String,
    pub records: usize,
    /// The signer that signed the checkpoint (to forge with, in tests).
    pub signer: NoteSigner,
}

/// Build a full bundle of `runs` committed tier-0 runs by runner `origin`.
///
/// # Panics
/// Never for valid arguments (the inputs are fixed and known good).
pub fn full_bundle(origin: &str, runs: usize) -> Synthetic {
    let agent = CapsuleSigningKey::generate();
    let component = b"\0asm synthetic component bytes".to_vec();
    let pinned = ComponentRef { sha256: Sha256Digest::of(&component), size: component.len() as u64 };
    let manifest = Manifest::from_authoring_toml(MANIFEST, pinned).expect("manifest");
    let file = CapsuleFile::new(manifest, component.clone()).expect("capsule");
    let sig = agent.sign_capsule(&file);
    let signer = TrustedSigner::from_public_key_pem("synthetic-agent", &agent.public_key_pem()).expect("key");
    let policy_text = format!(
        "{}\n[[signers]]\nname = \"synthetic-agent\"\npublic_key = \"\"\"{}\"\"\"\nmounts = [\"*\"]\nwritable_mounts = [\"logs\"]\n",
        include_str!("../../examples/policy/policy.toml"),
        agent.public_key_pem()
    );
    let graph_text = include_str!("../../examples/policy/graph.toml").to_owned();
    let policy = Policy::from_toml(&policy_text).expect("policy");
    let graph = Graph::from_toml(&graph_text).expect("graph");
    let grant = Grant {
        env: Vec::new(),
        imports: BTreeSet::from(["edge-runner:capsule/host".to_owned()]),
        limits: Limits::DEFAULT,
        mounts: vec![GrantedMount { name: "logs".into(), writable: true }],
    };
    let input = DecisionInput {
        capsule: file.digest(),
        name: "synthetic-cleanup@1.0.0".into(),
        kind: file.manifest().kind,
        signer: "synthetic-agent".into(),
        transparency: Transparency::None,
        grant: grant.clone(),
        endpoints: Vec::new(),
        nodes: BTreeMap::from([("logs".to_owned(), "log-volume".to_owned())]),
        ticket: Some("SYN-1".into()),
    };
    let decision = policy.decide(&graph, &input);
    assert!(decision.allowed && decision.tier == 0, "the synthetic run is tier 0: {decision:?}");
    let before = Sha256Digest::of(b"old log");
    let plan = Plan {
        summary: "delete one expired log".into(),
        changes: vec![Change {
            mount: "logs".into(),
            path: edge_core::paths::MountPath::new("app/old.log").expect("path"),
            action: Action::Delete,
            digest_before: Some(before),
            digest_after: None,
            mode: None,
            why: "older than 14 days".into(),
        }],
        findings: Vec::new(),
        facts: Vec::new(),
    };
    let diff = vec![DiffEntry {
        mount: "logs".into(),
        path: plan.changes[0].path.clone(),
        action: Action::Delete,
        before: Some(before),
        after: None,
        mode: None,
    }];

    let mut artifacts: BTreeMap<Sha256Digest, Vec<u8>> = BTreeMap::new();
    let mut put = |b: Vec<u8>| {
        let d = Sha256Digest::of(&b);
        artifacts.insert(d, b);
        d
    };
    let manifest_d = put(file.manifest_bytes().to_vec());
    let component_d = put(component);
    let bundle_d = put(sig);
    let input_d = put(canonical::to_canonical_vec(&input).expect("input"));
    let policy_d = put(policy_text.into_bytes());
    let graph_d = put(graph_text.into_bytes());
    let plan_d = put(canonical::to_canonical_vec(&plan).expect("plan"));
    let journal_d = put(b"{\"synthetic\":\"journal\"}".to_vec());
    let old_log_d = put(b"old log".to_vec());
    let preview = Preview {
        schema: PREVIEW_SCHEMA.into(),
        plan: Sha256Digest::of(&canonical::to_canonical_vec(&plan).expect("plan")),
        files: vec![FilePreview {
            mount: "logs".into(),
            path: plan.changes[0].path.clone(),
            action: Action::Delete,
            preview: PreviewMode::Full,
            before: Some(Side { digest: before, size: 7, lines: 1, text: true, content: Some(old_log_d) }),
            after: None,
            mode_before: Some(0o644),
            mode_after: None,
            redacted_lines: 0,
        }],
    };
    let preview_d = put(serde_json::to_vec(&preview).expect("preview"));
    assert_eq!((policy_d, graph_d), (policy.digest(), graph.digest()));

    let identity = CapsuleSigningKey::generate().note_signer(origin).expect("origin is a key name");
    let mut log = Log::default();
    log.push("runner", Event::KeyEvent { action: "identity key in use".into(), key: identity.verifier().to_vkey() });
    log.push(
        "policy",
        Event::PolicyChange { old_policy: None, new_policy: Some(policy_d), old_graph: None, new_graph: Some(graph_d) },
    );
    for i in 0..runs {
        let run = format!("r-{:013}-{:08x}", 1_795_000_000_000u64 + i as u64, i);
        let events = [
            Event::Submission {
                capsule: file.digest(),
                name: "synthetic-cleanup".into(),
                version: "1.0.0".into(),
                kind: "remediation".into(),
                manifest: manifest_d,
                component: component_d,
                bundle: Some(bundle_d),
                dangerous: Vec::new(),
                submitted_by: Some("spiffe://example.internal/agent/synthetic".into()),
            },
            Event::Admitted {
                signer: format!("synthetic-agent ({})", agent.key_id()),
                signer_key: signer.evidence_key(),
                grant: serde_json::to_value(&grant).expect("grant"),
                imports: vec!["edge-runner:capsule/host".into()],
                trusted_root: None,
            },
            Event::Decision { decision: decision.clone(), input: Some(input_d) },
            Event::Planned {
                plan: plan_d,
                summary: plan.summary.clone(),
                changes: 1,
                findings: Vec::new(),
                output: None,
            },
            Event::Applied { diff: diff.clone(), output: None, preview: Some(preview_d), contents: vec![old_log_d] },
            Event::Authorized { tier: 0, approvals: Vec::new(), note: "tier 0: no approvals required".into() },
            Event::CommitIntent { changes: 1, journal: journal_d },
            Event::Committed { changes: 1 },
            Event::Verified { passed: true, summary: "the log is gone".into(), findings: Vec::new(), output: None },
            Event::Completed { outcome: Outcome::Committed },
        ];
        for e in events {
            log.push(&run, e);
        }
    }
    let cp = Checkpoint { origin: origin.to_owned(), size: log.lines.len() as u64, root: log.range.root() };
    let note = identity.sign(&cp.text()).expect("sign");
    let header = Header {
        origin: origin.to_owned(),
        scope: Scope::Full,
        tree_size: cp.size,
        records: cp.size,
        artifacts: artifacts.len() as u64,
    };
    let lines: Vec<&str> = log.lines.iter().map(String::as_str).collect();
    let arts: Vec<(Sha256Digest, &[u8])> = artifacts.iter().map(|(d, b)| (*d, b.as_slice())).collect();
    let bundle = bundle::write(&header, &lines, &arts, &note).expect("bundle");
    Synthetic { bundle, vkey: identity.verifier().to_vkey(), records: lines.len(), signer: identity }
}

/// Records chained and hashed into a tree as the store does.
#[derive(Default)]
struct Log {
    lines: Vec<String>,
    prev: Option<Sha256Digest>,
    range: CompactRange,
}

impl Log {
    fn push(&mut self, run: &str, event: Event) {
        let seq = self.lines.len() as u64;
        let r = Record {
            schema: RECORD_SCHEMA.to_owned(),
            seq,
            time: jiff::Timestamp::from_second(1_795_000_000 + seq as i64).expect("time").to_string(),
            run: run.to_owned(),
            prev: self.prev.unwrap_or(GENESIS),
            event,
        };
        let body = String::from_utf8(r.canonical_bytes().expect("canonical")).expect("utf-8");
        self.prev = Some(Sha256Digest::of(body.as_bytes()));
        self.range.push(merkle::leaf_hash(body.as_bytes()));
        self.lines.push(body);
    }
}
