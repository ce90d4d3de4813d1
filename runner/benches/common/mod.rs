//! Shared by the benchmarks: a runner home holding the diagnostic capsule.

use std::path::Path;

/// In `home`: a `certs` directory with two sample certificates and
/// `agent.pub`; returns the cert-expiry capsule, packed and signed by the
/// library with that agent key, and its component bytes.
#[allow(dead_code)] // not every benchmark uses every helper
pub fn diagnostic_capsule(home: &Path) -> anyhow::Result<(Vec<u8>, Vec<u8>)> {
    let root = Path::new(test_programs::ROOT);
    let wasm = std::fs::read(test_programs::CERT_EXPIRY)?;
    std::fs::create_dir_all(home.join("certs"))?;
    for f in ["legacy-billing.pem", "intranet.crt"] {
        std::fs::copy(root.join("examples/sample/certs").join(f), home.join("certs").join(f))?;
    }
    let key = edge_core::signature::CapsuleSigningKey::generate();
    std::fs::write(home.join("agent.pub"), key.public_key_pem())?;
    let manifest_text = std::fs::read_to_string(root.join("examples/capsules/cert-expiry/capsule.toml"))?;
    let manifest = edge_core::manifest::Manifest::from_authoring_toml(
        &manifest_text,
        edge_core::manifest::ComponentRef { sha256: edge_core::Sha256Digest::of(&wasm), size: wasm.len() as u64 },
    )?;
    let file = edge_core::container::CapsuleFile::new(manifest, wasm.clone())?;
    Ok((file.clone().with_bundle(key.sign_capsule(&file)).to_bytes(), wasm))
}

/// The example graph plus `nodes` services that all depend, in layers of
/// fan-out 8, on `payments-config`; `owner_salt` varies the owners (a graph
/// with another digest, same shape).
#[allow(dead_code)] // not every benchmark uses every helper
pub fn wide_graph(nodes: usize, owner_salt: usize) -> anyhow::Result<String> {
    let root = Path::new(test_programs::ROOT);
    let mut g = std::fs::read_to_string(root.join("examples/policy/graph.toml"))?;
    for i in 0..nodes {
        let dep = if i < 8 { "payments-config".to_owned() } else { format!("svc-{:05}", i / 8 - 1) };
        g.push_str(&format!(
            "\n[[nodes]]\nid = \"svc-{i:05}\"\nkind = \"service\"\nowner = \"team-{}\"\ncriticality = \"{}\"\ndepends_on = [\"{dep}\"]\n",
            (i + owner_salt) % 50,
            ["low", "medium", "high"][i % 3]
        ));
    }
    Ok(g)
}

