//! Property tests: the verifier reads hostile bytes. Any edit of a valid
//! bundle — a flipped byte, inserted or deleted bytes, swapped or duplicated
//! lines — must be refused at both levels with a named check, and must never
//! panic.

use std::sync::OnceLock;

use edge_core::Sha256Digest;
use edge_core::note::NoteVerifier;
use edge_evidence::bundle::{self, Format};
use edge_evidence::synth::Spec;
use edge_evidence::{Level, parse_keys, synth, verify};
use proptest::prelude::*;

struct Fixture {
    bundle: Vec<u8>,
    keys: Vec<NoteVerifier>,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        // With the runner's start (and the config it names): the one
        // artifact whose carrying the two bundle formats disagree on.
        let s = synth::bundle("synthetic.example/runner-1", &Spec { runs: 3, runner_started: true, ..Spec::default() });
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
        // The magic line relabelled v1 (one flipped byte) is not an edit of
        // what a reviewer reads: the line is not signed, and for records
        // written since v2 both formats ask for the same artifacts
        // (`a_bundle_must_carry_the_config_as_shown_that_its_records_name_whatever_its_label`).
        prop_assume!(!edited.starts_with(Format::V1.magic().as_bytes()));
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

/// The synthetic runner's config as shown, which its `runner-started`
/// record names.
fn synthetic_config() -> Sha256Digest {
    Sha256Digest::of(synth::SYNTHETIC_CONFIG_SHOWN.as_bytes())
}

/// `bytes` rewritten as format `format`, with the artifacts `keep` says.
fn rewritten(bytes: &[u8], format: Format, keep: impl Fn(&Sha256Digest) -> bool) -> Vec<u8> {
    let b = bundle::parse(bytes).unwrap();
    let artifacts: Vec<(Sha256Digest, &[u8])> =
        b.artifacts.iter().filter(|(d, _)| keep(d)).map(|(d, a)| (*d, a.as_slice())).collect();
    let header = bundle::Header { format, artifacts: artifacts.len() as u64, ..b.header.clone() };
    bundle::write(&header, &b.records, &artifacts, b.checkpoint).unwrap()
}

#[test]
fn a_bundle_must_carry_the_config_as_shown_that_its_records_name_whatever_its_label() {
    let f = fixture();
    assert!(f.bundle.starts_with(b"edge-runner evidence bundle v2\n"));
    let config = synthetic_config();
    let carried = bundle::parse(&f.bundle).unwrap();
    assert!(
        carried.artifacts.iter().any(|(d, bytes)| *d == config && bytes == synth::SYNTHETIC_CONFIG_SHOWN.as_bytes())
    );
    let v2 = verify(&f.bundle, &f.keys, Level::Full).unwrap();
    assert!(!v2.build_notes().iter().any(|n| n.contains("format")), "{:?}", v2.build_notes());

    // Without it: the record that names it is refused, and relabelling the
    // bundle v1 (the magic line is not signed) does not excuse it.
    for format in [Format::V2, Format::V1] {
        let lacking = rewritten(&f.bundle, format, |d| *d != config);
        let e = verify(&lacking, &f.keys, Level::Full).unwrap_err();
        assert_eq!(e.check, "artifact.missing", "{format:?}: {e}");
        assert!(e.detail.contains(&config.to_string()), "{e}");
        assert_eq!(e.run.as_deref(), Some("runner"), "{e}");
    }

    // Relabelled v1 with everything: for records written since v2 the two
    // rules ask for the same artifacts, so it verifies, and the reviewer
    // is told what a v1 bundle may hold.
    let v1 = rewritten(&f.bundle, Format::V1, |_| true);
    assert!(v1.starts_with(b"edge-runner evidence bundle v1\n"));
    for level in [Level::Integrity, Level::Full] {
        let v = verify(&v1, &f.keys, level).unwrap_or_else(|e| panic!("{level:?}: {e}"));
        assert_eq!(v.header.format, Format::V1);
        if level == Level::Full {
            let notes = v.build_notes();
            assert!(notes.iter().any(|n| n.starts_with("bundle format v1 (runners before 2026-12-06)")), "{notes:?}");
        }
    }
}

#[test]
fn a_v1_bundle_of_v1_records_verifies_under_either_label() {
    // A log of a runner before v2 with no reload (the synthetic log
    // without a start): both rules ask for the same, so the label changes
    // nothing a reviewer reads. (Where they differ, a reload recorded
    // before `config_shown`, the rule itself is tested in
    // `edge_evidence::bundle`'s unit tests.)
    let plain = synth::full_bundle("synthetic.example/runner-1", 2);
    let keys = parse_keys(&plain.vkey).unwrap();
    let v1 = rewritten(&plain.bundle, Format::V1, |_| true);
    for bytes in [&plain.bundle, &v1] {
        for level in [Level::Integrity, Level::Full] {
            verify(bytes, &keys, level).unwrap_or_else(|e| panic!("{level:?}: {e}"));
        }
    }
}

#[test]
fn a_later_format_or_another_file_is_refused_naming_which() {
    let f = fixture();
    let at = f.bundle.iter().position(|&c| c == b'\n').unwrap();
    let v3 = [&b"edge-runner evidence bundle v3"[..], &f.bundle[at..]].concat();
    // The version is shown, neutralised: it is the file's text.
    let hostile = [&b"edge-runner evidence bundle v9\x1b[2J\xe2\x80\xae"[..], &f.bundle[at..]].concat();
    let other = [&b"PK\x03\x04"[..], &f.bundle[at..]].concat();
    for level in [Level::Integrity, Level::Full] {
        let e = verify(&v3, &f.keys, level).unwrap_err();
        assert_eq!(e.check, "bundle.format", "{e}");
        assert!(e.detail.contains("`edge-runner evidence bundle v3` is a bundle format"), "{e}");
        assert!(e.detail.contains("use a newer edge-verify"), "{e}");
        let e = verify(&hostile, &f.keys, level).unwrap_err();
        assert!(e.detail.contains("use a newer edge-verify"), "{e}");
        assert!(!e.detail.contains('\x1b') && !e.detail.contains('\u{202e}'), "{e}");
        let e = verify(&other, &f.keys, level).unwrap_err();
        assert_eq!(e.check, "bundle.format", "{e}");
        assert!(e.detail.contains("not an evidence bundle"), "{e}");
    }
}

/// A record of a run after its terminal record, in a bundle the runner's
/// key signed as it is: the run does not start again, it is out of order.
#[test]
fn a_record_after_its_runs_terminal_record_is_out_of_order() {
    let spec = Spec { runs: 3, record_after_end: true, ..Spec::default() };
    let s = synth::bundle("synthetic.example/runner-1", &spec);
    let keys = parse_keys(&s.vkey).unwrap();
    verify(&s.bundle, &keys, Level::Integrity).unwrap();
    let e = verify(&s.bundle, &keys, Level::Full).unwrap_err();
    assert_eq!(e.check, "run.order", "{e}");
    assert!(e.detail.contains("`verified` after the run's terminal record"), "{e}");
    assert_eq!(e.run.as_deref(), Some("r-1795000000000-00000000"), "{e}");
}
