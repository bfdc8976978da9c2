//! One end of an authenticated link: the handshake, then a session, and a
//! new handshake when the peer restarts or the link goes quiet.
//!
//! The same logic serves datagram links (UDP), byte streams (serial, TCP):
//! callers split frames off and hand them in, and send what comes back. The
//! node listed first in the config initiates, the other responds, so there is
//! never a race between two handshakes on one link.

use std::time::{Duration, Instant};
use tandem_sync::auth::{AuthError, Handshake, HandshakeStep, PairKey, Session};
use tandem_sync::message::Unsealed;
use tandem_sync::wire::{Frame, FrameKind, SealedFrame};

pub struct Endpoint {
    key: PairKey,
    pair: String,
    me: String,
    frame_bytes_max: usize,
    initiator: bool,
    handshake: Option<(Handshake, Instant)>,
    session: Option<Session>,
    /// When the last authenticated data frame arrived.
    last_rx: Instant,
    /// The transport delivers every frame in order: sessions refuse gaps.
    in_order: bool,
}

/// What one received frame produced.
#[derive(Default)]
pub struct Received {
    /// Bytes to send back (a handshake answer).
    pub reply: Option<Vec<u8>>,
    /// An authenticated payload (a view of the frame's buffer).
    pub payload: Option<bytes::Bytes>,
    /// The payload's attachment (an Attached frame's), NOT authenticated:
    /// the payload names its pieces by hash (see `wire`).
    pub attachment: bytes::Bytes,
    /// A session was just established.
    pub established: bool,
    /// The handshake went on but the peer is likely misconfigured (its Hello
    /// failed the key check): worth a log line on this side too.
    pub suspect: Option<AuthError>,
}

impl Endpoint {
    pub fn new(
        key: PairKey,
        pair: &str,
        me: &str,
        initiator: bool,
        frame_bytes_max: usize,
    ) -> Self {
        Endpoint {
            key,
            pair: pair.to_string(),
            me: me.to_string(),
            frame_bytes_max,
            initiator,
            handshake: None,
            session: None,
            last_rx: Instant::now(),
            in_order: false,
        }
    }

    /// For a stream that loses nothing (TCP): its sessions refuse a frame
    /// that does not carry the next sequence number
    /// ([`Session::require_in_order`]).
    pub fn in_order(mut self) -> Self {
        self.in_order = true;
        self
    }

    pub fn is_established(&self) -> bool {
        self.session.is_some()
    }

    /// Called every heartbeat interval. An initiator whose session has heard
    /// nothing for `quiet` drops it and starts again: the responder may have
    /// restarted and lost its half. Returns a handshake frame to send, if any.
    pub fn on_tick(&mut self, now: Instant, quiet: Duration) -> Option<Vec<u8>> {
        if !self.initiator {
            return None;
        }
        if self.session.is_some() && now.duration_since(self.last_rx) > quiet {
            self.session = None;
        }
        if self.session.is_some() {
            return None;
        }
        match &self.handshake {
            // Resend the same Hello for a while (datagrams get lost), then
            // start over with a fresh nonce.
            Some((hs, started)) if now.duration_since(*started) < quiet => hs.retransmit(),
            _ => {
                let (hs, hello) = Handshake::initiate(
                    &self.key,
                    &self.pair,
                    &self.me,
                    nonce(),
                    self.frame_bytes_max,
                );
                self.handshake = Some((hs, now));
                Some(hello)
            }
        }
    }

    /// Seal a payload, if a session is up.
    pub fn seal(&mut self, payload: &[u8]) -> Option<Vec<u8>> {
        self.session.as_mut().map(|s| s.seal(payload))
    }

    /// Seal a Data frame encoded with `message::encode_for_frame`, in
    /// place, if a session is up.
    pub fn seal_in_place(&mut self, frame: Vec<u8>) -> Option<Vec<u8>> {
        self.session.as_mut().map(|s| s.seal_in_place(frame))
    }

    /// Seal a message encoded with `message::encode_unsealed`, in place,
    /// if a session is up.
    pub fn seal_unsealed(&mut self, frame: Unsealed) -> Option<SealedFrame> {
        let session = self.session.as_mut()?;
        Some(match frame {
            Unsealed::Data(frame) => session.seal_in_place(frame).into(),
            Unsealed::Attached { head, attachment } => session.seal_attached(head, attachment),
        })
    }

    pub fn on_frame(&mut self, now: Instant, frame: &Frame) -> Result<Received, AuthError> {
        match frame.kind {
            FrameKind::Data | FrameKind::Attached => {
                let Some(session) = self.session.as_mut() else {
                    return Ok(Received::default());
                };
                let (payload, attachment) = session.open_with_attachment(frame)?;
                self.last_rx = now;
                Ok(Received {
                    payload: Some(payload),
                    attachment,
                    ..Received::default()
                })
            }
            FrameKind::Hello if !self.initiator => {
                // A Hello starts a new handshake (the initiator restarted);
                // the old session keeps working until the new one is proven.
                let restart = match &self.handshake {
                    None => true,
                    Some((hs, _)) => hs.is_finished(),
                };
                if restart {
                    let hs = Handshake::respond(
                        &self.key,
                        &self.pair,
                        &self.me,
                        nonce(),
                        self.frame_bytes_max,
                    );
                    self.handshake = Some((hs, now));
                }
                self.step(now, frame)
            }
            FrameKind::Welcome if self.initiator => self.step(now, frame),
            FrameKind::Proof if !self.initiator => self.step(now, frame),
            // A handshake frame for the other role: stale or misdirected.
            _ => Ok(Received::default()),
        }
    }

