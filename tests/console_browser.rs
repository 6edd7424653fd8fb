//! The operator console's page in a real browser (headless chromium through
//! chromedriver) against the daemon on the simulated machine: what the page
//! shows is compared with what the daemon, the simulator, `stringdriverctl`
//! and PostgreSQL say. Every wait reads the page's structured data
//! (`data-testid` elements and their `data-*` attributes). Each test saves
//! a screenshot under `target/console/`; `console.png` (after a z_calibrate
//! run from the page) is the full page.

#[path = "common/browser.rs"]
mod browser;
mod common;
#[path = "common/console.rs"]
mod console;

use browser::Browser;
use common::control::{self, ctl};
use common::machine::{set_pose, FeedMode, InProcess, MachineOptions};
use common::ops_rig::wait_rows;
use common::pg::TestDb;
use console::{ConsoleRig, TOKEN};
use serde_json::{json, Value};
use stringdriverd::store::OperationType;

/// The rig and a browser on its page, started side by side; returns once
/// the page has the daemon's first status (its event stream is up and
/// every stepper is drawn).
async fn page(options: MachineOptions) -> (ConsoleRig, Browser) {
    let (rig, b) = tokio::join!(ConsoleRig::start(options), Browser::start());
    b.open(&format!("{}/", rig.url)).await;
    b.wait_attr("link", "data-connected", "the page's event stream", |v| {
        v == "true"
    })
    .await;
    (rig, b)
}

/// The daemon's `status` through its control socket.
async fn daemon_status(rig: &ConsoleRig) -> Value {
    control::status(&rig.socket())
        .await
        .expect("the daemon answers status")
}

/// A stepper's entry in a `status` result, by name.
fn stepper<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["steppers"]
        .as_array()
        .and_then(|l| l.iter().find(|s| s["name"] == name))
        .unwrap_or_else(|| panic!("no stepper {name} in {status}"))
}

