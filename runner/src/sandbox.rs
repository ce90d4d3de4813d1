//! The sandbox: wasmtime (component model, WASI 0.2) configured to deny by
//! default and built, per run, only from a [`Grant`].
//!
//! * **Linking** — only the `capsule` world's imports are ever linked (WASI
//!   cli/clocks/filesystem/io/random and our host interface); sockets and
//!   anything else simply do not exist for a capsule. Admission has already
//!   refused any component importing more than its manifest declares and the
//!   runner grants.
//! * **Files** — each granted mount is a preopen at `/mnt/<name>`, read-only
//!   unless this phase writes to it (only `apply`, and then only the staged
//!   copy). cap-std confines every path, including symlinks, to the preopen.
//! * **Limits** — CPU by epoch ticks counted while the guest runs; wall time
//!   by a tokio timeout around the whole phase, which also fires while the
//!   guest waits on a pollable, and by a second one outside the phase's
//!   thread for a host call that blocks that thread (a FIFO in a mount);
//!   memory, tables and instances by a
//!   [`ResourceLimiter`]; stack by `max_wasm_stack`; stdout/stderr by bounded
//!   pipes; data lifted from the guest by hostcall fuel; host-call counts and
//!   sizes by our host implementation. Every limit maps to a stable reason code.
//! * **Speed** — compiled components are cached on disk by (component digest,
//!   engine compatibility hash) in a runner-owned directory, and kept loaded
//!   and pre-linked in memory by digest; instances come from an
//!   `InstancePre` and the pooling allocator. Each phase runs on a
//!   blocking-pool thread in its own single-thread runtime and does the
//!   guest's file I/O on that thread (`sandbox/phase.rs`), instead of one
//!   thread hand-off per WASI call.

use std::fs;
use std::hash::{Hash as _, Hasher as _};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use edge_core::Sha256Digest;
use edge_core::admission::Grant;
use edge_core::authorize::Decided;
use edge_core::plan::{self as core_plan, MAX_FINDINGS, PlanError, ValidPlan, check_finding};
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, ResourceLimiter, Store, Trap, UpdateDeadline,
};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "capsule",
        imports: { default: async | trappable },
        exports: { default: async },
        with: {
            "wasi:http": wasmtime_wasi_http::p2::bindings::http,
            "wasi": wasmtime_wasi::p2::bindings,
        },
    });
}

mod authority;
pub mod capability;
pub mod compile;
mod convert;
pub mod egress;
mod phase;
pub(crate) mod quota;

pub use authority::{Authority, Prepared};
pub use bindings::CapsulePre;
use bindings::edge_runner::capsule::{calls as wit_calls, host as wit_host, types as wit};
use convert::{finding_from_wit, plan_from_wit, plan_to_wit};
pub use egress::{CallLog, CallMode, Gate, Proposed};
use phase::{BLOCKED_GRACE, OwnedInput, PHASE_RUNTIME, run_phase};

/// What a phase's export call returns: the guest's answer, when it comes.
type CallFuture<'a, R> = std::pin::Pin<Box<dyn Future<Output = wasmtime::Result<R>> + Send + 'a>>;

/// Epoch tick length: the granularity of CPU accounting.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);
/// Most bytes the guest may hand the host in one call (plans, log lines, findings).
pub const HOSTCALL_FUEL_BYTES: usize = 8 << 20;
pub use compile::COMPILE_TIMEOUT;
/// Most host handles (open files, streams, pollables) a capsule may hold.
pub const RESOURCE_TABLE_MAX: usize = 10_000;
/// Most random bytes one `get-random-bytes` call may ask for (wasmtime-wasi's
/// default is 64 MiB, allocated on the host).
pub const MAX_RANDOM_BYTES: u64 = 1 << 20;
/// Most bytes (and entries, at 4 KiB each) `apply` may write
/// into its staged copies, enforced while it writes.
pub const MAX_STAGE_WRITE_BYTES: u64 = crate::staging::MAX_STAGE_BYTES;
/// Longest single log line kept; longer lines are truncated and marked.
const MAX_LOG_LINE: usize = 4096;
/// Where mount `<name>` appears inside the sandbox.
pub fn guest_path(mount: &str) -> String {
    format!("/mnt/{mount}")
}

/// Which export a phase calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Plan,
    Apply,
    Verify,
}

impl Phase {
    pub fn name(self) -> &'static str {
        match self {
            Phase::Plan => "plan",
            Phase::Apply => "apply",
            Phase::Verify => "verify",
        }
    }
}

/// A mount as one phase sees it.
#[derive(Debug, Clone)]
pub struct PhaseMount {
    pub name: String,
    pub host_path: PathBuf,
    pub writable: bool,
}

