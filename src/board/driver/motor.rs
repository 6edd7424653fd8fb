//! Giving the board its motor parameters (`set_min`, `set_max`,
//! `set_speed`, `set_accel`) after every connect and every detected reset,
//! and when they change at run time.
//!
//! A board forgets them when it resets and comes back with its compiled-in
//! values, which may differ from what the host predicts a move's duration
//! from; so until the board has consumed a full set, moves on it are refused
//! (`BoardError::MotorNotSent`) and the driver tries again at every poll
//! tick. The set goes paced (`restore::send_paced`: never more bytes in
//! flight than the 63-byte receive buffer holds, each batch confirmed by a
//! positions reply). Every index is checked against the board (stepper
//! count, the firmware's axis groups) and every value against its width in
//! the firmware's argument layout before anything is sent: the firmware does
//! not check them and writes past its arrays.

use chrono::Utc;

use super::{Driver, Fail, Io};
use crate::board::error::BoardError;
use crate::board::status::MotorReport;
use crate::config::MotorWrite;
use crate::protocol::Op;

impl Driver {
    /// Checks `writes` against the board before anything is sent.
    pub(super) fn check_motor(&self, writes: &[MotorWrite]) -> Result<(), BoardError> {
        let fw = self.spec.firmware;
        for w in writes {
            match w.op {
                Op::SetSpeed | Op::SetAccel => self.check_stepper(w.index)?,
                Op::SetMin | Op::SetMax => {
                    if w.index >= usize::from(fw.axis_count()) {
                        return Err(BoardError::StepperOutOfRange {
                            board: self.spec.name.clone(),
                            stepper: w.index as i64,
                            count: usize::from(fw.axis_count()),
                        });
                    }
                }
                other => {
                    return Err(BoardError::Unsupported {
                        board: self.spec.name.clone(),
                        firmware: fw,
                        op: other,
                    })
                }
            }
            self.check_arg(w.op, i64::from(w.value))?;
        }
        Ok(())
    }

    /// Sends the board its motor parameters (`spec.motor`) if it has not
    /// got them since it last connected or reset. A device failure leaves
    /// them unsent (moves refused, tried again at the next tick) and is
    /// returned; only a link failure is fatal to the connection.
    pub(super) async fn ensure_motor(&mut self, io: &mut Io) -> Result<(), Fail> {
        if self.motor_sent {
            return Ok(());
        }
        let writes = self.spec.motor.clone();
        if writes.is_empty() {
            self.motor_sent = true;
            return Ok(());
        }
        if let Err(e) = self.check_motor(&writes) {
            // A configuration the board cannot take: never sent, and moves
            // stay refused with this reason (said once, not at every tick).
            let why = e.to_string();
            if self.motor_error.as_deref() != Some(why.as_str()) {
                tracing::error!(board = %self.spec.name, error = %e, "motor parameters refused: moves on this board are refused");
                self.note_error(&why);
            }
            self.motor_error = Some(why);
            return Err(Fail::Device(e));
        }
        let messages: Vec<(Op, Vec<i32>)> = writes
            .iter()
            .map(|w| (w.op, vec![w.index as i32, w.value]))
            .collect();
        let paced = self.send_paced(io, &messages).await.map_err(Fail::Link)?;
        if paced.written != writes.len() || paced.check.is_none() {
            let e = format!(
                "{} of {} sent, {}",
                paced.written,
                writes.len(),
                if paced.check.is_some() {
                    "the board refused the rest"
                } else {
                    "the board did not confirm them"
                }
            );
            tracing::error!(board = %self.spec.name, error = %e, "motor parameters not sent: moves on this board are refused until they are");
            self.motor_error = Some(e.clone());
            self.note_error(&e);
            return Err(Fail::Device(self.motor_not_sent()));
        }
        self.spec.apply_motor(&writes);
        self.motor_sent = true;
        self.motor_error = None;
        tracing::info!(board = %self.spec.name, commands = writes.len(), batches = paced.batches,
            max_bytes_in_flight = paced.max_in_flight, took = ?paced.took,
            "motor parameters sent");
        let report = MotorReport {
            writes,
            at: Utc::now(),
            batches: paced.batches,
            max_bytes_in_flight: paced.max_in_flight,
            took: paced.took,
        };
        self.status.send_modify(|s| {
            s.motor = Some(report);
            s.motor_sends += 1;
        });
        Ok(())
    }

    /// The board forgot its parameters (a reset, a new connection).
    pub(super) fn forget_motor(&mut self) {
        self.motor_sent = false;
        self.status.send_modify(|s| s.motor = None);
    }

    /// New parameters at run time: checked, made the ones every later
    /// connect or reset sends, and sent now.
    pub(super) async fn set_motor(
        &mut self,
        io: &mut Io,
        writes: Vec<MotorWrite>,
    ) -> Result<Vec<i32>, Fail> {
        self.check_motor(&writes).map_err(Fail::Device)?;
        self.spec.motor = writes;
        self.forget_motor();
        self.ensure_motor(io).await?;
        self.poll_retrying(io).await
    }

    /// Why moves are refused while the parameters are not sent.
    pub(super) fn motor_not_sent(&self) -> BoardError {
        BoardError::MotorNotSent {
            board: self.spec.name.clone(),
            detail: self
                .motor_error
                .as_ref()
                .map(|e| format!(" ({e})"))
                .unwrap_or_default(),
        }
    }
}
