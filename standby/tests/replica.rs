//! The replica applying real SQLite transactions: same rows and checksum as
//! the source, truncation, the write lock between applies, refusal of
//! transactions that do not fit, and recovery of the position on reopen.

mod common;

use common::{rows, Source};
use rusqlite::Connection;
use tandem_standby::replica::position_path;
use tandem_standby::{Replica, ReplicaError};
use tandem_sync::dbsum::{DbSum, TxId};
use tandem_sync::Epoch;

#[test]
fn sqlite_dbpage_is_compiled_into_the_bundled_sqlite() {
    let c = Connection::open_in_memory().unwrap();
    let n: i64 = c
        .query_row("SELECT count(*) FROM sqlite_dbpage", [], |r| r.get(0))
        .expect("sqlite_dbpage missing: LIBSQLITE3_FLAGS in .cargo/config.toml did not reach libsqlite3-sys");
    assert!(n >= 0);
}

fn seeded(dir: &std::path::Path, page_size: usize) -> (Source, Replica) {
    let src = Source::new(dir, page_size);
    let (at, image) = src.image();
    let mut rep = Replica::create(&dir.join("replica.db"), page_size as u32).unwrap();
    rep.seed(at, &image).unwrap();
    assert_eq!(rep.position().sum, src.sum());
    (src, rep)
}

fn ship(src: &mut Source, rep: &mut Replica) -> usize {
    let shipped = src.take();
    for s in &shipped {
        rep.apply(Epoch(1), s.txid, &s.tx, s.sum).unwrap();
    }
    shipped.len()
}

#[test]
fn applied_transactions_give_the_same_rows_and_checksum() {
    let dir = tempfile::tempdir().unwrap();
    let (mut src, mut rep) = seeded(dir.path(), 4096);
    for i in 0..20 {
        src.conn
            .execute(
                "INSERT INTO t(v, b) VALUES (?1, ?2)",
                (format!("row {i}"), vec![i as u8; 300]),
            )
            .unwrap();
    }
    src.conn
        .execute(
            "INSERT INTO t(v, b) VALUES ('big', ?1)",
            [vec![7u8; 20_000]],
        )
        .unwrap();
    src.conn
        .execute_batch("CREATE INDEX t_v ON t(v); UPDATE t SET v = v || '!' WHERE id % 3 = 0;")
        .unwrap();
    assert_eq!(ship(&mut src, &mut rep), 23);
    assert_eq!(rows(&src.path), rows(rep.path()));
    assert_eq!(rep.position().txid, TxId(23));
    assert_eq!(rep.position().sum, src.sum());
    let v = rep.verify().unwrap();
    assert!(v.is_ok(), "{v:?}");
}

#[test]
fn a_truncating_vacuum_replicates() {
    let dir = tempfile::tempdir().unwrap();
    let (mut src, mut rep) = seeded(dir.path(), 1024);
    src.conn
        .execute("INSERT INTO t(b) VALUES (?1)", [vec![1u8; 50_000]])
        .unwrap();
    ship(&mut src, &mut rep);
    let grown = rep.page_count();
    src.conn.execute_batch("DELETE FROM t; VACUUM;").unwrap();
    ship(&mut src, &mut rep);
    assert!(rep.page_count() < grown, "{} < {grown}", rep.page_count());
    assert_eq!(rows(&src.path), rows(rep.path()));
    assert!(rep.verify().unwrap().is_ok());
}

#[test]
fn local_software_can_read_but_not_write_between_applies() {
    let dir = tempfile::tempdir().unwrap();
    let (mut src, mut rep) = seeded(dir.path(), 4096);
    src.conn
        .execute("INSERT INTO t(v) VALUES ('a')", [])
        .unwrap();
    ship(&mut src, &mut rep);
    let local = Connection::open(rep.path()).unwrap();
    local.busy_timeout(std::time::Duration::ZERO).unwrap();
    let n: i64 = local
        .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 1);
    let err = local
        .execute("INSERT INTO t(v) VALUES ('local')", [])
        .unwrap_err();
    assert_eq!(
        err.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy),
        "{err}"
    );
    // Readers keep reading while the next transaction is applied.
    src.conn
        .execute("INSERT INTO t(v) VALUES ('b')", [])
        .unwrap();
    ship(&mut src, &mut rep);
    let n: i64 = local
        .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 2);
}

