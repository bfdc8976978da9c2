//! File sets, whole-binary: a pair of real `tandem run` processes mirrors a
//! directory tree. Random operations on the primary (create, modify, append,
//! truncate, rename, delete, chmod, symlink, empty directories) end, once
//! quiet, in identical manifests and identical bytes on the standby; a
//! renamed large file is renamed, not sent again; a local change on the
//! standby is quarantined and undone; a switchover reverses the direction
//! without re-sending the tree; a standby killed mid-transfer catches up, so
//! does a primary killed and restarted; a file being written is mirrored as
//! whole versions only; an inotify queue overflow is reconciled by a full
//! rescan; an insert into and an append to a large file cost about the
//! edit.

mod common;

use common::files::{random_ops, scan, walk, FilesPair};
use common::wait_for;
use std::fs;
use std::time::Duration;
use tandem_sync::fileset::SafePath;
use tandem_sync::manifest::Manifest;

const QUIET: Duration = Duration::from_secs(30);

fn fetched(p: &FilesPair, i: usize) -> u64 {
    p.fs_status(i).unwrap()["bytes_fetched"].as_u64().unwrap()
}

/// No temp file of tandem's is left in node `i`'s tree.
fn assert_no_partials(p: &FilesPair, i: usize) {
    let leftovers: Vec<String> = walk(&p.root(i))
        .into_keys()
        .filter(|k| k.contains(".tandem-partial."))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn random_tree_operations_are_mirrored_exactly() {
    let mut p = FilesPair::new(1000);
    // Something there before tandem starts: the standby is filled from it.
    fs::create_dir_all(p.root(0).join("conf/empty")).unwrap();
    fs::write(p.root(0).join("conf/station.toml"), b"id = 7\n").unwrap();
    p.start_in_sync();
    assert!(p.root(1).join("conf/empty").is_dir());

    // Three bursts of random operations, each checked once quiet.
    for seed in 1..=3 {
        let ops = random_ops(&p.root(0), seed, 60);
        assert_eq!(ops.len(), 60);
        let m = p.wait_identical(0, QUIET);
        assert!(!m.is_empty());
    }

    // The rest works in a directory the random operations never saw.
    fs::create_dir(p.root(0).join("fixed")).unwrap();
    fs::write(p.root(0).join("fixed/station.toml"), b"id = 7\n").unwrap();

    // A large file renamed into another directory moves, it is not re-sent.
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    fs::write(p.root(0).join("big.dat"), &big).unwrap();
    p.wait_identical(0, QUIET);
    let before = fetched(&p, 1);
    let renames = p.fs_status(1).unwrap()["renames"].as_u64().unwrap();
    fs::rename(p.root(0).join("big.dat"), p.root(0).join("fixed/big.dat")).unwrap();
    p.wait_identical(0, QUIET);
    let s = p.fs_status(1).unwrap();
    assert_eq!(s["bytes_fetched"].as_u64().unwrap(), before, "{s}");
    assert!(s["renames"].as_u64().unwrap() > renames, "{s}");

    // A one-byte change in the large file, written in place, sends about
    // one chunk.
    {
        use std::os::unix::fs::FileExt;
        let f = fs::OpenOptions::new()
            .write(true)
            .open(p.root(0).join("fixed/big.dat"))
            .unwrap();
        f.write_all_at(&[big[1_500_000] ^ 0xff], 1_500_000).unwrap();
    }
    p.wait_identical(0, QUIET);
    let delta = fetched(&p, 1) - before;
    assert!(
        (1..=2 * 256 * 1024).contains(&delta),
        "a 1-byte change fetched {delta} bytes"
    );

    // The same, rewritten whole (truncated, then written): the truncated
    // state is not sent, so the standby still holds the chunks to reuse.
    let before = fetched(&p, 1);
    let mut again = fs::read(p.root(0).join("fixed/big.dat")).unwrap();
    again[700_000] ^= 0x55;
    fs::write(p.root(0).join("fixed/big.dat"), &again).unwrap();
    p.wait_identical(0, QUIET);
    let delta = fetched(&p, 1) - before;
    eprintln!("a rewrite in place fetched {delta} bytes");
    assert!(
        (1..=2 * 256 * 1024).contains(&delta),
        "a 1-byte change written as a whole new file fetched {delta} bytes"
    );

    // Status, human and JSON, shows the set.
    let out = p.pair.cli(0, &["status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("file sets:") && text.contains("etc") && text.contains("IN SYNC"),
        "{text}"
    );
    let s = p.fs_status(0).unwrap();
    assert_eq!(s["pending_changes"], 0, "{s}");
    assert_eq!(s["bytes_queued"], 0, "{s}");
    assert_eq!(s["lag_ms"], 0, "{s}");
    assert!(s["last_sync_unix_ms"].as_u64().is_some(), "{s}");

    // A local change on the standby is quarantined, then undone by the
    // primary's copy.
    fs::write(
        p.root(1).join("fixed/station.toml"),
        b"id = 8 # edited here\n",
    )
    .unwrap();
    let quarantine = p.pair.dir.path().join("b").join("quarantine");
    wait_for(QUIET, "the local edit in quarantine", || {
        let s = p.fs_status(1)?;
        (s["quarantined"].as_u64()? >= 1).then_some(())
    });
    let m = p.wait_identical(0, QUIET);
    assert!(!m.is_empty());
    assert_eq!(
        fs::read(p.root(1).join("fixed/station.toml")).unwrap(),
        b"id = 7\n"
    );
    let kept = walk(&quarantine);
    assert!(
        kept.keys().any(|k| k.ends_with("fixed/station.toml")),
        "{kept:?}"
    );
    p.pair.stop(1);
    p.pair.stop(0);
}

#[test]
fn a_switchover_reverses_the_direction_without_resending() {
    let mut p = FilesPair::new(1000);
    let big: Vec<u8> = (0..2_000_000u32).map(|i| (i % 253) as u8).collect();
    fs::write(p.root(0).join("data.bin"), &big).unwrap();
    fs::create_dir(p.root(0).join("reports")).unwrap();
    p.start_in_sync();

    // A loaded machine can delay heartbeats enough for the pre-checks to
    // refuse (nothing changes then): ask again once the pair is healthy.
    let text = wait_for(QUIET, "a switchover that passes its pre-checks", || {
        p.pair.wait_roles(0, Duration::from_secs(20));
        let out = p.pair.cli(0, &["switchover", "--yes"]);
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        if out.status.success() {
            return Some(text);
        }
        assert!(
            err.contains("refused") || text.contains("refused"),
            "{text}{err}"
        );
        None
    });
    assert!(text.contains("drained: 1 resource"), "{text}");
    p.pair.wait_roles(1, Duration::from_secs(20));
    p.wait_identical(1, QUIET);

    // Changes on the new primary flow back; nothing else is sent.
    fs::write(p.root(1).join("reports/r1.txt"), b"flood level 3.2 m\n").unwrap();
    use std::io::Write;
    fs::OpenOptions::new()
        .append(true)
        .open(p.root(1).join("data.bin"))
        .unwrap()
        .write_all(&[9u8; 1000])
        .unwrap();
    p.wait_identical(1, QUIET);
    assert_eq!(
        fs::read(p.root(0).join("reports/r1.txt")).unwrap(),
        b"flood level 3.2 m\n"
    );
    let f = fetched(&p, 0);
    assert!(
        f <= 300_000,
        "the old primary fetched {f} bytes: only the new file and the appended chunk"
    );
    let a = p.pair.status(0).unwrap();
    assert!(a["alarms"].as_array().unwrap().is_empty(), "{a}");
}

#[test]
fn a_standby_killed_mid_transfer_catches_up_and_resumes() {
    let mut p = FilesPair::new(1000);
    fs::create_dir(p.root(0).join("other")).unwrap();
    p.start_in_sync();

    // About 48 MB in 6 files: the standby is killed while it fetches.
    let size = 8_000_000u32;
    for i in 0..6u32 {
        let bytes: Vec<u8> = (0..size)
            .map(|j| (j.wrapping_mul(2_654_435_761).wrapping_add(i) >> 13) as u8)
            .collect();
        fs::write(p.root(0).join(format!("bulk{i}.bin")), bytes).unwrap();
    }
    wait_for(QUIET, "the standby fetching", || {
        let s = p.fs_status(1)?;
        (s["bytes_fetched"].as_u64()? > 0).then_some(())
    });
    p.pair.kill(1);
    // What the standby holds at that point: whole files, and temp files
    // with the chunks received so far.
    let mut complete = 0u64;
    let mut partial = 0u64;
    for i in 0..6 {
        let name = format!("bulk{i}.bin");
        if fs::read(p.root(1).join(&name)).ok() == fs::read(p.root(0).join(&name)).ok() {
            complete += u64::from(size);
        }
        if let Ok(m) = fs::metadata(p.root(1).join(format!(".tandem-partial.{name}"))) {
            partial += m.len();
        }
    }
    eprintln!("at the kill: {complete} B in whole files, {partial} B in temp files");
    // More changes while it is away (elsewhere in the tree).
    random_ops(&p.root(0).join("other"), 11, 40);
    let other: u64 = walk(&p.root(0).join("other"))
        .keys()
        .filter_map(|k| fs::symlink_metadata(p.root(0).join("other").join(k)).ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum();
    // The primary says what the standby is owed while it is away: at
    // least every entry made under `other` since.
    let made = walk(&p.root(0).join("other")).len() as u64;
    let away = wait_for(QUIET, "the primary counting what is owed", || {
        let s = p.fs_status(0)?;
        (s["mode"] == "waiting for standby" && s["pending_changes"].as_u64()? >= made).then_some(s)
    });
    assert!(
        away["bytes_queued"].as_u64().unwrap() >= other,
        "the files changed while it is away are queued: {away}"
    );
    assert!(away["lag_ms"].as_u64().unwrap() > 0, "{away}");
    p.pair.start(1);
    p.wait_identical(0, Duration::from_secs(60));
    assert_no_partials(&p, 1);
    // Only what it lacked was sent again: neither the whole files nor the
    // chunks in the temp files (give or take a chunk per file at the edge).
    let s = p.fs_status(1).unwrap();
    assert_eq!(
        s["quarantined"], 0,
        "files applied after the kept manifest's last write are not taken for local changes: {s}"
    );
    let fetched = fetched(&p, 1);
    let bound = 6 * u64::from(size) - complete - partial + other + 6 * 256 * 1024;
    assert!(
        fetched <= bound,
        "fetched {fetched} B after the restart, more than {bound} B"
    );
}

#[test]
fn a_file_applied_just_before_a_standby_crash_is_not_taken_for_a_local_change() {
    let mut p = FilesPair::new(1000);
    p.start_in_sync();
    let kept = p.pair.dir.path().join("b/filesets/etc.manifest");
    let report = SafePath::parse("report.csv").unwrap();
    // The case is a kept manifest that is behind, not none at all (a
    // standby killed before it first kept one starts as a fresh one).
    wait_for(QUIET, "the standby's first kept manifest", || {
        kept.exists().then_some(())
    });
    // The standby keeps its manifest at most once a second: a file applied
    // right after another is on disk before it is in the kept manifest.
    // Killed then; tried again if the manifest was kept before the kill.
    let mut exercised = false;
    for attempt in 0..5u8 {
        fs::write(p.root(0).join(format!("first{attempt}")), [attempt]).unwrap();
        p.wait_identical(0, QUIET);
        fs::write(p.root(0).join("report.csv"), format!("draft {attempt}\n")).unwrap();
        p.wait_identical(0, QUIET);
        p.pair.kill(1);
        let on_disk = scan(&p.root(1));
        let kept = Manifest::decode(&fs::read(&kept).unwrap()).unwrap();
        if kept.get(&report) != on_disk.get(&report) {
            exercised = true;
            break;
        }
        p.pair.start(1);
        p.wait_identical(0, QUIET);
    }
    assert!(
        exercised,
        "the kept manifest always caught up before the kill"
    );
    // Replaced on the primary while the standby is down: the standby's
    // version is one tandem wrote, so nothing is kept in quarantine.
    fs::write(p.root(0).join("report.csv"), b"final\n").unwrap();
    p.pair.start(1);
    p.wait_identical(0, QUIET);
    let s = p.fs_status(1).unwrap();
    assert_eq!(s["quarantined"], 0, "{s}");
    assert!(!p.pair.log(1).contains("differ from the manifest kept"));
    let quarantine = p.pair.dir.path().join("b/quarantine");
    assert!(!quarantine.exists() || walk(&quarantine).is_empty());
}

/// The bytes of version `v` of file `i` in the batch test.
fn batch_bytes(i: u32, v: u32, len: u32) -> Vec<u8> {
    (0..len)
        .map(|j| {
            (j.wrapping_mul(2_654_435_761)
                .wrapping_add(i * 7 + v * 1_000_003)
                >> 11) as u8
        })
        .collect()
}

#[test]
fn a_standby_killed_during_a_batch_leaves_every_file_old_or_new() {
    let mut p = FilesPair::new(1000);
    // 128 MiB: more than one round, so more than one batch.
    let (files, len) = (256u32, 512 * 1024u32);
    let name = |i: u32| format!("d{}/f{i:03}.bin", i % 4);
    for d in 0..4 {
        fs::create_dir(p.root(0).join(format!("d{d}"))).unwrap();
    }
    for i in 0..files {
        fs::write(p.root(0).join(name(i)), batch_bytes(i, 0, len)).unwrap();
    }
    p.start_in_sync();

    // Every file replaced at once (written beside it, renamed over it), so
    // the standby writes them in batches; it is killed twice while doing so.
    for i in 0..files {
        let tmp = p.root(0).join(format!("{}.tmp", name(i)));
        fs::write(&tmp, batch_bytes(i, 1, len)).unwrap();
        fs::rename(&tmp, p.root(0).join(name(i))).unwrap();
    }
    for round in 0..2 {
        // Killed right after its first batch is in place, while it writes
        // the next ones (a restarted standby counts from zero).
        wait_for(QUIET, "the standby writing new versions", || {
            let s = p.fs_status(1)?;
            (s["files_written"].as_u64()? > 0).then_some(())
        });
        p.pair.kill(1);
        let mut new = 0;
        for i in 0..files {
            let got = fs::read(p.root(1).join(name(i))).unwrap();
            if got == batch_bytes(i, 1, len) {
                new += 1;
            } else {
                assert!(
                    got == batch_bytes(i, 0, len),
                    "kill {round}: {} is neither the old version nor the new one",
                    name(i)
                );
            }
        }
        eprintln!("at kill {round}: {new} of {files} files new, the rest old");
        p.pair.start(1);
    }
    p.wait_identical(0, Duration::from_secs(60));
    assert_no_partials(&p, 1);
    let s = wait_for(QUIET, "the standby's status", || p.fs_status(1));
    assert_eq!(s["quarantined"], 0, "{s}");
}

#[test]
fn a_file_written_while_synced_and_a_restarted_primary_converge() {
    let mut p = FilesPair::new(1000);
    p.start_in_sync();

    // A writer appends (and fsyncs) while the set is being mirrored: the
    // standby's copy is always some prefix of what is written (each version
    // replaces the last atomically), and the whole of it once it is done.
    let line = |n: u32| format!("{n:08} {}\n", "x".repeat(4000));
    let full: Vec<u8> = (0..400).flat_map(|n| line(n).into_bytes()).collect();
    let path = p.root(0).join("log.txt");
    let writer = std::thread::spawn(move || {
        use std::io::Write;
        let mut f = fs::File::create(&path).unwrap();
        for n in 0..400u32 {
            f.write_all(line(n).as_bytes()).unwrap();
            f.sync_data().unwrap();
        }
    });
    let mut seen = 0;
    for _ in 0..2000 {
        if writer.is_finished() {
            break;
        }
        if let Ok(copy) = fs::read(p.root(1).join("log.txt")) {
            assert!(
                full.starts_with(&copy),
                "a torn copy of {} bytes",
                copy.len()
            );
            seen += 1;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    writer.join().unwrap();
    eprintln!("sampled the standby's copy {seen} times while it was written");
    p.wait_identical(0, QUIET);
    assert_eq!(
        fs::metadata(p.root(1).join("log.txt")).unwrap().len(),
        400 * 4010
    );

    // The primary is killed; what is written while it is down is found by
    // its startup scan and sent when the pair is back.
    p.pair.kill(0);
    random_ops(&p.root(0), 21, 30);
    fs::write(
        p.root(0).join("while-down.txt"),
        b"written while tandem was down",
    )
    .unwrap();
    p.pair.start(0);
    p.pair.wait_roles(0, Duration::from_secs(30));
    p.wait_identical(0, QUIET);
    assert_eq!(
        fs::read(p.root(1).join("while-down.txt")).unwrap(),
        b"written while tandem was down"
    );
}

#[test]
fn an_inotify_queue_overflow_is_reconciled_by_a_full_rescan() {
    let queue: u64 = fs::read_to_string("/proc/sys/fs/inotify/max_queued_events")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // The periodic reconcile is out of reach: only the overflow path can
    // find what the lost events said.
    let mut p = FilesPair::new(600_000);
    p.start_in_sync();

    // The primary is paused (manual failover: no lease to lose) while more
    // events happen than its inotify queue holds: one-byte appends to two
    // files in turn (alternating, so the kernel cannot merge them), then
    // new files whose events are the ones lost.
    let appends = queue * 2;
    assert!(
        appends <= 2_000_000,
        "max_queued_events {queue} is too large to overflow here"
    );
    p.pair.signal(0, nix::sys::signal::Signal::SIGSTOP);
    {
        use std::io::Write;
        let mut a = fs::File::create(p.root(0).join("ping")).unwrap();
        let mut b = fs::File::create(p.root(0).join("pong")).unwrap();
        for i in 0..appends {
            if i % 2 == 0 {
                a.write_all(b"a")
            } else {
                b.write_all(b"b")
            }
            .unwrap();
        }
    }
    for i in 0..50 {
        fs::write(p.root(0).join(format!("after{i}")), format!("{i}")).unwrap();
    }
    p.pair.signal(0, nix::sys::signal::Signal::SIGCONT);
    let m = p.wait_identical(0, QUIET);
    assert_eq!(m.len(), 52);
    wait_for(QUIET, "the overflow logged as one", || {
        p.pair
            .log(0)
            .contains("the watcher lost track")
            .then_some(())
    });

    // `tandem verify` reads both trees from scratch and agrees, from
    // either node; after an edit on the standby (its own reconcile is 10
    // minutes away here) it names the path.
    for i in 0..2 {
        let out = p.pair.cli(i, &["verify", "--json", "--timeout", "20s"]);
        assert_eq!(out.status.code(), Some(0), "{out:?}");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["filesets"][0]["identical"], true, "{v}");
        assert_eq!(v["filesets"][0]["entries"], 52, "{v}");
    }
    fs::write(p.root(1).join("after7"), b"edited on the standby").unwrap();
    let out = p.pair.cli(0, &["verify", "--timeout", "20s"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("file set etc: DIFFERENT, 1 path(s) differ") && text.contains("  - after7"),
        "{text}"
    );
}

#[test]
fn a_fresh_standby_keeps_what_the_first_sync_replaces() {
    let mut p = FilesPair::new(1000);
    fs::write(p.root(0).join("station.toml"), b"id = 7\n").unwrap();
    fs::write(p.root(0).join("same.txt"), b"same on both").unwrap();
    // The standby's tree before tandem ever ran there: one file differs,
    // one is only here, one is already identical.
    fs::write(p.root(1).join("station.toml"), b"id = 99\n").unwrap();
    fs::write(p.root(1).join("only-here.txt"), b"local notes").unwrap();
    fs::write(p.root(1).join("same.txt"), b"same on both").unwrap();
    p.start_in_sync();
    assert_eq!(
        fs::read(p.root(1).join("station.toml")).unwrap(),
        b"id = 7\n"
    );
    assert!(!p.root(1).join("only-here.txt").exists());
    let kept = walk(&p.pair.dir.path().join("b").join("quarantine"));
    let names: Vec<&String> = kept
        .keys()
        .filter(|k| kept[*k].starts_with("file"))
        .collect();
    assert!(
        names.iter().any(|k| k.ends_with("only-here.txt"))
            && names.iter().any(|k| k.ends_with("station.toml")),
        "{kept:?}"
    );
    assert_eq!(p.fs_status(1).unwrap()["quarantined"], 2);

    // Once in sync, the primary's word is the standby's: a delete deletes.
    fs::remove_file(p.root(0).join("same.txt")).unwrap();
    p.wait_identical(0, QUIET);
    assert_eq!(p.fs_status(1).unwrap()["quarantined"], 2);
}

#[test]
fn an_insert_and_an_append_on_a_large_file_send_little_more_than_the_edit() {
    let mut p = FilesPair::new(1000);
    p.start_in_sync();
    let random = |seed: &[u8], len: usize| {
        let mut v = vec![0u8; len];
        blake3::Hasher::new()
            .update(seed)
            .finalize_xof()
            .fill(&mut v);
        v
    };
    let path = p.root(0).join("big.dat");
    let mut content = random(b"big", 8 << 20);
    fs::write(&path, &content).unwrap();
    p.wait_identical(0, QUIET);

    // A 1-byte insert, written whole beside the file and renamed over it:
    // the changed chunk goes as a delta against the one it replaced.
    let before = fetched(&p, 1);
    content.insert(3_000_000, 0x5a);
    let tmp = p.root(0).join("big.dat.tmp");
    fs::write(&tmp, &content).unwrap();
    fs::rename(&tmp, &path).unwrap();
    p.wait_identical(0, QUIET);
    let insert = fetched(&p, 1) - before;
    assert!(insert < 16 * 1024, "a 1-byte insert fetched {insert} bytes");

    // A 1 MiB append: the new bytes, not the old last chunk again.
    let before = fetched(&p, 1);
    let more = random(b"more", 1 << 20);
    {
        use std::io::Write;
        let mut f = fs::OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&more).unwrap();
    }
    content.extend_from_slice(&more);
    p.wait_identical(0, QUIET);
    let append = fetched(&p, 1) - before;
    eprintln!("fetched for the 1-byte insert: {insert} B; for the 1 MiB append: {append} B");
    assert!(
        append < (1 << 20) + 16 * 1024,
        "a 1 MiB append fetched {append} bytes"
    );
    assert_eq!(fs::read(p.root(1).join("big.dat")).unwrap(), content);
}

/// A tree larger than one scan pass (64 MiB) is read and sent in parts.
/// Renamed whole, it is moved file by file and nothing is sent again: while
/// the new tree is only partly read, the deletes of the old paths wait, so
/// that every file is still paired with its old path when it is read.
#[test]
fn a_tree_larger_than_a_scan_pass_is_mirrored_and_renamed_without_resending() {
    const FILES: u64 = 80;
    let mut p = FilesPair::new(1000);
    p.start_in_sync();
    // Built beside the root and moved in at once, as a bulk delivery is.
    let staging = p.root(0).parent().unwrap().join("bulk-staging");
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for i in 0..FILES {
        let dir = staging.join(format!("d{}", i % 4));
        fs::create_dir_all(&dir).unwrap();
        let bytes: Vec<u8> = (0..(1 << 20) / 8)
            .flat_map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state.to_le_bytes()
            })
            .collect();
        fs::write(dir.join(format!("f{i:03}")), bytes).unwrap();
    }
    fs::rename(&staging, p.root(0).join("bulk")).unwrap();
    p.wait_identical(0, Duration::from_secs(180));
    let s = p.fs_status(0).unwrap();
    let sent = s["chunk_bytes_sent"].as_u64().unwrap();
    let renames = s["renames_sent"].as_u64().unwrap();
    assert!(sent >= FILES << 20, "{s}");
    // Two passes: the first waits in the chunk cache for its round, and
    // its chunks are sent from there, not read and hashed a second time.
    let (chunks, read_again) = (
        s["chunks_sent"].as_u64().unwrap(),
        s["chunks_read_again"].as_u64().unwrap(),
    );
    assert!(
        read_again * 10 < chunks,
        "{read_again} of {chunks} chunks read again: {s}"
    );

    fs::rename(p.root(0).join("bulk"), p.root(0).join("moved")).unwrap();
    p.wait_identical(0, Duration::from_secs(180));
    let s = p.fs_status(0).unwrap();
    assert_eq!(s["chunk_bytes_sent"].as_u64().unwrap(), sent, "{s}");
    assert_eq!(s["renames_sent"].as_u64().unwrap() - renames, FILES, "{s}");
    assert!(!p.root(1).join("bulk").exists());
    p.pair.stop(1);
    p.pair.stop(0);
}
