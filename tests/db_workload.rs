//! Random workloads from external writers in separate processes (Python's
//! sqlite3 module running tests/db_workload.py, and the `sqlite3` shell):
//! schema changes, VACUUM, large blobs, rolled-back transactions, page sizes
//! other than 4096. After quiescing both copies are at the same position,
//! hold the same rows, and `tandem verify` finds them identical. kill -9 of
//! the standby during apply and of the primary during capture, many times:
//! the standby's copy passes `PRAGMA integrity_check` every time.
//!
//! Every run prints its seed; `TANDEM_DB_SEED=N` replays it.
//! `TANDEM_DB_KILLS=N` raises the number of kills for longer runs by hand.

mod common;

use common::db::{integrity, DbPair};
use common::{http, wait_for, which};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const WORKLOAD: &str = include_str!("db_workload.py");
const SETTLE: Duration = Duration::from_secs(30);
/// How long a standby may take to apply what a workload left it: the
/// machine is shared and the build is a debug one.
const CATCH_UP: Duration = Duration::from_secs(300);
/// How long the standby may make no progress at all while it is behind.
const STALL: Duration = Duration::from_secs(60);

/// The run's seed: `TANDEM_DB_SEED`, or one from the clock. Printed at once
/// and again if the test fails.
struct Seed(u64);

impl Seed {
    fn new(test: &str) -> Seed {
        let seed = std::env::var("TANDEM_DB_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64 % 1_000_000_000)
                    .unwrap_or(1)
            });
        eprintln!("{test}: seed {seed} (TANDEM_DB_SEED={seed} replays it)");
        Seed(seed)
    }
}

impl Drop for Seed {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "FAILED with seed {0}: TANDEM_DB_SEED={0} replays it",
                self.0
            );
        }
    }
}

