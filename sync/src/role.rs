//! The role machine: who is primary, in which epoch, and for how long.
//!
//! Sans-IO in the style of raft-rs: the runtime feeds it events (heartbeats,
//! ticks, operator commands, switchover messages) with the current time, and
//! takes back [`Action`]s to carry out in order. [`Action::Persist`] must be
//! durable (fsync) before the runtime carries out any later action or sends
//! any heartbeat built after it.
//!
//! # Safety argument, in short
//!
//! * A standby's heartbeat carries `ack_of`: the send time (on the holder's
//!   clock) of the newest heartbeat it received from the holder. The holder's
//!   lease runs to `ack_of + lease_ms` on its own clock.
//! * A standby promotes on its own only when it is *armed* (the holder has told
//!   it "I count you as joined, so I keep your lease") and it has heard nothing
//!   from the holder on any link for `dead_after_ms >= lease_ms + margin`. Since
//!   it received every heartbeat it acknowledged, the holder's lease ran out
//!   at least `margin` before.
//! * A primary needs a lease only while its peer may fail over against it,
//!   that is once the peer has joined as its standby in this epoch. Right after
//!   a failover or a switchover the peer is an ex-holder that cannot promote on
//!   its own, so the new primary acts at once; the peer's first
//!   acknowledgement makes the lease required.
//! * A node that meets a higher epoch stops acting at once. Two claims on one
//!   epoch (only possible after a forced promotion) fence both and wait for
//!   an operator.
//! * In a switchover, once the old primary has sent `Promote` it never acts
//!   again in its epoch unless the standby answers `Declined`.

use crate::message::{Echo, Epoch, EpochRecord, Heartbeat, OpId, Role};
use serde::Serialize;
use std::collections::{HashSet, VecDeque};

/// Milliseconds on the runtime's monotonic clock.
pub type Millis = u64;

/// How many role changes status remembers.
const HISTORY_LEN: usize = 32;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Failover {
    /// The standby promotes on its own when the primary is dead.
    Auto,
    /// Only an operator promotes; the primary keeps serving without a standby.
    Manual,
}

