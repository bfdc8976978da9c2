//! The database engines: one per `[[database]]`, following the node's role.
//!
//! While this node acts as primary (or is demoting in a switchover), the
//! engine holds a [`Capture`] on the database, woken by changes to its `-wal`
//! file (inotify, see [`crate::walwatch`], with a fallback poll), and ships each
//! captured transaction to the standby as [`PeerMessage::DbTx`] parts. It
//! keeps every shipped transaction until the standby acknowledges it (the
//! in-memory *queue*, bounded by `spool_bytes_max` and [`QUEUE_BYTES_MAX`]),
//! so that a standby that reconnects resumes where it stands, and it
//! checkpoints only what was acknowledged. While this node is standby, the
//! engine holds a [`Replica`], applies each transaction, acknowledges it
//! ([`PeerMessage::DbAck`], grouped: see `StandbySide::ack_owed`), and seeds
//! an empty copy from the primary's image.
//!
//! # One actor per database
//!
//! Each engine runs on its own thread with a small current-thread runtime:
//! SQLite calls block (fsync, checkpoints), and they block only that
//! database. Everything reaches it through one bounded inbox, in order:
//! messages from the peer, switchover steps, barriers. That order is what
//! makes the switchover's confirm step sound: the `Promote` message is read
//! after every `DbTx` before it, so the confirm request queued by it is
//! handled after they were applied.
//!
//! # Positions across a role swap
//!
//! Exactly one record says where a copy stands: the replica's position
//! sidecar (`<db>.tandem-position`) while it is a standby's copy, the
//! capture's state file (`<data_dir>/databases/<name>.capture`) while it is
//! the primary's. Becoming primary, the engine reads the replica's position,
//! removes the sidecar and opens the capture at that position
//! ([`Capture::open_at`]), so txids continue. Becoming standby, it takes the
//! capture's position and writes a fresh sidecar ([`tandem_standby::adopt`]),
//! which recomputes the checksum from the pages. At start-up a sidecar, when
//! present, wins: it is removed before a capture ever runs on the file.
//!
//! # The standby's first contact
//!
//! On every new replication connection, and when the primary asks
//! ([`PeerMessage::DbAsk`]), the standby says where it stands
//! ([`PeerMessage::DbHello`], with its copy's page-range hashes). The
//! primary resends from there if its queue still holds the transactions and
//! seeds the copy if the standby has none. A copy that is on the primary's
//! line of history ([`tandem_sync::lineage`]) but behind what the queue holds
//! is *resynced by page hashes*: the primary takes a snapshot, compares its
//! range hashes with the copy's, sends its page hashes of the ranges that
//! differ ([`PeerMessage::DbResyncPlan`]), the standby asks for the pages
//! whose hashes differ ([`PeerMessage::DbResyncNeed`]), and they come as seed
//! chunks, applied in one transaction checked against the snapshot's sum.
//!
//! A copy that holds transactions the primary's line never had (an old
//! primary killed before its standby received its last transactions, or a
//! local write) is *quarantined*: moved whole into `<data_dir>/quarantine/`
//! (beside the database if that is another file system), never overwritten,
//! with an alarm naming the directory and the txids beyond the common point;
//! then the standby is seeded anew. The history (which epoch began after
//! which position) is kept in `<data_dir>/databases/<name>.history` on both
//! nodes: the primary records each epoch it begins and gives the list to its
//! standby with every [`PeerMessage::DbAsk`].
//!
//! # Verify
//!
//! `tandem verify` compares both copies at the same txid. The primary takes
//! a read snapshot at the end of what was committed (its txid and the
//! capture's checksum), hashes every page of it from scratch on a thread of
//! its own, and sends [`PeerMessage::DbVerify`] behind the last transaction
//! of the snapshot: the standby reads its inbox in order, so it is at that
//! txid when it checks its copy ([`Replica::verify`]: checksum from every
//! page, `PRAGMA integrity_check`, range hashes) and answers. When the sums
//! differ, the range hashes (blake3 over 256 page hashes) name the page
//! ranges that differ. A standby that could not open its copy answers from
//! the file as it is. On the standby, verify asks the primary to run it.
//!
//! # The WAL stays under its cap
//!
//! Past a quarter of `wal_bytes_max` of log in use, the engine backfills
//! every frame and moves the pin so that the log restarts at its beginning
//! (the file stops growing); past half of it, the file is also cut by a
//! TRUNCATE checkpoint ([`Capture::truncate`]). Every lock wait is bounded
//! (tens of ms; a failed attempt is retried 20 ms later). What the standby
//! is owed stays in the queue, so while it is away (or past half the cap
//! even while it streams) frames it has not acknowledged are checkpointed
//! too; past the queue's own cap it is let go and the standby needs a
//! resync.
//!
//! # The fence follows the role
//!
//! Local software may commit to this node's copy only while the node is
//! `Primary`. In every other role (fenced after a lapsed lease, promoting,
//! demoting, standby, shutting down) the engine holds SQLite's write lock:
//! the standby's [`Replica`] holds it itself between applies; otherwise the
//! engine's *fence* connection holds `BEGIN IMMEDIATE`. The fence is derived
//! from the role the engine sees, never from who asked: the switchover's
//! [`Resource::fence`] only waits for it (the switchover demotes first), and
//! [`Resource::unfence`] does nothing, since every way back to primary (a
//! rollback, a declined promotion, a regained lease) is a role change.
//! A writer holding the lock delays the fence; the engine retries every
//! [`POLL_EVERY`] and raises an alarm after [`FENCE_ALARM_AFTER`]. A primary
//! that is fenced keeps its capture: what was committed before the fence
//! took hold is still read and shipped.

use crate::node::Node;
use crate::walwatch::WalWatch;
use anyhow::Context;
use rusqlite::Connection;
use serde_json::json;
use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tandem_config::Database;
use tandem_primary::{Capture, OpenOutcome, Snapshot};
use tandem_standby::{Replica, ReplicaError, Seeder};
use tandem_sync::dbsum::{differing_ranges, DbPosition, DbSum, PageHashes, TxId, RANGE_PAGES};
use tandem_sync::lineage::{judge, record_start, EpochStart, Lineage};
use tandem_sync::message::{
    CopyRanges, DbResyncPlan, DbSeed, DbTx, DbVerified, Epoch, PeerMessage, Position, Role,
};
use tandem_sync::resource::{Resource, ResourceError};
use tandem_sync::wal::{Salts, Transaction};
use tokio::sync::{mpsc, oneshot};

/// Page bytes per `DbTx` part: well under the 16 MiB frame cap.
const PART_BYTES_MAX: usize = 4 << 20;
/// A transaction the standby reassembles may not exceed this.
const TX_BYTES_MAX: u64 = 2 << 30;
/// Unacknowledged transactions kept in memory for resending, at most.
const QUEUE_BYTES_MAX: u64 = 256 << 20;
/// Transactions shipped and not yet acknowledged, at most (flow control: the
/// replication link's outbox holds 1024 messages).
const IN_FLIGHT_TX_MAX: u64 = 256;
/// Page hashes per `DbResyncPlan` (2 MiB of hashes).
const PLAN_PAGES: u32 = 65536;
/// A standby applies at most this many received transactions, or bytes of
/// pages, in one SQLite transaction.
const BATCH_TX_MAX: usize = 1000;
const BATCH_BYTES_MAX: u64 = 64 << 20;
/// Pages per seed chunk, and chunks in flight.
const SEED_CHUNK_PAGES: u32 = 256;
const SEED_WINDOW_CHUNKS: u32 = 8;
/// Fallback poll of the WAL when no change notification comes.
const POLL_EVERY: Duration = Duration::from_millis(50);
/// How often the WAL is read while it keeps growing (the watch paused).
const WAL_READ_EVERY_BUSY: Duration = Duration::from_millis(1);
/// While a standby streams, the log is restarted once this much of it is in
/// use (or [`RESTART_AT_PERCENT`] of the cap, if less): SQLite's own default
/// (1000 pages) is about this, and a small log is overwritten in place,
/// which keeps the application's commits cheap. Larger is worse:
/// restarting at 16 MiB took a writer at full speed from 0.77-0.94 of its
/// rate alone to 0.64-0.73 (three alternated runs). The likely cause, not
/// profiled: past 1000 frames each commit of an application with SQLite's
/// default autocheckpoint tries a checkpoint, over a log the pin holds.
const RESTART_AT_BYTES: u64 = 4 << 20;
/// How long writers are held off, at most, while a log restart waits for
/// the standby's acknowledgements.
const RESTART_HOLD_MAX: Duration = Duration::from_millis(20);
/// A standby applies (an fsync) at most once in this time; what arrives
/// meanwhile is applied together. The time grows with the batches (see
/// `flush_every_after`).
const FLUSH_EVERY_MIN: Duration = Duration::from_millis(2);
/// The longest a standby lets received transactions wait while they stream
/// in faster than one per [`FLUSH_EVERY_MIN`].
const FLUSH_EVERY_MAX: Duration = Duration::from_millis(10);
/// The smallest batch after which the next may wait longer.
const FLUSH_GROW_AT: usize = 4;
/// A standby acknowledges what it applied at most this often while
/// transactions stream in (see `StandbySide::ack_owed`), and at the latest
/// this long after the last acknowledgement.
const ACK_EVERY: Duration = Duration::from_millis(20);
/// ... and without waiting once this many applied transactions are not
/// acknowledged: a quarter of the primary's window.
const ACK_AFTER_TX: u64 = IN_FLIGHT_TX_MAX / 4;

/// A position record that could not be made durable is tried again after
/// [`ACK_EVERY`], then twice as long each time, up to this.
const SETTLE_RETRY_MAX: Duration = Duration::from_secs(2);
/// ... and the failure is logged once every this many tries.
const SETTLE_TRIES_PER_LOG: u32 = 30;

/// How long the position record waits after the last apply (or the last
/// failed try) before it is made durable, after `failures` failed tries.
fn settle_after(failures: u32) -> Duration {
    ACK_EVERY
        .saturating_mul(1 << failures.min(16))
        .min(SETTLE_RETRY_MAX)
}

/// Status is rebuilt at most this often (and at every tick).
const PUBLISH_EVERY: Duration = Duration::from_millis(10);
/// Checkpoint at most this often while acknowledgements flow.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(200);
/// A seed or resync that has neither sent nor heard anything for this long
/// is begun again (see `PrimarySide::transfer_moved_at`). What it sent may
/// wait behind the outbox's 64 MiB (file-set rounds share the link): two
/// minutes drain that at 4.5 Mbit/s.
const TRANSFER_STALL_MAX: Duration = Duration::from_secs(120);
/// A switchover waits for a standby at most this many transactions behind.
const SWITCHOVER_LAG_TX_MAX: u64 = 1000;
/// Once the log in use is past this share of `wal_bytes_max` (per cent),
/// every frame is backfilled and the pin moved so that the log restarts at
/// its beginning: early enough that a writer going on meanwhile stays under
/// the cap.
const RESTART_AT_PERCENT: u64 = 25;
/// A WAL file past this share of the cap is cut (a TRUNCATE checkpoint);
/// and past it, frames a streaming standby has not acknowledged yet are
/// checkpointed too (the queue still holds what it is owed).
const CUT_AT_PERCENT: u64 = 50;
/// A TRUNCATE checkpoint waits at most this for each lock it needs; after
/// an attempt that failed, twice as long as the last, up to
/// [`TRUNCATE_WAIT_MAX`] (waiting for tandem's write lock costs writers
/// nothing; a writer that never pauses can win it many times in a row).
const TRUNCATE_WAIT: Duration = Duration::from_millis(30);
const TRUNCATE_WAIT_MAX: Duration = Duration::from_millis(240);
/// After an attempt that could not cut the WAL, the next one waits this.
const TRUNCATE_RETRY: Duration = Duration::from_millis(20);
/// A verify relayed from the standby waits this long for the answers.
const VERIFY_WAIT: Duration = Duration::from_secs(60);
/// Inbox depth: a full inbox makes the replication reader wait (backpressure).
const INBOX: usize = 64;
/// One attempt at the fence's write lock waits at most this for a writer.
const FENCE_ATTEMPT: Duration = Duration::from_millis(100);
/// A fence not in place this long after it was wanted raises an alarm.
const FENCE_ALARM_AFTER: Duration = Duration::from_secs(1);
/// A switchover's fence step waits this long for the fence.
const FENCE_WAIT: Duration = Duration::from_secs(5);

/// What reaches an engine, in order.
enum Input {
    Peer(PeerMessage),
    Precheck(oneshot::Sender<Vec<String>>),
    /// Answered once the role-driven fence is in place, or after the wait.
    Fence(Duration, oneshot::Sender<Result<(), String>>),
    /// Ship everything; answered with the target position and a receiver
    /// that fires once the standby acknowledged it (barrier and drain).
    Barrier(oneshot::Sender<Result<Waiting, String>>),
    Confirm(Position, oneshot::Sender<Result<(), String>>),
    /// `tandem verify` on the primary: take a read snapshot, ask the standby
    /// to check its copy once it is at the snapshot's txid.
    Verify(oneshot::Sender<Result<VerifyStart, String>>),
}

/// A verify under way on the primary: the snapshot's position, its page
/// hashes (read on a thread of their own), and the standby's answer.
struct VerifyStart {
    at: DbPosition,
    primary: oneshot::Receiver<Result<PageHashes, String>>,
    standby: oneshot::Receiver<DbVerified>,
    id: u64,
}

struct Waiting {
    target: DbPosition,
    acked: oneshot::Receiver<DbPosition>,
}

/// One `[[database]]`. See the module doc.
pub struct DbEngine {
    pub name: String,
    path: PathBuf,
    state_path: PathBuf,
    /// This database's [`EpochStart`]s, as JSON.
    history_path: PathBuf,
    /// Where diverged copies are moved, whole.
    quarantine_dir: PathBuf,
    wal_bytes_max: u64,
    queue_bytes_max: u64,
    inbox: mpsc::Sender<Input>,
    inbox_rx: Mutex<Option<mpsc::Receiver<Input>>>,
    status: Mutex<serde_json::Value>,
    verify_seq: AtomicU64,
    /// Primary: verifies waiting for the standby's `DbVerified`, by id.
    verified: Mutex<HashMap<u64, oneshot::Sender<DbVerified>>>,
    /// Standby: verifies relayed to the primary, waiting for its report.
    reports: Mutex<HashMap<u64, oneshot::Sender<String>>>,
}

impl DbEngine {
    pub fn new(db: &Database, path: PathBuf, data_dir: &Path) -> Arc<DbEngine> {
        let (inbox, rx) = mpsc::channel(INBOX);
        Arc::new(DbEngine {
            name: db.name.clone(),
            state_path: data_dir
                .join("databases")
                .join(format!("{}.capture", db.name)),
            history_path: data_dir
                .join("databases")
                .join(format!("{}.history", db.name)),
            quarantine_dir: data_dir.join("quarantine"),
            status: Mutex::new(json!({
                "name": db.name, "path": path.display().to_string(), "mode": "inactive",
            })),
            path,
            wal_bytes_max: db.wal_bytes_max,
            queue_bytes_max: db.spool_bytes_max.min(QUEUE_BYTES_MAX),
            inbox,
            inbox_rx: Mutex::new(Some(rx)),
            verify_seq: AtomicU64::new(1),
            verified: Mutex::new(HashMap::new()),
            reports: Mutex::new(HashMap::new()),
        })
    }

    pub fn status(&self) -> serde_json::Value {
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Input) -> Result<T, String> {
        let (tx, rx) = oneshot::channel();
        self.inbox
            .send(make(tx))
            .await
            .map_err(|_| "the database engine has stopped".to_string())?;
        rx.await
            .map_err(|_| "the database engine has stopped".to_string())
    }

    fn error(&self, reason: impl Into<String>) -> ResourceError {
        ResourceError {
            resource: self.resource_name(),
            reason: reason.into(),
        }
    }

    /// Moves this node's copy (the database, its `-wal` and `-shm`, the
    /// position sidecar) whole into a new quarantine directory, named after
    /// the database, its txid and the time; returns that directory. Beside
    /// the database when the data dir is on another file system (a rename
    /// cannot cross it, and a copy could fill the disk).
    fn quarantine(&self, at: Option<DbPosition>) -> std::io::Result<PathBuf> {
        let files: Vec<PathBuf> = copy_files(&self.path)
            .into_iter()
            .filter(|f| f.exists())
            .collect();
        let at = at.map_or(String::new(), |a| format!("-txid{}", a.txid));
        let name = format!("{}{at}-{}", self.name, unix_ms());
        let moved = |dir: PathBuf| -> std::io::Result<PathBuf> {
            std::fs::create_dir_all(&dir)?;
            for f in &files {
                std::fs::rename(f, dir.join(f.file_name().unwrap_or_default()))?;
            }
            std::fs::File::open(&dir)?.sync_all()?;
            Ok(dir)
        };
        let beside = self
            .path
            .parent()
            .unwrap_or(Path::new("."))
            .join(".tandem-quarantine");
        moved(self.quarantine_dir.join(&name)).or_else(|_| moved(beside.join(&name)))
    }

