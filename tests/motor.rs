//! Motor parameters (hosts.md "Motor parameters the boards are run with"):
//! the boards are given them after every connect and every detected reset,
//! `stringdriverctl motor set` changes them through the motion gate (and
//! the simulated move's duration follows), invalid changes are refused,
//! changes survive a restart, and a v1 board gets v1's command numbers,
//! axis groups and 4-byte values.

mod common;

use std::path::Path;
use std::time::Duration;

use common::control::{ctl, Client};
use common::machine::{started, InProcess, MachineOptions, WAIT};
use common::pg::TestDb;
use common::{connected, rig_with, sim_options, SCALE};
use serde_json::{json, Value};
use stringdriverd::board::LinkState;
use stringdriverd::protocol::ramp::move_time;
use stringdriverd::protocol::{Firmware, Op};
use stringdriverd::sim::firmware::LOOP_TIME;
use stringdriverd::sim::{Fault, SimHandle, TraceEvent};

const HOST: &str = "sd-motor";

/// What the rig's configuration sends (tests/common/machine.rs `[motor]`).
const X_SPEED: f64 = 10_000.0;
const Z_SPEED: f64 = 2_000.0;
const TUNER_SPEED: f64 = 2_000.0;
const ACCEL: f64 = 10_000.0;

/// The carriage simulator holds the rig's configured parameters.
fn carriage_holds_configured(sim: &SimHandle) -> bool {
    let mut speeds = vec![Z_SPEED; 13];
    speeds[0] = X_SPEED;
    sim.speeds() == speeds
        && sim.accels() == vec![ACCEL; 13]
        && sim.limits() == vec![(0, 2600), (-100, 100)]
}

/// The `Moved` entries of `stepper` in the simulator's trace: (speed, steps, took).
fn moves_of(sim: &SimHandle, stepper: usize) -> Vec<(f64, u64, Duration)> {
    sim.trace()
        .into_iter()
        .filter_map(|e| match e.event {
            TraceEvent::Moved {
                stepper: s,
                steps,
                speed,
                took,
                ..
            } if s == stepper => Some((speed, steps, took)),
            _ => None,
        })
        .collect()
}

