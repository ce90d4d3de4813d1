use ed25519_dalek::Signer as _;
use ssh_key::private::Ed25519Keypair;
use ssh_key::public::{KeyData, SkEd25519};
use ssh_key::{HashAlg, LineEnding, PrivateKey, Signature};

use super::*;
use crate::admission::{GrantedMount, Limits};

pub(crate) const NOW: u64 = 1_795_500_000;

pub(crate) fn key(seed: u8) -> PrivateKey {
    PrivateKey::from(Ed25519Keypair::from_seed(&[seed; 32]))
}

pub(crate) fn line(principal: &str, k: &PrivateKey, options: &str) -> String {
    format!("{principal} {options} {}\n", k.public_key().to_openssh().unwrap())
}

fn grant() -> Grant {
    Grant {
        endpoints: vec![],
        mounts: vec![GrantedMount { name: "config".into(), writable: true }],
        env: vec![],
        imports: Default::default(),
        limits: Limits::DEFAULT,
    }
}

pub(crate) fn binding() -> Binding {
    Binding {
        proposal: "p-1".into(),
        capsule: Sha256Digest::of(b"capsule"),
        plan: Sha256Digest::of(b"plan A"),
        policy: Sha256Digest::of(b"policy X"),
        runner: "runner-1".into(),
        tier: 2,
        grant: grant(),
        max_age_secs: 7200,
    }
}

pub(crate) fn statement(b: &Binding, approver: &str, decision: Verdict) -> Statement {
    Statement {
        schema: STATEMENT_SCHEMA.into(),
        proposal: b.proposal.clone(),
        capsule: b.capsule,
        plan: b.plan,
        policy: b.policy,
        runner: b.runner.clone(),
        tier: b.tier,
        grant: b.grant.clone(),
        decision,
        comment: None,
        approver: approver.into(),
        issued_at: NOW - 60,
        expires_at: NOW + 3600,
        nonce: "ab".repeat(32),
    }
}

pub(crate) fn sign(st: &Statement, k: &PrivateKey, namespace: &str) -> Vec<u8> {
    let sig = k.sign(namespace, HashAlg::Sha512, &st.canonical_bytes()).unwrap();
    serde_json::to_vec(&ApprovalFile::ssh(st.clone(), sig.to_pem(LineEnding::LF).unwrap())).unwrap()
}

fn registry(text: &str, roles: &str) -> Registry {
    Registry::parse(text, "allowed_signers", roles, "roles.toml").unwrap()
}

fn check(bytes: &[u8], reg: &Registry) -> Result<VerifiedApproval, ApprovalError> {
    verify_approval(bytes, reg, &binding(), NOW, 300)
}

/// The fast path (`canonical_bytes`) must equal the generic RFC 8785 form,
/// whatever the content (escapes, non-ASCII, optional fields).
#[test]
fn statement_serialisation_is_canonical() {
    use proptest::prelude::*;
    proptest!(|(comment in proptest::option::of(".{0,40}"), approver in "[a-z@.\\\"\u{0}-\u{1f}é😀]{1,20}", tier in 0u8..9)| {
        let mut st = statement(&binding(), &approver, Verdict::Reject);
        st.comment = comment;
        st.tier = tier;
        prop_assert_eq!(st.canonical_bytes(), crate::canonical::to_canonical_vec(&st).unwrap());
    });
}

#[test]
fn a_good_approval_verifies() {
    let alice = key(1);
    let reg = registry(&line("alice@bank", &alice, ""), "");
    let v = check(&sign(&statement(&binding(), "alice@bank", Verdict::Approve), &alice, NAMESPACE), &reg).unwrap();
    assert_eq!(v.principal, "alice@bank");
    assert_eq!(v.key, fingerprint(alice.public_key()));
    assert_eq!(v.verdict, Verdict::Approve);
}

