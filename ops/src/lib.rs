//! The operator's surface: the control HTTP API (JSON) and the status that
//! `tandem status` shows.
//!
//! ops/ knows the node only through the narrow [`NodeHandle`] trait, so the
//! API can be tested and grown (web panel, metrics) without reaching into
//! the node's internals.

mod render;

pub use render::render_status;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use tokio::net::TcpListener;

/// Everything `tandem status` shows about one node and what it knows of its peer.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Status {
    pub pair: String,
    pub node: String,
    pub role: String,
    pub epoch: u64,
    pub holder: Option<String>,
    pub failover: String,
    /// Milliseconds of lease left while primary, when a lease is required.
    pub lease_left_ms: Option<u64>,
    pub lease_required: bool,
    /// Primary: the peer is its joined standby. Standby: it may fail over.
    pub peer_joined: bool,
    pub armed: bool,
    /// Waiting for an operator after two claims on one epoch.
    pub on_hold: bool,
    pub peer: PeerStatus,
    pub links: Vec<LinkStatus>,
    pub replication_connected: bool,
    pub alarms: Vec<AlarmStatus>,
    pub history: Vec<RoleChangeStatus>,
    pub switchover: Option<SwitchoverProgress>,
    /// One object per `[[serial]]` port (the gateway's own status).
    #[serde(default)]
    pub serial: Vec<serde_json::Value>,
    /// One object per `[[database]]`: mode, positions on both sides, lag,
    /// WAL size, last checkpoint, seeding progress.
    #[serde(default)]
    pub databases: Vec<serde_json::Value>,
    /// One object per `[[fileset]]`: side, mode, entries, root hashes on
    /// both sides, pending changes, bytes queued, last sync, lag.
    #[serde(default)]
    pub filesets: Vec<serde_json::Value>,
    pub uptime_ms: u64,
}

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct PeerStatus {
    pub name: String,
    pub role: Option<String>,
    pub epoch: Option<u64>,
    pub last_heard_ms_ago: Option<u64>,
}

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct LinkStatus {
    pub index: usize,
    pub name: String,
    pub up: bool,
    pub last_seen_ms_ago: Option<u64>,
    pub rtt_ms: Option<u64>,
    pub received: u64,
    pub lost: u64,
    /// The last authentication or decoding refusal on this link, if any.
    pub last_error: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct AlarmStatus {
    pub kind: String,
    pub message: String,
    /// Unix time in milliseconds.
    pub since_unix_ms: u64,
}

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct RoleChangeStatus {
    pub at_unix_ms: u64,
    pub from: String,
    pub to: String,
    pub epoch: u64,
    pub reason: String,
}

/// One switchover as it goes: each step as it happens, then the outcome.
#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct SwitchoverProgress {
    pub op: String,
    pub steps: Vec<SwitchoverStep>,
    /// `None` while running; a slow switchover is never reported as failed
    /// while it is still running.
    pub outcome: Option<Result<(), String>>,
    pub total_ms: Option<u64>,
}

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct SwitchoverStep {
    pub step: String,
    pub elapsed_ms: u64,
}

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct PromoteRequest {
    pub force: bool,
    pub who: String,
}

/// Error body of every refused request.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Refusal {
    pub reasons: Vec<String>,
}

/// What the control API needs from the node.
#[async_trait::async_trait]
pub trait NodeHandle: Send + Sync + 'static {
    fn status(&self) -> Status;
    /// Start a switchover; its progress is then read with
    /// [`NodeHandle::switchover_progress`]. Refused with named reasons.
    async fn switchover(&self) -> Result<String, Vec<String>>;
    fn switchover_progress(&self, op: &str) -> Option<SwitchoverProgress>;
    async fn promote(&self, req: PromoteRequest) -> Result<Status, Vec<String>>;
    /// Wait until the standby acknowledged every transaction committed
    /// before the call, on every database or the one named.
    async fn barrier(&self, req: BarrierRequest) -> Result<serde_json::Value, BarrierRefusal> {
        let _ = req;
        Err(BarrierRefusal::Refused(vec![
            "this node has no databases to wait for".into(),
        ]))
    }

    /// Compare both copies of every database (or the one named): checksums
    /// at the same txid, `PRAGMA integrity_check` on the standby, the page
    /// ranges that differ. The answer says `identical`; refused with named
    /// reasons when no comparison can be made here.
    async fn verify(&self, req: VerifyRequest) -> Result<serde_json::Value, Vec<String>> {
        let _ = req;
        Err(vec!["this node has no databases to verify".into()])
    }
}

