//! Resolved configuration sections: every default filled in, every value checked.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::protocol::commands::{Firmware, IntWidth};

use super::error::ConfigError;

/// One stepper board on a USB serial port.
#[derive(Debug, Clone, PartialEq)]
pub struct BoardConfig {
    /// Unique name used in logs and on the control socket ("carriage", "tuner").
    pub name: String,
    /// Serial device; prefer the stable `/dev/serial/by-id/...` path.
    pub port: PathBuf,
    /// Line speed in baud (the firmware uses 115200).
    pub baud: u32,
    /// Width of the firmware's C `int`, in which every argument travels.
    pub int_bytes: IntWidth,
    /// Firmware, which fixes the command numbering.
    pub firmware: Firmware,
    /// Number of steppers the firmware drives; indices at or past it are
    /// never sent, because the firmware writes past its arrays.
    pub steppers: usize,
    /// How long the board is deaf after the port is opened (AVR bootloader).
    pub reset_wait: Duration,
    /// Whether the last known counters are written back after a reset (the
    /// firmware comes back with every counter at 0).
    pub restore_counters_after_reset: bool,
    /// Period of the positions poll while the board is idle.
    pub poll_interval: Duration,
    /// How long to wait for a reply to a request that is not behind a move.
    pub reply_timeout: Duration,
    /// Slack added to a move's expected duration (steps / speed) before the
    /// board is considered unresponsive.
    pub move_margin: Duration,
}

/// Settings of the machine operations; the names and types are those of the
/// `machine_state` columns (INTEGER as `i32`; REAL rests kept as `f64`
/// seconds, validated to be representable as a finite REAL).
#[derive(Debug, Clone, PartialEq)]
pub struct OperationSettings {
    /// When false, bump_check does nothing.
    pub bump_check_enable: bool,
    /// Steps for a move away from the string; always > 0.
    pub z_up_step: i32,
    /// Steps for a move toward the string; always < 0.
    pub z_down_step: i32,
    /// Rest after a tuner move, seconds.
    pub tune_rest: f64,
    /// Rest after an X move, seconds.
    pub x_rest: f64,
    /// Rest after a Z move, seconds.
    pub z_rest: f64,
    /// Rest after each channel's adjustment in z_adjust, seconds.
    pub lap_rest: f64,
    /// Passes in place before moving on (sweep modes); >= 1.
    pub adjustment_level: i32,
    /// Attempts before falling back to calibration; >= 1.
    pub retry_threshold: i32,
    /// amp_sum change that means "still settling"; >= 0.
    pub delta_threshold: i32,
    /// voice_count variance that triggers recalibration; >= 0.
    pub z_variance_threshold: i32,
}

impl Default for OperationSettings {
    /// The values in use on the machines today (operations.md).
    fn default() -> Self {
        OperationSettings {
            bump_check_enable: true,
            z_up_step: 2,
            z_down_step: -2,
            tune_rest: 5.0,
            x_rest: 5.0,
            z_rest: 1.0,
            lap_rest: 4.0,
            adjustment_level: 4,
            retry_threshold: 50,
            delta_threshold: 50,
            z_variance_threshold: 50,
        }
    }
}

/// Per-channel thresholds of z_adjust; each vector has one entry per string,
/// and `min[c] <= max[c]` for every channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Thresholds {
    /// Fewest partials a channel should have.
    pub voice_count_min: Vec<i32>,
    /// Most partials a channel should have.
    pub voice_count_max: Vec<i32>,
    /// Lowest amplitude sum a channel should have.
    pub amp_sum_min: Vec<i32>,
    /// Highest amplitude sum a channel should have.
    pub amp_sum_max: Vec<i32>,
}

/// How a `machine_state` row gets its `controls_id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SnapshotLink {
    /// Leave it NULL (a batch job may link by timestamp later).
    None,
    /// Take the newest `controls` row of this host, if younger than `link_max_age`.
    Latest,
}

/// `[snapshot]`: periodic machine_state capture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotConfig {
    /// Period between snapshots; >= 10 ms.
    pub interval: Duration,
    /// How `controls_id` is filled in.
    pub link: SnapshotLink,
    /// Oldest `controls` row that `SnapshotLink::Latest` may link to; > 0.
    pub link_max_age: Duration,
}

/// `[feed]`: the audmon shared-memory files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedConfig {
    /// Directory holding `audio_control` and `audio_peaks`.
    pub dir: PathBuf,
    /// Period between reads; > 0.
    pub interval: Duration,
    /// Age after which the feed counts as stale; >= `interval`.
    pub stale_after: Duration,
}

/// Where the PostgreSQL server is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatabaseTarget {
    /// A `postgres://` URL, checked to hold no password.
    Url(String),
    /// Separate connection parameters.
    Parts {
        /// Server host name or address (or a socket directory).
        host: String,
        /// Server port.
        port: u16,
        /// Role to connect as.
        user: String,
        /// Database name.
        dbname: String,
    },
}