#[derive(Clone, Debug)]
pub struct Settings {
    pub me: String,
    pub peer: String,
    /// The node listed first in the config: it becomes primary on a brand-new
    /// pair, and breaks ties between two claims that neither acts on.
    pub first: String,
    pub failover: Failover,
    pub lease_ms: Millis,
    pub dead_after_ms: Millis,
    pub link_dead_after_ms: Millis,
    /// Names of the heartbeat links, for alarms and status (`udp://...`).
    pub links: Vec<String>,
    /// Whether a tie-breaker must agree before a failover.
    pub tiebreaker: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RoleChange {
    pub at_ms: Millis,
    pub from: Role,
    pub to: Role,
    pub epoch: Epoch,
    pub reason: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AlarmKind {
    /// One heartbeat link went silent (the others still carry the pair).
    LinkDown,
    /// Every link is silent: the peer is dead or cut off.
    PeerSilent,
    /// Both nodes claim the same epoch.
    SplitBrain,
    /// The tie-breaker refused a failover.
    TiebreakerRefused,
    /// The primary's lease lapsed and it fenced itself.
    LeaseLapsed,
    /// The epoch could not be persisted: the node stays fenced.
    PersistFailed,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Alarm {
    pub kind: AlarmKind,
    /// `Some(i)` for a per-link alarm.
    pub link: Option<usize>,
    pub message: String,
    /// `false` when the condition cleared.
    pub raised: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Make this record durable before acting on anything after it.
    Persist(EpochRecord),
    RoleChanged(RoleChange),
    Alarm(Alarm),
    /// Ask the tie-breaker; answer with [`RoleMachine::tiebreaker_result`].
    CheckTiebreaker,
}

/// What the old primary learns when it asks about a switchover it lost track of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Promoted(Epoch),
    Declined,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct LinkHealth {
    pub name: String,
    pub up: bool,
    /// When a frame last arrived on it.
    pub last_seen_ms: Option<Millis>,
    pub rtt_ms: Option<u64>,
    pub received: u64,
    pub lost: u64,
    #[serde(skip)]
    last_link_seq: u64,
    #[serde(skip)]
    echo_source: Option<(Millis, Millis)>, // (peer sent_ms, our receive time)
    #[serde(skip)]
    next_link_seq: u64,
    /// A link-down alarm is raised for it.
    #[serde(skip)]
    alarmed: bool,
}

/// The latest the peer said about itself.
#[derive(Clone, Debug, Serialize)]
pub struct PeerView {
    pub epoch: Epoch,
    pub holder: Option<String>,
    pub role: Role,
    pub heard_ms: Millis,
    pub leaving: bool,
}

/// See [`RoleMachine::announcement`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Announcement {
    epoch: Epoch,
    holder: Option<String>,
    role: Role,
    peer_joined: bool,
    acknowledging: bool,
    leaving: bool,
}

#[derive(Clone, Debug)]
struct Handover {
    op: OpId,
    /// `Promote` has gone out: the outcome is no longer ours to decide.
    promote_sent: bool,
}

pub struct RoleMachine {
    s: Settings,
    record: EpochRecord,
    role: Role,
    started_ms: Millis,
    /// Until when this node may act as primary, when a lease is required.
    lease_until: Millis,
    /// The holder counts the peer as its joined standby (and keeps its lease).
    peer_joined: bool,
    /// Standby: the holder has told us it counts us as joined.
    armed: bool,
    /// This process has acted as primary in the current epoch (a restarted
    /// holder bumps the epoch instead of quietly resuming).
    primary_this_run: bool,
    /// Standby: when we last heard the holder of our epoch.
    holder_heard_ms: Option<Millis>,
    /// Standby: the holder's `sent_ms` we acknowledge.
    ack_of: Option<Millis>,
    peer: Option<PeerView>,
    links: Vec<LinkHealth>,
    peer_silent_alarm: bool,
    handover: Option<Handover>,
    tiebreaker_pending: bool,
    tiebreaker_retry_ms: Option<Millis>,
    /// Two claims on one epoch were seen: no automatic promotion until an
    /// operator forces one or a higher epoch appears.
    hold: bool,
    /// The disk refused an epoch: stay fenced until restart.
    broken: bool,
    /// The tie-breaker refused a failover and that alarm is still raised.
    tiebreaker_alarm: bool,
    leaving: bool,
    /// Standby: the switchover ops it promoted for (at most one matters) and
    /// the ones it declined, so a late `Promote` cannot undo an answer.
    promoted_for: Option<(OpId, Epoch)>,
    declined: HashSet<OpId>,
    history: VecDeque<RoleChange>,
    actions: Vec<Action>,
}

impl RoleMachine {
    /// A node starts fenced: it waits to see its peer (or an operator's forced
    /// promotion) before it acts, whatever it was before it stopped.
    pub fn new(settings: Settings, record: EpochRecord, now: Millis) -> RoleMachine {
        let links = settings
            .links
            .iter()
            .map(|name| LinkHealth {
                name: name.clone(),
                next_link_seq: 1,
                ..LinkHealth::default()
            })
            .collect();
        RoleMachine {
            s: settings,
            record,
            role: Role::Fenced,
            started_ms: now,
            lease_until: 0,
            peer_joined: false,
            armed: false,
            primary_this_run: false,
            holder_heard_ms: None,
            ack_of: None,
            peer: None,
            links,
            peer_silent_alarm: false,
            handover: None,
            tiebreaker_pending: false,
            tiebreaker_retry_ms: None,
            hold: false,
            broken: false,
            tiebreaker_alarm: false,
            leaving: false,
            promoted_for: None,
            declined: HashSet::new(),
            history: VecDeque::new(),
            actions: Vec::new(),
        }
    }

    // ----- queries -------------------------------------------------------

    pub fn role(&self) -> Role {
        self.role
    }

    pub fn epoch(&self) -> Epoch {
        self.record.epoch
    }

    pub fn record(&self) -> &EpochRecord {
        &self.record
    }

    pub fn settings(&self) -> &Settings {
        &self.s
    }

    pub fn peer(&self) -> Option<&PeerView> {
        self.peer.as_ref()
    }

    pub fn links(&self) -> &[LinkHealth] {
        &self.links
    }

    pub fn history(&self) -> impl Iterator<Item = &RoleChange> {
        self.history.iter()
    }

    pub fn peer_joined(&self) -> bool {
        self.peer_joined
    }

    /// What the peer must learn without waiting for the next heartbeat:
    /// when this changes, the runtime sends a heartbeat at once. It is what
    /// closes the short window after a role change in which the new standby
    /// is not yet armed (it cannot fail over until it hears `peer_joined`).
    pub fn announcement(&self) -> Announcement {
        Announcement {
            epoch: self.record.epoch,
            holder: self.record.holder.clone(),
            role: self.role,
            peer_joined: self.is_holder() && self.peer_joined,
            acknowledging: self.role == Role::Standby && self.ack_of.is_some(),
            leaving: self.leaving,
        }
    }

    pub fn armed(&self) -> bool {
        self.armed
    }

    pub fn on_hold(&self) -> bool {
        self.hold
    }

    /// Whether the primary must hold a lease to act.
    pub fn lease_required(&self) -> bool {
        self.s.failover == Failover::Auto && self.peer_joined
    }

    /// Milliseconds of lease left, if this node is primary and a lease counts.
    pub fn lease_left_ms(&self, now: Millis) -> Option<Millis> {
        (self.role == Role::Primary && self.lease_required())
            .then(|| self.lease_until.saturating_sub(now))
    }

    fn lease_ok(&self, now: Millis) -> bool {
        !self.lease_required() || now < self.lease_until
    }

    /// The invariant the runtime relies on: true only while this node may
    /// let its sources be written.
    pub fn acting_as_primary(&self, now: Millis) -> bool {
        self.role == Role::Primary && self.lease_ok(now)
    }

    pub fn take_actions(&mut self) -> Vec<Action> {
        std::mem::take(&mut self.actions)
    }

    /// The next moment at which [`RoleMachine::tick`] may change something.
    pub fn next_deadline(&self) -> Option<Millis> {
        let mut next: Option<Millis> = None;
        let mut at = |t: Millis| next = Some(next.map_or(t, |n| n.min(t)));
        if self.role == Role::Primary && self.lease_required() {
            at(self.lease_until);
        }
        // While a tie-breaker retry waits, the (past) failover deadline
        // must not wake the ticker: the retry time is the next moment.
        match self.tiebreaker_retry_ms {
            Some(t) => at(t),
            None => {
                if let Some(t) = self.failover_due_ms() {
                    at(t);
                }
            }
        }
        for link in &self.links {
            if link.up || link.last_seen_ms.is_none() {
                at(link.last_seen_ms.unwrap_or(self.started_ms) + self.s.link_dead_after_ms);
            }
        }
        if !self.peer_silent_alarm {
            at(self.last_heard_ms() + self.s.dead_after_ms);
        }
        next
    }

    fn last_heard_ms(&self) -> Millis {
        self.peer.as_ref().map_or(self.started_ms, |p| p.heard_ms)
    }

    fn failover_due_ms(&self) -> Option<Millis> {
        (self.role == Role::Standby
            && self.armed
            && !self.hold
            && !self.leaving
            && self.s.failover == Failover::Auto
            && !self.tiebreaker_pending)
            .then(|| self.holder_heard_ms.unwrap_or(self.started_ms) + self.s.dead_after_ms)
    }

    // ----- heartbeats ----------------------------------------------------

    /// The heartbeat to send now on `link`.
    pub fn heartbeat(&mut self, now: Millis, link: usize) -> Heartbeat {
        self.expire(now);
        let (link_seq, echo) = match self.links.get_mut(link) {
            Some(l) => {
                let seq = l.next_link_seq;
                l.next_link_seq += 1;
                let echo = l.echo_source.map(|(sent_ms, at)| Echo {
                    sent_ms,
                    held_ms: now.saturating_sub(at),
                });
                (seq, echo)
            }
            None => (0, None),
        };
        Heartbeat {
            node: self.s.me.clone(),
            epoch: self.record.epoch,
            holder: self.record.holder.clone(),
            role: self.role,
            sent_ms: now,
            ack_of: if self.role == Role::Standby {
                self.ack_of
            } else {
                None
            },
            peer_joined: self.is_holder() && self.peer_joined,
            leaving: self.leaving,
            link_seq,
            echo,
        }
    }

    pub fn on_heartbeat(&mut self, now: Millis, link: usize, hb: &Heartbeat) {
        self.expire(now);
        if hb.node != self.s.peer {
            return;
        }
        self.note_link(now, link, hb);
        self.peer = Some(PeerView {
            epoch: hb.epoch,
            holder: hb.holder.clone(),
            role: hb.role,
            heard_ms: now,
            leaving: hb.leaving,
        });
        if self.peer_silent_alarm {
            self.peer_silent_alarm = false;
            self.alarm(
                AlarmKind::PeerSilent,
                None,
                "peer heard again".into(),
                false,
            );
        }
        if self.broken || self.leaving {
            return;
        }
        match hb.epoch.cmp(&self.record.epoch) {
            std::cmp::Ordering::Greater => self.meet_higher_epoch(now, hb),
            std::cmp::Ordering::Equal => self.meet_same_epoch(now, hb),
            // The peer is behind; it adopts ours when it hears us.
            std::cmp::Ordering::Less => {}
        }
    }

    fn note_link(&mut self, now: Millis, link: usize, hb: &Heartbeat) {
        let Some(l) = self.links.get_mut(link) else {
            return;
        };
        l.received += 1;
        if hb.link_seq > l.last_link_seq {
            l.lost += hb.link_seq - l.last_link_seq - 1;
        }
        // A lower sequence means the peer restarted the link: start counting anew.
        l.last_link_seq = hb.link_seq;
        l.last_seen_ms = Some(now);
        l.echo_source = Some((hb.sent_ms, now));
        if let Some(echo) = hb.echo {
            let rtt = now
                .saturating_sub(echo.sent_ms)
                .saturating_sub(echo.held_ms);
            l.rtt_ms = Some(rtt);
        }
        l.up = true;
        if std::mem::take(&mut l.alarmed) {
            let msg = format!("heartbeat link {} ({}) is up", link, l.name);
            self.alarm(AlarmKind::LinkDown, Some(link), msg, false);
        }
    }

    fn meet_higher_epoch(&mut self, now: Millis, hb: &Heartbeat) {
        // All in one call, so whatever this node was doing stops before any
        // other event is seen.
        let reason = format!("peer {} is at higher epoch {}", self.s.peer, hb.epoch);
        self.adopt(hb);
        if hb.holder.as_deref() == Some(self.s.peer.as_str())
            && matches!(hb.role, Role::Primary | Role::Promoting | Role::Demoting)
        {
            self.set_role(
                now,
                Role::Standby,
                &format!("following {} in epoch {}", self.s.peer, hb.epoch),
            );
            self.follow(now, hb);
        } else if self.role != Role::Fenced {
            self.set_role(now, Role::Fenced, &reason);
        }
    }

    /// Take the peer's record as ours (persisted first).
    fn adopt(&mut self, hb: &Heartbeat) {
        self.record = EpochRecord {
            epoch: hb.epoch,
            holder: hb.holder.clone(),
        };
        self.actions.push(Action::Persist(self.record.clone()));
        self.peer_joined = false;
        self.lease_until = 0;
        self.armed = false;
        self.ack_of = None;
        self.holder_heard_ms = None;
        self.primary_this_run = false;
        self.handover = None;
        self.tiebreaker_pending = false;
        self.tiebreaker_retry_ms = None;
        self.hold = false;
    }

    fn meet_same_epoch(&mut self, now: Millis, hb: &Heartbeat) {
        if hb.holder != self.record.holder {
            self.meet_rival_claim(now, hb);
            return;
        }
        let peer_holds = hb.holder.as_deref() == Some(self.s.peer.as_str());
        if peer_holds {
            match self.role {
                Role::Standby => self.follow(now, hb),
                Role::Fenced
                    if matches!(hb.role, Role::Primary | Role::Promoting | Role::Demoting) =>
                {
                    self.set_role(
                        now,
                        Role::Standby,
                        &format!("following {} in epoch {}", self.s.peer, hb.epoch),
                    );
                    self.follow(now, hb);
                }
                // A fenced holder peer is the candidate: it promotes when it hears us.
                _ => {}
            }
        } else if self.is_holder() {
            if hb.role == Role::Standby {
                if let Some(t) = hb.ack_of {
                    self.granted(now, t);
                }
            }
            if hb.leaving && self.peer_joined {
                self.peer_joined = false;
            }
            // The holder is the candidate. Having acted in this epoch in this
            // run, it may regain its lease from acknowledgements; otherwise
            // (a restart) it starts a new epoch and waits for an acknowledgement.
            let restarted_holder = self.role == Role::Fenced
                && !self.primary_this_run
                && matches!(hb.role, Role::Fenced | Role::Standby);
            let both_fenced = self.role == Role::Fenced && hb.role == Role::Fenced;
            if (restarted_holder || both_fenced) && self.handover.is_none() && !self.hold {
                self.cold_promote(now, "this node holds the newest epoch and its peer is here");
            }
        } else if self.record.holder.is_none()
            && self.role == Role::Fenced
            && self.s.me == self.s.first
            && matches!(hb.role, Role::Fenced | Role::Standby)
            && !self.hold
        {
            self.cold_promote(now, "new pair; this node is listed first");
        }
    }

    /// Two records for the same epoch name different holders: a forced
    /// promotion, or two claims made while the nodes could not hear each
    /// other (one of them may have acted in it before a restart). Nobody may
    /// act in a contested epoch except a node already acting in it: the
    /// winner of the other cases starts a fresh epoch, which the loser adopts.
    fn meet_rival_claim(&mut self, now: Millis, hb: &Heartbeat) {
        if self.hold {
            return;
        }
        let acting = |r: Role| matches!(r, Role::Primary | Role::Demoting);
        match (acting(self.role), acting(hb.role)) {
            (true, true) => {
                let msg = format!(
                    "split brain: both nodes are primary in epoch {}; run `tandem promote --force` on the node whose data to keep",
                    hb.epoch
                );
                self.set_role(now, Role::Fenced, "split brain");
                self.hold = true;
                self.alarm(AlarmKind::SplitBrain, None, msg, true);
            }
            // The peer, which is not acting, gives way to us.
            (true, false) => {}
            (false, true) => {
                self.adopt(hb);
                self.set_role(
                    now,
                    Role::Standby,
                    &format!("following {} in epoch {}", self.s.peer, hb.epoch),
                );
                self.follow(now, hb);
            }
            (false, false) => {
                let mine_wins = match (self.role, hb.role) {
                    (Role::Promoting, Role::Promoting) => self.s.me == self.s.first,
                    (Role::Promoting, _) => true,
                    (_, Role::Promoting) => false,
                    _ => self.s.me == self.s.first,
                };
                if mine_wins {
                    self.cold_promote(now, "another claim on this epoch; starting a fresh one");
                } else if self.role != Role::Fenced {
                    self.set_role(
                        now,
                        Role::Fenced,
                        "another claim on this epoch; waiting for the peer's fresh one",
                    );
                }
            }
        }
    }

    /// A standby (or one about to be) hears the holder of its epoch.
    fn follow(&mut self, now: Millis, hb: &Heartbeat) {
        self.holder_heard_ms = Some(now);
        self.ack_of = Some(hb.sent_ms);
        self.armed = hb.peer_joined;
        self.tiebreaker_pending = false;
        self.tiebreaker_retry_ms = None;
        self.clear_tiebreaker_alarm("primary heard again");
        if self.role == Role::Promoting {
            // The holder is back while the tie-breaker was being asked.
            self.set_role(
                now,
                Role::Standby,
                "primary heard again; failover cancelled",
            );
        }
    }

    /// The holder receives an acknowledgement of its heartbeat sent at `t`.
    fn granted(&mut self, now: Millis, t: Millis) {
        // A future time is not one of ours (our clock never runs backwards);
        // a grant already over (delayed, or from before a pause) counts for
        // nothing, not even as joining.
        if t > now || t + self.s.lease_ms <= now {
            return;
        }
        self.lease_until = self.lease_until.max(t + self.s.lease_ms);
        self.peer_joined = true;
        let awaiting = self.handover.as_ref().is_some_and(|h| h.promote_sent);
        match self.role {
            Role::Promoting => self.set_role(
                now,
                Role::Primary,
                &format!("peer acknowledged epoch {}", self.record.epoch),
            ),
            Role::Fenced
                if self.primary_this_run && !awaiting && !self.hold && now < self.lease_until =>
            {
                self.set_role(
                    now,
                    Role::Primary,
                    "lease regained: the standby acknowledges again",
                )
            }
            _ => {}
        }
    }

    fn is_holder(&self) -> bool {
        self.record.holder.as_deref() == Some(self.s.me.as_str())
    }

    // ----- time ----------------------------------------------------------

    pub fn tick(&mut self, now: Millis) {
        self.expire(now);
        for i in 0..self.links.len() {
            let l = &self.links[i];
            let seen = l.last_seen_ms.unwrap_or(self.started_ms);
            if (l.up || l.last_seen_ms.is_none()) && now >= seen + self.s.link_dead_after_ms {
                let never = l.last_seen_ms.is_none();
                let msg = if never {
                    format!("heartbeat link {} ({}) has not come up", i, l.name)
                } else {
                    format!(
                        "heartbeat link {} ({}) is down: silent for {} ms",
                        i,
                        l.name,
                        now - seen
                    )
                };
                let l = &mut self.links[i];
                l.up = false;
                l.alarmed = true;
                // Mark as seen so that "never came up" is raised once.
                l.last_seen_ms.get_or_insert(seen);
                self.alarm(AlarmKind::LinkDown, Some(i), msg, true);
            }
        }
        if !self.peer_silent_alarm && now >= self.last_heard_ms() + self.s.dead_after_ms {
            self.peer_silent_alarm = true;
            let msg = format!(
                "peer {} silent on every link for {} ms",
                self.s.peer,
                now - self.last_heard_ms()
            );
            self.alarm(AlarmKind::PeerSilent, None, msg, true);
        }
        if self.tiebreaker_retry_ms.is_some_and(|t| now >= t) {
            self.tiebreaker_retry_ms = None;
        }
        if self.tiebreaker_retry_ms.is_none() && self.failover_due_ms().is_some_and(|t| now >= t) {
            if self.s.tiebreaker {
                self.tiebreaker_pending = true;
                self.set_role(
                    now,
                    Role::Promoting,
                    "primary silent; asking the tie-breaker",
                );
                self.actions.push(Action::CheckTiebreaker);
            } else {
                self.failover(now);
            }
        }
    }

    /// Fence a primary whose lease lapsed. Runs first in every entry point,
    /// so a node resumed after a long pause never acts on stale authority.
    fn expire(&mut self, now: Millis) {
        if self.role == Role::Primary && !self.lease_ok(now) {
            let msg = format!(
                "lease lapsed: no acknowledgement from {} for {} ms; fenced",
                self.s.peer,
                now.saturating_sub(self.lease_until.saturating_sub(self.s.lease_ms))
            );
            self.set_role(now, Role::Fenced, "lease lapsed");
            self.alarm(AlarmKind::LeaseLapsed, None, msg, true);
        }
    }

    fn failover(&mut self, now: Millis) {
        let silent = now - self.holder_heard_ms.unwrap_or(self.started_ms);
        let reason = format!(
            "failover: {} silent on every link for {} ms",
            self.s.peer, silent
        );
        self.promote(now, &reason);
    }

    pub fn tiebreaker_result(&mut self, now: Millis, reachable: bool, detail: &str) {
        self.expire(now);
        if !self.tiebreaker_pending || self.role != Role::Promoting || self.leaving {
            return;
        }
        self.tiebreaker_pending = false;
        if reachable {
            self.clear_tiebreaker_alarm(detail);
            self.failover(now);
        } else {
            self.tiebreaker_alarm = true;
            let msg = format!("tie-breaker refused the failover: {detail}");
            self.set_role(now, Role::Standby, "tie-breaker refused the failover");
            self.alarm(AlarmKind::TiebreakerRefused, None, msg, true);
            self.tiebreaker_retry_ms = Some(now + self.s.dead_after_ms);
        }
    }

    fn clear_tiebreaker_alarm(&mut self, why: &str) {
        if std::mem::take(&mut self.tiebreaker_alarm) {
            let msg = format!("tie-breaker alarm cleared: {why}");
            self.alarm(AlarmKind::TiebreakerRefused, None, msg, false);
        }
    }

    // ----- promotion -----------------------------------------------------

    /// Persist a new epoch held by this node and act as primary in it at once.
    /// Only for paths where the peer cannot be a failover candidate against
    /// us: a failover (the old holder is fenced), a switchover (the old holder
    /// is demoting) and an operator's forced promotion.
    fn promote(&mut self, now: Millis, reason: &str) {
        self.record = EpochRecord {
            epoch: self.record.epoch.next(),
            holder: Some(self.s.me.clone()),
        };
        self.actions.push(Action::Persist(self.record.clone()));
        self.peer_joined = false;
        self.lease_until = 0;
        self.armed = false;
        self.ack_of = None;
        self.holder_heard_ms = None;
        self.tiebreaker_pending = false;
        self.primary_this_run = true;
        self.set_role(now, Role::Primary, reason);
    }

    /// Cold start: persist a new epoch and wait for the peer's acknowledgement
    /// (a lease) before acting, since the peer may still be an armed standby.
    fn cold_promote(&mut self, now: Millis, reason: &str) {
        self.record = EpochRecord {
            epoch: self.record.epoch.next(),
            holder: Some(self.s.me.clone()),
        };
        self.actions.push(Action::Persist(self.record.clone()));
        self.peer_joined = false;
        self.lease_until = 0;
        self.primary_this_run = true;
        self.set_role(now, Role::Promoting, reason);
    }

    /// `tandem promote --force`: the operator takes responsibility that the
    /// peer is not acting.
    pub fn force_promote(&mut self, now: Millis, who: &str) {
        self.expire(now);
        if self.role == Role::Primary || self.broken || self.leaving {
            return;
        }
        // Outrank anything the peer was last seen with.
        if let Some(p) = &self.peer {
            if p.epoch > self.record.epoch {
                self.record.epoch = p.epoch;
            }
        }
        self.hold = false;
        self.handover = None;
        self.promote(now, &format!("forced promotion by {who}"));
    }

    // ----- switchover ----------------------------------------------------

    /// Reasons the pair cannot hand over now; empty when it can.
    pub fn handover_blockers(&mut self, now: Millis) -> Vec<String> {
        self.expire(now);
        let mut why = Vec::new();
        if self.role != Role::Primary {
            why.push(format!(
                "this node ({}) is {}, not primary",
                self.s.me, self.role
            ));
        }
        if let Some(h) = &self.handover {
            why.push(format!("switchover {} is already in progress", h.op));
        }
        match &self.peer {
            None => why.push(format!("peer {} unreachable: never heard", self.s.peer)),
            Some(p) if now.saturating_sub(p.heard_ms) >= self.s.link_dead_after_ms => {
                why.push(format!(
                    "peer {} unreachable: silent for {} ms",
                    self.s.peer,
                    now - p.heard_ms
                ))
            }
            Some(p) if p.role != Role::Standby || p.epoch != self.record.epoch => {
                why.push(format!(
                    "peer {} is {} in epoch {}, not standby in epoch {}",
                    self.s.peer, p.role, p.epoch, self.record.epoch
                ))
            }
            Some(_) => {}
        }
        for (i, l) in self.links.iter().enumerate() {
            if !l.up {
                why.push(format!("heartbeat link {} ({}) is down", i, l.name));
            }
        }
        why
    }

    /// The primary stops acting so that a switchover can drain. Refused with
    /// named reasons.
    pub fn begin_handover(&mut self, now: Millis, op: OpId) -> Result<(), Vec<String>> {
        let why = self.handover_blockers(now);
        if !why.is_empty() {
            return Err(why);
        }
        self.handover = Some(Handover {
            op,
            promote_sent: false,
        });
        self.set_role(now, Role::Demoting, &format!("switchover {op}"));
        Ok(())
    }

    /// Called just before `Promote` goes out: from here on only the standby's
    /// answer (or a higher epoch) decides.
    pub fn handover_promote_sent(&mut self, op: OpId) {
        if let Some(h) = self.handover.as_mut().filter(|h| h.op == op) {
            h.promote_sent = true;
        }
    }

    /// Whether this node waits to learn the outcome of `Promote` for an op.
    pub fn awaiting_outcome(&self) -> Option<OpId> {
        self.handover
            .as_ref()
            .filter(|h| h.promote_sent)
            .map(|h| h.op)
    }

    /// Roll back a switchover that failed before the promotion point.
    pub fn abort_handover(&mut self, now: Millis, op: OpId, why: &str) -> bool {
        self.expire(now);
        if !self
            .handover
            .as_ref()
            .is_some_and(|h| h.op == op && !h.promote_sent)
        {
            return false;
        }
        self.handover = None;
        self.resume_after_handover(now, why);
        true
    }

    fn resume_after_handover(&mut self, now: Millis, why: &str) {
        if self.role != Role::Demoting {
            return;
        }
        if self.lease_ok(now) && !self.hold {
            self.set_role(
                now,
                Role::Primary,
                &format!("switchover rolled back: {why}"),
            );
        } else {
            self.set_role(
                now,
                Role::Fenced,
                &format!("switchover rolled back ({why}) but the lease lapsed"),
            );
        }
    }

    /// The old primary gave up waiting for an answer: it stays out of the
    /// primary role until it learns the outcome.
    pub fn handover_timed_out(&mut self, now: Millis, op: OpId) {
        if self.awaiting_outcome() == Some(op) && self.role == Role::Demoting {
            self.set_role(
                now,
                Role::Fenced,
                &format!("switchover {op}: no answer from the peer; outcome pending"),
            );
        }
    }

    /// The standby's side: promote for `op` if this node is the standby of
    /// `epoch`. A refusal is final for that op.
    pub fn on_promote_request(
        &mut self,
        now: Millis,
        op: OpId,
        epoch: Epoch,
    ) -> Result<Epoch, String> {
        self.expire(now);
        if let Some((done, e)) = self.promoted_for {
            if done == op {
                return Ok(e);
            }
        }
        if self.declined.contains(&op) {
            return Err(format!("switchover {op} was already abandoned"));
        }
        let peer_holds = self.record.holder.as_deref() == Some(self.s.peer.as_str());
        let refuse = if self.broken {
            Some("this node cannot persist its epoch".to_string())
        } else if self.leaving {
            Some(format!("{} is shutting down", self.s.me))
        } else if self.role != Role::Standby || self.record.epoch != epoch || !peer_holds {
            Some(format!(
                "{} is {} in epoch {}, not the standby of {} in epoch {}",
                self.s.me, self.role, self.record.epoch, self.s.peer, epoch
            ))
        } else {
            None
        };
        if let Some(why) = refuse {
            self.declined.insert(op);
            return Err(why);
        }
        self.promote(now, &format!("switchover {op}"));
        let e = self.record.epoch;
        self.promoted_for = Some((op, e));
        Ok(e)
    }

    /// The standby's answer to `Abandon`.
    pub fn on_abandon(&mut self, op: OpId) -> Outcome {
        match self.promoted_for {
            Some((done, e)) if done == op => Outcome::Promoted(e),
            _ => {
                self.declined.insert(op);
                Outcome::Declined
            }
        }
    }

    /// The old primary learns its standby promoted for `op`.
    pub fn on_promoted(&mut self, now: Millis, op: OpId, epoch: Epoch) {
        self.expire(now);
        if epoch <= self.record.epoch {
            return;
        }
        let hb_like = Heartbeat {
            node: self.s.peer.clone(),
            epoch,
            holder: Some(self.s.peer.clone()),
            role: Role::Primary,
            sent_ms: 0,
            ack_of: None,
            peer_joined: false,
            leaving: false,
            link_seq: 0,
            echo: None,
        };
        let _ = op;
        self.meet_higher_epoch(now, &hb_like);
        // The heartbeat was synthetic: do not acknowledge its made-up time.
        self.ack_of = None;
    }

    /// The old primary learns its standby declined `op` for good.
    pub fn on_declined(&mut self, now: Millis, op: OpId, why: &str) {
        self.expire(now);
        if !self.handover.as_ref().is_some_and(|h| h.op == op) {
            return;
        }
        self.handover = None;
        // A node that timed out earlier is fenced: it may now regain its
        // lease from acknowledgements; a demoting one resumes at once.
        self.resume_after_handover(now, why);
    }

    // ----- failures and shutdown ----------------------------------------

    /// The last [`Action::Persist`] did not reach the disk. The node fences
    /// and stays fenced: acting in an epoch it could forget is worse.
    pub fn persist_failed(&mut self, now: Millis, error: &str, on_disk: EpochRecord) {
        let lost = std::mem::replace(&mut self.record, on_disk);
        self.broken = true;
        // A promotion for a switchover that did not reach the disk did not
        // happen: the op's answer is "declined" from now on.
        if let Some((op, e)) = self.promoted_for {
            if e == lost.epoch {
                self.promoted_for = None;
                self.declined.insert(op);
            }
        }
        if self.role != Role::Fenced {
            self.set_role(now, Role::Fenced, "cannot persist the epoch");
        }
        let msg = format!(
            "cannot persist epoch {}: {error}; fenced until restart",
            lost.epoch
        );
        self.alarm(AlarmKind::PersistFailed, None, msg, true);
    }

    /// Graceful stop: stop acting, and tell the peer (through `leaving` in the
    /// next heartbeats) that we no longer count as its standby.
    pub fn shutdown(&mut self, now: Millis) {
        if self.role != Role::Fenced && self.role != Role::Standby {
            self.set_role(now, Role::Fenced, "shutting down");
        }
        // A leaving node is no failover candidate and takes no promotion.
        self.leaving = true;
        self.armed = false;
        self.tiebreaker_pending = false;
    }

    // ----- helpers -------------------------------------------------------

    fn set_role(&mut self, now: Millis, to: Role, reason: &str) {
        if self.role == to {
            return;
        }
        if to == Role::Primary {
            self.primary_this_run = true;
        }
        let change = RoleChange {
            at_ms: now,
            from: self.role,
            to,
            epoch: self.record.epoch,
            reason: reason.to_string(),
        };
        self.role = to;
        if self.history.len() == HISTORY_LEN {
            self.history.pop_front();
        }
        self.history.push_back(change.clone());
        self.actions.push(Action::RoleChanged(change));
    }

    fn alarm(&mut self, kind: AlarmKind, link: Option<usize>, message: String, raised: bool) {
        self.actions.push(Action::Alarm(Alarm {
            kind,
            link,
            message,
            raised,
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(me: &str, peer: &str) -> Settings {
        Settings {
            me: me.into(),
            peer: peer.into(),
            first: "a".into(),
            failover: Failover::Auto,
            lease_ms: 1500,
            dead_after_ms: 2000,
            link_dead_after_ms: 1000,
            links: vec!["udp://x".into()],
            tiebreaker: false,
        }
    }

    /// Exchange heartbeats between two machines at `now`.
    fn exchange(a: &mut RoleMachine, b: &mut RoleMachine, now: Millis) {
        let ha = a.heartbeat(now, 0);
        b.on_heartbeat(now, 0, &ha);
        let hb = b.heartbeat(now, 0);
        a.on_heartbeat(now, 0, &hb);
    }

    #[test]
    fn new_pair_elects_the_first_node_and_it_survives_a_dead_standby_only_by_fencing() {
        let mut a = RoleMachine::new(settings("a", "b"), EpochRecord::default(), 0);
        let mut b = RoleMachine::new(settings("b", "a"), EpochRecord::default(), 0);
        for t in (0..1000).step_by(100) {
            exchange(&mut a, &mut b, t);
        }
        assert_eq!(a.role(), Role::Primary);
        assert_eq!(b.role(), Role::Standby);
        assert!(b.armed());
        assert_eq!(a.epoch(), Epoch(1));
        // b dies: a fences when its lease lapses, b never promotes.
        for t in (1000..5000).step_by(100) {
            a.tick(t);
        }
        assert_eq!(a.role(), Role::Fenced);
    }

    #[test]
    fn failover_waits_for_dead_after() {
        let mut a = RoleMachine::new(settings("a", "b"), EpochRecord::default(), 0);
        let mut b = RoleMachine::new(settings("b", "a"), EpochRecord::default(), 0);
        for t in (0..1000).step_by(100) {
            exchange(&mut a, &mut b, t);
        }
        let last = 900;
        b.tick(last + 1999);
        assert_eq!(b.role(), Role::Standby);
        b.tick(last + 2000);
        assert_eq!(b.role(), Role::Primary);
        assert_eq!(b.epoch(), Epoch(2));
        // a was fenced long before: its lease came from acks of heartbeats sent ≤ 900.
        a.tick(last + 1500);
        assert_eq!(a.role(), Role::Fenced);
    }
}
