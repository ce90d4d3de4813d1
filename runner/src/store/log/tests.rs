//! The store's group commit under injected failures.

use super::*;

fn refused(detail: &str) -> Event {
    Event::Refused { stage: "test".into(), reason_code: "test.synthetic".into(), detail: detail.into() }
}

/// The details of the log's refusal records, in order.
fn refused_details(log: &EvidenceLog) -> Vec<String> {
    log.read_records()
        .unwrap()
        .iter()
        .filter_map(|r| match &r.event {
            Event::Refused { detail, .. } => Some(detail.clone()),
            _ => None,
        })
        .collect()
}

/// The identity a test's checkpoints are signed with.
fn test_signer() -> Arc<NoteSigner> {
    Arc::new(NoteSigner::new("runner.test", ed25519_dalek::SigningKey::from_bytes(&[7; 32])).unwrap())
}

/// Something below the runner makes inserts of run `r-fail` fail (a disk
/// error, say) until the returned connection drops the trigger.
fn fail_inserts_of_run_r_fail(dir: &Path) -> Connection {
    let other = Connection::open(dir.join("evidence.db")).unwrap();
    other
        .execute_batch(
            "CREATE TRIGGER fail_one BEFORE INSERT ON records WHEN NEW.run = 'r-fail' \
             BEGIN SELECT RAISE(ABORT, 'injected failure'); END;",
        )
        .unwrap();
    other
}

#[test]
fn deferred_appends_become_durable_at_the_barrier_and_a_failed_commit_poisons_the_writer() {
    let dir = tempfile::tempdir().unwrap();
    let log = EvidenceLog::open(dir.path()).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
    let health = |log: &EvidenceLog| rt.block_on(log.writer_health(Duration::from_secs(5)));
    assert_eq!(health(&log), Ok(()), "a fresh writer is working");
    let mut run = log.run_log();
    run.append_deferred("r-a", refused("one")).unwrap();
    run.append_deferred("r-a", refused("two")).unwrap();
    wait(run.barrier()).unwrap();
    assert_eq!(log.len(), 2);
    assert_eq!(run.records().len(), 2);

    let other = fail_inserts_of_run_r_fail(dir.path());
    run.append_deferred("r-fail", refused("three")).unwrap();
    run.append_deferred("r-b", refused("four")).unwrap();
    let e = wait(run.barrier()).unwrap_err();
    assert!(format!("{e:#}").contains("injected failure"), "{e:#}");
    // Nothing is accepted after the failure, even once the cause is gone.
    other.execute_batch("DROP TRIGGER fail_one;").unwrap();
    let e = log.append("r-c", refused("five")).unwrap_err();
    assert!(format!("{e:#}").contains("restart the runner"), "{e:#}");
    // Readiness sees it: the writer answers, but as failed, with the cause.
    match health(&log) {
        Err(WriterUnhealthy::Failed(why)) => assert!(why.contains("injected failure"), "{why}"),
        other => panic!("a poisoned writer reported {other:?}"),
    }
    drop(log);

    // Reopened: the log verifies, with no hole: nothing after the failure.
    let log = EvidenceLog::open(dir.path()).unwrap();
    let details = refused_details(&log);
    assert_eq!(details, ["one", "two"]);
}

