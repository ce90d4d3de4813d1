//! C2SP signed notes: `note::open` against fixed verifiers, the checkpoint
//! body (`Checkpoint::parse`) and note keys (`NoteVerifier::parse`,
//! `NoteSigner::parse`, `edge_evidence::parse_keys`).
//! Invariants: an opened note's text is a prefix of the note and was signed by
//! a trusted key; checkpoints and verifier keys round-trip byte for byte.
#![no_main]

use edge_core::note::{Checkpoint, NoteSigner, NoteVerifier, open};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(opened) = open(text, &edge_fuzz::NOTE_VERIFIERS) {
        assert!(text.starts_with(&opened.text));
        assert!(!opened.signed_by.is_empty());
        assert!(opened.signature_lines >= opened.signed_by.len());
        for name in &opened.signed_by {
            assert!(edge_fuzz::NOTE_VERIFIERS.iter().any(|v| v.to_vkey().starts_with(&format!("{name}+"))));
        }
        if let Ok(c) = Checkpoint::parse(&opened.text) {
            assert_eq!(c.text(), opened.text);
        }
    }
    if let Ok(c) = Checkpoint::parse(text) {
        assert_eq!(c.text(), text, "checkpoint text round-trips");
    }
    if let Ok(v) = NoteVerifier::parse(text) {
        assert_eq!(NoteVerifier::parse(&v.to_vkey()).expect("re-parses"), v);
    }
    if let Ok(s) = NoteSigner::parse(text) {
        let line = s.signature_line("fuzz\n");
        assert!(open(&format!("fuzz\n\n{line}"), std::slice::from_ref(s.verifier())).is_ok());
    }
    let _ = edge_evidence::parse_keys(text);
});
