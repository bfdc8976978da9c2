//! Properties of the frame layer and the authenticated sessions: round trips,
//! arbitrary chunking, no panics on garbage, tamper / replay / reflection
//! refusal, and the exact error sentences that end up in logs.

use bytes::Bytes;
use expect_test::expect;
use proptest::prelude::*;
use tandem_sync::auth::{AuthError, Handshake, HandshakeStep, KeyError, PairKey, Session};
use tandem_sync::wire::{
    self, body_buffer, decode_datagram, encode, Frame, FrameKind, FrameReader, WireError,
    HEADER_BYTES, MAC_BYTES, PROTOCOL_VERSION,
};

const MAX: usize = 4096;

fn kind() -> impl Strategy<Value = FrameKind> {
    prop_oneof![
        Just(FrameKind::Hello),
        Just(FrameKind::Welcome),
        Just(FrameKind::Proof),
        Just(FrameKind::Data),
        Just(FrameKind::Attached),
    ]
}

fn any_frame() -> impl Strategy<Value = Frame> {
    (
        kind(),
        any::<u64>(),
        prop::collection::vec(any::<u8>(), 0..300),
        any::<[u8; 16]>(),
    )
        .prop_map(|(kind, seq, body, mac)| Frame {
            kind,
            seq,
            body: body.into(),
            mac,
        })
}

fn frame(bytes: &[u8]) -> Frame {
    decode_datagram(bytes, MAX).expect("well-formed frame")
}

/// Run a full in-memory handshake; returns (initiator session, responder session).
fn handshake(key_i: &PairKey, key_r: &PairKey, seed: u8) -> Result<(Session, Session), AuthError> {
    let (mut i, hello) = Handshake::initiate(key_i, "pair1", "a", [seed; 32], MAX);
    let mut r = Handshake::respond(key_r, "pair1", "b", [seed.wrapping_add(1); 32], MAX);
    let HandshakeStep::Send(welcome) = r.receive(&frame(&hello))? else {
        panic!("responder finished on a Hello");
    };
    let HandshakeStep::Done {
        session: si,
        send: Some(proof),
    } = i.receive(&frame(&welcome))?
    else {
        panic!("initiator did not finish on a Welcome");
    };
    let HandshakeStep::Done {
        session: sr,
        send: None,
    } = r.receive(&frame(&proof))?
    else {
        panic!("responder did not finish on a Proof");
    };
    Ok((si, sr))
}

fn sessions() -> (Session, Session) {
    let k = PairKey::from_bytes([7; 32]);
    handshake(&k, &k, 1).unwrap()
}

/// Drain a reader, resyncing after errors; never loops forever.
fn drain(r: &mut FrameReader, out: &mut Vec<Frame>, resync: bool) -> Option<WireError> {
    for _ in 0..10_000 {
        match r.next_frame() {
            Ok(Some(f)) => out.push(f),
            Ok(None) => return None,
            Err(_) if resync => r.resync(),
            Err(e) => return Some(e),
        }
    }
    panic!("reader did not settle");
}

