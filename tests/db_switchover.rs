//! Database switchover, whole-binary: with the writer paused around it, a
//! switchover drains and confirms the database, the new primary continues
//! the same txid sequence, the old primary becomes its standby without a
//! resync, and the rows stay identical both ways.

mod common;

use common::db::{dump, integrity, run_writer, DbPair};
use std::time::Duration;

fn switchover(p: &DbPair, from: usize) {
    let out = p.pair.cli(from, &["switchover", "--yes"]);
    assert!(
        out.status.success(),
        "switchover from {}: {}{}",
        p.pair.names[from],
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("drained: 1 resource"), "{text}");
}

#[test]
fn switchover_both_ways_keeps_rows_and_continues_txids() {
    let mut p = DbPair::new();
    p.start_streaming(Duration::from_secs(20));

    run_writer(&p.db(0), 1, 150);
    let first = p.barrier_txid(0);
    assert!(first >= 150);

    // a -> b.
    switchover(&p, 0);
    p.pair.wait_roles(1, Duration::from_secs(20));
    p.wait_streaming(1, Duration::from_secs(20));
    let (at, _) = p.wait_same_position(Duration::from_secs(5));
    assert_eq!(at, first, "the new primary starts where the old one ended");
    assert_eq!(dump(&p.db(0)), dump(&p.db(1)));

    run_writer(&p.db(1), 2, 120);
    let second = p.barrier_txid(1);
    assert!(
        second >= first + 120,
        "txids continue: {first} then {second}"
    );
    p.wait_same_position(Duration::from_secs(5));
    assert_eq!(dump(&p.db(0)), dump(&p.db(1)));
    assert_eq!(integrity(&p.db(0)), "ok");

    // b -> a, asked on the standby (relayed to the primary).
    switchover(&p, 0);
    p.pair.wait_roles(0, Duration::from_secs(20));
    p.wait_streaming(0, Duration::from_secs(20));
    run_writer(&p.db(0), 3, 100);
    let third = p.barrier_txid(0);
    assert!(
        third >= second + 100,
        "txids continue: {second} then {third}"
    );
    p.wait_same_position(Duration::from_secs(5));
    assert_eq!(dump(&p.db(0)), dump(&p.db(1)));
    assert_eq!(integrity(&p.db(1)), "ok");
    let a = p.pair.status(0).unwrap();
    assert!(
        a["alarms"].as_array().unwrap().is_empty(),
        "no alarm after two switchovers: {a}"
    );
    // Without a full resync: the only seed is the first one, of the empty
    // standby, and no page-hash resync ran either way.
    let (log_a, log_b) = (p.pair.log(0), p.pair.log(1));
    assert_eq!(log_a.matches("seeding the standby").count(), 1, "{log_a}");
    assert_eq!(log_b.matches("seeding the standby").count(), 0, "{log_b}");
    for log in [&log_a, &log_b] {
        assert!(!log.contains("resyncing the standby"), "{log}");
    }
}
