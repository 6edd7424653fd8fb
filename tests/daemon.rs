//! The running daemon end to end: simulated boards and feed, real
//! PostgreSQL, in-process (`run_with`) and as a real process with real signals.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::pg::TestDb;
use stringdriverd::daemon::{self, Parts};
use stringdriverd::protocol::Firmware;
use stringdriverd::sim::feed::{partials_for_distance, FeedWriter};
use stringdriverd::sim::{Fault, Profile, SimHandle, SimOptions, Simulator};

const WAIT: Duration = Duration::from_secs(20);
const HOST: &str = "sd-e2e";

/// The pose the tests set: X at 100, Z steppers 20 + index, tuners 1000 + index.
fn pose() -> Vec<i32> {
    (0..19)
        .map(|g| match g {
            0 => 100,
            1..=12 => 20 + g,
            _ => 1000 + g,
        })
        .collect()
}

fn config_text(dir: &Path, db_url: &str) -> String {
    let d = dir.display();
    format!(
        r#"
host = "{HOST}"

[[boards]]
name = "carriage"
port = "{d}/carriage"
int_bytes = 2
firmware = "v2"
steppers = 13
reset_wait = "150ms"
poll_interval = "50ms"
reply_timeout = "300ms"
move_margin = "30ms"

[[boards]]
name = "tuner"
port = "{d}/tuner"
int_bytes = 4
firmware = "tuner"
steppers = 6
reset_wait = "150ms"
poll_interval = "50ms"
reply_timeout = "300ms"
move_margin = "30ms"

[layout]
strings = 6
x_index = 0
z_first_index = 1
tuner_first_index = 13
# The simulators run 20 times faster than the real firmware.
x_speed = 10000.0
z_speed = 2000.0
tuner_speed = 2000.0

[operations]
z_rest = 0.05

[snapshot]
interval = "100ms"
link = "latest"
link_max_age = "1h"

[feed]
dir = "{d}/shm"
interval = "20ms"
stale_after = "5s"

[database]
url = "{db_url}"
auto_migrate = true
connect_timeout = "2s"

[spool]
path = "{d}/spool.sqlite"

[control]
socket = "{d}/control.sock"
"#
    )
}

struct Rig {
    dir: tempfile::TempDir,
    sims: Vec<SimHandle>,
    feed: FeedWriter,
    cfg_path: PathBuf,
}

fn sims_and_feed(dir: tempfile::TempDir, db_url: &str) -> Rig {
    let mut sims = Vec::new();
    for (name, fw) in [("carriage", Firmware::V2), ("tuner", Firmware::Tuner)] {
        let mut o = SimOptions::new(Profile::for_firmware(fw, None));
        o.speed_scale = 20.0;
        sims.push(Simulator::spawn(o, &dir.path().join(name)).expect("sim"));
    }
    std::fs::create_dir_all(dir.path().join("shm")).expect("shm dir");
    let mut feed = FeedWriter::create(&dir.path().join("shm"), 6, 12).expect("feed");
    feed.write_frame(&frame()).expect("frame");
    let cfg_path = dir.path().join("stringdriver.toml");
    std::fs::write(&cfg_path, config_text(dir.path(), db_url)).expect("config");
    Rig {
        dir,
        sims,
        feed,
        cfg_path,
    }
}

fn frame() -> Vec<Vec<(f32, f32)>> {
    (0..6)
        .map(|c| partials_for_distance(20.0 + c as f32 * 7.0, 12, c as u64))
        .collect()
}

fn expected_feed() -> (Vec<i32>, Vec<f32>) {
    let f = frame();
    (
        f.iter()
            .map(|ch| ch.iter().filter(|(_, a)| *a > 0.0).count() as i32)
            .collect(),
        f.iter()
            .map(|ch| ch.iter().map(|(_, a)| *a).sum())
            .collect(),
    )
}

struct Running {
    parts: Parts,
    stop: tokio::sync::watch::Sender<bool>,
    _reload: tokio::sync::mpsc::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), daemon::DaemonError>>,
}

