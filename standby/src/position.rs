//! The replica's position record: a small sidecar file next to the database.
//!
//! The position cannot live inside the database: every byte of the file is
//! covered by the checksum the primary computes, so a tandem-owned table or a
//! header field would make the two copies differ. It cannot simply be written
//! after each commit either: a crash between the commit and that write would
//! leave a database one transaction ahead of its record. So the record is an
//! *intent*, written before each apply: "at (txid - 1, sum before), applying
//! txid, which gives sum after". After a crash the replica recomputes the
//! database's sum from scratch and takes whichever side of the intent it
//! equals; SQLite's own atomic commit guarantees it is one of the two.
//!
//! # Durable once the stream pauses, not with each apply
//!
//! The intent is written before each apply but made durable
//! ([`PositionFile::make_durable`]) only once no apply followed for 20 ms
//! (the node's engine decides when). An `fdatasync` per apply was more than
//! a quarter of the standby's context switches at 200 transactions a
//! second. What that costs is bounded:
//!
//! - A kill -9 loses nothing: the written intent is in the page cache, and
//!   the replica comes back at its exact position.
//! - A power loss may leave an older intent on disk while SQLite's commits
//!   (each one fsynced) are all there: the database is then *ahead* of its
//!   record, which matches neither side. Such a copy is opened by its
//!   content alone ([`crate::Replica::open_by_content`]): its txid is
//!   unknown and the primary places it by its checksum. The primary keeps
//!   every transaction after the last acknowledged one, and the copy cannot
//!   be behind that, so while the primary runs it always finds the copy on
//!   its line and resyncs it by page hashes (only differing pages move). A
//!   copy whose last apply came 20 ms or more before the power loss has a
//!   durable record and needs none of this.
//! - If both nodes lost power mid-stream, the primary may no longer know
//!   the copy's checksum: the copy is quarantined whole and seeded anew,
//!   never overwritten on a guess.
//!
//! Content that matches no point of the line the primary knows is treated
//! the same way whatever the cause, so a write made on the standby while
//! tandem was stopped ends quarantined as well.
//!
//! The file has two fixed 256-byte slots written alternately, each with a
//! sequence number and a blake3 checksum, so a torn write of one slot leaves
//! the other intact, and rewriting in place needs no rename or directory
//! fsync.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use tandem_sync::dbsum::{DbPosition, DbSum, TxId};
use tandem_sync::Epoch;

const SLOT_BYTES: usize = 256;
const MAGIC: &[u8; 8] = b"TDMPOS01";
/// magic, seq, epoch, before txid, before sum, after txid, after sum.
const BODY_BYTES: usize = 8 + 8 + 8 + 8 + 32 + 8 + 32;

/// One intent: the database is at `before` or, once the apply committed, at
/// `after`. Both carry the same epoch: the one `after` was committed in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Intent {
    pub seq: u64,
    pub before: DbPosition,
    pub after: DbPosition,
}

impl Intent {
    fn encode(&self) -> [u8; SLOT_BYTES] {
        let mut out = [0u8; SLOT_BYTES];
        let mut at = 0;
        let mut put = |bytes: &[u8]| {
            out[at..at + bytes.len()].copy_from_slice(bytes);
            at += bytes.len();
        };
        put(MAGIC);
        put(&self.seq.to_be_bytes());
        put(&self.after.epoch.0.to_be_bytes());
        put(&self.before.txid.0.to_be_bytes());
        put(&self.before.sum.0);
        put(&self.after.txid.0.to_be_bytes());
        put(&self.after.sum.0);
        let check = blake3::hash(&out[..BODY_BYTES]);
        out[BODY_BYTES..BODY_BYTES + 32].copy_from_slice(check.as_bytes());
        out
    }

