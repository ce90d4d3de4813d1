//! The Backstage catalog import (`edge_runner::backstage::import`), through
//! its public entry: the input is split at NUL bytes into up to four YAML
//! files (so cross-file references and duplicates are reached) written to a
//! scratch directory. Invariant: an imported graph renders to TOML.
#![no_main]

use std::path::PathBuf;
use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;

static DIR: LazyLock<tempfile::TempDir> = LazyLock::new(|| tempfile::tempdir().expect("scratch dir"));

fuzz_target!(|data: &[u8]| {
    let dir = DIR.path();
    // Nothing from an earlier input: a Location may name any file here.
    for i in 0..4 {
        let _ = std::fs::remove_file(dir.join(format!("catalog-{i}.yaml")));
    }
    let mut paths: Vec<PathBuf> = Vec::new();
    for (i, part) in data.splitn(4, |&b| b == 0).enumerate() {
        let p = dir.join(format!("catalog-{i}.yaml"));
        std::fs::write(&p, part).expect("scratch write");
        paths.push(p);
    }
    if let Ok(import) = edge_runner::backstage::import(&paths, Some(dir)) {
        // Locations are followed inside the root, each file read once.
        assert!(import.files <= paths.len(), "{} files read from {} given", import.files, paths.len());
        let text = edge_runner::backstage::to_toml(&import.graph, dir).expect("a graph renders");
        let _ = edge_core::graph::Graph::from_toml(&text);
    }
});
