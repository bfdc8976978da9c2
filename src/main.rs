//! `tandem`: one binary on two servers that keeps the standby a live twin of
//! the primary. main parses the command line and wires the parts; the node
//! supervisor is in `node.rs`, the brain in the `tandem-sync` crate.

mod control;
mod db;
mod demo;
mod endpoint;
mod engine;
mod files;
mod hooks;
mod links;
mod node;
mod peer;
mod serial;
mod store;
mod switchover;
mod tiebreaker;
mod walwatch;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tandem_config::Config;
use tandem_sync::auth::PairKey;

const DEFAULT_CONFIG: &str = "/etc/tandem/tandem.toml";

#[derive(Parser)]
#[command(
    name = "tandem",
    version,
    about = "Hot-standby pair: two servers, one primary"
)]
struct Cli {
    /// Log format: human-readable (journald-friendly) or one JSON object a line.
    #[arg(long, value_enum, default_value_t = LogFormat::Human, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

#[derive(clap::Args, Clone)]
struct Target {
    /// The pair's config file.
    #[arg(long, short, env = "TANDEM_CONFIG", default_value = DEFAULT_CONFIG)]
    config: PathBuf,
    /// This node's name (default: the one named like this host).
    #[arg(long, env = "TANDEM_NODE")]
    node: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Run this node (the daemon).
    Run(Target),
    /// Show this node, its peer, the links and the last role changes.
    Status {
        #[command(flatten)]
        target: Target,
        /// Print the control API's JSON instead.
        #[arg(long)]
        json: bool,
    },
    /// Hand the primary role to the other node gracefully (zero loss).
    Switchover {
        #[command(flatten)]
        target: Target,
        /// Do not ask for confirmation.
        #[arg(long, short)]
        yes: bool,
    },
    /// Make this node primary without its peer's agreement.
    Promote {
        #[command(flatten)]
        target: Target,
        /// Required: you have made sure the other node is not acting as primary.
        #[arg(long)]
        force: bool,
    },
    /// Wait until the standby has acknowledged every database transaction
    /// committed before this call (run it on the primary). Exits 0 when it
    /// has, 3 on timeout, 1 when it cannot wait here.
    Barrier {
        #[command(flatten)]
        target: Target,
        /// Only this database (default: every configured database).
        #[arg(long)]
        db: Option<String>,
        /// Give up after this long: 500ms, 5s, 2m (a bare number is ms).
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        timeout: Duration,
        /// Print the control API's JSON.
        #[arg(long)]
        json: bool,
    },
    /// Compare both copies of the databases (on either node): checksums at
    /// the same txid, integrity_check on the standby, and which page ranges
    /// differ. Exits 0 when identical, 1 when they differ, 2 when no
    /// comparison could be made.
    Verify {
        #[command(flatten)]
        target: Target,
        /// Only this database (default: every configured database).
        #[arg(long)]
        db: Option<String>,
        /// Give up after this long: 500ms, 5s, 2m (a bare number is ms).
        #[arg(long, default_value = "60s", value_parser = parse_duration)]
        timeout: Duration,
        /// Print the control API's JSON.
        #[arg(long)]
        json: bool,
    },
    /// Write a new 256-bit pair key (copy the same file to both servers).
    Keygen {
        /// Where to write it (mode 0600); standard output if omitted.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Overwrite an existing file.
        #[arg(long)]
        force: bool,
    },
    /// Config file commands.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Run two nodes on this machine from a built-in config and show a switchover.
    Demo {
        /// Keep the demo's directory instead of deleting it.
        #[arg(long)]
        keep: bool,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate a config file: every problem with its file, line and column.
    Check { file: PathBuf },
}

fn main() {
    keep_freed_memory();
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tandem: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    let code = match runtime.block_on(dispatch(cli.command)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("tandem: {e:#}");
            1
        }
    };
    std::process::exit(code);
}

/// Keep freed memory for reuse instead of giving it back to the kernel at
/// once. Replication moves megabyte buffers (a frame, a file read whole)
/// through several threads; with glibc's defaults each came fresh from the
/// kernel, zeroed page by page, and went back on free: about 12% of the
/// CPU of a file-set transfer. The cost is that a node keeps what a burst
/// used (bounded by the transfer's own bounds) until it needs it again.
fn keep_freed_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets allocator parameters; called before any
    // other thread exists.
    unsafe {
        // Blocks up to 32 MiB (glibc's maximum) from the heap, not mmap.
        nix::libc::mallopt(nix::libc::M_MMAP_THRESHOLD, 32 << 20);
        // Give a heap's free top back only past 256 MiB.
        nix::libc::mallopt(nix::libc::M_TRIM_THRESHOLD, 256 << 20);
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TANDEM_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Human => builder.with_ansi(std::io::stderr().is_terminal()).init(),
    }
}

