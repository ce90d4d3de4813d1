//! Compiling a component, bounded in time *and* memory.
//!
//! The `edge-runner` binary compiles in a child process of itself
//! (`edge-runner __compile-component`, component on stdin,
//! compiled artifact on stdout) under `RLIMIT_DATA` (heap and writable
//! mappings: what Cranelift allocates) and `RLIMIT_CPU`, and the parent
//! kills it at [`COMPILE_TIMEOUT`]. A hostile component that makes the
//! compiler allocate without bound ends that child, not the runner: the
//! capsule is refused `capsule.invalid_component`, naming the limit.
//!
//! A program that embeds the library (tests, benchmarks) compiles on a
//! thread instead, bounded in time only; the binary registers itself as the
//! helper ([`serve_if_asked`]) before anything else runs.

use std::io::{Read as _, Write as _};
use std::os::unix::process::{CommandExt as _, ExitStatusExt as _};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use wasmtime::Engine;

/// Longest a component may take to compile.
pub const COMPILE_TIMEOUT: Duration = Duration::from_secs(60);
/// Most heap (and other writable private memory) the compiler may use.
pub const COMPILE_MEMORY_BYTES: u64 = 2 << 30;
/// The hidden subcommand the binary answers as the compile helper.
pub const SUBCOMMAND: &str = "__compile-component";

/// The binary to run as the compile helper, once it registered itself.
static HELPER: OnceLock<PathBuf> = OnceLock::new();

/// Call first thing in `main`: when this process was started as the compile
/// helper, compile and return its exit code; otherwise register this
/// executable as the helper and return `None`.
pub fn serve_if_asked() -> Option<ExitCode> {
    if std::env::args_os().nth(1).is_none_or(|a| a != SUBCOMMAND) {
        if let Ok(exe) = std::env::current_exe() {
            let _ = HELPER.set(exe);
        }
        return None;
    }
    Some(match helper() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.is::<OutOfMemory>() => {
            let _ = writeln!(std::io::stderr(), "memory allocation failed: {e:#}");
            ExitCode::from(OUT_OF_MEMORY_EXIT)
        }
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "{e:#}");
            ExitCode::FAILURE
        }
    })
}

/// The helper's exit status when an allocation failed that it could report
/// (a fallible read or wasmtime's own out-of-memory error) rather than the
/// allocator aborting: an exit status, which nothing in a component's
/// bytes can forge the way it could shape an error message.
const OUT_OF_MEMORY_EXIT: u8 = 86;

/// An allocation in the helper failed (under its memory limit).
#[derive(Debug, thiserror::Error)]
#[error("out of memory")]
struct OutOfMemory;

/// The helper: component on stdin, compiled artifact on stdout.
fn helper() -> Result<()> {
    let mut bytes = Vec::new();
    let max = edge_core::container::MAX_COMPONENT_BYTES;
    std::io::stdin().take(max + 1).read_to_end(&mut bytes).map_err(|e| match e.kind() {
        std::io::ErrorKind::OutOfMemory => anyhow::Error::new(OutOfMemory),
        _ => e.into(),
    })?;
    if bytes.len() as u64 > max {
        bail!("the component is larger than {max} bytes");
    }
    let wasmtime_error = |e: wasmtime::Error| {
        if e.is::<wasmtime::OutOfMemory>() { anyhow::Error::new(OutOfMemory) } else { anyhow::anyhow!("{e:#}") }
    };
    let engine = Engine::new(&super::compiler_config()).map_err(wasmtime_error)?;
    let artifact = engine.precompile_component(&bytes).map_err(wasmtime_error)?;
    std::io::stdout().lock().write_all(&artifact)?;
    Ok(())
}

/// Compile `bytes`: in the helper process when the binary registered one,
/// else on a thread. One compilation at a time (hostile submissions cannot
/// stack them).
pub(super) fn precompile(engine: &Engine, bytes: &[u8]) -> Result<Vec<u8>> {
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    match HELPER.get() {
        Some(exe) => in_child(exe, bytes, COMPILE_MEMORY_BYTES, COMPILE_TIMEOUT),
        None => on_thread(engine, bytes),
    }
}

