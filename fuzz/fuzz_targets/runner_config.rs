//! The runner config (`RunnerConfig::from_toml`), with relative paths
//! resolved against `fuzz/fixtures/runner` (a policy, graph, approvers,
//! keys, trusted root and mount roots, so the seeds load completely).
//! Inputs naming an absolute path or `..` are skipped: the config reads the
//! files it names, and `/dev/zero` is not a parser bug.
//! Invariant: the runner name is valid and every mount stays under the base.
#![no_main]

use std::path::PathBuf;
use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;

static BASE: LazyLock<PathBuf> =
    LazyLock::new(|| std::fs::canonicalize(concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/runner")).expect("fixtures"));

fn confined(v: &toml::Value) -> bool {
    match v {
        toml::Value::String(s) => !s.starts_with('/') && !s.contains(".."),
        toml::Value::Array(a) => a.iter().all(confined),
        toml::Value::Table(t) => t.iter().all(|(k, v)| confined(&toml::Value::String(k.clone())) && confined(v)),
        _ => true,
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if toml::from_str::<toml::Table>(text).is_ok_and(|t| !confined(&toml::Value::Table(t))) {
        return;
    }
    if let Ok(c) = edge_runner::config::RunnerConfig::from_toml(text, &BASE) {
        assert!(!c.name.is_empty() && !c.name.contains('+'));
        for m in c.mounts.values() {
            assert!(m.path.starts_with(&*BASE), "mount {} escapes the base directory", m.path.display());
        }
    }
});