/// Why a phase did not complete. Each variant has a stable reason code.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum SandboxError {
    #[error("the capsule used more than its CPU budget of {ms} ms in {phase} (epoch deadline)")]
    CpuLimit { phase: &'static str, ms: u64 },
    #[error("the capsule ran longer than its wall-time limit of {ms} ms in {phase} (it may be blocked or sleeping)")]
    WallTime { phase: &'static str, ms: u64 },
    #[error("the capsule tried to grow memory to {desired} bytes, above its limit of {limit} bytes")]
    MemoryLimit { desired: usize, limit: usize },
    #[error("the capsule exceeded a table or instance limit: {0}")]
    ResourceLimit(String),
    #[error("the capsule overflowed its stack (unbounded recursion?)")]
    StackOverflow,
    #[error("the capsule wrote more than its output limit of {limit} bytes (stdout, stderr and log lines)")]
    OutputLimit { limit: usize },
    #[error("the capsule exceeded a host-call limit: {0}")]
    HostcallLimit(String),
    #[error(
        "apply tried to write more than {limit} bytes into its staged copies (counting each new entry as {} bytes); \
         the write failed inside the capsule",
        quota::ENTRY_COST
    )]
    StagingFull { limit: u64 },
    #[error("the capsule trapped in {phase}: {detail}")]
    Trap { phase: &'static str, detail: String },
    #[error("the capsule's {phase} returned an error: {message}")]
    Guest { phase: &'static str, message: String },
    #[error("the capsule's answer is invalid: {0}")]
    Plan(#[from] PlanError),
    #[error("the sandbox could not be set up: {0}")]
    Setup(String),
    #[error("{detail}")]
    Call { reason_code: &'static str, detail: String },
}

impl SandboxError {
    pub fn reason_code(&self) -> &'static str {
        match self {
            SandboxError::CpuLimit { .. } => "sandbox.cpu_limit",
            SandboxError::WallTime { .. } => "sandbox.wall_time",
            SandboxError::MemoryLimit { .. } => "sandbox.memory_limit",
            SandboxError::ResourceLimit(_) => "sandbox.resource_limit",
            SandboxError::StackOverflow => "sandbox.stack_overflow",
            SandboxError::OutputLimit { .. } => "sandbox.output_limit",
            SandboxError::HostcallLimit(_) => "sandbox.hostcall_limit",
            SandboxError::StagingFull { .. } => "apply.too_large",
            SandboxError::Trap { .. } => "sandbox.trap",
            SandboxError::Guest { .. } => "capsule.error",
            SandboxError::Plan(e) => e.reason_code(),
            SandboxError::Setup(_) => "sandbox.setup",
            SandboxError::Call { reason_code, .. } => reason_code,
        }
    }
}

/// What a phase printed and reported, kept whatever the outcome.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Captured {
    pub stdout: String,
    pub stderr: String,
    pub log: Vec<String>,
    pub findings: Vec<core_plan::Finding>,
}

impl Captured {
    pub fn is_empty(&self) -> bool {
        self.stdout.is_empty() && self.stderr.is_empty() && self.log.is_empty() && self.findings.is_empty()
    }
}

/// Limits hit inside the store, recorded so errors are classified by fact,
/// not by parsing messages.
#[derive(Debug, Default)]
enum Hit {
    #[default]
    None,
    Memory {
        desired: usize,
        limit: usize,
    },
    Resource(String),
    Cpu,
    Output,
    Hostcall(String),
}

struct Limiter {
    /// Limit on the sum of all linear memories of the instance.
    memory_bytes: usize,
    memory_total: usize,
    table_elements: usize,
    instances: usize,
    tables: usize,
    memories: usize,
    hit: Hit,
}

impl ResourceLimiter for Limiter {
    fn memory_growing(&mut self, current: usize, desired: usize, _max: Option<usize>) -> wasmtime::Result<bool> {
        let total = self.memory_total.saturating_sub(current).saturating_add(desired);
        if total > self.memory_bytes {
            self.hit = Hit::Memory { desired: total, limit: self.memory_bytes };
            wasmtime::bail!("memory limit: {total} bytes in all memories exceeds {} bytes", self.memory_bytes);
        }
        self.memory_total = total;
        Ok(true)
    }
    fn table_growing(&mut self, _current: usize, desired: usize, _max: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.table_elements {
            self.hit = Hit::Resource(format!("table growth to {desired} elements exceeds {}", self.table_elements));
            wasmtime::bail!("table limit");
        }
        Ok(true)
    }
    fn instances(&self) -> usize {
        self.instances
    }
    fn tables(&self) -> usize {
        self.tables
    }
    fn memories(&self) -> usize {
        self.memories
    }
}

/// Per-run store data. `limiter.hit` is the single record of which limit
/// stopped the guest, shared by the limiter, the epoch callback and the host.
pub struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    limiter: Limiter,
    cpu_ticks_left: u64,
    output_limit: usize,
    output_used: usize,
    log: Vec<String>,
    findings: Vec<core_plan::Finding>,
    /// What `apply` may still write into staged copies (none in other phases).
    write_budget: Option<Arc<quota::WriteBudget>>,
    /// `wasi:http`: its context, and the hooks that check and send every
    /// request (`egress`).
    http: wasmtime_wasi_http::WasiHttpCtx,
    egress: egress::Egress,
}

