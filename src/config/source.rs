//! Reading a config file, and placing its mistakes: every compile step reports an
//! [`Invalid`] naming a key path (`routes[2].upstream`); the file's own parse tree, with the
//! parser's spans, tells which line that key is written on.

use std::fmt;
use std::path::{Path, PathBuf};

use toml::de::{DeTable, DeValue};
use toml::Spanned;

use super::Config;

/// Where a problem in a config file is, and what it is.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}:{line}:{column}: {message}\n{excerpt}")]
    Invalid {
        path: String,
        line: usize,
        column: usize,
        message: String,
        excerpt: String,
    },
    #[error("{path}: logging.{log}_log: cannot open: {source}")]
    Log {
        path: String,
        log: &'static str,
        source: std::io::Error,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Key(Box<str>),
    Index(usize),
}

/// A key in the config, from the root: `issuers.kc.audiences`, `routes[3].allow[0].roles`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyPath(Vec<Segment>);

impl KeyPath {
    /// The whole file.
    pub fn root() -> Self {
        Self::default()
    }

    /// A key of this table.
    #[must_use]
    pub fn key(&self, key: &str) -> Self {
        let mut path = self.clone();
        path.0.push(Segment::Key(key.into()));
        path
    }

    /// An element of this array.
    #[must_use]
    pub fn index(&self, i: usize) -> Self {
        let mut path = self.clone();
        path.0.push(Segment::Index(i));
        path
    }
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, segment) in self.0.iter().enumerate() {
            match segment {
                Segment::Key(k) if i == 0 => write!(f, "{k}")?,
                Segment::Key(k) => write!(f, ".{k}")?,
                Segment::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

/// A value the config may not have: the key it is about and why. The file position is found
/// when it is reported ([`Source::locate`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    /// The key pointed at: the deepest part of it written in the file.
    at: KeyPath,
    message: String,
}

impl Invalid {
    /// A mistake in the value of `key`; the message names the key.
    pub fn new(key: KeyPath, message: impl fmt::Display) -> Self {
        Self {
            message: format!("{key}: {message}"),
            at: key,
        }
    }

    /// Points at `table` rather than the key the message names, for checks about a table
    /// as a whole.
    #[must_use]
    pub fn pointing_at(mut self, table: KeyPath) -> Self {
        self.at = table;
        self
    }
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// A loaded config file: its path and text, kept to place errors.
#[derive(Debug, Clone)]
pub struct Source {
    pub path: PathBuf,
    pub text: String,
}

/// Reads and parses a config file. Semantic checks happen when it is compiled.
pub fn load(path: &Path) -> Result<(Config, Source), ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.display().to_string(),
        source,
    })?;
    let source = Source {
        path: path.to_path_buf(),
        text,
    };
    let config = source.parse()?;
    Ok((config, source))
}

impl Source {
    /// A config from text, as if read from `path` (tests, and the loader).
    pub fn parse(&self) -> Result<Config, ConfigError> {
        toml::from_str::<Config>(&self.text).map_err(|e| {
            let at = e.span().map_or(0, |s| s.start);
            let message = e.message().trim_end();
            match self.key_at(at) {
                Some(key) => self.error(at, format!("{key}: {message}")),
                None => self.error(at, message.to_string()),
            }
        })
    }

    /// Resolves a path written relative to the config file's directory.
    pub fn relative(&self, path: &Path) -> PathBuf {
        match self.path.parent() {
            Some(dir) if path.is_relative() => dir.join(path),
            _ => path.to_path_buf(),
        }
    }

    /// Places `invalid` at the line of its key: the deepest part of its path written in the
    /// file (a table's header when the key itself is not written).
    pub fn locate(&self, invalid: Invalid) -> ConfigError {
        let at = DeTable::parse(&self.text)
            .ok()
            .and_then(|doc| offset_of(doc.get_ref(), &invalid.at.0))
            .unwrap_or(0);
        self.error(at, invalid.message)
    }

    /// The key whose key or value covers byte `offset`, for errors the parser reports.
    fn key_at(&self, offset: usize) -> Option<KeyPath> {
        let doc = DeTable::parse(&self.text).ok()?;
        key_in_table(doc.get_ref(), offset, &KeyPath::root())
    }