fn env_count(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// A tests/db_workload.py process, killed by its PID if it is still running
/// when dropped.
struct Workload {
    child: Option<Child>,
    stop_file: PathBuf,
}

struct Limits {
    max_tx: u64,
    max_seconds: u64,
    blob_max_bytes: u64,
    /// Pause between steps: a writer at the rate of the reporting software
    /// rather than a flood the standby can never catch up with.
    pause_ms: u64,
}

impl Workload {
    fn spawn(db: &Path, seed: u64, limits: Limits) -> Workload {
        which("python3");
        let stop_file = db.with_extension(format!("stop-{seed}"));
        let _ = std::fs::remove_file(&stop_file);
        let child = Command::new("python3")
            .arg("-c")
            .arg(WORKLOAD)
            .arg(db)
            .arg(seed.to_string())
            .arg(limits.max_tx.to_string())
            .arg(limits.max_seconds.to_string())
            .arg(&stop_file)
            .arg(limits.blob_max_bytes.to_string())
            .arg(limits.pause_ms.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 is required by the database tests");
        Workload {
            child: Some(child),
            stop_file,
        }
    }

    /// Waits for the workload to end by itself (or, with `stop`, after its
    /// current transaction); returns what it did. Fails if it failed.
    fn finish(mut self, stop: bool, within: Duration) -> Value {
        if stop {
            std::fs::write(&self.stop_file, b"stop").unwrap();
        }
        let mut child = self.child.take().unwrap();
        let deadline = Instant::now() + within;
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the workload did not end within {within:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut out = String::new();
        std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut out).unwrap();
        assert!(status.success(), "the workload failed: {status} {out}");
        serde_json::from_str(out.trim())
            .unwrap_or_else(|e| panic!("the workload printed no summary ({e}): {out}"))
    }

    /// kill -9 of the writer, by its PID, in the middle of whatever it does.
    fn kill(mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `count` transactions through the `sqlite3` shell binary, each its own
/// process: rows, schema changes of its own tables, blobs made by
/// `randomblob`, and one VACUUM. Runs while the Python workload writes.
fn shell_workload(db: &Path, rng: &mut StdRng, count: usize) -> usize {
    let shell = which("sqlite3");
    let mut ran = 0;
    for i in 0..count {
        let k: u32 = rng.gen_range(0..100);
        let n: u32 = rng.gen_range(0..1_000_000);
        let sql = if i == count / 2 {
            "VACUUM;".to_string()
        } else if i == 0 || k < 10 {
            format!(
                "BEGIN IMMEDIATE; CREATE TABLE IF NOT EXISTS shell(id INTEGER PRIMARY KEY, v TEXT, b BLOB);\
                 CREATE TABLE IF NOT EXISTS shell_{n}(k TEXT PRIMARY KEY, v) WITHOUT ROWID;\
                 INSERT INTO shell_{n} VALUES ('a', randomblob(100)), ('b', {n}); COMMIT;"
            )
        } else if k < 15 {
            format!(
                "BEGIN IMMEDIATE; CREATE TABLE IF NOT EXISTS shell(id INTEGER PRIMARY KEY, v TEXT, b BLOB);\
                 ALTER TABLE shell ADD COLUMN s{n} INTEGER DEFAULT {k}; COMMIT;"
            )
        } else if k < 25 {
            format!(
                "BEGIN IMMEDIATE; CREATE TABLE IF NOT EXISTS shell(id INTEGER PRIMARY KEY, v TEXT, b BLOB);\
                 INSERT INTO shell(v, b) VALUES ('big {n}', randomblob({}));\
                 DELETE FROM shell WHERE id IN (SELECT id FROM shell WHERE length(b) > 1000 ORDER BY id LIMIT max(0, (SELECT count(*) FROM shell WHERE length(b) > 1000) - 4)); COMMIT;",
                rng.gen_range(50_000..400_000)
            )
        } else {
            format!(
                "BEGIN IMMEDIATE; CREATE TABLE IF NOT EXISTS shell(id INTEGER PRIMARY KEY, v TEXT, b BLOB);\
                 INSERT INTO shell(v, b) VALUES ('v{n}', randomblob({n} % 700)), ('w{n}', NULL);\
                 UPDATE shell SET v = v || 'u' WHERE id % 7 = {n} % 7;\
                 DELETE FROM shell WHERE id % 13 = {n} % 13 AND length(b) < 1000; COMMIT;"
            )
        };
        let out = Command::new(&shell)
            .args(["-bail", "-cmd", ".timeout 60000"])
            .arg(db)
            .arg(&sql)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "sqlite3 shell failed on {sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        ran += 1;
    }
    ran
}

const DIGEST: &str = r#"
import hashlib, sqlite3, sys
c = sqlite3.connect("file:%s?mode=ro" % sys.argv[1], uri=True, timeout=30)
c.execute("BEGIN")
def show(v):
    if isinstance(v, bytes):
        return "blob(%d,%s)" % (len(v), hashlib.sha256(v).hexdigest()[:16])
    return repr(v)
for p in ("page_size", "page_count", "freelist_count", "journal_mode", "schema_version"):
    print(p, c.execute("PRAGMA %s" % p).fetchone()[0])
tables = []
for (kind, name, tbl, sql) in c.execute("SELECT type, name, tbl_name, sql FROM sqlite_schema ORDER BY type, name").fetchall():
    print(kind, name, tbl, sql)
    if kind == "table":
        tables.append(name)
for name in tables:
    rows = 0
    for row in c.execute('SELECT * FROM "%s"' % name).fetchall():
        print(name, "|".join(show(v) for v in row))
        rows += 1
    print("table", name, "rows", rows)
"#;

/// Every schema entry and row of a copy as Python's sqlite3 reads it
/// (blobs as length and hash), and its page size and count: reading it all
/// is also the proof that the copy is readable.
fn digest(db: &Path) -> String {
    let out = Command::new("python3")
        .arg("-c")
        .arg(DIGEST)
        .arg(db)
        .output()
        .expect("python3 is required by the database tests");
    assert!(
        out.status.success(),
        "reading {} failed: {}",
        db.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Both copies read the same, line for line; on a difference, the first
/// lines that differ (a whole digest can be megabytes).
fn assert_same_rows(p: &DbPair, what: &str) -> String {
    let (a, b) = (digest(&p.db(0)), digest(&p.db(1)));
    if a != b {
        let first = a
            .lines()
            .zip(b.lines())
            .position(|(x, y)| x != y)
            .unwrap_or_else(|| a.lines().count().min(b.lines().count()));
        let near = |s: &str| s.lines().skip(first).take(5).collect::<Vec<_>>().join("\n");
        panic!(
            "{what}: the copies differ at line {first} (of {} and {}):\n--- a\n{}\n--- b\n{}",
            a.lines().count(),
            b.lines().count(),
            near(&a),
            near(&b)
        );
    }
    a
}

/// `tandem verify --json` on node i: both copies' sums from their pages at
/// the same txid and the standby's integrity check.
fn assert_verified(p: &DbPair, i: usize) {
    let out = p.pair.cli(
        i,
        &["verify", "--db", "hydro", "--timeout", "60s", "--json"],
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        panic!(
            "verify printed no JSON ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert!(out.status.success(), "verify: {v}");
    let d = &v["databases"][0];
    assert_eq!(d["identical"], true, "{d}");
    assert_eq!(d["standby"]["integrity"], serde_json::json!(["ok"]), "{d}");
    assert_eq!(
        d["primary"]["sum_from_pages"], d["standby"]["sum_from_pages"],
        "{d}"
    );
}

/// `POST /barrier` on node i, in calls of at most 3 s (the harness's HTTP
/// client gives up reading after 5 s) until one succeeds or `within` ends;
/// returns the txid it covered.
fn barrier(p: &DbPair, i: usize, within: Duration) -> u64 {
    let mut last = String::new();
    wait_for(within, "a barrier on the primary", || {
        match http(
            p.pair.control[i],
            "POST",
            "/barrier?db=hydro&timeout_ms=3000",
            None,
        ) {
            Ok((200, body)) => body["databases"][0]["txid"].as_u64(),
            other => {
                last = format!("{other:?}");
                None
            }
        }
    });
    let (code, body) = http(
        p.pair.control[i],
        "POST",
        "/barrier?db=hydro&timeout_ms=3000",
        None,
    )
    .unwrap();
    assert_eq!(code, 200, "barrier: {body} (before: {last})");
    body["databases"][0]["txid"].as_u64().unwrap()
}

/// Quiesced: the standby caught up (on this busy machine that can take a
/// while after megabytes of blobs), a barrier on the primary covers
/// everything, both positions are equal, rows are equal, the standby's copy
/// is sound, and verify agrees.
fn assert_quiesced_equal(p: &DbPair, primary: usize, what: &str) -> (u64, String) {
    let catch_up = Instant::now();
    let behind = txid(p, primary)
        .unwrap_or(0)
        .saturating_sub(txid(p, 1 - primary).unwrap_or(0));
    wait_caught_up(p, primary, what);
    eprintln!(
        "{what}: the standby caught up {behind} transactions in {:?}",
        catch_up.elapsed()
    );
    let txid = barrier(p, primary, SETTLE);
    let (at, _) = p.wait_same_position(SETTLE);
    assert_eq!(at, txid, "{what}: position after the barrier");
    let rows = assert_same_rows(p, what);
    assert_eq!(
        integrity(&p.db(1 - primary)),
        "ok",
        "{what}: standby's integrity"
    );
    assert_verified(p, primary);
    eprintln!(
        "{what}: equal at txid {txid} ({:?} to quiesce and check)",
        catch_up.elapsed()
    );
    (txid, rows)
}

/// Waits until the standby's position equals the primary's. Slowness is
/// not failure on a shared two-core machine: it fails when the standby
/// made no progress for `STALL`, or after `CATCH_UP` in all, and then
/// shows both sides' status.
fn wait_caught_up(p: &DbPair, primary: usize, what: &str) {
    let started = Instant::now();
    let mut last = (None, Instant::now());
    loop {
        let (a, b) = (p.db_status(primary), p.db_status(1 - primary));
        let pos = |s: &Option<Value>| {
            s.as_ref()
                .map(|s| (s["local"]["txid"].as_u64(), s["local"]["sum"].clone()))
        };
        if let (Some((Some(ta), sa)), Some((Some(tb), sb))) = (pos(&a), pos(&b)) {
            if ta == tb && sa == sb {
                return;
            }
            if last.0 != Some(tb) {
                last = (Some(tb), Instant::now());
            }
        }
        let stalled = last.1.elapsed() > STALL;
        if stalled || started.elapsed() > CATCH_UP {
            panic!(
                "{what}: the standby {} (after {:?}):\nprimary: {}\nstandby: {}",
                if stalled {
                    "stalled"
                } else {
                    "did not catch up"
                },
                started.elapsed(),
                a.unwrap_or_default(),
                b.unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn txid(p: &DbPair, i: usize) -> Option<u64> {
    p.db_status(i)?["local"]["txid"].as_u64()
}

/// The workload's summary did every kind of step at least once (its
/// schedule starts with one of each).
fn assert_covered(summary: &Value) {
    for k in [
        "create_table",
        "alter_table",
        "create_index",
        "drop_index",
        "drop_table",
        "blob",
        "blob_rewrite",
        "vacuum",
        "rollback",
        "insert",
        "update",
        "delete",
    ] {
        assert!(
            summary[k].as_u64().unwrap_or(0) > 0,
            "the workload did no {k}: {summary}"
        );
    }
}

#[test]
fn a_random_workload_replicates_exactly() {
    let seed = Seed::new("a_random_workload_replicates_exactly");
    let mut rng = StdRng::seed_from_u64(seed.0);
    let mut p = DbPair::new();
    p.start_streaming(SETTLE);

    let started = Instant::now();
    let workload = Workload::spawn(
        &p.db(0),
        seed.0,
        Limits {
            max_tx: env_count("TANDEM_DB_TX", 400) as u64,
            max_seconds: 60,
            blob_max_bytes: 2 << 20,
            pause_ms: 0,
        },
    );
    // The shell writes at the same time as Python, into the same file.
    let shell = shell_workload(&p.db(0), &mut rng, 40);
    let summary = workload.finish(false, Duration::from_secs(90));
    assert_covered(&summary);
    let (txid, rows) = assert_quiesced_equal(&p, 0, "after the workload");
    eprintln!(
        "workload: {summary}, {shell} shell transactions, txid {txid}, {} lines of rows, {:?}",
        rows.lines().count(),
        started.elapsed()
    );
    assert!(
        rows.contains("table shell rows"),
        "no shell table: the shell wrote nothing?"
    );
}

#[test]
fn a_database_with_another_page_size_replicates() {
    let seed = Seed::new("a_database_with_another_page_size_replicates");
    let mut rng = StdRng::seed_from_u64(seed.0);
    for page_size in [1024u32, 65536] {
        let mut p = DbPair::new();
        // The primary's database exists, in WAL mode with this page size,
        // before tandem starts: the standby is seeded from it. One is made
        // by Python, the other by the sqlite3 shell.
        let db = p.db(0);
        std::fs::create_dir_all(db.parent().unwrap()).unwrap();
        let create = format!(
            "PRAGMA page_size={page_size}; PRAGMA journal_mode=WAL; \
             CREATE TABLE seeded(id INTEGER PRIMARY KEY, b BLOB); \
             INSERT INTO seeded(b) VALUES (randomblob(300000)), (randomblob(10));"
        );
        let out = if page_size == 1024 {
            which("python3");
            Command::new("python3")
                .arg("-c")
                .arg("import sqlite3,sys; c=sqlite3.connect(sys.argv[1], isolation_level=None); c.executescript(sys.argv[2])")
                .arg(&db)
                .arg(&create)
                .output()
                .unwrap()
        } else {
            Command::new(which("sqlite3"))
                .arg(&db)
                .arg(&create)
                .output()
                .unwrap()
        };
        assert!(out.status.success(), "{out:?}");
        p.start_streaming(SETTLE);
        assert_same_rows(&p, &format!("page size {page_size}, seeded"));

        let workload = Workload::spawn(
            &db,
            seed.0 + page_size as u64,
            Limits {
                max_tx: 120,
                max_seconds: 40,
                blob_max_bytes: 600_000,
                pause_ms: 0,
            },
        );
        shell_workload(&db, &mut rng, 10);
        let summary = workload.finish(false, Duration::from_secs(60));
        assert_covered(&summary);
        let what = format!("page size {page_size}");
        let (txid, rows) = assert_quiesced_equal(&p, 0, &what);
        assert!(
            rows.starts_with(&format!("page_size {page_size}\n")),
            "{what}: {}",
            rows.lines().next().unwrap_or("")
        );
        eprintln!("{what}: txid {txid}, {summary}");
    }
}

#[test]
fn the_standby_killed_during_apply_is_consistent_every_time() {
    let seed = Seed::new("the_standby_killed_during_apply_is_consistent_every_time");
    let mut rng = StdRng::seed_from_u64(seed.0);
    let kills = env_count("TANDEM_DB_KILLS", 8);
    let mut p = DbPair::new();
    p.start_streaming(SETTLE);

    let workload = Workload::spawn(
        &p.db(0),
        seed.0,
        Limits {
            max_tx: 1_000_000,
            max_seconds: 30 + 15 * kills as u64,
            blob_max_bytes: 256 << 10,
            pause_ms: 20,
        },
    );
    let mut behind_at_kill = 0;
    for kill in 0..kills {
        let what = format!("kill {kill} of the standby");
        let before = txid(&p, 1).unwrap_or(0);
        let step = rng.gen_range(3..40);
        wait_for(SETTLE, &format!("{what}: the standby applying"), || {
            (txid(&p, 1)? >= before + step).then_some(())
        });
        // A random moment within the apply stream: the delay only spreads
        // the kills over the transactions, nothing waits on it.
        std::thread::sleep(Duration::from_millis(rng.gen_range(0..40)));
        // Then, for a while, a moment when the primary has captured more
        // than the standby applied: the kill the test is about (a standby
        // that keeps up at once is killed all the same after it).
        let until = std::time::Instant::now() + Duration::from_millis(500);
        let (applied, captured) = loop {
            let applied = txid(&p, 1).unwrap_or(0);
            let captured = txid(&p, 0).unwrap_or(0);
            if captured > applied || std::time::Instant::now() >= until {
                break (applied, captured);
            }
        };
        p.pair.kill(1);
        if captured > applied {
            behind_at_kill += 1;
        }

        // Before the restart: the copy as tandem left it is sound and
        // every row of it can be read.
        assert_eq!(integrity(&p.db(1)), "ok", "{what}");
        let rows = digest(&p.db(1));
        assert!(rows.contains("table big rows"), "{what}: {rows:.400}");

        p.pair.start(1);
        p.wait_streaming(0, SETTLE);
        // It resumed from where it was: what it applied before the kill was
        // durable, and it applies on from there.
        let resumed = wait_for(SETTLE, &format!("{what}: the standby's position"), || {
            txid(&p, 1)
        });
        assert!(
            resumed >= applied,
            "{what}: the standby came back at txid {resumed}, before {applied} which it had applied"
        );
        wait_for(
            SETTLE,
            &format!("{what}: the standby applying again"),
            || (txid(&p, 1)? > applied).then_some(()),
        );
    }
    let summary = workload.finish(true, Duration::from_secs(60));
    let (txid, _) = assert_quiesced_equal(&p, 0, "after the kills");
    eprintln!(
        "{kills} kills of the standby, {behind_at_kill} while it was behind the primary; txid {txid}; {summary}"
    );
    assert!(
        behind_at_kill > 0,
        "no kill landed while the standby had transactions to apply"
    );
}

#[test]
fn the_primary_killed_during_capture_resyncs_the_standby() {
    let seed = Seed::new("the_primary_killed_during_capture_resyncs_the_standby");
    let mut rng = StdRng::seed_from_u64(seed.0);
    let kills = env_count("TANDEM_DB_KILLS", 5);
    let mut p = DbPair::new();
    p.start_streaming(SETTLE);

    let mut behind_at_kill = 0;
    for kill in 0..kills {
        let what = format!("kill {kill} of the primary");
        let workload = Workload::spawn(
            &p.db(0),
            seed.0 + kill as u64,
            Limits {
                max_tx: 1_000_000,
                max_seconds: 60,
                blob_max_bytes: 256 << 10,
                pause_ms: 20,
            },
        );
        let before = txid(&p, 0).unwrap_or(0);
        let step = rng.gen_range(10..60);
        wait_for(SETTLE, &format!("{what}: the primary capturing"), || {
            (txid(&p, 0)? >= before + step).then_some(())
        });
        // A random moment within the capture: the delay only spreads the
        // kills, nothing waits on it.
        std::thread::sleep(Duration::from_millis(rng.gen_range(0..40)));
        let captured = txid(&p, 0).unwrap_or(0);
        p.pair.kill(0);
        workload.kill();

        // Both copies are sound before the primary comes back: the
        // primary's with the killed writer's transaction rolled back.
        assert_eq!(integrity(&p.db(0)), "ok", "{what}: the primary's copy");
        assert_eq!(integrity(&p.db(1)), "ok", "{what}: the standby's copy");
        // The standby no longer moves: where it stopped, against what the
        // primary had captured.
        let applied = wait_for(SETTLE, &format!("{what}: the standby's position"), || {
            txid(&p, 1)
        });
        if applied < captured {
            behind_at_kill += 1;
        }

        p.pair.start(0);
        p.pair.wait_roles(0, SETTLE);
        p.wait_streaming(0, Duration::from_secs(60));
        assert_quiesced_equal(&p, 0, &what);
    }
    let (txid, _) = assert_quiesced_equal(&p, 0, "after the kills");
    let resyncs = p
        .pair
        .log(0)
        .lines()
        .filter(|l| l.contains("resyncing the standby by page hashes"))
        .count();
    // How the standby was brought back each time: resent from the queue or
    // by a page-hash resync (also when the restarted primary lost count of
    // what it had shipped: the standby's copy holds only its transactions).
    // Never quarantined: nothing in it is foreign.
    let log = p.pair.log(0);
    let quarantines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("this primary's line never had"))
        .filter(|l| l.contains("ERROR"))
        .collect();
    let reseeds = quarantines.len();
    eprintln!(
        "{kills} kills of the primary, {behind_at_kill} with the standby behind, \
         {resyncs} resyncs by page hashes, {reseeds} quarantines and new seeds; txid {txid}"
    );
    // How each restart placed its copy, to tell why one was quarantined.
    let opened: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("primary at txid"))
        .collect();
    assert_eq!(
        reseeds,
        0,
        "a copy holding only this primary's transactions was quarantined:\n{}\nthe primary's restarts:\n{}",
        quarantines.join("\n"),
        opened.join("\n")
    );
}

/// A resync needs the primary's write lock for a moment (to begin its
/// snapshot at a commit boundary). If a local writer holds it just then,
/// the resync fails with "database is locked"; it must be tried again once
/// the writer lets go, not left failed until the link drops.
#[test]
fn a_resync_blocked_by_a_local_writer_is_tried_again() {
    let mut p = DbPair::with_settings(
        "manual",
        "wal_bytes_max = \"8MiB\"\nspool_bytes_max = \"64KiB\"",
    );
    p.start_streaming(SETTLE);
    common::db::run_writer(&p.db(0), 1, 20);
    barrier(&p, 0, SETTLE);

    // The standby goes away and the primary lets go of more than its spool.
    p.pair.stop(1);
    common::db::run_writer(&p.db(0), 2, 200);
    wait_for(SETTLE, "the primary letting go of the standby", || {
        p.pair
            .log(0)
            .contains("bytes owed to the standby; it will need a resync")
            .then_some(())
    });

    // A local writer holds the write lock while the standby comes back.
    let mut holder = common::db::hold_write_lock(&p.db(0));
    p.pair.start(1);
    wait_for(SETTLE, "a resync refused by the lock", || {
        p.pair
            .log(0)
            .contains("cannot take a resync snapshot")
            .then_some(())
    });
    // The fault is a long local transaction: the writer keeps the lock 3 s
    // more, so that every resync attempt already under way fails too (the
    // delay is the fault's length, nothing waits on it).
    std::thread::sleep(Duration::from_secs(3));
    let _ = holder.kill();
    let _ = holder.wait();

    // The writer let go: the standby is resynced and streams.
    p.wait_streaming(0, SETTLE);
    assert_quiesced_equal(&p, 0, "after the resync");
}
