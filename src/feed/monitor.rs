//! From files to a [`FeedStatus`]: the "not written since" clock and one read.

use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::parse::{parse_peaks, Control};
use super::read::{peaks_written, pid_alive, read_consistent, read_control, WriteMark};
use super::status::{FeedState, FeedStatus, FeedValues};
use super::{FeedError, CONTROL_FILE, PEAKS_FILE};

/// Remembers the last [`WriteMark`] of `audio_peaks` and when it last
/// moved. Pure: the caller passes the time, so staleness is testable
/// without sleeping.
///
/// It watches the *writing*: silent strings give all-zero frames that
/// repeat byte for byte, and they are valid readings as long as audmon
/// keeps writing them. Changed content is evidence of a write too (a
/// file system whose timestamps are coarser than the writes would
/// otherwise hide one), so a change of either counts; unchanged content
/// alone never makes a feed stale.
///
/// The first mark observed counts as a change at that time: how long it
/// had been there before is unknown, and assuming "just now" delays a stale
/// verdict by at most `stale_after` instead of inventing one.
#[derive(Debug, Clone, Default)]
pub struct ChangeTracker {
    last: Option<(WriteMark, u32)>,
    changed_at: Option<DateTime<Utc>>,
}

impl ChangeTracker {
    /// A tracker that has seen nothing.
    pub fn new() -> ChangeTracker {
        ChangeTracker::default()
    }

    /// Records the mark and the frame bytes seen at `now`; returns whether
    /// either differs from the previous observation (always true for the
    /// first).
    pub fn observe(&mut self, mark: WriteMark, frame: &[u8], now: DateTime<Utc>) -> bool {
        let seen = (mark, crc32fast::hash(frame));
        let changed = self.last != Some(seen);
        if changed {
            self.last = Some(seen);
            self.changed_at = Some(now);
        } else if self.changed_at.is_some_and(|t| now < t) {
            // The wall clock went back: restart the count rather than wait
            // for the clock to catch up with a time in the future.
            self.changed_at = Some(now);
        }
        changed
    }

    /// When the file was last seen written; `None` before the first
    /// observation.
    pub fn changed_at(&self) -> Option<DateTime<Utc>> {
        self.changed_at
    }

    /// How long the file has not been written at `now` (zero if `now` is
    /// before the last change); `None` before the first observation.
    pub fn unchanged_for(&self, now: DateTime<Utc>) -> Option<Duration> {
        self.changed_at
            .map(|t| (now - t).to_std().unwrap_or(Duration::ZERO))
    }

    /// Whether the file has not been written for longer than `stale_after`.
    pub fn is_stale(&self, now: DateTime<Utc>, stale_after: Duration) -> bool {
        self.unchanged_for(now).is_some_and(|d| d > stale_after)
    }

    /// Forgets everything (files gone, or audmon restarted).
    pub fn reset(&mut self) {
        *self = ChangeTracker::default();
    }
}

/// Reads the feed directory and judges what it holds. Blocking: the task of
/// [`spawn`](super::spawn) runs [`poll`](FeedMonitor::poll) on tokio's
/// blocking pool; tests call it directly with the times they choose.
#[derive(Debug, Clone)]
pub struct FeedMonitor {
    dir: PathBuf,
    stale_after: Duration,
    tracker: ChangeTracker,
    control: Option<Control>,
}

impl FeedMonitor {
    /// A monitor of `dir` that calls the feed stale once `audio_peaks` has
    /// not been written for longer than `stale_after`.
    pub fn new(dir: impl Into<PathBuf>, stale_after: Duration) -> FeedMonitor {
        FeedMonitor {
            dir: dir.into(),
            stale_after,
            tracker: ChangeTracker::new(),
            control: None,
        }
    }

