//! Heartbeat links: one task per link (UDP or serial), each with its own
//! socket or device and its own authenticated session, never queued behind
//! data traffic.
//!
//! Every interval a link task asks the role machine for a heartbeat and
//! sends it; every frame it receives it authenticates and hands to the role
//! machine. A link that cannot be opened (a port taken, a serial adapter
//! unplugged) is retried and reported; the others carry on.

use crate::endpoint::Endpoint;
use crate::node::Node;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tandem_config::HeartbeatLink;
use tandem_sync::message::{self, Heartbeat};
use tandem_sync::wire::{self, Frame, FrameReader};

/// Heartbeats are small; anything larger on a heartbeat link is refused.
const HEARTBEAT_FRAME_BYTES_MAX: usize = 1024;

/// Start one task per heartbeat link of this node, paired by index with the
/// peer's link.
pub fn start(node: &Arc<Node>) {
    let me = node.cfg.node(&node.me).expect("own node is in the config");
    let peer = node.cfg.peer_of(&node.me).expect("peer is in the config");
    for (i, (mine, theirs)) in me.heartbeat.iter().zip(&peer.heartbeat).enumerate() {
        match (mine, theirs) {
            (HeartbeatLink::Udp(local), HeartbeatLink::Udp(remote)) => {
                tokio::spawn(run_udp(node.clone(), i, *local, *remote));
            }
            (HeartbeatLink::Serial { path, baud }, HeartbeatLink::Serial { .. }) => {
                tokio::spawn(run_serial(node.clone(), i, me.prefixed(path), *baud));
            }
            // Config validation guarantees matching kinds.
            _ => tracing::error!("heartbeat link {i}: the two nodes' links are of different kinds"),
        }
    }
}

fn endpoint(node: &Node) -> Endpoint {
    let initiator = node.me == node.cfg.nodes[0].name;
    Endpoint::new(
        node.key.clone(),
        &node.cfg.pair.name,
        &node.me,
        initiator,
        HEARTBEAT_FRAME_BYTES_MAX,
    )
}

/// A session that has heard nothing for this long is started over.
fn quiet(node: &Node) -> Duration {
    Duration::from_millis((node.cfg.timing.heartbeat_interval_ms * 3).max(300))
}

/// Handle one received frame: authenticate, decode, hand to the role
/// machine. Returns a handshake reply to send, if any.
fn receive(node: &Node, link: usize, ep: &mut Endpoint, frame: &Frame) -> Option<Vec<u8>> {
    match ep.on_frame(Instant::now(), frame) {
        Ok(got) => {
            if got.established {
                tracing::info!(
                    link,
                    "heartbeat link {link}: session with {} established",
                    node.peer
                );
            }
            if let Some(suspect) = got.suspect {
                node.set_link_error(link, Some(suspect.to_string()));
            }
            if !got.attachment.is_empty() {
                // A heartbeat takes none; its bytes are not authenticated.
                node.set_link_error(link, Some("a heartbeat with an attachment".into()));
            } else if let Some(payload) = got.payload {
                match message::decode::<Heartbeat>("heartbeat", &payload) {
                    Ok(hb) if hb.node == node.peer => node.on_heartbeat(link, &hb),
                    Ok(hb) => node.set_link_error(
                        link,
                        Some(format!("heartbeat from unexpected node {:?}", hb.node)),
                    ),
                    Err(e) => node.set_link_error(link, Some(e.to_string())),
                }
            }
            got.reply
        }
        Err(e) => {
            node.set_link_error(link, Some(e.to_string()));
            None
        }
    }
}

/// What to send on this tick: a handshake frame, or a sealed heartbeat.
fn outgoing(node: &Node, link: usize, ep: &mut Endpoint) -> Option<Vec<u8>> {
    if let Some(hs) = ep.on_tick(Instant::now(), quiet(node)) {
        return Some(hs);
    }
    if !ep.is_established() {
        return None;
    }
    let hb = node.heartbeat(link);
    ep.seal(&message::encode(&hb))
}

