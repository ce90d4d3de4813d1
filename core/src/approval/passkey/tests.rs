//! Passkey approvals, with real assertions: P-256 and Ed25519 keys sign
//! authenticator data and client data JSON as an authenticator and a browser
//! write them.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use ssh_key::{HashAlg, LineEnding};

use super::*;
use crate::approval::quorum::{self, Outcome, Subject};
use crate::approval::tests::{NOW, binding, key, line, statement};
use crate::approval::{ApprovalFile, Binding, NAMESPACE, Registry, Verdict, VerifiedApproval, verify_approval};
use crate::digest::Sha256Digest;
use crate::policy::TierRequirement;

const ORIGIN: &str = "https://console.example:8443";
const RP: &str = "console.example";
const UP_UV: u8 = FLAG_UP | FLAG_UV;

/// A software authenticator holding one credential.
struct Authenticator {
    key: Key,
    id: Vec<u8>,
}

enum Key {
    Es256(p256::ecdsa::SigningKey),
    EdDsa(ed25519_dalek::SigningKey),
}

/// How to make one assertion; [`Make::default`] is what a browser and an
/// authenticator produce for the console.
struct Make<'a> {
    kind: &'a str,
    origin: &'a str,
    cross_origin: bool,
    rp_id: &'a str,
    flags: u8,
    counter: u32,
}

impl Default for Make<'_> {
    fn default() -> Self {
        Make { kind: "webauthn.get", origin: ORIGIN, cross_origin: false, rp_id: RP, flags: UP_UV, counter: 7 }
    }
}

impl Authenticator {
    fn es256(seed: u8) -> Self {
        let key = p256::ecdsa::SigningKey::from_slice(&[seed; 32]).unwrap();
        Self { key: Key::Es256(key), id: vec![seed, 0xe5, 0x25, 0x06] }
    }

    fn eddsa(seed: u8) -> Self {
        Self { key: Key::EdDsa(ed25519_dalek::SigningKey::from_bytes(&[seed; 32])), id: vec![seed, 0xed, 0xd5, 0xa0] }
    }

    fn public_key(&self) -> Vec<u8> {
        match &self.key {
            Key::Es256(k) => k.verifying_key().to_encoded_point(false).as_bytes().to_vec(),
            Key::EdDsa(k) => k.verifying_key().to_bytes().to_vec(),
        }
    }

    fn entry(&self, principal: &str) -> PasskeyEntry {
        PasskeyEntry {
            algorithm: match self.key {
                Key::Es256(_) => PasskeyAlgorithm::Es256,
                Key::EdDsa(_) => PasskeyAlgorithm::EdDsa,
            },
            credential_id: B64URL.encode(&self.id),
            enrolled_at: NOW - 86_400,
            label: Some(format!("{principal}'s laptop")),
            origin: ORIGIN.into(),
            principal: principal.into(),
            public_key: B64URL.encode(self.public_key()),
            rp_id: RP.into(),
        }
    }

    fn fingerprint(&self) -> String {
        passkey_fingerprint(&self.public_key())
    }

