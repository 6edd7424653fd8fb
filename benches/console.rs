//! Latency of the operator console, and its memory: how long a daemon
//! event takes to reach a browser's Server-Sent Events stream through
//! `stringdriverd console`, beside the same events read directly from the
//! control socket (an `events` subscription, what `stringdriverctl events`
//! reads: the baseline), over the same window.
//!
//! What is measured: the daemon's timer snapshots at 20 per second. Each
//! `snapshot` event carries `status.last_at`, the wall-clock time the
//! snapshot was captured (its board positions are those of the last poll,
//! at most one `poll_interval` older); the latency of an event is its
//! arrival time at the reader minus `last_at`. Both readers are tasks of
//! this process on the same host clock, so the difference of the two is
//! what the console adds (its events reader, the broadcast ring, axum's
//! SSE encoding, HTTP over loopback TCP). Not measured: the browser's
//! parsing and drawing of the event.
//!
//! Both processes are release builds spawned as children: `stringdriverd
//! demo` (simulated boards, no database) and `stringdriverd console` on
//! 127.0.0.1 (a free port). The console's resident memory (VmRSS) is
//! sampled once it serves, and again after the window with
//! `CONSOLE_BENCH_CLIENTS` browsers (SSE streams) attached.
//!
//! `cargo build --release && cargo bench --bench console`
//! (`CONSOLE_BENCH_SECS`: the window, default 20 s; `CONSOLE_BENCH_CLIENTS`:
//! SSE clients, default 5, one of which is measured).

#[path = "../tests/common/mod.rs"]
#[allow(unused_imports)]
mod common;
#[path = "../tests/common/console.rs"]
mod console;

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use chrono::{DateTime, Utc};
use console::Http;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

fn bin() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/release/stringdriverd");
    assert!(p.exists(), "build it first: cargo build --release");
    p
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The demo's configuration with its files under `dir` and snapshots every 50 ms.
fn config(dir: &Path) -> PathBuf {
    let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/demo.toml");
    let text = std::fs::read_to_string(demo)
        .expect("config/demo.toml")
        .replace("/tmp/stringdriverd-demo", &dir.display().to_string())
        .replace("level = \"info\"", "level = \"warn\"");
    let text = format!("{text}\n[snapshot]\ninterval = \"50ms\"\n");
    let f = dir.join("stringdriver.toml");
    std::fs::write(&f, text).expect("config written");
    f
}

/// Kills a child process when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A snapshot event's latency: now minus its capture time; `None` for
/// other events and the first (initial) line.
fn latency(event: &Value) -> Option<f64> {
    if event["event"] != "snapshot" || event["initial"] == json!(true) {
        return None;
    }
    let at: DateTime<Utc> = event["status"]["last_at"].as_str()?.parse().ok()?;
    Some((Utc::now() - at).num_microseconds()? as f64 / 1000.0)
}

/// Median and 95th percentile (ms) of `v`.
fn percentiles(v: &mut [f64]) -> (f64, f64, usize) {
    v.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize];
    (at(0.5), at(0.95), v.len())
}

/// Events read directly from the control socket for `window`.
async fn direct(socket: PathBuf, window: Duration) -> Vec<f64> {
    let s = tokio::net::UnixStream::connect(&socket)
        .await
        .expect("control socket");
    let (r, mut w) = s.into_split();
    w.write_all(b"{\"v\":1,\"id\":1,\"cmd\":\"events\"}\n")
        .await
        .expect("subscribe");
    let mut lines = BufReader::new(r).lines();
    let mut out = Vec::new();
    let end = tokio::time::Instant::now() + window;
    while let Ok(Ok(Some(l))) = tokio::time::timeout_at(end, lines.next_line()).await {
        if let Ok(v) = serde_json::from_str::<Value>(&l) {
            out.extend(latency(&v));
        }
    }
    out
}

/// The same events through the console's SSE stream for `window`.
async fn through_console(url: String, window: Duration) -> Vec<f64> {
    let http = Http::new(&url);
    let mut events = http.events().await;
    let mut out = Vec::new();
    let end = tokio::time::Instant::now() + window;
    while let Ok(Some((name, v))) = tokio::time::timeout_at(end, events.next_event()).await {
        if name == "daemon" {
            out.extend(latency(&v));
        }
    }
    out
}

fn main() {
    // `cargo nextest run --all-targets` lists every target: there are no tests here.
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let secs = env_u64("CONSOLE_BENCH_SECS", 20);
    let clients = env_u64("CONSOLE_BENCH_CLIENTS", 5).max(1);
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(dir.path());
    let socket = dir.path().join("control.sock");
    let _demo = Proc(
        Command::new(bin())
            .args(["demo", "--config"])
            .arg(&cfg)
            .env_remove("DATABASE_URL")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("demo starts"),
    );
    let mut console = Command::new(bin())
        .args(["console", "--listen", "127.0.0.1:0", "--config"])
        .arg(&cfg)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("console starts");
    let stdout = console.stdout.take().expect("stdout");
    let console = Proc(console);
    let pid = console.0.id();
    let mut line = String::new();
    std::io::BufReader::new(stdout)
        .read_line(&mut line)
        .expect("the console's URL");
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("no URL in {line:?}"))
        .trim_end_matches('/')
        .to_string();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        // Until the demo captures (its counters set): snapshots flow.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let st = common::control::status(&socket).await;
            if st
                .as_ref()
                .is_some_and(|s| s["snapshots"]["timer"].as_u64().unwrap_or(0) > 5)
            {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the demo never captured"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let (cpu0, rss_idle) = common::procstat::sample(pid);
        let window = Duration::from_secs(secs);
        let idle: Vec<_> = (1..clients)
            .map(|_| tokio::spawn(through_console(url.clone(), window)))
            .collect();
        let (mut base, mut cons) = tokio::join!(
            direct(socket.clone(), window),
            through_console(url.clone(), window)
        );
        let (cpu1, rss_after) = common::procstat::sample(pid);
        for t in idle {
            let _ = t.await;
        }
        let (b50, b95, bn) = percentiles(&mut base);
        let (c50, c95, cn) = percentiles(&mut cons);
        println!("console bench: {secs} s at 20 snapshots/s, {clients} SSE client(s)");
        println!("                          events   median ms   p95 ms");
        println!("control socket (baseline) {bn:>6}   {b50:>9.2}   {b95:>6.2}");
        println!("console SSE               {cn:>6}   {c50:>9.2}   {c95:>6.2}");
        println!(
            "console adds              {:>6}   {:>9.2}   {:>6.2}",
            "",
            c50 - b50,
            c95 - b95
        );
        println!(
            "console VmRSS: {:.1} MiB serving, {:.1} MiB after the window; CPU {:.1} % of one core",
            rss_idle as f64 / 1024.0,
            rss_after as f64 / 1024.0,
            (cpu1 - cpu0) / secs as f64 * 100.0
        );
    });
}
