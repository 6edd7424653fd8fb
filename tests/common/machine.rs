//! The simulated stringdriver-2 every daemon-level test runs against: the
//! configuration text, both simulated boards on real pseudo-terminals, their
//! touch sensors on Unix sockets, a simulated audmon feed, and the daemon
//! in-process (`daemon::run_with_shipping`). The daemon, control, compat and
//! soak tests share it, so that a change of the machine or of the daemon's
//! start-up is made in one place.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use stringdriverd::board::LinkState;
use stringdriverd::config::Layout;
use stringdriverd::daemon::{self, Parts, Shipping};
use stringdriverd::protocol::Firmware;
use stringdriverd::sim::feed::{partials_for_distance, FeedWriter};
use stringdriverd::sim::touch::TouchServer;
use stringdriverd::sim::{Profile, SimHandle, SimOptions, Simulator};

/// How long a test waits for the daemon to reach a state before it fails.
pub const WAIT: Duration = Duration::from_secs(20);
/// The boards of the simulated machine: name and firmware, in stepper order.
pub const BOARDS: [(&str, Firmware); 2] = [("carriage", Firmware::V2), ("tuner", Firmware::Tuner)];
/// Strings (and audmon channels) of the simulated machine.
pub const STRINGS: usize = 6;
/// Partials per channel of the simulated audmon.
pub const PARTIALS: usize = 12;
/// Steppers of the simulated machine: 13 on the carriage board, 6 tuners.
pub const STEPPERS: usize = 19;
/// The carriage board's port as the lab's tools name it (`compat.port`).
pub const LEGACY_PORT: &str = "/dev/ttyACM0";

/// What the audmon feed of a simulated machine does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeedMode {
    /// One fixed frame ([`static_frame`]), written once.
    Static,
    /// A frame every 20 ms that follows how far each Z mechanism really is
    /// from its string (the demo's model), so operations hear their moves.
    Live,
}

/// The knobs the tests turn; everything else is the same for all of them.
#[derive(Debug, Clone)]
pub struct MachineOptions {
    /// `host` of the configuration (each test file its own, so rows never mix).
    pub host: String,
    /// `database.url`; `None` points at a port where nothing listens.
    pub db_url: Option<String>,
    /// `operations.z_rest` in seconds.
    pub z_rest: f64,
    /// `snapshot.interval`.
    pub snapshot_interval: String,
    /// `snapshot.link = "latest"` with a 1 h `link_max_age`.
    pub link_latest: bool,
    /// `feed.stale_after`.
    pub stale_after: String,
    /// Simulated touch sensors served on Unix sockets (`[sensors]`).
    pub sensors: bool,
    /// The stepper GUI's socket (`[compat]`) for the carriage board, named
    /// after [`LEGACY_PORT`], in `gui/` ([`SimMachine::gui_socket`]).
    pub compat: bool,
    /// What the simulated audmon writes.
    pub feed: FeedMode,
    /// Mechanisms start where the demo's starting pose puts them (Z 20 steps
    /// above their strings) instead of at 0 (touching).
    pub demo_physics: bool,
    /// More `[operations]` lines (configuration-only keys such as
    /// `sweep_max_calibrations = 1`).
    pub operations_extra: String,
    /// `sensors.x_switches` (with `sensors`): how the simulated carriage's
    /// limit switches are wired ("two", "one", "none"); unset: not written.
    pub x_switches: Option<&'static str>,
    /// `layout.x_max`; the simulated away switch is put there too. Unset:
    /// the default, 2600, where the simulator's away switch is.
    pub x_max: Option<i32>,
}

impl MachineOptions {
    /// The defaults: a 100 ms snapshot timer, a static feed, no sensors.
    pub fn new(host: &str) -> MachineOptions {
        MachineOptions {
            host: host.to_string(),
            db_url: None,
            z_rest: 0.05,
            snapshot_interval: "100ms".into(),
            link_latest: false,
            stale_after: "5s".into(),
            sensors: false,
            compat: false,
            feed: FeedMode::Static,
            demo_physics: false,
            operations_extra: String::new(),
            x_switches: None,
            x_max: None,
        }
    }

