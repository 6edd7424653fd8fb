//! Jog switches and motion nobody commanded, in the simulated firmware.
//!
//! Every board has jog switches at the machine (`controller-protocol.md`,
//! "Jog switches"): while one is held, the firmware's loop moves that
//! stepper toward its limit at its speed and counts the steps, between
//! messages and with no command from the host. A board that comes up with
//! its switch inputs reading pressed moves by itself right after its reset.
//! Both change counters and mechanism together (the motor really turns),
//! which is what makes a jog's count true and a post-reset count useless.
//!
//! The model moves at the stepper's configured group speed without the
//! deceleration ramp of a release, stops at the group's limits, and does
//! not jog while the firmware is busy (a blocking move or reply): each
//! advance counts at most [`MAX_STEP_TIME`] of held time, so time spent
//! deaf is not caught up in one jump.

use std::time::{Duration, Instant};

use super::firmware::Board;

/// Longest stretch of held time one advance turns into steps.
pub const MAX_STEP_TIME: Duration = Duration::from_millis(10);

/// Moves `stepper`'s counter and mechanism by up to `steps`, stopping at its
/// group's limits; returns the steps made. A stepper past the board moves nothing.
pub fn step(board: &mut Board, stepper: usize, steps: i64) -> i64 {
    let profile = board.profile();
    let Some(group) = profile
        .group_of
        .get(stepper)
        .and_then(|g| profile.groups.get(*g))
        .copied()
    else {
        return 0;
    };
    let mut counters = board.counters().to_vec();
    let mut physical = board.physical().to_vec();
    let (Some(c), Some(p)) = (counters.get_mut(stepper), physical.get_mut(stepper)) else {
        return 0;
    };
    let target = (*c as i64 + steps).clamp(group.min as i64, group.max as i64);
    let made = target - *c as i64;
    *c = target as i32;
    *p += made;
    board.set_counters(&counters);
    board.set_physical(&physical);
    made
}

/// A held switch.
#[derive(Debug, Clone)]
struct Held {
    stepper: usize,
    toward_max: bool,
    last: Instant,
    /// Fraction of a step carried to the next advance.
    carry: f64,
}

/// The switches held now.
#[derive(Debug, Default)]
pub struct Switches {
    held: Vec<Held>,
}

impl Switches {
    /// Presses the switch of `stepper` toward its max (or min). Pressing a
    /// stepper's switch again changes direction.
    pub fn press(&mut self, stepper: usize, toward_max: bool) {
        self.release(stepper);
        self.held.push(Held {
            stepper,
            toward_max,
            last: Instant::now(),
            carry: 0.0,
        });
    }

    /// Releases the switch of `stepper` (the motor stops).
    pub fn release(&mut self, stepper: usize) {
        self.held.retain(|h| h.stepper != stepper);
    }

    /// Whether any switch is held.
    pub fn any(&self) -> bool {
        !self.held.is_empty()
    }

    /// Turns the time held since the last advance into steps (at the
    /// stepper's group speed times `speed_scale`).
    pub fn advance(&mut self, board: &mut Board, speed_scale: f64) {
        let now = Instant::now();
        for h in &mut self.held {
            let held = now.saturating_duration_since(h.last).min(MAX_STEP_TIME);
            h.last = now;
            let profile = board.profile();
            let speed = profile
                .group_of
                .get(h.stepper)
                .and_then(|g| profile.groups.get(*g))
                .map_or(0.0, |g| g.speed);
            let scale = if speed_scale.is_finite() && speed_scale > 0.0 {
                speed_scale
            } else {
                1.0
            };
            let due = held.as_secs_f64() * speed * scale + h.carry;
            let whole = due.floor();
            h.carry = due - whole;
            if whole >= 1.0 {
                let dir = if h.toward_max { 1 } else { -1 };
                step(board, h.stepper, dir * whole as i64);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Firmware;
    use crate::sim::Profile;

    #[test]
    fn a_step_moves_counter_and_mechanism_and_stops_at_the_limit() {
        let mut b = Board::new(Profile::for_firmware(Firmware::V2, None));
        assert_eq!(step(&mut b, 1, 30), 30);
        assert_eq!((b.counters()[1], b.physical()[1]), (30, 30));
        // Z max is 100: only 70 more.
        assert_eq!(step(&mut b, 1, 500), 70);
        assert_eq!(b.counters()[1], 100);
        assert_eq!(step(&mut b, 99, 5), 0);
    }
}
