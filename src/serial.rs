//! Role gating of the serial gateway: ports open when this node becomes
//! primary and close (within 500 ms) when it stops being primary, so the
//! device server's single connection slot is free for the new primary.
//! Ports with `active = "always"` open at start on both nodes.
//!
//! A port that cannot be built or opened is reported in status and the log;
//! the rest of tandem keeps running.

use serde_json::json;
use tandem_config::{Config, Node as NodeConfig, SerialActive};
use tandem_serial_gw::Gateway;
use tandem_sync::message::Role;

struct Port {
    name: String,
    active: SerialActive,
    gateway: Result<Gateway, String>,
}

pub struct SerialPorts {
    ports: Vec<Port>,
}

impl SerialPorts {
    pub fn from_config(cfg: &Config, node: &NodeConfig) -> SerialPorts {
        let ports = cfg
            .serial
            .iter()
            .map(|p| {
                // Per-node path prefixes let both nodes run on one machine.
                let mut p = p.clone();
                p.device = p.device.map(|d| node.prefixed(&d));
                p.pty = p.pty.map(|d| node.prefixed(&d));
                p.trace_file = p.trace_file.map(|d| node.prefixed(&d));
                let gateway = Gateway::from_config(&p).map_err(|e| e.to_string());
                if let Err(e) = &gateway {
                    tracing::error!(port = %p.name, "serial port {} unusable: {e}", p.name);
                }
                Port {
                    name: p.name.clone(),
                    active: p.active,
                    gateway,
                }
            })
            .collect();
        SerialPorts { ports }
    }

    /// Open the ports both nodes need, whatever their role.
    pub async fn start_always(&self) {
        for port in &self.ports {
            if port.active == SerialActive::Always {
                activate(port).await;
            }
        }
    }

    /// Follow a role change: open on primary, close on anything else.
    pub async fn follow(&self, role: Role) {
        for port in &self.ports {
            if port.active != SerialActive::Primary {
                continue;
            }
            if role == Role::Primary {
                activate(port).await;
            } else if let Ok(g) = &port.gateway {
                g.deactivate().await;
            }
        }
    }

    /// Stop everything (shutdown).
    pub async fn close_all(&self) {
        for port in &self.ports {
            if let Ok(g) = &port.gateway {
                g.deactivate().await;
            }
        }
    }

    pub fn status(&self) -> Vec<serde_json::Value> {
        self.ports
            .iter()
            .map(|p| match &p.gateway {
                Ok(g) => serde_json::to_value(g.status())
                    .unwrap_or_else(|e| json!({ "name": p.name, "error": e.to_string() })),
                Err(e) => json!({ "name": p.name, "state": "unusable", "last_error": e }),
            })
            .collect()
    }
}

async fn activate(port: &Port) {
    if let Ok(g) = &port.gateway {
        if let Err(e) = g.activate().await {
            tracing::error!(port = %port.name, "{e}");
        }
    }
}
