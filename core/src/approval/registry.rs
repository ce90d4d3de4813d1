//! The approver registry: an OpenSSH `allowed_signers` file (who holds which
//! key, for which namespaces, when) plus a roles file (what each principal may
//! approve as, which principals own which agent, break-glass, revoked keys).
//!
//! The `allowed_signers` parser follows `ssh-keygen(1)` "ALLOWED SIGNERS":
//! `principals [options] keytype base64 [comment]`, principals a comma list of
//! patterns (`*`, `?`, `!negation`), options comma-separated with quoted values
//! (`namespaces="…"`, `valid-after="…"`, `valid-before="…"`). Two deliberate
//! differences, both failing closed: times must be UTC (`…Z`; OpenSSH reads
//! them as local time otherwise), and `cert-authority` lines are refused
//! (approvals are signed with plain keys).
//!
//! Optionally a passkeys file ([`Registry::with_passkeys`], see
//! [`super::passkey`]) registers WebAuthn credentials for principals; they
//! still need their roles here to count.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;
use ssh_key::{HashAlg, PublicKey};

use super::passkey::{PasskeyCredential, parse_passkeys};
use crate::digest::Sha256Digest;

/// A registry line or file that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file} line {line}: {reason}")]
pub struct RegistryError {
    pub file: String,
    pub line: usize,
    pub reason: String,
}

/// One `allowed_signers` line.
#[derive(Debug, Clone)]
pub struct SignerEntry {
    pub principals: String,
    pub namespaces: Option<String>,
    pub valid_after: Option<u64>,
    pub valid_before: Option<u64>,
    pub key: PublicKey,
    /// The key's Ed25519 point, decompressed and checked once at load.
    pub ed25519: crate::strict::StrongKey,
    /// The key's SHA-256 fingerprint ([`fingerprint`]), taken once at load.
    pub fingerprint: String,
    pub line: usize,
}

/// The Ed25519 point of an `ssh-ed25519` or `sk-ssh-ed25519` key, if valid
/// and not of small order.
pub fn ed25519_key(key: &PublicKey) -> Option<crate::strict::StrongKey> {
    let bytes = match key.key_data() {
        ssh_key::public::KeyData::Ed25519(k) => k.0,
        ssh_key::public::KeyData::SkEd25519(k) => k.public_key().0,
        _ => return None,
    };
    crate::strict::StrongKey::from_bytes(&bytes)
}

/// OpenSSH `match_pattern`: `*` and `?` wildcards.
fn glob(p: &[u8], s: &[u8]) -> bool {
    match (p.first(), s.first()) {
        (None, _) => s.is_empty(),
        (Some(b'*'), _) => glob(&p[1..], s) || (!s.is_empty() && glob(p, &s[1..])),
        (Some(b'?'), Some(_)) => glob(&p[1..], &s[1..]),
        (Some(a), Some(b)) if a == b => glob(&p[1..], &s[1..]),
        _ => false,
    }
}

/// OpenSSH `match_pattern_list`: a comma list; a matching `!pattern` vetoes.
pub fn pattern_list(s: &str, list: &str) -> bool {
    let mut hit = false;
    for p in list.split(',') {
        match p.strip_prefix('!') {
            Some(n) if glob(n.as_bytes(), s.as_bytes()) => return false,
            None if glob(p.as_bytes(), s.as_bytes()) => hit = true,
            _ => {}
        }
    }
    hit
}

/// The first whitespace-delimited token, honouring double quotes.
fn token(s: &str) -> (&str, &str) {
    let s = s.trim_start();
    let mut quoted = false;
    for (i, c) in s.char_indices() {
        if c == '"' {
            quoted = !quoted;
        } else if c.is_whitespace() && !quoted {
            return (&s[..i], &s[i..]);
        }
    }
    (s, "")
}

/// Comma-split that respects double quotes.
fn split_options(s: &str) -> Vec<&str> {
    let (mut out, mut quoted, mut start) = (Vec::new(), false, 0);
    for (i, c) in s.char_indices() {
        if c == '"' {
            quoted = !quoted;
        } else if c == ',' && !quoted {
            out.push(&s[start..i]);
            start = i + 1;
        }
    }
    out.push(&s[start..]);
    out
}

/// `YYYYMMDD[HHMM[SS]]Z` → Unix seconds (UTC only).
pub fn parse_time(v: &str) -> Option<u64> {
    let d = v.strip_suffix('Z')?;
    if !matches!(d.len(), 8 | 12 | 14) || !d.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n = |a: usize, b: usize| d.get(a..b).map_or(0, |x| x.parse::<i64>().unwrap_or(0));
    let (mo, dd, hh, mi, ss) = (n(4, 6), n(6, 8), n(8, 10), n(10, 12), n(12, 14));
    if !(1..=12).contains(&mo) || !(1..=31).contains(&dd) || hh > 23 || mi > 59 || ss > 60 {
        return None;
    }
    // days_from_civil (Howard Hinnant).
    let y = n(0, 4) - i64::from(mo <= 2);
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((mo + 9) % 12) + 2) / 5 + dd - 1;
    let days = era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468;
    u64::try_from(days * 86_400 + hh * 3600 + mi * 60 + ss).ok()
}

