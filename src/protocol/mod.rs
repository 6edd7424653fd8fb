//! The CmdMessenger wire protocol spoken by the stepper boards.
//!
//! `frame` turns bytes into messages and back (escaping, resynchronisation,
//! size caps) and knows nothing about what the commands mean; `commands` maps
//! each firmware's command numbers and integer width onto named operations.
//! See `../shared/reference/controller-protocol.md` for the facts these
//! modules encode.

pub mod commands;
pub mod frame;

pub use commands::{Firmware, IntWidth, Op};
pub use frame::{CmdCodec, FrameError, Inbound, Outbound, Reply, Request};
