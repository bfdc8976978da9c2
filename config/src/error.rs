use std::fmt;
use std::path::PathBuf;

/// One problem found in a config file, located at a 1-based line and column
/// (columns count characters). Displays as `FILE:LINE:COL: message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: PathBuf,
    pub line: usize,
    pub col: usize,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file.display(),
            self.line,
            self.col,
            self.message
        )
    }
}

/// Why a config could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read. Displays as `FILE: cannot read: cause`.
    #[error("{}: cannot read: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file is not a valid config. Holds at least one diagnostic, in file
    /// order; displays as one `FILE:LINE:COL: message` line per diagnostic.
    #[error("{}", DisplayLines(.0))]
    Invalid(Vec<Diagnostic>),
    /// [`crate::Config::pick_node`] found no node. Displays as `FILE: message`.
    #[error("{}: {message}", file.display())]
    NoSuchNode { file: PathBuf, message: String },
}

impl ConfigError {
    /// The located problems (empty for I/O and node-selection errors).
    pub fn diagnostics(&self) -> &[Diagnostic] {
        match self {
            ConfigError::Invalid(d) => d,
            _ => &[],
        }
    }
}

struct DisplayLines<'a>(&'a [Diagnostic]);

impl fmt::Display for DisplayLines<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}
