//! Every mistake of a configuration file in one run (`check-config`).
//!
//! Deserialization and validation stop at the first mistake, and each later
//! check depends on the earlier ones having passed. Rather than rewrite every
//! check to go on after a failure, the file is checked again with the entry
//! in error blanked out (replaced by spaces, newlines kept, so that every
//! later line and column is still that of the file as written): an unknown
//! key disappears, an optional value falls back to its default, and the next
//! mistake comes out. This stops when the file passes, when the entry cannot
//! be blanked (a default that is not written, an array element, a required
//! key: blanking it would only report it missing) or after [`MAX_ERRORS`].
//!
//! A check that fails because of a blanking (its message names a blanked
//! key) is not reported. Errors are reported in file order, those without a
//! position (defaults, missing keys) last; every one of them is an error
//! [`super::parse`] would report for the file with the earlier ones fixed.

use std::ops::Range;
use std::path::Path;

use toml::de::{DeTable, DeValue};
use toml::Spanned;

use super::error::find;
use super::{Config, ConfigError};

/// Most errors reported for one file: past this, the file is not a
/// configuration with mistakes but something else.
pub const MAX_ERRORS: usize = 50;

/// Checks `text` like [`super::parse`], but on failure returns every error
/// found, in file order.
pub(super) fn parse_all(
    text: &str,
    origin: &Path,
    host: impl Fn() -> Result<String, String>,
) -> Result<Config, Vec<ConfigError>> {
    let mut current = text.to_string();
    let mut errors: Vec<ConfigError> = Vec::new();
    let mut blanked: Vec<String> = Vec::new();
    while errors.len() < MAX_ERRORS {
        let e = match super::parse_with_host(&current, origin, &host) {
            Ok(config) if errors.is_empty() => return Ok(config),
            Ok(_) => break,
            Err(e) => e,
        };
        // A key blanked for an earlier mistake is now missing: that is not
        // a second mistake, and nothing after it can be checked.
        if e.key().is_some_and(|k| blanked.iter().any(|b| b == k)) {
            break;
        }
        let next = e.key().and_then(|k| blank_entry(&current, k));
        // A check that names a blanked key failed because of the blanking
        // ("X limit switches are configured, but layout.x_index is not").
        let consequence = blanked.iter().any(|b| e.to_string().contains(b.as_str()));
        if let Some(k) = e.key() {
            blanked.push(k.to_string());
        }
        if !consequence {
            errors.push(e);
        }
        match next {
            Some(next) => current = next,
            None => break,
        }
    }
    // Positionless errors (defaults, missing keys) sort after the others.
    errors.sort_by_key(|e| {
        e.position()
            .map_or((usize::MAX, usize::MAX), |p| (p.line, p.column))
    });
    Err(errors)
}

/// `text` with the entry at `path` replaced by spaces, or `None` when it is
/// not written there, is an array element, or the text would not be TOML
/// any more without it.
fn blank_entry(text: &str, path: &str) -> Option<String> {
    let root = DeTable::parse(text).ok()?;
    let (key, value) = find(root.get_ref(), path)?;
    let mut spans = Vec::new();
    entry_spans(text, key?, value, &mut spans)?;
    let mut bytes = text.as_bytes().to_vec();
    for span in spans {
        for b in bytes.get_mut(span)? {
            if *b != b'\n' {
                *b = b' ';
            }
        }
    }
    // Blanking whole characters of a valid text leaves valid UTF-8; checked
    // anyway rather than assumed, like the TOML that must still parse.
    let out = String::from_utf8(bytes).ok()?;
    DeTable::parse(&out).ok()?;
    Some(out)
}

/// The byte ranges that hold the entry whose key is at `key`: `key = value`
/// on its own, or for a table written with a `[header]`, the header's line
/// and every entry of the table.
fn entry_spans(
    text: &str,
    key: Range<usize>,
    value: &Spanned<DeValue<'_>>,
    out: &mut Vec<Range<usize>>,
) -> Option<()> {
    let inline = text.get(value.span())?.starts_with('{');
    match value.get_ref().as_table() {
        Some(table) if !inline => {
            out.push(line_of(text, key.start));
            for (k, v) in table.iter() {
                entry_spans(text, k.span(), v, out)?;
            }
        }
        _ => out.push(key.start..value.span().end),
    }
    Some(())
}

/// The line around byte `at`, without its newline.
fn line_of(text: &str, at: usize) -> Range<usize> {
    let start = text
        .get(..at)
        .and_then(|t| t.rfind('\n'))
        .map_or(0, |i| i + 1);
    let end = text
        .get(at..)
        .and_then(|t| t.find('\n'))
        .map_or(text.len(), |i| at + i);
    start..end
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_blanked_entry_keeps_every_other_position() {
        let text = "a = 1\n[t]\nb = \"x\"\nc = [1,\n 2]\n";
        let out = blank_entry(text, "t.c").unwrap();
        assert_eq!(out, "a = 1\n[t]\nb = \"x\"\n       \n   \n");
        let out = blank_entry(text, "t").unwrap();
        assert_eq!(out.len(), text.len());
        assert_eq!(out.trim(), "a = 1");
        assert!(blank_entry(text, "t.c[0]").is_none());
        assert!(blank_entry(text, "t.d").is_none());
    }

    #[test]
    fn an_entry_of_an_inline_table_is_not_blanked_into_broken_toml() {
        let text = "t = { a = 1, b = 2 }\n";
        assert!(blank_entry(text, "t.a").is_none());
        assert_eq!(blank_entry(text, "t").unwrap().trim(), "");
    }
}
