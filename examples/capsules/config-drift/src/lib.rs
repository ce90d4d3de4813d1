//! Config drift: make one key of a TOML config file hold the desired value.
//!
//! Parameters (in the signed manifest):
//! * `mount` — logical mount holding the file (default `config`);
//! * `file` — path of the TOML file inside the mount;
//! * `key` — dotted key, e.g. `server.max_connections`;
//! * `value` — the desired value as a TOML literal: `512`, `true`, `"info"`.
//!
//! `plan` reads the file and, if the value differs, proposes one `modify` with
//! the exact before/after digests (comments and formatting are preserved:
//! only the value changes). `apply` makes the same edit; `verify` re-reads
//! the file and checks the key now holds the value.

use capsule_sdk::{Capsule, Ctx, Mount, Plan, PlanBuilder, Severity, Verification, export_capsule};
use toml_edit::{DocumentMut, Item, Value};

struct ConfigDrift;

struct Target {
    mount: Mount,
    file: String,
    key: Vec<String>,
    value: Value,
}

fn target(ctx: &Ctx) -> Result<Target, String> {
    let mount = ctx.mount(ctx.param("mount").unwrap_or("config"))?;
    let file = ctx.require("file")?.to_owned();
    let key: Vec<String> = ctx.require("key")?.split('.').map(str::to_owned).collect();
    if key.iter().any(String::is_empty) {
        return Err("parameter `key` must be a dotted key like `server.port`".into());
    }
    let raw = ctx.require("value")?;
    let value: Value = raw.parse().map_err(|e| {
        format!("parameter `value` = {raw:?} is not a TOML value (quote strings: \"\\\"info\\\"\"): {e}")
    })?;
    Ok(Target { mount, file, key, value })
}

fn current(doc: &DocumentMut, key: &[String]) -> Option<String> {
    let mut item: &Item = doc.as_item();
    for k in key {
        item = item.get(k)?;
    }
    item.as_value().map(|v| v.clone().decorated("", "").to_string())
}

/// The edited file content, or None when the key already holds the value.
fn desired(t: &Target, text: &str) -> Result<Option<String>, String> {
    let mut doc: DocumentMut = text.parse().map_err(|e| format!("{} is not valid TOML: {e}", t.file))?;
    let want = t.value.clone().decorated("", "").to_string();
    if current(&doc, &t.key).as_deref() == Some(want.as_str()) {
        return Ok(None);
    }
    let (last, parents) = t.key.split_last().expect("key is non-empty");
    let mut table = doc.as_table_mut();
    for p in parents {
        let entry = table.entry(p).or_insert_with(toml_edit::table);
        table = entry.as_table_mut().ok_or_else(|| format!("`{p}` in {} is not a table", t.file))?;
    }
    match table.get_mut(last).and_then(Item::as_value_mut) {
        // Keep the existing decoration (spacing, trailing comment).
        Some(v) => {
            let decor = v.decor().clone();
            *v = t.value.clone();
            *v.decor_mut() = decor;
        }
        None => {
            table.insert(last, Item::Value(t.value.clone()));
        }
    }
    Ok(Some(doc.to_string()))
}

fn read_text(t: &Target) -> Result<String, String> {
    let bytes = t.mount.read(&t.file)?.ok_or_else(|| format!("{}/{} does not exist", t.mount.name(), t.file))?;
    String::from_utf8(bytes).map_err(|_| format!("{} is not UTF-8", t.file))
}

impl Capsule for ConfigDrift {
    fn plan(ctx: &Ctx) -> Result<Plan, String> {
        let t = target(ctx)?;
        let text = read_text(&t)?;
        let key = t.key.join(".");
        let doc: DocumentMut = text.parse().map_err(|e| format!("{} is not valid TOML: {e}", t.file))?;
        let was = current(&doc, &t.key);
        let mut plan = PlanBuilder::new(format!("set {key} in {}/{}", t.mount.name(), t.file));
        match desired(&t, &text)? {
            None => plan.finding(
                Severity::Info,
                "config.compliant",
                format!("{key} already is {}", t.value.clone().decorated("", "")),
                Some(&t.file),
            ),
            Some(after) => {
                let was = was.unwrap_or_else(|| "unset".into());
                let want = t.value.clone().decorated("", "").to_string();
                plan.finding(
                    Severity::Medium,
                    "config.drift",
                    format!("{key} is {was}, expected {want}"),
                    Some(&t.file),
                );
                plan.modify(
                    &t.mount,
                    &t.file,
                    text.as_bytes(),
                    after.as_bytes(),
                    &format!("{key} drifted from {want} to {was}; restore the desired value"),
                );
            }
        }
        Ok(plan.build())
    }

    fn apply(ctx: &Ctx, plan: &Plan) -> Result<(), String> {
        let t = target(ctx)?;
        let text = read_text(&t)?;
        let Some(change) = plan.changes.first() else {
            return Ok(());
        };
        if change.digest_before.as_deref() != Some(capsule_sdk::digest(text.as_bytes()).as_str()) {
            return Err(format!("{} changed since the plan was made; re-plan", t.file));
        }
        if let Some(after) = desired(&t, &text)? {
            t.mount.write(&t.file, after.as_bytes())?;
        }
        Ok(())
    }

    fn verify(ctx: &Ctx, _plan: &Plan) -> Result<Verification, String> {
        let t = target(ctx)?;
        let text = read_text(&t)?;
        let key = t.key.join(".");
        Ok(match desired(&t, &text)? {
            None => Verification::new(true, format!("{key} holds the desired value")),
            Some(_) => Verification::new(false, format!("{key} still differs from the desired value")),
        })
    }
}

export_capsule!(ConfigDrift);
