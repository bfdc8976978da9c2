//! From TOML text to [`Config`]: a hand-written walk over a span-keeping
//! `toml_edit` document, so that every message is ours and every error has a
//! location. Checks that concern one value (types, paths, names, URLs) are
//! made here, where the value's location is at hand; checks across values are
//! in `validate`, which finds locations through [`Cx::locs`].

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use toml_edit::{ImDocument, Item, TableLike, Value};

use crate::link::{check_host_port, parse_addr, parse_link};
use crate::*;

/// Parsing context: the text (for line/column), collected diagnostics (as
/// byte offsets), and the location of every key and value read, by path
/// (`"timing.lease_ms"`, `"node[1]"`, `"node[0].heartbeat[2]"`).
pub(crate) struct Cx<'a> {
    text: &'a str,
    file: &'a Path,
    errs: Vec<(usize, String)>,
    pub(crate) locs: HashMap<String, usize>,
}

impl Cx<'_> {
    pub(crate) fn err(&mut self, at: usize, msg: impl Into<String>) {
        self.errs.push((at, msg.into()));
    }

    /// The location of the first of `paths` that was seen in the file, else the file's start.
    pub(crate) fn at(&self, paths: &[&str]) -> usize {
        paths
            .iter()
            .find_map(|p| self.locs.get(*p).copied())
            .unwrap_or(0)
    }

    pub(crate) fn line_col(&self, at: usize) -> (usize, usize) {
        line_col(self.text, at)
    }

    pub(crate) fn has(&self, path: &str) -> bool {
        self.locs.contains_key(path)
    }

    fn diagnostics(&self) -> Vec<Diagnostic> {
        let mut errs = self.errs.clone();
        errs.sort_by_key(|(at, _)| *at);
        errs.dedup();
        errs.into_iter()
            .map(|(at, message)| {
                let (line, col) = line_col(self.text, at);
                Diagnostic {
                    file: self.file.to_path_buf(),
                    line,
                    col,
                    message,
                }
            })
            .collect()
    }
}

/// 1-based line and column (in characters) of byte offset `at`.
fn line_col(text: &str, at: usize) -> (usize, usize) {
    let mut at = at.min(text.len());
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    let before = &text[..at];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

pub(crate) fn parse(text: &str, file: &Path) -> Result<Config, ConfigError> {
    let mut cx = Cx {
        text,
        file,
        errs: Vec::new(),
        locs: HashMap::new(),
    };
    let doc = match ImDocument::parse(text) {
        Ok(doc) => doc,
        Err(e) => {
            let msg = e.message().trim().replace('\n', ": ");
            let msg = if msg.is_empty() {
                "invalid TOML".to_string()
            } else {
                msg
            };
            cx.err(
                e.span().map_or(0, |s| s.start),
                format!("TOML syntax error: {msg}"),
            );
            return Err(ConfigError::Invalid(cx.diagnostics()));
        }
    };
    let root = Tab {
        t: doc.as_table(),
        at: 0,
        ctx: "the top level".into(),
        path: String::new(),
    };
    let config = read_config(&mut cx, &root);
    if cx.errs.is_empty() {
        crate::validate::validate(&mut cx, &config);
    }
    if cx.errs.is_empty() {
        Ok(config)
    } else {
        Err(ConfigError::Invalid(cx.diagnostics()))
    }
}

/// A table being read: its contents, where it starts, how messages name it
/// (`[pair]`, `[[node]]`) and its path for [`Cx::locs`].
struct Tab<'d> {
    t: &'d dyn TableLike,
    at: usize,
    ctx: String,
    path: String,
}

