//! The primary's side of a file set with real files: scanning, the watcher
//! as a source of hints (incremental rescans converge on a full scan),
//! overflow handling, files written while being read, and chunk reads that
//! notice a file changed since its scan.

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tandem_primary::files::{
    ChunkCache, DirtySet, FileSetScanner, FileSetWatcher, ReadChunkError, SkipReason,
};
use tandem_sync::chunk::{chunk_bytes, file_hash};
use tandem_sync::fileset::SafePath;
use tandem_sync::manifest::{EntryKind, FileSetFilter, Manifest};

fn p(s: &str) -> SafePath {
    SafePath::parse(s).unwrap()
}

/// Apply the watcher's hints until the manifest equals a full scan, or fail
/// at the deadline.
fn converge(scanner: &FileSetScanner, watcher: &FileSetWatcher, manifest: &mut Manifest) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        watcher.wait_dirty(Duration::from_millis(200));
        let dirty = watcher.take_dirty();
        scanner.rescan(manifest, &dirty).unwrap();
        let truth = scanner.scan(None).unwrap().manifest;
        if *manifest == truth {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no convergence: {:?}",
            manifest.differing_paths(&truth)
        );
    }
}

// Found by CI: notify installs the watch on a new directory only after it
// has delivered the directory's creation, so files created inside it in
// between send no event. The watcher looks at every directory that appeared
// again once its watch is in place (`FRESH_RECHECKS`), which this test
// relies on; the engine's periodic reconcile is the backstop.
#[test]
fn watcher_hints_keep_the_manifest_equal_to_a_full_scan() {
    let tmp = tempfile::tempdir().unwrap();
    let scanner = FileSetScanner::new(tmp.path(), FileSetFilter::all()).unwrap();
    let root = scanner.root().to_owned();
    // Watches first, then the startup scan.
    let watcher = FileSetWatcher::new(&root).unwrap();
    fs::create_dir(root.join("pre")).unwrap();
    let mut manifest = scanner.scan(None).unwrap().manifest;

    // A burst of changes, including a directory created with content before
    // its own watch can exist, a rename, a delete and a symlink.
    fs::create_dir_all(root.join("a/b/c")).unwrap();
    fs::write(root.join("a/b/c/deep"), b"deep").unwrap();
    fs::write(root.join("a/f"), vec![1u8; 100_000]).unwrap();
    std::os::unix::fs::symlink("a/f", root.join("link")).unwrap();
    converge(&scanner, &watcher, &mut manifest);
    assert!(manifest.get(&p("a/b/c/deep")).is_some());

    fs::rename(root.join("a"), root.join("pre/a2")).unwrap();
    fs::remove_file(root.join("link")).unwrap();
    let mut f = fs::OpenOptions::new()
        .append(true)
        .open(root.join("pre/a2/f"))
        .unwrap();
    f.write_all(b"appended").unwrap();
    drop(f);
    converge(&scanner, &watcher, &mut manifest);
    assert!(manifest.get(&p("a")).is_none());
    assert!(matches!(
        manifest.get(&p("pre/a2/f")).unwrap().kind,
        EntryKind::File { size: 100_008, .. }
    ));
    assert!(watcher.last_error().is_none());
}

#[test]
fn an_overflow_marks_everything_and_a_full_rescan_reconciles() {
    let tmp = tempfile::tempdir().unwrap();
    let scanner = FileSetScanner::new(tmp.path(), FileSetFilter::all()).unwrap();
    let root = scanner.root().to_owned();
    let watcher = FileSetWatcher::new(&root).unwrap();
    let mut manifest = scanner.scan(None).unwrap().manifest;
    for i in 0..50 {
        fs::write(root.join(format!("f{i}")), format!("{i}")).unwrap();
    }
    // The overflow path (inotify's IN_Q_OVERFLOW arrives as a Rescan flag,
    // which `classify` maps to the same state; see its unit test).
    watcher.mark_everything();
    assert_eq!(watcher.take_dirty(), DirtySet::Everything);
    scanner
        .rescan(&mut manifest, &DirtySet::Everything)
        .unwrap();
    assert_eq!(manifest, scanner.scan(None).unwrap().manifest);
    assert_eq!(manifest.len(), 50);
}

#[test]
fn a_file_appended_while_being_read_is_never_recorded_torn() {
    appended_while_read(false);
}

