//! A byte-exact model of the stepper firmware (CmdMessenger + AccelStepper),
//! without any I/O, so its behaviour can be tested deterministically.
//!
//! What is modelled, from the measurements in `controller-protocol.md`:
//! - the receiving parser: bytes collect until an unescaped `;`; an unescaped
//!   NUL is dropped; a message longer than the 63-byte buffer is dropped whole;
//!   the command number is read with C `atoi`, so noise in front of a request
//!   turns it into command 0 (which does nothing) and the request is lost;
//! - binary arguments read at the board's int width (missing bytes read as 0,
//!   extra bytes ignored);
//! - counters, per-stepper speeds, per-axis-group limits; targets outside the
//!   limits are ignored silently; unknown commands are ignored silently;
//! - moves block for `steps / speed`; the positions reply is paced at about
//!   2 ms per stepper.
//!
//! Beside the firmware, the model keeps the mechanism it drives, because the
//! counters are not the truth (`controller-protocol.md`: "positions are the
//! firmware's counters, not measured positions"):
//! - every stepper has a *physical* position, which only a move changes: an
//!   executed amove/rmove turns the motor by `target - counter` steps, so the
//!   physical position follows the counter by the same amount. `set_stepper`,
//!   `reset_stepper`, `reset_all` and a reset (port opened, brown-out) change
//!   the counters only, which is exactly how counters come to disagree with
//!   the mechanism. Physical positions start equal to the counters (0). The
//!   mechanism arrives at once while the firmware stays deaf for the move's
//!   duration, so a sensor read during a move already sees where it ends (a
//!   host reads after the move is confirmed anyway);
//! - each Z stepper has a string at a *contact* position (physical steps,
//!   [`Profile::strings`]); its touch sensor reads touching when the physical
//!   position is at or below the contact (lower is toward the string, as
//!   `z_down_step < 0`). The default contact is 0, so a freshly started model
//!   has every Z stepper touching its string. X and tuner steppers have no
//!   string and no sensor;
//! - the limits stay those of the firmware, applied to the *counter* target:
//!   the firmware knows nothing of the physical position, so with a wrong
//!   counter it will happily drive the mechanism past where it should stop;
//! - a sensor can be forced to one reading (a stuck or disconnected switch),
//!   see [`Board::set_sensor_stuck`].
//!
//! Where the real firmware corrupts its own memory (a stepper or axis number
//! outside its arrays), the model does not imitate the damage: it records a
//! [`SafetyViolation`] and leaves its state untouched.

use std::time::Duration;

use crate::protocol::frame::{needs_escape, CMD_SEP, ESCAPE, FIELD_SEP};
use crate::protocol::{Firmware, IntWidth, Op};

/// Size of the firmware's receive buffer (a longer message is dropped whole).
pub const RX_BUFFER: usize = 63;
/// Free RAM the model reports to `check_memory` (a typical Mega figure).
pub const FREE_MEMORY: i32 = 5623;
/// Delay between the pieces of a positions reply, per stepper, at speed scale 1.
pub const REPLY_PACING: Duration = Duration::from_millis(2);

/// One limit group (`set_min` / `set_max` axis).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AxisGroup {
    /// Lower limit of targets.
    pub min: i32,
    /// Upper limit of targets.
    pub max: i32,
    /// Default speed of this group's steppers, steps/s.
    pub speed: f64,
}

/// The board a simulator plays: firmware, width, stepper count and axes.
#[derive(Debug, Clone, PartialEq)]
pub struct Profile {
    /// Command table.
    pub firmware: Firmware,
    /// Width of `int`.
    pub width: IntWidth,
    /// Limit groups; the first `firmware.axis_count()` are reachable by set_min/set_max.
    pub groups: Vec<AxisGroup>,
    /// Limit group of each stepper.
    pub group_of: Vec<usize>,
    /// Contact position of each stepper's string, in physical steps: the
    /// touch sensor reads touching when the physical position is at or below
    /// it. `None` for steppers without a string (X, tuners), whose sensor
    /// never reads touching.
    pub strings: Vec<Option<i64>>,
}

