//! Deltas for the wire: a file's new chunk list relative to the one the
//! standby holds, and a chunk's new bytes relative to an old chunk.
//!
//! The manifest stays what it is; these only make a `Modify` of a large file
//! cheap to send.
//!
//! **Chunk lists.** An edit changes the chunks next to it and keeps the rest,
//! so a new list is the old one with a middle replaced: [`ChunkListDelta`]
//! says how many chunks are kept from the start and from the end of the old
//! list and carries the new ones in between (offsets follow from lengths).
//! The receiver names the old list it applies to by [`entry_digest`], so a
//! delta applied to another version is refused, never misapplied.
//!
//! **Chunks.** A chunk made by an edit shares most of its bytes with the old
//! chunk at the same place in the list (an insert changes a few bytes inside
//! it, an append extends the old last chunk). [`ChunkDelta`] sends only the
//! bytes between the longest common prefix and suffix. The primary no longer
//! has the old chunk's bytes (the file was rewritten), so it keeps, for the
//! chunks it has read, a [`ChunkSketch`]: a small hash of every
//! [`SKETCH_BLOCK_BYTES`] block, counted from the start and from the end.
//! Comparing the new bytes with it finds the common prefix and suffix to
//! within a block. The hash is not cryptographic and need not be: the
//! receiver rebuilds the chunk from its own copy of the base and checks the
//! result's blake3, and anything that fails is asked for whole.

use crate::chunk::{ChunkHash, ChunkRef, CHUNK_BYTES_MAX};
use crate::manifest::Entry;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// blake3 derive-key context of [`entry_digest`].
pub const ENTRY_DIGEST_CONTEXT: &str = "tandem file-set entry digest v1";
/// The granularity of a [`ChunkSketch`]: a common prefix or suffix is found
/// to within this many bytes.
pub const SKETCH_BLOCK_BYTES: usize = 2048;
/// Sketches kept by a primary, at most (in bytes of memory, about): 8 bytes
/// per [`SKETCH_BLOCK_BYTES`] of distinct content, so this covers 16 GiB.
pub const SKETCH_STORE_BYTES_MAX: usize = 64 << 20;
/// New chunks in one [`ChunkListDelta`], at most.
pub const DELTA_MIDDLE_MAX: usize = 1 << 20;

/// Why a delta does not apply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeltaError {
    #[error("keeps {prefix} + {suffix} chunks of a list of {held}")]
    ListDoesNotFit {
        prefix: u32,
        suffix: u32,
        held: usize,
    },
    #[error("{0} new chunks, more than the cap")]
    TooManyChunks(usize),
    #[error("a chunk of illegal length {0}")]
    ChunkLength(u64),
    #[error("keeps {prefix} + {suffix} bytes of a base chunk of {base}")]
    BaseTooShort {
        prefix: u32,
        suffix: u32,
        base: usize,
    },
    #[error("the rebuilt chunk does not match its hash")]
    Hash,
}

/// blake3 over a canonical encoding of a whole entry: type, mode, mtime,
/// and for a file its size, hash and chunk list (lengths and hashes; offsets
/// follow), for a symlink its target. Two entries with the same digest are
/// the same entry.
pub fn entry_digest(e: &Entry) -> [u8; 32] {
    let mut h = blake3::Hasher::new_derive_key(ENTRY_DIGEST_CONTEXT);
    e.hash_fields(&mut h);
    let chunks = e.chunks();
    h.update(&(chunks.len() as u64).to_le_bytes());
    for c in chunks {
        h.update(&c.len.to_le_bytes());
        h.update(&c.hash);
    }
    *h.finalize().as_bytes()
}

/// A new chunk list as the old one with a middle replaced.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkListDelta {
    /// Chunks kept from the start of the old list.
    pub prefix: u32,
    /// Chunks kept from the end of the old list (at shifted offsets).
    pub suffix: u32,
    /// The new chunks in between: length and hash.
    pub middle: Vec<(u32, ChunkHash)>,
}

