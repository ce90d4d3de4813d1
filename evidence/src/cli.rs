//! The `edge-verify` command line, as a function of its arguments and output
//! streams (the binary is a thin wrapper; tests run it in-process).
//!
//! ```text
//! edge-verify BUNDLE --key RUNNER_KEYS [--integrity-only] [--json] [FILTERS] [--progress]
//! edge-verify report BUNDLE --key RUNNER_KEYS [--html OUT.html] [--json] [FILTERS] [--progress]
//! edge-verify --version
//!
//! FILTERS (what a report lists; verification always covers the whole bundle):
//!   --since-time T   proposals submitted at or after T (RFC 3339, or a date: midnight UTC)
//!   --until-time T   proposals submitted before T
//!   --tier N[,N…]    proposals decided at these tiers (repeatable)
//!   --state S[,S…]   proposals in these states (repeatable): committed, refused, awaiting-approval, …
//! ```
//!
//! Exit status: 0 verified, 1 verification failed (the message names the
//! record and the check), 2 usage or I/O error.

use std::ffi::OsString;
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use edge_core::text::line;

use crate::report::{self, Filter, Options, VERIFIER_VERSION};
use crate::{Level, Step, parse_keys, verify_with_progress};

/// Exit status: verified.
pub const EXIT_VERIFIED: u8 = 0;
/// Exit status: the bundle failed verification.
pub const EXIT_FAILED: u8 = 1;
/// Exit status: usage or I/O error.
pub const EXIT_USAGE: u8 = 2;

pub const USAGE: &str = "usage:
  edge-verify BUNDLE --key RUNNER_KEYS [--integrity-only] [--json] [FILTERS] [--progress]
  edge-verify report BUNDLE --key RUNNER_KEYS [--html OUT.html] [--json] [FILTERS] [--progress]
  edge-verify --version

RUNNER_KEYS: a file of trusted runner verifier keys, one per line
(`edge-runner evidence runner-key` prints a runner's).
--json      the verification result and a summary of each proposal, as JSON
--progress  progress on stderr (shown anyway when stderr is a terminal)
FILTERS restrict the proposals a report (or --json) lists; verification
always covers the whole bundle:
  --since-time T   submitted at or after T (RFC 3339, or a date: midnight UTC)
  --until-time T   submitted before T
  --tier N[,N]     decided at these tiers
  --state S[,S]    in these states (committed, refused, awaiting-approval, …)
Exit status: 0 verified, 1 verification failed, 2 usage or I/O error.";

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
    Version,
    Help,
}

fn parse_args(args: Vec<OsString>) -> Result<Parsed, String> {
    let mut it = args.into_iter().peekable();
    let report = it.peek().is_some_and(|a| a == "report");
    if report {
        it.next();
    }
    let mut a = Args {
        report,
        bundle: PathBuf::new(),
        keys: Vec::new(),
        integrity_only: false,
        html: None,
        json: false,
        progress: false,
        filter: Filter::default(),
    };
    let mut bundle = None;
    while let Some(arg) = it.next() {
        let mut value = |name: &str| -> Result<String, String> {
            it.next()
                .ok_or_else(|| format!("{name} needs a value"))?
                .into_string()
                .map_err(|_| format!("{name}: not UTF-8"))
        };
        match arg.to_str() {
            Some("--key") => a.keys.push(PathBuf::from(value("--key")?)),
            Some("--integrity-only") => a.integrity_only = true,
            Some("--html") => a.html = Some(PathBuf::from(value("--html")?)),
            Some("--json") => a.json = true,
            Some("--progress") => a.progress = true,
            Some("--since-time") => a.filter.since = Some(Filter::parse_time(&value("--since-time")?)?),
            Some("--until-time") => a.filter.until = Some(Filter::parse_time(&value("--until-time")?)?),
            Some("--tier") => a.filter.add_tiers(&value("--tier")?)?,
            Some("--state") => a.filter.add_states(&value("--state")?)?,
            Some("-V" | "--version") => return Ok(Parsed::Version),
            Some("-h" | "--help") => return Ok(Parsed::Help),
            Some(s) if s.starts_with('-') => return Err(format!("unknown option {}", line(s))),
            _ if bundle.is_none() => bundle = Some(PathBuf::from(arg)),
            _ => return Err("one bundle at a time".into()),
        }
    }
    a.bundle = bundle.ok_or("no bundle given")?;
    if a.keys.is_empty() {
        return Err("--key RUNNER_KEYS is required: verification needs the runner's public key".into());
    }
    if a.html.is_some() && !a.report {
        return Err("--html writes a report: use `edge-verify report BUNDLE … --html OUT.html`".into());
    }
    if a.report && a.integrity_only {
        return Err("a report needs full verification: drop --integrity-only".into());
    }
    if !a.filter.is_empty() && !a.report && !a.json {
        return Err("filters choose what a report lists: use `edge-verify report …` or --json".into());
    }
    if let (Some(s), Some(u)) = (a.filter.since, a.filter.until)
        && s >= u
    {
        return Err(format!("--since-time {s} is not before --until-time {u}: nothing would be listed"));
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
        Ok(Parsed::Version) => {
            let _ = writeln!(out, "edge-verify {VERIFIER_VERSION}");
            return EXIT_VERIFIED;
        }
        Ok(Parsed::Help) => {
            let _ = writeln!(out, "{USAGE}");
            return EXIT_VERIFIED;
        }
        Err(e) => {
            let _ = writeln!(err, "edge-verify: {e}\n{USAGE}");
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
    let bytes = std::fs::read(&args.bundle).map_err(|e| format!("cannot read {}: {e}", args.bundle.display()))?;
    let level = if args.integrity_only { Level::Integrity } else { Level::Full };
    let mut progress = Progress::new(err, args.progress, tty);
    let result = verify_with_progress(&bytes, &keys, level, &mut |step, done, total| progress.show(step, done, total));
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
        assert!(matches!(parse_args(args(&["--version"])), Ok(Parsed::Version)));
        let err = |a: &[&str]| match parse_args(args(a)) {
            Err(e) => e,
            Ok(_) => panic!("{a:?} parsed"),
        };
        assert!(err(&["b"]).contains("--key"));
        assert!(err(&["b", "--key", "k", "--tier", "x"]).contains("not a tier"));
        assert!(err(&["b", "--key", "k", "--state", "done"]).contains("committed"));
        assert!(err(&["b", "--key", "k", "--tier", "2"]).contains("report"));
        assert!(err(&["b", "--key", "k", "--since-time", "yesterday", "--json"]).contains("RFC 3339"));
        assert!(err(&["b", "--key", "k", "--html", "x.html"]).contains("report"));
        let e = err(&["b", "--key", "k", "--json", "--since-time", "2026-02-01", "--until-time", "2026-01-01"]);
        assert!(e.contains("not before"), "{e}");
        // A hostile option name is shown neutralised.
        assert!(err(&["b", "--key", "k", "--\u{1b}[2J"]).contains("\\u{001b}"));
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
