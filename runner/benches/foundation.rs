//! Foundation benchmark: `cargo bench -p edge-runner --bench foundation`.
//!
//! Reports medians (and ratios taken side by side in one run, since the
//! machine is shared and noisy) for:
//! 1. cold compile of the diagnostic capsule's component;
//! 2. start from the precompiled cache (deserialize + link + instantiate);
//! 3. a full warm governed `exec` of the diagnostic capsule (signature,
//!    manifest, admission, plan, authorize, verify, evidence), reported with
//!    and without the time spent waiting for fsync;
//! 4. the same capsule (plan + verify) run by a bare wasmtime embedding in the
//!    same process, interleaved with (3), like for like: the runner's engine
//!    (same configuration) and file I/O on the calling thread, as the
//!    runner's phases do; given the component's bytes each run, as the
//!    runner is, it finds its compiled form by their SHA-256 (as wasmtime's
//!    own compilation cache does); each phase in its own store and
//!    instance, as the capsule contract runs them. For reference: the
//!    component already in hand, plan and verify in one instance (the old
//!    baseline), and wasmtime's defaults.
//!
//! The warm run is the daemon's: the receipt is made and returned with the
//! answer, no file written per run (`Runner::receipt_files` off, as
//! `edge-runner serve` runs).
//!
//! Targets: cached start ≥ 50× faster than cold compile; governed warm run
//! minus the durable wait (the time spent waiting for the evidence commit's
//! fsync) within 1.5× of the like-for-like bare embedding (issue 14).

mod common;

// The allocator `edge-runner` ships with (runner/src/main.rs), for both
// sides: the governed run and the bare embedding share this process.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::time::{Duration, Instant};

use edge_runner::config::RunnerConfig;
use edge_runner::pipeline::Runner;
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{Config, Engine, Store};
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

#[path = "common/bare.rs"]
mod bare;
use bare::edge_runner::capsule::{host, types};

