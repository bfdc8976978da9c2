//! The manifest of a file set: what the truth is, on both sides.
//!
//! notify events are only hints; what the primary and the standby compare is
//! a manifest: every entry below the set's root by [`SafePath`], with its type,
//! mode, mtime, owner (when mirrored) and, for a file, its size, content hash
//! ([`crate::chunk::file_hash`] of its chunk list) and chunk list, for a
//! symlink its target.
//!
//! **Root hash.** Each entry has an entry hash: blake3 (in derive-key mode,
//! context [`ENTRY_CONTEXT`]) over a canonical encoding of its path, type,
//! mode, mtime, owner, size, content hash and symlink target (chunk lists are left
//! out: the content hash covers them). The
//! manifest keeps the XOR of all entry hashes, updated on every insert and
//! removal, and the root is blake3 (context [`ROOT_CONTEXT`]) over the entry
//! count and that XOR. So the root is O(1) to read and to keep current, and
//! two sides with the same entries have the same root whatever order they
//! were built in. An XOR set hash is not collision resistant against an
//! adversary who chooses many entries; it is used to compare two cooperating
//! copies, and the link between them is authenticated.
//!
//! **Diff.** [`diff`] turns an old and a new manifest into a list of
//! [`Change`]s which, applied in order, turn a tree matching the old one into
//! a tree matching the new one (see its doc for the order and why).
//! Renames are detected as a file that disappeared and a file that appeared
//! with the same size and content hash (non-empty files only: every empty
//! file is alike, and creating one costs nothing).
//!
//! **Encoding.** [`Manifest::encode`]/[`Manifest::decode`] are a compact
//! postcard encoding (chunk offsets are implied by the lengths). The decoder
//! never panics and checks everything a peer could get wrong: paths, order,
//! duplicates, parents, chunk coverage, content hashes, modes.

use crate::chunk::{file_hash, ChunkHash, ChunkRef, CHUNK_BYTES_MAX};
use crate::fileset::{PathError, SafePath, PATH_BYTES_MAX};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

/// blake3 derive-key context of entry hashes.
pub const ENTRY_CONTEXT: &str = "tandem file-set manifest entry v1";
/// blake3 derive-key context of the root hash.
pub const ROOT_CONTEXT: &str = "tandem file-set manifest root v1";
/// Version byte at the start of the compact encoding. 2: a file's hash
/// became [`file_hash`] of its chunk list (it was blake3 of its bytes);
/// version 1 is still read, its hashes recomputed from the chunk lists.
/// 3: entries carry their owner (versions 1 and 2 are read without).
pub const ENCODING_VERSION: u8 = 3;
/// The permission bits mirrored with the owner: all of them.
pub const MODE_MASK: u32 = 0o7777;
/// The permission bits mirrored without it (tandem does not run as root,
/// so it cannot set owners): read, write, execute and the sticky bit. Not
/// setuid and setgid: the standby's copy of a user's setuid file would be
/// a setuid file of whoever runs tandem.
pub const MODE_MASK_UNOWNED: u32 = 0o1777;

/// The permission bits of `mode` that are mirrored for an entry with
/// `owner` (or none).
pub fn mirrored_mode(mode: u32, owner: Option<Owner>) -> u32 {
    mode & if owner.is_some() {
        MODE_MASK
    } else {
        MODE_MASK_UNOWNED
    }
}

/// Who owns an entry: mirrored when tandem runs as root on both nodes
/// (only root can give a file to another user).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
}

/// What an entry is, with what identifies its content.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntryKind {
    /// A regular file.
    File {
        size: u64,
        /// [`file_hash`] of `chunks`: what names the content.
        hash: [u8; 32],
        /// Content-defined chunks covering `0..size`.
        chunks: Vec<ChunkRef>,
    },
    /// A directory.
    Dir,
    /// A symbolic link, never followed.
    Symlink { target: String },
}

impl EntryKind {
    /// A regular file made of `chunks` (in order, tiling it from offset 0),
    /// with its size and content hash.
    pub fn file(chunks: Vec<ChunkRef>) -> EntryKind {
        EntryKind::File {
            size: chunks.last().map_or(0, ChunkRef::end),
            hash: file_hash(&chunks),
            chunks,
        }
    }
}

/// One entry of a manifest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub kind: EntryKind,
    /// Permission bits ([`mirrored_mode`]).
    pub mode: u32,
    /// Modification time, nanoseconds since the Unix epoch.
    pub mtime_ns: i64,
    /// Owner and group, when mirrored (tandem runs as root).
    pub owner: Option<Owner>,
}

impl Entry {
    pub fn is_dir(&self) -> bool {
        matches!(self.kind, EntryKind::Dir)
    }

