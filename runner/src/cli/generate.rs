//! `edge-runner completions SHELL` and `edge-runner man --out DIR`: shell
//! completion scripts and man pages, generated from the clap definition
//! ([`crate::cli::Cli`]) by the helpers both binaries share
//! ([`edge_evidence::cli_docs`]).

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, CommandFactory as _};
use edge_evidence::cli_docs::{self, Shell};

use crate::cli::{Cli, Exit};

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    pub shell: Shell,
}

#[derive(Debug, Args)]
pub struct ManArgs {
    /// The directory to write the pages into (created if missing), e.g.
    /// /usr/local/share/man/man1.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

/// Print the completion script for `a.shell`.
///
/// # Errors
/// Writing to `out`.
pub fn completions(a: &CompletionsArgs, out: &mut dyn Write) -> Result<Exit> {
    cli_docs::completions(Cli::command(), a.shell, out).context("cannot write the completion script")?;
    Ok(Exit::Ok)
}

/// Write a man page for `edge-runner` and for each subcommand into `a.out`,
/// and list them.
///
/// # Errors
/// Creating the directory or writing a page.
pub fn man(a: &ManArgs, out: &mut dyn Write) -> Result<Exit> {
    let pages = cli_docs::write_man_pages(Cli::command(), &a.out)?;
    for p in &pages {
        writeln!(out, "wrote {}", p.display())?;
    }
    writeln!(out, "{} page(s); read one with `man -l {}`", pages.len(), a.out.join("edge-runner.1").display())?;
    Ok(Exit::Ok)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use clap::Command;

    use super::*;

    #[test]
    fn the_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn every_subcommand_and_argument_has_help_text() {
        let missing = cli_docs::undocumented(&Cli::command());
        assert!(missing.is_empty(), "add a doc comment (help text) to each of these:\n  {}", missing.join("\n  "));
    }

    /// Each command that talks to a runner: its client flags, as
    /// `flag -> environment variable`.
    fn client_commands(cmd: &Command, path: &str, found: &mut BTreeMap<String, BTreeMap<String, String>>) {
        if cmd.get_arguments().any(|a| a.get_long() == Some("server")) {
            let flags = cmd
                .get_arguments()
                .filter(|a| matches!(a.get_long(), Some("server" | "ca" | "cert" | "key")))
                .map(|a| {
                    let env = a.get_env().map(|e| e.to_string_lossy().into_owned()).unwrap_or_default();
                    (a.get_long().unwrap_or_default().to_owned(), env)
                })
                .collect();
            found.insert(path.to_owned(), flags);
        }
        for sub in cmd.get_subcommands() {
            client_commands(sub, &format!("{path} {}", sub.get_name()), found);
        }
    }

    #[test]
    fn every_client_command_takes_the_same_flags_with_the_same_environment_defaults() {
        let mut found = BTreeMap::new();
        client_commands(&Cli::command(), "edge-runner", &mut found);
        let names: Vec<&str> = found.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            [
                "edge-runner approve",
                "edge-runner evidence fetch",
                "edge-runner proposals list",
                "edge-runner proposals show",
                "edge-runner proposals watch",
                "edge-runner reject",
                "edge-runner reload",
                "edge-runner submit",
            ]
        );
        let want: BTreeMap<String, String> = [
            ("server", "EDGE_RUNNER_SERVER"),
            ("ca", "EDGE_RUNNER_CA"),
            ("cert", "EDGE_RUNNER_CERT"),
            ("key", "EDGE_RUNNER_KEY"),
        ]
        .into_iter()
        .map(|(f, e)| (f.to_owned(), e.to_owned()))
        .collect();
        for (cmd, flags) in &found {
            assert_eq!(flags, &want, "{cmd}");
        }
        // The old names are hidden aliases: nobody is shown them.
        let approve = Cli::command().find_subcommand("approve").cloned().unwrap();
        let help = approve.clone().render_long_help().to_string();
        assert!(!help.contains("--client-cert") && !help.contains("--client-key"), "{help}");
        assert!(help.contains("--ssh-key <FILE>") && help.contains("[env: EDGE_RUNNER_KEY"), "{help}");
    }

