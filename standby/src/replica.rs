//! The standby's copy of one database, kept identical to the primary's one
//! transaction at a time.
//!
//! # Why pages, through `sqlite_dbpage`
//!
//! The primary ships page images read from its WAL, not SQL, so the copy is
//! byte-identical and a whole-database checksum can compare the two. Writing
//! the pages through SQLite's `sqlite_dbpage` virtual table (as sqlite3_rsync
//! does) rather than into the file keeps the copy an ordinary WAL-mode
//! database: each transaction commits atomically and durably in SQLite's own
//! WAL, readers on the standby keep consistent snapshots while it is applied,
//! and a kill -9 at any point leaves the last committed state. Page 1 (which
//! holds the schema) is written last in each transaction, a truncation is an
//! insert of a NULL page, and the applying connection is used for nothing
//! else, because its cached schema is stale after it rewrites page 1.
//!
//! # The write lock between applies
//!
//! Local software may read the copy but must not write it. The applying
//! connection holds `BEGIN IMMEDIATE` (SQLite's single WAL write lock) from
//! the moment it opens, applies each transaction inside that transaction,
//! commits, and at once begins the next `BEGIN IMMEDIATE`. Readers are never
//! blocked. A local writer gets SQLITE_BUSY, except in the instant between a
//! commit and the next begin, where one that was already waiting on its busy
//! handler can slip in. That is detected rather than prevented:
//! `PRAGMA data_version` changes when another connection committed, and the
//! replica then recomputes the checksum from scratch. If the content changed,
//! the apply is refused with [`ReplicaError::ForeignWrite`] (the caller
//! quarantines and resyncs); if not (for example another connection only ran
//! a checkpoint) it carries on.
//!
//! # Durability and the position
//!
//! `synchronous=FULL` makes each commit durable (the WAL is fsynced) before
//! it is acknowledged. The position (epoch, txid, checksum) is kept in a
//! sidecar file as an intent written before each commit and made durable
//! once the stream pauses ([`Replica::make_position_durable`]); see
//! [`crate::position`] for why not inside the database, why not fsynced
//! with each commit, and how recovery chooses. Opening a replica always
//! recomputes the checksum from the pages (one read of the file), which is
//! both the recovery step and the check that nobody wrote the copy while
//! tandem was not running.

use crate::position::{Intent, PositionFile};
use rusqlite::{params, Connection, OpenFlags};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tandem_sync::dbsum::{DbPosition, DbSum, PageHashes, TxId, Undo};
use tandem_sync::wal::{Salts, Transaction};
use tandem_sync::Epoch;

/// An error before the SQLite transaction committed: nothing changed.
struct Uncommitted(ReplicaError);

/// How long the applier waits for the write lock when a local writer holds it.
const LOCK_WAIT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("position file {path}: {source}")]
    PositionFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} already exists")]
    Exists { path: PathBuf },
    #[error("{path} has no valid position record")]
    NoPosition { path: PathBuf },
    #[error(
        "the database's checksum {found} matches neither side of its last recorded apply \
         ({before} at txid {before_txid}, {after} at txid {after_txid}): it was written outside tandem"
    )]
    UnknownContent {
        found: DbSum,
        before: DbSum,
        before_txid: TxId,
        after: DbSum,
        after_txid: TxId,
    },
    #[error("transaction {got} does not follow {have}")]
    OutOfOrder { have: TxId, got: TxId },
    #[error("transaction from epoch {got} is older than the replica's epoch {have}")]
    StaleEpoch { have: Epoch, got: Epoch },
    #[error("page {pgno} has {bytes} bytes, the database's pages have {page_size}")]
    PageSize {
        pgno: u32,
        bytes: usize,
        page_size: usize,
    },
    #[error("applying txid {txid} would give checksum {computed}, the primary has {expected}: the copies diverged")]
    Diverged {
        txid: TxId,
        expected: DbSum,
        computed: DbSum,
    },
    #[error("another connection wrote the copy: its checksum is {found}, tandem's is {kept}")]
    ForeignWrite { found: DbSum, kept: DbSum },
    #[error("{0} is not a usable database: {1}")]
    NotUsable(PathBuf, String),
}

/// Result of [`Replica::verify`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verification {
    pub position: DbPosition,
    /// The checksum recomputed from every page.
    pub sum_from_pages: DbSum,
    /// `PRAGMA integrity_check`'s lines; `["ok"]` when sound.
    pub integrity: Vec<String>,
    /// Every page's hash as read from the file (what verify compares in
    /// ranges with the primary's).
    pub hashes: PageHashes,
}

