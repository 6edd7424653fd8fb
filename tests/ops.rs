//! The operations against the simulator (with its physical model and touch
//! sensors), through the motion gate, recorded in the spool.

mod common;

use std::time::Duration;

use common::ops_rig::{events, feed_with, moves, rig, writes_to};
use stringdriverd::feed::{FeedState, FeedStatus};
use stringdriverd::ops::OpError;
use stringdriverd::protocol::Op;
use stringdriverd::sim::{Fault, TraceEvent};
use stringdriverd::store::{OperationStatus, OperationType};

#[tokio::test]
async fn bump_check_lifts_a_touching_stepper_and_disables_one_stuck_at_its_maximum() {
    // Z2 pressed 3 steps into its string; Z4 at 38 with a stuck sensor.
    let r = rig([0, 10, -3, 20, 30], [0, 10, 30, 20, 38]).await;
    r.sims[0].inject(Fault::SensorStuck {
        stepper: 4,
        touching: Some(true),
    });
    let out = r
        .machine
        .run(OperationType::BumpCheck, None)
        .await
        .expect("runs");
    assert_eq!(out.status, OperationStatus::Completed);
    assert!(out.message.contains("CRITICAL"), "{}", out.message);
    let sim = &r.sims[0];
    assert!(!sim.touching()[2], "lifted clear");
    assert_eq!(sim.physical()[2], 1);
    assert_eq!(
        r.board.status().positions.expect("read")[2],
        2,
        "counter set to z_up_step once clear"
    );
    assert!(
        !r.settings.borrow().enabled[4],
        "the stuck stepper is disabled"
    );
    assert!(
        r.board.status().positions.expect("read")[4] <= 40,
        "never past its maximum"
    );
    assert!(sim.violations().is_empty());
    let ev = events(&r.spool).await;
    assert_eq!(ev.len(), 2);
    assert_eq!(ev[0].operation_status, OperationStatus::Started);
    assert_eq!(ev[1].operation_status, OperationStatus::Completed);
    assert_eq!(ev[0].stepper_indices, vec![1, 2, 3, 4]);
    assert!(ev[1].completed_at.is_some());
}

#[tokio::test]
async fn z_calibrate_leaves_every_stepper_just_clear_and_disables_one_that_cannot_reach() {
    // Arbitrary counters; Z3 is 150 steps above its string (its travel is 40).
    let r = rig([0, 30, 10, 150, 0], [0, 0, 17, 7, -3]).await;
    let out = r
        .machine
        .run(OperationType::ZCalibrate, None)
        .await
        .expect("runs");
    assert_eq!(out.status, OperationStatus::Completed, "{}", out.message);
    let sim = &r.sims[0];
    let counters = r.board.status().positions.expect("read");
    for z in [1, 2, 4] {
        assert!(!sim.touching()[z], "stepper {z} clear");
        assert_eq!(
            sim.physical()[z],
            2,
            "stepper {z} just clear (z_up_step above contact)"
        );
        assert_eq!(
            counters[z] as i64,
            sim.physical()[z],
            "stepper {z}: counter consistent with the machine"
        );
    }
    assert!(
        !r.settings.borrow().enabled[3],
        "cannot reach its string: disabled"
    );
    let named = format!(
        "3 ({}): cannot reach its string",
        r.machine.layout.role(3).name().expect("a name")
    );
    assert!(out.message.contains(&named), "{}", out.message);
    let ev = events(&r.spool).await;
    let kinds: Vec<(OperationType, OperationStatus)> = ev
        .iter()
        .map(|e| (e.operation_type, e.operation_status))
        .collect();
    assert_eq!(
        kinds.first(),
        Some(&(OperationType::ZCalibrate, OperationStatus::Started))
    );
    assert_eq!(
        kinds.last(),
        Some(&(OperationType::ZCalibrate, OperationStatus::Completed))
    );
    assert!(
        kinds
            .iter()
            .filter(|k| k.0 == OperationType::BumpCheck)
            .count()
            >= 4,
        "nested bump_checks are recorded: {kinds:?}"
    );
    assert!(sim.violations().is_empty());
}

