//! The switchover seam: how databases, file sets and serial ports take part in
//! a graceful switchover.
//!
//! The node runs a switchover as: pre-checks, demote (every resource
//! [`Resource::fence`]s), drain (the old primary ships what it owes and returns
//! its final [`Position`]s), confirm (the standby checks its own positions
//! equal those), promote. Anything that fails before the promotion point makes
//! the node call [`Resource::unfence`] on every resource it fenced, and the old
//! primary stays primary.
//!
//! This is the one place in `sync/` that describes I/O: the trait is the shared
//! language between the node supervisor and the engines in `primary/`,
//! `standby/` and `serial-gw/`, which cannot depend on each other. The
//! implementations live there.

use crate::message::Position;
use std::time::Duration;

/// A failure of one resource in a switchover step, reported to the operator
/// as a named reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{resource}: {reason}")]
pub struct ResourceError {
    pub resource: String,
    pub reason: String,
}

#[async_trait::async_trait]
pub trait Resource: Send + Sync {
    /// The name operators see, e.g. `database hydro`.
    fn name(&self) -> String;

    /// Why a switchover should not start now ("database hydro is 12
    /// transactions behind"). Empty when ready.
    async fn precheck(&self) -> Vec<String>;

    /// On the old primary: stop local writers (take the write lock, close
    /// serial sessions). After this nothing new is produced.
    async fn fence(&self) -> Result<(), ResourceError>;

    /// Rollback of [`Resource::fence`] when the switchover fails before the
    /// promotion point.
    async fn unfence(&self) -> Result<(), ResourceError>;

    /// On the old primary: ship everything owed to the standby, wait for its
    /// acknowledgement, and return the final position.
    async fn drain(&self, within: Duration) -> Result<Position, ResourceError>;

    /// On the standby: check that the local copy is exactly at `expected`.
    async fn confirm(&self, expected: &Position) -> Result<(), ResourceError>;
}