impl std::fmt::Debug for HostState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostState")
            .field("output_used", &self.output_used)
            .field("log_lines", &self.log.len())
            .field("findings", &self.findings.len())
            .finish_non_exhaustive()
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl wasmtime_wasi_http::WasiHttpView for HostState {
    fn http(&mut self) -> wasmtime_wasi_http::WasiHttpCtxView<'_> {
        wasmtime_wasi_http::WasiHttpCtxView { ctx: &mut self.http, table: &mut self.table, hooks: &mut self.egress }
    }
}

impl wasmtime_wasi_io::IoView for HostState {
    fn table(&mut self) -> &mut ResourceTable {
        &mut self.table
    }
}

impl wit::Host for HostState {}

impl wit_calls::Host for HostState {
    async fn propose(&mut self, call: wit_calls::PlannedCall) -> wasmtime::Result<()> {
        let proposed = match convert::proposed_from_wit(call) {
            Ok(p) => p,
            Err(e) => {
                self.limiter.hit = Hit::Hostcall(format!("calls.propose(): {e}"));
                wasmtime::bail!("refused proposal");
            }
        };
        if let Err(e) = self.egress.gate.propose(proposed) {
            self.limiter.hit = Hit::Hostcall(e);
            wasmtime::bail!("refused proposal");
        }
        Ok(())
    }

    async fn planned(&mut self) -> wasmtime::Result<Vec<wit_calls::PlannedCall>> {
        Ok(self.egress.gate.planned().map(|(c, b, cb)| convert::planned_to_wit(c, b, cb)).collect())
    }
}

impl wit_host::Host for HostState {
    async fn log(&mut self, level: wit_host::Level, message: String) -> wasmtime::Result<()> {
        let mut line = format!("[{}] ", level_name(level));
        if message.len() > MAX_LOG_LINE {
            let cut = (0..=MAX_LOG_LINE).rev().find(|i| message.is_char_boundary(*i)).unwrap_or(0);
            line.push_str(&message[..cut]);
            line.push_str(" …(truncated)");
        } else {
            line.push_str(&message);
        }
        self.output_used += line.len();
        if self.output_used > self.output_limit {
            self.limiter.hit = Hit::Output;
            wasmtime::bail!("output limit exceeded by log lines");
        }
        self.log.push(line);
        Ok(())
    }

    async fn report(&mut self, finding: wit::Finding) -> wasmtime::Result<()> {
        let finding = finding_from_wit(finding);
        if let Err(e) = check_finding(&finding) {
            self.limiter.hit = Hit::Hostcall(format!("report(): {e}"));
            wasmtime::bail!("oversized finding");
        }
        if self.findings.len() >= MAX_FINDINGS {
            self.limiter.hit = Hit::Hostcall(format!("report(): more than {MAX_FINDINGS} findings"));
            wasmtime::bail!("too many findings");
        }
        self.findings.push(finding);
        Ok(())
    }
}

fn level_name(l: wit_host::Level) -> &'static str {
    match l {
        wit_host::Level::Debug => "debug",
        wit_host::Level::Info => "info",
        wit_host::Level::Warn => "warn",
        wit_host::Level::Error => "error",
    }
}

/// Stops the epoch ticker thread when dropped.
struct EpochTicker(Arc<AtomicBool>);

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// The compiled-and-linked environment shared by all runs.
pub struct Sandbox {
    engine: Engine,
    linker: Linker<HostState>,
    cache_dir: PathBuf,
    /// Components already loaded in this process, by digest (bounded).
    loaded: edge_core::bounded::BoundedMap<Sha256Digest, Arc<Loaded>>,
    /// Phases executing at once ([`phases_at_once`]): what bounds the
    /// capsule instances alive, their memory and the threads they run on,
    /// however many runs are in progress.
    phases: tokio::sync::Semaphore,
    /// The semaphore's size; phases executing now and the most at once
    /// since start, counted apart from the semaphore (`/metrics`: the bound
    /// is visible, and a test can see that it holds).
    phases_limit: usize,
    phases_now: AtomicUsize,
    phases_peak: AtomicUsize,
    _ticker: EpochTicker,
}

/// One phase counted in [`Sandbox::executing`] while it lives.
struct PhaseCount<'a>(&'a AtomicUsize);

impl Drop for PhaseCount<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Capsule phases executing now, the most at once since start, and the bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Executing {
    pub now: usize,
    pub peak: usize,
    pub limit: usize,
}

/// Capsule phases executing at once in one process: 4 per core, 4 to
/// [`MAX_PHASES`]. A run holds one only while its capsule runs (not while
/// it waits for its records to be durable, most of its time), so the
/// instances alive — each up to its `memory_mib` — and the threads they run
/// on stay few however many runs are in progress
/// (`server.max_concurrent_runs`).
pub fn phases_at_once() -> usize {
    crate::cores().saturating_mul(4).clamp(4, MAX_PHASES)
}

