//! Authentication: the pair key, the handshake and authenticated sessions.
//!
//! The two nodes of a pair share one 256-bit key (the *pair key*), generated
//! once and copied to both nodes as a file of 64 hex characters. Nothing else
//! is trusted: not the network, not the serial line, not the peer's claimed
//! name.
//!
//! # Handshake
//!
//! ```text
//! Hello    I → R  pair, name_i, nonce_i
//! Welcome  R → I  pair, name_r, nonce_r, proof_r = keyed(K, "tandem v1 responder" ‖ T)
//! Proof    I → R  proof_i = keyed(K, "tandem v1 initiator" ‖ T)
//!
//! T = pair ‖ name_i ‖ name_r ‖ nonce_i ‖ nonce_r   (each string length-prefixed)
//! ```
//!
//! Each side proves it holds `K` over a fresh 32-byte nonce from *both* sides,
//! so a recorded handshake cannot be replayed to either node. The nonces are
//! passed in by the caller (this crate never touches a random number
//! generator). The initiator finishes on a valid Welcome (and sends its
//! Proof); the responder finishes on a valid Proof. Handshake frames carry
//! `seq = 0` and a MAC keyed with a key derived from `K` over header ‖ body.
//!
//! A wrong pair name gives [`AuthError::PairMismatch`]; a failed proof gives
//! [`AuthError::WrongKey`] naming the peer's claimed node name. The responder
//! answers a Hello even when its MAC fails the key check (it records why,
//! see [`Handshake::suspected_failure`]) so that the initiator can also tell
//! its operator that the keys differ, instead of just timing out.
//!
//! # Sessions
//!
//! A finished handshake yields a [`Session`] holding two directional keys,
//! `derive_key("tandem v1 session i->r", K ‖ T)` and `... "r->i" ...`: a frame
//! sealed by one side can only be opened by the other, never reflected back
//! to its sender. Data and Attached frames carry a sequence number starting
//! at 1; a frame whose seq is not greater than the highest accepted one is
//! refused ([`AuthError::Replay`]), which also drops reordered datagrams.
//! On a stream that delivers every frame in order (TCP),
//! [`Session::require_in_order`] also refuses a gap ([`AuthError::Gap`]):
//! each frame is authentic on its own, so only the sequence shows that
//! someone on the path cut frames out of the stream.
//! A Data frame's MAC covers its header and body; an Attached frame's, its
//! header and payload, not its attachment, whose pieces the payload names
//! by hash (checked by `message::decode_attached`).
//!
//! All MAC and proof comparisons are constant-time. MACs are keyed BLAKE3
//! truncated to 16 bytes.

use crate::wire::{self, Frame, FrameKind, SealedFrame, MAC_BYTES};
use bytes::Bytes;

/// Context strings. Changing any of them is a protocol version change.
const CTX_FINGERPRINT: &str = "tandem v1 pair key fingerprint";
const CTX_HANDSHAKE_MAC: &str = "tandem v1 handshake frame mac";
const CTX_SESSION_I_TO_R: &str = "tandem v1 session i->r";
const CTX_SESSION_R_TO_I: &str = "tandem v1 session r->i";
const LABEL_RESPONDER: &[u8] = b"tandem v1 responder";
const LABEL_INITIATOR: &[u8] = b"tandem v1 initiator";

/// Length of a handshake nonce and of a proof.
pub const NONCE_BYTES: usize = 32;
/// Longest pair or node name accepted in a handshake, in bytes.
pub const NAME_BYTES_MAX: usize = 255;

/// The pre-shared pair key. Its `Debug` shows only the public fingerprint.
#[derive(Clone)]
pub struct PairKey([u8; 32]);

impl std::fmt::Debug for PairKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PairKey(fingerprint {})", self.fingerprint())
    }
}

/// Why a pair key file was refused.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("pair key file must hold exactly 64 hex characters but holds {found}")]
    WrongLength { found: usize },
    #[error("pair key file has a non-hex character {found:?} at position {position} (it must hold exactly 64 hex characters)")]
    NonHex { position: usize, found: char },
}

