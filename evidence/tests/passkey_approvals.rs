//! Passkey approvals in evidence bundles: a bundle whose tier-2 proposals
//! are approved by an SSH key and a passkey verifies fully; a recorded
//! counter that is not the signed one, client data edited after signing, and
//! a counter that goes back across proposals each fail with their own check.

use edge_core::evidence::{Event, Record};
use edge_evidence::synth::{self, PasskeyTamper, Spec};
use edge_evidence::{Level, parse_keys, verify};

/// Two tier-2 proposals (four runs), the second approver signing with a passkey.
fn bundle(tamper: Option<PasskeyTamper>) -> synth::Synthetic {
    let spec = Spec { runs: 4, tier2_every: Some(1), passkeys: true, passkey_tamper: tamper, ..Spec::default() };
    synth::bundle("synthetic.example/runner-1", &spec)
}

#[test]
fn a_bundle_with_passkey_approvals_verifies() {
    let s = bundle(None);
    let keys = parse_keys(&s.vkey).unwrap();
    let v = verify(&s.bundle, &keys, Level::Full).unwrap();
    let text = String::from_utf8(s.bundle.clone()).unwrap();
    assert!(text.contains("\"passkey\":{\"counter\":"), "the accepted record carries the counter");
    assert!(text.contains("\"passkeys\":\"sha256:"), "the quorum names the passkeys registry");
    let quorums: Vec<_> = v.runs.iter().filter_map(|r| r.quorum.as_ref()).collect();
    assert_eq!(quorums.len(), 2);
    for q in quorums {
        assert!(q.outcome.is_met(), "{q:?}");
        assert!(q.approvers.iter().any(|a| a.principal == "carol@bank.example" && a.counted), "{q:?}");
    }
}

#[test]
fn tampered_passkey_approvals_fail_with_their_check() {
    for (tamper, check) in [
        (PasskeyTamper::RecordedCounter, "approval.record"),
        (PasskeyTamper::ClientData, "approval.signature"),
        (PasskeyTamper::CounterRegression, "approval.counter"),
    ] {
        let s = bundle(Some(tamper));
        let keys = parse_keys(&s.vkey).unwrap();
        // The tampering is in records and artifacts the runner key signed:
        // the bundle's integrity holds, its content does not.
        verify(&s.bundle, &keys, Level::Integrity).unwrap();
        let Err(e) = verify(&s.bundle, &keys, Level::Full) else { panic!("{tamper:?} verified") };
        assert_eq!(e.check, check, "{tamper:?}: {e}");
        if tamper == PasskeyTamper::CounterRegression {
            assert!(e.detail.contains("cloned authenticator"), "{e}");
        }
    }
}

/// Each quorum is replayed against the passkeys file it recorded, even
/// where its `allowed_signers` and roles are those of a quorum before it:
/// carol signs each proposal with a passkey enrolled for it, the one before
/// withdrawn. Replayed against the first quorum's registry, the second
/// approval's credential would be unknown. On one thread the runs meet the
/// verifier's registry cache in log order, the first quorum's registry
/// already in it when the second comes.
#[test]
fn each_quorum_is_replayed_against_the_passkeys_it_recorded() {
    let spec = Spec { runs: 4, tier2_every: Some(1), passkeys: true, passkey_each_proposal: true, ..Spec::default() };
    let s = synth::bundle("synthetic.example/runner-1", &spec);
    let keys = parse_keys(&s.vkey).unwrap();
    // Each quorum's recorded files: (allowed_signers, roles, passkeys).
    let quorums: Vec<_> = edge_evidence::bundle::parse(&s.bundle)
        .unwrap()
        .records
        .iter()
        .filter_map(|l| match serde_json::from_str::<Record>(l).unwrap().event {
            Event::Quorum { allowed_signers, roles, passkeys, .. } => Some((allowed_signers, roles, passkeys)),
            _ => None,
        })
        .collect();
    assert_eq!(quorums.len(), 2, "two quorums recorded");
    let [first, second] = [&quorums[0], &quorums[1]];
    assert!(first.2.is_some(), "{first:?}");
    assert_ne!(first.2, second.2, "two passkeys files recorded");
    assert_eq!((first.0, first.1), (second.0, second.1));
    let one_thread = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
    for v in [
        verify(&s.bundle, &keys, Level::Full).unwrap(),
        one_thread.install(|| verify(&s.bundle, &keys, Level::Full)).unwrap(),
    ] {
        let met: Vec<_> = v.runs.iter().filter_map(|r| r.quorum.as_ref()).filter(|q| q.outcome.is_met()).collect();
        assert_eq!(met.len(), 2, "both quorums met");
    }
}
