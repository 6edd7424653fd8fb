//! Export and query benchmarks, each beside its baseline in the same run
//! (issue 14, docs/PERFORMANCE.md):
//!
//! (a) `stringdriverd export` (the release binary, as a child process) of a
//!     generated recording of one host, against `COPY (the same join) TO
//!     STDOUT (FORMAT binary)` of the same rows; and the exporter's peak
//!     resident memory (VmHWM of the child, read from /proc while it runs).
//! (b) the schema document's ML query and operations-history query for one
//!     host and one month on a fleet's machine_state table (10 million rows,
//!     three hosts, generated in the server with generate_series), without
//!     and with the V3 (host, recorded_at) indexes, warm.
//!
//! `cargo build --release --bin stringdriverd && cargo bench --bench export`
//! (PostgreSQL at DATABASE_URL, default postgres://postgres@127.0.0.1:5432/postgres,
//! as a superuser: (b) loads with triggers off). The generated databases
//! (sd_bench_export_N, sd_bench_fleet_N) are kept for the next run; drop them
//! when done. Sizes: EXPORT_BENCH_FRAMES (default 1,000,000),
//! EXPORT_BENCH_STATES (10,000,000); EXPORT_BENCH_PARTS=a or b runs one part;
//! EXPORT_BENCH_RUNS (2) export/COPY pairs in (a).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chrono::{TimeZone, Utc};
use futures::StreamExt;
use tokio_postgres::{Client, NoTls};

#[path = "../tests/common/pg.rs"]
#[allow(dead_code)]
mod pg;

#[path = "../tests/common/recordings.rs"]
#[allow(dead_code)]
mod recordings;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(default)
}

fn admin() -> tokio_postgres::Config {
    let url = std::env::var("DATABASE_URL").unwrap_or_else(|_| pg::DEFAULT_URL.to_string());
    url.parse().expect("DATABASE_URL is a PostgreSQL URL")
}

async fn connect(cfg: &tokio_postgres::Config) -> Client {
    let (c, conn) = cfg.connect(NoTls).await.expect("PostgreSQL answers");
    tokio::spawn(conn);
    c
}

/// The database `name`, and whether it already holds a finished load
/// (a `bench_done` table, written last).
async fn database(name: &str) -> (tokio_postgres::Config, bool) {
    let admin = admin();
    let a = connect(&admin).await;
    let exists = a
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
        .await
        .expect("pg_database")
        .is_some();
    let mut cfg = admin.clone();
    cfg.dbname(name);
    if exists {
        let c = connect(&cfg).await;
        let done = c
            .query_one("SELECT to_regclass('bench_done') IS NOT NULL", &[])
            .await
            .expect("marker")
            .get::<_, bool>(0);
        if done {
            return (cfg, true);
        }
        drop(c);
        a.batch_execute(&format!("DROP DATABASE {name} WITH (FORCE)"))
            .await
            .expect("drop");
    }
    a.batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .expect("create");
    let mut c = connect(&cfg).await;
    stringdriverd::store::migrate::migrate(&mut c)
        .await
        .expect("migrate");
    (cfg, false)
}

fn url(cfg: &tokio_postgres::Config) -> String {
    let host = match cfg.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        _ => "127.0.0.1".into(),
    };
    format!(
        "postgres://{}@{host}:{}/{}",
        cfg.get_user().unwrap_or("postgres"),
        cfg.get_ports().first().copied().unwrap_or(5432),
        cfg.get_dbname().unwrap_or("postgres")
    )
}

async fn db_size(c: &Client) -> String {
    c.query_one(
        "SELECT pg_size_pretty(pg_database_size(current_database()))",
        &[],
    )
    .await
    .expect("size")
    .get(0)
}

fn dir_size(p: &Path) -> u64 {
    let mut total = 0;
    if let Ok(entries) = std::fs::read_dir(p) {
        for e in entries.flatten() {
            let path = e.path();
            total += if path.is_dir() {
                dir_size(&path)
            } else {
                e.metadata().map(|m| m.len()).unwrap_or(0)
            };
        }
    }
    total
}

// ------------------------------------------------------------------ (a)

