//! Command tables and integer widths of the three firmwares in service.
//!
//! The numbering of commands is a property of a board's firmware (v1 numbers
//! everything one higher because of its extra `gspeed` command), as is the
//! width of a C `int` (2 bytes on the AVR Mega, 4 on the RP2040 Pico). Both are
//! configured per board; nothing here guesses them.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Width of the firmware's C `int`, in which every binary argument travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IntWidth {
    /// 16-bit `int` (AVR boards such as the Arduino Mega).
    Two,
    /// 32-bit `int` (RP2040 Pico tuner boards).
    Four,
}

impl IntWidth {
    /// Number of bytes of one binary argument.
    pub fn bytes(self) -> usize {
        match self {
            IntWidth::Two => 2,
            IntWidth::Four => 4,
        }
    }

    /// Smallest and largest value an argument of this width can carry.
    pub fn range(self) -> (i32, i32) {
        match self {
            IntWidth::Two => (i16::MIN as i32, i16::MAX as i32),
            IntWidth::Four => (i32::MIN, i32::MAX),
        }
    }

    /// Whether `value` fits in this width without truncation.
    pub fn fits(self, value: i32) -> bool {
        let (lo, hi) = self.range();
        (lo..=hi).contains(&value)
    }

    /// Little-endian bytes of `value` at this width; `None` when it does not fit.
    pub fn to_le(self, value: i32) -> Option<([u8; 4], usize)> {
        if !self.fits(value) {
            return None;
        }
        Some((value.to_le_bytes(), self.bytes()))
    }

    /// Reads a signed little-endian integer of exactly this width.
    pub fn from_le(self, bytes: &[u8]) -> Option<i32> {
        match (self, bytes) {
            (IntWidth::Two, [a, b]) => Some(i16::from_le_bytes([*a, *b]) as i32),
            (IntWidth::Four, [a, b, c, d]) => Some(i32::from_le_bytes([*a, *b, *c, *d])),
            _ => None,
        }
    }
}

impl TryFrom<u8> for IntWidth {
    type Error = String;
    fn try_from(n: u8) -> Result<Self, String> {
        match n {
            2 => Ok(IntWidth::Two),
            4 => Ok(IntWidth::Four),
            other => Err(format!("int width must be 2 or 4 bytes, not {other}")),
        }
    }
}

impl<'de> Deserialize<'de> for IntWidth {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let n = i64::deserialize(d)?;
        u8::try_from(n)
            .map_err(|_| format!("int width must be 2 or 4 bytes, not {n}"))
            .and_then(IntWidth::try_from)
            .map_err(serde::de::Error::custom)
    }
}

impl Serialize for IntWidth {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u8(self.bytes() as u8)
    }
}

impl fmt::Display for IntWidth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.bytes())
    }
}

/// The firmware a board runs, which fixes its command numbering.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Firmware {
    /// Carriage firmware v2 (Arduino Mega, stringdriver-2 and -3).
    V2,
    /// Carriage firmware v1 with the extra `gspeed` command (stringdriver-1).
    V1,
    /// Tuner firmware (RP2040 Pico); numbered like v2.
    Tuner,
}

impl Firmware {
    /// Every firmware, for tests and help texts.
    pub const ALL: [Firmware; 3] = [Firmware::V2, Firmware::V1, Firmware::Tuner];

    /// Command number of `op` on this firmware, or `None` if it has no such command.
    pub fn id(self, op: Op) -> Option<u16> {
        use Op::*;
        let v2 = match op {
            Positions => 1,
            Amove => 2,
            Rmove => 3,
            ResetAll => 4,
            ResetStepper => 5,
            SetStepper => 6,
            SetAccel => 7,
            SetSpeed => 8,
            SetMin => 9,
            SetMax => 10,
            Microstep => 11,
            CheckMemory => 12,
        };
        match self {
            Firmware::V2 | Firmware::Tuner => Some(v2),
            Firmware::V1 => match op {
                // v1 has no microstep command; its check_memory stays at 12.
                Microstep => None,
                CheckMemory => Some(12),
                _ => Some(v2 + 1),
            },
        }
    }

    /// The operation a command number means on this firmware.
    pub fn op(self, id: u16) -> Option<Op> {
        Op::ALL.into_iter().find(|&op| self.id(op) == Some(id))
    }

    /// Number of axis groups that `set_min`/`set_max` accept (0 = X, 1 = Z on
    /// the carriage boards; one group on the tuner). A larger axis number
    /// corrupts the firmware's memory, so the host refuses it.
    pub fn axis_count(self) -> u8 {
        match self {
            Firmware::V2 | Firmware::V1 => 2,
            Firmware::Tuner => 1,
        }
    }

    /// Lower-case name as written in the configuration.
    pub fn name(self) -> &'static str {
        match self {
            Firmware::V2 => "v2",
            Firmware::V1 => "v1",
            Firmware::Tuner => "tuner",
        }
    }
}

