//! Passkey enrollment: one-time codes an operator hands to an approver
//! (`edge-runner approvers enroll`), the registration that redeems one, and
//! the credentials the console signs people in with.
//!
//! State (under `<state>/console/`, directories 0700, files 0600):
//! - `enroll/<sha256(code)>.json`: an open invitation (principal, expiry);
//!   only the code's hash is stored, and redeeming deletes it;
//! - `credentials.json`: the webauthn-rs credential of each enrolled passkey
//!   (for sign-in and its counter).
//!
//! What makes a passkey count is the approver registry's `passkeys.json`
//! (principal, credential id, public key, relying party, origin), changed
//! only by `Runner::enroll_passkey`, which records the change as evidence
//! first. Removing an entry there (or revoking its fingerprint in
//! `roles.toml`) stops both its sign-ins and its approvals.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{Context, Result, bail};
use base64::Engine as _;
use edge_core::Sha256Digest;
use edge_core::approval::Registry;
use edge_core::approval::passkey::{PASSKEYS_SCHEMA, PasskeyAlgorithm, PasskeyEntry, PasskeysFile};
use edge_core::evidence::Event;
use rand_core::RngCore as _;
use serde::{Deserialize, Serialize};
use webauthn_rs::prelude::{AuthenticationResult, COSEKeyType, Passkey};

use crate::config::RunnerConfig;
use crate::pipeline::{Runner, unix_now};

fn b64u(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn dir(state: &Path) -> PathBuf {
    state.join("console")
}

/// An open invitation to enroll.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Invitation {
    pub principal: String,
    pub created_at: u64,
    pub expires_at: u64,
}

fn invitation_path(state: &Path, code: &str) -> PathBuf {
    dir(state).join("enroll").join(format!("{}.json", Sha256Digest::of(code.trim().as_bytes()).hex()))
}

/// Create a one-time enrollment code for `principal`, valid `ttl` seconds.
/// The principal must already be an approver (listed in the registry's
/// roles), so the passkey counts once enrolled.
///
/// # Errors
/// No registry, an unknown principal, or the state directory is unwritable.
pub fn invite(config: &RunnerConfig, principal: &str, ttl: u64) -> Result<(String, Invitation)> {
    let registry = config
        .governance
        .as_ref()
        .and_then(|g| g.approvers.as_deref())
        .context("no [approvers] registry is configured")?;
    if principal.is_empty() || principal.chars().any(|c| c.is_control() || c.is_whitespace() || c == ',') {
        bail!("`{}` is not an approver name", edge_core::text::line(principal));
    }
    if !registry.roles.contains_key(principal) {
        bail!(
            "`{principal}` has no roles in the approver registry: add them under [principals] in roles.toml \
             first (what they may approve as), then enroll"
        );
    }
    let mut raw = [0u8; 20];
    rand_core::OsRng.fill_bytes(&mut raw);
    let code = data_encoding_base32(&raw);
    let now = unix_now()?;
    let inv = Invitation { principal: principal.to_owned(), created_at: now, expires_at: now + ttl };
    let path = invitation_path(&config.state_dir, &code);
    private_dir(path.parent().expect("a directory"))?;
    crate::staging::write_durably(&path, &serde_json::to_vec_pretty(&inv)?)?;
    restrict(&path)?;
    Ok((code, inv))
}

