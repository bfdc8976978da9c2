//! The tie-breaker: before a failover, the standby checks that it can still
//! reach the configured addresses, so that a standby cut off from everything
//! (not just from its peer) does not promote.
//!
//! A target is reachable when a TCP connection to it succeeds or is refused:
//! either way a host answered. Silence until the timeout is unreachable.

use crate::node::Node;
use std::sync::Arc;
use std::time::Duration;

pub async fn check(node: Arc<Node>) {
    let Some(tb) = node.cfg.tiebreaker.clone() else {
        node.with_machine(|m, now| m.tiebreaker_result(now, true, "no tie-breaker configured"));
        return;
    };
    let timeout = Duration::from_millis(tb.timeout_ms);
    let mut unreachable = Vec::new();
    for target in &tb.reach {
        let attempt =
            tokio::time::timeout(timeout, tokio::net::TcpStream::connect(target.as_str())).await;
        match attempt {
            Ok(Ok(_)) => {}
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {}
            Ok(Err(e)) => unreachable.push(format!("{target}: {e}")),
            Err(_) => unreachable.push(format!("{target}: no answer within {} ms", tb.timeout_ms)),
        }
    }
    let ok = unreachable.is_empty();
    let detail = if ok {
        format!("reached {}", tb.reach.join(", "))
    } else {
        unreachable.join("; ")
    };
    tracing::info!(ok, "tie-breaker: {detail}");
    node.with_machine(|m, now| m.tiebreaker_result(now, ok, &detail));
}
