//! A file set on the primary: scanning its root into a manifest, watching it
//! for hints of change, and reading chunks for the standby.
//!
//! The manifest is the truth; notify events only say where to look. The
//! order at startup is: create a [`FileSetWatcher`] (its watches are then in
//! place), then [`FileSetScanner::scan`], then loop on
//! [`FileSetWatcher::take_dirty`] and [`FileSetScanner::rescan`]. A change
//! made during the scan is either seen by the scan or reported by the
//! watcher afterwards, never lost. A Rescan flag (inotify queue overflow), a
//! watch error or an event outside the root makes the whole set dirty.
//!
//! Scanning never follows symlinks: a symlink is recorded as one, and every
//! file is opened with `O_NOFOLLOW` after checking that its parents are real
//! directories. A file whose size, mtime or inode differ before and after it
//! was read was being written; it is read again (a few times, then reported
//! as unstable so the caller retries later). An unchanged file (same size,
//! mtime and type as in the previous manifest) is not read again.

use bytes::Bytes;
use nix::fcntl::OFlag;
use nix::libc::{EINVAL, ELOOP, ENOTDIR, O_NOFOLLOW};
use notify::{EventKind, RecursiveMode, Watcher};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::fs::{self, File, Metadata};
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};
use tandem_sync::chunk::{ChunkRef, Chunker};
use tandem_sync::delta::SketchStore;
use tandem_sync::fileset::SafePath;
use tandem_sync::manifest::{mirrored_mode, Entry, EntryKind, FileSetFilter, Manifest, Owner};

/// How many times a file that changes while being read is read again
/// before it is reported as unstable.
pub const READ_ATTEMPTS_MAX: usize = 4;
/// Read buffer size.
const READ_BUFFER_BYTES: usize = 1024 * 1024;
/// A pass's files are read on several threads past this many bytes.
const PARALLEL_READ_BYTES_MIN: u64 = 8 << 20;
/// Threads reading a pass's files, at most.
const READ_THREADS_MAX: usize = 4;
/// Their nice value (see [`read_in_background`]).
const READ_THREADS_NICE: i32 = 10;
/// With a [`ChunkCache`], a file up to this size is read whole into memory
/// (and kept there for its chunks to be sent); a larger one is streamed.
const WHOLE_READ_BYTES_MAX: u64 = 4 << 20;

/// Files the scanner read whole lately, with the chunks it cut them into:
/// a primary sends a new file's chunks from here rather than reading them
/// again and checking each against its hash (that second pass cost as much
/// as the first). What a file held when it was scanned matches the entry
/// sent for it, even if it has changed since; the change is the next
/// round's. Bounded in bytes: the oldest files go first, and a chunk not
/// found here is read from the file as before.
#[derive(Debug)]
pub struct ChunkCache {
    /// By path: when it was put in (a count), its chunks, its bytes.
    files: std::collections::HashMap<SafePath, (u64, Vec<ChunkRef>, Bytes)>,
    /// The paths by when they were put in, oldest first.
    order: std::collections::BTreeMap<u64, SafePath>,
    /// What the files held cost, counted by [`ChunkCache::cost`].
    bytes: usize,
    bytes_max: usize,
    generation: u64,
    /// Chunks asked for and not found here (read from their file again),
    /// since the cache was made: not reset by [`ChunkCache::clear`].
    misses: u64,
}

/// What a cached file costs beyond its bytes and chunk list, about: its
/// entries in the map and in the order.
const CACHED_FILE_OVERHEAD: usize = 256;

impl ChunkCache {
    /// An empty cache whose files cost at most `bytes_max` (see
    /// [`ChunkCache::bytes`]).
    pub fn new(bytes_max: usize) -> Self {
        ChunkCache {
            files: Default::default(),
            order: Default::default(),
            bytes: 0,
            bytes_max,
            generation: 0,
            misses: 0,
        }
    }

    fn cost(path: &SafePath, chunks: &[ChunkRef], data: &[u8]) -> usize {
        data.len() + path.as_str().len() + std::mem::size_of_val(chunks) + CACHED_FILE_OVERHEAD
    }

    /// Keep `data`, the content of `path` as cut into `chunks` (an empty
    /// file has no chunk to send, and is not kept).
    fn put(&mut self, path: &SafePath, chunks: Vec<ChunkRef>, data: Vec<u8>) {
        self.remove(path);
        let cost = Self::cost(path, &chunks, &data);
        if data.is_empty() || cost > self.bytes_max {
            return;
        }
        self.generation += 1;
        self.bytes += cost;
        self.files
            .insert(path.clone(), (self.generation, chunks, Bytes::from(data)));
        self.order.insert(self.generation, path.clone());
        while self.bytes > self.bytes_max {
            let Some((_, oldest)) = self.order.pop_first() else {
                break;
            };
            self.remove(&oldest);
        }
    }

    /// Forget `path` (read again without being kept, or gone).
    fn remove(&mut self, path: &SafePath) {
        if let Some((put, chunks, data)) = self.files.remove(path) {
            self.order.remove(&put);
            self.bytes -= Self::cost(path, &chunks, &data);
        }
    }

    /// The bytes of `chunk` of `path`, if the file was scanned with it (a
    /// view of the file's bytes, which stay in memory as long as it does).
    fn get(&self, path: &SafePath, chunk: &ChunkRef) -> Option<Bytes> {
        let (_, chunks, data) = self.files.get(path)?;
        let i = chunks
            .binary_search_by_key(&chunk.offset, |c| c.offset)
            .ok()?;
        (chunks[i] == *chunk).then(|| data.slice(chunk.offset as usize..chunk.end() as usize))
    }

    /// What the files held cost: their bytes and about
    /// [`CACHED_FILE_OVERHEAD`] each.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// How many chunks were asked for and read from their file again,
    /// because they were not (or no longer) here.
    pub fn misses(&self) -> u64 {
        self.misses
    }

    /// Let go of everything: no chunk will be asked for (the set is in
    /// sync, or the standby is away and will say what it holds first).
    pub fn clear(&mut self) {
        self.files.clear();
        self.order.clear();
        self.bytes = 0;
    }
}

