//! Errors of the board driver. Faults the board (or its absence) causes are
//! kept apart from requests the driver refuses before anything is sent.

use std::time::Duration;

use crate::protocol::{Firmware, Op};

/// Why a board request did not succeed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BoardError {
    /// Refused before sending: the stepper index is outside the board. The
    /// firmware does not check indices and would corrupt its memory.
    #[error(
        "board {board}: stepper {stepper} does not exist (the board has {count}); nothing was sent"
    )]
    StepperOutOfRange {
        /// Board name.
        board: String,
        /// The requested index.
        stepper: i64,
        /// Steppers on the board.
        count: usize,
    },
    /// Refused before sending: an argument does not fit the board's int width.
    #[error(
        "board {board}: value {value} does not fit the board's {bytes}-byte int; nothing was sent"
    )]
    ValueOutOfRange {
        /// Board name.
        board: String,
        /// The value.
        value: i64,
        /// The board's int width in bytes.
        bytes: usize,
    },
    /// Refused before sending: the firmware has no such command.
    #[error("board {board}: firmware {firmware} has no {op} command")]
    Unsupported {
        /// Board name.
        board: String,
        /// The firmware.
        firmware: Firmware,
        /// The command.
        op: Op,
    },
    /// The board is not ready to take commands (disconnected, resetting, no
    /// positions read yet).
    #[error("board {board} is not ready: {state}")]
    NotReady {
        /// Board name.
        board: String,
        /// Its link state, as text.
        state: String,
    },
    /// Refused before sending: the board has not been given its motor
    /// parameters since it last connected or reset, so it may move at its
    /// compiled-in speed or within its compiled-in limits.
    #[error("board {board}: its motor parameters (speed, acceleration, limits) have not been sent since it connected or reset{detail}; moves are refused until they are")]
    MotorNotSent {
        /// Board name.
        board: String,
        /// Why the last attempt failed, as `: ...`, or empty.
        detail: String,
    },
    /// The board did not answer in time.
    #[error("board {board}: no reply to {op} within {waited:?}")]
    Timeout {
        /// Board name.
        board: String,
        /// The unanswered command.
        op: Op,
        /// How long the driver waited.
        waited: Duration,
    },
    /// The board answered with something that is not a valid reply.
    #[error("board {board}: malformed reply to {op}: {detail}")]
    Malformed {
        /// Board name.
        board: String,
        /// The command.
        op: Op,
        /// What was wrong.
        detail: String,
    },
    /// A move or counter write that the next positions reply does not confirm
    /// (a target outside the firmware's limits is ignored without a reply).
    #[error("board {board}: stepper {stepper} reads {actual} after {op}, expected {expected}")]
    NotConfirmed {
        /// Board name.
        board: String,
        /// The command.
        op: Op,
        /// Stepper index on the board.
        stepper: usize,
        /// The position it should have.
        expected: i32,
        /// The position it reports.
        actual: i32,
    },
    /// The serial link failed (device vanished, I/O error).
    #[error("board {board}: link failed: {detail}")]
    Link {
        /// Board name.
        board: String,
        /// The I/O error, as text.
        detail: String,
    },
    /// Refused before sending: the counters could not be saved, so a crash
    /// during the move could later restore a wrong counter as if it were true.
    #[error("board {board}: counters cannot be saved ({detail}); no move is sent until they can")]
    Persist {
        /// Board name.
        board: String,
        /// Why.
        detail: String,
    },
    /// The driver task has stopped (daemon shutting down).
    #[error("board {board}: driver stopped")]
    Stopped {
        /// Board name.
        board: String,
    },
}

impl BoardError {
    /// Whether the board, or the line to it, is at fault (as opposed to a request refused by the host).
    pub fn is_device_fault(&self) -> bool {
        matches!(
            self,
            BoardError::Timeout { .. }
                | BoardError::Malformed { .. }
                | BoardError::NotConfirmed { .. }
                | BoardError::Link { .. }
        )
    }
}
