//! The daemon's configuration: TOML schema, defaults and validation.
//!
//! [`load`] / [`parse`] turn a file into a [`Config`] in which every default is
//! filled in and every value has been checked, so that the rest of the daemon
//! never re-validates. In particular the [`Layout`] never maps a stepper index
//! past the boards (the firmware does not check indices and corrupts its own
//! memory when given a wrong one), and the configuration never holds a
//! database password, only the path of the file that does.
//!
//! Errors name the key (`boards[0].int_bytes`) and, when the value is written
//! in the file, its line and column. `config/stringdriver.example.toml`
//! documents every key.

mod all_errors;
mod error;
mod hint;
mod layout;
mod motor;
mod resolve;
mod schema;
mod sections;

use std::fmt::Write as _;
use std::path::Path;

pub use all_errors::MAX_ERRORS;
pub use error::{ConfigError, Position};
pub use layout::{Layout, Role, StepperOverride, StepperRange, MAX_STRINGS, UNUSED_LIMITS};
pub use motor::{
    defaults as motor_defaults, AxisParams, MotorParams, MotorWrite, Param as MotorParam,
    StepperMotor, Target as MotorTarget,
};
pub use resolve::defaults;
pub use sections::{
    read_secret, BoardConfig, ClientCert, CompatConfig, ConsoleConfig, ControlConfig,
    DatabaseConfig, DatabaseTarget, DatabaseTls, FeedConfig, GpioSensorsConfig, LineBias,
    LogConfig, OperationSettings, SensorBackend, SensorsConfig, SnapshotConfig, SnapshotLink,
    SpoolConfig, SslMode, Thresholds, XSwitchLines, XSwitchWiring,
};

/// A checked configuration with every default resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Host name written with every record (`machine_state.host`); the
    /// system host name when the file sets none.
    pub host: String,
    /// Boards in stepper order: carriage board first, then the tuner board.
    pub boards: Vec<BoardConfig>,
    /// Role and host limits of every stepper.
    pub layout: Layout,
    /// Speed, acceleration and limits the boards are run with.
    pub motor: MotorParams,
    /// Settings of bump_check, z_calibrate and z_adjust.
    pub operations: OperationSettings,
    /// Per-channel thresholds, one entry per string.
    pub thresholds: Thresholds,
    /// Periodic machine_state capture.
    pub snapshot: SnapshotConfig,
    /// audmon shared-memory feed.
    pub feed: FeedConfig,
    /// Central PostgreSQL server.
    pub database: DatabaseConfig,
    /// Local spool of records not yet shipped.
    pub spool: SpoolConfig,
    /// Local control socket.
    pub control: ControlConfig,
    /// GUI compatibility sockets.
    pub compat: CompatConfig,
    /// The operator console.
    pub console: ConsoleConfig,
    /// Logging.
    pub log: LogConfig,
    /// Touch sensors.
    pub sensors: SensorsConfig,
}

impl Config {
    /// The motor-parameter commands board `board` is given (see
    /// [`MotorParams::writes`]) for `motor`.
    pub fn motor_writes(&self, motor: &MotorParams, board: usize) -> Vec<MotorWrite> {
        motor.writes(&self.layout, &self.boards, board)
    }
}

/// The largest configuration file read (1 MiB; the example is about 20
/// KiB): `--config /dev/zero` or a huge file is refused, not read until
/// memory runs out.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// Reads and checks the configuration file at `path`.
///
/// Only a regular file of at most [`MAX_CONFIG_BYTES`] is read, opened
/// without blocking (a FIFO in its place is refused at once, see
/// [`crate::files::read_regular`]); text that is not UTF-8 is a
/// [`ConfigError::Parse`] at the line and column of the first bad byte.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let bytes =
        crate::files::read_regular(path, MAX_CONFIG_BYTES).map_err(|error| ConfigError::Read {
            path: path.to_path_buf(),
            error,
        })?;
    let text = utf8(bytes, path)?;
    parse(&text, path)
}

/// Reads and checks the configuration file at `path` like [`load`], but
/// reports every mistake in the file, in file order, not only the first
/// (`check-config`; see `all_errors.rs` for how far the check goes past a
/// mistake).
pub fn load_all(path: &Path) -> Result<Config, Vec<ConfigError>> {
    let bytes = crate::files::read_regular(path, MAX_CONFIG_BYTES).map_err(|error| {
        vec![ConfigError::Read {
            path: path.to_path_buf(),
            error,
        }]
    })?;
    let text = utf8(bytes, path).map_err(|e| vec![e])?;
    parse_all(&text, path)
}