async fn run_udp(node: Arc<Node>, link: usize, local: SocketAddr, remote: SocketAddr) {
    let mut shutdown = node.shutdown_signal();
    let sock = loop {
        match tokio::net::UdpSocket::bind(local).await {
            Ok(s) => break s,
            Err(e) => {
                node.set_link_error(link, Some(format!("cannot bind {local}: {e}")));
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(2)) => continue,
                    _ = shutdown.changed() => return,
                }
            }
        }
    };
    let mut ep = endpoint(&node);
    let mut ticker =
        tokio::time::interval(Duration::from_millis(node.cfg.timing.heartbeat_interval_ms));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut buf = vec![0u8; 2048];
    let mut announce = node.announce_signal();
    loop {
        tokio::select! {
            // A role change goes out at once, not at the next tick.
            _ = announce.changed() => {
                if let Some(bytes) = outgoing(&node, link, &mut ep) {
                    let _ = sock.send_to(&bytes, remote).await;
                }
            }
            _ = ticker.tick() => {
                if let Some(bytes) = outgoing(&node, link, &mut ep) {
                    // A send error (no route while a cable is out) is the
                    // silence the role machine already accounts for.
                    let _ = sock.send_to(&bytes, remote).await;
                }
            }
            r = sock.recv_from(&mut buf) => {
                let (n, from) = match r {
                    Ok(got) => got,
                    Err(e) => {
                        // Not expected on an unconnected socket; never spin on it.
                        node.set_link_error(link, Some(format!("receive failed: {e}")));
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                };
                if from != remote {
                    node.set_link_error(link, Some(format!("datagram from unexpected address {from} (expected {remote})")));
                    continue;
                }
                match wire::decode_datagram(&buf[..n], HEARTBEAT_FRAME_BYTES_MAX) {
                    Ok(frame) => if let Some(reply) = receive(&node, link, &mut ep, &frame) {
                        let _ = sock.send_to(&reply, remote).await;
                    },
                    Err(e) => node.set_link_error(link, Some(format!("refused a datagram from {from}: {e}"))),
                }
            }
            _ = shutdown.changed() => {
                // One last heartbeat, which says `leaving`.
                if let Some(bytes) = outgoing(&node, link, &mut ep) {
                    let _ = sock.send_to(&bytes, remote).await;
                }
                return;
            }
        }
    }
}

async fn run_serial(node: Arc<Node>, link: usize, path: PathBuf, baud: u32) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_serial::SerialPortBuilderExt;
    let mut shutdown = node.shutdown_signal();
    let interval = Duration::from_millis(node.cfg.timing.heartbeat_interval_ms);
    loop {
        let opened = tokio_serial::new(path.to_string_lossy(), baud)
            .timeout(interval)
            .open_native_async();
        let mut port = match opened {
            Ok(p) => p,
            Err(e) => {
                node.set_link_error(
                    link,
                    Some(format!("cannot open {}: {e}; retrying", path.display())),
                );
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    _ = shutdown.changed() => return,
                }
            }
        };
        tracing::info!(link, "heartbeat link {link}: opened {}", path.display());
        let mut ep = endpoint(&node);
        let mut reader = FrameReader::new(HEARTBEAT_FRAME_BYTES_MAX);
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut buf = vec![0u8; 2048];
        let mut announce = node.announce_signal();
        let failure = loop {
            tokio::select! {
                _ = announce.changed() => {
                    if let Some(bytes) = outgoing(&node, link, &mut ep) {
                        if let Err(e) = port.write_all(&bytes).await {
                            break e.to_string();
                        }
                    }
                }
                _ = ticker.tick() => {
                    if let Some(bytes) = outgoing(&node, link, &mut ep) {
                        if let Err(e) = port.write_all(&bytes).await {
                            break e.to_string();
                        }
                    }
                }
                r = port.read(&mut buf) => {
                    let n = match r {
                        Ok(0) => break "device closed".to_string(),
                        Ok(n) => n,
                        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => continue,
                        Err(e) => break e.to_string(),
                    };
                    reader.push(&buf[..n]);
                    loop {
                        match reader.next_frame() {
                            Ok(Some(frame)) => {
                                if let Some(reply) = receive(&node, link, &mut ep, &frame) {
                                    let _ = port.write_all(&reply).await;
                                }
                            }
                            Ok(None) => break,
                            // Line noise: skip to the next frame start.
                            Err(e) => {
                                node.set_link_error(link, Some(format!("garbled frame on {}: {e}", path.display())));
                                reader.resync();
                            }
                        }
                    }
                }
                _ = shutdown.changed() => {
                    if let Some(bytes) = outgoing(&node, link, &mut ep) {
                        let _ = port.write_all(&bytes).await;
                    }
                    return;
                }
            }
        };
        // A vanished device (adapter unplugged): report and reopen.
        node.set_link_error(
            link,
            Some(format!("{}: {failure}; reopening", path.display())),
        );
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = shutdown.changed() => return,
        }
    }
}