proptest! {
    #[test]
    fn datagram_round_trip(f in any_frame()) {
        let bytes = encode(f.kind, f.seq, &f.body, f.mac);
        prop_assert_eq!(bytes.len(), HEADER_BYTES + f.body.len() + MAC_BYTES);
        prop_assert_eq!(decode_datagram(&bytes, MAX), Ok(f.clone()));
        prop_assert_eq!(f.to_bytes(), bytes);
    }

    #[test]
    fn stream_yields_exactly_the_frames_in_any_chunking(
        frames in prop::collection::vec(any_frame(), 0..8),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..20),
    ) {
        let stream: Vec<u8> = frames.iter().flat_map(Frame::to_bytes).collect();
        let mut points: Vec<usize> = cuts.iter().map(|c| c.index(stream.len() + 1)).collect();
        points.push(0);
        points.push(stream.len());
        points.sort_unstable();
        let mut r = FrameReader::new(MAX);
        let mut got = Vec::new();
        for w in points.windows(2) {
            r.push(&stream[w[0]..w[1]]);
            prop_assert!(r.buffered() <= r.capacity());
            prop_assert_eq!(drain(&mut r, &mut got, false), None);
        }
        prop_assert_eq!(got, frames);
        prop_assert_eq!(r.buffered(), 0);
    }

    #[test]
    fn garbage_never_panics(
        bytes in prop::collection::vec(any::<u8>(), 0..600),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..6),
        max in 0usize..700,
    ) {
        let _ = decode_datagram(&bytes, max);
        let mut points: Vec<usize> = cuts.iter().map(|c| c.index(bytes.len() + 1)).collect();
        points.push(0);
        points.push(bytes.len());
        points.sort_unstable();
        let mut r = FrameReader::new(max);
        let mut got = Vec::new();
        for w in points.windows(2) {
            r.push(&bytes[w[0]..w[1]]);
            prop_assert!(r.buffered() <= r.capacity());
            drain(&mut r, &mut got, true);
            prop_assert!(r.buffered() <= r.capacity());
        }
    }

    #[test]
    fn garbage_frames_are_refused_by_sessions_and_handshakes(f in any_frame()) {
        let (mut si, mut sr) = sessions();
        prop_assert!(si.open(&f).is_err());
        prop_assert!(sr.open(&f).is_err());
        let k = PairKey::from_bytes([7; 32]);
        let (mut i, hello) = Handshake::initiate(&k, "pair1", "a", [1; 32], MAX);
        let mut r = Handshake::respond(&k, "pair1", "b", [2; 32], MAX);
        // Whatever comes back, no panic; and garbage never finishes a handshake.
        let done = matches!(i.receive(&f), Ok(HandshakeStep::Done { .. }));
        prop_assert!(!done);
        let done = matches!(r.receive(&f), Ok(HandshakeStep::Done { .. }));
        prop_assert!(!done);
        // Also in the responder's second state.
        let mut r2 = Handshake::respond(&k, "pair1", "b", [2; 32], MAX);
        let _ = r2.receive(&frame(&hello)).unwrap();
        let done = matches!(r2.receive(&f), Ok(HandshakeStep::Done { .. }));
        prop_assert!(!done);
    }

    #[test]
    fn raw_bytes_to_open_and_receive_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        // Put arbitrary bodies behind a valid header so they reach the parsers.
        for kind in [FrameKind::Hello, FrameKind::Welcome, FrameKind::Proof, FrameKind::Data, FrameKind::Attached] {
            let f = Frame { kind, seq: 0, body: bytes.clone().into(), mac: [0; 16] };
            let (mut si, _) = sessions();
            let _ = si.open(&f);
            let _ = si.open_with_attachment(&f);
            let k = PairKey::from_bytes([7; 32]);
            let (mut i, _) = Handshake::initiate(&k, "pair1", "a", [1; 32], MAX);
            let _ = i.receive(&f);
            let mut r = Handshake::respond(&k, "pair1", "b", [2; 32], MAX);
            let _ = r.receive(&f);
        }
    }

    #[test]
    fn any_flipped_bit_is_refused(
        payload in prop::collection::vec(any::<u8>(), 0..200),
        bit in any::<prop::sample::Index>(),
    ) {
        let (mut si, mut sr) = sessions();
        let mut sealed = si.seal(&payload);
        let bit = bit.index(sealed.len() * 8);
        sealed[bit / 8] ^= 1 << (bit % 8);
        match decode_datagram(&sealed, MAX) {
            Err(_) => {}
            Ok(f) => prop_assert!(sr.open(&f).is_err(), "tampered frame opened"),
        }
    }

    /// An Attached frame: payload and attachment come back as sealed; a
    /// flipped bit in the header, the payload's length or the payload is
    /// refused; one in the attachment is not (the payload's hashes are what
    /// checks it, above this layer), and `open` takes Data frames only.
    #[test]
    fn attached_frames_authenticate_the_payload_and_carry_the_attachment(
        payload in prop::collection::vec(any::<u8>(), 0..200),
        attachment in prop::collection::vec(any::<u8>(), 0..300),
        bit in any::<prop::sample::Index>(),
    ) {
        let (mut si, mut sr) = sessions();
        let seal = |si: &mut Session| {
            let mut head = body_buffer(4 + payload.len());
            head.extend_from_slice(&[0; 4]);
            head.extend_from_slice(&payload);
            // In parts, as the pieces of file chunks go.
            let cut = attachment.len() / 3;
            let parts = vec![
                Bytes::copy_from_slice(&attachment[..cut]),
                Bytes::copy_from_slice(&attachment[cut..]),
            ];
            si.seal_attached(head, parts).to_vec()
        };
        let sealed = seal(&mut si);
        let f = frame(&sealed);
        prop_assert_eq!(f.kind, FrameKind::Attached);
        prop_assert_eq!(sr.open(&f), Err(AuthError::UnexpectedFrame { expected: "Data", got: FrameKind::Attached }));
        let (p, a) = sr.open_with_attachment(&f).unwrap();
        prop_assert_eq!(&p[..], &payload[..]);
        prop_assert_eq!(&a[..], &attachment[..]);
        // A Data frame opens with an empty attachment.
        let d = frame(&si.seal(&payload));
        let (p, a) = sr.open_with_attachment(&d).unwrap();
        prop_assert_eq!(&p[..], &payload[..]);
        prop_assert!(a.is_empty());
        // Tampering.
        let mut tampered = seal(&mut si);
        let bit = bit.index(tampered.len() * 8);
        tampered[bit / 8] ^= 1 << (bit % 8);
        let attachment_at = HEADER_BYTES + 4 + payload.len();
        let mac_at = tampered.len() - MAC_BYTES;
        match decode_datagram(&tampered, MAX) {
            Err(_) => {}
            Ok(f) => {
                let opened = sr.open_with_attachment(&f);
                if (attachment_at..mac_at).contains(&(bit / 8)) {
                    let (p, a) = opened.unwrap();
                    prop_assert_eq!(&p[..], &payload[..]);
                    prop_assert_ne!(&a[..], &attachment[..]);
                } else {
                    prop_assert!(opened.is_err(), "tampered frame opened");
                }
            }
        }
    }

    #[test]
    fn sessions_carry_data_both_ways_and_refuse_replay_and_reflection(
        payloads in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..100), 1..6),
    ) {
        let (mut si, mut sr) = sessions();
        let mut last = None;
        for p in &payloads {
            let sealed = frame(&si.seal(p));
            prop_assert_eq!(&sr.open(&sealed).unwrap(), p);
            // Reflection: the sender cannot open its own frame.
            prop_assert_eq!(si.open(&sealed), Err(AuthError::BadMac));
            let back = frame(&sr.seal(p));
            prop_assert_eq!(&si.open(&back).unwrap(), p);
            prop_assert_eq!(sr.open(&back), Err(AuthError::BadMac));
            last = Some(sealed);
        }
        let last = last.unwrap();
        let n = payloads.len() as u64;
        prop_assert_eq!(sr.open(&last), Err(AuthError::Replay { seq: n, last: n }));
    }

    #[test]
    fn other_versions_are_refused(version in any::<u8>().prop_filter("not ours", |v| *v != PROTOCOL_VERSION)) {
        let mut bytes = encode(FrameKind::Data, 1, b"x", [0; 16]);
        bytes[2] = version;
        let want = WireError::VersionMismatch { theirs: version, ours: PROTOCOL_VERSION };
        prop_assert_eq!(decode_datagram(&bytes, MAX), Err(want.clone()));
        let mut r = FrameReader::new(MAX);
        r.push(&bytes[..3]);
        prop_assert_eq!(r.next_frame(), Err(want));
    }

    #[test]
    fn over_limit_length_is_refused_from_the_header_alone(
        max in 0usize..1000,
        extra in 1u32..100_000,
    ) {
        let len = max as u32 + extra;
        let header = wire::header(FrameKind::Data, 1, len as usize);
        let want = WireError::TooLarge { len: u64::from(len), max };
        prop_assert_eq!(decode_datagram(&header, max), Err(want.clone()));
        let mut r = FrameReader::new(max);
        r.push(&header);
        prop_assert_eq!(r.next_frame(), Err(want));
        // The body that follows is not accumulated.
        for _ in 0..10 {
            r.push(&vec![0xAA; 1000]);
            prop_assert!(r.buffered() <= r.capacity());
        }
    }
}

