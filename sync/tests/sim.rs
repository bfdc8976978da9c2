//! Seeded simulation of the role machine: two nodes, two heartbeat links and
//! a replication link, with random cuts of each link direction, pauses,
//! crashes and restarts, and switchovers started at random. No sockets and no
//! sleeps: one seed drives every choice, so a failing seed replays exactly:
//!
//! ```text
//! TANDEM_SIM_SEED=1234 cargo test -p tandem-sync --test sim
//! ```
//!
//! After every step the safety invariants are checked: at most one node acts
//! as primary at any instant, at most one node is ever primary in an epoch,
//! and no node is in the primary role without a valid lease. After a healing
//! phase (links restored, nodes resumed and restarted) exactly one node is
//! primary and the other its standby.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, VecDeque};
use tandem_sync::message::{Epoch, EpochRecord, Heartbeat, OpId, Role};
use tandem_sync::role::{Action, Failover, Millis, Outcome, RoleMachine, Settings};

const NAMES: [&str; 2] = ["a", "b"];
const HEARTBEAT_MS: Millis = 100;
const LINKS: usize = 2;
/// Link index used for the replication (TCP) channel in the cut table.
const REPL: usize = LINKS;

#[derive(Debug, Clone)]
enum Msg {
    Heartbeat(usize, Heartbeat),
    Promote(OpId, Epoch),
    Promoted(OpId, Epoch),
    Declined(OpId),
    Abandon(OpId),
}

struct Node {
    machine: RoleMachine,
    disk: EpochRecord,
    crashed_until: Option<Millis>,
    paused_until: Option<Millis>,
    next_heartbeat: Millis,
    inbox: VecDeque<Msg>,
    /// Switchover state the runtime keeps: (op, phase deadline, promote sent).
    handover: Option<(OpId, Millis, bool)>,
    next_abandon: Millis,
}

struct Sim {
    rng: StdRng,
    now: Millis,
    nodes: Vec<Node>,
    /// cut[link][from] = messages from node `from` on `link` are lost.
    cut: Vec<[bool; 2]>,
    in_flight: Vec<(Millis, usize, Msg)>,
    primary_of_epoch: BTreeMap<Epoch, usize>,
    next_op: u64,
    seed: u64,
    log: VecDeque<String>,
    stats: Stats,
}

/// What the faults made happen, so the test can show it exercised each path.
#[derive(Default, Debug, Clone, Copy)]
struct Stats {
    switchovers: u64,
    failovers: u64,
    lease_lapses: u64,
    rollbacks: u64,
}

fn settings(i: usize, failover: Failover) -> Settings {
    Settings {
        me: NAMES[i].into(),
        peer: NAMES[1 - i].into(),
        first: NAMES[0].into(),
        failover,
        lease_ms: 1500,
        dead_after_ms: 2000,
        link_dead_after_ms: 1000,
        links: (0..LINKS).map(|l| format!("link{l}")).collect(),
        tiebreaker: false,
    }
}

impl Sim {
    fn new(seed: u64) -> Sim {
        let rng = StdRng::seed_from_u64(seed);
        let nodes = (0..2)
            .map(|i| Node {
                machine: RoleMachine::new(settings(i, Failover::Auto), EpochRecord::default(), 0),
                disk: EpochRecord::default(),
                crashed_until: None,
                paused_until: None,
                next_heartbeat: 0,
                inbox: VecDeque::new(),
                handover: None,
                next_abandon: 0,
            })
            .collect();
        Sim {
            rng,
            now: 0,
            nodes,
            cut: vec![[false; 2]; LINKS + 1],
            in_flight: Vec::new(),
            primary_of_epoch: BTreeMap::new(),
            next_op: 1,
            seed,
            log: VecDeque::new(),
            stats: Stats::default(),
        }
    }

    fn note(&mut self, line: String) {
        if self.log.len() == 60 {
            self.log.pop_front();
        }
        self.log.push_back(format!("{:>7} {line}", self.now));
    }

