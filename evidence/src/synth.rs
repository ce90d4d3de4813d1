//! Synthetic but fully valid evidence logs, for benchmarks and for testing
//! the verifier binary and the reports without a runner: signed capsules,
//! the example policy and graph, and any number of runs exported as a full
//! bundle under a fresh runner key. Most runs are tier 0 (submission →
//! completed, ten records each); [`Spec::tier2_every`] makes some proposals
//! tier-2 changes to a text config, previewed, approved by two people (SSH
//! signatures, replayed quorum) and committed by a second run;
//! [`Spec::passkeys`] has the second approver sign with a passkey (ES256,
//! its counter moving forward with each proposal) instead, and
//! [`Spec::passkey_tamper`] spoils that approval in one of the ways the
//! verifier must catch.
//!
//! Not used by the runner; every record here passes [`crate::verify()`] at
//! [`crate::Level::Full`] because it is built the way the runner builds it.

use std::collections::{BTreeMap, BTreeSet};

use edge_core::admission::{Grant, GrantedMount, Limits};
use std::cell::Cell;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use edge_core::approval::{
    self, ApprovalFile, Binding, PASSKEYS_SCHEMA, PasskeyAlgorithm, PasskeyAssertion, PasskeyEntry, PasskeysFile,
    Registry, STATEMENT_SCHEMA, Statement, Verdict, quorum,
};
use edge_core::container::CapsuleFile;
use edge_core::evidence::{Event, GENESIS, Outcome, PasskeyUse, RECORD_SCHEMA, Record};
use edge_core::graph::Graph;
use edge_core::manifest::{ComponentRef, Manifest};
use edge_core::merkle::{self, CompactRange};
use edge_core::note::{Checkpoint, NoteSigner};
use edge_core::plan::{Action, Change, DiffEntry, Plan};
use edge_core::policy::{Decision, DecisionInput, Policy};
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

const CONFIG_MANIFEST: &str = r#"name = "synthetic-config"
version = "1.0.0"
kind = "remediation"
description = "Set server.max_connections back to 512"
imports = ["edge-runner:capsule/host"]

[[mounts]]
name = "config"
writable = true

[provenance]
agent = "spiffe://example.internal/agent/synthetic"
model = "synthetic-model-1"
ticket = "SYN-2"
rationale = "Connection pool exhaustion: the limit drifted from the baseline 512"
"#;

const CONFIG_BEFORE: &[u8] = b"[server]\nhost = \"0.0.0.0\"\nmax_connections = 100\ntimeout_secs = 30\n";
const CONFIG_AFTER: &[u8] = b"[server]\nhost = \"0.0.0.0\"\nmax_connections = 512\ntimeout_secs = 30\n";

/// The approvers of tier-2 proposals: (principal, role, key seed).
const APPROVERS: [(&str, &str, u8); 2] =
    [("alice@bank.example", "sre", 1), ("carol@bank.example", "payments-owner", 2)];
/// The approval console passkeys are registered for.
const CONSOLE_ORIGIN: &str = "https://approvals.bank.example";
const CONSOLE_RP: &str = "approvals.bank.example";

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

/// What to put in a synthetic log.
#[derive(Debug, Clone, Copy, Default)]
pub struct Spec {
    /// Capsule runs in all.
    pub runs: usize,
    /// Every `n`-th proposal is a tier-2 config change: one run waits for
    /// approval, a second presents two approvals and commits (two runs, 21
    /// records). None: every run is a tier-0 cleanup.
    pub tier2_every: Option<usize>,
    /// Nodes added to the example graph, all impacted by the tier-2 change
    /// (a tree under `storefront`): a large blast radius.
    pub extra_graph_nodes: usize,
    /// Lines of the tier-2 config file, every one changed (0: a four-line
    /// file with one changed line).
    pub config_lines: usize,
    /// The second approver of tier-2 proposals signs with a passkey (the
    /// quorum records the passkeys registry).
    pub passkeys: bool,
    /// Spoil the passkey approvals (tests of the verifier).
    pub passkey_tamper: Option<PasskeyTamper>,
    /// With [`Spec::passkeys`]: the second approver enrols a new passkey
    /// for each tier-2 proposal, withdrawing the one before, and signs with
    /// it, so every quorum records its own passkeys file beside the same
    /// `allowed_signers` and roles (tests of the verifier's registry cache).
    /// Not with [`PasskeyTamper::CounterRegression`], which needs one
    /// authenticator signing again.
    pub passkey_each_proposal: bool,
    /// The first tier-0 run gets a record after its terminal one, a second
    /// `verified` (tests of the verifier: `run.order`).
    pub record_after_end: bool,
    /// The runner records its self-attestation (`runner-started`, the build
    /// [`SYNTHETIC_BUILD`]) before the first run, as runners from 0.1 with
    /// self-attestation do.
    pub runner_started: bool,
}