impl<'d> Tab<'d> {
    fn child_path(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    /// Refuses keys not in `allowed`, suggesting the nearest.
    fn check_keys(&self, cx: &mut Cx, allowed: &[&str]) {
        let top = self.path.is_empty();
        for (key, item) in self.t.iter() {
            if allowed.contains(&key) {
                continue;
            }
            let at = self.key_at(key, item);
            let best = allowed
                .iter()
                .map(|k| (strsim::jaro_winkler(key, k), *k))
                .max_by(|a, b| a.0.total_cmp(&b.0))
                .filter(|(score, _)| *score >= 0.8)
                .map(|(_, k)| k);
            let msg = if top && item.is_value() && !item.is_inline_table() {
                format!(
                    "unknown key {key:?} at the top level; keys belong in a section such as [pair] or [[node]]"
                )
            } else if top {
                match best {
                    Some(k) => format!(
                        "unknown section {}; did you mean {}?",
                        section(key, item),
                        section_of(k)
                    ),
                    None => format!(
                        "unknown section {}; the sections are {}",
                        section(key, item),
                        allowed
                            .iter()
                            .map(|k| section_of(k))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                }
            } else {
                match best {
                    Some(k) => format!("unknown key {key:?} in {}; did you mean {k:?}?", self.ctx),
                    None => format!(
                        "unknown key {key:?} in {}; the keys are {}",
                        self.ctx,
                        allowed.join(", ")
                    ),
                }
            };
            cx.err(at, msg);
        }
    }

    fn key_at(&self, key: &str, item: &Item) -> usize {
        self.t
            .get_key_value(key)
            .and_then(|(k, _)| k.span())
            .or_else(|| item.span())
            .map_or(self.at, |s| s.start)
    }

    /// The item under `key` and the location of its value, if present.
    fn get(&self, cx: &mut Cx, key: &str) -> Option<(&'d Item, usize)> {
        let (k, item) = self.t.get_key_value(key)?;
        if item.is_none() {
            return None;
        }
        let key_at = k.span().map_or(self.at, |s| s.start);
        let at = item.span().map_or(key_at, |s| s.start);
        cx.locs.insert(self.child_path(key), at);
        Some((item, at))
    }

    /// Like [`Tab::get`], reporting a missing key at the table.
    fn req(&self, cx: &mut Cx, key: &str) -> Option<(&'d Item, usize)> {
        let got = self.get(cx, key);
        if got.is_none() {
            cx.err(
                self.at,
                format!("missing required key {key:?} in {}", self.ctx),
            );
        }
        got
    }
}

/// How a top-level key reads as a section header.
fn section(key: &str, item: &Item) -> String {
    if item.is_array_of_tables() {
        format!("[[{key}]]")
    } else {
        format!("[{key}]")
    }
}

fn section_of(key: &str) -> String {
    if ["node", "database", "fileset", "serial"].contains(&key) {
        format!("[[{key}]]")
    } else {
        format!("[{key}]")
    }
}

fn a_type(item: &Item) -> String {
    let name = match item {
        Item::Value(v) => v.type_name(),
        other => other.type_name(),
    };
    let article = if name.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    };
    format!("{article} {name}")
}

fn type_err(cx: &mut Cx, item: &Item, at: usize, key: &str, expected: &str) {
    cx.err(
        at,
        format!("{key:?} must be {expected}, found {}", a_type(item)),
    );
}

// ---- value readers: each reports its own errors and returns None on error ----

fn string(cx: &mut Cx, item: &Item, at: usize, key: &str) -> Option<String> {
    match item.as_str() {
        Some(s) => Some(s.to_string()),
        None => {
            type_err(cx, item, at, key, "a string");
            None
        }
    }
}

fn integer(cx: &mut Cx, item: &Item, at: usize, key: &str, unit: &str) -> Option<u64> {
    match item.as_integer() {
        Some(n) if n >= 0 => Some(n as u64),
        Some(n) => {
            cx.err(at, format!("{key:?} must not be negative, found {n}"));
            None
        }
        None => {
            type_err(cx, item, at, key, &format!("a whole number ({unit})"));
            None
        }
    }
}

fn millis(cx: &mut Cx, item: &Item, at: usize, key: &str) -> Option<u64> {
    integer(cx, item, at, key, "milliseconds")
}

fn abs_path(cx: &mut Cx, item: &Item, at: usize, key: &str) -> Option<PathBuf> {
    let s = string(cx, item, at, key)?;
    if s.is_empty() {
        cx.err(at, format!("{key:?} must not be empty"));
        return None;
    }
    if !Path::new(&s).is_absolute() {
        cx.err(at, format!("{key:?} must be an absolute path, found {s:?}"));
        return None;
    }
    Some(PathBuf::from(s))
}

fn name(cx: &mut Cx, item: &Item, at: usize, key: &str, what: &str) -> Option<String> {
    let s = string(cx, item, at, key)?;
    if s.is_empty() {
        cx.err(at, format!("{what} must not be empty"));
        return None;
    }
    if let Some(c) = s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "_.-".contains(*c)))
    {
        cx.err(
            at,
            format!(
                "{what} {s:?} contains {c:?}; use only letters A-Z a-z, digits, '_', '.' and '-'"
            ),
        );
        return None;
    }
    Some(s)
}

