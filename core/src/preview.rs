//! Previews: what an approver sees before signing, and what a reviewer
//! checks offline.
//!
//! After `plan`, the runner runs `apply` against a staged copy, checks the
//! real diff against the plan, and describes each changed file in a
//! [`Preview`] (an evidence artifact): its digests, sizes and line counts
//! before and after, and — as the mount's [`PreviewMode`] allows — its
//! content, kept as further artifacts:
//!
//! * `full`: the exact bytes. Their artifact digest *is* the plan's digest,
//!   so anyone can re-hash what they are shown against the signed plan.
//! * `redacted`: text with the value of every line matching an operator's
//!   pattern masked (`password = [redacted 3f9a1c]`). The tag is a keyed hash
//!   under a key drawn for this preview and then forgotten: within one preview
//!   the same value has the same tag (an approver sees a secret *changed*),
//!   and nobody can test guesses against it. Masked content is labelled as
//!   such and never claims to be the plan's bytes.
//! * `digest-only`: no content anywhere (evidence, logs, API, reports); only
//!   digests, sizes and line counts.
//!
//! [`check`] is what the offline verifier (and the approver's tool) runs:
//! every diff entry is described, with the diff's digests, and content kept
//! as `full` hashes to them. [`render`] turns a file's preview into unified
//! diff lines; callers neutralise each line for their medium (terminal,
//! HTML) — file content is as hostile as any other capsule output.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::Sha256Digest;
use crate::paths::MountPath;
use crate::plan::{Action, DiffEntry};

/// Preview document schema.
pub const PREVIEW_SCHEMA: &str = "https://edge-runner.dev/preview/v1";

/// Lines of context around each change in a rendered diff.
pub const CONTEXT_LINES: usize = 3;

/// How long a line diff may search for the smallest edit before settling.
pub const DIFF_DEADLINE: std::time::Duration = std::time::Duration::from_millis(250);

/// What of a mount's changed files an approver (and the evidence) may see.
/// Ordered from the strictest: a mount's mode can only be tightened for a
/// proposal already waiting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum PreviewMode {
    /// Digests, sizes and line counts only.
    DigestOnly,
    /// Text with matching lines' values masked; binary files as digest-only.
    #[default]
    Redacted,
    /// The exact bytes.
    Full,
}

impl PreviewMode {
    pub fn name(self) -> &'static str {
        match self {
            Self::DigestOnly => "digest-only",
            Self::Redacted => "redacted",
            Self::Full => "full",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "digest-only" => Some(Self::DigestOnly),
            "redacted" => Some(Self::Redacted),
            "full" => Some(Self::Full),
            _ => None,
        }
    }
}

impl fmt::Display for PreviewMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The preview of one proposal's changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Preview {
    pub schema: String,
    /// The plan this preview is the staged result of.
    pub plan: Sha256Digest,
    pub files: Vec<FilePreview>,
}

impl Preview {
    /// The diff this preview describes: what it says changed, file by file.
    pub fn diff(&self) -> Vec<DiffEntry> {
        self.files
            .iter()
            .map(|f| DiffEntry {
                mount: f.mount.clone(),
                path: f.path.clone(),
                action: f.action,
                before: f.before.as_ref().map(|s| s.digest),
                after: f.after.as_ref().map(|s| s.digest),
                mode: f.mode_after,
            })
            .collect()
    }

    /// Every content artifact it names, in order, without repeats.
    pub fn contents(&self) -> Vec<Sha256Digest> {
        let mut out = Vec::new();
        for side in self.files.iter().flat_map(|f| [&f.before, &f.after]).flatten() {
            if let Some(c) = side.content
                && !out.contains(&c)
            {
                out.push(c);
            }
        }
        out
    }
}

/// One changed file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilePreview {
    pub mount: String,
    pub path: MountPath,
    pub action: Action,
    /// The mount's preview mode when the preview was made.
    pub preview: PreviewMode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<Side>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<Side>,
    /// Permission bits before (modify, delete) and after (create, modify).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode_before: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode_after: Option<u32>,
    /// Lines masked (both sides) in a redacted preview.
    #[serde(default)]
    pub redacted_lines: u64,
}

