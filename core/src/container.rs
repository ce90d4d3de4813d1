//! The `.capsule` file: one uncompressed POSIX tar archive holding
//!
//! | entry | content |
//! | --- | --- |
//! | `manifest.json` | the canonical manifest (its SHA-256 is the capsule digest) |
//! | `component.wasm` | the WebAssembly component the manifest pins |
//! | `signature.sigstore.json` | the Sigstore bundle (absent until `capsule sign`) |
//!
//! Tar was chosen so a reviewer can open a capsule with `tar xf`. Reading is
//! strict: only these three regular files, each at most once, within size
//! limits; anything else refuses the whole file.

use std::io::Cursor;

use crate::digest::Sha256Digest;
use crate::manifest::{MAX_MANIFEST_BYTES, Manifest, ManifestError};

pub const MANIFEST_ENTRY: &str = "manifest.json";
pub const COMPONENT_ENTRY: &str = "component.wasm";
pub const SIGNATURE_ENTRY: &str = "signature.sigstore.json";
/// Largest component accepted.
pub const MAX_COMPONENT_BYTES: u64 = 64 * 1024 * 1024;
/// Largest signature bundle accepted.
pub const MAX_BUNDLE_BYTES: u64 = 1024 * 1024;

/// A capsule file whose manifest parsed and whose component matches the
/// digest and size the manifest pins. The signature is *not* yet verified.
#[derive(Debug, Clone)]
pub struct CapsuleFile {
    manifest: Manifest,
    manifest_bytes: Vec<u8>,
    digest: Sha256Digest,
    component: std::sync::Arc<Vec<u8>>,
    bundle: Option<Vec<u8>>,
}

/// Component bytes and their SHA-256, computed when this value was made:
/// a capsule assembled from it (a submission by reference) is checked
/// against the manifest's pin without hashing the bytes again.
#[derive(Debug, Clone)]
pub struct KnownComponent {
    bytes: std::sync::Arc<Vec<u8>>,
    digest: Sha256Digest,
}

impl KnownComponent {
    /// Hash the bytes (once).
    pub fn new(bytes: Vec<u8>) -> Self {
        let digest = Sha256Digest::of(&bytes);
        Self { bytes: std::sync::Arc::new(bytes), digest }
    }
}

