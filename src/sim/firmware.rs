//! A byte-exact model of the stepper firmware (CmdMessenger + AccelStepper),
//! without any I/O, so its behaviour can be tested deterministically.
//!
//! What is modelled, from the measurements in `controller-protocol.md` and
//! the same raw byte scripts sent to the real v2 firmware:
//! - the serial receiver ([`Uart`]): bytes reach a 63-byte ring at the line
//!   rate (115 200 baud, about 11.5 bytes/ms); the firmware's loop takes
//!   everything waiting whenever it comes round (CmdMessenger's
//!   `feedinSerialData`) and then executes those messages one after the
//!   other, each costing its loop time ([`LOOP_TIME`], a move its ramp, a
//!   reply its latency and pacing); what arrives while the ring is full is
//!   lost. 60 back-to-back `set_stepper`s therefore lose messages (the real
//!   board starts losing at 16), paced ones do not;
//! - the receiving parser (`processLine`): bytes collect in a 64-byte command
//!   buffer until an unescaped `;`; when it holds 63 bytes it restarts, so at
//!   most 62 bytes before a `;` are ever executed and the bytes after an
//!   overflow are parsed as a new message; the command number is read with C
//!   `atoi`, so noise in front of a request turns it into command 0 (which
//!   does nothing) and the request is lost;
//! - the argument reader (`next`/`split_r`/`findNext`/`unescape`/`readBin`),
//!   emulated on the message's bytes as C strings: an unescaped NUL ends its
//!   argument and the rest of the message (an argument starting with one
//!   reads as 0, later arguments read 0), and a binary argument is read as
//!   `sizeof(T)` bytes from where its field starts — a field shorter than
//!   that gives its own bytes, then the NUL that ended it, then whatever
//!   follows in the buffer (modelled as zeros after the message: a 2-byte
//!   -5 read as a v1 `long` is 65531);
//! - the argument layout of each firmware ([`Firmware::layout`]): v1 reads
//!   the value of amove, rmove, set_stepper, set_accel, set_speed, set_min
//!   and set_max as a 4-byte `long`; every counter is a `long` there but the
//!   positions reply carries only its low `int` bytes;
//! - counters, per-stepper speeds and accelerations, per-axis-group limits;
//!   the carriage firmware (v1, v2) ignores a target outside the limits
//!   silently, the tuner firmware clamps it to its limits and moves there;
//!   unknown commands are ignored silently; v1 moves X by twice the delta
//!   on `rmove` (not on `amove`); v1's set_min/set_max axis groups are
//!   0 = tuners, 1 = X, 2 = Z;
//! - moves block for AccelStepper's ramp ([`crate::protocol::ramp`]); a
//!   reply starts [`REPLY_LATENCY`] after its request and the positions
//!   reply is paced at about 2 ms per stepper.
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
//!   see [`Board::set_sensor_stuck`];
//! - a board with an X (carriage) stepper has the carriage's limit switches:
//!   the home switch reads pressed when the carriage's *physical* position
//!   is at or below the home end (0), the away switch when it is at or above
//!   the away end (the X group's max, 2600 by default), see
//!   [`Board::x_switches`]. Like the strings they belong to the mechanism:
//!   counter writes and resets never move them, so a host that sets the X
//!   counter to X max and drives toward 0 finds the home switch where the
//!   carriage really is. A switch can be forced to one reading
//!   ([`Board::set_x_switch_stuck`]: `Some(false)` is a disconnected
//!   switch, which reads open for ever).
//!
//! Where the real firmware corrupts its own memory (a stepper or axis number
//! outside its arrays), the model does not imitate the damage: it records a
//! [`SafetyViolation`] and leaves its state untouched. Bytes lost in the
//! receiver are not imitated beyond their loss either (the real board's
//! memory is corrupted by bursts of 36 `set_stepper`s): the loss is reported
//! ([`Drained::lost`]) and the simulator records it.

use std::collections::VecDeque;
use std::time::Duration;

use crate::protocol::frame::{needs_escape, CMD_SEP, ESCAPE, FIELD_SEP};
use crate::protocol::ramp::{self, DEFAULT_ACCEL};
use crate::protocol::{Firmware, IntWidth, Op};

