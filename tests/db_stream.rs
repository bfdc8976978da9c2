//! Database streaming, whole-binary: a new pair seeds the empty standby, a
//! Python writer's random transactions (inserts, updates, deletes, a schema
//! change, a blob larger than a page) are mirrored row for row, and the
//! barrier covers them. On the standby the barrier is refused.

mod common;

use common::db::{dump, integrity, run_writer, spawn_writer, DbPair};
use common::wait_for;
use std::time::Duration;

#[test]
fn a_python_writer_is_mirrored_and_the_barrier_covers_it() {
    let mut p = DbPair::new();
    p.start_streaming(Duration::from_secs(20));

    run_writer(&p.db(0), 1, 300);
    // The CLI barrier, as a sender would call it.
    let out = p.pair.cli(
        0,
        &["barrier", "--db", "hydro", "--timeout", "20s", "--json"],
    );
    assert!(out.status.success(), "barrier: {out:?}");
    let body: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let txid = body["databases"][0]["txid"].as_u64().unwrap();
    assert!(txid >= 300, "the barrier's txid {txid} covers 300 writes");

    // The standby acknowledged it: both sides report it, rows are equal.
    let (at, sum) = p.wait_same_position(Duration::from_secs(5));
    assert_eq!(at, txid);
    assert_eq!(sum, body["databases"][0]["sum"].as_str().unwrap());
    assert_eq!(dump(&p.db(0)), dump(&p.db(1)));
    assert!(dump(&p.db(1)).contains("table s1"));
    assert_eq!(integrity(&p.db(1)), "ok");
    let s = p.db_status(0).unwrap();
    assert_eq!(s["lag_transactions"], 0, "{s}");

    // A second barrier with nothing new returns at once at the same txid.
    assert_eq!(p.barrier_txid(0), txid);

    // On the standby: refused, pointing at the primary.
    let (code, body) = p.barrier(1, 1000);
    assert_eq!(code, 409, "{body}");
    assert!(
        body.to_string().contains("call the barrier on the primary"),
        "{body}"
    );
    let out = p.pair.cli(1, &["barrier", "--timeout", "1s"]);
    assert!(!out.status.success());

    // Human status shows the database.
    let out = p.pair.cli(0, &["status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("hydro") && text.contains("STREAMING"),
        "{text}"
    );

    // With the standby away, a barrier over a new commit times out: exit
    // code 3 from the CLI, 504 over HTTP.
    p.pair.stop(1);
    run_writer(&p.db(0), 301, 1);
    let out = p.pair.cli(0, &["barrier", "--timeout", "300ms"]);
    assert_eq!(out.status.code(), Some(3), "barrier: {out:?}");
    let (code, body) = p.barrier(0, 300);
    assert_eq!(code, 504, "{body}");
}

/// The nice value of each thread of process `pid` named `name`.
fn nice_of_threads(pid: i32, name: &str) -> Vec<i64> {
    let mut out = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let stat = std::fs::read_to_string(t.unwrap().path().join("stat")).unwrap_or_default();
        // pid (comm) state ...: fields counted after the comm's ')'.
        let Some((head, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        if head.split_once('(').map(|(_, comm)| comm) == Some(name) {
            out.push(rest.split_whitespace().nth(16).unwrap().parse().unwrap());
        }
    }
    out
}

/// The database engines yield the CPU to the application: their threads
/// run at nice 5 on both nodes, the rest of tandem (heartbeats, the
/// replication link) at the normal priority.
#[test]
fn the_database_engines_run_at_a_lower_priority_than_the_rest() {
    let mut p = DbPair::new();
    p.start_streaming(Duration::from_secs(20));
    for i in 0..2 {
        let pid = p.pair.pid(i).as_raw();
        assert_eq!(nice_of_threads(pid, "db-hydro"), vec![5], "node {i}");
        let workers = nice_of_threads(pid, "tokio-rt-worker");
        assert!(!workers.is_empty(), "node {i}: no tokio worker threads");
        assert!(workers.iter().all(|n| *n == 0), "node {i}: {workers:?}");
    }
}

/// A streaming standby acknowledges at most every 20 ms, and whoever waits
/// for it asks (a barrier): here nobody asks, and the stream stops. What it
/// left must still be acknowledged, or the primary would report a lag and
/// keep the transactions (and their WAL frames) for ever.
#[test]
fn the_end_of_a_stream_is_acknowledged_without_a_barrier() {
    let mut p = DbPair::new();
    p.start_streaming(Duration::from_secs(20));
    let start = p.db_status(0).unwrap()["local"]["txid"].as_u64().unwrap();
    // About 200 transactions a second: several within each acknowledgement.
    // The writer commits 150 and 5 more (its table, a schema change in
    // three, an overflow blob).
    let mut writer = spawn_writer(&p.db(0), 7, 150, 5.0);
    assert!(writer.wait().unwrap().success());
    let end = start + 155;
    wait_for(
        Duration::from_secs(10),
        "the primary's status shows every transaction acknowledged",
        || {
            let s = p.db_status(0)?;
            let acked = s["peer"]["txid"].as_u64()?;
            (s["local"]["txid"] == end && acked == end && s["lag_transactions"] == 0).then_some(())
        },
    );
    let (at, _) = p.wait_same_position(Duration::from_secs(5));
    assert_eq!(at, end);
    assert_eq!(dump(&p.db(0)), dump(&p.db(1)));
}

#[test]
fn an_existing_database_seeds_an_empty_standby_while_it_is_written() {
    let mut p = DbPair::new();
    // About 24 MiB of rows before tandem starts: the seed takes many chunks.
    std::fs::create_dir_all(p.db(0).parent().unwrap()).unwrap();
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(
            "import os,sqlite3,sys; c=sqlite3.connect(sys.argv[1]); \
             c.execute('CREATE TABLE big(id INTEGER PRIMARY KEY, b BLOB)'); \
             [c.execute('INSERT INTO big(b) VALUES (?)', (os.urandom(100000),)) for _ in range(240)]; \
             c.commit()",
        )
        .arg(p.db(0))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    p.pair.start(0);
    p.pair.start(1);
    p.pair.wait_roles(0, Duration::from_secs(20));
    // Writes go on while the standby is seeded.
    let mut writer = common::db::spawn_writer(&p.db(0), 5, 200, 1.0);
    p.wait_streaming(0, Duration::from_secs(60));
    assert!(writer.wait().unwrap().success());
    let txid = p.barrier_txid(0);
    let (at, _) = p.wait_same_position(Duration::from_secs(5));
    assert_eq!(at, txid);
    assert_eq!(dump(&p.db(0)), dump(&p.db(1)));
    assert_eq!(integrity(&p.db(1)), "ok");
    assert!(p.pair.log(0).contains("seeding the standby"));
}
