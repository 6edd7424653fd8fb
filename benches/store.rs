//! Storage benchmarks, each beside its baseline in the same run:
//! - spool append latency (one timer snapshot per transaction, real fsync)
//!   against writing the same bytes to a plain file with `fdatasync`;
//! - shipping a 100,000-record backlog to PostgreSQL against one raw binary
//!   COPY of the same rows into the same table.
//!
//! `cargo bench --bench store` (PostgreSQL at DATABASE_URL, default
//! postgres://postgres@127.0.0.1:5432/postgres; it creates and drops its own
//! databases). `STORE_BENCH_RECORDS` and `STORE_BENCH_APPENDS` change the sizes.

use std::io::Write;
use std::time::{Duration, Instant};

use stringdriverd::store::migrate::{self, ControlsIdType};
use stringdriverd::store::ship::{self, ShipperOptions};
use stringdriverd::store::{MachineState, Record, Spool, SpoolHandle, Trigger};
use tokio_postgres::NoTls;
use tokio_util::sync::CancellationToken;

/// The rows the tests use too (stringdriver-2 sized: 19 steppers, 6 channels).
#[path = "../tests/common/records.rs"]
#[allow(dead_code)]
mod records;

fn state(i: u64) -> MachineState {
    records::state(i, records::t0() + chrono::Duration::seconds(i as i64))
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn bench_append(dir: &std::path::Path, n: usize) {
    let (mut spool, _) = Spool::open(&dir.join("bench.sqlite"), 1 << 32).expect("spool");
    let mut spool_lat = Vec::with_capacity(n);
    let mut file_lat = Vec::with_capacity(n);
    let mut f = std::fs::File::create(dir.join("baseline.bin")).expect("file");
    for i in 0..n as u64 {
        let rec = Record::MachineState {
            trigger: Trigger::Timer,
            row: state(i),
        };
        let bytes = serde_json::to_vec(&rec).expect("json");
        // Interleaved so both see the same disk conditions.
        let t = Instant::now();
        spool.append(std::slice::from_ref(&rec)).expect("append");
        spool_lat.push(t.elapsed());
        let t = Instant::now();
        f.write_all(&bytes).expect("write");
        f.sync_data().expect("fdatasync");
        file_lat.push(t.elapsed());
    }
    spool_lat.sort();
    file_lat.sort();
    let per_record = spool.used_bytes().expect("size") as f64 / n as f64;
    println!(
        "spool size: {per_record:.0} bytes per 19-stepper snapshot, so 7 days at 1 Hz (604800) take {:.0} MiB",
        per_record * 604_800.0 / (1 << 20) as f64
    );
    println!("spool append, {n} single-record transactions (synchronous=FULL, WAL):");
    for (name, p) in [("p50", 0.5), ("p99", 0.99)] {
        let (s, b) = (pct(&spool_lat, p), pct(&file_lat, p));
        println!(
            "  {name}: spool {:>8.3} ms | baseline write+fdatasync {:>8.3} ms | ratio {:.2}",
            s.as_secs_f64() * 1e3,
            b.as_secs_f64() * 1e3,
            s.as_secs_f64() / b.as_secs_f64().max(1e-9)
        );
    }
}

async fn fresh_db(admin: &tokio_postgres::Config, name: &str) -> tokio_postgres::Config {
    let (c, conn) = admin
        .connect(NoTls)
        .await
        .expect("PostgreSQL at DATABASE_URL");
    tokio::spawn(conn);
    // Two statements: DROP DATABASE cannot share an implicit transaction.
    c.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .await
        .expect("drop database");
    c.batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .expect("create database");
    let mut cfg = admin.clone();
    cfg.dbname(name);
    let (mut c, conn) = cfg.connect(NoTls).await.expect("connect");
    tokio::spawn(conn);
    migrate::migrate(&mut c).await.expect("migrate");
    cfg
}

async fn drop_db(admin: &tokio_postgres::Config, name: &str) {
    if let Ok((c, conn)) = admin.connect(NoTls).await {
        tokio::spawn(conn);
        let _ = c
            .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .await;
    }
}

/// The baseline: one binary COPY of the same rows into the same table, with
/// no spool, no staging and no idempotence.
async fn raw_copy(cfg: &tokio_postgres::Config, rows: &[MachineState]) -> Duration {
    let (mut c, conn) = cfg.connect(NoTls).await.expect("connect");
    tokio::spawn(conn);
    let refs: Vec<&MachineState> = rows.iter().collect();
    let t = Instant::now();
    let tx = c.transaction().await.expect("begin");
    ship::copy_rows(&tx, "machine_state", &refs, ControlsIdType::Uuid)
        .await
        .expect("copy");
    tx.commit().await.expect("commit");
    t.elapsed()
}

async fn bench_ship(dir: &std::path::Path, n: usize) {
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let admin: tokio_postgres::Config = url.parse().expect("DATABASE_URL");
    let rows: Vec<MachineState> = (0..n as u64).map(state).collect();

    let base_cfg = fresh_db(&admin, "sd_bench_copy").await;
    let copy = raw_copy(&base_cfg, &rows).await;
    drop_db(&admin, "sd_bench_copy").await;

    let ship_cfg = fresh_db(&admin, "sd_bench_ship").await;
    let ship_check = ship_cfg.clone();
    let (s, _) = Spool::open(&dir.join("ship.sqlite"), 1 << 33).expect("spool");
    let spool = SpoolHandle::new(s);
    for chunk in rows.chunks(5000) {
        let recs = chunk
            .iter()
            .map(|r| Record::MachineState {
                trigger: Trigger::Timer,
                row: r.clone(),
            })
            .collect();
        spool.append(recs).await.expect("append");
    }
    let shutdown = CancellationToken::new();
    let t = Instant::now();
    let (mut rx, task) = ship::spawn(
        spool.clone(),
        ship_cfg,
        ShipperOptions::default(),
        shutdown.clone(),
    );
    rx.wait_for(|s| s.shipped as usize >= n)
        .await
        .expect("shipper");
    let shipping = t.elapsed();
    shutdown.cancel();
    let _ = task.await;
    // A benchmark of shipping that did not ship would be worse than none.
    let (c, conn) = ship_check.connect(NoTls).await.expect("connect");
    tokio::spawn(conn);
    let rows_in_pg: i64 = c
        .query_one("SELECT count(*) FROM machine_state", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(rows_in_pg as usize, n, "every record is in PostgreSQL");
    drop_db(&admin, "sd_bench_ship").await;

    let rate = |d: Duration| n as f64 / d.as_secs_f64();
    println!(
        "shipping a backlog of {n} machine_state records (batches of {}):",
        ShipperOptions::default().batch_size
    );
    println!(
        "  shipper {:>9.0} rows/s ({:.2} s) | baseline raw COPY {:>9.0} rows/s ({:.2} s) | ratio {:.2} of raw COPY",
        rate(shipping),
        shipping.as_secs_f64(),
        rate(copy),
        copy.as_secs_f64(),
        rate(shipping) / rate(copy)
    );
}

fn main() {
    // `cargo test --benches` / nextest may ask for a list: there are no tests here.
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    bench_append(dir.path(), env_usize("STORE_BENCH_APPENDS", 2000));
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(bench_ship(
        dir.path(),
        env_usize("STORE_BENCH_RECORDS", 100_000),
    ));
}
