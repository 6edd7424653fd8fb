//! How long a move takes on the boards: AccelStepper's acceleration ramp.
//!
//! The firmware moves with AccelStepper's `runToPosition`, whose step
//! intervals follow David Austin's approximation of a linear ramp
//! (`computeNewSpeed`): the first interval is `0.676 * sqrt(2 / a)`, each
//! following one `c - 2c / (4n + 1)`, never shorter than `1 / max_speed`,
//! and deceleration starts when the steps needed to stop reach the steps
//! left. The first step is taken at once. Measured on the real firmware:
//! X +100 steps at 500 steps/s and 10 000 steps/s² took 237 ms (this model:
//! 231 ms of stepping, the rest is the firmware's loop); `steps / speed`
//! alone says 200 ms.
//!
//! The simulator uses this for how long a board stays deaf; the driver for
//! how long it waits before it polls after a move. Both therefore agree on
//! what a ramp costs: about `speed / accel` on top of `steps / speed` for a
//! long move, `2 * sqrt(steps / accel)` for a short one.

use std::time::Duration;

/// Acceleration the boards are run with, steps/s² (hosts.md "Motor
/// parameters"; AccelStepper's own default is 1, so the firmware sets it).
pub const DEFAULT_ACCEL: f64 = 10_000.0;

/// Time AccelStepper takes to step `steps` steps from standstill to
/// standstill at `max_speed` steps/s and `accel` steps/s². Non-positive or
/// non-finite speeds and accelerations count as 1 (the slowest sane value).
pub fn move_time(steps: u64, max_speed: f64, accel: f64) -> Duration {
    let sane = |v: f64| if v.is_finite() && v > 0.0 { v } else { 1.0 };
    let (v, a) = (sane(max_speed), sane(accel));
    if steps < 2 {
        return Duration::ZERO; // the first step is taken at once
    }
    let c0 = 0.676 * (2.0 / a).sqrt(); // seconds
    let cmin = 1.0 / v;
    let target = steps as i64;
    let mut pos: i64 = 0;
    let mut n: i64 = 0;
    let mut cn = 0.0_f64;
    let mut speed = 0.0_f64;
    let mut total = 0.0_f64;
    // computeNewSpeed for a forward move; returns the next interval.
    let next_interval = |pos: i64, n: &mut i64, cn: &mut f64, speed: &mut f64| -> f64 {
        let left = target - pos;
        let to_stop = (*speed * *speed / (2.0 * a)) as i64;
        if *n > 0 && to_stop >= left {
            *n = -to_stop; // start decelerating
        } else if *n < 0 && to_stop < left {
            *n = -*n; // accelerate again
        }
        *cn = if *n == 0 {
            c0
        } else {
            (*cn - 2.0 * *cn / (4.0 * *n as f64 + 1.0)).max(cmin)
        };
        *n += 1;
        *speed = 1.0 / *cn;
        *cn
    };
    let mut interval = next_interval(pos, &mut n, &mut cn, &mut speed);
    // Bounded: every round takes at least one step (cruise rounds many).
    while pos < target {
        if pos > 0 {
            total += interval;
        }
        pos += 1;
        if pos == target {
            break;
        }
        interval = next_interval(pos, &mut n, &mut cn, &mut speed);
        // Cruising at full speed: skip ahead to where deceleration begins.
        let to_stop = (speed * speed / (2.0 * a)) as i64;
        if n > 0 && cn <= cmin && target - pos > to_stop + 2 {
            let skip = target - pos - to_stop - 2;
            total += skip as f64 * cmin;
            pos += skip;
        }
    }
    Duration::from_secs_f64(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(d: Duration) -> f64 {
        d.as_secs_f64() * 1000.0
    }

    #[test]
    fn x_plus_100_takes_the_measured_ramp_not_steps_over_speed() {
        let t = ms(move_time(100, 500.0, DEFAULT_ACCEL));
        assert!((228.0..=240.0).contains(&t), "{t} ms");
    }

    #[test]
    fn long_moves_cost_about_speed_over_accel_more() {
        let t = move_time(2600, 500.0, DEFAULT_ACCEL).as_secs_f64();
        assert!((5.2..5.26).contains(&t), "{t} s");
        let z = move_time(100, 100.0, DEFAULT_ACCEL).as_secs_f64();
        assert!((0.98..1.02).contains(&z), "{z} s");
    }

    #[test]
    fn the_cruise_shortcut_matches_stepping_every_step() {
        // Far beyond any limit: still quick and still steps/speed plus ramp.
        let t = move_time(10_000_000, 500.0, DEFAULT_ACCEL).as_secs_f64();
        assert!((20_000.0..20_000.1).contains(&t), "{t} s");
        assert_eq!(move_time(1, 500.0, DEFAULT_ACCEL), Duration::ZERO);
        assert!(move_time(10, f64::NAN, 0.0) > Duration::from_secs(1));
    }
}
