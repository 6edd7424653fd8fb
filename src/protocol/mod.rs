//! The CmdMessenger wire protocol spoken by the stepper boards.
//!
//! `frame` turns bytes into messages and back (escaping, resynchronisation,
//! size caps) and knows nothing about what the commands mean beyond the
//! width of each argument; `commands` maps each firmware's command numbers,
//! argument layouts and integer width onto named operations; `ramp` is
//! AccelStepper's move timing, which the simulator plays and the driver
//! expects.
//! See `../shared/reference/controller-protocol.md` for the facts these
//! modules encode.

pub mod commands;
pub mod frame;
pub mod ramp;

pub use commands::{AxisKind, Firmware, IntWidth, Layout, Op};
pub use frame::{CmdCodec, FrameError, Inbound, Outbound, Reply, Request};
