//! Capture of every committed transaction of the primary's database, from its
//! WAL, whichever process wrote it.
//!
//! # What keeps the WAL readable until tandem has read it
//!
//! SQLite overwrites WAL frames only when it *restarts* the log: a writer
//! starting a transaction when every frame has been checkpointed into the
//! database and no reader uses a WAL snapshot (read marks 1..N). tandem relies
//! on two rules of SQLite's WAL locking (wal.c, "Reader algorithm" and
//! checkpointing in the WAL format docs):
//!
//! 1. A reader whose snapshot includes WAL frames holds a read mark > 0, and
//!    no connection can restart the log while such a reader exists; a
//!    checkpoint (ours or any other connection's autocheckpoint) backfills
//!    only up to the smallest such mark.
//! 2. A reader whose snapshot needs no WAL frames (everything was
//!    checkpointed when it began) holds read mark 0, which stops every
//!    checkpoint from backfilling at all; the log can then restart, but only
//!    before any new frame is appended, so nothing unread is lost.
//!
//! So tandem's *pin* connection holds a read transaction at all times. It is
//! begun (and moved forward) only while tandem holds the write lock and has
//! read the WAL to its end, so the pin's snapshot is exactly the end of what
//! was captured and acknowledged. From then on, no connection can checkpoint
//! past that point (rule 1) or restart over frames tandem has not read (rules
//! 1 and 2): other connections' autocheckpoints are harmless and need not be
//! turned off, though tandem turns off its own. tandem never runs RESTART or
//! TRUNCATE here; they wait on readers and writers without bound.
//!
//! # Checkpoints
//!
//! [`Capture::checkpoint`] is told which txid the standby acknowledged. A
//! PASSIVE checkpoint first backfills up to the pin. When everything captured
//! is acknowledged, tandem takes the write lock for a moment, releases the
//! pin, runs a second PASSIVE checkpoint of the (small) remainder, and pins
//! again. A fully backfilled log then restarts at the next write, which is
//! what keeps the WAL bounded. Writers wait at most for that second
//! checkpoint; if the write lock is not free within `lock_wait` the pin move
//! is simply tried again next time.
//!
//! # Transaction numbers
//!
//! Each captured transaction gets the next [`TxId`]. The state file records
//! (WAL header, offset, txid, checksum) at every pin, so a restarted capture
//! counts the same transactions again with the same numbers. What it cannot
//! do after a restart is ship those transactions one by one: the page hashes
//! from before them are gone, so it reports how many it skipped and the
//! standby catches up by page-hash resync.

use crate::gate::WriterGate;
use rusqlite::{Connection, OpenFlags};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tandem_sync::dbsum::{DbPosition, DbSum, PageHashes, TxId};
use tandem_sync::wal::{
    Transaction, WalChecksum, WalError, WalFrame, WalHeader, WalPosition, WalReader,
    FRAME_HEADER_BYTES, WAL_HEADER_BYTES,
};

/// How much of the WAL one read takes (more when one transaction is larger).
const WAL_READ_BYTES: usize = 64 << 10;
/// A transaction still being written is read again from its first frame
/// (the reader keeps nothing of it: SQLite may write its frames over, after
/// a rollback), so a large one is read again no sooner than its size at
/// this rate allows: a VACUUM or bulk load writing a gigabyte in one
/// transaction was read again at every poll, about once a millisecond,
/// each time in full.
const OPEN_TX_REREAD_BYTES_PER_S: u64 = 256 << 20;
/// ... and at most this long after the last read.
const OPEN_TX_REREAD_MAX: Duration = Duration::from_secs(2);
use tandem_sync::Epoch;

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("WAL: {0}")]
    Wal(#[from] WalError),
    #[error("{0} cannot be put in WAL mode (journal mode is {1})")]
    NotWal(PathBuf, String),
    #[error("state file {path} is not readable: {reason}")]
    BadState { path: PathBuf, reason: String },
    #[error("the baseline image is gone: the pin has moved since the capture opened")]
    ImageGone,
    #[error("the database is not at txid {txid} (checksum {sum}): its content sums to {found}")]
    NotAt {
        txid: TxId,
        sum: DbSum,
        found: DbSum,
    },
}

/// A consistent read snapshot of the whole database; see [`Capture::snapshot`].
pub struct Snapshot {
    conn: Connection,
    pub position: DbPosition,
    pub page_size: u32,
    pub page_count: u32,
}

impl Snapshot {
    /// Every page's hash, read from scratch from the snapshot (not the
    /// capture's running table): what `tandem verify` compares.
    pub fn page_hashes(&self) -> Result<PageHashes, CaptureError> {
        read_pages(&self.conn, self.page_size as usize)
    }

    /// Up to `max` pages from `first` on, in ascending order.
    pub fn pages(&self, first: u32, max: u32) -> Result<Vec<(u32, Vec<u8>)>, CaptureError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT data FROM sqlite_dbpage WHERE pgno = ?1")?;
        let last = first
            .saturating_add(max)
            .min(self.page_count.saturating_add(1));
        let mut out = Vec::new();
        for pgno in first..last {
            let data: Option<Vec<u8>> =
                stmt.query_row([pgno], |r| r.get(0))
                    .map(Some)
                    .or_else(|e| match e {
                        rusqlite::Error::QueryReturnedNoRows => Ok(None),
                        e => Err(e),
                    })?;
            // A page SQLite never wrote (the lock page) reads as zeros.
            out.push((
                pgno,
                data.unwrap_or_else(|| vec![0; self.page_size as usize]),
            ));
        }
        Ok(out)
    }
}

