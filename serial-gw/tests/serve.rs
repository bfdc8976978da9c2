//! Serve mode end to end: a socat pty pair stands for the cable, an echo
//! device sits at the far end, and real clients connect over loopback.

mod support;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::*;
use tandem_config::SerialProtocol;
use tandem_serial_gw::{ClientPolicy, Gateway, PortState, ServeOptions};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const SHORT: Duration = Duration::from_secs(5);

fn options(device: &std::path::Path, protocol: SerialProtocol) -> ServeOptions {
    let mut o = ServeOptions::new(device, "127.0.0.1:0".parse().unwrap());
    o.protocol = protocol;
    o.reopen_interval = Duration::from_millis(50);
    o
}

async fn active(name: &str, opts: ServeOptions) -> (Gateway, SocketAddr) {
    let gw = Gateway::serve(name, opts);
    gw.activate().await.expect("activate");
    let addr = gw.status().listen.expect("bound");
    wait_for("the device to open", SHORT, || gw.status().device_open).await;
    (gw, addr)
}

async fn echo_round_trip(client: &mut TcpStream, payload: &[u8]) {
    client.write_all(payload).await.unwrap();
    assert_eq!(read_exactly(client, payload.len(), SHORT).await, payload);
}

#[tokio::test]
async fn pyserial_rfc2217_client_sets_everything_and_exchanges_data() {
    require(
        "python3",
        &["-c", "import serial.rfc2217"],
        "pip install pyserial",
    );
    let dir = tempfile::tempdir().unwrap();
    let cable = Cable::new(dir.path()).await;
    let _device = spawn_echo_device(&cable.far);
    let (gw, addr) = active("gauge", options(&cable.device, SerialProtocol::Rfc2217)).await;

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/pyserial_client.py");
    let out = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .arg(script)
            .arg(addr.port().to_string())
            .stdin(Stdio::null())
            .output()
            .expect("run python3")
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "pyserial failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let res: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json from pyserial");
    eprintln!("pyserial: {res}");
    // A Linux pty keeps CS8 and no parity whatever is asked: the answers
    // carry the values in effect, so pyserial sees those two refused.
    assert_eq!(
        res["settings"],
        serde_json::json!({
            "baudrate": "accepted", "bytesize": "refused", "parity": "refused",
            "stopbits": "accepted", "rtscts": "accepted", "rtscts_off": "accepted",
            "xonxoff": "accepted"
        })
    );
    // cts, dsr, ri, cd
    assert_eq!(
        res["modem_initial"],
        serde_json::json!([true, true, false, true])
    );
    assert_eq!(
        res["modem_dtr_off"],
        serde_json::json!([true, false, false, false])
    );
    assert_eq!(
        res["modem_rts_off"],
        serde_json::json!([false, false, false, false])
    );
    assert_eq!(res["echo_ok"], serde_json::json!(true), "{res}");
    let open_ms = res["open_ms"].as_f64().unwrap();
    // The target is 450 ms (pyserial sleeps about 350 ms by itself); the
    // bound here leaves room for a loaded test machine.
    assert!(open_ms < 1000.0, "pyserial open took {open_ms} ms");

    let st = gw.status();
    assert_eq!(st.bytes_to_device, 1024);
    assert_eq!(st.bytes_from_device, 1024);
    // The settings read back from the device after the last request.
    let s = st.settings.expect("settings");
    assert_eq!((s.baud, s.data_bits), (115200, 8));
    assert_eq!(s.parity, tandem_serial_gw::com_port::Parity::None);
    assert_eq!(s.stop_bits, tandem_serial_gw::com_port::StopBits::One);
    assert_eq!(s.flow, tandem_serial_gw::com_port::FlowControl::None);
    assert!(s.dtr && s.rts);
    gw.deactivate().await;
}

#[tokio::test]
async fn raw_mode_passes_every_byte_and_counts() {
    let dir = tempfile::tempdir().unwrap();
    let cable = Cable::new(dir.path()).await;
    let _device = spawn_echo_device(&cable.far);
    let mut opts = options(&cable.device, SerialProtocol::Raw);
    let trace = dir.path().join("trace.log");
    opts.trace_file = Some(trace.clone());
    let (gw, addr) = active("raw", opts).await;
    let mut c = TcpStream::connect(addr).await.unwrap();
    let payload: Vec<u8> = (0..=255u8).collect();
    echo_round_trip(&mut c, &payload).await;
    let st = gw.status();
    assert_eq!(st.state, PortState::Connected);
    assert_eq!(st.client, Some(c.local_addr().unwrap()));
    assert_eq!((st.bytes_to_device, st.bytes_from_device), (256, 256));
    let text = std::fs::read_to_string(&trace).unwrap();
    assert!(text.contains(" net>dev 000102"), "{text}");
    assert!(text.contains(" dev>net "), "{text}");
    gw.deactivate().await;
}

