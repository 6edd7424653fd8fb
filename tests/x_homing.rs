//! X homing (x_home, x_away, x_calibrate) end to end: the daemon in-process
//! on the simulated stringdriver-2, whose carriage has limit switches where
//! it physically is (home at X 0, away at X max), read over the simulator's
//! touch socket; operations started on the control socket and their rows
//! read back from real PostgreSQL.

mod common;

use std::time::{Duration, Instant};

use common::control::Client;
use common::machine::{InProcess, MachineOptions, SimMachine, WAIT};
use common::pg::TestDb;
use serde_json::{json, Value};
use stringdriverd::protocol::Op;
use stringdriverd::sim::{Fault, SimHandle, TraceEvent};

const HOST: &str = "sd-xhome";
/// `operations.x_rest` of the test machine, in seconds.
const X_REST: f64 = 0.05;

/// The simulated machine with X travel 0..`x_max` and its switches wired
/// as `wiring`, shipping to `db`, Z mechanisms clear of their strings.
fn machine(db: &TestDb, x_max: i32, wiring: Option<&'static str>) -> SimMachine {
    let mut o = MachineOptions::new(HOST);
    o.db_url = Some(db.url());
    o.sensors = true;
    o.demo_physics = true;
    o.x_max = Some(x_max);
    o.x_switches = wiring;
    SimMachine::start(o)
}

/// The machine running, with X's counter set (trusted) to `counter` and the
/// carriage physically at `physical`.
async fn started(
    db: &TestDb,
    x_max: i32,
    wiring: Option<&'static str>,
    counter: i32,
    physical: i64,
) -> (SimMachine, InProcess, Client) {
    let rig = machine(db, x_max, wiring);
    let run = InProcess::start(&rig).await;
    common::machine::set_pose(&run.parts).await;
    run.parts.boards[0]
        .set_stepper(0, counter)
        .await
        .expect("set X");
    let mut pos = rig.sims[0].physical();
    pos[0] = physical;
    rig.sims[0].set_physical(&pos);
    let c = Client::connect(&rig.socket()).await;
    (rig, run, c)
}

/// Runs `kind` and waits for its outcome.
async fn op(c: &mut Client, kind: &str) -> Value {
    c.ok(json!({"cmd": "op_run", "kind": kind, "wait": true}))
        .await
}

/// The X moves the carriage board received: when, and the target.
fn x_moves(sim: &SimHandle) -> Vec<(Instant, i32)> {
    common::moves(sim)
        .into_iter()
        .filter(|(_, args)| args.first() == Some(&0))
        .map(|(at, args)| (at, args.get(1).copied().unwrap_or(0)))
        .collect()
}

/// Every X move started at least x_rest after the one before it ended.
fn assert_rests(moves: &[(Instant, i32)]) {
    for w in moves.windows(2) {
        let gap = w[1].0.duration_since(w[0].0);
        assert!(
            gap >= Duration::from_secs_f64(X_REST),
            "X moves {gap:?} apart, less than x_rest: {moves:?}"
        );
    }
}

/// X's counter and whether it is trusted.
fn x_counter(run: &InProcess) -> (i32, bool) {
    let s = run.parts.boards[0].status();
    (
        s.positions.expect("read")[0],
        s.trusted.first().copied().unwrap_or(false),
    )
}

