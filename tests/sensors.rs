//! The touch sensors: the simulated backend against the simulator's
//! mechanism over a real pseudo-terminal, driven by the board driver; the
//! `none` backend's refusal; the GPIO line map of the machines in service.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use stringdriverd::board::{BoardHandle, LinkState};
use stringdriverd::config::{self, Config, GpioSensorsConfig, SensorsConfig};
use stringdriverd::protocol::Firmware;
use stringdriverd::sensors::{
    self, GpioLineMap, NoSensors, SensorError, SimulatedSensors, TouchReader, TouchSensors,
    CONSUMER,
};
use stringdriverd::sim::{Fault, SimHandle, TraceEvent};

const WAIT: Duration = Duration::from_secs(10);

/// Steps a move toward the string takes on the machines (operations.md).
const Z_DOWN_STEP: i32 = -2;

/// A one-board v2 machine with 6 strings (X 0, Z 1..=12).
fn carriage_config(sensors: &str) -> Config {
    let text = format!(
        "host = \"t\"\n\
         [[boards]]\nname = \"carriage\"\nport = \"/dev/null\"\nint_bytes = 2\n\
         firmware = \"v2\"\nsteppers = 13\n\
         [layout]\nstrings = 6\nx_index = 0\nz_first_index = 1\n\
         [sensors]\n{sensors}"
    );
    config::parse(&text, Path::new("t.toml")).expect("test configuration parses")
}

/// The driver and the simulator behind it, with the simulated sensors of a
/// one-board machine reading that simulator.
struct Bench {
    board: BoardHandle,
    sims: Arc<Vec<SimHandle>>,
    sensors: Box<dyn TouchSensors>,
    // Kept for their Drop: the temporary directory holds the link, and the
    // task stops when the token fires.
    _dir: tempfile::TempDir,
    shutdown: tokio_util::sync::CancellationToken,
}

impl Bench {
    fn sim(&self) -> &SimHandle {
        &self.sims[0]
    }
}

