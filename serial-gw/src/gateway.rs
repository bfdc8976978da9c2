//! One [`Gateway`] per `[[serial]]` port: the seam the node's role changes
//! drive.
//!
//! The node calls [`Gateway::activate`] on promotion (or at start for
//! `active = "always"`) and [`Gateway::deactivate`] on demotion. Deactivation
//! must free everything within 500 ms, because the other node is about to
//! open the same device server, whose single connection slot must be free by
//! then: it aborts the port's one task, which owns every descriptor, and
//! waits for it to be gone.
//!
//! Each active port runs on its own thread, in a single-threaded tokio
//! runtime: serial traffic is small and latency-bound, and the node's main
//! runtime is busy with database and file streams that must never delay
//! it (nor can work stealing move it between cores mid-exchange). The port's
//! one task owns every descriptor; stopping it and dropping the runtime
//! closes them all.
//!
//! A port whose device cannot be opened still activates: the failure shows in
//! [`PortStatus::last_error`] and is retried, and the rest of tandem is not
//! affected. Only a listener that cannot be bound fails activation, since
//! then nobody could ever reach the port.

use crate::com_port::{FlowControl, LineSettings, Parity, StopBits};
use crate::connect::{self, ConnectOptions};
use crate::pty::Pty;
use crate::serve::{self, ClientPolicy, ServeOptions};
use serde::Serialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tandem_config::{
    SerialClientPolicy, SerialFlow, SerialLine, SerialMode, SerialParity, SerialPort,
};
use tokio::sync::oneshot;

/// How long [`Gateway::deactivate`] may take.
pub const DEACTIVATE_MS_MAX: u64 = 500;

/// Where a port stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PortState {
    /// Not active on this node (standby, or never activated).
    Inactive,
    /// Listening, no client.
    Listening,
    /// A client is connected.
    Connected,
}

/// What the operator sees for one port.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PortStatus {
    pub name: String,
    pub mode: &'static str,
    pub protocol: &'static str,
    pub state: PortState,
    /// The bound listener (its real port when port 0 was configured).
    pub listen: Option<SocketAddr>,
    pub device: Option<String>,
    pub device_open: bool,
    /// The connected client.
    pub client: Option<SocketAddr>,
    /// Connect mode: the device server in use. Always `None` in serve mode.
    pub device_server: Option<String>,
    /// The line settings in effect for the current RFC 2217 session.
    pub settings: Option<LineSettings>,
    pub bytes_to_device: u64,
    pub bytes_from_device: u64,
    /// Client bytes dropped because the device was away or stuck.
    pub bytes_dropped: u64,
    /// Serve mode: times the device was reopened after being lost.
    /// Connect mode: device server connections made after the first.
    pub reconnects: u64,
    /// Connect mode: times the device server in use was left (lost, or
    /// left to fail back to the first).
    pub failovers: u64,
    /// Connect mode: the pty slave (`/dev/pts/N`) the `pty` path links to.
    pub pty: Option<String>,
    pub clients_accepted: u64,
    /// Connections refused by the allow-list or the refuse-new policy.
    pub clients_refused: u64,
    pub last_error: Option<String>,
}

/// State shared between a port's task and its [`Gateway`].
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) name: String,
    status: Mutex<PortStatus>,
}

impl Shared {
    /// Applies `f` to the status. The lock is held only for `f`.
    pub(crate) fn update(&self, f: impl FnOnce(&mut PortStatus)) {
        let mut s = match self.status.lock() {
            Ok(s) => s,
            // A panic elsewhere while updating counters leaves them usable.
            Err(poisoned) => poisoned.into_inner(),
        };
        f(&mut s);
    }

