//! A file set on the standby: applying the primary's changes to the local
//! copy, atomically, durably and never outside the root.
//!
//! [`FileSetReplica`] holds the manifest its tree is believed to match and
//! applies one [`Change`] at a time:
//!
//! - **Files** are assembled into a temp file in the same directory
//!   (`.tandem-partial.<name>`), chunk by chunk at their offsets: a chunk
//!   already there from an interrupted earlier attempt is kept (so a partial
//!   transfer resumes), then one found locally by hash (the old version of
//!   the file, or any other file of the set) is copied, and only the rest is
//!   asked of the [`ChunkSource`]. Every chunk is checked against its hash
//!   before it is written, and the entry's content hash against its chunk
//!   list (so the file is not read back). Then mode and mtime, fsync,
//!   rename over the target, fsync of the directory: at once with
//!   [`FileSetReplica::apply`]; with
//!   [`FileSetReplica::apply_batched`] the file waits, complete and
//!   verified, in its temp file until [`FileSetReplica::commit`] puts a
//!   whole batch in place (its fsync started on a background thread as soon
//!   as it was complete; the commit waits for each, renames, and fsyncs
//!   each directory once), so a kill leaves every path its old or its new
//!   version.
//! - **Renames** are renames; deletes, directories (empty ones too), symlinks,
//!   modes and mtimes are mirrored. Every operation keeps its parent
//!   directory's mtime as it was, since directory mtimes come from the
//!   manifest, not from the order the standby happened to write in.
//! - **Confinement.** Paths are [`SafePath`]s (lexically inside the root).
//!   Every operation is made in the path's parent directory, opened from
//!   the root one component at a time with `O_NOFOLLOW | O_DIRECTORY` and
//!   held open (`At`, [`crate::dir`]): a symlink (or a file) where a
//!   parent should be refuses the change, and a parent swapped for a
//!   symlink by a local process while the change is made is not followed,
//!   since nothing is looked up by path again. The last component is never
//!   followed either: files are opened with `O_NOFOLLOW`, times and owners
//!   set with `AT_SYMLINK_NOFOLLOW`, and rename/unlink/rmdir act on the
//!   link itself. (A directory of the set that a local user moves out of
//!   the root meanwhile is still written in: it is theirs, and was inside
//!   the root when it was opened.)
//! - **Quarantine.** Before changing a path, its current state is compared
//!   with what the change expects there (the old entry, or nothing): type,
//!   and for a file size and mtime, for a symlink its target. Something else
//!   was changed locally on the standby: it is moved to
//!   `<data_dir>/quarantine/<epoch>-<unix time>/<relpath>` and reported,
//!   never deleted (when the data directory is on another filesystem, it is
//!   copied there durably, then removed). A path that already holds the
//!   change's new state is left as it is, so replaying a change after a
//!   restart is harmless.

use crate::applied::AppliedLog;
use crate::dir::{Dir, Kind};
use nix::fcntl::OFlag;
use nix::libc::O_NOFOLLOW;
use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::{self, File, Metadata};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tandem_sync::chunk::{file_hash, ChunkHash, ChunkRef};
use tandem_sync::fileset::SafePath;
use tandem_sync::manifest::{mirrored_mode, Change, Entry, EntryKind, Manifest, Owner, MODE_MASK};

/// Temp files being assembled start with this; a scanner of the standby's
/// tree should leave them out.
pub use tandem_sync::fileset::PARTIAL_PREFIX;

/// Where the chunks the standby does not have come from (the replication
/// link, or in tests the primary's scanner in-process).
pub trait ChunkSource {
    /// The bytes of `chunk` of the new version of `path`.
    fn fetch(&mut self, path: &SafePath, chunk: &ChunkRef) -> io::Result<Vec<u8>>;
}

impl<F: FnMut(&SafePath, &ChunkRef) -> io::Result<Vec<u8>>> ChunkSource for F {
    fn fetch(&mut self, path: &SafePath, chunk: &ChunkRef) -> io::Result<Vec<u8>> {
        self(path, chunk)
    }
}

/// Why a change was not applied. The tree is left as it was before the
/// change, except for a temp file that a retry will resume from.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// A parent of the path is not a real directory inside the root (a
    /// symlink, a file, or missing): the change is refused.
    #[error("{0}: refused, parent {1} is not a directory inside the root")]
    Confinement(SafePath, String),
    #[error("{0}: {1}")]
    Io(SafePath, io::Error),
    #[error("{0}: fetching chunk at {1}: {2}")]
    Fetch(SafePath, u64, io::Error),
    #[error("{0}: the chunk at {1} does not match its hash")]
    BadChunk(SafePath, u64),
    #[error("{0}: the assembled file does not match the manifest's hash")]
    FileHash(SafePath),
    #[error("{0}: the change is inconsistent: {1}")]
    Invalid(SafePath, &'static str),
}

/// Opening a replica failed.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("file set root {0}: {1}")]
    Root(PathBuf, io::Error),
    #[error("quarantine directory {0} is inside the file set's root {1}")]
    QuarantineInsideRoot(PathBuf, PathBuf),
}

/// Something moved to quarantine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quarantined {
    pub path: SafePath,
    pub moved_to: PathBuf,
}

/// Bytes moved while applying, for status and the benchmark.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ApplyStats {
    pub chunks_fetched: u64,
    pub bytes_fetched: u64,
    pub chunks_reused: u64,
    pub bytes_reused: u64,
    pub files_written: u64,
    pub renames: u64,
}

/// The standby's copy of one file set.
#[derive(Debug)]
pub struct FileSetReplica {
    root: PathBuf,
    quarantine_root: PathBuf,
    epoch: u64,
    manifest: Manifest,
    /// Where a chunk can be found locally; checked on use, so a stale entry
    /// only costs a fetch.
    index: HashMap<ChunkHash, (SafePath, ChunkRef)>,
    quarantine_dir: Option<PathBuf>,
    quarantined: Vec<Quarantined>,
    stats: ApplyStats,
    /// Keep whatever a change would delete or overwrite, in quarantine.
    keep_replaced: bool,
    /// The same, for these paths only.
    keep_paths: std::collections::BTreeSet<SafePath>,
    /// Files assembled and verified in their temp files, waiting for the
    /// batch's fsync and rename ([`FileSetReplica::commit`]).
    pending: Vec<PendingFile>,
    pending_bytes: u64,
    /// When the oldest pending file became complete.
    pending_since: Option<Instant>,
    /// See [`BATCH_AGE_MAX`].
    batch_age_max: Duration,
    /// Where the chunks of pending files are: their temp files.
    pending_index: HashMap<ChunkHash, (At, ChunkRef)>,
    /// The change being applied, when its file may wait in the batch.
    defer: Option<Change>,
    /// Chunks this process checked and wrote into temp files, by offset:
    /// not read or hashed again when the file is assembled. Forgotten when
    /// the temp file has to be made again (it was removed: a deleted
    /// directory, a restart's cleanup), so a new temp file is not taken to
    /// hold what its predecessor held. (Its inode number is no proof: the
    /// filesystem hands a freed one out again at once.) By the path whose
    /// new content the temp file holds.
    staged: HashMap<SafePath, Staged>,
    /// Where each apply is recorded before it takes effect, when the node
    /// keeps one ([`AppliedLog`]).
    applied: Option<AppliedLog>,
    /// Where pending files are fsynced, started once the first one is.
    fsyncs: Option<FsyncPool>,
}

