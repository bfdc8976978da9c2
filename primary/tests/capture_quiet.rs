//! Polling the capture must not itself raise inotify events on the `-wal`
//! file: the engine wakes on those events and polls, so an event per poll
//! was a busy loop (about 40% of a core with nothing written, found by
//! `ops/bench/run database`). Writes by other connections still are events,
//! and are still captured.

use notify::Watcher;
use rusqlite::Connection;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tandem_primary::Capture;
use tandem_sync::Epoch;

/// Wait until `count` has not changed for 200 ms (at most 5 s); its value.
fn settled(count: &AtomicUsize) -> usize {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut last = count.load(Ordering::SeqCst);
    loop {
        std::thread::sleep(Duration::from_millis(200));
        let now = count.load(Ordering::SeqCst);
        if now == last || Instant::now() > deadline {
            return now;
        }
        last = now;
    }
}

#[test]
fn polling_raises_no_inotify_event_on_the_wal() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("quiet.db");
    let writer = Connection::open(&db).unwrap();
    writer
        .execute_batch(
            "PRAGMA journal_mode=WAL; CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);
             INSERT INTO t(v) VALUES ('a');",
        )
        .unwrap();
    let (mut capture, _) = Capture::open(&db, &dir.path().join("quiet.capture"), Epoch(1)).unwrap();
    capture.poll().unwrap();

    let events = Arc::new(AtomicUsize::new(0));
    let seen = events.clone();
    let mut watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        if let Ok(ev) = ev {
            if ev
                .paths
                .iter()
                .any(|p| p.to_string_lossy().ends_with("quiet.db-wal"))
            {
                seen.fetch_add(1, Ordering::SeqCst);
            }
        }
    })
    .unwrap();
    watcher
        .watch(dir.path(), notify::RecursiveMode::NonRecursive)
        .unwrap();
    let before = settled(&events);

    for _ in 0..100 {
        assert!(capture.poll().unwrap().is_empty());
    }
    assert_eq!(
        settled(&events),
        before,
        "polls with nothing written raised inotify events on the WAL"
    );

    // A write by another connection is an event, and is captured.
    writer.execute("INSERT INTO t(v) VALUES ('b')", []).unwrap();
    assert!(settled(&events) > before);
    let got = capture.poll().unwrap();
    assert_eq!(got.len(), 1);
    let again = settled(&events);
    for _ in 0..100 {
        assert!(capture.poll().unwrap().is_empty());
    }
    assert_eq!(settled(&events), again);
}

/// Bytes this thread has read (`rchar` of /proc/thread-self/io).
fn bytes_read_by_this_thread() -> u64 {
    let io = std::fs::read_to_string("/proc/thread-self/io").unwrap();
    io.lines()
        .find_map(|l| l.strip_prefix("rchar: "))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

fn wal_salts(db: &std::path::Path) -> Vec<u8> {
    let mut wal = db.as_os_str().to_owned();
    wal.push("-wal");
    std::fs::read(std::path::PathBuf::from(wal)).unwrap()[16..24].to_vec()
}

/// After the log restarts, the WAL file keeps its old size and its tail
/// holds stale frames. A poll reads up to the end of the valid log, not the
/// whole file (reading the stale tail at every poll was most of the
/// primary's CPU at 200 tx/s); a transaction larger than one read step is
/// still captured whole.
#[test]
fn a_restarted_log_is_read_only_to_its_valid_end() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("restart.db");
    let writer = Connection::open(&db).unwrap();
    writer
        .execute_batch(
            "PRAGMA journal_mode=WAL; PRAGMA wal_autocheckpoint=0;
             CREATE TABLE t(id INTEGER PRIMARY KEY, b BLOB);",
        )
        .unwrap();
    let (mut capture, _) =
        Capture::open(&db, &dir.path().join("restart.capture"), Epoch(1)).unwrap();
    for _ in 0..300 {
        writer
            .execute("INSERT INTO t(b) VALUES (randomblob(8000))", [])
            .unwrap();
    }
    assert_eq!(capture.poll().unwrap().len(), 300);
    let wal_bytes = capture.wal_bytes();
    assert!(wal_bytes > 3 << 20, "the WAL holds {wal_bytes} bytes");

    // Everything acknowledged: the pin moves, the log may restart.
    let outcome = capture.checkpoint(capture.position().txid).unwrap();
    assert!(outcome.pin_moved, "{outcome:?}");
    let salts = wal_salts(&db);
    writer
        .execute("INSERT INTO t(b) VALUES (randomblob(100))", [])
        .unwrap();
    assert_ne!(wal_salts(&db), salts, "the log restarted");
    assert_eq!(capture.wal_bytes(), wal_bytes, "the file kept its size");
    assert_eq!(capture.poll().unwrap().len(), 1);

    let before = bytes_read_by_this_thread();
    for _ in 0..50 {
        assert!(capture.poll().unwrap().is_empty());
    }
    let read = bytes_read_by_this_thread() - before;
    assert!(
        read < 50 * (128 << 10),
        "50 polls read {read} bytes of a {wal_bytes}-byte WAL with one small transaction in it"
    );

    // A transaction of about 1 MiB, many times the read step, over the
    // stale tail: captured whole, with every page.
    writer
        .execute("INSERT INTO t(b) VALUES (randomblob(1000000))", [])
        .unwrap();
    let got = capture.poll().unwrap();
    assert_eq!(got.len(), 1);
    assert!(
        got[0].tx.pages.len() > 240,
        "{} pages",
        got[0].tx.pages.len()
    );
    assert!(capture.poll().unwrap().is_empty());
}

