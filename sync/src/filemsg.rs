//! What the two nodes say about a file set, inside [`PeerMessage::Fs`].
//!
//! The conversation is in *rounds*, driven by the primary:
//!
//! 1. The standby reports its manifest ([`FsMessage::State`], in parts of at
//!    most [`MANIFEST_PART_BYTES_MAX`]) on every new connection, when the
//!    primary asks ([`FsMessage::Ask`]), after a round that did not end at
//!    the expected root, and when its own periodic scan found local changes.
//! 2. The primary diffs that manifest against its own and sends a round: at
//!    most [`ROUND_CHANGES_MAX`] [`FsMessage::Change`]s (each with the chunks
//!    the standby lacks inline, up to a budget), then [`FsMessage::RoundEnd`]
//!    with the root the standby must reach. A prefix of a diff is always
//!    applicable, so a long diff is simply sent in several rounds.
//! 3. The standby applies each change as it comes; for chunks it still lacks
//!    (not inline, not in a partial temp file from an interrupted transfer,
//!    nowhere in its tree) it asks ([`FsMessage::ChunkAsk`]) and the primary
//!    answers ([`FsMessage::Chunks`]) in messages of at most
//!    [`CHUNKS_BYTES_MAX`]. At the round's end it answers [`FsMessage::Ack`]
//!    with the root it reached; if that is not the expected one it also
//!    sends its manifest.
//!
//! Every decoded message is checked with [`FsMessage::validate`] before use:
//! paths are [`SafePath`]s already (refused while decoding), and the checks
//! here cover what serde cannot: chunk lists that do not tile a file, chunk
//! bytes that do not match their hash, modes outside `0o7777`, symlink
//! targets that are empty or hold NUL, counts past the caps.

use crate::chunk::{ChunkHash, ChunkRef, CHUNK_BYTES_MAX};
use crate::fileset::{SafePath, PATH_BYTES_MAX};
use crate::manifest::{Change, Entry, EntryKind, MODE_MASK};
use crate::message::Epoch;
use serde::{Deserialize, Serialize};

/// A part of an encoded manifest, at most.
pub const MANIFEST_PART_BYTES_MAX: usize = 4 << 20;
/// Parts of one manifest, at most (a 1 GiB manifest: millions of entries).
pub const MANIFEST_PARTS_MAX: u32 = 256;
/// Changes in one round, at most (keeps the replication link's outbox,
/// 1024 messages, from filling with one round).
pub const ROUND_CHANGES_MAX: usize = 512;
/// Chunk bytes carried inline in one `Change`, at most.
pub const INLINE_BYTES_MAX: usize = 1 << 20;
/// Chunk bytes in one `Chunks` message, at most (plus one chunk).
pub const CHUNKS_BYTES_MAX: usize = 4 << 20;
/// Chunks asked for in one `ChunkAsk`, at most.
pub const CHUNK_ASK_MAX: usize = 4096;

/// The bytes of one chunk, named by its hash.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ChunkData {
    pub hash: ChunkHash,
    pub bytes: Vec<u8>,
}