/// One side (before or after) of a changed file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Side {
    pub digest: Sha256Digest,
    pub size: u64,
    /// Newline-terminated lines (a last line without a newline counts).
    pub lines: u64,
    /// UTF-8 without NUL bytes: shown as a line diff.
    pub text: bool,
    /// Artifact: what is shown — the exact bytes (`full`, then equal to
    /// `digest`) or the masked text (`redacted`). None for digest-only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<Sha256Digest>,
}

/// Why a preview does not describe a diff.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PreviewError {
    #[error("not a preview document (schema `{0}`)")]
    Schema(String),
    #[error("the preview is for plan {found}, not {expected}")]
    Plan { expected: Sha256Digest, found: Sha256Digest },
    #[error("the preview describes {found} file(s); the diff has {expected}")]
    Count { expected: usize, found: usize },
    #[error("the preview of {mount}/{path} does not match the diff: {what}")]
    Mismatch { mount: String, path: String, what: String },
    #[error("{mount}/{path}: {what}")]
    Content { mount: String, path: String, what: String },
}

impl PreviewError {
    pub fn reason_code(&self) -> &'static str {
        match self {
            Self::Schema(_) | Self::Plan { .. } | Self::Count { .. } | Self::Mismatch { .. } => "preview.mismatch",
            Self::Content { .. } => "preview.content_mismatch",
        }
    }
}

/// A mount's redaction patterns: an operator's compiled once (when the
/// config loads, so a bad one stops the load), the defaults compiled once
/// per process when a preview first needs them.
///
/// The defaults are case-insensitive over Unicode (`(?i)` also matches
/// `ſecret` and the Kelvin sign in `private_Key`): compiling them took
/// ~0.9 ms, a twentieth of a one-run `exec` that makes no preview, and
/// every mount without `redact` compiled them again.
#[derive(Debug, Clone)]
pub struct Patterns(Option<Vec<regex::Regex>>);

impl Patterns {
    /// Compile operator-given patterns.
    ///
    /// # Errors
    /// The first pattern that is not a valid regular expression.
    pub fn compile(patterns: &[String]) -> Result<Self, regex::Error> {
        patterns.iter().map(|p| regex::Regex::new(p)).collect::<Result<_, _>>().map(|v| Self(Some(v)))
    }

    /// [`DEFAULT_REDACT_PATTERNS`] (compiled on first use).
    pub fn defaults() -> Self {
        Self(None)
    }

    /// The compiled patterns.
    fn regexes(&self) -> &[regex::Regex] {
        static DEFAULTS: std::sync::LazyLock<Vec<regex::Regex>> = std::sync::LazyLock::new(|| {
            DEFAULT_REDACT_PATTERNS.iter().map(|p| regex::Regex::new(p).expect("the defaults compile")).collect()
        });
        self.0.as_deref().unwrap_or(&DEFAULTS)
    }
}

/// Masks the values of secret-bearing lines.
#[derive(Debug, Clone)]
pub struct Redactor {
    patterns: Patterns,
    key: [u8; 32],
}

/// The patterns a redacted mount uses when the operator gives none.
pub const DEFAULT_REDACT_PATTERNS: &[&str] = &[
    r"(?i)(pass(word|wd|phrase)?|secret|token|api[_-]?key|private[_-]?key|credential|auth)",
    // Credentials in a URL: scheme://user:password@host.
    r"://[^\s/:@]+:[^\s/@]+@",
];

