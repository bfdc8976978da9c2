//! The bounded WAL, whole-binary: with a 1 MiB `wal_bytes_max` and the
//! standby down, a writer that never pauses inserts for three minutes
//! (`TANDEM_WAL_TEST_S` seconds); the primary's `-wal` file, sampled every
//! 50 ms, never grows past the cap (plus slack, see [`REACTION`]). The
//! standby then comes back and catches up, from what the primary kept for
//! it or by a page-hash resync once that was let go, row for row.

mod common;

use common::db::{dump, integrity, run_writer, DbPair};
use common::wait_for;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const SETTLE: Duration = Duration::from_secs(20);
const CAP: u64 = 1 << 20;
/// How long the engine may take, at worst, between the WAL passing its
/// restart threshold (a quarter of the cap) and the log restarting or the
/// file being cut. One attempt: three lock waits (two holds of tandem's
/// write lock, 30 ms each at first, one for the TRUNCATE), two PASSIVE
/// checkpoints and a state file write with their fsyncs (about 10 ms each
/// measured on this kind of VM disk): about 150 ms. A writer that never
/// pauses can win the write lock against the first attempt and the retry
/// 20 ms later (which then waits 60 ms); the third waits 120 ms. 400 ms
/// covers that. The writer adds its rate times this to the WAL meanwhile;
/// that, plus one transaction, is the slack over the cap.
const REACTION: Duration = Duration::from_millis(400);

/// Sustained inserts for `secs` seconds, no pause; prints the row count.
const SUSTAINED: &str = r#"
import os, sqlite3, sys, time
db, secs = sys.argv[1], float(sys.argv[2])
c = sqlite3.connect(db, timeout=30, isolation_level=None)
c.execute("PRAGMA busy_timeout=30000")
c.execute("CREATE TABLE IF NOT EXISTS w(id INTEGER PRIMARY KEY, v TEXT, b BLOB)")
end = time.time() + secs
n = 0
while time.time() < end:
    c.execute("BEGIN IMMEDIATE")
    c.execute("INSERT INTO w(v, b) VALUES (?, ?)", ("r%d" % n, os.urandom(200)))
    c.execute("COMMIT")
    n += 1
print(n)
"#;

fn wal_size(p: &DbPair) -> u64 {
    let mut wal = p.db(0).into_os_string();
    wal.push("-wal");
    std::fs::metadata(wal).map_or(0, |m| m.len())
}

