//! The control socket end to end: the daemon in-process on simulated boards
//! and feed with real PostgreSQL, clients on the real Unix socket, and
//! `stringdriverctl` as a real process.

mod common;

use std::time::Duration;

use common::control::Client;
use common::machine::{set_pose, InProcess, MachineOptions, SimMachine, WAIT};
use common::pg::TestDb;
use serde_json::{json, Value};

const HOST: &str = "sd-ctl";

/// The simulated machine shipping to `db`.
fn machine(db: &TestDb) -> SimMachine {
    let mut o = MachineOptions::new(HOST);
    o.db_url = Some(db.url());
    SimMachine::start(o)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_moves_enables_and_refusals() {
    let db = TestDb::create().await;
    let rig = machine(&db);
    let run = InProcess::start(&rig).await;
    set_pose(&run.parts).await;
    let mut c = Client::connect(&rig.socket()).await;

    let st = c.ok(json!({"cmd": "status"})).await;
    let boards = st["boards"].as_array().expect("boards");
    assert_eq!(boards.len(), 2);
    assert_eq!(boards[0]["name"], json!("carriage"));
    assert_eq!(boards[0]["link"], json!("connected"));
    assert_eq!(st["enabled"].as_array().expect("enabled").len(), 19);
    assert_eq!(st["settings"]["z_rest"], json!(0.05));
    for key in ["feed", "spool", "shipper", "operation", "snapshots"] {
        assert!(st[key].is_object(), "{key} in {st}");
    }

    let m = c.ok(json!({"cmd": "move", "stepper": 3, "delta": 5})).await;
    assert_eq!(
        (m["stepper"].clone(), m["position"].clone()),
        (json!(3), json!(28))
    );
    let m = c
        .ok(json!({"cmd": "move", "stepper": 3, "position": 21}))
        .await;
    assert_eq!(m["position"], json!(21));
    let m = c
        .ok(json!({"cmd": "set_position", "stepper": 14, "position": -7}))
        .await;
    assert_eq!(m["position"], json!(-7));
    assert_eq!(run.parts.boards[1].status().positions.expect("read")[1], -7);

    let d = c.ok(json!({"cmd": "disable", "stepper": 3})).await;
    assert_eq!(d, json!({"stepper": 3, "enabled": false}));
    assert!(!run.parts.settings.borrow().enabled[3]);
    let msg = c
        .err(json!({"cmd": "move", "stepper": 3, "delta": 1}), "refused")
        .await;
    assert_eq!(msg, "stepper 3 is disabled");
    c.ok(json!({"cmd": "enable", "stepper": 3})).await;
    c.ok(json!({"cmd": "move", "stepper": 3, "delta": 1})).await;

    let msg = c
        .err(json!({"cmd": "move", "stepper": 99, "delta": 1}), "refused")
        .await;
    assert!(msg.contains("stepper 99 does not exist"), "{msg}");
    let msg = c
        .err(json!({"cmd": "enable", "stepper": 99}), "refused")
        .await;
    assert!(msg.contains("does not exist"), "{msg}");
    let msg = c
        .err(
            json!({"cmd": "move", "stepper": 3, "delta": 100000}),
            "refused",
        )
        .await;
    assert!(msg.contains("outside its limits"), "{msg}");

    // The configured mode, and a second server on a live socket refuses to start.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(rig.socket())
        .expect("socket")
        .permissions()
        .mode();
    let cfg = stringdriverd::config::load(&rig.cfg_path).expect("config");
    assert_eq!(mode & 0o777, cfg.control.mode);
    let e = stringdriverd::control::start(
        &cfg.control,
        run.parts.clone(),
        tokio_util::sync::CancellationToken::new(),
    )
    .await
    .expect_err("in use");
    assert!(e.to_string().contains("already answers"), "{e}");
    c.ok(json!({"cmd": "status"})).await;

    let snap = c.ok(json!({"cmd": "snapshot"})).await;
    assert!(
        snap["state_id"].as_str().is_some_and(|s| s.len() == 36),
        "{snap}"
    );
    drop(c);
    run.stop().await;
    assert!(
        !rig.socket().exists(),
        "the socket file is removed at shutdown"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_its_error_and_the_connection_and_others_keep_working() {
    let db = TestDb::create().await;
    let rig = machine(&db);
    let run = InProcess::start(&rig).await;
    let mut c = Client::connect(&rig.socket()).await;
    let mut other = Client::connect(&rig.socket()).await;

    c.send_raw("{\"v\":1,\"cmd\":").await;
    let r = c.read().await.expect("reply");
    assert_eq!(r["error"]["kind"], json!("bad_json"), "{r}");
    assert!(
        r["error"]["message"].as_str().expect("msg").contains("EOF"),
        "{r}"
    );
    c.ok(json!({"cmd": "get", "name": "z_rest"})).await;

    let msg = c.err(json!({"cmd": "dance"}), "unknown_command").await;
    assert!(msg.contains("dance") && msg.contains("op_report"), "{msg}");
    let msg = c
        .err(json!({"cmd": "move", "delta": 1}), "bad_request")
        .await;
    assert!(msg.contains("`stepper`"), "{msg}");
    let msg = c
        .err(
            json!({"cmd": "move", "stepper": "three", "delta": 1}),
            "bad_request",
        )
        .await;
    assert!(msg.contains("`stepper`") && msg.contains("three"), "{msg}");
    c.send_raw(r#"{"v":2,"id":"x","cmd":"status"}"#).await;
    let r = c.read().await.expect("reply");
    assert_eq!(
        (r["id"].clone(), r["error"]["kind"].clone()),
        (json!("x"), json!("unsupported_version"))
    );
    c.ok(json!({"cmd": "get"})).await;
    other.ok(json!({"cmd": "get", "name": "z_up_step"})).await;

    // A huge line: its error, then the connection closes; others go on.
    let huge = format!(
        "{{\"v\":1,\"cmd\":\"get\",\"pad\":\"{}\"}}",
        "x".repeat(70 * 1024)
    );
    c.send_raw(&huge).await;
    let r = c.read().await.expect("reply");
    assert_eq!(r["error"]["kind"], json!("line_too_long"), "{r}");
    assert!(c.read().await.is_none(), "closed after line_too_long");
    other.ok(json!({"cmd": "status"})).await;

    // A client that floods past the rate limit is told so.
    let mut flood = Client::connect(&rig.socket()).await;
    let mut batch = String::new();
    for i in 0..150 {
        batch.push_str(&format!(
            "{{\"v\":1,\"id\":{i},\"cmd\":\"get\",\"name\":\"z_rest\"}}\n"
        ));
    }
    flood.send_bytes(batch.as_bytes()).await;
    let mut limited = 0;
    for _ in 0..150 {
        let r = flood.read().await.expect("reply");
        if r["error"]["kind"] == json!("rate_limited") {
            limited += 1;
        }
    }
    assert!(limited >= 1, "rate limited some");
    other.ok(json!({"cmd": "get"})).await;
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_validates_and_persists_across_a_restart() {
    let db = TestDb::create().await;
    let rig = machine(&db);
    // A socket file left by a crash (nobody answers) does not stop the start.
    drop(std::os::unix::net::UnixListener::bind(rig.socket()).expect("stale socket"));
    assert!(rig.socket().exists());
    let run = InProcess::start(&rig).await;
    let mut c = Client::connect(&rig.socket()).await;
    let msg = c
        .err(
            json!({"cmd": "set", "name": "z_up_step", "value": -3}),
            "invalid_setting",
        )
        .await;
    assert!(msg.contains("> 0"), "{msg}");
    let msg = c
        .err(
            json!({"cmd": "set", "name": "speed", "value": 1}),
            "invalid_setting",
        )
        .await;
    assert!(msg.contains("unknown setting"), "{msg}");
    let v = c.ok(json!({"cmd": "get", "name": "z_up_step"})).await;
    let before = v["value"].clone();
    assert!(before.as_i64().is_some_and(|v| v > 0), "{v}");
    c.err(json!({"cmd": "set", "name": "z_up_step"}), "bad_request")
        .await;

    let r = c
        .ok(json!({"cmd": "set", "name": "z_rest", "value": 0.25}))
        .await;
    assert_eq!(r, json!({"name": "z_rest", "value": 0.25}));
    let r = c
        .ok(json!({"cmd": "set", "name": "voice_count_max", "value": 11}))
        .await;
    assert_eq!(r["value"], json!([11, 11, 11, 11, 11, 11]));
    assert_eq!(run.parts.settings.borrow().operations.z_rest, 0.25);
    drop(c);
    run.stop().await;

    let again = InProcess::start(&rig).await;
    let mut c = Client::connect(&rig.socket()).await;
    let v = c.ok(json!({"cmd": "get", "name": "z_rest"})).await;
    assert_eq!(v["value"], json!(0.25));
    let all = c.ok(json!({"cmd": "get"})).await;
    assert_eq!(
        all["settings"]["voice_count_max"],
        json!([11, 11, 11, 11, 11, 11])
    );
    assert_eq!(all["settings"]["z_up_step"], before);
    drop(c);
    again.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operations_run_wait_and_reports_ship_to_postgres() {
    let db = TestDb::create().await;
    let rig = machine(&db);
    let run = InProcess::start(&rig).await;
    set_pose(&run.parts).await;
    let mut c = Client::connect(&rig.socket()).await;
    let mut events = Client::connect(&rig.socket()).await;
    let e = events.ok(json!({"cmd": "events"})).await;
    assert_eq!(e, json!({"events": true}));

    // No touch sensors configured: refused before anything is recorded.
    let out = c
        .err(
            json!({"cmd": "op_run", "kind": "bump_check", "wait": true}),
            "refused",
        )
        .await;
    assert!(
        out.starts_with("bump_check not started: ") && out.contains("touch sensors are disabled"),
        "{out}"
    );
    let last = c.err(json!({"cmd": "op_wait"}), "refused").await;
    assert_eq!(last, out);
    let msg = c
        .err(json!({"cmd": "op_run", "kind": "polish"}), "bad_request")
        .await;
    assert!(msg.contains("`kind`"), "{msg}");
    let r = c.ok(json!({"cmd": "op_run", "kind": "bump_check"})).await;
    assert_eq!(r, json!({"started": "bump_check"}));
    let waited = c.err(json!({"cmd": "op_wait"}), "refused").await;
    assert!(waited.contains("touch sensors are disabled"), "{waited}");

    // The events stream saw the operation start and end.
    let mut seen = (false, false);
    let deadline = tokio::time::Instant::now() + WAIT;
    while !(seen.0 && seen.1) {
        assert!(tokio::time::Instant::now() < deadline, "operation events");
        let ev = events.read().await.expect("event");
        if ev["event"] == json!("operation") {
            if ev["phase"] == json!("started") {
                seen.0 = true;
            } else if ev["phase"] == json!("ended") {
                seen.1 = true;
            }
        }
    }

    let started = c
        .ok(
            json!({"cmd": "op_report", "kind": "z_adjust", "status": "started",
                   "steppers": [1, 2], "final_positions": [21, 22]}),
        )
        .await;
    let id = started["operation_id"].as_str().expect("id").to_string();
    c.ok(
        json!({"cmd": "op_report", "kind": "z_adjust", "status": "completed",
                "steppers": [1, 2], "final_positions": [23, 24],
                "message": "done elsewhere", "operation_id": id}),
    )
    .await;
    c.err(
        json!({"cmd": "op_report", "kind": "z_adjust", "status": "completed",
               "steppers": [1], "final_positions": [1]}),
        "bad_request",
    )
    .await;

    let client = db.client().await;
    let uuid = uuid::Uuid::parse_str(&id).expect("uuid");
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let rows = client
            .query(
                "SELECT operation_status, message, final_positions, completed_at IS NOT NULL, host \
                 FROM operations WHERE operation_id = $1",
                &[&uuid],
            )
            .await
            .unwrap_or_default();
        if let Some(r) = rows.first() {
            let status: String = r.get(0);
            if status == "completed" {
                assert_eq!(
                    r.get::<_, Option<String>>(1).as_deref(),
                    Some("done elsewhere")
                );
                assert_eq!(r.get::<_, Vec<i32>>(2), vec![23, 24]);
                assert!(r.get::<_, bool>(3));
                assert_eq!(r.get::<_, String>(4), HOST);
                // The refused runs left no row (shipped in order, before this one).
                let refused = client
                    .query_one(
                        "SELECT count(*) FROM operations WHERE operation_type = 'bump_check'",
                        &[],
                    )
                    .await
                    .expect("count");
                assert_eq!(
                    refused.get::<_, i64>(0),
                    0,
                    "no row for a refused operation"
                );
                break;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "reported operation shipped"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(c);
    drop(events);
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stringdriverctl_talks_to_the_daemon_as_a_process() {
    let db = TestDb::create().await;
    let rig = machine(&db);
    let run = InProcess::start(&rig).await;
    set_pose(&run.parts).await;
    let sock = rig.socket();
    let ctl = |args: &[&str]| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_stringdriverctl"));
        cmd.arg("--socket").arg(&sock).args(args);
        cmd
    };
    // The printed status shows the boards; their state is checked on the
    // structured form ("shipper: not connected" contains "connected" too).
    let out = tokio::task::spawn_blocking({
        let mut c = ctl(&["status"]);
        move || c.output()
    })
    .await
    .expect("join")
    .expect("run");
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("carriage"));
    let out = tokio::task::spawn_blocking({
        let mut c = ctl(&["--json", "status"]);
        move || c.output()
    })
    .await
    .expect("join")
    .expect("run");
    let st: Value = serde_json::from_slice(&out.stdout).expect("status --json is JSON");
    assert!(common::control::boards_ready(&st), "{st}");

    let out = tokio::task::spawn_blocking({
        let mut c = ctl(&["move", "2", "-2"]);
        move || c.output()
    })
    .await
    .expect("join")
    .expect("run");
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("stepper 2 at 20"),
        "{out:?}"
    );
    assert_eq!(run.parts.boards[0].status().positions.expect("read")[2], 20);

    let out = tokio::task::spawn_blocking({
        let mut c = ctl(&["--json", "move", "--abs", "2", "25"]);
        move || c.output()
    })
    .await
    .expect("join")
    .expect("run");
    let v: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["position"], json!(25));

    let out = tokio::task::spawn_blocking({
        let mut c = ctl(&["move", "99", "1"]);
        move || c.output()
    })
    .await
    .expect("join")
    .expect("run");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("refused: stepper 99 does not exist"),
        "{out:?}"
    );
    run.stop().await;

    let out = tokio::task::spawn_blocking({
        let mut c = ctl(&["status"]);
        move || c.output()
    })
    .await
    .expect("join")
    .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&sock.display().to_string()),
        "{out:?}"
    );
}
