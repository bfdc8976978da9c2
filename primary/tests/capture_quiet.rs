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
