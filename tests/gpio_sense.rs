//! The `gpio` touch-sensor backend as wired on the machines
//! (`reference/hosts.md`, "electrical sense"): contacts to ground read with
//! the pull-up bias, low = touching, and the header's chip found by its
//! lines. The kernel has no gpio-sim here, so the kernel call is faked
//! behind `LineSource`; the configuration, the mapping, the bias and the
//! chip discovery are the daemon's own code.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use stringdriverd::config::{self, Config, LineBias, SensorsConfig};
use stringdriverd::sensors::{
    ChipInfo, GpioSensors, LineLevels, LineSource, SensorError, TouchSensors,
};

/// One request made: chip, offsets, bias.
type Requested = (PathBuf, Vec<u32>, LineBias);

/// A host's GPIO chips and the levels on their lines, as a test sets them.
#[derive(Clone, Default)]
struct FakeLines {
    chips: Vec<ChipInfo>,
    /// Physical level of each line (true = high); a line not set floats
    /// and reads as the bias would pull it.
    levels: Arc<Mutex<HashMap<u32, bool>>>,
    /// Every request: chip, offsets, bias.
    requests: Arc<Mutex<Vec<Requested>>>,
    /// How many times the chips were listed.
    listed: Arc<Mutex<usize>>,
}

#[derive(Debug)]
struct FakeLevels {
    levels: Arc<Mutex<HashMap<u32, bool>>>,
    bias: LineBias,
}

impl LineLevels for FakeLevels {
    fn level(&self, offset: u32) -> Result<bool, String> {
        match (self.levels.lock().unwrap().get(&offset), self.bias) {
            (Some(l), _) => Ok(*l),
            (None, LineBias::PullUp) => Ok(true),
            (None, LineBias::PullDown) => Ok(false),
            (None, LineBias::Disabled) => Err(format!("line {offset} floats")),
        }
    }
}

impl LineSource for FakeLines {
    fn chips(&self, offsets: &[u32]) -> Result<Vec<ChipInfo>, String> {
        *self.listed.lock().unwrap() += 1;
        Ok(self
            .chips
            .iter()
            .map(|c| ChipInfo {
                names: c
                    .names
                    .iter()
                    .filter(|(o, _)| offsets.contains(o))
                    .cloned()
                    .collect(),
                ..c.clone()
            })
            .collect())
    }

    fn request(
        &self,
        chip: &Path,
        offsets: &[u32],
        bias: LineBias,
    ) -> Result<Box<dyn LineLevels>, String> {
        if !self.chips.iter().any(|c| c.path == chip) {
            return Err("No such file or directory (os error 2)".into());
        }
        self.requests
            .lock()
            .unwrap()
            .push((chip.to_path_buf(), offsets.to_vec(), bias));
        Ok(Box::new(FakeLevels {
            levels: self.levels.clone(),
            bias,
        }))
    }
}

fn chip(path: &str, label: &str, num_lines: u32, named: bool) -> ChipInfo {
    ChipInfo {
        path: PathBuf::from(path),
        label: label.to_string(),
        num_lines,
        names: (0..num_lines)
            .map(|o| {
                (
                    o,
                    if named {
                        format!("GPIO{o}")
                    } else {
                        String::new()
                    },
                )
            })
            .collect(),
    }
}

/// A Pi 5 on a kernel that numbers the RP1 (the header) gpiochip4.
fn pi5() -> FakeLines {
    FakeLines {
        chips: vec![
            chip("/dev/gpiochip0", "gpio-brcmstb@107d508500", 32, false),
            chip("/dev/gpiochip1", "gpio-brcmstb@107d508520", 4, false),
            chip("/dev/gpiochip4", "pinctrl-rp1", 54, true),
        ],
        ..FakeLines::default()
    }
}

const LINES: [u32; 4] = [6, 26, 19, 5];

fn config(sensors: &str) -> Config {
    let text = format!(
        "host = \"t\"\n[[boards]]\nname = \"c\"\nport = \"/dev/x\"\nint_bytes = 2\n\
         firmware = \"v2\"\nsteppers = 13\n[layout]\nstrings = 2\nx_index = 0\n\
         z_first_index = 1\n[sensors]\nbackend = \"gpio\"\nlines = [6, 26, 19, 5]\n{sensors}"
    );
    config::parse(&text, Path::new("t.toml")).expect("parses")
}

fn open(cfg: &Config, lines: &FakeLines) -> Result<GpioSensors, SensorError> {
    let SensorsConfig::Gpio(g) = &cfg.sensors else {
        panic!("gpio config expected")
    };
    GpioSensors::open_with(&cfg.layout, g, lines)
}