#[test]
fn a_file_appended_while_being_read_whole_is_never_recorded_or_kept_torn() {
    appended_while_read(true);
}

/// A file still changing after every read attempt is not taken for
/// deleted: the version the manifest had stays (the standby keeps it) until
/// a read finds the file still, and is reported as skipped meanwhile.
#[test]
fn a_file_that_keeps_changing_keeps_its_last_version_until_it_is_still() {
    let tmp = tempfile::tempdir().unwrap();
    let scanner = FileSetScanner::new(tmp.path(), FileSetFilter::all()).unwrap();
    let path = scanner.root().join("growing");
    fs::write(&path, vec![7u8; 4 * 1024 * 1024]).unwrap();
    let mut manifest = scanner.scan(None).unwrap().manifest;
    let first = manifest.get(&p("growing")).unwrap().clone();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (path, stop) = (path.clone(), Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut f = fs::OpenOptions::new().append(true).open(&path).unwrap();
            // A steady trickle (a log being written), bounded: 20 s and
            // 80 MiB at most.
            for n in 0..20_000u32 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                f.write_all(&[n as u8; 4096]).unwrap();
                std::thread::sleep(Duration::from_millis(1));
            }
        })
    };
    let dirty = DirtySet::Paths([p("growing")].into_iter().collect());
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut unstable = 0;
    while unstable < 3 && !writer.is_finished() && Instant::now() < deadline {
        let before = manifest.clone();
        let skipped = scanner.rescan(&mut manifest, &dirty).unwrap();
        if skipped.iter().any(|s| s.reason == SkipReason::Unstable) {
            unstable += 1;
            assert_eq!(
                manifest.get(&p("growing")),
                before.get(&p("growing")),
                "a file still changing was dropped or changed in the manifest"
            );
        }
    }
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    assert!(unstable > 0, "no read found the file changing");
    // Once still, it is read.
    scanner.rescan(&mut manifest, &dirty).unwrap();
    let now = manifest.get(&p("growing")).unwrap();
    assert_ne!(now, &first);
    assert_eq!(
        now.kind,
        EntryKind::file(chunk_bytes(&fs::read(&path).unwrap()))
    );
}

fn appended_while_read(cached: bool) {
    let tmp = tempfile::tempdir().unwrap();
    let mut scanner = FileSetScanner::new(tmp.path(), FileSetFilter::all()).unwrap();
    if cached {
        scanner = scanner.with_chunk_cache(Arc::new(Mutex::new(ChunkCache::new(64 << 20))));
    }
    let path = scanner.root().join("growing");
    fs::write(&path, vec![0u8; 2 * 1024 * 1024]).unwrap();
    // The writer appends a bounded amount (so scans stay short) and says
    // when it is done; the scanner scans until then.
    let done = Arc::new(AtomicBool::new(false));
    let writer = {
        let (path, done) = (path.clone(), Arc::clone(&done));
        std::thread::spawn(move || {
            let mut f = fs::OpenOptions::new().append(true).open(&path).unwrap();
            for n in 0..2048u32 {
                f.write_all(&[n as u8; 4096]).unwrap();
            }
            done.store(true, Ordering::Release);
        })
    };
    let mut seen = Vec::new();
    let mut unstable = 0;
    loop {
        let finished = done.load(Ordering::Acquire);
        let scan = scanner.scan(None).unwrap();
        if let Some(e) = scan.manifest.get(&p("growing")) {
            seen.push(e.clone());
        } else {
            assert_eq!(scan.skipped.len(), 1);
            assert_eq!(scan.skipped[0].reason, SkipReason::Unstable);
            unstable += 1;
        }
        if finished {
            break;
        }
    }
    writer.join().unwrap();
    assert!(
        !seen.is_empty(),
        "the scan after the writer finished records the file ({unstable} unstable)"
    );
    // Appends never rewrite a prefix, so every recorded entry must be the
    // content of a prefix of the final file: its chunking and hash.
    let bytes = fs::read(&path).unwrap();
    for e in &seen {
        let EntryKind::File { size, hash, chunks } = &e.kind else {
            panic!()
        };
        let prefix = chunk_bytes(&bytes[..*size as usize]);
        assert_eq!(*chunks, prefix);
        assert_eq!(*hash, file_hash(&prefix));
    }
    // What is sent for the last entry recorded is that prefix, from the
    // cache or the file.
    let last_seen = seen.last().unwrap();
    for c in last_seen.chunks() {
        let got = scanner.read_chunk(&p("growing"), c).unwrap();
        assert!(got == bytes[c.offset as usize..c.end() as usize]);
    }
    let last = scanner.scan(None).unwrap();
    let EntryKind::File { size, .. } = last.manifest.get(&p("growing")).unwrap().kind else {
        panic!()
    };
    assert_eq!(size, bytes.len() as u64);
}