#[tokio::test]
async fn kick_old_and_refuse_new() {
    let dir = tempfile::tempdir().unwrap();
    let cable = Cable::new(dir.path()).await;
    let _device = spawn_echo_device(&cable.far);

    let (gw, addr) = active("kick", options(&cable.device, SerialProtocol::Raw)).await;
    let mut first = TcpStream::connect(addr).await.unwrap();
    echo_round_trip(&mut first, b"one").await;
    let mut second = TcpStream::connect(addr).await.unwrap();
    assert!(closed_within(&mut first, SHORT).await, "old client kept");
    echo_round_trip(&mut second, b"two").await;
    gw.deactivate().await;

    let mut opts = options(&cable.device, SerialProtocol::Raw);
    opts.client_policy = ClientPolicy::RefuseNew;
    let (gw, addr) = active("refuse", opts).await;
    let mut first = TcpStream::connect(addr).await.unwrap();
    echo_round_trip(&mut first, b"one").await;
    let mut second = TcpStream::connect(addr).await.unwrap();
    assert!(closed_within(&mut second, SHORT).await, "new client kept");
    echo_round_trip(&mut first, b"still").await;
    assert_eq!(gw.status().clients_refused, 1);
    gw.deactivate().await;
}

#[tokio::test]
async fn allow_list_refuses_other_addresses() {
    let dir = tempfile::tempdir().unwrap();
    let cable = Cable::new(dir.path()).await;
    let mut opts = options(&cable.device, SerialProtocol::Raw);
    opts.allow = vec!["127.0.0.2".parse().unwrap()];
    let (gw, addr) = active("allow", opts).await;
    let mut c = TcpStream::connect(addr).await.unwrap();
    assert!(closed_within(&mut c, SHORT).await);
    assert_eq!(gw.status().clients_refused, 1);
    assert_eq!(gw.status().client, None);
    gw.deactivate().await;
}

#[tokio::test]
async fn deactivate_frees_listener_client_and_device_within_500ms() {
    let dir = tempfile::tempdir().unwrap();
    let cable = Cable::new(dir.path()).await;
    let _device = spawn_echo_device(&cable.far);
    let (gw, addr) = active("gate", options(&cable.device, SerialProtocol::Rfc2217)).await;
    let mut c = TcpStream::connect(addr).await.unwrap();
    wait_for("the client", SHORT, || gw.status().client.is_some()).await;

    let started = Instant::now();
    gw.deactivate().await;
    assert!(closed_within(&mut c, Duration::from_millis(500)).await);
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(500),
        "deactivate took {took:?}"
    );
    // Not listening: the port can be bound again. (A connect that fails
    // proves less: to a free loopback port it can succeed by connecting
    // to itself, which made this test flaky.)
    drop(std::net::TcpListener::bind(addr).expect("still listening"));
    // The device is free: it opens exclusively again.
    tokio_serial::SerialPortBuilderExt::open_native_async(tokio_serial::new(
        cable.device.to_string_lossy(),
        9600,
    ))
    .expect("device released");
    assert_eq!(gw.status().state, PortState::Inactive);

    // And it comes back on the same port.
    gw.activate().await.unwrap();
    let again = gw.status().listen.unwrap();
    assert_eq!(again.ip(), addr.ip());
    gw.deactivate().await;
}

#[tokio::test]
async fn vanished_device_is_reopened_while_the_client_stays() {
    let dir = tempfile::tempdir().unwrap();
    let mut cable = Cable::new(dir.path()).await;
    let device = spawn_echo_device(&cable.far);
    let (gw, addr) = active("vanish", options(&cable.device, SerialProtocol::Raw)).await;
    let mut c = TcpStream::connect(addr).await.unwrap();
    echo_round_trip(&mut c, b"before").await;

    cable.unplug();
    device.abort();
    wait_for("the loss to show", SHORT, || !gw.status().device_open).await;
    assert!(gw.status().last_error.is_some());

    let cable = Cable::at(cable.device.clone(), cable.far.clone()).await;
    let _device = spawn_echo_device(&cable.far);
    wait_for("the reopen", SHORT, || gw.status().device_open).await;
    assert_eq!(gw.status().reconnects, 1);
    echo_round_trip(&mut c, b"after").await;
    gw.deactivate().await;
}

#[tokio::test]
async fn missing_device_is_reported_and_retried() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("device");
    let gw = Gateway::serve("late", options(&path, SerialProtocol::Raw));
    gw.activate()
        .await
        .expect("a missing device does not fail activation");
    wait_for("the error in status", SHORT, || {
        gw.status().last_error.is_some()
    })
    .await;
    assert!(!gw.status().device_open);
    let cable = Cable::at(path, dir.path().join("far")).await;
    let _device = spawn_echo_device(&cable.far);
    wait_for("the device to open", SHORT, || gw.status().device_open).await;
    assert_eq!(gw.status().last_error, None);
    gw.deactivate().await;
}