    fn resource_name(&self) -> String {
        format!("database {}", self.name)
    }

    /// Wait until the standby acknowledged everything committed before now.
    pub async fn barrier(&self, within: Duration) -> Result<DbPosition, BarrierError> {
        // The whole call is bounded: an engine busy with a long checkpoint
        // counts against the caller's timeout too.
        let deadline = tokio::time::Instant::now() + within;
        let timed_out = || {
            BarrierError::TimedOut(format!(
                "database {}: no answer within {} ms",
                self.name,
                within.as_millis()
            ))
        };
        let waiting = tokio::time::timeout_at(deadline, self.ask(Input::Barrier))
            .await
            .map_err(|_| timed_out())?
            .map_err(BarrierError::Refused)?
            .map_err(BarrierError::Refused)?;
        let target = waiting.target;
        match tokio::time::timeout_at(deadline, waiting.acked).await {
            Ok(Ok(_)) => Ok(target),
            Ok(Err(_)) => Err(BarrierError::Refused(format!(
                "database {}: the wait for txid {} was abandoned (role change or divergence)",
                self.name, target.txid
            ))),
            Err(_) => Err(BarrierError::TimedOut(format!(
                "database {}: the standby has not acknowledged txid {} within {} ms",
                self.name,
                target.txid,
                within.as_millis()
            ))),
        }
    }
}

impl DbEngine {
    /// `tandem verify` of this database, run on the primary: see
    /// [`PeerMessage::DbVerify`]. The report is a JSON object; see
    /// [`compose_verify`].
    pub async fn verify(&self, within: Duration) -> Result<serde_json::Value, String> {
        let started = Instant::now();
        let start = self.ask(Input::Verify).await??;
        let primary = match tokio::time::timeout(within, start.primary).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err("reading the primary's copy stopped".to_string()),
            Err(_) => Err(format!(
                "reading the primary's copy took more than {} ms",
                within.as_millis()
            )),
        };
        let left = within.saturating_sub(started.elapsed());
        let standby = match tokio::time::timeout(left, start.standby).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(_)) => Err("the standby did not answer (the connection was lost)".to_string()),
            Err(_) => Err(format!(
                "the standby did not answer within {} ms",
                within.as_millis()
            )),
        };
        lock(&self.verified).remove(&start.id);
        Ok(compose_verify(&self.name, start.at, primary, standby))
    }

    /// `tandem verify` on the standby: the primary runs it and reports.
    async fn verify_via_primary(
        &self,
        node: &Node,
        within: Duration,
    ) -> Result<serde_json::Value, String> {
        let id = self.verify_seq.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        lock(&self.reports).insert(id, tx);
        let sent = node.peer_link.send(PeerMessage::DbVerifyRequest {
            db: self.name.clone(),
            id,
        });
        let out = match sent {
            Err(e) => Err(format!("cannot reach the primary: {e}")),
            Ok(()) => match tokio::time::timeout(within, rx).await {
                Ok(Ok(text)) => serde_json::from_str(&text)
                    .map_err(|e| format!("malformed verify report from the primary: {e}")),
                Ok(Err(_)) => Err("the primary's report was lost".to_string()),
                Err(_) => Err(format!(
                    "the primary did not report within {} ms",
                    within.as_millis()
                )),
            },
        };
        lock(&self.reports).remove(&id);
        out
    }
}

use crate::engine::lock;

/// The verify report of one database: the primary's position `at` (from a
/// read snapshot), its pages' hashes read from scratch, and the standby's
/// own check. `identical` only when both files sum to the same value at the
/// same txid, each matches the position tandem records for it, and the
/// standby's integrity check is clean; `complete` when both sides were read.
fn compose_verify(
    db: &str,
    at: DbPosition,
    primary: Result<PageHashes, String>,
    standby: Result<DbVerified, String>,
) -> serde_json::Value {
    let mut differences: Vec<String> = Vec::new();
    let mut complete = true;
    let mut ranges: Vec<(u32, u32)> = Vec::new();
    let p_sum = match &primary {
        Ok(h) => {
            if h.sum() != at.sum {
                differences.push(format!(
                    "the primary's file sums to {} at txid {}, but its capture counts {}",
                    h.sum(),
                    at.txid,
                    at.sum
                ));
            }
            Some(h.sum())
        }
        Err(e) => {
            complete = false;
            differences.push(format!("the primary's copy could not be read: {e}"));
            None
        }
    };
    let mut standby_json = serde_json::Value::Null;
    match &standby {
        Err(e) => {
            complete = false;
            differences.push(e.clone());
        }
        Ok(v) => {
            if let Some(e) = &v.error {
                differences.push(format!("the standby: {e}"));
            }
            match v.position {
                None => differences.push("the standby has no open copy".into()),
                Some(pos) if pos.txid != at.txid => differences.push(format!(
                    "the standby is at txid {}, the primary at txid {}",
                    pos.txid, at.txid
                )),
                Some(pos) if pos.sum != at.sum => differences.push(format!(
                    "at txid {} the standby records checksum {}, the primary {}",
                    at.txid, pos.sum, at.sum
                )),
                Some(_) => {}
            }
            match (v.sum_from_pages, v.position) {
                (None, _) => complete = false,
                (Some(s), Some(pos)) if s != pos.sum => differences.push(format!(
                    "the standby's file sums to {s}, not to the checksum {} tandem records for it at txid {}: it was written outside tandem",
                    pos.sum, pos.txid
                )),
                _ => {}
            }
            if let (Some(s), Some(ps), Ok(h)) = (v.sum_from_pages, p_sum, &primary) {
                if s != ps {
                    differences.push(format!(
                        "the files differ: the standby's sums to {s}, the primary's to {ps}"
                    ));
                    ranges = differing_ranges(
                        &h.range_hashes(v.range_pages),
                        h.page_count(),
                        &v.ranges,
                        v.page_count,
                        v.range_pages,
                    );
                }
            }
            if v.sum_from_pages.is_some() && v.integrity != ["ok"] {
                let lines: Vec<&str> = v.integrity.iter().take(10).map(String::as_str).collect();
                differences.push(format!(
                    "integrity_check on the standby: {}",
                    lines.join("; ")
                ));
            }
            standby_json = json!({
                "position": pos_json(v.position),
                "sum_from_pages": v.sum_from_pages.map(|s| s.to_hex()),
                "page_count": v.page_count,
                "integrity": v.integrity,
                "error": v.error,
            });
        }
    }
    json!({
        "db": db,
        "identical": differences.is_empty(),
        "complete": complete,
        "txid": at.txid.0,
        "primary": {
            "position": pos_json(Some(at)),
            "sum_from_pages": p_sum.map(|s| s.to_hex()),
            "page_count": primary.as_ref().map_or(0, |h| h.page_count()),
        },
        "standby": standby_json,
        "differences": differences,
        "differing_pages": ranges.iter().map(|(a, b)| json!({"first": a, "last": b})).collect::<Vec<_>>(),
    })
}

/// `tandem verify`: on the primary, each database compares itself with the
/// standby; on the standby, the primary is asked to.
pub async fn verify(
    node: &Arc<Node>,
    db: Option<&str>,
    within: Duration,
) -> Result<serde_json::Value, String> {
    let role = node.role();
    if !matches!(role, Role::Primary | Role::Standby) {
        return Err(format!(
            "this node ({}) is {role}: verify compares a primary's copy with its standby's; run it when the pair is up",
            node.me
        ));
    }
    let chosen: Vec<&Arc<DbEngine>> = node
        .databases
        .iter()
        .filter(|e| db.is_none_or(|d| d == e.name))
        .collect();
    if chosen.is_empty() {
        return Err(match db {
            Some(d) => format!("no database {d} in the config"),
            None => "no database is configured".into(),
        });
    }
    let started = Instant::now();
    let mut out = Vec::new();
    for e in chosen {
        let left = within.saturating_sub(started.elapsed());
        let report = if role == Role::Primary {
            e.verify(left).await
        } else {
            e.verify_via_primary(node, left).await
        };
        out.push(report.map_err(|w| format!("database {}: {w}", e.name))?);
    }
    let identical = out.iter().all(|r| r["identical"] == true);
    let complete = out.iter().all(|r| r["complete"] == true);
    Ok(json!({
        "identical": identical,
        "complete": complete,
        "databases": out,
        "elapsed_ms": started.elapsed().as_millis() as u64,
    }))
}

/// The human report of `tandem verify`.
pub fn render_verify(v: &serde_json::Value) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    for d in v["databases"].as_array().into_iter().flatten() {
        let name = d["db"].as_str().unwrap_or("?");
        let sum = d["primary"]["position"]["sum"].as_str().unwrap_or("?");
        if d["identical"] == true {
            let _ = writeln!(
                out,
                "database {name}: IDENTICAL at txid {} (checksum {sum}); standby integrity_check ok",
                d["txid"]
            );
            continue;
        }
        let verdict = if d["complete"] == true {
            "DIFFERENT"
        } else {
            "NOT VERIFIED"
        };
        let _ = writeln!(
            out,
            "database {name}: {verdict} (primary at txid {}, checksum {sum})",
            d["txid"]
        );
        for w in d["differences"].as_array().into_iter().flatten() {
            let _ = writeln!(out, "  - {}", w.as_str().unwrap_or("?"));
        }
        let ranges: Vec<String> = d["differing_pages"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| format!("{}-{}", r["first"], r["last"]))
            .collect();
        if !ranges.is_empty() {
            let _ = writeln!(out, "  pages that differ: {}", ranges.join(", "));
        }
    }
    out
}

pub enum BarrierError {
    TimedOut(String),
    Refused(String),
}

#[async_trait::async_trait]
impl Resource for DbEngine {
    fn name(&self) -> String {
        self.resource_name()
    }

    async fn precheck(&self) -> Vec<String> {
        self.ask(Input::Precheck).await.unwrap_or_else(|e| vec![e])
    }

    /// The fence follows the role (the switchover has demoted this node
    /// already): wait until it is in place, within bounds, since a writer's
    /// open transaction delays it.
    async fn fence(&self) -> Result<(), ResourceError> {
        self.ask(|tx| Input::Fence(FENCE_WAIT, tx))
            .await
            .and_then(|r| r)
            .map_err(|e| self.error(e))
    }

    /// Nothing to do: the fence is lifted when, and only when, the role
    /// becomes primary again (a rollback or a declined promotion does that).
    /// Lifting it here would unlock a node that resumed fenced.
    async fn unfence(&self) -> Result<(), ResourceError> {
        Ok(())
    }

    async fn drain(&self, within: Duration) -> Result<Position, ResourceError> {
        match self.barrier(within).await {
            Ok(p) => Ok(Position {
                resource: self.resource_name(),
                seq: p.txid.0,
                digest: p.sum.0,
            }),
            Err(BarrierError::TimedOut(e) | BarrierError::Refused(e)) => Err(self.error(e)),
        }
    }

    async fn confirm(&self, expected: &Position) -> Result<(), ResourceError> {
        let expected = expected.clone();
        self.ask(|tx| Input::Confirm(expected, tx))
            .await
            .and_then(|r| r)
            .map_err(|e| self.error(e))
    }
}

/// Build the engines of every `[[database]]` of this node.
pub fn engines(cfg: &tandem_config::Config, me: &str) -> Vec<Arc<DbEngine>> {
    let Some(node_cfg) = cfg.node(me) else {
        return Vec::new();
    };
    let data_dir = cfg.data_dir(node_cfg);
    cfg.databases
        .iter()
        .map(|db| DbEngine::new(db, node_cfg.prefixed(&db.path), &data_dir))
        .collect()
}

/// Start every engine's thread.
pub fn start(node: &Arc<Node>) {
    for engine in &node.databases {
        let Some(rx) = lock(&engine.inbox_rx).take() else {
            continue;
        };
        let (node, engine) = (node.clone(), engine.clone());
        crate::engine::spawn(
            format!("db-{}", engine.name),
            format!("database {}", engine.name),
            move || Actor::new(node, engine).run(rx),
        );
    }
}

/// Route a database message from the peer to its engine.
pub async fn on_peer_message(node: &Arc<Node>, msg: PeerMessage) {
    // Answers to a waiting verify go straight to the waiter.
    match msg {
        PeerMessage::DbVerified(v) => {
            if let Some(e) = node.databases.iter().find(|e| e.name == v.db) {
                if let Some(w) = lock(&e.verified).remove(&v.id) {
                    let _ = w.send(v);
                }
            }
            return;
        }
        PeerMessage::DbVerifyReport { db, id, report } => {
            if let Some(e) = node.databases.iter().find(|e| e.name == db) {
                if let Some(w) = lock(&e.reports).remove(&id) {
                    let _ = w.send(report);
                }
            }
            return;
        }
        _ => {}
    }
    let db = match &msg {
        PeerMessage::DbTx(t) => &t.db,
        PeerMessage::DbSeed(s) => &s.db,
        PeerMessage::DbResyncPlan(p) => &p.db,
        PeerMessage::DbAck { db, .. }
        | PeerMessage::DbFlush { db, .. }
        | PeerMessage::DbHello { db, .. }
        | PeerMessage::DbAsk { db, .. }
        | PeerMessage::DbResyncNeed { db, .. }
        | PeerMessage::DbQuarantine { db, .. }
        | PeerMessage::DbSeedAck { db, .. }
        | PeerMessage::DbRefused { db, .. }
        | PeerMessage::DbVerify { db, .. }
        | PeerMessage::DbVerifyRequest { db, .. } => db,
        _ => return,
    };
    match node.databases.iter().find(|e| &e.name == db) {
        Some(e) => {
            let _ = e.inbox.send(Input::Peer(msg)).await;
        }
        None => tracing::warn!(
            "the peer speaks of database {db}, which is not configured on {}",
            node.me
        ),
    }
}

/// `tandem barrier`: wait on every database (or the one named).
pub async fn barrier(
    node: &Arc<Node>,
    db: Option<&str>,
    within: Duration,
) -> Result<serde_json::Value, BarrierError> {
    let role = node.role();
    if role != Role::Primary {
        return Err(BarrierError::Refused(format!(
            "this node ({}) is {role}: call the barrier on the primary{}",
            node.me,
            if role == Role::Standby {
                format!(", {}", node.peer)
            } else {
                String::new()
            }
        )));
    }
    let chosen: Vec<&Arc<DbEngine>> = node
        .databases
        .iter()
        .filter(|e| db.is_none_or(|d| d == e.name))
        .collect();
    if chosen.is_empty() {
        return Err(BarrierError::Refused(match db {
            Some(d) => format!("no database {d} in the config"),
            None => "no database is configured".into(),
        }));
    }
    let started = Instant::now();
    let mut out = Vec::new();
    for e in chosen {
        let left = within.saturating_sub(started.elapsed());
        let p = e.barrier(left).await?;
        out.push(json!({"db": e.name, "txid": p.txid.0, "sum": p.sum.to_hex()}));
    }
    Ok(json!({ "databases": out, "elapsed_ms": started.elapsed().as_millis() as u64 }))
}

/// A captured transaction kept until the standby acknowledges it.
struct Queued {
    txid: TxId,
    sum: DbSum,
    tx: Transaction,
    bytes: u64,
    captured: Instant,
}

/// What the spool held when it was let go, kept for status until the
/// standby acknowledges past it (a seed or resync brought it back): it is
/// as far behind as before, and more so with every commit since.
#[derive(Clone, Copy)]
struct LetGo {
    /// The standby's position then (it lacks every txid after it).
    txid: TxId,
    /// When the oldest transaction it lacks was captured.
    since: Instant,
    /// The bytes let go (each time, if more than once).
    bytes: u64,
}

/// What the primary knows of the standby's copy.
#[derive(Clone, PartialEq)]
enum Peer {
    /// No hello on this connection yet.
    Unknown,
    Streaming,
    Seeding,
    /// A page-hash resync is under way (`PrimarySide::resync`).
    Resyncing,
    NeedsResync(String),
    Diverged(String),
}

struct SeedOut {
    snap: Snapshot,
    next: u32,
    acked_next: u32,
}

