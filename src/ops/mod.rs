//! The machine's operations — bump_check, z_calibrate, z_adjust and the
//! sweeps (sweep_left_right, sweep_right_left) — as
//! `../shared/reference/operations.md` describes them, executed through the
//! motion gate (so every rule about enables, limits, rests and "one operation
//! at a time" applies) and recorded: a snapshot before, an `operations` row
//! `started` with the steppers involved and their positions, then
//! `completed`, `failed` (with the error) or `cancelled` with the final
//! positions, the message and `completed_at`, and a snapshot after. The
//! bump_check runs inside z_calibrate and z_adjust, and the z_adjusts,
//! bump_checks and z_calibrates inside a sweep, are recorded as operations
//! of their own.
//!
//! Every loop is bounded: bump_check by 50 attempts per stepper, z_calibrate's
//! descent by the stepper's travel, its final lifting by 10 rounds, a sweep
//! by its X positions, `operations.sweep_max_passes` per position and
//! `operations.sweep_max_calibrations`.
//!
//! Before an operation starts, [`preconditions`] checks what it needs (boards
//! connected with counters known, sensors readable, the feed where it is
//! used): refused there, nothing is recorded or moved.
//!
//! Cancelling (`op cancel`, SIGTERM, a jog at the machine) ends the whole
//! chain: the operation's next step — move, counter write, sensor read,
//! nested operation — is refused ([`OperationTicket::check`]); every running
//! operation, nested ones included, is recorded `cancelled` (or `failed`,
//! "stopped: ...", for a jog), with a message naming where each of its
//! steppers was left; no operation writes a counter or moves after it.
//!
//! [`Machine::run_repeat`] runs an operation again and again, `lap_rest`
//! apart, under one ticket (see its doc).

mod bump_check;
pub mod preconditions;
pub mod progress;
pub mod sweep;
pub mod x_homing;
mod z_adjust;
mod z_calibrate;

use std::sync::Arc;

use chrono::Utc;
use tokio::sync::{broadcast, watch};
use uuid::Uuid;

use crate::config::{Layout, Role};
use crate::feed::FeedStatus;
use crate::motion::{GateError, MotionGate, OperationTicket};
use crate::sensors::{SensorError, TouchSensors};
use crate::snapshot::{Settings, SnapshotHandle};
use crate::store::{OperationEvent, OperationStatus, OperationType, Record, SpoolHandle};

/// Attempts bump_check makes per stepper before giving up on it.
pub const BUMP_ATTEMPTS: u32 = 50;
/// Rounds of bump_check at the end of z_calibrate.
pub const FINAL_BUMP_ROUNDS: u32 = 10;

/// Why an operation did not complete.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum OpError {
    /// Refused by the gate, or a move failed.
    #[error("{}", gate_text(.0))]
    Gate(#[from] GateError),
    /// A sensor could not be read.
    #[error("touch sensor: {0}")]
    Sensor(String),
    /// The audmon feed is not usable.
    #[error("z_adjust needs the audmon feed: it is {0}")]
    Feed(String),
    /// The operation could not be recorded.
    #[error("cannot record the operation: {0}")]
    Record(String),
    /// A stepper asked for is not a Z stepper.
    #[error("stepper {0} is not a Z stepper")]
    NotZ(usize),
    /// What the operation needs is missing ([`preconditions`]): refused
    /// before anything is recorded or moved.
    #[error("{kind} not started: {why}")]
    NotReady {
        /// The operation asked for.
        kind: String,
        /// What is missing.
        why: String,
    },
    /// A nested operation (a bump_check inside z_calibrate) failed: the
    /// outer one does not go on as if it had worked.
    #[error("the nested {kind} failed: {message}")]
    Nested {
        /// The nested operation.
        kind: String,
        /// Its message.
        message: String,
    },
    /// X homing could not find or use its switch (see [`x_homing`]).
    #[error("{0}")]
    XHoming(String),
    /// Every enabled touch sensor reads touching before the operation
    /// starts: at rest that is wiring or configuration, not contact.
    #[error(
        "every enabled touch sensor (steppers {}) reads touching at rest, which \
         almost surely means the sensors are mis-wired or mis-configured (sensors.active_low, \
         sensors.bias), not that every mechanism touches its string: the operation is not \
         started; check the sensors first",
        comma_list(.steppers)
    )]
    SensorsAllTouching {
        /// The enabled Z steppers whose sensors all read touching.
        steppers: Vec<usize>,
    },
    /// The operation cannot start on this machine as it is now (no X to
    /// sweep, a board not connected, the feed not usable, ...).
    #[error("{0}")]
    Precondition(String),
    /// A sweep gave up (a bound reached, a nested operation failed); the
    /// message says where and why.
    #[error("{0}")]
    Sweep(String),
}

