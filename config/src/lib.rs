//! The typed configuration of a tandem pair.
//!
//! A tandem pair is two servers that replicate databases, file sets and serial
//! ports from a primary to a hot standby. Both servers read the same TOML file
//! (in the spirit of `corosync.conf`): it names the pair, describes both
//! nodes and the links between them, and lists what is replicated. This crate
//! turns that file into plain Rust values ([`Config`]) with every default
//! filled in, so the rest of tandem never looks at TOML.
//!
//! The file is written by a duty engineer, often under pressure, and a mistake
//! in it can cost a failover. So loading is strict and the errors are meant to
//! be read by a person: unknown keys are refused with the nearest valid key
//! suggested, wrong types say what was expected, and every error, including
//! the semantic ones (two nodes on the same port, a lease longer than the
//! failure detector's patience, a relative path), is reported as
//! `FILE:LINE:COL: message` pointing at the offending key or value. All errors
//! found in one pass are reported together, in file order.
//!
//! The annotated example [`EXAMPLE`] (`config/examples/tandem.toml`) documents
//! every option with its default and unit, and [`demo_config`] writes a
//! config for two nodes on one machine, used by `tandem demo` and the tests.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

mod error;
mod link;
mod parse;
mod size;
mod validate;

#[cfg(test)]
mod tests;

pub use error::{ConfigError, Diagnostic};
pub use link::ParseLinkError;
pub use size::parse_size;

/// The annotated example configuration: every option, with what it does, its
/// default and its unit. It passes validation.
pub const EXAMPLE: &str = include_str!("../examples/tandem.toml");

/// The default control API address of a node when `control` is not given.
pub const DEFAULT_CONTROL: &str = "127.0.0.1:7480";

/// A loaded and validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The file it was loaded from (`<memory>` or the caller's name for [`Config::parse_str`]).
    pub source: PathBuf,
    pub pair: Pair,
    pub timing: Timing,
    /// Exactly two nodes, in file order.
    pub nodes: Vec<Node>,
    pub tiebreaker: Option<Tiebreaker>,
    pub hooks: Hooks,
    pub control: Control,
    pub databases: Vec<Database>,
    pub filesets: Vec<FileSet>,
    pub serial: Vec<SerialPort>,
}

/// `[pair]`: what the two nodes share.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pair {
    pub name: String,
    /// The shared secret that authenticates every message between the nodes (absolute).
    pub key_file: PathBuf,
    /// Where tandem keeps its state (epoch, spool, quarantine); absolute.
    pub data_dir: PathBuf,
    pub failover: FailoverMode,
}

/// Whether the standby may promote itself when the primary goes silent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum FailoverMode {
    Auto,
    #[default]
    Manual,
}

impl FailoverMode {
    pub fn as_str(self) -> &'static str {
        match self {
            FailoverMode::Auto => "auto",
            FailoverMode::Manual => "manual",
        }
    }
}

/// `[timing]`: the failure detector and lease. All values in milliseconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timing {
    /// How often each heartbeat link sends a frame. Default 100, at least 5.
    pub heartbeat_interval_ms: u64,
    /// How long one acknowledgement lets the primary keep writing. Default 1500; > 2 × heartbeat.
    pub lease_ms: u64,
    /// Silence on all links after which the standby considers the primary dead. Default 2000.
    pub dead_after_ms: u64,
    /// Safety margin between lease expiry and promotion. Default 250;
    /// `dead_after_ms >= lease_ms + lease_margin_ms`.
    pub lease_margin_ms: u64,
    /// Silence after which one heartbeat link is declared down (an alarm, no
    /// role change). Default 1000; >= 3 × heartbeat.
    pub link_dead_after_ms: u64,
    /// How long a graceful switchover may take before it rolls back. Default 10000.
    pub switchover_timeout_ms: u64,
    /// Informational: how long a lone cold node logs that it is waiting for its peer. Default 10000.
    pub cold_start_wait_ms: u64,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            heartbeat_interval_ms: 100,
            lease_ms: 1500,
            dead_after_ms: 2000,
            lease_margin_ms: 250,
            link_dead_after_ms: 1000,
            switchover_timeout_ms: 10_000,
            cold_start_wait_ms: 10_000,
        }
    }
}

