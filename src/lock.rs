//! One daemon per state directory.
//!
//! Two daemons on one machine would share the spool and the counters file
//! and fight for the serial ports for ever (opening a port resets its
//! board); a second demo deleted the first one's counters and feed. So
//! `stringdriverd run` and `stringdriverd demo` take an exclusive `flock` on
//! `stringdriverd.lock` in the directory of the spool before they touch
//! anything there, and exit at once naming the holder when it is taken.
//!
//! The lock is the kernel's (`flock(2)`): it goes away with the process,
//! however it ends (SIGKILL included), so a stale lock file never blocks a
//! restart. The file holds the holder's pid, for the message only; it is left
//! in place at exit (removing it would race with a new holder).

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

/// The lock file's name in the state directory.
pub const FILE_NAME: &str = "stringdriverd.lock";

/// Why the state directory could not be claimed.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process holds the lock.
    #[error(
        "another stringdriverd ({holder}) uses {}; stop it first (one daemon per state directory: \
         two would share the spool and fight for the boards' serial ports)",
        dir.display()
    )]
    Held {
        /// The state directory.
        dir: PathBuf,
        /// "pid 1234", or what is known of the holder.
        holder: String,
    },
    /// The lock file could not be created or locked.
    #[error("cannot lock {}: {cause}", path.display())]
    Io {
        /// The lock file.
        path: PathBuf,
        /// The OS error.
        cause: std::io::Error,
    },
}

/// The claim on a state directory; released when dropped (or when the
/// process ends).
#[derive(Debug)]
pub struct StateLock {
    _lock: Flock<File>,
    path: PathBuf,
}

impl StateLock {
    /// Claims `dir` (created if missing) for this process.
    pub fn acquire(dir: &Path) -> Result<StateLock, LockError> {
        let path = dir.join(FILE_NAME);
        let io = |cause| LockError::Io {
            path: path.clone(),
            cause,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .open(&path)
            .map_err(io)?;
        let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(l) => l,
            Err((mut file, errno)) if errno == nix::errno::Errno::EWOULDBLOCK => {
                let mut text = String::new();
                let holder = match file.read_to_string(&mut text) {
                    Ok(_) => match text.trim().parse::<u32>() {
                        Ok(pid) => format!("pid {pid}"),
                        Err(_) => "a process that has not written its pid yet".to_string(),
                    },
                    Err(_) => "pid unknown".to_string(),
                };
                return Err(LockError::Held {
                    dir: dir.to_path_buf(),
                    holder,
                });
            }
            Err((_, errno)) => return Err(io(std::io::Error::from(errno))),
        };
        // The pid, for the next one's message.
        let pid = std::process::id();
        lock.set_len(0).map_err(io)?;
        lock.seek(SeekFrom::Start(0)).map_err(io)?;
        lock.write_all(format!("{pid}\n").as_bytes()).map_err(io)?;
        lock.flush().map_err(io)?;
        Ok(StateLock { _lock: lock, path })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The directory `run` and `demo` claim: the spool's.
pub fn state_dir(spool: &Path) -> PathBuf {
    match spool.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_claim_names_the_first_holder_and_a_release_frees_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = StateLock::acquire(dir.path()).expect("first claim");
        let e = StateLock::acquire(dir.path()).expect_err("held");
        let text = e.to_string();
        assert!(
            text.contains(&format!("pid {}", std::process::id())),
            "{text}"
        );
        assert!(text.contains(&dir.path().display().to_string()), "{text}");
        drop(first);
        StateLock::acquire(dir.path()).expect("free again after the holder went");
    }

    #[test]
    fn state_dir_of_a_bare_file_name_is_the_working_directory() {
        assert_eq!(state_dir(Path::new("spool.sqlite")), PathBuf::from("."));
        assert_eq!(
            state_dir(Path::new("/var/lib/stringdriverd/spool.sqlite")),
            PathBuf::from("/var/lib/stringdriverd")
        );
    }
}
