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
    /// Sweeps: the first X position; inside `x_travel`.
    pub x_start: i32,
    /// Sweeps: the last X position; inside `x_travel`.
    pub x_finish: i32,
    /// Sweeps' X increment and the X jog step of the operator tools; >= 1.
    pub x_step: i32,
    /// The tuner jog step of the operator tools; >= 1.
    pub tuner_step: i32,
    /// Sweeps: most passes at one X position (calibrations included)
    /// before the sweep fails; >= 1. Not a machine_state column.
    pub sweep_max_passes: i32,
    /// Sweeps: most full z_calibrates in one sweep before it fails; >= 0.
    /// Not a machine_state column.
    pub sweep_max_calibrations: i32,
    /// Not a setting: the X stepper's travel `(min, max)` from the layout,
    /// against which `x_start` and `x_finish` are checked whenever they
    /// change. `(0, 0)` on a machine without an X or with a placeholder X
    /// (X max 0).
    pub x_travel: (i32, i32),
}

impl OperationSettings {
    /// The sweep defaults of operations.md for an X travel of
    /// `(min, max)`: x_start 100 and x_finish X max - 100, kept inside
    /// the travel (both `min` on a placeholder X whose max is 0).
    pub fn sweep_defaults(travel: (i32, i32)) -> (i32, i32) {
        let (lo, hi) = travel;
        let start = 100_i32.clamp(lo, hi.max(lo));
        let finish = hi.saturating_sub(100).clamp(start, hi.max(start));
        (start, finish)
    }

    /// Checks an X position setting (`x_start`, `x_finish`) against the
    /// X travel; the error names the setting and the travel.
    pub fn check_x_position(&self, name: &str, v: i32) -> Result<(), String> {
        let (lo, hi) = self.x_travel;
        if (lo..=hi).contains(&v) {
            Ok(())
        } else {
            Err(format!(
                "{name} must lie inside the X stepper's travel {lo} to {hi}, not {v}"
            ))
        }
    }
}

impl Default for OperationSettings {
    /// The values in use on the machines today (operations.md), for the
    /// X travel of stringdriver-2 (0 to 2600); the configuration computes
    /// the sweep range from the host's own X.
    fn default() -> Self {
        let x_travel = (0, 2600);
        let (x_start, x_finish) = OperationSettings::sweep_defaults(x_travel);
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
            x_start,
            x_finish,
            x_step: 10,
            tuner_step: 100,
            sweep_max_passes: 500,
            sweep_max_calibrations: 100,
            x_travel,
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
    /// Whether the connection is encrypted and how the server is
    /// authenticated (`sslmode`, `sslrootcert`, `sslcert`, `sslkey`).
    pub tls: DatabaseTls,
}

/// `database.sslmode`: libpq's names, without the modes that fall back to
/// plaintext (`allow`, `prefer`) — a daemon must not silently lose its
/// encryption because a server stopped offering it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// Plaintext. Only for a server on this machine or a trusted network.
    Disable,
    /// Encrypted, but the server's certificate is not checked: anyone who can
    /// intercept the connection can pose as the server. Not recommended.
    Require,
    /// Encrypted; the certificate chain must lead to a trusted CA, but the
    /// host name is not compared with the certificate.
    VerifyCa,
    /// Encrypted; the chain must lead to a trusted CA and the certificate
    /// must name the host connected to (DNS name or IP address).
    VerifyFull,
}

impl SslMode {
    /// Every mode, in increasing order of protection.
    pub const ALL: [SslMode; 4] = [
        SslMode::Disable,
        SslMode::Require,
        SslMode::VerifyCa,
        SslMode::VerifyFull,
    ];

    /// The name written in the configuration (`"verify-full"`).
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    /// Whether the connection uses TLS at all.
    pub fn uses_tls(self) -> bool {
        self != SslMode::Disable
    }

    /// Whether the server's certificate chain is checked against the roots.
    pub fn verifies_chain(self) -> bool {
        matches!(self, SslMode::VerifyCa | SslMode::VerifyFull)
    }
}

impl std::fmt::Display for SslMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for SslMode {
    type Err = String;

    /// Accepts the names of [`SslMode::as_str`]; the message for anything
    /// else lists them, and explains why libpq's `allow` and `prefer` are
    /// refused.
    fn from_str(s: &str) -> Result<SslMode, String> {
        if let Some(mode) = SslMode::ALL.into_iter().find(|m| m.as_str() == s) {
            return Ok(mode);
        }
        let allowed = SslMode::ALL.map(|m| format!("\"{m}\"")).join(", ");
        if s == "allow" || s == "prefer" {
            Err(format!(
                "\"{s}\" is not supported: it silently falls back to plaintext when the server \
                 offers no TLS; use one of {allowed}"
            ))
        } else {
            Err(format!("\"{s}\" is not a sslmode; use one of {allowed}"))
        }
    }
}

