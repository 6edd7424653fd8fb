//! Bring-up check of one board: open, wait out the reset, read the counters
//! (and free RAM where the firmware reports it). Used by `stringdriverd probe`
//! when a board is first connected, without a configuration file.

use std::path::PathBuf;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use tokio::time::{sleep, timeout_at, Instant};
use tokio_util::codec::Framed;

use crate::board::{Connector, SerialConnector};
use crate::protocol::{CmdCodec, Firmware, Inbound, IntWidth, Op, Outbound, Request};

/// What to probe.
#[derive(Debug, Clone)]
pub struct ProbeOptions {
    /// Device path.
    pub port: PathBuf,
    /// Baud rate.
    pub baud: u32,
    /// Firmware command table.
    pub firmware: Firmware,
    /// Width of the firmware's int.
    pub width: IntWidth,
    /// How long the board is deaf after opening.
    pub reset_wait: Duration,
    /// How long to wait for each reply.
    pub reply_timeout: Duration,
}

/// What the board answered.
#[derive(Debug, Clone, PartialEq)]
pub struct ProbeReport {
    /// Counters, in stepper order.
    pub positions: Vec<i32>,
    /// Free RAM, where the firmware answered `check_memory`.
    pub free_memory: Option<i32>,
    /// Bytes of noise read before the first reply.
    pub noise_bytes: usize,
}

/// Why a probe failed.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The port could not be opened.
    #[error("cannot open {port}: {cause}")]
    Open {
        /// The port.
        port: String,
        /// Why (in the message, so not also a `source`: a chain would
        /// print it twice).
        cause: std::io::Error,
    },
    /// The link failed while probing.
    #[error("link to {port} failed: {detail}")]
    Link {
        /// The port.
        port: String,
        /// What happened.
        detail: String,
    },
    /// Nothing answered the positions request.
    #[error("no reply from {port} within {waited:?} after the {reset:?} reset wait: is it a {firmware} board with {width}-byte ints, and is the firmware running?")]
    NoReply {
        /// The port.
        port: String,
        /// How long the probe waited for the reply.
        waited: Duration,
        /// The reset wait.
        reset: Duration,
        /// Assumed firmware.
        firmware: Firmware,
        /// Assumed int width.
        width: IntWidth,
    },
    /// A reply came but its values are not ints of the configured width.
    #[error("reply from {port} does not hold {width}-byte ints: is int_bytes right?")]
    WrongWidth {
        /// The port.
        port: String,
        /// Assumed width.
        width: IntWidth,
    },
}

/// Opens the board, waits for its reset and reads its counters.
pub async fn probe(opts: &ProbeOptions) -> Result<ProbeReport, ProbeError> {
    let port = opts.port.display().to_string();
    let connector = SerialConnector {
        path: opts.port.clone(),
        baud: opts.baud,
    };
    let link = connector.open().await.map_err(|cause| ProbeError::Open {
        port: port.clone(),
        cause,
    })?;
    let mut io = Framed::new(link, CmdCodec::new(opts.width));
    let link_err = |e: &dyn std::fmt::Display| ProbeError::Link {
        port: port.clone(),
        detail: e.to_string(),
    };

    // Bootloader noise during the reset window is read and counted, not parsed.
    let mut noise = 0;
    let until = Instant::now() + opts.reset_wait;
    loop {
        match timeout_at(until, io.next()).await {
            Err(_) => break,
            Ok(None) => return Err(link_err(&"the device closed the link")),
            Ok(Some(Err(e))) => return Err(link_err(&e)),
            Ok(Some(Ok(Inbound::Discarded { len, .. }))) => noise += len,
            Ok(Some(Ok(Inbound::Message(_)))) => noise += 1,
        }
    }
    sleep(Duration::from_millis(50)).await;
    io.send(Outbound::ClearParser)
        .await
        .map_err(|e| link_err(&e))?;

    let ask = |op: Op| {
        opts.firmware
            .id(op)
            .map(|id| Outbound::Command(Request { id, args: vec![] }))
    };
    let positions_id = opts.firmware.id(Op::Positions).unwrap_or(1);
    let Some(req) = ask(Op::Positions) else {
        return Err(link_err(&"firmware has no positions command"));
    };
    io.send(req).await.map_err(|e| link_err(&e))?;
    let reply = wait_reply(&mut io, positions_id, opts.reply_timeout, &mut noise).await;
    let reply = match reply {
        Ok(Some(r)) => r,
        Ok(None) => {
            return Err(ProbeError::NoReply {
                port,
                waited: opts.reply_timeout,
                reset: opts.reset_wait,
                firmware: opts.firmware,
                width: opts.width,
            })
        }
        Err(e) => return Err(link_err(&e)),
    };
    let positions = reply
        .ints(opts.width)
        .ok_or_else(|| ProbeError::WrongWidth {
            port: port.clone(),
            width: opts.width,
        })?;

    let mut free_memory = None;
    if let (Some(req), Some(id)) = (ask(Op::CheckMemory), opts.firmware.id(Op::CheckMemory)) {
        io.send(req).await.map_err(|e| link_err(&e))?;
        if let Ok(Some(r)) = wait_reply(&mut io, id, opts.reply_timeout, &mut noise).await {
            free_memory = r.ints(opts.width).and_then(|v| v.first().copied());
        }
    }
    Ok(ProbeReport {
        positions,
        free_memory,
        noise_bytes: noise,
    })
}

async fn wait_reply(
    io: &mut Framed<Box<dyn crate::board::Link>, CmdCodec>,
    id: u16,
    wait: Duration,
    noise: &mut usize,
) -> Result<Option<crate::protocol::Reply>, String> {
    let deadline = Instant::now() + wait;
    loop {
        match timeout_at(deadline, io.next()).await {
            Err(_) => return Ok(None),
            Ok(None) => return Err("the device closed the link".into()),
            Ok(Some(Err(e))) => return Err(e.to_string()),
            Ok(Some(Ok(Inbound::Message(r)))) if r.id == id => return Ok(Some(r)),
            Ok(Some(Ok(Inbound::Message(_)))) => {}
            Ok(Some(Ok(Inbound::Discarded { len, .. }))) => *noise += len,
        }
    }
}
