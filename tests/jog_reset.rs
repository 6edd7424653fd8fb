//! Counters that change without a command (issue 10, items 2, 3, 7 and 8):
//! jogs at the machine stay trusted and are announced, a reset followed by
//! motion never leaves moved counters trusted, a restore never has more
//! bytes in flight than the board buffers, a board busy far longer than its
//! move gets one probe at a time, and a stepper in transit is no position.
//! Simulators on real pseudo-terminals; the operation test uses the real
//! gate, operations, snapshot engine and spool.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::ops_rig::{events, moves, rig, spooled, CONFIG};
use common::*;
use stringdriverd::board::{self, BoardEvent, BoardStatus, KnownCounters, LinkState};
use stringdriverd::feed::{FeedState, FeedStatus, FeedValues};
use stringdriverd::protocol::{Firmware, Op};
use stringdriverd::sim::{Fault, Profile, SimHandle, SimOptions, TraceEvent};
use stringdriverd::snapshot::{self, Inputs, Settings, Unknown};
use stringdriverd::store::{OperationStatus, OperationType};
use tokio::sync::broadcast;

const WAIT: Duration = Duration::from_secs(15);

/// Options at real firmware speed with a short reset window: jogs and
/// restores are timed like the real board's.
fn real_speed(profile: Profile) -> SimOptions {
    let mut o = SimOptions::new(profile);
    o.speed_scale = 1.0;
    o.reset_window = Duration::from_millis(150);
    o
}

fn trusted(n: usize, positions: Vec<i32>) -> Option<KnownCounters> {
    Some(KnownCounters {
        positions,
        trusted: vec![true; n],
    })
}

