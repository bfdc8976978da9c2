//! What wakes a primary's database engine when its `-wal` file changes:
//! inotify on the database's directory, read on the engine's own runtime.
//!
//! Why not the `notify` crate (which the file sets use, for its recursive
//! watches and its overflow handling): its event loop is a thread of its
//! own, so each write woke that thread, which then woke the engine, two
//! thread hand-offs where one suffices. Here the engine's runtime polls the
//! inotify descriptor itself.
//!
//! # Paused while the WAL keeps growing
//!
//! Every `write` SQLite makes to the WAL (several per transaction) is an
//! event, and each event woke the engine, from inside the application's
//! own write call. Against a writer committing back to back that cost
//! tandem most of a core and the writer a third of its throughput. So when
//! a read finds new transactions soon after the last one that did
//! ([`BUSY_GAP`]), the engine pauses the watch (takes the descriptor out of
//! its epoll set: events still queue, merged, but wake nobody) and reads
//! again on a short timer; the first read that finds nothing resumes the
//! watch. A quiet database is still read at its first write, and a busy one
//! in batches. (A timed read costs a wake-up too, so at a few hundred
//! transactions a second, where one timed read would find nothing, the
//! watch stays armed.)

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, InotifyEvent};
use std::ffi::OsString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::path::Path;
use std::time::{Duration, Instant};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

struct Fd(Inotify);

impl Fd {
    /// In the runtime's epoll set, for readability.
    fn register(self) -> io::Result<AsyncFd<Fd>> {
        // SAFETY: `Fd` owns the descriptor, which stays open (and the same)
        // until the AsyncFd, its only owner, is dropped or gives it back.
        unsafe { AsyncFd::register_with_interest(self, Interest::READABLE) }
            .map_err(|e| e.into_parts().1)
    }
}

impl AsRawFd for Fd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

/// Transactions this close together mean a busy writer.
pub const BUSY_GAP: Duration = Duration::from_millis(2);

pub struct WalWatch {
    /// Exactly one of the two is set, except after a failed resume.
    armed: Option<AsyncFd<Fd>>,
    paused: Option<Fd>,
    wal_name: OsString,
    /// When a read last found new transactions.
    grew_at: Option<Instant>,
}

