//! Connect mode: tandem as the client of a primary and a standby device
//! server (raw TCP or RFC 2217), presented locally as a pty behind a stable
//! path and/or a raw TCP listener, as Moxa's Real COM driver presents a
//! networked port.
//!
//! One task owns the pty, the listener and its one client, the device
//! server connection, and the connection attempt or failback probe under
//! way (both are futures polled by the same `select!`, not tasks of their
//! own). As in serve mode, aborting the task drops every descriptor at
//! once, which is how [`crate::Gateway::deactivate`] frees the device
//! server's connection slot and removes the pty link within 500 ms.
//!
//! Failover between device servers, without the application noticing:
//!
//! - The device server in use is asked its baud rate every
//!   `health_interval` (RFC 2217); no answer by the next check, a closed
//!   connection, or a TCP keepalive / TCP_USER_TIMEOUT error is a failure.
//! - On a failure the other server is tried at once. Each connection starts
//!   with the opening negotiation and the line settings (what the config
//!   says, overlaid with what the application set on the pty), DTR and
//!   RTS, and waits for the server's answers, which status then shows.
//! - Meanwhile the pty stays open: what the application writes is held, up
//!   to `buffer_bytes_max`, and sent once connected; past that it is
//!   dropped and counted.
//! - Attempts that fail alternate between the servers with a doubling,
//!   jittered back-off, so two tandem nodes (or a flapping server) do not
//!   retry in lockstep.
//! - On the second server, the first is probed every `health_interval` (a
//!   connection, the negotiation and one answered query, then closed), and
//!   tandem moves back only once it has passed every probe for
//!   `failback_hold`.
//!
//! With `protocol = "raw"` there is no query and no setting to mirror:
//! health is the TCP state alone.

use crate::com_client::{ClientOutput, ComPortClient};
use crate::com_port::LineSettings;
use crate::gateway::Shared;
use crate::pty::{Observed, Pty};
use crate::serve::{allows, tune_socket, ClientPolicy, Trace, BUF_BYTES};
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tandem_config::SerialProtocol;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

/// Everything connect mode needs; [`ConnectOptions::new`] gives defaults.
#[derive(Clone, Debug)]
pub struct ConnectOptions {
    /// One or two `HOST:PORT`; the first is preferred.
    pub device_servers: Vec<String>,
    pub protocol: SerialProtocol,
    /// Optional raw TCP presentation (port 0 picks a free port).
    pub listen: Option<SocketAddr>,
    /// Optional pty presentation: this path becomes a symlink to the slave.
    pub pty: Option<PathBuf>,
    /// Line settings sent to every device server, until the application
    /// sets others on the pty.
    pub initial: LineSettings,
    pub client_policy: ClientPolicy,
    pub allow: Vec<IpAddr>,
    pub idle_timeout: Option<Duration>,
    pub keepalive_idle: Duration,
    pub keepalive_interval: Duration,
    pub keepalive_retries: u32,
    pub user_timeout: Duration,
    pub trace_file: Option<PathBuf>,
    /// How often the device server in use is asked a question; also how
    /// long its answer may take.
    pub health_interval: Duration,
    /// How long the first server must pass probes before tandem moves back.
    pub failback_hold: Duration,
    /// A TCP connect, the negotiation and the first answers must finish
    /// within this.
    pub connect_timeout: Duration,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// Bytes held each way while the device server is away or slow.
    pub buffer_bytes_max: usize,
    /// How often the pty's termios is read for settings to mirror.
    pub settings_poll_interval: Duration,
    /// A TCP client that takes no data for this long is disconnected.
    pub write_timeout: Duration,
}

impl ConnectOptions {
    pub fn new(device_servers: Vec<String>, protocol: SerialProtocol) -> ConnectOptions {
        ConnectOptions {
            device_servers,
            protocol,
            listen: None,
            pty: None,
            initial: LineSettings::default(),
            client_policy: ClientPolicy::KickOld,
            allow: Vec::new(),
            idle_timeout: None,
            keepalive_idle: Duration::from_secs(5),
            keepalive_interval: Duration::from_secs(1),
            keepalive_retries: 3,
            user_timeout: Duration::from_secs(10),
            trace_file: None,
            health_interval: Duration::from_millis(500),
            failback_hold: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(1),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(2),
            buffer_bytes_max: 64 * 1024,
            settings_poll_interval: Duration::from_millis(50),
            write_timeout: Duration::from_secs(5),
        }
    }
}

