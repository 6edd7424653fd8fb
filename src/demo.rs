//! `stringdriverd demo`: the whole daemon on simulated hardware.
//!
//! For a configuration (`config/demo.toml`) the demo starts
//! - a simulated board (the firmware simulator on a pseudo-terminal) at the
//!   port of every configured board;
//! - a simulated audmon: feed files in `[feed] dir` with one channel per
//!   string and [`PARTIALS`] partials, whose channel c follows the simulated
//!   Z steppers of string c ([`crate::sim::feed::partials_for_distance`] of
//!   the smaller of the pair's two counters);
//! - with a database, the simulated audmon's `controls` and `partials` rows:
//!   one `controls` row per frame written to the feed, its partials linked
//!   by `controls_id` ([`crate::sim::audmon_db`], a task of its own that
//!   drops and counts frames while the database is away, as audmon does);
//! - the daemon itself, in-process ([`daemon::run_with_shipping`]): board
//!   drivers, feed reader, snapshot engine, spool and, when a database is
//!   given, the shipper.
//!
//! Fresh simulated boards have counters nobody knows, so the daemon captures
//! nothing until they are set; the demo sets them to a starting pose
//! ([`starting_position`]) with `set_stepper`, as an operator does after a
//! calibration. From then on a `machine_state` snapshot is captured every
//! `[snapshot] interval`.
//!
//! Without a database (neither `--database-url` nor `DATABASE_URL`) nothing
//! connects anywhere: every record stays in the spool, where a later run with
//! a database ships it.

use std::collections::BTreeMap;
use std::future::Future;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::{mpsc as std_mpsc, Arc};
use std::thread::JoinHandle as ThreadHandle;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};

use crate::board::LinkState;
use crate::config::{Config, Layout};
use crate::daemon::{self, DaemonError, Parts, Shipping};
use crate::sim::audmon_db::{self, AudmonDb, AudmonDbStatus};
use crate::sim::feed::{partials_for_distance, FeedWriter};
use crate::sim::{Profile, SimHandle, SimOptions, Simulator};

/// Partials per channel of the simulated audmon.
pub const PARTIALS: usize = 12;

/// Counter the demo gives every Z stepper at start: 20 steps above the string.
pub const START_Z: i32 = 20;

/// Period of the simulated audmon's frames at speed scale 1.
const FEED_PERIOD: Duration = Duration::from_millis(200);

/// Shortest frame period at high speed scales: faster rewrites would only
/// make the reader's torn-read retries busier.
const MIN_FEED_PERIOD: Duration = Duration::from_millis(20);

/// Relative pitch wobble of the simulated partials between frames (0.17
/// cent): inaudible, changes no voice count nor amplitude, but keeps the
/// frame bytes changing as a real analysis does.
const PITCH_WOBBLE: f32 = 1e-4;

/// The database the demo ships to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatabaseChoice {
    /// A `postgres://` URL.
    pub url: String,
    /// Where it came from (`--database-url` or `DATABASE_URL`), for messages.
    pub from: &'static str,
}

/// The database to ship to: `--database-url` if given, else `DATABASE_URL`
/// if set and not empty, else none.
pub fn choose_database(flag: Option<String>, env: Option<String>) -> Option<DatabaseChoice> {
    match (flag, env) {
        (Some(url), _) => Some(DatabaseChoice {
            url,
            from: "--database-url",
        }),
        (None, Some(url)) if !url.trim().is_empty() => Some(DatabaseChoice {
            url,
            from: "DATABASE_URL",
        }),
        _ => None,
    }
}

/// How the demo runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// The configuration file (for the daemon's log; the demo does not reload it).
    pub config_path: PathBuf,
    /// Speed scale of the simulated firmware and audmon (1 = real time).
    pub speed_scale: f64,
    /// Where to ship; `None` keeps every record in the spool.
    pub database: Option<DatabaseChoice>,
}

