//! What the two nodes say to each other inside an authenticated session.
//!
//! Heartbeats travel on every heartbeat link (UDP, serial, LAN) and carry the
//! whole role state of the sender, so that any single link is enough to keep
//! the pair agreed. [`PeerMessage`]s travel on the replication link (TCP) and
//! carry the switchover conversation; later the database and file streams.
//!
//! Bodies are encoded with postcard. A body that does not decode is refused
//! with [`DecodeError`], never a panic.

use crate::dbsum::{DbPosition, DbSum, TxId};
use crate::lineage::EpochStart;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::fmt;

/// Grows by one at every promotion and is persisted (with fsync) before a node
/// acts in it. At most one node acts as primary in any epoch.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash,
)]
pub struct Epoch(pub u64);

impl Epoch {
    /// Saturating: an epoch of u64::MAX (which only a broken or forged peer
    /// could send) must not wrap to 0 or panic.
    pub fn next(self) -> Epoch {
        Epoch(self.0.saturating_add(1))
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// What a node is doing right now.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Its sources are the truth; it may be written. Only while it holds a lease.
    Primary,
    /// Applies what the primary sends; read-only.
    Standby,
    /// Neither: waiting for the peer or an operator.
    Fenced,
    /// Has persisted a new epoch and waits for the last condition (an
    /// acknowledgement from the peer, or the tie-breaker) before acting.
    Promoting,
    /// A primary handing over in a switchover: no longer acting, not yet standby.
    Demoting,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Primary => "primary",
            Role::Standby => "standby",
            Role::Fenced => "fenced",
            Role::Promoting => "promoting",
            Role::Demoting => "demoting",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The durable part of the role state: the newest epoch this node knows and
/// which node holds (was promoted in) it. `holder` is `None` only on a pair
/// that has never had a primary.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct EpochRecord {
    pub epoch: Epoch,
    pub holder: Option<String>,
}

/// Identifies one switchover operation from request to outcome.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct OpId(pub u64);

impl fmt::Display for OpId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "so-{:08x}", self.0)
    }
}

/// Round-trip measurement: the peer's `sent_ms` from its latest heartbeat on
/// this link, and how long we held it before answering.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct Echo {
    pub sent_ms: u64,
    pub held_ms: u64,
}

/// Sent on every heartbeat link every `heartbeat_interval_ms` by both nodes.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Heartbeat {
    pub node: String,
    pub epoch: Epoch,
    pub holder: Option<String>,
    pub role: Role,
    /// The sender's monotonic clock. Only ever compared with the sender's own
    /// clock (when it comes back in `ack_of`), so clocks need not agree.
    pub sent_ms: u64,
    /// A standby's lease grant: the `sent_ms` of the newest heartbeat it
    /// received from the holder of its epoch. Sending it promises not to
    /// promote until `dead_after_ms` after it last heard the holder.
    pub ack_of: Option<u64>,
    /// From the holder: it counts the peer as a joined standby and so keeps
    /// its lease. Only a standby that has seen this may fail over on its own.
    pub peer_joined: bool,
    /// The sender is shutting down on purpose (a standby that leaves stops
    /// being a failover candidate, so the primary no longer needs its lease).
    pub leaving: bool,
    /// Per-link counter, for loss accounting.
    pub link_seq: u64,
    /// Per-link round-trip measurement.
    pub echo: Option<Echo>,
}

/// A resource's replication position, compared in a switchover before the
/// standby promotes (database: txid and checksum; file set: seq and root).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Position {
    pub resource: String,
    pub seq: u64,
    pub digest: [u8; 32],
}

