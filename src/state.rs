//! Run-time changes that must survive a restart: stepper enables (including
//! a stepper bump_check disabled for safety) and settings changed through the
//! control API.
//!
//! # File format (`state.json` beside the spool, format 1)
//!
//! ```json
//! {"format": 1, "enabled": [true, false], "overrides": {"z_rest": 0.5, "voice_count_max": [12, 10]},
//!  "motor": {"z.speed": 120, "stepper.3.accel": 5000}}
//! ```
//!
//! `motor` holds the motor parameters changed at run time (`stringdriverctl
//! motor set`), keyed `GROUP.PARAM` or `stepper.N.PARAM`; at start they are
//! applied over `[motor]` before the boards are given their parameters.
//! `motor_file` is the file's `[motor]` they were made over: when the file
//! says something else at a start (or a reload changes `[motor]`), the file
//! is the newer word, the changes are dropped and the file's parameters are
//! sent (motor parameters in the file take effect at a start).
//!
//! `overrides` holds only the settings changed at run time; at start they are
//! applied over the configuration file. Editing a setting in the file and
//! reloading (SIGHUP) drops that key's override: the newer word wins. Written
//! whole to a temporary file, synced and renamed, so a crash leaves the old
//! or the new file. An unreadable file is moved aside and reported; the daemon
//! then starts from the configuration alone.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::{Config, MotorParam, MotorParams, MotorTarget};
use crate::snapshot::Settings;

/// The saved state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Saved {
    /// File format.
    pub format: u32,
    /// Per global stepper: enabled or not (`None`: never changed).
    pub enabled: Option<Vec<bool>>,
    /// Settings changed at run time, by name.
    pub overrides: BTreeMap<String, Value>,
    /// Motor parameters changed at run time, by [`motor_key`].
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub motor: BTreeMap<String, i64>,
    /// The file's `[motor]` those changes were made over: when the file
    /// says something else now, the file is the newer word and wins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub motor_file: Option<MotorParams>,
}

/// The key a motor parameter change is kept under: `z.speed`, `stepper.3.accel`.
pub fn motor_key(target: MotorTarget, param: MotorParam) -> String {
    format!("{target}.{}", param.name())
}

/// Parses a [`motor_key`].
pub fn parse_motor_key(key: &str) -> Result<(MotorTarget, MotorParam), String> {
    let (target, param) = key
        .rsplit_once('.')
        .ok_or_else(|| format!("`{key}` is not GROUP.PARAM"))?;
    let target = target.strip_prefix("stepper.").unwrap_or(target);
    Ok((target.parse()?, param.parse()?))
}

/// `config`'s motor parameters with the saved run-time changes applied, in
/// key order; returns what could not be applied (each with why).
pub fn restore_motor(saved: &Saved, config: &Config) -> (MotorParams, Vec<String>) {
    let mut motor = config.motor.clone();
    let mut skipped = Vec::new();
    if !saved.motor.is_empty()
        && saved
            .motor_file
            .as_ref()
            .is_some_and(|f| *f != config.motor)
    {
        skipped.push(format!(
            "{} run-time motor change(s): [motor] in the file changed since, and the file wins",
            saved.motor.len()
        ));
        return (motor, skipped);
    }
    for (key, value) in &saved.motor {
        let applied = parse_motor_key(key)
            .and_then(|(t, p)| motor.change(t, p, *value, &config.layout, &config.boards));
        match applied {
            Ok(m) => motor = m,
            Err(e) => skipped.push(format!("motor {key} = {value}: {e}")),
        }
    }
    (motor, skipped)
}

/// One run-time setting as people see it: its name, the unit and range of
/// its value, and what it does. The one source of the settings' names: the
/// daemon's checks, its error messages and `stringdriverctl set --help` all
/// read [`SETTING_INFO`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SettingInfo {
    /// The name `get`/`set` take (also the configuration key).
    pub name: &'static str,
    /// The value's unit and allowed range, as `apply` checks it.
    pub unit: &'static str,
    /// What it changes.
    pub description: &'static str,
}

const fn info(name: &'static str, unit: &'static str, description: &'static str) -> SettingInfo {
    SettingInfo {
        name,
        unit,
        description,
    }
}

const PER_CHANNEL: &str = "integer, or one integer per channel";

