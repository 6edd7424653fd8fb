//! z_calibrate: find each enabled Z stepper's contact point and make its
//! counter 0 there, then lift every stepper just clear.
//!
//! The sensor is read only after the stepper's z_rest since its last move
//! ([`crate::motion::MotionGate::settle`]), so the mechanism has settled.
//!
//! A stepper whose calibration fails after its counter was set to its max
//! (a sensor error, a board error, a cancel, a jog) is left with a counter
//! that is no longer true: it is marked **untrusted**
//! ([`crate::motion::MotionGate::distrust`]) rather than restored. Restoring
//! would need a counter write, which no operation may send after a cancel,
//! and after a board error the position is not known anyway; untrusted is
//! true in every case (manual moves are refused and snapshots pause until
//! the stepper is calibrated or its counter set), and the operation's
//! message shows it ("left: 3 at 40 (untrusted)").

use super::progress::{Doing, DESCENT_EVERY};
use super::{Machine, OpError, FINAL_BUMP_ROUNDS};
use crate::motion::OperationTicket;
use crate::store::OperationType;

/// How one stepper's calibration ended.
enum Found {
    /// Touched with the counter at this value (before it was set to 0).
    Contact(i32),
    /// Reached 0 without touching.
    Unreachable,
}

/// Descends `z` from its max until its sensor reads touching; reports its
/// start and every [`DESCENT_EVERY`] steps (`count`: steppers done of all).
async fn descend(
    m: &Machine,
    t: &OperationTicket,
    z: usize,
    max: i32,
    count: (usize, usize),
) -> Result<Found, OpError> {
    let down = m.settings().operations.z_down_step;
    m.gate.set_counter(&t.origin(), z, max).await?;
    // From max to 0 in steps of |z_down_step|, plus one look at 0.
    let bound = (max.max(0) / down.abs().max(1)) as u32 + 2;
    for n in 0..bound {
        if n % DESCENT_EVERY == 0 {
            let at = m.counter(z);
            m.step(
                OperationType::ZCalibrate,
                z,
                Doing::Descending { at },
                Some(count),
            );
        }
        // Rest z_rest since the last move, then read (operations.md).
        m.gate.settle(&t.origin(), z).await?;
        t.check()?;
        if m.sensors.read(z)? {
            return Ok(Found::Contact(m.counter(z)));
        }
        if m.counter(z) <= 0 {
            break;
        }
        m.gate.move_rel(&t.origin(), z, down).await?;
    }
    Ok(Found::Unreachable)
}

pub(super) async fn run(
    m: &Machine,
    t: &OperationTicket,
    steppers: &[usize],
) -> Result<String, OpError> {
    m.nested(t, OperationType::BumpCheck, None, &[]).await?;
    let mut report = Vec::new();
    let of = steppers.len();
    for (done, &z) in steppers.iter().enumerate() {
        t.check()?;
        if !m.settings().enabled.get(z).copied().unwrap_or(false) {
            continue;
        }
        let before = m.counter(z);
        let max = m.z_max(z);
        let found = match descend(m, t, z, max, (done, of)).await {
            Ok(f) => f,
            Err(e) => {
                // Its counter was (or may have been) set to max: no longer true.
                if let Err(d) = m.gate.distrust(z).await {
                    tracing::error!(stepper = z, error = %d, "cannot mark the counter untrusted after a failed calibration");
                }
                return Err(e);
            }
        };
        match found {
            Found::Contact(at_contact) => {
                if let Err(e) = m.gate.set_counter(&t.origin(), z, 0).await {
                    if let Err(d) = m.gate.distrust(z).await {
                        tracing::error!(stepper = z, error = %d, "cannot mark the counter untrusted after a failed calibration");
                    }
                    return Err(e.into());
                }
                // In the old numbering the contact was at `before - (max - at_contact)`;
                // now it is 0: that is how far the counter was off.
                let offset = before - (max - at_contact);
                m.step(
                    OperationType::ZCalibrate,
                    z,
                    Doing::Touched {
                        at: at_contact,
                        offset,
                    },
                    Some((done + 1, of)),
                );
                report.push(format!(
                    "{}: {}",
                    m.named(z),
                    super::progress::offset_words(offset as i64)
                ));
            }
            Found::Unreachable => {
                m.disable(z, "z_calibrate: reached 0 without touching its string");
                m.step(
                    OperationType::ZCalibrate,
                    z,
                    Doing::Unreachable,
                    Some((done + 1, of)),
                );
                report.push(format!("{}: cannot reach its string, disabled", m.named(z)));
            }
        }
    }
    for _round in 0..FINAL_BUMP_ROUNDS {
        t.check()?;
        let touching = steppers
            .iter()
            .filter(|z| m.settings().enabled.get(**z).copied().unwrap_or(false))
            .map(|z| m.sensors.read(*z))
            .collect::<Result<Vec<bool>, _>>()?;
        if !touching.iter().any(|t| *t) {
            break;
        }
        m.nested(t, OperationType::BumpCheck, None, &[]).await?;
    }
    Ok(report.join("; "))
}