/// The config the synthetic runner's `runner-started` record carries, as
/// shown ([`Spec::runner_started`]).
pub const SYNTHETIC_CONFIG_SHOWN: &str = "[runner]\nname = \"synthetic\"\n";

/// The executable digest, version and revision of the synthetic runner's
/// `runner-started` record ([`Spec::runner_started`]).
pub const SYNTHETIC_BUILD: (&str, &str, &str) = (
    "sha256:5b1c0c1e2f0a9d8e7f6a5b4c3d2e1f00112233445566778899aabbccddeeff00",
    "0.1.0",
    "0123456789abcdef0123456789abcdef01234567",
);

/// A way a recorded passkey approval can be wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PasskeyTamper {
    /// The `approval-accepted` record names another counter than the
    /// assertion signed (`approval.record`).
    RecordedCounter,
    /// The client data was edited after signing: another origin
    /// (`approval.signature`).
    ClientData,
    /// Every proposal after the first is signed with counter 1, below the
    /// first one's: a cloned authenticator (`approval.counter`).
    CounterRegression,
}

/// The tier-2 config file before and after its change.
fn config_files(lines: usize) -> (Vec<u8>, Vec<u8>) {
    if lines == 0 {
        return (CONFIG_BEFORE.to_vec(), CONFIG_AFTER.to_vec());
    }
    let file = |v: u32| (0..lines).map(|i| format!("pool_{i:05}.max_connections = {v}\n")).collect::<String>();
    (file(100).into_bytes(), file(512).into_bytes())
}

/// The example graph, with `extra` nodes impacted through `storefront`.
fn graph_text(extra: usize) -> String {
    let mut g = include_str!("../../examples/policy/graph.toml").to_owned();
    for i in 0..extra {
        let parent = if i == 0 { "storefront".to_owned() } else { format!("svc-{:05}", (i - 1) / 4) };
        g.push_str(&format!(
            "\n[[nodes]]\nid = \"svc-{i:05}\"\nkind = \"service\"\ncriticality = \"{}\"\ndepends_on = [\"{parent}\"]\n",
            ["low", "medium", "high"][i % 3]
        ));
    }
    g
}

/// Build a full bundle of `runs` committed tier-0 runs by runner `origin`.
///
/// # Panics
/// Never for valid arguments (the inputs are fixed and known good).
pub fn full_bundle(origin: &str, runs: usize) -> Synthetic {
    bundle(origin, &Spec { runs, ..Spec::default() })
}

/// A signed capsule and what the runner records of it.
struct Capsule {
    file: CapsuleFile,
    manifest: Sha256Digest,
    component: Sha256Digest,
    signature: Sha256Digest,
    grant: Grant,
    input: Sha256Digest,
    decision: Decision,
    plan: Sha256Digest,
    summary: String,
    diff: Vec<DiffEntry>,
    preview: Sha256Digest,
    contents: Vec<Sha256Digest>,
}

#[derive(Default)]
struct Artifacts(BTreeMap<Sha256Digest, Vec<u8>>);

impl Artifacts {
    fn put(&mut self, b: Vec<u8>) -> Sha256Digest {
        let d = Sha256Digest::of(&b);
        self.0.insert(d, b);
        d
    }
}

struct World {
    agent: CapsuleSigningKey,
    signer: TrustedSigner,
    policy: Policy,
    graph: Graph,
}