/// Errors of the demo.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// A simulator could not start.
    #[error("board {board}: {cause}")]
    Sim {
        /// Board name.
        board: String,
        /// Why.
        cause: crate::sim::SimError,
    },
    /// Another daemon or demo uses the state directory.
    #[error(transparent)]
    Lock(#[from] crate::lock::LockError),
    /// The simulated audmon could not write its feed.
    #[error("cannot write the simulated audmon feed in {}: {cause}", dir.display())]
    Feed {
        /// The feed directory.
        dir: PathBuf,
        /// Why.
        cause: std::io::Error,
    },
    /// The speed scale is not a positive number.
    #[error("--speed-scale must be a positive number, not {0}")]
    SpeedScale(f64),
    /// The database URL cannot be used.
    #[error("{from}: {reason}")]
    DatabaseUrl {
        /// `--database-url` or `DATABASE_URL`.
        from: &'static str,
        /// Why (never the URL itself, which may hold a password).
        reason: String,
    },
    /// The daemon failed.
    #[error(transparent)]
    Daemon(#[from] DaemonError),
    /// The daemon ended, or the demo was stopped, before the daemon was running.
    #[error("{0}")]
    NotStarted(&'static str),
}

/// What the demo did, printed when it stops.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// How long the daemon ran.
    pub ran_for: Duration,
    /// Timer snapshots captured.
    pub timer_snapshots: u64,
    /// Event snapshots captured (board connected, shutdown).
    pub event_snapshots: u64,
    /// Snapshots not taken, by reason (see [`crate::snapshot`]).
    pub skipped: BTreeMap<String, u64>,
    /// Records the shipper committed to PostgreSQL.
    pub shipped: u64,
    /// The shipper's last error, if any.
    pub ship_error: Option<String>,
    /// Records left in the spool (`None` if it could not be read).
    pub backlog: Option<u64>,
    /// The spool file.
    pub spool: PathBuf,
    /// The database shipped to, if any.
    pub database: Option<String>,
    /// The status line just before the daemon was stopped.
    pub last_status: String,
    /// Safety violations the simulated boards recorded (a correct host causes none).
    pub violations: usize,
    /// What the simulated audmon wrote to `controls` and `partials` (with a database).
    pub audmon: Option<AudmonDbStatus>,
}

/// The exact command to try against the demo's control socket, quoted for
/// a POSIX shell when the path needs it.
pub fn try_status_line(socket: &Path) -> String {
    let path = socket.display().to_string();
    let plain = path
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "/._-+,:@%".contains(c));
    let arg = if plain && !path.is_empty() {
        path
    } else {
        format!("'{}'", path.replace('\'', "'\\''"))
    };
    format!("stringdriverctl --socket {arg} status")
}

impl Summary {
    /// Snapshots captured, timer and event.
    pub fn captured(&self) -> u64 {
        self.timer_snapshots + self.event_snapshots
    }

    /// The summary as the command prints it.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let mut line = |k: &str, v: String| out.push_str(&format!("{k:<21} {v}\n"));
        line(
            "ran for",
            humantime::format_duration(Duration::from_secs(self.ran_for.as_secs())).to_string(),
        );
        line("last status", self.last_status.clone());
        line(
            "snapshots captured",
            format!(
                "{} ({} timer, {} event)",
                self.captured(),
                self.timer_snapshots,
                self.event_snapshots
            ),
        );
        if !self.skipped.is_empty() {
            let why: Vec<String> = self
                .skipped
                .iter()
                .map(|(k, n)| format!("{k} {n}"))
                .collect();
            line("snapshots not taken", why.join(", "));
        }
        match &self.database {
            Some(url) => line("shipped", format!("{} records to {url}", self.shipped)),
            None => line("shipped", "none (no database given)".to_string()),
        }
        if let Some(e) = &self.ship_error {
            line("last database error", e.clone());
        }
        if let Some(a) = &self.audmon {
            line(
                "audmon frames",
                format!(
                    "{} written to controls ({} partials rows), {} lost (no database session: \
                     away, behind, or its tables not created yet)",
                    a.written, a.partials, a.dropped
                ),
            );
        }
        let backlog = self
            .backlog
            .map_or_else(|| "unknown".to_string(), |n| n.to_string());
        line(
            "left in the spool",
            format!("{backlog} records in {}", self.spool.display()),
        );
        if self.violations > 0 {
            line(
                "SAFETY VIOLATIONS",
                format!("{} (the simulated boards recorded them)", self.violations),
            );
        }
        out.push('\n');
        match &self.database {
            Some(url) => {
                out.push_str("The newest rows:\n");
                out.push_str(&format!(
                    "  psql \"{url}\" -c \"SELECT recorded_at, stepper_positions, voice_count, \
                     amp_sum FROM machine_state ORDER BY recorded_at DESC LIMIT 5\"\n"
                ));
                if self.backlog.unwrap_or(0) > 0 {
                    out.push_str(
                        "Records left in the spool are shipped by the next run with this spool.\n",
                    );
                }
            }
            None => {
                out.push_str(
                    "No database was given, so the records wait in the spool. To ship them, run \
                     the demo again with --database-url postgres://USER@HOST/DBNAME (or \
                     DATABASE_URL set); the backlog goes first. `stringdriverd spool-status \
                     --config FILE` shows the spool.\n",
                );
            }
        }
        out
    }
}

