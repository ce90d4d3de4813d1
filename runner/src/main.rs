//! `edge-runner`: parse the command line, set up logging, call the library.

// Every run makes and drops many small values on the runtime's threads
// (parsed manifests, records, canonical buffers, WASI state): mimalloc's
// per-thread heaps spend less time in the allocator than glibc's
// (`cargo bench -p edge-runner --bench loadgen` reports CPU per run: ~10%
// less). Built without transparent huge pages (`no_thp`, and `main` turns
// them off for the process): see `main`.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    // No transparent huge pages for this process. mimalloc asks for them
    // (its build's `no_thp` stops that) and a kernel set to `always` gives
    // them unasked; a 2 MiB page stays resident while any 4 KiB of it is in
    // use, so under load the allocator's scattered free space was held in
    // whole huge pages: the daemon's peak RSS at 64 runs in flight was 1.5x
    // what it is without them, for no less CPU per run
    // (`cargo bench -p edge-runner --bench loadgen`; docs/operations.md).
    // SAFETY: prctl with these arguments only sets a flag on this process
    // (inherited by its children: the compile helper, this same binary).
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
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
    // `serve` logs at info (JSON lines off a terminal), the rest at warn:
    // see `edge_runner::logging`. The guard writes out queued lines at exit.
    let serving = std::env::args_os().nth(1).is_some_and(|a| a == "serve");
    if serving {
        // `serve` reloads on SIGHUP; until its handler is installed (after
        // the config is read and checked) one must not end the process.
        // SAFETY: first thing, one thread; SIG_IGN is a valid disposition.
        unsafe {
            libc::signal(libc::SIGHUP, libc::SIG_IGN);
        }
    }
    let guard = edge_runner::logging::init(serving);
    let status = edge_runner::cli::run_main();
    drop(guard);
    if serving {
        return std::process::ExitCode::from(status);
    }
    // A one-shot command has flushed what it printed and closed its
    // evidence store (`run_main`): what `exit` would still do is hand every
    // page of the allocator's arenas back to the system one by one
    // (mimalloc's exit handler, ~0.2 ms of an `exec`) for a process whose
    // memory the kernel is about to take back whole.
    // SAFETY: `_exit` ends the process; nothing after it runs.
    unsafe { libc::_exit(i32::from(status)) }
}
