//! Soak and fault-injection run: the daemon as a real process against
//! simulated boards on real pseudo-terminals, a simulated audmon writing real
//! feed files, and a real PostgreSQL behind a TCP proxy the run cuts and
//! restores — at 20 snapshots a second, an operation every few seconds, and a
//! schedule of faults: the database cut three times, each board unplugged
//! and plugged back, the feed removed and restored, the daemon killed with
//! SIGKILL twice (once in the middle of an operation) and restarted, two
//! SIGHUP reloads.
//!
//! At the end it accounts for every record, from the spool's own totals
//! (bumped in the transaction that captured each record) and from what the
//! control socket said about each operation, against what PostgreSQL holds:
//! every snapshot and operation event committed to the spool is in
//! PostgreSQL exactly once or still waiting in the spool; no operation row
//! is left `started`; resident memory of the daemon grows by less than 5 %
//! after warm-up; the simulators saw no safety violation. It prints a table
//! of the faults injected and the records accounted for, and exits non-zero
//! if any check fails.
//!
//! `scripts/soak.sh [SECONDS]` runs it; CI runs the short form (240 s).
//! Not a libtest test (`harness = false`): it is one long run that prints
//! its own report.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::control::{request, status};
use common::machine::{FeedMode, MachineOptions, SimMachine};
use common::pg::TestDb;
use common::proxy::Proxy;
use nix::sys::signal::Signal;
use serde_json::{json, Value};
use stringdriverd::sim::Fault;
use stringdriverd::store::Spool;

const HOST: &str = "sd-soak";
/// How long any single wait for a condition may take before the run fails.
const WAIT: Duration = Duration::from_secs(60);
/// Resident memory is compared from this long after the last start, or
/// from [`AFTER_FIRST_OUTAGE`] after the first database outage of the last
/// daemon's life ended, whichever is later: until the daemon has shipped a
/// backlog once, SQLite's page cache and the shipper's batch buffers are
/// still growing to their steady size, which is warm-up, not a leak.
const WARM_UP: Duration = Duration::from_secs(20);
/// See [`WARM_UP`].
const AFTER_FIRST_OUTAGE: Duration = Duration::from_secs(15);