#[tokio::test]
async fn z_adjust_moves_the_right_stepper_the_right_way() {
    // Clear of the strings everywhere; counters equal physical positions.
    let r = rig([0, 10, 20, 30, 35], [0, 10, 20, 30, 35]).await;
    // Channel 0 too close (13 voices > 12), channel 1 too far (2 voices < 4).
    let out = r.z_adjust(vec![13, 2]).await;
    assert_eq!(out.status, OperationStatus::Completed, "{}", out.message);
    let p = r.board.status().positions.expect("read");
    assert_eq!(
        (p[1], p[2]),
        (12, 20),
        "too close: the lower counter (nearest) moves up"
    );
    assert_eq!(
        (p[3], p[4]),
        (30, 33),
        "too far: the higher counter (farthest) moves down"
    );

    // In range: nothing moves. One side disabled: the other is chosen.
    r.feed.send_replace(feed_with(vec![6, 6], vec![50.0, 50.0]));
    let before = moves(&r.sims[0]);
    r.machine
        .run(OperationType::ZAdjust, None)
        .await
        .expect("runs");
    assert_eq!(moves(&r.sims[0]), before);
    r.settings.send_modify(|s| s.enabled[1] = false);
    r.z_adjust(vec![13, 6]).await;
    let p = r.board.status().positions.expect("read");
    assert_eq!(
        (p[1], p[2]),
        (12, 22),
        "the disabled stepper is never chosen"
    );
}

/// A feed that is not ok refuses z_adjust before anything is recorded or
/// moved (preconditions), instead of a row `started` then `failed`.
#[tokio::test]
async fn z_adjust_without_a_feed_is_refused_before_any_row() {
    let r = rig([0, 10, 20, 30, 35], [0, 10, 20, 30, 35]).await;
    r.feed.send_replace(FeedStatus {
        state: FeedState::Absent("no audio_control".into()),
        ..FeedStatus::new()
    });
    let e = r
        .machine
        .run(OperationType::ZAdjust, None)
        .await
        .expect_err("refused");
    assert!(matches!(e, OpError::NotReady { .. }), "{e}");
    assert!(e.to_string().contains("audmon feed"), "{e}");
    assert!(events(&r.spool).await.is_empty(), "no operation row");
    assert_eq!(moves(&r.sims[0]), 0);
    assert_eq!(r.machine.gate.running(), None, "the lock is released");
}

/// An operation asked for while a board is away (unplugged, or waiting for
/// its reset) is refused before any row, snapshot or move.
#[tokio::test]
async fn an_operation_is_refused_without_a_row_while_its_board_is_not_connected() {
    let r = rig([0, -3, 20, 30, 35], [0, 10, 20, 30, 35]).await;
    r.sims[0].inject(Fault::Vanish);
    r.board
        .wait_for(Duration::from_secs(10), |s| {
            s.link != stringdriverd::board::LinkState::Connected
        })
        .await
        .expect("the board is seen gone");
    for kind in [
        OperationType::BumpCheck,
        OperationType::ZCalibrate,
        OperationType::ZAdjust,
    ] {
        let e = r.machine.run(kind, None).await.expect_err("refused");
        assert!(matches!(e, OpError::NotReady { .. }), "{e}");
        assert!(
            e.to_string()
                .starts_with(&format!("{} not started: ", kind.as_str())),
            "{e}"
        );
    }
    assert!(events(&r.spool).await.is_empty(), "no operation row");
    assert_eq!(moves(&r.sims[0]), 0, "nothing moved");
}

