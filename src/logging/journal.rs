//! The journald layer: each event is one journal entry over journald's
//! native protocol, with its tracing fields as journal fields (`board =
//! "carriage"` becomes `F_BOARD=carriage`) **and** in the MESSAGE text.
//!
//! Plain `journalctl -u stringdriverd` and `systemctl status` show MESSAGE
//! only; fields appear with `-o verbose`. A message such as "poll failed"
//! without its board and error is useless there, so MESSAGE is written as
//! the terminal formatter writes a line: the message, then `key=value` for
//! each field, except a field whose value the message already names (many
//! messages say "board carriage: ..." themselves).
//!
//! The `F_` prefix keeps tracing fields from overwriting fields journald gives
//! a meaning to (`PRIORITY`, `MESSAGE_ID`, `CODE_FILE`, ...).

use std::fmt::{self, Write as _};
use std::io;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::Context;

/// journald's socket for the native protocol.
pub const JOURNALD_SOCKET: &str = "/run/systemd/journal/socket";

/// A value longer than this is cut when an entry is too large for one
/// datagram (journald's limit is the socket's send buffer, about 200 KiB;
/// no event of this daemon comes near it).
const CUT_VALUE_TO: usize = 8 * 1024;

/// Sends events to journald.
pub struct JournalLayer {
    socket: UnixDatagram,
    path: PathBuf,
    syslog_identifier: String,
}

impl JournalLayer {
    /// A layer sending to journald's socket; fails if it cannot be reached
    /// (so the caller can fall back to stderr).
    pub fn new() -> io::Result<JournalLayer> {
        JournalLayer::to(Path::new(JOURNALD_SOCKET))
    }

    /// A layer sending to the datagram socket at `path` (tests).
    pub fn to(path: &Path) -> io::Result<JournalLayer> {
        let socket = UnixDatagram::unbound()?;
        // An empty datagram: journald ignores it, and an absent socket shows now.
        socket.send_to(&[], path)?;
        let syslog_identifier = std::env::args_os()
            .next()
            .as_deref()
            .and_then(|p| Path::new(p).file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "stringdriverd".to_string());
        Ok(JournalLayer {
            socket,
            path: path.to_path_buf(),
            syslog_identifier,
        })
    }

    fn send(&self, entry: &Entry) -> io::Result<()> {
        match self.socket.send_to(&entry.encode(None), &self.path) {
            Err(e) if e.raw_os_error() == Some(nix::libc::EMSGSIZE) => self
                .socket
                .send_to(&entry.encode(Some(CUT_VALUE_TO)), &self.path)
                .map(drop),
            other => other.map(drop),
        }
    }
}

impl<S: Subscriber> tracing_subscriber::Layer<S> for JournalLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let meta = event.metadata();
        let mut fields = Fields::default();
        event.record(&mut fields);
        let mut entry = Entry::default();
        entry.push("PRIORITY", priority(*meta.level()).to_string());
        entry.push("MESSAGE", message_text(&fields.message, &fields.fields));
        for (name, value) in &fields.fields {
            entry.push(&journal_field_name(name), value.clone());
        }
        entry.push("TARGET", meta.target().to_string());
        if let Some(file) = meta.file() {
            entry.push("CODE_FILE", file.to_string());
        }
        if let Some(line) = meta.line() {
            entry.push("CODE_LINE", line.to_string());
        }
        entry.push("SYSLOG_IDENTIFIER", self.syslog_identifier.clone());
        // Nowhere to report a failure to log: journald restarting drops
        // entries, as it would for any other service.
        let _ = self.send(&entry);
    }
}

/// syslog's meanings: `journalctl -p info` shows info and above.
fn priority(level: Level) -> u8 {
    match level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        _ => 7,
    }
}

/// An event's message and its other fields, values as text.
#[derive(Default)]
struct Fields {
    message: String,
    fields: Vec<(String, String)>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, value.to_string());
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.put(field, value.to_string());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        // `%x` fields arrive here as Display wrapped in Debug: unquoted.
        self.put(field, format!("{value:?}"));
    }
}

impl Fields {
    fn put(&mut self, field: &Field, value: String) {
        if field.name() == "message" {
            self.message = value;
        } else {
            self.fields.push((field.name().to_string(), value));
        }
    }
}

/// The MESSAGE text: `message key=value ...` as the terminal formatter
/// writes it, leaving out fields whose value the message already contains
/// as a word of its own.
pub fn message_text(message: &str, fields: &[(String, String)]) -> String {
    let mut text = message.to_string();
    for (name, value) in fields {
        if value.is_empty() || contains_word(message, value) {
            continue;
        }
        if !text.is_empty() {
            text.push(' ');
        }
        let plain = !value.contains(|c: char| c.is_whitespace() || c == '"' || c == '=');
        if plain {
            let _ = write!(text, "{name}={value}");
        } else {
            let _ = write!(text, "{name}={value:?}");
        }
    }
    text
}

/// Whether `word` occurs in `text` with no letter, digit or `_` on either
/// side ("1" is not in "12 missed", "carriage" is in "board carriage:").
fn contains_word(text: &str, word: &str) -> bool {
    let is_word_char = |c: char| c.is_alphanumeric() || c == '_';
    text.match_indices(word).any(|(at, _)| {
        let before = text[..at].chars().next_back();
        let after = text[at + word.len()..].chars().next();
        !before.is_some_and(is_word_char) && !after.is_some_and(is_word_char)
    })
}

