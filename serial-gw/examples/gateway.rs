//! Runs one `[[serial]]` port of a tandem config on its own, active at once,
//! until SIGTERM or SIGINT: a test and benchmark harness while the node's
//! role gating is wired elsewhere.
//!
//! Usage: `gateway CONFIG PORT_NAME`. Prints the port's status as one JSON
//! line when active and again whenever the device server in use or the
//! device state changes. Paths are used as written: the nodes'
//! `path_prefix` is not applied.

use std::path::PathBuf;
use std::time::Duration;
use tandem_serial_gw::Gateway;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(config), Some(name)) = (args.next(), args.next()) else {
        eprintln!("usage: gateway CONFIG PORT_NAME");
        std::process::exit(2);
    };
    let config = tandem_config::Config::load(&PathBuf::from(config))?;
    let Some(port) = config.serial.iter().find(|p| p.name == name) else {
        eprintln!("no [[serial]] port named {name:?}");
        std::process::exit(2);
    };
    let gw = Gateway::from_config(port)?;
    gw.activate().await?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    let mut last: Option<(Option<String>, bool)> = None;
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
            _ = tick.tick() => {
                let s = gw.status();
                let now = (s.device_server.clone(), s.device_open);
                if last.as_ref() != Some(&now) {
                    println!("{}", serde_json::to_string(&s)?);
                    last = Some(now);
                }
            }
        }
    }
    gw.deactivate().await;
    Ok(())
}
