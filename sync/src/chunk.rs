//! Content-defined chunking of file contents.
//!
//! Files are cut where the content says so (FastCDC 2020, gear hash with
//! normalised chunking, level 1), not at fixed offsets, so inserting or
//! deleting bytes moves only the boundaries next to the edit: a 1-byte insert
//! near the start of a large file changes about one chunk, an append changes
//! only the last chunk(s). Each chunk is named by its blake3 hash, which is
//! what the two sides compare to decide what must cross the wire.
//!
//! [`Chunker`] is streaming: the caller feeds bytes as it reads them (this
//! module never reads files) and gets chunks back as soon as their end is
//! known. Its boundaries are exactly those of FastCDC over the whole buffer,
//! because a cut never looks further than [`CHUNK_BYTES_MAX`] ahead.
//!
//! A file's hash is [`file_hash`] of its chunk list, not a second blake3
//! pass over its bytes: the boundaries follow from the content, and each
//! chunk's hash from its bytes, so the list names the content as surely.
//! Each side then reads and hashes a file's bytes once (the primary when it
//! chunks them, the standby when it checks each chunk it receives) instead
//! of twice, and the standby does not read a file back to check it.

use crate::delta::ChunkSketch;
use serde::{Deserialize, Serialize};

// The chunking parameters and FastCDC's gear table decide every chunk
// boundary, so every file's hash (`file_hash`): changing either is a new
// wire protocol version and manifest encoding (fastcdc is pinned exactly).

/// The smallest chunk, except for the last chunk of a file.
pub const CHUNK_BYTES_MIN: usize = 16 * 1024;
/// The size chunks tend towards.
pub const CHUNK_BYTES_AVG: usize = 64 * 1024;
/// The largest chunk: a cut is forced here.
pub const CHUNK_BYTES_MAX: usize = 256 * 1024;

/// The blake3 hash of a chunk's bytes.
pub type ChunkHash = [u8; 32];

/// One chunk of a file: where it lies and what it holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ChunkRef {
    /// Byte offset of the chunk in the file.
    pub offset: u64,
    /// Length in bytes; never zero, at most [`CHUNK_BYTES_MAX`].
    pub len: u32,
    /// blake3 of the chunk's bytes.
    pub hash: ChunkHash,
}

impl ChunkRef {
    /// The offset just past the chunk.
    pub fn end(&self) -> u64 {
        self.offset + u64::from(self.len)
    }

    /// Whether `bytes` are this chunk's contents.
    pub fn verify(&self, bytes: &[u8]) -> bool {
        bytes.len() == self.len as usize && *blake3::hash(bytes).as_bytes() == self.hash
    }
}

/// blake3 derive-key context of [`file_hash`].
pub const FILE_HASH_CONTEXT: &str = "tandem file-set file content from its chunk list v1";

/// The hash of a file's content: blake3 (derive-key mode,
/// [`FILE_HASH_CONTEXT`]) over each chunk's length and hash, in order.
/// Equal for two files exactly when their chunk lists are equal, which
/// (the chunking being a function of the content) is when their bytes are.
pub fn file_hash(chunks: &[ChunkRef]) -> [u8; 32] {
    let mut h = blake3::Hasher::new_derive_key(FILE_HASH_CONTEXT);
    for c in chunks {
        h.update(&c.len.to_le_bytes());
        h.update(&c.hash);
    }
    *h.finalize().as_bytes()
}

/// The FastCDC masks for [`CHUNK_BYTES_AVG`] at normalisation level 1, as
/// `fastcdc::v2020::FastCDC::new` computes them.
fn masks() -> (u64, u64, u64, u64) {
    let bits = (CHUNK_BYTES_AVG as f64).log2().round() as usize;
    let mask_s = fastcdc::v2020::MASKS[bits + 1];
    let mask_l = fastcdc::v2020::MASKS[bits - 1];
    (mask_s, mask_l, mask_s << 1, mask_l << 1)
}