/// One host's recording: 4 frames a second, 6 channels × 12 partials, a
/// timer snapshot a second, every 4th frame linked, pauses and sweeps.
fn recording(frames: u64) -> recordings::Recording {
    let span = Duration::from_secs_f64(frames as f64 / 4.0);
    let gaps = 8u64;
    recordings::Recording {
        host: "bench-a".into(),
        start: Utc
            .with_ymd_and_hms(2026, 1, 1, 0, 0, 0)
            .single()
            .expect("time"),
        frames,
        fps: 4.0,
        channels: 6,
        partials: 12,
        seed: 11,
        frame_gaps: (1..gaps)
            .map(|k| (frames * k / gaps, chrono::Duration::seconds(30)))
            .collect(),
        state_period: chrono::Duration::seconds(1),
        state_gaps: (1..gaps)
            .map(|k| {
                (
                    chrono::Duration::from_std(span * k as u32 / gaps as u32).expect("span")
                        + chrono::Duration::seconds(600),
                    chrono::Duration::seconds(20),
                )
            })
            .collect(),
        link_every: 4,
        sweeps: (frames / 5000).max(1),
    }
}

/// Runs the release `stringdriverd export` and returns (wall time, peak RSS
/// in KiB, stdout).
fn run_export(db_url: &str, rec: &recordings::Recording, out: &Path) -> (Duration, u64, String) {
    let bin = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/release/stringdriverd");
    assert!(
        bin.is_file(),
        "build the release binary first: cargo build --release --bin stringdriverd"
    );
    let cfg = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/demo.toml");
    let t = Instant::now();
    let mut child = std::process::Command::new(&bin)
        .arg("export")
        .arg("--config")
        .arg(&cfg)
        .args(["--database-url", db_url, "--host", &rec.host])
        .args(["--since", &rec.start.to_rfc3339()])
        .args([
            "--until",
            &(rec.end() + chrono::Duration::seconds(1)).to_rfc3339(),
        ])
        .arg("--out")
        .arg(out)
        .env_remove("DATABASE_URL")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("export starts");
    let status = format!("/proc/{}/status", child.id());
    let mut hwm = 0;
    // VmHWM only grows: the last value read before the exit is the peak
    // (less whatever the last 10 ms added, when the files are closed).
    loop {
        if let Ok(text) = std::fs::read_to_string(&status) {
            if let Some(kb) = text
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            {
                hwm = hwm.max(kb);
            }
        }
        if child.try_wait().expect("wait").is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let elapsed = t.elapsed();
    let output = child.wait_with_output().expect("output");
    assert!(output.status.success(), "export failed");
    (
        elapsed,
        hwm,
        String::from_utf8_lossy(&output.stdout).to_string(),
    )
}

/// `COPY (the exporter's query) TO STDOUT (FORMAT binary)`: (time, bytes).
async fn run_copy(c: &Client, rec: &recordings::Recording) -> (Duration, u64) {
    let sql = stringdriverd::export::query::FRAMES
        .replace("$1", &format!("'{}'", rec.host))
        .replace("$2", &format!("'{}'::timestamptz", rec.start.to_rfc3339()))
        .replace(
            "$3",
            &format!(
                "'{}'::timestamptz",
                (rec.end() + chrono::Duration::seconds(1)).to_rfc3339()
            ),
        )
        .replace("$4", "2000000");
    let t = Instant::now();
    let stream = c
        .copy_out(&format!("COPY ({sql}) TO STDOUT (FORMAT binary)"))
        .await
        .expect("copy out");
    let mut stream = Box::pin(stream);
    let mut bytes = 0u64;
    while let Some(chunk) = stream.next().await {
        bytes += chunk.expect("copy chunk").len() as u64;
    }
    (t.elapsed(), bytes)
}

async fn part_a() {
    let frames = env_u64("EXPORT_BENCH_FRAMES", 1_000_000);
    let name = format!("sd_bench_export_{frames}");
    let rec = recording(frames);
    let (cfg, ready) = database(&name).await;
    let c = connect(&cfg).await;
    if !ready {
        let t = Instant::now();
        let done = recordings::insert(&c, &rec).await;
        c.batch_execute("VACUUM ANALYZE").await.expect("analyze");
        c.batch_execute("CREATE TABLE bench_done ()")
            .await
            .expect("marker");
        println!(
            "(a) generated {} frames, {} partials rows, {} machine_state rows, {} operations in {:.0} s",
            done.frames,
            done.partials,
            done.states,
            done.operations,
            t.elapsed().as_secs_f64()
        );
    }
    // The window is the recording's, as the database holds it (it may have
    // been filled by benches/export_frames.sql rather than the generator).
    let span = c
        .query_one(
            "SELECT min(recorded_at), max(recorded_at), count(*) FROM controls WHERE host = $1",
            &[&rec.host],
        )
        .await
        .expect("span");
    let mut rec = rec;
    rec.start = span.get(0);
    let last: chrono::DateTime<Utc> = span.get(1);
    rec.frames = 1;
    rec.frame_gaps = vec![(0, last - rec.start)];
    println!(
        "(a) database {name}: {}; one host, {} frames from {} to {last}, 6 channels x 12 partials",
        db_size(&c).await,
        span.get::<_, i64>(2),
        rec.start
    );
    // Warm the cache with one COPY (EXPORT_BENCH_WARMUP=0: the rows were
    // just written and are in the page cache), then alternate.
    if env_u64("EXPORT_BENCH_WARMUP", 1) > 0 {
        let (w, _) = run_copy(&c, &rec).await;
        println!("(a) warm-up COPY: {:.1} s", w.as_secs_f64());
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut ratios = Vec::new();
    for run in 0..env_u64("EXPORT_BENCH_RUNS", 2) {
        let out: PathBuf = tmp.path().join(format!("ds{run}"));
        let (te, hwm, stdout) = run_export(&url(&cfg), &rec, &out);
        let (tc, bytes) = run_copy(&c, &rec).await;
        let info: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.join("meta/info.json")).expect("info.json"))
                .expect("json");
        let written = info["counts"]["frames"].as_u64().unwrap_or(0);
        let dropped = info["counts"]["dropped"].as_u64().unwrap_or(0);
        let ratio = tc.as_secs_f64() / te.as_secs_f64();
        ratios.push(ratio);
        println!(
            "(a) run {run}: export {:.1} s ({:.0} frames/s; {written} written, {dropped} dropped; \
             dataset {:.0} MiB in {} files) | COPY binary {:.1} s ({:.0} MiB) | \
             export/COPY throughput {ratio:.2} | export peak RSS (VmHWM) {:.0} MiB",
            te.as_secs_f64(),
            (written + dropped) as f64 / te.as_secs_f64(),
            dir_size(&out) as f64 / (1 << 20) as f64,
            info["files"].as_array().map_or(0, Vec::len),
            tc.as_secs_f64(),
            bytes as f64 / (1 << 20) as f64,
            hwm as f64 / 1024.0
        );
        let _ = stdout;
        let _ = std::fs::remove_dir_all(&out);
    }
    println!(
        "(a) best export/COPY throughput ratio {:.2} (target >= 0.5)",
        ratios.iter().cloned().fold(0.0, f64::max)
    );
}

