//! Seeding an empty standby copy from the primary's image, chunk by chunk.
//!
//! The image arrives as pages in ascending order, possibly gigabytes of them,
//! while the primary keeps serving. They are written straight into a
//! temporary file next to the copy's path (`<path>.tandem-seed`), never held
//! in memory, and hashed as they come. Only when every page is there and the
//! checksum equals the primary's is the file made durable, renamed into
//! place and given its position record; then it is opened as an ordinary
//! [`Replica`]. A crash in the middle leaves no copy at the path, only the
//! temporary file, which the next seed starts over.
//!
//! The pages are a consistent snapshot of a WAL-mode database, so the file
//! they make is a complete WAL-mode database with an empty log: any stale
//! `-wal` or `-shm` file at the path is removed first, because SQLite would
//! otherwise replay it over the new content.

use crate::position::PositionFile;
use crate::replica::{position_path, Replica, ReplicaError};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use tandem_sync::dbsum::{DbPosition, PageHashes};

/// A seed in progress. See the module doc.
#[derive(Debug)]
pub struct Seeder {
    path: PathBuf,
    tmp: PathBuf,
    file: File,
    at: DbPosition,
    page_size: u32,
    page_count: u32,
    hashes: PageHashes,
    next_pgno: u32,
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ReplicaError + '_ {
    move |source| ReplicaError::Io {
        path: path.to_owned(),
        source,
    }
}

fn sync_dir(path: &Path) -> Result<(), ReplicaError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

impl Seeder {
    /// Starts seeding a copy at `path`, which must not exist, from an image
    /// of `page_count` pages of `page_size` bytes at position `at`.
    pub fn begin(
        path: &Path,
        at: DbPosition,
        page_size: u32,
        page_count: u32,
    ) -> Result<Seeder, ReplicaError> {
        if path.exists() {
            return Err(ReplicaError::Exists {
                path: path.to_owned(),
            });
        }
        if !page_size.is_power_of_two() || !(512..=65536).contains(&page_size) {
            return Err(ReplicaError::NotUsable(
                path.to_owned(),
                format!("seed image has page size {page_size}"),
            ));
        }
        let tmp = with_suffix(path, ".tandem-seed");
        // A new standby may not have the primary's directory yet.
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io(dir))?;
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(io(&tmp))?;
        Ok(Seeder {
            path: path.to_owned(),
            tmp,
            file,
            at,
            page_size,
            page_count,
            hashes: PageHashes::new(page_size as usize),
            next_pgno: 1,
        })
    }

    pub fn position(&self) -> DbPosition {
        self.at
    }

    pub fn page_count(&self) -> u32 {
        self.page_count
    }

    /// The first page not yet written.
    pub fn next_pgno(&self) -> u32 {
        self.next_pgno
    }

    /// Writes the next pages of the image (ascending, after those written).
    pub fn write(&mut self, pages: &[(u32, Vec<u8>)]) -> Result<(), ReplicaError> {
        for (pgno, data) in pages {
            if *pgno < self.next_pgno || *pgno > self.page_count {
                return Err(ReplicaError::NotUsable(
                    self.path.clone(),
                    format!(
                        "seed page {pgno} out of order (expected {} to {})",
                        self.next_pgno, self.page_count
                    ),
                ));
            }
            if data.len() != self.page_size as usize {
                return Err(ReplicaError::PageSize {
                    pgno: *pgno,
                    bytes: data.len(),
                    page_size: self.page_size as usize,
                });
            }
            let offset = u64::from(*pgno - 1) * u64::from(self.page_size);
            self.file
                .write_all_at(data, offset)
                .map_err(io(&self.tmp))?;
            self.hashes.set(*pgno, data);
            self.next_pgno = pgno + 1;
        }
        // Written back while the rest arrives: the final fsync is short.
        if let (Some((first, _)), Some((last, _))) = (pages.first(), pages.last()) {
            let size = u64::from(self.page_size);
            crate::start_writeback(
                &self.file,
                u64::from(first - 1) * size,
                u64::from(last - first + 1) * size,
            );
        }
        Ok(())
    }

    /// Checks the checksum, makes the file durable, puts it in place with its
    /// position record and opens it as a replica.
    pub fn finish(self) -> Result<Replica, ReplicaError> {
        let mut hashes = self.hashes;
        hashes.resize(self.page_count);
        if hashes.sum() != self.at.sum {
            let _ = std::fs::remove_file(&self.tmp);
            return Err(ReplicaError::Diverged {
                txid: self.at.txid,
                expected: self.at.sum,
                computed: hashes.sum(),
            });
        }
        let len = u64::from(self.page_count) * u64::from(self.page_size);
        self.file.set_len(len).map_err(io(&self.tmp))?;
        self.file.sync_all().map_err(io(&self.tmp))?;
        drop(self.file);
        for stale in ["-wal", "-shm"] {
            let p = with_suffix(&self.path, stale);
            match std::fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io(&p)(e)),
            }
        }
        let pos_path = position_path(&self.path);
        match std::fs::remove_file(&pos_path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(&pos_path)(e)),
        }
        std::fs::rename(&self.tmp, &self.path).map_err(io(&self.path))?;
        sync_dir(&self.path)?;
        PositionFile::create(&pos_path, self.at).map_err(io(&pos_path))?;
        Replica::open_seeded(&self.path, hashes)
    }
}