struct Bare {
    wasi: WasiCtx,
    table: ResourceTable,
}
impl WasiView for Bare {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}
impl types::Host for Bare {}
impl host::Host for Bare {
    async fn log(&mut self, _level: host::Level, _message: String) {}
    async fn report(&mut self, _finding: types::Finding) {}
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn fmt(d: Duration) -> String {
    if d >= Duration::from_millis(1) {
        format!("{:.2} ms", d.as_secs_f64() * 1e3)
    } else {
        format!("{:.1} µs", d.as_secs_f64() * 1e6)
    }
}

fn main() -> anyhow::Result<()> {
    let iters: usize = std::env::var("BENCH_ITERS").ok().and_then(|s| s.parse().ok()).unwrap_or(200);
    let home = tempfile::tempdir()?;
    let h = home.path();
    // A runner home with the diagnostic capsule, packed and signed by the library.
    let (capsule, wasm) = common::diagnostic_capsule(h)?;
    std::fs::write(
        h.join("runner.toml"),
        "[runner]\nname = \"bench\"\ndangerous_run_without_policy = true\n[[signers]]\nname = \"a\"\npublic_key = \"agent.pub\"\n[mounts.certs]\npath = \"certs\"\n",
    )?;

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let mut runner = Runner::open(RunnerConfig::load(&h.join("runner.toml"))?)?;
    runner.receipt_files = false;

    // 1. Cold compile (the runner's engine configuration).
    let engine = runner.sandbox.engine().clone();
    let cold: Vec<Duration> = (0..10)
        .map(|_| {
            let t = Instant::now();
            let c = Component::new(&engine, &wasm).unwrap();
            std::hint::black_box(c);
            t.elapsed()
        })
        .collect();

    // Warm the cache through the runner once.
    let r = rt.block_on(runner.exec(&capsule))?;
    assert_eq!(r.outcome, edge_core::evidence::Outcome::NoChanges, "{:?}", r.refusal);
    let cache_file = runner.sandbox.cache_path(&edge_core::Sha256Digest::of(&wasm));
    assert!(cache_file.exists());

    // 2. Start from the precompiled cache: deserialize + link + instantiate.
    let starts: Vec<Duration> = (0..iters)
        .map(|_| {
            let t = Instant::now();
            let (c, src) = runner.sandbox.load(&wasm, &edge_core::Sha256Digest::of(&wasm)).unwrap();
            assert_eq!(src, edge_runner::sandbox::LoadSource::Cache);
            let pre = runner.sandbox.prepare(&c).unwrap();
            std::hint::black_box(pre);
            t.elapsed()
        })
        .collect();

    // 4. The bare embedding, like for like: the runner's engine (the same
    // configuration: pooling allocator, epoch interruption, stack sizes),
    // the same component, InstancePre reused; per run one store, one
    // instance, plan + verify, file I/O on the calling thread as the
    // runner's phases do. For reference also wasmtime's defaults (a default
    // engine, file operations handed to tokio's blocking pool).
    let bare_engine = engine.clone();
    let bare_component = Component::new(&bare_engine, &wasm)?;
    let mut cfg = Config::new();
    cfg.wasm_component_model(true);
    let default_engine = Engine::new(&cfg)?;
    let default_component = Component::new(&default_engine, &wasm)?;
    let pre = |engine: &Engine, component: &Component| -> anyhow::Result<bare::CapsulePre<Bare>> {
        let mut linker = Linker::<Bare>::new(engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        host::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)?;
        types::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)?;
        Ok(bare::CapsulePre::new(linker.instantiate_pre(component)?)?)
    };
    let (bare_pre, default_pre) = (pre(&bare_engine, &bare_component)?, pre(&default_engine, &default_component)?);
    let certs = h.join("certs");
    let certs = &certs;
    // `like_runner`: the runner's engine and inline file I/O; else
    // wasmtime's defaults.
    // Compiled components by digest: what an embedding given bytes looks up.
    let compiled: std::collections::HashMap<edge_core::Sha256Digest, &bare::CapsulePre<Bare>> =
        [(edge_core::Sha256Digest::of(&wasm), &bare_pre)].into_iter().collect();
    let (compiled, wasm_bytes) = (&compiled, &wasm);
    // `given_bytes`: the component arrives as bytes and is found by digest.
    // `given_bytes`: the component arrives as bytes and is found by digest.
    // Each phase in its own store and instance, as the capsule contract runs
    // them (verify runs after the commit, maybe after days of approval: no
    // guest state carries over); `one_instance`: plan and verify in one
    // instance (reference only: not how phases may run).
    let bare_run = |like_runner: bool, given_bytes: bool, one_instance: bool| {
        let (engine, pre) = if like_runner { (&bare_engine, &bare_pre) } else { (&default_engine, &default_pre) };
        async move {
            let pre = if given_bytes { compiled[&edge_core::Sha256Digest::of(wasm_bytes)] } else { pre };
            let store = || {
                let mut b = WasiCtxBuilder::new();
                b.allow_blocking_current_thread(like_runner);
                b.preopened_dir(certs, "/mnt/certs", FsPerms::ReadOnly).unwrap();
                let mut store = Store::new(engine, Bare { wasi: b.build(), table: ResourceTable::new() });
                if like_runner {
                    // The runner's engine interrupts on epochs: a deadline far away.
                    store.set_epoch_deadline(1 << 40);
                }
                store
            };
            let ctx = |phase| types::Context {
                phase,
                params: vec![("mount".into(), "certs".into()), ("days".into(), "30".into())],
                mounts: vec![types::Mount { name: "certs".into(), guest_path: "/mnt/certs".into(), writable: false }],
            };
            let mut s = store();
            let inst = pre.instantiate_async(&mut s).await.unwrap();
            let plan = inst.call_plan(&mut s, &ctx(types::Phase::Plan)).await.unwrap().unwrap();
            let v = if one_instance {
                inst.call_verify(&mut s, &ctx(types::Phase::Verify), &plan).await
            } else {
                let mut s = store();
                let inst = pre.instantiate_async(&mut s).await.unwrap();
                inst.call_verify(&mut s, &ctx(types::Phase::Verify), &plan).await
            };
            assert!(v.unwrap().unwrap().passed);
        }
    };

