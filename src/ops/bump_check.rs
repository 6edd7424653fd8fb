//! bump_check: lift every touching enabled Z stepper just clear of its string.

use super::{Machine, OpError, BUMP_ATTEMPTS};
use crate::motion::OperationTicket;

/// What a bump_check found: the steppers it lifted clear and those it
/// disabled (still touching). A sweep's pass is clean only when both are empty.
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct BumpReport {
    /// Skipped: bump_check_enable is off.
    pub off: bool,
    /// Lifted until their sensor cleared.
    pub lifted: Vec<usize>,
    /// Still touching at their maximum or after 50 attempts: disabled.
    pub critical: Vec<usize>,
}

impl BumpReport {
    /// The enabled Z steppers found touching.
    pub fn touching(&self) -> Vec<usize> {
        let mut t = [self.lifted.as_slice(), self.critical.as_slice()].concat();
        t.sort_unstable();
        t
    }

    /// The operation's message.
    pub fn message(&self) -> String {
        if self.off {
            return "bump_check is disabled (bump_check_enable = false): nothing done".into();
        }
        let mut msg = format!("lifted {:?}", self.lifted);
        if !self.critical.is_empty() {
            msg.push_str(&format!(
                "; CRITICAL: disabled {:?} (still touching)",
                self.critical
            ));
        }
        msg
    }
}

pub(super) async fn run(
    m: &Machine,
    t: &OperationTicket,
    steppers: &[usize],
) -> Result<BumpReport, OpError> {
    let s = m.settings();
    if !s.operations.bump_check_enable {
        return Ok(BumpReport {
            off: true,
            ..BumpReport::default()
        });
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
    Ok(BumpReport {
        off: false,
        lifted,
        critical,
    })
}
