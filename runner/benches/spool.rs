//! Spool benchmark: `cargo bench -p edge-runner --bench spool`.
//!
//! Starts `edge-runner serve` (the real binary, its own process) with only a
//! spool intake (`[spool]`, settle 0s: the files are written under a `.part`
//! name and renamed in, as a careful writer does) on a copy of the
//! start-up benchmark's store of `SPOOL_LOG_RUNS` synthetic runs (default
//! 100000, about a million records), then drops 1,000 small diagnostic
//! capsules (cert-expiry, each under its own name) into the inbox at once
//! and times until every one is answered in the outbox and moved to
//! `done/`. Three rounds; reports files/s (median) and the server's peak
//! RSS. Issue 16 asks for the figure; it sets no target.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

const FILES: usize = 1000;
const ROUNDS: usize = 3;

fn main() -> anyhow::Result<()> {
    let log_runs: usize = std::env::var("SPOOL_LOG_RUNS").ok().and_then(|s| s.parse().ok()).unwrap_or(100_000);
    let (home, records) = common::copied_log_home(log_runs)?;
    let h = home.path();
    let (capsule, _) = common::diagnostic_capsule(h)?;
    std::fs::write(
        h.join("runner.toml"),
        "[runner]\nname = \"bench.example/runner-1\"\nstate_dir = \"state\"\nidentity_key = \"state/identity.key\"\n\
         dangerous_run_without_policy = true\n\
         [[signers]]\nname = \"agent\"\npublic_key = \"agent.pub\"\n[mounts.certs]\npath = \"certs\"\n\
         [spool]\ndir = \"spool\"\nsettle = \"0s\"\npoll = \"50ms\"\n",
    )?;
    let log = h.parent().expect("bench-stores").join("spool-serve.log");
    let (mut server, _) = common::serve_until(h, &log, "spool on ")?;
    // Past the background full check, as the load generator is.
    common::wait_full_check(&log)?;
    let (inbox, done) = (h.join("spool/inbox"), h.join("spool/done"));
    let count_done = || {
        std::fs::read_dir(&done)
            .map(|d| d.filter_map(Result::ok).filter(|e| e.file_name().to_string_lossy().ends_with(".capsule")).count())
            .unwrap_or(0)
    };
    let mut rates = Vec::new();
    for round in 0..ROUNDS {
        let before = count_done();
        let started = Instant::now();
        for i in 0..FILES {
            let name = format!("r{round}-{i:04}.capsule");
            let part = inbox.join(format!(".{name}.part"));
            std::fs::write(&part, &capsule)?;
            std::fs::rename(&part, inbox.join(&name))?;
        }
        while count_done() < before + FILES {
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(600),
                "the spool did not finish: see {}",
                log.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let secs = started.elapsed().as_secs_f64();
        rates.push(FILES as f64 / secs);
        eprintln!("round {round}: {FILES} files in {secs:.2}s");
    }
    let refused = std::fs::read_dir(h.join("spool/refused"))?.count();
    let rss = common::peak_rss_mib(server.id());
    let _ = Command::new("kill").args(["-TERM", &server.id().to_string()]).status();
    let _ = server.wait();
    println!(
        "spool: {FILES} small diagnostic capsules dropped at once (written as .part, renamed in), on a store of \
         {records} records, {ROUNDS} rounds:"
    );
    println!(
        "  {:.1} files/s (median; each claimed, run, answered in the outbox and moved to done/)",
        common::median_f64(rates)
    );
    println!("  server peak RSS (VmHWM): {rss:.1} MiB; refused: {refused} (server log: {})", log.display());
    anyhow::ensure!(refused == 0, "files were refused: see {}", h.join("spool/refused").display());
    Ok(())
}
