//! Regenerate the checked-in seed corpora (`fuzz/corpus/<target>/seed-*`)
//! and the evidence fixture key, from the repository's test data and the
//! fixed keys in `edge_fuzz`:
//!
//! ```sh
//! cd fuzz && cargo run --example gen_corpus --no-default-features
//! ```
//!
//! Deterministic except the evidence bundle (the synthetic log draws a fresh
//! runner key; its verifier key is written to `fixtures/evidence.vkey`).

use std::path::{Path, PathBuf};

use edge_core::approval::{ApprovalFile, NAMESPACE, STATEMENT_SCHEMA, Statement, Verdict};
use edge_core::merkle;
use edge_core::note::{Checkpoint, TlogProof};
use ssh_key::{HashAlg, LineEnding};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read(rel: &str) -> Vec<u8> {
    std::fs::read(root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn put(target: &str, name: &str, bytes: &[u8]) {
    let dir = root().join("fuzz/corpus").join(target);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(format!("seed-{name}")), bytes).unwrap();
}

fn statement(approver: &str, decision: Verdict, comment: Option<&str>) -> Statement {
    let b = edge_fuzz::binding();
    Statement {
        schema: STATEMENT_SCHEMA.into(),
        proposal: b.proposal,
        capsule: b.capsule,
        plan: b.plan,
        policy: b.policy,
        runner: b.runner,
        tier: b.tier,
        grant: b.grant,
        decision,
        comment: comment.map(Into::into),
        approver: approver.into(),
        issued_at: edge_fuzz::NOW - 60,
        expires_at: edge_fuzz::NOW + 3600,
        nonce: "ab".repeat(32),
    }
}

fn approval(st: &Statement, namespace: &str) -> Vec<u8> {
    let sig = edge_fuzz::approver_key().sign(namespace, HashAlg::Sha512, &st.canonical_bytes()).unwrap();
    serde_json::to_vec_pretty(&ApprovalFile::ssh(st.clone(), sig.to_pem(LineEnding::LF).unwrap())).unwrap()
}

fn main() {
    // Capsule container, manifest, Sigstore bundle.
    let capsule = edge_fuzz::capsule();
    let bundle = edge_fuzz::capsule_key().sign_capsule(&capsule);
    let keyless = read("tests/data/sigstore/conda-attestation.sigstore.json");
    put("capsule_container", "unsigned.capsule", &capsule.to_bytes());
    put("capsule_container", "signed.capsule", &capsule.clone().with_bundle(bundle.clone()).to_bytes());
    put("capsule_container", "keyless-bundle.capsule", &capsule.clone().with_bundle(keyless.clone()).to_bytes());
    put("manifest", "canonical.json", &edge_fuzz::manifest_bytes());
    for name in ["cleanup", "config-drift", "cert-expiry"] {
        put("manifest", &format!("{name}.toml"), &read(&format!("examples/capsules/{name}/capsule.toml")));
    }
    put("sigstore_bundle", "keyed.sigstore.json", &bundle);
    put("sigstore_bundle", "keyless.sigstore.json", &keyless);
    assert!(
        edge_core::signature::verify_manifest_signature(&edge_fuzz::manifest_bytes(), &bundle, &edge_fuzz::TRUSTED)
            .is_ok()
    );

    // Approvals.
    let ok = approval(&statement("alice", Verdict::Approve, None), NAMESPACE);
    let binding = edge_fuzz::binding();
    edge_core::approval::verify_approval(&ok, &edge_fuzz::REGISTRY, &binding, edge_fuzz::NOW, 300).unwrap();
    put("approval", "approve", &ok);
    put(
        "approval",
        "reject-comment",
        &approval(&statement("alice", Verdict::Reject, Some("not during the freeze ✋")), NAMESPACE),
    );
    put("approval", "git-namespace", &approval(&statement("alice", Verdict::Approve, None), "git"));
    // A FIDO (sk-ssh-ed25519) signature from the test data, on an approval statement.
    let sk = String::from_utf8(read("tests/data/ssh/sshsig_sk_ed25519")).unwrap();
    let file = ApprovalFile::ssh(statement("bob", Verdict::Approve, None), sk);
    put("approval", "sk-ed25519", &serde_json::to_vec(&file).unwrap());
    // A passkey (WebAuthn EdDSA) approval.
    let st = statement("alice", Verdict::Approve, None);
    let passkey =
        serde_json::to_vec_pretty(&ApprovalFile::passkey(st.clone(), edge_fuzz::passkey_assertion(&st))).unwrap();
    edge_core::approval::verify_approval(&passkey, &edge_fuzz::REGISTRY, &binding, edge_fuzz::NOW, 300).unwrap();
    put("approval", "passkey-eddsa", &passkey);

    // Evidence bundle: a synthetic, fully valid log of three runs after a
    // runner's start, labelled with each format (the same records,
    // artifacts and checkpoint: for records written since v2 the formats
    // ask for the same artifacts).
    use edge_evidence::bundle::{self, Format};
    let spec = edge_evidence::synth::Spec { runs: 3, runner_started: true, ..Default::default() };
    let synth = edge_evidence::synth::bundle(edge_fuzz::ORIGIN, &spec);
    put("evidence_bundle", "full-3-runs", &synth.bundle);
    let b = bundle::parse(&synth.bundle).unwrap();
    let all: Vec<_> = b.artifacts.iter().map(|(d, a)| (*d, a.as_slice())).collect();
    let header = bundle::Header { format: Format::V1, ..b.header.clone() };
    put("evidence_bundle", "full-3-runs-v1", &bundle::write(&header, &b.records, &all, b.checkpoint).unwrap());
    std::fs::write(root().join("fuzz/fixtures/evidence.vkey"), format!("{}\n", synth.vkey)).unwrap();

    // Signed notes, keys, checkpoints.
    let signer = edge_fuzz::note_signer();
    let leaves: Vec<merkle::Hash> = [b"{\"seq\":0}".as_slice(), edge_fuzz::RECEIPT_LEAF, b"{\"seq\":2}"]
        .iter()
        .map(|l| merkle::leaf_hash(l))
        .collect();
    let cp = Checkpoint { origin: edge_fuzz::ORIGIN.into(), size: 3, root: merkle::root(&leaves) };
    let note = signer.sign(&cp.text()).unwrap();
    put("signed_note", "checkpoint.note", note.as_bytes());
    put("signed_note", "checkpoint.body", cp.text().as_bytes());
    put("signed_note", "vkey", signer.verifier().to_vkey().as_bytes());
    if let Ok(v) = std::fs::read(root().join("../shared/vectors/signed-notes.json")) {
        let v: serde_json::Value = serde_json::from_slice(&v).unwrap();
        let s = |p: &str| v.pointer(p).and_then(|x| x.as_str()).unwrap().to_owned();
        put("signed_note", "c2sp-example.note", s("/c2sp_example/note").as_bytes());
        let go =
            format!("{}\n{}{}", s("/go_note/text"), s("/go_note/signature_line"), s("/go_note/other_signature_line"));
        put("signed_note", "go.note", go.as_bytes());
        put("signed_note", "go.skey", s("/go_note/skey").as_bytes());
    } else {
        eprintln!("note: ../shared/vectors is missing, the published note vectors are not seeded");
    }

    // Receipts.
    let proof = TlogProof { index: 1, hashes: merkle::inclusion_proof(&leaves, 1), checkpoint: note.clone() };
    let text = proof.encode();
    let leaf = merkle::leaf_hash(edge_fuzz::RECEIPT_LEAF);
    let hashes: Vec<Vec<u8>> = proof.hashes.iter().map(|h| h.to_vec()).collect();
    merkle::verify_inclusion(1, 3, &leaf, &hashes, &cp.root).unwrap();
    put("tlog_proof", "receipt", text.as_bytes());
    let single = Checkpoint { origin: edge_fuzz::ORIGIN.into(), size: 1, root: leaf };
    let one = TlogProof { index: 0, hashes: vec![], checkpoint: signer.sign(&single.text()).unwrap() };
    put("tlog_proof", "receipt-single", one.encode().as_bytes());

    // Backstage: the test catalog, file by file and as one multi-file input
    // (files separated by NUL, as the target splits them).
    let dir = root().join("tests/data/backstage");
    let mut files = Vec::new();
    let mut stack = vec![dir.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() { stack.push(p) } else { files.push(p) }
        }
    }
    files.sort();
    let mut all = Vec::new();
    for f in &files {
        let rel = f.strip_prefix(&dir).unwrap().to_string_lossy().replace('/', "-");
        let bytes = std::fs::read(f).unwrap();
        put("backstage", &rel, &bytes);
        if !all.is_empty() {
            all.push(0);
        }
        all.extend_from_slice(&bytes);
    }
    put("backstage", "whole-catalog", &all);

    // Runner config: the example (resolved against fuzz/fixtures/runner) and a
    // keyed, policy-less variant.
    put("runner_config", "example.toml", &read("examples/runner.toml"));
    put(
        "runner_config",
        "signers.toml",
        b"[runner]\nname = \"runner-1\"\n\n[[signers]]\nname = \"agent\"\npublic_key = \"keys/agent.pub\"\n\n\
[[signers]]\nname = \"ci\"\nidentity = \"https://github.com/org/repo/.github/workflows/release.yml@refs/heads/main\"\n\
issuer = \"https://token.actions.githubusercontent.com\"\n\n[sigstore]\ntrusted_root = \"trusted_root.json\"\n\n\
[mounts.logs]\npath = \"sample/logs\"\nwritable = true\n\n[env]\nLOG_LEVEL = \"info\"\n\n\
[grant]\nimports = [\"wasi:filesystem/types\", \"wasi:cli/stdout\"]\n",
    );
    let fixtures = root().join("fuzz/fixtures/runner");
    std::fs::create_dir_all(fixtures.join("keys")).unwrap();
    std::fs::write(fixtures.join("keys/agent.pub"), edge_fuzz::capsule_key().public_key_pem()).unwrap();
    std::fs::create_dir_all(fixtures.join("approvers")).unwrap();
    std::fs::write(
        fixtures.join("approvers/allowed_signers"),
        format!("alice@bank.example {}\n", edge_fuzz::approver_key().public_key().to_openssh().unwrap()),
    )
    .unwrap();
    println!("corpus written under {}", root().join("fuzz/corpus").display());
}