    fn snapshot(&self) -> PortStatus {
        match self.status.lock() {
            Ok(s) => s.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("serial port {port}: cannot listen on {addr}: {source}")]
    Bind {
        port: String,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("serial port {port}: cannot create the pty at {path}: {source}")]
    Pty {
        port: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("serial port {port}: {reason}")]
    Config { port: String, reason: String },
    #[error("serial port {port}: cannot start its thread: {source}")]
    Thread {
        port: String,
        source: std::io::Error,
    },
    /// No longer returned: connect mode is built. Kept so that callers
    /// matching on it still compile.
    #[error("serial port {port}: connect mode is not implemented yet")]
    ConnectModeNotImplemented { port: String },
}

#[derive(Clone, Debug)]
enum Mode {
    Serve(ServeOptions),
    Connect(ConnectOptions),
}

/// One `[[serial]]` port.
#[derive(Debug)]
pub struct Gateway {
    mode: Mode,
    shared: Arc<Shared>,
    running: tokio::sync::Mutex<Option<Running>>,
}

/// An active port's thread.
#[derive(Debug)]
struct Running {
    /// Sent, or dropped, to stop the port.
    stop: oneshot::Sender<()>,
    /// Closed once the port's runtime, and with it every descriptor, is gone.
    gone: oneshot::Receiver<()>,
    thread: std::thread::JoinHandle<()>,
}

/// The config's line settings as the gateway's.
fn line_settings(line: &SerialLine) -> LineSettings {
    LineSettings {
        baud: line.baud,
        data_bits: line.data_bits,
        parity: match line.parity {
            SerialParity::None => Parity::None,
            SerialParity::Even => Parity::Even,
            SerialParity::Odd => Parity::Odd,
            SerialParity::Mark => Parity::Mark,
            SerialParity::Space => Parity::Space,
        },
        stop_bits: if line.stop_bits == 2 {
            StopBits::Two
        } else {
            StopBits::One
        },
        flow: match line.flow {
            SerialFlow::None => FlowControl::None,
            SerialFlow::RtsCts => FlowControl::Hardware,
            SerialFlow::XonXoff => FlowControl::XonXoff,
        },
        ..LineSettings::default()
    }
}

impl Gateway {
    /// A gateway from the config, every `[[serial]]` key applied.
    pub fn from_config(port: &SerialPort) -> Result<Gateway, GatewayError> {
        let config_error = |reason: &str| GatewayError::Config {
            port: port.name.clone(),
            reason: reason.to_string(),
        };
        let client_policy = match port.client_policy {
            SerialClientPolicy::KickOld => ClientPolicy::KickOld,
            SerialClientPolicy::RefuseNew => ClientPolicy::RefuseNew,
        };
        let idle_timeout =
            (port.idle_timeout_ms > 0).then(|| Duration::from_millis(port.idle_timeout_ms));
        match port.mode {
            SerialMode::Connect => {
                if port.device_servers.is_empty() {
                    return Err(config_error("connect mode needs `device_servers`"));
                }
                if port.pty.is_none() && port.listen.is_none() {
                    return Err(config_error("connect mode needs `pty` or `listen`"));
                }
                let mut o = ConnectOptions::new(port.device_servers.clone(), port.protocol);
                o.listen = port.listen;
                o.pty = port.pty.clone();
                o.initial = line_settings(&port.line);
                o.client_policy = client_policy;
                o.allow = port.allow.clone();
                o.idle_timeout = idle_timeout;
                o.keepalive_idle = Duration::from_millis(port.keepalive_idle_ms);
                o.user_timeout = Duration::from_millis(port.user_timeout_ms);
                o.trace_file = port.trace_file.clone();
                o.health_interval = Duration::from_millis(port.health_interval_ms.max(1));
                o.failback_hold = Duration::from_millis(port.failback_hold_ms);
                Ok(Gateway::connect(port.name.clone(), o))
            }
            SerialMode::Serve => {
                let device = port
                    .device
                    .clone()
                    .ok_or_else(|| config_error("serve mode needs `device`"))?;
                let listen = port
                    .listen
                    .ok_or_else(|| config_error("serve mode needs `listen`"))?;
                let mut o = ServeOptions::new(device, listen);
                o.protocol = port.protocol;
                o.initial = line_settings(&port.line);
                o.client_policy = client_policy;
                o.allow = port.allow.clone();
                o.idle_timeout = idle_timeout;
                o.keepalive_idle = Duration::from_millis(port.keepalive_idle_ms);
                o.user_timeout = Duration::from_millis(port.user_timeout_ms);
                o.trace_file = port.trace_file.clone();
                Ok(Gateway::serve(port.name.clone(), o))
            }
        }
    }