/// The `p` quantile (0..=1) of sorted durations (zero when empty).
#[allow(dead_code)] // not every benchmark uses every helper
pub fn percentile(sorted: &[std::time::Duration], p: f64) -> std::time::Duration {
    if sorted.is_empty() {
        return std::time::Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

/// A process's peak resident set (VmHWM), in MiB.
#[allow(dead_code)] // not every benchmark uses every helper
pub fn peak_rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// CPU time (user + system) a process has used so far, in milliseconds
/// (`/proc/<pid>/stat`, clock ticks of 10 ms); `None` for "self".
#[allow(dead_code)] // not every benchmark uses every helper
pub fn cpu_ms(pid: Option<u32>) -> f64 {
    let path = pid.map_or_else(|| "/proc/self/stat".to_owned(), |p| format!("/proc/{p}/stat"));
    let stat = std::fs::read_to_string(path).unwrap_or_default();
    // Fields after the command name (which may hold spaces) in parentheses.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are the 14th and 15th fields: the 12th and 13th
    // after `)` (the first of which is the state letter).
    let field = |i: usize| f.get(i).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
    let ticks = field(11) + field(12);
    ticks as f64 * 1000.0 / clock_ticks() as f64
}

#[allow(dead_code)] // not every benchmark uses every helper
fn clock_ticks() -> i64 {
    // SAFETY: sysconf reads a constant.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t } else { 100 }
}

/// Fill the new, empty evidence store of the runner `config` describes
/// with the synthetic log of `spec` (`edge_evidence::synth`: signed
/// capsules, the example policy, tier-0 cleanups and tier-2 changes
/// approved by two people), signed by the runner's own identity key, as
/// the runner would have written it: records, artifacts, the persisted
/// Merkle tree, the fold (built at the first open) and a checkpoint, kept
/// outside the store too. Returns the records and the database's bytes.
#[allow(dead_code)] // not every benchmark uses every helper
pub fn fill_store(
    config: &edge_runner::config::RunnerConfig,
    spec: &edge_evidence::synth::Spec,
) -> anyhow::Result<(u64, u64)> {
    use edge_runner::store::log::EvidenceLog;
    let t = std::time::Instant::now();
    let evidence = config.state_dir.join("evidence");
    drop(EvidenceLog::open(&evidence)?); // the store's tables, as the runner makes them
    let key = edge_runner::keys::load_signing_key(&config.identity_key)?;
    let mut db = rusqlite::Connection::open(evidence.join("evidence.db"))?;
    let tx = db.transaction()?;
    // Records are inserted as they are made: memory does not grow with the log.
    let artifacts = {
        let mut insert = tx.prepare(
            "INSERT INTO records (seq, run, type, time, prev, hash, body) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?;
        let mut failed: Option<anyhow::Error> = None;
        let artifacts = edge_evidence::synth::stream_signed_by(&config.name, spec, key, &mut |line| {
            if failed.is_some() {
                return;
            }
            let inserted =
                serde_json::from_str::<edge_core::evidence::Record>(line).map_err(anyhow::Error::from).and_then(|r| {
                    insert.execute(rusqlite::params![
                        r.seq as i64,
                        r.run,
                        r.event_type(),
                        r.time,
                        r.prev.to_string(),
                        edge_core::Sha256Digest::of(line.as_bytes()).to_string(),
                        line
                    ])?;
                    Ok(())
                });
            if let Err(e) = inserted {
                failed = Some(e);
            }
        });
        if let Some(e) = failed {
            return Err(e);
        }
        artifacts
    };
    for (d, bytes) in &artifacts {
        tx.execute(
            "INSERT INTO artifacts (digest, size, bytes) VALUES (?1, ?2, ?3)",
            rusqlite::params![d.to_string(), bytes.len() as i64, bytes],
        )?;
    }
    // The tree's hashes, built (and every record checked) as for a store
    // migrated from schema 1.
    edge_runner::store::tree::migrate(&tx)?;
    tx.commit()?;
    drop((db, artifacts));
    // Opened as the runner opens it (the fold is built from the records),
    // then a checkpoint by the runner's key, kept outside the store too.
    let log = EvidenceLog::open(&evidence)?;
    let signer = std::sync::Arc::new(edge_runner::identity::load_identity(&config.store_view())?);
    log.checkpoint(&signer, &config.name)?;
    edge_runner::store::trust::publish_now(&evidence)?;
    let records = log.len();
    drop(log);
    let bytes = std::fs::metadata(evidence.join("evidence.db"))?.len();
    eprintln!("made a store of {records} records ({:.1} MiB) in {:.1?}", bytes as f64 / (1 << 20) as f64, t.elapsed());
    Ok((records, bytes))
}

/// Run `cmd` to completion (stdout and stderr discarded): its wall time and
/// peak resident set in MiB. The peak is sampled from the child's own
/// `VmHWM` every millisecond while the parent waits: `wait4`'s `ru_maxrss`
/// would also count the parent's memory, which the child's address space
/// held between `vfork` and `exec`.
#[allow(dead_code)] // not every benchmark uses every helper
pub fn measured(cmd: &mut std::process::Command) -> anyhow::Result<(std::time::Duration, f64)> {
    use std::sync::atomic::{AtomicBool, Ordering};
    let t = std::time::Instant::now();
    let mut child = cmd.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::piped()).spawn()?;
    let pid = child.id();
    let done = std::sync::Arc::new(AtomicBool::new(false));
    let sampler = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut peak: f64 = 0.0;
            while !done.load(Ordering::Relaxed) {
                peak = peak.max(peak_rss_mib(pid));
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            peak
        })
    };
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().expect("piped"), &mut err)?;
    let status = child.wait()?;
    let took = t.elapsed();
    done.store(true, Ordering::Relaxed);
    let peak = sampler.join().expect("sampler");
    anyhow::ensure!(status.success(), "{cmd:?} failed ({status}): {err}");
    Ok((took, peak))
}

