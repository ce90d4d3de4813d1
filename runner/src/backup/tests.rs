//! A backup taken while writers keep appending holds a verified prefix of
//! the log, and restores into a store that continues it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use edge_core::evidence::{Event, Outcome};

use super::*;
use crate::backup::restore::{Target, check, restore};
use crate::store::log::{EvidenceLog, load_verified};

const CONFIG: &str = "[runner]\nname = \"unit-runner\"\nstate_dir = \"state\"\ndangerous_run_without_policy = true\n\
                      [[signers]]\nname = \"a\"\npublic_key = \"a.pub\"\n[mounts.data]\npath = \"data\"\nwritable = true\n";

/// A runner home: config, signer key, mount, identity key.
fn home() -> (tempfile::TempDir, PathBuf) {
    let t = tempfile::tempdir().unwrap();
    std::fs::create_dir(t.path().join("data")).unwrap();
    let key = edge_core::signature::CapsuleSigningKey::generate();
    std::fs::write(t.path().join("a.pub"), key.public_key_pem()).unwrap();
    std::fs::write(t.path().join("runner.toml"), CONFIG).unwrap();
    crate::identity::create_identity(&t.path().join("state/identity.key")).unwrap();
    let config = t.path().join("runner.toml");
    (t, config)
}

fn refused(i: usize) -> Event {
    Event::Refused { stage: "test".into(), reason_code: "test.synthetic".into(), detail: format!("record {i}") }
}

#[test]
fn a_backup_while_writers_append_holds_a_verified_prefix_and_restores_into_a_log_that_continues() {
    let (t, config_path) = home();
    let config = RunnerConfig::load(&config_path).unwrap();
    let signer = Arc::new(crate::identity::load_identity(&config.store_view()).unwrap());
    let live = config.state_dir.join("evidence");
    let log = EvidenceLog::open(&live).unwrap();
    for i in 0..200 {
        log.append(&format!("r-{i}"), refused(i)).unwrap();
        log.append(&format!("r-{i}"), Event::Completed { outcome: Outcome::Refused }).unwrap();
    }
    log.checkpoint(&signer, &config.name).unwrap();
    crate::store::trust::publish_now(&live).unwrap();

    // Four writers append (and one signs and keeps checkpoints) until told.
    let stop = AtomicBool::new(false);
    let (done, before, after) = std::thread::scope(|s| {
        for w in 0..4 {
            let (handle, stop, signer, log, live) = (log.handle(), &stop, signer.clone(), &log, &live);
            s.spawn(move || {
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    handle.append(&format!("w{w}-{i}"), refused(i)).unwrap();
                    if w == 0 && i % 50 == 0 {
                        log.checkpoint(&signer, "unit-runner").unwrap();
                        crate::store::trust::publish_now(live).unwrap();
                    }
                    i += 1;
                }
            });
        }
        while log.len() < 1000 {
            std::thread::yield_now();
        }
        let before = log.len();
        let done = backup(&config_path, &t.path().join("backup")).unwrap();
        let after = log.len();
        stop.store(true, Ordering::Relaxed);
        (done, before, after)
    });
    let n = done.manifest.store.records;
    assert!(after > before, "records were appended while the backup ran ({before} → {after})");
    assert!(
        (before..=after).contains(&n),
        "the snapshot is of one instant during the backup: {before} ≤ {n} ≤ {after}"
    );
    let (live_records, _) = load_verified(&live).unwrap();
    let (copy, _) = load_verified(&done.dir.join(manifest::STORE_DIR)).unwrap();
    assert_eq!(copy.len() as u64, n);
    assert_eq!(copy.as_slice(), &live_records[..n as usize], "a prefix of the live log");
    drop(log);

    // Restored elsewhere (an empty state directory), it opens as the
    // runner opens its store and the chain continues from its head.
    let other = tempfile::tempdir().unwrap();
    std::fs::create_dir(other.path().join("data")).unwrap();
    std::fs::copy(t.path().join("a.pub"), other.path().join("a.pub")).unwrap();
    std::fs::write(other.path().join("runner.toml"), CONFIG).unwrap();
    let checked = check(&done.dir, &[signer.verifier().clone()]).unwrap();
    let r = restore(&checked, &Target::Config(other.path().join("runner.toml"))).unwrap();
    assert_eq!(r.state_dir, other.path().join("state"));
    let restored = EvidenceLog::open(&r.state_dir.join("evidence")).unwrap();
    let history = crate::store::trust::key_history(&restored, &signer.verifier().name).unwrap();
    crate::store::trust::check_signed_history(&restored, &history, signer.verifier()).unwrap();
    assert_eq!(restored.len(), n);
    let next = restored.append("after-restore", refused(0)).unwrap();
    assert_eq!(next.seq, n);
    assert_eq!(next.prev, copy.last().unwrap().canonical_bytes().map(|b| edge_core::Sha256Digest::of(&b)).unwrap());
}