    /// Same type and same content (file bytes or symlink target), whatever
    /// the mode and mtime.
    pub fn same_content(&self, other: &Entry) -> bool {
        match (&self.kind, &other.kind) {
            (
                EntryKind::File {
                    size: a, hash: ha, ..
                },
                EntryKind::File {
                    size: b, hash: hb, ..
                },
            ) => a == b && ha == hb,
            (EntryKind::Dir, EntryKind::Dir) => true,
            (EntryKind::Symlink { target: a }, EntryKind::Symlink { target: b }) => a == b,
            _ => false,
        }
    }

    /// The entry as a node that mirrors no owners records it: no owner,
    /// and no setuid or setgid bit.
    pub fn without_owner(&self) -> Entry {
        Entry {
            mode: mirrored_mode(self.mode, None),
            owner: None,
            ..self.clone()
        }
    }

    /// Same mode, mtime and owner.
    pub fn same_meta(&self, other: &Entry) -> bool {
        self.mode == other.mode && self.mtime_ns == other.mtime_ns && self.owner == other.owner
    }

    fn same_type(&self, other: &Entry) -> bool {
        std::mem::discriminant(&self.kind) == std::mem::discriminant(&other.kind)
    }

    /// The chunks of a file, none for anything else.
    pub fn chunks(&self) -> &[ChunkRef] {
        match &self.kind {
            EntryKind::File { chunks, .. } => chunks,
            _ => &[],
        }
    }

    fn entry_hash(&self, path: &SafePath) -> [u8; 32] {
        let mut h = blake3::Hasher::new_derive_key(ENTRY_CONTEXT);
        h.update(&(path.as_str().len() as u64).to_le_bytes());
        h.update(path.as_str().as_bytes());
        self.hash_fields(&mut h);
        *h.finalize().as_bytes()
    }

    /// Feeds mode, mtime, type and (file) size and hash or (symlink)
    /// target to `h`: what the manifest's entry hash covers besides the path.
    pub(crate) fn hash_fields(&self, h: &mut blake3::Hasher) {
        h.update(&self.mode.to_le_bytes());
        h.update(&self.mtime_ns.to_le_bytes());
        match self.owner {
            None => h.update(&[0]),
            Some(o) => h
                .update(&[1])
                .update(&o.uid.to_le_bytes())
                .update(&o.gid.to_le_bytes()),
        };
        match &self.kind {
            EntryKind::File { size, hash, .. } => {
                h.update(&[0]);
                h.update(&size.to_le_bytes());
                h.update(hash);
            }
            EntryKind::Dir => {
                h.update(&[1]);
            }
            EntryKind::Symlink { target } => {
                h.update(&[2]);
                h.update(&(target.len() as u64).to_le_bytes());
                h.update(target.as_bytes());
            }
        }
    }
}

/// The manifest of one file set.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Manifest {
    entries: BTreeMap<SafePath, Entry>,
    xor: [u8; 32],
}

fn xor_into(acc: &mut [u8; 32], h: &[u8; 32]) {
    for (a, b) in acc.iter_mut().zip(h) {
        *a ^= b;
    }
}

impl Manifest {
    pub fn new() -> Self {
        Self::default()
    }

    /// Add or replace an entry; returns the entry it replaced.
    pub fn insert(&mut self, path: SafePath, entry: Entry) -> Option<Entry> {
        xor_into(&mut self.xor, &entry.entry_hash(&path));
        let old = self.entries.insert(path.clone(), entry);
        if let Some(old) = &old {
            xor_into(&mut self.xor, &old.entry_hash(&path));
        }
        old
    }

    pub fn remove(&mut self, path: &SafePath) -> Option<Entry> {
        let old = self.entries.remove(path)?;
        xor_into(&mut self.xor, &old.entry_hash(path));
        Some(old)
    }

    /// The entries at `path` and below it, in path order, without looking
    /// at the rest of the manifest.
    pub fn at_or_below(&self, path: &SafePath) -> Vec<(&SafePath, &Entry)> {
        use std::ops::Bound::Excluded;
        // Below `p`: after `p/`, before `p0` (`0` follows `/`).
        let (after, before) = (format!("{path}/"), format!("{path}0"));
        let below = self
            .entries
            .range::<str, _>((Excluded(after.as_str()), Excluded(before.as_str())));
        self.entries
            .get_key_value(path)
            .into_iter()
            .chain(below)
            .collect()
    }

