//! The sweeps against the simulator's physics: the daemon in-process on the
//! simulated stringdriver-2 (touch sensors, a live audmon feed that follows
//! how far each Z mechanism is from its string), real PostgreSQL, the
//! control socket and `stringdriverctl` as a real process.

mod common;

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use common::control::{ctl, status, Client};
use common::machine::{started, FeedMode, InProcess, MachineOptions, SimMachine, WAIT};
use common::pg::TestDb;
use serde_json::{json, Value};
use stringdriverd::protocol::Op;
use stringdriverd::sim::{SimHandle, TraceEvent};

/// The simulated machine with sensors, a live feed and the demo's starting
/// pose (every Z mechanism 20 steps above its string), shipping to `db`.
fn options(host: &str, db: Option<&TestDb>) -> MachineOptions {
    let mut o = MachineOptions::new(host);
    o.sensors = true;
    o.feed = FeedMode::Live;
    o.demo_physics = true;
    o.db_url = db.map(TestDb::url);
    o
}

/// Waits until the boards are ready, the feed is ok and every sensor reads.
async fn ready(rig: &SimMachine) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(st) = status(&rig.socket()).await {
            if common::control::boards_ready(&st) && st["feed"]["state"] == "ok" {
                return;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "machine never ready for a sweep"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Run-time settings through the control socket.
async fn set(c: &mut Client, settings: &[(&str, Value)]) {
    for (name, value) in settings {
        c.ok(json!({"cmd": "set", "name": name, "value": value}))
            .await;
    }
}

/// Subscribes to events and collects, in a task that keeps reading (a
/// client that stops reading is disconnected), the operation events until
/// the operation's `ended`.
async fn collect_op_events(rig: &SimMachine) -> tokio::task::JoinHandle<Vec<Value>> {
    let mut events = Client::connect(&rig.socket()).await;
    events.ok(json!({"cmd": "events"})).await;
    tokio::spawn(async move { op_events_until_ended(&mut events, None).await })
}

/// A request sent on `client` when a progress event matches `when`.
type OnProgress = (fn(&Value) -> bool, Client, Value);

async fn op_events_until_ended(events: &mut Client, mut on: Option<OnProgress>) -> Vec<Value> {
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    loop {
        assert!(tokio::time::Instant::now() < deadline, "no end: {seen:?}");
        // Snapshot events come every 100 ms: a silent stream is a dead one.
        let Some(ev) = events.read().await else {
            panic!("events connection closed: {seen:?}");
        };
        if ev["event"] != "operation" {
            continue;
        }
        let ended = ev["phase"] == "ended";
        if let Some((when, client, req)) = &mut on {
            if ev["phase"] == "progress" && when(&ev) {
                client.ok(req.clone()).await;
                on = None;
            }
        }
        seen.push(ev);
        if ended {
            return seen;
        }
    }
}

/// One `operations` row.
#[derive(Debug, Clone)]
struct Row {
    kind: String,
    status: String,
    started: DateTime<Utc>,
    ended: Option<DateTime<Utc>>,
    message: String,
    steppers: Vec<i32>,
}

/// Every operations row of `host`, by start time, once the row of
/// `operation_id` has shipped in a terminal state (the spool ships in order,
/// so every row recorded before it is there too).
async fn rows_after(db: &TestDb, host: &str, operation_id: &str) -> Vec<Row> {
    let id = uuid::Uuid::parse_str(operation_id).expect("uuid");
    let client = db.client().await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let done = client
            .query(
                "SELECT 1 FROM operations WHERE operation_id = $1 AND operation_status <> 'started'",
                &[&id],
            )
            .await
            .map(|r| !r.is_empty())
            .unwrap_or(false);
        if done {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the operation never shipped"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    client
        .query(
            "SELECT operation_type, operation_status, recorded_at, completed_at, message, stepper_indices \
             FROM operations WHERE host = $1 ORDER BY recorded_at",
            &[&host],
        )
        .await
        .expect("query")
        .iter()
        .map(|r| Row {
            kind: r.get(0),
            status: r.get(1),
            started: r.get(2),
            ended: r.get(3),
            message: r.get::<_, Option<String>>(4).unwrap_or_default(),
            steppers: r.get(5),
        })
        .collect()
}

/// The rows nested directly under `parent` (by time: started and ended
/// inside it, and inside no other row that is itself inside it).
fn children<'a>(rows: &'a [Row], parent: &Row) -> Vec<&'a Row> {
    let inside = |r: &Row, p: &Row| {
        r.started > p.started
            && match (r.ended, p.ended) {
                (Some(a), Some(b)) => a <= b,
                _ => false,
            }
    };
    let within: Vec<&Row> = rows.iter().filter(|r| inside(r, parent)).collect();
    within
        .iter()
        .filter(|r| !within.iter().any(|o| inside(r, o)))
        .copied()
        .collect()
}

/// Move messages (stepper, target, when) the carriage board received after `since`.
fn moves(sim: &SimHandle, since: Instant) -> Vec<(i32, i32, Instant)> {
    sim.trace()
        .into_iter()
        .filter(|e| e.at >= since)
        .filter_map(|e| match e.event {
            TraceEvent::Message {
                op: Some(Op::Amove | Op::Rmove),
                args,
                ..
            } if args.len() >= 2 => Some((args[0], args[1], e.at)),
            _ => None,
        })
        .collect()
}

/// When the board was next asked for its positions after `t`: no later
/// than the driver's confirmation of a move sent at `t`.
fn confirmed(sim: &SimHandle, t: Instant) -> Instant {
    sim.received(Op::Positions)
        .into_iter()
        .map(|e| e.at)
        .find(|at| *at > t)
        .expect("a positions request after the move")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sweep_completes_as_the_simulated_sound_comes_into_range_with_every_pass_recorded_and_rested(
) {
    const HOST: &str = "sd-sweep-ok";
    let db = TestDb::create().await;
    let (rig, run) = started(options(HOST, Some(&db))).await;
    ready(&rig).await;
    let mut c = Client::connect(&rig.socket()).await;
    // Z 20 steps above the strings sounds ~209 per channel: too close for
    // amp_sum_max 190, so the first passes lift the pairs until it is in range.
    set(
        &mut c,
        &[
            ("x_start", json!(100)),
            ("x_finish", json!(120)),
            ("x_step", json!(10)),
            ("adjustment_level", json!(2)),
            ("x_rest", json!(1.0)),
            ("amp_sum_max", json!(190)),
        ],
    )
    .await;
    // When X is about to leave 100, the thresholds tighten (amp_sum_max
    // 175): at 110 the strings are too close again, so Z moves follow that X
    // move and must wait its x_rest.
    let collector = {
        let mut events = Client::connect(&rig.socket()).await;
        events.ok(json!({"cmd": "events"})).await;
        let on: OnProgress = (
            |e| e["position"] == 1 && e["next"] == "step_x",
            Client::connect(&rig.socket()).await,
            json!({"cmd": "set", "name": "amp_sum_max", "value": 175}),
        );
        tokio::spawn(async move { op_events_until_ended(&mut events, Some(on)).await })
    };
    let since = Instant::now();

    let out = ctl(&rig.socket(), &["op", "run", "sweep_left_right", "--wait"]).await;
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    assert!(
        stdout.starts_with("sweep_left_right completed: X (stepper 0) 100 to 120 in steps of 10: 3 of 3 positions done, X at 120"),
        "{stdout}"
    );

    // Progress after every pass, in order, X stepping 100, 110, 120.
    let evs = collector.await.expect("events");
    let progress: Vec<&Value> = evs.iter().filter(|e| e["phase"] == "progress").collect();
    let passes: Vec<&&Value> = progress.iter().filter(|e| !e["clean"].is_null()).collect();
    assert!(passes.len() >= 6, "{progress:?}");
    assert_eq!(passes[0]["clean"], json!(false), "starts out of range");
    assert_eq!(passes[0]["x"], json!(100));
    assert_eq!(passes[0]["deltas"], json!([0.0, 0.0, 0.0, 0.0, 0.0, 0.0]));
    let last = passes.last().expect("a pass");
    assert_eq!(
        (
            last["x"].clone(),
            last["next"].clone(),
            last["clean_run"].clone()
        ),
        (json!(120), json!("done"), json!(2))
    );
    let xs: Vec<i64> = passes.iter().filter_map(|e| e["x"].as_i64()).collect();
    assert!(xs.windows(2).all(|w| w[0] <= w[1]), "{xs:?}");
    let at_110: Vec<&&&Value> = passes.iter().filter(|e| e["x"] == 110).collect();
    assert_eq!(at_110[0]["clean"], json!(false), "too close again at 110");
    assert!(at_110.len() > 2, "{xs:?}");
    assert_eq!(
        xs.iter().filter(|v| **v == 120).count(),
        2,
        "two clean passes at X 120: {xs:?}"
    );
    // stringdriverctl printed one line per progress event, then the outcome.
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("... sweep_left_right X "))
        .collect();
    assert_eq!(lines.len(), progress.len(), "{stderr}");
    assert!(
        lines[0].contains("X 100 (position 1/3) pass 1: not clean, clean run 0/2"),
        "{}",
        lines[0]
    );
    assert!(
        lines.last().expect("line").ends_with("next: done"),
        "{stderr}"
    );

    // The rows: the sweep, then per pass a z_adjust (with its two
    // bump_checks) and a bump_check, nested under it by time.
    let id = evs
        .iter()
        .find(|e| e["phase"] == "ended")
        .and_then(|e| e["outcome"]["operation_id"].as_str())
        .expect("outcome id")
        .to_string();
    let rows = rows_after(&db, HOST, &id).await;
    let sweep = &rows[0];
    assert_eq!(
        (sweep.kind.as_str(), sweep.status.as_str()),
        ("sweep_left_right", "completed"),
        "{rows:#?}"
    );
    assert_eq!(
        sweep.steppers,
        (0..=12).collect::<Vec<i32>>(),
        "X and the Z steppers"
    );
    assert!(
        sweep.message.contains("3 of 3 positions done"),
        "{}",
        sweep.message
    );
    let kids = children(&rows, sweep);
    assert_eq!(kids.len(), rows.len() - 1 - 2 * passes.len(), "{rows:#?}");
    assert_eq!(
        kids.len(),
        2 * passes.len(),
        "one z_adjust and one bump_check per pass"
    );
    for pair in kids.chunks(2) {
        assert_eq!(
            (pair[0].kind.as_str(), pair[1].kind.as_str()),
            ("z_adjust", "bump_check")
        );
        assert!(pair.iter().all(|r| r.status == "completed"), "{pair:#?}");
        let inner = children(&rows, pair[0]);
        assert_eq!(inner.len(), 2, "z_adjust's own bump_checks: {inner:#?}");
        assert!(inner.iter().all(|r| r.kind == "bump_check"));
    }
    assert!(
        kids.iter()
            .any(|r| r.kind == "z_adjust" && r.message.contains("stepper")),
        "some pass moved a stepper: {kids:#?}"
    );

    // The sound really came into range: the feed now.
    let st = status(&rig.socket()).await.expect("status");
    let amps: Vec<f64> = st["feed"]["amp_sum"]
        .as_array()
        .expect("amp_sum")
        .iter()
        .filter_map(Value::as_f64)
        .collect();
    assert!(amps.iter().all(|a| (20.0..=175.0).contains(a)), "{amps:?}");

    // Every move rested: after an X move nothing moves for x_rest; a Z
    // stepper moves again only z_rest after its previous move.
    let sim = &rig.sims[0];
    let all = moves(sim, since);
    let x_moves: Vec<_> = all.iter().filter(|m| m.0 == 0).collect();
    assert_eq!(
        x_moves.iter().map(|m| m.1).collect::<Vec<i32>>(),
        vec![110, 120],
        "X stepped twice (it started at 100)"
    );
    let after_x: Vec<_> = x_moves
        .iter()
        .filter_map(|xm| all.iter().find(|m| m.2 > xm.2).map(|next| (xm, next)))
        .collect();
    assert!(
        (1..=12).contains(&after_x[0].1 .0),
        "a Z move follows the step to 110: {after_x:?}"
    );
    for (xm, next) in after_x {
        let gap = next.2.duration_since(confirmed(sim, xm.2));
        assert!(gap >= Duration::from_secs(1), "x_rest kept: {gap:?}");
    }
    for z in 1..=12 {
        let zs: Vec<_> = all.iter().filter(|m| m.0 == z).collect();
        for w in zs.windows(2) {
            let gap = w[1].2.duration_since(confirmed(sim, w[0].2));
            assert!(
                gap >= Duration::from_millis(50),
                "z_rest of {z} kept: {gap:?}"
            );
        }
    }
    assert_eq!(rig.violations(), 0);
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_string_that_never_comes_into_range_hits_the_calibration_bound_and_the_sweep_fails() {
    const HOST: &str = "sd-sweep-bound";
    let db = TestDb::create().await;
    let mut o = options(HOST, Some(&db));
    o.operations_extra = "sweep_max_calibrations = 1\n".into();
    let (rig, run) = started(o).await;
    ready(&rig).await;
    let mut c = Client::connect(&rig.socket()).await;
    // Only string 0's pair works (a short calibration); its amp_sum can
    // never reach 400 (~310 touching).
    for z in 3..=12 {
        c.ok(json!({"cmd": "disable", "stepper": z})).await;
    }
    set(
        &mut c,
        &[
            ("x_start", json!(100)),
            ("x_finish", json!(110)),
            ("retry_threshold", json!(2)),
            ("amp_sum_max", json!([500, 250, 250, 250, 250, 250])),
            ("amp_sum_min", json!([400, 20, 20, 20, 20, 20])),
        ],
    )
    .await;

    let out = ctl(
        &rig.socket(),
        &["--json", "op", "run", "sweep_left_right", "--wait"],
    )
    .await;
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    let outcome: Value = serde_json::from_str(&stdout).expect("JSON outcome");
    assert_eq!(outcome["status"], "failed", "{outcome}");
    let msg = outcome["message"].as_str().expect("message");
    assert!(
        msg.starts_with("sweep_left_right failed at X 100: a full z_calibrate is needed (2 passes at this X position reached retry_threshold 2) but this sweep has already run 1 (operations.sweep_max_calibrations = 1): the sound does not come into range"),
        "{msg}"
    );
    assert!(
        msg.ends_with("0 of 2 positions done, X at 100, 4 passes, 1 calibrations)"),
        "{msg}"
    );
    // --json: the progress events as JSON lines on stderr.
    let progress: Vec<Value> = stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["phase"] == "progress")
        .collect();
    let nexts: Vec<&str> = progress.iter().filter_map(|e| e["next"].as_str()).collect();
    assert_eq!(nexts, ["pass", "calibrate", "pass", "fail"], "{stderr}");
    assert!(progress.iter().all(|e| e["clean"] == json!(false)));

    let rows = rows_after(&db, HOST, outcome["operation_id"].as_str().expect("id")).await;
    let sweep = &rows[0];
    assert_eq!(
        (sweep.kind.as_str(), sweep.status.as_str()),
        ("sweep_left_right", "failed")
    );
    assert_eq!(sweep.message, msg);
    let kinds: Vec<&str> = children(&rows, sweep)
        .iter()
        .map(|r| r.kind.as_str())
        .collect();
    assert_eq!(
        kinds,
        [
            "z_adjust",
            "bump_check",
            "z_adjust",
            "bump_check",
            "z_calibrate",
            "z_adjust",
            "bump_check",
            "z_adjust",
            "bump_check"
        ]
    );
    assert!(rows.iter().all(|r| r.status != "started"));
    assert_eq!(rig.violations(), 0);
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_mid_sweep_ends_the_sweep_and_its_running_z_adjust_cancelled_and_nothing_moves_after(
) {
    const HOST: &str = "sd-sweep-cancel";
    let db = TestDb::create().await;
    let (rig, run) = started(options(HOST, Some(&db))).await;
    ready(&rig).await;
    let mut c = Client::connect(&rig.socket()).await;
    // String 0 always too far: every pass moves; a long lap_rest after the
    // move is where the cancel lands.
    set(
        &mut c,
        &[
            ("amp_sum_max", json!([500, 250, 250, 250, 250, 250])),
            ("amp_sum_min", json!([400, 20, 20, 20, 20, 20])),
            ("lap_rest", json!(30.0)),
        ],
    )
    .await;
    let collector = collect_op_events(&rig).await;
    let since = Instant::now();
    c.ok(json!({"cmd": "op_run", "kind": "sweep_left_right"}))
        .await;
    // The first Z move: z_adjust's move of string 0, followed by its lap_rest.
    let sim = &rig.sims[0];
    let deadline = Instant::now() + WAIT;
    while !moves(sim, since).iter().any(|m| (1..=12).contains(&m.0)) {
        assert!(Instant::now() < deadline, "no Z move");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cancel_at = Instant::now();
    let r = c.ok(json!({"cmd": "op_cancel"})).await;
    assert_eq!(r, json!({"cancelled": true}));
    let evs = collector.await.expect("events");
    let outcome = &evs.last().expect("ended")["outcome"];
    assert_eq!(outcome["status"], "cancelled", "{outcome}");
    assert!(
        moves(sim, cancel_at).is_empty(),
        "no move after the cancel: {:?}",
        moves(sim, cancel_at)
    );
    let rows = rows_after(&db, HOST, outcome["operation_id"].as_str().expect("id")).await;
    let summary: Vec<(&str, &str)> = rows
        .iter()
        .map(|r| (r.kind.as_str(), r.status.as_str()))
        .collect();
    assert_eq!(
        summary,
        [
            ("sweep_left_right", "cancelled"),
            ("z_adjust", "cancelled"),
            ("bump_check", "completed"),
        ]
    );
    // Still nothing after the rows are all in.
    assert!(moves(sim, cancel_at).is_empty());
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sweep_is_refused_with_no_row_when_x_is_disabled_or_the_feed_is_absent() {
    let (rig, run): (SimMachine, InProcess) = started(options("sd-sweep-refused", None)).await;
    ready(&rig).await;
    let mut c = Client::connect(&rig.socket()).await;
    c.ok(json!({"cmd": "disable", "stepper": 0})).await;
    let msg = c
        .err(
            json!({"cmd": "op_run", "kind": "sweep_right_left", "wait": true}),
            "refused",
        )
        .await;
    assert_eq!(msg, "sweep_right_left refused: the X stepper 0 is disabled");
    c.ok(json!({"cmd": "enable", "stepper": 0})).await;
    rig.set_feed_present(false);
    let deadline = tokio::time::Instant::now() + WAIT;
    while status(&rig.socket())
        .await
        .is_none_or(|s| s["feed"]["state"] == "ok")
    {
        assert!(tokio::time::Instant::now() < deadline, "feed never gone");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let msg = c
        .err(
            json!({"cmd": "op_run", "kind": "sweep_left_right", "wait": true}),
            "refused",
        )
        .await;
    assert!(
        msg.starts_with("sweep_left_right not started: it needs the audmon feed, which is absent"),
        "{msg}"
    );
    let ops = run
        .parts
        .spool
        .peek(100_000)
        .await
        .expect("peek")
        .into_iter()
        .filter(|s| matches!(s.record, stringdriverd::store::Record::Operation { .. }))
        .count();
    assert_eq!(ops, 0, "refused before any row");
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sweep_right_left_goes_from_x_finish_back_to_x_start() {
    let (rig, run) = started(options("sd-sweep-rl", None)).await;
    ready(&rig).await;
    let mut c = Client::connect(&rig.socket()).await;
    // The sound of Z 20 steps above the strings (~209) is in range for the
    // operators' amp_sum_max 250: one clean pass per position.
    set(
        &mut c,
        &[
            ("amp_sum_max", json!(250)),
            ("x_start", json!(95)),
            ("x_finish", json!(110)),
            ("x_step", json!(10)),
            ("adjustment_level", json!(1)),
        ],
    )
    .await;
    let collector = collect_op_events(&rig).await;
    let since = Instant::now();
    let out = c
        .ok(json!({"cmd": "op_run", "kind": "sweep_right_left", "wait": true}))
        .await;
    assert_eq!(out["status"], "completed", "{out}");
    assert!(
        out["message"].as_str().expect("message").starts_with(
            "X (stepper 0) 110 to 95 in steps of 10: 3 of 3 positions done, X at 95, 3 passes"
        ),
        "{out}"
    );
    // Absolute to x_finish first, then toward x_start, the last step short.
    let xs: Vec<i32> = moves(&rig.sims[0], since)
        .iter()
        .filter(|m| m.0 == 0)
        .map(|m| m.1)
        .collect();
    assert_eq!(xs, [110, 100, 95]);
    let evs = collector.await.expect("events");
    let at: Vec<(i64, &str)> = evs
        .iter()
        .filter(|e| e["phase"] == "progress")
        .map(|e| {
            (
                e["x"].as_i64().unwrap_or(-1),
                e["next"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(at, [(110, "step_x"), (100, "step_x"), (95, "done")]);
    run.stop().await;
}

#[tokio::test]
async fn a_sweep_is_refused_with_no_row_on_a_placeholder_x() {
    use std::sync::Arc;
    use stringdriverd::store::OperationType;
    // The operations rig's machine with X max 0 (stringdriver-3's placeholder X).
    let r = common::ops_rig::rig([0, 10, 20, 30, 35], [0, 10, 20, 30, 35]).await;
    let text = common::ops_rig::CONFIG.replace("z_first_index = 1", "x_max = 0\nz_first_index = 1");
    let cfg = stringdriverd::config::parse(&text, std::path::Path::new("x0.toml")).expect("config");
    let m = stringdriverd::ops::Machine {
        layout: Arc::new(cfg.layout),
        ..r.machine.clone()
    };
    let e = m
        .run(OperationType::SweepLeftRight, None)
        .await
        .expect_err("refused");
    assert_eq!(
        e.to_string(),
        "sweep_left_right refused: the X stepper's travel is 0 to 0 (X max 0: a placeholder X): \
         there is no carriage travel to sweep"
    );
    let e = r
        .machine
        .run(OperationType::SweepRightLeft, Some(1))
        .await
        .expect_err("refused");
    assert!(
        e.to_string().contains("a single stepper cannot be given"),
        "{e}"
    );
    assert!(common::ops_rig::events(&r.spool).await.is_empty(), "no row");
    assert_eq!(common::ops_rig::moves(&r.sims[0]), 0);
}
