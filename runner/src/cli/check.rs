//! `check` (everything `serve` needs, every problem at once) and
//! `pki issue` (client certificates from the development CA).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use serde_json::json;

use crate::check::{Problem, Severity};
use crate::cli::Exit;

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The runner config to check (runner.toml).
    #[arg(long)]
    pub config: PathBuf,
    /// Print the problems as JSON (`{"ok", "errors", "warnings", "problems": [{"severity", "what", "fix"}]}`).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum PkiCommand {
    /// Issue a client certificate (SPIFFE ID in its URI SAN) for a person or
    /// an agent from the development CA, and say which config entry grants it.
    Issue(IssueArgs),
}

#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("subject").required(true).args(["person", "agent"]))]
pub struct IssueArgs {
    /// A person (approver, operator, reviewer): `spiffe://<trust domain>/people/NAME`.
    #[arg(long, value_name = "NAME")]
    pub person: Option<String>,
    /// An agent that submits capsules: `spiffe://<trust domain>/agent/NAME`.
    #[arg(long, value_name = "NAME")]
    pub agent: Option<String>,
    /// The directory to write NAME.pem and NAME.key (0600) into; existing files are never overwritten.
    #[arg(long)]
    pub out: PathBuf,
    /// How long the certificate is valid (s, m, h or d; at most 825d and not beyond the CA).
    #[arg(long, default_value = "90d")]
    pub valid: String,
    /// The runner config whose `server.client_ca` is the issuing CA (default: ./runner.toml).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// The CA certificate to issue from (default: the config's `server.client_ca`).
    #[arg(long, value_name = "PEM")]
    pub ca_cert: Option<PathBuf>,
    /// The CA's private key (default: the CA certificate's path with `.key`, as `init` writes it).
    #[arg(long, value_name = "PEM")]
    pub ca_key: Option<PathBuf>,
    /// The SPIFFE trust domain of the identity.
    #[arg(long, default_value = crate::init::DEV_TRUST_DOMAIN)]
    pub trust_domain: String,
}

/// `edge-runner check`.
pub fn check(a: &CheckArgs, out: &mut dyn Write) -> Result<Exit> {
    let problems = crate::check::check(&a.config);
    let (errors, warnings) = count(&problems);
    if a.json {
        serde_json::to_writer_pretty(
            &mut *out,
            &json!({
                "config": a.config.display().to_string(),
                "ok": problems.is_empty(),
                "errors": errors,
                "warnings": warnings,
                "problems": problems,
            }),
        )?;
        writeln!(out)?;
    } else if problems.is_empty() {
        writeln!(
            out,
            "ok: {} — config, policy, graph, approvers, keys, certificates, mounts, directories and ports are \
             ready for `serve`",
            edge_core::text::line(&a.config.display().to_string())
        )?;
    } else {
        write!(out, "{}", render(&problems))?;
        let verdict = if errors > 0 { "`serve` would refuse to start" } else { "`serve` would start and warn" };
        writeln!(out, "{errors} error(s), {warnings} warning(s): {verdict}")?;
    }
    Ok(if problems.is_empty() { Exit::Ok } else { Exit::Error })
}

fn count(problems: &[Problem]) -> (usize, usize) {
    let errors = problems.iter().filter(|p| p.severity == Severity::Error).count();
    (errors, problems.len() - errors)
}

/// Problems as text, one block each, neutralised (they quote file
/// contents and paths): `ERROR   what` / `        fix: …`.
pub fn render(problems: &[Problem]) -> String {
    let mut s = String::new();
    for p in problems {
        let label = match p.severity {
            Severity::Error => "ERROR  ",
            Severity::Warning => "WARNING",
        };
        let what = edge_core::text::block(p.what.trim_end()).replace('\n', "\n         ");
        s.push_str(&format!("{label}  {what}\n         fix: {}\n", edge_core::text::line(&p.fix)));
    }
    s
}

/// The check `serve` runs before it binds: warnings are logged, errors
/// refuse the start, all of them in the message.
///
/// # Errors
/// When the check finds an error.
pub fn before_serve(config: &Path) -> Result<()> {
    let problems = crate::check::check(config);
    for p in problems.iter().filter(|p| p.severity == Severity::Warning) {
        tracing::warn!(problem = %edge_core::text::line(&p.what), fix = %edge_core::text::line(&p.fix), "config check");
    }
    if crate::check::has_errors(&problems) {
        let (errors, _) = count(&problems);
        bail!(
            "the configuration check found {errors} error(s); serve refuses to start:\n{}after fixing them, \
             `edge-runner check --config {}` lists what is left",
            render(&problems),
            config.display()
        );
    }
    Ok(())
}

/// `edge-runner pki issue`.
pub fn pki(c: &PkiCommand, out: &mut dyn Write) -> Result<Exit> {
    let PkiCommand::Issue(a) = c;
    let subject = match (&a.person, &a.agent) {
        (Some(p), None) => crate::pki::Subject::Person(p.clone()),
        (None, Some(n)) => crate::pki::Subject::Agent(n.clone()),
        _ => bail!("give exactly one of --person NAME or --agent NAME"),
    };
    let valid = edge_core::policy::parse_duration(&a.valid)
        .with_context(|| format!("--valid `{}`: use a duration like 90d", a.valid))?;
    let ca_cert = match &a.ca_cert {
        Some(p) => p.clone(),
        None => {
            let config = a.config.clone().unwrap_or_else(|| PathBuf::from("runner.toml"));
            let loaded = crate::config::RunnerConfig::load(&config)
                .with_context(|| "give --ca-cert and --ca-key, or --config of a runner whose [server] names the CA")?;
            loaded
                .server
                .with_context(|| format!("{} has no [server]: give --ca-cert and --ca-key", config.display()))?
                .client_ca
        }
    };
    let ca_key = a.ca_key.clone().unwrap_or_else(|| ca_cert.with_extension("key"));
    let now = crate::pipeline::unix_now()?;
    let issued =
        crate::pki::issue(&ca_cert, &ca_key, &a.trust_domain, &subject, Duration::from_secs(valid), now, &a.out)?;
    let id = &issued.identity;
    writeln!(out, "issued  {id}  (valid until {})", issued.not_after)?;
    writeln!(out, "cert    {}", issued.cert.display())?;
    writeln!(out, "key     {} (0600: hand it to its owner only)", issued.key.display())?;
    writeln!(
        out,
        "next: grant it in runner.toml, then reload the runner (`systemctl reload edge-runner` or `edge-runner reload`):"
    )?;
    match subject {
        crate::pki::Subject::Person(_) => {
            writeln!(out, "  [server.access]            # each permission it needs, or add it to a role there")?;
            writeln!(out, "  proposals = [\"{id}\"]      # read proposals, post approvals")?;
            writeln!(out, "  evidence = [\"{id}\"]       # download the evidence export")?;
        }
        crate::pki::Subject::Agent(_) => {
            writeln!(out, "  [server]")?;
            writeln!(out, "  agents = [\"{id}\"]         # may submit; sees only its own proposals")?;
        }
    }
    writeln!(out, "  (append to the existing lists; clients use --cert/--key with the files above)")?;
    Ok(Exit::Ok)
}
