//! The WAL reader against logs written by real SQLite (Python's sqlite3
//! module in a child process): replaying what it reads onto the database as
//! it was before must give, page for page, the database SQLite produces by
//! checkpointing the same log; and the rolling checksum must equal the
//! checksum of that file. The workload covers inserts, updates, deletes, a
//! schema change, a blob spanning overflow pages, VACUUM, and a log restarted
//! after a checkpoint; page sizes 512, 4096 and 65536.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tandem_sync::dbsum::{DbSum, PageHashes};
use tandem_sync::wal::{WalHeader, WalReader, WAL_HEADER_BYTES};

const WRITER: &str = r#"
import os, random, shutil, sqlite3, sys
d, ps = sys.argv[1], int(sys.argv[2])
db = os.path.join(d, "p.db")
c = sqlite3.connect(db, isolation_level=None)
c.execute(f"PRAGMA page_size={ps}")
c.execute("PRAGMA journal_mode=WAL")
c.execute("PRAGMA wal_autocheckpoint=0")
c.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT, b BLOB)")
c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
shutil.copy(db, os.path.join(d, "base.db"))
rnd = random.Random(int(sys.argv[3]))
def work(n):
    for _ in range(n):
        c.execute("BEGIN")
        for _ in range(rnd.randint(1, 6)):
            k = rnd.random()
            if k < 0.6:
                c.execute("INSERT INTO t(v, b) VALUES (?, ?)",
                          ("x" * rnd.randint(1, 300), os.urandom(rnd.randint(0, 200))))
            elif k < 0.85:
                c.execute("UPDATE t SET v = ? WHERE id = (SELECT id FROM t ORDER BY random() LIMIT 1)",
                          ("u" * rnd.randint(1, 500),))
            else:
                c.execute("DELETE FROM t WHERE id = (SELECT id FROM t ORDER BY random() LIMIT 1)")
        c.execute("COMMIT")
work(30)
c.execute("CREATE INDEX t_v ON t(v)")
c.execute("INSERT INTO t(v, b) VALUES ('big', ?)", (os.urandom(3 * ps + 100),))
shutil.copy(db + "-wal", os.path.join(d, "1.wal"))
# Everything is backfilled, so the next write restarts the log.
c.execute("PRAGMA wal_checkpoint(PASSIVE)")
work(20)
c.execute("DELETE FROM t WHERE id % 2 = 0")
c.execute("ALTER TABLE t ADD COLUMN w INTEGER DEFAULT 5")
c.execute("VACUUM")
work(5)
shutil.copy(db + "-wal", os.path.join(d, "2.wal"))
c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
shutil.copy(db, os.path.join(d, "final.db"))
c.close()
"#;

struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("tandem-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs the Python writer to completion, killing it by PID if it outlives
/// its deadline.
fn run_python(script: &str, args: &[String]) {
    let mut child = Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(args)
        .stdin(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run python3 ({e}); install it: apt-get install -y python3")
        });
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match child.try_wait().expect("wait for python3") {
            Some(status) => {
                assert!(status.success(), "python3 writer failed: {status}");
                return;
            }
            None if Instant::now() > deadline => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("python3 writer did not finish within 60 s");
            }
            None => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

fn pages(path: &Path, page_size: usize) -> Vec<Vec<u8>> {
    let bytes = std::fs::read(path).expect("read database file");
    assert_eq!(bytes.len() % page_size, 0, "{path:?} is whole pages");
    bytes.chunks(page_size).map(<[u8]>::to_vec).collect()
}

fn sum_of(db: &[Vec<u8>]) -> DbSum {
    DbSum::of_pages(db.iter().enumerate().map(|(i, p)| (i as u32 + 1, &p[..])))
}

fn replay(page_size: u32, seed: u64) {
    let dir = TempDir::new(&format!("walsqlite-{page_size}-{seed}"));
    run_python(
        WRITER,
        &[
            dir.0.display().to_string(),
            page_size.to_string(),
            seed.to_string(),
        ],
    );
    let ps = page_size as usize;
    let mut db = pages(&dir.0.join("base.db"), ps);
    let mut table = PageHashes::of_pages(
        ps,
        db.iter().enumerate().map(|(i, p)| (i as u32 + 1, &p[..])),
    );
    assert_eq!(table.sum(), sum_of(&db));

    let mut reader = WalReader::new();
    let mut headers = Vec::new();
    let mut count = 0;
    for wal in ["1.wal", "2.wal"] {
        let bytes = std::fs::read(dir.0.join(wal)).expect("read wal copy");
        let head: &[u8; WAL_HEADER_BYTES] = bytes.first_chunk().expect("wal has a header");
        let header = WalHeader::parse(head).expect("SQLite writes valid headers");
        assert_eq!(header.page_size, page_size);
        headers.push(header);
        let txs = reader.feed(0, &bytes).expect("feed");
        assert!(!txs.is_empty(), "{wal} holds transactions");
        for tx in txs {
            count += 1;
            let predicted = table.sum_after(&tx);
            for (pgno, page) in &tx.pages {
                assert_eq!(page.len(), ps);
                let i = *pgno as usize - 1;
                if db.len() <= i {
                    db.resize(i + 1, vec![0; ps]);
                }
                db[i].clone_from(page);
            }
            db.resize(tx.db_pages_after_commit as usize, vec![0; ps]);
            assert_eq!(table.apply(&tx), predicted);
        }
    }
    assert_ne!(
        headers[0].salts, headers[1].salts,
        "the second log is a restarted generation"
    );
    assert!(count > 50, "read {count} transactions");

    let fin = pages(&dir.0.join("final.db"), ps);
    assert_eq!(db.len(), fin.len(), "page count after replay");
    for (i, (mine, theirs)) in db.iter().zip(&fin).enumerate() {
        assert!(mine == theirs, "page {} differs after replay", i + 1);
    }
    assert_eq!(table.sum(), sum_of(&fin));
    assert_eq!(table.page_count() as usize, fin.len());
}

#[test]
fn replaying_sqlite_logs_of_4096_byte_pages_gives_the_checkpointed_database() {
    replay(4096, 1);
}

#[test]
fn replaying_sqlite_logs_of_512_byte_pages_gives_the_checkpointed_database() {
    replay(512, 2);
}

#[test]
fn replaying_sqlite_logs_of_65536_byte_pages_gives_the_checkpointed_database() {
    replay(65536, 3);
}