#[test]
fn stream_reader_holds_at_most_one_frame_even_for_a_huge_push() {
    let frames: Vec<u8> = (0..50)
        .flat_map(|i| encode(FrameKind::Data, i, &[i as u8; 100], [0; 16]))
        .collect();
    let mut r = FrameReader::new(100);
    r.push(&frames);
    assert_eq!(r.buffered(), 0);
    let mut got = Vec::new();
    assert_eq!(drain(&mut r, &mut got, false), None);
    assert_eq!(got.len(), 50);
}

/// The header of an Attached frame is under its MAC: relabelled as Data
/// (or a Data frame as Attached), or with its attachment grown or cut and
/// the length fixed up to match, a frame is refused.
#[test]
fn an_attached_frames_kind_and_length_are_authenticated() {
    let (mut si, mut sr) = sessions();
    let mut head = body_buffer(4 + 3);
    head.extend_from_slice(&[0; 4]);
    head.extend_from_slice(b"abc");
    let sealed = si
        .seal_attached(head, vec![Bytes::from_static(b"12345")])
        .to_vec();
    let relabel = |bytes: &[u8], kind: FrameKind| {
        let mut b = bytes.to_vec();
        b[3] = kind.to_byte();
        frame(&b)
    };
    assert_eq!(
        sr.open_with_attachment(&relabel(&sealed, FrameKind::Data)),
        Err(AuthError::BadMac)
    );
    let data = si.seal(b"\0\0\0\x01x");
    assert_eq!(
        sr.open_with_attachment(&relabel(&data, FrameKind::Attached)),
        Err(AuthError::BadMac)
    );
    for attachment in [&b"123456"[..], b"1234"] {
        let body_len = 4 + 3 + attachment.len();
        let mut b = sealed[..HEADER_BYTES + 7].to_vec();
        b[4..8].copy_from_slice(&(body_len as u32).to_be_bytes());
        b.extend_from_slice(attachment);
        b.extend_from_slice(&sealed[sealed.len() - MAC_BYTES..]);
        assert_eq!(sr.open_with_attachment(&frame(&b)), Err(AuthError::BadMac));
    }
    // The frame as sealed opens (and only once).
    let (p, a) = sr.open_with_attachment(&frame(&sealed)).unwrap();
    assert_eq!((&p[..], &a[..]), (&b"abc"[..], &b"12345"[..]));
    assert!(matches!(
        sr.open_with_attachment(&frame(&sealed)),
        Err(AuthError::Replay { .. })
    ));
}