    /// An error at byte offset `at` of the file.
    pub fn error(&self, at: usize, message: String) -> ConfigError {
        let at = at.min(self.text.len());
        let before = self.text.get(..at).unwrap_or("");
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = before[line_start..].chars().count() + 1;
        let line_text = self.text[line_start..].lines().next().unwrap_or("");
        ConfigError::Invalid {
            path: self.path.display().to_string(),
            line,
            column,
            message,
            excerpt: format!("  {line} | {line_text}"),
        }
    }
}

/// The deepest key under `at` whose key or value covers `offset`. A table opened by a
/// header does not cover the keys written under it, so every table is searched.
fn key_in_table(table: &DeTable<'_>, offset: usize, at: &KeyPath) -> Option<KeyPath> {
    table.iter().find_map(|(key, value)| {
        let path = at.key(key.get_ref());
        key_in_value(value, offset, &path)
            .or_else(|| (covers(key, offset) || covers(value, offset)).then_some(path))
    })
}

fn key_in_value(value: &Spanned<DeValue<'_>>, offset: usize, at: &KeyPath) -> Option<KeyPath> {
    match value.get_ref() {
        DeValue::Table(t) => key_in_table(t, offset, at),
        DeValue::Array(items) => items.iter().enumerate().find_map(|(i, item)| {
            let path = at.index(i);
            key_in_value(item, offset, &path).or_else(|| covers(item, offset).then_some(path))
        }),
        _ => None,
    }
}

fn covers<T>(spanned: &Spanned<T>, offset: usize) -> bool {
    spanned.span().contains(&offset)
}

/// Where the deepest written part of `path` starts.
fn offset_of(doc: &DeTable<'_>, path: &[Segment]) -> Option<usize> {
    let mut found = None;
    let mut value: Option<&DeValue<'_>> = None;
    for segment in path {
        let next = match (segment, value) {
            (Segment::Key(k), None) => doc.get_key_value(&**k).map(|(k, v)| (k.span(), v)),
            (Segment::Key(k), Some(DeValue::Table(t))) => {
                t.get_key_value(&**k).map(|(k, v)| (k.span(), v))
            }
            (Segment::Index(i), Some(DeValue::Array(items))) => {
                items.get(*i).map(|v| (v.span(), v))
            }
            _ => None,
        };
        let Some((span, next)) = next else {
            break;
        };
        found = Some(span.start);
        value = Some(next.get_ref());
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(text: &str) -> Source {
        Source {
            path: "gw.toml".into(),
            text: text.into(),
        }
    }

    fn line_of(text: &str, key: KeyPath) -> usize {
        match source(text).locate(Invalid::new(key, "bad")) {
            ConfigError::Invalid { line, .. } => line,
            other => panic!("{other}"),
        }
    }

    const DOC: &str = "[server]\nlisten = []\n\n[issuers.x]\nissuer = \"i\"\n\n[[routes]]\npath = \"/a\"\n\n[[routes]]\npath = \"/b\"\nallow = [{ roles = [\"r\"] }]\n";

    #[test]
    fn keys_are_found_on_their_lines() {
        let root = KeyPath::root();
        assert_eq!(line_of(DOC, root.key("server").key("listen")), 2);
        assert_eq!(line_of(DOC, root.key("issuers").key("x").key("issuer")), 5);
        assert_eq!(line_of(DOC, root.key("routes").index(1).key("path")), 11);
        let roles = root
            .key("routes")
            .index(1)
            .key("allow")
            .index(0)
            .key("roles");
        assert_eq!(line_of(DOC, roles), 12);
    }

    #[test]
    fn unwritten_keys_point_at_their_table() {
        let root = KeyPath::root();
        assert_eq!(
            line_of(DOC, root.key("issuers").key("x").key("audiences")),
            4
        );
        assert_eq!(
            line_of(DOC, root.key("routes").index(1).key("upstream")),
            10
        );
        assert_eq!(line_of(DOC, root.key("admin").key("listen")), 1);
    }

    #[test]
    fn paths_print_as_written() {
        let p = KeyPath::root().key("routes").index(2).key("allow").index(0);
        assert_eq!(p.to_string(), "routes[2].allow[0]");
        assert_eq!(
            Invalid::new(p.key("roles"), "x").to_string(),
            "routes[2].allow[0].roles: x"
        );
    }

    #[test]
    fn parse_errors_name_their_key() {
        let err = source("[server]\nlisten = []\nthreads = \"two\"\n").parse();
        let Err(ConfigError::Invalid { line, message, .. }) = err else {
            panic!("accepted");
        };
        assert_eq!(line, 3);
        assert!(message.starts_with("server.threads: "), "{message}");
    }
}