/// CmdMessenger's command buffer restarts when it holds this many bytes: a
/// message has at most `RX_BUFFER - 1` = 62 bytes before its `;`.
pub const RX_BUFFER: usize = 63;
/// Bytes the serial receive ring holds (Arduino's 64-byte ring keeps one
/// slot free); more arriving before the firmware drains it are lost.
pub const UART_BUFFER: usize = 63;
/// Time one byte takes on the line at 115 200 baud (10 bits: start, 8, stop).
pub const BYTE_TIME: Duration = Duration::from_nanos(86_806);
/// What the firmware's loop spends on one message without a reply (parse,
/// handler, the rest of its loop), at speed scale 1. Chosen so that, as on
/// the real Mega, 15 back-to-back `set_stepper`s fit and 16 lose bytes.
pub const LOOP_TIME: Duration = Duration::from_micros(1_700);
/// Time from a request to the first byte of its reply (measured 1.5 to
/// 8.5 ms, median 3.5 ms, on the real board), at speed scale 1.
pub const REPLY_LATENCY: Duration = Duration::from_micros(3_500);
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
    /// The limit group of the carriage (X) stepper, whose `rmove` v1 doubles.
    pub x_group: Option<usize>,
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
    /// 100 steps/s); axis groups 0 = X, 1 = Z. v1 (stringdriver-1): tuners
    /// 0-1 (-25000..25000), X 2, Z from 3; axis groups 0 = tuners, 1 = X,
    /// 2 = Z. Tuner: every stepper a tuner (-100000..100000).
    ///
    /// These are the compiled-in values a board comes back with after a
    /// reset. The reference does not give the firmware's own, so they are a
    /// choice: X 500 and Z 100 steps/s (what the reference measured on the
    /// v2 firmware), tuners 100 steps/s — deliberately not hosts.md's 250,
    /// so that a board the host has not given its parameters moves visibly
    /// differently from what the host predicts —, acceleration 10 000.
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
        let v1_tuners = AxisGroup {
            min: -25_000,
            max: 25_000,
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
                    x_group: Some(0),
                }
            }
            Firmware::V1 => {
                let n = steppers.unwrap_or(7).max(1);
                let group_of: Vec<usize> = (0..n)
                    .map(|i| match i {
                        0 | 1 => 0,
                        2 => 1,
                        _ => 2,
                    })
                    .collect();
                Profile {
                    firmware,
                    width: IntWidth::Two,
                    strings: contacts_of(&group_of, 2),
                    groups: vec![v1_tuners, x, z],
                    group_of,
                    x_group: Some(1),
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
                    x_group: None,
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
    /// A move whose target lies outside its axis limits: silently ignored
    /// (carriage firmware).
    IgnoredOutOfLimits {
        /// The refused target.
        target: i64,
    },
    /// A move whose target lies outside its axis limits, clamped to them
    /// and executed (tuner firmware).
    Clamped {
        /// The target asked for.
        requested: i64,
        /// Where the stepper went.
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
    /// When the first reply piece goes out, from the end of the request, at
    /// speed scale 1; the remaining pieces are spread evenly up to `busy`.
    pub reply_after: Duration,
    /// How long the firmware is busy (reads nothing) executing it, at speed
    /// scale 1: its loop time, a move's ramp, a reply's latency and pacing.
    pub busy: Duration,
    /// The motion it made, if it moved a motor.
    pub motion: Option<Motion>,
}

/// A move the firmware made, with the parameters it ran at.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Motion {
    /// Stepper index.
    pub stepper: usize,
    /// Steps turned.
    pub steps: u64,
    /// Its speed then (`set_speed`, or the compiled-in value), steps/s.
    pub speed: f64,
    /// Its acceleration then, steps/s².
    pub accel: f64,
    /// AccelStepper's ramp for it, at speed scale 1 (without the loop time).
    pub ramp: Duration,
}

/// Result of feeding bytes that do not complete a message usefully.
#[derive(Debug, Clone, PartialEq)]
pub enum ParseEvent {
    /// A complete message was executed.
    Message(Executed),
    /// A `;` with nothing before it (a host clearing the parser): no
    /// command runs, the parser is (and stays) empty.
    Empty,
    /// The command buffer filled up ([`RX_BUFFER`] bytes without a `;`) and
    /// restarted: those bytes are gone, what follows is a new message.
    DroppedOverlong {
        /// How many bytes were dropped.
        len: usize,
    },
}

/// What the carriage's two limit switches read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct XSwitchState {
    /// The home switch (X 0) is pressed.
    pub home: bool,
    /// The away switch (X max) is pressed.
    pub away: bool,
}

/// The carriage's limit switches: where they sit and any forced reading.
#[derive(Debug, Clone)]
struct XSwitchModel {
    /// Local index of the X stepper.
    stepper: usize,
    /// Physical position at or below which the home switch is pressed.
    home_at: i64,
    /// Physical position at or above which the away switch is pressed.
    away_at: i64,
    /// Forced readings (home, away).
    stuck: [Option<bool>; 2],
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
    /// The carriage's limit switches, on boards with an X stepper.
    x_switches: Option<XSwitchModel>,
    speeds: Vec<f64>,
    accels: Vec<f64>,
    groups: Vec<AxisGroup>,
    /// CmdMessenger's command buffer (escapes kept, as the firmware keeps them).
    buffer: Vec<u8>,
    /// The previous byte, for escape detection (`CmdlastChar`).
    last: u8,
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
        let x_switches = profile.x_group.and_then(|g| {
            let stepper = profile.group_of.iter().position(|&k| k == g)?;
            Some(XSwitchModel {
                stepper,
                home_at: 0,
                away_at: profile.groups.get(g).map_or(0, |a| i64::from(a.max)),
                stuck: [None, None],
            })
        });
        let mut b = Board {
            x_switches,
            counters: vec![0; n],
            physical: vec![0; n],
            contacts,
            stuck: vec![None; n],
            speeds: vec![0.0; n],
            accels: vec![DEFAULT_ACCEL; n],
            groups: profile.groups.clone(),
            profile,
            buffer: Vec::with_capacity(RX_BUFFER + 1),
            last: 0,
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
        self.accels.iter_mut().for_each(|a| *a = DEFAULT_ACCEL);
        self.buffer.clear();
        self.last = 0;
        self.microstep = 0;
    }

    /// The profile this board plays.
    pub fn profile(&self) -> &Profile {
        &self.profile
    }

    /// Each stepper's speed now, steps/s (`set_speed`, or the compiled-in
    /// value since the last reset).
    pub fn speeds(&self) -> &[f64] {
        &self.speeds
    }

