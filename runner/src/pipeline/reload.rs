//! Reload: read the config file again and put its policy, graph, node
//! mapping, trusted signers, approver registry and API grants (agents,
//! roles, access) in force together, without a restart (`SIGHUP`,
//! `edge-runner reload`).
//!
//! ```text
//! load + check everything ──bad──► reload-refused (kept digests); nothing changes
//!        │ good
//!        ▼
//! artifacts, [policy-change], config-reloaded (old → new digests) ── durable
//!        ▼
//! one assignment: the new governance is in force for runs that start now
//! ```
//!
//! Runs already started keep the governance they took when they started.
//! Sections a reload does not apply (listen addresses, mounts, limits, …)
//! are named in the record and the answer: they need a restart.

use anyhow::{Context, Result};
use edge_core::evidence::{ConfigDigests, Event};
use serde::Serialize;

use super::Runner;
use crate::config::RunnerConfig;
use crate::governance;

/// What a reload did.
#[derive(Debug, Clone, Serialize)]
pub struct Reloaded {
    /// Whether the new configuration is in force.
    pub applied: bool,
    /// What was in force before (and still is, when refused).
    pub old: ConfigDigests,
    /// What is in force now (absent when refused).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub new: Option<ConfigDigests>,
    /// Changed sections that only a restart applies.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub restart_needed: Vec<String>,
    /// Why it was refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Runner {
    /// Reload the governing configuration from the config file this runner
    /// was opened with. A config that does not load (any check `serve`
    /// makes at start) is refused and recorded; the running configuration
    /// stays. `trigger` says who asked (`sighup`, `api:<identity>`).
    ///
    /// # Errors
    /// Only if the evidence log cannot be written; nothing changed then.
    pub async fn reload(&self, trigger: &str) -> Result<Reloaded> {
        let _one = self.changing_governance.lock().await;
        let current = self.governance();
        let old = current.digests();
        let started = std::time::Instant::now();
        let loaded = match self.config.source.clone() {
            Some(path) => load_in_background(path).await?,
            None => Err(anyhow::anyhow!("this runner was not started from a config file; restart it instead")),
        };
        let mut config = match loaded {
            Ok(c) => c,
            // What the record, the log and the answer say: never a line
            // of the file.
            Err(e) => return self.refuse_reload(trigger, crate::config::error_shown(&format!("{e:#}")), old).await,
        };
        let next = config.governance.take().context("a loaded config has its governance")?;
        let loaded_in = started.elapsed();
        let new = next.digests();
        let restart_needed = governance::restart_needed(&current.config_text, &next.config_text);
        // The documents go to the writer with the records (one durable wait,
        // no blocking of this task's thread while a megabyte is written).
        let mut log = self.log.run_log();
        for doc in next.documents() {
            log.put_artifact(doc)?;
        }
        if let Some(change) = self.policy_change(&next) {
            log.append_deferred("policy", change)?;
        }
        let event = Event::ConfigReloaded {
            trigger: trigger.to_owned(),
            old: Box::new(old.clone()),
            new: Box::new(new.clone()),
            restart_needed: restart_needed.clone(),
        };
        log.append_deferred("runner", event)?;
        log.barrier().await?;
        let previous = self.replace_governance(next);
        // The last holder frees the old graph; if that is us, in the
        // background like the load (a run still holding it frees it when
        // it ends).
        let _ = in_background("edge-runner-reload-free", move || drop(previous));
        tracing::info!(
            trigger,
            policy = ?new.policy.map(|d| d.to_string()),
            graph = ?new.graph.map(|d| d.to_string()),
            registry = ?new.registry.map(|d| d.to_string()),
            restart_needed = ?restart_needed,
            load_ms = loaded_in.as_secs_f64() * 1e3,
            ms = started.elapsed().as_secs_f64() * 1e3,
            "configuration reloaded"
        );
        Ok(Reloaded { applied: true, old, new: Some(new), restart_needed, error: None })
    }

    async fn refuse_reload(&self, trigger: &str, error: String, kept: ConfigDigests) -> Result<Reloaded> {
        tracing::warn!(trigger, error = %edge_core::text::line(&error), "reload refused; the running configuration stays");
        let mut log = self.log.run_log();
        log.append_deferred(
            "runner",
            Event::ReloadRefused { trigger: trigger.to_owned(), error: error.clone(), kept: kept.clone() },
        )?;
        log.barrier().await?;
        Ok(Reloaded { applied: false, old: kept, new: None, restart_needed: Vec::new(), error: Some(error) })
    }
}

/// Load the config in the background (see [`in_background`]).
async fn load_in_background(path: std::path::PathBuf) -> Result<Result<RunnerConfig>> {
    in_background("edge-runner-reload", move || RunnerConfig::load(&path))?.await.context("loading the config panicked")
}

/// Run `f` on a thread of its own at a lower CPU priority (nice 10):
/// parsing, compiling and freeing a large graph is background work, and
/// the runs in flight on the same cores come first (`benches/reload.rs`).
fn in_background<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<tokio::sync::oneshot::Receiver<T>> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            // SAFETY: plain syscalls on this thread's own id. A failure
            // only leaves the thread at normal priority.
            unsafe {
                libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, 10);
            }
            let _ = tx.send(f());
        })
        .context("cannot start a background thread")?;
    Ok(rx)
}
