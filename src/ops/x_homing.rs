//! x_home, x_away and x_calibrate: find the carriage's X limit switches
//! (`reference/operations.md`, "X homing"; the wiring in `hosts.md`).
//!
//! - **x_home**: set the X counter to X max (no motion), then move X by
//!   -[`STEP`] steps, rest x_rest, read the home switch, until it reads
//!   pressed. Pressed: set the counter to 0. Never pressed: fail, X left
//!   untrusted.
//! - **x_away**: the mirror: counter to 0, +[`STEP`] until the away switch
//!   reads pressed, then counter to X max.
//! - **x_calibrate**: home to the switch nearer the current counter (X max / 2
//!   and below: home), then move back to where the carriage was. Where it
//!   was is measured by the search itself — the steps travelled from the
//!   start to the switch — so it is right even when the old counter was not,
//!   and the message reports how far the old counter was off.
//! - A machine whose X max is 0 (a placeholder X without a motor,
//!   stringdriver-3) skips them: the operation is recorded `completed` with
//!   a message starting `skipped:`, and nothing is set or moved.
//!
//! # The counter while searching
//! The X counter is set with [`crate::motion::MotionGate::set_working_counter`]:
//! it stays *untrusted* from the first step until the switch is found, so no
//! snapshot records the working count as the carriage's position, and a
//! search that fails, is cancelled or is stopped leaves X untrusted (an
//! operator must home or set it before manual moves). Only the final counter
//! write at the switch makes it trusted.
//!
//! # Limits are not widened
//! Every move goes through the motion gate with the X limits as configured.
//! They allow the whole search: counting from X max down to X min (or from 0
//! up to X max) covers the whole X travel, so the switch is found wherever
//! the carriage physically is on its travel; the last step is shortened to
//! end exactly on the limit. The firmware applies the same limits to its own
//! counter, so a wider gate would only send moves the board ignores. A
//! search that reaches the end of the counted travel without the switch has
//! driven the carriage its whole travel: the switch is broken, disconnected
//! or mis-configured, and the operation fails.
//!
//! # Bounds
//! At most [`MAX_MOVES`] moves per search (operations.md), and never more
//! than the travel allows (X max / 10 moves on a 0..X max travel).
//!
//! # One switch for both ends
//! With one switch pressed at both ends (stringdriver-1), a switch already
//! pressed at the start is taken to be the end nearer the current counter:
//! at the end being looked for, the search ends at once; at the other end,
//! the carriage first moves off it (the switch must release) and then on to
//! the far end. With a switch per end, a switch pressed at the start is found
//! at once, with no move.

use std::time::Duration;

use super::progress::{Doing, SEARCH_EVERY};
use super::{Machine, OpError};
use crate::config::{Role, XSwitchWiring};
use crate::motion::{GateError, OperationTicket};
use crate::sensors::XEnd;
use crate::store::OperationType;

/// Steps per search move.
pub const STEP: i32 = 10;
/// Most moves one search makes.
pub const MAX_MOVES: u32 = 1000;

/// The X stepper and its configured travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct XTravel {
    /// Global index of the X stepper.
    pub stepper: usize,
    /// X min (the configured lower limit, 0 on the machines).
    pub min: i32,
    /// X max.
    pub max: i32,
}

impl XTravel {
    /// The end nearer `counter`: home at or below the middle of the travel.
    pub fn nearer_end(&self, counter: i32) -> XEnd {
        if i64::from(counter) * 2 <= i64::from(self.min) + i64::from(self.max) {
            XEnd::Home
        } else {
            XEnd::Away
        }
    }

    /// The counter a search toward `end` starts from: the other end.
    pub fn start(&self, end: XEnd) -> i32 {
        match end {
            XEnd::Home => self.max,
            XEnd::Away => self.min.max(0).min(self.max),
        }
    }

    /// The counter at the switch of `end`: 0 at home, X max away.
    pub fn at_switch(&self, end: XEnd) -> i32 {
        match end {
            XEnd::Home => 0.clamp(self.min, self.max),
            XEnd::Away => self.max,
        }
    }

    /// The next search step toward `end` from `counter`: [`STEP`] toward it,
    /// shortened to end on the limit; 0 when the counter is at the limit.
    pub fn next_step(&self, end: XEnd, counter: i32) -> i32 {
        match end {
            XEnd::Home => (-STEP).max(self.min.saturating_sub(counter)).min(0),
            XEnd::Away => STEP.min(self.max.saturating_sub(counter)).max(0),
        }
    }