/// Waits (polling the simulator every 5 ms) until `pred` holds for its counters.
async fn sim_counters_until(sim: &SimHandle, pred: impl Fn(&[i32]) -> bool) -> Vec<i32> {
    let deadline = Instant::now() + WAIT;
    loop {
        let c = sim.counters();
        if pred(&c) {
            return c;
        }
        assert!(
            Instant::now() < deadline,
            "simulator counters never matched: {c:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Waits until the board has detected `n` resets and is connected again.
async fn reset_seen(board: &stringdriverd::board::BoardHandle, n: u64) -> BoardStatus {
    board
        .wait_for(WAIT, |s| {
            s.resets_detected == n && s.link == LinkState::Connected
        })
        .await
        .unwrap_or_else(|| panic!("reset {n} never seen: {:?}", board.status()))
}

/// Every event received so far.
fn drain(rx: &mut broadcast::Receiver<BoardEvent>) -> Vec<BoardEvent> {
    let mut out = Vec::new();
    while let Ok(e) = rx.try_recv() {
        out.push(e);
    }
    out
}

fn overflows(sim: &SimHandle) -> usize {
    sim.trace()
        .iter()
        .filter(|e| matches!(e.event, TraceEvent::RxOverflow { .. }))
        .count()
}

#[tokio::test]
async fn a_jog_at_the_machine_keeps_the_counter_trusted_and_is_announced() {
    let opts = real_speed(Profile::for_firmware(Firmware::V2, None));
    let r = rig_with(opts, |_| {}, trusted(13, vec![0; 13])).await;
    connected(&r.board).await;
    let mut events = r.board.subscribe();
    r.sim.inject(Fault::JogPress {
        stepper: 3,
        toward_max: true,
    });
    let s = r
        .board
        .wait_for(WAIT, |s| s.jogging == vec![3])
        .await
        .expect("the jog is noticed while the switch is held");
    assert!(
        s.trusted.iter().all(|t| *t),
        "a jog is the firmware's own count"
    );
    sim_counters_until(&r.sim, |c| c[3] >= 20).await;
    r.sim.inject(Fault::JogRelease { stepper: 3 });
    let s = r
        .board
        .wait_for(WAIT, |s| s.jogging.is_empty() && s.judgements.jogs == 1)
        .await
        .expect("the end of the jog is noticed");
    let end = r.sim.counters()[3];
    assert!(end >= 20);
    assert_eq!(s.positions.as_ref().map(|p| p[3]), Some(end));
    assert!(s.trusted.iter().all(|t| *t));
    assert_eq!(s.resets_detected, 0);
    let jogs: Vec<_> = drain(&mut events)
        .into_iter()
        .filter_map(|e| match e {
            BoardEvent::Jogged {
                stepper,
                from,
                to,
                ended,
                ..
            } => Some((stepper, from, to, ended)),
            _ => None,
        })
        .collect();
    assert_eq!(
        jogs.len(),
        2,
        "one event when it starts, one when it ends: {jogs:?}"
    );
    assert_eq!((jogs[0].0, jogs[0].1, jogs[0].3), (3, 0, false));
    assert!(jogs[0].2 > 0);
    assert_eq!(jogs[1], (3, 0, end, true));
    // Nothing was commanded: only polls reached the board.
    assert!(r.sim.received(Op::SetStepper).is_empty());
    assert!(r.sim.received(Op::Amove).is_empty());
}

#[tokio::test]
async fn a_reset_followed_by_motion_never_leaves_moved_counters_trusted() {
    let mut opts = sim_options(Firmware::V2);
    opts.profile = Profile::for_firmware(Firmware::V2, Some(5));
    let r = rig_with(opts, |_| {}, trusted(5, vec![0; 5])).await;
    connected(&r.board).await;
    r.board.amove(0, 300).await.expect("amove");
    r.board.rmove(1, 40).await.expect("rmove");
    let mut events = r.board.subscribe();
    // The board boots with the switch inputs of Z 2, 3, 4 reading pressed.
    r.sim
        .inject(Fault::ResetThenMotion(vec![(2, 12), (3, 12), (4, 12)]));
    let s = reset_seen(&r.board, 1).await;
    assert_eq!(s.judgements.resets_after_silence, 1);
    assert_eq!(s.judgements.moved_after_reset, 3);
    assert_eq!(s.judgements.jogs, 0, "motion after a reset is no jog");
    for i in 2..=4 {
        assert!(!s.trusted[i], "stepper {i} moved after the reset: {s:?}");
    }
    // The others read 0 and were written back.
    let p = s.positions.clone().expect("positions");
    assert_eq!((p[0], p[1]), (300, 40));
    assert!(s.trusted[0] && s.trusted[1]);
    assert_eq!(&r.sim.counters()[..2], &[300, 40]);
    // Moved counters are never invented back: they read what the board says.
    assert_eq!(&p[2..5], &[12, 12, 12]);
    let moved = drain(&mut events).into_iter().find_map(|e| match e {
        BoardEvent::ResetDetected { moved, .. } => Some(moved),
        _ => None,
    });
    assert_eq!(moved, Some(vec![2, 3, 4]));
    // No snapshot can be built from this board until they are set again.
    let (layout, settings) = layout_5();
    let feed = feed_ok(2);
    let built = snapshot::build(&inputs(&layout, &settings, &feed, &[s]));
    assert!(matches!(built, Err(Unknown::Untrusted(_))), "{built:?}");
    assert!(r.sim.violations().is_empty());
}

/// The reset-then-restore for `profile` at real speed, with every counter
/// non-zero; returns the board's status afterwards.
async fn restore_all(profile: Profile) -> (BoardStatus, Vec<i32>, usize) {
    let n = profile.steppers();
    let opts = real_speed(profile);
    let values: Vec<i32> = (0..n)
        .map(|i| if i == 0 { 1500 } else { -(i as i32) * 7 })
        .collect();
    let r = rig_with(opts, |_| {}, trusted(n, values.clone())).await;
    // The port open reset the board: the counters are written back.
    let s = reset_seen(&r.board, 1).await;
    let sim = r.sim.counters();
    (s, sim, overflows(&r.sim))
}

#[tokio::test]
async fn a_restore_never_has_more_bytes_in_flight_than_the_board_buffers() {
    for (name, profile) in [
        ("v2 13", Profile::for_firmware(Firmware::V2, None)),
        ("v2 19", Profile::for_firmware(Firmware::V2, Some(19))),
        ("tuner 6", Profile::for_firmware(Firmware::Tuner, None)),
    ] {
        let n = profile.steppers();
        let (s, sim, overflows) = restore_all(profile).await;
        let report = s.last_restore.clone().expect("a restore report");
        eprintln!(
            "restore {name}: {} counters, {} batches, at most {} bytes in flight, {:?}",
            report.counters, report.batches, report.max_bytes_in_flight, report.took
        );
        assert_eq!(report.counters, n);
        assert!(report.verified, "{name}: {report:?}");
        assert!(
            report.max_bytes_in_flight <= 63,
            "{name}: {} bytes in flight",
            report.max_bytes_in_flight
        );
        assert!(report.batches >= 2, "{name}: more than one buffer's worth");
        assert!(s.trusted.iter().all(|t| *t), "{name}: {s:?}");
        assert_eq!(Some(&sim), s.positions.as_ref(), "{name}");
        assert_eq!(overflows, 0, "{name}: the board lost bytes");
    }
}

#[tokio::test]
async fn a_board_busy_far_longer_than_its_move_gets_one_probe_at_a_time() {
    // The driver believes Z runs 1000 times faster than it does (a runaway,
    // a configuration that does not match the board): a 100-step move it
    // expects to take milliseconds takes 5 s on the simulated board. Polled
    // on every tick as before, it would have been sent about 100 bytes.
    let mut opts = sim_options(Firmware::V2);
    opts.profile = Profile::for_firmware(Firmware::V2, Some(5));
    opts.speed_scale = 0.2;
    opts.reset_window = Duration::from_millis(50);
    let r = rig_with(
        opts,
        |spec| {
            for s in spec.speeds.iter_mut() {
                *s *= 1000.0;
            }
            spec.reply_timeout = Duration::from_millis(150);
            spec.move_margin = Duration::from_millis(5);
            spec.busy_probe_max = Duration::from_secs(1);
        },
        trusted(5, vec![0; 5]),
    )
    .await;
    connected(&r.board).await;
    let sent = Instant::now();
    let err = r
        .board
        .rmove(1, 100)
        .await
        .expect_err("not confirmed in time");
    assert!(err.is_device_fault(), "{err}");
    let s = r
        .board
        .wait_for(WAIT, |s| matches!(s.link, LinkState::Unresponsive { .. }))
        .await
        .expect("unresponsive while it moves");
    let m = s.moving.clone().expect("the move in transit is reported");
    assert_eq!(
        (m.stepper, m.op.as_str(), m.target, m.from),
        (1, "rmove", 100, 0)
    );
    assert!(s.silent_since.is_some());
    // In transit: no snapshot claims a position for it.
    let (layout, settings) = layout_5();
    let feed = feed_ok(2);
    match snapshot::build(&inputs(&layout, &settings, &feed, &[s])) {
        Err(Unknown::Moving(why)) => assert!(why.starts_with("stepper 1 moving"), "{why}"),
        other => panic!("a stepper in transit was not unknown: {other:?}"),
    }
    let s = r
        .board
        .wait_for(WAIT, |s| {
            s.link == LinkState::Connected && s.moving.is_none()
        })
        .await
        .expect("the board answers when the move ends");
    assert!(sent.elapsed() >= Duration::from_millis(4900));
    assert_eq!(s.positions.as_ref().map(|p| p[1]), Some(100));
    assert!(s.silent_since.is_none());
    // Everything sent while it moved fit in its receive buffer.
    let busy: usize = r
        .sim
        .trace()
        .iter()
        .map(|e| match e.event {
            TraceEvent::ReceivedWhileBusy { len } => len,
            _ => 0,
        })
        .sum();
    eprintln!("busy board: {busy} bytes received while it moved");
    assert!(busy <= 63, "{busy} bytes sent to a board that was moving");
    assert_eq!(overflows(&r.sim), 0);
    // The answers it still owed to earlier probes are not taken for the
    // answer to the next request.
    let p = r
        .board
        .set_stepper(2, 5)
        .await
        .expect("set after the silence");
    assert_eq!(p[2], 5);
    assert!(r.sim.violations().is_empty());
}

#[tokio::test]
async fn a_jog_of_an_operations_stepper_fails_the_operation_saying_so() {
    // Every Z stepper well above its string: z_calibrate descends.
    let r = rig([0, 30, 30, 30, 30], [0, 30, 30, 30, 30]).await;
    // A long rest between the descent's moves: the driver polls meanwhile.
    r.settings.send_modify(|s| s.operations.z_rest = 0.4);
    let cfg = stringdriverd::config::parse(CONFIG, Path::new("ops.toml")).expect("config");
    // The daemon's own wiring from board events to the gate and snapshots.
    let _events = stringdriverd::daemon::forward_board_events(
        std::slice::from_ref(&r.board),
        cfg.layout,
        r.machine.gate.clone(),
        r.machine.snapshots.clone(),
    );
    let op = tokio::spawn({
        let m = r.machine.clone();
        async move { m.run(OperationType::ZCalibrate, Some(1)).await }
    });
    // Once the descent of stepper 1 has begun, an operator jogs it up.
    let sim = &r.sims[0];
    let deadline = Instant::now() + WAIT;
    while moves(sim) < 2 {
        assert!(Instant::now() < deadline, "the descent never started");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // ... and that move is confirmed: the stepper rests.
    r.board
        .wait_for(WAIT, |s| s.moving.is_none())
        .await
        .expect("the move is confirmed");
    sim.inject(Fault::JogPress {
        stepper: 1,
        toward_max: true,
    });
    r.board
        .wait_for(WAIT, |s| s.judgements.jogs >= 1)
        .await
        .expect("the jog is noticed");
    sim.inject(Fault::JogRelease { stepper: 1 });
    let out = tokio::time::timeout(WAIT, op)
        .await
        .expect("the operation stops")
        .expect("task")
        .expect("recorded");
    assert_eq!(out.status, OperationStatus::Failed);
    assert!(
        out.message.contains("stepper 1 jogged at the machine"),
        "{}",
        out.message
    );
    let rows: Vec<_> = events(&r.spool)
        .await
        .into_iter()
        .filter(|e| e.operation_id == out.operation_id)
        .collect();
    let last = rows.last().expect("the operation is recorded");
    assert_eq!(last.operation_status, OperationStatus::Failed);
    assert_eq!(last.message.as_deref(), Some(out.message.as_str()));
    // A jog leaves a counter trusted (the firmware counted the steps), but
    // this one was set to max by a calibration that was cut short: it is no
    // longer true of the machine (operations.md, z_calibrate), so untrusted.
    assert!(!r.board.status().trusted[1]);
    assert!(out.message.contains("left: 1 at "), "{}", out.message);
    assert!(r.board.status().trusted[2], "the others keep their trust");
}

#[test]
fn a_stepper_in_transit_is_unknown_to_the_snapshot_and_the_others_are_not() {
    let (layout, settings) = layout_5();
    let feed = feed_ok(2);
    let mut s = BoardStatus::new("carriage", 5);
    s.link = LinkState::Connected;
    s.positions = Some(vec![0; 5]);
    s.trusted = vec![true; 5];
    assert!(snapshot::build(&inputs(&layout, &settings, &feed, &[s.clone()])).is_ok());
    s.moving = Some(board::InTransit {
        stepper: 3,
        op: "amove".into(),
        target: 30,
        from: 0,
        since: chrono::Utc::now(),
        expected: Duration::from_millis(300),
    });
    let err = snapshot::build(&inputs(&layout, &settings, &feed, &[s.clone()])).unwrap_err();
    assert_eq!(err.key(), "stepper_moving");
    assert!(err.to_string().starts_with("stepper 3 moving"), "{err}");
    s.moving = None;
    s.jogging = vec![2];
    let err = snapshot::build(&inputs(&layout, &settings, &feed, &[s.clone()])).unwrap_err();
    assert!(err.to_string().starts_with("stepper 2 moving"), "{err}");
    s.jogging.clear();
    s.silent_since = Some(chrono::Utc::now());
    let err = snapshot::build(&inputs(&layout, &settings, &feed, &[s])).unwrap_err();
    assert_eq!(err.key(), "board_down");
}

/// The layout and settings of the operations rig's board (5 steppers, 2 strings).
fn layout_5() -> (stringdriverd::config::Layout, Settings) {
    let cfg = stringdriverd::config::parse(CONFIG, Path::new("ops.toml")).expect("config");
    let settings = Settings {
        operations: cfg.operations.clone(),
        thresholds: cfg.thresholds.clone(),
        enabled: stringdriverd::daemon::initial_enables(&cfg),
    };
    (cfg.layout, settings)
}

fn feed_ok(strings: usize) -> FeedStatus {
    FeedStatus {
        state: FeedState::Ok,
        channels: strings,
        values: Some(FeedValues {
            voice_count: vec![5; strings],
            amp_sum: vec![1.0; strings],
        }),
        ..FeedStatus::new()
    }
}

fn inputs<'a>(
    layout: &'a stringdriverd::config::Layout,
    settings: &'a Settings,
    feed: &'a FeedStatus,
    boards: &'a [BoardStatus],
) -> Inputs<'a> {
    Inputs {
        host: "jog-test",
        at: chrono::Utc::now(),
        layout,
        boards,
        settings,
        feed,
        controls_id: None,
    }
}

/// The rows the snapshot engine spooled so far: (recorded_at, positions).
async fn rows(
    spool: &stringdriverd::store::SpoolHandle,
) -> Vec<(chrono::DateTime<chrono::Utc>, Vec<i32>)> {
    spooled(spool)
        .await
        .into_iter()
        .filter_map(|r| match r {
            stringdriverd::store::Record::MachineState { row, .. } => {
                Some((row.recorded_at, row.stepper_positions))
            }
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn no_row_holds_a_position_in_transit_or_a_counter_moved_after_a_reset() {
    let r = rig([0, 30, 30, 30, 30], [0, 30, 30, 30, 30]).await;
    // Snapshots every 10 ms from now on.
    r.interval.send_replace(Duration::from_millis(10));
    let mut status = r.board.watch();
    // X across its whole travel: 2600 steps, about 0.26 s on this simulator.
    let started = tokio::spawn({
        let gate = r.machine.gate.clone();
        async move {
            gate.move_abs(&stringdriverd::motion::Origin::Manual, 0, 2600)
                .await
        }
    });
    let since = status
        .wait_for(|s| s.moving.is_some())
        .await
        .expect("status")
        .moving
        .clone()
        .expect("in transit")
        .since;
    started.await.expect("task").expect("the move");
    let confirmed = chrono::Utc::now();
    // A few rows after the move, so that the engine has surely looked.
    let spooled = rows(&r.spool).await.len();
    let deadline = Instant::now() + WAIT;
    while rows(&r.spool).await.len() < spooled + 3 {
        assert!(Instant::now() < deadline, "snapshots did not resume");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let all = rows(&r.spool).await;
    for (at, p) in &all {
        assert!(
            *at < since || *at > confirmed - chrono::Duration::milliseconds(1) || p[0] == 2600,
            "a row at {at} claims X at {} while it was in transit ({since} .. {confirmed})",
            p[0]
        );
    }
    assert!(
        all.iter().any(|(_, p)| p[0] == 2600),
        "rows resumed after the move"
    );
    let skipped = r.machine.snapshots.status().skipped;
    assert!(
        skipped.get("stepper_moving").copied().unwrap_or(0) >= 5,
        "the move's ticks were skipped as moving: {skipped:?}"
    );

    // A reset followed by motion: Z 2, 3, 4 move 12 steps from 0 on their own.
    let before = rows(&r.spool).await.len();
    r.sims[0].inject(Fault::ResetThenMotion(vec![(2, 12), (3, 12), (4, 12)]));
    let s = reset_seen(&r.board, 1).await;
    assert!(!s.trusted[2] && !s.trusted[3] && !s.trusted[4]);
    // Setting one of them again is not enough: the others stay unknown.
    r.board.set_stepper(2, 30).await.expect("set");
    let after: Vec<_> = rows(&r.spool).await.into_iter().skip(before).collect();
    assert!(
        after.iter().all(|(_, p)| p[3] != 12 && p[4] != 12),
        "a counter moved after the reset was written as a position: {after:?}"
    );
    assert!(
        after.iter().all(|(_, p)| p[1] == 30 && p[0] == 2600),
        "rows after the reset hold only restored or unchanged counters: {after:?}"
    );
}

#[test]
fn counters_set_one_by_one_at_first_start_log_one_pause_not_a_cascade() {
    use stringdriverd::snapshot::{pause_line, PauseLine};
    // Nineteen untrusted counters set one after another: the reason changes
    // each time, and only the first is a warning.
    let reasons: Vec<String> = (0..19)
        .map(|s| format!("board carriage: counter of stepper {s} is untrusted"))
        .collect();
    let mut was: Option<&str> = None;
    let mut warnings = 0;
    for r in &reasons {
        match pause_line(was, r) {
            PauseLine::Started => warnings += 1,
            PauseLine::ReasonChanged => {}
            PauseLine::Nothing => panic!("the reason changed"),
        }
        was = Some(r);
    }
    assert_eq!(warnings, 1);
    assert_eq!(pause_line(was, &reasons[18]), PauseLine::Nothing);
}

#[tokio::test]
async fn a_restore_writes_an_untrusted_counter_back_but_never_makes_it_trusted() {
    let mut opts = sim_options(Firmware::V2);
    opts.profile = Profile::for_firmware(Firmware::V2, Some(5));
    let known = KnownCounters {
        positions: vec![300, 7, 0, 0, 0],
        trusted: vec![true, false, true, true, true],
    };
    let r = rig_with(opts, |_| {}, Some(known)).await;
    let s = reset_seen(&r.board, 1).await;
    assert_eq!(s.positions.as_deref(), Some(&[300, 7, 0, 0, 0][..]));
    assert_eq!(s.trusted, vec![true, false, true, true, true]);
}
