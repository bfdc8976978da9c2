//! Whole-binary test of `active = "always"`: a serial port both nodes need
//! stays open on the primary and on the standby, through a switchover,
//! while a role-gated port follows the primary and a port whose device is
//! missing is reported in status without stopping anything else.
//!
//! Both nodes run on this machine, so an "always" port cannot have a TCP
//! listener (both would bind it; the config refuses that). The ports here
//! are connect mode presented as ptys, whose paths get each node's
//! `path_prefix`. The device server is socat on loopback with a `cat` per
//! connection: a raw echo that, unlike a one-slot device server, lets both
//! nodes connect at once, as a port configured "always" needs.

mod common;

use common::*;
use serde_json::Value;
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const SETTLE: Duration = Duration::from_secs(15);
const ECHO: Duration = Duration::from_secs(5);

/// The application on a port's pty: a reader thread collects everything
/// and records a hangup (EOF or an error), which must never happen here.
struct App {
    file: std::fs::File,
    got: Arc<Mutex<Vec<u8>>>,
    hangup: Arc<Mutex<Option<String>>>,
}

impl App {
    fn open(link: &Path) -> App {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(nix::libc::O_NOCTTY)
            .open(link)
            .unwrap_or_else(|e| panic!("open {}: {e}", link.display()));
        let mut t = nix::sys::termios::tcgetattr(&file).unwrap();
        nix::sys::termios::cfmakeraw(&mut t);
        nix::sys::termios::tcsetattr(&file, nix::sys::termios::SetArg::TCSANOW, &t).unwrap();
        let got = Arc::new(Mutex::new(Vec::new()));
        let hangup = Arc::new(Mutex::new(None));
        let (mut reader, g, h) = (file.try_clone().unwrap(), got.clone(), hangup.clone());
        // Ends when tandem closes the pty at the end of the test.
        std::thread::spawn(move || {
            let mut buf = [0u8; 256];
            loop {
                match reader.read(&mut buf) {
                    Ok(0) => {
                        *h.lock().unwrap() = Some("EOF".into());
                        return;
                    }
                    Ok(n) => g.lock().unwrap().extend_from_slice(&buf[..n]),
                    Err(e) => {
                        *h.lock().unwrap() = Some(e.to_string());
                        return;
                    }
                }
            }
        });
        App { file, got, hangup }
    }

    /// Writes `mark` and waits for its echo.
    fn echo(&mut self, mark: &str) {
        self.file.write_all(mark.as_bytes()).unwrap();
        wait_for(ECHO, &format!("the echo of {mark:?}"), || {
            let got = self.got.lock().unwrap();
            String::from_utf8_lossy(&got).contains(mark).then_some(())
        });
    }

    fn assert_no_hangup(&self, what: &str) {
        let h = self.hangup.lock().unwrap().clone();
        assert_eq!(h, None, "{what}: the application saw a hangup");
    }
}

fn port<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["serial"]
        .as_array()
        .and_then(|ports| ports.iter().find(|p| p["name"] == name))
        .unwrap_or_else(|| panic!("no serial port {name:?} in {status}"))
}

