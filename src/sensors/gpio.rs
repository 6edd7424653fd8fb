//! The `gpio` backend: touch sensors on the host's GPIO character device.
//!
//! [`GpioLineMap`] (always built, so that it is tested everywhere) says which
//! line is whose sensor and what level means touching; `GpioSensors` (with
//! the `gpio` feature) requests the lines once, as inputs, and reads them.
//!
//! The lines are requested active-high and the configured active level is
//! applied here, in [`GpioLineMap::touching`], rather than by the kernel's
//! active-low flag: one rule, in one place, testable without hardware.

use std::path::{Path, PathBuf};

use super::{z_order, SensorError};
use crate::config::{GpioSensorsConfig, Layout};

/// Consumer name the lines are requested under (what `gpioinfo` shows).
pub const CONSUMER: &str = "stringdriverd";

/// Which GPIO line carries the sensor of each Z stepper.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpioLineMap {
    chip: PathBuf,
    active_low: bool,
    /// Line of each global stepper, `None` without a sensor.
    by_stepper: Vec<Option<u32>>,
    /// Lines in Z stepper order, as configured.
    offsets: Vec<u32>,
}

impl GpioLineMap {
    /// The map of `cfg` on `layout`: `cfg.lines[k]` is the sensor of the Z
    /// stepper `k` in Z stepper order (string 0 in, string 0 out, string 1
    /// in, ...). A loaded configuration always fits its layout; a hand-built
    /// one that does not is [`SensorError::Misconfigured`].
    pub fn new(layout: &Layout, cfg: &GpioSensorsConfig) -> Result<GpioLineMap, SensorError> {
        let z = 2 * layout.strings();
        if cfg.lines.len() != z {
            return Err(SensorError::Misconfigured {
                detail: format!(
                    "{} GPIO lines for {z} Z steppers: one line per Z stepper is needed",
                    cfg.lines.len()
                ),
            });
        }
        for (i, line) in cfg.lines.iter().enumerate() {
            if cfg.lines[..i].contains(line) {
                return Err(SensorError::Misconfigured {
                    detail: format!("GPIO line {line} is given for two sensors"),
                });
            }
        }
        let by_stepper = z_order(layout)
            .into_iter()
            .map(|k| k.and_then(|k| cfg.lines.get(k).copied()))
            .collect();
        Ok(GpioLineMap {
            chip: cfg.chip.clone(),
            active_low: cfg.active_low,
            by_stepper,
            offsets: cfg.lines.clone(),
        })
    }

    /// The GPIO character device.
    pub fn chip(&self) -> &Path {
        &self.chip
    }

    /// Every sensor line, in Z stepper order.
    pub fn offsets(&self) -> &[u32] {
        &self.offsets
    }

    /// Whether touching reads low.
    pub fn active_low(&self) -> bool {
        self.active_low
    }

    /// The line of stepper `stepper`'s sensor (global index);
    /// [`SensorError::NoSensor`] for a stepper that is not a Z stepper.
    pub fn line(&self, stepper: usize) -> Result<u32, SensorError> {
        self.by_stepper
            .get(stepper)
            .copied()
            .flatten()
            .ok_or(SensorError::NoSensor { stepper })
    }

    /// Whether a line read at physical level `high` means touching.
    pub fn touching(&self, high: bool) -> bool {
        high != self.active_low
    }

    /// One line for logs: chip, lines and active level.
    pub fn describe(&self) -> String {
        format!(
            "GPIO touch sensors on {}, lines {:?} in Z stepper order, touching reads {}",
            self.chip.display(),
            self.offsets,
            if self.active_low { "low" } else { "high" }
        )
    }
}

#[cfg(feature = "gpio")]
pub use hardware::GpioSensors;

#[cfg(feature = "gpio")]
mod hardware {
    use gpiocdev::line::Value;
    use gpiocdev::Request;

    use super::{GpioLineMap, CONSUMER};
    use crate::config::{GpioSensorsConfig, Layout};
    use crate::sensors::{SensorError, TouchSensors};

    /// Touch sensors on GPIO lines, requested once as inputs for the life
    /// of this value (so no other program can take them meanwhile).
    #[derive(Debug)]
    pub struct GpioSensors {
        map: GpioLineMap,
        request: Request,
    }

    impl GpioSensors {
        /// Requests the lines of `cfg` on its chip as inputs, under the
        /// consumer name [`CONSUMER`].
        pub fn open(layout: &Layout, cfg: &GpioSensorsConfig) -> Result<GpioSensors, SensorError> {
            let map = GpioLineMap::new(layout, cfg)?;
            let request = Request::builder()
                .on_chip(map.chip())
                .with_consumer(CONSUMER)
                .with_lines(map.offsets())
                .as_input()
                .request()
                .map_err(|e| SensorError::Request {
                    chip: map.chip().to_path_buf(),
                    lines: map.offsets().to_vec(),
                    detail: e.to_string(),
                })?;
            Ok(GpioSensors { map, request })
        }

        /// Which line is whose sensor.
        pub fn map(&self) -> &GpioLineMap {
            &self.map
        }
    }

    impl TouchSensors for GpioSensors {
        fn read(&self, stepper: usize) -> Result<bool, SensorError> {
            let line = self.map.line(stepper)?;
            let value = self.request.value(line).map_err(|e| SensorError::Io {
                chip: self.map.chip().to_path_buf(),
                line,
                stepper,
                detail: e.to_string(),
            })?;
            // Requested active-high, so Active is the physical high level.
            Ok(self.map.touching(value == Value::Active))
        }

        fn describe(&self) -> String {
            self.map.describe()
        }
    }
}