/// The most phases at once the pool holds even if every capsule uses as
/// much of it as one may (`pool_config`: 16 tables each of 256, 4 memories
/// of 256, 32 core instances of 1,024): past it an instantiation would fail
/// instead of waiting its turn.
pub const MAX_PHASES: usize = 16;

/// Most loaded components kept in memory; past it the cache starts over
/// (each reload is a cheap deserialisation of the on-disk cache entry).
const MAX_LOADED: usize = 64;

/// A component ready to run: compiled (or read from the on-disk cache), its
/// imports as the engine sees them, and, once admission has accepted those
/// imports, its pre-linked instance factory.
pub struct Loaded {
    pub component: Component,
    pub imports: Vec<String>,
    pub source: LoadSource,
    pre: std::sync::OnceLock<Result<CapsulePre<HostState>, String>>,
}

impl std::fmt::Debug for Loaded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loaded").field("imports", &self.imports).field("source", &self.source).finish_non_exhaustive()
    }
}

impl Loaded {
    /// Pre-link for fast instantiation (once per loaded component). Call it
    /// only after admission accepted [`Loaded::imports`].
    ///
    /// # Errors
    /// If the component needs something the linker does not provide.
    pub fn prepare(&self, sandbox: &Sandbox) -> Result<&CapsulePre<HostState>> {
        self.pre
            .get_or_init(|| sandbox.prepare(&self.component).map_err(|e| format!("{e:#}")))
            .as_ref()
            .map_err(|e| anyhow::anyhow!("{e}"))
    }
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox").field("cache_dir", &self.cache_dir).finish_non_exhaustive()
    }
}

/// How a component was obtained (for benchmarks and diagnostics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadSource {
    /// Compiled now, and written to the cache.
    Compiled,
    /// Loaded from the precompiled cache.
    Cache,
}

/// Where instances' memories, tables and stacks come from. The limits are
/// the same either way (the [`ResourceLimiter`] of each store enforces
/// them); what differs is the cost of the first and of the many.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Instances {
    /// Slots reserved once and reused (warm memory kept resident): for a
    /// runner that runs many capsules (`serve`). Reserving the pool costs
    /// a few milliseconds at start and again at exit.
    Pooled,
    /// Allocated for each instance and released after it: for a process
    /// that runs one capsule (`exec`), where the pool's reservation would
    /// be most of the sandbox's cost.
    OnDemand,
}

impl Sandbox {
    /// Build the engine, the deny-by-default linker and the epoch ticker.
    /// `cache_dir` is created (mode 0700) if missing.
    ///
    /// # Errors
    /// If the engine cannot be configured or the cache dir created.
    pub fn new(cache_dir: &Path, max_memory_mib: u64) -> Result<Self> {
        Self::with_instances(cache_dir, max_memory_mib, Instances::Pooled)
    }