#[test]
fn an_ordered_session_refuses_a_gap_that_a_datagram_session_accepts() {
    // A datagram session: a lost frame is just lost.
    let (mut tx, mut rx) = sessions();
    let first = frame(&tx.seal(b"one"));
    let _lost = tx.seal(b"two");
    let third = frame(&tx.seal(b"three"));
    assert_eq!(&rx.open(&first).unwrap()[..], b"one");
    assert_eq!(&rx.open(&third).unwrap()[..], b"three");

    // An ordered one (TCP): a frame cut out of the stream is found at the
    // next one, and nothing after the gap is accepted.
    let (mut tx, mut rx) = sessions();
    rx.require_in_order();
    let first = frame(&tx.seal(b"one"));
    let _cut_out = tx.seal(b"two");
    let third = frame(&tx.seal(b"three"));
    let fourth = frame(&tx.seal(b"four"));
    assert_eq!(&rx.open(&first).unwrap()[..], b"one");
    assert_eq!(
        rx.open(&third),
        Err(AuthError::Gap {
            seq: 3,
            expected: 2
        })
    );
    assert_eq!(
        rx.open(&fourth),
        Err(AuthError::Gap {
            seq: 4,
            expected: 2
        })
    );
    assert_eq!(rx.last_seq(), 1);
}

