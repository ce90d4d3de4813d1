//! `edge-runner`: parse the command line, set up logging, call the library.

fn main() -> std::process::ExitCode {
    // Started as the compile helper (a child of the runner, under memory
    // and CPU limits)? Compile and exit. Else this binary is the helper.
    if let Some(code) = edge_runner::sandbox::compile::serve_if_asked() {
        return code;
    }
    // glibc gives every thread that allocates its own arena (64 MiB heaps)
    // and keeps freed memory in each: under concurrent runs that, not live
    // data, was most of the daemon's peak RSS. Two arenas serve two cores.
    // SAFETY: called first thing, before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("EDGE_RUNNER_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        // Log lines carry capsule- and client-supplied text (errors, paths):
        // every line goes through the neutralising stream, and the logger
        // writes no colour codes of its own (they would be escaped, and they
        // do not belong in files or the journal).
        .with_ansi(false)
        .with_writer(|| edge_core::text::Terminal::new(std::io::stderr()))
        .init();
    edge_runner::cli::run_main()
}
