//! The operator's surface: the control HTTP API (JSON), the status that
//! `tandem status` shows, and the same as Prometheus metrics (`/metrics`).
//!
//! ops/ knows the node only through the narrow [`NodeHandle`] trait, so the
//! API can be tested and grown (web panel, metrics) without reaching into
//! the node's internals.

mod metrics;
mod render;

pub use metrics::render_metrics;
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
        .route("/metrics", get(metrics))
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

async fn metrics(State(api): State<Api>, headers: HeaderMap) -> Response {
    if let Some(r) = api.refusal(&headers) {
        return r;
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        render_metrics(&api.node.status()),
    )
        .into_response()
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
        let denied = request(addr, "GET /metrics HTTP/1.1").await;
        assert!(denied.starts_with("HTTP/1.1 401"), "{denied}");
        let metrics = request(
            addr,
            "GET /metrics HTTP/1.1\r\nAuthorization: Bearer s3cret",
        )
        .await;
        assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
        assert!(
            metrics.contains("content-type: text/plain; version=0.0.4"),
            "{metrics}"
        );
        assert!(
            metrics.contains("\ntandem_epoch{pair=\"p\",node=\"a\"} 3\n"),
            "{metrics}"
        );
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
    fn metrics_say_what_status_says_in_the_prometheus_format() {
        let mut s = Fixed.status();
        s.links.push(LinkStatus {
            index: 0,
            name: "udp://192.0.2.2:7400".into(),
            up: true,
            last_seen_ms_ago: Some(5),
            rtt_ms: Some(2),
            received: 1200,
            lost: 3,
            last_error: None,
        });
        s.databases.push(serde_json::json!({
            "name": "hydro", "mode": "needs resync", "fenced": false,
            "local": {"txid": 120, "sum": "ab"}, "peer": {"txid": 100, "sum": "cd"},
            "lag_transactions": 20, "lag_bytes": 81920, "lag_ms": 1500,
            "wal_bytes": 4096, "wal_bytes_max": 67108864,
            "spool_bytes": 0, "spool_bytes_max": 268435456,
            "last_checkpoint": {"at_unix_ms": 1796677200000u64},
        }));
        // A standby's file set: what is owed is not known here.
        s.filesets.push(serde_json::json!({
            "name": "reports \"daily\"", "mode": "following", "entries": 31,
            "lag_ms": 250, "last_sync_unix_ms": 1796677200500u64, "quarantined": 2,
        }));
        expect_test::expect![[r##"
            # HELP tandem_role The node's role (1 for the role it has).
            # TYPE tandem_role gauge
            tandem_role{pair="p",node="a",role="primary"} 1
            # HELP tandem_epoch The node's epoch.
            # TYPE tandem_epoch gauge
            tandem_epoch{pair="p",node="a"} 3
            # HELP tandem_peer_joined Primary: its standby has joined. Standby: it may fail over.
            # TYPE tandem_peer_joined gauge
            tandem_peer_joined{pair="p",node="a"} 1
            # HELP tandem_failover_armed Automatic failover is armed.
            # TYPE tandem_failover_armed gauge
            tandem_failover_armed{pair="p",node="a"} 0
            # HELP tandem_on_hold Waiting for an operator after two claims on one epoch.
            # TYPE tandem_on_hold gauge
            tandem_on_hold{pair="p",node="a"} 0
            # HELP tandem_replication_connected The replication link to the peer is up.
            # TYPE tandem_replication_connected gauge
            tandem_replication_connected{pair="p",node="a"} 1
            # HELP tandem_lease_left_seconds Lease left while primary.
            # TYPE tandem_lease_left_seconds gauge
            tandem_lease_left_seconds{pair="p",node="a"} 0.9
            # HELP tandem_peer_last_heard_seconds Since the peer was last heard on any link.
            # TYPE tandem_peer_last_heard_seconds gauge
            tandem_peer_last_heard_seconds{pair="p",node="a"} 0.02
            # HELP tandem_alarms Alarms active now.
            # TYPE tandem_alarms gauge
            tandem_alarms{pair="p",node="a"} 0
            # HELP tandem_uptime_seconds Since the daemon started.
            # TYPE tandem_uptime_seconds gauge
            tandem_uptime_seconds{pair="p",node="a"} 0.001
            # HELP tandem_link_up The heartbeat link is up.
            # TYPE tandem_link_up gauge
            tandem_link_up{node="a",link="udp://192.0.2.2:7400",index="0"} 1
            # HELP tandem_link_rtt_seconds Heartbeat round trip on the link.
            # TYPE tandem_link_rtt_seconds gauge
            tandem_link_rtt_seconds{node="a",link="udp://192.0.2.2:7400",index="0"} 0.002
            # HELP tandem_link_heartbeats_received_total Heartbeats received on the link.
            # TYPE tandem_link_heartbeats_received_total counter
            tandem_link_heartbeats_received_total{node="a",link="udp://192.0.2.2:7400",index="0"} 1200
            # HELP tandem_link_heartbeats_lost_total Heartbeats lost on the link.
            # TYPE tandem_link_heartbeats_lost_total counter
            tandem_link_heartbeats_lost_total{node="a",link="udp://192.0.2.2:7400",index="0"} 3
            # HELP tandem_database_mode The database's mode (1 for the mode it is in).
            # TYPE tandem_database_mode gauge
            tandem_database_mode{node="a",database="hydro",mode="needs resync"} 1
            # HELP tandem_database_txid The last transaction here (side=local) and on the peer as last known.
            # TYPE tandem_database_txid gauge
            tandem_database_txid{node="a",database="hydro",side="local"} 120
            tandem_database_txid{node="a",database="hydro",side="peer"} 100
            # HELP tandem_database_lag_transactions Transactions the standby lacks.
            # TYPE tandem_database_lag_transactions gauge
            tandem_database_lag_transactions{node="a",database="hydro"} 20
            # HELP tandem_database_lag_bytes Bytes of the transactions the standby lacks.
            # TYPE tandem_database_lag_bytes gauge
            tandem_database_lag_bytes{node="a",database="hydro"} 81920
            # HELP tandem_database_lag_seconds Age of the oldest transaction the standby lacks.
            # TYPE tandem_database_lag_seconds gauge
            tandem_database_lag_seconds{node="a",database="hydro"} 1.5
            # HELP tandem_database_wal_bytes Size of the -wal file.
            # TYPE tandem_database_wal_bytes gauge
            tandem_database_wal_bytes{node="a",database="hydro"} 4096
            # HELP tandem_database_wal_bytes_max The WAL's cap (wal_bytes_max).
            # TYPE tandem_database_wal_bytes_max gauge
            tandem_database_wal_bytes_max{node="a",database="hydro"} 67108864
            # HELP tandem_database_spool_bytes Bytes held for the standby.
            # TYPE tandem_database_spool_bytes gauge
            tandem_database_spool_bytes{node="a",database="hydro"} 0
            # HELP tandem_database_spool_bytes_max What may be held for the standby before it is let go.
            # TYPE tandem_database_spool_bytes_max gauge
            tandem_database_spool_bytes_max{node="a",database="hydro"} 268435456
            # HELP tandem_database_last_checkpoint_timestamp_seconds When the last checkpoint ran (Unix time).
            # TYPE tandem_database_last_checkpoint_timestamp_seconds gauge
            tandem_database_last_checkpoint_timestamp_seconds{node="a",database="hydro"} 1796677200
            # HELP tandem_database_fenced Local writers are locked out.
            # TYPE tandem_database_fenced gauge
            tandem_database_fenced{node="a",database="hydro"} 0
            # HELP tandem_fileset_mode The file set's mode (1 for the mode it is in).
            # TYPE tandem_fileset_mode gauge
            tandem_fileset_mode{node="a",fileset="reports \"daily\"",mode="following"} 1
            # HELP tandem_fileset_entries Files, directories and symlinks in the set.
            # TYPE tandem_fileset_entries gauge
            tandem_fileset_entries{node="a",fileset="reports \"daily\""} 31
            # HELP tandem_fileset_lag_seconds Since the first change the standby lacks (0 in sync).
            # TYPE tandem_fileset_lag_seconds gauge
            tandem_fileset_lag_seconds{node="a",fileset="reports \"daily\""} 0.25
            # HELP tandem_fileset_last_sync_timestamp_seconds When the copies were last identical (Unix time).
            # TYPE tandem_fileset_last_sync_timestamp_seconds gauge
            tandem_fileset_last_sync_timestamp_seconds{node="a",fileset="reports \"daily\""} 1796677200.5
            # HELP tandem_fileset_quarantined_total Paths moved to quarantine on this standby.
            # TYPE tandem_fileset_quarantined_total counter
            tandem_fileset_quarantined_total{node="a",fileset="reports \"daily\""} 2
        "##]].assert_eq(&render_metrics(&s));
    }

    #[test]
    fn human_status_leads_with_the_role() {
        let text = render_status(&Fixed.status());
        let first = text.lines().next().unwrap();
        assert_eq!(first, "pair p: node a is PRIMARY in epoch 3");
        assert!(text.contains("lease: 900 ms left"), "{text}");
    }
}
