//! Manual commands without surprises: counters outside the travel are
//! refused like moves, a move by zero sends nothing, a move whose client has
//! gone is dropped instead of being sent later, and errors say things once.

mod common;

use std::time::Duration;

use common::control::{ctl, request, Client};
use common::machine::{pose, started, InProcess, MachineOptions, SimMachine, WAIT};
use serde_json::json;
use stringdriverd::protocol::{Firmware, Op};
use tokio::io::AsyncWriteExt;

const HOST: &str = "sd-manual";

/// Amove/rmove messages of local stepper `local` the simulator received.
fn moves_of(sim: &stringdriverd::sim::SimHandle, local: i32) -> usize {
    [Op::Amove, Op::Rmove]
        .iter()
        .flat_map(|op| sim.received(*op))
        .filter(|e| {
            matches!(&e.event, stringdriverd::sim::TraceEvent::Message { args, .. } if args.first() == Some(&local))
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_position_outside_the_travel_is_refused_like_a_move_but_a_disabled_steppers_counter_may_be_set(
) {
    let (rig, run) = started(MachineOptions::new(HOST)).await;
    let mut c = Client::connect(&rig.socket()).await;
    let (min, max) = run.parts.machine.layout.limits(2);

    let msg = c
        .err(
            json!({"cmd": "set_position", "stepper": 2, "position": max + 1}),
            "refused",
        )
        .await;
    assert_eq!(
        msg,
        format!(
            "stepper 2 counter {} is outside its travel {min} to {max}",
            max + 1
        )
    );
    c.err(
        json!({"cmd": "set_position", "stepper": 2, "position": min - 1}),
        "refused",
    )
    .await;
    assert_eq!(
        rig.sims[0].counters()[2],
        pose()[2],
        "nothing reached the board"
    );
    assert!(rig.sims[0].received(Op::SetStepper).len() <= 13);

    // A disabled stepper's counter may still be set (nothing moves): an
    // operator vouches for it before enabling it.
    c.ok(json!({"cmd": "disable", "stepper": 2})).await;
    let r = c
        .ok(json!({"cmd": "set_position", "stepper": 2, "position": 7}))
        .await;
    assert_eq!(r["position"], json!(7), "{r}");
    assert_eq!(rig.sims[0].counters()[2], 7);
    // ... but not moved.
    let msg = c
        .err(json!({"cmd": "move", "stepper": 2, "delta": 1}), "refused")
        .await;
    assert_eq!(msg, "stepper 2 is disabled");
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_by_zero_sends_nothing_and_starts_no_rest() {
    let mut o = MachineOptions::new(HOST);
    // A rest long enough that waiting for it would show.
    o.z_rest = 30.0;
    let (rig, run) = started(o).await;
    let mut c = Client::connect(&rig.socket()).await;
    let before = moves_of(&rig.sims[0], 3);
    let r = c.ok(json!({"cmd": "move", "stepper": 3, "delta": 0})).await;
    assert_eq!(r["position"], json!(pose()[3]), "{r}");
    let r = c
        .ok(json!({"cmd": "move", "stepper": 3, "position": pose()[3]}))
        .await;
    assert_eq!(r["position"], json!(pose()[3]), "{r}");
    assert_eq!(moves_of(&rig.sims[0], 3), before, "nothing was sent");
    // The checks still apply: a disabled stepper is refused even for 0.
    c.ok(json!({"cmd": "disable", "stepper": 3})).await;
    c.err(json!({"cmd": "move", "stepper": 3, "delta": 0}), "refused")
        .await;
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manual_move_still_waiting_for_its_rest_is_dropped_when_its_client_hangs_up() {
    let mut o = MachineOptions::new(HOST);
    o.z_rest = 1.0;
    let (rig, run) = started(o).await;
    let socket = rig.socket();
    let mut c = Client::connect(&socket).await;
    let start = pose()[2];
    c.ok(json!({"cmd": "move", "stepper": 2, "delta": -1}))
        .await;
    let before = moves_of(&rig.sims[0], 2);

    // A client asks for the next move, which must wait for z_rest, and
    // hangs up before it is made.
    let mut gone = tokio::net::UnixStream::connect(&socket)
        .await
        .expect("connect");
    gone.write_all(b"{\"v\":1,\"id\":1,\"cmd\":\"move\",\"stepper\":2,\"delta\":-1}\n")
        .await
        .expect("write");
    drop(gone);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let st = request(
            &socket,
            json!({"v": 1, "cmd": "status"}),
            Duration::from_secs(5),
        )
        .await
        .expect("status");
        if st["control"]["requests_dropped"] == json!(1) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the request was never dropped: {}",
            st["control"]
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The next move waits for the same rest; once it is done, the dropped
    // one has had every chance to be sent, and was not.
    let r = c
        .ok(json!({"cmd": "move", "stepper": 2, "delta": -1}))
        .await;
    assert_eq!(r["position"], json!(start - 2), "{r}");
    assert_eq!(moves_of(&rig.sims[0], 2), before + 1);
    assert_eq!(rig.sims[0].counters()[2], start - 2);
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_queued_behind_a_busy_board_is_dropped_when_its_requester_has_gone() {
    let rig = common::rig(Firmware::V2).await;
    common::connected(&rig.board).await;
    rig.board.set_stepper(0, 0).await.expect("set X");
    // A long X move keeps the board busy (it reads nothing while it moves).
    let first = tokio::spawn({
        let b = rig.board.clone();
        async move { b.amove(0, 2500).await }
    });
    let deadline = tokio::time::Instant::now() + WAIT;
    while rig.sim.received(Op::Amove).is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "the move was sent");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Queued behind it, then given up by its requester.
    let mut queued = Box::pin(rig.board.set_stepper(3, 77));
    assert!(futures::poll!(&mut queued).is_pending());
    drop(queued);
    first
        .await
        .expect("join")
        .expect("the long move is confirmed");
    // A poll queued after it is answered: the driver has passed the
    // dropped command by now.
    rig.board.poll().await.expect("poll");
    assert_eq!(
        rig.sim.received(Op::SetStepper).len(),
        1,
        "only the first set_stepper reached the board"
    );
    assert_eq!(rig.sim.counters()[3], 0);
    rig.shutdown.cancel();
}

#[test]
fn errors_say_their_cause_once() {
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_stringdriverd"))
        .args(["probe", "--port", "/nonexistent/board"])
        .output()
        .expect("probe runs");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert_eq!(err.matches("No such file or directory").count(), 1, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_is_printed_once_by_stringdriverctl() {
    let (rig, run) = started(MachineOptions::new(HOST)).await;
    let out = ctl(&rig.socket(), &["move", "99", "1"]).await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        err.trim(),
        "refused: stepper 99 does not exist (the host has 19)"
    );
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn op_run_wait_exits_non_zero_when_the_operation_was_cancelled() {
    let mut o = MachineOptions::new(HOST);
    o.sensors = true;
    o.demo_physics = true;
    let (rig, run) = started(o).await;
    let socket = rig.socket();
    let waiting = tokio::spawn(async move {
        ctl(&socket, &["--json", "op", "run", "z_calibrate", "--wait"]).await
    });
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let st = common::control::status(&rig.socket()).await;
        if st.is_some_and(|s| s["operation"]["running"] == "z_calibrate") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "z_calibrate started"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut c = Client::connect(&rig.socket()).await;
    assert_eq!(
        c.ok(json!({"cmd": "op_cancel"})).await,
        json!({"cancelled": true})
    );
    let out = waiting.await.expect("join");
    let text = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{text}{err}");
    // Answered as an outcome, not refused: the exit code comes from the
    // operation's status.
    let outcome: serde_json::Value = serde_json::from_str(&text).expect("JSON outcome");
    assert_eq!(outcome["status"], "cancelled", "{outcome}");
    assert!(
        outcome["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("cancelled; left: ")),
        "{outcome}"
    );
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steppers_are_addressed_by_name_or_index_alike() {
    let (rig, run) = started(MachineOptions::new(HOST)).await;
    let socket = rig.socket();
    // The map: every stepper of the host with its name and live position.
    let out = ctl(&socket, &["--json", "steppers"]).await;
    assert!(out.status.success(), "{out:?}");
    let map: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON map");
    let list = map["steppers"].as_array().expect("steppers");
    assert_eq!(list.len(), 19);
    assert_eq!(list[0]["name"], "x");
    assert_eq!(list[5]["name"], "z2in");
    assert_eq!(list[5]["role"], "Z in, string 2");
    assert_eq!(list[16]["name"], "tuner3");
    for (g, s) in list.iter().enumerate() {
        assert_eq!(s["index"], json!(g));
        assert_eq!(s["position"], json!(pose()[g]), "{s}");
        assert_eq!(s["trusted"], json!(true), "{s}");
    }
    let table = ctl(&socket, &["steppers"]).await;
    let table = String::from_utf8_lossy(&table.stdout).into_owned();
    assert!(
        table
            .lines()
            .any(|l| l.contains("z2in") && l.contains("Z in, string 2")),
        "{table}"
    );

    // A name and its index move the same motor.
    let before = moves_of(&rig.sims[0], 5);
    let by_name = ctl(&socket, &["--json", "move", "z2in", "1"]).await;
    assert!(by_name.status.success(), "{by_name:?}");
    let r: serde_json::Value = serde_json::from_slice(&by_name.stdout).expect("JSON");
    assert_eq!(r["stepper"], json!(5));
    assert_eq!(r["position"], json!(pose()[5] + 1));
    let by_index = ctl(&socket, &["--json", "move", "5", "-1"]).await;
    assert!(by_index.status.success(), "{by_index:?}");
    let r: serde_json::Value = serde_json::from_slice(&by_index.stdout).expect("JSON");
    assert_eq!(r["position"], json!(pose()[5]));
    assert_eq!(moves_of(&rig.sims[0], 5), before + 2);

    // Names in any command that takes a stepper; an unknown one moves nothing.
    let r = request(
        &socket,
        json!({"v": 1, "cmd": "disable", "stepper": "Z2OUT"}),
        WAIT,
    )
    .await
    .expect("disable by name");
    assert_eq!(r["stepper"], json!(6), "{r}");
    let wrong = ctl(&socket, &["move", "z9in", "1"]).await;
    assert_eq!(wrong.status.code(), Some(1));
    let err = String::from_utf8_lossy(&wrong.stderr);
    assert!(err.contains("no stepper is named `z9in`"), "{err}");
    assert_eq!(moves_of(&rig.sims[0], 5), before + 2, "nothing moved");
    run.stop().await;
}

/// Polls `cond` every 20 ms for up to `WAIT`.
async fn eventually(mut cond: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + WAIT;
    while tokio::time::Instant::now() < deadline {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cond()
}

/// A machine with touch sensors whose z_calibrate takes long enough to be
/// interrupted: mechanisms start clear of their strings (at 0 every sensor
/// would touch), and z_rest makes each step slow.
async fn slow_calibration() -> (SimMachine, InProcess) {
    let mut o = MachineOptions::new(HOST);
    o.sensors = true;
    o.demo_physics = true;
    o.z_rest = 0.3;
    started(o).await
}

/// `stringdriverctl --socket SOCKET ARGS...` running, its output piped.
fn spawn_ctl(socket: &std::path::Path, args: &[&str]) -> std::process::Child {
    std::process::Command::new(env!("CARGO_BIN_EXE_stringdriverctl"))
        .arg("--socket")
        .arg(socket)
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("stringdriverctl runs")
}

/// Ctrl-C to `child`, and what it printed until it exited.
async fn interrupt(child: std::process::Child) -> std::process::Output {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .expect("Ctrl-C");
    tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .expect("join")
        .expect("exits")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_during_op_run_wait_cancels_the_operation_it_started() {
    let (rig, run) = slow_calibration().await;
    let before = moves_of(&rig.sims[0], 1);
    let child = spawn_ctl(
        &rig.socket(),
        &["--json", "op", "run", "z_calibrate", "--wait"],
    );
    // Descending: the first stepper's first move reached the board.
    if !eventually(|| moves_of(&rig.sims[0], 1) > before).await {
        let out = child.wait_with_output().expect("exits");
        panic!("z_calibrate never moved: {out:?}");
    }
    let out = interrupt(child).await;
    let (text, err) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(130), "{text}{err}");
    assert!(
        err.contains("cancelling the operation this command started"),
        "{err}"
    );
    let outcome: serde_json::Value = serde_json::from_str(&text).expect("the outcome as JSON");
    assert_eq!(outcome["kind"], "z_calibrate", "{outcome}");
    assert_eq!(outcome["status"], "cancelled", "{outcome}");
    // The operation is over: nothing runs, so nothing of it can move any more.
    assert_eq!(run.parts.gate.running(), None);
    run.stop().await;
}

/// Issue 16 item 1: `op wait` did not start the operation, so Ctrl-C leaves
/// it running and says how to cancel it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_during_op_wait_leaves_the_operation_running_and_says_how_to_cancel_it() {
    let (rig, run) = slow_calibration().await;
    let socket = rig.socket();
    let r = request(
        &socket,
        json!({"v": 1, "cmd": "op_run", "kind": "z_calibrate"}),
        WAIT,
    )
    .await
    .expect("started");
    assert_eq!(r["started"], json!("z_calibrate"), "{r}");
    let child = spawn_ctl(&socket, &["op", "wait"]);
    // Ready when its Ctrl-C handler is installed (before it sends op_wait).
    let pid = child.id();
    assert!(
        eventually(|| common::control::catches(pid, nix::sys::signal::Signal::SIGINT)).await,
        "stringdriverctl never handled SIGINT"
    );
    let out = interrupt(child).await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{err}");
    assert!(err.contains("the operation goes on"), "{err}");
    assert!(err.contains("`stringdriverctl op cancel`"), "{err}");
    // Still running: the waiter did not cancel what it did not start.
    assert_eq!(run.parts.gate.running(), Some("z_calibrate".into()));
    // status names it by the id of its own row, not of the bump_check it nests.
    let st = common::control::wait_status(&socket, "the running id", |st| {
        st["operation"]["running_id"].is_string()
    })
    .await;
    let r = request(&socket, json!({"v": 1, "cmd": "op_cancel"}), WAIT)
        .await
        .expect("cancel");
    assert_eq!(r["cancelled"], json!(true), "{r}");
    let outcome = request(&socket, json!({"v": 1, "cmd": "op_wait"}), WAIT)
        .await
        .expect("the outcome");
    assert_eq!(outcome["status"], json!("cancelled"), "{outcome}");
    assert_eq!(
        outcome["operation_id"], st["operation"]["running_id"],
        "{outcome} {st}"
    );
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_drops_a_move_waiting_for_its_rest_and_answers_when_nothing_moves() {
    let mut o = MachineOptions::new(HOST);
    // The second move of stepper 3 waits this long for its rest.
    o.z_rest = 60.0;
    let (rig, run) = started(o).await;
    let socket = rig.socket();
    let r = request(
        &socket,
        json!({"v": 1, "cmd": "move", "stepper": 3, "delta": 1}),
        WAIT,
    )
    .await
    .expect("first move");
    assert_eq!(r["position"], json!(pose()[3] + 1));
    let sent = moves_of(&rig.sims[0], 3);
    let waiting = {
        let socket = socket.clone();
        tokio::spawn(async move {
            request(
                &socket,
                json!({"v": 1, "cmd": "move", "stepper": 3, "delta": 1}),
                Duration::from_secs(120),
            )
            .await
        })
    };
    // Wait until the daemon holds the second move (it is queued behind its rest).
    assert!(
        eventually(|| run.parts.gate.waiting_moves() == 1).await,
        "the second move never reached the gate"
    );
    let out = ctl(&socket, &["--json", "stop"]).await;
    assert!(out.status.success(), "{out:?}");
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(r["operation_cancelled"], serde_json::Value::Null, "{r}");
    assert_eq!(r["still_moving"], json!([]), "{r}");
    let dropped = waiting.await.expect("join");
    let e = dropped.expect_err("the waiting move is dropped");
    assert!(e.contains("stopped") && e.contains("emergency stop"), "{e}");
    assert_eq!(
        moves_of(&rig.sims[0], 3),
        sent,
        "the dropped move was never sent"
    );
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disable_all_and_enable_all_cover_every_stepper_with_a_role() {
    let (rig, run) = started(MachineOptions::new(HOST)).await;
    let socket = rig.socket();
    let out = ctl(&socket, &["disable", "all"]).await;
    assert!(out.status.success(), "{out:?}");
    assert!(run.parts.settings.borrow().enabled.iter().all(|e| !e));
    let moved = ctl(&socket, &["move", "x", "1"]).await;
    assert_eq!(moved.status.code(), Some(1));
    let out = ctl(&socket, &["--json", "enable", "all"]).await;
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(r["steppers"].as_array().map(Vec::len), Some(19), "{r}");
    assert!(run.parts.settings.borrow().enabled.iter().all(|e| *e));
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_json_errors_are_json_on_stdout_with_the_same_exit_codes() {
    let (rig, run) = started(MachineOptions::new(HOST)).await;
    let out = ctl(&rig.socket(), &["--json", "move", "99", "1"]).await;
    assert_eq!(out.status.code(), Some(1));
    let e: serde_json::Value = serde_json::from_slice(&out.stdout).expect("a JSON error");
    assert_eq!(
        e,
        json!({"error": {"kind": "refused", "message": "stepper 99 does not exist (the host has 19)"}})
    );
    // STRINGDRIVER_SOCKET stands for --socket.
    let socket = rig.socket();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_stringdriverctl"))
            .env("STRINGDRIVER_SOCKET", &socket)
            .args(["--json", "status"])
            .output()
    })
    .await
    .expect("join")
    .expect("runs");
    assert!(out.status.success(), "{out:?}");
    let st: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status");
    assert!(st["boards"].is_array(), "{st}");
    // A path that is not a socket says so, as JSON too.
    let file = rig.dir.path().join("not-a-socket");
    std::fs::write(&file, "").expect("file");
    let out = ctl(&file, &["--json", "status"]).await;
    assert_eq!(out.status.code(), Some(2));
    let e: serde_json::Value = serde_json::from_slice(&out.stdout).expect("a JSON error");
    assert_eq!(e["error"]["kind"], "unreachable", "{e}");
    let msg = e["error"]["message"].as_str().unwrap_or_default();
    assert!(msg.contains("is not a socket"), "{msg}");
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_check_exit_codes_follow_capturing_paused_and_unreachable() {
    use common::machine::{InProcess, SimMachine};
    // Paused: the boards reset when their ports opened and nobody has set
    // their counters yet.
    let rig = SimMachine::start(MachineOptions::new(HOST));
    let run = InProcess::start(&rig).await;
    let out = ctl(&rig.socket(), &["status", "--check"]).await;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.starts_with("paused: "), "{text}");
    // Capturing once every counter is set.
    common::machine::set_pose(&run.parts).await;
    assert!(
        eventually(|| {
            let s = run.parts.snapshots.status();
            s.unknown.is_none() && s.last_at.is_some()
        })
        .await,
        "never capturing: {:?}",
        run.parts.snapshots.status().unknown
    );
    let out = ctl(&rig.socket(), &["status", "--check"]).await;
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "capturing\n");
    // The readable status fits 80 columns and starts with the summary.
    let out = ctl(&rig.socket(), &["status"]).await;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{text}");
    for l in text.lines() {
        assert!(l.chars().count() <= 80, "{l}");
    }
    assert!(
        text.lines()
            .nth(1)
            .is_some_and(|l| l.starts_with("capturing: ")),
        "{text}"
    );
    assert!(text.contains(" z2in "), "{text}");
    run.stop().await;
    // Unreachable: the daemon is gone.
    let out = ctl(&rig.socket(), &["status", "--check"]).await;
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_refused_while_paused_says_no_snapshot_once() {
    use common::machine::{InProcess, SimMachine};
    // No pose set: the boards' counters are untrusted, so no row can be built.
    let rig = SimMachine::start(MachineOptions::new(HOST));
    let run = InProcess::start(&rig).await;
    let out = ctl(&rig.socket(), &["snapshot"]).await;
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.starts_with("no_snapshot: "), "{err}");
    assert!(!err.contains("no snapshot"), "said twice: {err}");
    run.stop().await;
}
