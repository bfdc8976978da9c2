//! The node's side of the control API ([`tandem_ops::NodeHandle`]) and the
//! client the CLI uses to talk to a running node.

use crate::node::Node;
use anyhow::{anyhow, bail, Context, Result};
use std::net::SocketAddr;
use std::sync::Arc;
use tandem_ops::{
    BarrierRefusal, BarrierRequest, NodeHandle, PromoteRequest, Refusal, Status,
    SwitchoverProgress, VerifyRequest,
};
use tandem_sync::message::Role;

pub struct Handle(pub Arc<Node>);

#[async_trait::async_trait]
impl NodeHandle for Handle {
    fn status(&self) -> Status {
        self.0.status()
    }

    async fn switchover(&self) -> Result<String, Vec<String>> {
        crate::switchover::request(&self.0).await
    }

    fn switchover_progress(&self, op: &str) -> Option<SwitchoverProgress> {
        self.0
            .switchovers
            .get(op, crate::switchover::stale_after(&self.0))
    }

    async fn promote(&self, req: PromoteRequest) -> Result<Status, Vec<String>> {
        if !req.force {
            return Err(vec![
                "a manual promotion needs --force: make sure the other node is not acting as primary \
                 (powered off, or its tandem stopped) before you force one"
                    .into(),
            ]);
        }
        let node = &self.0;
        let role = node.with_machine(|m, now| {
            if m.role() != Role::Primary {
                m.force_promote(now, &req.who);
            }
            m.role()
        });
        if role != Role::Primary {
            return Err(vec![format!(
                "promotion did not take: this node is {role} (see the log)"
            )]);
        }
        tracing::warn!(who = %req.who, "FORCED PROMOTION by {}", req.who);
        Ok(node.status())
    }

    async fn barrier(&self, req: BarrierRequest) -> Result<serde_json::Value, BarrierRefusal> {
        let within = std::time::Duration::from_millis(req.timeout_ms.unwrap_or(10_000));
        crate::db::barrier(&self.0, req.db.as_deref(), within)
            .await
            .map_err(|e| match e {
                crate::db::BarrierError::TimedOut(w) => BarrierRefusal::TimedOut(vec![w]),
                crate::db::BarrierError::Refused(w) => BarrierRefusal::Refused(vec![w]),
            })
    }

    async fn verify(&self, req: VerifyRequest) -> Result<serde_json::Value, Vec<String>> {
        let within = std::time::Duration::from_millis(req.timeout_ms.unwrap_or(60_000));
        let started = std::time::Instant::now();
        // Databases (all, or the one named), then file sets (unless a
        // database was named).
        let mut v = if req.db.is_some() || !self.0.databases.is_empty() {
            crate::db::verify(&self.0, req.db.as_deref(), within)
                .await
                .map_err(|w| vec![w])?
        } else {
            serde_json::json!({"identical": true, "complete": true, "databases": []})
        };
        if req.db.is_none() {
            if self.0.filesets.is_empty() && self.0.databases.is_empty() {
                return Err(vec!["no database or file set is configured".into()]);
            }
            let left = within.saturating_sub(started.elapsed());
            let sets = crate::files::verify(&self.0, left)
                .await
                .map_err(|w| vec![w])?;
            let identical = sets.iter().all(|f| f["identical"] == true);
            let complete = sets.iter().all(|f| f["complete"] == true);
            v["identical"] = serde_json::json!(v["identical"] == true && identical);
            v["complete"] = serde_json::json!(v["complete"] == true && complete);
            v["filesets"] = serde_json::json!(sets);
            v["elapsed_ms"] = serde_json::json!(started.elapsed().as_millis() as u64);
        }
        Ok(v)
    }
}

/// A client of one node's control API.
pub struct Client {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl Client {
    pub fn new(addr: SocketAddr, token: Option<String>) -> Client {
        Client {
            base: format!("http://{addr}"),
            token,
            http: reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(5))
                .no_proxy()
                .build()
                .expect("a plain HTTP client builds"),
        }
    }

    fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let r = self.http.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
    }

    async fn call<T: serde::de::DeserializeOwned>(&self, r: reqwest::RequestBuilder) -> Result<T> {
        let resp = r.send().await.with_context(|| {
            format!(
                "cannot reach tandem's control API at {} (is `tandem run` up?)",
                self.base
            )
        })?;
        let code = resp.status();
        let body = resp
            .bytes()
            .await
            .context("reading the control API's answer")?;
        if code.is_success() {
            return serde_json::from_slice(&body).context("malformed answer from the control API");
        }
        match serde_json::from_slice::<Refusal>(&body) {
            Ok(refusal) => Err(Refused {
                reasons: refusal.reasons,
                timed_out: code == reqwest::StatusCode::GATEWAY_TIMEOUT,
            }
            .into()),
            Err(_) => bail!(
                "control API answered {code}: {}",
                String::from_utf8_lossy(&body)
            ),
        }
    }

    pub async fn status(&self) -> Result<Status> {
        self.call(self.req(reqwest::Method::GET, "/status")).await
    }

    pub async fn switchover(&self) -> Result<String> {
        let v: serde_json::Value = self
            .call(self.req(reqwest::Method::POST, "/switchover"))
            .await?;
        v["op"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| anyhow!("the control API gave no operation id"))
    }

    pub async fn switchover_progress(&self, op: &str) -> Result<SwitchoverProgress> {
        self.call(self.req(reqwest::Method::GET, &format!("/switchover/{op}")))
            .await
    }

    /// `POST /barrier`; the HTTP wait is bounded a little past the barrier's.
    pub async fn barrier(
        &self,
        db: Option<&str>,
        timeout: std::time::Duration,
    ) -> Result<serde_json::Value> {
        self.post_bounded("/barrier", db, timeout).await
    }

    /// Print each step of switchover `op` as it happens and return its
    /// outcome. A slow switchover is never called failed while it runs.
    pub async fn follow_switchover(&self, op: &str) -> Result<Result<(), String>> {
        let mut shown = 0;
        loop {
            let p = self.switchover_progress(op).await?;
            for s in &p.steps[shown..] {
                println!("  {:>6} ms  {}", s.elapsed_ms, s.step);
            }
            shown = p.steps.len();
            match p.outcome {
                None => tokio::time::sleep(std::time::Duration::from_millis(10)).await,
                Some(outcome) => return Ok(outcome),
            }
        }
    }

    /// `POST /verify`; the HTTP wait is bounded a little past the verify's.
    pub async fn verify(
        &self,
        db: Option<&str>,
        timeout: std::time::Duration,
    ) -> Result<serde_json::Value> {
        self.post_bounded("/verify", db, timeout).await
    }

    /// `POST path?timeout_ms=..[&db=..]`, the HTTP wait bounded a little past
    /// the server's own.
    async fn post_bounded(
        &self,
        path: &str,
        db: Option<&str>,
        timeout: std::time::Duration,
    ) -> Result<serde_json::Value> {
        let mut query = vec![("timeout_ms", timeout.as_millis().to_string())];
        if let Some(db) = db {
            query.push(("db", db.to_string()));
        }
        let r = self
            .req(reqwest::Method::POST, path)
            .query(&query)
            .timeout(timeout + std::time::Duration::from_secs(5));
        self.call(r).await
    }

    pub async fn promote(&self, force: bool, who: &str) -> Result<Status> {
        let body = PromoteRequest {
            force,
            who: who.to_string(),
        };
        self.call(self.req(reqwest::Method::POST, "/promote").json(&body))
            .await
    }
}

/// A request the node refused, with its named reasons.
#[derive(Debug)]
pub struct Refused {
    pub reasons: Vec<String>,
    /// The node gave up waiting (HTTP 504), rather than refusing outright.
    pub timed_out: bool,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "refused:")?;
        for r in &self.reasons {
            write!(f, "\n  - {r}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Refused {}
