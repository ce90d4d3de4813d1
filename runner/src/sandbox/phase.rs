//! One phase of a capsule, on the thread that runs it: the store built
//! from the grant (preopens, env, limits, epoch deadline), the instance, the
//! call, and what it left behind (captured output, the limit it hit).

use super::*;

/// What one phase needs, owned (it runs on another thread).
pub(super) struct OwnedInput {
    pub(super) engine: Engine,
    pub(super) pre: CapsulePre<HostState>,
    pub(super) grant: Grant,
    pub(super) params: std::collections::BTreeMap<String, String>,
    pub(super) mounts: Vec<PhaseMount>,
    pub(super) env: Vec<(String, String)>,
    pub(super) gate: Arc<egress::Gate>,
}

/// How long past its wall time a phase blocked in a host call is waited for.
pub(super) const BLOCKED_GRACE: Duration = Duration::from_millis(500);

thread_local! {
    /// The single-thread runtime phases run on, one per blocking-pool thread.
    pub(super) static PHASE_RUNTIME: std::io::Result<tokio::runtime::Runtime> =
        tokio::runtime::Builder::new_current_thread().enable_all().build();
}

pub(super) async fn run_phase<R: Send + 'static>(
    owned: OwnedInput,
    phase: Phase,
    call: impl for<'a> FnOnce(&'a bindings::Capsule, &'a mut Store<HostState>, wit::Context) -> CallFuture<'a, R> + Send,
) -> (Result<R, SandboxError>, Captured) {
    let OwnedInput { engine, pre, grant, params, mounts, env, gate } = owned;
    let input = PhaseInput { params: &params, mounts: &mounts, env: &env, gate: &gate };
    let limits = &grant.limits;
    let output_limit = (limits.output_kib as usize) * 1024;
    let stdout = MemoryOutputPipe::new(output_limit);
    let stderr = MemoryOutputPipe::new(output_limit);
    let store = new_store(&engine, &grant, &input, phase, &stdout, &stderr);
    let mut store = match store {
        Ok(s) => s,
        Err(e) => {
            return (Err(SandboxError::Setup(format!("{e:#}"))), Captured::default());
        }
    };
    let ctx = wit::Context {
        phase: match phase {
            Phase::Plan => wit::Phase::Plan,
            Phase::Apply => wit::Phase::Apply,
            Phase::Verify => wit::Phase::Verify,
        },
        params: input.params.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        mounts: input
            .mounts
            .iter()
            .map(|m| wit::Mount { name: m.name.clone(), guest_path: guest_path(&m.name), writable: m.writable })
            .collect(),
    };
    let wall = Duration::from_millis(limits.wall_ms);
    let started = Instant::now();
    let outcome = tokio::time::timeout(wall, async {
        let instance = pre.instantiate_async(&mut store).await?;
        call(&instance, &mut store, ctx).await
    })
    .await;
    let elapsed = started.elapsed();
    let data = store.data_mut();
    let mut captured = Captured {
        stdout: String::from_utf8_lossy(&stdout.contents()).into_owned(),
        stderr: String::from_utf8_lossy(&stderr.contents()).into_owned(),
        log: std::mem::take(&mut data.log),
        findings: std::mem::take(&mut data.findings),
    };
    let output_used = data.output_used + captured.stdout.len() + captured.stderr.len();
    tracing::debug!(phase = phase.name(), ?elapsed, "phase finished");
    let hit = std::mem::take(&mut data.limiter.hit);
    let staging_full = data.write_budget.as_ref().filter(|b| b.exhausted()).map(|b| b.limit());
    let result = match outcome {
        Err(_elapsed) => Err(SandboxError::WallTime { phase: phase.name(), ms: limits.wall_ms }),
        Ok(Ok(r)) => Ok(r),
        Ok(Err(e)) => Err(classify(e, hit, phase, limits.cpu_ms, output_limit)),
    };
    // A full pipe means the guest tried to write more than the limit,
    // whatever it did with the resulting error: refuse the phase.
    let result = match result {
        Ok(_) | Err(SandboxError::Guest { .. }) | Err(SandboxError::Trap { .. })
            if stdout.contents().len() >= output_limit
                || stderr.contents().len() >= output_limit
                || output_used > output_limit.saturating_mul(2) =>
        {
            Err(SandboxError::OutputLimit { limit: output_limit })
        }
        other => other,
    };
    // A write refused for lack of staging budget refuses the phase, whatever
    // the capsule did with the error.
    let result = match (staging_full, result) {
        (Some(limit), Ok(_) | Err(SandboxError::Guest { .. } | SandboxError::Trap { .. })) => {
            Err(SandboxError::StagingFull { limit })
        }
        (_, other) => other,
    };
    if result.is_err() {
        captured.log.push(format!("[runner] {} ended after {} ms", phase.name(), elapsed.as_millis()));
    }
    (result, captured)
}

fn new_store(
    engine: &Engine,
    grant: &Grant,
    input: &PhaseInput<'_>,
    phase: Phase,
    stdout: &MemoryOutputPipe,
    stderr: &MemoryOutputPipe,
) -> Result<Store<HostState>> {
    let limits = &grant.limits;
    let mut b = WasiCtxBuilder::new();
    b.stdout(stdout.clone()).stderr(stderr.clone());
    // Deny the network explicitly, even though sockets are never linked.
    b.allow_tcp(false).allow_udp(false).allow_ip_name_lookup(false);
    b.allow_blocking_current_thread(true);
    super::capability::configure(&mut b, grant, input, phase)?;
    let mut table = ResourceTable::new();
    table.set_max_capacity(super::RESOURCE_TABLE_MAX);
    let limiter = Limiter {
        memory_bytes: (limits.memory_mib as usize) << 20,
        memory_total: 0,
        table_elements: 100_000,
        instances: 32,
        tables: 16,
        memories: 4,
        hit: Hit::None,
    };
    let cpu_ticks = limits.cpu_ms.div_ceil(EPOCH_TICK.as_millis() as u64).max(1);
    let mut store = Store::new(
        engine,
        HostState {
            wasi: b.build(),
            table,
            limiter,
            cpu_ticks_left: cpu_ticks,
            output_limit: (limits.output_kib as usize) * 1024,
            output_used: 0,
            log: Vec::new(),
            findings: Vec::new(),
            write_budget: (phase == Phase::Apply).then(|| quota::WriteBudget::new(MAX_STAGE_WRITE_BYTES)),
            http: wasmtime_wasi_http::WasiHttpCtx::new(),
            egress: egress::Egress { gate: input.gate.clone() },
        },
    );
    store.limiter(|s| &mut s.limiter);
    store.set_hostcall_fuel(HOSTCALL_FUEL_BYTES);
    store.set_max_component_handles(RESOURCE_TABLE_MAX);
    // Count a tick each time the guest is still running when the epoch
    // advances; yield so the wall-time timeout can fire too.
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(|mut ctx| {
        let data = ctx.data_mut();
        if data.cpu_ticks_left <= 1 {
            data.limiter.hit = Hit::Cpu;
            return Err(wasmtime::Error::msg("cpu budget exhausted"));
        }
        data.cpu_ticks_left -= 1;
        Ok(UpdateDeadline::Yield(1))
    });
    Ok(store)
}
