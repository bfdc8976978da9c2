//! The node while standby: transaction apply, file apply, catch-up and
//! resync, promotion readiness. Each engine implements
//! `tandem_sync::resource::Resource` (the confirm step) once the node wires it.
//!
//! - [`replica`]: the standby's copy of a database, applying the primary's
//!   transactions atomically and durably while holding the write lock.
//! - [`files`]: the standby's copy of a file set; [`applied`]: its record
//!   of applies not yet in the kept manifest; `dir`: the directories it
//!   works in, held open so that no symlink swapped in is followed.
//! - [`position`]: the replica's crash-safe position record.
//! - [`seed`]: seeding an empty copy chunk by chunk; adopting the old
//!   primary's file as a replica after a switchover.

pub mod applied;
mod dir;
pub mod files;
pub mod position;
pub mod replica;
pub mod seed;

pub use replica::{Replica, ReplicaError, Verification};
pub use seed::{adopt, adopt_locked, forget_position, Seeder};

/// Ask the kernel to start writing `len` bytes of `file` from `offset` back
/// now (`len` 0: to the end), without waiting, so that a later fsync finds
/// most of it on disk already. Only a hint.
pub(crate) fn start_writeback(file: &std::fs::File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    // SAFETY: a plain system call on a descriptor `file` keeps open; no
    // memory is passed.
    unsafe {
        nix::libc::sync_file_range(
            file.as_raw_fd(),
            offset as i64,
            len as i64,
            nix::libc::SYNC_FILE_RANGE_WRITE,
        );
    }
}
