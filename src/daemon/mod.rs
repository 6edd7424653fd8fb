//! `stringdriverd run`: the supervisor that owns every part of the running
//! daemon.
//!
//! Start: open the spool (salvaging a damaged one), check the database
//! (unreachable: start anyway and let the shipper retry; reachable but not
//! migrated: refuse to start and name the command, unless `auto_migrate`),
//! then start the board drivers, the feed reader, the controls_id cache, the
//! snapshot engine and the shipper. `READY=1` goes to systemd when every
//! board answered, or after a bounded wait.
//!
//! Running: every 5 s a one-line `STATUS=`; `WATCHDOG=1` only while the
//! snapshot engine's loop makes progress, so a wedged daemon is restarted by
//! systemd. A part whose task ends unexpectedly (a panic) is logged and
//! restarted with backoff; the others go on.
//!
//! Signals: SIGTERM/SIGINT stop gracefully — a final event snapshot, then the
//! board drivers finish the command in flight, the shipper finishes its
//! batch; the spool needs no flush (every append is already on disk). SIGHUP
//! reloads the file: an invalid file is rejected and the running
//! configuration kept; live settings ([`reload::LIVE`]) apply at once, the
//! rest is logged as needing a restart.

pub mod notify;
pub mod reload;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::board::{self, BoardEvent, BoardHandle, BoardSpec, LinkState, SerialConnector};
use crate::config::{self, Config, Role, SnapshotLink};
use crate::snapshot::{self, Settings, SnapshotHandle, Sources};
use crate::store::ship::{self, ShipperOptions, ShipperStatus};
use crate::store::{migrate, pg, Spool, SpoolHandle};

/// Why the daemon could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The spool could not be opened.
    #[error(transparent)]
    Spool(#[from] crate::store::SpoolError),
    /// The database settings are unusable.
    #[error(transparent)]
    Database(#[from] pg::StoreConnectError),
    /// The database is reachable but not migrated (and auto_migrate is off).
    #[error("{0}")]
    Schema(String),
    /// A part failed beyond what the daemon can repair in-process.
    #[error("{0}")]
    Failed(String),
    /// Signal handling could not be installed.
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
}

/// The initial enable state: every stepper with a role; unused ones stay off.
pub fn initial_enables(cfg: &Config) -> Vec<bool> {
    (0..cfg.layout.total_steppers())
        .map(|g| cfg.layout.role(g) != Role::Unused)
        .collect()
}

fn settings_of(cfg: &Config, enabled: Vec<bool>) -> Settings {
    Settings {
        operations: cfg.operations.clone(),
        thresholds: cfg.thresholds.clone(),
        enabled,
    }
}

/// What the running daemon is made of (for the demo and tests, which run it in-process).
#[derive(Clone)]
pub struct Parts {
    /// Board handles in configured order.
    pub boards: Vec<BoardHandle>,
    /// The snapshot engine.
    pub snapshots: SnapshotHandle,
    /// The shipper's status.
    pub shipper: watch::Receiver<ShipperStatus>,
    /// The feed's status.
    pub feed: watch::Receiver<crate::feed::FeedStatus>,
    /// The spool.
    pub spool: SpoolHandle,
    /// The motion gate every move passes.
    pub gate: crate::motion::MotionGate,
    /// The operations, wired to the gate, sensors, snapshots and spool.
    pub machine: crate::ops::Machine,
    /// Settings and enables (changed at run time through this sender).
    pub settings: Arc<watch::Sender<Settings>>,
    /// Where run-time changes are kept across restarts.
    pub state: Arc<crate::state::StateFile>,
    /// The settings as the configuration file alone gives them (no run-time
    /// changes): what `get` shows beside an override and `unset` returns to.
    /// Replaced on a reload.
    pub file_settings: Arc<watch::Sender<Settings>>,
    /// Every Z sensor's state, read once a second outside operations.
    pub touch: watch::Receiver<crate::sensors::TouchStates>,
    /// What the stepper GUI's socket did (`status.compat`).
    pub compat: Arc<watch::Sender<crate::compat::CompatStatus>>,
}

/// Where run-time enables and settings are kept: beside the spool.
pub fn state_path(cfg: &Config) -> PathBuf {
    cfg.spool.path.with_file_name("state.json")
}

/// The run-time settings from the file plus the saved run-time changes.
fn restored_settings(cfg: &Config, saved: &crate::state::Saved) -> Settings {
    let mut s = settings_of(cfg, initial_enables(cfg));
    for skipped in crate::state::StateFile::restore(saved, &mut s) {
        tracing::warn!(%skipped, "a saved run-time change no longer applies and is ignored");
    }
    s
}

/// Names of the run-time settings whose value the file changed.
fn file_changed(old: &Config, new: &Config) -> Vec<&'static str> {
    let a = settings_of(old, Vec::new());
    let b = settings_of(new, Vec::new());
    crate::state::SETTINGS
        .iter()
        .copied()
        .filter(|name| setting_value(&a, name) != setting_value(&b, name))
        .collect()
}