impl PairKey {
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        PairKey(bytes)
    }

    /// The raw key, e.g. to write it somewhere else. Handle with care.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Parse a key file: 64 hex characters (either case), optionally followed
    /// by whitespace such as a newline. Positions in errors count characters
    /// from 1.
    pub fn parse(text: &str) -> Result<PairKey, KeyError> {
        let text = text.trim_end();
        let mut bytes = [0u8; 32];
        let mut count = 0usize;
        for (i, c) in text.chars().enumerate() {
            let Some(nibble) = c.to_digit(16) else {
                return Err(KeyError::NonHex {
                    position: i + 1,
                    found: c,
                });
            };
            if i < 64 {
                bytes[i / 2] |= (nibble as u8) << if i % 2 == 0 { 4 } else { 0 };
            }
            count += 1;
        }
        if count != 64 {
            return Err(KeyError::WrongLength { found: count });
        }
        Ok(PairKey(bytes))
    }

    /// The key file's content: 64 lowercase hex characters and a newline.
    pub fn to_file_text(&self) -> String {
        let mut s = hex::encode(self.0);
        s.push('\n');
        s
    }

    /// A short public fingerprint (8 hex characters) for logs: two nodes'
    /// keys can be compared without revealing them.
    pub fn fingerprint(&self) -> String {
        let d = blake3::derive_key(CTX_FINGERPRINT, &self.0);
        hex::encode(&d[..4])
    }

    fn handshake_mac_key(&self) -> [u8; 32] {
        blake3::derive_key(CTX_HANDSHAKE_MAC, &self.0)
    }
}

/// Which side of the handshake a node plays: the initiator connects (or
/// sends the first datagram), the responder listens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Initiator,
    Responder,
}

/// Why a handshake step or a received frame was refused. Every Display string
/// is one sentence meant to go straight into a log line.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error(transparent)]
    Wire(#[from] wire::WireError),
    /// `peer` is the node name the peer claimed; a caller that knows the
    /// address logs e.g. "peer b at 127.0.0.1:7483 failed the key check: ...".
    #[error("peer {peer} failed the key check: different pair key (fingerprints differ?)")]
    WrongKey { peer: String },
    #[error("peer belongs to pair \"{theirs}\" but this node belongs to pair \"{ours}\"; check the pair name on both nodes")]
    PairMismatch { theirs: String, ours: String },
    #[error("dropped frame {seq}: not newer than the last accepted frame {last} (replayed or reordered)")]
    Replay { seq: u64, last: u64 },
    #[error("frame {seq} arrived where frame {expected} was due: frames were cut out of an ordered stream")]
    Gap { seq: u64, expected: u64 },
    #[error("dropped a frame that failed its integrity check (corrupted in transit, or not sent by the paired peer)")]
    BadMac,
    #[error("expected a {expected} frame but received a {got} frame")]
    UnexpectedFrame {
        expected: &'static str,
        got: FrameKind,
    },
    #[error("received a malformed handshake frame: {0}")]
    Malformed(String),
}

/// What to do after feeding a frame to [`Handshake::receive`].
#[derive(Debug)]
pub enum HandshakeStep {
    /// Send these bytes (one frame) to the peer and keep waiting.
    Send(Vec<u8>),
    /// The peer is authenticated. Send `send` if present (the initiator's
    /// Proof), then use `session`.
    Done {
        session: Session,
        send: Option<Vec<u8>>,
    },
}

#[derive(Debug, Clone)]
enum State {
    /// Initiator: Hello sent, waiting for Welcome.
    AwaitWelcome { hello: Vec<u8> },
    /// Responder: waiting for a Hello.
    AwaitHello,
    /// Responder: Welcome sent, waiting for Proof.
    AwaitProof {
        hello_body: Vec<u8>,
        welcome: Vec<u8>,
        peer: String,
        transcript: Vec<u8>,
    },
    /// A session was handed out.
    Finished,
}

/// The sans-IO handshake of one side. Feed it the peer's handshake frames
/// with [`receive`](Self::receive); send the bytes it returns.
///
/// An error leaves the handshake where it was, so a datagram caller can
/// drop the offending frame and keep waiting; a stream caller closes the
/// connection and starts over.
pub struct Handshake {
    key: PairKey,
    role: Role,
    pair: String,
    me: String,
    nonce: [u8; NONCE_BYTES],
    frame_bytes_max: usize,
    state: State,
    suspected: Option<AuthError>,
}

