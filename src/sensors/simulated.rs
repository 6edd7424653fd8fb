//! The `simulated` backend: the touch sensors of the simulator's mechanism.

use std::sync::Arc;

use super::{SensorError, TouchSensors};
use crate::config::Layout;
use crate::sim::SimHandle;

/// How the simulated backend reads the simulators: given a board index (the
/// order of `[[boards]]`), the sensor readings of that board's steppers in
/// local index order, as [`SimHandle::touching`] returns them; an empty list
/// for a board without a simulator.
///
/// A function rather than the handles themselves because a [`SimHandle`]
/// owns its simulator (it is not `Clone`, and dropping it stops the
/// simulator): whoever runs the simulators keeps them and lends this view.
pub type TouchReader = Arc<dyn Fn(usize) -> Vec<bool> + Send + Sync>;

/// Touch sensors read from the simulators' model of the mechanism.
pub struct SimulatedSensors {
    /// Board and local index of each global stepper that has a sensor.
    sensors: Vec<Option<(usize, usize)>>,
    reader: TouchReader,
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
        SimulatedSensors { sensors, reader }
    }

    /// Sensors read from `sims`, one simulator per board in board order (as
    /// the demo starts them).
    pub fn from_handles(layout: &Layout, sims: Arc<Vec<SimHandle>>) -> SimulatedSensors {
        SimulatedSensors::new(layout, Self::reader(sims))
    }

    /// The [`TouchReader`] of `sims`, one simulator per board in board order,
    /// for [`super::from_config`].
    pub fn reader(sims: Arc<Vec<SimHandle>>) -> TouchReader {
        Arc::new(move |board| sims.get(board).map(SimHandle::touching).unwrap_or_default())
    }
}

impl TouchSensors for SimulatedSensors {
    fn read(&self, stepper: usize) -> Result<bool, SensorError> {
        let Some(&Some((board, local))) = self.sensors.get(stepper) else {
            return Err(SensorError::NoSensor { stepper });
        };
        (self.reader)(board)
            .get(local)
            .copied()
            .ok_or_else(|| SensorError::Simulator {
                stepper,
                detail: format!("board {board} has no simulated sensor at stepper {local}"),
            })
    }

    fn describe(&self) -> String {
        let n = self.sensors.iter().flatten().count();
        format!("simulated touch sensors on {n} Z steppers")
    }
}

impl std::fmt::Debug for SimulatedSensors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimulatedSensors")
            .field("sensors", &self.sensors)
            .finish_non_exhaustive()
    }
}