/// The length of the next chunk at the start of `buf`, for a buffer that is
/// either at least [`CHUNK_BYTES_MAX`] long or the rest of the file.
fn next_cut(buf: &[u8]) -> usize {
    let (mask_s, mask_l, mask_s_ls, mask_l_ls) = masks();
    let (_, len) = fastcdc::v2020::cut(
        buf,
        CHUNK_BYTES_MIN,
        CHUNK_BYTES_AVG,
        CHUNK_BYTES_MAX,
        mask_s,
        mask_l,
        mask_s_ls,
        mask_l_ls,
    );
    // `cut` returns at least one byte for a non-empty buffer; guard anyway so
    // that a zero can never make the caller loop forever.
    len.clamp(1, buf.len())
}

/// A streaming chunker: feed the file's bytes in order, then finish.
#[derive(Debug, Default)]
pub struct Chunker {
    /// Bytes not yet cut into a chunk; fewer than [`CHUNK_BYTES_MAX`] between calls.
    pending: Vec<u8>,
    /// File offset of `pending[0]`.
    offset: u64,
    /// The sketch of every chunk cut so far, if asked for.
    sketches: Option<Vec<(ChunkHash, ChunkSketch)>>,
}

impl Chunker {
    /// A chunker at the start of a file.
    pub fn new() -> Self {
        Self::default()
    }

    /// A chunker that also keeps a [`ChunkSketch`] of every chunk (see
    /// [`Chunker::take_sketches`]).
    pub fn with_sketches() -> Self {
        Self {
            sketches: Some(Vec::new()),
            ..Self::default()
        }
    }

    /// The sketches of the chunks cut since the last call.
    pub fn take_sketches(&mut self) -> Vec<(ChunkHash, ChunkSketch)> {
        self.sketches
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    /// Feed the next bytes of the file; returns the chunks that are complete.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<ChunkRef> {
        self.pending.extend_from_slice(bytes);
        let mut out = Vec::new();
        let mut start = 0;
        while self.pending.len() - start >= CHUNK_BYTES_MAX {
            let len = next_cut(&self.pending[start..]);
            out.push(emit(
                &mut self.offset,
                &mut self.sketches,
                &self.pending[start..start + len],
            ));
            start += len;
        }
        self.pending.drain(..start);
        out
    }

    /// The end of the file: the remaining chunks.
    pub fn finish(&mut self) -> Vec<ChunkRef> {
        let pending = std::mem::take(&mut self.pending);
        self.cut_all(&pending)
    }

    /// Feed the whole rest of the file at once and finish: the chunks. The
    /// bytes are cut where they lie, not copied first (unless earlier
    /// bytes are still waiting from [`Chunker::push`]).
    pub fn push_last(&mut self, bytes: &[u8]) -> Vec<ChunkRef> {
        if !self.pending.is_empty() {
            let mut out = self.push(bytes);
            out.extend(self.finish());
            return out;
        }
        self.cut_all(bytes)
    }

    fn cut_all(&mut self, bytes: &[u8]) -> Vec<ChunkRef> {
        let mut out = Vec::new();
        let mut start = 0;
        while start < bytes.len() {
            let len = next_cut(&bytes[start..]);
            out.push(emit(
                &mut self.offset,
                &mut self.sketches,
                &bytes[start..start + len],
            ));
            start += len;
        }
        out
    }
}

/// The chunk of `bytes` at `offset` (then moved past it), its sketch kept
/// if `sketches` are.
fn emit(
    offset: &mut u64,
    sketches: &mut Option<Vec<(ChunkHash, ChunkSketch)>>,
    bytes: &[u8],
) -> ChunkRef {
    let chunk = ChunkRef {
        offset: *offset,
        len: bytes.len() as u32,
        hash: *blake3::hash(bytes).as_bytes(),
    };
    *offset += bytes.len() as u64;
    if let Some(sketches) = sketches {
        sketches.push((chunk.hash, ChunkSketch::of(bytes)));
    }
    chunk
}

