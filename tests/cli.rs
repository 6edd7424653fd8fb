//! The `stringdriverd` binary as an operator uses it: real processes, real
//! signals, real pseudo-terminals.

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use stringdriverd::protocol::Firmware;
use stringdriverd::sim::{Fault, Simulator};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_stringdriverd"))
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    cond()
}

fn manifest(p: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
}

#[test]
fn check_config_prints_the_resolved_demo_configuration() {
    let o = bin()
        .args(["check-config", "--config"])
        .arg(manifest("config/demo.toml"))
        .output()
        .expect("runs");
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(out.contains("host = \"stringdriver-demo\""), "{out}");
    assert!(out.contains("z_up_step = 2"), "{out}");
    assert!(err.contains("configuration is valid"));
}

#[test]
fn check_config_names_file_line_and_key_of_a_bad_value() {
    let dir = tempfile::tempdir().expect("tempdir");
    let f = dir.path().join("bad.toml");
    let good = std::fs::read_to_string(manifest("config/demo.toml")).expect("demo config");
    std::fs::write(&f, good.replacen("int_bytes = 2", "int_bytes = 3", 1)).expect("write");
    let o = bin()
        .args(["check-config", "--config"])
        .arg(&f)
        .output()
        .expect("runs");
    let (_, err) = text(&o);
    assert!(!o.status.success());
    assert!(err.contains("bad.toml:"), "{err}");
    assert!(err.contains("int_bytes"), "{err}");
    assert!(err.contains("2 or 4"), "{err}");
}

#[test]
fn check_config_on_a_missing_file_names_it() {
    let o = bin()
        .args(["check-config", "--config", "/nonexistent/stringdriver.toml"])
        .output()
        .expect("runs");
    let (_, err) = text(&o);
    assert!(!o.status.success());
    assert!(err.contains("/nonexistent/stringdriver.toml"), "{err}");
}

#[test]
fn sim_controller_serves_a_board_that_probe_reads_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().expect("tempdir");
    let link = dir.path().join("ttySIM");
    let mut sim = bin()
        .args([
            "sim-controller",
            "--profile",
            "v2",
            "--speed-scale",
            "10",
            "--link",
        ])
        .arg(&link)
        .stderr(Stdio::piped())
        .spawn()
        .expect("sim-controller starts");
    assert!(
        wait_until(Duration::from_secs(10), || link.exists()),
        "the link appears"
    );
    let o = bin()
        .args(["probe", "--reset-wait", "400ms", "--port"])
        .arg(&link)
        .output()
        .expect("probe runs");
    let (out, err) = text(&o);
    assert!(o.status.success(), "probe failed: {err}");
    assert!(out.contains("steppers: 13"), "{out}");
    assert!(
        out.contains(&format!("positions: {}", ["0"; 13].join(", "))),
        "{out}"
    );
    assert!(out.contains("free memory: 5623 bytes"), "{out}");

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(sim.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("signal");
    assert!(
        wait_until(Duration::from_secs(10), || matches!(
            sim.try_wait(),
            Ok(Some(_))
        )),
        "sim-controller stops"
    );
    let status = sim.wait().expect("wait");
    assert!(status.success(), "exit {status:?}");
    assert!(!link.exists(), "the link is removed on exit");
}

#[test]
fn probe_of_a_tuner_board_reads_four_byte_counters() {
    let mut opts = common::sim_options(Firmware::Tuner);
    opts.reset_window = Duration::from_millis(100);
    let (_dir, sim) = common::start_sim(opts);
    let o = bin()
        .args([
            "probe",
            "--profile",
            "tuner",
            "--reset-wait",
            "200ms",
            "--port",
        ])
        .arg(sim.link())
        .output()
        .expect("probe runs");
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(out.contains("steppers: 6"), "{out}");
    assert!(
        out.contains(&format!("positions: {}", ["0"; 6].join(", "))),
        "{out}"
    );
}

#[test]
fn probe_of_a_board_that_never_answers_fails_clearly() {
    let (_dir, sim) = common::start_sim(common::sim_options(Firmware::V2));
    sim.inject(Fault::Mute(true));
    let o = bin()
        .args([
            "probe",
            "--reset-wait",
            "200ms",
            "--timeout",
            "300ms",
            "--port",
        ])
        .arg(sim.link())
        .output()
        .expect("probe runs");
    let (_, err) = text(&o);
    assert!(!o.status.success());
    assert!(err.contains("no reply from"), "{err}");
    assert!(err.contains("is it a v2 board"), "{err}");
}

