//! `init`, `serve`, and the client commands `submit` and `proposals`.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use base64::Engine as _;
use clap::{Args, Subcommand};
use serde_json::{Value, json};

use crate::cli::Exit;
use crate::cli::approve::Transport;
use crate::config::RunnerConfig;
use crate::server::client::{Client, ClientArgs};

#[derive(Debug, Args)]
pub struct InitArgs {
    /// The runner home to create (must not hold a runner.toml).
    #[arg(default_value = "edge-runner-home")]
    pub home: PathBuf,
    /// The runner's name: its identity in evidence and checkpoint origin.
    #[arg(long, default_value = "edge-runner.local/runner-1")]
    pub name: String,
    /// Where `serve` listens.
    #[arg(long, default_value = "127.0.0.1:8443")]
    pub listen: String,
    /// The system user the systemd unit runs as.
    #[arg(long, default_value = "edge-runner")]
    pub user: String,
    /// Another DNS name or IP address for the server certificate, besides
    /// localhost, 127.0.0.1 and ::1 (repeat for more).
    #[arg(long = "san", value_name = "NAME")]
    pub sans: Vec<String>,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The runner config (runner.toml, with a `[server]` section).
    #[arg(long)]
    pub config: PathBuf,
}

#[derive(Debug, Args)]
pub struct SubmitArgs {
    /// The signed capsule file.
    pub capsule: PathBuf,
    /// The runner's HTTPS API (`--server`, `--ca`, `--cert`, `--key`) …
    #[command(flatten)]
    pub client: crate::cli::approve::RemoteArgs,
    /// … or NATS (`--nats`, `--runner`, …), when the runner dials out.
    #[command(flatten)]
    pub nats: crate::intake::nats_client::NatsArgs,
    /// With --nats: how long to wait for the runner's answer (seconds).
    #[arg(long, value_name = "SECS", default_value_t = 300)]
    pub wait: u64,
    /// Print the runner's answer as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct AnswerArgs {
    /// The request, as printed when a wait through NATS ended without an
    /// answer: `<id>@<stream>@<created>:<sequence>`.
    pub request: String,
    /// The runner through NATS (`--nats`, `--runner`, `--runner-key`, and
    /// the `--nats-reply` the request was made with).
    #[command(flatten)]
    pub nats: crate::intake::nats_client::NatsArgs,
    /// How long to wait if the runner has not answered yet (seconds).
    #[arg(long, value_name = "SECS", default_value_t = 60)]
    pub wait: u64,
    /// Print the runner's answer as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ReloadArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Print the outcome as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum ProposalsCommand {
    /// List proposals (optionally in one state: awaiting-approval, committed, …).
    List {
        /// Only proposals in this state.
        #[arg(long)]
        state: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
        /// Print the list as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show one proposal: state, age and expiry, tier and the rule behind
    /// it, blast radius, the diff, findings, who approved and whether each
    /// counted, what is still needed.
    Show {
        /// The proposal id (p-…).
        id: String,
        #[command(flatten)]
        client: ClientArgs,
        /// Print the proposal as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Follow a proposal until it reaches a final state, printing each change
    /// (over HTTPS, or with --nats from the events the runner publishes).
    Watch {
        /// The proposal id (p-…).
        id: String,
        #[command(flatten)]
        client: crate::cli::approve::RemoteArgs,
        #[command(flatten)]
        nats: Box<crate::intake::nats_client::NatsArgs>,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 3600)]
        timeout: u64,
    },
}

