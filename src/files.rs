//! Small files the daemon keeps next to its spool (`counters.json`,
//! `state.json`) and the Unix sockets it serves: the crash-safe ways to
//! write, read and bind them, in one place. Also [`read_regular`], the one
//! way files from outside (the configuration, audmon's feed) are read: a
//! FIFO or a device put in their place must never block or flood the daemon.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use tokio::net::{UnixListener, UnixStream};

/// Writes `bytes` to `path` so that a crash leaves the old file or the new
/// one, never a mix: a temporary file, synced, renamed over, directory synced.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), String> {
    let err = |what: &str, e: std::io::Error| format!("{}: {what}: {e}", path.display());
    let tmp = path.with_extension("json.tmp");
    let mut f = std::fs::File::create(&tmp).map_err(|e| err("create", e))?;
    f.write_all(bytes).map_err(|e| err("write", e))?;
    f.sync_all().map_err(|e| err("sync", e))?;
    std::fs::rename(&tmp, path).map_err(|e| err("rename", e))?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| err("sync directory", e))?;
    }
    Ok(())
}

/// Reads a JSON file whose `format` (given by `format_of`) must be 1.
/// Absent: `(None, None)`. Unreadable, not JSON or another format: the file
/// is moved aside (`<name>.bad-<time>`) so nothing trusts it, and the problem
/// is returned for the log.
pub fn read_json<T: DeserializeOwned>(
    path: &Path,
    format_of: impl Fn(&T) -> u32,
) -> (Option<T>, Option<String>) {
    let problem = match std::fs::read(path) {
        Ok(bytes) => match serde_json::from_slice::<T>(&bytes) {
            Ok(v) if format_of(&v) == 1 => return (Some(v), None),
            Ok(v) => format!("{}: unknown format {}", path.display(), format_of(&v)),
            Err(e) => format!("{}: {e}", path.display()),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return (None, None),
        Err(e) => format!("{}: {e}", path.display()),
    };
    let aside = path.with_extension(format!(
        "bad-{}",
        chrono::Utc::now().format("%Y%m%dT%H%M%SZ")
    ));
    let _ = std::fs::rename(path, aside);
    (None, Some(problem))
}

/// Opens `path` for reading without ever blocking in `open` (`O_NONBLOCK`:
/// a FIFO with no writer would otherwise block for ever) and refuses
/// anything but a regular file, judged on the opened file (`fstat`), so a
/// rename in between cannot slip a FIFO or a device through. The error says
/// what the file is instead ("a FIFO", "a character device").
pub fn open_regular(path: &Path) -> io::Result<File> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK | nix::libc::O_CLOEXEC)
        .open(path)?;
    require_regular(&file.metadata()?)?;
    Ok(file)
}

/// `Ok` for a regular file; otherwise an error saying what it is instead
/// ("not a regular file (it is a FIFO)").
pub fn require_regular(meta: &std::fs::Metadata) -> io::Result<()> {
    let kind = meta.file_type();
    if kind.is_file() {
        return Ok(());
    }
    let what = if kind.is_fifo() {
        "a FIFO"
    } else if kind.is_char_device() {
        "a character device"
    } else if kind.is_block_device() {
        "a block device"
    } else if kind.is_socket() {
        "a socket"
    } else if kind.is_dir() {
        "a directory"
    } else {
        "neither a file nor a device"
    };
    Err(io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("not a regular file (it is {what})"),
    ))
}

/// Reads the regular file at `path` whole, refusing one over `cap` bytes
/// (the error gives the cap) and anything that is not a regular file (see
/// [`open_regular`]). Reads of a regular file do not wait on a writer, so
/// this returns as quickly as the file system answers.
pub fn read_regular(path: &Path, cap: u64) -> io::Result<Vec<u8>> {
    let mut out = read_regular_prefix(path, cap.saturating_add(1))?;
    if out.len() as u64 > cap {
        out.clear();
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("larger than {cap} bytes, the most read"),
        ));
    }
    Ok(out)
}