/// A signature remembered as verified (the approval was checked when it
/// arrived) stands in for the arithmetic only: a revocation, another
/// proposal, or the clock passing the expiry is still refused, and a single
/// changed byte of the signature is checked afresh and refused.
#[test]
fn a_remembered_signature_decides_nothing_else() {
    let alice = key(1);
    let reg = registry(&line("alice@bank", &alice, ""), "");
    let bytes = sign(&statement(&binding(), "alice@bank", Verdict::Approve), &alice, NAMESPACE);
    check(&bytes, &reg).unwrap();
    assert_eq!(reg.verified.len(), 1, "the verified signature is remembered");
    check(&bytes, &reg).unwrap();
    assert_eq!(reg.verified.len(), 1);

    // The same memory, a registry that now revokes the key.
    let revoked = Registry {
        verified: reg.verified.clone(),
        ..registry(
            &line("alice@bank", &alice, ""),
            &format!("[revoked]\nkeys = [\"{}\"]\n", fingerprint(alice.public_key())),
        )
    };
    assert_eq!(check(&bytes, &revoked).unwrap_err().reason_code(), "approval.revoked_key");
    let other = Binding { proposal: "p-2".into(), ..binding() };
    assert_eq!(verify_approval(&bytes, &reg, &other, NOW, 300).unwrap_err().reason_code(), "approval.wrong_binding");
    assert_eq!(
        verify_approval(&bytes, &reg, &binding(), NOW + 7200, 300).unwrap_err().reason_code(),
        "approval.expired"
    );

    // One bit of the Ed25519 signature flipped inside the armour.
    let mut file: ApprovalFile = serde_json::from_slice(&bytes).unwrap();
    let Proof::Ssh(armored) = file.proof().unwrap() else { unreachable!() };
    let sig = SshSig::from_pem(armored).unwrap();
    let mut raw = sig.signature_bytes().to_vec();
    raw[10] ^= 1;
    let tampered = SshSig::new(
        sig.public_key().clone(),
        sig.namespace(),
        sig.hash_alg(),
        Signature::new(sig.algorithm(), raw).unwrap(),
    )
    .unwrap();
    file = ApprovalFile::ssh(file.statement.clone(), tampered.to_pem(LineEnding::LF).unwrap());
    let tampered = serde_json::to_vec(&file).unwrap();
    assert_eq!(check(&tampered, &reg).unwrap_err().reason_code(), "approval.bad_signature");
    assert_eq!(reg.verified.len(), 1, "a failure is not remembered");
}

/// A quorum's approvals are checked together (their signatures' arithmetic
/// shares one inversion): each still gets exactly the verdict it gets alone,
/// its own first failed check, wherever it stands among the others. A
/// statement edited after signing *and* moved to another proposal is refused
/// for its signature, as alone; only signatures that verified are remembered.
#[test]
fn approvals_checked_together_get_each_its_own_verdict() {
    let (alice, bob, carol, mallory) = (key(1), key(3), key(4), key(2));
    let signers =
        format!("{}{}{}", line("alice@bank", &alice, ""), line("bob@bank", &bob, ""), line("carol@bank", &carol, ""));
    let approve = |who: &str| statement(&binding(), who, Verdict::Approve);
    let mut edited: ApprovalFile = serde_json::from_slice(&sign(&approve("bob@bank"), &bob, NAMESPACE)).unwrap();
    edited.statement.comment = Some("edited after signing".into());
    let mut edited_and_moved = edited.clone();
    edited_and_moved.statement.proposal = "p-2".into();
    let elsewhere = Binding { proposal: "p-2".into(), ..binding() };
    let files: Vec<(Vec<u8>, Option<&str>)> = vec![
        (sign(&approve("alice@bank"), &alice, NAMESPACE), None),
        (b"{not json".to_vec(), Some("approval.malformed")),
        (serde_json::to_vec(&edited).unwrap(), Some("approval.bad_signature")),
        (
            sign(&statement(&elsewhere, "carol@bank", Verdict::Approve), &carol, NAMESPACE),
            Some("approval.wrong_binding"),
        ),
        (sign(&approve("bob@bank"), &bob, NAMESPACE), None),
        (serde_json::to_vec(&edited_and_moved).unwrap(), Some("approval.bad_signature")),
        (sign(&approve("alice@bank"), &mallory, NAMESPACE), Some("approval.key_mismatch")),
        (sign(&approve("carol@bank"), &carol, NAMESPACE), None),
    ];
    for shift in 0..files.len() {
        let order: Vec<usize> = (0..files.len()).map(|i| (i + shift) % files.len()).collect();
        let bytes: Vec<Vec<u8>> = order.iter().map(|&i| files[i].0.clone()).collect();
        let reg = registry(&signers, "");
        let together = verify_approvals(&bytes, &reg, &binding(), NOW, 300);
        assert_eq!(together.len(), files.len());
        for (result, &i) in together.iter().zip(&order) {
            let alone = check(&files[i].0, &registry(&signers, ""));
            assert_eq!(result, &alone, "file {i}, rotated by {shift}");
            match files[i].1 {
                None => assert!(result.is_ok(), "file {i}: {result:?}"),
                Some(code) => assert_eq!(result.as_ref().unwrap_err().reason_code(), code, "file {i}"),
            }
        }
        assert_eq!(reg.verified.len(), 4, "the four signatures that verify (one bound elsewhere) are remembered");
        let again = verify_approvals(&bytes, &reg, &binding(), NOW, 300);
        assert_eq!(again, together, "the same verdicts from memory");
    }
}