pub fn init(a: &InitArgs, out: &mut dyn Write) -> Result<Exit> {
    let done = crate::init::init_with_sans(&a.home, &a.name, &a.listen, &a.user, &a.sans)?;
    let h = done.home.display();
    writeln!(out, "runner home   {h}")?;
    writeln!(out, "config        {}", done.config.display())?;
    writeln!(out, "identity key  {h}/state/identity.key (0600)")?;
    writeln!(out, "dev CA        {h}/tls/ca.pem (server, agent and operator certificates beside it)")?;
    writeln!(out, "agent         {} may submit", done.agent)?;
    writeln!(out, "systemd unit  {h}/edge-runner.service")?;
    if a.sans.is_empty() && a.listen.parse::<std::net::SocketAddr>().is_ok_and(|l| l.ip().is_unspecified()) {
        writeln!(
            out,
            "note: the server certificate names only localhost, 127.0.0.1 and ::1, but {} listens on every",
            a.listen
        )?;
        writeln!(out, "      interface: give `--san NAME` for each name clients use (docs/operations.md)")?;
    }
    // Not fatal: a home under /tmp is fine for trying the runner by hand.
    if let Some(why) = crate::init::hidden_from_unit(&done.home) {
        eprintln!("warning: {why}");
    }
    writeln!(out, "next: add approvers to approvers/allowed_signers and mounts to runner.toml, then")?;
    writeln!(out, "      edge-runner serve --config {}", done.config.display())?;
    Ok(Exit::Ok)
}

pub fn serve(a: &ServeArgs, out: &mut dyn Write) -> Result<Exit> {
    // Not dumpable: no process of the runner's user may attach to it (its
    // identity key is in its memory), open its descriptors through
    // /proc/<pid>/fd (the store's lock file, open for writing, is what
    // `exec` proves it may write the store with: `crate::intake::local`),
    // or find a core file of it. Root still can.
    // SAFETY: prctl with these arguments only sets a flag on this process.
    unsafe {
        libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0);
    }
    // Everything `check` checks, before anything is bound (its port check
    // binds and releases the listen addresses).
    crate::cli::check::before_serve(&a.config)?;
    let config = RunnerConfig::load(&a.config)?;
    let listen = config.server.as_ref().map(|s| s.listen);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let served = rt.block_on(async {
        let listener = match listen {
            Some(listen) => Some(
                tokio::net::TcpListener::bind(listen).await.with_context(|| format!("cannot listen on {listen}"))?,
            ),
            None => None,
        };
        // Installed now, not when a shutdown future is first polled (once
        // the listeners are up): a SIGTERM right after `listening on` (or
        // systemd's READY=1) must stop the runner cleanly, not end it. One
        // while it is still starting (opening and checking a long store)
        // ends it at once, as before: nothing was admitted yet, and what a
        // start writes is recovered like a crash at the next start.
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).context("cannot install the SIGTERM handler")?;
        let mut int = signal(SignalKind::interrupt()).context("cannot install the SIGINT handler")?;
        let ready = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        {
            let ready = ready.clone();
            tokio::spawn(async move {
                let code = tokio::select! {
                    _ = int.recv() => 130,
                    _ = term.recv() => 143,
                };
                if !ready.load(std::sync::atomic::Ordering::Acquire) {
                    eprintln!("edge-runner: stopped while starting (signal {}); nothing was admitted", code - 128);
                    std::process::exit(code);
                }
                let _ = stop.send(());
            });
        }
        let shutdown = async move {
            let _ = stopped.await;
        };
        // Under systemd (Type=notify): readiness, reloads, shutdown, watchdog.
        let systemd = crate::server::systemd::Notifier::from_env();
        crate::server::serve(config, listener, shutdown, systemd, |bound| {
            // From here a stop is a clean shutdown.
            ready.store(true, std::sync::atomic::Ordering::Release);
            // One line a supervisor (or a test) can wait for (the console's
            // and the probes' first).
            if let Some(origin) = bound.console {
                let _ = writeln!(out, "console on {origin}");
            }
            if let Some(probes) = bound.probes {
                let _ = writeln!(out, "probes on {probes}");
            }
            if let Some(url) = bound.nats {
                let _ = writeln!(out, "nats to {url}");
            }
            if let Some(dir) = bound.spool {
                let _ = writeln!(out, "spool on {}", dir.display());
            }
            if let Some(api) = bound.api {
                let _ = writeln!(out, "listening on https://{api}");
            }
            let _ = out.flush();
        })
        .await
    });
    // Every admitted run has finished; a thread still blocked in a host call
    // (a phase refused for it) is not waited for.
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    served?;
    Ok(Exit::Ok)
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread().enable_all().build()?)
}