/// How long the simulator stays deaf for a move: its loop time and
/// AccelStepper's ramp at `speed`, at the simulator's speed scale.
fn sim_busy(steps: u64, speed: f64) -> Duration {
    (LOOP_TIME + move_time(steps, speed, ACCEL)).div_f64(SCALE)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boards_hold_the_configured_parameters_after_connect_and_again_after_a_reset() {
    let db = TestDb::create().await;
    let mut o = MachineOptions::new(HOST);
    o.db_url = Some(db.url());
    let (rig, run) = started(o).await;
    let (carriage, tuner) = (&rig.sims[0], &rig.sims[1]);
    assert!(
        carriage_holds_configured(carriage),
        "{:?} {:?} {:?}",
        carriage.speeds(),
        carriage.accels(),
        carriage.limits()
    );
    assert_eq!(tuner.speeds(), vec![TUNER_SPEED; 6]);
    assert_eq!(tuner.limits(), vec![(-100_000, 100_000)]);
    // set_min/set_max on the v2 carriage with axis 0 = X, 1 = Z only.
    let axes: Vec<i32> = common::received_args(carriage, Op::SetMin)
        .iter()
        .map(|a| a[0])
        .collect();
    assert_eq!(axes, [0, 1]);
    let mut c = Client::connect(&rig.socket()).await;
    let shown = c.ok(json!({"cmd": "motor"})).await;
    assert_eq!(shown["params"]["z"]["speed"], json!(2000));
    for b in shown["boards"].as_array().expect("boards") {
        assert!(!b["holds"].is_null(), "{b}");
        // Paced: never more in flight than the 63-byte receive buffer.
        let in_flight = b["holds"]["max_bytes_in_flight"].as_u64().expect("bytes");
        assert!(in_flight <= 63, "{b}");
    }

    // A brown-out: the board comes back with its compiled-in values (Z 100
    // steps/s), the driver sees the reset and sends the parameters again.
    let sends = run.parts.boards[0].status().motor_sends;
    carriage.inject(Fault::Reset);
    let after = run.parts.boards[0]
        .wait_for(WAIT, |s| {
            s.resets_detected >= 1 && s.motor_sends > sends && s.motor.is_some()
        })
        .await
        .expect("the parameters were sent again after the reset");
    assert_eq!(after.link, LinkState::Connected);
    assert!(
        carriage_holds_configured(carriage),
        "{:?}",
        carriage.speeds()
    );
    // Counters restored, so a move runs at the configured speed again.
    let mut c = Client::connect(&rig.socket()).await;
    c.ok(json!({"cmd": "move", "stepper": 1, "delta": 10}))
        .await;
    let last = *moves_of(carriage, 1).last().expect("moved");
    assert_eq!((last.0, last.1), (Z_SPEED, 10));
    assert_eq!(rig.violations(), 0);
    assert_eq!(
        carriage.rx_lost(),
        0,
        "never more bytes than the board buffers"
    );
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn motor_set_changes_the_board_speed_and_the_move_duration_follows() {
    let (rig, run) = started(MachineOptions::new(HOST)).await;
    let sim = &rig.sims[0];
    let socket = rig.socket();
    let spec_margin = Duration::from_millis(30); // move_margin of the rig
    for (speed, target) in [(500, 81), (1000, 21), (250, 81)] {
        let out = ctl(&socket, &["motor", "set", "z", "speed", &speed.to_string()]).await;
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains(&format!("z       speed {speed} steps/s")),
            "{text}"
        );
        assert_eq!(sim.speeds()[1..13], vec![speed as f64; 12]);
        assert_eq!(sim.speeds()[0], X_SPEED, "X untouched");

        let before = moves_of(sim, 1).len();
        let out = ctl(&socket, &["move", "--abs", "1", &target.to_string()]).await;
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let moves = moves_of(sim, 1);
        assert_eq!(moves.len(), before + 1);
        let (ran_at, steps, took) = moves[before];
        assert_eq!(ran_at, speed as f64, "the simulator moved at the speed set");
        assert_eq!(steps, 60);
        // The simulated move lasted the ramp at the new speed...
        assert_eq!(took, sim_busy(60, speed as f64));
        // ...which at these speeds is close to steps / speed.
        let over = took.as_secs_f64() * SCALE - 60.0 / speed as f64;
        assert!((0.0..0.15).contains(&over), "{over}");
        // And the host predicted it from the speed it sent.
        let expected = run.parts.boards[0]
            .status()
            .last_move
            .expect("a move was made")
            .expected;
        assert_eq!(
            expected,
            move_time(60, speed as f64, ACCEL).mul_f64(1.1) + spec_margin
        );
    }
    // A stepper of its own: stepper 2 at 300 steps/s, the other Z unchanged.
    let out = ctl(&socket, &["motor", "set", "2", "speed", "300"]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(sim.speeds()[2], 300.0);
    assert_eq!(sim.speeds()[3], 250.0);
    assert_eq!(rig.violations(), 0);
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_motor_changes_are_refused_with_clear_errors() {
    let (rig, run) = started(MachineOptions::new(HOST)).await;
    let mut c = Client::connect(&rig.socket()).await;
    let set = |target: Value, param: &str, value: i64| json!({"cmd": "motor_set", "target": target, "param": param, "value": value});
    let sent_before = rig.sims[0].received(Op::SetSpeed).len();
    let m = c.err(set(json!("w"), "speed", 10), "bad_request").await;
    assert!(m.contains("unknown axis group `w`"), "{m}");
    let m = c.err(set(json!("z"), "jerk", 10), "bad_request").await;
    assert!(m.contains("unknown motor parameter `jerk`"), "{m}");
    let m = c.err(set(json!("z"), "max", 50), "refused").await;
    assert!(
        m.contains("motor.z.max") && m.contains("outside the z limits -100 to 50"),
        "{m}"
    );
    let m = c.err(set(json!("z"), "speed", 0), "refused").await;
    assert!(m.contains("motor.z.speed: must be at least 1"), "{m}");
    let m = c.err(set(json!("z"), "accel", 40_000), "refused").await;
    assert!(
        m.contains("does not fit the 2-byte set_accel argument"),
        "{m}"
    );
    let m = c.err(set(json!(3), "min", -10), "refused").await;
    assert!(m.contains("set per axis group"), "{m}");
    let m = c.err(set(json!(99), "speed", 10), "refused").await;
    assert!(m.contains("stepper 99 does not exist"), "{m}");
    // One gate: refused while an operation runs.
    let ticket = run
        .parts
        .gate
        .begin("bump_check")
        .expect("no operation runs");
    let m = c.err(set(json!("z"), "speed", 300), "refused").await;
    assert!(m.contains("operation bump_check is running"), "{m}");
    drop(ticket);
    // The CLI says so too, and exits 1.
    let out = ctl(&rig.socket(), &["motor", "set", "tuners", "min", "0"]).await;
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("motor.tuners.min") && err.contains("may move from -100000 to 100000"),
        "{err}"
    );
    // Nothing reached a board, nothing changed.
    assert_eq!(rig.sims[0].received(Op::SetSpeed).len(), sent_before);
    let shown = c.ok(json!({"cmd": "motor"})).await;
    assert_eq!(shown["params"]["z"]["speed"], json!(2000));
    assert_eq!(rig.violations(), 0);
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn motor_changes_are_kept_across_a_restart() {
    let db = TestDb::create().await;
    let mut o = MachineOptions::new(HOST);
    o.db_url = Some(db.url());
    let (rig, run) = started(o).await;
    let out = ctl(&rig.socket(), &["motor", "set", "z", "speed", "700"]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = ctl(&rig.socket(), &["motor", "set", "x", "accel", "5000"]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    run.stop().await;

    // The restart reopens the ports, which resets the simulated boards.
    let connects = rig.sims[0].trace().len();
    let run = InProcess::start(&rig).await;
    let status = run.parts.boards[0]
        .wait_for(WAIT, |s| {
            s.link == LinkState::Connected && s.motor.is_some()
        })
        .await
        .expect("carriage given its parameters");
    assert!(rig.sims[0].trace().len() > connects);
    assert_eq!(rig.sims[0].speeds()[1..13], vec![700.0; 12]);
    assert_eq!(rig.sims[0].accels()[0], 5000.0);
    assert!(status
        .motor
        .expect("sent")
        .writes
        .iter()
        .any(|w| w.op == Op::SetSpeed && w.index == 1 && w.value == 700));
    let mut c = Client::connect(&rig.socket()).await;
    let shown = c.ok(json!({"cmd": "motor"})).await;
    assert_eq!(shown["params"]["z"]["speed"], json!(700));
    assert_eq!(shown["params"]["x"]["accel"], json!(5000));
    let state: Value = serde_json::from_slice(
        &std::fs::read(rig.dir.path().join("state.json")).expect("state file"),
    )
    .expect("json");
    assert_eq!(state["motor"], json!({"x.accel": 5000, "z.speed": 700}));
    run.stop().await;

    // The file's [motor] changes: it is the newer word and wins at the next
    // start; the run-time changes are dropped.
    let text = std::fs::read_to_string(&rig.cfg_path).expect("config");
    let edited = text.replacen("[motor.z]\nspeed = 2000", "[motor.z]\nspeed = 1500", 1);
    assert_ne!(edited, text, "the rig's file sets the Z speed");
    std::fs::write(&rig.cfg_path, edited).expect("config written");
    let run = InProcess::start(&rig).await;
    run.parts.boards[0]
        .wait_for(WAIT, |s| {
            s.link == LinkState::Connected && s.motor.is_some()
        })
        .await
        .expect("carriage given its parameters");
    assert_eq!(rig.sims[0].speeds()[1..13], vec![1500.0; 12]);
    assert_eq!(rig.sims[0].accels()[0], ACCEL);
    let state: Value = serde_json::from_slice(
        &std::fs::read(rig.dir.path().join("state.json")).expect("state file"),
    )
    .expect("json");
    assert!(state.get("motor").is_none(), "{state}");
    run.stop().await;
}

/// stringdriver-1's board: v1 command numbers (set_accel 8, set_speed 9,
/// set_min 10, set_max 11), axis groups 0 = tuners, 1 = X, 2 = Z, and
/// 4-byte values.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_v1_board_is_given_v1_numbers_axis_groups_and_long_values() {
    let text = r#"
host = "stringdriver-1"
[[boards]]
name = "carriage"
port = "/dev/null"
int_bytes = 2
firmware = "v1"
steppers = 7
[layout]
strings = 2
tuner_first_index = 0
tuner_min = -25000
tuner_max = 25000
x_index = 2
x_max = 2396
z_first_index = 3
[motor.z]
# A value only a 4-byte long carries.
accel = 40000
"#;
    let cfg = stringdriverd::config::parse(text, Path::new("sd1.toml")).expect("valid");
    let writes = cfg.motor_writes(&cfg.motor, 0);
    let rig = rig_with(
        sim_options(Firmware::V1),
        |spec| spec.motor = writes.clone(),
        None,
    )
    .await;
    connected(&rig.board).await;
    let st = rig
        .board
        .wait_for(WAIT, |s| s.motor.is_some())
        .await
        .expect("parameters sent");
    assert_eq!(st.motor.expect("sent").writes, writes);
    let sim = &rig.sim;
    assert_eq!(
        sim.limits(),
        vec![(-25_000, 25_000), (0, 2396), (-100, 100)],
        "tuners, X, Z"
    );
    assert_eq!(
        sim.speeds(),
        vec![250.0, 250.0, 500.0, 100.0, 100.0, 100.0, 100.0]
    );
    assert_eq!(sim.accels()[3..], vec![40_000.0; 4]);
    // The numbers and widths on the wire.
    let msgs: Vec<(i32, usize, Vec<i32>)> = sim
        .trace()
        .into_iter()
        .filter_map(|e| match e.event {
            TraceEvent::Message {
                id,
                raw,
                args,
                op: Some(Op::SetMin | Op::SetMax | Op::SetSpeed | Op::SetAccel),
                ..
            } => Some((id, raw.len(), args)),
            _ => None,
        })
        .collect();
    assert!(msgs
        .iter()
        .any(|(id, _, a)| *id == 10 && a == &[0, -25_000]));
    assert!(msgs.iter().any(|(id, _, a)| *id == 11 && a == &[1, 2396]));
    assert!(msgs.iter().any(|(id, _, a)| *id == 11 && a == &[2, 100]));
    assert!(msgs.iter().any(|(id, _, a)| *id == 9 && a == &[2, 500]));
    assert!(msgs.iter().any(|(id, _, a)| *id == 8 && a == &[3, 40_000]));
    // "9,<2-byte index>,<4-byte value>": index 2 is 02 00, 500 is F4 01 00 00,
    // each NUL escaped with `/`: 1 + 1 + 3 + 1 + 6 (a 2-byte value: 1 + 1 + 3 + 1 + 2).
    let (_, len, _) = msgs
        .iter()
        .find(|(id, _, a)| *id == 9 && a == &[2, 500])
        .expect("set_speed of X");
    assert_eq!(*len, 12);
    assert!(sim.violations().is_empty(), "{:?}", sim.violations());
    assert_eq!(sim.rx_lost(), 0);

    // A reset: the v1 board forgets them (compiled-in tuners 100 steps/s)
    // and is given them again. (A counter off 0 first: a board whose
    // counters all read 0 cannot be seen to reset.)
    rig.board.set_stepper(2, 100).await.expect("set_stepper");
    let sends = rig.board.status().motor_sends;
    sim.inject(Fault::Reset);
    rig.board
        .wait_for(WAIT, |s| s.motor_sends > sends && s.motor.is_some())
        .await
        .expect("sent again");
    assert_eq!(sim.speeds()[..3], [250.0, 250.0, 500.0]);
    rig.shutdown.cancel();
    let _ = rig.task.await;
}

/// Parameters the board cannot take (an axis group past the firmware's
/// table) are never sent — the firmware would write past its arrays — and
/// moves on that board are refused, saying why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_board_without_its_parameters_refuses_moves_and_never_gets_a_bad_axis() {
    use stringdriverd::board::BoardError;
    use stringdriverd::config::MotorWrite;
    let bad = vec![MotorWrite {
        op: Op::SetMin,
        index: 2, // v2 has axis groups 0 and 1 only
        value: 0,
    }];
    let rig = rig_with(sim_options(Firmware::V2), |spec| spec.motor = bad, None).await;
    connected(&rig.board).await;
    let e = rig.board.amove(1, 5).await.expect_err("refused");
    assert!(matches!(e, BoardError::MotorNotSent { .. }), "{e:?}");
    let text = e.to_string();
    assert!(
        text.contains("motor parameters") && text.contains("have not been sent"),
        "{text}"
    );
    assert!(rig.board.status().motor.is_none());
    assert!(rig.sim.received(Op::SetMin).is_empty());
    assert!(rig.sim.received(Op::Amove).is_empty());
    assert!(rig.sim.violations().is_empty());
    rig.shutdown.cancel();
    let _ = rig.task.await;
}
