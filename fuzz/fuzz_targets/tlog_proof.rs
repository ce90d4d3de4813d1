//! Run receipts: `c2sp.org/tlog-proof@v1` (`TlogProof::parse`), then what a
//! receipt check does with one: open its checkpoint note with the runner key,
//! parse the checkpoint and check the inclusion proof of a leaf against it.
//! Invariant: parse → encode → parse is the identity on the parsed value.
#![no_main]

use edge_core::merkle;
use edge_core::note::{Checkpoint, TlogProof, open};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(p) = TlogProof::parse(text) else {
        return;
    };
    let encoded = p.encode();
    assert_eq!(TlogProof::parse(&encoded).expect("an encoded proof parses"), p);
    let Ok(note) = open(&p.checkpoint, &edge_fuzz::NOTE_VERIFIERS) else {
        return;
    };
    let Ok(c) = Checkpoint::parse(&note.text) else {
        return;
    };
    let proof: Vec<Vec<u8>> = p.hashes.iter().map(|h| h.to_vec()).collect();
    // The seeds prove this leaf (see examples/gen_corpus.rs).
    let leaf = merkle::leaf_hash(edge_fuzz::RECEIPT_LEAF);
    let _ = merkle::verify_inclusion(p.index, c.size, &leaf, &proof, &c.root);
});