/// `F_` and the tracing field's name in journald's alphabet (upper-case
/// letters, digits, `_`).
pub fn journal_field_name(name: &str) -> String {
    let mut out = String::from("F_");
    out.extend(name.chars().map(|c| {
        if c.is_ascii_alphanumeric() {
            c.to_ascii_uppercase()
        } else {
            '_'
        }
    }));
    out
}

/// One journal entry, fields in order.
#[derive(Default)]
struct Entry(Vec<(String, String)>);

impl Entry {
    fn push(&mut self, name: &str, value: String) {
        self.0.push((name.to_string(), value));
    }

    /// journald's native format, every value length-prefixed (binary-safe:
    /// newlines in an error stay in the value). `cut`: the longest value
    /// kept, in bytes, for an entry too large for one datagram.
    fn encode(&self, cut: Option<usize>) -> Vec<u8> {
        let mut buf = Vec::with_capacity(512);
        for (name, value) in &self.0 {
            let value = match cut {
                Some(max) if value.len() > max => {
                    let mut end = max;
                    while !value.is_char_boundary(end) {
                        end -= 1;
                    }
                    format!("{}... ({} bytes cut)", &value[..end], value.len() - end)
                }
                _ => value.clone(),
            };
            buf.extend_from_slice(name.as_bytes());
            buf.push(b'\n');
            buf.extend_from_slice(&(value.len() as u64).to_le_bytes());
            buf.extend_from_slice(value.as_bytes());
            buf.push(b'\n');
        }
        buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::layer::SubscriberExt;

    fn f(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn fields_the_message_lacks_are_appended_as_the_terminal_writes_them() {
        assert_eq!(
            message_text(
                "poll failed",
                &f(&[
                    ("board", "carriage"),
                    ("error", "Input/output error"),
                    ("missed", "3")
                ])
            ),
            "poll failed board=carriage error=\"Input/output error\" missed=3"
        );
        assert_eq!(
            message_text(
                "board link state",
                &f(&[("board", "tuner"), ("state", "connected")])
            ),
            "board link state board=tuner state=connected"
        );
    }

    #[test]
    fn fields_the_message_already_names_are_not_repeated() {
        assert_eq!(
            message_text(
                "board carriage: poll failed (12 missed): timed out",
                &f(&[
                    ("board", "carriage"),
                    ("error", "timed out"),
                    ("missed", "1")
                ])
            ),
            "board carriage: poll failed (12 missed): timed out missed=1",
            "1 is not the 12 of the text"
        );
        assert_eq!(message_text("ready", &f(&[("empty", "")])), "ready");
    }

    #[test]
    fn field_names_are_prefixed_and_upper_case() {
        assert_eq!(journal_field_name("board"), "F_BOARD");
        assert_eq!(journal_field_name("r#type"), "F_R_TYPE");
        assert_eq!(journal_field_name("link.state"), "F_LINK_STATE");
    }

    /// Decodes the native protocol as journald does (length-prefixed form).
    fn decode(mut buf: &[u8]) -> Vec<(String, String)> {
        let mut out = Vec::new();
        while !buf.is_empty() {
            let nl = buf.iter().position(|b| *b == b'\n').expect("name end");
            let name = String::from_utf8(buf[..nl].to_vec()).expect("name");
            let len = u64::from_le_bytes(buf[nl + 1..nl + 9].try_into().expect("len")) as usize;
            let value = String::from_utf8(buf[nl + 9..nl + 9 + len].to_vec()).expect("value");
            assert_eq!(buf[nl + 9 + len], b'\n');
            out.push((name, value));
            buf = &buf[nl + 10 + len..];
        }
        out
    }

    #[test]
    fn an_event_becomes_one_entry_with_context_in_message_and_fields_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("journal.sock");
        let journal = UnixDatagram::bind(&path).expect("bind");
        let layer = JournalLayer::to(&path).expect("layer");
        let mut buf = vec![0u8; 65536];
        let n = journal.recv(&mut buf).expect("the probe datagram");
        assert_eq!(n, 0);
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, || {
            let e = io::Error::other("line 1\nline 2");
            tracing::warn!(board = %"carriage", error = %e, "poll failed");
        });
        let n = journal.recv(&mut buf).expect("the entry");
        let entry = decode(&buf[..n]);
        let get = |k: &str| {
            entry
                .iter()
                .find(|(name, _)| name == k)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(
            get("MESSAGE").as_deref(),
            Some("poll failed board=carriage error=\"line 1\\nline 2\"")
        );
        assert_eq!(get("F_BOARD").as_deref(), Some("carriage"));
        assert_eq!(get("F_ERROR").as_deref(), Some("line 1\nline 2"));
        assert_eq!(get("PRIORITY").as_deref(), Some("4"));
        assert!(get("CODE_LINE").is_some());
    }

    #[test]
    fn an_entry_too_large_for_a_datagram_is_cut_not_lost() {
        let mut entry = Entry::default();
        entry.push("MESSAGE", "é".repeat(10_000));
        let cut = decode(&entry.encode(Some(CUT_VALUE_TO)));
        assert!(cut[0].1.len() < CUT_VALUE_TO + 40, "{}", cut[0].1.len());
        assert!(cut[0].1.ends_with("bytes cut)"));
    }
}