/// The first `limit` bytes (or fewer) of the regular file at `path`; see
/// [`open_regular`].
pub fn read_regular_prefix(path: &Path, limit: u64) -> io::Result<Vec<u8>> {
    let file = open_regular(path)?;
    let mut out = Vec::with_capacity(usize::try_from(limit.min(1 << 20)).unwrap_or(0));
    file.take(limit).read_to_end(&mut out)?;
    Ok(out)
}

/// Why a socket could not be bound.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// A live server answers on it (another daemon).
    #[error("something already answers on {0}")]
    InUse(PathBuf),
    /// A step failed.
    #[error("{path}: {what}: {error}")]
    Io {
        /// The socket path.
        path: PathBuf,
        /// The step that failed.
        what: &'static str,
        /// The error.
        error: std::io::Error,
    },
}

/// Binds a Unix socket at `path`: a socket file nobody answers on (left by a
/// crash) is removed, one a live server answers on is not touched, the
/// directory is created if needed.
pub async fn bind_fresh(path: &Path) -> Result<UnixListener, BindError> {
    let io = |what: &'static str| {
        move |error| BindError::Io {
            path: path.to_path_buf(),
            what,
            error,
        }
    };
    if tokio::fs::symlink_metadata(path).await.is_ok() {
        if UnixStream::connect(path).await.is_ok() {
            return Err(BindError::InUse(path.to_path_buf()));
        }
        tokio::fs::remove_file(path)
            .await
            .map_err(io("remove the stale socket"))?;
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(io("create its directory"))?;
    }
    UnixListener::bind(path).map_err(io("bind"))
}

/// Removes a socket file the daemon served (at shutdown, or after a failed
/// set-up); a file already gone is fine, anything else is logged.
pub fn remove_socket(path: &Path) {
    if let Err(e) = std::fs::remove_file(path) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(socket = %path.display(), error = %e, "cannot remove the socket file");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, serde::Serialize, Debug, PartialEq)]
    struct F {
        format: u32,
        x: i32,
    }

    #[test]
    fn written_files_read_back_and_bad_ones_are_moved_aside() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("f.json");
        assert_eq!(read_json::<F>(&p, |f| f.format), (None, None));
        write_atomically(&p, br#"{"format":1,"x":7}"#).expect("write");
        assert_eq!(
            read_json::<F>(&p, |f| f.format),
            (Some(F { format: 1, x: 7 }), None)
        );
        write_atomically(&p, br#"{"format":2,"x":7}"#).expect("write");
        let (v, problem) = read_json::<F>(&p, |f| f.format);
        assert!(v.is_none() && problem.is_some_and(|p| p.contains("unknown format 2")));
        assert!(!p.exists(), "moved aside");
    }

    #[test]
    fn only_regular_files_are_read_and_only_up_to_the_cap() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("f");
        std::fs::write(&p, b"12345").expect("write");
        assert_eq!(read_regular(&p, 5).expect("fits"), b"12345");
        let e = read_regular(&p, 4).expect_err("too large");
        assert_eq!(e.to_string(), "larger than 4 bytes, the most read");
        assert_eq!(read_regular_prefix(&p, 2).expect("prefix"), b"12");

        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).expect("mkfifo");
        let e = read_regular(&fifo, 100).expect_err("a FIFO");
        assert_eq!(e.to_string(), "not a regular file (it is a FIFO)");
        let e = read_regular(Path::new("/dev/zero"), 100).expect_err("a device");
        assert_eq!(
            e.to_string(),
            "not a regular file (it is a character device)"
        );
        let e = read_regular(dir.path(), 100).expect_err("a directory");
        assert_eq!(e.to_string(), "not a regular file (it is a directory)");
    }

    #[tokio::test]
    async fn a_stale_socket_is_replaced_and_a_live_one_is_not() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("s.sock");
        let live = bind_fresh(&p).await.expect("bind");
        assert!(matches!(bind_fresh(&p).await, Err(BindError::InUse(_))));
        drop(live);
        bind_fresh(&p).await.expect("stale file replaced");
    }
}