// ------------------------------------------------------------------ (b)

const FLEET_START: &str = "2026-01-01T00:00:00Z";
const MONTH: (&str, &str) = ("2026-02-01T00:00:00Z", "2026-03-01T00:00:00Z");

/// Fills the fleet database in the server: `states` machine_state rows over
/// 120 days across three hosts, each linked to a controls row of its own;
/// 12 partials per frame for fleet-1's February (the ML query's month);
/// an operation every 5 minutes per host. Indexes are built after the load.
async fn load_fleet(c: &Client, states: u64) {
    let per_host = states / 3;
    let step = 120.0 * 86400.0 / per_host as f64;
    let positions: Vec<String> = (0..19)
        .map(|k| format!("((i + {k}) % 2000)::int"))
        .collect();
    let sql = format!(
        "
SET session_replication_role = replica;
SET maintenance_work_mem = '512MB';
DROP INDEX idx_machine_state_recorded_at, idx_machine_state_controls_id, idx_machine_state_host,
           idx_machine_state_host_recorded_at, idx_controls_host_recorded_at;
ALTER TABLE partials DROP CONSTRAINT partials_pkey;
INSERT INTO controls (controls_id, host, recorded_at)
SELECT md5('c' || h || '-' || i)::uuid, 'fleet-' || h,
       '{FLEET_START}'::timestamptz + i * interval '{step} seconds'
FROM generate_series(1, 3) h, generate_series(0, {per_host} - 1) i;
INSERT INTO machine_state
SELECT md5('s' || h || '-' || i)::uuid, md5('c' || h || '-' || i)::uuid, 'fleet-' || h,
       '{FLEET_START}'::timestamptz + i * interval '{step} seconds' + interval '10 ms',
       ARRAY[{pos}], array_fill(true, ARRAY[19]), true, 2, -2, 5, 5, 1, 4, 4, 50, 50, 50,
       ARRAY[3, 4, 5, 6, 7, 8], ARRAY[20.5, 30, 40, 50, 60, 70]::real[],
       array_fill(0, ARRAY[6]), array_fill(12, ARRAY[6]), array_fill(20, ARRAY[6]), array_fill(100, ARRAY[6])
FROM generate_series(1, 3) h, generate_series(0, {per_host} - 1) i;
INSERT INTO partials (controls_id, channel, partial_index, frequency, amplitude)
SELECT c.controls_id, 0, k, 110 * (k + 1), (k % 5)::real
FROM controls c, generate_series(0, 11) k
WHERE c.host = 'fleet-1' AND c.recorded_at >= '{m0}' AND c.recorded_at < '{m1}';
INSERT INTO operations (operation_id, state_id, host, recorded_at, operation_type, operation_status,
                        message, stepper_indices, final_positions, completed_at)
SELECT md5('o' || h || '-' || j)::uuid,
       md5('s' || h || '-' || floor(j * 300 / {step})::bigint)::uuid, 'fleet-' || h,
       '{FLEET_START}'::timestamptz + j * interval '5 minutes',
       (ARRAY['z_adjust', 'bump_check', 'z_calibrate'])[1 + j % 3],
       (ARRAY['completed', 'failed', 'cancelled'])[1 + j % 3], 'done', ARRAY[1, 2], ARRAY[10, 20],
       '{FLEET_START}'::timestamptz + j * interval '5 minutes' + interval '1 minute'
FROM generate_series(1, 3) h, generate_series(0, 120 * 288 - 1) j;
ALTER TABLE partials ADD PRIMARY KEY (controls_id, channel, partial_index);
CREATE INDEX idx_machine_state_recorded_at ON machine_state(recorded_at);
CREATE INDEX idx_machine_state_controls_id ON machine_state(controls_id);
CREATE INDEX idx_machine_state_host ON machine_state(host);
CREATE INDEX idx_machine_state_host_recorded_at ON machine_state (host, recorded_at);
CREATE INDEX idx_controls_host_recorded_at ON controls (host, recorded_at);
SET session_replication_role = origin;
VACUUM ANALYZE;
CREATE TABLE bench_done ();
",
        pos = positions.join(", "),
        m0 = MONTH.0,
        m1 = MONTH.1,
    );
    // One statement at a time: VACUUM cannot run in the implicit
    // transaction of a multi-statement query.
    for stmt in sql.split(";\n").map(str::trim).filter(|s| !s.is_empty()) {
        let t = Instant::now();
        c.batch_execute(stmt)
            .await
            .unwrap_or_else(|e| panic!("{stmt}: {e}"));
        println!(
            "(b)   {:.0} s: {}",
            t.elapsed().as_secs_f64(),
            stmt.lines().next().unwrap_or_default()
        );
    }
}