/// operations.md: on a tie, too close moves "in" on even channels and "out"
/// on odd ones; too far moves "out" on even channels and "in" on odd ones.
#[tokio::test]
async fn z_adjust_breaks_ties_by_channel_parity() {
    let r = rig([0, 20, 20, 30, 30], [0, 20, 20, 30, 30]).await;
    // Too far on both channels (2 voices < voice_count_min 4).
    let out = r.z_adjust(vec![2, 2]).await;
    assert_eq!(out.status, OperationStatus::Completed, "{}", out.message);
    let p = r.board.status().positions.expect("read");
    assert_eq!((p[1], p[2]), (20, 18), "too far, even channel: out moves");
    assert_eq!((p[3], p[4]), (28, 30), "too far, odd channel: in moves");
    assert_eq!(&r.sims[0].physical()[1..], &[20, 18, 28, 30]);

    // Tied again, too close on both (13 voices > 12).
    r.board.set_stepper(2, 20).await.expect("set");
    r.board.set_stepper(3, 30).await.expect("set");
    r.sims[0].set_physical(&[0, 20, 20, 30, 30]);
    let out = r.z_adjust(vec![13, 13]).await;
    assert_eq!(out.status, OperationStatus::Completed, "{}", out.message);
    let p = r.board.status().positions.expect("read");
    assert_eq!((p[1], p[2]), (22, 20), "too close, even channel: in moves");
    assert_eq!((p[3], p[4]), (30, 32), "too close, odd channel: out moves");
}

/// A move that would leave the stepper's limits is that channel's problem
/// only: reported "at its limit", skipped, the others and the final
/// bump_check go on and the operation completes.
#[tokio::test]
async fn z_adjust_skips_a_channel_at_its_limit_and_still_runs_the_final_bump_check() {
    // Channel 0's pair at the Z max 40: "too close" would take one to 42.
    let r = rig([0, 40, 40, 30, 34], [0, 40, 40, 30, 34]).await;
    let out = r.z_adjust(vec![13, 2]).await;
    assert_eq!(out.status, OperationStatus::Completed, "{}", out.message);
    assert!(
        out.message.contains("channel 0: stepper 1 at its limit"),
        "{}",
        out.message
    );
    assert!(
        out.message.contains("channel 1: stepper 4 -2"),
        "{}",
        out.message
    );
    let p = r.board.status().positions.expect("read");
    assert_eq!(&p[1..], &[40, 40, 30, 32]);
    let kinds: Vec<(OperationType, OperationStatus)> = events(&r.spool)
        .await
        .iter()
        .map(|e| (e.operation_type, e.operation_status))
        .collect();
    use OperationStatus::*;
    use OperationType::*;
    assert_eq!(
        kinds,
        vec![
            (ZAdjust, Started),
            (BumpCheck, Started),
            (BumpCheck, Completed),
            (BumpCheck, Started),
            (BumpCheck, Completed),
            (ZAdjust, Completed),
        ],
        "both bump_checks ran and the operation completed"
    );
    assert!(r.sims[0].violations().is_empty());
}

/// After a move z_adjust rests z_rest and then lap_rest before the next
/// channel (the simulator's trace has the times the moves arrived).
#[tokio::test]
async fn z_adjust_rests_z_rest_then_lap_rest_after_a_move() {
    let r = rig([0, 20, 24, 30, 34], [0, 20, 24, 30, 34]).await;
    r.settings.send_modify(|s| {
        s.operations.z_rest = 0.3;
        s.operations.lap_rest = 0.3;
    });
    // Too far on both: the higher counter of each pair (2, then 4) moves down.
    let out = r.z_adjust(vec![2, 2]).await;
    assert_eq!(out.status, OperationStatus::Completed, "{}", out.message);
    let first = writes_to(&r.sims[0], 2);
    let second = writes_to(&r.sims[0], 4);
    let (Some((a, Op::Amove)), Some((b, Op::Amove))) = (first.last(), second.last()) else {
        panic!("both moved: {first:?} {second:?}");
    };
    let gap = b.duration_since(*a);
    assert!(
        gap >= Duration::from_millis(600),
        "z_rest 0.3 s + lap_rest 0.3 s between the two channels' moves, got {gap:?}"
    );
}

