//! Configuration errors, and turning byte offsets into lines and columns.

use std::fmt;
use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};

use toml::de::{DeTable, DeValue};
use toml::Spanned;

/// A 1-based line and column (columns count characters, not bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// Line, from 1.
    pub line: usize,
    /// Column, from 1.
    pub column: usize,
}

impl Position {
    /// Position of byte `offset` in `text` (clamped to the end of the text).
    pub fn at(text: &str, offset: usize) -> Position {
        let mut offset = offset.min(text.len());
        while !text.is_char_boundary(offset) {
            offset -= 1;
        }
        let before = &text[..offset];
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        Position {
            line: before.matches('\n').count() + 1,
            column: before[line_start..].chars().count() + 1,
        }
    }
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read: missing, not permitted, not a regular
    /// file (a FIFO, a device) or larger than [`MAX_CONFIG_BYTES`](super::MAX_CONFIG_BYTES).
    /// The OS's words are in the message and not also a `source`, so that a
    /// chain printed whole says them once.
    #[error("{}: cannot read the configuration file: {error}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What the OS (or the size check) said.
        error: io::Error,
    },
    /// The text is not TOML, a value has the wrong type, a key is unknown or
    /// a required key is missing.
    #[error("{}: {message}", located(origin, position, key.as_deref()))]
    Parse {
        /// File (or other origin) of the text, for messages only.
        origin: PathBuf,
        /// Where in the text, when known.
        position: Option<Position>,
        /// Key path such as `boards[0].int_bytes`; `None` for TOML syntax errors
        /// and errors about the document as a whole.
        key: Option<String>,
        /// What is wrong.
        message: String,
    },
    /// A value is well-typed but not acceptable.
    #[error("{}: {message}", located(origin, position, Some(key)))]
    Invalid {
        /// File (or other origin) of the text, for messages only.
        origin: PathBuf,
        /// Where the offending value is written; `None` when the value is a
        /// default that is not written in the file.
        position: Option<Position>,
        /// Key path such as `layout.z_first_index`.
        key: String,
        /// What is wrong.
        message: String,
    },
    /// `host` is not set and the system host name cannot be used.
    #[error("{}: host: not set, and the system host name cannot be used ({reason}); set `host`", origin.display())]
    Hostname {
        /// File (or other origin) of the text, for messages only.
        origin: PathBuf,
        /// Why the system host name is unusable.
        reason: String,
    },
    /// `database.password_file` could not be read (the password itself is
    /// never part of an error).
    #[error("{}: cannot read the database password file (database.password_file): {error}", path.display())]
    PasswordFile {
        /// The password file.
        path: PathBuf,
        /// What went wrong (in the message, not also a `source`: said once).
        error: io::Error,
    },
}

impl ConfigError {
    /// Key path the error is about, if any.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Parse { key, .. } => key.as_deref(),
            ConfigError::Invalid { key, .. } => Some(key),
            ConfigError::Hostname { .. } => Some("host"),
            ConfigError::PasswordFile { .. } => Some("database.password_file"),
            ConfigError::Read { .. } => None,
        }
    }

    /// Line and column the error points at, if known.
    pub fn position(&self) -> Option<Position> {
        match self {
            ConfigError::Parse { position, .. } | ConfigError::Invalid { position, .. } => {
                *position
            }
            _ => None,
        }
    }
}

/// `origin:line:column: key` with the parts that are known.
fn located<'a>(
    origin: &'a Path,
    position: &'a Option<Position>,
    key: Option<&'a str>,
) -> impl fmt::Display + 'a {
    struct L<'a>(&'a Path, &'a Option<Position>, Option<&'a str>);
    impl fmt::Display for L<'_> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "{}", self.0.display())?;
            if let Some(p) = self.1 {
                write!(f, ":{}:{}", p.line, p.column)?;
            }
            if let Some(k) = self.2 {
                write!(f, ": {k}")?;
            }
            Ok(())
        }
    }
    L(origin, position, key)
}

