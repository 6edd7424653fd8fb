//! stringdriverd: the daemon that runs on every stringdriver machine.
//!
//! See ARCHITECTURE.md at the repository root for the map of modules.

pub mod backoff;
pub mod board;
pub mod compat;
pub mod config;
pub mod console;
pub mod control;
pub mod ctl;
pub mod daemon;
pub mod demo;
pub mod export;
pub mod feed;
pub mod files;
pub mod lock;
pub mod logging;
pub mod motion;
pub mod ops;
pub mod probe;
pub mod protocol;
pub mod report;
pub mod sensors;
pub mod sim;
pub mod snapshot;
pub mod state;
pub mod store;
pub mod supervise;