/// Every setting that can be changed at run time, in the order they are
/// listed.
pub const SETTING_INFO: &[SettingInfo] = &[
    info(
        "bump_check_enable",
        "true or false",
        "when false, bump_check does nothing",
    ),
    info("z_up_step", "steps, > 0", "a Z move away from the string"),
    info("z_down_step", "steps, < 0", "a Z move toward the string"),
    info("tune_rest", "seconds, 0 to 3600", "rest after a tuner move"),
    info("x_rest", "seconds, 0 to 3600", "rest after an X move"),
    info("z_rest", "seconds, 0 to 3600", "rest after a Z move"),
    info(
        "lap_rest",
        "seconds, 0 to 3600",
        "rest after each channel's adjustment in z_adjust",
    ),
    info(
        "adjustment_level",
        "passes, >= 1",
        "passes in place before a sweep moves on",
    ),
    info(
        "retry_threshold",
        "attempts, >= 1",
        "attempts before falling back to calibration",
    ),
    info(
        "delta_threshold",
        "amp_sum change, >= 0",
        "a change that means still settling",
    ),
    info(
        "z_variance_threshold",
        "voice_count variance, >= 0",
        "variance that triggers recalibration",
    ),
    info(
        "x_start",
        "X steps, inside the X travel",
        "first X position of a sweep",
    ),
    info(
        "x_finish",
        "X steps, inside the X travel",
        "last X position of a sweep",
    ),
    info(
        "x_step",
        "X steps, >= 1",
        "a sweep's X increment and the X jog step",
    ),
    info("tuner_step", "steps, >= 1", "the tuner jog step"),
    info(
        "voice_count_min",
        PER_CHANNEL,
        "fewest partials a channel should have",
    ),
    info(
        "voice_count_max",
        PER_CHANNEL,
        "most partials a channel should have",
    ),
    info(
        "amp_sum_min",
        PER_CHANNEL,
        "lowest amplitude sum a channel should have",
    ),
    info(
        "amp_sum_max",
        PER_CHANNEL,
        "highest amplitude sum a channel should have",
    ),
];

const SETTING_NAMES: [&str; SETTING_INFO.len()] = {
    let mut names = [""; SETTING_INFO.len()];
    let mut i = 0;
    while i < names.len() {
        names[i] = SETTING_INFO[i].name;
        i += 1;
    }
    names
};

/// The names of the settings that can be changed at run time (of
/// [`SETTING_INFO`], in its order).
pub const SETTINGS: &[&str] = &SETTING_NAMES;

/// The settings as a help text: one line per setting with its unit and
/// meaning (`stringdriverctl set --help`).
pub fn settings_help() -> String {
    let width = SETTING_INFO.iter().map(|s| s.name.len()).max().unwrap_or(0);
    SETTING_INFO
        .iter()
        .map(|s| format!("  {:<width$}  {} ({})\n", s.name, s.description, s.unit))
        .collect()
}

