//! The running daemon end to end: simulated boards and feed, real
//! PostgreSQL, in-process (`run_with`) and as a real process with real signals.

mod common;

use std::path::Path;
use std::time::Duration;

use common::control::{boards_connected, request};
use common::machine::{
    pose, set_pose, static_feed_values, static_frame, InProcess, MachineOptions, SimMachine, WAIT,
};
use common::pg::TestDb;
use stringdriverd::daemon;
use stringdriverd::sim::feed::FeedWriter;
use stringdriverd::sim::Fault;

const HOST: &str = "sd-e2e";

/// The simulated machine shipping to `db`, linking controls rows by `latest`.
fn machine(db: &TestDb) -> SimMachine {
    let mut o = MachineOptions::new(HOST);
    o.db_url = Some(db.url());
    o.link_latest = true;
    SimMachine::start(o)
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
    let (vc, amp) = static_feed_values();
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
    let rig = machine(&db);
    let run = InProcess::start(&rig).await;
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

    run.stop().await;
    drop(rig);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unplug_and_audmon_restart_pause_the_rows_and_they_resume_truthfully() {
    let db = TestDb::create().await;
    let mut rig = machine(&db);
    let run = InProcess::start(&rig).await;
    set_pose(&run.parts).await;
    wait_rows(&db, 3).await;
    let snaps = run.parts.snapshots.clone();

    // Paused for the board: judged on the skip counter of that reason, not
    // on the words of the reason.
    let skipped = |s: &stringdriverd::snapshot::SnapshotStatus, key: &str| {
        s.skipped.get(key).copied().unwrap_or(0)
    };
    let board_down = skipped(&snaps.status(), "board_down");
    rig.sims[0].inject(Fault::Vanish);
    let mut w = snaps.watch();
    tokio::time::timeout(
        WAIT,
        w.wait_for(|s| s.unknown.is_some() && skipped(s, "board_down") > board_down),
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

    let feed_not_ok = skipped(&snaps.status(), "feed_not_ok");
    rig.static_feed().remove().expect("audmon stops");
    tokio::time::timeout(
        WAIT,
        w.wait_for(|s| s.unknown.is_some() && skipped(s, "feed_not_ok") > feed_not_ok),
    )
    .await
    .expect("paused for the feed")
    .expect("engine");
    let mut feed = FeedWriter::create(&rig.dir.path().join("shm"), 6, 12).expect("audmon restarts");
    feed.write_frame(&static_frame()).expect("frame");
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
    run.stop().await;
    // Everything captured reached PostgreSQL, and every row is true.
    let all = rows(&db).await;
    let spool = stringdriverd::store::Spool::open_read_only(&rig.dir.path().join("spool.sqlite"))
        .expect("spool");
    // Counted after the stop, from the spool's own totals: the engine's
    // status read earlier can be a timer tick behind.
    let spooled = spool.status().expect("status");
    assert_eq!(
        all.len() + spooled.backlog as usize,
        spooled.captured_snapshots as usize,
        "every captured row is in PostgreSQL or the spool"
    );
    assert!(spooled.captured_snapshots > st.timer + st.events);
    assert_truthful(&all);
}

#[tokio::test]
async fn an_unmigrated_database_stops_the_start_naming_the_command() {
    let db = TestDb::create().await;
    let rig = machine(&db);
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

/// Waits until the daemon's structured `status` satisfies `ok`.
async fn wait_status(socket: &Path, what: &str, ok: impl Fn(&serde_json::Value) -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let st = request(
            socket,
            serde_json::json!({"v": 1, "cmd": "status"}),
            Duration::from_secs(5),
        )
        .await;
        if st.as_ref().is_ok_and(&ok) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never {what}: {st:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn signal(child: &std::process::Child, s: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), s).expect("signal");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_with_a_broken_file_keeps_running_and_sigterm_stops_in_time_losing_nothing() {
    let db = TestDb::create().await;
    let rig = machine(&db);
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
    wait_status(&rig.socket(), "both boards connected", boards_connected).await;
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
    wait_status(&rig.socket(), "z_rest 0.07 applied", |s| {
        s["settings"]["z_rest"].as_f64() == Some(0.07)
    })
    .await;

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
    let rig = machine(&db);
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
    let rig = machine(&db);
    let run = InProcess::start(&rig).await;
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
    run.stop().await;

    let again = InProcess::start(&rig).await;
    let enabled = again.parts.settings.borrow().enabled.clone();
    assert!(!enabled[5], "still disabled after the restart");
    assert_eq!(enabled.iter().filter(|e| !**e).count(), 1);
    again.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operation_interrupted_by_a_kill_is_closed_as_failed_at_the_next_start() {
    use stringdriverd::store::{OperationEvent, OperationStatus, OperationType, Record, Spool};
    let db = TestDb::create().await;
    let rig = machine(&db);
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
    let run = InProcess::start(&rig).await;
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
    run.stop().await;
}
