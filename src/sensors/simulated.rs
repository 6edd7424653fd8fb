//! The `simulated` backend: the touch sensors of the simulator's mechanism,
//! read in this process ([`SimulatedSensors::reader`]) or from simulators in
//! other processes over their touch sockets
//! ([`SimulatedSensors::reader_from_sockets`]).

use std::path::PathBuf;
use std::sync::Arc;

use super::{SensorError, TouchSensors, XEnd};
use crate::config::{Layout, XSwitchWiring};
use crate::sim::{SimHandle, XSwitchState};

/// How the simulated backend reads the simulators: given a board index (the
/// order of `[[boards]]`), the sensor readings of that board's steppers in
/// local index order, as [`SimHandle::touching`] returns them, or why they
/// cannot be read (no simulator for that board, a socket that does not
/// answer). The error is an error, never "not touching": guessing would let
/// an operation press a mechanism into its string.
///
/// A function rather than the handles themselves because a [`SimHandle`]
/// owns its simulator (it is not `Clone`, and dropping it stops the
/// simulator): whoever runs the simulators keeps them and lends this view.
pub type TouchReader = Arc<dyn Fn(usize) -> Result<Vec<bool>, String> + Send + Sync>;

/// How the simulated backend reads the carriage's limit switches: given a
/// board index, what they read on that board ([`SimHandle::x_switches`];
/// `None`: the board has no carriage), or why they cannot be read.
pub type SwitchReader = Arc<dyn Fn(usize) -> Result<Option<XSwitchState>, String> + Send + Sync>;

/// The readers of simulators in this process, handed to
/// [`super::from_config`]: their touch sensors and, where they are read,
/// their X limit switches.
#[derive(Clone)]
pub struct SimulatedReaders {
    /// The touch sensors.
    pub touch: TouchReader,
    /// The carriage's limit switches (`None`: not read; the X homing
    /// operations then fail saying so).
    pub x_switches: Option<SwitchReader>,
}

impl SimulatedReaders {
    /// Both readers of `sims`, one simulator per board in board order.
    pub fn of(sims: Arc<Vec<SimHandle>>) -> SimulatedReaders {
        SimulatedReaders {
            touch: SimulatedSensors::reader(sims.clone()),
            x_switches: Some(SimulatedSensors::switch_reader(sims)),
        }
    }
}

impl From<TouchReader> for SimulatedReaders {
    fn from(touch: TouchReader) -> SimulatedReaders {
        SimulatedReaders {
            touch,
            x_switches: None,
        }
    }
}

/// Touch sensors read from the simulators' model of the mechanism.
pub struct SimulatedSensors {
    /// Board and local index of each global stepper that has a sensor.
    sensors: Vec<Option<(usize, usize)>>,
    reader: TouchReader,
    /// The touch socket of each board when read over sockets, for
    /// [`TouchSensors::describe`] and errors; empty when the reader was
    /// handed over as it is.
    sockets: Vec<Option<PathBuf>>,
    /// Global index, board and local index of the X stepper, if any.
    x: Option<(usize, usize, usize)>,
    /// How the X limit switches are wired (`sensors.x_switches`).
    wiring: XSwitchWiring,
    /// Where they are read, if anywhere.
    switches: Option<SwitchReader>,
}

impl SimulatedSensors {
    /// Sensors of the Z steppers of `layout`, read through `reader`.
    pub fn new(layout: &Layout, reader: TouchReader) -> SimulatedSensors {
        let sensors = (0..layout.total_steppers())
            .map(|g| {
                if layout.role(g).is_z() {
                    layout.locate(g)
                } else {
                    None
                }
            })
            .collect();
        let x = layout
            .x()
            .and_then(|r| layout.locate(r.first).map(|(b, l)| (r.first, b, l)));
        SimulatedSensors {
            sensors,
            reader,
            sockets: Vec::new(),
            x,
            wiring: XSwitchWiring::None,
            switches: None,
        }
    }

    /// These sensors with the X limit switches wired as `wiring` and read
    /// through `reader`.
    pub fn with_x_switches(self, wiring: XSwitchWiring, reader: SwitchReader) -> SimulatedSensors {
        SimulatedSensors {
            wiring,
            switches: Some(reader),
            ..self
        }
    }

    /// Sensors of the Z steppers of `layout`, read from the touch sockets of
    /// simulators in other processes, one per board in board order
    /// (`sensors.simulator_sockets`; see [`SimulatedSensors::reader_from_sockets`]).
    pub fn over_sockets(layout: &Layout, paths: Vec<Option<PathBuf>>) -> SimulatedSensors {
        let boards = super::socket::boards(paths.clone());
        SimulatedSensors {
            sockets: paths,
            switches: Some(super::socket::switch_reader(boards.clone())),
            ..SimulatedSensors::new(layout, super::socket::reader(boards))
        }
    }