/// Each channel is judged on the sound when its turn comes: channel 1 is
/// too close until channel 0's stepper has moved (a feed that follows the
/// machine), so a judgement read fresh leaves it alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn z_adjust_reads_each_channel_fresh_when_its_turn_comes() {
    let r = rig([0, 20, 24, 30, 34], [0, 20, 24, 30, 34]).await;
    r.settings.send_modify(|s| {
        s.operations.z_rest = 0.2;
        s.operations.lap_rest = 0.2;
    });
    // Channel 0 too far; channel 1 too close while stepper 2 stands at 24.
    let follow = {
        let mut board = r.board.watch();
        let feed = r.feed.clone();
        tokio::spawn(async move {
            loop {
                let moved = board
                    .borrow_and_update()
                    .positions
                    .as_ref()
                    .is_some_and(|p| p[2] != 24);
                let next = if moved {
                    feed_with(vec![6, 6], vec![50.0, 50.0])
                } else {
                    feed_with(vec![2, 13], vec![50.0, 50.0])
                };
                feed.send_replace(next);
                if board.changed().await.is_err() {
                    return;
                }
            }
        })
    };
    let out = r
        .machine
        .run(OperationType::ZAdjust, None)
        .await
        .expect("runs");
    follow.abort();
    assert_eq!(out.status, OperationStatus::Completed, "{}", out.message);
    let p = r.board.status().positions.expect("read");
    assert_eq!(
        p[2], 22,
        "channel 0 too far: its farther stepper moved down"
    );
    assert_eq!(
        (p[3], p[4]),
        (30, 34),
        "channel 1 judged after channel 0's move: in range, left alone ({})",
        out.message
    );
}

/// bump_check and z_calibrate read a stepper's sensor only once z_rest has
/// passed since its last move (the mechanism has settled).
#[tokio::test]
async fn sensors_are_read_only_after_z_rest_since_the_move() {
    // Z1 pressed 3 steps into its string.
    let r = rig([0, -3, 20, 30, 35], [0, 10, 20, 30, 35]).await;
    let rest = Duration::from_millis(250);
    r.settings
        .send_modify(|s| s.operations.z_rest = rest.as_secs_f64());
    let out = r
        .machine
        .run(OperationType::ZCalibrate, Some(1))
        .await
        .expect("runs");
    assert_eq!(out.status, OperationStatus::Completed, "{}", out.message);
    let moves1: Vec<std::time::Instant> = writes_to(&r.sims[0], 1)
        .into_iter()
        .filter(|(_, op)| *op != Op::SetStepper)
        .map(|(at, _)| at)
        .collect();
    let mut checked = 0;
    for (stepper, at, _) in r.sensors.log() {
        if stepper != 1 {
            continue;
        }
        let Some(last) = moves1.iter().filter(|m| **m <= at).max() else {
            continue;
        };
        let since = at.duration_since(*last);
        assert!(
            since >= rest,
            "stepper 1 read {since:?} after its move (z_rest {rest:?})"
        );
        checked += 1;
    }
    assert!(
        checked >= 4,
        "reads after moves: lifted twice, descended, lifted again ({checked})"
    );
}