/// Why something below the root was not put in the manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SkipReason {
    /// The name (or a symlink's target) is not valid UTF-8.
    NotUtf8,
    /// A fifo, socket or device.
    Special,
    /// Still changing after [`READ_ATTEMPTS_MAX`] reads: retry later.
    Unstable,
    /// Could not be read (permissions, I/O error).
    Io(String),
}

/// Something not mirrored, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// The path as found, lossily displayed.
    pub path: String,
    pub reason: SkipReason,
}

/// The result of a scan.
#[derive(Debug, Default)]
pub struct Scan {
    pub manifest: Manifest,
    pub skipped: Vec<Skipped>,
    /// Files left unread because the pass's read budget ran out: each keeps
    /// the entry it had (a new one stays absent) until it is rescanned.
    pub deferred: Vec<SafePath>,
    /// Bytes of files this pass may read; None: no bound.
    read_max: Option<u64>,
    /// Read first whatever its size: the file deferred the longest, so
    /// that none waits for ever behind smaller ones that keep changing.
    read_first: Option<SafePath>,
    /// Regular files the walk found to read (size, entry before the pass),
    /// read together at the end of the pass.
    to_read: Vec<(SafePath, u64, Option<Entry>)>,
}

/// What a bounded rescan ([`FileSetScanner::rescan_bounded`]) left to do.
#[derive(Debug, Default)]
pub struct Rescan {
    pub skipped: Vec<Skipped>,
    /// Files still to read: rescan them (with whatever else is dirty) in
    /// the next pass.
    pub deferred: Vec<SafePath>,
}

#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error("file set root {0}: {1}")]
    Root(PathBuf, io::Error),
    #[error("file set root {0} is not a directory")]
    RootNotDir(PathBuf),
}

#[derive(Debug, thiserror::Error)]
pub enum ReadChunkError {
    #[error("{0}: {1}")]
    Io(SafePath, io::Error),
    #[error("{0}: not a regular file inside the root")]
    NotAFile(SafePath),
    /// The bytes at the chunk's place no longer hash to it: the file changed
    /// since it was scanned. Rescan it.
    #[error("{0}: the file changed since it was scanned")]
    Changed(SafePath),
}

/// Scans one file set's root.
#[derive(Debug, Clone)]
pub struct FileSetScanner {
    root: PathBuf,
    filter: FileSetFilter,
    /// Where the sketches of the chunks it reads go (a primary's, for
    /// chunk deltas), if anywhere.
    sketches: Option<Arc<Mutex<SketchStore>>>,
    /// Where the files it reads whole are kept for their chunks to be sent
    /// (a primary's), if anywhere.
    chunk_cache: Option<Arc<Mutex<ChunkCache>>>,
    /// Whether this kernel takes `openat2` here (tried once): after that,
    /// an error from it is the path's own, never a reason to go by path.
    beneath: bool,
}

fn mtime_ns(meta: &Metadata) -> i64 {
    meta.mtime()
        .saturating_mul(1_000_000_000)
        .saturating_add(meta.mtime_nsec())
}

/// Whether a file is unchanged since `entry` was made, by the quick check
/// (size and mtime).
fn quick_match(entry: &Entry, meta: &Metadata) -> bool {
    let owner = owner_of(meta);
    matches!(&entry.kind, EntryKind::File { size, .. } if *size == meta.len())
        && entry.mtime_ns == mtime_ns(meta)
        && entry.owner == owner
        && entry.mode == mirrored_mode(meta.permissions().mode(), owner)
}

/// The owner of what `meta` describes, when ownership is mirrored: when
/// this process runs as root, as tandem does on both nodes under its unit
/// (only root can give a file to another user).
pub fn owner_of(meta: &Metadata) -> Option<Owner> {
    static ROOT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    ROOT.get_or_init(|| nix::unistd::geteuid().is_root())
        .then(|| Owner {
            uid: meta.uid(),
            gid: meta.gid(),
        })
}

/// An entry of `kind` with the mode, mtime and owner of `meta`.
fn entry_of(kind: EntryKind, meta: &Metadata) -> Entry {
    let owner = owner_of(meta);
    Entry {
        kind,
        mode: mirrored_mode(meta.permissions().mode(), owner),
        mtime_ns: mtime_ns(meta),
        owner,
    }
}

impl FileSetScanner {
    /// A scanner of `root`, which must be a directory.
    pub fn new(root: &Path, filter: FileSetFilter) -> Result<Self, ScanError> {
        let root = fs::canonicalize(root).map_err(|e| ScanError::Root(root.to_owned(), e))?;
        let meta = fs::metadata(&root).map_err(|e| ScanError::Root(root.clone(), e))?;
        if !meta.is_dir() {
            return Err(ScanError::RootNotDir(root));
        }
        let mut scanner = Self {
            root,
            filter,
            sketches: None,
            chunk_cache: None,
            beneath: true,
        };
        // A kernel before 5.6, or a sandbox that forbids the call.
        scanner.beneath = scanner
            .open_beneath(".", OFlag::O_PATH | OFlag::O_DIRECTORY)
            .is_some_and(|r| r.is_ok());
        Ok(scanner)
    }

    /// Keep a sketch of every chunk this scanner reads in `store` (see
    /// [`tandem_sync::delta`]): a primary's, so that a chunk made by an edit
    /// can be sent as a delta against the one it replaced.
    pub fn with_sketches(mut self, store: Arc<Mutex<SketchStore>>) -> Self {
        self.sketches = Some(store);
        self
    }

    /// Read files up to [`WHOLE_READ_BYTES_MAX`] whole and keep them in
    /// `cache`, where [`FileSetScanner::read_chunk`] looks first.
    pub fn with_chunk_cache(mut self, cache: Arc<Mutex<ChunkCache>>) -> Self {
        self.chunk_cache = Some(cache);
        self
    }