impl std::fmt::Debug for Handshake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handshake")
            .field("key", &self.key)
            .field("role", &self.role)
            .field("pair", &self.pair)
            .field("me", &self.me)
            .field("state", &self.state_name())
            .finish()
    }
}

impl Handshake {
    /// Initiator: the handshake and the Hello frame to send.
    pub fn initiate(
        key: &PairKey,
        pair: &str,
        me: &str,
        nonce: [u8; 32],
        frame_bytes_max: usize,
    ) -> (Handshake, Vec<u8>) {
        let mut body = Vec::new();
        put_str(&mut body, pair);
        put_str(&mut body, me);
        body.extend_from_slice(&nonce);
        let hello = seal_handshake(key, FrameKind::Hello, &body);
        let hs = Handshake {
            key: key.clone(),
            role: Role::Initiator,
            pair: pair.to_owned(),
            me: me.to_owned(),
            nonce,
            frame_bytes_max,
            state: State::AwaitWelcome {
                hello: hello.clone(),
            },
            suspected: None,
        };
        (hs, hello)
    }

    /// Responder: a handshake waiting for the peer's Hello.
    pub fn respond(
        key: &PairKey,
        pair: &str,
        me: &str,
        nonce: [u8; 32],
        frame_bytes_max: usize,
    ) -> Handshake {
        Handshake {
            key: key.clone(),
            role: Role::Responder,
            pair: pair.to_owned(),
            me: me.to_owned(),
            nonce,
            frame_bytes_max,
            state: State::AwaitHello,
            suspected: None,
        }
    }

    pub fn role(&self) -> Role {
        self.role
    }

    /// Whether a session has been handed out.
    pub fn is_finished(&self) -> bool {
        matches!(self.state, State::Finished)
    }

    /// The last frame this side sent and still waits on an answer for (the
    /// Hello, or the responder's Welcome), for a datagram caller to send
    /// again after a timeout. `None` when waiting for a Hello or finished.
    pub fn retransmit(&self) -> Option<Vec<u8>> {
        match &self.state {
            State::AwaitWelcome { hello } => Some(hello.clone()),
            State::AwaitProof { welcome, .. } => Some(welcome.clone()),
            State::AwaitHello | State::Finished => None,
        }
    }

    /// If the handshake stalls (the peer goes away before finishing), the
    /// likely reason, for the log line: e.g. the peer's Hello failed this
    /// node's key check, so the peer will refuse our Welcome.
    pub fn suspected_failure(&self) -> Option<&AuthError> {
        self.suspected.as_ref()
    }