/// The median of `v` (which must not be empty).
#[allow(dead_code)] // not every benchmark uses every helper
pub fn median_f64(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// A runner home for the log-size benchmarks (TLS, the diagnostic
/// capsule's signer and mount, no policy), its store filled with `runs`
/// synthetic runs (`edge_evidence::synth`: signed capsules, the example
/// policy, tier-0 cleanups and every 20th proposal a tier-2 change approved
/// by two people; ~10 records a run); built once into
/// `target/bench-stores/`, then reused. Returns the home and its records.
#[allow(dead_code)] // not every benchmark uses every helper
pub fn log_home(runs: usize) -> anyhow::Result<(std::path::PathBuf, u64)> {
    const NAME: &str = "bench.example/runner-1";
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-stores");
    let dir = root.join(format!("startup-{runs}"));
    let done = dir.join("ready");
    if !done.exists() {
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        edge_runner::init::init(&dir, NAME, "127.0.0.1:0", "edge-runner")?;
        diagnostic_capsule(&dir)?;
        std::fs::write(
            dir.join("runner.toml"),
            format!(
                "[runner]\nname = \"{NAME}\"\nstate_dir = \"state\"\nidentity_key = \"state/identity.key\"\n\
                 dangerous_run_without_policy = true\n\
                 [[signers]]\nname = \"agent\"\npublic_key = \"agent.pub\"\n[mounts.certs]\npath = \"certs\"\n\
                 [server]\nlisten = \"127.0.0.1:0\"\ncert = \"tls/server.pem\"\nkey = \"tls/server.key\"\n\
                 client_ca = \"tls/ca.pem\"\nagents = [\"spiffe://edge-runner.local/agent/dev\"]\n"
            ),
        )?;
        let config = edge_runner::config::RunnerConfig::load(&dir.join("runner.toml"))?;
        edge_runner::identity::load_identity(&config.store_view())?; // created here
        if runs > 0 {
            let spec = edge_evidence::synth::Spec { runs, tier2_every: Some(20), ..Default::default() };
            fill_store(&config, &spec)?;
        }
        std::fs::write(&done, b"")?;
    }
    let records: i64 = rusqlite::Connection::open(dir.join("state/evidence/evidence.db"))
        .and_then(|c| c.query_row("SELECT count(*) FROM records", [], |r| r.get(0)))
        .unwrap_or(0);
    Ok((dir, records as u64))
}

/// The comma-separated numbers in environment variable `name` (`default` when unset).
#[allow(dead_code)] // not every benchmark uses every helper
pub fn env_list(name: &str, default: &str) -> anyhow::Result<Vec<usize>> {
    let text = std::env::var(name).unwrap_or_else(|_| default.into());
    text.split(',').map(|s| s.trim().parse().map_err(|e| anyhow::anyhow!("{name}: `{s}`: {e}"))).collect()
}

/// Wait until the `serve` whose standard error goes to `log` reports the
/// background full evidence check passed (a start runs it at nice 10; the
/// figures are those of a runner past it, in its steady state). Returns
/// how long that took.
#[allow(dead_code)] // not every benchmark uses every helper
pub fn wait_full_check(log: &Path) -> anyhow::Result<std::time::Duration> {
    let t = std::time::Instant::now();
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        anyhow::ensure!(
            !text.contains("full evidence check failed"),
            "the full evidence check failed: see {}",
            log.display()
        );
        if text.contains("full evidence check passed") {
            return Ok(t.elapsed());
        }
        anyhow::ensure!(
            t.elapsed() < std::time::Duration::from_secs(600),
            "the full evidence check did not finish in 10 minutes"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// A throwaway copy (beside it, under `target/bench-stores/`) of the home
/// [`log_home`] grows to `runs` runs: the home, and its records.
#[allow(dead_code)] // not every benchmark uses every helper
pub fn copied_log_home(runs: usize) -> anyhow::Result<(tempfile::TempDir, u64)> {
    let (grown, records) = log_home(runs)?;
    let home = tempfile::tempdir_in(grown.parent().expect("bench-stores"))?;
    copy_dir(&grown, home.path())?;
    Ok((home, records))
}

/// Copy what directory `from` holds into `to` (made if missing), as `cp -a`.
#[allow(dead_code)] // not every benchmark uses every helper
pub fn copy_dir(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to)?;
    let st = std::process::Command::new("cp").arg("-a").arg(format!("{}/.", from.display())).arg(to).status()?;
    anyhow::ensure!(st.success(), "copying {} to {} failed", from.display(), to.display());
    Ok(())
}

/// Start `edge-runner serve` (the real binary, its own process) in `home`
/// with its standard error to `log`, and read what it prints until a line
/// starting with `prefix`: the process and the rest of that line.
#[allow(dead_code)] // not every benchmark uses every helper
pub fn serve_until(home: &Path, log: &Path, prefix: &str) -> anyhow::Result<(std::process::Child, String)> {
    use std::io::BufRead as _;
    let mut server = std::process::Command::new(env!("CARGO_BIN_EXE_edge-runner"))
        .args(["serve", "--config", "runner.toml"])
        .current_dir(home)
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(log)?)
        .spawn()?;
    let mut out = std::io::BufReader::new(server.stdout.take().expect("piped"));
    loop {
        let mut line = String::new();
        anyhow::ensure!(out.read_line(&mut line)? > 0, "serve stopped: see {}", log.display());
        if let Some(rest) = line.trim().strip_prefix(prefix) {
            return Ok((server, rest.to_owned()));
        }
    }
}

/// Write `<home>/runner.vkey`: the runner's key as `edge-runner evidence
/// runner-key` prints it (what reviewers and NATS clients pin).
#[allow(dead_code)] // not every benchmark uses every helper
pub fn write_runner_key(home: &Path) -> anyhow::Result<std::path::PathBuf> {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_edge-runner"))
        .args(["evidence", "runner-key", "--config", "runner.toml"])
        .current_dir(home)
        .output()?;
    anyhow::ensure!(out.status.success(), "runner-key failed: {}", String::from_utf8_lossy(&out.stderr));
    let path = home.join("runner.vkey");
    std::fs::write(&path, &out.stdout)?;
    Ok(path)
}