pub fn submit(a: &SubmitArgs, out: &mut dyn Write) -> Result<Exit> {
    let bytes = std::fs::read(&a.capsule).with_context(|| format!("cannot read {}", a.capsule.display()))?;
    let v = match a.client.runner(&a.nats)? {
        Transport::Nats => runtime()?.block_on(async {
            let c = crate::intake::nats_client::NatsClient::connect(&a.nats).await?;
            c.request("submit", bytes, std::time::Duration::from_secs(a.wait)).await
        })?,
        Transport::Https(client) => {
            let body =
                serde_json::to_vec(&json!({ "capsule": base64::engine::general_purpose::STANDARD.encode(&bytes) }))?;
            let reply = runtime()?.block_on(async {
                let mut c = Client::from_args(&client)?;
                c.post("/v1/proposals", body, "application/json").await
            })?;
            if !reply.status.is_success() {
                bail!("the runner refused the submission ({}): {}", reply.status, reply.error_message());
            }
            reply.json()?
        }
    };
    if let Some(r) = v.get("refused") {
        bail!(
            "the runner refused the message [{}]: {}",
            edge_core::text::line(r["reason_code"].as_str().unwrap_or("?")),
            edge_core::text::line(r["detail"].as_str().unwrap_or(""))
        );
    }
    if a.json {
        serde_json::to_writer_pretty(&mut *out, &v)?;
        writeln!(out)?;
    } else {
        print_submission(&v, out)?;
    }
    Ok(exit_of(v["state"].as_str()))
}

/// The exit code for a run's state: 0 when it committed or completed.
fn exit_of(state: Option<&str>) -> Exit {
    match state {
        Some("committed" | "completed") => Exit::Ok,
        Some("awaiting-approval") => Exit::Awaiting,
        Some("rolled-back") => Exit::RolledBack,
        _ => Exit::Refused,
    }
}

/// `edge-runner answer REQUEST --nats …`: the runner's answer to an
/// earlier request through NATS whose wait ended first.
pub fn answer(a: &AnswerArgs, out: &mut dyn Write) -> Result<Exit> {
    if a.nats.nats.is_none() {
        bail!("give --nats URL (and --runner, --runner-key): answers are read from the runner's NATS subjects");
    }
    let v = runtime()?.block_on(async {
        let c = crate::intake::nats_client::NatsClient::connect(&a.nats).await?;
        c.answer_of(&a.request, std::time::Duration::from_secs(a.wait)).await
    })?;
    if a.json || v.get("admission").is_none() {
        // (An approval's or an export's answer: shown as it is.)
        serde_json::to_writer_pretty(&mut *out, &v)?;
        writeln!(out)?;
    } else {
        print_submission(&v, out)?;
    }
    // A submission's state; an approval's: the state of the run it started,
    // else kept and waiting for more (status), else the proposal's now.
    let state = v["run"]["state"].as_str().or_else(|| v["state"].as_str());
    Ok(match state {
        _ if v.get("refused").is_some() => Exit::Refused,
        None if v.get("status").is_some() => Exit::Ok,
        state => exit_of(state),
    })
}