/// Messages on the replication link.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum PeerMessage {
    /// The operator asked the standby for a switchover; the primary runs it.
    SwitchoverRequest { op: OpId },
    /// The primary's progress report, relayed to an operator on the standby.
    SwitchoverStep {
        op: OpId,
        step: String,
        elapsed_ms: u64,
        outcome: Option<Result<(), String>>,
    },
    /// The old primary has stopped acting and drained: promote to `epoch + 1`
    /// if every position matches.
    Promote {
        op: OpId,
        epoch: Epoch,
        positions: Vec<Position>,
    },
    /// The standby persisted `epoch` and acts as primary in it.
    Promoted { op: OpId, epoch: Epoch },
    /// The standby will never promote for `op`.
    Declined { op: OpId, reasons: Vec<String> },
    /// The old primary lost track of `op` (timeout, lost link) and asks for
    /// its outcome; the answer is `Promoted` or `Declined`, and a standby that
    /// answers `Declined` refuses any later `Promote` for that op.
    Abandon { op: OpId },
    /// Keeps an idle connection proven alive (a cut cable sends no FIN).
    Keepalive,
    /// Primary to standby: one part of captured transaction `txid` of
    /// database `db`, committed in `epoch`. A transaction larger than a frame
    /// is cut into `parts` messages (`part` counts from 0), each with a share
    /// of its pages; the standby applies it once every part has arrived.
    DbTx(DbTx),
    /// Standby to primary: transaction `txid` is applied and durable, and the
    /// copy's checksum after it is `sum`.
    DbAck { db: String, txid: TxId, sum: DbSum },
    /// Standby to primary, on every (re)connection and when asked: where its
    /// copy stands. `None`: it has no copy yet and asks to be seeded.
    DbHello {
        db: String,
        epoch: Epoch,
        position: Option<DbPosition>,
        /// The copy's range hashes, for a page-hash resync if it is needed.
        ranges: Option<CopyRanges>,
    },
    /// Primary to standby: say where you stand (a `DbHello`), and keep this
    /// database's history (to judge copies that rejoin, once primary).
    DbAsk {
        db: String,
        history: Vec<EpochStart>,
    },
    /// Primary to standby: the standby's copy is behind what the primary
    /// still holds; these are the primary's page hashes, from page `first`
    /// on, of page ranges whose hashes differ from the copy's, in a snapshot
    /// at `position`. The standby answers each with `DbResyncNeed`; the
    /// pages then come as `DbSeed` chunks, applied in one transaction.
    DbResyncPlan(DbResyncPlan),
    /// Standby to primary: the pages of one `DbResyncPlan` that differ.
    DbResyncNeed {
        db: String,
        pgnos: Vec<u32>,
        last: bool,
    },
    /// Primary to standby: the copy holds transactions this primary's line
    /// never had (`reason` says which): move it to quarantine, whole, and
    /// ask to be seeded.
    DbQuarantine {
        db: String,
        epoch: Epoch,
        reason: String,
    },
    /// Primary to standby: one chunk of the image that seeds an empty copy.
    DbSeed(DbSeed),
    /// Standby to primary: every seed page below `next_pgno` is written
    /// (flow control); `done` once the copy is complete and opened.
    DbSeedAck {
        db: String,
        next_pgno: u32,
        done: bool,
    },
    /// Standby to primary: it cannot follow (diverged, a seed that failed);
    /// the primary reports it and stops shipping until the next hello.
    DbRefused { db: String, reason: String },
    /// Primary to standby, sent after every part of transaction `at.txid`
    /// (so the standby, reading in order, is at `at` when it reads this):
    /// check the copy from scratch (checksum from every page, `PRAGMA
    /// integrity_check`, range hashes) and answer with `DbVerified`.
    DbVerify { db: String, id: u64, at: DbPosition },
    /// Standby to primary: the answer to `DbVerify`.
    DbVerified(DbVerified),
    /// Standby to primary: an operator on the standby asked for a verify;
    /// run it and answer with `DbVerifyReport`.
    DbVerifyRequest { db: String, id: u64 },
    /// Primary to standby: the outcome of a `DbVerifyRequest`, as the JSON
    /// the control API returns (an object with `identical`, or `error`).
    DbVerifyReport { db: String, id: u64, report: String },
    /// A file set's conversation (see [`crate::filemsg`]). Boxed: a change
    /// carries two manifest entries, and every other message would pay for
    /// its size.
    Fs(Box<crate::filemsg::FsMessage>),
    /// Primary to standby: a barrier waits for `upto`; apply what is
    /// received up to it at once rather than with the next group.
    DbFlush { db: String, upto: TxId },
}

/// The standby's own check of its copy (see [`PeerMessage::DbVerify`]).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct DbVerified {
    pub db: String,
    pub id: u64,
    /// Where tandem says the copy stands; `None` when it has no open copy.
    pub position: Option<DbPosition>,
    /// The checksum recomputed from every page of the file, if it was read.
    pub sum_from_pages: Option<DbSum>,
    pub page_count: u32,
    /// `PRAGMA integrity_check`'s lines (`["ok"]` when sound).
    pub integrity: Vec<String>,
    /// [`crate::dbsum::PageHashes::range_hashes`] over `range_pages` pages.
    pub range_pages: u32,
    pub ranges: Vec<[u8; 32]>,
    /// Why the copy could not be (fully) checked, or why it is not followed.
    pub error: Option<String>,
}