/// The counter the demo gives stepper `global` at start: X 0, Z steppers
/// [`START_Z`], tuners 0 (unused steppers 0).
pub fn starting_position(layout: &Layout, global: usize) -> i32 {
    if layout.role(global).is_z() {
        START_Z
    } else {
        0
    }
}

/// Runs the demo until `stop` resolves, then stops everything and says
/// what was captured.
pub async fn run(
    config: Config,
    options: Options,
    stop: impl Future<Output = ()>,
) -> Result<Summary, DemoError> {
    let scale = options.speed_scale;
    if !(scale.is_finite() && scale > 0.0) {
        return Err(DemoError::SpeedScale(scale));
    }
    let mut cfg = config;
    let shipping = match &options.database {
        Some(db) => {
            check_url(db)?;
            cfg.database
                .use_url(&db.url)
                .map_err(|reason| DemoError::DatabaseUrl {
                    from: db.from,
                    reason,
                })?;
            // A demo database starts empty: let the daemon create its tables.
            cfg.database.auto_migrate = true;
            eprintln!(
                "database: shipping to {} (from {}; tables created if missing)",
                db.url, db.from
            );
            Shipping::Database
        }
        None => {
            eprintln!(
                "no database given (--database-url or DATABASE_URL): records stay in the spool at {}",
                cfg.spool.path.display()
            );
            Shipping::SpoolOnly
        }
    };

    // Before the previous demo's counters and feed are touched: a second
    // demo on the same directory would delete the running one's.
    let _claim = crate::lock::StateLock::acquire(&crate::lock::state_dir(&cfg.spool.path))?;

    eprintln!(
        "control socket: {} (try: {})",
        cfg.control.socket.display(),
        try_status_line(&cfg.control.socket)
    );
    if cfg.compat.enabled {
        let socket = cfg.compat.socket();
        eprintln!(
            "stepper GUI socket (board {}): {} (try: socat - UNIX-CONNECT:{})",
            cfg.compat.board,
            socket.display(),
            socket.display()
        );
    }

    // The simulated boards are new every run: counters kept from an earlier
    // demo describe other boards and must not be restored onto these.
    let counters = crate::daemon::counters_path(&cfg);
    match std::fs::remove_file(&counters) {
        Ok(()) => {
            tracing::info!(file = %counters.display(), "demo: forgot the counters of the previous demo's boards")
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(file = %counters.display(), error = %e, "demo: cannot remove old counters")
        }
    }

    let audmon = match &options.database {
        Some(db) => Some(AudmonRows::start(&cfg, db)?),
        None => None,
    };
    let sims = match start_simulators(&cfg, scale) {
        Ok(sims) => Arc::new(sims),
        Err(e) => {
            if let Some(a) = audmon {
                a.stop().await;
            }
            return Err(e);
        }
    };
    let feed = match FeedTask::start(
        &cfg,
        sims.clone(),
        scale,
        audmon.as_ref().map(|a| a.db.clone()),
    ) {
        Ok(f) => f,
        Err(e) => {
            stop_simulators(sims);
            if let Some(a) = audmon {
                a.stop().await;
            }
            return Err(e);
        }
    };

    let touch = crate::sensors::SimulatedReaders::of(sims.clone());
    let result = drive(&cfg, &options, shipping, Some(touch), stop).await;

    feed.stop();
    let audmon = match audmon {
        Some(a) => Some(a.stop().await),
        None => None,
    };
    let violations = stop_simulators(sims);
    let mut summary = result?;
    summary.violations = violations;
    summary.audmon = audmon;
    Ok(summary)
}

