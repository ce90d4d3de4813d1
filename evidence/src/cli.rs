//! The `edge-verify` command line, as a function of its arguments and output
//! streams (the binary is a thin wrapper; tests run it in-process).
//!
//! ```text
//! edge-verify BUNDLE --key RUNNER_KEYS [--integrity-only] [--json] [FILTERS] [--progress]
//! edge-verify report BUNDLE --key RUNNER_KEYS [--html OUT.html] [--json] [FILTERS] [--progress]
//! edge-verify completions bash|zsh|fish|elvish|powershell
//! edge-verify man --out DIR
//! edge-verify --help | --version
//!
//! FILTERS (what a report lists; verification always covers the whole bundle):
//!   --since-time T   proposals submitted at or after T (RFC 3339, or a date: midnight UTC)
//!   --until-time T   proposals submitted before T
//!   --tier N[,N…]    proposals decided at these tiers (repeatable)
//!   --state S[,S…]   proposals in these states (repeatable): committed, refused, awaiting-approval, …
//! ```
//!
//! The flags are a clap definition ([`command`]); `--help`, the man pages and
//! the completion scripts are generated from it.
//!
//! Exit status: 0 verified (or help, version, completions, man pages), 1
//! verification failed (the message names the record and the check), 2 usage
//! or I/O error.

use std::ffi::OsString;
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::error::ErrorKind;
use clap::{CommandFactory as _, FromArgMatches as _, Parser, Subcommand};
use edge_core::text::line;

use crate::cli_docs::{self, Shell};
use crate::report::{self, Filter, Options, VERIFIER_VERSION};
use crate::{Keep, Level, Step, parse_keys, verify_file};

/// Exit status: verified.
pub const EXIT_VERIFIED: u8 = 0;
/// Exit status: the bundle failed verification.
pub const EXIT_FAILED: u8 = 1;
/// Exit status: usage or I/O error.
pub const EXIT_USAGE: u8 = 2;

const AFTER_HELP: &str = "\
RUNNER_KEYS is a file of trusted runner verifier keys, one per line (`edge-runner evidence runner-key`
prints a runner's); obtain it from the runner's operator out of band.

Exit status: 0 verified, 1 verification failed (the message names the record and the check),
2 usage or I/O error.";

/// Verify an Edge Runner evidence bundle offline.
///
/// Checks the signed checkpoint, the hash chain, the Merkle tree and proofs,
/// artifact digests, every capsule and approval signature, and replays each
/// decision and quorum. Needs no network and no runner.
#[derive(Debug, Parser)]
#[command(
    name = "edge-verify",
    version = VERIFIER_VERSION,
    after_help = AFTER_HELP,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true,
    disable_help_subcommand = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Sub>,
    #[command(flatten)]
    common: Common,
    /// Only the checkpoint, chain, tree and artifact digests: no capsule or
    /// approval signatures, no decision or quorum replay.
    #[arg(long)]
    integrity_only: bool,
}

