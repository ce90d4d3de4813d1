//! Certificate expiry diagnostic: read-only scan of PEM certificates.
//!
//! Parameters:
//! * `mount` — logical mount holding certificates (default `certs`);
//! * `days` — report certificates expiring within this many days (default 30).
//!
//! Every `*.pem`, `*.crt` and `*.cer` file under the mount is parsed (all
//! certificates in a chain). Findings: `cert.expired` (critical),
//! `cert.expiring` (high), `cert.unparseable` (low), and a summary. The plan
//! has no changes; `verify` re-scans and checks the files it reported on are
//! unchanged, so the findings still describe what is on disk.

use std::time::{Duration, SystemTime};

use capsule_sdk::{Capsule, Ctx, Mount, Plan, PlanBuilder, Severity, Verification, digest, export_capsule};
use x509_cert::Certificate;
use x509_cert::der::DecodePem as _;

struct CertExpiry;

const SCANNED: &str = "scanned-files";

fn is_cert_file(name: &str) -> bool {
    [".pem", ".crt", ".cer"].iter().any(|s| name.ends_with(s))
}

fn walk(mount: &Mount, rel: &str, out: &mut Vec<String>) -> Result<(), String> {
    let dir = mount.path(rel);
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .map_err(|e| format!("cannot list {dir}: {e}"))?
        .filter_map(|e| e.ok().and_then(|e| e.file_name().into_string().ok()))
        .collect();
    names.sort();
    for name in names {
        let child = if rel.is_empty() { name } else { format!("{rel}/{name}") };
        let meta = std::fs::symlink_metadata(mount.path(&child)).map_err(|e| format!("cannot stat {child}: {e}"))?;
        if meta.is_dir() {
            walk(mount, &child, out)?;
        } else if meta.is_file() && is_cert_file(&child) {
            out.push(child);
        }
    }
    Ok(())
}

/// Split a PEM bundle into certificates.
fn certificates(text: &str) -> Result<Vec<Certificate>, String> {
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find(BEGIN) {
        let tail = &rest[start..];
        let end = tail.find(END).ok_or("unterminated PEM block")? + END.len();
        out.push(Certificate::from_pem(&tail[..end]).map_err(|e| e.to_string())?);
        rest = &tail[end..];
    }
    if out.is_empty() {
        return Err("no PEM certificate found".into());
    }
    Ok(out)
}

fn scan(ctx: &Ctx) -> Result<(Mount, Vec<String>), String> {
    let mount = ctx.mount(ctx.param("mount").unwrap_or("certs"))?;
    let mut files = Vec::new();
    walk(&mount, "", &mut files)?;
    Ok((mount, files))
}

fn fingerprint(mount: &Mount, files: &[String]) -> Result<String, String> {
    let mut text = String::new();
    for f in files {
        let d = mount.digest(f)?.unwrap_or_else(|| "absent".into());
        text.push_str(&format!("{f}\t{d}\n"));
    }
    Ok(digest(text.as_bytes()))
}

impl Capsule for CertExpiry {
    fn plan(ctx: &Ctx) -> Result<Plan, String> {
        let days: u64 =
            ctx.param("days").unwrap_or("30").parse().map_err(|_| "parameter `days` must be a whole number")?;
        let (mount, files) = scan(ctx)?;
        let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_err(|e| e.to_string())?;
        let horizon = now + Duration::from_secs(days * 86_400);
        let mut plan = PlanBuilder::new(format!("certificates in {} expiring within {days} days", mount.name()));
        let (mut total, mut expired, mut expiring) = (0usize, 0usize, 0usize);
        for f in &files {
            let bytes = mount.read(f)?.unwrap_or_default();
            let text = String::from_utf8_lossy(&bytes);
            let certs = match certificates(&text) {
                Ok(c) => c,
                Err(e) => {
                    plan.finding(Severity::Low, "cert.unparseable", format!("{f}: {e}"), Some(f));
                    continue;
                }
            };
            for (i, cert) in certs.iter().enumerate() {
                total += 1;
                let tbs = &cert.tbs_certificate;
                let not_after = tbs.validity.not_after.to_unix_duration();
                let subject = tbs.subject.to_string();
                let subject_ref = format!("{f}#{i}");
                let date = tbs.validity.not_after.to_string();
                if not_after <= now {
                    expired += 1;
                    plan.finding(
                        Severity::Critical,
                        "cert.expired",
                        format!("{subject} expired on {date}"),
                        Some(&subject_ref),
                    );
                } else if not_after <= horizon {
                    expiring += 1;
                    let left = (not_after - now).as_secs() / 86_400;
                    plan.finding(
                        Severity::High,
                        "cert.expiring",
                        format!("{subject} expires on {date} (in {left} days)"),
                        Some(&subject_ref),
                    );
                }
            }
        }
        plan.finding(
            Severity::Info,
            "cert.summary",
            format!(
                "{total} certificate(s) in {} file(s): {expired} expired, {expiring} expiring within {days} days",
                files.len()
            ),
            Some(mount.name()),
        );
        plan.fact(SCANNED, fingerprint(&mount, &files)?);
        Ok(plan.build())
    }

    fn apply(_ctx: &Ctx, _plan: &Plan) -> Result<(), String> {
        // A diagnostic never changes anything; the runner never calls apply for it.
        Ok(())
    }

    fn verify(ctx: &Ctx, plan: &Plan) -> Result<Verification, String> {
        let (mount, files) = scan(ctx)?;
        let same = plan.fact(SCANNED) == Some(fingerprint(&mount, &files)?.as_str());
        Ok(if same {
            Verification::new(true, "certificate files unchanged since the scan; findings stand")
        } else {
            Verification::new(false, "certificate files changed during the scan; re-run the diagnostic")
        })
    }
}

export_capsule!(CertExpiry);