/// A cancel mid-descent: z_calibrate ends `cancelled` (its message says
/// where each stepper was left), the stepper being calibrated — its counter
/// set to max and never found — is untrusted, and nothing reaches the board
/// after the cancel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_mid_operation_records_cancelled_and_moves_nothing_more() {
    let r = rig([0, 40, 40, 40, 40], [0, 0, 0, 0, 0]).await;
    let m = r.machine.clone();
    let task = tokio::spawn(async move { m.run(OperationType::ZCalibrate, None).await });
    let sims = r.sims.clone();
    let started = tokio::task::spawn_blocking(move || {
        sims[0].wait_for_trace(Duration::from_secs(10), |t| {
            t.iter()
                .filter(|e| {
                    matches!(
                        &e.event,
                        TraceEvent::Message {
                            op: Some(Op::Amove),
                            ..
                        }
                    )
                })
                .count()
                >= 3
        })
    });
    assert!(started.await.expect("join"), "the operation moved");
    assert!(r.machine.gate.cancel());
    r.machine.gate.quiesce().await;
    let cancelled_at = std::time::Instant::now();
    let out = task.await.expect("join").expect("recorded");
    assert_eq!(out.status, OperationStatus::Cancelled);
    assert!(
        out.message.starts_with("cancelled; left: 1 at "),
        "{}",
        out.message
    );
    assert!(out.message.contains("(untrusted)"), "{}", out.message);
    assert!(
        !r.board.status().trusted[1],
        "stepper 1's counter was set to max and never calibrated: untrusted"
    );
    assert_eq!(r.machine.gate.running(), None);
    for s in 1..5 {
        let after: Vec<_> = writes_to(&r.sims[0], s)
            .into_iter()
            .filter(|(at, _)| *at > cancelled_at)
            .collect();
        assert!(
            after.is_empty(),
            "stepper {s} written after the cancel: {after:?}"
        );
    }
    let ev = events(&r.spool).await;
    assert_eq!(
        ev.last().map(|e| (e.operation_type, e.operation_status)),
        Some((OperationType::ZCalibrate, OperationStatus::Cancelled))
    );
    assert!(
        ev.iter()
            .all(|e| e.operation_status != OperationStatus::Completed
                || e.operation_type != OperationType::ZCalibrate),
        "{ev:?}"
    );
}

/// A cancelled ticket writes no counter either.
#[tokio::test]
async fn a_cancelled_operation_cannot_set_a_counter() {
    let r = rig([0, 40, 40, 40, 40], [0, 10, 10, 10, 10]).await;
    let t = r.machine.gate.begin("z_calibrate").expect("ticket");
    assert!(r.machine.gate.cancel());
    let e = r
        .machine
        .gate
        .set_counter(&t.origin(), 1, 5)
        .await
        .expect_err("refused");
    assert_eq!(e, stringdriverd::motion::GateError::Cancelled);
    assert_eq!(r.board.status().positions.expect("read")[1], 10);
}

/// Every enabled Z sensor touching before an operation is wiring, not
/// contact (hosts.md "electrical sense"): refused before any row or move.
#[tokio::test]
async fn an_operation_is_refused_when_every_enabled_sensor_reads_touching_at_rest() {
    let r = rig([0, -1, 0, -2, 0], [0, 10, 20, 30, 35]).await;
    assert!(r.sims[0].touching()[1..].iter().all(|t| *t));
    let before = moves(&r.sims[0]);
    for kind in [
        OperationType::BumpCheck,
        OperationType::ZCalibrate,
        OperationType::ZAdjust,
    ] {
        let e = r.machine.run(kind, None).await.expect_err("refused");
        assert!(
            matches!(&e, OpError::SensorsAllTouching { steppers } if steppers == &[1, 2, 3, 4]),
            "{e}"
        );
        assert!(e.to_string().contains("mis-wired"), "{e}");
        // A list for people, not Rust's `[1, 2, 3, 4]`.
        assert!(e.to_string().contains("(steppers 1, 2, 3, 4)"), "{e}");
    }
    assert!(events(&r.spool).await.is_empty(), "no operation row");
    assert_eq!(moves(&r.sims[0]), before, "nothing moved");
    assert_eq!(
        r.machine.gate.running(),
        None,
        "the operation lock is released"
    );

    // One of them open again: the operation runs.
    r.sims[0].set_physical(&[0, -1, 0, -2, 5]);
    let ran = r.machine.run(OperationType::BumpCheck, None).await;
    assert!(
        matches!(&ran, Ok(o) if o.status == OperationStatus::Completed),
        "{ran:?}"
    );
}

