//! Harness for whole-binary tests: a pair of real `tandem run` processes on
//! loopback, their status read over the real control API, faults injected
//! with real signals. Every process started here is stopped by its PID when
//! the harness is dropped.

#![allow(dead_code)]

pub mod db;
pub mod files;

use serde_json::Value;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_tandem");

/// Timings for tests: fast enough to keep the suite short, loose enough for
/// a busy two-core machine.
pub struct Timing {
    pub heartbeat_interval_ms: u64,
    pub lease_ms: u64,
    pub lease_margin_ms: u64,
    pub dead_after_ms: u64,
    pub link_dead_after_ms: u64,
}

pub const FAST: Timing = Timing {
    heartbeat_interval_ms: 50,
    lease_ms: 500,
    lease_margin_ms: 150,
    dead_after_ms: 800,
    link_dead_after_ms: 300,
};

pub struct Options {
    pub failover: &'static str,
    pub timing: Timing,
    /// Serial heartbeat link paths per node (a pty pair), if any.
    pub serial: Option<(PathBuf, PathBuf)>,
    /// Give node b a different pair key.
    pub wrong_key: bool,
    /// Extra TOML appended to the config (hooks, tie-breaker).
    pub extra: String,
    /// Extra lines in each node's `[[node]]` table (path_prefix).
    pub node_extra: [String; 2],
}

impl Default for Options {
    fn default() -> Self {
        Options {
            failover: "auto",
            timing: FAST,
            serial: None,
            wrong_key: false,
            extra: String::new(),
            node_extra: [String::new(), String::new()],
        }
    }
}

pub struct Pair {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub names: [&'static str; 2],
    pub control: [SocketAddr; 2],
    /// Each node's UDP heartbeat port (link 0).
    pub udp_ports: [u16; 2],
    /// Each node's replication (TCP) address.
    pub replication: [SocketAddr; 2],
    children: [Option<Child>; 2],
    helpers: Vec<Child>,
    /// An nftables table this test created to drop heartbeats.
    nft_table: Option<String>,
}

/// `count` free ports on 127.0.0.1 (TCP and UDP both free), none that an
/// earlier call in this process gave.
pub fn free_ports(count: usize) -> Vec<u16> {
    // Ports handed out earlier in this process: they are free again once
    // their holders close, and the kernel gave one of them back to a later
    // call (a test's own port and its pair's control port collided).
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
    let mut ports = Vec::new();
    let mut holders = Vec::new();
    while ports.len() < count {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let p = l.local_addr().unwrap().port();
        if given.contains(&p) {
            // Held until the loop ends, so the next bind gets another.
            holders.push((l, None));
            continue;
        }
        if let Ok(u) = std::net::UdpSocket::bind(("127.0.0.1", p)) {
            ports.push(p);
            given.push(p);
            holders.push((l, Some(u)));
        }
    }
    ports
}

pub fn write_key(path: &Path) {
    let out = Command::new(BIN)
        .args(["keygen", "--force", "--out"])
        .arg(path)
        .output()
        .unwrap();
    assert!(out.status.success(), "keygen failed: {out:?}");
}

impl Pair {
    pub fn new(opts: Options) -> Pair {
        let dir = tempfile::Builder::new()
            .prefix("tandem-test-")
            .tempdir()
            .unwrap();
        let d = dir.path();
        let p = free_ports(8);
        write_key(&d.join("pair.key"));
        let key_b = if opts.wrong_key {
            write_key(&d.join("other.key"));
            d.join("other.key")
        } else {
            d.join("pair.key")
        };
        let t = &opts.timing;
        let serial = |i: usize| match &opts.serial {
            Some((a, b)) => format!(", \"serial://{}?baud=115200\"", [a, b][i].display()),
            None => String::new(),
        };
        let node = |i: usize, name: &str| {
            format!(
                r#"
[[node]]
name = "{name}"
control = "127.0.0.1:{c}"
replication = "127.0.0.1:{r}"
heartbeat = ["udp://127.0.0.1:{h1}"{serial}]
data_dir = "{d}/{name}"
{node_extra}
"#,
                c = p[i],
                r = p[2 + i],
                h1 = p[4 + i],
                serial = serial(i),
                d = d.display(),
                node_extra = opts.node_extra[i],
            )
        };
        let common = |key: &Path| {
            format!(
                r#"
[pair]
name = "test"
key_file = "{key}"
data_dir = "{d}"
failover = "{failover}"

[timing]
heartbeat_interval_ms = {hb}
lease_ms = {lease}
lease_margin_ms = {margin}
dead_after_ms = {dead}
link_dead_after_ms = {link}
switchover_timeout_ms = 5000
{nodes}
{extra}
"#,
                key = key.display(),
                d = d.display(),
                failover = opts.failover,
                hb = t.heartbeat_interval_ms,
                lease = t.lease_ms,
                margin = t.lease_margin_ms,
                dead = t.dead_after_ms,
                link = t.link_dead_after_ms,
                nodes = node(0, "a") + &node(1, "b"),
                extra = opts.extra,
            )
        };
        let config = d.join("tandem.toml");
        std::fs::write(&config, common(&d.join("pair.key"))).unwrap();
        if opts.wrong_key {
            std::fs::write(d.join("tandem-b.toml"), common(&key_b)).unwrap();
        }
        let check = Command::new(BIN)
            .args(["config", "check"])
            .arg(&config)
            .output()
            .unwrap();
        assert!(
            check.status.success(),
            "test config invalid: {}",
            String::from_utf8_lossy(&check.stderr)
        );
        Pair {
            dir,
            config,
            names: ["a", "b"],
            control: [
                format!("127.0.0.1:{}", p[0]).parse().unwrap(),
                format!("127.0.0.1:{}", p[1]).parse().unwrap(),
            ],
            udp_ports: [p[4], p[5]],
            replication: [
                format!("127.0.0.1:{}", p[2]).parse().unwrap(),
                format!("127.0.0.1:{}", p[3]).parse().unwrap(),
            ],
            children: [None, None],
            helpers: Vec::new(),
            nft_table: None,
        }
    }

