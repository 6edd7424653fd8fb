//! bump_check: lift every touching enabled Z stepper just clear of its string.

use super::{Machine, OpError, BUMP_ATTEMPTS};
use crate::motion::OperationTicket;

pub(super) async fn run(
    m: &Machine,
    t: &OperationTicket,
    steppers: &[usize],
) -> Result<String, OpError> {
    let s = m.settings();
    if !s.operations.bump_check_enable {
        return Ok("bump_check is disabled (bump_check_enable = false): nothing done".into());
    }
    let up = s.operations.z_up_step;
    let (mut lifted, mut critical) = (Vec::new(), Vec::new());
    for &z in steppers {
        if !m.settings().enabled.get(z).copied().unwrap_or(false) {
            continue;
        }
        t.check()?;
        if !m.sensors.read(z)? {
            continue;
        }
        let mut cleared = false;
        for _attempt in 0..BUMP_ATTEMPTS {
            if m.counter(z) + up > m.z_max(z) {
                break; // at its maximum and still touching
            }
            m.gate.move_rel(&t.origin(), z, up).await?;
            // Move, rest z_rest, re-read: a sensor read before the
            // mechanism settled says where it was, not where it is.
            m.gate.settle(&t.origin(), z).await?;
            if !m.sensors.read(z)? {
                cleared = true;
                break;
            }
        }
        if cleared {
            m.gate.set_counter(&t.origin(), z, up).await?;
            lifted.push(z);
        } else {
            m.disable(
                z,
                "bump_check: still touching at its maximum or after 50 attempts",
            );
            critical.push(z);
        }
    }
    let mut msg = format!("lifted {lifted:?}");
    if !critical.is_empty() {
        msg.push_str(&format!(
            "; CRITICAL: disabled {critical:?} (still touching)"
        ));
    }
    Ok(msg)
}