    #[test]
    fn the_renamed_approve_flags_still_parse_as_the_tls_identity() {
        use clap::Parser as _;
        let cli = Cli::try_parse_from([
            "edge-runner",
            "approve",
            "p-1",
            "--server",
            "https://r:8443",
            "--ca",
            "ca.pem",
            "--client-cert",
            "me.pem",
            "--client-key",
            "me.key",
            "--principal",
            "a@x",
            "--ssh-key",
            "id",
            "-o",
            "a.json",
        ])
        .unwrap();
        let crate::cli::Command::Approve(a) = cli.command else { panic!("not approve") };
        assert_eq!(a.remote.cert.as_deref(), Some(std::path::Path::new("me.pem")));
        assert_eq!(a.remote.key.as_deref(), Some(std::path::Path::new("me.key")));
        assert_eq!(a.ssh_key.as_deref(), Some(std::path::Path::new("id")));
        // An old command line with the SSH key as --key and --client-key:
        // both are now the TLS key, and clap refuses the second.
        let old = ["edge-runner", "approve", "p-1", "--client-key", "me.key", "--key", "id", "--principal", "a@x"];
        let e = Cli::try_parse_from(old.iter().chain(&["-o", "a.json"])).unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::ArgumentConflict, "{e}");
    }

    #[test]
    fn the_bash_completion_names_the_subcommands_and_their_flags() {
        let mut out = Vec::new();
        completions(&CompletionsArgs { shell: Shell::Bash }, &mut out).unwrap();
        let script = String::from_utf8(out).unwrap();
        assert!(script.contains("complete -F _edge__runner"), "{script}");
        let top = script.lines().find(|l| l.contains("opts=") && l.contains(" keys capsule exec ")).unwrap();
        for sub in ["approve", "submit", "proposals", "completions", "man", "serve", "init", "evidence"] {
            assert!(top.split_whitespace().any(|w| w == sub), "{sub} missing from {top}");
        }
        assert!(
            script.contains("edge__subcmd__runner__subcmd__capsule__subcmd__sign)"),
            "nested subcommands complete too"
        );
        assert!(script.contains("--ssh-key"), "and their flags");
        let mut zsh = Vec::new();
        completions(&CompletionsArgs { shell: Shell::Zsh }, &mut zsh).unwrap();
        assert!(String::from_utf8(zsh).unwrap().starts_with("#compdef edge-runner"));
    }

    #[test]
    fn man_writes_a_page_per_subcommand_with_its_options() {
        let dir = tempfile::tempdir().unwrap();
        let out_dir = dir.path().join("man/man1");
        let mut out = Vec::new();
        man(&ManArgs { out: out_dir.clone() }, &mut out).unwrap();
        let listed = String::from_utf8(out).unwrap();
        let mut pages: Vec<String> = std::fs::read_dir(&out_dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        pages.sort();
        // One per visible command at every depth (the hidden testing aid has none).
        let count = |c: &Command| -> usize {
            fn walk(c: &Command) -> usize {
                1 + c.get_subcommands().filter(|s| !s.is_hide_set()).map(walk).sum::<usize>()
            }
            walk(c)
        };
        assert_eq!(pages.len(), count(&Cli::command()), "{pages:?}");
        assert!(listed.contains(&format!("{} page(s)", pages.len())), "{listed}");
        for p in ["edge-runner.1", "edge-runner-approve.1", "edge-runner-capsule-sign.1", "edge-runner-submit.1"] {
            assert!(pages.iter().any(|x| x == p), "{p} missing: {pages:?}");
        }
        assert!(!pages.iter().any(|p| p.contains("stress")), "{pages:?}");
        let approve = std::fs::read_to_string(out_dir.join("edge-runner-approve.1")).unwrap();
        for text in ["\\-\\-ssh\\-key", "\\-\\-cert", "EDGE_RUNNER_CERT", "Sign through ssh\\-agent"] {
            assert!(approve.contains(text), "{text} not in\n{approve}");
        }
        let submit = std::fs::read_to_string(out_dir.join("edge-runner-submit.1")).unwrap();
        assert!(submit.contains(".TH edge-runner-submit 1") && submit.contains("EDGE_RUNNER_SERVER"), "{submit}");
    }
}
