//! Motor parameters: the speed, acceleration and limits the boards are run
//! with (hosts.md "Motor parameters the boards are run with").
//!
//! Per axis group (X, Z, tuners): `speed` and `accel` for each of its
//! steppers (`set_speed`/`set_accel` take a stepper index, so
//! `[[motor.stepper]]` can give one stepper its own), `min` and `max` for
//! the group (`set_min`/`set_max` take the firmware's axis group number,
//! [`Firmware::axis_group`]: v2 0 = X, 1 = Z; v1 0 = tuners, 1 = X, 2 = Z;
//! tuner 0 = tuners).
//!
//! How they relate to `[layout]`: the board's `min`/`max` are what the
//! *firmware* enforces (it silently ignores a move outside them); the
//! layout's per-stepper limits are what the *host* allows, and they must lie
//! inside the board's, or a move the host allows would be ignored by the
//! board and never confirmed. The speed is both what the board moves at and
//! what the host predicts a move's duration from (the driver uses the values
//! it last sent), so there is no other speed setting.
//!
//! A board forgets all of this when it resets; the driver sends them after
//! every connect and every detected reset (`board::driver::motor`).

use serde::{Deserialize, Serialize};

use crate::protocol::{AxisKind, Firmware, IntWidth, Op};

use super::error::Invalid;
use super::layout::{Layout, Role};
use super::sections::BoardConfig;

/// Defaults of hosts.md.
pub mod defaults {
    /// X speed, steps/s.
    pub const X_SPEED: i32 = 500;
    /// Z speed, steps/s.
    pub const Z_SPEED: i32 = 100;
    /// Tuner speed, steps/s.
    pub const TUNER_SPEED: i32 = 250;
    /// Acceleration of every axis, steps/s².
    pub const ACCEL: i32 = 10_000;
    /// X lower limit (the upper one is the host's X max, `layout.x_max`).
    pub const X_MIN: i32 = 0;
    /// Z limits.
    pub const Z_LIMITS: (i32, i32) = (-100, 100);
    /// Tuner limits on a tuner board.
    pub const TUNER_LIMITS: (i32, i32) = (-100_000, 100_000);
    /// Tuner limits on the v1 carriage board (stringdriver-1).
    pub const V1_TUNER_LIMITS: (i32, i32) = (-25_000, 25_000);
}

/// `[motor.x]`, `[motor.z]`, `[motor.tuners]` as written.
#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAxis {
    /// Steps/s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub speed: Option<i64>,
    /// Steps/s².
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accel: Option<i64>,
    /// The board's lower limit of the group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<i64>,
    /// The board's upper limit of the group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<i64>,
}

/// One `[[motor.stepper]]` entry as written.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawStepperMotor {
    /// Global stepper index.
    pub index: i64,
    /// Steps/s, replacing its group's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub speed: Option<i64>,
    /// Steps/s², replacing its group's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accel: Option<i64>,
}

/// `[motor]` as written.
#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawMotor {
    /// The carriage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x: Option<RawAxis>,
    /// The Z steppers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub z: Option<RawAxis>,
    /// The tuners.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tuners: Option<RawAxis>,
    /// Per-stepper speed and acceleration. Last (TOML arrays of tables).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stepper: Vec<RawStepperMotor>,
}

/// The parameters of one axis group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AxisParams {
    /// Speed of each of its steppers, steps/s (`set_speed`).
    pub speed: i32,
    /// Acceleration of each of its steppers, steps/s² (`set_accel`).
    pub accel: i32,
    /// Lower limit the board enforces (`set_min`).
    pub min: i32,
    /// Upper limit the board enforces (`set_max`).
    pub max: i32,
}

/// One stepper's own speed or acceleration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepperMotor {
    /// Global index.
    pub index: usize,
    /// Steps/s replacing its group's.
    pub speed: Option<i32>,
    /// Steps/s² replacing its group's.
    pub accel: Option<i32>,
}

/// A parameter of an axis group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Param {
    /// Steps/s.
    Speed,
    /// Steps/s².
    Accel,
    /// Lower limit.
    Min,
    /// Upper limit.
    Max,
}

impl Param {
    /// Every parameter, for help texts and the command line's checks.
    pub const ALL: [Param; 4] = [Param::Speed, Param::Accel, Param::Min, Param::Max];