/// Applies one setting to `s`, with the configuration's rules; a clear error
/// names the setting and what is wrong.
pub fn apply(s: &mut Settings, name: &str, value: &Value) -> Result<(), String> {
    let int = || {
        value
            .as_i64()
            .and_then(|v| i32::try_from(v).ok())
            .ok_or_else(|| format!("{name} must be an integer, not {value}"))
    };
    let secs = || {
        value
            .as_f64()
            .filter(|v| v.is_finite() && (0.0..=3600.0).contains(v))
            .ok_or_else(|| {
                format!("{name} must be a number of seconds from 0 to 3600, not {value}")
            })
    };
    let channels = s.thresholds.voice_count_min.len();
    let per_channel = || -> Result<Vec<i32>, String> {
        match value {
            Value::Array(items) if items.len() == channels => items
                .iter()
                .map(|v| v.as_i64().and_then(|v| i32::try_from(v).ok()))
                .collect::<Option<Vec<i32>>>()
                .ok_or_else(|| format!("{name} entries must be integers")),
            Value::Array(items) => Err(format!(
                "{name} needs {channels} entries (one per channel), not {}",
                items.len()
            )),
            v => v
                .as_i64()
                .and_then(|v| i32::try_from(v).ok())
                .map(|v| vec![v; channels])
                .ok_or_else(|| {
                    format!(
                        "{name} must be an integer or an array of {channels} integers, not {value}"
                    )
                }),
        }
    };
    let o = &mut s.operations;
    match name {
        "bump_check_enable" => {
            o.bump_check_enable = value
                .as_bool()
                .ok_or_else(|| format!("{name} must be true or false, not {value}"))?
        }
        "z_up_step" => {
            let v = int()?;
            if v <= 0 {
                return Err(format!(
                    "z_up_step must be > 0 (a move away from the string), not {v}"
                ));
            }
            o.z_up_step = v;
        }
        "z_down_step" => {
            let v = int()?;
            if v >= 0 {
                return Err(format!(
                    "z_down_step must be < 0 (a move toward the string), not {v}"
                ));
            }
            o.z_down_step = v;
        }
        "tune_rest" => o.tune_rest = secs()?,
        "x_rest" => o.x_rest = secs()?,
        "z_rest" => o.z_rest = secs()?,
        "lap_rest" => o.lap_rest = secs()?,
        "adjustment_level" | "retry_threshold" => {
            let v = int()?;
            if v < 1 {
                return Err(format!("{name} must be at least 1, not {v}"));
            }
            if name == "adjustment_level" {
                o.adjustment_level = v
            } else {
                o.retry_threshold = v
            }
        }
        "delta_threshold" | "z_variance_threshold" => {
            let v = int()?;
            if v < 0 {
                return Err(format!("{name} must be at least 0, not {v}"));
            }
            if name == "delta_threshold" {
                o.delta_threshold = v
            } else {
                o.z_variance_threshold = v
            }
        }
        "x_start" | "x_finish" => {
            let v = int()?;
            o.check_x_position(name, v)?;
            if name == "x_start" {
                o.x_start = v
            } else {
                o.x_finish = v
            }
        }
        "x_step" | "tuner_step" => {
            let v = int()?;
            if v < 1 {
                return Err(format!("{name} must be at least 1, not {v}"));
            }
            if name == "x_step" {
                o.x_step = v
            } else {
                o.tuner_step = v
            }
        }
        "voice_count_min" | "voice_count_max" | "amp_sum_min" | "amp_sum_max" => {
            let v = per_channel()?;
            let t = &mut s.thresholds;
            let mut next = t.clone();
            match name {
                "voice_count_min" => next.voice_count_min = v,
                "voice_count_max" => next.voice_count_max = v,
                "amp_sum_min" => next.amp_sum_min = v,
                _ => next.amp_sum_max = v,
            }
            let bad = |lo: &[i32], hi: &[i32]| lo.iter().zip(hi).position(|(a, b)| a > b);
            if let Some(c) = bad(&next.voice_count_min, &next.voice_count_max)
                .or(bad(&next.amp_sum_min, &next.amp_sum_max))
            {
                return Err(format!(
                    "{name}: channel {c} would have a minimum above its maximum"
                ));
            }
            *t = next;
        }
        other => {
            return Err(format!(
                "unknown setting `{other}` (known: {})",
                SETTINGS.join(", ")
            ))
        }
    }
    Ok(())
}

/// The state file.
pub struct StateFile {
    path: PathBuf,
    saved: Mutex<Saved>,
}

impl StateFile {
    /// Opens the file at `path`; returns it, what it held, and a problem if
    /// it was unreadable (then moved aside).
    pub fn open(path: &Path) -> (StateFile, Saved, Option<String>) {
        let (saved, problem) = crate::files::read_json::<Saved>(path, |s| s.format);
        let saved = saved.unwrap_or_default();
        let file = StateFile {
            path: path.to_path_buf(),
            saved: Mutex::new(Saved {
                format: 1,
                ..saved.clone()
            }),
        };
        (file, saved, problem)
    }

    /// Applies what was saved to `s` (enables of the right length, overrides
    /// that still pass the rules); returns what could not be applied.
    pub fn restore(saved: &Saved, s: &mut Settings) -> Vec<String> {
        let mut skipped = Vec::new();
        if let Some(e) = &saved.enabled {
            if e.len() == s.enabled.len() {
                s.enabled = e.clone();
            } else {
                skipped.push(format!(
                    "enables for {} steppers (the host has {})",
                    e.len(),
                    s.enabled.len()
                ));
            }
        }
        for (k, v) in &saved.overrides {
            if let Err(e) = apply(s, k, v) {
                skipped.push(e);
            }
        }
        skipped
    }

    /// Records the enables and writes the file.
    pub fn save_enabled(&self, enabled: &[bool]) -> Result<(), String> {
        let mut s = self.saved.lock().unwrap_or_else(|e| e.into_inner());
        s.enabled = Some(enabled.to_vec());
        self.write(&s)
    }

