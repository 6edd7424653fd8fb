//! The `gpio` backend: touch sensors on the host's GPIO character device.
//!
//! Every sensor and X limit switch of the machines is a contact to ground
//! on an input with the pull-up bias: high when open, low when touching
//! (`reference/hosts.md`, "electrical sense"). Hence the defaults: lines
//! requested with `bias = "pull-up"`, `active_low = true`.
//!
//! [`GpioLineMap`] says which line is whose sensor and what level means
//! touching; [`GpioSensors`] requests the lines once, as inputs with the
//! configured bias, and reads them. The kernel is reached only through a
//! [`LineSource`] ([`KernelLines`], with the `gpio` feature), so that the
//! mapping, the bias and the chip discovery are the same code under test
//! with a fake source as on a Pi.
//!
//! The lines are requested active-high and the configured active level is
//! applied here, in [`GpioLineMap::touching`], rather than by the kernel's
//! active-low flag: one rule, in one place, testable without hardware.
//!
//! # Finding the chip
//! The header's chip is not gpiochip0 on every Pi (on a Pi 5 it is the
//! RP1's, gpiochip4 on older kernels). Without `sensors.chip`, the chip is
//! the one that has the lines, judged among the chips with more lines than
//! the highest configured offset, in this order; at each step exactly one
//! chip must qualify, two are an error asking for `sensors.chip`:
//! 1. the chip whose lines at every configured offset are named
//!    `GPIO<offset>` (the Raspberry Pi device trees name the header's lines
//!    so on every model);
//! 2. the chip whose label is a Pi header's ([`PI_HEADER_LABELS`]);
//! 3. the only chip with enough lines.

use std::fmt;
use std::path::{Path, PathBuf};

use super::{z_order, SensorError, TouchSensors, XEnd};
use crate::config::{GpioSensorsConfig, Layout, LineBias, XSwitchLines, XSwitchWiring};

/// Consumer name the lines are requested under (what `gpioinfo` shows).
pub const CONSUMER: &str = "stringdriverd";

/// Labels of the chip that drives the Raspberry Pi's 40-pin header: the
/// Pi 5's RP1, the Pi 4's BCM2711, the BCM2835 family of earlier Pis.
pub const PI_HEADER_LABELS: &[&str] = &["pinctrl-rp1", "pinctrl-bcm2711", "pinctrl-bcm2835"];

/// Which GPIO line carries the sensor of each Z stepper.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpioLineMap {
    chip: Option<PathBuf>,
    active_low: bool,
    bias: LineBias,
    /// Line of each global stepper, `None` without a sensor.
    by_stepper: Vec<Option<u32>>,
    /// Lines in Z stepper order, as configured.
    offsets: Vec<u32>,
    /// The X limit switches' lines.
    x_switches: XSwitchLines,
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
        let switches = cfg.x_switches.lines();
        for (i, line) in switches.iter().enumerate() {
            if cfg.lines.contains(line) || switches[..i].contains(line) {
                return Err(SensorError::Misconfigured {
                    detail: format!(
                        "GPIO line {line} is given for an X limit switch and another input"
                    ),
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
            bias: cfg.bias,
            by_stepper,
            offsets: cfg.lines.clone(),
            x_switches: cfg.x_switches,
        })
    }

    /// Every line requested: the sensors' in Z stepper order, then the X
    /// limit switches' (home, away, or the one for both ends).
    pub fn all_offsets(&self) -> Vec<u32> {
        let mut all = self.offsets.clone();
        all.extend(self.x_switches.lines());
        all
    }

    /// The X limit switches' lines.
    pub fn x_switches(&self) -> XSwitchLines {
        self.x_switches
    }

    /// The line of the X limit switch at `end`; [`SensorError::NoXSwitch`]
    /// without one.
    pub fn x_switch_line(&self, end: XEnd) -> Result<u32, SensorError> {
        match (self.x_switches, end) {
            (XSwitchLines::None, _) => Err(SensorError::NoXSwitch { end }),
            (XSwitchLines::One(l), _) => Ok(l),
            (XSwitchLines::Two { home, .. }, XEnd::Home) => Ok(home),
            (XSwitchLines::Two { away, .. }, XEnd::Away) => Ok(away),
        }
    }

    /// The GPIO character device configured; `None`: found by the lines.
    pub fn chip(&self) -> Option<&Path> {
        self.chip.as_deref()
    }

    /// Every sensor line, in Z stepper order.
    pub fn offsets(&self) -> &[u32] {
        &self.offsets
    }

    /// Whether touching reads low.
    pub fn active_low(&self) -> bool {
        self.active_low
    }

    /// The bias the lines are requested with.
    pub fn bias(&self) -> LineBias {
        self.bias
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

    /// One line for logs: chip, lines, bias and active level.
    pub fn describe(&self) -> String {
        self.describe_on(&self.chip.as_deref().map_or_else(
            || "the chip that has the lines".into(),
            |c| c.display().to_string(),
        ))
    }

    fn describe_on(&self, chip: &str) -> String {
        let switches = match self.x_switches {
            XSwitchLines::None => String::new(),
            XSwitchLines::Two { home, away } => {
                format!(", X limit switches (pressed reads as touching) home line {home}, away line {away}")
            }
            XSwitchLines::One(l) => format!(
                ", one X limit switch (pressed reads as touching) for both ends on line {l}"
            ),
        };
        format!(
            "GPIO touch sensors on {chip}, lines {:?} in Z stepper order{switches}, bias {}, \
             touching reads {}",
            self.offsets,
            self.bias,
            if self.active_low { "low" } else { "high" }
        )
    }
}

/// What a [`LineSource`] tells about one GPIO chip.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChipInfo {
    /// Its character device.
    pub path: PathBuf,
    /// Its label ("pinctrl-rp1").
    pub label: String,
    /// How many lines it has.
    pub num_lines: u32,
    /// The names of the lines asked about, where the chip has them and
    /// they are named.
    pub names: Vec<(u32, String)>,
}

