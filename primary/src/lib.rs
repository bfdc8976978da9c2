//! The node while primary: WAL capture and checkpoint ownership, the write
//! fence, the file watcher and sender. Each engine implements
//! `tandem_sync::resource::Resource` once the node wires it.
//!
//! - [`capture`]: reads every committed transaction of a database from its
//!   WAL, numbers it and keeps the rolling checksum; owns checkpoints.
//! - [`gate`]: a place in the kernel's queue for SQLite's WAL write lock.

pub mod capture;
pub mod files;
pub mod gate;

pub use capture::{Capture, CaptureError, Captured, CheckpointOutcome, OpenOutcome, Snapshot};
