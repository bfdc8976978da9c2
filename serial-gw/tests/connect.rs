//! Connect mode end to end: tandem as the client of two device servers,
//! presented as a pty. The device servers are tandem's own serve mode and
//! ser2net, each on a socat pty pair with an echo device at the far end.
//! An application streams numbered lines through the pty while the device
//! server in use dies or hangs.

mod support;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::*;
use tandem_config::SerialProtocol;
use tandem_serial_gw::com_port::StopBits;
use tandem_serial_gw::{ConnectOptions, Gateway, PortState, ServeOptions};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio_serial::{SerialPort, SerialPortBuilderExt};

const SHORT: Duration = Duration::from_secs(5);

/// A tandem serve-mode device server: cable, echo device, gateway.
struct ServeServer {
    _cable: Cable,
    _device: tokio::task::JoinHandle<()>,
    gw: Gateway,
    addr: SocketAddr,
}

async fn serve_server(dir: &Path, tag: &str) -> ServeServer {
    let sub = dir.join(tag);
    std::fs::create_dir_all(&sub).unwrap();
    let cable = Cable::new(&sub).await;
    let device = spawn_echo_device(&cable.far);
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut o = ServeOptions::new(&cable.device, addr);
    o.protocol = SerialProtocol::Rfc2217;
    o.reopen_interval = Duration::from_millis(50);
    let gw = Gateway::serve(tag, o);
    gw.activate().await.unwrap();
    wait_for("the device to open", SHORT, || gw.status().device_open).await;
    ServeServer {
        _cable: cable,
        _device: device,
        gw,
        addr,
    }
}

fn connect_options(servers: &[String], link: &Path) -> ConnectOptions {
    let mut o = ConnectOptions::new(servers.to_vec(), SerialProtocol::Rfc2217);
    o.pty = Some(link.to_path_buf());
    o.health_interval = Duration::from_millis(100);
    o.failback_hold = Duration::from_millis(300);
    o.backoff_min = Duration::from_millis(20);
    o.backoff_max = Duration::from_millis(200);
    o
}

/// The application: opens the pty, sets 57600 baud and 2 stop bits, then
/// streams numbered lines and collects the echoes. Any EOF or error on
/// the pty read is a hangup, which the test fails on.
struct App {
    received: Arc<Mutex<BTreeSet<u64>>>,
    written: Arc<AtomicU64>,
    hangup: Arc<Mutex<Option<String>>>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl App {
    async fn start(link: &Path) -> App {
        let mut port = tokio_serial::new(link.to_string_lossy(), 9600)
            .open_native_async()
            .expect("the application opens the pty");
        port.set_baud_rate(57600).unwrap();
        port.set_stop_bits(tokio_serial::StopBits::Two).unwrap();
        let (r, mut w) = tokio::io::split(port);
        let received = Arc::new(Mutex::new(BTreeSet::new()));
        let written = Arc::new(AtomicU64::new(0));
        let hangup = Arc::new(Mutex::new(None));
        let stop = Arc::new(AtomicBool::new(false));
        let reader = {
            let (received, hangup, stop) = (received.clone(), hangup.clone(), stop.clone());
            tokio::spawn(async move {
                let mut lines = BufReader::new(r).lines();
                while !stop.load(Ordering::SeqCst) {
                    match lines.next_line().await {
                        Ok(Some(l)) => {
                            // A line cut by a switch is not a number; it is
                            // a loss, not a hangup.
                            if let Ok(n) = l.trim().parse::<u64>() {
                                received.lock().unwrap().insert(n);
                            }
                        }
                        Ok(None) => {
                            *hangup.lock().unwrap() = Some("EOF".into());
                            return;
                        }
                        Err(e) => {
                            *hangup.lock().unwrap() = Some(e.to_string());
                            return;
                        }
                    }
                }
            })
        };
        let writer = {
            let (written, stop) = (written.clone(), stop.clone());
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_millis(5));
                let mut n = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    tick.tick().await;
                    if w.write_all(format!("{n:08}\n").as_bytes()).await.is_err() {
                        return;
                    }
                    n += 1;
                    written.store(n, Ordering::SeqCst);
                }
            })
        };
        App {
            received,
            written,
            hangup,
            stop,
            tasks: vec![reader, writer],
        }
    }

    fn written(&self) -> u64 {
        self.written.load(Ordering::SeqCst)
    }

    fn highest(&self) -> Option<u64> {
        self.received.lock().unwrap().iter().next_back().copied()
    }

    /// Waits until a line written after now comes back.
    async fn wait_echo_after_now(&self, what: &str) {
        let mark = self.written();
        wait_for(what, SHORT, || {
            self.assert_no_hangup();
            self.highest().is_some_and(|h| h >= mark)
        })
        .await;
    }

    fn assert_no_hangup(&self) {
        if let Some(h) = self.hangup.lock().unwrap().as_ref() {
            panic!("the application saw a hangup: {h}");
        }
    }
}