/// A gate error inside an operation's message: refusals say so (the
/// control API's error kind is not there to say it).
fn gate_text(e: &GateError) -> String {
    if e.is_refusal() {
        format!("refused: {e}")
    } else {
        e.to_string()
    }
}

impl From<SensorError> for OpError {
    fn from(e: SensorError) -> Self {
        OpError::Sensor(e.to_string())
    }
}

/// How an operation ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// The `operations` row.
    pub operation_id: Uuid,
    /// Final status.
    pub status: OperationStatus,
    /// The message recorded.
    pub message: String,
    /// bump_check: the enabled Z steppers it found touching (lifted or
    /// disabled). Empty for the other operations.
    pub touching: Vec<usize>,
}

/// How a repetition ([`Machine::run_repeat`]) ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Repeated {
    /// Runs made (each its own `operations` row).
    pub runs: u32,
    /// The last run's outcome.
    pub last: Outcome,
    /// Why the repetition ended.
    pub ended: String,
    /// Ended by a cancel during the rest between runs (the last run itself
    /// completed).
    pub cancelled: bool,
    /// Ended because the next run was refused by its preconditions (the
    /// last run itself completed; the machine needs attention).
    pub refused: bool,
}

/// A stepper in an operation's message: "3 (z1in)"; the index alone for a
/// slot without a name.
fn named(layout: &Layout, stepper: usize) -> String {
    match layout.role(stepper).name() {
        Some(n) => format!("{stepper} ({n})"),
        None => stepper.to_string(),
    }
}

/// What the operations work with.
#[derive(Clone)]
pub struct Machine {
    /// Host name (for the rows).
    pub host: String,
    /// Stepper layout.
    pub layout: Arc<Layout>,
    /// The gate every move passes.
    pub gate: MotionGate,
    /// Touch sensors.
    pub sensors: Arc<dyn TouchSensors>,
    /// Settings and enables (operations disable steppers for safety).
    pub settings: Arc<watch::Sender<Settings>>,
    /// The audmon feed.
    pub feed: watch::Receiver<FeedStatus>,
    /// Snapshots before and after.
    pub snapshots: SnapshotHandle,
    /// Where the operation rows go.
    pub spool: SpoolHandle,
    /// Current counters of every stepper (global index order).
    pub positions: Arc<dyn Fn() -> Vec<i32> + Send + Sync>,
    /// Progress while an operation runs: a sweep's after every pass, the
    /// steps of the others ([`progress::Progress`]; the control socket
    /// forwards them as `operation` events); sending with nobody listening
    /// is fine.
    pub progress: broadcast::Sender<progress::Progress>,
}

impl Machine {
    fn settings(&self) -> Settings {
        self.settings.borrow().clone()
    }

    fn enabled_z(&self, only: Option<usize>) -> Result<Vec<usize>, OpError> {
        if let Some(s) = only {
            if !self.layout.role(s).is_z() {
                return Err(OpError::NotZ(s));
            }
        }
        let s = self.settings();
        Ok(self
            .layout
            .z()
            .indices()
            .filter(|g| only.is_none_or(|o| o == *g))
            .filter(|g| s.enabled.get(*g).copied().unwrap_or(false))
            .collect())
    }