/// One captured transaction with its number and the checksum after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Captured {
    pub txid: TxId,
    pub tx: Transaction,
    pub sum: DbSum,
}

/// How [`Capture::open`] found the database relative to its state file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenOutcome {
    /// No state: numbering starts at txid 0 with the current content.
    Fresh,
    /// Same WAL as recorded: `skipped` transactions were committed since
    /// the last pin and are counted but not shipped one by one.
    Resumed { skipped: u64 },
    /// The WAL was restarted or the file changed while tandem was away: the
    /// changes are counted as one transaction that only a resync can ship.
    Discontinuous,
}

/// What [`Capture::checkpoint`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckpointOutcome {
    /// Frames in the WAL and frames backfilled into the database, as
    /// `PRAGMA wal_checkpoint(PASSIVE)` reports them.
    pub wal_frames: i64,
    pub backfilled_frames: i64,
    /// Whether the pin moved to the acknowledged end (so the log may restart).
    pub pin_moved: bool,
}

/// What [`Capture::truncate`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TruncateOutcome {
    /// The WAL file was cut to zero bytes.
    pub truncated: bool,
    /// Every frame was backfilled and the pin holds read mark 0: the next
    /// write restarts the log at its beginning (the file stops growing).
    pub log_may_restart: bool,
    pub wal_bytes_before: u64,
    pub wal_bytes_after: u64,
    /// Why not, when it was not.
    pub not_because: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct State {
    epoch: u64,
    txid: u64,
    sum: String,
    wal_header: String,
    wal_offset: u64,
    wal_checksum: (u32, u32),
}

/// The capture of one database. See the module doc.
pub struct Capture {
    db: PathBuf,
    wal: PathBuf,
    state_path: PathBuf,
    /// Takes the write lock for a moment when the pin moves.
    control: Connection,
    /// Runs PASSIVE checkpoints.
    checkpointer: Connection,
    /// Holds the read transaction that protects unread frames.
    pin: Connection,
    /// True until the pin first moves: the pin still shows the open-time image.
    image_available: bool,
    reader: WalReader,
    hashes: PageHashes,
    position: DbPosition,
    /// Captured, not yet acknowledged: txid and end offset.
    unacked: VecDeque<TxId>,
    /// Captured while moving the pin; returned by the next poll.
    held_back: Vec<Captured>,
    /// The database file's device and inode when opened: the WAL is read by
    /// path, so a file deleted and re-created under the same name must be
    /// noticed before its log is read as this one's.
    file_id: Option<(u64, u64)>,
    /// The WAL, kept open between polls. The engine wakes on inotify events
    /// of the `-wal` file, and opening a file is one (IN_OPEN): reopening
    /// it at every poll woke the engine again at once, a busy loop of
    /// thousands of polls a second with nothing written.
    wal_file: WalFile,
    /// A place in the kernel's queue for the write lock (None: the `-shm`
    /// file could not be opened; the busy handler's tries remain).
    gate: Option<WriterGate>,
    /// The control connection holds the write lock across polls, waiting
    /// for the standby to acknowledge what was read so that the log can
    /// restart ([`Capture::begin_restart`]): since when.
    restarting: Option<Instant>,
    /// How long the last restart held the write lock.
    last_hold: Option<Duration>,
    /// The bytes the last read step consumed: the next step's size.
    read_hint: usize,
    /// The read steps' buffer, kept: zeroing a fresh one at every poll
    /// cost more than the read.
    read_buf: Vec<u8>,
    /// A large transaction was being written at the last read: when to
    /// read it again ([`OPEN_TX_REREAD_BYTES_PER_S`]).
    read_again_at: Option<Instant>,
}

/// An open handle on the WAL file, reopened only when the path names another
/// file (deleted and re-created) or none.
#[derive(Default)]
struct WalFile {
    open: Option<(File, u64, u64)>,
    /// The file's length at the last look.
    len: u64,
    /// Another file (or none) is at the path since the last look: the
    /// database may have been re-created, and its log must not be read as
    /// this one's before that is ruled out.
    moved: bool,
}

impl WalFile {
    /// The handle on the file now at `path`, or None when there is none.
    /// `stat` does not raise inotify events; only the rare reopen does.
    fn get(&mut self, path: &Path) -> Result<Option<&File>, CaptureError> {
        use std::os::unix::fs::MetadataExt;
        let meta = match std::fs::metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.moved |= self.open.is_some();
                self.open = None;
                self.len = 0;
                return Ok(None);
            }
            Err(e) => return Err(io_err(path)(e)),
        };
        self.len = meta.len();
        let id = (meta.dev(), meta.ino());
        if !matches!(&self.open, Some((_, dev, ino)) if (*dev, *ino) == id) {
            self.moved |= self.open.is_some();
            self.open = match File::open(path) {
                Ok(f) => Some((f, id.0, id.1)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => return Err(io_err(path)(e)),
            };
        }
        Ok(self.open.as_ref().map(|(f, _, _)| f))
    }
}

/// Fills `buf` from `offset` (less at the end of the file); how much was read.
fn read_into(f: &File, path: &Path, offset: u64, buf: &mut [u8]) -> Result<usize, CaptureError> {
    use std::os::unix::fs::FileExt;
    let mut got = 0;
    while got < buf.len() {
        match f.read_at(&mut buf[got..], offset + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io_err(path)(e)),
        }
    }
    Ok(got)
}