    pub fn get(&self, path: &SafePath) -> Option<&Entry> {
        self.entries.get(path)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Entries in path order (a directory before what it holds).
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = (&SafePath, &Entry)> {
        self.entries.iter()
    }

    /// The root hash (see the module doc). O(1).
    pub fn root(&self) -> [u8; 32] {
        let mut h = blake3::Hasher::new_derive_key(ROOT_CONTEXT);
        h.update(&(self.entries.len() as u64).to_le_bytes());
        h.update(&self.xor);
        *h.finalize().as_bytes()
    }

    /// The paths whose entries differ between two manifests (for `verify`).
    pub fn differing_paths(&self, other: &Manifest) -> Vec<SafePath> {
        let paths: BTreeSet<&SafePath> = self.entries.keys().chain(other.entries.keys()).collect();
        paths
            .into_iter()
            .filter(|p| self.entries.get(*p) != other.entries.get(*p))
            .cloned()
            .collect()
    }

    /// Where each chunk hash can be found: (path, chunk), first occurrence.
    pub fn chunk_index(&self) -> HashMap<ChunkHash, (SafePath, ChunkRef)> {
        let mut index = HashMap::new();
        for (path, entry) in &self.entries {
            for c in entry.chunks() {
                index.entry(c.hash).or_insert_with(|| (path.clone(), *c));
            }
        }
        index
    }

    /// Update the manifest by one change, as a replica does after applying
    /// it to its tree.
    pub fn apply(&mut self, change: &Change) {
        match change {
            Change::Create { path, entry } => {
                self.insert(path.clone(), entry.clone());
            }
            Change::Modify { path, new, .. } | Change::Meta { path, new, .. } => {
                self.insert(path.clone(), new.clone());
            }
            Change::Delete { path, .. } => {
                self.remove(path);
            }
            Change::Rename { from, to, new, .. } => {
                self.remove(from);
                self.insert(to.clone(), new.clone());
            }
        }
    }

    /// The compact encoding.
    pub fn encode(&self) -> Vec<u8> {
        let wire = WireManifest {
            version: ENCODING_VERSION,
            entries: self
                .entries
                .iter()
                .map(|(p, e)| WireEntry {
                    path: p.as_str().to_owned(),
                    mode: e.mode,
                    mtime_ns: e.mtime_ns,
                    owner: e.owner.map(|o| (o.uid, o.gid)),
                    kind: match &e.kind {
                        EntryKind::File { size, hash, chunks } => WireKind::File {
                            size: *size,
                            hash: *hash,
                            chunks: chunks.iter().map(|c| (c.len, c.hash)).collect(),
                        },
                        EntryKind::Dir => WireKind::Dir,
                        EntryKind::Symlink { target } => WireKind::Symlink {
                            target: target.clone(),
                        },
                    },
                })
                .collect(),
        };
        // Serialising plain data to a Vec cannot fail.
        postcard::to_allocvec(&wire).unwrap_or_default()
    }

    /// Decode and check a compact encoding. Never panics.
    pub fn decode(bytes: &[u8]) -> Result<Manifest, ManifestError> {
        let malformed = |e: postcard::Error| ManifestError::Malformed(e.to_string());
        // postcard writes the version byte first, as itself.
        let wire: WireManifest = match bytes.first() {
            Some(1 | 2) => {
                let old: WireManifestV2 = postcard::from_bytes(bytes).map_err(malformed)?;
                WireManifest {
                    version: old.version,
                    entries: old
                        .entries
                        .into_iter()
                        .map(|w| WireEntry {
                            path: w.path,
                            // Read as not mirrored: setuid and setgid dropped.
                            mode: mirrored_mode(w.mode, None),
                            mtime_ns: w.mtime_ns,
                            owner: None,
                            kind: w.kind,
                        })
                        .collect(),
                }
            }
            _ => postcard::from_bytes(bytes).map_err(malformed)?,
        };
        // Version 1 held blake3 of each file's bytes as its hash; its
        // chunk lists are complete, so the hash is recomputed from them (a
        // manifest kept by an earlier build still describes its tree).
        let v1 = wire.version == 1;
        if !(1..=ENCODING_VERSION).contains(&wire.version) {
            return Err(ManifestError::Version(wire.version));
        }
        let mut m = Manifest::new();
        let mut last: Option<SafePath> = None;
        for w in wire.entries {
            let path =
                SafePath::parse(&w.path).map_err(|e| ManifestError::Path(w.path.clone(), e))?;
            if last.as_ref().is_some_and(|l| *l >= path) {
                return Err(ManifestError::Order(path));
            }
            let owner = w.owner.map(|(uid, gid)| Owner { uid, gid });
            if mirrored_mode(w.mode, owner) != w.mode {
                return Err(ManifestError::Mode(path));
            }
            if let Some(parent) = path.parent() {
                if !m.get(&parent).is_some_and(Entry::is_dir) {
                    return Err(ManifestError::Orphan(path));
                }
            }
            let kind = match w.kind {
                WireKind::File { size, hash, chunks } => {
                    let mut offset = 0u64;
                    let mut refs = Vec::with_capacity(chunks.len());
                    for (len, hash) in chunks {
                        if len == 0 || len as usize > CHUNK_BYTES_MAX {
                            return Err(ManifestError::Chunks(path));
                        }
                        refs.push(ChunkRef { offset, len, hash });
                        offset += u64::from(len);
                    }
                    if offset != size {
                        return Err(ManifestError::Chunks(path));
                    }
                    let content = file_hash(&refs);
                    if content != hash && !v1 {
                        return Err(ManifestError::Hash(path));
                    }
                    EntryKind::File {
                        size,
                        hash: content,
                        chunks: refs,
                    }
                }
                WireKind::Dir => EntryKind::Dir,
                WireKind::Symlink { target } => {
                    if target.is_empty() || target.len() > PATH_BYTES_MAX || target.contains('\0') {
                        return Err(ManifestError::Target(path));
                    }
                    EntryKind::Symlink { target }
                }
            };
            m.insert(
                path.clone(),
                Entry {
                    kind,
                    mode: w.mode,
                    mtime_ns: w.mtime_ns,
                    owner,
                },
            );
            last = Some(path);
        }
        Ok(m)
    }
}

/// Why an encoded manifest was refused.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("malformed manifest: {0}")]
    Malformed(String),
    #[error("manifest encoding version {0} is not supported")]
    Version(u8),
    #[error("bad path {0:?}: {1}")]
    Path(String, PathError),
    #[error("{0} is out of order or repeated")]
    Order(SafePath),
    #[error("{0} has mode bits that are not mirrored (setuid or setgid without an owner, or outside 0o7777)")]
    Mode(SafePath),
    #[error("{0} has no parent directory in the manifest")]
    Orphan(SafePath),
    #[error("{0}: chunks do not cover the file")]
    Chunks(SafePath),
    #[error("{0}: bad symlink target")]
    Target(SafePath),
    #[error("{0}: the content hash is not that of its chunk list")]
    Hash(SafePath),
}

