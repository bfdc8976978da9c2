//! Checks across values, run once the file has parsed cleanly. Each finds
//! its location through the paths recorded by the parser.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;

use crate::parse::Cx;
use crate::*;

pub(crate) fn validate(cx: &mut Cx, c: &Config) {
    timing(cx, &c.timing);
    node_count_and_names(cx, c);
    heartbeat_shape(cx, c);
    addresses(cx, c);
    same_machine(cx, c);
    control_token(cx, c);
    let dbs = || c.databases.iter().enumerate();
    unique(
        cx,
        "database",
        "database name",
        dbs().map(|(i, d)| (i, d.name.as_str())),
        "name",
    );
    unique(
        cx,
        "database",
        "database path",
        dbs().map(|(i, d)| (i, path_str(&d.path))),
        "path",
    );
    let fss = || c.filesets.iter().enumerate();
    unique(
        cx,
        "fileset",
        "file set name",
        fss().map(|(i, f)| (i, f.name.as_str())),
        "name",
    );
    unique(
        cx,
        "fileset",
        "file set root",
        fss().map(|(i, f)| (i, path_str(&f.root))),
        "root",
    );
    // One tree inside another would be mirrored twice, by two engines
    // that do not know of each other.
    for (i, a) in c.filesets.iter().enumerate() {
        for (j, b) in c.filesets.iter().enumerate() {
            if i != j && a.root != b.root && a.root.starts_with(&b.root) {
                let at = cx.at(&[&format!("fileset[{i}].root"), &format!("fileset[{i}]")]);
                let line = line_of(cx, &format!("fileset[{j}].root"));
                cx.err(
                    at,
                    format!(
                        "file set root {:?} is inside the root of file set {:?} ({line})",
                        path_str(&a.root),
                        b.name
                    ),
                );
            }
        }
    }
    let sps = c.serial.iter().enumerate();
    unique(
        cx,
        "serial",
        "serial port name",
        sps.map(|(i, s)| (i, s.name.as_str())),
        "name",
    );
    serial_ports(cx, c);
}

fn path_str(p: &Path) -> &str {
    p.to_str().unwrap_or("")
}

/// "line N" of a byte offset, for messages that mention a second place.
fn line_of(cx: &Cx, path: &str) -> String {
    let at = cx.at(&[path]);
    let (line, _) = cx.line_col(at);
    format!("line {line}")
}