    fn fail(&self, what: &str) -> ! {
        let log: Vec<&str> = self.log.iter().map(String::as_str).collect();
        panic!(
            "seed {}: {what} at t={} ms\nlast events:\n{}\nreproduce: TANDEM_SIM_SEED={} cargo test -p tandem-sync --test sim",
            self.seed,
            self.now,
            log.join("\n"),
            self.seed
        );
    }

    fn running(&self, i: usize) -> bool {
        self.nodes[i].crashed_until.is_none() && self.nodes[i].paused_until.is_none()
    }

    fn send(&mut self, from: usize, link: usize, msg: Msg) {
        if self.cut[link][from] {
            return;
        }
        let delay = if self.rng.gen_bool(0.05) {
            self.rng.gen_range(0..400)
        } else {
            self.rng.gen_range(0..20)
        };
        self.in_flight.push((self.now + delay, 1 - from, msg));
    }

    /// Carry out what the machine asked for, as the runtime would.
    fn drain_actions(&mut self, i: usize) {
        for action in self.nodes[i].machine.take_actions() {
            match action {
                Action::Persist(record) => self.nodes[i].disk = record,
                Action::RoleChanged(c) => {
                    self.note(format!(
                        "{}: {} -> {} in {} ({})",
                        NAMES[i], c.from, c.to, c.epoch, c.reason
                    ));
                    let reason = c.reason.as_str();
                    match (c.from, c.to) {
                        (Role::Standby, Role::Primary) if reason.starts_with("switchover") => {
                            self.stats.switchovers += 1
                        }
                        (Role::Standby, Role::Primary) if reason.starts_with("failover") => {
                            self.stats.failovers += 1
                        }
                        (Role::Primary, Role::Fenced) if reason == "lease lapsed" => {
                            self.stats.lease_lapses += 1
                        }
                        (Role::Demoting, Role::Primary) => self.stats.rollbacks += 1,
                        _ => {}
                    }
                    if c.to == Role::Primary {
                        let holder = *self.primary_of_epoch.entry(c.epoch).or_insert(i);
                        if holder != i {
                            self.fail(&format!("two primaries in epoch {}", c.epoch));
                        }
                    }
                    if c.from == Role::Demoting && c.to != Role::Fenced {
                        self.nodes[i].handover = None;
                    }
                }
                Action::Alarm(_) | Action::CheckTiebreaker => {}
            }
        }
    }

    fn deliver(&mut self, i: usize, msg: Msg) {
        let now = self.now;
        match msg {
            Msg::Heartbeat(link, hb) => self.nodes[i].machine.on_heartbeat(now, link, &hb),
            Msg::Promote(op, epoch) => {
                let answer = match self.nodes[i].machine.on_promote_request(now, op, epoch) {
                    Ok(e) => Msg::Promoted(op, e),
                    Err(_) => Msg::Declined(op),
                };
                self.drain_actions(i);
                self.send(i, REPL, answer);
            }
            Msg::Abandon(op) => {
                let answer = match self.nodes[i].machine.on_abandon(op) {
                    Outcome::Promoted(e) => Msg::Promoted(op, e),
                    Outcome::Declined => Msg::Declined(op),
                };
                self.send(i, REPL, answer);
            }
            Msg::Promoted(op, epoch) => {
                self.nodes[i].machine.on_promoted(now, op, epoch);
                self.nodes[i].handover = None;
            }
            Msg::Declined(op) => {
                self.nodes[i].machine.on_declined(now, op, "declined");
                if self.nodes[i].handover.is_some_and(|h| h.0 == op) {
                    self.nodes[i].handover = None;
                }
            }
        }
        self.drain_actions(i);
    }

