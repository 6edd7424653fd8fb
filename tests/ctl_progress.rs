//! Progress you can follow: `stringdriverctl op run --wait` prints what the
//! operation does, naming its steppers (not snapshot counters or the boards'
//! links as they were), `events` prints readable lines with snapshots off by
//! default, and a manual move that waited for its rest says so.

mod common;

use common::control::{ctl, Client};
use common::machine::{started, MachineOptions, WAIT};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};

const HOST: &str = "sd-ctlprog";

fn text(o: &std::process::Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn z_calibrate_progress_names_each_stepper_and_says_how_far_its_counter_was_off() {
    let mut o = MachineOptions::new(HOST);
    o.sensors = true;
    o.demo_physics = true;
    let (rig, run) = started(o).await;
    let socket = rig.socket();
    let out = ctl(&socket, &["op", "run", "z_calibrate", "--wait"]).await;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stdout.starts_with("z_calibrate completed: "), "{stdout}");

    let layout = &run.parts.machine.layout;
    let zs: Vec<usize> = layout.z().indices().collect();
    let of = zs.len();
    for (done, &z) in zs.iter().enumerate() {
        let role = layout.role(z);
        let label = format!(
            "z_calibrate: stepper {z} ({}, {role})",
            role.name().expect("a Z stepper has a name")
        );
        // Its descent starts where set_pose put it, counted from its max.
        assert!(
            stderr
                .lines()
                .any(|l| l.starts_with(&format!("  ... {label} descending, at "))
                    && l.ends_with(&format!("; {done} of {of} done"))),
            "{label} descending: {stderr}"
        );
        let touched = stderr
            .lines()
            .find(|l| l.starts_with(&format!("  ... {label} touched its string at ")))
            .unwrap_or_else(|| panic!("{label} touched: {stderr}"));
        assert!(
            touched.contains(": counter was ")
                && touched.ends_with(&format!("; {} of {of} done", done + 1)),
            "{touched}"
        );
        // The outcome says it in the same words, with the stepper's name.
        assert!(
            stdout.contains(&format!(
                "{z} ({}): counter was",
                role.name().expect("name")
            )),
            "{stdout}"
        );
    }
    // The nested bump_check reports in words too, and nothing else is noise:
    // no snapshot counters, no "board connected" from before the wait.
    assert!(
        stderr.contains("  ... operation z_calibrate started"),
        "{stderr}"
    );
    assert!(
        stderr.contains("  ... operation z_calibrate ended: completed"),
        "{stderr}"
    );
    assert!(!stderr.contains("snapshots:"), "{stderr}");
    assert!(!stderr.contains("board "), "{stderr}");
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_readable_lines_with_snapshots_off_unless_asked_for() {
    let mut o = MachineOptions::new(HOST);
    o.sensors = true;
    o.demo_physics = true;
    let (rig, run) = started(o).await;
    let socket = rig.socket();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_stringdriverctl"))
        .arg("--socket")
        .arg(&socket)
        .arg("events")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("stringdriverctl events runs");
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for l in BufReader::new(stdout).lines() {
            let Ok(l) = l else { break };
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    let rx = std::sync::Arc::new(std::sync::Mutex::new(rx));
    let next = |rx: std::sync::Arc<std::sync::Mutex<std::sync::mpsc::Receiver<String>>>| async move {
        tokio::task::spawn_blocking(move || {
            rx.lock()
                .expect("receiver")
                .recv_timeout(WAIT)
                .expect("a line in time")
        })
        .await
        .expect("join")
    };
    // The first line (a board's link as it is now) says the subscription
    // is up: an operation started now is seen from its start.
    let mut lines = vec![next(rx.clone()).await];
    let mut c = Client::connect(&socket).await;
    let r = c
        .ok(json!({"cmd": "op_run", "kind": "bump_check", "wait": true}))
        .await;
    assert_eq!(r["status"], "completed", "{r}");
    // Bounded: every line comes within WAIT, and the run ends with `ended`.
    while !lines
        .last()
        .is_some_and(|l| l.starts_with("operation bump_check ended"))
    {
        lines.push(next(rx.clone()).await);
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("board ") && l.ends_with(": connected (now)")),
        "{lines:?}"
    );
    assert!(
        !lines.iter().any(|l| l.starts_with("snapshots:")),
        "{lines:?}"
    );
    assert!(!lines.iter().any(|l| l.starts_with('{')), "{lines:?}");
    assert_eq!(
        lines.last().map(String::as_str),
        Some(
            format!(
                "operation bump_check ended: completed {}",
                r["message"].as_str().expect("message")
            )
            .as_str()
        ),
    );
    run.stop().await;
}

/// Issue 16 item 5: a manual move that must wait for its rest says so when
/// the wait starts, before anything moves, not after the move.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manual_move_that_must_wait_for_its_rest_says_so_before_waiting() {
    let (rig, run) = started(MachineOptions::new(HOST)).await;
    let socket = rig.socket();
    // Long enough that the second stringdriverctl starts within it even on
    // a loaded machine.
    let set = ctl(&socket, &["set", "x_rest", "8"]).await;
    assert!(set.status.success(), "{set:?}");
    let first = ctl(&socket, &["--json", "move", "x", "1"]).await;
    assert!(first.status.success(), "{first:?}");
    let mut second = std::process::Command::new(env!("CARGO_BIN_EXE_stringdriverctl"))
        .arg("--socket")
        .arg(&socket)
        .args(["move", "x", "-1"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("stringdriverctl runs");
    let stderr = second.stderr.take().expect("stderr");
    let note = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        BufReader::new(stderr).read_line(&mut line).map(|_| line)
    })
    .await
    .expect("join")
    .expect("reads stderr");
    // Said before the move: the counter still stands where the first left it.
    let st = common::control::status(&socket).await.expect("status");
    assert_eq!(st["steppers"][0]["position"], json!(101), "{note}");
    let waiting: f64 = note
        .trim()
        .strip_prefix("waiting ")
        .and_then(|r| r.strip_suffix(" s (x_rest) before moving stepper 0 (X)"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("a rest note first: {note}"));
    assert!(waiting > 0.0 && waiting <= 8.0, "{note}");
    let out = tokio::task::spawn_blocking(move || second.wait_with_output())
        .await
        .expect("join")
        .expect("exits");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.starts_with("stepper 0 at 100 "), "{stdout}");
    // A move with no rest due says nothing of one, and no interim line
    // reaches a --json reader.
    let o = ctl(&socket, &["--json", "move", "tuner3", "1"]).await;
    assert!(o.stderr.is_empty(), "{o:?}");
    let r: Value = serde_json::from_slice(&o.stdout).expect("JSON");
    assert_eq!(r["rest"], Value::Null, "{r}");
    run.stop().await;
}