    /// The canonical root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn full(&self, path: &SafePath) -> PathBuf {
        self.root.join(path.as_str())
    }

    /// Opens `path` (relative to the root) with `flags`, resolved below the
    /// root by the kernel without following any symlink (`openat2`): a
    /// parent that a local user swaps for a symlink while the set is read
    /// fails with ELOOP, never leading outside the set. None where the
    /// kernel does not take the call (`beneath`): the caller goes by path
    /// (the parents were checked, with a window until the use).
    fn open_beneath(&self, path: &str, flags: OFlag) -> Option<io::Result<File>> {
        use nix::fcntl::{openat2, OpenHow, ResolveFlag};
        if !self.beneath {
            return None;
        }
        let root = match File::open(&self.root) {
            Ok(r) => r,
            Err(e) => return Some(Err(e)),
        };
        let how = OpenHow::new()
            .flags(flags | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC)
            .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS);
        Some(
            openat2(&root, path, how)
                .map(File::from)
                .map_err(io::Error::from),
        )
    }

    /// Opens the file at `path` to read it, never through a symlink: no
    /// file from outside the set is sent to the peer.
    fn open_in_set(&self, path: &SafePath) -> io::Result<File> {
        self.open_beneath(path.as_str(), OFlag::O_RDONLY | OFlag::O_NONBLOCK)
            .unwrap_or_else(|| open_nofollow(&self.full(path)))
    }

    /// Lists the directory `dir` (None: the root) through a descriptor
    /// opened below the root ([`Self::open_beneath`]); its `/proc/self/fd`
    /// link names exactly the directory opened, and the entries' metadata
    /// is then taken relative to it (`DirEntry::metadata`), so no names
    /// from outside the set come into a scan. The descriptor is returned
    /// too, to be kept while the listing is read.
    fn list(&self, dir: Option<&SafePath>) -> io::Result<(Option<File>, fs::ReadDir)> {
        let Some(d) = dir else {
            return Ok((None, fs::read_dir(&self.root)?));
        };
        match self.open_beneath(d.as_str(), OFlag::O_RDONLY | OFlag::O_DIRECTORY) {
            Some(Ok(f)) => match fs::read_dir(format!("/proc/self/fd/{}", f.as_raw_fd())) {
                Ok(listing) => Ok((Some(f), listing)),
                // No /proc here: by path.
                Err(_) => Ok((None, fs::read_dir(self.full(d))?)),
            },
            Some(Err(e)) => Err(e),
            None => Ok((None, fs::read_dir(self.full(d))?)),
        }
    }

    /// What `previous` had at and below `dir` (everything for the root)
    /// and this scanner still includes, put back into the scan: `dir`
    /// could not be looked at now (changing under the scan, or an error),
    /// and the events of the change, or the next reconcile, look again.
    /// Left out, it would read as deleted and be deleted on the standby.
    fn keep_previous(&self, dir: Option<&SafePath>, previous: &Manifest, scan: &mut Scan) {
        let kept: Vec<(&SafePath, &Entry)> = match dir {
            Some(d) => previous.at_or_below(d),
            None => previous.iter().collect(),
        };
        for (p, entry) in kept {
            let included = if entry.is_dir() {
                self.filter.includes_dir(p)
            } else {
                self.filter.includes_file(p)
            };
            if included && scan.manifest.get(p).is_none() {
                scan.manifest.insert(p.clone(), entry.clone());
            }
        }
    }

    /// The target of the symlink at `path`, read in its directory opened
    /// below the root.
    fn read_link_in_set(&self, path: &SafePath) -> io::Result<std::ffi::OsString> {
        let Some(parent) = path.parent() else {
            return fs::read_link(self.full(path)).map(PathBuf::into_os_string);
        };
        match self.open_beneath(parent.as_str(), OFlag::O_PATH | OFlag::O_DIRECTORY) {
            Some(Ok(dir)) => {
                nix::fcntl::readlinkat(&dir, path.file_name()).map_err(io::Error::from)
            }
            Some(Err(e)) => Err(e),
            None => fs::read_link(self.full(path)).map(PathBuf::into_os_string),
        }
    }

    /// Whether every strict ancestor of `path` is a real directory (not a
    /// symlink) on disk.
    fn parents_are_dirs(&self, path: &SafePath) -> bool {
        path.ancestors()
            .iter()
            .all(|a| fs::symlink_metadata(self.full(a)).is_ok_and(|m| m.is_dir()))
    }

    /// Scan the whole root. Files unchanged since `previous` (same size,
    /// mtime and mode) keep their chunk lists without being read.
    pub fn scan(&self, previous: Option<&Manifest>) -> Result<Scan, ScanError> {
        self.scan_with(previous, Scan::default())
    }

    fn scan_with(&self, previous: Option<&Manifest>, mut scan: Scan) -> Result<Scan, ScanError> {
        fs::symlink_metadata(&self.root).map_err(|e| ScanError::Root(self.root.clone(), e))?;
        let empty = Manifest::new();
        self.walk(None, previous.unwrap_or(&empty), &mut scan);
        self.read_files(&mut scan);
        Ok(scan)
    }

    /// Bring `manifest` up to date for what the watcher reported.
    pub fn rescan(
        &self,
        manifest: &mut Manifest,
        dirty: &DirtySet,
    ) -> Result<Vec<Skipped>, ScanError> {
        Ok(self.rescan_with(manifest, dirty, Scan::default())?.skipped)
    }

    /// [`FileSetScanner::rescan`], reading at most about `read_bytes_max`
    /// of file contents: `read_first` if it is among them (whatever its
    /// size), then the smallest files first, at least one. A primary given
    /// a large tree at once sends the first part of it while it reads the
    /// rest, instead of reading it all first, and a small file changed
    /// meanwhile is not held behind it. What is left is in
    /// [`Rescan::deferred`]; until it is read, the manifest keeps the old
    /// entries of those files and lacks the new ones, so it never shows a
    /// file deleted that is not.
    pub fn rescan_bounded(
        &self,
        manifest: &mut Manifest,
        dirty: &DirtySet,
        read_bytes_max: u64,
        read_first: Option<&SafePath>,
    ) -> Result<Rescan, ScanError> {
        let bounded = Scan {
            read_max: Some(read_bytes_max),
            read_first: read_first.cloned(),
            ..Scan::default()
        };
        self.rescan_with(manifest, dirty, bounded)
    }

    fn rescan_with(
        &self,
        manifest: &mut Manifest,
        dirty: &DirtySet,
        fresh: Scan,
    ) -> Result<Rescan, ScanError> {
        let scan = match dirty {
            DirtySet::Everything => self.scan_with(Some(manifest), fresh)?,
            DirtySet::Paths(paths) => {
                let mut scan = Scan {
                    manifest: std::mem::take(manifest),
                    ..fresh
                };
                for p in paths {
                    self.rescan_path(&mut scan, p);
                }
                self.read_files(&mut scan);
                scan
            }
        };
        *manifest = scan.manifest;
        Ok(Rescan {
            skipped: scan.skipped,
            deferred: scan.deferred,
        })
    }

    /// Re-read one path (and everything below it) into `scan.manifest`.
    fn rescan_path(&self, scan: &mut Scan, path: &SafePath) {
        // If an ancestor is no longer a real directory (or is excluded), the
        // change is really that ancestor's.
        let mut target = path.clone();
        for a in path.ancestors() {
            let is_dir = fs::symlink_metadata(self.full(&a)).is_ok_and(|m| m.is_dir());
            if !is_dir || !self.filter.includes_dir(&a) {
                target = a;
                break;
            }
        }
        let mut previous = Manifest::new();
        let below: Vec<SafePath> = scan
            .manifest
            .at_or_below(&target)
            .into_iter()
            .map(|(p, _)| p.clone())
            .collect();
        for p in below {
            if let Some(e) = scan.manifest.remove(&p) {
                previous.insert(p, e);
            }
        }
        let ancestors_included = !target.is_partial()
            && target
                .ancestors()
                .iter()
                .all(|a| self.filter.includes_dir(a));
        if ancestors_included {
            if let Ok(meta) = fs::symlink_metadata(self.full(&target)) {
                self.visit(&target, &meta, &previous, scan);
            }
            // Creating or removing `target` changed its parents' mtimes.
            for a in target.ancestors() {
                if let Ok(meta) = fs::symlink_metadata(self.full(&a)) {
                    if meta.is_dir() {
                        scan.manifest.insert(a, dir_entry(&meta));
                    }
                }
            }
        }
    }

    fn walk(&self, dir: Option<&SafePath>, previous: &Manifest, scan: &mut Scan) {
        let full = dir.map_or_else(|| self.root.clone(), |d| self.full(d));
        let (_held, entries) = match self.list(dir) {
            Ok(e) => e,
            // Changing under the scan (removed, or swapped for a symlink)
            // or unreadable: kept as it was.
            Err(e) => {
                if e.kind() != io::ErrorKind::NotFound && e.raw_os_error() != Some(ELOOP) {
                    scan.skipped.push(Skipped {
                        path: full.display().to_string(),
                        reason: SkipReason::Io(e.to_string()),
                    });
                }
                self.keep_previous(dir, previous, scan);
                return;
            }
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(name) = name.to_str() else {
                scan.skipped.push(Skipped {
                    path: full.join(&name).display().to_string(),
                    reason: SkipReason::NotUtf8,
                });
                continue;
            };
            let path = match dir {
                None => SafePath::parse(name),
                Some(d) => d.join(name),
            };
            let Ok(path) = path else { continue };
            // tandem's own temp files (left by an interrupted apply while
            // this node was a standby) are never part of the set.
            if path.is_partial() {
                continue;
            }
            // Relative to the directory listed, not followed.
            match entry.metadata() {
                Ok(meta) => self.visit(&path, &meta, previous, scan),
                // Gone since the listing.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(_) => self.keep_previous(Some(&path), previous, scan),
            }
        }
    }

    /// Read and chunk the files the pass found, `read_first` first, then
    /// the smallest, as far as its read budget goes (at least one); the
    /// rest keep the entries they had and are deferred. With more than
    /// [`PARALLEL_READ_BYTES_MIN`] to read, one thread per core takes them
    /// in turn: hashing is the scan's cost, and a primary scanning a tree
    /// of new files has cores to spare.
    fn read_files(&self, scan: &mut Scan) {
        // A path found twice in one pass (a dirty directory and a dirty
        // file in it) is read once. The first look is the directory's
        // (paths are taken in order), which took the entry the file had
        // out of the manifest: that one is kept.
        let mut found = std::mem::take(&mut scan.to_read);
        let mut seen = HashSet::new();
        found.retain(|(path, ..)| seen.insert(path.clone()));
        found.sort_by_key(|(path, len, _)| (Some(path) != scan.read_first.as_ref(), *len));
        let mut files = Vec::with_capacity(found.len());
        let mut bytes = 0u64;
        // What the files to read were before, kept if they cannot be read.
        let mut was: HashMap<SafePath, Entry> = HashMap::new();
        for (path, len, before) in found {
            if scan.manifest.get(&path).is_some() {
                // A later look in this pass found something else there (a
                // directory now): that is the newer state.
                continue;
            }
            let fits = scan
                .read_max
                .is_none_or(|max| files.is_empty() || bytes + len <= max);
            if fits {
                bytes += len;
                if let Some(entry) = before {
                    was.insert(path.clone(), entry);
                }
                files.push(path);
            } else {
                if let Some(entry) = before {
                    scan.manifest.insert(path.clone(), entry);
                }
                scan.deferred.push(path);
            }
        }
        let threads = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(READ_THREADS_MAX)
            .min(files.len());
        let results: Vec<(SafePath, Result<Option<Entry>, SkipReason>)> =
            if threads < 2 || bytes < PARALLEL_READ_BYTES_MIN {
                files
                    .into_iter()
                    .map(|p| {
                        let r = self.read_file(&p);
                        (p, r)
                    })
                    .collect()
            } else {
                let next = std::sync::atomic::AtomicUsize::new(0);
                let files = &files;
                std::thread::scope(|scope| {
                    let workers: Vec<_> = (0..threads)
                        .map(|_| {
                            scope.spawn(|| {
                                read_in_background();
                                let mut out = Vec::new();
                                loop {
                                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                    let Some(p) = files.get(i) else { break };
                                    out.push((p.clone(), self.read_file(p)));
                                }
                                out
                            })
                        })
                        .collect();
                    workers
                        .into_iter()
                        // A file left out would read as deleted: a panic
                        // goes on as it would have on this thread.
                        .flat_map(|w| w.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
                        .collect()
                })
            };
        for (path, result) in results {
            match result {
                Ok(Some(entry)) => {
                    scan.manifest.insert(path, entry);
                }
                Ok(None) => {}
                Err(reason) => {
                    // Still changing after every attempt, or unreadable:
                    // the version it had stays, and the standby keeps it
                    // (left out, it would read as deleted and be deleted
                    // there). The watcher's next event for it, or the
                    // periodic reconcile, reads it again.
                    if let Some(entry) = was.remove(&path) {
                        scan.manifest.insert(path.clone(), entry);
                    }
                    scan.skipped.push(Skipped {
                        path: path.to_string(),
                        reason,
                    });
                }
            }
        }
    }

    /// Puts `path` in the scan, except a regular file that must be read:
    /// that goes to `scan.to_read`, for [`FileSetScanner::read_files`].
    fn visit(&self, path: &SafePath, meta: &Metadata, previous: &Manifest, scan: &mut Scan) {
        let ft = meta.file_type();
        if ft.is_dir() {
            if self.filter.includes_dir(path) {
                scan.manifest.insert(path.clone(), dir_entry(meta));
                self.walk(Some(path), previous, scan);
            }
        } else if !self.filter.includes_file(path) {
        } else if ft.is_symlink() {
            match self.read_link_in_set(path) {
                Ok(target) => match target.into_string() {
                    Ok(target) if !target.is_empty() => {
                        let entry = entry_of(EntryKind::Symlink { target }, meta);
                        scan.manifest.insert(path.clone(), entry);
                    }
                    _ => scan.skipped.push(Skipped {
                        path: path.to_string(),
                        reason: SkipReason::NotUtf8,
                    }),
                },
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                // Swapped under the scan (a parent is a symlink now, or it
                // is no longer a symlink): kept as it was.
                Err(e) if matches!(e.raw_os_error(), Some(ELOOP | EINVAL)) => {
                    self.keep_previous(Some(path), previous, scan)
                }
                Err(e) => scan.skipped.push(Skipped {
                    path: path.to_string(),
                    reason: SkipReason::Io(e.to_string()),
                }),
            }
        } else if ft.is_file() {
            if let Some(prev) = previous.get(path) {
                if quick_match(prev, meta) {
                    scan.manifest.insert(path.clone(), prev.clone());
                    return;
                }
            }
            scan.to_read
                .push((path.clone(), meta.len(), previous.get(path).cloned()));
        } else {
            scan.skipped.push(Skipped {
                path: path.to_string(),
                reason: SkipReason::Special,
            });
        }
    }

    /// Read and chunk one regular file, again if it changed while being
    /// read. `Ok(None)`: it is gone (or no longer a regular file).
    fn read_file(&self, path: &SafePath) -> Result<Option<Entry>, SkipReason> {
        let full = self.full(path);
        for _ in 0..READ_ATTEMPTS_MAX {
            let mut file = match self.open_in_set(path) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                // ELOOP: it, or a directory above it, is a symlink now:
                // changing under the scan. It keeps its entry (it is not
                // gone); the events of the change have it looked at again.
                Err(e) if e.raw_os_error() == Some(ELOOP) => return Err(SkipReason::Unstable),
                Err(e) => return Err(SkipReason::Io(e.to_string())),
            };
            let before = file.metadata().map_err(|e| SkipReason::Io(e.to_string()))?;
            if !before.is_file() {
                return Ok(None);
            }
            let mut chunker = if self.sketches.is_some() {
                Chunker::with_sketches()
            } else {
                Chunker::new()
            };
            let mut chunks = Vec::new();
            let mut size = 0u64;
            // Read whole (to be kept for sending), or streamed.
            let mut whole = None;
            if self.chunk_cache.is_some() && before.len() <= WHOLE_READ_BYTES_MAX {
                let mut data = Vec::with_capacity(before.len() as usize);
                // One byte more than it had is enough to see it grew.
                (&mut file)
                    .take(before.len() + 1)
                    .read_to_end(&mut data)
                    .map_err(|e| SkipReason::Io(e.to_string()))?;
                chunks = chunker.push_last(&data);
                size = data.len() as u64;
                whole = Some(data);
            } else {
                let mut buf = vec![0u8; READ_BUFFER_BYTES];
                loop {
                    let n = match file.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => return Err(SkipReason::Io(e.to_string())),
                    };
                    chunks.extend(chunker.push(&buf[..n]));
                    size += n as u64;
                }
                chunks.extend(chunker.finish());
            }
            let after = file.metadata().map_err(|e| SkipReason::Io(e.to_string()))?;
            // The path must still name the file that was read.
            let still_there = fs::symlink_metadata(&full)
                .is_ok_and(|m| m.ino() == after.ino() && m.dev() == after.dev());
            let stable = size == before.len()
                && size == after.len()
                && mtime_ns(&before) == mtime_ns(&after)
                && before.ctime() == after.ctime()
                && before.ctime_nsec() == after.ctime_nsec();
            if stable && still_there {
                if let Some(store) = &self.sketches {
                    let mut store = store.lock().unwrap_or_else(|e| e.into_inner());
                    for (hash, sketch) in chunker.take_sketches() {
                        store.insert(hash, sketch);
                    }
                }
                if let Some(cache) = &self.chunk_cache {
                    let mut cache = cache.lock().unwrap_or_else(|e| e.into_inner());
                    match whole {
                        Some(data) => cache.put(path, chunks.clone(), data),
                        None => cache.remove(path),
                    }
                }
                return Ok(Some(entry_of(EntryKind::file(chunks), &after)));
            }
        }
        Err(SkipReason::Unstable)
    }

    /// The bytes of one chunk of a file as scanned (from the
    /// [`ChunkCache`]), or read now and checked against its hash.
    pub fn read_chunk(&self, path: &SafePath, chunk: &ChunkRef) -> Result<Bytes, ReadChunkError> {
        if let Some(cache) = &self.chunk_cache {
            let mut cache = cache.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(bytes) = cache.get(path, chunk) {
                return Ok(bytes);
            }
            cache.misses += 1;
        }
        // `openat2` refuses a parent that is not a real directory itself;
        // without it, the parents are checked first.
        if !self.beneath && !self.parents_are_dirs(path) {
            return Err(ReadChunkError::NotAFile(path.clone()));
        }
        let file = match self.open_in_set(path) {
            Ok(f) => f,
            Err(e) if self.beneath && matches!(e.raw_os_error(), Some(ELOOP | ENOTDIR)) => {
                return Err(ReadChunkError::NotAFile(path.clone()))
            }
            Err(e) => return Err(ReadChunkError::Io(path.clone(), e)),
        };
        if !file.metadata().is_ok_and(|m| m.is_file()) {
            return Err(ReadChunkError::NotAFile(path.clone()));
        }
        let mut buf = vec![0u8; chunk.len as usize];
        match file.read_exact_at(&mut buf, chunk.offset) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                return Err(ReadChunkError::Changed(path.clone()))
            }
            Err(e) => return Err(ReadChunkError::Io(path.clone(), e)),
        }
        if !chunk.verify(&buf) {
            return Err(ReadChunkError::Changed(path.clone()));
        }
        Ok(buf.into())
    }
}