/// [`parse`], reporting every mistake (see [`load_all`]).
pub fn parse_all(text: &str, origin: &Path) -> Result<Config, Vec<ConfigError>> {
    all_errors::parse_all(text, origin, system_host_name)
}

/// `bytes` as text, or where the first byte that is not UTF-8 is.
fn utf8(bytes: Vec<u8>, origin: &Path) -> Result<String, ConfigError> {
    String::from_utf8(bytes).map_err(|e| {
        let at = e.utf8_error().valid_up_to();
        let bytes = e.into_bytes();
        // Everything before `at` is valid, so the position is counted there.
        let valid = std::str::from_utf8(bytes.get(..at).unwrap_or_default()).unwrap_or_default();
        let bad = bytes.get(at).copied().unwrap_or_default();
        ConfigError::Parse {
            origin: origin.to_path_buf(),
            position: Some(Position::at(valid, at)),
            key: None,
            message: format!(
                "not UTF-8 text: byte 0x{bad:02x} at byte offset {at} (save the file as UTF-8)"
            ),
        }
    })
}

/// Checks configuration `text`; `origin` names it in error messages only.
pub fn parse(text: &str, origin: &Path) -> Result<Config, ConfigError> {
    parse_with_host(text, origin, system_host_name)
}

/// `parse` with the system host name supplied by the caller (tests).
fn parse_with_host(
    text: &str,
    origin: &Path,
    host: impl FnOnce() -> Result<String, String>,
) -> Result<Config, ConfigError> {
    let raw = deserialize(text, origin)?;
    resolve::resolve(raw, host).map_err(|e| match e {
        resolve::Resolve::Invalid(invalid) => invalid.locate(text, origin),
        resolve::Resolve::Hostname(reason) => ConfigError::Hostname {
            origin: origin.to_path_buf(),
            reason,
        },
    })
}

fn system_host_name() -> Result<String, String> {
    nix::unistd::gethostname()
        .map_err(|e| e.to_string())?
        .into_string()
        .map_err(|h| format!("{h:?} is not UTF-8"))
}

fn deserialize(text: &str, origin: &Path) -> Result<schema::RawConfig, ConfigError> {
    let parse_error = |position, key, message| ConfigError::Parse {
        origin: origin.to_path_buf(),
        position,
        key,
        message,
    };
    let position = |e: &toml::de::Error| e.span().map(|s| Position::at(text, s.start));
    let de = toml::Deserializer::parse(text)
        .map_err(|e| parse_error(position(&e), None, e.message().trim_end().to_string()))?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let message = inner.message().trim_end();
        let parent = (path != ".").then_some(path);
        // serde reports a missing key at its table; name the key itself, and
        // give no position since the key is not written anywhere.
        if let Some(name) = message
            .strip_prefix("missing field `")
            .and_then(|m| m.strip_suffix('`'))
        {
            let key = match parent {
                Some(p) => format!("{p}.{name}"),
                None => name.to_string(),
            };
            return parse_error(None, Some(key), "required, but not set".to_string());
        }
        parse_error(position(&inner), parent, hint::plain(message))
    })
}