fn addr(cx: &mut Cx, item: &Item, at: usize, key: &str) -> Option<SocketAddr> {
    let s = string(cx, item, at, key)?;
    match parse_addr(&s) {
        Ok(a) => Some(a),
        Err(m) => {
            cx.err(at, format!("invalid {key:?} address {s:?}: {m}"));
            None
        }
    }
}

fn choice(cx: &mut Cx, item: &Item, at: usize, key: &str, choices: &[&str]) -> Option<usize> {
    let s = string(cx, item, at, key)?;
    if let Some(i) = choices.iter().position(|c| *c == s) {
        return Some(i);
    }
    let list = choices
        .iter()
        .map(|c| format!("{c:?}"))
        .collect::<Vec<_>>()
        .join(" or ");
    cx.err(at, format!("{key:?} must be {list}, found {s:?}"));
    None
}

fn size(cx: &mut Cx, item: &Item, at: usize, key: &str) -> Option<u64> {
    if item.as_integer().is_some() {
        return integer(cx, item, at, key, "bytes");
    }
    let Some(s) = item.as_str() else {
        type_err(
            cx,
            item,
            at,
            key,
            "a size (a whole number of bytes, or a string like \"64MiB\")",
        );
        return None;
    };
    match parse_size(s) {
        Ok(n) => Some(n),
        Err(m) => {
            cx.err(at, format!("{key:?}: {m}"));
            None
        }
    }
}

fn positive(cx: &mut Cx, value: Option<u64>, at: usize, key: &str) -> Option<u64> {
    if value == Some(0) {
        cx.err(at, format!("{key:?} must be greater than 0"));
        return None;
    }
    value
}

/// An array of strings, each with its location (also recorded as `path[i]`).
fn strings(
    cx: &mut Cx,
    item: &Item,
    at: usize,
    key: &str,
    path: &str,
) -> Option<Vec<(String, usize)>> {
    let Some(array) = item.as_array() else {
        type_err(cx, item, at, key, "an array of strings");
        return None;
    };
    let mut out = Vec::new();
    let mut ok = true;
    for (i, v) in array.iter().enumerate() {
        let vat = v.span().map_or(at, |s| s.start);
        cx.locs.insert(format!("{path}[{i}]"), vat);
        match v.as_str() {
            Some(s) if s.trim().is_empty() => {
                cx.err(vat, format!("{key:?} must not contain empty strings"));
                ok = false;
            }
            Some(s) => out.push((s.to_string(), vat)),
            None => {
                cx.err(
                    vat,
                    format!(
                        "{key:?} must be an array of strings, found {} in it",
                        a_type(&Item::Value(v.clone()))
                    ),
                );
                ok = false;
            }
        }
    }
    ok.then_some(out)
}

// ---- tables ----

/// An optional single table (`[pair]` or `pair = { ... }`).
fn table<'d>(cx: &mut Cx, root: &Tab<'d>, key: &str) -> Option<Tab<'d>> {
    let (item, at) = root.get(cx, key)?;
    let ctx = format!("[{key}]");
    match item {
        Item::Table(t) => {
            // An implicit table (from `pair.name = ...`) has no span: use its first key.
            let at = t
                .span()
                .map(|s| s.start)
                .or_else(|| first_key_at(t))
                .unwrap_or(at);
            cx.locs.insert(key.to_string(), at);
            Some(Tab {
                t,
                at,
                ctx,
                path: key.into(),
            })
        }
        Item::Value(Value::InlineTable(t)) => Some(Tab {
            t,
            at,
            ctx,
            path: key.into(),
        }),
        Item::ArrayOfTables(_) => {
            cx.err(
                at,
                format!("{ctx} is a single table: write [{key}], not [[{key}]]"),
            );
            None
        }
        other => {
            type_err(cx, other, at, key, &format!("a table ({ctx})"));
            None
        }
    }
}

fn first_key_at(t: &dyn TableLike) -> Option<usize> {
    t.iter()
        .filter_map(|(k, _)| t.get_key_value(k).and_then(|(k, _)| k.span()))
        .map(|s| s.start)
        .min()
}