impl Redactor {
    /// A redactor with a fresh random key (one per preview).
    pub fn new(patterns: &Patterns) -> Self {
        let mut key = [0u8; 32];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut key);
        Self { patterns: patterns.clone(), key }
    }

    /// Mask `text`: on each matching line, everything after the first `=`
    /// or `:` (or the whole line, with neither) becomes `[redacted <tag>]`;
    /// every line inside a PEM block (`-----BEGIN …-----` to `-----END
    /// …-----`: private keys span lines no pattern names) is masked whole.
    /// Returns the masked text and how many lines were masked.
    pub fn mask(&self, text: &str) -> (String, u64) {
        let mut out = String::with_capacity(text.len());
        let mut masked = 0;
        let mut in_pem = false;
        let patterns = self.patterns.regexes();
        for line in text.split_inclusive('\n') {
            let body = line.strip_suffix('\n').map_or(line, |b| b.strip_suffix('\r').unwrap_or(b));
            let end = &line[body.len()..];
            let trimmed = body.trim();
            if trimmed.starts_with("-----BEGIN ") || trimmed.starts_with("-----END ") {
                in_pem = trimmed.starts_with("-----BEGIN ");
                out.push_str(line);
                continue;
            }
            if in_pem {
                masked += 1;
                out.push_str(&format!("[redacted {}]", self.tag(body)));
                out.push_str(end);
                continue;
            }
            if !patterns.iter().any(|p| p.is_match(body)) {
                out.push_str(line);
                continue;
            }
            masked += 1;
            let (key, value) = match body.find(['=', ':']) {
                Some(i) => {
                    let rest = &body[i + 1..];
                    let value = rest.trim_start();
                    body.split_at(i + 1 + (rest.len() - value.len()))
                }
                None => ("", body),
            };
            out.push_str(key);
            out.push_str(&format!("[redacted {}]", self.tag(value)));
            out.push_str(end);
        }
        (out, masked)
    }

    fn tag(&self, value: &str) -> String {
        let mut h = Sha256::new();
        h.update(self.key);
        h.update(value.as_bytes());
        hex::encode(&h.finalize()[..3])
    }
}

/// Whether bytes are shown as text: UTF-8 without NUL.
pub fn is_text(bytes: &[u8]) -> bool {
    !bytes.contains(&0) && std::str::from_utf8(bytes).is_ok()
}

/// Lines in `bytes` (a last line without a newline counts).
pub fn count_lines(bytes: &[u8]) -> u64 {
    let n = bytes.iter().filter(|&&b| b == b'\n').count() as u64;
    n + u64::from(bytes.last().is_some_and(|&b| b != b'\n'))
}

/// Describe one side of a file under `mode`: the [`Side`] and the content
/// to keep as an artifact (None for digest-only, or binary unless full).
pub fn describe(mode: PreviewMode, bytes: &[u8], redactor: &Redactor) -> (Side, Option<Vec<u8>>, u64) {
    let text = is_text(bytes);
    let (content, masked) = match mode {
        PreviewMode::Full => (Some(bytes.to_vec()), 0),
        PreviewMode::Redacted if text => {
            let (m, n) = redactor.mask(std::str::from_utf8(bytes).unwrap_or_default());
            (Some(m.into_bytes()), n)
        }
        PreviewMode::Redacted | PreviewMode::DigestOnly => (None, 0),
    };
    let side = Side {
        digest: Sha256Digest::of(bytes),
        size: bytes.len() as u64,
        lines: count_lines(bytes),
        text,
        content: content.as_deref().map(Sha256Digest::of),
    };
    (side, content, masked)
}

/// Check that `preview` describes exactly `diff` (made for plan `plan`),
/// and that every content artifact `fetch` returns is what its side claims:
/// `full` content hashes to the file's digest, sizes and line counts
/// agree; digest-only sides keep no content. A content artifact `fetch`
/// does not return is an error (a reviewer must see what the approver saw).
///
/// # Errors
/// The first difference.
pub fn check(
    preview: &Preview,
    plan: &Sha256Digest,
    diff: &[DiffEntry],
    mut fetch: impl FnMut(&Sha256Digest) -> Option<Vec<u8>>,
) -> Result<(), PreviewError> {
    if preview.schema != PREVIEW_SCHEMA {
        return Err(PreviewError::Schema(preview.schema.clone()));
    }
    if preview.plan != *plan {
        return Err(PreviewError::Plan { expected: *plan, found: preview.plan });
    }
    if preview.files.len() != diff.len() {
        return Err(PreviewError::Count { expected: diff.len(), found: preview.files.len() });
    }
    let described: BTreeMap<(&str, &str), &FilePreview> =
        preview.files.iter().map(|f| ((f.mount.as_str(), f.path.as_str()), f)).collect();
    for d in diff {
        let mismatch = |what: &str| PreviewError::Mismatch {
            mount: d.mount.clone(),
            path: d.path.to_string(),
            what: what.to_owned(),
        };
        let f = described.get(&(d.mount.as_str(), d.path.as_str())).ok_or_else(|| mismatch("not described"))?;
        if f.action != d.action {
            return Err(mismatch("a different action"));
        }
        if f.before.as_ref().map(|s| s.digest) != d.before || f.after.as_ref().map(|s| s.digest) != d.after {
            return Err(mismatch("different digests"));
        }
        if f.mode_after != d.mode {
            return Err(mismatch("a different mode"));
        }
        for side in [&f.before, &f.after].into_iter().flatten() {
            check_side(f, side, &mut fetch)?;
        }
    }
    Ok(())
}