#[derive(Debug, Subcommand)]
enum Sub {
    /// Verify, then print a human report by proposal (text, or JSON with
    /// --json), and optionally write a self-contained HTML page.
    Report {
        #[command(flatten)]
        common: Common,
        /// Also write the report as one self-contained HTML page here.
        #[arg(long, value_name = "OUT.html")]
        html: Option<PathBuf>,
    },
    /// Print a shell completion script (e.g. `edge-verify completions bash
    /// > /etc/bash_completion.d/edge-verify`).
    Completions {
        /// The shell to complete for.
        shell: Shell,
    },
    /// Write man pages for edge-verify and its subcommands into a directory.
    Man {
        /// The directory (created if missing), e.g. /usr/local/share/man/man1.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
}

/// What both verifying forms take.
#[derive(Debug, clap::Args)]
struct Common {
    /// The evidence bundle (`edge-runner evidence export` or `evidence fetch`).
    #[arg(value_name = "BUNDLE", required = true)]
    bundle: Option<PathBuf>,
    /// A file of trusted runner verifier keys, one per line (repeatable).
    #[arg(long = "key", value_name = "RUNNER_KEYS", required = true)]
    keys: Vec<PathBuf>,
    /// Print the verification result and a summary of each listed proposal as JSON.
    #[arg(long)]
    json: bool,
    /// Show progress on stderr (shown anyway when stderr is a terminal).
    #[arg(long)]
    progress: bool,
    /// List only proposals submitted at or after T (RFC 3339, or a date: midnight UTC).
    #[arg(long, value_name = "T", value_parser = Filter::parse_time)]
    since_time: Option<jiff::Timestamp>,
    /// List only proposals submitted before T.
    #[arg(long, value_name = "T", value_parser = Filter::parse_time)]
    until_time: Option<jiff::Timestamp>,
    /// List only proposals decided at these tiers (e.g. `2` or `1,2`; repeatable).
    #[arg(long, value_name = "N[,N]")]
    tier: Vec<String>,
    /// List only proposals in these states (committed, refused, awaiting-approval, …; repeatable).
    #[arg(long, value_name = "S[,S]")]
    state: Vec<String>,
}

/// The `edge-verify` command definition (for `--help`, man pages,
/// completions and the help-text audit).
pub fn command() -> clap::Command {
    Cli::command()
}

/// A verification to run, checked.
#[derive(Debug)]
struct Args {
    report: bool,
    bundle: PathBuf,
    keys: Vec<PathBuf>,
    integrity_only: bool,
    html: Option<PathBuf>,
    json: bool,
    progress: bool,
    filter: Filter,
}

enum Parsed {
    Run(Box<Args>),
    Completions(Shell),
    Man(PathBuf),
    /// `--help` or `--version`: the text to print.
    Info(String),
}

/// Parse; an error is the message to show, neutralised (clap quotes what
/// was typed).
fn parse_args(args: Vec<OsString>) -> Result<Parsed, String> {
    parse(args).map_err(|e| edge_core::text::block(&e).into_owned())
}

fn parse(args: Vec<OsString>) -> Result<Parsed, String> {
    let mut cmd = command();
    let usage = |cmd: &mut clap::Command, kind: ErrorKind, msg: String| cmd.error(kind, msg).render().to_string();
    let matches = match cmd.try_get_matches_from_mut(std::iter::once(OsString::from("edge-verify")).chain(args)) {
        Ok(m) => m,
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => {
            return Ok(Parsed::Info(e.render().to_string()));
        }
        Err(e) => {
            let mut text = e.render().to_string();
            // The options one form takes and the other does not: say why.
            if e.kind() == ErrorKind::UnknownArgument
                && let Some(arg) = e.get(clap::error::ContextKind::InvalidArg).map(ToString::to_string)
            {
                if arg.starts_with("--html") {
                    text.push_str("\n--html writes a report: use `edge-verify report BUNDLE … --html OUT.html`\n");
                } else if arg.starts_with("--integrity-only") {
                    text.push_str("\na report needs full verification: drop --integrity-only\n");
                }
            }
            // A second positional after the bundle reads as a subcommand.
            if e.kind() == ErrorKind::ArgumentConflict && e.get(clap::error::ContextKind::InvalidSubcommand).is_some() {
                text.push_str("\none bundle at a time: verify each bundle with its own command\n");
            }
            return Err(text);
        }
    };
    let cli = Cli::from_arg_matches(&matches).map_err(|e| e.render().to_string())?;
    let (report, common, html) = match cli.command {
        None => (false, cli.common, None),
        Some(Sub::Report { common, html }) => (true, common, html),
        Some(Sub::Completions { shell }) => return Ok(Parsed::Completions(shell)),
        Some(Sub::Man { out }) => return Ok(Parsed::Man(out)),
    };
    let mut filter = Filter { since: common.since_time, until: common.until_time, ..Filter::default() };
    for t in &common.tier {
        filter.add_tiers(t).map_err(|e| usage(&mut cmd, ErrorKind::ValueValidation, e))?;
    }
    for s in &common.state {
        filter.add_states(s).map_err(|e| usage(&mut cmd, ErrorKind::ValueValidation, e))?;
    }
    let a = Args {
        report,
        bundle: common.bundle.ok_or("no bundle given")?,
        keys: common.keys,
        integrity_only: cli.integrity_only,
        html,
        json: common.json,
        progress: common.progress,
        filter,
    };
    if !a.filter.is_empty() && !a.report && !a.json {
        let msg = "filters choose what a report lists: use `edge-verify report …` or --json".to_owned();
        return Err(usage(&mut cmd, ErrorKind::ArgumentConflict, msg));
    }
    if let (Some(s), Some(u)) = (a.filter.since, a.filter.until)
        && s >= u
    {
        let msg = format!("--since-time {s} is not before --until-time {u}: nothing would be listed");
        return Err(usage(&mut cmd, ErrorKind::ArgumentConflict, msg));
    }
    Ok(Parsed::Run(Box::new(a)))
}

/// Run `edge-verify` with `args` (without the program name). `out` gets the
/// result (neutralise it for a terminal: `edge_core::text::Terminal`), `err`
/// messages and progress; progress is shown when `err_is_terminal` or with
/// `--progress`. Returns the exit status.
pub fn run(args: Vec<OsString>, out: &mut dyn Write, err: &mut dyn Write, err_is_terminal: bool) -> u8 {
    let args = match parse_args(args) {
        Ok(Parsed::Run(a)) => a,
        Ok(Parsed::Info(text)) => {
            let _ = write!(out, "{text}");
            return EXIT_VERIFIED;
        }
        Ok(Parsed::Completions(shell)) => {
            return match cli_docs::completions(command(), shell, out) {
                Ok(()) => EXIT_VERIFIED,
                Err(e) => {
                    let _ = writeln!(err, "edge-verify: cannot write the completion script: {e}");
                    EXIT_USAGE
                }
            };
        }
        Ok(Parsed::Man(dir)) => {
            return match cli_docs::write_man_pages(command(), &dir) {
                Ok(pages) => {
                    for p in pages {
                        let _ = writeln!(out, "wrote {}", line(&p.display().to_string()));
                    }
                    EXIT_VERIFIED
                }
                Err(e) => {
                    let _ = writeln!(err, "edge-verify: {}", line(&e.to_string()));
                    EXIT_USAGE
                }
            };
        }
        Err(e) => {
            let _ = write!(err, "{e}");
            return EXIT_USAGE;
        }
    };
    match verify_and_report(&args, out, err, err_is_terminal) {
        Ok(code) => code,
        Err(e) => {
            let _ = writeln!(err, "edge-verify: {}", line(&e));
            EXIT_USAGE
        }
    }
}

fn verify_and_report(args: &Args, out: &mut dyn Write, err: &mut dyn Write, tty: bool) -> Result<u8, String> {
    let mut keys = Vec::new();
    for k in &args.keys {
        let text = std::fs::read_to_string(k).map_err(|e| format!("runner keys {}: {e}", k.display()))?;
        keys.append(&mut parse_keys(&text).map_err(|e| format!("runner keys {}: {e}", k.display()))?);
    }
    // Read start to end (records twice for a full check), in memory that
    // does not grow with the bundle unless a report needs all of it.
    let file = std::fs::File::open(&args.bundle).map_err(|e| format!("cannot read {}: {e}", args.bundle.display()))?;
    let level = if args.integrity_only { Level::Integrity } else { Level::Full };
    let keep = if args.json || args.report || args.html.is_some() { Keep::Everything } else { Keep::Counts };
    let mut progress = Progress::new(err, args.progress, tty);
    let result = verify_file(&file, &keys, level, keep, &mut |step, done, total| progress.show(step, done, total));
    progress.finish();
    let opts = Options { filter: args.filter.clone(), ..Options::now() };
    let io = |e: std::io::Error| format!("cannot write the output: {e}");
    if args.json {
        let value = match &result {
            Ok(v) => report::json(v, &opts),
            Err(f) => report::json_failed(f, &opts),
        };
        let text = serde_json::to_string_pretty(&value).map_err(|e| e.to_string())?;
        writeln!(out, "{text}").map_err(io)?;
    } else if args.report {
        let text = match &result {
            Ok(v) => report::text_with(v, &opts),
            Err(f) => report::text_failed_with(f, &opts),
        };
        out.write_all(edge_core::text::block(&text).as_bytes()).map_err(io)?;
    } else if let Ok(v) = &result {
        writeln!(out, "{}", line(&v.summary())).map_err(io)?;
        for note in v.key_notes().into_iter().chain(v.build_notes()) {
            writeln!(out, "{}", line(&note)).map_err(io)?;
        }
    }
    if let Some(path) = &args.html {
        let page = match &result {
            Ok(v) => report::html_with(v, &opts),
            Err(f) => report::html_failed_with(f, &opts),
        };
        std::fs::write(path, page).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    match result {
        Ok(_) => Ok(EXIT_VERIFIED),
        Err(f) => {
            writeln!(err, "FAILED: {}", line(&f.to_string())).map_err(io)?;
            Ok(EXIT_FAILED)
        }
    }
}

/// Progress on stderr: a line rewritten in place on a terminal (only once
/// the verification has taken a moment), one line per step otherwise.
struct Progress<'a> {
    to: &'a mut dyn Write,
    tty: bool,
    enabled: bool,
    started: Instant,
    last: Option<(Instant, Step)>,
    drawn: bool,
}

impl<'a> Progress<'a> {
    /// A terminal shows nothing for the first half second: short
    /// verifications stay quiet.
    const QUIET: Duration = Duration::from_millis(500);
    const EVERY: Duration = Duration::from_millis(100);