/// File-set messages on the replication link (see the module doc).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum FsMessage {
    /// Primary to standby: report your manifest.
    Ask { set: String },
    /// Standby to primary: one part of its manifest ([`crate::manifest::Manifest::encode`]).
    /// `id` names this report; parts count from 0.
    State {
        set: String,
        epoch: Epoch,
        id: u64,
        part: u32,
        parts: u32,
        bytes: Vec<u8>,
    },
    /// Primary to standby: change `seq` (from 0) of round `round`.
    Change {
        set: String,
        epoch: Epoch,
        round: u64,
        seq: u32,
        change: Change,
        /// Chunks of the new content the standby is believed to lack.
        inline: Vec<ChunkData>,
    },
    /// Primary to standby: round `round` had `changes` changes and should
    /// leave the standby at `root` with `entries` entries.
    RoundEnd {
        set: String,
        epoch: Epoch,
        round: u64,
        changes: u32,
        root: [u8; 32],
        entries: u64,
    },
    /// Standby to primary: send these chunks of the new content of `path`.
    ChunkAsk {
        set: String,
        round: u64,
        path: SafePath,
        chunks: Vec<ChunkRef>,
    },
    /// Primary to standby: chunks asked for. `unreadable`: these could not
    /// be read as scanned (the file changed since); the standby gives the
    /// change up and the primary's next round carries the new version.
    Chunks {
        set: String,
        round: u64,
        path: SafePath,
        chunks: Vec<ChunkData>,
        unreadable: Vec<ChunkHash>,
    },
    /// Standby to primary: round `round` is done; the standby's manifest has
    /// `root` and `entries`. `errors`: changes that could not be applied.
    Ack {
        set: String,
        round: u64,
        root: [u8; 32],
        entries: u64,
        errors: Vec<String>,
    },
    /// Either side (`tandem verify`): scan your tree from scratch, every
    /// byte read, and send the manifest back as [`FsMessage::Verified`].
    VerifyAsk { set: String, id: u64 },
    /// The answer to `VerifyAsk`, in parts like [`FsMessage::State`].
    Verified {
        set: String,
        id: u64,
        part: u32,
        parts: u32,
        bytes: Vec<u8>,
    },
}

/// Why a decoded file-set message was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("file set message refused: {0}")]
pub struct FsInvalid(pub String);

fn bad<T>(why: impl Into<String>) -> Result<T, FsInvalid> {
    Err(FsInvalid(why.into()))
}

/// Check an entry a peer sent: mode bits, a file's chunk list tiling
/// `0..size` with chunks of legal length, a symlink target.
pub fn validate_entry(path: &SafePath, e: &Entry) -> Result<(), FsInvalid> {
    if e.mode & !MODE_MASK != 0 {
        return bad(format!("{path}: mode {:o} outside 0o7777", e.mode));
    }
    match &e.kind {
        EntryKind::File { size, chunks, .. } => {
            let mut at = 0u64;
            for c in chunks {
                if c.offset != at || c.len == 0 || c.len as usize > CHUNK_BYTES_MAX {
                    return bad(format!("{path}: chunks do not tile the file"));
                }
                at = c.end();
            }
            if at != *size {
                return bad(format!("{path}: chunks cover {at} of {size} bytes"));
            }
        }
        EntryKind::Dir => {}
        EntryKind::Symlink { target } => {
            if target.is_empty() || target.len() > PATH_BYTES_MAX || target.contains('\0') {
                return bad(format!("{path}: bad symlink target"));
            }
        }
    }
    Ok(())
}

/// Check a change a peer sent (see [`validate_entry`]).
pub fn validate_change(c: &Change) -> Result<(), FsInvalid> {
    match c {
        Change::Create { path, entry } => validate_entry(path, entry),
        Change::Modify { path, old, new } | Change::Meta { path, old, new } => {
            validate_entry(path, old)?;
            validate_entry(path, new)
        }
        Change::Delete { path, old } => validate_entry(path, old),
        Change::Rename { from, to, old, new } => {
            if from == to {
                return bad(format!("{to}: renamed onto itself"));
            }
            validate_entry(from, old)?;
            validate_entry(to, new)
        }
    }
}

fn chunks_ok(chunks: &[ChunkData]) -> Result<(), FsInvalid> {
    for c in chunks {
        if c.bytes.is_empty() || c.bytes.len() > CHUNK_BYTES_MAX {
            return bad("a chunk of illegal length");
        }
        if *blake3::hash(&c.bytes).as_bytes() != c.hash {
            return bad("a chunk does not match its hash");
        }
    }
    Ok(())
}

impl FsMessage {
    /// The file set this message is about.
    pub fn set(&self) -> &str {
        match self {
            FsMessage::Ask { set }
            | FsMessage::State { set, .. }
            | FsMessage::Change { set, .. }
            | FsMessage::RoundEnd { set, .. }
            | FsMessage::ChunkAsk { set, .. }
            | FsMessage::Chunks { set, .. }
            | FsMessage::Ack { set, .. }
            | FsMessage::VerifyAsk { set, .. }
            | FsMessage::Verified { set, .. } => set,
        }
    }

