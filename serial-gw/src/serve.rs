//! Serve mode: a local serial device on a TCP listener, raw or RFC 2217, as
//! ser2net does.
//!
//! One task owns the listener, the one client connection and the device, and
//! waits on all of them with one `select!`. A single owner means no locks on
//! the data path and a trivial shutdown: aborting the task drops, and so
//! closes, every descriptor at once, which is how [`crate::Gateway`] frees
//! the port within its 500 ms.
//!
//! The device and the client live independently. A device that vanishes (a
//! USB adapter unplugged, the far end of a pty closed) is reopened every
//! `reopen_interval` while the client stays connected; what the client set
//! meanwhile is applied at reopen. Data for an absent device is dropped and
//! counted, since a serial line has no buffer to hold it either.
//!
//! A dead client must free the port in seconds, not the two hours of the
//! kernel's default keepalive (ser2net's own is about two minutes): each
//! client socket gets a short keepalive and a TCP_USER_TIMEOUT, and an idle
//! timeout can drop a client that is alive but silent.

use crate::com_port::{self, ComPortServer, DeviceControl, LineSettings, Output};
use crate::gateway::Shared;
use mio_serial::{SerialPort, SerialStream};
use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tandem_config::SerialProtocol;
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

/// What to do when a client connects while another is connected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientPolicy {
    /// The newcomer wins: an operator reconnecting from a restarted
    /// application must not be locked out by its own stale session.
    #[default]
    KickOld,
    /// The newcomer is closed at once; the connected client keeps the port.
    RefuseNew,
}

/// Everything serve mode needs; [`ServeOptions::new`] gives the defaults.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    pub device: PathBuf,
    /// Port 0 picks a free port (tests); [`crate::PortStatus::listen`] shows it.
    pub listen: SocketAddr,
    pub protocol: SerialProtocol,
    /// Line settings applied at open, until a client sets others.
    pub initial: LineSettings,
    pub client_policy: ClientPolicy,
    /// Client addresses allowed to connect; empty allows any.
    pub allow: Vec<IpAddr>,
    /// Drop a client after this long with no data either way.
    pub idle_timeout: Option<Duration>,
    pub keepalive_idle: Duration,
    pub keepalive_interval: Duration,
    pub keepalive_retries: u32,
    /// TCP_USER_TIMEOUT: how long sent data may stay unacknowledged.
    pub user_timeout: Duration,
    /// Append every chunk each way as `SECONDS.MICROS DIR HEX` lines.
    pub trace_file: Option<PathBuf>,
    pub reopen_interval: Duration,
    /// How often modem lines are read for NOTIFY-MODEMSTATE.
    pub modem_poll_interval: Duration,
    /// A write that the device or the client does not take within this is
    /// given up: the device's data is dropped, the client is disconnected.
    pub write_timeout: Duration,
}

impl ServeOptions {
    pub fn new(device: impl Into<PathBuf>, listen: SocketAddr) -> ServeOptions {
        ServeOptions {
            device: device.into(),
            listen,
            protocol: SerialProtocol::Raw,
            initial: LineSettings::default(),
            client_policy: ClientPolicy::KickOld,
            allow: Vec::new(),
            idle_timeout: None,
            keepalive_idle: Duration::from_secs(5),
            keepalive_interval: Duration::from_secs(1),
            keepalive_retries: 3,
            user_timeout: Duration::from_secs(10),
            trace_file: None,
            reopen_interval: Duration::from_secs(1),
            modem_poll_interval: Duration::from_millis(100),
            write_timeout: Duration::from_secs(5),
        }
    }

    fn allows(&self, ip: IpAddr) -> bool {
        allows(&self.allow, ip)
    }
}

/// An empty allow-list allows any address; IPv4-mapped IPv6 addresses
/// match their IPv4 form.
pub(crate) fn allows(allow: &[IpAddr], ip: IpAddr) -> bool {
    allow.is_empty() || allow.iter().any(|a| a.to_canonical() == ip.to_canonical())
}

pub(crate) const BUF_BYTES: usize = 4096;

/// Client payload held for a device that is slower than the network; past
/// it the client is not read, so TCP flow control slows it down.
const TO_DEVICE_BYTES_MAX: usize = 64 * 1024;

