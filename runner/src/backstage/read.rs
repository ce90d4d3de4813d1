//! Reading a catalog from disk: the files named, the directories walked, and
//! the Location targets followed.
//!
//! Every file belongs to a *catalog root*: the `--root` directory if one is
//! given, else a directory argument is its own root and a file argument's
//! root is the directory it is in; a Location target inherits the root of the
//! Location that named it. Nothing outside a
//! root is ever read: a target (or a walked symlink) that resolves outside it
//! is listed as skipped, and so are URLs and glob patterns — the importer
//! fetches nothing. Each file is read at most once (by canonical path), which
//! is also what stops Location cycles.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::path::{Component, Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::Deserialize;

use super::entity::{self, Document, Entity, Location};

/// A document or Location target the import did not read as an entity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// The file holding the document or the Location.
    pub path: PathBuf,
    /// What was skipped and why.
    pub detail: String,
}

impl fmt::Display for Skipped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.detail)
    }
}

/// An entity and the file it came from.
#[derive(Debug)]
pub(super) struct Sourced {
    pub entity: Entity,
    pub file: PathBuf,
}

/// Everything read from a catalog.
#[derive(Debug, Default)]
pub(super) struct Catalog {
    pub entities: Vec<Sourced>,
    pub files: usize,
    pub unmapped: BTreeMap<String, usize>,
    pub skipped: Vec<Skipped>,
}

/// A file to read: the path as the user will recognise it, where it really
/// is, and its root.
struct Pending {
    path: PathBuf,
    canonical: PathBuf,
    root: PathBuf,
}

fn is_yaml(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("yaml") || e.eq_ignore_ascii_case("yml"))
}

