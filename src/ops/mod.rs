//! The machine's operations — bump_check, z_calibrate, z_adjust — as
//! `../shared/reference/operations.md` describes them, executed through the
//! motion gate (so every rule about enables, limits, rests and "one operation
//! at a time" applies) and recorded: a snapshot before, an `operations` row
//! `started` with the steppers involved and their positions, then
//! `completed`, `failed` (with the error) or `cancelled` with the final
//! positions, the message and `completed_at`, and a snapshot after. The
//! bump_check runs inside z_calibrate and z_adjust are recorded as operations
//! of their own.
//!
//! Every loop is bounded: bump_check by 50 attempts per stepper, z_calibrate's
//! descent by the stepper's travel, its final lifting by 10 rounds.

mod bump_check;
pub mod x_homing;
mod z_adjust;
mod z_calibrate;

use std::sync::Arc;

use chrono::Utc;
use tokio::sync::watch;
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
    /// X homing could not find or use its switch (see [`x_homing`]).
    #[error("{0}")]
    XHoming(String),
    /// Every enabled touch sensor reads touching before the operation
    /// starts: at rest that is wiring or configuration, not contact.
    #[error(
        "every enabled touch sensor (steppers {steppers:?}) reads touching at rest, which \
         almost surely means the sensors are mis-wired or mis-configured (sensors.active_low, \
         sensors.bias), not that every mechanism touches its string: the operation is not \
         started; check the sensors first"
    )]
    SensorsAllTouching {
        /// The enabled Z steppers whose sensors all read touching.
        steppers: Vec<usize>,
    },
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
    /// Refused before anything is recorded or moved
    /// ([`OpError::SensorsAllTouching`]) when every enabled Z sensor — two
    /// or more — reads touching: the machine is at rest (no operation runs),
    /// and a machine at rest whose every sensor touches is almost surely
    /// mis-wired (`reference/hosts.md`, "electrical sense"). One sensor alone
    /// touching proves nothing, and a sensor that cannot be read is left to
    /// the operation to report as it does today.
    pub async fn run(&self, kind: OperationType, only: Option<usize>) -> Result<Outcome, OpError> {
        let ticket = self.gate.begin(kind.as_str())?;
        let enabled = self.enabled_z(None)?;
        if crate::sensors::all_touching(self.sensors.as_ref(), &enabled) {
            tracing::error!(
                operation = kind.as_str(),
                steppers = ?enabled,
                "every enabled touch sensor reads touching at rest: refused (mis-wired or mis-configured sensors?)"
            );
            return Err(OpError::SensorsAllTouching { steppers: enabled });
        }
        self.run_recorded(&ticket, kind, only).await
    }

    /// Runs `kind` under an existing ticket, recorded as an operation of its own.
    pub async fn run_recorded(
        &self,
        ticket: &OperationTicket,
        kind: OperationType,
        only: Option<usize>,
    ) -> Result<Outcome, OpError> {
        let steppers = match kind {
            OperationType::ZAdjust => self.enabled_z(None)?,
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
        tracing::info!(%operation_id, operation = kind.as_str(), steppers = ?indices, "operation started");
        let result = match kind {
            OperationType::BumpCheck => Box::pin(bump_check::run(self, ticket, &steppers)).await,
            OperationType::ZCalibrate => Box::pin(z_calibrate::run(self, ticket, &steppers)).await,
            OperationType::ZAdjust => Box::pin(z_adjust::run(self, ticket)).await,
            OperationType::XHome | OperationType::XAway | OperationType::XCalibrate => {
                Box::pin(x_homing::run(self, ticket, kind)).await
            }
        };
        let (status, message) = match (&result, ticket.interrupted()) {
            // Stopped from the machine: whatever the steps said, the plan no longer holds.
            (_, Some(why)) => (OperationStatus::Failed, format!("stopped: {why}")),
            (Ok(m), None) => (OperationStatus::Completed, m.clone()),
            (Err(OpError::Gate(GateError::Cancelled)), None) => {
                (OperationStatus::Cancelled, "cancelled".to_string())
            }
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
        })
    }
}

/// Whether a global stepper is a Z stepper of the layout.
pub fn is_z(layout: &Layout, stepper: usize) -> bool {
    matches!(layout.role(stepper), Role::ZIn { .. } | Role::ZOut { .. })
}