/// How many chunks `old` and `new` share at the start and then at the end
/// (never overlapping in either list).
fn kept(old: &[ChunkRef], new: &[ChunkRef]) -> (usize, usize) {
    let same = |a: &ChunkRef, b: &ChunkRef| a.len == b.len && a.hash == b.hash;
    let prefix = old.iter().zip(new).take_while(|(a, b)| same(a, b)).count();
    let room = old.len().min(new.len()) - prefix;
    let suffix = old
        .iter()
        .rev()
        .zip(new.iter().rev())
        .take(room)
        .take_while(|(a, b)| same(a, b))
        .count();
    (prefix, suffix)
}

impl ChunkListDelta {
    /// The delta that turns `old` into `new`.
    pub fn between(old: &[ChunkRef], new: &[ChunkRef]) -> ChunkListDelta {
        let (prefix, suffix) = kept(old, new);
        ChunkListDelta {
            prefix: prefix as u32,
            suffix: suffix as u32,
            middle: new[prefix..new.len() - suffix]
                .iter()
                .map(|c| (c.len, c.hash))
                .collect(),
        }
    }

    /// Checks that need no old list: counts and chunk lengths.
    pub fn check_shape(&self) -> Result<(), DeltaError> {
        if self.middle.len() > DELTA_MIDDLE_MAX {
            return Err(DeltaError::TooManyChunks(self.middle.len()));
        }
        match self
            .middle
            .iter()
            .find(|(len, _)| *len == 0 || *len as usize > CHUNK_BYTES_MAX)
        {
            Some((len, _)) => Err(DeltaError::ChunkLength(u64::from(*len))),
            None => Ok(()),
        }
    }

    /// The new list, from the old one. Refuses a delta that keeps more
    /// chunks than `old` has; never panics.
    pub fn apply(&self, old: &[ChunkRef]) -> Result<Vec<ChunkRef>, DeltaError> {
        self.check_shape()?;
        let (prefix, suffix) = (self.prefix as usize, self.suffix as usize);
        if prefix.checked_add(suffix).is_none_or(|n| n > old.len()) {
            return Err(DeltaError::ListDoesNotFit {
                prefix: self.prefix,
                suffix: self.suffix,
                held: old.len(),
            });
        }
        let mut out = Vec::with_capacity(prefix + self.middle.len() + suffix);
        out.extend_from_slice(&old[..prefix]);
        let mut offset = out.last().map_or(0, ChunkRef::end);
        let lens = self
            .middle
            .iter()
            .copied()
            .chain(old[old.len() - suffix..].iter().map(|c| (c.len, c.hash)));
        for (len, hash) in lens {
            out.push(ChunkRef { offset, len, hash });
            offset = offset
                .checked_add(u64::from(len))
                .ok_or(DeltaError::ChunkLength(u64::from(len)))?;
        }
        Ok(out)
    }
}

/// The new chunks of `new` in the middle of its delta from `old`, each
/// paired with the old chunk at the same place: the chunk it was most
/// likely made from.
pub fn middle_pairs(old: &[ChunkRef], new: &[ChunkRef]) -> Vec<(ChunkRef, ChunkRef)> {
    let (prefix, suffix) = kept(old, new);
    let old_mid = &old[prefix..old.len() - suffix];
    let new_mid = &new[prefix..new.len() - suffix];
    new_mid
        .iter()
        .copied()
        .zip(old_mid.iter().copied())
        .collect()
}

/// A fast, non-cryptographic hash of one block (see the module doc): four
/// independent lanes over 32-byte groups, so the multiplications overlap.
fn block_hash(bytes: &[u8]) -> u32 {
    const K: u64 = 0x9e37_79b9_7f4a_7c15;
    const M: u64 = 0xff51_afd7_ed55_8ccd;
    let word = |w: &[u8]| u64::from_le_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]);
    let mut lanes = [
        K ^ bytes.len() as u64,
        K,
        K.rotate_left(17),
        K.rotate_left(41),
    ];
    let mut groups = bytes.chunks_exact(32);
    for g in &mut groups {
        for (i, lane) in lanes.iter_mut().enumerate() {
            *lane = (*lane ^ word(&g[8 * i..])).wrapping_mul(M).rotate_left(29);
        }
    }
    let mut h = lanes
        .iter()
        .fold(0u64, |acc, l| (acc ^ l).wrapping_mul(K).rotate_left(31));
    let mut words = groups.remainder().chunks_exact(8);
    for w in &mut words {
        h = (h ^ word(w)).wrapping_mul(M).rotate_left(29);
    }
    let mut tail = [0u8; 8];
    let rest = words.remainder();
    tail[..rest.len()].copy_from_slice(rest);
    h = (h ^ u64::from_le_bytes(tail)).wrapping_mul(K);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    (h ^ (h >> 32)) as u32
}