/// An array of tables (`[[node]]` or `node = [{ ... }, { ... }]`), possibly absent.
fn tables<'d>(cx: &mut Cx, root: &Tab<'d>, key: &str) -> Vec<Tab<'d>> {
    let Some((item, at)) = root.get(cx, key) else {
        return Vec::new();
    };
    let ctx = format!("[[{key}]]");
    let mut out = Vec::new();
    match item {
        Item::ArrayOfTables(array) => {
            for t in array.iter() {
                let at = t.span().map_or(at, |s| s.start);
                out.push((t as &dyn TableLike, at));
            }
        }
        Item::Value(Value::Array(array)) => {
            for v in array.iter() {
                let vat = v.span().map_or(at, |s| s.start);
                match v {
                    Value::InlineTable(t) => out.push((t as &dyn TableLike, vat)),
                    _ => {
                        let found = a_type(&Item::Value(v.clone()));
                        cx.err(
                            vat,
                            format!(
                                "{key:?} must be an array of tables ({ctx}), found {found} in it"
                            ),
                        );
                    }
                }
            }
        }
        Item::Table(_) => {
            cx.err(
                at,
                format!("there can be several {ctx} sections: write {ctx}, not [{key}]"),
            );
        }
        other => type_err(cx, other, at, key, &format!("an array of tables ({ctx})")),
    }
    out.into_iter()
        .enumerate()
        .map(|(i, (t, at))| {
            let path = format!("{key}[{i}]");
            cx.locs.insert(path.clone(), at);
            Tab {
                t,
                at,
                ctx: ctx.clone(),
                path,
            }
        })
        .collect()
}

// ---- sections ----

const ROOT_KEYS: &[&str] = &[
    "pair",
    "timing",
    "node",
    "tiebreaker",
    "hooks",
    "control",
    "database",
    "fileset",
    "serial",
];
pub(crate) const PAIR_KEYS: &[&str] = &["name", "key_file", "data_dir", "failover"];
pub(crate) const TIMING_KEYS: &[&str] = &[
    "heartbeat_interval_ms",
    "lease_ms",
    "dead_after_ms",
    "lease_margin_ms",
    "link_dead_after_ms",
    "switchover_timeout_ms",
    "cold_start_wait_ms",
];
pub(crate) const NODE_KEYS: &[&str] = &[
    "name",
    "control",
    "replication",
    "heartbeat",
    "data_dir",
    "path_prefix",
];
pub(crate) const TIEBREAKER_KEYS: &[&str] = &["reach", "timeout_ms"];
pub(crate) const HOOKS_KEYS: &[&str] = &[
    "on_promote",
    "on_demote",
    "on_fence",
    "on_alarm",
    "timeout_ms",
];
pub(crate) const CONTROL_KEYS: &[&str] = &["token_file"];
pub(crate) const DATABASE_KEYS: &[&str] = &["name", "path", "wal_bytes_max", "spool_bytes_max"];
pub(crate) const FILESET_KEYS: &[&str] = &["name", "root", "include", "exclude", "reconcile_ms"];
pub(crate) const SERIAL_KEYS: &[&str] = &[
    "name",
    "mode",
    "device",
    "listen",
    "protocol",
    "device_servers",
    "pty",
    "active",
    "client_policy",
    "allow",
    "idle_timeout_ms",
    "trace_file",
    "keepalive_idle_ms",
    "user_timeout_ms",
    "baud",
    "data_bits",
    "parity",
    "stop_bits",
    "flow",
    "health_interval_ms",
    "failback_hold_ms",
];

fn read_config(cx: &mut Cx, root: &Tab) -> Config {
    root.check_keys(cx, ROOT_KEYS);
    let pair = match table(cx, root, "pair") {
        Some(t) => read_pair(cx, &t),
        None => {
            if !root.t.contains_key("pair") {
                cx.err(
                    0,
                    "missing required section [pair] (the pair's name, key_file and data_dir)",
                );
            }
            Pair {
                name: String::new(),
                key_file: PathBuf::new(),
                data_dir: PathBuf::new(),
                failover: FailoverMode::default(),
            }
        }
    };
    let timing = table(cx, root, "timing")
        .map(|t| read_timing(cx, &t))
        .unwrap_or_default();
    let node_tabs = tables(cx, root, "node");
    if !root.t.contains_key("node") {
        cx.err(0, "no [[node]] sections; a pair needs exactly two nodes");
    }
    let nodes = node_tabs.iter().map(|t| read_node(cx, t)).collect();
    let tiebreaker = table(cx, root, "tiebreaker").map(|t| read_tiebreaker(cx, &t));
    let hooks = table(cx, root, "hooks")
        .map(|t| read_hooks(cx, &t))
        .unwrap_or_default();
    let control = table(cx, root, "control")
        .map(|t| read_control(cx, &t))
        .unwrap_or_default();
    let databases = tables(cx, root, "database")
        .iter()
        .map(|t| read_database(cx, t))
        .collect();
    let filesets = tables(cx, root, "fileset")
        .iter()
        .map(|t| read_fileset(cx, t))
        .collect();
    let serial = tables(cx, root, "serial")
        .iter()
        .map(|t| read_serial(cx, t))
        .collect();
    Config {
        source: cx.file.to_path_buf(),
        pair,
        timing,
        nodes,
        tiebreaker,
        hooks,
        control,
        databases,
        filesets,
        serial,
    }
}