    fn state_name(&self) -> &'static str {
        match self.state {
            State::AwaitWelcome { .. } => "awaiting Welcome",
            State::AwaitHello => "awaiting Hello",
            State::AwaitProof { .. } => "awaiting Proof",
            State::Finished => "finished",
        }
    }

    /// Feed one received handshake frame (already split off by a
    /// [`wire::FrameReader`] or [`wire::decode_datagram`]).
    pub fn receive(&mut self, frame: &Frame) -> Result<HandshakeStep, AuthError> {
        if frame.seq != 0 {
            return Err(AuthError::Malformed(format!(
                "{} frame carries sequence number {} instead of 0",
                frame.kind, frame.seq
            )));
        }
        match (&self.state, frame.kind) {
            (State::AwaitHello, FrameKind::Hello) => self.on_hello(frame),
            (State::AwaitProof { hello_body, .. }, FrameKind::Hello) => {
                let mac_ok = self.mac_ok(frame);
                if *hello_body == frame.body && mac_ok {
                    // Our Welcome was lost: answer again, identically.
                    Ok(HandshakeStep::Send(self.retransmit().unwrap_or_default()))
                } else if mac_ok || self.suspected.is_some() {
                    // The initiator started over (new nonce): follow it. A
                    // Hello that fails the key check may only replace one
                    // that failed it too, so forged Hellos cannot break an
                    // honest handshake in progress.
                    self.on_hello(frame)
                } else {
                    let mut r = Reader::new(&frame.body);
                    let _pair = r.name("pair name")?;
                    let peer = printable(&r.name("node name")?);
                    Err(AuthError::WrongKey { peer })
                }
            }
            (State::AwaitProof { .. }, FrameKind::Proof) => self.on_proof(frame),
            (State::AwaitWelcome { .. }, FrameKind::Welcome) => self.on_welcome(frame),
            (state, got) => Err(AuthError::UnexpectedFrame {
                expected: match state {
                    State::AwaitWelcome { .. } => "Welcome",
                    State::AwaitHello => "Hello",
                    State::AwaitProof { .. } => "Proof",
                    State::Finished => "Data (handshake already finished)",
                },
                got,
            }),
        }
    }

    fn mac_ok(&self, frame: &Frame) -> bool {
        frame.body.len() <= u32::MAX as usize
            && ct_eq(
                &handshake_mac(&self.key, frame.kind, &frame.body),
                &frame.mac,
            )
    }

    fn on_hello(&mut self, frame: &Frame) -> Result<HandshakeStep, AuthError> {
        let mut r = Reader::new(&frame.body);
        let pair = r.name("pair name")?;
        let name_i = r.name("node name")?;
        let nonce_i = r.array::<NONCE_BYTES>("nonce")?;
        r.end()?;
        if pair != self.pair {
            return Err(AuthError::PairMismatch {
                theirs: printable(&pair),
                ours: self.pair.clone(),
            });
        }
        self.suspected = if self.mac_ok(frame) {
            None
        } else {
            Some(AuthError::WrongKey {
                peer: printable(&name_i),
            })
        };
        let transcript = transcript(&self.pair, &name_i, &self.me, &nonce_i, &self.nonce);
        let proof_r = proof(&self.key, LABEL_RESPONDER, &transcript);
        let mut body = Vec::new();
        put_str(&mut body, &self.pair);
        put_str(&mut body, &self.me);
        body.extend_from_slice(&self.nonce);
        body.extend_from_slice(proof_r.as_bytes());
        let welcome = seal_handshake(&self.key, FrameKind::Welcome, &body);
        self.state = State::AwaitProof {
            hello_body: frame.body.to_vec(),
            welcome: welcome.clone(),
            peer: name_i,
            transcript,
        };
        Ok(HandshakeStep::Send(welcome))
    }

    fn on_welcome(&mut self, frame: &Frame) -> Result<HandshakeStep, AuthError> {
        let mut r = Reader::new(&frame.body);
        let pair = r.name("pair name")?;
        let name_r = r.name("node name")?;
        let nonce_r = r.array::<NONCE_BYTES>("nonce")?;
        let proof_r = r.array::<32>("proof")?;
        r.end()?;
        if pair != self.pair {
            return Err(AuthError::PairMismatch {
                theirs: printable(&pair),
                ours: self.pair.clone(),
            });
        }
        let transcript = transcript(&self.pair, &self.me, &name_r, &self.nonce, &nonce_r);
        if proof(&self.key, LABEL_RESPONDER, &transcript) != blake3::Hash::from(proof_r) {
            return Err(AuthError::WrongKey {
                peer: printable(&name_r),
            });
        }
        if !self.mac_ok(frame) {
            return Err(AuthError::BadMac);
        }
        let proof_i = proof(&self.key, LABEL_INITIATOR, &transcript);
        let send = seal_handshake(&self.key, FrameKind::Proof, proof_i.as_bytes());
        let session = Session::new(
            &self.key,
            Role::Initiator,
            &transcript,
            name_r,
            self.frame_bytes_max,
        );
        self.state = State::Finished;
        self.suspected = None;
        Ok(HandshakeStep::Done {
            session,
            send: Some(send),
        })
    }

    fn on_proof(&mut self, frame: &Frame) -> Result<HandshakeStep, AuthError> {
        let State::AwaitProof {
            peer, transcript, ..
        } = &self.state
        else {
            unreachable!("on_proof is only called while awaiting a Proof");
        };
        let mut r = Reader::new(&frame.body);
        let proof_i = r.array::<32>("proof")?;
        r.end()?;
        if proof(&self.key, LABEL_INITIATOR, transcript) != blake3::Hash::from(proof_i) {
            return Err(AuthError::WrongKey {
                peer: printable(peer),
            });
        }
        if !self.mac_ok(frame) {
            return Err(AuthError::BadMac);
        }
        let session = Session::new(
            &self.key,
            Role::Responder,
            transcript,
            peer.clone(),
            self.frame_bytes_max,
        );
        self.state = State::Finished;
        self.suspected = None;
        Ok(HandshakeStep::Done {
            session,
            send: None,
        })
    }
}

