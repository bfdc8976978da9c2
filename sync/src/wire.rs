//! The frame layer: how the two nodes of a pair cut a byte stream (TCP,
//! serial) or a datagram (UDP) into whole, versioned, size-capped frames.
//!
//! Every message between the nodes travels in exactly one frame:
//!
//! ```text
//! magic    2 bytes   b"TD"
//! version  u8        PROTOCOL_VERSION (4)
//! kind     u8        1 Hello, 2 Welcome, 3 Proof, 4 Data, 5 Attached
//! len      u32 BE    body length, refused if over the receiver's limit
//! seq      u64 BE    0 in handshake frames; 1, 2, 3, ... in data frames
//! body     len bytes
//! mac      16 bytes  keyed BLAKE3 over header || body, truncated (see
//!                    `auth`); in an Attached frame, over header ||
//!                    payload_len || payload only
//! ```
//!
//! An Attached frame's body is a payload and an attachment:
//!
//! ```text
//! payload_len  u32 BE
//! payload      payload_len bytes: the message, which names each piece of
//!              the attachment by its blake3 hash
//! attachment   the rest: bulk bytes (file chunks), each checked against
//!              its hash as the message is decoded (`message::decode_attached`)
//! ```
//!
//! Why it looks like this:
//!
//! * The **magic** lets a serial reader find the next frame after line noise
//!   ([`FrameReader::resync`]) and makes a stray connection from something
//!   that is not tandem fail with one clear error instead of nonsense.
//! * The **version** comes right after the magic, so two nodes running
//!   different releases say so ([`WireError::VersionMismatch`]) before
//!   anything else is interpreted.
//! * The **length** is checked against the receiver's `frame_bytes_max`
//!   as soon as the 16-byte header is in, before a single body byte is
//!   buffered: a peer (or a flipped bit) cannot make a node allocate 4 GiB.
//! * The **seq** and **mac** are filled in by [`crate::auth`]; this module
//!   only carries them. Nothing here is authenticated yet: a decoded
//!   [`Frame`] is merely well-formed.
//!
//! The module is sans-IO: it turns bytes into frames and back and never
//! touches a socket, a clock or a random number generator.

use bytes::Bytes;
use std::collections::VecDeque;

/// The two bytes every frame starts with.
pub const MAGIC: [u8; 2] = *b"TD";
/// The protocol version this build speaks; a frame with any other version is
/// refused with [`WireError::VersionMismatch`]. 2: a page's hash became
/// blake3(pgno || blake3(page)) (see `DbSum::page_hash`); a pair of builds
/// that hash pages differently would take equal copies for diverged ones.
/// 3: a file's content hash became `chunk::file_hash` of its chunk list (a
/// standby of an earlier build would refuse every file of a newer primary),
/// and file chunks travel in Attached frames. 4: file-set entries carry
/// their owner.
pub const PROTOCOL_VERSION: u8 = 4;
/// magic (2) + version (1) + kind (1) + len (4) + seq (8).
pub const HEADER_BYTES: usize = 16;
/// Length of the truncated MAC that ends every frame.
pub const MAC_BYTES: usize = 16;
/// A stream reader sets aside room for a frame up to this size as soon as
/// its length is known (a longer one grows as it arrives).
const RESERVE_BYTES_MAX: usize = 8 << 20;
/// Default cap on a frame's body length (16 MiB).
pub const FRAME_BYTES_MAX_DEFAULT: usize = 16 * 1024 * 1024;

/// What a frame carries. The first three only occur during the handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FrameKind {
    /// Initiator → responder: pair name, node name, nonce.
    Hello,
    /// Responder → initiator: pair name, node name, nonce, proof.
    Welcome,
    /// Initiator → responder: proof.
    Proof,
    /// Either way, after the handshake: an authenticated payload.
    Data,
    /// Either way, after the handshake: an authenticated payload with an
    /// attachment of bulk bytes that the payload names by hash (see the
    /// module doc).
    Attached,
}