/// Each refusal, with its precise reason.
#[test]
fn every_refusal_reason() {
    let (alice, mallory) = (key(1), key(2));
    let reg = registry(
        &format!(
            "{}{}{}",
            line("alice@bank", &alice, ""),
            line("old@bank", &alice, "valid-before=\"20200101Z\""),
            line("future@bank", &alice, "valid-after=\"20991231Z\""),
        ),
        "[revoked]\nkeys = []\n",
    );
    let good = statement(&binding(), "alice@bank", Verdict::Approve);
    let code = |bytes: Vec<u8>, reg: &Registry| check(&bytes, reg).unwrap_err().reason_code();

    assert_eq!(code(b"{not json".to_vec(), &reg), "approval.malformed");
    assert_eq!(code(sign(&good, &alice, "git"), &reg), "approval.wrong_namespace");
    assert_eq!(
        code(sign(&statement(&binding(), "eve@bank", Verdict::Approve), &alice, NAMESPACE), &reg),
        "approval.unknown_approver"
    );
    assert_eq!(code(sign(&good, &mallory, NAMESPACE), &reg), "approval.key_mismatch");
    let e = check(&sign(&good, &mallory, NAMESPACE), &reg).unwrap_err().to_string();
    assert!(
        e.contains("signed with key SHA256:") && e.ends_with("which allowed_signers does not register for them"),
        "{e}"
    );
    assert_eq!(
        code(sign(&statement(&binding(), "old@bank", Verdict::Approve), &alice, NAMESPACE), &reg),
        "approval.key_not_valid"
    );
    assert_eq!(
        code(sign(&statement(&binding(), "future@bank", Verdict::Approve), &alice, NAMESPACE), &reg),
        "approval.key_not_valid"
    );
    let revoked = registry(
        &line("alice@bank", &alice, ""),
        &format!("[revoked]\nkeys = [\"{}\"]\n", fingerprint(alice.public_key())),
    );
    assert_eq!(code(sign(&good, &alice, NAMESPACE), &revoked), "approval.revoked_key");

    // Signed one statement, presents another.
    let mut file: ApprovalFile = serde_json::from_slice(&sign(&good, &alice, NAMESPACE)).unwrap();
    file.statement.comment = Some("edited after signing".into());
    assert_eq!(code(serde_json::to_vec(&file).unwrap(), &reg), "approval.bad_signature");

    // Moved to another plan, policy, capsule, proposal, runner, tier or grant.
    for field in ["plan", "policy", "capsule", "proposal", "runner", "tier", "grant"] {
        let mut b = binding();
        match field {
            "plan" => b.plan = Sha256Digest::of(b"plan B"),
            "policy" => b.policy = Sha256Digest::of(b"policy Y"),
            "capsule" => b.capsule = Sha256Digest::of(b"other"),
            "proposal" => b.proposal = "p-2".into(),
            "runner" => b.runner = "runner-2".into(),
            "tier" => b.tier = 1,
            _ => b.grant.mounts[0].writable = false,
        }
        let e = check(&sign(&statement(&b, "alice@bank", Verdict::Approve), &alice, NAMESPACE), &reg).unwrap_err();
        assert!(matches!(&e, ApprovalError::WrongBinding { field: f, .. } if *f == field), "{field}: {e:?}");
        assert_eq!(e.reason_code(), "approval.wrong_binding");
    }

    let mut future = good.clone();
    future.issued_at = NOW + 3600;
    future.expires_at = NOW + 7200;
    assert_eq!(code(sign(&future, &alice, NAMESPACE), &reg), "approval.not_yet_valid");
    let mut skewed = good.clone();
    skewed.issued_at = NOW + 200;
    assert!(check(&sign(&skewed, &alice, NAMESPACE), &reg).is_ok(), "within the allowed clock skew");
    let mut expired = good.clone();
    expired.expires_at = NOW - 600;
    assert_eq!(code(sign(&expired, &alice, NAMESPACE), &reg), "approval.expired");
    let mut old = good.clone();
    old.issued_at = NOW - 3 * 3600;
    old.expires_at = NOW + 3600;
    assert_eq!(code(sign(&old, &alice, NAMESPACE), &reg), "approval.too_old");
    let mut bad_nonce = good.clone();
    bad_nonce.nonce = "1234".into();
    assert_eq!(code(sign(&bad_nonce, &alice, NAMESPACE), &reg), "approval.malformed");
}

