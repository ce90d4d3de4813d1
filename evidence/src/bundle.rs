//! The export bundle: one self-contained UTF-8 file.
//!
//! ```text
//! edge-runner evidence bundle v2          magic line (v1: see [`Format`])
//! {"artifacts":K,"origin":…,"records":N,"scope":{…},"tree_size":S}   header, canonical JSON
//! <record>                                N lines: each record's canonical JSON (the Merkle leaf)
//! sha256:<hex> <base64>                   K lines: the referenced artifacts, digest order
//! <signed checkpoint>                     the rest: a c2sp.org/tlog-checkpoint signed note
//! ```
//!
//! Every byte is checked by the verifier: the magic line exactly, the header
//! is canonical (so any change is a change of value, and every value is
//! checked), records are Merkle leaves under the signed root, artifacts are
//! content-addressed (strict base64, strictly increasing digests) and the
//! checkpoint is a signed note. Nothing in a bundle is informational.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use edge_core::Sha256Digest;
use edge_core::canonical;
use edge_core::merkle::Hash;
use serde::{Deserialize, Serialize};

use crate::Failure;

/// The first line of every bundle the runner writes now ([`Format::V2`]).
pub const MAGIC: &str = Format::V2.magic();

/// What every magic line starts with (the version follows).
pub const MAGIC_PREFIX: &str = "edge-runner evidence bundle v";

/// A bundle's format, named by its magic line. The layout is the same;
/// what differs is which artifacts a bundle must carry for the runner's
/// config.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Format {
    /// Written by runners before 2026-12-06: a `config-reloaded` or
    /// `reload-refused` record's config files were carried as read, with
    /// any secret in them (a webhook URL's path or query, env values); a
    /// `runner-started` record's config was not carried. Still verified,
    /// by that rule, which for records written since (naming
    /// `config_shown`) is the rule of v2: relabelling a bundle v1 never
    /// excuses a config as shown.
    V1,
    /// The config each `runner-started`, `config-reloaded` and
    /// `reload-refused` record names is carried as shown (`config_shown`:
    /// parsed and written out again, secrets replaced), never as read
    /// ([`edge_core::evidence::Record::artifacts`]).
    #[default]
    V2,
}

impl Format {
    /// The magic line of this format.
    #[must_use]
    pub const fn magic(self) -> &'static str {
        match self {
            Format::V1 => "edge-runner evidence bundle v1",
            Format::V2 => "edge-runner evidence bundle v2",
        }
    }

    /// The format a magic line names.
    ///
    /// # Errors
    /// A [`Failure`] with check `bundle.format` for any other line.
    pub fn of_magic(line: &[u8]) -> Result<Self, Failure> {
        [Format::V1, Format::V2].into_iter().find(|f| f.magic().as_bytes() == line).ok_or_else(|| {
            let head = String::from_utf8_lossy(&line[..line.len().min(64)]);
            let shown = edge_core::text::line(&head);
            let detail = if line.starts_with(MAGIC_PREFIX.as_bytes()) {
                format!("`{shown}` is a bundle format this verifier does not know (it reads v1 and v2): use a newer edge-verify")
            } else {
                format!("the first line is not `{MAGIC}`: not an evidence bundle")
            };
            Failure::bundle("bundle.format", detail)
        })
    }

    /// The artifacts `record` names that a bundle of this format carries
    /// (and so must carry: and none other).
    #[must_use]
    pub fn artifacts_of(self, record: &edge_core::evidence::Record) -> Vec<Sha256Digest> {
        use edge_core::evidence::Event;
        let mut all = record.artifacts();
        if self == Format::V1 {
            let named: Vec<&edge_core::evidence::ConfigDigests> = match &record.event {
                Event::ConfigReloaded { old, new, .. } => vec![&**old, &**new],
                Event::ReloadRefused { kept, .. } => vec![kept],
                _ => Vec::new(),
            };
            // A record of a v1 runner (no config as shown): the file as read.
            all.extend(named.into_iter().filter(|c| c.config_shown.is_none()).map(|c| c.config));
        }
        all
    }
}

