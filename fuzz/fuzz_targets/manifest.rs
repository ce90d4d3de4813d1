//! The capsule manifest: the canonical JSON stored in a capsule, and the
//! authoring TOML a capsule is packed from.
//! Invariants: an accepted canonical manifest re-serialises to exactly its
//! input; a manifest built from TOML serialises to canonical JSON that
//! parses back to the same manifest.
#![no_main]

use edge_core::Sha256Digest;
use edge_core::manifest::{ComponentRef, Manifest};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = Manifest::from_canonical_json(data) {
        assert_eq!(m.to_canonical_json().expect("accepted manifests serialise"), data);
    }
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let pinned = ComponentRef { sha256: Sha256Digest::of(data), size: data.len() as u64 };
    if let Ok(m) = Manifest::from_authoring_toml(text, pinned) {
        let json = m.to_canonical_json().expect("a validated manifest serialises");
        let back = Manifest::from_canonical_json(&json).expect("its canonical JSON is accepted");
        assert_eq!(back, m);
        assert_eq!(back.digest().expect("digest"), m.digest().expect("digest"));
    }
});
