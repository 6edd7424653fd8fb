//! Command tables, argument layouts and integer widths of the three
//! firmwares in service.
//!
//! The numbering of commands is a property of a board's firmware (v1 numbers
//! everything one higher because of its extra `gspeed` command), as is the
//! width of a C `int` (2 bytes on the AVR Mega, 4 on the RP2040 Pico). Both are
//! configured per board; nothing here guesses them.
//!
//! So is the width of each argument ([`Firmware::layout`]): v2 and the tuner
//! firmware read every argument as one `int` of the board; v1 reads the
//! stepper or axis index as an `int` but the value of amove, rmove,
//! set_stepper, set_accel, set_speed, set_min and set_max as a 4-byte `long`.
//! A 2-byte value sent to v1 is read with whatever follows it as its upper
//! bytes (a negative target becomes 65536 + v and is ignored as out of
//! limits; a negative counter is stored as 65536 + v while the positions
//! reply, which carries only an `int`, reads back v). Positions come back as
//! `int`s on every firmware ([`Firmware::counter_width`]), so a counter the
//! reply cannot carry is never caused by this host: see that method.
//!
//! v1 differs in motion too: its X `rmove` moves twice the delta (`amove` is
//! not doubled; the host sends moves as `amove` there), and its set_min /
//! set_max axis groups are 0 = tuners, 1 = carriage X, 2 = coils Z
//! ([`Firmware::axis_count`]).

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

    /// Number of axis groups that `set_min`/`set_max` accept: 0 = X, 1 = Z on
    /// v2; 0 = tuners, 1 = carriage X, 2 = coils Z on v1; one group on the
    /// tuner. A larger axis number corrupts the firmware's memory, so the
    /// host refuses it and the simulator records it as a safety violation.
    pub fn axis_count(self) -> u8 {
        match self {
            Firmware::V2 => 2,
            Firmware::V1 => 3,
            Firmware::Tuner => 1,
        }
    }

    /// The `set_min`/`set_max` axis group of `axis` on this firmware, or
    /// `None` when it has none: v2 0 = X, 1 = Z; v1 0 = tuners, 1 = X,
    /// 2 = Z; tuner 0 = tuners. Always below [`Self::axis_count`].
    pub fn axis_group(self, axis: AxisKind) -> Option<u8> {
        match (self, axis) {
            (Firmware::V2, AxisKind::X) => Some(0),
            (Firmware::V2, AxisKind::Z) => Some(1),
            (Firmware::V1, AxisKind::Tuners) => Some(0),
            (Firmware::V1, AxisKind::X) => Some(1),
            (Firmware::V1, AxisKind::Z) => Some(2),
            (Firmware::Tuner, AxisKind::Tuners) => Some(0),
            _ => None,
        }
    }

    /// The width of every argument of `op` on this firmware, for a board
    /// whose `int` is `int` wide: the argument layout the encoder writes and
    /// the firmware reads. v2 and tuner: every argument one `int`; v1: the
    /// index an `int`, the value of amove, rmove, set_stepper, set_accel,
    /// set_speed, set_min and set_max a 4-byte `long`.
    pub fn layout(self, op: Op, int: IntWidth) -> Layout {
        let value = match (self, op) {
            (
                Firmware::V1,
                Op::Amove
                | Op::Rmove
                | Op::SetStepper
                | Op::SetAccel
                | Op::SetSpeed
                | Op::SetMin
                | Op::SetMax,
            ) => LONG,
            _ => int,
        };
        Layout {
            widths: [int, value],
            len: op.arg_count(),
        }
    }

    /// The width of each counter in the positions reply: the board's `int`
    /// on every firmware, although v1 keeps its counters in `long`s. A v1
    /// counter beyond ±32 767 would read back as its low 16 bits, i.e. as a
    /// different, plausible number: the host could neither confirm it nor
    /// ever know the stepper's position again. So the host never causes one:
    /// a target or counter that does not fit this width is refused before
    /// sending, whatever the width of the argument that carries it.
    pub fn counter_width(self, int: IntWidth) -> IntWidth {
        int
    }

    /// Whether `rmove` on this firmware moves X by twice the delta (v1).
    /// The host sends every v1 move as `amove`, which is not doubled.
    pub fn doubles_x_rmove(self) -> bool {
        self == Firmware::V1
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

/// What an axis group of the firmware moves (`set_min`/`set_max` take
/// the group's number on each firmware, [`Firmware::axis_group`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AxisKind {
    /// The carriage stepper.
    X,
    /// The Z (coil) steppers.
    Z,
    /// The tuning steppers.
    Tuners,
}

