//! Properties of the WAL reader and the rolling database checksum: arbitrary
//! bytes never panic, generated logs yield exactly the committed transactions
//! before the first bad frame however the bytes are chunked, and a checksum
//! kept per transaction equals the one computed from scratch.

use proptest::prelude::*;
use tandem_sync::dbsum::{DbSum, PageHashes};
use tandem_sync::wal::{
    Salts, Transaction, WalChecksum, WalFrame, WalHeader, WalReader, FRAME_HEADER_BYTES,
    WAL_HEADER_BYTES,
};

fn header(page_size: u32, big_endian: bool, salts: (u32, u32)) -> WalHeader {
    let draft = WalHeader {
        big_endian_checksums: big_endian,
        page_size,
        checkpoint_seq: 0,
        salts: Salts {
            salt1: salts.0,
            salt2: salts.1,
        },
        checksum: WalChecksum::default(),
    };
    WalHeader::parse(&draft.encode()).expect("encoded headers parse")
}

/// A frame to write: page number, commit size (0 = not a commit), fill seed.
type FrameSpec = (u32, u32, u8);

fn page(pgno: u32, seed: u8, size: usize) -> Vec<u8> {
    (0..size)
        .map(|i| seed.wrapping_mul(31).wrapping_add(i as u8) ^ pgno as u8)
        .collect()
}

fn build(h: &WalHeader, frames: &[FrameSpec]) -> Vec<u8> {
    let mut out = h.encode().to_vec();
    let mut c = h.checksum;
    for &(pgno, commit, seed) in frames {
        let p = page(pgno, seed, h.page_size as usize);
        let (fh, next) = WalFrame::encode(pgno, commit, h, c, &p);
        c = next;
        out.extend_from_slice(&fh);
        out.extend_from_slice(&p);
    }
    out
}

/// The transactions a correct reader must yield from the first `valid` frames.
fn model(h: &WalHeader, frames: &[FrameSpec], valid: usize) -> Vec<Transaction> {
    let mut out = Vec::new();
    let mut pending = std::collections::BTreeMap::new();
    let frame_bytes = (FRAME_HEADER_BYTES + h.page_size as usize) as u64;
    for (i, &(pgno, commit, seed)) in frames.iter().take(valid).enumerate() {
        pending.insert(pgno, page(pgno, seed, h.page_size as usize));
        if commit != 0 {
            out.push(Transaction {
                pages: std::mem::take(&mut pending)
                    .into_iter()
                    .filter(|(p, _)| *p <= commit)
                    .collect(),
                db_pages_after_commit: commit,
                end_offset: WAL_HEADER_BYTES as u64 + (i as u64 + 1) * frame_bytes,
                salts: h.salts,
            });
        }
    }
    out
}

fn frames() -> impl Strategy<Value = Vec<FrameSpec>> {
    prop::collection::vec(
        (1u32..12, any::<u8>(), prop::bool::weighted(0.3)).prop_map(|(pgno, seed, commit)| {
            (pgno, if commit { 1 + (seed as u32 % 12) } else { 0 }, seed)
        }),
        0..24,
    )
}

fn page_size() -> impl Strategy<Value = u32> {
    prop_oneof![Just(512u32), Just(1024), Just(4096)]
}