/// The kernel side of the `gpio` backend: listing chips and requesting
/// lines. [`KernelLines`] is the real one; tests give a fake one.
pub trait LineSource {
    /// Every GPIO chip, with the names of its lines at `offsets`.
    fn chips(&self, offsets: &[u32]) -> Result<Vec<ChipInfo>, String>;

    /// Requests `offsets` on `chip` as inputs with `bias`, active-high,
    /// under [`CONSUMER`], held until the result is dropped.
    fn request(
        &self,
        chip: &Path,
        offsets: &[u32],
        bias: LineBias,
    ) -> Result<Box<dyn LineLevels>, String>;
}

/// Requested lines, read by offset.
pub trait LineLevels: Send + Sync + fmt::Debug {
    /// The physical level of line `offset`: `true` is high.
    fn level(&self, offset: u32) -> Result<bool, String>;
}

/// The chip that has `offsets`, by the rules of the module doc.
pub fn find_chip(chips: &[ChipInfo], offsets: &[u32]) -> Result<PathBuf, SensorError> {
    let highest = offsets.iter().copied().max().unwrap_or(0);
    let fits: Vec<&ChipInfo> = chips.iter().filter(|c| c.num_lines > highest).collect();
    let pick = |found: Vec<&ChipInfo>, rule: &str| -> Option<Result<PathBuf, SensorError>> {
        match found.as_slice() {
            [] => None,
            [one] => Some(Ok(one.path.clone())),
            many => Some(Err(SensorError::NoChip {
                detail: format!(
                    "{} chips qualify ({rule}): {}; set sensors.chip",
                    many.len(),
                    list(many)
                ),
            })),
        }
    };
    let named = fits
        .iter()
        .copied()
        .filter(|c| {
            offsets.iter().all(|o| {
                let want = format!("GPIO{o}");
                c.names.iter().any(|(n, name)| n == o && *name == want)
            })
        })
        .collect();
    if let Some(found) = pick(named, "lines named GPIO<offset>") {
        return found;
    }
    let labelled = fits
        .iter()
        .copied()
        .filter(|c| PI_HEADER_LABELS.contains(&c.label.as_str()))
        .collect();
    if let Some(found) = pick(labelled, "a Pi header's label") {
        return found;
    }
    if let Some(found) = pick(fits.clone(), "enough lines") {
        return found;
    }
    Err(SensorError::NoChip {
        detail: if chips.is_empty() {
            "this host has no GPIO chip (/dev/gpiochip*)".to_string()
        } else {
            format!(
                "no chip has line {highest}: {}; check sensors.lines or set sensors.chip",
                list(&chips.iter().collect::<Vec<_>>())
            )
        },
    })
}