/// The simulated audmon's `controls` and `partials` rows: the task of
/// [`audmon_db::spawn`] and how to stop it.
struct AudmonRows {
    db: AudmonDb,
    task: tokio::task::JoinHandle<()>,
    shutdown: tokio_util::sync::CancellationToken,
}

impl AudmonRows {
    fn start(cfg: &Config, db: &DatabaseChoice) -> Result<AudmonRows, DemoError> {
        let target =
            crate::store::pg::pg_config(&cfg.database).map_err(|e| DemoError::DatabaseUrl {
                from: db.from,
                reason: e.to_string(),
            })?;
        let shutdown = tokio_util::sync::CancellationToken::new();
        let (db, task) = audmon_db::spawn(target, cfg.host.clone(), shutdown.clone());
        Ok(AudmonRows { db, task, shutdown })
    }

    /// Stops the task once the feed has stopped (it writes what is queued)
    /// and returns what it did.
    async fn stop(self) -> AudmonDbStatus {
        self.shutdown.cancel();
        // The task bounds its own flush; this bounds the wait should that fail.
        if tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .is_err()
        {
            tracing::warn!("the simulated audmon's database writer did not stop within 10 s");
        }
        self.db.status()
    }
}

/// A URL the daemon can use, holding no password: the configuration never
/// holds one (only `database.password_file`, which the demo keeps).
fn check_url(db: &DatabaseChoice) -> Result<(), DemoError> {
    let fail = |reason: String| DemoError::DatabaseUrl {
        from: db.from,
        reason,
    };
    let parsed = db.url.parse::<tokio_postgres::Config>().map_err(|e| {
        fail(format!(
            "not a PostgreSQL URL: {}",
            crate::store::pg::error_text(&e)
        ))
    })?;
    if parsed.get_password().is_some() {
        return Err(fail(
            "the URL contains a password; give it without one and put the password in a file \
             named by database.password_file in the configuration"
                .to_string(),
        ));
    }
    Ok(())
}

fn start_simulators(cfg: &Config, scale: f64) -> Result<Vec<SimHandle>, DemoError> {
    let mut sims = Vec::new();
    for b in &cfg.boards {
        let mut profile = Profile::for_firmware(b.firmware, Some(b.steppers));
        profile.width = b.int_bytes;
        let mut opts = SimOptions::new(profile);
        opts.speed_scale = scale;
        // The simulator divides its reset window by the speed scale; this
        // makes the simulated bootloader finish within the configured
        // reset wait whatever the scale.
        opts.reset_window = b.reset_wait.mul_f64(0.8 * scale);
        match Simulator::spawn(opts, &b.port) {
            Ok(sim) => {
                // The simulated machine stands in the starting pose; the
                // demo then tells the daemon so (set_starting_pose).
                let index = sims.len();
                let physical: Vec<i64> = (0..b.steppers)
                    .map(|local| {
                        cfg.layout
                            .try_global(index, local)
                            .map_or(0, |g| starting_position(&cfg.layout, g) as i64)
                    })
                    .collect();
                sim.set_physical(&physical);
                tracing::info!(board = %b.name, link = %b.port.display(), "simulated board started");
                sims.push(sim);
            }
            Err(cause) => {
                stop_simulators(Arc::new(sims));
                return Err(DemoError::Sim {
                    board: b.name.clone(),
                    cause,
                });
            }
        }
    }
    Ok(sims)
}

/// Stops the simulators; returns how many safety violations they recorded.
fn stop_simulators(sims: Arc<Vec<SimHandle>>) -> usize {
    let sims = match Arc::try_unwrap(sims) {
        Ok(sims) => sims,
        Err(shared) => {
            // Only if the feed thread could not be joined; dropping the last
            // reference stops them all the same.
            return shared.iter().map(|s| s.violations().len()).sum();
        }
    };
    let mut count = 0;
    for sim in sims {
        let v = sim.violations();
        if !v.is_empty() {
            tracing::error!(
                link = %sim.link().display(),
                count = v.len(),
                first = %v[0].detail,
                "the simulated board recorded safety violations"
            );
        }
        count += v.len();
        sim.stop();
    }
    count
}