/// Whether `bytes` (read at the reader's next offset) start with a frame of
/// the log `reader` is in (its salts), rather than one left from before the
/// log restarted, or nothing.
fn frame_continues_log(reader: &WalReader, bytes: &[u8]) -> bool {
    let (Some(position), Some(head)) =
        (reader.position(), bytes.first_chunk::<FRAME_HEADER_BYTES>())
    else {
        return false;
    };
    WalFrame::parse(head).salts == position.header.salts
}

fn file_id(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CaptureError + '_ {
    move |source| CaptureError::Io {
        path: path.to_owned(),
        source,
    }
}

impl Capture {
    /// Opens the database at `db` for capture in `epoch`, putting it in WAL
    /// mode if needed, with its state in `state_path`.
    pub fn open(
        db: &Path,
        state_path: &Path,
        epoch: Epoch,
    ) -> Result<(Capture, OpenOutcome), CaptureError> {
        let lock_wait = Duration::from_millis(500);
        let open = || -> Result<Connection, CaptureError> {
            let c = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_WRITE)?;
            c.busy_timeout(lock_wait)?;
            c.execute_batch("PRAGMA wal_autocheckpoint=0")?;
            Ok(c)
        };
        let control = open()?;
        let mode: String = control.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(CaptureError::NotWal(db.to_owned(), mode));
        }
        let checkpointer = open()?;
        let pin = open()?;
        let mut wal = db.as_os_str().to_owned();
        wal.push("-wal");
        let wal = PathBuf::from(wal);
        let saved = Self::load_state(state_path)?;

        control.execute_batch("BEGIN IMMEDIATE")?;
        let begun = (|| -> Result<(WalReader, u64, OpenOutcome), CaptureError> {
            let bytes = read_from(&wal, 0)?;
            // A record without a log position (taken while the WAL was
            // empty) places nothing after it: what was committed since is
            // discontinuous, as after a log restart, unless the content is
            // unchanged.
            let mut outcome = match saved {
                Some(_) => OpenOutcome::Discontinuous,
                None => OpenOutcome::Fresh,
            };
            let mut reader = WalReader::new();
            let mut counted = 0u64;
            if let Some((_, Some(pos))) = &saved {
                let same_log = bytes
                    .first_chunk::<WAL_HEADER_BYTES>()
                    .and_then(|h| WalHeader::parse(h).ok())
                    == Some(pos.header);
                if same_log {
                    let mut resumed = WalReader::resume(*pos);
                    let at = usize::try_from(pos.offset).unwrap_or(usize::MAX);
                    if let Some(rest) = bytes.get(at..) {
                        if let Ok(txs) = resumed.feed(pos.offset, rest) {
                            counted = txs.len() as u64;
                            reader = resumed;
                            outcome = OpenOutcome::Resumed { skipped: counted };
                        }
                    }
                }
            }
            if outcome != (OpenOutcome::Resumed { skipped: counted }) {
                counted = 0;
                reader = WalReader::new();
                if bytes.len() >= WAL_HEADER_BYTES {
                    reader.feed(0, &bytes).ok();
                }
            }
            pin.execute_batch("BEGIN")?;
            pin.query_row("SELECT count(*) FROM sqlite_schema", [], |r| {
                r.get::<_, i64>(0)
            })?;
            Ok((reader, counted, outcome))
        })();
        control.execute_batch("COMMIT")?;
        let (reader, _, mut outcome) = begun?;

        let page_size: i64 = pin.query_row("PRAGMA page_size", [], |r| r.get(0))?;
        let hashes = read_pages(&pin, usize::try_from(page_size).unwrap_or(0))?;
        let txid = match (&saved, outcome) {
            (None, _) => TxId(0),
            (Some((p, _)), OpenOutcome::Resumed { skipped: 0 }) if p.sum != hashes.sum() => {
                outcome = OpenOutcome::Discontinuous;
                p.txid.next()
            }
            (Some((p, _)), OpenOutcome::Resumed { skipped }) => TxId(p.txid.0 + skipped),
            (Some((p, _)), _) if p.sum == hashes.sum() => {
                // The log restarted but nothing changed the content.
                outcome = OpenOutcome::Resumed { skipped: 0 };
                p.txid
            }
            (Some((p, _)), _) => p.txid.next(),
        };
        let me = Capture {
            db: db.to_owned(),
            wal,
            state_path: state_path.to_owned(),
            control,
            checkpointer,
            pin,
            image_available: true,
            reader,
            position: DbPosition {
                epoch,
                txid,
                sum: hashes.sum(),
            },
            hashes,
            unacked: VecDeque::new(),
            held_back: Vec::new(),
            file_id: file_id(db),
            wal_file: WalFile::default(),
            gate: {
                let mut shm = db.as_os_str().to_owned();
                shm.push("-shm");
                WriterGate::open(Path::new(&shm))
                    .map_err(|e| {
                        tracing::warn!("{}: no queue for the write lock: {e}", db.display())
                    })
                    .ok()
            },
            restarting: None,
            last_hold: None,
            read_hint: WAL_READ_BYTES,
            read_buf: Vec::new(),
            read_again_at: None,
        };
        me.save_state()?;
        Ok((me, outcome))
    }

    pub fn position(&self) -> DbPosition {
        self.position
    }

    /// Opens the capture of a database that was, until now, a standby's
    /// copy at `at`: numbering continues after `at.txid` (DESIGN §2: txids
    /// continue across switchovers). Any state file is replaced. Refused with
    /// [`CaptureError::NotAt`] when the file's content is not at `at`.
    pub fn open_at(
        db: &Path,
        state_path: &Path,
        epoch: Epoch,
        at: DbPosition,
    ) -> Result<Capture, CaptureError> {
        let s = State {
            epoch: at.epoch.0,
            txid: at.txid.0,
            sum: at.sum.to_hex(),
            wal_header: String::new(),
            wal_offset: 0,
            wal_checksum: (0, 0),
        };
        write_state(state_path, &s)?;
        let (me, _) = Capture::open(db, state_path, epoch)?;
        if me.position.txid != at.txid || me.position.sum != at.sum {
            return Err(CaptureError::NotAt {
                txid: at.txid,
                sum: at.sum,
                found: me.position.sum,
            });
        }
        Ok(me)
    }

    /// The position recorded in a state file, without opening the database.
    pub fn saved_position(state_path: &Path) -> Result<Option<DbPosition>, CaptureError> {
        Ok(Self::load_state(state_path)?.map(|(p, _)| p))
    }

    /// Where the log read so far ends in the WAL file: the part of the file
    /// in use (the file itself keeps its size when the log restarts).
    pub fn wal_end(&self) -> u64 {
        self.reader.next_offset()
    }

    /// Bytes in the WAL file now (0 when there is none).
    pub fn wal_bytes(&self) -> u64 {
        std::fs::metadata(&self.wal).map_or(0, |m| m.len())
    }

    /// Bytes in the WAL file at the last poll: [`Capture::wal_bytes`]
    /// without another `stat`.
    pub fn wal_bytes_at_poll(&self) -> u64 {
        self.wal_file.len
    }

    /// A read snapshot of the whole database at exactly [`Capture::position`]
    /// as of the return: what seeds a new standby while writers go on. The
    /// write lock is held only to read the WAL to its end and begin the
    /// snapshot; transactions read then are returned by the next poll (they
    /// are inside the snapshot: their txids are at most its position).
    pub fn snapshot(&mut self) -> Result<Snapshot, CaptureError> {
        self.abort_restart()?;
        let conn = Connection::open_with_flags(&self.db, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
        conn.busy_timeout(Duration::from_millis(500))?;
        self.control.execute_batch("BEGIN IMMEDIATE")?;
        let begun = (|| -> Result<(), CaptureError> {
            let fresh = self.read_new()?;
            self.held_back.extend(fresh);
            conn.execute_batch("BEGIN")?;
            conn.query_row("SELECT count(*) FROM sqlite_schema", [], |r| {
                r.get::<_, i64>(0)
            })?;
            Ok(())
        })();
        self.control.execute_batch("COMMIT")?;
        begun?;
        let page_size: u32 = conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
        let page_count: u32 = conn.query_row("PRAGMA page_count", [], |r| r.get(0))?;
        Ok(Snapshot {
            conn,
            position: self.position,
            page_size,
            page_count,
        })
    }

    pub fn path(&self) -> &Path {
        &self.db
    }

    /// Every page of the database as it was when the capture opened, at
    /// [`Capture::position`] as of then: what seeds a new standby. Only
    /// available until the first [`Capture::checkpoint`] moves the pin.
    pub fn baseline_image(&self) -> Result<Transaction, CaptureError> {
        if !self.image_available {
            return Err(CaptureError::ImageGone);
        }
        let mut pages = Vec::new();
        let mut stmt = self
            .pin
            .prepare("SELECT pgno, data FROM sqlite_dbpage ORDER BY pgno")?;
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            let pgno: u32 = row.get(0)?;
            let data: Vec<u8> = row.get(1)?;
            pages.push((pgno, data));
        }
        let n = pages.len() as u32;
        Ok(Transaction {
            pages,
            db_pages_after_commit: n,
            end_offset: self.reader.next_offset(),
            salts: self
                .reader
                .position()
                .map_or(tandem_sync::wal::Salts { salt1: 0, salt2: 0 }, |p| {
                    p.header.salts
                }),
        })
    }

    /// Why the file at the database's path is no longer the one this capture
    /// opened (deleted, or replaced by another file), if it is not.
    pub fn replaced(&self) -> Option<String> {
        match file_id(&self.db) {
            None => Some(format!("{} was deleted", self.db.display())),
            id if id != self.file_id => Some(format!(
                "{} was replaced by another file",
                self.db.display()
            )),
            _ => None,
        }
    }

    /// Whether a poll found another WAL file (or none) at the path and
    /// read nothing until [`Capture::replaced`] rules a new database out.
    pub fn wal_moved(&self) -> bool {
        self.wal_file.moved
    }

    /// Reads what was committed since the last poll.
    ///
    /// While a large transaction is being written it is read again only
    /// at [`Capture::read_again_at`], unless the write lock is held (then
    /// none is open). [`Capture::poll_all`] does not wait: a transaction
    /// rolled back after it spilled into the WAL leaves frames that look
    /// like an open one's, and a barrier must not miss the commits written
    /// after them.
    pub fn poll(&mut self) -> Result<Vec<Captured>, CaptureError> {
        self.poll_inner(false)
    }

    /// [`Capture::poll`], reading the WAL to its end even while a large
    /// transaction is being written (see there).
    pub fn poll_all(&mut self) -> Result<Vec<Captured>, CaptureError> {
        self.poll_inner(true)
    }

    /// When a transaction being written is read again, if one is.
    pub fn read_again_at(&self) -> Option<Instant> {
        self.read_again_at
    }

    fn poll_inner(&mut self, all: bool) -> Result<Vec<Captured>, CaptureError> {
        let wait = !all
            && self.restarting.is_none()
            && self.read_again_at.is_some_and(|t| Instant::now() < t);
        if wait {
            return Ok(std::mem::take(&mut self.held_back));
        }
        // Read first: on an error, what was held back (numbered already)
        // stays for the next poll.
        let new = self.read_new()?;
        let mut out = std::mem::take(&mut self.held_back);
        out.extend(new);
        Ok(out)
    }

    /// Reads what was committed since the last read. The WAL is read from
    /// where the reader stands in steps of at most [`WAL_READ_BYTES`], not to
    /// the end of the file: after the log restarts, the file keeps its old
    /// size and its tail holds stale frames, and reading that tail at every
    /// poll cost most of the primary's CPU at a few hundred transactions a
    /// second. A step is sized on what the last one consumed (`read_hint`),
    /// so a poll that finds one small transaction copies about that much,
    /// and a step too short for a transaction is grown fourfold.
    ///
    /// Each step first reads one frame header: when it is not a frame of
    /// the current log (nothing new, or the stale tail) the poll ends there,
    /// so a wake-up with nothing to read costs a few dozen bytes, not a step.
    fn read_new(&mut self) -> Result<Vec<Captured>, CaptureError> {
        self.wal_file.get(&self.wal)?;
        if self.wal_file.moved {
            if self.replaced().is_some() {
                // The caller finds out by `replaced`; nothing is read.
                return Ok(Vec::new());
            }
            self.wal_file.moved = false;
        }
        let Some((file, ..)) = &self.wal_file.open else {
            return Ok(Vec::new());
        };
        let mut header = [0u8; WAL_HEADER_BYTES];
        let mut txs = Vec::new();
        // The reader moves past each transaction it decodes: those are
        // numbered and returned even when a later read fails (the error
        // comes back at the next poll), or they would never be shipped.
        let read = (|| -> Result<(), CaptureError> {
            if read_into(file, &self.wal, 0, &mut header)? == WAL_HEADER_BYTES {
                match self.reader.feed(0, &header) {
                    Ok(t) => txs.extend(t),
                    // A header being rewritten: SQLite sees an empty log too.
                    Err(_) => return Ok(()),
                }
                let mut at = self.reader.next_offset();
                let frame_bytes = self.reader.position().map_or(WAL_READ_BYTES, |p| {
                    p.header.page_size as usize + FRAME_HEADER_BYTES
                });
                // At least one frame (pages may be 64 KiB), at most a step.
                let step = |hint: usize| hint.min(WAL_READ_BYTES).max(frame_bytes);
                let mut want = step(self.read_hint);
                // Each turn reaches the end of the file, consumes a commit, or
                // grows `want` (up to the file's end): bounded by the file.
                while at >= WAL_HEADER_BYTES as u64 {
                    let mut head = [0u8; FRAME_HEADER_BYTES];
                    let got = read_into(file, &self.wal, at, &mut head)?;
                    if !frame_continues_log(&self.reader, &head[..got]) {
                        break;
                    }
                    if self.read_buf.len() < want {
                        self.read_buf.resize(want, 0);
                    }
                    let got = read_into(file, &self.wal, at, &mut self.read_buf[..want])?;
                    txs.extend(self.reader.feed(at, &self.read_buf[..got])?);
                    if got < want {
                        break;
                    }
                    let next = self.reader.next_offset();
                    if next > at {
                        // Transactions tend to be alike: the next read is sized
                        // on what this one consumed.
                        self.read_hint = usize::try_from(next - at).unwrap_or(WAL_READ_BYTES);
                        want = step(self.read_hint);
                        at = next;
                    } else if self.reader.wants_more() {
                        // One transaction larger than what was read: read
                        // more, never past the file's end.
                        let left = file.metadata().map_or(0, |m| m.len()).saturating_sub(at);
                        let more = want
                            .saturating_mul(4)
                            .min(usize::try_from(left).unwrap_or(usize::MAX));
                        if more <= want {
                            break;
                        }
                        want = more;
                    } else {
                        // The end of the valid log: a transaction still being
                        // written, or frames left from before the log restarted
                        // (SQLite does not shrink the file).
                        break;
                    }
                }
            }
            Ok(())
        })();
        // A large transaction still being written: read again later, in
        // the same buffer; the buffer grown for one is not kept after.
        let open = self.reader.open_bytes();
        self.read_again_at = (open > WAL_READ_BYTES as u64).then(|| {
            let wait = Duration::from_secs_f64(open as f64 / OPEN_TX_REREAD_BYTES_PER_S as f64);
            Instant::now() + wait.min(OPEN_TX_REREAD_MAX)
        });
        if self.read_again_at.is_none() && self.read_buf.len() > WAL_READ_BYTES {
            self.read_buf = Vec::new();
        }
        if let Err(e) = read {
            if txs.is_empty() {
                return Err(e);
            }
        }
        Ok(txs
            .into_iter()
            .map(|tx| {
                let sum = self.hashes.apply(&tx);
                self.position.txid = self.position.txid.next();
                self.position.sum = sum;
                self.unacked.push_back(self.position.txid);
                Captured {
                    txid: self.position.txid,
                    tx,
                    sum,
                }
            })
            .collect())
    }

    /// Checkpoints what the standby acknowledged (every txid up to `acked`);
    /// see the module doc.
    pub fn checkpoint(&mut self, acked: TxId) -> Result<CheckpointOutcome, CaptureError> {
        self.forget_acked(acked);
        let (mut wal_frames, mut backfilled_frames) = self.passive()?;
        let mut pin_moved = false;
        if self.unacked.is_empty() && self.held_back.is_empty() && self.restarting.is_none() {
            // A writer that never pauses would keep the default busy handler
            // waiting its whole timeout; try often, briefly.
            if self.take_write_lock(PIN_MOVE_WAIT).is_err() {
                return Ok(CheckpointOutcome {
                    wal_frames,
                    backfilled_frames,
                    pin_moved,
                });
            }
            let moved = (|| -> Result<bool, CaptureError> {
                let fresh = self.read_new()?;
                if !fresh.is_empty() {
                    self.held_back = fresh;
                    return Ok(false);
                }
                if let Some(counts) = self.repin(true)? {
                    (wal_frames, backfilled_frames) = counts;
                }
                Ok(true)
            })();
            self.control.execute_batch("COMMIT")?;
            pin_moved = moved?;
            if pin_moved {
                self.image_available = false;
                self.save_state()?;
            }
        }
        Ok(CheckpointOutcome {
            wal_frames,
            backfilled_frames,
            pin_moved,
        })
    }

    /// A time-bounded TRUNCATE checkpoint: every captured frame backfilled
    /// and the WAL file cut to zero bytes, so that it stays under its cap
    /// whatever the writers do. Writers wait at most about `wait`, twice
    /// (tandem's write lock, then the checkpoint's); when a lock is not free
    /// in time nothing is changed and the caller tries again later.
    ///
    /// `acked` is what the standby holds. Unless `owed_kept` (the caller
    /// keeps what the standby is owed in its own queue, or has let it go),
    /// nothing is done while a captured transaction is unacknowledged.
    ///
    /// Why no unread frame can be lost: the pin is moved, as in
    /// [`Capture::checkpoint`], under tandem's write lock with the WAL read
    /// to its end, and after a PASSIVE checkpoint that backfilled it all, so
    /// the pin holds read mark 0. The TRUNCATE then runs on the checkpointer
    /// after the write lock is released: should a writer have appended
    /// frames in between, backfilling them needs read mark 0 exclusively,
    /// which the pin holds, so the TRUNCATE gives up (busy) after `wait`
    /// and the frames stay for the next poll. It cuts the file only when
    /// nothing beyond the pin exists.
    ///
    /// Without `cut`, it stops once the log may restart (every frame
    /// backfilled, the pin at read mark 0): the next write then starts over
    /// at the beginning of the file, which stops growing; that is cheaper
    /// for writers than a file that shrinks and grows again.
    pub fn truncate(
        &mut self,
        acked: TxId,
        owed_kept: bool,
        wait: Duration,
        cut: bool,
    ) -> Result<TruncateOutcome, CaptureError> {
        let before = self.wal_bytes();
        let not = |why: &str, after: u64| TruncateOutcome {
            truncated: false,
            log_may_restart: false,
            wal_bytes_before: before,
            wal_bytes_after: after,
            not_because: Some(why.to_string()),
        };
        self.forget_acked(acked);
        if self.restarting.is_some() {
            return Ok(not("a log restart is waiting for acknowledgements", before));
        }
        if owed_kept {
            self.unacked.clear();
        } else if !self.unacked.is_empty() || !self.held_back.is_empty() {
            return Ok(not("transactions are not acknowledged yet", before));
        }
        // A short hold of the write lock to move the pin to the end, the
        // bulk of the backfill without it, then a second short hold that
        // backfills the rest (what came in between) before pinning again.
        if let Err(why) = self.move_pin_locked(owed_kept, false, wait)? {
            return Ok(not(why, self.wal_bytes()));
        }
        self.passive()?;
        match self.move_pin_locked(owed_kept, true, wait)? {
            Ok(true) => {}
            Ok(false) => return Ok(not("another reader holds WAL frames", self.wal_bytes())),
            Err(why) => return Ok(not(why, self.wal_bytes())),
        }
        if !cut {
            return Ok(TruncateOutcome {
                truncated: false,
                log_may_restart: true,
                wal_bytes_before: before,
                wal_bytes_after: self.wal_bytes(),
                not_because: None,
            });
        }
        // Holding the writer lock, the TRUNCATE waits for readers: keep
        // that short, whatever the wait for tandem's own lock was.
        if let Some(gate) = &self.gate {
            if gate.wait(wait) {
                gate.release();
            }
        }
        spin_for(wait.min(Duration::from_millis(30)));
        self.checkpointer.busy_handler(Some(spin))?;
        let done: Result<(i64, i64, i64), _> =
            self.checkpointer
                .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                });
        self.checkpointer.busy_timeout(Duration::from_millis(500))?;
        let after = self.wal_bytes();
        match done {
            Ok((0, _, _)) => Ok(TruncateOutcome {
                truncated: true,
                log_may_restart: true,
                wal_bytes_before: before,
                wal_bytes_after: after,
                not_because: None,
            }),
            // The log may still restart: every frame was backfilled and the
            // pin holds read mark 0; only the file keeps its size for now.
            Ok(_) => Ok(TruncateOutcome {
                log_may_restart: true,
                ..not("a writer or reader was in the way", after)
            }),
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::DatabaseBusy =>
            {
                Ok(TruncateOutcome {
                    log_may_restart: true,
                    ..not("a writer or reader was in the way", after)
                })
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Under tandem's write lock (waited for with [`spin`]): read the WAL to
    /// its end and move the pin there; with `backfill`, after a PASSIVE
    /// checkpoint, so that when everything was backfilled the pin holds read
    /// mark 0. `Ok(Ok(all backfilled))` when the pin moved, `Ok(Err(why))`
    /// when nothing was done.
    fn move_pin_locked(
        &mut self,
        owed_kept: bool,
        backfill: bool,
        wait: Duration,
    ) -> Result<Result<bool, &'static str>, CaptureError> {
        if self.take_write_lock(wait).is_err() {
            return Ok(Err("a writer held the write lock"));
        }
        let moved = (|| -> Result<Result<bool, &'static str>, CaptureError> {
            let fresh = self.read_new()?;
            if !fresh.is_empty() {
                self.held_back.extend(fresh);
                if !owed_kept {
                    return Ok(Err("new transactions are not acknowledged yet"));
                }
                self.unacked.clear();
            }
            let full = self.repin(backfill)?.is_some_and(|(log, done)| done >= log);
            Ok(Ok(full))
        })();
        self.control.execute_batch("COMMIT")?;
        let moved = moved?;
        if moved.is_ok() {
            self.image_available = false;
            // The state records the pin for a restarted capture; an older
            // record is still a true one (the first of the two moves skips
            // the fsyncs).
            if backfill {
                self.save_state()?;
            }
        }
        Ok(moved)
    }

    /// Makes the log restart while writers never pause (step 1 of 2).
    ///
    /// [`Capture::checkpoint`] moves the pin only when everything read is
    /// acknowledged, and against a writer committing back to back that is
    /// never so: the pin stayed where it was, the log never restarted, and
    /// the WAL grew until the cap forced a cut; every commit then appended
    /// to a growing file, which made the application's own fsyncs slower.
    /// Here tandem takes the write lock, reads the log to its end and keeps
    /// the lock while the standby acknowledges what is in flight (a round
    /// trip); [`Capture::finish_restart`] then moves the pin with everything
    /// backfilled, and the application's next commit restarts the log.
    /// True when the lock is held.
    pub fn begin_restart(&mut self, wait: Duration) -> Result<bool, CaptureError> {
        if self.restarting.is_some() {
            return Ok(true);
        }
        if self.take_write_lock(wait).is_err() {
            return Ok(false);
        }
        self.restarting = Some(Instant::now());
        match self.read_new() {
            Ok(fresh) => {
                self.held_back.extend(fresh);
                Ok(true)
            }
            Err(e) => {
                self.abort_restart()?;
                Err(e)
            }
        }
    }

    /// Step 2 of [`Capture::begin_restart`]: once everything read is
    /// acknowledged (`acked`) and polled, moves the pin with every frame
    /// backfilled and lets the lock go. `Some(log may restart)` when done,
    /// None while acknowledgements are still due (the lock is kept).
    pub fn finish_restart(&mut self, acked: TxId) -> Result<Option<bool>, CaptureError> {
        if self.restarting.is_none() {
            return Ok(None);
        }
        self.forget_acked(acked);
        if !self.unacked.is_empty() || !self.held_back.is_empty() {
            return Ok(None);
        }
        let moved = self.repin(true);
        self.abort_restart()?;
        let full = moved?.is_some_and(|(log, done)| done >= log);
        self.image_available = false;
        self.save_state()?;
        Ok(Some(full))
    }

    /// Lets the write lock of [`Capture::begin_restart`] go without moving
    /// the pin (the standby is slow, the role changes, a snapshot is due).
    pub fn abort_restart(&mut self) -> Result<(), CaptureError> {
        if let Some(since) = self.restarting.take() {
            self.control.execute_batch("COMMIT")?;
            self.last_hold = Some(since.elapsed());
        }
        Ok(())
    }

    /// How long the last log restart held writers off: from taking the
    /// write lock to letting it go (the state file is saved after).
    pub fn last_hold(&self) -> Option<Duration> {
        self.last_hold
    }

    /// Ends the pin's read transaction and begins it again at the end of
    /// the log; the caller holds the write lock, so nothing is committed in
    /// between. With `backfill`, a PASSIVE checkpoint runs while no
    /// snapshot holds frames back: its (log, backfilled) frame counts.
    fn repin(&self, backfill: bool) -> Result<Option<(i64, i64)>, CaptureError> {
        self.pin.execute_batch("COMMIT")?;
        let counts = if backfill {
            Some(self.passive()?)
        } else {
            None
        };
        self.pin.execute_batch("BEGIN")?;
        self.pin
            .query_row("SELECT count(*) FROM sqlite_schema", [], |r| {
                r.get::<_, i64>(0)
            })?;
        Ok(counts)
    }

    /// Transactions up to `acked` are no longer owed to the standby.
    fn forget_acked(&mut self, acked: TxId) {
        while self.unacked.front().is_some_and(|t| *t <= acked) {
            self.unacked.pop_front();
        }
    }

    /// Since when the write lock is held for a log restart, if it is.
    pub fn restarting(&self) -> Option<Instant> {
        self.restarting
    }

    /// `BEGIN IMMEDIATE` on the control connection within about `wait`:
    /// a place in the kernel's queue first ([`WriterGate`]), then SQLite's
    /// lock while the application sleeps in its busy handler.
    fn take_write_lock(&mut self, wait: Duration) -> Result<(), CaptureError> {
        let started = Instant::now();
        if let Some(gate) = &self.gate {
            if gate.wait(wait) {
                gate.release();
            }
        }
        spin_for(
            wait.saturating_sub(started.elapsed())
                .max(Duration::from_millis(2)),
        );
        self.control.busy_handler(Some(spin))?;
        let locked = self.control.execute_batch("BEGIN IMMEDIATE");
        self.control.busy_timeout(Duration::from_millis(500))?;
        Ok(locked?)
    }

    fn passive(&self) -> Result<(i64, i64), CaptureError> {
        let (_, log, done): (i64, i64, i64) =
            self.checkpointer
                .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })?;
        Ok((log, done))
    }

    fn load_state(path: &Path) -> Result<Option<(DbPosition, Option<WalPosition>)>, CaptureError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(path)(e)),
        };
        let bad = |reason: String| CaptureError::BadState {
            path: path.to_owned(),
            reason,
        };
        let s: State = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
        let sum = DbSum::from_hex(&s.sum).ok_or_else(|| bad("bad checksum".into()))?;
        let wal = match hex::decode(&s.wal_header) {
            Ok(h) if h.is_empty() => None,
            Ok(h) => {
                let h: [u8; WAL_HEADER_BYTES] = h
                    .try_into()
                    .map_err(|_| bad("bad WAL header length".into()))?;
                Some(WalPosition {
                    header: WalHeader::parse(&h).map_err(|e| bad(e.to_string()))?,
                    offset: s.wal_offset,
                    checksum: WalChecksum(s.wal_checksum.0, s.wal_checksum.1),
                })
            }
            Err(e) => return Err(bad(e.to_string())),
        };
        Ok(Some((
            DbPosition {
                epoch: Epoch(s.epoch),
                txid: TxId(s.txid),
                sum,
            },
            wal,
        )))
    }

    /// Records the pin point durably: temp file, fsync, rename, fsync dir.
    fn save_state(&self) -> Result<(), CaptureError> {
        let wal = self.reader.position();
        let s = State {
            epoch: self.position.epoch.0,
            txid: self.position.txid.0,
            sum: self.position.sum.to_hex(),
            wal_header: wal.map_or(String::new(), |p| hex::encode(p.header.encode())),
            wal_offset: wal.map_or(0, |p| p.offset),
            wal_checksum: wal.map_or((0, 0), |p| (p.checksum.0, p.checksum.1)),
        };
        write_state(&self.state_path, &s)
    }
}