    /// Each stepper's acceleration now, steps/s².
    pub fn accels(&self) -> &[f64] {
        &self.accels
    }

    /// Each axis group's limits now, `(min, max)`, in the firmware's group
    /// order (`set_min`/`set_max`, or the compiled-in values).
    pub fn limits(&self) -> Vec<(i32, i32)> {
        self.groups.iter().map(|g| (g.min, g.max)).collect()
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

    /// What the carriage's limit switches read now (`None`: this board has
    /// no X stepper): a forced reading if one is set, else whether the
    /// carriage is physically at or past that end.
    pub fn x_switches(&self) -> Option<XSwitchState> {
        let m = self.x_switches.as_ref()?;
        let p = self.physical.get(m.stepper).copied().unwrap_or_default();
        Some(XSwitchState {
            home: m.stuck[0].unwrap_or(p <= m.home_at),
            away: m.stuck[1].unwrap_or(p >= m.away_at),
        })
    }

    /// Where the limit switches sit, in physical steps of the X stepper
    /// (a machine whose X travel is not the firmware's default). Ignored on
    /// a board without X.
    pub fn set_x_switch_positions(&mut self, home_at: i64, away_at: i64) {
        if let Some(m) = self.x_switches.as_mut() {
            m.home_at = home_at;
            m.away_at = away_at;
        }
    }

    /// Forces the home (`away` false) or away switch to read `pressed`
    /// whatever the carriage does (`None`: healthy again). `Some(false)` is
    /// a disconnected or broken switch: never pressed.
    pub fn set_x_switch_stuck(&mut self, away: bool, pressed: Option<bool>) {
        if let Some(m) = self.x_switches.as_mut() {
            m.stuck[usize::from(away)] = pressed;
        }
    }

    /// Feeds one received byte (CmdMessenger's `processLine`); returns an
    /// event when a message ends or the command buffer overflows.
    pub fn feed(&mut self, byte: u8) -> Option<ParseEvent> {
        let escaped = self.last == ESCAPE;
        // An escaped escape character escapes nothing after it.
        self.last = if byte == ESCAPE && escaped { 0 } else { byte };
        if byte == CMD_SEP && !escaped {
            let raw = std::mem::take(&mut self.buffer);
            if raw.is_empty() {
                return Some(ParseEvent::Empty); // nothing to execute
            }
            self.last = 0;
            return Some(ParseEvent::Message(self.execute(raw)));
        }
        self.buffer.push(byte);
        if self.buffer.len() >= RX_BUFFER {
            // The buffer restarts; the bytes that follow are a new message.
            let len = self.buffer.len();
            self.buffer.clear();
            return Some(ParseEvent::DroppedOverlong { len });
        }
        None
    }

    fn execute(&mut self, raw: Vec<u8>) -> Executed {
        let mut msg = CmdBuffer::new(&raw);
        let id = msg.read_int();
        let op = u16::try_from(id)
            .ok()
            .and_then(|id| self.profile.firmware.op(id));
        let width = self.profile.width;
        let args: Vec<i32> = match op {
            Some(op) => {
                let layout = self.profile.firmware.layout(op, width);
                (0..layout.len())
                    .map(|i| msg.read_bin(layout.width(i)))
                    .collect()
            }
            None => Vec::new(),
        };
        let mut done = Executed {
            raw,
            id,
            op,
            args: args.clone(),
            outcome: Outcome::Executed,
            reply: Vec::new(),
            reply_after: Duration::ZERO,
            busy: LOOP_TIME,
            motion: None,
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
                done.reply_after = REPLY_LATENCY;
                done.busy = REPLY_LATENCY + REPLY_PACING * n as u32;
                done.reply = pieces;
            }
            Op::CheckMemory => {
                let mut piece = b"12".to_vec();
                piece.push(FIELD_SEP);
                push_escaped_int(&mut piece, width, FREE_MEMORY);
                piece.push(CMD_SEP);
                done.reply = vec![piece];
                done.reply_after = REPLY_LATENCY;
                done.busy = REPLY_LATENCY;
            }
            Op::Amove | Op::Rmove => {
                let current = self.counters[stepper] as i64;
                let group = self.profile.group_of[stepper];
                let requested = if op == Op::Amove {
                    args[1] as i64
                } else if self.profile.firmware.doubles_x_rmove()
                    && Some(group) == self.profile.x_group
                {
                    // v1 doubles an X rmove's delta (its amove is exact).
                    current + 2 * args[1] as i64
                } else {
                    current + args[1] as i64
                };
                let g = self.groups[group];
                let (lo, hi) = (g.min as i64, g.max as i64);
                let target = if (lo..=hi).contains(&requested) {
                    requested
                } else if self.profile.firmware == Firmware::Tuner && lo <= hi {
                    let target = requested.clamp(lo, hi);
                    done.outcome = Outcome::Clamped { requested, target };
                    target
                } else {
                    done.outcome = Outcome::IgnoredOutOfLimits { target: requested };
                    return done;
                };
                let steps = (target - current).unsigned_abs();
                let (speed, accel) = (self.speeds[stepper], self.accels[stepper]);
                let took = ramp::move_time(steps, speed, accel);
                done.busy = LOOP_TIME + took;
                done.motion = Some(Motion {
                    stepper,
                    steps,
                    speed,
                    accel,
                    ramp: took,
                });
                // Counters are longs; limits are ints, so a target fits.
                self.counters[stepper] = target as i32;
                // The motor turns by what the counter says is left to go,
                // wherever the mechanism really is.
                self.physical[stepper] += target - current;
            }
            Op::ResetAll => self.counters.iter_mut().for_each(|c| *c = 0),
            Op::ResetStepper => self.counters[stepper] = 0,
            Op::SetStepper => self.counters[stepper] = args[1],
            // AccelStepper's setMaxSpeed and setAcceleration take the
            // magnitude; setAcceleration(0) is ignored. A speed of 0 (which
            // would leave the motor stepping never) is ignored here too:
            // the host never sends it (speeds are checked >= 1).
            Op::SetSpeed => {
                if args[1] != 0 {
                    self.speeds[stepper] = (args[1] as f64).abs();
                }
            }
            Op::SetAccel => {
                if args[1] != 0 {
                    self.accels[stepper] = (args[1] as f64).abs();
                }
            }
            Op::SetMin => self.groups[stepper].min = args[1],
            Op::SetMax => self.groups[stepper].max = args[1],
            Op::Microstep => self.microstep = args[0],
        }
        done
    }
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

/// The board's serial receiver, in model time (a `Duration` since any fixed
/// start): bytes reach the ring one byte time apart (the line
/// rate), the firmware takes everything waiting when its loop comes round
/// ([`Uart::drain`]), and bytes that arrive while [`UART_BUFFER`] are
/// already waiting are lost.
#[derive(Debug, Clone)]
pub struct Uart {
    byte_time: Duration,
    /// When the line has finished sending the last byte received.
    line_free: Duration,
    /// Bytes on their way, with the time each is complete in the ring.
    pending: VecDeque<(Duration, u8)>,
}

/// What the firmware found in its receive ring.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Drained {
    /// The bytes it got, in order.
    pub bytes: Vec<u8>,
    /// Bytes that arrived while the ring was full: gone.
    pub lost: usize,
}

