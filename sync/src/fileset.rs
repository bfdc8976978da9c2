//! Paths inside a file set, confined to its root.
//!
//! Every path that names something in a file set, whether scanned locally or
//! received from the peer, is a [`SafePath`]: relative to the set's root,
//! `/`-separated, valid UTF-8, with no empty, `.` or `..` component, no NUL
//! and no leading `/`. Such a path can only name something at or below the
//! root *lexically*.
//!
//! Lexical confinement is not enough on its own: a component of the path may
//! be a symlink on the receiving side (`a -> /etc`, then `a/passwd`). That is
//! checked where the path is used, on the filesystem: the standby resolves
//! every parent component without following symlinks (openat/O_NOFOLLOW
//! semantics, or `symlink_metadata` on each component) and refuses a path
//! whose parent is not a real directory inside the root. This module, being
//! sans-IO, only guarantees the lexical half.
//!
//! Names that are not valid UTF-8 are not mirrored: the scanner reports them
//! instead. UTF-8 keeps the manifest, status and logs readable and comparable
//! on both sides; such names are rare on the servers this runs on.

use serde::{Deserialize, Serialize};
use std::fmt;

/// tandem's own temp files (a file being assembled on the standby) start
/// with this. They are never part of a file set: scanners leave them out and
/// a path from the peer whose last component starts so is refused.
pub const PARTIAL_PREFIX: &str = ".tandem-partial.";

/// The longest path accepted, in bytes (Linux's `PATH_MAX`).
pub const PATH_BYTES_MAX: usize = 4096;
/// The longest single component accepted, in bytes (Linux's `NAME_MAX`).
pub const COMPONENT_BYTES_MAX: usize = 255;

/// Why a path was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("empty path")]
    Empty,
    #[error("absolute path")]
    Absolute,
    #[error("path has an empty component")]
    EmptyComponent,
    #[error("path has a `.` component")]
    Dot,
    #[error("path has a `..` component")]
    DotDot,
    #[error("path contains NUL")]
    Nul,
    #[error("path longer than {PATH_BYTES_MAX} bytes")]
    TooLong,
    #[error("path component longer than {COMPONENT_BYTES_MAX} bytes")]
    ComponentTooLong,
    #[error("path is not valid UTF-8")]
    NotUtf8,
    #[error("a name was expected, not a path")]
    NotAName,
}

/// A relative path inside a file set, checked lexically (see the module doc).
///
/// Ordered bytewise, so a directory sorts before everything below it.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct SafePath(String);

/// A `SafePath` orders, compares and hashes as its string, so maps keyed by
/// it can be searched by `str` (a range of paths below a directory).
impl std::borrow::Borrow<str> for SafePath {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl SafePath {
    /// Check and take a relative path.
    pub fn parse(path: &str) -> Result<SafePath, PathError> {
        if path.is_empty() {
            return Err(PathError::Empty);
        }
        if path.starts_with('/') {
            return Err(PathError::Absolute);
        }
        if path.len() > PATH_BYTES_MAX {
            return Err(PathError::TooLong);
        }
        if path.contains('\0') {
            return Err(PathError::Nul);
        }
        for component in path.split('/') {
            match component {
                "" => return Err(PathError::EmptyComponent),
                "." => return Err(PathError::Dot),
                ".." => return Err(PathError::DotDot),
                c if c.len() > COMPONENT_BYTES_MAX => return Err(PathError::ComponentTooLong),
                _ => {}
            }
        }
        Ok(SafePath(path.to_owned()))
    }

    /// Check a path given as raw bytes (a name read from the filesystem).
    pub fn from_bytes(path: &[u8]) -> Result<SafePath, PathError> {
        let s = std::str::from_utf8(path).map_err(|_| PathError::NotUtf8)?;
        Self::parse(s)
    }

