//! A place in the kernel's queue for SQLite's WAL write lock.
//!
//! tandem needs the write lock for a moment to move its pin and to bound the
//! WAL ([`crate::capture`]). SQLite takes that lock with a non-blocking
//! `fcntl` and, when it is busy, sleeps in its busy handler and tries again:
//! against an application that commits back to back, tandem's tries land in
//! the few microseconds between one commit and the next `BEGIN` only by luck,
//! and on a loaded machine whole windows of tries missed it while the WAL
//! outgrew its cap.
//!
//! The lock is byte 120 of the `-shm` file (the WAL-index lock bytes start at
//! 120 and `WAL_WRITE_LOCK` is the first; https://www.sqlite.org/walformat.html
//! §2.3.1). A [`WriterGate`] waits for that byte with a *blocking* open file
//! description lock (`F_OFD_SETLKW`), which conflicts with SQLite's POSIX
//! locks: the kernel wakes it when the application's commit releases the
//! lock, and from then on the application's own `BEGIN` finds the byte taken
//! and goes to sleep in its busy handler (1 ms at least). The caller releases
//! the gate and takes the real lock through its SQLite connection within
//! microseconds, well inside that sleep.
//!
//! The wait runs on a thread of its own, since a blocking `fcntl` has no
//! timeout: a caller gives up after its deadline and the thread, once it gets
//! the byte, lets it go at once.
//!
//! The gate's file descriptor is never closed. Closing any descriptor of a
//! file drops every POSIX lock the process holds on it, and tandem's SQLite
//! connections hold read marks on the same `-shm` file: closing would silently
//! release the pin. So descriptors are kept, one per `-shm` inode, for the
//! life of the process.

use nix::fcntl::{fcntl, FcntlArg};
use nix::libc;
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::time::Duration;

/// Where SQLite's `WAL_WRITE_LOCK` lives in the `-shm` file.
const WAL_WRITE_LOCK_BYTE: i64 = 120;

const WAITING: u8 = 0;
const GRANTED: u8 = 1;
const ABANDONED: u8 = 2;

struct Request {
    state: Arc<AtomicU8>,
    granted: mpsc::SyncSender<()>,
}

/// Waits, in the kernel's queue, for the WAL write lock of one database.
pub struct WriterGate {
    shm: Arc<File>,
    requests: mpsc::Sender<Request>,
}

/// `-shm` descriptors by (device, inode).
type Kept = Mutex<HashMap<(u64, u64), Arc<File>>>;

/// The `-shm` descriptors opened so far; see the module doc.
fn kept() -> &'static Kept {
    static KEPT: OnceLock<Kept> = OnceLock::new();
    KEPT.get_or_init(Default::default)
}

fn lock_arg(kind: libc::c_short) -> libc::flock {
    // SAFETY: `flock` is plain old data; all-zero is a valid value (and
    // `l_pid` must be 0 for OFD locks).
    let mut l: libc::flock = unsafe { std::mem::zeroed() };
    l.l_type = kind;
    l.l_whence = libc::SEEK_SET as libc::c_short;
    l.l_start = WAL_WRITE_LOCK_BYTE;
    l.l_len = 1;
    l
}

fn unlock(shm: &File) {
    // Unlocking a byte this description holds cannot fail in a way that
    // leaves it held.
    let _ = fcntl(shm, FcntlArg::F_OFD_SETLK(&lock_arg(libc::F_UNLCK as _)));
}

impl WriterGate {
    /// A gate on the database whose `-shm` file is `shm_path` (which SQLite
    /// creates when the first connection opens the database in WAL mode).
    pub fn open(shm_path: &Path) -> std::io::Result<WriterGate> {
        let file = OpenOptions::new().read(true).write(true).open(shm_path)?;
        let meta = file.metadata()?;
        let shm = {
            let mut kept = kept().lock().unwrap_or_else(|p| p.into_inner());
            kept.entry((meta.dev(), meta.ino()))
                .or_insert_with(|| Arc::new(file))
                .clone()
        };
        let (requests, inbox) = mpsc::channel::<Request>();
        let waiter = shm.clone();
        std::thread::Builder::new()
            .name("wal-gate".into())
            .spawn(move || {
                for r in inbox {
                    if r.state.load(Ordering::Acquire) != WAITING {
                        continue;
                    }
                    let lock = lock_arg(libc::F_WRLCK as _);
                    let locked = loop {
                        match fcntl(&*waiter, FcntlArg::F_OFD_SETLKW(&lock)) {
                            Err(nix::errno::Errno::EINTR) => continue,
                            other => break other.is_ok(),
                        }
                    };
                    if !locked {
                        continue;
                    }
                    // Once granted, the byte is the caller's to release
                    // (it sees the grant or, past its deadline, the state).
                    match r.state.compare_exchange(
                        WAITING,
                        GRANTED,
                        Ordering::AcqRel,
                        Ordering::Acquire,
                    ) {
                        Ok(_) => {
                            let _ = r.granted.send(());
                        }
                        Err(_) => unlock(&waiter),
                    }
                }
            })?;
        Ok(WriterGate { shm, requests })
    }

