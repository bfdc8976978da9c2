//! Security: changes from a hostile or confused peer stay inside the file
//! set's root. `..` and absolute paths cannot even be decoded; a symlink in
//! the standby's tree is never followed, as a parent or as the last
//! component; a chunk that does not match its hash is refused. A sentinel
//! directory outside the root is checked to be untouched after every attempt.

use serde::Serialize;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use tandem_standby::files::{ApplyError, FileSetReplica};
use tandem_sync::chunk::{chunk_bytes, ChunkRef};
use tandem_sync::fileset::SafePath;
use tandem_sync::manifest::{Change, Entry, EntryKind, Manifest};

fn p(s: &str) -> SafePath {
    SafePath::parse(s).unwrap()
}

fn file_entry(bytes: &[u8]) -> Entry {
    Entry {
        kind: EntryKind::file(chunk_bytes(bytes)),
        mode: 0o644,
        mtime_ns: 1_000_000_000,
        owner: None,
    }
}

fn dir_entry() -> Entry {
    Entry {
        kind: EntryKind::Dir,
        mode: 0o755,
        mtime_ns: 1_000_000_000,
        owner: None,
    }
}

/// A snapshot of everything below `dir`: paths, types, contents, modes and
/// symlink targets.
fn snapshot(dir: &Path) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let m = fs::symlink_metadata(e.path()).unwrap();
            let what = if m.is_dir() {
                stack.push(e.path());
                "dir".to_owned()
            } else if m.file_type().is_symlink() {
                format!("link {:?}", fs::read_link(e.path()).unwrap())
            } else {
                format!("file {:?}", fs::read(e.path()).unwrap())
            };
            use std::os::unix::fs::MetadataExt;
            out.push((e.path(), format!("{what} {:o} {}", m.mode(), m.mtime())));
        }
    }
    out.sort();
    out
}

struct Setup {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    outside: PathBuf,
    replica: FileSetReplica,
}

fn setup() -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    let outside = tmp.path().join("outside");
    let data = tmp.path().join("data");
    for d in [&root, &outside, &data] {
        fs::create_dir(d).unwrap();
    }
    fs::write(outside.join("sentinel"), b"do not touch").unwrap();
    fs::create_dir(outside.join("sub")).unwrap();
    // A local symlink on the standby pointing outside the root, as a
    // directory and as a file.
    std::os::unix::fs::symlink(&outside, root.join("evil")).unwrap();
    std::os::unix::fs::symlink(outside.join("sentinel"), root.join("evil_file")).unwrap();
    // The replica's manifest claims they are a directory and a file, so that
    // the peer's changes look legitimate to it.
    let mut m = Manifest::new();
    m.insert(p("evil"), dir_entry());
    m.insert(p("evil/sentinel"), file_entry(b"do not touch"));
    m.insert(p("evil_file"), file_entry(b"do not touch"));
    let replica = FileSetReplica::open(&root, &data, 3, m).unwrap();
    Setup {
        _tmp: tmp,
        root,
        outside,
        replica,
    }
}

fn no_fetch() -> impl FnMut(&SafePath, &ChunkRef) -> io::Result<Vec<u8>> {
    |_, _| Err(io::Error::other("no chunks in this test"))
}

#[derive(Serialize)]
enum HostileChange {
    Create { path: String, entry: Entry },
}

#[test]
fn dot_dot_and_absolute_paths_cannot_be_decoded() {
    for bad in ["../x", "/etc/passwd", "a/../../x", "a//b", "./a", ""] {
        let bytes = postcard::to_allocvec(&HostileChange::Create {
            path: bad.into(),
            entry: file_entry(b"x"),
        })
        .unwrap();
        assert!(
            postcard::from_bytes::<Change>(&bytes).is_err(),
            "{bad:?} was accepted"
        );
    }
    let ok = postcard::to_allocvec(&HostileChange::Create {
        path: "a/b".into(),
        entry: file_entry(b"x"),
    })
    .unwrap();
    assert!(
        postcard::from_bytes::<Change>(&ok).is_ok(),
        "the hostile encoding matches the real one"
    );
}

