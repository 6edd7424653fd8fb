//! The configuration file as written, before defaults and validation.
//!
//! Every key that has a default is an `Option` here, so that validation can
//! tell "not written" from "written as the default" and name only keys that are
//! really in the file. Integers are read as `i64` and range-checked later, so
//! that `steppers = -1` gets the same precise message as `steppers = 99`
//! instead of serde's "expected usize". The same types serialize the resolved
//! configuration back (`Config::to_toml_string`), which is what guarantees that
//! the printed file parses again.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::de::{self, Deserializer, IgnoredAny, SeqAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};

use crate::protocol::commands::{Firmware, IntWidth};

use super::sections::{LineBias, SensorBackend, SnapshotLink, XSwitchWiring};

/// The whole file.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    /// Host name recorded with every row; the system's when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Boards in stepper order.
    pub boards: Vec<RawBoard>,
    /// Stepper roles.
    pub layout: RawLayout,
    /// Operation settings.
    #[serde(default)]
    pub operations: RawOperations,
    /// Per-channel thresholds.
    #[serde(default)]
    pub thresholds: RawThresholds,
    /// Snapshot timing.
    #[serde(default)]
    pub snapshot: RawSnapshot,
    /// audmon feed.
    #[serde(default)]
    pub feed: RawFeed,
    /// PostgreSQL.
    #[serde(default)]
    pub database: RawDatabase,
    /// Local spool.
    #[serde(default)]
    pub spool: RawSpool,
    /// Control socket.
    #[serde(default)]
    pub control: RawControl,
    /// GUI compatibility sockets.
    #[serde(default)]
    pub compat: RawCompat,
    /// The operator console (`stringdriverd console`).
    #[serde(default)]
    pub console: RawConsole,
    /// Logging.
    #[serde(default)]
    pub log: RawLog,
    /// Touch sensors.
    #[serde(default)]
    pub sensors: RawSensors,
    /// Motor parameters sent to the boards.
    #[serde(default)]
    pub motor: super::motor::RawMotor,
}

/// One `[[boards]]` entry.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawBoard {
    /// Unique name.
    pub name: String,
    /// Serial device.
    pub port: PathBuf,
    /// Line speed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baud: Option<i64>,
    /// Firmware `int` width; no default, the firmware decides it.
    pub int_bytes: IntWidth,
    /// Firmware command table; no default for the same reason.
    pub firmware: Firmware,
    /// Number of steppers the firmware drives.
    pub steppers: i64,
    /// Deaf time after opening the port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reset_wait: Option<HumanDuration>,
    /// Whether counters are written back after a reset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_counters_after_reset: Option<bool>,
    /// Positions poll period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub poll_interval: Option<HumanDuration>,
    /// Reply deadline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_timeout: Option<HumanDuration>,
    /// Slack added to a move's expected duration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub move_margin: Option<HumanDuration>,
}

/// `[layout]`.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLayout {
    /// Strings (= audio channels).
    pub strings: i64,
    /// Global index of the carriage stepper.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x_index: Option<i64>,
    /// X lower limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x_min: Option<i64>,
    /// X upper limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x_max: Option<i64>,
    /// Moved to `motor.x.speed`; refused with that message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x_speed: Option<f64>,
    /// Global index of string 0's "in" Z stepper.
    pub z_first_index: i64,
    /// Z lower limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub z_min: Option<i64>,
    /// Z upper limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub z_max: Option<i64>,
    /// Moved to `motor.z.speed`; refused with that message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub z_speed: Option<f64>,
    /// Global index of string 0's tuner.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tuner_first_index: Option<i64>,
    /// Tuner lower limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tuner_min: Option<i64>,
    /// Tuner upper limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tuner_max: Option<i64>,
    /// Moved to `motor.tuners.speed`; refused with that message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tuner_speed: Option<f64>,
    /// Per-stepper limit overrides. Last, because TOML wants arrays of tables
    /// after the plain keys of their table.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stepper: Vec<RawOverride>,
}