    /// Name as written in the configuration and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Param::Speed => "speed",
            Param::Accel => "accel",
            Param::Min => "min",
            Param::Max => "max",
        }
    }

    /// The firmware command that sets it.
    pub fn op(self) -> Op {
        match self {
            Param::Speed => Op::SetSpeed,
            Param::Accel => Op::SetAccel,
            Param::Min => Op::SetMin,
            Param::Max => Op::SetMax,
        }
    }
}

impl std::str::FromStr for Param {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "speed" => Ok(Param::Speed),
            "accel" | "acceleration" => Ok(Param::Accel),
            "min" => Ok(Param::Min),
            "max" => Ok(Param::Max),
            other => Err(format!(
                "unknown motor parameter `{other}` (expected speed, accel, min or max)"
            )),
        }
    }
}

/// What a [`MotorParams::change`] is applied to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// An axis group.
    Axis(AxisKind),
    /// One stepper (global index): speed and accel only.
    Stepper(usize),
}

impl std::str::FromStr for Target {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let n = s.strip_prefix("stepper.").unwrap_or(s);
        if let Ok(n) = n.parse::<usize>() {
            return Ok(Target::Stepper(n));
        }
        s.parse::<AxisKind>().map(Target::Axis).map_err(|_| {
            format!("unknown axis group `{s}` (expected x, z, tuners or a stepper number)")
        })
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Axis(a) => write!(f, "{a}"),
            Target::Stepper(n) => write!(f, "stepper.{n}"),
        }
    }
}

/// One command of a board's motor parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MotorWrite {
    /// `set_speed`, `set_accel`, `set_min` or `set_max`.
    #[serde(with = "op_name")]
    pub op: Op,
    /// The stepper on the board (speed, accel) or the axis group (min, max).
    pub index: usize,
    /// The value.
    pub value: i32,
}

mod op_name {
    use crate::protocol::Op;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(op: &Op, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(op.name())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Op, D::Error> {
        let name = String::deserialize(d)?;
        Op::ALL
            .into_iter()
            .find(|o| o.name() == name)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown command `{name}`")))
    }
}

/// The resolved motor parameters of a machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MotorParams {
    /// The carriage, if the machine has one.
    pub x: Option<AxisParams>,
    /// The Z steppers.
    pub z: AxisParams,
    /// The tuners, if the machine has them.
    pub tuners: Option<AxisParams>,
    /// Steppers with their own speed or acceleration, by index.
    pub stepper: Vec<StepperMotor>,
}

fn axis_of(role: Role) -> Option<AxisKind> {
    match role {
        Role::X => Some(AxisKind::X),
        Role::ZIn { .. } | Role::ZOut { .. } => Some(AxisKind::Z),
        Role::Tuner { .. } => Some(AxisKind::Tuners),
        Role::Unused => None,
    }
}

/// The global indices of the steppers of `axis`.
fn steppers_of(layout: &Layout, axis: AxisKind) -> std::ops::Range<usize> {
    match axis {
        AxisKind::X => layout.x().map_or(0..0, |r| r.indices()),
        AxisKind::Z => layout.z().indices(),
        AxisKind::Tuners => layout.tuners().map_or(0..0, |r| r.indices()),
    }
}

/// The boards (indices) that hold steppers of `axis`.
fn boards_of(layout: &Layout, axis: AxisKind) -> Vec<usize> {
    let mut out: Vec<usize> = steppers_of(layout, axis)
        .filter_map(|g| layout.locate(g).map(|(b, _)| b))
        .collect();
    out.dedup();
    out
}

impl MotorParams {
    /// The parameters of `axis`, if the machine has it.
    pub fn axis(&self, axis: AxisKind) -> Option<&AxisParams> {
        match axis {
            AxisKind::X => self.x.as_ref(),
            AxisKind::Z => Some(&self.z),
            AxisKind::Tuners => self.tuners.as_ref(),
        }
    }

    fn axis_mut(&mut self, axis: AxisKind) -> Option<&mut AxisParams> {
        match axis {
            AxisKind::X => self.x.as_mut(),
            AxisKind::Z => Some(&mut self.z),
            AxisKind::Tuners => self.tuners.as_mut(),
        }
    }

    /// Speed of stepper `global` as sent to its board, if one is sent.
    pub fn speed_of(&self, layout: &Layout, global: usize) -> Option<i32> {
        let own = self.stepper.iter().find(|s| s.index == global);
        own.and_then(|s| s.speed).or_else(|| {
            axis_of(layout.role(global))
                .and_then(|a| self.axis(a))
                .map(|p| p.speed)
        })
    }