/// A validation failure before it is given its origin and position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Invalid {
    /// Key named in the message.
    pub key: String,
    /// Path looked up for the position when it differs from `key` (an array
    /// element such as `thresholds.amp_sum_min[3]`, or an override entry).
    pub at: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl Invalid {
    /// A failure about `key`.
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Invalid {
        Invalid {
            key: key.into(),
            at: None,
            message: message.into(),
        }
    }

    /// Points the position at `path` instead of `key`.
    pub fn at(mut self, path: impl Into<String>) -> Invalid {
        self.at = Some(path.into());
        self
    }

    /// The error for text `text` read from `origin`: the position is that of
    /// the written value, or of its enclosing array when an element index
    /// does not exist (a threshold written as one integer for all channels).
    pub fn locate(self, text: &str, origin: &Path) -> ConfigError {
        let path = self.at.as_deref().unwrap_or(&self.key);
        let span = span_of(text, path).or_else(|| {
            let trimmed = path.strip_suffix(']')?;
            span_of(text, &trimmed[..trimmed.rfind('[')?])
        });
        ConfigError::Invalid {
            origin: origin.to_path_buf(),
            position: span.map(|s| Position::at(text, s.start)),
            key: self.key,
            message: self.message,
        }
    }
}

/// Byte span of the value at `path` (`boards[0].int_bytes`) in `text`, if the
/// key is written there. Used after deserialization, when serde's spans are
/// gone, so that validation errors can still point at a line.
pub(crate) fn span_of(text: &str, path: &str) -> Option<Range<usize>> {
    let root = DeTable::parse(text).ok()?;
    find(root.get_ref(), path).map(|(_, v)| v.span())
}

/// The entry at `path` in `root`: the span of its key (`None` for an array
/// element, which has no key of its own) and its value.
pub(crate) fn find<'a, 'i>(
    root: &'a DeTable<'i>,
    path: &str,
) -> Option<(Option<Range<usize>>, &'a Spanned<DeValue<'i>>)> {
    let mut table = root;
    let mut current: Option<(Option<Range<usize>>, &Spanned<DeValue<'_>>)> = None;
    for part in path.split('.') {
        let (name, mut rest) = match part.find('[') {
            Some(i) => part.split_at(i),
            None => (part, ""),
        };
        if let Some((_, v)) = current {
            table = v.get_ref().as_table()?;
        }
        let (key, value) = table.get_key_value(name)?;
        current = Some((Some(key.span()), value));
        while let Some(after) = rest.strip_prefix('[') {
            let close = after.find(']')?;
            let index: usize = after[..close].parse().ok()?;
            current = Some((None, current?.1.get_ref().as_array()?.get(index)?));
            rest = &after[close + 1..];
        }
    }
    current
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_one_based_and_count_characters() {
        let text = "a = 1\nbé = \"x\"\n";
        assert_eq!(Position::at(text, 0), Position { line: 1, column: 1 });
        assert_eq!(Position::at(text, 4), Position { line: 1, column: 5 });
        // "x" starts after "bé = " (é is two bytes, one column).
        let x = text.find("\"x\"").unwrap();
        assert_eq!(Position::at(text, x), Position { line: 2, column: 6 });
        assert_eq!(Position::at(text, 10_000).line, 3);
    }

    #[test]
    fn span_of_walks_tables_and_arrays() {
        let text = "[[boards]]\nname = \"a\"\n[[boards]]\nname = \"b\"\nsteppers = 3\n\
                    [thresholds]\namp_sum_min = [1, 2, 3]\n";
        let span = span_of(text, "boards[1].steppers").unwrap();
        assert_eq!(&text[span.clone()], "3");
        assert_eq!(Position::at(text, span.start).line, 5);
        let span = span_of(text, "thresholds.amp_sum_min[2]").unwrap();
        assert_eq!(&text[span], "3");
        assert!(span_of(text, "boards[2].name").is_none());
        assert!(span_of(text, "layout.strings").is_none());
        assert!(span_of(text, "thresholds.amp_sum_min[0].x").is_none());
    }

    #[test]
    fn display_has_only_the_known_parts() {
        let e = ConfigError::Invalid {
            origin: "config/demo.toml".into(),
            position: Some(Position {
                line: 12,
                column: 5,
            }),
            key: "boards[0].int_bytes".into(),
            message: "int width must be 2 or 4 bytes, not 3".into(),
        };
        assert_eq!(
            e.to_string(),
            "config/demo.toml:12:5: boards[0].int_bytes: int width must be 2 or 4 bytes, not 3"
        );
        let e = ConfigError::Invalid {
            origin: "config/demo.toml".into(),
            position: None,
            key: "layout.z_first_index".into(),
            message: "m".into(),
        };
        assert_eq!(e.to_string(), "config/demo.toml: layout.z_first_index: m");
        let e = ConfigError::Parse {
            origin: "x.toml".into(),
            position: Some(Position { line: 1, column: 3 }),
            key: None,
            message: "invalid key".into(),
        };
        assert_eq!(e.to_string(), "x.toml:1:3: invalid key");
    }
}
