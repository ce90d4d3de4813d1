//! A proposal's change as a reviewer reads it: each file's diff rendered
//! from the preview artifact and the content artifacts it names, exactly as
//! the approver was shown it. Content is shown only as the mount's preview
//! mode kept it: `full` (the plan's exact bytes), `redacted` (masked text,
//! labelled as such), or not at all (digest-only mounts and binary files:
//! notes with digests, sizes and line counts).

use std::collections::BTreeMap;

use edge_core::Sha256Digest;
use edge_core::plan::{Action, DiffEntry};
use edge_core::preview::{self, DiffLine, Preview, PreviewMode};

/// Diff lines shown per file; the rest are counted, not shown (the content
/// is in the bundle's artifacts).
pub(crate) const MAX_LINES_PER_FILE: usize = 5000;

/// What of a file's content the report shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Shown {
    /// The exact bytes: the artifacts hash to the plan's digests.
    Exact,
    /// Text with secret values masked: not the exact bytes (the content
    /// does not hash to the file's digest).
    Masked,
    /// Digests, sizes and line counts only.
    Digests,
}

impl Shown {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Shown::Exact => "exact",
            Shown::Masked => "redacted",
            Shown::Digests => "not-shown",
        }
    }

    /// The label a reviewer reads above the file's lines.
    pub(crate) fn label(self, mode: Option<PreviewMode>) -> &'static str {
        match (self, mode) {
            (Shown::Exact, Some(PreviewMode::Redacted)) => {
                "the exact bytes the plan's digests name (redacted mount: no line matched a secret pattern)"
            }
            (Shown::Exact, _) => "full preview: the exact bytes the plan's digests name",
            (Shown::Masked, _) => "REDACTED preview: masked text, not the exact bytes (secret values hidden)",
            (Shown::Digests, Some(PreviewMode::DigestOnly)) => "digest-only mount: no content kept",
            (Shown::Digests, Some(_)) => "binary content: digests only",
            (Shown::Digests, None) => "no preview recorded: digests only",
        }
    }
}

/// One changed file.
#[derive(Debug, Clone)]
pub(crate) struct FileDiff {
    pub mount: String,
    pub path: String,
    pub action: Action,
    /// The mount's preview mode (None: no preview was recorded).
    pub mode: Option<PreviewMode>,
    pub shown: Shown,
    pub before: Option<Sha256Digest>,
    pub after: Option<Sha256Digest>,
    /// Rendered lines (file content unneutralised: renderers neutralise).
    pub lines: Vec<DiffLine>,
    pub added: usize,
    pub removed: usize,
    /// Lines rendered but not kept (beyond [`MAX_LINES_PER_FILE`]).
    pub omitted: usize,
}

/// The files a preview describes, rendered from the bundle's artifacts.
pub(crate) fn of_preview(pv: &Preview, artifacts: &BTreeMap<Sha256Digest, Vec<u8>>) -> Vec<FileDiff> {
    pv.files
        .iter()
        .map(|f| {
            let content = |s: &Option<preview::Side>| {
                s.as_ref().and_then(|s| s.content).and_then(|c| artifacts.get(&c)).map(Vec::as_slice)
            };
            let mut lines = preview::render(f, content(&f.before), content(&f.after));
            let (added, removed) = preview::changed_lines(&lines);
            let sides = [&f.before, &f.after];
            let has_content = sides.iter().any(|s| s.as_ref().is_some_and(|s| s.content.is_some()));
            // Content that hashes to the file's digest is the exact bytes,
            // whatever the mode (a redacted file with nothing to mask).
            let exact = sides.iter().all(|s| s.as_ref().is_none_or(|s| s.content == Some(s.digest)));
            let shown = match f.preview {
                _ if !has_content => Shown::Digests,
                // The verifier refuses digest-only content; never show it.
                PreviewMode::DigestOnly => Shown::Digests,
                _ if exact => Shown::Exact,
                PreviewMode::Full | PreviewMode::Redacted => Shown::Masked,
            };
            if shown == Shown::Digests {
                lines.retain(|l| matches!(l, DiffLine::Note(_)));
            }
            let omitted = lines.len().saturating_sub(MAX_LINES_PER_FILE);
            lines.truncate(MAX_LINES_PER_FILE);
            FileDiff {
                mount: f.mount.clone(),
                path: f.path.to_string(),
                action: f.action,
                mode: Some(f.preview),
                shown,
                before: f.before.as_ref().map(|s| s.digest),
                after: f.after.as_ref().map(|s| s.digest),
                lines,
                added,
                removed,
                omitted,
            }
        })
        .collect()
}

