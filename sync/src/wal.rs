//! Reading SQLite's write-ahead log, so that the primary can capture every
//! committed transaction, whichever process wrote it.
//!
//! SQLite decides which frames of a WAL file belong to the database by a rule
//! that lives entirely in the file: a frame counts only if its salts equal the
//! header's, its page number is not zero and its cumulative checksum (over the
//! header, every earlier frame and this one) matches; a transaction counts
//! only once a commit frame (non-zero "database size after commit") closes
//! it. The first frame that breaks the rule ends the valid log, and whatever
//! follows it is leftover from an earlier generation of the file, a
//! transaction rolled back after spilling, or a frame still being written.
//! [`WalReader`] applies the same rule, so it yields exactly the transactions
//! SQLite itself considers committed, in order, and nothing else.
//!
//! The reader never does I/O: the caller reads the file and feeds the bytes.
//! Its only state is where the valid log it has consumed ends (offset and
//! running checksum, a [`WalPosition`]), so frames of a transaction that is
//! not committed yet are parsed again on the next feed rather than kept. That
//! costs a re-read of an open transaction, and buys correctness when that
//! transaction is rolled back and its frames overwritten by the next one: a
//! reader that had kept them would wait forever at an offset the log no
//! longer reaches.
//!
//! When SQLite restarts the log after a checkpoint it writes a new header with
//! new salts at offset 0 and new frames over the old ones. Feeding the header
//! again (offset 0) lets the reader notice and start over at the first frame
//! of the new generation. Whether frames of the old generation were lost on
//! the way is the caller's concern: the primary prevents it by holding a read
//! transaction (see `tandem_primary`).

use std::collections::BTreeMap;

/// Bytes in the WAL file header.
pub const WAL_HEADER_BYTES: usize = 32;
/// Bytes in each frame header (the page follows).
pub const FRAME_HEADER_BYTES: usize = 24;
/// Magic number of a WAL whose checksums read words little-endian.
pub const WAL_MAGIC_LE: u32 = 0x377f_0682;
/// Magic number of a WAL whose checksums read words big-endian.
pub const WAL_MAGIC_BE: u32 = 0x377f_0683;
/// The only WAL format version SQLite has written.
pub const WAL_VERSION: u32 = 3_007_000;
/// Smallest and largest page sizes SQLite supports.
pub const PAGE_BYTES_MIN: u32 = 512;
pub const PAGE_BYTES_MAX: u32 = 65_536;

/// Why bytes are not a usable WAL header, or were fed at the wrong place.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WalError {
    #[error("not a WAL file: magic number {0:#010x}")]
    BadMagic(u32),
    #[error("unsupported WAL format version {0} (expected {WAL_VERSION})")]
    UnsupportedVersion(u32),
    #[error("invalid page size {0} in WAL header")]
    BadPageSize(u32),
    #[error("WAL header checksum does not match its contents")]
    HeaderChecksum,
    #[error("WAL bytes fed at offset {got}, but the reader continues at {expected}")]
    NotContiguous { expected: u64, got: u64 },
}

/// The two salts that mark which generation of the WAL file a frame belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Salts {
    pub salt1: u32,
    pub salt2: u32,
}

/// SQLite's running WAL checksum: two 32-bit words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct WalChecksum(pub u32, pub u32);

impl WalChecksum {
    /// Continues the checksum over `data`, read as 32-bit words in the given
    /// byte order. `data.len()` must be a multiple of 8; a trailing partial
    /// word pair is ignored (callers only pass headers and whole pages).
    pub fn extend(self, big_endian: bool, data: &[u8]) -> WalChecksum {
        let WalChecksum(mut s0, mut s1) = self;
        let word = |b: &[u8]| {
            let b = [b[0], b[1], b[2], b[3]];
            if big_endian {
                u32::from_be_bytes(b)
            } else {
                u32::from_le_bytes(b)
            }
        };
        for pair in data.chunks_exact(8) {
            s0 = s0.wrapping_add(word(&pair[..4])).wrapping_add(s1);
            s1 = s1.wrapping_add(word(&pair[4..])).wrapping_add(s0);
        }
        WalChecksum(s0, s1)
    }
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// The 32-byte header at the start of a WAL file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct WalHeader {
    /// Checksums read words big-endian (magic 0x377f0683).
    pub big_endian_checksums: bool,
    pub page_size: u32,
    pub checkpoint_seq: u32,
    pub salts: Salts,
    pub checksum: WalChecksum,
}