/// A device server connection, ready for data.
struct Established {
    read: OwnedReadHalf,
    write: OwnedWriteHalf,
    client: Option<ComPortClient>,
    /// Data the server sent during the opening.
    early: Vec<u8>,
    /// The settings sent in the opening.
    applied: LineSettings,
}

struct Conn {
    index: usize,
    read: OwnedReadHalf,
    write: OwnedWriteHalf,
    client: Option<ComPortClient>,
    /// The settings last requested on this connection.
    applied: LineSettings,
    /// Escaped bytes for the server not written yet.
    wire: Vec<u8>,
    /// A health query is out: when it was sent and the answer count then.
    query: Option<(Instant, u64)>,
}

struct TcpClient {
    stream: TcpStream,
    addr: SocketAddr,
    last_activity: Instant,
}

type Attempt = Pin<Box<dyn Future<Output = Result<Established, String>> + Send>>;
type Probe = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

/// Connects to `addr`, negotiates, applies `settings` and waits for the
/// answers. Everything within `opts.connect_timeout`.
async fn establish(
    addr: String,
    opts: ConnectOptions,
    settings: LineSettings,
) -> Result<Established, String> {
    let within = opts.connect_timeout;
    let work = async {
        let stream = TcpStream::connect(&addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        if let Err(e) = tune_socket(
            &stream,
            opts.keepalive_idle,
            opts.keepalive_interval,
            opts.keepalive_retries,
            opts.user_timeout,
        ) {
            tracing::warn!("cannot set TCP options for device server {addr}: {e}");
        }
        let (mut read, mut write) = stream.into_split();
        let mut early = Vec::new();
        let client = match opts.protocol {
            SerialProtocol::Raw => None,
            SerialProtocol::Rfc2217 => {
                let mut client = ComPortClient::new();
                let mut out = Vec::new();
                client.start(&mut out);
                client.request_settings(&settings, None, &mut out);
                write
                    .write_all(&out)
                    .await
                    .map_err(|e| format!("write: {e}"))?;
                let mut buf = [0u8; 1024];
                while !(client.com_port_agreed() && client.answered().line_complete()) {
                    let n = read
                        .read(&mut buf)
                        .await
                        .map_err(|e| format!("read: {e}"))?;
                    if n == 0 {
                        return Err("closed during the opening".to_string());
                    }
                    let mut got = ClientOutput::default();
                    client.from_server(&buf[..n], &mut got);
                    early.extend_from_slice(&got.data);
                    if !got.to_server.is_empty() {
                        write
                            .write_all(&got.to_server)
                            .await
                            .map_err(|e| format!("write: {e}"))?;
                    }
                }
                Some(client)
            }
        };
        Ok(Established {
            read,
            write,
            client,
            early,
            applied: settings,
        })
    };
    match tokio::time::timeout(within, work).await {
        Ok(r) => r,
        Err(_) => Err(format!("no complete answer within {within:?}")),
    }
}

/// A failback probe: the opening and one answered query, then closed.
async fn probe(addr: String, opts: ConnectOptions) -> Result<(), String> {
    let within = opts.health_interval.max(Duration::from_millis(100));
    let work = async {
        let stream = TcpStream::connect(&addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        if opts.protocol == SerialProtocol::Raw {
            return Ok(());
        }
        let _ = stream.set_nodelay(true);
        let (mut read, mut write) = stream.into_split();
        let mut client = ComPortClient::new();
        let mut out = Vec::new();
        client.start(&mut out);
        client.query(&mut out);
        write
            .write_all(&out)
            .await
            .map_err(|e| format!("write: {e}"))?;
        let mut buf = [0u8; 512];
        while client.answered().baud.is_none() {
            let n = read
                .read(&mut buf)
                .await
                .map_err(|e| format!("read: {e}"))?;
            if n == 0 {
                return Err("closed".to_string());
            }
            let mut got = ClientOutput::default();
            client.from_server(&buf[..n], &mut got);
            if !got.to_server.is_empty() {
                let _ = write.write_all(&got.to_server).await;
            }
        }
        Ok(())
    };
    match tokio::time::timeout(within, work).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {within:?}")),
    }
}

/// A small xorshift for back-off jitter, seeded per port: jitter needs no
/// quality, only that two nodes do not draw the same delays.
struct Jitter(u64);

impl Jitter {
    fn new(name: &str) -> Jitter {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write(name.as_bytes());
        Jitter(h.finish() | 1)
    }

    /// `d` scaled by a factor in [0.75, 1.25).
    fn apply(&mut self, d: Duration) -> Duration {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        let f = 0.75 + (self.0 % 1000) as f64 / 2000.0;
        d.mul_f64(f)
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

async fn poll_opt<T>(f: &mut Option<Pin<Box<dyn Future<Output = T> + Send>>>) -> T {
    match f.as_mut() {
        Some(f) => f.as_mut().await,
        None => std::future::pending().await,
    }
}

/// The connect loop; runs until aborted by [`crate::Gateway::deactivate`].
pub(crate) async fn run(
    opts: ConnectOptions,
    listener: Option<TcpListener>,
    pty: Option<Pty>,
    shared: Arc<Shared>,
) {
    let name = shared.name.clone();
    let servers = opts.device_servers.clone();
    if servers.is_empty() {
        shared.update(|s| s.last_error = Some("no device servers configured".into()));
        return std::future::pending().await;
    }
    let other = |i: usize| (i + 1) % servers.len();
    let mut trace = Trace::open(opts.trace_file.as_ref(), &name);
    let mut jitter = Jitter::new(&name);
    let mut wanted = opts.initial;
    let mut observed: Option<Observed> = pty.as_ref().and_then(|p| p.observe().ok());

    let mut conn: Option<Conn> = None;
    let mut attempt: Option<Attempt> = None;
    let mut attempt_index = 0usize;
    let mut next_attempt: Option<Instant> = Some(Instant::now());
    let mut backoff = opts.backoff_min;
    let mut ever_connected = false;
    let mut last_attempt_error: Option<String> = None;

    let mut probe_fut: Option<Probe> = None;
    let mut next_probe: Option<Instant> = None;
    let mut healthy_since: Option<Instant> = None;

    // Payload from the application held while no server is connected.
    let mut held: Vec<u8> = Vec::new();
    // Payload from the server not yet taken by the pty.
    let mut to_pty: Vec<u8> = Vec::new();
    let mut client: Option<TcpClient> = None;

    let mut pty_buf = vec![0u8; BUF_BYTES];
    let mut net_buf = vec![0u8; BUF_BYTES];
    let mut srv_buf = vec![0u8; BUF_BYTES];
    let mut settings_tick = tokio::time::interval(opts.settings_poll_interval);
    settings_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut health_tick = tokio::time::interval(opts.health_interval);
    health_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let cap = opts.buffer_bytes_max.max(BUF_BYTES);

    loop {
        // Start the attempt that is due.
        if attempt.is_none() && conn.is_none() && next_attempt.is_some_and(|t| t <= Instant::now())
        {
            next_attempt = None;
            let addr = servers[attempt_index].clone();
            attempt = Some(Box::pin(establish(addr, opts.clone(), wanted)));
        }
        let failback_wanted = conn.as_ref().is_some_and(|c| c.index != 0);
        if !failback_wanted {
            probe_fut = None;
            next_probe = None;
            healthy_since = None;
        } else if probe_fut.is_none() && next_probe.is_none() {
            next_probe = Some(Instant::now() + opts.health_interval);
        }
        if probe_fut.is_none() && next_probe.is_some_and(|t| t <= Instant::now()) {
            next_probe = None;
            probe_fut = Some(Box::pin(probe(servers[0].clone(), opts.clone())));
        }

        let connected = conn.is_some();
        // Back-pressure: read the application only while there is room
        // for what it writes, except while switching, when it is held up
        // to the cap and then dropped (counted), as a serial line drops.
        let room = match &conn {
            Some(c) => c.wire.len() < cap,
            None => true,
        };
        let is_rfc2217 = conn.as_ref().is_some_and(|c| c.client.is_some());
        let idle_deadline = match (&client, opts.idle_timeout) {
            (Some(c), Some(t)) => Some(c.last_activity + t),
            _ => None,
        };

        let pty_read = async {
            match pty.as_ref() {
                Some(p) if room => p.read(&mut pty_buf).await,
                _ => std::future::pending().await,
            }
        };
        let pty_write = async {
            match pty.as_ref() {
                Some(p) if !to_pty.is_empty() => p.write(&to_pty).await,
                _ => std::future::pending().await,
            }
        };
        let net_read = async {
            match client.as_mut() {
                Some(c) if room => c.stream.read(&mut net_buf).await,
                _ => std::future::pending().await,
            }
        };
        let accept = async {
            match listener.as_ref() {
                Some(l) => l.accept().await,
                None => std::future::pending().await,
            }
        };
        let (srv_read, srv_write) = match conn.as_mut() {
            Some(c) => (Some(&mut c.read), Some((&mut c.write, &c.wire))),
            None => (None, None),
        };
        let srv_read = async {
            match srv_read {
                Some(r) => r.read(&mut srv_buf).await,
                None => std::future::pending().await,
            }
        };
        let srv_write = async {
            match srv_write {
                Some((w, wire)) if !wire.is_empty() => w.write(wire).await,
                _ => std::future::pending().await,
            }
        };

        // What a branch decided about the connection, acted on below, once
        // the borrows of the select are over.
        let mut lost: Option<String> = None;

        tokio::select! {
            r = poll_opt(&mut attempt) => {
                attempt = None;
                let index = attempt_index;
                let addr = &servers[index];
                match r {
                    Ok(est) => {
                        tracing::info!(port = %name, "device server {addr} connected");
                        let mut c = Conn {
                            index,
                            read: est.read,
                            write: est.write,
                            client: est.client,
                            applied: est.applied,
                            wire: Vec::new(),
                            query: None,
                        };
                        // Settings the application changed during the opening.
                        if let Some(cl) = c.client.as_mut() {
                            if c.applied != wanted {
                                cl.request_settings(&wanted, Some(&c.applied), &mut c.wire);
                                c.applied = wanted;
                            }
                            cl.data(&held, &mut c.wire);
                        } else {
                            c.wire.extend_from_slice(&held);
                        }
                        held.clear();
                        deliver(&est.early, &mut sink(&pty, &mut to_pty, &mut client, cap, &opts), &shared, &mut trace).await;
                        let answered = c.client.as_ref().map(|cl| cl.answered().over(&wanted));
                        let reconnect = ever_connected;
                        ever_connected = true;
                        backoff = opts.backoff_min;
                        last_attempt_error = None;
                        shared.update(|s| {
                            s.device_server = Some(addr.clone());
                            s.device_open = true;
                            s.settings = answered;
                            s.last_error = None;
                            if reconnect {
                                s.reconnects += 1;
                            }
                        });
                        conn = Some(c);
                        health_tick.reset();
                    }
                    Err(why) => {
                        let msg = format!("device server {addr}: {why}");
                        if last_attempt_error.as_deref() != Some(msg.as_str()) {
                            tracing::warn!(port = %name, "{msg}");
                            last_attempt_error = Some(msg.clone());
                        }
                        shared.update(|s| s.last_error = Some(msg));
                        attempt_index = other(index);
                        next_attempt = Some(Instant::now() + jitter.apply(backoff));
                        backoff = (backoff * 2).min(opts.backoff_max);
                    }
                }
            }
            r = srv_read => {
                match r {
                    Ok(0) => lost = Some("closed by the device server".into()),
                    Err(e) => lost = Some(e.to_string()),
                    Ok(n) => {
                        let bytes = &srv_buf[..n];
                        let Some(c) = conn.as_mut() else { continue };
                        let data = match c.client.as_mut() {
                            Some(cl) => {
                                let mut got = ClientOutput::default();
                                cl.from_server(bytes, &mut got);
                                c.wire.extend_from_slice(&got.to_server);
                                for m in got.malformed {
                                    tracing::info!(port = %name, "refused from device server: {m}");
                                }
                                if c.query.is_some_and(|(_, before)| cl.answers() > before) {
                                    c.query = None;
                                }
                                let settings = cl.answered().over(&wanted);
                                shared.update(|s| s.settings = Some(settings));
                                got.data
                            }
                            None => bytes.to_vec(),
                        };
                        deliver(&data, &mut sink(&pty, &mut to_pty, &mut client, cap, &opts), &shared, &mut trace).await;
                    }
                }
            }
            r = srv_write => {
                match r {
                    Ok(n) => {
                        if let Some(c) = conn.as_mut() {
                            c.wire.drain(..n);
                        }
                    }
                    Err(e) => lost = Some(format!("write: {e}")),
                }
            }
            r = pty_read => {
                match r {
                    Ok(n) if n > 0 => {
                        let data = pty_buf[..n].to_vec();
                        to_server(&data, &mut conn, &mut held, cap, &shared, &mut trace);
                    }
                    // The slave is held open here, so the master cannot
                    // see a hangup; anything else is worth a line and a
                    // short pause rather than a busy loop.
                    Ok(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                    Err(e) => {
                        tracing::warn!(port = %name, "pty read failed: {e}");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
            r = pty_write => {
                match r {
                    Ok(n) => { to_pty.drain(..n); }
                    Err(e) => {
                        tracing::warn!(port = %name, "pty write failed: {e}; dropped {} bytes", to_pty.len());
                        let len = to_pty.len() as u64;
                        to_pty.clear();
                        shared.update(|s| s.bytes_dropped += len);
                    }
                }
            }
            accepted = accept => {
                let (stream, addr) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(port = %name, "accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                if !allows(&opts.allow, addr.ip()) {
                    tracing::warn!(port = %name, "refused {addr}: not in the allow-list");
                    shared.update(|s| s.clients_refused += 1);
                    continue;
                }
                if let Some(old) = &client {
                    if opts.client_policy == ClientPolicy::RefuseNew {
                        tracing::info!(port = %name, "refused {addr}: {} is connected", old.addr);
                        shared.update(|s| s.clients_refused += 1);
                        continue;
                    }
                    tracing::info!(port = %name, "{addr} replaces {}", old.addr);
                }
                if let Err(e) = tune_socket(&stream, opts.keepalive_idle, opts.keepalive_interval, opts.keepalive_retries, opts.user_timeout) {
                    tracing::warn!(port = %name, "cannot set TCP options for {addr}: {e}");
                }
                client = Some(TcpClient { stream, addr, last_activity: Instant::now() });
                shared.update(|s| {
                    s.client = Some(addr);
                    s.clients_accepted += 1;
                });
            }
            r = net_read => {
                match r {
                    Ok(n) if n > 0 => {
                        if let Some(c) = client.as_mut() {
                            c.last_activity = Instant::now();
                        }
                        let data = net_buf[..n].to_vec();
                        to_server(&data, &mut conn, &mut held, cap, &shared, &mut trace);
                    }
                    Ok(_) => drop_client(&mut client, &shared, &name, "closed by the client"),
                    Err(e) => drop_client(&mut client, &shared, &name, &e.to_string()),
                }
            }
            _ = sleep_until_opt(idle_deadline), if idle_deadline.is_some() => {
                drop_client(&mut client, &shared, &name, "idle timeout");
            }
            _ = settings_tick.tick(), if pty.is_some() => {
                if let Some(now) = pty.as_ref().and_then(|p| p.observe().ok()) {
                    if let Some(before) = observed.filter(|b| *b != now) {
                        now.changes_into(&before, &mut wanted);
                        tracing::info!(port = %name, "the application set {now:?}");
                        if let Some(c) = conn.as_mut() {
                            if let Some(cl) = c.client.as_mut() {
                                cl.request_settings(&wanted, Some(&c.applied), &mut c.wire);
                                c.applied = wanted;
                            }
                        }
                    }
                    observed = Some(now);
                }
            }
            _ = health_tick.tick(), if is_rfc2217 => {
                if let Some(c) = conn.as_mut() {
                    match (c.query, c.client.as_mut()) {
                        (Some((sent, _)), _) if sent.elapsed() >= opts.health_interval => {
                            lost = Some(format!("no answer to the health query within {:?}", opts.health_interval));
                        }
                        (None, Some(cl)) => {
                            cl.query(&mut c.wire);
                            c.query = Some((Instant::now(), cl.answers()));
                        }
                        _ => {}
                    }
                }
            }
            r = poll_opt(&mut probe_fut) => {
                probe_fut = None;
                next_probe = Some(Instant::now() + opts.health_interval);
                match r {
                    Ok(()) => {
                        let since = *healthy_since.get_or_insert_with(Instant::now);
                        if since.elapsed() >= opts.failback_hold {
                            tracing::info!(port = %name, "device server {} healthy for {:?}; moving back to it", servers[0], opts.failback_hold);
                            lost = Some("failing back to the first device server".into());
                        }
                    }
                    Err(_) => healthy_since = None,
                }
            }
            _ = sleep_until_opt(next_attempt), if next_attempt.is_some() && attempt.is_none() && !connected => {}
            _ = sleep_until_opt(next_probe), if next_probe.is_some() && probe_fut.is_none() => {}
        }

        if let Some(why) = lost {
            if let Some(c) = conn.take() {
                let addr = &servers[c.index];
                let failback = why.starts_with("failing back");
                if failback {
                    tracing::info!(port = %name, "leaving device server {addr}");
                } else {
                    tracing::warn!(port = %name, "device server {addr} lost: {why}; switching");
                }
                // Bytes written to a dead connection are gone either way;
                // those not written yet are counted as dropped.
                let unsent = c.wire.len() as u64;
                shared.update(|s| {
                    s.device_open = false;
                    s.device_server = None;
                    s.bytes_dropped += unsent;
                    s.failovers += 1;
                    if !failback {
                        s.last_error = Some(format!("device server {addr} lost: {why}"));
                    }
                });
                attempt_index = if failback { 0 } else { other(c.index) };
                next_attempt = Some(Instant::now());
            }
        }
    }
}

/// Payload from the application (pty or TCP client) for the server.
fn to_server(
    data: &[u8],
    conn: &mut Option<Conn>,
    held: &mut Vec<u8>,
    cap: usize,
    shared: &Shared,
    trace: &mut Trace,
) {
    trace.record("app>srv", data);
    match conn.as_mut() {
        Some(c) => {
            match c.client.as_ref() {
                Some(cl) => cl.data(data, &mut c.wire),
                None => c.wire.extend_from_slice(data),
            }
            shared.update(|s| s.bytes_to_device += data.len() as u64);
        }
        None => {
            let take = data.len().min(cap.saturating_sub(held.len()));
            held.extend_from_slice(&data[..take]);
            let dropped = (data.len() - take) as u64;
            shared.update(|s| {
                s.bytes_to_device += take as u64;
                s.bytes_dropped += dropped;
            });
        }
    }
}

/// Where payload from the server goes.
struct Sink<'a> {
    /// `None` when there is no pty.
    to_pty: Option<&'a mut Vec<u8>>,
    client: &'a mut Option<TcpClient>,
    cap: usize,
    write_timeout: Duration,
}

fn sink<'a>(
    pty: &Option<Pty>,
    to_pty: &'a mut Vec<u8>,
    client: &'a mut Option<TcpClient>,
    cap: usize,
    opts: &ConnectOptions,
) -> Sink<'a> {
    Sink {
        to_pty: pty.as_ref().map(|_| to_pty),
        client,
        cap,
        write_timeout: opts.write_timeout,
    }
}

/// Payload from the server for the application: the pty and the TCP client.
async fn deliver(data: &[u8], sink: &mut Sink<'_>, shared: &Shared, trace: &mut Trace) {
    if data.is_empty() {
        return;
    }
    trace.record("srv>app", data);
    let mut dropped = 0u64;
    if let Some(to_pty) = sink.to_pty.as_mut() {
        let take = data.len().min(sink.cap.saturating_sub(to_pty.len()));
        to_pty.extend_from_slice(&data[..take]);
        dropped = (data.len() - take) as u64;
    }
    shared.update(|s| {
        s.bytes_from_device += data.len() as u64;
        s.bytes_dropped += dropped;
    });
    if let Some(c) = sink.client.as_mut() {
        c.last_activity = Instant::now();
        let w = tokio::time::timeout(sink.write_timeout, c.stream.write_all(data)).await;
        let err = match w {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(_) => Some(format!("client took no data for {:?}", sink.write_timeout)),
        };
        if let Some(why) = err {
            let name = shared.name.clone();
            drop_client(sink.client, shared, &name, &why);
        }
    }
}

fn drop_client(client: &mut Option<TcpClient>, shared: &Shared, name: &str, why: &str) {
    if let Some(c) = client.take() {
        tracing::info!(port = %name, "client {} disconnected: {why}", c.addr);
        shared.update(|s| s.client = None);
    }
}
