//! The snapshot engine: complete `machine_state` rows, on a timer and on
//! events, into the spool.
//!
//! # Nothing invented
//!
//! A row is only built when every value in it is known: every board
//! connected with counters read and trusted, no stepper in transit (a move
//! sent and not yet confirmed, or a jog at the machine in progress: the
//! board answers nothing during a blocking move, and its last counter is
//! where the stepper was, not where it is), and the audmon feed `ok` with at
//! least one channel per string. Otherwise **no row is written** — neither on
//! the timer nor for an event — and the reason is counted in
//! [`SnapshotStatus::skipped`], logged once when it starts and once when it
//! ends, and shown by the daemon's status. In the database this reads as a
//! gap in `machine_state` for the host; the daemon's log says why. Last-known
//! values are never written as if current.
//!
//! Arrays are checked against the host's stepper and channel counts before a
//! row reaches the spool ([`build`] refuses a mismatch).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::board::{BoardStatus, LinkState};
use crate::config::{Layout, OperationSettings, Thresholds};
use crate::feed::FeedStatus;
use crate::store::controls::ControlsCache;
use crate::store::{MachineState, Record, SpoolError, SpoolHandle, Trigger};

/// The settings a snapshot records; they change at run time (SIGHUP, control API).
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Operation settings.
    pub operations: OperationSettings,
    /// Per-channel thresholds.
    pub thresholds: Thresholds,
    /// Per global stepper: enabled or not.
    pub enabled: Vec<bool>,
}

/// Why no row could be built.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum Unknown {
    /// A board is not connected (or not yet read).
    BoardDown(String),
    /// A board's counters are untrusted (reset not restored, not calibrated).
    Untrusted(String),
    /// A stepper is in transit (a move not yet confirmed, a jog in progress).
    Moving(String),
    /// The feed is absent, stale or invalid.
    Feed(String),
    /// The feed has fewer channels than the host has strings.
    FewChannels(String),
    /// An array would not match the host's counts (a bug, never written).
    Shape(String),
}

impl Unknown {
    /// Short key for counters.
    pub fn key(&self) -> &'static str {
        match self {
            Unknown::BoardDown(_) => "board_down",
            Unknown::Untrusted(_) => "counters_untrusted",
            Unknown::Moving(_) => "stepper_moving",
            Unknown::Feed(_) => "feed_not_ok",
            Unknown::FewChannels(_) => "feed_channels",
            Unknown::Shape(_) => "array_shape",
        }
    }
}

impl std::fmt::Display for Unknown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unknown::BoardDown(s)
            | Unknown::Untrusted(s)
            | Unknown::Moving(s)
            | Unknown::Feed(s)
            | Unknown::FewChannels(s)
            | Unknown::Shape(s) => f.write_str(s),
        }
    }
}

/// Everything a row is built from, at one instant.
pub struct Inputs<'a> {
    /// Host name.
    pub host: &'a str,
    /// When.
    pub at: DateTime<Utc>,
    /// Stepper layout.
    pub layout: &'a Layout,
    /// Boards in configured order.
    pub boards: &'a [BoardStatus],
    /// Settings.
    pub settings: &'a Settings,
    /// Feed.
    pub feed: &'a FeedStatus,
    /// audmon frame to link, if known.
    pub controls_id: Option<Uuid>,
}