/// Feeds `file` the way the primary does: the header and then the bytes from
/// the reader's offset, as the file grows by `step` bytes at a time.
fn feed_growing(file: &[u8], step: usize) -> Vec<Transaction> {
    let mut r = WalReader::new();
    let mut out = Vec::new();
    let mut len = 0;
    while len < file.len() {
        len = (len + step).min(file.len());
        let visible = &file[..len];
        let at = r.next_offset() as usize;
        if at == 0 || at > visible.len() {
            out.extend(r.feed(0, visible).expect("valid header"));
        } else {
            out.extend(r.feed(0, &visible[..WAL_HEADER_BYTES]).expect("header"));
            out.extend(r.feed(at as u64, &visible[at..]).expect("contiguous"));
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..4000),
                                   cut in any::<usize>()) {
        let mut r = WalReader::new();
        let _ = r.feed(0, &bytes);
        let cut = cut % (bytes.len() + 1);
        let _ = r.feed(r.next_offset(), &bytes[cut..]);
        let _ = r.feed(0, &bytes[..cut]);
    }

    #[test]
    fn garbage_after_a_valid_header_never_panics(ps in page_size(), be in any::<bool>(),
                                                 tail in prop::collection::vec(any::<u8>(), 0..3000)) {
        let h = header(ps, be, (1, 2));
        let mut bytes = h.encode().to_vec();
        bytes.extend_from_slice(&tail);
        let mut r = WalReader::new();
        let txs = r.feed(0, &bytes).expect("header is valid");
        prop_assert!(txs.is_empty() || r.next_offset() > WAL_HEADER_BYTES as u64);
    }

    #[test]
    fn a_valid_log_yields_its_committed_transactions(ps in page_size(), be in any::<bool>(),
                                                     salts in any::<(u32, u32)>(), fs in frames()) {
        let h = header(ps, be, salts);
        let file = build(&h, &fs);
        let expected = model(&h, &fs, fs.len());
        let mut r = WalReader::new();
        prop_assert_eq!(r.feed(0, &file).expect("valid"), expected.clone());
        let end = expected.last().map_or(WAL_HEADER_BYTES as u64, |t| t.end_offset);
        prop_assert_eq!(r.next_offset(), end);
    }

    #[test]
    fn chunking_does_not_change_what_is_read(ps in page_size(), fs in frames(), step in 1usize..3000) {
        let h = header(ps, false, (7, 9));
        let file = build(&h, &fs);
        prop_assert_eq!(feed_growing(&file, step), model(&h, &fs, fs.len()));
    }

    #[test]
    fn a_damaged_frame_ends_the_valid_log(ps in page_size(), be in any::<bool>(), fs in frames(),
                                         victim in any::<usize>(), byte in any::<usize>(), flip in 1u8..) {
        prop_assume!(!fs.is_empty());
        let h = header(ps, be, (3, 4));
        let mut file = build(&h, &fs);
        let victim = victim % fs.len();
        let frame_bytes = FRAME_HEADER_BYTES + ps as usize;
        // Any byte of the frame but the commit size, which the checksum
        // covers too but whose change could also turn a frame into a commit.
        let mut at = byte % frame_bytes;
        if (4..8).contains(&at) { at = 0; }
        file[WAL_HEADER_BYTES + victim * frame_bytes + at] ^= flip;
        let got = WalReader::new().feed(0, &file).expect("header intact");
        prop_assert_eq!(got, model(&h, &fs, victim));
    }

    #[test]
    fn a_restarted_log_is_followed(fs1 in frames(), fs2 in frames()) {
        let h1 = header(512, false, (10, 20));
        let h2 = header(512, false, (11, 99));
        let first = build(&h1, &fs1);
        let mut second = build(&h2, &fs2);
        if second.len() < first.len() {
            second.extend_from_slice(&first[second.len()..]);
        }
        let mut r = WalReader::new();
        prop_assert_eq!(r.feed(0, &first).expect("valid"), model(&h1, &fs1, fs1.len()));
        prop_assert_eq!(r.feed(0, &second).expect("valid"), model(&h2, &fs2, fs2.len()));
    }

    #[test]
    fn an_undone_apply_leaves_the_table_as_it_was(fs in frames(), keep in 0usize..8) {
        let h = header(512, false, (1, 1));
        let txs = model(&h, &fs, fs.len());
        let mut table = PageHashes::new(512);
        // Some transactions kept, then the rest applied and undone, newest
        // first (as a refused batch is).
        let keep = keep.min(txs.len());
        for tx in &txs[..keep] {
            table.apply(tx);
        }
        let before = table.clone();
        let mut undos = Vec::new();
        for tx in &txs[keep..] {
            let predicted = table.sum_after(tx);
            undos.push(table.apply_undoable(tx));
            prop_assert_eq!(table.sum(), predicted);
        }
        for undo in undos.into_iter().rev() {
            table.undo(undo);
        }
        prop_assert_eq!(table, before);
    }

    #[test]
    fn the_rolling_sum_equals_the_sum_from_scratch(fs in frames()) {
        let h = header(512, false, (1, 1));
        let txs = model(&h, &fs, fs.len());
        let mut table = PageHashes::new(512);
        let mut db: Vec<Vec<u8>> = Vec::new();
        for tx in &txs {
            let predicted = table.sum_after(tx);
            let sum = table.apply(tx);
            prop_assert_eq!(predicted, sum);
            for (pgno, p) in &tx.pages {
                let i = *pgno as usize - 1;
                if db.len() <= i { db.resize(i + 1, vec![0; 512]); }
                db[i] = p.clone();
            }
            db.resize(tx.db_pages_after_commit as usize, vec![0; 512]);
            let scratch = DbSum::of_pages(db.iter().enumerate().map(|(i, p)| (i as u32 + 1, &p[..])));
            prop_assert_eq!(sum, scratch);
            prop_assert_eq!(table.page_count() as usize, db.len());
        }
    }

    #[test]
    fn dbsum_apply_equals_from_scratch(pages in prop::collection::vec(prop::collection::vec(any::<u8>(), 16), 1..10),
                                       changes in prop::collection::vec((any::<prop::sample::Index>(), prop::collection::vec(any::<u8>(), 16)), 0..10)) {
        let mut db = pages.clone();
        let mut sum = DbSum::of_pages(db.iter().enumerate().map(|(i, p)| (i as u32 + 1, &p[..])));
        for (index, new) in changes {
            let i = index.index(db.len());
            sum.apply(i as u32 + 1, Some(&db[i]), Some(&new));
            db[i] = new;
        }
        let last = db.len() as u32;
        sum.apply(last, db.last().map(|p| &p[..]), None);
        db.pop();
        prop_assert_eq!(sum, DbSum::of_pages(db.iter().enumerate().map(|(i, p)| (i as u32 + 1, &p[..]))));
    }
}