    /// How many moves a search toward `end` can make at most: the travel
    /// in steps of [`STEP`] (the last one maybe shorter), and never more
    /// than [`MAX_MOVES`].
    pub fn move_bound(&self, end: XEnd) -> u32 {
        let from = i64::from(self.start(end));
        let to = match end {
            XEnd::Home => i64::from(self.min),
            XEnd::Away => i64::from(self.max),
        };
        let steps = (to - from).unsigned_abs();
        let moves = steps.div_ceil(STEP as u64);
        u32::try_from(moves).unwrap_or(u32::MAX).min(MAX_MOVES)
    }
}

/// The X travel of `m`'s layout; an error without an X stepper.
fn travel(m: &Machine) -> Result<XTravel, OpError> {
    let x = m
        .layout
        .x()
        .map(|r| r.first)
        .filter(|x| m.layout.role(*x) == Role::X)
        .ok_or_else(|| {
            OpError::XHoming("this machine has no X stepper (layout.x_index is not set)".into())
        })?;
    let (min, max) = m.layout.limits(x);
    Ok(XTravel {
        stepper: x,
        min,
        max,
    })
}

/// The skip message of a machine whose X max is 0, if it is one.
pub(super) fn skipped(m: &Machine, kind: OperationType) -> Option<String> {
    let t = travel(m).ok()?;
    (t.max == 0).then(|| {
        format!(
            "skipped: X max is 0 on this machine (a placeholder X without a motor): there is \
             nothing for {} to find; nothing was set or moved",
            kind.as_str()
        )
    })
}

/// Runs `kind` (x_home, x_away or x_calibrate).
pub(super) async fn run(
    m: &Machine,
    t: &OperationTicket,
    kind: OperationType,
) -> Result<String, OpError> {
    if let Some(skip) = skipped(m, kind) {
        tracing::info!(operation = kind.as_str(), "{skip}");
        return Ok(skip);
    }
    let x = travel(m)?;
    let wiring = m.sensors.x_switch_wiring();
    if wiring == XSwitchWiring::None {
        return Err(OpError::XHoming(format!(
            "{} needs X limit switches, and none are configured (sensors.x_home_line and \
             sensors.x_away_line, or sensors.x_switch_line; sensors.x_switches when simulated)",
            kind.as_str()
        )));
    }
    if !m
        .settings()
        .enabled
        .get(x.stepper)
        .copied()
        .unwrap_or(false)
    {
        return Err(GateError::Disabled(x.stepper).into());
    }
    let before = m.counter(x.stepper);
    let end = match kind {
        OperationType::XAway => XEnd::Away,
        OperationType::XCalibrate => x.nearer_end(before),
        _ => XEnd::Home,
    };
    let found = search(m, t, kind, x, wiring, end, before).await?;
    // Where the carriage was when the search started, now that the switch
    // says where the counter's 0 (or X max) is.
    let was = match end {
        XEnd::Home => x.at_switch(end) + found.travelled,
        XEnd::Away => x.at_switch(end) - found.travelled,
    };
    let mut msg = format!(
        "X {end} switch pressed after {} moves ({} steps); X counter set to {}; the carriage \
         was at {was}, where the counter said {before} (off by {})",
        found.moves,
        found.travelled,
        x.at_switch(end),
        before - was
    );
    if kind == OperationType::XCalibrate {
        if was != m.counter(x.stepper) {
            m.step(kind, x.stepper, Doing::MovingBack { to: was }, None);
            m.gate.move_abs(&t.origin(), x.stepper, was).await?;
            t.rest(x_rest(m)).await?;
        }
        msg.push_str(&format!("; moved back to {was}"));
    }
    Ok(msg)
}

/// What a search found.
struct Found {
    /// Moves made.
    moves: u32,
    /// Steps travelled from the start to the switch.
    travelled: i32,
}

fn x_rest(m: &Machine) -> Duration {
    Duration::from_secs_f64(m.settings().operations.x_rest.max(0.0))
}

/// Reads the switch of `end`.
fn pressed(m: &Machine, end: XEnd) -> Result<bool, OpError> {
    Ok(m.sensors.x_switch(end)?)
}

