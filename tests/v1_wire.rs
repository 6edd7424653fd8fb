//! The v1 wire format (stringdriver-1): the index of amove, rmove,
//! set_stepper, set_accel, set_speed, set_min and set_max is a 2-byte int,
//! its value a 4-byte long; positions come back as 2-byte ints. The driver
//! against the v1 simulator over real pseudo-terminals, and raw bytes
//! straight to the simulator to show it misreads what the real board
//! misreads.

mod common;

use std::time::Duration;

use common::*;
use stringdriverd::board::{BoardError, LinkState};
use stringdriverd::protocol::{Firmware, IntWidth, Op};
use stringdriverd::sim::{Outcome, TraceEvent};

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn negative_and_large_values_round_trip_on_a_v1_board_through_set_stepper_and_amove() {
    let r = rig(Firmware::V1).await;
    connected(&r.board).await;
    // Tuners 0-1 (-25000..25000), X 2, Z 3-6.
    let p = r.board.set_stepper(3, -5).await.expect("set -5");
    assert_eq!(p[3], -5);
    assert_eq!(r.sim.counters()[3], -5, "the firmware's long holds -5");
    let p = r.board.set_stepper(0, -25_000).await.expect("set -25000");
    assert_eq!(p[0], -25_000);
    let p = r.board.amove(0, -24_950).await.expect("amove -24950");
    assert_eq!(p[0], -24_950);
    assert_eq!(r.sim.physical()[0], 50, "the motor turned 50 steps");
    let p = r.board.set_stepper(1, 24_990).await.expect("set 24990");
    assert_eq!(p[1], 24_990);
    let p = r.board.amove(1, 25_000).await.expect("amove 25000");
    assert_eq!(p[1], 25_000);
    let p = r.board.amove(3, -7).await.expect("amove -7");
    assert_eq!(p[3], -7);
    assert_eq!(r.sim.counters()[..4], [-24_950, 25_000, 0, -7]);
    assert_eq!(
        received_args(&r.sim, Op::SetStepper),
        vec![vec![3, -5], vec![0, -25_000], vec![1, 24_990]]
    );
    assert_eq!(
        received_args(&r.sim, Op::Amove),
        vec![vec![0, -24_950], vec![1, 25_000], vec![3, -7]]
    );
    // Each value travelled as 4 bytes: -5 is fb ff ff ff after index 03 00.
    let first = &r.sim.received(Op::SetStepper)[0];
    let TraceEvent::Message { raw, .. } = &first.event else {
        panic!("{first:?}")
    };
    assert_eq!(&raw[..], b"7,\x03/\x00,\xfb\xff\xff\xff");
    assert!(r.sim.violations().is_empty());
    assert_eq!(r.sim.rx_lost(), 0);
}

#[tokio::test]
async fn a_v1_counter_the_positions_reply_cannot_carry_is_refused_before_sending() {
    let r = rig(Firmware::V1).await;
    connected(&r.board).await;
    // 40000 fits the long but reads back as -25536: never set nor targeted.
    for result in [
        r.board.set_stepper(0, 40_000).await,
        r.board.amove(0, 40_000).await,
        r.board.rmove(0, 32_768).await,
    ] {
        assert!(
            matches!(
                result,
                Err(BoardError::ValueOutOfRange {
                    value: 40_000 | 32_768,
                    bytes: 2,
                    ..
                })
            ),
            "{result:?}"
        );
    }
    assert!(r.sim.received(Op::SetStepper).is_empty());
    assert!(r.sim.received(Op::Amove).is_empty());
    assert!(r.sim.received(Op::Rmove).is_empty());
    assert_eq!(r.board.status().link, LinkState::Connected);
}

#[tokio::test]
async fn set_position_3_minus_5_then_move_3_by_10_does_not_run_the_motor_65526_steps() {
    // Seen on the real v1 firmware with 2-byte values: -5 was stored as
    // 65531 while the reply read -5, and the move to 5 ran 65526 steps.
    let r = rig(Firmware::V1).await;
    connected(&r.board).await;
    let start = r.sim.physical()[3];
    let p = r.board.set_stepper(3, -5).await.expect("set-position 3 -5");
    assert_eq!(p[3], -5);
    assert_eq!(r.sim.counters()[3], -5);
    let p = r.board.rmove(3, 10).await.expect("move 3 10");
    assert_eq!(p[3], 5);
    assert_eq!(r.sim.counters()[3], 5);
    assert_eq!(r.sim.physical()[3] - start, 10, "the motor ran 10 steps");
    // After a board reset the counter is written back the same way.
    r.sim.inject(stringdriverd::sim::Fault::Reset);
    let s = r
        .board
        .wait_for(WAIT, |s| {
            s.resets_detected == 1 && s.link == LinkState::Connected
        })
        .await
        .expect("reset detected");
    assert_eq!(s.positions.map(|p| p[3]), Some(5));
    assert_eq!(
        r.sim.counters()[3],
        5,
        "restored as a long, not 5 + garbage"
    );
    assert!(r.sim.violations().is_empty());
}

#[tokio::test]
async fn a_v1_x_rmove_goes_out_as_amove_because_the_firmware_doubles_rmove_on_x() {
    let r = rig(Firmware::V1).await;
    connected(&r.board).await;
    let p = r.board.rmove(2, 10).await.expect("X +10");
    assert_eq!(p[2], 10);
    assert_eq!(r.sim.physical()[2], 10, "not 20");
    let p = r.board.rmove(2, -4).await.expect("X -4");
    assert_eq!(p[2], 6);
    assert!(r.sim.received(Op::Rmove).is_empty());
    assert_eq!(
        received_args(&r.sim, Op::Amove),
        vec![vec![2, 10], vec![2, 6]]
    );
}

