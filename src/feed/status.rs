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
    /// When `audio_peaks` was last seen written (its modification time,
    /// inode or size moved; the first sight counts), whether or not the
    /// bytes changed; `None` while there is no frame.
    pub frame_changed_at: Option<DateTime<Utc>>,
    /// When the files were last read; `None` before the first read.
    pub read_at: Option<DateTime<Utc>>,
    /// Until when this reading may be used: `read_at + stale_after`. A
    /// reader that stops publishing (stuck on a file, or gone) leaves a
    /// status whose time runs out, so that nobody uses its values as
    /// current ([`usable_at`](FeedStatus::usable_at)). `None` in a status
    /// made by hand (tests), which does not expire.
    pub valid_until: Option<DateTime<Utc>>,
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
            valid_until: None,
            pid: None,
        }
    }

    /// The values, if the feed is ok and this reading has not expired at
    /// `at`; otherwise why not, as a state in words ("stale (...)", "out of
    /// date (...)") to follow "the feed is".
    pub fn usable_at(&self, at: DateTime<Utc>) -> Result<&FeedValues, String> {
        match (&self.state, &self.values) {
            (FeedState::Ok, Some(_)) if self.valid_until.is_some_and(|u| at > u) => Err(format!(
                "out of date (last read at {}, longer ago than feed.stale_after: the reader \
                 has stopped reading)",
                self.read_at
                    .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
                    .unwrap_or_default()
            )),
            (FeedState::Ok, Some(v)) => Ok(v),
            (state, _) => Err(state.to_string()),
        }
    }

    /// Equal in everything but `read_at` and `valid_until`, which change on
    /// every read and so are not a change worth waking anyone for.
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