/// Gives the database at `path` (an ordinary database tandem captured as
/// primary until now) a fresh position record at `at` and opens it as a
/// replica. Opening recomputes the checksum from every page, so a file that
/// is not at `at` is refused ([`ReplicaError::UnknownContent`]).
pub fn adopt(path: &Path, at: DbPosition) -> Result<Replica, ReplicaError> {
    record_position(path, at)?;
    Replica::open(path)
}

/// [`adopt`] with a connection that already holds the write lock (see
/// [`Replica::open_locked`]), so that no local writer can commit between
/// the capture's last position and the replica's first apply.
pub fn adopt_locked(
    path: &Path,
    at: DbPosition,
    lock: rusqlite::Connection,
) -> Result<Replica, ReplicaError> {
    record_position(path, at)?;
    Replica::open_locked(path, lock)
}

fn record_position(path: &Path, at: DbPosition) -> Result<(), ReplicaError> {
    let pos_path = position_path(path);
    let tmp = with_suffix(&pos_path, ".tmp");
    match std::fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(&tmp)(e)),
    }
    PositionFile::create(&tmp, at).map_err(io(&tmp))?;
    std::fs::rename(&tmp, &pos_path).map_err(io(&pos_path))?;
    sync_dir(&pos_path)
}

/// Removes the position record of the copy at `path` (it becomes the
/// primary's database, whose position the capture keeps from now on).
pub fn forget_position(path: &Path) -> Result<(), ReplicaError> {
    let pos_path = position_path(path);
    match std::fs::remove_file(&pos_path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io(&pos_path)(e)),
    }
    sync_dir(&pos_path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::Connection;
    use tandem_sync::dbsum::TxId;
    use tandem_sync::Epoch;

    fn pages_of(path: &Path) -> (u32, Vec<(u32, Vec<u8>)>) {
        let c = Connection::open(path).unwrap();
        let ps: u32 = c.query_row("PRAGMA page_size", [], |r| r.get(0)).unwrap();
        let mut s = c
            .prepare("SELECT pgno, data FROM sqlite_dbpage ORDER BY pgno")
            .unwrap();
        let pages = s
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        (ps, pages)
    }

    #[test]
    fn a_seeded_copy_has_the_rows_and_a_bad_image_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src.db");
        let c = Connection::open(&src).unwrap();
        c.execute_batch(
            "PRAGMA journal_mode=WAL; CREATE TABLE t(x); INSERT INTO t VALUES (1), (2);",
        )
        .unwrap();
        let (ps, pages) = pages_of(&src);
        let sum = PageHashes::of_pages(ps as usize, pages.iter().map(|(p, d)| (*p, &d[..]))).sum();
        let at = DbPosition {
            epoch: Epoch(2),
            txid: TxId(7),
            sum,
        };
        let dst = dir.path().join("dst.db");
        let mut s = Seeder::begin(&dst, at, ps, pages.len() as u32).unwrap();
        for chunk in pages.chunks(1) {
            s.write(chunk).unwrap();
        }
        let replica = s.finish().unwrap();
        assert_eq!(replica.position(), at);
        let n: i64 = Connection::open(&dst)
            .unwrap()
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 2);
        drop(replica);

        // A wrong checksum never produces a copy.
        let other = dir.path().join("other.db");
        let wrong = DbPosition {
            sum: tandem_sync::dbsum::DbSum([1; 32]),
            ..at
        };
        let mut s = Seeder::begin(&other, wrong, ps, pages.len() as u32).unwrap();
        s.write(&pages).unwrap();
        assert!(matches!(s.finish(), Err(ReplicaError::Diverged { .. })));
        assert!(!other.exists());

        // Adopting the source at its position works; at another it is refused.
        assert!(adopt(&src, wrong).is_err());
        drop(c);
        let adopted = adopt(&src, at).unwrap();
        assert_eq!(adopted.position(), at);
    }
}
