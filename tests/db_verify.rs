//! `tandem verify`, whole-binary: after a workload (and while one runs) both
//! copies are reported identical from either node; bytes of the standby's
//! file changed behind SQLite's back (bit rot, a stray `dd`) are reported,
//! with the pages that differ.

mod common;

use common::db::{run_writer, spawn_writer, DbPair};
use serde_json::Value;
use std::process::Stdio;
use std::time::Duration;

const SETTLE: Duration = Duration::from_secs(20);

/// `tandem verify --json` on node i: (exit code, report).
fn verify(p: &DbPair, i: usize) -> (i32, Value) {
    let out = p.pair.cli(
        i,
        &["verify", "--db", "hydro", "--timeout", "30s", "--json"],
    );
    let code = out.status.code().unwrap_or(-1);
    let body = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        panic!(
            "verify printed no JSON (exit {code}): {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (code, body)
}

#[test]
fn both_copies_are_identical_after_and_during_a_workload() {
    let mut p = DbPair::new();
    p.start_streaming(SETTLE);
    run_writer(&p.db(0), 1, 200);

    // On the primary and on the standby (which asks the primary).
    for i in [0, 1] {
        let (code, v) = verify(&p, i);
        assert_eq!(code, 0, "verify on node {i}: {v}");
        let d = &v["databases"][0];
        assert_eq!(d["identical"], true, "{d}");
        assert!(d["txid"].as_u64().unwrap() >= 200, "{d}");
        assert_eq!(d["standby"]["integrity"], serde_json::json!(["ok"]), "{d}");
        assert_eq!(
            d["primary"]["sum_from_pages"], d["standby"]["sum_from_pages"],
            "{d}"
        );
        assert_eq!(d["differing_pages"], serde_json::json!([]), "{d}");
    }

    // While a writer goes on: the standby checks its copy at exactly the
    // primary's snapshot txid (the request travels behind that transaction).
    let mut writer = spawn_writer(&p.db(0), 2, 400, 2.0);
    for round in 0..3 {
        let (code, v) = verify(&p, round % 2);
        assert_eq!(code, 0, "verify during writes, round {round}: {v}");
    }
    assert!(writer.wait().unwrap().success());

    // Human output.
    let out = p.pair.cli(0, &["verify"]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("database hydro: IDENTICAL at txid"), "{text}");
}

#[test]
fn bytes_changed_in_the_standby_file_are_reported_with_their_pages() {
    let mut p = DbPair::new();
    p.start_streaming(SETTLE);
    run_writer(&p.db(0), 3, 100);
    p.barrier_txid(0);

    // A new standby copy, seeded from the primary's image: its pages are in
    // the database file itself, not in a log.
    p.pair.stop(1);
    for suffix in ["", "-wal", "-shm", ".tandem-position"] {
        let mut f = p.db(1).into_os_string();
        f.push(suffix);
        let _ = std::fs::remove_file(f);
    }
    p.pair.start(1);
    p.pair.wait_roles(0, SETTLE);
    p.wait_streaming(0, SETTLE);
    p.wait_same_position(Duration::from_secs(10));

    // Bytes near the end of page 2 (row payloads of the first table) change
    // on disk, behind SQLite's back.
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(p.db(1))
            .unwrap();
        f.seek(SeekFrom::Start(4096 + 4000)).unwrap();
        f.write_all(b"ROT!").unwrap();
        f.sync_all().unwrap();
    }

    // verify says exactly what differs, from either node.
    for i in [0, 1] {
        let (code, v) = verify(&p, i);
        assert_eq!(code, 1, "verify on node {i} must report a difference: {v}");
        let d = &v["databases"][0];
        assert_eq!(d["identical"], false, "{d}");
        assert_eq!(d["complete"], true, "{d}");
        let differences = d["differences"].to_string();
        assert!(differences.contains("written outside tandem"), "{d}");
        assert!(differences.contains("the files differ"), "{d}");
        assert_ne!(
            d["primary"]["sum_from_pages"], d["standby"]["sum_from_pages"],
            "{d}"
        );
        // The database is small: the pages that differ are in its first
        // range of 256 pages.
        let ranges = d["differing_pages"].as_array().unwrap();
        assert_eq!(ranges.len(), 1, "{d}");
        assert_eq!(ranges[0]["first"], 1, "{d}");
    }
    let out = p.pair.cli(0, &["verify"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("database hydro: DIFFERENT"), "{text}");
    assert!(text.contains("pages that differ: 1-"), "{text}");
}

/// A verify started while the standby is away is sent once it is back (and
/// again on a new connection, or after the full outbox refused it), not
/// dropped, and still right behind its snapshot's transaction: found under
/// load, where a `DbVerify` the full outbox refused left `tandem verify`
/// waiting its whole timeout.
#[test]
fn a_verify_started_while_the_standby_is_away_completes_when_it_returns() {
    let mut p = DbPair::new();
    p.start_streaming(SETTLE);
    run_writer(&p.db(0), 1, 50);
    p.barrier_txid(0);
    p.pair.stop(1);

    let mut verify = p
        .pair
        .cli_command(
            0,
            &["verify", "--db", "hydro", "--timeout", "60s", "--json"],
        )
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    common::wait_for(SETTLE, "the verify under way", || {
        p.pair.log(0).contains("verify 1 at txid").then_some(())
    });
    // Written after the verify's snapshot: the standby, back, checks its
    // copy before it applies these (the verify travels behind the
    // snapshot's last transaction, not behind everything queued).
    run_writer(&p.db(0), 2, 50);
    p.pair.start(1);
    let status = common::wait_for(Duration::from_secs(90), "the verify's end", || {
        verify.try_wait().unwrap()
    });
    let mut out = Vec::new();
    std::io::Read::read_to_end(&mut verify.stdout.take().unwrap(), &mut out).unwrap();
    let v: Value = serde_json::from_slice(&out)
        .unwrap_or_else(|_| panic!("verify printed no JSON: {}", String::from_utf8_lossy(&out)));
    assert!(status.success(), "{v}");
    assert_eq!(v["databases"][0]["identical"], true, "{v}");
}