/// One run-time setting as JSON (for comparisons and the control API).
pub fn setting_value(s: &Settings, name: &str) -> serde_json::Value {
    let (o, t) = (&s.operations, &s.thresholds);
    match name {
        "bump_check_enable" => o.bump_check_enable.into(),
        "z_up_step" => o.z_up_step.into(),
        "z_down_step" => o.z_down_step.into(),
        "tune_rest" => o.tune_rest.into(),
        "x_rest" => o.x_rest.into(),
        "z_rest" => o.z_rest.into(),
        "lap_rest" => o.lap_rest.into(),
        "adjustment_level" => o.adjustment_level.into(),
        "retry_threshold" => o.retry_threshold.into(),
        "delta_threshold" => o.delta_threshold.into(),
        "z_variance_threshold" => o.z_variance_threshold.into(),
        "x_start" => o.x_start.into(),
        "x_finish" => o.x_finish.into(),
        "x_step" => o.x_step.into(),
        "tuner_step" => o.tuner_step.into(),
        "voice_count_min" => t.voice_count_min.clone().into(),
        "voice_count_max" => t.voice_count_max.clone().into(),
        "amp_sum_min" => t.amp_sum_min.clone().into(),
        "amp_sum_max" => t.amp_sum_max.clone().into(),
        _ => serde_json::Value::Null,
    }
}

/// Runs the daemon until SIGTERM or SIGINT. `path` is re-read on SIGHUP.
pub async fn run(path: PathBuf, cfg: Config) -> Result<(), DaemonError> {
    let mut signals =
        signal_hook_tokio::Signals::new([SIGTERM, SIGINT, SIGHUP]).map_err(DaemonError::Signals)?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let (reload_tx, reload_rx) = tokio::sync::mpsc::channel(4);
    let signal_task = tokio::spawn(async move {
        while let Some(sig) = signals.next().await {
            match sig {
                SIGHUP => {
                    let _ = reload_tx.send(()).await;
                }
                _ => {
                    tracing::info!(signal = sig, "stopping");
                    let _ = stop_tx.send(true);
                }
            }
        }
    });
    let r = run_with(path, cfg, stop_rx, reload_rx, |_| {}).await;
    signal_task.abort();
    r
}

/// Where the records the daemon captures go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shipping {
    /// Through the spool to the configured database (the service).
    Database,
    /// Nowhere: every record stays in the spool and nothing connects to
    /// PostgreSQL (no schema check, no controls_id lookup, no shipper), for
    /// the demo without a database. A later `stringdriverd run` with the same
    /// spool ships them.
    SpoolOnly,
}

/// [`run`] with the stop and reload triggers given; `on_start` sees the
/// parts once they run.
pub async fn run_with(
    path: PathBuf,
    cfg: Config,
    stop: watch::Receiver<bool>,
    reload: tokio::sync::mpsc::Receiver<()>,
    on_start: impl FnOnce(&Parts),
) -> Result<(), DaemonError> {
    run_with_shipping(path, cfg, Shipping::Database, None, stop, reload, on_start).await
}