impl Profile {
    /// The board each firmware runs on in service (hosts.md), with `steppers`
    /// overriding the count (`None`: 13 for v2, 7 for v1, 6 for tuner).
    ///
    /// v2: stepper 0 is X (0..2600, 500 steps/s), the rest Z (-100..100,
    /// 100 steps/s). v1 (stringdriver-1): tuners 0-1, X 2, Z from 3. Tuner:
    /// every stepper a tuner. Tuner limits and speed are not documented for the
    /// firmware; the model uses -100000..100000 at 100 steps/s.
    pub fn for_firmware(firmware: Firmware, steppers: Option<usize>) -> Profile {
        let x = AxisGroup {
            min: 0,
            max: 2600,
            speed: 500.0,
        };
        let z = AxisGroup {
            min: -100,
            max: 100,
            speed: 100.0,
        };
        let t = AxisGroup {
            min: -100_000,
            max: 100_000,
            speed: 100.0,
        };
        match firmware {
            Firmware::V2 => {
                let n = steppers.unwrap_or(13).max(1);
                let group_of: Vec<usize> = (0..n).map(|i| usize::from(i != 0)).collect();
                Profile {
                    firmware,
                    width: IntWidth::Two,
                    strings: contacts_of(&group_of, 1),
                    groups: vec![x, z],
                    group_of,
                }
            }
            Firmware::V1 => {
                let n = steppers.unwrap_or(7).max(1);
                let group_of: Vec<usize> = (0..n)
                    .map(|i| match i {
                        0 | 1 => 2,
                        2 => 0,
                        _ => 1,
                    })
                    .collect();
                Profile {
                    firmware,
                    width: IntWidth::Two,
                    strings: contacts_of(&group_of, 1),
                    groups: vec![x, z, t],
                    group_of,
                }
            }
            Firmware::Tuner => {
                let n = steppers.unwrap_or(6).max(1);
                Profile {
                    firmware,
                    width: IntWidth::Four,
                    groups: vec![t],
                    group_of: vec![0; n],
                    strings: vec![None; n],
                }
            }
        }
    }

    /// Number of steppers.
    pub fn steppers(&self) -> usize {
        self.group_of.len()
    }
}

/// The default string contacts: physical 0 for every stepper of limit group
/// `z_group`, no string for the others.
fn contacts_of(group_of: &[usize], z_group: usize) -> Vec<Option<i64>> {
    group_of
        .iter()
        .map(|&g| (g == z_group).then_some(0))
        .collect()
}

/// What the model did with one complete message.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Executed as the firmware would.
    Executed,
    /// A move whose target lies outside its axis limits: silently ignored.
    IgnoredOutOfLimits {
        /// The refused target.
        target: i64,
    },
    /// A command number the firmware does not have: silently ignored.
    UnknownCommand,
    /// A stepper or axis index past the firmware's arrays: not executed, recorded.
    SafetyViolation(String),
}

/// A message the host sent that would have damaged the real firmware's state.
#[derive(Debug, Clone, PartialEq)]
pub struct SafetyViolation {
    /// The raw message as received (escapes included, without the `;`).
    pub raw: Vec<u8>,
    /// What was wrong.
    pub detail: String,
}

/// The result of executing one message.
#[derive(Debug, Clone, PartialEq)]
pub struct Executed {
    /// The raw message (escapes included, without the `;`).
    pub raw: Vec<u8>,
    /// Command number as `atoi` read it.
    pub id: i32,
    /// Meaning of the number on this firmware.
    pub op: Option<Op>,
    /// Binary arguments as the firmware read them.
    pub args: Vec<i32>,
    /// What happened.
    pub outcome: Outcome,
    /// Reply bytes, in the pieces the firmware writes with pacing in between.
    pub reply: Vec<Vec<u8>>,
    /// How long the firmware is busy (deaf) executing it, at speed scale 1.
    pub busy: Duration,
}

/// Result of feeding bytes that do not complete a message usefully.
#[derive(Debug, Clone, PartialEq)]
pub enum ParseEvent {
    /// A complete message was executed.
    Message(Executed),
    /// A message over the buffer size was dropped whole.
    DroppedOverlong {
        /// Its length.
        len: usize,
    },
}