/// The TLS settings of `[database]`, checked for consistency: no
/// certificate files with `disable`, no CA file with `require` (which would
/// not use it), and never TLS towards a Unix socket. The files themselves
/// are read when the connection settings are built (`store::tls`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatabaseTls {
    /// Whether and how TLS is used.
    pub sslmode: SslMode,
    /// PEM file of the CA certificates that the server's chain must lead to;
    /// `None`: the system's CA certificates. Only with `verify-ca` and
    /// `verify-full`.
    pub sslrootcert: Option<PathBuf>,
    /// Client certificate presented to the server, if any.
    pub client_cert: Option<ClientCert>,
}

impl DatabaseTls {
    /// `sslmode` with no certificate files: the system's roots for the
    /// verifying modes, and no client certificate.
    pub fn new(sslmode: SslMode) -> DatabaseTls {
        DatabaseTls {
            sslmode,
            sslrootcert: None,
            client_cert: None,
        }
    }
}

/// `database.sslcert` and `database.sslkey`: a client certificate with which
/// the daemon authenticates itself (`cert` authentication in `pg_hba.conf`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCert {
    /// PEM file of the certificate, optionally followed by its intermediates.
    pub cert: PathBuf,
    /// PEM file of its private key (PKCS#8, PKCS#1 or SEC1); readable only by
    /// the daemon.
    pub key: PathBuf,
}

impl DatabaseConfig {
    /// Points the configuration at `url`, with the TLS settings that URL
    /// resolves to on its own: its `sslmode`, `sslrootcert`, `sslcert` and
    /// `sslkey` parameters, else the default mode for its hosts (`disable`
    /// on this machine, `verify-full` elsewhere). For a URL given elsewhere
    /// than the file, such as the demo's `--database-url`; the file's own TLS
    /// keys described another server and are dropped.
    ///
    /// The error says what is wrong without repeating the URL.
    pub fn use_url(&mut self, url: &str) -> Result<(), String> {
        let (target, tls) = super::resolve::database_url(url).map_err(|e| e.message)?;
        self.target = target;
        self.tls = tls;
        Ok(())
    }

    /// Reads the password from `password_file`, dropping one trailing newline
    /// (editors add one). `Ok(None)` when no file is configured.
    ///
    /// The content never appears in an error or a log line; errors name the file.
    pub fn password(&self) -> Result<Option<String>, ConfigError> {
        let Some(path) = &self.password_file else {
            return Ok(None);
        };
        let fail = |error: std::io::Error| ConfigError::PasswordFile {
            path: path.clone(),
            error,
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
    /// A client that sends no request for this long is closed, unless it
    /// subscribed to events; > 0.
    pub idle_timeout: Duration,
}

/// `[console]`: the operator console, a separate process
/// (`stringdriverd console`) that serves a web page and talks to the daemon
/// through the control socket only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsoleConfig {
    /// Address and port the console listens on (default 127.0.0.1:7125).
    pub listen: std::net::SocketAddr,
    /// File holding the login token; never the token itself. Required
    /// (here or as the systemd credential `console-token`) when `listen`
    /// is not a loopback address.
    pub token_file: Option<PathBuf>,
}

/// `[compat]`: the stepper GUI's socket (the older tools' text protocol,
/// see `crate::compat`), for one board.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompatConfig {
    /// Whether the socket is served (default off).
    pub enabled: bool,
    /// Name of the board served (default the first board, the carriage
    /// board: the older tools serve no other).
    pub board: String,
    /// The board's port as the lab's tools name it (default the board's
    /// configured `port`); it names the socket.
    pub port: PathBuf,
    /// Directory holding the socket (default `/run/stringdriver`, the
    /// unit's RuntimeDirectory; the package links it from `/tmp`).
    pub dir: PathBuf,
}

impl CompatConfig {
    /// The socket: `<dir>/stepper_gui_<port>.sock`, every `/` of the
    /// legacy port name replaced by `_` (`/dev/ttyACM0` →
    /// `stepper_gui__dev_ttyACM0.sock`), as the older tools name it.
    pub fn socket(&self) -> PathBuf {
        let name = self.port.to_string_lossy().replace('/', "_");
        self.dir.join(format!("stepper_gui_{name}.sock"))
    }
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
    Simulated {
        /// `x_switches`: how the simulated machine's X limit switches are
        /// wired (the simulator models one at X 0 and one at X max).
        x_switches: XSwitchWiring,
        /// `simulator_sockets`: where each board's simulated sensors are
        /// served (`stringdriverd sim-controller --touch-socket`, or a test's
        /// `sim::touch::TouchServer`), one entry per `[[boards]]` in board
        /// order, `None` for a board without simulated sensors. Empty when
        /// the key is not set: then only simulators running in the daemon's
        /// own process (the demo, tests) can be read.
        sockets: Vec<Option<PathBuf>>,
    },
    /// `backend = "gpio"`, with its lines.
    Gpio(GpioSensorsConfig),
}

