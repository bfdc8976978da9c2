//! The rolling whole-database checksum of a database position (DESIGN §2).
//!
//! Two copies of a database are compared by one 32-byte value instead of by
//! reading both: the XOR, over every page, of blake3(page number as a
//! big-endian u32 || blake3(page bytes)). XOR makes the sum order-free and
//! lets a transaction update it in time proportional to the pages it
//! touched: XOR out each changed page's old hash, XOR in its new one, and XOR
//! out the pages a truncation removed. The page number is hashed with the
//! page so that two pages swapping places changes the sum.
//!
//! Updating needs the old hash of every page a transaction writes. Rather than
//! read old page images back, both sides keep [`PageHashes`]: one hash per
//! page (32 bytes per page, 8 MiB per GiB at 4 KiB pages). The same table is
//! what a page-hash resync compares range by range.

use crate::message::Epoch;
use crate::wal::Transaction;
use serde::{Deserialize, Serialize};
use std::fmt;

/// Counts committed transactions over a database's life. It continues across
/// switchovers: the new primary numbers its first transaction after the last
/// one it applied as standby.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash,
)]
pub struct TxId(pub u64);

impl TxId {
    /// The txid of a copy whose content is known but not how many
    /// transactions made it: a primary killed after the log restarted past
    /// its last record, whose later commits were never counted one by one.
    /// The primary places such a copy by its checksum alone (see
    /// [`crate::lineage`]); nothing follows it.
    pub const UNCOUNTED: TxId = TxId(u64::MAX);

    pub fn next(self) -> TxId {
        TxId(self.0.saturating_add(1))
    }
}

impl fmt::Display for TxId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if *self == TxId::UNCOUNTED {
            return write!(f, "uncounted");
        }
        write!(f, "{}", self.0)
    }
}

/// Where one copy of a database stands (DESIGN §2): two copies at the same
/// txid must have the same sum, or they diverged.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct DbPosition {
    /// The epoch in which the transaction `txid` was committed.
    pub epoch: Epoch,
    pub txid: TxId,
    pub sum: DbSum,
}

/// blake3 of a page number and its bytes: one page's share of a [`DbSum`].
pub type PageHash = [u8; 32];

/// The XOR of the [`PageHash`]es of every page of a database.
#[derive(Serialize, Deserialize, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct DbSum(pub [u8; 32]);

impl DbSum {
    /// The sum of a database with no pages.
    pub const EMPTY: DbSum = DbSum([0; 32]);

    /// One page's hash: blake3(be32 pgno || blake3(page)).
    ///
    /// The page is hashed on its own first: blake3 hashes a buffer that
    /// starts on its 1 KiB chunk boundaries several chunks at once (SIMD),
    /// and one that starts 4 bytes in one block at a time, which cost twice
    /// as much per page. Every transaction hashes each page it writes on
    /// both sides, and seeding and resync hash every page.
    ///
    /// Page 1's file change counter (bytes 24..28), its version-valid-for
    /// number (92..96) and the version of the SQLite library that last wrote
    /// it (96..100) are hashed as zeros: SQLite rewrites them in every commit
    /// that touches page 1, with its own counter and version, so a copy
    /// written through `sqlite_dbpage` (or by another SQLite version) always
    /// differs there while holding the same content.
    pub fn page_hash(pgno: u32, page: &[u8]) -> PageHash {
        let content = match (pgno, page.get(..24), page.get(28..92), page.get(100..)) {
            (1, Some(head), Some(middle), Some(tail)) => {
                let mut h = blake3::Hasher::new();
                h.update(head);
                h.update(&[0; 4]);
                h.update(middle);
                h.update(&[0; 8]);
                h.update(tail);
                h.finalize()
            }
            _ => blake3::hash(page),
        };
        let mut h = blake3::Hasher::new();
        h.update(&pgno.to_be_bytes());
        h.update(content.as_bytes());
        *h.finalize().as_bytes()
    }

