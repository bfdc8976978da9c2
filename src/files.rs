//! The file-set engines: one per `[[fileset]]`, following the node's role.
//!
//! While this node acts as primary (or is demoting in a switchover), the
//! engine watches the set's root ([`FileSetWatcher`], watches installed
//! before the startup scan), keeps the set's manifest current from the
//! watcher's hints ([`FileSetScanner::rescan`]) and, every `reconcile_ms`,
//! from a full scan (only files whose size, mtime or mode changed are read
//! again). It knows the standby's manifest from the standby's own report and
//! sends rounds of changes (see [`tandem_sync::filemsg`]) until the two
//! roots are equal. While this node is standby, the engine holds a
//! [`FileSetReplica`] and applies each change atomically; the chunks it lacks
//! are written into the file's temp file as they arrive, so an interrupted
//! transfer resumes from what is there.
//!
//! # One actor per file set
//!
//! Each engine runs on its own thread with a current-thread runtime:
//! scanning, hashing and fsyncs block only that set. Everything reaches it
//! through one bounded inbox, in order, so the switchover's confirm step
//! (queued by `Promote`) is handled after every change before it.
//!
//! # The truth is the manifest
//!
//! Watcher events are hints: a queue overflow, a Rescan flag or a watch
//! error marks the whole set dirty; a directory that appeared is looked at
//! again once its own watch is in place; and the periodic full scan catches
//! whatever slipped through (including sets that could not be watched at
//! all because of the `fs.inotify.max_user_watches` limit, which is
//! reported with the sysctl that raises it).
//!
//! # Local changes on the standby
//!
//! Every `reconcile_ms` the standby scans its own tree. Any difference from
//! its manifest is a local change: content moved to
//! `<data_dir>/quarantine/`, reported, and sent again by the primary. Its
//! manifest is kept in `<data_dir>/filesets/<name>.manifest`; at start the
//! tree as scanned is taken as the copy's state, and the paths where it
//! differs from the kept manifest (changed while tandem was stopped) are
//! quarantined if the primary replaces them. The manifest is rewritten at
//! most once a second; what the standby applied since is in
//! `<name>.applied` (`tandem_standby::applied`), so a file applied just
//! before a crash is not taken for a local change. A standby with no kept
//! manifest treats its whole tree so until the first round that ends in
//! sync.
//!
//! # Switchover
//!
//! There is nothing to fence (local software writes files without asking):
//! the drain step scans the whole tree and waits until the standby's root
//! equals it, then the old primary starts no new round. Its manifest of the
//! standby is what it starts from as a standby, so whatever was written on
//! it after the drain is quarantined when the new primary replaces it, and
//! the new primary starts from its replica's manifest: neither side
//! re-sends anything.
//!
//! # Verify
//!
//! `tandem verify` scans this tree from scratch and asks the peer to do the
//! same ([`FsMessage::VerifyAsk`]), then compares roots and names the paths
//! that differ.

use crate::node::Node;
use serde_json::json;
use std::collections::{HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tandem_config::FileSet;
use tandem_primary::files::{ChunkCache, DirtySet, FileSetScanner, FileSetWatcher, ReadChunkError};
use tandem_standby::applied::AppliedLog;
use tandem_standby::files::{ApplyError, FileSetReplica};
use tandem_sync::chunk::{ChunkHash, ChunkRef};
use tandem_sync::delta::{middle_pairs, ChunkDelta, SketchStore};
use tandem_sync::filemsg::{
    manifest_parts, ChunkData, FsMessage, PartsIn, WireChange, CHUNKS_BYTES_MAX, CHUNK_ASK_MAX,
    INLINE_BYTES_MAX, ROUND_CHANGES_MAX,
};
use tandem_sync::fileset::SafePath;
use tandem_sync::manifest::{
    diff, while_scanning, Change, Entry, EntryKind, FileSetFilter, Manifest,
};
use tandem_sync::message::{Epoch, PeerMessage, Position, Role};
use tandem_sync::resource::{Resource, ResourceError};
use tokio::sync::{mpsc, oneshot, Notify};

/// Inbox depth: a full inbox makes the replication reader wait.
const INBOX: usize = 64;
/// How often the engine looks at the watcher's fresh directories, stalled
/// rounds and the reconcile clock.
const TICK: Duration = Duration::from_millis(50);
/// Inline chunk bytes in one round, at most: a round ends where they run
/// out (and they bound what one round holds in the link's outbox).
const ROUND_INLINE_BYTES_MAX: usize = 64 << 20;
/// File contents one scan pass reads, at most (about one round's worth):
/// a large tree is sent part by part, each part while the next is read,
/// and a change made meanwhile elsewhere in the set waits for one pass,
/// not for the whole tree to be read.
const SCAN_PASS_BYTES: u64 = ROUND_INLINE_BYTES_MAX as u64;
/// What the primary's chunk cache holds at most: one pass's files (the
/// next round's), with room for what keeping each costs.
const CHUNK_CACHE_BYTES: usize = (SCAN_PASS_BYTES + SCAN_PASS_BYTES / 8) as usize;
/// A chunk delta is sent instead of the whole chunk only if it saves at
/// least this many bytes (its own framing, about).
const DELTA_SAVING_MIN: usize = 128;
/// Chunk bytes the standby has asked for and not yet received, at most.
const FETCH_WINDOW_BYTES: u64 = 8 << 20;
/// A standby waiting this long for asked-for chunks gives the change up.
const FETCH_WAIT: Duration = Duration::from_secs(20);
/// A round with no sign of progress for this long is given up and the
/// standby asked where it stands.
const ROUND_STALL: Duration = Duration::from_secs(30);
/// After a round that did not end at the expected root, wait this long.
const RETRY_AFTER: Duration = Duration::from_millis(500);
/// What an away standby's owed changes were counted for: the root here,
/// the root of its last manifest, and how many files are left to read.
type OwedKey = ([u8; 32], [u8; 32], usize);

/// How often, at most, what an away standby is owed is counted again.
const OWED_COUNT_EVERY: Duration = Duration::from_secs(1);
/// A round that would take content away from the standby (delete a file,
/// or shrink one) waits until the watcher has been quiet this long: a file
/// that vanished may be the first half of a rename whose second half is
/// not reported yet (the two must meet in one diff to be a rename, not a
/// delete and a full re-send), and a file that shrank may be one being
/// rewritten in place (truncated, then written: sending the empty file
/// would make the standby drop the chunks the final version reuses).
const SETTLE: Duration = Duration::from_millis(25);
/// A busy tree whose watcher is never quiet holds such a round this long
/// at most.
const SETTLE_MAX: Duration = Duration::from_millis(250);
/// A full outbox is retried for at most this long.
const SEND_PATIENCE: Duration = Duration::from_secs(5);
/// The standby's report is asked for again after this long without one.
const ASK_AGAIN: Duration = Duration::from_secs(2);
/// The persisted manifest is rewritten at most this often.
const PERSIST_EVERY: Duration = Duration::from_secs(1);
/// Attempts at one change on the standby (a chunk that vanished locally
/// between the check and the use is fetched and the change tried again).
const APPLY_ATTEMPTS: usize = 3;

/// What reaches an engine, in order.
enum Input {
    Peer(Box<FsMessage>),
    Precheck(oneshot::Sender<Vec<String>>),
    /// Answered once the standby's root equals a full scan of this tree.
    Drain(oneshot::Sender<Result<Position, String>>),
    Confirm(Position, oneshot::Sender<Result<(), String>>),
    /// `tandem verify`: this tree scanned from scratch, the peer asked for
    /// its own; answered with the comparison.
    Verify(oneshot::Sender<serde_json::Value>),
}

/// One `[[fileset]]`. See the module doc.
pub struct FileSetEngine {
    pub name: String,
    root: PathBuf,
    include: Vec<String>,
    exclude: Vec<String>,
    reconcile: Duration,
    data_dir: PathBuf,
    inbox: mpsc::Sender<Input>,
    inbox_rx: Mutex<Option<mpsc::Receiver<Input>>>,
    status: Mutex<serde_json::Value>,
}

use crate::engine::lock;

fn unix_ms() -> u64 {
    crate::node::unix_ms()
}

impl FileSetEngine {
    pub fn new(set: &FileSet, root: PathBuf, data_dir: &Path) -> Arc<FileSetEngine> {
        let (inbox, rx) = mpsc::channel(INBOX);
        Arc::new(FileSetEngine {
            name: set.name.clone(),
            status: Mutex::new(json!({
                "name": set.name, "root": root.display().to_string(), "mode": "inactive",
            })),
            root,
            include: set.include.clone(),
            exclude: set.exclude.clone(),
            reconcile: Duration::from_millis(set.reconcile_ms),
            data_dir: data_dir.to_owned(),
            inbox,
            inbox_rx: Mutex::new(Some(rx)),
        })
    }

    pub fn status(&self) -> serde_json::Value {
        lock(&self.status).clone()
    }

    fn resource_name(&self) -> String {
        format!("file set {}", self.name)
    }

    fn error(&self, reason: impl Into<String>) -> ResourceError {
        ResourceError {
            resource: self.resource_name(),
            reason: reason.into(),
        }
    }

    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Input) -> Result<T, String> {
        let (tx, rx) = oneshot::channel();
        self.inbox
            .send(make(tx))
            .await
            .map_err(|_| "the file set engine has stopped".to_string())?;
        rx.await
            .map_err(|_| "the file set engine has stopped".to_string())
    }

    fn manifest_path(&self) -> PathBuf {
        self.data_dir
            .join("filesets")
            .join(format!("{}.manifest", self.name))
    }

    /// The standby's record of applies since the manifest was kept.
    fn applied_log_path(&self) -> PathBuf {
        self.manifest_path().with_extension("applied")
    }

    /// Wait for the engine's [`Input::Verify`] answer, or report that the
    /// peer did not answer in time.
    async fn verify(&self, within: Duration) -> serde_json::Value {
        let not_verified = |why: String| {
            json!({"fileset": self.name, "identical": false, "complete": false,
                   "differences": [why]})
        };
        let (tx, rx) = oneshot::channel();
        if self.inbox.send(Input::Verify(tx)).await.is_err() {
            return not_verified("the file set engine has stopped".into());
        }
        match tokio::time::timeout(within, rx).await {
            Ok(Ok(v)) => v,
            Ok(Err(_)) => not_verified("the verify was abandoned".into()),
            Err(_) => not_verified(format!(
                "the peer did not send its manifest within {} ms",
                within.as_millis()
            )),
        }
    }

    fn filter(&self) -> Result<FileSetFilter, String> {
        FileSetFilter::new(&self.include, &self.exclude).map_err(|e| e.to_string())
    }
}

