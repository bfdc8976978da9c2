//! Whole-binary tests of the pair: two real `tandem run` processes on
//! loopback, real signals, real ptys.

mod common;

use common::*;
use nix::sys::signal::Signal;
use std::time::{Duration, Instant};

const SETTLE: Duration = Duration::from_secs(15);

#[test]
fn switchover_both_ways() {
    let mut pair = Pair::new(Options::default());
    pair.start(0);
    pair.start(1);
    let e1 = pair.wait_roles(0, SETTLE);

    // From the primary's CLI.
    let out = pair.cli(0, &["switchover", "--yes"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "switchover failed:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("pre-checks passed"), "{text}");
    assert!(text.contains("b promoted in epoch"), "{text}");
    let e2 = pair.wait_roles(1, SETTLE);
    assert_eq!(e2, e1 + 1, "a switchover is exactly one promotion");

    // Back again, asked on the standby: the request is relayed to the primary.
    let out = pair.cli(0, &["switchover", "--yes"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "switchover from the standby failed:\n{text}"
    );
    assert!(
        text.contains("asked the primary, b, to hand over"),
        "{text}"
    );
    assert!(text.contains("a promoted in epoch"), "{text}");
    let e3 = pair.wait_roles(0, SETTLE);
    assert_eq!(e3, e2 + 1);

    // Never two primaries: each epoch had exactly one node promoted in it.
    let mut promoted = std::collections::BTreeMap::new();
    for i in 0..2 {
        for ev in pair.events(i) {
            if ev["event"] == "role_change" && ev["to"] == "primary" {
                let prev = promoted.insert(ev["epoch"].as_u64().unwrap(), i);
                assert!(
                    prev.is_none() || prev == Some(i),
                    "two primaries in epoch {}",
                    ev["epoch"]
                );
            }
        }
    }
    assert_eq!(promoted.len(), 3, "{promoted:?}");
}

#[test]
fn switchover_is_refused_with_reasons_when_the_standby_is_gone() {
    let mut pair = Pair::new(Options::default());
    pair.start(0);
    pair.start(1);
    pair.wait_roles(0, SETTLE);
    pair.stop(1);
    // Graceful stop of the standby: the primary keeps serving (the standby
    // said it was leaving, so no lease is needed).
    wait_for(SETTLE, "peer unreachable", || {
        let s = pair.status(0)?;
        (s["peer"]["last_heard_ms_ago"].as_u64()? > 500).then_some(())
    });
    assert_eq!(pair.role(0).as_deref(), Some("primary"));
    let out = pair.cli(0, &["switchover", "--yes"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("peer b unreachable"), "{err}");
    assert!(err.contains("replication link to b is down"), "{err}");
    assert_eq!(
        pair.role(0).as_deref(),
        Some("primary"),
        "a refused switchover changes nothing"
    );
}

#[test]
fn kill_9_of_the_primary_fails_over_within_the_bound() {
    let mut pair = Pair::new(Options::default());
    pair.start(0);
    pair.start(1);
    let e1 = pair.wait_roles(0, SETTLE);
    let killed = Instant::now();
    pair.kill(0);
    wait_for(SETTLE, "b primary", || {
        (pair.role(1)? == "primary").then_some(())
    });
    let took = killed.elapsed();
    // dead_after is 800 ms; allow for a busy two-core machine.
    assert!(
        took >= Duration::from_millis(FAST.dead_after_ms - 100),
        "promoted too early: {took:?}"
    );
    assert!(
        took < Duration::from_millis(FAST.dead_after_ms + 1500),
        "promoted too late: {took:?}"
    );
    let s = pair.status(1).unwrap();
    assert_eq!(s["epoch"].as_u64(), Some(e1 + 1));

    // The old primary comes back: it rejoins as standby, no failback.
    pair.start(0);
    pair.wait_roles(1, SETTLE);
}

#[test]
fn manual_mode_never_fails_over() {
    let mut pair = Pair::new(Options {
        failover: "manual",
        ..Options::default()
    });
    pair.start(0);
    pair.start(1);
    pair.wait_roles(0, SETTLE);
    pair.kill(0);
    wait_for(SETTLE, "peer silent alarm on b", || {
        let s = pair.status(1)?;
        s["alarms"]
            .as_array()?
            .iter()
            .any(|a| a["kind"] == "peer_silent")
            .then_some(())
    });
    assert_eq!(pair.role(1).as_deref(), Some("standby"));
    // The operator decides: a forced promotion works and is logged.
    let out = pair.cli(1, &["promote", "--force"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(pair.role(1).as_deref(), Some("primary"));
    assert!(pair.log(1).contains("FORCED PROMOTION"));
}

#[test]
fn a_paused_primary_finds_itself_fenced_and_steps_down() {
    let mut pair = Pair::new(Options::default());
    pair.start(0);
    pair.start(1);
    let e1 = pair.wait_roles(0, SETTLE);
    pair.signal(0, Signal::SIGSTOP);
    let stopped = Instant::now();
    wait_for(SETTLE, "b promoted", || {
        (pair.role(1)? == "primary").then_some(())
    });
    // Stopped for longer than its lease, and b has taken over.
    assert!(stopped.elapsed() > Duration::from_millis(FAST.lease_ms));
    pair.signal(0, Signal::SIGCONT);
    // From the moment it resumes, a never answers that it is primary.
    let resumed = Instant::now();
    while resumed.elapsed() < Duration::from_secs(2) {
        if let Some(s) = pair.status(0) {
            assert_ne!(
                s["role"], "primary",
                "resumed node still claims primary: {s}"
            );
        }
    }
    pair.wait_roles(1, SETTLE);
    let events = pair.events(0);
    let fenced = events.iter().any(|e| {
        e["event"] == "role_change" && e["from"] == "primary" && e["epoch"].as_u64() == Some(e1)
    });
    assert!(
        fenced,
        "a never left the primary role of epoch {e1}: {events:?}"
    );
    assert!(
        events
            .iter()
            .all(|e| !(e["to"] == "primary" && e["epoch"].as_u64() > Some(e1))),
        "a became primary again: {events:?}"
    );
}

#[test]
fn a_wrong_key_never_pairs_and_says_why() {
    let mut pair = Pair::new(Options {
        wrong_key: true,
        ..Options::default()
    });
    pair.start(0);
    pair.start(1);
    // Both sides say why, whichever side started the handshake.
    wait_for(SETTLE, "a key-check error in both logs", || {
        (pair.log(0).contains("peer b failed the key check")
            && pair.log(1).contains("peer a failed the key check"))
        .then_some(())
    });
    wait_for(SETTLE, "the link error in status", || {
        let s = pair.status(0)?;
        let e = s["links"][0]["last_error"].as_str()?.to_string();
        e.contains("key check").then_some(())
    });
    for i in 0..2 {
        let s = pair.status(i).unwrap();
        assert_eq!(
            s["role"], "fenced",
            "node {i} must not act without its peer: {s}"
        );
        assert_eq!(s["links"][0]["up"], false);
    }
    // One clear line, not one per heartbeat.
    let lines = pair.log(0).matches("failed the key check").count();
    assert!(lines <= 3, "{lines} key-check lines in a's log");
}

#[test]
fn a_cold_node_alone_does_not_promote() {
    let mut pair = Pair::new(Options::default());
    pair.start(0);
    wait_for(SETTLE, "peer silent alarm", || {
        let s = pair.status(0)?;
        s["alarms"]
            .as_array()?
            .iter()
            .any(|a| a["kind"] == "peer_silent")
            .then_some(())
    });
    let s = pair.status(0).unwrap();
    assert_eq!(s["role"], "fenced", "{s}");
    assert!(pair.log(0).contains("waiting to see the peer"));
    // When the peer arrives, the pair forms.
    pair.start(1);
    pair.wait_roles(0, SETTLE);
}

#[test]
fn one_heartbeat_link_cut_raises_an_alarm_and_changes_no_role() {
    let dir = tempfile::tempdir().unwrap();
    let (socat, a, b) = null_modem(dir.path(), "cable");
    let mut pair = Pair::new(Options {
        serial: Some((a.clone(), b.clone())),
        ..Options::default()
    });
    pair.start(0);
    pair.start(1);
    let epoch = pair.wait_roles(0, SETTLE);
    // Both links up, the serial one carrying heartbeats too.
    wait_for(SETTLE, "serial link received frames", || {
        (pair.status(1)?["links"][1]["received"].as_u64()? > 3).then_some(())
    });

    // Pull the null-modem cable.
    let mut socat = socat;
    socat.kill().unwrap();
    socat.wait().unwrap();
    wait_for(SETTLE, "link-down alarm on both nodes", || {
        let alarmed = |i: usize| -> Option<bool> {
            let s = pair.status(i)?;
            Some(
                s["alarms"]
                    .as_array()?
                    .iter()
                    .any(|a| a["kind"] == "link_down")
                    && s["links"][1]["up"] == false,
            )
        };
        (alarmed(0)? && alarmed(1)?).then_some(())
    });
    // Hold it cut for several dead_after periods: no role change.
    let until = Instant::now() + Duration::from_millis(FAST.dead_after_ms * 3);
    while Instant::now() < until {
        assert_eq!(pair.role(0).as_deref(), Some("primary"));
        assert_eq!(pair.role(1).as_deref(), Some("standby"));
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(pair.status(0).unwrap()["epoch"].as_u64(), Some(epoch));
    assert!(pair.log(0).contains("ALARM: heartbeat link 1"));

    // Plug it back in: the link comes up and the alarm clears.
    let (socat, _, _) = null_modem(dir.path(), "cable");
    pair.adopt(socat);
    wait_for(SETTLE, "link back up, alarm cleared", || {
        let s = pair.status(0)?;
        let clear = !s["alarms"]
            .as_array()?
            .iter()
            .any(|a| a["kind"] == "link_down");
        (s["links"][1]["up"] == true && clear).then_some(())
    });
    assert_eq!(pair.status(1).unwrap()["epoch"].as_u64(), Some(epoch));
}

#[test]
fn hooks_run_with_role_and_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("hooks.out");
    let o = out.display();
    let mut pair = Pair::new(Options {
        extra: format!(
            r#"
[hooks]
on_promote = ["echo promote $TANDEM_NODE $TANDEM_ROLE $TANDEM_EPOCH >> {o}"]
on_demote = ["echo demote $TANDEM_NODE $TANDEM_ROLE $TANDEM_EPOCH >> {o}"]
timeout_ms = 5000
"#
        ),
        ..Options::default()
    });
    pair.start(0);
    pair.start(1);
    let e = pair.wait_roles(0, SETTLE);
    let out2 = pair.cli(0, &["switchover", "--yes"]);
    assert!(out2.status.success(), "{out2:?}");
    pair.wait_roles(1, SETTLE);
    let lines = wait_for(SETTLE, "three hook lines", || {
        let text = std::fs::read_to_string(&out).ok()?;
        let lines: Vec<String> = text.lines().map(str::to_string).collect();
        (lines.len() >= 3).then_some(lines)
    });
    assert_eq!(
        lines,
        vec![
            format!("promote a primary {e}"),
            format!("demote a demoting {e}"),
            format!("promote b primary {}", e + 1),
        ]
    );
}

#[test]
fn config_errors_are_located_and_the_daemon_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[pair]\nname = \"x\"\nkey_flie = \"/k\"\n").unwrap();
    let out = std::process::Command::new(BIN)
        .args(["config", "check"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("{}:3:1:", bad.display())), "{err}");
    assert!(err.contains("key_file"), "a suggestion is expected: {err}");
    let out = std::process::Command::new(BIN)
        .args(["run", "--config"])
        .arg(&bad)
        .args(["--node", "a"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains(":3:1:"));
}

#[test]
fn the_peer_is_dead_only_when_every_link_is_silent() {
    let dir = tempfile::tempdir().unwrap();
    let (socat, a, b) = null_modem(dir.path(), "cable");
    let mut pair = Pair::new(Options {
        serial: Some((a, b)),
        ..Options::default()
    });
    pair.adopt(socat);
    pair.start(0);
    pair.start(1);
    let epoch = pair.wait_roles(0, SETTLE);

    // Cut the UDP link (the crossover cable): the serial cable still carries
    // the pair, so nobody fails over however long it lasts.
    pair.cut_udp();
    wait_for(SETTLE, "UDP link down on b", || {
        (pair.status(1)?["links"][0]["up"] == false).then_some(())
    });
    let until = Instant::now() + Duration::from_millis(FAST.dead_after_ms * 3);
    while Instant::now() < until {
        assert_eq!(pair.role(0).as_deref(), Some("primary"));
        assert_eq!(pair.role(1).as_deref(), Some("standby"));
        std::thread::sleep(Duration::from_millis(50));
    }
    let s = pair.status(0).unwrap();
    assert_eq!(s["epoch"].as_u64(), Some(epoch));
    assert!(
        s["lease_left_ms"].as_u64().unwrap() > 0,
        "the lease is renewed over serial: {s}"
    );
    pair.heal_udp();
    wait_for(SETTLE, "UDP link up again", || {
        (pair.status(1)?["links"][0]["up"] == true).then_some(())
    });
}

/// A TCP target that never answers: a listener with a full accept queue
/// drops new SYNs, so connecting to it times out. On loopback, no other host.
fn silent_target() -> (std::os::fd::OwnedFd, std::net::TcpStream, u16) {
    use nix::sys::socket::*;
    // CLOEXEC, or the nodes started later would inherit and keep it open.
    let fd = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .unwrap();
    bind(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &SockaddrIn::new(127, 0, 0, 1, 0),
    )
    .unwrap();
    listen(&fd, Backlog::new(0).unwrap()).unwrap();
    let addr: SockaddrIn = getsockname(std::os::fd::AsRawFd::as_raw_fd(&fd)).unwrap();
    // Fill the queue (backlog 0 holds one connection).
    let filler = std::net::TcpStream::connect(("127.0.0.1", addr.port())).unwrap();
    (fd, filler, addr.port())
}

#[test]
fn the_tiebreaker_blocks_a_failover_until_it_is_reachable() {
    let (blackhole, filler, port) = silent_target();
    let mut pair = Pair::new(Options {
        extra: format!("[tiebreaker]\nreach = [\"127.0.0.1:{port}\"]\ntimeout_ms = 300\n"),
        ..Options::default()
    });
    pair.start(0);
    pair.start(1);
    let epoch = pair.wait_roles(0, SETTLE);
    pair.kill(0);
    wait_for(SETTLE, "tie-breaker alarm on b", || {
        let s = pair.status(1)?;
        s["alarms"]
            .as_array()?
            .iter()
            .any(|a| a["kind"] == "tiebreaker_refused")
            .then_some(())
    });
    assert_eq!(pair.role(1).as_deref(), Some("standby"));
    assert!(
        pair.log(1).contains("tie-breaker refused the failover"),
        "{}",
        pair.log(1)
    );

    // The target answers again (a closed port answers with a refusal): b
    // asks again after dead_after and promotes.
    drop(filler);
    drop(blackhole);
    wait_for(SETTLE, "b promoted", || {
        (pair.role(1)? == "primary").then_some(())
    });
    let s = pair.status(1).unwrap();
    assert_eq!(s["epoch"].as_u64(), Some(epoch + 1));
    let alarms = s["alarms"].as_array().unwrap();
    assert!(
        alarms.iter().all(|a| a["kind"] != "tiebreaker_refused"),
        "{alarms:?}"
    );
    // Raised once, however many retries it refused.
    assert_eq!(pair.log(1).matches("ALARM: tie-breaker").count(), 1);
}

#[test]
fn json_logs_are_one_object_a_line() {
    let pair = Pair::new(Options::default());
    let log = pair.dir.path().join("json.log");
    let mut child = std::process::Command::new(BIN)
        .args(["--log-format", "json", "run", "--config"])
        .arg(&pair.config)
        .args(["--node", "a"])
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let lines = wait_for(SETTLE, "two log lines", || {
        let text = std::fs::read_to_string(&log).ok()?;
        let lines: Vec<String> = text.lines().map(str::to_string).collect();
        (lines.len() >= 2).then_some(lines)
    });
    let _ = child.kill();
    let _ = child.wait();
    for line in lines {
        let v: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(v["level"].is_string() && v["message"].is_string(), "{line}");
    }
}

#[test]
fn a_kill_right_after_a_switchover_still_fails_over() {
    let mut pair = Pair::new(Options::default());
    pair.start(0);
    pair.start(1);
    pair.wait_roles(0, SETTLE);
    let out = pair.cli(0, &["switchover", "--yes"]);
    assert!(out.status.success(), "{out:?}");
    // The new standby (a) must be armed, able to fail over, almost at once:
    // role changes are announced immediately, not at the next heartbeat.
    let t0 = Instant::now();
    wait_for(SETTLE, "a armed", || {
        let s = pair.status(0)?;
        (s["role"] == "standby" && s["armed"] == true).then_some(())
    });
    let armed_after = t0.elapsed();
    assert!(
        armed_after < Duration::from_millis(FAST.heartbeat_interval_ms * 2),
        "arming took {armed_after:?}"
    );
    pair.kill(1);
    wait_for(SETTLE, "a primary again", || {
        (pair.role(0)? == "primary").then_some(())
    });
}

/// An echo device on the far end of a pty pair (a radio that answers).
fn echo_device(path: std::path::PathBuf) {
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        let Ok(mut f) = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
        else {
            return;
        };
        let mut buf = [0u8; 256];
        while let Ok(n) = f.read(&mut buf) {
            if n == 0 || f.write_all(&buf[..n]).is_err() {
                return;
            }
        }
    });
}

#[test]
fn serial_ports_follow_the_primary_role() {
    use std::io::{Read, Write};
    let tmp = tempfile::tempdir().unwrap();
    let port = free_ports(1)[0];
    let mut devices = Vec::new();
    let mut node_extra = [String::new(), String::new()];
    for (i, name) in ["a", "b"].iter().enumerate() {
        let prefix = tmp.path().join(name);
        std::fs::create_dir_all(prefix.join("dev")).unwrap();
        let (socat, dev, far) = null_modem(&prefix.join("dev"), "radio");
        // null_modem names them radio-a / radio-b: the node's device is radio-a.
        echo_device(far);
        devices.push((socat, dev));
        node_extra[i] = format!("path_prefix = \"{}\"", prefix.display());
    }
    let mut pair = Pair::new(Options {
        node_extra,
        extra: format!(
            "[[serial]]\nname = \"radio\"\nmode = \"serve\"\ndevice = \"/dev/radio-a\"\nlisten = \"127.0.0.1:{port}\"\nprotocol = \"raw\"\n"
        ),
        ..Options::default()
    });
    for (socat, _) in devices {
        pair.adopt(socat);
    }
    pair.start(0);
    pair.start(1);
    pair.wait_roles(0, SETTLE);
    let connect = || {
        wait_for(SETTLE, "the serial port listening", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).ok()
        })
    };
    let mut client = connect();
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    client.write_all(b"ping").unwrap();
    let mut got = [0u8; 4];
    client.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"ping");
    let s = pair.status(0).unwrap();
    assert_eq!(s["serial"][0]["state"], "connected", "{s}");
    assert_eq!(pair.status(1).unwrap()["serial"][0]["state"], "inactive");

    // Switch over: a closes the port (the client sees the connection end)
    // within 500 ms of stepping down; b opens its own.
    let out = pair.cli(0, &["switchover", "--yes"]);
    assert!(out.status.success(), "{out:?}");
    let mut rest = Vec::new();
    let _ = client.read_to_end(&mut rest);
    let closed_unix_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    pair.wait_roles(1, SETTLE);
    let demoted_unix_ms = pair
        .events(0)
        .iter()
        .find(|e| e["from"] == "primary" && e["to"] == "demoting")
        .and_then(|e| e["at_unix_ms"].as_u64())
        .expect("a's demotion is in its event log");
    let took = closed_unix_ms.saturating_sub(demoted_unix_ms);
    assert!(took < 500, "the port closed {took} ms after a stepped down");
    let mut client = connect();
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    client.write_all(b"pong").unwrap();
    client.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"pong");
    assert_eq!(pair.status(0).unwrap()["serial"][0]["state"], "inactive");
}