impl WalHeader {
    /// Parses and checks a header the way SQLite's recovery does: a header
    /// that fails any check means SQLite treats the whole file as empty.
    pub fn parse(bytes: &[u8; WAL_HEADER_BYTES]) -> Result<WalHeader, WalError> {
        let magic = be32(bytes, 0);
        let big_endian_checksums = match magic {
            WAL_MAGIC_LE => false,
            WAL_MAGIC_BE => true,
            other => return Err(WalError::BadMagic(other)),
        };
        let version = be32(bytes, 4);
        if version != WAL_VERSION {
            return Err(WalError::UnsupportedVersion(version));
        }
        // Unlike the database header, which has two bytes and writes 65536 as
        // 1, the WAL header stores the page size as a plain 32-bit number;
        // SQLite's recovery treats anything else (1 included) as an empty log.
        let page_size = be32(bytes, 8);
        if !page_size.is_power_of_two() || !(PAGE_BYTES_MIN..=PAGE_BYTES_MAX).contains(&page_size) {
            return Err(WalError::BadPageSize(page_size));
        }
        let checksum = WalChecksum(be32(bytes, 24), be32(bytes, 28));
        if WalChecksum::default().extend(big_endian_checksums, &bytes[..24]) != checksum {
            return Err(WalError::HeaderChecksum);
        }
        Ok(WalHeader {
            big_endian_checksums,
            page_size,
            checkpoint_seq: be32(bytes, 12),
            salts: Salts {
                salt1: be32(bytes, 16),
                salt2: be32(bytes, 20),
            },
            checksum,
        })
    }

    /// The header as SQLite writes it (checksum recomputed). Tests and tools
    /// use it to build WAL files.
    pub fn encode(&self) -> [u8; WAL_HEADER_BYTES] {
        let mut out = [0u8; WAL_HEADER_BYTES];
        let magic = if self.big_endian_checksums {
            WAL_MAGIC_BE
        } else {
            WAL_MAGIC_LE
        };
        out[0..4].copy_from_slice(&magic.to_be_bytes());
        out[4..8].copy_from_slice(&WAL_VERSION.to_be_bytes());
        out[8..12].copy_from_slice(&self.page_size.to_be_bytes());
        out[12..16].copy_from_slice(&self.checkpoint_seq.to_be_bytes());
        out[16..20].copy_from_slice(&self.salts.salt1.to_be_bytes());
        out[20..24].copy_from_slice(&self.salts.salt2.to_be_bytes());
        let c = WalChecksum::default().extend(self.big_endian_checksums, &out[..24]);
        out[24..28].copy_from_slice(&c.0.to_be_bytes());
        out[28..32].copy_from_slice(&c.1.to_be_bytes());
        out
    }

    /// Bytes of one frame: its header and one page.
    pub fn frame_bytes(&self) -> usize {
        FRAME_HEADER_BYTES + self.page_size as usize
    }
}

/// The 24-byte header in front of each page in the WAL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalFrame {
    pub pgno: u32,
    /// Size of the database in pages after this frame's transaction, or 0
    /// when this is not the transaction's last (commit) frame.
    pub db_pages_after_commit: u32,
    pub salts: Salts,
    pub checksum: WalChecksum,
}

impl WalFrame {
    pub fn parse(bytes: &[u8; FRAME_HEADER_BYTES]) -> WalFrame {
        WalFrame {
            pgno: be32(bytes, 0),
            db_pages_after_commit: be32(bytes, 4),
            salts: Salts {
                salt1: be32(bytes, 8),
                salt2: be32(bytes, 12),
            },
            checksum: WalChecksum(be32(bytes, 16), be32(bytes, 20)),
        }
    }