/// A file's new content, complete and verified in its temp file, not yet
/// renamed over its target; its fsync runs in the background from the
/// moment it was complete, and `synced` tells how it went.
#[derive(Debug)]
struct PendingFile {
    path: SafePath,
    /// The target, and its temp file beside it.
    at: At,
    tmp: At,
    synced: mpsc::Receiver<io::Result<()>>,
    change: Change,
    /// What was at `at` when it was checked ([`Seen`]): anything else
    /// there at the commit was written since, locally, and is quarantined
    /// before the rename.
    seen: Option<Seen>,
}

/// What identifies a file's state on disk: device and inode, size, mtime
/// and ctime (which any write, chmod or mtime put back moves).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Seen(u64, u64, u64, i64, i64);

impl Seen {
    fn of(m: &Metadata) -> Seen {
        let ctime = m
            .ctime()
            .saturating_mul(1_000_000_000)
            .saturating_add(m.ctime_nsec());
        Seen(m.dev(), m.ino(), m.len(), mtime_ns(m), ctime)
    }

    /// What is at `at` now (None: nothing).
    fn at(at: &At) -> Option<Seen> {
        at.stat().ok().map(|m| Seen::of(&m))
    }
}

/// Files one batch holds, at most, before it is committed.
pub const BATCH_FILES_MAX: usize = 256;
/// Bytes one batch holds, at most, before it is committed.
pub const BATCH_BYTES_MAX: u64 = 128 << 20;
/// How long a file waits in a batch, at most, before the batch is
/// committed: a small file sent in a round of large ones is in place
/// about this soon, not at the round's end.
pub const BATCH_AGE_MAX: Duration = Duration::from_millis(100);
/// fsyncs of pending files in flight at once.
const FSYNC_THREADS: usize = 4;

/// The chunks staged in one temp file: offset, then end and hash.
#[derive(Debug, Default)]
struct Staged(std::collections::BTreeMap<u64, (u64, ChunkHash)>);

impl Staged {
    /// `c` was written at its place. What it overlaps is not there any
    /// more: a version abandoned before its commit (a fetch that failed,
    /// a file that changed while sent) may have staged other bytes there,
    /// and a later round asking for that version again must not take them
    /// as still in place.
    fn insert(&mut self, c: &ChunkRef) {
        let overlapped: Vec<u64> = self
            .0
            .range(..c.end())
            .rev()
            .take_while(|(_, (end, _))| *end > c.offset)
            .map(|(offset, _)| *offset)
            .collect();
        for offset in overlapped {
            self.0.remove(&offset);
        }
        self.0.insert(c.offset, (c.end(), c.hash));
    }

    fn holds(&self, c: &ChunkRef) -> bool {
        self.0.get(&c.offset) == Some(&(c.end(), c.hash))
    }
}

/// Whether chunk `c` is in its place in a temp file `len` bytes long:
/// staged there by this process (checked when received), or left by an
/// earlier attempt (checked now).
fn in_temp_file(file: &File, len: u64, staged: Option<&Staged>, c: &ChunkRef) -> bool {
    c.end() <= len
        && (staged.is_some_and(|s| s.holds(c)) || {
            let mut buf = vec![0u8; c.len as usize];
            file.read_exact_at(&mut buf, c.offset).is_ok() && c.verify(&buf)
        })
}