/// Builds a complete row, or says what is unknown.
pub fn build(i: &Inputs<'_>) -> Result<MachineState, Unknown> {
    let total = i.layout.total_steppers();
    let strings = i.layout.strings();
    let mut positions = Vec::with_capacity(total);
    for b in i.boards {
        // A move in transit is the reason first, even once the board has
        // been silent long enough to count as unresponsive.
        if let (Some(m), LinkState::Connected | LinkState::Unresponsive { .. }) =
            (&b.moving, &b.link)
        {
            return Err(Unknown::Moving(format!(
                "stepper {} moving (board {} {} to {}, unconfirmed)",
                positions.len() + m.stepper,
                b.name,
                m.op,
                m.target
            )));
        }
        if b.link != LinkState::Connected {
            return Err(Unknown::BoardDown(format!(
                "board {} is {}",
                b.name, b.link
            )));
        }
        let Some(p) = &b.positions else {
            return Err(Unknown::BoardDown(format!(
                "board {} has not been read yet",
                b.name
            )));
        };
        if let Some(s) = b.trusted.iter().position(|t| !t) {
            let g = positions.len() + s;
            let role = i.layout.role(g);
            return Err(Unknown::Untrusted(format!(
                "counter of stepper {g} ({}, {role}) on board {} is untrusted (the board reset, or it \
                 was never set): set it (stringdriverctl set-position) or calibrate",
                role.name().unwrap_or_else(|| "unused".into()),
                b.name
            )));
        }
        if let Some(&s) = b.jogging.first() {
            // Global index: the steppers of the boards before this one come first.
            return Err(Unknown::Moving(format!(
                "stepper {} moving (jogged at the machine, board {})",
                positions.len() + s,
                b.name
            )));
        }
        // A board that stopped answering may have reset and moved since its
        // last reply: its counters are last known, not current.
        if let Some(since) = b.silent_since {
            return Err(Unknown::BoardDown(format!(
                "board {} has not answered since {}",
                b.name,
                since.format("%H:%M:%S%.3f")
            )));
        }
        positions.extend_from_slice(p);
    }
    // A reading past its `valid_until` is unknown, whatever its state says.
    let values = match i.feed.usable_at(i.at) {
        Ok(v) => v,
        Err(why) => return Err(Unknown::Feed(format!("audmon feed is {why}"))),
    };
    if values.voice_count.len() < strings || values.amp_sum.len() < strings {
        return Err(Unknown::FewChannels(format!(
            "audmon feed has {} channels for {strings} strings",
            values.voice_count.len().min(values.amp_sum.len())
        )));
    }
    let s = i.settings;
    let o = &s.operations;
    let t = &s.thresholds;
    let row = MachineState {
        state_id: Uuid::new_v4(),
        controls_id: i.controls_id,
        host: i.host.to_string(),
        recorded_at: i.at,
        stepper_positions: positions,
        stepper_enabled: s.enabled.clone(),
        bump_check_enable: o.bump_check_enable,
        z_up_step: o.z_up_step,
        z_down_step: o.z_down_step,
        tune_rest: o.tune_rest as f32,
        x_rest: o.x_rest as f32,
        z_rest: o.z_rest as f32,
        lap_rest: o.lap_rest as f32,
        adjustment_level: o.adjustment_level,
        retry_threshold: o.retry_threshold,
        delta_threshold: o.delta_threshold,
        z_variance_threshold: o.z_variance_threshold,
        // Channel c is string c; channels beyond the strings belong to no string.
        voice_count: values.voice_count[..strings].to_vec(),
        amp_sum: values.amp_sum[..strings].to_vec(),
        voice_count_min: t.voice_count_min.clone(),
        voice_count_max: t.voice_count_max.clone(),
        amp_sum_min: t.amp_sum_min.clone(),
        amp_sum_max: t.amp_sum_max.clone(),
    };
    check_shape(&row, total, strings)?;
    Ok(row)
}

/// The array lengths the schema document requires.
pub fn check_shape(r: &MachineState, steppers: usize, channels: usize) -> Result<(), Unknown> {
    let per_stepper = [
        ("stepper_positions", r.stepper_positions.len()),
        ("stepper_enabled", r.stepper_enabled.len()),
    ];
    let per_channel = [
        ("voice_count", r.voice_count.len()),
        ("amp_sum", r.amp_sum.len()),
        ("voice_count_min", r.voice_count_min.len()),
        ("voice_count_max", r.voice_count_max.len()),
        ("amp_sum_min", r.amp_sum_min.len()),
        ("amp_sum_max", r.amp_sum_max.len()),
    ];
    for (name, len) in per_stepper {
        if len != steppers {
            return Err(Unknown::Shape(format!(
                "{name} has {len} entries for {steppers} steppers"
            )));
        }
    }
    for (name, len) in per_channel {
        if len != channels {
            return Err(Unknown::Shape(format!(
                "{name} has {len} entries for {channels} channels"
            )));
        }
    }
    Ok(())
}

/// What the log says about a skipped snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PauseLine {
    /// A pause starts: one warning with the reason.
    Started,
    /// Still paused, for another reason: a debug line only (counters set
    /// one by one at first start change the reason a dozen times).
    ReasonChanged,
    /// Still paused for the same reason: nothing.
    Nothing,
}

