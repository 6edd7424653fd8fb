//! The touch sensors: one per Z stepper, "touching" when the mechanism
//! contacts its string (`operations.md`). bump_check, z_calibrate and
//! z_adjust read them once per move cycle.
//!
//! [`TouchSensors`] is the one interface; [`from_config`] picks its backend
//! from `[sensors]`:
//! - `none` ([`NoSensors`]): every read fails with [`SensorError::Disabled`],
//!   so an operation that needs the sensors refuses to run instead of
//!   guessing;
//! - `simulated` ([`SimulatedSensors`]): reads the simulator's model of the
//!   mechanism, where only moves change the physical position, never counter
//!   writes (see [`crate::sim::firmware`]); the simulators run in this
//!   process (the demo, tests) or in others, which serve their readings on
//!   the touch sockets of `sensors.simulator_sockets` ([`crate::sim::touch`]);
//! - `gpio` (`GpioSensors`, with the `gpio` feature): the host's GPIO
//!   character device, one line per Z stepper ([`GpioLineMap`]).
//!
//! Steppers are named by their *global* index (carriage board first, then
//! the tuner board, as in [`Layout::locate`]); only Z steppers have a sensor.
//!
//! The same backends read the carriage's X limit switches, where the machine
//! has them ([`TouchSensors::x_switch`]; `reference/hosts.md`, "X limit
//! switches"): one home switch at X 0 and one away switch at X max, or one
//! switch pressed at both ends. They are wired like the touch sensors
//! (contacts to ground, pull-up, active low), so on GPIO they share the
//! sensors' chip, bias and active level, and all the lines are requested
//! together by one owner.

mod gpio;
mod simulated;
mod socket;
pub mod watch;

use std::path::PathBuf;

use crate::config::{Config, Layout, SensorsConfig, XSwitchWiring};

/// An end of the X travel, where a limit switch sits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XEnd {
    /// X 0.
    Home,
    /// X max.
    Away,
}

impl std::fmt::Display for XEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            XEnd::Home => "home",
            XEnd::Away => "away",
        })
    }
}

#[cfg(feature = "gpio")]
pub use gpio::KernelLines;
pub use gpio::{
    find_chip, ChipInfo, GpioLineMap, GpioSensors, LineLevels, LineSource, CONSUMER,
    PI_HEADER_LABELS,
};
pub use simulated::{SimulatedReaders, SimulatedSensors, SwitchReader, TouchReader};
pub use socket::READ_TIMEOUT as SOCKET_READ_TIMEOUT;
pub use watch::{TouchState, TouchStates, XSwitchReading, WATCH_PERIOD};

/// Reads the touch sensor of a Z stepper.
///
/// Implementations are shared between tasks, so reads take `&self`; a read
/// is quick (a GPIO ioctl, a lock, or a round trip to a simulator's touch
/// socket bounded by [`SOCKET_READ_TIMEOUT`]) and does not wait on the boards.
pub trait TouchSensors: Send + Sync {
    /// Whether the mechanism of stepper `stepper` (global index) touches its
    /// string now. [`SensorError::NoSensor`] for a stepper that is not a Z
    /// stepper.
    fn read(&self, stepper: usize) -> Result<bool, SensorError>;

    /// One line saying what is read, for logs and the status ("GPIO
    /// /dev/gpiochip0, 12 lines, touching reads high").
    fn describe(&self) -> String;

    /// How the X limit switches are wired; [`XSwitchWiring::None`] (the
    /// default) for a backend or machine without them.
    fn x_switch_wiring(&self) -> XSwitchWiring {
        XSwitchWiring::None
    }

    /// Whether the X limit switch at `end` reads pressed now (with one
    /// switch for both ends, that switch). [`SensorError::NoXSwitch`] (the
    /// default) where there is none.
    fn x_switch(&self, end: XEnd) -> Result<bool, SensorError> {
        Err(SensorError::NoXSwitch { end })
    }
}