/// What the bundle covers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Scope {
    /// The whole log, from record 0 to the checkpoint.
    Full,
    /// The records after an earlier checkpoint, with a consistency proof
    /// from it and the compact range (subtree hashes) of the earlier tree.
    Since { checkpoint: String, consistency: Vec<String>, prefix: Vec<String> },
    /// One run's records, each with an inclusion proof against the checkpoint.
    Run { run: String, proofs: Vec<Vec<String>> },
}

/// The header line (and the format its magic line names).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Header {
    /// The format, from the magic line before the header (not part of
    /// the header's JSON). New bundles are [`Format::V2`].
    #[serde(skip)]
    pub format: Format,
    /// The runner's identity: the checkpoint origin and key name.
    pub origin: String,
    pub scope: Scope,
    /// The checkpoint's tree size.
    pub tree_size: u64,
    /// Number of record lines.
    pub records: u64,
    /// Number of artifact lines.
    pub artifacts: u64,
}

/// A parsed (not yet verified) bundle, borrowing the file's bytes.
#[derive(Debug)]
pub struct Bundle<'a> {
    pub header: Header,
    pub records: Vec<&'a str>,
    pub artifacts: Vec<(Sha256Digest, Vec<u8>)>,
    pub checkpoint: &'a str,
}

/// Encode hashes as base64 strings (proofs in the header).
pub fn encode_hashes(hashes: &[Hash]) -> Vec<String> {
    hashes.iter().map(|h| B64.encode(h)).collect()
}

/// Decode base64 hashes strictly (32 bytes each, canonical padding).
///
/// # Errors
/// Names the first bad entry.
pub fn decode_hashes(list: &[String]) -> Result<Vec<Vec<u8>>, String> {
    list.iter()
        .enumerate()
        .map(|(i, s)| match B64.decode(s) {
            Ok(h) if h.len() == 32 => Ok(h),
            _ => Err(format!("hash {i} is not 32 bytes of base64")),
        })
        .collect()
}

/// Write a bundle. `records` are canonical JSON lines, `artifacts` sorted by digest.
///
/// # Errors
/// If the parts disagree with the header (a record spanning lines, counts,
/// artifacts out of order).
pub fn write(
    header: &Header,
    records: &[&str],
    artifacts: &[(Sha256Digest, &[u8])],
    checkpoint: &str,
) -> std::io::Result<Vec<u8>> {
    let size: usize = records.iter().map(|r| r.len() + 1).sum::<usize>()
        + artifacts.iter().map(|(_, b)| b.len() * 4 / 3 + 80).sum::<usize>();
    let mut w = Writer::start(Vec::with_capacity(size + 1024), header)?;
    for r in records {
        w.record(r)?;
    }
    for (d, b) in artifacts {
        w.artifact(d, b)?;
    }
    w.finish(checkpoint)
}

/// A bundle written part by part (export streams records and artifacts
/// straight from the store): the header first, then exactly the records
/// and artifacts it announces, in order, then the checkpoint. Anything
/// else is an error, so a writer cannot produce a bundle whose layout
/// disagrees with its header.
#[derive(Debug)]
pub struct Writer<W: std::io::Write> {
    out: W,
    records: u64,
    artifacts: u64,
    last: Option<Sha256Digest>,
    header_records: u64,
    header_artifacts: u64,
    /// Bytes written so far.
    pub bytes: u64,
}

impl<W: std::io::Write> Writer<W> {
    /// Write the magic line and the header.
    ///
    /// # Errors
    /// On a write error (or, never, a header that cannot be made canonical).
    pub fn start(out: W, header: &Header) -> std::io::Result<Self> {
        let head = canonical::to_canonical_vec(header).map_err(std::io::Error::other)?;
        let mut w = Self {
            out,
            records: 0,
            artifacts: 0,
            last: None,
            header_records: header.records,
            header_artifacts: header.artifacts,
            bytes: 0,
        };
        w.put(header.format.magic().as_bytes())?;
        w.put(b"\n")?;
        w.put(&head)?;
        w.put(b"\n")?;
        Ok(w)
    }

    fn put(&mut self, b: &[u8]) -> std::io::Result<()> {
        self.out.write_all(b)?;
        self.bytes += b.len() as u64;
        Ok(())
    }