/// A pass's reading threads yield to the rest of the node: hashing a
/// large change is bulk work, and the application the primary serves (and,
/// where both nodes share a machine, the standby applying the round before)
/// should not wait behind it. Linux keeps a nice value per thread; raising
/// one's own needs no privilege. Only these threads: a small change is read
/// on the engine's own thread, at the usual priority.
fn read_in_background() {
    // SAFETY: setpriority takes plain integers and touches no memory of
    // ours. An error (none is expected) leaves the usual priority.
    let _ = unsafe { nix::libc::setpriority(nix::libc::PRIO_PROCESS, 0, READ_THREADS_NICE) };
}

fn dir_entry(meta: &Metadata) -> Entry {
    entry_of(EntryKind::Dir, meta)
}

/// Opens `path` to read it, never following a symlink there and never
/// blocking (a fifo swapped in for a file would hold the scan).
fn open_nofollow(path: &Path) -> io::Result<File> {
    fs::OpenOptions::new()
        .read(true)
        .custom_flags(O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .open(path)
}

/// What changed since the last look.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DirtySet {
    /// These paths (empty: nothing).
    Paths(BTreeSet<SafePath>),
    /// Anything may have changed: rescan the whole set.
    Everything,
}

impl DirtySet {
    pub fn is_empty(&self) -> bool {
        matches!(self, DirtySet::Paths(p) if p.is_empty())
    }