impl World {
    /// Sign a capsule, decide on it and plan one change with its preview.
    fn capsule(
        &self,
        arts: &mut Artifacts,
        manifest: &str,
        mount: &str,
        node: &str,
        change: (Action, &str, &[u8], Option<&[u8]>),
        summary: &str,
    ) -> Capsule {
        let component = format!("\0asm synthetic component of {mount}").into_bytes();
        let pinned = ComponentRef { sha256: Sha256Digest::of(&component), size: component.len() as u64 };
        let m = Manifest::from_authoring_toml(manifest, pinned).expect("manifest");
        let file = CapsuleFile::new(m, component.clone()).expect("capsule");
        let sig = self.agent.sign_capsule(&file);
        let grant = Grant {
            endpoints: vec![],
            env: Vec::new(),
            imports: BTreeSet::from(["edge-runner:capsule/host".to_owned()]),
            limits: Limits::DEFAULT,
            mounts: vec![GrantedMount { name: mount.into(), writable: true }],
        };
        let input = DecisionInput {
            read_endpoints: vec![],
            capsule: file.digest(),
            name: format!("{}@{}", file.manifest().name, file.manifest().version),
            kind: file.manifest().kind,
            signer: "synthetic-agent".into(),
            transparency: Transparency::None,
            grant: grant.clone(),
            endpoints: Vec::new(),
            nodes: BTreeMap::from([(mount.to_owned(), node.to_owned())]),
            ticket: file.manifest().provenance.ticket.clone(),
        };
        let decision = self.policy.decide(&self.graph, &input);
        let (action, path, before, after) = change;
        let path = edge_core::paths::MountPath::new(path).expect("path");
        let plan = Plan {
            summary: summary.into(),
            changes: vec![Change {
                mount: mount.into(),
                path: path.clone(),
                action,
                digest_before: Some(Sha256Digest::of(before)),
                digest_after: after.map(Sha256Digest::of),
                mode: None,
                why: "synthetic".into(),
            }],
            calls: Vec::new(),
            findings: Vec::new(),
            facts: Vec::new(),
        };
        let mode_after = after.map(|_| 0o644);
        let diff = vec![DiffEntry {
            mount: mount.into(),
            path: path.clone(),
            action,
            before: Some(Sha256Digest::of(before)),
            after: after.map(Sha256Digest::of),
            mode: mode_after,
        }];
        let side = |arts: &mut Artifacts, b: &[u8]| Side {
            digest: Sha256Digest::of(b),
            size: b.len() as u64,
            lines: edge_core::preview::count_lines(b),
            text: true,
            content: Some(arts.put(b.to_vec())),
        };
        let before_side = side(arts, before);
        let after_side = after.map(|a| side(arts, a));
        let plan_bytes = canonical::to_canonical_vec(&plan).expect("plan");
        let preview = Preview {
            schema: PREVIEW_SCHEMA.into(),
            plan: Sha256Digest::of(&plan_bytes),
            files: vec![FilePreview {
                mount: mount.into(),
                path,
                action,
                preview: PreviewMode::Full,
                before: Some(before_side),
                after: after_side,
                mode_before: Some(0o644),
                mode_after,
                redacted_lines: 0,
            }],
        };
        Capsule {
            manifest: arts.put(file.manifest_bytes().to_vec()),
            component: arts.put(component),
            signature: arts.put(sig),
            input: arts.put(canonical::to_canonical_vec(&input).expect("input")),
            grant,
            decision,
            plan: arts.put(plan_bytes),
            summary: summary.into(),
            diff,
            contents: preview.contents(),
            preview: arts.put(serde_json::to_vec(&preview).expect("preview")),
            file,
        }
    }

    /// The records a run makes up to its plan: submission, admission, decision.
    fn admitted(&self, c: &Capsule) -> [Event; 3] {
        let m = c.file.manifest();
        [
            Event::Submission {
                capsule: c.file.digest(),
                name: m.name.clone(),
                version: m.version.clone(),
                kind: "remediation".into(),
                manifest: c.manifest,
                component: c.component,
                bundle: Some(c.signature),
                dangerous: Vec::new(),
                submitted_by: Some("spiffe://example.internal/agent/synthetic".into()),
            },
            Event::Admitted {
                signer: format!("synthetic-agent ({})", self.agent.key_id()),
                signer_key: self.signer.evidence_key(),
                grant: serde_json::to_value(&c.grant).expect("grant"),
                imports: vec!["edge-runner:capsule/host".into()],
                trusted_root: None,
            },
            Event::Decision { decision: c.decision.clone(), input: Some(c.input) },
        ]
    }
}

