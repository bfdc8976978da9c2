//! The virtual COM port of connect mode: a pseudo-terminal whose slave is
//! what local software opens, behind a stable symlink.
//!
//! tandem keeps its own descriptor of the slave open for the pty's whole
//! life. With it, the master never reads EIO when the application closes
//! and reopens the port, and the application never sees a hangup while the
//! device server behind it changes: from the application's side the port
//! is a serial port whose cable is briefly quiet.
//!
//! A Linux pty keeps only some of what an application sets: its driver
//! forces 8 data bits and no parity, but keeps the baud rate, stop bits and
//! flow control flags. Those are read back with tcgetattr on the slave
//! ([`Pty::observe`]) and mirrored to the device server. Modem lines (DTR,
//! RTS) cannot be set on a pty at all, so they are not observable here.

use crate::com_port::{FlowControl, LineSettings, StopBits};
use nix::sys::termios::{self, BaudRate, ControlFlags, InputFlags, SetArg};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use tokio::io::unix::AsyncFd;

/// Baud rates a termios can carry, as (constant, bits per second).
const BAUD_RATES: &[(BaudRate, u32)] = &[
    (BaudRate::B50, 50),
    (BaudRate::B75, 75),
    (BaudRate::B110, 110),
    (BaudRate::B134, 134),
    (BaudRate::B150, 150),
    (BaudRate::B200, 200),
    (BaudRate::B300, 300),
    (BaudRate::B600, 600),
    (BaudRate::B1200, 1200),
    (BaudRate::B1800, 1800),
    (BaudRate::B2400, 2400),
    (BaudRate::B4800, 4800),
    (BaudRate::B9600, 9600),
    (BaudRate::B19200, 19200),
    (BaudRate::B38400, 38400),
    (BaudRate::B57600, 57600),
    (BaudRate::B115200, 115200),
    (BaudRate::B230400, 230400),
    (BaudRate::B460800, 460800),
    (BaudRate::B500000, 500000),
    (BaudRate::B576000, 576000),
    (BaudRate::B921600, 921600),
    (BaudRate::B1000000, 1000000),
    (BaudRate::B1152000, 1152000),
    (BaudRate::B1500000, 1500000),
    (BaudRate::B2000000, 2000000),
    (BaudRate::B2500000, 2500000),
    (BaudRate::B3000000, 3000000),
    (BaudRate::B3500000, 3500000),
    (BaudRate::B4000000, 4000000),
];

/// What the application has set on the pty, as far as a pty keeps it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Observed {
    /// `None` when the termios carries no rate (B0, hang up).
    pub baud: Option<u32>,
    pub stop_bits: StopBits,
    pub flow: FlowControl,
}

impl Observed {
    /// Writes the fields that changed since `before` into `settings`.
    pub fn changes_into(&self, before: &Observed, settings: &mut LineSettings) {
        if self.baud != before.baud {
            if let Some(b) = self.baud {
                settings.baud = b;
            }
        }
        if self.stop_bits != before.stop_bits {
            settings.stop_bits = self.stop_bits;
        }
        if self.flow != before.flow {
            settings.flow = self.flow;
        }
    }
}

pub(crate) struct Pty {
    master: AsyncFd<File>,
    /// Held so the master never sees the slave close (see the module doc).
    slave: OwnedFd,
    slave_path: PathBuf,
    link: PathBuf,
}

fn nix_err(e: nix::Error) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

fn cloexec(fd: &OwnedFd) -> nix::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, FdFlag};
    fcntl(fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).map(drop)
}

