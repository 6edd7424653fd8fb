//! The simulator itself, spoken to over its pseudo-terminal with plain file
//! I/O (no driver), to show it behaves as the firmware measurements say.

mod common;

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use stringdriverd::protocol::{CmdCodec, Firmware, IntWidth, Op, Request};
use stringdriverd::sim::{Outcome, SimHandle, TraceEvent};

const WAIT: Duration = Duration::from_secs(10);

fn open_raw(sim: &SimHandle) -> File {
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(nix::libc::O_NONBLOCK | nix::libc::O_NOCTTY)
        .open(Path::new(sim.link()))
        .expect("open the pty")
}

fn count(sim: &SimHandle, ev: &TraceEvent) -> usize {
    sim.trace().iter().filter(|e| &e.event == ev).count()
}

/// Opens the simulated port raw, waits until the reset is over and drains
/// the bootloader noise.
fn open(sim: &SimHandle) -> File {
    let ready = count(sim, &TraceEvent::Ready);
    let mut f = open_raw(sim);
    assert!(sim.wait_for_trace(WAIT, |t| t
        .iter()
        .filter(|e| e.event == TraceEvent::Ready)
        .count()
        > ready));
    exchange(&mut f, b"");
    f
}

/// Writes `bytes` and then a check_memory request as a sentinel; returns the
/// replies that came before the sentinel's. The board answers in order, so
/// whatever `bytes` caused has been written by then.
fn exchange(f: &mut File, bytes: &[u8]) -> Vec<Vec<i32>> {
    common::raw::replies_before_sentinel(f, bytes, IntWidth::Two)
        .into_iter()
        .map(|(_, ints)| ints)
        .collect()
}

fn req(fw: Firmware, op: Op, args: &[i32]) -> Vec<u8> {
    let id = fw.id(op).expect("op");
    CmdCodec::encode_request(
        IntWidth::Two,
        &Request {
            id,
            args: args.to_vec(),
        },
    )
    .expect("encode")
    .to_vec()
}

#[test]
fn during_a_move_only_63_bytes_of_input_survive() {
    let (_dir, sim) = common::start_sim(common::sim_options(Firmware::V2));
    let mut f = open(&sim);
    // A 100-step Z move takes 1 s on the board, 50 ms here; then 30 polls
    // (60 bytes) and 20 more (40 bytes) arrive while it runs.
    f.write_all(&req(Firmware::V2, Op::Rmove, &[1, 100]))
        .expect("write");
    assert!(sim.wait_for_trace(WAIT, |t| t.iter().any(|e| matches!(
        &e.event,
        TraceEvent::Message {
            op: Some(Op::Rmove),
            ..
        }
    ))));
    f.write_all(&b"1;".repeat(50)).expect("write");
    // 63 bytes hold 31 whole polls and the `1` of the 32nd. The board's
    // buffer is full until it has answered them, so wait for that before
    // the sentinel. The half poll sticks to the front of what comes next: a
    // lone `;` completes it into a 32nd poll.
    let polls = |t: &[stringdriverd::sim::TraceEntry]| common::count_of(t, Op::Positions);
    assert!(sim.wait_for_trace(WAIT, |t| polls(t) == 31));
    let r = exchange(&mut f, b";");
    assert_eq!(r.len(), 32, "replies: {}", r.len());
    assert_eq!(polls(&sim.trace()), 32, "and no more were executed");
    assert!(r.iter().all(|p| p[1] == 100));
    let lost: usize = sim
        .trace()
        .iter()
        .map(|e| {
            if let TraceEvent::RxOverflow { lost } = e.event {
                lost
            } else {
                0
            }
        })
        .sum();
    assert_eq!(lost, 100 - 63);
}

#[test]
fn unterminated_noise_spoils_the_next_message_and_a_lone_semicolon_clears_it() {
    let (_dir, sim) = common::start_sim(common::sim_options(Firmware::V2));
    let mut f = open(&sim);
    assert!(exchange(&mut f, b"junk1;").is_empty(), "the poll was lost");
    assert_eq!(exchange(&mut f, b"junk;1;"), vec![vec![0; 13]]);
}

#[test]
fn targets_outside_the_limits_and_unknown_commands_get_no_reply() {
    let (_dir, sim) = common::start_sim(common::sim_options(Firmware::V2));
    let mut f = open(&sim);
    let mut bytes = req(Firmware::V2, Op::Amove, &[0, 2601]);
    bytes.extend_from_slice(b"99;");
    assert!(exchange(&mut f, &bytes).is_empty());
    let t = sim.trace();
    assert!(t.iter().any(|e| matches!(
        &e.event,
        TraceEvent::Message {
            outcome: Outcome::IgnoredOutOfLimits { target: 2601 },
            ..
        }
    )));
    assert!(t.iter().any(|e| matches!(
        &e.event,
        TraceEvent::Message {
            id: 99,
            outcome: Outcome::UnknownCommand,
            ..
        }
    )));
    assert_eq!(sim.counters(), vec![0; 13]);
}

