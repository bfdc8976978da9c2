//! The human form of [`Status`], as `tandem status` prints it: the answer to
//! "who is primary, is the peer there, is anything wrong" in the first lines.

use crate::Status;
use std::fmt::Write;

fn ago(ms: Option<u64>) -> String {
    match ms {
        None => "never".into(),
        Some(ms) if ms < 10_000 => format!("{ms} ms ago"),
        Some(ms) => format!("{} s ago", ms / 1000),
    }
}

fn unix_time(ms: u64) -> String {
    let secs = ms / 1000;
    let (h, m, s) = ((secs / 3600) % 24, (secs / 60) % 60, secs % 60);
    format!("{h:02}:{m:02}:{s:02}.{:03} UTC", ms % 1000)
}

pub fn render_status(s: &Status) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "pair {}: node {} is {} in epoch {}",
        s.pair,
        s.node,
        s.role.to_uppercase(),
        s.epoch
    );
    let holder = s.holder.as_deref().unwrap_or("nobody yet");
    let _ = writeln!(out, "  epoch holder: {holder}; failover: {}", s.failover);
    match (s.role.as_str(), s.lease_left_ms) {
        ("primary", Some(ms)) => {
            let _ = writeln!(
                out,
                "  lease: {ms} ms left (renewed by the standby's acknowledgements)"
            );
        }
        ("primary", None) if !s.peer_joined => {
            let _ = writeln!(out, "  lease: not needed: no standby has joined this epoch");
        }
        ("primary", None) => {
            let _ = writeln!(out, "  lease: not needed in manual failover mode");
        }
        ("standby", _) => {
            let armed = if s.armed {
                "armed: will fail over if the primary goes silent"
            } else {
                "not armed: will not fail over on its own"
            };
            let _ = writeln!(out, "  {armed}");
        }
        _ => {}
    }
    if s.on_hold {
        let _ = writeln!(out, "  ON HOLD: both nodes claimed one epoch; an operator must run `tandem promote --force`");
    }
    let peer_role = s.peer.role.as_deref().unwrap_or("unknown");
    let peer_epoch = s.peer.epoch.map_or("?".into(), |e| e.to_string());
    let _ = writeln!(
        out,
        "peer {}: {} in epoch {}, last heard {}; replication link {}",
        s.peer.name,
        peer_role,
        peer_epoch,
        ago(s.peer.last_heard_ms_ago),
        if s.replication_connected {
            "connected"
        } else {
            "DOWN"
        }
    );
    let _ = writeln!(out, "heartbeat links:");
    for l in &s.links {
        let rtt = l.rtt_ms.map_or("-".into(), |r| format!("{r} ms"));
        let _ = writeln!(
            out,
            "  [{}] {:<32} {:<4} rtt {:<7} last {:<12} received {} lost {}",
            l.index,
            l.name,
            if l.up { "up" } else { "DOWN" },
            rtt,
            ago(l.last_seen_ms_ago),
            l.received,
            l.lost
        );
        if let Some(e) = &l.last_error {
            let _ = writeln!(out, "      last refusal: {e}");
        }
    }
    if s.alarms.is_empty() {
        let _ = writeln!(out, "alarms: none");
    } else {
        let _ = writeln!(out, "alarms:");
        for a in &s.alarms {
            let _ = writeln!(
                out,
                "  {} since {}: {}",
                a.kind,
                unix_time(a.since_unix_ms),
                a.message
            );
        }
    }
    if !s.serial.is_empty() {
        let _ = writeln!(out, "serial ports:");
        for p in &s.serial {
            let text = |k: &str| p[k].as_str().unwrap_or("-").to_string();
            let client = p["client"]
                .as_str()
                .map_or("no client".into(), |c| format!("client {c}"));
            let count = |k: &str| p[k].as_u64().unwrap_or(0);
            let _ = writeln!(
                out,
                "  {:<12} {:<10} {:<22} to device {} B, from device {} B{}",
                text("name"),
                text("state"),
                client,
                count("bytes_to_device"),
                count("bytes_from_device"),
                p["last_error"]
                    .as_str()
                    .map_or(String::new(), |e| format!("; last error: {e}"))
            );
            // Where the bytes go: the local device (serve mode) or the
            // device server in use (connect mode), and how often that broke.
            let reached = match p["mode"].as_str() {
                Some("connect") => p["device_server"]
                    .as_str()
                    .map_or("no device server".into(), |d| format!("device server {d}")),
                _ => format!(
                    "device {} {}",
                    text("device"),
                    if p["device_open"].as_bool() == Some(true) {
                        "open"
                    } else {
                        "closed"
                    }
                ),
            };
            let listen = p["listen"]
                .as_str()
                .map_or(String::new(), |l| format!("listen {l}, "));
            let pty = p["pty"]
                .as_str()
                .map_or(String::new(), |t| format!("pty {t}, "));
            let _ = writeln!(
                out,
                "      {listen}{pty}{reached}; reconnects {}, failovers {}, dropped {} B",
                count("reconnects"),
                count("failovers"),
                count("bytes_dropped"),
            );
        }
    }
    if !s.databases.is_empty() {
        let _ = writeln!(out, "databases:");
        for d in &s.databases {
            let text = |k: &str| d[k].as_str().unwrap_or("-").to_string();
            let pos = |k: &str| match d[k]["txid"].as_u64() {
                Some(t) => {
                    let sum = d[k]["sum"].as_str().unwrap_or("");
                    format!("txid {t} ({})", sum.get(..12).unwrap_or(sum))
                }
                None => "-".into(),
            };
            let _ = writeln!(
                out,
                "  {:<12} {:<8} {:<20} here {}, peer {}",
                text("name"),
                text("side"),
                text("mode").to_uppercase(),
                pos("local"),
                pos("peer"),
            );
            // A standby knows how many transactions it lacks, not their
            // bytes or age: those are the primary's.
            let mut lag = format!("{} tx", d["lag_transactions"].as_u64().unwrap_or(0));
            if let Some(b) = d["lag_bytes"].as_u64() {
                let _ = write!(lag, ", {b} B");
            }
            if let Some(ms) = d["lag_ms"].as_u64() {
                let _ = write!(lag, ", {ms} ms");
            }
            let spool = d["spool_bytes"].as_u64().map_or(String::new(), |b| {
                let max = d["spool_bytes_max"].as_u64().unwrap_or(0);
                format!("; spool {b} of {max} B")
            });
            let _ = writeln!(
                out,
                "      lag {lag}; WAL {} B{spool}{}",
                d["wal_bytes"].as_u64().unwrap_or(0),
                d["last_checkpoint"]["at_unix_ms"]
                    .as_u64()
                    .map_or(String::new(), |t| format!(
                        "; last checkpoint {}",
                        unix_time(t)
                    ))
            );
            if let Some(total) = d["seed"]["pages_total"].as_u64() {
                let done = d["seed"]["pages_acknowledged"]
                    .as_u64()
                    .or(d["seed"]["pages_written"].as_u64())
                    .unwrap_or(0);
                let _ = writeln!(out, "      seeding: {done} of {total} pages");
            }
            if let Some(e) = d["error"].as_str() {
                let _ = writeln!(out, "      {e}");
            }
        }
    }
    if !s.filesets.is_empty() {
        let _ = writeln!(out, "file sets:");
        for f in &s.filesets {
            let text = |k: &str| f[k].as_str().unwrap_or("-").to_string();
            let hash = |k: &str| {
                f[k].as_str()
                    .map_or("-".to_string(), |h| h.get(..12).unwrap_or(h).to_string())
            };
            let _ = writeln!(
                out,
                "  {:<12} {:<8} {:<20} {} entries, root here {}, peer {}",
                text("name"),
                text("side"),
                text("mode").to_uppercase(),
                f["entries"].as_u64().unwrap_or(0),
                hash("root_hash"),
                hash("peer_root_hash"),
            );
            // What is owed is counted on the primary.
            let pending = f["pending_changes"].as_u64().map_or(String::new(), |n| {
                let queued = f["bytes_queued"].as_u64().unwrap_or(0);
                format!("pending {n} changes, {queued} B queued, ")
            });
            let _ = writeln!(
                out,
                "      {pending}lag {} ms{}",
                f["lag_ms"].as_u64().unwrap_or(0),
                f["last_sync_unix_ms"]
                    .as_u64()
                    .map_or(String::new(), |t| format!("; last sync {}", unix_time(t)))
            );
            if let Some(n) = f["quarantined"].as_u64().filter(|n| *n > 0) {
                let _ = writeln!(
                    out,
                    "      {n} path(s) moved to quarantine (<data_dir>/quarantine; each is in the log)"
                );
            }
            if let Some(w) = f["watch"].as_str().filter(|w| *w != "ok") {
                let _ = writeln!(out, "      watch: {w}");
            }
            if let Some(e) = f["error"].as_str() {
                let _ = writeln!(out, "      {e}");
            }
        }
    }
    if let Some(p) = &s.switchover {
        let state = match &p.outcome {
            None => "running".to_string(),
            Some(Ok(())) => "done".to_string(),
            Some(Err(e)) => format!("failed: {e}"),
        };
        let _ = writeln!(out, "switchover {}: {state}", p.op);
    }
    if !s.history.is_empty() {
        let _ = writeln!(out, "last role changes:");
        for c in s.history.iter().rev().take(8) {
            let _ = writeln!(
                out,
                "  {}  {} -> {} in epoch {}: {}",
                unix_time(c.at_unix_ms),
                c.from,
                c.to,
                c.epoch,
                c.reason
            );
        }
    }
    out
}
