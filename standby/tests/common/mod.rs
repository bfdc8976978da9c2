//! A source database written with rusqlite, read back as the primary would:
//! its base image and then its committed transactions, from its WAL.
#![allow(dead_code)]

use rusqlite::Connection;
use std::path::{Path, PathBuf};
use tandem_sync::dbsum::{DbPosition, DbSum, PageHashes, TxId};
use tandem_sync::wal::{Transaction, WalReader};
use tandem_sync::Epoch;

pub struct Source {
    pub conn: Connection,
    pub path: PathBuf,
    pub page_size: usize,
    reader: WalReader,
    table: PageHashes,
    txid: u64,
}

pub struct Shipped {
    pub txid: TxId,
    pub tx: Transaction,
    pub sum: DbSum,
}

impl Source {
    pub fn new(dir: &Path, page_size: usize) -> Source {
        let path = dir.join("source.db");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(&format!(
            "PRAGMA page_size={page_size}; PRAGMA journal_mode=WAL; PRAGMA wal_autocheckpoint=0;
             CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT, b BLOB);
             PRAGMA wal_checkpoint(TRUNCATE);"
        ))
        .unwrap();
        let table = PageHashes::of_pages(
            page_size,
            Self::file_pages(&path, page_size)
                .iter()
                .map(|(p, d)| (*p, &d[..])),
        );
        Source {
            conn,
            path,
            page_size,
            reader: WalReader::new(),
            table,
            txid: 0,
        }
    }

    fn file_pages(path: &Path, page_size: usize) -> Vec<(u32, Vec<u8>)> {
        std::fs::read(path)
            .unwrap()
            .chunks(page_size)
            .enumerate()
            .map(|(i, p)| (i as u32 + 1, p.to_vec()))
            .collect()
    }

    /// The base image, as of creation (call before any write).
    pub fn image(&self) -> (DbPosition, Transaction) {
        let pages = Self::file_pages(&self.path, self.page_size);
        let n = pages.len() as u32;
        (
            DbPosition {
                epoch: Epoch(1),
                txid: TxId(0),
                sum: self.table.sum(),
            },
            Transaction {
                pages,
                db_pages_after_commit: n,
                end_offset: 0,
                salts: tandem_sync::wal::Salts { salt1: 0, salt2: 0 },
            },
        )
    }

    /// The image in a copy of the base file, at txid 0.
    pub fn image_of(&self, copy: &Path) -> (DbPosition, Transaction) {
        let pages = Self::file_pages(copy, self.page_size);
        let n = pages.len() as u32;
        let sum =
            PageHashes::of_pages(self.page_size, pages.iter().map(|(p, d)| (*p, &d[..]))).sum();
        (
            DbPosition {
                epoch: Epoch(1),
                txid: TxId(0),
                sum,
            },
            Transaction {
                pages,
                db_pages_after_commit: n,
                end_offset: 0,
                salts: tandem_sync::wal::Salts { salt1: 0, salt2: 0 },
            },
        )
    }

    /// The transactions committed since the last call.
    pub fn take(&mut self) -> Vec<Shipped> {
        let mut wal = self.path.as_os_str().to_owned();
        wal.push("-wal");
        let bytes = std::fs::read(PathBuf::from(wal)).unwrap();
        let txs = self.reader.feed(0, &bytes).unwrap();
        txs.into_iter()
            .map(|tx| {
                self.txid += 1;
                let sum = self.table.apply(&tx);
                Shipped {
                    txid: TxId(self.txid),
                    tx,
                    sum,
                }
            })
            .collect()
    }

    pub fn sum(&self) -> DbSum {
        self.table.sum()
    }
}

/// Every row of table t, in id order.
pub fn rows(path: &Path) -> Vec<(i64, Option<String>, Option<Vec<u8>>)> {
    let c = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    let mut s = c.prepare("SELECT id, v, b FROM t ORDER BY id").unwrap();
    s.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}
