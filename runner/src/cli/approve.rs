//! `edge-runner approve`, `edge-runner reject`, `edge-runner approval assemble`.

use edge_core::text::Untrusted as U;
use std::io::{BufRead, Write};
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use edge_core::approval::{ApprovalFile, NAMESPACE, Statement, Verdict};
use ssh_key::{HashAlg, LineEnding, PrivateKey, PublicKey, SshSig};

use crate::cli::Exit;
use crate::pipeline::{Proposal, unix_now};
use crate::server::client;
use crate::ssh_agent::Agent;

#[derive(Debug, Args)]
pub struct ApproveArgs {
    /// The proposal document (`<state>/proposals/<id>.json`), or with
    /// --server the proposal id (the document is fetched from the runner).
    #[arg(value_name = "PROPOSAL")]
    pub proposal: PathBuf,
    #[command(flatten)]
    pub remote: RemoteArgs,
    /// Or through NATS, when the runner dials out (`--nats`, `--runner`, …):
    /// the document and preview as the runner published them, the
    /// approval published to it.
    #[command(flatten)]
    pub nats: crate::intake::nats_client::NatsArgs,
    /// Your principal, as in the runner's allowed_signers.
    #[arg(long)]
    pub principal: String,
    /// Sign with this OpenSSH private key file (was `--key` before the TLS
    /// flags were made the same on every command).
    #[arg(long, value_name = "FILE", conflicts_with = "agent")]
    pub ssh_key: Option<PathBuf>,
    /// Sign through ssh-agent (SSH_AUTH_SOCK); the key never leaves the agent.
    #[arg(long)]
    pub agent: bool,
    /// With --agent: which key (its .pub file); needed when the agent holds several.
    #[arg(long, requires = "agent")]
    pub public_key: Option<PathBuf>,
    /// How long the approval stays valid (capped at the tier's maximum age).
    #[arg(long, default_value = "1h")]
    pub expires_in: String,
    /// A comment signed into the approval (shown in reports and to other approvers).
    #[arg(long)]
    pub comment: Option<String>,
    /// Do not ask for confirmation.
    #[arg(long)]
    pub yes: bool,
    /// Only write the statement to sign (e.g. with `ssh-keygen -Y sign`).
    #[arg(long)]
    pub statement_only: bool,
    /// Where to write the approval file (with --statement-only, the statement).
    #[arg(short, long)]
    pub out: PathBuf,
}

/// The runner `approve`/`reject` fetch the proposal from and post the
/// approval to: the client flags of every other client command
/// ([`crate::server::client::ClientArgs`], the same names and environment
/// defaults), optional here because a proposal document on disk needs no
/// runner. `--client-cert`/`--client-key`, the names these had before,
/// are hidden aliases of `--cert`/`--key`, with a warning
/// ([`warn_renamed_flags`]).
#[derive(Debug, Args)]
pub struct RemoteArgs {
    /// The runner's HTTPS API, https://host:port (needs --ca, --cert and
    /// --key); `approve` fetches the proposal there and posts the approval back.
    #[arg(long, env = client::ENV_SERVER, value_name = "URL", requires_all = ["ca", "cert", "key"])]
    pub server: Option<String>,
    /// With --server: CA certificate that signed the runner's server certificate (PEM).
    #[arg(long, env = client::ENV_CA, value_name = "PEM")]
    pub ca: Option<PathBuf>,
    /// With --server: your client certificate (PEM), issued by the runner's CA.
    #[arg(long, env = client::ENV_CERT, value_name = "PEM", alias = "client-cert")]
    pub cert: Option<PathBuf>,
    /// With --server: your client private key (PEM), for --cert (for
    /// `approve`: not the SSH key you sign with, that is --ssh-key).
    #[arg(long, env = client::ENV_KEY, value_name = "PEM", alias = "client-key")]
    pub key: Option<PathBuf>,
}

/// How a client command reaches the runner: its HTTPS API, or NATS
/// (`--nats` and its companions, in [`crate::intake::nats_client::NatsArgs`]).
#[derive(Debug)]
pub enum Transport {
    Https(client::ClientArgs),
    Nats,
}

