//! The pair's shared language and brain, without I/O.
//!
//! Everything here is deterministic: no sockets, no files, no clock and no
//! global randomness. Time arrives as milliseconds on the caller's monotonic
//! clock and randomness (handshake nonces) as bytes, so the role machine can be
//! driven by a seeded simulation with partitions, pauses and crashes, and a
//! failing seed replays exactly.
//!
//! - [`wire`]: versioned, length-prefixed frames with a size cap.
//! - [`auth`]: the pre-shared pair key, the handshake and authenticated sessions.
//! - [`message`]: what the two nodes say to each other inside a session.
//! - [`role`]: the role machine (roles, epochs, leases, failover, switchover).
//! - [`chunk`], [`manifest`], [`delta`], [`filemsg`]: file sets (chunks,
//!   manifests, what crosses the wire).
//! - [`resource`]: the seam through which databases, file sets and serial ports
//!   take part in a switchover.

pub mod auth;
pub mod chunk;
pub mod dbsum;
pub mod delta;
pub mod filemsg;
pub mod fileset;
pub mod lineage;
pub mod manifest;
pub mod message;
pub mod resource;
pub mod role;
pub mod wal;
pub mod wire;

pub use message::{Epoch, Role};