/// Build a full bundle as `spec` says, by runner `origin`.
///
/// # Panics
/// Never for valid arguments (the inputs are fixed and known good).
pub fn bundle(origin: &str, spec: &Spec) -> Synthetic {
    bundle_signed_by(origin, spec, CapsuleSigningKey::generate())
}

/// [`bundle`], with `identity` as the runner's identity key (a benchmark
/// that starts a runner on the log gives it the same key).
pub fn bundle_signed_by(origin: &str, spec: &Spec, identity: CapsuleSigningKey) -> Synthetic {
    let mut log = Log::default();
    let (arts, note, identity) = generate(origin, spec, identity, &mut log);
    let header = Header {
        format: bundle::Format::default(),
        origin: origin.to_owned(),
        scope: Scope::Full,
        tree_size: log.len,
        records: log.len,
        artifacts: arts.0.len() as u64,
    };
    let lines: Vec<&str> = log.lines.iter().map(String::as_str).collect();
    let list: Vec<(Sha256Digest, &[u8])> = arts.0.iter().map(|(d, b)| (*d, b.as_slice())).collect();
    let bundle = bundle::write(&header, &lines, &list, &note).expect("bundle");
    Synthetic { bundle, vkey: identity.verifier().to_vkey(), records: lines.len(), signer: identity }
}

/// The log [`bundle_signed_by`] makes, each record line handed to `record`
/// as it is made (none kept: a store of millions of records is filled in
/// memory that does not grow with it); returns the artifacts, by digest.
pub fn stream_signed_by(
    origin: &str,
    spec: &Spec,
    identity: CapsuleSigningKey,
    record: &mut dyn FnMut(&str),
) -> BTreeMap<Sha256Digest, Vec<u8>> {
    let mut log = Log { sink: Some(record), ..Log::default() };
    generate(origin, spec, identity, &mut log).0.0
}

