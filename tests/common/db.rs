//! Helpers for the database tests: a pair with one `[[database]]` under a
//! per-node path prefix, a Python sqlite3 writer, and row dumps and
//! integrity checks of either copy through Python's sqlite3 (a connection
//! other than tandem's, as local software would use).

use super::{http, wait_for, which, Options, Pair};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The database's path in the config; each node sees it under its prefix.
pub const DB_PATH: &str = "/srv/hydro/hydro.db";

pub struct DbPair {
    pub pair: Pair,
    pub roots: tempfile::TempDir,
}

impl DbPair {
    /// A pair in manual failover mode.
    pub fn new() -> DbPair {
        DbPair::with_failover("manual")
    }

    /// A pair in the given failover mode ("auto" or "manual").
    pub fn with_failover(failover: &'static str) -> DbPair {
        DbPair::with_settings(failover, "wal_bytes_max = \"8MiB\"")
    }

    /// A pair whose `[[database]]` has these extra settings (TOML lines).
    pub fn with_settings(failover: &'static str, settings: &str) -> DbPair {
        let roots = tempfile::Builder::new()
            .prefix("tandem-db-")
            .tempdir()
            .unwrap();
        let prefix = |n: &str| format!("path_prefix = \"{}/{n}\"", roots.path().display());
        let pair = Pair::new(Options {
            failover,
            extra: format!("\n[[database]]\nname = \"hydro\"\npath = \"{DB_PATH}\"\n{settings}\n"),
            node_extra: [prefix("a"), prefix("b")],
            ..Options::default()
        });
        DbPair { pair, roots }
    }

    /// Node i's copy of the database.
    pub fn db(&self, i: usize) -> PathBuf {
        self.roots
            .path()
            .join(self.pair.names[i])
            .join(DB_PATH.trim_start_matches('/'))
    }

    /// The database's status object on node i.
    pub fn db_status(&self, i: usize) -> Option<Value> {
        let s = self.pair.status(i)?;
        s["databases"].as_array()?.first().cloned()
    }

    /// Start both nodes and wait until node 0 is primary and both stream.
    pub fn start_streaming(&mut self, within: Duration) {
        self.pair.start(0);
        self.pair.start(1);
        self.pair.wait_roles(0, within);
        self.wait_streaming(0, within);
    }

    /// Wait until both nodes stream: node `primary` captures, the other
    /// applies, and the primary knows where the standby stands.
    pub fn wait_streaming(&self, primary: usize, within: Duration) {
        wait_for(within, "database hydro streaming on both nodes", || {
            let p = self.db_status(primary)?;
            let s = self.db_status(1 - primary)?;
            (p["side"] == "primary"
                && p["mode"] == "streaming"
                && s["side"] == "standby"
                && s["mode"] == "streaming")
                .then_some(())
        });
    }

    /// `POST /barrier` on node i: (HTTP code, body).
    pub fn barrier(&self, i: usize, timeout_ms: u64) -> (u16, Value) {
        http(
            self.pair.control[i],
            "POST",
            &format!("/barrier?db=hydro&timeout_ms={timeout_ms}"),
            None,
        )
        .unwrap()
    }

    /// Barrier on the primary, then both copies' positions must be equal.
    pub fn barrier_txid(&self, primary: usize) -> u64 {
        let (code, body) = self.barrier(primary, 20_000);
        assert_eq!(code, 200, "barrier failed: {body}");
        body["databases"][0]["txid"].as_u64().unwrap()
    }

    /// Both nodes report the same position (txid and checksum).
    pub fn wait_same_position(&self, within: Duration) -> (u64, String) {
        wait_for(within, "both copies at the same txid and checksum", || {
            let a = self.db_status(0)?;
            let b = self.db_status(1)?;
            let (ta, tb) = (a["local"]["txid"].as_u64()?, b["local"]["txid"].as_u64()?);
            let (sa, sb) = (a["local"]["sum"].as_str()?, b["local"]["sum"].as_str()?);
            (ta == tb && sa == sb).then(|| (ta, sa.to_string()))
        })
    }
}

const WRITER: &str = r#"
import os, random, sqlite3, sys, time
db, seed, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
pause_ms = float(sys.argv[4]) if len(sys.argv) > 4 else 0
rnd = random.Random(seed)
c = sqlite3.connect(db, timeout=30, isolation_level=None)
c.execute("PRAGMA busy_timeout=30000")
c.execute("CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, v TEXT, b BLOB)")
for i in range(count):
    c.execute("BEGIN IMMEDIATE")
    for _ in range(rnd.randint(1, 5)):
        k = rnd.random()
        if k < 0.55:
            c.execute("INSERT INTO t(v, b) VALUES (?, ?)", ("v%d" % rnd.random(), os.urandom(rnd.randint(0, 600))))
        elif k < 0.8:
            c.execute("UPDATE t SET v = ? WHERE id = (SELECT id FROM t ORDER BY random() LIMIT 1)", ("u" * rnd.randint(1, 900),))
        else:
            c.execute("DELETE FROM t WHERE id = (SELECT id FROM t ORDER BY random() LIMIT 1)")
    c.execute("COMMIT")
    if i == count // 3:
        c.execute("CREATE TABLE IF NOT EXISTS s%d(k TEXT PRIMARY KEY, n INTEGER)" % seed)
        c.execute("ALTER TABLE t ADD COLUMN w%d INTEGER DEFAULT 7" % seed)
        c.execute("INSERT INTO s%d VALUES ('x', 1)" % seed)
    if i == count // 2:
        # A blob larger than a page: overflow pages.
        c.execute("INSERT INTO t(v, b) VALUES ('big', ?)", (os.urandom(3 * 4096 + 10),))
    if pause_ms:
        time.sleep(pause_ms / 1000.0)