/// `[[node]]`: one of the two servers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub name: String,
    /// The control HTTP API. Default [`DEFAULT_CONTROL`] (loopback).
    pub control: SocketAddr,
    /// TCP address of the replication/control link; the peer connects to it, so it is a specific IP.
    pub replication: SocketAddr,
    /// At least one. Link `i` of one node pairs with link `i` of the other (same kind).
    pub heartbeat: Vec<HeartbeatLink>,
    /// Per-node override of `pair.data_dir` (lets both nodes run on one machine).
    pub data_dir: Option<PathBuf>,
    /// Per-node prefix for database, file set and pty paths (demo, tests).
    pub path_prefix: Option<PathBuf>,
}

impl Node {
    /// This node's data directory: its own override or the pair's.
    pub fn data_dir<'a>(&'a self, pair: &'a Pair) -> &'a Path {
        self.data_dir.as_deref().unwrap_or(&pair.data_dir)
    }

    /// `path` (a database path, file set root or pty path from the config) as
    /// seen on this node: under `path_prefix` when one is set, else unchanged.
    pub fn prefixed(&self, path: &Path) -> PathBuf {
        match &self.path_prefix {
            None => path.to_path_buf(),
            Some(prefix) => {
                let rel: PathBuf = path
                    .components()
                    .filter(|c| {
                        !matches!(
                            c,
                            std::path::Component::RootDir | std::path::Component::Prefix(_)
                        )
                    })
                    .collect();
                prefix.join(rel)
            }
        }
    }
}

/// One heartbeat link of a node, written as a URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HeartbeatLink {
    /// `udp://IP:PORT`: this node receives on (binds) this address; the peer sends to it.
    Udp(SocketAddr),
    /// `serial:///dev/ttyS1?baud=115200` (baud defaults to 115200), typically a null-modem cable.
    Serial { path: PathBuf, baud: u32 },
}

impl HeartbeatLink {
    /// `"udp"` or `"serial"`.
    pub fn kind(&self) -> &'static str {
        match self {
            HeartbeatLink::Udp(_) => "udp",
            HeartbeatLink::Serial { .. } => "serial",
        }
    }
}

impl fmt::Display for HeartbeatLink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HeartbeatLink::Udp(addr) => write!(f, "udp://{addr}"),
            HeartbeatLink::Serial { path, baud } => {
                write!(f, "serial://{}?baud={baud}", path.display())
            }
        }
    }
}

impl std::str::FromStr for HeartbeatLink {
    type Err = ParseLinkError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        link::parse_link(s)
    }
}

/// `[tiebreaker]`: what the standby must still reach before an automatic failover.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tiebreaker {
    /// `"HOST:PORT"` TCP targets. A connect that succeeds or is refused means
    /// reachable; a timeout means unreachable.
    pub reach: Vec<String>,
    /// Connect timeout per target. Default 500.
    pub timeout_ms: u64,
}

/// `[hooks]`: shell commands run one at a time, in order, on role changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hooks {
    pub on_promote: Vec<String>,
    pub on_demote: Vec<String>,
    pub on_fence: Vec<String>,
    pub on_alarm: Vec<String>,
    /// Per command. Default 10000, > 0.
    pub timeout_ms: u64,
}

impl Default for Hooks {
    fn default() -> Self {
        Hooks {
            on_promote: Vec::new(),
            on_demote: Vec::new(),
            on_fence: Vec::new(),
            on_alarm: Vec::new(),
            timeout_ms: 10_000,
        }
    }
}

/// `[control]`: the control HTTP API.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Control {
    /// Bearer token file; required when a node's control address is not loopback.
    pub token_file: Option<PathBuf>,
}

/// `[[database]]`: one SQLite database in WAL mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Database {
    pub name: String,
    pub path: PathBuf,
    /// WAL size at which a time-bounded TRUNCATE checkpoint is tried. Default 64 MiB.
    pub wal_bytes_max: u64,
    /// Spool cap while the standby is away; past it, a page-hash resync. Default 1 GiB.
    pub spool_bytes_max: u64,
}

pub const DEFAULT_WAL_BYTES_MAX: u64 = 64 << 20;
pub const DEFAULT_SPOOL_BYTES_MAX: u64 = 1 << 30;

