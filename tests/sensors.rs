//! The touch sensors: the simulated backend against the simulator's
//! mechanism over a real pseudo-terminal, driven by the board driver, read in
//! process and over the simulator's touch socket (also from a
//! `stringdriverd sim-controller --touch-socket` child process); the
//! `sensors.simulator_sockets` key; the `none` backend's refusal; the GPIO
//! line map of the machines in service.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use stringdriverd::board::{BoardHandle, LinkState};
use stringdriverd::config::{self, Config, GpioSensorsConfig, SensorsConfig, XSwitchWiring};
use stringdriverd::protocol::Firmware;
use stringdriverd::sensors::{
    self, GpioLineMap, NoSensors, SensorError, SimulatedReaders, SimulatedSensors, TouchReader,
    TouchSensors, CONSUMER,
};
use stringdriverd::sim::touch::TouchServer;
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
    let sensors = sensors::from_config(&cfg, Some(SimulatedReaders::of(sims.clone())))
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
            Ok((0..13).map(|i| i == 4).collect())
        } else {
            Ok(Vec::new())
        }
    });
    let s = sensors::from_config(&cfg, Some(reader.clone().into())).expect("simulated");
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
    let short: TouchReader = Arc::new(|_| Ok(vec![false; 3]));
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
    assert!(e.to_string().contains("sensors.simulator_sockets"), "{e}");
}

#[test]
fn a_reader_that_fails_is_an_error_never_not_touching() {
    let cfg = carriage_config("backend = \"simulated\"\n");
    let failing: TouchReader = Arc::new(|board| Err(format!("board {board} is on fire")));
    let s = sensors::from_config(&cfg, Some(failing.into())).expect("simulated");
    let e = s.read(3).expect_err("no reading");
    assert!(
        matches!(&e, SensorError::Simulator { stepper: 3, detail } if detail == "board 0 is on fire"),
        "{e}"
    );
}

// ---------------------------------------------------------------- touch sockets

/// `backend = "simulated"` reading one touch socket per board.
fn socket_config(sockets: &[&str]) -> Config {
    let list: Vec<String> = sockets.iter().map(|s| format!("{s:?}")).collect();
    carriage_config(&format!(
        "backend = \"simulated\"\nsimulator_sockets = [{}]\n",
        list.join(", ")
    ))
}

fn path_text(p: &Path) -> &str {
    p.to_str().expect("temporary paths are UTF-8")
}

/// The bench, plus its simulator's touch sensors served on a socket and a
/// second set of sensors reading them through it, as a daemon in another
/// process would (no in-process reader: the configuration's sockets).
struct SocketBench {
    bench: Bench,
    server: Option<TouchServer>,
    over_socket: Box<dyn TouchSensors>,
    socket: PathBuf,
}

async fn socket_bench() -> SocketBench {
    let bench = bench(true).await;
    let socket = bench._dir.path().join("carriage.touch");
    let sims = bench.sims.clone();
    let server = TouchServer::spawn(&socket, move || sims[0].touching()).expect("touch server");
    let cfg = socket_config(&[path_text(&socket)]);
    let over_socket = sensors::from_config(&cfg, None).expect("sensors over the socket");
    SocketBench {
        bench,
        server: Some(server),
        over_socket,
        socket,
    }
}

impl SocketBench {
    /// Every Z stepper read both ways, and as the simulator says; all three
    /// must agree.
    fn agree(&self) -> Vec<bool> {
        let truth = self.bench.sim().touching();
        let in_process: Vec<bool> = (1..=12)
            .map(|g| self.bench.sensors.read(g).expect("in process"))
            .collect();
        let over_socket: Vec<bool> = (1..=12)
            .map(|g| self.over_socket.read(g).expect("over the socket"))
            .collect();
        assert_eq!(over_socket, in_process);
        assert_eq!(over_socket, truth[1..=12].to_vec());
        over_socket
    }
}

