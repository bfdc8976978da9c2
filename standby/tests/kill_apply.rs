//! kill -9 of a process applying transactions, many times: every time the
//! copy reopens consistent (`PRAGMA integrity_check`, checksum from scratch)
//! at a recorded position no older than the last acknowledged one, and the
//! next process resumes from there to the end.
//!
//! The applying process is this test binary re-executed with an environment
//! variable naming the work directory.

mod common;

use common::{rows, Source};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use tandem_standby::Replica;
use tandem_sync::dbsum::{DbSum, PageHashes, TxId};
use tandem_sync::wal::{Transaction, WalReader};
use tandem_sync::Epoch;

const CHILD_ENV: &str = "TANDEM_KILL_APPLY_DIR";
const PAGE: usize = 4096;

/// The transactions in `dir/src.wal` over `dir/base.db`, with their sums.
fn shipped(dir: &Path) -> Vec<(TxId, Transaction, DbSum)> {
    let base = std::fs::read(dir.join("base.db")).unwrap();
    let mut table = PageHashes::of_pages(
        PAGE,
        base.chunks(PAGE)
            .enumerate()
            .map(|(i, p)| (i as u32 + 1, p)),
    );
    let wal = std::fs::read(dir.join("src.wal")).unwrap();
    WalReader::new()
        .feed(0, &wal)
        .unwrap()
        .into_iter()
        .enumerate()
        .map(|(i, tx)| {
            let sum = table.apply(&tx);
            (TxId(i as u64 + 1), tx, sum)
        })
        .collect()
}

#[test]
fn kill_apply_child() {
    let Some(dir) = std::env::var_os(CHILD_ENV) else {
        return; // Only does work when re-executed by the parent test.
    };
    let dir = Path::new(&dir);
    let mut rep = Replica::open(&dir.join("replica.db")).unwrap();
    for (txid, tx, sum) in shipped(dir) {
        if txid > rep.position().txid {
            rep.apply(Epoch(1), txid, &tx, sum).unwrap();
            println!("applied {}", txid.0);
        }
    }
    println!("finished");
}

#[test]
fn kill_9_during_apply_leaves_a_consistent_copy_that_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let src = Source::new(dir, PAGE);
    std::fs::copy(&src.path, dir.join("base.db")).unwrap();
    for i in 0..40u32 {
        src.conn
            .execute(
                "INSERT INTO t(v, b) VALUES (?1, ?2)",
                (format!("r{i}"), vec![i as u8; 60_000 + i as usize * 997]),
            )
            .unwrap();
        if i % 7 == 3 {
            src.conn
                .execute("DELETE FROM t WHERE id % 4 = 1", [])
                .unwrap();
        }
    }
    let mut wal = src.path.as_os_str().to_owned();
    wal.push("-wal");
    std::fs::copy(&wal, dir.join("src.wal")).unwrap();
    let all = shipped(dir);
    let last = all.last().unwrap().0;
    let (at, image) = src.image_of(&dir.join("base.db"));
    Replica::create(&dir.join("replica.db"), PAGE as u32)
        .unwrap()
        .seed(at, &image)
        .unwrap();

    let exe = std::env::current_exe().unwrap();
    let mut kills = 0;
    for round in 0..40 {
        let mut child = Command::new(&exe)
            .args([
                "kill_apply_child",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let mut acked = TxId(0);
        let mut finished = false;
        let wanted = 1 + round % 3;
        let mut seen = 0;
        for line in BufReader::new(out).lines() {
            let line = line.unwrap();
            if let Some(n) = line.strip_prefix("applied ") {
                acked = TxId(n.parse().unwrap());
                seen += 1;
                if seen == wanted {
                    break;
                }
            }
            if line == "finished" {
                finished = true;
                break;
            }
        }
        // SIGKILL, by this child's PID; it may be mid-apply or past the end.
        let _ = child.kill();
        let _ = child.wait();
        kills += 1;
        let rep = Replica::open(&dir.join("replica.db")).unwrap();
        let pos = rep.position();
        assert!(
            pos.txid >= acked,
            "round {round}: at {} after acking {}",
            pos.txid,
            acked
        );
        let expected = all
            .iter()
            .find(|(t, _, _)| *t == pos.txid)
            .map_or(at.sum, |(_, _, s)| *s);
        assert_eq!(pos.sum, expected, "round {round}");
        let v = rep.verify().unwrap();
        assert!(v.is_ok(), "round {round}: {v:?}");
        if finished || pos.txid == last {
            break;
        }
    }
    let rep = Replica::open(&dir.join("replica.db")).unwrap();
    assert_eq!(rep.position().txid, last, "after {kills} kills");
    assert_eq!(rows(&src.path), rows(rep.path()));
}
