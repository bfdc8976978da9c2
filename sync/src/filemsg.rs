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
//! **Deltas.** A change crosses the wire as a [`WireChange`]: whole, except
//! a file's `Modify`, which names the version the standby holds by
//! [`entry_digest`] and carries the new chunk list as a [`ChunkListDelta`]
//! from it; [`WireChange::resolve`] rebuilds the [`Change`] from the
//! standby's manifest, or refuses if that holds another version. New chunks
//! made from an old chunk the standby holds travel as [`ChunkDelta`]s.
//!
//! Every decoded message is checked with [`FsMessage::validate`] before use:
//! paths are [`SafePath`]s already (refused while decoding), and the checks
//! here cover what serde cannot: chunk lists that do not tile a file, chunk
//! bytes that do not match their hash, modes outside `0o7777`, symlink
//! targets that are empty or hold NUL, counts past the caps.

use crate::chunk::{file_hash, ChunkHash, ChunkRef, CHUNK_BYTES_MAX};
use crate::delta::{entry_digest, ChunkDelta, ChunkListDelta};
use crate::fileset::{SafePath, PATH_BYTES_MAX};
use crate::manifest::{mirrored_mode, Change, Entry, EntryKind, Manifest, Owner};
use crate::message::Epoch;
use bytes::Bytes;
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

/// The bytes of one chunk, named by its hash. `Bytes`, so that a chunk
/// can be a view of the buffer it was read or received into (it encodes
/// as a byte string, as `serde_bytes` did).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ChunkData {
    pub hash: ChunkHash,
    pub bytes: Bytes,
}

/// The version of an entry the receiver holds, named without its chunk
/// list: its size and [`entry_digest`].
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeldEntry {
    pub size: u64,
    pub digest: [u8; 32],
}

/// A [`Change`] as it crosses the wire (see the module doc).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum WireChange {
    /// Any change, entries whole.
    Whole(Change),
    /// A `Modify` of a file into a file, relative to the version held.
    FileModify {
        path: SafePath,
        old: HeldEntry,
        size: u64,
        hash: [u8; 32],
        mode: u32,
        mtime_ns: i64,
        owner: Option<Owner>,
        chunks: ChunkListDelta,
    },
}

impl WireChange {
    /// How `change` is sent.
    pub fn from_change(change: &Change) -> WireChange {
        match change {
            Change::Modify { path, old, new } => match (&old.kind, &new.kind) {
                (
                    EntryKind::File {
                        size: old_size,
                        chunks: old_chunks,
                        ..
                    },
                    EntryKind::File { size, hash, chunks },
                ) => WireChange::FileModify {
                    path: path.clone(),
                    old: HeldEntry {
                        size: *old_size,
                        digest: entry_digest(old),
                    },
                    size: *size,
                    hash: *hash,
                    mode: new.mode,
                    mtime_ns: new.mtime_ns,
                    owner: new.owner,
                    chunks: ChunkListDelta::between(old_chunks, chunks),
                },
                _ => WireChange::Whole(change.clone()),
            },
            _ => WireChange::Whole(change.clone()),
        }
    }

    /// The path the change leaves in place.
    pub fn path(&self) -> &SafePath {
        match self {
            WireChange::Whole(c) => c.path(),
            WireChange::FileModify { path, .. } => path,
        }
    }

