//! What an operation needs before it may start, checked in one place before
//! anything is recorded or moved: an operation refused here leaves no
//! `operations` row, no snapshot and no move, and its error says what was
//! missing (operations.md: an operation requested while the boards wait for
//! their reset must not record `started`, a nested `completed` and then
//! `failed`).
//!
//! Each kind declares its [`Needs`] in [`needs`]; a new kind (sweeps, X
//! homing) adds its row there and gets the same checks:
//! - every stepper it works on has a known counter: its board connected and
//!   its counters read (trusted or not: calibrating untrusted counters is
//!   what operations are for);
//! - every touch sensor it reads can be read, and they do not all read
//!   touching at rest (that is wiring, see [`OpError::SensorsAllTouching`]);
//! - the audmon feed is ok, for kinds that judge the sound.

use chrono::Utc;

use super::sweep::Reading;
use super::{Machine, OpError};
use crate::store::OperationType;

/// What one run of an operation needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Needs {
    /// Steppers (global indices) whose counters must be known.
    pub steppers: Vec<usize>,
    /// Z steppers whose touch sensors must be readable.
    pub sensors: Vec<usize>,
    /// Whether the audmon feed must be ok (every string's channel present).
    pub feed: bool,
}

/// What `kind` (on `only`, where the kind takes one stepper) needs.
pub fn needs(m: &Machine, kind: OperationType, only: Option<usize>) -> Result<Needs, OpError> {
    Ok(match kind {
        OperationType::BumpCheck | OperationType::ZCalibrate => {
            let z = m.enabled_z(only)?;
            Needs {
                steppers: z.clone(),
                sensors: z,
                feed: false,
            }
        }
        // A sweep moves X and runs z_adjust, bump_check and z_calibrate on
        // every pair; its own X checks are in `sweep::preconditions`.
        OperationType::SweepLeftRight | OperationType::SweepRightLeft => {
            let z = m.enabled_z(None)?;
            let mut steppers: Vec<usize> = m.layout.x().map(|x| x.first).into_iter().collect();
            steppers.extend(&z);
            Needs {
                steppers,
                sensors: z,
                feed: true,
            }
        }
        // X homing moves X alone; its limit switches are read (and a switch
        // that is missing or cannot be read reported) by the operation, which
        // records why in its row.
        OperationType::XHome | OperationType::XAway | OperationType::XCalibrate => Needs {
            steppers: m.layout.x().map(|x| x.first).into_iter().collect(),
            sensors: Vec::new(),
            feed: false,
        },
        // z_adjust works on every string's pair and judges the sound.
        OperationType::ZAdjust => {
            let z = m.enabled_z(None)?;
            Needs {
                steppers: z.clone(),
                sensors: z,
                feed: true,
            }
        }
    })
}

/// Checks what `kind` needs; the first thing missing is the error.
pub fn check(m: &Machine, kind: OperationType, only: Option<usize>) -> Result<(), OpError> {
    let n = needs(m, kind, only)?;
    let refuse = |why: String| OpError::NotReady {
        kind: kind.as_str().to_string(),
        why,
    };
    for &s in &n.steppers {
        m.gate
            .known_counter(s, false)
            .map_err(|e| refuse(e.to_string()))?;
    }
    let mut touching = Vec::new();
    for &s in &n.sensors {
        match m.sensors.read(s) {
            Ok(t) => touching.push(t),
            Err(e) => {
                return Err(refuse(format!(
                    "the touch sensor of stepper {s} cannot be read: {e}"
                )))
            }
        }
    }
    if n.sensors.len() >= 2 && touching.iter().all(|t| *t) {
        tracing::error!(
            operation = kind.as_str(),
            steppers = ?n.sensors,
            "every enabled touch sensor reads touching at rest: refused (mis-wired or mis-configured sensors?)"
        );
        return Err(OpError::SensorsAllTouching {
            steppers: n.sensors,
        });
    }
    if n.feed {
        feed_reading(m).map_err(refuse)?;
    }
    Ok(())
}

/// The audmon feed's values for the machine's strings (one channel each),
/// or why there are none ("it needs the audmon feed, which is absent"): the
/// one feed check, before an operation that judges the sound and at each of
/// a sweep's readings.
pub(super) fn feed_reading(m: &Machine) -> Result<Reading, String> {
    let feed = m.feed.borrow().clone();
    let values = feed
        .usable_at(Utc::now())
        .map_err(|e| format!("it needs the audmon feed, which is {e}"))?;
    let strings = m.layout.strings();
    match (
        values.voice_count.get(..strings),
        values.amp_sum.get(..strings),
    ) {
        (Some(voice_count), Some(amp_sum)) => Ok(Reading {
            voice_count: voice_count.to_vec(),
            amp_sum: amp_sum.to_vec(),
        }),
        _ => Err(format!(
            "it needs the audmon feed's {strings} channels (one per string), which has {}",
            values.voice_count.len().min(values.amp_sum.len())
        )),
    }
}