#[test]
fn deferred_appends_wait_for_a_commit_and_abandoned_ones_are_committed_by_the_timer() {
    let dir = tempfile::tempdir().unwrap();
    let log = EvidenceLog::open(dir.path()).unwrap();
    let mut run = log.run_log();
    run.append_deferred("r-a", refused("one")).unwrap();
    run.append_deferred("r-a", refused("two")).unwrap();
    // Nothing asked for a commit yet: the writer holds them (`LINGER` is
    // seconds in tests), to commit them with the barrier, not one each.
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(log.head().size, 0, "deferred appends were committed before anything asked for it");
    let t = Instant::now();
    wait(run.barrier()).unwrap();
    assert!(t.elapsed() < LINGER, "the barrier waited for the writer's timer instead of committing");
    assert_eq!(log.len(), 2);

    // An append that someone waits for commits what was deferred before
    // it, in the order sent.
    run.append_deferred("r-a", refused("three")).unwrap();
    let four = log.append("r-b", refused("four")).unwrap();
    assert_eq!(four.seq, 3);
    wait(run.barrier()).unwrap();
    assert_eq!(run.records().iter().map(|r| r.seq).collect::<Vec<_>>(), [0, 1, 2]);

    // (The barrier's flush has reached the writer: it commits nothing sent after.)
    let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
    rt.block_on(log.writer_health(Duration::from_secs(5))).unwrap();

    // A run dropped before its barrier: its records still land, when the
    // timer runs out.
    let t = Instant::now();
    let mut gone = log.run_log();
    gone.append_deferred("r-c", refused("five")).unwrap();
    drop(gone);
    while log.head().size < 5 {
        assert!(t.elapsed() < LINGER * 5, "an abandoned deferred append was never committed");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(t.elapsed() >= LINGER, "committed before the timer ran out, with nothing asking for it");
}

#[test]
fn start_records_and_their_checkpoint_are_durable_together_or_not_at_all() {
    let dir = tempfile::tempdir().unwrap();
    let log = EvidenceLog::open(dir.path()).unwrap();
    let signer = test_signer();
    log.append("r-a", refused("before")).unwrap();
    let note =
        log.append_with_checkpoint("runner", vec![refused("one"), refused("two")], &signer, "runner.test").unwrap();
    // The checkpoint covers both records, and it is the newest stored.
    assert_eq!(log.len(), 3);
    assert_eq!(Checkpoint::claimed(&note).unwrap().size, 3);
    assert_eq!(log.newest_checkpoint().unwrap(), Some((3, note)));

    // One of them cannot be committed: the caller learns it, and no
    // checkpoint claims records that are not there.
    let other = fail_inserts_of_run_r_fail(dir.path());
    let e = log.append_with_checkpoint("r-fail", vec![refused("three")], &signer, "runner.test").unwrap_err();
    assert!(format!("{e:#}").contains("injected failure"), "{e:#}");
    assert_eq!(log.newest_checkpoint().unwrap().map(|(size, _)| size), Some(3));
    drop(log);
    other.execute_batch("DROP TRIGGER fail_one;").unwrap();
    let log = EvidenceLog::open(dir.path()).unwrap();
    assert_eq!(log.len(), 3, "nothing of the failed start is in the log");
}

#[test]
fn queued_start_records_commit_before_what_follows_and_a_failed_commit_fails_the_next_wait() {
    let dir = tempfile::tempdir().unwrap();
    let log = EvidenceLog::open(dir.path()).unwrap();
    let signer = test_signer();
    // Queued, not waited for: the checkpoint asks for a commit, so it
    // lands with nobody waiting (`LINGER` is seconds in tests).
    let t = Instant::now();
    log.queue_with_checkpoint("runner", vec![refused("one"), refused("two")], &signer, "runner.test").unwrap();
    while log.newest_checkpoint().unwrap().is_none() {
        assert!(t.elapsed() < LINGER, "a queued start waited for the timer, or was never committed");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(log.newest_checkpoint().unwrap().map(|(size, _)| size), Some(2));
    // What is queued next lands after it.
    let mut run = log.run_log();
    log.queue_with_checkpoint("runner", vec![refused("three")], &signer, "runner.test").unwrap();
    run.append_deferred("r-a", refused("four")).unwrap();
    wait(run.barrier()).unwrap();
    assert_eq!(run.records().iter().map(|r| r.seq).collect::<Vec<_>>(), [3]);

    // A queued start whose commit fails: the caller's next wait fails,
    // naming the cause, and nothing after it is in the log.
    let other = fail_inserts_of_run_r_fail(dir.path());
    log.queue_with_checkpoint("r-fail", vec![refused("five")], &signer, "runner.test").unwrap();
    run.append_deferred("r-b", refused("six")).unwrap();
    let e = wait(run.barrier()).unwrap_err();
    assert!(format!("{e:#}").contains("injected failure"), "{e:#}");
    drop((run, log));
    other.execute_batch("DROP TRIGGER fail_one;").unwrap();
    let log = EvidenceLog::open(dir.path()).unwrap();
    assert_eq!(log.len(), 4, "nothing of the failed start, nor after it, is in the log");
    // (Three's checkpoint covers four too when they shared a commit.)
    let size = log.newest_checkpoint().unwrap().map(|(size, _)| size);
    assert!(matches!(size, Some(3 | 4)), "the newest checkpoint claims {size:?} of 4 records");
}

#[test]
fn checkpoints_asked_for_in_one_commit_share_a_signature_but_never_across_a_key_record() {
    let dir = tempfile::tempdir().unwrap();
    let log = EvidenceLog::open(dir.path()).unwrap();
    let signer = test_signer();
    let other_key = ed25519_dalek::SigningKey::from_bytes(&[8; 32]);
    let other = Arc::new(NoteSigner::new("runner.test", other_key).unwrap());
    let h = log.handle();

    // Hold the writer after its first commit (it folds under the index's
    // write lock), so that everything sent meanwhile is one batch.
    let held = log.index();
    let first = h.send_append("r-0", refused("first"), None, Commit::Now).unwrap();
    let t = Instant::now();
    // (Not `len`: it waits for the index, which the writer now waits for.)
    while log.head().size < 1 {
        assert!(t.elapsed() < Duration::from_secs(10), "the writer did not commit");
        std::thread::sleep(Duration::from_millis(5));
    }
    let a1 = h.send_append("r-a", refused("a1"), None, Commit::Now).unwrap();
    let c1 = h.send_checkpoint(signer.clone(), "runner.test").unwrap();
    let a2 = h.send_append("r-b", refused("a2"), None, Commit::Now).unwrap();
    let c2 = h.send_checkpoint(signer.clone(), "runner.test").unwrap();
    let c2_other = h.send_checkpoint(other.clone(), "runner.test").unwrap();
    let k =
        h.send_append("runner", Event::KeyEvent { action: "test".into(), key: "k".into() }, None, Commit::Now).unwrap();
    let c3 = h.send_checkpoint(signer.clone(), "runner.test").unwrap();
    drop(held);

    wait(received(first)).unwrap();
    let (a1, a2, k) = (wait(received(a1)).unwrap(), wait(received(a2)).unwrap(), wait(received(k)).unwrap());
    assert_eq!((a1.seq, a2.seq, k.seq), (1, 2, 3));
    let (c1, c2, c2_other, c3) = (
        wait(received(c1)).unwrap(),
        wait(received(c2)).unwrap(),
        wait(received(c2_other)).unwrap(),
        wait(received(c3)).unwrap(),
    );
    // One signature for both requests of the same key before the key
    // record, covering both runs' records (and not the key record).
    assert_eq!(c1, c2);
    assert_eq!(Checkpoint::claimed(&c1).unwrap().size, 3);
    // Another key signs its own.
    assert_ne!(c2_other, c2);
    assert_eq!(Checkpoint::claimed(&c2_other).unwrap().size, 3);
    // After the key record: signed at the size that includes it.
    assert_eq!(Checkpoint::claimed(&c3).unwrap().size, 4);
    assert_eq!(log.newest_checkpoint().unwrap(), Some((4, c3)));
    drop(log);
    EvidenceLog::open(dir.path()).unwrap();
}

#[test]
fn the_close_commits_what_nobody_waited_for_folds_the_wal_and_keeps_the_newest_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let log = EvidenceLog::open(dir.path()).unwrap();
    let signer = test_signer();
    log.append("r-a", refused("one")).unwrap();
    // Queued and never waited for: a start's records with their checkpoint,
    // and a run's deferred append, dropped before its barrier (`LINGER` is
    // seconds in tests: only the close can commit it in time).
    log.queue_with_checkpoint("runner", vec![refused("two")], &signer, "runner.test").unwrap();
    let mut run = log.run_log();
    run.append_deferred("r-b", refused("three")).unwrap();
    drop(run);
    let late = log.handle();
    let t = Instant::now();
    drop(log);
    assert!(t.elapsed() < LINGER, "the close waited for the writer's timer");

    // Folded: nothing lives only in the WAL.
    let wal = std::fs::metadata(dir.path().join("evidence.db-wal")).map(|m| m.len()).unwrap_or(0);
    assert_eq!(wal, 0, "the WAL still holds {wal} bytes after a clean close");
    let kept = std::fs::read_to_string(dir.path().join(crate::store::trust::LATEST_CHECKPOINT_FILE)).unwrap();
    // A handle kept past the close commits nothing, and says why.
    let e = late.append("r-c", refused("four")).unwrap_err();
    assert!(format!("{e:#}").contains("closed"), "{e:#}");

    let log = EvidenceLog::open(dir.path()).unwrap();
    let details = refused_details(&log);
    assert_eq!(details, ["one", "two", "three"], "what was queued before the close is in the log, and nothing after");
    // The store's newest checkpoint is kept outside it. (It covers three
    // too when the deferred append shared the start's commit.)
    let (size, newest) = log.newest_checkpoint().unwrap().unwrap();
    assert!(matches!(size, 2 | 3), "the newest checkpoint claims {size} of 3 records");
    assert_eq!(kept, newest);
}

#[test]
fn an_artifact_stored_again_by_a_later_process_is_kept_once_and_reads_back() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = vec![7u8; 300 << 10];
    let d = EvidenceLog::open(dir.path()).unwrap().put_artifact(&bytes).unwrap();
    // A new process knows nothing of it: the writer finds it stored.
    let log = EvidenceLog::open(dir.path()).unwrap();
    let mut run = log.run_log();
    assert_eq!(run.put_artifact(&bytes).unwrap(), d);
    run.append_deferred("r-a", refused("one")).unwrap();
    wait(run.barrier()).unwrap();
    assert_eq!(log.read_artifact(&d).unwrap().as_deref(), Some(&bytes[..]));
    let rows: i64 =
        log.with_reader(|db| Ok(db.query_row("SELECT count(*) FROM artifacts", [], |r| r.get(0))?)).unwrap();
    assert_eq!(rows, 1);
}