/// Compile in a child process of `exe` (the `edge-runner` binary) under a
/// memory limit and a deadline.
///
/// # Errors
/// The component does not compile, or the compiler exceeded `memory` bytes
/// or `timeout`.
pub fn in_child(exe: &Path, bytes: &[u8], memory: u64, timeout: Duration) -> Result<Vec<u8>> {
    let cpu_secs = timeout.as_secs() + 1;
    let mut cmd = Command::new(exe);
    cmd.arg(SUBCOMMAND).env_clear().stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    // SAFETY: only setrlimit (async-signal-safe) runs between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            for (resource, value) in [(libc::RLIMIT_DATA, memory), (libc::RLIMIT_CPU, cpu_secs), (libc::RLIMIT_CORE, 0)]
            {
                let limit = libc::rlimit { rlim_cur: value, rlim_max: value };
                if libc::setrlimit(resource, &limit) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().with_context(|| format!("cannot start the compiler {}", exe.display()))?;
    let mut stdin = child.stdin.take().context("compiler stdin")?;
    let mut stdout = child.stdout.take().context("compiler stdout")?;
    let mut stderr = child.stderr.take().context("compiler stderr")?;
    let input = bytes.to_vec();
    // A helper that dies early closes its stdin: the error shows below.
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        stdout.read_to_end(&mut out).map(|_| out)
    });
    let errors = std::thread::spawn(move || {
        let mut out = String::new();
        let _ = (&mut stderr).take(4096).read_to_string(&mut out);
        out
    });
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if started.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "compiling the component took longer than {} s: refused (simplify the component or split it)",
                timeout.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let _ = writer.join();
    let artifact = reader.join().map_err(|_| anyhow::anyhow!("compiler output reader panicked"))??;
    let message = errors.join().unwrap_or_default();
    let message = edge_core::text::line(message.trim()).into_owned();
    if status.success() {
        return Ok(artifact);
    }
    // Out of memory: the allocator aborts, or the helper says so by its
    // exit status (a failed read or wasmtime's own out-of-memory error).
    let aborted = matches!(status.signal(), Some(libc::SIGABRT | libc::SIGSEGV | libc::SIGKILL));
    if (aborted && message.contains("memory allocation")) || status.code() == Some(i32::from(OUT_OF_MEMORY_EXIT)) {
        bail!(
            "compiling the component needed more than {} MiB of memory: refused (simplify the component or split it)",
            memory >> 20
        );
    }
    match status.signal() {
        Some(libc::SIGXCPU) => bail!(
            "compiling the component used more than {cpu_secs} s of CPU: refused (simplify the component or split it)"
        ),
        Some(sig) => bail!("the compiler stopped on signal {sig}: {message}"),
        None => bail!("{message}"),
    }
}

/// Compile on a thread, refused after [`COMPILE_TIMEOUT`] (a compilation
/// that times out cannot be cancelled inside Cranelift: its thread finishes
/// in the background and its result is dropped).
fn on_thread(engine: &Engine, bytes: &[u8]) -> Result<Vec<u8>> {
    let (engine, bytes) = (engine.clone(), bytes.to_vec());
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    std::thread::Builder::new().name("compile".into()).spawn(move || {
        let _ = tx.send(engine.precompile_component(&bytes).map_err(|e| anyhow::anyhow!("{e:#}")));
    })?;
    match rx.recv_timeout(COMPILE_TIMEOUT) {
        Ok(r) => r,
        Err(_) => bail!(
            "compiling the component took longer than {} s: refused (simplify the component or split it)",
            COMPILE_TIMEOUT.as_secs()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_helper_compiles_what_the_runner_loads() {
        // The runner deserialises what the helper compiled: their engines
        // must agree on everything that decides the code.
        let runner = Engine::new(&super::super::engine_config(512).unwrap()).unwrap();
        let helper = Engine::new(&super::super::compiler_config()).unwrap();
        let hash = |e: &Engine| {
            use std::hash::{Hash as _, Hasher as _};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            e.precompile_compatibility_hash().hash(&mut h);
            h.finish()
        };
        assert_eq!(hash(&runner), hash(&helper));
    }
}