#[test]
fn by_default_lines_are_pulled_up_and_low_means_touching() {
    let cfg = config("");
    let SensorsConfig::Gpio(g) = &cfg.sensors else {
        panic!()
    };
    assert_eq!(
        (g.bias, g.active_low, g.chip.as_deref()),
        (LineBias::PullUp, true, None)
    );
    let lines = pi5();
    let s = open(&cfg, &lines).expect("opens");
    assert_eq!(
        *lines.requests.lock().unwrap(),
        vec![(
            PathBuf::from("/dev/gpiochip4"),
            LINES.to_vec(),
            LineBias::PullUp
        )]
    );
    // Open contacts: the pull-up holds every line high, nothing touches.
    for stepper in 1..=4 {
        assert!(!s.read(stepper).expect("reads"), "stepper {stepper}");
    }
    // String 1's "in" sensor (line 19, stepper 3) closes to ground.
    lines.levels.lock().unwrap().insert(19, false);
    assert_eq!(
        (1..=4)
            .map(|g| s.read(g).expect("reads"))
            .collect::<Vec<_>>(),
        vec![false, false, true, false]
    );
    assert!(matches!(
        s.read(0),
        Err(SensorError::NoSensor { stepper: 0 })
    ));
    assert!(s.describe().contains("/dev/gpiochip4"), "{}", s.describe());
    assert!(
        s.describe().contains("bias pull-up, touching reads low"),
        "{}",
        s.describe()
    );
}

#[test]
fn bias_and_active_level_are_the_configurations() {
    for (text, bias) in [
        (
            "bias = \"pull-down\"\nactive_low = false\n",
            LineBias::PullDown,
        ),
        (
            "bias = \"disabled\"\nactive_low = false\n",
            LineBias::Disabled,
        ),
    ] {
        let cfg = config(text);
        let lines = pi5();
        let s = open(&cfg, &lines).expect("opens");
        assert_eq!(lines.requests.lock().unwrap()[0].2, bias, "{text}");
        lines.levels.lock().unwrap().insert(6, true);
        lines.levels.lock().unwrap().insert(26, false);
        assert!(s.read(1).expect("reads"), "high touches when active high");
        assert!(!s.read(2).expect("reads"));
    }
    // A floating line is an error naming the line, never "not touching".
    let cfg = config("bias = \"disabled\"\n");
    let s = open(&cfg, &pi5()).expect("opens");
    let e = s.read(1).expect_err("floats");
    assert!(
        e.to_string().contains("GPIO line 6") && e.to_string().contains("stepper 1"),
        "{e}"
    );
}

#[test]
fn a_configured_chip_is_used_as_given_and_the_chips_are_not_listed() {
    let cfg = config("chip = \"/dev/gpiochip0\"\n");
    let lines = pi5();
    open(&cfg, &lines).expect("opens");
    assert_eq!(*lines.listed.lock().unwrap(), 0);
    assert_eq!(
        lines.requests.lock().unwrap()[0].0,
        Path::new("/dev/gpiochip0")
    );
    let e = open(&config("chip = \"/dev/gpiochip9\"\n"), &lines).expect_err("absent");
    assert!(
        e.to_string().starts_with(
            "cannot request GPIO lines [6, 26, 19, 5] on /dev/gpiochip9: No such file"
        ),
        "{e}"
    );
}

fn found(chips: Vec<ChipInfo>) -> Result<PathBuf, String> {
    let lines = FakeLines {
        chips,
        ..FakeLines::default()
    };
    open(&config(""), &lines)
        .map(|s| s.chip().to_path_buf())
        .map_err(|e| e.to_string())
}

#[test]
fn the_chip_is_found_by_its_lines_on_every_pi() {
    let cases = [
        // Pi 5, kernels numbering the RP1 gpiochip4 or gpiochip0.
        (pi5().chips, "/dev/gpiochip4"),
        (
            vec![
                chip("/dev/gpiochip0", "pinctrl-rp1", 54, true),
                chip("/dev/gpiochip10", "gpio-brcmstb@107d508500", 32, false),
            ],
            "/dev/gpiochip0",
        ),
        // Pi 4: the header's chip and the firmware's expander (8 lines).
        (
            vec![
                chip("/dev/gpiochip0", "pinctrl-bcm2711", 58, true),
                chip("/dev/gpiochip1", "raspberrypi-exp-gpio", 8, false),
            ],
            "/dev/gpiochip0",
        ),
        // Lines not named: the header's label decides.
        (
            vec![
                chip("/dev/gpiochip0", "some-expander", 64, false),
                chip("/dev/gpiochip2", "pinctrl-bcm2835", 54, false),
            ],
            "/dev/gpiochip2",
        ),
        // Neither: the only chip with enough lines.
        (
            vec![
                chip("/dev/gpiochip0", "a", 64, false),
                chip("/dev/gpiochip1", "b", 8, false),
            ],
            "/dev/gpiochip0",
        ),
    ];
    for (chips, want) in cases {
        assert_eq!(found(chips), Ok(PathBuf::from(want)));
    }
}

