//! The operations against the simulator (with its physical model and touch
//! sensors), through the motion gate, recorded in the spool.

mod common;

use std::time::Duration;

use common::ops_rig::{events, feed_with, moves, rig};
use stringdriverd::feed::{FeedState, FeedStatus};
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
    assert!(out.message.contains("3: cannot reach"), "{}", out.message);
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
    r.feed
        .send_replace(feed_with(vec![13, 2], vec![50.0, 50.0]));
    let out = r
        .machine
        .run(OperationType::ZAdjust, None)
        .await
        .expect("runs");
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
    r.feed
        .send_replace(feed_with(vec![13, 6], vec![50.0, 50.0]));
    r.machine
        .run(OperationType::ZAdjust, None)
        .await
        .expect("runs");
    let p = r.board.status().positions.expect("read");
    assert_eq!(
        (p[1], p[2]),
        (12, 22),
        "the disabled stepper is never chosen"
    );
}

#[tokio::test]
async fn z_adjust_without_a_feed_fails_and_says_why() {
    let r = rig([0, 10, 20, 30, 35], [0, 10, 20, 30, 35]).await;
    r.feed.send_replace(FeedStatus {
        state: FeedState::Absent("no audio_control".into()),
        ..FeedStatus::new()
    });
    let out = r
        .machine
        .run(OperationType::ZAdjust, None)
        .await
        .expect("recorded");
    assert_eq!(out.status, OperationStatus::Failed);
    assert!(out.message.contains("audmon feed"), "{}", out.message);
    let ev = events(&r.spool).await;
    assert_eq!(
        ev.last().map(|e| e.operation_status),
        Some(OperationStatus::Failed)
    );
}

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
    let out = task.await.expect("join").expect("recorded");
    assert_eq!(out.status, OperationStatus::Cancelled);
    let after = moves(&r.sims[0]);
    // Nothing moves once the operation has ended.
    let out2 = r.machine.gate.running();
    assert_eq!(out2, None);
    assert_eq!(moves(&r.sims[0]), after);
    let ev = events(&r.spool).await;
    assert_eq!(
        ev.last().map(|e| e.operation_status),
        Some(OperationStatus::Cancelled)
    );
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
            matches!(&e, stringdriverd::ops::OpError::SensorsAllTouching { steppers } if steppers == &[1, 2, 3, 4]),
            "{e}"
        );
        assert!(e.to_string().contains("mis-wired"), "{e}");
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
