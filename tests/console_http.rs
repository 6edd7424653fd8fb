//! The operator console's HTTP side against the simulated machine: the
//! API reaches the daemon only through the control socket (and so the
//! motion gate), bad input is answered clearly and changes nothing, a
//! network listener needs the token, and the events arrive as SSE.

mod common;
#[path = "common/console.rs"]
mod console;

use common::control;
use common::machine::{self, MachineOptions};
use console::{ConsoleRig, Http, ServedConsole, TOKEN};
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
    assert!(
        page.text().contains("/assets/console.js"),
        "the page, not a fallback"
    );
    let csp = page.headers["content-security-policy"]
        .to_str()
        .expect("ascii");
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    for (name, ty) in [
        ("console.js", "text/javascript"),
        ("console.css", "text/css"),
    ] {
        let a = http.get(&format!("/assets/{name}")).await;
        assert_eq!(a.status, 200, "{name}");
        assert!(
            a.headers["content-type"]
                .to_str()
                .expect("ascii")
                .starts_with(ty),
            "{name}"
        );
    }
    let r = http.get("/assets/nothing.js").await;
    r.assert_error(404, "not_found");
    http.get("/nowhere").await.assert_error(404, "not_found");
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
    let v = http
        .refused(json!({"cmd":"move","stepper":"z1in","delta":5}), "disabled")
        .await;
    assert_eq!(v["error"]["kind"], json!("refused"), "{v}");
    assert_eq!(
        stepper(&rig.socket(), "z1in").await["position"],
        json!(before + 5)
    );

    // Stepper 99 does not exist: the daemon names it.
    http.refused(json!({"cmd":"move","stepper":99,"delta":1}), "99")
        .await;
    assert_eq!(rig.machine.violations(), 0);
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_answered_clearly_and_move_nothing() {
    let rig = ConsoleRig::start(MachineOptions::new("console-bad")).await;
    let http = rig.http();
    let before = stepper(&rig.socket(), "z1in").await["position"].clone();
    let mv = json!({"cmd":"move","stepper":"z1in","delta":5}).to_string();

    let r = http.post_json("/api/call", b"{\"cmd\":\"move\",").await;
    r.assert_error(400, "bad_json");
    assert!(r.json()["error"]["message"]
        .as_str()
        .expect("msg")
        .contains("not valid JSON"));
    let r = http.post_json("/api/call", b"[1,2]").await;
    r.assert_error(400, "bad_request");
    let r = http.call(json!({"stepper":"z1in"})).await;
    r.assert_error(400, "bad_request");
    assert!(r.text().contains("`cmd`"), "{}", r.text());
    let r = http.call(json!({"cmd":"fly","stepper":"z1in"})).await;
    r.assert_error(400, "unknown_command");
    assert!(
        r.text().contains("\\\"fly\\\"") && r.text().contains("move"),
        "{}",
        r.text()
    );
    let r = http.call(json!({"cmd":"events"})).await;
    r.assert_error(400, "not_allowed");
    // A daemon-level mistake is the daemon's answer: an unknown operation kind.
    http.refused(json!({"cmd":"op_run","kind":"z_levitate"}), "z_levitate")
        .await;

    // Cross-site requests: no custom header (a form), a form's type, a
    // foreign Origin, and a page reaching the console by DNS rebinding
    // (its own host name as Host and Origin).
    let json_type = ("content-type", "application/json");
    let csrf = ("x-stringdriver-console", "1");
    let cases: [(&[(&str, &str)], &str); 4] = [
        (&[json_type], "csrf"),
        (&[("content-type", "text/plain"), csrf], "csrf"),
        (
            &[json_type, csrf, ("origin", "http://evil.example")],
            "csrf",
        ),
        (
            &[
                json_type,
                csrf,
                ("host", "evil.example:7125"),
                ("origin", "http://evil.example:7125"),
            ],
            "host",
        ),
    ];
    for (headers, kind) in cases {
        let r = http
            .request("POST", "/api/call", headers, mv.as_bytes())
            .await;
        r.assert_error(403, kind);
    }
    // GET cannot change anything.
    let r = http.get("/api/call").await;
    assert_eq!(r.status, 405, "{}", r.text());
    let big = format!("{{\"cmd\":\"status\",\"pad\":\"{}\"}}", "x".repeat(100_000));
    let r = http.post_json("/api/call", big.as_bytes()).await;
    r.assert_error(413, "too_large");

    assert_eq!(stepper(&rig.socket(), "z1in").await["position"], before);
    // The daemon is unaffected: a good request still works.
    http.ok(json!({"cmd":"status"})).await;
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_network_listener_answers_401_without_the_token_and_changes_nothing() {
    let rig = ConsoleRig::start_with_token(MachineOptions::new("console-auth"), TOKEN).await;
    assert!(rig.url.starts_with("http://127.0.0.2:"), "{}", rig.url);
    let mut http = rig.http();
    let before = stepper(&rig.socket(), "z1in").await["position"].clone();
    for path in ["/api/meta", "/api/events", "/assets/console.js"] {
        let r = http.get(path).await;
        assert_eq!(
            (r.status, r.error_kind().as_str()),
            (401, "unauthorized"),
            "{path}"
        );
    }
    let r = http
        .call(json!({"cmd":"move","stepper":"z1in","delta":5}))
        .await;
    r.assert_error(401, "unauthorized");
    let page = http.get("/").await;
    assert_eq!(page.status, 401);
    assert!(page.text().contains("href=/login"), "{}", page.text());
    // A forged cookie is no session.
    http.cookie = Some("sd_console=00ff".into());
    assert_eq!(http.get("/api/meta").await.status, 401);
    http.cookie = None;

    // Another site's form posting the right token is refused: login CSRF.
    let body = format!("token={TOKEN}");
    let r = http
        .request(
            "POST",
            "/login",
            &[
                ("content-type", "application/x-www-form-urlencoded"),
                ("origin", "http://evil.example"),
            ],
            body.as_bytes(),
        )
        .await;
    r.assert_error(403, "csrf");
    assert!(r.headers.get("set-cookie").is_none());
    let r = http.login("wrong-token-0123456789").await;
    assert_eq!(r.status, 401);
    assert!(http.cookie.is_none());
    let r = http.login(TOKEN).await;
    assert_eq!(r.status, 303, "{}", r.text());
    let set = r.headers["set-cookie"].to_str().expect("ascii");
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(set.contains(attr), "{set}");
    }
    assert_eq!(stepper(&rig.socket(), "z1in").await["position"], before);
    let m = http.get("/api/meta").await.json();
    assert_eq!(m["auth"]["required"], json!(true));
    let r = http
        .ok(json!({"cmd":"move","stepper":"z1in","delta":5}))
        .await;
    assert_eq!(r["position"], json!(before.as_i64().expect("pos") + 5));
    // Another client without the cookie is still refused.
    let other = Http::new(&rig.url);
    assert_eq!(other.get("/api/meta").await.status, 401);
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_network_listener_without_a_token_does_not_start() {
    let machine = machine::SimMachine::start(MachineOptions::new("console-notoken"));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_stringdriverd"))
        .arg("console")
        .arg("--config")
        .arg(&machine.cfg_path)
        .args(["--listen", "127.0.0.2:0"])
        .env_remove("CREDENTIALS_DIRECTORY")
        .output()
        .expect("stringdriverd runs");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("127.0.0.2:0") && err.contains("token is required"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_arrive_as_sse_hello_then_daemon_events_and_status() {
    let rig = ConsoleRig::start(MachineOptions::new("console-sse")).await;
    let http = rig.http();
    let mut events = http.events().await;
    let (name, hello) = events.next().await;
    assert_eq!(name, "hello", "{hello}");
    assert!(control::boards_connected(&hello), "{hello}");
    let z1in = stepper(&rig.socket(), "z1in").await;
    let (index, before) = (
        z1in["index"].as_u64().expect("index") as usize,
        z1in["position"].as_i64().expect("pos"),
    );
    http.ok(json!({"cmd":"move","stepper":"z1in","delta":5}))
        .await;
    // The daemon's own event lines, verbatim: the snapshot timer's.
    let snap = events
        .until("a daemon snapshot event", |n, d| {
            n == "daemon" && d["event"] == "snapshot"
        })
        .await;
    assert_eq!(snap["v"], json!(1), "{snap}");
    // The position, from the console's status polls.
    events
        .until("a status with z1in moved", |n, d| {
            n == "status" && board_position(d, index) == Some(before + 5)
        })
        .await;
    rig.stop().await;
}

/// Global stepper `index`'s position in a `status` result (boards in order).
fn board_position(status: &Value, index: usize) -> Option<i64> {
    let all: Vec<i64> = status["boards"]
        .as_array()?
        .iter()
        .flat_map(|b| {
            b["positions"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .filter_map(|p| p.as_i64())
        })
        .collect();
    all.get(index).copied()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_survives_the_daemon_going_away_and_reconnects() {
    let (machine, run) = machine::started(MachineOptions::new("console-relink")).await;
    let console = ServedConsole::start(machine.socket(), "127.0.0.1", None).await;
    let http = Http::new(&console.url);
    let mut events = http.events().await;
    assert_eq!(events.next().await.0, "hello");

    run.stop().await;
    let lost = events
        .until("link lost", |n, d| {
            n == "link" && d["connected"] == json!(false)
        })
        .await;
    assert!(
        lost["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{lost}"
    );
    let r = http.call(json!({"cmd":"status"})).await;
    r.assert_error(502, "daemon_unreachable");
    assert_eq!(http.get("/api/meta").await.status, 200);

    let run = machine::InProcess::start(&machine).await;
    events
        .until("link back", |n, d| {
            n == "link" && d["connected"] == json!(true)
        })
        .await;
    let hello = events.until("a fresh hello", |n, _| n == "hello").await;
    assert!(hello["boards"].is_array(), "{hello}");
    http.ok(json!({"cmd":"status"})).await;
    console.stop().await;
    run.stop().await;
}

#[test]
fn the_console_section_is_validated_and_defaults_to_the_loopback() {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/stringdriver.example.toml");
    let text = std::fs::read_to_string(&path).expect("example");
    let cfg = stringdriverd::config::parse(&text, &path).expect("the example is valid");
    assert_eq!(cfg.console.listen.to_string(), "127.0.0.1:7125");
    assert_eq!(cfg.console.token_file, None);
    // Printed and read back (check-config's output is a valid file).
    let again = stringdriverd::config::parse(&cfg.to_toml_string(), &path).expect("round trip");
    assert_eq!(again.console, cfg.console);

    let bad = text.replacen(
        "listen = \"127.0.0.1:7125\"",
        "listen = \"localhost:seventy\"",
        1,
    );
    let e = stringdriverd::config::parse(&bad, &path)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("console.listen") && e.contains("localhost:seventy"),
        "{e}"
    );
    let bad = text.replacen("[console]\n", "[console]\ntoken = \"secret\"\n", 1);
    let e = stringdriverd::config::parse(&bad, &path)
        .unwrap_err()
        .to_string();
    assert!(e.contains("token"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_starts_the_console_and_prints_its_url() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = common::demo_config(dir.path(), "postgres://postgres@127.0.0.1:1/nothing");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_stringdriverd"))
        .args([
            "demo",
            "--seconds",
            "60",
            "--speed-scale",
            "5",
            "--console",
            "127.0.0.1:0",
        ])
        .arg("--config")
        .arg(&cfg)
        .arg("--socket")
        .arg(dir.path().join("ctl.sock"))
        .env_remove("DATABASE_URL")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("demo starts");
    let stdout = child.stdout.take().expect("stdout");
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line).map(|_| line)
    })
    .await
    .expect("join")
    .expect("the demo's first line");
    // The line's URL field: `console: http://ADDR:PORT/`.
    let url = line
        .strip_prefix("console: ")
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no console URL in {line:?}"))
        .trim_end_matches('/')
        .to_string();
    let http = Http::new(&url);
    let mut events = http.events().await;
    // The demo's boards come up after the console: wait on the status data.
    events
        .until("both demo boards connected", |n, d| {
            (n == "hello" || n == "status") && control::boards_connected(d)
        })
        .await;
    let _ = child.kill();
    let _ = child.wait();
}
