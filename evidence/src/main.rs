//! `edge-verify`: check an Edge Runner evidence bundle offline.
//!
//! ```text
//! edge-verify BUNDLE --key RUNNER_KEYS [--integrity-only]
//! edge-verify report BUNDLE --key RUNNER_KEYS [--html OUT.html]
//! ```
//!
//! `RUNNER_KEYS` is a file of trusted runner keys (C2SP verifier keys, one
//! per line; `edge-runner evidence runner-key` prints a runner's). Exit
//! status: 0 verified, 1 verification failed (the message names the record
//! and the check), 2 usage or I/O error.

use std::path::PathBuf;
use std::process::ExitCode;

use edge_evidence::{Level, parse_keys, report, verify};

const USAGE: &str = "usage:
  edge-verify BUNDLE --key RUNNER_KEYS [--integrity-only]
  edge-verify report BUNDLE --key RUNNER_KEYS [--html OUT.html]

RUNNER_KEYS: a file of trusted runner verifier keys, one per line
(`edge-runner evidence runner-key` prints a runner's).
Exit status: 0 verified, 1 verification failed, 2 usage or I/O error.";

struct Args {
    report: bool,
    bundle: PathBuf,
    keys: Vec<PathBuf>,
    integrity_only: bool,
    html: Option<PathBuf>,
}

fn parse_args() -> Result<Args, String> {
    let mut it = std::env::args_os().skip(1).peekable();
    let report = it.peek().is_some_and(|a| a == "report");
    if report {
        it.next();
    }
    let (mut bundle, mut keys, mut integrity_only, mut html) = (None, Vec::new(), false, None);
    while let Some(a) = it.next() {
        match a.to_str() {
            Some("--key") => keys.push(PathBuf::from(it.next().ok_or("--key needs a file")?)),
            Some("--integrity-only") => integrity_only = true,
            Some("--html") => html = Some(PathBuf::from(it.next().ok_or("--html needs a file")?)),
            Some("-h" | "--help") => return Err(String::new()),
            Some(s) if s.starts_with('-') => return Err(format!("unknown option {s}")),
            _ if bundle.is_none() => bundle = Some(PathBuf::from(a)),
            _ => return Err("one bundle at a time".into()),
        }
    }
    let bundle = bundle.ok_or("no bundle given")?;
    if keys.is_empty() {
        return Err("--key RUNNER_KEYS is required: verification needs the runner's public key".into());
    }
    Ok(Args { report, bundle, keys, integrity_only, html })
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("edge-verify: {e}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    let mut keys = Vec::new();
    for k in &args.keys {
        let parsed = std::fs::read_to_string(k).map_err(|e| e.to_string()).and_then(|t| parse_keys(&t));
        match parsed {
            Ok(mut v) => keys.append(&mut v),
            Err(e) => {
                eprintln!("edge-verify: runner keys {}: {e}", k.display());
                return ExitCode::from(2);
            }
        }
    }
    let bytes = match std::fs::read(&args.bundle) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("edge-verify: cannot read {}: {e}", args.bundle.display());
            return ExitCode::from(2);
        }
    };
    let level = if args.integrity_only { Level::Integrity } else { Level::Full };
    let result = verify(&bytes, &keys, level);
    if args.report {
        let (text, html) = match &result {
            Ok(v) => (report::text(v), report::html(v)),
            Err(f) => (report::text_failed(f), report::html_failed(f)),
        };
        print!("{}", edge_core::text::block(&text));
        if let Some(path) = &args.html
            && let Err(e) = std::fs::write(path, html)
        {
            eprintln!("edge-verify: cannot write {}: {e}", path.display());
            return ExitCode::from(2);
        }
    }
    match result {
        Ok(v) => {
            if !args.report {
                println!("{}", edge_core::text::line(&v.summary()));
            }
            ExitCode::SUCCESS
        }
        Err(f) => {
            eprintln!("FAILED: {}", edge_core::text::line(&f.to_string()));
            ExitCode::from(1)
        }
    }
}
