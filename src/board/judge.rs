//! What counters that changed with no command from the host mean.
//!
//! A board's counters change on their own for two reasons
//! (`controller-protocol.md`, "Jog switches"): an operator holds a jog switch
//! at the machine — the firmware moves the stepper and counts the steps, so
//! the new count is as true as any — or the board reset, and whatever it
//! reads afterwards (zeros, or zeros plus motion nobody commanded, as when a
//! board boots with its switch inputs reading pressed) says nothing about
//! where the motors are. This module is the one place that tells them apart,
//! from the counters and the board's silence only; it has no I/O.
//!
//! The evidence of a reset is either every counter reading 0 where known
//! ones were not, or the board having been silent for about its boot time
//! (polls failed for at least `reset_wait`) before counters changed. A
//! change after silence is never taken as a jog: the driver cannot know what
//! happened while it heard nothing.

/// Why a reset was concluded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ResetEvidence {
    /// Every counter reads 0 where known counters were not.
    AllZero,
    /// The board was silent for about its boot time, then counters differed.
    Silence,
}

/// The driver's conclusion about a fresh reading.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Judgement {
    /// Nothing changed that a command did not explain.
    Unchanged,
    /// Counters changed while the board answered all along: jogs at the
    /// machine (local indices), kept as true.
    Jogged(Vec<usize>),
    /// The board reset.
    Reset {
        /// What showed it.
        evidence: ResetEvidence,
        /// Steppers that read 0 where their known counter was not: the
        /// known value can be written back (the motor did not move).
        zeros: Vec<usize>,
        /// Steppers whose counters moved after the reset: never trusted,
        /// never restored (the motor moved by an unknown amount).
        moved: Vec<usize>,
    },
}

/// Judges `fresh` counters against the `known` ones. `exempt(i)` is true for
/// a counter the last command may have changed; `silent` says the board was
/// silent for about its boot time before this reading (or its port was just
/// opened, which resets an AVR board).
pub(super) fn judge(
    known: &[i32],
    fresh: &[i32],
    exempt: impl Fn(usize) -> bool,
    silent: bool,
) -> Judgement {
    let pairs = || known.iter().zip(fresh).enumerate();
    let all_zero = fresh.iter().all(|v| *v == 0);
    if all_zero && pairs().any(|(i, (k, _))| *k != 0 && !exempt(i)) {
        return Judgement::Reset {
            evidence: ResetEvidence::AllZero,
            zeros: pairs()
                .filter(|(_, (k, _))| **k != 0)
                .map(|(i, _)| i)
                .collect(),
            moved: Vec::new(),
        };
    }
    let changed: Vec<usize> = pairs()
        .filter(|(i, (k, f))| k != f && !exempt(*i))
        .map(|(i, _)| i)
        .collect();
    if changed.is_empty() {
        return Judgement::Unchanged;
    }
    if silent {
        let (zeros, moved) = changed.into_iter().partition(|i| fresh[*i] == 0);
        return Judgement::Reset {
            evidence: ResetEvidence::Silence,
            zeros,
            moved,
        };
    }
    Judgement::Jogged(changed)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NONE: fn(usize) -> bool = |_| false;

    #[test]
    fn a_change_while_the_board_answered_is_a_jog() {
        let j = judge(&[0, 20, 5], &[0, 35, 5], NONE, false);
        assert_eq!(j, Judgement::Jogged(vec![1]));
    }

    #[test]
    fn the_commanded_counter_is_not_a_jog() {
        assert_eq!(
            judge(&[0, 20, 5], &[0, 35, 5], |i| i == 1, false),
            Judgement::Unchanged
        );
    }

    #[test]
    fn all_zeros_where_counters_were_known_is_a_reset() {
        let j = judge(&[300, 20, 0], &[0, 0, 0], NONE, false);
        assert_eq!(
            j,
            Judgement::Reset {
                evidence: ResetEvidence::AllZero,
                zeros: vec![0, 1],
                moved: vec![]
            }
        );
    }

    #[test]
    fn a_reset_followed_by_motion_is_a_reset_and_the_moved_counters_are_named() {
        // Stepper 0 read 0 (restorable), steppers 1 and 2 moved away from 0
        // on their own after the board came up: not jogs, not restorable.
        let j = judge(&[300, 20, 20, 7], &[0, 12, 12, 7], NONE, true);
        assert_eq!(
            j,
            Judgement::Reset {
                evidence: ResetEvidence::Silence,
                zeros: vec![0],
                moved: vec![1, 2]
            }
        );
    }

    #[test]
    fn silence_without_any_change_is_no_judgement() {
        assert_eq!(judge(&[3, 4], &[3, 4], NONE, true), Judgement::Unchanged);
    }

    #[test]
    fn zeros_that_were_zero_are_no_reset() {
        assert_eq!(judge(&[0, 0], &[0, 0], NONE, false), Judgement::Unchanged);
    }
}
