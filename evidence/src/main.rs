//! `edge-verify`: check an Edge Runner evidence bundle offline. A thin
//! wrapper over [`edge_evidence::cli::run`] (see its docs for the flags).
//!
//! ```text
//! edge-verify BUNDLE --key RUNNER_KEYS [--integrity-only] [--json]
//! edge-verify report BUNDLE --key RUNNER_KEYS [--html OUT.html] [--json] [FILTERS]
//! edge-verify completions SHELL | man --out DIR | --help | --version
//! ```

use std::io::{IsTerminal as _, Write as _};
use std::process::ExitCode;

// A full verification makes and drops millions of small values (parsed
// records, canonical buffers) across threads: mimalloc's per-thread heaps
// do that in about half the time glibc's allocator takes.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let args = std::env::args_os().skip(1).collect();
    let stderr = std::io::stderr();
    let tty = stderr.is_terminal();
    // Everything written to stdout passes through the terminal neutraliser
    // too (defence in depth: the report already neutralises each field).
    let mut out = edge_core::text::Terminal::new(std::io::stdout().lock());
    let code = edge_evidence::cli::run(args, &mut out, &mut stderr.lock(), tty);
    let _ = out.flush();
    ExitCode::from(code)
}
