//! Start-up on a long log: `cargo bench -p edge-runner --bench startup`.
//!
//! Runner homes whose stores hold the synthetic log of
//! `edge_evidence::synth` (signed capsules, the example policy, tier-0
//! cleanups and every 20th proposal a tier-2 change approved by two people)
//! at several sizes, written as the runner writes them and signed by the
//! runner's own key; an empty store beside them. In interleaved rounds, for
//! each store, the real binary as its own process:
//!
//! * `edge-runner exec` of the diagnostic capsule (tier 0): wall time of the
//!   whole process and its peak RSS;
//! * `edge-runner serve`: time until it prints `listening on`, and its peak
//!   RSS (VmHWM) then and again 5 s later (the full check runs in the
//!   background after every start).
//!
//! * beside them, `wasmtime run --invoke 'plan(…)'` of the same component
//!   as its own process (precompiled with `wasmtime compile`, as the
//!   runner's exec loads its precompiled cache; the same mount, read-only),
//!   when a `wasmtime` CLI is on `PATH` (or named by `WASMTIME`): the
//!   ungoverned whole-process baseline. (`cargo install wasmtime-cli
//!   --version 48.0.8 --locked`, the runner's wasmtime.) It runs `plan`
//!   only, where `exec` runs plan and verify, admits, decides and records.
//!
//! * then, on the largest store, `exec` handed to a `serve` of that home
//!   (`runner/src/intake/local.rs`: what `exec` does while the runner
//!   serves), once `serve` has finished the full check it runs after a
//!   start, in `STARTUP_HANDED_ROUNDS` (default 100) rounds alternating with
//!   `wasmtime run`, and `exec` alone the same way before `serve` starts;
//!   these are timed bare (no RSS sampler), each ratio against the
//!   `wasmtime run`s of its own loop; and handed over again with the home
//!   switched to the example policy and graph it carries (the bench homes
//!   run with `dangerous_run_without_policy`; an operator's runner has a
//!   policy), its config put back afterwards.
//!
//! Medians, and each size's ratio to the empty store, side by side.
//! Targets (issue 14): ready and exec ≤ 1 s and within 2× of empty; peak
//! RSS ≤ 300 MiB at any size; exec ≤ 1.2× `wasmtime run` on a 1M-record
//! store.
//!
//! `STARTUP_RUNS` (comma-separated synthetic runs per store, ~10 records
//! each; default `10000,100000`) and `STARTUP_ROUNDS` (default 5). Stores
//! are built once into `target/bench-stores/` and reused; records are
//! streamed into the store as they are made, so `STARTUP_RUNS=1000000` (ten
//! million records, ~10 GB of disk) takes several minutes but no more
//! memory than a small one.

mod common;

use anyhow::Context as _;
use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::median_f64 as median;

/// Wall time and peak RSS (MiB) of a whole process.
fn timed(cmd: &mut Command) -> anyhow::Result<(Duration, f64)> {
    common::measured(cmd)
}

/// `serve` until it listens: time to ready, peak RSS then, and 5 s later.
fn serve(runner: &Path, dir: &Path) -> anyhow::Result<(Duration, f64, f64)> {
    let t = Instant::now();
    let mut server = Command::new(runner)
        .args(["serve", "--config", "runner.toml"])
        .current_dir(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let mut line = String::new();
    BufReader::new(server.stdout.take().expect("piped")).read_line(&mut line)?;
    let ready = t.elapsed();
    anyhow::ensure!(line.starts_with("listening on"), "serve printed `{line}`");
    let at_ready = common::peak_rss_mib(server.id());
    std::thread::sleep(Duration::from_secs(5));
    let later = common::peak_rss_mib(server.id());
    let _ = Command::new("kill").args(["-TERM", &server.id().to_string()]).status();
    server.wait()?;
    Ok((ready, at_ready, later))
}

/// A copy of `program` (a path, or a name looked up on `PATH`) written now
/// into `dir`, or None if there is no such program. The runner and the
/// baseline run from copies made alike: one binary ran ~0.5 ms slower from
/// a file written an hour before than from a fresh copy (how its pages sit
/// in the page cache), and a runner just built against an installed
/// `wasmtime` was flattered by it.
fn fresh_copy(program: &str, dir: &Path) -> anyhow::Result<Option<PathBuf>> {
    let found = if program.contains('/') {
        Some(PathBuf::from(program))
    } else {
        std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).map(|d| d.join(program)).find(|f| f.is_file()))
            .unwrap_or_default()
    };
    let Some(from) = found.filter(|f| f.is_file()) else { return Ok(None) };
    std::fs::create_dir_all(dir)?;
    let to = dir.join(from.file_name().unwrap_or(program.as_ref()));
    let _ = std::fs::remove_file(&to);
    std::fs::copy(&from, &to)?;
    Ok(Some(to))
}

