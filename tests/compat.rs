//! The stepper GUI's socket end to end: the daemon in-process on the
//! simulated stringdriver-2 (`tests/common/machine.rs`), a client written
//! from `gui-ipc.md` alone (`tests/common/gui.rs`) on the real Unix socket.

mod common;

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::time::Duration;

use common::control::{status, Client};
use common::gui::{positions, query, Mover};
use common::machine::{pose, set_pose, InProcess, MachineOptions, SimMachine, WAIT};
use common::pg::TestDb;
use serde_json::{json, Value};
use stringdriverd::compat::{lines, CompatStatus, MAX_CLIENTS};
use stringdriverd::daemon::Parts;
use stringdriverd::protocol::Op;
use stringdriverd::sim::{SimHandle, TraceEvent};
use tokio::net::UnixStream;

const HOST: &str = "sd-compat";

fn options(z_rest: f64) -> MachineOptions {
    let mut o = MachineOptions::new(HOST);
    o.z_rest = z_rest;
    o.compat = true;
    o
}

/// Waits until the socket's status satisfies `cond`; returns it.
async fn wait_compat(parts: &Parts, cond: impl Fn(&CompatStatus) -> bool) -> CompatStatus {
    let mut rx = parts.compat.subscribe();
    let r = tokio::time::timeout(WAIT, rx.wait_for(|s| cond(s))).await;
    match r {
        Ok(Ok(s)) => s.clone(),
        _ => panic!("status.compat never got there: {:?}", parts.compat.borrow()),
    }
}

/// The daemon started, once the socket is bound.
async fn start(rig: &SimMachine) -> InProcess {
    let run = InProcess::start(rig).await;
    wait_compat(&run.parts, |s| s.listening).await;
    run
}

/// `status.compat` as the control socket reports it.
async fn compat_status(rig: &SimMachine) -> Value {
    status(&rig.socket()).await.expect("status")["compat"].clone()
}

/// When each move of carriage stepper `local` reached `sim`.
fn move_times(sim: &SimHandle, local: i32) -> Vec<std::time::Instant> {
    sim.trace()
        .into_iter()
        .filter_map(|e| match &e.event {
            TraceEvent::Message {
                op: Some(Op::Amove | Op::Rmove),
                args,
                ..
            } if args.first() == Some(&local) => Some(e.at),
            _ => None,
        })
        .collect()
}