/// The simulated audmon: a thread writing a frame every period.
struct FeedTask {
    stop: std_mpsc::Sender<()>,
    thread: ThreadHandle<FeedWriter>,
    dir: PathBuf,
}

impl FeedTask {
    fn start(
        cfg: &Config,
        sims: Arc<Vec<SimHandle>>,
        scale: f64,
        db: Option<AudmonDb>,
    ) -> Result<FeedTask, DemoError> {
        let dir = cfg.feed.dir.clone();
        let fail = |cause| DemoError::Feed {
            dir: dir.clone(),
            cause,
        };
        std::fs::create_dir_all(&dir).map_err(fail)?;
        let writer = FeedWriter::create(&dir, cfg.layout.strings(), PARTIALS).map_err(fail)?;
        // Never slower than half the stale limit, or the reader would call
        // the simulated audmon stale between two frames.
        let period = FEED_PERIOD
            .div_f64(scale)
            .max(MIN_FEED_PERIOD)
            .min(cfg.feed.stale_after / 2);
        let layout = cfg.layout.clone();
        let (stop, stopped) = std_mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("demo audmon".to_string())
            .spawn(move || feed_loop(writer, &sims, &layout, period, &stopped, db.as_ref()))
            .map_err(fail)?;
        tracing::info!(dir = %dir.display(), channels = cfg.layout.strings(), partials = PARTIALS, ?period, "simulated audmon feed started");
        Ok(FeedTask { stop, thread, dir })
    }

    /// Stops the thread and removes the feed files, as audmon does when it stops.
    fn stop(self) {
        let _ = self.stop.send(());
        let removed = match self.thread.join() {
            Ok(writer) => writer.remove(),
            // The writer went with the thread: remove its files by name.
            Err(_) => [crate::feed::CONTROL_FILE, crate::feed::PEAKS_FILE]
                .iter()
                .map(|name| std::fs::remove_file(self.dir.join(name)))
                .find(|r| {
                    r.as_ref()
                        .is_err_and(|e| e.kind() != std::io::ErrorKind::NotFound)
                })
                .unwrap_or(Ok(())),
        };
        if let Err(e) = removed {
            tracing::warn!(dir = %self.dir.display(), error = %e, "cannot remove the simulated feed files");
        }
    }
}

/// Writes a frame every `period` until told to stop (or the demo is gone).
fn feed_loop(
    mut writer: FeedWriter,
    sims: &[SimHandle],
    layout: &Layout,
    period: Duration,
    stopped: &std_mpsc::Receiver<()>,
    db: Option<&AudmonDb>,
) -> FeedWriter {
    let mut last_error: Option<String> = None;
    let mut frame_no: u64 = 0;
    loop {
        // How far each mechanism really is from its string (the sound does
        // not care what the counters say).
        let distances: Vec<Vec<i32>> = sims
            .iter()
            .map(|s| {
                s.physical()
                    .iter()
                    .zip(s.contacts())
                    .map(|(p, c)| {
                        (p - c.unwrap_or(0)).clamp(i32::MIN as i64, i32::MAX as i64) as i32
                    })
                    .collect()
            })
            .collect();
        let frame = feed_frame(layout, &distances, frame_no);
        match writer.write_frame(&frame) {
            Ok(()) => {
                last_error = None;
                // Logged as audmon logs a frame it analysed; never blocks.
                if let Some(db) = db {
                    db.offer(chrono::Utc::now(), &frame);
                }
            }
            Err(e) => {
                let text = e.to_string();
                // Once per distinct error, not every frame.
                if last_error.as_deref() != Some(text.as_str()) {
                    tracing::warn!(error = %text, "the simulated audmon cannot write a frame");
                }
                last_error = Some(text);
            }
        }
        frame_no = frame_no.wrapping_add(1);
        match stopped.recv_timeout(period) {
            Err(std_mpsc::RecvTimeoutError::Timeout) => {}
            Ok(()) | Err(std_mpsc::RecvTimeoutError::Disconnected) => return writer,
        }
    }
}

