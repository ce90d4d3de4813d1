//! `edge-runner pki issue`: a client certificate for one person or agent
//! from the runner's development CA (the one `init` creates in `tls/`).
//!
//! The identity is a SPIFFE ID in the certificate's URI SAN, which is what
//! the server takes as the client's identity (`server::tls::agent_identity`)
//! and what `[server.access]`, `[server.roles]` and `server.agents` list:
//!
//! ```text
//! --person alice  ->  spiffe://<trust domain>/people/alice
//! --agent  fixer  ->  spiffe://<trust domain>/agent/fixer
//! ```
//!
//! Names are single SPIFFE path segments (`[A-Za-z0-9._-]`): a SPIFFE ID
//! cannot hold `@`, so `alice@bank.example` is refused with the fix. The
//! certificate is checked against the CA before anything is written; the
//! key is written with mode 0600 and nothing is ever overwritten.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, Issuer, KeyPair, KeyUsagePurpose, SanType};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, UnixTime};

/// Who a certificate is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    /// An approver, operator or reviewer.
    Person(String),
    /// A submitting agent.
    Agent(String),
}

impl Subject {
    fn name(&self) -> &str {
        match self {
            Subject::Person(n) | Subject::Agent(n) => n,
        }
    }

    /// The SPIFFE ID of this subject in `trust_domain`.
    pub fn spiffe_id(&self, trust_domain: &str) -> String {
        match self {
            Subject::Person(n) => format!("spiffe://{trust_domain}/people/{n}"),
            Subject::Agent(n) => format!("spiffe://{trust_domain}/agent/{n}"),
        }
    }
}

/// What was issued.
#[derive(Debug)]
pub struct Issued {
    pub identity: String,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// RFC 3339.
    pub not_after: String,
}

/// Longest validity `pki issue` grants.
pub const MAX_VALIDITY: Duration = Duration::from_secs(825 * 86_400);

fn is_segment(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s != "."
        && s != ".."
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
}

fn is_trust_domain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 255
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_'))
}