    fn new(name: String, mode: Mode) -> Gateway {
        let (mode_name, protocol, device) = match &mode {
            Mode::Serve(o) => ("serve", o.protocol, Some(o.device.display().to_string())),
            Mode::Connect(o) => (
                "connect",
                o.protocol,
                o.pty.as_ref().map(|p| p.display().to_string()),
            ),
        };
        let status = PortStatus {
            name: name.clone(),
            mode: mode_name,
            protocol: protocol.as_str(),
            state: PortState::Inactive,
            listen: None,
            device,
            device_open: false,
            client: None,
            device_server: None,
            settings: None,
            bytes_to_device: 0,
            bytes_from_device: 0,
            bytes_dropped: 0,
            reconnects: 0,
            failovers: 0,
            pty: None,
            clients_accepted: 0,
            clients_refused: 0,
            last_error: None,
        };
        Gateway {
            mode,
            shared: Arc::new(Shared {
                name,
                status: Mutex::new(status),
            }),
            running: tokio::sync::Mutex::new(None),
        }
    }

    /// A serve-mode gateway: a local serial device on a TCP listener.
    pub fn serve(name: impl Into<String>, options: ServeOptions) -> Gateway {
        Gateway::new(name.into(), Mode::Serve(options))
    }

    /// A connect-mode gateway: device servers presented as a pty and/or a
    /// TCP listener.
    pub fn connect(name: impl Into<String>, options: ConnectOptions) -> Gateway {
        Gateway::new(name.into(), Mode::Connect(options))
    }

    pub fn name(&self) -> &str {
        &self.shared.name
    }

    pub fn client_policy(&self) -> ClientPolicy {
        match &self.mode {
            Mode::Serve(o) => o.client_policy,
            Mode::Connect(o) => o.client_policy,
        }
    }

    /// Opens the listener (and, in connect mode, the pty) and starts
    /// serving on the port's own thread. In serve mode the device is tried
    /// once before this returns; the device servers (connect mode), and a
    /// device that could not be opened, are tried again in the background.
    /// Does nothing if already active.
    pub async fn activate(&self) -> Result<(), GatewayError> {
        let mut running = self.running.lock().await;
        if running.as_ref().is_some_and(|r| !r.thread.is_finished()) {
            return Ok(());
        }
        let (ready_tx, ready_rx) = oneshot::channel();
        let (stop, stop_rx) = oneshot::channel::<()>();
        let (gone_tx, gone) = oneshot::channel::<()>();
        let mode = self.mode.clone();
        let shared = self.shared.clone();
        // Bind and pty errors are recorded in status where they happen.
        let thread_error = |source| {
            let err = GatewayError::Thread {
                port: self.shared.name.clone(),
                source,
            };
            self.shared.update(|s| s.last_error = Some(err.to_string()));
            err
        };
        let thread = std::thread::Builder::new()
            // A NUL would make spawn panic; config names never have one.
            .name(format!("serial {}", self.shared.name.replace('\0', "")))
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                rt.block_on(async move {
                    let serving = match start(mode, shared).await {
                        Ok(serving) => serving,
                        Err(e) => {
                            let _ = ready_tx.send(Ok(Err(e)));
                            return;
                        }
                    };
                    let _ = ready_tx.send(Ok(Ok(())));
                    tokio::select! {
                        () = serving => {}
                        _ = stop_rx => {}
                    }
                });
                // Closes whatever the port's task still held.
                drop(rt);
                drop(gone_tx);
            })
            .map_err(thread_error)?;
        match ready_rx.await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => return Err(e),
            Ok(Err(e)) => return Err(thread_error(e)),
            Err(_) => {
                return Err(thread_error(std::io::Error::other(
                    "the port's thread ended before starting",
                )))
            }
        }
        *running = Some(Running { stop, gone, thread });
        Ok(())
    }

    /// Closes the listener, the client and the device, within
    /// [`DEACTIVATE_MS_MAX`]. Does nothing if not active.
    pub async fn deactivate(&self) {
        let mut running = self.running.lock().await;
        if let Some(r) = running.take() {
            let _ = r.stop.send(());
            let waited =
                tokio::time::timeout(Duration::from_millis(DEACTIVATE_MS_MAX), r.gone).await;
            if waited.is_err() {
                // Cannot happen short of a blocking call inside the task;
                // say so rather than claim the port is free.
                tracing::error!(port = %self.shared.name, "serial port task did not stop within {DEACTIVATE_MS_MAX} ms");
            }
            tracing::info!(port = %self.shared.name, "serial gateway inactive");
        }
        self.shared.update(|s| {
            s.state = PortState::Inactive;
            s.listen = None;
            s.client = None;
            s.device_open = false;
            s.settings = None;
            s.device_server = None;
            s.pty = None;
        });
    }

    pub fn status(&self) -> PortStatus {
        let mut s = self.shared.snapshot();
        if s.state != PortState::Inactive {
            let connected = match self.mode {
                Mode::Serve(_) => s.client.is_some(),
                // The port is usable when a device server is connected.
                Mode::Connect(_) => s.device_open,
            };
            s.state = if connected {
                PortState::Connected
            } else {
                PortState::Listening
            };
        }
        s
    }
}