    fn add(&mut self, effect: EventEffect) {
        match (self, effect) {
            (DirtySet::Everything, _) | (_, EventEffect::Nothing) => {}
            (s, EventEffect::Everything) => *s = DirtySet::Everything,
            (DirtySet::Paths(set), EventEffect::Paths(p)) => set.extend(p),
        }
    }
}

/// What one notify event means for the set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventEffect {
    Nothing,
    Paths(Vec<SafePath>),
    Everything,
}

/// Classify one notify result: a hint about paths, or a reason to rescan
/// everything (Rescan flag, error, an event about the root itself or outside
/// it). Access events (open, read, close without write) change nothing.
pub fn classify(root: &Path, event: &notify::Result<notify::Event>) -> EventEffect {
    let event = match event {
        Err(_) => return EventEffect::Everything,
        Ok(e) => e,
    };
    if event.need_rescan() {
        return EventEffect::Everything;
    }
    if matches!(event.kind, EventKind::Access(_)) {
        return EventEffect::Nothing;
    }
    let mut paths = Vec::new();
    for p in &event.paths {
        let Ok(rel) = p.strip_prefix(root) else {
            return EventEffect::Everything;
        };
        if rel.as_os_str().is_empty() {
            // The root itself: its own mtime or mode, or it went away.
            return EventEffect::Everything;
        }
        // A name that is not UTF-8 (or not a valid path) is not mirrored.
        if let Some(Ok(sp)) = rel.to_str().map(SafePath::parse) {
            if !sp.is_partial() {
                paths.push(sp);
            }
        }
    }
    if paths.is_empty() {
        return EventEffect::Nothing;
    }
    EventEffect::Paths(paths)
}