#[tokio::test]
async fn idle_client_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let cable = Cable::new(dir.path()).await;
    let mut opts = options(&cable.device, SerialProtocol::Raw);
    opts.idle_timeout = Some(Duration::from_millis(200));
    let (gw, addr) = active("idle", opts).await;
    let mut c = TcpStream::connect(addr).await.unwrap();
    assert!(closed_within(&mut c, SHORT).await);
    wait_for("the slot to free", SHORT, || gw.status().client.is_none()).await;
    gw.deactivate().await;
}

#[tokio::test]
async fn unbindable_listener_fails_activation_with_a_reason() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut opts = ServeOptions::new("/nonexistent", taken.local_addr().unwrap());
    opts.protocol = SerialProtocol::Raw;
    let gw = Gateway::serve("busy", opts);
    let err = gw.activate().await.unwrap_err();
    assert!(err.to_string().contains("cannot listen"), "{err}");
    assert!(gw.status().last_error.is_some());
}

/// A hand-driven RFC 2217 client: the 1-byte (Cisco) baud form, IAC data
/// both ways, and the first NOTIFY-MODEMSTATE right after negotiation.
#[tokio::test]
async fn legacy_baud_form_and_iac_data_over_rfc2217() {
    use tandem_serial_gw::rfc2217::*;
    let dir = tempfile::tempdir().unwrap();
    let cable = Cable::new(dir.path()).await;
    let _device = spawn_echo_device(&cable.far);
    let (gw, addr) = active("legacy", options(&cable.device, SerialProtocol::Rfc2217)).await;
    let mut c = TcpStream::connect(addr).await.unwrap();
    let mut wire = Vec::new();
    encode_negotiation(Verb::Will, OPT_COM_PORT, &mut wire);
    let client = |command| ComPortMessage {
        direction: Direction::ClientToServer,
        command,
    };
    encode_com_port(&client(ComPortCommand::SetBaudRateLegacy(14)), &mut wire);
    encode_data(&[IAC, 1, IAC], &mut wire);
    c.write_all(&wire).await.unwrap();

    let server = |command| {
        Item::ComPort(ComPortMessage {
            direction: Direction::ServerToClient,
            command,
        })
    };
    let expected = vec![
        Item::Negotiation {
            verb: Verb::Do,
            option: OPT_COM_PORT,
        },
        server(ComPortCommand::NotifyModemState(Some(
            modem::CTS | modem::DSR | modem::CD,
        ))),
        server(ComPortCommand::SetBaudRateLegacy(14)),
        Item::Data(vec![IAC, 1, IAC]),
    ];
    let mut decoder = Decoder::default();
    let mut items = Vec::new();
    let deadline = tokio::time::Instant::now() + SHORT;
    let mut buf = [0u8; 256];
    while items != expected {
        assert!(items.len() <= expected.len(), "got {items:?}");
        let n = tokio::time::timeout_at(deadline, tokio::io::AsyncReadExt::read(&mut c, &mut buf))
            .await
            .expect("answers in time")
            .unwrap();
        assert!(n > 0, "closed; got {items:?}");
        decoder.decode(&buf[..n], &mut items);
    }
    assert_eq!(gw.status().settings.map(|s| s.baud), Some(115200));
    gw.deactivate().await;
}

/// A burst far bigger than the tty can buffer, sent while the far end reads
/// nothing yet: the device pushes back, the rest waits in serve mode's
/// backlog (written as the device takes it), and every byte arrives once,
/// in order, with nothing dropped.
#[tokio::test]
async fn a_burst_bigger_than_the_tty_buffer_arrives_whole_and_in_order() {
    use tokio::io::AsyncReadExt;
    const TOTAL: usize = 256 * 1024;
    let dir = tempfile::tempdir().unwrap();
    let cable = Cable::new(dir.path()).await;
    let (gw, addr) = active("burst", options(&cable.device, SerialProtocol::Raw)).await;
    let c = TcpStream::connect(addr).await.unwrap();
    let payload: Vec<u8> = (0..TOTAL).map(|i| (i % 251) as u8).collect();
    let (_read_half, mut write_half) = c.into_split();
    let sent = payload.clone();
    let writer = tokio::spawn(async move { write_half.write_all(&sent).await });
    wait_for("the device to take the first bytes", SHORT, || {
        gw.status().bytes_to_device > 0
    })
    .await;

    let mut far = tokio_serial::SerialPortBuilderExt::open_native_async(tokio_serial::new(
        cable.far.to_string_lossy(),
        9600,
    ))
    .expect("open the far end");
    let mut got = vec![0u8; TOTAL];
    tokio::time::timeout(Duration::from_secs(30), far.read_exact(&mut got))
        .await
        .expect("the whole burst within 30 s")
        .expect("read the far end");
    assert!(got == payload, "the burst arrived changed or out of order");
    writer
        .await
        .unwrap()
        .expect("the client wrote the whole burst");
    wait_for("every byte counted", SHORT, || {
        gw.status().bytes_to_device == TOTAL as u64
    })
    .await;
    assert_eq!(gw.status().bytes_dropped, 0);
    gw.deactivate().await;
}