impl Verification {
    pub fn is_ok(&self) -> bool {
        self.sum_from_pages == self.position.sum && self.integrity == ["ok"]
    }
}

/// The standby's copy of one database. See the module doc.
#[derive(Debug)]
pub struct Replica {
    path: PathBuf,
    /// Only ever writes pages; holds the write lock while `locked`.
    apply: Connection,
    locked: bool,
    /// `PRAGMA data_version` right after our last commit.
    data_version: i64,
    hashes: PageHashes,
    position: DbPosition,
    position_file: PositionFile,
}

/// The sidecar file of the database at `db`.
pub fn position_path(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push(".tandem-position");
    PathBuf::from(name)
}

fn open_apply_connection(path: &Path, flags: OpenFlags) -> Result<Connection, ReplicaError> {
    let conn = Connection::open_with_flags(path, flags)?;
    conn.busy_timeout(LOCK_WAIT)?;
    let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(ReplicaError::NotUsable(
            path.to_owned(),
            format!("journal mode is {mode}, not wal"),
        ));
    }
    conn.execute_batch("PRAGMA synchronous=FULL")?;
    Ok(conn)
}

/// A connection to `path` set up as a replica's applying connection
/// (`synchronous=FULL`, which cannot be changed inside a transaction), for a
/// caller that holds the write lock with it before handing it to
/// [`Replica::open_locked`].
pub fn lock_connection(path: &Path, lock_wait: Duration) -> Result<Connection, ReplicaError> {
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_WRITE)?;
    conn.busy_timeout(lock_wait)?;
    conn.execute_batch("PRAGMA synchronous=FULL")?;
    Ok(conn)
}

/// Every page of the database as its connection sees it now.
fn read_pages(conn: &Connection, page_size: usize) -> Result<PageHashes, ReplicaError> {
    let mut table = PageHashes::new(page_size);
    let mut stmt = conn.prepare("SELECT pgno, data FROM sqlite_dbpage ORDER BY pgno")?;
    let mut rows = stmt.query([])?;
    while let Some(row) = rows.next()? {
        let pgno: u32 = row.get(0)?;
        let data = match row.get_ref(1)? {
            rusqlite::types::ValueRef::Blob(b) => b,
            _ => &[],
        };
        table.set(pgno, data);
    }
    Ok(table)
}

/// Runs a statement of the apply loop (BEGIN, COMMIT) from the connection's
/// statement cache: parsing it again at every transaction showed in profiles.
fn run_cached(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(|_| ())
}

/// `PRAGMA data_version`: changes when another connection committed.
fn data_version(conn: &Connection) -> rusqlite::Result<i64> {
    conn.prepare_cached("PRAGMA data_version")?
        .query_row([], |r| r.get(0))
}

fn page_size_of(conn: &Connection) -> Result<usize, ReplicaError> {
    let n: i64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
    Ok(usize::try_from(n).unwrap_or(0))
}

impl Replica {
    /// Creates a new, empty replica whose pages will have `page_size` bytes,
    /// at txid 0 of epoch 0. It is meant to be filled by [`Replica::seed`].
    pub fn create(path: &Path, page_size: u32) -> Result<Replica, ReplicaError> {
        let pos_path = position_path(path);
        if path.exists() || pos_path.exists() {
            return Err(ReplicaError::Exists {
                path: path.to_owned(),
            });
        }
        {
            let conn = Connection::open(path)?;
            conn.execute_batch(&format!(
                "PRAGMA page_size={page_size}; PRAGMA journal_mode=WAL;"
            ))?;
            // journal_mode=WAL writes the header page, which fixes the page size.
            let actual = page_size_of(&conn)?;
            if actual != page_size as usize {
                return Err(ReplicaError::NotUsable(
                    path.to_owned(),
                    format!("page size {actual}, asked for {page_size}"),
                ));
            }
        }
        let apply = open_apply_connection(path, OpenFlags::default())?;
        apply.execute_batch("BEGIN IMMEDIATE")?;
        let hashes = read_pages(&apply, page_size as usize)?;
        let position = DbPosition {
            epoch: Epoch(0),
            txid: TxId(0),
            sum: hashes.sum(),
        };
        let position_file = PositionFile::create(&pos_path, position).map_err(|source| {
            ReplicaError::PositionFile {
                path: pos_path.clone(),
                source,
            }
        })?;
        let data_version = data_version(&apply)?;
        Ok(Replica {
            path: path.to_owned(),
            apply,
            locked: true,
            data_version,
            hashes,
            position,
            position_file,
        })
    }