    /// The sum of a whole database, from every (page number, page).
    pub fn of_pages<'a>(pages: impl IntoIterator<Item = (u32, &'a [u8])>) -> DbSum {
        let mut sum = DbSum::EMPTY;
        for (pgno, page) in pages {
            sum.toggle(&DbSum::page_hash(pgno, page));
        }
        sum
    }

    /// Replaces page `pgno`'s `old` image (None: the page did not exist) by
    /// `new` (None: the page was removed).
    pub fn apply(&mut self, pgno: u32, old: Option<&[u8]>, new: Option<&[u8]>) {
        if let Some(old) = old {
            self.toggle(&DbSum::page_hash(pgno, old));
        }
        if let Some(new) = new {
            self.toggle(&DbSum::page_hash(pgno, new));
        }
    }

    /// XORs one page hash in or out (the same operation).
    pub fn toggle(&mut self, hash: &PageHash) {
        for (a, b) in self.0.iter_mut().zip(hash) {
            *a ^= b;
        }
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    pub fn from_hex(s: &str) -> Option<DbSum> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).ok()?;
        Some(DbSum(out))
    }
}

impl fmt::Debug for DbSum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DbSum({})", self.to_hex())
    }
}

impl fmt::Display for DbSum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// What [`PageHashes::apply_undoable`] changed: the sum and length before,
/// and every hash it replaced or dropped.
#[derive(Debug)]
pub struct Undo {
    sum: DbSum,
    len: usize,
    replaced: Vec<(usize, PageHash)>,
}

/// The hash of every page of one database and their [`DbSum`], kept up to
/// date per transaction.
#[derive(Clone, PartialEq, Eq)]
pub struct PageHashes {
    page_size: usize,
    /// Index 0 is page 1.
    hashes: Vec<PageHash>,
    sum: DbSum,
}

impl fmt::Debug for PageHashes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PageHashes")
            .field("page_size", &self.page_size)
            .field("pages", &self.hashes.len())
            .field("sum", &self.sum)
            .finish()
    }
}

impl PageHashes {
    /// The table of an empty database with pages of `page_size` bytes.
    pub fn new(page_size: usize) -> PageHashes {
        PageHashes {
            page_size,
            hashes: Vec::new(),
            sum: DbSum::EMPTY,
        }
    }

    pub fn sum(&self) -> DbSum {
        self.sum
    }

    pub fn page_count(&self) -> u32 {
        u32::try_from(self.hashes.len()).unwrap_or(u32::MAX)
    }

    pub fn page_size(&self) -> usize {
        self.page_size
    }

    /// The hash of page `pgno`, if the database has it.
    pub fn get(&self, pgno: u32) -> Option<&PageHash> {
        self.hashes.get((pgno as usize).checked_sub(1)?)
    }

    /// Writes page `pgno`. Pages between the current end and `pgno` that were
    /// never written read as zeros in SQLite (the lock page is one such), so
    /// they enter the table as zero pages.
    pub fn set(&mut self, pgno: u32, page: &[u8]) {
        let Some(index) = (pgno as usize).checked_sub(1) else {
            return;
        };
        if index >= self.hashes.len() {
            let zeros = vec![0u8; self.page_size];
            for gap in self.hashes.len()..index {
                let h = DbSum::page_hash(gap as u32 + 1, &zeros);
                self.sum.toggle(&h);
                self.hashes.push(h);
            }
            let h = DbSum::page_hash(pgno, page);
            self.sum.toggle(&h);
            self.hashes.push(h);
        } else {
            self.sum.toggle(&self.hashes[index]);
            let h = DbSum::page_hash(pgno, page);
            self.sum.toggle(&h);
            self.hashes[index] = h;
        }
    }

    /// Cuts the database to `pages` pages (growing it with zero pages when
    /// it is shorter).
    pub fn resize(&mut self, pages: u32) {
        let pages = pages as usize;
        while self.hashes.len() > pages {
            if let Some(h) = self.hashes.pop() {
                self.sum.toggle(&h);
            }
        }
        if self.hashes.len() < pages {
            let zeros = vec![0u8; self.page_size];
            for gap in self.hashes.len()..pages {
                let h = DbSum::page_hash(gap as u32 + 1, &zeros);
                self.sum.toggle(&h);
                self.hashes.push(h);
            }
        }
    }

    /// Applies a committed transaction: its pages, then its new size.
    pub fn apply(&mut self, tx: &Transaction) -> DbSum {
        for (pgno, page) in &tx.pages {
            self.set(*pgno, page);
        }
        self.resize(tx.db_pages_after_commit);
        self.sum
    }

