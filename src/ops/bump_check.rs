//! bump_check: lift every touching enabled Z stepper just clear of its string.

use super::progress::Doing;
use super::{Machine, OpError, BUMP_ATTEMPTS};
use crate::motion::OperationTicket;
use crate::store::OperationType;

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

    /// The operation's message, in words: "no stepper was touching its
    /// string", "lifted clear: 3 (z1in), 5 (z2in)", and the steppers
    /// disabled as CRITICAL.
    pub fn message(&self, layout: &crate::config::Layout) -> String {
        if self.off {
            return "bump_check is disabled (bump_check_enable = false): nothing done".into();
        }
        let list = |v: &[usize]| {
            v.iter()
                .map(|z| super::named(layout, *z))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut parts = Vec::new();
        if !self.lifted.is_empty() {
            parts.push(format!("lifted clear: {}", list(&self.lifted)));
        }
        if !self.critical.is_empty() {
            parts.push(format!(
                "CRITICAL: still touching, disabled: {}",
                list(&self.critical)
            ));
        }
        if parts.is_empty() {
            "no stepper was touching its string".into()
        } else {
            parts.join("; ")
        }
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
    let report = |z: usize, doing: Doing| m.step(OperationType::BumpCheck, z, doing, None);
    for &z in steppers {
        if !m.settings().enabled.get(z).copied().unwrap_or(false) {
            continue;
        }
        t.check()?;
        if !m.sensors.read(z)? {
            continue;
        }
        report(z, Doing::Lifting { at: m.counter(z) });
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
            report(z, Doing::Lifted { at: m.counter(z) });
            lifted.push(z);
        } else {
            report(z, Doing::StillTouching { at: m.counter(z) });
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