#[test]
fn probe_of_a_missing_port_fails_naming_it() {
    let o = bin()
        .args([
            "probe",
            "--reset-wait",
            "10ms",
            "--port",
            "/dev/serial/by-id/not-there",
        ])
        .output()
        .expect("probe runs");
    let (_, err) = text(&o);
    assert!(!o.status.success());
    assert!(
        err.contains("cannot open /dev/serial/by-id/not-there"),
        "{err}"
    );
}

#[test]
fn probe_without_permission_on_the_port_says_so() {
    if !nix::unistd::Uid::effective().is_root() {
        // Without root the test cannot switch to another user; the pty then
        // belongs to us and is readable. Say so rather than pass silently.
        panic!("this test must run as root (it drops to `nobody` with setpriv)");
    }
    let (_dir, sim) = common::start_sim(common::sim_options(Firmware::V2));
    let device = sim.device().expect("device");
    let o = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(env!("CARGO_BIN_EXE_stringdriverd"))
        .args(["probe", "--reset-wait", "10ms", "--port"])
        .arg(&device)
        .output()
        .expect("setpriv runs");
    let (_, err) = text(&o);
    assert!(!o.status.success());
    assert!(err.contains("ermission denied"), "{err}");
    assert!(err.contains(&device.display().to_string()), "{err}");
}

#[test]
fn demo_runs_simulated_boards_and_stops_by_itself() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Port 1 on loopback: were the demo to connect anywhere, it would fail there.
    let f = config_with(dir.path(), "postgres://postgres@127.0.0.1:1/nothing");
    let o = bin()
        .args(["demo", "--seconds", "3", "--speed-scale", "5", "--config"])
        .arg(&f)
        // No database given at all: records must stay in the spool.
        .env_remove("DATABASE_URL")
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .output()
        .expect("demo runs");
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    let spool = dir.path().join("spool.sqlite");
    assert!(
        err.contains(&format!(
            "no database given (--database-url or DATABASE_URL): records stay in the spool at {}",
            spool.display()
        )),
        "{err}"
    );
    assert!(!err.contains("127.0.0.1:1"), "it tried the database: {err}");
    assert!(err.contains("board=carriage state=connected"), "{err}");
    assert!(err.contains("board=tuner state=connected"), "{err}");
    assert!(err.contains("starting pose set"), "{err}");
    assert!(!err.contains("safety violations"), "{err}");
    // It says what to try against its control socket, exactly.
    let control = dir.path().join("control.sock");
    assert!(
        err.contains(&format!(
            "control socket: {0} (try: stringdriverctl --socket {0} status)",
            control.display()
        )),
        "{err}"
    );
    // It serves the stepper GUI's socket and says where.
    let gui = dir.path().join("stepper_gui__dev_ttyACM0.sock");
    assert!(
        err.contains(&format!(
            "stepper GUI socket (board carriage): {} (try: socat - UNIX-CONNECT:{})",
            gui.display(),
            gui.display()
        )),
        "{err}"
    );
    assert!(!gui.exists(), "removed at the end");
    assert!(
        out.contains("boards: carriage connected, tuner connected; feed: ok"),
        "{out}"
    );
    assert!(out.contains("none (no database given)"), "{out}");
    let captured = summary_number(&out, "snapshots captured");
    assert!(captured >= 1, "{out}");
    assert_eq!(summary_number(&out, "left in the spool"), captured, "{out}");
    // The spool agrees: every snapshot waits there.
    let o = bin()
        .args(["spool-status", "--json", "--config"])
        .arg(&f)
        .output()
        .expect("runs");
    let (json, err) = text(&o);
    assert!(o.status.success(), "{err}");
    let v: serde_json::Value = serde_json::from_str(&json).expect("json");
    assert_eq!(v["backlog"].as_u64(), Some(captured), "{json}");
    // Simulators and the simulated audmon clean up.
    assert!(!dir.path().join("carriage").exists());
    assert!(!dir.path().join("tuner").exists());
    assert!(!dir.path().join("shm/audio_control").exists());
    assert!(!dir.path().join("shm/audio_peaks").exists());
}

/// The number after `key` in the demo's summary (`snapshots captured    6 (…)`).
fn summary_number(summary: &str, key: &str) -> u64 {
    summary
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no `{key}` number in the summary:\n{summary}"))
}

