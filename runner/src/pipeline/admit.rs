//! Admit: the capsule file parses (manifest canonical, component matching
//! its pinned digest), its signature verifies against a trusted signer, its
//! component compiles, and what it imports ⊆ what its manifest declares ⊆
//! what this runner grants. Recorded as `submission` and `admitted`.

use edge_core::Sha256Digest;
use edge_core::admission::{self, AdmissionError, Admitted};
use edge_core::container::{CapsuleFile, ContainerError};
use edge_core::evidence::Event;
use edge_core::signature::{self, SignatureError};

use super::run::{Fails, RunReport, Stage, StageError, Stop};
use super::{Runner, Submitted};
use crate::sandbox::Prepared;

/// Why a capsule was not admitted.
#[derive(Debug, thiserror::Error)]
pub enum AdmitError {
    #[error("{source} (capsule file {file})")]
    Container { source: ContainerError, file: Sha256Digest },
    #[error(transparent)]
    Signature(#[from] SignatureError),
    #[error("{0}")]
    Compile(String),
    #[error(transparent)]
    Admission(#[from] AdmissionError),
    #[error("{0}")]
    Link(String),
}

impl StageError for AdmitError {
    fn stage(&self) -> Stage {
        match self {
            Self::Container { .. } => Stage::Submission,
            _ => Stage::Admit,
        }
    }

    fn reason_code(&self) -> &'static str {
        match self {
            Self::Container { source, .. } => source.reason_code(),
            Self::Signature(e) => e.reason_code(),
            Self::Compile(_) => "capsule.invalid_component",
            Self::Admission(e) => e.reason_code(),
            Self::Link(_) => "admission.link_failed",
        }
    }
}

/// An admitted capsule and its component, ready to run.
pub(crate) struct Admission {
    pub admitted: Admitted,
    pub prepared: Prepared,
}

impl Runner {
    pub(crate) fn admit(&self, capsule: Submitted<'_>, report: &mut RunReport) -> Result<Admission, Stop> {
        let parse = |b: &[u8]| {
            CapsuleFile::parse(b).map_err(|source| AdmitError::Container { source, file: Sha256Digest::of(b) })
        };
        let file = match capsule {
            Submitted::Bytes(b) => parse(b)?,
            Submitted::Owned(b) => parse(&b)?,
            Submitted::File(f) => *f,
        };
        let m = file.manifest().clone();
        report.capsule = Some(file.digest());
        report.name = Some(format!("{}@{}", m.name, m.version));
        let manifest_d = report.artifact(file.manifest_bytes())?;
        // The container checked the component against the pinned digest.
        report.log.put_artifact_shared(m.component.sha256, file.component_shared()).or_fail()?;
        let bundle_d = file.bundle().map(|b| report.artifact(b)).transpose()?;
        let submitted_by = report.submitted_by.clone();
        report.record(Event::Submission {
            capsule: file.digest(),
            name: m.name.clone(),
            version: m.version.clone(),
            kind: format!("{:?}", m.kind).to_lowercase(),
            manifest: manifest_d,
            component: m.component.sha256,
            bundle: bundle_d,
            dangerous: self.config.dangerous.clone(),
            submitted_by,
        })?;

        let governance = report.governance.clone();
        let verified = signature::verify_capsule(file, &governance.signers).map_err(AdmitError::from)?;
        report.signer = Some(verified.signer().to_owned());

        // Compile (or load from cache), then imports ⊆ declared ⊆ granted.
        let loaded = self
            .sandbox
            .load_shared(verified.file().component(), &m.component.sha256)
            .map_err(|e| AdmitError::Compile(format!("{e:#}")))?;
        let admitted = admission::admit(verified, &loaded.imports, &self.config.ceiling).map_err(AdmitError::from)?;
        let pre = loaded.prepare(&self.sandbox).map_err(|e| AdmitError::Link(format!("{e:#}")))?.clone();
        let host_path = |name: &str| self.config.mounts.get(name).map(|m| m.path.as_path());
        let prepared = Prepared::new(pre, &admitted, host_path, &self.config.env, &self.config.endpoints).or_fail()?;

        let trusted_root = governance.trusted_root.as_deref().map(|b| report.artifact(b)).transpose()?;
        let capsule = admitted.capsule();
        report.record(Event::Admitted {
            signer: format!("{} ({})", capsule.signer(), capsule.signer_detail()),
            signer_key: capsule.signer_key().to_owned(),
            grant: serde_json::to_value(admitted.grant()).or_fail()?,
            imports: admitted.imports().to_vec(),
            trusted_root,
        })?;
        Ok(Admission { admitted, prepared })
    }
}