#[test]
fn transactions_that_do_not_fit_are_refused_without_writing() {
    let dir = tempfile::tempdir().unwrap();
    let (mut src, mut rep) = seeded(dir.path(), 4096);
    src.conn
        .execute("INSERT INTO t(v) VALUES ('a')", [])
        .unwrap();
    src.conn
        .execute("INSERT INTO t(v) VALUES ('b')", [])
        .unwrap();
    let shipped = src.take();
    let before = rep.position();
    let err = rep
        .apply(Epoch(1), TxId(2), &shipped[1].tx, shipped[1].sum)
        .unwrap_err();
    assert!(matches!(err, ReplicaError::OutOfOrder { .. }), "{err}");
    let err = rep
        .apply(Epoch(1), TxId(1), &shipped[0].tx, DbSum([9; 32]))
        .unwrap_err();
    assert!(matches!(err, ReplicaError::Diverged { .. }), "{err}");
    let err = rep
        .apply(Epoch(0), TxId(1), &shipped[0].tx, shipped[0].sum)
        .unwrap_err();
    assert!(matches!(err, ReplicaError::StaleEpoch { .. }), "{err}");
    assert_eq!(rep.position(), before);
    assert!(rep.verify().unwrap().is_ok());
    rep.apply(Epoch(1), TxId(1), &shipped[0].tx, shipped[0].sum)
        .unwrap();
    rep.apply(Epoch(1), TxId(2), &shipped[1].tx, shipped[1].sum)
        .unwrap();
    assert_eq!(rows(&src.path), rows(rep.path()));
}

#[test]
fn reopening_resumes_at_the_recorded_position() {
    let dir = tempfile::tempdir().unwrap();
    let (mut src, mut rep) = seeded(dir.path(), 4096);
    src.conn
        .execute("INSERT INTO t(v) VALUES ('a')", [])
        .unwrap();
    ship(&mut src, &mut rep);
    let at = rep.position();
    let path = rep.path().to_owned();
    drop(rep);
    let mut rep = Replica::open(&path).unwrap();
    assert_eq!(rep.position(), at);
    src.conn
        .execute("INSERT INTO t(v) VALUES ('b')", [])
        .unwrap();
    ship(&mut src, &mut rep);
    assert_eq!(rows(&src.path), rows(&path));
}

#[test]
fn a_write_made_while_tandem_was_stopped_is_found_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let (mut src, mut rep) = seeded(dir.path(), 4096);
    src.conn
        .execute("INSERT INTO t(v) VALUES ('a')", [])
        .unwrap();
    ship(&mut src, &mut rep);
    let path = rep.path().to_owned();
    drop(rep);
    Connection::open(&path)
        .unwrap()
        .execute("INSERT INTO t(v) VALUES ('local')", [])
        .unwrap();
    let err = Replica::open(&path).unwrap_err();
    assert!(matches!(err, ReplicaError::UnknownContent { .. }), "{err}");
    assert!(position_path(&path).exists());
}

/// A power loss can leave the position record older than the copy (the
/// record is made durable once the stream pauses, the commits with each
/// apply): the record as it stood is put back after more applies. A strict
/// open refuses the copy; opening by content gives it an uncounted txid,
/// the record's epoch and the checksum of what it holds, for the primary
/// to place.
#[test]
fn a_copy_ahead_of_its_record_is_opened_by_its_content() {
    let dir = tempfile::tempdir().unwrap();
    let (mut src, mut rep) = seeded(dir.path(), 4096);
    src.conn
        .execute("INSERT INTO t(v) VALUES ('a')", [])
        .unwrap();
    ship(&mut src, &mut rep);
    rep.make_position_durable().unwrap();
    let path = rep.path().to_owned();
    let record = std::fs::read(position_path(&path)).unwrap();
    for v in ["b", "c"] {
        src.conn
            .execute("INSERT INTO t(v) VALUES (?1)", [v])
            .unwrap();
        assert_eq!(ship(&mut src, &mut rep), 1);
    }
    let ahead = rep.position();
    drop(rep);
    std::fs::write(position_path(&path), &record).unwrap();

    let err = Replica::open(&path).unwrap_err();
    assert!(matches!(err, ReplicaError::UnknownContent { .. }), "{err}");
    let rep = Replica::open_by_content(&path, None).unwrap();
    assert_eq!(rep.position().txid, TxId::UNCOUNTED);
    assert_eq!(rep.position().epoch, ahead.epoch);
    assert_eq!(rep.position().sum, ahead.sum);
    assert_eq!(rep.position().sum, src.sum());
}