fn moves_received(sim: &SimHandle) -> usize {
    sim.received(Op::Amove).len() + sim.received(Op::Rmove).len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gui_client_moves_and_resets_without_replies_and_reads_positions_back() {
    let db = TestDb::create().await;
    let mut o = options(0.05);
    o.db_url = Some(db.url());
    let rig = SimMachine::start(o);
    let run = start(&rig).await;
    set_pose(&run.parts).await;
    let socket = rig.gui_socket();

    // Named after the legacy port, mode 0660, the carriage board only.
    let meta = std::fs::symlink_metadata(&socket).expect("socket");
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    let served: Vec<_> = std::fs::read_dir(rig.dir.path().join("gui"))
        .expect("gui dir")
        .collect();
    assert_eq!(served.len(), 1, "{served:?}");

    let physical = rig.sims[0].physical();
    let set_before = rig.sims[0].received(Op::SetStepper).len();
    let mut gui = Mover::connect(&socket).await;
    for line in [
        "rel_move 3 5",
        "abs_move 2 30",
        "",
        "reset 4 77",
        "rel_move 1 -2",
        "abs_move 0 250",
        "rel_move 3 -1",
    ] {
        gui.send(line).await;
    }
    let s = wait_compat(&run.parts, |s| s.done >= 6).await;
    assert_eq!((s.requests, s.refused, s.failed, s.unknown), (6, 0, 0, 0));

    let mut want = pose()[..13].to_vec();
    want[3] += 5 - 1;
    want[2] = 30;
    want[4] = 77;
    want[1] -= 2;
    want[0] = 250;
    let got = positions(&socket).await;
    assert_eq!(got, want);
    assert_eq!(got, rig.sims[0].counters());
    // The reset set the counter and moved nothing; it was set_stepper,
    // never the firmware's reset-all.
    assert_eq!(rig.sims[0].physical()[4], physical[4]);
    assert_eq!(rig.sims[0].received(Op::SetStepper).len(), set_before + 1);
    assert!(rig.sims[0].received(Op::ResetAll).is_empty());
    assert_eq!(moves_received(&rig.sims[0]), 5);

    // get_x_step is the x_step setting, live.
    assert_eq!(query(&socket, "get_x_step").await.as_deref(), Some("10"));
    let mut ctl = Client::connect(&rig.socket()).await;
    ctl.ok(json!({"cmd": "set", "name": "x_step", "value": 25}))
        .await;
    assert_eq!(query(&socket, "get_x_step").await.as_deref(), Some("25"));
    // A get_* on the long-lived connection is answered there too, and its
    // answer is the first line there: the moves and the reset had none.
    gui.send("get_x_step").await;
    assert_eq!(gui.read_line().await.as_deref(), Some("25"));
    assert_eq!(run.parts.compat.borrow().answered, 4);

    // The database records the same counters the socket reported.
    let deadline = tokio::time::Instant::now() + WAIT;
    let want_row: Vec<i32> = want
        .iter()
        .copied()
        .chain(pose()[13..].iter().copied())
        .collect();
    loop {
        let rows = db
            .client()
            .await
            .query(
                "SELECT stepper_positions FROM machine_state WHERE host = $1 ORDER BY recorded_at DESC LIMIT 1",
                &[&HOST],
            )
            .await
            .expect("query");
        if rows.first().map(|r| r.get::<_, Vec<i32>>(0)) == Some(want_row.clone()) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no row with {want_row:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The control socket's status shows the same counts.
    let c = compat_status(&rig).await;
    assert_eq!(c["enabled"], json!(true));
    assert_eq!(c["board"], json!("carriage"));
    assert_eq!(c["socket"], json!(socket.display().to_string()));
    assert_eq!(c["done"], json!(6));
    // The socket file goes with the daemon.
    run.stop().await;
    assert!(!socket.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_and_unknown_lines_get_no_reply_are_counted_and_the_connection_stays_usable() {
    let rig = SimMachine::start(options(0.05));
    let run = start(&rig).await;
    let socket = rig.gui_socket();

    // Counters untrusted (nothing set since the boards reset): get_positions
    // invents nothing; the connection closes without a line, the client
    // does not hang.
    run.parts.boards[0]
        .wait_for(WAIT, |s| s.positions.is_some())
        .await
        .expect("carriage read");
    assert_eq!(query(&socket, "get_positions").await, None);
    let s = wait_compat(&run.parts, |s| s.refused >= 1).await;
    let why = s.last_refusal.expect("last refusal").error;
    assert!(why.contains("untrusted"), "{why}");
    // On a connection that goes on writing, the lines after it are still
    // handled; only its replies ended.
    let mut early = Mover::connect(&socket).await;
    early.send("get_positions").await;
    early.send("get_x_step").await;
    early.send("reset 6 33").await;
    assert_eq!(early.read_line().await, None);
    let s = wait_compat(&run.parts, |s| s.done >= 1).await;
    assert_eq!((s.refused, s.answered), (3, 0));
    assert_eq!(rig.sims[0].counters()[6], 33);

    set_pose(&run.parts).await;
    let mut ctl = Client::connect(&rig.socket()).await;
    ctl.ok(json!({"cmd": "disable", "stepper": 5})).await;
    let mut gui = Mover::connect(&socket).await;
    // Refused by the gate: disabled, out of limits, no such stepper.
    gui.send("rel_move 5 1").await;
    gui.send("abs_move 3 999999").await;
    gui.send("rel_move 13 1").await;
    // Not requests: unknown words, the old JSON protocol, wrong arity,
    // garbage numbers, bytes that are not UTF-8; empty lines are skipped.
    for line in [
        "spin 1",
        r#"{"RelMove":{"stepper":3,"delta":-10}}"#,
        r#"{"AbsMove": {"stepper": 2, "position": 30}}"#,
        r#"{"Reset":{"stepper":4,"position":0}}"#,
        "rel_move 1",
        "abs_move one 2",
        "",
        "   ",
    ] {
        gui.send(line).await;
    }
    gui.send_bytes(b"rel_move \xff 1\n").await;
    // A line far beyond the limit: skipped whole, nothing of it acted on.
    let long = format!("rel_move 3 1{}\n", "0".repeat(lines::MAX_LINE * 4));
    gui.send_bytes(long.as_bytes()).await;
    // And the connection still moves.
    gui.send("rel_move 3 2").await;
    let s = wait_compat(&run.parts, |s| s.done >= 2).await;
    assert_eq!(s.refused, 3 + 3);
    assert_eq!(s.unknown, 7);
    assert_eq!(s.long_lines, 1);
    assert_eq!(s.failed, 0);
    assert_eq!(rig.sims[0].counters()[3], pose()[3] + 2);
    assert_eq!(rig.sims[0].counters()[5], pose()[5]);
    assert_eq!(rig.sims[0].counters()[2], pose()[2]);
    assert_eq!(moves_received(&rig.sims[0]), 1);
    // Nothing came back for any of those lines: the first line on the
    // connection is the answer to this get_x_step.
    gui.send("get_x_step").await;
    assert_eq!(gui.read_line().await.as_deref(), Some("10"));

    let c = compat_status(&rig).await;
    assert_eq!(c["refused"], json!(6));
    assert_eq!(c["unknown"], json!(7));
    let last = c["last_refusal"]["error"].as_str().unwrap_or_default();
    assert!(
        last.contains("stepper 13 does not exist on board carriage (it has 13 steppers)"),
        "{c}"
    );
    assert!(
        c["last_unknown"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("not UTF-8")),
        "{c}"
    );
    // The order of refusals: the first was the disabled stepper.
    gui.send("rel_move 5 -1").await;
    let s = wait_compat(&run.parts, |s| s.refused >= 7).await;
    let why = s.last_refusal.expect("refusal").error;
    assert_eq!(why, "refused: stepper 5 is disabled");
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_socket_file_is_bound_again() {
    let rig = SimMachine::start(options(0.05));
    let run = start(&rig).await;
    set_pose(&run.parts).await;
    let socket = rig.gui_socket();
    // Where the tools look, a link to the socket as the package's tmpfiles.d
    // entry makes it (/tmp/stepper_gui__dev_ttyACM0.sock).
    let tmp = rig.dir.path().join("tmp");
    std::fs::create_dir_all(&tmp).expect("tmp");
    let link = tmp.join("stepper_gui__dev_ttyACM0.sock");
    std::os::unix::fs::symlink(&socket, &link).expect("link");
    let mut gui = Mover::connect(&link).await;

    // What the older tools' exit script does.
    std::fs::remove_file(&socket).expect("delete the socket file");
    let s = wait_compat(&run.parts, |s| s.rebinds >= 1 && s.listening).await;
    assert_eq!(s.rebinds, 1);
    let meta = std::fs::symlink_metadata(&socket).expect("bound again");
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    // New clients reach it, through the link too; the connection opened
    // before still moves.
    assert_eq!(query(&socket, "get_x_step").await.as_deref(), Some("10"));
    assert_eq!(query(&link, "get_x_step").await.as_deref(), Some("10"));
    gui.send("rel_move 3 1").await;
    wait_compat(&run.parts, |s| s.done >= 1).await;
    assert_eq!(positions(&link).await[3], pose()[3] + 1);

    // A file that is not a socket in its place is left alone and reported;
    // once it is gone the socket is bound again.
    std::fs::remove_file(&socket).expect("delete again");
    std::fs::write(&socket, b"not a socket").expect("a regular file");
    let s = wait_compat(&run.parts, |s| !s.listening).await;
    let why = s.not_listening.unwrap_or_default();
    assert!(why.contains("is not a socket (a regular file)"), "{why}");
    assert_eq!(std::fs::read(&socket).expect("untouched"), b"not a socket");
    std::fs::remove_file(&socket).expect("remove the file");
    let s = wait_compat(&run.parts, |s| s.listening).await;
    assert_eq!(s.rebinds, 2);
    assert_eq!(query(&socket, "get_x_step").await.as_deref(), Some("10"));
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moves_written_faster_than_the_rests_are_not_read_ahead_unboundedly() {
    // Z rests of 0.5 s: the gate lets a move of stepper 1 through twice a second.
    let z_rest = 0.5;
    let rig = SimMachine::start(options(z_rest));
    let run = start(&rig).await;
    set_pose(&run.parts).await;
    let socket = rig.gui_socket();
    let gui = Mover::connect(&socket).await;

    // The client writes without waiting until its writes would block.
    let pattern = "rel_move 1 1\nrel_move 1 -1\n".repeat(2048);
    let limit = 64 << 20;
    let mut written = 0usize;
    let mut blocked = false;
    while written < limit {
        let at = written % pattern.len();
        match gui.stream().try_write(&pattern.as_bytes()[at..]) {
            Ok(n) => written += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                blocked = true;
                break;
            }
            Err(e) => panic!("write: {e}"),
        }
    }
    assert!(
        blocked,
        "{written} bytes written and the daemon still reads"
    );
    // The daemon holds one buffer; the kernel holds about the socket's send
    // buffer (net.core.wmem_default; it admits one more segment, up to half
    // of it, past its limit): far below what an unbounded reader takes.
    let wmem: usize = std::fs::read_to_string("/proc/sys/net/core/wmem_default")
        .expect("/proc/sys/net/core/wmem_default")
        .trim()
        .parse()
        .expect("a number");
    let bound = 2 * wmem + lines::BUFFER;
    assert!(written <= bound, "{written} bytes accepted, bound {bound}");

    // The moves go in order at the gate's pace, each after its rest...
    let s = wait_compat(&run.parts, |s| s.done >= 3).await;
    assert!(s.requests <= s.done + 1, "{s:?}");
    let times = move_times(&rig.sims[0], 1);
    assert!(times.len() >= 3, "{times:?}");
    for pair in times.windows(2) {
        let gap = pair[1].duration_since(pair[0]);
        assert!(
            gap >= Duration::from_secs_f64(z_rest),
            "moves {gap:?} apart"
        );
    }
    // ...and the client stays blocked: nothing more was read meanwhile.
    let probe = [b'\n'; 1];
    assert_eq!(
        gui.stream().try_write(&probe).map_err(|e| e.kind()),
        Err(std::io::ErrorKind::WouldBlock)
    );
    assert!(rig.sims[0].counters()[1] == pose()[1] || rig.sims[0].counters()[1] == pose()[1] + 1);
    // Shutdown does not wait for the thousands of lines still queued.
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_limit_are_closed_at_once() {
    let rig = SimMachine::start(options(0.05));
    let run = start(&rig).await;
    let socket = rig.gui_socket();
    let mut open = Vec::new();
    for _ in 0..MAX_CLIENTS {
        open.push(UnixStream::connect(&socket).await.expect("connect"));
    }
    wait_compat(&run.parts, |s| s.clients == MAX_CLIENTS).await;
    // One more: closed at once, the client reads the end (it never hangs).
    assert_eq!(query(&socket, "get_x_step").await, None);
    let s = wait_compat(&run.parts, |s| s.connections_refused >= 1).await;
    assert_eq!(s.connections_refused, 1);
    // A slot freed is a slot usable.
    drop(open.pop());
    wait_compat(&run.parts, |s| s.clients < MAX_CLIENTS).await;
    assert_eq!(query(&socket, "get_x_step").await.as_deref(), Some("10"));
    run.stop().await;
}