/// [`run_with`], shipping the records or keeping them in the spool.
pub async fn run_with_shipping(
    path: PathBuf,
    cfg: Config,
    shipping: Shipping,
    touch: Option<crate::sensors::SimulatedReaders>,
    mut stop: watch::Receiver<bool>,
    mut reload: tokio::sync::mpsc::Receiver<()>,
    on_start: impl FnOnce(&Parts),
) -> Result<(), DaemonError> {
    let cfg = Arc::new(cfg);
    let host = cfg.host.clone();
    tracing::info!(%host, config = %path.display(), "stringdriverd starting");

    // The spool first: nothing may be captured before it is open.
    let spool_path = cfg.spool.path.clone();
    let limit = cfg.spool.max_bytes;
    let (spool, damage) = tokio::task::spawn_blocking(move || Spool::open(&spool_path, limit))
        .await
        .map_err(|e| crate::store::SpoolError::Open {
            path: cfg.spool.path.clone(),
            detail: e.to_string(),
        })??;
    if let Some(d) = damage {
        tracing::error!(problem = %d.problem, moved_to = %d.moved_to.display(), salvaged = d.salvaged, corrupt = d.corrupt, "the spool was damaged and has been salvaged");
    }
    let spool = SpoolHandle::new(spool);
    close_interrupted_operations(&spool).await?;

    let pg_cfg = match shipping {
        Shipping::Database => {
            let pg_cfg = pg::pg_config(&cfg.database)?;
            check_database(&pg_cfg, cfg.database.auto_migrate).await?;
            Some(pg_cfg)
        }
        Shipping::SpoolOnly => {
            tracing::info!(spool = %cfg.spool.path.display(), "no database: records stay in the spool");
            None
        }
    };

    let io = CancellationToken::new();
    // Counters known from before this start: the boards reset when their
    // ports open, and the drivers write these back (restore_counters_after_reset).
    let counters_path = counters_path(&cfg);
    let (counter_file, mut known, problem) =
        tokio::task::spawn_blocking(move || board::CounterFile::open(&counters_path))
            .await
            .map_err(|e| DaemonError::Schema(format!("cannot read the counters file: {e}")))?;
    if let Some(p) = problem {
        tracing::error!(problem = %p, "the counters file was unreadable and has been moved aside: every counter starts untrusted");
    }
    // Run-time changes from before this start (enables, settings).
    let state_file = state_path(&cfg);
    let (state, saved, problem) =
        tokio::task::spawn_blocking(move || crate::state::StateFile::open(&state_file))
            .await
            .map_err(|e| DaemonError::Failed(format!("cannot read the state file: {e}")))?;
    if let Some(p) = problem {
        tracing::error!(problem = %p, "the state file was unreadable and has been moved aside: enables and settings come from the configuration");
    }
    // Motor parameters: the file's, with the run-time changes kept from
    // before; every board is given them after it connects.
    let (motor, skipped) = crate::state::restore_motor(&saved, &cfg);
    for skipped in skipped {
        tracing::warn!(%skipped, "a saved motor parameter change no longer applies and is ignored");
    }
    let state = Arc::new(state);
    {
        let (st, file_motor) = (state.clone(), cfg.motor.clone());
        if let Ok(Err(e)) = tokio::task::spawn_blocking(move || st.start_motor(&file_motor)).await {
            tracing::error!(error = %e, "cannot update the state file");
        }
    }
    let mut boards = Vec::new();
    let mut board_tasks = Vec::new();
    for i in 0..cfg.boards.len() {
        let Some(spec) = BoardSpec::from_config_with(&cfg, &motor, i) else {
            continue;
        };
        let connector = Arc::new(SerialConnector {
            path: spec.port.clone(),
            baud: spec.baud,
        });
        let initial = known
            .remove(&spec.name)
            .filter(|k| k.positions.len() == spec.steppers());
        let store: Arc<dyn board::CounterStore> = Arc::new(counter_file.clone());
        let (h, t) = board::spawn_with_store(spec, connector, initial, Some(store), io.clone());
        boards.push(h);
        board_tasks.push(t);
    }

    let (feed_rx, feed_task) = crate::feed::spawn(cfg.feed.clone(), io.clone());

    let mut other_tasks: Vec<JoinHandle<()>> = vec![feed_task];
    let controls = match (cfg.snapshot.link, &pg_cfg) {
        (SnapshotLink::None, _) | (SnapshotLink::Latest, None) => None,
        (SnapshotLink::Latest, Some(pg_cfg)) => {
            // Often enough to follow audmon's frames (a few per second) without
            // loading the server: a quarter of the allowed age, within 50-500 ms.
            let refresh = (cfg.snapshot.link_max_age / 4)
                .clamp(Duration::from_millis(50), Duration::from_millis(500));
            let (cache, task) = crate::store::controls::spawn_controls_cache(
                pg_cfg.clone(),
                host.clone(),
                refresh,
                io.clone(),
            );
            other_tasks.push(task);
            Some(cache)
        }
    };
    let (settings_tx, settings_rx) = watch::channel(restored_settings(&cfg, &saved));
    let settings_tx = Arc::new(settings_tx);
    let file_settings = Arc::new(watch::Sender::new(settings_of(&cfg, initial_enables(&cfg))));
    // Enables persist whoever changes them (an operation disabling a stepper
    // for safety, an operator): saved on every change.
    let enables_task = {
        let mut rx = settings_rx.clone();
        let state = state.clone();
        // Taken now, before anyone can change them: a change made before the
        // task first runs must still count as a change.
        let mut last = rx.borrow_and_update().enabled.clone();
        tokio::spawn(async move {
            while rx.changed().await.is_ok() {
                let now = rx.borrow_and_update().enabled.clone();
                if now != last {
                    let st = state.clone();
                    let e = now.clone();
                    match tokio::task::spawn_blocking(move || st.save_enabled(&e)).await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => tracing::error!(error = %e, "cannot save the enables"),
                        Err(e) => tracing::error!(error = %e, "cannot save the enables"),
                    }
                    last = now;
                }
            }
        })
    };
    let (interval_tx, interval_rx) = watch::channel(cfg.snapshot.interval);
    let (max_age_tx, max_age_rx) = watch::channel(cfg.snapshot.link_max_age);
    let sources = Sources {
        host: host.clone(),
        layout: Arc::new(cfg.layout.clone()),
        boards: boards.iter().map(BoardHandle::watch).collect(),
        settings: settings_rx,
        feed: feed_rx.clone(),
        controls: controls.map(|c| (c, max_age_rx)),
    };

    let capture = CancellationToken::new();
    let (snapshots, mut snapshot_task) = snapshot::spawn(
        sources.clone(),
        spool.clone(),
        interval_rx.clone(),
        capture.clone(),
    );

    let shipper_opts = ShipperOptions {
        roles: Some((host.clone(), cfg.clone())),
        auto_migrate: cfg.database.auto_migrate,
        ..ShipperOptions::default()
    };
    // Without a shipper its status stays the default (nothing shipped); the
    // sender lives as long as the daemon so that the receiver stays open.
    let (_idle_shipper, shipper_rx) = watch::channel(ShipperStatus::default());
    let shipper_rx = match pg_cfg {
        Some(pg_cfg) => {
            let (rx, task) = ship::spawn(spool.clone(), pg_cfg, shipper_opts, io.clone());
            other_tasks.push(task);
            rx
        }
        None => shipper_rx,
    };

    let gate = crate::motion::MotionGate::new(
        boards.clone(),
        Arc::new(cfg.layout.clone()),
        settings_tx.subscribe(),
    )
    .with_motor(cfg.boards.clone(), motor);
    let event_task =
        forward_board_events(&boards, cfg.layout.clone(), gate.clone(), snapshots.clone());
    let sensors: Arc<dyn crate::sensors::TouchSensors> = match crate::sensors::from_config(
        &cfg, touch,
    ) {
        Ok(s) => {
            tracing::info!(sensors = %s.describe(), "touch sensors");
            Arc::from(s)
        }
        Err(e) => {
            // Capture goes on; operations that need the sensors refuse with this.
            tracing::error!(error = %e, "touch sensors unavailable: operations that need them will refuse");
            Arc::new(crate::sensors::NoSensors)
        }
    };
    let (touch_rx, touch_task) = {
        let gate = gate.clone();
        crate::sensors::watch::spawn(
            sensors.clone(),
            Arc::new(cfg.layout.clone()),
            Arc::new(move || gate.running().is_some()),
            crate::sensors::WATCH_PERIOD,
            io.clone(),
        )
    };
    other_tasks.push(touch_task);
    let machine = {
        let boards = boards.clone();
        crate::ops::Machine {
            host: host.clone(),
            layout: Arc::new(cfg.layout.clone()),
            gate: gate.clone(),
            sensors,
            settings: settings_tx.clone(),
            feed: feed_rx.clone(),
            snapshots: snapshots.clone(),
            spool: spool.clone(),
            positions: Arc::new(move || {
                boards
                    .iter()
                    .flat_map(|b| {
                        b.status()
                            .positions
                            .unwrap_or_else(|| vec![0; b.steppers()])
                    })
                    .collect()
            }),
            progress: tokio::sync::broadcast::channel(64).0,
        }
    };
    let parts = Parts {
        boards: boards.clone(),
        snapshots: snapshots.clone(),
        shipper: shipper_rx.clone(),
        feed: feed_rx.clone(),
        spool: spool.clone(),
        gate,
        machine,
        settings: settings_tx.clone(),
        state: state.clone(),
        file_settings: file_settings.clone(),
        touch: touch_rx,
        compat: Arc::new(watch::Sender::new(crate::compat::disabled_status())),
    };
    on_start(&parts);
    // Without its control socket the daemon still captures and ships.
    match crate::control::start(&cfg.control, parts.clone(), io.clone()).await {
        Ok(task) => other_tasks.push(task),
        Err(e) => tracing::error!(error = %e, "control socket not started"),
    }
    // The older tools' socket is optional too: one that cannot be bound is
    // logged and tried again, the daemon goes on.
    if cfg.compat.enabled {
        other_tasks.push(crate::compat::start(&cfg.compat, parts.clone(), io.clone()));
    }

    // READY once every board answered, or after a bounded wait: a missing
    // board must not keep the service "activating" forever.
    let ready_wait = cfg
        .boards
        .iter()
        .map(|b| b.reset_wait)
        .max()
        .unwrap_or_default()
        + Duration::from_secs(5);
    let mut ready = false;
    let ready_at = tokio::time::Instant::now() + ready_wait;

    let watchdog = notify::watchdog_period();
    let watchdog_every = watchdog.map_or(Duration::from_secs(3600), |p| p / 2);
    // The first check one period after start, not at once: the snapshot
    // engine's first heartbeat may not have happened yet (a spurious "no
    // progress" error at start otherwise).
    let mut watchdog_tick =
        tokio::time::interval_at(tokio::time::Instant::now() + watchdog_every, watchdog_every);
    let mut last_heartbeat = 0u64;
    let mut status_tick = tokio::time::interval(Duration::from_secs(5));
    let mut ready_tick = tokio::time::interval(Duration::from_millis(100));
    let mut failed = false;
    let mut current = cfg.clone();
    let started = cfg.clone();

    loop {
        tokio::select! {
            // The guard `wait_for` returns must not live in the select's state
            // (it is not Send): drop it inside the branch future.
            _ = async { let _ = stop.wait_for(|s| *s).await; } => break,
            Some(()) = reload.recv() => {
                match config::load(&path) {
                    Err(e) => tracing::error!(error = %e, "SIGHUP: the new configuration is invalid; keeping the running one: {e}"),
                    Ok(new) => {
                        // Restart-only settings against what still runs
                        // (the start's file), not the last reload's.
                        let d = reload::diff_running(&started, &current, &new);
                        for change in &d.applied {
                            tracing::info!(%change, "SIGHUP: applied {change}");
                        }
                        for key in &d.need_restart {
                            tracing::warn!(%key, "SIGHUP: {key} changed, takes effect after a restart");
                        }
                        if d.applied.is_empty() && d.need_restart.is_empty() {
                            tracing::info!("SIGHUP: nothing changed");
                        }
                        // The file's newer word wins over a run-time change of the same setting.
                        let changed = file_changed(&current, &new);
                        let st = state.clone();
                        let names: Vec<&'static str> = changed.clone();
                        if let Ok(Err(e)) = tokio::task::spawn_blocking(move || st.drop_overrides(&names)).await {
                            tracing::error!(error = %e, "cannot update the state file");
                        }
                        if current.motor != new.motor {
                            let st = state.clone();
                            if let Ok(Err(e)) = tokio::task::spawn_blocking(move || st.drop_motor()).await {
                                tracing::error!(error = %e, "cannot update the state file");
                            }
                        }
                        let (_, saved, _) = crate::state::StateFile::open(&state_path(&new));
                        let enabled = settings_tx.borrow().enabled.clone();
                        let mut next = restored_settings(&new, &crate::state::Saved { enabled: None, ..saved });
                        next.enabled = enabled;
                        settings_tx.send_replace(next);
                        file_settings.send_replace(settings_of(&new, initial_enables(&new)));
                        let _ = interval_tx.send(new.snapshot.interval);
                        let _ = max_age_tx.send(new.snapshot.link_max_age);
                        if !d.applied.is_empty() {
                            snapshots.request("settings reloaded");
                        }
                        current = Arc::new(new);
                    }
                }
            }
            _ = ready_tick.tick(), if !ready => {
                let all = boards.iter().all(|b| b.status().link == LinkState::Connected);
                if all || tokio::time::Instant::now() >= ready_at {
                    ready = true;
                    if !all {
                        tracing::warn!("not every board answered in time; ready anyway, they are retried");
                    }
                    // STATUS= in the same message: `systemctl status` never
                    // shows a ready service with the starting status.
                    let line = status_line(&boards, &snapshots, &shipper_rx, &feed_rx);
                    notify::ready_with_status(&line);
                    tracing::info!(status = %line, "ready: {line}");
                }
            }
            _ = status_tick.tick() => {
                let line = status_line(&boards, &snapshots, &shipper_rx, &feed_rx);
                notify::status(&line);
                tracing::debug!(status = %line);
            }
            _ = watchdog_tick.tick(), if watchdog.is_some() => {
                let hb = snapshots.status().heartbeat;
                if hb != last_heartbeat {
                    last_heartbeat = hb;
                    notify::watchdog();
                } else {
                    tracing::error!("the snapshot engine made no progress: withholding the watchdog ping");
                }
            }
            r = &mut snapshot_task => {
                // Its rounds catch their own panics, so this is beyond
                // repair in-process: stop, and let systemd restart us.
                tracing::error!(error = ?r.err(), "the snapshot engine ended unexpectedly; stopping so that the service is restarted");
                failed = true;
                break;
            }
        }
    }

    notify::stopping();
    // The final snapshot while the boards are still up.
    match tokio::time::timeout(Duration::from_secs(1), snapshots.snapshot("shutdown")).await {
        Ok(Ok(id)) => tracing::info!(state_id = %id, "final snapshot captured"),
        Ok(Err(e)) => tracing::warn!(error = %e, "no final snapshot"),
        Err(_) => tracing::warn!("no final snapshot: timed out"),
    }
    capture.cancel();
    io.cancel();
    let all = async {
        if !failed {
            let _ = snapshot_task.await;
        }
        for t in board_tasks {
            let _ = t.await;
        }
        for t in other_tasks {
            let _ = t.await;
        }
    };
    if tokio::time::timeout(Duration::from_secs(3), all)
        .await
        .is_err()
    {
        tracing::warn!("some parts did not stop within 3 s");
    }
    event_task.abort();
    enables_task.abort();
    let backlog = spool.status().await.map(|s| s.backlog).unwrap_or_default();
    tracing::info!(
        backlog,
        "stopped; unshipped records stay in the spool for the next start"
    );
    if failed {
        return Err(DaemonError::Failed(
            "the snapshot engine ended unexpectedly".into(),
        ));
    }
    Ok(())
}