    /// `self/name`, checked.
    pub fn join(&self, name: &str) -> Result<SafePath, PathError> {
        if name.contains('/') {
            return Err(PathError::NotAName);
        }
        Self::parse(&format!("{}/{}", self.0, name))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The components, root first.
    pub fn components(&self) -> impl Iterator<Item = &str> {
        self.0.split('/')
    }

    /// Whether this names one of tandem's own temp files ([`PARTIAL_PREFIX`]).
    pub fn is_partial(&self) -> bool {
        self.file_name().starts_with(PARTIAL_PREFIX)
    }

    /// The last component.
    pub fn file_name(&self) -> &str {
        self.0.rsplit('/').next().unwrap_or(&self.0)
    }

    /// The parent, or `None` for a path directly under the root.
    pub fn parent(&self) -> Option<SafePath> {
        self.0.rfind('/').map(|i| SafePath(self.0[..i].to_owned()))
    }

    /// The strict ancestors, nearest the root first (`a`, `a/b` for `a/b/c`).
    pub fn ancestors(&self) -> Vec<SafePath> {
        self.0
            .match_indices('/')
            .map(|(i, _)| SafePath(self.0[..i].to_owned()))
            .collect()
    }

    /// Whether `self` is `other` or below it.
    pub fn starts_with(&self, other: &SafePath) -> bool {
        self.0 == other.0
            || (self.0.len() > other.0.len()
                && self.0.starts_with(&other.0)
                && self.0.as_bytes()[other.0.len()] == b'/')
    }
}

impl<'de> Deserialize<'de> for SafePath {
    /// Deserialising checks the path: a peer can never smuggle in `..`.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        SafePath::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl fmt::Debug for SafePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for SafePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_relative_paths() {
        for p in ["a", "a/b", "a/b.c/d", ".hidden", "a/..b", "a/b..", "x y/ü"] {
            assert_eq!(SafePath::parse(p).unwrap().as_str(), p);
        }
    }

    #[test]
    fn refuses_what_could_escape_or_is_ambiguous() {
        let cases = [
            ("", PathError::Empty),
            ("/etc/passwd", PathError::Absolute),
            ("../x", PathError::DotDot),
            ("a/../../x", PathError::DotDot),
            ("a/..", PathError::DotDot),
            ("./a", PathError::Dot),
            ("a//b", PathError::EmptyComponent),
            ("a/", PathError::EmptyComponent),
            ("a\0b", PathError::Nul),
        ];
        for (p, want) in cases {
            assert_eq!(SafePath::parse(p), Err(want), "{p:?}");
        }
        assert_eq!(
            SafePath::parse(&"a".repeat(256)),
            Err(PathError::ComponentTooLong)
        );
        assert_eq!(SafePath::parse(&"a/".repeat(2049)), Err(PathError::TooLong));
        assert_eq!(SafePath::from_bytes(b"a\xff"), Err(PathError::NotUtf8));
    }

    #[test]
    fn deserialising_checks_the_path() {
        let bad = postcard::to_allocvec(&"../x".to_string()).unwrap();
        assert!(postcard::from_bytes::<SafePath>(&bad).is_err());
        let good = postcard::to_allocvec(&"a/b".to_string()).unwrap();
        assert_eq!(
            postcard::from_bytes::<SafePath>(&good).unwrap().as_str(),
            "a/b"
        );
    }

    #[test]
    fn family() {
        let p = SafePath::parse("a/b/c").unwrap();
        assert_eq!(p.parent().unwrap().as_str(), "a/b");
        assert_eq!(p.file_name(), "c");
        let anc: Vec<_> = p.ancestors().iter().map(|a| a.to_string()).collect();
        assert_eq!(anc, ["a", "a/b"]);
        assert!(p.starts_with(&SafePath::parse("a/b").unwrap()));
        assert!(!SafePath::parse("a/bc")
            .unwrap()
            .starts_with(&SafePath::parse("a/b").unwrap()));
        assert_eq!(p.join("d").unwrap().as_str(), "a/b/c/d");
        assert!(p.join("..").is_err());
        assert!(p.join("x/y").is_err());
        assert!(SafePath::parse("a").unwrap().parent().is_none());
    }
}
