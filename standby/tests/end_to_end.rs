//! A Python process writes random transactions into a primary database while
//! a Capture reads them and a Replica applies them; after quiescing both
//! copies hold the same rows and the kept checksum equals the one computed
//! from scratch on both files.

use rusqlite::{Connection, OpenFlags};
use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tandem_primary::{Capture, OpenOutcome};
use tandem_standby::Replica;
use tandem_sync::dbsum::{DbSum, PageHashes};
use tandem_sync::Epoch;

const WRITER: &str = r#"
import os, random, sqlite3, sys
db, seed = sys.argv[1], int(sys.argv[2])
rnd = random.Random(seed)
# Default autocheckpoint on purpose: tandem's pin must keep it harmless.
c = sqlite3.connect(db, timeout=10, isolation_level=None)
c.execute("CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, v TEXT, b BLOB)")
for i in range(250):
    c.execute("BEGIN IMMEDIATE")
    for _ in range(rnd.randint(1, 5)):
        k = rnd.random()
        if k < 0.55:
            c.execute("INSERT INTO t(v, b) VALUES (?, ?)", ("v%d" % rnd.random(), os.urandom(rnd.randint(0, 500))))
        elif k < 0.8:
            c.execute("UPDATE t SET v = ? WHERE id = (SELECT id FROM t ORDER BY random() LIMIT 1)", ("u" * rnd.randint(1, 900),))
        else:
            c.execute("DELETE FROM t WHERE id = (SELECT id FROM t ORDER BY random() LIMIT 1)")
    c.execute("COMMIT")
    if i == 80:
        c.execute("CREATE TABLE s(k TEXT PRIMARY KEY, n INTEGER)")
        c.execute("ALTER TABLE t ADD COLUMN w INTEGER DEFAULT 7")
    if i == 120:
        c.execute("INSERT INTO t(v, b) VALUES ('big', ?)", (os.urandom(3 * 4096 + 10),))
    if i == 160:
        c.execute("INSERT INTO s VALUES ('x', 1)")
    if i == 200:
        c.execute("DELETE FROM t WHERE id % 3 = 0")
        c.execute("VACUUM")
c.close()
"#;

fn dump(path: &Path) -> Vec<String> {
    let c = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    let mut out = Vec::new();
    for q in [
        "SELECT name || ':' || ifnull(sql, '') FROM sqlite_schema ORDER BY name",
        "SELECT id || ':' || ifnull(v,'') || ':' || hex(ifnull(b,'')) || ':' || ifnull(w, '') FROM t ORDER BY id",
        "SELECT k || ':' || n FROM s ORDER BY k",
    ] {
        let mut s = c.prepare(q).unwrap();
        out.extend(
            s.query_map([], |r| r.get::<_, String>(0))
                .unwrap()
                .map(Result::unwrap),
        );
    }
    out
}

fn sum_from_scratch(path: &Path) -> DbSum {
    let c = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    let ps: i64 = c.query_row("PRAGMA page_size", [], |r| r.get(0)).unwrap();
    let mut t = PageHashes::new(ps as usize);
    let mut s = c
        .prepare("SELECT pgno, data FROM sqlite_dbpage ORDER BY pgno")
        .unwrap();
    let mut rows = s.query([]).unwrap();
    while let Some(r) = rows.next().unwrap() {
        let data: Vec<u8> = r.get(1).unwrap();
        t.set(r.get(0).unwrap(), &data);
    }
    t.sum()
}