#[tokio::test]
async fn demo_ships_snapshots_of_the_starting_pose_to_the_given_database() {
    use stringdriverd::sim::feed::partials_for_distance;
    let db = common::pg::TestDb::create().await;
    let dir = tempfile::tempdir().expect("tempdir");
    // Neither the file's URL nor DATABASE_URL may be used: --database-url wins.
    let nowhere = "postgres://postgres@127.0.0.1:1/nothing";
    let f = config_with(dir.path(), nowhere);
    let o = bin()
        .args([
            "demo",
            "--seconds",
            "4",
            "--speed-scale",
            "5",
            "--database-url",
        ])
        .arg(db.url())
        .arg("--config")
        .arg(&f)
        .env("DATABASE_URL", nowhere)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .output()
        .expect("demo runs");
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains(&format!("database: shipping to {}", db.url())),
        "{err}"
    );
    assert!(
        out.contains(&format!("psql \"{}\" -c \"SELECT", db.url())),
        "{out}"
    );
    let shipped = summary_number(&out, "shipped");
    assert!(shipped >= 1, "{out}");

    let rows = db
        .client()
        .await
        .query(
            "SELECT host, stepper_positions, voice_count, amp_sum FROM machine_state",
            &[],
        )
        .await
        .expect("query");
    assert_eq!(rows.len() as u64, shipped, "{out}");
    // X 0, the twelve Z steppers 20 steps above their strings, tuners 0.
    let mut pose = vec![0];
    pose.extend([20; 12]);
    pose.extend([0; 6]);
    let model: Vec<Vec<(f32, f32)>> = (0..6).map(|c| partials_for_distance(20.0, 12, c)).collect();
    let voices: Vec<i32> = model
        .iter()
        .map(|p| p.iter().filter(|e| e.1 > 0.0).count() as i32)
        .collect();
    let sums: Vec<f32> = model.iter().map(|p| p.iter().map(|e| e.1).sum()).collect();
    for r in &rows {
        let host: String = r.get(0);
        let positions: Vec<i32> = r.get(1);
        let voice_count: Vec<i32> = r.get(2);
        let amp_sum: Vec<f32> = r.get(3);
        assert_eq!(host, "stringdriver-demo");
        assert_eq!(positions.len(), 19);
        assert_eq!(positions, pose);
        assert_eq!(voice_count.len(), 6);
        assert_eq!(voice_count, voices);
        for (got, want) in amp_sum.iter().zip(&sums) {
            assert!((got - want).abs() <= want * 1e-5, "{amp_sum:?} vs {sums:?}");
        }
    }
}

#[test]
fn a_simulator_link_in_the_way_of_a_regular_file_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let f = dir.path().join("occupied");
    std::fs::write(&f, b"not a link").expect("write");
    let err = Simulator::spawn(common::sim_options(Firmware::V2), &f)
        .err()
        .expect("refused");
    assert!(err.to_string().contains("occupied"), "{err}");
}

fn config_with(dir: &Path, db_url: &str) -> std::path::PathBuf {
    common::demo_config(dir, db_url)
}

#[tokio::test]
async fn migrate_creates_the_schema_once_and_says_so() {
    let db = common::pg::TestDb::create().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config_with(dir.path(), &db.url());
    let o = bin()
        .args(["migrate", "--config"])
        .arg(&cfg)
        .output()
        .expect("runs");
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(out.contains("applied V1"), "{out}");
    assert!(out.contains("version 3"), "{out}");
    let o = bin()
        .args(["migrate", "--config"])
        .arg(&cfg)
        .output()
        .expect("runs");
    let (out, _) = text(&o);
    assert!(out.contains("schema is current (version 3)"), "{out}");
    let n: i64 = db
        .client()
        .await
        .query_one("SELECT count(*) FROM information_schema.tables WHERE table_name IN ('machine_state', 'operations', 'stepper_roles')", &[])
        .await
        .expect("query")
        .get(0);
    assert_eq!(n, 3);
}

#[test]
fn migrate_against_an_unreachable_server_fails_naming_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Port 1 on loopback: nothing listens there.
    let cfg = config_with(dir.path(), "postgres://postgres@127.0.0.1:1/nothing");
    let o = bin()
        .args(["migrate", "--config"])
        .arg(&cfg)
        .output()
        .expect("runs");
    let (_, err) = text(&o);
    assert!(!o.status.success());
    assert!(err.contains("127.0.0.1:1"), "{err}");
}

