//! Graceful switchover, run by the current primary: pre-checks, demote,
//! drain, confirm positions, promote (DESIGN §4). An operator may ask from
//! either node: on the standby the request is relayed to the primary and the
//! primary's progress relayed back, so `tandem switchover` reads the same
//! steps wherever it runs.
//!
//! The promotion point is the `Promote` message: before it, any failure rolls
//! back (the old primary unfences and stays primary); after it, only the
//! standby's answer or a higher epoch decides, and the old primary stays out
//! of the primary role until it knows.

use crate::node::Node;
use rand::Rng;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tandem_ops::{SwitchoverProgress, SwitchoverStep};
use tandem_sync::message::{Epoch, OpId, PeerMessage, Role};
use tandem_sync::role::Outcome;
use tokio::sync::oneshot;

/// How many operations status remembers.
const KEPT: usize = 16;

enum Answer {
    Promoted(Epoch),
    Declined(Vec<String>),
}

struct Entry {
    op: OpId,
    /// Asked here, run by the peer: its outcome arrives by message, which a
    /// lost connection can lose.
    relayed: bool,
    started: Instant,
    progress: SwitchoverProgress,
}

#[derive(Default)]
pub struct Switchovers {
    entries: Mutex<VecDeque<Entry>>,
    waiters: Mutex<HashMap<OpId, oneshot::Sender<Answer>>>,
}

impl Switchovers {
    fn begin(&self, op: OpId, relayed: bool) {
        let mut e = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if e.iter().any(|x| x.op == op) {
            return;
        }
        if e.len() == KEPT {
            e.pop_front();
        }
        e.push_back(Entry {
            op,
            relayed,
            started: Instant::now(),
            progress: SwitchoverProgress {
                op: op.to_string(),
                ..SwitchoverProgress::default()
            },
        });
    }

    /// Record a step; returns the milliseconds since the operation began.
    fn step(&self, op: OpId, text: &str) -> u64 {
        let mut e = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let Some(entry) = e.iter_mut().find(|x| x.op == op) else {
            return 0;
        };
        let elapsed_ms = entry.started.elapsed().as_millis() as u64;
        tracing::info!(op = %op, elapsed_ms, "switchover {op}: {text}");
        entry.progress.steps.push(SwitchoverStep {
            step: text.to_string(),
            elapsed_ms,
        });
        elapsed_ms
    }

    fn finish(&self, op: OpId, outcome: Result<(), String>) -> u64 {
        let mut e = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let Some(entry) = e.iter_mut().find(|x| x.op == op) else {
            return 0;
        };
        let total = entry.started.elapsed().as_millis() as u64;
        match &outcome {
            Ok(()) => {
                tracing::info!(op = %op, total_ms = total, "switchover {op} done in {total} ms")
            }
            Err(why) => tracing::warn!(op = %op, total_ms = total, "switchover {op} failed: {why}"),
        }
        entry.progress.outcome = Some(outcome);
        entry.progress.total_ms = Some(total);
        total
    }

    /// A step the primary reported for an operation asked for here.
    fn relayed(
        &self,
        op: OpId,
        step: String,
        elapsed_ms: u64,
        outcome: Option<Result<(), String>>,
    ) {
        self.begin(op, true);
        let mut e = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(entry) = e.iter_mut().find(|x| x.op == op) {
            if !step.is_empty() {
                entry
                    .progress
                    .steps
                    .push(SwitchoverStep { step, elapsed_ms });
            }
            if let Some(o) = outcome {
                entry.progress.outcome = Some(o);
                entry.progress.total_ms = Some(entry.started.elapsed().as_millis() as u64);
            }
        }
    }

    pub fn get(&self, op: &str, stale: Duration) -> Option<SwitchoverProgress> {
        let mut e = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        Self::close_lost(&mut e, stale);
        e.iter()
            .find(|x| x.progress.op == op)
            .map(|x| x.progress.clone())
    }

    pub fn latest(&self) -> Option<SwitchoverProgress> {
        let e = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        e.back().map(|x| x.progress.clone())
    }