/// A parsed `allowed_signers` file.
#[derive(Debug, Clone, Default)]
pub struct AllowedSigners {
    pub entries: Vec<SignerEntry>,
}

impl AllowedSigners {
    /// Parse an `allowed_signers` file; `file` names it in errors.
    ///
    /// # Errors
    /// The first bad line, with its number and the reason.
    pub fn parse(text: &str, file: &str) -> Result<Self, RegistryError> {
        let mut entries = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let err = |reason: String| RegistryError { file: file.to_owned(), line: i + 1, reason };
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (principals, rest) = token(line);
            let principals = principals.trim_matches('"').to_owned();
            let (key, options) = match PublicKey::from_openssh(rest.trim()) {
                Ok(k) => (k, ""),
                Err(_) => {
                    let (opts, key) = token(rest);
                    let key = PublicKey::from_openssh(key.trim())
                        .map_err(|e| err(format!("not a public key (`keytype base64 [comment]`): {e}")))?;
                    (key, opts)
                }
            };
            if !matches!(key.key_data(), ssh_key::public::KeyData::Ed25519(_) | ssh_key::public::KeyData::SkEd25519(_))
            {
                return Err(err(format!(
                    "{} keys cannot approve; use ssh-ed25519 or sk-ssh-ed25519@openssh.com",
                    key.algorithm()
                )));
            }
            let ed25519 = ed25519_key(&key).ok_or_else(|| err("weak or invalid Ed25519 key".into()))?;
            let mut entry = SignerEntry {
                principals,
                namespaces: None,
                valid_after: None,
                valid_before: None,
                fingerprint: fingerprint(&key),
                key,
                ed25519,
                line: i + 1,
            };
            for opt in split_options(options).into_iter().filter(|o| !o.is_empty()) {
                let (k, v) = opt.split_once('=').unwrap_or((opt, ""));
                let value = || {
                    v.strip_prefix('"')
                        .and_then(|v| v.strip_suffix('"'))
                        .ok_or_else(|| err(format!("option `{k}` needs a quoted value")))
                };
                match k.to_ascii_lowercase().as_str() {
                    "namespaces" => entry.namespaces = Some(value()?.to_owned()),
                    "valid-after" | "valid-before" => {
                        let v = value()?;
                        let t = parse_time(v).ok_or_else(|| {
                            err(format!("`{k}=\"{v}\"`: use YYYYMMDD[HHMM[SS]]Z in UTC (the trailing Z is required)"))
                        })?;
                        if k.eq_ignore_ascii_case("valid-after") {
                            entry.valid_after = Some(t);
                        } else {
                            entry.valid_before = Some(t);
                        }
                    }
                    "cert-authority" => return Err(err("cert-authority lines are not supported for approvals".into())),
                    other => return Err(err(format!("unknown option `{other}`"))),
                }
            }
            entries.push(entry);
        }
        Ok(Self { entries })
    }
}

/// Break-glass: a role whose holders can authorize on their own quorum,
/// loudly flagged in evidence.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BreakGlass {
    pub role: String,
    pub quorum: u32,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RolesFile {
    #[serde(default)]
    principals: BTreeMap<String, Vec<String>>,
    /// Capsule signer name → principals who own that agent (they may not approve its proposals).
    #[serde(default)]
    owners: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    break_glass: Option<BreakGlass>,
    #[serde(default)]
    revoked: Revoked,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Revoked {
    /// Key fingerprints as `ssh-keygen -lf` prints them (`SHA256:…`).
    #[serde(default)]
    keys: Vec<String>,
}

/// Who may approve, as what.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    pub signers: AllowedSigners,
    pub roles: BTreeMap<String, Vec<String>>,
    pub owners: BTreeMap<String, Vec<String>>,
    pub break_glass: Option<BreakGlass>,
    pub revoked: BTreeSet<String>,
    /// SHA-256 over the files: allowed_signers, 0x00, roles, and with
    /// passkeys 0x00 and the passkeys file.
    pub digest: Option<Sha256Digest>,
    /// The two files as read (recorded as evidence artifacts with every quorum).
    pub allowed_signers_text: String,
    pub roles_text: String,
    /// Registered passkeys (WebAuthn credentials), keys prepared at load.
    pub passkeys: Vec<PasskeyCredential>,
    /// The passkeys file as read, if one is configured (recorded with every
    /// quorum like the other two).
    pub passkeys_text: Option<String>,
    /// Signatures by these keys already seen to verify (shared by clones):
    /// an approval checked when it arrived is not put through the signature
    /// arithmetic again at the gate. Everything else is checked again.
    pub verified: crate::strict::VerifiedSignatures,
}