    // 3 and 4, interleaved so both see the same machine noise.
    let mut governed = Vec::with_capacity(iters);
    let mut governed_cpu = Vec::with_capacity(iters);
    let mut bare_times = Vec::with_capacity(iters);
    let mut bare_in_hand_times = Vec::with_capacity(iters);
    let mut bare_default_times = Vec::with_capacity(iters);
    for _ in 0..iters {
        let wait0 = runner.log.durable_wait();
        let t = Instant::now();
        let r = rt.block_on(runner.exec(&capsule))?;
        let total = t.elapsed();
        assert_eq!(r.outcome, edge_core::evidence::Outcome::NoChanges);
        let waited = runner.log.durable_wait() - wait0;
        governed.push(total);
        governed_cpu.push(total.saturating_sub(waited));

        let t = Instant::now();
        rt.block_on(bare_run(true, true, false));
        bare_times.push(t.elapsed());

        let t = Instant::now();
        rt.block_on(bare_run(true, false, true));
        bare_in_hand_times.push(t.elapsed());

        let t = Instant::now();
        rt.block_on(bare_run(false, false, true));
        bare_default_times.push(t.elapsed());
    }

    let (cold_m, start_m) = (median(cold), median(starts));
    let (gov_m, gov_nowait_m, bare_m) = (median(governed), median(governed_cpu), median(bare_times));
    println!("edge-runner foundation benchmark ({iters} iterations, medians)");
    println!("  component: cert-expiry ({} KiB)", wasm.len() / 1024);
    println!("  cold compile                         {:>12}", fmt(cold_m));
    println!("  start from precompiled cache         {:>12}", fmt(start_m));
    println!("  governed warm exec (total)           {:>12}", fmt(gov_m));
    println!(
        "  governed, minus the durable wait     {:>12}   (time spent waiting for the evidence commit's fsync taken out)",
        fmt(gov_nowait_m)
    );
    let (bare_default_m, bare_in_hand_m) = (median(bare_default_times), median(bare_in_hand_times));
    println!(
        "  bare, like for like (plan+verify)    {:>12}   (the runner's engine, inline file I/O, given the bytes, an instance per phase)",
        fmt(bare_m)
    );
    println!(
        "  bare, in hand, one instance          {:>12}   (no bytes received; plan and verify in one instance)",
        fmt(bare_in_hand_m)
    );
    println!(
        "  bare, wasmtime defaults              {:>12}   (default engine, file I/O on tokio's blocking pool)",
        fmt(bare_default_m)
    );
    let speedup = cold_m.as_secs_f64() / start_m.as_secs_f64();
    let ratio = gov_nowait_m.as_secs_f64() / bare_m.as_secs_f64();
    println!(
        "  cached start vs cold compile         {speedup:>11.1}x faster   (target >= 50x: {})",
        ok(speedup >= 50.0)
    );
    println!(
        "  governed minus durable wait / bare like for like {ratio:>6.2}x   (target <= 1.5x: {})",
        ok(ratio <= 1.5)
    );
    println!("  governed total / bare like for like  {:>11.2}x", gov_m.as_secs_f64() / bare_m.as_secs_f64());
    println!(
        "  governed minus durable wait / bare in hand, one instance {:>6.2}x   (reference: not the contract's shape)",
        gov_nowait_m.as_secs_f64() / bare_in_hand_m.as_secs_f64()
    );
    println!(
        "  governed minus durable wait / bare with wasmtime defaults {:>6.2}x   (not like for like: reference only)",
        gov_nowait_m.as_secs_f64() / bare_default_m.as_secs_f64()
    );
    Ok(())
}

fn ok(b: bool) -> &'static str {
    if b { "met" } else { "MISSED" }
}