fn main() -> ExitCode {
    let seconds = match std::env::var("SOAK_SECONDS") {
        Ok(s) => {
            match s.parse::<u64>() {
                Ok(n) if n >= 60 => n,
                _ => {
                    eprintln!("soak: SOAK_SECONDS must be a whole number of seconds, at least 60 (got {s:?})");
                    return ExitCode::FAILURE;
                }
            }
        }
        Err(_) => 240,
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("soak: cannot start a runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(soak(Duration::from_secs(seconds))) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("soak: FAILED: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The daemon process and its log.
struct Daemon {
    child: Child,
    started: Instant,
}

impl Daemon {
    fn spawn(cfg: &Path, log: &Path) -> anyhow::Result<Daemon> {
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)?;
        let child = Command::new(env!("CARGO_BIN_EXE_stringdriverd"))
            .args(["run", "--config"])
            .arg(cfg)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()?;
        Ok(Daemon {
            child,
            started: Instant::now(),
        })
    }

    fn pid(&self) -> nix::unistd::Pid {
        nix::unistd::Pid::from_raw(self.child.id() as i32)
    }

    fn signal(&self, s: Signal) -> anyhow::Result<()> {
        nix::sys::signal::kill(self.pid(), s)?;
        Ok(())
    }

    /// Resident memory in KiB, from /proc.
    fn rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    }

    fn kill_now(&mut self) -> anyhow::Result<()> {
        self.signal(Signal::SIGKILL)?;
        self.child.wait()?;
        Ok(())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Waits until `check` gives `Some`, polling every 100 ms, or fails naming `what`.
async fn wait_for<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return Ok(v);
        }
        if Instant::now() > deadline {
            anyhow::bail!("timed out after {limit:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits for a started daemon to answer with both boards connected.
async fn ready(socket: &Path) -> anyhow::Result<()> {
    wait_for(
        "the daemon to answer with both boards connected",
        WAIT,
        || async {
            let s = status(socket).await?;
            let boards = s["boards"].as_array()?;
            (boards.len() == 2 && boards.iter().all(|b| b["link"] == "connected")).then_some(())
        },
    )
    .await
}

/// What the operation loop saw.
#[derive(Default)]
struct OpLedger {
    /// operation_id → status, as `op_run` with `wait` reported it.
    outcomes: HashMap<String, String>,
    /// Requests refused or lost (busy, killed mid-way, boards away).
    not_run: BTreeMap<String, u64>,
}

/// Runs an operation every `every` until `stop`, one at a time.
async fn operation_loop(
    socket: PathBuf,
    every: Duration,
    stop: Arc<AtomicBool>,
    ledger: Arc<Mutex<OpLedger>>,
) {
    let kinds = ["z_calibrate", "bump_check", "z_adjust"];
    let mut n = 0usize;
    while !stop.load(Ordering::SeqCst) {
        let kind = kinds[n % kinds.len()];
        n += 1;
        let r = request(
            &socket,
            json!({"v": 1, "cmd": "op_run", "kind": kind, "wait": true}),
            Duration::from_secs(120),
        )
        .await;
        {
            let mut l = ledger.lock().unwrap_or_else(|e| e.into_inner());
            match r {
                Ok(v) => match (v["operation_id"].as_str(), v["status"].as_str()) {
                    (Some(id), Some(st)) => {
                        l.outcomes.insert(id.to_string(), st.to_string());
                    }
                    _ => *l.not_run.entry(format!("{kind}: {v}")).or_default() += 1,
                },
                Err(e) => {
                    // Group by kind of error, not by its full text.
                    let key = e.split(':').next().unwrap_or("error").to_string();
                    *l.not_run.entry(key).or_default() += 1;
                }
            }
        }
        tokio::time::sleep(every).await;
    }
}

/// A fault and what it did.
struct FaultRow {
    at: Duration,
    what: String,
    result: String,
}

struct Checks {
    failures: Vec<String>,
    rows: Vec<(String, String, bool)>,
}

impl Checks {
    fn check(&mut self, what: &str, value: String, ok: bool) {
        if !ok {
            self.failures.push(format!("{what}: {value}"));
        }
        self.rows.push((what.to_string(), value, ok));
    }
}

async fn soak(length: Duration) -> anyhow::Result<bool> {
    let db = TestDb::create().await;
    let target = {
        let host = match db.config.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
            other => {
                anyhow::bail!("the soak needs PostgreSQL over TCP, DATABASE_URL gives {other:?}")
            }
        };
        let port = db.config.get_ports().first().copied().unwrap_or(5432);
        let addr = tokio::net::lookup_host((host.as_str(), port))
            .await?
            .next()
            .ok_or_else(|| anyhow::anyhow!("{host} has no address"))?;
        addr
    };
    let proxy = Proxy::start(target).await;
    proxy.restore();
    let user = db.config.get_user().unwrap_or("postgres").to_string();
    let db_url = format!("postgres://{user}@{}/{}", proxy.addr, db.name);

    let mut options = MachineOptions::new(HOST);
    options.db_url = Some(db_url.clone());
    options.snapshot_interval = "50ms".into();
    options.stale_after = "2s".into();
    options.sensors = true;
    options.feed = FeedMode::Live;
    options.demo_physics = true;
    let machine = SimMachine::start(options.clone());
    let cfg_path = machine.cfg_path.clone();
    // Kept after the run (the temporary directory is not) for a post-mortem.
    let log_path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("soak-daemon.log");
    std::fs::write(&log_path, "")?;
    let cfg = stringdriverd::config::load(&cfg_path)?;
    let socket = cfg.control.socket.clone();

    println!(
        "soak: {}s, daemon log {}",
        length.as_secs(),
        log_path.display()
    );
    let t0 = Instant::now();
    let mut faults: Vec<FaultRow> = Vec::new();
    let mut daemon = Daemon::spawn(&cfg_path, &log_path)?;
    ready(&socket).await?;
    // The boards' counters are unknown at first contact: set the pose, as
    // an operator does on a new machine.
    for g in 0..cfg.layout.total_steppers() {
        let pos = stringdriverd::demo::starting_position(&cfg.layout, g);
        request(
            &socket,
            json!({"v": 1, "cmd": "set_position", "stepper": g, "position": pos}),
            Duration::from_secs(10),
        )
        .await
        .map_err(|e| anyhow::anyhow!("set_position {g}: {e}"))?;
    }

    let stop_ops = Arc::new(AtomicBool::new(false));
    let ledger = Arc::new(Mutex::new(OpLedger::default()));
    let mut ops = Some(tokio::spawn(operation_loop(
        socket.clone(),
        Duration::from_secs(2),
        stop_ops.clone(),
        ledger.clone(),
    )));

    // The schedule, as fractions of the run.
    let at = |f: f64| length.mul_f64(f);
    let outage = length.mul_f64(0.06).max(Duration::from_secs(5));
    let away = length.mul_f64(0.03).max(Duration::from_secs(3));
    #[derive(Clone, Copy)]
    enum Step {
        DbCut,
        DbRestore,
        Unplug(usize),
        Replug(usize),
        FeedRemove,
        FeedRestore,
        Kill,
        KillMidOperation,
        Reload(f64),
    }
    let mut schedule = vec![
        (at(0.10), Step::DbCut),
        (at(0.10) + outage, Step::DbRestore),
        (at(0.15), Step::Kill),
        (at(0.22), Step::Unplug(1)),
        (at(0.22) + away, Step::Replug(1)),
        (at(0.30), Step::FeedRemove),
        (at(0.30) + away, Step::FeedRestore),
        (at(0.36), Step::KillMidOperation),
        (at(0.45), Step::DbCut),
        (at(0.45) + outage, Step::DbRestore),
        (at(0.55), Step::Reload(0.06)),
        (at(0.62), Step::Unplug(0)),
        (at(0.62) + away, Step::Replug(0)),
        (at(0.72), Step::DbCut),
        (at(0.72) + outage, Step::DbRestore),
        (at(0.82), Step::Reload(0.05)),
    ];
    schedule.sort_by_key(|(t, _)| *t);

    let mut rss: Vec<(Duration, u64)> = Vec::new();
    // When the last daemon's warm-up ends (see WARM_UP), from its start.
    let mut warm_until = WARM_UP;
    let mut outage_seen_in_life = false;
    let mut next = schedule.into_iter().peekable();
    let mut starts = 1u32;
    while t0.elapsed() < length {
        if let Some(kib) = daemon.rss_kib() {
            rss.push((daemon.started.elapsed(), kib));
        }
        let Some((when, step)) = next.peek().copied() else {
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        };
        if t0.elapsed() < when {
            tokio::time::sleep(Duration::from_millis(500).min(when - t0.elapsed())).await;
            continue;
        }
        next.next();
        let now = t0.elapsed();
        let (what, result) = match step {
            Step::DbCut => {
                proxy.cut();
                (
                    "database cut".to_string(),
                    format!("for {}s", outage.as_secs()),
                )
            }
            Step::DbRestore => {
                proxy.restore();
                if !outage_seen_in_life {
                    outage_seen_in_life = true;
                    warm_until = warm_until.max(daemon.started.elapsed() + AFTER_FIRST_OUTAGE);
                }
                ("database restored".to_string(), "ok".to_string())
            }
            Step::Unplug(b) => {
                machine.sims[b].inject(Fault::Vanish);
                let name = cfg.boards[b].name.clone();
                let seen = wait_for("the daemon to see the board gone", WAIT, || async {
                    let s = status(&socket).await?;
                    (s["boards"][b]["link"] != "connected").then_some(())
                })
                .await;
                (format!("board {name} unplugged"), describe(seen))
            }
            Step::Replug(b) => {
                machine.sims[b].inject(Fault::Reappear);
                let name = cfg.boards[b].name.clone();
                let back = wait_for("the board back with trusted counters", WAIT, || async {
                    let s = status(&socket).await?;
                    let board = &s["boards"][b];
                    (board["link"] == "connected"
                        && board["trusted"].as_array()?.iter().all(|t| t == true))
                    .then_some(())
                })
                .await;
                (format!("board {name} plugged back"), describe(back))
            }
            Step::FeedRemove => {
                machine.set_feed_present(false);
                let seen = wait_for("the feed to be absent", WAIT, || async {
                    let s = status(&socket).await?;
                    (s["feed"]["state"] == "absent").then_some(())
                })
                .await;
                ("feed removed".to_string(), describe(seen))
            }
            Step::FeedRestore => {
                machine.set_feed_present(true);
                let seen = wait_for("the feed to be ok", WAIT, || async {
                    let s = status(&socket).await?;
                    (s["feed"]["state"] == "ok").then_some(())
                })
                .await;
                ("feed restored".to_string(), describe(seen))
            }
            Step::Kill | Step::KillMidOperation => {
                let mut note = String::new();
                if matches!(step, Step::KillMidOperation) {
                    // Wait for an operation to be running (the loop starts
                    // one every few seconds), then kill in the middle of it.
                    let running = wait_for("an operation to run", WAIT, || async {
                        let s = status(&socket).await?;
                        s["operation"]["running"].is_string().then_some(())
                    })
                    .await;
                    note = match running {
                        Ok(()) => "during an operation; ".to_string(),
                        Err(e) => format!("NO operation was running ({e}); "),
                    };
                }
                daemon.kill_now()?;
                starts += 1;
                daemon = Daemon::spawn(&cfg_path, &log_path)?;
                rss.clear();
                warm_until = WARM_UP;
                outage_seen_in_life = false;
                let up = ready(&socket).await;
                (
                    "daemon killed (SIGKILL) and restarted".to_string(),
                    format!("{note}{}", describe(up)),
                )
            }
            Step::Reload(z_rest) => {
                let mut reloaded = options.clone();
                reloaded.z_rest = z_rest;
                machine.rewrite_config(&reloaded);
                daemon.signal(Signal::SIGHUP)?;
                let applied = wait_for("the reload to apply z_rest", WAIT, || async {
                    let s = status(&socket).await?;
                    let v = s["settings"]["z_rest"].as_f64()?;
                    ((v - z_rest).abs() < 1e-6).then_some(())
                })
                .await;
                (
                    format!("SIGHUP reload (z_rest = {z_rest})"),
                    describe(applied),
                )
            }
        };
        println!("soak: {:>5.1}s {what}: {result}", now.as_secs_f64());
        faults.push(FaultRow {
            at: now,
            what,
            result,
        });
    }

    // Wind down: no new operations, everything restored, the backlog shipped.
    stop_ops.store(true, Ordering::SeqCst);
    if let Some(h) = ops.take() {
        tokio::time::timeout(Duration::from_secs(180), h).await??;
    }
    proxy.restore();
    let drained = wait_for("the spool to drain", Duration::from_secs(180), || async {
        let s = status(&socket).await?;
        (s["spool"]["backlog"].as_u64()? == 0).then_some(())
    })
    .await;
    let uptime = daemon.started.elapsed();
    let final_rss = daemon.rss_kib();
    daemon.signal(Signal::SIGTERM)?;
    let stop_began = Instant::now();
    let exit = loop {
        if let Some(st) = daemon.child.try_wait()? {
            break Some(st);
        }
        if stop_began.elapsed() > Duration::from_secs(10) {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let stop_took = stop_began.elapsed();

    // ---- accounting ----
    let spool = Spool::open_read_only(&cfg.spool.path)?.status()?;
    let client = db.client().await;
    let states: i64 = client
        .query_one("SELECT count(*) FROM machine_state", &[])
        .await?
        .get(0);
    let bad_shape: i64 = client
        .query_one(
            "SELECT count(*) FROM machine_state WHERE cardinality(stepper_positions) <> 19 \
             OR cardinality(stepper_enabled) <> 19 OR cardinality(voice_count) <> 6 \
             OR cardinality(amp_sum) <> 6 OR host <> $1",
            &[&HOST],
        )
        .await?
        .get(0);
    let op_rows = client
        .query(
            "SELECT operation_id::text, operation_status, coalesce(message, ''), operation_type \
             FROM operations",
            &[],
        )
        .await?;
    let mut by_status: BTreeMap<String, u64> = BTreeMap::new();
    let mut events_in_pg = 0u64;
    let mut interrupted = 0u64;
    let mut pg_ops: HashMap<String, String> = HashMap::new();
    for r in &op_rows {
        let (id, st, msg): (String, String, String) = (r.get(0), r.get(1), r.get(2));
        events_in_pg += if st == "started" { 1 } else { 2 };
        if msg.starts_with("interrupted") {
            interrupted += 1;
        }
        *by_status.entry(st.clone()).or_default() += 1;
        pg_ops.insert(id, st);
    }
    let ledger = std::mem::take(&mut *ledger.lock().unwrap_or_else(|e| e.into_inner()));
    let missing_outcomes: Vec<String> = ledger
        .outcomes
        .iter()
        .filter(|(id, st)| pg_ops.get(*id) != Some(*st))
        .map(|(id, st)| format!("{id} ({st})"))
        .collect();
    let backlog_states = spool.backlog - spool.backlog_operations;

    let mut c = Checks {
        failures: Vec::new(),
        rows: Vec::new(),
    };
    c.check("spool drained before the stop", describe(drained), true);
    c.check(
        "graceful stop",
        format!("{exit:?} in {:.1}s", stop_took.as_secs_f64()),
        exit.is_some_and(|e| e.success()) && stop_took < Duration::from_secs(5),
    );
    c.check(
        "snapshots captured = in PostgreSQL + waiting + thinned",
        format!(
            "{} = {} + {} + {}",
            spool.captured_snapshots, states, backlog_states, spool.thinned
        ),
        spool.captured_snapshots == states as u64 + backlog_states + spool.thinned
            && spool.captured_snapshots > 0,
    );
    c.check(
        "snapshots shipped (spool) = rows in PostgreSQL",
        format!("{} = {}", spool.shipped_snapshots, states),
        spool.shipped_snapshots == states as u64,
    );
    c.check(
        "operation events captured = in PostgreSQL + waiting",
        format!(
            "{} = {} + {}",
            spool.captured_operations, events_in_pg, spool.backlog_operations
        ),
        spool.captured_operations == events_in_pg + spool.backlog_operations,
    );
    c.check(
        "operation events shipped (spool) = in PostgreSQL",
        format!("{} = {}", spool.shipped_operations, events_in_pg),
        spool.shipped_operations == events_in_pg,
    );
    c.check(
        "operations reported by the control socket found with their status",
        format!(
            "{} of {} ({})",
            ledger.outcomes.len() - missing_outcomes.len(),
            ledger.outcomes.len(),
            missing_outcomes.join(", ")
        ),
        missing_outcomes.is_empty() && !ledger.outcomes.is_empty(),
    );
    c.check(
        "operation rows left 'started'",
        format!("{}", by_status.get("started").copied().unwrap_or(0)),
        !by_status.contains_key("started") && spool.running_operations == 0,
    );
    c.check(
        "operations closed as interrupted by a kill",
        interrupted.to_string(),
        interrupted >= 1,
    );
    c.check(
        "rows with a wrong shape or host",
        bad_shape.to_string(),
        bad_shape == 0,
    );
    c.check(
        "dead letters / thinned / refused",
        format!(
            "{} / {} / {}",
            spool.dead_letters, spool.thinned, spool.rejected
        ),
        spool.dead_letters == 0 && spool.rejected == 0,
    );
    c.check(
        "safety violations seen by the simulators",
        machine.violations().to_string(),
        machine.violations() == 0,
    );
    let (growth, rss_text) = rss_growth(&rss, final_rss, uptime, warm_until);
    c.check(
        "resident memory growth after warm-up (< 5 %)",
        rss_text,
        growth.is_some_and(|g| g < 5.0),
    );

    // ---- report ----
    let mut out = String::new();
    out.push_str(&format!(
        "\n== soak report: {}s, {} daemon starts, {} snapshots/s target ==\n",
        length.as_secs(),
        starts,
        20
    ));
    out.push_str("\nfaults injected\n");
    out.push_str(&format!("{:>8}  {:<40} {}\n", "at", "fault", "result"));
    for f in &faults {
        out.push_str(&format!(
            "{:>7.1}s  {:<40} {}\n",
            f.at.as_secs_f64(),
            f.what,
            f.result
        ));
    }
    out.push_str("\nrecords\n");
    let rows = [
        (
            "snapshots captured in the spool",
            spool.captured_snapshots.to_string(),
        ),
        ("machine_state rows in PostgreSQL", states.to_string()),
        (
            "operation events captured",
            spool.captured_operations.to_string(),
        ),
        ("operations rows in PostgreSQL", op_rows.len().to_string()),
        ("operations by status", format!("{by_status:?}")),
        (
            "op_run requests answered with an outcome",
            ledger.outcomes.len().to_string(),
        ),
        ("op_run requests not run", format!("{:?}", ledger.not_run)),
        ("left in the spool at stop", spool.backlog.to_string()),
    ];
    for (k, v) in rows {
        out.push_str(&format!("  {k:<44} {v}\n"));
    }
    // The last daemon's resident memory over its life, every ~10 s, so that a
    // step (a cache filling) can be told from a slope (a leak).
    let series: Vec<String> = rss
        .iter()
        .scan(None::<Duration>, |last, (t, k)| {
            let due = last.is_none_or(|l| *t >= l + Duration::from_secs(10));
            if due {
                *last = Some(*t);
            }
            Some(due.then(|| format!("{}s:{}", t.as_secs(), k)))
        })
        .flatten()
        .collect();
    out.push_str(&format!(
        "\nresident memory of the last daemon (s since its start: KiB)\n  {}\n",
        series.join(" ")
    ));
    out.push_str("\nchecks\n");
    for (what, value, ok) in &c.rows {
        out.push_str(&format!(
            "  [{}] {what:<62} {value}\n",
            if *ok { " ok " } else { "FAIL" }
        ));
    }
    let passed = c.failures.is_empty();
    out.push_str(&format!(
        "\nsoak: {} passed, {} failed\n",
        c.rows.len() - c.failures.len(),
        c.failures.len()
    ));
    print!("{out}");
    let _ = std::io::stdout().flush();
    if !passed {
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(80).collect();
        eprintln!("last daemon log lines:");
        for l in tail.iter().rev() {
            eprintln!("  {l}");
        }
    }
    drop(machine);
    Ok(passed)
}

fn describe(r: anyhow::Result<()>) -> String {
    match r {
        Ok(()) => "ok".to_string(),
        Err(e) => format!("FAILED: {e}"),
    }
}

/// Growth of resident memory from just after warm-up to the end of the last
/// daemon's life, in percent, with the text for the report. The reference is
/// the median of the first 10 samples after warm-up, the end the median of
/// the last 10, so that a single allocation burst does not decide.
fn rss_growth(
    samples: &[(Duration, u64)],
    last: Option<u64>,
    uptime: Duration,
    warm_until: Duration,
) -> (Option<f64>, String) {
    let after: Vec<u64> = samples
        .iter()
        .filter(|(t, _)| *t >= warm_until)
        .map(|(_, k)| *k)
        .chain(last)
        .collect();
    if after.len() < 20 {
        return (
            None,
            format!(
                "too few samples after warm-up ({} over {}s of the last start)",
                after.len(),
                uptime.as_secs()
            ),
        );
    }
    let median = |xs: &[u64]| {
        let mut v = xs.to_vec();
        v.sort_unstable();
        v[v.len() / 2]
    };
    let start = median(&after[..10]);
    let end = median(&after[after.len() - 10..]);
    let growth = (end as f64 - start as f64) * 100.0 / start as f64;
    (
        Some(growth),
        format!(
            "{:+.1} % ({} KiB -> {} KiB over {}s after a {}s warm-up)",
            growth,
            start,
            end,
            uptime.saturating_sub(warm_until).as_secs(),
            warm_until.as_secs()
        ),
    )
}
