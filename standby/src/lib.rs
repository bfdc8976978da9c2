//! The node while standby: transaction apply, file apply, catch-up and
//! resync, promotion readiness. Each engine implements
//! `tandem_sync::resource::Resource` (the confirm step) once the node wires it.
//!
//! - [`replica`]: the standby's copy of a database, applying the primary's
//!   transactions atomically and durably while holding the write lock.
//! - [`files`]: the standby's copy of a file set; [`applied`]: its record
//!   of applies not yet in the kept manifest.
//! - [`position`]: the replica's crash-safe position record.
//! - [`seed`]: seeding an empty copy chunk by chunk; adopting the old
//!   primary's file as a replica after a switchover.

pub mod applied;
pub mod files;
pub mod position;
pub mod replica;
pub mod seed;

pub use replica::{Replica, ReplicaError, Verification};
pub use seed::{adopt, adopt_locked, forget_position, Seeder};