    fn decode(slot: &[u8]) -> Option<Intent> {
        let body = slot.get(..BODY_BYTES)?;
        let check = slot.get(BODY_BYTES..BODY_BYTES + 32)?;
        if body.get(..8)? != MAGIC || blake3::hash(body).as_bytes() != check {
            return None;
        }
        let u64_at = |at: usize| -> Option<u64> {
            Some(u64::from_be_bytes(body.get(at..at + 8)?.try_into().ok()?))
        };
        let sum_at =
            |at: usize| -> Option<DbSum> { Some(DbSum(body.get(at..at + 32)?.try_into().ok()?)) };
        let epoch = Epoch(u64_at(16)?);
        Some(Intent {
            seq: u64_at(8)?,
            before: DbPosition {
                epoch,
                txid: TxId(u64_at(24)?),
                sum: sum_at(32)?,
            },
            after: DbPosition {
                epoch,
                txid: TxId(u64_at(64)?),
                sum: sum_at(72)?,
            },
        })
    }
}

/// The open sidecar file.
#[derive(Debug)]
pub struct PositionFile {
    file: File,
    next_seq: u64,
    /// An intent was written since the last `fdatasync`.
    dirty: bool,
}

impl PositionFile {
    /// Creates the file with one settled intent (before == after) and makes
    /// its directory entry durable.
    pub fn create(path: &Path, at: DbPosition) -> io::Result<PositionFile> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)?;
        file.set_len(2 * SLOT_BYTES as u64)?;
        let mut me = PositionFile {
            file,
            next_seq: 1,
            dirty: false,
        };
        me.record(at, at)?;
        me.make_durable()?;
        if let Some(dir) = path.parent() {
            File::open(if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            })?
            .sync_all()?;
        }
        Ok(me)
    }

    /// Opens the file and returns its valid intents, newest first.
    pub fn open(path: &Path) -> io::Result<(PositionFile, Vec<Intent>)> {
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        let mut bytes = [0u8; 2 * SLOT_BYTES];
        let len = file.metadata()?.len();
        let readable = (len.min(bytes.len() as u64)) as usize;
        file.read_exact_at(&mut bytes[..readable], 0)?;
        let mut intents: Vec<Intent> = bytes
            .chunks(SLOT_BYTES)
            .filter_map(Intent::decode)
            .collect();
        intents.sort_by_key(|i| std::cmp::Reverse(i.seq));
        let next_seq = intents.first().map_or(1, |i| i.seq + 1);
        Ok((
            PositionFile {
                file,
                next_seq,
                dirty: false,
            },
            intents,
        ))
    }

    /// Records that the database goes from `before` to `after`: written,
    /// durable only with the next [`PositionFile::make_durable`] (see the
    /// module doc).
    pub fn record(&mut self, before: DbPosition, after: DbPosition) -> io::Result<()> {
        let intent = Intent {
            seq: self.next_seq,
            before,
            after,
        };
        let slot = (intent.seq % 2) * SLOT_BYTES as u64;
        self.file.write_all_at(&intent.encode(), slot)?;
        self.next_seq += 1;
        self.dirty = true;
        Ok(())
    }

    /// Makes the last recorded intent durable, if it is not yet.
    pub fn make_durable(&mut self) -> io::Result<()> {
        if self.dirty {
            self.file.sync_data()?;
            self.dirty = false;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(txid: u64, b: u8) -> DbPosition {
        DbPosition {
            epoch: Epoch(3),
            txid: TxId(txid),
            sum: DbSum([b; 32]),
        }
    }

    #[test]
    fn intents_round_trip_and_a_torn_slot_leaves_the_other() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.tandem-position");
        let mut f = PositionFile::create(&path, pos(0, 0)).unwrap();
        f.record(pos(0, 0), pos(1, 1)).unwrap();
        f.record(pos(1, 1), pos(2, 2)).unwrap();
        drop(f);
        let (_, intents) = PositionFile::open(&path).unwrap();
        assert_eq!(intents.len(), 2);
        assert_eq!(intents[0].after, pos(2, 2));
        assert_eq!(intents[1].after, pos(1, 1));
        // Tear the newest slot (seq 3 lives in slot 1).
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        file.write_all_at(&[0xff; 7], SLOT_BYTES as u64 + 40)
            .unwrap();
        let (mut f, intents) = PositionFile::open(&path).unwrap();
        assert_eq!(intents.len(), 1);
        assert_eq!(intents[0].after, pos(1, 1));
        f.record(pos(1, 1), pos(2, 2)).unwrap();
        let (_, intents) = PositionFile::open(&path).unwrap();
        assert_eq!(intents[0].after, pos(2, 2));
        assert_eq!(intents[0].seq, 3);
    }
}