/// Files from a diff without a preview (records from before previews).
pub(crate) fn of_entries(diff: &[DiffEntry]) -> Vec<FileDiff> {
    diff.iter()
        .map(|d| FileDiff {
            mount: d.mount.clone(),
            path: d.path.to_string(),
            action: d.action,
            mode: None,
            shown: Shown::Digests,
            before: d.before,
            after: d.after,
            lines: d.mode.map(|m| DiffLine::Note(format!("mode {m:04o}"))).into_iter().collect(),
            added: 0,
            removed: 0,
            omitted: 0,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use edge_core::paths::MountPath;
    use edge_core::preview::{FilePreview, PREVIEW_SCHEMA, Redactor, describe};

    use super::*;

    fn file(mode: PreviewMode, before: &[u8], after: &[u8]) -> (Preview, BTreeMap<Sha256Digest, Vec<u8>>) {
        let r = Redactor::new(&edge_core::preview::Patterns::compile(&[r"(?i)password".to_owned()]).unwrap());
        let (b, bc, bm) = describe(mode, before, &r);
        let (a, ac, am) = describe(mode, after, &r);
        let f = FilePreview {
            mount: "config".into(),
            path: MountPath::new("app.toml").unwrap(),
            action: Action::Modify,
            preview: mode,
            before: Some(b),
            after: Some(a),
            mode_before: Some(0o644),
            mode_after: Some(0o644),
            redacted_lines: bm + am,
        };
        let arts = [bc, ac].into_iter().flatten().map(|c| (Sha256Digest::of(&c), c)).collect();
        (Preview { schema: PREVIEW_SCHEMA.into(), plan: Sha256Digest::of(b"plan"), files: vec![f] }, arts)
    }

    const BEFORE: &[u8] = b"[server]\nmax_connections = 100\npassword = hunter2\n";
    const AFTER: &[u8] = b"[server]\nmax_connections = 512\npassword = hunter3\n";

    #[test]
    fn a_full_preview_shows_the_exact_changed_lines() {
        let (pv, arts) = file(PreviewMode::Full, BEFORE, AFTER);
        let f = &of_preview(&pv, &arts)[0];
        assert_eq!(f.shown, Shown::Exact);
        assert!(f.lines.contains(&DiffLine::Added("max_connections = 512".into())), "{:?}", f.lines);
        assert!(f.lines.contains(&DiffLine::Removed("max_connections = 100".into())));
        assert_eq!((f.added, f.removed), (2, 2));
    }

    #[test]
    fn a_redacted_preview_shows_masked_text_labelled_and_never_the_secret() {
        let (pv, arts) = file(PreviewMode::Redacted, BEFORE, AFTER);
        let f = &of_preview(&pv, &arts)[0];
        assert_eq!(f.shown, Shown::Masked);
        assert!(f.shown.label(f.mode).contains("REDACTED"));
        assert!(f.lines.contains(&DiffLine::Added("max_connections = 512".into())));
        let all = format!("{:?}", f.lines);
        assert!(!all.contains("hunter"), "{all}");
        assert!(all.contains("[redacted "), "{all}");
    }

    #[test]
    fn a_redacted_file_with_nothing_to_mask_is_shown_as_the_exact_bytes() {
        let (pv, arts) = file(PreviewMode::Redacted, b"a = 1\n", b"a = 2\n");
        let f = &of_preview(&pv, &arts)[0];
        assert_eq!(f.shown, Shown::Exact);
        assert!(f.shown.label(f.mode).contains("no line matched"), "{}", f.shown.label(f.mode));
    }

    #[test]
    fn digest_only_and_binary_files_show_notes_never_content() {
        let (pv, arts) = file(PreviewMode::DigestOnly, BEFORE, AFTER);
        assert!(arts.is_empty());
        let f = &of_preview(&pv, &arts)[0];
        assert_eq!(f.shown, Shown::Digests);
        assert!(f.lines.iter().all(|l| matches!(l, DiffLine::Note(_))), "{:?}", f.lines);
        assert!(f.shown.label(f.mode).contains("digest-only"));
        // A binary file under a redacted mount: no content, says binary.
        let (pv, arts) = file(PreviewMode::Redacted, b"\0bin", b"\0bin2");
        let f = &of_preview(&pv, &arts)[0];
        assert_eq!(f.shown, Shown::Digests);
        assert!(f.shown.label(f.mode).contains("binary"));
        // Even content a forger slipped in for a digest-only file is not shown.
        let (mut pv, mut arts) = file(PreviewMode::DigestOnly, BEFORE, AFTER);
        pv.files[0].after.as_mut().unwrap().content = Some(Sha256Digest::of(AFTER));
        arts.insert(Sha256Digest::of(AFTER), AFTER.to_vec());
        let f = &of_preview(&pv, &arts)[0];
        assert_eq!(f.shown, Shown::Digests);
        assert!(!format!("{:?}", f.lines).contains("max_connections"));
    }

    #[test]
    fn long_diffs_are_cut_and_counted() {
        let before: String = (0..4000).map(|i| format!("line {i}\n")).collect();
        let after: String = (0..4000).map(|i| format!("changed {i}\n")).collect();
        let (pv, arts) = file(PreviewMode::Full, before.as_bytes(), after.as_bytes());
        let f = &of_preview(&pv, &arts)[0];
        assert_eq!(f.lines.len(), MAX_LINES_PER_FILE);
        assert_eq!((f.added, f.removed), (4000, 4000));
        assert!(f.omitted > 0);
    }
}
