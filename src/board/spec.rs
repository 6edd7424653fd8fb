//! What a driver needs to know about its board.

use std::path::PathBuf;
use std::time::Duration;

use crate::config::{BoardConfig, Config, MotorParams, MotorWrite};
use crate::protocol::ramp::{self, DEFAULT_ACCEL};
use crate::protocol::{Firmware, IntWidth};

/// Everything the driver of one board needs, resolved from the configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct BoardSpec {
    /// Board name, for logs and status.
    pub name: String,
    /// Device path.
    pub port: PathBuf,
    /// Baud rate.
    pub baud: u32,
    /// Width of the firmware's `int`.
    pub width: IntWidth,
    /// Firmware command table.
    pub firmware: Firmware,
    /// Speed of each stepper, steps/s, for a move's expected duration: the
    /// speed in `motor` where it sets one (the driver keeps these equal to
    /// what it last sent, see [`Self::apply_motor`]), else the slowest the
    /// firmware may run at: waiting too long is harmless, polling during a
    /// move is not.
    pub speeds: Vec<f64>,
    /// Acceleration of each stepper, steps/s², for the ramp in a move's
    /// expected duration, kept like `speeds`.
    pub accels: Vec<f64>,
    /// The motor parameters given to the board after every connect and
    /// every detected reset (`set_min`/`set_max` per axis group,
    /// `set_speed`/`set_accel` per stepper); empty: none are sent and moves
    /// need none.
    pub motor: Vec<MotorWrite>,
    /// How long the board is deaf after the port is opened.
    pub reset_wait: Duration,
    /// Quiet time that ends the drain of bootloader noise after the reset wait.
    pub drain_quiet: Duration,
    /// Time between positions polls.
    pub poll_interval: Duration,
    /// How long a reply may take once the board is listening.
    pub reply_timeout: Duration,
    /// Added to every move's expected duration.
    pub move_margin: Duration,
    /// Write the last known counters back after a board reset.
    pub restore_counters_after_reset: bool,
    /// Consecutive failed polls before the board is reported unresponsive.
    pub max_missed_polls: u32,
    /// First delay before reopening a vanished port.
    pub reconnect_initial: Duration,
    /// Longest delay between attempts to reopen.
    pub reconnect_max: Duration,
    /// Longest delay between probes (one `;` and one poll) of a board that
    /// stopped answering; the delay doubles from `poll_interval` up to this.
    pub busy_probe_max: Duration,
}

impl BoardSpec {
    /// Number of steppers on the board.
    pub fn steppers(&self) -> usize {
        self.speeds.len()
    }

    /// A spec with the defaults for everything but the identity of the board.
    pub fn new(
        name: &str,
        port: PathBuf,
        firmware: Firmware,
        width: IntWidth,
        speeds: Vec<f64>,
    ) -> BoardSpec {
        BoardSpec {
            name: name.to_string(),
            port,
            baud: 115_200,
            width,
            firmware,
            accels: vec![DEFAULT_ACCEL; speeds.len()],
            speeds,
            motor: Vec::new(),
            reset_wait: Duration::from_secs(2),
            drain_quiet: Duration::from_millis(50),
            poll_interval: Duration::from_millis(500),
            reply_timeout: Duration::from_secs(1),
            move_margin: Duration::from_millis(250),
            restore_counters_after_reset: true,
            max_missed_polls: 3,
            reconnect_initial: Duration::from_millis(500),
            reconnect_max: Duration::from_secs(30),
            busy_probe_max: Duration::from_secs(30),
        }
    }

    /// The spec of board `index` of `config`, with the file's motor parameters.
    pub fn from_config(config: &Config, index: usize) -> Option<BoardSpec> {
        BoardSpec::from_config_with(config, &config.motor, index)
    }

    /// The spec of board `index` of `config` with motor parameters `motor`
    /// (the file's, or run-time changes kept across a restart).
    pub fn from_config_with(
        config: &Config,
        motor: &MotorParams,
        index: usize,
    ) -> Option<BoardSpec> {
        let b: &BoardConfig = config.boards.get(index)?;
        let layout = &config.layout;
        let total = layout.total_steppers();
        // A stepper given no speed keeps the board's own: assume the slowest
        // configured (a longer wait is harmless).
        let slowest = |f: &dyn Fn(usize) -> Option<i32>| {
            (0..total).filter_map(f).min().map_or(1.0, |v| v as f64)
        };
        let slow_speed = slowest(&|g| motor.speed_of(layout, g));
        let low_accel = slowest(&|g| motor.accel_of(layout, g));
        let globals: Vec<usize> = (0..b.steppers).map(|l| layout.global(index, l)).collect();
        let speeds = globals
            .iter()
            .map(|&g| motor.speed_of(layout, g).map_or(slow_speed, f64::from))
            .collect();
        let mut spec = BoardSpec::new(&b.name, b.port.clone(), b.firmware, b.int_bytes, speeds);
        spec.accels = globals
            .iter()
            .map(|&g| motor.accel_of(layout, g).map_or(low_accel, f64::from))
            .collect();
        spec.motor = config.motor_writes(motor, index);
        spec.baud = b.baud;
        spec.reset_wait = b.reset_wait;
        spec.poll_interval = b.poll_interval;
        spec.reply_timeout = b.reply_timeout;
        spec.move_margin = b.move_margin;
        spec.restore_counters_after_reset = b.restore_counters_after_reset;
        Some(spec)
    }

    /// Takes the speeds and accelerations of `writes` as the board's: call
    /// once they were sent.
    pub fn apply_motor(&mut self, writes: &[MotorWrite]) {
        for w in writes {
            let slot = match w.op {
                crate::protocol::Op::SetSpeed => self.speeds.get_mut(w.index),
                crate::protocol::Op::SetAccel => self.accels.get_mut(w.index),
                _ => None,
            };
            if let Some(s) = slot {
                *s = f64::from(w.value);
            }
        }
    }

    /// How long a move of `steps` on `stepper` is expected to take, margin
    /// included: AccelStepper's ramp at the stepper's speed and acceleration
    /// ([`ramp::move_time`]: about `steps / speed + speed / accel` for a long
    /// move), 10 % on top for the firmware's loop and a clock that runs
    /// slow, then `move_margin`.
    pub fn move_duration(&self, stepper: usize, steps: u64) -> Duration {
        let speed = self
            .speeds
            .get(stepper)
            .copied()
            .filter(|s| *s > 0.0)
            .unwrap_or(1.0);
        let accel = self
            .accels
            .get(stepper)
            .copied()
            .filter(|a| *a > 0.0)
            .unwrap_or(DEFAULT_ACCEL);
        ramp::move_time(steps, speed, accel).mul_f64(1.1) + self.move_margin
    }
}
