//! Self-attestation: at every start the runner records what it is, so a
//! reviewer can tell which build executed each run.
//!
//! The `runner-started` record (run `runner`) carries the SHA-256 of the
//! running executable (read through `/proc/self/exe`, which is the file the
//! process was started from even if it was replaced on disk since), the
//! crate version, the source revision embedded at build time (`build.rs`:
//! `EDGE_RUNNER_REVISION`, else git's `HEAD`, else `unknown`), and the
//! digests of the config file, the policy, the graph and the approver
//! registry in force. Runs that follow, until the next start, were executed
//! by this build; the verifier attaches it to each run
//! (`edge_evidence::runs::RunnerBuild`) and reports show it.
//!
//! What it is not: proof. A tampered binary can record any digest; the
//! record tells a reviewer which build the runner says it is, in a log it
//! cannot rewrite afterwards, so an unannounced upgrade or a build from an
//! unknown revision is visible.
//!
//! Hashing a debug build (hundreds of MB) at every start would dominate
//! short commands, so the digest is cached in the component cache directory
//! (`runner-binary.json`, which only the runner writes), keyed by the
//! executable's device, inode, size, modification and change times: a
//! binary replaced or modified in place has another inode or change time
//! (which no one sets without changing the clock), and is hashed again. It
//! holds the last four executables (`CACHED_BINARIES`), so two builds sharing one
//! cache directory (an `exec` from another install beside `serve`, old and
//! new side by side during an upgrade) do not evict each other and re-hash
//! at every start (~150 ms for a 280 MB build).

use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use anyhow::{Context, Result};
use edge_core::Sha256Digest;
use edge_core::evidence::Event;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::pipeline::Runner;

/// The source revision this binary was built from (`build.rs`).
pub const REVISION: &str = env!("EDGE_RUNNER_REVISION");
/// The crate version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Where the executable's digest is cached, in the component cache.
const CACHE_FILE: &str = "runner-binary.json";
/// Executables whose digests the cache keeps, newest first.
const CACHED_BINARIES: usize = 4;

/// The cached digest of one executable file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Cached {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
    digest: Sha256Digest,
}

impl Cached {
    fn key(m: &std::fs::Metadata, digest: Sha256Digest) -> Self {
        Self {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
            digest,
        }
    }
}

/// SHA-256 of the running executable, from the cache when the file is the
/// one the cache describes.
///
/// # Errors
/// If `/proc/self/exe` cannot be read (the runner then refuses to start:
/// it cannot say what it is).
pub fn binary_digest(cache_dir: &Path) -> Result<Sha256Digest> {
    digest_of(Path::new("/proc/self/exe"), cache_dir)
}