/// The V3 indexes, to drop and create around the "before" runs.
const V3: [(&str, &str); 3] = [
    (
        "idx_machine_state_host_recorded_at",
        "machine_state (host, recorded_at)",
    ),
    (
        "idx_operations_host_recorded_at",
        "operations (host, recorded_at)",
    ),
    (
        "idx_controls_host_recorded_at",
        "controls (host, recorded_at)",
    ),
];

/// Server-side execution time of `sql` (EXPLAIN ANALYZE, so no transfer),
/// and its plan's first lines naming indexes.
async fn execution(c: &Client, sql: &str) -> (f64, String) {
    let rows = c
        .query(&format!("EXPLAIN (ANALYZE, BUFFERS) {sql}"), &[])
        .await
        .expect("explain analyze");
    let lines: Vec<String> = rows.iter().map(|r| r.get::<_, String>(0)).collect();
    let ms = lines
        .iter()
        .find_map(|l| l.trim().strip_prefix("Execution Time:"))
        .and_then(|v| v.trim().trim_end_matches("ms").trim().parse::<f64>().ok())
        .unwrap_or(f64::NAN);
    let scans: Vec<String> = lines
        .iter()
        .filter(|l| {
            l.contains(" Scan ")
                || l.contains("Rows Removed by Filter")
                || l.contains("actual time")
                    && l.trim_start().starts_with("->")
                    && l.contains("Join")
        })
        .map(|l| l.trim().to_string())
        .take(8)
        .collect();
    (ms, scans.join("\n      "))
}

