//! Helpers for the file-set tests: a pair with one `[[fileset]]` under a
//! per-node path prefix, random tree operations, and the two trees compared
//! by scanning both with the scanner the primary uses (the manifests) and by
//! a plain walk of their bytes, modes and link targets.

use super::{wait_for, Options, Pair};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;
use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tandem_primary::files::FileSetScanner;
use tandem_sync::manifest::{FileSetFilter, Manifest};

/// The set's root in the config; each node sees it under its prefix.
pub const ROOT: &str = "/srv/hydro/etc";

pub struct FilesPair {
    pub pair: Pair,
    pub roots: tempfile::TempDir,
}

impl FilesPair {
    /// A pair in manual failover mode with one file set, reconciled by a
    /// full scan every `reconcile_ms`.
    pub fn new(reconcile_ms: u64) -> FilesPair {
        let roots = tempfile::Builder::new()
            .prefix("tandem-files-")
            .tempdir()
            .unwrap();
        let prefix = |n: &str| format!("path_prefix = \"{}/{n}\"", roots.path().display());
        let pair = Pair::new(Options {
            failover: "manual",
            extra: format!(
                "\n[[fileset]]\nname = \"etc\"\nroot = \"{ROOT}\"\nexclude = [\"*.tmp\"]\nreconcile_ms = {reconcile_ms}\n"
            ),
            node_extra: [prefix("a"), prefix("b")],
            ..Options::default()
        });
        for n in ["a", "b"] {
            fs::create_dir_all(roots.path().join(n).join(ROOT.trim_start_matches('/'))).unwrap();
        }
        FilesPair { pair, roots }
    }

    /// Start both nodes (the first as primary) and wait until their trees
    /// are identical. The bound is generous: a first sync of 128 MiB by the
    /// debug build took over 30 s with three test binaries at once.
    pub fn start_in_sync(&mut self) -> Manifest {
        self.pair.start(0);
        self.pair.start(1);
        self.pair.wait_roles(0, Duration::from_secs(20));
        self.wait_identical(0, Duration::from_secs(120))
    }

    /// Node i's copy of the set.
    pub fn root(&self, i: usize) -> PathBuf {
        self.roots
            .path()
            .join(self.pair.names[i])
            .join(ROOT.trim_start_matches('/'))
    }

    /// The file set's status object on node i.
    pub fn fs_status(&self, i: usize) -> Option<Value> {
        let s = self.pair.status(i)?;
        s["filesets"].as_array()?.first().cloned()
    }

    /// Wait until both trees scan to the same manifest and both nodes
    /// report that root, the primary in sync. Returns the manifest.
    pub fn wait_identical(&self, primary: usize, within: Duration) -> Manifest {
        let m = wait_for(within, "identical file trees", || {
            // The nodes' word first (cheap), then the trees themselves
            // (every byte read and hashed).
            let (p, s) = (self.fs_status(primary)?, self.fs_status(1 - primary)?);
            let agreed = p["mode"] == "in sync"
                && p["peer_root_hash"] == p["root_hash"]
                && s["root_hash"] == p["root_hash"];
            if !agreed {
                return None;
            }
            let (a, b) = (scan(&self.root(0)), scan(&self.root(1)));
            (a == b && p["root_hash"] == hex(&a).as_str()).then_some(a)
        });
        assert_eq!(walk(&self.root(0)), walk(&self.root(1)));
        m
    }
}

fn hex(m: &Manifest) -> String {
    m.root().iter().map(|b| format!("{b:02x}")).collect()
}

/// The manifest of a tree, as the primary's scanner sees it.
pub fn scan(root: &Path) -> Manifest {
    let filter = FileSetFilter::new(&[] as &[&str], &["*.tmp"]).unwrap();
    FileSetScanner::new(root, filter)
        .unwrap()
        .scan(None)
        .unwrap()
        .manifest
}

/// Every entry below `root` (tandem's temp files and `*.tmp` included, so a
/// leftover shows up): type, bytes, mode, link target, and a file's mtime.
pub fn walk(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_owned()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let rel = e.path().strip_prefix(root).unwrap().display().to_string();
            if rel.ends_with(".tmp") {
                continue;
            }
            let m = fs::symlink_metadata(e.path()).unwrap();
            let mode = m.permissions().mode() & 0o7777;
            let what = if m.is_dir() {
                stack.push(e.path());
                format!("dir {mode:o}")
            } else if m.file_type().is_symlink() {
                format!("link {:?}", fs::read_link(e.path()).unwrap())
            } else {
                let bytes = fs::read(e.path()).unwrap();
                format!(
                    "file {mode:o} {} {} {}",
                    bytes.len(),
                    blake3::hash(&bytes).to_hex(),
                    m.mtime_nsec() + m.mtime() * 1_000_000_000
                )
            };
            out.insert(rel, what);
        }
    }
    out
}

fn random_bytes(rng: &mut StdRng, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    rng.fill(&mut v[..]);
    v
}