fn list(chips: &[&ChipInfo]) -> String {
    chips
        .iter()
        .map(|c| format!("{} ({}, {} lines)", c.path.display(), c.label, c.num_lines))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Touch sensors on GPIO lines, requested once as inputs for the life of
/// this value (so no other program can take them meanwhile).
#[derive(Debug)]
pub struct GpioSensors {
    map: GpioLineMap,
    chip: PathBuf,
    lines: Box<dyn LineLevels>,
}

impl GpioSensors {
    /// Requests the lines of `cfg` through `source`: on `cfg.chip`, or on
    /// the chip found by the lines ([`find_chip`]), with the configured bias.
    pub fn open_with(
        layout: &Layout,
        cfg: &GpioSensorsConfig,
        source: &dyn LineSource,
    ) -> Result<GpioSensors, SensorError> {
        let map = GpioLineMap::new(layout, cfg)?;
        // The switches' lines are found, requested and held with the
        // sensors': one owner for every input line of the machine.
        let offsets = map.all_offsets();
        let chip = match map.chip() {
            Some(c) => c.to_path_buf(),
            None => {
                let chips = source
                    .chips(&offsets)
                    .map_err(|detail| SensorError::NoChip {
                        detail: format!("cannot list the GPIO chips: {detail}"),
                    })?;
                find_chip(&chips, &offsets)?
            }
        };
        let lines = source
            .request(&chip, &offsets, map.bias())
            .map_err(|detail| SensorError::Request {
                chip: chip.clone(),
                lines: offsets.clone(),
                detail,
            })?;
        Ok(GpioSensors { map, chip, lines })
    }

    /// [`open_with`](GpioSensors::open_with) the kernel's GPIO character
    /// devices.
    #[cfg(feature = "gpio")]
    pub fn open(layout: &Layout, cfg: &GpioSensorsConfig) -> Result<GpioSensors, SensorError> {
        GpioSensors::open_with(layout, cfg, &KernelLines)
    }

    /// Which line is whose sensor.
    pub fn map(&self) -> &GpioLineMap {
        &self.map
    }

    /// The chip the lines were requested on.
    pub fn chip(&self) -> &Path {
        &self.chip
    }
}

impl TouchSensors for GpioSensors {
    fn read(&self, stepper: usize) -> Result<bool, SensorError> {
        let line = self.map.line(stepper)?;
        let high = self.lines.level(line).map_err(|detail| SensorError::Io {
            chip: self.chip.clone(),
            line,
            stepper,
            detail,
        })?;
        Ok(self.map.touching(high))
    }

    fn describe(&self) -> String {
        self.map.describe_on(&self.chip.display().to_string())
    }

    fn x_switch_wiring(&self) -> XSwitchWiring {
        self.map.x_switches.wiring()
    }

    fn x_switch(&self, end: XEnd) -> Result<bool, SensorError> {
        let line = self.map.x_switch_line(end)?;
        let high = self
            .lines
            .level(line)
            .map_err(|detail| SensorError::SwitchIo {
                chip: self.chip.clone(),
                line,
                end,
                detail,
            })?;
        // Wired like the sensors: a pressed switch reads like a touching one.
        Ok(self.map.touching(high))
    }
}

#[cfg(feature = "gpio")]
pub use kernel::KernelLines;

#[cfg(feature = "gpio")]
mod kernel {
    use std::path::Path;

    use gpiocdev::line::{Bias, Value};
    use gpiocdev::Request;

    use super::{ChipInfo, LineLevels, LineSource, CONSUMER};
    use crate::config::LineBias;

    /// The Linux GPIO character devices, through gpiocdev.
    #[derive(Debug, Clone, Copy, Default)]
    pub struct KernelLines;

    impl LineSource for KernelLines {
        fn chips(&self, offsets: &[u32]) -> Result<Vec<ChipInfo>, String> {
            let paths = gpiocdev::chip::chips().map_err(|e| e.to_string())?;
            let mut out = Vec::with_capacity(paths.len());
            for path in paths {
                // A chip that cannot be opened (permissions) is not a
                // candidate; the others still are.
                let Ok(chip) = gpiocdev::Chip::from_path(&path) else {
                    continue;
                };
                let Ok(info) = chip.info() else { continue };
                let names = offsets
                    .iter()
                    .filter(|o| **o < info.num_lines)
                    .filter_map(|o| chip.line_info(*o).ok().map(|l| (*o, l.name)))
                    .collect();
                out.push(ChipInfo {
                    path,
                    label: info.label,
                    num_lines: info.num_lines,
                    names,
                });
            }
            Ok(out)
        }

        fn request(
            &self,
            chip: &Path,
            offsets: &[u32],
            bias: LineBias,
        ) -> Result<Box<dyn LineLevels>, String> {
            let bias = match bias {
                LineBias::PullUp => Bias::PullUp,
                LineBias::PullDown => Bias::PullDown,
                LineBias::Disabled => Bias::Disabled,
            };
            let request = Request::builder()
                .on_chip(chip)
                .with_consumer(CONSUMER)
                .with_lines(offsets)
                .as_input()
                .with_bias(bias)
                .request()
                .map_err(|e| e.to_string())?;
            Ok(Box::new(Lines(request)))
        }
    }

    #[derive(Debug)]
    struct Lines(Request);

    impl LineLevels for Lines {
        fn level(&self, offset: u32) -> Result<bool, String> {
            // Requested active-high, so Active is the physical high level.
            self.0
                .value(offset)
                .map(|v| v == Value::Active)
                .map_err(|e| e.to_string())
        }
    }
}