#[test]
fn an_always_port_stays_open_on_both_nodes_through_a_switchover() {
    let tmp = tempfile::tempdir().unwrap();
    let [server_port, spare_port] = free_ports(2)[..] else {
        unreachable!()
    };
    let socat = which("socat");
    let server = Command::new(socat)
        .arg(format!(
            "TCP-LISTEN:{server_port},bind=127.0.0.1,reuseaddr,fork"
        ))
        .arg("EXEC:cat")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let prefixes: Vec<PathBuf> = ["a", "b"].iter().map(|n| tmp.path().join(n)).collect();
    for p in &prefixes {
        std::fs::create_dir_all(p.join("dev")).unwrap();
    }
    let connect_port = |name: &str, active: &str| {
        format!(
            "[[serial]]\nname = \"{name}\"\nmode = \"connect\"\nprotocol = \"raw\"\n\
             active = \"{active}\"\ndevice_servers = [\"127.0.0.1:{server_port}\"]\n\
             pty = \"/dev/{name}\"\nhealth_interval_ms = 100\n"
        )
    };
    let mut pair = Pair::new(Options {
        node_extra: [0, 1].map(|i| format!("path_prefix = \"{}\"", prefixes[i].display())),
        extra: format!(
            "{}{}[[serial]]\nname = \"spare\"\nmode = \"serve\"\ndevice = \"/dev/missing\"\n\
             listen = \"127.0.0.1:{spare_port}\"\nprotocol = \"raw\"\n",
            connect_port("gauge", "always"),
            connect_port("radio", "primary"),
        ),
        ..Options::default()
    });
    pair.adopt(server);
    pair.start(0);
    pair.start(1);
    pair.wait_roles(0, SETTLE);
    let link = |node: usize, name: &str| prefixes[node].join("dev").join(name);
    let connected = |node: usize, name: &str| {
        let s = pair.status(node)?;
        (port(&s, name)["state"] == "connected").then_some(s)
    };

    // The "always" port is open, and reaches the device server, on both.
    let mut gauge = Vec::new();
    for node in 0..2 {
        wait_for(SETTLE, "the gauge port connected", || {
            connected(node, "gauge")
        });
        let mut app = App::open(&link(node, "gauge"));
        app.echo(&format!("<gauge {node} before>"));
        gauge.push(app);
    }
    // The role-gated port only on the primary, a.
    let s = wait_for(SETTLE, "a's radio port connected", || connected(0, "radio"));
    assert!(link(0, "radio").exists());
    App::open(&link(0, "radio")).echo("<radio a>");
    let b = pair.status(1).unwrap();
    assert_eq!(port(&b, "radio")["state"], "inactive", "{b}");
    assert!(!link(1, "radio").exists(), "the standby has no radio pty");

    // A port whose device cannot be opened is reported, and only it.
    let spare = port(&s, "spare");
    assert_eq!(spare["state"], "listening", "{s}");
    assert_eq!(spare["device_open"], false, "{s}");
    let error = spare["last_error"].as_str().unwrap_or_default();
    assert!(error.contains("cannot open"), "{s}");
    assert!(error.contains("missing"), "{s}");
    assert_eq!(port(&b, "spare")["state"], "inactive", "{b}");
    // The human status shows where each port's bytes go and how often
    // that broke.
    let out = pair.cli(0, &["status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        text.contains(&format!(
            "device server 127.0.0.1:{server_port}; reconnects 0"
        )),
        "{text}"
    );
    assert!(text.contains("cannot open"), "{text}");
    let pty_before: Vec<Value> = (0..2)
        .map(|n| port(&pair.status(n).unwrap(), "gauge")["pty"].clone())
        .collect();

    let out = pair.cli(0, &["switchover", "--yes"]);
    assert!(out.status.success(), "{out:?}");
    pair.wait_roles(1, SETTLE);

    // The role-gated ports moved to b.
    wait_for(SETTLE, "b's radio port connected", || connected(1, "radio"));
    App::open(&link(1, "radio")).echo("<radio b>");
    let a = pair.status(0).unwrap();
    assert_eq!(port(&a, "radio")["state"], "inactive", "{a}");
    assert!(
        !link(0, "radio").exists(),
        "the new standby's radio pty is gone"
    );
    assert_eq!(port(&a, "spare")["state"], "inactive", "{a}");
    let b = pair.status(1).unwrap();
    assert_eq!(port(&b, "spare")["state"], "listening", "{b}");
    assert!(port(&b, "spare")["last_error"].is_string(), "{b}");

    // The "always" port did not notice: the same pty, the same device
    // server connection, no hangup, and data still flows on both nodes.
    for (node, app) in gauge.iter_mut().enumerate() {
        app.echo(&format!("<gauge {node} after>"));
        app.assert_no_hangup(&format!("node {node}'s gauge port"));
        let s = pair.status(node).unwrap();
        let g = port(&s, "gauge");
        assert_eq!(g["state"], "connected", "{s}");
        assert_eq!(g["pty"], pty_before[node], "{s}");
        assert_eq!(g["reconnects"], 0, "{s}");
        assert_eq!(g["failovers"], 0, "{s}");
    }
}
