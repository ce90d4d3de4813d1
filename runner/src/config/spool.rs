//! The `[spool]` section of `runner.toml`: an intake for air-gapped
//! segments. Capsules and approvals are dropped into an inbox directory
//! (carried over by removable media or a one-way link); answers, receipts,
//! checkpoints and exports come back in an outbox (`crate::intake::spool`).
//!
//! ```toml
//! [spool]
//! dir = "spool"        # inbox/ work/ done/ refused/ outbox/ beneath it
//! settle = "1s"        # a file is taken once unchanged this long
//! poll = "500ms"       # how often the inbox is read
//! max_file_mib = 64    # larger files are refused unread
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSpool {
    /// The spool's root: `inbox/`, `work/`, `done/`, `refused/` and
    /// `outbox/` are made beneath it (mode 0700) at start.
    dir: PathBuf,
    /// A file in the inbox is taken once its size and modification time
    /// have not changed for this long (default 1s; "0s" when every writer
    /// writes under a dot- or `.part` name and renames, which is atomic).
    #[serde(default)]
    settle: Option<String>,
    /// How often the inbox is read (default 500ms).
    #[serde(default)]
    poll: Option<String>,
    /// Largest file taken (default 64 MiB: a capsule with its component);
    /// a larger one is refused without being read.
    #[serde(default)]
    max_file_mib: Option<u64>,
}

/// Resolved spool settings.
#[derive(Debug, Clone)]
pub struct SpoolSettings {
    pub dir: PathBuf,
    pub settle: Duration,
    pub poll: Duration,
    pub max_file_bytes: u64,
}

impl SpoolSettings {
    /// Where files are dropped.
    pub fn inbox(&self) -> PathBuf {
        self.dir.join("inbox")
    }
    /// Files taken and not yet answered (claimed by a rename, named with the
    /// run they become).
    pub fn work(&self) -> PathBuf {
        self.dir.join("work")
    }
    /// Files processed, each with `<name>.reason` beside it.
    pub fn done(&self) -> PathBuf {
        self.dir.join("done")
    }
    /// Files refused before or by a run, each with `<name>.reason` beside it.
    pub fn refused(&self) -> PathBuf {
        self.dir.join("refused")
    }
    /// Answers, receipts, checkpoints and exports, for the return trip.
    pub fn outbox(&self) -> PathBuf {
        self.dir.join("outbox")
    }
}

fn millis(field: &str, v: Option<&str>, default: Duration) -> Result<Duration> {
    let Some(s) = v else { return Ok(default) };
    if matches!(s.trim(), "0" | "0s" | "0ms") {
        return Ok(Duration::ZERO);
    }
    if let Some(ms) = s.strip_suffix("ms") {
        let ms: u64 =
            ms.trim().parse().with_context(|| format!("spool.{field} `{s}`: use a duration like \"500ms\""))?;
        return Ok(Duration::from_millis(ms));
    }
    let secs = edge_core::policy::parse_duration(s)
        .with_context(|| format!("spool.{field} `{s}`: use a duration like \"500ms\" or \"2s\""))?;
    Ok(Duration::from_secs(secs))
}

impl RawSpool {
    pub(crate) fn resolve(self, resolve: impl Fn(&Path) -> PathBuf) -> Result<SpoolSettings> {
        let settle = millis("settle", self.settle.as_deref(), Duration::from_secs(1))?;
        let poll = millis("poll", self.poll.as_deref(), Duration::from_millis(500))?;
        if poll.is_zero() || poll > Duration::from_secs(3600) {
            bail!("spool.poll must be between 1ms and 1h");
        }
        if settle > Duration::from_secs(3600) {
            bail!("spool.settle is at most 1h");
        }
        let mib = self.max_file_mib.unwrap_or(64);
        if mib == 0 || mib > 1024 {
            bail!("spool.max_file_mib must be between 1 and 1024 (a capsule with its component is at most a few MiB)");
        }
        if self.dir.as_os_str().is_empty() {
            bail!("spool.dir is empty: name the spool's directory, e.g. dir = \"spool\"");
        }
        Ok(SpoolSettings { dir: resolve(&self.dir), settle, poll, max_file_bytes: mib << 20 })
    }
}