#[test]
fn handshake_succeeds_both_ways() {
    let k = PairKey::from_bytes([42; 32]);
    let (mut si, mut sr) = handshake(&k, &k, 9).unwrap();
    assert_eq!(si.peer(), "b");
    assert_eq!(sr.peer(), "a");
    let m = frame(&si.seal(b"ping"));
    assert_eq!(m.seq, 1);
    assert_eq!(&sr.open(&m).unwrap()[..], b"ping");
    let m = frame(&sr.seal(b"pong"));
    assert_eq!(&si.open(&m).unwrap()[..], b"pong");
    // Different nonces give different session keys.
    let (_, mut sr2) = handshake(&k, &k, 10).unwrap();
    assert_eq!(sr2.open(&frame(&si.seal(b"x"))), Err(AuthError::BadMac));
}

#[test]
fn different_keys_fail_with_wrong_key_on_both_sides() {
    let ki = PairKey::from_bytes([1; 32]);
    let kr = PairKey::from_bytes([2; 32]);
    let (mut i, hello) = Handshake::initiate(&ki, "pair1", "a", [1; 32], MAX);
    let mut r = Handshake::respond(&kr, "pair1", "b", [2; 32], MAX);
    // The responder still answers, so the initiator can tell its operator.
    let HandshakeStep::Send(welcome) = r.receive(&frame(&hello)).unwrap() else {
        panic!()
    };
    assert_eq!(
        r.suspected_failure(),
        Some(&AuthError::WrongKey { peer: "a".into() })
    );
    assert_eq!(
        i.receive(&frame(&welcome)).unwrap_err(),
        AuthError::WrongKey { peer: "b".into() }
    );
    assert!(!i.is_finished());
    // A Proof forged without the key (here: made with the initiator's key
    // over a transcript it cannot match) never finishes the responder.
    let k2 = PairKey::from_bytes([1; 32]);
    let (mut i2, hello2) = Handshake::initiate(&k2, "pair1", "a", [1; 32], MAX);
    let mut r_ok = Handshake::respond(&k2, "pair1", "b", [2; 32], MAX);
    let HandshakeStep::Send(w2) = r_ok.receive(&frame(&hello2)).unwrap() else {
        panic!()
    };
    let HandshakeStep::Done {
        send: Some(proof), ..
    } = i2.receive(&frame(&w2)).unwrap()
    else {
        panic!()
    };
    assert_eq!(
        r.receive(&frame(&proof)).unwrap_err(),
        AuthError::WrongKey { peer: "a".into() }
    );
    assert!(!r.is_finished());
    assert!(handshake(&ki, &kr, 3).is_err());
}

