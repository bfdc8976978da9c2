//! Directories of a file set held open, and their entries reached by name
//! only.
//!
//! A local process on the standby may swap a directory of the set for a
//! symlink at any moment. Checking each parent with `lstat` and then using
//! the path leaves a window between the check and the use; instead every
//! operation is made relative to a [`Dir`] opened one component at a time
//! with `O_NOFOLLOW | O_DIRECTORY`, and acts on a single name in it
//! (`openat`, `renameat`, `unlinkat`, ... with no-follow flags). What is
//! done is then done in the directory that was inside the root when it was
//! opened, wherever a path to it leads afterwards.

use nix::dir::Type;
use nix::fcntl::{openat, readlinkat, renameat, AtFlags, OFlag, AT_FDCWD};
use nix::sys::stat::{futimens, mkdirat, utimensat, Mode, UtimensatFlags};
use nix::sys::time::TimeSpec;
use nix::unistd::{fchownat, symlinkat, unlinkat, Gid, Uid, UnlinkatFlags};
use std::ffi::{OsStr, OsString};
use std::fs::{File, Metadata};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// A directory, open.
#[derive(Debug)]
pub struct Dir(File);

fn err(e: nix::errno::Errno) -> io::Error {
    io::Error::from(e)
}

/// A time in nanoseconds since the epoch, as `utimensat` takes it.
fn timespec(ns: i64) -> TimeSpec {
    TimeSpec::new(ns.div_euclid(1_000_000_000), ns.rem_euclid(1_000_000_000))
}