#[async_trait::async_trait]
impl Resource for FileSetEngine {
    fn name(&self) -> String {
        self.resource_name()
    }

    async fn precheck(&self) -> Vec<String> {
        self.ask(Input::Precheck).await.unwrap_or_else(|e| vec![e])
    }

    /// Local software writes files without asking tandem: there is no lock
    /// to take. What is written after the drain stays on this node and is
    /// quarantined when it becomes the standby.
    async fn fence(&self) -> Result<(), ResourceError> {
        Ok(())
    }

    async fn unfence(&self) -> Result<(), ResourceError> {
        Ok(())
    }

    async fn drain(&self, within: Duration) -> Result<Position, ResourceError> {
        let (tx, rx) = oneshot::channel();
        self.inbox
            .send(Input::Drain(tx))
            .await
            .map_err(|_| self.error("the file set engine has stopped"))?;
        match tokio::time::timeout(within, rx).await {
            Ok(Ok(r)) => r.map_err(|e| self.error(e)),
            Ok(Err(_)) => Err(self.error("the drain was abandoned (role change)")),
            Err(_) => Err(self.error(format!(
                "the standby's tree did not match this one within {} ms (files still changing?)",
                within.as_millis()
            ))),
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

/// Build the engines of every `[[fileset]]` of this node.
pub fn engines(cfg: &tandem_config::Config, me: &str) -> Vec<Arc<FileSetEngine>> {
    let Some(node_cfg) = cfg.node(me) else {
        return Vec::new();
    };
    let data_dir = cfg.data_dir(node_cfg);
    cfg.filesets
        .iter()
        .map(|f| FileSetEngine::new(f, node_cfg.prefixed(&f.root), &data_dir))
        .collect()
}

/// Start every engine's thread.
pub fn start(node: &Arc<Node>) {
    for engine in &node.filesets {
        let Some(rx) = lock(&engine.inbox_rx).take() else {
            continue;
        };
        let (node, engine) = (node.clone(), engine.clone());
        crate::engine::spawn(
            format!("fs-{}", engine.name),
            format!("file set {}", engine.name),
            move || Actor::new(node, engine, rx).run(),
        );
    }
}

/// Route a file-set message from the peer to its engine. A message that
/// fails validation is dropped with a log line (the round it belongs to
/// then fails and is retried from the manifests).
pub async fn on_peer_message(node: &Arc<Node>, msg: Box<FsMessage>) {
    if let Err(e) = msg.validate() {
        tracing::warn!("file set {}: {e}", msg.set());
        return;
    }
    match node.filesets.iter().find(|e| e.name == msg.set()) {
        Some(e) => {
            let _ = e.inbox.send(Input::Peer(msg)).await;
        }
        None => tracing::warn!(
            "the peer speaks of file set {}, which is not configured on {}",
            msg.set(),
            node.me
        ),
    }
}

/// A round sent and not yet acknowledged.
struct RoundOut {
    id: u64,
    /// The standby's manifest once the round is applied.
    expected: Manifest,
    last_progress: Instant,
}

struct PrimarySide {
    scanner: FileSetScanner,
    /// Sketches of the chunks the scanner read (shared with it), for chunk
    /// deltas: kept for the chunks of this tree and of the standby's.
    sketches: Arc<Mutex<SketchStore>>,
    /// Files the scanner read whole, their chunks sent from memory; emptied
    /// once the standby is in sync, and while it is away.
    chunk_cache: Arc<Mutex<ChunkCache>>,
    /// `None` when the set could not be watched (see `watch_error`).
    watcher: Option<FileSetWatcher>,
    watch_error: Option<String>,
    local: Manifest,
    /// Files scan passes left unread (see [`SCAN_PASS_BYTES`]), the one
    /// left the longest first: `local` still has their old entries, or none
    /// for new ones.
    deferred: Vec<SafePath>,
    /// A pass's files wait in the chunk cache for a round: while a round
    /// is out, no further pass is read until a round took every change
    /// that was ready (the one being built when this was set, or the last
    /// of several if a pass holds more changes than one round takes). A
    /// pass read sooner would push them out of the cache, and each of
    /// their chunks would be read from disk and hashed a second time.
    pass_waiting: bool,
    /// The standby's manifest, as it reported it plus every round it
    /// acknowledged at the expected root. `None`: unknown, asked for.
    peer: Option<Manifest>,
    asked_at: Option<Instant>,
    /// A report being reassembled.
    incoming: Option<PartsIn>,
    round: Option<RoundOut>,
    next_round: u64,
    last_reconcile: Instant,
    retry_at: Option<Instant>,
    /// When the watcher last reported something.
    last_hint: Instant,
    /// Since when a round has been held back for [`SETTLE`].
    held_since: Option<Instant>,
    last_errors: Vec<String>,
    skipped: Vec<String>,
    /// Drained for a switchover: no new rounds until the role changes.
    drained: bool,
    drains: Vec<oneshot::Sender<Result<Position, String>>>,
    unsynced_since: Option<Instant>,
    last_sync_unix_ms: Option<u64>,
    pending_changes: usize,
    bytes_queued: u64,
    /// What `pending_changes` and `bytes_queued` were counted for while the
    /// standby is away, and when.
    owed_for: Option<(OwedKey, Instant)>,
    rounds: u64,
    chunks_sent: u64,
    chunk_bytes_sent: u64,
    renames_sent: u64,
}

impl PrimarySide {
    /// What the standby is owed while it is away, by the last manifest it
    /// sent: what it will be sent when it is back. Counted again when a
    /// root or the files left to read changed, at most once a second.
    fn count_owed(&mut self) {
        let Some(peer) = &self.peer else { return };
        let key = (self.local.root(), peer.root(), self.deferred.len());
        // A diff of the whole set: at most once a second, however busy.
        if self
            .owed_for
            .is_some_and(|(k, at)| k == key || at.elapsed() < OWED_COUNT_EVERY)
        {
            return;
        }
        self.owed_for = Some((key, Instant::now()));
        let changes = diff(peer, &self.local);
        let have: HashSet<ChunkHash> = peer
            .iter()
            .flat_map(|(_, e)| e.chunks().iter().map(|c| c.hash))
            .collect();
        let listed: HashSet<&SafePath> = changes.iter().map(|c| c.path()).collect();
        self.pending_changes =
            changes.len() + self.deferred.iter().filter(|d| !listed.contains(d)).count();
        self.bytes_queued = new_chunk_bytes(&changes, &have);
    }

    /// Whether the next pass must wait: one waits in the chunk cache for a
    /// round that is out (see `pass_waiting`).
    fn pass_held(&self) -> bool {
        self.pass_waiting && self.round.is_some()
    }

    /// Let go of the files the scanner kept for sending (and so read on
    /// at will: no pass waits in the cache any more).
    fn forget_cached_chunks(&mut self) {
        self.chunk_cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        self.pass_waiting = false;
    }
}

struct StandbySide {
    scanner: FileSetScanner,
    replica: FileSetReplica,
    /// The round being applied: its id and the errors so far.
    round: Option<(u64, Vec<String>)>,
    next_state_id: u64,
    primary_root: Option<[u8; 32]>,
    last_sync_unix_ms: Option<u64>,
    /// Since when this copy has been behind: the first change of a round
    /// that found it in sync (None: in sync, or not known since a start).
    behind_since: Option<Instant>,
    last_reconcile: Instant,
    quarantined: u64,
    last_quarantined: VecDeque<String>,
    last_errors: Vec<String>,
    /// Chunk bytes that came from the primary (inline or asked for).
    bytes_received: u64,
    chunks_received: u64,
    /// Temp files of abandoned transfers may be lying around: removed at
    /// the next round that ends in sync.
    partials_maybe: bool,
    /// Said that one node mirrors owners and the other does not.
    owners_disagree_said: bool,
}

impl StandbySide {
    /// Write chunks received for `path` (checked as their message was
    /// decoded) into its temp file, and count them.
    fn stage_received(
        &mut self,
        path: &SafePath,
        entry: &Entry,
        chunks: &[&ChunkData],
    ) -> Result<(), String> {
        self.replica
            .stage_checked_chunks(path, entry, chunks.iter().map(|c| (&c.hash, &c.bytes[..])))
            .map_err(|e| e.to_string())?;
        self.bytes_received += chunks.iter().map(|c| c.bytes.len() as u64).sum::<u64>();
        self.chunks_received += chunks.len() as u64;
        Ok(())
    }
}

enum Side {
    Idle,
    Primary(Box<PrimarySide>),
    Standby(Box<StandbySide>),
    /// Opening the side failed: the error, and when (retried after a while).
    Failed(Role, String, Instant),
}

struct Actor {
    node: Arc<Node>,
    e: Arc<FileSetEngine>,
    inbox: mpsc::Receiver<Input>,
    /// Inputs read while the standby waited for chunks, handled next.
    deferred: VecDeque<Input>,
    side: Side,
    role: Role,
    epoch: Epoch,
    wake: Arc<Notify>,
    persisted_at: Option<Instant>,
    persist_due: bool,
    verify_seq: u64,
    /// Verifies waiting for the peer's manifest: this tree's, and the waiter.
    verifies: HashMap<u64, (Manifest, oneshot::Sender<serde_json::Value>)>,
    /// The peer's manifest for a verify, being reassembled.
    verify_incoming: Option<PartsIn>,
}

enum Event {
    Role,
    Connected,
    Input(Input),
    Dirty,
    Tick,
    Stop,
}

impl Actor {
    fn new(node: Arc<Node>, e: Arc<FileSetEngine>, inbox: mpsc::Receiver<Input>) -> Actor {
        Actor {
            node,
            e,
            inbox,
            deferred: VecDeque::new(),
            side: Side::Idle,
            role: Role::Fenced,
            epoch: Epoch(0),
            wake: Arc::new(Notify::new()),
            persisted_at: None,
            persist_due: false,
            verify_seq: 1,
            verifies: HashMap::new(),
            verify_incoming: None,
        }
    }

    async fn run(mut self) {
        let mut roles = self.node.role_signal();
        let mut connections = self.node.peer_link.connections();
        let mut shutdown = self.node.shutdown_signal();
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let wake = self.wake.clone();
        loop {
            let (role, epoch) = *roles.borrow_and_update();
            let was = self.role;
            self.role = role;
            self.epoch = epoch;
            if role == Role::Primary && was != Role::Primary {
                // A rollback or a regained lease: drained no more.
                if let Side::Primary(p) = &mut self.side {
                    p.drained = false;
                }
            }
            self.follow_role().await;
            self.progress().await;
            self.publish();
            let event = match self.deferred.pop_front() {
                Some(i) => Event::Input(i),
                None => tokio::select! {
                    r = roles.changed() => if r.is_err() { Event::Stop } else { Event::Role },
                    c = connections.changed() => if c.is_err() { Event::Stop } else { Event::Connected },
                    i = self.inbox.recv() => i.map_or(Event::Stop, Event::Input),
                    _ = wake.notified() => Event::Dirty,
                    _ = tick.tick() => Event::Tick,
                    _ = shutdown.changed() => Event::Stop,
                },
            };
            // Files a round left pending are made durable before anything
            // else is looked at: only another change may wait for them.
            let another_change = matches!(
                &event,
                Event::Input(Input::Peer(m)) if matches!(**m, FsMessage::Change { .. })
            );
            if !another_change {
                self.commit_pending();
            }
            match event {
                Event::Stop => break,
                Event::Role => {}
                Event::Connected => self.on_connected().await,
                Event::Input(i) => {
                    // A message that came on a new connection is taken after
                    // the connection (as in the database engine).
                    if connections.has_changed().unwrap_or(false) {
                        connections.borrow_and_update();
                        self.on_connected().await;
                    }
                    self.handle(i).await
                }
                Event::Dirty => self.take_dirty(true),
                Event::Tick => self.on_tick().await,
            }
        }
        self.commit_pending();
        self.persist(true);
        tracing::debug!("file set {}: engine stopped", self.e.name);
    }

    /// Make the standby's pending files durable and put them in place
    /// (`FileSetReplica::commit`); what failed counts against the round.
    fn commit_pending(&mut self) {
        let Side::Standby(s) = &mut self.side else {
            return;
        };
        let (files, bytes) = s.replica.pending();
        let started = Instant::now();
        let errors = s.replica.commit();
        if files > 1 {
            tracing::debug!(
                "file set {}: {files} file(s), {bytes} bytes made durable in {:?}",
                self.e.name,
                started.elapsed()
            );
        }
        if errors.is_empty() {
            return;
        }
        s.partials_maybe = true;
        for e in errors {
            let e = e.to_string();
            tracing::warn!("file set {}: {e}", self.e.name);
            if let Some((_, round_errors)) = &mut s.round {
                if round_errors.len() < 100 {
                    round_errors.push(e);
                }
            }
        }
    }

    fn alarm(&self, message: Option<String>) {
        self.node
            .db_alarm(&format!("file set {}", self.e.name), message);
    }

    /// Queue a message for the peer, waiting (within bounds) while the
    /// link's outbox is full. False if it could not be sent.
    async fn send(&self, msg: FsMessage) -> bool {
        send_to(&self.node, &self.e.name, msg).await
    }

    // ----- following the role -------------------------------------------

    async fn follow_role(&mut self) {
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
        let side = std::mem::replace(&mut self.side, Side::Idle);
        let opened = match wanted {
            Role::Primary => self
                .become_primary(side)
                .map(|p| Side::Primary(Box::new(p))),
            _ => self
                .become_standby(side)
                .map(|s| Side::Standby(Box::new(s))),
        };
        self.side = match opened {
            Ok(side) => {
                self.alarm(None);
                side
            }
            Err(e) => {
                let why = format!(
                    "file set {}: cannot open {} as {wanted}: {e}",
                    self.e.name,
                    self.e.root.display()
                );
                tracing::error!("{why}");
                self.alarm(Some(why.clone()));
                Side::Failed(wanted, why, Instant::now())
            }
        };
        match &self.side {
            Side::Primary(_) => self.ask_standby().await,
            Side::Standby(_) => self.report_state().await,
            _ => {}
        }
        self.persist_due = true;
    }

    fn load_persisted(&self) -> Option<Manifest> {
        let path = self.e.manifest_path();
        let bytes = std::fs::read(&path).ok()?;
        match Manifest::decode(&bytes) {
            Ok(m) => Some(m),
            Err(e) => {
                tracing::warn!("file set {}: ignoring {}: {e}", self.e.name, path.display());
                None
            }
        }
    }

    fn scanner(&self) -> Result<FileSetScanner, String> {
        if !self.e.root.exists() {
            std::fs::create_dir_all(&self.e.root)
                .map_err(|e| format!("cannot create the root: {e}"))?;
            tracing::info!(
                "file set {}: created the empty root {}",
                self.e.name,
                self.e.root.display()
            );
        }
        FileSetScanner::new(&self.e.root, self.e.filter()?).map_err(|e| e.to_string())
    }

    fn become_primary(&mut self, side: Side) -> Result<PrimarySide, String> {
        let sketches = Arc::new(Mutex::new(SketchStore::default()));
        let chunk_cache = Arc::new(Mutex::new(ChunkCache::new(CHUNK_CACHE_BYTES)));
        let scanner = self
            .scanner()?
            .with_sketches(sketches.clone())
            .with_chunk_cache(chunk_cache.clone());
        // What this node's tree was last known to be: only a hint for the
        // scan (unchanged size, mtime and mode are not read again).
        let hint = match side {
            Side::Standby(s) => Some(s.replica.manifest().clone()),
            Side::Primary(p) => Some(p.local),
            _ => self.load_persisted(),
        };
        // Watches first, then the scan: a change made during the scan is
        // either in it or reported afterwards.
        let wake = self.wake.clone();
        let (watcher, watch_error) = match FileSetWatcher::with_wake(
            scanner.root(),
            Some(Arc::new(move || wake.notify_one())),
        ) {
            Ok(w) => (Some(w), None),
            Err(e) => {
                let why = format!(
                    "file set {}: {e}; reconciling by a full scan every {} ms",
                    self.e.name,
                    self.e.reconcile.as_millis()
                );
                tracing::error!("{why}");
                self.alarm(Some(why.clone()));
                (None, Some(why))
            }
        };
        let scan = scanner.scan(hint.as_ref()).map_err(|e| e.to_string())?;
        let skipped: Vec<String> = scan
            .skipped
            .iter()
            .map(|s| format!("{}: {:?}", s.path, s.reason))
            .collect();
        tracing::info!(
            "file set {}: primary of {} ({} entries)",
            self.e.name,
            scanner.root().display(),
            scan.manifest.len()
        );
        Ok(PrimarySide {
            scanner,
            sketches,
            chunk_cache,
            watcher,
            watch_error,
            local: scan.manifest,
            deferred: Vec::new(),
            pass_waiting: false,
            peer: None,
            asked_at: None,
            incoming: None,
            round: None,
            next_round: 1,
            last_reconcile: Instant::now(),
            retry_at: None,
            last_hint: Instant::now(),
            held_since: None,
            last_errors: Vec::new(),
            skipped,
            drained: false,
            drains: Vec::new(),
            unsynced_since: Some(Instant::now()),
            last_sync_unix_ms: None,
            pending_changes: 0,
            bytes_queued: 0,
            owed_for: None,
            rounds: 0,
            chunks_sent: 0,
            chunk_bytes_sent: 0,
            renames_sent: 0,
        })
    }

    fn become_standby(&mut self, side: Side) -> Result<StandbySide, String> {
        let scanner = self.scanner()?;
        // What the tree is believed to hold: the standby's manifest as the
        // old primary knew it (after a switchover), else the one kept on
        // disk. Whatever differs on disk was changed locally.
        let believed = match side {
            Side::Primary(p) => Some(p.peer.unwrap_or(p.local)),
            Side::Standby(s) => Some(s.replica.manifest().clone()),
            _ => self.load_persisted(),
        };
        let scan = scanner.scan(believed.as_ref()).map_err(|e| e.to_string())?;
        // What tandem wrote since that manifest was kept: a path that holds
        // one of these states was not changed locally.
        let (applied_log, applied) = match AppliedLog::open(&self.e.applied_log_path()) {
            Ok((log, records)) => (Some(log), records),
            Err(e) => {
                tracing::warn!(
                    "file set {}: cannot keep its log of applies in {}: {e}; \
                     after a crash, files applied in the last second may be taken for local changes",
                    self.e.name,
                    self.e.applied_log_path().display()
                );
                (None, Vec::new())
            }
        };
        // What else differs between the manifest kept on disk and the tree
        // is a local change (or an apply whose record was lost in a power
        // cut). The tree as scanned is taken for the copy's state, so a
        // file the primary holds too is not sent again, and whatever of
        // those paths the primary replaces is kept in quarantine. A copy
        // with no record at all is treated so as a whole.
        let suspects: Option<std::collections::BTreeSet<SafePath>> = believed.as_ref().map(|b| {
            let differ = b.differing_paths(&scan.manifest);
            differ
                .into_iter()
                .filter(|p| {
                    let now = scan.manifest.get(p);
                    // A directory whose mode or mtime differ holds nothing
                    // to keep.
                    let dir_either_way =
                        b.get(p).is_some_and(Entry::is_dir) && now.is_some_and(Entry::is_dir);
                    let written_by_tandem = applied
                        .iter()
                        .any(|(at, state)| at == p && state.as_ref() == now);
                    // Kept by a build that mirrored no owners: an owner
                    // found now (setuid and setgid with it) is not a change.
                    let owner_only = b.get(p).zip(now).is_some_and(|(kept, now)| {
                        kept.owner.is_none() && *kept == now.without_owner()
                    });
                    !dir_either_way && !written_by_tandem && !owner_only
                })
                .collect()
        });
        let mut replica = FileSetReplica::open(
            scanner.root(),
            &self.e.data_dir,
            self.epoch.0,
            scan.manifest.clone(),
        )
        .map_err(|e| e.to_string())?;
        if let Some(log) = applied_log {
            replica.set_applied_log(log);
        }
        match suspects {
            None => replica.set_keep_replaced(true),
            Some(paths) if paths.is_empty() => {}
            Some(paths) => {
                tracing::warn!(
                    "file set {}: {} path(s) differ from the manifest kept for this standby; \
                     kept in quarantine if the primary replaces them",
                    self.e.name,
                    paths.len()
                );
                replica.keep_replaced_paths(paths);
            }
        }
        let side = StandbySide {
            scanner,
            replica,
            round: None,
            next_state_id: 1,
            primary_root: None,
            last_sync_unix_ms: None,
            behind_since: None,
            last_reconcile: Instant::now(),
            quarantined: 0,
            last_quarantined: VecDeque::new(),
            last_errors: Vec::new(),
            bytes_received: 0,
            chunks_received: 0,
            partials_maybe: true,
            owners_disagree_said: false,
        };
        tracing::info!(
            "file set {}: standby copy of {} ({} entries)",
            self.e.name,
            side.scanner.root().display(),
            side.replica.manifest().len()
        );
        Ok(side)
    }

    fn note_quarantined(&self, s: &mut StandbySide) {
        for q in s.replica.take_quarantined() {
            let line = format!("{} -> {}", q.path, q.moved_to.display());
            tracing::warn!(
                "file set {}: changed locally on the standby, moved to quarantine: {line}",
                self.e.name
            );
            s.quarantined += 1;
            s.last_quarantined.push_back(line);
            if s.last_quarantined.len() > 10 {
                s.last_quarantined.pop_front();
            }
        }
    }

    async fn on_connected(&mut self) {
        match &mut self.side {
            Side::Primary(p) => {
                p.peer = None;
                p.round = None;
                p.incoming = None;
                self.ask_standby().await;
            }
            Side::Standby(s) => {
                // A round cut by the lost connection never ends.
                s.round = None;
                self.report_state().await
            }
            _ => {}
        }
    }

    // ----- primary -------------------------------------------------------

    async fn ask_standby(&mut self) {
        let set = self.e.name.clone();
        if let Side::Primary(p) = &mut self.side {
            p.asked_at = Some(Instant::now());
        }
        self.send(FsMessage::Ask { set }).await;
    }

    /// Bring the manifest up to date with what the watcher reported, and
    /// with `read_on`, read on where the last pass stopped (unless a pass
    /// already waits for the round out). Without it,
    /// nothing is done while a scan is unfinished: its next pass takes the
    /// watcher's news, after the round being built from what it read.
    fn take_dirty(&mut self, read_on: bool) {
        let Side::Primary(p) = &mut self.side else {
            return;
        };
        // At most one pass ahead of the rounds (`PrimarySide::pass_waiting`).
        let read_on = read_on && !p.pass_held();
        if !read_on && !p.deferred.is_empty() {
            return;
        }
        let mut dirty = p
            .watcher
            .as_ref()
            .map_or(DirtySet::Paths(Default::default()), |w| w.take_dirty());
        let mut raise = None;
        if !dirty.is_empty() {
            if let Some(e) = p.watcher.as_ref().and_then(|w| w.last_error()) {
                if p.watch_error.as_ref() != Some(&e) {
                    tracing::error!("file set {}: {e}", self.e.name);
                    raise = Some(format!("file set {}: {e}", self.e.name));
                }
                p.watch_error = Some(e);
            }
            if dirty == DirtySet::Everything {
                tracing::warn!(
                    "file set {}: the watcher lost track (queue overflow or a watch error); rescanning the whole set",
                    self.e.name
                );
            }
            p.last_hint = Instant::now();
        } else if !read_on || p.deferred.is_empty() {
            return;
        }
        // A pass reads on where the last one stopped, with whatever the
        // watcher reported since.
        if let DirtySet::Paths(paths) = &mut dirty {
            paths.extend(p.deferred.iter().cloned());
        }
        rescan(&self.e.name, p, &dirty, &self.wake);
        if raise.is_some() {
            self.alarm(raise);
        }
    }

    async fn on_tick(&mut self) {
        let reconcile = self.e.reconcile;
        match &mut self.side {
            Side::Primary(p) => {
                // A reconcile reads a pass too: not while one waits in the
                // chunk cache, which it would push out; it comes at the
                // first tick after a round took that pass.
                if p.last_reconcile.elapsed() >= reconcile && !p.pass_held() {
                    p.last_reconcile = Instant::now();
                    rescan(&self.e.name, p, &DirtySet::Everything, &self.wake);
                }
                let stalled = p
                    .round
                    .as_ref()
                    .is_some_and(|r| r.last_progress.elapsed() >= ROUND_STALL);
                if stalled {
                    tracing::warn!(
                        "file set {}: no progress from the standby for {ROUND_STALL:?}; asking where it stands",
                        self.e.name
                    );
                    p.round = None;
                    p.peer = None;
                }
                let ask = p.peer.is_none()
                    && p.incoming.is_none()
                    && p.asked_at.is_none_or(|t| t.elapsed() >= ASK_AGAIN)
                    && self.node.peer_link.is_connected();
                if ask {
                    self.ask_standby().await;
                }
                self.take_dirty(true);
            }
            Side::Standby(s) => {
                let due = s.last_reconcile.elapsed() >= reconcile && s.round.is_none();
                if due {
                    s.last_reconcile = Instant::now();
                    self.standby_reconcile().await;
                }
            }
            _ => {}
        }
        self.persist(false);
    }

    /// Start a round if one is called for; answer drains once in sync.
    async fn progress(&mut self) {
        // Hints that arrived meanwhile first: the round is built from them,
        // and holding it back (SETTLE) depends on when the last one came.
        // Files a bounded pass left unread are read after the round is
        // sent, while the standby applies it.
        self.take_dirty(false);
        let connected = self.node.peer_link.is_connected();
        let may_send = matches!(self.role, Role::Primary | Role::Demoting);
        let demoting = self.role == Role::Demoting;
        let name = self.e.name.clone();
        let Side::Primary(p) = &mut self.side else {
            return;
        };
        if !connected || p.peer.is_none() {
            // No round until the standby is back and has said what it
            // holds; its chunks will then be read from the files.
            p.forget_cached_chunks();
        }
        if connected {
            p.owed_for = None;
        } else {
            p.count_owed();
        }
        if p.round.is_some() || !connected || !may_send {
            return;
        }
        let Some(peer) = &p.peer else { return };
        if peer.root() == p.local.root() && p.deferred.is_empty() {
            // The standby has every chunk: none will be asked for.
            p.forget_cached_chunks();
            if p.unsynced_since.take().is_some() || p.last_sync_unix_ms.is_none() {
                p.last_sync_unix_ms = Some(unix_ms());
                p.last_errors.clear();
            }
            p.pending_changes = 0;
            p.bytes_queued = 0;
            let position = Position {
                resource: format!("file set {name}"),
                seq: p.local.len() as u64,
                digest: p.local.root(),
            };
            for d in p.drains.drain(..) {
                // A drain whose switchover gave up (it timed out and the
                // node is primary again) is not waiting any more.
                if d.send(Ok(position.clone())).is_ok() && demoting {
                    p.drained = true;
                }
            }
            return;
        }
        p.unsynced_since.get_or_insert_with(Instant::now);
        if p.drained || p.retry_at.is_some_and(|t| Instant::now() < t) {
            return;
        }
        let mut changes = diff(peer, &p.local);
        let mut pending = changes.len();
        if !p.deferred.is_empty() {
            let listed: HashSet<&SafePath> = changes.iter().map(|c| c.path()).collect();
            pending += p.deferred.iter().filter(|d| !listed.contains(d)).count();
            // The scan is not over: what depends on what it has not read
            // waits for it.
            let unread: HashSet<SafePath> = p.deferred.iter().cloned().collect();
            changes = while_scanning(changes, &unread);
            if changes.is_empty() {
                p.pending_changes = pending;
                return;
            }
        }
        // Content the standby holds would go away: wait for the watcher
        // to settle (see SETTLE), within bounds.
        let loses_content = changes.iter().any(|c| match c {
            Change::Delete { old, .. } => file_size(old) > 0,
            Change::Modify { old, new, .. } => file_size(new) < file_size(old),
            _ => false,
        });
        if loses_content && p.last_hint.elapsed() < SETTLE {
            let since = *p.held_since.get_or_insert_with(Instant::now);
            if since.elapsed() < SETTLE_MAX {
                p.retry_at = Some(p.last_hint + SETTLE);
                return;
            }
        }
        p.held_since = None;
        let have: HashSet<ChunkHash> = peer
            .iter()
            .flat_map(|(_, e)| e.chunks().iter().map(|c| c.hash))
            .collect();
        p.pending_changes = pending;
        p.bytes_queued = new_chunk_bytes(&changes, &have);
        let ready = changes.len();
        let candidates: Vec<Change> = changes.into_iter().take(ROUND_CHANGES_MAX).collect();
        let mut expected = peer.clone();
        let mut batch_len = 0usize;
        let id = p.next_round;
        p.next_round += 1;
        p.rounds += 1;
        let epoch = self.epoch;
        let node = self.node.clone();
        let mut inline_left = ROUND_INLINE_BYTES_MAX;
        let mut sent_inline: HashSet<ChunkHash> = HashSet::new();
        {
            // Sketches of chunks neither side holds any more are of no use.
            let mut sketches = p.sketches.lock().unwrap_or_else(|e| e.into_inner());
            let local: HashSet<ChunkHash> = p
                .local
                .iter()
                .flat_map(|(_, e)| e.chunks().iter().map(|c| c.hash))
                .collect();
            sketches.retain(|h| have.contains(h) || local.contains(h));
        }
        // Each change is sent as soon as it is built (the standby starts
        // on it while the next is read), and the round ends where its
        // inline budget does: a change whose bytes no longer fit goes first
        // in the next round rather than one chunk request at a time.
        for (seq, change) in candidates.iter().enumerate() {
            let mut inline = Vec::new();
            let mut deltas = Vec::new();
            let mut bytes = 0usize;
            let mut round_full = false;
            // A new chunk of a modified file, and the old chunk at its place
            // in the list: what it was most likely made from.
            let bases: HashMap<ChunkHash, ChunkHash> = match change {
                Change::Modify { old, new, .. } => middle_pairs(old.chunks(), new.chunks())
                    .into_iter()
                    .filter(|(_, base)| have.contains(&base.hash))
                    .map(|(c, base)| (c.hash, base.hash))
                    .collect(),
                _ => HashMap::new(),
            };
            for c in change.changed_chunks() {
                if have.contains(&c.hash) || sent_inline.contains(&c.hash) {
                    continue;
                }
                if inline.len() + deltas.len() >= CHUNK_ASK_MAX {
                    break;
                }
                if inline_left < c.len as usize && bytes == 0 {
                    // Not even a delta is likely to fit: no need to read it.
                    round_full = true;
                    break;
                }
                // Unreadable now (changed since the scan): the standby asks
                // for it and hears so; the next round has the new version.
                let Ok(data) = p.scanner.read_chunk(change.path(), &c) else {
                    continue;
                };
                let delta = bases.get(&c.hash).and_then(|base| {
                    let sketches = p.sketches.lock().unwrap_or_else(|e| e.into_inner());
                    let sketch = sketches.get(base)?;
                    let d = ChunkDelta::against(*base, sketch, c.hash, &data);
                    (d.literal.len() + DELTA_SAVING_MIN <= data.len()).then_some(d)
                });
                let len = delta.as_ref().map_or(data.len(), |d| d.literal.len());
                if len > inline_left {
                    round_full = true;
                    break;
                }
                if bytes + len > INLINE_BYTES_MAX {
                    break;
                }
                bytes += len;
                inline_left -= len;
                match delta {
                    Some(d) => deltas.push(d),
                    None => inline.push(ChunkData {
                        hash: c.hash,
                        bytes: data,
                    }),
                }
            }
            if round_full && seq > 0 {
                break;
            }
            sent_inline.extend(inline.iter().map(|c| c.hash));
            sent_inline.extend(deltas.iter().map(|d| d.hash));
            expected.apply(change);
            batch_len += 1;
            p.chunks_sent += (inline.len() + deltas.len()) as u64;
            p.chunk_bytes_sent += bytes as u64;
            if matches!(change, Change::Rename { .. }) {
                p.renames_sent += 1;
            }
            let msg = FsMessage::Change {
                set: name.clone(),
                epoch,
                round: id,
                seq: seq as u32,
                change: WireChange::from_change(change),
                inline,
                deltas,
            };
            if !send_to(&node, &name, msg).await {
                // The link went down or stayed full: start over when it
                // comes back (a new connection asks for the manifest).
                p.round = None;
                p.retry_at = Some(Instant::now() + RETRY_AFTER);
                return;
            }
        }
        let end = FsMessage::RoundEnd {
            set: name.clone(),
            epoch,
            round: id,
            changes: batch_len as u32,
            root: expected.root(),
            entries: expected.len() as u64,
        };
        p.round = Some(RoundOut {
            id,
            expected,
            last_progress: Instant::now(),
        });
        if batch_len == ready {
            // The next pass is read while the standby applies this round.
            p.pass_waiting = false;
            if !p.deferred.is_empty() {
                self.wake.notify_one();
            }
        }
        tracing::debug!("file set {name}: round {id}: {batch_len} change(s)");
        if !send_to(&node, &name, end).await {
            p.round = None;
            p.retry_at = Some(Instant::now() + RETRY_AFTER);
        }
    }

    /// Answer a `ChunkAsk`: read the chunks as scanned and send them in
    /// messages of about [`CHUNKS_BYTES_MAX`], each sent before the next is
    /// read, so memory stays bounded whatever was asked.
    async fn serve_chunks(&mut self, round: u64, path: SafePath, chunks: Vec<ChunkRef>) {
        let name = self.e.name.clone();
        let mut rest = chunks.as_slice();
        loop {
            let Side::Primary(p) = &mut self.side else {
                return;
            };
            if let Some(r) = &mut p.round {
                r.last_progress = Instant::now();
            }
            let mut batch = Vec::new();
            let mut batch_bytes = 0usize;
            let mut unreadable = Vec::new();
            while let Some((c, more)) = rest.split_first() {
                if batch_bytes >= CHUNKS_BYTES_MAX {
                    break;
                }
                rest = more;
                match p.scanner.read_chunk(&path, c) {
                    Ok(bytes) => {
                        batch_bytes += bytes.len();
                        p.chunks_sent += 1;
                        p.chunk_bytes_sent += bytes.len() as u64;
                        batch.push(ChunkData {
                            hash: c.hash,
                            bytes,
                        });
                    }
                    Err(e) => {
                        if !matches!(e, ReadChunkError::Changed(_)) {
                            tracing::warn!("file set {name}: {e}");
                        }
                        unreadable.push(c.hash);
                    }
                }
            }
            let done = rest.is_empty() || !unreadable.is_empty();
            if !unreadable.is_empty() {
                // It changed since it was scanned: look again. The standby
                // gives this version up; the next round has the new one.
                let one = DirtySet::Paths(std::collections::BTreeSet::from([path.clone()]));
                rescan(&name, p, &one, &self.wake);
            }
            let msg = FsMessage::Chunks {
                set: name.clone(),
                round,
                path: path.clone(),
                chunks: batch,
                unreadable,
            };
            if !self.send(msg).await || done {
                return;
            }
        }
    }

    fn on_ack(&mut self, round: u64, root: [u8; 32], entries: u64, errors: Vec<String>) {
        let name = self.e.name.clone();
        let Side::Primary(p) = &mut self.side else {
            return;
        };
        let Some(r) = p.round.take_if(|r| r.id == round) else {
            return;
        };
        if errors.is_empty() && root == r.expected.root() && entries == r.expected.len() as u64 {
            p.peer = Some(r.expected);
            p.retry_at = None;
            self.persist_due = true;
        } else {
            // The standby sends its manifest after such an answer.
            for e in &errors {
                tracing::warn!("file set {name}: the standby could not apply: {e}");
            }
            p.last_errors = errors;
            p.peer = None;
            p.asked_at = Some(Instant::now());
            p.retry_at = Some(Instant::now() + RETRY_AFTER);
        }
    }

    fn on_state(&mut self, id: u64, part: u32, parts: u32, bytes: Vec<u8>) {
        let name = self.e.name.clone();
        let Side::Primary(p) = &mut self.side else {
            return;
        };
        let Some(whole) = PartsIn::gather(&mut p.incoming, id, part, parts, &bytes) else {
            return;
        };
        match Manifest::decode(&whole) {
            Ok(m) => {
                // Any round in flight is void: the next one starts from here
                // (a change already applied is harmless to replay).
                p.round = None;
                p.peer = Some(m);
                self.persist_due = true;
            }
            Err(e) => {
                tracing::error!("file set {name}: the standby's manifest is refused: {e}");
                p.peer = None;
            }
        }
    }

    // ----- standby -------------------------------------------------------

    async fn report_state(&mut self) {
        let set = self.e.name.clone();
        let epoch = self.epoch;
        let Side::Standby(s) = &mut self.side else {
            return;
        };
        let id = s.next_state_id;
        s.next_state_id += 1;
        let bytes = s.replica.manifest().encode();
        let parts = manifest_parts(&bytes);
        let n = parts.len() as u32;
        let msgs: Vec<FsMessage> = parts
            .into_iter()
            .enumerate()
            .map(|(i, b)| FsMessage::State {
                set: set.clone(),
                epoch,
                id,
                part: i as u32,
                parts: n,
                bytes: b.to_vec(),
            })
            .collect();
        for m in msgs {
            if !self.send(m).await {
                return;
            }
        }
    }

    /// The standby's own look at its tree (see the module doc).
    /// Returns whether it found differences (and so sent the manifest).
    async fn standby_reconcile(&mut self) -> bool {
        let name = self.e.name.clone();
        let Side::Standby(s) = &mut self.side else {
            return false;
        };
        let scan = match s.scanner.scan(Some(s.replica.manifest())) {
            Ok(scan) => scan,
            Err(e) => {
                tracing::error!("file set {name}: {e}");
                return false;
            }
        };
        if scan.manifest.root() == s.replica.manifest().root() {
            return false;
        }
        match s.replica.reconcile_local(&scan.manifest) {
            Ok(n) => tracing::info!("file set {name}: {n} path(s) changed locally on this standby"),
            Err(e) => tracing::error!("file set {name}: {e}"),
        }
        let mut side = std::mem::replace(&mut self.side, Side::Idle);
        if let Side::Standby(s) = &mut side {
            self.note_quarantined(s);
        }
        self.side = side;
        self.persist_due = true;
        self.report_state().await;
        true
    }

    /// Whether a change from the peer may be applied here now.
    fn refuse_change(&self, epoch: Epoch) -> Option<String> {
        if self.role != Role::Standby {
            return Some(format!("this node is {}, not a standby", self.role));
        }
        if epoch < self.epoch {
            return Some(format!(
                "a change from epoch {epoch}, older than this node's epoch {}",
                self.epoch
            ));
        }
        None
    }

    async fn on_change(
        &mut self,
        epoch: Epoch,
        round: u64,
        change: WireChange,
        inline: Vec<ChunkData>,
        deltas: Vec<ChunkDelta>,
    ) {
        let refused = self.refuse_change(epoch);
        let Side::Standby(s) = &mut self.side else {
            return;
        };
        if s.round.as_ref().is_none_or(|(id, _)| *id != round) {
            s.round = Some((round, Vec::new()));
        }
        s.behind_since.get_or_insert_with(Instant::now);
        // A delta is rebuilt against this copy's manifest; one made from
        // another version is refused like any change that cannot be
        // applied (reported; the manifest goes back and the next round
        // starts from it).
        let change = change.resolve(s.replica.manifest());
        if let Ok(change) = &change {
            tracing::debug!(
                "file set {}: round {round}: {}",
                self.e.name,
                short_change(change)
            );
            // Owners are mirrored only when tandem runs as root on both
            // nodes; said once, it explains every difference that follows.
            let root_here = || nix::unistd::geteuid().is_root();
            let owned = change.new_entry().map(|e| e.owner.is_some());
            if !s.owners_disagree_said && owned.is_some_and(|owned| owned != root_here()) {
                let root_here = root_here();
                s.owners_disagree_said = true;
                tracing::error!(
                    "file set {}: tandem runs as root on {} and not on the other node: owners {}; run it as root on both (or neither)",
                    self.e.name,
                    if root_here { "this node" } else { "the primary" },
                    if root_here {
                        "are not mirrored, and this copy's scans differ from the primary's"
                    } else {
                        "cannot be set here, and every owned entry fails"
                    }
                );
            }
        }
        let result = match (refused, change) {
            (Some(why), _) => Err(why),
            (None, Err(e)) => Err(e.to_string()),
            (None, Ok(change)) if touches_partial(&change) => Err(format!(
                "{}: refused, names one of tandem's own temp files",
                change.path()
            )),
            (None, Ok(change)) => self.apply(round, &change, inline, deltas).await,
        };
        let Side::Standby(s) = &mut self.side else {
            return;
        };
        if let Err(e) = result {
            tracing::warn!("file set {}: {e}", self.e.name);
            s.partials_maybe = true;
            if let Some((_, errors)) = &mut s.round {
                if errors.len() < 100 {
                    errors.push(e);
                }
            }
        }
        let mut side = std::mem::replace(&mut self.side, Side::Idle);
        if let Side::Standby(s) = &mut side {
            self.note_quarantined(s);
        }
        self.side = side;
    }

    /// Apply one change: stage what came inline (whole, or rebuilt from a
    /// delta against a chunk held here), fetch what is still missing into
    /// the temp file, then apply from there.
    async fn apply(
        &mut self,
        round: u64,
        change: &Change,
        inline: Vec<ChunkData>,
        deltas: Vec<ChunkDelta>,
    ) -> Result<(), String> {
        let mut content: Option<(SafePath, Entry)> = match change {
            Change::Create { path, entry }
            | Change::Modify {
                path, new: entry, ..
            } if matches!(entry.kind, EntryKind::File { .. }) => {
                Some((path.clone(), entry.clone()))
            }
            _ => None,
        };
        if let (Some((path, entry)), Side::Standby(s)) = (&content, &mut self.side) {
            // Only what is missing here: a replayed change finds its chunks
            // in place already and must not leave a temp file behind.
            let missing: HashSet<ChunkHash> = s
                .replica
                .missing_chunks(path, entry)
                .map_err(|e| e.to_string())?
                .iter()
                .map(|c| c.hash)
                .collect();
            let wanted: Vec<&ChunkData> = inline
                .iter()
                .filter(|c| missing.contains(&c.hash))
                .collect();
            s.stage_received(path, entry, &wanted)?;
            for d in deltas.iter().filter(|d| missing.contains(&d.hash)) {
                // The base is read from the current file, before the change
                // replaces it. If it cannot be read or the result does not
                // match its hash, the chunk is asked for whole below.
                let rebuilt = s
                    .replica
                    .held_chunk(&d.base)
                    .ok_or_else(|| "the base chunk is not held here".to_string())
                    .and_then(|base| d.rebuild(&base).map_err(|e| e.to_string()));
                match rebuilt {
                    Ok(bytes) => {
                        s.replica
                            .stage_checked_chunk(path, entry, &d.hash, &bytes)
                            .map_err(|e| e.to_string())?;
                        s.bytes_received += d.literal.len() as u64;
                        s.chunks_received += 1;
                    }
                    Err(e) => tracing::debug!(
                        "file set {}: {path}: a chunk delta: {e}; asking for the chunk whole",
                        self.e.name
                    ),
                }
            }
        }
        for attempt in 0..APPLY_ATTEMPTS {
            if let Some((path, entry)) = &content {
                self.fetch(round, path, entry).await?;
            }
            let Side::Standby(s) = &mut self.side else {
                return Err("no longer a standby".into());
            };
            let mut nothing = |p: &SafePath, c: &ChunkRef| -> std::io::Result<Vec<u8>> {
                Err(std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!("chunk at {} of {p} not staged", c.offset),
                ))
            };
            match s.replica.apply_batched(change, &mut nothing) {
                Ok(()) => return Ok(()),
                Err(ApplyError::Fetch(..)) if attempt + 1 < APPLY_ATTEMPTS => {
                    // A rename or a metadata change whose source was changed
                    // locally is rebuilt from chunks; so is a chunk that
                    // vanished from the tree since it was looked for.
                    content = match change {
                        Change::Create { path, entry } => Some((path.clone(), entry.clone())),
                        Change::Modify { path, new, .. } | Change::Meta { path, new, .. } => {
                            Some((path.clone(), new.clone()))
                        }
                        Change::Rename { to, new, .. } => Some((to.clone(), new.clone())),
                        Change::Delete { .. } => None,
                    };
                }
                Err(e) => return Err(e.to_string()),
            }
        }
        Err(format!("{}: chunks kept going missing", change.path()))
    }

    /// Ask the primary for the chunks of `entry` that are nowhere here and
    /// write them into the temp file as they come, at most
    /// [`FETCH_WINDOW_BYTES`] outstanding.
    async fn fetch(&mut self, round: u64, path: &SafePath, entry: &Entry) -> Result<(), String> {
        let Side::Standby(s) = &self.side else {
            return Err("no longer a standby".into());
        };
        let missing = s
            .replica
            .missing_chunks(path, entry)
            .map_err(|e| e.to_string())?;
        if missing.is_empty() {
            return Ok(());
        }
        let mut roles = self.node.role_signal();
        roles.borrow_and_update();
        let mut connections = self.node.peer_link.connections();
        connections.borrow_and_update();
        let mut todo: VecDeque<ChunkRef> = missing.into_iter().collect();
        let mut waiting: HashMap<ChunkHash, u64> = HashMap::new();
        let mut outstanding = 0u64;
        loop {
            // Ask for more while the window allows.
            let mut ask = Vec::new();
            while let Some(&c) = todo.front() {
                if outstanding > 0 && outstanding + u64::from(c.len) > FETCH_WINDOW_BYTES
                    || ask.len() >= CHUNK_ASK_MAX
                {
                    break;
                }
                todo.pop_front();
                outstanding += u64::from(c.len);
                waiting.insert(c.hash, u64::from(c.len));
                ask.push(c);
            }
            if !ask.is_empty() {
                let msg = FsMessage::ChunkAsk {
                    set: self.e.name.clone(),
                    round,
                    path: path.clone(),
                    chunks: ask,
                };
                if !self.send(msg).await {
                    return Err("the replication link is down".into());
                }
            }
            if waiting.is_empty() {
                return Ok(());
            }
            // Wait for chunks; everything else waits its turn.
            // A role change or a new connection ends the wait at once: the
            // main loop must follow the one, and the other voids the round.
            let input = tokio::select! {
                i = self.inbox.recv() => match i {
                    Some(i) => i,
                    None => return Err("the engine is stopping".into()),
                },
                _ = roles.changed() => return Err(format!("{path}: the role changed")),
                _ = connections.changed() => {
                    return Err(format!("{path}: the replication link was re-established"))
                }
                _ = tokio::time::sleep(FETCH_WAIT) => {
                    return Err(format!("{path}: no chunks from the primary for {FETCH_WAIT:?}"))
                }
            };
            let input = match input {
                Input::Peer(m) => Ok(*m),
                other => Err(other),
            };
            match input {
                Ok(FsMessage::Chunks {
                    round: r,
                    path: p,
                    chunks,
                    unreadable,
                    ..
                }) if r == round && p == *path => {
                    if !unreadable.is_empty() {
                        return Err(format!(
                            "{path}: changed on the primary while being sent; the next round has it"
                        ));
                    }
                    let Side::Standby(s) = &mut self.side else {
                        return Err("no longer a standby".into());
                    };
                    let mut asked = Vec::new();
                    for c in &chunks {
                        if let Some(len) = waiting.remove(&c.hash) {
                            outstanding = outstanding.saturating_sub(len);
                            asked.push(c);
                        }
                    }
                    s.partials_maybe |= !asked.is_empty();
                    s.stage_received(path, entry, &asked)?;
                }
                // Chunks of an earlier, abandoned attempt.
                Ok(FsMessage::Chunks { .. }) => {}
                Ok(other) => self.deferred.push_back(Input::Peer(Box::new(other))),
                Err(other) => self.deferred.push_back(other),
            }
        }
    }

    async fn on_round_end(&mut self, round: u64, root: [u8; 32], entries: u64) {
        self.commit_pending();
        let set = self.e.name.clone();
        let Side::Standby(s) = &mut self.side else {
            return;
        };
        let errors = match s.round.take() {
            Some((id, errors)) if id == round => errors,
            // A round with no changes, or whose changes came before a
            // restart of this engine: only the root says.
            _ => Vec::new(),
        };
        s.primary_root = Some(root);
        let m = s.replica.manifest();
        let (mine, count) = (m.root(), m.len() as u64);
        let has_errors = !errors.is_empty();
        let ok = !has_errors && mine == root && count == entries;
        if ok {
            s.last_sync_unix_ms = Some(unix_ms());
            s.behind_since = None;
            s.last_errors.clear();
            s.replica.set_keep_replaced(false);
            if std::mem::take(&mut s.partials_maybe) {
                // In sync: no transfer is under way, so every temp file is
                // left from one that was abandoned.
                tandem_standby::files::remove_partials(s.scanner.root());
            }
        } else {
            s.last_errors = errors.clone();
        }
        self.persist_due = true;
        let ack = FsMessage::Ack {
            set,
            round,
            root: mine,
            entries: count,
            errors,
        };
        self.send(ack).await;
        // A change that failed may have failed because the tree is not what
        // the manifest says (a directory removed locally): look first, so
        // the manifest sent is the tree's.
        let looked = !ok && has_errors && self.standby_reconcile().await;
        if !ok && !looked {
            self.report_state().await;
        }
    }

    fn confirm(&self, expected: &Position) -> Result<(), String> {
        let Side::Standby(s) = &self.side else {
            return Err("not open as a standby copy on this node".into());
        };
        let m = s.replica.manifest();
        if m.root() == expected.digest && m.len() as u64 == expected.seq {
            Ok(())
        } else {
            Err(format!(
                "the copy has {} entries (root {}), the primary drained to {} entries (root {})",
                m.len(),
                short(&m.root()),
                expected.seq,
                short(&expected.digest)
            ))
        }
    }

    // ----- inputs --------------------------------------------------------

    async fn handle(&mut self, input: Input) {
        match input {
            Input::Peer(msg) => self.on_peer(*msg).await,
            Input::Precheck(reply) => {
                let _ = reply.send(self.precheck());
            }
            Input::Drain(reply) => {
                let name = self.e.name.clone();
                match &mut self.side {
                    Side::Primary(p) => {
                        // "Everything written before the drain": a full look
                        // now, whatever the watcher said.
                        rescan(&name, p, &DirtySet::Everything, &self.wake);
                        p.drains.push(reply);
                    }
                    _ => {
                        let _ = reply.send(Err("not open as primary on this node".into()));
                    }
                }
            }
            Input::Confirm(expected, reply) => {
                let _ = reply.send(self.confirm(&expected));
            }
            Input::Verify(reply) => self.start_verify(reply).await,
        }
    }

    async fn on_peer(&mut self, msg: FsMessage) {
        match msg {
            FsMessage::Ask { .. } => {
                if matches!(self.side, Side::Standby(_)) {
                    self.report_state().await;
                }
            }
            FsMessage::State {
                id,
                part,
                parts,
                bytes,
                ..
            } => self.on_state(id, part, parts, bytes),
            FsMessage::Change {
                epoch,
                round,
                change,
                inline,
                deltas,
                ..
            } => self.on_change(epoch, round, change, inline, deltas).await,
            FsMessage::RoundEnd {
                round,
                root,
                entries,
                ..
            } => self.on_round_end(round, root, entries).await,
            FsMessage::ChunkAsk {
                round,
                path,
                chunks,
                ..
            } => self.serve_chunks(round, path, chunks).await,
            // Only wanted inside `fetch`; a late one is dropped.
            FsMessage::Chunks { .. } => {}
            FsMessage::Ack {
                round,
                root,
                entries,
                errors,
                ..
            } => self.on_ack(round, root, entries, errors),
            FsMessage::VerifyAsk { id, .. } => self.answer_verify(id).await,
            FsMessage::Verified {
                id,
                part,
                parts,
                bytes,
                ..
            } => self.on_verified(id, part, parts, bytes),
        }
    }

    // ----- verify --------------------------------------------------------

    /// This tree from scratch: every file read and hashed, nothing taken
    /// from an earlier manifest.
    fn fresh_scan(&self) -> Result<Manifest, String> {
        let scanner = self.scanner()?;
        scanner
            .scan(None)
            .map(|s| s.manifest)
            .map_err(|e| e.to_string())
    }

    async fn start_verify(&mut self, reply: oneshot::Sender<serde_json::Value>) {
        let name = self.e.name.clone();
        let failed = |why: String| json!({"fileset": name, "identical": false, "complete": false, "differences": [why]});
        let here = match self.fresh_scan() {
            Ok(m) => m,
            Err(e) => {
                let _ = reply.send(failed(format!("scanning this node's tree: {e}")));
                return;
            }
        };
        let id = self.verify_seq;
        self.verify_seq += 1;
        self.verifies.retain(|_, (_, r)| !r.is_closed());
        let ask = FsMessage::VerifyAsk {
            set: name.clone(),
            id,
        };
        if !self.send(ask).await {
            let _ = reply.send(failed("the replication link to the peer is down".into()));
            return;
        }
        self.verifies.insert(id, (here, reply));
    }

    async fn answer_verify(&mut self, id: u64) {
        let set = self.e.name.clone();
        // A tree that cannot be scanned is reported as an empty manifest
        // would be misleading: say nothing, and the asker times out with
        // the reason in this node's log.
        let bytes = match self.fresh_scan() {
            Ok(m) => m.encode(),
            Err(e) => {
                tracing::error!("file set {set}: verify: {e}");
                return;
            }
        };
        let parts = manifest_parts(&bytes);
        let n = parts.len() as u32;
        let msgs: Vec<FsMessage> = parts
            .into_iter()
            .enumerate()
            .map(|(i, b)| FsMessage::Verified {
                set: set.clone(),
                id,
                part: i as u32,
                parts: n,
                bytes: b.to_vec(),
            })
            .collect();
        for m in msgs {
            if !self.send(m).await {
                return;
            }
        }
    }

    fn on_verified(&mut self, id: u64, part: u32, parts: u32, bytes: Vec<u8>) {
        let Some(whole) = PartsIn::gather(&mut self.verify_incoming, id, part, parts, &bytes)
        else {
            return;
        };
        let Some((here, reply)) = self.verifies.remove(&id) else {
            return;
        };
        let name = self.e.name.clone();
        let report = match Manifest::decode(&whole) {
            Ok(peer) => {
                let differing = here.differing_paths(&peer);
                json!({
                    "fileset": name,
                    "identical": differing.is_empty(),
                    "complete": true,
                    "entries": here.len(),
                    "root": hex::encode(here.root()),
                    "peer_entries": peer.len(),
                    "peer_root": hex::encode(peer.root()),
                    "differences_total": differing.len(),
                    "differences": differing.iter().take(100).map(|p| p.to_string()).collect::<Vec<_>>(),
                })
            }
            Err(e) => json!({"fileset": name, "identical": false, "complete": false,
                             "differences": [format!("the peer's manifest is refused: {e}")]}),
        };
        let _ = reply.send(report);
    }

    fn precheck(&self) -> Vec<String> {
        let name = &self.e.name;
        match &self.side {
            Side::Primary(p) if p.peer.is_none() => vec![format!(
                "file set {name}: the standby has not reported its manifest"
            )],
            Side::Primary(_) => Vec::new(),
            _ => vec![format!(
                "file set {name} is not open as primary on this node"
            )],
        }
    }

    /// Keep the manifest this node's tree is believed to match on disk, so
    /// a restart finds local changes made while it was stopped.
    fn persist(&mut self, force: bool) {
        if !self.persist_due {
            return;
        }
        if !force
            && self
                .persisted_at
                .is_some_and(|t| t.elapsed() < PERSIST_EVERY)
        {
            return;
        }
        let bytes = match &self.side {
            Side::Primary(p) => p.peer.as_ref().unwrap_or(&p.local).encode(),
            Side::Standby(s) => s.replica.manifest().encode(),
            _ => return,
        };
        self.persist_due = false;
        self.persisted_at = Some(Instant::now());
        if let Err(e) = write_durably(&self.e.manifest_path(), &bytes) {
            tracing::warn!(
                "file set {}: cannot keep its manifest in {}: {e}",
                self.e.name,
                self.e.manifest_path().display()
            );
            return;
        }
        if let Side::Standby(s) = &mut self.side {
            if let Err(e) = s.replica.clear_applied_log() {
                tracing::warn!(
                    "file set {}: cannot empty its log of applies: {e}",
                    self.e.name
                );
            }
        }
    }

    // ----- status --------------------------------------------------------

    fn publish(&self) {
        let e = &self.e;
        let mut v = json!({"name": e.name, "root": e.root.display().to_string()});
        match &self.side {
            Side::Idle => v["mode"] = json!("inactive"),
            Side::Failed(_, why, _) => {
                v["mode"] = json!("inactive");
                v["error"] = json!(why);
            }
            Side::Primary(p) => {
                let mode = if p.peer.is_none() || !self.node.peer_link.is_connected() {
                    "waiting for standby"
                } else if p.unsynced_since.is_none() {
                    "in sync"
                } else if !p.last_errors.is_empty() {
                    "retrying"
                } else {
                    "syncing"
                };
                v["side"] = json!("primary");
                v["mode"] = json!(mode);
                v["entries"] = json!(p.local.len());
                v["root_hash"] = json!(hex::encode(p.local.root()));
                v["peer_root_hash"] = json!(p.peer.as_ref().map(|m| hex::encode(m.root())));
                v["pending_changes"] = json!(p.pending_changes);
                v["bytes_queued"] = json!(p.bytes_queued);
                v["last_sync_unix_ms"] = json!(p.last_sync_unix_ms);
                v["lag_ms"] = json!(p
                    .unsynced_since
                    .map_or(0, |t| t.elapsed().as_millis() as u64));
                v["rounds"] = json!(p.rounds);
                v["chunks_sent"] = json!(p.chunks_sent);
                // Of those, read from their file again rather than taken
                // from the scan's cache: each costs a read and a hash.
                v["chunks_read_again"] = json!(p
                    .chunk_cache
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .misses());
                v["chunk_bytes_sent"] = json!(p.chunk_bytes_sent);
                v["renames_sent"] = json!(p.renames_sent);
                v["watch"] = json!(p.watch_error.as_deref().unwrap_or("ok"));
                v["skipped"] = json!(p.skipped.iter().take(10).collect::<Vec<_>>());
                if !p.last_errors.is_empty() {
                    v["error"] = json!(p.last_errors.join("; "));
                }
            }
            Side::Standby(s) => {
                let m = s.replica.manifest();
                let in_sync = s.primary_root == Some(m.root());
                let stats = s.replica.stats();
                v["side"] = json!("standby");
                v["mode"] = json!(if in_sync { "in sync" } else { "following" });
                v["entries"] = json!(m.len());
                v["root_hash"] = json!(hex::encode(m.root()));
                v["peer_root_hash"] = json!(s.primary_root.map(hex::encode));
                // What is owed and queued is known on the primary; the lag
                // since the first change this copy lacked, as far as it
                // knows.
                v["last_sync_unix_ms"] = json!(s.last_sync_unix_ms);
                v["lag_ms"] = json!(s.behind_since.map_or(0, |t| t.elapsed().as_millis() as u64));
                v["bytes_fetched"] = json!(s.bytes_received);
                v["chunks_fetched"] = json!(s.chunks_received);
                v["bytes_reused"] = json!(stats.bytes_reused);
                v["files_written"] = json!(stats.files_written);
                v["renames"] = json!(stats.renames);
                v["quarantined"] = json!(s.quarantined);
                v["last_quarantined"] = json!(s.last_quarantined);
                if !s.last_errors.is_empty() {
                    v["error"] = json!(s.last_errors.join("; "));
                }
            }
        }
        *lock(&e.status) = v;
    }
}

/// `tandem verify` of every file set: both trees scanned from scratch (every
/// byte read), their roots compared, then the paths that differ. Either
/// node may run it. The trees are scanned one after the other, so a file
/// changed in between shows up as a difference: verify a quiet pair.
pub async fn verify(node: &Arc<Node>, within: Duration) -> Result<Vec<serde_json::Value>, String> {
    let role = node.role();
    if !node.filesets.is_empty() && !matches!(role, Role::Primary | Role::Standby) {
        return Err(format!(
            "this node ({}) is {role}: verify compares a primary's copy with its standby's, run it when the pair is up",
            node.me
        ));
    }
    let started = Instant::now();
    let mut out = Vec::new();
    for e in &node.filesets {
        out.push(e.verify(within.saturating_sub(started.elapsed())).await);
    }
    Ok(out)
}

/// The human report of the file sets in `tandem verify`.
pub fn render_verify(v: &serde_json::Value) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    for f in v["filesets"].as_array().into_iter().flatten() {
        let name = f["fileset"].as_str().unwrap_or("?");
        let root = f["root"].as_str().map_or("?", |r| r.get(..16).unwrap_or(r));
        if f["identical"] == true {
            let _ = writeln!(
                out,
                "file set {name}: IDENTICAL, {} entries (root {root})",
                f["entries"]
            );
            continue;
        }
        let verdict = if f["complete"] == true {
            "DIFFERENT"
        } else {
            "NOT VERIFIED"
        };
        let total = f["differences_total"].as_u64();
        let peer_root = f["peer_root"]
            .as_str()
            .map_or("?", |r| r.get(..16).unwrap_or(r));
        let _ = writeln!(
            out,
            "file set {name}: {verdict}{} (root here {root}, on the peer {peer_root})",
            total.map_or(String::new(), |n| format!(", {n} path(s) differ"))
        );
        for d in f["differences"].as_array().into_iter().flatten() {
            let _ = writeln!(out, "  - {}", d.as_str().unwrap_or("?"));
        }
    }
    out
}

/// Bring the primary's manifest up to date for `dirty`, noting skips.
/// Queue a message for the peer, waiting (within bounds) while the link's
/// outbox is full. False if it could not be sent.
async fn send_to(node: &Node, set: &str, msg: FsMessage) -> bool {
    let deadline = Instant::now() + SEND_PATIENCE;
    let mut msg = PeerMessage::Fs(Box::new(msg));
    loop {
        match node.peer_link.send_or_return(msg) {
            Ok(()) => return true,
            Err(failed) => {
                let (back, e) = *failed;
                if !node.peer_link.is_connected() || Instant::now() >= deadline {
                    tracing::debug!("file set {set}: not sent: {e}");
                    return false;
                }
                msg = back;
            }
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// One scan pass of `dirty` (at most [`SCAN_PASS_BYTES`] read, the file
/// deferred the longest first); what it leaves unread joins `p.deferred`,
/// and `wake` has the engine read on after the events waiting now (a
/// round among them).
fn rescan(name: &str, p: &mut PrimarySide, dirty: &DirtySet, wake: &Notify) {
    let before = p.local.root();
    let first = p.deferred.first().cloned();
    match p
        .scanner
        .rescan_bounded(&mut p.local, dirty, SCAN_PASS_BYTES, first.as_ref())
    {
        Ok(pass) => {
            if matches!(dirty, DirtySet::Everything) {
                p.skipped.clear();
            }
            for s in pass.skipped {
                p.skipped.push(format!("{}: {:?}", s.path, s.reason));
            }
            p.skipped.truncate(100);
            // Deferred before and not looked at, or deferred again: kept in
            // place; newly deferred: last.
            let looked = |d: &SafePath| match dirty {
                DirtySet::Everything => true,
                DirtySet::Paths(paths) => {
                    paths.contains(d) || d.ancestors().iter().any(|a| paths.contains(a))
                }
            };
            let again: HashSet<SafePath> = pass.deferred.iter().cloned().collect();
            let mut kept: Vec<SafePath> = std::mem::take(&mut p.deferred)
                .into_iter()
                .filter(|d| !looked(d) || again.contains(d))
                .collect();
            let known: HashSet<SafePath> = kept.iter().cloned().collect();
            kept.extend(pass.deferred.into_iter().filter(|d| !known.contains(d)));
            p.deferred = kept;
        }
        Err(e) => tracing::error!("file set {name}: {e}"),
    }
    if p.local.root() != before {
        p.unsynced_since.get_or_insert_with(Instant::now);
    }
    if !p.deferred.is_empty() {
        p.pass_waiting = true;
        wake.notify_one();
    }
}

/// The bytes of the chunks `changes` bring that are not in `have`.
fn new_chunk_bytes(changes: &[Change], have: &HashSet<ChunkHash>) -> u64 {
    changes
        .iter()
        .flat_map(|c| c.changed_chunks())
        .filter(|c| !have.contains(&c.hash))
        .map(|c| u64::from(c.len))
        .sum()
}

/// A file entry's size; 0 for anything else.
fn file_size(e: &Entry) -> u64 {
    match e.kind {
        EntryKind::File { size, .. } => size,
        _ => 0,
    }
}

fn touches_partial(c: &Change) -> bool {
    match c {
        Change::Rename { from, to, .. } => from.is_partial() || to.is_partial(),
        other => other.path().is_partial(),
    }
}

fn short(h: &[u8; 32]) -> String {
    hex::encode(&h[..6])
}

/// Write a file atomically and durably: temp file, fsync, rename, fsync of
/// the directory.
fn write_durably(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

fn short_change(c: &Change) -> String {
    match c {
        Change::Create { path, entry } => {
            format!("create {path} {:?}", std::mem::discriminant(&entry.kind))
        }
        Change::Modify { path, .. } => format!("modify {path}"),
        Change::Delete { path, .. } => format!("delete {path}"),
        Change::Rename { from, to, .. } => format!("rename {from} {to}"),
        Change::Meta { path, .. } => format!("meta {path}"),
    }
}