    /// Opens an existing replica after a clean stop or a crash: takes the
    /// write lock, recomputes the checksum from every page and picks the
    /// recorded position it matches.
    pub fn open(path: &Path) -> Result<Replica, ReplicaError> {
        let apply = open_apply_connection(path, OpenFlags::SQLITE_OPEN_READ_WRITE)?;
        Replica::open_inner(path, apply, None, false)
    }

    /// [`Replica::open`] of a copy whose content may be ahead of its
    /// record (a power loss; see [`crate::position`]): content that matches
    /// no recorded position gives a replica at txid
    /// [`TxId::UNCOUNTED`] with the record's epoch and the content's
    /// checksum, for the primary to place by that checksum, instead of
    /// [`ReplicaError::UnknownContent`].
    /// `lock`: as in [`Replica::open_locked`].
    pub fn open_by_content(path: &Path, lock: Option<Connection>) -> Result<Replica, ReplicaError> {
        let apply = match lock {
            Some(c) => c,
            None => open_apply_connection(path, OpenFlags::SQLITE_OPEN_READ_WRITE)?,
        };
        Replica::open_inner(path, apply, None, true)
    }

    /// [`Replica::open`] with a connection the caller opened with
    /// [`lock_connection`] and that already holds the write lock (inside
    /// `BEGIN IMMEDIATE`): the lock passes from the caller (tandem's fence)
    /// to the replica with no moment in between where a local writer could
    /// take it and commit to the copy.
    pub fn open_locked(path: &Path, apply: Connection) -> Result<Replica, ReplicaError> {
        Replica::open_inner(path, apply, None, false)
    }

    /// [`Replica::open`] of a copy just written whole by a
    /// [`crate::Seeder`], whose page hashes it computed from the bytes it
    /// wrote: not read back and hashed a second time.
    pub(crate) fn open_seeded(path: &Path, hashes: PageHashes) -> Result<Replica, ReplicaError> {
        let apply = open_apply_connection(path, OpenFlags::SQLITE_OPEN_READ_WRITE)?;
        Replica::open_inner(path, apply, Some(hashes), false)
    }

    /// Keep the copy's own WAL file at most about `bytes` once a checkpoint
    /// has emptied it (`journal_size_limit`): a large apply (a resync, a
    /// VACUUM) grows it, and without a limit SQLite reuses the file at that
    /// size for good. The copy's WAL is checkpointed by SQLite's automatic
    /// checkpoints after the applies; local readers can hold it meanwhile,
    /// as they would hold any SQLite database's.
    pub fn limit_wal(&self, bytes: u64) -> Result<(), ReplicaError> {
        let bytes = i64::try_from(bytes).unwrap_or(i64::MAX);
        self.apply.query_row(
            &format!("PRAGMA journal_size_limit={bytes}"),
            [],
            |_| Ok(()),
        )?;
        Ok(())
    }