/// Why a touch sensor could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SensorError {
    /// Only Z steppers have a sensor.
    #[error("stepper {stepper} has no touch sensor (only Z steppers have one)")]
    NoSensor {
        /// The global stepper index asked for.
        stepper: usize,
    },
    /// The machine has no X limit switch at that end, or none is configured.
    #[error(
        "no X {end} limit switch is configured (sensors.x_home_line and sensors.x_away_line, \
         or sensors.x_switch_line, with backend \"gpio\"; sensors.x_switches with \
         \"simulated\"), or the sensors could not be opened at start (see the log)"
    )]
    NoXSwitch {
        /// The end asked for.
        end: XEnd,
    },
    /// The configuration says there are no sensors.
    #[error("touch sensors are disabled (sensors.backend = none): this operation needs them")]
    Disabled,
    /// `sensors.backend = "simulated"` without a simulator to read: none in
    /// this process and no `sensors.simulator_sockets`.
    #[error(
        "sensors.backend = \"simulated\" needs the simulated boards: in this process only the \
         demo and tests run them; for simulators in other processes set \
         sensors.simulator_sockets (stringdriverd sim-controller --touch-socket); use \"gpio\" \
         or \"none\" on a machine"
    )]
    NoSimulator,
    /// `sensors.backend = "gpio"` in a daemon built without GPIO support.
    #[error(
        "sensors.backend = \"gpio\", but this stringdriverd was built without the `gpio` \
         feature, so it cannot read GPIO (it is a default feature: build without \
         --no-default-features, or with --features gpio)"
    )]
    GpioNotBuilt,
    /// The sensor settings do not match the layout (only possible with a
    /// configuration built by hand: a loaded one is checked).
    #[error("touch sensor configuration: {detail}")]
    Misconfigured {
        /// What does not match.
        detail: String,
    },
    /// `sensors.chip` is not set and no single chip has the lines.
    #[error("cannot find the GPIO chip of the touch sensors: {detail}")]
    NoChip {
        /// What was found instead.
        detail: String,
    },
    /// The GPIO lines could not be requested (no such chip, no permission,
    /// a line held by another program).
    #[error("cannot request GPIO lines {lines:?} on {}: {detail}", chip.display())]
    Request {
        /// The GPIO character device.
        chip: PathBuf,
        /// The line offsets requested.
        lines: Vec<u32>,
        /// What the kernel said.
        detail: String,
    },
    /// One line could not be read.
    #[error("cannot read GPIO line {line} on {} (touch sensor of stepper {stepper}): {detail}", chip.display())]
    Io {
        /// The GPIO character device.
        chip: PathBuf,
        /// The line offset.
        line: u32,
        /// The global stepper index whose sensor it is.
        stepper: usize,
        /// What the kernel said.
        detail: String,
    },
    /// An X limit switch's line could not be read.
    #[error("cannot read GPIO line {line} on {} (X {end} limit switch): {detail}", chip.display())]
    SwitchIo {
        /// The GPIO character device.
        chip: PathBuf,
        /// The line offset.
        line: u32,
        /// Which switch.
        end: XEnd,
        /// What the kernel said.
        detail: String,
    },
    /// The simulator has no reading for a sensor the layout expects, or
    /// its touch socket could not be read.
    #[error("simulated touch sensor of stepper {stepper}: {detail}")]
    Simulator {
        /// The global stepper index.
        stepper: usize,
        /// What is missing or failed (for a socket: its path and the step).
        detail: String,
    },
}

/// `sensors.backend = "none"`: there are no sensors, and saying so is the
/// only answer.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoSensors;

impl TouchSensors for NoSensors {
    fn read(&self, _stepper: usize) -> Result<bool, SensorError> {
        Err(SensorError::Disabled)
    }

    fn describe(&self) -> String {
        "no touch sensors (sensors.backend = none)".to_string()
    }
}