impl RemoteArgs {
    /// The client flags, when `--server` is given (clap has made sure the
    /// others are too).
    fn client_args(&self) -> Option<client::ClientArgs> {
        Some(client::ClientArgs {
            server: self.server.clone()?,
            ca: self.ca.clone()?,
            cert: self.cert.clone()?,
            key: self.key.clone()?,
        })
    }

    /// Which way the runner is reached; `None` when no runner is given.
    ///
    /// # Errors
    /// Both `--server` and `--nats` are given.
    pub fn transport(&self, nats: &crate::intake::nats_client::NatsArgs) -> Result<Option<Transport>> {
        match (self.client_args(), &nats.nats) {
            (Some(_), Some(_)) => bail!("give --server (HTTPS) or --nats, not both"),
            (Some(c), None) => Ok(Some(Transport::Https(c))),
            (None, Some(_)) => Ok(Some(Transport::Nats)),
            (None, None) => Ok(None),
        }
    }

    /// [`RemoteArgs::transport`] for commands that need a runner.
    ///
    /// # Errors
    /// Neither or both of `--server` and `--nats` are given.
    pub fn runner(&self, nats: &crate::intake::nats_client::NatsArgs) -> Result<Transport> {
        self.transport(nats)?
            .context("give the runner: --server URL with --ca, --cert and --key, or --nats URL with --runner")
    }
}

/// The flags `approve`/`reject` had before `--cert`/`--key` meant the TLS
/// client identity on every command: (old, what to write now).
const RENAMED: [(&str, &str); 2] = [
    ("--client-cert", "use --cert (the TLS client certificate, as on every client command)"),
    (
        "--client-key",
        "use --key (the TLS client key, as on every client command); the SSH key you sign with, \
         formerly --key, is now --ssh-key",
    ),
];