impl Uart {
    /// A receiver whose line takes `byte_time` per byte ([`BYTE_TIME`] at
    /// 115 200 baud, divided by the simulator's speed scale).
    pub fn new(byte_time: Duration) -> Uart {
        Uart {
            byte_time,
            line_free: Duration::ZERO,
            pending: VecDeque::new(),
        }
    }

    /// The host wrote `bytes` at `now`: they arrive one byte time apart,
    /// after whatever is still on the line.
    pub fn receive(&mut self, now: Duration, bytes: &[u8]) {
        for &b in bytes {
            let at = self.line_free.max(now) + self.byte_time;
            self.line_free = at;
            self.pending.push_back((at, b));
        }
    }

    /// When the next byte still on the line arrives, if any.
    pub fn next_arrival(&self) -> Option<Duration> {
        self.pending.front().map(|(at, _)| *at)
    }

    /// The firmware's loop takes everything that has arrived by `now`. The
    /// ring was last emptied by the previous drain, so of what arrived since
    /// only the first [`UART_BUFFER`] bytes are still there.
    pub fn drain(&mut self, now: Duration) -> Drained {
        let mut out = Drained::default();
        while let Some(&(at, b)) = self.pending.front() {
            if at > now {
                break;
            }
            self.pending.pop_front();
            if out.bytes.len() < UART_BUFFER {
                out.bytes.push(b);
            } else {
                out.lost += 1;
            }
        }
        out
    }

    /// Forgets everything on the line (a reset: the ring is cleared).
    pub fn clear(&mut self) {
        self.pending.clear();
    }
}

/// What [`play`] saw.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Played {
    /// Every parser event, in order.
    pub events: Vec<ParseEvent>,
    /// Bytes lost in the receive ring.
    pub lost: usize,
    /// Model time when the firmware had finished everything.
    pub end: Duration,
}

/// Plays `script` (bytes the host writes, at model times) into `board`
/// through a [`Uart`] of `byte_time` per byte, at speed scale 1: the
/// deterministic form of what the simulator's pseudo-terminal loop does in
/// real time (there the busy periods are slept, here they are added).
pub fn play(board: &mut Board, script: &[(Duration, Vec<u8>)], byte_time: Duration) -> Played {
    let mut uart = Uart::new(byte_time);
    let mut out = Played::default();
    let mut script = script.iter().peekable();
    let mut now = Duration::ZERO;
    // Bounded: every round either consumes script entries, drains bytes or
    // advances to the next arrival; both the script and the line are finite.
    loop {
        while let Some((at, bytes)) = script.next_if(|(at, _)| *at <= now) {
            uart.receive(*at, bytes);
        }
        let drained = uart.drain(now);
        out.lost += drained.lost;
        if drained.bytes.is_empty() {
            let next_write = script.peek().map(|(at, _)| *at);
            match (uart.next_arrival(), next_write) {
                (None, None) => break,
                (a, w) => {
                    now = a.into_iter().chain(w).min().unwrap_or(now).max(now);
                    continue;
                }
            }
        }
        for b in drained.bytes {
            if let Some(event) = board.feed(b).filter(|e| *e != ParseEvent::Empty) {
                if let ParseEvent::Message(done) = &event {
                    // Writes made while the firmware is busy land in the ring.
                    let until = now + done.busy;
                    while let Some((at, bytes)) = script.next_if(|(at, _)| *at <= until) {
                        uart.receive(*at, bytes);
                    }
                    now = until;
                }
                out.events.push(event);
            }
        }
    }
    out.end = now;
    out
}