/// The backend `cfg.sensors` selects. `simulated` is how the readings of
/// simulators in this process reach the `simulated` backend (see
/// [`SimulatedReaders::of`]); without it, the backend reads the touch
/// sockets of `sensors.simulator_sockets`, and with neither it is
/// [`SensorError::NoSimulator`]. `simulated` is ignored by the other
/// backends, so that the configuration alone decides what is read.
pub fn from_config(
    cfg: &Config,
    simulated: Option<SimulatedReaders>,
) -> Result<Box<dyn TouchSensors>, SensorError> {
    match &cfg.sensors {
        SensorsConfig::None => Ok(Box::new(NoSensors)),
        SensorsConfig::Simulated {
            sockets,
            x_switches,
        } => match simulated {
            // The simulators at hand are the ones the caller drives; sockets
            // in the file would be other processes' (or stale).
            Some(readers) => {
                let s = SimulatedSensors::new(&cfg.layout, readers.touch);
                Ok(Box::new(match readers.x_switches {
                    Some(r) => s.with_x_switches(*x_switches, r),
                    None => s.with_x_wiring(*x_switches),
                }))
            }
            None if !sockets.is_empty() => Ok(Box::new(
                SimulatedSensors::over_sockets(&cfg.layout, sockets.clone())
                    .with_x_wiring(*x_switches),
            )),
            None => Err(SensorError::NoSimulator),
        },
        SensorsConfig::Gpio(g) => open_gpio(&cfg.layout, g),
    }
}

#[cfg(feature = "gpio")]
fn open_gpio(
    layout: &Layout,
    cfg: &crate::config::GpioSensorsConfig,
) -> Result<Box<dyn TouchSensors>, SensorError> {
    Ok(Box::new(GpioSensors::open(layout, cfg)?))
}

#[cfg(not(feature = "gpio"))]
fn open_gpio(
    layout: &Layout,
    cfg: &crate::config::GpioSensorsConfig,
) -> Result<Box<dyn TouchSensors>, SensorError> {
    // Checked anyway, so that a configuration mistake is reported before the
    // missing feature, which needs a rebuild to fix.
    GpioLineMap::new(layout, cfg)?;
    Err(SensorError::GpioNotBuilt)
}

/// Whether this build can run the backend `cfg.sensors` selects, checked
/// without touching any hardware (for `check-config`):
/// [`SensorError::GpioNotBuilt`] for `gpio` in a build without the `gpio`
/// feature.
pub fn check_buildable(cfg: &Config) -> Result<(), SensorError> {
    match &cfg.sensors {
        SensorsConfig::Gpio(_) if !cfg!(feature = "gpio") => Err(SensorError::GpioNotBuilt),
        _ => Ok(()),
    }
}

/// Where each Z stepper's sensor sits in Z stepper order (string 0 in,
/// string 0 out, string 1 in, ...), by global index; `None` for steppers
/// without a sensor.
fn z_order(layout: &Layout) -> Vec<Option<usize>> {
    (0..layout.total_steppers())
        .map(|g| match layout.role(g) {
            crate::config::Role::ZIn { string } => Some(2 * string),
            crate::config::Role::ZOut { string } => Some(2 * string + 1),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn config(sensors: &str) -> Config {
        let text = format!(
            "host = \"t\"\n[[boards]]\nname = \"c\"\nport = \"/dev/x\"\nint_bytes = 2\n\
             firmware = \"v2\"\nsteppers = 13\n[layout]\nstrings = 2\nx_index = 0\n\
             z_first_index = 1\n[sensors]\n{sensors}"
        );
        crate::config::parse(&text, Path::new("t.toml")).expect("parses")
    }

    #[test]
    fn none_is_disabled_with_a_clear_message() {
        let s = from_config(&config("backend = \"none\"\n"), None).expect("builds");
        let e = s.read(1).expect_err("disabled");
        assert!(matches!(e, SensorError::Disabled));
        assert_eq!(
            e.to_string(),
            "touch sensors are disabled (sensors.backend = none): this operation needs them"
        );
    }

    #[test]
    fn simulated_without_a_simulator_is_refused() {
        let e = from_config(&config("backend = \"simulated\"\n"), None)
            .err()
            .expect("refused");
        assert!(matches!(e, SensorError::NoSimulator), "{e}");
    }

    #[test]
    fn z_order_follows_the_roles() {
        let c = config("");
        let order = z_order(&c.layout);
        assert_eq!(
            &order[..6],
            &[None, Some(0), Some(1), Some(2), Some(3), None]
        );
    }

    #[cfg(not(feature = "gpio"))]
    #[test]
    fn gpio_without_the_feature_says_so() {
        let c = config("backend = \"gpio\"\nchip = \"/dev/gpiochip0\"\nlines = [6, 26, 19, 5]\n");
        let e = from_config(&c, None).err().expect("refused");
        assert!(matches!(e, SensorError::GpioNotBuilt), "{e}");
    }
}