impl Drop for Bench {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn bench(restore_counters_after_reset: bool) -> Bench {
    let r = rig_with(
        sim_options(Firmware::V2),
        |s| s.restore_counters_after_reset = restore_counters_after_reset,
        None,
    )
    .await;
    connected(&r.board).await;
    let sims = Arc::new(vec![r.sim]);
    let cfg = carriage_config("backend = \"simulated\"\n");
    let sensors = sensors::from_config(&cfg, Some(SimulatedSensors::reader(sims.clone())))
        .expect("simulated sensors");
    Bench {
        board: r.board,
        sims,
        sensors,
        _dir: r.dir,
        shutdown: r.shutdown,
    }
}

/// Moves `stepper` toward its string one z_down_step at a time until its
/// sensor reads touching (at most `bound` moves); returns the moves made.
async fn lower_until_touching(b: &Bench, stepper: usize, bound: usize) -> usize {
    for moves in 0..=bound {
        if b.sensors.read(stepper).expect("Z stepper has a sensor") {
            return moves;
        }
        b.board.rmove(stepper, Z_DOWN_STEP).await.expect("rmove");
    }
    panic!("stepper {stepper} never touched in {bound} moves");
}

#[tokio::test]
async fn simulated_sensor_follows_the_mechanism_not_the_counter() {
    let b = bench(true).await;
    // The string of Z stepper 3 six steps below where the mechanism starts.
    let mut contacts = b.sim().contacts();
    contacts[3] = Some(-6);
    b.sim().set_contacts(&contacts);
    assert!(!b.sensors.read(3).unwrap(), "clear of the string at first");
    assert!(
        b.sensors.read(4).unwrap(),
        "default contact 0: touching at 0"
    );

    let moves = lower_until_touching(&b, 3, 10).await;
    assert_eq!(moves, 3);
    assert_eq!(b.sim().physical()[3], -6);
    assert_eq!(b.board.poll().await.expect("poll")[3], -6);

    // set_stepper rewrites the counter; the mechanism stays on the string.
    let p = b.board.set_stepper(3, 50).await.expect("set_stepper");
    assert_eq!(p[3], 50);
    assert_eq!(b.sim().counters()[3], 50);
    assert_eq!(b.sim().physical()[3], -6);
    assert!(
        b.sensors.read(3).unwrap(),
        "still touching after set_stepper"
    );

    // A move goes from where the mechanism is, by what the counter says.
    let p = b.board.rmove(3, 2).await.expect("rmove");
    assert_eq!(p[3], 52);
    assert_eq!(b.sim().physical()[3], -4);
    assert!(!b.sensors.read(3).unwrap(), "lifted clear of the string");
    let p = b.board.amove(3, 50).await.expect("amove");
    assert_eq!(p[3], 50);
    assert_eq!(b.sim().physical()[3], -6);
    assert!(b.sensors.read(3).unwrap());
    assert!(b.sim().violations().is_empty());
}

#[tokio::test]
async fn a_reset_zeroes_counters_but_leaves_the_sensor() {
    let b = bench(false).await;
    let mut contacts = b.sim().contacts();
    contacts[5] = Some(-4);
    b.sim().set_contacts(&contacts);
    lower_until_touching(&b, 5, 10).await;
    assert_eq!(b.sim().counters()[5], -4);

    let before = b.board.status().resets_detected;
    b.sim().inject(Fault::Reset);
    let s = b
        .board
        .wait_for(WAIT, |s| {
            s.resets_detected > before && s.link == LinkState::Connected
        })
        .await
        .expect("the reset is detected");
    assert_eq!(s.positions.as_ref().map(|p| p[5]), Some(0));
    assert!(!s.trusted[5], "the counter after a reset is not trusted");
    assert_eq!(b.sim().physical()[5], -4);
    assert!(b.sensors.read(5).unwrap(), "the mechanism did not move");
}

#[tokio::test]
async fn a_stuck_sensor_reads_what_it_is_stuck_at() {
    let b = bench(true).await;
    let mut contacts = b.sim().contacts();
    contacts[7] = Some(-100);
    b.sim().set_contacts(&contacts);
    assert!(!b.sensors.read(7).unwrap());

    b.sim().inject(Fault::SensorStuck {
        stepper: 7,
        touching: Some(true),
    });
    assert!(b.sensors.read(7).unwrap(), "stuck touching");
    // Moving away changes nothing for a stuck switch.
    b.board.rmove(7, 10).await.expect("rmove");
    assert!(b.sensors.read(7).unwrap());
    assert!(b.sensors.read(8).unwrap(), "the other sensors still work");

    b.sim().inject(Fault::SensorStuck {
        stepper: 8,
        touching: Some(false),
    });
    assert!(!b.sensors.read(8).unwrap(), "stuck clear on the string");

    for stepper in [7, 8] {
        b.sim().inject(Fault::SensorStuck {
            stepper,
            touching: None,
        });
    }
    assert!(!b.sensors.read(7).unwrap(), "healthy again: clear at 10");
    assert!(b.sensors.read(8).unwrap(), "healthy again: at its string");
    let faults = b
        .sim()
        .trace()
        .iter()
        .filter(|e| matches!(e.event, TraceEvent::Fault(Fault::SensorStuck { .. })))
        .count();
    assert_eq!(faults, 4, "every sensor fault is in the trace");
}

#[tokio::test]
async fn only_z_steppers_have_sensors() {
    let b = bench(true).await;
    for stepper in [0, 13, 99] {
        let e = b.sensors.read(stepper).expect_err("no sensor");
        assert!(
            matches!(e, SensorError::NoSensor { stepper: s } if s == stepper),
            "{e}"
        );
    }
    assert!(b.sensors.describe().contains("12 Z steppers"));
}

#[test]
fn simulated_sensors_address_boards_by_global_index() {
    // stringdriver-2's layout: carriage 0..=12 (Z 1..=12), tuner 13..=18.
    let text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("config/demo.toml"))
            .expect("demo config");
    let cfg = config::parse(&text, Path::new("demo.toml")).expect("demo parses");
    let asked = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = asked.clone();
    let reader: TouchReader = Arc::new(move |board| {
        seen.lock().unwrap_or_else(|e| e.into_inner()).push(board);
        // Board 0: only local stepper 4 touches; board 1 has no simulator.
        if board == 0 {
            (0..13).map(|i| i == 4).collect()
        } else {
            Vec::new()
        }
    });
    let s = sensors::from_config(&cfg, Some(reader.clone())).expect("simulated");
    let readings: Vec<bool> = (1..=12).map(|g| s.read(g).unwrap()).collect();
    let mut want = vec![false; 12];
    want[3] = true;
    assert_eq!(readings, want);
    for g in [0, 13, 18, 19] {
        assert!(
            matches!(s.read(g), Err(SensorError::NoSensor { .. })),
            "{g}"
        );
    }
    assert!(asked
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .all(|&b| b == 0));

