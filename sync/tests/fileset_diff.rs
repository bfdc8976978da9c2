//! Property tests of the manifest diff and codec: random old and new trees,
//! the changes applied one by one to a strict model of a filesystem (a
//! create needs its parent directory and a free path, a directory is removed
//! only when empty, a rename needs its source and a free target), must end
//! exactly at the new tree; random and mutated encodings never panic the
//! decoder.

use proptest::prelude::*;
use std::collections::BTreeMap;
use tandem_sync::chunk::chunk_bytes;
use tandem_sync::fileset::SafePath;
use tandem_sync::manifest::{diff, while_scanning, Change, Entry, EntryKind, Manifest};

fn p(s: &str) -> SafePath {
    SafePath::parse(s).unwrap()
}

/// A random tree over a small alphabet of names so that old and new overlap:
/// `(path, kind 0=file 1=dir 2=symlink, content byte, mode, mtime)`.
fn tree() -> impl Strategy<Value = Manifest> {
    proptest::collection::vec(
        (
            proptest::collection::vec(0u8..4, 1..4),
            0u8..3,
            0u8..4,
            prop_oneof![Just(0o644u32), Just(0o600), Just(0o755)],
            0i64..3,
        ),
        0..24,
    )
    .prop_map(|items| {
        let mut m = Manifest::new();
        for (names, kind, content, mode, mtime) in items {
            let names: Vec<String> = names
                .iter()
                .map(|n| ["a", "b", "c", "d"][*n as usize].to_owned())
                .collect();
            // Every ancestor must be a directory; skip paths that would
            // put something below a non-directory.
            let mut ok = true;
            for i in 1..names.len() {
                let anc = p(&names[..i].join("/"));
                match m.get(&anc) {
                    Some(e) if !e.is_dir() => {
                        ok = false;
                        break;
                    }
                    Some(_) => {}
                    None => {
                        m.insert(
                            anc,
                            Entry {
                                kind: EntryKind::Dir,
                                mode: 0o755,
                                mtime_ns: 0,
                                owner: None,
                            },
                        );
                    }
                }
            }
            let path = p(&names.join("/"));
            if !ok || m.get(&path).is_some() {
                continue;
            }
            let entry = match kind {
                0 => {
                    let bytes = vec![content; content as usize * 3];
                    Entry {
                        kind: EntryKind::file(chunk_bytes(&bytes)),
                        mode,
                        mtime_ns: mtime,
                        owner: None,
                    }
                }
                1 => Entry {
                    kind: EntryKind::Dir,
                    mode,
                    mtime_ns: mtime,
                    owner: None,
                },
                _ => Entry {
                    kind: EntryKind::Symlink {
                        target: format!("t{content}"),
                    },
                    mode: 0o777,
                    mtime_ns: mtime,
                    owner: None,
                },
            };
            m.insert(path, entry);
        }
        m
    })
}