/// One warning when a pause starts, one line when it ends (logged where
/// capture resumes); a change of reason during a pause is not a new pause.
pub fn pause_line(was: Option<&str>, now: &str) -> PauseLine {
    match was {
        None => PauseLine::Started,
        Some(w) if w != now => PauseLine::ReasonChanged,
        Some(_) => PauseLine::Nothing,
    }
}

/// A request for an event snapshot.
pub struct Request {
    /// Why (for the log).
    pub reason: String,
    /// Where to send the id of the row (or why there is none).
    pub reply: Option<oneshot::Sender<Result<Uuid, SnapshotError>>>,
}

/// Why a snapshot was not captured.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SnapshotError {
    /// A value is unknown: no row (see the module doc).
    #[error("no snapshot: {0}")]
    Unknown(Unknown),
    /// The spool refused it (full disk, full spool).
    #[error("snapshot not captured: {0}")]
    Spool(String),
    /// The engine stopped.
    #[error("the snapshot engine has stopped")]
    Stopped,
}

/// What the engine reports.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SnapshotStatus {
    /// Timer snapshots captured.
    pub timer: u64,
    /// Event snapshots captured.
    pub events: u64,
    /// Snapshots not taken, by reason key.
    pub skipped: BTreeMap<String, u64>,
    /// What is unknown right now, if anything.
    pub unknown: Option<String>,
    /// Snapshots the spool refused.
    pub spool_errors: u64,
    /// The newest row captured.
    pub last_state_id: Option<Uuid>,
    /// When it was taken.
    pub last_at: Option<DateTime<Utc>>,
    /// Ticks of the engine's loop, for the watchdog.
    pub heartbeat: u64,
}

/// The sources a snapshot reads.
#[derive(Clone)]
pub struct Sources {
    /// Host name.
    pub host: String,
    /// Layout.
    pub layout: Arc<Layout>,
    /// Each board's status.
    pub boards: Vec<watch::Receiver<BoardStatus>>,
    /// Settings (changed at run time).
    pub settings: watch::Receiver<Settings>,
    /// Feed.
    pub feed: watch::Receiver<FeedStatus>,
    /// controls_id lookup (`snapshot.link = latest`) and its maximum age
    /// (changeable at run time).
    pub controls: Option<(ControlsCache, watch::Receiver<Duration>)>,
}

/// A handle to ask for event snapshots.
#[derive(Clone)]
pub struct SnapshotHandle {
    tx: mpsc::Sender<Request>,
    status: watch::Receiver<SnapshotStatus>,
}

impl SnapshotHandle {
    /// Takes an event snapshot now and returns its id.
    pub async fn snapshot(&self, reason: impl Into<String>) -> Result<Uuid, SnapshotError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Request {
                reason: reason.into(),
                reply: Some(reply),
            })
            .await
            .map_err(|_| SnapshotError::Stopped)?;
        rx.await.map_err(|_| SnapshotError::Stopped)?
    }

    /// Asks for an event snapshot without waiting for it.
    pub fn request(&self, reason: impl Into<String>) {
        let _ = self.tx.try_send(Request {
            reason: reason.into(),
            reply: None,
        });
    }

    /// The engine's status.
    pub fn status(&self) -> SnapshotStatus {
        self.status.borrow().clone()
    }

    /// A receiver of status changes.
    pub fn watch(&self) -> watch::Receiver<SnapshotStatus> {
        self.status.clone()
    }
}

/// Starts the engine: a timer snapshot every `interval` (changeable through
/// `interval_rx`), event snapshots on request, and a final one at shutdown.
pub fn spawn(
    sources: Sources,
    spool: SpoolHandle,
    interval: watch::Receiver<Duration>,
    shutdown: CancellationToken,
) -> (SnapshotHandle, JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(64);
    let (status_tx, status_rx) = watch::channel(SnapshotStatus::default());
    let engine = Engine {
        sources,
        spool,
        status: status_tx,
        requests: rx,
        interval,
    };
    let task = tokio::spawn(engine.run(shutdown));
    (
        SnapshotHandle {
            tx,
            status: status_rx,
        },
        task,
    )
}

struct Engine {
    sources: Sources,
    spool: SpoolHandle,
    status: watch::Sender<SnapshotStatus>,
    requests: mpsc::Receiver<Request>,
    interval: watch::Receiver<Duration>,
}