/// Turns board events into what the daemon does about them: a snapshot when
/// a board connects or resets and when a jog at the machine ends, and, when a
/// jog starts, a stop of the running operation if it works on the jogged
/// stepper ([`crate::motion::MotionGate::jogged`]). Runs until every board's
/// event channel closes.
pub fn forward_board_events(
    boards: &[BoardHandle],
    layout: crate::config::Layout,
    gate: crate::motion::MotionGate,
    snapshots: crate::snapshot::SnapshotHandle,
) -> tokio::task::JoinHandle<()> {
    let names: Vec<String> = boards.iter().map(|b| b.name().to_string()).collect();
    let mut subs: Vec<_> = boards.iter().map(BoardHandle::subscribe).collect();
    tokio::spawn(async move {
        let mut merged = futures::stream::select_all(subs.drain(..).map(tokio_stream_from));
        while let Some(ev) = merged.next().await {
            match ev {
                BoardEvent::Connected { board } => {
                    snapshots.request(format!("board {board} connected"))
                }
                BoardEvent::ResetDetected {
                    board,
                    restored,
                    moved,
                    ..
                } => snapshots.request(format!(
                    "board {board} reset (counters restored: {restored}; moved after the reset, untrusted: {})",
                    if moved.is_empty() {
                        "none".to_string()
                    } else {
                        moved.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
                    }
                )),
                BoardEvent::Jogged {
                    board,
                    stepper,
                    from,
                    to,
                    ended,
                } => {
                    let Some(b) = names.iter().position(|n| *n == board) else {
                        continue;
                    };
                    let global = layout.global(b, stepper);
                    let what = format!("stepper {global} jogged at the machine: {from} -> {to}");
                    if ended {
                        snapshots.request(what);
                    } else {
                        gate.jogged(global, &what);
                    }
                }
                _ => {}
            }
        }
    })
}