/// Resolve `.` and `..` without touching the filesystem. Exact when `base`
/// is canonical; for display, a `..` that cannot be resolved is kept.
fn lexical(base: &Path, rel: &Path) -> PathBuf {
    let mut out = base.to_path_buf();
    for c in rel.components() {
        match c {
            Component::ParentDir if matches!(out.components().next_back(), Some(Component::Normal(_))) => {
                out.pop();
            }
            Component::ParentDir if out.has_root() => {} // `/..` is `/`
            Component::ParentDir => out.push(".."),
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

#[derive(Default)]
struct Reader {
    queue: VecDeque<Pending>,
    read: BTreeSet<PathBuf>,
    walked: BTreeSet<PathBuf>,
    catalog: Catalog,
}

impl Reader {
    fn skip(&mut self, path: &Path, detail: String) {
        self.catalog.skipped.push(Skipped { path: path.to_path_buf(), detail });
    }

    /// Queue every YAML file under `dir` (sorted, recursively).
    fn walk(&mut self, dir: &Path, canonical: PathBuf, root: &Path) -> Result<()> {
        if !self.walked.insert(canonical) {
            return Ok(());
        }
        let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
            .with_context(|| format!("cannot read directory {}", dir.display()))?
            .map(|e| e.map(|e| e.path()))
            .collect::<std::io::Result<_>>()
            .with_context(|| format!("cannot read directory {}", dir.display()))?;
        entries.sort();
        for path in entries {
            let Ok(canonical) = path.canonicalize() else {
                self.skip(&path, "a broken symbolic link; not read".into());
                continue;
            };
            if !canonical.starts_with(root) {
                let detail = format!(
                    "resolves to {} outside the catalog root {}; not read (to include it, pass --root with a directory holding both)",
                    canonical.display(),
                    root.display()
                );
                self.skip(&path, detail);
            } else if canonical.is_dir() {
                self.walk(&path, canonical, root)?;
            } else if is_yaml(&path) {
                if canonical.is_file() {
                    self.queue.push_back(Pending { path, canonical, root: root.to_path_buf() });
                } else {
                    self.skip(&path, "not a regular file; not read".into());
                }
            }
        }
        Ok(())
    }

    /// Follow one target of a Location found in `from`.
    fn follow(&mut self, from: &Pending, loc: &Location, target: &str) -> Result<()> {
        let what = format!("Location `{}` target `{target}`", loc.name);
        if let Some(t) = loc.source_type.as_deref().filter(|t| *t != "file") {
            let detail = format!(
                "{what}: type `{t}` is not read from disk (nothing is fetched); import that catalog from a local checkout"
            );
            self.skip(&from.path, detail);
            return Ok(());
        }
        if target.contains("://") {
            let detail = format!("{what}: a URL (nothing is fetched); import that catalog from a local checkout");
            self.skip(&from.path, detail);
            return Ok(());
        }
        if target.contains(['*', '?', '[', '{']) {
            let detail = format!("{what}: a glob pattern, which is not expanded; import the directory instead");
            self.skip(&from.path, detail);
            return Ok(());
        }
        let base = from.canonical.parent().unwrap_or(Path::new("/"));
        let outside = |p: &Path| {
            format!(
                "{what}: resolves to {} outside the catalog root {}; not read (to include it, pass --root with a directory holding both)",
                p.display(),
                from.root.display()
            )
        };
        // `..` is checked before the file is looked at, so a target outside the
        // root is skipped whether or not it exists.
        let joined = lexical(base, Path::new(target));
        if !joined.starts_with(&from.root) {
            let detail = outside(&joined);
            self.skip(&from.path, detail);
            return Ok(());
        }
        let shown = lexical(from.path.parent().unwrap_or(Path::new("")), Path::new(target));
        let canonical = match joined.canonicalize() {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && loc.optional => {
                self.skip(&from.path, format!("{what}: does not exist (presence: optional)"));
                return Ok(());
            }
            Err(e) => bail!(
                "{}: {what} ({}) cannot be read: {e}; fix the target, or mark the Location `presence: optional`",
                from.path.display(),
                shown.display()
            ),
        };
        // A symbolic link inside the root may still point out of it.
        if !canonical.starts_with(&from.root) {
            let detail = outside(&canonical);
            self.skip(&from.path, detail);
        } else if canonical.is_dir() {
            self.walk(&shown, canonical, &from.root)?;
        } else if canonical.is_file() {
            self.queue.push_back(Pending { path: shown, canonical, root: from.root.clone() });
        } else {
            self.skip(&from.path, format!("{what}: not a regular file; not read"));
        }
        Ok(())
    }

    fn read_file(&mut self, file: Pending) -> Result<()> {
        if !self.read.insert(file.canonical.clone()) {
            return Ok(());
        }
        self.catalog.files += 1;
        let name = file.path.display();
        // The canonical path: the one checked against the root.
        let text = std::fs::read_to_string(&file.canonical).with_context(|| format!("cannot read {name}"))?;
        let docs: Vec<serde_yaml_ng::Value> = serde_yaml_ng::Deserializer::from_str(&text)
            .map(serde_yaml_ng::Value::deserialize)
            .collect::<Result<_, _>>()
            .with_context(|| {
                format!(
                    "{name} is not valid YAML; fix it, or if it is not part of the catalog, import the root Location file instead of the whole directory"
                )
            })?;
        let several = docs.len() > 1;
        for (i, value) in docs.into_iter().enumerate() {
            let at = if several { format!("document {}: ", i + 1) } else { String::new() };
            let doc = entity::classify(value).with_context(|| format!("{name}: {at}malformed Backstage entity"))?;
            match doc {
                Document::Empty => {}
                Document::NotEntity(why) => self.skip(&file.path, format!("{at}{why}")),
                Document::Unmapped(kind) => *self.catalog.unmapped.entry(kind).or_default() += 1,
                Document::Location(loc) => {
                    *self.catalog.unmapped.entry("Location".into()).or_default() += 1;
                    for target in &loc.targets {
                        self.follow(&file, &loc, target)?;
                    }
                }
                Document::Node(entity) => {
                    self.catalog.entities.push(Sourced { entity: *entity, file: file.path.clone() })
                }
            }
        }
        Ok(())
    }
}

/// Read the catalog at `paths` (files or directories), following Locations,
/// within `root` if given (else each argument's own root, see above).
///
/// # Errors
/// A path that cannot be read or is outside `root`, a file that is not valid
/// YAML, a malformed entity, or a required Location target that does not
/// exist.
pub(super) fn read(paths: &[PathBuf], root: Option<&Path>) -> Result<Catalog> {
    let root = match root {
        Some(r) => {
            Some(r.canonicalize().with_context(|| format!("cannot read the root {}: check the path", r.display()))?)
        }
        None => None,
    };
    let mut r = Reader::default();
    for p in paths {
        let canonical = p.canonicalize().with_context(|| format!("cannot read {}: check the path", p.display()))?;
        if let Some(root) = &root
            && !canonical.starts_with(root)
        {
            bail!("{} is outside the root {}: pass a --root that holds every path named", p.display(), root.display());
        }
        if canonical.is_dir() {
            let own = root.clone().unwrap_or_else(|| canonical.clone());
            r.walk(p, canonical, &own)?;
        } else if is_yaml(p) && canonical.is_file() {
            let own = root.clone().unwrap_or_else(|| canonical.parent().unwrap_or(Path::new("/")).to_path_buf());
            r.queue.push_back(Pending { path: p.clone(), canonical, root: own });
        } else {
            bail!(
                "{} is not a YAML file or a directory: name catalog-info.yaml files or the directories holding them",
                p.display()
            );
        }
        while let Some(file) = r.queue.pop_front() {
            r.read_file(file)?;
        }
    }
    if r.catalog.files == 0 {
        bail!(
            "no catalog YAML files found: name catalog-info.yaml files, a root Location file, or a directory holding them"
        );
    }
    Ok(r.catalog)
}