#[test]
fn the_wal_stays_under_its_cap_with_the_standby_down_and_it_catches_up() {
    let mut p = DbPair::with_settings("manual", "wal_bytes_max = \"1MiB\"");
    p.start_streaming(SETTLE);
    run_writer(&p.db(0), 1, 20);
    let standby_at = p.barrier_txid(0);

    p.pair.stop(1);
    let writer = Command::new("python3")
        .arg("-c")
        .arg(SUSTAINED)
        .arg(p.db(0))
        .arg(std::env::var("TANDEM_WAL_TEST_S").unwrap_or_else(|_| "180".into()))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 is required by the database tests");
    // Sample the WAL's size while the writer runs (a measurement, not a wait).
    let started = Instant::now();
    let mut max = 0u64;
    let mut samples = 0u64;
    let mut writer = writer;
    let status = loop {
        max = max.max(wal_size(&p));
        samples += 1;
        if let Some(s) = writer.try_wait().unwrap() {
            break s;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "the writer failed");
    let mut rows = String::new();
    std::io::Read::read_to_string(&mut writer.stdout.take().unwrap(), &mut rows).unwrap();
    let rows: u64 = rows.trim().parse().unwrap();
    eprintln!(
        "{rows} transactions in {:?}; WAL at most {max} bytes over {samples} samples",
        started.elapsed()
    );
    assert!(
        rows > 1000,
        "the writer did too little to test anything: {rows}"
    );
    // The writer's rate, in WAL bytes: every page it wrote went through the
    // WAL as a frame (page + 24 bytes). The frames per transaction are taken
    // from what the standby is owed (bytes over transactions, counted on
    // across a let-go of the queue), times the transactions the writer
    // committed.
    let s = p.db_status(0).unwrap();
    let queued_frames = s["lag_bytes"].as_u64().unwrap() / 4096;
    let queued_tx = s["lag_transactions"].as_u64().unwrap().max(1);
    let frames_per_tx = queued_frames as f64 / queued_tx as f64;
    let wal_rate = rows as f64 * frames_per_tx * 4120.0 / started.elapsed().as_secs_f64();
    let one_tx = (frames_per_tx.ceil() as u64).max(1) * 4120;
    let slack = one_tx + (wal_rate * REACTION.as_secs_f64()) as u64;
    eprintln!(
        "WAL rate {:.1} MB/s, one transaction {one_tx} bytes: slack {slack} bytes; \
         {} resets, {} cuts, attempts that failed: {}",
        wal_rate / 1e6,
        s["wal_resets"],
        s["wal_truncations"],
        s["wal_reset_failures"]
    );
    assert!(
        max <= CAP + slack,
        "the WAL reached {max} bytes, over its cap of {CAP} (+{slack} slack): {s}"
    );
    assert!(s["wal_resets"].as_u64().unwrap() > 0, "{s}");
    // Status says what it does for the standby that is away.
    assert!(
        s["mode"] == "spooling" || s["mode"] == "needs resync",
        "{s}"
    );
    assert!(s["spool_bytes_max"].as_u64().is_some(), "{s}");
    // The lag counts from where the standby stopped, spool let go or not.
    let local = s["local"]["txid"].as_u64().unwrap();
    assert_eq!(s["lag_transactions"], local - standby_at, "{s}");
    assert!(
        s["lag_ms"].as_u64().unwrap() >= started.elapsed().as_millis() as u64 / 2,
        "{s}"
    );
    // The same in the metrics (one snapshot: the capture may have read on
    // since the status above).
    let metrics = p.pair.metrics(0);
    let value = |series: &str| -> u64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("{series} not in {metrics}"))
    };
    let local = value(r#"tandem_database_txid{node="a",database="hydro",side="local"}"#);
    let lag = value(r#"tandem_database_lag_transactions{node="a",database="hydro"}"#);
    assert_eq!(lag, local - standby_at, "{metrics}");
    assert_eq!(s["wal_bytes_max"], CAP, "{s}");

    // The standby comes back and catches up.
    p.pair.start(1);
    p.wait_streaming(0, Duration::from_secs(60));
    // Each transaction is applied and fsynced on its own: give it time.
    let end = p.db_status(0).unwrap()["local"]["txid"].as_u64().unwrap();
    wait_for(Duration::from_secs(300), "the standby caught up", || {
        (p.db_status(1)?["local"]["txid"].as_u64()? >= end).then_some(())
    });
    let txid = p.barrier_txid(0);
    let (at, _) = p.wait_same_position(Duration::from_secs(10));
    assert_eq!(at, txid);
    assert!(txid >= 20 + rows, "txid {txid} covers every transaction");
    assert_eq!(dump(&p.db(0)), dump(&p.db(1)));
    assert_eq!(integrity(&p.db(1)), "ok");
    wait_for(SETTLE, "the WAL still under its cap", || {
        (wal_size(&p) <= CAP).then_some(())
    });
}

/// With the standby streaming, a writer that never pauses still sees the
/// log restart: tandem holds writers off for the standby's acknowledgement
/// round trip (at most 20 ms, `RESTART_HOLD_MAX`), the WAL stays under its
/// cap, and the copies match.
#[test]
fn with_the_standby_streaming_the_log_restarts_under_a_writer_that_never_pauses() {
    // Large enough that the writer takes a while (about 100 ms) to fill the
    // log from the restart threshold to the cut.
    const STREAMING_CAP: u64 = 8 << 20;
    let mut p = DbPair::with_settings("manual", "wal_bytes_max = \"8MiB\"");
    p.start_streaming(SETTLE);
    let mut writer = Command::new("python3")
        .arg("-c")
        .arg(SUSTAINED)
        .arg(p.db(0))
        .arg("5")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 is required by the database tests");
    // Sampled while the writer runs (a measurement, not a wait).
    let mut max = 0u64;
    let mut holds_ms = Vec::new();
    let status = loop {
        max = max.max(wal_size(&p));
        if let Some(c) = p.db_status(0).map(|s| s["last_checkpoint"].clone()) {
            if c["mode"] == "restart" && c["standby_acknowledged_all"] == true {
                if let Some(h) = c["writers_held_ms"].as_f64() {
                    holds_ms.push(h);
                }
            }
        }
        if let Some(s) = writer.try_wait().unwrap() {
            break s;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "the writer failed");
    let mut rows = String::new();
    std::io::Read::read_to_string(&mut writer.stdout.take().unwrap(), &mut rows).unwrap();
    let rows: u64 = rows.trim().parse().unwrap();
    let s = p.db_status(0).unwrap();
    eprintln!(
        "{rows} transactions; WAL at most {max} bytes; {} resets, {} cuts, failures {}; holds seen (ms): {holds_ms:?}",
        s["wal_resets"], s["wal_truncations"], s["wal_reset_failures"]
    );
    assert!(
        rows > 500,
        "the writer did too little to test anything: {rows}"
    );
    assert!(
        !holds_ms.is_empty(),
        "no log restart with the standby acknowledging was seen: {s}"
    );
    // Each restart let writers go once acknowledged: within the 20 ms after
    // which it gives up, plus the last checkpoint and the pin's move (two
    // fsyncs, slow on a loaded CI disk). The lock is measured, not the
    // state file saved after it.
    assert!(
        holds_ms.iter().all(|h| *h > 0.0 && *h < 20.0 + 30.0),
        "{holds_ms:?}"
    );
    // The log restarted (at a quarter of the cap), and the file was cut
    // (at half of it) should a restart come too late: under the cap.
    assert!(s["wal_resets"].as_u64().unwrap() >= 3, "{s}");
    assert!(max <= STREAMING_CAP, "the WAL reached {max} bytes: {s}");
    assert_eq!(s["mode"], "streaming", "{s}");

    let txid = p.barrier_txid(0);
    let (at, _) = p.wait_same_position(Duration::from_secs(10));
    assert_eq!(at, txid);
    assert_eq!(dump(&p.db(0)), dump(&p.db(1)));
    assert_eq!(integrity(&p.db(1)), "ok");
}
