//! Approval files: `ApprovalFile::parse` (strict JSON statement + armored
//! SSHSIG or passkey assertion) and the whole `verify_approval` checklist
//! against a fixed registry and binding (SSHSIG armor and wire format,
//! namespace, key, signature; passkey base64url fields, client data JSON,
//! authenticator data, signature).
//! Invariants: a parsed file re-serialises to one that parses equal; an
//! accepted approval is alice's, made with her registered key or passkey;
//! `parse_armored` (its shortcut for armor laid out as ssh-keygen lays it
//! out) reads every armor as `SshSig::from_pem` does, the file's and the
//! input taken whole as one (seed `seed-armor`).
#![no_main]

use edge_core::approval::{ApprovalFile, parse_armored, verify_approval};
use libfuzzer_sys::fuzz_target;

/// `parse_armored` answers as `SshSig::from_pem` does: the same signature,
/// or an error where it errs.
fn reads_as_from_pem(armored: &str) {
    assert_eq!(parse_armored(armored).ok(), ssh_key::SshSig::from_pem(armored).ok(), "{armored:?}");
}

fuzz_target!(|data: &[u8]| {
    if let Ok(file) = ApprovalFile::parse(data) {
        let bytes = serde_json::to_vec(&file).expect("serialises");
        assert_eq!(ApprovalFile::parse(&bytes).expect("re-parses"), file);
        // The armored signature alone (the SSHSIG parsers).
        if let Some(sig) = &file.signature {
            reads_as_from_pem(sig);
        }
    }
    if let Ok(text) = std::str::from_utf8(data) {
        reads_as_from_pem(text);
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
