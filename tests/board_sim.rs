//! The board driver against the firmware simulator over real pseudo-terminals.

mod common;

use std::time::Duration;

use common::*;
use stringdriverd::board::{BoardError, BoardEvent, KnownCounters, LinkState};
use stringdriverd::protocol::{Firmware, Op};
use stringdriverd::sim::{Fault, TraceEvent};

const WAIT: Duration = Duration::from_secs(10);

fn bytes_received_while_busy(sim: &stringdriverd::sim::SimHandle) -> usize {
    sim.trace()
        .iter()
        .map(|e| match e.event {
            TraceEvent::ReceivedWhileBusy { len } => len,
            _ => 0,
        })
        .sum()
}

#[tokio::test]
async fn polls_positions_of_a_v2_board() {
    let r = rig(Firmware::V2).await;
    let p = connected(&r.board).await;
    assert_eq!(p, vec![0; 13]);
    let before = r.board.status().polls_ok;
    r.board
        .wait_for(WAIT, |s| s.polls_ok >= before + 3)
        .await
        .expect("polling continues");
    assert!(r.sim.violations().is_empty());
}

#[tokio::test]
async fn a_lone_semicolon_clears_the_parser_after_opening() {
    let r = rig(Firmware::V2).await;
    connected(&r.board).await;
    let trace = r.sim.trace();
    let reset = trace
        .iter()
        .position(|e| e.event == TraceEvent::Reset)
        .expect("the open reset the board");
    // A lone `;` executes nothing (CmdMessenger runs no empty message): the
    // simulator records it as an empty message.
    let first = trace[reset..]
        .iter()
        .find(|e| {
            matches!(
                e.event,
                TraceEvent::Message { .. } | TraceEvent::EmptyMessage
            )
        })
        .expect("a message after the reset");
    assert_eq!(
        first.event,
        TraceEvent::EmptyMessage,
        "the first message after the reset was not a lone ';'"
    );
}

#[tokio::test]
async fn move_and_read_back() {
    let r = rig(Firmware::V2).await;
    connected(&r.board).await;
    let p = r.board.rmove(1, 10).await.expect("rmove");
    assert_eq!(p[1], 10);
    let p = r.board.rmove(1, -25).await.expect("rmove");
    assert_eq!(p[1], -15);
    let p = r.board.amove(0, 1200).await.expect("amove");
    assert_eq!(p[0], 1200);
    assert_eq!(r.sim.counters(), p);
    assert_eq!(r.board.status().positions, Some(p));
    assert_eq!(
        bytes_received_while_busy(&r.sim),
        0,
        "nothing may be sent during a move"
    );
    assert!(r.sim.violations().is_empty());
}

