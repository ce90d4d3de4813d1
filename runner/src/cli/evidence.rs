//! `edge-runner evidence …`: show, artifact, export, verify, report, runner-key.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use edge_core::Sha256Digest;
use edge_core::evidence::Record;
use edge_core::note::NoteVerifier;
use edge_evidence::{Level, report};

use crate::cli::{Exit, print_record};
use crate::config::RunnerConfig;
use crate::export::{ExportScope, since_checkpoint};
use crate::pipeline::Runner;

#[derive(Debug, Subcommand)]
pub enum EvidenceCommand {
    /// Verify the store's hash chain and print its records.
    Show {
        /// The runner config (runner.toml).
        #[arg(long)]
        config: PathBuf,
        /// Only this run.
        #[arg(long)]
        run: Option<String>,
        /// Print the records as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Check the evidence store without stopping the runner (it only
    /// reads): as a start does, or with --full every record, tree hash,
    /// signed checkpoint and the stored fold. Exit 3 if it does not hold.
    Check {
        /// The runner config (runner.toml).
        #[arg(long)]
        config: PathBuf,
        /// Read and check everything (minutes on a long log; `serve` also
        /// runs it in the background after every start).
        #[arg(long)]
        full: bool,
        /// Show progress on stderr even when it is not a terminal.
        #[arg(long)]
        progress: bool,
        /// Where --full keeps its scratch database (default: beside the
        /// store, or $TMPDIR if the store may only be read).
        #[arg(long, value_name = "DIR")]
        scratch: Option<PathBuf>,
    },
    /// Print one stored artifact (checked against its digest).
    Artifact {
        /// The runner config (runner.toml).
        #[arg(long)]
        config: PathBuf,
        /// The artifact's digest (`sha256:…`, as records name it).
        digest: String,
    },
    /// Export a self-contained bundle with a checkpoint signed now.
    Export {
        /// The runner config (runner.toml).
        #[arg(long)]
        config: PathBuf,
        /// Only what was added after this checkpoint (a checkpoint note, a
        /// run receipt, or the earlier bundle), with a consistency proof from it.
        #[arg(long, conflicts_with = "run")]
        since: Option<PathBuf>,
        /// Only this run's records, each with an inclusion proof.
        #[arg(long)]
        run: Option<String>,
        /// Where to write the bundle.
        #[arg(short = 'o', long = "out")]
        out: PathBuf,
    },
    /// Verify a bundle offline (the same checks as `edge-verify`).
    Verify {
        /// The evidence bundle.
        bundle: PathBuf,
        #[command(flatten)]
        trust: Trust,
        /// Only the checkpoint, chain, tree and artifact digests.
        #[arg(long)]
        integrity_only: bool,
    },
    /// A human summary of a verified bundle: text, and optionally an HTML page.
    Report {
        /// The evidence bundle.
        bundle: PathBuf,
        #[command(flatten)]
        trust: Trust,
        /// Also write the self-contained HTML page here.
        #[arg(long)]
        html: Option<PathBuf>,
        /// Print the report as JSON instead of text.
        #[arg(long)]
        json: bool,
        /// List only proposals submitted at or after this time (RFC 3339 or a date).
        #[arg(long)]
        since_time: Option<String>,
        /// …and before this time.
        #[arg(long)]
        until_time: Option<String>,
        /// List only these tiers (e.g. `2` or `1,2`).
        #[arg(long)]
        tier: Vec<String>,
        /// List only proposals in these states (e.g. `committed,rolled-back`).
        #[arg(long)]
        state: Vec<String>,
    },
    /// Testing aid (hidden): append synthetic refused runs from concurrent
    /// writers through group commit, printing `<seq> <run>` for each record
    /// as soon as it is acknowledged (durable).
    #[command(hide = true)]
    Stress {
        /// The runner config (runner.toml).
        #[arg(long)]
        config: PathBuf,
        /// Concurrent writers.
        #[arg(long, default_value_t = 8)]
        writers: usize,
        /// Synthetic runs in all.
        #[arg(long, default_value_t = 1000)]
        runs: usize,
    },
    /// Print the runner's public identity key (the checkpoint verifier key
    /// reviewers pass to `edge-verify --key`).
    RunnerKey {
        /// The runner config (runner.toml).
        #[arg(long)]
        config: PathBuf,
    },
    /// Fetch a bundle from a running runner's API (`export` needs the store,
    /// which a serving runner holds), or with --nats through NATS (the
    /// runner exports into its object store bucket; the bundle is read from
    /// there).
    Fetch {
        #[command(flatten)]
        client: crate::cli::approve::RemoteArgs,
        #[command(flatten)]
        nats: crate::intake::nats_client::NatsArgs,
        /// Only what was added after this checkpoint (a checkpoint note, a
        /// run receipt, or the earlier bundle), with a consistency proof.
        #[arg(long)]
        since: Option<PathBuf>,
        /// Where to write the bundle.
        #[arg(short = 'o', long = "out")]
        out: PathBuf,
    },
}

/// Run an evidence command.
///
/// # Errors
/// `evidence check`.
fn check(config: &Path, full: bool, progress: bool, scratch: Option<&Path>, out: &mut dyn Write) -> Result<Exit> {
    use std::io::IsTerminal as _;
    let store = RunnerConfig::load_store_view(config)?;
    let identity = crate::identity::read_identity(&store)?;
    let dir = store.evidence_dir();
    let show = progress || std::io::stderr().is_terminal();
    let started = std::time::Instant::now();
    let result = if full {
        let mut report = |done: u64, total: u64| {
            if show {
                eprint!("\rchecking: records {done}/{total}");
                if done == total {
                    eprintln!();
                }
            }
        };
        let never = std::sync::atomic::AtomicBool::new(false);
        crate::store::check::full(&dir, scratch, &store.name, identity.verifier(), &mut report, &never).map(|c| {
            format!(
                "evidence store verified in full: {} records, {} signed checkpoints, {} proposals ({:.1} s)",
                c.records,
                c.checkpoints,
                c.proposals,
                started.elapsed().as_secs_f32()
            )
        })
    } else {
        crate::store::check::quick(&dir, &store.name, identity.verifier()).map(|(n, _)| {
            format!(
                "evidence store verified as a start verifies it: {n} records (the records since the last signed \
                 checkpoint, the tree against it; `--full` reads everything)"
            )
        })
    };
    match result {
        Ok(line) => {
            writeln!(out, "{line}")?;
            Ok(Exit::Ok)
        }
        // Not a verdict on the store: an error (exit 1), not `FAILED`.
        Err(e) if e.is::<crate::store::check::CouldNotCheck>() || e.is::<crate::store::check::NotMigrated>() => Err(e),
        Err(e) => {
            writeln!(out, "FAILED: {}", edge_core::text::line(&format!("{e:#}")))?;
            Ok(Exit::Refused)
        }
    }
}

/// Usage and I/O errors; a failed verification is exit code 3, not an error.
pub fn evidence(c: EvidenceCommand, out: &mut dyn Write) -> Result<Exit> {
    match c {
        EvidenceCommand::Show { config, run, json } => show(&config, run.as_deref(), json, out),
        EvidenceCommand::Artifact { config, digest } => {
            let store = RunnerConfig::load_store_view(&config)?;
            let d: Sha256Digest = digest.parse().map_err(|e| anyhow::anyhow!("{e}"))?;
            let db = crate::store::log::read_only(&store.evidence_dir())?;
            let bytes: Option<Vec<u8>> = rusqlite::OptionalExtension::optional(db.query_row(
                "SELECT bytes FROM artifacts WHERE digest = ?1",
                [d.to_string()],
                |r| r.get(0),
            ))?;
            let bytes = bytes.with_context(|| format!("no artifact {d} in the evidence store"))?;
            if Sha256Digest::of(&bytes) != d {
                bail!("artifact {d} does not match its digest: the store was altered");
            }
            out.write_all(&bytes)?;
            Ok(Exit::Ok)
        }
        EvidenceCommand::Export { config, since, run, out: path } => {
            let scope = match (since, run) {
                (Some(f), _) => ExportScope::Since(since_checkpoint(&f)?),
                (None, Some(r)) => ExportScope::Run(r),
                (None, None) => ExportScope::Full,
            };
            let config = RunnerConfig::load(&config)?;
            let runner = Runner::open(config)?;
            let e = runner.export_file(&scope, &path)?;
            writeln!(
                out,
                "exported {} record(s) and {} artifact(s) to {} ({} bytes); checkpoint at tree size {}",
                e.records,
                e.artifacts,
                path.display(),
                e.bytes,
                e.tree_size
            )?;
            writeln!(out, "verify offline: edge-verify {} --key <runner key file>", path.display())?;
            quoting_note(e.quoting_config, out)?;
            Ok(Exit::Ok)
        }
        EvidenceCommand::Verify { bundle, trust, integrity_only } => {
            let keys = trust.keys()?;
            let file = std::fs::File::open(&bundle).with_context(|| format!("cannot read {}", bundle.display()))?;
            let level = if integrity_only { Level::Integrity } else { Level::Full };
            match edge_evidence::verify_file(&file, &keys, level, edge_evidence::Keep::Counts, &mut |_, _, _| {}) {
                Ok(v) => {
                    writeln!(out, "{}", v.summary())?;
                    for note in v.key_notes().into_iter().chain(v.build_notes()) {
                        writeln!(out, "{note}")?;
                    }
                    Ok(Exit::Ok)
                }
                Err(f) => {
                    writeln!(out, "FAILED: {f}")?;
                    Ok(Exit::Refused)
                }
            }
        }
        EvidenceCommand::Report { bundle, trust, html, json, since_time, until_time, tier, state } => {
            let keys = trust.keys()?;
            // The same filters as `edge-verify` (they change what is listed;
            // verification always covers the whole bundle).
            let mut opts = report::Options::now();
            let bad = |e: String| anyhow::anyhow!("{e}");
            opts.filter.since = since_time.as_deref().map(report::Filter::parse_time).transpose().map_err(bad)?;
            opts.filter.until = until_time.as_deref().map(report::Filter::parse_time).transpose().map_err(bad)?;
            for t in &tier {
                opts.filter.add_tiers(t).map_err(bad)?;
            }
            for s in &state {
                opts.filter.add_states(s).map_err(bad)?;
            }
            let bytes = std::fs::read(&bundle).with_context(|| format!("cannot read {}", bundle.display()))?;
            let result = edge_evidence::verify(&bytes, &keys, Level::Full);
            let (text, page) = match &result {
                Ok(v) if json => {
                    (serde_json::to_string_pretty(&report::json(v, &opts))? + "\n", report::html_with(v, &opts))
                }
                Ok(v) => (report::text_with(v, &opts), report::html_with(v, &opts)),
                Err(f) if json => (
                    serde_json::to_string_pretty(&report::json_failed(f, &opts))? + "\n",
                    report::html_failed_with(f, &opts),
                ),
                Err(f) => (report::text_failed_with(f, &opts), report::html_failed_with(f, &opts)),
            };
            out.write_all(text.as_bytes())?;
            if let Some(p) = html {
                std::fs::write(&p, page).with_context(|| format!("cannot write {}", p.display()))?;
            }
            Ok(if result.is_ok() { Exit::Ok } else { Exit::Refused })
        }
        EvidenceCommand::Stress { config, writers, runs } => stress(&config, writers, runs, out),
        EvidenceCommand::Fetch { client, nats, since, out: path } => {
            let client = match client.runner(&nats)? {
                crate::cli::approve::Transport::Https(c) => c,
                crate::cli::approve::Transport::Nats => {
                    let since = since.as_deref().map(since_checkpoint).transpose()?;
                    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
                    let fetched = rt.block_on(async {
                        let c = crate::intake::nats_client::NatsClient::connect(&nats).await?;
                        c.fetch_export(since, &path).await
                    })?;
                    writeln!(out, "fetched {} bytes to {}", fetched.bytes, path.display())?;
                    writeln!(out, "verify offline: edge-verify {} --key <runner key file>", path.display())?;
                    quoting_note(fetched.quoting_config, out)?;
                    return Ok(Exit::Ok);
                }
            };
            let mut query = String::new();
            if let Some(f) = &since {
                let note = since_checkpoint(f)?;
                query = format!("?since={}", form_urlencoded::byte_serialize(note.as_bytes()).collect::<String>());
            }
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let mut c = crate::server::client::Client::from_args(&client)?;
            let resp = rt.block_on(c.send(hyper::Method::GET, &format!("/v1/evidence/export{query}"), None))?;
            if !resp.status().is_success() {
                let reply = rt.block_on(crate::server::client::Reply::read(resp))?;
                bail!("the runner did not export ({}): {}", reply.status, reply.error_message());
            }
            // (A runner before this header names none.)
            let quoting = resp
                .headers()
                .get(crate::server::api::QUOTING_CONFIG_HEADER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
            // Streamed to the file as it arrives, which appears only once whole.
            let mut body = resp.into_body();
            let bytes = crate::export::write_whole(&path, |w| {
                rt.block_on(async {
                    use http_body_util::BodyExt as _;
                    let mut n: u64 = 0;
                    while let Some(frame) = body.frame().await {
                        let frame = frame.context("the runner cut the export off before its end")?;
                        if let Some(data) = frame.data_ref() {
                            w.write_all(data)?;
                            n += data.len() as u64;
                        }
                    }
                    Ok(n)
                })
            })?;
            writeln!(out, "fetched {bytes} bytes to {}", path.display())?;
            writeln!(out, "verify offline: edge-verify {} --key <runner key file>", path.display())?;
            quoting_note(quoting, out)?;
            Ok(Exit::Ok)
        }
        EvidenceCommand::Check { config, full, progress, scratch } => {
            check(&config, full, progress, scratch.as_deref(), out)
        }
        EvidenceCommand::RunnerKey { config } => {
            let store = RunnerConfig::load_store_view(&config)?;
            // (Before the first start too: the key is made now, to hand to
            // reviewers and webhook receivers ahead of the first checkpoint.)
            let signer = crate::identity::load_identity(&store)?;
            writeln!(out, "{}", signer.verifier().to_vkey())?;
            Ok(Exit::Ok)
        }
    }
}

/// Which runner keys a bundle's checkpoint may be signed by.
#[derive(Debug, clap::Args)]
pub struct Trust {
    /// File of trusted runner keys, one per line (`evidence runner-key` prints one).
    #[arg(long, required_unless_present = "config")]
    key: Vec<PathBuf>,
    /// Or: trust this runner's own identity key.
    #[arg(long)]
    config: Option<PathBuf>,
}

impl Trust {
    fn keys(&self) -> Result<Vec<NoteVerifier>> {
        let mut keys = Vec::new();
        for f in &self.key {
            let text =
                std::fs::read_to_string(f).with_context(|| format!("cannot read runner keys {}", f.display()))?;
            keys.extend(
                edge_evidence::parse_keys(&text).map_err(|e| anyhow::anyhow!("runner keys {}: {e}", f.display()))?,
            );
        }
        if let Some(c) = &self.config {
            keys.push(crate::identity::read_identity(&RunnerConfig::load_store_view(c)?)?.verifier().clone());
        }
        Ok(keys)
    }
}

/// The note an export carries when old reload refusals in it quote the
/// config file (`Exported::quoting_config`; nothing when there are none).
fn quoting_note(count: u64, out: &mut dyn Write) -> Result<()> {
    if count > 0 {
        writeln!(
            out,
            "note: {count} reload-refused record(s) in it, written by a runner before 2026-12-06, quote what the \
             runner config file held where it failed to load (a line or a value), which may be a secret of that \
             file; the log is append-only, so every export carries them as recorded: rotate any secret that was in \
             the file then (docs/evidence.md, \"Not undone\")"
        )?;
    }
    Ok(())
}

fn show(config: &Path, run: Option<&str>, json: bool, out: &mut dyn Write) -> Result<Exit> {
    let store = RunnerConfig::load_store_view(config)?;
    let dir = store.evidence_dir();
    // One run: by the run index, each record proved against the tree the
    // start's check verifies — which needs the runner's key; who may read
    // the store but not the key gets the run from the whole log, as before.
    if let Some(id) = run {
        match crate::identity::read_identity(&store) {
            Ok(identity) => return show_run(&store.name, identity.verifier(), &dir, id, json, out),
            Err(e) => eprintln!(
                "note: {}; the run is found by reading the whole log instead (slower)",
                edge_core::text::line(&format!("{e:#}"))
            ),
        }
    }
    // Streamed: each record is printed once it has verified (memory does
    // not grow with the log); a record that fails stops the listing there
    // with the error, and the text form's summary (last) is only printed
    // when every record verified.
    let mut shown = 0u64;
    // Buffered (stdout flushes every line); a failure to write (a closed
    // pipe) is told as that, not as a verification failure.
    let mut out = std::io::BufWriter::with_capacity(1 << 16, out);
    let mut unwritten: Option<std::io::Error> = None;
    let mut each = |r: Record, _| -> Result<()> {
        if run.is_some_and(|id| r.run != id) {
            return Ok(());
        }
        let mut write = |r: &Record| -> std::io::Result<()> {
            if json {
                // The pretty array `serde_json::to_writer_pretty` writes, one element at a time.
                out.write_all(if shown == 0 { b"[\n" } else { b",\n" })?;
                let element = serde_json::to_string_pretty(r)?;
                for (i, line) in element.lines().enumerate() {
                    out.write_all(if i == 0 { b"  " } else { b"\n  " })?;
                    out.write_all(line.as_bytes())?;
                }
                Ok(())
            } else {
                print_record(r, &mut out).map_err(std::io::Error::other)
            }
        };
        write(&r).map_err(|e| {
            unwritten = Some(e);
            anyhow::anyhow!("the listing could not be written")
        })?;
        shown += 1;
        Ok(())
    };
    let verified = crate::store::log::each_verified(&dir, &mut each);
    if let Some(e) = unwritten {
        return Err(anyhow::Error::from(e).context("cannot write the records"));
    }
    let (records, root) = verified.with_context(|| format!("evidence store {} failed verification", dir.display()))?;
    if json {
        out.write_all(if shown == 0 { b"[]\n" } else { b"\n]\n" })?;
    } else {
        writeln!(
            out,
            "evidence store {}: {records} record(s), chain verified, Merkle root {}",
            dir.display(),
            hex::encode(root)
        )?;
    }
    out.flush()?;
    Ok(Exit::Ok)
}

/// One run's records, read by the store's run index rather than by
/// reading the whole log: the store checked as a start checks it (the
/// records since the last signed checkpoint, the signed checkpoints
/// against the tree), then each of the run's records proved by inclusion
/// in the tree of that check.
fn show_run(
    origin: &str,
    identity: &NoteVerifier,
    dir: &Path,
    run: &str,
    json: bool,
    out: &mut dyn Write,
) -> Result<Exit> {
    let (size, root) = crate::store::check::quick(dir, origin, identity)
        .with_context(|| format!("evidence store {} failed verification", dir.display()))?;
    let db = crate::store::log::read_only(dir)?;
    let seqs: Vec<u64> = crate::store::log::run_seqs(&db, run)?.into_iter().filter(|&s| s < size).collect();
    let tree = crate::store::tree::StoredTree::new(&db, size);
    let records = crate::store::log::proved_records(&db, &tree, size, &root, &seqs)
        .with_context(|| format!("evidence store {} failed verification", dir.display()))?;
    if json {
        serde_json::to_writer_pretty(&mut *out, &records)?;
        writeln!(out)?;
    } else {
        for r in &records {
            print_record(r, out)?;
        }
        writeln!(
            out,
            "evidence store {}: run {}: {} record(s), each proved in the tree of {size} records its signed \
             checkpoints cover, Merkle root {}",
            dir.display(),
            edge_core::text::line(run),
            records.len(),
            hex::encode(root)
        )?;
    }
    out.flush()?;
    Ok(Exit::Ok)
}

fn stress(config: &Path, writers: usize, runs: usize, out: &mut dyn Write) -> Result<Exit> {
    use edge_core::evidence::{Event, Outcome};
    let runner = Runner::open(RunnerConfig::load(config)?)?;
    let store = runner.store();
    let (tx, rx) = std::sync::mpsc::channel::<(u64, String)>();
    std::thread::scope(|s| -> Result<()> {
        let handles: Vec<_> = (0..writers)
            .map(|w| {
                let (store, tx) = (store.clone(), tx.clone());
                s.spawn(move || -> Result<()> {
                    for i in 0..runs {
                        let run = format!("stress-{w}-{i}");
                        let refused = Event::Refused {
                            stage: "submission".into(),
                            reason_code: "stress.synthetic".into(),
                            detail: "synthetic record from `evidence stress`".into(),
                        };
                        for event in [refused, Event::Completed { outcome: Outcome::Refused }] {
                            let r = store.append(&run, event)?;
                            // Acknowledged: durable. Report it.
                            tx.send((r.seq, r.run)).map_err(|_| anyhow::anyhow!("the printer stopped"))?;
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        drop(tx);
        // This thread owns stdout: print each acknowledgement as it comes.
        for (seq, run) in rx {
            writeln!(out, "{seq} {run}")?;
            out.flush()?;
        }
        handles.into_iter().try_for_each(|h| h.join().map_err(|_| anyhow::anyhow!("a writer panicked"))?)
    })?;
    Ok(Exit::Ok)
}