    /// Encodes a frame header whose checksum continues `previous` over the
    /// header's first 8 bytes and `page`, returning the new running checksum.
    pub fn encode(
        pgno: u32,
        db_pages_after_commit: u32,
        header: &WalHeader,
        previous: WalChecksum,
        page: &[u8],
    ) -> ([u8; FRAME_HEADER_BYTES], WalChecksum) {
        let mut out = [0u8; FRAME_HEADER_BYTES];
        out[0..4].copy_from_slice(&pgno.to_be_bytes());
        out[4..8].copy_from_slice(&db_pages_after_commit.to_be_bytes());
        out[8..12].copy_from_slice(&header.salts.salt1.to_be_bytes());
        out[12..16].copy_from_slice(&header.salts.salt2.to_be_bytes());
        let c = previous
            .extend(header.big_endian_checksums, &out[..8])
            .extend(header.big_endian_checksums, page);
        out[16..20].copy_from_slice(&c.0.to_be_bytes());
        out[20..24].copy_from_slice(&c.1.to_be_bytes());
        (out, c)
    }
}

/// One committed transaction as read from the WAL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transaction {
    /// Every page the transaction wrote, each with its last image, in
    /// ascending page number. Pages beyond `db_pages_after_commit` are left
    /// out: the commit truncated them away.
    pub pages: Vec<(u32, Vec<u8>)>,
    /// Size of the database in pages after the commit. Smaller than before
    /// when the transaction truncated the file (VACUUM, incremental vacuum).
    pub db_pages_after_commit: u32,
    /// WAL offset just past the commit frame, within the generation `salts`.
    pub end_offset: u64,
    /// The WAL generation the transaction was read from.
    pub salts: Salts,
}

/// Where the consumed, valid part of the WAL ends: enough to continue reading
/// after a restart without re-reading the file from the start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalPosition {
    pub header: WalHeader,
    /// Offset just past the last commit frame consumed (32 when none).
    pub offset: u64,
    /// Running checksum after that frame (the header's when none).
    pub checksum: WalChecksum,
}

/// Turns WAL bytes into committed [`Transaction`]s; see the module doc.
#[derive(Debug, Clone, Default)]
pub struct WalReader {
    position: Option<WalPosition>,
    /// The last feed ended inside a transaction whose frames were valid up
    /// to the end of the bytes fed: more bytes may complete it.
    unfinished_to_end: bool,
    /// The valid frames the last feed found past its last commit frame.
    open_bytes: u64,
}

impl WalReader {
    /// A reader that has seen no header yet: the first feed must start at 0.
    pub fn new() -> WalReader {
        WalReader {
            position: None,
            unfinished_to_end: false,
            open_bytes: 0,
        }
    }

    /// A reader that continues from a position saved earlier.
    pub fn resume(position: WalPosition) -> WalReader {
        WalReader {
            position: Some(position),
            unfinished_to_end: false,
            open_bytes: 0,
        }
    }

    /// Where the consumed valid log ends, or `None` before any valid header.
    pub fn position(&self) -> Option<WalPosition> {
        self.position
    }

    /// The offset the next feed should start at: just past the last commit
    /// frame consumed, or 0 when no header has been read yet.
    pub fn next_offset(&self) -> u64 {
        self.position.map_or(0, |p| p.offset)
    }

    /// Whether the last feed's bytes ended inside a transaction, every frame
    /// of it valid up to their end: reading further may complete it. False
    /// when the valid frames stopped short of the end (a transaction still
    /// being written, with stale frames or nothing after it) or when the
    /// bytes ended at a commit.
    pub fn wants_more(&self) -> bool {
        self.unfinished_to_end
    }

    /// The bytes of valid frames the last feed found after its last commit
    /// frame: a transaction being written (or one rolled back), so far.
    pub fn open_bytes(&self) -> u64 {
        self.open_bytes
    }