    fn refuse(why: String) -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, why)
    }

    /// The next record line (its canonical JSON, one line).
    ///
    /// # Errors
    /// On a write error, a line break in the record, or more records than the header announced.
    pub fn record(&mut self, line: &str) -> std::io::Result<()> {
        if self.records >= self.header_records || self.artifacts > 0 {
            return Err(Self::refuse(format!(
                "record {} beyond the {} the header announced",
                self.records, self.header_records
            )));
        }
        if line.contains('\n') {
            return Err(Self::refuse(format!("record {} spans lines", self.records)));
        }
        self.records += 1;
        self.put(line.as_bytes())?;
        self.put(b"\n")
    }

    /// The next artifact (in strictly increasing digest order, after every record).
    ///
    /// # Errors
    /// On a write error, an artifact out of order or more artifacts than the header announced.
    pub fn artifact(&mut self, digest: &Sha256Digest, bytes: &[u8]) -> std::io::Result<()> {
        if self.records != self.header_records || self.artifacts >= self.header_artifacts {
            return Err(Self::refuse(format!(
                "artifact {digest} out of place: {} of {} records and {} of {} artifacts written",
                self.records, self.header_records, self.artifacts, self.header_artifacts
            )));
        }
        if self.last.is_some_and(|p| p >= *digest) {
            return Err(Self::refuse(format!("artifact {digest} is not after the one before it in digest order")));
        }
        self.last = Some(*digest);
        self.artifacts += 1;
        let mut line = String::with_capacity(bytes.len() * 4 / 3 + 80);
        line.push_str(&digest.to_string());
        line.push(' ');
        B64.encode_string(bytes, &mut line);
        line.push('\n');
        self.put(line.as_bytes())
    }

    /// The signed checkpoint, last; returns the output.
    ///
    /// # Errors
    /// On a write error, or fewer records or artifacts than the header announced.
    pub fn finish(mut self, checkpoint: &str) -> std::io::Result<W> {
        if self.records != self.header_records || self.artifacts != self.header_artifacts {
            return Err(Self::refuse(format!(
                "{} of {} records and {} of {} artifacts written: the bundle would not match its header",
                self.records, self.header_records, self.artifacts, self.header_artifacts
            )));
        }
        self.put(checkpoint.as_bytes())?;
        self.out.flush()?;
        Ok(self.out)
    }
}

/// Parse the layout (strictly). Values are checked by [`crate::verify()`].
///
/// # Errors
/// A [`Failure`] with check `bundle.format`.
pub fn parse(bytes: &[u8]) -> Result<Bundle<'_>, Failure> {
    let bad = |detail: String| Failure::bundle("bundle.format", detail);
    let text = std::str::from_utf8(bytes)
        .map_err(|e| bad(format!("not UTF-8 at byte {}: this is not an evidence bundle", e.valid_up_to())))?;
    let mut rest = text;
    let mut line = |what: &str| -> Result<&str, Failure> {
        let (l, r) = rest.split_once('\n').ok_or_else(|| bad(format!("the file ends before {what}")))?;
        rest = r;
        Ok(l)
    };
    let format = Format::of_magic(line("the magic line")?.as_bytes())?;
    let header = Header { format, ..header_line(line("the header")?)? };
    let n = usize::try_from(header.records).map_err(|_| bad("record count out of range".into()))?;
    let k = usize::try_from(header.artifacts).map_err(|_| bad("artifact count out of range".into()))?;
    // Each line takes at least two bytes: refuse absurd counts before allocating.
    if n.saturating_add(k) > bytes.len() / 2 {
        return Err(bad(format!("the header announces {n} records and {k} artifacts, more than the file holds")));
    }
    let mut records = Vec::with_capacity(n);
    for i in 0..n {
        records.push(line(&format!("record line {i} of {n}"))?);
    }
    let mut artifacts = Vec::with_capacity(k);
    let mut last: Option<Sha256Digest> = None;
    for i in 0..k {
        let l = line(&format!("artifact line {i} of {k}"))?;
        let (digest, bytes) = artifact_line(l.as_bytes(), i as u64)?;
        if last.is_some_and(|p| p >= digest) {
            return Err(bad(format!("artifact line {i}: artifacts must be in strictly increasing digest order")));
        }
        last = Some(digest);
        artifacts.push((digest, bytes));
    }
    Ok(Bundle { header, records, artifacts, checkpoint: rest })
}