    /// Cut the UDP heartbeat link: an nftables rule drops both nodes'
    /// heartbeat datagrams (only those ports, only on this machine).
    pub fn cut_udp(&mut self) {
        let nft = which("nft");
        let table = format!("tandem_test_{}_{}", std::process::id(), self.udp_ports[0]);
        let script = format!(
            "add table inet {table}\n\
             add chain inet {table} input {{ type filter hook input priority -10; policy accept; }}\n\
             add rule inet {table} input udp dport {{ {}, {} }} drop\n",
            self.udp_ports[0], self.udp_ports[1]
        );
        let mut child = Command::new(nft)
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(script.as_bytes())
            .unwrap();
        assert!(
            child.wait().unwrap().success(),
            "nft refused the rule (root needed)"
        );
        self.nft_table = Some(table);
    }

    pub fn heal_udp(&mut self) {
        if let Some(table) = self.nft_table.take() {
            let status = Command::new(which("nft"))
                .args(["delete", "table", "inet", &table])
                .status()
                .unwrap();
            assert!(status.success());
        }
    }

    pub fn log_path(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("{}.log", self.names[i]))
    }

    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.log_path(i)).unwrap_or_default()
    }

    pub fn events(&self, i: usize) -> Vec<Value> {
        let path = self.dir.path().join(self.names[i]).join("events.jsonl");
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    pub fn start(&mut self, i: usize) {
        assert!(
            self.children[i].is_none(),
            "node {} already running",
            self.names[i]
        );
        let config = if i == 1 && self.dir.path().join("tandem-b.toml").exists() {
            self.dir.path().join("tandem-b.toml")
        } else {
            self.config.clone()
        };
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(i))
            .unwrap();
        let child = Command::new(BIN)
            .args(["run", "--config"])
            .arg(&config)
            .args(["--node", self.names[i]])
            .env("TANDEM_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.children[i] = Some(child);
    }

    pub fn pid(&self, i: usize) -> nix::unistd::Pid {
        nix::unistd::Pid::from_raw(self.children[i].as_ref().expect("running").id() as i32)
    }

    pub fn signal(&self, i: usize, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(self.pid(i), sig).unwrap();
    }

    /// kill -9, and reap it.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.children[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, and wait for a clean exit.
    pub fn stop(&mut self, i: usize) -> std::process::ExitStatus {
        let mut c = self.children[i].take().expect("running");
        let pid = nix::unistd::Pid::from_raw(c.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(s) = c.try_wait().unwrap() {
                return s;
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                panic!("node {} did not stop on SIGTERM", self.names[i]);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// A helper process (socat...) stopped by PID on drop.
    pub fn adopt(&mut self, child: Child) {
        self.helpers.push(child);
    }

    pub fn status(&self, i: usize) -> Option<Value> {
        http(self.control[i], "GET", "/status", None)
            .ok()
            .and_then(|(code, v)| (code == 200).then_some(v))
    }

    /// Node i's `/metrics` page.
    pub fn metrics(&self, i: usize) -> String {
        let addr = self.control[i];
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        write!(
            s,
            "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut raw = String::new();
        s.read_to_string(&mut raw).unwrap();
        assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
        raw.split("\r\n\r\n").nth(1).unwrap_or("").to_string()
    }

    pub fn role(&self, i: usize) -> Option<String> {
        self.status(i)
            .and_then(|s| s["role"].as_str().map(str::to_string))
    }

    /// Run a CLI command against node i.
    pub fn cli(&self, i: usize, args: &[&str]) -> std::process::Output {
        self.cli_command(i, args).output().unwrap()
    }

    /// A CLI command against node i, to run as the caller needs (in the
    /// background, say).
    pub fn cli_command(&self, i: usize, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.args(args)
            .arg("--config")
            .arg(&self.config)
            .args(["--node", self.names[i]])
            .stdin(Stdio::null());
        c
    }

    /// Wait until node `primary` is primary and the other its standby, both
    /// agreeing on the epoch and on each other's roles.
    pub fn wait_roles(&self, primary: usize, within: Duration) -> u64 {
        let standby = 1 - primary;
        wait_for(
            within,
            &format!(
                "{} primary, {} standby",
                self.names[primary], self.names[standby]
            ),
            || {
                let (p, s) = (self.status(primary)?, self.status(standby)?);
                let ok = p["role"] == "primary"
                    && s["role"] == "standby"
                    && p["epoch"] == s["epoch"]
                    && p["peer"]["role"] == "standby"
                    && s["peer"]["role"] == "primary"
                    && p["peer"]["epoch"] == p["epoch"]
                    && p["peer_joined"] == true
                    && s["armed"] == true
                    && p["replication_connected"] == true
                    && s["replication_connected"] == true
                    && p["links"].as_array()?.iter().all(|l| l["up"] == true);
                ok.then(|| p["epoch"].as_u64()).flatten()
            },
        )
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        if let Some(table) = self.nft_table.take() {
            let _ = Command::new("nft")
                .args(["delete", "table", "inet", &table])
                .status();
        }
        for i in 0..2 {
            self.kill(i);
        }
        for mut h in self.helpers.drain(..) {
            let _ = h.kill();
            let _ = h.wait();
        }
        if std::thread::panicking() {
            for i in 0..2 {
                eprintln!("----- log of node {} -----\n{}", self.names[i], self.log(i));
            }
        }
    }
}

/// Poll `f` until it gives a value, or panic with `what` at the deadline.
pub fn wait_for<T>(within: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {within:?} waiting for: {what}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A minimal HTTP/1.1 client for the control API on loopback.
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> std::io::Result<(u16, Value)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let body = body.unwrap_or("");
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("");
    Ok((code, serde_json::from_str(body).unwrap_or(Value::Null)))
}

/// A pty pair from socat standing for a null-modem cable; returns the child
/// and the two link paths once both exist.
pub fn null_modem(dir: &Path, tag: &str) -> (Child, PathBuf, PathBuf) {
    let a = dir.join(format!("{tag}-a"));
    let b = dir.join(format!("{tag}-b"));
    let _ = std::fs::remove_file(&a);
    let _ = std::fs::remove_file(&b);
    let socat = which("socat");
    let child = Command::new(socat)
        .arg(format!("pty,raw,echo=0,link={}", a.display()))
        .arg(format!("pty,raw,echo=0,link={}", b.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for(Duration::from_secs(5), "socat's ptys", || {
        (a.exists() && b.exists()).then_some(())
    });
    (child, a, b)
}

/// The path of an external tool. Under CI=true a missing tool fails the
/// test loudly instead of skipping it.
pub fn which(tool: &str) -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(tool))
            .find(|p| p.is_file())
    });
    match found {
        Some(p) => p,
        None => {
            panic!("{tool} is required by this test (apt-get install {tool}); .ci/run installs it")
        }
    }
}
