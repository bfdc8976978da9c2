//! kill -9 of the standby while transactions stream: on restart it recovers
//! its copy, says where it stands, and the primary resends the rest from its
//! queue (no resync); the copy matches row for row and is sound.

mod common;

use common::db::{dump, integrity, spawn_writer, DbPair};
use common::wait_for;
use std::time::Duration;

#[test]
fn a_standby_killed_mid_stream_resumes_and_catches_up() {
    let mut p = DbPair::new();
    p.start_streaming(Duration::from_secs(20));

    let mut writer = spawn_writer(&p.db(0), 7, 1500, 2.0);
    for round in 0..3 {
        // Let some transactions stream, then kill the standby mid-apply.
        let before = p.db_status(1).unwrap()["local"]["txid"]
            .as_u64()
            .unwrap_or(0);
        wait_for(Duration::from_secs(20), "the standby applying", || {
            let now = p.db_status(1)?["local"]["txid"].as_u64()?;
            (now >= before + 50).then_some(())
        });
        p.pair.kill(1);
        assert_eq!(integrity(&p.db(1)), "ok", "after kill {round}");
        p.pair.start(1);
        p.wait_streaming(0, Duration::from_secs(20));
    }
    let status = writer.wait().unwrap();
    assert!(status.success());
    let txid = p.barrier_txid(0);
    assert!(txid >= 1500);
    p.wait_same_position(Duration::from_secs(5));
    assert_eq!(dump(&p.db(0)), dump(&p.db(1)));
    assert_eq!(integrity(&p.db(1)), "ok");
    let s = p.db_status(0).unwrap();
    assert_eq!(s["mode"], "streaming", "{s}");
}

/// Runs `body` with `c`, a Python sqlite3 connection to `db`, then commits.
fn python(db: &std::path::Path, body: &str) {
    let script = format!(
        "import sqlite3,sys\nc = sqlite3.connect(sys.argv[1], timeout=30)\n{body}\nc.commit()\n"
    );
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(db)
        .output()
        .expect("python3 is required by the database tests");
    assert!(out.status.success(), "{out:?}");
}

/// A standby that is behind what a restarted primary can ship (its queue of
/// unacknowledged transactions was lost with the process) is resynced by
/// page hashes: only pages in ranges that differ are compared, only the
/// pages that differ are sent, and the copy then streams again.
#[test]
fn a_standby_behind_a_restarted_primary_is_resynced_by_page_hashes() {
    let mut p = DbPair::new();
    p.start_streaming(Duration::from_secs(20));
    // A database over several page ranges of 256 pages.
    common::db::run_writer(&p.db(0), 1, 20);
    python(
        &p.db(0),
        "c.execute('CREATE TABLE big(b)')\n\
         c.executemany('INSERT INTO big VALUES (randomblob(3000))', [()] * 1500)",
    );
    p.barrier_txid(0);

    // While the standby is away, 30 small transactions touch a few pages.
    p.pair.stop(1);
    python(
        &p.db(0),
        "c.execute('CREATE TABLE gap(x)')\n\
         for i in range(30):\n    c.execute('INSERT INTO gap VALUES (?)', (i,)); c.commit()",
    );
    p.pair.stop(0);
    p.pair.start(0);
    p.pair.start(1);
    p.pair.wait_roles(0, Duration::from_secs(20));
    p.wait_streaming(0, Duration::from_secs(30));
    let txid = p.barrier_txid(0);
    let (at, _) = p.wait_same_position(Duration::from_secs(10));
    assert_eq!(at, txid);
    assert_eq!(common::db::dump(&p.db(0)), common::db::dump(&p.db(1)));
    assert_eq!(common::db::integrity(&p.db(1)), "ok");
    // It was a resync, not a new seed, and it sent fewer pages than the copy has.
    let log = p.pair.log(0);
    let line = log
        .lines()
        .find(|l| l.contains("resyncing the standby by page hashes"))
        .unwrap_or_else(|| panic!("no resync in the primary's log:\n{log}"));
    let standby_log = p.pair.log(1);
    let resynced = standby_log
        .lines()
        .find(|l| l.contains("resynced to txid"))
        .unwrap_or_else(|| panic!("no resync on the standby:\n{standby_log}"));
    let sent: u64 = resynced
        .split(" with ")
        .nth(1)
        .and_then(|t| t.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{resynced}"));
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg("import sqlite3,sys; print(sqlite3.connect(sys.argv[1]).execute('PRAGMA page_count').fetchone()[0])")
        .arg(p.db(0))
        .output()
        .expect("python3 is required by the database tests");
    let pages: u64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    eprintln!("{line}\n{resynced} (database pages: {pages})");
    assert!(sent > 0, "{resynced}");
    assert!(pages > 1000, "{pages} pages: too small to tell");
    assert!(sent < 20, "{resynced}: too many of {pages} pages");
}