    /// [`PageHashes::apply`], keeping what it replaced so that
    /// [`PageHashes::undo`] can put the table back: checking a transaction
    /// against the primary's sum then costs its own pages, not a copy of a
    /// table that holds 8 MiB per GiB of database.
    pub fn apply_undoable(&mut self, tx: &Transaction) -> Undo {
        let len = self.hashes.len();
        let size = (tx.db_pages_after_commit as usize).min(len);
        let mut replaced: Vec<(usize, PageHash)> = tx
            .pages
            .iter()
            .filter_map(|(pgno, _)| (*pgno as usize).checked_sub(1))
            .filter(|i| *i < size)
            .map(|i| (i, self.hashes[i]))
            .collect();
        // What a truncation drops.
        replaced.extend((size..len).map(|i| (i, self.hashes[i])));
        let undo = Undo {
            sum: self.sum,
            len,
            replaced,
        };
        self.apply(tx);
        undo
    }

    /// Puts back what [`PageHashes::apply_undoable`] changed; undos are
    /// taken back newest first.
    pub fn undo(&mut self, undo: Undo) {
        self.hashes.resize(undo.len, [0; 32]);
        for (i, h) in undo.replaced {
            self.hashes[i] = h;
        }
        self.sum = undo.sum;
    }

    /// The sum the database would have after `tx`, without changing the
    /// table: computed another way than [`PageHashes::apply`], so the
    /// property tests check one against the other.
    pub fn sum_after(&self, tx: &Transaction) -> DbSum {
        let mut sum = self.sum;
        let old_len = self.hashes.len();
        let size = tx.db_pages_after_commit as usize;
        let zeros = vec![0u8; self.page_size];
        let mut written = tx.pages.iter().map(|(p, _)| *p as usize).peekable();
        for (pgno, page) in &tx.pages {
            let Some(index) = (*pgno as usize).checked_sub(1) else {
                continue;
            };
            if index >= size {
                continue;
            }
            if let Some(old) = self.hashes.get(index) {
                sum.toggle(old);
            }
            sum.toggle(&DbSum::page_hash(*pgno, page));
        }
        // Pages the database grows by without the transaction writing them
        // read as zeros.
        for index in old_len..size {
            let pgno = index + 1;
            while written.peek().is_some_and(|p| *p < pgno) {
                written.next();
            }
            if written.peek() != Some(&pgno) {
                sum.toggle(&DbSum::page_hash(pgno as u32, &zeros));
            }
        }
        // Pages a truncation removes.
        for old in self.hashes.iter().skip(size) {
            sum.toggle(old);
        }
        sum
    }

    /// One hash per range of `pages_per_range` pages (the last range may be
    /// shorter): blake3 over the range's page hashes. Two copies whose range
    /// hashes differ differ somewhere in that range; a page-hash comparison
    /// (verify, resync) first compares these, then only inside the ranges
    /// that differ.
    pub fn range_hashes(&self, pages_per_range: u32) -> Vec<PageHash> {
        self.hashes
            .chunks(pages_per_range.max(1) as usize)
            .map(|range| {
                let mut h = blake3::Hasher::new();
                for page in range {
                    h.update(page);
                }
                *h.finalize().as_bytes()
            })
            .collect()
    }

    /// The table of a whole database, from every page in ascending order.
    pub fn of_pages<'a>(
        page_size: usize,
        pages: impl IntoIterator<Item = (u32, &'a [u8])>,
    ) -> PageHashes {
        let mut t = PageHashes::new(page_size);
        for (pgno, page) in pages {
            t.set(pgno, page);
        }
        t
    }
}

/// Pages per range of [`PageHashes::range_hashes`] when comparing copies.
pub const RANGE_PAGES: u32 = 256;

