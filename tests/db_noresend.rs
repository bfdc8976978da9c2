//! No report sent twice, whole-binary: a sender process (Python, one at a
//! time, always against the current primary's copy) takes reports from an
//! outbox table in the replicated database, marks each 'sending', calls the
//! barrier, sends it to a receiver over loopback TCP, marks it 'sent' and
//! calls the barrier again (tests/noresend_sender.py says why each step is
//! there). Graceful switchovers and kill -9 failovers of the primary happen
//! during the run. The receiver, in this process, must see every report,
//! in order, with no gap; no duplicate across a graceful switchover; and
//! across a kill -9 at most the one report in flight when the kill landed.

mod common;

use common::db::{dump, integrity, DbPair};
use common::{wait_for, which};
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const SENDER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/noresend_sender.py");
const SETTLE: Duration = Duration::from_secs(30);
/// Reports in the outbox.
const REPORTS: u64 = 500;
/// Reports received between two role changes, at least.
const PER_PHASE: usize = 60;
/// The sender's barrier timeout: after a kill -9 the new primary's sender
/// waits in its first barrier until the killed node is back as standby.
const BARRIER_MS: u64 = 60_000;
/// Sender exit codes (see the script).
const EXIT_BARRIER: i32 = 3;
const EXIT_FENCED: i32 = 4;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Change {
    Switchover,
    Kill,
    /// The sender stopped on its own while no change was made (its node
    /// was fenced for a moment) and was started again on the same primary.
    Restart,
    /// As `Restart`, but the other node had become primary meanwhile: a
    /// failover nobody asked for (this machine stalled for longer than
    /// `dead_after_ms`). Like a kill -9, it may cause one duplicate.
    Failover,
}

/// Every report the receiver got, in order: (sender number, report id).
#[derive(Clone, Default)]
struct Received {
    reports: Arc<Mutex<Vec<(u64, u64)>>>,
    errors: Arc<Mutex<Vec<String>>>,
}

impl Received {
    fn len(&self) -> usize {
        self.reports.lock().unwrap().len()
    }

    fn snapshot(&self) -> Vec<(u64, u64)> {
        self.reports.lock().unwrap().clone()
    }
}

/// The upstream receiver: a listener on 127.0.0.1 in a thread, one thread
/// per sender connection. A sender first says `sender K`, then sends
/// `report ID BODY` lines, each recorded before it is acknowledged with
/// `ok ID`. Its threads end with the test process.
fn start_receiver() -> (u16, Received) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let got = Received::default();
    let shared = got.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let got = shared.clone();
            std::thread::spawn(move || serve_sender(stream, &got));
        }
    });
    (port, got)
}

fn serve_sender(stream: TcpStream, got: &Received) {
    let mut out = match stream.try_clone() {
        Ok(s) => s,
        Err(e) => return got.errors.lock().unwrap().push(format!("clone: {e}")),
    };
    let mut sender = None;
    for line in BufReader::new(stream).lines() {
        let Ok(line) = line else { return };
        let words: Vec<&str> = line.splitn(3, ' ').collect();
        match (words.as_slice(), sender) {
            (["sender", k], None) => sender = k.parse::<u64>().ok(),
            (["report", id, _body], Some(k)) => {
                let Ok(id) = id.parse::<u64>() else {
                    return got.errors.lock().unwrap().push(format!("bad id: {line}"));
                };
                got.reports.lock().unwrap().push((k, id));
                // A sender killed meanwhile cannot read the answer; that is
                // not the receiver's error.
                let _ = writeln!(out, "ok {id}");
            }
            _ => return got.errors.lock().unwrap().push(format!("bad line: {line}")),
        }
    }
}

/// One sender process, killed by its PID when dropped.
struct Sender {
    no: u64,
    child: Option<Child>,
    out: PathBuf,
}

impl Sender {
    fn start(p: &DbPair, node: usize, no: u64, receiver_port: u16) -> Sender {
        which("python3");
        let out = p.pair.dir.path().join(format!("sender-{no}.out"));
        let file = std::fs::File::create(&out).unwrap();
        let child = Command::new("python3")
            .arg(SENDER)
            .arg(p.db(node))
            .arg(p.pair.control[node].to_string())
            .arg(receiver_port.to_string())
            .arg(no.to_string())
            .arg(BARRIER_MS.to_string())
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .expect("python3 is required by this test (apt-get install python3)");
        Sender {
            no,
            child: Some(child),
            out,
        }
    }

    fn output(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }

    /// Reports it found in 'sending' when it started and sent again.
    fn resends(&self) -> Vec<u64> {
        self.output()
            .lines()
            .filter_map(|l| l.strip_prefix("resend ")?.parse().ok())
            .collect()
    }

    fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.as_mut()?.try_wait().unwrap()
    }

    /// Wait for it to stop on its own.
    fn wait_exit(&mut self, within: Duration, what: &str) -> i32 {
        let status = wait_for(within, what, || self.try_wait());
        self.child = None;
        status.code().unwrap_or(-1)
    }

    /// kill -9, and reap it.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        self.kill();
    }
}

const FILL: &str = r#"
import sqlite3, sys
c = sqlite3.connect(sys.argv[1], timeout=30, isolation_level=None)
c.execute("CREATE TABLE outbox(id INTEGER PRIMARY KEY, body TEXT, state TEXT NOT NULL)")
c.execute("BEGIN IMMEDIATE")
for i in range(1, int(sys.argv[2]) + 1):
    c.execute("INSERT INTO outbox VALUES (?, ?, 'pending')", (i, "level-%06d" % i))
c.execute("COMMIT")
"#;

fn fill_outbox(db: &Path, count: u64) {
    let out = Command::new(which("python3"))
        .arg("-c")
        .arg(FILL)
        .arg(db)
        .arg(count.to_string())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "filling the outbox failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The outbox's states on one copy, counted.
fn states(db: &Path) -> String {
    let out = Command::new(which("python3"))
        .arg("-c")
        .arg(
            "import sqlite3,sys; c=sqlite3.connect('file:%s?mode=ro' % sys.argv[1], uri=True, timeout=30); \
             print(' '.join('%s=%d' % r for r in c.execute('SELECT state, count(*) FROM outbox GROUP BY state ORDER BY state')))",
        )
        .arg(db)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// Wait until the receiver has `count` reports. `Err` with the exit code
/// if the running sender stops on its own first: its node stopped being
/// primary under it, for example fenced for a moment by a lapsed lease on
/// this busy machine. A crash fails the test.
fn wait_received(got: &Received, count: usize, sender: &mut Sender) -> Result<(), i32> {
    let deadline = Instant::now() + Duration::from_secs(120);
    while got.len() < count {
        if let Some(status) = sender.try_wait() {
            sender.child = None;
            let code = status.code().unwrap_or(-1);
            assert!(
                code == EXIT_BARRIER || code == EXIT_FENCED,
                "sender {} failed ({status}):\n{}",
                sender.no,
                sender.output()
            );
            return Err(code);
        }
        assert!(
            Instant::now() < deadline,
            "the receiver has {} of {count} reports after 120 s; sender {}:\n{}",
            got.len(),
            sender.no,
            sender.output()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

/// The node that is primary once the pair has settled, with the other
/// streaming as its standby.
fn settled_primary(p: &DbPair) -> usize {
    let primary = wait_for(SETTLE, "a primary", || {
        (0..2).find(|&i| p.pair.role(i).as_deref() == Some("primary"))
    });
    p.pair.wait_roles(primary, SETTLE);
    p.wait_streaming(primary, SETTLE);
    primary
}

/// How long after the receiver got a report the n-th change's kill -9
/// lands: 0 to 15 ms, from the seed.
fn kill_delay(seed: u64, n: usize) -> Duration {
    let x = seed
        .wrapping_add(n as u64)
        .wrapping_mul(6_364_136_223_846_793_005)
        .wrapping_add(1_442_695_040_888_963_407);
    Duration::from_micros((x >> 33) % 15_000)
}

/// Copies node i has quarantined so far.
fn quarantined(p: &DbPair, i: usize) -> usize {
    let dir = p.pair.dir.path().join(p.pair.names[i]).join("quarantine");
    std::fs::read_dir(dir).map_or(0, |d| d.count())
}

/// A graceful switchover from node `from`. A refusal at the pre-checks
/// (exit 2: nothing changed, for example a heartbeat link seen down for a
/// moment on this busy machine) is tried again, a few times.
fn switchover(p: &DbPair, from: usize, n: usize) {
    for attempt in 1..=5 {
        p.pair.wait_roles(from, SETTLE);
        let out = p.pair.cli(from, &["switchover", "--yes"]);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        match out.status.code() {
            Some(0) => return,
            Some(2) if attempt < 5 => eprintln!("switchover {n}, attempt {attempt}: {text}"),
            _ => panic!(
                "switchover {n} from {} ({}): {text}",
                p.pair.names[from], out.status
            ),
        }
    }
}

/// The one sender running at a time, and the history of those before it.
struct Senders {
    port: u16,
    current: Sender,
    /// The node the current sender writes to.
    primary: usize,
    /// Why each sender after the first was started: the change before it.
    after: Vec<Change>,
    /// Reports each finished sender found in 'sending' and sent again.
    resends: Vec<Vec<u64>>,
}

/// Senders started again after stopping on their own, at most.
const RESTARTS_MAX: usize = 10;

impl Senders {
    fn next(&mut self, p: &DbPair, node: usize, why: Change) {
        self.resends.push(self.current.resends());
        self.after.push(why);
        let no = self.current.no + 1;
        self.current = Sender::start(p, node, no, self.port);
        self.primary = node;
    }

    fn restart(&mut self, p: &DbPair, code: i32) {
        let restarts = self
            .after
            .iter()
            .filter(|&&c| c == Change::Restart || c == Change::Failover)
            .count();
        assert!(
            restarts < RESTARTS_MAX,
            "{restarts} senders stopped on their own; the last:\n{}",
            self.current.output()
        );
        eprintln!(
            "sender {} stopped on its own ({code}); starting another on the primary:\n{}",
            self.current.no,
            self.current.output()
        );
        let primary = settled_primary(p);
        let why = if primary == self.primary {
            Change::Restart
        } else {
            Change::Failover
        };
        self.next(p, primary, why);
    }

    /// Wait until the receiver has `count` reports, starting a sender again
    /// on the primary whenever one stops on its own.
    fn wait_received(&mut self, p: &DbPair, got: &Received, count: usize) {
        while let Err(code) = wait_received(got, count, &mut self.current) {
            self.restart(p, code);
        }
    }

    /// Wait until a sender finds the outbox empty.
    fn wait_done(&mut self, p: &DbPair) {
        loop {
            let code = self
                .current
                .wait_exit(Duration::from_secs(120), "the sender to empty the outbox");
            match code {
                0 => break,
                EXIT_BARRIER | EXIT_FENCED => self.restart(p, code),
                _ => panic!(
                    "sender {} failed ({code}):\n{}",
                    self.current.no,
                    self.current.output()
                ),
            }
        }
        self.resends.push(self.current.resends());
    }
}

#[test]
fn no_report_is_lost_or_sent_twice_across_switchovers_and_kill_9() {
    which("python3");
    let started = Instant::now();
    let mut p = DbPair::with_failover("auto");
    p.start_streaming(SETTLE);
    fill_outbox(&p.db(0), REPORTS);
    p.barrier_txid(0);
    p.wait_same_position(SETTLE);

    let (port, got) = start_receiver();
    // Both nodes are killed once (b, then a), and switchovers go both ways.
    let plan = [
        Change::Switchover,
        Change::Kill,
        Change::Switchover,
        Change::Switchover,
        Change::Kill,
    ];
    let mut run = Senders {
        port,
        current: Sender::start(&p, 0, 0, port),
        primary: 0,
        after: Vec::new(),
        resends: Vec::new(),
    };
    let mut rejoins_quarantined = 0;
    let seed = std::env::var("NORESEND_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.subsec_nanos() as u64)
        });
    eprintln!("no-resend: NORESEND_SEED={seed}");
    for (n, &change) in plan.iter().enumerate() {
        let target = got.len() + PER_PHASE;
        run.wait_received(&p, &got, target);
        let (old, next) = (run.primary, 1 - run.primary);
        match change {
            Change::Switchover => {
                switchover(&p, old, n);
                // The old sender finds its node demoted and stops on its own.
                let code = run.current.wait_exit(
                    Duration::from_secs(20),
                    "the old primary's sender to stop after the switchover",
                );
                assert!(
                    code == EXIT_BARRIER || code == EXIT_FENCED,
                    "sender {} ended with {code} after switchover {n}:\n{}",
                    run.current.no,
                    run.current.output()
                );
                p.pair.wait_roles(next, SETTLE);
                p.wait_streaming(next, SETTLE);
                run.next(&p, next, change);
            }
            Change::Kill => {
                // Fault timing, not synchronisation: the kill lands at a
                // different point of the sender's cycle each time (marking,
                // barrier, sending, marking sent), up to 15 ms after the
                // receiver got a report.
                std::thread::sleep(kill_delay(seed, n));
                // The primary's machine dies: its sender and tandem at once.
                run.current.kill();
                p.pair.kill(old);
                wait_for(SETTLE, "the standby to fail over", || {
                    (p.pair.role(next)? == "primary").then_some(())
                });
                // The new primary's sender waits in its first barrier until
                // the killed node is back as the standby.
                run.next(&p, next, change);
                // The killed node rejoins as the new standby: caught up by a
                // page-hash resync, or, when it had committed what the new
                // primary never received, its copy quarantined and seeded anew.
                let before = quarantined(&p, old);
                p.pair.start(old);
                p.pair.wait_roles(next, SETTLE);
                p.wait_streaming(next, SETTLE);
                rejoins_quarantined += quarantined(&p, old) - before;
            }
            Change::Restart | Change::Failover => unreachable!("not planned"),
        }
    }
    run.wait_done(&p);

    // Every report arrived, in order. A report arrived twice only as the
    // last one a sender delivered and the first its successor delivered;
    // which change came between says what kind of duplicate it is.
    let Senders { after, resends, .. } = run;
    let received = got.snapshot();
    assert!(
        got.errors.lock().unwrap().is_empty(),
        "{:?}",
        got.errors.lock().unwrap()
    );
    let mut dups_after_switchover = Vec::new();
    let mut dups_after_restart = Vec::new();
    // (index of the kill in `after`, report) per duplicate after a kill -9
    // (or an unplanned failover).
    let mut dups_after_kill: Vec<(usize, u64)> = Vec::new();
    let mut gaps = Vec::new();
    let mut expected = 1u64;
    let mut prev: Option<(u64, u64)> = None;
    for &(k, id) in &received {
        if id == expected {
            expected += 1;
        } else if let Some((pk, _)) = prev.filter(|&(pk, pid)| id == pid && k > pk) {
            // Senders pk+1..=k were started after the changes after[pk..k].
            let between = &after[pk as usize..k as usize];
            let failover = |c: &Change| *c == Change::Kill || *c == Change::Failover;
            match between.iter().rposition(failover) {
                Some(at) => dups_after_kill.push((pk as usize + at, id)),
                None if between.contains(&Change::Switchover) => dups_after_switchover.push(id),
                None => dups_after_restart.push(id),
            }
        } else if id > expected {
            gaps.extend(expected..id);
            expected = id + 1;
        } else {
            panic!("report {id} from sender {k} out of order (after {prev:?}): {received:?}");
        }
        prev = Some((k, id));
    }
    gaps.extend(expected..=REPORTS);
    let count = |want: Change| after.iter().filter(|&&c| c == want).count();
    let resent_after = |want: Change| -> usize {
        (1..resends.len())
            .filter(|&k| after[k - 1] == want)
            .map(|k| resends[k].len())
            .sum()
    };
    eprintln!(
        "no-resend: {REPORTS} reports, {} receipts by {} senders, {} gaps; \
         {} graceful switchovers: {} duplicates; \
         {} kill -9 failovers: {} duplicates (reports {:?}), {rejoins_quarantined} rejoins quarantined a diverged copy; \
         {} senders restarted after stopping on their own: {} duplicates; {} unplanned failovers; \
         'sending' reports found and sent again: {} after switchovers, {} after kills, {} after restarts; \
         {:.1} s",
        received.len(),
        resends.len(),
        gaps.len(),
        count(Change::Switchover),
        dups_after_switchover.len(),
        count(Change::Kill),
        dups_after_kill.len(),
        dups_after_kill.iter().map(|d| d.1).collect::<Vec<_>>(),
        count(Change::Restart),
        dups_after_restart.len(),
        count(Change::Failover),
        resent_after(Change::Switchover),
        resent_after(Change::Kill),
        resent_after(Change::Restart),
        started.elapsed().as_secs_f64(),
    );
    assert!(gaps.is_empty(), "reports never received: {gaps:?}");
    assert!(
        dups_after_switchover.is_empty(),
        "sent twice across a graceful switchover: {dups_after_switchover:?}"
    );
    assert!(
        dups_after_restart.is_empty(),
        "sent twice by a sender started again on the same primary: {dups_after_restart:?}"
    );
    let mut kills_with_dup: Vec<usize> = dups_after_kill.iter().map(|d| d.0).collect();
    kills_with_dup.dedup();
    assert_eq!(
        kills_with_dup.len(),
        dups_after_kill.len(),
        "more than one duplicate after one kill -9 or failover: {dups_after_kill:?}"
    );
    assert_eq!(
        received.len() as u64,
        REPORTS + dups_after_kill.len() as u64
    );

    // Both copies agree, every report is marked sent, and both are sound.
    p.wait_same_position(SETTLE);
    assert_eq!(states(&p.db(0)), format!("sent={REPORTS}"));
    assert_eq!(dump(&p.db(0)), dump(&p.db(1)));
    assert_eq!(integrity(&p.db(0)), "ok");
    assert_eq!(integrity(&p.db(1)), "ok");
    // NORESEND_LOGS=1: both nodes' logs and every sender's output.
    if std::env::var_os("NORESEND_LOGS").is_some() {
        for i in 0..2 {
            eprintln!(
                "----- log of node {} -----\n{}",
                p.pair.names[i],
                p.pair.log(i)
            );
        }
        for k in 0..resends.len() {
            let out = std::fs::read_to_string(p.pair.dir.path().join(format!("sender-{k}.out")));
            eprintln!("----- sender {k} -----\n{}", out.unwrap_or_default());
        }
    }
}
