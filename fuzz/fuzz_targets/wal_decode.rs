//! Arbitrary bytes read from a WAL file must never panic the WAL reader.
//!
//! The input is fed as a whole file, then again as the primary feeds a
//! growing file (the header, then the bytes from the reader's offset), cut at
//! a point chosen by the first byte. A second pass puts a valid header in
//! front so that the frame parser sees the input even before the fuzzer has
//! found the magic number and the header checksum.
//!
//! Run: `cd fuzz && cargo +nightly fuzz run wal_decode`
#![no_main]

use libfuzzer_sys::fuzz_target;
use tandem_sync::dbsum::PageHashes;
use tandem_sync::wal::{Salts, WalChecksum, WalHeader, WalReader, WAL_HEADER_BYTES};

fn exercise(file: &[u8], cut: usize) {
    let mut whole = WalReader::new();
    if let Ok(txs) = whole.feed(0, file) {
        let mut table = PageHashes::new(512);
        for tx in &txs {
            assert!(tx.end_offset <= file.len() as u64);
            if tx.pages.iter().all(|(_, p)| p.len() == 512) && tx.db_pages_after_commit < 4096 {
                let predicted = table.sum_after(tx);
                assert_eq!(table.apply(tx), predicted);
            }
        }
    }
    let mut growing = WalReader::new();
    for end in [cut, file.len()] {
        let visible = &file[..end];
        let at = growing.next_offset() as usize;
        if at == 0 || at > visible.len() {
            let _ = growing.feed(0, visible);
        } else {
            let _ = growing.feed(0, &visible[..WAL_HEADER_BYTES.min(visible.len())]);
            let _ = growing.feed(at as u64, &visible[at..]);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let cut = data.first().map_or(0, |&b| b as usize % (data.len() + 1));
    exercise(data, cut);
    let header = WalHeader {
        big_endian_checksums: data.first().is_some_and(|b| b & 1 == 1),
        page_size: 512,
        checkpoint_seq: 0,
        salts: Salts { salt1: 1, salt2: 2 },
        checksum: WalChecksum::default(),
    };
    let mut file = header.encode().to_vec();
    file.extend_from_slice(data);
    exercise(&file, (cut + WAL_HEADER_BYTES).min(file.len()));
});