/// A page-hash resync on the primary: the snapshot it is taken from, its
/// page hashes, and the pages the standby asked for.
struct ResyncOut {
    snap: Snapshot,
    /// Pages asked for by `DbResyncNeed`, in order; all asked once `complete`.
    need: Vec<u32>,
    complete: bool,
    /// `need[..next]` are sent, `need[..acked]` written by the standby.
    next: usize,
    acked: usize,
    /// Whether the closing chunk (`last`) was sent.
    closed: bool,
}

struct PrimarySide {
    capture: Capture,
    /// Queue entries are contiguous from `base.txid + 1`; `base` is the
    /// newest position the standby is known to have (or the capture's
    /// position when nothing is queued and nobody acknowledged).
    base: DbPosition,
    queue: VecDeque<Queued>,
    queue_bytes: u64,
    /// The spool was let go since the standby last caught up.
    let_go: Option<LetGo>,
    shipped_to: TxId,
    peer: Peer,
    /// The standby's last acknowledged position.
    acked: Option<DbPosition>,
    waiters: Vec<(TxId, oneshot::Sender<DbPosition>)>,
    seed: Option<SeedOut>,
    resync: Option<ResyncOut>,
    /// An epoch in which this node was primary and committed transactions
    /// it did not count one by one (see `become_primary`): a standby's copy
    /// of that epoch holds only this node's transactions, so it is resynced
    /// by page hashes, whatever its txid says.
    uncounted_epoch: Option<Epoch>,
    /// Txids at most this are inside a seed image: not queued.
    skip_to: TxId,
    checkpointed_to: TxId,
    last_checkpoint: Option<serde_json::Value>,
    checkpoint_at: Instant,
    /// When [`Capture::replaced`] last looked at the database's path.
    identity_checked_at: Instant,
    asked_at: Option<Instant>,
    /// A resync could not start (a local writer held the write lock): the
    /// standby is asked again where it stands, and the resync tried again.
    resync_retry: bool,
    /// When a seed or resync last moved (begun, sent a chunk, or the standby
    /// answered): one that stalls (a message the full outbox refused: a
    /// plan, the standby's last need, ack or hello) is let go after
    /// [`TRANSFER_STALL_MAX`], its snapshot with it (the snapshot holds the
    /// WAL), and the standby asked where it stands.
    transfer_moved_at: Instant,
    /// Verifies to send to the standby once everything up to their txid is
    /// shipped (id and the primary's snapshot position), kept until their
    /// answer comes: a `DbVerify` the full outbox refused, or queued on a
    /// connection that then dropped, is sent again (the flag: queued on
    /// the live connection).
    verify_out: Vec<(u64, DbPosition, bool)>,
    /// The last TRUNCATE checkpoint tried, and the last that cut the WAL.
    truncate_tried: Option<Instant>,
    last_truncate: Option<serde_json::Value>,
    truncations: u64,
    resets: u64,
    truncate_wait: Duration,
    /// Attempts that did not reset the WAL, by reason.
    reset_failures: std::collections::BTreeMap<String, u64>,
    /// Why the last attempt did not cut the WAL (cleared when one does).
    truncate_failed: Option<String>,
}

#[derive(Clone, PartialEq)]
enum CopyState {
    Streaming,
    Seeding,
    /// Taking the pages of a page-hash resync to `at`, to apply them in one
    /// transaction.
    Resyncing(Box<ResyncIn>),
    NeedsResync(String),
    Diverged(String),
}

#[derive(Clone, PartialEq)]
struct ResyncIn {
    at: DbPosition,
    page_count: u32,
    pages: Vec<(u32, Vec<u8>)>,
    bytes: u64,
}

struct Partial {
    head: DbTx,
    pages: Vec<(u32, Vec<u8>)>,
    bytes: u64,
}

struct StandbySide {
    replica: Option<Replica>,
    seeder: Option<Seeder>,
    state: CopyState,
    partial: Option<Partial>,
    /// Whole transactions received and not applied yet (see `flush_batch`).
    batch: Vec<(Epoch, TxId, Transaction, DbSum)>,
    batch_bytes: u64,
    /// When the last batch was applied, and how long the next one may wait
    /// after it (see [`FLUSH_EVERY_MIN`]).
    flushed_at: Option<Instant>,
    flush_every: Duration,
    /// A barrier on the primary waits for this txid: up to it, no grouping.
    flush_upto: TxId,
    /// Applied and not acknowledged yet. An acknowledgement only lets the
    /// primary forget what it keeps for the standby and checkpoint; whoever
    /// waits for one (a barrier, a switchover's drain, a log restart) sends
    /// `DbFlush`, which is answered at once. So while transactions stream
    /// in, one acknowledgement per [`ACK_EVERY`] does: at 200 tx/s an
    /// acknowledgement per transaction was a send here and two thread
    /// wake-ups on the primary each, about a tenth of both nodes' CPU.
    ack_owed: Option<DbPosition>,
    /// The bytes of the transactions applied since the last acknowledgement.
    ack_owed_bytes: u64,
    /// When the last acknowledgement was sent, and its txid.
    acked: Option<(Instant, TxId)>,
    /// When the last apply whose position record is not durable yet was
    /// made: the record is made durable once none followed for
    /// [`ACK_EVERY`] (see `tandem_standby::position`).
    unsettled_since: Option<Instant>,
    /// Tries in a row that failed to make the position record durable.
    settle_failures: u32,
    /// The newest (txid, sum) the primary shipped.
    primary: Option<(TxId, DbSum)>,
    hello_at: Option<Instant>,
    /// An apply failed for a passing reason: say where we stand again soon.
    retry: bool,
}

enum Side {
    Idle,
    Primary(Box<PrimarySide>),
    Standby(Box<StandbySide>),
    /// Could not open as `Role`; retried after a pause or a role change.
    Failed(Role, String, Instant),
}

struct Actor {
    node: Arc<Node>,
    e: Arc<DbEngine>,
    side: Side,
    role: Role,
    epoch: Epoch,
    fence: Fence,
    /// This database's line of history (see [`tandem_sync::lineage`]).
    history: Vec<EpochStart>,
}

/// The engine's own hold on the write lock; see "The fence follows the role".
#[derive(Default)]
struct Fence {
    /// A connection inside `BEGIN IMMEDIATE`, while the fence is in place.
    conn: Option<Connection>,
    /// Since when the fence is wanted and not in place.
    wanted_since: Option<Instant>,
    /// The last attempt, so that a writer holding the lock is not asked
    /// again on every event.
    tried_at: Option<Instant>,
    /// Why the last attempt failed.
    error: Option<String>,
    alarmed: bool,
    /// Switchover fence steps waiting for the fence: deadline and answer.
    waiters: Vec<(Instant, oneshot::Sender<Result<(), String>>)>,
}

/// WAL bytes in use past which a log restart is due while streaming.
fn restart_at(cap: u64) -> u64 {
    (cap / 100 * RESTART_AT_PERCENT).min(RESTART_AT_BYTES)
}

/// How long a standby lets what it receives wait after applying a batch of
/// `applied` transactions: [`FLUSH_EVERY_MIN`] while they come a few at a
/// time, longer (n batched, n times as long, up to [`FLUSH_EVERY_MAX`])
/// once a batch holds [`FLUSH_GROW_AT`] or more. Each apply was two fsyncs
/// then; on a disk the application also writes (both nodes of the demo pair
/// share one), a standby applying every 2 ms under a busy writer sent the
/// disk about a thousand flushes a second and took a fifth of the writer's
/// throughput. A batch counts what came during the last apply too, so a
/// writer's jitter makes batches of two now and then at 200 tx/s: those do
/// not make the next one wait (a fixed 4 ms wait left a 5 ms p99 lag at
/// that rate). A barrier never waits (`DbFlush`), nor a batch that fills
/// half the primary's window (see `flush_due`).
fn flush_every_after(applied: usize) -> Duration {
    if applied < FLUSH_GROW_AT {
        return FLUSH_EVERY_MIN;
    }
    FLUSH_EVERY_MIN
        .saturating_mul(u32::try_from(applied).unwrap_or(u32::MAX))
        .min(FLUSH_EVERY_MAX)
}

fn unix_ms() -> u64 {
    crate::node::unix_ms()
}

/// One chunk of pages of `snap` (a seed's image, or a resync's pages).
fn seed_chunk(
    db: &str,
    epoch: Epoch,
    snap: &Snapshot,
    pages: Vec<(u32, Vec<u8>)>,
    last: bool,
) -> PeerMessage {
    PeerMessage::DbSeed(DbSeed {
        db: db.to_string(),
        epoch,
        position: snap.position,
        page_size: snap.page_size,
        page_count: snap.page_count,
        pages,
        last,
    })
}

/// The history recorded at `path`; none when there is no file. A file that
/// cannot be read is reported and treated as no history: copies are then
/// judged by txid and checksum alone, as before any epoch change.
fn load_history(path: &Path) -> Vec<EpochStart> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            tracing::error!("{}: {e}; ignoring this history", path.display());
            Vec::new()
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => {
            tracing::error!("{}: {e}; ignoring this history", path.display());
            Vec::new()
        }
    }
}

/// Writes the history durably (temp file, fsync, rename, directory fsync).
fn save_history(path: &Path, history: &[EpochStart]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = path.with_extension("history.tmp");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&serde_json::to_vec_pretty(history).unwrap_or_default())?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

/// The files that make up the SQLite database at `db`, and tandem's
/// position sidecar beside it.
fn copy_files(db: &Path) -> Vec<PathBuf> {
    ["", "-wal", "-shm", ".tandem-position"]
        .iter()
        .map(|suffix| {
            let mut s = db.as_os_str().to_owned();
            s.push(suffix);
            PathBuf::from(s)
        })
        .collect()
}

fn wal_path(db: &Path) -> PathBuf {
    let mut s = db.as_os_str().to_owned();
    s.push("-wal");
    PathBuf::from(s)
}

fn pos_json(p: Option<DbPosition>) -> serde_json::Value {
    match p {
        Some(p) => json!({"epoch": p.epoch.0, "txid": p.txid.0, "sum": p.sum.to_hex()}),
        None => serde_json::Value::Null,
    }
}

impl Actor {
    fn new(node: Arc<Node>, e: Arc<DbEngine>) -> Actor {
        let history = load_history(&e.history_path);
        Actor {
            node,
            e,
            side: Side::Idle,
            role: Role::Fenced,
            epoch: Epoch(0),
            fence: Fence::default(),
            history,
        }
    }

    /// Runs until the process ends: a graceful stop fences the node (its
    /// role becomes fenced), and the fence must hold until the very end, so
    /// the engine does not stop on the shutdown signal.
    async fn run(mut self, mut inbox: mpsc::Receiver<Input>) {
        let mut roles = self.node.role_signal();
        let mut connections = self.node.peer_link.connections();
        // Only a primary reads the WAL; a standby's own applies would wake
        // it for nothing (its WAL and position file are in the directory).
        let mut watching: Option<Option<WalWatch>> = None;
        // While the WAL keeps growing, it is read at this time, not at each
        // write: see `crate::walwatch`.
        let mut read_wal_at: Option<Instant> = None;
        let mut published_at: Option<Instant> = None;
        let mut tick = tokio::time::interval(POLL_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let (role, epoch) = *roles.borrow_and_update();
            if role != self.role {
                // What a standby received is applied before it leaves that
                // role (a forced promotion included), as before any input.
                self.flush_batch();
                self.send_owed_ack();
                // A new role: try the fence at once, not at the next tick.
                self.fence.tried_at = None;
            }
            self.role = role;
            self.epoch = epoch;
            self.follow_role();
            self.step_restart();
            self.keep_fence();
            match (&self.side, &watching) {
                (Side::Primary(_), None) => watching = Some(self.watch_wal()),
                (Side::Primary(_), Some(_)) => {}
                _ => watching = None,
            }
            // Building the status at every turn of a busy loop was a
            // measurable share of the engine's CPU (rebuilding it whenever a
            // position moved, still a third of it at 200 tx/s): at most
            // every 10 ms is fresh enough for people and scripts, and the
            // tick publishes what the last turns left.
            if published_at.is_none_or(|t| t.elapsed() >= PUBLISH_EVERY) {
                self.publish();
                published_at = Some(Instant::now());
            }
            let flush_at = self.flush_due();
            let ack_at = match (self.ack_due(), self.settle_due()) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            tokio::select! {
                r = roles.changed() => if r.is_err() { break },
                c = connections.changed() => {
                    if c.is_err() { break }
                    self.on_connected();
                }
                input = inbox.recv() => match input {
                    Some(i) => {
                        // A message that came on a new connection is taken
                        // after the engine has seen that connection (which
                        // resets what was shipped on the old one), however
                        // `select!` ordered the two wakeups: a hello handled
                        // first had its seed reset and stalled.
                        if connections.has_changed().unwrap_or(false) {
                            connections.borrow_and_update();
                            self.on_connected();
                        }
                        self.handle(i);
                        // Take what else is already there into the batch.
                        while self.batch_pending() {
                            match inbox.try_recv() {
                                Ok(i) => self.handle(i),
                                Err(_) => break,
                            }
                        }
                        if self.flush_due().is_some_and(|t| t <= Instant::now()) {
                            self.flush_batch();
                        }
                    }
                    None => break,
                },
                _ = async {
                    match flush_at {
                        Some(t) => tokio::time::sleep_until(t.into()).await,
                        None => std::future::pending().await,
                    }
                } => self.flush_batch(),
                _ = async {
                    match ack_at {
                        Some(t) => tokio::time::sleep_until(t.into()).await,
                        None => std::future::pending().await,
                    }
                } => {
                    if self.ack_due().is_some_and(|t| t <= Instant::now()) {
                        self.send_owed_ack();
                    }
                    self.settle_position();
                }
                changed = async {
                    match &watching {
                        Some(Some(w)) => w.changed().await,
                        _ => std::future::pending().await,
                    }
                } => {
                    if let Err(e) = changed {
                        tracing::warn!("database {}: WAL watch ended: {e}; watching again", self.e.name);
                        watching = None;
                    }
                    read_wal_at = self.read_wal(watching.as_mut().and_then(Option::as_mut));
                }
                _ = async {
                    match read_wal_at {
                        Some(t) => tokio::time::sleep_until(t.into()).await,
                        None => std::future::pending().await,
                    }
                } => read_wal_at = self.read_wal(watching.as_mut().and_then(Option::as_mut)),
                _ = tick.tick() => {
                    self.on_tick();
                    published_at = None;
                }
            }
        }
        tracing::debug!("database {}: engine stopped", self.e.name);
    }

    /// inotify on the database's directory, filtered to its `-wal` file (the
    /// file itself may not exist yet). Missing it only costs latency: the
    /// fallback poll still runs.
    fn watch_wal(&self) -> Option<WalWatch> {
        let wal = wal_path(&self.e.path);
        if let Some(dir) = wal.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        WalWatch::new(&wal)
            .map_err(|e| {
                tracing::warn!(
                    "database {}: cannot watch {}: {e}; polling every {} ms",
                    self.e.name,
                    wal.display(),
                    POLL_EVERY.as_millis()
                )
            })
            .ok()
    }

    /// Reads the WAL after a change: while it keeps growing fast, the watch
    /// is paused and the next read is timed (the returned instant); once a
    /// read finds nothing new, the watch wakes the engine again.
    fn read_wal(&mut self, watch: Option<&mut WalWatch>) -> Option<Instant> {
        let grew = self.poll_and_ship();
        self.bound_wal();
        let watch = watch?;
        let busy = if grew {
            watch.busy(Instant::now())
        } else if watch.paused() {
            if let Err(e) = watch.resume() {
                // The watch reports it ended, and is made again.
                tracing::warn!("database {}: WAL watch: {e}", self.e.name);
                return None;
            }
            // What was written between the last read and the watch's return.
            let grew = self.poll_and_ship();
            if grew {
                self.bound_wal();
                watch.busy(Instant::now());
            }
            grew
        } else {
            false
        };
        let again = busy.then(|| {
            watch.pause();
            Instant::now() + WAL_READ_EVERY_BUSY
        });
        // A large transaction being written is read again when due, not at
        // every write (the watch stays armed: its commit may be the last).
        again.or_else(|| self.read_again_at())
    }

    fn read_again_at(&self) -> Option<Instant> {
        match &self.side {
            Side::Primary(p) => p.capture.read_again_at(),
            _ => None,
        }
    }

    fn alarm(&self, message: Option<String>) {
        self.node
            .db_alarm(&format!("database {}", self.e.name), message);
    }

    // ----- following the role -------------------------------------------