impl Drop for Gateway {
    /// A dropped gateway must not leave its port served by an orphan
    /// thread: dropping `Running` drops its stop sender, which stops it.
    fn drop(&mut self) {
        drop(self.running.get_mut().take());
    }
}

async fn bind(shared: &Shared, addr: SocketAddr) -> Result<tokio::net::TcpListener, GatewayError> {
    match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => Ok(l),
        Err(source) => {
            let err = GatewayError::Bind {
                port: shared.name.clone(),
                addr,
                source,
            };
            shared.update(|s| s.last_error = Some(err.to_string()));
            Err(err)
        }
    }
}

/// Binds and opens what a port presents, on the port's own runtime, and
/// returns the task that serves it.
async fn start(
    mode: Mode,
    shared: Arc<Shared>,
) -> Result<std::pin::Pin<Box<dyn std::future::Future<Output = ()>>>, GatewayError> {
    match mode {
        Mode::Serve(o) => {
            let listener = bind(&shared, o.listen).await?;
            let bound = listener.local_addr().ok();
            shared.update(|s| {
                s.listen = bound;
                s.state = PortState::Listening;
                s.last_error = None;
            });
            tracing::info!(port = %shared.name, "serial gateway active on {:?}", bound);
            Ok(Box::pin(serve::start(o, listener, shared)))
        }
        Mode::Connect(o) => {
            let listener = match o.listen {
                Some(a) => Some(bind(&shared, a).await?),
                None => None,
            };
            let pty = match &o.pty {
                Some(path) => match Pty::open(path, &o.initial) {
                    Ok(p) => Some(p),
                    Err(source) => {
                        let err = GatewayError::Pty {
                            port: shared.name.clone(),
                            path: path.clone(),
                            source,
                        };
                        shared.update(|s| s.last_error = Some(err.to_string()));
                        return Err(err);
                    }
                },
                None => None,
            };
            let bound = listener.as_ref().and_then(|l| l.local_addr().ok());
            let slave = pty.as_ref().map(|p| p.slave_path().display().to_string());
            shared.update(|s| {
                s.listen = bound;
                s.pty = slave;
                s.state = PortState::Listening;
                s.last_error = None;
            });
            tracing::info!(port = %shared.name, "serial gateway active: pty {:?}, listener {:?}", o.pty, bound);
            Ok(Box::pin(connect::run(o, listener, pty, shared)))
        }
    }
}