    /// The change, with a delta's entries rebuilt from what `held` (the
    /// receiver's manifest) has at the path, and checked as
    /// [`validate_change`] does. A delta from a version other than the one
    /// held is refused, except when the new version is already held (a
    /// replayed change, harmless as ever).
    pub fn resolve(&self, held: &Manifest) -> Result<Change, FsInvalid> {
        let change = match self {
            WireChange::Whole(c) => c.clone(),
            WireChange::FileModify {
                path,
                old,
                size,
                hash,
                mode,
                mtime_ns,
                owner,
                chunks,
            } => {
                let Some(
                    cur @ Entry {
                        kind:
                            EntryKind::File {
                                size: cur_size,
                                hash: cur_hash,
                                chunks: cur_chunks,
                            },
                        ..
                    },
                ) = held.get(path)
                else {
                    return bad(format!(
                        "{path}: a delta against a file this copy does not hold"
                    ));
                };
                let new_chunks = if *cur_size == old.size && entry_digest(cur) == old.digest {
                    chunks
                        .apply(cur_chunks)
                        .map_err(|e| FsInvalid(format!("{path}: {e}")))?
                } else if cur_size == size && cur_hash == hash {
                    cur_chunks.clone()
                } else {
                    return bad(format!(
                        "{path}: a delta against another version than this copy holds"
                    ));
                };
                Change::Modify {
                    path: path.clone(),
                    old: cur.clone(),
                    new: Entry {
                        kind: EntryKind::File {
                            size: *size,
                            hash: *hash,
                            chunks: new_chunks,
                        },
                        mode: *mode,
                        mtime_ns: *mtime_ns,
                        owner: *owner,
                    },
                }
            }
        };
        validate_change(&change)?;
        Ok(change)
    }

    /// Checks that need no manifest.
    pub fn validate(&self) -> Result<(), FsInvalid> {
        match self {
            WireChange::Whole(c) => validate_change(c),
            WireChange::FileModify {
                path,
                mode,
                owner,
                chunks,
                ..
            } => {
                if mirrored_mode(*mode, *owner) != *mode {
                    return bad(format!("{path}: mode {mode:o} is not mirrored"));
                }
                chunks
                    .check_shape()
                    .map_err(|e| FsInvalid(format!("{path}: {e}")))
            }
        }
    }
}

