//! Property tests: the verifier reads hostile bytes. Any edit of a valid
//! bundle — a flipped byte, inserted or deleted bytes, swapped or duplicated
//! lines — must be refused at both levels with a named check, and must never
//! panic.

use std::sync::OnceLock;

use edge_core::note::NoteVerifier;
use edge_evidence::{Level, parse_keys, synth, verify};
use proptest::prelude::*;

struct Fixture {
    bundle: Vec<u8>,
    keys: Vec<NoteVerifier>,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let s = synth::full_bundle("synthetic.example/runner-1", 3);
        let keys = parse_keys(&s.vkey).unwrap();
        Fixture { bundle: s.bundle, keys }
    })
}

#[derive(Debug, Clone)]
enum Edit {
    Flip { at: usize, xor: u8 },
    Insert { at: usize, bytes: Vec<u8> },
    Delete { at: usize, len: usize },
    SwapLines { a: usize, b: usize },
    DuplicateLine { a: usize },
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<prop::sample::Index>(), 1..=255u8)
            .prop_map(|(i, xor)| Edit::Flip { at: i.index(fixture().bundle.len()), xor }),
        (any::<prop::sample::Index>(), prop::collection::vec(any::<u8>(), 1..8))
            .prop_map(|(i, bytes)| Edit::Insert { at: i.index(fixture().bundle.len() + 1), bytes }),
        (any::<prop::sample::Index>(), 1..64usize)
            .prop_map(|(i, len)| Edit::Delete { at: i.index(fixture().bundle.len()), len }),
        (any::<prop::sample::Index>(), any::<prop::sample::Index>())
            .prop_map(|(a, b)| Edit::SwapLines { a: a.index(1 << 16), b: b.index(1 << 16) }),
        any::<prop::sample::Index>().prop_map(|a| Edit::DuplicateLine { a: a.index(1 << 16) }),
    ]
}

fn apply(original: &[u8], e: &Edit) -> Vec<u8> {
    let mut v = original.to_vec();
    match e {
        Edit::Flip { at, xor } => v[*at] ^= xor,
        Edit::Insert { at, bytes } => {
            v.splice(*at..*at, bytes.iter().copied());
        }
        Edit::Delete { at, len } => {
            let end = (*at + len).min(v.len());
            v.drain(*at..end);
        }
        Edit::SwapLines { a, b } => {
            let mut lines: Vec<&[u8]> = original.split(|&c| c == b'\n').collect();
            let n = lines.len();
            lines.swap(a % n, b % n);
            v = lines.join(&b'\n');
        }
        Edit::DuplicateLine { a } => {
            let mut lines: Vec<&[u8]> = original.split(|&c| c == b'\n').collect();
            let line = lines[a % lines.len()];
            lines.insert(a % lines.len(), line);
            v = lines.join(&b'\n');
        }
    }
    v
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn any_edit_is_refused_with_a_named_check(e in edit()) {
        let f = fixture();
        let edited = apply(&f.bundle, &e);
        prop_assume!(edited != f.bundle);
        for level in [Level::Integrity, Level::Full] {
            match verify(&edited, &f.keys, level) {
                Ok(_) => prop_assert!(false, "{e:?} verified at {level:?}"),
                Err(failure) => prop_assert!(failure.check.contains('.'), "{failure}"),
            }
        }
    }
}

#[test]
fn the_fixture_itself_verifies() {
    let f = fixture();
    assert!(verify(&f.bundle, &f.keys, Level::Full).is_ok());
    assert!(verify(&f.bundle, &f.keys, Level::Integrity).is_ok());
}

#[test]
fn a_second_signature_on_the_checkpoint_is_refused_even_a_valid_one() {
    // A signed note ignores signatures by unknown keys; a bundle must not
    // carry bytes nobody checks, so a witness-style line is refused.
    let f = fixture();
    let witness = synth::full_bundle("witness.example/w", 1).signer;
    let text = String::from_utf8(f.bundle.clone()).unwrap();
    let note_text_end = text.rfind("\n\n").unwrap() + 1;
    let note_text_start = text[..note_text_end - 1].rfind("synthetic.example/runner-1\n").unwrap();
    let line = witness.signature_line(&text[note_text_start..note_text_end]);
    let mut edited = f.bundle.clone();
    edited.extend_from_slice(line.as_bytes());
    for level in [Level::Integrity, Level::Full] {
        let e = verify(&edited, &f.keys, level).unwrap_err();
        assert_eq!(e.check, "checkpoint.format", "{e}");
        assert!(e.detail.contains("2 signature lines"), "{e}");
    }
}
