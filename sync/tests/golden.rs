//! Golden tests of the role machine: a scripted scenario in, every action
//! the two machines asked for out, compared with a snapshot. When behaviour
//! changes on purpose, refresh the snapshots with
//! `UPDATE_EXPECT=1 cargo test -p tandem-sync --test golden` and read the diff.

use expect_test::{expect, Expect};
use tandem_sync::message::{EpochRecord, OpId};
use tandem_sync::role::{Action, Failover, Millis, Outcome, RoleMachine, Settings};

struct Script {
    nodes: [RoleMachine; 2],
    up: [bool; 2],
    /// Heartbeats flow between the nodes.
    connected: bool,
    /// Node i hears the other (for one-way cuts).
    hears: [bool; 2],
    trace: String,
}

const NAMES: [&str; 2] = ["a", "b"];

impl Script {
    fn new(failover: Failover, tiebreaker: bool) -> Script {
        let settings = |i: usize| Settings {
            me: NAMES[i].into(),
            peer: NAMES[1 - i].into(),
            first: "a".into(),
            failover,
            lease_ms: 1500,
            dead_after_ms: 2000,
            link_dead_after_ms: 1000,
            links: vec!["udp://x".into()],
            tiebreaker,
        };
        Script {
            nodes: [
                RoleMachine::new(settings(0), EpochRecord::default(), 0),
                RoleMachine::new(settings(1), EpochRecord::default(), 0),
            ],
            up: [true, true],
            connected: true,
            hears: [true, true],
            trace: String::new(),
        }
    }

    fn record(&mut self, i: usize, now: Millis) {
        for action in self.nodes[i].take_actions() {
            let line = match action {
                Action::Persist(r) => format!(
                    "persist epoch {} holder {}",
                    r.epoch,
                    r.holder.unwrap_or_default()
                ),
                Action::RoleChanged(c) => {
                    format!("{} -> {} in {}: {}", c.from, c.to, c.epoch, c.reason)
                }
                Action::Alarm(a) if a.raised => format!("ALARM {:?}: {}", a.kind, a.message),
                Action::Alarm(a) => format!("cleared {:?}: {}", a.kind, a.message),
                Action::CheckTiebreaker => "check tie-breaker".into(),
            };
            self.trace
                .push_str(&format!("t={now} {}: {line}\n", NAMES[i]));
        }
    }

    /// Run from `from` to `to` (ms), heartbeats every 100 ms, ticks between.
    fn run(&mut self, from: Millis, to: Millis) {
        let mut t = from;
        while t < to {
            for i in 0..2 {
                if self.up[i] {
                    self.nodes[i].tick(t);
                    self.record(i, t);
                }
            }
            if t.is_multiple_of(100) && self.connected {
                for i in 0..2 {
                    if self.up[i] && self.up[1 - i] && self.hears[1 - i] {
                        let hb = self.nodes[i].heartbeat(t, 0);
                        let [a, b] = &mut self.nodes;
                        let to = if i == 0 { b } else { a };
                        to.on_heartbeat(t, 0, &hb);
                        self.record(1 - i, t);
                    }
                }
            }
            t += 10;
        }
    }

    fn note(&mut self, now: Millis, what: &str) {
        self.trace.push_str(&format!("t={now} -- {what}\n"));
    }

    fn check(self, expect: Expect) {
        expect.assert_eq(&self.trace);
    }
}