/// The chunks of a whole buffer.
pub fn chunk_bytes(bytes: &[u8]) -> Vec<ChunkRef> {
    Chunker::new().push_last(bytes)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::{Rng, SeedableRng};
    use std::collections::HashSet;

    /// Seeded random bytes (the other modules' tests use them too).
    pub(crate) fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut v = vec![0u8; len];
        rng.fill(&mut v[..]);
        v
    }

    fn assert_covers(bytes: &[u8], chunks: &[ChunkRef]) {
        let mut at = 0u64;
        for (i, c) in chunks.iter().enumerate() {
            assert_eq!(c.offset, at, "chunk {i} starts where the last ended");
            assert!(c.len as usize <= CHUNK_BYTES_MAX);
            assert!(c.len > 0);
            if i + 1 < chunks.len() {
                assert!(
                    c.len as usize >= CHUNK_BYTES_MIN,
                    "only the last chunk may be short"
                );
            }
            let s = &bytes[c.offset as usize..c.end() as usize];
            assert!(c.verify(s));
            at = c.end();
        }
        assert_eq!(at, bytes.len() as u64);
    }

    fn changed(old: &[ChunkRef], new: &[ChunkRef]) -> usize {
        let have: HashSet<_> = old.iter().map(|c| c.hash).collect();
        new.iter().filter(|c| !have.contains(&c.hash)).count()
    }

    #[test]
    fn empty_input_has_no_chunks() {
        assert!(chunk_bytes(&[]).is_empty());
    }

    #[test]
    fn matches_fastcdc_over_the_whole_buffer() {
        let bytes = random_bytes(7, 3 * 1024 * 1024 + 123);
        let ours: Vec<(u64, usize)> = chunk_bytes(&bytes)
            .iter()
            .map(|c| (c.offset, c.len as usize))
            .collect();
        let theirs: Vec<(u64, usize)> = fastcdc::v2020::FastCDC::new(
            &bytes,
            CHUNK_BYTES_MIN as u32,
            CHUNK_BYTES_AVG as u32,
            CHUNK_BYTES_MAX as u32,
        )
        .map(|c| (c.offset as u64, c.length))
        .collect();
        assert_eq!(ours, theirs);
    }

    #[test]
    fn a_one_byte_insert_near_the_start_changes_few_chunks() {
        let old = random_bytes(1, 8 * 1024 * 1024);
        for pos in [0usize, 1, 1000, 70_000, 300_000] {
            let mut new = old.clone();
            new.insert(pos, 0x5a);
            let (a, b) = (chunk_bytes(&old), chunk_bytes(&new));
            assert_covers(&new, &b);
            let n = changed(&a, &b);
            assert!(n <= 3, "insert at {pos} changed {n} chunks");
        }
    }

    #[test]
    fn an_append_changes_only_the_last_chunks() {
        let old = random_bytes(2, 4 * 1024 * 1024 + 5000);
        let mut new = old.clone();
        new.extend_from_slice(&random_bytes(3, 1024 * 1024));
        let (a, b) = (chunk_bytes(&old), chunk_bytes(&new));
        // Every chunk of the old file except its last is a prefix of the new list.
        assert_eq!(a[..a.len() - 1], b[..a.len() - 1]);
        let new_bytes: u64 = {
            let have: HashSet<_> = a.iter().map(|c| c.hash).collect();
            b.iter()
                .filter(|c| !have.contains(&c.hash))
                .map(|c| u64::from(c.len))
                .sum()
        };
        assert!(new_bytes <= 1024 * 1024 + CHUNK_BYTES_MAX as u64);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        #[test]
        fn chunks_cover_the_input_exactly_however_it_is_fed(
            seed in any::<u64>(),
            len in 0usize..1_200_000,
            pieces in proptest::collection::vec(1usize..300_000, 1..8),
        ) {
            let bytes = random_bytes(seed, len);
            let whole = chunk_bytes(&bytes);
            assert_covers(&bytes, &whole);
            let mut chunker = Chunker::new();
            let mut fed = Vec::new();
            let mut at = 0;
            let mut i = 0;
            while at < bytes.len() {
                let n = pieces[i % pieces.len()].min(bytes.len() - at);
                fed.extend(chunker.push(&bytes[at..at + n]));
                at += n;
                i += 1;
            }
            fed.extend(chunker.finish());
            prop_assert_eq!(&fed, &whole);
            // The rest handed over at once, after a first piece or not.
            let first = pieces[0].min(bytes.len());
            let mut chunker = Chunker::new();
            let mut fed = chunker.push(&bytes[..first]);
            fed.extend(chunker.push_last(&bytes[first..]));
            prop_assert_eq!(&fed, &whole);
        }
    }
}