    /// The configuration file of this machine with its files under `dir`.
    pub fn config_text(&self, dir: &Path) -> String {
        let d = dir.display();
        let host = &self.host;
        let mut boards = String::new();
        for (name, fw) in BOARDS {
            let (int_bytes, steppers, firmware) = match fw {
                Firmware::Tuner => (4, 6, "tuner"),
                _ => (2, 13, "v2"),
            };
            boards.push_str(&format!(
                r#"
[[boards]]
name = "{name}"
port = "{d}/{name}"
int_bytes = {int_bytes}
firmware = "{firmware}"
steppers = {steppers}
reset_wait = "150ms"
poll_interval = "50ms"
reply_timeout = "300ms"
move_margin = "30ms"
"#
            ));
        }
        let db = self
            .db_url
            .clone()
            .unwrap_or_else(|| "postgres://nobody@127.0.0.1:1/unused".into());
        let link = if self.link_latest {
            "link = \"latest\"\nlink_max_age = \"1h\"\n"
        } else {
            ""
        };
        let sensors = if self.sensors {
            let switches = self
                .x_switches
                .map(|w| format!("x_switches = \"{w}\"\n"))
                .unwrap_or_default();
            format!(
                "\n[sensors]\nbackend = \"simulated\"\nsimulator_sockets = [\"{d}/carriage.touch\", \"{d}/tuner.touch\"]\n{switches}"
            )
        } else {
            String::new()
        };
        let compat = if self.compat {
            format!("\n[compat]\nenabled = true\ndir = \"{d}/gui\"\nport = \"{LEGACY_PORT}\"\n")
        } else {
            String::new()
        };
        format!(
            r#"
host = "{host}"
{boards}
[layout]
strings = {STRINGS}
x_index = 0
{x_max}z_first_index = 1
tuner_first_index = 13

# The simulators run 20 times faster than the real firmware (SCALE): these
# speeds, sent to them, make the host's move estimates those of the real
# machine's 500, 100 and 100 steps/s in the simulators' time.
[motor.x]
speed = 10000
[motor.z]
speed = 2000
[motor.tuners]
speed = 2000

[operations]
# Short rests for simulated hardware that runs 20 times faster.
z_rest = {z_rest}
x_rest = 0.05
tune_rest = 0.05
lap_rest = 0.05
{operations_extra}
[snapshot]
interval = "{interval}"
{link}
[feed]
dir = "{d}/shm"
interval = "20ms"
stale_after = "{stale}"

[database]
url = "{db}"
auto_migrate = true
connect_timeout = "2s"

[spool]
path = "{d}/spool.sqlite"

[control]
socket = "{d}/control.sock"
{sensors}{compat}"#,
            z_rest = self.z_rest,
            x_max = self
                .x_max
                .map(|m| format!("x_max = {m}\n"))
                .unwrap_or_default(),
            interval = self.snapshot_interval,
            stale = self.stale_after,
            operations_extra = self.operations_extra,
        )
    }
}

/// The fixed frame of [`FeedMode::Static`]: channel c as if its string were
/// 20 + 7c steps away.
pub fn static_frame() -> Vec<Vec<(f32, f32)>> {
    (0..STRINGS)
        .map(|c| partials_for_distance(20.0 + c as f32 * 7.0, PARTIALS, c as u64))
        .collect()
}

/// voice_count and amp_sum per channel of [`static_frame`].
pub fn static_feed_values() -> (Vec<i32>, Vec<f32>) {
    let f = static_frame();
    (
        f.iter()
            .map(|ch| ch.iter().filter(|(_, a)| *a > 0.0).count() as i32)
            .collect(),
        f.iter()
            .map(|ch| ch.iter().map(|(_, a)| *a).sum())
            .collect(),
    )
}

/// The pose tests set: X at 100, Z steppers 20 + index, tuners 1000 + index.
pub fn pose() -> Vec<i32> {
    (0..STEPPERS as i32)
        .map(|g| match g {
            0 => 100,
            1..=12 => 20 + g,
            _ => 1000 + g,
        })
        .collect()
}

/// The simulated machine: boards, touch sensors, audmon, configuration file.
pub struct SimMachine {
    /// Where every file of the machine lives (removed on drop).
    pub dir: tempfile::TempDir,
    /// The boards, in configuration order.
    pub sims: Arc<Vec<SimHandle>>,
    /// The configuration file.
    pub cfg_path: PathBuf,
    /// The options it was made with.
    pub options: MachineOptions,
    _touch: Vec<TouchServer>,
    feed: Feed,
}

enum Feed {
    Static(FeedWriter),
    Live {
        present: Arc<AtomicBool>,
        stop: Arc<AtomicBool>,
        thread: Option<std::thread::JoinHandle<()>>,
    },
}