impl FrameKind {
    /// The kind's byte on the wire.
    pub fn to_byte(self) -> u8 {
        match self {
            FrameKind::Hello => 1,
            FrameKind::Welcome => 2,
            FrameKind::Proof => 3,
            FrameKind::Data => 4,
            FrameKind::Attached => 5,
        }
    }

    /// The kind for a wire byte, if it is one.
    pub fn from_byte(byte: u8) -> Option<FrameKind> {
        match byte {
            1 => Some(FrameKind::Hello),
            2 => Some(FrameKind::Welcome),
            3 => Some(FrameKind::Proof),
            4 => Some(FrameKind::Data),
            5 => Some(FrameKind::Attached),
            _ => None,
        }
    }

    /// Human name, as used in error messages ("Hello", "Data", ...).
    pub fn name(self) -> &'static str {
        match self {
            FrameKind::Hello => "Hello",
            FrameKind::Welcome => "Welcome",
            FrameKind::Proof => "Proof",
            FrameKind::Data => "Data",
            FrameKind::Attached => "Attached",
        }
    }
}

impl std::fmt::Display for FrameKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One well-formed (not yet authenticated) frame. From a stream, its body
/// is a view of the buffer the frame was received into, not a copy: a
/// bulk frame's megabytes are not moved between the socket's reader and
/// the message decoder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub kind: FrameKind,
    pub seq: u64,
    pub body: Bytes,
    pub mac: [u8; MAC_BYTES],
}

impl Frame {
    /// The 16 header bytes this frame was (or will be) sent with.
    ///
    /// # Panics
    /// If the body is longer than `u32::MAX` bytes (a decoded frame never is).
    pub fn header(&self) -> [u8; HEADER_BYTES] {
        header(self.kind, self.seq, self.body.len())
    }

    /// The bytes a Data or handshake frame's MAC covers: header || body.
    pub fn mac_input(&self) -> Vec<u8> {
        mac_input(self.kind, self.seq, &self.body)
    }

    /// The frame back in wire form.
    pub fn to_bytes(&self) -> Vec<u8> {
        encode(self.kind, self.seq, &self.body, self.mac)
    }
}

/// Why bytes could not be turned into a frame. Every Display string is one
/// sentence meant to go straight into a log line.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("received bytes that do not start with the tandem frame magic \"TD\" (not a tandem peer, or the byte stream lost sync)")]
    BadMagic,
    #[error("peer speaks tandem protocol version {theirs} but this node speaks version {ours}; run the same tandem release on both nodes")]
    VersionMismatch { theirs: u8, ours: u8 },
    #[error("received a frame of unknown kind {0} (corrupted frame or incompatible peer)")]
    UnknownKind(u8),
    #[error("peer announced a frame body of {len} bytes, over this node's limit of {max} bytes (frame_bytes_max)")]
    TooLarge { len: u64, max: usize },
    #[error("received a truncated frame: the datagram ended before its header, body and MAC were complete")]
    Truncated,
    #[error("received a datagram with {extra} unexpected bytes after the end of its frame")]
    TrailingBytes { extra: usize },
}

/// Total encoded size of a frame with a body of `body_len` bytes.
pub fn frame_len(body_len: usize) -> usize {
    HEADER_BYTES + body_len + MAC_BYTES
}

/// The 16-byte header for a frame.
///
/// # Panics
/// If `body_len` does not fit the u32 length field. Callers keep bodies under
/// their `frame_bytes_max`, which is far below that.
pub fn header(kind: FrameKind, seq: u64, body_len: usize) -> [u8; HEADER_BYTES] {
    let len = u32::try_from(body_len).expect("frame body longer than u32::MAX bytes");
    let mut h = [0u8; HEADER_BYTES];
    h[0..2].copy_from_slice(&MAGIC);
    h[2] = PROTOCOL_VERSION;
    h[3] = kind.to_byte();
    h[4..8].copy_from_slice(&len.to_be_bytes());
    h[8..16].copy_from_slice(&seq.to_be_bytes());
    h
}

/// The bytes a Data or handshake frame's MAC covers: header || body.
pub fn mac_input(kind: FrameKind, seq: u64, body: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(HEADER_BYTES + body.len());
    v.extend_from_slice(&header(kind, seq, body.len()));
    v.extend_from_slice(body);
    v
}

