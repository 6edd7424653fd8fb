//! Reading the feed files: bounded reads, torn-read detection, PID liveness.
//! Everything here blocks; the task calls it on tokio's blocking pool.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::parse::{parse_control, parse_peaks, Control, Frame, ENTRY_BYTES};
use super::{FeedError, CONTROL_FILE, PEAKS_FILE};

/// Largest `audio_control` read. Three numbers fit in 40 bytes; a bigger file
/// is not a control file, and reading it whole would cost for nothing.
const MAX_CONTROL_BYTES: u64 = 256;

/// Reads of `audio_peaks` before giving up on two consecutive ones agreeing.
const PEAK_READS: usize = 6;

/// Pause between two disagreeing reads, so that a frame being written has
/// time to finish (audmon writes a frame in microseconds, a few per second).
const RETRY_PAUSE: Duration = Duration::from_millis(1);

/// Reads and parses `dir/audio_control`.
///
/// [`FeedError::Absent`] when it does not exist, [`FeedError::Io`] when it
/// cannot be read, [`FeedError::Invalid`] when it is over 256 bytes, not
/// UTF-8, or not three valid numbers.
pub fn read_control(dir: &Path) -> Result<Control, FeedError> {
    let bytes = read_capped(dir, CONTROL_FILE, MAX_CONTROL_BYTES + 1)?;
    if bytes.len() as u64 > MAX_CONTROL_BYTES {
        return Err(FeedError::Invalid(format!(
            "{CONTROL_FILE}: longer than {MAX_CONTROL_BYTES} bytes, not a control file"
        )));
    }
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| FeedError::Invalid(format!("{CONTROL_FILE}: not UTF-8 text")))?;
    parse_control(text)
}

/// Reads the first `ctl.frame_bytes()` bytes of `dir/audio_peaks`, and no
/// more, until two consecutive reads agree (at most 6 reads).
///
/// audmon rewrites the file in place, so a single read may hold the start of
/// one frame and the end of the next; two identical reads mean no write
/// landed in between. The residual risk, accepted: a writer stalled in the
/// middle of a write for the whole duration of both reads.
///
/// [`FeedError::Invalid`] when the file holds fewer bytes than announced,
/// or when the reads never agree ("torn read").
pub fn read_peaks(dir: &Path, ctl: &Control) -> Result<Vec<u8>, FeedError> {
    let need = ctl.frame_bytes();
    let limit = u64::try_from(need).unwrap_or(u64::MAX);
    settle(PEAK_READS, RETRY_PAUSE, || {
        let bytes = read_capped(dir, PEAKS_FILE, limit)?;
        if bytes.len() < need {
            return Err(FeedError::Invalid(format!(
                "{PEAKS_FILE}: holds {} bytes, but {CONTROL_FILE} announces {} channels x {} partials x {ENTRY_BYTES} = {need} bytes (truncated, or audmon mid-restart)",
                bytes.len(),
                ctl.channels,
                ctl.partials
            )));
        }
        Ok(bytes)
    })
}

/// Reads `audio_control`, then `audio_peaks`, and parses the frame.
///
/// The control is read again after the peaks; if it changed (audmon
/// restarted with other sizes), the whole read starts over, a bounded
/// number of times. Does not look at whether audmon is alive (see
/// [`pid_alive`]) nor at how old the frame is (see
/// [`FeedMonitor`](super::FeedMonitor)).
pub fn read_frame(dir: &Path) -> Result<Frame, FeedError> {
    let (ctl, bytes) = read_consistent(dir)?;
    parse_peaks(&bytes, &ctl)
}

/// Control and peak bytes that belong together: the control is the same
/// before and after the peaks were read.
pub(crate) fn read_consistent(dir: &Path) -> Result<(Control, Vec<u8>), FeedError> {
    let mut ctl = read_control(dir)?;
    for _ in 0..PEAK_READS {
        let bytes = read_peaks(dir, &ctl);
        let after = read_control(dir)?;
        if after == ctl {
            return bytes.map(|b| (ctl, b));
        }
        ctl = after;
    }
    Err(FeedError::Invalid(format!(
        "{CONTROL_FILE}: changed during each of {PEAK_READS} reads"
    )))
}