/// `stringdriverctl --json get NAME` run as a process: its JSON output.
async fn ctl_get(rig: &ConsoleRig, name: &str) -> Value {
    let out = ctl(&rig.socket(), &["--json", "get", name]).await;
    assert!(
        out.status.success(),
        "stringdriverctl get {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stringdriverctl --json get {name} printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// The page's message area `msg-ID` once its request has been answered:
/// (`data-state`, `data-kind`, text).
async fn answered(b: &Browser, id: &str) -> (String, String, String) {
    let area = format!("msg-{id}");
    let state = b
        .wait_attr(&area, "data-state", &format!("the answer in {area}"), |v| {
            v == "ok" || v == "error"
        })
        .await;
    let e = b.find(&area).await.expect("the message area");
    let kind = e.attr("data-kind").await.ok().flatten().unwrap_or_default();
    let text = e.text().await.expect("its text");
    (state, kind, text)
}

/// Types `value` into the field `input`, clicks `button` and returns the
/// answer shown in `msg-AREA` (as [`answered`]).
async fn enter(
    b: &Browser,
    input: &str,
    value: &str,
    button: &str,
    area: &str,
) -> (String, String, String) {
    b.type_into(input, value).await;
    b.click(button).await;
    answered(b, area).await
}

/// Fails unless `answer` (as [`answered`] returns it) is `ok`, naming the
/// error and what the daemon says of its boards (a refusal under a heavily
/// loaded CI machine is then told from a page defect).
async fn expect_ok(rig: &ConsoleRig, answer: (String, String, String)) {
    let (state, kind, text) = answer;
    if state != "ok" {
        let boards = control::status(&rig.socket())
            .await
            .map(|st| st["boards"].to_string())
            .unwrap_or_else(|| "no status".into());
        panic!("the page's request failed: {kind}: {text}; the daemon's boards: {boards}");
    }
}

/// The end of every test: a screenshot `target/console/NAME.png` (the
/// visible part), the page's script met no error, the browser and the rig
/// stopped.
async fn finish(rig: ConsoleRig, b: Browser, name: &str) {
    b.screenshot(name).await;
    let errors = b.script_errors().await;
    assert_eq!(
        errors["count"],
        json!(0),
        "the page's script failed: {errors}"
    );
    b.close().await;
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_loads_with_every_board_connected_and_every_stepper_where_the_daemon_has_it() {
    let (rig, b) = page(MachineOptions::new("console-browser-load")).await;
    let st = daemon_status(&rig).await;
    assert!(control::boards_connected(&st), "{}", st["boards"]);
    let boards = st["boards"].as_array().expect("boards");
    for board in boards {
        let name = board["name"].as_str().expect("board name");
        b.wait_attr(
            &format!("board-{name}"),
            "data-link",
            &format!("board {name} shown connected"),
            |v| v == "connected",
        )
        .await;
    }
    for s in st["steppers"].as_array().expect("steppers") {
        let name = s["name"].as_str().expect("stepper name");
        let want = s["position"].to_string();
        b.wait_attr(
            &format!("pos-{name}"),
            "data-value",
            &format!("{name} at {want}"),
            |v| v == want,
        )
        .await;
    }
    // The operation kinds are the library's list, as data.
    let kinds: Vec<String> = {
        let mut v = Vec::new();
        for o in b.find_all_css("[data-testid=\"op-kind\"] option").await {
            v.push(o.attr("value").await.ok().flatten().unwrap_or_default());
        }
        v
    };
    let all: Vec<String> = OperationType::ALL
        .iter()
        .map(|k| k.as_str().to_string())
        .collect();
    assert_eq!(kinds, all, "every operation kind is offered");
    finish(rig, b, "loads").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jog_button_moves_the_simulated_stepper_and_the_page_shows_the_daemons_new_position() {
    let (rig, b) = page(MachineOptions::new("console-browser-jog")).await;
    let st = daemon_status(&rig).await;
    let from = stepper(&st, "z0in")["position"]
        .as_i64()
        .expect("z0in's position");
    let up = st["settings"]["z_up_step"].as_i64().expect("z_up_step");
    // z0in is stepper 1 of the carriage board (the first simulator).
    let physical = rig.machine.sims[0].physical()[1];
    b.wait_attr("pos-z0in", "data-value", "z0in's position", |v| {
        v == from.to_string()
    })
    .await;

    b.click("jog-z0in-plus").await;
    expect_ok(&rig, answered(&b, "z0in").await).await;
    let want = (from + up).to_string();
    b.wait_attr("pos-z0in", "data-value", "z0in's new position", |v| {
        v == want
    })
    .await;

    let st = daemon_status(&rig).await;
    assert_eq!(
        stepper(&st, "z0in")["position"].to_string(),
        want,
        "the page shows what the daemon has"
    );
    assert_eq!(
        rig.machine.sims[0].physical()[1],
        physical + up,
        "the simulated mechanism moved by z_up_step"
    );
    finish(rig, b, "jog").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_x_target_moves_the_carriage_there_and_a_counter_set_on_the_page_moves_nothing() {
    let (rig, b) = page(MachineOptions::new("console-browser-target")).await;
    let st = daemon_status(&rig).await;
    let x = stepper(&st, "x")["position"].as_i64().expect("X position");
    let target = x + 40;
    // X is stepper 0 of the carriage board, tuner0 stepper 0 of the tuner board.
    let x_physical = rig.machine.sims[0].physical()[0];
    expect_ok(
        &rig,
        enter(&b, "target-x", &target.to_string(), "goto-x", "x").await,
    )
    .await;
    b.wait_attr("pos-x", "data-value", "X at the target", |v| {
        v == target.to_string()
    })
    .await;
    b.wait_attr(
        "rail",
        "data-position",
        "the carriage drawn at the target",
        |v| v == target.to_string(),
    )
    .await;
    assert_eq!(
        rig.machine.sims[0].physical()[0],
        x_physical + (target - x),
        "the simulated carriage moved to the target"
    );

    let tuners = rig.machine.sims[1].physical();
    let counter = stepper(&st, "tuner0")["position"].as_i64().expect("tuner0") + 500;
    expect_ok(
        &rig,
        enter(
            &b,
            "counter-tuner0",
            &counter.to_string(),
            "setpos-tuner0",
            "tuner0",
        )
        .await,
    )
    .await;
    b.wait_attr("pos-tuner0", "data-value", "tuner0's new counter", |v| {
        v == counter.to_string()
    })
    .await;
    let st = daemon_status(&rig).await;
    assert_eq!(stepper(&st, "tuner0")["position"], json!(counter));
    assert_eq!(
        rig.machine.sims[1].physical(),
        tuners,
        "a counter set moves nothing"
    );
    finish(rig, b, "target").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jog_of_a_stepper_disabled_on_the_page_shows_the_gates_refusal_beside_its_buttons_and_enable_all_frees_it(
) {
    let (rig, b) = page(MachineOptions::new("console-browser-refusal")).await;
    b.wait_attr("flags-z1in", "data-enabled", "z1in enabled", |v| {
        v == "true"
    })
    .await;
    b.click("enable-z1in").await;
    expect_ok(&rig, answered(&b, "z1in").await).await;
    b.wait_attr("flags-z1in", "data-enabled", "z1in shown disabled", |v| {
        v == "false"
    })
    .await;
    let st = daemon_status(&rig).await;
    assert_eq!(stepper(&st, "z1in")["enabled"], json!(false));
    let position = stepper(&st, "z1in")["position"].clone();
    let physical = rig.machine.sims[0].physical();

    b.click("jog-z1in-plus").await;
    let (state, kind, text) = answered(&b, "z1in").await;
    assert_eq!((state.as_str(), kind.as_str()), ("error", "refused"));
    // The same request straight to the daemon: the page shows its words.
    let up = st["settings"]["z_up_step"].clone();
    let mut c = control::Client::connect(&rig.socket()).await;
    let said = c
        .err(
            json!({"cmd": "move", "stepper": "z1in", "delta": up}),
            "refused",
        )
        .await;
    assert_eq!(text, said);
    // Shown beside z1in's controls only.
    b.wait_attr("msg-z0in", "data-state", "z0in's area untouched", |v| {
        v.is_empty()
    })
    .await;

    let st = daemon_status(&rig).await;
    assert_eq!(stepper(&st, "z1in")["position"], position, "nothing moved");
    assert_eq!(rig.machine.sims[0].physical(), physical, "nothing moved");
    b.screenshot("refusal").await;

    // Every stepper at once, from the header: off, then on again.
    for (button, on) in [("disable-all", false), ("enable-all", true)] {
        b.click(button).await;
        expect_ok(&rig, answered(&b, "stop").await).await;
        let st = daemon_status(&rig).await;
        assert!(
            st["enabled"]
                .as_array()
                .is_some_and(|e| e.iter().all(|v| *v == json!(on))),
            "{button}: {}",
            st["enabled"]
        );
        b.wait_attr("flags-z1in", "data-enabled", "z1in's enable shown", |v| {
            v == on.to_string()
        })
        .await;
    }
    finish(rig, b, "enable-all").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn z_calibrate_run_from_the_page_shows_its_progress_ends_completed_and_its_row_is_in_postgresql(
) {
    const HOST: &str = "console-browser-zcal";
    let db = TestDb::create().await;
    let mut o = MachineOptions::new(HOST);
    o.db_url = Some(db.url());
    o.sensors = true;
    o.demo_physics = true;
    // The channels follow the strings' Z steppers, as on the demo.
    o.feed = FeedMode::Live;
    let (rig, b) = page(o).await;

    b.select("op-kind", "z_calibrate").await;
    b.select("op-stepper", "z2in").await;
    b.click("op-run").await;
    expect_ok(&rig, answered(&b, "op").await).await;
    let row = b
        .wait_css(
            "[data-testid=\"op-history\"] tr[data-kind=\"z_calibrate\"]",
            "z_calibrate's row in the page's last operations",
        )
        .await;
    let status = row
        .attr("data-status")
        .await
        .expect("status")
        .unwrap_or_default();
    let id = row
        .attr("data-operation-id")
        .await
        .expect("operation id")
        .unwrap_or_default();
    assert_eq!(status, "completed", "operation {id}");
    let steps = b
        .find_all_css(
            "[data-testid=\"op-progress\"] [data-phase=\"step\"][data-kind=\"z_calibrate\"]",
        )
        .await;
    assert!(
        !steps.is_empty(),
        "z_calibrate's steps are shown as they come"
    );
    assert!(
        b.find_css(
            "[data-testid=\"op-progress\"] [data-phase=\"ended\"][data-kind=\"z_calibrate\"]"
        )
        .await
        .is_some(),
        "its end is shown"
    );
    b.wait_attr(
        "op-running",
        "data-running",
        "no operation shown running",
        |v| v.is_empty(),
    )
    .await;

    let client = db.client().await;
    let rows = wait_rows(
        &client,
        HOST,
        "the page's z_calibrate row shipped",
        |rows| {
            rows.iter()
                .any(|r| r.id.to_string() == id && r.status == "completed")
        },
    )
    .await;
    let r = rows
        .iter()
        .find(|r| r.id.to_string() == id)
        .expect("the row");
    assert_eq!(r.kind, "z_calibrate");

    // The screenshot for the note: the whole page after the run.
    let shot = b.full_page_screenshot("console").await;
    eprintln!("screenshot: {}", shot.display());
    finish(rig, b, "z_calibrate").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operation_repeated_from_the_page_lists_each_run_and_cancel_on_the_page_stops_it() {
    let mut o = MachineOptions::new("console-browser-repeat");
    o.sensors = true;
    o.demo_physics = true;
    let (rig, b) = page(o).await;
    b.select("op-kind", "bump_check").await;
    b.click("op-repeat").await;
    b.click("op-run").await;
    expect_ok(&rig, answered(&b, "op").await).await;
    b.wait_attr(
        "op-running",
        "data-running",
        "bump_check shown running",
        |v| v == "bump_check",
    )
    .await;
    // Runs follow each other: wait for two in the last operations.
    b.wait_count(
        "[data-testid=\"op-history\"] tr[data-kind=\"bump_check\"][data-status=\"completed\"]",
        "two runs of the repetition listed",
        |n| n >= 2,
    )
    .await;

    b.click("op-cancel").await;
    expect_ok(&rig, answered(&b, "op").await).await;
    b.wait_attr("op-running", "data-running", "nothing shown running", |v| {
        v.is_empty()
    })
    .await;
    let st = daemon_status(&rig).await;
    assert_eq!(
        st["operation"]["running"],
        Value::Null,
        "{}",
        st["operation"]
    );
    finish(rig, b, "repeat").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_setting_and_a_threshold_changed_on_the_page_are_what_stringdriverctl_get_reports() {
    let (rig, b) = page(MachineOptions::new("console-browser-set")).await;
    let before = ctl_get(&rig, "x_step").await;
    let old = before["value"].as_i64().expect("x_step");
    b.wait_attr("setting-x_step", "data-value", "x_step shown", |v| {
        v == old.to_string()
    })
    .await;
    let new = old + 7;
    expect_ok(
        &rig,
        enter(
            &b,
            "setting-x_step",
            &new.to_string(),
            "set-x_step",
            "setting-x_step",
        )
        .await,
    )
    .await;
    let after = ctl_get(&rig, "x_step").await;
    assert_eq!(after["value"], json!(new), "{after}");
    assert_eq!(after["source"], "run-time", "{after}");
    b.wait_attr(
        "source-x_step",
        "data-source",
        "x_step shown changed at run time",
        |v| v == "run-time",
    )
    .await;

    // A threshold of one channel, in the per-channel grid.
    let vmin = ctl_get(&rig, "voice_count_min").await["value"].clone();
    let mut want: Vec<i64> = vmin
        .as_array()
        .expect("one value per channel")
        .iter()
        .map(|v| v.as_i64().expect("integer"))
        .collect();
    want[3] += 1;
    expect_ok(
        &rig,
        enter(
            &b,
            "thr-voice_count_min-3",
            &want[3].to_string(),
            "set-voice_count_min",
            "setting-voice_count_min",
        )
        .await,
    )
    .await;
    assert_eq!(ctl_get(&rig, "voice_count_min").await["value"], json!(want));
    finish(rig, b, "setting").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_value_typed_into_a_setting_shows_the_daemons_error_and_changes_nothing() {
    let (rig, b) = page(MachineOptions::new("console-browser-bad")).await;
    let before = ctl_get(&rig, "z_up_step").await;
    let shown = before["value"].to_string();
    b.wait_attr("setting-z_up_step", "data-value", "z_up_step shown", |v| {
        v == shown
    })
    .await;
    let (state, kind, text) = enter(
        &b,
        "setting-z_up_step",
        "abc",
        "set-z_up_step",
        "setting-z_up_step",
    )
    .await;
    assert_eq!(
        (state.as_str(), kind.as_str()),
        ("error", "invalid_setting")
    );
    let mut c = control::Client::connect(&rig.socket()).await;
    let said = c
        .err(
            json!({"cmd": "set", "name": "z_up_step", "value": "abc"}),
            "invalid_setting",
        )
        .await;
    assert_eq!(text, said, "the daemon's own words");
    assert_eq!(ctl_get(&rig, "z_up_step").await, before, "nothing changed");

    // One bad entry in the per-channel grid: the whole list is refused.
    let amp_before = ctl_get(&rig, "amp_sum_max").await;
    let (state, kind, text) = enter(
        &b,
        "thr-amp_sum_max-0",
        "loud",
        "set-amp_sum_max",
        "setting-amp_sum_max",
    )
    .await;
    assert_eq!(
        (state.as_str(), kind.as_str()),
        ("error", "invalid_setting"),
        "{text}"
    );
    assert!(text.contains("amp_sum_max"), "names the setting: {text}");
    assert_eq!(
        ctl_get(&rig, "amp_sum_max").await,
        amp_before,
        "nothing changed"
    );
    finish(rig, b, "bad-setting").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_shows_the_daemon_gone_and_is_live_again_by_itself_when_it_is_back() {
    let (rig, b) = page(MachineOptions::new("console-browser-relink")).await;
    let ConsoleRig {
        machine,
        run,
        console,
        url,
    } = rig;
    run.stop().await;
    b.wait_attr("link", "data-connected", "the daemon shown away", |v| {
        v == "false"
    })
    .await;
    b.wait_css("body[data-daemon=\"lost\"]", "the page dimmed")
        .await;

    // The daemon again (its counters set as after a calibration): the page
    // follows without a reload, and its controls work.
    let run = InProcess::start(&machine).await;
    set_pose(&run.parts).await;
    let rig = ConsoleRig {
        machine,
        run,
        console,
        url,
    };
    b.wait_attr("link", "data-connected", "the daemon shown back", |v| {
        v == "true"
    })
    .await;
    b.click("jog-z0in-plus").await;
    expect_ok(&rig, answered(&b, "z0in").await).await;
    let want = stepper(&daemon_status(&rig).await, "z0in")["position"].to_string();
    b.wait_attr("pos-z0in", "data-value", "z0in's new position", |v| {
        v == want
    })
    .await;
    finish(rig, b, "relink").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_token_the_page_asks_for_a_login_and_after_it_jogs_through_its_cookie() {
    let (rig, b) = tokio::join!(
        ConsoleRig::start_with_token(MachineOptions::new("console-browser-login"), TOKEN),
        Browser::start()
    );
    b.open(&format!("{}/", rig.url)).await;
    // The 401 page: a login form, not the console.
    b.wait_css("#token", "the login form").await;
    assert!(b.find("link").await.is_none(), "no console without a login");
    b.type_css("#token", TOKEN).await;
    b.click_css("button[type=submit]").await;
    b.wait_attr("link", "data-connected", "the page's event stream", |v| {
        v == "true"
    })
    .await;

    // A state change through the session cookie (HttpOnly: the page never
    // reads it; the browser sends it).
    let st = daemon_status(&rig).await;
    let from = stepper(&st, "z0in")["position"].as_i64().expect("position");
    let up = st["settings"]["z_up_step"].as_i64().expect("z_up_step");
    b.click("jog-z0in-plus").await;
    expect_ok(&rig, answered(&b, "z0in").await).await;
    let st = daemon_status(&rig).await;
    assert_eq!(stepper(&st, "z0in")["position"], json!(from + up));
    let cookie_seen = b.eval("return document.cookie", vec![]).await;
    assert_eq!(cookie_seen, json!(""), "the session cookie is HttpOnly");
    finish(rig, b, "login").await;
}