impl Drop for App {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// The link exists and points at a pty.
fn assert_pty_link(link: &Path) -> PathBuf {
    let target = std::fs::read_link(link).expect("the pty link");
    assert!(target.starts_with("/dev/pts"), "{target:?}");
    target
}

#[tokio::test]
async fn failover_between_tandem_serve_servers_without_hangup_then_failback() {
    let dir = tempfile::tempdir().unwrap();
    let a = serve_server(dir.path(), "a").await;
    let b = serve_server(dir.path(), "b").await;
    let link = dir.path().join("dev").join("radio");
    let servers = [a.addr.to_string(), b.addr.to_string()];
    let gw = Gateway::connect("radio", connect_options(&servers, &link));
    gw.activate().await.unwrap();
    let slave = assert_pty_link(&link);
    assert_eq!(gw.status().pty, Some(slave.display().to_string()));
    wait_for("the first device server", SHORT, || {
        gw.status().device_server == Some(servers[0].clone())
    })
    .await;
    assert_eq!(gw.status().state, PortState::Connected);

    let app = App::start(&link).await;
    app.wait_echo_after_now("echoes through server a").await;
    // The settings the application set are mirrored to server a.
    wait_for("57600 8N2 on server a", SHORT, || {
        a.gw.status()
            .settings
            .is_some_and(|s| s.baud == 57600 && s.stop_bits == StopBits::Two)
    })
    .await;

    // Server a dies.
    let killed = Instant::now();
    a.gw.deactivate().await;
    wait_for("the switch to server b", SHORT, || {
        gw.status().device_server == Some(servers[1].clone())
    })
    .await;
    let switched = killed.elapsed();
    app.wait_echo_after_now("echoes through server b").await;
    let resumed = killed.elapsed();
    eprintln!("switched in {switched:?}, stream resumed in {resumed:?}");
    assert!(
        switched < Duration::from_secs(1),
        "switch took {switched:?}"
    );
    assert!(resumed < Duration::from_secs(2), "resume took {resumed:?}");
    app.assert_no_hangup();
    // What the application set before the failover is in effect on b.
    let s = b.gw.status().settings.expect("b has a client");
    assert_eq!((s.baud, s.stop_bits), (57600, StopBits::Two));
    assert!(b.gw.status().bytes_from_device > 0);
    let st = gw.status();
    assert_eq!((st.failovers, st.reconnects), (1, 1));
    assert!(st.bytes_to_device > 0 && st.bytes_from_device > 0);
    assert_eq!(st.settings.map(|s| s.baud), Some(57600));

    // Server a returns; tandem moves back after the hold-down.
    a.gw.activate().await.unwrap();
    let back = Instant::now();
    wait_for("the failback to server a", SHORT, || {
        gw.status().device_server == Some(servers[0].clone())
    })
    .await;
    assert!(
        back.elapsed() >= Duration::from_millis(300),
        "failed back before the hold-down: {:?}",
        back.elapsed()
    );
    app.wait_echo_after_now("echoes through server a again")
        .await;
    app.assert_no_hangup();
    wait_for("the slot on b to free", SHORT, || {
        b.gw.status().client.is_none()
    })
    .await;

    // Demotion: everything closed within 500 ms, the link gone, and the
    // device server's connection slot free.
    let started = Instant::now();
    gw.deactivate().await;
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(500),
        "deactivate took {took:?}"
    );
    assert!(std::fs::symlink_metadata(&link).is_err(), "pty link left");
    wait_for("the slot on a to free", Duration::from_millis(500), || {
        a.gw.status().client.is_none()
    })
    .await;
    assert_eq!(gw.status().state, PortState::Inactive);
    drop(app);
    a.gw.deactivate().await;
    b.gw.deactivate().await;
}