    fn step(&mut self, now: Instant, frame: &Frame) -> Result<Received, AuthError> {
        let Some((hs, _)) = self.handshake.as_mut() else {
            return Ok(Received::default());
        };
        match hs.receive(frame)? {
            HandshakeStep::Send(bytes) => Ok(Received {
                reply: Some(bytes),
                suspect: hs.suspected_failure().cloned(),
                ..Received::default()
            }),
            HandshakeStep::Done { mut session, send } => {
                if self.in_order {
                    session.require_in_order();
                }
                self.session = Some(session);
                self.last_rx = now;
                Ok(Received {
                    reply: send,
                    established: true,
                    ..Received::default()
                })
            }
        }
    }
}

/// A fresh handshake nonce from the operating system's generator.
pub fn nonce() -> [u8; 32] {
    let mut n = [0u8; 32];
    rand::Rng::fill(&mut rand::rngs::OsRng, &mut n);
    n
}

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_sync::wire::decode_datagram;

    fn pair(key_b: [u8; 32]) -> (Endpoint, Endpoint) {
        let a = Endpoint::new(PairKey::from_bytes([1; 32]), "p", "a", true, 4096);
        let b = Endpoint::new(PairKey::from_bytes(key_b), "p", "b", false, 4096);
        (a, b)
    }

    /// Deliver `bytes` to `to`, returning its reply.
    fn deliver(to: &mut Endpoint, bytes: &[u8]) -> Result<Received, AuthError> {
        to.on_frame(Instant::now(), &decode_datagram(bytes, 8192).unwrap())
    }

    #[test]
    fn handshake_then_data_then_restart_of_the_responder() {
        let (mut a, mut b) = pair([1; 32]);
        let quiet = Duration::from_millis(300);
        let hello = a.on_tick(Instant::now(), quiet).unwrap();
        let welcome = deliver(&mut b, &hello).unwrap().reply.unwrap();
        let got = deliver(&mut a, &welcome).unwrap();
        assert!(got.established);
        assert!(deliver(&mut b, &got.reply.unwrap()).unwrap().established);
        let sealed = a.seal(b"hb").unwrap();
        assert_eq!(
            &deliver(&mut b, &sealed).unwrap().payload.unwrap()[..],
            b"hb"
        );
        // b restarts: a's data is ignored, a re-handshakes once quiet.
        let (_, mut b2) = pair([1; 32]);
        assert!(deliver(&mut b2, &a.seal(b"x").unwrap())
            .unwrap()
            .payload
            .is_none());
        let later = Instant::now() + Duration::from_secs(1);
        let hello = a.on_tick(later, quiet).expect("new hello after silence");
        assert!(!a.is_established());
        let welcome = deliver(&mut b2, &hello).unwrap().reply.unwrap();
        assert!(deliver(&mut a, &welcome).unwrap().established);
    }

    #[test]
    fn a_stream_endpoint_refuses_a_frame_cut_out_both_ways() {
        let (a, b) = pair([1; 32]);
        let (mut a, mut b) = (a.in_order(), b.in_order());
        let hello = a.on_tick(Instant::now(), Duration::from_secs(1)).unwrap();
        let welcome = deliver(&mut b, &hello).unwrap().reply.unwrap();
        let proof = deliver(&mut a, &welcome).unwrap().reply.unwrap();
        assert!(deliver(&mut b, &proof).unwrap().established);
        cut_one_out(&mut a, &mut b);
        cut_one_out(&mut b, &mut a);
    }

    fn cut_one_out(from: &mut Endpoint, to: &mut Endpoint) {
        let first = from.seal(b"1").unwrap();
        let _cut_out = from.seal(b"2").unwrap();
        let third = from.seal(b"3").unwrap();
        assert!(deliver(to, &first).unwrap().payload.is_some());
        let err = deliver(to, &third).err().expect("refused");
        assert_eq!(
            err,
            AuthError::Gap {
                seq: 3,
                expected: 2
            }
        );
    }

    #[test]
    fn a_wrong_key_never_establishes() {
        let (mut a, mut b) = pair([2; 32]);
        let hello = a
            .on_tick(Instant::now(), Duration::from_millis(300))
            .unwrap();
        let welcome = deliver(&mut b, &hello).unwrap().reply.unwrap();
        let err = deliver(&mut a, &welcome).err().expect("refused");
        assert!(matches!(err, AuthError::WrongKey { .. }), "{err}");
        assert!(!a.is_established() && !b.is_established());
    }
}