/// What a primary remembers of a chunk's bytes once they are gone: a hash
/// of every [`SKETCH_BLOCK_BYTES`] block from the start, and of every block
/// counted from the end.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChunkSketch {
    len: u32,
    /// `n` hashes of blocks from the start, then `n` from the end.
    blocks: Box<[u32]>,
}

impl ChunkSketch {
    /// The sketch of a chunk's bytes.
    pub fn of(bytes: &[u8]) -> ChunkSketch {
        let len = bytes.len();
        let n = len.div_ceil(SKETCH_BLOCK_BYTES);
        let mut blocks = Vec::with_capacity(2 * n);
        blocks.extend(bytes.chunks(SKETCH_BLOCK_BYTES).map(block_hash));
        blocks.extend(bytes.rchunks(SKETCH_BLOCK_BYTES).map(block_hash));
        ChunkSketch {
            len: len as u32,
            blocks: blocks.into_boxed_slice(),
        }
    }

    /// The length of the chunk it was made of.
    pub fn len(&self) -> usize {
        self.len as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn head(&self) -> &[u32] {
        &self.blocks[..self.blocks.len() / 2]
    }

    fn tail(&self) -> &[u32] {
        &self.blocks[self.blocks.len() / 2..]
    }

    /// Memory it takes, about.
    fn footprint(&self) -> usize {
        64 + 4 * self.blocks.len()
    }
}

/// The sketches a primary keeps, by chunk hash, bounded in memory.
#[derive(Debug)]
pub struct SketchStore {
    sketches: HashMap<ChunkHash, ChunkSketch>,
    bytes: usize,
    bytes_max: usize,
}

impl Default for SketchStore {
    fn default() -> Self {
        Self::new(SKETCH_STORE_BYTES_MAX)
    }
}

impl SketchStore {
    pub fn new(bytes_max: usize) -> Self {
        Self {
            sketches: HashMap::new(),
            bytes: 0,
            bytes_max,
        }
    }

    /// Keep a sketch, unless the store is full (then that chunk is sent
    /// whole if it is ever the base of an edit).
    pub fn insert(&mut self, hash: ChunkHash, sketch: ChunkSketch) {
        let size = sketch.footprint();
        if self.sketches.contains_key(&hash) || self.bytes + size > self.bytes_max {
            return;
        }
        self.bytes += size;
        self.sketches.insert(hash, sketch);
    }

    pub fn get(&self, hash: &ChunkHash) -> Option<&ChunkSketch> {
        self.sketches.get(hash)
    }

    pub fn len(&self) -> usize {
        self.sketches.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sketches.is_empty()
    }

    /// Keep only the sketches of chunks for which `keep` holds.
    pub fn retain(&mut self, mut keep: impl FnMut(&ChunkHash) -> bool) {
        let mut bytes = 0;
        self.sketches.retain(|h, s| {
            let k = keep(h);
            if k {
                bytes += s.footprint();
            }
            k
        });
        self.bytes = bytes;
    }
}

/// A chunk as the bytes of a base chunk the receiver holds, with the part
/// between a common prefix and a common suffix replaced.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkDelta {
    /// blake3 of the chunk this rebuilds.
    pub hash: ChunkHash,
    /// blake3 of the base chunk.
    pub base: ChunkHash,
    /// Bytes kept from the start of the base.
    pub prefix: u32,
    /// Bytes kept from the end of the base.
    pub suffix: u32,
    /// The bytes in between.
    #[serde(with = "serde_bytes")]
    pub literal: Vec<u8>,
}