/// `count` random operations on the tree at `root`: create, overwrite in
/// the middle, append, truncate, rename (files and directories), delete,
/// chmod, symlink, empty directories. Returns a line per operation.
pub fn random_ops(root: &Path, seed: u64, count: usize) -> Vec<String> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut log = Vec::new();
    for n in 0..count {
        let files = list(root, false);
        let dirs = list(root, true);
        let pick_dir = |rng: &mut StdRng| -> PathBuf {
            if dirs.is_empty() || rng.gen_bool(0.3) {
                root.to_owned()
            } else {
                dirs[rng.gen_range(0..dirs.len())].clone()
            }
        };
        let op = rng.gen_range(0..12);
        let line = match op {
            0..=2 => {
                let size = match rng.gen_range(0..10) {
                    0 => 0,
                    1 => rng.gen_range(200_000..700_000),
                    _ => rng.gen_range(1..20_000),
                };
                let p = pick_dir(&mut rng).join(format!("f{seed}_{n}"));
                fs::write(&p, random_bytes(&mut rng, size)).unwrap();
                format!("create {} ({size} B)", p.display())
            }
            3 if !files.is_empty() => {
                let p = &files[rng.gen_range(0..files.len())];
                let mut bytes = fs::read(p).unwrap();
                if !bytes.is_empty() {
                    let at = rng.gen_range(0..bytes.len());
                    let end = (at + rng.gen_range(1..5000)).min(bytes.len());
                    let fresh = random_bytes(&mut rng, end - at);
                    bytes[at..end].copy_from_slice(&fresh);
                }
                bytes.insert(0, b'!');
                fs::write(p, bytes).unwrap();
                format!("modify {}", p.display())
            }
            4 if !files.is_empty() => {
                use std::io::Write;
                let p = &files[rng.gen_range(0..files.len())];
                let len = rng.gen_range(1..100_000);
                let more = random_bytes(&mut rng, len);
                fs::OpenOptions::new()
                    .append(true)
                    .open(p)
                    .unwrap()
                    .write_all(&more)
                    .unwrap();
                format!("append {}", p.display())
            }
            5 if !files.is_empty() => {
                let p = &files[rng.gen_range(0..files.len())];
                let len = fs::metadata(p).unwrap().len();
                let to = rng.gen_range(0..=len);
                fs::OpenOptions::new()
                    .write(true)
                    .open(p)
                    .unwrap()
                    .set_len(to)
                    .unwrap();
                format!("truncate {} to {to}", p.display())
            }
            6 if !files.is_empty() => {
                let p = &files[rng.gen_range(0..files.len())];
                let to = pick_dir(&mut rng).join(format!("r{seed}_{n}"));
                fs::rename(p, &to).unwrap();
                format!("rename {} {}", p.display(), to.display())
            }
            7 if !files.is_empty() => {
                let p = &files[rng.gen_range(0..files.len())];
                fs::remove_file(p).unwrap();
                format!("delete {}", p.display())
            }
            8 if !files.is_empty() => {
                let p = &files[rng.gen_range(0..files.len())];
                let mode = [0o600, 0o640, 0o644, 0o755, 0o700][rng.gen_range(0..5)];
                fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
                format!("chmod {mode:o} {}", p.display())
            }
            9 => {
                let p = pick_dir(&mut rng).join(format!("l{seed}_{n}"));
                let target = ["../elsewhere", "f1", "/etc/passwd", "a/b/c"][rng.gen_range(0..4)];
                std::os::unix::fs::symlink(target, &p).unwrap();
                format!("symlink {} -> {target}", p.display())
            }
            10 => {
                let p = pick_dir(&mut rng).join(format!("d{seed}_{n}"));
                fs::create_dir(&p).unwrap();
                format!("mkdir {}", p.display())
            }
            11 if !dirs.is_empty() => {
                let d = &dirs[rng.gen_range(0..dirs.len())];
                if fs::read_dir(d).unwrap().next().is_none() {
                    fs::remove_dir(d).unwrap();
                    format!("rmdir {}", d.display())
                } else {
                    let to = root.join(format!("moved{seed}_{n}"));
                    fs::rename(d, &to).unwrap();
                    format!("rename dir {} {}", d.display(), to.display())
                }
            }
            _ => {
                let p = root.join(format!("scratch{seed}_{n}.tmp"));
                fs::write(&p, b"excluded").unwrap();
                format!("excluded {}", p.display())
            }
        };
        log.push(line);
    }
    log
}

/// Regular files (`dirs` false) or directories (true) below `root`, not
/// following symlinks.
fn list(root: &Path, dirs: bool) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_owned()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let m = fs::symlink_metadata(e.path()).unwrap();
            if m.is_dir() {
                stack.push(e.path());
                if dirs {
                    out.push(e.path());
                }
            } else if m.is_file() && !dirs && e.path().extension().is_none_or(|x| x != "tmp") {
                out.push(e.path());
            }
        }
    }
    out.sort();
    out
}