#[test]
fn a_symlinked_parent_is_refused_and_nothing_outside_changes() {
    let mut s = setup();
    let before = snapshot(&s.outside);
    let bytes = b"payload".to_vec();
    let entry = file_entry(&bytes);
    let attempts = vec![
        Change::Create {
            path: p("evil/new"),
            entry: entry.clone(),
        },
        Change::Create {
            path: p("evil/newdir"),
            entry: dir_entry(),
        },
        Change::Create {
            path: p("evil/sub/deeper"),
            entry: entry.clone(),
        },
        Change::Modify {
            path: p("evil/sentinel"),
            old: file_entry(b"do not touch"),
            new: entry.clone(),
        },
        Change::Delete {
            path: p("evil/sentinel"),
            old: file_entry(b"do not touch"),
        },
        Change::Delete {
            path: p("evil/sub"),
            old: dir_entry(),
        },
        Change::Meta {
            path: p("evil/sentinel"),
            old: file_entry(b"do not touch"),
            new: Entry {
                mode: 0o777,
                ..file_entry(b"do not touch")
            },
        },
        Change::Rename {
            from: p("evil/sentinel"),
            to: p("stolen"),
            old: file_entry(b"do not touch"),
            new: file_entry(b"do not touch"),
        },
    ];
    for c in &attempts {
        let mut fetch = |_: &SafePath, _: &ChunkRef| Ok(bytes.clone());
        let err = s.replica.apply(c, &mut fetch).unwrap_err();
        assert!(matches!(err, ApplyError::Confinement(..)), "{c:?}: {err}");
        assert_eq!(snapshot(&s.outside), before, "{c:?} touched the outside");
    }
    assert!(!s.root.join("stolen").exists());
}

#[test]
fn a_symlink_as_the_last_component_is_replaced_never_followed() {
    let mut s = setup();
    let before = snapshot(&s.outside);
    let bytes = b"new content".to_vec();
    // The manifest says evil_file is a file; it is a symlink to the
    // sentinel. Writing must replace the link (after quarantining it), not
    // write through it.
    let c = Change::Modify {
        path: p("evil_file"),
        old: file_entry(b"do not touch"),
        new: file_entry(&bytes),
    };
    let mut fetch = |_: &SafePath, _: &ChunkRef| Ok(bytes.clone());
    s.replica.apply(&c, &mut fetch).unwrap();
    assert_eq!(snapshot(&s.outside), before);
    let m = fs::symlink_metadata(s.root.join("evil_file")).unwrap();
    assert!(m.is_file());
    assert_eq!(fs::read(s.root.join("evil_file")).unwrap(), bytes);
    let q = s.replica.take_quarantined();
    assert_eq!(q.len(), 1);
    assert!(fs::symlink_metadata(&q[0].moved_to)
        .unwrap()
        .file_type()
        .is_symlink());

    // Deleting "evil" (the manifest's directory, really a symlink) moves the
    // link away; the directory it pointed to is untouched.
    let c = Change::Delete {
        path: p("evil"),
        old: dir_entry(),
    };
    s.replica.apply(&c, &mut no_fetch()).unwrap();
    assert!(fs::symlink_metadata(s.root.join("evil")).is_err());
    assert_eq!(snapshot(&s.outside), before);
    // A Meta on a symlink pointing outside never changes the target's mode.
    std::os::unix::fs::symlink(s.outside.join("sentinel"), s.root.join("l")).unwrap();
    let link = Entry {
        kind: EntryKind::Symlink {
            target: s.outside.join("sentinel").to_str().unwrap().into(),
        },
        mode: 0o777,
        mtime_ns: 5,
        owner: None,
    };
    let c = Change::Meta {
        path: p("l"),
        old: link.clone(),
        new: Entry {
            mtime_ns: 7,
            ..link
        },
    };
    s.replica.apply(&c, &mut no_fetch()).unwrap();
    assert_eq!(snapshot(&s.outside), before);
}

