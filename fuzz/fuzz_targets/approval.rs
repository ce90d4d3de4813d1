//! Approval files: `ApprovalFile::parse` (strict JSON statement + armored
//! SSHSIG or passkey assertion) and the whole `verify_approval` checklist
//! against a fixed registry and binding (SSHSIG armor and wire format,
//! namespace, key, signature; passkey base64url fields, client data JSON,
//! authenticator data, signature).
//! Invariants: a parsed file re-serialises to one that parses equal; an
//! accepted approval is alice's, made with her registered key or passkey.
#![no_main]

use edge_core::approval::{ApprovalFile, verify_approval};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(file) = ApprovalFile::parse(data) {
        let bytes = serde_json::to_vec(&file).expect("serialises");
        assert_eq!(ApprovalFile::parse(&bytes).expect("re-parses"), file);
        // The armored signature alone (the SSHSIG parser).
        if let Some(sig) = &file.signature {
            let _ = ssh_key::SshSig::from_pem(sig);
        }
    }
    let binding = edge_fuzz::binding();
    if let Ok(v) = verify_approval(data, &edge_fuzz::REGISTRY, &binding, edge_fuzz::NOW, 300) {
        assert_eq!(v.principal, "alice");
        let key = edge_fuzz::approver_key().public_key().clone();
        let passkey = edge_core::approval::passkey::passkey_fingerprint(
            &edge_fuzz::approver_passkey().verifying_key().to_bytes(),
        );
        match v.counter {
            None => assert_eq!(v.key, edge_core::approval::fingerprint(&key), "only alice's key can sign"),
            Some(_) => assert_eq!(v.key, passkey, "only alice's passkey can sign"),
        }
    }
});
