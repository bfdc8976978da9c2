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
    p.pair.start(0);
    p.pair.start(1);
    p.pair.wait_roles(0, Duration::from_secs(20));
    p.wait_streaming(0, Duration::from_secs(20));

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

/// A standby that is behind what a restarted primary can ship (its queue of
/// unacknowledged transactions was lost with the process) is reported as
/// needing a resync, with an alarm, and the barrier says why at once.
#[test]
fn a_standby_behind_a_restarted_primary_is_reported_needing_a_resync() {
    let mut p = DbPair::new();
    p.pair.start(0);
    p.pair.start(1);
    p.pair.wait_roles(0, Duration::from_secs(20));
    p.wait_streaming(0, Duration::from_secs(20));
    common::db::run_writer(&p.db(0), 1, 20);
    p.barrier_txid(0);

    p.pair.stop(1);
    common::db::run_writer(&p.db(0), 2, 30);
    p.pair.stop(0);
    p.pair.start(0);
    p.pair.start(1);
    p.pair.wait_roles(0, Duration::from_secs(20));
    let s = wait_for(
        Duration::from_secs(20),
        "needs resync on the primary",
        || {
            let s = p.db_status(0)?;
            (s["mode"] == "needs resync").then_some(s)
        },
    );
    assert!(
        s["error"].as_str().unwrap().contains("needs a resync"),
        "{s}"
    );
    let (code, body) = p.barrier(0, 2000);
    assert_eq!(code, 409, "{body}");
    let alarms = p.pair.status(0).unwrap()["alarms"].clone();
    assert!(alarms.to_string().contains("resync"), "{alarms}");
}