/// Why a capsule file was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ContainerError {
    #[error("not a readable capsule archive: {0}")]
    Archive(#[source] std::io::Error),
    #[error("capsule entry `{0}` is not allowed (only manifest.json, component.wasm, signature.sigstore.json)")]
    UnexpectedEntry(String),
    #[error("capsule entry `{0}` is not a regular file")]
    NotAFile(String),
    #[error("capsule entry `{0}` appears twice")]
    Duplicate(String),
    #[error("capsule entry `{name}` is {size} bytes; the limit is {limit}")]
    TooLarge { name: String, size: u64, limit: u64 },
    #[error("capsule has no `{0}`")]
    Missing(&'static str),
    #[error("manifest: {0}")]
    Manifest(#[from] ManifestError),
    #[error("component digest is {actual} but the manifest pins {pinned}: the component was altered after packing")]
    ComponentDigest { pinned: Sha256Digest, actual: Sha256Digest },
    #[error("component is {actual} bytes but the manifest pins {pinned}")]
    ComponentSize { pinned: u64, actual: u64 },
}

impl ContainerError {
    /// The stable reason code recorded in evidence.
    pub fn reason_code(&self) -> &'static str {
        match self {
            Self::ComponentDigest { .. } | Self::ComponentSize { .. } => "capsule.component_mismatch",
            Self::Manifest(_) => "capsule.bad_manifest",
            Self::Archive(_)
            | Self::UnexpectedEntry(_)
            | Self::NotAFile(_)
            | Self::Duplicate(_)
            | Self::TooLarge { .. }
            | Self::Missing(_) => "capsule.malformed",
        }
    }
}

impl CapsuleFile {
    /// Assemble a capsule from a manifest and its component (no signature).
    ///
    /// # Errors
    /// If the component does not match what the manifest pins.
    pub fn new(manifest: Manifest, component: Vec<u8>) -> Result<Self, ContainerError> {
        let manifest_bytes = manifest.to_canonical_json()?;
        Self::checked(manifest, manifest_bytes, component, None)
    }

    fn checked(
        manifest: Manifest,
        manifest_bytes: Vec<u8>,
        component: Vec<u8>,
        bundle: Option<Vec<u8>>,
    ) -> Result<Self, ContainerError> {
        Self::matched(manifest, manifest_bytes, &KnownComponent::new(component), bundle)
    }

    /// Assemble a capsule from its manifest, signature bundle and a
    /// component already known by digest: the same checks as a parsed
    /// capsule file (canonical manifest, component matches the pin).
    /// `find` is asked for the component the manifest pins, once the
    /// manifest has parsed (it is parsed once).
    ///
    /// # Errors
    /// The outer error is `find`'s; the inner one, see [`ContainerError`].
    pub fn from_parts<E>(
        manifest_bytes: Vec<u8>,
        bundle: Option<Vec<u8>>,
        find: impl FnOnce(Sha256Digest) -> Result<KnownComponent, E>,
    ) -> Result<Result<Self, ContainerError>, E> {
        let manifest = match Self::parts_checked(&manifest_bytes, bundle.as_deref()) {
            Ok(m) => m,
            Err(e) => return Ok(Err(e)),
        };
        let component = find(manifest.component.sha256)?;
        Ok(Self::matched(manifest, manifest_bytes, &component, bundle))
    }

    /// The sizes of a capsule's parts, and its manifest parsed.
    fn parts_checked(manifest_bytes: &[u8], bundle: Option<&[u8]>) -> Result<Manifest, ContainerError> {
        if manifest_bytes.len() > MAX_MANIFEST_BYTES {
            return Err(ContainerError::TooLarge {
                name: MANIFEST_ENTRY.into(),
                size: manifest_bytes.len() as u64,
                limit: MAX_MANIFEST_BYTES as u64,
            });
        }
        if let Some(b) = bundle
            && b.len() as u64 > MAX_BUNDLE_BYTES
        {
            return Err(ContainerError::TooLarge {
                name: SIGNATURE_ENTRY.into(),
                size: b.len() as u64,
                limit: MAX_BUNDLE_BYTES,
            });
        }
        Ok(Manifest::from_canonical_json(manifest_bytes)?)
    }

    fn matched(
        manifest: Manifest,
        manifest_bytes: Vec<u8>,
        component: &KnownComponent,
        bundle: Option<Vec<u8>>,
    ) -> Result<Self, ContainerError> {
        let actual = component.digest;
        if actual != manifest.component.sha256 {
            return Err(ContainerError::ComponentDigest { pinned: manifest.component.sha256, actual });
        }
        if component.bytes.len() as u64 != manifest.component.size {
            return Err(ContainerError::ComponentSize {
                pinned: manifest.component.size,
                actual: component.bytes.len() as u64,
            });
        }
        let digest = Sha256Digest::of(&manifest_bytes);
        Ok(Self { manifest, manifest_bytes, digest, component: component.bytes.clone(), bundle })
    }

    /// Parse a `.capsule` file.
    ///
    /// # Errors
    /// See [`ContainerError`]; every variant names what to fix.
    pub fn parse(bytes: &[u8]) -> Result<Self, ContainerError> {
        let mut archive = tar::Archive::new(Cursor::new(bytes));
        let mut manifest = None;
        let mut component = None;
        let mut bundle = None;
        // Entries are read in place, as slices of `bytes` (one copy each,
        // into the capsule), and skipped by seeking: reading them through
        // the archive zeroed each buffer before copying into it, and
        // reading past one copied it once more (~45 µs of a warm run, for a
        // 300 KiB component).
        for entry in archive.entries_with_seek().map_err(ContainerError::Archive)? {
            let entry = entry.map_err(ContainerError::Archive)?;
            let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            let (slot, limit) = match name.as_str() {
                MANIFEST_ENTRY => (&mut manifest, MAX_MANIFEST_BYTES as u64),
                COMPONENT_ENTRY => (&mut component, MAX_COMPONENT_BYTES),
                SIGNATURE_ENTRY => (&mut bundle, MAX_BUNDLE_BYTES),
                _ => {
                    return Err(ContainerError::UnexpectedEntry(name.chars().take(200).collect()));
                }
            };
            if !entry.header().entry_type().is_file() {
                return Err(ContainerError::NotAFile(name));
            }
            let size = entry.header().size().map_err(ContainerError::Archive)?;
            if size > limit {
                return Err(ContainerError::TooLarge { name, size, limit });
            }
            if slot.is_some() {
                return Err(ContainerError::Duplicate(name));
            }
            // A continuous file (checked above): its bytes are the
            // `size` from where the archive says they start, padded to
            // the archive's 512-byte blocks, which must be there too (as
            // reading past them required). A PAX header giving another
            // size than the entry's own is refused too.
            let data = usize::try_from(entry.raw_file_position())
                .ok()
                .zip(usize::try_from(size).ok())
                .and_then(|(start, len)| {
                    let padded = start.checked_add(len.checked_add(511)? & !511)?;
                    (padded <= bytes.len()).then(|| &bytes[start..start + len])
                })
                .filter(|_| entry.size() == size);
            let Some(data) = data else {
                return Err(ContainerError::Archive(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!("entry `{name}` is shorter than its header says"),
                )));
            };
            *slot = Some(data.to_vec());
        }
        let manifest_bytes = manifest.ok_or(ContainerError::Missing(MANIFEST_ENTRY))?;
        let component = component.ok_or(ContainerError::Missing(COMPONENT_ENTRY))?;
        let manifest = Manifest::from_canonical_json(&manifest_bytes)?;
        Self::checked(manifest, manifest_bytes, component, bundle)
    }

    /// Serialise to the `.capsule` format (deterministic: fixed order, zero times and owners).
    pub fn to_bytes(&self) -> Vec<u8> {
        pack(&self.manifest_bytes, &self.component, self.bundle.as_deref())
    }

    /// Replace the signature bundle.
    pub fn with_bundle(mut self, bundle: Vec<u8>) -> Self {
        self.bundle = Some(bundle);
        self
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }
    pub fn manifest_bytes(&self) -> &[u8] {
        &self.manifest_bytes
    }
    /// The capsule digest (SHA-256 of the canonical manifest).
    pub fn digest(&self) -> Sha256Digest {
        self.digest
    }
    pub fn component(&self) -> &[u8] {
        &self.component
    }
    /// The component's bytes, shared (not copied).
    pub fn component_shared(&self) -> std::sync::Arc<Vec<u8>> {
        self.component.clone()
    }
    pub fn bundle(&self) -> Option<&[u8]> {
        self.bundle.as_deref()
    }
}