impl SimMachine {
    /// Starts the simulators (and touch servers and feed) and writes the
    /// configuration file.
    pub fn start(options: MachineOptions) -> SimMachine {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        let cfg_path = d.join("stringdriver.toml");
        std::fs::write(&cfg_path, options.config_text(d)).expect("config written");
        let layout = stringdriverd::config::load(&cfg_path)
            .expect("the test configuration is valid")
            .layout;
        let mut sims = Vec::new();
        for (board, (name, fw)) in BOARDS.into_iter().enumerate() {
            let mut o = SimOptions::new(Profile::for_firmware(fw, None));
            o.speed_scale = super::SCALE;
            let sim = Simulator::spawn(o, &d.join(name)).expect("simulator starts");
            if let Some(max) = options.x_max {
                // The away switch sits at the end of this machine's travel.
                sim.set_x_switch_positions(0, i64::from(max));
            }
            if options.demo_physics {
                let physical: Vec<i64> = (0..sim.counters().len())
                    .map(|local| {
                        layout.try_global(board, local).map_or(0, |g| {
                            stringdriverd::demo::starting_position(&layout, g) as i64
                        })
                    })
                    .collect();
                sim.set_physical(&physical);
            }
            sims.push(sim);
        }
        let sims = Arc::new(sims);
        let mut touch = Vec::new();
        if options.sensors {
            for (board, (name, _)) in BOARDS.into_iter().enumerate() {
                let (s, s2) = (sims.clone(), sims.clone());
                touch.push(
                    TouchServer::spawn_with_switches(
                        &d.join(format!("{name}.touch")),
                        move || s[board].touching(),
                        move || s2[board].x_switches(),
                    )
                    .expect("touch server starts"),
                );
            }
        }
        let shm = d.join("shm");
        std::fs::create_dir_all(&shm).expect("shm dir");
        let feed = match options.feed {
            FeedMode::Static => {
                let mut w = FeedWriter::create(&shm, STRINGS, PARTIALS).expect("feed");
                w.write_frame(&static_frame()).expect("frame");
                Feed::Static(w)
            }
            FeedMode::Live => live_feed(sims.clone(), layout, shm),
        };
        SimMachine {
            dir,
            sims,
            cfg_path,
            options,
            _touch: touch,
            feed,
        }
    }

    /// The control socket's path.
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("control.sock")
    }

    /// The stepper GUI's socket (with `compat`).
    pub fn gui_socket(&self) -> PathBuf {
        self.dir
            .path()
            .join("gui")
            .join("stepper_gui__dev_ttyACM0.sock")
    }

    /// Rewrites the configuration file with other options (for reloads).
    pub fn rewrite_config(&self, options: &MachineOptions) {
        std::fs::write(&self.cfg_path, options.config_text(self.dir.path()))
            .expect("config written");
    }

    /// Safety violations recorded by every simulated board.
    pub fn violations(&self) -> usize {
        self.sims.iter().map(|s| s.violations().len()).sum()
    }

    /// A live feed's writer removes its files (`false`) or writes again
    /// (`true`), as audmon stopping and starting.
    pub fn set_feed_present(&self, present: bool) {
        match &self.feed {
            Feed::Live { present: p, .. } => p.store(present, Ordering::SeqCst),
            Feed::Static(_) => panic!("set_feed_present needs FeedMode::Live"),
        }
    }

    /// The static feed's writer, for tests that remove or rewrite it.
    pub fn static_feed(&mut self) -> &mut FeedWriter {
        match &mut self.feed {
            Feed::Static(w) => w,
            Feed::Live { .. } => panic!("static_feed needs FeedMode::Static"),
        }
    }
}

impl Drop for SimMachine {
    fn drop(&mut self) {
        if let Feed::Live { stop, thread, .. } = &mut self.feed {
            stop.store(true, Ordering::SeqCst);
            if let Some(t) = thread.take() {
                let _ = t.join();
            }
        }
    }
}