    /// Check what decoding cannot (see the module doc).
    pub fn validate(&self) -> Result<(), FsInvalid> {
        match self {
            FsMessage::Ask { .. }
            | FsMessage::RoundEnd { .. }
            | FsMessage::Ack { .. }
            | FsMessage::VerifyAsk { .. } => Ok(()),
            FsMessage::State {
                part, parts, bytes, ..
            }
            | FsMessage::Verified {
                part, parts, bytes, ..
            } => {
                if *parts == 0 || *parts > MANIFEST_PARTS_MAX || part >= parts {
                    return bad(format!("manifest part {part} of {parts}"));
                }
                if bytes.len() > MANIFEST_PART_BYTES_MAX {
                    return bad("manifest part too large");
                }
                Ok(())
            }
            FsMessage::Change { change, inline, .. } => {
                validate_change(change)?;
                let total: usize = inline.iter().map(|c| c.bytes.len()).sum();
                if total > INLINE_BYTES_MAX + CHUNK_BYTES_MAX {
                    return bad("too many inline chunk bytes");
                }
                chunks_ok(inline)
            }
            FsMessage::ChunkAsk { chunks, .. } => {
                if chunks.len() > CHUNK_ASK_MAX {
                    return bad("too many chunks asked for");
                }
                if chunks
                    .iter()
                    .any(|c| c.len == 0 || c.len as usize > CHUNK_BYTES_MAX)
                {
                    return bad("a chunk of illegal length asked for");
                }
                Ok(())
            }
            FsMessage::Chunks {
                chunks, unreadable, ..
            } => {
                let total: usize = chunks.iter().map(|c| c.bytes.len()).sum();
                if total > CHUNKS_BYTES_MAX + CHUNK_BYTES_MAX || unreadable.len() > CHUNK_ASK_MAX {
                    return bad("too many chunk bytes");
                }
                chunks_ok(chunks)
            }
        }
    }
}