fn tokio_stream_from(
    rx: tokio::sync::broadcast::Receiver<BoardEvent>,
) -> impl futures::Stream<Item = BoardEvent> + Unpin {
    Box::pin(futures::stream::unfold(rx, |mut rx| async move {
        loop {
            match rx.recv().await {
                Ok(ev) => return Some((ev, rx)),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
            }
        }
    }))
}

/// The database at start: unreachable is fine (the spool holds records until
/// it is back), unmigrated is not (unless `auto_migrate`): nothing could ever ship.
async fn check_database(pg_cfg: &pg::PgTarget, auto_migrate: bool) -> Result<(), DaemonError> {
    let mut client = match pg::connect(pg_cfg).await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "database unreachable at start; capturing to the spool and retrying");
            return Ok(());
        }
    };
    match migrate::check_migrated(&client).await {
        Ok(info) => {
            tracing::info!(version = info.version, controls_id = %info.controls_id, "database schema is current");
            Ok(())
        }
        Err(migrate::MigrateError::NotMigrated { .. }) if auto_migrate => {
            let r = migrate::migrate(&mut client)
                .await
                .map_err(|e| DaemonError::Schema(e.to_string()))?;
            tracing::info!(applied = ?r.applied, version = r.current, "database migrated (auto_migrate)");
            Ok(())
        }
        Err(
            e @ (migrate::MigrateError::NotMigrated { .. }
            | migrate::MigrateError::Ahead { .. }
            | migrate::MigrateError::Divergent { .. }),
        ) => Err(DaemonError::Schema(format!(
            "{}: {e}",
            pg::describe(pg_cfg)
        ))),
        Err(e) => {
            tracing::warn!(error = %e, "cannot check the database schema at start; the shipper will retry");
            Ok(())
        }
    }
}

