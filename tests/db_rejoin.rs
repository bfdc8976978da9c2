//! A copy that comes back after a failover holding transactions the new
//! primary never received is quarantined whole, never overwritten; the
//! event names the file and the txids beyond the common point, and the node
//! is seeded anew.

mod common;

use common::db::{dump, integrity, run_writer, DbPair};
use common::wait_for;
use std::time::Duration;

const SETTLE: Duration = Duration::from_secs(30);

/// Rows of table `t` in the database at `db`, as Python's sqlite3 counts them.
fn rows(db: &std::path::Path) -> u64 {
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg("import sqlite3,sys; print(sqlite3.connect(sys.argv[1]).execute('SELECT count(*) FROM t').fetchone()[0])")
        .arg(db)
        .output()
        .expect("python3 is required by the database tests");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

#[test]
fn a_diverged_old_primary_is_quarantined_whole_and_seeded_anew() {
    let mut p = DbPair::new();
    p.start_streaming(SETTLE);
    run_writer(&p.db(0), 1, 20);
    let common_txid = p.barrier_txid(0);
    let before = rows(&p.db(0));

    // The standby goes away; the primary commits what it never receives,
    // then dies.
    p.pair.stop(1);
    run_writer(&p.db(0), 2, 30);
    let lost = rows(&p.db(0));
    assert!(lost > before);
    p.pair.kill(0);

    // The old standby is promoted by hand and serves on.
    p.pair.start(1);
    wait_for(SETTLE, "b's control API", || p.pair.status(1));
    let out = p.pair.cli(1, &["promote", "--force"]);
    assert!(out.status.success(), "{out:?}");
    wait_for(SETTLE, "b primary", || {
        (p.pair.role(1)? == "primary").then_some(())
    });
    run_writer(&p.db(1), 3, 5);

    // The old primary rejoins: its copy diverged after `common_txid`.
    p.pair.start(0);
    p.pair.wait_roles(1, SETTLE);
    p.wait_streaming(1, Duration::from_secs(60));
    let txid = p.barrier_txid(1);
    let (at, _) = p.wait_same_position(Duration::from_secs(10));
    assert_eq!(at, txid);
    assert_eq!(dump(&p.db(0)), dump(&p.db(1)));
    assert_eq!(integrity(&p.db(0)), "ok");

    // The event names the quarantined copy and the txids beyond the common
    // point; the copy there still holds the transactions only it had.
    let events = p.pair.events(0);
    let ev = events
        .iter()
        .find(|e| {
            e["message"]
                .as_str()
                .is_some_and(|m| m.contains("quarantined"))
        })
        .unwrap_or_else(|| panic!("no quarantine event on a: {events:?}"));
    let message = ev["message"].as_str().unwrap();
    let beyond = format!("transactions {}..", common_txid + 1);
    assert!(message.contains(&beyond), "{message}");
    let dir = message
        .split("quarantined whole in ")
        .nth(1)
        .and_then(|rest| rest.split(';').next())
        .unwrap_or_else(|| panic!("{message}"));
    let kept = std::path::Path::new(dir).join("hydro.db");
    assert!(kept.exists(), "{message}: {} is missing", kept.display());
    assert_eq!(rows(&kept), lost, "the quarantined copy lost rows");
    assert_eq!(integrity(&kept), "ok");
    // The new primary's copy has none of them: they were never shipped.
    assert!(rows(&p.db(1)) < lost + 5);
    let status = p.pair.status(0).unwrap();
    assert!(
        status["alarms"].to_string().contains("quarantine"),
        "{status}"
    );
}

/// A database deleted while tandem runs raises an alarm and the standby keeps
/// its copy; once the application re-creates it, the new database is what
/// the standby mirrors (by a resync), never the old log read into the new.
#[test]
fn a_database_deleted_and_recreated_while_running_is_mirrored_anew() {
    let mut p = DbPair::new();
    p.start_streaming(SETTLE);
    run_writer(&p.db(0), 1, 20);
    p.barrier_txid(0);
    p.wait_same_position(Duration::from_secs(10));
    let old = rows(&p.db(1));

    for suffix in ["", "-wal", "-shm"] {
        let mut f = p.db(0).into_os_string();
        f.push(suffix);
        let _ = std::fs::remove_file(f);
    }
    let alarm = wait_for(SETTLE, "an alarm for the deleted database", || {
        let a = p.pair.status(0)?["alarms"].to_string();
        a.contains("was deleted").then_some(a)
    });
    assert!(alarm.contains("the standby keeps its copy"), "{alarm}");
    assert!(
        !p.db(0).exists(),
        "tandem must not create an empty database"
    );
    assert_eq!(rows(&p.db(1)), old, "the standby's copy was touched");

    // The application creates its database anew, with other content.
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(
            "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); c.execute('PRAGMA journal_mode=WAL'); \
             c.execute('CREATE TABLE t(v)'); c.executemany('INSERT INTO t VALUES (?)', [(i,) for i in range(7)]); \
             c.commit()",
        )
        .arg(p.db(0))
        .output()
        .expect("python3 is required by the database tests");
    assert!(out.status.success(), "{out:?}");
    wait_for(Duration::from_secs(60), "the new database mirrored", || {
        let s = p.db_status(1)?;
        (s["mode"] == "streaming" && rows(&p.db(1)) == 7).then_some(())
    });
    let txid = p.barrier_txid(0);
    let (at, _) = p.wait_same_position(Duration::from_secs(10));
    assert_eq!(at, txid);
    assert_eq!(dump(&p.db(0)), dump(&p.db(1)));
    assert_eq!(integrity(&p.db(1)), "ok");
}

/// A power loss on the standby can leave its position record older than its
/// copy: the record is made durable once the stream pauses, the commits
/// with each apply. Simulated here: the record as it stood after a barrier
/// is put back once more transactions were applied and the standby killed.
/// The copy is then ahead of its record; the primary places it by its
/// checksum and resyncs it, and nothing is quarantined.
#[test]
fn a_standby_copy_ahead_of_its_position_record_is_placed_by_its_checksum() {
    let mut p = DbPair::new();
    p.start_streaming(SETTLE);
    run_writer(&p.db(0), 5, 20);
    p.barrier_txid(0);
    p.wait_same_position(Duration::from_secs(10));
    let mut record = p.db(1).into_os_string();
    record.push(".tandem-position");
    let older = std::fs::read(&record).unwrap();

    run_writer(&p.db(0), 6, 30);
    let ahead = p.barrier_txid(0);
    p.wait_same_position(Duration::from_secs(10));
    p.pair.kill(1);
    std::fs::write(&record, &older).unwrap();
    p.pair.start(1);
    p.pair.wait_roles(0, SETTLE);
    p.wait_streaming(0, SETTLE);
    run_writer(&p.db(0), 7, 5);
    let txid = p.barrier_txid(0);
    assert!(txid > ahead, "{txid} after {ahead}");
    let (at, _) = p.wait_same_position(Duration::from_secs(10));
    assert_eq!(at, txid);
    assert_eq!(dump(&p.db(0)), dump(&p.db(1)));
    assert_eq!(integrity(&p.db(1)), "ok");

    assert!(
        p.pair
            .log(1)
            .contains("matches no position tandem recorded"),
        "{}",
        p.pair.log(1)
    );
    assert!(
        p.pair.log(0).contains("has a checksum of this line"),
        "{}",
        p.pair.log(0)
    );
    let events = p.pair.events(1);
    assert!(
        !events
            .iter()
            .filter_map(|e| e["message"].as_str())
            .any(|m| m.contains("quarantined")),
        "{events:?}"
    );
}

/// Local software wrote the standby's copy while its tandem was stopped: at
/// start the copy matches no position tandem recorded; it is quarantined
/// whole (the write is kept there), an alarm says so, and the node is
/// seeded anew from the primary.
#[test]
fn a_standby_copy_written_while_tandem_was_stopped_is_quarantined_and_reseeded() {
    let mut p = DbPair::new();
    p.start_streaming(SETTLE);
    run_writer(&p.db(0), 3, 50);
    p.barrier_txid(0);
    p.wait_same_position(Duration::from_secs(10));

    p.pair.stop(1);
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(
            "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); \
             c.execute(\"INSERT INTO t(v) VALUES ('slipped in')\"); c.commit(); c.close()",
        )
        .arg(p.db(1))
        .output()
        .expect("python3 is required by the database tests");
    assert!(out.status.success(), "{out:?}");
    let slipped = rows(&p.db(1));
    p.pair.start(1);
    p.pair.wait_roles(0, SETTLE);
    p.wait_streaming(0, SETTLE);
    let txid = p.barrier_txid(0);
    let (at, _) = p.wait_same_position(Duration::from_secs(10));
    assert_eq!(at, txid);
    assert_eq!(dump(&p.db(0)), dump(&p.db(1)));
    assert_eq!(rows(&p.db(1)), slipped - 1);

    let events = p.pair.events(1);
    let message = events
        .iter()
        .filter_map(|e| e["message"].as_str())
        .find(|m| m.contains("quarantined whole in "))
        .unwrap_or_else(|| panic!("no quarantine event on b: {events:?}"))
        .to_string();
    assert!(message.contains("written outside tandem"), "{message}");
    let dir = message
        .split("quarantined whole in ")
        .nth(1)
        .and_then(|rest| rest.split(';').next())
        .unwrap();
    let kept = std::path::Path::new(dir).join("hydro.db");
    assert_eq!(rows(&kept), slipped, "{message}");
}

/// A barrier is answered from the standby's acknowledgements only while it
/// streams: once its copy is gone (deleted while its tandem was stopped)
/// and is being seeded anew, what it acknowledged before does not count,
/// though nothing was committed since. The barrier returns once the new
/// copy holds everything.
#[test]
fn a_barrier_waits_for_a_standby_seeded_anew_though_nothing_was_committed() {
    let mut p = DbPair::with_settings("manual", "wal_bytes_max = \"64MiB\"");
    p.start_streaming(SETTLE);
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(
            "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); \
             c.execute('CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, v TEXT, b BLOB)'); \
             c.executemany('INSERT INTO t(v, b) VALUES (?, randomblob(1000000))', [('big',)] * 48); \
             c.commit(); c.close()",
        )
        .arg(p.db(0))
        .output()
        .expect("python3 is required by the database tests");
    assert!(out.status.success(), "{out:?}");
    // The CLI: it waits as long as its timeout (a debug build applies and
    // seeds tens of megabytes slower than the HTTP helper waits).
    let barrier = |p: &DbPair| {
        let out = p.pair.cli(
            0,
            &["barrier", "--db", "hydro", "--timeout", "60s", "--json"],
        );
        assert!(out.status.success(), "barrier: {out:?}");
        let body: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        body["databases"][0]["txid"].as_u64().unwrap()
    };
    let txid = barrier(&p);
    p.wait_same_position(Duration::from_secs(10));
    let want = rows(&p.db(0));

    p.pair.stop(1);
    for suffix in ["", "-wal", "-shm", ".tandem-position"] {
        let mut f = p.db(1).into_os_string();
        f.push(suffix);
        let _ = std::fs::remove_file(f);
    }
    p.pair.start(1);
    // Once the primary knows: a barrier called while the standby was away
    // is answered from what it had acknowledged, which it had.
    wait_for(SETTLE, "the primary seeding the standby", || {
        (p.db_status(0)?["mode"] == "seeding").then_some(())
    });
    assert_eq!(barrier(&p), txid);
    assert!(
        p.db(1).exists(),
        "the barrier returned before the standby had a copy"
    );
    assert_eq!(
        rows(&p.db(1)),
        want,
        "the barrier returned before the seed was in"
    );
}