    // A layout whose Z steppers are on a board the reader knows nothing of.
    let short: TouchReader = Arc::new(|_| vec![false; 3]);
    let s = SimulatedSensors::new(&cfg.layout, short);
    assert!(!s.read(2).unwrap());
    let e = s.read(5).expect_err("no reading");
    assert!(
        matches!(e, SensorError::Simulator { stepper: 5, .. }),
        "{e}"
    );
}

#[test]
fn simulated_backend_needs_a_simulator() {
    let cfg = carriage_config("backend = \"simulated\"\n");
    let e = sensors::from_config(&cfg, None).err().expect("refused");
    assert!(matches!(e, SensorError::NoSimulator), "{e}");
    assert!(e.to_string().contains("demo and tests"), "{e}");
}

// ---------------------------------------------------------------- none

#[test]
fn no_sensors_refuse_every_read_with_a_clear_message() {
    for text in ["", "backend = \"none\"\n"] {
        let cfg = carriage_config(text);
        assert_eq!(cfg.sensors, SensorsConfig::None);
        // A simulator offered anyway is not used: the configuration decides.
        let reader: TouchReader = Arc::new(|_| vec![true; 13]);
        let s = sensors::from_config(&cfg, Some(reader)).expect("none");
        for stepper in [0, 1, 12, 50] {
            let e = s.read(stepper).expect_err("disabled");
            assert!(matches!(e, SensorError::Disabled), "{e}");
            assert_eq!(
                e.to_string(),
                "touch sensors are disabled (sensors.backend = none): this operation needs them"
            );
        }
        assert!(s.describe().contains("none"));
    }
    assert!(matches!(NoSensors.read(1), Err(SensorError::Disabled)));
}

// ---------------------------------------------------------------- gpio

fn example() -> Config {
    config::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("config/stringdriver.example.toml"))
        .expect("example loads")
}

fn gpio(cfg: &Config) -> &GpioSensorsConfig {
    match &cfg.sensors {
        SensorsConfig::Gpio(g) => g,
        other => panic!("not gpio: {other:?}"),
    }
}

#[test]
fn stringdriver_2_lines_map_to_its_z_steppers() {
    let cfg = example();
    let map = GpioLineMap::new(&cfg.layout, gpio(&cfg)).expect("map");
    assert_eq!(map.chip(), Path::new("/dev/gpiochip0"));
    assert_eq!(
        map.offsets(),
        &[8, 17, 18, 27, 10, 13, 24, 21, 5, 19, 11, 20]
    );
    // Global Z steppers 1..=12: string 0 in, string 0 out, string 1 in, ...
    let lines: Vec<u32> = (1..=12).map(|g| map.line(g).expect("Z")).collect();
    assert_eq!(lines, map.offsets());
    assert_eq!(cfg.layout.z_pair(2), (5, 6));
    assert_eq!((map.line(5).unwrap(), map.line(6).unwrap()), (10, 13));
    for g in [0, 13, 18, 19, 1000] {
        assert!(
            matches!(map.line(g), Err(SensorError::NoSensor { stepper }) if stepper == g),
            "{g}"
        );
    }
    assert_eq!(CONSUMER, "stringdriverd");
    let d = map.describe();
    assert!(
        d.contains("/dev/gpiochip0") && d.contains("reads high"),
        "{d}"
    );
}

