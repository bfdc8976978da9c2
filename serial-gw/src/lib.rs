//! The serial gateway: the RFC 2217 codec and the gateway I/O that serves
//! local serial ports on TCP, active only while the node is primary (or
//! always, for a port both nodes need).
//!
//! - [`rfc2217`]: the telnet / COM-PORT-OPTION codec, sans-IO.
//! - [`com_port`]: the server side of RFC 2217 as a state machine over a
//!   [`com_port::DeviceControl`], so that every answer is tested without a
//!   device.
//! - [`serve`]: serve mode, a local serial device on a TCP listener.
//! - [`gateway`]: one [`Gateway`] per `[[serial]]` port, the seam the node's
//!   role changes drive (`activate`, `deactivate`, `status`).
//!
//! - [`com_client`]: the client side of RFC 2217, sans-IO.
//! - [`connect`]: connect mode, a pair of device servers presented as a
//!   pty behind a stable path and/or a TCP listener, with health checks and
//!   failover between the servers.

pub mod com_client;
pub mod com_port;
pub mod connect;
pub mod gateway;
mod pty;
pub mod rfc2217;
pub mod serve;

pub use com_port::LineSettings;
pub use connect::ConnectOptions;
pub use gateway::{Gateway, GatewayError, PortState, PortStatus, DEACTIVATE_MS_MAX};
pub use serve::{ClientPolicy, ServeOptions};