/// Directories that appeared (created, or moved in) according to `event`.
/// notify installs the watch on a new directory only after it has handed
/// the event over, so what is created inside it in between sends no event;
/// such directories are looked at again once their watch is surely in place.
fn appeared_dirs(root: &Path, event: &notify::Result<notify::Event>) -> Vec<SafePath> {
    let Ok(event) = event else { return Vec::new() };
    if !matches!(
        event.kind,
        EventKind::Create(_) | EventKind::Modify(notify::event::ModifyKind::Name(_))
    ) {
        return Vec::new();
    }
    event
        .paths
        .iter()
        .filter(|p| fs::symlink_metadata(p).is_ok_and(|m| m.is_dir()))
        .filter_map(|p| {
            p.strip_prefix(root)
                .ok()?
                .to_str()
                .map(SafePath::parse)?
                .ok()
        })
        .filter(|p| !p.is_partial())
        .collect()
}

/// When a directory that appeared is looked at again: soon (notify's
/// event loop installs the watch right after delivering the event), and
/// once more later for a loaded machine. The periodic reconcile is the
/// backstop behind both.
pub const FRESH_RECHECKS: [Duration; 2] = [Duration::from_millis(50), Duration::from_millis(1000)];
/// Fresh directories remembered at most; past this everything is dirty.
const FRESH_MAX: usize = 10_000;

