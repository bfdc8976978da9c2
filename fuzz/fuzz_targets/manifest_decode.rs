//! Arbitrary bytes from the peer must never panic the manifest decoder, and
//! whatever it accepts must be a manifest that encodes back to itself and
//! diffs against the empty manifest without panicking.
//!
//! Run: `cd fuzz && cargo +nightly fuzz run manifest_decode`
#![no_main]

use libfuzzer_sys::fuzz_target;
use tandem_sync::manifest::{diff, Manifest};

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = Manifest::decode(data) {
        let again = Manifest::decode(&m.encode()).expect("a decoded manifest re-encodes");
        assert_eq!(again, m);
        assert_eq!(again.root(), m.root());
        let empty = Manifest::new();
        let mut built = empty.clone();
        for c in diff(&empty, &m) {
            built.apply(&c);
        }
        assert_eq!(built, m);
    }
});