    /// Sign `authenticator_data || SHA-256(client_data_json)`.
    fn sign(&self, message: &[u8]) -> Vec<u8> {
        match &self.key {
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

    fn assert(&self, challenge: &[u8; 32], m: &Make<'_>) -> PasskeyAssertion {
        let client = format!(
            r#"{{"type":"{}","challenge":"{}","origin":"{}","crossOrigin":{}}}"#,
            m.kind,
            B64URL.encode(challenge),
            m.origin,
            m.cross_origin
        );
        self.assert_raw(client.as_bytes(), m)
    }

    fn assert_raw(&self, client: &[u8], m: &Make<'_>) -> PasskeyAssertion {
        let mut auth = Sha256::digest(m.rp_id.as_bytes()).to_vec();
        auth.push(m.flags);
        auth.extend(m.counter.to_be_bytes());
        let mut signed = auth.clone();
        signed.extend(Sha256::digest(client));
        PasskeyAssertion {
            authenticator_data: B64URL.encode(&auth),
            client_data_json: B64URL.encode(client),
            credential_id: B64URL.encode(&self.id),
            signature: B64URL.encode(self.sign(&signed)),
        }
    }

    /// An approval file for `st`, signed as `m` says.
    fn approve(&self, st: &Statement, m: &Make<'_>) -> Vec<u8> {
        serde_json::to_vec(&ApprovalFile::passkey(st.clone(), self.assert(&statement_challenge(st), m))).unwrap()
    }
}

fn passkeys_json(entries: Vec<PasskeyEntry>) -> String {
    serde_json::to_string_pretty(&PasskeysFile { credentials: entries, schema: PASSKEYS_SCHEMA.into() }).unwrap()
}

/// alice: a passkey (ES256) and an SSH key; bob: a passkey (EdDSA) only;
/// carol: an SSH key only.
fn registry(alice: &Authenticator, bob: &Authenticator, roles_extra: &str) -> Registry {
    let signers = format!("{}{}", line("alice@bank", &key(1), ""), line("carol@bank", &key(3), ""));
    let roles = format!("[principals]\n\"alice@bank\" = [\"sre\"]\n\"bob@bank\" = [\"sre\"]\n{roles_extra}");
    Registry::parse(&signers, "allowed_signers", &roles, "roles.toml")
        .unwrap()
        .with_passkeys(&passkeys_json(vec![alice.entry("alice@bank"), bob.entry("bob@bank")]), "passkeys.json")
        .unwrap()
}

fn check(bytes: &[u8], reg: &Registry) -> Result<VerifiedApproval, ApprovalError> {
    verify_approval(bytes, reg, &binding(), NOW, 300)
}

#[test]
fn es256_and_eddsa_approvals_verify() {
    let (alice, bob) = (Authenticator::es256(1), Authenticator::eddsa(2));
    let reg = registry(&alice, &bob, "");
    for (who, a) in [("alice@bank", &alice), ("bob@bank", &bob)] {
        let st = statement(&binding(), who, Verdict::Approve);
        let v = check(&a.approve(&st, &Make { counter: 41, ..Make::default() }), &reg).unwrap();
        assert_eq!((v.principal.as_str(), v.verdict, v.counter), (who, Verdict::Approve, Some(41)));
        assert_eq!(v.key, a.fingerprint());
        assert!(v.key.starts_with("SHA256:") && !v.key.ends_with('='), "{}", v.key);
        // A browser adds what it likes to the client data; only our fields count.
        let client = format!(
            r#"{{"type":"webauthn.get","challenge":"{}","origin":"{ORIGIN}","crossOrigin":false,"topOrigin":"x","other_keys_can_be_added_here":"do not compare clientDataJSON against a template"}}"#,
            B64URL.encode(statement_challenge(&st))
        );
        let file = ApprovalFile::passkey(st.clone(), a.assert_raw(client.as_bytes(), &Make::default()));
        assert!(check(&serde_json::to_vec(&file).unwrap(), &reg).is_ok());
        // Without `crossOrigin` at all (older browsers).
        let client = format!(
            r#"{{"type":"webauthn.get","challenge":"{}","origin":"{ORIGIN}"}}"#,
            B64URL.encode(statement_challenge(&st))
        );
        let file = ApprovalFile::passkey(st, a.assert_raw(client.as_bytes(), &Make::default()));
        assert!(check(&serde_json::to_vec(&file).unwrap(), &reg).is_ok());
    }
}

/// Authenticators do not normalise ECDSA signatures: a high-S signature is as
/// valid as the low-S one.
#[test]
fn es256_high_s_signatures_are_accepted() {
    let (alice, bob) = (Authenticator::es256(1), Authenticator::eddsa(2));
    let reg = registry(&alice, &bob, "");
    let st = statement(&binding(), "alice@bank", Verdict::Approve);
    let mut file = ApprovalFile::passkey(st.clone(), alice.assert(&statement_challenge(&st), &Make::default()));
    let der = B64URL.decode(&file.passkey.as_ref().unwrap().signature).unwrap();
    let sig = p256::ecdsa::Signature::from_der(&der).unwrap();
    let (r, s) = sig.split_scalars();
    let flipped = p256::ecdsa::Signature::from_scalars(r, -s).unwrap();
    assert_ne!(flipped, sig);
    file.passkey.as_mut().unwrap().signature = B64URL.encode(flipped.to_der().as_bytes());
    check(&serde_json::to_vec(&file).unwrap(), &reg).unwrap();
}

/// Each refusal, with its precise reason.
#[test]
fn every_passkey_refusal_reason() {
    let (alice, bob) = (Authenticator::es256(1), Authenticator::eddsa(2));
    let reg = registry(&alice, &bob, "");
    let good = statement(&binding(), "alice@bank", Verdict::Approve);
    let code = |bytes: &[u8], reg: &Registry| check(bytes, reg).unwrap_err().reason_code();
    let with = |a: &Authenticator, m: Make<'_>| code(&a.approve(&good, &m), &reg);
    assert!(check(&alice.approve(&good, &Make::default()), &reg).is_ok());

    // Signed another statement, presents this one.
    let mut other = good.clone();
    other.comment = Some("edited after signing".into());
    let file = ApprovalFile::passkey(good.clone(), alice.assert(&statement_challenge(&other), &Make::default()));
    assert_eq!(code(&serde_json::to_vec(&file).unwrap(), &reg), "approval.wrong_challenge");
    // The authenticator did not verify the user (no PIN or biometric).
    assert_eq!(with(&alice, Make { flags: FLAG_UP, ..Make::default() }), "approval.no_user_verification");
    // Nor was the user present.
    assert_eq!(with(&alice, Make { flags: FLAG_UV, ..Make::default() }), "approval.no_user_presence");
    // Made on another page (a phishing site), or inside a cross-origin frame.
    assert_eq!(
        with(&alice, Make { origin: "https://console.example.evil", ..Make::default() }),
        "approval.wrong_origin"
    );
    assert_eq!(with(&alice, Make { origin: "https://console.example", ..Make::default() }), "approval.wrong_origin");
    assert_eq!(with(&alice, Make { cross_origin: true, ..Make::default() }), "approval.wrong_origin");
    // For another relying party.
    assert_eq!(with(&alice, Make { rp_id: "evil.example", ..Make::default() }), "approval.wrong_rp");
    // A registration, not an assertion.
    assert_eq!(with(&alice, Make { kind: "webauthn.create", ..Make::default() }), "approval.malformed");
    // A credential the registry does not hold for alice (bob's, or nobody's).
    assert_eq!(with(&bob, Make::default()), "approval.key_mismatch");
    assert_eq!(with(&Authenticator::es256(9), Make::default()), "approval.key_mismatch");
    let e = check(&bob.approve(&good, &Make::default()), &reg).unwrap_err().to_string();
    assert!(
        e.contains("signed with passkey credential ")
            && e.ends_with("which the passkeys file does not register for them"),
        "{e}"
    );
    // carol has only an SSH key; eve is nobody.
    let carol = statement(&binding(), "carol@bank", Verdict::Approve);
    assert_eq!(code(&alice.approve(&carol, &Make::default()), &reg), "approval.key_mismatch");
    let eve = statement(&binding(), "eve@bank", Verdict::Approve);
    assert_eq!(code(&alice.approve(&eve, &Make::default()), &reg), "approval.unknown_approver");
    // No passkeys file in use: carol's passkey approval (her principal has
    // an SSH key) is refused, naming the missing file, not a file that
    // does not register her credential.
    let signers = line("carol@bank", &key(3), "");
    let ssh_only = Registry::parse(&signers, "allowed_signers", "[principals]\n", "roles.toml").unwrap();
    let e = check(&alice.approve(&carol, &Make::default()), &ssh_only).unwrap_err();
    assert_eq!(e.reason_code(), "approval.key_mismatch");
    assert!(e.to_string().contains("but no passkeys file is in use, so no passkey can count"), "{e}");
    // Nor does an empty passkeys file hide it: it is in use, and does not
    // register the credential.
    let empty = ssh_only.clone().with_passkeys(&passkeys_json(vec![]), "passkeys.json").unwrap();
    let e = check(&alice.approve(&carol, &Make::default()), &empty).unwrap_err().to_string();
    assert!(e.ends_with("which the passkeys file does not register for them"), "{e}");
    // A revoked passkey.
    let revoked = registry(&alice, &bob, &format!("[revoked]\nkeys = [\"{}\"]\n", alice.fingerprint()));
    assert_eq!(code(&alice.approve(&good, &Make::default()), &revoked), "approval.revoked_key");
    // Bit flips: in the signed counter, in the client data, in the signature.
    let tamper = |edit: &dyn Fn(&mut PasskeyAssertion)| {
        let mut file: ApprovalFile = serde_json::from_slice(&alice.approve(&good, &Make::default())).unwrap();
        edit(file.passkey.as_mut().unwrap());
        code(&serde_json::to_vec(&file).unwrap(), &reg)
    };
    let flip = |field: &mut String, at: usize| {
        let mut b = B64URL.decode(&*field).unwrap();
        b[at] ^= 0x01;
        *field = B64URL.encode(b);
    };
    assert_eq!(tamper(&|a| flip(&mut a.authenticator_data, 36)), "approval.bad_signature");
    assert_eq!(tamper(&|a| flip(&mut a.authenticator_data, 32)), "approval.bad_signature");
    assert_eq!(tamper(&|a| flip(&mut a.client_data_json, 10)), "approval.bad_signature");
    assert_eq!(tamper(&|a| flip(&mut a.signature, 40)), "approval.bad_signature");
    // Malformed DER: a trailing byte, a truncated signature, a raw (r || s) one.
    let der = |edit: fn(&mut Vec<u8>)| {
        tamper(&|a| {
            let mut b = B64URL.decode(&a.signature).unwrap();
            edit(&mut b);
            a.signature = B64URL.encode(b);
        })
    };
    assert_eq!(der(|b| b.push(0)), "approval.bad_signature");
    assert_eq!(der(|b| b.truncate(b.len() - 1)), "approval.bad_signature");
    assert_eq!(der(|b| *b = vec![0x11; 64]), "approval.bad_signature");
    // BER, not DER: a long-form length, a non-minimal integer.
    assert_eq!(der(|b| b.splice(1..1, [0x81]).for_each(drop)), "approval.bad_signature");
    assert_eq!(
        der(|b| {
            b[1] += 1;
            b[3] += 1;
            b.insert(4, 0);
        }),
        "approval.bad_signature"
    );
    // Fields that are not base64url, or too large, or too short.
    assert_eq!(tamper(&|a| a.client_data_json.push('=')), "approval.malformed");
    assert_eq!(tamper(&|a| a.authenticator_data = B64URL.encode([0u8; 36])), "approval.malformed");
    assert_eq!(tamper(&|a| a.authenticator_data = B64URL.encode([0u8; 1025])), "approval.malformed");
    assert_eq!(tamper(&|a| a.signature = "A".repeat(200)), "approval.malformed");
    // Moved to another proposal: bound to p-2, presented for p-1.
    let mut b = binding();
    b.proposal = "p-2".into();
    let e = check(&alice.approve(&statement(&b, "alice@bank", Verdict::Approve), &Make::default()), &reg).unwrap_err();
    assert!(matches!(&e, ApprovalError::WrongBinding { field: "proposal", .. }), "{e:?}");
    // Expired.
    let mut expired = good.clone();
    expired.expires_at = NOW - 600;
    assert_eq!(code(&alice.approve(&expired, &Make::default()), &reg), "approval.expired");
    // Both proofs, or neither.
    let mut file: ApprovalFile = serde_json::from_slice(&alice.approve(&good, &Make::default())).unwrap();
    file.signature = Some("-----BEGIN SSH SIGNATURE-----".into());
    assert_eq!(code(&serde_json::to_vec(&file).unwrap(), &reg), "approval.malformed");
    file.signature = None;
    file.passkey = None;
    let e = check(&serde_json::to_vec(&file).unwrap(), &reg).unwrap_err();
    assert!(e.to_string().contains("exactly one of `signature` (SSHSIG) or `passkey`"), "{e}");
}

/// `verify_assertion` is public: called with a credential other than the
/// assertion's, it refuses by the credential id before any signature check
/// (an approval file reaches it only through `credential_for`, which
/// already picked the credential by that id).
#[test]
fn an_assertion_checked_against_another_credential_is_refused_by_its_id() {
    let (alice, bob) = (Authenticator::es256(1), Authenticator::eddsa(2));
    let reg = registry(&alice, &bob, "");
    let credential = |who: &'static str| reg.passkeys_of(who).next().expect("registered");
    let challenge = statement_challenge(&statement(&binding(), "bob@bank", Verdict::Approve));
    let by_bob = bob.assert(&challenge, &Make::default());
    assert!(verify_assertion(credential("bob@bank"), &challenge, &by_bob, &reg.verified).is_ok());
    let e = verify_assertion(credential("alice@bank"), &challenge, &by_bob, &reg.verified).unwrap_err();
    assert_eq!(e.reason_code(), "approval.key_mismatch", "{e}");
    assert!(e.to_string().starts_with("`alice@bank` signed with passkey credential "), "{e}");
}

/// Hostile text in refusals is cut short.
#[test]
fn refusals_truncate_hostile_text() {
    let (alice, bob) = (Authenticator::es256(1), Authenticator::eddsa(2));
    let reg = registry(&alice, &bob, "");
    let good = statement(&binding(), "alice@bank", Verdict::Approve);
    let long = format!("https://{}", "x".repeat(3000));
    let e = check(&alice.approve(&good, &Make { origin: &long, ..Make::default() }), &reg).unwrap_err();
    assert!(e.to_string().len() < 400, "{e}");
    let kind = "k".repeat(3000);
    let e = check(&alice.approve(&good, &Make { kind: &kind, ..Make::default() }), &reg).unwrap_err();
    assert!(e.to_string().len() < 300, "{e}");
}

/// The counter rule, ordered by issue time.
#[test]
fn counter_ledger_rule() {
    let mut l = CounterLedger::default();
    let ok = |l: &CounterLedger, t, c| l.check("k", t, c).is_ok();
    assert!(ok(&l, 100, 5));
    l.note("k", 100, 5);
    assert!(ok(&l, 200, 6), "later statement, larger counter");
    assert!(!ok(&l, 200, 5), "later statement, same counter");
    assert!(!ok(&l, 200, 4), "later statement, smaller counter: went back");
    assert!(ok(&l, 50, 4), "an earlier statement recorded later (another proposal's quorum completed after)");
    assert!(!ok(&l, 50, 5) && !ok(&l, 50, 9), "an earlier statement with a larger counter");
    assert!(ok(&l, 100, 6) && !ok(&l, 100, 5), "same issue time: any other counter");
    assert!(l.check("other", 50, 1).is_ok(), "other keys are independent");
    assert!(!ok(&l, 200, 0), "a counter that fell to 0");
    assert!(l.check("other", 1, 1).is_ok());
    l.note("k", 300, 9);
    assert!(ok(&l, 200, 6) && ok(&l, 200, 8), "between two recorded uses");
    assert!(!ok(&l, 200, 9) && !ok(&l, 200, 4), "not between them");
    let e = l.check("k", 400, 3).unwrap_err();
    assert_eq!(e.reason_code(), "approval.counter_regressed");
    assert!(matches!(e, ApprovalError::CounterWentBack { counter: 3, seen: 9, .. }), "{e:?}");
    assert!(e.to_string().contains("cloned authenticator"), "{e}");
    // Authenticators without a counter always send 0.
    let mut z = CounterLedger::default();
    z.note("k", 100, 0);
    z.note("k", 200, 0);
    assert!(z.check("k", 150, 0).is_ok() && z.check("k", 300, 0).is_ok() && z.check("k", 100, 0).is_ok());
    assert!(z.check("k", 300, 1).is_ok(), "a counter that starts counting");
    assert!(z.check("k", 150, 1).is_err(), "…but not before a later 0");
    // A batch is checked together with the ledger.
    let mut batch = CounterLedger::default();
    batch.note("k", 250, 7);
    assert!(l.check("k", 260, 7).is_ok());
    assert!(l.check_with(&batch, "k", 260, 7).is_err(), "the batch already used 7 at an earlier time");
    assert!(l.check_with(&batch, "k", 260, 8).is_ok());
    assert!(l.check_with(&batch, "k", 240, 7).is_err());
}

/// A cloned authenticator, end to end: verified approvals folded into the
/// ledger as the runner does.
#[test]
fn a_counter_going_backwards_is_caught_by_the_ledger() {
    let (alice, bob) = (Authenticator::es256(1), Authenticator::eddsa(2));
    let reg = registry(&alice, &bob, "");
    let mut ledger = CounterLedger::default();
    let mut first = statement(&binding(), "alice@bank", Verdict::Approve);
    first.issued_at = NOW - 600;
    let v = check(&alice.approve(&first, &Make { counter: 10, ..Make::default() }), &reg).unwrap();
    ledger.check(&v.key, v.issued_at, v.counter.unwrap()).unwrap();
    ledger.note(&v.key, v.issued_at, v.counter.unwrap());
    let mut second = statement(&binding(), "alice@bank", Verdict::Approve);
    second.nonce = "cd".repeat(32);
    let v = check(&alice.approve(&second, &Make { counter: 3, ..Make::default() }), &reg).unwrap();
    let e = ledger.check(&v.key, v.issued_at, v.counter.unwrap()).unwrap_err();
    assert_eq!(e.reason_code(), "approval.counter_regressed");
}

/// One person approving by SSH and by passkey counts once; with another
/// person the quorum is met.
#[test]
fn one_person_by_ssh_and_by_passkey_counts_once() {
    let (alice, bob) = (Authenticator::es256(1), Authenticator::eddsa(2));
    let reg = registry(&alice, &bob, "");
    let by_key = {
        let st = statement(&binding(), "alice@bank", Verdict::Approve);
        let sig = key(1).sign(NAMESPACE, HashAlg::Sha512, &st.canonical_bytes()).unwrap();
        serde_json::to_vec(&ApprovalFile::ssh(st, sig.to_pem(LineEnding::LF).unwrap())).unwrap()
    };
    let mut st = statement(&binding(), "alice@bank", Verdict::Approve);
    st.nonce = "cd".repeat(32);
    let by_passkey = alice.approve(&st, &Make::default());
    let mut st = statement(&binding(), "bob@bank", Verdict::Approve);
    st.nonce = "ef".repeat(32);
    let bobs = bob.approve(&st, &Make::default());
    let verified = |files: &[&Vec<u8>]| files.iter().map(|f| check(f, &reg).unwrap()).collect::<Vec<_>>();
    let requirement = TierRequirement {
        tier: 2,
        approvals: 2,
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
    let b: Binding = binding();
    let subject =
        Subject { proposal: &b.proposal, capsule: b.capsule, plan: b.plan, policy: b.policy, signer: "agent" };
    let alice_twice = verified(&[&by_key, &by_passkey]);
    assert_ne!(alice_twice[0].key, alice_twice[1].key, "two different keys");
    let r = quorum::evaluate(&alice_twice, &requirement, &reg, &subject);
    assert_eq!(r.outcome, Outcome::Insufficient { count: 1, required: 2 });
    assert!(r.approvals[1].note.starts_with("duplicate"), "{:?}", r.approvals);
    let r = quorum::evaluate(&verified(&[&by_key, &by_passkey, &bobs]), &requirement, &reg, &subject);
    assert_eq!(r.outcome, Outcome::Met { count: 2, required: 2, break_glass: false });
    // A passkey principal without a role is not eligible (passkeys register
    // credentials, not roles).
    let mut no_roles = reg.clone();
    no_roles.roles.remove("bob@bank");
    let r = quorum::evaluate(&verified(&[&by_key, &bobs]), &requirement, &no_roles, &subject);
    assert_eq!(r.outcome, Outcome::Insufficient { count: 1, required: 2 });
}

#[test]
fn passkeys_file_errors_name_the_entry_and_the_fix() {
    let (alice, bob) = (Authenticator::es256(1), Authenticator::eddsa(2));
    let good = || vec![alice.entry("alice@bank"), bob.entry("bob@bank")];
    assert_eq!(parse_passkeys(&passkeys_json(good()), "passkeys.json").unwrap().len(), 2);
    let fail = |text: String| parse_passkeys(&text, "passkeys.json").unwrap_err();
    let with = |edit: &dyn Fn(&mut PasskeyEntry)| {
        let mut entries = good();
        edit(&mut entries[1]);
        fail(passkeys_json(entries))
    };
    for (e, line, want) in [
        (with(&|e| e.principal = String::new()), 2, "`principal` is empty"),
        (with(&|e| e.credential_id = alice.entry("x").credential_id), 2, "listed twice"),
        (with(&|e| e.credential_id = "not base64!".into()), 2, "base64url"),
        (with(&|e| e.credential_id = String::new()), 2, "1 to 1023 bytes"),
        (with(&|e| e.credential_id = B64URL.encode([1u8; 1024])), 2, "1 to 1023 bytes"),
        (with(&|e| e.algorithm = PasskeyAlgorithm::Es256), 2, "65-byte uncompressed"),
        (with(&|e| e.public_key = B64URL.encode([0u8; 32])), 2, "weak"),
        (with(&|e| e.rp_id = String::new()), 2, "`rp_id` is empty"),
        (with(&|e| e.origin = "http://console.example".into()), 2, "https://host"),
        (with(&|e| e.origin = "https://console.example/approve".into()), 2, "without a path"),
        (with(&|e| e.origin = "https://".into()), 2, "https://host"),
        (fail(passkeys_json(good()).replace(PASSKEYS_SCHEMA, "v0")), 0, "use `https://edge-runner.dev/passkeys/v1`"),
        (fail(passkeys_json(good()).replacen("\"rp_id\"", "\"frobnicate\": 1, \"rp_id\"", 1)), 0, "frobnicate"),
    ] {
        assert_eq!((e.file.as_str(), e.line), ("passkeys.json", line), "{e}");
        assert!(e.to_string().contains(want), "want `{want}`: {e}");
    }
    let mut es = alice.entry("alice@bank");
    let mut point = B64URL.decode(&es.public_key).unwrap();
    point[64] ^= 1;
    es.public_key = B64URL.encode(point);
    assert!(fail(passkeys_json(vec![es])).to_string().contains("not a point on P-256"));
    // Loopback http for tests and development.
    for origin in ["http://localhost:8443", "http://127.0.0.1", "https://[::1]:8443", "https://console.example"] {
        let mut e = alice.entry("alice@bank");
        e.origin = origin.into();
        assert!(parse_passkeys(&passkeys_json(vec![e]), "p").is_ok(), "{origin}");
    }
}

#[test]
fn the_registry_digest_covers_the_passkeys_file_only_when_there_is_one() {
    let (alice, bob) = (Authenticator::es256(1), Authenticator::eddsa(2));
    let (signers, roles) = (line("alice@bank", &key(1), ""), "[principals]\n");
    let plain = Registry::parse(&signers, "s", roles, "r").unwrap();
    assert_eq!(plain.digest, Some(Sha256Digest::of(format!("{signers}\0{roles}").as_bytes())), "as before");
    assert!(plain.passkeys.is_empty() && plain.passkeys_text.is_none());
    let text = passkeys_json(vec![alice.entry("alice@bank"), bob.entry("bob@bank")]);
    let with = plain.clone().with_passkeys(&text, "p").unwrap();
    assert_eq!(with.digest, Some(Sha256Digest::of(format!("{signers}\0{roles}\0{text}").as_bytes())));
    assert_eq!(with.passkeys_text.as_deref(), Some(text.as_str()));
    assert_eq!(with.passkeys_of("bob@bank").map(|c| c.fingerprint.clone()).collect::<Vec<_>>(), [bob.fingerprint()]);
    assert_eq!(with.passkeys_of("bob").count(), 0, "principals match exactly");
}

/// The registry file and assertions round-trip through their serde forms.
#[test]
fn formats_round_trip() {
    let alice = Authenticator::es256(1);
    let text = passkeys_json(vec![alice.entry("alice@bank")]);
    let f: PasskeysFile = serde_json::from_str(&text).unwrap();
    assert!(text.contains("\"algorithm\": \"ES256\""), "{text}");
    assert_eq!(serde_json::to_string_pretty(&f).unwrap(), text);
    let st = statement(&binding(), "alice@bank", Verdict::Approve);
    let file = ApprovalFile::parse(&alice.approve(&st, &Make::default())).unwrap();
    let json = serde_json::to_string(&file).unwrap();
    assert!(json.starts_with("{\"statement\":") && json.contains("},\"passkey\":{\"authenticator_data\":"), "{json}");
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert!(v.get("signature").is_none(), "no SSHSIG field at all: {json}");
    assert_eq!(ApprovalFile::parse(json.as_bytes()).unwrap(), file);
    assert!(ApprovalFile::parse(json.replace("\"signature\":", "\"sig\":").as_bytes()).is_err(), "strict");
}

/// Passkey and SSH approvals checked together (a quorum's handful): only
/// the SSH signatures' arithmetic is shared, so each file — passkey or SSH,
/// good or refused — gets the verdict it gets alone, wherever it stands.
#[test]
fn passkey_and_ssh_approvals_checked_together_get_each_their_own_verdict() {
    use crate::approval::tests::sign;
    let (alice, bob) = (Authenticator::es256(1), Authenticator::eddsa(2));
    let approve = |who: &str| statement(&binding(), who, Verdict::Approve);
    let mut edited: ApprovalFile = serde_json::from_slice(&sign(&approve("carol@bank"), &key(3), NAMESPACE)).unwrap();
    edited.statement.comment = Some("edited after signing".into());
    let mut forged: ApprovalFile =
        serde_json::from_slice(&bob.approve(&approve("bob@bank"), &Make::default())).unwrap();
    let assertion = forged.passkey.as_mut().unwrap();
    let mut sig = B64URL.decode(&assertion.signature).unwrap();
    sig[5] ^= 1;
    assertion.signature = B64URL.encode(sig);
    let files: Vec<(Vec<u8>, Option<&str>)> = vec![
        (sign(&approve("alice@bank"), &key(1), NAMESPACE), None),
        (bob.approve(&approve("bob@bank"), &Make::default()), None),
        (
            alice.approve(&approve("alice@bank"), &Make { origin: "https://console.example.evil", ..Make::default() }),
            Some("approval.wrong_origin"),
        ),
        (serde_json::to_vec(&edited).unwrap(), Some("approval.bad_signature")),
        (alice.approve(&approve("alice@bank"), &Make::default()), None),
        (serde_json::to_vec(&forged).unwrap(), Some("approval.bad_signature")),
        (sign(&approve("carol@bank"), &key(3), NAMESPACE), None),
    ];
    for shift in 0..files.len() {
        let order: Vec<usize> = (0..files.len()).map(|i| (i + shift) % files.len()).collect();
        let bytes: Vec<Vec<u8>> = order.iter().map(|&i| files[i].0.clone()).collect();
        let together = crate::approval::verify_approvals(&bytes, &registry(&alice, &bob, ""), &binding(), NOW, 300);
        for (result, &i) in together.iter().zip(&order) {
            assert_eq!(result, &check(&files[i].0, &registry(&alice, &bob, "")), "file {i}, rotated by {shift}");
            match files[i].1 {
                None => assert!(result.is_ok(), "file {i}: {result:?}"),
                Some(code) => assert_eq!(result.as_ref().unwrap_err().reason_code(), code, "file {i}"),
            }
        }
    }
}
