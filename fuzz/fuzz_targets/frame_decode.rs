//! Arbitrary bytes from the network must never panic the frame layer.
//!
//! The input goes, whole and in chunks, to the datagram decoder and the
//! stream reader (with resync, as a serial caller does); every frame that
//! comes out is offered to established sessions and to handshakes in each of
//! their waiting states. The input's bytes are also wrapped as the body of
//! each frame kind behind a valid header, so the handshake body parsers see
//! them even when the fuzzer has not found the magic yet.
//!
//! Run: `cd fuzz && cargo +nightly fuzz run frame_decode`
#![no_main]

use libfuzzer_sys::fuzz_target;
use tandem_sync::auth::{Handshake, HandshakeStep, PairKey, Session};
use tandem_sync::wire::{decode_datagram, Frame, FrameKind, FrameReader};

const MAX: usize = 64 * 1024;

fn wire_frame(bytes: &[u8]) -> Frame {
    decode_datagram(bytes, MAX).expect("frames made here are well-formed")
}

/// A deterministic pair of sessions and a responder waiting for a Proof.
fn fixtures() -> (Session, Session, Handshake) {
    let key = PairKey::from_bytes([0x5a; 32]);
    let (mut i, hello) = Handshake::initiate(&key, "fuzz", "a", [1; 32], MAX);
    let mut r = Handshake::respond(&key, "fuzz", "b", [2; 32], MAX);
    let HandshakeStep::Send(welcome) = r.receive(&wire_frame(&hello)).unwrap() else {
        unreachable!()
    };
    let awaiting_proof = {
        let mut r2 = Handshake::respond(&key, "fuzz", "b", [2; 32], MAX);
        r2.receive(&wire_frame(&hello)).unwrap();
        r2
    };
    let HandshakeStep::Done {
        session: si,
        send: Some(proof),
    } = i.receive(&wire_frame(&welcome)).unwrap()
    else {
        unreachable!()
    };
    let HandshakeStep::Done { session: sr, .. } = r.receive(&wire_frame(&proof)).unwrap() else {
        unreachable!()
    };
    (si, sr, awaiting_proof)
}

fn offer(frame: &Frame) {
    let key = PairKey::from_bytes([0x5a; 32]);
    let (mut si, mut sr, mut awaiting_proof) = fixtures();
    let _ = si.open(frame);
    let _ = sr.open(frame);
    let _ = si.open_with_attachment(frame);
    let (mut initiator, _) = Handshake::initiate(&key, "fuzz", "a", [1; 32], MAX);
    let _ = initiator.receive(frame);
    let mut responder = Handshake::respond(&key, "fuzz", "b", [2; 32], MAX);
    let _ = responder.receive(frame);
    let _ = awaiting_proof.receive(frame);
}

fuzz_target!(|data: &[u8]| {
    // Datagram form.
    if let Ok(frame) = decode_datagram(data, MAX) {
        offer(&frame);
    }
    // Stream form, split at a point chosen by the first byte.
    let cut = data.first().map_or(0, |&b| b as usize % (data.len() + 1));
    let mut reader = FrameReader::new(MAX);
    for chunk in [&data[..cut], &data[cut..]] {
        reader.push(chunk);
        assert!(reader.buffered() <= reader.capacity());
        for _ in 0..data.len() + 2 {
            match reader.next_frame() {
                Ok(Some(frame)) => offer(&frame),
                Ok(None) => break,
                Err(_) => reader.resync(),
            }
        }
    }
    // Raw bytes as bodies of every kind, behind a valid header.
    for kind in [
        FrameKind::Hello,
        FrameKind::Welcome,
        FrameKind::Proof,
        FrameKind::Data,
        FrameKind::Attached,
    ] {
        offer(&Frame {
            kind,
            seq: 0,
            body: data.to_vec().into(),
            mac: [0; 16],
        });
    }
});