    /// Acceleration of stepper `global` as sent to its board, if one is sent.
    pub fn accel_of(&self, layout: &Layout, global: usize) -> Option<i32> {
        let own = self.stepper.iter().find(|s| s.index == global);
        own.and_then(|s| s.accel).or_else(|| {
            axis_of(layout.role(global))
                .and_then(|a| self.axis(a))
                .map(|p| p.accel)
        })
    }

    /// The commands that give board `board` these parameters: `set_min` and
    /// `set_max` of every axis group it holds steppers of (by the firmware's
    /// own group numbers), then `set_speed` and `set_accel` of every stepper
    /// that has one. Only valid parameters ([`Self::check`]) are sent.
    pub fn writes(&self, layout: &Layout, boards: &[BoardConfig], board: usize) -> Vec<MotorWrite> {
        let mut out = Vec::new();
        let (Some(b), Some(range)) = (boards.get(board), layout.board_range(board)) else {
            return out;
        };
        for axis in AxisKind::ALL {
            let Some(p) = self.axis(axis) else { continue };
            if !boards_of(layout, axis).contains(&board) {
                continue;
            }
            let Some(group) = b.firmware.axis_group(axis) else {
                continue; // refused by `check`
            };
            let index = usize::from(group);
            out.push(MotorWrite {
                op: Op::SetMin,
                index,
                value: p.min,
            });
            out.push(MotorWrite {
                op: Op::SetMax,
                index,
                value: p.max,
            });
        }
        for (local, g) in range.enumerate() {
            if let Some(v) = self.speed_of(layout, g) {
                out.push(MotorWrite {
                    op: Op::SetSpeed,
                    index: local,
                    value: v,
                });
            }
            if let Some(v) = self.accel_of(layout, g) {
                out.push(MotorWrite {
                    op: Op::SetAccel,
                    index: local,
                    value: v,
                });
            }
        }
        out
    }

    /// Checks the parameters against the boards and the layout: every axis
    /// group the machine has exists in the firmware of each board holding
    /// its steppers; speed and acceleration at least 1, min <= max; every
    /// value fits its argument in the firmware's layout (v1: a 4-byte
    /// `long`; v2 on the Mega: a 2-byte `int`); every stepper's host limits
    /// (`[layout]`) inside the limits the board enforces. The error's key
    /// names the parameter (`motor.z.max`).
    pub(crate) fn check(&self, layout: &Layout, boards: &[BoardConfig]) -> Result<(), Invalid> {
        let width_of = |board: &BoardConfig, op: Op| -> IntWidth {
            board.firmware.layout(op, board.int_bytes).width(1)
        };
        let fits = |key: String, v: i32, boards_idx: &[usize], op: Op| -> Result<(), Invalid> {
            for &bi in boards_idx {
                let Some(b) = boards.get(bi) else { continue };
                let what = format!("{op} argument");
                super::layout::fits_board(v, width_of(b, op), &what, b, || {
                    format!("{} firmware", b.firmware)
                })
                .map_err(|m| Invalid::new(key.clone(), m))?;
            }
            Ok(())
        };
        for axis in AxisKind::ALL {
            let key = |p: &str| format!("motor.{axis}.{p}");
            let present = !steppers_of(layout, axis).is_empty();
            let Some(p) = self.axis(axis) else {
                if present {
                    return Err(Invalid::new(
                        format!("motor.{axis}"),
                        format!("the machine has {axis} steppers but no {axis} motor parameters"),
                    ));
                }
                continue;
            };
            if !present {
                return Err(Invalid::new(
                    format!("motor.{axis}"),
                    format!("set, but the layout has no {axis} steppers"),
                ));
            }
            let on = boards_of(layout, axis);
            for &bi in &on {
                let Some(b) = boards.get(bi) else { continue };
                match b.firmware.axis_group(axis) {
                    Some(g) if g < b.firmware.axis_count() => {}
                    _ => {
                        return Err(Invalid::new(
                            format!("motor.{axis}"),
                            format!(
                                "board `{}` ({} firmware) holds {axis} steppers but its set_min/set_max have no axis group for them ({})",
                                b.name,
                                b.firmware,
                                groups_text(b.firmware)
                            ),
                        ))
                    }
                }
            }
            for (name, v) in [("speed", p.speed), ("accel", p.accel)] {
                if v < 1 {
                    return Err(Invalid::new(
                        key(name),
                        format!(
                            "must be at least 1 step/s{}, not {v}",
                            if name == "accel" { "²" } else { "" }
                        ),
                    ));
                }
            }
            if p.min > p.max {
                return Err(Invalid::new(
                    key("min"),
                    format!(
                        "{axis} minimum {} is above its maximum {} (motor.{axis}.max)",
                        p.min, p.max
                    ),
                ));
            }
            fits(key("speed"), p.speed, &on, Op::SetSpeed)?;
            fits(key("accel"), p.accel, &on, Op::SetAccel)?;
            fits(key("min"), p.min, &on, Op::SetMin)?;
            fits(key("max"), p.max, &on, Op::SetMax)?;
            for g in steppers_of(layout, axis) {
                let (lo, hi) = layout.limits(g);
                if lo < p.min || hi > p.max {
                    let k = if lo < p.min { key("min") } else { key("max") };
                    return Err(Invalid::new(
                        k,
                        format!(
                            "stepper {g} ({}) may move from {lo} to {hi} ([layout]), outside the {axis} limits {} to {} the board would enforce: it would silently ignore such moves",
                            layout.role(g),
                            p.min,
                            p.max
                        ),
                    ));
                }
            }
        }
        let total = layout.total_steppers();
        for (k, s) in self.stepper.iter().enumerate() {
            let key = |p: &str| format!("motor.stepper[{k}].{p}");
            if s.index >= total {
                return Err(Invalid::new(
                    key("index"),
                    format!(
                        "stepper {} does not exist: the boards hold {total} steppers (0 to {})",
                        s.index,
                        total.saturating_sub(1)
                    ),
                ));
            }
            if self.stepper[..k].iter().any(|o| o.index == s.index) {
                return Err(Invalid::new(
                    key("index"),
                    format!("stepper {} already has its own motor parameters", s.index),
                ));
            }
            let board = layout
                .locate(s.index)
                .map(|(b, _)| vec![b])
                .unwrap_or_default();
            for (name, v, op) in [
                ("speed", s.speed, Op::SetSpeed),
                ("accel", s.accel, Op::SetAccel),
            ] {
                let Some(v) = v else { continue };
                if v < 1 {
                    return Err(Invalid::new(
                        key(name),
                        format!("must be at least 1, not {v}"),
                    ));
                }
                fits(key(name), v, &board, op)?;
            }
        }
        Ok(())
    }