#[test]
fn spool_status_reports_the_backlog_and_dead_letters() {
    use stringdriverd::store::{OperationStatus, Spool};
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config_with(dir.path(), "postgres://postgres@127.0.0.1:1/nothing");
    let o = bin()
        .args(["spool-status", "--config"])
        .arg(&cfg)
        .output()
        .expect("runs");
    let (_, err) = text(&o);
    assert!(!o.status.success());
    assert!(err.contains("no spool at"), "{err}");

    let path = dir.path().join("spool.sqlite");
    {
        let (mut s, _) = Spool::open(&path, 1 << 30).expect("spool");
        s.append(&[
            common::records::timer(1, 0),
            common::records::op(1, None, OperationStatus::Started, 0),
            common::records::timer(2, 1),
        ])
        .expect("append");
        let first = s.peek(1).expect("peek");
        s.dead_letter(first[0].seq, "ERROR: value too long (SQLSTATE 22001)")
            .expect("dead letter");
        s.set_last_error("db down").expect("note");
    }
    let o = bin()
        .args(["spool-status", "--config"])
        .arg(&cfg)
        .output()
        .expect("runs");
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(out.contains("2 records (1 operation events)"), "{out}");
    assert!(out.contains("dead letters           1"), "{out}");
    assert!(out.contains("db down"), "{out}");
    let o = bin()
        .args(["spool-status", "--json", "--config"])
        .arg(&cfg)
        .output()
        .expect("runs");
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["backlog"], 2);
    assert_eq!(v["dead_letters"], 1);
    assert_eq!(v["limit_bytes"].as_u64(), Some(1 << 30));
}

#[tokio::test]
async fn link_backfills_controls_id_once_and_prints_what_it_changed() {
    use stringdriverd::store::{migrate, ship, Record, Spooled};
    let db = common::pg::TestDb::create().await;
    let mut c = db.client().await;
    migrate::migrate(&mut c).await.expect("migrate");
    let mut recs = Vec::new();
    for i in 0..3u64 {
        let mut r = common::records::timer(i, i as i64 * 10);
        if let Record::MachineState { row, .. } = &mut r {
            row.host = "stringdriver-demo".into();
        }
        recs.push(Spooled {
            seq: i as i64,
            record: r,
        });
    }
    ship::ship(&mut c, &recs, migrate::ControlsIdType::Uuid)
        .await
        .expect("ship");
    // audmon frames 100 ms after the first two snapshots; none near the third.
    for (i, secs) in [(0u64, 0i64), (1, 10)] {
        let at = common::records::t0()
            + chrono::Duration::seconds(secs)
            + chrono::Duration::milliseconds(100);
        c.execute(
            "INSERT INTO controls (controls_id, host, recorded_at) VALUES ($1, 'stringdriver-demo', $2)",
            &[&common::records::id(9, i), &at],
        )
        .await
        .expect("controls row");
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config_with(dir.path(), &db.url());
    let o = bin()
        .args(["link", "--tolerance", "500ms", "--config"])
        .arg(&cfg)
        .output()
        .expect("runs");
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(out.contains("linked 2 machine_state rows"), "{out}");
    assert!(
        out.contains("offset_ms=+100") || out.contains("offset_ms=100"),
        "{out}"
    );
    let o = bin()
        .args(["link", "--config"])
        .arg(&cfg)
        .output()
        .expect("runs");
    let (out, _) = text(&o);
    assert!(out.contains("linked 0 machine_state rows"), "{out}");
}

/// `stringdriverctl --socket S status`, with `--json` when asked.
fn ctl_status(socket: &Path, json: bool) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_stringdriverctl"));
    c.arg("--socket").arg(socket);
    if json {
        c.arg("--json");
    }
    c.arg("status").output().expect("ctl runs")
}

/// Waits on the structured status until every board is connected with
/// trusted counters (the demo sets its starting pose after the boards'
/// reset). The printed text is no condition: "shipper: not connected"
/// contains "connected" while the boards still wait for their reset.
fn wait_boards_ready(socket: &Path) {
    let mut last = String::new();
    let ready = wait_until(Duration::from_secs(30), || {
        let o = ctl_status(socket, true);
        last = String::from_utf8_lossy(&o.stdout).into_owned();
        o.status.success()
            && serde_json::from_str::<serde_json::Value>(&last)
                .is_ok_and(|st| common::control::boards_ready(&st))
    });
    assert!(ready, "boards never ready: {last}");
}

