//! The motion gate against simulated boards over real pseudo-terminals:
//! every refusal happens before anything reaches the board, and rests hold
//! whoever asks.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use stringdriverd::board::{self, BoardHandle, SerialConnector};
use stringdriverd::motion::{GateError, MotionGate, Origin};
use stringdriverd::protocol::Firmware;
use stringdriverd::sim::SimHandle;
use stringdriverd::snapshot::Settings;
use tokio_util::sync::CancellationToken;

/// stringdriver-2's layout: carriage v2 (X 0, Z 1..12) and a 6-stepper tuner board.
const CONFIG: &str = r#"
host = "t"
[[boards]]
name = "carriage"
port = "/dev/null"
int_bytes = 2
firmware = "v2"
steppers = 13
[[boards]]
name = "tuner"
port = "/dev/null"
int_bytes = 4
firmware = "tuner"
steppers = 6
[layout]
strings = 6
x_index = 0
z_first_index = 1
tuner_first_index = 13
z_min = -100
z_max = 100
[operations]
z_rest = 0.3
x_rest = 0.2
tune_rest = 0.2
"#;

struct Gate {
    _dirs: Vec<tempfile::TempDir>,
    sims: Vec<SimHandle>,
    boards: Vec<BoardHandle>,
    gate: MotionGate,
    settings: tokio::sync::watch::Sender<Settings>,
    _shutdown: CancellationToken,
}

async fn gate() -> Gate {
    let cfg = stringdriverd::config::parse(CONFIG, Path::new("motion.toml")).expect("config");
    let shutdown = CancellationToken::new();
    let (mut dirs, mut sims, mut boards) = (Vec::new(), Vec::new(), Vec::new());
    for fw in [Firmware::V2, Firmware::Tuner] {
        let opts = sim_options(fw);
        let (dir, sim) = start_sim(opts.clone());
        let spec = spec_for(&opts, sim.link().to_path_buf());
        let connector = Arc::new(SerialConnector {
            path: spec.port.clone(),
            baud: spec.baud,
        });
        let (h, _t) = board::spawn(spec, connector, None, shutdown.clone());
        connected(&h).await;
        for s in 0..h.steppers() {
            h.set_stepper(s, 0).await.expect("trusted counters");
        }
        dirs.push(dir);
        sims.push(sim);
        boards.push(h);
    }
    let settings = Settings {
        operations: cfg.operations.clone(),
        thresholds: cfg.thresholds.clone(),
        enabled: stringdriverd::daemon::initial_enables(&cfg),
    };
    let (tx, rx) = tokio::sync::watch::channel(settings);
    let gate = MotionGate::new(boards.clone(), Arc::new(cfg.layout.clone()), rx);
    Gate {
        _dirs: dirs,
        sims,
        boards,
        gate,
        settings: tx,
        _shutdown: shutdown,
    }
}

#[tokio::test]
async fn moves_pass_and_land_on_the_right_board() {
    let g = gate().await;
    let p = g
        .gate
        .move_rel(&Origin::Manual, 3, 10)
        .await
        .expect("z move");
    assert_eq!(p[3], 10);
    let p = g
        .gate
        .move_abs(&Origin::Manual, 15, 500)
        .await
        .expect("tuner move (global 15 = tuner 2)");
    assert_eq!(p[2], 500);
    assert_eq!(g.sims[1].counters()[2], 500);
    assert!(g.sims.iter().all(|s| s.violations().is_empty()));
}

#[tokio::test]
async fn a_disabled_stepper_and_an_out_of_limit_target_never_reach_the_board() {
    let g = gate().await;
    g.settings.send_modify(|s| s.enabled[4] = false);
    assert_eq!(
        g.gate.move_rel(&Origin::Manual, 4, 1).await,
        Err(GateError::Disabled(4))
    );
    let e = g
        .gate
        .move_abs(&Origin::Manual, 5, 101)
        .await
        .expect_err("outside z_max");
    assert!(
        matches!(
            e,
            GateError::OutOfLimits {
                stepper: 5,
                target: 101,
                min: -100,
                max: 100
            }
        ),
        "{e}"
    );
    let e = g
        .gate
        .move_rel(&Origin::Manual, 99, 1)
        .await
        .expect_err("no such stepper");
    assert!(
        matches!(
            e,
            GateError::UnknownStepper {
                stepper: 99,
                count: 19
            }
        ),
        "{e}"
    );
    assert!(moves(&g.sims[0]).is_empty(), "nothing was sent");
    // A disabled stepper's counter may still be set: nothing moves.
    g.gate
        .set_counter(&Origin::Manual, 4, 7)
        .await
        .expect("set counter");
    assert_eq!(g.sims[0].counters()[4], 7);
}

#[tokio::test]
async fn one_operation_at_a_time_and_manual_moves_wait_for_it() {
    let g = gate().await;
    let op = g.gate.begin("bump_check").expect("first operation");
    assert!(matches!(g.gate.begin("z_adjust"), Err(GateError::Busy(k)) if k == "bump_check"));
    let e = g
        .gate
        .move_rel(&Origin::Manual, 2, 1)
        .await
        .expect_err("manual refused");
    assert_eq!(e, GateError::OperationRunning("bump_check".into()));
    assert!(e.to_string().contains("bump_check is running"));
    assert!(matches!(
        g.gate.set_counter(&Origin::Compat, 2, 1).await,
        Err(GateError::OperationRunning(_))
    ));
    g.gate
        .move_rel(&op.origin(), 2, 2)
        .await
        .expect("the operation's own move");
    let origin = op.origin();
    drop(op);
    assert_eq!(
        g.gate.move_rel(&origin, 2, 2).await,
        Err(GateError::Cancelled),
        "an ended ticket moves nothing"
    );
    g.gate
        .move_rel(&Origin::Manual, 2, 2)
        .await
        .expect("manual again");
}