    /// These sensors with the X limit switches wired as `wiring`, read where
    /// the touch sensors are (the simulators' touch sockets, or the handles).
    pub fn with_x_wiring(self, wiring: XSwitchWiring) -> SimulatedSensors {
        SimulatedSensors { wiring, ..self }
    }

    /// The [`SwitchReader`] of `sims`, one simulator per board in board order.
    pub fn switch_reader(sims: Arc<Vec<SimHandle>>) -> SwitchReader {
        Arc::new(move |board| {
            sims.get(board)
                .map(SimHandle::x_switches)
                .ok_or_else(|| format!("no simulator runs for board {board}"))
        })
    }

    /// Sensors read from `sims`, one simulator per board in board order (as
    /// the demo starts them).
    pub fn from_handles(layout: &Layout, sims: Arc<Vec<SimHandle>>) -> SimulatedSensors {
        SimulatedSensors::new(layout, Self::reader(sims))
    }

    /// The [`TouchReader`] of `sims`, one simulator per board in board order,
    /// for [`super::from_config`].
    pub fn reader(sims: Arc<Vec<SimHandle>>) -> TouchReader {
        Arc::new(move |board| {
            sims.get(board)
                .map(SimHandle::touching)
                .ok_or_else(|| format!("no simulator runs for board {board}"))
        })
    }

    /// The [`TouchReader`] of simulators in other processes: one touch socket
    /// per board in board order (`None`: that board has no simulated
    /// sensors), each served by a [`crate::sim::touch::TouchServer`]. A read
    /// reuses the board's connection (reconnecting once if it fails) and
    /// waits at most [`super::SOCKET_READ_TIMEOUT`] per attempt; a socket
    /// that is missing, refuses, times out or answers anything but readings
    /// gives an error naming its path and what failed.
    pub fn reader_from_sockets(paths: Vec<Option<PathBuf>>) -> TouchReader {
        super::socket::reader(super::socket::boards(paths))
    }
}

impl TouchSensors for SimulatedSensors {
    fn read(&self, stepper: usize) -> Result<bool, SensorError> {
        let Some(&Some((board, local))) = self.sensors.get(stepper) else {
            return Err(SensorError::NoSensor { stepper });
        };
        let readings =
            (self.reader)(board).map_err(|detail| SensorError::Simulator { stepper, detail })?;
        readings
            .get(local)
            .copied()
            .ok_or_else(|| SensorError::Simulator {
                stepper,
                detail: format!(
                    "board {board} has no simulated sensor at stepper {local} ({} readings{})",
                    readings.len(),
                    match self.sockets.get(board) {
                        Some(Some(p)) => format!(" from touch socket {}", p.display()),
                        _ => String::new(),
                    }
                ),
            })
    }

    fn x_switch_wiring(&self) -> XSwitchWiring {
        self.wiring
    }

    fn x_switch(&self, end: XEnd) -> Result<bool, SensorError> {
        if self.wiring == XSwitchWiring::None {
            return Err(SensorError::NoXSwitch { end });
        }
        let Some((stepper, board, _)) = self.x else {
            return Err(SensorError::NoXSwitch { end });
        };
        let fail = |detail: String| SensorError::Simulator { stepper, detail };
        let Some(reader) = &self.switches else {
            return Err(fail(
                "the simulated X limit switches are not read here (no simulator hands them over)"
                    .into(),
            ));
        };
        let state = reader(board)
            .map_err(fail)?
            .ok_or_else(|| fail(format!("board {board} has no simulated carriage switches")))?;
        Ok(match (self.wiring, end) {
            (XSwitchWiring::One, _) => state.home || state.away,
            (_, XEnd::Home) => state.home,
            (_, XEnd::Away) => state.away,
        })
    }

    fn describe(&self) -> String {
        let n = self.sensors.iter().flatten().count();
        if self.sockets.is_empty() {
            return format!(
                "simulated touch sensors on {n} Z steppers, X limit switches: {}",
                self.wiring
            );
        }
        let listed: Vec<String> = self
            .sockets
            .iter()
            .map(|p| match p {
                Some(p) => p.display().to_string(),
                None => "-".to_string(),
            })
            .collect();
        format!(
            "simulated touch sensors on {n} Z steppers, X limit switches: {}, read from touch \
             sockets [{}]",
            self.wiring,
            listed.join(", ")
        )
    }
}

impl std::fmt::Debug for SimulatedSensors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimulatedSensors")
            .field("sensors", &self.sensors)
            .field("sockets", &self.sockets)
            .finish_non_exhaustive()
    }
}
