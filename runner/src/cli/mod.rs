//! The `edge-runner` command line.
//!
//! Exit codes (stable, documented in the README):
//! * 0 — success (run committed, or nothing to change; verification passed)
//! * 1 — the runner itself failed (config, I/O, evidence log)
//! * 2 — usage error
//! * 3 — the capsule was refused (signature, admission, limits, plan, diff, …)
//! * 4 — the change was committed, failed verification and was rolled back
//! * 5 — planned above tier 0: waiting for approvals (a proposal was written)

pub mod approve;
pub mod backup;
pub mod check;
pub mod evidence;
pub mod generate;
pub mod policy;
pub mod server;
pub mod show;
pub mod webhook;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use edge_core::Sha256Digest;
use edge_core::approval::Verdict;
use edge_core::container::CapsuleFile;
use edge_core::evidence::{Event, Outcome, Record};
use edge_core::manifest::{ComponentRef, Manifest, split_import_version};
use edge_core::signature::{self, BundleArtifact, BundlePolicy, TrustedSigner, TrustedSigners};
use edge_core::text::Untrusted as U;

use crate::config::RunnerConfig;
use crate::keys;
use crate::pipeline::{self, RunReport};

/// The process exit status (README: "Exit codes"). One enum, so a command
/// cannot return a number nobody documented.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Exit {
    /// Success: committed and verified, or nothing to change.
    Ok = 0,
    /// The runner itself failed (config, I/O, evidence log).
    Error = 1,
    /// The input was refused (nothing changed).
    Refused = 3,
    /// Committed, failed verification, rolled back.
    RolledBack = 4,
    /// Planned above tier 0; waiting for approvals.
    Awaiting = 5,
}

impl Exit {
    /// The exit of a code another process chose (a hand-over's answer):
    /// one this command does not end with is an error.
    pub fn of_code(code: u8) -> Self {
        [Exit::Ok, Exit::Refused, Exit::RolledBack, Exit::Awaiting]
            .into_iter()
            .find(|e| *e as u8 == code)
            .unwrap_or(Exit::Error)
    }
}

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> Self {
        ExitCode::from(e as u8)
    }
}

#[derive(Debug, Parser)]
#[command(name = "edge-runner", version, about = "Governed execution of signed WebAssembly remediation capsules")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Signing keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Build, sign, inspect and verify capsule files.
    #[command(subcommand)]
    Capsule(CapsuleCommand),
    /// Run one capsule through every gate: admit, decide, plan, authorize,
    /// apply (staged), diff, commit, verify.
    ///
    /// While a runner serves the same state directory, the run is handed to
    /// it (`<state>/exec.sock`, from the runner's own user only), and runs
    /// only if the documents in force there are those this config names.
    Exec(ExecArgs),
    /// Read the evidence log.
    #[command(subcommand)]
    Evidence(crate::cli::evidence::EvidenceCommand),
    /// Sigstore interoperability.
    #[command(subcommand)]
    Sigstore(SigstoreCommand),
    /// Check, explain and test the policy.
    #[command(subcommand)]
    Policy(crate::cli::policy::PolicyCommand),
    /// The system graph.
    #[command(subcommand)]
    Graph(crate::cli::policy::GraphCommand),
    /// Review a proposal and sign an approval (SSH key file or ssh-agent).
    Approve(crate::cli::approve::ApproveArgs),
    /// Review a proposal and sign a rejection (one eligible rejection vetoes).
    Reject(crate::cli::approve::ApproveArgs),
    /// Approval files.
    #[command(subcommand)]
    Approval(crate::cli::approve::ApprovalCommand),
    /// Approvers: enroll a passkey for the console.
    #[command(subcommand)]
    Approvers(ApproversCommand),
    /// Create a runner home: identity key, config, example policy and graph,
    /// empty approver registry, development CA and certificates, systemd unit.
    Init(crate::cli::server::InitArgs),
    /// Check everything `serve` needs (config, policy, graph, approvers, keys
    /// and their modes, certificates, mounts, directories, ports) and list
    /// every problem with its fix; exit 1 if there is any.
    Check(crate::cli::check::CheckArgs),
    /// Serve the mutual-TLS API (`[server]` in the config); runs `check` first.
    Serve(crate::cli::server::ServeArgs),
    /// Reload a running runner's policy, graph, trusted signers and approver
    /// registry (like SIGHUP); a bad configuration is refused and recorded.
    Reload(crate::cli::server::ReloadArgs),
    /// Submit a signed capsule to a runner over mutual TLS (or NATS, with --nats).
    Submit(crate::cli::server::SubmitArgs),
    /// Read the runner's answer to an earlier request through NATS, after
    /// the wait for it ended (`submit --nats`, `approve --nats`).
    Answer(crate::cli::server::AnswerArgs),
    /// Client certificates from the development CA.
    #[command(subcommand)]
    Pki(crate::cli::check::PkiCommand),
    /// Proposals on a runner: list, show, watch.
    #[command(subcommand)]
    Proposals(crate::cli::server::ProposalsCommand),
    /// Webhook notifications: check one as a receiver would.
    #[command(subcommand)]
    Webhook(crate::cli::webhook::WebhookCommand),
    /// Back up the evidence store and state while the runner serves: a
    /// consistent snapshot, verified after writing, with a manifest.
    Backup(crate::cli::backup::BackupArgs),
    /// Check a backup, and restore it into an empty state directory or a new home.
    Restore(crate::cli::backup::RestoreArgs),
    /// Print a shell completion script (e.g. `edge-runner completions bash >
    /// /etc/bash_completion.d/edge-runner`).
    Completions(crate::cli::generate::CompletionsArgs),
    /// Write man pages for edge-runner and every subcommand into a directory.
    Man(crate::cli::generate::ManArgs),
}

