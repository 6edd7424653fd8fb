//! Shared set-up for the integration tests: simulators on real
//! pseudo-terminals in a per-test temporary directory, and drivers for them.
#![allow(dead_code)]

pub mod control;
pub mod feed;
pub mod gui;
pub mod machine;
pub mod ops_rig;
pub mod pg;
pub mod procstat;
pub mod proxy;
pub mod raw;
pub mod recordings;
pub mod records;
pub mod shipping;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use stringdriverd::board::{self, BoardHandle, BoardSpec, KnownCounters, SerialConnector};
use stringdriverd::protocol::{Firmware, Op};
use stringdriverd::sim::{Profile, SimHandle, SimOptions, Simulator, TraceEntry, TraceEvent};
use tokio_util::sync::CancellationToken;

/// Speed scale of test simulators: moves, pacing and the reset window run 20 times faster.
pub const SCALE: f64 = 20.0;

/// A simulator and a driver connected to it.
pub struct Rig {
    pub dir: tempfile::TempDir,
    pub sim: SimHandle,
    pub board: BoardHandle,
    pub task: tokio::task::JoinHandle<()>,
    pub shutdown: CancellationToken,
    pub spec: BoardSpec,
}

pub fn sim_options(firmware: Firmware) -> SimOptions {
    let mut o = SimOptions::new(Profile::for_firmware(firmware, None));
    o.speed_scale = SCALE;
    o
}

/// A driver spec matched to a simulator at `SCALE`: the driver's own
/// timings are shortened in its configuration, never its rules.
pub fn spec_for(opts: &SimOptions, port: PathBuf) -> BoardSpec {
    let p = &opts.profile;
    let speeds = p
        .group_of
        .iter()
        .map(|g| p.groups[*g].speed * opts.speed_scale)
        .collect();
    let mut spec = BoardSpec::new("test-board", port, p.firmware, p.width, speeds);
    // Time runs `speed_scale` times faster: accelerations scale by its square.
    let scale2 = opts.speed_scale * opts.speed_scale;
    spec.accels.iter_mut().for_each(|a| *a *= scale2);
    spec.reset_wait = opts.scaled(opts.reset_window) + Duration::from_millis(20);
    spec.drain_quiet = Duration::from_millis(20);
    spec.poll_interval = Duration::from_millis(50);
    spec.reply_timeout = Duration::from_millis(300);
    spec.move_margin = Duration::from_millis(30);
    spec.reconnect_initial = Duration::from_millis(50);
    spec.reconnect_max = Duration::from_millis(400);
    spec
}

pub fn start_sim(opts: SimOptions) -> (tempfile::TempDir, SimHandle) {
    let dir = tempfile::tempdir().expect("tempdir");
    let link = dir.path().join("board");
    let sim = Simulator::spawn(opts, &link).expect("simulator starts");
    (dir, sim)
}

pub async fn rig_with(
    opts: SimOptions,
    tweak: impl FnOnce(&mut BoardSpec),
    initial: Option<KnownCounters>,
) -> Rig {
    let (dir, sim) = start_sim(opts.clone());
    let mut spec = spec_for(&opts, sim.link().to_path_buf());
    tweak(&mut spec);
    let shutdown = CancellationToken::new();
    let connector = Arc::new(SerialConnector {
        path: spec.port.clone(),
        baud: spec.baud,
    });
    let (board, task) = board::spawn(spec.clone(), connector, initial, shutdown.clone());
    Rig {
        dir,
        sim,
        board,
        task,
        shutdown,
        spec,
    }
}

pub async fn rig(firmware: Firmware) -> Rig {
    rig_with(sim_options(firmware), |_| {}, None).await
}

/// Waits until the board is connected with positions, or panics after 10 s.
pub async fn connected(board: &BoardHandle) -> Vec<i32> {
    let s = board
        .wait_for(Duration::from_secs(10), |s| {
            s.link == board::LinkState::Connected && s.positions.is_some()
        })
        .await
        .unwrap_or_else(|| panic!("board never connected: {:?}", board.status()));
    s.positions.unwrap_or_default()
}

/// `config/demo.toml` with its files under `dir` and a `[database]` at
/// `db_url` that creates its tables (the demo file names no database), written
/// to `dir/stringdriver.toml`.
pub fn demo_config(dir: &std::path::Path, db_url: &str) -> PathBuf {
    let demo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/demo.toml");
    let mut cfg = std::fs::read_to_string(demo)
        .expect("demo config")
        .replace("/tmp/stringdriverd-demo", &dir.display().to_string());
    cfg.push_str(&format!(
        "\n[database]\nurl = \"{db_url}\"\nauto_migrate = true\n"
    ));
    let f = dir.join("stringdriver.toml");
    std::fs::write(&f, cfg).expect("write");
    f
}

/// `stringdriverd demo` for `seconds` at speed scale 5, its files under
/// `dir`, no database, serving its control socket at `dir/ctl.sock`.
pub fn spawn_demo(dir: &std::path::Path, seconds: u32) -> (std::process::Child, PathBuf) {
    spawn_demo_with(dir, seconds, "")
}

/// [`spawn_demo`] with `control` (TOML lines) added to its `[control]` table.
pub fn spawn_demo_with(
    dir: &std::path::Path,
    seconds: u32,
    control: &str,
) -> (std::process::Child, PathBuf) {
    let cfg = demo_config(dir, "postgres://postgres@127.0.0.1:1/nothing");
    let text = std::fs::read_to_string(&cfg).expect("config");
    let text = text.replacen("[control]\n", &format!("[control]\n{control}\n"), 1);
    std::fs::write(&cfg, text).expect("config");
    let socket = dir.join("ctl.sock");
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_stringdriverd"))
        .arg("demo")
        .args(["--seconds", &seconds.to_string(), "--speed-scale", "5"])
        .arg("--config")
        .arg(&cfg)
        .arg("--socket")
        .arg(&socket)
        .env_remove("DATABASE_URL")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("demo starts");
    (child, socket)
}

/// The messages of `op` the simulator received, with their arguments as read.
pub fn received_args(sim: &SimHandle, op: Op) -> Vec<Vec<i32>> {
    sim.received(op)
        .into_iter()
        .filter_map(|e| match e.event {
            TraceEvent::Message { args, .. } => Some(args),
            _ => None,
        })
        .collect()
}

/// The moves (`amove`, `rmove`) the simulator received: when, and their
/// arguments (stepper, target or delta).
pub fn moves(sim: &SimHandle) -> Vec<(std::time::Instant, Vec<i32>)> {
    sim.trace()
        .into_iter()
        .filter_map(|e| match e.event {
            TraceEvent::Message {
                op: Some(Op::Amove | Op::Rmove),
                args,
                ..
            } => Some((e.at, args)),
            _ => None,
        })
        .collect()
}

/// How many messages of `op` are in `trace` (for `wait_for_trace`).
pub fn count_of(trace: &[TraceEntry], op: Op) -> usize {
    trace
        .iter()
        .filter(|e| matches!(&e.event, TraceEvent::Message { op: Some(o), .. } if *o == op))
        .count()
}