/// The operation's rows in PostgreSQL once it ended there: kind, status,
/// stepper indices, final positions, message.
async fn shipped(db: &TestDb, id: &str) -> (String, String, Vec<i32>, Vec<i32>, String) {
    let client = db.client().await;
    let uuid = uuid::Uuid::parse_str(id).expect("uuid");
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let rows = client
            .query(
                "SELECT operation_type, operation_status, stepper_indices, final_positions, \
                 coalesce(message, '') FROM operations WHERE operation_id = $1",
                &[&uuid],
            )
            .await
            .unwrap_or_default();
        if let Some(r) = rows.first() {
            let status: String = r.get(1);
            if status != "started" {
                return (r.get(0), status, r.get(2), r.get(3), r.get(4));
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "operation {id} never ended in PostgreSQL"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x_home_finds_the_home_switch_where_the_carriage_really_is() {
    let db = TestDb::create().await;
    // The counter says 100, the carriage is at 230 (lost steps).
    let (rig, run, mut c) = started(&db, 600, Some("two"), 100, 230).await;
    let out = op(&mut c, "x_home").await;
    assert_eq!(out["status"], json!("completed"), "{out}");
    let msg = out["message"].as_str().expect("message");
    assert!(msg.contains("after 23 moves"), "{msg}");
    assert!(msg.contains("off by -130"), "{msg}");
    assert_eq!(x_counter(&run), (0, true), "X is 0 at the switch, trusted");
    let sim = &rig.sims[0];
    assert_eq!(sim.physical()[0], 0, "the carriage is on the home switch");
    assert!(sim.x_switches().is_some_and(|s| s.home));
    // Counted from X max down by 10, each move after the rest.
    let moves = x_moves(sim);
    let targets: Vec<i32> = moves.iter().map(|m| m.1).collect();
    assert_eq!(targets, (0..23).map(|i| 590 - 10 * i).collect::<Vec<_>>());
    assert_rests(&moves);
    assert_eq!(rig.violations(), 0);
    let id = out["operation_id"].as_str().expect("id");
    let (kind, status, steppers, finals, message) = shipped(&db, id).await;
    assert_eq!(
        (kind.as_str(), status.as_str(), steppers, finals),
        ("x_home", "completed", vec![0], vec![0])
    );
    assert_eq!(message, msg);
    // `status` shows the switches as the watch reads them after the operation.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let st = c.ok(json!({"cmd": "status"})).await;
        if st["touch"]["x_switches"]
            == json!([
                {"end": "home", "pressed": true, "error": null},
                {"end": "away", "pressed": false, "error": null}
            ])
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "switches never in status: {}",
            st["touch"]
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(c);
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x_home_with_a_disconnected_switch_fails_after_the_whole_travel_and_leaves_x_untrusted() {
    let db = TestDb::create().await;
    let (rig, run, mut c) = started(&db, 300, Some("two"), 100, 150).await;
    rig.sims[0].inject(Fault::XSwitchStuck {
        away: false,
        pressed: Some(false),
    });
    let out = op(&mut c, "x_home").await;
    assert_eq!(out["status"], json!("failed"), "{out}");
    let msg = out["message"].as_str().expect("message");
    assert!(msg.contains("never read pressed"), "{msg}");
    assert!(msg.contains("30 moves"), "{msg}");
    assert!(msg.contains("untrusted"), "{msg}");
    let (_, trusted) = x_counter(&run);
    assert!(!trusted, "X is left untrusted");
    // The whole counted travel, 300 -> 0, and not one step past its limit.
    let moves = x_moves(&rig.sims[0]);
    assert_eq!(moves.len(), 30);
    assert_eq!(moves.last().map(|m| m.1), Some(0));
    assert_rests(&moves);
    // An operator's move of an untrusted counter is refused.
    let refused = c
        .err(json!({"cmd": "move", "stepper": 0, "delta": 10}), "refused")
        .await;
    assert!(refused.contains("untrusted"), "{refused}");
    let id = out["operation_id"].as_str().expect("id");
    let (kind, status, _, _, message) = shipped(&db, id).await;
    assert_eq!((kind.as_str(), status.as_str()), ("x_home", "failed"));
    assert_eq!(message, msg);
    assert_eq!(rig.violations(), 0);
    drop(c);
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x_away_finds_the_away_switch_and_sets_x_max() {
    let db = TestDb::create().await;
    let (rig, run, c) = started(&db, 600, Some("two"), 100, 560).await;
    // Through stringdriverctl, as an operator runs it.
    let mut ctl = std::process::Command::new(env!("CARGO_BIN_EXE_stringdriverctl"));
    ctl.arg("--socket")
        .arg(rig.socket())
        .args(["--json", "op", "run", "x_away", "--wait"]);
    let done = tokio::task::spawn_blocking(move || ctl.output())
        .await
        .expect("join")
        .expect("stringdriverctl runs");
    let text = String::from_utf8_lossy(&done.stdout);
    assert_eq!(
        done.status.code(),
        Some(0),
        "{text}{}",
        String::from_utf8_lossy(&done.stderr)
    );
    let out: Value = serde_json::from_str(&text).expect("JSON outcome");
    assert_eq!(out["status"], json!("completed"), "{out}");
    assert!(
        out["message"]
            .as_str()
            .is_some_and(|m| m.contains("after 4 moves")),
        "{out}"
    );
    assert_eq!(x_counter(&run), (600, true));
    assert_eq!(rig.sims[0].physical()[0], 600);
    let moves = x_moves(&rig.sims[0]);
    assert_eq!(
        moves.iter().map(|m| m.1).collect::<Vec<_>>(),
        vec![10, 20, 30, 40]
    );
    assert_rests(&moves);
    let (kind, status, steppers, finals, _) =
        shipped(&db, out["operation_id"].as_str().expect("id")).await;
    assert_eq!(
        (kind.as_str(), status.as_str(), steppers, finals),
        ("x_away", "completed", vec![0], vec![600])
    );
    drop(c);
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x_calibrate_homes_to_the_nearer_switch_and_returns_to_where_x_was() {
    let db = TestDb::create().await;
    // The counter (450) says the away end is nearer; the carriage is at 470.
    let (rig, run, mut c) = started(&db, 600, Some("two"), 450, 470).await;
    let out = op(&mut c, "x_calibrate").await;
    assert_eq!(out["status"], json!("completed"), "{out}");
    let msg = out["message"].as_str().expect("message");
    assert!(
        msg.contains("X away switch pressed after 13 moves"),
        "{msg}"
    );
    assert!(msg.contains("off by -20"), "{msg}");
    assert!(msg.contains("moved back to 470"), "{msg}");
    assert_eq!(x_counter(&run), (470, true), "back where it was, trusted");
    assert_eq!(rig.sims[0].physical()[0], 470, "and really there");
    let moves = x_moves(&rig.sims[0]);
    assert_eq!(moves.len(), 14, "13 to the switch, one back");
    assert_eq!(moves.last().map(|m| m.1), Some(470));
    assert_rests(&moves);

    // Nearer home now: counter 120 (right this time).
    c.ok(json!({"cmd": "move", "stepper": 0, "position": 120}))
        .await;
    let out = op(&mut c, "x_calibrate").await;
    assert_eq!(out["status"], json!("completed"), "{out}");
    let msg = out["message"].as_str().expect("message");
    assert!(
        msg.contains("X home switch pressed after 12 moves"),
        "{msg}"
    );
    assert!(msg.contains("off by 0"), "{msg}");
    assert_eq!(x_counter(&run), (120, true));
    assert_eq!(rig.sims[0].physical()[0], 120);
    assert_rests(&x_moves(&rig.sims[0]));
    let (kind, status, _, finals, _) =
        shipped(&db, out["operation_id"].as_str().expect("id")).await;
    assert_eq!(
        (kind.as_str(), status.as_str(), finals),
        ("x_calibrate", "completed", vec![120])
    );
    assert_eq!(rig.violations(), 0);
    drop(c);
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_switch_for_both_ends_pressed_at_the_away_end_is_left_then_found_at_home() {
    let db = TestDb::create().await;
    // stringdriver-1's wiring; the carriage sits on the switch at the away end.
    let (rig, run, mut c) = started(&db, 300, Some("one"), 290, 300).await;
    assert!(rig.sims[0].x_switches().is_some_and(|s| s.away));
    let out = op(&mut c, "x_home").await;
    assert_eq!(out["status"], json!("completed"), "{out}");
    assert!(
        out["message"]
            .as_str()
            .is_some_and(|m| m.contains("after 30 moves")),
        "{out}"
    );
    assert_eq!(x_counter(&run), (0, true));
    assert_eq!(rig.sims[0].physical()[0], 0, "found at home, not away");
    drop(c);
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x_homing_skips_a_machine_whose_x_max_is_0() {
    let db = TestDb::create().await;
    // stringdriver-3: X is a placeholder without a motor, no switches.
    let (rig, run, mut c) = started(&db, 0, None, 0, 0).await;
    let writes = rig.sims[0].received(Op::SetStepper).len();
    for kind in ["x_home", "x_away", "x_calibrate"] {
        let out = op(&mut c, kind).await;
        assert_eq!(out["status"], json!("completed"), "{out}");
        let msg = out["message"].as_str().expect("message");
        assert!(msg.starts_with("skipped: X max is 0"), "{msg}");
        let (k, status, steppers, _, message) =
            shipped(&db, out["operation_id"].as_str().expect("id")).await;
        assert_eq!(
            (k.as_str(), status.as_str(), steppers),
            (kind, "completed", vec![0])
        );
        assert_eq!(message, msg);
    }
    assert!(x_moves(&rig.sims[0]).is_empty(), "nothing moved");
    assert_eq!(
        rig.sims[0].received(Op::SetStepper).len(),
        writes,
        "no counter written"
    );
    assert_eq!(x_counter(&run), (0, true));
    drop(c);
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_mid_x_home_ends_cancelled_and_moves_no_more() {
    let db = TestDb::create().await;
    let (rig, run, mut c) = started(&db, 600, Some("two"), 100, 550).await;
    c.ok(json!({"cmd": "op_run", "kind": "x_home"})).await;
    let sims = rig.sims.clone();
    let moving = tokio::task::spawn_blocking(move || {
        sims[0].wait_for_trace(WAIT, |t| {
            t.iter()
                .filter(|e| {
                    matches!(&e.event, TraceEvent::Message { op: Some(Op::Amove), args, .. }
                        if args.first() == Some(&0))
                })
                .count()
                >= 3
        })
    });
    assert!(moving.await.expect("join"), "x_home moved X");
    // While it searches, the count from X max is nobody's position.
    assert!(!x_counter(&run).1, "X untrusted during the search");
    assert_eq!(
        c.ok(json!({"cmd": "op_cancel"})).await["cancelled"],
        json!(true)
    );
    let out = c.ok(json!({"cmd": "op_wait"})).await;
    assert_eq!(out["status"], json!("cancelled"), "{out}");
    let after = x_moves(&rig.sims[0]).len();
    assert!(after < 55, "stopped before the switch: {after} moves");
    // The board goes on being polled; no X move comes among the next polls.
    let polls = rig.sims[0].received(Op::Positions).len();
    let sims = rig.sims.clone();
    let polled = tokio::task::spawn_blocking(move || {
        sims[0].wait_for_trace(WAIT, |t| common::count_of(t, Op::Positions) >= polls + 5)
    });
    assert!(polled.await.expect("join"), "the board is still polled");
    assert_eq!(
        x_moves(&rig.sims[0]).len(),
        after,
        "no X move after the cancel"
    );
    assert_rests(&x_moves(&rig.sims[0]));
    let (_, trusted) = x_counter(&run);
    assert!(!trusted, "a cancelled search leaves X untrusted");
    let (kind, status, _, _, _) = shipped(&db, out["operation_id"].as_str().expect("id")).await;
    assert_eq!((kind.as_str(), status.as_str()), ("x_home", "cancelled"));
    drop(c);
    run.stop().await;
}