    /// Open the side the role calls for. Fenced and promoting keep the side
    /// they have (a primary's capture goes on reading what was committed
    /// before the fence); [`Actor::keep_fence`] locks out writers.
    fn follow_role(&mut self) {
        let wanted = match self.role {
            Role::Primary | Role::Demoting => Role::Primary,
            Role::Standby => Role::Standby,
            Role::Fenced | Role::Promoting => return,
        };
        match (&self.side, wanted) {
            (Side::Primary(_), Role::Primary) | (Side::Standby(_), Role::Standby) => return,
            (Side::Failed(r, _, at), _)
                if *r == wanted && at.elapsed() < Duration::from_secs(3) =>
            {
                return
            }
            _ => {}
        }
        // Opening either side takes the write lock itself (the capture for a
        // moment, the replica for good): each lets go of the fence first. It
        // is taken again after this if the role still calls for it.
        let side = std::mem::replace(&mut self.side, Side::Idle);
        let opened = match wanted {
            Role::Primary => {
                self.release_fence();
                self.become_primary(side)
            }
            _ => self.become_standby(side),
        };
        self.side = match opened {
            Ok(side) => side,
            Err(e) => {
                let why = format!(
                    "database {}: cannot open {} as {}: {e:#}",
                    self.e.name,
                    self.e.path.display(),
                    wanted
                );
                tracing::error!("{why}");
                self.alarm(Some(why.clone()));
                Side::Failed(wanted, why, Instant::now())
            }
        };
        if matches!(self.side, Side::Primary(_) | Side::Standby(_)) {
            self.alarm(None);
        }
        match &mut self.side {
            Side::Primary(_) => {
                self.ask_standby();
            }
            Side::Standby(_) => self.hello(),
            _ => {}
        }
    }

    // ----- the fence -------------------------------------------------------

    /// Whether local writers are locked out of the copy: by the fence, or by
    /// the standby's replica, which holds the write lock between applies.
    fn locked(&self) -> bool {
        self.fence.conn.is_some() || matches!(&self.side, Side::Standby(s) if s.replica.is_some())
    }

    /// Whether the engine's own fence is called for: in every role but
    /// primary, unless the standby side holds the lock itself (its replica
    /// does; while it waits for a seed there is no copy yet, and the seeder
    /// writes it).
    fn fence_wanted(&self) -> bool {
        self.role != Role::Primary && !matches!(self.side, Side::Standby(_))
    }

    fn release_fence(&mut self) {
        if let Some(c) = self.fence.conn.take() {
            // Should the role still call for it, take it again at once.
            self.fence.tried_at = None;
            let _ = c.execute_batch("ROLLBACK");
            if self.role == Role::Primary {
                tracing::info!(
                    "database {}: unfenced (primary): local writers may commit",
                    self.e.name
                );
            } else {
                // A side is being opened, which takes the write lock itself.
                tracing::debug!(
                    "database {}: the fence hands over the write lock",
                    self.e.name
                );
            }
        }
    }

    fn fence_alarm(&mut self, message: Option<String>) {
        if message.is_none() && !self.fence.alarmed {
            return;
        }
        self.fence.alarmed = message.is_some();
        self.node
            .db_alarm(&format!("database {} fence", self.e.name), message);
    }

    /// Make the fence match the role: lifted while primary, in place in every
    /// other role. A writer holding the lock delays it; it is tried again
    /// every [`POLL_EVERY`], with an alarm after [`FENCE_ALARM_AFTER`]. Then
    /// answer the switchover's fence steps.
    fn keep_fence(&mut self) {
        if !self.fence_wanted() {
            self.release_fence();
            self.fence.wanted_since = None;
            self.fence.error = None;
            self.fence_alarm(None);
        } else if self.fence.conn.is_none() {
            let since = *self.fence.wanted_since.get_or_insert_with(Instant::now);
            let due = self
                .fence
                .tried_at
                .is_none_or(|t| t.elapsed() >= POLL_EVERY);
            if due {
                self.fence.tried_at = Some(Instant::now());
                match self.take_fence() {
                    Ok(Some(c)) => {
                        self.fence.conn = Some(c);
                        self.fence.wanted_since = None;
                        self.fence.error = None;
                        tracing::info!(
                            "database {}: fenced ({}): tandem holds the write lock",
                            self.e.name,
                            self.role
                        );
                        self.fence_alarm(None);
                    }
                    // No copy (yet): nothing to lock out.
                    Ok(None) => self.fence.error = None,
                    Err(e) => {
                        let why = format!(
                            "database {}: this node is {} and local writers must be locked out, \
                             but the write lock cannot be taken ({e}); retrying",
                            self.e.name, self.role
                        );
                        if since.elapsed() >= FENCE_ALARM_AFTER && !self.fence.alarmed {
                            tracing::error!("{why}");
                            self.fence_alarm(Some(why.clone()));
                        }
                        self.fence.error = Some(why);
                    }
                }
            }
        }
        self.answer_fence_waiters();
    }

    /// A connection inside `BEGIN IMMEDIATE` on the copy, or `None` when
    /// there is no copy.
    fn take_fence(&self) -> Result<Option<Connection>, String> {
        let path = &self.e.path;
        if !path.exists() {
            return Ok(None);
        }
        // Opened as a replica's connection, so that becoming standby can
        // hand this very lock to the replica (see `become_standby`).
        let c = tandem_standby::replica::lock_connection(path, FENCE_ATTEMPT)
            .map_err(|e| e.to_string())?;
        c.execute_batch("BEGIN IMMEDIATE").map_err(|e| {
            format!(
                "a writer held it for more than {} ms: {e}",
                FENCE_ATTEMPT.as_millis()
            )
        })?;
        Ok(Some(c))
    }

    fn answer_fence_waiters(&mut self) {
        if self.fence.waiters.is_empty() {
            return;
        }
        let locked = self.locked();
        let now = Instant::now();
        for (deadline, reply) in std::mem::take(&mut self.fence.waiters) {
            if locked {
                let _ = reply.send(Ok(()));
            } else if now >= deadline {
                let why = match &self.fence.error {
                    Some(e) => e.clone(),
                    None => format!("this node is {}: no fence is called for", self.role),
                };
                let _ = reply.send(Err(format!("not fenced in time: {why}")));
            } else if !reply.is_closed() {
                self.fence.waiters.push((deadline, reply));
            }
        }
    }

    fn become_primary(&mut self, side: Side) -> anyhow::Result<Side> {
        let path = self.e.path.clone();
        // Where the copy stands, if it was a standby's copy until now.
        let was = match side {
            Side::Standby(s) => s.replica.map(|r| r.position()),
            _ => None,
        };
        let was = match was {
            Some(p) => Some(p),
            // A copy ahead of its record (a power loss) is promoted with
            // its txid uncounted, like an abruptly stopped primary's.
            None if tandem_standby::replica::position_path(&path).exists() => Some(
                Replica::open_by_content(&path, None)
                    .context("reading the standby copy's position")?
                    .position(),
            ),
            None => None,
        };
        if let Some(dir) = self.e.state_path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        // This node's own transactions of this epoch were not all counted
        // (killed after its log restarted past its last record).
        let mut uncounted_epoch = None;
        let capture = match was {
            Some(at) if at.txid == TxId::UNCOUNTED => {
                // Never placed on a line: numbering starts over here, and a
                // copy that comes back is judged against that (quarantined
                // unless it is a prefix of it).
                tandem_standby::forget_position(&path)?;
                tracing::warn!(
                    "database {}: primary with a copy whose txid was never counted; numbering starts over",
                    self.e.name
                );
                Capture::open(&path, &self.e.state_path, self.epoch)?.0
            }
            Some(at) => {
                tandem_standby::forget_position(&path)?;
                match Capture::open_at(&path, &self.e.state_path, self.epoch, at) {
                    Ok(c) => {
                        tracing::info!(
                            "database {}: primary, continuing at txid {} (checksum {})",
                            self.e.name,
                            at.txid,
                            at.sum
                        );
                        c
                    }
                    Err(e) => {
                        // A local write slipped in between the replica's
                        // lock and the capture's: count it, report it.
                        let why = format!(
                            "database {}: {e}; the standby will need a resync",
                            self.e.name
                        );
                        tracing::error!("{why}");
                        self.alarm(Some(why));
                        Capture::open(&path, &self.e.state_path, self.epoch)?.0
                    }
                }
            }
            None => {
                if !path.exists() && self.e.state_path.exists() {
                    // Deleted since this node last captured it: creating an
                    // empty one would empty the standby's copy too.
                    anyhow::bail!(
                        "{} was deleted; waiting for a database at the path (the standby keeps its copy)",
                        path.display()
                    );
                }
                if !path.exists() {
                    if let Some(dir) = path.parent() {
                        std::fs::create_dir_all(dir)?;
                    }
                    // A new, empty database, so that the pair starts at once.
                    Connection::open(&path)?.execute_batch("PRAGMA journal_mode=WAL")?;
                    tracing::info!("database {}: created {}", self.e.name, path.display());
                }
                let served = Capture::saved_position(&self.e.state_path)
                    .ok()
                    .flatten()
                    .map(|p| p.epoch);
                let (c, outcome) = Capture::open(&path, &self.e.state_path, self.epoch)?;
                tracing::info!(
                    "database {}: primary at txid {} ({outcome:?})",
                    self.e.name,
                    c.position().txid
                );
                if outcome == OpenOutcome::Discontinuous {
                    uncounted_epoch = served;
                }
                c
            }
        };
        let base = capture.position();
        // This line now continues in our epoch from `base`.
        if record_start(&mut self.history, self.epoch, base) {
            if let Err(e) = save_history(&self.e.history_path, &self.history) {
                // Without it a copy that diverged before this point is
                // judged by txid and checksum alone: say so.
                let why = format!(
                    "database {}: cannot record the start of epoch {} in {}: {e}",
                    self.e.name,
                    self.epoch,
                    self.e.history_path.display()
                );
                tracing::error!("{why}");
                self.alarm(Some(why));
            }
        }
        Ok(Side::Primary(Box::new(PrimarySide {
            capture,
            base,
            queue: VecDeque::new(),
            queue_bytes: 0,
            let_go: None,
            shipped_to: base.txid,
            peer: Peer::Unknown,
            acked: None,
            waiters: Vec::new(),
            seed: None,
            resync: None,
            transfer_moved_at: Instant::now(),
            uncounted_epoch,
            skip_to: TxId(0),
            checkpointed_to: base.txid,
            last_checkpoint: None,
            checkpoint_at: Instant::now(),
            identity_checked_at: Instant::now(),
            asked_at: None,
            resync_retry: false,
            verify_out: Vec::new(),
            truncate_tried: None,
            last_truncate: None,
            truncations: 0,
            resets: 0,
            truncate_wait: TRUNCATE_WAIT,
            reset_failures: Default::default(),
            truncate_failed: None,
        })))
    }

    fn become_standby(&mut self, side: Side) -> anyhow::Result<Side> {
        let path = self.e.path.clone();
        let (wal_max, name) = (self.e.wal_bytes_max, self.e.name.clone());
        let standby = |replica: Option<Replica>| {
            if let Some(r) = &replica {
                limit_copy_wal(r, wal_max, &name);
            }
            Side::Standby(Box::new(StandbySide {
                replica,
                seeder: None,
                state: CopyState::Streaming,
                partial: None,
                batch: Vec::new(),
                batch_bytes: 0,
                flushed_at: None,
                flush_every: FLUSH_EVERY_MIN,
                flush_upto: TxId(0),
                ack_owed: None,
                ack_owed_bytes: 0,
                acked: None,
                unsettled_since: None,
                settle_failures: 0,
                primary: None,
                hello_at: None,
                retry: false,
            }))
        };
        // The primary's capture until now: its position becomes the copy's.
        if let Side::Primary(p) = side {
            let at = p.capture.position();
            // Close the capture while the fence still holds, and hand the
            // fence's write lock to the replica: a local writer waiting for
            // the lock must never commit between the capture's last position
            // and the replica's first apply.
            drop(p);
            let replica = match self.fence.conn.take() {
                Some(lock) => {
                    self.fence.tried_at = None;
                    tandem_standby::adopt_locked(&path, at, lock)
                }
                None => tandem_standby::adopt(&path, at),
            }
            .context("adopting as a replica")?;
            let _ = std::fs::remove_file(&self.e.state_path);
            tracing::info!(
                "database {}: standby, at txid {} (checksum {})",
                self.e.name,
                at.txid,
                at.sum
            );
            return Ok(standby(Some(replica)));
        }
        drop(side);
        if tandem_standby::replica::position_path(&path).exists() {
            // The fence's lock passes to the replica, as above.
            let lock = self.fence.conn.take();
            if lock.is_some() {
                self.fence.tried_at = None;
            }
            // Content ahead of its record (a power loss) or written while
            // tandem was away: placed by the primary, by its checksum.
            let replica = Replica::open_by_content(&path, lock)?;
            if replica.position().txid == TxId::UNCOUNTED {
                tracing::warn!(
                    "database {}: the copy's checksum {} matches no position tandem recorded for it: it lost power while applying, or was written outside tandem; the primary places it by its checksum, or quarantines it",
                    self.e.name,
                    replica.position().sum
                );
            }
            tracing::info!(
                "database {}: standby, at txid {}",
                self.e.name,
                replica.position().txid
            );
            return Ok(standby(Some(replica)));
        }
        self.release_fence();
        if !path.exists() {
            tracing::info!(
                "database {}: standby with no copy yet; asking the primary to seed {}",
                self.e.name,
                path.display()
            );
            return Ok(standby(None));
        }
        if self.e.state_path.exists() {
            // This node was primary when it stopped. What it committed since
            // its last record was committed in the epoch it then served,
            // not in this one: stamped so, a copy that diverged is seen to.
            let served =
                Capture::saved_position(&self.e.state_path)?.map_or(self.epoch, |p| p.epoch);
            let (capture, outcome) = Capture::open(&path, &self.e.state_path, served)?;
            let mut at = capture.position();
            drop(capture);
            if outcome == OpenOutcome::Discontinuous {
                // What it committed after its last record was not counted
                // one by one: its txid is not known, and guessing one could
                // make a copy that diverged look merely behind.
                tracing::warn!(
                    "database {}: this node stopped abruptly as primary; its transactions after txid {} were not counted; the primary will place the copy by its checksum",
                    self.e.name,
                    at.txid.0.saturating_sub(1)
                );
                at.txid = TxId::UNCOUNTED;
            }
            let replica = tandem_standby::adopt(&path, at)?;
            let _ = std::fs::remove_file(&self.e.state_path);
            return Ok(standby(Some(replica)));
        }
        anyhow::bail!(
            "{} exists but tandem has no position for it (it was never a tandem copy); \
             move it away so the primary can seed this standby",
            path.display()
        )
    }

    fn on_connected(&mut self) {
        self.flush_batch();
        match &mut self.side {
            Side::Primary(p) => {
                // A new connection: nothing shipped on the old one counts.
                p.peer = Peer::Unknown;
                p.shipped_to = p.base.txid;
                for (.., queued) in &mut p.verify_out {
                    *queued = false;
                }
                p.seed = None;
                p.resync = None;
                self.ask_standby();
            }
            Side::Standby(s) => {
                s.partial = None;
                s.seeder = None;
                if matches!(s.state, CopyState::Resyncing(_)) {
                    s.state = CopyState::Streaming;
                }
                if s.replica.is_none() {
                    s.state = CopyState::Streaming;
                }
                self.hello();
            }
            _ => {}
        }
    }

    fn on_tick(&mut self) {
        match &mut self.side {
            Side::Primary(p) => {
                if matches!(p.peer, Peer::Seeding | Peer::Resyncing)
                    && p.transfer_moved_at.elapsed() > TRANSFER_STALL_MAX
                {
                    tracing::warn!(
                        "database {}: the standby's {} has not moved for {} s; starting over",
                        self.e.name,
                        if p.peer == Peer::Seeding {
                            "seed"
                        } else {
                            "resync"
                        },
                        TRANSFER_STALL_MAX.as_secs()
                    );
                    p.seed = None;
                    p.resync = None;
                    p.peer = Peer::Unknown;
                    p.asked_at = None;
                }
                if (p.peer == Peer::Unknown || p.resync_retry)
                    && p.asked_at
                        .is_none_or(|t| t.elapsed() > Duration::from_secs(1))
                {
                    self.ask_standby();
                }
                self.poll_and_ship();
                self.checkpoint(false);
                self.bound_wal();
            }
            Side::Standby(s) => {
                // The primary asks while it does not know where we stand;
                // after a failed apply we say it again ourselves.
                if s.retry
                    && s.hello_at
                        .is_none_or(|t| t.elapsed() > Duration::from_secs(1))
                {
                    s.retry = false;
                    self.hello();
                }
            }
            Side::Failed(..) | Side::Idle => {}
        }
    }