/// The page ranges `(first, last)` (inclusive, 1-based) where two copies'
/// range hashes (over `pages_per_range` pages) differ, adjacent ranges
/// merged, and the ranges one copy has beyond the other's end.
pub fn differing_ranges(
    ours: &[PageHash],
    ours_pages: u32,
    theirs: &[PageHash],
    theirs_pages: u32,
    pages_per_range: u32,
) -> Vec<(u32, u32)> {
    let per = pages_per_range.max(1);
    let end = ours_pages.max(theirs_pages);
    let mut out: Vec<(u32, u32)> = Vec::new();
    for i in 0..ours.len().max(theirs.len()) {
        if ours.get(i).is_some() && ours.get(i) == theirs.get(i) {
            continue;
        }
        let first = (i as u32).saturating_mul(per).saturating_add(1);
        let last = first.saturating_add(per - 1).min(end);
        match out.last_mut() {
            Some(prev) if prev.1.saturating_add(1) == first => prev.1 = last,
            _ => out.push((first, last)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tx(pages: &[(u32, u8)], size: u32) -> Transaction {
        Transaction {
            pages: pages.iter().map(|&(p, b)| (p, vec![b; 64])).collect(),
            db_pages_after_commit: size,
            end_offset: 0,
            salts: crate::wal::Salts { salt1: 0, salt2: 0 },
        }
    }

    #[test]
    fn the_sum_is_a_known_value() {
        // Pinned so that both sides, and any later version, agree on the
        // definition: blake3(be32 pgno || blake3(page)).
        let sum = DbSum::of_pages([(2u32, &[7u8; 4][..])]);
        let mut h = blake3::Hasher::new();
        h.update(&[0, 0, 0, 2]);
        h.update(blake3::hash(&[7, 7, 7, 7]).as_bytes());
        assert_eq!(sum.0, *h.finalize().as_bytes());
        assert_eq!(DbSum::EMPTY.to_hex(), "0".repeat(64));
    }

    #[test]
    fn page_one_bookkeeping_that_sqlite_rewrites_is_not_summed() {
        let page = vec![5u8; 512];
        let mut other = page.clone();
        other[24..28].copy_from_slice(&[0, 0, 0, 9]);
        other[92..100].copy_from_slice(&[0, 0, 0, 9, 0, 46, 153, 177]);
        assert_eq!(DbSum::page_hash(1, &page), DbSum::page_hash(1, &other));
        assert_ne!(DbSum::page_hash(2, &page), DbSum::page_hash(2, &other));
        other[23] ^= 1;
        assert_ne!(DbSum::page_hash(1, &page), DbSum::page_hash(1, &other));
    }

    #[test]
    fn swapping_two_pages_changes_the_sum() {
        let a = [1u8; 8];
        let b = [2u8; 8];
        assert_ne!(
            DbSum::of_pages([(1, &a[..]), (2, &b[..])]),
            DbSum::of_pages([(1, &b[..]), (2, &a[..])])
        );
    }

    #[test]
    fn apply_replaces_and_removes() {
        let mut s = DbSum::of_pages([(1, &[1u8; 8][..]), (2, &[2u8; 8][..])]);
        s.apply(2, Some(&[2u8; 8]), Some(&[3u8; 8]));
        assert_eq!(s, DbSum::of_pages([(1, &[1u8; 8][..]), (2, &[3u8; 8][..])]));
        s.apply(2, Some(&[3u8; 8]), None);
        assert_eq!(s, DbSum::of_pages([(1, &[1u8; 8][..])]));
        assert_eq!(DbSum::from_hex(&s.to_hex()), Some(s));
    }

    #[test]
    fn differing_ranges_name_the_pages_that_differ() {
        let page = |b: u8| vec![b; 64];
        let mut a = PageHashes::new(64);
        for p in 1..=10 {
            a.set(p, &page(p as u8));
        }
        let mut b = a.clone();
        assert_eq!(
            differing_ranges(&a.range_hashes(4), 10, &b.range_hashes(4), 10, 4),
            vec![]
        );
        b.set(6, &page(99));
        assert_eq!(
            differing_ranges(&a.range_hashes(4), 10, &b.range_hashes(4), 10, 4),
            vec![(5, 8)]
        );
        b.set(1, &page(99));
        b.set(12, &page(12));
        assert_eq!(
            differing_ranges(&a.range_hashes(4), 10, &b.range_hashes(4), 12, 4),
            vec![(1, 12)]
        );
    }

    #[test]
    fn gaps_read_as_zero_pages_and_truncation_removes() {
        let mut t = PageHashes::new(64);
        let before = t.sum_after(&tx(&[(1, 1), (4, 4)], 4));
        t.apply(&tx(&[(1, 1), (4, 4)], 4));
        assert_eq!(before, t.sum());
        let z = [0u8; 64];
        assert_eq!(
            t.sum(),
            DbSum::of_pages([
                (1, &[1u8; 64][..]),
                (2, &z[..]),
                (3, &z[..]),
                (4, &[4u8; 64][..])
            ])
        );
        let shrink = tx(&[(2, 2)], 2);
        let predicted = t.sum_after(&shrink);
        t.apply(&shrink);
        assert_eq!(predicted, t.sum());
        assert_eq!(
            t.sum(),
            DbSum::of_pages([(1, &[1u8; 64][..]), (2, &[2u8; 64][..])])
        );
        assert_eq!(t.page_count(), 2);
    }
}