/// Write the `.capsule` format from its parts (deterministic: fixed order,
/// zero times and owners). Nothing is checked here: [`CapsuleFile::parse`]
/// checks what it reads back.
fn pack(manifest: &[u8], component: &[u8], bundle: Option<&[u8]>) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());

    let mut add = |name: &str, data: &[u8]| {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(0);
        h.set_uid(0);
        h.set_gid(0);
        h.set_entry_type(tar::EntryType::Regular);
        builder.append_data(&mut h, name, data).expect("writing to a Vec cannot fail");
    };
    add(MANIFEST_ENTRY, manifest);
    add(COMPONENT_ENTRY, component);
    if let Some(b) = bundle {
        add(SIGNATURE_ENTRY, b);
    }
    builder.into_inner().expect("writing to a Vec cannot fail")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::ComponentRef;

    fn sample() -> CapsuleFile {
        let wasm = b"\0asm fake component".to_vec();
        let m = Manifest::from_authoring_toml(
            "name = \"x\"\nversion = \"1\"\nkind = \"diagnostic\"\n",
            ComponentRef { sha256: Sha256Digest::of(&wasm), size: wasm.len() as u64 },
        )
        .unwrap();
        CapsuleFile::new(m, wasm).unwrap()
    }

    #[test]
    fn round_trip() {
        let c = sample().with_bundle(b"{}".to_vec());
        let back = CapsuleFile::parse(&c.to_bytes()).unwrap();
        assert_eq!(back.digest(), c.digest());
        assert_eq!(back.bundle(), Some(&b"{}"[..]));
        assert_eq!(c.to_bytes(), back.to_bytes(), "serialisation is deterministic");
    }

    #[test]
    fn tampered_component_byte_is_refused() {
        let bytes = sample().to_bytes();
        let needle = b"fake";
        let pos = bytes.windows(4).position(|w| w == needle).unwrap();
        let mut bad = bytes.clone();
        bad[pos] ^= 0x20;
        assert!(matches!(CapsuleFile::parse(&bad), Err(ContainerError::ComponentDigest { .. })));
    }

    /// Entries are taken as slices of the input where the archive says
    /// they start: one that runs past the end, or whose PAX header gives
    /// another size than its own header, is refused, never read short or
    /// long.
    #[test]
    fn an_entry_cut_short_or_resized_by_pax_is_refused() {
        let c = sample();
        let bytes = c.to_bytes();
        // Cut inside the component's data (after its header), and at every
        // length a little around it: an error, never a capsule.
        let mut archive = tar::Archive::new(Cursor::new(&bytes));
        let entry = archive.entries().unwrap().map(Result::unwrap).last().unwrap();
        assert_eq!(&*entry.path_bytes(), COMPONENT_ENTRY.as_bytes());
        let (at, len) = (usize::try_from(entry.raw_file_position()).unwrap(), c.component().len());
        assert_eq!(&bytes[at..at + len], c.component());
        let padded = at + len.div_ceil(512) * 512;
        assert!(len % 512 != 0 && padded + 1024 == bytes.len(), "the sample ends in padding and two zero blocks");
        for cut in [at, at + 1, at + len / 2, at + len - 1, at + len, padded - 1] {
            match CapsuleFile::parse(&bytes[..cut]) {
                Err(ContainerError::Archive(e)) => assert!(e.to_string().contains("shorter than its header"), "{e}"),
                other => panic!("cut at {cut}: {other:?}"),
            }
        }
        // Without the two zero blocks that end an archive, it is whole.
        assert_eq!(CapsuleFile::parse(&bytes[..padded]).unwrap().digest(), c.digest());
        // A PAX `size` that disagrees with the entry's header.
        for pax_size in [b"4".as_slice(), b"4096"] {
            let mut b = tar::Builder::new(Vec::new());
            let add = |b: &mut tar::Builder<Vec<u8>>, n: &str, d: &[u8]| {
                let mut h = tar::Header::new_ustar();
                h.set_size(d.len() as u64);
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(0o644);
                b.append_data(&mut h, n, d).unwrap();
            };
            add(&mut b, MANIFEST_ENTRY, c.manifest_bytes());
            b.append_pax_extensions([("size", pax_size)]).unwrap();
            add(&mut b, COMPONENT_ENTRY, c.component());
            let mut tail = vec![0u8; 8192];
            let mut archive = b.into_inner().unwrap();
            archive.append(&mut tail);
            let e = CapsuleFile::parse(&archive).unwrap_err();
            assert!(e.to_string().contains("shorter than its header says"), "{e}");
        }
    }

    #[test]
    fn extra_entry_is_refused() {
        let c = sample();
        let mut b = tar::Builder::new(Vec::new());
        for (n, d) in [(MANIFEST_ENTRY, c.manifest_bytes()), (COMPONENT_ENTRY, c.component()), ("../evil", &b"x"[..])] {
            let mut h = tar::Header::new_gnu();
            h.set_size(d.len() as u64);
            h.set_entry_type(tar::EntryType::Regular);
            h.set_cksum();
            b.append_data(&mut h, n, d).ok();
            // `append_data` refuses `..`; write the raw name too.
            if n == "../evil" {
                let mut h = tar::Header::new_gnu();
                h.as_gnu_mut().unwrap().name[..7].copy_from_slice(b"../evil");
                h.set_size(1);
                h.set_entry_type(tar::EntryType::Regular);
                h.set_cksum();
                b.append(&h, &b"x"[..]).unwrap();
            }
        }
        let bytes = b.into_inner().unwrap();
        assert!(matches!(CapsuleFile::parse(&bytes), Err(ContainerError::UnexpectedEntry(n)) if n == "../evil"));
    }

    proptest::proptest! {
        /// Untrusted bytes: any mutation of a valid capsule either parses to a
        /// capsule whose component still matches its manifest, or is refused.
        /// Never a panic.
        #[test]
        fn mutated_capsules_never_panic(flips in proptest::collection::vec((0usize..4096, 0u8..=255), 1..8)) {
            let mut bytes = sample().with_bundle(b"{}".to_vec()).to_bytes();
            for (pos, val) in flips {
                let i = pos % bytes.len();
                bytes[i] = val;
            }
            if let Ok(c) = CapsuleFile::parse(&bytes) {
                proptest::prop_assert_eq!(Sha256Digest::of(c.component()), c.manifest().component.sha256);
                proptest::prop_assert_eq!(Sha256Digest::of(c.manifest_bytes()), c.digest());
            }
        }

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..2048)) {
            let _ = CapsuleFile::parse(&bytes);
            let _ = crate::manifest::Manifest::from_canonical_json(&bytes);
            let _ = crate::evidence::verify_chain_lines(&bytes);
        }
    }

    #[test]
    fn garbage_is_refused() {
        assert!(CapsuleFile::parse(b"not a tar").is_err());
        assert!(matches!(CapsuleFile::parse(&[0u8; 1024]), Err(ContainerError::Missing(MANIFEST_ENTRY))));
    }
}