    // ----- primary ---------------------------------------------------------

    fn ask_standby(&mut self) {
        if let Side::Primary(p) = &mut self.side {
            p.asked_at = Some(Instant::now());
            p.resync_retry = false;
            let _ = self.node.peer_link.send(PeerMessage::DbAsk {
                db: self.e.name.clone(),
                history: self.history.clone(),
            });
        }
    }

    /// Read what was committed, queue it, ship what the standby may take.
    /// True when something new was read.
    fn poll_and_ship(&mut self) -> bool {
        self.poll_and_ship_with(false)
    }

    /// [`Actor::poll_and_ship`]; with `all`, the WAL is read to its end
    /// even while a large transaction is being written
    /// ([`Capture::poll_all`]).
    fn poll_and_ship_with(&mut self, all: bool) -> bool {
        let Side::Primary(p) = &mut self.side else {
            return false;
        };
        // A `stat` of the database's path at every wake-up was a share of
        // the engine's CPU: the capture itself checks when the WAL changes
        // identity, and a deletion alone is noticed within a tick.
        let due = p.identity_checked_at.elapsed() >= POLL_EVERY || p.capture.wal_moved();
        if let Some(gone) = due.then(|| p.capture.replaced()).flatten() {
            // Its log is not this capture's any more. Reopened (after a
            // pause) once a database is at the path again, as content that
            // only a resync can ship; until then the standby keeps its copy.
            let why = format!(
                "database {}: {gone} while tandem ran; the standby keeps its copy until a database is at the path again",
                self.e.name
            );
            tracing::error!("{why}");
            self.alarm(Some(why.clone()));
            self.side = Side::Failed(Role::Primary, why, Instant::now());
            return false;
        }
        if due {
            p.identity_checked_at = Instant::now();
        }
        let polled = if all {
            p.capture.poll_all()
        } else {
            p.capture.poll()
        };
        let grew = match polled {
            Ok(batch) => {
                let grew = !batch.is_empty();
                for c in batch {
                    if c.txid <= p.skip_to {
                        continue;
                    }
                    let bytes = c.tx.pages.iter().map(|(_, d)| d.len() as u64).sum();
                    p.queue_bytes += bytes;
                    p.queue.push_back(Queued {
                        txid: c.txid,
                        sum: c.sum,
                        tx: c.tx,
                        bytes,
                        captured: Instant::now(),
                    });
                }
                grew
            }
            Err(e) => {
                tracing::warn!("database {}: capture: {e}", self.e.name);
                return false;
            }
        };
        if p.queue_bytes > self.e.queue_bytes_max {
            // Let go: the standby will need a resync; the WAL stays bounded.
            let why = format!(
                "database {}: more than {} bytes owed to the standby; it will need a resync",
                self.e.name, self.e.queue_bytes_max
            );
            tracing::warn!("{why}");
            let earlier = p.let_go;
            p.let_go = Some(LetGo {
                txid: earlier.map_or(p.base.txid, |l| l.txid),
                since: earlier.map_or_else(
                    || p.queue.front().map_or_else(Instant::now, |q| q.captured),
                    |l| l.since,
                ),
                bytes: earlier.map_or(0, |l| l.bytes) + p.queue_bytes,
            });
            p.queue.clear();
            p.queue_bytes = 0;
            p.base = p.capture.position();
            p.shipped_to = p.base.txid;
            if p.peer == Peer::Streaming {
                // Its next hello (asked now) starts a page-hash resync.
                p.peer = Peer::NeedsResync(why.clone());
                self.node
                    .db_alarm(&format!("database {}", self.e.name), Some(why));
                self.ask_standby();
            }
        }
        self.ship();
        grew
    }

    fn ship(&mut self) {
        // A verify goes right behind the transaction its snapshot ends at
        // (the standby checks its copy there): ship up to it, send it, go
        // on. Several verifies: one stop each.
        loop {
            let stop = self.next_verify_stop();
            self.ship_txs(stop);
            self.flush_verifies();
            match stop {
                Some(at) if self.next_verify_stop() != Some(at) => {}
                _ => break,
            }
        }
    }

    /// The txid the oldest verify not yet sent waits for, while streaming.
    fn next_verify_stop(&self) -> Option<TxId> {
        let Side::Primary(p) = &self.side else {
            return None;
        };
        (p.peer == Peer::Streaming)
            .then(|| p.verify_out.iter().filter(|v| !v.2).map(|v| v.1.txid).min())
            .flatten()
    }

    /// Send the verifies whose txid is shipped (in order after it), or at
    /// once when the standby is known not to be streaming (it will not be
    /// at that txid, and says where it is); on a new connection, once the
    /// standby has said where it stands.
    fn flush_verifies(&mut self) {
        let Side::Primary(p) = &mut self.side else {
            return;
        };
        if p.verify_out.is_empty() {
            return;
        }
        let streaming = p.peer == Peer::Streaming;
        let unknown = p.peer == Peer::Unknown;
        let shipped_to = p.shipped_to;
        // Answered, or given up by the caller.
        let waiting = lock(&self.e.verified);
        p.verify_out.retain(|(id, ..)| waiting.contains_key(id));
        drop(waiting);
        for (id, at, queued) in &mut p.verify_out {
            if *queued || unknown || (streaming && shipped_to < at.txid) {
                continue;
            }
            *queued = self
                .node
                .peer_link
                .send(PeerMessage::DbVerify {
                    db: self.e.name.clone(),
                    id: *id,
                    at: *at,
                })
                .is_ok();
        }
    }

    /// `tandem verify` on the primary: a read snapshot at the end of what
    /// was committed, its pages hashed on a thread of its own, and a
    /// `DbVerify` queued behind the transactions up to it.
    fn start_verify(&mut self) -> Result<VerifyStart, String> {
        let name = self.e.name.clone();
        if !matches!(self.role, Role::Primary) {
            return Err(format!(
                "this node is {}: verify runs on the primary",
                self.role
            ));
        }
        self.poll_and_ship();
        let Side::Primary(p) = &mut self.side else {
            return Err(format!("database {name} is not open as primary"));
        };
        let snap = p
            .capture
            .snapshot()
            .map_err(|e| format!("cannot take a read snapshot: {e}"))?;
        let at = snap.position;
        let (ptx, primary) = oneshot::channel();
        std::thread::Builder::new()
            .name(format!("verify-{name}"))
            .spawn(move || {
                let _ = ptx.send(snap.page_hashes().map_err(|e| e.to_string()));
            })
            .map_err(|e| format!("cannot start the verify thread: {e}"))?;
        let id = self.e.verify_seq.fetch_add(1, Ordering::Relaxed);
        let (stx, standby) = oneshot::channel();
        lock(&self.e.verified).insert(id, stx);
        p.verify_out.push((id, at, false));
        tracing::info!(
            "database {name}: verify {id} at txid {}: hashing this copy; the standby checks its own once it has applied that far",
            at.txid
        );
        // The snapshot held back what it read: queue and ship it.
        self.poll_and_ship();
        Ok(VerifyStart {
            at,
            primary,
            standby,
            id,
        })
    }

    /// The standby's side of a verify: check the copy from scratch.
    fn answer_verify(&mut self, id: u64) {
        let name = self.e.name.clone();
        let mut v = DbVerified {
            db: name.clone(),
            id,
            position: None,
            sum_from_pages: None,
            page_count: 0,
            integrity: Vec::new(),
            range_pages: RANGE_PAGES,
            ranges: Vec::new(),
            error: None,
        };
        let mut fill = |hashes: &PageHashes, integrity: Vec<String>| {
            v.sum_from_pages = Some(hashes.sum());
            v.page_count = hashes.page_count();
            v.ranges = hashes.range_hashes(RANGE_PAGES);
            v.integrity = integrity;
        };
        match &self.side {
            Side::Standby(s) => {
                if let CopyState::NeedsResync(w) | CopyState::Diverged(w) = &s.state {
                    v.error = Some(w.clone());
                }
                match &s.replica {
                    Some(r) => match r.verify() {
                        Ok(check) => {
                            fill(&check.hashes, check.integrity);
                            v.position = Some(check.position);
                        }
                        Err(e) => v.error = Some(format!("cannot read the copy: {e}")),
                    },
                    None => v.error = Some("no copy yet (waiting for a seed, or seeding)".into()),
                }
            }
            Side::Failed(_, why, _) => {
                v.error = Some(why.clone());
                if self.e.path.exists() {
                    match tandem_standby::replica::inspect(&self.e.path) {
                        Ok((hashes, integrity)) => fill(&hashes, integrity),
                        Err(e) => {
                            v.error = Some(format!("{why}; and the file cannot be read: {e}"))
                        }
                    }
                }
            }
            Side::Primary(_) => v.error = Some("this node acts as primary too".into()),
            Side::Idle => v.error = Some(format!("this node is {}: no copy is open", self.role)),
        }
        let _ = self.node.peer_link.send(PeerMessage::DbVerified(v));
    }

    /// Ship the queued transactions the standby may take, up to `stop`.
    fn ship_txs(&mut self, stop: Option<TxId>) {
        let Side::Primary(p) = &mut self.side else {
            return;
        };
        if p.peer == Peer::Seeding {
            self.ship_seed();
            return;
        }
        if p.peer == Peer::Resyncing {
            self.ship_resync();
            return;
        }
        if p.peer != Peer::Streaming {
            return;
        }
        let page_size = p.capture_page_size();
        let per_part = (PART_BYTES_MAX / page_size.max(1)).max(1);
        let from = p.shipped_to;
        for q in p.queue.iter().filter(|q| q.txid > from) {
            if q.txid.0.saturating_sub(p.base.txid.0) > IN_FLIGHT_TX_MAX
                || stop.is_some_and(|s| q.txid > s)
            {
                break;
            }
            let chunks: Vec<&[(u32, Vec<u8>)]> = if q.tx.pages.is_empty() {
                vec![&[]]
            } else {
                q.tx.pages.chunks(per_part).collect()
            };
            let parts = chunks.len() as u32;
            let mut all = true;
            for (i, pages) in chunks.into_iter().enumerate() {
                let sent = self.node.peer_link.send(PeerMessage::DbTx(DbTx {
                    db: self.e.name.clone(),
                    epoch: self.epoch,
                    txid: q.txid,
                    sum: q.sum,
                    db_pages_after_commit: q.tx.db_pages_after_commit,
                    part: i as u32,
                    parts,
                    pages: pages.to_vec(),
                }));
                if sent.is_err() {
                    all = false;
                    break;
                }
            }
            if !all {
                // The outbox is full or the link is down: resend from part 0
                // at the next acknowledgement or tick.
                break;
            }
            p.shipped_to = q.txid;
        }
    }

    fn ship_seed(&mut self) {
        let Side::Primary(p) = &mut self.side else {
            return;
        };
        let Some(seed) = &mut p.seed else {
            return;
        };
        let window = SEED_CHUNK_PAGES * SEED_WINDOW_CHUNKS;
        while seed.next <= seed.snap.page_count.max(1)
            && seed.next.saturating_sub(seed.acked_next) < window
        {
            let pages = match seed.snap.pages(seed.next, SEED_CHUNK_PAGES) {
                Ok(pages) => pages,
                Err(e) => {
                    tracing::error!("database {}: reading the seed image: {e}", self.e.name);
                    p.seed = None;
                    p.peer = Peer::Unknown;
                    return;
                }
            };
            let next = seed.next + SEED_CHUNK_PAGES;
            let last = next > seed.snap.page_count;
            let sent = self.node.peer_link.send(seed_chunk(
                &self.e.name,
                self.epoch,
                &seed.snap,
                pages,
                last,
            ));
            if sent.is_err() {
                return;
            }
            p.transfer_moved_at = Instant::now();
            seed.next = next;
            if last {
                return;
            }
        }
    }

    fn on_hello(&mut self, epoch: Epoch, position: Option<DbPosition>, ranges: Option<CopyRanges>) {
        let name = self.e.name.clone();
        let Side::Primary(p) = &mut self.side else {
            return;
        };
        if epoch > self.epoch {
            tracing::warn!("database {name}: hello from a standby in epoch {epoch}, ahead of ours ({}); not shipping", self.epoch);
            return;
        }
        let cap = p.capture.position();
        let Some(at) = position else {
            if p.peer == Peer::Seeding {
                // The same request twice (our ask crossed its hello).
                return;
            }
            if self.fence.conn.is_some() || self.role != Role::Primary {
                // A snapshot takes the write lock for a moment, and a node
                // that is not primary has no business seeding anyway.
                tracing::debug!(
                    "database {name}: an empty standby asks for a seed; not while {}",
                    self.role
                );
                return;
            }
            // An empty standby: seed it from a snapshot.
            match p.capture.snapshot() {
                Ok(snap) => {
                    tracing::info!(
                        "database {name}: seeding the standby: {} pages at txid {}",
                        snap.page_count,
                        snap.position.txid
                    );
                    p.ship_after_snapshot(snap.position);
                    p.seed = Some(SeedOut {
                        snap,
                        next: 1,
                        acked_next: 1,
                    });
                    p.peer = Peer::Seeding;
                    p.transfer_moved_at = Instant::now();
                    self.ship_seed();
                }
                Err(e) => tracing::error!("database {name}: cannot take a seed snapshot: {e}"),
            }
            return;
        };
        if p.peer == Peer::Resyncing && p.resync.is_some() {
            // The same request twice (our ask crossed its hello); a new
            // connection would have reset the resync.
            return;
        }
        p.seed = None;
        p.resync = None;
        // A position of this epoch that this node has counted since it
        // reopened (the base, a queued transaction, or where its capture
        // stands now) is on its line: a resync in this epoch ends there (the
        // database was re-created while this node served the epoch). A copy
        // from an earlier epoch is resynced even if it looks the same.
        let counted = at.epoch == self.epoch
            && [(p.base.txid, p.base.sum), (cap.txid, cap.sum)]
                .into_iter()
                .chain(p.queue.iter().map(|q| (q.txid, q.sum)))
                .any(|c| c == (at.txid, at.sum));
        if p.uncounted_epoch == Some(at.epoch) && at.txid != TxId::UNCOUNTED && !counted {
            // Its transactions of that epoch all came from this node, which
            // lost their count in a crash: nothing in it is foreign, but its
            // txid cannot be compared with ours.
            tracing::warn!(
                "database {name}: the standby is at txid {} of epoch {}, in which this node stopped abruptly as primary; resyncing it by page hashes",
                at.txid,
                at.epoch
            );
            p.peer = Peer::NeedsResync(format!(
                "database {name}: txids of epoch {} were not counted on this node",
                at.epoch
            ));
            p.waiters.clear();
            match ranges {
                Some(ranges) => self.start_resync(ranges),
                None => self.alarm(Some(format!(
                    "database {name}: the standby sent no page hashes for a resync"
                ))),
            }
            return;
        }
        if at.txid == TxId::UNCOUNTED {
            // Placed by its content alone: on this line only if its checksum
            // is one this line had; then a resync gives it a position.
            let on_line = at.sum == cap.sum
                || at.sum == p.base.sum
                || p.queue.iter().any(|q| q.sum == at.sum)
                || self.history.iter().any(|h| h.from.sum == at.sum);
            match (on_line, ranges) {
                (true, Some(ranges)) => {
                    tracing::info!("database {name}: the standby's uncounted copy has a checksum of this line ({}); resyncing it", at.sum);
                    self.start_resync(ranges);
                }
                (true, None) => {}
                (false, _) => {
                    let common = self
                        .history
                        .iter()
                        .find(|h| h.epoch > at.epoch)
                        .map_or(cap.txid, |h| h.from.txid);
                    self.quarantine_peer(format!(
                        "database {name}: the standby's copy (epoch {}) has no counted position (it stopped abruptly as a primary, lost power while applying, or was written outside tandem) and its content matches no point of this primary's line: it holds transactions {}.. (not counted one by one) that this line never had (common point: txid {common} at most)",
                        at.epoch,
                        common.next()
                    ))
                }
            }
            return;
        }
        if let Lineage::Diverged {
            common,
            first,
            last,
        } = judge(&self.history, at)
        {
            let why = format!(
                "database {name}: the standby's copy (txid {}, epoch {}) holds transactions {first}..={last} that this primary's line never had (common point: txid {common} at most)",
                at.txid, at.epoch
            );
            self.quarantine_peer(why);
            return;
        }
        let Side::Primary(p) = &mut self.side else {
            return;
        };
        let known_sum = if at.txid == p.base.txid {
            Some(p.base.sum)
        } else {
            p.queue.iter().find(|q| q.txid == at.txid).map(|q| q.sum)
        };
        let verdict = if at.txid > cap.txid {
            Err(Peer::Diverged(format!(
                "database {name}: the standby is at txid {}, ahead of this primary's {}: it holds transactions this node never had",
                at.txid, cap.txid
            )))
        } else if at.txid < p.base.txid {
            Err(Peer::NeedsResync(format!(
                "database {name}: the standby is at txid {}, and this primary can ship only from txid {}: it needs a resync",
                at.txid,
                p.base.txid.next()
            )))
        } else {
            match known_sum {
                Some(sum) if sum == at.sum => Ok(()),
                Some(sum) => Err(Peer::Diverged(format!(
                    "database {name}: at txid {} the standby's checksum is {}, the primary's {sum}: the copies diverged",
                    at.txid, at.sum
                ))),
                None => Err(Peer::NeedsResync(format!(
                    "database {name}: txid {} is no longer held by the primary",
                    at.txid
                ))),
            }
        };
        match verdict {
            Ok(()) => {
                tracing::info!(
                    "database {name}: the standby is at txid {}; streaming from there ({} to send)",
                    at.txid,
                    cap.txid.0 - at.txid.0
                );
                p.peer = Peer::Streaming;
                p.shipped_to = at.txid;
                self.on_acked(at);
                self.alarm(None);
                self.ship();
            }
            Err(Peer::Diverged(why)) => self.quarantine_peer(why),
            Err(peer) => {
                let (Peer::Diverged(why) | Peer::NeedsResync(why)) = &peer else {
                    return;
                };
                tracing::warn!("{why}");
                let why = why.clone();
                p.peer = peer;
                // Nobody will acknowledge these: barriers fail at once.
                p.waiters.clear();
                match ranges {
                    Some(ranges) => self.start_resync(ranges),
                    None => self.alarm(Some(why)),
                }
            }
        }
    }