/// RFC 4648 base32 without padding, grouped for reading aloud.
fn data_encoding_base32(bytes: &[u8]) -> String {
    const A: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut out = String::new();
    let (mut buf, mut bits) = (0u32, 0);
    for &b in bytes {
        buf = (buf << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(A[((buf >> bits) & 31) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(A[((buf << (5 - bits)) & 31) as usize] as char);
    }
    out.as_bytes().chunks(4).map(|c| std::str::from_utf8(c).expect("ASCII")).collect::<Vec<_>>().join("-")
}

fn private_dir(p: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::create_dir_all(p).with_context(|| format!("cannot create {}", p.display()))?;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("cannot restrict {}", p.display()))
}

fn restrict(p: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot restrict {}", p.display()))
}

/// The enrolled credentials the console signs people in with.
pub(crate) struct Credentials {
    state: PathBuf,
    by_principal: Mutex<BTreeMap<String, Vec<Passkey>>>,
}

impl Credentials {
    pub(crate) fn open(state: &Path) -> Result<Self> {
        let path = dir(state).join("credentials.json");
        let by_principal = match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).with_context(|| format!("{} is unreadable", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        Ok(Self { state: state.to_path_buf(), by_principal: Mutex::new(by_principal) })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Vec<Passkey>>> {
        self.by_principal.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn save(&self, all: &BTreeMap<String, Vec<Passkey>>) -> Result<()> {
        let d = dir(&self.state);
        private_dir(&d)?;
        let path = d.join("credentials.json");
        crate::staging::write_durably(&path, &serde_json::to_vec_pretty(all)?)?;
        restrict(&path)
    }

    pub(crate) fn of(&self, principal: &str) -> Vec<Passkey> {
        self.lock().get(principal).cloned().unwrap_or_default()
    }

    pub(crate) fn add(&self, principal: &str, p: Passkey) -> Result<()> {
        let mut all = self.lock();
        all.entry(principal.to_owned()).or_default().push(p);
        self.save(&all)
    }

    /// After a sign-in: keep the authenticator's new counter.
    pub(crate) fn used(&self, principal: &str, r: &AuthenticationResult) -> Result<()> {
        let mut all = self.lock();
        let mut changed = false;
        for p in all.get_mut(principal).into_iter().flatten() {
            changed |= p.update_credential(r).unwrap_or(false);
        }
        if changed { self.save(&all) } else { Ok(()) }
    }

    /// An open, unexpired invitation for `code`.
    pub(crate) fn invitation(&self, code: &str) -> Result<Invitation, String> {
        let path = invitation_path(&self.state, code);
        let bytes = std::fs::read(&path).map_err(|_| {
            "this enrollment code is unknown or was already used: ask your operator for a new one".to_owned()
        })?;
        let inv: Invitation = serde_json::from_slice(&bytes).map_err(|_| "the invitation is unreadable".to_owned())?;
        let now = unix_now().map_err(|e| format!("{e:#}"))?;
        if now >= inv.expires_at {
            let _ = std::fs::remove_file(&path);
            return Err("this enrollment code expired: ask your operator for a new one".into());
        }
        Ok(inv)
    }

    /// Spend the invitation (once): it must still be open and for `principal`.
    pub(crate) fn redeem(&self, code: &str, principal: &str) -> Result<(), String> {
        let inv = self.invitation(code)?;
        if inv.principal != principal {
            return Err("the invitation changed meanwhile: start again".into());
        }
        std::fs::remove_file(invitation_path(&self.state, code))
            .map_err(|_| "this enrollment code was used meanwhile: ask your operator for a new one".to_owned())
    }
}

/// The registry entry for a passkey webauthn-rs registered.
///
/// # Errors
/// A key type approvals cannot use (only ES256 and EdDSA are).
pub(crate) fn entry(principal: &str, p: &Passkey, rp_id: &str, origin: &str) -> Result<PasskeyEntry> {
    let key = p.get_public_key();
    let (algorithm, public_key) = match &key.key {
        COSEKeyType::EC_EC2(k) if k.x.len() == 32 && k.y.len() == 32 => {
            let mut sec1 = vec![4u8];
            sec1.extend_from_slice(&k.x);
            sec1.extend_from_slice(&k.y);
            (PasskeyAlgorithm::Es256, sec1)
        }
        COSEKeyType::EC_OKP(k) if k.x.len() == 32 => (PasskeyAlgorithm::EdDsa, k.x.clone()),
        _ => bail!("this authenticator made a key approvals cannot use (only ES256 and EdDSA): use another passkey"),
    };
    Ok(PasskeyEntry {
        principal: principal.to_owned(),
        credential_id: b64u(p.cred_id()),
        algorithm,
        public_key: b64u(&public_key),
        rp_id: rp_id.to_owned(),
        origin: origin.to_owned(),
        enrolled_at: unix_now()?,
        label: None,
    })
}

/// The registry's entry for this principal's credential, if registered and not revoked.
pub(crate) fn registered<'r>(
    registry: &'r Registry,
    principal: &str,
    cred_id: &[u8],
) -> Option<&'r edge_core::approval::passkey::PasskeyCredential> {
    let id = b64u(cred_id);
    registry
        .passkeys
        .iter()
        .find(|c| c.entry.principal == principal && c.entry.credential_id == id)
        .filter(|c| !registry.revoked.contains(&c.fingerprint))
}

/// The credential ids (base64url) a principal may sign approvals with.
pub(crate) fn credentials_of(registry: &Registry, principal: &str) -> Vec<String> {
    registry
        .passkeys
        .iter()
        .filter(|c| c.entry.principal == principal && !registry.revoked.contains(&c.fingerprint))
        .map(|c| c.entry.credential_id.clone())
        .collect()
}

impl Runner {
    /// Add a passkey to the approver registry: record the change (with the
    /// new file as an artifact) first, then write the file, then put the
    /// new registry in force. Returns the credential's fingerprint.
    ///
    /// # Errors
    /// The new registry does not parse, or nothing could be recorded or written.
    pub(crate) async fn enroll_passkey(&self, entry: PasskeyEntry) -> Result<String> {
        // One change to the governance at a time (a reload reads the
        // passkeys file this writes).
        let _one = self.changing_governance.lock().await;
        let governance = self.governance();
        let path = governance.passkeys_file.clone().context("no [approvers] registry is configured")?;
        let current = governance.approvers.clone().context("no [approvers] registry is configured")?;
        let mut file = match &current.passkeys_text {
            Some(t) => serde_json::from_str::<PasskeysFile>(t).context("the registered passkeys file")?,
            None => PasskeysFile { schema: PASSKEYS_SCHEMA.into(), credentials: Vec::new() },
        };
        if file.credentials.iter().any(|c| c.credential_id == entry.credential_id) {
            bail!("this passkey is already registered");
        }
        let principal = entry.principal.clone();
        file.credentials.push(entry);
        let mut text = serde_json::to_string_pretty(&file)?;
        text.push('\n');
        let next =
            Registry::parse(&current.allowed_signers_text, "allowed_signers", &current.roles_text, "roles.toml")?
                .with_passkeys(&text, &path.display().to_string())?;
        let key = next
            .passkeys
            .iter()
            .find(|c| Some(&c.entry.credential_id) == file.credentials.last().map(|e| &e.credential_id))
            .map(|c| c.fingerprint.clone())
            .context("the new passkey is missing from the registry it was added to")?;
        let passkeys = self.log.put_artifact(text.as_bytes())?;
        let after = next.digest.context("a parsed registry has a digest")?;
        let mut log = self.log.run_log();
        log.append_deferred(
            "runner",
            Event::RegistryChanged {
                action: "passkey-enrolled".into(),
                principal,
                key: key.clone(),
                before: current.digest,
                after,
                passkeys,
            },
        )?;
        log.barrier().await?;
        crate::staging::write_durably(&path, text.as_bytes())
            .with_context(|| format!("recorded, but cannot write {}", path.display()))?;
        self.replace_governance(governance.with_approvers(next));
        Ok(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_base32_in_groups() {
        let c = data_encoding_base32(&[0xff; 20]);
        assert_eq!(c.replace('-', "").len(), 32);
        assert!(c.chars().all(|c| c == '-' || c.is_ascii_uppercase() || ('2'..='7').contains(&c)), "{c}");
        assert_eq!(data_encoding_base32(b"foobar"), "MZXW-6YTB-OI");
    }
}