/// `[[fileset]]`: a directory tree mirrored file by file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileSet {
    pub name: String,
    pub root: PathBuf,
    /// Glob patterns relative to `root`; empty means everything.
    pub include: Vec<String>,
    /// Glob patterns relative to `root`, applied after `include`.
    pub exclude: Vec<String>,
    /// How often the whole tree is scanned and the two roots compared,
    /// whatever the file watcher says. Default 10000, at least 100.
    pub reconcile_ms: u64,
}

pub const DEFAULT_RECONCILE_MS: u64 = 10_000;

/// `[[serial]]`: a serial port carried over the network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SerialPort {
    pub name: String,
    pub mode: SerialMode,
    /// Serve mode: the local serial device.
    pub device: Option<PathBuf>,
    /// Serve mode: the TCP listener for clients. Connect mode: optional TCP presentation.
    pub listen: Option<SocketAddr>,
    /// What is spoken on the network side (to clients in serve mode, to the
    /// device servers in connect mode). Default raw.
    pub protocol: SerialProtocol,
    /// Connect mode: one or two `"HOST:PORT"` device servers (any
    /// `rfc2217://` or `raw://` prefix written in the file is removed).
    pub device_servers: Vec<String>,
    /// Connect mode: a stable pty path presented as a local serial port.
    pub pty: Option<PathBuf>,
    pub active: SerialActive,
    /// What happens when a TCP client connects while another is connected.
    pub client_policy: SerialClientPolicy,
    /// TCP client addresses allowed to connect; empty allows any.
    pub allow: Vec<IpAddr>,
    /// Drop a TCP client after this long with no data either way; 0 = never.
    pub idle_timeout_ms: u64,
    /// Append every chunk each way to this file as hex with a timestamp (absolute).
    pub trace_file: Option<PathBuf>,
    /// TCP keepalive idle time on every connection (clients and device servers).
    pub keepalive_idle_ms: u64,
    /// TCP_USER_TIMEOUT: how long sent data may stay unacknowledged.
    pub user_timeout_ms: u64,
    /// The line settings applied when the port opens, until a client or
    /// the application sets others.
    pub line: SerialLine,
    /// Connect mode: how often the device server in use is asked a question
    /// it must answer; an answer missing for this long is a failure.
    pub health_interval_ms: u64,
    /// Connect mode: how long the first device server must stay healthy
    /// before tandem moves back to it from the second.
    pub failback_hold_ms: u64,
}

/// `[[serial]]` initial line settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SerialLine {
    pub baud: u32,
    /// 5 to 8.
    pub data_bits: u8,
    pub parity: SerialParity,
    /// 1 or 2.
    pub stop_bits: u8,
    pub flow: SerialFlow,
}

impl Default for SerialLine {
    fn default() -> Self {
        SerialLine {
            baud: 9600,
            data_bits: 8,
            parity: SerialParity::None,
            stop_bits: 1,
            flow: SerialFlow::None,
        }
    }
}