/// Counts from the far end and moves toward `end` until its switch reads
/// pressed (see the module doc); on success the counter is set to the
/// switch's value and trusted.
async fn search(
    m: &Machine,
    t: &OperationTicket,
    kind: OperationType,
    x: XTravel,
    wiring: XSwitchWiring,
    end: XEnd,
    before: i32,
) -> Result<Found, OpError> {
    // Read before anything is set: a switch that cannot be read fails the
    // operation with the counter as it was.
    let mut now = pressed(m, end)?;
    // One switch for both ends, pressed at the start: which end it is, the
    // counter decides; at the other end the carriage must first leave it.
    let mut leaving = wiring == XSwitchWiring::One && now && x.nearer_end(before) != end;
    let start = x.start(end);
    m.gate
        .set_working_counter(&t.origin(), x.stepper, start)
        .await?;
    let bound = x.move_bound(end);
    let rest = x_rest(m);
    let mut moves = 0u32;
    loop {
        if now && !leaving {
            break;
        }
        if leaving && !now {
            leaving = false;
        }
        let counter = m.counter(x.stepper);
        let step = x.next_step(end, counter);
        if moves >= bound || step == 0 {
            return Err(OpError::XHoming(format!(
                "the X {end} switch never read pressed: {moves} moves ({} steps, {}) from X \
                 counter {start}; X is left untrusted (home it again, or set it, before moving \
                 it by hand); check the switch, its wiring and its sensors line",
                (counter - start).abs(),
                if moves >= MAX_MOVES {
                    format!("the bound of {MAX_MOVES} moves")
                } else {
                    "the whole configured X travel".to_string()
                }
            )));
        }
        if moves % SEARCH_EVERY == 0 {
            m.step(
                kind,
                x.stepper,
                Doing::Searching {
                    end: end.to_string(),
                    at: counter,
                    moves,
                },
                None,
            );
        }
        m.gate.move_rel(&t.origin(), x.stepper, step).await?;
        moves += 1;
        // Read after the rest, when the carriage has settled.
        t.rest(rest).await?;
        now = pressed(m, end)?;
    }
    let travelled = (m.counter(x.stepper) - start).abs();
    m.gate
        .set_counter(&t.origin(), x.stepper, x.at_switch(end))
        .await?;
    tracing::info!(stepper = x.stepper, %end, moves, travelled, "X limit switch found");
    m.step(
        kind,
        x.stepper,
        Doing::SwitchFound {
            end: end.to_string(),
            at: x.at_switch(end),
            moves,
        },
        None,
    );
    Ok(Found { moves, travelled })
}

#[cfg(test)]
mod tests {
    use super::*;

    const X: XTravel = XTravel {
        stepper: 0,
        min: 0,
        max: 2396,
    };

    #[test]
    fn the_nearer_end_is_judged_by_the_middle_of_the_travel() {
        assert_eq!(X.nearer_end(0), XEnd::Home);
        assert_eq!(X.nearer_end(1198), XEnd::Home);
        assert_eq!(X.nearer_end(1199), XEnd::Away);
        assert_eq!(X.nearer_end(5000), XEnd::Away);
        assert_eq!(X.nearer_end(-20), XEnd::Home);
    }

    #[test]
    fn searches_cover_the_travel_and_end_on_the_limit() {
        assert_eq!((X.start(XEnd::Home), X.at_switch(XEnd::Home)), (2396, 0));
        assert_eq!((X.start(XEnd::Away), X.at_switch(XEnd::Away)), (0, 2396));
        assert_eq!(X.next_step(XEnd::Home, 2396), -10);
        assert_eq!(X.next_step(XEnd::Home, 6), -6, "shortened to the limit");
        assert_eq!(X.next_step(XEnd::Home, 0), 0, "at the limit");
        assert_eq!(X.next_step(XEnd::Away, 2390), 6);
        assert_eq!(X.next_step(XEnd::Away, 2396), 0);
        // 2396 steps: 239 moves of 10 and one of 6.
        assert_eq!(X.move_bound(XEnd::Home), 240);
        assert_eq!(X.move_bound(XEnd::Away), 240);
        // A travel longer than 1000 moves is bounded by them.
        let long = XTravel { max: 30_000, ..X };
        assert_eq!(long.move_bound(XEnd::Home), MAX_MOVES);
        // stringdriver-2.
        let sd2 = XTravel { max: 2600, ..X };
        assert_eq!(sd2.move_bound(XEnd::Home), 260);
    }
}