/// Write the log into `log`; its artifacts, the signed checkpoint note and the signer.
fn generate(
    origin: &str,
    spec: &Spec,
    identity: CapsuleSigningKey,
    log: &mut Log<'_>,
) -> (Artifacts, String, NoteSigner) {
    assert!(
        !(spec.passkey_each_proposal && spec.passkey_tamper == Some(PasskeyTamper::CounterRegression)),
        "a counter goes back only on an authenticator that signs again: not with a passkey per proposal"
    );
    let agent = CapsuleSigningKey::generate();
    let signer = TrustedSigner::from_public_key_pem("synthetic-agent", &agent.public_key_pem()).expect("key");
    let policy_text = format!(
        "{}\n[[signers]]\nname = \"synthetic-agent\"\npublic_key = \"\"\"{}\"\"\"\nmounts = [\"*\"]\nwritable_mounts = [\"logs\", \"config\"]\n",
        include_str!("../../examples/policy/policy.toml"),
        agent.public_key_pem()
    );
    let graph_text = graph_text(spec.extra_graph_nodes);
    let world = World {
        policy: Policy::from_toml(&policy_text).expect("policy"),
        graph: Graph::from_toml(&graph_text).expect("graph"),
        agent,
        signer,
    };
    let mut arts = Artifacts::default();
    let policy_d = arts.put(policy_text.into_bytes());
    let graph_d = arts.put(graph_text.into_bytes());
    assert_eq!((policy_d, graph_d), (world.policy.digest(), world.graph.digest()));
    // Each capsule's artifacts join the bundle with its first run: a bundle
    // holds exactly the artifacts its records reference.
    let mut cleanup_arts = Artifacts::default();
    let cleanup = world.capsule(
        &mut cleanup_arts,
        MANIFEST,
        "logs",
        "log-volume",
        (Action::Delete, "app/old.log", b"old log", None),
        "delete one expired log",
    );
    assert!(cleanup.decision.allowed && cleanup.decision.tier == 0, "tier 0: {:?}", cleanup.decision);
    let journal_d = arts.put(b"{\"synthetic\":\"journal\"}".to_vec());
    let mut config_arts = Artifacts::default();
    let config = spec.tier2_every.map(|_| {
        let (before, after) = config_files(spec.config_lines);
        let c = world.capsule(
            &mut config_arts,
            CONFIG_MANIFEST,
            "config",
            "payments-config",
            (Action::Modify, "app.toml", &before, Some(&after)),
            "set server.max_connections to 512",
        );
        assert!(c.decision.allowed && c.decision.tier == 2, "tier 2: {:?}", c.decision);
        (c, Approvers::new(&mut config_arts, spec, 0))
    });
    let (mut enrolments, mut after_end) = (0u32, false);

    let identity = identity.note_signer(origin).expect("origin is a key name");
    log.push("runner", Event::KeyEvent { action: "identity key in use".into(), key: identity.verifier().to_vkey() });
    log.push(
        "policy",
        Event::PolicyChange { old_policy: None, new_policy: Some(policy_d), old_graph: None, new_graph: Some(graph_d) },
    );
    if spec.runner_started {
        let (binary, version, revision) = SYNTHETIC_BUILD;
        log.push(
            "runner",
            Event::RunnerStarted {
                binary: binary.parse().expect("a digest"),
                version: version.into(),
                revision: revision.into(),
                config: Some(Sha256Digest::of(b"synthetic runner.toml")),
                config_shown: Some(arts.put(SYNTHETIC_CONFIG_SHOWN.as_bytes().to_vec())),
                policy: Some(policy_d),
                graph: Some(graph_d),
                approvers: None,
            },
        );
    }
    let (mut i, mut proposal) = (0, 0);
    while i < spec.runs {
        let run = |i: usize| format!("r-{:013}-{:08x}", 1_795_000_000_000u64 + i as u64, i);
        proposal += 1;
        if let (Some(every), Some((c, approvers))) = (spec.tier2_every, &config)
            && proposal % every.max(1) == 0
            && i + 2 <= spec.runs
        {
            arts.0.append(&mut config_arts.0);
            let enrolled;
            let approvers = if spec.passkeys && spec.passkey_each_proposal && enrolments > 0 {
                enrolled = Approvers::new(&mut arts, spec, enrolments);
                &enrolled
            } else {
                approvers
            };
            enrolments += 1;
            tier2(&world, log, &mut arts, c, approvers, journal_d, (&run(i), &run(i + 1)), origin);
            i += 2;
            continue;
        }
        arts.0.append(&mut cleanup_arts.0);
        let c = &cleanup;
        let r = run(i);
        for e in world.admitted(c) {
            log.push(&r, e);
        }
        let events = [
            Event::Planned {
                plan: c.plan,
                summary: c.summary.clone(),
                changes: 1,
                findings: Vec::new(),
                output: None,
                bodies: Vec::new(),
            },
            Event::Applied {
                diff: c.diff.clone(),
                output: None,
                preview: Some(c.preview),
                contents: c.contents.clone(),
            },
            Event::Authorized { tier: 0, approvals: Vec::new(), note: "tier 0: no approvals required".into() },
            Event::CommitIntent { changes: 1, journal: journal_d },
            Event::Committed { changes: 1 },
            Event::Verified { passed: true, summary: "the log is gone".into(), findings: Vec::new(), output: None },
            Event::Completed { outcome: Outcome::Committed },
        ];
        for e in events {
            log.push(&r, e);
        }
        if spec.record_after_end && !after_end {
            log.push(
                &r,
                Event::Verified { passed: true, summary: "once more".into(), findings: Vec::new(), output: None },
            );
            after_end = true;
        }
        i += 1;
    }
    let cp = Checkpoint { origin: origin.to_owned(), size: log.len, root: log.range.root() };
    let note = identity.sign(&cp.text()).expect("sign");
    (arts, note, identity)
}