fn check_side(
    f: &FilePreview,
    side: &Side,
    fetch: &mut impl FnMut(&Sha256Digest) -> Option<Vec<u8>>,
) -> Result<(), PreviewError> {
    let bad = |what: String| PreviewError::Content { mount: f.mount.clone(), path: f.path.to_string(), what };
    match (f.preview, side.content) {
        (PreviewMode::DigestOnly, Some(_)) => Err(bad("a digest-only file keeps content".into())),
        (PreviewMode::Redacted, Some(_)) if !side.text => Err(bad("a redacted binary file keeps content".into())),
        (PreviewMode::Full, None) => Err(bad("a full preview without its content".into())),
        (_, None) => Ok(()),
        (mode, Some(c)) => {
            let bytes = fetch(&c).ok_or_else(|| bad(format!("content {c} is missing")))?;
            if Sha256Digest::of(&bytes) != c {
                return Err(bad(format!("content {c} does not hash to its digest")));
            }
            if mode == PreviewMode::Full {
                if c != side.digest {
                    return Err(bad(format!("full content {c} is not the planned bytes {}", side.digest)));
                }
                if bytes.len() as u64 != side.size || count_lines(&bytes) != side.lines || is_text(&bytes) != side.text
                {
                    return Err(bad("size, line count or kind differs from the content".into()));
                }
            } else if !is_text(&bytes) {
                return Err(bad("redacted content is not text".into()));
            }
            Ok(())
        }
    }
}

/// A preview with the content it shows, for an approver's tool: the runner
/// serves it beside the proposal document, and the tool checks it against
/// the document's plan ([`Shown::check`]) before rendering anything.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Shown {
    pub preview: Preview,
    /// Content artifacts by digest, base64 (exact bytes).
    pub contents: BTreeMap<Sha256Digest, String>,
}

impl Shown {
    /// Bundle a preview with its content (as `fetch` returns it).
    pub fn new(preview: Preview, mut fetch: impl FnMut(&Sha256Digest) -> Option<Vec<u8>>) -> Self {
        use base64::Engine as _;
        let contents = preview
            .contents()
            .into_iter()
            .filter_map(|d| Some((d, base64::engine::general_purpose::STANDARD.encode(fetch(&d)?))))
            .collect();
        Self { preview, contents }
    }

    /// The bytes of a content artifact, when carried.
    pub fn content(&self, d: &Sha256Digest) -> Option<Vec<u8>> {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.decode(self.contents.get(d)?).ok()
    }

    /// Check that this is the preview of `plan` (its digest), that the files
    /// it describes are exactly the plan's changes with the plan's digests
    /// (action, before, after; the plan's mode where it declares one), and
    /// that its content is what it claims ([`check`]): an approver's tool
    /// never renders a diff the signed plan does not back.
    ///
    /// # Errors
    /// The first difference.
    pub fn check(&self, plan: &crate::plan::Plan, plan_digest: &Sha256Digest) -> Result<(), PreviewError> {
        let diff = self.preview.diff();
        let planned: BTreeMap<(&str, &str), &crate::plan::Change> =
            plan.changes.iter().map(|c| ((c.mount.as_str(), c.path.as_str()), c)).collect();
        if planned.len() != diff.len() {
            return Err(PreviewError::Count { expected: planned.len(), found: diff.len() });
        }
        for d in &diff {
            let mismatch = |what: &str| PreviewError::Mismatch {
                mount: d.mount.clone(),
                path: d.path.to_string(),
                what: what.to_owned(),
            };
            let c = planned.get(&(d.mount.as_str(), d.path.as_str())).ok_or_else(|| mismatch("not planned"))?;
            if c.action != d.action || c.digest_before != d.before || c.digest_after != d.after {
                return Err(mismatch("not what the plan says"));
            }
            if c.mode.is_some() && c.mode != d.mode {
                return Err(mismatch("another mode than the plan declares"));
            }
        }
        check(&self.preview, plan_digest, &diff, |c| self.content(c))
    }