impl ChunkDelta {
    /// The delta of `bytes` (the chunk named `hash`) against the chunk
    /// named `base`, whose sketch is `sketch`. The prefix and suffix never
    /// overlap in either chunk.
    pub fn against(
        base: ChunkHash,
        sketch: &ChunkSketch,
        hash: ChunkHash,
        bytes: &[u8],
    ) -> ChunkDelta {
        let (lo, ln) = (sketch.len(), bytes.len());
        let mut prefix = 0;
        for (i, h) in sketch.head().iter().enumerate() {
            let end = ((i + 1) * SKETCH_BLOCK_BYTES).min(lo);
            if end > ln || block_hash(&bytes[i * SKETCH_BLOCK_BYTES..end]) != *h {
                break;
            }
            prefix = end;
        }
        let room = lo.min(ln) - prefix;
        let mut suffix = 0;
        for (j, h) in sketch.tail().iter().enumerate() {
            let far = ((j + 1) * SKETCH_BLOCK_BYTES).min(lo);
            if far > room || block_hash(&bytes[ln - far..ln - j * SKETCH_BLOCK_BYTES]) != *h {
                break;
            }
            suffix = far;
        }
        ChunkDelta {
            hash,
            base,
            prefix: prefix as u32,
            suffix: suffix as u32,
            literal: bytes[prefix..ln - suffix].to_vec(),
        }
    }

    /// The length of the chunk it rebuilds.
    pub fn rebuilt_len(&self) -> u64 {
        u64::from(self.prefix) + u64::from(self.suffix) + self.literal.len() as u64
    }

    /// Checks that need no base: the rebuilt chunk's length is legal.
    pub fn check_shape(&self) -> Result<(), DeltaError> {
        let n = self.rebuilt_len();
        if n == 0 || n > CHUNK_BYTES_MAX as u64 {
            return Err(DeltaError::ChunkLength(n));
        }
        Ok(())
    }