#[tokio::test]
async fn the_socket_reader_agrees_with_the_simulator_as_the_mechanism_moves() {
    let b = socket_bench().await;
    let sim = b.bench.sim();
    let mut contacts = sim.contacts();
    contacts[3] = Some(-6);
    contacts[9] = Some(-100);
    sim.set_contacts(&contacts);
    let first = b.agree();
    assert!(!first[2] && first[3] && !first[8], "{first:?}");
    assert!(
        b.over_socket.describe().contains("carriage.touch"),
        "{}",
        b.over_socket.describe()
    );

    // Lower stepper 3 onto its string, reading over the socket.
    let mut moves = 0;
    while !b.over_socket.read(3).expect("read") {
        assert!(moves < 10, "never touched");
        b.bench.board.rmove(3, Z_DOWN_STEP).await.expect("rmove");
        moves += 1;
        b.agree();
    }
    assert_eq!(moves, 3);
    assert_eq!(sim.physical()[3], -6);

    // Lift it off again, and every Z stepper off its string.
    b.bench.board.rmove(3, 2).await.expect("rmove");
    assert!(!b.agree()[2]);
    for z in 1..=12 {
        b.bench.board.rmove(z, 4).await.expect("rmove");
    }
    assert_eq!(b.agree(), vec![false; 12]);

    // Stuck sensors read what they are stuck at, over the socket too.
    sim.inject(Fault::SensorStuck {
        stepper: 5,
        touching: Some(true),
    });
    sim.inject(Fault::SensorStuck {
        stepper: 6,
        touching: Some(false),
    });
    let stuck = b.agree();
    assert!(stuck[4] && !stuck[5], "{stuck:?}");
    b.bench.board.rmove(6, -4).await.expect("rmove");
    assert!(!b.agree()[5], "stuck clear on its string");
    sim.inject(Fault::SensorStuck {
        stepper: 6,
        touching: None,
    });
    assert!(b.agree()[5], "healthy again: on its string");
    assert!(sim.violations().is_empty());
}

#[tokio::test]
async fn a_socket_whose_server_is_gone_is_an_error_naming_it() {
    let mut b = socket_bench().await;
    assert!(b.over_socket.read(1).expect("served"), "default contact 0");
    if let Some(server) = b.server.take() {
        server.stop();
    }
    assert!(!b.socket.exists(), "the server removes its socket");
    // The cached connection is closed and the reconnect finds nothing.
    let e = b.over_socket.read(1).expect_err("no server");
    match &e {
        SensorError::Simulator { stepper: 1, detail } => {
            assert!(detail.contains(path_text(&b.socket)), "{detail}");
            assert!(detail.contains("cannot connect"), "{detail}");
        }
        other => panic!("not a simulator error: {other}"),
    }

    // A server back at the same path is found again.
    let sims = b.bench.sims.clone();
    let _server =
        TouchServer::spawn(&b.socket, move || sims[0].touching()).expect("touch server again");
    assert!(b.over_socket.read(1).expect("served again"));
}

#[test]
fn a_socket_that_never_existed_or_nobody_serves_is_an_error_naming_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("missing.touch");
    let stale = dir.path().join("stale.touch");
    // A socket file left by a crashed simulator: nobody listens.
    drop(std::os::unix::net::UnixListener::bind(&stale).expect("bind"));
    for (path, why) in [(&missing, "No such file"), (&stale, "refused")] {
        let cfg = socket_config(&[path_text(path)]);
        let s = sensors::from_config(&cfg, None).expect("built without connecting");
        let e = s.read(4).expect_err("nothing to read");
        let text = e.to_string();
        assert!(
            matches!(&e, SensorError::Simulator { stepper: 4, .. }),
            "{text}"
        );
        assert!(text.contains(path_text(path)), "{text}");
        assert!(text.contains(why), "{text}");
    }

    // A board whose entry is "": its sensors have no source.
    let reader = SimulatedSensors::reader_from_sockets(vec![None]);
    let e = reader(0).expect_err("no socket");
    assert!(e.contains("simulator_sockets"), "{e}");
    let e = reader(1).expect_err("no such board");
    assert!(e.contains("simulator_sockets"), "{e}");
}

/// What a fake simulator answers to a request line (`None`: nothing).
type Reply = fn(&str) -> Option<String>;