/// One received message as CmdMessenger reads its arguments: a C string in
/// the command buffer, split in place (`next`, `split_r`, `findNext`),
/// unescaped in place (`unescape`) and read as raw bytes (`readBin`). What
/// lies after the message in the real buffer (older messages) is modelled
/// as zeros.
struct CmdBuffer {
    bytes: Vec<u8>,
    /// Where the next field starts (`nextp`); `None` once the message is done.
    next: Option<usize>,
}

impl CmdBuffer {
    /// Room past the message for reads of up to a `long` past a terminator.
    const SLACK: usize = 8;

    fn new(raw: &[u8]) -> CmdBuffer {
        let mut bytes = raw.to_vec();
        bytes.resize(raw.len() + Self::SLACK, 0);
        CmdBuffer {
            bytes,
            next: Some(0),
        }
    }

    fn at(&self, i: usize) -> u8 {
        self.bytes.get(i).copied().unwrap_or(0)
    }

    fn set(&mut self, i: usize, b: u8) {
        if let Some(slot) = self.bytes.get_mut(i) {
            *slot = b;
        }
    }

    /// `findNext`: length of the field at `i`, up to an unescaped `,` or NUL.
    fn find_next(&self, mut i: usize) -> usize {
        let mut len = 0;
        let mut last = 0u8;
        // Bounded: past the buffer every byte reads as an unescaped NUL.
        loop {
            let c = self.at(i);
            let escaped = last == ESCAPE;
            last = if c == ESCAPE && escaped { 0 } else { c };
            if i >= self.bytes.len() || (!escaped && (c == 0 || c == FIELD_SEP)) {
                return len;
            }
            i += 1;
            len += 1;
        }
    }

    /// `next()`: the start of the next field (NUL-terminated in place), or
    /// `None` when the message has no more (its end, or an unescaped NUL).
    fn next_field(&mut self) -> Option<usize> {
        let mut s = self.next?;
        // Empty fields are skipped, as `split_r` strips leading delimiters.
        while self.find_next(s) == 0 && self.at(s) != 0 {
            s += 1;
        }
        if self.at(s) == 0 {
            self.next = None;
            return None;
        }
        let start = s;
        s += self.find_next(s);
        if self.at(s) != 0 {
            self.set(s, 0);
            s += 1;
        }
        self.next = Some(s);
        Some(start)
    }

    /// `readInt16Arg`: `atoi` of the next field, 0 without one.
    fn read_int(&mut self) -> i32 {
        match self.next_field() {
            Some(start) => {
                let end = (start..self.bytes.len())
                    .find(|&i| self.at(i) == 0)
                    .unwrap_or(self.bytes.len());
                atoi(&self.bytes[start..end])
            }
            None => 0,
        }
    }