/// The one-line summary for systemd and the demo.
pub fn status_line(
    boards: &[BoardHandle],
    snapshots: &SnapshotHandle,
    shipper: &watch::Receiver<ShipperStatus>,
    feed: &watch::Receiver<crate::feed::FeedStatus>,
) -> String {
    let b: Vec<String> = boards
        .iter()
        .map(|h| format!("{} {}", h.name(), h.status().link.name()))
        .collect();
    let s = snapshots.status();
    let sh = shipper.borrow().clone();
    let mut line = format!(
        "boards: {}; feed: {}; snapshots: {} timer, {} event; shipped {}{}",
        b.join(", "),
        feed.borrow().state,
        s.timer,
        s.events,
        sh.shipped,
        if sh.connected {
            ""
        } else {
            " (database not connected)"
        }
    );
    if let Some(u) = s.unknown {
        line.push_str(&format!("; paused: {u}"));
    }
    // A stalled or failing shipper is never silent, even while connected.
    if let (Some(since), true) = (sh.error_since, sh.last_error.is_some()) {
        line.push_str(&format!(
            "; shipping failing since {}",
            since.format("%H:%M:%S")
        ));
    }
    line
}

/// Where the boards' last known counters are kept: beside the spool.
pub fn counters_path(cfg: &Config) -> PathBuf {
    cfg.spool.path.with_file_name("counters.json")
}