/// The firmware state, and the mechanism it drives (physical positions,
/// string contacts, touch sensors).
#[derive(Debug, Clone)]
pub struct Board {
    profile: Profile,
    counters: Vec<i32>,
    /// Where the motors really are; only moves change it.
    physical: Vec<i64>,
    /// String contact of each stepper (physical steps), `None` without a string.
    contacts: Vec<Option<i64>>,
    /// Sensor readings forced by a test (a stuck switch), `None` when healthy.
    stuck: Vec<Option<bool>>,
    speeds: Vec<f64>,
    groups: Vec<AxisGroup>,
    buffer: Vec<u8>,
    escaped: bool,
    overlong: usize,
    microstep: i32,
}

impl Board {
    /// A freshly reset board.
    pub fn new(profile: Profile) -> Board {
        let n = profile.steppers();
        // A profile built by hand may have fewer contacts than steppers: the
        // missing ones have no string rather than indexing past the list.
        let contacts = (0..n)
            .map(|i| profile.strings.get(i).copied().flatten())
            .collect();
        let mut b = Board {
            counters: vec![0; n],
            physical: vec![0; n],
            contacts,
            stuck: vec![None; n],
            speeds: vec![0.0; n],
            groups: profile.groups.clone(),
            profile,
            buffer: Vec::with_capacity(RX_BUFFER + 1),
            escaped: false,
            overlong: 0,
            microstep: 0,
        };
        b.reset();
        b
    }

    /// What a power-up does: counters to 0, settings to their defaults, parser
    /// empty. The mechanism does not move: physical positions, contacts and
    /// sensor faults stay as they are.
    pub fn reset(&mut self) {
        self.counters.iter_mut().for_each(|c| *c = 0);
        self.groups = self.profile.groups.clone();
        for (i, s) in self.speeds.iter_mut().enumerate() {
            *s = self.groups[self.profile.group_of[i]].speed;
        }
        self.buffer.clear();
        self.escaped = false;
        self.overlong = 0;
        self.microstep = 0;
    }

    /// The profile this board plays.
    pub fn profile(&self) -> &Profile {
        &self.profile
    }

    /// The current counters.
    pub fn counters(&self) -> &[i32] {
        &self.counters
    }

    /// Sets counters directly (test set-up), without motion: the physical
    /// positions stay, as after `set_stepper`. Use [`Board::set_physical`]
    /// too to model steppers moved by hand.
    pub fn set_counters(&mut self, values: &[i32]) {
        for (c, v) in self.counters.iter_mut().zip(values) {
            *c = *v;
        }
    }

    /// The physical positions of the motors, in steps.
    pub fn physical(&self) -> &[i64] {
        &self.physical
    }

    /// Puts the motors somewhere else without the firmware knowing (moved by
    /// hand, lost steps); counters stay. Extra values are ignored, missing
    /// ones leave their stepper where it is.
    pub fn set_physical(&mut self, values: &[i64]) {
        for (p, v) in self.physical.iter_mut().zip(values) {
            *p = *v;
        }
    }

    /// The string contact position of every stepper (`None`: no string).
    pub fn contacts(&self) -> &[Option<i64>] {
        &self.contacts
    }

    /// Moves the strings (a string restrung, a mechanism rebuilt). Extra
    /// values are ignored, missing ones leave their stepper's contact as it is.
    pub fn set_contacts(&mut self, contacts: &[Option<i64>]) {
        for (c, v) in self.contacts.iter_mut().zip(contacts) {
            *c = *v;
        }
    }

    /// What the touch sensor of `stepper` reads: a stuck reading if one is
    /// forced, else whether the mechanism is at or below its string's
    /// contact. `false` for a stepper without a string or past the board.
    pub fn touching(&self, stepper: usize) -> bool {
        if let Some(Some(forced)) = self.stuck.get(stepper) {
            return *forced;
        }
        match (self.physical.get(stepper), self.contacts.get(stepper)) {
            (Some(&p), Some(&Some(contact))) => p <= contact,
            _ => false,
        }
    }