/// Issue a client certificate for `subject` from the CA in `ca_cert` /
/// `ca_key`, valid for `valid` from `now` (seconds since the Unix epoch),
/// into `<out>/<name>.pem` and `<out>/<name>.key` (0600).
///
/// # Errors
/// A name that is not a SPIFFE path segment, an unreadable or
/// group/world-readable CA key, a CA key that does not belong to the CA
/// certificate, a validity beyond the CA's, or an existing output file.
pub fn issue(
    ca_cert: &Path,
    ca_key: &Path,
    trust_domain: &str,
    subject: &Subject,
    valid: Duration,
    now: u64,
    out: &Path,
) -> Result<Issued> {
    let name = subject.name();
    if name.contains('@') {
        let local = name.split('@').next().unwrap_or("");
        bail!(
            "`{name}` cannot be part of a SPIFFE ID (`@` is not allowed in one): use a name like `{local}` (the \
             trust domain `{trust_domain}` already names the organisation); the approver's SSH principal can \
             stay `{name}`"
        );
    }
    if !is_segment(name) {
        bail!("`{name}` is not a usable name: use letters, digits, `.`, `-` and `_` (one SPIFFE path segment)");
    }
    if !is_trust_domain(trust_domain) {
        bail!("trust domain `{trust_domain}`: use lower-case letters, digits, `.`, `-` and `_` (e.g. bank.example)");
    }
    if valid.is_zero() || valid > MAX_VALIDITY {
        bail!("--valid must be between 1s and 825d");
    }
    let identity = subject.spiffe_id(trust_domain);
    let (cert_path, key_path) = (out.join(format!("{name}.pem")), out.join(format!("{name}.key")));
    for p in [&cert_path, &key_path] {
        if p.exists() {
            bail!("{} already exists; refusing to overwrite it (choose another --out, or move it away)", p.display());
        }
    }

    let ca_pem = std::fs::read_to_string(ca_cert)
        .with_context(|| format!("cannot read the CA certificate {}", ca_cert.display()))?;
    let ca_der = CertificateDer::from_pem_slice(ca_pem.as_bytes())
        .with_context(|| format!("{} is not a PEM certificate", ca_cert.display()))?;
    {
        use std::os::unix::fs::PermissionsExt as _;
        let meta = std::fs::metadata(ca_key)
            .with_context(|| format!("cannot read the CA key {} (--ca-key)", ca_key.display()))?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            bail!(
                "CA key {} has mode {mode:04o}; it must not be readable by others (run `chmod 600 {}`)",
                ca_key.display(),
                ca_key.display()
            );
        }
    }
    let key_pem = zeroize::Zeroizing::new(
        std::fs::read_to_string(ca_key).with_context(|| format!("cannot read the CA key {}", ca_key.display()))?,
    );
    let ca_keypair =
        KeyPair::from_pem(&key_pem).with_context(|| format!("{} is not a PEM private key", ca_key.display()))?;
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_keypair)
        .with_context(|| format!("{} is not a CA certificate rcgen can issue from", ca_cert.display()))?;

    let ca_until = {
        use x509_cert::der::Decode as _;
        x509_cert::Certificate::from_der(&ca_der)
            .with_context(|| format!("{} does not parse as an X.509 certificate", ca_cert.display()))?
            .tbs_certificate
            .validity
            .not_after
            .to_unix_duration()
            .as_secs()
    };
    let until = now.saturating_add(valid.as_secs());
    if until > ca_until {
        bail!(
            "the CA {} expires in {} days, before the certificate would ({} days): give a shorter --valid, or \
             renew the CA",
            ca_cert.display(),
            ca_until.saturating_sub(now) / 86_400,
            valid.as_secs() / 86_400
        );
    }

    let t =
        |s: u64| -> Result<time::OffsetDateTime> { Ok(time::OffsetDateTime::from_unix_timestamp(i64::try_from(s)?)?) };
    let key = KeyPair::generate()?;
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    p.distinguished_name.push(DnType::CommonName, name);
    p.subject_alt_names = vec![SanType::URI(identity.as_str().try_into()?)];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.not_before = t(now.saturating_sub(300))?;
    p.not_after = t(until)?;
    let cert = p.signed_by(&key, &issuer)?;

    // The certificate must verify as a client certificate against the CA
    // before it is handed out (a CA key that is not the CA certificate's
    // key would sign certificates nothing accepts).
    let anchor = webpki::anchor_from_trusted_cert(&ca_der)
        .map_err(|e| anyhow::anyhow!("{} is not a usable CA certificate: {e:?}", ca_cert.display()))?;
    let ee = webpki::EndEntityCert::try_from(cert.der()).map_err(|e| anyhow::anyhow!("issued certificate: {e:?}"))?;
    let algs = rustls::crypto::aws_lc_rs::default_provider().signature_verification_algorithms.all;
    ee.verify_for_usage(
        algs,
        &[anchor],
        &[],
        UnixTime::since_unix_epoch(Duration::from_secs(now)),
        webpki::KeyUsage::client_auth(),
        None,
        None,
    )
    .map_err(|e| {
        anyhow::anyhow!(
            "the issued certificate does not verify against {} ({e:?}): is {} the key of that CA certificate?",
            ca_cert.display(),
            ca_key.display()
        )
    })?;

    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    crate::keys::write_secret(&key_path, key.serialize_pem().as_bytes())?;
    {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&cert_path)
            .with_context(|| format!("cannot create {}", cert_path.display()))?;
        f.write_all(cert.pem().as_bytes())?;
        f.sync_all()?;
    }
    let not_after = jiff::Timestamp::from_second(i64::try_from(until)?)?.to_string();
    Ok(Issued { identity, cert: cert_path, key: key_path, not_after })
}

#[cfg(test)]
mod tests {
    use rcgen::{BasicConstraints, IsCa};

    use super::*;

    const NOW: u64 = 1_800_000_000;