impl WalWatch {
    /// Watches the directory of `wal` (the file itself may not exist yet,
    /// and SQLite may delete and re-create it) for changes to that name.
    /// Must be called within a tokio runtime.
    pub fn new(wal: &Path) -> io::Result<WalWatch> {
        let (Some(dir), Some(wal_name)) = (wal.parent(), wal.file_name()) else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{}: no directory or file name", wal.display()),
            ));
        };
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)?;
        inotify.add_watch(
            dir,
            AddWatchFlags::IN_MODIFY
                | AddWatchFlags::IN_CREATE
                | AddWatchFlags::IN_DELETE
                | AddWatchFlags::IN_MOVED_FROM
                | AddWatchFlags::IN_MOVED_TO
                | AddWatchFlags::IN_DELETE_SELF
                | AddWatchFlags::IN_MOVE_SELF,
        )?;
        Ok(WalWatch {
            armed: Some(Fd(inotify).register()?),
            paused: None,
            grew_at: None,
            wal_name: wal_name.to_owned(),
        })
    }

    /// Returns once the WAL may have changed: an event on its name, or the
    /// queue overflowed (events were lost, so anything may have). An error
    /// when the watch itself ended (the directory was removed or moved):
    /// the caller watches again.
    /// Never returns while the watch is paused; an error at once after a
    /// resume failed.
    pub async fn changed(&self) -> io::Result<()> {
        let Some(fd) = &self.armed else {
            if self.paused.is_none() {
                return Err(io::Error::other("the watch could not resume"));
            }
            return std::future::pending().await;
        };
        loop {
            let mut ready = fd.readable().await?;
            let events = match ready.try_io(|fd| fd.get_ref().0.read_events().map_err(Into::into)) {
                Ok(events) => events?,
                Err(_would_block) => continue,
            };
            if self.relevant(events)? {
                return Ok(());
            }
        }
    }

    fn relevant(&self, events: Vec<InotifyEvent>) -> io::Result<bool> {
        let mut changed = false;
        for ev in events {
            if ev.mask.intersects(
                AddWatchFlags::IN_IGNORED
                    | AddWatchFlags::IN_DELETE_SELF
                    | AddWatchFlags::IN_MOVE_SELF,
            ) {
                return Err(io::Error::other(
                    "the database's directory was removed or moved",
                ));
            }
            changed |= ev.mask.contains(AddWatchFlags::IN_Q_OVERFLOW)
                || ev.name.as_deref() == Some(self.wal_name.as_os_str());
        }
        Ok(changed)
    }

    /// Notes a read that found new transactions at `now`: true when the
    /// writer is busy (the last such read was within [`BUSY_GAP`], or the
    /// watch is paused already), and the caller should pause.
    pub fn busy(&mut self, now: Instant) -> bool {
        let busy = self.paused()
            || self
                .grew_at
                .is_some_and(|t| now.saturating_duration_since(t) < BUSY_GAP);
        self.grew_at = Some(now);
        busy
    }

    /// Stops waking the engine; events queue until [`WalWatch::resume`].
    pub fn pause(&mut self) {
        if let Some(fd) = self.armed.take() {
            self.paused = Some(fd.into_inner());
        }
    }

    pub fn paused(&self) -> bool {
        self.armed.is_none()
    }

    /// Wakes the engine again at the next change. What queued while paused
    /// is dropped: the caller reads the WAL after this returns. An error
    /// when the watch ended meanwhile (the caller watches again).
    pub fn resume(&mut self) -> io::Result<()> {
        let Some(fd) = self.paused.take() else {
            return Ok(());
        };
        loop {
            match fd.0.read_events() {
                Ok(events) => {
                    self.relevant(events)?;
                }
                Err(nix::errno::Errno::EAGAIN) => break,
                Err(e) => return Err(e.into()),
            }
        }
        self.armed = Some(fd.register()?);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn wakes(watch: &WalWatch) -> bool {
        tokio::time::timeout(Duration::from_secs(5), watch.changed())
            .await
            .is_ok_and(|r| r.is_ok())
    }

    #[tokio::test]
    async fn wakes_on_the_wal_only() {
        let dir = tempfile::tempdir().unwrap();
        let wal = dir.path().join("db-wal");
        let watch = WalWatch::new(&wal).unwrap();
        // Another file's events are drained without waking.
        std::fs::write(dir.path().join("db"), b"x").unwrap();
        std::fs::write(&wal, b"frames").unwrap();
        assert!(wakes(&watch).await);
        let quiet = tokio::time::timeout(Duration::from_millis(50), watch.changed()).await;
        assert!(quiet.is_err(), "woke with nothing new: {quiet:?}");
        std::fs::OpenOptions::new()
            .append(true)
            .open(&wal)
            .and_then(|mut f| std::io::Write::write_all(&mut f, b"more"))
            .unwrap();
        assert!(wakes(&watch).await);
    }

    #[tokio::test]
    async fn a_paused_watch_stays_quiet_and_resumes() {
        let dir = tempfile::tempdir().unwrap();
        let wal = dir.path().join("db-wal");
        let mut watch = WalWatch::new(&wal).unwrap();
        watch.pause();
        assert!(watch.paused());
        std::fs::write(&wal, b"frames").unwrap();
        let quiet = tokio::time::timeout(Duration::from_millis(50), watch.changed()).await;
        assert!(quiet.is_err(), "a paused watch woke: {quiet:?}");
        // What queued while paused is dropped on resume; a new write wakes.
        watch.resume().unwrap();
        assert!(!watch.paused());
        let quiet = tokio::time::timeout(Duration::from_millis(50), watch.changed()).await;
        assert!(
            quiet.is_err(),
            "woke for what was written while paused: {quiet:?}"
        );
        std::fs::write(&wal, b"more").unwrap();
        assert!(wakes(&watch).await);
    }

    #[tokio::test]
    async fn only_reads_close_together_count_as_busy() {
        let dir = tempfile::tempdir().unwrap();
        let mut watch = WalWatch::new(&dir.path().join("db-wal")).unwrap();
        let t = Instant::now();
        assert!(!watch.busy(t), "the first read is not busy");
        assert!(!watch.busy(t + BUSY_GAP * 2), "a gap of twice BUSY_GAP");
        assert!(watch.busy(t + BUSY_GAP * 2 + BUSY_GAP / 2));
        watch.pause();
        assert!(
            watch.busy(t + BUSY_GAP * 10),
            "paused: busy until a read finds nothing"
        );
    }

    #[tokio::test]
    async fn a_removed_directory_ends_the_watch() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("d");
        std::fs::create_dir(&sub).unwrap();
        let watch = WalWatch::new(&sub.join("db-wal")).unwrap();
        std::fs::remove_dir(&sub).unwrap();
        let ended = tokio::time::timeout(Duration::from_secs(5), watch.changed())
            .await
            .expect("the watch did not notice the removal");
        assert!(ended.is_err());
    }
}