    /// Every stepper's sensor reading, in index order (see [`Board::touching`]).
    pub fn touching_all(&self) -> Vec<bool> {
        (0..self.physical.len()).map(|s| self.touching(s)).collect()
    }

    /// Forces the sensor of `stepper` to read `touching` whatever the
    /// mechanism does (`None`: healthy again). A stepper past the board is
    /// ignored.
    pub fn set_sensor_stuck(&mut self, stepper: usize, touching: Option<bool>) {
        if let Some(s) = self.stuck.get_mut(stepper) {
            *s = touching;
        }
    }

    /// Feeds one received byte; returns an event when a message ends.
    pub fn feed(&mut self, byte: u8) -> Option<ParseEvent> {
        if self.escaped {
            self.escaped = false;
            return self.push(ESCAPE, byte);
        }
        match byte {
            ESCAPE => {
                self.escaped = true;
                None
            }
            CMD_SEP => {
                let raw = std::mem::take(&mut self.buffer);
                let overlong = std::mem::take(&mut self.overlong);
                if overlong > 0 {
                    return Some(ParseEvent::DroppedOverlong { len: overlong });
                }
                Some(ParseEvent::Message(self.execute(raw)))
            }
            // CmdMessenger skips NUL bytes that are not escaped.
            0 => None,
            b => self.push_one(b),
        }
    }

    fn push(&mut self, escape: u8, byte: u8) -> Option<ParseEvent> {
        self.push_one(escape);
        self.push_one(byte)
    }

    fn push_one(&mut self, byte: u8) -> Option<ParseEvent> {
        if self.overlong > 0 {
            self.overlong += 1;
        } else if self.buffer.len() >= RX_BUFFER {
            self.overlong = self.buffer.len() + 1;
            self.buffer.clear();
        } else {
            self.buffer.push(byte);
        }
        None
    }

    fn execute(&mut self, raw: Vec<u8>) -> Executed {
        let fields = split_fields(&raw);
        let id = atoi(fields.first().map(Vec::as_slice).unwrap_or(&[]));
        let op = u16::try_from(id)
            .ok()
            .and_then(|id| self.profile.firmware.op(id));
        let width = self.profile.width;
        let args: Vec<i32> = (0..op.map_or(0, Op::arg_count))
            .map(|i| read_bin_arg(width, fields.get(i + 1).map(Vec::as_slice)))
            .collect();
        let mut done = Executed {
            raw,
            id,
            op,
            args: args.clone(),
            outcome: Outcome::Executed,
            reply: Vec::new(),
            busy: Duration::ZERO,
        };
        let Some(op) = op else {
            done.outcome = Outcome::UnknownCommand;
            return done;
        };
        let n = self.counters.len();
        if op.takes_stepper() && !(0..n as i64).contains(&(args[0] as i64)) {
            done.outcome = Outcome::SafetyViolation(format!(
                "{op} with stepper {} on a board of {n} steppers (the real firmware writes past its arrays)",
                args[0]
            ));
            return done;
        }
        let axes = self.profile.firmware.axis_count() as i32;
        if op.takes_axis() && !(0..axes).contains(&args[0]) {
            done.outcome = Outcome::SafetyViolation(format!(
                "{op} with axis {} on a firmware of {axes} axis groups (the real firmware writes past its arrays)",
                args[0]
            ));
            return done;
        }
        let stepper = args.first().copied().unwrap_or(0).max(0) as usize;
        match op {
            Op::Positions => {
                let head = self.profile.firmware.id(Op::Positions).unwrap_or(1);
                let mut first = head.to_string().into_bytes();
                let mut pieces = Vec::with_capacity(n + 1);
                for (i, c) in self.counters.iter().enumerate() {
                    let mut piece = if i == 0 {
                        std::mem::take(&mut first)
                    } else {
                        Vec::new()
                    };
                    piece.push(FIELD_SEP);
                    push_escaped_int(&mut piece, width, *c);
                    pieces.push(piece);
                }
                pieces.push(vec![CMD_SEP]);
                done.busy = REPLY_PACING * n as u32;
                done.reply = pieces;
            }
            Op::CheckMemory => {
                let mut piece = b"12".to_vec();
                piece.push(FIELD_SEP);
                push_escaped_int(&mut piece, width, FREE_MEMORY);
                piece.push(CMD_SEP);
                done.reply = vec![piece];
            }
            Op::Amove | Op::Rmove => {
                let current = self.counters[stepper] as i64;
                let target = if op == Op::Amove {
                    args[1] as i64
                } else {
                    current + args[1] as i64
                };
                let g = self.groups[self.profile.group_of[stepper]];
                if target < g.min as i64 || target > g.max as i64 {
                    done.outcome = Outcome::IgnoredOutOfLimits { target };
                    return done;
                }
                let steps = (target - current).unsigned_abs() as f64;
                let speed = self.speeds[stepper].max(1.0);
                done.busy = Duration::from_secs_f64(steps / speed);
                self.counters[stepper] = target as i32;
                // The motor turns by what the counter says is left to go,
                // wherever the mechanism really is.
                self.physical[stepper] += target - current;
            }
            Op::ResetAll => self.counters.iter_mut().for_each(|c| *c = 0),
            Op::ResetStepper => self.counters[stepper] = 0,
            Op::SetStepper => self.counters[stepper] = args[1],
            Op::SetSpeed => {
                if args[1] > 0 {
                    self.speeds[stepper] = args[1] as f64;
                }
            }
            Op::SetAccel => {}
            Op::SetMin => self.groups[stepper].min = args[1],
            Op::SetMax => self.groups[stepper].max = args[1],
            Op::Microstep => self.microstep = args[0],
        }
        done
    }
}