/// A repetition stops at a run that fails (the machine needs attention:
/// repeating would hammer it), and says so; the failed run is its own row.
#[tokio::test]
async fn repeat_stops_at_a_failed_run_and_says_so() {
    use std::sync::atomic::Ordering;
    let r = rig([0, 10, 20, 30, 35], [0, 10, 20, 30, 35]).await;
    let sensors = r.sensors.clone();
    let mut seen = Vec::new();
    let rep = r
        .machine
        .run_repeat(OperationType::BumpCheck, None, |n, out| {
            seen.push((n, out.status));
            if n == 2 {
                // Run 3's preconditions read the 4 sensors; its own first read fails.
                let done = sensors.log().len();
                sensors.fail_after.store(done + 4, Ordering::SeqCst);
            }
        })
        .await
        .expect("runs");
    use OperationStatus::*;
    assert_eq!(seen, vec![(1, Completed), (2, Completed), (3, Failed)]);
    assert_eq!(rep.runs, 3);
    assert_eq!(rep.last.status, Failed);
    assert!(!rep.cancelled && !rep.refused);
    assert_eq!(rep.ended, "run 3 failed: repetition stopped");
    assert!(
        rep.last.message.contains("sensor line broke"),
        "{}",
        rep.last.message
    );
    let ended: Vec<OperationStatus> = events(&r.spool)
        .await
        .iter()
        .map(|e| e.operation_status)
        .filter(|s| *s != Started)
        .collect();
    assert_eq!(ended, vec![Completed, Completed, Failed], "one row per run");
    assert_eq!(r.machine.gate.running(), None, "the lock is released");
}

/// A repetition whose next run is refused by its preconditions ends there,
/// with no row for the refused run.
#[tokio::test]
async fn repeat_ends_when_the_next_run_is_refused() {
    use std::sync::atomic::Ordering;
    let r = rig([0, 10, 20, 30, 35], [0, 10, 20, 30, 35]).await;
    let sensors = r.sensors.clone();
    let rep = r
        .machine
        .run_repeat(OperationType::BumpCheck, None, |n, _| {
            if n == 1 {
                sensors.fail_after.store(0, Ordering::SeqCst);
            }
        })
        .await
        .expect("runs");
    assert_eq!(rep.runs, 1);
    assert_eq!(rep.last.status, OperationStatus::Completed);
    assert!(rep.refused && !rep.cancelled);
    assert!(
        rep.ended
            .starts_with("run 2: bump_check not started: the touch sensor of stepper 1"),
        "{}",
        rep.ended
    );
    assert_eq!(
        events(&r.spool).await.len(),
        2,
        "run 1 started and completed only"
    );
}

// ---- The real daemon (in-process) on the simulated stringdriver-2, with
// ---- real PostgreSQL, driven through its control socket.

mod daemon_level {
    use super::common;
    use super::*;
    use common::control::{ctl, wait_status, Client};
    use common::machine::{started, InProcess, MachineOptions, SimMachine};
    use common::ops_rig::{wait_moves, wait_rows, OpRow};
    use common::pg::TestDb;
    use serde_json::json;

    /// A machine with touch sensors, mechanisms 20 steps above their
    /// strings, shipping to `db`.
    fn options(host: &str, db: &TestDb) -> MachineOptions {
        let mut o = MachineOptions::new(host);
        o.db_url = Some(db.url());
        o.sensors = true;
        o.demo_physics = true;
        o
    }

    /// Writes (moves, counter sets) the carriage board received after `t`.
    fn writes_after(m: &SimMachine, t: std::time::Instant) -> Vec<(usize, Op)> {
        (0..13)
            .flat_map(|s| {
                writes_to(&m.sims[0], s)
                    .into_iter()
                    .filter(move |(at, _)| *at > t)
                    .map(move |(_, op)| (s, op))
            })
            .collect()
    }

    fn terminal(rows: &[OpRow]) -> bool {
        !rows.is_empty() && rows.iter().all(|r| r.status != "started")
    }