#[test]
fn a_second_demo_on_the_same_state_directory_exits_at_once_naming_the_first() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut first, socket) = common::spawn_demo(dir.path(), 120);
    wait_boards_ready(&socket);
    // The same configuration, another socket: before the lock, this one
    // deleted the first one's counters and feed and fought for its ports.
    let o = bin()
        .args(["demo", "--seconds", "30", "--speed-scale", "5", "--config"])
        .arg(dir.path().join("stringdriver.toml"))
        .arg("--socket")
        .arg(dir.path().join("second.sock"))
        .env_remove("DATABASE_URL")
        .output()
        .expect("second demo runs");
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("another stringdriverd (pid {})", first.id())),
        "{err}"
    );
    assert!(err.contains("stop it first"), "{err}");
    // The first one is untouched: still ready, its feed still written.
    let st = ctl_status(&socket, true);
    let st: serde_json::Value = serde_json::from_slice(&st.stdout).expect("status json");
    assert!(common::control::boards_ready(&st), "{st}");
    assert!(!dir.path().join("second.sock").exists());
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(first.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .expect("signal the demo");
    assert!(first.wait().expect("demo ends").success());
}

#[test]
fn run_refuses_a_state_directory_another_process_holds() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = common::demo_config(dir.path(), "postgres://postgres@127.0.0.1:1/nothing");
    let _held = stringdriverd::lock::StateLock::acquire(dir.path()).expect("claim");
    let o = bin()
        .arg("run")
        .arg("--config")
        .arg(&cfg)
        .output()
        .expect("runs");
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "another stringdriverd (pid {}) uses {}",
            std::process::id(),
            dir.path().display()
        )),
        "{err}"
    );
}

#[test]
fn the_demo_serves_the_control_socket_where_asked_and_stringdriverctl_reads_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut demo, socket) = common::spawn_demo(dir.path(), 60);
    assert!(
        wait_until(Duration::from_secs(30), || socket.exists()),
        "the socket appears"
    );
    wait_boards_ready(&socket);
    let o = ctl_status(&socket, false);
    assert!(o.status.success(), "{o:?}");
    let shown = String::from_utf8_lossy(&o.stdout);
    assert!(shown.contains("carriage"));
    // Issue 16: status of a real daemon fits 80 columns, every line.
    for l in shown.lines() {
        assert!(
            l.chars().count() <= 80,
            "{} columns: {l}",
            l.chars().count()
        );
    }
    // The stepper GUI's socket answers as the older tools ask: the
    // starting pose (X 0, Z 20) of the carriage board.
    let gui = dir.path().join("stepper_gui__dev_ttyACM0.sock");
    let ask = |line: &str| {
        use std::io::{BufRead, Write};
        let mut s = std::os::unix::net::UnixStream::connect(&gui).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        s.write_all(format!("{line}\n").as_bytes()).expect("write");
        let mut reply = String::new();
        std::io::BufReader::new(s)
            .read_line(&mut reply)
            .expect("a reply");
        reply
    };
    let zs: Vec<String> = (1..13).map(|i| format!("{i}=20")).collect();
    assert_eq!(
        ask("get_positions"),
        format!("positions 0=0 {}\n", zs.join(" "))
    );
    assert_eq!(ask("get_x_step"), "10\n");
    // An operation through the socket, with progress while it runs.
    let o = Command::new(env!("CARGO_BIN_EXE_stringdriverctl"))
        .arg("--socket")
        .arg(&socket)
        .args(["op", "run", "bump_check", "--wait"])
        .output()
        .expect("ctl runs");
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}{err}");
    assert!(out.contains("completed"), "{out}");
    assert!(
        err.contains("... operation bump_check"),
        "progress shown: {err}"
    );
    // The run was long enough for any loaded machine; Ctrl-C ends it.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(demo.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .expect("signal the demo");
    let status = demo.wait().expect("demo ends");
    assert!(status.success(), "{status:?}");
}

// --- The CLI definitions: possible values, did-you-mean, defaults,
// completions and manual pages (issue 16 items 4, 8 and 10).