    /// Render one file of the preview.
    pub fn render(&self, f: &FilePreview) -> Vec<DiffLine> {
        let side = |s: &Option<Side>| s.as_ref().and_then(|s| s.content).and_then(|c| self.content(&c));
        let (before, after) = (side(&f.before), side(&f.after));
        render(f, before.as_deref(), after.as_deref())
    }
}

/// One line of a rendered file diff. The text is the file's, unneutralised:
/// the caller neutralises it for its medium.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "text", rename_all = "kebab-case")]
pub enum DiffLine {
    /// `@@ -a,b +c,d @@`
    Hunk(String),
    Context(String),
    Added(String),
    Removed(String),
    /// Not file content: what the runner says about the file (binary,
    /// digest-only, mode change, no newline at end).
    Note(String),
}

/// Render one file's preview: a unified diff of the shown content (`before`
/// and `after` are the content artifacts' bytes, when kept), or notes saying
/// why there is none.
pub fn render(f: &FilePreview, before: Option<&[u8]>, after: Option<&[u8]>) -> Vec<DiffLine> {
    let mut out = Vec::new();
    match (f.mode_before, f.mode_after) {
        (Some(a), Some(b)) if a != b => out.push(DiffLine::Note(format!("mode {a:04o} → {b:04o}"))),
        (None, Some(b)) => out.push(DiffLine::Note(format!("new file, mode {b:04o}{}", exec_note(b)))),
        _ => {}
    }
    let sides = [&f.before, &f.after];
    let shown_text = sides.iter().all(|s| s.as_ref().is_none_or(|s| s.text && s.content.is_some()));
    if f.preview == PreviewMode::Redacted && f.redacted_lines > 0 {
        out.push(DiffLine::Note(format!("{} line(s) with secret values masked (redacted mount)", f.redacted_lines)));
    }
    if !shown_text {
        let why = if f.preview == PreviewMode::DigestOnly {
            "digest-only mount: content is not kept"
        } else {
            "binary content: not shown as lines"
        };
        out.push(DiffLine::Note(why.into()));
        for (label, side) in [("before", &f.before), ("after", &f.after)] {
            if let Some(s) = side {
                out.push(DiffLine::Note(format!("{label}: {} bytes, {} lines, {}", s.size, s.lines, s.digest)));
            }
        }
        return out;
    }
    let text = |b: Option<&[u8]>| String::from_utf8_lossy(b.unwrap_or_default()).into_owned();
    let (old, new) = (text(before), text(after));
    // Bounded: a pathological pair of files (a capsule's, so hostile) gets a
    // coarser diff after the deadline, never an unbounded wait.
    let diff = similar::TextDiff::configure().timeout(DIFF_DEADLINE).diff_lines(&old, &new);
    for group in diff.grouped_ops(CONTEXT_LINES) {
        let (Some(first), Some(last)) = (group.first(), group.last()) else { continue };
        let (o, n) = (first.old_range().start..last.old_range().end, first.new_range().start..last.new_range().end);
        out.push(DiffLine::Hunk(format!(
            "@@ -{},{} +{},{} @@",
            o.start + usize::from(!o.is_empty()),
            o.len(),
            n.start + usize::from(!n.is_empty()),
            n.len()
        )));
        for op in &group {
            for change in diff.iter_changes(op) {
                let mut line = change.value().to_owned();
                let no_newline = !line.ends_with('\n');
                if let Some(l) = line.strip_suffix('\n') {
                    line = l.strip_suffix('\r').unwrap_or(l).to_owned();
                }
                out.push(match change.tag() {
                    similar::ChangeTag::Equal => DiffLine::Context(line),
                    similar::ChangeTag::Insert => DiffLine::Added(line),
                    similar::ChangeTag::Delete => DiffLine::Removed(line),
                });
                if no_newline {
                    out.push(DiffLine::Note("no newline at end of file".into()));
                }
            }
        }
    }
    out
}