    fn new(to: &'a mut dyn Write, asked: bool, tty: bool) -> Self {
        Self { to, tty, enabled: asked || tty, started: Instant::now(), last: None, drawn: false }
    }

    fn show(&mut self, step: Step, done: usize, total: usize) {
        if !self.enabled {
            return;
        }
        let now = Instant::now();
        let new_step = self.last.is_none_or(|(_, s)| s != step);
        let text = format!("verifying: {} {done}/{total}", step.name());
        if self.tty {
            if now.duration_since(self.started) < Self::QUIET
                || self.last.is_some_and(|(t, _)| !new_step && now.duration_since(t) < Self::EVERY && done < total)
            {
                return;
            }
            let _ = write!(self.to, "\r{text:<60}");
            self.drawn = true;
        } else if new_step
            || done == total
            || self.last.is_some_and(|(t, _)| now.duration_since(t) >= Duration::from_secs(1))
        {
            let _ = writeln!(self.to, "{text}");
        } else {
            return;
        }
        let _ = self.to.flush();
        self.last = Some((now, step));
    }

    fn finish(&mut self) {
        if self.drawn {
            let _ = write!(self.to, "\r{:<60}\r", "");
            let _ = self.to.flush();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<OsString> {
        a.iter().map(OsString::from).collect()
    }

    #[test]
    fn flags_parse_and_misuse_is_explained() {
        let Ok(Parsed::Run(a)) = parse_args(args(&[
            "report",
            "b",
            "--key",
            "k",
            "--tier",
            "1,2",
            "--state",
            "committed",
            "--since-time",
            "2026-01-01",
            "--until-time",
            "2026-02-01T00:00:00Z",
        ])) else {
            panic!("did not parse")
        };
        assert!(a.report && a.filter.tiers.len() == 2 && a.filter.states.len() == 1);
        assert_eq!(a.filter.since.unwrap().to_string(), "2026-01-01T00:00:00Z");
        match parse_args(args(&["--version"])) {
            Ok(Parsed::Info(v)) => assert_eq!(v, format!("edge-verify {VERIFIER_VERSION}\n")),
            _ => panic!("--version did not parse"),
        }
        assert!(matches!(parse_args(args(&["report", "--help"])), Ok(Parsed::Info(h)) if h.contains("--html")));
        assert!(matches!(parse_args(args(&["completions", "zsh"])), Ok(Parsed::Completions(Shell::Zsh))));
        let err = |a: &[&str]| match parse_args(args(a)) {
            Err(e) => e,
            Ok(_) => panic!("{a:?} parsed"),
        };
        assert!(err(&["b"]).contains("--key"));
        assert!(err(&["b", "--key", "k", "--tier", "x"]).contains("not a tier"));
        assert!(err(&["b", "--key", "k", "--state", "done"]).contains("committed"));
        assert!(err(&["b", "--key", "k", "--tier", "2"]).contains("report"));
        assert!(err(&["b", "--key", "k", "--since-time", "yesterday", "--json"]).contains("RFC 3339"));
        assert!(err(&["b", "--key", "k", "--html", "x.html"]).contains("use `edge-verify report"));
        assert!(err(&["report", "b", "--key", "k", "--integrity-only"]).contains("drop --integrity-only"));
        assert!(err(&["report", "b"]).contains("--key <RUNNER_KEYS>"));
        assert!(err(&["completions", "tcsh"]).contains("bash"), "the shells there are are named");
        let e = err(&["b", "--key", "k", "--json", "--since-time", "2026-02-01", "--until-time", "2026-01-01"]);
        assert!(e.contains("not before"), "{e}");
        // A hostile option name is shown neutralised.
        assert!(err(&["b", "c", "--key", "k"]).contains("one bundle at a time"));
        // Hostile text in an option name or a value is shown neutralised
        // (clap drops escape sequences itself; the rest is made visible).
        let dangerous =
            |e: &str| e.chars().any(|c| (c.is_control() && c != '\n') || ('\u{202a}'..='\u{202e}').contains(&c));
        for hostile in ["--x\u{202e}y\u{1b}[2J", "--x\u{7}\u{8}", "b\u{202e}"] {
            let e = err(&["b", "--key", "k", hostile]);
            assert!(!dangerous(&e), "{e:?}");
        }
        let e = err(&["b", "--key", "k", "--json", "--since-time", "\u{1b}[2J"]);
        assert!(e.contains("\\u{001b}[2J` is not a time"), "{e:?}");
    }

    #[test]
    fn progress_is_quiet_unless_asked_or_on_a_terminal() {
        let mut buf = Vec::new();
        let mut p = Progress::new(&mut buf, false, false);
        p.show(Step::Runs, 10, 10);
        p.finish();
        assert!(buf.is_empty());
        let mut buf = Vec::new();
        let mut p = Progress::new(&mut buf, true, false);
        p.show(Step::Chain, 100, 100);
        p.show(Step::Runs, 5, 10);
        p.show(Step::Runs, 6, 10);
        p.show(Step::Runs, 10, 10);
        p.finish();
        let text = String::from_utf8(buf).unwrap();
        assert_eq!(text, "verifying: chain 100/100\nverifying: runs 5/10\nverifying: runs 10/10\n", "{text}");
        assert!(!text.contains('\r'), "no cursor movement when not a terminal");
    }
}