struct WatchState {
    dirty: DirtySet,
    /// Directories that appeared, to be marked dirty again at these times.
    fresh: Vec<(Instant, SafePath)>,
    /// The last watch error, for status.
    last_error: Option<String>,
    /// Called (on notify's thread) whenever something becomes dirty.
    wake: Option<Arc<dyn Fn() + Send + Sync>>,
}

impl WatchState {
    /// Move the fresh directories that are due into the dirty set.
    fn promote_due(&mut self, now: Instant) {
        let mut due = Vec::new();
        self.fresh.retain(|(at, p)| {
            if *at <= now {
                due.push(p.clone());
                false
            } else {
                true
            }
        });
        if !due.is_empty() {
            self.dirty.add(EventEffect::Paths(due));
        }
    }

    fn next_recheck(&self) -> Option<Instant> {
        self.fresh.iter().map(|(at, _)| *at).min()
    }
}

/// Why watching could not start.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error(
        "too many inotify watches for {0}: raise the limit with `sysctl -w fs.inotify.max_user_watches=N` \
         (and persist it in /etc/sysctl.d); until then the set is reconciled by periodic scans"
    )]
    Limit(PathBuf),
    #[error("watching {0}: {1}")]
    Notify(PathBuf, notify::Error),
}

/// Watches a file set's root recursively and collects dirty paths.
pub struct FileSetWatcher {
    state: Arc<(Mutex<WatchState>, Condvar)>,
    // Dropping the watcher removes the watches.
    _watcher: notify::RecommendedWatcher,
}

impl std::fmt::Debug for FileSetWatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileSetWatcher").finish_non_exhaustive()
    }
}

fn lock(state: &Mutex<WatchState>) -> std::sync::MutexGuard<'_, WatchState> {
    // A panic while holding this lock cannot leave the state inconsistent
    // (every update is a single assignment or extend), so take it anyway.
    state.lock().unwrap_or_else(|e| e.into_inner())
}

impl FileSetWatcher {
    /// Install the watches on `root` (recursively; new directories are
    /// watched as they appear). Call this before the startup scan.
    pub fn new(root: &Path) -> Result<Self, WatchError> {
        Self::with_wake(root, None)
    }