/// `POST /verify?db=NAME&timeout_ms=N`.
#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct VerifyRequest {
    pub db: Option<String>,
    pub timeout_ms: Option<u64>,
}

/// `POST /barrier?db=NAME&timeout_ms=N`.
#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct BarrierRequest {
    pub db: Option<String>,
    pub timeout_ms: Option<u64>,
}

/// Why a barrier did not return: it timed out (HTTP 504) or cannot be
/// waited for here (HTTP 409: a standby, an unknown database, a diverged copy).
#[derive(Debug, Clone)]
pub enum BarrierRefusal {
    TimedOut(Vec<String>),
    Refused(Vec<String>),
}

#[derive(Clone)]
struct Api {
    node: Arc<dyn NodeHandle>,
    token: Option<Arc<str>>,
}

pub fn router(node: Arc<dyn NodeHandle>, token: Option<String>) -> Router {
    let api = Api {
        node,
        token: token.map(Arc::from),
    };
    Router::new()
        .route("/status", get(status))
        .route("/switchover", post(switchover))
        .route("/switchover/{op}", get(switchover_progress))
        .route("/promote", post(promote))
        .route("/barrier", post(barrier))
        .route("/verify", post(verify))
        .with_state(api)
}

/// Serve the control API until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    node: Arc<dyn NodeHandle>,
    token: Option<String>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(node, token))
        .with_graceful_shutdown(shutdown)
        .await
}

fn refuse(code: StatusCode, reasons: Vec<String>) -> Response {
    (code, Json(Refusal { reasons })).into_response()
}

