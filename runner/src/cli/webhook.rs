//! `edge-runner webhook verify`: the receiver's check of a notification
//! (`edge_core::webhook::verify_webhook`), for scripts and for trying a
//! receiver out.

use std::io::{Read, Write};
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Subcommand;
use edge_core::note::NoteVerifier;
use edge_core::text::Untrusted as U;
use edge_core::webhook;

use crate::cli::Exit;

#[derive(Debug, Subcommand)]
pub enum WebhookCommand {
    /// Check a notification: the body on stdin (exact bytes), the headers'
    /// values as arguments. Exit 0 when it verifies, 3 when it does not.
    Verify {
        /// The runner's key, as `edge-runner evidence runner-key` prints it
        /// (a file holding it).
        #[arg(long)]
        key: PathBuf,
        /// The `Edge-Runner-Timestamp` value.
        #[arg(long)]
        timestamp: String,
        /// The `Edge-Runner-Signature` value (`ed25519=…`).
        #[arg(long)]
        signature: String,
        /// Largest accepted age, each way, in seconds.
        #[arg(long, default_value_t = webhook::DEFAULT_MAX_AGE_SECS)]
        max_age: u64,
    },
}

pub fn webhook(c: WebhookCommand, out: &mut dyn Write) -> Result<Exit> {
    let WebhookCommand::Verify { key, timestamp, signature, max_age } = c;
    let text =
        std::fs::read_to_string(&key).with_context(|| format!("cannot read the runner key {}", key.display()))?;
    let key = NoteVerifier::parse(&text).with_context(|| {
        format!("{} is not a runner key (get it with `edge-runner evidence runner-key --config …`)", key.display())
    })?;
    let mut body = Vec::new();
    std::io::stdin().lock().take(1 << 20).read_to_end(&mut body).context("cannot read the body from stdin")?;
    let now = crate::pipeline::unix_now()?;
    match webhook::verify_webhook(&key, timestamp.trim(), &body, signature.trim(), now, max_age) {
        Ok(v) => match v.payload() {
            Ok(p) => {
                writeln!(
                    out,
                    "verified  {} {} ({}), signed by {}",
                    U(&p.event),
                    U(&p.proposal),
                    U(&p.state),
                    key.name
                )?;
                Ok(Exit::Ok)
            }
            Err(e) => {
                writeln!(out, "NOT VERIFIED  {e}")?;
                Ok(Exit::Refused)
            }
        },
        Err(e) => {
            writeln!(out, "NOT VERIFIED  {e}")?;
            Ok(Exit::Refused)
        }
    }
}
