//! The replication link: one authenticated TCP connection between the nodes,
//! carrying [`PeerMessage`]s: the switchover conversation, the database and
//! file-set streams. Senders write their own messages (see [`Outbound`]).
//!
//! The node listed first in the config dials the other's replication
//! address; the other accepts. Only one connection is live at a time: a new
//! one replaces the old, whose reader is stopped first, so messages of one
//! switchover are never handled out of order across two connections.

use crate::endpoint::Endpoint;
use crate::engine::lock;
use crate::node::Node;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tandem_sync::message::{self, PeerMessage};
use tandem_sync::wire::{FrameReader, SealedFrame, FRAME_BYTES_MAX_DEFAULT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Notify};

/// A keepalive goes out this often; a connection silent for `SILENT` is dropped.
const KEEPALIVE: Duration = Duration::from_millis(500);
const SILENT: Duration = Duration::from_secs(3);
const HANDSHAKE_WITHIN: Duration = Duration::from_secs(3);
/// Messages (or sealed bytes) waiting for the socket past which a send is
/// refused: the peer is slow or stuck, and the sender waits or lets go.
const OUTBOX: usize = 1024;
const OUTBOX_BYTES_MAX: usize = 64 << 20;
const LINK_DOWN: &str = "the replication link to the peer is down";

/// The sending half of the live connection, if any.
pub struct PeerLink {
    out: Mutex<Option<(u64, Arc<Outbound>)>>,
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
            out: Mutex::new(None),
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
        self.live().is_some_and(|out| !lock(&out.state).closed)
    }

    fn live(&self) -> Option<Arc<Outbound>> {
        lock(&self.out).as_ref().map(|(_, out)| out.clone())
    }

    /// Send a message on the live connection. Fails at once, without
    /// waiting, when there is none or its outbox is full.
    pub fn send(&self, msg: PeerMessage) -> Result<(), String> {
        self.send_or_return(msg).map_err(|failed| failed.1)
    }

    /// [`PeerLink::send`] that hands the message back when it could not be
    /// sent, so a caller that waits and retries need not copy it.
    pub fn send_or_return(&self, msg: PeerMessage) -> Result<(), Box<(PeerMessage, String)>> {
        match self.live() {
            Some(out) => out.send(msg),
            None => Err(Box::new((msg, LINK_DOWN.into()))),
        }
    }

    fn install(&self, id: u64, out: Arc<Outbound>) {
        *lock(&self.out) = Some((id, out));
        self.generation.send_modify(|g| *g = g.wrapping_add(1));
    }

    fn remove(&self, id: u64) {
        let mut guard = lock(&self.out);
        if guard.as_ref().is_some_and(|(i, _)| *i == id) {
            *guard = None;
        }
    }
}

/// The sending side of one connection. A sender seals a message and writes
/// it to the socket itself, on its own thread: handing each message to a
/// writer task cost a thread wake-up per message on both nodes, a
/// measurable share of tandem's CPU at a few hundred transactions a second.
/// Bulk messages (seed chunks, file data, resync plans) still go to the
/// session's flusher task, which encodes and seals them beside the sender's
/// next read rather than after it: seeding was a tenth slower with them
/// sealed inline. What waits is written out in order by the flusher as the
/// socket drains; a sender writes directly only when nothing waits, so
/// frames are never interleaved or reordered. Sealing happens under the
/// same lock as queueing, because the peer checks that frames arrive in the
/// order they were sealed.
struct Outbound {
    wr: OwnedWriteHalf,
    endpoint: Arc<Mutex<Endpoint>>,
    state: Mutex<OutState>,
    /// Wakes the flusher: something is waiting, or the link failed.
    flush: Notify,
}

enum Waiting {
    /// To be encoded and sealed when its turn comes.
    Message(PeerMessage),
    /// Being encoded by the flusher.
    Encoding,
    Sealed(SealedFrame),
}