    /// One node's turn: tick first (as after a pause), then its inbox, then
    /// its heartbeats and switchover duties.
    fn run_node(&mut self, i: usize, faults: bool) {
        let now = self.now;
        self.nodes[i].machine.tick(now);
        self.drain_actions(i);
        while let Some(msg) = self.nodes[i].inbox.pop_front() {
            self.deliver(i, msg);
        }
        if now >= self.nodes[i].next_heartbeat {
            self.nodes[i].next_heartbeat = now + HEARTBEAT_MS;
            for link in 0..LINKS {
                let hb = self.nodes[i].machine.heartbeat(now, link);
                self.send(i, link, Msg::Heartbeat(link, hb));
            }
        }
        self.switchover_duties(i, faults);
    }

    fn switchover_duties(&mut self, i: usize, faults: bool) {
        let now = self.now;
        match self.nodes[i].handover {
            None => {
                if faults
                    && self.nodes[i].machine.role() == Role::Primary
                    && self.rng.gen_bool(0.002)
                {
                    let op = OpId(self.next_op);
                    self.next_op += 1;
                    if self.nodes[i].machine.begin_handover(now, op).is_ok() {
                        let drain = self.rng.gen_range(0..300);
                        self.nodes[i].handover = Some((op, now + drain, false));
                        self.note(format!("{}: switchover {op} begins", NAMES[i]));
                    }
                    self.drain_actions(i);
                }
            }
            Some((op, deadline, false)) if now >= deadline => {
                if self.rng.gen_bool(0.1) {
                    self.nodes[i]
                        .machine
                        .abort_handover(now, op, "drain failed");
                    self.nodes[i].handover = None;
                } else {
                    let epoch = self.nodes[i].machine.epoch();
                    self.nodes[i].machine.handover_promote_sent(op);
                    self.nodes[i].handover = Some((op, now + 1000, true));
                    self.send(i, REPL, Msg::Promote(op, epoch));
                }
                self.drain_actions(i);
            }
            Some((op, deadline, true)) if now >= deadline => {
                self.nodes[i].machine.handover_timed_out(now, op);
                self.drain_actions(i);
                if now >= self.nodes[i].next_abandon {
                    self.nodes[i].next_abandon = now + 500;
                    self.send(i, REPL, Msg::Abandon(op));
                }
            }
            Some(_) => {}
        }
        // The runtime forgets a handover the machine no longer tracks.
        if self.nodes[i].handover.is_some_and(|h| h.2)
            && self.nodes[i].machine.awaiting_outcome().is_none()
        {
            self.nodes[i].handover = None;
        }
    }

    fn inject_fault(&mut self) {
        let roll: f64 = self.rng.gen();
        let i = self.rng.gen_range(0..2);
        let now = self.now;
        if roll < 0.004 {
            let link = self.rng.gen_range(0..=LINKS);
            let dir = self.rng.gen_range(0..2);
            self.cut[link][dir] = !self.cut[link][dir];
            let state = if self.cut[link][dir] { "cut" } else { "healed" };
            self.note(format!("link {link} from {} {state}", NAMES[dir]));
        } else if roll < 0.0045 && self.running(i) {
            let d = self.rng.gen_range(100..4000);
            self.nodes[i].paused_until = Some(now + d);
            self.note(format!("{} paused for {d} ms", NAMES[i]));
        } else if roll < 0.005 && self.nodes[i].crashed_until.is_none() {
            let d = self.rng.gen_range(0..3000);
            self.nodes[i].crashed_until = Some(now + d);
            self.nodes[i].paused_until = None;
            self.nodes[i].inbox.clear();
            self.note(format!("{} crashed for {d} ms", NAMES[i]));
        }
    }

    fn wake(&mut self, heal: bool) {
        let now = self.now;
        for (i, name) in NAMES.iter().enumerate() {
            if self.nodes[i].paused_until.is_some_and(|t| heal || now >= t) {
                self.nodes[i].paused_until = None;
                self.note(format!("{} resumed", name));
            }
            if self.nodes[i]
                .crashed_until
                .is_some_and(|t| heal || now >= t)
            {
                let disk = self.nodes[i].disk.clone();
                self.nodes[i] = Node {
                    machine: RoleMachine::new(settings(i, Failover::Auto), disk.clone(), now),
                    disk,
                    crashed_until: None,
                    paused_until: None,
                    next_heartbeat: now,
                    inbox: VecDeque::new(),
                    handover: None,
                    next_abandon: 0,
                };
                self.note(format!("{} restarted", name));
            }
        }
    }