/// File-set messages on the replication link (see the module doc).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
// A message is built once, sent or handled, and dropped: the size of its
// largest variant (a change, entries inline) costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
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
        #[serde(with = "serde_bytes")]
        bytes: Vec<u8>,
    },
    /// Primary to standby: change `seq` (from 0) of round `round`.
    Change {
        set: String,
        epoch: Epoch,
        round: u64,
        seq: u32,
        change: WireChange,
        /// Chunks of the new content the standby is believed to lack.
        inline: Vec<ChunkData>,
        /// More of them, as deltas against old chunks it holds.
        deltas: Vec<ChunkDelta>,
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
        #[serde(with = "serde_bytes")]
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
    if mirrored_mode(e.mode, e.owner) != e.mode {
        return bad(format!("{path}: mode {:o} is not mirrored", e.mode));
    }
    match &e.kind {
        EntryKind::File { size, hash, chunks } => {
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
            if file_hash(chunks) != *hash {
                return bad(format!(
                    "{path}: the content hash is not that of its chunks"
                ));
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

/// The lengths of a message's chunks. Their bytes were checked against
/// their hashes when the message was decoded ([`FsMessage::attach_chunks`],
/// [`FsMessage::check_chunk_hashes`]).
fn chunks_ok(chunks: &[ChunkData]) -> Result<(), FsInvalid> {
    for c in chunks {
        if c.bytes.is_empty() || c.bytes.len() > CHUNK_BYTES_MAX {
            return bad("a chunk of illegal length");
        }
    }
    Ok(())
}

fn hash_ok(c: &ChunkData) -> Result<(), FsInvalid> {
    if *blake3::hash(&c.bytes).as_bytes() != c.hash {
        return bad("a chunk does not match its hash");
    }
    Ok(())
}

impl FsMessage {
    /// The chunks whose bytes may travel as a frame's attachment.
    fn chunk_slots(&mut self) -> &mut [ChunkData] {
        match self {
            FsMessage::Change { inline, .. } => inline,
            FsMessage::Chunks { chunks, .. } => chunks,
            _ => &mut [],
        }
    }

    /// Check the bytes of chunks that came in the message itself (a Data
    /// frame's) against their hashes: done once, as it is decoded
    /// (`message::decode_attached`), as [`FsMessage::attach_chunks`] does
    /// for an attachment's.
    pub fn check_chunk_hashes(&mut self) -> Result<(), FsInvalid> {
        self.chunk_slots().iter().try_for_each(hash_ok)
    }

    /// Take the bytes of this message's chunks out, in order, to travel as
    /// an Attached frame's attachment (`message::encode_unsealed`). The
    /// message keeps each chunk's hash, by which the receiver checks the
    /// bytes ([`FsMessage::attach_chunks`]). Empty when there are none.
    pub fn detach_chunks(&mut self) -> Vec<Bytes> {
        self.chunk_slots()
            .iter_mut()
            .map(|c| std::mem::take(&mut c.bytes))
            .collect()
    }

    /// Put back the bytes [`FsMessage::detach_chunks`] took out, from a
    /// frame's attachment (each piece a u32 BE length and its bytes): `Err`
    /// unless it holds exactly one piece per chunk, each matching its hash.
    /// The attachment is not authenticated; the hashes, in the payload, are.
    /// Each chunk's bytes are a view of `attachment`, not a copy.
    pub fn attach_chunks(&mut self, attachment: &Bytes) -> Result<(), FsInvalid> {
        let mut at = 0;
        for c in self.chunk_slots() {
            let Some((len, after)) = attachment[at..].split_first_chunk::<4>() else {
                return bad("the attachment ends before its last chunk");
            };
            let len = u32::from_be_bytes(*len) as usize;
            if len > after.len() || len > CHUNK_BYTES_MAX {
                return bad("an attached chunk of illegal length");
            }
            at += 4;
            c.bytes = attachment.slice(at..at + len);
            hash_ok(c)?;
            at += len;
        }
        if at != attachment.len() {
            return bad("attached bytes that no chunk names");
        }
        Ok(())
    }

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
            FsMessage::Change {
                change,
                inline,
                deltas,
                ..
            } => {
                change.validate()?;
                let total: usize = inline.iter().map(|c| c.bytes.len()).sum::<usize>()
                    + deltas.iter().map(|d| d.literal.len()).sum::<usize>();
                if total > INLINE_BYTES_MAX + CHUNK_BYTES_MAX {
                    return bad("too many inline chunk bytes");
                }
                if inline.len() + deltas.len() > CHUNK_ASK_MAX {
                    return bad("too many inline chunks");
                }
                for d in deltas {
                    d.check_shape()
                        .map_err(|e| FsInvalid(format!("a chunk delta: {e}")))?;
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

/// A manifest being put back together from its parts (a standby's report,
/// a verify's answer).
#[derive(Debug, Default)]
pub struct PartsIn {
    id: u64,
    parts: u32,
    next: u32,
    bytes: Vec<u8>,
}

impl PartsIn {
    /// Takes part `part` of `parts` of manifest `id` into `slot`; the
    /// whole manifest once its last part came. Parts must come in order
    /// from 0, all with the same id and count (at most
    /// [`MANIFEST_PARTS_MAX`]): anything else drops what was gathered, so
    /// a part sent again, or a count that never ends, cannot grow it.
    pub fn gather(
        slot: &mut Option<PartsIn>,
        id: u64,
        part: u32,
        parts: u32,
        bytes: &[u8],
    ) -> Option<Vec<u8>> {
        if part == 0 {
            *slot = (parts <= MANIFEST_PARTS_MAX).then(|| PartsIn {
                id,
                parts,
                ..PartsIn::default()
            });
        }
        let p = slot.as_mut()?;
        if p.id != id || p.parts != parts || p.next != part {
            *slot = None;
            return None;
        }
        p.bytes.extend_from_slice(bytes);
        p.next += 1;
        if p.next < p.parts {
            return None;
        }
        slot.take().map(|p| p.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunk::chunk_bytes;

    #[test]
    fn manifest_parts_are_gathered_only_in_order() {
        let mut slot = None;
        assert_eq!(PartsIn::gather(&mut slot, 7, 0, 3, b"ab"), None);
        assert_eq!(PartsIn::gather(&mut slot, 7, 1, 3, b"cd"), None);
        assert_eq!(
            PartsIn::gather(&mut slot, 7, 2, 3, b"e"),
            Some(b"abcde".to_vec())
        );
        assert!(slot.is_none());
        // A part sent again drops what was gathered.
        PartsIn::gather(&mut slot, 8, 0, 3, b"ab");
        PartsIn::gather(&mut slot, 8, 1, 3, b"cd");
        assert_eq!(PartsIn::gather(&mut slot, 8, 1, 3, b"cd"), None);
        assert!(slot.is_none());
        assert_eq!(PartsIn::gather(&mut slot, 8, 2, 3, b"e"), None);
        // Another report's part, another count, too many parts.
        PartsIn::gather(&mut slot, 9, 0, 2, b"ab");
        assert_eq!(PartsIn::gather(&mut slot, 10, 1, 2, b"cd"), None);
        PartsIn::gather(&mut slot, 9, 0, 2, b"ab");
        assert_eq!(PartsIn::gather(&mut slot, 9, 1, 3, b"cd"), None);
        assert_eq!(
            PartsIn::gather(&mut slot, 11, 0, MANIFEST_PARTS_MAX + 1, b"ab"),
            None
        );
        assert!(slot.is_none());
        // A manifest in one part.
        assert_eq!(
            PartsIn::gather(&mut slot, 12, 0, 1, b"x"),
            Some(b"x".to_vec())
        );
    }
    use crate::message::{decode, encode, PeerMessage};
    use crate::wire::HEADER_BYTES;

    fn p(s: &str) -> SafePath {
        SafePath::parse(s).unwrap()
    }

    fn file(bytes: &[u8]) -> Entry {
        Entry {
            kind: EntryKind::file(chunk_bytes(bytes)),
            mode: 0o644,
            mtime_ns: 1,
            owner: None,
        }
    }

    fn change_msg(change: Change, inline: Vec<ChunkData>) -> PeerMessage {
        PeerMessage::Fs(Box::new(FsMessage::Change {
            set: "etc".into(),
            epoch: Epoch(3),
            round: 1,
            seq: 0,
            change: WireChange::from_change(&change),
            inline,
            deltas: vec![],
        }))
    }

    /// An Attached encoding's payload and attachment, as a receiver gets
    /// them.
    fn payload_and_attachment(encoded: crate::message::Unsealed) -> (Vec<u8>, Bytes) {
        let crate::message::Unsealed::Attached { head, attachment } = encoded else {
            panic!("chunks go attached")
        };
        (
            head[HEADER_BYTES + 4..].to_vec(),
            attachment.concat().into(),
        )
    }

    #[test]
    fn chunk_bytes_travel_as_an_attachment_checked_by_their_hashes() {
        use crate::message::{decode_attached, encode_unsealed, Unsealed};
        let bytes = crate::chunk::tests::random_bytes(17, 200_000);
        let entry = file(&bytes);
        let inline_of = |bytes: &[u8]| -> Vec<ChunkData> {
            chunk_bytes(bytes)
                .iter()
                .map(|c| ChunkData {
                    hash: c.hash,
                    bytes: Bytes::copy_from_slice(&bytes[c.offset as usize..c.end() as usize]),
                })
                .collect()
        };
        let inline = inline_of(&bytes);
        assert!(inline.len() >= 2);
        let msg = change_msg(
            Change::Create {
                path: p("f"),
                entry,
            },
            inline,
        );
        let (payload, attachment) = payload_and_attachment(encode_unsealed(msg.clone()));
        let (payload, attachment) = (&payload[..], &attachment);
        // The payload holds no chunk bytes: a few hundred bytes for 200 KB.
        assert!(payload.len() < 2_000, "{}", payload.len());
        let back = decode_attached(payload, attachment).unwrap();
        assert_eq!(back, msg);
        let PeerMessage::Fs(fs) = &back else { panic!() };
        fs.validate().unwrap();
        // Any change to the attachment is refused as it is decoded: a
        // changed byte; bytes moved between pieces by their (unsigned)
        // lengths; pieces swapped; a piece of no bytes; cut short; a
        // piece too many; an attachment to a message that takes none.
        let pieces: Vec<&[u8]> = {
            let mut out = Vec::new();
            let mut rest = &attachment[..];
            while let Some((len, after)) = rest.split_first_chunk::<4>() {
                let len = u32::from_be_bytes(*len) as usize;
                out.push(&after[..len]);
                rest = &after[len..];
            }
            out
        };
        let join = |pieces: &[&[u8]]| {
            let mut out = Vec::new();
            for p in pieces {
                out.extend_from_slice(&(p.len() as u32).to_be_bytes());
                out.extend_from_slice(p);
            }
            out
        };
        assert_eq!(join(&pieces), &attachment[..]);
        let mut flipped = attachment.to_vec();
        let at = flipped.len() / 2;
        flipped[at] ^= 1;
        let (a, b) = (pieces[0], pieces[1]);
        let mut moved_a = a.to_vec();
        let last = moved_a.pop().unwrap();
        let moved_b = [&[last][..], b].concat();
        let mut moved = vec![&moved_a[..], &moved_b[..]];
        moved.extend(&pieces[2..]);
        let mut swapped = pieces.clone();
        swapped.swap(0, 1);
        let mut empty = pieces.clone();
        empty[0] = &[];
        let mut longer = attachment.to_vec();
        longer.extend_from_slice(&[0, 0, 0, 1, 9]);
        for bad in [
            flipped,
            join(&moved),
            join(&swapped),
            join(&empty),
            attachment[..attachment.len() - 1].to_vec(),
            longer,
        ] {
            assert!(decode_attached(payload, &bad.into()).is_err());
        }
        let ka = encode(&PeerMessage::Keepalive);
        assert!(decode_attached(&ka, attachment).is_err());
        // A `Chunks` answer goes the same way.
        let chunks = PeerMessage::Fs(Box::new(FsMessage::Chunks {
            set: "etc".into(),
            round: 1,
            path: p("f"),
            chunks: inline_of(&bytes),
            unreadable: vec![],
        }));
        let (payload, attachment) = payload_and_attachment(encode_unsealed(chunks.clone()));
        assert_eq!(decode_attached(&payload, &attachment).unwrap(), chunks);
        // Without chunks, a plain Data frame.
        assert!(matches!(
            encode_unsealed(PeerMessage::Keepalive),
            Unsealed::Data(_)
        ));
    }

    #[test]
    fn messages_round_trip_and_truncations_are_refused() {
        let bytes = vec![5u8; 70_000];
        let entry = file(&bytes);
        let inline = vec![ChunkData {
            hash: entry.chunks()[0].hash,
            bytes: Bytes::copy_from_slice(&bytes[..entry.chunks()[0].len as usize]),
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
            change: WireChange::Whole(Change::Create {
                path: p("f"),
                entry: e,
            }),
            inline: vec![],
            deltas: vec![],
        };
        assert!(m.validate().is_err());
        let mut e = file(b"x");
        e.mode = 0o17777;
        assert!(validate_entry(&p("f"), &e).is_err());
        // A content hash that is not its chunk list's.
        let mut e = file(&[2u8; 40_000]);
        assert!(validate_entry(&p("f"), &e).is_ok());
        if let EntryKind::File { hash, .. } = &mut e.kind {
            hash[31] ^= 1;
        }
        assert!(validate_entry(&p("f"), &e).is_err());
        let link = Entry {
            kind: EntryKind::Symlink {
                target: "a\0b".into(),
            },
            mode: 0o777,
            mtime_ns: 0,
            owner: None,
        };
        assert!(validate_entry(&p("l"), &link).is_err());
        // A chunk that does not match its hash is refused as it is
        // decoded, in the payload or attached.
        let forged = FsMessage::Chunks {
            set: "s".into(),
            round: 1,
            path: p("f"),
            chunks: vec![ChunkData {
                hash: [0; 32],
                bytes: Bytes::from_static(&[1, 2, 3]),
            }],
            unreadable: vec![],
        };
        let forged = PeerMessage::Fs(Box::new(forged));
        assert!(crate::message::decode_attached(&encode(&forged), &Bytes::new()).is_err());
        let (payload, attachment) = payload_and_attachment(crate::message::encode_unsealed(forged));
        assert!(crate::message::decode_attached(&payload, &attachment).is_err());
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
            flips_again in proptest::collection::vec((0usize..4096, proptest::prelude::any::<u8>()), 1..8),
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
            // A delta, flipped, resolved against the version it was made from.
            let old_bytes = vec![6u8; 300_000];
            let mut new_bytes = old_bytes.clone();
            new_bytes.insert(1000, 1);
            let mut held = Manifest::new();
            held.insert(p("f"), file(&old_bytes));
            let mut wire = encode(&change_msg(
                Change::Modify { path: p("f"), old: file(&old_bytes), new: file(&new_bytes) },
                vec![],
            ));
            for (at, b) in flips_again {
                let n = wire.len();
                wire[at % n] ^= b | 1;
            }
            if let Ok(PeerMessage::Fs(m)) = decode::<PeerMessage>("peer message", &wire) {
                if m.validate().is_ok() {
                    if let FsMessage::Change { change, .. } = *m {
                        let _ = change.resolve(&held);
                    }
                }
            }
        }

        /// Random edit scripts on a chunk list: the delta crosses the wire
        /// and is rebuilt into exactly the change that was sent, against the
        /// old version; against any other version it is refused.
        #[test]
        fn file_modify_deltas_round_trip(
            n in 0usize..300,
            script in proptest::collection::vec((0.0f64..=1.0, 0usize..5, 0usize..5), 0..5),
            seed in proptest::prelude::any::<u8>(),
        ) {
            let old_chunks = fake_chunks(&(0..n).map(|i| (1000 + i as u32, seed)).collect::<Vec<_>>());
            let mut specs: Vec<(u32, u8)> = old_chunks.iter().map(|c| (c.len, c.hash[0])).collect();
            for (k, (at, del, ins)) in script.iter().enumerate() {
                let at = ((at * specs.len() as f64) as usize).min(specs.len());
                let del = (*del).min(specs.len() - at);
                let new: Vec<(u32, u8)> = (0..*ins).map(|i| (7 + (k * 5 + i) as u32, seed.wrapping_add(1))).collect();
                specs.splice(at..at + del, new);
            }
            let new_chunks = fake_chunks(&specs);
            let old = fake_file(old_chunks, 1);
            let new = fake_file(new_chunks, 2);
            proptest::prop_assume!(!old.same_content(&new));
            let change = Change::Modify { path: p("d/f"), old: old.clone(), new };
            let wire = encode(&change_msg(change.clone(), vec![]));
            let PeerMessage::Fs(m) = decode::<PeerMessage>("peer message", &wire).unwrap() else {
                panic!("not a file-set message")
            };
            m.validate().unwrap();
            let FsMessage::Change { change: wc, .. } = *m else { panic!("not a change") };
            let mut held = Manifest::new();
            held.insert(p("d"), Entry { kind: EntryKind::Dir, mode: 0o755, mtime_ns: 0 , owner: None });
            held.insert(p("d/f"), old.clone());
            proptest::prop_assert_eq!(wc.resolve(&held).unwrap(), change);
            let mut other = old;
            other.mtime_ns += 1;
            held.insert(p("d/f"), other);
            proptest::prop_assert!(wc.resolve(&held).is_err());
        }
    }

    /// A chunk list of the given lengths, each chunk's hash starting with
    /// the given byte (the rest tells them apart).
    fn fake_chunks(specs: &[(u32, u8)]) -> Vec<ChunkRef> {
        let mut at = 0;
        specs
            .iter()
            .enumerate()
            .map(|(i, (len, tag))| {
                let mut hash =
                    *blake3::hash(&(i as u64 ^ u64::from(*len) << 32).to_le_bytes()).as_bytes();
                hash[0] = *tag;
                let c = ChunkRef {
                    offset: at,
                    len: *len,
                    hash,
                };
                at += u64::from(*len);
                c
            })
            .collect()
    }

    fn fake_file(chunks: Vec<ChunkRef>, mtime_ns: i64) -> Entry {
        Entry {
            kind: EntryKind::file(chunks),
            mode: 0o640,
            mtime_ns,
            owner: None,
        }
    }

    fn modify_of(old_bytes: &[u8], new_bytes: &[u8]) -> (Change, WireChange) {
        let change = Change::Modify {
            path: p("f"),
            old: file(old_bytes),
            new: file(new_bytes),
        };
        let wire = WireChange::from_change(&change);
        (change, wire)
    }

    #[test]
    fn a_modify_of_a_large_file_sends_only_the_edited_middle() {
        // 1600 chunks: a 100 MiB file's list.
        let specs: Vec<(u32, u8)> = (0..1600).map(|i| (65_536 + i, 1)).collect();
        let old = fake_file(fake_chunks(&specs), 1);
        let mut specs2 = specs.clone();
        specs2[800] = (70_000, 2);
        let new = fake_file(fake_chunks(&specs2), 2);
        let change = Change::Modify {
            path: p("big"),
            old: old.clone(),
            new,
        };
        let whole = encode(&WireChange::Whole(change.clone())).len();
        let delta = encode(&WireChange::from_change(&change)).len();
        assert!(whole > 100_000, "{whole}");
        assert!(delta < 200, "{delta}");
        let mut held = Manifest::new();
        held.insert(p("big"), old);
        assert_eq!(
            WireChange::from_change(&change).resolve(&held).unwrap(),
            change
        );
    }

    #[test]
    fn a_delta_that_does_not_fit_the_held_version_is_refused() {
        let a = vec![1u8; 300_000];
        let mut b = a.clone();
        b.insert(150_000, 9);
        let (change, wire) = modify_of(&a, &b);
        assert!(matches!(wire, WireChange::FileModify { .. }));
        let mut held = Manifest::new();
        // Nothing held, a directory, another version of the file.
        assert!(wire.resolve(&held).is_err());
        held.insert(
            p("f"),
            Entry {
                kind: EntryKind::Dir,
                mode: 0o755,
                mtime_ns: 0,
                owner: None,
            },
        );
        assert!(wire.resolve(&held).is_err());
        held.insert(p("f"), file(&[2u8; 300_000]));
        assert!(wire
            .resolve(&held)
            .unwrap_err()
            .0
            .contains("another version"));
        // The right version, but a forged delta that keeps too many chunks.
        held.insert(p("f"), file(&a));
        assert_eq!(wire.resolve(&held).unwrap(), change);
        let WireChange::FileModify {
            path,
            old,
            size,
            hash,
            mode,
            mtime_ns,
            owner,
            mut chunks,
        } = wire
        else {
            unreachable!()
        };
        chunks.suffix = 1000;
        let forged = WireChange::FileModify {
            path: path.clone(),
            old,
            size,
            hash,
            mode,
            mtime_ns,
            owner,
            chunks: chunks.clone(),
        };
        assert!(forged.validate().is_ok());
        assert!(forged.resolve(&held).unwrap_err().0.contains("keeps"));
        // A delta whose chunks do not tile the new size.
        chunks.suffix = 0;
        let forged = WireChange::FileModify {
            path,
            old,
            size: size + 1,
            hash,
            mode,
            mtime_ns,
            owner,
            chunks,
        };
        assert!(forged.resolve(&held).is_err());
    }

    #[test]
    fn a_replayed_delta_finds_the_new_version_in_place() {
        let a = vec![1u8; 100_000];
        let b = vec![3u8; 100_000];
        let (change, wire) = modify_of(&a, &b);
        let mut held = Manifest::new();
        held.insert(p("f"), file(&b));
        let Change::Modify { new, .. } = &change else {
            unreachable!()
        };
        let Change::Modify { new: got, .. } = wire.resolve(&held).unwrap() else {
            panic!("not a modify")
        };
        assert_eq!(&got, new);
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