async fn part_b() {
    let states = env_u64("EXPORT_BENCH_STATES", 10_000_000);
    let name = format!("sd_bench_fleet_{states}");
    let (cfg, ready) = database(&name).await;
    let c = connect(&cfg).await;
    if !ready {
        let t = Instant::now();
        load_fleet(&c, states).await;
        println!(
            "(b) generated the fleet in {:.0} s",
            t.elapsed().as_secs_f64()
        );
    }
    let counts = c
        .query_one(
            "SELECT (SELECT count(*) FROM machine_state), (SELECT count(*) FROM controls),
                    (SELECT count(*) FROM partials), (SELECT count(*) FROM operations)",
            &[],
        )
        .await
        .expect("counts");
    println!(
        "(b) database {name}: {}; machine_state {} rows (3 hosts, 120 days), controls {}, partials {} \
         (fleet-1's February), operations {}",
        db_size(&c).await,
        counts.get::<_, i64>(0),
        counts.get::<_, i64>(1),
        counts.get::<_, i64>(2),
        counts.get::<_, i64>(3)
    );
    let ml = format!(
        "SELECT c.controls_id, c.recorded_at, p.channel, p.frequency, p.amplitude,
                ms.stepper_positions, ms.z_up_step, ms.adjustment_level
         FROM controls c
         JOIN partials p ON c.controls_id = p.controls_id
         JOIN machine_state ms ON c.controls_id = ms.controls_id
         WHERE c.host = 'fleet-1' AND c.recorded_at BETWEEN '{}' AND '{}'
         ORDER BY c.recorded_at, p.channel, p.partial_index",
        MONTH.0, MONTH.1
    );
    let history = format!(
        "SELECT o.recorded_at, o.operation_type, o.operation_status, o.stepper_indices,
                o.final_positions, ms.stepper_positions AS initial_positions
         FROM operations o
         LEFT JOIN machine_state ms ON o.state_id = ms.state_id
         WHERE o.host = 'fleet-1' AND o.recorded_at >= '{}' AND o.recorded_at < '{}'
         ORDER BY o.recorded_at DESC",
        MONTH.0, MONTH.1
    );
    let states_month = format!(
        "SELECT state_id, recorded_at, stepper_positions FROM machine_state
         WHERE host = 'fleet-1' AND recorded_at >= '{}' AND recorded_at < '{}'
         ORDER BY recorded_at",
        MONTH.0, MONTH.1
    );
    for phase in ["without V3 indexes", "with V3 indexes"] {
        for (index, on) in V3 {
            let sql = if phase.starts_with("without") {
                format!("DROP INDEX IF EXISTS {index}")
            } else {
                format!("CREATE INDEX IF NOT EXISTS {index} ON {on}")
            };
            c.batch_execute(&sql).await.expect("index");
        }
        c.batch_execute("ANALYZE").await.expect("analyze");
        for (what, sql) in [
            ("ML query (month, fleet-1)", &ml),
            ("operations history (month, fleet-1)", &history),
            ("machine_state of fleet-1 for the month", &states_month),
        ] {
            // Warm: the first run loads the pages, the figure is the best of
            // the next three.
            let _ = execution(&c, sql).await;
            let mut best = f64::INFINITY;
            let mut plan = String::new();
            for _ in 0..3 {
                let (ms, p) = execution(&c, sql).await;
                if ms < best {
                    best = ms;
                    plan = p;
                }
            }
            println!("(b) {phase}: {what}: {best:.0} ms\n      {plan}");
        }
    }
}

fn main() {
    // `cargo nextest run --all-targets` lists every target: there are no tests here.
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let parts = std::env::var("EXPORT_BENCH_PARTS").unwrap_or_else(|_| "a,b".into());
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    if parts.contains('a') {
        rt.block_on(part_a());
    }
    if parts.contains('b') {
        rt.block_on(part_b());
    }
}