/// An authenticated channel to the peer, after a handshake.
pub struct Session {
    send_key: [u8; 32],
    recv_key: [u8; 32],
    next_seq: u64,
    last_seq: u64,
    /// Every frame must carry `last_seq + 1` (see `require_in_order`).
    in_order: bool,
    peer: String,
    role: Role,
    frame_bytes_max: usize,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("peer", &self.peer)
            .field("role", &self.role)
            .field("next_seq", &self.next_seq)
            .field("last_seq", &self.last_seq)
            .field("in_order", &self.in_order)
            .finish_non_exhaustive()
    }
}

impl Session {
    fn new(
        key: &PairKey,
        role: Role,
        transcript: &[u8],
        peer: String,
        frame_bytes_max: usize,
    ) -> Session {
        let mut material = Vec::with_capacity(32 + transcript.len());
        material.extend_from_slice(&key.0);
        material.extend_from_slice(transcript);
        let i_to_r = blake3::derive_key(CTX_SESSION_I_TO_R, &material);
        let r_to_i = blake3::derive_key(CTX_SESSION_R_TO_I, &material);
        let (send_key, recv_key) = match role {
            Role::Initiator => (i_to_r, r_to_i),
            Role::Responder => (r_to_i, i_to_r),
        };
        Session {
            send_key,
            recv_key,
            next_seq: 1,
            last_seq: 0,
            in_order: false,
            peer,
            role,
            frame_bytes_max,
        }
    }

    /// For a transport that delivers every frame, in order (TCP): from now
    /// on a frame must carry exactly the sequence number after the last
    /// accepted one. Datagram and serial links lose frames honestly and
    /// keep the default, which only refuses old ones.
    pub fn require_in_order(&mut self) {
        self.in_order = true;
    }

    /// The peer's node name, as it stated it in the handshake.
    pub fn peer(&self) -> &str {
        &self.peer
    }

    /// Which side of the handshake this node played.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The body limit agreed for this session: a frame this session seals
    /// with a longer body is refused by the peer.
    pub fn frame_bytes_max(&self) -> usize {
        self.frame_bytes_max
    }

    /// The sequence number the next sealed frame will carry.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// The highest sequence number accepted so far (0 before the first).
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// Seal a payload into a Data frame, ready to send.
    pub fn seal(&mut self, payload: &[u8]) -> Vec<u8> {
        let mut frame = wire::body_buffer(payload.len());
        frame.extend_from_slice(payload);
        self.seal_in_place(frame)
    }

    /// Seal a Data frame whose payload was encoded behind the room for its
    /// header (a [`wire::body_buffer`]): the header is written in front and
    /// the MAC appended; the payload, megabytes for a bulk message, is not
    /// copied.
    ///
    /// # Panics
    /// If `frame` is shorter than the header's room.
    pub fn seal_in_place(&mut self, mut frame: Vec<u8>) -> Vec<u8> {
        let seq = self.next_seq;
        self.next_seq = self.next_seq.saturating_add(1);
        let body_len = frame.len() - wire::HEADER_BYTES;
        frame[..wire::HEADER_BYTES].copy_from_slice(&wire::header(FrameKind::Data, seq, body_len));
        let mac = truncated_mac(&self.send_key, &frame);
        frame.extend_from_slice(&mac);
        frame
    }

