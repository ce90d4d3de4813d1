//! Evidence bundles: `bundle::parse` (the layout) and the offline verifier
//! (`verify`, at both levels) against the fixed runner key.
//! Invariants: the layout is strict, so a parsed bundle written back is
//! byte-identical to the input; whatever verifies also parses, under the
//! trusted origin.
#![no_main]

use std::sync::LazyLock;

use edge_core::note::NoteVerifier;
use edge_evidence::{Level, bundle, verify};
use libfuzzer_sys::fuzz_target;

/// The runner key of the synthetic seed log (written by `gen_corpus`).
static KEYS: LazyLock<Vec<NoteVerifier>> =
    LazyLock::new(|| edge_evidence::parse_keys(include_str!("../fixtures/evidence.vkey")).expect("fixture key"));

fuzz_target!(|data: &[u8]| {
    let Ok(b) = bundle::parse(data) else {
        assert!(verify(data, &KEYS, Level::Integrity).is_err());
        return;
    };
    let artifacts: Vec<_> = b.artifacts.iter().map(|(d, a)| (*d, a.as_slice())).collect();
    let written = bundle::write(&b.header, &b.records, &artifacts, b.checkpoint).expect("header is canonical");
    assert_eq!(written, data, "parse then write is the identity");
    for level in [Level::Integrity, Level::Full] {
        if let Ok(v) = verify(data, &KEYS, level) {
            assert_eq!(v.header.origin, edge_fuzz::ORIGIN);
            assert_eq!(v.record_count, b.records.len());
        }
    }
});
