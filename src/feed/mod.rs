//! The audmon feed reader: per-channel `voice_count` and `amp_sum` from the
//! analyser's shared-memory files.
//!
//! # Files
//! audmon publishes its newest analysis frame in a directory (`/dev/shm` on
//! Linux), see `reference/audmon-feed.md`:
//! - `audio_control`, text, three lines: audmon's PID, channels, partials per
//!   channel ([`parse_control`]);
//! - `audio_peaks`, binary, rewritten in place for every frame: per channel,
//!   per partial, two native-endian `f32` (frequency Hz, amplitude); size
//!   channels x partials x 8, a longer file's tail is ignored
//!   ([`parse_peaks`]).
//!
//! # States
//! Each read ends in one [`FeedState`]:
//! - `Absent`: a file is missing (audmon not started or restarting). Not an
//!   error that stops anything; the reader keeps looking.
//! - `Stale`: audmon's PID is not alive, or `audio_peaks` has not been
//!   written (modification time, inode and size unmoved) for longer than
//!   `stale_after` ([`ChangeTracker`]), or a read did not finish within
//!   `stale_after`. Silence is not staleness: all-zero frames that repeat
//!   byte for byte are valid readings (voice_count 0, amp_sum 0) as long as
//!   audmon keeps writing them (`reference/audmon-feed.md`).
//! - `Invalid`: the control is garbage, the peaks file is shorter than the
//!   control announces, a value is NaN, infinite or a negative amplitude, or
//!   two consecutive reads never agreed (torn read), or a file is not a
//!   regular file (a FIFO or a device in its place: refused at open, which
//!   never blocks).
//! - `Ok`: a consistent, recent frame from a live audmon.
//!
//! # Invariants
//! - Nothing invented: [`FeedStatus::values`] is `Some` only in state `Ok`;
//!   a stale or invalid feed has no values rather than the last good ones.
//! - Bounded reads: never more than channels x partials x 8 bytes of
//!   `audio_peaks` (at most 64 x 256 x 8 = 128 KiB) nor 256 bytes of
//!   `audio_control`, whatever the files' sizes; never an index past the end.
//! - No mixed frames, as far as a reader can tell: peaks are read until two
//!   consecutive reads agree (bounded), and the control is read before and
//!   after them (a resize in between starts over).
//! - The parsers are pure and never panic on any input (fuzzed:
//!   `fuzz/fuzz_targets/feed.rs`).
//! - File I/O runs on tokio's blocking pool, never on the async workers,
//!   and a read that takes longer than `stale_after` is reported (`Stale`)
//!   while it is waited for; no second read starts meanwhile.
//! - A reading expires: [`FeedStatus::valid_until`] is `read_at +
//!   stale_after`, and [`FeedStatus::usable_at`] refuses values past it, so
//!   a reader that stopped publishing never passes its last frame off as
//!   current.
//!
//! [`spawn`] starts the task that reads every `interval` and publishes a
//! [`FeedStatus`] on a watch channel; [`FeedMonitor`] is the same logic
//! without the task, with the time passed in.

mod monitor;
mod parse;
mod read;
mod status;

use std::path::PathBuf;
use std::time::Duration;

use chrono::Utc;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::FeedConfig;

pub use monitor::{ChangeTracker, FeedMonitor};
pub use parse::{
    encode_entry, parse_control, parse_peaks, Control, Frame, ENTRY_BYTES, MAX_CHANNELS,
    MAX_PARTIALS,
};
pub use read::{peaks_written, pid_alive, read_control, read_frame, read_peaks, WriteMark};
pub use status::{FeedState, FeedStatus, FeedValues};

/// Name of the control file in the feed directory.
pub const CONTROL_FILE: &str = "audio_control";

/// Name of the peaks file in the feed directory.
pub const PEAKS_FILE: &str = "audio_peaks";

/// Why a read of the feed failed.
#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    /// The file does not exist.
    #[error("{} is missing", .0.display())]
    Absent(PathBuf),
    /// The file exists but could not be read (permissions, not a file, ...).
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The content cannot be used; the message names the file and the fault.
    #[error("{0}")]
    Invalid(String),
}