fn ctl_offline() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_stringdriverctl"));
    // No daemon anywhere: whatever clap refuses never reaches a socket.
    c.env("STRINGDRIVER_SOCKET", "/nonexistent/stringdriver-ctl.sock");
    c
}

/// clap's usage error: exit code 2, the valid values listed, the near one
/// suggested, and nothing sent (no "cannot reach" from a connection).
fn assert_refused_with_suggestion(o: &Output, suggested: &str) {
    let (_, err) = text(o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("possible values"), "{err}");
    assert!(
        err.contains("similar") && err.contains(&format!("'{suggested}'")),
        "{err}"
    );
    assert!(!err.contains("cannot reach"), "it connected: {err}");
}

#[test]
fn a_mistyped_operation_kind_is_refused_with_the_kinds_and_a_suggestion() {
    let o = ctl_offline()
        .args(["op", "run", "z_calibrat"])
        .output()
        .expect("runs");
    assert_refused_with_suggestion(&o, "z_calibrate");
    let o = ctl_offline()
        .args([
            "op",
            "report",
            "--kind",
            "sweep_left_rigth",
            "--status",
            "started",
        ])
        .output()
        .expect("runs");
    assert_refused_with_suggestion(&o, "sweep_left_right");
    let o = ctl_offline()
        .args(["op", "report", "--kind", "x_home", "--status", "complete"])
        .output()
        .expect("runs");
    assert_refused_with_suggestion(&o, "completed");
    let o = ctl_offline()
        .args(["motor", "set", "z", "sped", "120"])
        .output()
        .expect("runs");
    assert_refused_with_suggestion(&o, "speed");
}

#[test]
fn with_json_a_usage_error_is_json_with_exit_code_2() {
    let o = ctl_offline()
        .args(["--json", "op", "run", "z_calibrat"])
        .output()
        .expect("runs");
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(2), "{out}{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("JSON on stdout");
    assert_eq!(v["error"]["kind"], "usage", "{out}");
    let message = v["error"]["message"].as_str().unwrap_or("");
    assert!(message.contains("possible values"), "{message}");
    assert!(message.contains("'z_calibrate'"), "{message}");
    // Help stays text, exit 0.
    let o = ctl_offline()
        .args(["--json", "--help"])
        .output()
        .expect("runs");
    assert!(o.status.success());
    assert!(
        text(&o).0.starts_with("Control a running stringdriverd"),
        "{}",
        text(&o).0
    );
}

#[test]
fn a_mistyped_setting_name_is_refused_with_a_suggestion() {
    let o = ctl_offline()
        .args(["set", "z_rst", "0.5"])
        .output()
        .expect("runs");
    assert_refused_with_suggestion(&o, "z_rest");
    let o = ctl_offline()
        .args(["get", "amp_sum_mn"])
        .output()
        .expect("runs");
    assert_refused_with_suggestion(&o, "amp_sum_min");
}

#[test]
fn help_lists_kinds_profiles_and_every_setting_with_its_unit() {
    let o = ctl_offline()
        .args(["op", "run", "--help"])
        .output()
        .expect("runs");
    let (out, _) = text(&o);
    assert!(o.status.success());
    let kinds = stringdriverd::store::OperationType::ALL.map(|k| k.as_str());
    assert!(
        out.contains(&format!("[possible values: {}]", kinds.join(", "))),
        "{out}"
    );
    let o = ctl_offline()
        .args(["set", "--help"])
        .output()
        .expect("runs");
    let (out, _) = text(&o);
    assert!(o.status.success());
    for s in stringdriverd::state::SETTING_INFO {
        let line = out
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{} ", s.name)))
            .unwrap_or_else(|| panic!("no line for {}: {out}", s.name));
        assert!(line.contains(s.unit), "{line}");
    }
    assert!(
        out.contains("z_rest") && out.contains("seconds, 0 to 3600"),
        "{out}"
    );
    for sub in ["probe", "sim-controller"] {
        let o = bin().args([sub, "--help"]).output().expect("runs");
        let (out, _) = text(&o);
        assert!(
            out.contains("[possible values: v2, v1, tuner]"),
            "{sub}: {out}"
        );
        assert!(out.contains("[possible values: 2, 4]"), "{sub}: {out}");
    }
    let o = bin()
        .args(["probe", "--port", "/dev/null", "--profile", "tunr"])
        .output()
        .expect("runs");
    assert_refused_with_suggestion(&o, "tuner");
}