    /// Records a run-time setting change and writes the file.
    pub fn save_override(&self, name: &str, value: Value) -> Result<(), String> {
        let mut s = self.saved.lock().unwrap_or_else(|e| e.into_inner());
        s.overrides.insert(name.to_string(), value);
        self.write(&s)
    }

    /// Records a run-time motor parameter change and writes the file.
    pub fn save_motor(&self, key: &str, value: i64) -> Result<(), String> {
        let mut s = self.saved.lock().unwrap_or_else(|e| e.into_inner());
        s.motor.insert(key.to_string(), value);
        self.write(&s)
    }

    /// Notes the file's `[motor]` this run started with (saved with the
    /// next motor change). Run-time changes made over another `[motor]`
    /// (see [`restore_motor`]) are dropped.
    pub fn start_motor(&self, file: &MotorParams) -> Result<(), String> {
        let mut s = self.saved.lock().unwrap_or_else(|e| e.into_inner());
        let stale = s.motor_file.as_ref().is_some_and(|f| f != file) && !s.motor.is_empty();
        s.motor_file = Some(file.clone());
        if stale {
            s.motor.clear();
            return self.write(&s);
        }
        Ok(())
    }

    /// Drops every run-time motor change (the file's `[motor]` changed).
    pub fn drop_motor(&self) -> Result<(), String> {
        let mut s = self.saved.lock().unwrap_or_else(|e| e.into_inner());
        if s.motor.is_empty() {
            return Ok(());
        }
        s.motor.clear();
        self.write(&s)
    }

    /// The names of the settings changed at run time (kept across restarts).
    pub fn overridden(&self) -> Vec<String> {
        let s = self.saved.lock().unwrap_or_else(|e| e.into_inner());
        s.overrides.keys().cloned().collect()
    }

    /// Drops the overrides of settings the configuration file now changed
    /// (or `unset` returned to the file's value).
    pub fn drop_overrides(&self, names: &[&str]) -> Result<(), String> {
        let mut s = self.saved.lock().unwrap_or_else(|e| e.into_inner());
        let before = s.overrides.len();
        s.overrides.retain(|k, _| !names.contains(&k.as_str()));
        if s.overrides.len() == before {
            return Ok(());
        }
        self.write(&s)
    }

