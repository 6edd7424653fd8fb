//! The operator console's HTTP side against the simulated machine: the
//! API reaches the daemon only through the control socket (and so the
//! motion gate), bad input is answered clearly and changes nothing, a
//! network listener needs the token, and the events arrive as SSE.

mod common;

use common::console::{ConsoleRig, Http, ServedConsole, TOKEN};
use common::control;
use common::machine::{self, MachineOptions};
use serde_json::{json, Value};

/// The stepper named `name` as the daemon reports it (asked on the
/// control socket, not through the console).
async fn stepper(socket: &std::path::Path, name: &str) -> Value {
    let st = control::request(socket, json!({"v":1,"cmd":"steppers"}), machine::WAIT)
        .await
        .expect("steppers");
    st["steppers"]
        .as_array()
        .and_then(|l| l.iter().find(|s| s["name"] == json!(name)))
        .unwrap_or_else(|| panic!("no stepper {name} in {st}"))
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meta_lists_every_kind_and_setting_from_the_library() {
    let rig = ConsoleRig::start(MachineOptions::new("console-meta")).await;
    let http = rig.http();
    let m = http.get("/api/meta").await;
    assert_eq!(m.status, 200, "{}", m.text());
    let m = m.json();
    let kinds: Vec<&str> = m["kinds"]
        .as_array()
        .expect("kinds")
        .iter()
        .filter_map(|k| k["name"].as_str())
        .collect();
    let all: Vec<&str> = stringdriverd::store::OperationType::ALL
        .iter()
        .map(|k| k.as_str())
        .collect();
    assert_eq!(kinds, all);
    let settings: Vec<&str> = m["settings"]
        .as_array()
        .expect("settings")
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect();
    assert_eq!(settings, stringdriverd::state::SETTINGS);
    assert_eq!(m["auth"]["required"], json!(false));
    let page = http.get("/").await;
    assert_eq!(page.status, 200);
    assert!(page.headers["content-type"]
        .to_str()
        .expect("ascii")
        .starts_with("text/html"));
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_through_the_console_moves_the_stepper_and_refusals_pass_verbatim() {
    let rig = ConsoleRig::start(MachineOptions::new("console-move")).await;
    let http = rig.http();
    let before = stepper(&rig.socket(), "z1in").await["position"]
        .as_i64()
        .expect("pos");
    let r = http
        .ok(json!({"cmd":"move","stepper":"z1in","delta":5}))
        .await;
    assert_eq!(r["position"], json!(before + 5), "{r}");
    assert_eq!(
        stepper(&rig.socket(), "z1in").await["position"],
        json!(before + 5)
    );

    // The gate's refusal of a disabled stepper: the daemon's reply, 200.
    http.ok(json!({"cmd":"disable","stepper":"z1in"})).await;
    let r = http
        .call(json!({"cmd":"move","stepper":"z1in","delta":5}))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(
        (v["ok"].clone(), v["error"]["kind"].clone()),
        (json!(false), json!("refused")),
        "{v}"
    );
    assert!(
        v["error"]["message"]
            .as_str()
            .expect("message")
            .contains("disabled"),
        "{v}"
    );
    assert_eq!(
        stepper(&rig.socket(), "z1in").await["position"],
        json!(before + 5)
    );

    // Stepper 99 does not exist: the daemon names it.
    let v = http
        .call(json!({"cmd":"move","stepper":99,"delta":1}))
        .await
        .json();
    assert_eq!(v["ok"], json!(false), "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .expect("message")
            .contains("99"),
        "{v}"
    );
    assert_eq!(rig.machine.violations(), 0);
    rig.stop().await;
}
