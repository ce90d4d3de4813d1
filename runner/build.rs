//! Embeds the source revision the runner is built from, for its
//! self-attestation at start (`src/attest.rs`): `EDGE_RUNNER_REVISION` from
//! the environment when set (builds from a source archive), else the commit
//! git names for `HEAD`, else `unknown`. It never fails the build.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=EDGE_RUNNER_REVISION");
    let given = std::env::var("EDGE_RUNNER_REVISION").ok().map(|s| s.trim().to_owned()).filter(|s| valid(s));
    let revision = given.or_else(git_revision).unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=EDGE_RUNNER_REVISION={revision}");
}

/// A revision as it may appear in evidence: short, printable, one word.
fn valid(s: &str) -> bool {
    !s.is_empty() && s.len() <= 80 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-+".contains(&b))
}

fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).current_dir(dir).output().ok()?;
    if !out.status.success() {
        return None;
    }
    String::from_utf8(out.stdout).ok().map(|s| s.trim().to_owned()).filter(|s| !s.is_empty())
}

/// The commit `HEAD` names, and rebuild when it moves: `HEAD`, the branch
/// it points to and `packed-refs`, found with `--git-path` (which works in
/// linked worktrees too).
fn git_revision() -> Option<String> {
    let dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR")?);
    let rev = git(&dir, &["rev-parse", "--verify", "HEAD"])?;
    if !(rev.len() == 40 || rev.len() == 64) || !rev.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut watch = vec!["HEAD".to_owned(), "packed-refs".to_owned()];
    watch.extend(git(&dir, &["symbolic-ref", "-q", "HEAD"]));
    for name in watch {
        // Only files that exist: a missing one would rerun this script, and
        // rebuild the runner, at every build.
        if let Some(p) = git(&dir, &["rev-parse", "--git-path", &name]).map(|p| dir.join(p)).filter(|p| p.exists()) {
            println!("cargo:rerun-if-changed={}", p.display());
        }
    }
    Some(rev)
}