/// Warn (on `err`) about each renamed flag in an `approve`/`reject`
/// command line (`args` with the program name). They still work, as hidden
/// aliases; the warning says what to write instead, and explains clap's
/// "cannot be used multiple times" when an old command line gives both
/// `--client-key` and the SSH key as `--key`.
pub fn warn_renamed_flags(args: &[std::ffi::OsString], err: &mut dyn Write) {
    let Some(sub) = args.get(1).and_then(|a| a.to_str()) else { return };
    if !matches!(sub, "approve" | "reject") {
        return;
    }
    for (old, now) in RENAMED {
        let used = args
            .iter()
            .skip(2)
            .filter_map(|a| a.to_str())
            .any(|a| a == old || a.strip_prefix(old).is_some_and(|rest| rest.starts_with('=')));
        if used {
            let _ = writeln!(err, "warning: `{sub} {old}` is deprecated: {now}");
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum ApprovalCommand {
    /// Combine a statement and an SSHSIG made by `ssh-keygen -Y sign` into an approval file.
    Assemble {
        /// The statement `approve --statement-only` wrote.
        #[arg(long)]
        statement: PathBuf,
        /// The SSHSIG `ssh-keygen -Y sign -n approval.v1@edge-runner.dev` made of it (`<statement>.sig`).
        #[arg(long)]
        signature: PathBuf,
        /// Where to write the approval file.
        #[arg(short, long)]
        out: PathBuf,
    },
}

/// Show what is being approved, confirm, sign, write the approval file.
pub fn approve(args: ApproveArgs, verdict: Verdict, input: &mut dyn BufRead, out: &mut dyn Write) -> Result<Exit> {
    // What to sign with, before anything is fetched or shown.
    if !args.statement_only && !args.agent && args.ssh_key.is_none() {
        bail!(
            "nothing to sign with: give --ssh-key <OpenSSH private key file> or --agent (or --statement-only); \
             --key is the TLS client key for --server (the SSH key was --key before it was renamed --ssh-key)"
        );
    }
    let rt = || tokio::runtime::Builder::new_current_thread().enable_all().build();
    let mut remote = match args.remote.transport(&args.nats)? {
        Some(Transport::Https(c)) => {
            Some(Remote { via: Via::Https(client::Client::from_args(&c)?), id: remote_id(&args.proposal)?, rt: rt()? })
        }
        Some(Transport::Nats) => {
            let rt = rt()?;
            let c = rt.block_on(crate::intake::nats_client::NatsClient::connect(&args.nats))?;
            Some(Remote { via: Via::Nats(Box::new(c), None), id: remote_id(&args.proposal)?, rt })
        }
        None => None,
    };

    // Nothing is signed for a proposal that no longer waits.
    if let Some(r) = &mut remote {
        let state = r.state()?;
        if state != "awaiting-approval" {
            bail!("proposal {} is {}, not awaiting approval: there is nothing to sign", r.id, U(&state));
        }
    }
    let text = match &mut remote {
        Some(r) => r.fetch()?,
        None => std::fs::read(&args.proposal).with_context(|| format!("cannot read {}", args.proposal.display()))?,
    };
    let p: Proposal =
        serde_json::from_slice(&text).with_context(|| format!("{} is not a proposal", args.proposal.display()))?;
    p.check().context("the proposal document is inconsistent; do not sign it")?;
    // From a runner, the document must be the one asked for: over NATS it
    // is read from a subject anyone allowed to publish there can fill, and
    // another proposal's genuine document passes every check above.
    if let Some(r) = &remote
        && p.id != r.id
    {
        bail!(
            "asked for proposal {}, but the document fetched is for {}: do not sign it (someone published \
             another proposal's document in its place)",
            r.id,
            U(&p.id)
        );
    }
    let requirement = p.decision.requirement.clone().context("the proposal's decision has no tier requirement")?;
    let now = unix_now()?;
    let expires = p.expires_at();
    if now >= expires {
        bail!("proposal {} expired (it could wait until {expires}, Unix seconds): the agent must submit again", p.id);
    }
    // The preview: what the staged result changes, bound to the document's
    // plan and preview digests before anything of it is shown.
    let shown = match p.preview {
        None => None,
        Some(want) => {
            let shown: edge_core::preview::Shown = match &mut remote {
                Some(r) => serde_json::from_slice(&r.preview()?)?,
                None => {
                    let path = args.proposal.with_file_name(format!("{}.preview.json", p.id));
                    let bytes = std::fs::read(&path).with_context(|| {
                        format!(
                            "cannot read the preview {} beside the proposal; do not sign without it",
                            path.display()
                        )
                    })?;
                    serde_json::from_slice(&bytes).with_context(|| format!("{} is not a preview", path.display()))?
                }
            };
            if edge_core::Sha256Digest::of(&serde_json::to_vec(&shown.preview)?) != want {
                bail!("the preview is not the one the proposal document names ({want}); do not sign");
            }
            shown
                .check(&p.plan, &p.plan_digest)
                .context("the preview does not match the proposal's plan; do not sign")?;
            Some(shown)
        }
    };
    show(&p, out)?;
    if let Some(shown) = &shown {
        crate::cli::show::print_shown(shown, out)?;
    }
    let asked = edge_core::policy::parse_duration(&args.expires_in)
        .with_context(|| format!("--expires-in `{}`: use a duration like 30m or 2h", args.expires_in))?;
    let lifetime = asked.min(requirement.max_age_secs);
    if lifetime < asked {
        writeln!(out, "note: expiry capped at the tier's maximum approval age ({}s)", requirement.max_age_secs)?;
    }
    let statement = p.statement(&args.principal, verdict, args.comment.clone(), now, lifetime)?;
    let bytes = statement.canonical_bytes();
    if args.statement_only {
        crate::staging::write_durably(&args.out, &bytes)?;
        writeln!(out, "statement written to {}; sign it with", args.out.display())?;
        writeln!(out, "  ssh-keygen -Y sign -f <key> -n {NAMESPACE} {}", args.out.display())?;
        writeln!(
            out,
            "then: edge-runner approval assemble --statement {0} --signature {0}.sig -o <approval.json>",
            args.out.display()
        )?;
        return Ok(Exit::Ok);
    }
    let word = if verdict == Verdict::Approve { "approve" } else { "reject" };
    if !args.yes {
        write!(out, "\nType `{word}` to sign as {} (anything else aborts): ", args.principal)?;
        out.flush()?;
        let mut line = String::new();
        input.read_line(&mut line)?;
        if line.trim() != word {
            bail!("not confirmed; nothing was signed");
        }
    }
    let sig = if args.agent {
        sign_with_agent(args.public_key.as_ref(), &bytes)?
    } else {
        let path = args.ssh_key.as_ref().context("give --ssh-key <private key file> or --agent")?;
        let key = PrivateKey::read_openssh_file(path).with_context(|| format!("cannot read key {}", path.display()))?;
        if key.is_encrypted() {
            bail!("{} is passphrase-protected: load it into ssh-agent (`ssh-add`) and use --agent", path.display());
        }
        key.sign(NAMESPACE, HashAlg::Sha512, &bytes)
            .with_context(|| format!("cannot sign with {} (hardware keys sign through --agent)", path.display()))?
    };
    let file = ApprovalFile::ssh(statement, sig.to_pem(LineEnding::LF)?);
    let bytes = serde_json::to_vec_pretty(&file)?;
    // Posted first: an approval the runner refuses is not left behind as if valid.
    let posted = match &mut remote {
        Some(r) => Some(r.post(bytes.clone())?),
        None => None,
    };
    crate::staging::write_durably(&args.out, &bytes)?;
    writeln!(out, "{word}d proposal {} as {}: {}", p.id, args.principal, args.out.display())?;
    if let Some(v) = posted {
        let status = &v["status"];
        let text = match status["quorum"].as_str() {
            Some("met") => "met".to_owned(),
            Some("vetoed") => format!("vetoed by {}", U(status["by"].as_str().unwrap_or("?"))),
            Some("pending") => format!(
                "{} of {} counted so far",
                status["count"].as_u64().unwrap_or(0),
                status["required"].as_u64().unwrap_or(0)
            ),
            _ => "unknown".to_owned(),
        };
        writeln!(out, "posted to the runner: quorum {text}")?;
        if let Some(state) = v["run"]["state"].as_str() {
            writeln!(out, "the proposal ran: {}", U(state))?;
        }
    }
    Ok(Exit::Ok)
}

/// With a runner (--server, or `EDGE_RUNNER_SERVER` set), the argument is a
/// proposal id; a path to a document is refused rather than sent as an id
/// (the environment may name a runner the approver did not mean to use).
fn remote_id(arg: &std::path::Path) -> Result<String> {
    let id = arg.to_string_lossy();
    if arg.exists() || id.contains('/') || id.ends_with(".json") {
        bail!(
            "`{}` is a proposal document, but a runner is given (--server or {}): with a runner, give the \
             proposal id; to approve the document on disk, unset {1}",
            U(&id),
            client::ENV_SERVER
        );
    }
    if id.is_empty() || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
        bail!("`{}` is not a proposal id (p-…, as `edge-runner proposals list` shows)", U(&id));
    }
    Ok(id.into_owned())
}

/// A runner the proposal is fetched from and the approval posted to.
struct Remote {
    via: Via,
    id: String,
    rt: tokio::runtime::Runtime,
}

/// How `approve` reaches the runner.
enum Via {
    Https(client::Client),
    /// The document and preview, once read from the outbound stream.
    Nats(Box<crate::intake::nats_client::NatsClient>, Option<(Vec<u8>, Option<Vec<u8>>)>),
}

impl Remote {
    /// The proposal's state now.
    fn state(&mut self) -> Result<String> {
        match &mut self.via {
            Via::Https(_) => {
                let v = self.get_json(&format!("/v1/proposals/{}", self.id))?;
                Ok(v["state"].as_str().unwrap_or("?").to_owned())
            }
            Via::Nats(c, _) => self.rt.block_on(c.state(&self.id)),
        }
    }

    fn fetch(&mut self) -> Result<Vec<u8>> {
        match &mut self.via {
            Via::Https(c) => {
                let path = format!("/v1/proposals/{}/document", self.id);
                let r = self.rt.block_on(c.get(&path))?;
                if !r.status.is_success() {
                    bail!("cannot fetch proposal {} ({}): {}", self.id, r.status, r.error_message());
                }
                Ok(r.body.to_vec())
            }
            Via::Nats(c, cached) => {
                let got = self.rt.block_on(c.proposal(&self.id))?;
                let doc = got.0.clone();
                *cached = Some(got);
                Ok(doc)
            }
        }
    }

    fn preview(&mut self) -> Result<Vec<u8>> {
        match &mut self.via {
            Via::Https(_) => Ok(serde_json::to_vec(&self.get_json(&format!("/v1/proposals/{}/preview", self.id))?)?),
            Via::Nats(_, cached) => cached
                .as_ref()
                .and_then(|(_, p)| p.clone())
                .with_context(|| format!("runner published no preview for {}; do not sign without it", self.id)),
        }
    }

    fn get_json(&mut self, path: &str) -> Result<serde_json::Value> {
        let Via::Https(c) = &mut self.via else { bail!("only over HTTPS") };
        let r = self.rt.block_on(c.get(path))?;
        if !r.status.is_success() {
            bail!("cannot fetch {path} ({}): {}", r.status, r.error_message());
        }
        r.json()
    }

    fn post(&mut self, approval: Vec<u8>) -> Result<serde_json::Value> {
        match &mut self.via {
            Via::Https(c) => {
                let path = format!("/v1/proposals/{}/approvals", self.id);
                let r = self.rt.block_on(c.post(&path, approval, "application/json"))?;
                if !r.status.is_success() {
                    bail!("the runner did not take the approval ({}): {}", r.status, r.error_message());
                }
                r.json()
            }
            Via::Nats(c, _) => {
                let v = self.rt.block_on(c.request("approve", approval, std::time::Duration::from_secs(300)))?;
                if let Some(r) = v.get("refused") {
                    bail!(
                        "the runner did not take the approval [{}]: {}",
                        U(r["reason_code"].as_str().unwrap_or("?")),
                        U(r["detail"].as_str().unwrap_or(""))
                    );
                }
                Ok(v)
            }
        }
    }
}

fn sign_with_agent(public: Option<&PathBuf>, bytes: &[u8]) -> Result<SshSig> {
    let agent = Agent::from_env()?;
    let key = match public {
        Some(p) => PublicKey::read_openssh_file(p).with_context(|| format!("cannot read {}", p.display()))?,
        None => {
            let ids = agent.identities()?;
            match ids.as_slice() {
                [(k, _)] => k.clone(),
                [] => bail!("ssh-agent holds no keys: ssh-add yours"),
                many => bail!(
                    "ssh-agent holds {} keys; choose one with --public-key ({})",
                    many.len(),
                    many.iter().map(|(_, c)| c.as_str()).collect::<Vec<_>>().join(", ")
                ),
            }
        }
    };
    let data = SshSig::signed_data(NAMESPACE, HashAlg::Sha512, bytes)?;
    let sig = agent.sign(&key, &data)?;
    Ok(SshSig::new(key.key_data().clone(), NAMESPACE, HashAlg::Sha512, sig)?)
}

pub fn approval(cmd: ApprovalCommand, out: &mut dyn Write) -> Result<Exit> {
    match cmd {
        ApprovalCommand::Assemble { statement, signature, out: dest } => {
            let bytes = std::fs::read(&statement).with_context(|| format!("cannot read {}", statement.display()))?;
            let st: Statement = serde_json::from_slice(&bytes)
                .with_context(|| format!("{} is not a statement", statement.display()))?;
            if st.canonical_bytes() != bytes {
                bail!(
                    "{} is not the canonical statement (was it edited?); the signature would not verify",
                    statement.display()
                );
            }
            let pem =
                std::fs::read_to_string(&signature).with_context(|| format!("cannot read {}", signature.display()))?;
            let sig =
                SshSig::from_pem(&pem).with_context(|| format!("{} is not an SSH signature", signature.display()))?;
            if sig.namespace() != NAMESPACE {
                bail!("signed in namespace `{}`; sign with -n {NAMESPACE}", sig.namespace());
            }
            let file = ApprovalFile::ssh(st, pem);
            crate::staging::write_durably(&dest, &serde_json::to_vec_pretty(&file)?)?;
            writeln!(out, "approval written to {}", dest.display())?;
            Ok(Exit::Ok)
        }
    }
}

/// What an approver sees before signing.
fn show(p: &Proposal, out: &mut dyn Write) -> Result<()> {
    let m = &p.manifest;
    let s = |v: &serde_json::Value| U(v.as_str().unwrap_or("")).to_string();
    writeln!(out, "proposal     {} on runner {}", U(&p.id), U(&p.runner))?;
    writeln!(out, "capsule      {}@{} ({}) {}", s(&m["name"]), s(&m["version"]), s(&m["kind"]), p.capsule)?;
    let transparency = match p.transparency {
        edge_core::signature::Transparency::None => "keyed, no transparency-log entry",
        edge_core::signature::Transparency::Verified => "transparency-log entry verified",
    };
    writeln!(out, "signed by    {} ({}, {transparency})", U(&p.signer), U(&p.signer_detail))?;
    if let Some(prov) = m["provenance"].as_object() {
        for (k, v) in prov {
            writeln!(out, "provenance   {}: {}", U(k), U(v.as_str().unwrap_or("")))?;
        }
    }
    crate::cli::policy::print_decision(&p.decision, out)?;
    print_grant(&p.grant, out)?;
    writeln!(out, "plan         {} — \"{}\" (the capsule's summary)", p.plan_digest, U(&p.plan.summary))?;
    crate::cli::print_changes(&p.plan.changes, out)?;
    crate::cli::show::print_calls(&crate::service::detail::call_views(&p.plan, |d| p.shown_body(d)), out)?;
    for f in &p.plan.findings {
        writeln!(out, "  finding [{}] {}: {}", f.severity, U(&f.code), U(&f.message))?;
    }
    Ok(())
}

/// A grant, for people: mounts and their access, env names, imports, limits.
fn print_grant(g: &edge_core::admission::Grant, out: &mut dyn Write) -> Result<()> {
    let mounts: Vec<String> =
        g.mounts.iter().map(|m| format!("{} ({})", U(&m.name), if m.writable { "write" } else { "read" })).collect();
    writeln!(out, "grant        mounts {}", if mounts.is_empty() { "none".into() } else { mounts.join(", ") })?;
    if !g.endpoints.is_empty() {
        writeln!(out, "             endpoints {}", U(&g.endpoints.join(", ")))?;
    }
    if !g.env.is_empty() {
        writeln!(out, "             env {}", U(&g.env.join(", ")))?;
    }
    let imports: Vec<&str> = g.imports.iter().map(String::as_str).collect();
    writeln!(out, "             imports {}", U(&imports.join(", ")))?;
    let l = &g.limits;
    writeln!(
        out,
        "             limits {} MiB memory, {} ms CPU, {} ms wall, {} KiB output, at most {} plan change(s)",
        l.memory_mib, l.cpu_ms, l.wall_ms, l.output_kib, l.max_plan_changes
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::ffi::OsString;

    use super::*;

    fn warned(args: &[&str]) -> String {
        let args: Vec<OsString> = std::iter::once("edge-runner").chain(args.iter().copied()).map(Into::into).collect();
        let mut err = Vec::new();
        warn_renamed_flags(&args, &mut err);
        String::from_utf8(err).unwrap()
    }

    #[test]
    fn the_old_tls_flag_names_are_warned_about_on_approve_and_reject_only() {
        let w = warned(&["approve", "p-1", "--client-cert", "c.pem", "--client-key=k.pem", "--ssh-key", "id"]);
        assert_eq!(w.lines().count(), 2, "{w}");
        assert!(w.contains("`approve --client-cert` is deprecated: use --cert"), "{w}");
        assert!(w.contains("`approve --client-key` is deprecated: use --key") && w.contains("now --ssh-key"), "{w}");
        assert!(warned(&["reject", "p-1", "--client-key", "k"]).contains("`reject --client-key`"));
        for quiet in [
            &["approve", "p-1", "--cert", "c", "--key", "k", "--ssh-key", "id"][..],
            &["submit", "x.capsule", "--client-cert", "c"],
            &["approve", "p-1", "--client-certificate", "c"],
            &[],
        ] {
            assert_eq!(warned(quiet), "", "{quiet:?}");
        }
    }

    #[test]
    fn with_a_runner_the_argument_must_be_a_proposal_id() {
        assert_eq!(remote_id(std::path::Path::new("p-1764800000000-0a1b2c3d")).unwrap(), "p-1764800000000-0a1b2c3d");
        for doc in ["state/proposals/p-1.json", "p-1.json"] {
            let e = remote_id(std::path::Path::new(doc)).unwrap_err().to_string();
            assert!(e.contains("is a proposal document") && e.contains("unset EDGE_RUNNER_SERVER"), "{e}");
        }
        for bad in ["p-1?x=1", "", "p 1", "p-1\u{1b}[2J"] {
            let e = remote_id(std::path::Path::new(bad)).unwrap_err().to_string();
            assert!(e.contains("is not a proposal id") && !e.contains('\u{1b}'), "{e}");
        }
    }
}
