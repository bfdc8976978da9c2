//! `GET /metrics`: the node's status in the Prometheus text format
//! (version 0.0.4), for the monitoring the centre already runs.
//!
//! Everything comes from [`Status`], the same snapshot `tandem status`
//! shows, so the two never disagree. Times are in seconds, sizes in bytes,
//! counters end in `_total`; a figure a node does not know (a standby's lag
//! in bytes, say) is left out rather than written as 0.

use crate::Status;
use serde_json::Value;
use std::fmt::Write;

/// One metric family: its samples, each with its labels.
struct Family {
    name: &'static str,
    help: &'static str,
    kind: &'static str,
    samples: Vec<(String, f64)>,
}

#[derive(Default)]
struct Metrics(Vec<Family>);

impl Metrics {
    fn add(
        &mut self,
        name: &'static str,
        kind: &'static str,
        help: &'static str,
        labels: &[(&str, &str)],
        value: f64,
    ) {
        let i = match self.0.iter().position(|f| f.name == name) {
            Some(i) => i,
            None => {
                self.0.push(Family {
                    name,
                    help,
                    kind,
                    samples: Vec::new(),
                });
                self.0.len() - 1
            }
        };
        let labels: Vec<String> = labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
            .collect();
        let labels = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{}}}", labels.join(","))
        };
        self.0[i].samples.push((labels, value));
    }

    fn gauge(&mut self, name: &'static str, help: &'static str, labels: &[(&str, &str)], v: f64) {
        self.add(name, "gauge", help, labels, v);
    }

    fn counter(&mut self, name: &'static str, help: &'static str, labels: &[(&str, &str)], v: f64) {
        self.add(name, "counter", help, labels, v);
    }

    fn render(&self) -> String {
        let mut out = String::new();
        for f in &self.0 {
            let _ = writeln!(out, "# HELP {} {}", f.name, f.help);
            let _ = writeln!(out, "# TYPE {} {}", f.name, f.kind);
            for (labels, v) in &f.samples {
                let _ = writeln!(out, "{}{labels} {v}", f.name);
            }
        }
        out
    }
}

/// A label value as the text format wants it: backslash, double quote and
/// newline escaped.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn flag(b: bool) -> f64 {
    if b {
        1.0
    } else {
        0.0
    }
}

/// A number in a status object, if it is there.
fn num(v: &Value, key: &str) -> Option<f64> {
    v[key].as_f64()
}

