//! A governed call to an endpoint vs the same call from a bare
//! `wasmtime-wasi-http` embedding: `cargo bench -p edge-runner --bench endpoint_call`.
//!
//! The same component (`hostile-http` in its benign `reads` mode) makes N
//! sequential GET requests to the same local HTTP service, which runs in
//! its own process (this binary, re-executed). Per-call cost is taken as
//! the difference between a run with N calls and one with none, divided by
//! N, so the fixed cost of a run (admission, evidence, instantiation)
//! cancels out on both sides:
//!
//! * governed: `Runner::exec` of the signed capsule (tier 0): every request
//!   goes through the egress gate (endpoint, method, path, headers, phase),
//!   its intent is made durable before it leaves, the runner resolves and
//!   connects to an allowed address, attaches nothing (no credential
//!   configured), reads the response within its limits, records the
//!   outcome;
//! * bare: the runner's engine and the same component, `wasmtime-wasi-http`
//!   linked with a plain sender (connect, HTTP/1.1 handshake, send, read the
//!   body): the same transport, without checks or records; `plan` called
//!   the same way, one instance per run.
//!
//! Both open one connection per request. Reported: medians over
//! `BENCH_ITERS` (default 30) interleaved rounds, the durable wait per call
//! (the intent's fsync, and the outcome's share of the run's last commit),
//! and the ratio of governed minus that wait to bare. A request sent right
//! after a thread has waited is slower than one sent back to back (on this
//! VM a 0.5 ms sleep before each bare request made it 2.6× slower), so the
//! bare calls are also run each after a durable write of their own (a line
//! appended and fsynced by a writer thread, waited for as the governed call
//! waits for its commit), that wait taken out the same way: the like-for-
//! like ratio. Target (issue 15): ≤ 1.3×.

mod common;

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpListener;
use std::time::{Duration, Instant};

use edge_runner::config::RunnerConfig;
use edge_runner::pipeline::Runner;
use http_body_util::{BodyExt, Full};
use wasmtime::Store;
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiBody, WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView};

#[path = "common/bare.rs"]
mod bare;
use bare::edge_runner::capsule::{calls, host, types};

const SERVE_ENV: &str = "ENDPOINT_BENCH_SERVE";

/// The local service: `GET /api/item` → 200 `old`, one request per connection.
fn serve() -> ! {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    println!("{}", listener.local_addr().unwrap().port());
    std::io::stdout().flush().unwrap();
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        std::thread::spawn(move || {
            let mut r = BufReader::new(conn.try_clone().unwrap());
            let mut len = 0usize;
            loop {
                let mut line = String::new();
                if r.read_line(&mut line).unwrap_or(0) == 0 || line.trim().is_empty() {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0; len];
            let _ = r.read_exact(&mut body);
            let mut out = conn;
            let _ = out.write_all(
                b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 3\r\nconnection: close\r\n\r\nold",
            );
        });
    }
    std::process::exit(0)
}

/// The bare embedding's store: WASI, wasi-http with a plain sender.
struct Bare {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
    hooks: PlainSender,
}

impl WasiView for Bare {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}
impl WasiHttpView for Bare {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView { ctx: &mut self.http, table: &mut self.table, hooks: &mut self.hooks }
    }
}
impl types::Host for Bare {}
impl host::Host for Bare {
    async fn log(&mut self, _level: host::Level, _message: String) {}
    async fn report(&mut self, _finding: types::Finding) {}
}
impl calls::Host for Bare {
    async fn propose(&mut self, _call: calls::PlannedCall) {}
    async fn planned(&mut self) -> Vec<calls::PlannedCall> {
        Vec::new()
    }
}

/// Sends every request to the local service: connect, handshake, send,
/// read the whole body (the governed path's transport, without its checks).
struct PlainSender {
    port: u16,
    /// Before each request leaves, wait until a writer thread has appended
    /// a line to a file and fsynced it (as the governed call waits for its
    /// intent's commit), adding the time waited to `waited`: the like-for-
    /// like baseline for what such a wait costs after it.
    durable: Option<std::sync::mpsc::Sender<tokio::sync::oneshot::Sender<()>>>,
    waited: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

/// A thread that appends a line to a file and fsyncs it for each request,
/// then answers.
fn fsync_writer(path: std::path::PathBuf) -> std::sync::mpsc::Sender<tokio::sync::oneshot::Sender<()>> {
    let (tx, rx) = std::sync::mpsc::channel::<tokio::sync::oneshot::Sender<()>>();
    std::thread::spawn(move || {
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path).unwrap();
        for done in rx {
            f.write_all(&[b'x'; 200]).unwrap();
            f.sync_data().unwrap();
            let _ = done.send(());
        }
    });
    tx
}

type IoFuture = Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>;