async fn dispatch(command: Command) -> Result<i32> {
    match command {
        Command::Run(target) => run(target).await.map(|()| 0),
        Command::Status { target, json } => {
            let status = client(&target)?.status().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print!("{}", tandem_ops::render_status(&status));
            }
            Ok(0)
        }
        Command::Switchover { target, yes } => switchover(&target, yes).await,
        Command::Promote { target, force } => {
            let who = std::env::var("SUDO_USER")
                .or_else(|_| std::env::var("USER"))
                .unwrap_or_else(|_| "an operator".into());
            let status = client(&target)?.promote(force, &who).await?;
            print!("{}", tandem_ops::render_status(&status));
            Ok(0)
        }
        Command::Barrier {
            target,
            db,
            timeout,
            json,
        } => barrier(&target, db.as_deref(), timeout, json).await,
        Command::Verify {
            target,
            db,
            timeout,
            json,
        } => verify(&target, db.as_deref(), timeout, json).await,
        Command::Keygen { out, force } => keygen(out.as_deref(), force).map(|()| 0),
        Command::Config {
            command: ConfigCommand::Check { file },
        } => Ok(config_check(&file)),
        Command::Demo { keep } => demo::run(keep).await.map(|()| 0),
    }
}

fn load(target: &Target) -> Result<(Config, String)> {
    let cfg = Config::load(&target.config).map_err(|e| anyhow::anyhow!("{e}"))?;
    let host = nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_default();
    let me = cfg
        .pick_node(target.node.as_deref(), &host)
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .name
        .clone();
    Ok((cfg, me))
}

fn client(target: &Target) -> Result<control::Client> {
    let (cfg, me) = load(target)?;
    let node = cfg.node(&me).context("own node")?;
    let token = control_token(&cfg)?;
    Ok(control::Client::new(node.control, token))
}

async fn run(target: Target) -> Result<()> {
    let (cfg, me) = load(&target)?;
    let cfg = Arc::new(cfg);
    let key_text = std::fs::read_to_string(&cfg.pair.key_file)
        .with_context(|| format!("cannot read the pair key {}", cfg.pair.key_file.display()))?;
    if let Ok(meta) = std::fs::metadata(&cfg.pair.key_file) {
        use std::os::unix::fs::PermissionsExt;
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(
                "the pair key {} is readable by other users; run chmod 600 on it",
                cfg.pair.key_file.display()
            );
        }
    }
    let key = PairKey::parse(&key_text)
        .map_err(|e| anyhow::anyhow!("{}: {e}", cfg.pair.key_file.display()))?;
    let node_cfg = cfg.node(&me).context("own node")?.clone();
    let peer_cfg = cfg.peer_of(&me).context("peer node")?.clone();
    let token = control_token(&cfg)?;
    let listener = tokio::net::TcpListener::bind(node_cfg.control)
        .await
        .with_context(|| format!("cannot listen on the control address {}", node_cfg.control))?;

    let node = node::Node::start(cfg.clone(), &me, key)?;
    links::start(&node);
    tokio::spawn(peer::run(
        node.clone(),
        node_cfg.replication,
        peer_cfg.replication,
    ));
    let mut stop = node.shutdown_signal();
    let api = tokio::spawn(tandem_ops::serve(
        listener,
        Arc::new(control::Handle(node.clone())),
        token,
        async move {
            let _ = stop.changed().await;
        },
    ));
    tracing::info!(control = %node_cfg.control, "control API listening");

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: stopping"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: stopping"),
    }
    node.shut_down().await;
    let _ = tokio::time::timeout(Duration::from_secs(2), api).await;
    tracing::info!("stopped");
    Ok(())
}