#[test]
fn an_out_of_range_stepper_is_a_recorded_safety_violation_not_damage() {
    let (_dir, sim) = common::start_sim(common::sim_options(Firmware::V2));
    let mut f = open(&sim);
    f.write_all(&req(Firmware::V2, Op::SetStepper, &[13, 5]))
        .expect("write");
    f.write_all(&req(Firmware::V2, Op::SetMax, &[2, 5]))
        .expect("write");
    assert!(sim.wait_for_trace(WAIT, |t| t
        .iter()
        .filter(|e| matches!(
            &e.event,
            TraceEvent::Message {
                outcome: Outcome::SafetyViolation(_),
                ..
            }
        ))
        .count()
        == 2));
    let v = sim.violations();
    assert_eq!(v.len(), 2);
    assert!(v[0].detail.contains("stepper 13"), "{}", v[0].detail);
    assert!(v[1].detail.contains("axis 2"), "{}", v[1].detail);
    assert_eq!(sim.counters(), vec![0; 13]);
}

#[test]
fn reset_all_zeroes_every_counter_and_reopening_resets_the_board() {
    let (_dir, sim) = common::start_sim(common::sim_options(Firmware::V2));
    let mut f = open(&sim);
    let mut bytes = req(Firmware::V2, Op::SetStepper, &[4, 9]);
    bytes.extend(req(Firmware::V2, Op::SetStepper, &[7, -9]));
    bytes.extend_from_slice(b"1;");
    let r = exchange(&mut f, &bytes);
    assert_eq!((r[0][4], r[0][7]), (9, -9));
    let mut bytes = req(Firmware::V2, Op::ResetAll, &[]);
    bytes.extend_from_slice(b"1;");
    assert_eq!(exchange(&mut f, &bytes), vec![vec![0; 13]]);

    exchange(&mut f, &req(Firmware::V2, Op::SetStepper, &[4, 9]));
    assert_eq!(sim.counters()[4], 9);
    // Close and reopen at once: the board resets even though it never saw
    // the port closed.
    drop(f);
    let mut f = open(&sim);
    assert_eq!(count(&sim, &TraceEvent::Opened), 2, "the reopen was seen");
    assert_eq!(
        exchange(&mut f, b"1;"),
        vec![vec![0; 13]],
        "opening the port reset the board"
    );
}

#[test]
fn the_positions_reply_is_paced_per_stepper() {
    // At real speed: 13 steppers at about 2 ms each.
    let mut opts = common::sim_options(Firmware::V2);
    opts.speed_scale = 1.0;
    opts.reset_window = Duration::from_millis(100);
    let (_dir, sim) = common::start_sim(opts);
    let mut f = open(&sim);
    let t0 = Instant::now();
    // Read it raw, piece by piece, to see the pacing.
    f.write_all(b"1;").expect("write");
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    let mut reads = 0;
    while !got.ends_with(b";") && t0.elapsed() < WAIT {
        if let Ok(n) = f.read(&mut buf) {
            if n > 0 {
                got.extend_from_slice(&buf[..n]);
                reads += 1;
            }
        }
        std::thread::sleep(Duration::from_micros(500));
    }
    assert_eq!(got.len(), 67);
    assert!(reads > 1, "the reply arrives in pieces");
    // Not a timing assertion on our code: the simulator must hold the reply
    // back as the firmware does, or hosts tested against it would be too eager.
    assert!(
        t0.elapsed() >= Duration::from_millis(24),
        "{:?}",
        t0.elapsed()
    );
}