#[test]
fn a_chunk_that_does_not_match_its_hash_is_refused() {
    let mut s = setup();
    let c = Change::Create {
        path: p("f"),
        entry: file_entry(b"the real bytes"),
    };
    let mut lying = |_: &SafePath, _: &ChunkRef| Ok(b"other bytes!!!".to_vec());
    let err = s.replica.apply(&c, &mut lying).unwrap_err();
    assert!(matches!(err, ApplyError::BadChunk(..)), "{err}");
    assert!(!s.root.join("f").exists());

    // Chunks that each verify but do not make the file's hash.
    let mut entry = file_entry(b"the real bytes");
    if let EntryKind::File { hash, .. } = &mut entry.kind {
        hash[0] ^= 1;
    }
    let c = Change::Create {
        path: p("g"),
        entry,
    };
    let mut honest = |_: &SafePath, _: &ChunkRef| Ok(b"the real bytes".to_vec());
    let err = s.replica.apply(&c, &mut honest).unwrap_err();
    assert!(matches!(err, ApplyError::FileHash(..)), "{err}");
    assert!(!s.root.join("g").exists());
}

#[test]
fn a_batch_keeps_its_good_files_and_refuses_one_whose_whole_hash_is_wrong() {
    let mut s = setup();
    let contents: [&[u8]; 3] = [b"first file", b"second file", b"third file"];
    let mut entries: Vec<Entry> = contents.iter().map(|c| file_entry(c)).collect();
    // The middle one's chunks each verify but do not make its hash.
    if let EntryKind::File { hash, .. } = &mut entries[1].kind {
        hash[0] ^= 1;
    }
    // Refused as it is assembled, or when the batch is committed: once.
    let mut errors = Vec::new();
    for (i, entry) in entries.into_iter().enumerate() {
        let c = Change::Create {
            path: p(&format!("f{i}")),
            entry,
        };
        let bytes = contents[i].to_vec();
        let mut fetch = move |_: &SafePath, _: &ChunkRef| Ok(bytes.clone());
        errors.extend(s.replica.apply_batched(&c, &mut fetch).err());
    }
    errors.extend(s.replica.commit());
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        matches!(&errors[0], ApplyError::FileHash(path) if *path == p("f1")),
        "{errors:?}"
    );
    assert_eq!(fs::read(s.root.join("f0")).unwrap(), contents[0]);
    assert_eq!(fs::read(s.root.join("f2")).unwrap(), contents[2]);
    assert!(!s.root.join("f1").exists());
    let left: Vec<String> = fs::read_dir(&s.root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(tandem_standby::files::PARTIAL_PREFIX))
        .collect();
    assert!(left.is_empty(), "temp files left behind: {left:?}");
    assert!(s.replica.manifest().get(&p("f1")).is_none());
    assert!(s.replica.manifest().get(&p("f0")).is_some());
}

/// `len` bytes that do not repeat, different for each `seed`.
fn noise(seed: &[u8], len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    blake3::Hasher::new()
        .update(seed)
        .finalize_xof()
        .fill(&mut out);
    out
}

