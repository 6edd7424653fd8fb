//! CPU and resident memory of `stringdriverd run` (release build) on
//! simulated hardware: 19 steppers (13 + 6), 6 channels, snapshots at 1 Hz
//! and at 20 Hz, shipping to PostgreSQL at DATABASE_URL (a database it
//! creates and drops). The baseline, measured side by side over the same
//! window, is `stringdriverd sim-controller`: the same binary doing the least
//! a process of it can do (one simulated board).
//!
//! `cargo build --release && cargo bench --bench daemon`
//! (`DAEMON_BENCH_SECS` sets the measuring window, default 20 s).

#[path = "../tests/common/procstat.rs"]
mod procstat;

use procstat::sample;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use stringdriverd::protocol::Firmware;
use stringdriverd::sim::feed::{partials_for_distance, FeedWriter};
use stringdriverd::sim::{Profile, SimOptions, Simulator};

fn bin() -> std::path::PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/release/stringdriverd");
    assert!(p.exists(), "build it first: cargo build --release");
    p
}

fn config(dir: &Path, db_url: &str, interval: &str) -> String {
    let d = dir.display();
    format!(
        r#"host = "sd-bench"
[[boards]]
name = "carriage"
port = "{d}/carriage"
int_bytes = 2
firmware = "v2"
steppers = 13
reset_wait = "300ms"
[[boards]]
name = "tuner"
port = "{d}/tuner"
int_bytes = 4
firmware = "tuner"
steppers = 6
reset_wait = "300ms"
[layout]
strings = 6
x_index = 0
z_first_index = 1
tuner_first_index = 13
[snapshot]
interval = "{interval}"
[feed]
dir = "{d}/shm"
[database]
url = "{db_url}"
auto_migrate = true
[spool]
path = "{d}/spool.sqlite"
[control]
socket = "{d}/control.sock"
[log]
level = "warn"
"#
    )
}

fn measure(label: &str, interval: &str, secs: u64, admin: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let db = format!("sd_bench_daemon_{}", std::process::id());
    let query = |url: &str, sql: &str| -> i64 {
        let rt = tokio::runtime::Runtime::new().expect("rt");
        rt.block_on(async {
            let (c, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
                .await
                .expect("PostgreSQL at DATABASE_URL");
            tokio::spawn(conn);
            if sql.starts_with("SELECT") {
                c.query_one(sql, &[]).await.expect("sql").get(0)
            } else {
                c.batch_execute(sql).await.expect("sql");
                0
            }
        })
    };
    let psql = |sql: &str| {
        query(admin, sql);
    };
    psql(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"));
    psql(&format!("CREATE DATABASE {db}"));
    let db_url = match admin.rsplit_once('/') {
        Some((base, _)) => format!("{base}/{db}"),
        None => panic!("DATABASE_URL needs a database name"),
    };
    let mut sims = Vec::new();
    for (name, fw) in [("carriage", Firmware::V2), ("tuner", Firmware::Tuner)] {
        let mut o = SimOptions::new(Profile::for_firmware(fw, None));
        o.reset_window = Duration::from_millis(200);
        sims.push(Simulator::spawn(o, &d.join(name)).expect("sim"));
    }
    std::fs::create_dir_all(d.join("shm")).expect("shm");
    let mut feed = FeedWriter::create(&d.join("shm"), 6, 12).expect("feed");
    // audmon writes a few frames a second and real frames never repeat
    // exactly (an unchanged frame means a stale feed): wobble the pitch.
    let stop_feed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let feed_thread = {
        let stop = stop_feed.clone();
        std::thread::spawn(move || {
            let mut k = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let frame: Vec<Vec<(f32, f32)>> = (0..6)
                    .map(|c| {
                        partials_for_distance(20.0, 12, c)
                            .into_iter()
                            .map(|(f, a)| (f * (1.0 + (k % 7) as f32 * 1e-4), a))
                            .collect()
                    })
                    .collect();
                let _ = feed.write_frame(&frame);
                k += 1;
                std::thread::sleep(Duration::from_millis(200));
            }
        })
    };
    // Known counters, as after an earlier run, so that snapshots are written.
    let counters = format!(
        r#"{{"format":1,"boards":{{"carriage":{{"positions":{:?},"trusted":{:?},"saved_at":"2026-01-01T00:00:00Z"}},"tuner":{{"positions":{:?},"trusted":{:?},"saved_at":"2026-01-01T00:00:00Z"}}}}}}"#,
        vec![20; 13],
        vec![true; 13],
        vec![0; 6],
        vec![true; 6]
    );
    std::fs::write(d.join("counters.json"), counters).expect("counters");
    let cfg = d.join("bench.toml");
    std::fs::write(&cfg, config(d, &db_url, interval)).expect("config");

    let spawn = |args: &[&str]| -> Child {
        Command::new(bin())
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn")
    };
    let mut daemon = spawn(&["run", "--config", &cfg.display().to_string()]);
    let link = d.join("baseline-board").display().to_string();
    let mut baseline = spawn(&["sim-controller", "--profile", "v2", "--link", &link]);
    // Warm-up: boards opened, reset waited out, spool and connections set up.
    std::thread::sleep(Duration::from_secs(5));
    let (c0, _) = sample(daemon.id());
    let (b0, _) = sample(baseline.id());
    let t0 = Instant::now();
    let mut peak = (0, 0);
    while t0.elapsed() < Duration::from_secs(secs) {
        std::thread::sleep(Duration::from_millis(500));
        peak.0 = peak.0.max(sample(daemon.id()).1);
        peak.1 = peak.1.max(sample(baseline.id()).1);
    }
    let wall = t0.elapsed().as_secs_f64();
    let (c1, rss) = sample(daemon.id());
    let (b1, brss) = sample(baseline.id());
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(daemon.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(baseline.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = daemon.wait();
    let _ = baseline.wait();
    stop_feed.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = feed_thread.join();
    // A measurement of a daemon that wrote nothing would be worthless.
    let rows = query(&db_url, "SELECT count(*) FROM machine_state");
    assert!(rows > 0, "{label}: no rows were shipped");
    println!(
        "{label}: {rows} rows in PostgreSQL after {:.0} s of running (warm-up included)",
        wall + 5.0
    );
    psql(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"));
    let cpu = (c1 - c0) / wall * 100.0;
    let bcpu = (b1 - b0) / wall * 100.0;
    println!(
        "{label}: daemon {cpu:.2}% of one core, {:.1} MiB resident (peak {:.1}) | baseline sim-controller {bcpu:.2}%, {:.1} MiB | memory ratio {:.2}",
        rss as f64 / 1024.0,
        peak.0 as f64 / 1024.0,
        brss as f64 / 1024.0,
        rss as f64 / brss.max(1) as f64
    );
    drop(sims);
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let admin = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let secs = std::env::var("DAEMON_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    measure("1 Hz snapshots", "1s", secs, &admin);
    measure("20 Hz snapshots", "50ms", secs, &admin);
}