/// A batch applied in one SQLite transaction ends exactly where applying its
/// transactions one by one does: rows, checksum, position, even when a
/// VACUUM in the middle truncates the file and later commits grow it again.
#[test]
fn a_batch_ends_where_its_transactions_one_by_one_do() {
    let dir = tempfile::tempdir().unwrap();
    let (mut src, mut one) = seeded(dir.path(), 1024);
    let (at, image) = src.image();
    let mut batched = Replica::create(&dir.path().join("batched.db"), 1024).unwrap();
    batched.seed(at, &image).unwrap();
    for i in 0..10 {
        src.conn
            .execute(
                "INSERT INTO t(v, b) VALUES (?1, ?2)",
                (format!("{i}"), vec![i as u8; 5_000]),
            )
            .unwrap();
    }
    src.conn
        .execute_batch("DELETE FROM t WHERE id % 2 = 0; VACUUM;")
        .unwrap();
    for i in 0..5 {
        src.conn
            .execute(
                "INSERT INTO t(v, b) VALUES (?1, ?2)",
                (format!("again {i}"), vec![9u8; 3_000]),
            )
            .unwrap();
    }
    let shipped = src.take();
    assert!(shipped.len() >= 16);
    for s in &shipped {
        one.apply(Epoch(1), s.txid, &s.tx, s.sum).unwrap();
    }
    let batch: Vec<_> = shipped
        .iter()
        .map(|s| (Epoch(1), s.txid, s.tx.clone(), s.sum))
        .collect();
    let end = batched.apply_batch(&batch).unwrap();
    assert_eq!(end, one.position());
    assert_eq!(rows(batched.path()), rows(one.path()));
    assert_eq!(rows(batched.path()), rows(&src.path));
    assert!(batched.verify().unwrap().is_ok());

    // A batch with a wrong checksum in the middle writes nothing.
    src.conn
        .execute("INSERT INTO t(v) VALUES ('x')", [])
        .unwrap();
    src.conn
        .execute("INSERT INTO t(v) VALUES ('y')", [])
        .unwrap();
    let mut bad: Vec<_> = src
        .take()
        .into_iter()
        .map(|s| (Epoch(1), s.txid, s.tx, s.sum))
        .collect();
    let good = bad.clone();
    let before = batched.position();
    // Refused at its first transaction, then at its last (the first one's
    // check taken back too): nothing written, and the batch as shipped
    // applies afterwards.
    for wrong in [0, bad.len() - 1] {
        bad[wrong].3 = DbSum([3; 32]);
        assert!(matches!(
            batched.apply_batch(&bad),
            Err(ReplicaError::Diverged { .. })
        ));
        bad[wrong].3 = good[wrong].3;
        assert_eq!(batched.position(), before);
        assert_eq!(rows(batched.path()), rows(one.path()));
    }
    let end = batched.apply_batch(&good).unwrap();
    assert_eq!(end.sum, good[good.len() - 1].3);
    assert_eq!(rows(batched.path()), rows(&src.path));
    assert!(batched.verify().unwrap().is_ok());
}

/// A schema larger than one page (any schema with 1024-byte pages, or a few
/// tables with long definitions) lives in a b-tree whose pages other than
/// page 1 are rewritten by schema changes. The applying connection reloads
/// its schema after each change through SQLite's b-tree layer, which keeps
/// what it parsed of each cached page: pages rewritten through
/// `sqlite_dbpage` must not be read with what was parsed of their old
/// content ("database disk image is malformed"). A reopened replica is what
/// a standby runs after every restart and after every seed.
#[test]
fn schema_changes_across_several_schema_pages_apply_after_a_reopen() {
    for page_size in [1024, 4096] {
        let dir = tempfile::tempdir().unwrap();
        let (mut src, rep) = seeded(dir.path(), page_size);
        let path = rep.path().to_owned();
        drop(rep);
        let mut rep = Replica::open(&path).unwrap();
        let columns: Vec<String> = (0..20).map(|i| format!("column_{i} TEXT")).collect();
        for i in 0..40 {
            src.conn
                .execute_batch(&format!(
                    "CREATE TABLE table_with_a_long_name_{i}(id INTEGER PRIMARY KEY, {});
                     INSERT INTO table_with_a_long_name_{i}(column_0) VALUES ('row {i}');",
                    columns.join(", ")
                ))
                .unwrap();
            if i % 3 == 0 {
                src.conn
                    .execute_batch(&format!(
                        "DROP TABLE IF EXISTS table_with_a_long_name_{}",
                        i / 2
                    ))
                    .unwrap();
            }
            for s in src.take() {
                rep.apply(Epoch(1), s.txid, &s.tx, s.sum)
                    .unwrap_or_else(|e| panic!("page size {page_size}, step {i}: {e}"));
            }
            assert_eq!(
                rep.position().sum,
                src.sum(),
                "page size {page_size}, step {i}"
            );
        }
        let v = rep.verify().unwrap();
        assert!(v.is_ok(), "page size {page_size}: {v:?}");
        let schema = |p: &std::path::Path| -> Vec<String> {
            let c = Connection::open(p).unwrap();
            let mut s = c
                .prepare("SELECT sql FROM sqlite_schema ORDER BY name")
                .unwrap();
            s.query_map([], |r| r.get(0))
                .unwrap()
                .map(Result::unwrap)
                .collect()
        };
        assert_eq!(
            schema(rep.path()),
            schema(&src.path),
            "page size {page_size}"
        );
    }
}