/// One `[[layout.stepper]]` entry.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawOverride {
    /// Global stepper index.
    pub index: i64,
    /// Replacement lower limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<i64>,
    /// Replacement upper limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<i64>,
}

/// `[operations]`.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawOperations {
    /// See `OperationSettings`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bump_check_enable: Option<bool>,
    /// See `OperationSettings`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub z_up_step: Option<i64>,
    /// See `OperationSettings`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub z_down_step: Option<i64>,
    /// See `OperationSettings`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tune_rest: Option<f64>,
    /// See `OperationSettings`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x_rest: Option<f64>,
    /// See `OperationSettings`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub z_rest: Option<f64>,
    /// See `OperationSettings`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lap_rest: Option<f64>,
    /// See `OperationSettings`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adjustment_level: Option<i64>,
    /// See `OperationSettings`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_threshold: Option<i64>,
    /// See `OperationSettings`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delta_threshold: Option<i64>,
    /// See `OperationSettings`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub z_variance_threshold: Option<i64>,
    /// See `OperationSettings`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x_start: Option<i64>,
    /// See `OperationSettings`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x_finish: Option<i64>,
    /// See `OperationSettings`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x_step: Option<i64>,
    /// See `OperationSettings`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tuner_step: Option<i64>,
    /// See `OperationSettings`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sweep_max_passes: Option<i64>,
    /// See `OperationSettings`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sweep_max_calibrations: Option<i64>,
}

/// `[thresholds]`.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawThresholds {
    /// See `Thresholds`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub voice_count_min: Option<PerChannel>,
    /// See `Thresholds`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub voice_count_max: Option<PerChannel>,
    /// See `Thresholds`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amp_sum_min: Option<PerChannel>,
    /// See `Thresholds`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amp_sum_max: Option<PerChannel>,
}

/// `[snapshot]`.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSnapshot {
    /// See `SnapshotConfig`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<HumanDuration>,
    /// See `SnapshotConfig`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<SnapshotLink>,
    /// See `SnapshotConfig`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link_max_age: Option<HumanDuration>,
}

/// `[feed]`.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawFeed {
    /// See `FeedConfig`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dir: Option<PathBuf>,
    /// See `FeedConfig`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<HumanDuration>,
    /// See `FeedConfig`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stale_after: Option<HumanDuration>,
}

/// `[database]`.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDatabase {
    /// Connection URL (without password).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Server host (parts form).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Server port (parts form).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<i64>,
    /// Role (parts form).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Database (parts form).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dbname: Option<String>,
    /// File holding the password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    /// Whether to apply migrations at start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_migrate: Option<bool>,
    /// Connection deadline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_timeout: Option<HumanDuration>,
    /// TLS mode; a string so that `resolve` can explain why `prefer` is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sslmode: Option<String>,
    /// PEM file of the CA certificates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sslrootcert: Option<PathBuf>,
    /// PEM file of the client certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sslcert: Option<PathBuf>,
    /// PEM file of the client certificate's private key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sslkey: Option<PathBuf>,
    /// Declared only so that its presence fails with advice instead of
    /// serde's generic "unknown field"; never serialized, and never read
    /// because deserializing it always fails.
    #[allow(dead_code)]
    #[serde(default, skip_serializing)]
    pub password: Option<ForbiddenPassword>,
}

/// `[spool]`.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSpool {
    /// See `SpoolConfig`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    /// See `SpoolConfig`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<ByteSize>,
}

/// `[control]`.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawControl {
    /// See `ControlConfig`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket: Option<PathBuf>,
    /// See `ControlConfig`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// See `ControlConfig`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<OctalMode>,
    /// See `ControlConfig`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<HumanDuration>,
}

/// `[console]`.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConsole {
    /// See `ConsoleConfig`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    /// See `ConsoleConfig`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
}

/// `[compat]`.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCompat {
    /// See `CompatConfig`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// See `CompatConfig`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub board: Option<String>,
    /// See `CompatConfig`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<PathBuf>,
    /// See `CompatConfig`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dir: Option<PathBuf>,
}

/// `[log]`.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLog {
    /// See `LogConfig`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<String>,
}