fn read_pair(cx: &mut Cx, t: &Tab) -> Pair {
    t.check_keys(cx, PAIR_KEYS);
    let name = t
        .req(cx, "name")
        .and_then(|(i, at)| name(cx, i, at, "name", "the pair name"));
    let key_file = t
        .req(cx, "key_file")
        .and_then(|(i, at)| abs_path(cx, i, at, "key_file"));
    let data_dir = t
        .req(cx, "data_dir")
        .and_then(|(i, at)| abs_path(cx, i, at, "data_dir"));
    let failover = t
        .get(cx, "failover")
        .and_then(|(i, at)| choice(cx, i, at, "failover", &["auto", "manual"]))
        .map_or(FailoverMode::Manual, |c| {
            if c == 0 {
                FailoverMode::Auto
            } else {
                FailoverMode::Manual
            }
        });
    Pair {
        name: name.unwrap_or_default(),
        key_file: key_file.unwrap_or_default(),
        data_dir: data_dir.unwrap_or_default(),
        failover,
    }
}

fn read_timing(cx: &mut Cx, t: &Tab) -> Timing {
    t.check_keys(cx, TIMING_KEYS);
    let d = Timing::default();
    let mut ms = |key: &str, default: u64| {
        t.get(cx, key)
            .and_then(|(i, at)| millis(cx, i, at, key))
            .unwrap_or(default)
    };
    Timing {
        heartbeat_interval_ms: ms("heartbeat_interval_ms", d.heartbeat_interval_ms),
        lease_ms: ms("lease_ms", d.lease_ms),
        dead_after_ms: ms("dead_after_ms", d.dead_after_ms),
        lease_margin_ms: ms("lease_margin_ms", d.lease_margin_ms),
        link_dead_after_ms: ms("link_dead_after_ms", d.link_dead_after_ms),
        switchover_timeout_ms: ms("switchover_timeout_ms", d.switchover_timeout_ms),
        cold_start_wait_ms: ms("cold_start_wait_ms", d.cold_start_wait_ms),
    }
}

const UNSPECIFIED: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0);

fn read_node(cx: &mut Cx, t: &Tab) -> Node {
    t.check_keys(cx, NODE_KEYS);
    let name = t
        .req(cx, "name")
        .and_then(|(i, at)| name(cx, i, at, "name", "the node name"));
    let control = match t.get(cx, "control") {
        Some((i, at)) => addr(cx, i, at, "control"),
        None => DEFAULT_CONTROL.parse().ok(),
    };
    let replication = t.req(cx, "replication").and_then(|(i, at)| {
        let a = addr(cx, i, at, "replication")?;
        if a.ip().is_unspecified() {
            cx.err(
                at,
                format!("\"replication\": the peer connects to this address, so it must be a specific IP, not {}", a.ip()),
            );
            return None;
        }
        Some(a)
    });
    let hb_path = t.child_path("heartbeat");
    let heartbeat = t.req(cx, "heartbeat").and_then(|(i, at)| {
        let urls = strings(cx, i, at, "heartbeat", &hb_path)?;
        if urls.is_empty() {
            cx.err(
                at,
                "\"heartbeat\" needs at least one link, e.g. [\"udp://10.10.10.1:7482\"]",
            );
            return None;
        }
        let mut links = Vec::new();
        for (url, uat) in urls {
            match parse_link(&url) {
                Ok(l) => links.push(l),
                Err(e) => cx.err(uat, e.0),
            }
        }
        Some(links)
    });
    let data_dir = t
        .get(cx, "data_dir")
        .and_then(|(i, at)| abs_path(cx, i, at, "data_dir"));
    let path_prefix = t
        .get(cx, "path_prefix")
        .and_then(|(i, at)| abs_path(cx, i, at, "path_prefix"));
    Node {
        name: name.unwrap_or_default(),
        control: control.unwrap_or(UNSPECIFIED),
        replication: replication.unwrap_or(UNSPECIFIED),
        heartbeat: heartbeat.unwrap_or_default(),
        data_dir,
        path_prefix,
    }
}