/// How long [`Capture::checkpoint`] tries for the write lock to move the pin.
const PIN_MOVE_WAIT: Duration = Duration::from_millis(50);

const SPIN_EVERY: Duration = Duration::from_micros(50);

thread_local! {
    /// When [`spin`] gives up, on this thread (SQLite calls the busy handler
    /// on the thread that runs the statement).
    static SPIN_UNTIL: std::cell::Cell<Option<std::time::Instant>> =
        const { std::cell::Cell::new(None) };
}

/// Arm [`spin`] for the next `wait`.
fn spin_for(wait: Duration) {
    SPIN_UNTIL.with(|d| d.set(Some(std::time::Instant::now() + wait)));
}

/// A busy handler that retries every 50 µs until the time [`spin_for`]
/// set. A writer that never pauses takes the write lock again within
/// microseconds of its commit, so SQLite's default handler (which sleeps 1,
/// 2, 5... ms between tries) almost never finds it free; trying often finds
/// the gap between one commit and the next `BEGIN`, and the writer then
/// waits at most for the (short) hold.
fn spin(_retries: i32) -> bool {
    let until = SPIN_UNTIL.with(|d| d.get());
    if until.is_none_or(|u| std::time::Instant::now() >= u) {
        return false;
    }
    std::thread::sleep(SPIN_EVERY);
    true
}