async fn start(rig: &Rig) -> Running {
    let cfg = stringdriverd::config::load(&rig.cfg_path).expect("config");
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let (reload, reload_rx) = tokio::sync::mpsc::channel(1);
    let (tx, rx) = tokio::sync::oneshot::channel();
    let path = rig.cfg_path.clone();
    let task = tokio::spawn(async move {
        let mut tx = Some(tx);
        daemon::run_with(path, cfg, stop_rx, reload_rx, move |p| {
            if let Some(tx) = tx.take() {
                let _ = tx.send(p.clone());
            }
        })
        .await
    });
    let parts = tokio::time::timeout(WAIT, rx)
        .await
        .expect("started")
        .expect("parts");
    Running {
        parts,
        stop,
        _reload: reload,
        task,
    }
}

/// Stops the daemon as SIGTERM would and checks it ended well within 5 s.
async fn stop(run: Running) {
    let _ = run.stop.send(true);
    tokio::time::timeout(Duration::from_secs(5), run.task)
        .await
        .expect("stops in time")
        .expect("join")
        .expect("ok");
}

/// Sets every counter to the pose, as an operator does after calibrating.
async fn set_pose(parts: &Parts) {
    let pose = pose();
    let mut g = 0;
    for b in &parts.boards {
        b.wait_for(WAIT, |s| {
            s.link == stringdriverd::board::LinkState::Connected
        })
        .await
        .expect("board connected");
        for local in 0..b.steppers() {
            b.set_stepper(local, pose[g]).await.expect("set_stepper");
            g += 1;
        }
    }
}

async fn rows(db: &TestDb) -> Vec<tokio_postgres::Row> {
    db.client()
        .await
        .query(
            "SELECT state_id, stepper_positions, stepper_enabled, voice_count, amp_sum, controls_id, voice_count_min FROM machine_state WHERE host = $1 ORDER BY recorded_at",
            &[&HOST],
        )
        .await
        .expect("query")
}

async fn wait_rows(db: &TestDb, at_least: usize) -> Vec<tokio_postgres::Row> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let r = rows(db).await;
        if r.len() >= at_least {
            return r;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} rows, want {at_least}",
            r.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every row tells the truth: the pose, the feed's values, full arrays.
