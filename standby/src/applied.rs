//! The standby's record of what it applied since its manifest was last kept.
//!
//! The node keeps the replica's manifest on disk at most once a second (it
//! is rewritten whole). At a restart, whatever on disk differs from that
//! manifest is suspect: a local change, or an apply whose record had not
//! been kept yet. Without this log a file applied in that last second and
//! replaced by the primary after the restart would be taken for a local
//! change and moved to quarantine for nothing.
//!
//! So before each apply takes effect (before its rename, unlink or
//! metadata change) a record of the state it leaves at each path is
//! appended here, and the node empties the log each time it has kept the
//! manifest. At a restart, a path whose state on disk equals a record is
//! one tandem wrote, not a local change.
//!
//! Records are written, not fsynced: a killed process loses none of them
//! (they are in the page cache). After a power cut the last ones may be
//! missing while their applies reached the disk; those paths are then
//! suspect and, if the primary replaces them, kept in quarantine: a false
//! alarm, nothing lost.
//!
//! Format: records, each a little-endian u32 length and a postcard
//! `(SafePath, Option<Entry>)` (`None`: nothing at the path). A torn last
//! record ends the log.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use tandem_sync::fileset::SafePath;
use tandem_sync::manifest::{Change, Entry};

/// One record: the state an apply left at a path (`None`: nothing).
pub type Record = (SafePath, Option<Entry>);

/// The paths a change leaves, and what it leaves at each.
fn outcomes(change: &Change) -> Vec<(&SafePath, Option<&Entry>)> {
    match change {
        Change::Create { path, entry } => vec![(path, Some(entry))],
        Change::Modify { path, new, .. } | Change::Meta { path, new, .. } => {
            vec![(path, Some(new))]
        }
        Change::Delete { path, .. } => vec![(path, None)],
        Change::Rename { from, to, new, .. } => vec![(from, None), (to, Some(new))],
    }
}

/// An open log, appended to.
#[derive(Debug)]
pub struct AppliedLog {
    path: PathBuf,
    file: File,
}

impl AppliedLog {
    /// Open (or create) the log at `path`, with the records it holds,
    /// oldest first. A torn last record (a crash mid-write) is cut off, so
    /// what is appended next is read back.
    pub fn open(path: &Path) -> io::Result<(Self, Vec<Record>)> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mut file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(path)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        let (records, valid) = decode(&bytes);
        if valid < bytes.len() {
            file.set_len(valid as u64)?;
        }
        let log = Self {
            path: path.to_owned(),
            file,
        };
        Ok((log, records))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Record what `changes` will leave, in one write.
    pub fn record<'a>(&mut self, changes: impl IntoIterator<Item = &'a Change>) -> io::Result<()> {
        let mut buf = Vec::new();
        for change in changes {
            for outcome in outcomes(change) {
                // Serialising plain data to a Vec cannot fail.
                let bytes = postcard::to_allocvec(&outcome).unwrap_or_default();
                buf.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
                buf.extend_from_slice(&bytes);
            }
        }
        if buf.is_empty() {
            return Ok(());
        }
        self.file.write_all(&buf)
    }

    /// Forget every record: the manifest that includes them is kept.
    pub fn clear(&mut self) -> io::Result<()> {
        self.file.set_len(0)
    }
}

/// The records in `bytes` and the length they span: decoding stops at the
/// first record that does not decode.
fn decode(bytes: &[u8]) -> (Vec<Record>, usize) {
    let mut records = Vec::new();
    let mut rest = bytes;
    while let Some((len, tail)) = rest.split_first_chunk::<4>() {
        let len = u32::from_le_bytes(*len) as usize;
        let Some(record) = tail.get(..len) else {
            break;
        };
        match postcard::from_bytes::<Record>(record) {
            Ok(r) => records.push(r),
            Err(_) => break,
        }
        rest = &tail[len..];
    }
    (records, bytes.len() - rest.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_sync::manifest::EntryKind;

    fn p(s: &str) -> SafePath {
        SafePath::parse(s).unwrap()
    }

    fn file(size: u64, mtime_ns: i64) -> Entry {
        Entry {
            kind: EntryKind::File {
                size,
                hash: [size as u8; 32],
                chunks: Vec::new(),
            },
            mode: 0o644,
            mtime_ns,
            owner: None,
        }
    }

    #[test]
    fn records_read_back_in_order_and_a_torn_tail_is_cut_off() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/set.applied");
        let (mut log, none) = AppliedLog::open(&path).unwrap();
        assert!(none.is_empty());
        log.record([&Change::Create {
            path: p("a"),
            entry: file(0, 1),
        }])
        .unwrap();
        log.record([&Change::Rename {
            from: p("a"),
            to: p("b"),
            old: file(0, 1),
            new: file(0, 2),
        }])
        .unwrap();
        drop(log);
        // A torn record after them.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&[200, 0, 0, 0, 1, 2]).unwrap();
        drop(f);
        let (mut log, records) = AppliedLog::open(&path).unwrap();
        assert_eq!(
            records,
            vec![
                (p("a"), Some(file(0, 1))),
                (p("a"), None),
                (p("b"), Some(file(0, 2))),
            ]
        );
        // Appended after the cut: read back.
        log.record([&Change::Delete {
            path: p("b"),
            old: file(0, 2),
        }])
        .unwrap();
        drop(log);
        let (mut log, records) = AppliedLog::open(&path).unwrap();
        assert_eq!(records.len(), 4);
        assert_eq!(records[3], (p("b"), None));
        log.clear().unwrap();
        log.record([&Change::Meta {
            path: p("c"),
            old: file(0, 1),
            new: file(0, 3),
        }])
        .unwrap();
        drop(log);
        let (_, records) = AppliedLog::open(&path).unwrap();
        assert_eq!(records, vec![(p("c"), Some(file(0, 3)))]);
    }
}