#[test]
fn an_unplug_hangs_the_host_up_even_after_the_simulating_process_started_a_child() {
    let (_dir, sim) = common::start_sim(common::sim_options(Firmware::V2));
    let mut port = open_raw(&sim);
    // A child started after the simulator (as a test starts the daemon) must
    // not inherit the pty's master: it would keep the device alive.
    let mut child = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .expect("sleep starts");
    sim.inject(stringdriverd::sim::Fault::Vanish);
    let deadline = Instant::now() + WAIT;
    let hung_up = loop {
        let mut buf = [0u8; 64];
        match port.read(&mut buf) {
            // EIO (or end of file) once the master is gone.
            Ok(0) => break true,
            Err(e) if e.kind() != std::io::ErrorKind::WouldBlock => break true,
            _ => {}
        }
        if Instant::now() > deadline {
            break false;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let _ = child.kill();
    let _ = child.wait();
    assert!(hung_up, "the host never saw the unplug");
}

/// Opens `path` in a forked child, with the rights of an ordinary user (a
/// root test drops to nobody: root may open an exclusive tty anyway, so the
/// check would prove nothing), and returns the child's errno (0: opened).
fn errno_of_open_as_a_user(path: &std::ffi::CStr) -> i32 {
    use nix::sys::wait::{waitpid, WaitStatus};
    use nix::unistd::{fork, ForkResult};
    let root = nix::unistd::geteuid().is_root();
    // SAFETY: the child makes raw system calls only (no allocation, no
    // locks) and ends with _exit.
    match unsafe { fork() }.expect("fork") {
        ForkResult::Child => unsafe {
            if root {
                let nobody = 65534;
                if nix::libc::syscall(nix::libc::SYS_setgroups, 0, std::ptr::null::<u32>()) != 0
                    || nix::libc::syscall(nix::libc::SYS_setresgid, nobody, nobody, nobody) != 0
                    || nix::libc::syscall(nix::libc::SYS_setresuid, nobody, nobody, nobody) != 0
                {
                    nix::libc::_exit(200);
                }
            }
            let fd = nix::libc::open(
                path.as_ptr(),
                nix::libc::O_RDWR | nix::libc::O_NOCTTY | nix::libc::O_NONBLOCK,
            );
            let errno = if fd < 0 {
                *nix::libc::__errno_location()
            } else {
                0
            };
            nix::libc::_exit(errno.min(199));
        },
        ForkResult::Parent { child } => match waitpid(child, None).expect("waitpid") {
            WaitStatus::Exited(_, 200) => panic!("the child could not drop to nobody"),
            WaitStatus::Exited(_, code) => code,
            other => panic!("the opening child ended with {other:?}"),
        },
    }
}

/// A host killed with SIGKILL while it holds the port in exclusive mode
/// (TIOCEXCL, as the serial library sets it) never clears it; a real tty
/// forgets it on its last close, so the next open must succeed, not fail
/// with EBUSY (the daemon restarted by systemd after a kill -9).
#[test]
fn a_port_held_exclusively_by_a_killed_host_can_be_opened_again() {
    use nix::sys::signal::{kill, Signal};
    use nix::sys::wait::{waitpid, WaitStatus};
    use nix::unistd::{fork, ForkResult};
    use std::os::unix::fs::PermissionsExt;

    let (_dir, sim) = common::start_sim(common::sim_options(Firmware::V2));
    let device = sim.device().expect("the device");
    // The user who opens it later must be allowed to by the file's mode.
    std::fs::set_permissions(&device, std::fs::Permissions::from_mode(0o666)).expect("chmod");
    let path = std::ffi::CString::new(sim.link().as_os_str().as_encoded_bytes()).expect("path");
    let (ready_r, ready_w) = nix::unistd::pipe().expect("pipe");
    // SAFETY: the child makes raw system calls only and never returns.
    let host = match unsafe { fork() }.expect("fork") {
        ForkResult::Child => unsafe {
            use std::os::fd::AsRawFd;
            let fd = nix::libc::open(
                path.as_ptr(),
                nix::libc::O_RDWR | nix::libc::O_NOCTTY | nix::libc::O_NONBLOCK,
            );
            if fd < 0 || nix::libc::ioctl(fd, nix::libc::TIOCEXCL) != 0 {
                nix::libc::_exit(1);
            }
            let _ = nix::libc::write(ready_w.as_raw_fd(), b"x".as_ptr().cast(), 1);
            loop {
                nix::libc::pause();
            }
        },
        ForkResult::Parent { child } => child,
    };
    drop(ready_w);
    let mut ready = [0u8; 1];
    let n = nix::unistd::read(&ready_r, &mut ready).expect("read the child's pipe");
    assert_eq!(n, 1, "the host child could not open the port exclusively");
    assert_eq!(
        errno_of_open_as_a_user(&path),
        nix::libc::EBUSY,
        "while the host lives the port is exclusive"
    );
    kill(host, Signal::SIGKILL).expect("kill -9");
    assert!(matches!(
        waitpid(host, None).expect("waitpid"),
        WaitStatus::Signaled(_, Signal::SIGKILL, _)
    ));
    // The simulator sees the close a moment later (a real tty at once):
    // retried until a deadline; without the fix it stays EBUSY.
    let deadline = Instant::now() + WAIT;
    let last = loop {
        let errno = errno_of_open_as_a_user(&path);
        if errno == 0 || Instant::now() > deadline {
            break errno;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    assert_eq!(last, 0, "reopening after the kill failed with errno {last}");
    // The board then works for the new host.
    let mut f = open(&sim);
    assert_eq!(exchange(&mut f, b"1;"), vec![vec![0; 13]]);
}
