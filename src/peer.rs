//! The replication link: one authenticated TCP connection between the nodes,
//! carrying [`PeerMessage`]s (the switchover conversation now; database and
//! file streams later).
//!
//! The node listed first in the config dials the other's replication
//! address; the other accepts. Only one connection is live at a time: a new
//! one replaces the old, whose reader is stopped first, so messages of one
//! switchover are never handled out of order across two connections.

use crate::endpoint::Endpoint;
use crate::node::Node;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tandem_sync::message::{self, PeerMessage};
use tandem_sync::wire::{FrameReader, FRAME_BYTES_MAX_DEFAULT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

/// A keepalive goes out this often; a connection silent for `SILENT` is dropped.
const KEEPALIVE: Duration = Duration::from_millis(500);
const SILENT: Duration = Duration::from_secs(3);
const HANDSHAKE_WITHIN: Duration = Duration::from_secs(3);
/// Messages waiting to be written; a full queue means the peer is stuck.
const OUTBOX: usize = 1024;

/// The sending half of the live connection, if any.
pub struct PeerLink {
    tx: Mutex<Option<(u64, mpsc::Sender<PeerMessage>)>>,
    /// Counts established connections, so that the database engines say
    /// where they stand on each new one.
    generation: watch::Sender<u64>,
    /// Why the last attempt failed, so that a misconfigured peer gives one
    /// log line per reason, not one per reconnection attempt.
    refused_reason: Mutex<Option<String>>,
}

impl Default for PeerLink {
    fn default() -> Self {
        PeerLink {
            tx: Mutex::new(None),
            generation: watch::channel(0).0,
            refused_reason: Mutex::new(None),
        }
    }
}

impl PeerLink {
    /// Changes each time a new connection is established.
    pub fn connections(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    fn refused(&self, why: String) {
        let mut last = self
            .refused_reason
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if last.as_deref() != Some(why.as_str()) {
            tracing::error!("{why}");
            *last = Some(why);
        }
    }

    pub fn is_connected(&self) -> bool {
        self.tx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .is_some_and(|(_, tx)| !tx.is_closed())
    }

    /// Queue a message on the live connection. Fails at once, without
    /// waiting, when there is none or its queue is full.
    pub fn send(&self, msg: PeerMessage) -> Result<(), String> {
        let guard = self.tx.lock().unwrap_or_else(|p| p.into_inner());
        match guard.as_ref() {
            Some((_, tx)) => tx
                .try_send(msg)
                .map_err(|e| format!("replication link: {e}")),
            None => Err("the replication link to the peer is down".into()),
        }
    }

    /// [`PeerLink::send`] that hands the message back when it could not be
    /// queued, so a caller that waits and retries need not copy it.
    pub fn send_or_return(&self, msg: PeerMessage) -> Result<(), Box<(PeerMessage, String)>> {
        let guard = self.tx.lock().unwrap_or_else(|p| p.into_inner());
        match guard.as_ref() {
            Some((_, tx)) => tx.try_send(msg).map_err(|e| {
                let why = format!("replication link: {e}");
                Box::new((e.into_inner(), why))
            }),
            None => Err(Box::new((
                msg,
                "the replication link to the peer is down".into(),
            ))),
        }
    }

    fn install(&self, id: u64, tx: mpsc::Sender<PeerMessage>) {
        *self.tx.lock().unwrap_or_else(|p| p.into_inner()) = Some((id, tx));
        self.generation.send_modify(|g| *g = g.wrapping_add(1));
    }

    fn remove(&self, id: u64) {
        let mut guard = self.tx.lock().unwrap_or_else(|p| p.into_inner());
        if guard.as_ref().is_some_and(|(i, _)| *i == id) {
            *guard = None;
        }
    }
}

/// Run the replication link for the life of the node.
pub async fn run(node: Arc<Node>, listen: SocketAddr, peer_addr: SocketAddr) {
    let initiator = node.me == node.cfg.nodes[0].name;
    let mut shutdown = node.shutdown_signal();
    let mut next_id = 0u64;
    if initiator {
        loop {
            next_id += 1;
            let attempt = async {
                let stream = TcpStream::connect(peer_addr).await?;
                if let Some(session) = handshake(&node, stream, peer_addr, true).await {
                    run_session(node.clone(), session, next_id).await;
                }
                Ok::<(), std::io::Error>(())
            };
            tokio::select! {
                r = attempt => if let Err(e) = r {
                    tracing::debug!("replication link to {peer_addr}: {e}");
                },
                _ = shutdown.changed() => return,
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
    let listener = loop {
        match TcpListener::bind(listen).await {
            Ok(l) => break l,
            Err(e) => {
                tracing::error!("cannot listen on the replication address {listen}: {e}; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                    _ = shutdown.changed() => return,
                }
            }
        }
    };
    // Handshakes run beside the live session: a stray or hostile connection
    // fails its own handshake and never disturbs the session in use. Only a
    // proven peer replaces it, and only after the old session has stopped.
    let (proven_tx, mut proven) = mpsc::channel::<Session>(1);
    let handshakes = Arc::new(tokio::sync::Semaphore::new(HANDSHAKES_MAX));
    let mut current: Option<tokio::task::JoinHandle<()>> = None;
    loop {
        tokio::select! {
            a = listener.accept() => match a {
                Ok((stream, from)) => {
                    let Ok(permit) = handshakes.clone().try_acquire_owned() else {
                        tracing::warn!("replication link: too many handshakes at once; dropped {from}");
                        continue;
                    };
                    let (node, proven_tx) = (node.clone(), proven_tx.clone());
                    tokio::spawn(async move {
                        if let Some(session) = handshake(&node, stream, from, false).await {
                            let _ = proven_tx.send(session).await;
                        }
                        drop(permit);
                    });
                }
                Err(e) => tracing::warn!("replication link: accept failed: {e}"),
            },
            Some(session) = proven.recv() => {
                // Stop the old session's reader before the new one speaks.
                if let Some(old) = current.take() {
                    old.abort();
                    let _ = old.await;
                }
                next_id += 1;
                current = Some(tokio::spawn(run_session(node.clone(), session, next_id)));
            }
            _ = shutdown.changed() => {
                if let Some(old) = current.take() {
                    old.abort();
                }
                return;
            }
        }
    }
}

/// How many unproven connections may be in their handshake at once.
const HANDSHAKES_MAX: usize = 4;

/// An authenticated connection, ready to carry messages.
struct Session {
    stream: TcpStream,
    addr: SocketAddr,
    endpoint: Endpoint,
    reader: FrameReader,
}

/// The handshake on a new connection; `None` (logged once per reason) if the
/// other end is not our peer.
async fn handshake(
    node: &Node,
    mut stream: TcpStream,
    addr: SocketAddr,
    initiator: bool,
) -> Option<Session> {
    let _ = stream.set_nodelay(true);
    let mut endpoint = Endpoint::new(
        node.key.clone(),
        &node.cfg.pair.name,
        &node.me,
        initiator,
        FRAME_BYTES_MAX_DEFAULT,
    );
    let mut reader = FrameReader::new(FRAME_BYTES_MAX_DEFAULT);
    let mut buf = vec![0u8; 64 * 1024];
    // Handshake: the initiator speaks first; both sides give up after a bound.
    let handshake = async {
        if let Some(hello) = endpoint.on_tick(Instant::now(), HANDSHAKE_WITHIN) {
            stream.write_all(&hello).await.map_err(|e| e.to_string())?;
        }
        while !endpoint.is_established() {
            let n = stream.read(&mut buf).await.map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("closed by the peer during the handshake".to_string());
            }
            reader.push(&buf[..n]);
            while let Some(frame) = reader.next_frame().map_err(|e| e.to_string())? {
                let got = endpoint
                    .on_frame(Instant::now(), &frame)
                    .map_err(|e| e.to_string())?;
                if let Some(reply) = got.reply {
                    stream.write_all(&reply).await.map_err(|e| e.to_string())?;
                }
            }
        }
        Ok(())
    };
    let failed = match tokio::time::timeout(HANDSHAKE_WITHIN, handshake).await {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(format!("replication link with {} refused: {e}", addr.ip())),
        Err(_) => Some(format!(
            "replication link with {}: no handshake within {HANDSHAKE_WITHIN:?}",
            addr.ip()
        )),
    };
    if let Some(why) = failed {
        node.peer_link.refused(why);
        return None;
    }
    node.peer_link
        .refused_reason
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take();
    tracing::info!("replication link to {} ({addr}) established", node.peer);
    Some(Session {
        stream,
        addr,
        endpoint,
        reader,
    })
}

/// Carry messages on a proven connection until it ends.
async fn run_session(node: Arc<Node>, session: Session, id: u64) {
    let Session {
        stream,
        addr,
        endpoint,
        mut reader,
    } = session;
    let mut buf = vec![0u8; 64 * 1024];
    let (tx, mut rx) = mpsc::channel::<PeerMessage>(OUTBOX);
    node.peer_link.install(id, tx);
    let (mut rd, mut wr) = stream.into_split();
    let endpoint = Arc::new(Mutex::new(endpoint));
    let sealer = endpoint.clone();
    let writer = tokio::spawn(async move {
        let mut keepalive = tokio::time::interval(KEEPALIVE);
        loop {
            let msg = tokio::select! {
                m = rx.recv() => match m { Some(m) => m, None => return },
                _ = keepalive.tick() => PeerMessage::Keepalive,
            };
            let bytes = sealer
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .seal(&message::encode(&msg));
            let Some(bytes) = bytes else { return };
            if wr.write_all(&bytes).await.is_err() {
                return;
            }
        }
    });
    // Runs however the session ends, an abort included: the writer must not
    // outlive it, and the link must not claim to be up.
    let _live = Live {
        node: node.clone(),
        id,
        writer,
    };
    let why = loop {
        let mut failed = None;
        loop {
            let frame = match reader.next_frame() {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => {
                    failed = Some(e.to_string());
                    break;
                }
            };
            let opened = endpoint
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .on_frame(Instant::now(), &frame);
            match opened {
                Ok(got) => {
                    if let Some(payload) = got.payload {
                        match message::decode::<PeerMessage>("peer message", &payload) {
                            Ok(msg) => crate::switchover::on_peer_message(&node, msg).await,
                            Err(e) => {
                                failed = Some(e.to_string());
                                break;
                            }
                        }
                    }
                }
                Err(e) => {
                    failed = Some(e.to_string());
                    break;
                }
            }
        }
        if let Some(why) = failed {
            break why;
        }
        // Frames that came with the handshake were handled above first.
        let n = match tokio::time::timeout(SILENT, rd.read(&mut buf)).await {
            Err(_) => break format!("silent for {SILENT:?}"),
            Ok(Err(e)) => break e.to_string(),
            Ok(Ok(0)) => break "closed by the peer".to_string(),
            Ok(Ok(n)) => n,
        };
        reader.push(&buf[..n]);
    };
    tracing::warn!("replication link to {} ({addr}) lost: {why}", node.peer);
}

struct Live {
    node: Arc<Node>,
    id: u64,
    writer: tokio::task::JoinHandle<()>,
}

impl Drop for Live {
    fn drop(&mut self) {
        self.writer.abort();
        self.node.peer_link.remove(self.id);
    }
}