impl WasiHttpHooks for PlainSender {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        _options: Option<wasmtime_wasi_http::RequestOptions>,
        _fut: IoFuture,
    ) -> Box<dyn Future<Output = Result<(http::Response<WasiBody>, IoFuture), wasmtime_wasi_http::Error>> + Send> {
        let (port, durable, waited) = (self.port, self.durable.clone(), self.waited.clone());
        Box::new(async move {
            if let Some(writer) = durable {
                let t = Instant::now();
                let (done, wait) = tokio::sync::oneshot::channel();
                writer.send(done).map_err(|e| wasmtime_wasi_http::Error::InternalError(Some(e.to_string())))?;
                let _ = wait.await;
                waited.fetch_add(t.elapsed().as_nanos() as u64, std::sync::atomic::Ordering::Relaxed);
            }
            let internal = |e: String| wasmtime_wasi_http::Error::InternalError(Some(e));
            let (parts, body) = request.into_parts();
            let body = body.collect().await.map_err(|e| internal(format!("{e:?}")))?.to_bytes();
            let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
            let req = http::Request::builder()
                .method(parts.method)
                .uri(format!("/api{path}"))
                .header(http::header::HOST, format!("127.0.0.1:{port}"))
                .body(Full::new(body))
                .map_err(|e| internal(e.to_string()))?;
            let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.map_err(|e| internal(e.to_string()))?;
            let _ = tcp.set_nodelay(true);
            let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
                .await
                .map_err(|e| internal(e.to_string()))?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            let resp = sender.send_request(req).await.map_err(|e| internal(e.to_string()))?;
            let (parts, body) = resp.into_parts();
            let bytes = http_body_util::Limited::new(body, 1 << 20)
                .collect()
                .await
                .map_err(|e| internal(e.to_string()))?
                .to_bytes();
            let resp =
                http::Response::from_parts(parts, Full::new(bytes).map_err(|never| match never {}).boxed_unsync());
            Ok((resp, Box::new(async { Ok(()) }) as IoFuture))
        })
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn us(d: Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6)
}