#[test]
fn every_subcommand_with_a_configuration_defaults_to_the_hosts_file() {
    let default = "/etc/stringdriver/stringdriver.toml";
    if Path::new(default).exists() {
        // A host with the real file: the default is taken, nothing to prove here.
        return;
    }
    for sub in [
        &["run"][..],
        &["check-config"],
        &["migrate"],
        &["link"],
        &["spool-status"],
    ] {
        let o = bin().args(sub).output().expect("runs");
        let (_, err) = text(&o);
        assert_eq!(o.status.code(), Some(1), "{sub:?}: {err}");
        assert!(err.contains(default), "{sub:?}: {err}");
        let o = bin().args(sub).arg("--help").output().expect("runs");
        let (out, _) = text(&o);
        assert!(
            out.contains(&format!("[default: {default}]")),
            "{sub:?}: {out}"
        );
    }
}

#[test]
fn a_demo_started_outside_the_checkout_says_where_its_configuration_is() {
    let dir = tempfile::tempdir().expect("tempdir");
    let o = bin()
        .arg("demo")
        .current_dir(dir.path())
        .output()
        .expect("runs");
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("no config/demo.toml in"), "{err}");
    // This test runs from the checkout, so the message names its file.
    assert!(
        err.contains(&format!(
            "--config {}",
            manifest("config/demo.toml").display()
        )),
        "{err}"
    );
}

#[test]
fn completions_are_generated_for_every_shell_naming_the_subcommands() {
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let o = ctl_offline()
            .args(["completions", shell])
            .output()
            .expect("runs");
        let (out, err) = text(&o);
        assert!(o.status.success(), "{shell}: {err}");
        for word in ["status", "steppers", "set-position"] {
            assert!(out.contains(word), "{shell} lacks {word}: {out}");
        }
        // The shells whose scripts complete argument values offer the
        // possible values too.
        if ["bash", "zsh", "fish"].contains(&shell) {
            for word in ["z_calibrate", "bump_check_enable"] {
                assert!(out.contains(word), "{shell} lacks {word}: {out}");
            }
        }
    }
    let o = ctl_offline()
        .args(["completions", "tcsh"])
        .output()
        .expect("runs");
    assert_eq!(
        o.status.code(),
        Some(2),
        "an unknown shell is a usage error"
    );
}

#[test]
fn man_pages_are_roff_describing_each_program_and_its_subcommands() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (mut c, name, sub) in [
        (ctl_offline(), "stringdriverctl", "steppers"),
        (bin(), "stringdriverd", "check-config"),
    ] {
        let o = c.arg("man").output().expect("runs");
        let (out, err) = text(&o);
        assert!(o.status.success(), "{name}: {err}");
        // clap_mangen starts with the quote-character preamble, then the title.
        let title = out.lines().find(|l| l.starts_with(".TH")).unwrap_or("");
        assert!(
            title.starts_with(&format!(".TH {name} 1 ")),
            "{name}: {out}"
        );
        assert!(
            out.contains(".SH NAME") && out.contains(".SH SYNOPSIS"),
            "{out}"
        );
        assert!(
            out.contains(&sub.replace('-', "\\-")),
            "{name} lacks {sub}: {out}"
        );
        // groff, where installed, reads it without a warning.
        if let Ok(mut g) = Command::new("groff")
            .args(["-man", "-Tutf8", "-ww", "-z"])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
        {
            use std::io::Write;
            g.stdin
                .take()
                .expect("stdin")
                .write_all(out.as_bytes())
                .expect("write");
            let g = g.wait_with_output().expect("groff");
            assert!(
                g.status.success() && g.stderr.is_empty(),
                "{}",
                String::from_utf8_lossy(&g.stderr)
            );
        }
        // With --out-dir: the program's page and one per subcommand, as the
        // program's page refers to them.
        let o = Command::new(c.get_program())
            .args(["man", "--out-dir"])
            .arg(dir.path())
            .output()
            .expect("runs");
        assert!(o.status.success(), "{}", text(&o).1);
        for page in [format!("{name}.1"), format!("{name}-{sub}.1")] {
            let p = dir.path().join(&page);
            let body = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{page}: {e}"));
            assert!(body.contains(".TH "), "{page}: {body}");
        }
        assert!(
            !dir.path().join(format!("{name}-man.1")).exists(),
            "hidden: no page"
        );
    }
}
