//! z_calibrate: find each enabled Z stepper's contact point and make its
//! counter 0 there, then lift every stepper just clear.

use super::{Machine, OpError, FINAL_BUMP_ROUNDS};
use crate::motion::OperationTicket;
use crate::store::OperationType;

pub(super) async fn run(
    m: &Machine,
    t: &OperationTicket,
    steppers: &[usize],
) -> Result<String, OpError> {
    m.run_recorded(t, OperationType::BumpCheck, None).await?;
    let down = m.settings().operations.z_down_step;
    let mut report = Vec::new();
    for &z in steppers {
        if !m.settings().enabled.get(z).copied().unwrap_or(false) {
            continue;
        }
        let before = m.counter(z);
        let max = m.z_max(z);
        m.gate.set_counter(&t.origin(), z, max).await?;
        // From max to 0 in steps of |z_down_step|, plus one look at 0.
        let bound = (max.max(0) / down.abs().max(1)) as u32 + 2;
        let mut touched = false;
        for _ in 0..bound {
            if m.sensors.read(z)? {
                touched = true;
                break;
            }
            if m.counter(z) <= 0 {
                break;
            }
            m.gate.move_rel(&t.origin(), z, down).await?;
        }
        if touched {
            // The counter at contact versus 0: how far off it was.
            let at_contact = m.counter(z);
            m.gate.set_counter(&t.origin(), z, 0).await?;
            // In the old numbering the contact was at `before - (max - at_contact)`;
            // now it is 0: that is how far the counter was off.
            report.push(format!("{z}: offset {}", before - (max - at_contact)));
        } else {
            m.disable(z, "z_calibrate: reached 0 without touching its string");
            report.push(format!("{z}: cannot reach its string, disabled"));
        }
    }
    for _round in 0..FINAL_BUMP_ROUNDS {
        let touching = steppers
            .iter()
            .filter(|z| m.settings().enabled.get(**z).copied().unwrap_or(false))
            .map(|z| m.sensors.read(*z))
            .collect::<Result<Vec<bool>, _>>()?;
        if !touching.iter().any(|t| *t) {
            break;
        }
        m.run_recorded(t, OperationType::BumpCheck, None).await?;
    }
    Ok(report.join("; "))
}