/// A copy's page-range hashes ([`crate::dbsum::PageHashes::range_hashes`]
/// over [`crate::dbsum::RANGE_PAGES`] pages).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct CopyRanges {
    pub page_size: u32,
    pub page_count: u32,
    pub hashes: Vec<[u8; 32]>,
}

/// See [`PeerMessage::DbResyncPlan`].
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct DbResyncPlan {
    pub db: String,
    pub epoch: Epoch,
    pub position: DbPosition,
    pub page_size: u32,
    pub page_count: u32,
    /// The page number of `hashes[0]`.
    pub first: u32,
    pub hashes: Vec<[u8; 32]>,
    pub last: bool,
}

/// One part of a captured transaction (see [`PeerMessage::DbTx`]).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct DbTx {
    pub db: String,
    pub epoch: Epoch,
    pub txid: TxId,
    /// The whole-database checksum after the transaction, on the primary.
    pub sum: DbSum,
    pub db_pages_after_commit: u32,
    pub part: u32,
    pub parts: u32,
    /// (page number, page image), ascending.
    #[serde(with = "page_images")]
    pub pages: Vec<(u32, Vec<u8>)>,
}

/// One chunk of a seed image (see [`PeerMessage::DbSeed`]). Chunks come in
/// ascending page order; the image is the primary's database at `position`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct DbSeed {
    pub db: String,
    pub epoch: Epoch,
    pub position: DbPosition,
    pub page_size: u32,
    pub page_count: u32,
    /// (page number, page image), ascending; empty in a last chunk of an
    /// empty database.
    #[serde(with = "page_images")]
    pub pages: Vec<(u32, Vec<u8>)>,
    /// This chunk ends the image.
    pub last: bool,
}

/// Page images as byte strings. postcard writes a `Vec<u8>` the same way
/// (a length, then the bytes) but through serde one element at a time, which
/// was a measurable share of the engines' CPU; this is the same encoding in
/// one copy.
mod page_images {
    use serde::{Deserialize, Deserializer, Serializer};
    use serde_bytes::{ByteBuf, Bytes};

