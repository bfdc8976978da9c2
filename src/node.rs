//! The node supervisor: owns the role machine, carries out its actions and
//! feeds it events from the links, the clock and the operator.
//!
//! Every entry into the role machine goes through [`Node::with_machine`],
//! which holds the machine's lock for the call, makes any new epoch durable
//! before releasing it (so no heartbeat or reply built afterwards can claim
//! an epoch that is not on disk), and hands the other actions to one
//! executor task that logs them, keeps the event log and queues hooks.

use crate::db::DbEngine;
use crate::hooks::{HookEvent, HookKind, HookRunner};
use crate::peer::PeerLink;
use crate::serial::SerialPorts;
use crate::store::EpochStore;
use crate::switchover::Switchovers;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tandem_config::{Config, FailoverMode, HeartbeatLink};
use tandem_ops::{AlarmStatus, LinkStatus, PeerStatus, RoleChangeStatus, Status};
use tandem_sync::auth::PairKey;
use tandem_sync::message::{Epoch, Heartbeat, Role};
use tandem_sync::resource::Resource;
use tandem_sync::role::{Action, AlarmKind, Failover, Millis, RoleMachine, Settings};
use tokio::sync::{mpsc, watch, Notify};

/// Work for the executor task, in the order it happened.
pub enum Work {
    Action(Action),
    /// A database engine raised (`Some(message)`) or cleared an alarm.
    DbAlarm {
        key: String,
        message: Option<String>,
    },
    /// Answered when everything queued before it (hooks included) is done.
    Settled(tokio::sync::oneshot::Sender<()>),
}

pub struct Node {
    pub cfg: Arc<Config>,
    pub me: String,
    pub peer: String,
    pub key: PairKey,
    started: Instant,
    started_unix_ms: u64,
    machine: Mutex<RoleMachine>,
    store: EpochStore,
    work: mpsc::UnboundedSender<Work>,
    deadline_moved: Notify,
    pub peer_link: PeerLink,
    pub switchovers: Switchovers,
    pub resources: Vec<Arc<dyn Resource>>,
    /// One engine per `[[database]]` (also in `resources`).
    pub databases: Vec<Arc<DbEngine>>,
    /// One engine per `[[fileset]]` (also in `resources`).
    pub filesets: Vec<Arc<crate::files::FileSetEngine>>,
    pub serial: SerialPorts,
    link_errors: Mutex<Vec<Option<String>>>,
    alarms: Mutex<BTreeMap<(AlarmKind, Option<usize>), AlarmStatus>>,
    db_alarms: Mutex<BTreeMap<String, AlarmStatus>>,
    shutdown: watch::Sender<bool>,
    announce: watch::Sender<u64>,
    /// The role and epoch as of the last call into the machine.
    role_now: watch::Sender<(Role, Epoch)>,
}

