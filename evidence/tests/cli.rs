//! The `edge-verify` command line as a reviewer meets it: golden files of
//! its output (`evidence/tests/golden/`), help text on every option, and the
//! completion scripts and man pages it generates.
//!
//! Golden files are compared exactly, after replacing what varies from run
//! to run (temporary paths, the synthetic runner's key, digests, times, the
//! version). When a change of output is intended, rewrite them and review:
//!
//! ```sh
//! UPDATE_GOLDEN=1 cargo test -p edge-evidence --test cli
//! git diff evidence/tests/golden/
//! ```

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use edge_evidence::synth;
use regex::Regex;

const BIN: &str = env!("CARGO_BIN_EXE_edge-verify");

fn run(dir: &Path, args: &[&str]) -> Output {
    Command::new(BIN).args(args).current_dir(dir).output().unwrap()
}

/// Replace what varies between runs with a placeholder.
fn normalise(text: &str, dir: &Path) -> String {
    let mut s = text.replace(&dir.display().to_string(), "<dir>");
    for (pattern, with) in [
        (r"sha256:[0-9a-f]{64}", "sha256:<digest>"),
        (r"\b[0-9a-f]{64}\b", "<hex>"),
        (r"\+[0-9a-f]{8}\+[A-Za-z0-9+/=]{40,}", "+<key id>+<key>"),
        (r"\+[0-9a-f]{8}\b", "+<key id>"),
        (r"\b\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z", "<time>"),
        (r"root [A-Za-z0-9+/]{43}=", "root <tree hash>"),
        (r"SHA256:[A-Za-z0-9+/]{43}", "SHA256:<ssh fingerprint>"),
        (r"\br-[0-9]+-[0-9a-f]{8}\b", "r-<id>"),
        (r"\bp-[0-9]+-[0-9a-f]{8}\b", "p-<id>"),
    ] {
        s = Regex::new(pattern).unwrap().replace_all(&s, with).into_owned();
    }
    s.replace(&format!("edge-verify {}", env!("CARGO_PKG_VERSION")), "edge-verify <version>")
}

/// Compare with `evidence/tests/golden/<name>`; `UPDATE_GOLDEN=1` rewrites it.
fn golden(name: &str, actual: &str) {
    edge_evidence::cli_docs::golden(&PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden").join(name), actual);
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec()).unwrap()
}

#[test]
fn help_and_version_exit_0_and_match_their_golden_files() {
    let dir = tempfile::tempdir().unwrap();
    for (args, file) in [
        (&["--help"][..], "help.txt"),
        (&["-h"], "help-short.txt"),
        (&["report", "--help"], "report-help.txt"),
        (&["--version"], "version.txt"),
    ] {
        let out = run(dir.path(), args);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", text(&out.stderr));
        assert!(out.stderr.is_empty());
        golden(file, &normalise(&text(&out.stdout), dir.path()));
    }
    // No arguments: what is missing, on stderr, exit 2.
    let out = run(dir.path(), &[]);
    assert_eq!(out.status.code(), Some(2));
    golden("no-arguments.txt", &normalise(&text(&out.stderr), dir.path()));
}

#[test]
fn a_good_and_a_tampered_bundle_match_their_golden_files() {
    let s = synth::bundle(
        "synthetic.example/runner-1",
        &synth::Spec { runs: 4, tier2_every: Some(2), ..Default::default() },
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("runner.vkey"), &s.vkey).unwrap();
    std::fs::write(dir.path().join("good.bundle"), &s.bundle).unwrap();
    let out = run(dir.path(), &["good.bundle", "--key", "runner.vkey"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    golden("verify-good.txt", &normalise(&text(&out.stdout), dir.path()));
    let out = run(dir.path(), &["report", "good.bundle", "--key", "runner.vkey"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    golden("report-good.txt", &normalise(&text(&out.stdout), dir.path()));

    // One recorded decision's tier changed, the line's length kept.
    let body = text(&s.bundle);
    let at = body.find("\"tier\":0").unwrap();
    let mut bad = s.bundle.clone();
    bad[at + 7] = b'3';
    std::fs::write(dir.path().join("bad.bundle"), &bad).unwrap();
    let out = run(dir.path(), &["bad.bundle", "--key", "runner.vkey"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    golden("verify-tampered.txt", &normalise(&text(&out.stderr), dir.path()));
    let out = run(dir.path(), &["report", "bad.bundle", "--key", "runner.vkey"]);
    assert_eq!(out.status.code(), Some(1));
    golden("report-tampered.txt", &normalise(&text(&out.stdout), dir.path()));
}

#[test]
fn every_subcommand_and_argument_has_help_text() {
    let cmd = edge_evidence::cli::command();
    cmd.clone().debug_assert();
    let missing = edge_evidence::cli_docs::undocumented(&cmd);
    assert!(missing.is_empty(), "add a doc comment (help text) to each of these:\n  {}", missing.join("\n  "));
}

#[test]
fn completions_and_man_pages_come_from_the_binary() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(dir.path(), &["completions", "bash"]);
    assert_eq!(out.status.code(), Some(0));
    let bash = text(&out.stdout);
    assert!(bash.contains("complete -F _edge__verify"), "{bash}");
    assert!(bash.contains(" report completions man") && bash.contains("--integrity-only"), "{bash}");
    let out = run(dir.path(), &["man", "--out", "pages"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "wrote pages/edge-verify.1\nwrote pages/edge-verify-report.1\nwrote pages/edge-verify-completions.1\nwrote pages/edge-verify-man.1\n"
    );
    let page = std::fs::read_to_string(dir.path().join("pages/edge-verify.1")).unwrap();
    for option in ["\\-\\-key", "\\-\\-integrity\\-only", "\\-\\-since\\-time", "Exit status"] {
        assert!(page.contains(option), "{option} not in\n{page}");
    }
    let report = std::fs::read_to_string(dir.path().join("pages/edge-verify-report.1")).unwrap();
    assert!(report.contains("\\-\\-html"), "{report}");
    // An unwritable place is a usage/I-O error, exit 2, naming it.
    std::fs::write(dir.path().join("file"), "").unwrap();
    let out = run(dir.path(), &["man", "--out", "file/pages"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("cannot create file/pages"), "{}", text(&out.stderr));
}