    pub fn serialize<S: Serializer>(pages: &[(u32, Vec<u8>)], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(pages.iter().map(|(n, d)| (n, Bytes::new(d))))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<(u32, Vec<u8>)>, D::Error> {
        let pages: Vec<(u32, ByteBuf)> = Deserialize::deserialize(d)?;
        Ok(pages.into_iter().map(|(n, b)| (n, b.into_vec())).collect())
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("malformed {what} body: {reason}")]
pub struct DecodeError {
    pub what: &'static str,
    pub reason: String,
}

pub fn encode<T: Serialize>(msg: &T) -> Vec<u8> {
    // Encoding our own plain structs into a Vec cannot fail.
    postcard::to_allocvec(msg).expect("postcard encoding of an in-memory message")
}

/// [`encode`] into a [`crate::wire::body_buffer`] of the exact size, for
/// `auth::Session::seal_in_place`: the message is written once, where the
/// frame is sent from (not grown step by step, then copied into a frame).
pub fn encode_for_frame<T: Serialize>(msg: &T) -> Vec<u8> {
    encode_behind(msg, 0)
}

/// `msg` encoded into a [`crate::wire::body_buffer`] behind `room` more
/// bytes (zeros).
fn encode_behind<T: Serialize>(msg: &T, room: usize) -> Vec<u8> {
    // As in `encode`: counting and encoding plain structs cannot fail.
    let len = postcard::experimental::serialized_size(msg)
        .expect("postcard size of an in-memory message");
    let mut frame = crate::wire::body_buffer(room + len);
    frame.resize(crate::wire::HEADER_BYTES + room, 0);
    postcard::to_extend(msg, frame).expect("postcard encoding of an in-memory message")
}

/// A message encoded for a frame, not sealed yet.
pub enum Unsealed {
    /// For `Session::seal_in_place`.
    Data(Vec<u8>),
    /// For `Session::seal_attached`: room for the header and the
    /// payload's length, then the payload; and the attachment in parts.
    Attached {
        head: Vec<u8>,
        attachment: Vec<Bytes>,
    },
}

/// Encode `msg` for a frame. The bytes of a file set's chunks go as the
/// frame's attachment, which the MAC does not cover: the payload names
/// each piece by its blake3 hash, and [`decode_attached`] checks every
/// piece against it, so they are as authenticated as the payload without
/// a second keyed pass over them on each side. Anything else is a Data
/// frame, its bytes under the MAC.
pub fn encode_unsealed(mut msg: PeerMessage) -> Unsealed {
    let pieces = match &mut msg {
        PeerMessage::Fs(m) => m.detach_chunks(),
        _ => Vec::new(),
    };
    if pieces.is_empty() {
        return Unsealed::Data(encode_for_frame(&msg));
    }
    // Room for the payload's length, filled in when sealed; each piece
    // goes behind its length, from where it is.
    let head = encode_behind(&msg, 4);
    let lens: Vec<u8> = pieces
        .iter()
        .flat_map(|p| (p.len() as u32).to_be_bytes())
        .collect();
    let lens = Bytes::from(lens);
    let mut attachment = Vec::with_capacity(2 * pieces.len());
    for (i, p) in pieces.into_iter().enumerate() {
        attachment.push(lens.slice(4 * i..4 * i + 4));
        attachment.push(p);
    }
    Unsealed::Attached { head, attachment }
}

/// Decode a peer message and put its attachment back where it belongs
/// (see [`encode_unsealed`]); only a file set's chunks take one. Every
/// chunk's bytes, attached or in the payload, are checked against their
/// hash here, once: a mismatch is an error like a bad MAC, which ends the
/// connection. This is the only way a peer message is decoded.
pub fn decode_attached(payload: &[u8], attachment: &Bytes) -> Result<PeerMessage, DecodeError> {
    let mut msg: PeerMessage = decode("peer message", payload)?;
    let checked = match (&mut msg, attachment.is_empty()) {
        (PeerMessage::Fs(m), true) => m.check_chunk_hashes().map_err(|e| e.to_string()),
        (PeerMessage::Fs(m), false) => m.attach_chunks(attachment).map_err(|e| e.to_string()),
        (_, true) => Ok(()),
        (_, false) => Err("an attachment to a message that takes none".to_string()),
    };
    checked.map_err(|reason| DecodeError {
        what: "peer message",
        reason,
    })?;
    Ok(msg)
}

pub fn decode<'a, T: Deserialize<'a>>(
    what: &'static str,
    bytes: &'a [u8],
) -> Result<T, DecodeError> {
    match postcard::take_from_bytes::<T>(bytes) {
        Ok((value, [])) => Ok(value),
        Ok((_, rest)) => Err(DecodeError {
            what,
            reason: format!("{} trailing bytes", rest.len()),
        }),
        Err(e) => Err(DecodeError {
            what,
            reason: e.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Page images as byte strings are the bytes postcard wrote for them as
    /// a plain `Vec<u8>`: nodes of either build understand each other.
    #[test]
    fn page_images_keep_the_plain_encoding() {
        #[derive(Serialize)]
        struct Plain {
            pages: Vec<(u32, Vec<u8>)>,
        }
        #[derive(Serialize, Deserialize, Debug, PartialEq)]
        struct AsBytes {
            #[serde(with = "page_images")]
            pages: Vec<(u32, Vec<u8>)>,
        }
        let pages = vec![
            (1, vec![0u8, 1, 255, 128]),
            (7, vec![9; 300]),
            (8, Vec::new()),
        ];
        let plain = encode(&Plain {
            pages: pages.clone(),
        });
        assert_eq!(
            encode(&AsBytes {
                pages: pages.clone()
            }),
            plain
        );
        assert_eq!(decode::<AsBytes>("pages", &plain), Ok(AsBytes { pages }));
        assert!(decode::<AsBytes>("pages", &plain[..plain.len() - 1]).is_err());
    }

    #[test]
    fn heartbeat_round_trips_and_garbage_is_refused() {
        let hb = Heartbeat {
            node: "a".into(),
            epoch: Epoch(7),
            holder: Some("a".into()),
            role: Role::Primary,
            sent_ms: 123,
            ack_of: None,
            peer_joined: true,
            leaving: false,
            link_seq: 9,
            echo: Some(Echo {
                sent_ms: 100,
                held_ms: 3,
            }),
        };
        let bytes = encode(&hb);
        assert_eq!(decode::<Heartbeat>("heartbeat", &bytes).unwrap(), hb);
        for cut in 0..bytes.len() {
            assert!(decode::<Heartbeat>("heartbeat", &bytes[..cut]).is_err());
        }
        let mut long = bytes.clone();
        long.push(0);
        assert!(decode::<Heartbeat>("heartbeat", &long).is_err());
    }
}