#[test]
fn no_chip_or_two_candidates_ask_for_sensors_chip() {
    let e = found(vec![
        chip("/dev/gpiochip0", "a", 64, false),
        chip("/dev/gpiochip1", "b", 32, false),
    ])
    .expect_err("two fit");
    assert!(
        e.contains("2 chips qualify (enough lines)") && e.contains("set sensors.chip"),
        "{e}"
    );
    let e = found(vec![chip("/dev/gpiochip1", "b", 8, false)]).expect_err("none fits");
    assert!(e.contains("no chip has line 26"), "{e}");
    let e = found(vec![]).expect_err("no chips");
    assert!(e.contains("this host has no GPIO chip"), "{e}");
}

#[test]
fn gpio_keys_are_refused_with_other_backends_and_bad_bias_names_the_key() {
    let base = "host = \"t\"\n[[boards]]\nname = \"c\"\nport = \"/dev/x\"\nint_bytes = 2\n\
                firmware = \"v2\"\nsteppers = 13\n[layout]\nstrings = 2\nx_index = 0\n\
                z_first_index = 1\n[sensors]\n";
    let refused = |sensors: &str| {
        config::parse(&format!("{base}{sensors}"), Path::new("t.toml")).expect_err("refused")
    };
    let e = refused("backend = \"none\"\nbias = \"pull-up\"\n");
    assert_eq!(e.key(), Some("sensors.bias"), "{e}");
    let e = refused("backend = \"gpio\"\nlines = [6, 26, 19, 5]\nbias = \"up\"\n");
    assert!(e.to_string().contains("pull-up"), "{e}");
    assert_eq!(e.position().map(|p| p.line), Some(15), "{e}");
}

#[test]
fn the_resolved_configuration_writes_bias_and_active_level_and_parses_back() {
    let cfg = config("");
    let text = cfg.to_toml_string();
    assert!(text.contains("bias = \"pull-up\""), "{text}");
    assert!(text.contains("active_low = true"), "{text}");
    assert_eq!(
        config::parse(&text, Path::new("r.toml")).expect("parses"),
        cfg
    );
}

/// The X limit switches are inputs like the sensors: requested in the same
/// one request (one owner of every line), pulled up, pressed reads low.
#[test]
fn x_limit_switches_are_requested_with_the_sensors_and_read_pressed_when_low() {
    use stringdriverd::config::XSwitchWiring;
    use stringdriverd::sensors::XEnd;
    let cfg = config("x_home_line = 16\nx_away_line = 20\n");
    let lines = pi5();
    let s = open(&cfg, &lines).expect("opens");
    assert_eq!(
        *lines.requests.lock().unwrap(),
        vec![(
            PathBuf::from("/dev/gpiochip4"),
            vec![6, 26, 19, 5, 16, 20],
            LineBias::PullUp
        )],
        "one request for sensors and switches"
    );
    assert_eq!(s.x_switch_wiring(), XSwitchWiring::Two);
    // Open: pulled high, not pressed.
    assert!(!s.x_switch(XEnd::Home).expect("reads"));
    assert!(!s.x_switch(XEnd::Away).expect("reads"));
    lines.levels.lock().unwrap().insert(16, false);
    assert!(s.x_switch(XEnd::Home).expect("reads"), "home pressed");
    assert!(!s.x_switch(XEnd::Away).expect("reads"));
    assert!(!s.read(1).expect("reads"), "a switch is no sensor");
    assert!(
        s.describe().contains("home line 16, away line 20"),
        "{}",
        s.describe()
    );

    // One switch for both ends: either end reads the one line.
    let cfg = config("x_switch_line = 16\n");
    let lines = pi5();
    let s = open(&cfg, &lines).expect("opens");
    assert_eq!(lines.requests.lock().unwrap()[0].1, vec![6, 26, 19, 5, 16]);
    assert_eq!(s.x_switch_wiring(), XSwitchWiring::One);
    lines.levels.lock().unwrap().insert(16, false);
    assert!(s.x_switch(XEnd::Home).expect("reads"));
    assert!(s.x_switch(XEnd::Away).expect("reads"));

    // Without the bias a switch line floats: an error, never "not pressed".
    let cfg = config("x_switch_line = 16\nbias = \"disabled\"\n");
    let lines = pi5();
    let s = open(&cfg, &lines).expect("opens");
    let e = s.x_switch(XEnd::Home).expect_err("floats");
    assert!(
        matches!(
            &e,
            SensorError::SwitchIo {
                line: 16,
                end: XEnd::Home,
                ..
            }
        ),
        "{e}"
    );
    // No switches configured: said so.
    let s = open(&config(""), &pi5()).expect("opens");
    assert_eq!(s.x_switch_wiring(), XSwitchWiring::None);
    assert!(matches!(
        s.x_switch(XEnd::Away),
        Err(SensorError::NoXSwitch { end: XEnd::Away })
    ));
}