impl FeedError {
    /// The feed state this error puts the feed in.
    pub fn state(&self) -> FeedState {
        match self {
            FeedError::Absent(_) => FeedState::Absent(self.to_string()),
            FeedError::Io { .. } | FeedError::Invalid(_) => FeedState::Invalid(self.to_string()),
        }
    }
}

/// Starts the feed reader: reads `cfg.dir` every `cfg.interval` on the
/// blocking pool and publishes each change of the [`FeedStatus`] (a change
/// of `read_at` alone updates the value without waking receivers). Logs each
/// change of state once: info when the feed becomes usable, warn otherwise,
/// with the reason. Runs until `shutdown` fires or every receiver is dropped.
pub fn spawn(
    cfg: FeedConfig,
    shutdown: CancellationToken,
) -> (watch::Receiver<FeedStatus>, JoinHandle<()>) {
    let (tx, rx) = watch::channel(FeedStatus::new());
    (rx, tokio::spawn(run(cfg, tx, shutdown)))
}

async fn run(cfg: FeedConfig, tx: watch::Sender<FeedStatus>, shutdown: CancellationToken) {
    // `interval` panics on zero; a resolved config never has it, a
    // hand-made one might.
    let period = cfg.interval.max(Duration::from_millis(1));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut monitor = None;
    // A read still running when its deadline passed: waited for again on
    // the next tick rather than started anew (one stuck thread, not one per
    // tick).
    let mut pending: Option<JoinHandle<(FeedMonitor, FeedStatus)>> = None;
    let mut previous: Option<FeedStatus> = None;
    let deadline = cfg.stale_after.max(Duration::from_millis(1));
    loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        let mut job = pending.take().unwrap_or_else(|| {
            let mut m = monitor
                .take()
                .unwrap_or_else(|| FeedMonitor::new(&cfg.dir, cfg.stale_after));
            tokio::task::spawn_blocking(move || {
                let status = m.poll(Utc::now());
                (m, status)
            })
        });
        let status = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            done = &mut job => match done {
                Ok((m, status)) => {
                    monitor = Some(m);
                    status
                }
                // Only a panic in the reader could get here; the next round
                // starts from a fresh monitor.
                Err(e) => FeedStatus {
                    state: FeedState::Invalid(format!("feed read failed: {e}")),
                    read_at: Some(Utc::now()),
                    ..FeedStatus::new()
                },
            },
            _ = tokio::time::sleep(deadline) => {
                pending = Some(job);
                FeedStatus {
                    state: FeedState::Stale(format!(
                        "reading the files in {} has not finished within {} (a file that blocks?)",
                        cfg.dir.display(),
                        humantime::format_duration(deadline)
                    )),
                    read_at: Some(Utc::now()),
                    ..FeedStatus::new()
                }
            }
        };
        log_change(&cfg, previous.as_ref(), &status);
        tx.send_if_modified(|current| {
            let changed = !current.same_apart_from_read_at(&status);
            *current = status.clone();
            changed
        });
        previous = Some(status);
        if tx.is_closed() {
            break;
        }
    }
}

fn log_change(cfg: &FeedConfig, previous: Option<&FeedStatus>, now: &FeedStatus) {
    let dir = cfg.dir.display();
    let was = previous.map(|p| &p.state);
    if was.map(FeedState::name) != Some(now.state.name()) {
        match &now.state {
            FeedState::Ok => tracing::info!(
                dir = %dir,
                pid = now.pid,
                channels = now.channels,
                "audmon feed ok"
            ),
            other => tracing::warn!(
                dir = %dir,
                state = other.name(),
                reason = other.reason().unwrap_or_default(),
                "audmon feed not usable"
            ),
        }
    } else if was != Some(&now.state) {
        // Same kind, other reason: worth a trace, not a warning every time
        // a bad frame is bad in a different place.
        tracing::debug!(dir = %dir, state = %now.state, "audmon feed reason changed");
    }
    if let Some(p) = previous {
        if p.pid.is_some() && now.pid.is_some() && (p.pid, p.channels) != (now.pid, now.channels) {
            tracing::info!(
                dir = %dir,
                pid = now.pid,
                was_pid = p.pid,
                channels = now.channels,
                was_channels = p.channels,
                "audmon feed control changed"
            );
        }
    }
}