impl fmt::Display for Firmware {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Firmware {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Firmware::ALL
            .into_iter()
            .find(|f| f.name() == s)
            .ok_or_else(|| format!("unknown firmware `{s}` (expected v2, v1 or tuner)"))
    }
}

/// A command of the stepper firmware, by meaning rather than number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// Report every stepper's counter.
    Positions,
    /// Blocking move to an absolute position.
    Amove,
    /// Blocking relative move.
    Rmove,
    /// Zero **every** counter (no motion). Only ever sent when asked for by name.
    ResetAll,
    /// Zero one counter (no motion).
    ResetStepper,
    /// Set one counter without motion (6 on v2; never confuse with `ResetAll`).
    SetStepper,
    /// Acceleration of one stepper.
    SetAccel,
    /// Speed of one stepper.
    SetSpeed,
    /// Lower limit of an axis group.
    SetMin,
    /// Upper limit of an axis group.
    SetMax,
    /// Microstep mode (`z_size` / `t_size`).
    Microstep,
    /// Free RAM report.
    CheckMemory,
}

impl Op {
    /// Every operation.
    pub const ALL: [Op; 12] = [
        Op::Positions,
        Op::Amove,
        Op::Rmove,
        Op::ResetAll,
        Op::ResetStepper,
        Op::SetStepper,
        Op::SetAccel,
        Op::SetSpeed,
        Op::SetMin,
        Op::SetMax,
        Op::Microstep,
        Op::CheckMemory,
    ];

    /// Number of binary arguments the firmware reads for this command.
    pub fn arg_count(self) -> usize {
        match self {
            Op::Positions | Op::ResetAll | Op::CheckMemory => 0,
            Op::ResetStepper | Op::Microstep => 1,
            _ => 2,
        }
    }

    /// Whether the firmware answers this command (others have no reply).
    pub fn has_reply(self) -> bool {
        matches!(self, Op::Positions | Op::CheckMemory)
    }

    /// Whether the first argument is a stepper index (checked against the board's count).
    pub fn takes_stepper(self) -> bool {
        matches!(
            self,
            Op::Amove | Op::Rmove | Op::ResetStepper | Op::SetStepper | Op::SetAccel | Op::SetSpeed
        )
    }

    /// Whether the first argument is an axis group (checked against the firmware's count).
    pub fn takes_axis(self) -> bool {
        matches!(self, Op::SetMin | Op::SetMax)
    }

    /// Name used in logs and traces.
    pub fn name(self) -> &'static str {
        match self {
            Op::Positions => "positions",
            Op::Amove => "amove",
            Op::Rmove => "rmove",
            Op::ResetAll => "reset_all",
            Op::ResetStepper => "reset_stepper",
            Op::SetStepper => "set_stepper",
            Op::SetAccel => "set_accel",
            Op::SetSpeed => "set_speed",
            Op::SetMin => "set_min",
            Op::SetMax => "set_max",
            Op::Microstep => "microstep",
            Op::CheckMemory => "check_memory",
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_stepper_is_six_on_v2_and_never_reset_all() {
        assert_eq!(Firmware::V2.id(Op::SetStepper), Some(6));
        assert_eq!(Firmware::V2.id(Op::ResetAll), Some(4));
        assert_eq!(Firmware::Tuner.id(Op::SetStepper), Some(6));
    }

    #[test]
    fn v1_numbers_one_higher_from_positions_on() {
        assert_eq!(Firmware::V1.id(Op::Positions), Some(2));
        assert_eq!(Firmware::V1.id(Op::Amove), Some(3));
        assert_eq!(Firmware::V1.id(Op::Rmove), Some(4));
        assert_eq!(Firmware::V1.id(Op::ResetAll), Some(5));
        assert_eq!(Firmware::V1.id(Op::SetStepper), Some(7));
        assert_eq!(Firmware::V1.id(Op::SetMax), Some(11));
        assert_eq!(Firmware::V1.id(Op::CheckMemory), Some(12));
        assert_eq!(Firmware::V1.id(Op::Microstep), None);
    }

    #[test]
    fn ids_are_unique_and_invert() {
        for fw in Firmware::ALL {
            for op in Op::ALL {
                if let Some(id) = fw.id(op) {
                    assert_eq!(fw.op(id), Some(op), "{fw} {op}");
                }
            }
        }
    }

    #[test]
    fn width_bounds() {
        assert!(IntWidth::Two.fits(32767));
        assert!(!IntWidth::Two.fits(32768));
        assert!(IntWidth::Two.fits(-32768));
        assert!(!IntWidth::Two.fits(-32769));
        assert_eq!(IntWidth::Two.from_le(&[0xff, 0xff]), Some(-1));
        assert_eq!(IntWidth::Four.from_le(&[0xff, 0xff]), None);
        assert!(IntWidth::try_from(3).is_err());
    }
}