/// `wasmtime run --invoke 'plan(…)'` of the precompiled component in `dir`.
fn wasmtime_command(wasmtime: &Path, dir: &Path) -> Command {
    let mut c = Command::new(wasmtime);
    c.current_dir(dir).args([
        "run",
        "--allow-precompiled",
        "--dir",
        "certs::/mnt/certs",
        "--invoke",
        "plan({phase: plan, params: [(\"mount\", \"certs\"), (\"days\", \"30\")], \
         mounts: [{name: \"certs\", guest-path: \"/mnt/certs\", writable: false}]})",
        "component.cwasm",
    ]);
    c
}

/// Wall time of a whole process, nothing else watching it.
fn bare(cmd: &mut Command) -> anyhow::Result<f64> {
    let t = Instant::now();
    let st = cmd.stdout(Stdio::null()).stderr(Stdio::null()).status()?;
    anyhow::ensure!(st.success(), "{cmd:?} failed: {st}");
    Ok(t.elapsed().as_secs_f64())
}

/// Medians of `a` and `b` run in turn `rounds` times, each round starting
/// with the other one than the round before.
fn alternate(
    rounds: usize,
    a: impl Fn() -> anyhow::Result<f64>,
    b: impl Fn() -> anyhow::Result<f64>,
) -> anyhow::Result<(f64, f64)> {
    let (mut xa, mut xb) = (vec![], vec![]);
    for i in 0..rounds {
        if i % 2 == 0 {
            xa.push(a()?);
            xb.push(b()?);
        } else {
            xb.push(b()?);
            xa.push(a()?);
        }
    }
    Ok((median(xa), median(xb)))
}

/// `serve` on a home, started and past the full check it runs after a
/// start (which would share the cores); stopped when dropped.
struct Served(std::process::Child);

impl Served {
    fn start(runner: &Path, dir: &Path) -> anyhow::Result<Self> {
        let mut child = Command::new(runner)
            .args(["serve", "--config", "runner.toml"])
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()?;
        let mut err = BufReader::new(child.stderr.take().expect("piped"));
        let mut line = String::new();
        loop {
            line.clear();
            anyhow::ensure!(err.read_line(&mut line)? > 0, "serve ended before its full check");
            if line.contains("full evidence check") {
                break;
            }
        }
        // Its later lines go nowhere, and never fill the pipe.
        std::thread::spawn(move || std::io::copy(&mut err, &mut std::io::sink()));
        Ok(Served(child))
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.0.id().to_string()]).status();
        let _ = self.0.wait();
    }
}

/// A bench home switched to run under the example policy and graph it
/// carries (`policy/`: its agent as the policy's signer, the `certs` mount
/// mapped to the graph's `tls-certs`) instead of the bench's
/// `dangerous_run_without_policy`, as an operator's runner runs; its config
/// and policy put back as they were when dropped.
struct Governed {
    files: Vec<(PathBuf, String)>,
}