/// Whether a process with this PID exists (signal 0). A process of another
/// user counts as alive (`EPERM` means it exists); so does any error other
/// than "no such process", because a feed must not be declared stale on a
/// guess. PID reuse after audmon died is not detected.
pub fn pid_alive(pid: i32) -> bool {
    use nix::errno::Errno;
    use nix::sys::signal::kill;
    use nix::unistd::Pid;
    // pid <= 0 would address a process group (or every process) instead.
    if pid <= 0 {
        return false;
    }
    !matches!(kill(Pid::from_raw(pid), None), Err(Errno::ESRCH))
}

/// Calls `read` until two consecutive results are equal `Ok`s, at most
/// `reads` times. An error is returned as soon as it happens: a missing or
/// truncated file is not a torn read.
pub(crate) fn settle(
    reads: usize,
    pause: Duration,
    mut read: impl FnMut() -> Result<Vec<u8>, FeedError>,
) -> Result<Vec<u8>, FeedError> {
    let mut previous = read()?;
    for _ in 1..reads {
        let next = read()?;
        if next == previous {
            return Ok(next);
        }
        previous = next;
        std::thread::sleep(pause);
    }
    Err(FeedError::Invalid(format!(
        "{PEAKS_FILE}: torn read (no two consecutive reads of {reads} agreed; audmon writing faster than it can be read?)"
    )))
}

/// What shows that `audio_peaks` was written: its modification time
/// (nanoseconds on /dev/shm), inode and size. audmon rewrites the file for
/// every frame, silent ones included, so the mark moves while audmon works
/// even when the bytes repeat (`reference/audmon-feed.md`, "Silence is
/// data"); a file replaced by a rename has another inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteMark {
    /// Last modification.
    pub modified: SystemTime,
    /// Inode number.
    pub inode: u64,
    /// Size in bytes.
    pub len: u64,
}

/// The [`WriteMark`] of `dir/audio_peaks`, from `stat` (which does not
/// open the file, so it cannot block on a FIFO). [`FeedError::Absent`] when
/// it does not exist; [`FeedError::Io`] when it is not a regular file.
pub fn peaks_written(dir: &Path) -> Result<WriteMark, FeedError> {
    let path = dir.join(PEAKS_FILE);
    let meta = std::fs::metadata(&path).map_err(|e| io_error(&path, e))?;
    crate::files::require_regular(&meta).map_err(|e| io_error(&path, e))?;
    Ok(WriteMark {
        modified: meta.modified().map_err(|e| io_error(&path, e))?,
        inode: meta.ino(),
        len: meta.len(),
    })
}

fn io_error(path: &Path, source: io::Error) -> FeedError {
    if source.kind() == io::ErrorKind::NotFound {
        FeedError::Absent(path.to_path_buf())
    } else {
        FeedError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Reads at most `limit` bytes of `dir/name`, which must be a regular file:
/// opened without blocking, so a FIFO or a device in its place is an error
/// at once instead of a reader stuck for ever ([`crate::files::open_regular`]).
fn read_capped(dir: &Path, name: &str, limit: u64) -> Result<Vec<u8>, FeedError> {
    let path: PathBuf = dir.join(name);
    crate::files::read_regular_prefix(&path, limit).map_err(|e| io_error(&path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settle_accepts_two_agreeing_reads() {
        let mut reads = vec![vec![1], vec![2], vec![2]].into_iter();
        let got = settle(6, Duration::ZERO, || Ok(reads.next().unwrap_or_default()));
        assert_eq!(got.unwrap(), vec![2]);
        assert_eq!(reads.len(), 0);
    }

    #[test]
    fn settle_reports_a_torn_read_after_a_bounded_number_of_reads() {
        let mut n = 0u8;
        let got = settle(6, Duration::ZERO, || {
            n += 1;
            Ok(vec![n])
        });
        match got {
            Err(FeedError::Invalid(m)) => assert!(m.contains("torn read"), "{m}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(n, 6);
    }

    #[test]
    fn settle_passes_errors_through() {
        let got = settle(6, Duration::ZERO, || {
            Err(FeedError::Invalid("short".into()))
        });
        assert!(matches!(got, Err(FeedError::Invalid(m)) if m == "short"));
    }

    #[test]
    fn no_process_group_is_ever_probed() {
        assert!(!pid_alive(0));
        assert!(!pid_alive(-1));
        assert!(pid_alive(std::process::id() as i32));
    }
}