// Raw bytes to the simulator, as an old host sent them.

/// Writes `bytes` then a v1 positions request (`2;`); the counters it
/// answers with, read at 2 bytes as the reply carries them.
fn positions_after(f: &mut std::fs::File, bytes: &[u8]) -> Vec<i32> {
    let mut all = bytes.to_vec();
    all.extend_from_slice(b"2;");
    let replies = raw::replies_before_sentinel(f, &all, IntWidth::Two);
    raw::last_positions(Firmware::V1, &replies)
}

#[test]
fn a_two_byte_value_sent_raw_to_the_v1_simulator_is_misread_as_the_real_firmware_would() {
    let (_dir, sim) = start_sim(sim_options(Firmware::V1));
    let mut f = raw::open_ready(&sim);
    // set_stepper (7) 3, -5 at 2 bytes: the firmware reads fb ff 00 00.
    let p = positions_after(&mut f, &raw::uniform(IntWidth::Two, 7, &[3, -5]));
    assert_eq!(sim.counters()[3], 65_531, "stored as 65536 - 5");
    assert_eq!(p[3], -5, "and the 16-bit reply reads -5");
    // amove (3) 4, -5 at 2 bytes: a target of 65531, ignored.
    let p = positions_after(&mut f, &raw::uniform(IntWidth::Two, 3, &[4, -5]));
    assert_eq!(p[4], 0);
    let amoves = sim.received(Op::Amove);
    assert!(
        matches!(
            &amoves[0].event,
            TraceEvent::Message {
                outcome: Outcome::IgnoredOutOfLimits { target: 65_531 },
                ..
            }
        ),
        "{amoves:?}"
    );
    // The same requests in v1's layout are read as meant.
    let v1 = |id: u16, args: &[i32]| raw::in_layout(Firmware::V1, IntWidth::Two, id, args);
    let p = positions_after(&mut f, &v1(7, &[3, -5]));
    assert_eq!((sim.counters()[3], p[3]), (-5, -5));
    let p = positions_after(&mut f, &v1(3, &[4, -5]));
    assert_eq!((sim.counters()[4], p[4]), (-5, -5));
    assert!(sim.violations().is_empty());
}

#[test]
fn an_axis_past_v1s_three_groups_is_a_safety_violation() {
    let (_dir, sim) = start_sim(sim_options(Firmware::V1));
    let mut f = raw::open_ready(&sim);
    let set_max = |axis: i32| raw::in_layout(Firmware::V1, IntWidth::Two, 11, &[axis, 50]);
    raw::replies_before_sentinel(&mut f, &set_max(2), IntWidth::Two);
    assert!(sim.violations().is_empty(), "axis 2 (Z) exists on v1");
    // The encoder refuses axis 3 for v1; these are a careless host's bytes.
    let axis_3 = raw::uniform(IntWidth::Two, 11, &[3, 50]);
    raw::replies_before_sentinel(&mut f, &axis_3, IntWidth::Two);
    let v = sim.violations();
    assert_eq!(v.len(), 1);
    assert!(v[0].detail.contains("axis 3"), "{}", v[0].detail);
}

/// Reads from `f` until a message with command number `id` arrives or
/// `wait` passes; its ints at 2 bytes.
fn read_reply(f: &mut std::fs::File, id: u16, wait: Duration) -> Option<Vec<i32>> {
    use std::io::Read;
    let deadline = std::time::Instant::now() + wait;
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    while std::time::Instant::now() < deadline {
        match f.read(&mut buf) {
            Ok(n) if n > 0 => got.extend_from_slice(&buf[..n]),
            _ => std::thread::sleep(Duration::from_millis(1)),
        }
        let found = stringdriverd::protocol::frame::decode_all(IntWidth::Two, &got)
            .into_iter()
            .find_map(|i| match i {
                stringdriverd::protocol::Inbound::Message(r) if r.id == id => r.ints(IntWidth::Two),
                _ => None,
            });
        if found.is_some() {
            return found;
        }
    }
    None
}

#[test]
fn sim_controller_profile_v1_reads_two_byte_values_as_the_real_board_does() {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let link = dir.path().join("ttyV1");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_stringdriverd"))
        .args(["sim-controller", "--profile", "v1", "--speed-scale", "20"])
        .arg("--link")
        .arg(&link)
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("sim-controller starts");
    let deadline = std::time::Instant::now() + WAIT;
    while !link.exists() {
        assert!(std::time::Instant::now() < deadline, "no link");
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(nix::libc::O_NONBLOCK | nix::libc::O_NOCTTY)
        .open(&link)
        .expect("open the pty");
    // The board is deaf for its reset window: ask until it answers (a
    // request lost in the bootloader is simply asked again).
    let mut first = None;
    for _ in 0..50 {
        f.write_all(b";2;").expect("write");
        first = read_reply(&mut f, 2, Duration::from_millis(200));
        if first.is_some() {
            break;
        }
    }
    assert_eq!(first, Some(vec![0; 7]), "the v1 board answers");
    // amove (3) of Z stepper 4 to -5 at 2 bytes: read as 65531, ignored.
    f.write_all(&raw::uniform(IntWidth::Two, 3, &[4, -5]))
        .expect("write");
    f.write_all(b"2;").expect("write");
    assert_eq!(read_reply(&mut f, 2, WAIT).map(|p| p[4]), Some(0));
    // In v1's layout it moves.
    f.write_all(&raw::in_layout(Firmware::V1, IntWidth::Two, 3, &[4, -5]))
        .expect("write");
    f.write_all(b"2;").expect("write");
    assert_eq!(read_reply(&mut f, 2, WAIT).map(|p| p[4]), Some(-5));
    drop(f);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("signal");
    let status = child.wait().expect("wait");
    assert!(status.success(), "no safety violation: {status:?}");
}