/// `[sensors]`.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSensors {
    /// See `SensorsConfig`; default none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<SensorBackend>,
    /// GPIO character device (gpio only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chip: Option<PathBuf>,
    /// One line offset per Z stepper, in Z stepper order (gpio only). Read
    /// as `i64` so that a negative offset gets a message naming the element.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lines: Option<Vec<i64>>,
    /// Whether touching reads low (gpio only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_low: Option<bool>,
    /// Bias the lines are requested with (gpio only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bias: Option<LineBias>,
    /// X limit switch wiring of the simulated machine (simulated only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x_switches: Option<XSwitchWiring>,
    /// Line of the X home switch (gpio only), with `x_away_line`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x_home_line: Option<i64>,
    /// Line of the X away switch (gpio only), with `x_home_line`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x_away_line: Option<i64>,
    /// Line of one X switch pressed at both ends (gpio only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x_switch_line: Option<i64>,
    /// One touch socket per board, in board order, "" for none (simulated
    /// only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub simulator_sockets: Option<Vec<PathBuf>>,
}

/// A duration written the humantime way ("500ms", "2s", "1m 30s").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HumanDuration(pub Duration);

/// Longest duration accepted for any key. In service they are all seconds or
/// less; the daemon adds them to its clock (deadlines, a move's expected
/// end), which humantime's largest values ("584542046090years") overflow.
pub(crate) const MAX_DURATION: Duration = Duration::from_secs(24 * 60 * 60);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = HumanDuration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration string such as \"500ms\", \"2s\" or \"1m 30s\"")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<HumanDuration, E> {
                let d = humantime::parse_duration(s.trim()).map_err(|e| {
                    E::custom(format!(
                        "invalid duration \"{s}\" ({e}); write it like \"500ms\", \"2s\" or \"1m 30s\""
                    ))
                })?;
                if d > MAX_DURATION {
                    return Err(E::custom(format!(
                        "duration \"{s}\" is longer than {}, the longest accepted",
                        humantime::format_duration(MAX_DURATION)
                    )));
                }
                Ok(HumanDuration(d))
            }
            // A bare number is the most likely mistake; say which unit is missing
            // rather than only "invalid type".
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<HumanDuration, E> {
                Err(E::custom(format!(
                    "a duration needs a unit: write \"{n}s\" or \"{n}ms\", not {n}"
                )))
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<HumanDuration, E> {
                Err(E::custom(format!(
                    "a duration needs a unit: write \"{n}s\" or \"{n}ms\", not {n}"
                )))
            }
            fn visit_f64<E: de::Error>(self, n: f64) -> Result<HumanDuration, E> {
                Err(E::custom(format!(
                    "a duration needs a unit and is written as a string, such as \"{n}s\""
                )))
            }
        }
        d.deserialize_any(V)
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_duration(self.0))
    }
}

/// A threshold written either once for every channel or once per channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PerChannel {
    /// One value for all channels.
    All(i64),
    /// One value per channel, in channel order.
    Each(Vec<i64>),
}

impl<'de> Deserialize<'de> for PerChannel {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // A hand-written visitor rather than `#[serde(untagged)]`: untagged
        // enums swallow the inner error and lose the element path
        // (`thresholds.amp_sum_min[3]`) that serde_path_to_error would report.
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = PerChannel;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an integer for every channel, or an array of one integer per string")
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<PerChannel, E> {
                Ok(PerChannel::All(n))
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<PerChannel, E> {
                i64::try_from(n)
                    .map(PerChannel::All)
                    .map_err(|_| E::custom(format!("{n} is too large")))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<PerChannel, A::Error> {
                let mut values = Vec::with_capacity(seq.size_hint().unwrap_or(0));
                while let Some(v) = seq.next_element::<i64>()? {
                    values.push(v);
                }
                Ok(PerChannel::Each(values))
            }
        }
        d.deserialize_any(V)
    }
}

impl Serialize for PerChannel {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            PerChannel::All(n) => s.serialize_i64(*n),
            PerChannel::Each(v) => v.serialize(s),
        }
    }
}

