//! What the feed reader publishes.

use std::fmt;

use chrono::{DateTime, Utc};

use super::parse::Frame;

/// Whether the feed can be used, and if not, why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FeedState {
    /// A consistent, recent frame from a running audmon.
    Ok,
    /// `audio_control` or `audio_peaks` does not exist (audmon not started,
    /// or restarting). Also the state before the first read.
    Absent(String),
    /// The files are there but say nothing current: audmon's PID is not
    /// alive, or the frame has not changed for longer than `stale_after`.
    Stale(String),
    /// The files cannot be used: control garbage, sizes that disagree, a
    /// truncated peaks file, non-finite or negative values, a torn read, or
    /// an I/O error other than "not found".
    Invalid(String),
}

impl FeedState {
    /// Short name for logs and status lines.
    pub fn name(&self) -> &'static str {
        match self {
            FeedState::Ok => "ok",
            FeedState::Absent(_) => "absent",
            FeedState::Stale(_) => "stale",
            FeedState::Invalid(_) => "invalid",
        }
    }

    /// Why the feed is not usable (`None` when it is).
    pub fn reason(&self) -> Option<&str> {
        match self {
            FeedState::Ok => None,
            FeedState::Absent(r) | FeedState::Stale(r) | FeedState::Invalid(r) => Some(r),
        }
    }

    /// Whether the feed is usable.
    pub fn is_ok(&self) -> bool {
        matches!(self, FeedState::Ok)
    }
}

impl fmt::Display for FeedState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.reason() {
            None => f.write_str(self.name()),
            Some(r) => write!(f, "{} ({r})", self.name()),
        }
    }
}

/// The per-channel values the stepper side uses; channel c is string c.
#[derive(Debug, Clone, PartialEq)]
pub struct FeedValues {
    /// Per channel: partials whose amplitude is > 0.
    pub voice_count: Vec<i32>,
    /// Per channel: sum of the amplitudes.
    pub amp_sum: Vec<f32>,
}

impl From<&Frame> for FeedValues {
    fn from(frame: &Frame) -> FeedValues {
        FeedValues {
            voice_count: frame.voice_count.clone(),
            amp_sum: frame.amp_sum.clone(),
        }
    }
}

/// Everything known about the feed after a read.
#[derive(Debug, Clone, PartialEq)]
pub struct FeedStatus {
    /// Whether the feed is usable.
    pub state: FeedState,
    /// Channels announced by `audio_control` in this read; 0 when it could
    /// not be read or parsed.
    pub channels: usize,
    /// The frame's values; `Some` only when `state` is [`FeedState::Ok`]:
    /// a stale or invalid feed has no values, not old ones.
    pub values: Option<FeedValues>,
    /// When the frame bytes were last seen to change (first seen counts as
    /// a change); `None` while there is no frame.
    pub frame_changed_at: Option<DateTime<Utc>>,
    /// When the files were last read; `None` before the first read.
    pub read_at: Option<DateTime<Utc>>,
    /// audmon's PID from `audio_control`; `None` when it could not be read.
    pub pid: Option<i32>,
}

impl FeedStatus {
    /// The status before anything was read: absent, nothing known.
    pub fn new() -> FeedStatus {
        FeedStatus {
            state: FeedState::Absent("not read yet".to_string()),
            channels: 0,
            values: None,
            frame_changed_at: None,
            read_at: None,
            pid: None,
        }
    }

    /// Equal in everything but `read_at`, which changes on every read and
    /// so is not a change worth waking anyone for.
    pub fn same_apart_from_read_at(&self, other: &FeedStatus) -> bool {
        self.state == other.state
            && self.channels == other.channels
            && self.values == other.values
            && self.frame_changed_at == other.frame_changed_at
            && self.pid == other.pid
    }
}

impl Default for FeedStatus {
    fn default() -> FeedStatus {
        FeedStatus::new()
    }
}
