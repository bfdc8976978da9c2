//! A capture reopened after its process died places what was committed
//! since its last record. A record taken while the WAL was empty names no
//! log position: the transactions committed after it cannot be counted one
//! by one, and the reopened capture must say so (discontinuous) rather than
//! report a fresh start, or a standby holding those transactions is taken
//! for one that diverged (found by `db_workload`'s primary kills under load).

use rusqlite::Connection;
use std::path::Path;
use tandem_primary::{Capture, OpenOutcome};
use tandem_sync::dbsum::TxId;
use tandem_sync::Epoch;

/// A database in WAL mode with a table and an empty log: its last
/// connection closed, which checkpoints the log and removes it.
fn database_with_an_empty_log(db: &Path) {
    let c = Connection::open(db).unwrap();
    c.execute_batch("PRAGMA journal_mode=WAL; CREATE TABLE t(v)")
        .unwrap();
    drop(c);
    let mut wal = db.as_os_str().to_owned();
    wal.push("-wal");
    let left = std::fs::metadata(&wal).map_or(0, |m| m.len());
    assert_eq!(left, 0, "the log was not emptied by the last close");
}

#[test]
fn commits_after_a_record_with_no_log_position_are_discontinuous() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("hydro.db");
    let state = dir.path().join("hydro.capture");
    database_with_an_empty_log(&db);

    let (mut capture, outcome) = Capture::open(&db, &state, Epoch(1)).unwrap();
    assert_eq!(outcome, OpenOutcome::Fresh);
    // Another process commits; the capture reads it as txid 1 (and would
    // ship it) but takes no new record before it dies.
    let writer = Connection::open(&db).unwrap();
    writer.execute("INSERT INTO t VALUES (1)", []).unwrap();
    let read = capture.poll().unwrap();
    assert_eq!(read.iter().map(|c| c.txid).collect::<Vec<_>>(), [TxId(1)]);
    drop(capture);

    let (capture, outcome) = Capture::open(&db, &state, Epoch(2)).unwrap();
    assert_eq!(outcome, OpenOutcome::Discontinuous);
    assert_eq!(capture.position().txid, TxId(1));
    drop(writer);
}

#[test]
fn an_unchanged_database_after_a_record_with_no_log_position_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("hydro.db");
    let state = dir.path().join("hydro.capture");
    database_with_an_empty_log(&db);

    let (capture, _) = Capture::open(&db, &state, Epoch(1)).unwrap();
    let at = capture.position();
    drop(capture);

    let (capture, outcome) = Capture::open(&db, &state, Epoch(2)).unwrap();
    assert_eq!(outcome, OpenOutcome::Resumed { skipped: 0 });
    assert_eq!(capture.position().txid, at.txid);
    assert_eq!(capture.position().sum, at.sum);
}
