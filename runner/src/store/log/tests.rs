//! The store's group commit under injected failures.

use super::*;

fn refused(detail: &str) -> Event {
    Event::Refused { stage: "test".into(), reason_code: "test.synthetic".into(), detail: detail.into() }
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
    let details: Vec<String> = log
        .read_records()
        .unwrap()
        .iter()
        .filter_map(|r| match &r.event {
            Event::Refused { detail, .. } => Some(detail.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(details, ["one", "two"]);
}

#[test]
fn start_records_and_their_checkpoint_are_durable_together_or_not_at_all() {
    let dir = tempfile::tempdir().unwrap();
    let log = EvidenceLog::open(dir.path()).unwrap();
    let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
    let signer = Arc::new(NoteSigner::new("runner.test", key).unwrap());
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
