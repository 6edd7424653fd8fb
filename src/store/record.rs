//! The records the daemon captures: one `machine_state` row or one
//! `operations` status event. They are what the spool holds (as JSON) and
//! what the shipper writes to PostgreSQL.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A complete machine state snapshot: one `machine_state` row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MachineState {
    /// Primary key (UUID v4).
    pub state_id: Uuid,
    /// The audmon `controls` row this snapshot is linked to, if any.
    pub controls_id: Option<Uuid>,
    /// Host name.
    pub host: String,
    /// When the state was read (UTC).
    pub recorded_at: DateTime<Utc>,
    /// Every stepper's counter, carriage board first.
    pub stepper_positions: Vec<i32>,
    /// Every stepper's enable state.
    pub stepper_enabled: Vec<bool>,
    /// Setting `bump_check_enable`.
    pub bump_check_enable: bool,
    /// Setting `z_up_step`.
    pub z_up_step: i32,
    /// Setting `z_down_step`.
    pub z_down_step: i32,
    /// Rest after a tuner move, seconds.
    pub tune_rest: f32,
    /// Rest after an X move, seconds.
    pub x_rest: f32,
    /// Rest after a Z move, seconds.
    pub z_rest: f32,
    /// Rest after each channel in z_adjust, seconds.
    pub lap_rest: f32,
    /// Setting `adjustment_level`.
    pub adjustment_level: i32,
    /// Setting `retry_threshold`.
    pub retry_threshold: i32,
    /// Setting `delta_threshold`.
    pub delta_threshold: i32,
    /// Setting `z_variance_threshold`.
    pub z_variance_threshold: i32,
    /// Per channel: partials with amplitude > 0.
    pub voice_count: Vec<i32>,
    /// Per channel: sum of amplitudes.
    pub amp_sum: Vec<f32>,
    /// Per channel threshold.
    pub voice_count_min: Vec<i32>,
    /// Per channel threshold.
    pub voice_count_max: Vec<i32>,
    /// Per channel threshold.
    pub amp_sum_min: Vec<i32>,
    /// Per channel threshold.
    pub amp_sum_max: Vec<i32>,
}

/// Which operation an `operations` row records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OperationType {
    /// Lift every touching Z stepper just clear of its string.
    BumpCheck,
    /// Find each Z stepper's contact point.
    ZCalibrate,
    /// Move Z steppers by the audio analysis.
    ZAdjust,
    /// The automatic mode: X from x_start to x_finish, adjusting at each position.
    SweepLeftRight,
    /// The automatic mode: X from x_finish to x_start, adjusting at each position.
    SweepRightLeft,
    /// Find the X home switch and make the X counter 0 there.
    XHome,
    /// Find the X away switch and make the X counter X max there.
    XAway,
    /// Find the nearer X switch, set the counter there, and move back.
    XCalibrate,
}

impl OperationType {
    /// Every operation, in the order people see them listed.
    pub const ALL: [OperationType; 8] = [
        OperationType::BumpCheck,
        OperationType::ZCalibrate,
        OperationType::ZAdjust,
        OperationType::SweepLeftRight,
        OperationType::SweepRightLeft,
        OperationType::XHome,
        OperationType::XAway,
        OperationType::XCalibrate,
    ];

    /// The text stored in `operations.operation_type`.
    pub fn as_str(self) -> &'static str {
        match self {
            OperationType::BumpCheck => "bump_check",
            OperationType::ZCalibrate => "z_calibrate",
            OperationType::ZAdjust => "z_adjust",
            OperationType::SweepLeftRight => "sweep_left_right",
            OperationType::SweepRightLeft => "sweep_right_left",
            OperationType::XHome => "x_home",
            OperationType::XAway => "x_away",
            OperationType::XCalibrate => "x_calibrate",
        }
    }

    /// Whether this is one of the sweeps.
    pub fn is_sweep(self) -> bool {
        matches!(
            self,
            OperationType::SweepLeftRight | OperationType::SweepRightLeft
        )
    }
}

/// Status of an operation; only `Started` can be followed by another.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OperationStatus {
    /// Running.
    Started,
    /// Finished normally.
    Completed,
    /// Finished with an error.
    Failed,
    /// Stopped on request.
    Cancelled,
}

impl OperationStatus {
    /// Every status, in the order an operation goes through them.
    pub const ALL: [OperationStatus; 4] = [
        OperationStatus::Started,
        OperationStatus::Completed,
        OperationStatus::Failed,
        OperationStatus::Cancelled,
    ];

    /// The text stored in `operations.operation_status`.
    pub fn as_str(self) -> &'static str {
        match self {
            OperationStatus::Started => "started",
            OperationStatus::Completed => "completed",
            OperationStatus::Failed => "failed",
            OperationStatus::Cancelled => "cancelled",
        }
    }

    /// Whether the operation has ended.
    pub fn is_terminal(self) -> bool {
        self != OperationStatus::Started
    }
}

/// One status event of an operation: its `started` insert or its final
/// update. Both carry the whole row; shipping them is an upsert that never
/// moves a row backwards.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OperationEvent {
    /// Primary key (UUID v4), the same for every event of one operation.
    pub operation_id: Uuid,
    /// The snapshot taken before the operation.
    pub state_id: Option<Uuid>,
    /// Host name.
    pub host: String,
    /// When the operation started (UTC); kept by the final event.
    pub recorded_at: DateTime<Utc>,
    /// Which operation.
    pub operation_type: OperationType,
    /// Its status.
    pub operation_status: OperationStatus,
    /// Result message or error.
    pub message: Option<String>,
    /// Steppers involved.
    pub stepper_indices: Vec<i32>,
    /// Their positions (at start: the starting positions; at the end: the final ones).
    pub final_positions: Vec<i32>,
    /// When it ended (terminal events only).
    pub completed_at: Option<DateTime<Utc>>,
}

/// Why a snapshot was taken. Only timer snapshots may be thinned when the
/// spool is full; operations reference event snapshots, never timer ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    /// The periodic timer.
    Timer,
    /// An event (operation, setting change, reconnect, request).
    Event,
}

/// A record as captured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Record {
    /// A `machine_state` row.
    MachineState {
        /// Why it was taken.
        trigger: Trigger,
        /// The row.
        row: MachineState,
    },
    /// An `operations` status event.
    Operation {
        /// The event.
        event: OperationEvent,
    },
}

impl Record {
    /// Whether the spool may thin this record away when full.
    pub fn thinnable(&self) -> bool {
        matches!(
            self,
            Record::MachineState {
                trigger: Trigger::Timer,
                ..
            }
        )
    }

    /// When the record was captured.
    pub fn recorded_at(&self) -> DateTime<Utc> {
        match self {
            Record::MachineState { row, .. } => row.recorded_at,
            Record::Operation { event } => event
                .completed_at
                .filter(|_| event.operation_status.is_terminal())
                .unwrap_or(event.recorded_at),
        }
    }

    /// Short description for logs (`machine_state <id>`).
    pub fn describe(&self) -> String {
        match self {
            Record::MachineState { row, .. } => format!("machine_state {}", row.state_id),
            Record::Operation { event } => format!(
                "operation {} {} {}",
                event.operation_id,
                event.operation_type.as_str(),
                event.operation_status.as_str()
            ),
        }
    }
}