fn read_tiebreaker(cx: &mut Cx, t: &Tab) -> Tiebreaker {
    t.check_keys(cx, TIEBREAKER_KEYS);
    let path = t.child_path("reach");
    let reach = t.req(cx, "reach").and_then(|(i, at)| {
        let targets = strings(cx, i, at, "reach", &path)?;
        if targets.is_empty() {
            cx.err(at, "\"reach\" needs at least one \"HOST:PORT\" target");
            return None;
        }
        let mut out = Vec::new();
        for (s, sat) in targets {
            match check_host_port(&s) {
                Ok(()) => out.push(s),
                Err(m) => cx.err(
                    sat,
                    format!("tiebreaker target {m} (a TCP connect that succeeds or is refused counts as reachable)"),
                ),
            }
        }
        Some(out)
    });
    let timeout = t.get(cx, "timeout_ms").and_then(|(i, at)| {
        let v = millis(cx, i, at, "timeout_ms");
        positive(cx, v, at, "timeout_ms")
    });
    Tiebreaker {
        reach: reach.unwrap_or_default(),
        timeout_ms: timeout.unwrap_or(500),
    }
}

fn read_hooks(cx: &mut Cx, t: &Tab) -> Hooks {
    t.check_keys(cx, HOOKS_KEYS);
    let mut list = |key: &str| {
        let path = t.child_path(key);
        t.get(cx, key)
            .and_then(|(i, at)| strings(cx, i, at, key, &path))
            .map(|v| v.into_iter().map(|(s, _)| s).collect())
            .unwrap_or_default()
    };
    let on_promote = list("on_promote");
    let on_demote = list("on_demote");
    let on_fence = list("on_fence");
    let on_alarm = list("on_alarm");
    let timeout = t.get(cx, "timeout_ms").and_then(|(i, at)| {
        let v = millis(cx, i, at, "timeout_ms");
        positive(cx, v, at, "timeout_ms")
    });
    Hooks {
        on_promote,
        on_demote,
        on_fence,
        on_alarm,
        timeout_ms: timeout.unwrap_or(10_000),
    }
}

fn read_control(cx: &mut Cx, t: &Tab) -> Control {
    t.check_keys(cx, CONTROL_KEYS);
    Control {
        token_file: t
            .get(cx, "token_file")
            .and_then(|(i, at)| abs_path(cx, i, at, "token_file")),
    }
}

fn read_database(cx: &mut Cx, t: &Tab) -> Database {
    t.check_keys(cx, DATABASE_KEYS);
    let name = t
        .req(cx, "name")
        .and_then(|(i, at)| name(cx, i, at, "name", "the database name"));
    let path = t
        .req(cx, "path")
        .and_then(|(i, at)| abs_path(cx, i, at, "path"));
    let mut sz = |key: &str, default: u64| {
        t.get(cx, key)
            .and_then(|(i, at)| {
                let v = size(cx, i, at, key);
                positive(cx, v, at, key)
            })
            .unwrap_or(default)
    };
    Database {
        name: name.unwrap_or_default(),
        path: path.unwrap_or_default(),
        wal_bytes_max: sz("wal_bytes_max", DEFAULT_WAL_BYTES_MAX),
        spool_bytes_max: sz("spool_bytes_max", DEFAULT_SPOOL_BYTES_MAX),
    }
}

fn read_fileset(cx: &mut Cx, t: &Tab) -> FileSet {
    t.check_keys(cx, FILESET_KEYS);
    let name = t
        .req(cx, "name")
        .and_then(|(i, at)| name(cx, i, at, "name", "the file set name"));
    let root = t
        .req(cx, "root")
        .and_then(|(i, at)| abs_path(cx, i, at, "root"));
    let mut globs = |key: &str| {
        let path = t.child_path(key);
        let found = t
            .get(cx, key)
            .and_then(|(i, at)| strings(cx, i, at, key, &path))
            .unwrap_or_default();
        let mut out = Vec::new();
        for (g, at) in found {
            // The same options the file set's filter is built with.
            match globset::GlobBuilder::new(&g)
                .literal_separator(true)
                .build()
            {
                Ok(_) => out.push(g),
                Err(e) => cx.err(
                    at,
                    format!("{key:?}: {g:?} is not a valid glob: {}", e.kind()),
                ),
            }
        }
        out
    };
    let include = globs("include");
    let exclude = globs("exclude");
    let reconcile_ms = match t.get(cx, "reconcile_ms") {
        Some((i, at)) => match millis(cx, i, at, "reconcile_ms") {
            Some(ms) if ms < 100 => {
                cx.err(
                    at,
                    format!("\"reconcile_ms\" must be at least 100 (milliseconds), found {ms}"),
                );
                DEFAULT_RECONCILE_MS
            }
            Some(ms) => ms,
            None => DEFAULT_RECONCILE_MS,
        },
        None => DEFAULT_RECONCILE_MS,
    };
    FileSet {
        name: name.unwrap_or_default(),
        root: root.unwrap_or_default(),
        include,
        exclude,
        reconcile_ms,
    }
}