#[derive(Default)]
struct OutState {
    /// Not yet (wholly) written; the first, once sealed, is written up to
    /// `written`.
    frames: VecDeque<Waiting>,
    written: usize,
    /// Sealed bytes in `frames` not yet written.
    bytes: usize,
    closed: bool,
}

/// Parts of a frame given to one vectored write, at most (Linux takes
/// 1024; an Attached frame has two per chunk).
const IOV_MAX: usize = 512;

fn bulk(msg: &PeerMessage) -> bool {
    matches!(
        msg,
        PeerMessage::DbSeed(_) | PeerMessage::Fs(_) | PeerMessage::DbResyncPlan(_)
    )
}

impl Outbound {
    fn send(&self, msg: PeerMessage) -> Result<(), Box<(PeerMessage, String)>> {
        let mut st = lock(&self.state);
        if st.closed {
            return Err(Box::new((msg, LINK_DOWN.into())));
        }
        if st.frames.len() >= OUTBOX || st.bytes >= OUTBOX_BYTES_MAX {
            return Err(Box::new((
                msg,
                format!(
                    "replication link: {} messages ({} bytes sealed) wait for the peer",
                    st.frames.len(),
                    st.bytes
                ),
            )));
        }
        if !st.frames.is_empty() || bulk(&msg) {
            st.frames.push_back(Waiting::Message(msg));
            drop(st);
            self.flush.notify_one();
            return Ok(());
        }
        // Not bulk, so no attachment: one buffer, written as it is.
        let Some(frame) = lock(&self.endpoint).seal_in_place(message::encode_for_frame(&msg))
        else {
            return Err(Box::new((
                msg,
                "the replication link has no session".into(),
            )));
        };
        let written = match self.wr.try_write(&frame) {
            Ok(n) if n == frame.len() => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => 0,
            Err(e) => {
                st.closed = true;
                self.flush.notify_one();
                return Err(Box::new((msg, format!("replication link: {e}"))));
            }
        };
        st.written = written;
        st.bytes += frame.len() - written;
        st.frames.push_back(Waiting::Sealed(frame.into()));
        drop(st);
        self.flush.notify_one();
        Ok(())
    }

    /// Writes what waits, as the socket takes it; returns when the link
    /// failed. Sends a keepalive every [`KEEPALIVE`].
    async fn flusher(&self) {
        let _close = CloseOnDrop(self);
        let mut keepalive = tokio::time::interval(KEEPALIVE);
        loop {
            tokio::select! {
                _ = self.flush.notified() => {}
                _ = keepalive.tick() => {
                    let _ = self.send(PeerMessage::Keepalive);
                }
            }
            while self.write_waiting() {
                if self.wr.writable().await.is_err() {
                    return;
                }
            }
            if lock(&self.state).closed {
                return;
            }
        }
    }