enum DevIo {
    Read(std::io::Result<usize>),
    Wrote(std::io::Result<usize>),
}

/// An open serial device and what it refused so far (logged once each).
///
/// The descriptor is registered for readability only. A tty reports
/// writability after every write it takes, and with that interest
/// registered each byte sent to the device would wake the loop once more
/// for nothing, on the latency path. Writes go straight to the descriptor;
/// only when the device pushes back (its buffer is full) does a duplicate
/// descriptor get registered for writability, until the backlog is gone.
struct Device {
    port: AsyncFd<SerialStream>,
    /// A duplicate of the descriptor, registered for writability while the
    /// device has a backlog.
    backlog_fd: Option<AsyncFd<OwnedFd>>,
    /// The settings last applied, so only changes touch the device.
    applied: Option<LineSettings>,
    /// The device has no modem control lines (a pty).
    no_modem_lines: bool,
    warned: HashSet<&'static str>,
    name: String,
}

impl Device {
    fn open(opts: &ServeOptions, name: &str) -> Result<Device, String> {
        let builder = mio_serial::new(opts.device.to_string_lossy(), opts.initial.baud);
        let cannot =
            |e: &dyn std::fmt::Display| format!("cannot open {}: {e}", opts.device.display());
        let stream = SerialStream::open(&builder).map_err(|e| cannot(&e))?;
        // SAFETY: the SerialStream owns its descriptor and lives inside the
        // AsyncFd until both are dropped together, which is what
        // `register_with_interest` asks for.
        let port = unsafe { AsyncFd::register_with_interest(stream, Interest::READABLE) }
            .map_err(|e| cannot(&e.into_parts().1))?;
        Ok(Device {
            port,
            backlog_fd: None,
            applied: None,
            no_modem_lines: false,
            warned: HashSet::new(),
            name: name.to_string(),
        })
    }

    fn serial(&mut self) -> &mut SerialStream {
        self.port.get_mut()
    }