    /// The operation still running, if any. One that has had no outcome for
    /// longer than `stale` (a relayed request whose answer was lost with a
    /// connection) is closed as lost, so it cannot block every later one.
    fn running(&self, stale: Duration) -> Option<OpId> {
        let mut e = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        Self::close_lost(&mut e, stale);
        e.iter()
            .find(|x| x.progress.outcome.is_none())
            .map(|x| x.op)
    }

    fn close_lost(e: &mut VecDeque<Entry>, stale: Duration) {
        for x in e.iter_mut() {
            // Only relayed operations: one run here always reaches an outcome.
            if x.relayed && x.progress.outcome.is_none() && x.started.elapsed() > stale {
                let why = "lost track of it: no word from the primary; check `tandem status` on both nodes";
                tracing::warn!(op = %x.op, "switchover {}: {why}", x.op);
                x.progress.outcome = Some(Err(why.to_string()));
                x.progress.total_ms = Some(x.started.elapsed().as_millis() as u64);
            }
        }
    }

    fn wait(&self, op: OpId) -> oneshot::Receiver<Answer> {
        let (tx, rx) = oneshot::channel();
        self.waiters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(op, tx);
        rx
    }

    fn answer(&self, op: OpId, answer: Answer) {
        if let Some(tx) = self
            .waiters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&op)
        {
            let _ = tx.send(answer);
        }
    }
}

/// How long an operation may go without an outcome before it counts as lost:
/// the drain and the answer each have `switchover_timeout_ms`.
pub fn stale_after(node: &Node) -> Duration {
    Duration::from_millis(node.cfg.timing.switchover_timeout_ms.saturating_mul(3))
}

/// The operator asks this node for a switchover. Returns the operation id to
/// follow, or the named reasons it cannot start.
pub async fn request(node: &Arc<Node>) -> Result<String, Vec<String>> {
    if let Some(op) = node.switchovers.running(stale_after(node)) {
        return Err(vec![format!("switchover {op} is still running")]);
    }
    let op = OpId(rand::rngs::OsRng.gen());
    match node.role() {
        Role::Primary => {
            let why = prechecks(node).await;
            if !why.is_empty() {
                return Err(why);
            }
            node.switchovers.begin(op, false);
            tokio::spawn(run(node.clone(), op, false));
        }
        Role::Standby => {
            node.peer_link
                .send(PeerMessage::SwitchoverRequest { op })
                .map_err(|e| vec![e])?;
            node.switchovers.begin(op, true);
            node.switchovers.step(
                op,
                &format!("asked the primary, {}, to hand over", node.peer),
            );
        }
        role => {
            return Err(vec![format!(
                "this node ({}) is {role}: a switchover needs a primary and its standby",
                node.me
            )])
        }
    }
    Ok(op.to_string())
}

async fn prechecks(node: &Arc<Node>) -> Vec<String> {
    let mut why = node.with_machine(|m, now| m.handover_blockers(now));
    if !node.peer_link.is_connected() {
        why.push(format!("the replication link to {} is down", node.peer));
    }
    for r in &node.resources {
        why.extend(r.precheck().await);
    }
    why
}

/// The primary's side of one switchover.
async fn run(node: Arc<Node>, op: OpId, relay: bool) {
    let report = |text: &str| {
        let elapsed_ms = node.switchovers.step(op, text);
        if relay {
            let _ = node.peer_link.send(PeerMessage::SwitchoverStep {
                op,
                step: text.to_string(),
                elapsed_ms,
                outcome: None,
            });
        }
    };
    let outcome = drive(&node, op, &report).await;
    let total = node.switchovers.finish(op, outcome.clone());
    if relay {
        let _ = node.peer_link.send(PeerMessage::SwitchoverStep {
            op,
            step: String::new(),
            elapsed_ms: total,
            outcome: Some(outcome),
        });
    }
}