impl Engine {
    async fn run(mut self, shutdown: CancellationToken) {
        let mut period = *self.interval.borrow();
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                r = self.requests.recv() => match r {
                    Some(req) => {
                        let result = self.capture_guarded(Trigger::Event, &req.reason).await;
                        if let Some(reply) = req.reply {
                            let _ = reply.send(result);
                        }
                    }
                    None => break,
                },
                _ = tick.tick() => {
                    let _ = self.capture_guarded(Trigger::Timer, "timer").await;
                }
                Ok(()) = self.interval.changed() => {
                    let p = *self.interval.borrow_and_update();
                    if p != period && !p.is_zero() {
                        tracing::info!(from = ?period, to = ?p, "snapshot interval changed");
                        period = p;
                        tick = tokio::time::interval(period);
                        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    }
                }
            }
            self.status.send_modify(|s| s.heartbeat += 1);
        }
        // Requests still queued get their answer: the final snapshot is the
        // daemon's (it asks before cancelling), these are refused.
        self.requests.close();
        while let Ok(req) = self.requests.try_recv() {
            if let Some(reply) = req.reply {
                let _ = reply.send(Err(SnapshotError::Stopped));
            }
        }
    }

    /// One capture; a bug in it costs this snapshot, not the engine.
    async fn capture_guarded(
        &mut self,
        trigger: Trigger,
        reason: &str,
    ) -> Result<Uuid, SnapshotError> {
        match crate::supervise::guarded("snapshot", self.capture(trigger, reason)).await {
            Ok(r) => r,
            Err(e) => {
                self.status
                    .send_modify(|s| *s.skipped.entry("internal_error".into()).or_default() += 1);
                Err(SnapshotError::Spool(e))
            }
        }
    }

    async fn capture(&mut self, trigger: Trigger, reason: &str) -> Result<Uuid, SnapshotError> {
        let at = Utc::now();
        let boards: Vec<BoardStatus> = self
            .sources
            .boards
            .iter()
            .map(|b| b.borrow().clone())
            .collect();
        let settings = self.sources.settings.borrow().clone();
        let feed = self.sources.feed.borrow().clone();
        // A cache read: never waits on PostgreSQL.
        let controls_id = self
            .sources
            .controls
            .as_ref()
            .and_then(|(c, age)| c.lookup(at, *age.borrow()));
        let inputs = Inputs {
            host: &self.sources.host,
            at,
            layout: &self.sources.layout,
            boards: &boards,
            settings: &settings,
            feed: &feed,
            controls_id,
        };
        let row = match build(&inputs) {
            Ok(row) => row,
            Err(why) => {
                let text = why.to_string();
                let was = self.status.borrow().unknown.clone();
                match pause_line(was.as_deref(), &text) {
                    PauseLine::Started => {
                        tracing::warn!(reason = %text, "snapshots paused: a value is unknown, no row is written")
                    }
                    PauseLine::ReasonChanged => {
                        tracing::debug!(reason = %text, was = ?was, "snapshots still paused, for another reason")
                    }
                    PauseLine::Nothing => {}
                }
                self.status.send_modify(|s| {
                    *s.skipped.entry(why.key().to_string()).or_default() += 1;
                    s.unknown = Some(text);
                });
                return Err(SnapshotError::Unknown(why));
            }
        };
        if self.status.borrow().unknown.is_some() {
            tracing::info!("snapshots resumed: every value is known again");
            self.status.send_modify(|s| s.unknown = None);
        }
        let state_id = row.state_id;
        match self
            .spool
            .append(vec![Record::MachineState { trigger, row }])
            .await
        {
            Ok(_) => {
                if trigger == Trigger::Event {
                    tracing::info!(%state_id, %reason, "event snapshot captured");
                }
                self.status.send_modify(|s| {
                    match trigger {
                        Trigger::Timer => s.timer += 1,
                        Trigger::Event => s.events += 1,
                    }
                    s.last_state_id = Some(state_id);
                    s.last_at = Some(at);
                });
                Ok(state_id)
            }
            Err(e) => {
                // A full spool counts its refusals; a full disk is logged
                // once, with a summary at its end, by the spool handle.
                if !matches!(e, SpoolError::Full { .. } | SpoolError::DiskFull { .. }) {
                    tracing::error!(error = %e, "snapshot not captured");
                }
                self.status.send_modify(|s| s.spool_errors += 1);
                Err(SnapshotError::Spool(e.to_string()))
            }
        }
    }
}