    /// The standby's copy diverged: have it quarantined (it then asks for a
    /// seed). Barriers fail until it follows again.
    fn quarantine_peer(&mut self, why: String) {
        let Side::Primary(p) = &mut self.side else {
            return;
        };
        tracing::error!("{why}");
        p.peer = Peer::Diverged(why.clone());
        p.waiters.clear();
        let _ = self.node.peer_link.send(PeerMessage::DbQuarantine {
            db: self.e.name.clone(),
            epoch: self.epoch,
            reason: why.clone(),
        });
        self.alarm(Some(why));
    }

    /// A page-hash resync of a standby copy that is behind what the queue
    /// holds: a snapshot, its page hashes compared range by range with the
    /// copy's `ranges`, and the primary's page hashes of the ranges that
    /// differ sent as plans; the standby asks for the pages that differ.
    ///
    /// The snapshot's page hashes are read here, on the engine's thread:
    /// about a second per GiB, during which this database's capture waits
    /// (writers do not).
    fn start_resync(&mut self, ranges: CopyRanges) {
        let name = self.e.name.clone();
        if self.fence.conn.is_some() || self.role != Role::Primary {
            return;
        }
        let Side::Primary(p) = &mut self.side else {
            return;
        };
        let started = Instant::now();
        let (snap, hashes) = match p
            .capture
            .snapshot()
            .and_then(|snap| snap.page_hashes().map(|h| (snap, h)))
        {
            Ok(x) => x,
            Err(e) => {
                let why = format!("database {name}: cannot take a resync snapshot: {e}");
                tracing::error!("{why}");
                p.peer = Peer::NeedsResync(why.clone());
                p.resync_retry = true;
                p.asked_at = Some(Instant::now());
                self.alarm(Some(why));
                return;
            }
        };
        let at = snap.position;
        let differ = if ranges.page_size == snap.page_size {
            differing_ranges(
                &hashes.range_hashes(RANGE_PAGES),
                snap.page_count,
                &ranges.hashes,
                ranges.page_count,
                RANGE_PAGES,
            )
        } else {
            // Another page size: the standby cannot patch its copy and
            // takes a seed instead (it sees the size in the plan).
            Vec::new()
        };
        let mut plans: Vec<(u32, Vec<[u8; 32]>)> = Vec::new();
        for (first, last) in differ {
            let last = last.min(snap.page_count);
            let mut pgno = first;
            while pgno <= last {
                let end = last.min(pgno.saturating_add(PLAN_PAGES - 1));
                let hs = (pgno..=end)
                    .map(|n| hashes.get(n).copied().unwrap_or_default())
                    .collect();
                plans.push((pgno, hs));
                pgno = end.saturating_add(1);
            }
        }
        if plans.is_empty() {
            plans.push((1, Vec::new()));
        }
        tracing::info!(
            "database {name}: resyncing the standby by page hashes at txid {}: {} of {} pages in differing ranges (hashed in {} ms)",
            at.txid,
            plans.iter().map(|(_, h)| h.len()).sum::<usize>(),
            snap.page_count,
            started.elapsed().as_millis()
        );
        let count = plans.len();
        for (i, (first, hashes)) in plans.into_iter().enumerate() {
            // A plan the full outbox refused would leave the standby
            // waiting for the rest: see `transfer_moved_at`.
            let _ = self
                .node
                .peer_link
                .send(PeerMessage::DbResyncPlan(DbResyncPlan {
                    db: name.clone(),
                    epoch: self.epoch,
                    position: at,
                    page_size: snap.page_size,
                    page_count: snap.page_count,
                    first,
                    hashes,
                    last: i + 1 == count,
                }));
        }
        p.ship_after_snapshot(at);
        p.transfer_moved_at = Instant::now();
        p.resync = Some(ResyncOut {
            snap,
            need: Vec::new(),
            complete: false,
            next: 0,
            acked: 0,
            closed: false,
        });
        p.peer = Peer::Resyncing;
    }

    fn on_resync_need(&mut self, pgnos: Vec<u32>, last: bool) {
        let Side::Primary(p) = &mut self.side else {
            return;
        };
        let Some(r) = &mut p.resync else {
            return;
        };
        r.need.extend(pgnos);
        r.complete |= last;
        p.transfer_moved_at = Instant::now();
        self.ship_resync();
    }

    /// Sends the asked pages of the resync snapshot as `DbSeed` chunks, a
    /// window at a time, and a closing chunk once all were asked and sent.
    fn ship_resync(&mut self) {
        let Side::Primary(p) = &mut self.side else {
            return;
        };
        let Some(r) = &mut p.resync else {
            return;
        };
        let window = (SEED_CHUNK_PAGES * SEED_WINDOW_CHUNKS) as usize;
        while !r.closed && r.next.saturating_sub(r.acked) < window {
            let end = r.need.len().min(r.next + SEED_CHUNK_PAGES as usize);
            let last = r.complete && end == r.need.len();
            if end == r.next && !last {
                return;
            }
            let mut pages = Vec::with_capacity(end - r.next);
            for &pgno in &r.need[r.next..end] {
                match r.snap.pages(pgno, 1) {
                    Ok(mut one) => pages.append(&mut one),
                    Err(e) => {
                        tracing::error!("database {}: reading resync pages: {e}", self.e.name);
                        p.resync = None;
                        p.peer = Peer::Unknown;
                        return;
                    }
                }
            }
            let sent = self.node.peer_link.send(seed_chunk(
                &self.e.name,
                self.epoch,
                &r.snap,
                pages,
                last,
            ));
            if sent.is_err() {
                return;
            }
            p.transfer_moved_at = Instant::now();
            r.next = end;
            r.closed = last;
        }
    }

    /// The standby has `at`: drop what it holds from the queue, release
    /// barrier waiters.
    fn on_acked(&mut self, at: DbPosition) {
        let Side::Primary(p) = &mut self.side else {
            return;
        };
        while p.queue.front().is_some_and(|q| q.txid <= at.txid) {
            if let Some(q) = p.queue.pop_front() {
                p.queue_bytes -= q.bytes;
            }
        }
        if at.txid >= p.base.txid {
            p.base = at;
            // Past where the spool was let go: behind by the queue only.
            p.let_go = None;
        }
        p.acked = Some(at);
        let mut i = 0;
        while i < p.waiters.len() {
            if p.waiters[i].0 <= at.txid {
                let (_, w) = p.waiters.swap_remove(i);
                let _ = w.send(at);
            } else {
                i += 1;
            }
        }
    }

    fn on_ack(&mut self, txid: TxId, sum: DbSum) {
        let name = self.e.name.clone();
        let Side::Primary(p) = &mut self.side else {
            return;
        };
        if p.peer != Peer::Streaming {
            return;
        }
        let expected = if txid == p.base.txid {
            Some(p.base.sum)
        } else {
            p.queue.iter().find(|q| q.txid == txid).map(|q| q.sum)
        };
        match expected {
            Some(s) if s == sum => {
                let at = DbPosition {
                    epoch: self.epoch,
                    txid,
                    sum,
                };
                self.on_acked(at);
                self.ship();
            }
            Some(s) => {
                let why = format!("database {name}: the standby acknowledged txid {txid} with checksum {sum}, the primary has {s}: the copies diverged");
                tracing::error!("{why}");
                p.peer = Peer::Diverged(why.clone());
                p.waiters.clear();
                self.alarm(Some(why));
            }
            // An acknowledgement of something already dropped: harmless.
            None => {}
        }
    }

    fn checkpoint(&mut self, force: bool) {
        let name = self.e.name.clone();
        let wal_bytes_max = self.e.wal_bytes_max;
        if self.role != Role::Primary {
            // Fenced (or about to be): the capture's control connection
            // could not take the write lock to move the pin, and nothing
            // new is written anyway.
            return;
        }
        let Side::Primary(p) = &mut self.side else {
            return;
        };
        // What the standby holds may be checkpointed; when it cannot follow
        // anyway, everything may (the WAL must stay bounded).
        let upto = match &p.peer {
            Peer::NeedsResync(_) | Peer::Diverged(_) => p.capture.position().txid,
            _ => p.base.txid,
        };
        let big = p.capture.wal_bytes() > wal_bytes_max / 2;
        let due = upto > p.checkpointed_to && p.checkpoint_at.elapsed() >= CHECKPOINT_EVERY;
        if !(force || due || (big && p.checkpoint_at.elapsed() >= CHECKPOINT_EVERY)) {
            return;
        }
        p.checkpoint_at = Instant::now();
        match p.capture.checkpoint(upto) {
            Ok(o) => {
                p.checkpointed_to = upto;
                p.last_checkpoint = Some(json!({
                    "mode": "passive", "at_unix_ms": unix_ms(), "upto_txid": upto.0,
                    "wal_frames": o.wal_frames, "backfilled_frames": o.backfilled_frames,
                    "log_may_restart": o.pin_moved,
                }));
            }
            Err(e) => tracing::warn!("database {name}: checkpoint: {e}"),
        }
    }

    /// Keep the WAL under `wal_bytes_max`: past [`RESTART_AT_PERCENT`] of
    /// it the log is made to restart, past [`CUT_AT_PERCENT`] the file is
    /// cut, by a time-bounded TRUNCATE checkpoint ([`Capture::truncate`]). What
    /// the standby is owed stays in the queue (memory, bounded by
    /// `spool_bytes_max`; past that it is let go and the standby needs a
    /// resync), so the WAL need not keep it while the standby is away. While
    /// a standby streams, only acknowledged frames are checkpointed, until
    /// the WAL is past [`CUT_AT_PERCENT`] of the cap.
    fn bound_wal(&mut self) {
        let name = self.e.name.clone();
        let cap = self.e.wal_bytes_max;
        if self.role != Role::Primary {
            // Fenced: nothing new is written; the write lock is the fence's.
            return;
        }
        let Side::Primary(p) = &mut self.side else {
            return;
        };
        // The file keeps its size when the log restarts: what is in use is
        // what the capture read. Past a quarter of the cap the log is made
        // to restart; a file past half of it is cut.
        let wal = p.capture.wal_bytes_at_poll();
        let used = p.capture.wal_end().min(wal);
        let cut = wal > cap / 100 * CUT_AT_PERCENT;
        let away = p.peer != Peer::Streaming || !self.node.peer_link.is_connected();
        if !away && !cut && used > restart_at(cap) && p.seed.is_none() {
            // Streaming: restart the log once acknowledgements catch up,
            // holding writers off for that round trip (see `step_restart`).
            let mut flush_upto = None;
            if p.capture.restarting().is_none()
                && p.truncate_tried
                    .is_none_or(|t| t.elapsed() >= TRUNCATE_RETRY)
            {
                p.truncate_tried = Some(Instant::now());
                match p.capture.begin_restart(p.truncate_wait) {
                    Ok(true) => flush_upto = Some(p.capture.position().txid),
                    Ok(false) => {
                        *p.reset_failures
                            .entry("a writer held the write lock".into())
                            .or_default() += 1
                    }
                    Err(e) => tracing::warn!("database {name}: log restart: {e}"),
                }
            }
            self.poll_and_ship();
            if let Some(upto) = flush_upto {
                // Writers wait for this: the standby need not group. Sent
                // after what the restart read, so that one apply takes all.
                let _ = self
                    .node
                    .peer_link
                    .send(PeerMessage::DbFlush { db: name, upto });
            }
            self.step_restart();
            return;
        }
        if (used <= cap / 100 * RESTART_AT_PERCENT && !cut)
            || p.truncate_tried.is_some_and(|t| t.elapsed() < TRUNCATE_RETRY)
            // A seed's read snapshot holds the WAL until the seed is sent.
            || p.seed.is_some()
        {
            return;
        }
        p.truncate_tried = Some(Instant::now());
        let owed_kept = away || cut;
        let upto = p.base.txid;
        let wait = p.truncate_wait;
        p.truncate_wait = (wait * 2).min(TRUNCATE_WAIT_MAX);
        match p.capture.truncate(upto, owed_kept, wait, cut) {
            Ok(o) if o.log_may_restart => {
                p.truncate_wait = TRUNCATE_WAIT;
                p.resets += 1;
                p.truncations += u64::from(o.truncated);
                p.checkpointed_to = p.capture.position().txid;
                let v = json!({
                    "mode": if o.truncated { "truncate" } else { "restart" },
                    "at_unix_ms": unix_ms(),
                    "upto_txid": p.checkpointed_to.0,
                    "wal_bytes_before": o.wal_bytes_before, "wal_bytes_after": o.wal_bytes_after,
                    "standby_acknowledged_all": !owed_kept,
                });
                tracing::debug!("database {name}: WAL reset: {v}");
                if o.truncated {
                    p.last_truncate = Some(v.clone());
                }
                p.last_checkpoint = Some(v);
                p.truncate_failed = None;
            }
            Ok(o) => {
                let why = format!(
                    "the WAL ({wal} bytes, cap {cap}) could not be cut yet: {}",
                    o.not_because.clone().unwrap_or_default()
                );
                tracing::debug!("database {name}: {why}");
                *p.reset_failures
                    .entry(o.not_because.clone().unwrap_or_default())
                    .or_default() += 1;
                p.truncate_failed = Some(why);
            }
            Err(e) => {
                tracing::warn!("database {name}: TRUNCATE checkpoint: {e}");
                p.truncate_failed = Some(e.to_string());
            }
        }
        // What the truncation read under its lock is queued now.
        self.poll_and_ship();
    }

    /// Step 2 of a log restart ([`Capture::begin_restart`]): once the
    /// standby acknowledged everything read, the pin moves and writers go
    /// on; after [`RESTART_HOLD_MAX`], or as soon as the node is not a
    /// streaming primary, the lock is let go and it is tried again later.
    fn step_restart(&mut self) {
        let name = self.e.name.clone();
        let streaming = self.role == Role::Primary && self.node.peer_link.is_connected();
        let Side::Primary(p) = &mut self.side else {
            return;
        };
        // None also once the capture let go itself (a snapshot was taken).
        let Some(begun) = p.capture.restarting() else {
            return;
        };
        let result =
            if !streaming || p.peer != Peer::Streaming || begun.elapsed() > RESTART_HOLD_MAX {
                p.capture.abort_restart().map(|()| {
                    *p.reset_failures
                        .entry("the standby did not acknowledge in time".into())
                        .or_default() += 1;
                    Some(false)
                })
            } else {
                p.capture.finish_restart(p.base.txid)
            };
        match result {
            Ok(Some(true)) => {
                p.resets += 1;
                p.checkpointed_to = p.capture.position().txid;
                p.last_checkpoint = Some(json!({
                    "mode": "restart", "at_unix_ms": unix_ms(),
                    "upto_txid": p.checkpointed_to.0,
                    "writers_held_ms": p.capture.last_hold().map(|d| d.as_secs_f64() * 1000.0),
                    "standby_acknowledged_all": true,
                }));
            }
            Ok(None | Some(false)) => {}
            Err(e) => tracing::warn!("database {name}: log restart: {e}"),
        }
    }