#[tokio::test]
async fn set_stepper_on_one_stepper_leaves_the_others_untouched() {
    let r = rig(Firmware::V2).await;
    connected(&r.board).await;
    r.board.rmove(2, 7).await.expect("rmove");
    r.board.rmove(5, -3).await.expect("rmove");
    let before = r.sim.counters();
    let p = r.board.set_stepper(3, 42).await.expect("set_stepper");
    let mut want = before.clone();
    want[3] = 42;
    assert_eq!(p, want);
    assert_eq!(r.sim.counters(), want);
    // Command 6 on v2, never 4.
    let sets = r.sim.received(Op::SetStepper);
    assert_eq!(sets.len(), 1);
    assert!(
        matches!(&sets[0].event, TraceEvent::Message { id: 6, args, .. } if args == &vec![3, 42])
    );
    assert!(r.sim.received(Op::ResetAll).is_empty());
    assert!(
        r.board.status().trusted[3],
        "a counter that was set is trusted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poll_during_a_long_move_waits_and_succeeds() {
    let r = rig(Firmware::V2).await;
    connected(&r.board).await;
    let failed_before = r.board.status().polls_failed;
    // 2000 X steps: 4 s on the real board, 200 ms here.
    let mover = {
        let b = r.board.clone();
        tokio::spawn(async move { b.rmove(0, 2000).await })
    };
    r.sim
        .wait_for_trace(WAIT, |t| {
            t.iter().any(|e| {
                matches!(
                    &e.event,
                    TraceEvent::Message {
                        op: Some(Op::Rmove),
                        ..
                    }
                )
            })
        })
        .then_some(())
        .expect("move reached the board");
    let p = r.board.poll().await.expect("poll during the move");
    assert_eq!(p[0], 2000, "the poll is answered after the move");
    assert_eq!(mover.await.expect("join").expect("move"), p);
    assert_eq!(r.board.status().polls_failed, failed_before);
    assert_eq!(r.board.status().link, LinkState::Connected);
    assert_eq!(bytes_received_while_busy(&r.sim), 0);
}

#[tokio::test]
async fn a_move_slower_than_estimated_is_not_a_dead_board() {
    // The driver believes the steppers are twice as fast as they are, so its
    // confirming poll reaches the board mid-move and is answered late. At
    // speed scale 2 the move takes 2 s and the poll goes out after 1.1 s:
    // wide margins either way.
    let mut opts = sim_options(Firmware::V2);
    opts.speed_scale = 2.0;
    let r = rig_with(
        opts,
        |s| {
            s.speeds.iter_mut().for_each(|v| *v *= 2.0);
            s.move_margin = Duration::ZERO;
            s.reply_timeout = Duration::from_millis(100);
        },
        None,
    )
    .await;
    connected(&r.board).await;
    let p = r
        .board
        .rmove(0, 2000)
        .await
        .expect("move confirmed despite the late reply");
    assert_eq!(p[0], 2000);
    assert_eq!(r.board.status().polls_failed, 0);
    assert!(
        bytes_received_while_busy(&r.sim) > 0,
        "the poll did arrive mid-move"
    );
}

#[tokio::test]
async fn noise_and_a_corrupted_reply_do_not_desynchronise_the_driver() {
    let r = rig(Firmware::V2).await;
    connected(&r.board).await;
    r.board.rmove(4, 33).await.expect("rmove");
    r.sim.inject(Fault::Noise(b"\xfe\x00garbage,/".to_vec()));
    r.sim.inject(Fault::CorruptNextReply);
    r.sim.inject(Fault::Noise(b"\r\n;;junk".to_vec()));
    let failed = r.board.status().polls_failed;
    r.board
        .wait_for(WAIT, |s| s.polls_failed > failed)
        .await
        .expect("the corrupted reply is counted as a failed poll");
    let ok = r.board.status().polls_ok;
    let s = r
        .board
        .wait_for(WAIT, |s| s.polls_ok >= ok + 3)
        .await
        .expect("polling recovers");
    let mut want = vec![0; 13];
    want[4] = 33;
    assert_eq!(s.positions, Some(want));
    assert_eq!(s.link, LinkState::Connected);
    assert!(s.noise_bytes > 0);
    assert_eq!(r.board.rmove(4, -3).await.expect("move after noise")[4], 30);
    assert!(r.sim.violations().is_empty());
}

#[tokio::test]
async fn a_dropped_reply_is_a_failed_poll_then_polling_goes_on() {
    let r = rig(Firmware::V2).await;
    connected(&r.board).await;
    r.sim.inject(Fault::DropNextReply);
    r.board
        .wait_for(WAIT, |s| s.polls_failed >= 1)
        .await
        .expect("counted");
    let ok = r.board.status().polls_ok;
    r.board
        .wait_for(WAIT, |s| s.polls_ok > ok + 1)
        .await
        .expect("recovers");
    assert_eq!(r.board.status().link, LinkState::Connected);
}

#[tokio::test]
async fn the_simulator_vanishing_and_returning_is_survived_and_counters_restored() {
    let r = rig(Firmware::V2).await;
    connected(&r.board).await;
    let mut events = r.board.subscribe();
    r.board.rmove(1, 20).await.expect("rmove");
    r.board.amove(0, 300).await.expect("amove");
    let before = r.sim.counters();
    r.sim.inject(Fault::Vanish);
    let s = r
        .board
        .wait_for(WAIT, |s| matches!(s.link, LinkState::Disconnected { .. }))
        .await
        .expect("the unplug is noticed");
    let LinkState::Disconnected { error, .. } = s.link else {
        unreachable!()
    };
    assert!(!error.is_empty());
    // A request while it is away is refused, not queued for later.
    assert!(matches!(
        r.board.rmove(1, 1).await,
        Err(BoardError::NotReady { .. })
    ));
    r.sim.inject(Fault::Reappear);
    let connects = s.connects;
    let s = r
        .board
        .wait_for(WAIT, |s| {
            s.connects > connects && s.link == LinkState::Connected && s.resets_detected == 1
        })
        .await
        .expect("reconnected");
    assert_eq!(
        s.positions.as_ref(),
        Some(&before),
        "counters written back after the reset"
    );
    assert_eq!(r.sim.counters(), before);
    let mut saw_reset = false;
    while let Ok(e) = events.try_recv() {
        if let BoardEvent::ResetDetected {
            restored, previous, ..
        } = e
        {
            assert!(restored);
            assert_eq!(previous, before);
            saw_reset = true;
        }
    }
    assert!(saw_reset, "a ResetDetected event was published");
    assert!(r.sim.received(Op::ResetAll).is_empty());
    assert!(r.sim.violations().is_empty());
}

#[tokio::test]
async fn a_brown_out_reset_is_detected_and_restored_before_any_move() {
    let r = rig(Firmware::V2).await;
    connected(&r.board).await;
    r.board.rmove(6, -40).await.expect("rmove");
    r.sim.inject(Fault::Reset);
    let s = r
        .board
        .wait_for(WAIT, |s| {
            s.resets_detected == 1 && s.link == LinkState::Connected
        })
        .await
        .expect("reset detected");
    assert_eq!(s.positions.as_ref().map(|p| p[6]), Some(-40));
    assert_eq!(r.sim.counters()[6], -40);
}

#[tokio::test]
async fn without_restore_a_reset_leaves_the_counters_untrusted() {
    let initial = KnownCounters {
        positions: vec![5; 13],
        trusted: vec![true; 13],
    };
    let r = rig_with(
        sim_options(Firmware::V2),
        |s| s.restore_counters_after_reset = false,
        Some(initial),
    )
    .await;
    // Opening the port reset the board: zeros where 5 was known.
    let s = r
        .board
        .wait_for(WAIT, |s| {
            s.link == LinkState::Connected && s.resets_detected == 1
        })
        .await
        .expect("reset detected at start");
    assert_eq!(s.positions, Some(vec![0; 13]));
    assert!(
        s.trusted.iter().all(|t| !t),
        "zeros are never silently trusted"
    );
    assert!(r.sim.received(Op::SetStepper).is_empty());
}

#[tokio::test]
async fn nothing_known_at_start_means_untrusted_counters() {
    let r = rig(Firmware::V2).await;
    connected(&r.board).await;
    let s = r.board.status();
    assert!(s.trusted.iter().all(|t| !t));
    assert!(!s.fully_trusted());
}

#[tokio::test]
async fn out_of_range_steppers_are_refused_before_anything_is_sent() {
    let r = rig(Firmware::V2).await;
    connected(&r.board).await;
    let err = r.board.set_stepper(13, 1).await.expect_err("refused");
    assert!(
        matches!(
            err,
            BoardError::StepperOutOfRange {
                stepper: 13,
                count: 13,
                ..
            }
        ),
        "{err}"
    );
    assert!(!err.is_device_fault());
    let err = r.board.rmove(200, 1).await.expect_err("refused");
    assert!(matches!(err, BoardError::StepperOutOfRange { .. }));
    // 2-byte ints: 40000 does not fit.
    let err = r.board.set_stepper(1, 40_000).await.expect_err("refused");
    assert!(
        matches!(
            err,
            BoardError::ValueOutOfRange {
                value: 40_000,
                bytes: 2,
                ..
            }
        ),
        "{err}"
    );
    assert!(r.sim.received(Op::SetStepper).is_empty());
    assert!(r.sim.received(Op::Rmove).is_empty());
    assert!(r.sim.violations().is_empty());
}

#[tokio::test]
async fn a_target_outside_the_firmware_limits_is_reported_not_confirmed() {
    let r = rig(Firmware::V2).await;
    connected(&r.board).await;
    let err = r
        .board
        .rmove(1, 150)
        .await
        .expect_err("the firmware ignores it");
    assert!(
        matches!(
            err,
            BoardError::NotConfirmed {
                stepper: 1,
                expected: 150,
                actual: 0,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(r.board.status().link, LinkState::Connected);
}

#[tokio::test]
async fn a_four_byte_tuner_board_works() {
    let r = rig(Firmware::Tuner).await;
    assert_eq!(connected(&r.board).await, vec![0; 6]);
    let p = r
        .board
        .set_stepper(5, 70_000)
        .await
        .expect("set beyond i16");
    assert_eq!(p[5], 70_000);
    let p = r.board.rmove(5, -300).await.expect("rmove");
    assert_eq!(p[5], 69_700);
    assert_eq!(r.sim.counters(), p);
    assert!(r.sim.violations().is_empty());
}

#[tokio::test]
async fn a_v1_board_works() {
    let r = rig(Firmware::V1).await;
    assert_eq!(connected(&r.board).await, vec![0; 7]);
    let p = r.board.rmove(3, 12).await.expect("rmove on a v1 Z stepper");
    assert_eq!(p[3], 12);
    r.board.set_stepper(2, 100).await.expect("set");
    let sets = r.sim.received(Op::SetStepper);
    assert!(
        matches!(&sets[0].event, TraceEvent::Message { id: 7, .. }),
        "v1 set_stepper is 7"
    );
    assert!(r.sim.received(Op::ResetAll).is_empty());
    assert!(r.sim.violations().is_empty());
}

#[tokio::test]
async fn reset_all_is_sent_only_when_asked_by_name() {
    let r = rig(Firmware::V2).await;
    connected(&r.board).await;
    r.board.rmove(1, 9).await.expect("rmove");
    r.board.rmove(2, 9).await.expect("rmove");
    assert!(r.sim.received(Op::ResetAll).is_empty());
    let p = r.board.reset_all_counters().await.expect("reset_all");
    assert_eq!(p, vec![0; 13]);
    assert_eq!(r.sim.received(Op::ResetAll).len(), 1);
    assert_eq!(
        r.board.status().resets_detected,
        0,
        "an asked-for zeroing is not a board reset"
    );
    assert!(
        r.sim.received(Op::SetStepper).is_empty(),
        "and nothing is restored"
    );
}

#[tokio::test]
async fn check_memory_reports_free_ram() {
    let r = rig(Firmware::V2).await;
    connected(&r.board).await;
    let m = r.board.check_memory().await.expect("check_memory");
    assert_eq!(m, stringdriverd::sim::firmware::FREE_MEMORY);
    assert_eq!(r.board.status().free_memory, Some(m));
}

#[tokio::test]
async fn a_board_that_never_answers_is_unresponsive_and_the_port_stays_open() {
    let opts = sim_options(Firmware::V2);
    let (_dir, sim) = start_sim(opts.clone());
    sim.inject(Fault::Mute(true));
    let spec = spec_for(&opts, sim.link().to_path_buf());
    let shutdown = tokio_util::sync::CancellationToken::new();
    let connector = std::sync::Arc::new(stringdriverd::board::SerialConnector {
        path: spec.port.clone(),
        baud: spec.baud,
    });
    let (board, _task) = stringdriverd::board::spawn(spec, connector, None, shutdown.clone());
    let s = board
        .wait_for(
            WAIT,
            |s| matches!(s.link, LinkState::Unresponsive { missed } if missed >= 3),
        )
        .await
        .expect("reported unresponsive");
    assert_eq!(s.connects, 1);
    assert!(
        s.last_error
            .as_deref()
            .is_some_and(|e| e.contains("no reply")),
        "{:?}",
        s.last_error
    );
    let opened = sim
        .trace()
        .iter()
        .filter(|e| e.event == TraceEvent::Opened)
        .count();
    assert_eq!(
        opened, 1,
        "a silent board is never reopened (that would reset it)"
    );
    sim.inject(Fault::Mute(false));
    board
        .wait_for(WAIT, |s| s.link == LinkState::Connected)
        .await
        .expect("recovers when it answers");
    shutdown.cancel();
}

#[tokio::test]
async fn a_missing_port_is_reported_with_its_path_and_retried() {
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = sim_options(Firmware::V2);
    let path = dir.path().join("not-plugged-in");
    let spec = spec_for(&opts, path.clone());
    let shutdown = tokio_util::sync::CancellationToken::new();
    let connector = std::sync::Arc::new(stringdriverd::board::SerialConnector {
        path: path.clone(),
        baud: 115_200,
    });
    let (board, _task) = stringdriverd::board::spawn(spec, connector, None, shutdown.clone());
    let s = board
        .wait_for(WAIT, |s| matches!(&s.link, LinkState::Disconnected { error, .. } if error.contains("not-plugged-in")))
        .await
        .expect("disconnected naming the port");
    assert_eq!(s.connects, 0);
    // Plug it in: the driver finds it on a later attempt.
    let _sim = stringdriverd::sim::Simulator::spawn(opts, &path).expect("sim");
    connected(&board).await;
    shutdown.cancel();
}

#[tokio::test]
async fn shutdown_stops_the_driver_and_refuses_later_requests() {
    let r = rig(Firmware::V2).await;
    connected(&r.board).await;
    r.shutdown.cancel();
    tokio::time::timeout(WAIT, r.task)
        .await
        .expect("stops in time")
        .expect("no panic");
    assert_eq!(r.board.status().link, LinkState::Stopped);
    assert!(matches!(
        r.board.poll().await,
        Err(BoardError::Stopped { .. })
    ));
}

/// Records every save, in order.
#[derive(Default)]
struct Recorder(std::sync::Mutex<Vec<KnownCounters>>);

impl stringdriverd::board::CounterStore for Recorder {
    fn save<'a>(
        &'a self,
        _board: &'a str,
        known: &'a KnownCounters,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send + 'a>> {
        self.0.lock().expect("lock").push(known.clone());
        Box::pin(async { Ok(()) })
    }
}

#[tokio::test]
async fn a_moving_stepper_is_saved_untrusted_before_its_move_and_trusted_after() {
    let opts = sim_options(Firmware::V2);
    let (_dir, sim) = start_sim(opts.clone());
    let spec = spec_for(&opts, sim.link().to_path_buf());
    let rec = std::sync::Arc::new(Recorder::default());
    let store: std::sync::Arc<dyn stringdriverd::board::CounterStore> = rec.clone();
    let initial = KnownCounters {
        positions: vec![0; 13],
        trusted: vec![true; 13],
    };
    let connector = std::sync::Arc::new(stringdriverd::board::SerialConnector {
        path: spec.port.clone(),
        baud: spec.baud,
    });
    let shutdown = tokio_util::sync::CancellationToken::new();
    let (board, _task) = stringdriverd::board::spawn_with_store(
        spec,
        connector,
        Some(initial),
        Some(store),
        shutdown.clone(),
    );
    connected(&board).await;
    board.rmove(3, 7).await.expect("rmove");
    let saves = rec.0.lock().expect("lock").clone();
    let before = saves
        .iter()
        .position(|k| !k.trusted[3] && k.positions[3] == 0)
        .expect("saved untrusted before the move");
    let after = saves
        .iter()
        .position(|k| k.trusted[3] && k.positions[3] == 7)
        .expect("saved trusted after it");
    assert!(before < after);
    shutdown.cancel();
}

#[tokio::test]
async fn counters_saved_in_the_file_are_restored_after_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("counters.json");
    let opts = sim_options(Firmware::V2);
    {
        let (_sdir, sim) = start_sim(opts.clone());
        let spec = spec_for(&opts, sim.link().to_path_buf());
        let (store, known, problem) = stringdriverd::board::CounterFile::open(&file);
        assert!(known.is_empty() && problem.is_none());
        let connector = std::sync::Arc::new(stringdriverd::board::SerialConnector {
            path: spec.port.clone(),
            baud: spec.baud,
        });
        let shutdown = tokio_util::sync::CancellationToken::new();
        let store: std::sync::Arc<dyn stringdriverd::board::CounterStore> =
            std::sync::Arc::new(store);
        let (board, task) = stringdriverd::board::spawn_with_store(
            spec,
            connector,
            None,
            Some(store),
            shutdown.clone(),
        );
        connected(&board).await;
        for s in 0..13 {
            board.set_stepper(s, s as i32 * 3).await.expect("set");
        }
        board.rmove(5, 4).await.expect("rmove");
        shutdown.cancel();
        task.await.expect("stops");
    }
    // A new daemon, a board that reset (a fresh simulator: all zeros).
    let (store, known, problem) = stringdriverd::board::CounterFile::open(&file);
    assert!(problem.is_none());
    let k = known.get("test-board").cloned().expect("saved");
    let mut want: Vec<i32> = (0..13).map(|s| s * 3).collect();
    want[5] += 4;
    assert_eq!(k.positions, want);
    assert!(k.trusted.iter().all(|t| *t));
    let (_sdir, sim) = start_sim(opts.clone());
    let spec = spec_for(&opts, sim.link().to_path_buf());
    let connector = std::sync::Arc::new(stringdriverd::board::SerialConnector {
        path: spec.port.clone(),
        baud: spec.baud,
    });
    let shutdown = tokio_util::sync::CancellationToken::new();
    let store: std::sync::Arc<dyn stringdriverd::board::CounterStore> = std::sync::Arc::new(store);
    let (board, _task) = stringdriverd::board::spawn_with_store(
        spec,
        connector,
        Some(k),
        Some(store),
        shutdown.clone(),
    );
    let s = board
        .wait_for(WAIT, |s| {
            s.link == LinkState::Connected && s.resets_detected == 1
        })
        .await
        .expect("reset detected and restored");
    assert_eq!(s.positions, Some(want.clone()));
    assert!(s.fully_trusted());
    assert_eq!(sim.counters(), want);
    shutdown.cancel();
}

#[test]
fn an_unreadable_counters_file_is_moved_aside_and_reported() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("counters.json");
    std::fs::write(&file, b"{\"format\": 1, \"boards\": {\"carriage\": [1, 2").expect("write");
    let (_store, known, problem) = stringdriverd::board::CounterFile::open(&file);
    assert!(known.is_empty(), "nothing is trusted from a damaged file");
    assert!(problem.expect("reported").contains("counters.json"));
    assert!(!file.exists(), "moved aside");
    assert_eq!(
        std::fs::read_dir(dir.path()).expect("dir").count(),
        1,
        "kept for inspection"
    );
}

/// Panics on its first open (a bug), then opens the real port.
struct PanicsOnce {
    inner: stringdriverd::board::SerialConnector,
    done: std::sync::atomic::AtomicBool,
}

impl stringdriverd::board::Connector for PanicsOnce {
    fn open(&self) -> stringdriverd::board::OpenFuture<'_> {
        if !self.done.swap(true, std::sync::atomic::Ordering::SeqCst) {
            panic!("injected bug in open");
        }
        self.inner.open()
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
}

#[tokio::test]
async fn a_panic_in_the_driver_is_survived_and_the_board_comes_up() {
    let opts = sim_options(Firmware::V2);
    let (_dir, sim) = start_sim(opts.clone());
    let spec = spec_for(&opts, sim.link().to_path_buf());
    let connector = std::sync::Arc::new(PanicsOnce {
        inner: stringdriverd::board::SerialConnector {
            path: spec.port.clone(),
            baud: spec.baud,
        },
        done: std::sync::atomic::AtomicBool::new(false),
    });
    let shutdown = tokio_util::sync::CancellationToken::new();
    let (board, task) = stringdriverd::board::spawn(spec, connector, None, shutdown.clone());
    connected(&board).await;
    let s = board.status();
    assert!(
        s.last_error
            .as_deref()
            .is_some_and(|e| e.contains("injected bug")),
        "{:?}",
        s.last_error
    );
    shutdown.cancel();
    task.await.expect("the task itself never panicked");
}