async fn drive(node: &Arc<Node>, op: OpId, report: &impl Fn(&str)) -> Result<(), String> {
    let peer = node.peer.clone();
    report(&format!(
        "pre-checks passed: {peer} is a caught-up standby, every link is up"
    ));

    // Demote: stop acting, run the demote hooks, fence every resource.
    node.with_machine(|m, now| m.begin_handover(now, op))
        .map_err(|why| format!("refused: {}", why.join("; ")))?;
    report("demoted: this node no longer acts as primary");
    node.settled().await;
    report("demote hooks done");
    let mut fenced = Vec::new();
    for r in &node.resources {
        if let Err(e) = r.fence().await {
            return Err(rollback(node, op, &fenced, &format!("cannot fence {e}"), report).await);
        }
        fenced.push(r.clone());
    }

    // Drain: ship what is owed and take the final positions.
    let within = Duration::from_millis(node.cfg.timing.switchover_timeout_ms);
    let mut positions = Vec::new();
    for r in &node.resources {
        match r.drain(within).await {
            Ok(p) => positions.push(p),
            Err(e) => {
                return Err(
                    rollback(node, op, &fenced, &format!("drain failed: {e}"), report).await,
                )
            }
        }
    }
    report(&format!(
        "drained: {} resource(s) at their final positions",
        positions.len()
    ));

    // The promotion point: once Promote is out, only the peer's answer decides.
    let answer = node.switchovers.wait(op);
    let sent = node.with_machine(|m, _| {
        let epoch = m.epoch();
        let msg = PeerMessage::Promote {
            op,
            epoch,
            positions,
        };
        let sent = node.peer_link.send(msg);
        if sent.is_ok() {
            m.handover_promote_sent(op);
        }
        sent
    });
    if let Err(e) = sent {
        return Err(rollback(node, op, &fenced, &e, report).await);
    }
    report(&format!("asked {peer} to confirm positions and promote"));
    match tokio::time::timeout(within, answer).await {
        Ok(Ok(Answer::Promoted(epoch))) => {
            report(&format!(
                "{peer} promoted in epoch {epoch}; this node is its standby"
            ));
            Ok(())
        }
        Ok(Ok(Answer::Declined(why))) => {
            let why = format!("{peer} declined: {}", why.join("; "));
            for r in &fenced {
                if let Err(e) = r.unfence().await {
                    tracing::error!("switchover {op}: cannot unfence {e}");
                }
            }
            report(&format!("{why}; rolled back, this node is primary again"));
            Err(why)
        }
        Ok(Err(_)) | Err(_) => {
            node.with_machine(|m, now| m.handover_timed_out(now, op));
            tokio::spawn(ask_outcome(node.clone(), op));
            let why = format!(
                "no answer from {peer} within {} ms; this node stays fenced until {peer} says whether it promoted",
                within.as_millis()
            );
            report(&why);
            Err(why)
        }
    }
}

/// Undo a switchover that failed before the promotion point.
async fn rollback(
    node: &Arc<Node>,
    op: OpId,
    fenced: &[Arc<dyn tandem_sync::resource::Resource>],
    why: &str,
    report: &impl Fn(&str),
) -> String {
    for r in fenced.iter().rev() {
        if let Err(e) = r.unfence().await {
            tracing::error!("switchover {op}: cannot unfence {e}");
        }
    }
    let resumed = node.with_machine(|m, now| {
        m.abort_handover(now, op, why);
        m.role()
    });
    report(&format!("{why}; rolled back, this node is {resumed}"));
    why.to_string()
}

