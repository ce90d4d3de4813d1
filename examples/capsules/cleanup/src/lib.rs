//! Cleanup: delete regular files older than a threshold from a granted directory.
//!
//! Parameters:
//! * `mount` — logical mount (default `logs`);
//! * `older_than_days` — files whose modification time is older are deleted;
//! * `suffix` — optional, only files whose name ends with it (e.g. `.log`).
//!
//! Symlinks are never followed or deleted, and directories are never
//! removed. `plan` records an inventory digest of every file it keeps;
//! `verify` checks the planned files are gone *and* that inventory is
//! unchanged, i.e. nothing else was touched.

use std::time::{Duration, SystemTime};

use capsule_sdk::{Capsule, Ctx, Mount, Plan, PlanBuilder, Severity, Verification, digest, export_capsule};

struct Cleanup;

const INVENTORY: &str = "kept-inventory";

struct Params {
    mount: Mount,
    older_than: Duration,
    suffix: Option<String>,
}

fn params(ctx: &Ctx) -> Result<Params, String> {
    let mount = ctx.mount(ctx.param("mount").unwrap_or("logs"))?;
    let days: u64 = ctx
        .require("older_than_days")?
        .parse()
        .map_err(|_| "parameter `older_than_days` must be a whole number of days".to_owned())?;
    Ok(Params { mount, older_than: Duration::from_secs(days * 86_400), suffix: ctx.param("suffix").map(str::to_owned) })
}

/// A regular file found under the mount (symlinks are not followed).
struct Entry {
    rel: String,
    size: u64,
    modified: SystemTime,
}

fn walk(mount: &Mount, rel: &str, out: &mut Vec<Entry>) -> Result<(), String> {
    let dir = mount.path(rel);
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .map_err(|e| format!("cannot list {dir}: {e}"))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("cannot list {dir}: {e}"))?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = e.file_name().into_string().map_err(|_| format!("non-UTF-8 name in {dir}"))?;
        let child = if rel.is_empty() { name } else { format!("{rel}/{name}") };
        // symlink_metadata: never follow a link, wherever it points.
        let meta = std::fs::symlink_metadata(mount.path(&child)).map_err(|e| format!("cannot stat {child}: {e}"))?;
        if meta.file_type().is_dir() {
            walk(mount, &child, out)?;
        } else if meta.file_type().is_file() {
            let modified = meta.modified().map_err(|e| format!("no mtime for {child}: {e}"))?;
            out.push(Entry { rel: child, size: meta.len(), modified });
        }
    }
    Ok(())
}

fn is_expired(p: &Params, e: &Entry, now: SystemTime) -> bool {
    let old = now.duration_since(e.modified).is_ok_and(|age| age > p.older_than);
    old && p.suffix.as_deref().is_none_or(|s| e.rel.ends_with(s))
}

/// Digest over (path, size, mtime) of the files that stay.
fn inventory<'a>(kept: impl Iterator<Item = &'a Entry>) -> String {
    let mut text = String::new();
    for e in kept {
        let mtime = e.modified.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        text.push_str(&format!("{}\t{}\t{}\n", e.rel, e.size, mtime));
    }
    digest(text.as_bytes())
}

impl Capsule for Cleanup {
    fn plan(ctx: &Ctx) -> Result<Plan, String> {
        let p = params(ctx)?;
        let now = SystemTime::now();
        let mut files = Vec::new();
        walk(&p.mount, "", &mut files)?;
        let days = p.older_than.as_secs() / 86_400;
        let mut plan = PlanBuilder::new(format!("delete files older than {days} days from {}", p.mount.name()));
        let mut freed = 0u64;
        let mut kept = Vec::new();
        for e in &files {
            if is_expired(&p, e, now) {
                let bytes = p.mount.read(&e.rel)?.ok_or_else(|| format!("{} vanished", e.rel))?;
                plan.delete(&p.mount, &e.rel, &bytes, &format!("older than {days} days"));
                freed += e.size;
            } else {
                kept.push(e);
            }
        }
        let deleted = files.len() - kept.len();
        plan.finding(
            if deleted > 0 { Severity::Low } else { Severity::Info },
            "cleanup.expired-files",
            format!("{deleted} file(s) older than {days} days, {freed} bytes; {} kept", kept.len()),
            Some(p.mount.name()),
        );
        plan.fact(INVENTORY, inventory(kept.into_iter()));
        Ok(plan.build())
    }

    fn apply(ctx: &Ctx, plan: &Plan) -> Result<(), String> {
        let p = params(ctx)?;
        for c in &plan.changes {
            // Delete exactly what was planned, and only if it is still what was planned.
            let now = p.mount.digest(&c.path)?;
            if now != c.digest_before {
                return Err(format!("{} changed since the plan was made; re-plan", c.path));
            }
            p.mount.remove(&c.path)?;
        }
        Ok(())
    }

    fn verify(ctx: &Ctx, plan: &Plan) -> Result<Verification, String> {
        let p = params(ctx)?;
        let mut files = Vec::new();
        walk(&p.mount, "", &mut files)?;
        let still: Vec<&str> =
            plan.changes.iter().filter(|c| files.iter().any(|f| f.rel == c.path)).map(|c| c.path.as_str()).collect();
        if !still.is_empty() {
            return Ok(Verification::new(
                false,
                format!("{} planned deletion(s) still present: {}", still.len(), still.join(", ")),
            ));
        }
        let want = plan.fact(INVENTORY).ok_or("plan has no kept-inventory fact")?;
        if inventory(files.iter()) != want {
            return Ok(Verification::new(false, "files that should have been kept changed"));
        }
        Ok(Verification::new(true, format!("{} file(s) removed; everything else untouched", plan.changes.len())))
    }
}

export_capsule!(Cleanup);