impl Registry {
    /// Build from the two files' contents.
    ///
    /// # Errors
    /// A [`RegistryError`] naming the file and line.
    pub fn parse(
        allowed_signers: &str,
        signers_file: &str,
        roles: &str,
        roles_file: &str,
    ) -> Result<Self, RegistryError> {
        let signers = AllowedSigners::parse(allowed_signers, signers_file)?;
        let r: RolesFile = toml::from_str(roles).map_err(|e| RegistryError {
            file: roles_file.to_owned(),
            line: e.span().map_or(0, |s| roles[..s.start].lines().count().max(1)),
            reason: e.message().to_owned(),
        })?;
        if let Some(b) = &r.break_glass
            && b.quorum == 0
        {
            return Err(RegistryError {
                file: roles_file.into(),
                line: 0,
                reason: "break_glass.quorum must be at least 1".into(),
            });
        }
        for fp in &r.revoked.keys {
            if !fp.starts_with("SHA256:") {
                return Err(RegistryError {
                    file: roles_file.into(),
                    line: 0,
                    reason: format!("revoked key `{fp}`: use the SHA256:… fingerprint `ssh-keygen -lf` prints"),
                });
            }
        }
        let mut both = allowed_signers.as_bytes().to_vec();
        both.push(0);
        both.extend_from_slice(roles.as_bytes());
        Ok(Self {
            signers,
            roles: r.principals,
            owners: r.owners,
            break_glass: r.break_glass,
            revoked: r.revoked.keys.into_iter().collect(),
            digest: Some(Sha256Digest::of(&both)),
            allowed_signers_text: allowed_signers.to_owned(),
            roles_text: roles.to_owned(),
            passkeys: Vec::new(),
            passkeys_text: None,
            verified: crate::strict::VerifiedSignatures::default(),
        })
    }

    /// Add the passkeys file (`passkeys.json`); `file` names it in errors.
    /// The digest then covers it too.
    ///
    /// # Errors
    /// A [`RegistryError`] naming the file and the entry.
    pub fn with_passkeys(mut self, text: &str, file: &str) -> Result<Self, RegistryError> {
        self.passkeys = parse_passkeys(text, file)?;
        let mut all = self.allowed_signers_text.as_bytes().to_vec();
        all.push(0);
        all.extend_from_slice(self.roles_text.as_bytes());
        all.push(0);
        all.extend_from_slice(text.as_bytes());
        self.digest = Some(Sha256Digest::of(&all));
        self.passkeys_text = Some(text.to_owned());
        Ok(self)
    }

    /// The passkeys registered for exactly `principal`.
    pub fn passkeys_of<'a>(&'a self, principal: &'a str) -> impl Iterator<Item = &'a PasskeyCredential> + 'a {
        self.passkeys.iter().filter(move |c| c.entry.principal == principal)
    }

    /// The allowed_signers entries for `principal` in our namespace.
    pub fn signer_entries(&self, principal: &str) -> Vec<&SignerEntry> {
        self.signers
            .entries
            .iter()
            .filter(|e| pattern_list(principal, &e.principals))
            .filter(|e| e.namespaces.as_deref().is_none_or(|ns| pattern_list(super::NAMESPACE, ns)))
            .collect()
    }

    pub fn roles_of(&self, principal: &str) -> &[String] {
        self.roles.get(principal).map_or(&[], Vec::as_slice)
    }

    pub fn is_revoked(&self, key: &PublicKey) -> bool {
        self.revoked.contains(&fingerprint(key))
    }
}

/// `SHA256:<base64>` as `ssh-keygen -lf` prints it.
pub fn fingerprint(key: &PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAILM+rvN+ot98qgEN796jTiQfZfG1KaT0PtFDJ/XFSqti bob";

    #[test]
    fn parses_principals_options_and_comments() {
        let text = format!(
            "# approvers\n\nbob@bank,!mallory@bank {KEY}\n*@ops namespaces=\"approval.v1@edge-runner.dev,file\",valid-after=\"20200101Z\",valid-before=\"20991231235959Z\" {KEY}\n"
        );
        let s = AllowedSigners::parse(&text, "allowed_signers").unwrap();
        assert_eq!(s.entries.len(), 2);
        assert_eq!(s.entries[1].valid_after, Some(1_577_836_800));
        assert_eq!(s.entries[1].namespaces.as_deref(), Some("approval.v1@edge-runner.dev,file"));
        assert!(pattern_list("bob@bank", &s.entries[0].principals));
        assert!(!pattern_list("mallory@bank", "*@bank,!mallory@bank"));
        assert!(pattern_list("x@ops", "*@ops"));
    }

    #[test]
    fn bad_lines_name_the_line() {
        for (text, want) in [
            (format!("a valid-before=20990101Z {KEY}"), "quoted"),
            (format!("a valid-before=\"20990101\" {KEY}"), "trailing Z"),
            (format!("a cert-authority {KEY}"), "cert-authority"),
            (format!("a frobnicate=\"x\" {KEY}"), "unknown option"),
            ("\n\na ssh-ed25519 notbase64".to_owned(), "line 3"),
        ] {
            let e = AllowedSigners::parse(&text, "signers").unwrap_err().to_string();
            assert!(e.contains(want), "{text}: {e}");
        }
    }

    #[test]
    fn utc_times() {
        assert_eq!(parse_time("19700101Z"), Some(0));
        assert_eq!(parse_time("20261124120000Z"), Some(1_795_521_600));
        assert_eq!(parse_time("20261124"), None);
        assert_eq!(parse_time("20261324Z"), None);
    }
}