#[tokio::test]
async fn cancel_takes_effect_before_the_next_move() {
    let g = gate().await;
    let op = g.gate.begin("z_calibrate").expect("op");
    g.gate
        .move_rel(&op.origin(), 1, -2)
        .await
        .expect("first move");
    // The next move waits for z_rest; cancel during that wait.
    let (gate, origin) = (g.gate.clone(), op.origin());
    let next = tokio::spawn(async move { gate.move_rel(&origin, 1, -2).await });
    assert!(g.gate.cancel());
    assert_eq!(next.await.expect("join"), Err(GateError::Cancelled));
    assert_eq!(
        g.gate.move_rel(&op.origin(), 1, -2).await,
        Err(GateError::Cancelled)
    );
    assert_eq!(moves(&g.sims[0]).len(), 1, "no move after the cancel");
    assert_eq!(
        op.rest(Duration::from_secs(60)).await,
        Err(GateError::Cancelled),
        "rests end at once too"
    );
}

#[tokio::test]
async fn no_stepper_moves_again_before_its_rest_whoever_asks() {
    let g = gate().await;
    let op = g.gate.begin("z_adjust").expect("op");
    g.gate.move_rel(&op.origin(), 6, 2).await.expect("op move");
    drop(op);
    g.gate
        .move_rel(&Origin::Manual, 6, 2)
        .await
        .expect("manual");
    g.gate
        .move_rel(&Origin::Compat, 6, -2)
        .await
        .expect("compat");
    g.gate.move_rel(&Origin::Manual, 0, 50).await.expect("x");
    g.gate.move_rel(&Origin::Manual, 0, -50).await.expect("x");
    let m = moves(&g.sims[0]);
    let of = |s: i32| {
        m.iter()
            .filter(|(_, a)| a[0] == s)
            .map(|(t, _)| *t)
            .collect::<Vec<_>>()
    };
    for (stepper, rest) in [(6, 0.3), (0, 0.2)] {
        let times = of(stepper);
        assert!(times.len() >= 2, "{times:?}");
        for w in times.windows(2) {
            let gap = w[1].duration_since(w[0]);
            assert!(
                gap >= Duration::from_secs_f64(rest),
                "stepper {stepper}: moves {gap:?} apart, rest {rest} s"
            );
        }
    }
}

#[tokio::test]
async fn untrusted_counters_refuse_manual_moves() {
    let g = gate().await;
    // A brown-out without restore leaves the counters untrusted.
    let opts = sim_options(Firmware::V2);
    let (_d, sim) = start_sim(opts.clone());
    let mut spec = spec_for(&opts, sim.link().to_path_buf());
    spec.name = "carriage".into();
    let connector = Arc::new(SerialConnector {
        path: spec.port.clone(),
        baud: spec.baud,
    });
    let shutdown = CancellationToken::new();
    let (fresh, _t) = board::spawn(spec, connector, None, shutdown.clone());
    connected(&fresh).await;
    let cfg = stringdriverd::config::parse(CONFIG, Path::new("motion.toml")).expect("config");
    let settings = g.settings.subscribe();
    let gate = MotionGate::new(
        vec![fresh, g.boards[1].clone()],
        Arc::new(cfg.layout.clone()),
        settings,
    );
    let e = gate
        .move_rel(&Origin::Manual, 2, 1)
        .await
        .expect_err("untrusted");
    assert!(e.to_string().contains("untrusted"), "{e}");
    assert!(moves(&sim).is_empty());
    let op = gate.begin("z_calibrate").expect("op");
    gate.move_rel(&op.origin(), 2, 1)
        .await
        .expect("an operation may move from an untrusted counter");
    shutdown.cancel();
}

/// A working counter (X homing's count while it searches) is the running
/// operation's alone, checked like a counter write, and never trusted: the
/// operation may move from it, nobody else may.
#[tokio::test]
async fn a_working_counter_is_the_operations_alone_and_stays_untrusted() {
    let g = gate().await;
    let refused = g
        .gate
        .set_working_counter(&Origin::Manual, 0, 2600)
        .await
        .expect_err("not an operation");
    assert!(
        refused.to_string().contains("running operation"),
        "{refused}"
    );
    assert!(g.boards[0].status().trusted[0], "nothing changed");
    let op = g.gate.begin("x_home").expect("op");
    let out_of_travel = g
        .gate
        .set_working_counter(&op.origin(), 0, 2601)
        .await
        .expect_err("past X max");
    assert!(
        matches!(
            out_of_travel,
            GateError::CounterOutOfLimits { value: 2601, .. }
        ),
        "{out_of_travel}"
    );
    let p = g
        .gate
        .set_working_counter(&op.origin(), 0, 2600)
        .await
        .expect("set");
    assert_eq!(p[0], 2600);
    assert!(!g.boards[0].status().trusted[0], "untrusted");
    assert_eq!(g.sims[0].physical()[0], 0, "nothing moved");
    // The operation moves from it; the counter stays untrusted.
    g.gate
        .move_rel(&op.origin(), 0, -10)
        .await
        .expect("the operation moves");
    assert!(!g.boards[0].status().trusted[0]);
    drop(op);
    let manual = g
        .gate
        .move_rel(&Origin::Manual, 0, -10)
        .await
        .expect_err("untrusted");
    assert!(
        matches!(manual, GateError::Unknown { stepper: 0, .. }),
        "{manual}"
    );
    // A counter write by an operator vouches for it again.
    g.gate
        .set_counter(&Origin::Manual, 0, 0)
        .await
        .expect("set");
    assert!(g.boards[0].status().trusted[0]);
}