impl Governed {
    fn switch(home: &Path) -> anyhow::Result<Self> {
        let (config, policy) = (home.join("runner.toml"), home.join("policy/policy.toml"));
        let files = vec![
            (config.clone(), std::fs::read_to_string(&config)?),
            (policy.clone(), std::fs::read_to_string(&policy)?),
        ];
        let mut text = files[0].1.clone();
        for (old, new) in [
            ("dangerous_run_without_policy = true\n", ""),
            (
                "[[signers]]\nname = \"agent\"\npublic_key = \"agent.pub\"\n",
                "[policy]\nfile = \"policy/policy.toml\"\ngraph = \"policy/graph.toml\"\n",
            ),
            ("[mounts.certs]\npath = \"certs\"\n", "[mounts.certs]\npath = \"certs\"\nnode = \"tls-certs\"\n"),
        ] {
            anyhow::ensure!(
                text.contains(old),
                "{} has no {old:?} to replace: not a start-up bench home?",
                config.display()
            );
            text = text.replace(old, new);
        }
        let key = std::fs::read_to_string(home.join("agent.pub"))?;
        let signer = format!(
            "\n[[signers]]\nname = \"agent\"\npublic_key = \"\"\"{}\"\"\"\nkinds = [\"diagnostic\", \"remediation\"]\n\
             mounts = [\"*\"]\nwritable_mounts = [\"certs\"]\nrequire_tlog = false\n",
            key.trim()
        );
        let governed = Governed { files };
        std::fs::write(&config, text)?;
        std::fs::write(&policy, format!("{}{signer}", governed.files[1].1))?;
        Ok(governed)
    }
}

impl Drop for Governed {
    fn drop(&mut self) {
        for (path, text) in &self.files {
            let _ = std::fs::write(path, text);
        }
    }
}