#[test]
fn a_python_writer_is_mirrored_row_for_row() {
    let dir = tempfile::tempdir().unwrap();
    let primary = dir.path().join("hydro.db");
    // A database in rollback-journal mode: Capture switches it to WAL.
    Connection::open(&primary)
        .unwrap()
        .execute_batch("PRAGMA page_size=4096; CREATE TABLE seed(x); INSERT INTO seed VALUES (1);")
        .unwrap();
    let (mut capture, outcome) =
        Capture::open(&primary, &dir.path().join("hydro.capture"), Epoch(1)).unwrap();
    assert_eq!(outcome, OpenOutcome::Fresh);
    let mut replica = Replica::create(&dir.path().join("replica.db"), 4096).unwrap();
    replica
        .seed(capture.position(), &capture.baseline_image().unwrap())
        .unwrap();

    let mut child = Command::new("python3")
        .arg("-c")
        .arg(WRITER)
        .arg(&primary)
        .arg("11")
        .stdin(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run python3 ({e}); install it: apt-get install -y python3")
        });
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut applied = 0;
    let mut checkpoints = 0;
    let mut done = false;
    loop {
        let exited = match child.try_wait().unwrap() {
            Some(status) => {
                assert!(status.success(), "python writer failed: {status}");
                true
            }
            None => false,
        };
        let batch = capture.poll().unwrap();
        for c in &batch {
            replica.apply(Epoch(1), c.txid, &c.tx, c.sum).unwrap();
            applied += 1;
        }
        // The standby acknowledged everything it applied.
        let outcome = capture.checkpoint(replica.position().txid).unwrap();
        checkpoints += usize::from(outcome.pin_moved);
        if done && batch.is_empty() {
            break;
        }
        done = exited && batch.is_empty();
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("not quiesced within 60 s");
        }
        if batch.is_empty() {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    assert!(applied >= 250, "applied {applied}");
    assert!(
        checkpoints > 0,
        "the pin moved and the log was checkpointed"
    );
    assert_eq!(capture.position(), replica.position());
    assert_eq!(dump(&primary), dump(replica.path()));
    assert_eq!(sum_from_scratch(&primary), capture.position().sum);
    assert_eq!(sum_from_scratch(replica.path()), replica.position().sum);
    let v = replica.verify().unwrap();
    assert!(v.is_ok(), "{v:?}");
    // Once everything is acknowledged, everything is checkpointed.
    let last = capture.checkpoint(replica.position().txid).unwrap();
    assert_eq!(last.backfilled_frames, last.wal_frames, "{last:?}");
}

/// A large transaction grows the copy's WAL file; once it is checkpointed
/// the file is cut back to the limit instead of staying at that size.
#[test]
fn the_copys_wal_file_is_cut_back_after_a_large_apply() {
    let dir = tempfile::tempdir().unwrap();
    let primary = dir.path().join("hydro.db");
    let conn = Connection::open(&primary).unwrap();
    conn.execute_batch("PRAGMA page_size=4096; CREATE TABLE big(b BLOB);")
        .unwrap();
    let (mut capture, _) =
        Capture::open(&primary, &dir.path().join("hydro.capture"), Epoch(1)).unwrap();
    let mut replica = Replica::create(&dir.path().join("replica.db"), 4096).unwrap();
    replica
        .seed(capture.position(), &capture.baseline_image().unwrap())
        .unwrap();
    const LIMIT: u64 = 1 << 20;
    replica.limit_wal(LIMIT).unwrap();
    // About 16 MiB in one transaction, then a small one.
    conn.execute_batch("BEGIN").unwrap();
    for _ in 0..64 {
        conn.execute("INSERT INTO big VALUES (zeroblob(262144))", [])
            .unwrap();
    }
    conn.execute_batch("COMMIT; INSERT INTO big VALUES (x'01');")
        .unwrap();
    let mut wal_max = 0;
    let wal = dir.path().join("replica.db-wal");
    let deadline = Instant::now() + Duration::from_secs(30);
    while replica.position().txid.0 < 2 {
        for c in capture.poll_all().unwrap() {
            replica.apply(Epoch(1), c.txid, &c.tx, c.sum).unwrap();
            wal_max = wal_max.max(fs::metadata(&wal).map_or(0, |m| m.len()));
        }
        assert!(Instant::now() < deadline, "not applied within 30 s");
    }
    assert!(
        wal_max > 16 << 20,
        "the large apply went through the WAL: {wal_max}"
    );
    let now = fs::metadata(&wal).unwrap().len();
    assert!(now <= LIMIT, "the copy's WAL file stayed at {now} bytes");
    assert_eq!(sum_from_scratch(replica.path()), capture.position().sum);
}