    /// A CA valid for `days` from NOW in `dir` (ca.pem, ca.key at `mode`).
    fn ca(dir: &Path, days: i64, mode: u32) {
        use std::os::unix::fs::PermissionsExt as _;
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, "edge-runner development CA");
        p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        p.not_before = time::OffsetDateTime::from_unix_timestamp(NOW as i64 - 86_400).unwrap();
        p.not_after = time::OffsetDateTime::from_unix_timestamp(NOW as i64 + days * 86_400).unwrap();
        std::fs::write(dir.join("ca.pem"), p.self_signed(&key).unwrap().pem()).unwrap();
        std::fs::write(dir.join("ca.key"), key.serialize_pem()).unwrap();
        std::fs::set_permissions(dir.join("ca.key"), std::fs::Permissions::from_mode(mode)).unwrap();
    }

    fn issue_in(dir: &Path, valid_days: u64) -> Result<Issued> {
        issue(
            &dir.join("ca.pem"),
            &dir.join("ca.key"),
            "bank.example",
            &Subject::Person("alice".into()),
            Duration::from_secs(valid_days * 86_400),
            NOW,
            &dir.join("out"),
        )
    }

    #[test]
    fn a_certificate_is_issued_only_from_a_private_matching_ca_key_within_the_cas_validity() {
        let t = tempfile::tempdir().unwrap();
        ca(t.path(), 365, 0o600);
        let done = issue_in(t.path(), 90).unwrap();
        assert_eq!(done.identity, "spiffe://bank.example/people/alice");
        let der = CertificateDer::from_pem_file(&done.cert).unwrap();
        assert_eq!(crate::server::tls::agent_identity(&der).unwrap(), done.identity, "the identity the server reads");
        // Never overwritten.
        let e = format!("{:#}", issue_in(t.path(), 90).unwrap_err());
        assert!(e.contains("refusing to overwrite"), "{e}");

        // Beyond the CA's expiry.
        let t = tempfile::tempdir().unwrap();
        ca(t.path(), 30, 0o600);
        let e = format!("{:#}", issue_in(t.path(), 90).unwrap_err());
        assert!(e.contains("expires in 30 days, before the certificate would (90 days)"), "{e}");
        assert!(!t.path().join("out").exists(), "nothing written");

        // A CA key others can read.
        let t = tempfile::tempdir().unwrap();
        ca(t.path(), 365, 0o644);
        let e = format!("{:#}", issue_in(t.path(), 90).unwrap_err());
        assert!(e.contains("mode 0644") && e.contains("chmod 600"), "{e}");

        // A key that is not the CA certificate's: the certificate would not
        // verify, so nothing is written.
        let t = tempfile::tempdir().unwrap();
        ca(t.path(), 365, 0o600);
        std::fs::remove_file(t.path().join("ca.key")).unwrap();
        crate::keys::write_secret(&t.path().join("ca.key"), KeyPair::generate().unwrap().serialize_pem().as_bytes())
            .unwrap();
        let e = format!("{:#}", issue_in(t.path(), 90).unwrap_err());
        assert!(e.contains("does not verify against") && e.contains("the key of that CA certificate"), "{e}");
        assert!(!t.path().join("out").exists(), "nothing written");
    }

    #[test]
    fn names_are_one_spiffe_path_segment() {
        assert!(is_segment("alice") && is_segment("alice.smith") && is_segment("fixer-1_b"));
        for bad in ["", ".", "..", "a/b", "alice@bank.example", "a b", "é"] {
            assert!(!is_segment(bad), "{bad}");
        }
        assert_eq!(Subject::Person("alice".into()).spiffe_id("bank.example"), "spiffe://bank.example/people/alice");
        assert_eq!(Subject::Agent("fixer".into()).spiffe_id("bank.example"), "spiffe://bank.example/agent/fixer");
        assert!(is_trust_domain("edge-runner.local") && !is_trust_domain("Bank.example") && !is_trust_domain("a/b"));
    }
}