#[test]
fn a_new_pair_elects_the_first_node() {
    let mut s = Script::new(Failover::Auto, false);
    s.run(0, 600);
    s.check(expect![[r#"
        t=0 a: persist epoch 1 holder a
        t=0 a: fenced -> promoting in 1: new pair; this node is listed first
        t=100 b: persist epoch 1 holder a
        t=100 b: fenced -> standby in 1: following a in epoch 1
        t=100 a: promoting -> primary in 1: peer acknowledged epoch 1
    "#]]);
}

#[test]
fn kill_of_the_primary_fails_over_after_dead_after_and_the_old_one_rejoins() {
    let mut s = Script::new(Failover::Auto, false);
    s.run(0, 1000);
    s.trace.clear();
    s.note(1000, "a crashes");
    s.up[0] = false;
    s.run(1000, 3200);
    s.note(3200, "a restarts from its disk");
    let disk = s.nodes[0].record().clone();
    let settings = s.nodes[0].settings().clone();
    s.nodes[0] = RoleMachine::new(settings, disk, 3200);
    s.up[0] = true;
    s.run(3200, 3500);
    s.check(expect![[r#"
        t=1000 -- a crashes
        t=1900 b: ALARM LinkDown: heartbeat link 0 (udp://x) is down: silent for 1000 ms
        t=2900 b: ALARM PeerSilent: peer a silent on every link for 2000 ms
        t=2900 b: persist epoch 2 holder b
        t=2900 b: standby -> primary in 2: failover: a silent on every link for 2000 ms
        t=3200 -- a restarts from its disk
        t=3200 b: cleared LinkDown: heartbeat link 0 (udp://x) is up
        t=3200 b: cleared PeerSilent: peer heard again
        t=3200 a: persist epoch 2 holder b
        t=3200 a: fenced -> standby in 2: following b in epoch 2
    "#]]);
}

#[test]
fn a_primary_cut_off_fences_before_the_standby_promotes() {
    let mut s = Script::new(Failover::Auto, false);
    s.run(0, 1000);
    s.trace.clear();
    s.note(1000, "every link cut");
    s.connected = false;
    s.run(1000, 3100);
    s.note(3100, "links restored");
    s.connected = true;
    s.run(3100, 3300);
    s.check(expect![[r#"
        t=1000 -- every link cut
        t=1900 a: ALARM LinkDown: heartbeat link 0 (udp://x) is down: silent for 1000 ms
        t=1900 b: ALARM LinkDown: heartbeat link 0 (udp://x) is down: silent for 1000 ms
        t=2400 a: primary -> fenced in 1: lease lapsed
        t=2400 a: ALARM LeaseLapsed: lease lapsed: no acknowledgement from b for 1500 ms; fenced
        t=2900 a: ALARM PeerSilent: peer b silent on every link for 2000 ms
        t=2900 b: ALARM PeerSilent: peer a silent on every link for 2000 ms
        t=2900 b: persist epoch 2 holder b
        t=2900 b: standby -> primary in 2: failover: a silent on every link for 2000 ms
        t=3100 -- links restored
        t=3100 b: cleared LinkDown: heartbeat link 0 (udp://x) is up
        t=3100 b: cleared PeerSilent: peer heard again
        t=3100 a: cleared LinkDown: heartbeat link 0 (udp://x) is up
        t=3100 a: cleared PeerSilent: peer heard again
        t=3100 a: persist epoch 2 holder b
        t=3100 a: fenced -> standby in 2: following b in epoch 2
    "#]]);
}

#[test]
fn manual_mode_keeps_the_primary_when_the_standby_dies() {
    let mut s = Script::new(Failover::Manual, false);
    s.run(0, 1000);
    s.trace.clear();
    s.note(1000, "b crashes");
    s.up[1] = false;
    s.run(1000, 4000);
    s.check(expect![[r#"
        t=1000 -- b crashes
        t=1900 a: ALARM LinkDown: heartbeat link 0 (udp://x) is down: silent for 1000 ms
        t=2900 a: ALARM PeerSilent: peer b silent on every link for 2000 ms
    "#]]);
}

#[test]
fn the_tiebreaker_is_asked_before_a_failover() {
    let mut s = Script::new(Failover::Auto, true);
    s.run(0, 1000);
    s.trace.clear();
    s.up[0] = false;
    s.run(1000, 2910);
    s.nodes[1].tiebreaker_result(2910, false, "gateway 127.0.0.1:9 unreachable");
    s.record(1, 2910);
    // It asks again after dead_after.
    s.run(2910, 4920);
    s.nodes[1].tiebreaker_result(4920, true, "reached gateway 127.0.0.1:9");
    s.record(1, 4920);
    s.check(expect![[r#"
        t=1900 b: ALARM LinkDown: heartbeat link 0 (udp://x) is down: silent for 1000 ms
        t=2900 b: ALARM PeerSilent: peer a silent on every link for 2000 ms
        t=2900 b: standby -> promoting in 1: primary silent; asking the tie-breaker
        t=2900 b: check tie-breaker
        t=2910 b: promoting -> standby in 1: tie-breaker refused the failover
        t=2910 b: ALARM TiebreakerRefused: tie-breaker refused the failover: gateway 127.0.0.1:9 unreachable
        t=4910 b: standby -> promoting in 1: primary silent; asking the tie-breaker
        t=4910 b: check tie-breaker
        t=4920 b: cleared TiebreakerRefused: tie-breaker alarm cleared: reached gateway 127.0.0.1:9
        t=4920 b: persist epoch 2 holder b
        t=4920 b: promoting -> primary in 2: failover: a silent on every link for 4020 ms
    "#]]);
}

#[test]
fn a_switchover_declined_rolls_back_and_an_accepted_one_hands_over() {
    let mut s = Script::new(Failover::Auto, false);
    s.run(0, 1000);
    s.trace.clear();
    let [a, b] = &mut s.nodes;
    a.begin_handover(1000, OpId(1)).unwrap();
    a.handover_promote_sent(OpId(1));
    assert!(
        b.on_promote_request(1000, OpId(1), a.epoch().next())
            .is_err(),
        "wrong epoch is refused"
    );
    a.on_declined(1000, OpId(1), "positions differ");
    s.record(0, 1000);
    s.record(1, 1000);
    let [a, b] = &mut s.nodes;
    a.begin_handover(1100, OpId(2)).unwrap();
    a.handover_promote_sent(OpId(2));
    let epoch = b.on_promote_request(1100, OpId(2), a.epoch()).unwrap();
    // A late duplicate gets the same answer; an abandon after it too.
    assert_eq!(b.on_promote_request(1100, OpId(2), a.epoch()), Ok(epoch));
    assert_eq!(b.on_abandon(OpId(2)), Outcome::Promoted(epoch));
    a.on_promoted(1100, OpId(2), epoch);
    s.record(0, 1100);
    s.record(1, 1100);
    s.run(1100, 1300);
    s.check(expect![[r#"
        t=1000 a: primary -> demoting in 1: switchover so-00000001
        t=1000 a: demoting -> primary in 1: switchover rolled back: positions differ
        t=1100 a: primary -> demoting in 1: switchover so-00000002
        t=1100 a: persist epoch 2 holder b
        t=1100 a: demoting -> standby in 2: following b in epoch 2
        t=1100 b: persist epoch 2 holder b
        t=1100 b: standby -> primary in 2: switchover so-00000002
    "#]]);
}

/// b fails over while a, restarted, claims the same epoch without acting in
/// it; b then restarts. When they meet, neither acts in that epoch again:
/// the pair moves to a fresh one.
#[test]
fn a_contested_epoch_is_never_acted_in_twice() {
    let mut s = Script::new(Failover::Auto, false);
    s.run(0, 1000);
    s.trace.clear();
    let restart = |s: &mut Script, i: usize, now: Millis| {
        let disk = s.nodes[i].record().clone();
        let settings = s.nodes[i].settings().clone();
        s.nodes[i] = RoleMachine::new(settings, disk, now);
    };
    s.note(1000, "a restarts; from now on b does not hear a");
    restart(&mut s, 0, 1000);
    s.hears[1] = false;
    s.run(1000, 2800);
    s.note(2800, "every link cut");
    s.connected = false;
    s.run(2800, 3100);
    s.note(3100, "b restarts");
    restart(&mut s, 1, 3100);
    s.run(3100, 3200);
    s.note(3200, "links restored");
    s.connected = true;
    s.hears[1] = true;
    s.run(3200, 3500);
    s.check(expect![[r#"
        t=1000 -- a restarts; from now on b does not hear a
        t=1000 a: persist epoch 2 holder a
        t=1000 a: fenced -> promoting in 2: this node holds the newest epoch and its peer is here
        t=1900 b: ALARM LinkDown: heartbeat link 0 (udp://x) is down: silent for 1000 ms
        t=2800 -- every link cut
        t=2900 b: ALARM PeerSilent: peer a silent on every link for 2000 ms
        t=2900 b: persist epoch 2 holder b
        t=2900 b: standby -> primary in 2: failover: a silent on every link for 2000 ms
        t=3100 -- b restarts
        t=3200 -- links restored
        t=3200 a: persist epoch 3 holder a
        t=3300 b: persist epoch 3 holder a
        t=3300 b: fenced -> standby in 3: following a in epoch 3
        t=3300 a: promoting -> primary in 3: peer acknowledged epoch 3
    "#]]);
}

#[test]
fn a_standby_that_is_stopped_never_fails_over() {
    let mut s = Script::new(Failover::Auto, false);
    s.run(0, 1000);
    s.trace.clear();
    s.nodes[1].shutdown(1000);
    s.record(1, 1000);
    s.note(1000, "b is stopping; a crashes");
    s.up[0] = false;
    s.run(1000, 5000);
    s.check(expect![[r#"
        t=1000 -- b is stopping; a crashes
        t=1900 b: ALARM LinkDown: heartbeat link 0 (udp://x) is down: silent for 1000 ms
        t=2900 b: ALARM PeerSilent: peer a silent on every link for 2000 ms
    "#]]);
}