    // ----- standby ---------------------------------------------------------

    fn hello(&mut self) {
        let name = self.e.name.clone();
        let epoch = self.epoch;
        let Side::Standby(s) = &mut self.side else {
            return;
        };
        s.hello_at = Some(Instant::now());
        if matches!(s.state, CopyState::NeedsResync(_)) && s.replica.is_some() {
            // The primary resyncs a copy by page hashes if it must.
            s.state = CopyState::Streaming;
        }
        if let CopyState::Diverged(why) | CopyState::NeedsResync(why) = &s.state {
            let _ = self.node.peer_link.send(PeerMessage::DbRefused {
                db: name,
                reason: why.clone(),
            });
            return;
        }
        let position = s.replica.as_ref().map(Replica::position);
        let ranges = s.replica.as_ref().map(|r| CopyRanges {
            page_size: r.page_size() as u32,
            page_count: r.page_count(),
            hashes: r.hashes().range_hashes(RANGE_PAGES),
        });
        s.primary = None;
        let _ = self.node.peer_link.send(PeerMessage::DbHello {
            db: name,
            epoch,
            position,
            ranges,
        });
    }

    /// Keeps the primary's history of this database: this copy follows it.
    fn adopt_history(&mut self, history: Vec<EpochStart>) {
        if history == self.history || !matches!(self.side, Side::Standby(_)) {
            return;
        }
        if let Err(e) = save_history(&self.e.history_path, &history) {
            tracing::error!(
                "database {}: cannot record the history in {}: {e}",
                self.e.name,
                self.e.history_path.display()
            );
        }
        self.history = history;
    }

    /// One plan of a page-hash resync: answer with the pages whose hashes
    /// differ from this copy's.
    fn on_resync_plan(&mut self, plan: DbResyncPlan) {
        let name = self.e.name.clone();
        let Side::Standby(s) = &mut self.side else {
            return;
        };
        let Some(replica) = &s.replica else {
            return;
        };
        if plan.epoch < self.epoch || s.seeder.is_some() {
            return;
        }
        if plan.page_size as usize != replica.page_size() {
            let why = format!(
                "database {name}: the primary's pages are {} bytes and this copy's {}; seeding the copy anew",
                plan.page_size,
                replica.page_size()
            );
            self.set_copy_aside(&why, false);
            return;
        }
        if !matches!(&s.state, CopyState::Resyncing(r) if r.at == plan.position) {
            tracing::info!(
                "database {name}: resyncing by page hashes from txid {} to {}",
                replica.position().txid,
                plan.position.txid
            );
            s.partial = None;
            s.state = CopyState::Resyncing(Box::new(ResyncIn {
                at: plan.position,
                page_count: plan.page_count,
                pages: Vec::new(),
                bytes: 0,
            }));
        }
        let ours = replica.hashes();
        let pgnos = (plan.first..)
            .zip(&plan.hashes)
            .filter(|(pgno, h)| ours.get(*pgno) != Some(*h))
            .map(|(pgno, _)| pgno)
            .collect();
        let _ = self.node.peer_link.send(PeerMessage::DbResyncNeed {
            db: name,
            pgnos,
            last: plan.last,
        });
    }

    /// Every page of the resync is here: apply them in one transaction,
    /// checked against the snapshot's checksum.
    fn finish_resync(&mut self) {
        let name = self.e.name.clone();
        let Side::Standby(s) = &mut self.side else {
            return;
        };
        let CopyState::Resyncing(r) = std::mem::replace(&mut s.state, CopyState::Streaming) else {
            return;
        };
        let Some(replica) = &mut s.replica else {
            return;
        };
        let ResyncIn {
            at,
            page_count,
            mut pages,
            ..
        } = *r;
        pages.sort_by_key(|(pgno, _)| *pgno);
        let taken = pages.len() as u32;
        let tx = Transaction {
            pages,
            db_pages_after_commit: page_count,
            end_offset: 0,
            salts: Salts { salt1: 0, salt2: 0 },
        };
        match replica.seed(at, &tx) {
            Ok(at) => {
                tracing::info!(
                    "database {name}: resynced to txid {} with {taken} pages",
                    at.txid
                );
                s.unsettled_since = Some(Instant::now());
                let _ = self.node.peer_link.send(PeerMessage::DbSeedAck {
                    db: name,
                    next_pgno: taken,
                    done: true,
                });
                self.hello();
            }
            Err(e) => {
                let why = format!(
                    "database {name}: the resync did not check out: {e}; seeding the copy anew"
                );
                self.set_copy_aside(&why, false);
            }
        }
    }

    /// Lets go of this standby's copy and asks the primary for a seed: a
    /// copy that diverged (`quarantine`) is moved whole into the quarantine
    /// directory, never overwritten, and an alarm names it; a copy that is
    /// only out of date is removed.
    fn set_copy_aside(&mut self, why: &str, quarantine: bool) {
        let name = self.e.name.clone();
        let path = self.e.path.clone();
        let Side::Standby(s) = &mut self.side else {
            return;
        };
        let at = s.replica.as_ref().map(Replica::position);
        // Closing the replica lets go of the write lock; the files go next.
        s.replica = None;
        s.seeder = None;
        s.partial = None;
        s.batch.clear();
        s.batch_bytes = 0;
        s.ack_owed = None;
        s.ack_owed_bytes = 0;
        s.primary = None;
        s.state = CopyState::Streaming;
        let outcome = if quarantine {
            self.e.quarantine(at).map(|dir| {
                format!(
                    "{why}; the copy was quarantined whole in {}; seeding a new copy from the primary",
                    dir.display()
                )
            })
        } else {
            copy_files(&path)
                .iter()
                .filter(|f| f.exists())
                .try_for_each(std::fs::remove_file)
                .map(|()| format!("{why}; the copy was removed"))
        };
        match outcome {
            Ok(message) => {
                tracing::error!("{message}");
                let key = if quarantine { "quarantine" } else { "resync" };
                self.node
                    .db_alarm(&format!("database {name} {key}"), Some(message));
                self.hello();
            }
            Err(e) => {
                let why =
                    format!("{why}; the copy could not be set aside ({e}) and is kept as it is");
                self.refuse(CopyState::Diverged(why));
            }
        }
    }

    fn refuse(&mut self, state: CopyState) {
        let name = self.e.name.clone();
        let Side::Standby(s) = &mut self.side else {
            return;
        };
        let (CopyState::Diverged(why) | CopyState::NeedsResync(why)) = &state else {
            return;
        };
        tracing::error!("{why}");
        self.node
            .db_alarm(&format!("database {name}"), Some(why.clone()));
        let _ = self.node.peer_link.send(PeerMessage::DbRefused {
            db: name,
            reason: why.clone(),
        });
        s.state = state;
        s.partial = None;
    }

    fn on_tx(&mut self, part: DbTx) {
        let name = self.e.name.clone();
        let Side::Standby(s) = &mut self.side else {
            return;
        };
        if part.epoch < self.epoch {
            tracing::warn!(
                "database {name}: refused txid {} from epoch {}, older than this node's {}",
                part.txid,
                part.epoch,
                self.epoch
            );
            return;
        }
        if s.state != CopyState::Streaming {
            return;
        }
        let Some(replica) = &mut s.replica else {
            return;
        };
        s.primary = Some((part.txid, part.sum));
        // Reassemble.
        let whole = if part.part == 0 {
            s.partial = None;
            if part.parts == 1 {
                Some((part.pages.clone(), part))
            } else {
                let bytes = part.pages.iter().map(|(_, d)| d.len() as u64).sum();
                s.partial = Some(Partial {
                    pages: part.pages.clone(),
                    head: part,
                    bytes,
                });
                None
            }
        } else {
            match s.partial.take() {
                Some(mut p)
                    if p.head.txid == part.txid
                        && p.head.parts == part.parts
                        && p.head.part + 1 == part.part =>
                {
                    p.bytes += part.pages.iter().map(|(_, d)| d.len() as u64).sum::<u64>();
                    if p.bytes > TX_BYTES_MAX {
                        let why = format!("database {name}: transaction {} is larger than {TX_BYTES_MAX} bytes: it needs a resync", part.txid);
                        self.refuse(CopyState::NeedsResync(why));
                        return;
                    }
                    p.pages.extend(part.pages);
                    p.head.part = part.part;
                    if part.part + 1 == part.parts {
                        Some((p.pages, p.head))
                    } else {
                        s.partial = Some(p);
                        None
                    }
                }
                // A part out of sequence (a resend began): wait for part 0.
                _ => None,
            }
        };
        let Some((pages, head)) = whole else {
            return;
        };
        let have = replica.position();
        let last = s.batch.last().map_or(have.txid, |b| b.1);
        if head.txid <= last {
            if s.batch.is_empty() && head.txid == have.txid && head.sum == have.sum {
                // A resend of what was applied: say so at once.
                s.ack_owed = Some(have);
                self.send_owed_ack();
            }
            return;
        }
        if head.txid != last.next() {
            // A gap: say where we stand and the primary resends from there.
            self.flush_batch();
            if let Side::Standby(s) = &mut self.side {
                if s.hello_at
                    .is_none_or(|t| t.elapsed() > Duration::from_millis(200))
                {
                    self.hello();
                }
            }
            return;
        }
        let bytes: u64 = pages.iter().map(|(_, d)| d.len() as u64).sum();
        let tx = Transaction {
            pages,
            db_pages_after_commit: head.db_pages_after_commit,
            end_offset: 0,
            salts: Salts { salt1: 0, salt2: 0 },
        };
        s.batch.push((head.epoch, head.txid, tx, head.sum));
        s.batch_bytes += bytes;
        if s.batch.len() >= BATCH_TX_MAX || s.batch_bytes >= BATCH_BYTES_MAX {
            self.flush_batch();
        }
    }

    fn on_seed(&mut self, chunk: DbSeed) {
        let name = self.e.name.clone();
        let path = self.e.path.clone();
        let Side::Standby(s) = &mut self.side else {
            return;
        };
        if chunk.epoch < self.epoch {
            return;
        }
        if let CopyState::Resyncing(r) = &mut s.state {
            if r.at != chunk.position {
                return;
            }
            r.bytes += chunk.pages.iter().map(|(_, d)| d.len() as u64).sum::<u64>();
            r.pages.extend(chunk.pages);
            if r.bytes > TX_BYTES_MAX {
                let why = format!(
                    "database {name}: the resync differs in more than {TX_BYTES_MAX} bytes; seeding the copy anew"
                );
                self.set_copy_aside(&why, false);
                return;
            }
            let taken = r.pages.len() as u32;
            if !chunk.last {
                let _ = self.node.peer_link.send(PeerMessage::DbSeedAck {
                    db: name,
                    next_pgno: taken,
                    done: false,
                });
                return;
            }
            self.finish_resync();
            return;
        }
        if s.replica.is_some() {
            return;
        }
        // Page 1 again: the primary began another image (its hello and a
        // new connection crossed); that one is the one to write.
        let starts = chunk.pages.first().is_some_and(|(p, _)| *p == 1);
        if starts && s.seeder.is_some() {
            tracing::info!("database {name}: the primary began the seed again");
            s.seeder = None;
        }
        if s.seeder.is_none() {
            if !starts && !chunk.pages.is_empty() {
                return;
            }
            match Seeder::begin(&path, chunk.position, chunk.page_size, chunk.page_count) {
                Ok(seeder) => {
                    tracing::info!(
                        "database {name}: seeding {} from the primary: {} pages at txid {}",
                        path.display(),
                        chunk.page_count,
                        chunk.position.txid
                    );
                    s.seeder = Some(seeder);
                    s.state = CopyState::Seeding;
                }
                Err(e) => {
                    let why = format!("database {name}: cannot seed: {e}");
                    self.refuse(CopyState::NeedsResync(why));
                    return;
                }
            }
        }
        let Some(seeder) = &mut s.seeder else {
            return;
        };
        if seeder.position() != chunk.position {
            return;
        }
        if let Err(e) = seeder.write(&chunk.pages) {
            let why = format!("database {name}: seeding failed: {e}");
            s.seeder = None;
            self.refuse(CopyState::NeedsResync(why));
            return;
        }
        let next_pgno = seeder.next_pgno();
        if !chunk.last {
            let _ = self.node.peer_link.send(PeerMessage::DbSeedAck {
                db: name,
                next_pgno,
                done: false,
            });
            return;
        }
        let Some(seeder) = s.seeder.take() else {
            return;
        };
        match seeder.finish() {
            Ok(replica) => {
                tracing::info!(
                    "database {name}: seeded at txid {}",
                    replica.position().txid
                );
                limit_copy_wal(&replica, self.e.wal_bytes_max, &name);
                s.replica = Some(replica);
                s.state = CopyState::Streaming;
                let _ = self.node.peer_link.send(PeerMessage::DbSeedAck {
                    db: name,
                    next_pgno,
                    done: true,
                });
                self.hello();
            }
            Err(e) => {
                let why = format!("database {name}: the seed image did not check out: {e}");
                self.refuse(CopyState::NeedsResync(why));
            }
        }
    }

    /// Applies the transactions received so far in one SQLite transaction
    /// ([`Replica::apply_batch`]) and acknowledges the last, now or within
    /// [`ACK_EVERY`] (see `StandbySide::ack_owed`). The engine calls
    /// it once its inbox holds no more transactions, and before anything
    /// else is handled, so a batch never holds back a verify, a switchover's
    /// confirm step or a role change; at a steady rate batches are of one.
    fn flush_batch(&mut self) {
        let name = self.e.name.clone();
        let Side::Standby(s) = &mut self.side else {
            return;
        };
        if s.batch.is_empty() {
            return;
        }
        let batch = std::mem::take(&mut s.batch);
        let batch_bytes = std::mem::take(&mut s.batch_bytes);
        s.flushed_at = Some(Instant::now());
        s.flush_every = flush_every_after(batch.len());
        let Some(replica) = &mut s.replica else {
            return;
        };
        match replica.apply_batch(&batch) {
            Ok(at) => {
                s.ack_owed = Some(at);
                s.ack_owed_bytes += batch_bytes;
                s.unsettled_since = Some(Instant::now());
                let waited_for = batch.first().is_some_and(|b| b.1 <= s.flush_upto);
                // Past its queue's cap the primary lets the standby go: an
                // eighth of it is acknowledged without waiting.
                let many = s.ack_owed_bytes >= self.e.queue_bytes_max / 8
                    || s.acked
                        .is_some_and(|(_, txid)| at.txid.0.saturating_sub(txid.0) >= ACK_AFTER_TX);
                if waited_for || many || self.ack_due().is_some_and(|t| t <= Instant::now()) {
                    self.send_owed_ack();
                }
            }
            Err(e @ (ReplicaError::Diverged { .. } | ReplicaError::ForeignWrite { .. })) => {
                let why = format!("database {name}: {e}");
                self.set_copy_aside(&why, true);
            }
            Err(e) => {
                tracing::error!(
                    "database {name}: cannot apply txids {}..={}: {e}; will retry",
                    batch.first().map_or(TxId(0), |b| b.1),
                    batch.last().map_or(TxId(0), |b| b.1)
                );
                s.retry = true;
            }
        }
    }

    /// Acknowledges what was applied, if that is not done yet. Refused by
    /// a full outbox, it is tried again at [`Actor::ack_due`]; on no
    /// connection, the hello on the next one says where the copy stands.
    fn send_owed_ack(&mut self) {
        let Side::Standby(s) = &mut self.side else {
            return;
        };
        let Some(at) = s.ack_owed.take() else {
            return;
        };
        s.acked = Some((Instant::now(), at.txid));
        let sent = self.node.peer_link.send(PeerMessage::DbAck {
            db: self.e.name.clone(),
            txid: at.txid,
            sum: at.sum,
        });
        if sent.is_err() && self.node.peer_link.is_connected() {
            s.ack_owed = Some(at);
        } else {
            s.ack_owed_bytes = 0;
        }
    }

    /// When what was applied must be acknowledged, if anything waits.
    fn ack_due(&self) -> Option<Instant> {
        let Side::Standby(s) = &self.side else {
            return None;
        };
        s.ack_owed?;
        Some(s.acked.map_or_else(Instant::now, |(t, _)| t + ACK_EVERY))
    }