fn main() -> anyhow::Result<()> {
    if std::env::var_os(SERVE_ENV).is_some() {
        serve();
    }
    let iters: usize = std::env::var("BENCH_ITERS").ok().and_then(|s| s.parse().ok()).unwrap_or(30);
    let calls_per_run: usize = std::env::var("BENCH_CALLS").ok().and_then(|s| s.parse().ok()).unwrap_or(50);

    // The service, in its own process.
    let mut server = std::process::Command::new(std::env::current_exe()?)
        .env(SERVE_ENV, "1")
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let mut line = String::new();
    BufReader::new(server.stdout.take().unwrap()).read_line(&mut line)?;
    let port: u16 = line.trim().parse()?;

    let home = tempfile::tempdir()?;
    let h = home.path();
    let wasm = std::fs::read(test_programs::HOSTILE_HTTP)?;
    let key = edge_core::signature::CapsuleSigningKey::generate();
    std::fs::write(h.join("agent.pub"), key.public_key_pem())?;
    std::fs::write(
        h.join("runner.toml"),
        format!(
            "[runner]\nname = \"bench\"\ndangerous_run_without_policy = true\n[[signers]]\nname = \"a\"\npublic_key = \"agent.pub\"\n\
             [endpoints.svc]\nnode = \"svc\"\nurl = \"http://127.0.0.1:{port}/api\"\nmethods = [\"GET\"]\nconnect = [\"127.0.0.1\"]\n\
             [limits.ceiling]\nmemory_mib = 512\ncpu_ms = 60000\nwall_ms = 120000\noutput_kib = 4096\nmax_plan_changes = 10000\n"
        ),
    )?;
    let capsule = |count: usize| -> anyhow::Result<Vec<u8>> {
        let text = format!(
            "name = \"reads\"\nversion = \"0.0.1\"\nkind = \"diagnostic\"\nendpoints = [\"svc\"]\nimports = [\n\
             \"edge-runner:capsule/calls\", \"edge-runner:capsule/host\", \"edge-runner:capsule/types\",\n\
             \"wasi:cli/environment\", \"wasi:cli/exit\", \"wasi:cli/stderr\", \"wasi:cli/stdin\", \"wasi:cli/stdout\",\n\
             \"wasi:cli/terminal-input\", \"wasi:cli/terminal-output\", \"wasi:cli/terminal-stderr\",\n\
             \"wasi:cli/terminal-stdin\", \"wasi:cli/terminal-stdout\", \"wasi:clocks/monotonic-clock\",\n\
             \"wasi:clocks/wall-clock\", \"wasi:filesystem/preopens\", \"wasi:filesystem/types\",\n\
             \"wasi:http/outgoing-handler\", \"wasi:http/types\", \"wasi:io/error\", \"wasi:io/poll\",\n\
             \"wasi:io/streams\", \"wasi:random/insecure\", \"wasi:random/insecure-seed\", \"wasi:random/random\",\n]\n\
             [params]\nattack = \"reads\"\ncount = \"{count}\"\n[limits]\nwall_ms = 60000\ncpu_ms = 30000\n"
        );
        let manifest = edge_core::manifest::Manifest::from_authoring_toml(
            &text,
            edge_core::manifest::ComponentRef { sha256: edge_core::Sha256Digest::of(&wasm), size: wasm.len() as u64 },
        )?;
        let file = edge_core::container::CapsuleFile::new(manifest, wasm.clone())?;
        Ok(file.clone().with_bundle(key.sign_capsule(&file)).to_bytes())
    };
    let (none, many) = (capsule(0)?, capsule(calls_per_run)?);

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let mut runner = Runner::open(RunnerConfig::load(&h.join("runner.toml"))?)?;
    runner.receipt_files = false;
    let governed = |bytes: &[u8]| -> anyhow::Result<(Duration, Duration)> {
        let w0 = runner.log.durable_wait();
        let t = Instant::now();
        let r = rt.block_on(runner.exec(bytes))?;
        let total = t.elapsed();
        anyhow::ensure!(r.outcome == edge_core::evidence::Outcome::NoChanges, "governed run: {:?}", r.refusal);
        Ok((total, runner.log.durable_wait() - w0))
    };
    governed(&none)?;
    governed(&many)?;

    // The bare embedding: the runner's engine, the same component.
    let engine = runner.sandbox.engine().clone();
    let component = Component::new(&engine, &wasm)?;
    let mut linker = Linker::<Bare>::new(&engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
    host::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)?;
    types::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)?;
    calls::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)?;
    let pre = bare::CapsulePre::new(linker.instantiate_pre(&component)?)?;
    let waited = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let writer = fsync_writer(h.join("bare-durable.log"));
    let bare_run = |count: usize, durable: bool| {
        let pre = &pre;
        let engine = &engine;
        let waited = waited.clone();
        let durable = durable.then(|| writer.clone());
        async move {
            let mut store = Store::new(
                engine,
                Bare {
                    wasi: WasiCtxBuilder::new().build(),
                    http: WasiHttpCtx::new(),
                    table: ResourceTable::new(),
                    hooks: PlainSender { port, durable, waited },
                },
            );
            store.set_epoch_deadline(1 << 40);
            let inst = pre.instantiate_async(&mut store).await.unwrap();
            let ctx = types::Context {
                phase: types::Phase::Plan,
                params: vec![("attack".into(), "reads".into()), ("count".into(), count.to_string())],
                mounts: vec![],
            };
            inst.call_plan(&mut store, &ctx).await.unwrap().unwrap();
        }
    };
    rt.block_on(bare_run(calls_per_run, false));

    let n = calls_per_run as u32;
    let (mut gov, mut gov_nowait, mut wait, mut bare) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut bare_durable, mut bare_wait) = (Vec::new(), Vec::new());
    for _ in 0..iters {
        let (t0, w0) = governed(&none)?;
        let (tn, wn) = governed(&many)?;
        gov.push(tn.saturating_sub(t0) / n);
        gov_nowait.push((tn.saturating_sub(wn)).saturating_sub(t0.saturating_sub(w0)) / n);
        wait.push(wn.saturating_sub(w0) / n);
        let t = Instant::now();
        rt.block_on(bare_run(0, false));
        let b0 = t.elapsed();
        let t = Instant::now();
        rt.block_on(bare_run(calls_per_run, false));
        bare.push(t.elapsed().saturating_sub(b0) / n);
        // The same bare calls, each after a durable write of its own (a
        // line fsynced by a writer thread), the time waited taken out as
        // the governed wait is above.
        let w = waited.load(std::sync::atomic::Ordering::Relaxed);
        let t = Instant::now();
        rt.block_on(bare_run(calls_per_run, true));
        let blocked = Duration::from_nanos(waited.load(std::sync::atomic::Ordering::Relaxed) - w);
        bare_durable.push(t.elapsed().saturating_sub(b0).saturating_sub(blocked) / n);
        bare_wait.push(blocked / n);
    }
    let _ = server.kill();
    let (g, gn, w, b) = (median(gov), median(gov_nowait), median(wait), median(bare));
    let (bd, bw) = (median(bare_durable), median(bare_wait));
    let ratio = gn.as_secs_f64() / b.as_secs_f64();
    let like = gn.as_secs_f64() / bd.as_secs_f64();
    println!(
        "governed endpoint call vs bare wasmtime-wasi-http ({iters} rounds of {calls_per_run} calls, medians per call)"
    );
    println!("  governed call (total)                {:>12}", us(g));
    println!("  durable wait per call                {:>12}   (the intent's fsync before the request leaves)", us(w));
    println!("  governed call, minus the durable wait {:>11}", us(gn));
    println!(
        "  bare wasmtime-wasi-http call         {:>12}   (same engine, component and transport; no checks, no records)",
        us(b)
    );
    println!(
        "  bare call after a durable write, minus its wait {:>6}   (its wait {}: a line fsynced by a writer thread)",
        us(bd),
        us(bw)
    );
    println!("  governed minus durable wait / bare   {ratio:>11.2}x   (bare calls back to back, never waiting)");
    println!(
        "  ... / bare after a durable write    {like:>11.2}x   (like for like; target <= 1.3x: {})",
        if like <= 1.3 { "met" } else { "NOT met" }
    );
    println!("  governed total / bare                {:>11.2}x", g.as_secs_f64() / b.as_secs_f64());
    Ok(())
}
