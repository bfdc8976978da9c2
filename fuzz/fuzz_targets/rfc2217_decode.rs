//! Arbitrary bytes from a serial client or device server must never panic
//! the RFC 2217 decoder nor grow its buffer past the cap.
//!
//! The input is decoded whole and split at a point chosen by its first byte;
//! both must give the same items, and every well-formed item must encode back
//! to bytes that decode to itself.
//!
//! Run: `cd fuzz && cargo +nightly fuzz run rfc2217_decode`
#![no_main]

use libfuzzer_sys::fuzz_target;
use tandem_serial_gw::rfc2217::{encode_item, Decoder, Item};

const CAP: usize = 64;

fn decode(chunks: &[&[u8]]) -> Vec<Item> {
    let mut decoder = Decoder::new(CAP);
    let mut out = Vec::new();
    for c in chunks {
        decoder.decode(c, &mut out);
        assert!(decoder.buffered() <= CAP);
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let whole = decode(&[data]);
    let cut = data.first().map_or(0, |&b| b as usize % (data.len() + 1));
    let split = decode(&[&data[..cut], &data[cut..]]);
    assert_eq!(whole, split);
    for item in whole.iter().filter(|i| !matches!(i, Item::Malformed(_))) {
        let mut wire = Vec::new();
        encode_item(item, &mut wire);
        assert_eq!(&decode(&[&wire]), std::slice::from_ref(item));
    }
});