#[test]
fn a_proof_for_a_record_appended_after_open_needs_no_connection_and_matches_the_store() {
    for before in [0u64, 1, 5, 8, 13] {
        let dir = tempfile::tempdir().unwrap();
        {
            let log = EvidenceLog::open(dir.path()).unwrap();
            for i in 0..before {
                log.append("r-a", refused(&i.to_string())).unwrap();
            }
        }
        let log = EvidenceLog::open(dir.path()).unwrap();
        let mut appended = Vec::new();
        for i in 0..3 {
            appended.push(log.append("r-b", refused(&format!("after {i}"))).unwrap().seq);
        }
        let size = log.len();
        for &seq in &appended {
            let (root, proof) = log
                .with_tree(|t| (merkle::root_of(t, size).unwrap(), merkle::inclusion_proof_of(t, seq, size).unwrap()))
                .unwrap();
            // The border verified at open and what this process committed
            // make the proof: no connection was taken from the pool.
            assert!(log.readers.idle.lock().unwrap().is_empty(), "a connection was opened for record {seq}");
            let db = read_only(dir.path()).unwrap();
            let stored = StoredTree::new(&db, size);
            assert_eq!(root, merkle::root_of(&stored, size).unwrap(), "{before} + {seq}");
            assert_eq!(proof, merkle::inclusion_proof_of(&stored, seq, size).unwrap(), "{before} + {seq}");
        }
        // A record from before the open still reads its hashes from the store.
        if before > 2 {
            let proof = log.with_tree(|t| merkle::inclusion_proof_of(t, 0, size).unwrap()).unwrap();
            let db = read_only(dir.path()).unwrap();
            assert_eq!(proof, merkle::inclusion_proof_of(&StoredTree::new(&db, size), 0, size).unwrap());
        }
    }
}