fn main() -> anyhow::Result<()> {
    let runs = common::env_list("STARTUP_RUNS", "10000,100000")?;
    let rounds: usize = std::env::var("STARTUP_ROUNDS").ok().and_then(|s| s.parse().ok()).unwrap_or(5);
    let mut homes = vec![common::log_home(0)?];
    for r in runs {
        homes.push(common::log_home(r)?);
    }
    let bin = homes[0].0.parent().context("a bench home has a parent")?.join("bin");
    let runner = fresh_copy(env!("CARGO_BIN_EXE_edge-runner"), &bin)?.context("the runner just built is missing")?;
    let runner = runner.as_path();
    let capsule = |dir: &Path| dir.join("capsule.edgecap");
    for (dir, _) in &homes {
        let (bytes, _) = common::diagnostic_capsule(dir)?;
        std::fs::write(capsule(dir), bytes)?;
        // Warm the component cache (compilation is not what is measured).
        timed(Command::new(runner).current_dir(dir).args(["exec", "capsule.edgecap", "--config", "runner.toml"]))?;
    }
    // The ungoverned baseline, when a wasmtime CLI is at hand.
    let wasmtime = std::env::var("WASMTIME").unwrap_or_else(|_| "wasmtime".into());
    let wasmtime = fresh_copy(&wasmtime, &bin)?.map_or(PathBuf::from(wasmtime), |p| p);
    let baseline = match Command::new(&wasmtime).arg("--version").output() {
        Ok(o) if o.status.success() => {
            let dir = &homes[0].0;
            // The same component (not `diagnostic_capsule`: that makes a new signer key).
            std::fs::copy(test_programs::CERT_EXPIRY, dir.join("component.wasm"))?;
            let compiled = Command::new(&wasmtime)
                .current_dir(dir)
                .args(["compile", "component.wasm", "-o", "component.cwasm"])
                .status()?;
            anyhow::ensure!(compiled.success(), "wasmtime compile failed");
            eprintln!("baseline: {}", String::from_utf8_lossy(&o.stdout).trim());
            Some(dir.clone())
        }
        _ => {
            eprintln!(
                "no `{}` on PATH: the wasmtime run baseline is not measured \
                 (cargo install wasmtime-cli --version 48.0.8 --locked, or set WASMTIME)",
                wasmtime.display()
            );
            None
        }
    };
    let wasmtime_run = |dir: &Path| timed(&mut wasmtime_command(&wasmtime, dir));
    if let Some(dir) = &baseline {
        wasmtime_run(dir)?; // fails loudly here if the invocation is wrong
    }
    let mut wasmtime_s = vec![];
    let n = homes.len();
    let (mut exec_s, mut exec_rss, mut ready_s, mut ready_rss, mut later_rss) =
        (vec![vec![]; n], vec![vec![]; n], vec![vec![]; n], vec![vec![]; n], vec![vec![]; n]);
    for round in 0..rounds {
        eprintln!("round {}/{rounds}", round + 1);
        if let Some(dir) = &baseline {
            wasmtime_s.push(wasmtime_run(dir)?.0.as_secs_f64());
        }
        for (i, (dir, _)) in homes.iter().enumerate() {
            let (t, rss) = timed(Command::new(runner).current_dir(dir).args([
                "exec",
                "capsule.edgecap",
                "--config",
                "runner.toml",
            ]))?;
            exec_s[i].push(t.as_secs_f64());
            exec_rss[i].push(rss);
            let (t, at_ready, later) = serve(runner, dir)?;
            ready_s[i].push(t.as_secs_f64());
            ready_rss[i].push(at_ready);
            later_rss[i].push(later);
        }
    }
    println!("start-up by log size (medians of {rounds} interleaved rounds; ratio to the empty store)");
    println!(
        "{:>10}  {:>9} {:>6} {:>9}  {:>9} {:>6} {:>9} {:>12}",
        "records", "exec s", "ratio", "exec MiB", "ready s", "ratio", "ready MiB", "+5 s MiB"
    );
    let (e0, r0) = (median(exec_s[0].clone()), median(ready_s[0].clone()));
    for (i, (_, records)) in homes.iter().enumerate() {
        let (e, r) = (median(exec_s[i].clone()), median(ready_s[i].clone()));
        println!(
            "{records:>10}  {e:>9.3} {:>6.2} {:>9.1}  {r:>9.3} {:>6.2} {:>9.1} {:>12.1}",
            e / e0,
            median(exec_rss[i].clone()),
            r / r0,
            median(ready_rss[i].clone()),
            median(later_rss[i].clone()),
        );
    }
    if let (Some(dir), Some((home, records))) = (&baseline, homes.last()) {
        let handed_rounds: usize =
            std::env::var("STARTUP_HANDED_ROUNDS").ok().and_then(|s| s.parse().ok()).unwrap_or(100);
        let exec = || {
            bare(Command::new(runner).current_dir(home).args(["exec", "capsule.edgecap", "--config", "runner.toml"]))
        };
        let wasmtime = || bare(&mut wasmtime_command(&wasmtime, dir));
        let alone = alternate(handed_rounds, exec, wasmtime)?;
        let server = Served::start(runner, home)?;
        let handed = alternate(handed_rounds, exec, wasmtime)?;
        drop(server);
        // The same home under a policy, as operators run it: a decision,
        // its input and documents in every run.
        let governed = {
            let _governed = Governed::switch(home)?;
            let server = Served::start(runner, home)?;
            let governed = alternate(handed_rounds, exec, wasmtime)?;
            drop(server);
            governed
        };
        println!(
            "`exec` at {records} records, alone and handed to `serve` ({handed_rounds} rounds each, alternating with `wasmtime run`):"
        );
        for (what, (e, w)) in [("alone", alone), ("handed over", handed), ("handed over, governed", governed)] {
            println!(
                "  exec {what:<21} {:>7.3} ms  wasmtime run {:>7.3} ms  {:>5.2}x   (target <= 1.2x)",
                e * 1e3,
                w * 1e3,
                e / w
            );
        }
    }
    if !wasmtime_s.is_empty() {
        let w = median(wasmtime_s);
        println!("`wasmtime run --invoke 'plan(…)'`, precompiled: {w:.3} s");
        for (i, (_, records)) in homes.iter().enumerate() {
            let e = median(exec_s[i].clone());
            println!("  exec / wasmtime run at {records:>10} records: {:>5.2}x   (target <= 1.2x at 1M)", e / w);
        }
    }
    Ok(())
}