/// Makes the directories of `path`'s parents below `dir`, each a real
/// directory (never through a symlink); false if a name is taken by
/// anything else.
fn real_dirs_below(dir: &Path, path: &SafePath) -> bool {
    path.ancestors().iter().all(|a| {
        let at = dir.join(a.as_str());
        match fs::symlink_metadata(&at) {
            Ok(m) => m.is_dir(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => fs::create_dir(&at).is_ok(),
            Err(_) => false,
        }
    })
}

/// An entry of the set: a name in its parent directory, which is held
/// open. Everything done to it is done in that directory, by name, so a
/// parent swapped for a symlink after it was opened is never followed.
#[derive(Debug, Clone)]
struct At {
    dir: Arc<Dir>,
    name: String,
}

impl At {
    /// What is there itself (a symlink is not followed).
    fn stat(&self) -> io::Result<Metadata> {
        self.dir.stat(&self.name)
    }

    /// `name` in the same directory.
    fn sibling(&self, name: String) -> At {
        At {
            dir: self.dir.clone(),
            name,
        }
    }

    /// Opens what is there to read it.
    fn read(&self) -> io::Result<File> {
        self.dir.read(&self.name)
    }

    fn remove_file(&self) -> io::Result<()> {
        self.dir.remove_file(&self.name)
    }

    /// Renames it to `to`'s place.
    fn rename(&self, to: &At) -> io::Result<()> {
        self.dir.rename(&self.name, &to.dir, &to.name)
    }

    /// The temp file where the new content of the file here is assembled.
    fn partial(&self) -> At {
        self.sibling(partial_name(&self.name))
    }
}

/// Whether `path`'s temp file `tmp` is there. A symlink or directory by
/// its name is not ours to follow: the change is refused.
fn temp_exists(path: &SafePath, tmp: &At) -> Result<bool, ApplyError> {
    match tmp.stat() {
        Ok(m) if !m.is_file() => Err(ApplyError::Invalid(
            path.clone(),
            "temp file name is taken by a non-file",
        )),
        Ok(_) => Ok(true),
        Err(_) => Ok(false),
    }
}

/// Opens a temp file to resume it, or creates it (true: created now). One
/// this process may not have made is not trusted: a file with another link
/// (writing it would change a file elsewhere, whose name was linked here)
/// or another owner than tandem or `owner` (the file's mirrored owner, whom
/// tandem gave it to when it was complete; anyone else could change the
/// mirrored file after the rename) is removed and created anew,
/// exclusively, so nothing is slipped in between.
fn open_temp(tmp: &At, owner: Option<Owner>) -> io::Result<(File, bool)> {
    match tmp.dir.file(&tmp.name, OFlag::O_RDWR, 0) {
        Ok(f) => {
            let m = f.metadata()?;
            let ours = m.uid() == nix::unistd::geteuid().as_raw()
                || owner.is_some_and(|o| o.uid == m.uid());
            if m.is_file() && m.nlink() == 1 && ours {
                return Ok((f, false));
            }
            drop(f);
            tmp.remove_file()?;
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let created = tmp.dir.file(
        &tmp.name,
        OFlag::O_RDWR | OFlag::O_CREAT | OFlag::O_EXCL,
        0o600,
    )?;
    Ok((created, true))
}

/// A file to fsync, and where to say how it went.
type FsyncJob = (File, mpsc::SyncSender<io::Result<()>>);

/// Threads that fsync each pending file as soon as it is complete, while
/// the engine assembles the next ones: a batch's commit then finds most of
/// its fsyncs done instead of starting them all at the end of a round
/// (several at once: with a journal, concurrent fsyncs share its commits).
/// The threads end when the replica is dropped (the sender with it).
#[derive(Debug)]
struct FsyncPool {
    jobs: mpsc::Sender<FsyncJob>,
}

impl FsyncPool {
    fn start() -> io::Result<FsyncPool> {
        let (jobs, queue) = mpsc::channel::<FsyncJob>();
        let queue = Arc::new(Mutex::new(queue));
        for i in 0..FSYNC_THREADS {
            let queue = queue.clone();
            std::thread::Builder::new()
                .name(format!("fsync-{i}"))
                .spawn(move || loop {
                    let job = queue.lock().unwrap_or_else(|e| e.into_inner()).recv();
                    let Ok((file, done)) = job else { return };
                    let _ = done.send(file.sync_all());
                })?;
        }
        Ok(FsyncPool { jobs })
    }
}

fn mtime_ns(meta: &Metadata) -> i64 {
    meta.mtime()
        .saturating_mul(1_000_000_000)
        .saturating_add(meta.mtime_nsec())
}

fn system_time(ns: i64) -> SystemTime {
    let d = Duration::from_nanos(ns.unsigned_abs());
    if ns >= 0 {
        UNIX_EPOCH + d
    } else {
        UNIX_EPOCH.checked_sub(d).unwrap_or(UNIX_EPOCH)
    }
}

fn fsync_dir(path: &Path) -> io::Result<()> {
    File::open(path)?.sync_all()
}

fn file_len(e: &Entry) -> u64 {
    match e.kind {
        EntryKind::File { size, .. } => size,
        _ => 0,
    }
}

/// Set owner, mode (not for symlinks) and mtime on what is at `at`,
/// checked to be of the entry's type.
fn set_meta(at: &At, entry: &Entry) -> io::Result<()> {
    if matches!(entry.kind, EntryKind::Symlink { .. }) {
        set_owner_nofollow(at, entry.owner)?;
    } else {
        let f = at.read()?;
        set_owner(&f, entry.owner)?;
        set_mode(&f, entry)?;
    }
    at.dir.set_mtime(&at.name, entry.mtime_ns)
}

/// The entry's mode on `f`; after its owner, which clears setuid and setgid.
fn set_mode(f: &File, entry: &Entry) -> io::Result<()> {
    // Masked again: a peer's entry may not have been through a manifest.
    let mode = mirrored_mode(entry.mode, entry.owner);
    f.set_permissions(fs::Permissions::from_mode(mode))
}

/// Gives `f` to the entry's owner, when ownership is mirrored.
fn set_owner(f: &File, owner: Option<Owner>) -> io::Result<()> {
    let Some(o) = owner else {
        return Ok(());
    };
    nix::unistd::fchown(
        f,
        Some(nix::unistd::Uid::from_raw(o.uid)),
        Some(nix::unistd::Gid::from_raw(o.gid)),
    )
    .map_err(|e| owner_error(o, e))
}

/// [`set_owner`] for a symlink itself, never followed.
fn set_owner_nofollow(at: &At, owner: Option<Owner>) -> io::Result<()> {
    let Some(o) = owner else {
        return Ok(());
    };
    at.dir
        .chown(&at.name, o.uid, o.gid)
        .map_err(|e| owner_error(o, e))
}

fn owner_error(o: Owner, e: nix::errno::Errno) -> io::Error {
    let e = io::Error::from(e);
    if e.kind() == io::ErrorKind::PermissionDenied {
        // The primary runs as root and mirrors owners; this node does not.
        return io::Error::new(
            e.kind(),
            format!(
                "cannot give it to uid {} gid {}: {e} (the primary mirrors owners, which needs tandem to run as root on this node too)",
                o.uid, o.gid
            ),
        );
    }
    e
}

/// Whether what is on disk at `at` (with metadata `meta`) is `entry`, by
/// the quick check: type, and size and mtime for a file, target for a link.
/// Directories match on type alone: their mtime follows their content.
fn state_matches(at: &At, meta: &Metadata, entry: &Entry) -> bool {
    let ft = meta.file_type();
    match &entry.kind {
        EntryKind::Dir => ft.is_dir(),
        EntryKind::File { size, .. } => {
            ft.is_file() && meta.len() == *size && mtime_ns(meta) == entry.mtime_ns
        }
        EntryKind::Symlink { target } => {
            ft.is_symlink()
                && at
                    .dir
                    .read_link(&at.name)
                    .is_ok_and(|t| t == target.as_str())
        }
    }
}

/// Whether it is the entry exactly, mode and mtime included (for skipping a
/// change already applied).
fn state_is(at: &At, meta: &Metadata, entry: &Entry) -> bool {
    state_matches(at, meta, entry)
        && entry
            .owner
            .is_none_or(|o| meta.uid() == o.uid && meta.gid() == o.gid)
        && match entry.kind {
            EntryKind::Dir | EntryKind::File { .. } => {
                meta.permissions().mode() & MODE_MASK == entry.mode
            }
            EntryKind::Symlink { .. } => mtime_ns(meta) == entry.mtime_ns,
        }
}

fn partial_name(name: &str) -> String {
    let n = format!("{PARTIAL_PREFIX}{name}");
    if n.len() <= 255 {
        n
    } else {
        format!("{PARTIAL_PREFIX}{}", blake3::hash(name.as_bytes()).to_hex())
    }
}

impl FileSetReplica {
    /// The replica of the set at `root`, whose tree matches `manifest`
    /// (scanned by the node at startup, or kept from the last run).
    /// Quarantined entries go below `<data_dir>/quarantine/`.
    pub fn open(
        root: &Path,
        data_dir: &Path,
        epoch: u64,
        manifest: Manifest,
    ) -> Result<Self, OpenError> {
        let root = fs::canonicalize(root).map_err(|e| OpenError::Root(root.to_owned(), e))?;
        let quarantine_root = fs::canonicalize(data_dir)
            .unwrap_or_else(|_| data_dir.to_owned())
            .join("quarantine");
        if quarantine_root.starts_with(&root) {
            return Err(OpenError::QuarantineInsideRoot(quarantine_root, root));
        }
        let index = manifest.chunk_index();
        Ok(Self {
            root,
            quarantine_root,
            epoch,
            manifest,
            index,
            quarantine_dir: None,
            quarantined: Vec::new(),
            stats: ApplyStats::default(),
            keep_replaced: false,
            keep_paths: std::collections::BTreeSet::new(),
            pending: Vec::new(),
            pending_bytes: 0,
            pending_since: None,
            batch_age_max: BATCH_AGE_MAX,
            pending_index: HashMap::new(),
            defer: None,
            staged: HashMap::new(),
            applied: None,
            fsyncs: None,
        })
    }

    /// Starts the fsync of a complete pending file; the receiver says how
    /// it went. Without threads (none could be started: tried again for
    /// the next file) it runs here, as it would at the commit.
    fn start_fsync(&mut self, file: File) -> mpsc::Receiver<io::Result<()>> {
        let (done, synced) = mpsc::sync_channel(1);
        if self.fsyncs.is_none() {
            self.fsyncs = FsyncPool::start().ok();
        }
        let job = match &self.fsyncs {
            Some(pool) => match pool.jobs.send((file, done)) {
                Ok(()) => return synced,
                Err(mpsc::SendError(job)) => job,
            },
            None => (file, done),
        };
        let (file, done) = job;
        let _ = done.send(file.sync_all());
        synced
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// While set, a file or symlink that a change would delete or
    /// overwrite is moved to quarantine instead, even when it is what the
    /// change expects: for a copy whose history is unknown (a standby that
    /// started without a manifest from an earlier run), whose content
    /// nobody has vouched for.
    pub fn set_keep_replaced(&mut self, keep: bool) {
        self.keep_replaced = keep;
        if !keep {
            self.keep_paths.clear();
        }
    }

    /// [`FileSetReplica::set_keep_replaced`] for these paths only: what is
    /// on disk there differs from what the copy's manifest last said, and
    /// may be a local change or an apply whose record was lost in a crash.
    /// Whichever it is, if the primary holds the same, nothing is sent and
    /// nothing kept; if not, it is kept.
    pub fn keep_replaced_paths(&mut self, paths: std::collections::BTreeSet<SafePath>) {
        self.keep_paths = paths;
    }

    /// How long a file may wait in a batch ([`BATCH_AGE_MAX`] unless set).
    pub fn set_batch_age_max(&mut self, age: Duration) {
        self.batch_age_max = age;
    }

    /// Record every apply in `log` before it takes effect, from now on.
    pub fn set_applied_log(&mut self, log: AppliedLog) {
        self.applied = Some(log);
    }

    /// Empty the applied log: the manifest as it stands now is kept.
    /// Files still pending are recorded when they are committed.
    pub fn clear_applied_log(&mut self) -> io::Result<()> {
        match &mut self.applied {
            Some(log) => log.clear(),
            None => Ok(()),
        }
    }

    /// Record what `changes` will leave before they take effect. An apply
    /// that cannot be recorded is not made (it would look like a local
    /// change after a crash).
    fn record_applied<'a>(
        &mut self,
        path: &SafePath,
        changes: impl IntoIterator<Item = &'a Change>,
    ) -> Result<(), ApplyError> {
        let Some(log) = &mut self.applied else {
            return Ok(());
        };
        log.record(changes).map_err(|e| {
            ApplyError::Io(
                path.clone(),
                io::Error::new(
                    e.kind(),
                    format!("recording it in {}: {e}", log.path().display()),
                ),
            )
        })
    }

    fn keeps(&self, path: &SafePath) -> bool {
        self.keep_replaced || self.keep_paths.contains(path)
    }

    pub fn stats(&self) -> ApplyStats {
        self.stats
    }

    /// What was quarantined since the last call.
    pub fn take_quarantined(&mut self) -> Vec<Quarantined> {
        std::mem::take(&mut self.quarantined)
    }

    /// `path` in its parent directory, opened from the root one component
    /// at a time, each a real directory (never a symlink) inside the root.
    fn resolve(&self, path: &SafePath) -> Result<At, ApplyError> {
        let mut dir = Dir::open(&self.root).map_err(|e| {
            let e = io::Error::new(e.kind(), format!("the root {}: {e}", self.root.display()));
            ApplyError::Io(path.clone(), e)
        })?;
        for a in path.ancestors() {
            dir = dir.dir(a.file_name()).map_err(|e| match e.raw_os_error() {
                Some(nix::libc::ENOENT | nix::libc::ENOTDIR | nix::libc::ELOOP) => {
                    ApplyError::Confinement(path.clone(), a.to_string())
                }
                _ => ApplyError::Io(path.clone(), e),
            })?;
        }
        Ok(At {
            dir: Arc::new(dir),
            name: path.file_name().to_owned(),
        })
    }

    /// The chunks of `entry`, the new content of the file at `path`, that
    /// are neither in place in its temp file (an interrupted transfer) nor
    /// anywhere in the local tree: what must come from the primary. One
    /// [`ChunkRef`] per distinct hash. Refuses a path outside the root.
    pub fn missing_chunks(
        &self,
        path: &SafePath,
        entry: &Entry,
    ) -> Result<Vec<ChunkRef>, ApplyError> {
        let partial = self
            .resolve(path)?
            .partial()
            .read()
            .ok()
            .filter(|f| f.metadata().is_ok_and(|m| m.is_file()));
        let partial_len = partial
            .as_ref()
            .and_then(|f| f.metadata().ok())
            .map_or(0, |m| m.len());
        // What this process staged there is known good: not read back.
        let staged = partial.as_ref().and_then(|_| self.staged.get(path));
        let mut asked = std::collections::HashSet::new();
        let mut out = Vec::new();
        for c in entry.chunks() {
            if asked.contains(&c.hash) {
                continue;
            }
            let in_partial = partial
                .as_ref()
                .is_some_and(|f| in_temp_file(f, partial_len, staged, c));
            if in_partial || self.local_chunk(c).is_some() {
                continue;
            }
            asked.insert(c.hash);
            out.push(*c);
        }
        Ok(out)
    }

    /// Write the bytes of a chunk of `entry` (the new content of `path`)
    /// into its temp file, at every offset where `entry` has that chunk, so
    /// that [`FileSetReplica::apply`] finds it there (and a transfer
    /// interrupted after this resumes from it).
    pub fn stage_chunk(
        &mut self,
        path: &SafePath,
        entry: &Entry,
        hash: &ChunkHash,
        bytes: &[u8],
    ) -> Result<(), ApplyError> {
        if let Some(first) = entry.chunks().iter().find(|c| c.hash == *hash) {
            if !first.verify(bytes) {
                return Err(ApplyError::BadChunk(path.clone(), first.offset));
            }
        }
        self.stage_checked_chunk(path, entry, hash, bytes)
    }

    /// [`FileSetReplica::stage_chunk`] for bytes the caller has already
    /// checked against `hash` (a validated message's chunk, a chunk delta
    /// rebuilt and checked): not hashed again here.
    pub fn stage_checked_chunk(
        &mut self,
        path: &SafePath,
        entry: &Entry,
        hash: &ChunkHash,
        bytes: &[u8],
    ) -> Result<(), ApplyError> {
        self.stage_checked_chunks(path, entry, [(hash, bytes)])
    }

    /// [`FileSetReplica::stage_checked_chunk`] for several chunks of one
    /// file: its parents are checked and its temp file opened once, not
    /// once a chunk (a megabyte file has about sixteen).
    pub fn stage_checked_chunks<'a>(
        &mut self,
        path: &SafePath,
        entry: &Entry,
        chunks: impl IntoIterator<Item = (&'a ChunkHash, &'a [u8])>,
    ) -> Result<(), ApplyError> {
        let io = |e| ApplyError::Io(path.clone(), e);
        let work: Vec<(Vec<&ChunkRef>, &[u8])> = chunks
            .into_iter()
            .filter_map(|(hash, bytes)| {
                let places: Vec<&ChunkRef> =
                    entry.chunks().iter().filter(|c| c.hash == *hash).collect();
                (!places.is_empty()).then_some((places, bytes))
            })
            .collect();
        if work.is_empty() {
            return Ok(());
        }
        let file = self.open_temp_file(path, entry.owner)?;
        let staged = self.staged.entry(path.clone()).or_default();
        for (places, bytes) in work {
            for c in places {
                file.write_all_at(bytes, c.offset).map_err(io)?;
                staged.insert(c);
            }
        }
        Ok(())
    }

    /// Open (or create) `path`'s temp file to stage chunks in.
    fn open_temp_file(
        &mut self,
        path: &SafePath,
        owner: Option<Owner>,
    ) -> Result<File, ApplyError> {
        let tmp = self.resolve(path)?.partial();
        let io = |e| ApplyError::Io(path.clone(), e);
        let creating = !temp_exists(path, &tmp)?;
        // Creating the temp file changes its directory's mtime, which the
        // manifest decides: put it back.
        let parent_mtime = if creating {
            tmp.dir.metadata().ok().map(|m| mtime_ns(&m))
        } else {
            None
        };
        let (file, fresh) = open_temp(&tmp, owner).map_err(io)?;
        if let Some(ns) = parent_mtime {
            let _ = tmp.dir.set_own_mtime(ns);
        }
        if fresh {
            self.staged.remove(path);
        }
        Ok(file)
    }

    /// Bring the manifest in line with `scanned`, a fresh scan of the tree,
    /// taking every difference for a change made locally on the standby.
    /// Only mode or mtime differ: the scanned entry is adopted (the
    /// primary's next round puts them back). Content, type, or an entry
    /// the manifest does not know: what is on disk is moved to quarantine
    /// and forgotten (the primary sends it again). Gone from disk:
    /// forgotten. Returns how many paths differed; what was quarantined is
    /// in [`FileSetReplica::take_quarantined`].
    pub fn reconcile_local(&mut self, scanned: &Manifest) -> Result<usize, ApplyError> {
        let paths: std::collections::BTreeSet<SafePath> = self
            .manifest
            .iter()
            .chain(scanned.iter())
            .map(|(p, _)| p.clone())
            .collect();
        let mut gone: Vec<SafePath> = Vec::new();
        let mut changed = 0;
        let mut failed = None;
        for p in paths {
            if gone.iter().any(|g| p.starts_with(g)) {
                continue;
            }
            let have = self.manifest.get(&p).cloned();
            // Owners not mirrored (the primary does not run as root) are
            // not a local change, whoever owns the copy here.
            let found = scanned.get(&p).map(|d| match &have {
                Some(h) if h.owner.is_none() => d.without_owner(),
                _ => d.clone(),
            });
            match (have, found.as_ref()) {
                (None, None) => continue,
                (Some(h), Some(d)) if h == *d => continue,
                (Some(h), Some(d)) if h.same_content(d) => {
                    self.manifest.insert(p.clone(), d.clone());
                }
                (Some(_), None) => gone.push(p.clone()),
                (_, Some(_)) => {
                    // On an error, what was moved so far still leaves the
                    // manifest below: it must not list what is gone.
                    let moved = self.resolve(&p).and_then(|at| {
                        if at.stat().is_ok() {
                            self.quarantine(&p, &at)?;
                        }
                        Ok(())
                    });
                    if let Err(e) = moved {
                        failed = Some(e);
                        break;
                    }
                    gone.push(p.clone());
                }
            }
            changed += 1;
        }
        for g in &gone {
            let below: Vec<SafePath> = self
                .manifest
                .iter()
                .filter(|(q, _)| q.starts_with(g))
                .map(|(q, _)| q.clone())
                .collect();
            for q in below {
                self.manifest.remove(&q);
            }
        }
        if changed > 0 {
            self.index = self.manifest.chunk_index();
        }
        match failed {
            Some(e) => Err(e),
            None => Ok(changed),
        }
    }

    /// Apply one change, durably. On success the replica's manifest
    /// includes it (and every change [`FileSetReplica::apply_batched`]
    /// left pending before it).
    pub fn apply(
        &mut self,
        change: &Change,
        source: &mut dyn ChunkSource,
    ) -> Result<(), ApplyError> {
        self.apply_batched(change, source)?;
        match self.commit().into_iter().next() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Files (and bytes) waiting for [`FileSetReplica::commit`].
    pub fn pending(&self) -> (usize, u64) {
        (self.pending.len(), self.pending_bytes)
    }

    /// Apply one change, leaving a file's new content pending: assembled,
    /// verified (chunks and chunk list), mode and mtime set in its temp
    /// file, then left there for the next [`FileSetReplica::commit`], which
    /// makes a whole batch durable at once. Until then the change is not in
    /// the manifest and the target still holds the old version. Any other
    /// change (a delete, a rename, a symlink, metadata: anything but a new
    /// file or directory whose path is not pending) commits what is pending
    /// first, so changes still take effect in the order given; so does a
    /// batch that is full ([`BATCH_FILES_MAX`], [`BATCH_BYTES_MAX`]) or
    /// has waited long enough ([`BATCH_AGE_MAX`]).
    /// An error from that commit is returned for this change.
    pub fn apply_batched(
        &mut self,
        change: &Change,
        source: &mut dyn ChunkSource,
    ) -> Result<(), ApplyError> {
        // Nothing pending at the path or below it (a quarantine there
        // would move a pending temp file).
        let path_pending = |p: &SafePath| self.pending.iter().any(|f| f.path.starts_with(p));
        let may_wait = match change {
            Change::Create { path, entry } => {
                !matches!(entry.kind, EntryKind::Symlink { .. }) && !path_pending(path)
            }
            Change::Modify { path, new, .. } => {
                matches!(new.kind, EntryKind::File { .. }) && !path_pending(path)
            }
            _ => false,
        };
        let full = self.pending.len() >= BATCH_FILES_MAX
            || self.pending_bytes >= BATCH_BYTES_MAX
            || self
                .pending_since
                .is_some_and(|t| t.elapsed() >= self.batch_age_max);
        if !may_wait || full {
            if let Some(e) = self.commit().into_iter().next() {
                return Err(e);
            }
        }
        // Remember the parents' mtimes: every operation below changes them,
        // the manifest decides them.
        let mut parents: Vec<SafePath> = Vec::new();
        match change {
            Change::Rename { from, to, .. } => {
                parents.extend(from.parent());
                parents.extend(to.parent());
            }
            other => parents.extend(other.path().parent()),
        }
        parents.dedup();
        let mut saved = Vec::new();
        for p in &parents {
            let at = self.resolve(p)?;
            if let Ok(dir) = at.dir.dir(&at.name) {
                if let Ok(m) = dir.metadata() {
                    saved.push((dir, mtime_ns(&m)));
                }
            }
        }
        // A file that may wait is recorded when its batch is committed.
        let deferred_file =
            may_wait && !matches!(change, Change::Create { entry, .. } if entry.is_dir());
        if !deferred_file {
            self.record_applied(change.path(), [change])?;
        }
        let pending_before = self.pending.len();
        self.defer = may_wait.then(|| change.clone());
        let result = self.apply_inner(change, source);
        self.defer = None;
        for (dir, ns) in saved {
            // Best effort: the directory may have been removed since (a
            // quarantine may have moved things around).
            let _ = dir.set_own_mtime(ns);
        }
        result?;
        if self.pending.len() > pending_before {
            // In the manifest once committed.
            return Ok(());
        }
        self.note_applied(change);
        Ok(())
    }

    /// Make every pending file durable and put it in place: fsync the temp
    /// files (several at once), rename each over its target, fsync each
    /// directory touched once. A kill at any point leaves each target
    /// holding its old version or its new one, never anything else, and
    /// the temp files of the rest to resume from. What failed is returned
    /// (those changes are not applied, their temp files stay); everything
    /// else is in the manifest.
    pub fn commit(&mut self) -> Vec<ApplyError> {
        let pending = std::mem::take(&mut self.pending);
        self.pending_bytes = 0;
        self.pending_since = None;
        self.pending_index.clear();
        if pending.is_empty() {
            return Vec::new();
        }
        if let Err(e) = self.record_applied(&pending[0].path, pending.iter().map(|p| &p.change)) {
            // Nothing renamed: the temp files stay to resume from.
            return vec![e];
        }
        let synced: Vec<io::Result<()>> = pending
            .iter()
            .map(|p| {
                p.synced
                    .recv()
                    .unwrap_or_else(|_| Err(io::Error::other("its fsync thread ended")))
            })
            .collect();
        let mut errors = Vec::new();
        // Renames change their directories' mtimes, which the manifest
        // decides: kept as they are and put back before the directories'
        // own fsync.
        // By the parent's path: nothing but files is changed in a batch, so
        // the same path is the same directory.
        let mut dirs: Vec<(Option<SafePath>, Arc<Dir>, Option<i64>)> = Vec::new();
        let mut done: Vec<PendingFile> = Vec::new();
        for (p, synced) in pending.into_iter().zip(synced) {
            let io = |e| ApplyError::Io(p.path.clone(), e);
            if let Err(e) = synced {
                errors.push(io(e));
                continue;
            }
            // Checked again: the tree may have changed since the file was
            // assembled, and the path lead elsewhere than its directory.
            match self.resolve(&p.path) {
                Ok(now) if now.dir.is(&p.at.dir) => {}
                Ok(_) => {
                    // Its directory was moved while it waited.
                    let parent = p.path.parent().map_or_else(String::new, |d| d.to_string());
                    errors.push(ApplyError::Confinement(p.path.clone(), parent));
                    continue;
                }
                Err(e) => {
                    errors.push(e);
                    continue;
                }
            }
            let parent = p.path.parent();
            if !dirs.iter().any(|(d, _, _)| *d == parent) {
                let ns = p.at.dir.metadata().ok().map(|m| mtime_ns(&m));
                dirs.push((parent, p.at.dir.clone(), ns));
            }
            // Written locally since it was checked (a batch waits up to
            // its age bound, longer while a round fetches): kept.
            let now = Seen::at(&p.at);
            if now.is_some() && now != p.seen {
                if let Err(e) = self.quarantine(&p.path, &p.at) {
                    errors.push(e);
                    continue;
                }
            }
            if let Err(e) = p.tmp.rename(&p.at) {
                errors.push(io(e));
                continue;
            }
            done.push(p);
        }
        let mut failed_dirs: Vec<Option<SafePath>> = Vec::new();
        for (parent, dir, ns) in dirs {
            if let Some(ns) = ns {
                let _ = dir.set_own_mtime(ns);
            }
            if let Err(e) = dir.sync() {
                for p in done.iter().filter(|p| p.path.parent() == parent) {
                    errors.push(ApplyError::Io(
                        p.path.clone(),
                        io::Error::new(e.kind(), format!("fsync of its directory: {e}")),
                    ));
                }
                failed_dirs.push(parent);
            }
        }
        for p in done {
            if failed_dirs.contains(&p.path.parent()) {
                continue;
            }
            self.stats.files_written += 1;
            self.note_applied(&p.change);
        }
        errors
    }

    /// The manifest and the chunk index after `change` took effect.
    fn note_applied(&mut self, change: &Change) {
        self.manifest.apply(change);
        if let Change::Create { path, entry }
        | Change::Modify {
            path, new: entry, ..
        } = change
        {
            for c in entry.chunks() {
                self.index.insert(c.hash, (path.clone(), *c));
            }
        }
        if let Change::Rename { to, new, .. } = change {
            for c in new.chunks() {
                self.index.insert(c.hash, (to.clone(), *c));
            }
        }
    }

    fn apply_inner(
        &mut self,
        change: &Change,
        source: &mut dyn ChunkSource,
    ) -> Result<(), ApplyError> {
        match change {
            Change::Create { path, entry } => self.put(path, None, entry, source),
            Change::Modify { path, old, new } => {
                if old.is_dir() || !old.kind_eq(new) {
                    return Err(ApplyError::Invalid(
                        path.clone(),
                        "modify must keep a file or symlink's type",
                    ));
                }
                self.put(path, Some(old), new, source)
            }
            Change::Meta { path, old, new } => {
                let at = self.resolve(path)?;
                match at.stat() {
                    Ok(m) if state_matches(&at, &m, old) || state_matches(&at, &m, new) => {
                        set_meta(&at, new).map_err(|e| ApplyError::Io(path.clone(), e))
                    }
                    // Changed locally (or missing): quarantine, then rebuild.
                    _ => self.put(path, Some(old), new, source),
                }
            }
            Change::Delete { path, old } => self.delete(path, old),
            Change::Rename { from, to, old, new } => self.rename(from, to, old, new, source),
        }
    }

    /// Make `path` hold `new`. `old` is what should be there now (None:
    /// nothing); anything else there is quarantined first.
    fn put(
        &mut self,
        path: &SafePath,
        old: Option<&Entry>,
        new: &Entry,
        source: &mut dyn ChunkSource,
    ) -> Result<(), ApplyError> {
        let at = self.resolve(path)?;
        let io = |e| ApplyError::Io(path.clone(), e);
        match at.stat() {
            Ok(m) if state_is(&at, &m, new) && (new.is_dir() || mtime_ns(&m) == new.mtime_ns) => {
                // Already applied (a replay after a restart).
                return set_meta(&at, new).map_err(io);
            }
            Ok(m) if new.is_dir() && m.is_dir() => {
                // A directory is a directory: adopt it, whatever it holds.
                return set_meta(&at, new).map_err(io);
            }
            Ok(m) => {
                let expected = !self.keeps(path)
                    && old.is_some_and(|o| state_matches(&at, &m, o) && !o.is_dir());
                if !expected {
                    self.quarantine(path, &at)?;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(e)),
        }
        match &new.kind {
            EntryKind::Dir => {
                at.dir.create_dir(&at.name).map_err(io)?;
                set_meta(&at, new).map_err(io)?;
            }
            EntryKind::Symlink { target } => {
                let tmp = at.partial();
                let _ = tmp.remove_file();
                at.dir.symlink(target.as_str(), &tmp.name).map_err(io)?;
                set_owner_nofollow(&tmp, new.owner).map_err(io)?;
                tmp.dir.set_mtime(&tmp.name, new.mtime_ns).map_err(io)?;
                tmp.rename(&at).map_err(io)?;
            }
            EntryKind::File { .. } => {
                // What a batched file replaces at its commit: what was
                // checked (before its chunks come, which may take long).
                let seen = Seen::at(&at);
                let (tmp, file) = self.write_file(path, &at, new, source)?;
                let Some(change) = self.defer.take() else {
                    // Not a change that may wait (a rename or metadata
                    // change rebuilt from chunks): durable now.
                    file.sync_all().map_err(io)?;
                    drop(file);
                    tmp.rename(&at).map_err(io)?;
                    self.stats.files_written += 1;
                    return at.dir.sync().map_err(io);
                };
                // Made durable and renamed by `commit`, with the rest of the
                // batch; which holds one descriptor per directory, not one
                // per file.
                let (mut at, mut tmp) = (at, tmp);
                let parent = path.parent();
                if let Some(q) = self
                    .pending
                    .iter()
                    .find(|q| q.path.parent() == parent && q.at.dir.is(&at.dir))
                {
                    at.dir = q.at.dir.clone();
                    tmp.dir = q.at.dir.clone();
                }
                for c in new.chunks() {
                    self.pending_index.insert(c.hash, (tmp.clone(), *c));
                }
                self.pending_bytes += file_len(new);
                let synced = self.start_fsync(file);
                self.pending_since.get_or_insert_with(Instant::now);
                self.pending.push(PendingFile {
                    path: path.clone(),
                    at,
                    tmp,
                    synced,
                    change,
                    seen,
                });
                return Ok(());
            }
        }
        at.dir.sync().map_err(io)
    }

    /// Assemble a file in its temp file from checked chunks, set its mode
    /// and mtime, and start its writeback; the temp file's path and the
    /// open file.
    fn write_file(
        &mut self,
        path: &SafePath,
        at: &At,
        new: &Entry,
        source: &mut dyn ChunkSource,
    ) -> Result<(At, File), ApplyError> {
        let EntryKind::File { size, hash, chunks } = &new.kind else {
            return Err(ApplyError::Invalid(path.clone(), "not a file"));
        };
        let io = |e| ApplyError::Io(path.clone(), e);
        let tmp = at.partial();
        // Every chunk written is checked against its hash, so a file whose
        // chunk list makes its content hash is right once each is in place:
        // it is not read back. A list that does not make it is an
        // inconsistent entry. Leave nothing behind.
        if file_hash(chunks) != *hash {
            self.staged.remove(path);
            if tmp.stat().is_ok_and(|m| m.is_file()) {
                let _ = tmp.remove_file();
            }
            return Err(ApplyError::FileHash(path.clone()));
        }
        temp_exists(path, &tmp)?;
        let (file, _) = open_temp(&tmp, new.owner).map_err(io)?;
        let partial_len = file.metadata().map_err(io)?.len();
        let staged = self.staged.remove(path).unwrap_or_default();
        for c in chunks {
            self.put_chunk(path, c, &file, partial_len, &staged, source)?;
        }
        file.set_len(*size).map_err(io)?;
        set_owner(&file, new.owner).map_err(io)?;
        set_mode(&file, new).map_err(io)?;
        file.set_modified(system_time(new.mtime_ns)).map_err(io)?;
        crate::start_writeback(&file, 0, 0);
        Ok((tmp, file))
    }

    /// Put the checked bytes of chunk `c` of the new `path` into `file` at
    /// its offset, unless they are there already.
    fn put_chunk(
        &mut self,
        path: &SafePath,
        c: &ChunkRef,
        file: &File,
        partial_len: u64,
        staged: &Staged,
        source: &mut dyn ChunkSource,
    ) -> Result<(), ApplyError> {
        let io = |e| ApplyError::Io(path.clone(), e);
        // 1. Already in the temp file.
        if in_temp_file(file, partial_len, Some(staged), c) {
            self.stats.chunks_reused += 1;
            self.stats.bytes_reused += u64::from(c.len);
            return Ok(());
        }
        // 2. Somewhere in the local tree.
        if let Some(bytes) = self.local_chunk(c) {
            file.write_all_at(&bytes, c.offset).map_err(io)?;
            self.stats.chunks_reused += 1;
            self.stats.bytes_reused += u64::from(c.len);
            return Ok(());
        }
        // 3. From the primary.
        let bytes = source
            .fetch(path, c)
            .map_err(|e| ApplyError::Fetch(path.clone(), c.offset, e))?;
        if !c.verify(&bytes) {
            return Err(ApplyError::BadChunk(path.clone(), c.offset));
        }
        file.write_all_at(&bytes, c.offset).map_err(io)?;
        self.stats.chunks_fetched += 1;
        self.stats.bytes_fetched += u64::from(c.len);
        Ok(())
    }

    /// The bytes of a chunk found in the local tree by its hash (checked),
    /// if any: the base of a chunk delta.
    pub fn held_chunk(&self, hash: &ChunkHash) -> Option<Vec<u8>> {
        let (_, at) = self.index.get(hash)?;
        let at = *at;
        self.local_chunk(&at)
    }

    fn local_chunk(&self, c: &ChunkRef) -> Option<Vec<u8>> {
        let (f, place) = match self.index.get(&c.hash) {
            Some((path, place)) => (self.resolve(path).ok()?.read().ok()?, place),
            // In a file of this batch, not yet in place.
            None => {
                let (tmp, place) = self.pending_index.get(&c.hash)?;
                (tmp.read().ok()?, place)
            }
        };
        if !f.metadata().ok()?.is_file() {
            return None;
        }
        let mut buf = vec![0u8; place.len as usize];
        f.read_exact_at(&mut buf, place.offset).ok()?;
        c.verify(&buf).then_some(buf)
    }

    fn delete(&mut self, path: &SafePath, old: &Entry) -> Result<(), ApplyError> {
        let at = self.resolve(path)?;
        let io = |e| ApplyError::Io(path.clone(), e);
        let meta = match at.stat() {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io(e)),
        };
        if !state_matches(&at, &meta, old) || (self.keeps(path) && !meta.is_dir()) {
            self.quarantine(path, &at)?;
        } else if meta.is_dir() {
            let mut removed = at.dir.remove_dir(&at.name);
            if removed
                .as_ref()
                .is_err_and(|e| e.raw_os_error() == Some(nix::libc::ENOTEMPTY))
                && at.dir.dir(&at.name).is_ok_and(|d| remove_partials_in(&d))
            {
                // Only tandem's own temp files were in the way.
                removed = at.dir.remove_dir(&at.name);
            }
            match removed {
                Ok(()) => {}
                // Something the manifest does not know was put there locally.
                Err(e) if e.raw_os_error() == Some(nix::libc::ENOTEMPTY) => {
                    self.quarantine(path, &at)?
                }
                Err(e) => return Err(io(e)),
            }
        } else {
            at.remove_file().map_err(io)?;
        }
        at.dir.sync().map_err(io)
    }

    fn rename(
        &mut self,
        from: &SafePath,
        to: &SafePath,
        old: &Entry,
        new: &Entry,
        source: &mut dyn ChunkSource,
    ) -> Result<(), ApplyError> {
        if !old.same_content(new) || old.is_dir() {
            return Err(ApplyError::Invalid(
                to.clone(),
                "a rename keeps a file's content",
            ));
        }
        let from_at = self.resolve(from)?;
        let to_at = self.resolve(to)?;
        let from_ok = from_at
            .stat()
            .is_ok_and(|m| state_matches(&from_at, &m, old));
        if !from_ok {
            // Replayed after it was done, or the source changed locally:
            // quarantine what is there and build the target from chunks.
            if let Ok(m) = to_at.stat() {
                if state_matches(&to_at, &m, new) {
                    return set_meta(&to_at, new).map_err(|e| ApplyError::Io(to.clone(), e));
                }
            }
            if from_at.stat().is_ok() {
                self.quarantine(from, &from_at)?;
            }
            return self.put(to, None, new, source);
        }
        if to_at.stat().is_ok() {
            self.quarantine(to, &to_at)?;
        }
        let io = |e| ApplyError::Io(to.clone(), e);
        from_at.rename(&to_at).map_err(io)?;
        set_meta(&to_at, new).map_err(io)?;
        to_at.dir.sync().map_err(io)?;
        from_at.dir.sync().map_err(io)?;
        self.stats.renames += 1;
        Ok(())
    }

    /// Move what is at `at` (the set's `path`) to this run's quarantine
    /// directory.
    fn quarantine(&mut self, path: &SafePath, at: &At) -> Result<(), ApplyError> {
        let io = |e| ApplyError::Io(path.clone(), e);
        let dir = match &self.quarantine_dir {
            Some(d) => d.clone(),
            None => {
                let secs = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                let d = self.quarantine_root.join(format!("{}-{secs}", self.epoch));
                self.quarantine_dir = Some(d.clone());
                d
            }
        };
        fs::create_dir_all(&dir).map_err(io)?;
        let mut dest = dir.join(path.as_str());
        if !real_dirs_below(&dir, path) {
            // A parent's name is taken by something quarantined earlier in
            // this run (a file, or a symlink, which must not be followed:
            // it may point anywhere): the path goes flat, '/' written %2F.
            dest = dir.join(path.as_str().replace('/', "%2F"));
        }
        // The same path quarantined twice in one run keeps both.
        let base = dest.clone().into_os_string();
        let mut n = 1;
        while fs::symlink_metadata(&dest).is_ok() {
            let mut numbered = base.clone();
            numbered.push(format!(".{n}"));
            dest = PathBuf::from(numbered);
            n += 1;
        }
        match at.dir.rename_out(&at.name, &dest) {
            Ok(()) => {}
            // The data directory is on another filesystem: copy, make the
            // copy durable, then remove the original.
            Err(e) if e.raw_os_error() == Some(nix::libc::EXDEV) => {
                copy_tree(&at.dir, OsStr::new(&at.name), &dest).map_err(io)?;
                at.dir.remove_tree(&at.name).map_err(io)?;
            }
            Err(e) => return Err(io(e)),
        }
        if let Some(p) = dest.parent() {
            fsync_dir(p).map_err(io)?;
        }
        self.quarantined.push(Quarantined {
            path: path.clone(),
            moved_to: dest,
        });
        Ok(())
    }
}

/// Remove the temp files (and temp symlinks) of abandoned transfers
/// directly in `dir`; true if there were any.
fn remove_partials_in(dir: &Dir) -> bool {
    let Ok(entries) = dir.entries() else {
        return false;
    };
    let mut any = false;
    for (name, kind) in entries {
        let ours = name.as_bytes().starts_with(PARTIAL_PREFIX.as_bytes());
        if ours && kind != Kind::Dir && dir.remove_file(&name).is_ok() {
            any = true;
        }
    }
    any
}

/// Remove tandem's temp files everywhere below `root` (left by a standby
/// that stopped mid-transfer), never following a symlink. Each directory
/// is opened again from the root, one component at a time, so however
/// deep a local user made the tree, two descriptors are open at once.
pub fn remove_partials(root: &Path) {
    let mut stack: Vec<Vec<OsString>> = vec![Vec::new()];
    while let Some(rel) = stack.pop() {
        let Ok(mut dir) = Dir::open(root) else { return };
        let reached = rel.iter().all(|c| match dir.dir(c) {
            Ok(sub) => {
                dir = sub;
                true
            }
            Err(_) => false,
        });
        if !reached {
            continue;
        }
        for (name, kind) in dir.entries().unwrap_or_default() {
            if kind == Kind::Dir {
                let mut sub = rel.clone();
                sub.push(name);
                stack.push(sub);
            } else if name.as_bytes().starts_with(PARTIAL_PREFIX.as_bytes()) {
                let _ = dir.remove_file(&name);
            }
        }
    }
}

/// Copy `name` in `dir` (a file, symlink or directory tree) to `to`
/// without following symlinks, fsyncing what it writes (for a quarantine
/// across filesystems).
fn copy_tree(dir: &Dir, name: &OsStr, to: &Path) -> io::Result<()> {
    let meta = dir.stat(name)?;
    let ft = meta.file_type();
    if ft.is_symlink() {
        std::os::unix::fs::symlink(dir.read_link(name)?, to)?;
    } else if ft.is_dir() {
        fs::create_dir(to)?;
        let sub = dir.dir(name)?;
        for (n, _) in sub.entries()? {
            copy_tree(&sub, &n, &to.join(&n))?;
        }
        fs::set_permissions(to, meta.permissions())?;
        fsync_dir(to)?;
    } else if ft.is_file() {
        let mut src = dir.read(name)?;
        let mut dst = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(O_NOFOLLOW)
            .open(to)?;
        io::copy(&mut src, &mut dst)?;
        dst.set_permissions(meta.permissions())?;
        dst.set_modified(system_time(mtime_ns(&meta)))?;
        dst.sync_all()?;
    }
    // Anything else (a fifo, a socket, a device) is not copied: it holds no
    // data, and is removed with the rest.
    Ok(())
}

trait KindEq {
    fn kind_eq(&self, other: &Entry) -> bool;
}

impl KindEq for Entry {
    fn kind_eq(&self, other: &Entry) -> bool {
        std::mem::discriminant(&self.kind) == std::mem::discriminant(&other.kind)
    }
}