/// One frame of the simulated audmon: channel c from the distance of string
/// c's Z pair to the string (the smaller counter, at least 0), given the
/// counters of every board in configured order.
pub fn feed_frame(layout: &Layout, counters: &[Vec<i32>], frame_no: u64) -> Vec<Vec<(f32, f32)>> {
    let counter = |global: usize| {
        let (board, local) = layout.locate(global)?;
        counters.get(board)?.get(local).copied()
    };
    // Cycles through four distinct factors so that consecutive frames differ.
    let wobble = 1.0 + PITCH_WOBBLE * ((frame_no % 4) as f32 - 1.5);
    (0..layout.strings())
        .map(|c| {
            let (zin, zout) = layout.z_pair(c);
            let distance = match (counter(zin), counter(zout)) {
                (Some(a), Some(b)) => a.min(b).max(0) as f32,
                // A counter nobody can read: silence rather than a guess.
                _ => f32::INFINITY,
            };
            let mut partials = partials_for_distance(distance, PARTIALS, c as u64);
            for (frequency, amplitude) in &mut partials {
                if *amplitude > 0.0 {
                    *frequency *= wobble;
                }
            }
            partials
        })
        .collect()
}

/// Runs the daemon with the status line until `stop`, then stops it.
async fn drive(
    cfg: &Config,
    options: &Options,
    shipping: Shipping,
    touch: Option<crate::sensors::SimulatedReaders>,
    stop: impl Future<Output = ()>,
) -> Result<Summary, DemoError> {
    let (stop_tx, stop_rx) = watch::channel(false);
    // The demo does not reload its file; the sender only keeps the channel open.
    let (_reload_tx, reload_rx) = mpsc::channel(1);
    let (parts_tx, parts_rx) = oneshot::channel::<Parts>();
    let started = Instant::now();
    let daemon = daemon::run_with_shipping(
        options.config_path.clone(),
        cfg.clone(),
        shipping,
        touch,
        stop_rx,
        reload_rx,
        move |p| {
            let _ = parts_tx.send(p.clone());
        },
    );
    tokio::pin!(daemon);
    tokio::pin!(stop);

    let parts = tokio::select! {
        r = &mut daemon => {
            r?;
            return Err(DemoError::NotStarted("the daemon ended before it was running"));
        }
        p = parts_rx => match p {
            Ok(p) => p,
            // The daemon dropped the callback without calling it: it failed.
            Err(_) => {
                (&mut daemon).await?;
                return Err(DemoError::NotStarted("the daemon ended before it was running"));
            }
        },
        _ = &mut stop => {
            let _ = stop_tx.send(true);
            (&mut daemon).await?;
            return Err(DemoError::NotStarted("stopped before the daemon was running"));
        }
    };

    let connect_wait = cfg
        .boards
        .iter()
        .map(|b| b.reset_wait)
        .max()
        .unwrap_or_default()
        + Duration::from_secs(10);
    let pose = tokio::spawn(set_starting_pose(parts.clone(), cfg.clone(), connect_wait));

    let spool_only = shipping == Shipping::SpoolOnly;
    let tty = std::io::stderr().is_terminal();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ticks: u64 = 0;
    let ended_by_itself = loop {
        tokio::select! {
            r = &mut daemon => break Some(r),
            _ = &mut stop => break None,
            _ = tick.tick() => {
                let line = status(&parts, spool_only).await;
                if tty {
                    // Autowrap off while writing (\x1b[?7l ... \x1b[?7h):
                    // a line wider than the terminal is cut at its edge
                    // instead of wrapping, so that \r really returns to its
                    // start; \x1b[K clears what a longer previous line left.
                    eprint!("\x1b[?7l\r{line}\x1b[K\x1b[?7h");
                } else if ticks % 5 == 0 {
                    eprintln!("{line}");
                }
                ticks += 1;
            }
        }
    };
    if tty && ticks > 0 {
        eprintln!();
    }
    pose.abort();
    // Before the daemon stops, while the boards are still up.
    let last_status = status(&parts, spool_only).await;
    match ended_by_itself {
        Some(r) => {
            r?;
            tracing::warn!("the daemon stopped by itself");
        }
        None => {
            tracing::info!("stopping the demo");
            let _ = stop_tx.send(true);
            // The daemon bounds its own shutdown; this bounds the demo's wait
            // should that ever fail.
            match tokio::time::timeout(Duration::from_secs(15), &mut daemon).await {
                Ok(r) => r?,
                Err(_) => tracing::warn!("the daemon did not stop within 15 s; leaving it"),
            }
        }
    }
    let ran_for = started.elapsed();
    let snapshots = parts.snapshots.status();
    let shipper = parts.shipper.borrow().clone();
    let backlog = match parts.spool.status().await {
        Ok(s) => Some(s.backlog),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the spool's status");
            None
        }
    };
    Ok(Summary {
        ran_for,
        timer_snapshots: snapshots.timer,
        event_snapshots: snapshots.events,
        skipped: snapshots.skipped,
        shipped: shipper.shipped,
        ship_error: shipper.last_error,
        backlog,
        spool: cfg.spool.path.clone(),
        database: options.database.as_ref().map(|d| d.url.clone()),
        last_status,
        violations: 0,
        audmon: None,
    })
}

