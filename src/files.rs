//! Small files the daemon keeps next to its spool (`counters.json`,
//! `state.json`) and the Unix sockets it serves: the crash-safe ways to
//! write, read and bind them, in one place.

use std::io::Write;
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