/// A byte count written as an integer or as "512MiB", "1GiB", "800MB".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ByteSize(pub u64);

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
const GIB: u64 = 1024 * MIB;
const TIB: u64 = 1024 * GIB;

/// Units accepted after the number; binary and decimal prefixes are both in
/// use and mean different things, so neither is guessed from the other.
const SIZE_UNITS: [(&str, u64); 9] = [
    ("b", 1),
    ("kb", 1_000),
    ("mb", 1_000_000),
    ("gb", 1_000_000_000),
    ("tb", 1_000_000_000_000),
    ("kib", KIB),
    ("mib", MIB),
    ("gib", GIB),
    ("tib", TIB),
];

/// Parses "512MiB", "1 GiB", "800MB", "4096" or "4096B" into bytes.
pub(crate) fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let unit = unit.trim();
    let hint = "write a whole number of bytes or a size such as \"512MiB\", \"1GiB\" or \"800MB\"";
    if digits.is_empty() {
        return Err(format!("invalid size \"{text}\": {hint}"));
    }
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("size \"{text}\" is too large"))?;
    let factor = if unit.is_empty() {
        1
    } else {
        SIZE_UNITS
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(unit))
            .map(|(_, f)| *f)
            .ok_or_else(|| format!("unknown size unit \"{unit}\" in \"{text}\": {hint}"))?
    };
    n.checked_mul(factor)
        .ok_or_else(|| format!("size \"{text}\" is too large"))
}

/// Writes a byte count in the largest binary unit that divides it exactly, so
/// the printed value parses back to the same number.
pub(crate) fn format_size(bytes: u64) -> String {
    for (unit, factor) in [("TiB", TIB), ("GiB", GIB), ("MiB", MIB), ("KiB", KIB)] {
        if bytes != 0 && bytes % factor == 0 {
            return format!("{}{unit}", bytes / factor);
        }
    }
    bytes.to_string()
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number of bytes, or a string such as \"512MiB\" or \"1GiB\"")
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<ByteSize, E> {
                u64::try_from(n)
                    .map(ByteSize)
                    .map_err(|_| E::custom(format!("a size cannot be negative ({n})")))
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(n))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<ByteSize, E> {
                parse_size(s).map(ByteSize).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let text = format_size(self.0);
        match text.parse::<i64>() {
            Ok(n) => s.serialize_i64(n),
            Err(_) => s.serialize_str(&text),
        }
    }
}

/// Unix permission bits written as an octal string ("0660").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OctalMode(pub u32);

/// Parses "0660", "660" or "0o660"; at most 0o777 (no setuid/setgid/sticky,
/// which mean nothing on a socket and would only hide a typo).
pub(crate) fn parse_mode(text: &str) -> Result<u32, String> {
    let t = text.trim();
    let digits = t.strip_prefix("0o").unwrap_or(t);
    if digits.is_empty() || !digits.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
        return Err(format!(
            "mode \"{text}\" is not an octal number such as \"0660\""
        ));
    }
    match u32::from_str_radix(digits, 8) {
        Ok(m) if m <= 0o777 => Ok(m),
        _ => Err(format!(
            "mode \"{text}\" is larger than 0777 (only permission bits are allowed)"
        )),
    }
}

impl<'de> Deserialize<'de> for OctalMode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = OctalMode;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an octal string such as \"0660\"")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<OctalMode, E> {
                parse_mode(s).map(OctalMode).map_err(E::custom)
            }
            // `mode = 660` is decimal 660 = 0o1224 to TOML, and `mode = 440`
            // would silently become 0o670: refuse integers outright.
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<OctalMode, E> {
                Err(E::custom(format!(
                    "mode must be a quoted octal string such as \"0660\"; the integer {n} is not read as octal"
                )))
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<OctalMode, E> {
                Err(E::custom(format!(
                    "mode must be a quoted octal string such as \"0660\"; the integer {n} is not read as octal"
                )))
            }
        }
        d.deserialize_any(V)
    }
}

impl Serialize for OctalMode {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&format_args!("{:04o}", self.0))
    }
}

/// Stands for a `password` key in `[database]`: deserializing it always fails.
#[derive(Debug)]
pub(crate) struct ForbiddenPassword;