/// `evidence show` and the other readers of a store a runner serves from
/// read one snapshot: while a writer appends, every read sees a sound log
/// (the count read apart from the records had lagged them: "the store
/// holds records up to N but only N+k in sequence"). A race, so not
/// deterministic: with the reads in separate snapshots it failed in 8 of
/// 8 runs, each within its first second.
#[test]
fn a_reader_of_a_store_being_appended_to_reads_one_sound_snapshot() {
    use std::sync::atomic::{AtomicBool, Ordering};
    const COMMITS: usize = 2000;
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(EvidenceLog::open(dir.path()).unwrap());
    for i in 0..50 {
        log.append("r-a", refused(&format!("before {i}"))).unwrap();
    }
    let done = Arc::new(AtomicBool::new(false));
    let writer = std::thread::spawn({
        let (log, done) = (log.clone(), done.clone());
        move || {
            for n in 0..COMMITS {
                log.append("r-b", refused(&format!("while {n}"))).unwrap();
            }
            done.store(true, Ordering::Release);
        }
    });
    let mut sizes = Vec::new();
    while !done.load(Ordering::Acquire) {
        let (size, _) = each_verified(dir.path(), |_, _| Ok(())).expect("a sound store read as a broken one");
        sizes.push(size);
    }
    writer.join().unwrap();
    // The premise: the reads overlapped the appends.
    assert!(sizes.len() >= 3, "only {} reads while the writer appended", sizes.len());
    assert!(sizes.first() < sizes.last(), "every read saw the same size: {sizes:?}");
}