fn read_serial(cx: &mut Cx, t: &Tab) -> SerialPort {
    t.check_keys(cx, SERIAL_KEYS);
    let name = t
        .req(cx, "name")
        .and_then(|(i, at)| name(cx, i, at, "name", "the serial port name"));
    let mode = t
        .req(cx, "mode")
        .and_then(|(i, at)| choice(cx, i, at, "mode", &["serve", "connect"]));
    let device = t
        .get(cx, "device")
        .and_then(|(i, at)| abs_path(cx, i, at, "device"));
    let listen = t
        .get(cx, "listen")
        .and_then(|(i, at)| addr(cx, i, at, "listen"));
    let protocol = t
        .get(cx, "protocol")
        .and_then(|(i, at)| choice(cx, i, at, "protocol", &["raw", "rfc2217"]))
        .map_or(SerialProtocol::Raw, |c| {
            if c == 0 {
                SerialProtocol::Raw
            } else {
                SerialProtocol::Rfc2217
            }
        });
    let ds_path = t.child_path("device_servers");
    let device_servers = t
        .get(cx, "device_servers")
        .and_then(|(i, at)| strings(cx, i, at, "device_servers", &ds_path))
        .map(|servers| {
            let mut out = Vec::new();
            for (s, sat) in servers {
                let (scheme, hp) = match s.split_once("://") {
                    Some((sc, hp)) => (Some(sc), hp),
                    None => (None, s.as_str()),
                };
                let said = match scheme {
                    None => None,
                    Some("rfc2217") => Some(SerialProtocol::Rfc2217),
                    Some("raw" | "tcp") => Some(SerialProtocol::Raw),
                    Some(other) => {
                        cx.err(
                            sat,
                            format!("device server {s:?} has unknown scheme {other:?}; expected \"HOST:PORT\", \"rfc2217://HOST:PORT\" or \"raw://HOST:PORT\""),
                        );
                        continue;
                    }
                };
                if let Some(p) = said.filter(|p| *p != protocol) {
                    cx.err(
                        sat,
                        format!(
                            "device server {s:?} says {} but this port's protocol is {:?}{}; set protocol = {:?} or drop the prefix",
                            p.as_str(),
                            protocol.as_str(),
                            if t.t.contains_key("protocol") { "" } else { " (the default)" },
                            p.as_str()
                        ),
                    );
                    continue;
                }
                match check_host_port(hp) {
                    Ok(()) => out.push(hp.to_string()),
                    Err(m) => cx.err(sat, format!("device server {m}")),
                }
            }
            out
        })
        .unwrap_or_default();
    let pty = t
        .get(cx, "pty")
        .and_then(|(i, at)| abs_path(cx, i, at, "pty"));
    let active = t
        .get(cx, "active")
        .and_then(|(i, at)| choice(cx, i, at, "active", &["primary", "always"]))
        .map_or(SerialActive::Primary, |c| {
            if c == 0 {
                SerialActive::Primary
            } else {
                SerialActive::Always
            }
        });
    let client_policy = t
        .get(cx, "client_policy")
        .and_then(|(i, at)| choice(cx, i, at, "client_policy", &["kick_old", "refuse_new"]))
        .map_or(SerialClientPolicy::KickOld, |c| {
            if c == 0 {
                SerialClientPolicy::KickOld
            } else {
                SerialClientPolicy::RefuseNew
            }
        });
    let allow_path = t.child_path("allow");
    let allow = t
        .get(cx, "allow")
        .and_then(|(i, at)| strings(cx, i, at, "allow", &allow_path))
        .map(|ips| {
            let mut out = Vec::new();
            for (s, sat) in ips {
                match s.parse::<std::net::IpAddr>() {
                    Ok(ip) => out.push(ip),
                    Err(_) => cx.err(
                        sat,
                        format!("\"allow\" entry {s:?} is not an IP address (write one address per entry, e.g. \"10.0.0.5\" or \"fd00::5\")"),
                    ),
                }
            }
            out
        })
        .unwrap_or_default();
    let idle_timeout_ms = t
        .get(cx, "idle_timeout_ms")
        .and_then(|(i, at)| millis(cx, i, at, "idle_timeout_ms"))
        .unwrap_or(0);
    let trace_file = t
        .get(cx, "trace_file")
        .and_then(|(i, at)| abs_path(cx, i, at, "trace_file"));
    let keepalive_idle_ms = t
        .get(cx, "keepalive_idle_ms")
        .and_then(|(i, at)| {
            let v = millis(cx, i, at, "keepalive_idle_ms")?;
            if !(1_000..=32_767_000).contains(&v) {
                cx.err(
                    at,
                    format!("\"keepalive_idle_ms\" must be between 1000 and 32767000 (the kernel counts it in whole seconds), found {v}"),
                );
                return None;
            }
            Some(v)
        })
        .unwrap_or(DEFAULT_SERIAL_KEEPALIVE_IDLE_MS);
    let user_timeout_ms = t
        .get(cx, "user_timeout_ms")
        .and_then(|(i, at)| {
            let v = millis(cx, i, at, "user_timeout_ms");
            positive(cx, v, at, "user_timeout_ms")
        })
        .unwrap_or(DEFAULT_SERIAL_USER_TIMEOUT_MS);
    let d = SerialLine::default();
    let baud = t
        .get(cx, "baud")
        .and_then(|(i, at)| {
            let v = integer(cx, i, at, "baud", "bits per second");
            let v = positive(cx, v, at, "baud")?;
            match u32::try_from(v) {
                Ok(b) => Some(b),
                Err(_) => {
                    cx.err(at, format!("\"baud\" {v} is too large"));
                    None
                }
            }
        })
        .unwrap_or(d.baud);
    let data_bits = t
        .get(cx, "data_bits")
        .and_then(|(i, at)| {
            let v = integer(cx, i, at, "data_bits", "bits")?;
            if !(5..=8).contains(&v) {
                cx.err(at, format!("\"data_bits\" must be 5, 6, 7 or 8, found {v}"));
                return None;
            }
            Some(v as u8)
        })
        .unwrap_or(d.data_bits);
    let parity = t
        .get(cx, "parity")
        .and_then(|(i, at)| {
            choice(
                cx,
                i,
                at,
                "parity",
                &["none", "even", "odd", "mark", "space"],
            )
        })
        .map_or(d.parity, |c| {
            [
                SerialParity::None,
                SerialParity::Even,
                SerialParity::Odd,
                SerialParity::Mark,
                SerialParity::Space,
            ][c]
        });
    let stop_bits = t
        .get(cx, "stop_bits")
        .and_then(|(i, at)| {
            let v = integer(cx, i, at, "stop_bits", "bits")?;
            if !(1..=2).contains(&v) {
                cx.err(at, format!("\"stop_bits\" must be 1 or 2, found {v}"));
                return None;
            }
            Some(v as u8)
        })
        .unwrap_or(d.stop_bits);
    let flow = t
        .get(cx, "flow")
        .and_then(|(i, at)| choice(cx, i, at, "flow", &["none", "rtscts", "xonxoff"]))
        .map_or(d.flow, |c| {
            [SerialFlow::None, SerialFlow::RtsCts, SerialFlow::XonXoff][c]
        });
    let health_interval_ms = t
        .get(cx, "health_interval_ms")
        .and_then(|(i, at)| {
            let v = millis(cx, i, at, "health_interval_ms");
            positive(cx, v, at, "health_interval_ms")
        })
        .unwrap_or(DEFAULT_SERIAL_HEALTH_INTERVAL_MS);
    let failback_hold_ms = t
        .get(cx, "failback_hold_ms")
        .and_then(|(i, at)| millis(cx, i, at, "failback_hold_ms"))
        .unwrap_or(DEFAULT_SERIAL_FAILBACK_HOLD_MS);
    SerialPort {
        name: name.unwrap_or_default(),
        mode: if mode == Some(1) {
            SerialMode::Connect
        } else {
            SerialMode::Serve
        },
        device,
        listen,
        protocol,
        device_servers,
        pty,
        active,
        client_policy,
        allow,
        idle_timeout_ms,
        trace_file,
        keepalive_idle_ms,
        user_timeout_ms,
        line: SerialLine {
            baud,
            data_bits,
            parity,
            stop_bits,
            flow,
        },
        health_interval_ms,
        failback_hold_ms,
    }
}
