//! Test rig: socat pty pairs standing for a serial cable, a device emulator
//! on the far end, and waiting for conditions with deadlines.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_serial::SerialPortBuilderExt;

/// Fails the test loudly when a tool is missing: a skipped test would hide it.
pub fn require(tool: &str, probe: &[&str], hint: &str) {
    let ok = Command::new(tool)
        .args(probe)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "{tool} is required by this test: {hint}");
}

/// Polls `cond` until it holds or `within` passes.
pub async fn wait_for(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// `socat pty,link=device pty,link=far`: a null-modem cable between two
/// ptys. Killed and reaped on drop.
pub struct Cable {
    child: Child,
    pub device: PathBuf,
    pub far: PathBuf,
}

impl Cable {
    pub async fn new(dir: &Path) -> Cable {
        Cable::at(dir.join("device"), dir.join("far")).await
    }

    pub async fn at(device: PathBuf, far: PathBuf) -> Cable {
        require("socat", &["-V"], "apt-get install -y socat");
        let _ = std::fs::remove_file(&device);
        let _ = std::fs::remove_file(&far);
        let child = Command::new("socat")
            .arg(format!("pty,raw,echo=0,link={}", device.display()))
            .arg(format!("pty,raw,echo=0,link={}", far.display()))
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn socat");
        let cable = Cable { child, device, far };
        let (d, f) = (cable.device.clone(), cable.far.clone());
        wait_for("socat's pty links", Duration::from_secs(5), || {
            d.exists() && f.exists()
        })
        .await;
        cable
    }

    /// Pulls the cable out: the ptys close, as an unplugged USB adapter.
    pub fn unplug(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Cable {
    fn drop(&mut self) {
        self.unplug();
    }
}

/// The device at the far end of the cable: echoes every byte back.
/// Ends when the cable is unplugged or the handle is aborted.
pub fn spawn_echo_device(far: &Path) -> tokio::task::JoinHandle<()> {
    let mut port = tokio_serial::new(far.to_string_lossy(), 9600)
        .open_native_async()
        .expect("open the far end of the cable");
    tokio::spawn(async move {
        let mut buf = [0u8; 1024];
        loop {
            match port.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if port.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            }
        }
    })
}

/// Reads exactly `n` bytes or fails after `within`.
pub async fn read_exactly(
    stream: &mut tokio::net::TcpStream,
    n: usize,
    within: Duration,
) -> Vec<u8> {
    let mut got = vec![0u8; n];
    tokio::time::timeout(within, stream.read_exact(&mut got))
        .await
        .expect("timed out reading")
        .expect("read");
    got
}

/// Waits until the peer closes `stream` (EOF or reset).
pub async fn closed_within(stream: &mut tokio::net::TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 64];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

/// A free TCP port on 127.0.0.1 (bound, then released for the caller).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// True when something listens on 127.0.0.1:`port` (read from
/// /proc/net/tcp, so that checking opens no session on the server).
pub fn listening(port: u16) -> bool {
    let want = format!("0100007F:{port:04X}");
    std::fs::read_to_string("/proc/net/tcp")
        .map(|t| {
            t.lines().any(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f.len() > 3 && f[1] == want && f[3] == "0A"
            })
        })
        .unwrap_or(false)
}

/// `ser2net -n -d -c FILE` serving `device` as RFC 2217 on 127.0.0.1:`port`
/// with `chardelay: false`. Killed by its PID and reaped on drop.
pub struct Ser2net {
    child: Child,
    pub port: u16,
}

impl Ser2net {
    pub async fn start(dir: &Path, tag: &str, device: &Path, port: u16) -> Ser2net {
        require("ser2net", &["-v"], "apt-get install -y ser2net (version 4)");
        let config = dir.join(format!("ser2net-{tag}.yaml"));
        std::fs::write(
            &config,
            format!(
                "connection: &{tag}\n  accepter: telnet(rfc2217),tcp,127.0.0.1,{port}\n  \
                 connector: serialdev,{},9600n81,local\n  options:\n    chardelay: false\n",
                device.display()
            ),
        )
        .unwrap();
        let child = Command::new("ser2net")
            .args(["-n", "-d", "-c"])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn ser2net");
        let s = Ser2net { child, port };
        wait_for("ser2net to listen", Duration::from_secs(5), || {
            listening(port)
        })
        .await;
        s
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Ser2net {
    fn drop(&mut self) {
        self.kill();
    }
}