#[test]
fn read_chunk_verifies_and_notices_a_changed_file() {
    let tmp = tempfile::tempdir().unwrap();
    let scanner = FileSetScanner::new(tmp.path(), FileSetFilter::all()).unwrap();
    let root = scanner.root().to_owned();
    fs::write(root.join("f"), vec![7u8; 300_000]).unwrap();
    let m = scanner.scan(None).unwrap().manifest;
    let chunks = m.get(&p("f")).unwrap().chunks().to_vec();
    for c in &chunks {
        assert!(c.verify(&scanner.read_chunk(&p("f"), c).unwrap()));
    }
    fs::write(root.join("f"), vec![8u8; 300_000]).unwrap();
    assert!(matches!(
        scanner.read_chunk(&p("f"), &chunks[0]),
        Err(ReadChunkError::Changed(_))
    ));
    fs::write(root.join("short"), b"x").unwrap();
    assert!(matches!(
        scanner.read_chunk(&p("short"), &chunks[0]),
        Err(ReadChunkError::Changed(_))
    ));
    // A symlink is never read through.
    std::os::unix::fs::symlink("f", root.join("l")).unwrap();
    assert!(scanner.read_chunk(&p("l"), &chunks[0]).is_err());
}

#[test]
fn with_a_chunk_cache_chunks_come_as_scanned_and_a_large_file_from_disk() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = Arc::new(Mutex::new(ChunkCache::new(1 << 20)));
    let scanner = FileSetScanner::new(tmp.path(), FileSetFilter::all())
        .unwrap()
        .with_chunk_cache(cache.clone());
    let root = scanner.root().to_owned();
    let small: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let large: Vec<u8> = (0..(5u32 << 20)).map(|i| (i % 241) as u8).collect();
    fs::write(root.join("small"), &small).unwrap();
    fs::write(root.join("large"), &large).unwrap();
    let m = scanner.scan(None).unwrap().manifest;
    // Read whole and kept: the small file only (the large one is streamed).
    let held = cache.lock().unwrap().bytes();
    assert!(held >= small.len() && held < small.len() + 1024, "{held}");
    let small_chunks = m.get(&p("small")).unwrap().chunks().to_vec();
    let large_chunks = m.get(&p("large")).unwrap().chunks().to_vec();
    assert_eq!(small_chunks, chunk_bytes(&small));
    assert_eq!(large_chunks, chunk_bytes(&large));
    // Both files rewritten since the scan: the small one's chunks are
    // still sent as scanned (they match the entry that goes with them);
    // the large one's are read now and refused.
    fs::write(root.join("small"), vec![1u8; small.len()]).unwrap();
    fs::write(root.join("large"), vec![1u8; large.len()]).unwrap();
    for c in &small_chunks {
        let got = scanner.read_chunk(&p("small"), c).unwrap();
        assert_eq!(got, small[c.offset as usize..c.end() as usize]);
    }
    assert!(matches!(
        scanner.read_chunk(&p("large"), &large_chunks[0]),
        Err(ReadChunkError::Changed(_))
    ));
    // A chunk the cached file was not cut into is read from disk.
    let mut other = small_chunks[0];
    other.hash[0] ^= 1;
    assert!(matches!(
        scanner.read_chunk(&p("small"), &other),
        Err(ReadChunkError::Changed(_))
    ));
    // Never over its bound.
    for i in 0..4 {
        fs::write(root.join(format!("n{i}")), vec![i as u8 + 2; 300_000]).unwrap();
    }
    scanner.scan(None).unwrap();
    let held = cache.lock().unwrap().bytes();
    assert!(held > 0 && held <= 1 << 20, "{held}");
    cache.lock().unwrap().clear();
    assert_eq!(cache.lock().unwrap().bytes(), 0);
}