fn write_state(state_path: &Path, s: &State) -> Result<(), CaptureError> {
    let text = serde_json::to_string_pretty(s).map_err(|e| CaptureError::BadState {
        path: state_path.to_owned(),
        reason: e.to_string(),
    })?;
    let mut tmp = state_path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut f = File::create(&tmp).map_err(io_err(&tmp))?;
    f.write_all(text.as_bytes()).map_err(io_err(&tmp))?;
    f.sync_all().map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, state_path).map_err(io_err(state_path))?;
    if let Some(dir) = state_path.parent().filter(|d| !d.as_os_str().is_empty()) {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(dir))?;
    }
    Ok(())
}

fn read_pages(conn: &Connection, page_size: usize) -> Result<PageHashes, CaptureError> {
    let mut table = PageHashes::new(page_size);
    let mut stmt = conn.prepare("SELECT pgno, data FROM sqlite_dbpage ORDER BY pgno")?;
    let mut rows = stmt.query([])?;
    while let Some(row) = rows.next()? {
        let pgno: u32 = row.get(0)?;
        if let rusqlite::types::ValueRef::Blob(b) = row.get_ref(1)? {
            table.set(pgno, b);
        }
    }
    Ok(table)
}

/// The WAL from `offset` to its end; empty when it does not exist.
fn read_from(path: &Path, offset: u64) -> Result<Vec<u8>, CaptureError> {
    let mut f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(path)(e)),
    };
    f.seek(SeekFrom::Start(offset)).map_err(io_err(path))?;
    let mut out = Vec::new();
    f.read_to_end(&mut out).map_err(io_err(path))?;
    Ok(out)
}