#[test]
fn a_temp_file_made_again_is_not_taken_to_hold_what_was_staged_in_the_one_before() {
    let mut s = setup();
    let data = noise(b"staged", 600_000);
    let entry = file_entry(&data);
    let chunks = entry.chunks().to_vec();
    assert!(chunks.len() >= 2, "{} chunks", chunks.len());
    let bytes_of = |c: &ChunkRef| data[c.offset as usize..c.end() as usize].to_vec();
    // The first chunk staged, then its temp file removed (as a restart's
    // cleanup or a deleted directory would), then the second chunk staged
    // into a new temp file, which is now long enough to cover the first.
    let last = chunks.last().unwrap();
    s.replica
        .stage_chunk(&p("f"), &entry, &chunks[0].hash, &bytes_of(&chunks[0]))
        .unwrap();
    let partials: Vec<PathBuf> = fs::read_dir(&s.root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(".tandem-partial")
        })
        .collect();
    assert_eq!(partials.len(), 1, "{partials:?}");
    fs::remove_file(&partials[0]).unwrap();
    s.replica
        .stage_chunk(&p("f"), &entry, &last.hash, &bytes_of(last))
        .unwrap();
    // The first chunk is no longer there: it must be fetched again, not
    // committed as the zeros the new temp file holds in its place.
    let mut fetched = Vec::new();
    let mut source = |_: &SafePath, c: &ChunkRef| {
        fetched.push(c.offset);
        Ok(data[c.offset as usize..c.end() as usize].to_vec())
    };
    let c = Change::Create {
        path: p("f"),
        entry,
    };
    s.replica.apply(&c, &mut source).unwrap();
    assert!(fetched.contains(&0), "fetched {fetched:?}");
    assert!(fs::read(s.root.join("f")).unwrap() == data);
}

#[test]
fn chunks_staged_together_are_each_written_at_every_place_of_theirs() {
    let mut s = setup();
    // The same 300 KB twice and a tail: the repeated part's chunks appear
    // at two places each.
    let half = noise(b"twice", 300_000);
    let data = [&half[..], &half[..], b"tail"].concat();
    let entry = file_entry(&data);
    let chunks = entry.chunks().to_vec();
    let distinct: std::collections::BTreeMap<_, _> = chunks.iter().map(|c| (c.hash, c)).collect();
    assert!(distinct.len() < chunks.len(), "a chunk repeats");
    let bytes_of = |c: &ChunkRef| data[c.offset as usize..c.end() as usize].to_vec();
    let staged: Vec<([u8; 32], Vec<u8>)> =
        distinct.values().map(|c| (c.hash, bytes_of(c))).collect();
    // One unrelated chunk among them is ignored.
    let stray = ([7u8; 32], vec![7u8; 10]);
    s.replica
        .stage_checked_chunks(
            &p("f"),
            &entry,
            staged.iter().chain([&stray]).map(|(h, b)| (h, &b[..])),
        )
        .unwrap();
    let mut fetched = Vec::new();
    let mut source = |_: &SafePath, c: &ChunkRef| {
        fetched.push(c.offset);
        Ok(bytes_of(c))
    };
    let c = Change::Create {
        path: p("f"),
        entry,
    };
    s.replica.apply(&c, &mut source).unwrap();
    assert!(fetched.is_empty(), "fetched {fetched:?}");
    assert!(fs::read(s.root.join("f")).unwrap() == data);
}