async fn switchover(target: &Target, yes: bool) -> Result<i32> {
    let client = client(target)?;
    let status = client.status().await?;
    if !yes {
        let (from, to) = if status.role == "primary" {
            (status.node.clone(), status.peer.name.clone())
        } else {
            (status.peer.name.clone(), status.node.clone())
        };
        print!("Hand the primary role from {from} to {to}? [y/N] ");
        std::io::stdout().flush()?;
        let mut answer = String::new();
        std::io::stdin().read_line(&mut answer)?;
        if !matches!(answer.trim(), "y" | "Y" | "yes") {
            println!("not switched over");
            return Ok(1);
        }
    }
    let started = Instant::now();
    let op = match client.switchover().await {
        Ok(op) => op,
        Err(e) => {
            eprintln!("switchover {e}");
            return Ok(2);
        }
    };
    println!("switchover {op} started");
    match client.follow_switchover(&op).await? {
        Ok(()) => {
            println!(
                "switchover {op} done in {} ms",
                started.elapsed().as_millis()
            );
            Ok(0)
        }
        Err(why) => {
            println!(
                "switchover {op} FAILED after {} ms: {why}",
                started.elapsed().as_millis()
            );
            Ok(1)
        }
    }
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let (number, unit) = t
        .find(|c: char| !c.is_ascii_digit())
        .map_or((t, ""), |i| t.split_at(i));
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 500ms, 5s or 2m"))?;
    let ms = match unit.trim() {
        "" | "ms" => n,
        "s" => n.saturating_mul(1000),
        "m" | "min" => n.saturating_mul(60_000),
        other => {
            return Err(format!(
                "unknown unit {other:?} in {text:?} (use ms, s or m)"
            ))
        }
    };
    Ok(Duration::from_millis(ms))
}

async fn barrier(target: &Target, db: Option<&str>, timeout: Duration, json: bool) -> Result<i32> {
    let client = client(target)?;
    match client.barrier(db, timeout).await {
        Ok(v) => {
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                for d in v["databases"].as_array().into_iter().flatten() {
                    println!(
                        "database {}: acknowledged by the standby up to txid {} (checksum {})",
                        d["db"].as_str().unwrap_or("?"),
                        d["txid"],
                        d["sum"].as_str().unwrap_or("?")
                    );
                }
            }
            Ok(0)
        }
        Err(e) => {
            eprintln!("barrier {e:#}");
            let timed_out = e
                .downcast_ref::<control::Refused>()
                .is_some_and(|r| r.timed_out);
            Ok(if timed_out { 3 } else { 1 })
        }
    }
}

/// The control API token, if the config names a token file.
fn control_token(cfg: &Config) -> Result<Option<String>> {
    cfg.control
        .token_file
        .as_ref()
        .map(|path| {
            std::fs::read_to_string(path)
                .map(|t| t.trim().to_string())
                .with_context(|| format!("cannot read the control token {}", path.display()))
        })
        .transpose()
}

async fn verify(target: &Target, db: Option<&str>, timeout: Duration, json: bool) -> Result<i32> {
    let client = client(target)?;
    let v = match client.verify(db, timeout).await {
        Ok(v) => v,
        Err(e) => {
            eprintln!("verify {e:#}");
            return Ok(2);
        }
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print!("{}", db::render_verify(&v));
        print!("{}", files::render_verify(&v));
    }
    Ok(match (v["identical"].as_bool(), v["complete"].as_bool()) {
        (Some(true), _) => 0,
        (_, Some(false)) => 2,
        _ => 1,
    })
}

fn keygen(out: Option<&Path>, force: bool) -> Result<()> {
    let mut bytes = [0u8; 32];
    rand::Rng::fill(&mut rand::rngs::OsRng, &mut bytes);
    let key = PairKey::from_bytes(bytes);
    let Some(path) = out else {
        print!("{}", key.to_file_text());
        return Ok(());
    };
    use std::os::unix::fs::OpenOptionsExt;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).mode(0o600);
    if force {
        opts.create(true).truncate(true);
    } else {
        opts.create_new(true);
    }
    let mut f = opts.open(path).with_context(|| {
        format!(
            "cannot create {} (use --force to replace an existing key)",
            path.display()
        )
    })?;
    f.write_all(key.to_file_text().as_bytes())?;
    f.sync_all()?;
    eprintln!(
        "wrote {} (fingerprint {}); copy it to the other server, e.g. with scp",
        path.display(),
        key.fingerprint()
    );
    Ok(())
}

fn config_check(file: &Path) -> i32 {
    match Config::load(file) {
        Ok(cfg) => {
            println!("{}: OK", file.display());
            println!(
                "  pair {}: failover {}",
                cfg.pair.name,
                cfg.pair.failover.as_str()
            );
            for n in &cfg.nodes {
                let links: Vec<String> = n.heartbeat.iter().map(|l| l.to_string()).collect();
                println!(
                    "  node {}: control {}, replication {}, heartbeat {}",
                    n.name,
                    n.control,
                    n.replication,
                    links.join(", ")
                );
            }
            0
        }
        Err(e) => {
            eprintln!("{e}");
            2
        }
    }
}
