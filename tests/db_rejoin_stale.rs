//! A primary killed while its capture's record (the last pin) lags behind
//! what the standby acknowledged, holding one transaction the standby never
//! received: on rejoin after the failover its copy diverged and must be
//! quarantined whole, never overwritten by a resync.
//!
//! The lag is made on purpose: a local writer holds the write lock, so the
//! capture cannot move its pin (and record its position) while the standby
//! acknowledges transactions committed after the log restarted; the same
//! writer then commits one transaction while the standby is stopped, and
//! the primary is killed.

mod common;

use common::db::{run_writer, DbPair};
use common::wait_for;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

const SETTLE: Duration = Duration::from_secs(30);

/// Commits five transactions (the first restarts the log), then at once
/// holds the write lock inside `BEGIN IMMEDIATE` with one insert; commits
/// that when a line arrives on stdin, then says so.
const HOLDER: &str = r#"
import sqlite3, sys
c = sqlite3.connect(sys.argv[1], timeout=5, isolation_level=None)
for i in range(5):
    c.execute("INSERT INTO t(v) VALUES ('acknowledged')")
c.execute("BEGIN IMMEDIATE")
c.execute("INSERT INTO t(v) VALUES ('only on the old primary')")
print("held", flush=True)
sys.stdin.readline()
c.execute("COMMIT")
print("committed", flush=True)
"#;

#[test]
fn a_diverged_copy_behind_its_capture_record_is_quarantined_not_resynced() {
    let mut p = DbPair::new();
    p.start_streaming(SETTLE);
    run_writer(&p.db(0), 1, 20);
    let first = p.barrier_txid(0);
    // A checkpoint backfilled everything and recorded the pin there: the
    // next commit restarts the log.
    wait_for(SETTLE, "a checkpoint at the acknowledged end", || {
        let c = p.db_status(0)?["last_checkpoint"].clone();
        (c["upto_txid"].as_u64()? >= first && c["log_may_restart"] == true).then_some(())
    });

    // Acknowledged transactions the capture's record will not know of.
    let mut holder = Command::new("python3")
        .arg("-c")
        .arg(HOLDER)
        .arg(p.db(0))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 is required by this test");
    let mut out = BufReader::new(holder.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "held");
    line.clear();
    // While the lock is held no pin moves; the standby acknowledged all.
    let acked = p.barrier_txid(0);
    assert_eq!(acked, first + 5);

    // The standby stops (a stopped process would still receive into its
    // socket buffer, and apply that when resumed); the held transaction
    // commits on a alone, and a dies at once.
    p.pair.stop(1);
    writeln!(holder.stdin.as_mut().unwrap()).unwrap();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "committed");
    p.pair.kill(0);
    let _ = holder.wait();

    // b is promoted by hand and serves on.
    p.pair.start(1);
    wait_for(SETTLE, "b's control API", || p.pair.status(1));
    let promoted = p.pair.cli(1, &["promote", "--force"]);
    assert!(promoted.status.success(), "{promoted:?}");
    wait_for(SETTLE, "b primary", || {
        (p.pair.role(1)? == "primary").then_some(())
    });
    run_writer(&p.db(1), 3, 5);

    // a rejoins: its copy holds a transaction b never had.
    p.pair.start(0);
    p.pair.wait_roles(1, SETTLE);
    p.wait_streaming(1, Duration::from_secs(60));
    let events = p.pair.events(0);
    let log = p.pair.log(0) + &p.pair.log(1);
    let message = events
        .iter()
        .filter_map(|e| e["message"].as_str())
        .find(|m| m.contains("quarantined whole in "))
        .unwrap_or_else(|| {
            panic!(
                "a's copy held a transaction beyond txid {acked} that b never received, \
                 yet it was not quarantined:\n{log}"
            )
        });
    // The quarantined copy still holds it.
    let dir = message
        .split("quarantined whole in ")
        .nth(1)
        .and_then(|rest| rest.split(';').next())
        .unwrap();
    let kept = std::path::Path::new(dir).join("hydro.db");
    let out = Command::new("python3")
        .arg("-c")
        .arg("import sqlite3,sys; print(sqlite3.connect(sys.argv[1]).execute(\"SELECT count(*) FROM t WHERE v = 'only on the old primary'\").fetchone()[0])")
        .arg(&kept)
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "1",
        "{message}: {out:?}"
    );
}
