//! The write lock passes from the fence to the replica with no gap: a local
//! writer that keeps trying to commit to the primary's copy (as a report
//! sender does, with a busy timeout) while a switchover demotes that node
//! must not slip a commit in between the fence letting go of SQLite's write
//! lock and the replica taking it. Such a commit would be lost (it is past
//! the drained position, so the new primary never gets it) and the old
//! primary's copy would no longer match the position it is adopted at.

mod common;

use common::db::{run_writer, DbPair};
use common::{wait_for, which};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const SETTLE: Duration = Duration::from_secs(20);

/// Inserts into `w`, one autocommit statement every 5 ms; a refusal
/// ("database is locked") is retried half a millisecond later, so that any
/// moment the write lock is free is found. Bounded in count and time.
const INSISTENT_WRITER: &str = r#"
import sqlite3, sys, time
c = sqlite3.connect(sys.argv[1], timeout=0, isolation_level=None)
deadline = time.monotonic() + 60
done = refused = 0
while done + refused < 1000000 and time.monotonic() < deadline:
    try:
        # In the loop too: tandem takes the write lock for moments.
        c.execute("CREATE TABLE IF NOT EXISTS w(n INTEGER)")
        c.execute("INSERT INTO w VALUES (?)", (done,))
        done += 1
        time.sleep(0.005)
    except sqlite3.OperationalError:
        refused += 1
        time.sleep(0.0005)
"#;

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn rows(p: &DbPair, i: usize) -> Option<u64> {
    let out = Command::new("python3")
        .arg("-c")
        .arg(
            "import sqlite3,sys; c=sqlite3.connect('file:%s?mode=ro' % sys.argv[1], uri=True, timeout=5); \
             print(c.execute('SELECT count(*) FROM w').fetchone()[0])",
        )
        .arg(p.db(i))
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

#[test]
fn a_writer_waiting_on_the_fence_never_slips_into_the_demoted_copy() {
    which("python3");
    let mut p = DbPair::new();
    p.start_streaming(SETTLE);
    run_writer(&p.db(0), 1, 10);

    for round in 0..3 {
        let (from, to) = (round % 2, 1 - round % 2);
        let writer = Killed(
            Command::new("python3")
                .arg("-c")
                .arg(INSISTENT_WRITER)
                .arg(p.db(from))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .spawn()
                .expect("python3 is required by this test"),
        );
        wait_for(SETTLE, "the writer committing", || {
            (rows(&p, from)? > 0).then_some(())
        });
        let out = p.pair.cli(from, &["switchover", "--yes"]);
        assert!(
            out.status.success(),
            "switchover {round}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        // The writer keeps trying all along: the demoted node must become a
        // streaming standby all the same.
        p.pair.wait_roles(to, SETTLE);
        p.wait_streaming(to, SETTLE);
        drop(writer);
        p.barrier_txid(to);
        p.wait_same_position(Duration::from_secs(5));
        assert_eq!(rows(&p, 0), rows(&p, 1), "round {round}");
        let s = p.db_status(from).unwrap();
        assert_eq!(s["mode"], "streaming", "round {round}: {s}");
    }
}