#[test]
fn a_stray_connection_to_the_replication_port_disturbs_nothing() {
    use std::io::Write;
    let mut pair = Pair::new(Options::default());
    pair.start(0);
    pair.start(1);
    pair.wait_roles(0, SETTLE);
    // A port scanner or a misdirected client connects to b's replication
    // port (b accepts the link; a dials it), and another one sends garbage.
    let idle = std::net::TcpStream::connect(pair.replication[1]).unwrap();
    let mut noisy = std::net::TcpStream::connect(pair.replication[1]).unwrap();
    noisy.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    // The pair's own link stays up, and a switchover (which needs it) works.
    let out = pair.cli(0, &["switchover", "--yes"]);
    assert!(out.status.success(), "{out:?}");
    pair.wait_roles(1, SETTLE);
    let out = pair.cli(1, &["switchover", "--yes"]);
    assert!(out.status.success(), "{out:?}");
    pair.wait_roles(0, SETTLE);
    drop((idle, noisy));
}

#[test]
fn the_demo_agrees_on_roles_and_survives_switchovers() {
    let out = std::process::Command::new(BIN)
        .arg("demo")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("a is primary and b its standby"), "{text}");
    assert!(text.contains(": b is primary, a its standby"), "{text}");
    assert!(text.contains(": a is primary, b its standby"), "{text}");
    assert!(text.ends_with("both nodes stopped\n"), "{text}");
}
