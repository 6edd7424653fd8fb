//! The GUI compatibility sockets end to end: the daemon in-process on
//! simulated boards and feed (records stay in the spool), GUI-style clients
//! on the real Unix sockets.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::machine::{set_pose, InProcess, MachineOptions, SimMachine, WAIT};
use serde_json::{json, Value};
use stringdriverd::compat::socket_path;
use stringdriverd::motion::Origin;
use stringdriverd::protocol::Op;
use stringdriverd::sim::{SimHandle, TraceEvent};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

const HOST: &str = "sd-compat";
/// Long enough to tell apart from the simulated move times.
const Z_REST: f64 = 0.3;

/// The simulated machine with the compatibility sockets on, records kept in
/// the spool.
fn machine() -> SimMachine {
    let mut o = MachineOptions::new(HOST);
    o.z_rest = Z_REST;
    o.compat = true;
    SimMachine::start(o)
}

/// The compat socket of board `name`.
fn compat_socket(rig: &SimMachine, name: &str) -> PathBuf {
    socket_path(&rig.dir.path().join("gui"), &rig.dir.path().join(name))
}

/// The daemon started, once both compat sockets answer.
async fn start(rig: &SimMachine) -> InProcess {
    let run = InProcess::start(rig).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    for name in ["carriage", "tuner"] {
        while UnixStream::connect(compat_socket(rig, name)).await.is_err() {
            assert!(tokio::time::Instant::now() < deadline, "{name} socket up");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    run
}

/// One GUI-style exchange: the request (sent as is), then the one reply.
async fn ask(socket: &Path, request: &str) -> Value {
    let mut s = UnixStream::connect(socket).await.expect("connect");
    s.write_all(request.as_bytes()).await.expect("write");
    let mut text = String::new();
    tokio::time::timeout(WAIT, s.read_to_string(&mut text))
        .await
        .expect("a reply in time")
        .expect("read");
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("{text:?}: {e}"))
}

async fn ask_json(socket: &Path, request: Value) -> Value {
    ask(socket, &format!("{request}\n")).await
}

fn error_text(reply: &Value) -> String {
    reply["Error"]
        .as_str()
        .unwrap_or_else(|| panic!("not an error: {reply}"))
        .to_string()
}

/// When each move of local stepper `local` reached `sim`.
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gui_requests_move_reset_and_are_refused_like_any_other() {
    let rig = machine();
    // A socket file left by a crash is replaced.
    std::fs::create_dir_all(rig.dir.path().join("gui")).expect("gui dir");
    drop(std::os::unix::net::UnixListener::bind(compat_socket(&rig, "carriage")).expect("stale"));
    assert!(compat_socket(&rig, "carriage").exists());

    let run = start(&rig).await;
    set_pose(&run.parts).await;
    let carriage = compat_socket(&rig, "carriage");
    let tuner = compat_socket(&rig, "tuner");
    assert_eq!(
        carriage.file_name().and_then(|n| n.to_str()),
        Some(
            format!(
                "arduino_connection_{}.sock",
                rig.dir
                    .path()
                    .join("carriage")
                    .display()
                    .to_string()
                    .replace('/', "_")
            )
            .as_str()
        )
    );
    for s in [&carriage, &tuner] {
        let mode = std::fs::metadata(s).expect("socket").permissions().mode();
        assert_eq!(mode & 0o777, 0o660, "{}", s.display());
    }

    // RelMove and AbsMove move the board; indices are the board's own.
    let r = ask_json(&carriage, json!({"RelMove": {"stepper": 3, "delta": 5}})).await;
    assert_eq!(r, json!("Ok"));
    assert_eq!(rig.sims[0].counters()[3], 23 + 5);
    let r = ask_json(
        &carriage,
        json!({"AbsMove": {"stepper": 2, "position": 30}}),
    )
    .await;
    assert_eq!(r, json!("Ok"));
    assert_eq!(rig.sims[0].counters()[2], 30);
    let r = ask_json(&tuner, json!({"RelMove": {"stepper": 1, "delta": 4}})).await;
    assert_eq!(r, json!("Ok"));
    assert_eq!(rig.sims[1].counters()[1], 1014 + 4);
    assert_eq!(
        run.parts.boards[1]
            .status()
            .positions
            .and_then(|p| p.get(1).copied()),
        Some(1018)
    );

    // Reset sets the counter and nothing moves.
    let physical = rig.sims[0].physical();
    let moves = rig.sims[0].received(Op::Amove).len() + rig.sims[0].received(Op::Rmove).len();
    let r = ask_json(&carriage, json!({"Reset": {"stepper": 4, "position": 77}})).await;
    assert_eq!(r, json!("Ok"));
    assert_eq!(rig.sims[0].counters()[4], 77);
    assert_eq!(rig.sims[0].physical(), physical);
    assert_eq!(
        rig.sims[0].received(Op::Amove).len() + rig.sims[0].received(Op::Rmove).len(),
        moves
    );

    // Enables apply: stepper 5 of the carriage board is global stepper 5.
    run.parts.settings.send_modify(|s| s.enabled[5] = false);
    let r = ask_json(&carriage, json!({"RelMove": {"stepper": 5, "delta": 1}})).await;
    assert_eq!(r, json!({"Error": "refused: stepper 5 is disabled"}));
    assert_eq!(rig.sims[0].counters()[5], 25);

    // Out of range names the board and its stepper count.
    let e = error_text(&ask_json(&tuner, json!({"AbsMove": {"stepper": 6, "position": 0}})).await);
    assert!(e.contains("tuner") && e.contains("6 steppers"), "{e}");
    // Limits apply.
    let e = error_text(
        &ask_json(
            &carriage,
            json!({"AbsMove": {"stepper": 3, "position": 999_999}}),
        )
        .await,
    );
    assert!(e.contains("outside its limits"), "{e}");

    // Malformed, unknown and oversized requests get their error.
    let e = error_text(&ask(&carriage, "{not json\n").await);
    assert!(e.starts_with("malformed request"), "{e}");
    let e = error_text(&ask_json(&carriage, json!({"Spin": {"stepper": 1}})).await);
    assert!(e.contains("malformed request") && e.contains("Spin"), "{e}");
    let big = format!(
        "{{\"RelMove\":{{\"stepper\":1,\"delta\":1{}}}}}\n",
        " ".repeat(5000)
    );
    let e = error_text(&ask(&carriage, &big).await);
    assert!(e.contains("too long") && e.contains("4096"), "{e}");
    // A request without a newline, the writing side left open, is answered
    // once it is complete JSON.
    let r = ask(&carriage, r#"{"RelMove":{"stepper":3,"delta":-5}}"#).await;
    assert_eq!(r, json!("Ok"));
    assert_eq!(rig.sims[0].counters()[3], 23);

    // The socket files go with the daemon.
    run.stop().await;
    assert!(!carriage.exists() && !tuner.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn z_rest_holds_across_the_compat_socket_and_the_gate() {
    let rig = machine();
    let run = start(&rig).await;
    set_pose(&run.parts).await;
    let carriage = compat_socket(&rig, "carriage");
    // Z stepper 1 (global 1 = local 1): two quick GUI moves and one from the
    // control side, all at once.
    let gate = run.parts.gate.clone();
    let (a, b, c) = tokio::join!(
        ask_json(&carriage, json!({"RelMove": {"stepper": 1, "delta": 2}})),
        ask_json(&carriage, json!({"RelMove": {"stepper": 1, "delta": 3}})),
        gate.move_rel(&Origin::Manual, 1, -1),
    );
    assert_eq!(a, json!("Ok"));
    assert_eq!(b, json!("Ok"));
    c.expect("gate move");
    assert_eq!(rig.sims[0].counters()[1], 21 + 2 + 3 - 1);

    let times = move_times(&rig.sims[0], 1);
    assert_eq!(times.len(), 3, "{times:?}");
    let rest = Duration::from_secs_f64(Z_REST);
    for pair in times.windows(2) {
        let gap = pair[1].duration_since(pair[0]);
        assert!(gap >= rest, "moves {gap:?} apart, z_rest is {rest:?}");
    }
    run.stop().await;
}