    fn step(&mut self, faults: bool) {
        self.now += self.rng.gen_range(1..=25);
        if faults {
            self.inject_fault();
        }
        self.wake(!faults);
        let now = self.now;
        let (due, later): (Vec<_>, Vec<_>) = self.in_flight.drain(..).partition(|m| m.0 <= now);
        self.in_flight = later;
        for (_, to, msg) in due {
            // A crashed node loses what was sent to it; a paused one finds it queued.
            if self.nodes[to].crashed_until.is_none() {
                self.nodes[to].inbox.push_back(msg);
            }
        }
        let mut order = [0, 1];
        if self.rng.gen_bool(0.5) {
            order.swap(0, 1);
        }
        for i in order {
            if self.running(i) {
                self.run_node(i, faults);
            }
        }
        self.check_safety();
    }

    fn check_safety(&self) {
        let mut acting = 0;
        for (i, name) in NAMES.iter().enumerate() {
            if !self.running(i) {
                continue;
            }
            let m = &self.nodes[i].machine;
            if m.role() == Role::Primary && !m.acting_as_primary(self.now) {
                self.fail(&format!("{} is primary without a valid lease", name));
            }
            if m.acting_as_primary(self.now) {
                acting += 1;
            }
            if m.record() != &self.nodes[i].disk {
                self.fail(&format!(
                    "{} acts on an epoch record it has not persisted",
                    name
                ));
            }
        }
        if acting > 1 {
            self.fail("two nodes act as primary at once");
        }
    }

    fn check_healed(&self) {
        let roles: Vec<Role> = self.nodes.iter().map(|n| n.machine.role()).collect();
        let epochs: Vec<Epoch> = self.nodes.iter().map(|n| n.machine.epoch()).collect();
        let ok = matches!(
            (roles[0], roles[1]),
            (Role::Primary, Role::Standby) | (Role::Standby, Role::Primary)
        ) && epochs[0] == epochs[1];
        if !ok {
            self.fail(&format!(
                "after healing: roles {roles:?}, epochs {epochs:?}"
            ));
        }
    }
}

fn run(seed: u64, fault_steps: usize) -> Stats {
    let mut sim = Sim::new(seed);
    for _ in 0..fault_steps {
        sim.step(true);
    }
    // Healing: every link restored, every node running, for 15 s.
    for link in sim.cut.iter_mut() {
        *link = [false; 2];
    }
    sim.note("healing".into());
    let end = sim.now + 15_000;
    while sim.now < end {
        sim.step(false);
    }
    sim.check_healed();
    sim.stats
}

#[test]
fn role_machine_survives_random_faults() {
    if let Ok(seed) = std::env::var("TANDEM_SIM_SEED") {
        let seed = seed.parse().expect("TANDEM_SIM_SEED must be a number");
        let stats = run(seed, 20_000);
        eprintln!("seed {seed}: {stats:?}");
        return;
    }
    let seeds: u64 = std::env::var("TANDEM_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    let mut total = Stats::default();
    for seed in 0..seeds {
        let s = run(seed, 5_000);
        total.switchovers += s.switchovers;
        total.failovers += s.failovers;
        total.lease_lapses += s.lease_lapses;
        total.rollbacks += s.rollbacks;
    }
    eprintln!("{seeds} seeds: {total:?}");
    // The faults must have reached every path, or the safety checks prove little.
    assert!(total.switchovers > 0 && total.failovers > 0, "{total:?}");
    assert!(total.lease_lapses > 0 && total.rollbacks > 0, "{total:?}");
}