/// SHA-256 of the executable `exe`, through the cache in `cache_dir`.
fn digest_of(exe: &Path, cache_dir: &Path) -> Result<Sha256Digest> {
    let cant = || {
        format!(
            "cannot read the runner's own executable ({}) to record what it is at start; the runner needs /proc \
             mounted and its executable readable",
            exe.display()
        )
    };
    let mut file = std::fs::File::open(exe).with_context(cant)?;
    let meta = file.metadata().with_context(cant)?;
    let cache = cache_dir.join(CACHE_FILE);
    // An unreadable or older-format cache is no cache.
    let mut entries: Vec<Cached> =
        std::fs::read(&cache).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default();
    if let Some(c) = entries.iter().find(|c| **c == Cached::key(&meta, c.digest)) {
        return Ok(c.digest);
    }
    let mut h = Sha256::new();
    let mut buf = vec![0; 1 << 20];
    loop {
        let n = file.read(&mut buf).with_context(cant)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    let digest = Sha256Digest(h.finalize().into());
    // This file first; an older entry for the same file (device and inode)
    // is stale; the oldest beyond the bound go.
    let entry = Cached::key(&meta, digest);
    entries.retain(|c| (c.dev, c.ino) != (entry.dev, entry.ino));
    entries.insert(0, entry);
    entries.truncate(CACHED_BINARIES);
    // Best effort: a cache that cannot be written only costs the next start a hash.
    let bytes = serde_json::to_vec(&entries).expect("plain data");
    if let Err(e) = write_cache(&cache, &bytes) {
        tracing::warn!(error = %format!("{e:#}"), file = %cache.display(), "cannot cache the runner's digest");
    }
    Ok(digest)
}

/// Replace the cache file atomically (processes starting at once each
/// write their own temporary file).
fn write_cache(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension(format!("json.{}.{}", std::process::id(), uuid::Uuid::new_v4().simple()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })?;
    Ok(())
}

/// The `runner-started` record of this process for `runner`'s configuration.
///
/// # Errors
/// As [`binary_digest`].
pub fn attestation(runner: &Runner) -> Result<Event> {
    let config = &runner.config;
    let d = runner.governance().digests();
    // The file's exact text is the governance's (absent for a config
    // built from text rather than read from a file).
    let from_file = config.source.is_some();
    Ok(Event::RunnerStarted {
        binary: binary_digest(&config.cache_dir)?,
        version: VERSION.to_owned(),
        revision: REVISION.to_owned(),
        config: from_file.then_some(d.config),
        config_shown: d.config_shown.filter(|_| from_file),
        policy: d.policy,
        graph: d.graph,
        approvers: d.registry,
    })
}

/// The record of what this runner is (at every start, from `Runner::open`,
/// which appends it with the rest of the start's records).
///
/// # Errors
/// As [`binary_digest`].
pub fn start_record(runner: &Runner) -> Result<Event> {
    let event = attestation(runner)?;
    if let Event::RunnerStarted { binary, .. } = &event {
        tracing::info!(version = VERSION, revision = REVISION, binary = %binary, "runner started");
    }
    Ok(event)
}

/// One line for `evidence show`, for the events this module and key
/// rotation add (None for others).
pub fn describe(event: &Event) -> Option<String> {
    match event {
        Event::RunnerStarted { binary, version, revision, config, .. } => Some(format!(
            "started     edge-runner {version} (rev {revision}), binary {binary}{}",
            config.map(|c| format!(", config {c}")).unwrap_or_default()
        )),
        Event::KeyRotation { old_key, new_key, .. } => Some(format!(
            "key         rotated: {} → {} (signed by both)",
            edge_core::rotation::fingerprint(old_key),
            edge_core::rotation::fingerprint(new_key)
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_digest_is_the_executables_and_the_cache_follows_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let direct = Sha256Digest::of(&std::fs::read("/proc/self/exe").unwrap());
        assert_eq!(binary_digest(dir.path()).unwrap(), direct);
        let cached = read_cache(dir.path());
        assert_eq!(cached.len(), 1);
        let cached = cached[0].clone();
        assert_eq!(cached.digest, direct);
        // The cache answers for the same file; a cache describing another
        // file (here: another inode) is not believed.
        let forged = Cached { digest: Sha256Digest::of(b"not this binary"), ..cached.clone() };
        write_entries(dir.path(), std::slice::from_ref(&forged));
        assert_eq!(binary_digest(dir.path()).unwrap(), forged.digest, "the cache is keyed by the file, not re-hashed");
        let other = Cached { ino: cached.ino + 1, ..forged };
        write_entries(dir.path(), std::slice::from_ref(&other));
        assert_eq!(binary_digest(dir.path()).unwrap(), direct, "another file's entry: hashed again");
        assert_eq!(read_cache(dir.path()), [cached, other], "the new entry first, the other file's kept");
        // The format before several entries is no cache: hashed again.
        std::fs::write(dir.path().join(CACHE_FILE), serde_json::to_vec(&forged_single()).unwrap()).unwrap();
        assert_eq!(binary_digest(dir.path()).unwrap(), direct);
        assert!(!REVISION.is_empty() && !VERSION.is_empty());
    }

    #[test]
    fn executables_sharing_a_cache_do_not_evict_each_other() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cache");
        let exes: Vec<_> = (0..CACHED_BINARIES + 1)
            .map(|i| {
                let p = dir.path().join(format!("build-{i}"));
                std::fs::write(&p, format!("build {i}")).unwrap();
                p
            })
            .collect();
        let digest = |i: usize| digest_of(&exes[i], &cache).unwrap();
        assert_eq!(digest(0), Sha256Digest::of(b"build 0"));
        assert_eq!(digest(1), Sha256Digest::of(b"build 1"));
        // Build 0's entry outlived build 1's start: made to say otherwise, it
        // is believed (nothing was hashed again); build 1 answers from the
        // cache too.
        let mut entries = read_cache(&cache);
        assert_eq!(entries.iter().map(|c| c.digest).collect::<Vec<_>>(), [digest(1), Sha256Digest::of(b"build 0")]);
        entries[1].digest = Sha256Digest::of(b"remembered");
        write_entries(&cache, &entries);
        assert_eq!(digest(0), Sha256Digest::of(b"remembered"), "build 1 evicted build 0");
        assert_eq!(digest(1), Sha256Digest::of(b"build 1"));
        // Past the bound the oldest goes.
        for i in 2..=CACHED_BINARIES {
            digest(i);
        }
        let kept = read_cache(&cache);
        assert_eq!(kept.len(), CACHED_BINARIES);
        assert!(!kept.iter().any(|c| c.digest == Sha256Digest::of(b"remembered")), "{kept:?}");
        // A cached file changed in place (same inode, new size and times) is
        // hashed again.
        let newest = CACHED_BINARIES;
        assert_eq!(digest(newest), Sha256Digest::of(format!("build {newest}").as_bytes()));
        std::fs::write(&exes[newest], "patched").unwrap();
        assert_eq!(digest(newest), Sha256Digest::of(b"patched"));
    }

    fn read_cache(dir: &Path) -> Vec<Cached> {
        serde_json::from_slice(&std::fs::read(dir.join(CACHE_FILE)).unwrap()).unwrap()
    }

    fn write_entries(dir: &Path, entries: &[Cached]) {
        std::fs::write(dir.join(CACHE_FILE), serde_json::to_vec(entries).unwrap()).unwrap();
    }

    /// An entry for this executable as the cache held it before (an object,
    /// not a list), with a digest that is not its own.
    fn forged_single() -> serde_json::Value {
        let meta = std::fs::metadata("/proc/self/exe").unwrap();
        serde_json::to_value(Cached::key(&meta, Sha256Digest::of(b"not this binary"))).unwrap()
    }
}