/// Encode one frame. The MAC is computed by the caller (see `auth`).
///
/// # Panics
/// If `body` is longer than `u32::MAX` bytes.
pub fn encode(kind: FrameKind, seq: u64, body: &[u8], mac: [u8; MAC_BYTES]) -> Vec<u8> {
    let mut v = Vec::with_capacity(frame_len(body.len()));
    v.extend_from_slice(&header(kind, seq, body.len()));
    v.extend_from_slice(body);
    v.extend_from_slice(&mac);
    v
}

/// A buffer to encode a frame's body into: [`HEADER_BYTES`] of room for
/// the header in front, and capacity for `body_len` bytes and the MAC after
/// them, so that `auth::Session::seal_in_place` (or `seal_attached`) seals
/// it without moving the body.
pub fn body_buffer(body_len: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(frame_len(body_len));
    v.resize(HEADER_BYTES, 0);
    v
}

/// A sealed frame, ready to write: its bytes in order, in parts, so that
/// an Attached frame's bulk bytes are written from where they already are
/// (a file's bytes read by the scanner) instead of being copied into one
/// buffer first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SealedFrame {
    parts: Vec<Bytes>,
    len: usize,
}

impl SealedFrame {
    pub fn new(parts: Vec<Bytes>) -> Self {
        let len = parts.iter().map(Bytes::len).sum();
        SealedFrame { parts, len }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The bytes from offset `from` on, as at most `max` slices (for a
    /// vectored write).
    pub fn slices_from(&self, mut from: usize, max: usize) -> Vec<std::io::IoSlice<'_>> {
        let mut out = Vec::new();
        for part in &self.parts {
            if out.len() == max {
                break;
            }
            if from >= part.len() {
                from -= part.len();
                continue;
            }
            out.push(std::io::IoSlice::new(&part[from..]));
            from = 0;
        }
        out
    }

    /// All its bytes in one buffer.
    pub fn to_vec(&self) -> Vec<u8> {
        self.parts.concat()
    }
}

impl From<Vec<u8>> for SealedFrame {
    fn from(frame: Vec<u8>) -> Self {
        SealedFrame::new(vec![Bytes::from(frame)])
    }
}

/// Check as much of a header as `prefix` holds (any length), so garbage is
/// refused from its first wrong byte. Returns the body length once the
/// length field is complete.
fn check_header_prefix(prefix: &[u8], max: usize) -> Result<Option<usize>, WireError> {
    for (&got, &want) in prefix.iter().zip(MAGIC.iter()) {
        if got != want {
            return Err(WireError::BadMagic);
        }
    }
    if let Some(&v) = prefix.get(2) {
        if v != PROTOCOL_VERSION {
            return Err(WireError::VersionMismatch {
                theirs: v,
                ours: PROTOCOL_VERSION,
            });
        }
    }
    if let Some(&k) = prefix.get(3) {
        if FrameKind::from_byte(k).is_none() {
            return Err(WireError::UnknownKind(k));
        }
    }
    if prefix.len() < 8 {
        return Ok(None);
    }
    let len = u32::from_be_bytes([prefix[4], prefix[5], prefix[6], prefix[7]]);
    if u64::from(len) > max as u64 {
        return Err(WireError::TooLarge {
            len: u64::from(len),
            max,
        });
    }
    Ok(Some(len as usize))
}

/// Parse a buffer known to hold exactly one complete, header-checked frame;
/// the body stays where it is.
fn parse_complete(buf: Bytes) -> Frame {
    let kind = FrameKind::from_byte(buf[3]).expect("kind checked by check_header_prefix");
    let mut seq = [0u8; 8];
    seq.copy_from_slice(&buf[8..16]);
    let body_end = buf.len() - MAC_BYTES;
    let mut mac = [0u8; MAC_BYTES];
    mac.copy_from_slice(&buf[body_end..]);
    Frame {
        kind,
        seq: u64::from_be_bytes(seq),
        body: buf.slice(HEADER_BYTES..body_end),
        mac,
    }
}

/// Datagram form: `buf` must hold exactly one frame; trailing bytes are
/// refused. `max` caps the body length.
pub fn decode_datagram(buf: &[u8], max: usize) -> Result<Frame, WireError> {
    let prefix = &buf[..buf.len().min(HEADER_BYTES)];
    let len = match check_header_prefix(prefix, max)? {
        Some(len) if buf.len() >= HEADER_BYTES => len,
        _ => return Err(WireError::Truncated),
    };
    let total = frame_len(len);
    match buf.len().cmp(&total) {
        std::cmp::Ordering::Less => Err(WireError::Truncated),
        std::cmp::Ordering::Greater => Err(WireError::TrailingBytes {
            extra: buf.len() - total,
        }),
        std::cmp::Ordering::Equal => Ok(parse_complete(Bytes::copy_from_slice(buf))),
    }
}

/// Stream form: accumulates bytes from a stream (TCP, serial) and yields
/// whole frames in order.
///
/// Bytes are checked as they arrive: a wrong magic, version or kind is
/// reported from the first offending byte, and an over-limit length as soon
/// as the length field is in, so the body of an oversized frame is never
/// accumulated. Complete frames are split off on [`push`](Self::push), so the
/// raw buffer holds at most one incomplete frame and never grows beyond
/// [`capacity`](Self::capacity) (`max + HEADER_BYTES + MAC_BYTES`), however
/// much is pushed at once.
///
/// After an error the reader stops decoding and reports the same error from
/// every [`next_frame`](Self::next_frame) (after any frames that came before
/// it). A TCP caller closes the connection. A caller on a noisy byte stream
/// (serial) calls [`resync`](Self::resync), which drops bytes up to the next
/// magic and carries on. While an error is pending, bytes pushed beyond the
/// capacity are discarded (and counted in [`discarded`](Self::discarded)).
#[derive(Debug)]
pub struct FrameReader {
    max: usize,
    buf: Vec<u8>,
    ready: VecDeque<Frame>,
    error: Option<WireError>,
    discarded: u64,
}

impl FrameReader {
    /// A reader that refuses frame bodies over `max` bytes.
    pub fn new(max: usize) -> Self {
        FrameReader {
            max,
            buf: Vec::new(),
            ready: VecDeque::new(),
            error: None,
            discarded: 0,
        }
    }