impl<'de> Deserialize<'de> for ForbiddenPassword {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Consume the value without looking at it, so that no part of the
        // password can end up in an error message or a log line.
        d.deserialize_ignored_any(IgnoredAny)?;
        Err(de::Error::custom(
            "a password must not be written in the configuration file; put it in a file \
             of its own, readable only by the daemon, and name that file in \
             database.password_file",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn sizes_in_binary_and_decimal_units() {
        assert_eq!(parse_size("512MiB"), Ok(512 * MIB));
        assert_eq!(parse_size("1GiB"), Ok(GIB));
        assert_eq!(parse_size("1 gib"), Ok(GIB));
        assert_eq!(parse_size("800MB"), Ok(800_000_000));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("4096B"), Ok(4096));
        assert!(parse_size("1.5GiB")
            .unwrap_err()
            .contains("unknown size unit"));
        assert!(parse_size("GiB").unwrap_err().contains("invalid size"));
        assert!(parse_size("-1GiB").is_err());
        assert!(parse_size("99999999999TiB")
            .unwrap_err()
            .contains("too large"));
        assert_eq!(format_size(GIB), "1GiB");
        assert_eq!(format_size(3 * MIB / 2), "1536KiB");
        assert_eq!(format_size(800_000_000), "781250KiB");
        assert_eq!(format_size(1000), "1000");
        assert_eq!(format_size(0), "0");
    }

    #[test]
    fn modes_are_octal_permission_bits() {
        assert_eq!(parse_mode("0660"), Ok(0o660));
        assert_eq!(parse_mode("660"), Ok(0o660));
        assert_eq!(parse_mode("0o600"), Ok(0o600));
        assert_eq!(parse_mode("0777"), Ok(0o777));
        assert!(parse_mode("0680").unwrap_err().contains("not an octal"));
        assert!(parse_mode("").is_err());
        assert!(parse_mode("0o").is_err());
        assert!(parse_mode("1777").unwrap_err().contains("larger than 0777"));
    }

    #[test]
    fn a_duration_that_overflows_the_clock_is_refused() {
        // Found with fuzz/fuzz_targets/config.rs (which checks that every
        // duration of a parsed config fits a deadline): humantime's largest
        // values were accepted, and the board driver panicked with "overflow
        // when adding duration to instant" on connect (`Instant::now() +
        // reset_wait`) or after a move (`Instant::now() + move_duration`).
        let text = |v: &str| {
            format!(
                "host = \"h\"\n[[boards]]\nname = \"c\"\nport = \"/dev/x\"\nint_bytes = 2\n\
                 firmware = \"v2\"\nsteppers = 3\nmove_margin = \"{v}\"\n\
                 [layout]\nstrings = 1\nx_index = 0\nz_first_index = 1\n"
            )
        };
        let origin = std::path::Path::new("t.toml");
        for huge in ["584542046090years", "18446744073709551615s", "1day 1ns"] {
            let e = crate::config::parse(&text(huge), origin).unwrap_err();
            assert_eq!(e.key(), Some("boards[0].move_margin"), "{e}");
            assert_eq!(e.position().map(|p| p.line), Some(8), "{e}");
            assert!(e.to_string().contains("longer than 1day"), "{e}");
        }
        let c = crate::config::parse(&text("1day"), origin).unwrap();
        let spec = crate::board::BoardSpec::from_config(&c, 0).unwrap();
        let longest = spec.move_duration(0, u64::from(u32::MAX));
        assert!(std::time::Instant::now().checked_add(longest).is_some());
    }

    proptest! {
        #[test]
        fn sizes_print_back_to_themselves(bytes in any::<u64>()) {
            prop_assert_eq!(parse_size(&format_size(bytes)), Ok(bytes));
        }

        #[test]
        fn durations_print_back_to_themselves(secs in 0u64..10_000_000, nanos in 0u32..1_000_000_000) {
            let d = Duration::new(secs, nanos);
            let text = humantime::format_duration(d).to_string();
            prop_assert_eq!(humantime::parse_duration(&text).ok(), Some(d));
        }
    }
}