/// A fake simulator process on `path`: answers every line with what `reply`
/// returns. Stops with the test process.
fn fake_server(path: &Path, reply: Reply) {
    let listener = std::os::unix::net::UnixListener::bind(path).expect("bind");
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            std::thread::spawn(move || {
                let mut out = match stream.try_clone() {
                    Ok(s) => s,
                    Err(_) => return,
                };
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { return };
                    if let Some(r) = reply(&line) {
                        if out.write_all(r.as_bytes()).is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
}

#[test]
fn a_server_that_answers_garbage_or_nothing_is_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cases: [(&str, Reply, &str); 4] = [
        ("garbage", |_| Some("hello there\n".into()), "bad reply"),
        (
            "short",
            |_| Some("01\n".into()),
            "no simulated sensor at stepper",
        ),
        (
            "refusing",
            |_| Some("error busy\n".into()),
            "refused the request: busy",
        ),
        ("silent", |_| None, "no reply within"),
    ];
    for (name, reply, fragment) in cases {
        let path = dir.path().join(format!("{name}.touch"));
        fake_server(&path, reply);
        let s = sensors::from_config(&socket_config(&[path_text(&path)]), None).expect("built");
        let started = Instant::now();
        let e = s.read(5).expect_err("no usable reading");
        let text = e.to_string();
        assert!(
            matches!(&e, SensorError::Simulator { stepper: 5, .. }),
            "{name}: {text}"
        );
        assert!(text.contains(fragment), "{name}: {text}");
        assert!(text.contains(path_text(&path)), "{name}: {text}");
        // Two attempts at most (cached connection, then a fresh one), each
        // bounded by the read timeout.
        assert!(
            started.elapsed() < 3 * sensors::SOCKET_READ_TIMEOUT + Duration::from_secs(1),
            "{name}: took {:?}",
            started.elapsed()
        );
    }
}

#[test]
fn sockets_in_the_file_are_not_used_when_the_simulators_run_here() {
    let cfg = socket_config(&["/nonexistent/carriage.touch"]);
    let here: TouchReader = Arc::new(|_| Ok((0..13).map(|i| i == 2).collect()));
    let s = sensors::from_config(&cfg, Some(here.into())).expect("simulated");
    assert!(s.read(2).expect("in process") && !s.read(3).expect("in process"));
}

#[test]
fn simulator_sockets_one_absolute_path_per_board_with_the_simulated_backend_only() {
    let parse = |sensors: &str| {
        let text = format!(
            "host = \"t\"\n\
             [[boards]]\nname = \"carriage\"\nport = \"/dev/null\"\nint_bytes = 2\n\
             firmware = \"v2\"\nsteppers = 13\n\
             [[boards]]\nname = \"tuner\"\nport = \"/dev/zero\"\nint_bytes = 4\n\
             firmware = \"tuner\"\nsteppers = 6\n\
             [layout]\nstrings = 6\nx_index = 0\nz_first_index = 1\ntuner_first_index = 13\n\
             [sensors]\n{sensors}"
        );
        config::parse(&text, Path::new("t.toml"))
    };
    let c = parse("backend = \"simulated\"\nsimulator_sockets = [\"/run/sim/c.touch\", \"\"]\n")
        .expect("valid");
    let want = SensorsConfig::Simulated {
        sockets: vec![Some(PathBuf::from("/run/sim/c.touch")), None],
        x_switches: XSwitchWiring::None,
    };
    assert_eq!(c.sensors, want);
    // What check-config prints reads back the same.
    let again = config::parse(&c.to_toml_string(), Path::new("again.toml")).expect("round trip");
    assert_eq!(again.sensors, want);
    let c = parse("backend = \"simulated\"\n").expect("valid");
    assert_eq!(
        c.sensors,
        SensorsConfig::Simulated {
            sockets: vec![],
            x_switches: XSwitchWiring::None
        }
    );

    let rejects = |sensors: &str, key: &str, fragment: &str| {
        let e = parse(sensors).expect_err("should be rejected");
        assert_eq!(e.key(), Some(key), "{e}");
        assert!(e.to_string().contains(fragment), "`{fragment}` not in: {e}");
    };
    rejects(
        "backend = \"simulated\"\nsimulator_sockets = [\"/run/sim/c.touch\"]\n",
        "sensors.simulator_sockets",
        "has 1 entries but there are 2 [[boards]]",
    );
    rejects(
        "backend = \"simulated\"\nsimulator_sockets = [\"/a\", \"\", \"/b\"]\n",
        "sensors.simulator_sockets",
        "one socket path per board",
    );
    rejects(
        "backend = \"simulated\"\nsimulator_sockets = [\"\", \"sim/tuner.touch\"]\n",
        "sensors.simulator_sockets[1]",
        "must be an absolute path, not \"sim/tuner.touch\"",
    );
    rejects(
        "backend = \"simulated\"\nsimulator_sockets = [\"/a.touch\", \"/a.touch\"]\n",
        "sensors.simulator_sockets",
        "given twice",
    );
    for backend in ["none", "gpio"] {
        rejects(
            &format!("backend = \"{backend}\"\nsimulator_sockets = [\"/a\", \"/b\"]\n"),
            "sensors.simulator_sockets",
            &format!("only used with sensors.backend = \"simulated\" (simulated hardware), but the backend is \"{backend}\""),
        );
    }
    rejects(
        "simulator_sockets = [\"/a\", \"/b\"]\n",
        "sensors.simulator_sockets",
        "the backend is \"none\"",
    );
}

/// A child process killed when the test ends, however it ends.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn sim_controller_serves_its_touch_sensors_to_another_process() {
    let dir = tempfile::tempdir().expect("tempdir");
    let link = dir.path().join("ttySIM");
    let socket = dir.path().join("sim/carriage.touch");
    let mut child = Child(
        std::process::Command::new(env!("CARGO_BIN_EXE_stringdriverd"))
            .args(["sim-controller", "--profile", "v2", "--speed-scale", "20"])
            .arg("--link")
            .arg(&link)
            .arg("--touch-socket")
            .arg(&socket)
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("sim-controller starts"),
    );
    let cfg = socket_config(&[path_text(&socket)]);
    let s = sensors::from_config(&cfg, None).expect("sensors over the socket");
    // The socket appears once the child is up; until then a read fails.
    let deadline = Instant::now() + WAIT;
    let first = loop {
        match s.read(1) {
            Ok(t) => break t,
            Err(e) => {
                assert!(
                    matches!(child.0.try_wait(), Ok(None)),
                    "sim-controller exited"
                );
                assert!(Instant::now() < deadline, "never served: {e}");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    };
    // The simulator's mechanism and contacts start at 0: on the strings.
    assert!(first);
    let all: Vec<bool> = (1..=12).map(|g| s.read(g).expect("read")).collect();
    assert_eq!(all, vec![true; 12]);
    let raw = SimulatedSensors::reader_from_sockets(vec![Some(socket.clone())]);
    let readings = raw(0).expect("raw readings");
    assert_eq!(readings.len(), 13, "one per stepper of the v2 board");
    assert!(!readings[0], "X has no string");

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.0.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("signal");
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = child.0.try_wait().expect("try_wait") {
            break status;
        }
        assert!(Instant::now() < deadline, "sim-controller does not stop");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "exit {status:?}");
    assert!(!socket.exists(), "the touch socket is removed on exit");
    let e = s.read(1).expect_err("gone");
    assert!(e.to_string().contains(path_text(&socket)), "{e}");
}

// ---------------------------------------------------------------- none

#[test]
fn no_sensors_refuse_every_read_with_a_clear_message() {
    for text in ["", "backend = \"none\"\n"] {
        let cfg = carriage_config(text);
        assert_eq!(cfg.sensors, SensorsConfig::None);
        // A simulator offered anyway is not used: the configuration decides.
        let reader: TouchReader = Arc::new(|_| Ok(vec![true; 13]));
        let s = sensors::from_config(&cfg, Some(reader.into())).expect("none");
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
    assert_eq!(map.chip(), None, "found by its lines");
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
        d.contains("the chip that has the lines") && d.contains("bias pull-up, touching reads low"),
        "{d}"
    );
}

#[test]
fn stringdriver_1_and_3_lines_skip_tuners_x_and_unused_steppers() {
    let sd1 =
        "host = \"stringdriver-1\"\n[[boards]]\nname = \"carriage\"\nport = \"/dev/ttyACM0\"\n\
               int_bytes = 2\nfirmware = \"v1\"\nsteppers = 7\n[layout]\nstrings = 2\n\
               tuner_first_index = 0\ntuner_min = -25000\ntuner_max = 25000\nx_index = 2\n\
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
    let low = GpioLineMap::new(&cfg.layout, &g).expect("map");
    assert!(low.touching(false) && !low.touching(true));
    g.active_low = false;
    let high = GpioLineMap::new(&cfg.layout, &g).expect("map");
    assert!(high.touching(true) && !high.touching(false));
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
        g.chip = Some(chip.clone());
    }
    let e = sensors::from_config(&cfg, None)
        .err()
        .expect("no such chip");
    match &e {
        SensorError::Request { chip: c, lines, .. } => {
            assert_eq!(c, &chip);
            // The sensors' lines, then the X switches' (home 16, away 26):
            // one request for every input.
            assert_eq!(
                lines,
                &[8, 17, 18, 27, 10, 13, 24, 21, 5, 19, 11, 20, 16, 26]
            );
        }
        other => panic!("not a request error: {other}"),
    }
    assert!(e.to_string().contains("gpiochip-absent"), "{e}");
}

// ---------------------------------------------------------------- X limit switches

/// The simulated carriage's limit switches, read in-process and over the
/// touch socket, follow where the carriage physically is; a socket that is
/// gone is an error, never "not pressed".
#[test]
fn simulated_x_switches_follow_the_carriage_in_process_and_over_the_socket() {
    use stringdriverd::sensors::XEnd;
    let (dir, sim) = start_sim(sim_options(Firmware::V2));
    let sims = Arc::new(vec![sim]);
    let two = sensors::from_config(
        &carriage_config("backend = \"simulated\"\nx_switches = \"two\"\n"),
        Some(SimulatedReaders::of(sims.clone())),
    )
    .expect("simulated");
    let one = sensors::from_config(
        &carriage_config("backend = \"simulated\"\nx_switches = \"one\"\n"),
        Some(SimulatedReaders::of(sims.clone())),
    )
    .expect("simulated");
    let socket = dir.path().join("carriage.touch");
    let (s1, s2) = (sims.clone(), sims.clone());
    let server = TouchServer::spawn_with_switches(
        &socket,
        move || s1[0].touching(),
        move || s2[0].x_switches(),
    )
    .expect("touch server");
    let remote = sensors::from_config(
        &carriage_config(&format!(
            "backend = \"simulated\"\nx_switches = \"two\"\nsimulator_sockets = [\"{}\"]\n",
            path_text(&socket)
        )),
        None,
    )
    .expect("over the socket");
    let read = |s: &dyn TouchSensors| {
        (
            s.x_switch(XEnd::Home).expect("home"),
            s.x_switch(XEnd::Away).expect("away"),
        )
    };
    let mut physical = sims[0].physical();
    for (x, want_two, want_one) in [
        (0, (true, false), (true, true)),
        (1300, (false, false), (false, false)),
        (2600, (false, true), (true, true)),
    ] {
        physical[0] = x;
        sims[0].set_physical(&physical);
        assert_eq!(read(two.as_ref()), want_two, "X at {x}");
        assert_eq!(read(remote.as_ref()), want_two, "X at {x}, over the socket");
        assert_eq!(read(one.as_ref()), want_one, "X at {x}, one switch");
    }
    // A disconnected home switch reads open wherever the carriage is.
    physical[0] = -5;
    sims[0].set_physical(&physical);
    sims[0].inject(Fault::XSwitchStuck {
        away: false,
        pressed: Some(false),
    });
    assert_eq!(read(remote.as_ref()), (false, false));
    // Without the wiring configured, there are no switches to read.
    let none = sensors::from_config(
        &carriage_config("backend = \"simulated\"\n"),
        Some(SimulatedReaders::of(sims.clone())),
    )
    .expect("simulated");
    assert!(matches!(
        none.x_switch(XEnd::Home),
        Err(SensorError::NoXSwitch { end: XEnd::Home })
    ));
    server.stop();
    let e = remote.x_switch(XEnd::Home).expect_err("socket gone");
    assert!(
        matches!(&e, SensorError::Simulator { stepper: 0, .. }),
        "{e}"
    );
    assert!(e.to_string().contains("carriage.touch"), "{e}");
}