    /// As [`Sandbox::new`], with instances allocated as `instances` says.
    ///
    /// # Errors
    /// As [`Sandbox::new`].
    pub fn with_instances(cache_dir: &Path, max_memory_mib: u64, instances: Instances) -> Result<Self> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(cache_dir)
            .with_context(|| format!("cannot create component cache {}", cache_dir.display()))?;
        let mut config = engine_config(max_memory_mib)?;
        if instances == Instances::OnDemand {
            config.allocation_strategy(InstanceAllocationStrategy::OnDemand);
        }
        let engine = Engine::new(&config).map_err(anyhow::Error::from)?;
        let linker = capability::linker(&engine)?;
        let stop = Arc::new(AtomicBool::new(false));
        {
            let engine = engine.clone();
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("epoch-ticker".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(EPOCH_TICK);
                        engine.increment_epoch();
                    }
                })
                .context("cannot start the epoch ticker")?;
        }
        let phases_limit = phases_at_once();
        Ok(Self {
            engine,
            linker,
            cache_dir: cache_dir.to_path_buf(),
            loaded: edge_core::bounded::BoundedMap::new(MAX_LOADED),
            phases: tokio::sync::Semaphore::new(phases_limit),
            phases_limit,
            phases_now: AtomicUsize::new(0),
            phases_peak: AtomicUsize::new(0),
            _ticker: EpochTicker(stop),
        })
    }

    /// Capsule phases executing now, the most at once since start, the
    /// bound. A phase counts while it holds its turn: one refused while
    /// blocked in a host call no longer counts, though its thread may still
    /// be in that call (`docs/operations.md`, known limits).
    pub fn executing(&self) -> Executing {
        Executing {
            now: self.phases_now.load(Ordering::Relaxed),
            peak: self.phases_peak.load(Ordering::Relaxed),
            limit: self.phases_limit,
        }
    }

    /// Count a phase as executing until the returned guard drops.
    fn executing_phase(&self) -> PhaseCount<'_> {
        let now = self.phases_now.fetch_add(1, Ordering::Relaxed) + 1;
        self.phases_peak.fetch_max(now, Ordering::Relaxed);
        PhaseCount(&self.phases_now)
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The cache file for a component under this engine's configuration.
    pub fn cache_path(&self, digest: &Sha256Digest) -> PathBuf {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.engine.precompile_compatibility_hash().hash(&mut h);
        self.cache_dir.join(format!("{}-{:016x}.cwasm", digest.hex(), h.finish()))
    }

    /// Load a component: from the precompiled cache if present, else compile
    /// it and write the cache. `digest` must be the SHA-256 of `bytes`
    /// (the capsule manifest pins it, and the container checked it).
    ///
    /// # Errors
    /// If the bytes are not a valid component, or the cache cannot be written.
    pub fn load(&self, bytes: &[u8], digest: &Sha256Digest) -> Result<(Component, LoadSource)> {
        let path = self.cache_path(digest);
        if path.exists() {
            // SAFETY: the cache directory is created 0700 and written only by
            // this runner, from components it compiled itself; deserialize
            // checks the engine compatibility header.
            match unsafe { Component::deserialize_file(&self.engine, &path) } {
                Ok(c) => return Ok((c, LoadSource::Cache)),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "discarding unusable cache entry");
                    let _ = fs::remove_file(&path);
                }
            }
        }
        let artifact = compile::precompile(&self.engine, bytes)?;
        crate::staging::write_durably(&path, &artifact)?;
        // SAFETY: `artifact` was produced by this engine just now.
        let component = unsafe { Component::deserialize(&self.engine, &artifact) }.map_err(anyhow::Error::from)?;
        Ok((component, LoadSource::Compiled))
    }

    /// [`Sandbox::load`] once per process: later runs of the same component
    /// reuse it (and its pre-linked instance factory) from memory.
    /// `digest` must be the SHA-256 of `bytes`, as for [`Sandbox::load`].
    ///
    /// # Errors
    /// As [`Sandbox::load`].
    pub fn load_shared(&self, bytes: &[u8], digest: &Sha256Digest) -> Result<Arc<Loaded>> {
        if let Some(l) = self.loaded.get(digest) {
            return Ok(l);
        }
        let (component, source) = self.load(bytes, digest)?;
        let imports = self.imports(&component);
        let l = Arc::new(Loaded { component, imports, source, pre: std::sync::OnceLock::new() });
        // (Two runs loading it at once each keep their own: both are valid.)
        self.loaded.insert(*digest, l.clone());
        Ok(l)
    }

    /// The component's imports as the engine sees them (`wasi:io/streams@0.2.6`, …).
    pub fn imports(&self, component: &Component) -> Vec<String> {
        let mut v: Vec<String> =
            component.component_type().imports(&self.engine).map(|(name, _)| name.to_owned()).collect();
        v.sort();
        v
    }

    /// Pre-link a component for fast instantiation.
    ///
    /// # Errors
    /// If the component needs something the linker does not provide.
    pub fn prepare(&self, component: &Component) -> Result<CapsulePre<HostState>> {
        let pre = self.linker.instantiate_pre(component).map_err(|e| anyhow::anyhow!("{e:#}"))?;
        CapsulePre::new(pre).map_err(|e| anyhow::anyhow!("{e:#}"))
    }

    /// Run `plan` with the mounts read-only. Needs a [`Decided`] capsule,
    /// and runs the component admitted for it. Reads to granted endpoints
    /// may leave (recorded in `log`, which comes back); the calls it
    /// proposes come back in the plan, with their bodies.
    pub async fn plan(
        &self,
        decided: &Decided,
        prepared: &Prepared,
        log: CallLog,
    ) -> (Result<(core_plan::Plan, Vec<Proposed>), SandboxError>, Captured, Option<CallLog>) {
        if let Err(e) = prepared.made_for(decided.admitted()) {
            return (Err(e), Captured::default(), Some(log));
        }
        let grant = decided.admitted().grant();
        let gate = Gate::new(CallMode::Plan, prepared.endpoints(), Vec::new(), Some(log));
        let input = prepared.input(&prepared.mounts, &gate);
        let (result, captured) = self
            .run(&prepared.pre, grant, &input, Phase::Plan, |c, s, ctx| {
                Box::pin(async move { c.call_plan(s, &ctx).await })
            })
            .await;
        let result =
            result.and_then(|r| r.map_err(|message| SandboxError::Guest { phase: "plan", message: bounded(message) }));
        let result = gate_checked(&gate, result).and_then(|p| plan_from_wit(p).map_err(SandboxError::Plan));
        let result = result.map(|mut plan| {
            let proposed = gate.take_proposed();
            plan.calls = proposed.iter().map(|p| p.call.clone()).collect();
            (plan, proposed)
        });
        (result, captured, gate.take_log())
    }

    /// Run `apply` against the staged copies of the writable mounts (every
    /// other mount read-only): the preview, before anyone approves. Only
    /// staged copies are ever writable here; the live files change at
    /// commit, which needs the authorization (`plan::commit_allowed`). The
    /// component and the capsule's plan come from the proofs: `plan` must be
    /// the decided capsule's, and `prepared` made for it.
    pub async fn apply(
        &self,
        decided: &Decided,
        plan: &ValidPlan,
        prepared: &Prepared,
        staged: &std::collections::BTreeMap<String, PathBuf>,
    ) -> (Result<(), SandboxError>, Captured) {
        let grant = decided.admitted().grant();
        let checked = prepared.made_for(decided.admitted()).and_then(|()| {
            if plan.capsule() == decided.admitted().capsule().file().digest() {
                prepared.staged_mounts(grant, staged)
            } else {
                Err(SandboxError::Setup("the plan is not the decided capsule's".into()))
            }
        });
        let mounts = match checked {
            Ok(m) => m,
            Err(e) => return (Err(e), Captured::default()),
        };
        // The preview: no request leaves before the plan is authorized.
        let gate = Gate::closed();
        let input = prepared.input(&mounts, &gate);
        let wp = plan_to_wit(plan.plan());
        let (result, captured) = self
            .run(&prepared.pre, grant, &input, Phase::Apply, move |c, s, ctx| {
                Box::pin(async move { c.call_apply(s, &ctx, &wp).await })
            })
            .await;
        let result =
            result.and_then(|r| r.map_err(|message| SandboxError::Guest { phase: "apply", message: bounded(message) }));
        (gate_checked(&gate, result), captured)
    }

    /// Run `apply` for a plan that calls endpoints, after its authorization:
    /// the mounts read-only, and exactly the planned calls may leave, in
    /// order, each once (`bodies`: each planned call's request and
    /// compensation bodies, as the plan's digests name them). Returns the
    /// gate too: how many calls were made and sent (what compensation
    /// undoes).
    pub async fn apply_calls(
        &self,
        run: &Authority,
        bodies: Vec<(Vec<u8>, Vec<u8>)>,
        log: CallLog,
    ) -> (Result<(), SandboxError>, Captured, Arc<Gate>) {
        let plan = run.authorized.plan().plan();
        let grant = run.authorized.admitted().grant();
        let planned = plan.calls.iter().cloned().zip(bodies).map(|(c, (b, cb))| (c, b, cb)).collect();
        let gate = Gate::new(CallMode::Apply, run.prepared.endpoints(), planned, Some(log));
        let input = run.prepared.input(&run.prepared.mounts, &gate);
        let wp = plan_to_wit(plan);
        let (result, captured) = self
            .run(&run.prepared.pre, grant, &input, Phase::Apply, move |c, s, ctx| {
                Box::pin(async move { c.call_apply(s, &ctx, &wp).await })
            })
            .await;
        let result =
            result.and_then(|r| r.map_err(|message| SandboxError::Guest { phase: "apply", message: bounded(message) }));
        let result = gate_checked(&gate, result).and_then(|()| {
            edge_core::calls::CallCursor::resume(&plan.calls, gate.planned_done())
                .finish()
                .map_err(|e| SandboxError::Call { reason_code: e.reason_code(), detail: e.to_string() })
        });
        (result, captured, gate)
    }

    /// Run `verify` with the live mounts read-only; the capsule gets the
    /// plan it was authorized for.
    pub async fn verify(
        &self,
        run: &Authority,
        log: CallLog,
    ) -> (Result<Verification, SandboxError>, Captured, Option<CallLog>) {
        let wp = plan_to_wit(run.authorized.plan().plan());
        let grant = run.authorized.admitted().grant();
        let gate = Gate::new(CallMode::Verify, run.prepared.endpoints(), Vec::new(), Some(log));
        let input = run.prepared.input(&run.prepared.mounts, &gate);
        let (result, captured) = self
            .run(&run.prepared.pre, grant, &input, Phase::Verify, move |c, s, ctx| {
                Box::pin(async move { c.call_verify(s, &ctx, &wp).await })
            })
            .await;
        let result = result
            .and_then(|r| r.map_err(|message| SandboxError::Guest { phase: "verify", message: bounded(message) }));
        let result = gate_checked(&gate, result).and_then(|v| {
            let findings: Vec<_> = v.findings.into_iter().map(finding_from_wit).collect();
            if findings.len() > MAX_FINDINGS || v.summary.len() > core_plan::MAX_TEXT {
                return Err(SandboxError::HostcallLimit("verify returned too much".into()));
            }
            for f in &findings {
                check_finding(f).map_err(SandboxError::Plan)?;
            }
            Ok(Verification { passed: v.passed, summary: v.summary, findings })
        });
        (result, captured, gate.take_log())
    }

    /// Run one phase on a blocking-pool thread, in its own single-thread
    /// runtime: file I/O of the guest then happens on that thread (no
    /// hand-off per WASI call, which was most of a diagnostic's cost), and
    /// the wall-time limit is enforced twice: inside, by a timeout that also
    /// fires while the guest waits on a pollable; outside, here, in case a
    /// host call blocks the thread itself (a FIFO or a hung network file
    /// system in a mount). Then the phase is refused on time and the stuck
    /// thread is left to finish its system call.
    async fn run<R: Send + 'static>(
        &self,
        pre: &CapsulePre<HostState>,
        grant: &Grant,
        input: &PhaseInput<'_>,
        phase: Phase,
        call: impl for<'a> FnOnce(&'a bindings::Capsule, &'a mut Store<HostState>, wit::Context) -> CallFuture<'a, R>
        + Send
        + 'static,
    ) -> (Result<R, SandboxError>, Captured) {
        let wall_ms = grant.limits.wall_ms;
        // Waiting for a turn is not the capsule's time: its limits start after.
        let Ok(_turn) = self.phases.acquire().await else {
            return (Err(SandboxError::Setup("the sandbox is closed".into())), Captured::default());
        };
        let _counted = self.executing_phase();
        let owned = OwnedInput {
            engine: self.engine.clone(),
            pre: pre.clone(),
            grant: grant.clone(),
            params: input.params.clone(),
            mounts: input.mounts.to_vec(),
            env: input.env.to_vec(),
            gate: input.gate.clone(),
        };
        let started = Instant::now();
        let job = tokio::task::spawn_blocking(move || {
            PHASE_RUNTIME.with(|rt| match rt {
                Ok(rt) => rt.block_on(run_phase(owned, phase, call)),
                Err(e) => (Err(SandboxError::Setup(format!("no runtime for the phase: {e}"))), Captured::default()),
            })
        });
        match tokio::time::timeout(Duration::from_millis(wall_ms) + BLOCKED_GRACE, job).await {
            Ok(Ok(done)) => done,
            Ok(Err(e)) => {
                (Err(SandboxError::Setup(format!("the {} phase panicked: {e}", phase.name()))), Captured::default())
            }
            Err(_) => {
                let log = vec![format!(
                    "[runner] {} blocked in a host call and was stopped after {} ms",
                    phase.name(),
                    started.elapsed().as_millis()
                )];
                (
                    Err(SandboxError::WallTime { phase: phase.name(), ms: wall_ms }),
                    Captured { log, ..Captured::default() },
                )
            }
        }
    }
}