/// The node's status as Prometheus metrics.
pub fn render_metrics(s: &Status) -> String {
    let mut m = Metrics::default();
    let node = [("pair", s.pair.as_str()), ("node", s.node.as_str())];
    m.gauge(
        "tandem_role",
        "The node's role (1 for the role it has).",
        &[node[0], node[1], ("role", s.role.as_str())],
        1.0,
    );
    m.gauge("tandem_epoch", "The node's epoch.", &node, s.epoch as f64);
    m.gauge(
        "tandem_peer_joined",
        "Primary: its standby has joined. Standby: it may fail over.",
        &node,
        flag(s.peer_joined),
    );
    m.gauge(
        "tandem_failover_armed",
        "Automatic failover is armed.",
        &node,
        flag(s.armed),
    );
    m.gauge(
        "tandem_on_hold",
        "Waiting for an operator after two claims on one epoch.",
        &node,
        flag(s.on_hold),
    );
    m.gauge(
        "tandem_replication_connected",
        "The replication link to the peer is up.",
        &node,
        flag(s.replication_connected),
    );
    if let Some(ms) = s.lease_left_ms {
        m.gauge(
            "tandem_lease_left_seconds",
            "Lease left while primary.",
            &node,
            ms as f64 / 1e3,
        );
    }
    if let Some(ms) = s.peer.last_heard_ms_ago {
        m.gauge(
            "tandem_peer_last_heard_seconds",
            "Since the peer was last heard on any link.",
            &node,
            ms as f64 / 1e3,
        );
    }
    m.gauge(
        "tandem_alarms",
        "Alarms active now.",
        &node,
        s.alarms.len() as f64,
    );
    m.gauge(
        "tandem_uptime_seconds",
        "Since the daemon started.",
        &node,
        s.uptime_ms as f64 / 1e3,
    );
    for l in &s.links {
        let index = l.index.to_string();
        let labels = [
            node[1],
            ("link", l.name.as_str()),
            ("index", index.as_str()),
        ];
        m.gauge(
            "tandem_link_up",
            "The heartbeat link is up.",
            &labels,
            flag(l.up),
        );
        if let Some(rtt) = l.rtt_ms {
            m.gauge(
                "tandem_link_rtt_seconds",
                "Heartbeat round trip on the link.",
                &labels,
                rtt as f64 / 1e3,
            );
        }
        m.counter(
            "tandem_link_heartbeats_received_total",
            "Heartbeats received on the link.",
            &labels,
            l.received as f64,
        );
        m.counter(
            "tandem_link_heartbeats_lost_total",
            "Heartbeats lost on the link.",
            &labels,
            l.lost as f64,
        );
    }
    for d in &s.databases {
        let name = d["name"].as_str().unwrap_or("?");
        let labels = [node[1], ("database", name)];
        m.gauge(
            "tandem_database_mode",
            "The database's mode (1 for the mode it is in).",
            &[
                node[1],
                ("database", name),
                ("mode", d["mode"].as_str().unwrap_or("?")),
            ],
            1.0,
        );
        for side in ["local", "peer"] {
            if let Some(t) = d[side]["txid"].as_f64() {
                m.gauge(
                    "tandem_database_txid",
                    "The last transaction here (side=local) and on the peer as last known.",
                    &[node[1], ("database", name), ("side", side)],
                    t,
                );
            }
        }
        let gauges: [(&'static str, &'static str, &str, f64); 7] = [
            (
                "tandem_database_lag_transactions",
                "Transactions the standby lacks.",
                "lag_transactions",
                1.0,
            ),
            (
                "tandem_database_lag_bytes",
                "Bytes of the transactions the standby lacks.",
                "lag_bytes",
                1.0,
            ),
            (
                "tandem_database_lag_seconds",
                "Age of the oldest transaction the standby lacks.",
                "lag_ms",
                1e-3,
            ),
            (
                "tandem_database_wal_bytes",
                "Size of the -wal file.",
                "wal_bytes",
                1.0,
            ),
            (
                "tandem_database_wal_bytes_max",
                "The WAL's cap (wal_bytes_max).",
                "wal_bytes_max",
                1.0,
            ),
            (
                "tandem_database_spool_bytes",
                "Bytes held for the standby.",
                "spool_bytes",
                1.0,
            ),
            (
                "tandem_database_spool_bytes_max",
                "What may be held for the standby before it is let go.",
                "spool_bytes_max",
                1.0,
            ),
        ];
        for (metric, help, key, scale) in gauges {
            if let Some(v) = num(d, key) {
                m.gauge(metric, help, &labels, v * scale);
            }
        }
        if let Some(t) = d["last_checkpoint"]["at_unix_ms"].as_f64() {
            m.gauge(
                "tandem_database_last_checkpoint_timestamp_seconds",
                "When the last checkpoint ran (Unix time).",
                &labels,
                t / 1e3,
            );
        }
        if let Some(f) = d["fenced"].as_bool() {
            m.gauge(
                "tandem_database_fenced",
                "Local writers are locked out.",
                &labels,
                flag(f),
            );
        }
    }
    for f in &s.filesets {
        let name = f["name"].as_str().unwrap_or("?");
        let labels = [node[1], ("fileset", name)];
        m.gauge(
            "tandem_fileset_mode",
            "The file set's mode (1 for the mode it is in).",
            &[
                node[1],
                ("fileset", name),
                ("mode", f["mode"].as_str().unwrap_or("?")),
            ],
            1.0,
        );
        let gauges: [(&'static str, &'static str, &str, f64); 5] = [
            (
                "tandem_fileset_entries",
                "Files, directories and symlinks in the set.",
                "entries",
                1.0,
            ),
            (
                "tandem_fileset_pending_changes",
                "Changes the standby has yet to apply.",
                "pending_changes",
                1.0,
            ),
            (
                "tandem_fileset_bytes_queued",
                "Bytes of new content the standby has yet to receive.",
                "bytes_queued",
                1.0,
            ),
            (
                "tandem_fileset_lag_seconds",
                "Since the first change the standby lacks (0 in sync).",
                "lag_ms",
                1e-3,
            ),
            (
                "tandem_fileset_last_sync_timestamp_seconds",
                "When the copies were last identical (Unix time).",
                "last_sync_unix_ms",
                1e-3,
            ),
        ];
        for (metric, help, key, scale) in gauges {
            if let Some(v) = num(f, key) {
                m.gauge(metric, help, &labels, v * scale);
            }
        }
        if let Some(n) = num(f, "quarantined") {
            m.counter(
                "tandem_fileset_quarantined_total",
                "Paths moved to quarantine on this standby.",
                &labels,
                n,
            );
        }
    }
    m.render()
}
