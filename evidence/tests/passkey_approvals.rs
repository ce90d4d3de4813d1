//! Passkey approvals in evidence bundles: a bundle whose tier-2 proposals
//! are approved by an SSH key and a passkey verifies fully; a recorded
//! counter that is not the signed one, client data edited after signing, and
//! a counter that goes back across proposals each fail with their own check.

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