    /// Seal an Attached frame: `head` is room for the header and the
    /// payload's length (4 bytes), both filled in here, then the payload;
    /// `attachment` is the attachment's bytes in parts. The MAC covers the
    /// header and the payload, not the attachment, whose pieces the payload
    /// names by hash (see `wire`). Nothing is copied: the frame is `head`,
    /// the parts and the MAC, written in order.
    ///
    /// # Panics
    /// If `head` is shorter than the header's room and the length.
    pub fn seal_attached(&mut self, mut head: Vec<u8>, attachment: Vec<Bytes>) -> SealedFrame {
        let seq = self.next_seq;
        self.next_seq = self.next_seq.saturating_add(1);
        let payload_len = head.len() - wire::HEADER_BYTES - 4;
        let body_len =
            head.len() - wire::HEADER_BYTES + attachment.iter().map(Bytes::len).sum::<usize>();
        let len = u32::try_from(payload_len).expect("payload longer than u32::MAX bytes");
        head[..wire::HEADER_BYTES].copy_from_slice(&wire::header(
            FrameKind::Attached,
            seq,
            body_len,
        ));
        head[wire::HEADER_BYTES..wire::HEADER_BYTES + 4].copy_from_slice(&len.to_be_bytes());
        let mac = truncated_mac(&self.send_key, &head);
        let mut parts = Vec::with_capacity(attachment.len() + 2);
        parts.push(Bytes::from(head));
        parts.extend(attachment);
        parts.push(Bytes::copy_from_slice(&mac));
        SealedFrame::new(parts)
    }

    /// Check a received frame (kind Data, MAC, seq strictly greater than the
    /// highest accepted, or exactly the next one if
    /// [`Session::require_in_order`]) and return its payload. Refused
    /// frames change nothing: a datagram caller just drops them.
    pub fn open(&mut self, frame: &Frame) -> Result<Bytes, AuthError> {
        if frame.kind != FrameKind::Data {
            return Err(AuthError::UnexpectedFrame {
                expected: "Data",
                got: frame.kind,
            });
        }
        Ok(self.open_with_attachment(frame)?.0)
    }

    /// [`Session::open`] for a Data or an Attached frame: the payload and
    /// the attachment (empty for Data), views of the frame's buffer. The
    /// attachment is NOT authenticated: its caller checks every piece
    /// against the hash the payload gives for it before using it.
    pub fn open_with_attachment(&mut self, frame: &Frame) -> Result<(Bytes, Bytes), AuthError> {
        if frame.body.len() > u32::MAX as usize {
            // Cannot have been sealed (the length field is a u32).
            return Err(AuthError::BadMac);
        }
        let (mac, payload, attachment) = match frame.kind {
            FrameKind::Data => (
                frame_mac(&self.recv_key, FrameKind::Data, frame.seq, &frame.body),
                frame.body.clone(),
                Bytes::new(),
            ),
            FrameKind::Attached => {
                let Some((len, rest)) = frame.body.split_first_chunk::<4>() else {
                    return Err(AuthError::BadMac);
                };
                let len = u32::from_be_bytes(*len) as usize;
                if len > rest.len() {
                    // Cannot have been sealed.
                    return Err(AuthError::BadMac);
                }
                (
                    covering_mac(
                        &self.recv_key,
                        &wire::header(FrameKind::Attached, frame.seq, frame.body.len()),
                        &frame.body[..4 + len],
                    ),
                    frame.body.slice(4..4 + len),
                    frame.body.slice(4 + len..),
                )
            }
            kind => {
                return Err(AuthError::UnexpectedFrame {
                    expected: "Data or Attached",
                    got: kind,
                })
            }
        };
        if !ct_eq(&mac, &frame.mac) {
            return Err(AuthError::BadMac);
        }
        if frame.seq <= self.last_seq {
            return Err(AuthError::Replay {
                seq: frame.seq,
                last: self.last_seq,
            });
        }
        if self.in_order && frame.seq != self.last_seq + 1 {
            return Err(AuthError::Gap {
                seq: frame.seq,
                expected: self.last_seq + 1,
            });
        }
        self.last_seq = frame.seq;
        Ok((payload, attachment))
    }
}

/// Keyed BLAKE3 over header ‖ body, truncated to [`MAC_BYTES`].
fn frame_mac(key: &[u8; 32], kind: FrameKind, seq: u64, body: &[u8]) -> [u8; MAC_BYTES] {
    covering_mac(key, &wire::header(kind, seq, body.len()), body)
}

