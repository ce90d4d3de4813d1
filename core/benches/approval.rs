//! Approval benchmark: `cargo bench -p edge-core --bench approval`.
//!
//! Verifies a 3-of-5 quorum: five approval files (five principals, five
//! Ed25519 keys) are each parsed and verified (registry lookup, SSHSIG,
//! binding, time), then the quorum is evaluated. Target: median ≤ 200 µs.
//! Measured at the execution gate (each approval's signature was checked
//! when it arrived) and from nothing; beside them, in the same loop, the
//! five spread over the cores and one approval verified on its own.

use std::time::{Duration, Instant};

// The allocator of edge-runner and edge-verify, which verify approvals.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

use edge_core::Sha256Digest;
use edge_core::admission::{Grant, GrantedMount, Limits};
use edge_core::approval::quorum::{self, Subject};
use edge_core::approval::{
    ApprovalFile, Binding, NAMESPACE, Registry, STATEMENT_SCHEMA, Statement, Verdict, verify_approvals,
};
use edge_core::policy::TierRequirement;
use ssh_key::private::Ed25519Keypair;
use ssh_key::{HashAlg, LineEnding, PrivateKey};

fn main() {
    let iters: usize = std::env::var("BENCH_ITERS").ok().and_then(|s| s.parse().ok()).unwrap_or(5_000);
    // A new key's second check, which makes its table, timed.
    let making_a_table = |seed: u8| {
        let sk = ed25519_dalek::SigningKey::from_bytes(&[seed; 32]);
        let msg = [7u8; 600];
        let sig = ed25519_dalek::Signer::sign(&sk, &msg);
        let key = edge_core::strict::StrongKey::new(sk.verifying_key()).unwrap();
        key.verify_strict(&msg, &sig).unwrap();
        let t = Instant::now();
        key.verify_strict(&msg, &sig).unwrap();
        let took = t.elapsed();
        assert!(key.has_table());
        took
    };
    // Before anything else checks twice: the first key in the process to
    // make its table makes the base point's too (once per process).
    let first_table = making_a_table(99);
    let now = 1_795_500_000;
    let binding = Binding {
        proposal: "p-1".into(),
        capsule: Sha256Digest::of(b"capsule"),
        plan: Sha256Digest::of(b"plan"),
        policy: Sha256Digest::of(b"policy"),
        runner: "runner".into(),
        tier: 2,
        grant: Grant {
            endpoints: vec![],
            mounts: vec![GrantedMount { name: "config".into(), writable: true }],
            env: vec![],
            imports: Default::default(),
            limits: Limits::DEFAULT,
        },
        max_age_secs: 7200,
    };
    let mut signers = String::new();
    let mut roles = String::from("[principals]\n");
    let mut files = Vec::new();
    for i in 0..5u8 {
        let key = PrivateKey::from(Ed25519Keypair::from_seed(&[i + 1; 32]));
        let who = format!("approver{i}@bank.example");
        signers.push_str(&format!("{who} {}\n", key.public_key().to_openssh().unwrap()));
        roles.push_str(&format!("\"{who}\" = [\"sre\"]\n"));
        let st = Statement {
            schema: STATEMENT_SCHEMA.into(),
            proposal: binding.proposal.clone(),
            capsule: binding.capsule,
            plan: binding.plan,
            policy: binding.policy,
            runner: binding.runner.clone(),
            tier: binding.tier,
            grant: binding.grant.clone(),
            decision: Verdict::Approve,
            comment: None,
            approver: who,
            issued_at: now - 60,
            expires_at: now + 3600,
            nonce: format!("{i:02x}").repeat(32),
        };
        let sig = key.sign(NAMESPACE, HashAlg::Sha512, &st.canonical_bytes()).unwrap();
        let file = ApprovalFile::ssh(st, sig.to_pem(LineEnding::LF).unwrap());
        files.push(serde_json::to_vec(&file).unwrap());
    }
    let registry = Registry::parse(&signers, "allowed_signers", &roles, "roles.toml").unwrap();
    let requirement = TierRequirement {
        tier: 2,
        approvals: 3,
        roles: vec!["sre".into()],
        distinct: true,
        max_age_secs: 7200,
        expires_after_secs: None,
        allow_writes: true,
        allow_endpoints: false,
        max_memory_mib: None,
        max_cpu_ms: None,
        max_wall_ms: None,
    };
    let subject = Subject {
        proposal: "p-1",
        capsule: binding.capsule,
        plan: binding.plan,
        policy: binding.policy,
        signer: "agent",
    };

    // Measurements interleaved so that each sees the same machine:
    // - the quorum from nothing, as `verify_approvals` checks it (a handful
    //   on the calling thread), with a registry that has seen none of the
    //   five signatures: five strict Ed25519 checks, by keys that have
    //   checked before and so hold their tables (`strict::StrongKey`; the
    //   cost of making one is printed at the end);
    // - the quorum at the execution gate, where each approval was checked
    //   when it arrived (`POST …/approvals` does) and its signature is
    //   remembered (`strict::VerifiedSignatures`): parse, registry,
    //   revocation, validity, binding and time are all checked again;
    // - the five from nothing spread over the cores (what `verify_approvals`
    //   does for many), and one approval from nothing alone (not a batch
    //   divided by five).
    let fresh = || Registry { verified: Default::default(), ..registry.clone() };
    for f in &files {
        edge_core::approval::verify_approval(f, &registry, &binding, now, 300).unwrap();
    }
    let mut times = Vec::with_capacity(iters);
    let mut gate = Vec::with_capacity(iters);
    let mut parallel = Vec::with_capacity(iters);
    let mut single = Vec::with_capacity(iters);
    // The signature check alone: ed25519-dalek's `verify_strict`, and the
    // same verdict from a key checked once at load (`edge_core::strict`):
    // at its first check (double-base multiplication) and from its second
    // on (its table of multiples, made at the second check).
    let (ed_key, ed_msg) = (ed25519_dalek::SigningKey::from_bytes(&[9; 32]), [7u8; 600]);
    let ed_sig = ed25519_dalek::Signer::sign(&ed_key, &ed_msg);
    let ed_vk = ed_key.verifying_key();
    let strong = edge_core::strict::StrongKey::new(ed_vk).unwrap();
    let (mut dalek_strict, mut first_check, mut tabled) =
        (Vec::with_capacity(iters), Vec::with_capacity(iters), Vec::with_capacity(iters));
    // The quorum as the runner checks it, timed.
    let quorum = |registry: &Registry| {
        let t = Instant::now();
        let verified: Vec<_> =
            verify_approvals(&files, registry, &binding, now, 300).into_iter().map(Result::unwrap).collect();
        let result = quorum::evaluate(&verified, &requirement, registry, &subject);
        let took = t.elapsed();
        assert!(result.met.is_some());
        took
    };
    for i in 0..iters {
        let t = Instant::now();
        std::hint::black_box(ed_vk.verify_strict(&ed_msg, &ed_sig)).unwrap();
        dalek_strict.push(t.elapsed());
        let once = edge_core::strict::StrongKey::new(ed_vk).unwrap();
        let t = Instant::now();
        std::hint::black_box(once.verify_strict(&ed_msg, &ed_sig)).unwrap();
        first_check.push(t.elapsed());
        let t = Instant::now();
        std::hint::black_box(strong.verify_strict(&ed_msg, &ed_sig)).unwrap();
        tabled.push(t.elapsed());

        let cold = fresh();
        times.push(quorum(&cold));
        assert_eq!(cold.verified.len(), files.len());
        gate.push(quorum(&registry));

        let cold = fresh();
        let t = Instant::now();
        let verified: Vec<_> = {
            use rayon::prelude::*;
            files
                .par_iter()
                .with_min_len(1)
                .map(|f| edge_core::approval::verify_approval(f, &cold, &binding, now, 300).unwrap())
                .collect()
        };
        std::hint::black_box(quorum::evaluate(&verified, &requirement, &cold, &subject));
        parallel.push(t.elapsed());

        let cold = fresh();
        let t = Instant::now();
        std::hint::black_box(
            edge_core::approval::verify_approval(&files[i % files.len()], &cold, &binding, now, 300).unwrap(),
        );
        single.push(t.elapsed());
    }
    let median = |mut v: Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    let (from_nothing, at_gate, one, spread) = (median(times), median(gate), median(single), median(parallel));
    let target = |d: Duration| if d <= Duration::from_micros(200) { "met" } else { "MISSED" };
    println!("edge-core approval benchmark ({iters} quorums, medians; one core unless said)");
    // What decides the figures most from one host to the next: which of
    // curve25519-dalek 5's back ends this CPU runs (docs/approvals.md).
    println!("  field arithmetic: {}", dalek_backend());
    // The target was measured from nothing: that line is the one
    // compared with it; the gate's is the latency once approvals arrived.
    println!(
        "  3-of-5 quorum at the gate, each approval checked on arrival {:>7.1} µs   (latency at the gate)",
        at_gate.as_secs_f64() * 1e6
    );
    println!(
        "  3-of-5 quorum from nothing: 5 approvals + evaluate         {:>7.1} µs   (target <= 200 µs: {})",
        from_nothing.as_secs_f64() * 1e6,
        target(from_nothing)
    );
    println!("  the five from nothing spread over the cores (rayon)          {:>7.1} µs", spread.as_secs_f64() * 1e6);
    println!("  one approval from nothing (parse, registry, SSHSIG, binding) {:>7.1} µs", one.as_secs_f64() * 1e6);
    assert!(strong.has_table() && registry.signers.entries.iter().all(|s| s.ed25519.has_table()));
    let (d, once, k) = (median(dalek_strict), median(first_check), median(tabled));
    println!(
        "  Ed25519 strict check: ed25519-dalek {:>5.1} µs; a key checked at load: first check {:>5.1} µs ({:.2}×), \
         with its table {:>5.1} µs ({:.2}×)",
        d.as_secs_f64() * 1e6,
        once.as_secs_f64() * 1e6,
        once.as_secs_f64() / d.as_secs_f64(),
        k.as_secs_f64() * 1e6,
        k.as_secs_f64() / d.as_secs_f64()
    );
    // What a key's table costs once: its second check, which makes it.
    let making: Vec<Duration> = (0..50u8).map(|i| making_a_table(i.wrapping_add(100))).collect();
    println!(
        "  a key's second check, which makes its table (once per key)   {:>7.1} µs",
        median(making).as_secs_f64() * 1e6
    );
    println!(
        "  the first such check in a process, with the base point's      {:>7.1} µs   (once per process)",
        first_table.as_secs_f64() * 1e6
    );
}

/// The code curve25519-dalek 5 picks at run time on this CPU (built with
/// `--cfg curve25519_dalek_backend="avx512"`, `.cargo/config.toml`).
fn dalek_backend() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512ifma") && std::arch::is_x86_feature_detected!("avx512vl") {
            return "AVX-512 IFMA";
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            return "AVX2 (no AVX-512 IFMA on this CPU: slower, docs/approvals.md)";
        }
    }
    "portable (no AVX2)"
}