/// A transaction still being written (a VACUUM, a bulk load) spills its
/// pages into the WAL before its commit frame. The capture reads it again
/// from its first frame until the commit comes, so it must not do that at
/// every poll (the engine polls about once a millisecond while the WAL
/// grows): once read, it is read again only when due, except by
/// `poll_all` (a barrier). Once committed it is captured whole.
#[test]
fn a_large_transaction_being_written_is_not_read_again_at_every_poll() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("bulk.db");
    let writer = Connection::open(&db).unwrap();
    writer
        .execute_batch(
            "PRAGMA journal_mode=WAL; PRAGMA wal_autocheckpoint=0; PRAGMA cache_size=50;
             CREATE TABLE t(id INTEGER PRIMARY KEY, b BLOB);",
        )
        .unwrap();
    let (mut capture, _) = Capture::open(&db, &dir.path().join("bulk.capture"), Epoch(1)).unwrap();
    writer.execute_batch("BEGIN").unwrap();
    for _ in 0..48 {
        writer
            .execute("INSERT INTO t(b) VALUES (randomblob(1000000))", [])
            .unwrap();
    }
    let wal_bytes = capture.wal_bytes();
    assert!(
        wal_bytes > 32 << 20,
        "the open transaction spilled: {wal_bytes} bytes"
    );

    assert!(capture.poll().unwrap().is_empty(), "nothing is committed");
    let due = capture
        .read_again_at()
        .expect("a large transaction being written is noticed");
    let before = bytes_read_by_this_thread();
    for _ in 0..100 {
        assert!(capture.poll().unwrap().is_empty());
    }
    let read = bytes_read_by_this_thread() - before;
    assert!(Instant::now() < due, "the polls took longer than the wait");
    assert!(
        read < 1 << 20,
        "100 polls read {read} bytes of a {wal_bytes}-byte open transaction"
    );

    let before = bytes_read_by_this_thread();
    assert!(capture.poll_all().unwrap().is_empty());
    let read = bytes_read_by_this_thread() - before;
    assert!(read > 32 << 20, "poll_all read only {read} bytes");

    writer.execute_batch("COMMIT").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let got = loop {
        let got = capture.poll().unwrap();
        if !got.is_empty() {
            break got;
        }
        assert!(
            Instant::now() < deadline,
            "the commit was not captured in 10 s"
        );
        let next = capture.read_again_at().unwrap_or_else(Instant::now);
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    };
    assert_eq!(got.len(), 1);
    assert!(
        got[0].tx.pages.len() > 48 * 240,
        "{} pages",
        got[0].tx.pages.len()
    );
    assert!(capture.read_again_at().is_none());
}