/// Splits a raw message on unescaped `,`, removing escapes.
fn split_fields(raw: &[u8]) -> Vec<Vec<u8>> {
    let mut fields = vec![Vec::new()];
    let mut escaped = false;
    for &b in raw {
        let last = fields.len() - 1;
        if escaped {
            fields[last].push(b);
            escaped = false;
        } else if b == ESCAPE {
            escaped = true;
        } else if b == FIELD_SEP {
            fields.push(Vec::new());
        } else {
            fields[last].push(b);
        }
    }
    fields
}

/// C `atoi`: skips leading white space, reads an optional sign and digits,
/// stops at anything else; garbage first means 0.
pub fn atoi(bytes: &[u8]) -> i32 {
    let mut it = bytes
        .iter()
        .skip_while(|b| b.is_ascii_whitespace())
        .peekable();
    let mut neg = false;
    if let Some(&&s) = it.peek() {
        if s == b'-' || s == b'+' {
            neg = s == b'-';
            it.next();
        }
    }
    let mut v: i64 = 0;
    for &b in it {
        if !b.is_ascii_digit() {
            break;
        }
        v = (v * 10 + (b - b'0') as i64).min(i32::MAX as i64 + 1);
    }
    let v = if neg { -v } else { v };
    v.clamp(i32::MIN as i64, i32::MAX as i64) as i32
}

/// `readBinArg<int>`: the first `width` bytes of the field, missing ones 0.
fn read_bin_arg(width: IntWidth, field: Option<&[u8]>) -> i32 {
    let mut b = [0u8; 4];
    if let Some(f) = field {
        for (dst, src) in b.iter_mut().zip(f.iter().take(width.bytes())) {
            *dst = *src;
        }
    }
    match width {
        IntWidth::Two => i16::from_le_bytes([b[0], b[1]]) as i32,
        IntWidth::Four => i32::from_le_bytes(b),
    }
}