    /// `by_content`: see [`Replica::open_by_content`].
    fn open_inner(
        path: &Path,
        apply: Connection,
        known: Option<PageHashes>,
        by_content: bool,
    ) -> Result<Replica, ReplicaError> {
        if apply.is_autocommit() {
            apply.execute_batch("BEGIN IMMEDIATE")?;
        }
        apply.busy_timeout(LOCK_WAIT)?;
        let mode: String = apply.query_row("PRAGMA journal_mode", [], |r| r.get(0))?;
        let synchronous: i64 = apply.query_row("PRAGMA synchronous", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") || synchronous < 2 {
            return Err(ReplicaError::NotUsable(
                path.to_owned(),
                format!("journal mode {mode}, synchronous {synchronous}: not wal and FULL"),
            ));
        }
        let pos_path = position_path(path);
        let (position_file, intents) =
            PositionFile::open(&pos_path).map_err(|source| ReplicaError::PositionFile {
                path: pos_path.clone(),
                source,
            })?;
        let hashes = match known {
            Some(h) => h,
            None => read_pages(&apply, page_size_of(&apply)?)?,
        };
        let found = hashes.sum();
        let Some(newest) = intents.first() else {
            return Err(ReplicaError::NoPosition { path: pos_path });
        };
        let matches = |i: &Intent| {
            if i.after.sum == found {
                Some(i.after)
            } else if i.before.sum == found {
                Some(i.before)
            } else {
                None
            }
        };
        let position = match intents.iter().find_map(matches) {
            Some(p) => p,
            None if by_content => DbPosition {
                epoch: newest.after.epoch,
                txid: TxId::UNCOUNTED,
                sum: found,
            },
            None => {
                return Err(ReplicaError::UnknownContent {
                    found,
                    before: newest.before.sum,
                    before_txid: newest.before.txid,
                    after: newest.after.sum,
                    after_txid: newest.after.txid,
                })
            }
        };
        let data_version = data_version(&apply)?;
        Ok(Replica {
            path: path.to_owned(),
            apply,
            locked: true,
            data_version,
            hashes,
            position,
            position_file,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn position(&self) -> DbPosition {
        self.position
    }

    /// Makes the position of the last apply durable (its commit is
    /// already): called once no apply followed for a while.
    pub fn make_position_durable(&mut self) -> Result<(), ReplicaError> {
        self.position_file
            .make_durable()
            .map_err(|source| ReplicaError::PositionFile {
                path: position_path(&self.path),
                source,
            })
    }

    pub fn page_size(&self) -> usize {
        self.hashes.page_size()
    }

    pub fn page_count(&self) -> u32 {
        self.hashes.page_count()
    }

    /// Every page's hash as of the last apply.
    pub fn hashes(&self) -> &PageHashes {
        &self.hashes
    }

    /// Applies the primary's transaction `txid`, committed in `epoch`, whose
    /// checksum on the primary is `expected`. Nothing is written unless the
    /// transaction follows the replica's position and the result would have
    /// the primary's checksum. On return the transaction is durable.
    pub fn apply(
        &mut self,
        epoch: Epoch,
        txid: TxId,
        tx: &Transaction,
        expected: DbSum,
    ) -> Result<DbPosition, ReplicaError> {
        if txid != self.position.txid.next() {
            return Err(ReplicaError::OutOfOrder {
                have: self.position.txid,
                got: txid,
            });
        }
        self.write(epoch, txid, tx, expected)
    }

    /// Applies several consecutive transactions of the primary, `(epoch,
    /// txid, transaction, checksum after it)`, in one SQLite transaction with
    /// one intent record: one fsync for the batch instead of one for each,
    /// which is what lets a standby that is behind catch up. Each
    /// transaction's checksum is checked in turn before anything is written;
    /// local readers see the copy jump from the batch's start to its end.
    pub fn apply_batch(
        &mut self,
        batch: &[(Epoch, TxId, Transaction, DbSum)],
    ) -> Result<DbPosition, ReplicaError> {
        let Some(((first_epoch, first, ..), (epoch, txid, ..))) = batch.first().zip(batch.last())
        else {
            return Ok(self.position);
        };
        if *first != self.position.txid.next() {
            return Err(ReplicaError::OutOfOrder {
                have: self.position.txid,
                got: *first,
            });
        }
        if *first_epoch < self.position.epoch {
            return Err(ReplicaError::StaleEpoch {
                have: self.position.epoch,
                got: *first_epoch,
            });
        }
        // Check every step on the table itself (each undoable), and merge
        // the pages: the last image of each page, less what a later commit
        // truncated.
        let pages_before = self.hashes.page_count();
        let mut undos = Vec::with_capacity(batch.len());
        let checked = self.check_batch(batch, &mut undos);
        let whole = match checked {
            Ok(whole) => whole,
            Err(e) => {
                self.undo(undos);
                return Err(e);
            }
        };
        let after = DbPosition {
            epoch: *epoch,
            txid: *txid,
            sum: self.hashes.sum(),
        };
        self.write_or_undo(after, &whole, pages_before, undos)
    }

    /// Applies each transaction of a batch to the page table, checking it
    /// against the primary's sum (its undo kept in `undos`); the batch's
    /// pages merged into one transaction.
    fn check_batch(
        &mut self,
        batch: &[(Epoch, TxId, Transaction, DbSum)],
        undos: &mut Vec<Undo>,
    ) -> Result<Transaction, ReplicaError> {
        let mut merged: std::collections::BTreeMap<u32, &[u8]> = Default::default();
        let mut at = self.position.txid;
        // The smallest size the database had within the batch: pages past it
        // that no later commit wrote read as zeros afterwards.
        let mut low = self.hashes.page_count();
        for (_, t, tx, expected) in batch {
            if *t != at.next() {
                return Err(ReplicaError::OutOfOrder { have: at, got: *t });
            }
            at = *t;
            self.check_page_size(tx)?;
            undos.push(self.hashes.apply_undoable(tx));
            let computed = self.hashes.sum();
            if computed != *expected {
                return Err(ReplicaError::Diverged {
                    txid: *t,
                    expected: *expected,
                    computed,
                });
            }
            low = low.min(tx.db_pages_after_commit);
            merged.retain(|pgno, _| *pgno <= tx.db_pages_after_commit);
            for (pgno, data) in &tx.pages {
                merged.insert(*pgno, data);
            }
        }
        let size = self.hashes.page_count();
        let zeros = vec![0u8; self.hashes.page_size()];
        for pgno in low.saturating_add(1)..=size {
            merged.entry(pgno).or_insert(&zeros);
        }
        Ok(Transaction {
            pages: merged.into_iter().map(|(p, d)| (p, d.to_vec())).collect(),
            db_pages_after_commit: size,
            end_offset: 0,
            salts: Salts { salt1: 0, salt2: 0 },
        })
    }

    fn undo(&mut self, undos: Vec<Undo>) {
        for undo in undos.into_iter().rev() {
            self.hashes.undo(undo);
        }
    }

    fn check_page_size(&self, tx: &Transaction) -> Result<(), ReplicaError> {
        let page_size = self.hashes.page_size();
        match tx.pages.iter().find(|(_, d)| d.len() != page_size) {
            Some((pgno, data)) => Err(ReplicaError::PageSize {
                pgno: *pgno,
                bytes: data.len(),
                page_size,
            }),
            None => Ok(()),
        }
    }

    /// Replaces the whole content by `image` (every page of the primary's
    /// database at `at`), whatever the replica held. Used to seed a new copy.
    pub fn seed(
        &mut self,
        at: DbPosition,
        image: &Transaction,
    ) -> Result<DbPosition, ReplicaError> {
        self.write(at.epoch, at.txid, image, at.sum)
    }

    fn write(
        &mut self,
        epoch: Epoch,
        txid: TxId,
        tx: &Transaction,
        expected: DbSum,
    ) -> Result<DbPosition, ReplicaError> {
        if epoch < self.position.epoch {
            return Err(ReplicaError::StaleEpoch {
                have: self.position.epoch,
                got: epoch,
            });
        }
        self.check_page_size(tx)?;
        let pages_before = self.hashes.page_count();
        let undo = self.hashes.apply_undoable(tx);
        let computed = self.hashes.sum();
        if computed != expected {
            self.hashes.undo(undo);
            return Err(ReplicaError::Diverged {
                txid,
                expected,
                computed,
            });
        }
        let after = DbPosition {
            epoch,
            txid,
            sum: computed,
        };
        self.write_or_undo(after, tx, pages_before, vec![undo])
    }

    /// [`Replica::write_checked`], and the page table taken back (`undos`,
    /// what checking `tx` applied to it) if nothing was committed.
    fn write_or_undo(
        &mut self,
        after: DbPosition,
        tx: &Transaction,
        pages_before: u32,
        undos: Vec<Undo>,
    ) -> Result<DbPosition, ReplicaError> {
        match self.write_checked(after, tx, pages_before) {
            Err(Uncommitted(e)) => {
                self.undo(undos);
                Err(e)
            }
            Ok(r) => r,
        }
    }

    /// Writes `tx`, already applied to the page table (which gives the sum
    /// in `after`), to the database, durably, in one SQLite transaction;
    /// `pages_before` is the database's size before it. `Err(Uncommitted)`
    /// when nothing was committed (the caller takes the table back); past
    /// the commit, the result of what follows it.
    fn write_checked(
        &mut self,
        after: DbPosition,
        tx: &Transaction,
        pages_before: u32,
    ) -> Result<Result<DbPosition, ReplicaError>, Uncommitted> {
        self.lock().map_err(Uncommitted)?;
        let pos_path = position_path(&self.path);
        self.position_file
            .record(self.position, after)
            .map_err(|source| {
                Uncommitted(ReplicaError::PositionFile {
                    path: pos_path,
                    source,
                })
            })?;
        if let Err(e) = self.write_pages(tx, pages_before) {
            // Roll back, and take the lock again for the next attempt.
            self.locked = false;
            let _ = self.apply.execute_batch("ROLLBACK");
            self.forget_parsed_pages();
            let _ = self.lock();
            return Err(Uncommitted(e));
        }
        self.locked = false;
        if let Err(e) = run_cached(&self.apply, "COMMIT") {
            let _ = self.apply.execute_batch("ROLLBACK");
            self.forget_parsed_pages();
            let _ = self.lock();
            return Err(Uncommitted(e.into()));
        }
        // Stale parsed pages matter only when the schema is loaded again,
        // which follows a change of the schema cookie on page 1. Dropping
        // the cache after every apply made the next one read its pages
        // back: three reads and a pragma per transaction.
        if tx.pages.iter().any(|(pgno, _)| *pgno == 1) {
            self.forget_parsed_pages();
        }
        self.position = after;
        let version = data_version(&self.apply);
        Ok(version.map_err(Into::into).map(|v| {
            self.data_version = v;
            // Losing the race for the lock here is detected at the next apply.
            let _ = self.lock();
            after
        }))
    }

    fn write_pages(&self, tx: &Transaction, pages_before: u32) -> Result<(), ReplicaError> {
        let mut put = self
            .apply
            .prepare_cached("INSERT INTO sqlite_dbpage(pgno, data) VALUES (?1, ?2)")?;
        let size = tx.db_pages_after_commit;
        for (pgno, data) in tx.pages.iter().filter(|(p, _)| *p != 1 && *p <= size) {
            put.execute(params![pgno, data])?;
        }
        if size < pages_before {
            put.execute(params![size + 1, None::<Vec<u8>>])?;
        }
        if let Some((_, data)) = tx.pages.iter().find(|(p, _)| *p == 1) {
            put.execute(params![1, data])?;
        }
        Ok(())
    }

    /// Drops every page from the applying connection's cache; called between
    /// transactions, when no page is in use.
    ///
    /// SQLite's b-tree layer keeps, with each cached page, what it parsed of
    /// it (cell count, offsets). `sqlite_dbpage` overwrites a page's bytes
    /// without resetting that, so a page parsed once (the schema's pages
    /// are, whenever the connection loads its schema) and later rewritten
    /// would be read with its old layout at the next schema reload, which
    /// follows every schema change: "database disk image is malformed", and
    /// the apply fails on every retry. It takes a schema larger than page 1
    /// (any schema with 1024-byte pages, a dozen tables with 4096-byte
    /// ones). Pages read again come from the OS cache.
    fn forget_parsed_pages(&self) {
        // Only frees memory; it cannot fail in a way that matters here.
        let _ = self.apply.execute_batch("PRAGMA shrink_memory");
    }

    /// Takes the write lock if it is not held, and checks that nobody wrote
    /// the copy while it was free.
    fn lock(&mut self) -> Result<(), ReplicaError> {
        if self.locked {
            return Ok(());
        }
        run_cached(&self.apply, "BEGIN IMMEDIATE")?;
        self.locked = true;
        let now = data_version(&self.apply)?;
        if now != self.data_version {
            let found = read_pages(&self.apply, self.hashes.page_size())?;
            if found.sum() != self.position.sum {
                return Err(ReplicaError::ForeignWrite {
                    found: found.sum(),
                    kept: self.position.sum,
                });
            }
            self.data_version = now;
        }
        Ok(())
    }

    /// Recomputes the checksum from every page and runs
    /// `PRAGMA integrity_check`, both on a separate connection (the applying
    /// one may hold a stale schema).
    pub fn verify(&self) -> Result<Verification, ReplicaError> {
        let (hashes, integrity) = inspect(&self.path)?;
        Ok(Verification {
            position: self.position,
            sum_from_pages: hashes.sum(),
            integrity,
            hashes,
        })
    }
}

/// Every page's hash and `PRAGMA integrity_check`'s lines of the database at
/// `path`, read in one read transaction of a new read-only connection, as
/// local software would see it: whether or not tandem holds it open.
pub fn inspect(path: &Path) -> Result<(PageHashes, Vec<String>), ReplicaError> {
    let reader = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    reader.busy_timeout(LOCK_WAIT)?;
    reader.execute_batch("BEGIN")?;
    let hashes = read_pages(&reader, page_size_of(&reader)?)?;
    let mut stmt = reader.prepare("PRAGMA integrity_check")?;
    let integrity = stmt
        .query_map([], |r| r.get::<_, String>(0))?
        .collect::<Result<Vec<_>, _>>()?;
    drop(stmt);
    reader.execute_batch("COMMIT")?;
    Ok((hashes, integrity))
}