/// The approvers' keys and the registry the runner recorded.
struct Approvers {
    keys: Vec<(String, ssh_key::PrivateKey)>,
    registry: Registry,
    allowed_signers: Sha256Digest,
    roles: Sha256Digest,
    /// The second approver's passkey, when they sign with one.
    passkey: Option<Passkey>,
    passkeys: Option<Sha256Digest>,
}

/// A software authenticator: one ES256 credential and its counter.
struct Passkey {
    key: p256::ecdsa::SigningKey,
    id: Vec<u8>,
    /// Assertions made so far.
    made: Cell<u32>,
    tamper: Option<PasskeyTamper>,
}

impl Passkey {
    fn entry(&self, principal: &str) -> PasskeyEntry {
        PasskeyEntry {
            algorithm: PasskeyAlgorithm::Es256,
            credential_id: B64URL.encode(&self.id),
            enrolled_at: 1_795_000_000,
            label: Some("synthetic authenticator".into()),
            origin: CONSOLE_ORIGIN.into(),
            principal: principal.into(),
            public_key: B64URL.encode(self.key.verifying_key().to_encoded_point(false).as_bytes()),
            rp_id: CONSOLE_RP.into(),
        }
    }

    /// Sign `st` as the console's browser would have it signed: user present
    /// and verified, the counter moving forward with time (unless tampered).
    fn approve(&self, st: &Statement) -> (ApprovalFile, u32) {
        use p256::ecdsa::signature::Signer as _;
        let n = self.made.get();
        self.made.set(n + 1);
        let counter = match self.tamper {
            Some(PasskeyTamper::CounterRegression) if n > 0 => 1,
            // Synthetic statements are issued after 1_794_000_000.
            _ => u32::try_from(st.issued_at.saturating_sub(1_794_000_000)).unwrap_or(u32::MAX),
        };
        let challenge = approval::statement_challenge(st);
        let client = format!(
            r#"{{"type":"webauthn.get","challenge":"{}","origin":"{CONSOLE_ORIGIN}","crossOrigin":false}}"#,
            B64URL.encode(challenge)
        );
        let mut auth = Sha256Digest::of(CONSOLE_RP.as_bytes()).0.to_vec();
        auth.push(0x05);
        auth.extend(counter.to_be_bytes());
        let mut signed = auth.clone();
        signed.extend(Sha256Digest::of(client.as_bytes()).0);
        let sig: p256::ecdsa::DerSignature = self.key.sign(&signed);
        let assertion = PasskeyAssertion {
            authenticator_data: B64URL.encode(&auth),
            client_data_json: B64URL.encode(client.as_bytes()),
            credential_id: B64URL.encode(&self.id),
            signature: B64URL.encode(sig.as_bytes()),
        };
        (ApprovalFile::passkey(st.clone(), assertion), counter)
    }
}

impl Approvers {
    /// The approvers after the second one's `enrolment`-th passkey
    /// enrolment (0: the first; see [`Spec::passkey_each_proposal`]).
    fn new(arts: &mut Artifacts, spec: &Spec, enrolment: u32) -> Self {
        let keys: Vec<(String, ssh_key::PrivateKey)> = APPROVERS
            .iter()
            .map(|(p, _, seed)| {
                let kp = ssh_key::private::Ed25519Keypair::from_seed(&[*seed; 32]);
                ((*p).to_owned(), ssh_key::PrivateKey::from(kp))
            })
            .collect();
        let signers: String =
            keys.iter().map(|(p, k)| format!("{p} {}\n", k.public_key().to_openssh().expect("openssh"))).collect();
        let roles: String = std::iter::once("[principals]\n".to_owned())
            .chain(APPROVERS.iter().map(|(p, r, _)| format!("\"{p}\" = [\"{r}\"]\n")))
            .collect();
        let mut registry = Registry::parse(&signers, "allowed_signers", &roles, "roles.toml").expect("registry");
        let mut seed = [0x2b; 32];
        for (s, e) in seed[28..].iter_mut().zip(enrolment.to_be_bytes()) {
            *s ^= e;
        }
        let passkey = spec.passkeys.then(|| Passkey {
            key: p256::ecdsa::SigningKey::from_slice(&seed).expect("P-256 key"),
            id: match enrolment {
                0 => b"synthetic credential".to_vec(),
                n => format!("synthetic credential {n}").into_bytes(),
            },
            made: Cell::new(0),
            tamper: spec.passkey_tamper,
        });
        let passkeys = passkey.as_ref().map(|p| {
            let file = PasskeysFile { credentials: vec![p.entry(APPROVERS[1].0)], schema: PASSKEYS_SCHEMA.to_owned() };
            let text = serde_json::to_string_pretty(&file).expect("passkeys");
            registry = registry.clone().with_passkeys(&text, "passkeys.json").expect("passkeys registry");
            arts.put(text.into_bytes())
        });
        Self {
            allowed_signers: arts.put(signers.into_bytes()),
            roles: arts.put(roles.into_bytes()),
            keys,
            registry,
            passkey,
            passkeys,
        }
    }
}

