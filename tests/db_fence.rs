//! The fence follows the role, whole-binary: local software may commit to a
//! node's copy only while that node is primary. A primary stopped (SIGSTOP)
//! long enough for its standby to fail over resumes fenced, and from then on
//! a write from another process is refused with "database is locked": first
//! by tandem's fence while it is fenced, then by the replica once it follows
//! the new primary as its standby.

mod common;

use common::db::{dump, hold_write_lock, integrity, run_writer, try_write, write, DbPair};
use common::wait_for;
use nix::sys::signal::Signal;
use std::time::Duration;

const SETTLE: Duration = Duration::from_secs(20);

/// A write to node i's copy is refused because the write lock is held.
fn assert_locked_out(p: &DbPair, i: usize, when: &str) {
    match try_write(&p.db(i)) {
        Ok(()) => panic!(
            "{when}: a local writer committed to {}'s copy: {:?}",
            p.pair.names[i],
            p.pair.status(i)
        ),
        Err(e) => assert!(
            e.contains("database is locked"),
            "{when}: refused, but not by the lock: {e}"
        ),
    }
}

/// Wait until node i is not primary and says its copy is locked; returns
/// its role.
fn wait_fenced(p: &DbPair, i: usize, what: &str) -> String {
    wait_for(SETTLE, what, || {
        let s = p.pair.status(i)?;
        let role = s["role"].as_str()?.to_string();
        let db = s["databases"].as_array()?.first()?.clone();
        (role != "primary" && role != "demoting" && db["fenced"] == true).then_some(role)
    })
}

fn start_streaming(p: &mut DbPair) {
    p.start_streaming(SETTLE);
    run_writer(&p.db(0), 1, 30);
    // The primary's copy is open to local writers.
    write(&p.db(0)).expect("the primary's copy takes writes");
    p.barrier_txid(0);
    p.wait_same_position(Duration::from_secs(5));
    let s = p.db_status(0).unwrap();
    assert_eq!(s["fenced"], false, "the primary is not fenced: {s}");
}

#[test]
fn a_primary_resumed_after_a_failover_locks_out_local_writers() {
    let mut p = DbPair::with_failover("auto");
    start_streaming(&mut p);

    p.pair.signal(0, Signal::SIGSTOP);
    wait_for(SETTLE, "b promoted", || {
        (p.pair.role(1)? == "primary").then_some(())
    });
    p.pair.signal(0, Signal::SIGCONT);

    let role = wait_fenced(&p, 0, "a fenced or standby, its copy locked");
    assert!(role == "fenced" || role == "standby", "a is {role}");
    assert_locked_out(&p, 0, "a resumed");

    // a follows b as its standby: still locked out, now by the replica.
    p.pair.wait_roles(1, SETTLE);
    p.wait_streaming(1, SETTLE);
    wait_fenced(&p, 0, "a standby, its copy locked");
    assert_locked_out(&p, 0, "a standby of b");

    // The new primary takes writes, and they reach a.
    write(&p.db(1)).expect("b's copy takes writes");
    p.barrier_txid(1);
    p.wait_same_position(Duration::from_secs(5));
    assert_eq!(dump(&p.db(0)), dump(&p.db(1)));
    assert_eq!(integrity(&p.db(0)), "ok");
}