/// Keyed BLAKE3 over `header` ‖ `covered` (an Attached frame's header and
/// payload), truncated to [`MAC_BYTES`].
fn covering_mac(key: &[u8; 32], header: &[u8], covered: &[u8]) -> [u8; MAC_BYTES] {
    let mut h = blake3::Hasher::new_keyed(key);
    h.update(header);
    h.update(covered);
    truncate(h.finalize())
}

/// [`frame_mac`] of a frame already laid out as header ‖ body (or, for an
/// Attached frame, header ‖ payload_len ‖ payload).
fn truncated_mac(key: &[u8; 32], header_and_body: &[u8]) -> [u8; MAC_BYTES] {
    truncate(blake3::keyed_hash(key, header_and_body))
}

fn truncate(hash: blake3::Hash) -> [u8; MAC_BYTES] {
    let mut out = [0u8; MAC_BYTES];
    out.copy_from_slice(&hash.as_bytes()[..MAC_BYTES]);
    out
}

fn handshake_mac(key: &PairKey, kind: FrameKind, body: &[u8]) -> [u8; MAC_BYTES] {
    frame_mac(&key.handshake_mac_key(), kind, 0, body)
}

fn seal_handshake(key: &PairKey, kind: FrameKind, body: &[u8]) -> Vec<u8> {
    wire::encode(kind, 0, body, handshake_mac(key, kind, body))
}

fn proof(key: &PairKey, label: &[u8], transcript: &[u8]) -> blake3::Hash {
    let mut h = blake3::Hasher::new_keyed(&key.0);
    put_bytes(&mut h, label);
    h.update(transcript);
    h.finalize()
}

fn put_bytes(h: &mut blake3::Hasher, b: &[u8]) {
    h.update(&(b.len() as u32).to_be_bytes());
    h.update(b);
}

/// The handshake transcript: every string length-prefixed, so no two
/// different (pair, names) combinations encode to the same bytes.
fn transcript(
    pair: &str,
    name_i: &str,
    name_r: &str,
    nonce_i: &[u8; 32],
    nonce_r: &[u8; 32],
) -> Vec<u8> {
    let mut t = Vec::new();
    put_str(&mut t, pair);
    put_str(&mut t, name_i);
    put_str(&mut t, name_r);
    t.extend_from_slice(nonce_i);
    t.extend_from_slice(nonce_r);
    t
}

/// u32 big-endian length, then the bytes.
fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// Constant-time equality of two MACs.
fn ct_eq(a: &[u8; MAC_BYTES], b: &[u8; MAC_BYTES]) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// A peer-supplied string made safe for one log line: control characters
/// escaped, at most 64 characters kept.
fn printable(s: &str) -> String {
    let mut out: String = s.chars().take(64).flat_map(char::escape_debug).collect();
    if s.chars().count() > 64 {
        out.push('…');
    }
    out
}