    /// The most raw bytes this reader ever holds: one maximal frame.
    pub fn capacity(&self) -> usize {
        self.max.saturating_add(HEADER_BYTES + MAC_BYTES)
    }

    /// Feed bytes as they arrive, in any chunking.
    pub fn push(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.error.is_some() {
                let room = self.capacity().saturating_sub(self.buf.len());
                let take = room.min(bytes.len());
                self.buf.extend_from_slice(&bytes[..take]);
                self.discarded += (bytes.len() - take) as u64;
                return;
            }
            // How many more bytes the frame in progress needs.
            let want = self.frame_in_progress_len().unwrap_or(HEADER_BYTES) - self.buf.len();
            let take = want.min(bytes.len());
            let in_header = self.buf.len() < HEADER_BYTES;
            self.buf.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if in_header {
                let upto = self.buf.len().min(HEADER_BYTES);
                match check_header_prefix(&self.buf[..upto], self.max) {
                    Err(e) => {
                        self.error = Some(e);
                        continue;
                    }
                    // The whole frame's room at once: the buffer is handed
                    // over with the frame, so it would otherwise grow (and
                    // be copied) step by step for every frame. Up to a
                    // bound: the length is not authenticated yet.
                    Ok(Some(len)) => {
                        let room = frame_len(len).min(RESERVE_BYTES_MAX);
                        self.buf.reserve_exact(room.saturating_sub(self.buf.len()));
                    }
                    Ok(None) => {}
                }
            }
            self.hand_over_if_complete();
        }
    }

