//! The checks of certificates: validity against `now`, the chain to a CA,
//! the names clients use. Bytes and time in, problems out; no I/O.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};

use super::{EXPIRY_WARNING, Problem, Severity};

/// The names clients may use for a listen address: the address itself, and
/// `localhost` for a loopback one. Empty for an unspecified address
/// (0.0.0.0, ::): any name but loopback ones will do then.
pub(super) fn listen_names(addr: SocketAddr) -> Vec<ServerName<'static>> {
    let ip = addr.ip();
    if ip.is_unspecified() {
        return Vec::new();
    }
    let mut v = vec![ServerName::IpAddress(ip.into())];
    if ip.is_loopback() {
        v.push(ServerName::try_from("localhost").expect("a DNS name"));
    }
    v
}

pub(super) fn pem_certs(bytes: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(bytes).collect::<Result<Vec<_>, _>>().map_err(|e| e.to_string())?;
    if certs.is_empty() {
        return Err("it holds no PEM certificate".to_owned());
    }
    Ok(certs)
}

/// The checks of one certificate chain (leaf first), given the CA it must
/// chain to (setting, file, certificates), the names clients use for it
/// (empty: any name but `localhost` and loopback addresses) and where they
/// come from (`used`, e.g. "server.listen"), and `now` (since the Unix
/// epoch). No I/O.
pub fn certificate(
    what: &str,
    file: &Path,
    chain: &[CertificateDer<'static>],
    ca: Option<(&str, &Path, &[CertificateDer<'static>])>,
    wanted: &[ServerName<'static>],
    used: &str,
    now: Duration,
) -> Vec<Problem> {
    let mut out = Vec::new();
    let Some(leaf) = chain.first() else { return out };
    let f = file.display();
    let leaf_valid = match validity(what, file, leaf, now) {
        Some(p) => {
            let expired = p.severity == Severity::Error;
            out.push(p);
            !expired
        }
        None => true,
    };
    let ee = match webpki::EndEntityCert::try_from(leaf) {
        Ok(ee) => ee,
        Err(e) => {
            out.push(Problem::error(
                format!("{what} {f} does not parse as an X.509 certificate ({e:?})"),
                "replace it with the PEM certificate your CA issued",
            ));
            return out;
        }
    };
    if let Some((setting, ca_file, ca_certs)) = ca {
        let anchors: Vec<_> = ca_certs.iter().filter_map(|c| webpki::anchor_from_trusted_cert(c).ok()).collect();
        let algs = rustls::crypto::aws_lc_rs::default_provider().signature_verification_algorithms.all;
        let time = UnixTime::since_unix_epoch(now);
        let r = ee.verify_for_usage(algs, &anchors, &chain[1..], time, webpki::KeyUsage::server_auth(), None, None);
        match r {
            Ok(_) => {}
            // The leaf's own dates are reported above; here only a CA's.
            Err(webpki::Error::CertExpired { .. } | webpki::Error::CertNotValidYet { .. }) if !leaf_valid => {}
            Err(webpki::Error::CertExpired { .. }) => out.push(Problem::error(
                format!("{what} {f}: a CA certificate in its chain has expired"),
                format!("renew the CA and reissue the certificate, then update {setting} and the clients' --ca"),
            )),
            // Another CA (one with the same name fails on the signature).
            Err(webpki::Error::UnknownIssuer | webpki::Error::InvalidSignatureForPublicKey) => out.push(Problem::error(
                format!("{what} {f} does not chain to {setting} {}", ca_file.display()),
                if setting == "server.client_ca" {
                    "issue the certificate from that CA, or, if another CA issued it (your organisation's PKI), set \
                     server.server_ca to that CA's certificate (what clients pass as --ca)"
                        .to_owned()
                } else {
                    format!("issue the certificate from that CA, or correct {setting}")
                },
            )),
            Err(e) => out.push(Problem::error(
                format!("{what} {f} does not verify against {setting} {}: {e:?}", ca_file.display()),
                "reissue it from that CA as a TLS server certificate (key usage digitalSignature, extended key \
                 usage serverAuth if any)",
            )),
        }
    }
    if let Some(p) = names(what, file, leaf, wanted, used) {
        out.push(p);
    }
    out
}

/// Whether the leaf names one of `wanted` (empty: a name other than
/// localhost and loopback addresses).
pub(super) fn names(
    what: &str,
    file: &Path,
    leaf: &CertificateDer<'_>,
    wanted: &[ServerName<'static>],
    used: &str,
) -> Option<Problem> {
    let ee = webpki::EndEntityCert::try_from(leaf).ok()?;
    let has = sans(leaf);
    let listed = if has.is_empty() { "none".to_owned() } else { has.join(", ") };
    let f = file.display();
    if wanted.is_empty() {
        let remote = has
            .iter()
            .any(|n| n != "localhost" && !n.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback() || ip.is_unspecified()));
        return (!remote).then(|| {
            Problem::warning(
                format!(
                    "{what} {f} names only this machine's loopback ({listed}), but the runner listens on all \
                     interfaces: clients elsewhere cannot verify it"
                ),
                "issue a certificate naming the host clients connect to (`edge-runner init --san NAME` for the \
                 development CA), or listen on 127.0.0.1",
            )
        });
    }
    if wanted.iter().any(|n| ee.verify_is_valid_for_subject_name(n).is_ok()) {
        return None;
    }
    let want: Vec<String> = wanted.iter().map(|n| n.to_str().into_owned()).collect();
    Some(Problem::error(
        format!("{what} {f} does not name {} ({used}); its subject alternative names are: {listed}", want.join(" or ")),
        "issue a certificate whose SANs include that name (`edge-runner init --san NAME` for the development CA), \
         or change the address to one it names",
    ))
}

/// The DNS names and IP addresses a certificate's SAN extension lists.
fn sans(der: &CertificateDer<'_>) -> Vec<String> {
    use x509_cert::der::Decode as _;
    use x509_cert::ext::pkix::SubjectAltName;
    use x509_cert::ext::pkix::name::GeneralName;
    let Ok(cert) = x509_cert::Certificate::from_der(der) else { return Vec::new() };
    let Ok(Some((_, san))) = cert.tbs_certificate.get::<SubjectAltName>() else { return Vec::new() };
    san.0
        .iter()
        .filter_map(|n| match n {
            GeneralName::DnsName(d) => Some(d.as_str().to_owned()),
            GeneralName::IpAddress(ip) => match ip.as_bytes().len() {
                4 => <[u8; 4]>::try_from(ip.as_bytes()).ok().map(|b| IpAddr::from(b).to_string()),
                16 => <[u8; 16]>::try_from(ip.as_bytes()).ok().map(|b| IpAddr::from(b).to_string()),
                _ => None,
            },
            _ => None,
        })
        .map(|s| edge_core::text::line(&s).into_owned())
        .collect()
}

/// A certificate's validity against `now`: not yet valid or expired is an
/// error, expiring within [`EXPIRY_WARNING`] a warning.
pub(super) fn validity(what: &str, file: &Path, der: &CertificateDer<'_>, now: Duration) -> Option<Problem> {
    use x509_cert::der::Decode as _;
    let f = file.display();
    let cert = match x509_cert::Certificate::from_der(der) {
        Ok(c) => c,
        Err(e) => {
            return Some(Problem::error(
                format!("{what} {f} does not parse as an X.509 certificate: {e}"),
                "replace it with the PEM certificate your CA issued",
            ));
        }
    };
    let v = &cert.tbs_certificate.validity;
    let (from, until) = (v.not_before.to_unix_duration(), v.not_after.to_unix_duration());
    let at = |d: Duration| {
        jiff::Timestamp::from_second(i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
            .map_or_else(|_| format!("{}s after 1970", d.as_secs()), |t| t.to_string())
    };
    let renew = "issue a new one (for the development CA: `edge-runner init` a new home, or `edge-runner pki issue` \
                 for client certificates) and restart the runner";
    if now < from {
        return Some(Problem::error(
            format!("{what} {f} is not valid until {}", at(from)),
            "check this machine's clock (`timedatectl`), or wait until the certificate is valid",
        ));
    }
    if now >= until {
        return Some(Problem::error(format!("{what} {f} expired at {}", at(until)), renew));
    }
    let left = until - now;
    if left < EXPIRY_WARNING {
        return Some(Problem::warning(
            format!("{what} {f} expires at {} (in {} days)", at(until), left.as_secs() / 86_400),
            renew,
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType};

    use super::*;

    const DAY: i64 = 86_400;

    /// A CA and a leaf for `sans`, valid from `from` to `until` days around `now`.
    fn pki(
        sans: Vec<SanType>,
        from: i64,
        until: i64,
        now: i64,
    ) -> (Vec<CertificateDer<'static>>, Vec<CertificateDer<'static>>) {
        let t = |d: i64| time::OffsetDateTime::from_unix_timestamp(now + d * DAY).unwrap();
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.distinguished_name.push(DnType::CommonName, "test CA");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        ca.not_before = t(-400);
        ca.not_after = t(400);
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca, ca_key);
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.subject_alt_names = sans;
        p.not_before = t(from);
        p.not_after = t(until);
        let leaf = p.signed_by(&key, &issuer).unwrap();
        (vec![leaf.der().clone()], vec![ca_cert.der().clone()])
    }

    fn run(sans: Vec<SanType>, from: i64, until: i64, wanted: &[&str]) -> Vec<Problem> {
        let now = 1_800_000_000;
        let (chain, ca) = pki(sans, from, until, now);
        let wanted: Vec<_> = wanted.iter().map(|w| ServerName::try_from(w.to_string()).unwrap()).collect();
        let f = Path::new("server.pem");
        certificate(
            "server certificate",
            f,
            &chain,
            Some(("server.client_ca", f, &ca)),
            &wanted,
            "server.listen",
            Duration::from_secs(now as u64),
        )
    }

    fn ip(s: &str) -> SanType {
        SanType::IpAddress(s.parse().unwrap())
    }

    #[test]
    fn validity_truth_table() {
        let ok = run(vec![ip("127.0.0.1")], -1, 90, &["127.0.0.1"]);
        assert!(ok.is_empty(), "{ok:?}");
        let soon = run(vec![ip("127.0.0.1")], -1, 10, &["127.0.0.1"]);
        assert_eq!(soon.len(), 1, "{soon:?}");
        assert_eq!(soon[0].severity, Severity::Warning);
        assert!(soon[0].what.contains("in 9 days") || soon[0].what.contains("in 10 days"), "{soon:?}");
        let expired = run(vec![ip("127.0.0.1")], -30, -1, &["127.0.0.1"]);
        assert_eq!(expired.len(), 1, "only the expiry, not a chain error too: {expired:?}");
        assert!(expired[0].severity == Severity::Error && expired[0].what.contains("expired"));
        let future = run(vec![ip("127.0.0.1")], 2, 90, &["127.0.0.1"]);
        assert!(future[0].what.contains("not valid until"), "{future:?}");
    }

    #[test]
    fn names_must_cover_the_listen_address() {
        let p = run(vec![SanType::DnsName("runner.example".try_into().unwrap())], -1, 90, &["127.0.0.1", "localhost"]);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].what.contains("does not name 127.0.0.1 or localhost") && p[0].what.contains("runner.example"));
        // localhost covers a loopback listener.
        assert!(
            run(vec![SanType::DnsName("localhost".try_into().unwrap())], -1, 90, &["127.0.0.1", "localhost"])
                .is_empty()
        );
        // Listening everywhere with loopback names only: a warning.
        let p = run(vec![ip("127.0.0.1")], -1, 90, &[]);
        assert!(p.len() == 1 && p[0].severity == Severity::Warning, "{p:?}");
        assert!(run(vec![SanType::DnsName("runner.example".try_into().unwrap())], -1, 90, &[]).is_empty());
    }

    #[test]
    fn a_certificate_from_another_ca_is_named() {
        let now = 1_800_000_000;
        let (chain, _) = pki(vec![ip("127.0.0.1")], -1, 90, now);
        let (_, other_ca) = pki(vec![ip("127.0.0.1")], -1, 90, now);
        let f = Path::new("server.pem");
        let name = [ServerName::try_from("127.0.0.1").unwrap()];
        let p = certificate(
            "server certificate",
            f,
            &chain,
            Some(("server.client_ca", f, &other_ca)),
            &name,
            "server.listen",
            Duration::from_secs(now as u64),
        );
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].what.contains("does not chain to server.client_ca") && p[0].fix.contains("server.server_ca"),
            "{p:?}"
        );
    }
}