impl Config {
    /// The fully resolved configuration as TOML, every default written out
    /// and durations in humantime form, followed by a commented stepper map.
    /// It parses back to an equal `Config`. It holds no password: there is
    /// none in a `Config`, only `database.password_file`.
    pub fn to_toml_string(&self) -> String {
        let mut out = format!(
            "# stringdriverd configuration for host {}, fully resolved: every default is \
             written out.\n\n",
            self.host
        );
        match toml::to_string(&resolve::to_raw(self)) {
            Ok(body) => out.push_str(&body),
            // Unreachable with the types in `schema`; still, a broken print
            // must not take the daemon down, and the round-trip test guards it.
            Err(e) => {
                let _ = writeln!(out, "# the configuration could not be written as TOML: {e}");
            }
        }
        out.push_str(
            "\n# Stepper map: global index, board:local index, role, host limits, speed, acceleration\n",
        );
        let l = &self.layout;
        for g in 0..l.total_steppers() {
            let (board, local) = match l.locate(g) {
                Some((b, i)) => (self.boards.get(b).map_or("?", |b| b.name.as_str()), i),
                None => ("?", 0),
            };
            let (min, max) = l.limits(g);
            let _ = writeln!(
                out,
                "# {g:>3}: {:<14} {:<17} {:<18} {}",
                format!("{board}:{local}"),
                l.role(g).to_string(),
                format!("{min} to {max}"),
                match (self.motor.speed_of(l, g), self.motor.accel_of(l, g)) {
                    (Some(v), Some(a)) => format!("{v} steps/s, {a} steps/s²"),
                    _ => "not sent (the board's own)".to_string(),
                }
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[[boards]]
name = "carriage"
port = "/dev/ttyACM0"
int_bytes = 2
firmware = "v2"
steppers = 13

[layout]
strings = 6
x_index = 0
z_first_index = 1
"#;

    fn p(text: &str) -> Result<Config, ConfigError> {
        parse_with_host(text, Path::new("t.toml"), || Ok("testhost".into()))
    }

    #[test]
    fn defaults_fill_a_minimal_file() {
        let c = p(MINIMAL).unwrap();
        assert_eq!(c.host, "testhost");
        let b = &c.boards[0];
        assert_eq!(b.baud, 115_200);
        assert_eq!(b.reset_wait, std::time::Duration::from_secs(2));
        assert_eq!(b.poll_interval, std::time::Duration::from_millis(500));
        assert_eq!(b.reply_timeout, std::time::Duration::from_secs(1));
        assert_eq!(b.move_margin, std::time::Duration::from_millis(250));
        assert!(b.restore_counters_after_reset);
        assert_eq!(c.operations, OperationSettings::default());
        assert_eq!(c.thresholds.amp_sum_min, vec![20; 6]);
        assert_eq!(c.thresholds.voice_count_max, vec![12; 6]);
        assert_eq!(c.snapshot.link, SnapshotLink::None);
        assert_eq!(c.feed.dir, Path::new("/dev/shm"));
        assert_eq!(
            c.database.target,
            DatabaseTarget::Parts {
                host: "localhost".into(),
                port: 5432,
                user: "stringdriver".into(),
                dbname: "audmon".into()
            }
        );
        assert_eq!(c.spool.max_bytes, 1 << 30);
        assert_eq!(c.control.mode, 0o660);
        assert_eq!(c.log.level, "info");
        assert_eq!(c.sensors, SensorsConfig::None);
        assert_eq!(c.layout.limits(0), (0, 2600));
        assert_eq!(c.layout.limits(1), (-100, 100));
        assert_eq!(c.motor.speed_of(&c.layout, 0), Some(500));
        assert_eq!(c.motor.speed_of(&c.layout, 12), Some(100));
        assert_eq!(
            c.motor.x,
            Some(AxisParams {
                speed: 500,
                accel: 10_000,
                min: 0,
                max: 2600
            })
        );
        assert_eq!((c.motor.z.min, c.motor.z.max), (-100, 100));
        // The v2 carriage: X is axis group 0, Z axis group 1.
        let w = c.motor_writes(&c.motor, 0);
        assert_eq!(
            &w[..4],
            &[
                MotorWrite {
                    op: crate::protocol::Op::SetMin,
                    index: 0,
                    value: 0
                },
                MotorWrite {
                    op: crate::protocol::Op::SetMax,
                    index: 0,
                    value: 2600
                },
                MotorWrite {
                    op: crate::protocol::Op::SetMin,
                    index: 1,
                    value: -100
                },
                MotorWrite {
                    op: crate::protocol::Op::SetMax,
                    index: 1,
                    value: 100
                },
            ]
        );
        assert_eq!(w.len(), 4 + 2 * 13);
    }

    #[test]
    fn hostname_failure_is_its_own_error() {
        let e = parse_with_host(MINIMAL, Path::new("t.toml"), || Err("EPERM".into())).unwrap_err();
        assert!(matches!(e, ConfigError::Hostname { .. }), "{e:?}");
        assert!(e.to_string().starts_with("t.toml: host: "), "{e}");
        assert!(e.to_string().contains("EPERM"), "{e}");
        let e = parse_with_host(MINIMAL, Path::new("t.toml"), || Ok(String::new())).unwrap_err();
        assert!(matches!(e, ConfigError::Hostname { .. }), "{e:?}");
    }

    #[test]
    fn system_host_name_is_used_when_host_is_absent() {
        let c = parse(MINIMAL, Path::new("t.toml")).unwrap();
        let expected = nix::unistd::gethostname().unwrap().into_string().unwrap();
        assert_eq!(c.host, expected);
    }

    #[test]
    fn resolved_text_round_trips() {
        let c = p(MINIMAL).unwrap();
        let text = c.to_toml_string();
        assert_eq!(p(&text).unwrap(), c, "{text}");
        assert!(text.contains("reset_wait = \"2s\""), "{text}");
        assert!(text.contains("mode = \"0660\""), "{text}");
        assert!(text.contains("max_bytes = \"1GiB\""), "{text}");
    }
}