fn assert_truthful(rows: &[tokio_postgres::Row]) {
    let (vc, amp) = expected_feed();
    for r in rows {
        let positions: Vec<i32> = r.get(1);
        let enabled: Vec<bool> = r.get(2);
        let voices: Vec<i32> = r.get(3);
        let sums: Vec<f32> = r.get(4);
        let vmin: Vec<i32> = r.get(6);
        assert_eq!(positions, pose());
        assert_eq!(
            (enabled.len(), voices.len(), sums.len(), vmin.len()),
            (19, 6, 6, 6)
        );
        assert_eq!(voices, vc);
        for (a, b) in sums.iter().zip(&amp) {
            assert!((a - b).abs() < 1e-3, "{sums:?} vs {amp:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_to_end_rows_match_the_simulators_and_the_feed_and_the_schema_queries_find_them() {
    let db = TestDb::create().await;
    let rig = sims_and_feed(tempfile::tempdir().expect("tempdir"), &db.url());
    let run = start(&rig).await;
    // An audmon frame for this host, linked by `link = latest`.
    let controls_id = uuid::Uuid::new_v4();
    let c = db.client().await;
    // auto_migrate creates the tables at start; wait for them.
    let deadline = tokio::time::Instant::now() + WAIT;
    while !c
        .query_one("SELECT to_regclass('controls') IS NOT NULL", &[])
        .await
        .map(|r| r.get::<_, bool>(0))
        .unwrap_or(false)
    {
        assert!(tokio::time::Instant::now() < deadline, "migrated");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    c.execute(
        "INSERT INTO controls (controls_id, host, recorded_at) VALUES ($1, $2, now())",
        &[&controls_id, &HOST],
    )
    .await
    .expect("controls row");
    c.execute(
        "INSERT INTO partials (controls_id, channel, partial_index, frequency, amplitude) VALUES ($1, 0, 0, 110.0, 0.5)",
        &[&controls_id],
    )
    .await
    .expect("partial");

    assert_eq!(
        rows(&db).await.len(),
        0,
        "untrusted counters: nothing is written"
    );
    set_pose(&run.parts).await;
    let got = wait_rows(&db, 10).await;
    assert_truthful(&got);
    let linked = got
        .iter()
        .filter(|r| r.get::<_, Option<uuid::Uuid>>(5) == Some(controls_id))
        .count();
    assert!(linked > 0, "latest linking set controls_id");
    assert!(
        run.parts
            .snapshots
            .status()
            .skipped
            .get("counters_untrusted")
            .copied()
            .unwrap_or(0)
            > 0
    );

    // The schema document's first query (its stray comma before FROM removed) finds them.
    let q1 = "SELECT c.controls_id, c.recorded_at, p.channel, p.frequency, p.amplitude, ms.stepper_positions, ms.z_up_step, ms.adjustment_level \
              FROM controls c JOIN partials p ON c.controls_id = p.controls_id JOIN machine_state ms ON c.controls_id = ms.controls_id \
              WHERE c.host = $1 ORDER BY c.recorded_at, p.channel, p.partial_index";
    let joined = c.query(q1, &[&HOST]).await.expect("query 1");
    assert!(!joined.is_empty());
    assert_eq!(joined[0].get::<_, Vec<i32>>(5), pose());

    stop(run).await;
    drop(rig);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unplug_and_audmon_restart_pause_the_rows_and_they_resume_truthfully() {
    let db = TestDb::create().await;
    let rig = sims_and_feed(tempfile::tempdir().expect("tempdir"), &db.url());
    let run = start(&rig).await;
    set_pose(&run.parts).await;
    wait_rows(&db, 3).await;
    let snaps = run.parts.snapshots.clone();

    rig.sims[0].inject(Fault::Vanish);
    let mut w = snaps.watch();
    tokio::time::timeout(
        WAIT,
        w.wait_for(|s| s.unknown.as_deref().is_some_and(|u| u.contains("carriage"))),
    )
    .await
    .expect("paused for the board")
    .expect("engine");
    rig.sims[0].inject(Fault::Reappear);
    // The board reset when it came back; the driver restores its counters,
    // then snapshots resume.
    tokio::time::timeout(WAIT, w.wait_for(|s| s.unknown.is_none()))
        .await
        .expect("resumed")
        .expect("engine");
    assert_eq!(
        rig.sims[0].counters(),
        pose()[..13].to_vec(),
        "counters restored on the board"
    );

    rig.feed.remove().expect("audmon stops");
    tokio::time::timeout(
        WAIT,
        w.wait_for(|s| s.unknown.as_deref().is_some_and(|u| u.contains("feed"))),
    )
    .await
    .expect("paused for the feed")
    .expect("engine");
    let mut feed = FeedWriter::create(&rig.dir.path().join("shm"), 6, 12).expect("audmon restarts");
    feed.write_frame(&frame()).expect("frame");
    tokio::time::timeout(WAIT, w.wait_for(|s| s.unknown.is_none()))
        .await
        .expect("resumed")
        .expect("engine");
    let timer_now = snaps.status().timer;
    tokio::time::timeout(WAIT, w.wait_for(|s| s.timer >= timer_now + 3))
        .await
        .expect("more rows")
        .expect("engine");

    let st = snaps.status();
    assert!(
        st.skipped.get("board_down").copied().unwrap_or(0) > 0,
        "{st:?}"
    );
    assert!(
        st.skipped.get("feed_not_ok").copied().unwrap_or(0) > 0,
        "{st:?}"
    );
    stop(run).await;
    // Everything captured reached PostgreSQL, and every row is true.
    let all = rows(&db).await;
    let spool = stringdriverd::store::Spool::open_read_only(&rig.dir.path().join("spool.sqlite"))
        .expect("spool");
    let backlog = spool.status().expect("status").backlog as usize;
    assert_eq!(
        all.len() + backlog,
        (st.timer + st.events) as usize + 1,
        "every captured row is in PostgreSQL or the spool (+1: the final snapshot)"
    );
    assert_truthful(&all);
}

#[tokio::test]
async fn an_unmigrated_database_stops_the_start_naming_the_command() {
    let db = TestDb::create().await;
    let rig = sims_and_feed(tempfile::tempdir().expect("tempdir"), &db.url());
    let text = std::fs::read_to_string(&rig.cfg_path)
        .expect("read")
        .replace("auto_migrate = true", "auto_migrate = false");
    std::fs::write(&rig.cfg_path, text).expect("write");
    let cfg = stringdriverd::config::load(&rig.cfg_path).expect("config");
    let (_stop, stop_rx) = tokio::sync::watch::channel(false);
    let (_reload, reload_rx) = tokio::sync::mpsc::channel(1);
    let r = daemon::run_with(rig.cfg_path.clone(), cfg, stop_rx, reload_rx, |_| {}).await;
    let e = r.expect_err("refused").to_string();
    assert!(e.contains("stringdriverd migrate"), "{e}");
}

// ---- as a real process, with real signals ----

fn spawn_run(cfg: &Path) -> (std::process::Child, std::sync::mpsc::Receiver<String>) {
    use std::io::BufRead;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_stringdriverd"))
        .args(["run", "--config"])
        .arg(cfg)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run starts");
    let err = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(err).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (child, rx)
}

fn wait_line(
    rx: &std::sync::mpsc::Receiver<String>,
    log: &mut Vec<String>,
    needle: &str,
) -> String {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        if let Some(l) = log.iter().find(|l| l.contains(needle)) {
            return l.clone();
        }
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) => log.push(l),
            Err(_) => panic!("no log line with {needle:?}; log:\n{}", log.join("\n")),
        }
    }
}

fn signal(child: &std::process::Child, s: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), s).expect("signal");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_with_a_broken_file_keeps_running_and_sigterm_stops_in_time_losing_nothing() {
    let db = TestDb::create().await;
    let rig = sims_and_feed(tempfile::tempdir().expect("tempdir"), &db.url());
    // As after an earlier run: the counters file knows the pose.
    let pose = pose();
    let counters = serde_json::json!({
        "format": 1,
        "boards": {
            "carriage": {"positions": &pose[..13], "trusted": vec![true; 13], "saved_at": "2026-11-25T00:00:00Z"},
            "tuner": {"positions": &pose[13..], "trusted": vec![true; 6], "saved_at": "2026-11-25T00:00:00Z"},
        }
    });
    std::fs::write(rig.dir.path().join("counters.json"), counters.to_string()).expect("counters");
    let good = std::fs::read_to_string(&rig.cfg_path).expect("config");

    let (mut child, rx) = spawn_run(&rig.cfg_path);
    let mut log = Vec::new();
    wait_line(&rx, &mut log, "ready");
    let before = wait_rows(&db, 3).await.len();

    std::fs::write(&rig.cfg_path, "this is = = not toml").expect("break the file");
    signal(&child, nix::sys::signal::Signal::SIGHUP);
    wait_line(&rx, &mut log, "the new configuration is invalid");
    wait_rows(&db, before + 5).await; // still running on the old configuration

    std::fs::write(
        &rig.cfg_path,
        good.replace("z_rest = 0.05", "z_rest = 0.07"),
    )
    .expect("fix the file");
    signal(&child, nix::sys::signal::Signal::SIGHUP);
    let applied = wait_line(&rx, &mut log, "SIGHUP: applied");
    assert!(applied.contains("operations.z_rest"), "{applied}");

    let t = std::time::Instant::now();
    signal(&child, nix::sys::signal::Signal::SIGTERM);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "did not stop within 5 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
    while let Ok(l) = rx.recv_timeout(Duration::from_secs(2)) {
        log.push(l);
    }
    let last = wait_line(&rx, &mut log, "final snapshot captured");
    let id = last
        .split("state_id=")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .expect("state_id in the line");
    let id: uuid::Uuid = id.parse().expect("uuid");
    // Nothing lost: the final snapshot is in PostgreSQL or still in the spool.
    let in_pg: i64 = db
        .client()
        .await
        .query_one(
            "SELECT count(*) FROM machine_state WHERE state_id = $1",
            &[&id],
        )
        .await
        .expect("q")
        .get(0);
    let in_spool = {
        let (mut s, _) =
            stringdriverd::store::Spool::open(&rig.dir.path().join("spool.sqlite"), 1 << 30)
                .expect("spool");
        s.peek(100_000)
            .expect("peek")
            .iter()
            .any(|r| matches!(&r.record, stringdriverd::store::Record::MachineState { row, .. } if row.state_id == id))
    };
    assert!(in_pg == 1 || in_spool, "final snapshot lost");
    assert_truthful(&rows(&db).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn systemd_hears_ready_status_watchdog_and_stopping() {
    let db = TestDb::create().await;
    let rig = sims_and_feed(tempfile::tempdir().expect("tempdir"), &db.url());
    let sock_path = rig.dir.path().join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).expect("notify socket");
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_stringdriverd"))
        .args(["run", "--config"])
        .arg(&rig.cfg_path)
        .env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "1000000")
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("run starts");
    let mut seen = String::new();
    let deadline = std::time::Instant::now() + WAIT;
    let mut buf = [0u8; 4096];
    let mut stopped = false;
    while std::time::Instant::now() < deadline {
        if let Ok(n) = sock.recv(&mut buf) {
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
            seen.push('\n');
        }
        let have = |s: &str| seen.contains(s);
        if have("READY=1") && have("STATUS=boards: carriage") && have("WATCHDOG=1") && !stopped {
            signal(&child, nix::sys::signal::Signal::SIGTERM);
            stopped = true;
        }
        if stopped && have("STOPPING=1") {
            break;
        }
    }
    let status = child.wait().expect("wait");
    assert!(status.success());
    for s in [
        "READY=1",
        "STATUS=boards: carriage",
        "WATCHDOG=1",
        "STOPPING=1",
    ] {
        assert!(seen.contains(s), "missing {s} in:\n{seen}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stepper_disabled_at_run_time_stays_disabled_after_a_restart() {
    let db = TestDb::create().await;
    let rig = sims_and_feed(tempfile::tempdir().expect("tempdir"), &db.url());
    let run = start(&rig).await;
    assert!(run.parts.settings.borrow().enabled[5]);
    // As bump_check does for a stepper stuck on its string.
    run.parts.settings.send_modify(|s| s.enabled[5] = false);
    let state = rig.dir.path().join("state.json");
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let saved = std::fs::read_to_string(&state).unwrap_or_default();
        if saved.contains("false") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "enables saved: {:?} {saved:?} {:?}",
            std::fs::read_dir(rig.dir.path()).map(|d| d
                .filter_map(|e| e.ok())
                .map(|e| e.file_name())
                .collect::<Vec<_>>()),
            run.parts.settings.borrow().enabled
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop(run).await;

    let again = start(&rig).await;
    let enabled = again.parts.settings.borrow().enabled.clone();
    assert!(!enabled[5], "still disabled after the restart");
    assert_eq!(enabled.iter().filter(|e| !**e).count(), 1);
    stop(again).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operation_interrupted_by_a_kill_is_closed_as_failed_at_the_next_start() {
    use stringdriverd::store::{OperationEvent, OperationStatus, OperationType, Record, Spool};
    let db = TestDb::create().await;
    let rig = sims_and_feed(tempfile::tempdir().expect("tempdir"), &db.url());
    // What a daemon killed in the middle of a z_calibrate left in its spool.
    let operation_id = uuid::Uuid::new_v4();
    let started = OperationEvent {
        operation_id,
        state_id: None,
        host: HOST.into(),
        recorded_at: chrono::Utc::now(),
        operation_type: OperationType::ZCalibrate,
        operation_status: OperationStatus::Started,
        message: None,
        stepper_indices: vec![1, 2],
        final_positions: vec![21, 22],
        completed_at: None,
    };
    {
        let (mut spool, _) =
            Spool::open(&rig.dir.path().join("spool.sqlite"), 1 << 30).expect("spool");
        spool
            .append_run_here(&[Record::Operation { event: started }])
            .expect("append");
    }
    let run = start(&rig).await;
    let client = db.client().await;
    let deadline = tokio::time::Instant::now() + WAIT;
    let row = loop {
        let rows = client
            .query(
                "SELECT operation_status, message, final_positions, completed_at IS NOT NULL \
                 FROM operations WHERE operation_id = $1",
                &[&operation_id],
            )
            .await
            .unwrap_or_default();
        if let Some(r) = rows.into_iter().next() {
            if r.get::<_, String>(0) != "started" {
                break r;
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "never closed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(row.get::<_, String>(0), "failed");
    assert_eq!(
        row.get::<_, Option<String>>(1).as_deref(),
        Some(daemon::INTERRUPTED_MESSAGE)
    );
    assert_eq!(row.get::<_, Vec<i32>>(2), vec![21, 22]);
    assert!(row.get::<_, bool>(3));
    assert_eq!(
        run.parts
            .spool
            .status()
            .await
            .expect("status")
            .running_operations,
        0
    );
    stop(run).await;
}
