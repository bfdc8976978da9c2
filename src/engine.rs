//! What the resource engines (`db.rs`, `files.rs`) share: each runs on a
//! thread of its own with a current-thread runtime, so that blocking calls
//! (SQLite, fsync, directory scans) stall only that one resource.

use std::future::Future;
use std::sync::{Mutex, MutexGuard};

/// A lock that a panicked holder did not leave unusable: the engines' shared
/// state is plain data, valid after any completed write.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Runs the future `make` builds on a new thread named `thread`, on a
/// current-thread runtime; failures to start are logged as `what`'s.
pub fn spawn<F>(thread: String, what: String, make: impl FnOnce() -> F + Send + 'static)
where
    F: Future<Output = ()>,
{
    let label = what.clone();
    let spawned = std::thread::Builder::new().name(thread).spawn(move || {
        match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt.block_on(make()),
            Err(e) => tracing::error!("{label}: cannot start its runtime: {e}"),
        }
    });
    if let Err(e) = spawned {
        tracing::error!("{what}: cannot start its engine thread: {e}");
    }
}