#[test]
fn pair_mismatch_is_detected() {
    let k = PairKey::from_bytes([5; 32]);
    let (_, hello) = Handshake::initiate(&k, "left", "a", [1; 32], MAX);
    let mut r = Handshake::respond(&k, "right", "b", [2; 32], MAX);
    assert_eq!(
        r.receive(&frame(&hello)).unwrap_err(),
        AuthError::PairMismatch {
            theirs: "left".into(),
            ours: "right".into()
        }
    );
    // And on the initiator's side, from a Welcome.
    let (mut i, hello) = Handshake::initiate(&k, "right", "a", [1; 32], MAX);
    let mut r = Handshake::respond(&k, "right", "b", [2; 32], MAX);
    let HandshakeStep::Send(welcome) = r.receive(&frame(&hello)).unwrap() else {
        panic!()
    };
    let (mut i_left, _) = Handshake::initiate(&k, "left", "a", [1; 32], MAX);
    assert!(matches!(
        i_left.receive(&frame(&welcome)),
        Err(AuthError::PairMismatch { .. })
    ));
    assert!(matches!(
        i.receive(&frame(&welcome)),
        Ok(HandshakeStep::Done { .. })
    ));
}

#[test]
fn handshake_frames_out_of_order_are_unexpected() {
    let k = PairKey::from_bytes([5; 32]);
    let (mut i, hello) = Handshake::initiate(&k, "p", "a", [1; 32], MAX);
    assert_eq!(
        i.receive(&frame(&hello)).unwrap_err(),
        AuthError::UnexpectedFrame {
            expected: "Welcome",
            got: FrameKind::Hello
        }
    );
    let (mut si, _) = sessions();
    assert_eq!(
        si.open(&frame(&hello)).unwrap_err(),
        AuthError::UnexpectedFrame {
            expected: "Data",
            got: FrameKind::Hello
        }
    );
}

#[test]
fn error_sentences() {
    let errors: Vec<String> = vec![
        WireError::BadMagic.to_string(),
        WireError::VersionMismatch { theirs: 2, ours: 1 }.to_string(),
        WireError::UnknownKind(9).to_string(),
        WireError::TooLarge {
            len: 20_000_000,
            max: 16_777_216,
        }
        .to_string(),
        WireError::Truncated.to_string(),
        WireError::TrailingBytes { extra: 3 }.to_string(),
        AuthError::from(WireError::BadMagic).to_string(),
        AuthError::WrongKey { peer: "b".into() }.to_string(),
        AuthError::PairMismatch {
            theirs: "left".into(),
            ours: "right".into(),
        }
        .to_string(),
        AuthError::Replay { seq: 4, last: 7 }.to_string(),
        AuthError::BadMac.to_string(),
        AuthError::UnexpectedFrame {
            expected: "Welcome",
            got: FrameKind::Hello,
        }
        .to_string(),
        AuthError::Malformed("the node name is cut short".into()).to_string(),
        KeyError::WrongLength { found: 63 }.to_string(),
        KeyError::NonHex {
            position: 10,
            found: 'g',
        }
        .to_string(),
    ];
    expect![[r#"
        received bytes that do not start with the tandem frame magic "TD" (not a tandem peer, or the byte stream lost sync)
        peer speaks tandem protocol version 2 but this node speaks version 1; run the same tandem release on both nodes
        received a frame of unknown kind 9 (corrupted frame or incompatible peer)
        peer announced a frame body of 20000000 bytes, over this node's limit of 16777216 bytes (frame_bytes_max)
        received a truncated frame: the datagram ended before its header, body and MAC were complete
        received a datagram with 3 unexpected bytes after the end of its frame
        received bytes that do not start with the tandem frame magic "TD" (not a tandem peer, or the byte stream lost sync)
        peer b failed the key check: different pair key (fingerprints differ?)
        peer belongs to pair "left" but this node belongs to pair "right"; check the pair name on both nodes
        dropped frame 4: not newer than the last accepted frame 7 (replayed or reordered)
        dropped a frame that failed its integrity check (corrupted in transit, or not sent by the paired peer)
        expected a Welcome frame but received a Hello frame
        received a malformed handshake frame: the node name is cut short
        pair key file must hold exactly 64 hex characters but holds 63
        pair key file has a non-hex character 'g' at position 10 (it must hold exactly 64 hex characters)"#]].assert_eq(&errors.join("\n"));
}