/// Appends `value` as an escaped binary int, as `sendCmdBinArg` does.
fn push_escaped_int(out: &mut Vec<u8>, width: IntWidth, value: i32) {
    for &b in &value.to_le_bytes()[..width.bytes()] {
        if needs_escape(b) {
            out.push(ESCAPE);
        }
        out.push(b);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{CmdCodec, Request};

    fn send(board: &mut Board, bytes: &[u8]) -> Vec<ParseEvent> {
        bytes.iter().filter_map(|&b| board.feed(b)).collect()
    }

    fn request(board: &Board, op: Op, args: &[i32]) -> Vec<u8> {
        let fw = board.profile().firmware;
        let id = fw.id(op).expect("op exists");
        CmdCodec::encode_request(
            board.profile().width,
            &Request {
                id,
                args: args.to_vec(),
            },
        )
        .expect("encodes")
        .to_vec()
    }

    fn executed(events: Vec<ParseEvent>) -> Executed {
        match events.into_iter().last() {
            Some(ParseEvent::Message(e)) => e,
            other => panic!("no message: {other:?}"),
        }
    }

    #[test]
    fn thirteen_zero_counters_reply_is_67_bytes() {
        let mut b = Board::new(Profile::for_firmware(Firmware::V2, None));
        let e = executed(send(&mut b, b"1;"));
        assert_eq!(e.reply.concat().len(), 67);
        assert_eq!(e.reply.len(), 14);
    }

    #[test]
    fn set_stepper_touches_one_counter() {
        let mut b = Board::new(Profile::for_firmware(Firmware::V2, None));
        let req = request(&b, Op::SetStepper, &[3, 59]);
        executed(send(&mut b, &req));
        let mut want = [0; 13];
        want[3] = 59;
        assert_eq!(b.counters(), &want[..]);
    }

    #[test]
    fn ascii_arguments_are_read_as_binary() {
        let mut b = Board::new(Profile::for_firmware(Firmware::V2, None));
        let e = executed(send(&mut b, b"6,2,100;"));
        // '2' is 0x32 = 50: past the 13 steppers, a violation, nothing changed.
        assert_eq!(e.args[0], 50);
        assert!(matches!(e.outcome, Outcome::SafetyViolation(_)));
        assert_eq!(b.counters(), &[0; 13][..]);
    }

    #[test]
    fn noise_in_front_turns_a_poll_into_command_zero() {
        let mut b = Board::new(Profile::for_firmware(Firmware::V2, None));
        let e = executed(send(&mut b, b"junk1;"));
        assert_eq!(e.id, 0);
        assert!(e.reply.is_empty());
        let e = executed(send(&mut b, b";1;"));
        assert_eq!(e.id, 1);
    }

    #[test]
    fn out_of_limit_moves_are_ignored_silently() {
        let mut b = Board::new(Profile::for_firmware(Firmware::V2, None));
        let req = request(&b, Op::Rmove, &[1, 101]);
        let e = executed(send(&mut b, &req));
        assert_eq!(e.outcome, Outcome::IgnoredOutOfLimits { target: 101 });
        assert_eq!(b.counters()[1], 0);
    }

    #[test]
    fn moves_block_for_steps_over_speed() {
        let mut b = Board::new(Profile::for_firmware(Firmware::V2, None));
        let req = request(&b, Op::Rmove, &[1, -50]);
        let e = executed(send(&mut b, &req));
        assert_eq!(e.busy, Duration::from_millis(500));
        let req = request(&b, Op::Amove, &[0, 1000]);
        let e = executed(send(&mut b, &req));
        assert_eq!(e.busy, Duration::from_secs(2));
        assert_eq!(&b.counters()[..2], &[1000, -50]);
    }

    #[test]
    fn overlong_message_is_dropped_whole() {
        let mut b = Board::new(Profile::for_firmware(Firmware::V2, None));
        let mut long = vec![b'7'; 70];
        long.push(b';');
        assert_eq!(
            send(&mut b, &long),
            vec![ParseEvent::DroppedOverlong { len: 70 }]
        );
        let e = executed(send(&mut b, b"1;"));
        assert_eq!(e.op, Some(Op::Positions));
    }

    #[test]
    fn v1_positions_is_command_two_and_tuner_ints_are_four_bytes() {
        let mut b = Board::new(Profile::for_firmware(Firmware::V1, None));
        let e = executed(send(&mut b, b"2;"));
        assert_eq!(e.reply.concat()[0], b'2');
        let mut t = Board::new(Profile::for_firmware(Firmware::Tuner, None));
        let req = request(&t, Op::SetStepper, &[5, 70_000]);
        executed(send(&mut t, &req));
        assert_eq!(t.counters()[5], 70_000);
    }

    #[test]
    fn moves_move_the_mechanism_and_counter_writes_do_not() {
        let mut b = Board::new(Profile::for_firmware(Firmware::V2, None));
        assert_eq!(b.physical(), &[0; 13][..]);
        let req = request(&b, Op::Rmove, &[1, 10]);
        executed(send(&mut b, &req));
        assert_eq!(b.physical()[1], 10);
        // The counter says 50 now, the motor is still at 10.
        let req = request(&b, Op::SetStepper, &[1, 50]);
        executed(send(&mut b, &req));
        assert_eq!((b.counters()[1], b.physical()[1]), (50, 10));
        // amove to 45 turns the motor by 45 - 50 steps: physical 5.
        let req = request(&b, Op::Amove, &[1, 45]);
        executed(send(&mut b, &req));
        assert_eq!((b.counters()[1], b.physical()[1]), (45, 5));
        let req = request(&b, Op::ResetStepper, &[1]);
        executed(send(&mut b, &req));
        assert_eq!((b.counters()[1], b.physical()[1]), (0, 5));
        b.set_counters(&[7; 13]);
        let req = request(&b, Op::ResetAll, &[]);
        executed(send(&mut b, &req));
        assert_eq!((b.counters()[1], b.physical()[1]), (0, 5));
        b.set_counters(&[7; 13]);
        b.reset();
        assert_eq!((b.counters()[1], b.physical()[1]), (0, 5));
        b.set_physical(&[0, 30]);
        assert_eq!((b.counters()[1], b.physical()[1]), (0, 30));
    }

    #[test]
    fn limits_apply_to_the_counter_not_the_mechanism() {
        let mut b = Board::new(Profile::for_firmware(Firmware::V2, None));
        b.set_physical(&[0, 500]);
        // Counter 0 -> -100 is inside the limits, so the motor goes to 400.
        let req = request(&b, Op::Rmove, &[1, -100]);
        executed(send(&mut b, &req));
        assert_eq!(b.physical()[1], 400);
        // Counter -100 -> -101 is not: nothing moves.
        let req = request(&b, Op::Rmove, &[1, -1]);
        let e = executed(send(&mut b, &req));
        assert_eq!(e.outcome, Outcome::IgnoredOutOfLimits { target: -101 });
        assert_eq!(b.physical()[1], 400);
    }

    #[test]
    fn sensors_read_contact_at_or_below_the_string() {
        let mut b = Board::new(Profile::for_firmware(Firmware::V2, None));
        // Default contact at 0 and every motor at 0: every Z stepper touches.
        let mut want = vec![true; 13];
        want[0] = false;
        assert_eq!(b.touching_all(), want);
        b.set_contacts(&[None, Some(-4)]);
        let req = request(&b, Op::Rmove, &[1, -3]);
        executed(send(&mut b, &req));
        assert!(!b.touching(1));
        let req = request(&b, Op::Rmove, &[1, -1]);
        executed(send(&mut b, &req));
        assert!(b.touching(1));
        b.set_sensor_stuck(1, Some(false));
        assert!(!b.touching(1));
        b.set_sensor_stuck(2, Some(false));
        b.set_sensor_stuck(0, Some(true));
        assert!(b.touching(0), "a stuck switch reads what it is stuck at");
        b.set_sensor_stuck(1, None);
        assert!(b.touching(1));
        assert!(!b.touching(99));
        let t = Board::new(Profile::for_firmware(Firmware::Tuner, None));
        assert_eq!(t.touching_all(), vec![false; 6]);
        let v1 = Board::new(Profile::for_firmware(Firmware::V1, None));
        assert_eq!(
            v1.touching_all(),
            vec![false, false, false, true, true, true, true]
        );
    }

    #[test]
    fn atoi_matches_c() {
        assert_eq!(atoi(b"12"), 12);
        assert_eq!(atoi(b"\r\n 7x"), 7);
        assert_eq!(atoi(b"junk1"), 0);
        assert_eq!(atoi(b"-3"), -3);
        assert_eq!(atoi(b""), 0);
    }
}