impl Pty {
    /// Opens a pty in raw mode with `initial`'s baud rate, stop bits and
    /// flow control, and points `link` at its slave (atomically replacing
    /// whatever was there). Must run inside a tokio runtime.
    pub(crate) fn open(link: &Path, initial: &LineSettings) -> io::Result<Pty> {
        use nix::fcntl::{fcntl, FcntlArg, OFlag};
        let pair = nix::pty::openpty(None, None).map_err(nix_err)?;
        cloexec(&pair.master).map_err(nix_err)?;
        cloexec(&pair.slave).map_err(nix_err)?;
        fcntl(&pair.master, FcntlArg::F_SETFL(OFlag::O_NONBLOCK)).map_err(nix_err)?;

        // Raw from the start: with the default line discipline the slave
        // would echo what the device sends back to the device until the
        // application sets its own mode.
        let mut t = termios::tcgetattr(&pair.slave).map_err(nix_err)?;
        termios::cfmakeraw(&mut t);
        let rate = BAUD_RATES
            .iter()
            .find(|(_, b)| *b == initial.baud)
            .map_or(BaudRate::B9600, |(r, _)| *r);
        termios::cfsetspeed(&mut t, rate).map_err(nix_err)?;
        t.control_flags |= ControlFlags::CLOCAL | ControlFlags::CREAD;
        t.control_flags
            .set(ControlFlags::CSTOPB, initial.stop_bits == StopBits::Two);
        t.control_flags
            .set(ControlFlags::CRTSCTS, initial.flow == FlowControl::Hardware);
        t.input_flags.set(
            InputFlags::IXON | InputFlags::IXOFF,
            initial.flow == FlowControl::XonXoff,
        );
        termios::tcsetattr(&pair.slave, SetArg::TCSANOW, &t).map_err(nix_err)?;

        let slave_path = std::fs::read_link(format!("/proc/self/fd/{}", pair.slave.as_raw_fd()))?;
        replace_symlink(&slave_path, link)?;
        let master = File::from(pair.master);
        // SAFETY: the File owns the descriptor and lives inside the AsyncFd
        // until both are dropped together; nothing closes or replaces it
        // meanwhile, which is what `register` asks for.
        let master = unsafe { AsyncFd::register(master) }.map_err(|e| e.into_parts().1)?;
        Ok(Pty {
            master,
            slave: pair.slave,
            slave_path,
            link: link.to_path_buf(),
        })
    }

    /// The slave's path (`/dev/pts/N`), which `link` points at.
    pub(crate) fn slave_path(&self) -> &Path {
        &self.slave_path
    }

    /// What the application has set, read from the slave. TCGETS2 rather
    /// than tcgetattr: applications (pyserial, the serialport crate) set
    /// the rate with BOTHER and a number, which only termios2 carries.
    pub(crate) fn observe(&self) -> io::Result<Observed> {
        use nix::libc;
        // SAFETY: termios2 is plain old data, for which all-zero is valid.
        let mut t: libc::termios2 = unsafe { std::mem::zeroed() };
        // SAFETY: TCGETS2 writes one termios2 through the pointer, which
        // points at a live, writable termios2; the descriptor is ours.
        let r = unsafe { libc::ioctl(self.slave.as_raw_fd(), libc::TCGETS2, &mut t) };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        let baud = (t.c_ospeed > 0).then_some(t.c_ospeed);
        let stop_bits = if t.c_cflag & libc::CSTOPB != 0 {
            StopBits::Two
        } else {
            StopBits::One
        };
        let flow = if t.c_cflag & libc::CRTSCTS != 0 {
            FlowControl::Hardware
        } else if t.c_iflag & libc::IXON != 0 {
            FlowControl::XonXoff
        } else {
            FlowControl::None
        };
        Ok(Observed {
            baud,
            stop_bits,
            flow,
        })
    }

    /// Reads what the application wrote.
    pub(crate) async fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let mut guard = self.master.readable().await?;
            match guard.try_io(|f| f.get_ref().read(buf)) {
                Ok(r) => return r,
                Err(_would_block) => continue,
            }
        }
    }

    /// Writes some of `data` for the application to read.
    pub(crate) async fn write(&self, data: &[u8]) -> io::Result<usize> {
        loop {
            let mut guard = self.master.writable().await?;
            match guard.try_io(|f| f.get_ref().write(data)) {
                Ok(r) => return r,
                Err(_would_block) => continue,
            }
        }
    }
}

impl Drop for Pty {
    /// The link goes with the pty, unless something else took its place.
    fn drop(&mut self) {
        if std::fs::read_link(&self.link).ok().as_deref() == Some(self.slave_path.as_path()) {
            let _ = std::fs::remove_file(&self.link);
        }
    }
}

/// Points `link` at `target` with a rename, so that software opening
/// `link` finds either the old pty or the new one, never nothing.
fn replace_symlink(target: &Path, link: &Path) -> io::Result<()> {
    let dir = link.parent().unwrap_or(Path::new("/"));
    std::fs::create_dir_all(dir)?;
    let file = link
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "pty path has no file name"))?;
    let tmp = dir.join(format!(
        ".{}.tandem-{}",
        file.to_string_lossy(),
        std::process::id()
    ));
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp)?;
    if let Err(e) = std::fs::rename(&tmp, link) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(())
}