#[derive(Serialize, Deserialize)]
struct WireManifest {
    version: u8,
    entries: Vec<WireEntry>,
}

#[derive(Serialize, Deserialize)]
struct WireEntry {
    path: String,
    mode: u32,
    mtime_ns: i64,
    owner: Option<(u32, u32)>,
    kind: WireKind,
}

/// An entry of encoding versions 1 and 2: no owner.
#[derive(Serialize, Deserialize)]
struct WireEntryV2 {
    path: String,
    mode: u32,
    mtime_ns: i64,
    kind: WireKind,
}

#[derive(Serialize, Deserialize)]
struct WireManifestV2 {
    version: u8,
    entries: Vec<WireEntryV2>,
}

#[derive(Clone, Serialize, Deserialize)]
enum WireKind {
    File {
        size: u64,
        hash: [u8; 32],
        chunks: Vec<(u32, [u8; 32])>,
    },
    Dir,
    Symlink {
        target: String,
    },
}

/// One step from an old tree towards a new one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Change {
    /// A new entry (file, directory or symlink) where the old tree had none.
    Create { path: SafePath, entry: Entry },
    /// New content at the same path and of the same type: a file's bytes or
    /// a symlink's target. `old` is what the receiver should have now.
    Modify {
        path: SafePath,
        old: Entry,
        new: Entry,
    },
    /// Remove an entry (a directory once it is empty).
    Delete { path: SafePath, old: Entry },
    /// Move a file whose content is unchanged; `new` may differ from `old`
    /// in mode and mtime only.
    Rename {
        from: SafePath,
        to: SafePath,
        old: Entry,
        new: Entry,
    },
    /// Only the mode and/or the mtime changed (chmod, touch).
    Meta {
        path: SafePath,
        old: Entry,
        new: Entry,
    },
}

impl Change {
    /// The path the change leaves in place (the target of a rename).
    pub fn path(&self) -> &SafePath {
        match self {
            Change::Create { path, .. }
            | Change::Modify { path, .. }
            | Change::Delete { path, .. }
            | Change::Meta { path, .. } => path,
            Change::Rename { to, .. } => to,
        }
    }

    /// The entry the change leaves at its path (none for a delete).
    pub fn new_entry(&self) -> Option<&Entry> {
        match self {
            Change::Create { entry, .. } => Some(entry),
            Change::Modify { new, .. } | Change::Meta { new, .. } | Change::Rename { new, .. } => {
                Some(new)
            }
            Change::Delete { .. } => None,
        }
    }

    /// The chunks of the new content that the old version of the same
    /// path does not hold: what a Modify must fetch unless the receiver has
    /// them elsewhere. For a Create, every chunk; for the rest, none.
    pub fn changed_chunks(&self) -> Vec<ChunkRef> {
        match self {
            Change::Create { entry, .. } => entry.chunks().to_vec(),
            Change::Modify { old, new, .. } => {
                let have: BTreeSet<ChunkHash> = old.chunks().iter().map(|c| c.hash).collect();
                new.chunks()
                    .iter()
                    .filter(|c| !have.contains(&c.hash))
                    .copied()
                    .collect()
            }
            _ => Vec::new(),
        }
    }
}

