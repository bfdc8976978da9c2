//! Arbitrary bytes from the peer must never panic the file-set messages:
//! decoding, validation, rebuilding a change from a chunk-list delta against
//! the copy's manifest, and rebuilding a chunk from a chunk delta.
//!
//! The input is decoded as a whole `PeerMessage`, and also as a bare
//! `WireChange`, `ChunkListDelta` and `ChunkDelta`, so the delta decoders
//! are reached before the fuzzer has found the message layout. Whatever
//! decodes and validates is resolved against a manifest that holds a file
//! (and the file's first chunk is offered as every delta's base); a change
//! that resolves must validate, and a chunk that is rebuilt must match its
//! hash.
//!
//! Run: `cd fuzz && cargo +nightly fuzz run fs_message_decode`
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;
use tandem_sync::chunk::chunk_bytes;
use tandem_sync::delta::{ChunkDelta, ChunkListDelta};
use tandem_sync::filemsg::{validate_change, FsMessage, WireChange};
use tandem_sync::fileset::SafePath;
use tandem_sync::manifest::{Entry, EntryKind, Manifest};
use tandem_sync::message::{decode, decode_attached, PeerMessage};

struct Held {
    manifest: Manifest,
    base: Vec<u8>,
}

fn held() -> &'static Held {
    static HELD: OnceLock<Held> = OnceLock::new();
    HELD.get_or_init(|| {
        let bytes: Vec<u8> = (0..300_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let chunks = chunk_bytes(&bytes);
        let base = bytes[..chunks[0].len as usize].to_vec();
        let mut manifest = Manifest::new();
        let path = SafePath::parse("f").expect("a valid path");
        manifest.insert(
            path,
            Entry {
                kind: EntryKind::file(chunks),
                mode: 0o644,
                mtime_ns: 1,
                owner: None,
            },
        );
        Held { manifest, base }
    })
}

fn resolve(change: &WireChange) {
    if change.validate().is_ok() {
        if let Ok(c) = change.resolve(&held().manifest) {
            validate_change(&c).expect("a resolved change is valid");
        }
    }
}

fn rebuild(d: &ChunkDelta) {
    if d.check_shape().is_ok() {
        if let Ok(bytes) = d.rebuild(&held().base) {
            assert_eq!(*blake3::hash(&bytes).as_bytes(), d.hash);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(PeerMessage::Fs(m)) = decode::<PeerMessage>("peer message", data) {
        if m.validate().is_ok() {
            if let FsMessage::Change { change, deltas, .. } = *m {
                resolve(&change);
                deltas.iter().for_each(rebuild);
            }
        }
    }
    // The same bytes cut into a payload and an attachment.
    let cut = data.first().map_or(0, |&b| b as usize % (data.len() + 1));
    if let Ok(PeerMessage::Fs(m)) =
        decode_attached(&data[..cut], &bytes::Bytes::copy_from_slice(&data[cut..]))
    {
        let _ = m.validate();
    }
    if let Ok(change) = decode::<WireChange>("wire change", data) {
        resolve(&change);
    }
    if let Ok(list) = decode::<ChunkListDelta>("chunk list delta", data) {
        if let EntryKind::File { chunks, .. } =
            &held().manifest.iter().next().expect("one entry").1.kind
        {
            if let Ok(new) = list.apply(chunks) {
                assert!(new.iter().all(|c| c.len > 0));
            }
        }
    }
    if let Ok(d) = decode::<ChunkDelta>("chunk delta", data) {
        rebuild(&d);
    }
});
