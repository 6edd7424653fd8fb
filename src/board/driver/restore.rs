//! Writing to the board at its pace: counters after a reset, and
//! anything else without a reply (motor parameters, `super::motor`).
//!
//! `set_stepper` has no reply, and the board's receive buffer holds 63
//! bytes (`controller-protocol.md`); the real firmware loses messages from
//! about 16 back-to-back set_steppers on. So the writes go in batches that,
//! with the positions request that follows them, fit in the buffer; the
//! positions reply proves every byte before it was consumed (the firmware
//! handles messages in order), and only then does the next batch go. The
//! last reply verifies every counter before any is trusted again.

use bytes::BytesMut;
use tokio::time::Instant;
use tokio_util::codec::Encoder;

use super::{Driver, Fail, Io};
use crate::board::status::RestoreReport;
use crate::protocol::frame::BOARD_RX_BUFFER;
use crate::protocol::{Op, Outbound, Request as Wire};

/// Size assumed for a message the codec cannot size: the longest a
/// two-argument message of 4-byte ints can be with every byte escaped.
const WORST_MESSAGE: usize = 3 + 2 * (1 + 8) + 1;

impl Driver {
    /// Bytes `op` with `args` takes on the wire, as this link's codec writes it.
    fn wire_len(&self, io: &mut Io, op: Op, args: Vec<i32>) -> usize {
        let Some(id) = self.spec.firmware.id(op) else {
            return WORST_MESSAGE;
        };
        let mut buf = BytesMut::new();
        match io
            .codec_mut()
            .encode(Outbound::Command(Wire { id, args }), &mut buf)
        {
            Ok(()) => buf.len(),
            Err(_) => WORST_MESSAGE,
        }
    }

    /// Sends `messages` (commands without a reply) paced as the module doc
    /// says: batches that, with the positions request after each, fit the
    /// board's receive buffer, each confirmed by a positions reply before the
    /// next goes; the last reply is read with retries and returned (`None`
    /// if the board did not answer it). A link failure is the error; a
    /// device failure stops the sending (`written` says how far it got).
    pub(super) async fn send_paced(
        &mut self,
        io: &mut Io,
        messages: &[(Op, Vec<i32>)],
    ) -> Result<Paced, String> {
        let started = Instant::now();
        let poll_len = self.wire_len(io, Op::Positions, vec![]);
        let budget = BOARD_RX_BUFFER.saturating_sub(poll_len);
        let mut in_flight = 0usize;
        let mut max_in_flight = 0usize;
        let mut batches = 0usize;
        let mut written = 0usize;
        for (op, args) in messages {
            let len = self.wire_len(io, *op, args.clone());
            if in_flight > 0 && in_flight + len > budget {
                // Confirm this batch before the next one goes.
                max_in_flight = max_in_flight.max(in_flight + poll_len);
                batches += 1;
                match self.read_positions(io).await {
                    Ok(_) => in_flight = 0,
                    Err(Fail::Link(e)) => return Err(e),
                    Err(Fail::Device(e)) => {
                        tracing::error!(board = %self.spec.name, %op, error = %e, "the board did not confirm a batch: stopping");
                        break;
                    }
                }
            }
            match self.exchange(io, *op, args.clone()).await {
                Ok(_) => {
                    in_flight += len;
                    written += 1;
                }
                Err(Fail::Link(e)) => return Err(e),
                Err(Fail::Device(e)) => {
                    tracing::error!(board = %self.spec.name, %op, ?args, error = %e, "sending failed");
                    break;
                }
            }
        }
        max_in_flight = max_in_flight.max(in_flight + poll_len);
        batches += 1;
        let check = match self.read_retrying(io).await {
            Ok(p) => Some(p),
            Err(Fail::Link(e)) => return Err(e),
            Err(Fail::Device(_)) => None,
        };
        Ok(Paced {
            written,
            batches,
            max_in_flight,
            took: started.elapsed(),
            check,
        })
    }

    /// Writes `writes` (stepper, counter) paced ([`Self::send_paced`]) and
    /// returns the verifying reading (`None` if the board did not answer it)
    /// with a report of the pacing. A link failure is the error.
    pub(super) async fn restore_paced(
        &mut self,
        io: &mut Io,
        writes: &[(usize, i32)],
    ) -> Result<(Option<Vec<i32>>, RestoreReport), String> {
        let messages: Vec<(Op, Vec<i32>)> = writes
            .iter()
            .map(|&(s, v)| (Op::SetStepper, vec![s as i32, v]))
            .collect();
        let paced = self.send_paced(io, &messages).await?;
        let verified = paced.written == writes.len()
            && paced
                .check
                .as_ref()
                .is_some_and(|c| writes.iter().all(|(s, v)| c.get(*s).copied() == Some(*v)));
        let report = RestoreReport {
            counters: writes.len(),
            max_bytes_in_flight: paced.max_in_flight,
            batches: paced.batches,
            took: paced.took,
            verified,
        };
        Ok((paced.check, report))
    }
}

/// How a paced sending went.
pub(super) struct Paced {
    /// Messages sent before any failure.
    pub(super) written: usize,
    /// Batches, each confirmed by a positions reply.
    pub(super) batches: usize,
    /// Most bytes in flight at once, the positions request included.
    pub(super) max_in_flight: usize,
    /// From the first message to the last reply.
    pub(super) took: std::time::Duration,
    /// The last positions reply, if the board answered it.
    pub(super) check: Option<Vec<i32>>,
}
