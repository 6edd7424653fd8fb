//! Logging set-up: journald's native protocol under systemd, readable lines
//! on stderr otherwise.
//!
//! Started by systemd with stderr connected to the journal, the daemon sends
//! each event to journald as one entry whose tracing fields are journal
//! fields (`board = "carriage"` becomes `F_BOARD=carriage`), so that
//! `journalctl -u stringdriverd F_BOARD=carriage` selects them, and are also
//! in its MESSAGE text as on a terminal ([`journal`]). systemd says
//! so through `JOURNAL_STREAM` (`DEV:INO` of the stream it connected);
//! a value that does not match stderr was inherited from an ancestor (say, a
//! shell started from a service) and is ignored, as systemd.exec(5) asks.
//!
//! The level comes from `RUST_LOG` if it is set and valid, else from the
//! configuration (`[log] level`).

use std::ffi::OsStr;
use std::io::IsTerminal;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::MetadataExt;

mod journal;

use tracing_subscriber::layer::{Layered, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

/// The subscriber below the output layer: the registry, filtered.
type Filtered = Layered<EnvFilter, Registry>;

/// Where events are written: journald, or stderr in one of its formats.
type Output = Box<dyn Layer<Filtered> + Send + Sync>;

/// Installs the global subscriber; a second call is a no-op.
///
/// Under systemd (`JOURNAL_STREAM` names stderr) events go to journald; if
/// its socket cannot be opened they go to stderr without timestamps (the
/// journal adds its own) and a warning says why. Elsewhere, stderr with
/// timestamps, in colour only on a terminal and when `NO_COLOR` is unset or
/// empty.
pub fn init(level: &str) {
    // Opening journald's socket only to drop it again would be wasted work.
    if tracing::dispatcher::has_been_set() {
        return;
    }
    let journal =
        journal_stream_matches(std::env::var("JOURNAL_STREAM").ok().as_deref(), stderr_id());
    let (output, journald_error) = if journal {
        match journald() {
            Ok(layer) => (layer, None),
            Err(e) => (stderr_layer(false, false), Some(e)),
        }
    } else {
        let ansi = use_ansi(
            std::io::stderr().is_terminal(),
            std::env::var_os("NO_COLOR").as_deref(),
        );
        (stderr_layer(true, ansi), None)
    };
    let installed = tracing_subscriber::registry()
        .with(filter(level))
        .with(output)
        .try_init()
        .is_ok();
    // Only the call that installed the subscriber reports its fallback.
    if let (true, Some(e)) = (installed, journald_error) {
        tracing::warn!(
            error = %e,
            "cannot open journald's socket /run/systemd/journal/socket; logging to stderr"
        );
    }
}

/// `RUST_LOG` when set and valid, else `level`, else `info` (a level that
/// does not parse must not silence the daemon).
fn filter(level: &str) -> EnvFilter {
    EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"))
}

/// The journald layer ([`journal::JournalLayer`]): fields with the prefix
/// `F_`, the essentials also in MESSAGE, syslog's priorities.
fn journald() -> std::io::Result<Output> {
    Ok(Box::new(journal::JournalLayer::new()?))
}

/// Readable lines on stderr.
fn stderr_layer(with_time: bool, ansi: bool) -> Output {
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    if with_time {
        Box::new(layer)
    } else {
        Box::new(layer.without_time())
    }
}

/// `(st_dev, st_ino)` of stderr, or `None` if it is closed.
fn stderr_id() -> Option<(u64, u64)> {
    file_id(std::io::stderr().as_fd())
}

/// `(st_dev, st_ino)` of the file open at `fd`.
fn file_id(fd: BorrowedFd<'_>) -> Option<(u64, u64)> {
    // std's metadata uses statx/fstat64, so inode numbers stay whole on
    // 32-bit hosts (Raspberry Pi OS armhf); the duplicate fd closes on drop.
    let meta = std::fs::File::from(fd.try_clone_to_owned().ok()?)
        .metadata()
        .ok()?;
    Some((meta.dev(), meta.ino()))
}

/// Whether `journal_stream`, the value of `JOURNAL_STREAM` (`DEV:INO`, both
/// decimal), names the file whose `(st_dev, st_ino)` is `stderr`.
///
/// Anything else (unset, malformed, another file, stderr closed) means
/// stderr is not the journal.
fn journal_stream_matches(journal_stream: Option<&str>, stderr: Option<(u64, u64)>) -> bool {
    let (Some(value), Some(stderr)) = (journal_stream, stderr) else {
        return false;
    };
    let Some((dev, ino)) = value.split_once(':') else {
        return false;
    };
    match (dev.parse::<u64>(), ino.parse::<u64>()) {
        (Ok(dev), Ok(ino)) => (dev, ino) == stderr,
        _ => false,
    }
}

/// Whether stderr lines get ANSI colours: only on a terminal, and not when
/// `NO_COLOR` is set to a non-empty value (<https://no-color.org>).
fn use_ansi(stderr_is_terminal: bool, no_color: Option<&OsStr>) -> bool {
    stderr_is_terminal && no_color.is_none_or(|v| v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_stream_must_name_stderr_exactly() {
        assert!(journal_stream_matches(
            Some("2049:123456"),
            Some((2049, 123_456))
        ));
        assert!(journal_stream_matches(
            Some("18446744073709551615:18446744073709551615"),
            Some((u64::MAX, u64::MAX))
        ));
        // Inherited from an ancestor: another stream than this stderr.
        assert!(!journal_stream_matches(
            Some("2049:123456"),
            Some((2049, 123_457))
        ));
        assert!(!journal_stream_matches(
            Some("2050:123456"),
            Some((2049, 123_456))
        ));
    }

    #[test]
    fn no_journal_stream_or_no_stderr_is_not_the_journal() {
        assert!(!journal_stream_matches(None, Some((1, 2))));
        assert!(!journal_stream_matches(Some("1:2"), None));
        assert!(!journal_stream_matches(None, None));
    }

    #[test]
    fn malformed_journal_stream_is_not_the_journal() {
        for value in [
            "",
            ":",
            "1",
            "1:",
            ":2",
            "1:2:3",
            " 1:2",
            "1:2\n",
            "0x1:2",
            "-1:2",
            "1:-2",
            "a:b",
            "1;2",
            "18446744073709551616:2",
        ] {
            assert!(
                !journal_stream_matches(Some(value), Some((1, 2))),
                "{value:?} was taken for stderr"
            );
        }
    }

    #[test]
    fn journal_stream_in_systemd_format_names_the_file() {
        // systemd writes st_dev and st_ino of the stream's socket in decimal;
        // a file stands in for it here.
        let file = tempfile::tempfile().expect("temporary file");
        let meta = file.metadata().expect("metadata");
        let value = format!("{}:{}", meta.dev(), meta.ino());
        let id = file_id(file.as_fd());
        assert_eq!(id, Some((meta.dev(), meta.ino())));
        assert!(journal_stream_matches(Some(&value), id));
        let other = tempfile::tempfile().expect("temporary file");
        assert!(!journal_stream_matches(
            Some(&value),
            file_id(other.as_fd())
        ));
    }

    #[test]
    fn colours_only_on_a_terminal_without_no_color() {
        assert!(use_ansi(true, None));
        assert!(use_ansi(true, Some(OsStr::new(""))));
        assert!(!use_ansi(true, Some(OsStr::new("1"))));
        assert!(!use_ansi(false, None));
        assert!(!use_ansi(false, Some(OsStr::new(""))));
    }
}
