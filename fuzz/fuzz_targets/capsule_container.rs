//! `CapsuleFile::parse`: the `.capsule` tar container (and the manifest in it).
//! Invariant: a parsed capsule serialises to a file that parses to the same
//! capsule, and that serialisation is a fixed point.
#![no_main]

use edge_core::container::CapsuleFile;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(file) = CapsuleFile::parse(data) else {
        return;
    };
    let bytes = file.to_bytes();
    let again = CapsuleFile::parse(&bytes).expect("a serialised capsule parses");
    assert_eq!(again.digest(), file.digest());
    assert_eq!(again.manifest_bytes(), file.manifest_bytes());
    assert_eq!(again.component(), file.component());
    assert_eq!(again.bundle(), file.bundle());
    assert_eq!(again.to_bytes(), bytes, "serialisation is deterministic");
    // Signature checks on whatever bundle the file carries: must not panic.
    let _ = edge_core::signature::verify_capsule(file, &edge_fuzz::TRUSTED);
});