    /// These parameters with one changed (`motor set z speed 120`), checked
    /// as a whole ([`Self::check`]); the error says what is wrong.
    pub fn change(
        &self,
        target: Target,
        param: Param,
        value: i64,
        layout: &Layout,
        boards: &[BoardConfig],
    ) -> Result<MotorParams, String> {
        let v = i32::try_from(value).map_err(|_| {
            format!(
                "{target} {}: {value} does not fit a 32-bit integer",
                param.name()
            )
        })?;
        let mut next = self.clone();
        match target {
            Target::Axis(axis) => {
                let p = next
                    .axis_mut(axis)
                    .ok_or_else(|| format!("the machine has no {axis} steppers"))?;
                match param {
                    Param::Speed => p.speed = v,
                    Param::Accel => p.accel = v,
                    Param::Min => p.min = v,
                    Param::Max => p.max = v,
                }
            }
            Target::Stepper(index) => {
                if !matches!(param, Param::Speed | Param::Accel) {
                    return Err(format!(
                        "{} is set per axis group (set_min/set_max take an axis group), not per stepper: use x, z or tuners",
                        param.name()
                    ));
                }
                let pos = match next.stepper.iter().position(|s| s.index == index) {
                    Some(i) => i,
                    None => {
                        next.stepper.push(StepperMotor {
                            index,
                            speed: None,
                            accel: None,
                        });
                        next.stepper.sort_by_key(|s| s.index);
                        next.stepper
                            .iter()
                            .position(|s| s.index == index)
                            .unwrap_or(0)
                    }
                };
                if param == Param::Speed {
                    next.stepper[pos].speed = Some(v);
                } else {
                    next.stepper[pos].accel = Some(v);
                }
            }
        }
        next.check(layout, boards)
            .map_err(|e| format!("{}: {}", e.key, e.message))?;
        Ok(next)
    }