    /// The chunk's bytes, from the base's, checked against the chunk's
    /// hash. Never panics.
    pub fn rebuild(&self, base: &[u8]) -> Result<Vec<u8>, DeltaError> {
        self.check_shape()?;
        let (p, s) = (self.prefix as usize, self.suffix as usize);
        if p + s > base.len() {
            return Err(DeltaError::BaseTooShort {
                prefix: self.prefix,
                suffix: self.suffix,
                base: base.len(),
            });
        }
        let mut out = Vec::with_capacity(p + self.literal.len() + s);
        out.extend_from_slice(&base[..p]);
        out.extend_from_slice(&self.literal);
        out.extend_from_slice(&base[base.len() - s..]);
        if *blake3::hash(&out).as_bytes() != self.hash {
            return Err(DeltaError::Hash);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunk::chunk_bytes;
    use crate::chunk::tests::random_bytes;
    use crate::manifest::EntryKind;
    use proptest::prelude::*;

    fn hash(b: &[u8]) -> ChunkHash {
        *blake3::hash(b).as_bytes()
    }

    fn delta_of(old: &[u8], new: &[u8]) -> ChunkDelta {
        ChunkDelta::against(hash(old), &ChunkSketch::of(old), hash(new), new)
    }

    #[test]
    fn a_one_byte_insert_costs_at_most_two_blocks() {
        let old = random_bytes(1, 70_000);
        for at in [0, 1, 2047, 2048, 35_000, 69_999, 70_000] {
            let mut new = old.clone();
            new.insert(at, 0x5a);
            let d = delta_of(&old, &new);
            assert!(
                d.literal.len() <= 2 * SKETCH_BLOCK_BYTES + 1,
                "at {at}: {}",
                d.literal.len()
            );
            assert_eq!(d.rebuild(&old).unwrap(), new);
        }
    }

    #[test]
    fn an_extended_chunk_sends_only_the_new_bytes() {
        let old = random_bytes(2, 40_001);
        let mut new = old.clone();
        new.extend_from_slice(&random_bytes(3, 90_000));
        let d = delta_of(&old, &new);
        assert_eq!(d.prefix as usize, old.len());
        assert_eq!(d.literal.len(), 90_000);
        assert_eq!(d.rebuild(&old).unwrap(), new);
    }

    #[test]
    fn malformed_chunk_deltas_are_refused() {
        let old = random_bytes(4, 10_000);
        let mut d = delta_of(&old, &old[..9_000]);
        assert_eq!(d.rebuild(&old).unwrap(), &old[..9_000]);
        d.suffix = 5_000;
        d.prefix = 6_000;
        assert!(matches!(
            d.rebuild(&old),
            Err(DeltaError::BaseTooShort { .. })
        ));
        d.prefix = u32::MAX;
        d.suffix = u32::MAX;
        assert!(matches!(d.rebuild(&old), Err(DeltaError::ChunkLength(_))));
        let mut d = delta_of(&old, &old[..9_000]);
        d.literal.push(1);
        assert_eq!(d.rebuild(&old), Err(DeltaError::Hash));
        let empty = ChunkDelta {
            hash: hash(b""),
            base: hash(&old),
            prefix: 0,
            suffix: 0,
            literal: vec![],
        };
        assert!(empty.check_shape().is_err());
    }

    #[test]
    fn malformed_list_deltas_are_refused() {
        let bytes = random_bytes(5, 600_000);
        let old = chunk_bytes(&bytes);
        let mut d = ChunkListDelta::between(&old, &old);
        assert_eq!(d.apply(&old).unwrap(), old);
        d.suffix = 1;
        assert!(matches!(
            d.apply(&old),
            Err(DeltaError::ListDoesNotFit { .. })
        ));
        d.prefix = u32::MAX;
        d.suffix = u32::MAX;
        assert!(d.apply(&old).is_err());
        let d = ChunkListDelta {
            prefix: 0,
            suffix: 0,
            middle: vec![(0, [0; 32])],
        };
        assert_eq!(d.apply(&[]), Err(DeltaError::ChunkLength(0)));
        let d = ChunkListDelta {
            prefix: 0,
            suffix: 0,
            middle: vec![(CHUNK_BYTES_MAX as u32 + 1, [0; 32])],
        };
        assert!(d.check_shape().is_err());
    }

    #[test]
    fn entry_digests_cover_the_whole_entry() {
        let bytes = random_bytes(6, 100_000);
        let e = Entry {
            kind: EntryKind::file(chunk_bytes(&bytes)),
            mode: 0o644,
            mtime_ns: 5,
            owner: None,
        };
        let d = entry_digest(&e);
        let mut m = e.clone();
        m.mtime_ns += 1;
        assert_ne!(entry_digest(&m), d);
        let mut m = e.clone();
        m.mode = 0o600;
        assert_ne!(entry_digest(&m), d);
        let mut m = e.clone();
        if let EntryKind::File { chunks, .. } = &mut m.kind {
            chunks[0].hash[0] ^= 1;
        }
        assert_ne!(entry_digest(&m), d);
        assert_eq!(entry_digest(&e.clone()), d);
    }

    #[test]
    fn the_store_is_bounded_and_pruned() {
        let a = random_bytes(7, 64 * 1024);
        let s = ChunkSketch::of(&a);
        let mut store = SketchStore::new(s.footprint() * 2);
        for i in 0..5u8 {
            store.insert([i; 32], s.clone());
        }
        assert_eq!(store.len(), 2);
        store.retain(|h| h[0] == 0);
        assert_eq!(store.len(), 1);
        store.insert([9; 32], s.clone());
        assert_eq!(store.len(), 2);
        assert!(store.get(&[9; 32]).is_some());
    }

    #[test]
    fn bytes_are_bytes_on_the_wire() {
        let d = ChunkDelta {
            hash: [1; 32],
            base: [2; 32],
            prefix: 3,
            suffix: 4,
            literal: vec![200; 1000],
        };
        let wire = postcard::to_allocvec(&d).unwrap();
        assert_eq!(wire.len(), 32 + 32 + 1 + 1 + 2 + 1000);
        let back: ChunkDelta = postcard::from_bytes(&wire).unwrap();
        assert_eq!(back, d);
    }

    /// An edit script on a byte buffer: (position fraction, delete count,
    /// inserted bytes).
    fn edit(bytes: &[u8], edits: &[(f64, usize, Vec<u8>)]) -> Vec<u8> {
        let mut out = bytes.to_vec();
        for (at, del, ins) in edits {
            let at = ((*at * out.len() as f64) as usize).min(out.len());
            let del = (*del).min(out.len() - at);
            out.splice(at..at + del, ins.iter().copied());
        }
        out
    }

    fn edits() -> impl Strategy<Value = Vec<(f64, usize, Vec<u8>)>> {
        proptest::collection::vec(
            (
                0.0f64..=1.0,
                0usize..3000,
                proptest::collection::vec(any::<u8>(), 0..3000),
            ),
            0..4,
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Whatever the edits, a chunk delta rebuilds the new chunk exactly,
        /// and the prefix and suffix it keeps are really common.
        #[test]
        fn chunk_deltas_round_trip(
            seed in any::<u64>(),
            len in 1usize..CHUNK_BYTES_MAX,
            script in edits(),
        ) {
            let old = random_bytes(seed, len);
            let new = edit(&old, &script);
            prop_assume!(!new.is_empty() && new.len() <= CHUNK_BYTES_MAX);
            let d = delta_of(&old, &new);
            let (p, s) = (d.prefix as usize, d.suffix as usize);
            prop_assert!(p + s <= old.len().min(new.len()));
            prop_assert_eq!(&old[..p], &new[..p]);
            prop_assert_eq!(&old[old.len() - s..], &new[new.len() - s..]);
            prop_assert_eq!(d.rebuild(&old).unwrap(), new.clone());
            let wire = postcard::to_allocvec(&d).unwrap();
            let back: ChunkDelta = postcard::from_bytes(&wire).unwrap();
            prop_assert_eq!(back.rebuild(&old).unwrap(), new);
        }

        /// Whatever the edits, a chunk-list delta rebuilds the new list, and
        /// its middle pairs are exactly its new chunks.
        #[test]
        fn list_deltas_round_trip(
            seed in any::<u64>(),
            len in 0usize..1_500_000,
            script in edits(),
        ) {
            let bytes = random_bytes(seed, len);
            let (old, new) = (chunk_bytes(&bytes), chunk_bytes(&edit(&bytes, &script)));
            let d = ChunkListDelta::between(&old, &new);
            prop_assert_eq!(d.apply(&old).unwrap(), new.clone());
            prop_assert!(d.middle.len() <= new.len());
            let pairs = middle_pairs(&old, &new);
            prop_assert!(pairs.len() <= d.middle.len());
            for ((n, _), (len, hash)) in pairs.iter().zip(&d.middle) {
                prop_assert_eq!((n.len, n.hash), (*len, *hash));
            }
            let wire = postcard::to_allocvec(&d).unwrap();
            let back: ChunkListDelta = postcard::from_bytes(&wire).unwrap();
            prop_assert_eq!(back.apply(&old).unwrap(), new);
        }

        /// Arbitrary deltas against arbitrary lists and bases never panic.
        #[test]
        fn hostile_deltas_never_panic(
            prefix in any::<u32>(),
            suffix in any::<u32>(),
            middle in proptest::collection::vec((any::<u32>(), any::<[u8; 32]>()), 0..4),
            held in 0usize..6,
            base in proptest::collection::vec(any::<u8>(), 0..5000),
            literal in proptest::collection::vec(any::<u8>(), 0..5000),
        ) {
            let bytes = random_bytes(held as u64, held * 40_000);
            let old = chunk_bytes(&bytes);
            let _ = ChunkListDelta { prefix: prefix % 8, suffix: suffix % 8, middle: middle.clone() }.apply(&old);
            let _ = ChunkListDelta { prefix, suffix, middle }.apply(&old);
            let d = ChunkDelta { hash: [0; 32], base: [0; 32], prefix: prefix % 6000, suffix: suffix % 6000, literal };
            let _ = d.rebuild(&base);
        }
    }
}