c.close()
"#;

/// A Python writer doing `count` random transactions on `db`.
pub fn spawn_writer(db: &Path, seed: u64, count: u64, pause_ms: f64) -> Child {
    which("python3");
    Command::new("python3")
        .arg("-c")
        .arg(WRITER)
        .arg(db)
        .arg(seed.to_string())
        .arg(count.to_string())
        .arg(pause_ms.to_string())
        .stdin(Stdio::null())
        .spawn()
        .expect("python3 is required by the database tests (apt-get install python3)")
}

pub fn run_writer(db: &Path, seed: u64, count: u64) {
    let status = spawn_writer(db, seed, count, 0.0).wait().unwrap();
    assert!(status.success(), "python writer failed: {status}");
}

const DUMP: &str = r#"
import sqlite3, sys
c = sqlite3.connect("file:%s?mode=ro" % sys.argv[1], uri=True, timeout=30)
c.execute("BEGIN")
for (name, sql) in c.execute("SELECT name, sql FROM sqlite_schema WHERE type = 'table' ORDER BY name").fetchall():
    print("table", name, sql)
    for row in c.execute('SELECT * FROM "%s" ORDER BY rowid' % name):
        print(repr(row))
"#;

/// Every table and row of a copy, as Python's sqlite3 reads it.
pub fn dump(db: &Path) -> String {
    let out = Command::new("python3")
        .arg("-c")
        .arg(DUMP)
        .arg(db)
        .output()
        .expect("python3 is required by the database tests");
    assert!(
        out.status.success(),
        "dump of {} failed: {}",
        db.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `PRAGMA integrity_check` of a copy.
pub fn integrity(db: &Path) -> String {
    let out = Command::new("python3")
        .arg("-c")
        .arg(
            "import sqlite3,sys; c=sqlite3.connect('file:%s?mode=ro' % sys.argv[1], uri=True, timeout=30); \
             print('\\n'.join(r[0] for r in c.execute('PRAGMA integrity_check')))",
        )
        .arg(db)
        .output()
        .expect("python3 is required by the database tests");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

const TRY_WRITE: &str = r#"
import sqlite3, sys
c = sqlite3.connect(sys.argv[1], timeout=float(sys.argv[2]), isolation_level=None)
try:
    c.execute("CREATE TABLE IF NOT EXISTS probe(v TEXT)")
    c.execute("INSERT INTO probe VALUES ('local writer')")
except sqlite3.Error as e:
    print(e)
    sys.exit(3)
"#;

/// One write to `db` from another process, as local software would do it,
/// with a 200 ms busy timeout: `Err` with SQLite's message when refused.
/// For a write that must be refused: it is not waited for long.
pub fn try_write(db: &Path) -> Result<(), String> {
    write_within(db, 0.2)
}

/// One write to `db` from another process with Python's default busy
/// timeout (5 s), for a write that must go through: tandem takes the write
/// lock for moments (a pin move), which a loaded machine can stretch past
/// 200 ms.
pub fn write(db: &Path) -> Result<(), String> {
    write_within(db, 5.0)
}

fn write_within(db: &Path, busy_timeout_s: f64) -> Result<(), String> {
    let out = Command::new("python3")
        .arg("-c")
        .arg(TRY_WRITE)
        .arg(db)
        .arg(busy_timeout_s.to_string())
        .output()
        .expect("python3 is required by the database tests");
    match out.status.code() {
        Some(0) => Ok(()),
        Some(3) => Err(String::from_utf8_lossy(&out.stdout).trim().to_string()),
        _ => panic!(
            "the python writer failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

const HOLD_LOCK: &str = r#"
import sqlite3, sys
c = sqlite3.connect(sys.argv[1], timeout=5, isolation_level=None)
c.execute("BEGIN IMMEDIATE")
c.execute("CREATE TABLE IF NOT EXISTS held(v TEXT)")
c.execute("INSERT INTO held VALUES ('never committed')")
print("held", flush=True)
sys.stdin.read()
"#;

/// A local writer that holds `db`'s write lock inside an open transaction
/// until it is killed (its transaction is then rolled back). Returns once
/// it holds the lock; stop it with `Child::kill` and `wait`.
pub fn hold_write_lock(db: &Path) -> Child {
    use std::io::BufRead;
    let mut child = Command::new("python3")
        .arg("-c")
        .arg(HOLD_LOCK)
        .arg(db)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 is required by the database tests");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "held", "the lock holder did not start");
    child
}