/// The changes that turn a tree matching `old` into one matching `new`.
///
/// The order makes every step possible on a tree that matched the previous
/// steps:
/// 1. new directories, parents first, except below a path whose type
///    changes (its old entry is still there);
/// 2. renames, before any delete, so a file moved out of a directory that is
///    going away is moved, not deleted and re-sent;
/// 3. deletes, children before parents (reverse path order), including the
///    old entry of every path whose type changes;
/// 4. everything else, smallest first (by the bytes of new content), so a
///    small file is not held behind a large one: the remaining creations,
///    content modifications, and mode/mtime changes of files and symlinks
///    (directories, links and metadata count as empty; equal keys keep
///    path order, so a directory created here comes before what it holds);
/// 5. mode/mtime changes of directories last, since creating and removing
///    entries in a directory changes its mtime.
pub fn diff(old: &Manifest, new: &Manifest) -> Vec<Change> {
    let type_changed: BTreeSet<&SafePath> = new
        .iter()
        .filter(|(p, e)| old.get(p).is_some_and(|o| !o.same_type(e)))
        .map(|(p, _)| p)
        .collect();
    let blocked = |p: &SafePath| {
        type_changed.contains(p) || p.ancestors().iter().any(|a| type_changed.contains(a))
    };
    let mut out = Vec::new();
    let mut created_dirs: BTreeSet<&SafePath> = BTreeSet::new();

    // 1. New directories.
    for (p, e) in new.iter() {
        if e.is_dir() && old.get(p).is_none() && !blocked(p) {
            out.push(Change::Create {
                path: p.clone(),
                entry: e.clone(),
            });
            created_dirs.insert(p);
        }
    }

    // 2. Renames: a vanished non-empty file matched to a new one by content.
    let mut sources: HashMap<(u64, [u8; 32]), Vec<&SafePath>> = HashMap::new();
    for (p, e) in old.iter().rev() {
        if let EntryKind::File { size, hash, .. } = &e.kind {
            if *size > 0 && new.get(p).is_none() {
                sources.entry((*size, *hash)).or_default().push(p);
            }
        }
    }
    let mut renamed_from: BTreeSet<&SafePath> = BTreeSet::new();
    let mut renamed_to: BTreeSet<&SafePath> = BTreeSet::new();
    for (p, e) in new.iter() {
        if let EntryKind::File { size, hash, .. } = &e.kind {
            if old.get(p).is_some() || blocked(p) {
                continue;
            }
            if let Some(from) = sources.get_mut(&(*size, *hash)).and_then(Vec::pop) {
                let old_entry = old.get(from).cloned().unwrap_or_else(|| e.clone());
                out.push(Change::Rename {
                    from: from.clone(),
                    to: p.clone(),
                    old: old_entry,
                    new: e.clone(),
                });
                renamed_from.insert(from);
                renamed_to.insert(p);
            }
        }
    }

    // 3. Deletes, children first.
    for (p, e) in old.iter().rev() {
        let gone = new.get(p).is_none() && !renamed_from.contains(p);
        if gone || type_changed.contains(p) {
            out.push(Change::Delete {
                path: p.clone(),
                old: e.clone(),
            });
        }
    }

    // 4. Creations, modifications, file and symlink metadata.
    let mut rest = Vec::new();
    for (p, e) in new.iter() {
        if created_dirs.contains(p) || renamed_to.contains(p) {
            continue;
        }
        match old.get(p) {
            Some(o) if o.same_type(e) => {
                if !o.same_content(e) {
                    rest.push(Change::Modify {
                        path: p.clone(),
                        old: o.clone(),
                        new: e.clone(),
                    });
                } else if !e.is_dir() && !o.same_meta(e) {
                    rest.push(Change::Meta {
                        path: p.clone(),
                        old: o.clone(),
                        new: e.clone(),
                    });
                }
            }
            _ => rest.push(Change::Create {
                path: p.clone(),
                entry: e.clone(),
            }),
        }
    }
    // By the bytes of new content, a stable sort: ties keep path order.
    rest.sort_by_cached_key(|c| {
        c.changed_chunks()
            .iter()
            .map(|c| u64::from(c.len))
            .sum::<u64>()
    });
    out.extend(rest);

    // 5. Directory metadata, deepest first.
    for (p, e) in new.iter().rev() {
        if let Some(o) = old.get(p) {
            if o.is_dir() && e.is_dir() && !o.same_meta(e) {
                out.push(Change::Meta {
                    path: p.clone(),
                    old: o.clone(),
                    new: e.clone(),
                });
            }
        }
    }
    out
}

/// Which paths of a root belong to a file set: include and exclude globs
/// over the relative path (`/`-separated; `*` does not cross `/`, `**` does).
///
/// An exclude glob that matches a directory excludes everything below it.
/// Include globs select files and symlinks; directories are kept unless
/// excluded, so the tree that holds the included files (and empty
/// directories) is mirrored. No include glob means everything.
#[derive(Clone, Debug)]
pub struct FileSetFilter {
    include: Option<globset::GlobSet>,
    exclude: globset::GlobSet,
}