    /// Feeds bytes read from the WAL file at `offset`, which must be 0 (the
    /// bytes start with the header) or [`WalReader::next_offset`]. Returns the
    /// transactions committed in those bytes, in order. Bytes past the last
    /// commit frame are not consumed: read them again next time, together
    /// with whatever was appended.
    ///
    /// Feeding from 0 compares the header with the one being read: a
    /// different header is a restarted log, and reading starts over at its
    /// first frame. An invalid header is an error and changes nothing (it may
    /// be half-written; SQLite would treat the log as empty for now).
    pub fn feed(&mut self, offset: u64, bytes: &[u8]) -> Result<Vec<Transaction>, WalError> {
        let (mut position, frames) = if offset == 0 {
            let Some(head) = bytes.first_chunk::<WAL_HEADER_BYTES>() else {
                return Ok(Vec::new());
            };
            let header = WalHeader::parse(head)?;
            match self.position {
                Some(p) if p.header == header => {
                    let skip = usize::try_from(p.offset).unwrap_or(usize::MAX);
                    (p, bytes.get(skip..).unwrap_or(&[]))
                }
                _ => {
                    let fresh = WalPosition {
                        header,
                        offset: WAL_HEADER_BYTES as u64,
                        checksum: header.checksum,
                    };
                    self.position = Some(fresh);
                    (fresh, &bytes[WAL_HEADER_BYTES..])
                }
            }
        } else {
            match self.position {
                Some(p) if p.offset == offset => (p, bytes),
                _ => {
                    return Err(WalError::NotContiguous {
                        expected: self.next_offset(),
                        got: offset,
                    })
                }
            }
        };

        let header = position.header;
        let frame_bytes = header.frame_bytes();
        let mut out = Vec::new();
        let mut pending: BTreeMap<u32, &[u8]> = BTreeMap::new();
        let mut running = position.checksum;
        let mut consumed = 0usize;
        let mut ran_to_end = true;
        self.unfinished_to_end = false;
        for frame in frames.chunks_exact(frame_bytes) {
            let (head, page) = frame.split_at(FRAME_HEADER_BYTES);
            let Some(head) = head.first_chunk::<FRAME_HEADER_BYTES>() else {
                ran_to_end = false;
                break;
            };
            let parsed = WalFrame::parse(head);
            if parsed.salts != header.salts || parsed.pgno == 0 {
                ran_to_end = false;
                break;
            }
            let check = running
                .extend(header.big_endian_checksums, &head[..8])
                .extend(header.big_endian_checksums, page);
            if check != parsed.checksum {
                ran_to_end = false;
                break;
            }
            running = check;
            consumed += frame_bytes;
            pending.insert(parsed.pgno, page);
            if parsed.db_pages_after_commit != 0 {
                let size = parsed.db_pages_after_commit;
                position.offset = position.offset.saturating_add(consumed as u64);
                position.checksum = running;
                consumed = 0;
                out.push(Transaction {
                    pages: std::mem::take(&mut pending)
                        .into_iter()
                        .filter(|&(pgno, _)| pgno <= size)
                        .map(|(pgno, page)| (pgno, page.to_vec()))
                        .collect(),
                    db_pages_after_commit: size,
                    end_offset: position.offset,
                    salts: header.salts,
                });
            }
        }
        self.position = Some(position);
        self.unfinished_to_end = ran_to_end && (consumed > 0 || frames.len() % frame_bytes != 0);
        self.open_bytes = consumed as u64;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(page_size: u32, big_endian: bool) -> WalHeader {
        let mut h = WalHeader {
            big_endian_checksums: big_endian,
            page_size,
            checkpoint_seq: 7,
            salts: Salts {
                salt1: 0x1111_2222,
                salt2: 0x3333_4444,
            },
            checksum: WalChecksum::default(),
        };
        h.checksum = WalHeader::parse(&h.encode()).unwrap().checksum;
        h
    }

    /// Builds a WAL from (pgno, commit size, fill byte) frames.
    fn wal(h: &WalHeader, frames: &[(u32, u32, u8)]) -> Vec<u8> {
        let mut out = h.encode().to_vec();
        let mut c = h.checksum;
        for &(pgno, commit, fill) in frames {
            let page = vec![fill; h.page_size as usize];
            let (fh, next) = WalFrame::encode(pgno, commit, h, c, &page);
            c = next;
            out.extend_from_slice(&fh);
            out.extend_from_slice(&page);
        }
        out
    }

    #[test]
    fn header_round_trips_in_both_byte_orders_and_all_page_sizes() {
        for be in [false, true] {
            for shift in 9..=16 {
                let h = header(1 << shift, be);
                assert_eq!(WalHeader::parse(&h.encode()), Ok(h));
            }
        }
    }

    #[test]
    fn header_refusals_name_the_reason() {
        let good = header(4096, false).encode();
        let mut b = good;
        b[3] = 0x84;
        assert_eq!(WalHeader::parse(&b), Err(WalError::BadMagic(0x377f_0684)));
        let mut b = good;
        b[7] ^= 1;
        assert!(matches!(
            WalHeader::parse(&b),
            Err(WalError::UnsupportedVersion(_))
        ));
        for bad in [0u32, 1, 256, 3000, 131_072] {
            let mut b = good;
            b[8..12].copy_from_slice(&bad.to_be_bytes());
            assert_eq!(WalHeader::parse(&b), Err(WalError::BadPageSize(bad)));
        }
        let mut b = good;
        b[13] ^= 1;
        assert_eq!(WalHeader::parse(&b), Err(WalError::HeaderChecksum));
    }

    #[test]
    fn transactions_end_at_commit_frames_and_last_write_wins() {
        let h = header(512, false);
        let bytes = wal(&h, &[(2, 0, 1), (3, 0, 2), (2, 3, 3), (1, 3, 4), (4, 0, 5)]);
        let mut r = WalReader::new();
        let txs = r.feed(0, &bytes).unwrap();
        assert_eq!(txs.len(), 2);
        assert_eq!(txs[0].db_pages_after_commit, 3);
        assert_eq!(
            txs[0]
                .pages
                .iter()
                .map(|(p, d)| (*p, d[0]))
                .collect::<Vec<_>>(),
            vec![(2, 3), (3, 2)]
        );
        assert_eq!(txs[1].pages, vec![(1, vec![4; 512])]);
        let frame = 24 + 512;
        assert_eq!(txs[1].end_offset, 32 + 4 * frame as u64);
        // The open transaction (page 4) is not consumed.
        assert_eq!(r.next_offset(), txs[1].end_offset);
    }

    #[test]
    fn pages_beyond_a_truncating_commit_are_dropped() {
        let h = header(512, true);
        let bytes = wal(&h, &[(5, 0, 1), (2, 0, 2), (1, 2, 3)]);
        let txs = WalReader::new().feed(0, &bytes).unwrap();
        let pgnos: Vec<u32> = txs[0].pages.iter().map(|p| p.0).collect();
        assert_eq!(pgnos, vec![1, 2]);
        assert_eq!(txs[0].db_pages_after_commit, 2);
    }

    #[test]
    fn a_bad_frame_ends_the_log_and_reading_resumes_when_it_is_rewritten() {
        let h = header(512, false);
        let mut bytes = wal(&h, &[(1, 1, 1), (2, 2, 2), (3, 3, 3)]);
        let frame = 24 + 512;
        let second = 32 + frame;
        bytes[second + 30] ^= 0xff; // damage frame 2's page
        let mut r = WalReader::new();
        let txs = r.feed(0, &bytes).unwrap();
        assert_eq!(txs.len(), 1, "frame 3 chains from the bad frame 2");
        assert_eq!(r.next_offset(), second as u64);
        // The writer finishes frame 2: the rest becomes valid.
        bytes[second + 30] ^= 0xff;
        let txs = r.feed(second as u64, &bytes[second..]).unwrap();
        assert_eq!(txs.len(), 2);
    }

    #[test]
    fn a_rolled_back_spill_overwritten_by_a_shorter_transaction_is_followed() {
        let h = header(512, false);
        // A transaction spills 3 frames and rolls back; the reader sees them
        // uncommitted.
        let spilled = wal(&h, &[(1, 1, 1), (2, 0, 9), (3, 0, 9), (4, 0, 9)]);
        let mut r = WalReader::new();
        assert_eq!(r.feed(0, &spilled).unwrap().len(), 1);
        let resume = r.next_offset();
        // The next transaction overwrites the first spilled frame and
        // commits; the stale frames behind it no longer chain.
        let mut file = wal(&h, &[(1, 1, 1), (2, 2, 5)]);
        file.extend_from_slice(&spilled[file.len()..]);
        let txs = r.feed(resume, &file[resume as usize..]).unwrap();
        assert_eq!(txs.len(), 1);
        assert_eq!(txs[0].pages, vec![(2, vec![5; 512])]);
    }

    #[test]
    fn more_bytes_are_wanted_only_while_a_transaction_runs_to_the_end() {
        let h = header(512, false);
        let frame = 24 + 512;
        let bytes = wal(&h, &[(1, 1, 1), (2, 0, 2), (3, 3, 3)]);
        let mut r = WalReader::new();
        // Ends at a commit: nothing more to want.
        r.feed(0, &bytes[..32 + frame]).unwrap();
        assert!(!r.wants_more());
        // Ends inside the second transaction, valid to the end of the bytes,
        // whether at a frame boundary or in the middle of a frame.
        let at = r.next_offset() as usize;
        r.feed(at as u64, &bytes[at..at + frame]).unwrap();
        assert!(r.wants_more());
        r.feed(at as u64, &bytes[at..at + frame + 100]).unwrap();
        assert!(r.wants_more());
        // Its frames stop before the bytes do (it is still being written,
        // a stale frame follows): reading further cannot help now.
        let mut stale = bytes.clone();
        stale[at + frame + 30] ^= 0xff;
        r.feed(at as u64, &stale[at..]).unwrap();
        assert!(!r.wants_more());
        assert_eq!(r.feed(at as u64, &bytes[at..]).unwrap().len(), 1);
        assert!(!r.wants_more());
    }

    #[test]
    fn wrong_salts_and_page_zero_end_the_log() {
        let h = header(512, false);
        let mut other = h;
        other.salts.salt2 ^= 1;
        let mut bytes = wal(&h, &[(1, 1, 1)]);
        let foreign = wal(&other, &[(2, 2, 2)]);
        bytes.extend_from_slice(&foreign[32..]);
        assert_eq!(WalReader::new().feed(0, &bytes).unwrap().len(), 1);
        let zero = wal(&h, &[(0, 1, 1)]);
        assert!(WalReader::new().feed(0, &zero).unwrap().is_empty());
    }

    #[test]
    fn a_new_header_restarts_the_reader() {
        let h = header(512, false);
        let first = wal(&h, &[(1, 1, 1), (2, 2, 2)]);
        let mut r = WalReader::new();
        assert_eq!(r.feed(0, &first).unwrap().len(), 2);
        // Same header again: nothing new.
        assert!(r.feed(0, &first).unwrap().is_empty());
        let mut h2 = h;
        h2.salts.salt1 += 1;
        h2.checkpoint_seq += 1;
        h2.checksum = WalHeader::parse(&h2.encode()).unwrap().checksum;
        let mut second = wal(&h2, &[(3, 3, 3)]);
        second.extend_from_slice(&first[second.len()..]);
        let txs = r.feed(0, &second).unwrap();
        assert_eq!(txs.len(), 1);
        assert_eq!(txs[0].salts, h2.salts);
        assert_eq!(txs[0].pages[0].0, 3);
    }

    #[test]
    fn feeding_at_the_wrong_offset_is_refused_and_changes_nothing() {
        let h = header(512, false);
        let bytes = wal(&h, &[(1, 1, 1)]);
        let mut r = WalReader::new();
        assert_eq!(
            r.feed(32, &bytes),
            Err(WalError::NotContiguous {
                expected: 0,
                got: 32
            })
        );
        r.feed(0, &bytes).unwrap();
        let before = r.position();
        assert!(r.feed(7, &bytes).is_err());
        assert_eq!(r.position(), before);
    }

    #[test]
    fn a_resumed_reader_continues_the_checksum_chain() {
        let h = header(1024, true);
        let bytes = wal(&h, &[(1, 1, 1), (2, 2, 2)]);
        let mut r = WalReader::new();
        r.feed(0, &bytes[..32 + 1048]).unwrap();
        let saved = r.position().unwrap();
        let mut resumed = WalReader::resume(saved);
        let txs = resumed
            .feed(saved.offset, &bytes[saved.offset as usize..])
            .unwrap();
        assert_eq!(txs.len(), 1);
        assert_eq!(txs[0].pages[0].0, 2);
    }
}