    fn write(&self, s: &Saved) -> Result<(), String> {
        let bytes = serde_json::to_vec_pretty(s).map_err(|e| e.to_string())?;
        crate::files::write_atomically(&self.path, &bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{OperationSettings, Thresholds};
    use serde_json::json;

    fn settings() -> Settings {
        Settings {
            operations: OperationSettings::default(),
            thresholds: Thresholds {
                voice_count_min: vec![0; 2],
                voice_count_max: vec![12; 2],
                amp_sum_min: vec![20; 2],
                amp_sum_max: vec![100; 2],
            },
            enabled: vec![true; 5],
        }
    }

    #[test]
    fn every_listed_setting_is_one_apply_knows_and_the_help_names_it() {
        let help = settings_help();
        for info in SETTING_INFO {
            let mut s = settings();
            // An object is no valid value for any setting: the error must be
            // about the value, not an unknown name.
            let e = apply(&mut s, info.name, &json!({"x": 1})).expect_err(info.name);
            assert!(!e.contains("unknown setting"), "{}: {e}", info.name);
            assert!(
                help.contains(info.name) && help.contains(info.unit),
                "{help}"
            );
        }
        assert_eq!(SETTINGS.len(), SETTING_INFO.len());
        let e = apply(&mut settings(), "z_rst", &json!(1)).expect_err("unknown");
        assert!(e.contains("unknown setting `z_rst`"), "{e}");
    }

    #[test]
    fn sweep_positions_are_checked_against_the_x_travel() {
        let mut s = settings();
        apply(&mut s, "x_finish", &json!(2000)).expect("inside 0..2600");
        assert_eq!(s.operations.x_finish, 2000);
        let e = apply(&mut s, "x_start", &json!(2601)).expect_err("past X max");
        assert!(e.contains("x_start") && e.contains("0 to 2600"), "{e}");
        assert_eq!(s.operations.x_start, 100, "a refused value changes nothing");
        assert!(apply(&mut s, "x_step", &json!(0)).is_err());
        apply(&mut s, "tuner_step", &json!(50)).expect("ok");
        assert_eq!(s.operations.tuner_step, 50);
    }

    #[test]
    fn saved_motor_changes_apply_over_the_file_and_bad_ones_are_reported() {
        let text = "host = \"h\"\n[[boards]]\nname = \"c\"\nport = \"/dev/null\"\n\
                    int_bytes = 2\nfirmware = \"v2\"\nsteppers = 13\n\
                    [layout]\nstrings = 6\nx_index = 0\nz_first_index = 1\n";
        let cfg = crate::config::parse(text, Path::new("t.toml")).expect("valid");
        let mut saved = Saved::default();
        saved.motor.insert("z.speed".into(), 120);
        saved.motor.insert("stepper.3.accel".into(), 5000);
        saved.motor.insert("z.max".into(), 50); // the host's Z limits reach 100
        saved.motor.insert("q.speed".into(), 1);
        let (m, skipped) = restore_motor(&saved, &cfg);
        assert_eq!(m.z.speed, 120);
        assert_eq!(m.accel_of(&cfg.layout, 3), Some(5000));
        assert_eq!(m.z.max, 100);
        assert_eq!(skipped.len(), 2, "{skipped:?}");
        assert!(
            skipped.iter().any(|s| s.contains("z.max = 50")),
            "{skipped:?}"
        );
        assert!(
            skipped.iter().any(|s| s.contains("unknown axis group `q`")),
            "{skipped:?}"
        );
        assert_eq!(
            parse_motor_key(&motor_key(MotorTarget::Stepper(3), MotorParam::Accel)),
            Ok((MotorTarget::Stepper(3), MotorParam::Accel))
        );
        // Made over the same [motor]: applied; over another: the file wins.
        saved.motor_file = Some(cfg.motor.clone());
        assert_eq!(restore_motor(&saved, &cfg).0.z.speed, 120);
        let mut other = cfg.motor.clone();
        other.z.speed = 90;
        saved.motor_file = Some(other);
        let (m, skipped) = restore_motor(&saved, &cfg);
        assert_eq!(m, cfg.motor);
        assert!(skipped[0].contains("the file wins"), "{skipped:?}");
    }

    #[test]
    fn settings_follow_the_configuration_rules() {
        let mut s = settings();
        apply(&mut s, "z_rest", &json!(0.5)).expect("ok");
        assert_eq!(s.operations.z_rest, 0.5);
        assert!(apply(&mut s, "z_up_step", &json!(0))
            .unwrap_err()
            .contains("> 0"));
        assert!(apply(&mut s, "z_down_step", &json!(2))
            .unwrap_err()
            .contains("< 0"));
        assert!(apply(&mut s, "z_rest", &json!(-1))
            .unwrap_err()
            .contains("seconds"));
        assert!(apply(&mut s, "z_rest", &json!("fast")).is_err());
        assert!(apply(&mut s, "voice_count_max", &json!([1, 2, 3]))
            .unwrap_err()
            .contains("2 entries"));
        assert!(apply(&mut s, "voice_count_min", &json!(20))
            .unwrap_err()
            .contains("minimum above its maximum"));
        apply(&mut s, "voice_count_max", &json!(10)).expect("scalar for every channel");
        assert_eq!(s.thresholds.voice_count_max, vec![10, 10]);
        assert!(apply(&mut s, "speed", &json!(1))
            .unwrap_err()
            .contains("unknown setting"));
    }

    #[test]
    fn enables_and_overrides_survive_a_reopen_and_bad_files_are_moved_aside() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state.json");
        let (f, saved, problem) = StateFile::open(&path);
        assert!(problem.is_none() && saved.enabled.is_none());
        f.save_enabled(&[true, false, true, true, false])
            .expect("save");
        f.save_override("z_rest", json!(0.25)).expect("save");
        let (_f, saved, _) = StateFile::open(&path);
        let mut s = settings();
        assert!(StateFile::restore(&saved, &mut s).is_empty());
        assert_eq!(s.enabled, vec![true, false, true, true, false]);
        assert_eq!(s.operations.z_rest, 0.25);
        std::fs::write(&path, b"{not json").expect("write");
        let (_f, saved, problem) = StateFile::open(&path);
        assert!(problem.is_some() && saved == Saved::default());
        assert!(!path.exists());
    }
}