#[test]
fn filters_special_files_and_non_utf8_names() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    fs::create_dir_all(root.join("cache/x")).unwrap();
    fs::write(root.join("cache/x/f.txt"), b"excluded").unwrap();
    fs::create_dir(root.join("docs")).unwrap();
    fs::write(root.join("docs/a.txt"), b"a").unwrap();
    fs::write(root.join("docs/a.bin"), b"b").unwrap();
    fs::write(root.join("docs/a.tmp"), b"c").unwrap();
    // tandem's own temp file, left by an interrupted apply: never mirrored.
    fs::write(root.join("docs/.tandem-partial.b.txt"), b"half").unwrap();
    fs::write(
        root.join(std::ffi::OsStr::from_bytes(b"bad\xffname.txt")),
        b"d",
    )
    .unwrap();
    nix::unistd::mkfifo(
        &root.join("fifo.txt"),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .unwrap();
    let filter = FileSetFilter::new(&["**/*.txt"], &["cache", "**/*.tmp"]).unwrap();
    let scan = FileSetScanner::new(root, filter)
        .unwrap()
        .scan(None)
        .unwrap();
    let paths: BTreeSet<String> = scan.manifest.iter().map(|(p, _)| p.to_string()).collect();
    assert_eq!(
        paths,
        BTreeSet::from(["docs".to_owned(), "docs/a.txt".to_owned()])
    );
    let reasons: Vec<&SkipReason> = scan.skipped.iter().map(|s| &s.reason).collect();
    assert_eq!(reasons.len(), 2, "{:?}", scan.skipped);
    assert!(reasons.contains(&&SkipReason::NotUtf8));
    assert!(reasons.contains(&&SkipReason::Special));
}

/// A tree larger than one pass's read budget is read over several passes,
/// smallest files first. In between, a file changed but not yet read keeps
/// its old entry and a new one is absent: the manifest never shows a file
/// deleted that is still there, and the passes end at a full scan.
#[test]
fn a_bounded_rescan_reads_in_passes_and_never_drops_an_unread_file() {
    let tmp = tempfile::tempdir().unwrap();
    let scanner = FileSetScanner::new(tmp.path(), FileSetFilter::all()).unwrap();
    let root = scanner.root().to_owned();
    fs::create_dir(root.join("old")).unwrap();
    for i in 0..4 {
        fs::write(root.join(format!("old/{i}")), vec![i as u8; 100_000]).unwrap();
    }
    let before = scanner.scan(None).unwrap().manifest;
    let mut manifest = before.clone();

    // Every old file rewritten (new size, so the quick check sees it) and
    // a new directory of 6 files: 1 MB to read.
    for i in 0..4 {
        fs::write(root.join(format!("old/{i}")), vec![9u8; 100_001]).unwrap();
    }
    fs::create_dir(root.join("new")).unwrap();
    for i in 0..6 {
        fs::write(root.join(format!("new/{i}")), vec![i as u8; 100_000]).unwrap();
    }
    // A small file, after the large ones in path order.
    fs::write(root.join("zz-report.txt"), b"report 1").unwrap();
    let truth = scanner.scan(None).unwrap().manifest;

    let mut dirty = DirtySet::Paths(BTreeSet::from([p("old"), p("new"), p("zz-report.txt")]));
    let mut passes = 0;
    loop {
        passes += 1;
        let left = scanner
            .rescan_bounded(&mut manifest, &dirty, 250_000, None)
            .unwrap();
        // Smallest first: the small file is read in the first pass.
        assert!(manifest.get(&p("zz-report.txt")).is_some(), "pass {passes}");
        for (path, entry) in before.iter() {
            let now = manifest.get(path).expect("an unread file dropped");
            if left.deferred.contains(path) {
                assert_eq!(now, entry, "{path}: deferred, yet its entry changed");
            }
        }
        if left.deferred.is_empty() {
            break;
        }
        assert!(passes < 10, "no end to the passes");
        dirty = DirtySet::Paths(left.deferred.into_iter().collect());
    }
    // 1 MB at about 250 KB a pass.
    assert!(passes >= 4, "{passes} passes");
    assert_eq!(manifest, truth);
}