impl Node {
    /// Build the node and start its executor. The node starts fenced.
    pub fn start(cfg: Arc<Config>, me: &str, key: PairKey) -> anyhow::Result<Arc<Node>> {
        let node_cfg = cfg
            .node(me)
            .ok_or_else(|| anyhow::anyhow!("no node {me} in the config"))?;
        let peer = cfg
            .peer_of(me)
            .ok_or_else(|| anyhow::anyhow!("no peer of {me} in the config"))?
            .name
            .clone();
        let store = EpochStore::open(&cfg.data_dir(node_cfg))?;
        let record = store.load()?;
        let t = &cfg.timing;
        let settings = Settings {
            me: me.to_string(),
            peer: peer.clone(),
            first: cfg.nodes[0].name.clone(),
            failover: match cfg.pair.failover {
                FailoverMode::Auto => Failover::Auto,
                FailoverMode::Manual => Failover::Manual,
            },
            lease_ms: t.lease_ms,
            dead_after_ms: t.dead_after_ms,
            link_dead_after_ms: t.link_dead_after_ms,
            links: node_cfg
                .heartbeat
                .iter()
                .map(HeartbeatLink::to_string)
                .collect(),
            tiebreaker: cfg
                .tiebreaker
                .as_ref()
                .is_some_and(|tb| !tb.reach.is_empty()),
        };
        let links = settings.links.len();
        let machine = RoleMachine::new(settings, record.clone(), 0);
        // Unbounded, as an exception to the bounded-queue rule: it is fed
        // under the machine's (synchronous) lock, and only by role changes
        // and alarms, whose number the role machine itself bounds per event.
        let (work, work_rx) = mpsc::unbounded_channel();
        let hooks = HookRunner::start(cfg.hooks.clone(), me.to_string());
        let (shutdown, _) = watch::channel(false);
        let (announce, _) = watch::channel(0);
        let (role_now, _) = watch::channel((Role::Fenced, record.epoch));
        let databases = crate::db::engines(&cfg, me);
        let filesets = crate::files::engines(&cfg, me);
        let resources: Vec<Arc<dyn Resource>> = databases
            .iter()
            .map(|d| d.clone() as Arc<dyn Resource>)
            .chain(filesets.iter().map(|f| f.clone() as Arc<dyn Resource>))
            .collect();
        let node = Arc::new(Node {
            cfg: cfg.clone(),
            me: me.to_string(),
            peer,
            key,
            started: Instant::now(),
            started_unix_ms: unix_ms(),
            machine: Mutex::new(machine),
            store,
            work,
            deadline_moved: Notify::new(),
            peer_link: PeerLink::default(),
            switchovers: Switchovers::default(),
            resources,
            databases,
            filesets,
            serial: SerialPorts::from_config(&cfg, node_cfg),
            link_errors: Mutex::new(vec![None; links]),
            alarms: Mutex::new(BTreeMap::new()),
            db_alarms: Mutex::new(BTreeMap::new()),
            shutdown,
            announce,
            role_now,
        });
        tracing::info!(
            node = me,
            epoch = record.epoch.0,
            holder = record.holder.as_deref().unwrap_or("-"),
            key = %node.key.fingerprint(),
            "starting fenced: waiting to see the peer (or `tandem promote --force`)"
        );
        tokio::spawn(execute(node.clone(), work_rx, hooks));
        let always = node.clone();
        tokio::spawn(async move { always.serial.start_always().await });
        tokio::spawn(ticker(node.clone()));
        crate::db::start(&node);
        crate::files::start(&node);
        Ok(node)
    }

    pub fn now(&self) -> Millis {
        self.started.elapsed().as_millis() as Millis
    }

    fn unix_ms_at(&self, at: Millis) -> u64 {
        self.started_unix_ms + at
    }

    /// Run `f` on the role machine, then persist and dispatch what it asked for.
    pub fn with_machine<R>(&self, f: impl FnOnce(&mut RoleMachine, Millis) -> R) -> R {
        self.drive_machine(true, f)
    }

    /// `wake_ticker` is false only for the ticker itself, which computes its
    /// next deadline right after (waking itself would make it spin).
    fn drive_machine<R>(
        &self,
        wake_ticker: bool,
        f: impl FnOnce(&mut RoleMachine, Millis) -> R,
    ) -> R {
        let mut m = self.machine.lock().unwrap_or_else(|p| p.into_inner());
        let now = self.now();
        let before = m.announcement();
        let result = f(&mut m, now);
        let mut actions = m.take_actions();
        while !actions.is_empty() {
            let mut rest = actions.into_iter();
            for action in rest.by_ref() {
                if let Action::Persist(record) = &action {
                    if let Err(e) = self.store.save(record) {
                        // What followed the persist was conditional on it: drop
                        // it and let the machine fence instead.
                        tracing::error!("cannot persist epoch {}: {e}", record.epoch);
                        m.persist_failed(now, &e.to_string(), self.store.last_saved());
                        break;
                    }
                } else {
                    let _ = self.work.send(Work::Action(action));
                }
            }
            actions = m.take_actions();
        }
        // Published under the lock, so two concurrent calls cannot publish
        // their views out of order (watch senders never block).
        let role_now = (m.role(), m.epoch());
        self.role_now.send_if_modified(|r| {
            let moved = *r != role_now;
            *r = role_now;
            moved
        });
        if m.announcement() != before {
            self.announce.send_modify(|n| *n = n.wrapping_add(1));
        }
        drop(m);
        if wake_ticker {
            self.deadline_moved.notify_one();
        }
        result
    }