fn exec_note(mode: u32) -> &'static str {
    if mode & 0o111 != 0 { " — EXECUTABLE" } else { "" }
}

/// Changed lines in a rendered diff (`+` and `-`).
pub fn changed_lines(lines: &[DiffLine]) -> (usize, usize) {
    lines.iter().fold((0, 0), |(a, r), l| match l {
        DiffLine::Added(_) => (a + 1, r),
        DiffLine::Removed(_) => (a, r + 1),
        _ => (a, r),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redactor() -> Redactor {
        Redactor::new(&Patterns::defaults())
    }

    fn file(mode: PreviewMode, before: &[u8], after: &[u8], r: &Redactor) -> (FilePreview, Vec<Vec<u8>>) {
        let (b, bc, bm) = describe(mode, before, r);
        let (a, ac, am) = describe(mode, after, r);
        let f = FilePreview {
            mount: "etc".into(),
            path: MountPath::new("app.conf").unwrap(),
            action: Action::Modify,
            preview: mode,
            before: Some(b),
            after: Some(a),
            mode_before: Some(0o644),
            mode_after: Some(0o644),
            redacted_lines: bm + am,
        };
        (f, [bc, ac].into_iter().flatten().collect())
    }

    fn entry(before: &[u8], after: &[u8]) -> DiffEntry {
        DiffEntry {
            mount: "etc".into(),
            path: MountPath::new("app.conf").unwrap(),
            action: Action::Modify,
            before: Some(Sha256Digest::of(before)),
            after: Some(Sha256Digest::of(after)),
            mode: Some(0o644),
        }
    }

    fn store(contents: &[Vec<u8>]) -> impl FnMut(&Sha256Digest) -> Option<Vec<u8>> + '_ {
        |d| contents.iter().find(|c| Sha256Digest::of(c) == *d).cloned()
    }

    const BEFORE: &[u8] = b"[db]\nhost = db1\nmax_connections = 100\npassword = hunter2\n";
    const AFTER: &[u8] = b"[db]\nhost = db1\nmax_connections = 512\npassword = hunter3\n";

    #[test]
    fn a_full_preview_shows_the_changed_line_and_checks_against_the_plan() {
        let r = redactor();
        let (f, contents) = file(PreviewMode::Full, BEFORE, AFTER, &r);
        let plan = Sha256Digest::of(b"plan");
        let p = Preview { schema: PREVIEW_SCHEMA.into(), plan, files: vec![f.clone()] };
        check(&p, &plan, &[entry(BEFORE, AFTER)], store(&contents)).unwrap();
        let lines = render(&f, Some(BEFORE), Some(AFTER));
        assert!(lines.contains(&DiffLine::Removed("max_connections = 100".into())));
        assert!(lines.contains(&DiffLine::Added("max_connections = 512".into())));
        assert!(lines.contains(&DiffLine::Context("host = db1".into())));
        assert_eq!(changed_lines(&lines), (2, 2));

        // Content that is not the planned bytes is found.
        let mut lying = p.clone();
        lying.files[0].after.as_mut().unwrap().content = Some(Sha256Digest::of(b"other"));
        let other = vec![b"other".to_vec()];
        let e = check(&lying, &plan, &[entry(BEFORE, AFTER)], store(&other)).unwrap_err();
        assert_eq!(e.reason_code(), "preview.content_mismatch");
        // A preview of another diff is found.
        let e = check(&p, &plan, &[entry(BEFORE, b"x")], store(&contents)).unwrap_err();
        assert!(matches!(e, PreviewError::Mismatch { .. }), "{e}");
        // Missing content is found.
        let e = check(&p, &plan, &[entry(BEFORE, AFTER)], |_| None).unwrap_err();
        assert!(e.to_string().contains("missing"), "{e}");
    }

    #[test]
    fn redaction_masks_values_on_both_sides_and_shows_that_they_changed() {
        let r = redactor();
        let (f, contents) = file(PreviewMode::Redacted, BEFORE, AFTER, &r);
        for c in &contents {
            let s = String::from_utf8_lossy(c);
            assert!(!s.contains("hunter"), "{s}");
            assert!(s.contains("max_connections"), "{s}");
        }
        assert_eq!(f.redacted_lines, 2);
        let (b, a) = (&contents[0], &contents[1]);
        let lines = render(&f, Some(b), Some(a));
        let removed: Vec<_> = lines.iter().filter(|l| matches!(l, DiffLine::Removed(_))).collect();
        // The password line changed: both masked, with different tags.
        assert_eq!(removed.len(), 2, "{lines:?}");
        assert!(lines.iter().any(|l| matches!(l, DiffLine::Note(n) if n.contains("masked"))));
        // Same value, same tag (within one redactor); a new redactor, a new key.
        assert_eq!(r.mask("token: abc").0, r.mask("token: abc").0);
        assert_ne!(r.mask("token: abc").0, redactor().mask("token: abc").0);
        assert!(r.mask("token: abc").0.starts_with("token: [redacted "));
        // PEM bodies are masked line by line; URL credentials too.
        let pem = "key = |\n-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkq\nhkiG9w0BAQEFAASC\n-----END PRIVATE KEY-----\nx = 1\n";
        let (m, n) = r.mask(pem);
        assert!(!m.contains("MIIEvQ") && !m.contains("hkiG9w") && m.contains("x = 1"), "{m}");
        assert_eq!(n, 2);
        let (m, _) = r.mask("dsn = postgres://app:hunter2@db:5432/app\n");
        assert!(!m.contains("hunter2"), "{m}");
        // A line with no separator is masked whole; CRLF kept.
        assert!(r.mask("secretvalue\r\n").0.starts_with("[redacted "));
        assert!(r.mask("secretvalue\r\n").0.ends_with("]\r\n"));
        let plan = Sha256Digest::of(b"plan");
        let p = Preview { schema: PREVIEW_SCHEMA.into(), plan, files: vec![f] };
        check(&p, &plan, &[entry(BEFORE, AFTER)], store(&contents)).unwrap();
    }

    #[test]
    fn digest_only_keeps_no_content_and_says_so() {
        let r = redactor();
        let (f, contents) = file(PreviewMode::DigestOnly, BEFORE, AFTER, &r);
        assert!(contents.is_empty());
        let lines = render(&f, None, None);
        assert!(lines.iter().all(|l| matches!(l, DiffLine::Note(_))));
        assert!(lines.iter().any(|l| matches!(l, DiffLine::Note(n) if n.contains("4 lines"))));
        let plan = Sha256Digest::of(b"plan");
        let mut p = Preview { schema: PREVIEW_SCHEMA.into(), plan, files: vec![f] };
        check(&p, &plan, &[entry(BEFORE, AFTER)], |_| None).unwrap();
        // A digest-only file that keeps content is refused.
        p.files[0].after.as_mut().unwrap().content = Some(Sha256Digest::of(AFTER));
        assert!(check(&p, &plan, &[entry(BEFORE, AFTER)], |_| Some(AFTER.to_vec())).is_err());
    }

    #[test]
    fn binary_files_and_created_executables_are_summarised() {
        let r = redactor();
        let (side, content, _) = describe(PreviewMode::Redacted, b"\0\x01bin", &r);
        assert!(!side.text && content.is_none());
        let f = FilePreview {
            mount: "bin".into(),
            path: MountPath::new("tool").unwrap(),
            action: Action::Create,
            preview: PreviewMode::Redacted,
            before: None,
            after: Some(side),
            mode_before: None,
            mode_after: Some(0o755),
            redacted_lines: 0,
        };
        let lines = render(&f, None, None);
        assert!(lines.iter().any(|l| matches!(l, DiffLine::Note(n) if n.contains("EXECUTABLE"))), "{lines:?}");
        assert!(lines.iter().any(|l| matches!(l, DiffLine::Note(n) if n.contains("binary"))), "{lines:?}");
        assert_eq!(count_lines(b""), 0);
        assert_eq!(count_lines(b"a"), 1);
        assert_eq!(count_lines(b"a\nb\n"), 2);
    }
}