    /// `op cancel` in the middle of z_calibrate's descent: every row ends
    /// `cancelled` (none `completed` after the cancel, no final bump_check
    /// rounds), the message says where the steppers were left, the stepper
    /// being calibrated is untrusted, and nothing reaches the board after
    /// the cancel's reply.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn z_calibrate_cancelled_through_the_socket_is_recorded_cancelled_and_moves_nothing_after(
    ) {
        const HOST: &str = "sd-ops-cancel";
        let db = TestDb::create().await;
        let mut o = options(HOST, &db);
        // Long rests: the cancel lands in the middle of stepper 1's descent.
        o.z_rest = 0.2;
        let (m, run) = started(o).await;
        let mut c = Client::connect(&m.socket()).await;
        c.ok(json!({"cmd": "op_run", "kind": "z_calibrate"})).await;
        wait_moves(&m.sims[0], 3).await;
        let wall = chrono::Utc::now();
        assert_eq!(
            c.ok(json!({"cmd": "op_cancel"})).await,
            json!({"cancelled": true})
        );
        let after = std::time::Instant::now();
        let out = c.ok(json!({"cmd": "op_wait"})).await;
        assert_eq!(out["status"], "cancelled", "{out}");
        let msg = out["message"].as_str().expect("message");
        assert!(msg.starts_with("cancelled; left: 1 at "), "{msg}");
        assert!(
            msg.contains("1 at ") && msg.contains("(untrusted)"),
            "{msg}"
        );
        assert_eq!(
            writes_after(&m, after),
            vec![],
            "nothing written after the cancel"
        );
        let st = wait_status(&m.socket(), "the operation ended", |s| {
            s["operation"]["running"].is_null()
        })
        .await;
        assert_eq!(
            st["boards"][0]["trusted"][1],
            json!(false),
            "stepper 1: set to max, never calibrated: untrusted"
        );

        let client = db.client().await;
        let rows = wait_rows(&client, HOST, "the z_calibrate row shipped, ended", |r| {
            terminal(r) && r.iter().any(|r| r.kind == "z_calibrate")
        })
        .await;
        let kinds: Vec<(&str, &str)> = rows
            .iter()
            .map(|r| (r.kind.as_str(), r.status.as_str()))
            .collect();
        assert_eq!(
            kinds,
            vec![("z_calibrate", "cancelled"), ("bump_check", "completed")],
            "the first bump_check completed before the cancel; no final rounds ran"
        );
        for r in &rows {
            if r.status == "completed" {
                assert!(
                    r.completed_at.is_some_and(|t| t < wall),
                    "completed after the cancel: {r:?}"
                );
            }
        }
        assert_eq!(rows[0].message.as_deref(), Some(msg));
        assert_eq!(m.violations(), 0);
        run.stop().await;
    }

    /// SIGTERM (the daemon's stop) during z_calibrate: the operation is
    /// recorded `cancelled`, not `completed` nor left for the next start to
    /// close as interrupted.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn z_calibrate_stopped_by_sigterm_is_recorded_cancelled() {
        const HOST: &str = "sd-ops-term";
        let db = TestDb::create().await;
        let mut o = options(HOST, &db);
        o.z_rest = 0.2;
        let (m, run) = started(o).await;
        let mut c = Client::connect(&m.socket()).await;
        c.ok(json!({"cmd": "op_run", "kind": "z_calibrate"})).await;
        wait_moves(&m.sims[0], 3).await;
        drop(c);
        run.stop().await;
        // Whatever the stop left unshipped ships at the next start.
        let again = InProcess::start(&m).await;
        let client = db.client().await;
        let rows = wait_rows(&client, HOST, "the z_calibrate row shipped, ended", |r| {
            terminal(r) && r.iter().any(|r| r.kind == "z_calibrate")
        })
        .await;
        let cal: Vec<&OpRow> = rows.iter().filter(|r| r.kind == "z_calibrate").collect();
        assert_eq!(cal.len(), 1);
        assert_eq!(cal[0].status, "cancelled", "{:?}", cal[0]);
        assert!(
            cal[0]
                .message
                .as_deref()
                .is_some_and(|m| m.starts_with("cancelled; left: ")),
            "{:?}",
            cal[0]
        );
        assert!(
            rows.iter()
                .all(|r| r.status != "completed" || r.kind == "bump_check"),
            "{rows:#?}"
        );
        again.stop().await;
    }

    /// `op run bump_check --repeat`: each run its own row, lap_rest apart,
    /// the lock held in between (another operation is refused), status shows
    /// the run; `op cancel` ends the repetition; bump_check_enable off ends
    /// it too.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn repeat_runs_until_cancelled_each_run_its_own_row() {
        const HOST: &str = "sd-ops-repeat";
        let db = TestDb::create().await;
        let (m, run) = started(options(HOST, &db)).await;
        let sock = m.socket();
        let o = ctl(&sock, &["op", "run", "bump_check", "--repeat"]).await;
        assert!(o.status.success(), "{o:?}");
        assert_eq!(
            String::from_utf8_lossy(&o.stdout).trim(),
            "started bump_check (repeat)"
        );
        let st = wait_status(&sock, "a third run", |s| {
            s["operation"]["run"].as_u64().is_some_and(|n| n >= 3)
        })
        .await;
        assert_eq!(st["operation"]["repeat"], json!(true), "{st}");
        assert_eq!(st["operation"]["running"], json!("bump_check"), "{st}");
        // The running run's id: its operations row is written before its steps.
        let id = st["operation"]["running_id"].as_str().expect("running_id");
        assert!(uuid::Uuid::parse_str(id).is_ok(), "{st}");
        let shown = ctl(&sock, &["status"]).await;
        let shown = String::from_utf8_lossy(&shown.stdout).replace("\n  ", " ");
        assert!(
            shown.contains("operation: bump_check running for ")
                && shown.contains("(repeat, run ")
                && shown.contains(", id "),
            "{shown}"
        );
        let mut c = Client::connect(&sock).await;
        let busy = c
            .err(json!({"cmd": "op_run", "kind": "z_adjust"}), "busy")
            .await;
        assert!(busy.contains("bump_check"), "{busy}");
        let cancel = ctl(&sock, &["op", "cancel"]).await;
        assert!(cancel.status.success(), "{cancel:?}");
        let out = c.ok(json!({"cmd": "op_wait"})).await;
        assert_eq!(out["status"], "cancelled", "{out}");
        let runs = out["repeat"]["runs"].as_u64().expect("runs");
        // status showed run 3: the third running, or awaited after run 2's rest.
        assert!(runs >= 2, "{out}");

        let client = db.client().await;
        let rows = wait_rows(&client, HOST, "every run shipped", |r| {
            terminal(r) && r.len() as u64 == runs
        })
        .await;
        let ids: std::collections::BTreeSet<_> = rows.iter().map(|r| r.id).collect();
        assert_eq!(ids.len() as u64, runs, "one row per run");
        for (i, r) in rows.iter().enumerate() {
            assert_eq!(r.kind, "bump_check");
            let last = i + 1 == rows.len();
            assert!(
                r.status == "completed" || (last && r.status == "cancelled"),
                "run {i}: {r:?}"
            );
        }
        // lap_rest (50 ms) between the end of one run and the next one's start.
        for w in rows.windows(2) {
            let gap = w[1].recorded_at - w[0].completed_at.expect("ended");
            assert!(
                gap >= chrono::Duration::milliseconds(50),
                "runs {:?} apart",
                gap
            );
        }

        // bump_check_enable off ends a repetition after its run.
        c.ok(json!({"cmd": "op_run", "kind": "bump_check", "repeat": true}))
            .await;
        wait_status(&sock, "a second run", |s| {
            s["operation"]["run"].as_u64().is_some_and(|n| n >= 2)
        })
        .await;
        c.ok(json!({"cmd": "set", "name": "bump_check_enable", "value": false}))
            .await;
        let out = c.ok(json!({"cmd": "op_wait"})).await;
        assert_eq!(out["status"], "completed", "{out}");
        assert!(
            out["repeat"]["ended"]
                .as_str()
                .is_some_and(|e| e.contains("bump_check_enable is off")),
            "{out}"
        );
        let st = wait_status(&sock, "idle", |s| s["operation"]["running"].is_null()).await;
        assert_eq!(st["operation"]["repeat"], json!(false));
        run.stop().await;
    }
}