    /// [`FileSetWatcher::new`], calling `wake` (on notify's thread) whenever
    /// something becomes dirty, so an async caller need not poll.
    pub fn with_wake(
        root: &Path,
        wake: Option<Arc<dyn Fn() + Send + Sync>>,
    ) -> Result<Self, WatchError> {
        // Events name canonical paths; a root given another way would make
        // every event look like one from outside the root.
        let root = &fs::canonicalize(root)
            .map_err(|e| WatchError::Notify(root.to_owned(), notify::Error::io(e)))?;
        let state = Arc::new((
            Mutex::new(WatchState {
                dirty: DirtySet::Paths(BTreeSet::new()),
                fresh: Vec::new(),
                last_error: None,
                wake,
            }),
            Condvar::new(),
        ));
        let handler_state = Arc::clone(&state);
        let handler_root = root.to_owned();
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                let effect = classify(&handler_root, &event);
                let (m, cv) = &*handler_state;
                let mut s = lock(m);
                if let Err(e) = &event {
                    s.last_error = Some(match e.kind {
                        // A directory created after startup could not be watched.
                        notify::ErrorKind::MaxFilesWatch => {
                            WatchError::Limit(handler_root.clone()).to_string()
                        }
                        _ => e.to_string(),
                    });
                }
                let appeared = appeared_dirs(&handler_root, &event);
                if !appeared.is_empty() {
                    if s.fresh.len() + appeared.len() > FRESH_MAX {
                        s.fresh.clear();
                        s.dirty = DirtySet::Everything;
                    } else {
                        let now = Instant::now();
                        for p in appeared {
                            for after in FRESH_RECHECKS {
                                s.fresh.push((now + after, p.clone()));
                            }
                        }
                    }
                }
                if effect != EventEffect::Nothing {
                    s.dirty.add(effect);
                    cv.notify_all();
                    if let Some(wake) = &s.wake {
                        wake();
                    }
                }
            })
            .map_err(|e| WatchError::Notify(root.to_owned(), e))?;
        watcher
            .watch(root, RecursiveMode::Recursive)
            .map_err(|e| match e.kind {
                notify::ErrorKind::MaxFilesWatch => WatchError::Limit(root.to_owned()),
                _ => WatchError::Notify(root.to_owned(), e),
            })?;
        Ok(Self {
            state,
            _watcher: watcher,
        })
    }

    /// What became dirty since the last call; resets it.
    pub fn take_dirty(&self) -> DirtySet {
        let mut s = lock(&self.state.0);
        s.promote_due(Instant::now());
        std::mem::replace(&mut s.dirty, DirtySet::Paths(BTreeSet::new()))
    }

    /// When a directory that appeared is next due to be looked at again
    /// (see [`FRESH_RECHECKS`]); the caller calls [`FileSetWatcher::take_dirty`]
    /// then.
    pub fn next_recheck(&self) -> Option<Instant> {
        lock(&self.state.0).next_recheck()
    }

    /// Wait until something is dirty or `timeout` passes; true if dirty.
    pub fn wait_dirty(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let (m, cv) = &*self.state;
        let mut s = lock(m);
        loop {
            let now = Instant::now();
            s.promote_due(now);
            if !s.dirty.is_empty() {
                break;
            }
            if now >= deadline {
                return false;
            }
            let until = s.next_recheck().map_or(deadline, |r| r.min(deadline));
            s = cv
                .wait_timeout(s, until.saturating_duration_since(now))
                .map(|(g, _)| g)
                .unwrap_or_else(|e| e.into_inner().0);
        }
        true
    }

    /// Mark the whole set dirty (a periodic reconcile, or a test forcing the
    /// overflow path).
    pub fn mark_everything(&self) {
        let (m, cv) = &*self.state;
        let mut s = lock(m);
        s.dirty = DirtySet::Everything;
        cv.notify_all();
        if let Some(wake) = &s.wake {
            wake();
        }
    }

    /// The last watch error reported by notify, if any.
    pub fn last_error(&self) -> Option<String> {
        lock(&self.state.0).last_error.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_sync::chunk::{chunk_bytes, file_hash};

    #[test]
    fn a_directory_read_on_several_threads_gives_each_path_its_own_content() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir(root.join("sub")).unwrap();
        // Past PARALLEL_READ_BYTES_MIN in one directory, with files of
        // different sizes so that the threads finish out of order.
        let mut want = std::collections::BTreeMap::new();
        for i in 0..12u32 {
            let len = (i as usize % 4 + 1) << 20;
            let bytes: Vec<u8> = (0..len).map(|j| (j as u32 * 31 + i) as u8).collect();
            fs::write(root.join(format!("f{i:02}")), &bytes).unwrap();
            want.insert(
                format!("f{i:02}"),
                (len as u64, file_hash(&chunk_bytes(&bytes))),
            );
        }
        assert!(want.values().map(|(len, _)| len).sum::<u64>() > PARALLEL_READ_BYTES_MIN);
        fs::write(root.join("sub/small"), b"x").unwrap();
        want.insert("sub/small".into(), (1, file_hash(&chunk_bytes(b"x"))));
        let scan = FileSetScanner::new(root, FileSetFilter::all())
            .unwrap()
            .scan(None)
            .unwrap();
        assert!(scan.skipped.is_empty());
        let got: std::collections::BTreeMap<String, (u64, [u8; 32])> = scan
            .manifest
            .iter()
            .filter_map(|(p, e)| match &e.kind {
                EntryKind::File { size, hash, chunks } => {
                    assert_eq!(chunks.iter().map(|c| u64::from(c.len)).sum::<u64>(), *size);
                    Some((p.to_string(), (*size, *hash)))
                }
                _ => None,
            })
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn the_chunk_cache_lets_its_oldest_files_go_and_counts_a_file_put_again_once() {
        let file = |b: u8, len: usize| {
            let data = vec![b; len];
            (chunk_bytes(&data), data)
        };
        let path = |s: &str| SafePath::parse(s).unwrap();
        // Room for three such files: a one-letter name, 300 bytes, a chunk.
        let (chunks, data) = file(0, 300);
        let one = ChunkCache::cost(&path("x"), &chunks, &data);
        assert!(one > 300);
        let mut cache = ChunkCache::new(3 * one);
        for (name, b) in [("a", 1), ("b", 2), ("c", 3)] {
            let (chunks, data) = file(b, 300);
            cache.put(&path(name), chunks, data);
        }
        assert_eq!(cache.bytes(), 3 * one);
        // "a" again: counted once, and now the newest.
        let (a_chunks, a) = file(4, 300);
        cache.put(&path("a"), a_chunks.clone(), a);
        assert_eq!(cache.bytes(), 3 * one);
        let (d_chunks, d) = file(5, 300);
        cache.put(&path("d"), d_chunks.clone(), d);
        // "b" was the oldest: gone; the others are there.
        assert_eq!(cache.bytes(), 3 * one);
        assert!(cache.get(&path("b"), &file(2, 300).0[0]).is_none());
        assert_eq!(
            cache.get(&path("a"), &a_chunks[0]),
            Some(Bytes::from(vec![4; 300]))
        );
        assert_eq!(
            cache.get(&path("d"), &d_chunks[0]),
            Some(Bytes::from(vec![5; 300]))
        );
        assert!(cache.get(&path("c"), &file(3, 300).0[0]).is_some());
        // The old content of "a" is not served for its new place.
        assert!(cache.get(&path("a"), &file(1, 300).0[0]).is_none());
        // A file larger than the whole cache is not kept, nor what "c"
        // held before; nor an empty file.
        let (big_chunks, big) = file(6, 3 * one);
        cache.put(&path("c"), big_chunks.clone(), big);
        assert!(cache.get(&path("c"), &big_chunks[0]).is_none());
        assert_eq!(cache.bytes(), 2 * one);
        cache.put(&path("e"), Vec::new(), Vec::new());
        assert_eq!(cache.bytes(), 2 * one);
        // Stale places do not pile up when one file is put again and again.
        for i in 0..1000u32 {
            let (chunks, data) = file(i as u8, 300);
            cache.put(&path("a"), chunks, data);
        }
        assert!(cache.order.len() <= 2 * cache.files.len() + 16);
        assert_eq!(cache.bytes(), 2 * one);
    }

    #[test]
    fn opening_a_symlink_fails() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("f"), b"x").unwrap();
        std::os::unix::fs::symlink("f", dir.path().join("l")).unwrap();
        let err = open_nofollow(&dir.path().join("l")).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(ELOOP), "{err}");
        assert!(open_nofollow(&dir.path().join("f")).is_ok());
    }

    #[test]
    fn classify_events() {
        let root = Path::new("/r");
        let ev = |kind, paths: &[&str]| {
            let mut e = notify::Event::new(kind);
            for p in paths {
                e = e.add_path(PathBuf::from(p));
            }
            Ok(e)
        };
        let overflow =
            Ok(notify::Event::new(EventKind::Other).set_flag(notify::event::Flag::Rescan));
        assert_eq!(classify(root, &overflow), EventEffect::Everything);
        assert_eq!(
            classify(root, &Err(notify::Error::generic("boom"))),
            EventEffect::Everything
        );
        let create = ev(
            EventKind::Create(notify::event::CreateKind::File),
            &["/r/a/b"],
        );
        assert_eq!(
            classify(root, &create),
            EventEffect::Paths(vec![SafePath::parse("a/b").unwrap()])
        );
        let access = ev(
            EventKind::Access(notify::event::AccessKind::Read),
            &["/r/a"],
        );
        assert_eq!(classify(root, &access), EventEffect::Nothing);
        let outside = ev(
            EventKind::Remove(notify::event::RemoveKind::Any),
            &["/elsewhere"],
        );
        assert_eq!(classify(root, &outside), EventEffect::Everything);
        let itself = ev(EventKind::Remove(notify::event::RemoveKind::Any), &["/r"]);
        assert_eq!(classify(root, &itself), EventEffect::Everything);
    }
}
