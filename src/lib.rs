//! stringdriverd: the daemon that runs on every stringdriver machine.
//!
//! See ARCHITECTURE.md at the repository root for the map of modules.

pub mod protocol;
pub mod config;
pub mod sim;
pub mod board;
