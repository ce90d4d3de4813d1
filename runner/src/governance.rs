//! What governs decisions, as one value: the policy and its graph, the
//! mapping of mounts and endpoints to graph nodes, the trusted signers and
//! the approver registry.
//!
//! The runner holds the one in force behind a lock and replaces it whole
//! (a reload, a passkey enrollment); a run takes the one in force when it
//! starts ([`crate::pipeline::Runner::governance`]) and keeps it to its end,
//! so a reload never changes the rules under a run in flight.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use edge_core::Sha256Digest;
use edge_core::approval::Registry;
use edge_core::evidence::ConfigDigests;
use edge_core::signature::TrustedSigners;

use crate::policy_files::PolicySet;

/// The governing part of a runner config.
#[derive(Debug, Clone)]
pub struct Governance {
    /// The policy, graph and their files (None only with
    /// `dangerous_run_without_policy`).
    pub policy: Option<Arc<PolicySet>>,
    /// Mount and endpoint name → graph node.
    pub nodes: Arc<BTreeMap<String, String>>,
    /// Who may sign capsules.
    pub signers: Arc<TrustedSigners>,
    /// The Sigstore trusted root's exact bytes (recorded as an evidence
    /// artifact with each admission, so the signature can be checked again offline).
    pub trusted_root: Option<Arc<Vec<u8>>>,
    /// Who may approve (allowed_signers + roles + passkeys).
    pub approvers: Option<Arc<Registry>>,
    /// Where passkey enrollments are registered (with `[approvers]`).
    pub passkeys_file: Option<PathBuf>,
    /// Clock skew tolerated on approval times.
    pub clock_skew_secs: u64,
    /// The config file's exact text (compared at a reload; never stored:
    /// it may hold secrets).
    pub config_text: Arc<String>,
    /// The config as a reviewer is shown it ([`crate::config::shown`]):
    /// the artifact records name as `config_shown`.
    pub config_shown: Arc<String>,
    /// `[server]`'s agents, roles and access grants (None without `[server]`).
    pub grants: Option<Arc<crate::config::server::Grants>>,
}

impl Governance {
    /// Every governing document by digest.
    pub fn digests(&self) -> ConfigDigests {
        let r = self.approvers.as_deref();
        ConfigDigests {
            config: Sha256Digest::of(self.config_text.as_bytes()),
            config_shown: Some(Sha256Digest::of(self.config_shown.as_bytes())),
            policy: self.policy.as_ref().map(|p| p.policy.digest()),
            graph: self.policy.as_ref().map(|p| p.graph_digest),
            registry: r.and_then(|r| r.digest),
            allowed_signers: r.map(|r| Sha256Digest::of(r.allowed_signers_text.as_bytes())),
            roles: r.map(|r| Sha256Digest::of(r.roles_text.as_bytes())),
            passkeys: r.and_then(|r| r.passkeys_text.as_ref()).map(|t| Sha256Digest::of(t.as_bytes())),
            trusted_root: self.trusted_root.as_ref().map(|b| Sha256Digest::of(b)),
        }
    }

    /// The documents [`Governance::digests`] names, to store as artifacts.
    pub fn documents(&self) -> Vec<&[u8]> {
        let mut out: Vec<&[u8]> = vec![self.config_shown.as_bytes()];
        if let Some(p) = &self.policy {
            out.push(p.policy_text.as_bytes());
            out.push(p.graph_text.as_bytes());
        }
        if let Some(r) = &self.approvers {
            out.push(r.allowed_signers_text.as_bytes());
            out.push(r.roles_text.as_bytes());
            if let Some(t) = &r.passkeys_text {
                out.push(t.as_bytes());
            }
        }
        if let Some(b) = &self.trusted_root {
            out.push(b);
        }
        out
    }

    /// The same, with another approver registry.
    #[must_use]
    pub fn with_approvers(&self, registry: Registry) -> Self {
        Self { approvers: Some(Arc::new(registry)), ..self.clone() }
    }
}

