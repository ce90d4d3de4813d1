//! Shell completions, man pages and a help-text audit, generated from a clap
//! command definition.
//!
//! Both binaries use these: `edge-verify completions|man` here, and
//! `edge-runner completions|man` (the runner depends on this crate, which
//! has no I/O-heavy dependencies), so the two sets of pages are made the
//! same way. Nothing here is written by hand: the pages and scripts follow
//! the clap definitions, which are the one source of the flags and their
//! help text.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use clap::Command;
pub use clap_complete::Shell;

/// Write the completion script for `shell` to `out`.
///
/// `cmd` is the binary's full definition (`Cli::command()`); its name is
/// the command the script completes.
///
/// # Errors
/// Writing to `out`.
pub fn completions(cmd: Command, shell: Shell, out: &mut dyn Write) -> io::Result<()> {
    let mut cmd = cmd;
    let name = cmd.get_name().to_owned();
    let mut buf = Vec::new();
    clap_complete::generate(shell, &mut cmd, name, &mut buf);
    out.write_all(&buf)
}

/// Write one man page (section 1) for `cmd` and for each of its visible
/// subcommands, at every depth, into `dir` (created if missing):
/// `edge-runner.1`, `edge-runner-capsule.1`, `edge-runner-capsule-sign.1`, ….
/// Existing pages of the same names are replaced. Returns the files written,
/// parents before their subcommands.
///
/// # Errors
/// Creating `dir` or writing a page (the error names the file).
pub fn write_man_pages(cmd: Command, dir: &Path) -> io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot create {}: {e}", dir.display())))?;
    // Built once at the top: each subcommand then knows its full name
    // (`edge-runner capsule sign`), which the page's title and file use.
    let mut cmd = cmd.disable_help_subcommand(true);
    cmd.build();
    let mut written = Vec::new();
    write_pages(cmd, dir, &mut written)?;
    Ok(written)
}

fn write_pages(cmd: Command, dir: &Path, written: &mut Vec<PathBuf>) -> io::Result<()> {
    let man = clap_mangen::Man::new(cmd.clone());
    let path = dir.join(man.get_filename());
    let mut page = Vec::new();
    man.render(&mut page)?;
    std::fs::write(&path, page)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot write {}: {e}", path.display())))?;
    written.push(path);
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_pages(sub.clone(), dir, written)?;
    }
    Ok(())
}

/// Every subcommand and argument of `cmd`, at every depth and hidden ones
/// included, that has no help text, as `edge-runner capsule sign --key`.
/// clap's own `help` subcommand and `--help`/`--version` flags are left out.
/// Empty when everything a user can type is explained.
pub fn undocumented(cmd: &Command) -> Vec<String> {
    let mut cmd = cmd.clone();
    cmd.build();
    let mut missing = Vec::new();
    walk(&cmd, cmd.get_name(), &mut missing);
    missing
}

fn walk(cmd: &Command, path: &str, missing: &mut Vec<String>) {
    if cmd.get_about().is_none() && cmd.get_long_about().is_none() {
        missing.push(path.to_owned());
    }
    for arg in cmd.get_arguments() {
        let id = arg.get_id().as_str();
        if matches!(id, "help" | "version") {
            continue;
        }
        if arg.get_help().is_none() && arg.get_long_help().is_none() {
            let name = match (arg.get_long(), arg.get_short()) {
                (Some(l), _) => format!("--{l}"),
                (None, Some(s)) => format!("-{s}"),
                (None, None) => {
                    format!("<{}>", arg.get_value_names().and_then(|v| v.first()).map_or(id, |v| v.as_str()))
                }
            };
            missing.push(format!("{path} {name}"));
        }
    }
    for sub in cmd.get_subcommands() {
        if sub.get_name() == "help" {
            continue;
        }
        walk(sub, &format!("{path} {}", sub.get_name()), missing);
    }
}

/// Golden tests of command-line output (both binaries' test suites): compare
/// `actual` with the file at `path`; with `UPDATE_GOLDEN=1` in the
/// environment, write it there instead (then review the diff and commit it).
///
/// # Panics
/// When they differ (naming the first differing line and showing the
/// whole output), or the file is missing: it is a test helper.
pub fn golden(path: &Path, actual: &str) {
    if std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| v == "1") {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).expect("create the golden directory");
        }
        std::fs::write(path, actual).expect("write the golden file");
        return;
    }
    let want = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}; create it with UPDATE_GOLDEN=1, review it and commit it", path.display()));
    if want != actual {
        let (w, a): (Vec<&str>, Vec<&str>) = (want.lines().collect(), actual.lines().collect());
        let at = w.iter().zip(&a).position(|(x, y)| x != y).unwrap_or(w.len().min(a.len()));
        panic!(
            "the output no longer matches {} (first difference at line {}):\n  want: {:?}\n  got:  {:?}\n\
             whole output:\n{actual}\nIf the change is intended, rewrite the file with UPDATE_GOLDEN=1 and review the diff.",
            path.display(),
            at + 1,
            w.get(at),
            a.get(at)
        );
    }
}

#[cfg(test)]
mod tests {
    use clap::{Arg, ArgAction};

    use super::*;

    fn sample() -> Command {
        Command::new("tool")
            .about("A tool.")
            .version("1.2.3")
            .arg(Arg::new("verbose").long("verbose").action(ArgAction::SetTrue).help("Say more."))
            .subcommand(
                Command::new("sub")
                    .about("A subcommand.")
                    .arg(Arg::new("file").help("The file."))
                    .arg(Arg::new("level").long("level").help("How much.")),
            )
            .subcommand(Command::new("secret").about("Hidden.").hide(true))
    }

    #[test]
    fn the_audit_names_each_undocumented_argument_and_subcommand() {
        assert!(undocumented(&sample()).is_empty(), "{:?}", undocumented(&sample()));
        let bad = sample()
            .arg(Arg::new("quiet").long("quiet").short('q').action(ArgAction::SetTrue))
            .subcommand(Command::new("bare").arg(Arg::new("input")).arg(Arg::new("n").short('n')))
            .mut_subcommand("secret", |s| s.arg(Arg::new("x").long("x")));
        assert_eq!(
            undocumented(&bad),
            ["tool --quiet", "tool bare", "tool bare <input>", "tool bare -n", "tool secret --x"],
            "hidden subcommands are audited too; clap's help/version are not"
        );
    }

    #[test]
    fn man_pages_cover_each_visible_subcommand_with_its_options() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("man1");
        let written = write_man_pages(sample(), &out).unwrap();
        let names: Vec<String> =
            written.iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
        assert_eq!(names, ["tool.1", "tool-sub.1"], "no page for the hidden subcommand");
        let sub = std::fs::read_to_string(out.join("tool-sub.1")).unwrap();
        assert!(sub.starts_with(".ie \\n(.g .ds Aq") || sub.contains(".TH"), "{sub}");
        assert!(sub.contains("\\-\\-level") && sub.contains("How much."), "{sub}");
        // Written again: the pages are replaced, not refused.
        assert_eq!(write_man_pages(sample(), &out).unwrap().len(), 2);
    }

    #[test]
    fn a_completion_script_names_the_subcommands() {
        let mut out = Vec::new();
        completions(sample(), Shell::Bash, &mut out).unwrap();
        let script = String::from_utf8(out).unwrap();
        assert!(script.contains("complete -F _tool"), "{script}");
        assert!(script.contains("opts=\"-h -V --verbose --help --version sub "), "{script}");
        assert!(script.contains("tool__subcmd__sub)") && script.contains("--level"), "{script}");
    }
}