    /// A stepper in an operation's message: "3 (z1in)"; the index alone for
    /// a slot without a name.
    fn named(&self, stepper: usize) -> String {
        named(&self.layout, stepper)
    }

    /// Reports a step of `kind` on `stepper` (best effort).
    fn step(
        &self,
        kind: OperationType,
        stepper: usize,
        doing: progress::Doing,
        count: Option<(usize, usize)>,
    ) {
        let mut step = progress::Step::on(kind, stepper, self.layout.role(stepper), doing);
        if let Some((done, of)) = count {
            step = step.counted(done, of);
        }
        let _ = self.progress.send(progress::Progress::Step(step));
    }

    fn counter(&self, stepper: usize) -> i32 {
        (self.positions)().get(stepper).copied().unwrap_or_default()
    }

    fn z_max(&self, stepper: usize) -> i32 {
        self.layout.limits(stepper).1
    }

    /// Disables a stepper for safety; it stays disabled (and, once enables
    /// persist, across restarts) until an operator enables it again.
    fn disable(&self, stepper: usize, why: &str) {
        tracing::error!(
            stepper,
            reason = why,
            "CRITICAL: stepper disabled for safety"
        );
        self.settings.send_modify(|s| {
            if let Some(e) = s.enabled.get_mut(stepper) {
                *e = false;
            }
        });
        self.snapshots
            .request(format!("stepper {stepper} disabled: {why}"));
    }

    async fn record(&self, event: OperationEvent) -> Result<(), OpError> {
        self.spool
            .append_run_here(vec![Record::Operation { event }])
            .await
            .map(|_| ())
            .map_err(|e| OpError::Record(e.to_string()))
    }

    /// Runs `kind` as a new operation (taking the gate's operation lock).
    ///
    /// Refused before anything is recorded or moved when what it needs is
    /// missing ([`preconditions::check`]: a board not connected, a sensor
    /// that cannot be read, every enabled sensor touching at rest, the feed
    /// for z_adjust).
    pub async fn run(&self, kind: OperationType, only: Option<usize>) -> Result<Outcome, OpError> {
        let ticket = self.gate.begin(kind.as_str())?;
        preconditions::check(self, kind, only)?;
        if kind.is_sweep() {
            if only.is_some() {
                return Err(OpError::Precondition(format!(
                    "{} works on every enabled Z stepper: a single stepper cannot be given",
                    kind.as_str()
                )));
            }
            sweep::preconditions(self, kind)?;
        }
        self.run_recorded(&ticket, kind, only).await
    }

    /// Runs `kind` again and again under one ticket (operations.md,
    /// "Repeat"): when a run ends, rest `lap_rest`, then run it again.
    ///
    /// - Each run is its own `operations` row (and its nested ones), its
    ///   preconditions checked before it.
    /// - The ticket — the one-operation lock — is held across the runs and
    ///   the rests between them: nothing else starts in between, manual
    ///   moves are refused as during a run.
    /// - It ends when cancelled (during a run, which is then recorded
    ///   `cancelled`, or during the rest between runs), when a run does not
    ///   complete (failed, stopped, or refused by its preconditions: the
    ///   repetition stops rather than hammer a machine that needs attention),
    ///   or, for bump_check, when bump_check_enable is off after a run.
    ///
    /// `on_run(n, outcome)` is told of each run as it ends. The first run's
    /// refusal is returned as an error, as [`Machine::run`] does; later
    /// ones end the repetition.
    pub async fn run_repeat(
        &self,
        kind: OperationType,
        only: Option<usize>,
        mut on_run: impl FnMut(u32, &Outcome),
    ) -> Result<Repeated, OpError> {
        let ticket = self.gate.begin(kind.as_str())?;
        preconditions::check(self, kind, only)?;
        // Bounded by the operator: a repetition runs until cancelled, at
        // most u32::MAX runs (lap_rest apart, that is beyond any lifetime).
        let mut runs = 0u32;
        loop {
            let out = self.run_recorded(&ticket, kind, only).await?;
            runs += 1;
            on_run(runs, &out);
            let ended = |why: String| Repeated {
                runs,
                last: out.clone(),
                ended: why,
                cancelled: false,
                refused: false,
            };
            if out.status != OperationStatus::Completed {
                return Ok(ended(format!(
                    "run {runs} {}: repetition stopped",
                    out.status.as_str()
                )));
            }
            let s = self.settings();
            if kind == OperationType::BumpCheck && !s.operations.bump_check_enable {
                return Ok(ended("bump_check_enable is off: repetition ended".into()));
            }
            if runs == u32::MAX {
                return Ok(ended("run count exhausted: repetition ended".into()));
            }
            let lap = std::time::Duration::from_secs_f64(s.operations.lap_rest.max(0.0));
            if let Err(e) = ticket.rest(lap).await {
                return Ok(Repeated {
                    cancelled: true,
                    ..ended(format!(
                        "{e} during the rest after run {runs}: repetition ended"
                    ))
                });
            }
            if let Err(e) = preconditions::check(self, kind, only) {
                return Ok(Repeated {
                    refused: true,
                    ..ended(format!("run {}: {e}", runs + 1))
                });
            }
        }
    }