    pub fn role(&self) -> Role {
        self.with_machine(|m, _| m.role())
    }

    pub fn heartbeat(&self, link: usize) -> Heartbeat {
        self.with_machine(|m, now| m.heartbeat(now, link))
    }

    pub fn on_heartbeat(&self, link: usize, hb: &Heartbeat) {
        self.with_machine(|m, now| m.on_heartbeat(now, link, hb));
        self.set_link_error(link, None);
    }

    /// Record why a link refused a frame; log it only when the reason changes,
    /// so a misconfigured peer gives one clear line, not one per heartbeat.
    pub fn set_link_error(&self, link: usize, error: Option<String>) {
        let mut errors = self.link_errors.lock().unwrap_or_else(|p| p.into_inner());
        let Some(slot) = errors.get_mut(link) else {
            return;
        };
        if *slot != error {
            if let Some(e) = &error {
                tracing::error!(link, "heartbeat link {link}: {e}");
            }
            *slot = error;
        }
    }

    /// Wait until every action and hook queued so far has been carried out.
    pub async fn settled(&self) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self.work.send(Work::Settled(tx)).is_ok() {
            let _ = rx.await;
        }
    }

    /// Changes whenever the peer must hear of a state change at once.
    pub fn announce_signal(&self) -> watch::Receiver<u64> {
        self.announce.subscribe()
    }

    /// Changes whenever the role or the epoch changes.
    pub fn role_signal(&self) -> watch::Receiver<(Role, Epoch)> {
        self.role_now.subscribe()
    }

    /// Raise (`Some(message)`) or clear an alarm about a database; logged,
    /// shown in status and passed to the `on_alarm` hooks like the others.
    pub fn db_alarm(&self, key: &str, message: Option<String>) {
        let _ = self.work.send(Work::DbAlarm {
            key: key.to_string(),
            message,
        });
    }

    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    /// Graceful stop: stop acting, let the links tell the peer, run hooks.
    pub async fn shut_down(&self) {
        self.with_machine(|m, now| m.shutdown(now));
        let _ = self.shutdown.send(true);
        // Let each link send one last heartbeat that says `leaving`.
        tokio::time::sleep(Duration::from_millis(
            self.cfg.timing.heartbeat_interval_ms.min(200),
        ))
        .await;
        let bound = Duration::from_millis(self.cfg.hooks.timeout_ms.saturating_mul(4).max(1000));
        let _ = tokio::time::timeout(bound, self.settled()).await;
        self.serial.close_all().await;
    }

    pub fn status(&self) -> Status {
        let mut s = self.with_machine(|m, now| {
            // Bring the machine up to date first, so status never shows a
            // lease that has lapsed (after a pause, say) as still held.
            m.tick(now);
            let peer = m.peer();
            Status {
                pair: self.cfg.pair.name.clone(),
                node: self.me.clone(),
                role: m.role().to_string(),
                epoch: m.epoch().0,
                holder: m.record().holder.clone(),
                failover: self.cfg.pair.failover.as_str().to_string(),
                lease_left_ms: m.lease_left_ms(now),
                lease_required: m.lease_required(),
                peer_joined: m.peer_joined(),
                armed: m.armed(),
                on_hold: m.on_hold(),
                peer: PeerStatus {
                    name: self.peer.clone(),
                    role: peer.map(|p| p.role.to_string()),
                    epoch: peer.map(|p| p.epoch.0),
                    last_heard_ms_ago: peer.map(|p| now.saturating_sub(p.heard_ms)),
                },
                links: m
                    .links()
                    .iter()
                    .enumerate()
                    .map(|(index, l)| LinkStatus {
                        index,
                        name: l.name.clone(),
                        up: l.up,
                        last_seen_ms_ago: l.last_seen_ms.map(|t| now.saturating_sub(t)),
                        rtt_ms: l.rtt_ms,
                        received: l.received,
                        lost: l.lost,
                        last_error: None,
                    })
                    .collect(),
                replication_connected: false,
                alarms: Vec::new(),
                history: m
                    .history()
                    .map(|c| RoleChangeStatus {
                        at_unix_ms: self.unix_ms_at(c.at_ms),
                        from: c.from.to_string(),
                        to: c.to.to_string(),
                        epoch: c.epoch.0,
                        reason: c.reason.clone(),
                    })
                    .collect(),
                switchover: None,
                serial: Vec::new(),
                databases: Vec::new(),
                filesets: Vec::new(),
                uptime_ms: now,
            }
        });
        let errors = self.link_errors.lock().unwrap_or_else(|p| p.into_inner());
        for (l, e) in s.links.iter_mut().zip(errors.iter()) {
            l.last_error = e.clone();
        }
        drop(errors);
        s.replication_connected = self.peer_link.is_connected();
        s.alarms = self
            .alarms
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        s.alarms.extend(
            self.db_alarms
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .values()
                .cloned(),
        );
        s.databases = self.databases.iter().map(|d| d.status()).collect();
        s.filesets = self.filesets.iter().map(|f| f.status()).collect();
        s.switchover = self.switchovers.latest();
        s.serial = self.serial.status();
        s
    }
}

pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Wake the role machine at its next deadline (lease expiry, failover,
/// link timeout), and at least every heartbeat interval.
async fn ticker(node: Arc<Node>) {
    let mut shutdown = node.shutdown_signal();
    let interval = node.cfg.timing.heartbeat_interval_ms;
    let remind_every = node.cfg.timing.cold_start_wait_ms.max(1000);
    let mut reminded = 0;
    loop {
        let (now, deadline, role, heard) = node.drive_machine(false, |m, now| {
            m.tick(now);
            let heard = m.peer().map(|p| now.saturating_sub(p.heard_ms));
            (now, m.next_deadline(), m.role(), heard)
        });
        // A fenced node says now and then what it waits for, so that an
        // operator reading the journal knows what to do.
        if role == Role::Fenced && now >= reminded + remind_every {
            reminded = now;
            let heard = heard.map_or("never heard".to_string(), |ms| {
                format!("last heard {ms} ms ago")
            });
            tracing::info!(
                "fenced: waiting for peer {} ({heard}); to act without it, make sure it is down and run `tandem promote --force`",
                node.peer
            );
        }
        let wait = deadline.map_or(interval, |d| d.saturating_sub(now).clamp(1, interval));
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(wait)) => {}
            _ = node.deadline_moved.notified() => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// The one task that carries out role changes and alarms, in order.
async fn execute(node: Arc<Node>, mut work: mpsc::UnboundedReceiver<Work>, hooks: HookRunner) {
    let events_path = node
        .cfg
        .node(&node.me)
        .map(|n| node.cfg.data_dir(n).join("events.jsonl"));
    while let Some(item) = work.recv().await {
        let action = match item {
            Work::Action(a) => a,
            Work::DbAlarm { key, message } => {
                let event = db_alarm(&node, &hooks, key, message);
                if let (Some(path), Some(event)) = (&events_path, event) {
                    append_event(path, &event);
                }
                continue;
            }
            Work::Settled(done) => {
                hooks.settled().await;
                let _ = done.send(());
                continue;
            }
        };
        let event = match action {
            Action::RoleChanged(c) => {
                tracing::info!(
                    from = %c.from, to = %c.to, epoch = c.epoch.0,
                    "role {} -> {} in epoch {}: {}", c.from, c.to, c.epoch, c.reason
                );
                // Serial ports follow the role before hooks start services
                // that may use them; closing takes at most 500 ms.
                if c.from == Role::Primary || c.to == Role::Primary {
                    node.serial.follow(c.to).await;
                }
                let kind = match (c.from, c.to) {
                    (_, Role::Primary) => Some(HookKind::Promote),
                    (Role::Primary, Role::Fenced) => Some(HookKind::Fence),
                    (Role::Primary, _) => Some(HookKind::Demote),
                    _ => None,
                };
                if let Some(kind) = kind {
                    hooks.queue(HookEvent {
                        kind,
                        role: c.to.to_string(),
                        epoch: c.epoch.0,
                        reason: c.reason.clone(),
                    });
                }
                serde_json::json!({
                    "at_unix_ms": node.unix_ms_at(c.at_ms), "event": "role_change",
                    "from": c.from, "to": c.to, "epoch": c.epoch.0, "reason": c.reason,
                })
            }
            Action::Alarm(a) => {
                let key = (a.kind, a.link);
                let kind = serde_json::to_value(a.kind)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default();
                let mut alarms = node.alarms.lock().unwrap_or_else(|p| p.into_inner());
                // A condition raised again while still active (a tie-breaker
                // refusing at every retry) is logged, not alarmed anew.
                if a.raised && alarms.contains_key(&key) {
                    tracing::info!(alarm = %kind, "still: {}", a.message);
                } else if a.raised {
                    tracing::warn!(alarm = %kind, "ALARM: {}", a.message);
                    alarms.insert(
                        key,
                        AlarmStatus {
                            kind: kind.clone(),
                            message: a.message.clone(),
                            since_unix_ms: unix_ms(),
                        },
                    );
                    let (role, epoch) = node.with_machine(|m, _| (m.role(), m.epoch()));
                    hooks.queue(HookEvent {
                        kind: HookKind::Alarm,
                        role: role.to_string(),
                        epoch: epoch.0,
                        reason: a.message.clone(),
                    });
                } else if alarms.remove(&key).is_some() {
                    tracing::info!(alarm = %kind, "cleared: {}", a.message);
                }
                serde_json::json!({
                    "at_unix_ms": unix_ms(), "event": if a.raised { "alarm" } else { "alarm_cleared" },
                    "kind": kind, "link": a.link, "message": a.message,
                })
            }
            Action::CheckTiebreaker => {
                tokio::spawn(crate::tiebreaker::check(node.clone()));
                continue;
            }
            // Persist is carried out inside `with_machine`.
            Action::Persist(_) => continue,
        };
        if let Some(path) = &events_path {
            append_event(path, &event);
        }
    }
}

/// Record a database alarm once while it holds; returns the event to log.
fn db_alarm(
    node: &Node,
    hooks: &HookRunner,
    key: String,
    message: Option<String>,
) -> Option<serde_json::Value> {
    let mut alarms = node.db_alarms.lock().unwrap_or_else(|p| p.into_inner());
    match message {
        Some(message) => {
            if alarms.get(&key).is_some_and(|a| a.message == message) {
                return None;
            }
            tracing::warn!(alarm = "database", "ALARM: {message}");
            alarms.insert(
                key.clone(),
                AlarmStatus {
                    kind: "database".into(),
                    message: message.clone(),
                    since_unix_ms: unix_ms(),
                },
            );
            drop(alarms);
            let (role, epoch) = node.with_machine(|m, _| (m.role(), m.epoch()));
            hooks.queue(HookEvent {
                kind: HookKind::Alarm,
                role: role.to_string(),
                epoch: epoch.0,
                reason: message.clone(),
            });
            Some(serde_json::json!({
                "at_unix_ms": unix_ms(), "event": "alarm", "kind": "database",
                "key": key, "message": message,
            }))
        }
        None => {
            let cleared = alarms.remove(&key)?;
            tracing::info!(alarm = "database", "cleared: {}", cleared.message);
            Some(serde_json::json!({
                "at_unix_ms": unix_ms(), "event": "alarm_cleared", "kind": "database",
                "key": key, "message": cleared.message,
            }))
        }
    }
}

/// The event log on disk: one JSON object a line, for operators and reports.
/// Losing a line on a full disk is logged, never fatal.
fn append_event(path: &std::path::Path, event: &serde_json::Value) {
    use std::io::Write;
    let line = format!("{event}\n");
    let result = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|mut f| f.write_all(line.as_bytes()));
    if let Err(e) = result {
        tracing::warn!("cannot append to the event log {}: {e}", path.display());
    }
}