/// Cut an encoded manifest into `State` parts.
pub fn manifest_parts(bytes: &[u8]) -> Vec<&[u8]> {
    if bytes.is_empty() {
        return vec![bytes];
    }
    bytes.chunks(MANIFEST_PART_BYTES_MAX).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunk::chunk_bytes;
    use crate::message::{decode, encode, PeerMessage};

    fn p(s: &str) -> SafePath {
        SafePath::parse(s).unwrap()
    }

    fn file(bytes: &[u8]) -> Entry {
        Entry {
            kind: EntryKind::File {
                size: bytes.len() as u64,
                hash: *blake3::hash(bytes).as_bytes(),
                chunks: chunk_bytes(bytes),
            },
            mode: 0o644,
            mtime_ns: 1,
        }
    }

    fn change_msg(change: Change, inline: Vec<ChunkData>) -> PeerMessage {
        PeerMessage::Fs(Box::new(FsMessage::Change {
            set: "etc".into(),
            epoch: Epoch(3),
            round: 1,
            seq: 0,
            change,
            inline,
        }))
    }

    #[test]
    fn messages_round_trip_and_truncations_are_refused() {
        let bytes = vec![5u8; 70_000];
        let entry = file(&bytes);
        let inline = vec![ChunkData {
            hash: entry.chunks()[0].hash,
            bytes: bytes[..entry.chunks()[0].len as usize].to_vec(),
        }];
        let msg = change_msg(
            Change::Create {
                path: p("a/b"),
                entry,
            },
            inline,
        );
        let wire = encode(&msg);
        let back: PeerMessage = decode("peer message", &wire).unwrap();
        assert_eq!(back, msg);
        let PeerMessage::Fs(fs) = &back else { panic!() };
        fs.validate().unwrap();
        for cut in (0..wire.len()).step_by(97) {
            assert!(decode::<PeerMessage>("peer message", &wire[..cut]).is_err());
        }
    }

    #[test]
    fn an_escaping_path_does_not_decode() {
        // The same message with the path's bytes swapped, length kept: a
        // peer cannot smuggle `..` or an absolute path past the decoder.
        for (good, evil) in [("xx", ".."), ("x/yy", "/y/y"), ("ab/cd", "ab/..")] {
            let msg = change_msg(
                Change::Delete {
                    path: p(good),
                    old: file(b"x"),
                },
                vec![],
            );
            let wire = encode(&msg);
            let at = wire
                .windows(good.len())
                .position(|w| w == good.as_bytes())
                .unwrap();
            let mut forged = wire.clone();
            forged[at..at + good.len()].copy_from_slice(evil.as_bytes());
            assert!(decode::<PeerMessage>("peer message", &wire).is_ok());
            assert!(
                decode::<PeerMessage>("peer message", &forged).is_err(),
                "{evil}"
            );
        }
    }

    #[test]
    fn validation_catches_what_decoding_cannot() {
        let mut e = file(&[1u8; 40_000]);
        if let EntryKind::File { size, .. } = &mut e.kind {
            *size += 1;
        }
        let m = FsMessage::Change {
            set: "s".into(),
            epoch: Epoch(1),
            round: 1,
            seq: 0,
            change: Change::Create {
                path: p("f"),
                entry: e,
            },
            inline: vec![],
        };
        assert!(m.validate().is_err());
        let mut e = file(b"x");
        e.mode = 0o17777;
        assert!(validate_entry(&p("f"), &e).is_err());
        let link = Entry {
            kind: EntryKind::Symlink {
                target: "a\0b".into(),
            },
            mode: 0o777,
            mtime_ns: 0,
        };
        assert!(validate_entry(&p("l"), &link).is_err());
        let forged = FsMessage::Chunks {
            set: "s".into(),
            round: 1,
            path: p("f"),
            chunks: vec![ChunkData {
                hash: [0; 32],
                bytes: vec![1, 2, 3],
            }],
            unreadable: vec![],
        };
        assert!(forged.validate().is_err());
        let parts = FsMessage::State {
            set: "s".into(),
            epoch: Epoch(1),
            id: 1,
            part: 2,
            parts: 2,
            bytes: vec![],
        };
        assert!(parts.validate().is_err());
        let same = file(b"abc");
        assert!(validate_change(&Change::Rename {
            from: p("a"),
            to: p("a"),
            old: same.clone(),
            new: same
        })
        .is_err());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        /// Bytes from the peer, garbage or a valid message with bytes
        /// flipped, never panic the decoder or the validation.
        #[test]
        fn hostile_bytes_never_panic(
            garbage in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512),
            flips in proptest::collection::vec((0usize..4096, proptest::prelude::any::<u8>()), 1..8),
        ) {
            if let Ok(PeerMessage::Fs(m)) = decode::<PeerMessage>("peer message", &garbage) {
                let _ = m.validate();
            }
            let bytes = vec![5u8; 70_000];
            let entry = file(&bytes);
            let mut wire = encode(&change_msg(
                Change::Modify { path: p("a/b"), old: file(b"x"), new: entry },
                vec![],
            ));
            for (at, b) in flips {
                let n = wire.len();
                wire[at % n] ^= b | 1;
            }
            if let Ok(PeerMessage::Fs(m)) = decode::<PeerMessage>("peer message", &wire) {
                let _ = m.validate();
            }
        }
    }

    #[test]
    fn manifests_are_cut_into_parts_under_the_cap() {
        assert_eq!(manifest_parts(&[]).len(), 1);
        let big = vec![0u8; MANIFEST_PART_BYTES_MAX * 2 + 1];
        let parts = manifest_parts(&big);
        assert_eq!(parts.len(), 3);
        assert!(parts.iter().all(|p| p.len() <= MANIFEST_PART_BYTES_MAX));
    }
}