/// Parser for handshake bodies.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(body: &'a [u8]) -> Self {
        Reader { rest: body }
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], AuthError> {
        if self.rest.len() < n {
            return Err(AuthError::Malformed(format!("the {what} is cut short")));
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], AuthError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N, what)?);
        Ok(a)
    }

    fn name(&mut self, what: &str) -> Result<String, AuthError> {
        let len = u32::from_be_bytes(self.array::<4>(what)?) as usize;
        if len > NAME_BYTES_MAX {
            return Err(AuthError::Malformed(format!(
                "the {what} is {len} bytes long, over the limit of {NAME_BYTES_MAX}"
            )));
        }
        let bytes = self.take(len, what)?;
        std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|_| AuthError::Malformed(format!("the {what} is not valid UTF-8")))
    }

    fn end(&self) -> Result<(), AuthError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(AuthError::Malformed(format!(
                "{} unexpected bytes follow the last field",
                self.rest.len()
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> PairKey {
        PairKey::from_bytes([b; 32])
    }

    fn frame(bytes: &[u8]) -> Frame {
        wire::decode_datagram(bytes, wire::FRAME_BYTES_MAX_DEFAULT).unwrap()
    }

    fn handshake(ki: &PairKey, kr: &PairKey) -> (Result<HandshakeStep, AuthError>, Handshake) {
        let (_i, hello) = Handshake::initiate(ki, "pair", "a", [1; 32], 1024);
        let mut r = Handshake::respond(kr, "pair", "b", [2; 32], 1024);
        (r.receive(&frame(&hello)), r)
    }

    #[test]
    fn key_file_round_trip() {
        let k = PairKey::from_bytes(*b"0123456789abcdef0123456789ABCDEF");
        let text = k.to_file_text();
        assert_eq!(text.len(), 65);
        assert!(text.ends_with('\n'));
        assert_eq!(PairKey::parse(&text).unwrap().0, k.0);
        assert_eq!(PairKey::parse(&text.to_uppercase()).unwrap().0, k.0);
        assert_eq!(
            PairKey::parse(&format!("{}  \r\n\n", text.trim()))
                .unwrap()
                .0,
            k.0
        );
    }

    #[test]
    fn key_file_errors() {
        assert_eq!(
            PairKey::parse("").err(),
            Some(KeyError::WrongLength { found: 0 })
        );
        assert_eq!(
            PairKey::parse(&"a".repeat(63)).err(),
            Some(KeyError::WrongLength { found: 63 })
        );
        assert_eq!(
            PairKey::parse(&"a".repeat(65)).err(),
            Some(KeyError::WrongLength { found: 65 })
        );
        assert_eq!(
            PairKey::parse(&format!(" {}", "a".repeat(64))).err(),
            Some(KeyError::NonHex {
                position: 1,
                found: ' '
            })
        );
        let mut s = "a".repeat(64);
        s.replace_range(9..10, "g");
        assert_eq!(
            PairKey::parse(&s).err(),
            Some(KeyError::NonHex {
                position: 10,
                found: 'g'
            })
        );
    }

    #[test]
    fn debug_hides_key() {
        let k = key(0xab);
        let dbg = format!("{k:?}");
        assert!(!dbg.contains("abab"), "{dbg}");
        assert!(dbg.contains(&k.fingerprint()));
        assert_eq!(k.fingerprint().len(), 8);
        assert_ne!(k.fingerprint(), key(0xac).fingerprint());
        let (_, r) = handshake(&k, &k);
        assert!(!format!("{r:?}").contains("abab"));
    }

    #[test]
    fn responder_answers_wrong_key_hello_but_suspects() {
        let (step, r) = handshake(&key(1), &key(2));
        assert!(matches!(step, Ok(HandshakeStep::Send(_))));
        assert_eq!(
            r.suspected_failure(),
            Some(&AuthError::WrongKey { peer: "a".into() })
        );
    }

    #[test]
    fn forged_hello_cannot_replace_an_honest_one() {
        let k = key(3);
        let (_i, hello) = Handshake::initiate(&k, "pair", "a", [1; 32], 1024);
        let (_x, forged) = Handshake::initiate(&key(4), "pair", "x", [5; 32], 1024);
        let mut r = Handshake::respond(&k, "pair", "b", [2; 32], 1024);
        let Ok(HandshakeStep::Send(w1)) = r.receive(&frame(&hello)) else {
            panic!()
        };
        assert_eq!(
            r.receive(&frame(&forged)).unwrap_err(),
            AuthError::WrongKey { peer: "x".into() }
        );
        assert_eq!(r.retransmit(), Some(w1));
    }

    #[test]
    fn duplicate_hello_gets_same_welcome() {
        let k = key(3);
        let (_i, hello) = Handshake::initiate(&k, "pair", "a", [1; 32], 1024);
        let mut r = Handshake::respond(&k, "pair", "b", [2; 32], 1024);
        let Ok(HandshakeStep::Send(w1)) = r.receive(&frame(&hello)) else {
            panic!()
        };
        let Ok(HandshakeStep::Send(w2)) = r.receive(&frame(&hello)) else {
            panic!()
        };
        assert_eq!(w1, w2);
        assert_eq!(r.retransmit(), Some(w1));
    }

    #[test]
    fn printable_escapes_control_characters() {
        assert_eq!(printable("b\nINFO forged"), "b\\nINFO forged");
        assert_eq!(printable(&"x".repeat(70)).chars().count(), 65);
    }
}