/// Default `keepalive_idle_ms`: a dead peer is noticed in seconds, not the
/// kernel's two hours.
pub const DEFAULT_SERIAL_KEEPALIVE_IDLE_MS: u64 = 5_000;
/// Default `user_timeout_ms`.
pub const DEFAULT_SERIAL_USER_TIMEOUT_MS: u64 = 10_000;
/// Default `health_interval_ms`.
pub const DEFAULT_SERIAL_HEALTH_INTERVAL_MS: u64 = 500;
/// Default `failback_hold_ms`.
pub const DEFAULT_SERIAL_FAILBACK_HOLD_MS: u64 = 30_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum SerialClientPolicy {
    /// The newcomer wins (default).
    #[default]
    KickOld,
    /// The newcomer is closed; the connected client keeps the port.
    RefuseNew,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum SerialParity {
    #[default]
    None,
    Even,
    Odd,
    Mark,
    Space,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum SerialFlow {
    #[default]
    None,
    /// Hardware (RTS/CTS).
    RtsCts,
    /// Software (XON/XOFF).
    XonXoff,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum SerialMode {
    /// A local serial port served on TCP.
    #[default]
    Serve,
    /// A networked serial port (device server) presented locally.
    Connect,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum SerialProtocol {
    #[default]
    Raw,
    Rfc2217,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum SerialActive {
    /// Open only while this node is primary (default).
    #[default]
    Primary,
    /// Open on both nodes regardless of role.
    Always,
}

impl SerialMode {
    pub fn as_str(self) -> &'static str {
        match self {
            SerialMode::Serve => "serve",
            SerialMode::Connect => "connect",
        }
    }
}

impl SerialProtocol {
    pub fn as_str(self) -> &'static str {
        match self {
            SerialProtocol::Raw => "raw",
            SerialProtocol::Rfc2217 => "rfc2217",
        }
    }
}

impl SerialActive {
    pub fn as_str(self) -> &'static str {
        match self {
            SerialActive::Primary => "primary",
            SerialActive::Always => "always",
        }
    }
}

impl Config {
    /// Reads, parses and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse_str(&text, path)
    }

    /// Parses and validates `text`; `source` names it in errors and in [`Config::source`].
    pub fn parse_str(text: &str, source: &Path) -> Result<Config, ConfigError> {
        parse::parse(text, source)
    }

    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// The other node of the pair (`None` if `name` is not a node).
    pub fn peer_of(&self, name: &str) -> Option<&Node> {
        self.node(name)?;
        self.nodes.iter().find(|n| n.name != name)
    }

    /// Picks this machine's node: `explicit` if given (an error listing the
    /// valid names if unknown), else the node named `hostname`, else the node
    /// named after the first label of `hostname` (`a` for `a.example.net`).
    pub fn pick_node(&self, explicit: Option<&str>, hostname: &str) -> Result<&Node, ConfigError> {
        let names = self
            .nodes
            .iter()
            .map(|n| format!("{:?}", n.name))
            .collect::<Vec<_>>()
            .join(" and ");
        if let Some(name) = explicit {
            return self.node(name).ok_or_else(|| ConfigError::NoSuchNode {
                file: self.source.clone(),
                message: format!("no node named {name:?}; the nodes are {names}"),
            });
        }
        let short = hostname.split('.').next().unwrap_or(hostname);
        self.node(hostname)
            .or_else(|| self.node(short))
            .ok_or_else(|| ConfigError::NoSuchNode {
                file: self.source.clone(),
                message: format!(
                    "this machine's host name {hostname:?} matches no node; the nodes are {names}: \
                     name this machine's node explicitly"
                ),
            })
    }

    /// The data directory of `node` (its override or `pair.data_dir`).
    pub fn data_dir(&self, node: &Node) -> PathBuf {
        node.data_dir(&self.pair).to_path_buf()
    }
}

/// A valid config for two nodes `a` and `b` on this machine, all on
/// 127.0.0.1: pair "demo", key file `dir/pair.key`, data dirs `dir/a` and
/// `dir/b`, control ports `base_port` and `base_port+1`, replication
/// `base_port+2` and `+3`, two UDP heartbeat links per node (`a`: `+4`, `+5`;
/// `b`: `+6`, `+7`), automatic failover, default timing, no hooks.
///
/// Never panics: a `base_port` too high for eight ports yields a text that
/// fails validation with a located error.
pub fn demo_config(dir: &Path, base_port: u16) -> String {
    let p = |off: u32| u32::from(base_port) + off;
    let d = |sub: &str| {
        let path = if sub.is_empty() {
            dir.to_path_buf()
        } else {
            dir.join(sub)
        };
        quote(&path.display().to_string())
    };
    format!(
        "# tandem demo: two nodes on this machine, everything on 127.0.0.1.\n\
         [pair]\n\
         name = \"demo\"\n\
         key_file = {key}\n\
         data_dir = {data}\n\
         failover = \"auto\"\n\
         \n\
         [[node]]\n\
         name = \"a\"\n\
         control = \"127.0.0.1:{c0}\"\n\
         replication = \"127.0.0.1:{r0}\"\n\
         heartbeat = [\"udp://127.0.0.1:{h0}\", \"udp://127.0.0.1:{h1}\"]\n\
         data_dir = {da}\n\
         \n\
         [[node]]\n\
         name = \"b\"\n\
         control = \"127.0.0.1:{c1}\"\n\
         replication = \"127.0.0.1:{r1}\"\n\
         heartbeat = [\"udp://127.0.0.1:{h2}\", \"udp://127.0.0.1:{h3}\"]\n\
         data_dir = {db}\n",
        key = d("pair.key"),
        data = d(""),
        da = d("a"),
        db = d("b"),
        c0 = p(0),
        c1 = p(1),
        r0 = p(2),
        r1 = p(3),
        h0 = p(4),
        h1 = p(5),
        h2 = p(6),
        h3 = p(7),
    )
}

/// `s` as a TOML basic string.
fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}