impl AxisKind {
    /// Every kind, in the order the configuration lists them.
    pub const ALL: [AxisKind; 3] = [AxisKind::X, AxisKind::Z, AxisKind::Tuners];

    /// Name as written in the configuration and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            AxisKind::X => "x",
            AxisKind::Z => "z",
            AxisKind::Tuners => "tuners",
        }
    }
}

impl fmt::Display for AxisKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for AxisKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        AxisKind::ALL
            .into_iter()
            .find(|a| a.name() == s)
            .ok_or_else(|| format!("unknown axis group `{s}` (expected x, z or tuners)"))
    }
}

/// Width of a C `long` on every board in service (AVR and RP2040 alike).
pub const LONG: IntWidth = IntWidth::Four;

/// The width of each binary argument of one command on one firmware.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    widths: [IntWidth; 2],
    len: usize,
}

impl Layout {
    /// Width of argument `i` (0-based). Arguments past the command's own
    /// count (a host sending too many) take the last width.
    pub fn width(&self, i: usize) -> IntWidth {
        self.widths[i.min(1)]
    }

    /// Number of arguments the firmware reads.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the command reads no argument at all.
    pub fn is_empty(&self) -> bool {
        self.len == 0
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
    fn v1_values_are_longs_and_indices_ints() {
        let l = Firmware::V1.layout(Op::SetStepper, IntWidth::Two);
        assert_eq!((l.width(0), l.width(1), l.len()), (IntWidth::Two, LONG, 2));
        for op in [
            Op::Amove,
            Op::Rmove,
            Op::SetAccel,
            Op::SetSpeed,
            Op::SetMin,
            Op::SetMax,
        ] {
            assert_eq!(
                Firmware::V1.layout(op, IntWidth::Two).width(1),
                LONG,
                "{op}"
            );
            assert_eq!(
                Firmware::V2.layout(op, IntWidth::Two).width(1),
                IntWidth::Two
            );
            assert_eq!(
                Firmware::Tuner.layout(op, IntWidth::Four).width(1),
                IntWidth::Four
            );
        }
        assert_eq!(
            Firmware::V1
                .layout(Op::ResetStepper, IntWidth::Two)
                .width(0),
            IntWidth::Two
        );
        assert_eq!(Firmware::V1.counter_width(IntWidth::Two), IntWidth::Two);
        assert_eq!(Firmware::V1.axis_count(), 3);
        assert_eq!(Firmware::V2.axis_count(), 2);
    }

    #[test]
    fn axis_groups_follow_each_firmware_table() {
        use AxisKind::*;
        assert_eq!(Firmware::V2.axis_group(X), Some(0));
        assert_eq!(Firmware::V2.axis_group(Z), Some(1));
        assert_eq!(Firmware::V2.axis_group(Tuners), None);
        assert_eq!(Firmware::V1.axis_group(Tuners), Some(0));
        assert_eq!(Firmware::V1.axis_group(X), Some(1));
        assert_eq!(Firmware::V1.axis_group(Z), Some(2));
        assert_eq!(Firmware::Tuner.axis_group(Tuners), Some(0));
        assert_eq!(Firmware::Tuner.axis_group(X), None);
        for fw in Firmware::ALL {
            for a in AxisKind::ALL {
                if let Some(g) = fw.axis_group(a) {
                    assert!(g < fw.axis_count(), "{fw} {a}");
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
