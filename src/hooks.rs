//! Hooks: operator commands run on role changes and alarms.
//!
//! Commands run one at a time, in the order their events happened, through
//! `sh -c`, with `TANDEM_ROLE`, `TANDEM_EPOCH`, `TANDEM_NODE`, `TANDEM_REASON`
//! and `TANDEM_EVENT` in their environment and a timeout after which the
//! command is killed. Each outcome is logged. A hook that fails never changes
//! a role: the role machine has already decided, and hooks only follow.

use std::process::Stdio;
use std::time::{Duration, Instant};
use tandem_config::Hooks;
use tokio::process::Command;
use tokio::sync::{mpsc, oneshot};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HookKind {
    Promote,
    Demote,
    Fence,
    Alarm,
}

impl HookKind {
    pub fn as_str(self) -> &'static str {
        match self {
            HookKind::Promote => "on_promote",
            HookKind::Demote => "on_demote",
            HookKind::Fence => "on_fence",
            HookKind::Alarm => "on_alarm",
        }
    }
}

#[derive(Clone, Debug)]
pub struct HookEvent {
    pub kind: HookKind,
    pub role: String,
    pub epoch: u64,
    pub reason: String,
}

enum Job {
    Run(HookEvent),
    /// Answered once every hook queued before it has finished.
    Barrier(oneshot::Sender<()>),
}

/// The queue in front of the one task that runs hooks.
#[derive(Clone)]
pub struct HookRunner {
    tx: mpsc::UnboundedSender<Job>,
}

impl HookRunner {
    pub fn start(hooks: Hooks, node: String) -> HookRunner {
        let (tx, mut rx) = mpsc::unbounded_channel::<Job>();
        tokio::spawn(async move {
            while let Some(job) = rx.recv().await {
                match job {
                    Job::Run(ev) => run_all(&hooks, &node, &ev).await,
                    Job::Barrier(done) => {
                        let _ = done.send(());
                    }
                }
            }
        });
        HookRunner { tx }
    }

    pub fn queue(&self, ev: HookEvent) {
        let _ = self.tx.send(Job::Run(ev));
    }

    /// Wait until every hook queued so far has run (a switchover waits for
    /// the demote hooks before it drains).
    pub async fn settled(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Job::Barrier(done)).is_ok() {
            let _ = wait.await;
        }
    }
}

async fn run_all(hooks: &Hooks, node: &str, ev: &HookEvent) {
    let commands = match ev.kind {
        HookKind::Promote => &hooks.on_promote,
        HookKind::Demote => &hooks.on_demote,
        HookKind::Fence => &hooks.on_fence,
        HookKind::Alarm => &hooks.on_alarm,
    };
    let timeout = Duration::from_millis(hooks.timeout_ms);
    for cmd in commands {
        let started = Instant::now();
        let result = run_one(cmd, node, ev, timeout).await;
        let ms = started.elapsed().as_millis() as u64;
        match result {
            Ok(()) => tracing::info!(hook = ev.kind.as_str(), command = %cmd, ms, "hook succeeded"),
            Err(why) => {
                tracing::warn!(hook = ev.kind.as_str(), command = %cmd, ms, "hook failed: {why}")
            }
        }
    }
}

async fn run_one(cmd: &str, node: &str, ev: &HookEvent, timeout: Duration) -> Result<(), String> {
    let child = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .env("TANDEM_ROLE", &ev.role)
        .env("TANDEM_EPOCH", ev.epoch.to_string())
        .env("TANDEM_NODE", node)
        .env("TANDEM_REASON", &ev.reason)
        .env("TANDEM_EVENT", ev.kind.as_str())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        // Its own process group, so a timeout kills whatever it started too.
        .process_group(0)
        .spawn()
        .map_err(|e| format!("cannot start sh: {e}"))?;
    let pid = child.id();
    // Both pipes are read at once, so a chatty hook cannot block on one.
    match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Err(_) => {
            // Dropping the child killed `sh`; kill what it started too.
            if let Some(pid) = pid {
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            Err(format!(
                "timed out after {} ms and was killed",
                timeout.as_millis()
            ))
        }
        Ok(Ok(out)) => {
            // The last line of stdout is the hook's summary; stderr explains failures.
            let stdout = String::from_utf8_lossy(&out.stdout);
            let stderr = String::from_utf8_lossy(&out.stderr);
            if let Some(line) = last_line(&stdout) {
                tracing::info!(hook = ev.kind.as_str(), command = %cmd, "hook says: {line}");
            }
            if out.status.success() {
                Ok(())
            } else {
                let detail = last_line(&stderr)
                    .map(|l| format!(": {l}"))
                    .unwrap_or_default();
                Err(format!("{}{detail}", out.status))
            }
        }
        Ok(Err(e)) => Err(format!("cannot wait for it: {e}")),
    }
}

fn last_line(s: &str) -> Option<&str> {
    s.lines().rev().map(str::trim).find(|l| !l.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hooks(cmds: Vec<String>, timeout_ms: u64) -> Hooks {
        Hooks {
            on_promote: cmds,
            timeout_ms,
            ..Hooks::default()
        }
    }

    #[tokio::test]
    async fn hooks_run_in_order_with_their_environment() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let o = out.display();
        let runner = HookRunner::start(
            hooks(
                vec![
                    format!(
                        "echo \"1 $TANDEM_ROLE $TANDEM_EPOCH $TANDEM_NODE $TANDEM_REASON\" >> {o}"
                    ),
                    "exit 3".into(),
                    format!("echo 2 >> {o}"),
                ],
                5000,
            ),
            "a".into(),
        );
        runner.queue(HookEvent {
            kind: HookKind::Promote,
            role: "primary".into(),
            epoch: 7,
            reason: "drill".into(),
        });
        runner.settled().await;
        let text = std::fs::read_to_string(&out).unwrap();
        assert_eq!(text, "1 primary 7 a drill\n2\n");
    }

    #[tokio::test]
    async fn a_hung_hook_is_killed_at_its_timeout() {
        let runner = HookRunner::start(hooks(vec!["sleep 30".into()], 100), "a".into());
        let started = Instant::now();
        runner.queue(HookEvent {
            kind: HookKind::Promote,
            role: "primary".into(),
            epoch: 1,
            reason: "t".into(),
        });
        runner.settled().await;
        assert!(started.elapsed() < Duration::from_secs(10));
    }
}