impl Dir {
    /// The directory at `path` (a set's root: its own path is trusted).
    pub fn open(path: &Path) -> io::Result<Dir> {
        let fd = openat(
            AT_FDCWD,
            path,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(err)?;
        Ok(Dir(File::from(fd)))
    }

    /// The directory `name` in this one, never through a symlink and never
    /// anything but a directory (`ENOTDIR` or `ELOOP`). One that may be
    /// searched but not read (mode 0311) is opened `O_PATH`: names below
    /// it can be reached, but it cannot be listed, fsynced or touched.
    pub fn dir(&self, name: &(impl AsRef<OsStr> + ?Sized)) -> io::Result<Dir> {
        let open = |how| {
            openat(
                &self.0,
                name.as_ref(),
                how | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
        };
        let fd = match open(OFlag::O_RDONLY) {
            Err(nix::errno::Errno::EACCES) => open(OFlag::O_PATH),
            other => other,
        }
        .map_err(err)?;
        Ok(Dir(File::from(fd)))
    }

    /// Opens the file `name` with `flags` (and `mode` when it creates it),
    /// never following a symlink there.
    pub fn file(
        &self,
        name: &(impl AsRef<OsStr> + ?Sized),
        flags: OFlag,
        mode: u32,
    ) -> io::Result<File> {
        let fd = openat(
            &self.0,
            name.as_ref(),
            flags | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(mode),
        )
        .map_err(err)?;
        Ok(File::from(fd))
    }

    /// Opens `name` to read it, never blocking (a fifo put there locally
    /// would hold the engine until someone wrote to it).
    pub fn read(&self, name: &(impl AsRef<OsStr> + ?Sized)) -> io::Result<File> {
        self.file(name, OFlag::O_RDONLY | OFlag::O_NONBLOCK, 0)
    }

    /// What `name` is, itself (a symlink is not followed).
    pub fn stat(&self, name: &(impl AsRef<OsStr> + ?Sized)) -> io::Result<Metadata> {
        // An O_PATH descriptor of the entry itself: fstat gives std's
        // Metadata, which fstatat's raw struct would not.
        self.file(name, OFlag::O_PATH, 0)?.metadata()
    }

    /// This directory's own metadata.
    pub fn metadata(&self) -> io::Result<Metadata> {
        self.0.metadata()
    }

    /// Whether `other` is this same directory.
    pub fn is(&self, other: &Dir) -> bool {
        match (self.metadata(), other.metadata()) {
            (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
            _ => false,
        }
    }

    pub fn read_link(&self, name: &(impl AsRef<OsStr> + ?Sized)) -> io::Result<OsString> {
        readlinkat(&self.0, name.as_ref()).map_err(err)
    }

    pub fn create_dir(&self, name: &(impl AsRef<OsStr> + ?Sized)) -> io::Result<()> {
        mkdirat(&self.0, name.as_ref(), Mode::from_bits_truncate(0o777)).map_err(err)
    }

    pub fn symlink(
        &self,
        target: &(impl AsRef<OsStr> + ?Sized),
        name: &(impl AsRef<OsStr> + ?Sized),
    ) -> io::Result<()> {
        symlinkat(target.as_ref(), &self.0, name.as_ref()).map_err(err)
    }

    /// Renames `name` here to `to_name` in `to`.
    pub fn rename(
        &self,
        name: &(impl AsRef<OsStr> + ?Sized),
        to: &Dir,
        to_name: &(impl AsRef<OsStr> + ?Sized),
    ) -> io::Result<()> {
        renameat(&self.0, name.as_ref(), &to.0, to_name.as_ref()).map_err(err)
    }

    /// Renames `name` here to `to`, a path outside the set (quarantine).
    pub fn rename_out(&self, name: &(impl AsRef<OsStr> + ?Sized), to: &Path) -> io::Result<()> {
        renameat(&self.0, name.as_ref(), AT_FDCWD, to).map_err(err)
    }

    pub fn remove_file(&self, name: &(impl AsRef<OsStr> + ?Sized)) -> io::Result<()> {
        unlinkat(&self.0, name.as_ref(), UnlinkatFlags::NoRemoveDir).map_err(err)
    }

    pub fn remove_dir(&self, name: &(impl AsRef<OsStr> + ?Sized)) -> io::Result<()> {
        unlinkat(&self.0, name.as_ref(), UnlinkatFlags::RemoveDir).map_err(err)
    }

    /// Removes `name` and, for a directory, everything in it, never
    /// following a symlink.
    pub fn remove_tree(&self, name: &(impl AsRef<OsStr> + ?Sized)) -> io::Result<()> {
        if !self.stat(name)?.is_dir() {
            return self.remove_file(name);
        }
        let sub = self.dir(name)?;
        for (n, _) in sub.entries()? {
            sub.remove_tree(&n)?;
        }
        self.remove_dir(name)
    }

    /// Sets the mtime of `name` itself (a symlink is not followed).
    pub fn set_mtime(&self, name: &(impl AsRef<OsStr> + ?Sized), ns: i64) -> io::Result<()> {
        utimensat(
            &self.0,
            name.as_ref(),
            &TimeSpec::UTIME_OMIT,
            &timespec(ns),
            UtimensatFlags::NoFollowSymlink,
        )
        .map_err(err)
    }

    /// Sets this directory's own mtime.
    pub fn set_own_mtime(&self, ns: i64) -> io::Result<()> {
        futimens(&self.0, &TimeSpec::UTIME_OMIT, &timespec(ns)).map_err(err)
    }

    /// Gives `name` itself (a symlink is not followed) to `uid` and `gid`.
    pub fn chown(
        &self,
        name: &(impl AsRef<OsStr> + ?Sized),
        uid: u32,
        gid: u32,
    ) -> Result<(), nix::errno::Errno> {
        fchownat(
            &self.0,
            name.as_ref(),
            Some(Uid::from_raw(uid)),
            Some(Gid::from_raw(gid)),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        )
    }

    /// Makes this directory's entries durable.
    pub fn sync(&self) -> io::Result<()> {
        self.0.sync_all().map_err(|e| {
            if e.raw_os_error() == Some(nix::libc::EBADF) {
                // Opened O_PATH (see `dir`).
                io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    "its directory may be searched but not read by tandem, so what was written there cannot be made durable",
                )
            } else {
                e
            }
        })
    }

    /// The names in this directory (not `.` and `..`), each with whether it
    /// is a directory, a file or anything else, by `lstat` where the
    /// filesystem does not say.
    pub fn entries(&self) -> io::Result<Vec<(OsString, Kind)>> {
        let mut listing = nix::dir::Dir::openat(
            &self.0,
            ".",
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(err)?;
        let mut out = Vec::new();
        for e in listing.iter() {
            let e = e.map_err(err)?;
            let name = OsStr::from_bytes(e.file_name().to_bytes()).to_owned();
            if name == "." || name == ".." {
                continue;
            }
            let kind = match e.file_type() {
                Some(Type::Directory) => Kind::Dir,
                Some(Type::File) => Kind::File,
                Some(_) => Kind::Other,
                None => match self.stat(&name) {
                    Ok(m) if m.is_dir() => Kind::Dir,
                    Ok(m) if m.is_file() => Kind::File,
                    Ok(_) => Kind::Other,
                    // Gone since it was listed.
                    Err(_) => continue,
                },
            };
            out.push((name, kind));
        }
        Ok(out)
    }
}

/// What an entry of [`Dir::entries`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File,
    /// A symlink, a fifo, a socket or a device.
    Other,
}