    /// Room to read the rest of a large frame into, without the copy
    /// [`FrameReader::push`] makes: `Some` while the frame in progress has
    /// its header in and lacks at least `min` bytes, limited to what it
    /// lacks. Fill some of it (a `BufMut`), then call
    /// [`FrameReader::filled`].
    pub fn body_room(&mut self, min: usize) -> Option<bytes::buf::Limit<&mut Vec<u8>>> {
        if self.error.is_some() {
            return None;
        }
        let lacks = self.frame_in_progress_len()?.saturating_sub(self.buf.len());
        (lacks >= min.max(1)).then(|| bytes::BufMut::limit(&mut self.buf, lacks))
    }

    /// Bytes were read into [`FrameReader::body_room`].
    pub fn filled(&mut self) {
        self.hand_over_if_complete();
    }

    fn hand_over_if_complete(&mut self) {
        if self.is_complete() {
            let whole = std::mem::take(&mut self.buf);
            self.ready.push_back(parse_complete(Bytes::from(whole)));
        }
    }

    fn is_complete(&self) -> bool {
        self.frame_in_progress_len() == Some(self.buf.len())
    }

    /// The whole length of the frame in progress, once its header is in.
    fn frame_in_progress_len(&self) -> Option<usize> {
        let len = self.buf.get(4..8)?;
        (self.buf.len() >= HEADER_BYTES)
            .then(|| frame_len(u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize))
    }

    /// The next whole frame, `Ok(None)` if more bytes are needed, or the
    /// error that stopped decoding (repeated until [`resync`](Self::resync)).
    pub fn next_frame(&mut self) -> Result<Option<Frame>, WireError> {
        if let Some(f) = self.ready.pop_front() {
            return Ok(Some(f));
        }
        match &self.error {
            Some(e) => Err(e.clone()),
            None => Ok(None),
        }
    }

    /// After an error on a noisy byte stream (serial): drop the offending
    /// frame's first byte and everything up to the next possible magic, clear
    /// the error, and decode what follows. TCP callers close the connection
    /// instead. Does nothing when no error is pending.
    pub fn resync(&mut self) {
        if self.error.take().is_none() {
            return;
        }
        let rest = std::mem::take(&mut self.buf);
        let skip = next_magic(&rest[1.min(rest.len())..]).map_or(rest.len(), |p| p + 1);
        self.discarded += skip as u64;
        self.push(&rest[skip..]);
    }

    /// Raw bytes held that are not yet part of a returned or ready frame.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Bytes thrown away so far by [`resync`](Self::resync) or while an error
    /// was pending: a line-quality counter for serial links.
    pub fn discarded(&self) -> u64 {
        self.discarded
    }
}