    /// `readBinArg<T>` for a `T` of `width`: the field unescaped in place,
    /// then `width` raw bytes from its start, whatever they are; 0 without
    /// a field.
    fn read_bin(&mut self, width: IntWidth) -> i32 {
        let Some(start) = self.next_field() else {
            return 0;
        };
        // unescape: moves the unescaped bytes left and pads with NULs.
        let (mut from, mut to) = (start, start);
        while self.at(from) != 0 {
            if self.at(from) == ESCAPE {
                from += 1;
            }
            let b = self.at(from);
            self.set(to, b);
            to += 1;
            from += 1;
        }
        while self.at(to) != 0 {
            self.set(to, 0);
            to += 1;
        }
        let mut b = [0u8; 4];
        for (k, dst) in b.iter_mut().enumerate().take(width.bytes()) {
            *dst = self.at(start + k);
        }
        match width {
            IntWidth::Two => i16::from_le_bytes([b[0], b[1]]) as i32,
            IntWidth::Four => i32::from_le_bytes(b),
        }
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

    /// `id` with `args`: in `layout`'s argument layout, or every argument at
    /// `width` without one.
    fn encode(layout: Option<Firmware>, width: IntWidth, id: u16, args: &[i32]) -> Vec<u8> {
        let req = Request {
            id,
            args: args.to_vec(),
        };
        match layout {
            Some(fw) => CmdCodec::encode_for(fw, width, &req),
            None => CmdCodec::encode_request(width, &req),
        }
        .expect("encodes")
        .to_vec()
    }

    fn request(board: &Board, op: Op, args: &[i32]) -> Vec<u8> {
        let fw = board.profile().firmware;
        let id = fw.id(op).expect("op exists");
        encode(Some(fw), board.profile().width, id, args)
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
    fn moves_block_for_the_accelstepper_ramp() {
        let mut b = Board::new(Profile::for_firmware(Firmware::V2, None));
        let req = request(&b, Op::Rmove, &[1, -50]);
        let e = executed(send(&mut b, &req));
        let want = LOOP_TIME + ramp::move_time(50, 100.0, DEFAULT_ACCEL);
        assert_eq!(e.busy, want);
        assert!(e.busy >= Duration::from_millis(490), "{:?}", e.busy);
        let req = request(&b, Op::Amove, &[0, 1000]);
        let e = executed(send(&mut b, &req));
        assert!(
            (Duration::from_millis(2030)..Duration::from_millis(2060)).contains(&e.busy),
            "{:?}",
            e.busy
        );
        assert_eq!(&b.counters()[..2], &[1000, -50]);
    }

    #[test]
    fn x_plus_100_takes_about_the_measured_237_ms() {
        let mut b = Board::new(Profile::for_firmware(Firmware::V2, None));
        let req = request(&b, Op::Rmove, &[0, 100]);
        let e = executed(send(&mut b, &req));
        let ms = e.busy.as_secs_f64() * 1000.0;
        // Real firmware: 237 ms; steps / speed alone: 200 ms.
        assert!((225.0..=245.0).contains(&ms), "{ms} ms");
    }

    #[test]
    fn motor_parameters_drive_the_ramp_and_a_reset_forgets_them() {
        let mut b = Board::new(Profile::for_firmware(Firmware::V2, None));
        for (op, args) in [
            (Op::SetSpeed, [1, 250]),
            (Op::SetAccel, [1, 2000]),
            (Op::SetMax, [1, 50]),
            // AccelStepper takes the magnitude of a negative speed.
            (Op::SetSpeed, [2, -40]),
        ] {
            let req = request(&b, op, &args);
            assert_eq!(executed(send(&mut b, &req)).outcome, Outcome::Executed);
        }
        assert_eq!(
            (b.speeds()[1], b.accels()[1], b.speeds()[2]),
            (250.0, 2000.0, 40.0)
        );
        assert_eq!(b.limits(), vec![(0, 2600), (-100, 50)]);
        let req = request(&b, Op::Amove, &[1, 40]);
        let e = executed(send(&mut b, &req));
        let m = e.motion.expect("moved");
        assert_eq!(
            (m.stepper, m.steps, m.speed, m.accel),
            (1, 40, 250.0, 2000.0)
        );
        assert_eq!(e.busy, LOOP_TIME + ramp::move_time(40, 250.0, 2000.0));
        // Past the new max: ignored silently, no motion.
        let req = request(&b, Op::Amove, &[1, 60]);
        let e = executed(send(&mut b, &req));
        assert_eq!(e.outcome, Outcome::IgnoredOutOfLimits { target: 60 });
        assert!(e.motion.is_none());
        b.reset();
        assert_eq!(
            (b.speeds()[1], b.accels()[1], b.speeds()[0]),
            (100.0, DEFAULT_ACCEL, 500.0)
        );
        assert_eq!(b.limits(), vec![(0, 2600), (-100, 100)]);
    }

    #[test]
    fn the_tuner_firmware_reads_four_byte_limits_and_has_one_axis_group() {
        let mut b = Board::new(Profile::for_firmware(Firmware::Tuner, None));
        let req = request(&b, Op::SetMax, &[0, 150_000]);
        executed(send(&mut b, &req));
        assert_eq!(b.limits(), vec![(-100_000, 150_000)]);
        // Axis 1 (the host's encoder refuses it; raw bytes here).
        let id = Firmware::Tuner.id(Op::SetMin).expect("set_min");
        let req = encode(None, IntWidth::Four, id, &[1, 0]);
        let e = executed(send(&mut b, &req));
        assert!(matches!(e.outcome, Outcome::SafetyViolation(_)), "{e:?}");
        assert_eq!(b.limits(), vec![(-100_000, 150_000)], "state untouched");
    }

    #[test]
    fn a_set_accel_changes_the_ramp() {
        let mut b = Board::new(Profile::for_firmware(Firmware::V2, None));
        let req = request(&b, Op::SetAccel, &[0, 1000]);
        executed(send(&mut b, &req));
        let req = request(&b, Op::Rmove, &[0, 100]);
        let e = executed(send(&mut b, &req));
        assert_eq!(e.busy, LOOP_TIME + ramp::move_time(100, 500.0, 1000.0));
    }

    #[test]
    fn sixty_two_bytes_are_accepted_and_sixty_three_restart_the_buffer() {
        let mut b = Board::new(Profile::for_firmware(Firmware::V2, None));
        // `1` and 61 spaces after a field separator: 62 bytes, executed.
        let mut msg = b"1,".to_vec();
        msg.resize(62, b' ');
        msg.push(b';');
        let e = executed(send(&mut b, &msg));
        assert_eq!(e.op, Some(Op::Positions));
        // 63 bytes: the buffer restarts at the 63rd, the `;` ends nothing.
        let mut msg = b"1,".to_vec();
        msg.resize(63, b' ');
        msg.push(b';');
        assert_eq!(
            send(&mut b, &msg),
            vec![ParseEvent::DroppedOverlong { len: 63 }, ParseEvent::Empty]
        );
    }

    #[test]
    fn bytes_after_an_overflow_are_parsed_as_a_new_message() {
        let mut b = Board::new(Profile::for_firmware(Firmware::V2, None));
        let mut bytes = vec![b'x'; 63];
        bytes.extend_from_slice(b"1;");
        let events = send(&mut b, &bytes);
        assert_eq!(events[0], ParseEvent::DroppedOverlong { len: 63 });
        let Some(ParseEvent::Message(e)) = events.get(1) else {
            panic!("{events:?}")
        };
        assert_eq!(e.op, Some(Op::Positions));
        // 70 bytes: the last 7 are a message of their own.
        let mut long = vec![b'7'; 70];
        long.push(b';');
        let events = send(&mut b, &long);
        assert_eq!(events[0], ParseEvent::DroppedOverlong { len: 63 });
        let Some(ParseEvent::Message(e)) = events.get(1) else {
            panic!("{events:?}")
        };
        assert_eq!((e.id, &e.outcome), (7_777_777, &Outcome::UnknownCommand));
    }

    #[test]
    fn an_unescaped_nul_ends_the_argument_and_the_message() {
        let mut b = Board::new(Profile::for_firmware(Firmware::V2, None));
        // set_stepper(2, 5) with the value's bytes 00 05 unescaped: 0.
        b.set_counters(&[0, 0, 9]);
        let e = executed(send(&mut b, b"6,\x02/\x00,\x00\x05;"));
        assert_eq!(e.args, vec![2, 0]);
        assert_eq!(b.counters()[2], 0);
        // An unescaped NUL in the index ends the message: the value reads 0.
        b.set_counters(&[0, 0, 9]);
        let e = executed(send(&mut b, b"6,\x02\x00,/;/\x00;"));
        assert_eq!(e.args, vec![2, 0]);
        // Escaped, the same bytes carry their value.
        let e = executed(send(&mut b, b"6,\x02/\x00,\x05/\x00;"));
        assert_eq!((e.args[1], b.counters()[2]), (5, 5));
    }

    /// `n` set_steppers written at once at model time 0.
    fn burst(b: &Board, n: usize, pace: Duration) -> Vec<(Duration, Vec<u8>)> {
        (0..n)
            .map(|i| {
                let req = request(b, Op::SetStepper, &[(i % 13) as i32, 100 + i as i32]);
                (pace * i as u32, req)
            })
            .collect()
    }

    fn executed_count(p: &Played) -> usize {
        p.events
            .iter()
            .filter(|e| matches!(e, ParseEvent::Message(_)))
            .count()
    }

    #[test]
    fn a_burst_of_sixty_set_steppers_loses_messages() {
        let mut b = Board::new(Profile::for_firmware(Firmware::V2, None));
        let script = burst(&b, 60, Duration::ZERO);
        let p = play(&mut b, &script, BYTE_TIME);
        assert!(p.lost > 0, "{p:?}");
        assert!(executed_count(&p) < 60, "{}", executed_count(&p));
    }

    #[test]
    fn like_the_mega_fifteen_back_to_back_set_steppers_fit_and_sixteen_do_not() {
        for (n, loses) in [(15, false), (16, true)] {
            let mut b = Board::new(Profile::for_firmware(Firmware::V2, None));
            let script = burst(&b, n, Duration::ZERO);
            let p = play(&mut b, &script, BYTE_TIME);
            assert_eq!(p.lost > 0, loses, "{n} set_steppers: {} bytes lost", p.lost);
        }
    }

    #[test]
    fn a_paced_burst_loses_nothing() {
        let mut b = Board::new(Profile::for_firmware(Firmware::V2, None));
        let script = burst(&b, 60, LOOP_TIME + Duration::from_micros(100));
        let p = play(&mut b, &script, BYTE_TIME);
        assert_eq!(p.lost, 0);
        assert_eq!(executed_count(&p), 60);
        for i in 0..13 {
            assert!(b.counters()[i] >= 100, "{:?}", b.counters());
        }
    }

    #[test]
    fn the_tuner_firmware_clamps_and_the_carriage_ignores() {
        let mut t = Board::new(Profile::for_firmware(Firmware::Tuner, None));
        let req = request(&t, Op::Amove, &[2, 150_000]);
        let e = executed(send(&mut t, &req));
        assert_eq!(
            e.outcome,
            Outcome::Clamped {
                requested: 150_000,
                target: 100_000
            }
        );
        assert_eq!((t.counters()[2], t.physical()[2]), (100_000, 100_000));
        let req = request(&t, Op::Rmove, &[2, -250_000]);
        executed(send(&mut t, &req));
        assert_eq!(t.counters()[2], -100_000);
        let mut c = Board::new(Profile::for_firmware(Firmware::V2, None));
        let req = request(&c, Op::Amove, &[0, 2601]);
        let e = executed(send(&mut c, &req));
        assert_eq!(e.outcome, Outcome::IgnoredOutOfLimits { target: 2601 });
    }

    fn v1_request(op: Op, args: &[i32]) -> Vec<u8> {
        let id = Firmware::V1.id(op).expect("op exists");
        encode(Some(Firmware::V1), IntWidth::Two, id, args)
    }

    #[test]
    fn v1_reads_a_two_byte_value_as_a_long_with_zero_upper_bytes() {
        let mut b = Board::new(Profile::for_firmware(Firmware::V1, None));
        // What an old host sent: set_stepper (7) 3, -5 at two bytes each.
        let two = encode(None, IntWidth::Two, 7, &[3, -5]);
        let e = executed(send(&mut b, &two));
        assert_eq!(e.args, vec![3, 65531]);
        assert_eq!(b.counters()[3], 65531);
        // The positions reply carries the low 16 bits: it reads -5.
        let e = executed(send(&mut b, b"2;"));
        let reply = crate::protocol::frame::decode_all(IntWidth::Two, &e.reply.concat());
        let Some(crate::protocol::Inbound::Message(r)) = reply.first() else {
            panic!("{reply:?}")
        };
        assert_eq!(r.ints(IntWidth::Two).expect("ints")[3], -5);
        // amove (3) to -5 at two bytes: 65531, ignored as out of limits.
        let two = encode(None, IntWidth::Two, 3, &[3, -5]);
        let e = executed(send(&mut b, &two));
        assert_eq!(e.outcome, Outcome::IgnoredOutOfLimits { target: 65531 });
        // Sent in v1's layout, both work.
        executed(send(&mut b, &v1_request(Op::SetStepper, &[3, -5])));
        assert_eq!(b.counters()[3], -5);
        executed(send(&mut b, &v1_request(Op::Amove, &[3, -7])));
        assert_eq!(b.counters()[3], -7);
    }

    #[test]
    fn v1_doubles_an_x_rmove_but_not_an_amove_nor_other_steppers() {
        let mut b = Board::new(Profile::for_firmware(Firmware::V1, None));
        executed(send(&mut b, &v1_request(Op::Rmove, &[2, 10])));
        assert_eq!((b.counters()[2], b.physical()[2]), (20, 20));
        executed(send(&mut b, &v1_request(Op::Amove, &[2, 30])));
        assert_eq!(b.counters()[2], 30);
        executed(send(&mut b, &v1_request(Op::Rmove, &[3, 10])));
        executed(send(&mut b, &v1_request(Op::Rmove, &[0, -10])));
        assert_eq!((b.counters()[3], b.counters()[0]), (10, -10));
    }

    #[test]
    fn v1_has_three_axis_groups_tuners_x_and_z() {
        let mut b = Board::new(Profile::for_firmware(Firmware::V1, None));
        // Axis 2 is Z on v1: set its max to 5, then a Z move to 6 is ignored.
        executed(send(&mut b, &v1_request(Op::SetMax, &[2, 5])));
        let e = executed(send(&mut b, &v1_request(Op::Amove, &[4, 6])));
        assert_eq!(e.outcome, Outcome::IgnoredOutOfLimits { target: 6 });
        // Axis 0 is the tuners: -25000..25000 by default.
        let e = executed(send(&mut b, &v1_request(Op::Amove, &[0, 25_001])));
        assert_eq!(e.outcome, Outcome::IgnoredOutOfLimits { target: 25_001 });
        executed(send(&mut b, &v1_request(Op::SetMax, &[0, 30_000])));
        let e = executed(send(&mut b, &v1_request(Op::Amove, &[0, 25_001])));
        assert_eq!(e.outcome, Outcome::Executed);
        // Axis 1 is X.
        executed(send(&mut b, &v1_request(Op::SetMin, &[1, 10])));
        let e = executed(send(&mut b, &v1_request(Op::Amove, &[2, 5])));
        assert_eq!(e.outcome, Outcome::IgnoredOutOfLimits { target: 5 });
        // Axis 3 is past the table: a safety violation, nothing changed.
        // (The encoder refuses it: these bytes are what a careless host sends.)
        let e = executed(send(&mut b, &encode(None, IntWidth::Two, 11, &[3, 5])));
        assert!(matches!(e.outcome, Outcome::SafetyViolation(_)), "{e:?}");
    }

    #[test]
    fn replies_come_after_the_board_latency() {
        let mut b = Board::new(Profile::for_firmware(Firmware::V2, None));
        let e = executed(send(&mut b, b"1;"));
        assert_eq!(e.reply_after, REPLY_LATENCY);
        assert_eq!(e.busy, REPLY_LATENCY + REPLY_PACING * 13);
        let e = executed(send(&mut b, b"12;"));
        assert_eq!((e.reply_after, e.busy), (REPLY_LATENCY, REPLY_LATENCY));
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
    fn x_switches_follow_the_carriage_not_its_counter() {
        let mut b = Board::new(Profile::for_firmware(Firmware::V2, None));
        // Power-up: carriage at 0, on the home switch.
        assert_eq!(
            b.x_switches(),
            Some(XSwitchState {
                home: true,
                away: false
            })
        );
        let req = request(&b, Op::Amove, &[0, 100]);
        executed(send(&mut b, &req));
        assert_eq!(b.x_switches(), Some(XSwitchState::default()));
        // The counter set to X max moves no switch: the carriage is at 100.
        let req = request(&b, Op::SetStepper, &[0, 2600]);
        executed(send(&mut b, &req));
        assert_eq!(b.x_switches(), Some(XSwitchState::default()));
        // Down by 100 from the counter's 2600: the carriage reaches 0.
        let req = request(&b, Op::Amove, &[0, 2500]);
        executed(send(&mut b, &req));
        assert_eq!(b.physical()[0], 0);
        assert!(b.x_switches().is_some_and(|s| s.home && !s.away));
        b.set_physical(&[2600]);
        assert!(b.x_switches().is_some_and(|s| !s.home && s.away));
        // A disconnected away switch never reads pressed; healthy again.
        b.set_x_switch_stuck(true, Some(false));
        assert_eq!(b.x_switches(), Some(XSwitchState::default()));
        b.set_x_switch_stuck(true, None);
        b.set_x_switch_positions(0, 3000);
        assert_eq!(b.x_switches(), Some(XSwitchState::default()));
        // v1 has X at 2; the tuner board has no carriage.
        let mut v1 = Board::new(Profile::for_firmware(Firmware::V1, None));
        v1.set_physical(&[5000, 5000, -3]);
        assert!(v1.x_switches().is_some_and(|s| s.home && !s.away));
        let t = Board::new(Profile::for_firmware(Firmware::Tuner, None));
        assert_eq!(t.x_switches(), None);
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