/// A namespace restriction in allowed_signers is honoured.
#[test]
fn allowed_signers_namespaces_are_honoured() {
    let alice = key(1);
    let reg = registry(&line("alice@bank", &alice, "namespaces=\"git,file\""), "");
    let e = check(&sign(&statement(&binding(), "alice@bank", Verdict::Approve), &alice, NAMESPACE), &reg).unwrap_err();
    assert_eq!(e.reason_code(), "approval.unknown_approver");
}

/// A real FIDO (sk-ssh-ed25519) signature verifies, and one without user presence does not.
#[test]
fn hardware_key_signatures() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/data/ssh/");
    let pem = std::fs::read_to_string(format!("{dir}sshsig_sk_ed25519")).unwrap();
    let public =
        PublicKey::from_openssh(std::fs::read_to_string(format!("{dir}id_sk_ed25519_2.pub")).unwrap().trim()).unwrap();
    let sig = SshSig::from_pem(&pem).unwrap();
    verify_sshsig(&public, "example", b"testing", &sig).unwrap();
    assert!(verify_sshsig(&public, "example", b"testinG", &sig).is_err());

    // A software key posing as a FIDO key, without the user-presence flag.
    let dalek = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
    let sk = KeyData::from(SkEd25519::new(ssh_key::public::Ed25519PublicKey(dalek.verifying_key().to_bytes()), "ssh:"));
    let message = b"approve";
    for (flags, ok) in [(0x01u8, true), (0x00, false), (0x05, true)] {
        let data = SshSig::signed_data(NAMESPACE, HashAlg::Sha512, message).unwrap();
        let h = |x: &[u8]| <sha2::Sha256 as sha2::Digest>::digest(x);
        let mut tbs = h(b"ssh:").to_vec();
        tbs.push(flags);
        tbs.extend(7u32.to_be_bytes());
        tbs.extend(h(&data));
        let mut raw = dalek.sign(&tbs).to_bytes().to_vec();
        raw.push(flags);
        raw.extend(7u32.to_be_bytes());
        let sig =
            SshSig::new(sk.clone(), NAMESPACE, HashAlg::Sha512, Signature::new(Algorithm::SkEd25519, raw).unwrap())
                .unwrap();
        let r = verify_sshsig(&PublicKey::from(sk.clone()), NAMESPACE, message, &sig);
        assert_eq!(r.is_ok(), ok, "flags {flags:#x}: {r:?}");
        if !ok {
            assert_eq!(r.unwrap_err().reason_code(), "approval.no_user_presence");
        }
    }
}

/// SSH-signed approval files serialise exactly as before passkeys existed.
#[test]
fn ssh_approval_files_serialise_as_before() {
    let st = statement(&binding(), "alice@bank", Verdict::Approve);
    let file =
        ApprovalFile::ssh(st.clone(), "-----BEGIN SSH SIGNATURE-----\nAAAA\n-----END SSH SIGNATURE-----\n".into());
    let json = String::from_utf8(serde_json::to_vec(&file).unwrap()).unwrap();
    let before = format!(
        "{{\"statement\":{},\"signature\":\"-----BEGIN SSH SIGNATURE-----\\nAAAA\\n-----END SSH SIGNATURE-----\\n\"}}",
        String::from_utf8(st.canonical_bytes()).unwrap()
    );
    assert_eq!(json, before);
    assert_eq!(ApprovalFile::parse(before.as_bytes()).unwrap(), file);
}