/// After a timeout, keep asking the peer what became of `op` until it says.
async fn ask_outcome(node: Arc<Node>, op: OpId) {
    while node.with_machine(|m, _| m.awaiting_outcome()) == Some(op) {
        let _ = node.peer_link.send(PeerMessage::Abandon { op });
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Everything the replication link receives.
pub async fn on_peer_message(node: &Arc<Node>, msg: PeerMessage) {
    match msg {
        PeerMessage::Keepalive => {}
        PeerMessage::SwitchoverRequest { op } => {
            let refuse = |why: String| {
                let _ = node.peer_link.send(PeerMessage::SwitchoverStep {
                    op,
                    step: String::new(),
                    elapsed_ms: 0,
                    outcome: Some(Err(why)),
                });
            };
            if let Some(running) = node.switchovers.running(stale_after(node)) {
                return refuse(format!("switchover {running} is still running"));
            }
            let why = prechecks(node).await;
            if !why.is_empty() {
                return refuse(format!("refused: {}", why.join("; ")));
            }
            node.switchovers.begin(op, false);
            tokio::spawn(run(node.clone(), op, true));
        }
        PeerMessage::SwitchoverStep {
            op,
            step,
            elapsed_ms,
            outcome,
        } => node.switchovers.relayed(op, step, elapsed_ms, outcome),
        PeerMessage::Promote {
            op,
            epoch,
            positions,
        } => {
            let mut why = Vec::new();
            for p in &positions {
                match node.resources.iter().find(|r| r.name() == p.resource) {
                    Some(r) => {
                        if let Err(e) = r.confirm(p).await {
                            why.push(e.to_string());
                        }
                    }
                    None => why.push(format!("{}: not configured on {}", p.resource, node.me)),
                }
            }
            let answer = if why.is_empty() {
                let promoted = node.with_machine(|m, now| m.on_promote_request(now, op, epoch));
                // The new epoch is persisted inside that call; if the disk
                // refused it the machine has rolled back and fenced.
                let promoted = promoted.and_then(|e| {
                    let now = node.with_machine(|m, _| (m.role(), m.epoch()));
                    if now == (Role::Primary, e) {
                        Ok(e)
                    } else {
                        Err(format!("{} could not persist epoch {e}", node.me))
                    }
                });
                match promoted {
                    Ok(epoch) => PeerMessage::Promoted { op, epoch },
                    Err(why) => PeerMessage::Declined {
                        op,
                        reasons: vec![why],
                    },
                }
            } else {
                // Makes the refusal final for this op.
                node.with_machine(|m, _| m.on_abandon(op));
                PeerMessage::Declined { op, reasons: why }
            };
            if let Err(e) = node.peer_link.send(answer) {
                tracing::warn!("switchover {op}: cannot answer the primary: {e}");
            }
        }
        PeerMessage::Promoted { op, epoch } => {
            node.with_machine(|m, now| m.on_promoted(now, op, epoch));
            node.switchovers.answer(op, Answer::Promoted(epoch));
        }
        PeerMessage::Declined { op, reasons } => {
            node.with_machine(|m, now| m.on_declined(now, op, &reasons.join("; ")));
            node.switchovers.answer(op, Answer::Declined(reasons));
        }
        PeerMessage::DbTx(_)
        | PeerMessage::DbAck { .. }
        | PeerMessage::DbFlush { .. }
        | PeerMessage::DbHello { .. }
        | PeerMessage::DbAsk { .. }
        | PeerMessage::DbSeed(_)
        | PeerMessage::DbSeedAck { .. }
        | PeerMessage::DbRefused { .. }
        | PeerMessage::DbVerify { .. }
        | PeerMessage::DbVerified(_)
        | PeerMessage::DbVerifyRequest { .. }
        | PeerMessage::DbVerifyReport { .. }
        | PeerMessage::DbResyncPlan(_)
        | PeerMessage::DbResyncNeed { .. }
        | PeerMessage::DbQuarantine { .. } => crate::db::on_peer_message(node, msg).await,
        PeerMessage::Fs(m) => crate::files::on_peer_message(node, m).await,
        PeerMessage::Abandon { op } => {
            let answer = match node.with_machine(|m, _| m.on_abandon(op)) {
                Outcome::Promoted(epoch) => PeerMessage::Promoted { op, epoch },
                Outcome::Declined => PeerMessage::Declined {
                    op,
                    reasons: vec!["abandoned".into()],
                },
            };
            let _ = node.peer_link.send(answer);
        }
    }
}