#[test]
fn stringdriver_1_and_3_lines_skip_tuners_x_and_unused_steppers() {
    let sd1 =
        "host = \"stringdriver-1\"\n[[boards]]\nname = \"carriage\"\nport = \"/dev/ttyACM0\"\n\
               int_bytes = 2\nfirmware = \"v1\"\nsteppers = 7\n[layout]\nstrings = 2\n\
               tuner_first_index = 0\ntuner_min = -30000\ntuner_max = 30000\nx_index = 2\n\
               x_max = 2396\nz_first_index = 3\n[sensors]\nbackend = \"gpio\"\n\
               chip = \"/dev/gpiochip0\"\nlines = [6, 26, 19, 5]\n";
    let cfg = config::parse(sd1, Path::new("sd1.toml")).expect("sd1");
    let map = GpioLineMap::new(&cfg.layout, gpio(&cfg)).expect("map");
    let lines: Vec<Option<u32>> = (0..7).map(|g| map.line(g).ok()).collect();
    assert_eq!(
        lines,
        [None, None, None, Some(6), Some(26), Some(19), Some(5)]
    );

    let sd3 =
        "host = \"stringdriver-3\"\n[[boards]]\nname = \"carriage\"\nport = \"/dev/ttyUSB0\"\n\
               int_bytes = 2\nfirmware = \"v2\"\nsteppers = 13\n[layout]\nstrings = 4\n\
               x_index = 0\nx_max = 0\nz_first_index = 1\n[sensors]\nbackend = \"gpio\"\n\
               chip = \"/dev/gpiochip0\"\nlines = [8, 17, 18, 27, 10, 13, 24, 21]\n\
               active_low = true\n";
    let cfg = config::parse(sd3, Path::new("sd3.toml")).expect("sd3");
    let map = GpioLineMap::new(&cfg.layout, gpio(&cfg)).expect("map");
    let lines: Vec<Option<u32>> = (0..13).map(|g| map.line(g).ok()).collect();
    assert_eq!(
        lines,
        [
            None,
            Some(8),
            Some(17),
            Some(18),
            Some(27),
            Some(10),
            Some(13),
            Some(24),
            Some(21),
            None,
            None,
            None,
            None
        ]
    );
    assert!(map.active_low());
    assert!(map.describe().contains("reads low"));
}

#[test]
fn the_active_level_decides_what_touching_reads() {
    let cfg = example();
    let mut g = gpio(&cfg).clone();
    let high = GpioLineMap::new(&cfg.layout, &g).expect("map");
    assert!(high.touching(true) && !high.touching(false));
    g.active_low = true;
    let low = GpioLineMap::new(&cfg.layout, &g).expect("map");
    assert!(low.touching(false) && !low.touching(true));
}

#[test]
fn a_hand_built_gpio_configuration_that_does_not_fit_is_refused() {
    let cfg = example();
    let mut g = gpio(&cfg).clone();
    g.lines.pop();
    let e = GpioLineMap::new(&cfg.layout, &g).expect_err("11 lines for 12");
    assert!(matches!(e, SensorError::Misconfigured { .. }), "{e}");
    let mut g = gpio(&cfg).clone();
    g.lines[11] = g.lines[0];
    let e = GpioLineMap::new(&cfg.layout, &g).expect_err("duplicate");
    assert!(e.to_string().contains("line 8"), "{e}");
}

#[cfg(not(feature = "gpio"))]
#[test]
fn gpio_backend_without_the_feature_says_how_to_get_it() {
    let e = sensors::from_config(&example(), None)
        .err()
        .expect("not built");
    assert!(matches!(e, SensorError::GpioNotBuilt), "{e}");
    assert!(e.to_string().contains("--features gpio"), "{e}");
}

#[cfg(feature = "gpio")]
#[test]
fn gpio_request_on_a_missing_chip_names_chip_and_lines() {
    let mut cfg = example();
    let dir = tempfile::tempdir().expect("tempdir");
    let chip = dir.path().join("gpiochip-absent");
    if let SensorsConfig::Gpio(g) = &mut cfg.sensors {
        g.chip = chip.clone();
    }
    let e = sensors::from_config(&cfg, None)
        .err()
        .expect("no such chip");
    match &e {
        SensorError::Request { chip: c, lines, .. } => {
            assert_eq!(c, &chip);
            assert_eq!(lines, &[8, 17, 18, 27, 10, 13, 24, 21, 5, 19, 11, 20]);
        }
        other => panic!("not a request error: {other}"),
    }
    assert!(e.to_string().contains("gpiochip-absent"), "{e}");
}