    /// Reads what the device has. A short read drained the tty, so the
    /// readiness is cleared at once rather than found out by one more
    /// read that fails with EAGAIN.
    fn poll_read(&mut self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<std::io::Result<usize>> {
        loop {
            let mut guard = match self.port.poll_read_ready_mut(cx) {
                Poll::Ready(Ok(g)) => g,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            };
            match guard.try_io(|p| p.get_mut().read(buf)) {
                Ok(Ok(n)) => {
                    if n > 0 && n < buf.len() {
                        guard.clear_ready();
                    }
                    return Poll::Ready(Ok(n));
                }
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }

    /// Writes what the device takes now; 0 when it takes nothing.
    fn write_now(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        match self.serial().write(bytes) {
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::Interrupted =>
            {
                Ok(0)
            }
            r => r,
        }
    }

    /// Writes a backlog once the device can take some of it.
    fn poll_write_backlog(
        &mut self,
        cx: &mut Context<'_>,
        bytes: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        loop {
            if self.backlog_fd.is_none() {
                // SAFETY: `port` owns this descriptor and keeps it open for
                // the whole borrow, which ends with the duplication.
                let fd = unsafe { BorrowedFd::borrow_raw(self.port.get_ref().as_raw_fd()) };
                // SAFETY: the duplicate is owned by the AsyncFd, which
                // deregisters it before the OwnedFd inside closes it.
                let registered = fd.try_clone_to_owned().and_then(|fd| {
                    unsafe { AsyncFd::register_with_interest(fd, Interest::WRITABLE) }
                        .map_err(|e| e.into_parts().1)
                });
                match registered {
                    Ok(fd) => self.backlog_fd = Some(fd),
                    Err(e) => return Poll::Ready(Err(e)),
                }
            }
            let Some(backlog_fd) = self.backlog_fd.as_ref() else {
                return Poll::Pending;
            };
            let mut guard = match backlog_fd.poll_write_ready(cx) {
                Poll::Ready(Ok(g)) => g,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            };
            let mut port: &SerialStream = self.port.get_ref();
            match guard.try_io(|_| port.write(bytes)) {
                Ok(r) => return Poll::Ready(r),
                Err(_would_block) => continue,
            }
        }
    }

    /// The backlog is written: stop watching for writability.
    fn caught_up(&mut self) {
        self.backlog_fd = None;
    }

    fn refused(&mut self, what: &'static str, err: impl std::fmt::Display) {
        if self.warned.insert(what) {
            tracing::info!(port = %self.name, "device refused {what}: {err}; answering with what is in effect");
        }
    }
}

impl DeviceControl for Device {
    fn apply(&mut self, w: &LineSettings) -> LineSettings {
        use mio_serial::{DataBits, FlowControl as F, Parity as P, StopBits as S};
        let last = self.applied;
        let changed =
            |same: fn(&LineSettings, &LineSettings) -> bool| !last.is_some_and(|l| same(&l, w));
        if changed(|a, b| a.baud == b.baud) {
            if let Err(e) = self.serial().set_baud_rate(w.baud) {
                self.refused("baud rate", e);
            }
        }
        if changed(|a, b| a.data_bits == b.data_bits) {
            let bits = match w.data_bits {
                5 => Some(DataBits::Five),
                6 => Some(DataBits::Six),
                7 => Some(DataBits::Seven),
                8 => Some(DataBits::Eight),
                _ => None,
            };
            match bits.map(|b| self.serial().set_data_bits(b)) {
                Some(Ok(())) => {}
                Some(Err(e)) => self.refused("data size", e),
                None => self.refused("data size", w.data_bits),
            }
        }
        if changed(|a, b| a.parity == b.parity) {
            let parity = match w.parity {
                com_port::Parity::None => Some(P::None),
                com_port::Parity::Odd => Some(P::Odd),
                com_port::Parity::Even => Some(P::Even),
                com_port::Parity::Mark | com_port::Parity::Space => None,
            };
            match parity.map(|p| self.serial().set_parity(p)) {
                Some(Ok(())) => {}
                Some(Err(e)) => self.refused("parity", e),
                None => self.refused("parity", "mark/space parity is not supported"),
            }
        }
        if changed(|a, b| a.stop_bits == b.stop_bits) {
            let stop = match w.stop_bits {
                com_port::StopBits::One => Some(S::One),
                com_port::StopBits::Two => Some(S::Two),
                com_port::StopBits::OnePointFive => None,
            };
            match stop.map(|s| self.serial().set_stop_bits(s)) {
                Some(Ok(())) => {}
                Some(Err(e)) => self.refused("stop size", e),
                None => self.refused("stop size", "1.5 stop bits are not supported"),
            }
        }
        if changed(|a, b| a.flow == b.flow) {
            let flow = match w.flow {
                com_port::FlowControl::None => F::None,
                com_port::FlowControl::XonXoff => F::Software,
                com_port::FlowControl::Hardware => F::Hardware,
            };
            if let Err(e) = self.serial().set_flow_control(flow) {
                self.refused("flow control", e);
            }
        }
        // Modem lines: a device without them (a pty) keeps the value as
        // the state of the virtual null-modem line (see com_port).
        if changed(|a, b| a.dtr == b.dtr) {
            if let Err(e) = self.serial().write_data_terminal_ready(w.dtr) {
                self.refused("DTR", e);
            }
        }
        if changed(|a, b| a.rts == b.rts) {
            if let Err(e) = self.serial().write_request_to_send(w.rts) {
                self.refused("RTS", e);
            }
        }
        if changed(|a, b| a.brk == b.brk) {
            let r = if w.brk {
                self.serial().set_break()
            } else {
                self.serial().clear_break()
            };
            if let Err(e) = r {
                self.refused("BREAK", e);
            }
        }
        self.applied = Some(*w);
        // Read back what the device actually has.
        let mut now = *w;
        if let Ok(b) = self.serial().baud_rate() {
            now.baud = b;
        }
        if let Ok(d) = self.serial().data_bits() {
            now.data_bits = u8::from(d);
        }
        match self.serial().parity() {
            Ok(P::None) => now.parity = com_port::Parity::None,
            Ok(P::Odd) => now.parity = com_port::Parity::Odd,
            Ok(P::Even) => now.parity = com_port::Parity::Even,
            Err(_) => {}
        }
        match self.serial().stop_bits() {
            Ok(S::One) => now.stop_bits = com_port::StopBits::One,
            Ok(S::Two) => now.stop_bits = com_port::StopBits::Two,
            Err(_) => {}
        }
        match self.serial().flow_control() {
            Ok(F::None) => now.flow = com_port::FlowControl::None,
            Ok(F::Software) => now.flow = com_port::FlowControl::XonXoff,
            Ok(F::Hardware) => now.flow = com_port::FlowControl::Hardware,
            Err(_) => {}
        }
        now
    }

    fn modem_lines(&mut self) -> Option<u8> {
        use crate::rfc2217::modem;
        if self.no_modem_lines {
            return None;
        }
        let read = |s: &mut SerialStream| -> Result<u8, mio_serial::Error> {
            let mut v = 0;
            if s.read_clear_to_send()? {
                v |= modem::CTS;
            }
            if s.read_data_set_ready()? {
                v |= modem::DSR;
            }
            if s.read_ring_indicator()? {
                v |= modem::RI;
            }
            if s.read_carrier_detect()? {
                v |= modem::CD;
            }
            Ok(v)
        };
        match read(self.serial()) {
            Ok(v) => Some(v),
            Err(e) => {
                self.no_modem_lines = true;
                self.refused("modem state", e);
                None
            }
        }
    }

    fn purge(&mut self, which: u8) {
        use crate::rfc2217::purge;
        use mio_serial::ClearBuffer;
        let buffer = match which {
            purge::RECEIVE => ClearBuffer::Input,
            purge::TRANSMIT => ClearBuffer::Output,
            _ => ClearBuffer::All,
        };
        if let Err(e) = self.serial().clear(buffer) {
            self.refused("purge", e);
        }
    }
}

struct Client {
    stream: TcpStream,
    addr: SocketAddr,
    com: Option<ComPortServer>,
    last_activity: Instant,
}

/// The trace file: best effort, one warning if it cannot be written.
pub(crate) struct Trace {
    file: Option<std::fs::File>,
    warned: bool,
}

impl Trace {
    pub(crate) fn open(path: Option<&PathBuf>, port: &str) -> Trace {
        let file = path.and_then(|p| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .map_err(|e| tracing::warn!(port, "cannot open trace file {}: {e}", p.display()))
                .ok()
        });
        Trace {
            file,
            warned: false,
        }
    }

    pub(crate) fn record(&mut self, direction: &str, bytes: &[u8]) {
        let Some(f) = self.file.as_mut() else { return };
        let t = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let mut line = format!("{}.{:06} {direction} ", t.as_secs(), t.subsec_micros());
        for b in bytes {
            line.push_str(&format!("{b:02x}"));
        }
        line.push('\n');
        if let Err(e) = std::io::Write::write_all(f, line.as_bytes()) {
            if !self.warned {
                self.warned = true;
                tracing::warn!("trace file write failed: {e}");
            }
        }
    }
}

fn configure_client_socket(stream: &TcpStream, opts: &ServeOptions) -> std::io::Result<()> {
    tune_socket(
        stream,
        opts.keepalive_idle,
        opts.keepalive_interval,
        opts.keepalive_retries,
        opts.user_timeout,
    )
}

/// No Nagle delay (serial traffic is small and latency-bound), a short
/// keepalive and a TCP_USER_TIMEOUT, so a dead peer is noticed in seconds.
pub(crate) fn tune_socket(
    stream: &TcpStream,
    keepalive_idle: Duration,
    keepalive_interval: Duration,
    keepalive_retries: u32,
    user_timeout: Duration,
) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let sock = socket2::SockRef::from(stream);
    let ka = socket2::TcpKeepalive::new()
        .with_time(keepalive_idle)
        .with_interval(keepalive_interval)
        .with_retries(keepalive_retries);
    sock.set_tcp_keepalive(&ka)?;
    sock.set_tcp_user_timeout(Some(user_timeout))?;
    Ok(())
}

/// Serve mode on `listener`, until dropped by [`crate::Gateway::deactivate`].
///
/// The first attempt to open the device is made here, before the loop, so
/// that a device that is there is open by the time activation returns and
/// a client that connects at once finds it: bytes sent before the device
/// is open are dropped.
pub(crate) fn start(
    opts: ServeOptions,
    listener: TcpListener,
    shared: Arc<Shared>,
) -> impl std::future::Future<Output = ()> {
    let (device, open_error) = match Device::open(&opts, &shared.name) {
        Ok(mut d) => {
            tracing::info!(port = %shared.name, "device {} open", opts.device.display());
            d.apply(&opts.initial);
            shared.update(|s| {
                s.device_open = true;
                s.last_error = None;
            });
            (Some(d), None)
        }
        Err(msg) => {
            tracing::warn!(port = %shared.name, "{msg}; retrying every {:?}", opts.reopen_interval);
            shared.update(|s| s.last_error = Some(msg.clone()));
            (None, Some(msg))
        }
    };
    run(opts, listener, shared, device, open_error)
}

async fn run(
    opts: ServeOptions,
    listener: TcpListener,
    shared: Arc<Shared>,
    device: Option<Device>,
    open_error: Option<String>,
) {
    let name = shared.name.clone();
    let mut trace = Trace::open(opts.trace_file.as_ref(), &name);
    let mut device = device;
    let mut ever_opened = device.is_some();
    let mut client: Option<Client> = None;
    let mut line = opts.initial;
    let mut reopen_at = Instant::now() + opts.reopen_interval;
    let mut last_open_error = open_error;
    let mut dev_buf = vec![0u8; BUF_BYTES];
    let mut net_buf = vec![0u8; BUF_BYTES];
    // Client payload the device has not taken yet, and when it last took some.
    let mut to_dev: Vec<u8> = Vec::new();
    let mut to_dev_progress: Option<Instant> = None;
    let mut modem_tick = tokio::time::interval(opts.modem_poll_interval);
    modem_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let signature = format!("tandem {name}");

    loop {
        let suspended = client
            .as_ref()
            .and_then(|c| c.com.as_ref())
            .is_some_and(|c| c.suspended());
        let idle_deadline = match (&client, opts.idle_timeout) {
            (Some(c), Some(t)) => Some(c.last_activity + t),
            _ => None,
        };
        let need_modem_poll = device.is_some() && client.as_ref().is_some_and(|c| c.com.is_some());
        let device_absent = device.is_none();

        // Reads of the device and writes of its backlog in one future,
        // since both need it mutably. Client data is written to the device
        // as soon as it arrives; what the device does not take then waits
        // in `to_dev` and goes out from here, never awaited inline: a
        // device that is slow to take data while it has data for us (an
        // echo at full speed) would otherwise deadlock the loop until the
        // write timeout and lose data.
        let dev_io = std::future::poll_fn(|cx| {
            let Some(d) = device.as_mut() else {
                return Poll::Pending;
            };
            if !suspended {
                if let Poll::Ready(r) = d.poll_read(cx, &mut dev_buf) {
                    return Poll::Ready(DevIo::Read(r));
                }
            }
            if !to_dev.is_empty() {
                if let Poll::Ready(r) = d.poll_write_backlog(cx, &to_dev) {
                    return Poll::Ready(DevIo::Wrote(r));
                }
            }
            Poll::Pending
        });
        let write_stalled_at = to_dev_progress.map(|t| t + opts.write_timeout);
        let net_read = async {
            match client.as_mut() {
                // Back-pressure to the client while the device is behind.
                Some(c) if to_dev.len() < TO_DEVICE_BYTES_MAX => c.stream.read(&mut net_buf).await,
                _ => std::future::pending().await,
            }
        };

        tokio::select! {
            accepted = listener.accept() => {
                let (stream, addr) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // EMFILE and friends: back off a little, keep serving.
                        tracing::warn!(port = %name, "accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                if !opts.allows(addr.ip()) {
                    tracing::warn!(port = %name, "refused {addr}: not in the allow-list");
                    shared.update(|s| s.clients_refused += 1);
                    continue;
                }
                if let Some(old) = &client {
                    match opts.client_policy {
                        ClientPolicy::RefuseNew => {
                            tracing::info!(port = %name, "refused {addr}: {} is connected", old.addr);
                            shared.update(|s| s.clients_refused += 1);
                            continue;
                        }
                        ClientPolicy::KickOld => {
                            tracing::info!(port = %name, "{addr} replaces {}", old.addr);
                        }
                    }
                }
                if let Err(e) = configure_client_socket(&stream, &opts) {
                    tracing::warn!(port = %name, "cannot set TCP options for {addr}: {e}");
                }
                let com = match opts.protocol {
                    SerialProtocol::Rfc2217 => Some(ComPortServer::new(line, &signature)),
                    SerialProtocol::Raw => None,
                };
                tracing::info!(port = %name, "client {addr} connected");
                client = Some(Client { stream, addr, com, last_activity: Instant::now() });
                shared.update(|s| {
                    s.client = Some(addr);
                    s.clients_accepted += 1;
                });
            }
            _ = sleep_until_opt(write_stalled_at), if write_stalled_at.is_some() => {
                let len = to_dev.len() as u64;
                tracing::warn!(port = %name, "device took no data for {:?}; dropped {len} bytes", opts.write_timeout);
                to_dev.clear();
                to_dev_progress = None;
                shared.update(|s| s.bytes_dropped += len);
            }
            io = dev_io => {
                let r = match io {
                    DevIo::Read(r) => r,
                    DevIo::Wrote(Ok(n)) => {
                        to_dev.drain(..n);
                        to_dev_progress = (!to_dev.is_empty()).then(Instant::now);
                        if to_dev.is_empty() {
                            if let Some(d) = device.as_mut() {
                                d.caught_up();
                            }
                        }
                        shared.update(|s| s.bytes_to_device += n as u64);
                        continue;
                    }
                    DevIo::Wrote(Err(e)) => {
                        let len = to_dev.len() as u64;
                        tracing::warn!(port = %name, "device write failed: {e}; reopening");
                        device = None;
                        to_dev.clear();
                        to_dev_progress = None;
                        reopen_at = Instant::now() + opts.reopen_interval;
                        shared.update(|s| {
                            s.device_open = false;
                            s.bytes_dropped += len;
                            s.last_error = Some(format!("device write failed: {e}"));
                        });
                        continue;
                    }
                };
                let n = match r {
                    Ok(0) => Err("device closed".to_string()),
                    Ok(n) => Ok(n),
                    Err(e) if e.kind() == std::io::ErrorKind::TimedOut
                        || e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => Err(e.to_string()),
                };
                let n = match n {
                    Ok(n) => n,
                    Err(why) => {
                        let msg = format!("device {} lost: {why}; reopening", opts.device.display());
                        tracing::warn!(port = %name, "{msg}");
                        device = None;
                        let unsent = to_dev.len() as u64;
                        to_dev.clear();
                        to_dev_progress = None;
                        reopen_at = Instant::now() + opts.reopen_interval;
                        shared.update(|s| {
                            s.device_open = false;
                            s.bytes_dropped += unsent;
                            s.last_error = Some(msg);
                        });
                        continue;
                    }
                };
                let data = &dev_buf[..n];
                trace.record("dev>net", data);
                shared.update(|s| s.bytes_from_device += n as u64);
                if let Some(c) = client.as_mut() {
                    let mut out = Output::default();
                    match &c.com {
                        Some(com) => com.from_device(data, &mut out),
                        None => out.to_client.extend_from_slice(data),
                    }
                    c.last_activity = Instant::now();
                    if let Err(e) = write_client(c, &out.to_client, opts.write_timeout).await {
                        drop_client(&mut client, &shared, &name, &e);
                    }
                }
            }
            r = net_read => {
                let n = match r {
                    Ok(0) => Err("closed by the client".to_string()),
                    Ok(n) => Ok(n),
                    Err(e) => Err(e.to_string()),
                };
                let n = match n {
                    Ok(n) => n,
                    Err(why) => {
                        drop_client(&mut client, &shared, &name, &why);
                        continue;
                    }
                };
                let Some(c) = client.as_mut() else { continue };
                c.last_activity = Instant::now();
                let input = &net_buf[..n];
                trace.record("net>dev", input);
                let mut out = Output::default();
                match c.com.as_mut() {
                    Some(com) => {
                        let dev: &mut dyn DeviceControl = match device.as_mut() {
                            Some(d) => d,
                            None => &mut com_port::Detached,
                        };
                        com.from_client(input, dev, &mut out);
                        line = *com.wanted();
                        for m in out.malformed.drain(..) {
                            tracing::info!(port = %name, client = %c.addr, "refused from client: {m}");
                        }
                    }
                    None => out.to_device.extend_from_slice(input),
                }
                if !out.to_client.is_empty() {
                    if let Err(e) = write_client(c, &out.to_client, opts.write_timeout).await {
                        drop_client(&mut client, &shared, &name, &e);
                    }
                }
                if !out.to_device.is_empty() {
                    match device.as_mut() {
                        Some(d) => {
                            // Straight to the device unless a backlog is
                            // ahead of it, so no loop turn is added.
                            let taken = if to_dev.is_empty() {
                                d.write_now(&out.to_device)
                            } else {
                                Ok(0)
                            };
                            match taken {
                                Ok(n) => {
                                    if n > 0 {
                                        shared.update(|s| s.bytes_to_device += n as u64);
                                    }
                                    let rest = &out.to_device[n..];
                                    if !rest.is_empty() {
                                        if to_dev.is_empty() {
                                            to_dev_progress = Some(Instant::now());
                                        }
                                        to_dev.extend_from_slice(rest);
                                    }
                                }
                                Err(e) => {
                                    let len = (out.to_device.len() + to_dev.len()) as u64;
                                    tracing::warn!(port = %name, "device write failed: {e}; reopening");
                                    device = None;
                                    to_dev.clear();
                                    to_dev_progress = None;
                                    reopen_at = Instant::now() + opts.reopen_interval;
                                    shared.update(|s| {
                                        s.device_open = false;
                                        s.bytes_dropped += len;
                                        s.last_error = Some(format!("device write failed: {e}"));
                                    });
                                }
                            }
                        }
                        None => {
                            let len = out.to_device.len() as u64;
                            shared.update(|s| s.bytes_dropped += len);
                        }
                    }
                }
            }
            _ = tokio::time::sleep_until(reopen_at), if device_absent => {
                match Device::open(&opts, &name) {
                    Ok(mut d) => {
                        tracing::info!(port = %name, "device {} open", opts.device.display());
                        let mut out = Output::default();
                        match client.as_mut().and_then(|c| c.com.as_mut()) {
                            Some(com) => {
                                com.device_opened(&mut d, &mut out);
                            }
                            None => {
                                d.apply(&line);
                            }
                        }
                        device = Some(d);
                        last_open_error = None;
                        let reopened = ever_opened;
                        ever_opened = true;
                        shared.update(|s| {
                            s.device_open = true;
                            s.last_error = None;
                            if reopened {
                                s.reconnects += 1;
                            }
                        });
                        if let Some(c) = client.as_mut() {
                            if !out.to_client.is_empty() {
                                if let Err(e) = write_client(c, &out.to_client, opts.write_timeout).await {
                                    drop_client(&mut client, &shared, &name, &e);
                                }
                            }
                        }
                    }
                    Err(msg) => {
                        if last_open_error.as_deref() != Some(msg.as_str()) {
                            tracing::warn!(port = %name, "{msg}; retrying every {:?}", opts.reopen_interval);
                            last_open_error = Some(msg.clone());
                        }
                        shared.update(|s| s.last_error = Some(msg));
                        reopen_at = Instant::now() + opts.reopen_interval;
                    }
                }
            }
            _ = sleep_until_opt(idle_deadline), if idle_deadline.is_some() => {
                drop_client(&mut client, &shared, &name, "idle timeout");
            }
            _ = modem_tick.tick(), if need_modem_poll => {
                if let (Some(c), Some(d)) = (client.as_mut(), device.as_mut()) {
                    if let Some(com) = c.com.as_mut() {
                        let mut out = Output::default();
                        com.poll_modem(d, &mut out);
                        if !out.to_client.is_empty() {
                            if let Err(e) = write_client(c, &out.to_client, opts.write_timeout).await {
                                drop_client(&mut client, &shared, &name, &e);
                            }
                        }
                    }
                }
            }
        }
        if let Some(com) = client.as_ref().and_then(|c| c.com.as_ref()) {
            let settings = *com.effective();
            shared.update(|s| s.settings = Some(settings));
        }
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

async fn write_client(c: &mut Client, bytes: &[u8], timeout: Duration) -> Result<(), String> {
    match tokio::time::timeout(timeout, c.stream.write_all(bytes)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("client took no data for {timeout:?}")),
    }
}

fn drop_client(client: &mut Option<Client>, shared: &Shared, name: &str, why: &str) {
    if let Some(c) = client.take() {
        tracing::info!(port = %name, "client {} disconnected: {why}", c.addr);
        shared.update(|s| s.client = None);
    }
}
