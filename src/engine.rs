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

/// The nice value of the engine threads (and of the threads they start:
/// scans, fsyncs). Replication yields the CPU to the application it
/// protects: with both at work on a busy machine, the application's
/// threads go first and tandem's take the rest (a third of what equal
/// shares would give them, when the application wants everything). A
/// writer at full speed beside the demo pair waited 9.3 µs per transaction
/// for a CPU at nice 0 and 4.7 at 5, and committed 3% more (three
/// alternated runs, `/proc/<pid>/schedstat`). Heartbeats and the role
/// machine run on other threads, at the normal priority.
const ENGINE_NICE: i32 = 5;

/// Runs the future `make` builds on a new thread named `thread`, at
/// [`ENGINE_NICE`], on a current-thread runtime; failures to start are
/// logged as `what`'s.
pub fn spawn<F>(thread: String, what: String, make: impl FnOnce() -> F + Send + 'static)
where
    F: Future<Output = ()>,
{
    let label = what.clone();
    let spawned = std::thread::Builder::new().name(thread).spawn(move || {
        // On Linux the nice value is per thread, and `who` 0 is the calling
        // one. SAFETY: a plain system call; raising a nice value is always
        // permitted, and a failure only leaves the thread as it was.
        if unsafe { nix::libc::setpriority(nix::libc::PRIO_PROCESS, 0, ENGINE_NICE) } != 0 {
            tracing::debug!(
                "{label}: cannot lower its thread's priority: {}",
                std::io::Error::last_os_error()
            );
        }
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
