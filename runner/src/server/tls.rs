//! TLS for the API: TLS 1.3 only, client certificates required and checked
//! against the configured client CA, and the agent identity taken from the
//! verified client certificate (a SPIFFE ID in the URI SAN, else the
//! subject common name).

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result, anyhow, bail};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .with_context(|| format!("cannot read certificates {}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{} is not a PEM certificate file", path.display()))?;
    if certs.is_empty() {
        bail!("{} holds no PEM certificate", path.display());
    }
    Ok(certs)
}

fn key(path: &Path) -> Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_file(path)
        .with_context(|| format!("{} is not a PEM private key (PKCS#8, PKCS#1 or SEC1)", path.display()))
}

fn roots(path: &Path) -> Result<Arc<RootCertStore>> {
    let mut roots = RootCertStore::empty();
    for c in certs(path)? {
        roots.add(c).with_context(|| format!("{}: not a usable CA certificate", path.display()))?;
    }
    Ok(Arc::new(roots))
}

/// The console's server side: TLS 1.3, no client certificate (browsers
/// sign in with a passkey instead).
///
/// # Errors
/// Unreadable or unusable certificate or key, naming the file.
pub fn server_config_no_client_auth(cert: &Path, key_path: &Path) -> Result<Arc<ServerConfig>> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(certs(cert)?, key(key_path)?)
        .with_context(|| {
            format!("console certificate {} and key {} do not match", cert.display(), key_path.display())
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The server side: TLS 1.3, a client certificate chaining to `client_ca`
/// required on every connection.
///
/// # Errors
/// Unreadable or unusable certificates or key, naming the file.
pub fn server_config(cert: &Path, key_path: &Path, client_ca: &Path) -> Result<Arc<ServerConfig>> {
    let verifier = WebPkiClientVerifier::builder_with_provider(roots(client_ca)?, provider())
        .build()
        .map_err(|e| anyhow!("client CA {}: {e}", client_ca.display()))?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs(cert)?, key(key_path)?)
        .with_context(|| {
            format!("server certificate {} and key {} do not match", cert.display(), key_path.display())
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The client side (CLI commands, tests, the load generator): trusts `ca`
/// for the server and presents `cert`/`key`.
///
/// # Errors
/// Unreadable or unusable certificates or key, naming the file.
pub fn client_config(ca: &Path, cert: &Path, key_path: &Path) -> Result<Arc<ClientConfig>> {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots(ca)?)
        .with_client_auth_cert(certs(cert)?, key(key_path)?)
        .with_context(|| {
            format!("client certificate {} and key {} do not match", cert.display(), key_path.display())
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A governed endpoint's client side: trusts only the endpoint's own CA
/// bundle (never the system's roots) and presents the runner's client
/// identity for it when one is configured. TLS 1.2 or 1.3: it talks to the
/// services of the enclave as they are.
///
/// # Errors
/// Unreadable or unusable certificates or key, naming the file.
pub fn endpoint_client_config(ca: &Path, identity: Option<(&Path, &Path)>) -> Result<Arc<ClientConfig>> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots(ca)?);
    let mut config = match identity {
        Some((cert, key_path)) => builder.with_client_auth_cert(certs(cert)?, key(key_path)?).with_context(|| {
            format!("client certificate {} and key {} do not match", cert.display(), key_path.display())
        })?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The server name to expect, from a `host:port` or URL host.
///
/// # Errors
/// If the host is not a DNS name or IP address.
pub fn server_name(host: &str) -> Result<ServerName<'static>> {
    ServerName::try_from(host.to_owned()).map_err(|_| anyhow!("`{host}` is not a host name or IP address"))
}

/// The agent identity of a verified client certificate: its first
/// `spiffe://` URI SAN, else its subject common name.
///
/// # Errors
/// If the certificate does not parse or names no identity.
pub fn agent_identity(der: &[u8]) -> Result<String> {
    use x509_cert::der::Decode as _;
    use x509_cert::ext::pkix::SubjectAltName;
    use x509_cert::ext::pkix::name::GeneralName;
    let cert = x509_cert::Certificate::from_der(der).map_err(|e| anyhow!("client certificate does not parse: {e}"))?;
    if let Ok(Some((_, san))) = cert.tbs_certificate.get::<SubjectAltName>() {
        for name in &san.0 {
            if let GeneralName::UniformResourceIdentifier(uri) = name
                && uri.as_str().starts_with("spiffe://")
            {
                return Ok(uri.as_str().to_owned());
            }
        }
    }
    const CN: x509_cert::der::asn1::ObjectIdentifier = x509_cert::der::asn1::ObjectIdentifier::new_unwrap("2.5.4.3");
    for rdn in cert.tbs_certificate.subject.0.iter().rev() {
        for atv in rdn.0.iter() {
            if atv.oid == CN {
                let value = x509_cert::der::asn1::Utf8StringRef::try_from(&atv.value)
                    .map(|s| s.as_str().to_owned())
                    .or_else(|_| {
                        x509_cert::der::asn1::PrintableStringRef::try_from(&atv.value).map(|s| s.as_str().to_owned())
                    })
                    .map_err(|_| anyhow!("the client certificate's common name is not a UTF-8 or printable string"))?;
                // A SPIFFE ID only counts from the URI SAN, where the issuing
                // CA vouches for it as one; a common name cannot claim one.
                if value.starts_with("spiffe://") {
                    bail!("the client certificate puts a SPIFFE ID in its common name; put it in a URI SAN");
                }
                // The runner's own intakes name their submissions so
                // (`crate::intake`); a certificate cannot pass for one.
                if value.starts_with("nats:") || value.starts_with("spool:") {
                    bail!(
                        "the client certificate's common name starts with `nats:` or `spool:`, which name the runner's intakes"
                    );
                }
                return Ok(value);
            }
        }
    }
    bail!("the client certificate names no agent: give it a spiffe:// URI SAN or a subject common name")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert_with_cn(cn: &str) -> Vec<u8> {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        p.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn a_common_name_cannot_pass_for_an_intake_or_a_spiffe_id() {
        assert_eq!(agent_identity(&cert_with_cn("agent-7")).unwrap(), "agent-7");
        for cn in ["nats:edge_r1_in@1:7", "spool:fix.capsule", "spiffe://example/agent"] {
            assert!(agent_identity(&cert_with_cn(cn)).is_err(), "{cn}");
        }
    }
}