    /// The `[motor]` table that builds these parameters again.
    pub(crate) fn to_raw(&self) -> RawMotor {
        let raw = |p: &AxisParams| RawAxis {
            speed: Some(p.speed.into()),
            accel: Some(p.accel.into()),
            min: Some(p.min.into()),
            max: Some(p.max.into()),
        };
        RawMotor {
            x: self.x.as_ref().map(raw),
            z: Some(raw(&self.z)),
            tuners: self.tuners.as_ref().map(raw),
            stepper: self
                .stepper
                .iter()
                .map(|s| RawStepperMotor {
                    index: s.index as i64,
                    speed: s.speed.map(i64::from),
                    accel: s.accel.map(i64::from),
                })
                .collect(),
        }
    }
}

fn groups_text(fw: Firmware) -> String {
    let named: Vec<String> = AxisKind::ALL
        .into_iter()
        .filter_map(|a| fw.axis_group(a).map(|g| (g, a)))
        .map(|(g, a)| format!("{g} = {a}"))
        .collect();
    named.join(", ")
}

fn int(key: &str, v: Option<i64>, default: i32) -> Result<i32, Invalid> {
    match v {
        None => Ok(default),
        Some(v) => i32::try_from(v)
            .map_err(|_| Invalid::new(key, format!("{v} does not fit a 32-bit integer"))),
    }
}

/// Resolves `[motor]` with the defaults of hosts.md (X max: the host's X
/// max, `layout.x_max`; tuner limits ±25 000 where a tuner sits on a v1
/// board, ±100 000 otherwise) and checks it ([`MotorParams::check`]).
pub(crate) fn build(
    raw: &RawMotor,
    layout: &Layout,
    boards: &[BoardConfig],
) -> Result<MotorParams, Invalid> {
    let axis = |kind: AxisKind,
                r: &Option<RawAxis>,
                speed: i32,
                (lo, hi): (i32, i32)|
     -> Result<AxisParams, Invalid> {
        let d = RawAxis::default();
        let r = r.as_ref().unwrap_or(&d);
        let key = |p: &str| format!("motor.{kind}.{p}");
        Ok(AxisParams {
            speed: int(&key("speed"), r.speed, speed)?,
            accel: int(&key("accel"), r.accel, defaults::ACCEL)?,
            min: int(&key("min"), r.min, lo)?,
            max: int(&key("max"), r.max, hi)?,
        })
    };
    let unwanted = |kind: AxisKind, r: &Option<RawAxis>| -> Result<(), Invalid> {
        match r {
            Some(_) => Err(Invalid::new(
                format!("motor.{kind}"),
                format!("set, but the layout has no {kind} steppers"),
            )),
            None => Ok(()),
        }
    };
    let x = match layout.x() {
        Some(r) => Some(axis(
            AxisKind::X,
            &raw.x,
            defaults::X_SPEED,
            (defaults::X_MIN, r.max),
        )?),
        None => {
            unwanted(AxisKind::X, &raw.x)?;
            None
        }
    };
    let z = axis(AxisKind::Z, &raw.z, defaults::Z_SPEED, defaults::Z_LIMITS)?;
    let tuners = match layout.tuners() {
        Some(_) => {
            let on_v1 = boards_of(layout, AxisKind::Tuners)
                .iter()
                .any(|&b| boards.get(b).is_some_and(|b| b.firmware == Firmware::V1));
            let limits = if on_v1 {
                defaults::V1_TUNER_LIMITS
            } else {
                defaults::TUNER_LIMITS
            };
            Some(axis(
                AxisKind::Tuners,
                &raw.tuners,
                defaults::TUNER_SPEED,
                limits,
            )?)
        }
        None => {
            unwanted(AxisKind::Tuners, &raw.tuners)?;
            None
        }
    };
    let mut stepper = Vec::with_capacity(raw.stepper.len());
    for (k, s) in raw.stepper.iter().enumerate() {
        let key = |p: &str| format!("motor.stepper[{k}].{p}");
        let index = usize::try_from(s.index).map_err(|_| {
            Invalid::new(
                key("index"),
                format!("a stepper index cannot be negative ({})", s.index),
            )
        })?;
        stepper.push(StepperMotor {
            index,
            speed: s
                .speed
                .map(|v| int(&key("speed"), Some(v), 0))
                .transpose()?,
            accel: s
                .accel
                .map(|v| int(&key("accel"), Some(v), 0))
                .transpose()?,
        });
    }
    let params = MotorParams {
        x,
        z,
        tuners,
        stepper,
    };
    params.check(layout, boards)?;
    let mut sorted = params;
    sorted.stepper.sort_by_key(|s| s.index);
    Ok(sorted)
}