/// The header line: canonical JSON of a [`Header`].
pub(crate) fn header_line(head: &str) -> Result<Header, Failure> {
    let bad = |detail: String| Failure::bundle("bundle.format", detail);
    let header: Header = serde_json::from_str(head).map_err(|e| bad(format!("header: {e}")))?;
    if canonical::to_canonical_vec(&header).map_err(|e| bad(format!("header: {e}")))? != head.as_bytes() {
        return Err(bad("header is not in canonical JSON form".into()));
    }
    Ok(header)
}

/// Artifact line `i`: `sha256:<hex> <base64>`, the digest canonical and
/// the base64 strict (whether the bytes hash to the digest is checked by
/// the verifier).
pub(crate) fn artifact_line(line: &[u8], i: u64) -> Result<(Sha256Digest, Vec<u8>), Failure> {
    let bad = |detail: String| Failure::bundle("bundle.format", format!("artifact line {i}: {detail}"));
    let sp = line.iter().position(|&b| b == b' ').ok_or_else(|| bad("expected `<digest> <base64>`".into()))?;
    let d = std::str::from_utf8(&line[..sp]).map_err(|_| bad("bad digest".into()))?;
    let digest: Sha256Digest = d.parse().map_err(|_| bad("bad digest".into()))?;
    if digest.to_string() != d {
        return Err(bad("digest not in canonical form".into()));
    }
    let bytes = B64
        .decode(&line[sp + 1..])
        .map_err(|e| Failure::bundle("bundle.format", format!("artifact {digest}: bad base64 ({e})")))?;
    Ok((digest, bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use edge_core::evidence::{ConfigDigests, Event, Record};

    fn record(event: Event) -> Record {
        Record {
            schema: edge_core::evidence::RECORD_SCHEMA.into(),
            seq: 0,
            time: "2026-12-06T00:00:00Z".into(),
            run: "runner".into(),
            prev: Sha256Digest::of(b""),
            event,
        }
    }

    fn digests(config: &[u8], shown: Option<&[u8]>) -> ConfigDigests {
        ConfigDigests {
            config: Sha256Digest::of(config),
            config_shown: shown.map(Sha256Digest::of),
            policy: Some(Sha256Digest::of(b"policy")),
            graph: None,
            registry: None,
            allowed_signers: None,
            roles: None,
            passkeys: None,
            trusted_root: None,
        }
    }

    #[test]
    fn a_config_is_carried_as_shown_and_as_read_only_for_a_v1_runners_reload_in_v1() {
        let (file, shown, policy) = (Sha256Digest::of(b"a"), Sha256Digest::of(b"a shown"), Sha256Digest::of(b"policy"));
        let set = |f: Format, r: &Record| -> std::collections::BTreeSet<Sha256Digest> {
            f.artifacts_of(r).into_iter().collect()
        };
        // A reload recorded now, and one recorded before `config_shown`.
        let now = record(Event::ConfigReloaded {
            trigger: "sighup".into(),
            old: Box::new(digests(b"a", Some(b"a shown"))),
            new: Box::new(digests(b"a", Some(b"a shown"))),
            restart_needed: Vec::new(),
        });
        assert_eq!(set(Format::V2, &now), [shown, policy].into());
        assert_eq!(set(Format::V1, &now), [shown, policy].into(), "relabelled v1, a bundle still carries it");
        let before =
            record(Event::ReloadRefused { trigger: "sighup".into(), error: "e".into(), kept: digests(b"a", None) });
        assert_eq!(set(Format::V2, &before), [policy].into(), "the file itself never, in v2");
        assert_eq!(set(Format::V1, &before), [file, policy].into());
        // A start: the config as shown, whatever the label.
        let start = record(Event::RunnerStarted {
            binary: Sha256Digest::of(b"bin"),
            version: "0.1.0".into(),
            revision: "unknown".into(),
            config: Some(file),
            config_shown: Some(shown),
            policy: None,
            graph: None,
            approvers: None,
        });
        assert_eq!(set(Format::V2, &start), [shown].into());
        assert_eq!(set(Format::V1, &start), [shown].into());
    }
}