#[derive(Debug, Subcommand)]
pub enum ApproversCommand {
    /// Create a one-time enrollment link and code for an approver (listed in
    /// roles.toml) to register a passkey in the console; the registration is
    /// recorded as evidence and counts like their SSH key.
    Enroll {
        /// The runner config (its `[console]` says where the link points).
        #[arg(long)]
        config: PathBuf,
        /// The approver, as in roles.toml.
        #[arg(long)]
        principal: String,
        /// How long the code stays valid (default 24h, at most 7 days).
        #[arg(long, default_value = "24h")]
        valid: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Generate an Ed25519 key pair: `<out>.key` (PKCS#8 PEM, mode 0600) and `<out>.pub` (SPKI PEM).
    Generate {
        /// The key pair's path without extension (`keys/agent` writes keys/agent.key and keys/agent.pub).
        #[arg(long)]
        out: PathBuf,
    },
    /// Rotate the runner's identity key (offline: stop the runner first). The
    /// evidence log records the change signed by both the old and the new
    /// key, so reviewers who pinned the old key can follow it; the old key
    /// file is kept as `<identity_key>.retired-…`.
    Rotate {
        /// The runner config (its `[runner] identity_key` and state directory).
        #[arg(long)]
        config: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum CapsuleCommand {
    /// Pack a manifest (capsule.toml) and a component (.wasm) into a .capsule file.
    Pack {
        /// The authoring manifest (capsule.toml).
        #[arg(long)]
        manifest: PathBuf,
        /// The WebAssembly component (built for wasm32-wasip2).
        #[arg(long)]
        component: PathBuf,
        /// The capsule file to write.
        #[arg(short, long)]
        out: PathBuf,
    },
    /// Sign a capsule (Sigstore bundle, DSSE/in-toto, keyed Ed25519). Writes in place unless --out.
    Sign {
        /// The capsule file.
        capsule: PathBuf,
        /// The signer's Ed25519 private key (PKCS#8 PEM, from `keys generate`).
        #[arg(long)]
        key: PathBuf,
        /// Write the signed capsule here instead of in place.
        #[arg(short, long)]
        out: Option<PathBuf>,
    },
    /// Show a capsule's manifest, digests, signer, capabilities and the component's real imports.
    Inspect {
        /// The capsule file.
        capsule: PathBuf,
        /// Print the description as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Verify a capsule's signature against a public key or a runner config's trusted signers.
    Verify {
        /// The capsule file.
        capsule: PathBuf,
        /// SPKI PEM public key of the expected signer.
        #[arg(long, conflicts_with = "config")]
        key: Option<PathBuf>,
        /// Use the trusted signers of this runner config.
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

#[derive(Debug, Args)]
pub struct ExecArgs {
    /// The signed capsule file.
    pub capsule: PathBuf,
    /// The runner config (runner.toml).
    #[arg(long)]
    pub config: PathBuf,
    /// Print the run report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Approval files for a proposal above tier 0 (repeat for each approver).
    #[arg(long = "approval")]
    pub approvals: Vec<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum SigstoreCommand {
    /// The sigstore-conformance client protocol: exit 0 only for a valid bundle.
    VerifyBundle(VerifyBundleArgs),
}

#[derive(Debug, Args)]
pub struct VerifyBundleArgs {
    /// The Sigstore bundle (JSON).
    #[arg(long)]
    pub bundle: PathBuf,
    /// The identity the signing certificate must name (SAN: email or URI).
    #[arg(long, requires = "certificate_oidc_issuer", conflicts_with = "key")]
    pub certificate_identity: Option<String>,
    /// The OIDC issuer the signing certificate must name.
    #[arg(long, requires = "certificate_identity")]
    pub certificate_oidc_issuer: Option<String>,
    /// A public key (PEM) instead of a certificate identity.
    #[arg(long)]
    pub key: Option<PathBuf>,
    /// The trusted root (JSON; default: the embedded Sigstore public-good root).
    #[arg(long)]
    pub trusted_root: Option<PathBuf>,
    /// The artifact: a file path, or `sha256:<hex>`.
    pub artifact: String,
}

/// Run the CLI; returns the process exit code.
pub fn main(cli: Cli, out: &mut dyn Write) -> Result<Exit> {
    match cli.command {
        Command::Keys(KeysCommand::Generate { out: path }) => {
            let k = keys::generate(&path)?;
            writeln!(out, "private key  {} (mode 0600; keep it secret)", k.private.display())?;
            writeln!(out, "public key   {}", k.public.display())?;
            writeln!(out, "key id       {}", k.key_id)?;
            Ok(Exit::Ok)
        }
        Command::Keys(KeysCommand::Rotate { config }) => crate::rotate::cli(&config, out),
        Command::Approvers(ApproversCommand::Enroll { config, principal, valid }) => {
            let config = crate::config::RunnerConfig::load(&config)?;
            let ttl = edge_core::policy::parse_duration(&valid)
                .with_context(|| format!("--valid `{valid}`: use a duration like 24h"))?;
            if !(60..=7 * 86_400).contains(&ttl) {
                anyhow::bail!("--valid must be between 1m and 7d");
            }
            let (code, inv) = crate::console::enroll::invite(&config, &principal, ttl)?;
            let base = match &config.console {
                Some(c) if c.url.is_some() || c.listen.port() != 0 => {
                    c.origin(c.listen.port())?.as_str().trim_end_matches('/').to_owned()
                }
                Some(_) => "https://<console>".to_owned(),
                None => anyhow::bail!(
                    "this runner has no [console]: add one to the config so the approver can enroll in the browser"
                ),
            };
            writeln!(out, "enrollment for {} (valid until {}, Unix seconds; one use)", principal, inv.expires_at)?;
            writeln!(out, "  link  {base}/enroll#{code}")?;
            writeln!(out, "  code  {code}")?;
            writeln!(out, "Give it to {principal} over a channel you trust; anyone holding it can enroll as them.")?;
            Ok(Exit::Ok)
        }
        Command::Init(a) => crate::cli::server::init(&a, out),
        Command::Check(a) => crate::cli::check::check(&a, out),
        Command::Pki(c) => crate::cli::check::pki(&c, out),
        Command::Serve(a) => crate::cli::server::serve(&a, out),
        Command::Reload(a) => crate::cli::server::reload(&a, out),
        Command::Submit(a) => crate::cli::server::submit(&a, out),
        Command::Answer(a) => crate::cli::server::answer(&a, out),
        Command::Proposals(c) => crate::cli::server::proposals(&c, out),
        Command::Webhook(c) => crate::cli::webhook::webhook(c, out),
        Command::Backup(a) => crate::cli::backup::backup(&a, out),
        Command::Restore(a) => crate::cli::backup::restore(&a, out),
        Command::Completions(a) => crate::cli::generate::completions(&a, out),
        Command::Man(a) => crate::cli::generate::man(&a, out),
        Command::Capsule(c) => capsule(c, out),
        Command::Exec(args) => {
            // A runner serving this state directory holds its store: the
            // run is handed to it (under the same governance, or not at
            // all) and its answer printed as this command would print it.
            // Handing over needs the config's digests, not its compiled
            // graph: the config is read in full only to run here.
            let view = crate::config::RunnerConfig::load_to_hand_over(&args.config)?;
            let inputs = pipeline::ExecInputs::read(&args.capsule, &args.approvals)?;
            if let Some(answer) = crate::intake::local::hand_over(&view, &inputs, args.json)? {
                if let Some(e) = answer.error {
                    // Nothing ran. A config that does not load in full (a
                    // graph that does not compile, which the hand-over only
                    // hashed) is refused for differing: its own error is
                    // what to fix, not a reload the runner would refuse.
                    crate::config::RunnerConfig::load(&args.config)?;
                    anyhow::bail!("{e}");
                }
                let mut err = edge_core::text::Terminal::new(std::io::stderr().lock());
                writeln!(err, "exec: run by the runner serving {}", view.state_dir.display())?;
                out.write_all(answer.out.as_bytes())?;
                return Ok(Exit::of_code(answer.exit));
            }
            let config = crate::config::RunnerConfig::load(&args.config)?;
            // One run: its tasks take turns on this thread (capsule phases
            // run on blocking threads of their own either way). Two idle
            // worker threads were a start, a heap and an exit more.
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let report = rt.block_on(pipeline::exec_file(config, inputs));
            // A phase stopped while blocked in a host call leaves its thread
            // in that call: do not wait for it to exit.
            rt.shutdown_timeout(std::time::Duration::from_secs(1));
            exec_answer(&report?, args.json, out)
        }
        Command::Evidence(c) => crate::cli::evidence::evidence(c, out),
        Command::Sigstore(SigstoreCommand::VerifyBundle(a)) => verify_bundle(a, out),
        Command::Policy(c) => crate::cli::policy::policy(c, out),
        Command::Graph(c) => crate::cli::policy::graph(c, out),
        Command::Approve(a) => crate::cli::approve::approve(a, Verdict::Approve, &mut std::io::stdin().lock(), out),
        Command::Reject(a) => crate::cli::approve::approve(a, Verdict::Reject, &mut std::io::stdin().lock(), out),
        Command::Approval(c) => crate::cli::approve::approval(c, out),
    }
}

fn capsule(c: CapsuleCommand, out: &mut dyn Write) -> Result<Exit> {
    match c {
        CapsuleCommand::Pack { manifest, component, out: path } => {
            let text =
                std::fs::read_to_string(&manifest).with_context(|| format!("cannot read {}", manifest.display()))?;
            let wasm = std::fs::read(&component).with_context(|| format!("cannot read {}", component.display()))?;
            let pinned = ComponentRef { sha256: Sha256Digest::of(&wasm), size: wasm.len() as u64 };
            let m = Manifest::from_authoring_toml(&text, pinned)
                .with_context(|| format!("{} is not a valid capsule manifest", manifest.display()))?;
            // Refuse early what admission would refuse: undeclared imports.
            let imports = component_imports(&wasm)?;
            let undeclared: Vec<&String> =
                imports.iter().filter(|i| !m.imports.contains(split_import_version(i).0)).collect();
            if !undeclared.is_empty() {
                bail!(
                    "the component imports interfaces the manifest does not declare: {}; add them to `imports` in {}",
                    undeclared.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", "),
                    manifest.display()
                );
            }
            let file = CapsuleFile::new(m, wasm)?;
            write_new(&path, &file.to_bytes())?;
            writeln!(out, "packed {} ({})", path.display(), file.digest())?;
            writeln!(out, "next: edge-runner capsule sign --key <key> {}", path.display())?;
            Ok(Exit::Ok)
        }
        CapsuleCommand::Sign { capsule, key, out: dest } => {
            let file = read_capsule(&capsule)?;
            let key = keys::load_signing_key(&key)?;
            let bundle = key.sign_capsule(&file);
            let signed = file.with_bundle(bundle);
            let dest = dest.unwrap_or(capsule);
            crate::staging::write_durably(&dest, &signed.to_bytes())?;
            writeln!(out, "signed {} ({}) with key {}", dest.display(), signed.digest(), key.key_id())?;
            Ok(Exit::Ok)
        }
        CapsuleCommand::Inspect { capsule, json } => {
            let file = read_capsule(&capsule)?;
            let imports = component_imports(file.component())?;
            let m = file.manifest();
            let undeclared: Vec<&String> =
                imports.iter().filter(|i| !m.imports.contains(split_import_version(i).0)).collect();
            let signer = file.bundle().map(signature::describe_bundle);
            if json {
                let v = serde_json::json!({
                    "capsule": file.digest(),
                    "manifest": m,
                    "signature": signer,
                    "imports": imports,
                    "undeclared_imports": undeclared,
                });
                serde_json::to_writer_pretty(&mut *out, &v)?;
                writeln!(out)?;
                return Ok(Exit::Ok);
            }
            let kind = serde_json::to_value(m.kind)?;
            writeln!(out, "capsule      {}@{} ({})", U(&m.name), U(&m.version), kind.as_str().unwrap_or("?"))?;
            writeln!(out, "digest       {}", file.digest())?;
            writeln!(out, "component    {} ({} bytes)", m.component.sha256, m.component.size)?;
            writeln!(out, "signature    {}", signer.as_deref().unwrap_or("none (unsigned)"))?;
            if !m.description.is_empty() {
                writeln!(out, "description  {}", U(&m.description))?;
            }
            let p = &m.provenance;
            for (k, v) in [
                ("agent", &p.agent),
                ("model", &p.model),
                ("source", &p.source_ref),
                ("ticket", &p.ticket),
                ("rationale", &p.rationale),
            ] {
                if let Some(v) = v {
                    writeln!(out, "{k:<12} {}", U(v))?;
                }
            }
            writeln!(out, "mounts")?;
            for mo in &m.mounts {
                writeln!(out, "  {} ({})", mo.name, if mo.writable { "read-write during apply" } else { "read-only" })?;
            }
            writeln!(
                out,
                "endpoints    {}",
                if m.endpoints.is_empty() { "none".into() } else { m.endpoints.join(", ") }
            )?;
            writeln!(out, "env          {}", if m.env.is_empty() { "none".into() } else { m.env.join(", ") })?;
            writeln!(out, "params")?;
            for (k, v) in &m.params {
                writeln!(out, "  {k} = {v:?}")?;
            }
            writeln!(out, "limits       {}", serde_json::to_string(&m.limits)?)?;
            writeln!(out, "imports (real, from the component)")?;
            for i in &imports {
                let declared = m.imports.contains(split_import_version(i).0);
                writeln!(out, "  {i}{}", if declared { "" } else { "   <- NOT DECLARED: admission will refuse" })?;
            }
            Ok(Exit::Ok)
        }
        CapsuleCommand::Verify { capsule, key, config } => {
            // A file that cannot be read is a runner-side error (exit 1); a
            // file that is not a valid capsule is refused input (exit 3),
            // like a bad signature.
            let bytes = std::fs::read(&capsule).with_context(|| format!("cannot read {}", capsule.display()))?;
            let file = match CapsuleFile::parse(&bytes) {
                Ok(f) => f,
                Err(e) => {
                    writeln!(out, "refused ({}): {} is not a valid capsule: {e}", e.reason_code(), capsule.display())?;
                    return Ok(Exit::Refused);
                }
            };
            let trusted = match (key, config) {
                (Some(k), None) => {
                    let pem = std::fs::read_to_string(&k).with_context(|| format!("cannot read {}", k.display()))?;
                    TrustedSigners::new(vec![TrustedSigner::from_public_key_pem("key", &pem)?], None)?
                }
                (None, Some(c)) => {
                    let governance =
                        RunnerConfig::load(&c)?.governance.context("a loaded config has its governance")?;
                    std::sync::Arc::try_unwrap(governance.signers)
                        .map_err(|_| anyhow::anyhow!("the trusted signers are shared"))?
                }
                _ => bail!("give --key <public.pem> or --config <runner.toml>"),
            };
            match signature::verify_capsule(file, &trusted) {
                Ok(v) => {
                    writeln!(out, "verified {} signed by {} ({})", v.file().digest(), v.signer(), v.signer_detail())?;
                    if v.transparency() == signature::Transparency::None {
                        writeln!(
                            out,
                            "note: keyed signature without a transparency-log entry (offline enclave signing)"
                        )?;
                    }
                    Ok(Exit::Ok)
                }
                Err(e) => {
                    writeln!(out, "refused ({}): {e}", e.reason_code())?;
                    Ok(Exit::Refused)
                }
            }
        }
    }
}

fn verify_bundle(a: VerifyBundleArgs, out: &mut dyn Write) -> Result<Exit> {
    let bundle = std::fs::read(&a.bundle).with_context(|| format!("cannot read {}", a.bundle.display()))?;
    let policy = match (a.certificate_identity, a.certificate_oidc_issuer, a.key) {
        (Some(identity), Some(issuer), None) => BundlePolicy::Identity { identity, issuer },
        (None, None, Some(k)) => BundlePolicy::Key {
            pem: std::fs::read_to_string(&k).with_context(|| format!("cannot read {}", k.display()))?,
        },
        _ => bail!("give --certificate-identity and --certificate-oidc-issuer, or --key"),
    };
    let root = a.trusted_root.as_ref().map(std::fs::read).transpose().context("cannot read --trusted-root")?;
    let artifact = match a.artifact.strip_prefix("sha256:") {
        Some(_) => BundleArtifact::Digest(a.artifact.parse().map_err(|e| anyhow::anyhow!("{e}"))?),
        None => {
            BundleArtifact::Bytes(std::fs::read(&a.artifact).with_context(|| format!("cannot read {}", a.artifact))?)
        }
    };
    match signature::verify_sigstore_bundle(&bundle, &policy, root.as_deref(), &artifact) {
        Ok(()) => {
            writeln!(out, "OK")?;
            Ok(Exit::Ok)
        }
        Err(e) => {
            writeln!(out, "invalid bundle: {e}")?;
            Ok(Exit::Error)
        }
    }
}

fn read_capsule(path: &Path) -> Result<CapsuleFile> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    CapsuleFile::parse(&bytes).with_context(|| format!("{} is not a valid capsule", path.display()))
}

fn write_new(path: &Path, bytes: &[u8]) -> Result<()> {
    crate::staging::write_durably(path, bytes)
}

/// A component's imports, as wasmtime sees them (compiles it; no instantiation).
pub(crate) fn component_imports(wasm: &[u8]) -> Result<Vec<String>> {
    let mut cfg = wasmtime::Config::new();
    cfg.wasm_component_model(true);
    let engine = wasmtime::Engine::new(&cfg).map_err(|e| anyhow::anyhow!("{e:#}"))?;
    let component = wasmtime::component::Component::new(&engine, wasm)
        .map_err(|e| anyhow::anyhow!("not a valid WebAssembly component: {e:#}"))?;
    let mut v: Vec<String> = component.component_type().imports(&engine).map(|(n, _)| n.to_owned()).collect();
    v.sort();
    Ok(v)
}

/// Planned changes, with before/after digests and why.
pub(crate) fn print_changes(changes: &[edge_core::plan::Change], out: &mut dyn Write) -> Result<()> {
    for c in changes {
        writeln!(out, "  {} {}/{}", c.action, c.mount, U(c.path.as_str()))?;
        if let Some(b) = &c.digest_before {
            writeln!(out, "      before {b}")?;
        }
        if let Some(a) = &c.digest_after {
            writeln!(out, "      after  {a}")?;
        }
        if let Some(m) = c.mode {
            let exec = if m & edge_core::plan::EXECUTE_BITS != 0 { " — EXECUTABLE" } else { "" };
            writeln!(out, "      mode   {m:04o}{exec}")?;
        }
        writeln!(out, "      why    \"{}\" (the capsule's words)", U(&c.why))?;
    }
    Ok(())
}

/// What `exec` prints for a run, and the code it ends with: the same
/// whichever process ran it (this one, or the runner serving its state
/// directory: `crate::intake::local`).
///
/// # Errors
/// If `out` cannot be written.
pub fn exec_answer(report: &RunReport, json: bool, out: &mut dyn Write) -> Result<Exit> {
    if json {
        // The same shape as the API's answer (`submit --json`).
        let id = report.resumed.clone().unwrap_or_else(|| edge_core::lifecycle::proposal_id(&report.run));
        serde_json::to_writer_pretty(&mut *out, &crate::service::summary(&id, report))?;
        writeln!(out)?;
    } else {
        print_report(report, out)?;
    }
    Ok(match report.outcome {
        Outcome::Committed | Outcome::NoChanges => Exit::Ok,
        Outcome::RolledBack => Exit::RolledBack,
        Outcome::Refused | Outcome::Interrupted | Outcome::Failed => Exit::Refused,
        Outcome::AwaitingApproval => Exit::Awaiting,
    })
}

/// Human summary of a run.
pub fn print_report(r: &RunReport, out: &mut dyn Write) -> Result<()> {
    writeln!(out, "run          {}", r.run)?;
    if let (Some(name), Some(d)) = (&r.name, &r.capsule) {
        writeln!(out, "capsule      {} ({d})", U(name))?;
    }
    if let Some(s) = &r.signer {
        writeln!(out, "signer       {s}")?;
    }
    if let Some(d) = &r.decision {
        crate::cli::policy::print_decision(d, out)?;
    }
    if let (Some(p), Some(d)) = (&r.plan, &r.plan_digest) {
        writeln!(out, "plan         {d}")?;
        writeln!(out, "             \"{}\" (the capsule's summary)", U(&p.summary))?;
        print_changes(&p.changes, out)?;
        if !p.findings.is_empty() {
            writeln!(out, "findings")?;
            for f in &p.findings {
                let subject = f.subject.as_deref().map(|s| format!(" ({})", U(s))).unwrap_or_default();
                writeln!(out, "  [{}] {}: {}{subject}", f.severity, U(&f.code), U(&f.message))?;
            }
        }
    }
    if let Some(shown) = &r.shown {
        crate::cli::show::print_shown(shown, out)?;
    } else if !r.diff.is_empty() {
        writeln!(out, "diff         {} change(s) in the staged copy", r.diff.len())?;
        for d in &r.diff {
            let mode = d.mode.map(|m| format!(" (mode {m:04o})")).unwrap_or_default();
            writeln!(out, "  {} {}/{}{mode}", d.action, d.mount, U(d.path.as_str()))?;
        }
    }
    if let Some(v) = &r.verification {
        writeln!(out, "verify       {}: {}", if v.passed { "passed" } else { "FAILED" }, U(&v.summary))?;
    }
    for (phase, c) in &r.captured {
        for line in c.log.iter().take(20) {
            writeln!(out, "  {phase} log: {}", U(line))?;
        }
        for (name, text) in [("stdout", &c.stdout), ("stderr", &c.stderr)] {
            for line in text.lines().take(10) {
                writeln!(out, "  {phase} {name}: {}", U(line))?;
            }
        }
    }
    if let Some(f) = &r.refusal {
        writeln!(out, "REFUSED      at {} [{}]", f.stage, f.reason_code)?;
        writeln!(out, "             {}", U(&f.detail))?;
    }
    let outcome = match r.outcome {
        Outcome::Committed => "committed and verified",
        Outcome::NoChanges => "nothing to change; findings recorded",
        Outcome::Refused => "refused; nothing on the host was changed",
        Outcome::RolledBack => "verification failed; the change was rolled back",
        Outcome::Interrupted => "interrupted",
        Outcome::Failed => "FAILED: a compensation failed; the service may be left changed (see the call records)",
        Outcome::AwaitingApproval => "planned; waiting for approvals (nothing on the host was changed)",
    };
    if let Some(q) = &r.quorum {
        use edge_core::approval::quorum::Outcome as Q;
        let text = match Q::from_recorded(q) {
            Some(Q::Met { count, required, break_glass }) => {
                format!("met: {count} of {required} required{}", if break_glass { " — BREAK-GLASS" } else { "" })
            }
            Some(Q::Vetoed { by, comment }) => {
                format!("vetoed by {}{}", U(&by), comment.map(|c| format!(": \"{}\"", U(&c))).unwrap_or_default())
            }
            Some(Q::Insufficient { count, required }) => format!("not met: {count} of {required} required counted"),
            None => "unreadable".into(),
        };
        writeln!(out, "quorum       {text}")?;
    }
    writeln!(out, "outcome      {outcome}")?;
    if let (Some(p), Some(d)) = (&r.proposal, &r.decision) {
        writeln!(out, "proposal     {}", p.display())?;
        writeln!(
            out,
            "next         {} approver(s) each run: edge-runner approve {} --principal <you> --ssh-key ~/.ssh/id_ed25519 -o <approval.json>",
            d.approvals_required,
            p.display()
        )?;
        writeln!(
            out,
            "             then: edge-runner exec <capsule> --config <runner.toml> --approval <approval.json> …"
        )?;
    }
    if let Some(p) = &r.receipt {
        writeln!(out, "receipt      {} (tlog-proof against a signed checkpoint)", p.display())?;
    }
    writeln!(out, "evidence     {} record(s)", r.records.len())?;
    for rec in &r.records {
        print_record(rec, out)?;
    }
    Ok(())
}

pub(crate) fn print_record(r: &Record, out: &mut dyn Write) -> Result<()> {
    let summary = match &r.event {
        Event::Submission { name, version, capsule, .. } => format!("submission  {}@{} {capsule}", U(name), U(version)),
        Event::Admitted { signer, imports, .. } => format!("admitted    signer {signer}; {} imports", imports.len()),
        Event::Decision { decision: d, .. } => {
            let reasons: Vec<String> = d.reasons.iter().map(ToString::to_string).collect();
            format!("decision    {} tier {}: {}", if d.allowed { "allow" } else { "deny" }, d.tier, reasons.join("; "))
        }
        Event::PolicyChange { old_policy, new_policy, new_graph, .. } => format!(
            "policy      now {} (graph {}){}",
            new_policy.map_or_else(|| "none".to_owned(), |d| d.to_string()),
            new_graph.map_or_else(|| "none".to_owned(), |d| d.to_string()),
            old_policy.map(|o| format!(", was {o}")).unwrap_or_default()
        ),
        Event::PolicyRefused { file, error, .. } => format!("policy-refused {}: {}", U(file), U(error)),
        Event::Authorized { tier, note, .. } => format!("authorized  tier {tier}: {}", U(note)),
        Event::Planned { plan, changes, findings, .. } => {
            format!("planned     {plan} ({changes} change(s), {} finding(s))", findings.len())
        }
        Event::Applied { diff, .. } => format!("applied     diff of {} change(s)", diff.len()),
        Event::CommitIntent { changes, journal } => {
            format!("commit-intent {changes} change(s), journal {journal}")
        }
        Event::Committed { changes } => format!("committed   {changes} change(s)"),
        Event::Verified { passed, summary, .. } => {
            format!("verified    {}: {}", if *passed { "passed" } else { "failed" }, U(summary))
        }
        Event::RolledBack { reason_code, restored, .. } => {
            format!("rolled-back [{reason_code}] {restored} file(s) restored")
        }
        Event::Refused { stage, reason_code, detail } => {
            format!("refused     at {stage} [{reason_code}] {}", U(detail))
        }
        Event::AwaitingApproval { proposal, approvals_required, .. } => {
            format!("awaiting    proposal {proposal} needs {approvals_required} approval(s)")
        }
        Event::ApprovalReceived { approval, .. } => format!("approval    received {approval}"),
        Event::ApprovalAccepted { principal, key, verdict, .. } => {
            format!("approval    {verdict} by {} ({key})", U(principal))
        }
        Event::ApprovalRefused { principal, reason_code, detail, .. } => format!(
            "approval    REFUSED [{reason_code}] {}{}",
            principal.as_ref().map(|p| format!("{}: ", U(p))).unwrap_or_default(),
            U(detail)
        ),
        Event::Quorum { outcome, break_glass, .. } => {
            format!("quorum      {outcome}{}", if *break_glass { " — BREAK-GLASS" } else { "" })
        }
        Event::KeyEvent { action, key } => format!("key         {action}: {key}"),
        Event::RegistryChanged { action, principal, key, .. } => {
            format!("registry    {action}: {} {key}", U(principal))
        }
        Event::ConfigReloaded { trigger, new, restart_needed, .. } => format!(
            "reload      by {}: policy {}, graph {}, registry {}{}",
            U(trigger),
            new.policy.map_or_else(|| "none".to_owned(), |d| d.to_string()),
            new.graph.map_or_else(|| "none".to_owned(), |d| d.to_string()),
            new.registry.map_or_else(|| "none".to_owned(), |d| d.to_string()),
            if restart_needed.is_empty() {
                String::new()
            } else {
                format!(" (restart needed for {})", restart_needed.join(", "))
            }
        ),
        Event::ReloadRefused { trigger, error, .. } => {
            format!("reload      REFUSED ({}): {}; the running configuration stays", U(trigger), U(error))
        }
        Event::Insecure { switches } => format!("INSECURE    started with {}", switches.join(", ")),
        Event::CleanupFailed { path, error } => {
            format!("cleanup     FAILED for {}: {} (kept in the staging .trash, retried at start)", U(path), U(error))
        }
        Event::NotificationFailed { url, event, proposal, attempts, error } => {
            format!("notify      FAILED {event} of {proposal} to {} after {attempts} attempt(s): {}", U(url), U(error))
        }
        Event::ProposalExpired { proposal, waited_secs, limit_secs } => {
            format!("expired     proposal {proposal} after {waited_secs}s (limit {limit_secs}s)")
        }
        Event::Interrupted { restored, detail } => {
            format!("interrupted {} ({restored} restored)", U(detail))
        }
        Event::Completed { outcome } => {
            format!("completed   {}", serde_json::to_value(outcome)?.as_str().unwrap_or("?"))
        }
        e => crate::attest::describe(e).unwrap_or_else(|| "(event)".to_owned()),
    };
    writeln!(out, "  #{:<4} {} {}", r.seq, r.run, summary)?;
    Ok(())
}

/// `exec`'s arguments, parsed without building every other command's
/// parser (a third of a millisecond of a one-run process). Only a plain
/// run is taken here: anything else (help, a mistake) is None, and the
/// whole parser answers it, as it would have.
fn parse_exec_alone(args: &[std::ffi::OsString]) -> Option<Cli> {
    use clap::{Command as ClapCommand, FromArgMatches};
    if args.get(1).is_none_or(|a| a != "exec") {
        return None;
    }
    let exec = ExecArgs::augment_args(ClapCommand::new("exec").no_binary_name(true));
    let matches = exec.try_get_matches_from(&args[2..]).ok()?;
    Some(Cli { command: Command::Exec(ExecArgs::from_arg_matches(&matches).ok()?) })
}

/// Parse args, run, map errors to exit code 1 with the full cause chain:
/// the process's exit status ([`Exit`]), with everything printed flushed.
pub fn run_main() -> u8 {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    crate::cli::approve::warn_renamed_flags(&args, &mut std::io::stderr());
    let cli = parse_exec_alone(&args).unwrap_or_else(|| Cli::parse_from(args));
    // Everything printed goes through the neutralising stream: a field that
    // was not cleaned where it was formatted still cannot move the cursor.
    let mut stdout = edge_core::text::Terminal::new(std::io::stdout().lock());
    let code = main(cli, &mut stdout);
    let _ = stdout.flush();
    match code {
        Ok(code) => code as u8,
        Err(e) => {
            let _ = stdout.flush();
            let mut stderr = edge_core::text::Terminal::new(std::io::stderr().lock());
            let _ = writeln!(stderr, "error: {e:#}");
            let _ = stderr.flush();
            Exit::Error as u8
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn exec_parsed_alone_is_exec_parsed_whole_and_anything_else_goes_to_the_whole_parser() {
        use clap::Parser;
        let argv = |s: &str| -> Vec<std::ffi::OsString> { s.split(' ').map(Into::into).collect() };
        for line in [
            "edge-runner exec c.edgecap --config runner.toml",
            "edge-runner exec --config=runner.toml c.edgecap --json",
            "edge-runner exec c.edgecap --config runner.toml --approval a.json --approval b.json",
            "edge-runner exec --config runner.toml -- --odd-name.edgecap",
        ] {
            let alone = super::parse_exec_alone(&argv(line)).unwrap_or_else(|| panic!("not taken: {line}"));
            let whole = super::Cli::try_parse_from(argv(line)).unwrap();
            assert_eq!(format!("{alone:?}"), format!("{whole:?}"), "{line}");
        }
        for line in [
            "edge-runner exec --help",
            "edge-runner exec -h",
            "edge-runner exec --version",
            "edge-runner exec c.edgecap",
            "edge-runner exec c.edgecap --config runner.toml extra",
            "edge-runner exec c.edgecap --config runner.toml --no-such-flag",
            "edge-runner exec",
            "edge-runner --version",
            "edge-runner evidence show --config runner.toml",
            "edge-runner",
        ] {
            assert!(super::parse_exec_alone(&argv(line)).is_none(), "taken, not left to the whole parser: {line}");
        }
    }

    use edge_core::plan::{Action, Change};

    #[test]
    fn a_declared_mode_is_shown_on_its_own_line_and_an_executable_says_so() {
        let change = |mode| Change {
            mount: "data".into(),
            path: edge_core::paths::MountPath::new("cron.sh").unwrap(),
            action: Action::Create,
            digest_before: None,
            digest_after: Some(edge_core::Sha256Digest::of(b"x")),
            mode,
            why: "mode 0644\n  create data/other".into(),
        };
        let mut out = Vec::new();
        super::print_changes(&[change(Some(0o755)), change(Some(0o640)), change(None)], &mut out).unwrap();
        let out = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.iter().filter(|l| l.starts_with("  create ")).count(), 3, "{out}");
        assert!(lines.contains(&"      mode   0755 — EXECUTABLE"), "{out}");
        assert!(lines.contains(&"      mode   0640"), "{out}");
        // The capsule's words stay on the `why` line: they cannot add a mode line.
        assert_eq!(lines.iter().filter(|l| l.trim_start().starts_with("mode")).count(), 2, "{out}");
    }
}