fn live_feed(sims: Arc<Vec<SimHandle>>, layout: Layout, shm: PathBuf) -> Feed {
    let present = Arc::new(AtomicBool::new(true));
    let stop = Arc::new(AtomicBool::new(false));
    let mut writer = Some(FeedWriter::create(&shm, layout.strings(), PARTIALS).expect("feed"));
    let thread = {
        let (present, stop) = (present.clone(), stop.clone());
        std::thread::Builder::new()
            .name("simulated audmon".into())
            .spawn(move || {
                let mut frame_no = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    match (&mut writer, present.load(Ordering::SeqCst)) {
                        (Some(w), true) => {
                            let frame = stringdriverd::demo::feed_frame(
                                &layout,
                                &distances(&sims),
                                frame_no,
                            );
                            let _ = w.write_frame(&frame);
                        }
                        (Some(w), false) => {
                            let _ = w.remove();
                            writer = None;
                        }
                        (None, true) => {
                            writer = FeedWriter::create(&shm, layout.strings(), PARTIALS).ok();
                        }
                        (None, false) => {}
                    }
                    frame_no = frame_no.wrapping_add(1);
                    // audmon's pace, not a synchronisation: a frame every 20 ms.
                    std::thread::sleep(Duration::from_millis(20));
                }
            })
            .expect("feed thread")
    };
    Feed::Live {
        present,
        stop,
        thread: Some(thread),
    }
}

/// How far each mechanism really is from its string, per board (what the
/// sound depends on, whatever the counters say).
pub fn distances(sims: &[SimHandle]) -> Vec<Vec<i32>> {
    sims.iter()
        .map(|s| {
            s.physical()
                .iter()
                .zip(s.contacts())
                .map(|(p, c)| (p - c.unwrap_or(0)).clamp(i32::MIN as i64, i32::MAX as i64) as i32)
                .collect()
        })
        .collect()
}

/// The daemon running in-process on a [`SimMachine`].
pub struct InProcess {
    /// The daemon's parts (boards, gate, snapshot engine, ...).
    pub parts: Parts,
    stop: tokio::sync::watch::Sender<bool>,
    /// Sends a reload request, as SIGHUP does.
    pub reload: tokio::sync::mpsc::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), daemon::DaemonError>>,
}

impl InProcess {
    /// Starts the daemon on `machine`'s configuration: shipping to its
    /// database when it has one, else keeping records in the spool. Returns
    /// once the control socket answers.
    pub async fn start(machine: &SimMachine) -> InProcess {
        let shipping = if machine.options.db_url.is_some() {
            Shipping::Database
        } else {
            Shipping::SpoolOnly
        };
        InProcess::start_with(machine, shipping).await
    }

    /// As [`InProcess::start`], with the shipping chosen by the test.
    pub async fn start_with(machine: &SimMachine, shipping: Shipping) -> InProcess {
        let cfg = stringdriverd::config::load(&machine.cfg_path).expect("config");
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let (reload, reload_rx) = tokio::sync::mpsc::channel(1);
        let (tx, rx) = tokio::sync::oneshot::channel();
        let path = machine.cfg_path.clone();
        let task = tokio::spawn(async move {
            let mut tx = Some(tx);
            daemon::run_with_shipping(path, cfg, shipping, None, stop_rx, reload_rx, move |p| {
                if let Some(tx) = tx.take() {
                    let _ = tx.send(p.clone());
                }
            })
            .await
        });
        let parts = tokio::time::timeout(WAIT, rx)
            .await
            .expect("the daemon started in time")
            .expect("the daemon handed over its parts");
        // The servers start right after `on_start`: wait until the control
        // socket answers (a bind, not a state, so connecting is the check).
        let deadline = tokio::time::Instant::now() + WAIT;
        while tokio::net::UnixStream::connect(machine.socket())
            .await
            .is_err()
        {
            assert!(tokio::time::Instant::now() < deadline, "control socket up");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        InProcess {
            parts,
            stop,
            reload,
            task,
        }
    }

    /// Stops the daemon as SIGTERM would and checks it ended well, within 5 s.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        tokio::time::timeout(Duration::from_secs(5), self.task)
            .await
            .expect("the daemon stops within 5 s")
            .expect("join")
            .expect("the daemon ends without error");
    }
}

/// Waits until every board is connected, then sets every counter to
/// [`pose`], as an operator does after calibrating: the counters are then
/// trusted, so manual moves pass and snapshots are written.
pub async fn set_pose(parts: &Parts) {
    let pose = pose();
    let mut g = 0;
    for b in &parts.boards {
        b.wait_for(WAIT, |s| s.link == LinkState::Connected)
            .await
            .expect("board connected");
        for local in 0..b.steppers() {
            b.set_stepper(local, pose[g]).await.expect("set_stepper");
            g += 1;
        }
    }
}

/// A simulated machine with its daemon started and every counter set to
/// [`pose`]: the usual start of a test that moves steppers.
pub async fn started(options: MachineOptions) -> (SimMachine, InProcess) {
    let machine = SimMachine::start(options);
    let run = InProcess::start(&machine).await;
    set_pose(&run.parts).await;
    (machine, run)
}