/// A file larger than a pass's budget, deferred behind smaller ones that
/// keep changing, is read when the caller names it first (the engine names
/// the file deferred the longest).
#[test]
fn a_file_named_first_is_read_whatever_its_size() {
    let tmp = tempfile::tempdir().unwrap();
    let scanner = FileSetScanner::new(tmp.path(), FileSetFilter::all()).unwrap();
    let root = scanner.root().to_owned();
    fs::write(root.join("big"), vec![1u8; 300_000]).unwrap();
    fs::write(root.join("log"), b"line 1").unwrap();
    let mut manifest = Manifest::new();
    let dirty = DirtySet::Paths(BTreeSet::from([p("big"), p("log")]));
    let left = scanner
        .rescan_bounded(&mut manifest, &dirty, 100_000, None)
        .unwrap();
    assert_eq!(left.deferred, [p("big")]);
    assert!(manifest.get(&p("log")).is_some());
    // The log changed again; the big file goes first this time.
    fs::write(root.join("log"), b"line 1\nline 2").unwrap();
    let left = scanner
        .rescan_bounded(&mut manifest, &dirty, 100_000, Some(&p("big")))
        .unwrap();
    assert_eq!(left.deferred, [p("log")]);
    assert!(manifest.get(&p("big")).is_some());
}

/// A local user swaps a directory of the set for a symlink to a directory
/// outside it, and back, as fast as a thread can, while the set is scanned
/// and chunks are read for the peer: a file outside is never read (its
/// bytes would be sent to the standby), nor a name outside listed,
/// whatever the timing.
#[test]
fn a_parent_swapped_for_a_symlink_never_leads_a_read_outside_the_set() {
    let tmp = tempfile::tempdir().unwrap();
    let (root, outside) = (tmp.path().join("root"), tmp.path().join("outside"));
    fs::create_dir_all(root.join("d")).unwrap();
    fs::create_dir(&outside).unwrap();
    fs::write(root.join("d/mine"), b"the set's own file").unwrap();
    let secret = b"a file outside the set, same name".to_vec();
    fs::write(outside.join("mine"), &secret).unwrap();
    // Names only outside: never listed into a scan.
    fs::write(outside.join("only_there"), b"x").unwrap();
    std::os::unix::fs::symlink("/a/target/outside", outside.join("a_link")).unwrap();
    let secret_chunks = chunk_bytes(&secret);
    let secret_hash = file_hash(&secret_chunks);
    let scanner = FileSetScanner::new(&root, FileSetFilter::all()).unwrap();
    let good = scanner.scan(None).unwrap().manifest;

    let stop = Arc::new(AtomicBool::new(false));
    let racer = {
        let stop = stop.clone();
        let (d, away) = (root.join("d"), root.join("d.away"));
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if fs::rename(&d, &away).is_ok() {
                    let _ = std::os::unix::fs::symlink(&outside, &d);
                    std::thread::yield_now();
                    let _ = fs::remove_file(&d);
                    let _ = fs::rename(&away, &d);
                }
                std::thread::yield_now();
            }
        })
    };
    let ours = file_hash(&chunk_bytes(b"the set's own file"));
    // Scans that read the set's d/mine, and that found d swapped.
    let (mut read_ours, mut swapped) = (0u32, 0u32);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut rounds = 0;
    let mut leaked = Vec::new();
    while (rounds < 300 || read_ours < 20 || swapped < 20)
        && rounds < 20_000
        && Instant::now() < deadline
    {
        rounds += 1;
        // Each pass from the manifest of the tree as it was.
        let mut manifest = good.clone();
        scanner
            .rescan(&mut manifest, &DirtySet::Everything)
            .unwrap();
        match manifest.get(&p("d/mine")).map(|e| &e.kind) {
            Some(EntryKind::File { hash, .. }) if *hash == ours => read_ours += 1,
            _ => swapped += 1,
        }
        for (path, e) in manifest.iter() {
            if ["only_there", "a_link"].contains(&path.file_name()) {
                leaked.push(format!("listed: {path}"));
            }
            if let EntryKind::File { hash, .. } = &e.kind {
                if *hash == secret_hash {
                    leaked.push(format!("scan: {path}"));
                }
            }
        }
        // Only the secret's bytes pass the chunk's hash.
        if scanner.read_chunk(&p("d/mine"), &secret_chunks[0]).is_ok() {
            leaked.push("read_chunk".into());
        }
    }
    stop.store(true, Ordering::Relaxed);
    racer.join().unwrap();
    assert!(leaked.is_empty(), "read outside the set: {leaked:?}");
    assert!(
        read_ours >= 20 && swapped >= 20,
        "the race did not happen: {read_ours} scans read the set's file, {swapped} did not, in {rounds} rounds"
    );
}