/// `[database]`: the central PostgreSQL server. Holds no password: only the
/// path of the file that does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatabaseConfig {
    /// Server address.
    pub target: DatabaseTarget,
    /// File whose content is the password, if the server needs one.
    pub password_file: Option<PathBuf>,
    /// Whether the daemon applies pending migrations at start.
    pub auto_migrate: bool,
    /// Deadline of one connection attempt; > 0.
    pub connect_timeout: Duration,
}

impl DatabaseConfig {
    /// Reads the password from `password_file`, dropping one trailing newline
    /// (editors add one). `Ok(None)` when no file is configured.
    ///
    /// The content never appears in an error or a log line; errors name the file.
    pub fn password(&self) -> Result<Option<String>, ConfigError> {
        let Some(path) = &self.password_file else {
            return Ok(None);
        };
        let fail = |source: std::io::Error| ConfigError::PasswordFile {
            path: path.clone(),
            source,
        };
        let text = read_secret(path).map_err(fail)?;
        warn_if_world_readable(path);
        Ok(Some(text))
    }
}

#[cfg(unix)]
fn warn_if_world_readable(path: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path) {
        if meta.permissions().mode() & 0o004 != 0 {
            tracing::warn!(
                path = %path.display(),
                "the database password file is readable by every user; chmod o-r it"
            );
        }
    }
}

#[cfg(not(unix))]
fn warn_if_world_readable(_path: &std::path::Path) {}

/// `[spool]`: the local SQLite queue of records not yet in PostgreSQL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpoolConfig {
    /// SQLite file.
    pub path: PathBuf,
    /// Size above which the oldest records are dropped; >= 1 MiB.
    pub max_bytes: u64,
}

/// `[control]`: the local control socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlConfig {
    /// Unix socket path.
    pub socket: PathBuf,
    /// Group given ownership of the socket, if any.
    pub group: Option<String>,
    /// Permission bits of the socket (<= 0o777).
    pub mode: u32,
}

/// `[compat]`: the GUI compatibility sockets, one per board.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompatConfig {
    /// Whether the sockets are served (default off).
    pub enabled: bool,
    /// Directory holding `arduino_connection_<port>.sock` (default `/tmp`).
    pub dir: PathBuf,
}

/// Where the touch sensors are read (`sensors.backend`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SensorBackend {
    /// No sensors: operations that need them refuse to run.
    None,
    /// The simulator's model of the mechanism (the demo and tests).
    Simulated,
    /// The host's GPIO character device (the Raspberry Pi hosts).
    Gpio,
}

impl std::fmt::Display for SensorBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SensorBackend::None => "none",
            SensorBackend::Simulated => "simulated",
            SensorBackend::Gpio => "gpio",
        })
    }
}

/// `[sensors]`: the touch sensors, one per Z stepper ("touching" = the
/// mechanism contacts its string).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum SensorsConfig {
    /// `backend = "none"`, the default.
    #[default]
    None,
    /// `backend = "simulated"`.
    Simulated,
    /// `backend = "gpio"`, with its lines.
    Gpio(GpioSensorsConfig),
}

impl SensorsConfig {
    /// The backend this configuration selects.
    pub fn backend(&self) -> SensorBackend {
        match self {
            SensorsConfig::None => SensorBackend::None,
            SensorsConfig::Simulated => SensorBackend::Simulated,
            SensorsConfig::Gpio(_) => SensorBackend::Gpio,
        }
    }
}

/// The GPIO lines of the touch sensors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpioSensorsConfig {
    /// GPIO character device, such as `/dev/gpiochip0`.
    pub chip: PathBuf,
    /// Line offset (BCM number on a Raspberry Pi) of each Z stepper's sensor,
    /// in Z stepper order: string 0 in, string 0 out, string 1 in, ...;
    /// exactly two per string, all different.
    pub lines: Vec<u32>,
    /// Whether a touching sensor pulls its line low (otherwise high).
    pub active_low: bool,
}

/// `[log]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// A level (trace, debug, info, warn, error) or an `EnvFilter` directive
    /// string such as `info,stringdriverd::board=debug`.
    pub level: String,
}

/// Reads a secret (a password file or a systemd credential): the content
/// without one trailing newline. An empty file is an error, not "no
/// password": it is a mistake at install time, better named here than as a
/// refused blank password by the server.
pub fn read_secret(path: &std::path::Path) -> std::io::Result<String> {
    let mut text = std::fs::read_to_string(path)?;
    if text.ends_with('\n') {
        text.pop();
        if text.ends_with('\r') {
            text.pop();
        }
    }
    if text.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "the file is empty",
        ));
    }
    Ok(text)
}