/// Position of the first possible start of a magic in `bytes`: a full "TD",
/// or a lone 'T' at the very end (whose 'D' may still come).
fn next_magic(bytes: &[u8]) -> Option<usize> {
    (0..bytes.len()).find(|&i| {
        bytes[i] == MAGIC[0]
            && match bytes.get(i + 1) {
                Some(&b) => b == MAGIC[1],
                None => true,
            }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        encode(FrameKind::Data, 7, b"hello", [9; MAC_BYTES])
    }

    #[test]
    fn layout_is_as_documented() {
        let b = sample();
        assert_eq!(&b[..2], b"TD");
        assert_eq!(b[2], 4);
        assert_eq!(b[3], 4);
        assert_eq!(&b[4..8], &5u32.to_be_bytes());
        assert_eq!(&b[8..16], &7u64.to_be_bytes());
        assert_eq!(&b[16..21], b"hello");
        assert_eq!(&b[21..], &[9; 16]);
    }

    #[test]
    fn datagram_round_trip_and_trailing() {
        let b = sample();
        let f = decode_datagram(&b, 100).unwrap();
        assert_eq!(f.to_bytes(), b);
        let mut longer = b.clone();
        longer.push(0);
        assert_eq!(
            decode_datagram(&longer, 100),
            Err(WireError::TrailingBytes { extra: 1 })
        );
        assert_eq!(decode_datagram(&b[..20], 100), Err(WireError::Truncated));
        assert_eq!(decode_datagram(b"", 100), Err(WireError::Truncated));
        assert_eq!(decode_datagram(b"X", 100), Err(WireError::BadMagic));
        assert_eq!(
            decode_datagram(&b, 4),
            Err(WireError::TooLarge { len: 5, max: 4 })
        );
    }

    #[test]
    fn reader_reports_garbage_from_first_byte() {
        let mut r = FrameReader::new(100);
        r.push(b"Q");
        assert_eq!(r.next_frame(), Err(WireError::BadMagic));
        let mut r = FrameReader::new(100);
        r.push(b"TD\x01");
        assert_eq!(
            r.next_frame(),
            Err(WireError::VersionMismatch { theirs: 1, ours: 4 })
        );
        let mut r = FrameReader::new(100);
        r.push(&[b'T', b'D', PROTOCOL_VERSION, 9]);
        assert_eq!(r.next_frame(), Err(WireError::UnknownKind(9)));
    }

    #[test]
    fn a_large_body_is_read_into_its_frames_own_buffer() {
        use bytes::BufMut;
        let body: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let whole = encode(FrameKind::Data, 3, &body, [4; MAC_BYTES]);
        let next = sample();
        let mut r = FrameReader::new(1 << 20);
        assert!(r.body_room(1).is_none(), "no header yet");
        r.push(&whole[..HEADER_BYTES - 1]);
        assert!(r.body_room(1).is_none(), "no header yet");
        r.push(&whole[HEADER_BYTES - 1..1000]);
        assert!(r.body_room(whole.len()).is_none(), "lacks less than asked");
        // Filled in pieces, never past the frame's end.
        let mut at = 1000;
        while at < whole.len() {
            let mut room = r.body_room(1).unwrap();
            assert_eq!(room.remaining_mut(), whole.len() - at);
            let n = (whole.len() - at).min(30_000);
            room.put_slice(&whole[at..at + n]);
            at += n;
            r.filled();
        }
        assert!(r.body_room(1).is_none(), "the frame is complete");
        r.push(&next);
        let f = r.next_frame().unwrap().unwrap();
        assert_eq!((f.seq, &f.body[..]), (3, &body[..]));
        assert_eq!(r.next_frame().unwrap().unwrap().to_bytes(), next);
        assert_eq!(r.buffered(), 0);
    }

    #[test]
    fn a_sealed_frame_in_parts_is_written_from_any_offset() {
        let f = SealedFrame::new(vec![
            Bytes::from_static(b"head"),
            Bytes::new(),
            Bytes::from_static(b"12"),
            Bytes::from_static(b"345"),
        ]);
        assert_eq!((f.len(), f.to_vec()), (9, b"head12345".to_vec()));
        let at = |from: usize, max: usize| -> Vec<u8> {
            f.slices_from(from, max)
                .iter()
                .flat_map(|s| s.to_vec())
                .collect()
        };
        for from in 0..=9 {
            assert_eq!(at(from, 16), b"head12345"[from..].to_vec(), "from {from}");
        }
        assert_eq!(at(2, 1), b"ad");
        assert_eq!(at(4, 1), b"12", "an empty part is no slice");
        assert_eq!(at(5, 2), b"2345");
    }

    #[test]
    fn resync_skips_noise_between_frames() {
        let mut r = FrameReader::new(100);
        let mut stream = b"noise T noise".to_vec();
        stream.extend_from_slice(&sample());
        stream.extend_from_slice(b"TTD");
        stream.extend_from_slice(&sample());
        r.push(&stream);
        let mut frames = 0;
        for _ in 0..100 {
            match r.next_frame() {
                Ok(Some(_)) => frames += 1,
                Ok(None) => break,
                Err(_) => r.resync(),
            }
        }
        assert_eq!(frames, 2);
        assert_eq!(r.buffered(), 0);
        assert!(r.discarded() > 0);
    }

    #[test]
    fn lone_t_at_end_is_kept_for_resync() {
        assert_eq!(next_magic(b"abT"), Some(2));
        assert_eq!(next_magic(b"abTx"), None);
        assert_eq!(next_magic(b"TD"), Some(0));
    }
}
