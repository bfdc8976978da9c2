//! The node while standby: transaction apply, file apply, catch-up and
//! resync, promotion readiness. Each engine implements
//! `tandem_sync::resource::Resource` (the confirm step) once the node wires it.
//!
//! - [`replica`]: the standby's copy of a database, applying the primary's
//!   transactions atomically and durably while holding the write lock.
//! - [`position`]: the replica's crash-safe position record.

pub mod position;
pub mod replica;

pub use replica::{Replica, ReplicaError, Verification};
