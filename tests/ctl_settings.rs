//! Settings that say where they come from: `stringdriverctl get` marks a
//! run-time override with the file's value beside it, and `unset` returns to
//! the file's value, now and after a restart (the override leaves state.json).

mod common;

use common::control::ctl;
use common::machine::{started, InProcess, MachineOptions};
use serde_json::{json, Value};

const HOST: &str = "sd-ctlset";

fn text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

async fn get_json(socket: &std::path::Path, name: &str) -> Value {
    let o = ctl(socket, &["--json", "get", name]).await;
    assert!(o.status.success(), "{}", text(&o));
    serde_json::from_slice(&o.stdout).expect("JSON reply")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_marks_an_override_and_unset_returns_to_the_files_value_across_a_restart() {
    let mut o = MachineOptions::new(HOST);
    o.z_rest = 0.05;
    let (rig, run) = started(o).await;
    let socket = rig.socket();

    // From the file: no mark.
    let plain = ctl(&socket, &["get", "z_rest"]).await;
    assert_eq!(
        String::from_utf8_lossy(&plain.stdout).trim(),
        "z_rest = 0.05"
    );
    assert_eq!(get_json(&socket, "z_rest").await["source"], "file");

    let set = ctl(&socket, &["set", "z_rest", "0.3"]).await;
    assert!(set.status.success(), "{}", text(&set));
    let marked = ctl(&socket, &["get", "z_rest"]).await;
    assert_eq!(
        String::from_utf8_lossy(&marked.stdout).trim(),
        "z_rest = 0.3 (run-time; file: 0.05)"
    );
    let all = ctl(&socket, &["get"]).await;
    let all = String::from_utf8_lossy(&all.stdout).into_owned();
    assert!(
        all.lines()
            .any(|l| l == "z_rest = 0.3 (run-time; file: 0.05)"),
        "{all}"
    );
    assert!(all.lines().any(|l| l == "x_rest = 0.05"), "{all}");

    // The override survives a restart and is still marked.
    run.stop().await;
    let run = InProcess::start(&rig).await;
    let r = get_json(&socket, "z_rest").await;
    assert_eq!(
        (&r["value"], &r["source"], &r["file"]),
        (&json!(0.3), &json!("run-time"), &json!(0.05)),
        "{r}"
    );

    let unset = ctl(&socket, &["unset", "z_rest"]).await;
    assert!(unset.status.success(), "{}", text(&unset));
    assert_eq!(
        String::from_utf8_lossy(&unset.stdout).trim(),
        "z_rest = 0.05 (file; run-time override dropped)"
    );
    assert_eq!(run.parts.settings.borrow().operations.z_rest, 0.05);
    let state: Value = serde_json::from_slice(
        &std::fs::read(rig.dir.path().join("state.json")).expect("state.json"),
    )
    .expect("state.json is JSON");
    assert!(state["overrides"].get("z_rest").is_none(), "{state}");

    // And after another restart the file's value still holds.
    run.stop().await;
    let run = InProcess::start(&rig).await;
    let r = get_json(&socket, "z_rest").await;
    assert_eq!(
        (&r["value"], &r["source"]),
        (&json!(0.05), &json!("file")),
        "{r}"
    );

    // A wrong name: the client refuses it before sending, with a
    // suggestion; the daemon refuses it too, naming the known ones.
    let bad = ctl(&socket, &["unset", "z_rets"]).await;
    assert_eq!(bad.status.code(), Some(2));
    assert!(text(&bad).contains("'z_rest'"), "{}", text(&bad));
    let e = common::control::request(
        &socket,
        serde_json::json!({"v": 1, "cmd": "unset", "name": "z_rets"}),
        common::machine::WAIT,
    )
    .await
    .expect_err("refused");
    assert!(e.contains("unknown setting `z_rets`"), "{e}");
    run.stop().await;
}