/// Everything one phase needs besides the component and the proof token.
#[derive(Debug, Clone, Copy)]
pub struct PhaseInput<'a> {
    pub params: &'a std::collections::BTreeMap<String, String>,
    pub mounts: &'a [PhaseMount],
    pub env: &'a [(String, String)],
    /// What requests may leave (and where they are recorded).
    pub gate: &'a Arc<egress::Gate>,
}

/// The result of `verify`.
#[derive(Debug, Clone)]
pub struct Verification {
    pub passed: bool,
    pub summary: String,
    pub findings: Vec<core_plan::Finding>,
}

fn classify(e: wasmtime::Error, hit: Hit, phase: Phase, cpu_ms: u64, output_limit: usize) -> SandboxError {
    match hit {
        Hit::Cpu => {
            return SandboxError::CpuLimit { phase: phase.name(), ms: cpu_ms };
        }
        Hit::Memory { desired, limit } => return SandboxError::MemoryLimit { desired, limit },
        Hit::Resource(s) => return SandboxError::ResourceLimit(s),
        Hit::Output => {
            return SandboxError::OutputLimit { limit: output_limit };
        }
        Hit::Hostcall(s) => return SandboxError::HostcallLimit(s),
        Hit::None => {}
    }
    match e.downcast_ref::<Trap>() {
        Some(Trap::StackOverflow) => return SandboxError::StackOverflow,
        Some(Trap::Interrupt) => {
            return SandboxError::CpuLimit { phase: phase.name(), ms: cpu_ms };
        }
        _ => {}
    }
    // Host-call limits surface as errors from the host implementation,
    // somewhere in the chain under wasmtime's backtrace context.
    for cause in e.chain() {
        if cause.downcast_ref::<wasmtime::component::ResourceTableError>().is_some() {
            return SandboxError::HostcallLimit(format!(
                "the capsule held more than {RESOURCE_TABLE_MAX} host handles (files, streams, pollables) at once"
            ));
        }
        let m = cause.to_string();
        // The store's component handle table (`set_max_component_handles`;
        // message pinned by the hostile "many-handles" test).
        if m.contains("handle limit exceeded") {
            return SandboxError::HostcallLimit(format!(
                "the capsule held more than {RESOURCE_TABLE_MAX} host handles (files, streams, pollables) at once"
            ));
        }
        // wasmtime-wasi's `get-random-bytes` limit (message pinned by the
        // hostile "random-flood" test).
        if m.starts_with("requested len") && m.contains("exceeds limit") {
            return SandboxError::HostcallLimit(format!(
                "the capsule asked for more than {MAX_RANDOM_BYTES} bytes of random data in one call"
            ));
        }
    }
    let text = trap_text(&e);
    // wasmtime's hostcall-fuel error type is private; its message is pinned
    // by the hostile "huge plan" test.
    if text.contains("fuel allocated for hostcalls") {
        return SandboxError::HostcallLimit(format!(
            "the capsule passed more than {} MiB to the host in one call",
            HOSTCALL_FUEL_BYTES >> 20
        ));
    }
    if text.contains("resource limit") || text.contains("limit of") && text.contains("exceeded") {
        return SandboxError::ResourceLimit(first_line(&text));
    }
    SandboxError::Trap { phase: phase.name(), detail: first_line(&text) }
}