/// `edge-runner reload`: ask a running runner to reload its policy, graph,
/// signers and approvers (the same as `SIGHUP`, with the outcome).
pub fn reload(a: &ReloadArgs, out: &mut dyn Write) -> Result<Exit> {
    let reply = runtime()?.block_on(async {
        let mut c = Client::from_args(&a.client)?;
        c.post("/v1/reload", Vec::new(), "application/json").await
    })?;
    let applied = reply.status.is_success();
    if !applied && reply.status != hyper::StatusCode::UNPROCESSABLE_ENTITY {
        bail!("the runner refused to reload ({}): {}", reply.status, reply.error_message());
    }
    let v = reply.json()?;
    if a.json {
        serde_json::to_writer_pretty(&mut *out, &v)?;
        writeln!(out)?;
    } else if applied {
        writeln!(out, "reloaded: the new configuration is in force for runs that start now")?;
        for k in ["policy", "graph", "registry", "config"] {
            let (old, new) = (str_of(&v["old"][k]), str_of(&v["new"][k]));
            let mark = if old == new { "unchanged" } else { "changed" };
            writeln!(out, "  {k:<9} {new}  ({mark})")?;
        }
        for s in v["restart_needed"].as_array().into_iter().flatten() {
            writeln!(out, "  not applied until a restart: {}", str_of(s))?;
        }
    } else {
        writeln!(out, "reload REFUSED: {}", str_of(&v["error"]))?;
        writeln!(out, "the running configuration stays in force; fix the file and reload again")?;
    }
    Ok(if applied { Exit::Ok } else { Exit::Refused })
}

fn print_submission(v: &Value, out: &mut dyn Write) -> Result<()> {
    writeln!(out, "proposal  {}  (run {})", str_of(&v["id"]), str_of(&v["run"]))?;
    writeln!(out, "state     {}", str_of(&v["state"]))?;
    let adm = &v["admission"];
    if adm["admitted"].as_bool() == Some(true) {
        writeln!(out, "admitted  {} signed by {}", str_of(&adm["name"]), str_of(&adm["signer"]))?;
    }
    if let Some(d) = v["decision"].as_object() {
        writeln!(out, "decision  tier {}, {} approval(s) required", d["tier"], d["approvals_required"])?;
        for r in d["reasons"].as_array().into_iter().flatten() {
            writeln!(out, "          [{}] {}", str_of(&r["rule"]), str_of(&r["text"]))?;
        }
    }
    if let Some(r) = v["refusal"].as_object() {
        writeln!(out, "REFUSED   at {} [{}] {}", str_of(&r["stage"]), str_of(&r["reason_code"]), str_of(&r["detail"]))?;
    }
    Ok(())
}

/// A JSON value from the runner as one neutralised line: the runner's
/// answers carry capsule- and client-supplied text.
fn str_of(v: &Value) -> String {
    v.as_str().map_or_else(|| v.to_string(), |s| edge_core::text::line(s).into_owned())
}

pub fn proposals(cmd: &ProposalsCommand, out: &mut dyn Write) -> Result<Exit> {
    let rt = runtime()?;
    match cmd {
        ProposalsCommand::List { state, client, json } => {
            let path = match state {
                Some(s) => {
                    format!("/v1/proposals?state={}", form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>())
                }
                None => "/v1/proposals".to_owned(),
            };
            let v = rt.block_on(get_json(client, &path))?;
            if *json {
                serde_json::to_writer_pretty(&mut *out, &v)?;
                writeln!(out)?;
                return Ok(Exit::Ok);
            }
            writeln!(out, "{:<30} {:<18} {:<4} {:<9} {:<20} name", "id", "state", "tier", "approvals", "submitted")?;
            for p in v["proposals"].as_array().into_iter().flatten() {
                let accepted =
                    p["approvals"].as_array().map_or(0, |a| a.iter().filter(|x| x["accepted"] == true).count());
                let required = p["approvals_required"].as_u64().unwrap_or(0);
                writeln!(
                    out,
                    "{:<30} {:<18} {:<4} {:<9} {:<20} {}",
                    str_of(&p["id"]),
                    str_of(&p["state"]),
                    p["tier"].as_u64().map_or_else(|| "-".to_owned(), |t| t.to_string()),
                    if required == 0 { "-".to_owned() } else { format!("{accepted}/{required}") },
                    str_of(&p["submitted_at"]),
                    p["name"].as_str().map_or_else(|| "-".to_owned(), |n| edge_core::text::line(n).into_owned())
                )?;
            }
            Ok(Exit::Ok)
        }
        ProposalsCommand::Show { id, client, json } => {
            let v = rt.block_on(get_json(client, &format!("/v1/proposals/{id}")))?;
            if *json {
                serde_json::to_writer_pretty(&mut *out, &v)?;
                writeln!(out)?;
            } else {
                crate::cli::show::print_detail(&v, crate::pipeline::unix_now()?, out)?;
            }
            Ok(Exit::Ok)
        }
        ProposalsCommand::Watch { id, client, nats, timeout } => match client.runner(nats)? {
            Transport::Https(client) => rt.block_on(watch(id, &client, *timeout, out)),
            Transport::Nats => rt.block_on(watch_nats(id, nats, *timeout, out)),
        },
    }
}