impl FileSetFilter {
    pub fn new<S: AsRef<str>>(include: &[S], exclude: &[S]) -> Result<Self, globset::Error> {
        fn build<S: AsRef<str>>(globs: &[S]) -> Result<globset::GlobSet, globset::Error> {
            let mut b = globset::GlobSetBuilder::new();
            for g in globs {
                b.add(
                    globset::GlobBuilder::new(g.as_ref())
                        .literal_separator(true)
                        .build()?,
                );
            }
            b.build()
        }
        let include = if include.is_empty() {
            None
        } else {
            Some(build(include)?)
        };
        Ok(Self {
            include,
            exclude: build(exclude)?,
        })
    }

    /// Everything.
    pub fn all() -> Self {
        Self {
            include: None,
            exclude: globset::GlobSet::empty(),
        }
    }

    /// Whether the directory at `path` is walked and mirrored.
    pub fn includes_dir(&self, path: &SafePath) -> bool {
        !self.exclude.is_match(path.as_str())
    }

    /// Whether the file or symlink at `path` is mirrored. The caller has
    /// already checked its ancestors with [`FileSetFilter::includes_dir`].
    pub fn includes_file(&self, path: &SafePath) -> bool {
        !self.exclude.is_match(path.as_str())
            && self
                .include
                .as_ref()
                .is_none_or(|inc| inc.is_match(path.as_str()))
    }
}

