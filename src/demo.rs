//! `tandem demo`: two nodes on this machine from the built-in demo config,
//! in a temporary directory. It shows them agree on roles, then hands the
//! primary role over and back, and stops both nodes.

use crate::control::Client;
use anyhow::{bail, Context, Result};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tandem_config::Config;

/// The two `tandem run` children; stopped (SIGTERM, then SIGKILL) on drop,
/// so an error anywhere in the demo leaves no process behind.
struct Nodes(Vec<(String, Child)>);

impl Drop for Nodes {
    fn drop(&mut self) {
        for (_, child) in &mut self.0 {
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        for (_, child) in &mut self.0 {
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Find eight consecutive free ports on loopback for the demo pair.
fn free_port_base() -> Result<u16> {
    for _ in 0..50 {
        let probe = std::net::TcpListener::bind("127.0.0.1:0")?;
        let base = probe.local_addr()?.port();
        drop(probe);
        if base > 65_000 {
            continue;
        }
        let all_free = (base..base + 8).all(|p| {
            std::net::TcpListener::bind(("127.0.0.1", p)).is_ok()
                && std::net::UdpSocket::bind(("127.0.0.1", p)).is_ok()
        });
        if all_free {
            return Ok(base);
        }
    }
    bail!("cannot find 8 free ports on 127.0.0.1 for the demo")
}

pub async fn run(keep: bool) -> Result<()> {
    let dir = tempfile::Builder::new().prefix("tandem-demo-").tempdir()?;
    let result = show(dir.path()).await;
    if keep || result.is_err() {
        let kept = dir.keep();
        println!(
            "kept {} (config, key, both nodes' logs and data)",
            kept.display()
        );
    }
    result
}

async fn show(dir: &std::path::Path) -> Result<()> {
    let base = free_port_base()?;
    let cfg_path = dir.join("tandem.toml");
    std::fs::write(&cfg_path, tandem_config::demo_config(dir, base))?;
    let cfg = Config::load(&cfg_path).map_err(|e| anyhow::anyhow!("built-in demo config: {e}"))?;
    let mut key = [0u8; 32];
    rand::Rng::fill(&mut rand::rngs::OsRng, &mut key);
    let key = tandem_sync::auth::PairKey::from_bytes(key);
    std::fs::write(&cfg.pair.key_file, key.to_file_text())?;
    println!("demo pair in {}", dir.display());
    println!("  config: {}", cfg_path.display());

    let exe = std::env::current_exe().context("locating the tandem binary")?;
    let mut nodes = Nodes(Vec::new());
    for n in &cfg.nodes {
        let log = std::fs::File::create(dir.join(format!("{}.log", n.name)))?;
        let child = Command::new(&exe)
            .args(["run", "--config"])
            .arg(&cfg_path)
            .args(["--node", &n.name])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting a demo node")?;
        println!(
            "  node {} started (pid {}), log {}/{}.log",
            n.name,
            child.id(),
            dir.display(),
            n.name
        );
        nodes.0.push((n.name.clone(), child));
    }
    let clients: Vec<(String, Client)> = cfg
        .nodes
        .iter()
        .map(|n| (n.name.clone(), Client::new(n.control, None)))
        .collect();

    let started = Instant::now();
    let (primary, standby) = wait_for_roles(&clients, None, Duration::from_secs(20)).await?;
    println!(
        "\n{} is primary and {} its standby, agreed after {} ms",
        primary,
        standby,
        started.elapsed().as_millis()
    );
    let (_, first) = &clients[0];
    print!(
        "\n$ tandem status   (on {})\n{}",
        clients[0].0,
        tandem_ops::render_status(&first.status().await?)
    );

    for round in 0..2 {
        let from = if round == 0 { &primary } else { &standby };
        let client = &clients
            .iter()
            .find(|(n, _)| n == from)
            .context("demo node")?
            .1;
        println!("\n$ tandem switchover --yes   (on {from})");
        let t0 = Instant::now();
        let op = client.switchover().await?;
        if let Err(e) = client.follow_switchover(&op).await? {
            bail!("the demo switchover failed: {e}");
        }
        let (p, s) = wait_for_roles(&clients, Some(from), Duration::from_secs(10)).await?;
        println!(
            "switchover {op}: {p} is primary, {s} its standby ({} ms until the new primary said so)",
            t0.elapsed().as_millis()
        );
    }
    drop(nodes);
    println!("\nboth nodes stopped");
    Ok(())
}

/// Poll both nodes until one says primary and the other standby in the same
/// epoch (and, if given, `not` is no longer the primary).
async fn wait_for_roles(
    clients: &[(String, Client)],
    not: Option<&String>,
    within: Duration,
) -> Result<(String, String)> {
    let deadline = Instant::now() + within;
    loop {
        let mut roles = Vec::new();
        for (name, c) in clients {
            if let Ok(s) = c.status().await {
                // Settled only when each node also sees its peer that way.
                let peer_view = (s.peer.role.unwrap_or_default(), s.peer.epoch);
                // And a switchover needs the replication link up.
                if s.replication_connected {
                    roles.push((name.clone(), s.role, s.epoch, peer_view));
                }
            }
        }
        if let [(a, ra, ea, va), (b, rb, eb, vb)] = roles.as_slice() {
            if ea == eb && va == &(rb.clone(), Some(*eb)) && vb == &(ra.clone(), Some(*ea)) {
                let pair = match (ra.as_str(), rb.as_str()) {
                    ("primary", "standby") => Some((a.clone(), b.clone())),
                    ("standby", "primary") => Some((b.clone(), a.clone())),
                    _ => None,
                };
                if let Some((p, s)) = pair {
                    if not != Some(&p) {
                        return Ok((p, s));
                    }
                }
            }
        }
        if Instant::now() > deadline {
            bail!("the demo nodes did not agree on roles within {within:?}: {roles:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