/// Apply a change to a strict model filesystem, refusing what a real one
/// would refuse.
fn apply_strict(fs: &mut BTreeMap<SafePath, Entry>, c: &Change) -> Result<(), String> {
    let parent_ok = |fs: &BTreeMap<SafePath, Entry>, path: &SafePath| match path.parent() {
        None => true,
        Some(parent) => fs.get(&parent).is_some_and(Entry::is_dir),
    };
    match c {
        Change::Create { path, entry } => {
            if fs.contains_key(path) || !parent_ok(fs, path) {
                return Err(format!("create {path}"));
            }
            fs.insert(path.clone(), entry.clone());
        }
        Change::Modify { path, old, new } | Change::Meta { path, old, new } => {
            if fs.get(path) != Some(old) {
                return Err(format!("modify/meta {path}: not the old entry"));
            }
            fs.insert(path.clone(), new.clone());
        }
        Change::Delete { path, old } => {
            if fs.get(path) != Some(old) {
                return Err(format!("delete {path}: not the old entry"));
            }
            if fs.keys().any(|k| k != path && k.starts_with(path)) {
                return Err(format!("delete {path}: not empty"));
            }
            fs.remove(path);
        }
        Change::Rename { from, to, old, new } => {
            if fs.get(from) != Some(old) || fs.contains_key(to) || !parent_ok(fs, to) {
                return Err(format!("rename {from} {to}"));
            }
            fs.remove(from);
            fs.insert(to.clone(), new.clone());
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn diff_steps_are_each_possible_and_reach_the_new_tree(old in tree(), new in tree()) {
        let changes = diff(&old, &new);
        let mut fs: BTreeMap<SafePath, Entry> = old.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        let mut m = old.clone();
        for c in &changes {
            if let Err(e) = apply_strict(&mut fs, c) {
                return Err(TestCaseError::fail(format!("{e}\n{changes:#?}")));
            }
            m.apply(c);
        }
        let want: BTreeMap<SafePath, Entry> = new.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        prop_assert_eq!(fs, want);
        prop_assert_eq!(m.root(), new.root());
        prop_assert_eq!(&m, &new);
        prop_assert!(diff(&new, &new).is_empty());
    }

    /// While a scan is not over, what the standby is sent is still a list
    /// of possible steps, and the rest of the diff, once the scan ends,
    /// reaches the new tree.
    #[test]
    fn a_partial_scan_sends_only_possible_steps(old in tree(), new in tree(), mask in any::<u64>()) {
        // Unread: some of the new tree's files; each keeps its old entry
        // if it had a file's, or is absent.
        let mut partial = new.clone();
        let mut unread = std::collections::HashSet::new();
        for (i, (path, e)) in new.iter().enumerate() {
            if matches!(e.kind, EntryKind::File { .. }) && mask >> (i % 64) & 1 == 1 {
                unread.insert(path.clone());
                match old.get(path) {
                    Some(o) if matches!(o.kind, EntryKind::File { .. }) => {
                        partial.insert(path.clone(), o.clone());
                    }
                    _ => {
                        partial.remove(path);
                    }
                }
            }
        }
        let mut fs: BTreeMap<SafePath, Entry> = old.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        let mut m = old.clone();
        let sent = while_scanning(diff(&old, &partial), &unread);
        for c in &sent {
            prop_assert!(!unread.contains(c.path()), "{:?}", c);
            if let Err(e) = apply_strict(&mut fs, c) {
                return Err(TestCaseError::fail(format!("{e}\n{sent:#?}")));
            }
            m.apply(c);
        }
        let rest = diff(&m, &new);
        for c in &rest {
            if let Err(e) = apply_strict(&mut fs, c) {
                return Err(TestCaseError::fail(format!("{e}\n{rest:#?}")));
            }
        }
        let want: BTreeMap<SafePath, Entry> = new.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        prop_assert_eq!(fs, want);
    }

    #[test]
    fn renamed_content_is_never_resent(old in tree()) {
        // Move every non-empty file of the old tree under a new directory.
        let mut new = Manifest::new();
        new.insert(p("moved"), Entry { kind: EntryKind::Dir, mode: 0o755, mtime_ns: 0 , owner: None });
        for (path, e) in old.iter() {
            new.insert(p(&format!("moved/{path}")), e.clone());
        }
        for c in diff(&old, &new) {
            prop_assert!(c.changed_chunks().is_empty(), "{:?}", c);
        }
    }

    #[test]
    fn decode_never_panics_on_random_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = Manifest::decode(&bytes);
    }

    #[test]
    fn decode_never_panics_on_mutated_encodings(m in tree(), at in any::<usize>(), byte in any::<u8>()) {
        let mut bytes = m.encode();
        prop_assert_eq!(Manifest::decode(&bytes).unwrap(), m.clone());
        if !bytes.is_empty() {
            let i = at % bytes.len();
            bytes[i] = byte;
            if let Ok(back) = Manifest::decode(&bytes) {
                // Whatever decodes is a valid manifest that encodes back the same.
                prop_assert_eq!(Manifest::decode(&back.encode()).unwrap(), back);
            }
        }
    }
}