/// The path to hand to [`run`] for a configuration file given on the command line.
pub fn config_path(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf())
}

/// What an interrupted operation's row says.
pub const INTERRUPTED_MESSAGE: &str = "interrupted: the daemon stopped while the operation ran \
     (killed, crashed or powered off) and closed it when it started again; final_positions \
     are the positions at the operation's start, the ones at the interruption are unknown";

/// Closes, as `failed`, every operation this daemon started and never ended
/// (the spool's `running_operations`): a kill or crash in the middle of an
/// operation must not leave its row `started` for ever. Runs before any
/// operation can start, so every one found was interrupted.
async fn close_interrupted_operations(spool: &SpoolHandle) -> Result<(), DaemonError> {
    let running = spool.running_operations().await?;
    for started in running {
        let operation_id = started.operation_id;
        let kind = started.operation_type.as_str();
        tracing::error!(%operation_id, operation = kind, "an operation was interrupted by the daemon's stop; recording it as failed");
        let failed = crate::store::OperationEvent {
            operation_status: crate::store::OperationStatus::Failed,
            message: Some(INTERRUPTED_MESSAGE.to_string()),
            completed_at: Some(chrono::Utc::now()),
            ..started
        };
        spool
            .append(vec![crate::store::Record::Operation { event: failed }])
            .await?;
    }
    Ok(())
}
