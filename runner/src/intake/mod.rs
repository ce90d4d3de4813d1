//! Intakes beside the HTTP API, over the same run service
//! ([`crate::service::RunService`]): the same checks, the same evidence.
//! Every capsule and approval is signed and bound, so a transport needs
//! only to deliver, not to be trusted.
//!
//! - [`spool`]: a directory for air-gapped segments (removable media, a
//!   one-way link).
//! - [`nats`]: an outbound-only pull from NATS JetStream.
//! - [`local`]: `edge-runner exec` on the same host, handing its run to
//!   the serving process (a Unix socket in the state directory).
//!
//! Both must never run one delivery twice, across a kill at any point: each
//! names the run a capsule becomes *before* it runs (in a claimed file's
//! name; for a message, derived from its place in the stream) and asks the
//! evidence log whether that run exists before handing the delivery over
//! again.
pub mod local;
pub mod nats;
pub mod nats_client;
pub mod spool;

use std::collections::BTreeMap;
use std::sync::Mutex;

/// Whether each intake can take work now, for `/readyz` and `/metrics`.
#[derive(Debug, Default)]
pub struct Health {
    states: Mutex<BTreeMap<&'static str, Result<(), String>>>,
}

impl Health {
    /// Record an intake's state (`Err` says why it cannot take work).
    pub fn set(&self, intake: &'static str, state: Result<(), String>) {
        self.states.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(intake, state);
    }

    /// Each intake and its state.
    pub fn all(&self) -> Vec<(&'static str, Result<(), String>)> {
        self.states
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .map(|(k, v)| (*k, v.clone()))
            .collect()
    }

    /// `Err` when no intake can take work; otherwise the intakes that
    /// cannot, one line each (empty when all can).
    ///
    /// # Errors
    /// Every intake is down (none registered counts as up: a runner
    /// opened for the command line).
    pub fn readiness(&self) -> Result<Vec<String>, String> {
        let all = self.all();
        let down: Vec<String> =
            all.iter().filter_map(|(k, v)| v.as_ref().err().map(|why| format!("{k}: {why}"))).collect();
        if !all.is_empty() && down.len() == all.len() {
            return Err(format!("no intake can take work ({})", down.join("; ")));
        }
        Ok(down)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_while_any_intake_can_take_work() {
        let h = Health::default();
        assert_eq!(h.readiness(), Ok(vec![]));
        h.set("nats", Err("disconnected; reconnecting".into()));
        assert!(h.readiness().unwrap_err().contains("nats: disconnected"));
        h.set("api", Ok(()));
        assert_eq!(h.readiness(), Ok(vec!["nats: disconnected; reconnecting".to_owned()]));
        h.set("nats", Ok(()));
        assert_eq!(h.readiness(), Ok(vec![]));
    }
}