/// `parse_armored`'s shortcut for armor laid out as `ssh-keygen` lays it
/// out returns exactly what `SshSig::from_pem` returns, and nothing where
/// `from_pem` refuses: on the canonical layout (where it is taken), other
/// line widths and endings, trailing bytes, stray bits, and random edits.
#[test]
fn the_armor_shortcut_reads_what_from_pem_reads() {
    use base64::Engine as _;
    use proptest::prelude::*;
    use ssh_encoding::Encode as _;
    let st = statement(&binding(), "alice@bank", Verdict::Approve);
    let sig = key(1).sign(NAMESPACE, HashAlg::Sha512, &st.canonical_bytes()).unwrap();
    let canonical = sig.to_pem(LineEnding::LF).unwrap();
    let same = |text: &str| match (parse_armored(text), SshSig::from_pem(text)) {
        (Ok(a), Ok(b)) => a == b,
        (Err(ApprovalError::Malformed(a)), Err(b)) => a == format!("signature: {b}"),
        _ => false,
    };
    // Taken on the canonical layout, and the same answer.
    assert_eq!(written_as_ssh_keygen_writes(&canonical), Some(sig.clone()));
    assert!(same(&canonical));
    let armor = |bytes: &[u8], width: usize, eol: &str| {
        let b64 = base64::engine::general_purpose::STANDARD.encode(bytes);
        let lines: Vec<&str> = b64.as_bytes().chunks(width).map(|c| std::str::from_utf8(c).unwrap()).collect();
        format!("-----BEGIN SSH SIGNATURE-----{eol}{}{eol}-----END SSH SIGNATURE-----{eol}", lines.join(eol))
    };
    let mut bytes = Vec::new();
    sig.encode(&mut bytes).unwrap();
    assert_eq!(armor(&bytes, 70, "\n"), canonical, "the layout the shortcut expects is ssh-key's");
    let mut trailing = bytes.clone();
    trailing.push(0);
    let b64 = base64::engine::general_purpose::STANDARD.encode(&bytes);
    let stray = {
        // The last character before the padding with a low bit set that
        // the bytes do not have: the same bytes, written non-canonically.
        let pad = b64.len() - b64.trim_end_matches('=').len();
        assert!(pad > 0, "this signature's base64 is padded");
        let mut chars: Vec<u8> = b64.clone().into_bytes();
        let at = chars.len() - pad - 1;
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let value = ALPHABET.iter().position(|&c| c == chars[at]).unwrap();
        chars[at] = ALPHABET[value ^ 1]; // the lowest bit, which no byte uses
        let body: Vec<&str> = chars.chunks(70).map(|c| std::str::from_utf8(c).unwrap()).collect();
        format!("-----BEGIN SSH SIGNATURE-----\n{}\n-----END SSH SIGNATURE-----\n", body.join("\n"))
    };
    for (text, shortcut) in [
        (armor(&bytes, 64, "\n"), false),
        (armor(&bytes, 76, "\n"), false),
        (armor(&bytes, 70, "\r\n"), false),
        (canonical.trim_end().to_owned(), false),
        (format!("{canonical}\n"), false),
        (format!(" {canonical}"), false),
        (armor(&trailing, 70, "\n"), false),
        (stray, false),
        (canonical.replace("SSH SIGNATURE", "SSH SIGNATURF"), false),
    ] {
        assert_eq!(written_as_ssh_keygen_writes(&text).is_some(), shortcut, "{text:?}");
        assert!(same(&text), "{text:?}");
    }
    assert!(SshSig::from_pem(armor(&trailing, 70, "\n")).is_err(), "trailing bytes are refused");

    let alphabet: Vec<char> = "AB/+=az09\n\r -\u{e9}".chars().collect();
    proptest!(ProptestConfig::with_cases(2000), |(edits in proptest::collection::vec((any::<prop::sample::Index>(), 0u8..3, any::<prop::sample::Index>()), 1..3))| {
        let mut text: Vec<char> = canonical.chars().collect();
        for (at, op, with) in edits {
            let c = *with.get(&alphabet);
            match op {
                0 if !text.is_empty() => { let i = at.index(text.len()); text[i] = c; }
                1 if !text.is_empty() => { text.remove(at.index(text.len())); }
                _ => text.insert(at.index(text.len() + 1), c),
            }
        }
        let text: String = text.into_iter().collect();
        if let Some(sig) = written_as_ssh_keygen_writes(&text) {
            prop_assert_eq!(SshSig::from_pem(&text).ok(), Some(sig));
        }
        prop_assert!(same(&text), "{:?}", text);
    });
}