    /// Waits up to `wait` until no other connection holds the write lock,
    /// and holds it off for the caller: true when the caller now has the
    /// byte and must [`WriterGate::release`] it before taking the lock
    /// through SQLite (at once: the application is held off meanwhile).
    pub fn wait(&self, wait: Duration) -> bool {
        let state = Arc::new(AtomicU8::new(WAITING));
        let (granted, grant) = mpsc::sync_channel(1);
        if self
            .requests
            .send(Request {
                state: state.clone(),
                granted,
            })
            .is_err()
        {
            return false;
        }
        if grant.recv_timeout(wait).is_ok() {
            return true;
        }
        // Too late, unless the thread got the byte in the meantime: then it
        // is the caller's.
        state
            .compare_exchange(WAITING, ABANDONED, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
    }

    /// Lets the byte go (after a successful [`WriterGate::wait`]).
    pub fn release(&self) {
        unlock(&self.shm);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::Connection;
    use std::time::Instant;

    fn wal_db(dir: &Path) -> (std::path::PathBuf, Connection) {
        let db = dir.join("g.db");
        let c = Connection::open(&db).unwrap();
        c.execute_batch("PRAGMA journal_mode=WAL; CREATE TABLE t(v);")
            .unwrap();
        (db, c)
    }

    fn try_write(db: &Path) -> bool {
        let c = Connection::open(db).unwrap();
        c.busy_timeout(Duration::ZERO).unwrap();
        let ok = c.execute_batch("BEGIN IMMEDIATE").is_ok();
        if ok {
            c.execute_batch("COMMIT").unwrap();
        }
        ok
    }

    #[test]
    fn the_gate_waits_for_the_writer_then_holds_others_off_until_released() {
        let dir = tempfile::tempdir().unwrap();
        let (db, writer) = wal_db(dir.path());
        let gate = WriterGate::open(&dir.path().join("g.db-shm")).unwrap();

        writer.execute_batch("BEGIN IMMEDIATE").unwrap();
        let release_after = Duration::from_millis(100);
        let t = std::thread::spawn(move || {
            std::thread::sleep(release_after);
            writer.execute_batch("COMMIT").unwrap();
            writer
        });
        let started = Instant::now();
        assert!(gate.wait(Duration::from_secs(10)), "the gate never opened");
        assert!(
            started.elapsed() >= release_after,
            "granted while the writer held the lock"
        );
        let _writer = t.join().unwrap();
        assert!(
            !try_write(&db),
            "a writer got the lock while the gate held it"
        );
        gate.release();
        assert!(try_write(&db), "the gate's byte was not released");
    }

    #[test]
    fn a_wait_past_its_deadline_gives_the_lock_back_when_it_comes() {
        let dir = tempfile::tempdir().unwrap();
        let (db, writer) = wal_db(dir.path());
        let gate = WriterGate::open(&dir.path().join("g.db-shm")).unwrap();
        writer.execute_batch("BEGIN IMMEDIATE").unwrap();
        assert!(!gate.wait(Duration::from_millis(50)));
        writer.execute_batch("COMMIT").unwrap();
        // The gate's thread takes the byte when the writer lets it go, sees
        // the wait abandoned and lets it go too: a writer gets in.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !try_write(&db) {
            assert!(
                Instant::now() < deadline,
                "the abandoned wait kept the lock"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        // And the gate still works.
        assert!(gate.wait(Duration::from_secs(10)));
        gate.release();
    }
}
