//! Manual commands without surprises: counters outside the travel are
//! refused like moves, a move by zero sends nothing, a move whose client has
//! gone is dropped instead of being sent later, and errors say things once.

mod common;

use std::time::Duration;

use common::control::{ctl, request, Client};
use common::machine::{pose, started, MachineOptions, WAIT};
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
async fn op_run_wait_exits_non_zero_when_the_operation_failed() {
    // No touch sensors configured: bump_check cannot read them and fails.
    let (rig, run) = started(MachineOptions::new(HOST)).await;
    let out = ctl(
        &rig.socket(),
        &["--json", "op", "run", "bump_check", "--wait"],
    )
    .await;
    let text = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{text}{err}");
    // Recorded and answered as an outcome, not refused: the exit code
    // comes from the operation's status.
    let outcome: serde_json::Value = serde_json::from_str(&text).expect("JSON outcome");
    assert_eq!(outcome["status"], "failed", "{outcome}");
    run.stop().await;
}
