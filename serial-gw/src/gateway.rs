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
//! A port whose device cannot be opened still activates: the failure shows in
//! [`PortStatus::last_error`] and is retried, and the rest of tandem is not
//! affected. Only a listener that cannot be bound fails activation, since
//! then nobody could ever reach the port.

use crate::com_port::LineSettings;
use crate::serve::{self, ClientPolicy, ServeOptions};
use serde::Serialize;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tandem_config::{SerialMode, SerialPort};
use tokio::task::JoinHandle;

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
    /// Times the device was reopened after being lost.
    pub reconnects: u64,
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
    #[error("serial port {port}: {reason}")]
    Config { port: String, reason: String },
    #[error("serial port {port}: connect mode is not implemented yet")]
    ConnectModeNotImplemented { port: String },
}

/// One `[[serial]]` port.
#[derive(Debug)]
pub struct Gateway {
    options: ServeOptions,
    shared: Arc<Shared>,
    running: tokio::sync::Mutex<Option<JoinHandle<()>>>,
}

impl Gateway {
    /// A serve-mode gateway from the config. Settings the config cannot
    /// express yet (client policy, allow-list, idle timeout, trace file)
    /// take [`ServeOptions::new`]'s defaults; use [`Gateway::serve`] to set
    /// them.
    pub fn from_config(port: &SerialPort) -> Result<Gateway, GatewayError> {
        match port.mode {
            SerialMode::Connect => Err(GatewayError::ConnectModeNotImplemented {
                port: port.name.clone(),
            }),
            SerialMode::Serve => {
                let config_error = |reason: &str| GatewayError::Config {
                    port: port.name.clone(),
                    reason: reason.to_string(),
                };
                let device = port
                    .device
                    .clone()
                    .ok_or_else(|| config_error("serve mode needs `device`"))?;
                let listen = port
                    .listen
                    .ok_or_else(|| config_error("serve mode needs `listen`"))?;
                let mut options = ServeOptions::new(device, listen);
                options.protocol = port.protocol;
                Ok(Gateway::serve(port.name.clone(), options))
            }
        }
    }

    pub fn serve(name: impl Into<String>, options: ServeOptions) -> Gateway {
        let name = name.into();
        let status = PortStatus {
            name: name.clone(),
            mode: "serve",
            protocol: options.protocol.as_str(),
            state: PortState::Inactive,
            listen: None,
            device: Some(options.device.display().to_string()),
            device_open: false,
            client: None,
            device_server: None,
            settings: None,
            bytes_to_device: 0,
            bytes_from_device: 0,
            bytes_dropped: 0,
            reconnects: 0,
            clients_accepted: 0,
            clients_refused: 0,
            last_error: None,
        };
        Gateway {
            options,
            shared: Arc::new(Shared {
                name,
                status: Mutex::new(status),
            }),
            running: tokio::sync::Mutex::new(None),
        }
    }

    pub fn name(&self) -> &str {
        &self.shared.name
    }

    pub fn client_policy(&self) -> ClientPolicy {
        self.options.client_policy
    }

    /// Opens the listener and starts serving (the device is opened, and
    /// retried, in the background). Does nothing if already active.
    pub async fn activate(&self) -> Result<(), GatewayError> {
        let mut running = self.running.lock().await;
        if running.as_ref().is_some_and(|h| !h.is_finished()) {
            return Ok(());
        }
        let listener = match tokio::net::TcpListener::bind(self.options.listen).await {
            Ok(l) => l,
            Err(source) => {
                let err = GatewayError::Bind {
                    port: self.shared.name.clone(),
                    addr: self.options.listen,
                    source,
                };
                self.shared.update(|s| s.last_error = Some(err.to_string()));
                return Err(err);
            }
        };
        let bound = listener.local_addr().ok();
        self.shared.update(|s| {
            s.listen = bound;
            s.state = PortState::Listening;
            s.last_error = None;
        });
        tracing::info!(port = %self.shared.name, "serial gateway active on {:?}", bound);
        *running = Some(tokio::spawn(serve::run(
            self.options.clone(),
            listener,
            self.shared.clone(),
        )));
        Ok(())
    }

    /// Closes the listener, the client and the device, within
    /// [`DEACTIVATE_MS_MAX`]. Does nothing if not active.
    pub async fn deactivate(&self) {
        let mut running = self.running.lock().await;
        if let Some(handle) = running.take() {
            handle.abort();
            let waited =
                tokio::time::timeout(Duration::from_millis(DEACTIVATE_MS_MAX), handle).await;
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
        });
    }

    pub fn status(&self) -> PortStatus {
        let mut s = self.shared.snapshot();
        if s.state != PortState::Inactive {
            s.state = if s.client.is_some() {
                PortState::Connected
            } else {
                PortState::Listening
            };
        }
        s
    }
}

impl Drop for Gateway {
    /// A dropped gateway must not leave its port served by an orphan task.
    fn drop(&mut self) {
        if let Some(handle) = self.running.get_mut().take() {
            handle.abort();
        }
    }
}
