//! Record factories for storage tests.

use chrono::{DateTime, Duration, TimeZone, Utc};
use stringdriverd::store::{
    MachineState, OperationEvent, OperationStatus, OperationType, Record, Trigger,
};
use uuid::Uuid;

/// A fixed start time, so buckets and orders are predictable.
pub fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 1, 12, 0, 0)
        .single()
        .expect("valid time")
}

/// A deterministic UUID for record number `i` of stream `salt`.
pub fn id(salt: u64, i: u64) -> Uuid {
    Uuid::from_u64_pair(0x5d00_0000_0000_0000 | salt, i)
}

/// A stringdriver-2 sized snapshot (19 steppers, 6 channels).
pub fn state(i: u64, at: DateTime<Utc>) -> MachineState {
    MachineState {
        state_id: id(1, i),
        controls_id: None,
        host: "stringdriver-test".into(),
        recorded_at: at,
        stepper_positions: (0..19).map(|k| (i as i32 + k) % 100).collect(),
        stepper_enabled: (0..19).map(|k| k % 3 != 0).collect(),
        bump_check_enable: true,
        z_up_step: 2,
        z_down_step: -2,
        tune_rest: 5.0,
        x_rest: 5.0,
        z_rest: 1.0,
        lap_rest: 4.0,
        adjustment_level: 4,
        retry_threshold: 50,
        delta_threshold: 50,
        z_variance_threshold: 50,
        voice_count: vec![3, 4, 5, 6, 7, 8],
        amp_sum: vec![20.5, 30.25, 40.0, 50.0, 60.0, 70.0],
        voice_count_min: vec![0; 6],
        voice_count_max: vec![12; 6],
        amp_sum_min: vec![20; 6],
        amp_sum_max: vec![100; 6],
    }
}

/// A timer snapshot record `i`, `secs` seconds after `t0`.
pub fn timer(i: u64, secs: i64) -> Record {
    Record::MachineState {
        trigger: Trigger::Timer,
        row: state(i, t0() + Duration::seconds(secs)),
    }
}

/// An event snapshot record.
pub fn event_snapshot(i: u64, secs: i64) -> Record {
    Record::MachineState {
        trigger: Trigger::Event,
        row: state(i, t0() + Duration::seconds(secs)),
    }
}

/// An operation event of operation `i` referencing snapshot `state`.
pub fn op(i: u64, state: Option<u64>, status: OperationStatus, secs: i64) -> Record {
    let started = t0() + Duration::seconds(secs);
    Record::Operation {
        event: OperationEvent {
            operation_id: id(2, i),
            state_id: state.map(|s| id(1, s)),
            host: "stringdriver-test".into(),
            recorded_at: started,
            operation_type: OperationType::BumpCheck,
            operation_status: status,
            message: status
                .is_terminal()
                .then(|| format!("operation {i} {}", status.as_str())),
            stepper_indices: vec![1, 2],
            final_positions: vec![i as i32, -(i as i32)],
            completed_at: status.is_terminal().then(|| started + Duration::seconds(3)),
        },
    }
}