/// A primary whose (armed) standby stops answering fences itself when its
/// lease lapses: it cannot tell a dead standby from a cut cable behind which
/// the standby promotes. With b stopped, a stays fenced, keeps its capture,
/// and its copy stays locked all that time. When b is back, whichever node
/// ends up primary takes writes and the other is locked out.
#[test]
fn a_primary_fenced_by_a_lapsed_lease_locks_out_local_writers() {
    let mut p = DbPair::with_failover("auto");
    start_streaming(&mut p);

    p.pair.signal(1, Signal::SIGSTOP);
    let role = wait_fenced(&p, 0, "a fenced, its copy locked");
    assert_eq!(role, "fenced");
    let s = p.db_status(0).unwrap();
    assert_eq!(
        s["side"], "primary",
        "a keeps its capture while fenced: {s}"
    );
    assert_locked_out(&p, 0, "a fenced");
    // It was the engine's fence, taken in the fenced role, that locked it.
    wait_for(SETTLE, "a's log: fenced while fenced", || {
        p.pair
            .log(0)
            .contains("database hydro: fenced (fenced): tandem holds the write lock")
            .then_some(())
    });
    assert_eq!(p.pair.role(0).as_deref(), Some("fenced"));
    assert_locked_out(&p, 0, "a still fenced");
    let s = p.pair.status(0).unwrap();
    assert!(
        s["alarms"]
            .as_array()
            .unwrap()
            .iter()
            .all(|a| a["kind"] != "database"),
        "no database alarm: nobody held the lock: {s}"
    );

    p.pair.signal(1, Signal::SIGCONT);
    let primary = wait_for(SETTLE, "a primary again, or b promoted", || {
        let (a, b) = (p.pair.role(0)?, p.pair.role(1)?);
        match (a.as_str(), b.as_str()) {
            ("primary", "standby") => Some(0),
            ("standby", "primary") => Some(1),
            _ => None,
        }
    });
    eprintln!("after b resumed: {} primary", p.pair.names[primary]);
    p.pair.wait_roles(primary, SETTLE);
    p.wait_streaming(primary, SETTLE);
    assert_locked_out(&p, 1 - primary, "the standby");
    // The primary's copy takes writes again (a: the fence was lifted when
    // it regained its lease), and they reach the standby.
    wait_for(SETTLE, "the primary's copy unlocked", || {
        (p.db_status(primary)?["fenced"] == false).then_some(())
    });
    write(&p.db(primary)).expect("the primary's copy takes writes");
    p.barrier_txid(primary);
    p.wait_same_position(Duration::from_secs(5));
    assert_eq!(dump(&p.db(0)), dump(&p.db(1)));
}

/// A local writer that holds the write lock when the primary must fence
/// delays the fence: the node raises an alarm and keeps trying, and takes
/// the lock the moment the writer lets go (its transaction rolled back).
#[test]
fn a_writer_holding_the_lock_delays_the_fence_with_an_alarm() {
    let mut p = DbPair::with_failover("auto");
    start_streaming(&mut p);

    let mut holder = hold_write_lock(&p.db(0));
    p.pair.signal(0, Signal::SIGSTOP);
    wait_for(SETTLE, "b promoted", || {
        (p.pair.role(1)? == "primary").then_some(())
    });
    p.pair.signal(0, Signal::SIGCONT);

    let alarm = wait_for(SETTLE, "a's fence alarm", || {
        let s = p.pair.status(0)?;
        assert_ne!(s["role"], "primary", "{s}");
        s["alarms"]
            .as_array()?
            .iter()
            .find(|a| {
                a["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("local writers must be locked out"))
            })
            .cloned()
    });
    assert_eq!(alarm["kind"], "database", "{alarm}");

    // The writer gives up: its transaction rolls back, the fence takes hold.
    let _ = holder.kill();
    let _ = holder.wait();
    wait_for(SETTLE, "a fenced, its alarm cleared", || {
        let s = p.pair.status(0)?;
        let db = s["databases"].as_array()?.first()?.clone();
        let alarmed = s["alarms"]
            .to_string()
            .contains("local writers must be locked out");
        (db["fenced"] == true && !alarmed).then_some(())
    });
    assert_locked_out(&p, 0, "a fenced after the writer left");

    // a then follows b; the rolled-back transaction left no trace.
    p.pair.wait_roles(1, SETTLE);
    p.wait_streaming(1, SETTLE);
    assert_locked_out(&p, 0, "a standby of b");
    write(&p.db(1)).expect("b's copy takes writes");
    p.barrier_txid(1);
    p.wait_same_position(Duration::from_secs(5));
    assert_eq!(dump(&p.db(0)), dump(&p.db(1)));
    assert!(!dump(&p.db(0)).contains("never committed"));
}