    /// Runs a nested operation (its own row) under `ticket`. Anything but
    /// `completed` ends the outer one too: a cancel as a cancel, a failure
    /// as [`OpError::Nested`] — the outer operation never goes on as if the
    /// nested one had worked.
    ///
    /// `skip` (string indices) is passed to z_adjust: a sweep's pass leaves
    /// channels still settling alone. Other kinds ignore it.
    pub(super) async fn nested(
        &self,
        ticket: &OperationTicket,
        kind: OperationType,
        only: Option<usize>,
        skip: &[usize],
    ) -> Result<String, OpError> {
        ticket.check()?;
        let out = self.run_recorded_skipping(ticket, kind, only, skip).await?;
        match out.status {
            OperationStatus::Completed | OperationStatus::Started => Ok(out.message),
            OperationStatus::Cancelled => Err(OpError::Gate(GateError::Cancelled)),
            OperationStatus::Failed => {
                ticket.check()?;
                Err(OpError::Nested {
                    kind: kind.as_str().to_string(),
                    message: out.message,
                })
            }
        }
    }

    /// Where each of `steppers` was left, for a cancelled or stopped
    /// operation's message: "3 at 12, 4 at 40 (untrusted)".
    fn left(&self, steppers: &[usize]) -> String {
        if steppers.is_empty() {
            return "no steppers".into();
        }
        steppers
            .iter()
            .map(|s| {
                let mark = if self.gate.trusted(*s) {
                    ""
                } else {
                    " (untrusted)"
                };
                format!("{s} at {}{mark}", self.counter(*s))
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Runs `kind` under an existing ticket, recorded as an operation of its own.
    pub async fn run_recorded(
        &self,
        ticket: &OperationTicket,
        kind: OperationType,
        only: Option<usize>,
    ) -> Result<Outcome, OpError> {
        self.run_recorded_skipping(ticket, kind, only, &[]).await
    }

    /// [`Machine::run_recorded`], with z_adjust leaving the channels (string
    /// indices) in `skip` alone.
    pub(super) async fn run_recorded_skipping(
        &self,
        ticket: &OperationTicket,
        kind: OperationType,
        only: Option<usize>,
        skip: &[usize],
    ) -> Result<Outcome, OpError> {
        let steppers = match kind {
            OperationType::ZAdjust => self.enabled_z(None)?,
            // A sweep works on X and every enabled Z stepper.
            k if k.is_sweep() => self
                .layout
                .x()
                .map(|x| x.first)
                .into_iter()
                .chain(self.enabled_z(None)?)
                .collect(),
            // X homing works on the X stepper alone, named in its rows.
            OperationType::XHome | OperationType::XAway | OperationType::XCalibrate => {
                let x: Vec<usize> = self.layout.x().map(|r| vec![r.first]).unwrap_or_default();
                if only.is_some_and(|s| !x.contains(&s)) {
                    return Err(OpError::XHoming(format!(
                        "{} works on the X stepper {x:?} only: leave out the stepper",
                        kind.as_str()
                    )));
                }
                x
            }
            _ => self.enabled_z(only)?,
        };
        // A jog of one of these at the machine stops the operation.
        ticket.watch_steppers(&steppers);
        let state_id = match self
            .snapshots
            .snapshot(format!("before {}", kind.as_str()))
            .await
        {
            Ok(id) => Some(id),
            Err(e) => {
                tracing::warn!(error = %e, operation = kind.as_str(), "no snapshot before the operation");
                None
            }
        };
        let operation_id = Uuid::new_v4();
        let indices: Vec<i32> = steppers.iter().map(|s| *s as i32).collect();
        let positions = |m: &Machine| steppers.iter().map(|s| m.counter(*s)).collect::<Vec<i32>>();
        let started = OperationEvent {
            operation_id,
            state_id,
            host: self.host.clone(),
            recorded_at: Utc::now(),
            operation_type: kind,
            operation_status: OperationStatus::Started,
            message: None,
            stepper_indices: indices.clone(),
            final_positions: positions(self),
            completed_at: None,
        };
        self.record(started.clone()).await?;
        let _ = self
            .progress
            .send(progress::Progress::Recorded(kind, operation_id));
        tracing::info!(%operation_id, operation = kind.as_str(), steppers = ?indices, "operation started");
        let mut touching = Vec::new();
        let result = match kind {
            OperationType::BumpCheck => Box::pin(bump_check::run(self, ticket, &steppers))
                .await
                .map(|r| {
                    touching = r.touching();
                    r.message(&self.layout)
                }),
            OperationType::ZCalibrate => Box::pin(z_calibrate::run(self, ticket, &steppers)).await,
            OperationType::ZAdjust => Box::pin(z_adjust::run(self, ticket, skip)).await,
            OperationType::SweepLeftRight | OperationType::SweepRightLeft => {
                Box::pin(sweep::run(self, ticket, kind, operation_id)).await
            }
            OperationType::XHome | OperationType::XAway | OperationType::XCalibrate => {
                Box::pin(x_homing::run(self, ticket, kind)).await
            }
        };
        let (status, message) = match (&result, ticket.interrupted()) {
            // Stopped from the machine: whatever the steps said, the plan no longer holds.
            (_, Some(why)) => (
                OperationStatus::Failed,
                format!("stopped: {why}; left: {}", self.left(&steppers)),
            ),
            (Ok(m), None) => (OperationStatus::Completed, m.clone()),
            (Err(OpError::Gate(GateError::Cancelled)), None) => (
                OperationStatus::Cancelled,
                format!("cancelled; left: {}", self.left(&steppers)),
            ),
            (Err(e), None) => (OperationStatus::Failed, e.to_string()),
        };
        let done = OperationEvent {
            operation_status: status,
            message: Some(message.clone()),
            final_positions: positions(self),
            completed_at: Some(Utc::now()),
            ..started
        };
        self.record(done).await?;
        tracing::info!(%operation_id, operation = kind.as_str(), status = status.as_str(), %message, "operation ended");
        if let Err(e) = self
            .snapshots
            .snapshot(format!("after {}", kind.as_str()))
            .await
        {
            tracing::warn!(error = %e, "no snapshot after the operation");
        }
        Ok(Outcome {
            operation_id,
            status,
            message,
            touching,
        })
    }
}

/// Whether a global stepper is a Z stepper of the layout.
pub fn is_z(layout: &Layout, stepper: usize) -> bool {
    matches!(layout.role(stepper), Role::ZIn { .. } | Role::ZOut { .. })
}

/// Stepper numbers as people read a list: `1, 2, 3` (not `[1, 2, 3]`).
fn comma_list(items: &[usize]) -> String {
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}