fn timing(cx: &mut Cx, t: &Timing) {
    let at = |cx: &Cx, keys: &[&str]| {
        let mut paths: Vec<String> = keys.iter().map(|k| format!("timing.{k}")).collect();
        paths.push("timing".into());
        cx.at(&paths.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let hb = t.heartbeat_interval_ms;
    if hb < 5 {
        let a = at(cx, &["heartbeat_interval_ms"]);
        cx.err(
            a,
            format!("\"heartbeat_interval_ms\" must be at least 5 (milliseconds), found {hb}"),
        );
    }
    if t.lease_ms <= hb.saturating_mul(2) {
        let a = at(cx, &["lease_ms", "heartbeat_interval_ms"]);
        cx.err(
            a,
            format!(
                "\"lease_ms\" ({}) must be more than twice \"heartbeat_interval_ms\" ({hb}), \
                 so that one lost heartbeat does not cost the primary its lease",
                t.lease_ms
            ),
        );
    }
    let need = t.lease_ms.saturating_add(t.lease_margin_ms);
    if t.dead_after_ms < need {
        let a = at(cx, &["dead_after_ms", "lease_ms", "lease_margin_ms"]);
        cx.err(
            a,
            format!(
                "\"dead_after_ms\" ({}) must be at least \"lease_ms\" + \"lease_margin_ms\" ({} + {} = {need}), \
                 so that the standby never promotes while the primary may still hold its lease",
                t.dead_after_ms, t.lease_ms, t.lease_margin_ms
            ),
        );
    }
    let need = hb.saturating_mul(3);
    if t.link_dead_after_ms < need {
        let a = at(cx, &["link_dead_after_ms", "heartbeat_interval_ms"]);
        cx.err(
            a,
            format!(
                "\"link_dead_after_ms\" ({}) must be at least 3 × \"heartbeat_interval_ms\" (3 × {hb} = {need}), \
                 so that a link is not declared down for one or two lost frames",
                t.link_dead_after_ms
            ),
        );
    }
    if t.switchover_timeout_ms == 0 {
        let a = at(cx, &["switchover_timeout_ms"]);
        cx.err(a, "\"switchover_timeout_ms\" must be greater than 0");
    }
}

fn node_count_and_names(cx: &mut Cx, c: &Config) {
    match c.nodes.len() {
        0 => {
            let at = cx.at(&["node"]);
            cx.err(at, "no [[node]] sections; a pair needs exactly two nodes");
        }
        1 => {
            let at = cx.at(&["node[0]"]);
            cx.err(at, "only one [[node]]; a pair needs exactly two nodes");
        }
        2 => {}
        _ => {
            let at = cx.at(&["node[2]"]);
            cx.err(at, "a third [[node]]; a pair has exactly two nodes");
        }
    }
    for i in 1..c.nodes.len() {
        if let Some(j) = (0..i).find(|&j| c.nodes[j].name == c.nodes[i].name) {
            let at = cx.at(&[&format!("node[{i}].name")]);
            let first = line_of(cx, &format!("node[{j}].name"));
            cx.err(
                at,
                format!(
                    "node name {:?} is already used at {first}; the two nodes need distinct names",
                    c.nodes[i].name
                ),
            );
        }
    }
}

fn heartbeat_shape(cx: &mut Cx, c: &Config) {
    for (i, n) in c.nodes.iter().enumerate() {
        for k in 1..n.heartbeat.len() {
            let HeartbeatLink::Serial { path, .. } = &n.heartbeat[k] else {
                continue;
            };
            if n.heartbeat[..k]
                .iter()
                .any(|l| matches!(l, HeartbeatLink::Serial { path: p, .. } if p == path))
            {
                let at = cx.at(&[&format!("node[{i}].heartbeat[{k}]")]);
                cx.err(
                    at,
                    format!(
                        "serial device {:?} is used by two heartbeat links of node {:?}",
                        path.display().to_string(),
                        n.name
                    ),
                );
            }
        }
    }
    let [a, b] = &c.nodes[..] else { return };
    if a.heartbeat.len() != b.heartbeat.len() {
        let at = cx.at(&["node[1].heartbeat", "node[1]"]);
        cx.err(
            at,
            format!(
                "node {:?} has {} heartbeat link(s) but node {:?} has {}; link i of one node pairs with \
                 link i of the other, so both lists need the same length and kinds",
                b.name,
                b.heartbeat.len(),
                a.name,
                a.heartbeat.len()
            ),
        );
        return;
    }
    for (k, (la, lb)) in a.heartbeat.iter().zip(&b.heartbeat).enumerate() {
        if la.kind() != lb.kind() {
            let at = cx.at(&[&format!("node[1].heartbeat[{k}]"), "node[1].heartbeat"]);
            cx.err(
                at,
                format!(
                    "heartbeat link {} of node {:?} is {} but link {} of node {:?} is {}; \
                     link i of one node pairs with link i of the other",
                    k + 1,
                    b.name,
                    lb.kind(),
                    k + 1,
                    a.name,
                    la.kind()
                ),
            );
        }
    }
}

/// True when both nodes must run on one machine: a node that the peer
/// reaches on a loopback address (replication or UDP heartbeat) can only
/// have its peer on the same machine.
pub(crate) fn co_located(c: &Config) -> bool {
    c.nodes.len() == 2
        && c.nodes.iter().any(|n| {
            n.replication.ip().is_loopback()
                || n.heartbeat
                    .iter()
                    .any(|l| matches!(l, HeartbeatLink::Udp(a) if a.ip().is_loopback()))
        })
}

struct Bound {
    addr: SocketAddr,
    /// `None` for a pair-wide address (a serial listener), bound on whichever node is primary.
    node: Option<usize>,
    what: String,
    path: String,
}

/// No address is bound twice on one machine. Addresses of different nodes
/// share a machine only when the nodes are co-located; on two machines only
/// the same specific, non-loopback IP and port on both is a conflict (the
/// peer would reach itself).
fn addresses(cx: &mut Cx, c: &Config) {
    let mut bound = Vec::new();
    for (i, n) in c.nodes.iter().enumerate() {
        let mut add = |addr, what: &str, path: String| {
            bound.push(Bound {
                addr,
                node: Some(i),
                what: format!("node {:?} {what}", n.name),
                path,
            })
        };
        add(n.control, "control", format!("node[{i}].control"));
        add(
            n.replication,
            "replication",
            format!("node[{i}].replication"),
        );
        for (k, l) in n.heartbeat.iter().enumerate() {
            if let HeartbeatLink::Udp(a) = l {
                add(
                    *a,
                    &format!("heartbeat link {}", k + 1),
                    format!("node[{i}].heartbeat[{k}]"),
                );
            }
        }
    }
    for (i, s) in c.serial.iter().enumerate() {
        if let Some(a) = s.listen {
            bound.push(Bound {
                addr: a,
                node: None,
                what: format!("serial port {:?} listen", s.name),
                path: format!("serial[{i}].listen"),
            });
        }
    }
    let together = co_located(c);
    for (i, s) in c.serial.iter().enumerate() {
        if let (Some(a), true, SerialActive::Always) = (s.listen, together, s.active) {
            let at = cx.at(&[&format!("serial[{i}].listen")]);
            cx.err(
                at,
                format!(
                    "serial port {:?} listens on {a} with active = \"always\", but both nodes run on this one \
                     machine and would both bind it; use active = \"primary\"",
                    s.name
                ),
            );
        }
    }
    let mut reported = Vec::new();
    for j in 0..bound.len() {
        for i in 0..j {
            let (x, y) = (&bound[i], &bound[j]);
            if x.addr.port() != y.addr.port() {
                continue;
            }
            let same_machine = together || x.node.is_none() || y.node.is_none() || x.node == y.node;
            let (ix, iy) = (x.addr.ip(), y.addr.ip());
            let clash = if same_machine {
                ix == iy || ix.is_unspecified() || iy.is_unspecified()
            } else {
                ix == iy && !ix.is_loopback() && !ix.is_unspecified()
            };
            if !clash || reported.contains(&j) {
                continue;
            }
            reported.push(j);
            // Report at the later of the two in the file.
            let (first, second) = if cx.at(&[&x.path]) <= cx.at(&[&y.path]) {
                (x, y)
            } else {
                (y, x)
            };
            let at = cx.at(&[&second.path]);
            let line = line_of(cx, &first.path);
            let msg = if ix == iy {
                format!(
                    "address {} ({}) is already used by {} at {line}",
                    second.addr, second.what, first.what
                )
            } else {
                format!(
                    "address {} ({}) conflicts with {} ({} at {line}): an unspecified address takes the port \
                     on every address of the machine",
                    second.addr, second.what, first.addr, first.what
                )
            };
            cx.err(at, msg);
        }
    }
}

fn same_machine(cx: &mut Cx, c: &Config) {
    if !co_located(c) {
        return;
    }
    let [a, b] = &c.nodes[..] else { return };
    if a.data_dir(&c.pair) == b.data_dir(&c.pair) {
        let at = cx.at(&["node[1].data_dir", "node[0].data_dir", "node[1]"]);
        cx.err(
            at,
            format!(
                "both nodes run on this one machine (the peer is reached on a loopback address) but share \
                 the data directory {:?}; give each [[node]] its own data_dir",
                a.data_dir(&c.pair).display().to_string()
            ),
        );
    }
    let has_paths = !c.databases.is_empty()
        || !c.filesets.is_empty()
        || c.serial.iter().any(|s| s.pty.is_some());
    if has_paths && a.path_prefix == b.path_prefix {
        let at = cx.at(&["node[1].path_prefix", "node[0].path_prefix", "node[1]"]);
        cx.err(
            at,
            "both nodes run on this one machine (the peer is reached on a loopback address) but have the \
             same path_prefix, so their databases, file sets and ptys would be the same files; give each \
             [[node]] its own path_prefix",
        );
    }
}

fn control_token(cx: &mut Cx, c: &Config) {
    if c.control.token_file.is_some() {
        return;
    }
    for (i, n) in c.nodes.iter().enumerate() {
        if !n.control.ip().is_loopback() {
            let at = cx.at(&[&format!("node[{i}].control"), &format!("node[{i}]")]);
            cx.err(
                at,
                format!(
                    "control address {} of node {:?} is not loopback, so [control] token_file is required \
                     (the control API can switch roles)",
                    n.control, n.name
                ),
            );
        }
    }
}

/// Values of `key` in `[[section]]` tables must differ.
fn unique<'a>(
    cx: &mut Cx,
    section: &str,
    what: &str,
    values: impl Iterator<Item = (usize, &'a str)>,
    key: &str,
) {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (i, v) in values {
        if let Some(&j) = seen.get(v) {
            let at = cx.at(&[&format!("{section}[{i}].{key}"), &format!("{section}[{i}]")]);
            let line = line_of(cx, &format!("{section}[{j}].{key}"));
            cx.err(at, format!("{what} {v:?} is already used at {line}"));
        } else {
            seen.insert(v, i);
        }
    }
}

fn serial_ports(cx: &mut Cx, c: &Config) {
    for (i, s) in c.serial.iter().enumerate() {
        let here = format!("serial[{i}]");
        let key = |k: &str| format!("{here}.{k}");
        let name = &s.name;
        let need = |cx: &mut Cx, k: &str, what: &str| {
            let at = cx.at(&[&here]);
            cx.err(
                at,
                format!(
                    "serial port {name:?} in {} mode needs {k:?} ({what})",
                    s.mode.as_str()
                ),
            );
        };
        let refuse = |cx: &mut Cx, k: &str, other: SerialMode| {
            let at = cx.at(&[&key(k)]);
            cx.err(
                at,
                format!(
                    "{k:?} is for {} mode, but serial port {name:?} is in {} mode",
                    other.as_str(),
                    s.mode.as_str()
                ),
            );
        };
        match s.mode {
            SerialMode::Serve => {
                if s.device.is_none() {
                    need(cx, "device", "the local serial device");
                }
                if s.listen.is_none() {
                    need(cx, "listen", "the TCP address clients connect to");
                }
                if cx.has(&key("device_servers")) {
                    refuse(cx, "device_servers", SerialMode::Connect);
                }
                if s.pty.is_some() {
                    refuse(cx, "pty", SerialMode::Connect);
                }
                for k in ["health_interval_ms", "failback_hold_ms"] {
                    if cx.has(&key(k)) {
                        refuse(cx, k, SerialMode::Connect);
                    }
                }
            }
            SerialMode::Connect => {
                if s.device_servers.is_empty() {
                    let at = cx.at(&[&key("device_servers"), &here]);
                    cx.err(
                        at,
                        format!("serial port {name:?} in connect mode needs one or two \"device_servers\" (\"HOST:PORT\")"),
                    );
                } else if s.device_servers.len() > 2 {
                    let at = cx.at(&[&key("device_servers[2]"), &key("device_servers")]);
                    cx.err(
                        at,
                        format!("serial port {name:?} has more than two device servers"),
                    );
                }
                if s.pty.is_none() && s.listen.is_none() {
                    need(
                        cx,
                        "pty",
                        "or \"listen\": how the port is presented on the primary",
                    );
                }
                if s.device.is_some() {
                    refuse(cx, "device", SerialMode::Serve);
                }
                if s.listen.is_none() {
                    // Only a TCP presentation has clients to police; on a
                    // pty-only port these keys would silently do nothing.
                    for k in ["client_policy", "allow", "idle_timeout_ms"] {
                        if cx.has(&key(k)) {
                            let at = cx.at(&[&key(k)]);
                            cx.err(
                                at,
                                format!("{k:?} applies to TCP clients, but serial port {name:?} has no \"listen\""),
                            );
                        }
                    }
                }
            }
        }
    }
    unique(
        cx,
        "serial",
        "serial device",
        c.serial
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.device.as_deref().map(|p| (i, path_str(p)))),
        "device",
    );
    unique(
        cx,
        "serial",
        "pty path",
        c.serial
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.pty.as_deref().map(|p| (i, path_str(p)))),
        "pty",
    );
    for (i, s) in c.serial.iter().enumerate() {
        let Some(dev) = &s.device else { continue };
        for n in &c.nodes {
            for (k, l) in n.heartbeat.iter().enumerate() {
                if matches!(l, HeartbeatLink::Serial { path, .. } if path == dev) {
                    let at = cx.at(&[&format!("serial[{i}].device")]);
                    cx.err(
                        at,
                        format!(
                            "serial device {:?} is also heartbeat link {} of node {:?}",
                            dev.display().to_string(),
                            k + 1,
                            n.name
                        ),
                    );
                }
            }
        }
    }
}