/// The config sections that differ between two config texts and that a
/// reload does not apply (everything but `[policy]`, `[approvers]`,
/// `[[signers]]`, `[sigstore]` and the `node` of mounts and endpoints).
pub fn restart_needed(old: &str, new: &str) -> Vec<String> {
    let (old, new) = (fixed_sections(old), fixed_sections(new));
    let keys: std::collections::BTreeSet<&String> = old.keys().chain(new.keys()).collect();
    keys.into_iter().filter(|k| old.get(*k) != new.get(*k)).map(|k| format!("[{k}]")).collect()
}

fn fixed_sections(text: &str) -> toml::Table {
    let mut t: toml::Table = toml::from_str(text).unwrap_or_default();
    for k in ["policy", "approvers", "signers", "sigstore"] {
        t.remove(k);
    }
    // Who may submit, read and reload is governance too.
    if let Some(toml::Value::Table(server)) = t.get_mut("server") {
        for k in ["agents", "roles", "access"] {
            server.remove(k);
        }
    }
    // A mount's or an endpoint's graph node is reloaded; the rest of it
    // (a path, a URL, credentials, preview modes) is read at start only.
    for section in ["mounts", "endpoints"] {
        if let Some(toml::Value::Table(entries)) = t.get_mut(section) {
            for (_, e) in entries.iter_mut() {
                if let toml::Value::Table(e) = e {
                    e.remove("node");
                }
            }
        }
    }
    t
}

/// A digest of what of a config text only a restart applies (the sections
/// [`restart_needed`] compares): equal for two texts exactly when a reload
/// from one to the other needs no restart.
pub fn fixed_digest(text: &str) -> edge_core::Sha256Digest {
    // A table's keys are kept sorted (toml without `preserve_order`): the
    // same sections, the same bytes. A text that does not parse is one
    // empty table, as for `restart_needed`.
    edge_core::Sha256Digest::of(&serde_json::to_vec(&fixed_sections(text)).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::restart_needed;

    #[test]
    fn only_sections_a_reload_does_not_apply_need_a_restart() {
        let a = "[runner]\nname = \"r\"\n[policy]\nfile = \"p\"\n[mounts.app]\npath = \"/a\"\nnode = \"x\"\n";
        let b = "[runner]\nname = \"r\"\n[policy]\nfile = \"q\"\n[mounts.app]\npath = \"/a\"\nnode = \"y\"\n";
        assert!(restart_needed(a, b).is_empty());
        let c = b.replace("/a", "/b");
        assert_eq!(restart_needed(a, &c), vec!["[mounts]"]);
        let d = format!("{b}[server]\nlisten = \"127.0.0.1:1\"\n");
        assert_eq!(restart_needed(a, &d), vec!["[server]"]);
        // Agents and grants are reloaded; the listener is not.
        let e = format!("{d}agents = [\"spiffe://x/agent/a\"]\naccess.evidence = [\"spiffe://x/people/r\"]\n");
        assert!(restart_needed(&d, &e).is_empty());
        assert_eq!(restart_needed(&d, &e.replace("127.0.0.1:1", "127.0.0.1:2")), vec!["[server]"]);
        // An endpoint's node is reloaded; its URL is read at start only.
        let f = format!("{b}[endpoints.etcd]\nurl = \"https://etcd:2379\"\nnode = \"x\"\n");
        assert!(restart_needed(&f, &f.replace("node = \"x\"", "node = \"y\"")).is_empty());
        assert_eq!(restart_needed(&f, &f.replace("etcd:2379", "etcd2:2379")), vec!["[endpoints]"]);
        assert_eq!(super::fixed_digest(&f), super::fixed_digest(&f.replace("node = \"x\"", "node = \"y\"")));
        assert_ne!(super::fixed_digest(&f), super::fixed_digest(&f.replace("etcd:2379", "etcd2:2379")));
        assert_eq!(super::fixed_digest(a), super::fixed_digest(b));
    }
}