/// The daemon's status line with the spool's backlog.
async fn status(parts: &Parts, spool_only: bool) -> String {
    let mut line =
        daemon::status_line(&parts.boards, &parts.snapshots, &parts.shipper, &parts.feed);
    if spool_only {
        // Not a connection problem: there is no database to connect to.
        line = line.replace(" (database not connected)", " (no database)");
    }
    match parts.spool.status().await {
        Ok(s) => line.push_str(&format!("; spool backlog {}", s.backlog)),
        Err(e) => line.push_str(&format!("; spool unreadable ({e})")),
    }
    line
}

/// Sets every counter to its [`starting_position`] once its board is
/// connected, as an operator does after a calibration: the simulated boards
/// are new, so nothing is known of their counters and the daemon captures
/// nothing until they are set.
///
/// One stepper that is not a Z stepper (X) is set last, only once the feed
/// reflects the Z steppers' new height: the simulated audmon hears a counter
/// at its next frame and the reader sees that at its next read, and a
/// snapshot (possible as soon as every counter is trusted) must not pair the
/// new positions with the sound of the old ones.
async fn set_starting_pose(parts: Parts, cfg: Config, connect_wait: Duration) {
    let layout = &cfg.layout;
    let last = (0..layout.total_steppers()).find(|g| !layout.role(*g).is_z());
    let mut held_back = None;
    for board in &parts.boards {
        let Some(index) = cfg.boards.iter().position(|b| b.name == board.name()) else {
            continue;
        };
        let connected = board
            .wait_for(connect_wait, |s| {
                s.link == LinkState::Connected && s.positions.is_some()
            })
            .await;
        if connected.is_none() {
            tracing::warn!(board = %board.name(), wait = ?connect_wait, "board not connected: its counters stay unset and no snapshot is taken");
            continue;
        }
        for local in 0..board.steppers() {
            let Some(global) = layout.try_global(index, local) else {
                continue;
            };
            if Some(global) == last {
                held_back = Some((board.clone(), local, global));
                continue;
            }
            set_one(board, local, starting_position(layout, global)).await;
        }
    }
    let expected: Vec<i32> = (0..layout.strings())
        .map(|c| {
            partials_for_distance(START_Z as f32, PARTIALS, c as u64)
                .iter()
                .filter(|p| p.1 > 0.0)
                .count() as i32
        })
        .collect();
    let mut feed = parts.feed.clone();
    // Only whether it did: the borrowed status must not live across an await.
    let heard = tokio::time::timeout(
        Duration::from_secs(5),
        feed.wait_for(|f| {
            f.values
                .as_ref()
                .is_some_and(|v| v.voice_count.get(..expected.len()) == Some(&expected[..]))
        }),
    )
    .await
    .is_ok_and(|r| r.is_ok());
    if !heard {
        tracing::warn!("the feed did not reflect the starting pose within 5 s; setting the last counter anyway");
    }
    if let Some((board, local, global)) = held_back {
        set_one(&board, local, starting_position(layout, global)).await;
    }
    tracing::info!(
        x = 0,
        z = START_Z,
        tuners = 0,
        "starting pose set with set_stepper, as an operator does after a calibration: \
         the simulated boards are new, so their counters were unknown"
    );
}