    /// The directory read.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Reads the files once, as of `now`.
    ///
    /// In order: a missing file is `Absent`; an unreadable or unparsable
    /// control (or a file that is not a regular file) is `Invalid`; a dead
    /// audmon PID is `Stale` (the peaks are not even read); unusable peaks
    /// are `Invalid`; a peaks file not written for longer than
    /// `stale_after` is `Stale`, whatever its content; otherwise `Ok` with
    /// the values, all-zero ones (silence) included. The status is valid
    /// until `now + stale_after` ([`FeedStatus::valid_until`]).
    pub fn poll(&mut self, now: DateTime<Utc>) -> FeedStatus {
        let mut status = FeedStatus {
            read_at: Some(now),
            valid_until: chrono::Duration::from_std(self.stale_after)
                .ok()
                .and_then(|d| now.checked_add_signed(d)),
            ..FeedStatus::new()
        };
        let ctl = match read_control(&self.dir) {
            Ok(ctl) => ctl,
            Err(e) => {
                self.forget_if_absent(&e);
                status.state = e.state();
                return status;
            }
        };
        self.note_control(ctl);
        status.pid = Some(ctl.pid);
        status.channels = ctl.channels;
        if !pid_alive(ctl.pid) {
            status.state = FeedState::Stale(format!(
                "audmon (PID {} in {CONTROL_FILE}) is not running",
                ctl.pid
            ));
            status.frame_changed_at = self.tracker.changed_at();
            return status;
        }
        // The mark before the bytes: a write that lands in between makes the
        // next poll see a change, never hides one.
        let read =
            peaks_written(&self.dir).and_then(|mark| Ok((mark, read_consistent(&self.dir)?)));
        let (mark, (ctl, bytes)) = match read {
            Ok(read) => read,
            Err(e) => {
                self.forget_if_absent(&e);
                status.state = e.state();
                status.frame_changed_at = self.tracker.changed_at();
                return status;
            }
        };
        // The control may have changed between the two reads.
        self.note_control(ctl);
        status.pid = Some(ctl.pid);
        status.channels = ctl.channels;
        self.tracker.observe(mark, &bytes, now);
        status.frame_changed_at = self.tracker.changed_at();
        let frame = match parse_peaks(&bytes, &ctl) {
            Ok(frame) => frame,
            Err(e) => {
                status.state = e.state();
                return status;
            }
        };
        if self.tracker.is_stale(now, self.stale_after) {
            let since = self
                .tracker
                .changed_at()
                .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
                .unwrap_or_default();
            status.state = FeedState::Stale(format!(
                "{PEAKS_FILE} not written since {since}, longer than {}",
                humantime::format_duration(self.stale_after)
            ));
            return status;
        }
        status.state = FeedState::Ok;
        status.values = Some(FeedValues::from(&frame));
        status
    }

    /// A new control (audmon restarted or resized) means a new stream of
    /// frames: its first frame is a change even if the bytes match.
    fn note_control(&mut self, ctl: Control) {
        if self.control != Some(ctl) {
            self.tracker.reset();
            self.control = Some(ctl);
        }
    }

    fn forget_if_absent(&mut self, e: &FeedError) {
        if matches!(e, FeedError::Absent(_)) {
            self.tracker.reset();
            self.control = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use std::time::SystemTime;

    fn t(secs: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_700_000_000 + secs, 0).unwrap()
    }

    fn mark(nanos: u64) -> WriteMark {
        WriteMark {
            modified: SystemTime::UNIX_EPOCH + Duration::from_nanos(nanos),
            inode: 7,
            len: 64,
        }
    }

    #[test]
    fn first_observation_is_a_change_and_starts_the_clock() {
        let mut c = ChangeTracker::new();
        assert_eq!(c.changed_at(), None);
        assert!(!c.is_stale(t(100), Duration::from_secs(1)));
        assert!(c.observe(mark(1), b"same", t(0)));
        assert_eq!(c.changed_at(), Some(t(0)));
        assert_eq!(c.unchanged_for(t(3)), Some(Duration::from_secs(3)));
    }

    #[test]
    fn an_unmoved_mark_becomes_stale_only_past_the_limit() {
        let limit = Duration::from_secs(2);
        let mut c = ChangeTracker::new();
        c.observe(mark(1), b"same", t(0));
        assert!(!c.observe(mark(1), b"same", t(1)));
        assert!(!c.is_stale(t(2), limit), "exactly the limit is not longer");
        assert!(!c.observe(mark(1), b"same", t(3)));
        assert!(c.is_stale(t(3), limit));
        // One nanosecond later is a write, even of the same bytes.
        assert!(c.observe(mark(2), b"same", t(4)));
        assert!(!c.is_stale(t(4), limit));
        assert_eq!(c.changed_at(), Some(t(4)));
        // A file replaced by a rename with the same time is a write too.
        assert!(c.observe(
            WriteMark {
                inode: 8,
                ..mark(2)
            },
            b"same",
            t(5)
        ));
        // So is new content under an unmoved time (coarse timestamps).
        assert!(c.observe(
            WriteMark {
                inode: 8,
                ..mark(2)
            },
            b"new",
            t(6)
        ));
    }

    #[test]
    fn a_clock_going_back_restarts_the_count() {
        let limit = Duration::from_secs(2);
        let mut c = ChangeTracker::new();
        c.observe(mark(1), b"same", t(100));
        assert_eq!(c.unchanged_for(t(50)), Some(Duration::ZERO));
        c.observe(mark(1), b"same", t(50));
        assert_eq!(c.changed_at(), Some(t(50)));
        assert!(c.is_stale(t(53), limit));
    }

    #[test]
    fn reset_forgets_the_mark() {
        let mut c = ChangeTracker::new();
        c.observe(mark(1), b"same", t(0));
        c.reset();
        assert_eq!(c.changed_at(), None);
        assert!(c.observe(mark(1), b"same", t(5)));
        assert_eq!(c.changed_at(), Some(t(5)));
    }
}