    /// When the position record of the last apply is to be made durable.
    fn settle_due(&self) -> Option<Instant> {
        match &self.side {
            Side::Standby(s) => s
                .unsettled_since
                .map(|t| t + settle_after(s.settle_failures)),
            _ => None,
        }
    }

    /// Makes the position record durable once no apply followed the last
    /// one for [`ACK_EVERY`]: a stream that stops leaves a record that
    /// survives a power loss (see `tandem_standby::position`), and one that
    /// flows costs no fdatasync per apply.
    fn settle_position(&mut self) {
        if self.settle_due().is_none_or(|t| t > Instant::now()) {
            return;
        }
        let Side::Standby(s) = &mut self.side else {
            return;
        };
        s.unsettled_since = None;
        match s.replica.as_mut().map(Replica::make_position_durable) {
            Some(Err(e)) => {
                // Said at the first failure and then about every minute,
                // not at every try (a failing disk would fill the log).
                s.settle_failures = s.settle_failures.saturating_add(1);
                if s.settle_failures % SETTLE_TRIES_PER_LOG == 1 {
                    tracing::error!(
                        "database {}: {e}; trying again, then every {} s",
                        self.e.name,
                        SETTLE_RETRY_MAX.as_secs()
                    );
                }
                s.unsettled_since = Some(Instant::now());
            }
            Some(Ok(())) if s.settle_failures > 0 => {
                tracing::info!(
                    "database {}: the position record is durable again",
                    self.e.name
                );
                s.settle_failures = 0;
            }
            _ => {}
        }
    }

    /// Whether received transactions wait to be applied.
    fn batch_pending(&self) -> bool {
        matches!(&self.side, Side::Standby(s) if !s.batch.is_empty())
    }

    /// When the waiting batch is due: at once, unless the last one was
    /// applied less than `flush_every` ago.
    fn flush_due(&self) -> Option<Instant> {
        let Side::Standby(s) = &self.side else {
            return None;
        };
        if s.batch.is_empty() {
            return None;
        }
        let now = Instant::now();
        // A barrier waits for it; or the primary's window is half full: it
        // ships no more until these are acknowledged, and waiting out the
        // interval would cap a stream at a window per interval.
        let window_half_full = s.batch.len() as u64 >= IN_FLIGHT_TX_MAX / 2;
        if window_half_full || s.batch.first().is_some_and(|b| b.1 <= s.flush_upto) {
            return Some(now);
        }
        Some(s.flushed_at.map_or(now, |t| (t + s.flush_every).max(now)))
    }

    // ----- inputs ----------------------------------------------------------

    fn handle(&mut self, input: Input) {
        if !matches!(input, Input::Peer(PeerMessage::DbTx(_))) {
            // A barrier's `DbFlush` among them: it may wait for either.
            self.flush_batch();
            self.send_owed_ack();
        }
        match input {
            Input::Peer(msg) => self.on_peer(msg),
            Input::Precheck(reply) => {
                let _ = reply.send(self.precheck());
            }
            Input::Fence(wait, reply) => {
                // Answered by `keep_fence`, at the latest when the wait ends.
                self.fence.waiters.push((Instant::now() + wait, reply));
            }
            Input::Barrier(reply) => {
                let _ = reply.send(self.start_barrier());
            }
            Input::Confirm(expected, reply) => {
                let _ = reply.send(self.confirm(&expected));
            }
            Input::Verify(reply) => {
                let _ = reply.send(self.start_verify());
            }
        }
    }

    fn on_peer(&mut self, msg: PeerMessage) {
        match msg {
            PeerMessage::DbTx(t) => self.on_tx(t),
            PeerMessage::DbSeed(c) => self.on_seed(c),
            PeerMessage::DbAsk { history, .. } => {
                self.adopt_history(history);
                // Answered even while a seed or resync is being written: the
                // primary asks because it lost track of it (a primary that
                // still has it ignores the hello).
                self.hello()
            }
            PeerMessage::DbHello {
                epoch,
                position,
                ranges,
                ..
            } => self.on_hello(epoch, position, ranges),
            PeerMessage::DbResyncPlan(plan) => self.on_resync_plan(plan),
            PeerMessage::DbResyncNeed { pgnos, last, .. } => self.on_resync_need(pgnos, last),
            PeerMessage::DbQuarantine { epoch, reason, .. } if epoch >= self.epoch => {
                self.set_copy_aside(&reason, true)
            }
            PeerMessage::DbAck { txid, sum, .. } => self.on_ack(txid, sum),
            PeerMessage::DbFlush { upto, .. } => {
                if let Side::Standby(s) = &mut self.side {
                    s.flush_upto = s.flush_upto.max(upto);
                }
            }
            PeerMessage::DbVerify { id, .. } => self.answer_verify(id),
            PeerMessage::DbVerifyRequest { id, .. } => {
                // Run the verify as the primary, off the engine's loop (it
                // sends to this engine's inbox and waits for the standby).
                let (e, node) = (self.e.clone(), self.node.clone());
                tokio::spawn(async move {
                    let report = match e.verify(VERIFY_WAIT).await {
                        Ok(v) => v,
                        Err(w) => json!({"db": e.name, "identical": false, "complete": false,
                                         "differences": [w]}),
                    };
                    let _ = node.peer_link.send(PeerMessage::DbVerifyReport {
                        db: e.name.clone(),
                        id,
                        report: report.to_string(),
                    });
                });
            }
            PeerMessage::DbSeedAck {
                next_pgno, done, ..
            } => {
                if let Side::Primary(p) = &mut self.side {
                    p.transfer_moved_at = Instant::now();
                    if let Some(seed) = &mut p.seed {
                        seed.acked_next = seed.acked_next.max(next_pgno);
                    }
                    // For a resync, `next_pgno` counts the pages taken.
                    if let Some(r) = &mut p.resync {
                        r.acked = r.acked.max(next_pgno as usize);
                    }
                    if done {
                        p.seed = None;
                        p.resync = None;
                    }
                }
                self.ship();
            }
            PeerMessage::DbRefused { reason, .. } => {
                if let Side::Primary(p) = &mut self.side {
                    tracing::error!(
                        "database {}: the standby cannot follow: {reason}",
                        self.e.name
                    );
                    p.peer = if reason.contains("diverged") {
                        Peer::Diverged(reason.clone())
                    } else {
                        Peer::NeedsResync(reason.clone())
                    };
                    p.seed = None;
                    p.waiters.clear();
                    self.alarm(Some(reason));
                }
            }
            _ => {}
        }
    }

    fn precheck(&mut self) -> Vec<String> {
        let name = &self.e.name;
        let Side::Primary(p) = &self.side else {
            return vec![format!(
                "database {name} is not open as primary on this node"
            )];
        };
        match &p.peer {
            Peer::Streaming => {}
            Peer::Unknown => {
                return vec![format!(
                    "database {name}: the standby has not reported its position"
                )]
            }
            Peer::Seeding => {
                return vec![format!(
                    "database {name}: the standby is still being seeded"
                )]
            }
            Peer::Resyncing => {
                return vec![format!("database {name}: the standby is being resynced")]
            }
            Peer::NeedsResync(w) | Peer::Diverged(w) => return vec![w.clone()],
        }
        let behind = p.capture.position().txid.0 - p.base.txid.0;
        if behind > SWITCHOVER_LAG_TX_MAX {
            return vec![format!(
                "database {name} is {behind} transactions behind (at most {SWITCHOVER_LAG_TX_MAX} for a switchover)"
            )];
        }
        Vec::new()
    }

    fn start_barrier(&mut self) -> Result<Waiting, String> {
        let name = self.e.name.clone();
        if !matches!(self.role, Role::Primary | Role::Demoting) {
            return Err(format!(
                "this node is {}: call the barrier on the primary",
                self.role
            ));
        }
        // Read the WAL to its end now: this is "committed before the call".
        self.poll_and_ship_with(true);
        let Side::Primary(p) = &mut self.side else {
            return Err(format!("database {name} is not open as primary"));
        };
        if let Peer::NeedsResync(w) | Peer::Diverged(w) = &p.peer {
            return Err(w.clone());
        }
        let target = p.capture.position();
        let (tx, rx) = oneshot::channel();
        // Only a streaming standby's acknowledgements hold: one it sent
        // before its copy was set aside and seeded or resynced anew does not.
        if p.peer == Peer::Streaming
            && (p.acked.is_some_and(|a| a.txid >= target.txid) || p.base.txid >= target.txid)
        {
            let _ = tx.send(p.base);
        } else {
            p.waiters.push((target.txid, tx));
            // The standby groups what arrives close together; a waiting
            // sender should not wait for the group.
            let _ = self.node.peer_link.send(PeerMessage::DbFlush {
                db: name,
                upto: target.txid,
            });
        }
        Ok(Waiting { target, acked: rx })
    }

    fn confirm(&self, expected: &Position) -> Result<(), String> {
        let Side::Standby(s) = &self.side else {
            return Err("not open as a standby copy on this node".into());
        };
        let Some(replica) = &s.replica else {
            return Err("no copy yet (seeding)".into());
        };
        let have = replica.position();
        if have.txid.0 == expected.seq && have.sum.0 == expected.digest {
            Ok(())
        } else {
            Err(format!(
                "the copy is at txid {} (checksum {}), the primary drained to txid {} (checksum {})",
                have.txid,
                have.sum,
                expected.seq,
                DbSum(expected.digest)
            ))
        }
    }

    // ----- status ------------------------------------------------------------

    fn publish(&self) {
        let e = &self.e;
        let wal_bytes = match &self.side {
            // As of the last poll: no `stat` of its own.
            Side::Primary(p) => p.capture.wal_bytes_at_poll(),
            _ => std::fs::metadata(wal_path(&e.path)).map_or(0, |m| m.len()),
        };
        let mut v = json!({
            "name": e.name, "path": e.path.display().to_string(), "wal_bytes": wal_bytes,
            "wal_bytes_max": e.wal_bytes_max,
        });
        match &self.side {
            Side::Idle => v["mode"] = json!("inactive"),
            Side::Failed(_, why, _) => {
                v["mode"] = json!("inactive");
                v["error"] = json!(why);
            }
            Side::Primary(p) => {
                let local = p.capture.position();
                // Until a new connection resets it, `peer` still says what
                // the standby was doing on the last one.
                let away = !self.node.peer_link.is_connected();
                let (mode, error) = match &p.peer {
                    // The queue is the spool of what the standby is owed.
                    Peer::Unknown | Peer::Streaming if away && !p.queue.is_empty() => {
                        ("spooling", None)
                    }
                    Peer::Unknown | Peer::Streaming if away => ("waiting for standby", None),
                    Peer::Unknown if !p.queue.is_empty() => ("spooling", None),
                    Peer::Unknown => ("waiting for standby", None),
                    Peer::Streaming => ("streaming", None),
                    Peer::Seeding => ("seeding", None),
                    Peer::Resyncing => ("resyncing", None),
                    Peer::NeedsResync(w) => ("needs resync", Some(w.clone())),
                    Peer::Diverged(w) => ("diverged", Some(w.clone())),
                };
                v["side"] = json!("primary");
                v["mode"] = json!(mode);
                v["error"] = json!(error);
                v["local"] = pos_json(Some(local));
                v["peer"] = pos_json(p.acked);
                // Counted from where the standby stood when the spool was
                // let go, if it was: it is no nearer since.
                let (behind, since, let_go_bytes) = match p.let_go {
                    Some(l) => (l.txid, Some(l.since), l.bytes),
                    None => (p.base.txid, p.queue.front().map(|q| q.captured), 0),
                };
                v["lag_transactions"] = json!(local.txid.0.saturating_sub(behind.0));
                v["lag_bytes"] = json!(let_go_bytes + p.queue_bytes);
                v["spool_bytes"] = json!(p.queue_bytes);
                v["spool_bytes_max"] = json!(e.queue_bytes_max);
                v["lag_ms"] = json!(since.map_or(0, |t| t.elapsed().as_millis() as u64));
                v["last_checkpoint"] = p.last_checkpoint.clone().unwrap_or_default();
                v["last_truncate"] = p.last_truncate.clone().unwrap_or_default();
                v["wal_truncations"] = json!(p.truncations);
                v["wal_resets"] = json!(p.resets);
                v["wal_reset_failures"] = json!(p.reset_failures);
                v["wal_truncate_failed"] = json!(p.truncate_failed);
                if let Some(seed) = &p.seed {
                    v["seed"] = json!({
                        "pages_total": seed.snap.page_count,
                        "pages_acknowledged": seed.acked_next.saturating_sub(1).min(seed.snap.page_count),
                        "at_txid": seed.snap.position.txid.0,
                    });
                }
            }
            Side::Standby(s) => {
                let local = s.replica.as_ref().map(Replica::position);
                let (mode, error) = match &s.state {
                    CopyState::Streaming if local.is_none() => ("waiting for seed", None),
                    CopyState::Streaming => ("streaming", None),
                    CopyState::Seeding => ("seeding", None),
                    CopyState::Resyncing(_) => ("resyncing", None),
                    CopyState::NeedsResync(w) => ("needs resync", Some(w.clone())),
                    CopyState::Diverged(w) => ("diverged", Some(w.clone())),
                };
                v["side"] = json!("standby");
                v["mode"] = json!(mode);
                v["error"] = json!(error);
                v["local"] = pos_json(local);
                v["peer"] = match s.primary {
                    Some((txid, sum)) => json!({"txid": txid.0, "sum": sum.to_hex()}),
                    None => serde_json::Value::Null,
                };
                let behind = match (s.primary, local) {
                    (Some((t, _)), Some(l)) => t.0.saturating_sub(l.txid.0),
                    _ => 0,
                };
                v["lag_transactions"] = json!(behind);
                if let Some(seeder) = &s.seeder {
                    v["seed"] = json!({
                        "pages_total": seeder.page_count(),
                        "pages_written": seeder.next_pgno().saturating_sub(1),
                        "at_txid": seeder.position().txid.0,
                    });
                }
            }
        }
        // Whether local writers are locked out: by the fence, or by the
        // replica's own hold on the write lock.
        v["fenced"] = json!(self.locked());
        if let Some(why) = &self.fence.error {
            v["fence_error"] = json!(why);
        }
        *e.status.lock().unwrap_or_else(|p| p.into_inner()) = v;
    }
}

/// [`Replica::limit_wal`]; a copy whose limit could not be set works as
/// before, its WAL file only larger.
fn limit_copy_wal(replica: &Replica, bytes: u64, name: &str) {
    if let Err(e) = replica.limit_wal(bytes) {
        tracing::warn!("database {name}: limiting the copy's WAL file: {e}");
    }
}

impl PrimarySide {
    /// A seed or resync brings the standby to `at` (a snapshot's position):
    /// what the queue holds up to it is inside the image, and streaming
    /// resumes after it.
    fn ship_after_snapshot(&mut self, at: DbPosition) {
        self.queue.retain(|q| q.txid > at.txid);
        self.queue_bytes = self.queue.iter().map(|q| q.bytes).sum();
        self.skip_to = at.txid;
        self.base = at;
        self.shipped_to = at.txid;
    }

    fn capture_page_size(&self) -> usize {
        self.queue
            .front()
            .and_then(|q| q.tx.pages.first())
            .map_or(4096, |(_, d)| d.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_standby_waits_longer_only_while_transactions_come_faster_than_it_applies() {
        assert_eq!(flush_every_after(0), FLUSH_EVERY_MIN);
        assert_eq!(flush_every_after(1), FLUSH_EVERY_MIN);
        assert_eq!(flush_every_after(FLUSH_GROW_AT - 1), FLUSH_EVERY_MIN);
        assert_eq!(flush_every_after(FLUSH_GROW_AT), FLUSH_EVERY_MIN * 4);
        assert_eq!(flush_every_after(5), FLUSH_EVERY_MAX);
        assert_eq!(flush_every_after(usize::MAX), FLUSH_EVERY_MAX);
    }

    #[test]
    fn a_position_record_that_cannot_be_synced_is_tried_less_and_less_often() {
        assert_eq!(settle_after(0), ACK_EVERY);
        assert_eq!(settle_after(1), ACK_EVERY * 2);
        assert_eq!(settle_after(3), ACK_EVERY * 8);
        assert_eq!(settle_after(7), SETTLE_RETRY_MAX);
        assert_eq!(settle_after(u32::MAX), SETTLE_RETRY_MAX);
        // Logged about once a minute at the slowest.
        let logged_every = SETTLE_RETRY_MAX * SETTLE_TRIES_PER_LOG;
        assert!(logged_every >= Duration::from_secs(50), "{logged_every:?}");
    }
}
