//! What a running operation reports while it works, for people following
//! it (`stringdriverctl op run --wait`, `events`): a sweep's pass
//! ([`super::sweep::SweepProgress`]) or one step of an operation on one
//! stepper ([`Step`]: z_calibrate descending, bump_check lifting, z_adjust
//! moving a channel's stepper, X homing searching its switch). The control
//! socket forwards them as `operation` events, a sweep's with phase
//! `progress`, a step's with phase `step`. Reports are best effort: nobody
//! listening is fine, and none changes what the operation does.

use serde::Serialize;

use super::sweep::SweepProgress;
use crate::config::Role;
use crate::store::OperationType;

/// One progress report.
#[derive(Debug, Clone, PartialEq)]
pub enum Progress {
    /// A sweep's pass (or a calibration it calls for).
    Sweep(SweepProgress),
    /// One step of an operation.
    Step(Step),
    /// An operation's `started` row is written: its kind and id, which
    /// `status` shows while it runs (a repetition's every run has its own;
    /// a nested operation, such as z_calibrate's bump_check, its own kind).
    Recorded(OperationType, uuid::Uuid),
}

/// One step of an operation, on one stepper where it has one.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Step {
    /// The operation reporting (a nested bump_check reports as bump_check).
    pub kind: OperationType,
    /// The stepper's global index.
    pub stepper: Option<usize>,
    /// Its name (`z2in`), as the stepper map defines it.
    pub name: Option<String>,
    /// Its role in words (`Z in, string 2`).
    pub role: Option<String>,
    /// Steppers (or channels) finished so far in this operation.
    pub done: Option<u32>,
    /// Steppers (or channels) this operation works on.
    pub of: Option<u32>,
    /// What happens.
    #[serde(flatten)]
    pub doing: Doing,
}

/// What a [`Step`] reports, with its numbers (serialized as `doing` and
/// the variant's fields beside it).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "doing", rename_all = "snake_case")]
pub enum Doing {
    /// z_calibrate: descends toward the string, counter now `at`.
    Descending {
        /// The counter.
        at: i32,
    },
    /// z_calibrate: touched its string with the counter at `at`; the old
    /// counter was `offset` steps high (negative: low); now 0.
    Touched {
        /// The counter at contact (counted from the stepper's max).
        at: i32,
        /// How far the counter was off.
        offset: i32,
    },
    /// z_calibrate: reached 0 without touching; disabled.
    Unreachable,
    /// bump_check: found touching at `at`, lifting.
    Lifting {
        /// The counter.
        at: i32,
    },
    /// bump_check: lifted clear at `at`.
    Lifted {
        /// The counter.
        at: i32,
    },
    /// bump_check: still touching at its maximum (or after every attempt); disabled.
    StillTouching {
        /// The counter.
        at: i32,
    },
    /// z_adjust: moves the stepper of `channel` by `delta`.
    Adjusting {
        /// The channel (= string).
        channel: usize,
        /// Steps.
        delta: i32,
        /// `too_close` or `too_far`.
        verdict: &'static str,
    },
    /// z_adjust: the move would leave the stepper's limits; skipped.
    AtLimit {
        /// The channel (= string).
        channel: usize,
    },
    /// X homing: searching the `end` switch, counter at `at` after `moves` moves.
    Searching {
        /// `home` or `away`.
        end: String,
        /// The (working) counter.
        at: i32,
        /// Moves so far.
        moves: u32,
    },
    /// X homing: the `end` switch read pressed; counter set to `at`.
    SwitchFound {
        /// `home` or `away`.
        end: String,
        /// The counter set.
        at: i32,
        /// Moves it took.
        moves: u32,
    },
    /// x_calibrate: moving back to where the carriage was.
    MovingBack {
        /// The target.
        to: i32,
    },
}

impl Step {
    /// A step of `kind` on `stepper` (named and described by `role`).
    pub fn on(kind: OperationType, stepper: usize, role: Role, doing: Doing) -> Step {
        Step {
            kind,
            stepper: Some(stepper),
            name: role.name(),
            role: Some(role.to_string()),
            done: None,
            of: None,
            doing,
        }
    }

    /// With `done` of `of` finished.
    pub fn counted(self, done: usize, of: usize) -> Step {
        Step {
            done: Some(done as u32),
            of: Some(of as u32),
            ..self
        }
    }
}

/// How far a counter was off, in words ("counter was 10 steps high,
/// corrected"): z_calibrate's message and its progress lines say it alike.
pub fn offset_words(offset: i64) -> String {
    let steps = |n: i64| {
        if n == 1 {
            "1 step".to_string()
        } else {
            format!("{n} steps")
        }
    };
    match offset {
        0 => "counter was right".into(),
        o if o > 0 => format!("counter was {} high, corrected", steps(o)),
        o => format!("counter was {} low, corrected", steps(-o)),
    }
}

/// A descent reports every this many steps (its start and its end always).
pub const DESCENT_EVERY: u32 = 10;
/// An X search reports every this many moves.
pub const SEARCH_EVERY: u32 = 10;

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_step_serializes_flat_with_its_stepper_named() {
        let s = Step::on(
            OperationType::ZCalibrate,
            5,
            Role::ZIn { string: 2 },
            Doing::Descending { at: 14 },
        )
        .counted(3, 12);
        assert_eq!(
            serde_json::to_value(&s).expect("json"),
            json!({"kind": "z_calibrate", "stepper": 5, "name": "z2in", "role": "Z in, string 2",
                   "done": 3, "of": 12, "doing": "descending", "at": 14})
        );
    }
}