/// A phase whose capsule broke a rule for requests is refused with the
/// first violation, whatever the capsule did with the error it got.
fn gate_checked<R>(gate: &Gate, result: Result<R, SandboxError>) -> Result<R, SandboxError> {
    match (gate.violation(), result) {
        (Some(v), Ok(_) | Err(SandboxError::Guest { .. } | SandboxError::Trap { .. })) => {
            Err(SandboxError::Call { reason_code: v.reason_code, detail: v.detail })
        }
        (_, other) => other,
    }
}

/// Guest-provided text kept in errors and evidence: at most 2 KiB.
fn bounded(mut s: String) -> String {
    const MAX: usize = 2048;
    if s.len() > MAX {
        let cut = (0..=MAX).rev().find(|i| s.is_char_boundary(*i)).unwrap_or(0);
        s.truncate(cut);
        s.push_str(" …(truncated)");
    }
    s
}

/// A trap's cause for a human: the error chain without wasmtime's
/// backtrace context (whose first line says only "error while executing at
/// wasm backtrace:"), the backtrace's innermost frame kept as a hint.
fn trap_text(e: &wasmtime::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    let frame = e
        .downcast_ref::<wasmtime::WasmBacktrace>()
        .and_then(|bt| bt.frames().first().and_then(|f| f.func_name().map(str::to_owned)));
    for cause in e.chain() {
        let m = first_line(&cause.to_string());
        if !m.is_empty() && !m.starts_with("error while executing at wasm backtrace") {
            parts.push(m);
        }
    }
    let mut text = if parts.is_empty() { "the capsule trapped".to_owned() } else { parts.join(": ") };
    if let Some(f) = frame {
        text.push_str(&format!(" (in {f})"));
    }
    text
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or("").chars().take(500).collect()
}

