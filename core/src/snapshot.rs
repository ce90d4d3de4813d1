//! Tree snapshots and the diff between them.
//!
//! The runner snapshots each writable mount when it stages it and again after
//! `apply`; [`diff`] turns the two into the file-level [`DiffEntry`] list that
//! is checked against the plan. Only regular-file changes can be planned, so
//! anything else (a new or changed symlink, a removed directory, a file
//! turned into a directory) is reported as a change no plan can cover.
//!
//! File modes are part of the diff: every created or modified file carries
//! the mode it landed with, and `plan::check_diff` holds it to the plan (a
//! created executable must be declared with its mode, contract 0.2: a
//! capsule that renames an executable into the path of a planned "create" —
//! WASI has no chmod; a rename is how a mode travels — is refused unless the
//! plan said so). A modified file keeps its mode: a mode change is not a
//! change a plan can name, and is refused here.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::digest::Sha256Digest;
use crate::paths::MountPath;
use crate::plan::{Action, DiffEntry};

/// One node of a mount tree, keyed by its mount-relative path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum Node {
    File {
        digest: Sha256Digest,
        size: u64,
        /// Permission bits (`0o777`: set-id and sticky bits are never carried).
        #[serde(default)]
        mode: u32,
    },
    Dir,
    Symlink {
        target: String,
    },
}

/// A mount's contents: mount-relative path → node.
pub type Snapshot = BTreeMap<MountPath, Node>;

/// A change that is not a regular-file create/modify/delete.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SnapshotDiffError {
    #[error("apply {what} `{mount}/{path}`, which no plan can include (plans change regular files only)")]
    Unplannable { mount: String, path: String, what: &'static str },
}

impl SnapshotDiffError {
    pub fn reason_code(&self) -> &'static str {
        "apply.outside_plan"
    }
}

/// Compare a mount before and after `apply`.
///
/// New directories are allowed silently (they are created as parents of
/// created files at commit); every other non-file change is refused.
///
/// # Errors
/// [`SnapshotDiffError::Unplannable`] for the first change a plan cannot name.
pub fn diff(mount: &str, before: &Snapshot, after: &Snapshot) -> Result<Vec<DiffEntry>, SnapshotDiffError> {
    let unplannable = |path: &MountPath, what| SnapshotDiffError::Unplannable {
        mount: mount.to_owned(),
        path: path.to_string(),
        what,
    };
    let mut out = Vec::new();
    for (path, old) in before {
        match (old, after.get(path)) {
            (Node::File { digest: a, mode: ma, .. }, Some(Node::File { digest: b, mode: mb, .. })) => {
                if ma != mb {
                    return Err(unplannable(path, "changed the mode of"));
                }
                if a != b {
                    out.push(entry(mount, path, Action::Modify, Some(*a), Some(*b), Some(*mb)));
                }
            }
            (Node::File { digest, .. }, None) => {
                out.push(entry(mount, path, Action::Delete, Some(*digest), None, None));
            }
            (Node::File { .. }, Some(_)) => return Err(unplannable(path, "replaced the file")),
            (Node::Dir, Some(Node::Dir)) => {}
            (Node::Dir, _) => return Err(unplannable(path, "removed or replaced the directory")),
            (Node::Symlink { target: a }, Some(Node::Symlink { target: b })) if a == b => {}
            (Node::Symlink { .. }, _) => {
                return Err(unplannable(path, "changed or removed the symlink"));
            }
        }
    }
    for (path, new) in after {
        if before.contains_key(path) {
            continue;
        }
        match new {
            Node::File { digest, mode, .. } => {
                out.push(entry(mount, path, Action::Create, None, Some(*digest), Some(*mode)));
            }
            Node::Dir => {}
            Node::Symlink { .. } => return Err(unplannable(path, "created the symlink")),
        }
    }
    Ok(out)
}

fn entry(
    mount: &str,
    path: &MountPath,
    action: Action,
    before: Option<Sha256Digest>,
    after: Option<Sha256Digest>,
    mode: Option<u32>,
) -> DiffEntry {
    DiffEntry { mount: mount.to_owned(), path: path.clone(), action, before, after, mode }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> MountPath {
        MountPath::new(s).unwrap()
    }
    fn f(s: &str) -> Node {
        fm(s, 0o644)
    }
    fn fm(s: &str, mode: u32) -> Node {
        Node::File { digest: Sha256Digest::of(s.as_bytes()), size: s.len() as u64, mode }
    }

    #[test]
    fn file_changes() {
        let before: Snapshot = [(p("a"), f("1")), (p("b"), f("1")), (p("d"), Node::Dir)].into();
        let after: Snapshot =
            [(p("a"), f("2")), (p("c"), f("3")), (p("d"), Node::Dir), (p("n"), Node::Dir), (p("n/x"), f("4"))].into();
        let d = diff("m", &before, &after).unwrap();
        let actions: Vec<(&str, Action)> = d.iter().map(|e| (e.path.as_str(), e.action)).collect();
        assert_eq!(
            actions,
            [("a", Action::Modify), ("b", Action::Delete), ("c", Action::Create), ("n/x", Action::Create)]
        );
    }

    #[test]
    fn unplannable_changes() {
        let link = Node::Symlink { target: "/etc/passwd".into() };
        let cases: [(Snapshot, Snapshot); 4] = [
            ([].into(), [(p("l"), link.clone())].into()),
            ([(p("d"), Node::Dir)].into(), [].into()),
            ([(p("a"), f("1"))].into(), [(p("a"), Node::Dir)].into()),
            ([(p("l"), Node::Symlink { target: "x".into() })].into(), [(p("l"), link)].into()),
        ];
        for (b, a) in cases {
            assert!(diff("m", &b, &a).is_err(), "{b:?} -> {a:?}");
        }
    }

    #[test]
    fn modes_are_part_of_the_diff() {
        // A created file lands with its mode recorded (the plan decides
        // whether it may: `plan::tests`).
        let d = diff("m", &[].into(), &[(p("a"), fm("1", 0o640))].into()).unwrap();
        assert_eq!(d[0].mode, Some(0o640));
        let d = diff("m", &[].into(), &[(p("cron.sh"), fm("1", 0o755))].into()).unwrap();
        assert_eq!(d[0].mode, Some(0o755));
        // A modified file keeps its mode; a mode change alone is refused too.
        let before: Snapshot = [(p("a"), fm("1", 0o644))].into();
        assert_eq!(diff("m", &before, &[(p("a"), fm("2", 0o644))].into()).unwrap()[0].mode, Some(0o644));
        assert!(diff("m", &before, &[(p("a"), fm("2", 0o755))].into()).is_err());
        assert!(diff("m", &before, &[(p("a"), fm("1", 0o600))].into()).is_err());
        // An existing executable may be modified and stays executable.
        let exe: Snapshot = [(p("run.sh"), fm("1", 0o755))].into();
        assert_eq!(diff("m", &exe, &[(p("run.sh"), fm("2", 0o755))].into()).unwrap()[0].mode, Some(0o755));
    }
}