impl SensorsConfig {
    /// The backend this configuration selects.
    pub fn backend(&self) -> SensorBackend {
        match self {
            SensorsConfig::None => SensorBackend::None,
            SensorsConfig::Simulated { .. } => SensorBackend::Simulated,
            SensorsConfig::Gpio(_) => SensorBackend::Gpio,
        }
    }

    /// How the X limit switches are wired: [`XSwitchWiring::None`] unless
    /// the configuration gives them.
    pub fn x_switch_wiring(&self) -> XSwitchWiring {
        match self {
            SensorsConfig::None => XSwitchWiring::None,
            SensorsConfig::Simulated { x_switches, .. } => *x_switches,
            SensorsConfig::Gpio(g) => g.x_switches.wiring(),
        }
    }
}

/// How a machine's X limit switches are wired (`reference/hosts.md`, "X
/// limit switches"): what `x_home`, `x_away` and `x_calibrate` look for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum XSwitchWiring {
    /// No X limit switches (stringdriver-3): the X homing operations fail
    /// saying so.
    #[default]
    None,
    /// A home switch at X 0 and an away switch at X max, each on its own
    /// input (stringdriver-2).
    Two,
    /// One switch, on one input, pressed at both ends (stringdriver-1).
    One,
}

impl std::fmt::Display for XSwitchWiring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            XSwitchWiring::None => "none",
            XSwitchWiring::Two => "two",
            XSwitchWiring::One => "one",
        })
    }
}

/// The GPIO lines of the X limit switches (`sensors.x_home_line` and
/// `sensors.x_away_line`, or `sensors.x_switch_line`), read with the same
/// chip, bias and active level as the touch sensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum XSwitchLines {
    /// No switches.
    #[default]
    None,
    /// One line per end.
    Two {
        /// The home switch's line (X 0).
        home: u32,
        /// The away switch's line (X max).
        away: u32,
    },
    /// One switch at both ends, on this line.
    One(u32),
}

impl XSwitchLines {
    /// The wiring these lines make.
    pub fn wiring(&self) -> XSwitchWiring {
        match self {
            XSwitchLines::None => XSwitchWiring::None,
            XSwitchLines::Two { .. } => XSwitchWiring::Two,
            XSwitchLines::One(_) => XSwitchWiring::One,
        }
    }

    /// Every line, home first.
    pub fn lines(&self) -> Vec<u32> {
        match *self {
            XSwitchLines::None => Vec::new(),
            XSwitchLines::Two { home, away } => vec![home, away],
            XSwitchLines::One(l) => vec![l],
        }
    }
}

/// The bias a GPIO input line is requested with (`sensors.bias`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum LineBias {
    /// The pull-up resistor: an open contact to ground reads high. How
    /// every sensor and switch of the machines is wired (the default).
    #[default]
    PullUp,
    /// The pull-down resistor: an open contact to the supply reads low.
    PullDown,
    /// No bias: the line floats unless something drives it.
    Disabled,
}

impl std::fmt::Display for LineBias {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LineBias::PullUp => "pull-up",
            LineBias::PullDown => "pull-down",
            LineBias::Disabled => "disabled",
        })
    }
}

/// The GPIO lines of the touch sensors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpioSensorsConfig {
    /// GPIO character device, such as `/dev/gpiochip0`; `None`: the chip
    /// is found by its lines (see `sensors::gpio`).
    pub chip: Option<PathBuf>,
    /// Line offset (BCM number on a Raspberry Pi) of each Z stepper's sensor,
    /// in Z stepper order: string 0 in, string 0 out, string 1 in, ...;
    /// exactly two per string, all different.
    pub lines: Vec<u32>,
    /// Whether a touching sensor pulls its line low (otherwise high);
    /// default true: a contact to ground with the pull-up bias.
    pub active_low: bool,
    /// The bias the lines are requested with; default pull-up.
    pub bias: LineBias,
    /// The X limit switches' lines, requested with the sensors' lines in one
    /// request (the daemon is their one owner) and read with the same
    /// bias and active level: a pressed switch reads like a touching sensor.
    pub x_switches: XSwitchLines,
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
    // A secret is a line; 64 KiB is generous, and a FIFO or /dev/zero given
    // by mistake is refused instead of blocking or filling memory.
    let bytes = crate::files::read_regular(path, 64 * 1024)?;
    let mut text = String::from_utf8(bytes)
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "not UTF-8 text"))?;
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