/// What of `diff(old, new)` may be sent while `new` comes from a scan that
/// is not over: files it has not read yet (`unread`) keep their old
/// entries, new ones are absent. Deletes wait, since a file not read yet
/// may be the other end of a rename; so does every change at or below a
/// path being deleted (a type change: the new entry after the old one's
/// delete), and every change to an unread file (its old entry may be one
/// the standby never had). The rest keeps the diff's order, which stays
/// applicable: nothing kept depends on what was held.
pub fn while_scanning(changes: Vec<Change>, unread: &HashSet<SafePath>) -> Vec<Change> {
    let deleted: HashSet<SafePath> = changes
        .iter()
        .filter_map(|c| match c {
            Change::Delete { path, .. } => Some(path.clone()),
            _ => None,
        })
        .collect();
    changes
        .into_iter()
        .filter(|c| {
            let p = c.path();
            !matches!(c, Change::Delete { .. })
                && !unread.contains(p)
                && !deleted.contains(p)
                && !p.ancestors().iter().any(|a| deleted.contains(a))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunk::chunk_bytes;

    fn p(s: &str) -> SafePath {
        SafePath::parse(s).unwrap()
    }

    fn file(bytes: &[u8], mode: u32, mtime_ns: i64) -> Entry {
        Entry {
            kind: EntryKind::file(chunk_bytes(bytes)),
            mode,
            mtime_ns,
            owner: None,
        }
    }

    fn dir(mtime_ns: i64) -> Entry {
        Entry {
            kind: EntryKind::Dir,
            mode: 0o755,
            mtime_ns,
            owner: None,
        }
    }

    fn link(t: &str) -> Entry {
        Entry {
            kind: EntryKind::Symlink { target: t.into() },
            mode: 0o777,
            mtime_ns: 5,
            owner: None,
        }
    }

    fn sample() -> Manifest {
        let mut m = Manifest::new();
        m.insert(p("a"), dir(1));
        m.insert(p("a/x"), file(b"hello", 0o644, 10));
        m.insert(p("a/y"), file(b"", 0o600, 11));
        m.insert(p("b"), dir(2));
        m.insert(p("b/l"), link("../a/x"));
        m.insert(p("c"), file(&vec![7u8; 300_000], 0o755, 12));
        m
    }

    #[test]
    fn root_is_order_independent_and_tracks_changes() {
        let a = sample();
        let mut b = Manifest::new();
        for (path, e) in a.iter().rev() {
            b.insert(path.clone(), e.clone());
        }
        assert_eq!(a.root(), b.root());
        b.insert(p("a/x"), file(b"hello", 0o644, 99));
        assert_ne!(a.root(), b.root());
        b.insert(p("a/x"), file(b"hello", 0o644, 10));
        assert_eq!(a.root(), b.root());
        b.remove(&p("a/y"));
        assert_ne!(a.root(), b.root());
        assert_eq!(a.differing_paths(&b), vec![p("a/y")]);
        assert_ne!(Manifest::new().root(), a.root());
    }

    #[test]
    fn encoding_round_trips_and_checks() {
        let m = sample();
        let bytes = m.encode();
        let back = Manifest::decode(&bytes).unwrap();
        assert_eq!(back, m);
        assert_eq!(back.root(), m.root());
        for cut in 0..bytes.len() {
            assert!(Manifest::decode(&bytes[..cut]).is_err());
        }
        // An orphan: "b/l" without "b".
        let mut bad = m.clone();
        bad.remove(&p("b"));
        assert!(matches!(
            Manifest::decode(&bad.encode()),
            Err(ManifestError::Orphan(_))
        ));
    }

    #[test]
    fn a_content_hash_must_be_that_of_the_chunk_list_except_in_version_1() {
        let m = sample();
        let with = |version: u8, hash: [u8; 32]| {
            let mut wire: WireManifest = postcard::from_bytes(&m.encode()).unwrap();
            wire.version = version;
            for e in &mut wire.entries {
                if let WireKind::File { hash: h, .. } = &mut e.kind {
                    *h = hash;
                }
            }
            if version >= 3 {
                return postcard::to_allocvec(&wire).unwrap();
            }
            postcard::to_allocvec(&WireManifestV2 {
                version,
                entries: wire
                    .entries
                    .into_iter()
                    .map(|w| WireEntryV2 {
                        path: w.path,
                        mode: w.mode,
                        mtime_ns: w.mtime_ns,
                        kind: w.kind,
                    })
                    .collect(),
            })
            .unwrap()
        };
        // Version 1 held another hash (blake3 of the bytes): recomputed.
        assert_eq!(Manifest::decode(&with(1, [7; 32])).unwrap(), m);
        assert!(matches!(
            Manifest::decode(&with(ENCODING_VERSION, [7; 32])),
            Err(ManifestError::Hash(_))
        ));
        assert!(matches!(
            Manifest::decode(&with(ENCODING_VERSION + 1, [7; 32])),
            Err(ManifestError::Version(v)) if v == ENCODING_VERSION + 1
        ));
    }

    /// Owners are mirrored only with tandem running as root: an entry
    /// without one keeps no setuid or setgid bit (a copy would be a setuid
    /// file of whoever runs tandem), and a manifest of an earlier encoding
    /// (no owners) is read that way. A peer's entry with them is refused.
    #[test]
    fn setuid_and_setgid_go_only_with_an_owner() {
        let root = Some(Owner { uid: 0, gid: 0 });
        assert_eq!(mirrored_mode(0o104755, root), 0o4755);
        assert_eq!(mirrored_mode(0o4755, None), 0o755);
        assert_eq!(mirrored_mode(0o3775, None), 0o1775);

        let mut m = Manifest::new();
        m.insert(p("tool"), file(b"x", 0o4755, 1));
        let mut wire: WireManifest = postcard::from_bytes(&m.encode()).unwrap();
        assert!(matches!(
            Manifest::decode(&postcard::to_allocvec(&wire).unwrap()),
            Err(ManifestError::Mode(_))
        ));
        wire.entries[0].owner = Some((7, 8));
        let owned = Manifest::decode(&postcard::to_allocvec(&wire).unwrap()).unwrap();
        let e = owned.get(&p("tool")).unwrap();
        assert_eq!((e.mode, e.owner), (0o4755, Some(Owner { uid: 7, gid: 8 })));
        assert_ne!(owned.root(), m.root(), "the owner is in the entry hash");

        let v2 = postcard::to_allocvec(&WireManifestV2 {
            version: 2,
            entries: vec![WireEntryV2 {
                path: "tool".into(),
                mode: 0o4755,
                mtime_ns: 1,
                kind: wire.entries[0].kind.clone(),
            }],
        })
        .unwrap();
        let old = Manifest::decode(&v2).unwrap();
        let e = old.get(&p("tool")).unwrap();
        assert_eq!((e.mode, e.owner), (0o755, None));
    }

    #[test]
    fn the_content_hash_is_pinned() {
        // A change here changes every file's hash: a new wire protocol
        // version and manifest encoding, as in 3 and 2.
        let chunks = chunk_bytes(b"tandem");
        expect_test::expect!["1eab8ca4ae2bb3cdcda8ec22bf4a75119b014862a0b3633a223854035b949a53"]
            .assert_eq(&hex::encode(file_hash(&chunks)));
        expect_test::expect!["ffbc07a9c4a1d0e453665db6437f2be9986434d4a0f5471dcdc4826bb548c55c"]
            .assert_eq(&hex::encode(file_hash(&[])));
    }

    /// Each change as "kind path".
    fn kinds(changes: &[Change]) -> Vec<String> {
        changes
            .iter()
            .map(|c| match c {
                Change::Create { path, .. } => format!("create {path}"),
                Change::Modify { path, .. } => format!("modify {path}"),
                Change::Delete { path, .. } => format!("delete {path}"),
                Change::Rename { from, to, .. } => format!("rename {from} {to}"),
                Change::Meta { path, .. } => format!("meta {path}"),
            })
            .collect()
    }

    fn check_diff(old: &Manifest, new: &Manifest) -> Vec<Change> {
        let changes = diff(old, new);
        let mut m = old.clone();
        for c in &changes {
            m.apply(c);
        }
        assert_eq!(m, *new, "{changes:#?}");
        changes
    }

    #[test]
    fn diff_detects_each_kind_of_change() {
        let old = sample();
        let mut new = old.clone();
        // Rename a/x -> b/x2 (same content), touch c, chmod a/y, retarget b/l,
        // new dir d with a file, type change: a/y becomes a directory? no: c -> dir.
        let x = new.remove(&p("a/x")).unwrap();
        new.insert(p("b/x2"), x);
        new.insert(p("a/y"), file(b"", 0o644, 11));
        new.insert(p("b/l"), link("/elsewhere"));
        new.insert(p("d"), dir(3));
        new.insert(p("d/f"), file(b"new", 0o644, 13));
        new.remove(&p("c"));
        new.insert(p("c"), dir(4));
        new.insert(p("c/inner"), file(&vec![7u8; 300_000], 0o755, 12));
        let changes = check_diff(&old, &new);
        let kinds = kinds(&changes);
        assert_eq!(
            kinds,
            [
                "create d",
                "rename a/x b/x2",
                // The old c moved into the new directory c is not a rename
                // (its target is below a type change), so c is re-created.
                "delete c",
                "meta a/y",
                "modify b/l",
                "create c",
                // Smallest first: 3 bytes before 300 kB.
                "create d/f",
                "create c/inner",
            ]
        );
    }

    #[test]
    fn modify_lists_only_new_chunks() {
        use rand::{Rng, SeedableRng};
        let mut big = vec![0u8; 2_000_000];
        rand::rngs::StdRng::seed_from_u64(9).fill(&mut big[..]);
        let old = file(&big, 0o644, 1);
        big.insert(10, 1);
        let new = file(&big, 0o644, 2);
        let c = Change::Modify {
            path: p("f"),
            old,
            new: new.clone(),
        };
        let changed = c.changed_chunks();
        assert!(
            !changed.is_empty() && changed.len() <= 3,
            "{}",
            changed.len()
        );
        assert!(changed.len() < new.chunks().len());
    }

    #[test]
    fn filter_globs() {
        let f = FileSetFilter::new(&["**/*.txt", "top"], &["cache", "**/*.tmp"]).unwrap();
        assert!(f.includes_file(&p("a/b.txt")));
        assert!(f.includes_file(&p("b.txt")));
        assert!(f.includes_file(&p("top")));
        assert!(!f.includes_file(&p("a/b.bin")));
        assert!(!f.includes_file(&p("x.tmp")));
        assert!(!f.includes_dir(&p("cache")));
        assert!(f.includes_dir(&p("a/cache")));
        assert!(FileSetFilter::all().includes_file(&p("anything/at/all")));
        let star = FileSetFilter::new(&["*.txt"], &[] as &[&str]).unwrap();
        assert!(!star.includes_file(&p("a/b.txt")), "`*` does not cross `/`");
    }

    /// A directory renamed, read only in part so far: the file read is
    /// moved; the one not read yet still looks deleted, and waits; so does
    /// a file replaced by a directory (its delete, then the directory and
    /// what it holds) and a file whose new content is not read yet, while
    /// an unrelated new file goes.
    #[test]
    fn a_partial_scan_sends_what_does_not_depend_on_what_is_unread() {
        let old = sample();
        let mut partial = old.clone();
        partial.remove(&p("a"));
        partial.remove(&p("a/x"));
        partial.remove(&p("a/y"));
        partial.insert(p("moved"), dir(1));
        partial.insert(p("moved/x"), old.get(&p("a/x")).unwrap().clone());
        partial.remove(&p("c"));
        partial.insert(p("c"), dir(4));
        partial.insert(p("c/inner"), file(b"in", 0o644, 5));
        partial.insert(p("new.txt"), file(b"report", 0o644, 6));
        // Read in an earlier pass, changed since, not read again yet.
        partial.insert(p("b/stale"), file(b"old", 0o644, 7));
        let unread = HashSet::from([p("b/stale")]);
        let all = diff(&old, &partial);
        assert!(all.iter().any(|c| matches!(c, Change::Delete { .. })));
        let kinds = kinds(&while_scanning(all, &unread));
        assert_eq!(
            kinds,
            ["create moved", "rename a/x moved/x", "create new.txt"]
        );
    }

    /// The entries at and below a path, and nothing beside it that sorts
    /// among them ("a-b" and "a0" come around "a/...").
    #[test]
    fn at_or_below_takes_the_subtree_only() {
        let mut m = Manifest::new();
        for path in ["a", "a-b", "a/x", "a/y", "a/y/z", "a0", "b"] {
            m.insert(p(path), dir(1));
        }
        let got: Vec<&str> = m
            .at_or_below(&p("a"))
            .iter()
            .map(|(k, _)| k.as_str())
            .collect();
        assert_eq!(got, ["a", "a/x", "a/y", "a/y/z"]);
        let got: Vec<&str> = m
            .at_or_below(&p("a/y"))
            .iter()
            .map(|(k, _)| k.as_str())
            .collect();
        assert_eq!(got, ["a/y", "a/y/z"]);
        assert!(m.at_or_below(&p("c")).is_empty());
    }
}