/// A local process on the standby swaps a directory of the set for a
/// symlink to the outside and back, as fast as it can, while the replica
/// creates, renames and deletes files in it. Whatever the timing, nothing
/// outside the root changes: each change is refused, or made in the real
/// directory (wherever its name is at that moment).
#[test]
fn a_parent_swapped_for_a_symlink_mid_apply_is_never_followed() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    let mut s = setup();
    fs::create_dir(s.root.join("d")).unwrap();
    let mut m = s.replica.manifest().clone();
    m.insert(p("d"), dir_entry());
    let data = s.root.parent().unwrap().join("data");
    s.replica = FileSetReplica::open(&s.root, &data, 3, m).unwrap();
    let before = snapshot(&s.outside);

    let stop = Arc::new(AtomicBool::new(false));
    let swaps = Arc::new(AtomicU64::new(0));
    let racer = {
        let (stop, swaps) = (stop.clone(), swaps.clone());
        let (d, away, outside) = (s.root.join("d"), s.root.join("d.away"), s.outside.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if fs::rename(&d, &away).is_ok() {
                    let _ = std::os::unix::fs::symlink(&outside, &d);
                    std::thread::yield_now();
                    let _ = fs::remove_file(&d);
                    let _ = fs::rename(&away, &d);
                    swaps.fetch_add(1, Ordering::Relaxed);
                }
                std::thread::yield_now();
            }
        })
    };

    // Changes made, and refused.
    let mut outcomes = [0u32; 2];
    let tally = |outcomes: &mut [u32; 2], r: Result<(), ApplyError>| {
        outcomes[usize::from(r.is_err())] += 1;
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut i = 0;
    // Until both outcomes were seen many times (the race is real), bounded.
    while (i < 300 || outcomes[0] < 20 || outcomes[1] < 20)
        && i < 20_000
        && Instant::now() < deadline
    {
        // Four new files wait in a batch, their directory held, while the
        // racer swaps it; then each is chmod-ed, renamed and deleted.
        let files: Vec<(SafePath, SafePath, Vec<u8>)> = (i..i + 4)
            .map(|k| {
                let (f, g) = (format!("d/f{k}"), format!("d/g{k}"));
                (p(&f), p(&g), format!("file {k}").into_bytes())
            })
            .collect();
        for (f, _, bytes) in &files {
            let c = Change::Create {
                path: f.clone(),
                entry: file_entry(bytes),
            };
            let mut fetch = |_: &SafePath, _: &ChunkRef| Ok(bytes.clone());
            tally(&mut outcomes, s.replica.apply_batched(&c, &mut fetch));
        }
        for e in s.replica.commit() {
            tally(&mut outcomes, Err(e));
        }
        for (f, g, bytes) in &files {
            let entry = file_entry(bytes);
            let changes = [
                Change::Meta {
                    path: f.clone(),
                    old: entry.clone(),
                    new: Entry {
                        mode: 0o600,
                        ..entry.clone()
                    },
                },
                Change::Rename {
                    from: f.clone(),
                    to: g.clone(),
                    old: entry.clone(),
                    new: entry.clone(),
                },
                Change::Delete {
                    path: g.clone(),
                    old: entry.clone(),
                },
            ];
            for c in &changes {
                let mut fetch = |_: &SafePath, _: &ChunkRef| Ok(bytes.clone());
                tally(&mut outcomes, s.replica.apply(c, &mut fetch));
            }
        }
        i += 4;
    }
    stop.store(true, Ordering::Relaxed);
    racer.join().unwrap();
    assert_eq!(
        snapshot(&s.outside),
        before,
        "a change went through the symlink"
    );
    let [made, refused] = outcomes;
    assert!(
        made >= 20 && refused >= 20,
        "the race did not happen: {made} changes made, {refused} refused, {} swaps",
        swaps.load(Ordering::Relaxed)
    );
}

/// The startup cleanup of temp files left by a stopped standby removes
/// them (files and symlinks) at every depth, and never below a symlink.
#[test]
fn temp_files_are_cleaned_up_at_every_depth_and_never_through_a_symlink() {
    use tandem_standby::files::{remove_partials, PARTIAL_PREFIX};
    let s = setup();
    fs::write(s.outside.join(format!("{PARTIAL_PREFIX}x")), b"not ours").unwrap();
    let before = snapshot(&s.outside);
    let deep = s.root.join("a/b/c");
    fs::create_dir_all(&deep).unwrap();
    for d in [s.root.clone(), s.root.join("a"), deep.clone()] {
        fs::write(d.join(format!("{PARTIAL_PREFIX}f")), b"partial").unwrap();
        fs::write(d.join("keep"), b"kept").unwrap();
    }
    std::os::unix::fs::symlink("keep", deep.join(format!("{PARTIAL_PREFIX}l"))).unwrap();
    remove_partials(&s.root);
    let left: Vec<String> = snapshot(&s.root)
        .into_iter()
        .map(|(p, _)| p.strip_prefix(&s.root).unwrap().display().to_string())
        .collect();
    assert_eq!(
        left,
        [
            "a",
            "a/b",
            "a/b/c",
            "a/b/c/keep",
            "a/keep",
            "evil",
            "evil_file",
            "keep"
        ],
    );
    assert_eq!(snapshot(&s.outside), before);
}