/// The engine configuration. The compile helper leaves out the pooling
/// allocator (it instantiates nothing, and the pool's reservations would
/// count against its memory limit); what it compiles is the same
/// (`compile::tests` pins the compatibility hash).
pub(crate) fn engine_config(max_memory_mib: u64) -> Result<Config> {
    let mut cfg = compiler_config();
    cfg.allocation_strategy(InstanceAllocationStrategy::Pooling(pool_config(max_memory_mib)));
    Ok(cfg)
}

/// What decides the compiled code.
pub(crate) fn compiler_config() -> Config {
    let mut cfg = Config::new();
    cfg.wasm_component_model(true)
        .strategy(wasmtime::Strategy::Cranelift)
        .epoch_interruption(true)
        .max_wasm_stack(512 << 10)
        .async_stack_size(2 << 20)
        .memory_init_cow(true);
    cfg
}

/// The pool's totals and what one component may take of each.
const POOL_COMPONENTS: u32 = 128;
const POOL_CORE_INSTANCES: u32 = 1024;
const CORE_INSTANCES_PER_COMPONENT: u32 = 32;
const POOL_MEMORIES: u32 = 256;
const MEMORIES_PER_COMPONENT: u32 = 4;
const POOL_TABLES: u32 = 256;
const TABLES_PER_COMPONENT: u32 = 16;
const POOL_STACKS: u32 = 128;

// `MAX_PHASES` capsules at once fit in the pool however much of it each takes.
const _: () = {
    let n = MAX_PHASES as u32;
    assert!(n <= POOL_COMPONENTS && n <= POOL_STACKS);
    assert!(n * CORE_INSTANCES_PER_COMPONENT <= POOL_CORE_INSTANCES);
    assert!(n * MEMORIES_PER_COMPONENT <= POOL_MEMORIES);
    assert!(n * TABLES_PER_COMPONENT <= POOL_TABLES);
};

fn pool_config(max_memory_mib: u64) -> PoolingAllocationConfig {
    let max_memory = (max_memory_mib as usize) << 20;
    let mut pool = PoolingAllocationConfig::default();
    pool.total_component_instances(POOL_COMPONENTS)
        .total_core_instances(POOL_CORE_INSTANCES)
        .max_core_instances_per_component(CORE_INSTANCES_PER_COMPONENT)
        .total_memories(POOL_MEMORIES)
        .max_memories_per_component(MEMORIES_PER_COMPONENT)
        .max_memories_per_module(1)
        .total_tables(POOL_TABLES)
        .max_tables_per_component(TABLES_PER_COMPONENT)
        .table_elements(100_000)
        .total_stacks(POOL_STACKS)
        .max_memory_size(max_memory)
        .linear_memory_keep_resident(1 << 20)
        .max_unused_warm_slots(16);
    // `pagemap_scan` (reset only the pages a guest dirtied, found with
    // Linux's PAGEMAP_SCAN) stays off: its scan looks for *present* dirty
    // pages, so a dirty page swapped out is neither reset nor decommitted
    // and the next capsule in the slot could read it (wasmtime PR #14357,
    // open when this was written). What one capsule wrote must never reach
    // the next: the blind reset above is kept.
    pool
}