#[tokio::test]
async fn failover_between_ser2net_servers_on_a_hung_server() {
    let dir = tempfile::tempdir().unwrap();
    let mut cables = Vec::new();
    let mut devices = Vec::new();
    let mut s2n = Vec::new();
    for tag in ["a", "b"] {
        let sub = dir.path().join(tag);
        std::fs::create_dir_all(&sub).unwrap();
        let cable = Cable::new(&sub).await;
        devices.push(spawn_echo_device(&cable.far));
        s2n.push(Ser2net::start(dir.path(), tag, &cable.device, free_port()).await);
        cables.push(cable);
    }
    let servers: Vec<String> = s2n
        .iter()
        .map(|s| format!("127.0.0.1:{}", s.port))
        .collect();
    let link = dir.path().join("radio");
    let mut o = connect_options(&servers, &link);
    o.failback_hold = Duration::from_secs(60);
    let gw = Gateway::connect("radio", o);
    gw.activate().await.unwrap();
    wait_for("ser2net a", SHORT, || {
        gw.status().device_server == Some(servers[0].clone())
    })
    .await;
    let app = App::start(&link).await;
    app.wait_echo_after_now("echoes through ser2net a").await;
    wait_for("ser2net a to answer 57600 and 2 stop bits", SHORT, || {
        gw.status()
            .settings
            .is_some_and(|s| s.baud == 57600 && s.stop_bits == StopBits::Two)
    })
    .await;

    // ser2net a hangs: its connection stays up, only the health query
    // goes unanswered.
    let hung = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(s2n[0].pid()),
        nix::sys::signal::Signal::SIGSTOP,
    )
    .unwrap();
    wait_for("the switch to ser2net b", SHORT, || {
        gw.status().device_server == Some(servers[1].clone())
    })
    .await;
    let switched = hung.elapsed();
    app.wait_echo_after_now("echoes through ser2net b").await;
    eprintln!(
        "hung server left in {switched:?}, stream resumed in {:?}",
        hung.elapsed()
    );
    assert!(
        switched < Duration::from_secs(1),
        "switch took {switched:?}"
    );
    app.assert_no_hangup();
    // ser2net b's answers: the application's settings are in effect there.
    let s = gw.status().settings.expect("answers");
    assert_eq!((s.baud, s.stop_bits), (57600, StopBits::Two));
    assert_eq!(gw.status().failovers, 1);

    let started = Instant::now();
    gw.deactivate().await;
    assert!(started.elapsed() < Duration::from_millis(500));
    assert!(std::fs::symlink_metadata(&link).is_err(), "pty link left");
    drop(app);
    drop(s2n);
}

/// The TCP presentation, raw both ways: a client of the local listener
/// reaches the device through a raw device server.
#[tokio::test]
async fn raw_tcp_presentation() {
    let dir = tempfile::tempdir().unwrap();
    let cable = Cable::new(dir.path()).await;
    let _device = spawn_echo_device(&cable.far);
    let mut so = ServeOptions::new(&cable.device, "127.0.0.1:0".parse().unwrap());
    so.protocol = SerialProtocol::Raw;
    let server = Gateway::serve("far", so);
    server.activate().await.unwrap();
    let server_addr = server.status().listen.unwrap();

    let mut o = ConnectOptions::new(vec![server_addr.to_string()], SerialProtocol::Raw);
    o.listen = Some("127.0.0.1:0".parse().unwrap());
    let gw = Gateway::connect("tcp", o);
    gw.activate().await.unwrap();
    assert_eq!(gw.status().pty, None);
    wait_for("the device server", SHORT, || gw.status().device_open).await;
    let mut c = tokio::net::TcpStream::connect(gw.status().listen.unwrap())
        .await
        .unwrap();
    let payload: Vec<u8> = (0..=255u8).collect();
    c.write_all(&payload).await.unwrap();
    assert_eq!(read_exactly(&mut c, payload.len(), SHORT).await, payload);
    let st = gw.status();
    assert_eq!((st.bytes_to_device, st.bytes_from_device), (256, 256));
    assert_eq!(st.client, Some(c.local_addr().unwrap()));
    gw.deactivate().await;
    assert!(closed_within(&mut c, Duration::from_millis(500)).await);
    server.deactivate().await;
}

/// A device server that is down at activation: the pty is there at once,
/// what the application writes is held (bounded) and delivered once the
/// server comes up.
#[tokio::test]
async fn pty_is_there_before_the_device_server_and_held_data_is_sent() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let link = dir.path().join("late");
    let mut o = connect_options(&[format!("127.0.0.1:{port}")], &link);
    o.buffer_bytes_max = 4096;
    let gw = Gateway::connect("late", o);
    gw.activate().await.unwrap();
    assert_pty_link(&link);
    wait_for("the error in status", SHORT, || {
        gw.status().last_error.is_some()
    })
    .await;
    assert_eq!(gw.status().state, PortState::Listening);
    let mut app = tokio_serial::new(link.to_string_lossy(), 9600)
        .open_native_async()
        .unwrap();
    app.write_all(b"early\n").await.unwrap();
    wait_for("the held bytes", SHORT, || gw.status().bytes_to_device == 6).await;

    let cable = Cable::new(dir.path()).await;
    let _device = spawn_echo_device(&cable.far);
    let mut so = ServeOptions::new(&cable.device, format!("127.0.0.1:{port}").parse().unwrap());
    so.protocol = SerialProtocol::Rfc2217;
    let server = Gateway::serve("far", so);
    server.activate().await.unwrap();
    wait_for("the device server", SHORT, || gw.status().device_open).await;
    let mut lines = BufReader::new(app).lines();
    let line = tokio::time::timeout(SHORT, lines.next_line())
        .await
        .expect("the held line comes back")
        .unwrap();
    assert_eq!(line.as_deref(), Some("early"));
    assert_eq!(gw.status().bytes_dropped, 0);
    gw.deactivate().await;
    server.deactivate().await;
}