async fn get_json(client: &ClientArgs, path: &str) -> Result<Value> {
    let mut c = Client::from_args(client)?;
    let reply = c.get(path).await?;
    if !reply.status.is_success() {
        bail!("{} ({}): {}", path, reply.status, reply.error_message());
    }
    reply.json()
}

/// How `proposals watch` ends for a final state (None: not final).
fn final_exit(state: &str) -> Option<Exit> {
    match state {
        "committed" | "completed" => Some(Exit::Ok),
        "rolled-back" => Some(Exit::RolledBack),
        "refused" | "rejected" | "expired" | "failed" => Some(Exit::Refused),
        _ => None,
    }
}

/// `proposals watch --nats`: the proposal's latest published state, then
/// each event the runner publishes for it.
async fn watch_nats(
    id: &str,
    nats: &crate::intake::nats_client::NatsArgs,
    timeout: u64,
    out: &mut dyn Write,
) -> Result<Exit> {
    use futures_util::StreamExt as _;
    let c = crate::intake::nats_client::NatsClient::connect(nats).await?;
    // Subscribed before the latest state is read: nothing falls between.
    let mut events = c.proposal_events(id).await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout);
    let mut state = c.state(id).await.unwrap_or_else(|_| "unknown".to_owned());
    let stamp = || jiff::Timestamp::now().strftime("%H:%M:%S").to_string();
    writeln!(out, "{}  {id}  {}", stamp(), edge_core::text::line(&state))?;
    loop {
        if let Some(exit) = final_exit(&state) {
            return Ok(exit);
        }
        let next = tokio::time::timeout_at(deadline, events.next())
            .await
            .map_err(|_| anyhow::anyhow!("proposal {id} is still {state} after {timeout}s"))?
            .context("the event subscription ended")?;
        if let Err(e) = c.verify_event(&next) {
            // Not the runner's: not shown, and not believed.
            eprintln!("ignored an event for {id} that is not the runner's: {}", edge_core::text::line(&e.to_string()));
            continue;
        }
        let v: Value = serde_json::from_slice(&next.payload).context("a proposal event that is not JSON")?;
        state = str_of(&v["state"]);
        writeln!(
            out,
            "{}  {id}  {}  ({})",
            stamp(),
            edge_core::text::line(&state),
            edge_core::text::line(&str_of(&v["kind"]))
        )?;
        out.flush()?;
    }
}

async fn watch(id: &str, client: &ClientArgs, timeout: u64, out: &mut dyn Write) -> Result<Exit> {
    let mut c = Client::from_args(client)?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout);
    let mut last = String::new();
    let mut seen_records = 0;
    loop {
        let reply = c.get(&format!("/v1/proposals/{id}")).await?;
        if !reply.status.is_success() {
            bail!("proposal {id} ({}): {}", reply.status, reply.error_message());
        }
        let v = reply.json()?;
        let state = str_of(&v["state"]);
        let records = v["records"].as_array().map_or(0, Vec::len);
        if state != last || records != seen_records {
            let approvals = v["approvals"].as_array().map_or(0, |a| a.iter().filter(|x| x["accepted"] == true).count());
            writeln!(
                out,
                "{}  {id}  {state}  ({approvals}/{} approvals, {records} records)",
                jiff::Timestamp::now().strftime("%H:%M:%S"),
                v["approvals_required"]
            )?;
            out.flush()?;
            last = state.clone();
            seen_records = records;
        }
        if let Some(exit) = final_exit(&state) {
            return Ok(exit);
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("proposal {id} is still {state} after {timeout}s");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
