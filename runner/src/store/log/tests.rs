//! The store's group commit under injected failures.

use super::*;

fn refused(detail: &str) -> Event {
    Event::Refused { stage: "test".into(), reason_code: "test.synthetic".into(), detail: detail.into() }
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

    // Something below the runner makes one insert fail (a disk error, say).
    let other = Connection::open(dir.path().join("evidence.db")).unwrap();
    other
        .execute_batch(
            "CREATE TRIGGER fail_one BEFORE INSERT ON records WHEN NEW.run = 'r-fail' \
             BEGIN SELECT RAISE(ABORT, 'injected failure'); END;",
        )
        .unwrap();
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