    /// Writes what waits until the socket is full (true) or nothing waits
    /// or the link failed (false).
    fn write_waiting(&self) -> bool {
        let mut st = lock(&self.state);
        loop {
            if st.closed {
                return false;
            }
            let Some(front) = st.frames.front_mut() else {
                return false;
            };
            if let Waiting::Message(_) = front {
                // Encoded without the lock (a bulk message takes a while), its
                // place kept so that senders queue behind it; sealed with it.
                let Waiting::Message(msg) = std::mem::replace(front, Waiting::Encoding) else {
                    return false;
                };
                drop(st);
                let encoded = message::encode_unsealed(msg);
                st = lock(&self.state);
                let Some(sealed) = lock(&self.endpoint).seal_unsealed(encoded) else {
                    st.closed = true;
                    return false;
                };
                st.bytes += sealed.len();
                if let Some(front) = st.frames.front_mut() {
                    *front = Waiting::Sealed(sealed);
                }
                continue;
            }
            let OutState {
                frames,
                written,
                bytes,
                closed,
            } = &mut *st;
            let Some(Waiting::Sealed(frame)) = frames.front() else {
                return false;
            };
            match self
                .wr
                .try_write_vectored(&frame.slices_from(*written, IOV_MAX))
            {
                Ok(n) => {
                    *written += n;
                    *bytes = bytes.saturating_sub(n);
                    if *written == frame.len() {
                        frames.pop_front();
                        *written = 0;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return true,
                Err(_) => {
                    *closed = true;
                    return false;
                }
            }
        }
    }

    /// Refuses every later send: the connection is gone.
    fn close(&self) {
        lock(&self.state).closed = true;
    }
}

/// Closes the outbox when the flusher ends, however it ends (the link
/// failed, the session was aborted, a panic): senders then fail at once.
struct CloseOnDrop<'a>(&'a Outbound);

impl Drop for CloseOnDrop<'_> {
    fn drop(&mut self) {
        self.0.close();
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
    )
    .in_order();
    let mut reader = FrameReader::new(FRAME_BYTES_MAX_DEFAULT);
    let mut buf = vec![0u8; 64 * 1024];
    // Handshake: the initiator speaks first; both sides give up after a bound.
    let handshake = async {
        if let Some(hello) = endpoint.on_tick(Instant::now(), HANDSHAKE_WITHIN) {
            stream.write_all(&hello).await.map_err(|e| e.to_string())?;
        }
        while !endpoint.is_established() {
            // One frame at a time: what the peer sent right behind its last
            // handshake frame is a session's, left in the reader for the
            // session's loop (opened here, it was lost).
            let Some(frame) = reader.next_frame().map_err(|e| e.to_string())? else {
                let n = stream.read(&mut buf).await.map_err(|e| e.to_string())?;
                if n == 0 {
                    return Err("closed by the peer during the handshake".to_string());
                }
                reader.push(&buf[..n]);
                continue;
            };
            let got = endpoint
                .on_frame(Instant::now(), &frame)
                .map_err(|e| e.to_string())?;
            if let Some(reply) = got.reply {
                stream.write_all(&reply).await.map_err(|e| e.to_string())?;
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
    let (mut rd, wr) = stream.into_split();
    let endpoint = Arc::new(Mutex::new(endpoint));
    let out = Arc::new(Outbound {
        wr,
        endpoint: endpoint.clone(),
        state: Mutex::default(),
        flush: Notify::new(),
    });
    node.peer_link.install(id, out.clone());
    let flushing = out.clone();
    let writer = tokio::spawn(async move { flushing.flusher().await });
    // Runs however the session ends, an abort included: the writer must not
    // outlive it, and the link must not claim to be up.
    let _live = Live {
        node: node.clone(),
        id,
        out,
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
                        match message::decode_attached(&payload, &got.attachment) {
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
        // The rest of a large frame (file chunks) is read straight into
        // its own buffer; anything else through `buf`, a read of which
        // may hold several small frames.
        let (read, direct) = match reader.body_room(buf.len()) {
            Some(mut room) => (
                tokio::time::timeout(SILENT, rd.read_buf(&mut room)).await,
                true,
            ),
            None => (tokio::time::timeout(SILENT, rd.read(&mut buf)).await, false),
        };
        let n = match read {
            Err(_) => break format!("silent for {SILENT:?}"),
            Ok(Err(e)) => break e.to_string(),
            Ok(Ok(0)) => break "closed by the peer".to_string(),
            Ok(Ok(n)) => n,
        };
        if direct {
            reader.filled();
        } else {
            reader.push(&buf[..n]);
        }
    };
    tracing::warn!("replication link to {} ({addr}) lost: {why}", node.peer);
}

struct Live {
    node: Arc<Node>,
    id: u64,
    out: Arc<Outbound>,
    writer: tokio::task::JoinHandle<()>,
}

impl Drop for Live {
    fn drop(&mut self) {
        self.out.close();
        self.writer.abort();
        self.node.peer_link.remove(self.id);
    }
}