const SKEW: u64 = 300;

/// One tier-2 proposal: run `a` previews and waits; run `b` presents two
/// approvals, meets the quorum and commits the previewed bytes.
#[allow(clippy::too_many_arguments)]
fn tier2(
    world: &World,
    log: &mut Log<'_>,
    arts: &mut Artifacts,
    c: &Capsule,
    approvers: &Approvers,
    journal: Sha256Digest,
    (a, b): (&str, &str),
    origin: &str,
) {
    let proposal = edge_core::lifecycle::proposal_id(a);
    let document = arts.put(
        canonical::to_canonical_vec(&serde_json::json!({
            "id": proposal, "capsule": c.file.digest(), "plan_digest": c.plan, "preview": c.preview,
        }))
        .expect("document"),
    );
    for e in world.admitted(c) {
        log.push(a, e);
    }
    for e in [
        Event::Planned {
            plan: c.plan,
            summary: c.summary.clone(),
            changes: 1,
            findings: Vec::new(),
            output: None,
            bodies: Vec::new(),
        },
        Event::Applied { diff: c.diff.clone(), output: None, preview: Some(c.preview), contents: c.contents.clone() },
        Event::AwaitingApproval { proposal: proposal.clone(), document, approvals_required: 2 },
        Event::Completed { outcome: Outcome::AwaitingApproval },
    ] {
        log.push(a, e);
    }
    for e in world.admitted(c) {
        log.push(b, e);
    }
    log.push(
        b,
        Event::Resumed {
            proposal: proposal.clone(),
            document,
            plan: c.plan,
            preview: Some(c.preview),
            contents: c.contents.clone(),
        },
    );
    // Signed a minute before they are presented; checked at the quorum record.
    let now = log.now() + 4;
    let policy = c.decision.policy.expect("a policy decided");
    let req = c.decision.requirement.as_ref().expect("tier 2 requires approvals");
    let binding = Binding {
        proposal: proposal.clone(),
        capsule: c.file.digest(),
        plan: c.plan,
        policy,
        runner: origin.to_owned(),
        tier: c.decision.tier,
        grant: c.grant.clone(),
        max_age_secs: req.max_age_secs,
    };
    let mut verified = Vec::new();
    for (i, (principal, key)) in approvers.keys.iter().enumerate() {
        let statement = Statement {
            schema: STATEMENT_SCHEMA.into(),
            proposal: proposal.clone(),
            capsule: binding.capsule,
            plan: binding.plan,
            policy,
            runner: origin.to_owned(),
            tier: binding.tier,
            grant: binding.grant.clone(),
            decision: Verdict::Approve,
            comment: Some(format!("{principal}: checked the diff, 512 is the baseline")),
            approver: principal.clone(),
            issued_at: now - 60,
            expires_at: now + 3600,
            nonce: Sha256Digest::of(format!("{proposal} {principal}").as_bytes()).to_string()["sha256:".len()..]
                .to_owned(),
        };
        let (file, tamper) = match &approvers.passkey {
            Some(p) if i == 1 => {
                let (file, counter) = p.approve(&statement);
                (file, p.tamper.map(|t| (t, counter)))
            }
            _ => {
                let sig = key
                    .sign(approval::NAMESPACE, ssh_key::HashAlg::Sha512, &statement.canonical_bytes())
                    .expect("sign");
                (ApprovalFile::ssh(statement, sig.to_pem(ssh_key::LineEnding::LF).expect("pem")), None)
            }
        };
        let bytes = serde_json::to_vec_pretty(&file).expect("approval");
        let v = approval::verify_approval(&bytes, &approvers.registry, &binding, now, SKEW).expect("verifies");
        let mut passkey = v.counter.map(|counter| PasskeyUse { counter, issued_at: v.issued_at });
        let bytes = match tamper {
            Some((PasskeyTamper::RecordedCounter, counter)) => {
                passkey = Some(PasskeyUse { counter: counter + 1, issued_at: v.issued_at });
                bytes
            }
            Some((PasskeyTamper::ClientData, _)) => {
                let mut file = file;
                let a = file.passkey.as_mut().expect("a passkey approval");
                let client = B64URL.decode(&a.client_data_json).expect("base64url");
                let edited = String::from_utf8(client).expect("utf-8").replace(CONSOLE_ORIGIN, "https://evil.example");
                a.client_data_json = B64URL.encode(edited);
                serde_json::to_vec_pretty(&file).expect("approval")
            }
            Some((PasskeyTamper::CounterRegression, _)) | None => bytes,
        };
        let d = arts.put(bytes);
        log.push(b, Event::ApprovalReceived { proposal: proposal.clone(), approval: d });
        log.push(
            b,
            Event::ApprovalAccepted {
                approval: d,
                principal: v.principal.clone(),
                key: v.key.clone(),
                verdict: "approve".into(),
                nonce: v.nonce.clone(),
                passkey,
            },
        );
        verified.push(v);
    }
    let subject = quorum::Subject {
        proposal: &proposal,
        capsule: binding.capsule,
        plan: c.plan,
        policy,
        signer: "synthetic-agent",
    };
    let result = quorum::evaluate(&verified, req, &approvers.registry, &subject);
    let met = result.met.as_ref().expect("two approvers meet the tier-2 quorum");
    let nonces = met.nonces().to_vec();
    for e in [
        Event::Quorum {
            proposal: proposal.clone(),
            outcome: serde_json::to_value(&result.outcome).expect("outcome"),
            counted: serde_json::to_value(&result.approvals).expect("counted"),
            break_glass: false,
            nonces: nonces.clone(),
            allowed_signers: approvers.allowed_signers,
            roles: approvers.roles,
            passkeys: approvers.passkeys,
            checked_at: now,
            clock_skew_secs: SKEW,
        },
        Event::Authorized { tier: 2, approvals: nonces, note: format!("quorum met for proposal {proposal}") },
        Event::CommitIntent { changes: 1, journal },
        Event::Committed { changes: 1 },
        Event::Verified { passed: true, summary: "max_connections is 512".into(), findings: Vec::new(), output: None },
        Event::Completed { outcome: Outcome::Committed },
    ] {
        log.push(b, e);
    }
}

/// Records chained and hashed into a tree as the store does.
#[derive(Default)]
struct Log<'s> {
    /// The record lines, unless they go to `sink` as they are made.
    lines: Vec<String>,
    sink: Option<&'s mut dyn FnMut(&str)>,
    len: u64,
    prev: Option<Sha256Digest>,
    range: CompactRange,
}

impl Log<'_> {
    /// The time of the next record (Unix seconds): one record a second.
    fn now(&self) -> u64 {
        1_795_000_000 + self.len
    }

    fn push(&mut self, run: &str, event: Event) {
        let seq = self.len;
        let r = Record {
            schema: RECORD_SCHEMA.to_owned(),
            seq,
            time: jiff::Timestamp::from_second(self.now() as i64).expect("time").to_string(),
            run: run.to_owned(),
            prev: self.prev.unwrap_or(GENESIS),
            event,
        };
        let body = String::from_utf8(r.canonical_bytes().expect("canonical")).expect("utf-8");
        self.prev = Some(Sha256Digest::of(body.as_bytes()));
        self.range.push(merkle::leaf_hash(body.as_bytes()));
        self.len += 1;
        match &mut self.sink {
            Some(sink) => sink(&body),
            None => self.lines.push(body),
        }
    }
}