async fn set_one(board: &crate::board::BoardHandle, local: usize, value: i32) {
    if let Err(e) = board.set_stepper(local, value).await {
        tracing::warn!(board = %board.name(), stepper = local, value, error = %e, "cannot set the counter; it stays untrusted");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_to_try_names_the_socket_quoted_for_the_shell() {
        assert_eq!(
            try_status_line(Path::new("/tmp/stringdriver-demo/control.sock")),
            "stringdriverctl --socket /tmp/stringdriver-demo/control.sock status"
        );
        assert_eq!(
            try_status_line(Path::new("/tmp/my demo/it's.sock")),
            "stringdriverctl --socket '/tmp/my demo/it'\\''s.sock' status"
        );
    }

    fn demo_config() -> Config {
        let text = include_str!("../config/demo.toml");
        crate::config::parse(text, Path::new("config/demo.toml")).expect("demo config parses")
    }

    #[test]
    fn flag_wins_over_environment_and_empty_environment_is_none() {
        let c = choose_database(
            Some("postgres://a@h/x".into()),
            Some("postgres://b@h/y".into()),
        );
        assert_eq!(
            c.map(|c| (c.url, c.from)),
            Some(("postgres://a@h/x".to_string(), "--database-url"))
        );
        let c = choose_database(None, Some("postgres://b@h/y".into()));
        assert_eq!(c.map(|c| c.from), Some("DATABASE_URL"));
        assert_eq!(choose_database(None, Some("  ".into())), None);
        assert_eq!(choose_database(None, None), None);
    }

    #[test]
    fn urls_with_passwords_are_refused_without_repeating_them() {
        let db = DatabaseChoice {
            url: "postgres://u:hunter2@h/x".into(),
            from: "DATABASE_URL",
        };
        let e = check_url(&db).expect_err("refused").to_string();
        assert!(e.contains("password") && !e.contains("hunter2"), "{e}");
        let ok = DatabaseChoice {
            url: "postgres://u@h/x".into(),
            from: "--database-url",
        };
        assert!(check_url(&ok).is_ok());
    }

    #[test]
    fn frame_follows_the_nearer_z_stepper_of_each_string() {
        let cfg = demo_config();
        let layout = &cfg.layout;
        let mut counters = vec![vec![0; 13], vec![0; 6]];
        // String 2: Z pair at 20 and 35, so its distance is 20.
        let (zin, zout) = layout.z_pair(2);
        counters[0][zin] = 20;
        counters[0][zout] = 35;
        // String 4: one Z stepper below the string counts as touching.
        let (zin, _) = layout.z_pair(4);
        counters[0][zin] = -7;
        let frame = feed_frame(layout, &counters, 0);
        assert_eq!(frame.len(), 6);
        let voices = |ch: &Vec<(f32, f32)>| ch.iter().filter(|p| p.1 > 0.0).count();
        assert_eq!(voices(&frame[2]), 10);
        assert_eq!(voices(&frame[4]), 12);
        assert_eq!(voices(&frame[0]), 12);
        let amps = |ch: &Vec<(f32, f32)>| ch.iter().map(|p| p.1).collect::<Vec<_>>();
        let want = partials_for_distance(20.0, PARTIALS, 2);
        assert_eq!(amps(&frame[2]), amps(&want));
    }

    #[test]
    fn consecutive_frames_differ_in_pitch_only() {
        let cfg = demo_config();
        let counters = vec![vec![20; 13], vec![0; 6]];
        let a = feed_frame(&cfg.layout, &counters, 0);
        let b = feed_frame(&cfg.layout, &counters, 1);
        assert_ne!(a, b);
        for (ca, cb) in a.iter().zip(&b) {
            for (pa, pb) in ca.iter().zip(cb) {
                assert_eq!(pa.1, pb.1);
                assert!((pa.0 - pb.0).abs() <= pa.0 * 2.0 * PITCH_WOBBLE);
            }
        }
    }

    #[test]
    fn starting_pose_is_x_0_z_20_tuners_0() {
        let cfg = demo_config();
        let pose: Vec<i32> = (0..cfg.layout.total_steppers())
            .map(|g| starting_position(&cfg.layout, g))
            .collect();
        let mut want = vec![0];
        want.extend([START_Z; 12]);
        want.extend([0; 6]);
        assert_eq!(pose, want);
    }
}