impl Api {
    /// The refusal to send when the request lacks the control token.
    fn refusal(&self, headers: &HeaderMap) -> Option<Response> {
        let token = self.token.as_ref()?;
        let given = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        // Compare in constant time so the token cannot be guessed byte by byte.
        let ok = given.is_some_and(|g| constant_time_eq(g.as_bytes(), token.as_bytes()));
        (!ok).then(|| {
            refuse(
                StatusCode::UNAUTHORIZED,
                vec!["a valid control token is required (Authorization: Bearer ...)".into()],
            )
        })
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn status(State(api): State<Api>, headers: HeaderMap) -> Response {
    if let Some(r) = api.refusal(&headers) {
        return r;
    }
    Json(api.node.status()).into_response()
}

async fn switchover(State(api): State<Api>, headers: HeaderMap) -> Response {
    if let Some(r) = api.refusal(&headers) {
        return r;
    }
    match api.node.switchover().await {
        Ok(op) => (StatusCode::ACCEPTED, Json(serde_json::json!({ "op": op }))).into_response(),
        Err(reasons) => refuse(StatusCode::CONFLICT, reasons),
    }
}

async fn switchover_progress(
    State(api): State<Api>,
    headers: HeaderMap,
    Path(op): Path<String>,
) -> Response {
    if let Some(r) = api.refusal(&headers) {
        return r;
    }
    match api.node.switchover_progress(&op) {
        Some(p) => Json(p).into_response(),
        None => refuse(
            StatusCode::NOT_FOUND,
            vec![format!("no switchover {op} on this node")],
        ),
    }
}

async fn promote(
    State(api): State<Api>,
    headers: HeaderMap,
    Json(req): Json<PromoteRequest>,
) -> Response {
    if let Some(r) = api.refusal(&headers) {
        return r;
    }
    match api.node.promote(req).await {
        Ok(s) => Json(s).into_response(),
        Err(reasons) => refuse(StatusCode::CONFLICT, reasons),
    }
}

async fn barrier(
    State(api): State<Api>,
    headers: HeaderMap,
    Query(req): Query<BarrierRequest>,
) -> Response {
    if let Some(r) = api.refusal(&headers) {
        return r;
    }
    match api.node.barrier(req).await {
        Ok(v) => Json(v).into_response(),
        Err(BarrierRefusal::TimedOut(reasons)) => refuse(StatusCode::GATEWAY_TIMEOUT, reasons),
        Err(BarrierRefusal::Refused(reasons)) => refuse(StatusCode::CONFLICT, reasons),
    }
}

async fn verify(
    State(api): State<Api>,
    headers: HeaderMap,
    Query(req): Query<VerifyRequest>,
) -> Response {
    if let Some(r) = api.refusal(&headers) {
        return r;
    }
    match api.node.verify(req).await {
        Ok(v) => Json(v).into_response(),
        Err(reasons) => refuse(StatusCode::CONFLICT, reasons),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A stand-in node: the API's own logic is what is under test here.
    struct Fixed;

    #[async_trait::async_trait]
    impl NodeHandle for Fixed {
        fn status(&self) -> Status {
            Status {
                pair: "p".into(),
                node: "a".into(),
                role: "primary".into(),
                epoch: 3,
                holder: Some("a".into()),
                failover: "auto".into(),
                lease_left_ms: Some(900),
                lease_required: true,
                peer_joined: true,
                armed: false,
                on_hold: false,
                peer: PeerStatus {
                    name: "b".into(),
                    role: Some("standby".into()),
                    epoch: Some(3),
                    last_heard_ms_ago: Some(20),
                },
                links: vec![],
                replication_connected: true,
                alarms: vec![],
                history: vec![],
                switchover: None,
                serial: vec![],
                databases: vec![],
                filesets: vec![],
                uptime_ms: 1,
            }
        }
        async fn switchover(&self) -> Result<String, Vec<String>> {
            Err(vec!["peer b unreachable".into()])
        }
        fn switchover_progress(&self, _op: &str) -> Option<SwitchoverProgress> {
            None
        }
        async fn promote(&self, _req: PromoteRequest) -> Result<Status, Vec<String>> {
            Ok(self.status())
        }
    }

    async fn request(addr: std::net::SocketAddr, head: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(
            format!("{head}\r\nHost: x\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn a_token_is_required_when_configured_and_refusals_name_reasons() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(
            listener,
            Arc::new(Fixed),
            Some("s3cret".into()),
            async {
                let _ = stopped.await;
            },
        ));
        let denied = request(addr, "GET /status HTTP/1.1").await;
        assert!(denied.starts_with("HTTP/1.1 401"), "{denied}");
        let wrong = request(addr, "GET /status HTTP/1.1\r\nAuthorization: Bearer s3cre7").await;
        assert!(wrong.starts_with("HTTP/1.1 401"), "{wrong}");
        let ok = request(addr, "GET /status HTTP/1.1\r\nAuthorization: Bearer s3cret").await;
        assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
        assert!(ok.contains("\"epoch\":3"), "{ok}");
        let refused = request(
            addr,
            "POST /switchover HTTP/1.1\r\nAuthorization: Bearer s3cret",
        )
        .await;
        assert!(refused.starts_with("HTTP/1.1 409"), "{refused}");
        assert!(refused.contains("peer b unreachable"), "{refused}");
        let _ = stop.send(());
        server.await.unwrap().unwrap();
    }

    #[test]
    fn human_status_leads_with_the_role() {
        let text = render_status(&Fixed.status());
        let first = text.lines().next().unwrap();
        assert_eq!(first, "pair p: node a is PRIMARY in epoch 3");
        assert!(text.contains("lease: 900 ms left"), "{text}");
    }
}
