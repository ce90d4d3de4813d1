//! Passkey approval benchmark: `cargo bench -p edge-core --bench passkey`.
//!
//! Offline verification of one passkey approval, as the runner and
//! `edge-verify` do it: the approval file is parsed, the approver's
//! credential is looked up in a registry of 100 passkeys (50 principals, two
//! each), the WebAuthn assertion is checked (signature, client data,
//! authenticator data) and the statement's binding and time. ES256 (ECDSA
//! P-256, DER) and EdDSA (Ed25519) separately. Target: median ≤ 200 µs.

use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use edge_core::Sha256Digest;
use edge_core::admission::{Grant, GrantedMount, Limits};
use edge_core::approval::{
    ApprovalFile, Binding, PASSKEYS_SCHEMA, PasskeyAlgorithm, PasskeyAssertion, PasskeyEntry, PasskeysFile, Registry,
    STATEMENT_SCHEMA, Statement, Verdict, statement_challenge, verify_approval,
};

const ORIGIN: &str = "https://approvals.bank.example";
const RP: &str = "approvals.bank.example";
const TARGET: Duration = Duration::from_micros(200);

enum Key {
    Es256(p256::ecdsa::SigningKey),
    EdDsa(ed25519_dalek::SigningKey),
}

impl Key {
    fn new(i: u8, es256: bool) -> Self {
        if es256 {
            Key::Es256(p256::ecdsa::SigningKey::from_slice(&[i + 1; 32]).unwrap())
        } else {
            Key::EdDsa(ed25519_dalek::SigningKey::from_bytes(&[i + 1; 32]))
        }
    }

    fn entry(&self, principal: &str, id: &[u8]) -> PasskeyEntry {
        let (algorithm, public_key) = match self {
            Key::Es256(k) => (PasskeyAlgorithm::Es256, k.verifying_key().to_encoded_point(false).as_bytes().to_vec()),
            Key::EdDsa(k) => (PasskeyAlgorithm::EdDsa, k.verifying_key().to_bytes().to_vec()),
        };
        PasskeyEntry {
            algorithm,
            credential_id: B64URL.encode(id),
            enrolled_at: 1_795_000_000,
            label: None,
            origin: ORIGIN.into(),
            principal: principal.into(),
            public_key: B64URL.encode(public_key),
            rp_id: RP.into(),
        }
    }

    fn sign(&self, message: &[u8]) -> Vec<u8> {
        match self {
            Key::Es256(k) => {
                use p256::ecdsa::signature::Signer as _;
                let sig: p256::ecdsa::DerSignature = k.sign(message);
                sig.as_bytes().to_vec()
            }
            Key::EdDsa(k) => {
                use ed25519_dalek::Signer as _;
                k.sign(message).to_bytes().to_vec()
            }
        }
    }
}

/// A browser's assertion over `st` by `key` (credential `id`).
fn assertion(key: &Key, id: &[u8], st: &Statement) -> PasskeyAssertion {
    let client = format!(
        r#"{{"type":"webauthn.get","challenge":"{}","origin":"{ORIGIN}","crossOrigin":false}}"#,
        B64URL.encode(statement_challenge(st))
    );
    let mut auth = Sha256Digest::of(RP.as_bytes()).0.to_vec();
    auth.push(0x05);
    auth.extend(42u32.to_be_bytes());
    let mut signed = auth.clone();
    signed.extend(Sha256Digest::of(client.as_bytes()).0);
    PasskeyAssertion {
        authenticator_data: B64URL.encode(&auth),
        client_data_json: B64URL.encode(client.as_bytes()),
        credential_id: B64URL.encode(id),
        signature: B64URL.encode(key.sign(&signed)),
    }
}

fn main() {
    let iters: usize = std::env::var("BENCH_ITERS").ok().and_then(|s| s.parse().ok()).unwrap_or(5_000);
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
    // 50 principals with two passkeys each, one ES256 and one EdDSA.
    let mut entries = Vec::new();
    let mut roles = String::from("[principals]\n");
    let mut keys = Vec::new();
    for i in 0..50u8 {
        let who = format!("approver{i}@bank.example");
        roles.push_str(&format!("\"{who}\" = [\"sre\"]\n"));
        for es256 in [true, false] {
            let key = Key::new(i, es256);
            let id = vec![i, u8::from(es256), 0xc7, 0x1d];
            entries.push(key.entry(&who, &id));
            keys.push((who.clone(), id, key));
        }
    }
    let text = serde_json::to_string_pretty(&PasskeysFile { credentials: entries, schema: PASSKEYS_SCHEMA.into() })
        .expect("passkeys");
    let registry = Registry::parse("", "allowed_signers", &roles, "roles.toml")
        .and_then(|r| r.with_passkeys(&text, "passkeys.json"))
        .expect("registry");

    println!("edge-core passkey approval benchmark ({iters} verifications each, 100 registered passkeys)");
    let mut all_met = true;
    for (name, es256) in [("ES256 (P-256)", true), ("EdDSA (Ed25519)", false)] {
        // The last principal's credential: the lookup walks the whole registry.
        let (who, id, key) = keys.iter().rev().find(|(_, id, _)| id[1] == u8::from(es256)).expect("a key");
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
            comment: Some("checked the diff".into()),
            approver: who.clone(),
            issued_at: now - 60,
            expires_at: now + 3600,
            nonce: "5a".repeat(32),
        };
        let a = assertion(key, id, &st);
        let file = serde_json::to_vec_pretty(&ApprovalFile::passkey(st, a)).expect("approval");
        let mut times = Vec::with_capacity(iters);
        for _ in 0..iters {
            let t = Instant::now();
            let v = verify_approval(std::hint::black_box(&file), &registry, &binding, now, 300).expect("verifies");
            times.push(t.elapsed());
            assert_eq!(v.counter, Some(42));
        }
        times.sort();
        let (median, p99) = (times[times.len() / 2], times[times.len() * 99 / 100]);
        let met = median <= TARGET;
        all_met &= met;
        println!(
            "  one {name:<16} approval: median {:>7.1} µs, p99 {:>7.1} µs   (target median <= {} µs: {})",
            median.as_secs_f64() * 1e6,
            p99.as_secs_f64() * 1e6,
            TARGET.as_micros(),
            if met { "met" } else { "MISSED" }
        );
    }
    if !all_met {
        println!("target missed");
    }
}
