//! What each command does with the daemon's parts.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;
use uuid::Uuid;

use super::protocol::{ApiError, Request, COMMANDS};
use crate::daemon::{setting_value, Parts};
use crate::motion::{GateError, Origin};
use crate::snapshot::SnapshotError;
use crate::store::{OperationEvent, OperationStatus, OperationType, Record};

/// Operation starts remembered for `op_report` (so that the terminal event
/// keeps the start time); the oldest are forgotten beyond this.
const REPORTED_KEPT: usize = 256;

/// The operation state the server publishes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OpState {
    /// The kind of the operation started through this socket, while it runs.
    pub running: Option<String>,
    /// Whether it runs in repeat (`op_run` with `repeat`).
    pub repeat: bool,
    /// The run in progress (1 for the first; counts the runs of a repetition).
    pub run: u32,
    /// How the last one ended (an outcome object, or why it did not start).
    pub last: Option<Result<Value, ApiError>>,
    /// When the running one started.
    pub running_since: Option<DateTime<Utc>>,
    /// The running one's operation id, once its `started` row is written
    /// (of the current run in a repetition).
    pub running_id: Option<Uuid>,
    /// When the last one ended.
    pub last_ended_at: Option<DateTime<Utc>>,
}

/// State shared by every client of one server.
pub struct Shared {
    /// The daemon's parts.
    pub parts: Parts,
    /// Operations started here.
    pub op: watch::Sender<OpState>,
    /// The running operation's task (awaited at shutdown).
    pub op_task: Mutex<Option<JoinHandle<()>>>,
    /// Operation start/end for `events` streams.
    pub op_events: broadcast::Sender<String>,
    /// Start times of operations reported by other programs, by id.
    reported: Mutex<BTreeMap<Uuid, DateTime<Utc>>>,
    /// Requests dropped unfinished because their client hung up.
    pub dropped: std::sync::atomic::AtomicU64,
}

impl Shared {
    /// The shared state over `parts`.
    pub fn new(parts: Parts) -> Shared {
        Shared {
            parts,
            op: watch::Sender::new(OpState::default()),
            op_task: Mutex::new(None),
            op_events: broadcast::channel(64).0,
            reported: Mutex::new(BTreeMap::new()),
            dropped: std::sync::atomic::AtomicU64::new(0),
        }
    }
}

pub(super) fn gate_error(e: GateError) -> ApiError {
    match e {
        GateError::Board(b) => ApiError::new("board_error", b.to_string()),
        GateError::Stopped => ApiError::new("stopped", GateError::Stopped.to_string()),
        other => ApiError::new("refused", other.to_string()),
    }
}

fn total_steppers(sh: &Shared) -> usize {
    sh.parts.machine.layout.total_steppers()
}

fn check_exists(sh: &Shared, stepper: usize) -> Result<(), ApiError> {
    let count = total_steppers(sh);
    if stepper >= count {
        return Err(gate_error(GateError::UnknownStepper { stepper, count }));
    }
    Ok(())
}

/// The stepper a request's `field` names: a global index (a number) or a
/// name (`x`, `z2in`, `tuner3`: [`crate::config::Layout::stepper`]).
fn stepper_of(sh: &Shared, req: &Request, field: &str) -> Result<usize, ApiError> {
    match req.args.get(field).filter(|v| !v.is_null()) {
        Some(Value::String(name)) => sh
            .parts
            .machine
            .layout
            .stepper(name)
            .map_err(|e| ApiError::new("bad_request", format!("field `{field}`: {e}"))),
        _ => req.index(field).map_err(|_| {
            ApiError::bad_field(
                field,
                "a stepper: its index (a non-negative integer) or its name (x, z2in, tuner3)",
                req.args.get(field),
            )
        }),
    }
}

/// [`stepper_of`] for an optional field.
fn opt_stepper_of(sh: &Shared, req: &Request, field: &str) -> Result<Option<usize>, ApiError> {
    match req.args.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(_) => stepper_of(sh, req, field).map(Some),
    }
}

/// Runs one request (everything but `events`, which the server handles).
pub async fn handle(sh: &Arc<Shared>, req: &Request) -> Result<Value, ApiError> {
    match req.cmd.as_str() {
        "status" => Ok(status(sh).await),
        "snapshot" => snapshot(sh).await,
        "move" => move_(sh, req).await,
        "set_position" => set_position(sh, req).await,
        "enable" => enable(sh, req, true),
        "disable" => enable(sh, req, false),
        "get" => get(sh, req),
        "set" => set(sh, req).await,
        "unset" => unset(sh, req).await,
        "op_run" => op_run(sh, req).await,
        "op_cancel" => op_cancel(sh).await,
        "op_wait" => op_wait(sh).await,
        "op_report" => op_report(sh, req).await,
        "steppers" => Ok(steppers(sh)),
        "stop" => Ok(stop(sh).await),
        "motor" => super::motor::show(sh),
        "motor_set" => super::motor::set(sh, req).await,
        other => Err(ApiError::new(
            "unknown_command",
            format!("unknown command `{other}` (known: {})", COMMANDS.join(", ")),
        )),
    }
}

/// The stepper map with live state: per global index its name, role,
/// board and index there, limits, counter, trusted, enabled and touching
/// (null where the machine has no sensor for it or the board is down).
pub fn steppers(sh: &Shared) -> Value {
    let p = &sh.parts;
    let layout = &p.machine.layout;
    let statuses: Vec<_> = p.boards.iter().map(|b| b.status()).collect();
    let enabled = p.settings.borrow().enabled.clone();
    let touch = p.touch.borrow().clone();
    let list: Vec<Value> = (0..layout.total_steppers())
        .map(|g| {
            let role = layout.role(g);
            let (board, local) = layout.locate(g).unzip();
            let st = board.and_then(|b| statuses.get(b));
            let (min, max) = layout.limits(g);
            json!({
                "index": g,
                "name": role.name(),
                "role": role.to_string(),
                "board": st.map(|s| s.name.clone()),
                "board_index": local,
                "min": min,
                "max": max,
                "position": local.and_then(|l| st?.positions.as_ref()?.get(l).copied()),
                "trusted": local.and_then(|l| st?.trusted.get(l).copied()),
                "enabled": enabled.get(g).copied(),
                "touching": touch.sensors.iter().find(|t| t.stepper == g).and_then(|t| t.touching),
            })
        })
        .collect();
    json!({"steppers": list})
}

/// How long `stop` waits for the cancelled operation to end and the move
/// on its way to end: longer than the longest single move (X across 2600
/// steps at 500 steps/s is about 5 s).
const STOP_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// The emergency stop: the running operation cancelled, every waiting move
/// dropped; answers once the operation has ended and no board has a move
/// of ours unconfirmed (or after [`STOP_WAIT`], saying what still moves).
async fn stop(sh: &Shared) -> Value {
    let t0 = tokio::time::Instant::now();
    let cancelled = sh.parts.gate.stop().await;
    let mut op = sh.op.subscribe();
    let ended = tokio::time::timeout(STOP_WAIT, op.wait_for(|s| s.running.is_none()))
        .await
        .is_ok();
    let mut still_moving = Vec::new();
    for b in &sh.parts.boards {
        let left = STOP_WAIT.saturating_sub(t0.elapsed());
        if b.wait_for(left, |s| s.moving.is_none()).await.is_none() {
            still_moving.push(b.status().name);
        }
    }
    json!({
        "operation_cancelled": cancelled,
        "operation_ended": ended,
        "still_moving": still_moving,
        "waited_s": t0.elapsed().as_secs_f64(),
    })
}

/// Capturing, or the one reason not: what is unknown, or that no row has
/// been captured yet (at start, before the engine's first try).
fn health(s: &crate::snapshot::SnapshotStatus) -> Value {
    let reason = match (&s.unknown, s.last_at) {
        (Some(why), _) => Some(why.clone()),
        (None, None) => Some("starting: no row captured yet".to_string()),
        (None, Some(_)) => None,
    };
    json!({"capturing": reason.is_none(), "reason": reason})
}

/// Every part's status in one object.
pub async fn status(sh: &Shared) -> Value {
    let p = &sh.parts;
    let boards: Vec<Value> = p
        .boards
        .iter()
        .map(|b| {
            let s = b.status();
            json!({
                "name": s.name,
                "link": s.link.name(),
                "link_detail": s.link.to_string(),
                "positions": s.positions,
                "trusted": s.trusted,
                "last_good_poll": s.last_good_poll,
                "polls_ok": s.polls_ok,
                "polls_failed": s.polls_failed,
                "resets": s.resets_detected,
                "connects": s.connects,
                "last_error": s.last_error,
                // A move sent and not yet confirmed, and how long the board
                // has been silent with it (a runaway shows here).
                "moving": s.moving.as_ref().map(|m| json!({
                    "stepper": m.stepper,
                    "op": m.op,
                    "from": m.from,
                    "target": m.target,
                    "since": m.since,
                    "expected_s": m.expected.as_secs_f64(),
                })),
                "silent_since": s.silent_since,
                "jogging": s.jogging,
                "judgements": {
                    "jogs": s.judgements.jogs,
                    "resets_all_zero": s.judgements.resets_all_zero,
                    "resets_after_silence": s.judgements.resets_after_silence,
                    "moved_after_reset": s.judgements.moved_after_reset,
                },
                "motor_sends": s.motor_sends,
                "motor_sent": s.motor.is_some(),
                "last_restore": s.last_restore.as_ref().map(|r| json!({
                    "counters": r.counters,
                    "batches": r.batches,
                    "max_bytes_in_flight": r.max_bytes_in_flight,
                    "took_s": r.took.as_secs_f64(),
                    "verified": r.verified,
                })),
            })
        })
        .collect();
    let settings = p.settings.borrow().clone();
    let values: Map<String, Value> = crate::state::SETTINGS
        .iter()
        .map(|n| (n.to_string(), setting_value(&settings, n)))
        .collect();
    let feed = p.feed.borrow().clone();
    let spool = match p.spool.status().await {
        Ok(s) => serde_json::to_value(s).unwrap_or(Value::Null),
        Err(e) => json!({"error": e.to_string()}),
    };
    let op = sh.op.borrow().clone();
    let snapshots = p.snapshots.status();
    json!({
        "daemon": {
            "version": env!("CARGO_PKG_VERSION"),
            "protocol": super::protocol::VERSION,
            "host": p.machine.host,
        },
        // One line for people and monitoring: rows are being captured, or
        // the one reason they are not (with what to do about it).
        "health": health(&snapshots),
        "steppers": steppers(sh)["steppers"],
        "boards": boards,
        "enabled": settings.enabled,
        "settings": values,
        "feed": {
            "state": feed.state.name(),
            "detail": feed.state.to_string(),
            "channels": feed.channels,
            "voice_count": feed.values.as_ref().map(|v| v.voice_count.clone()),
            "amp_sum": feed.values.as_ref().map(|v| v.amp_sum.clone()),
            "frame_changed_at": feed.frame_changed_at,
            "read_at": feed.read_at,
            "valid_until": feed.valid_until,
        },
        "touch": serde_json::to_value(p.touch.borrow().clone()).unwrap_or(Value::Null),
        "spool": spool,
        "shipper": serde_json::to_value(p.shipper.borrow().clone()).unwrap_or(Value::Null),
        "operation": {
            "running": p.gate.running(),
            "running_since": op.running_since,
            "running_id": op.running_id,
            "repeat": op.running.is_some() && op.repeat,
            "run": op.running.as_ref().map(|_| op.run),
            "last": op.last.map(outcome_json),
            "last_ended_at": op.last_ended_at,
        },
        "snapshots": serde_json::to_value(snapshots).unwrap_or(Value::Null),
        "control": {
            "requests_dropped": sh.dropped.load(std::sync::atomic::Ordering::Relaxed),
        },
        "compat": serde_json::to_value(p.compat.borrow().clone()).unwrap_or(Value::Null),
    })
}

fn outcome_json(r: Result<Value, ApiError>) -> Value {
    match r {
        Ok(v) => v,
        Err(e) => json!({"status": "refused", "error": {"kind": e.kind, "message": e.message}}),
    }
}

async fn snapshot(sh: &Shared) -> Result<Value, ApiError> {
    match sh.parts.snapshots.snapshot("control request").await {
        Ok(id) => Ok(json!({"state_id": id})),
        // The kind says "no snapshot" already: the message is the reason.
        Err(SnapshotError::Unknown(why)) => Err(ApiError::new("no_snapshot", why.to_string())),
        Err(e) => Err(ApiError::new("snapshot_failed", e.to_string())),
    }
}

/// The reply of a move or counter write: the stepper's new counter and its board's.
fn moved(sh: &Shared, stepper: usize, board_positions: Vec<i32>) -> Value {
    let local = sh.parts.machine.layout.locate(stepper).map(|(_, l)| l);
    json!({
        "stepper": stepper,
        "position": local.and_then(|l| board_positions.get(l).copied()),
        "board_positions": board_positions,
    })
}

/// What a request that asked for it (`move` with `announce: true`) is about
/// to wait for, said before the wait: the stepper's rest still due
/// (`{waiting_s, setting, stepper, name, role}`). `None` when nothing is due
/// or the request did not ask (a bad request gets its error in the reply).
pub fn announce(sh: &Shared, req: &Request) -> Option<Value> {
    if req.cmd != "move" || req.flag("announce").ok() != Some(true) {
        return None;
    }
    let stepper = stepper_of(sh, req, "stepper").ok()?;
    let (left, setting) = sh.parts.gate.rest_left(stepper)?;
    let role = sh.parts.machine.layout.role(stepper);
    Some(json!({
        "waiting_s": left.as_secs_f64(),
        "setting": setting,
        "stepper": stepper,
        "name": role.name(),
        "role": role.to_string(),
    }))
}

async fn move_(sh: &Shared, req: &Request) -> Result<Value, ApiError> {
    let stepper = stepper_of(sh, req, "stepper")?;
    let delta = req.opt_i32("delta")?;
    let position = req.opt_i32("position")?;
    // Already acted on by `announce`; checked here so a wrong type is said.
    req.flag("announce")?;
    let gate = &sh.parts.gate;
    // The rest still due when the request came: the move waits it (at
    // least), and the reply says so (`rest`), so a slow move is explained.
    let rest = gate.rest_left(stepper);
    let r = match (delta, position) {
        (Some(d), None) => gate.move_rel(&Origin::Manual, stepper, d).await,
        (None, Some(p)) => gate.move_abs(&Origin::Manual, stepper, p).await,
        _ => {
            return Err(ApiError::new(
                "bad_request",
                "give exactly one of the fields `delta` (relative) and `position` (absolute)",
            ))
        }
    };
    let mut v = r.map(|p| moved(sh, stepper, p)).map_err(gate_error)?;
    v["rest"] = match rest {
        Some((left, setting)) => json!({"waited_s": left.as_secs_f64(), "setting": setting}),
        None => Value::Null,
    };
    Ok(v)
}

async fn set_position(sh: &Shared, req: &Request) -> Result<Value, ApiError> {
    let stepper = stepper_of(sh, req, "stepper")?;
    let position = req.i32("position")?;
    let p = sh
        .parts
        .gate
        .set_counter(&Origin::Manual, stepper, position)
        .await
        .map_err(gate_error)?;
    sh.parts
        .snapshots
        .request(format!("stepper {stepper} counter set to {position}"));
    Ok(moved(sh, stepper, p))
}

fn enable(sh: &Shared, req: &Request, on: bool) -> Result<Value, ApiError> {
    let word = if on { "enabled" } else { "disabled" };
    if req.args.get("stepper").and_then(Value::as_str) == Some("all") {
        // Every stepper with a role: an unused slot stays disabled.
        let layout = &sh.parts.machine.layout;
        let all: Vec<usize> = (0..layout.total_steppers())
            .filter(|g| layout.role(*g) != crate::config::Role::Unused)
            .collect();
        sh.parts.settings.send_modify(|s| {
            for g in &all {
                if let Some(e) = s.enabled.get_mut(*g) {
                    *e = on;
                }
            }
        });
        sh.parts
            .snapshots
            .request(format!("every stepper {word} by the control API"));
        return Ok(json!({"steppers": all, "enabled": on}));
    }
    let stepper = stepper_of(sh, req, "stepper")?;
    check_exists(sh, stepper)?;
    // The daemon's enables task persists the change.
    sh.parts.settings.send_modify(|s| {
        if let Some(e) = s.enabled.get_mut(stepper) {
            *e = on;
        }
    });
    sh.parts
        .snapshots
        .request(format!("stepper {stepper} {word} by the control API"));
    Ok(json!({"stepper": stepper, "enabled": on}))
}

fn unknown_setting(name: &str) -> ApiError {
    ApiError::new(
        "invalid_setting",
        format!(
            "unknown setting `{name}` (known: {})",
            crate::state::SETTINGS.join(", ")
        ),
    )
}

/// Where a setting's value comes from: `run-time` (an override, kept
/// across restarts) or `file`; `file` is the configuration file's value.
fn setting_entry(sh: &Shared, name: &str, overridden: &[String]) -> Value {
    let now = setting_value(&sh.parts.settings.borrow(), name);
    let file = setting_value(&sh.parts.file_settings.borrow(), name);
    let source = if overridden.iter().any(|o| o == name) {
        "run-time"
    } else {
        "file"
    };
    json!({"name": name, "value": now, "source": source, "file": file})
}

fn get(sh: &Shared, req: &Request) -> Result<Value, ApiError> {
    let overridden = sh.parts.state.overridden();
    match req.opt_str("name")? {
        Some(name) if crate::state::SETTINGS.contains(&name) => {
            Ok(setting_entry(sh, name, &overridden))
        }
        Some(name) => Err(unknown_setting(name)),
        None => {
            let s = sh.parts.settings.borrow().clone();
            let file = sh.parts.file_settings.borrow().clone();
            let all: Map<String, Value> = crate::state::SETTINGS
                .iter()
                .map(|n| (n.to_string(), setting_value(&s, n)))
                .collect();
            // Only the overridden ones: the others are the file's value.
            let files: Map<String, Value> = crate::state::SETTINGS
                .iter()
                .filter(|n| overridden.iter().any(|o| o == *n))
                .map(|n| (n.to_string(), setting_value(&file, n)))
                .collect();
            Ok(json!({"settings": all, "enabled": s.enabled, "overrides": files}))
        }
    }
}

/// Drops a setting's run-time override: the file's value applies again,
/// now and after restarts.
async fn unset(sh: &Shared, req: &Request) -> Result<Value, ApiError> {
    let name = req.str("name")?.to_string();
    if !crate::state::SETTINGS.contains(&name.as_str()) {
        return Err(unknown_setting(&name));
    }
    let was_overridden = sh.parts.state.overridden().contains(&name);
    let file = setting_value(&sh.parts.file_settings.borrow(), &name);
    let mut refused = None;
    sh.parts.settings.send_if_modified(|s| {
        let mut next = s.clone();
        match crate::state::apply(&mut next, &name, &file) {
            Ok(()) => {
                let changed = *s != next;
                *s = next;
                changed
            }
            Err(e) => {
                refused = Some(e);
                false
            }
        }
    });
    if let Some(e) = refused {
        // The file's value passed the same rules at load; only another
        // setting changed since (x_start against x_finish) can refuse it.
        return Err(ApiError::new(
            "invalid_setting",
            format!("the file's value of {name} does not apply now: {e}"),
        ));
    }
    let state = sh.parts.state.clone();
    let n = name.clone();
    let saved = tokio::task::spawn_blocking(move || state.drop_overrides(&[n.as_str()]))
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r);
    if was_overridden {
        sh.parts
            .snapshots
            .request(format!("setting {name} returned to the file's value"));
    }
    if let Err(e) = saved {
        return Err(ApiError::new(
            "not_persisted",
            format!("{name} returned to the file's value but the override is still saved (it returns after a restart): {e}"),
        ));
    }
    let mut r = setting_entry(sh, &name, &[]);
    r["was_overridden"] = json!(was_overridden);
    Ok(r)
}

async fn set(sh: &Shared, req: &Request) -> Result<Value, ApiError> {
    let name = req.str("name")?.to_string();
    let value = req.any("value")?.clone();
    if !crate::state::SETTINGS.contains(&name.as_str()) {
        return Err(unknown_setting(&name));
    }
    // Applied to a copy and swapped in under the channel's lock, so a
    // concurrent enable change (an operation disabling a stepper) is not lost
    // and a refused value leaves the settings untouched.
    let mut refused = None;
    sh.parts.settings.send_if_modified(|s| {
        let mut next = s.clone();
        match crate::state::apply(&mut next, &name, &value) {
            Ok(()) => {
                *s = next;
                true
            }
            Err(e) => {
                refused = Some(e);
                false
            }
        }
    });
    if let Some(e) = refused {
        return Err(ApiError::new("invalid_setting", e));
    }
    let now = setting_value(&sh.parts.settings.borrow(), &name);
    let state = sh.parts.state.clone();
    let (n, v) = (name.clone(), value.clone());
    let saved = tokio::task::spawn_blocking(move || state.save_override(&n, v))
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r);
    sh.parts
        .snapshots
        .request(format!("setting {name} changed by the control API"));
    if let Err(e) = saved {
        return Err(ApiError::new(
            "not_persisted",
            format!("{name} applied but not saved (it will not survive a restart): {e}"),
        ));
    }
    Ok(json!({"name": name, "value": now}))
}

fn parse_kind(req: &Request) -> Result<OperationType, ApiError> {
    let v = req.args.get("kind");
    v.and_then(|k| serde_json::from_value::<OperationType>(k.clone()).ok())
        .ok_or_else(|| {
            ApiError::bad_field(
                "kind",
                "one of bump_check, z_calibrate, z_adjust, sweep_left_right, sweep_right_left, x_home, x_away, x_calibrate",
                v,
            )
        })
}

fn outcome_value(o: &crate::ops::Outcome, kind: OperationType) -> Value {
    json!({
        "kind": kind.as_str(),
        "operation_id": o.operation_id,
        "status": o.status.as_str(),
        "message": o.message,
    })
}

/// A repetition's outcome: the last run's, with `repeat: {runs, ended}`.
/// Its `status` is the repetition's: `cancelled` when it was cancelled
/// during the rest between runs, `failed` when the next run was refused by
/// its preconditions (in both cases the last run itself completed, as its
/// row says), otherwise the last run's — so `op run --repeat --wait` exits
/// non-zero whenever the repetition did not end by bump_check_enable.
fn repeated_value(r: &crate::ops::Repeated, kind: OperationType) -> Value {
    let mut v = outcome_value(&r.last, kind);
    if r.cancelled {
        v["status"] = json!("cancelled");
    } else if r.refused {
        v["status"] = json!("failed");
    }
    v["repeat"] = json!({"runs": r.runs, "ended": r.ended});
    v
}

fn op_error(e: crate::ops::OpError) -> ApiError {
    match e {
        crate::ops::OpError::Gate(GateError::Busy(k)) => {
            ApiError::new("busy", format!("operation {k} is running"))
        }
        crate::ops::OpError::Gate(g) => gate_error(g),
        other => ApiError::new("refused", other.to_string()),
    }
}

fn op_event(phase: &str, kind: OperationType, extra: &[(&str, Value)]) -> String {
    let mut m = Map::new();
    m.insert("phase".into(), json!(phase));
    m.insert("kind".into(), json!(kind.as_str()));
    for (k, v) in extra {
        m.insert((*k).into(), v.clone());
    }
    super::protocol::event("operation", m)
}

async fn op_run(sh: &Arc<Shared>, req: &Request) -> Result<Value, ApiError> {
    let kind = parse_kind(req)?;
    let stepper = opt_stepper_of(sh, req, "stepper")?;
    let wait = req.flag("wait")?;
    let repeat = req.flag("repeat")?;
    let mut busy = None;
    // Checked and marked under the channel's lock: two clients starting at
    // once cannot both pass.
    sh.op.send_if_modified(|st| {
        if let Some(k) = st.running.clone().or_else(|| sh.parts.gate.running()) {
            busy = Some(k);
            return false;
        }
        st.running = Some(kind.as_str().to_string());
        st.running_since = Some(Utc::now());
        st.repeat = repeat;
        st.run = 1;
        true
    });
    if let Some(k) = busy {
        return Err(ApiError::new(
            "busy",
            format!("operation {k} is running; one operation at a time"),
        ));
    }
    let _ = sh
        .op_events
        .send(op_event("started", kind, &[("repeat", json!(repeat))]));
    let mut rx = sh.op.subscribe();
    let task = {
        let sh = sh.clone();
        tokio::spawn(async move {
            // Subscribed before the run starts: no progress report is missed.
            let mut progress = sh.parts.machine.progress.subscribe();
            let machine = &sh.parts.machine;
            let run = async {
                if repeat {
                    let on_run = |n: u32, o: &crate::ops::Outcome| {
                        let _ = sh.op_events.send(op_event(
                            "run_ended",
                            kind,
                            &[("run", json!(n)), ("outcome", outcome_value(o, kind))],
                        ));
                        sh.op.send_modify(|st| st.run = n + 1);
                    };
                    machine
                        .run_repeat(kind, stepper, on_run)
                        .await
                        .map(|r| repeated_value(&r, kind))
                        .map_err(op_error)
                } else {
                    machine
                        .run(kind, stepper)
                        .await
                        .map(|o| outcome_value(&o, kind))
                        .map_err(op_error)
                }
            };
            tokio::pin!(run);
            let last = loop {
                tokio::select! {
                    biased;
                    p = progress.recv() => match p {
                        Ok(p) => publish_progress(&sh, &p),
                        // Lagged: a slow moment dropped some; the next ones still come.
                        Err(broadcast::error::RecvError::Lagged(_)) => {}
                        Err(broadcast::error::RecvError::Closed) => break (&mut run).await,
                    },
                    r = &mut run => break r,
                }
            };
            // Reports sent just before the end come before the `ended` event.
            while let Ok(p) = progress.try_recv() {
                publish_progress(&sh, &p);
            }
            let _ = sh.op_events.send(op_event(
                "ended",
                kind,
                &[("outcome", outcome_json(last.clone()))],
            ));
            sh.op.send_modify(|st| {
                st.running = None;
                st.running_since = None;
                st.running_id = None;
                st.repeat = false;
                st.last = Some(last);
                st.last_ended_at = Some(Utc::now());
            });
        })
    };
    let old = sh
        .op_task
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .replace(task);
    drop(old);
    if !wait {
        return Ok(if repeat {
            json!({"started": kind.as_str(), "repeat": true})
        } else {
            json!({"started": kind.as_str()})
        });
    }
    wait_done(&mut rx).await
}

/// A progress report as an `operation` event: a sweep's pass with phase
/// `progress`, an operation's step with phase `step`.
fn publish_progress(sh: &Shared, p: &crate::ops::progress::Progress) {
    use crate::ops::progress::Progress;
    let (v, phase) = match p {
        Progress::Sweep(p) => (serde_json::to_value(p), "progress"),
        Progress::Step(s) => (serde_json::to_value(s), "step"),
        // Not an event: the `started`/`ended` events carry the kind, and
        // `status` the id, that of the operation started here (not of one
        // it nests, such as z_calibrate's bump_check).
        Progress::Recorded(kind, id) => {
            let id = *id;
            sh.op.send_if_modified(|st| {
                let ours = st.running.as_deref() == Some(kind.as_str());
                if ours {
                    st.running_id = Some(id);
                }
                ours
            });
            return;
        }
    };
    let mut m = match v {
        Ok(Value::Object(m)) => m,
        _ => return,
    };
    m.insert("phase".into(), json!(phase));
    let _ = sh.op_events.send(super::protocol::event("operation", m));
}

/// Cancels the running operation (and its repetition) and replies once
/// nothing more of it can reach a board: a move already in flight is
/// waited for, none starts after the reply.
async fn op_cancel(sh: &Shared) -> Result<Value, ApiError> {
    let cancelled = sh.parts.gate.cancel();
    if cancelled {
        sh.parts.gate.quiesce().await;
    }
    Ok(json!({"cancelled": cancelled}))
}

async fn wait_done(rx: &mut watch::Receiver<OpState>) -> Result<Value, ApiError> {
    let st = rx
        .wait_for(|s| s.running.is_none())
        .await
        .map_err(|_| ApiError::new("shutting_down", "the control server is stopping"))?
        .clone();
    match st.last {
        Some(r) => r,
        None => Err(ApiError::new(
            "no_operation",
            "no operation has run through this daemon since it started",
        )),
    }
}

async fn op_wait(sh: &Shared) -> Result<Value, ApiError> {
    wait_done(&mut sh.op.subscribe()).await
}

async fn op_report(sh: &Shared, req: &Request) -> Result<Value, ApiError> {
    let kind = parse_kind(req)?;
    let status_v = req.args.get("status");
    let status = status_v
        .and_then(|s| serde_json::from_value::<OperationStatus>(s.clone()).ok())
        .ok_or_else(|| {
            ApiError::bad_field(
                "status",
                "one of started, completed, failed, cancelled",
                status_v,
            )
        })?;
    let steppers = req.i32_list("steppers")?;
    let final_positions = req.i32_list("final_positions")?;
    if steppers.len() != final_positions.len() {
        return Err(ApiError::new(
            "bad_request",
            format!(
                "`steppers` has {} entries but `final_positions` {}: one position per stepper",
                steppers.len(),
                final_positions.len()
            ),
        ));
    }
    for s in &steppers {
        let s = usize::try_from(*s)
            .map_err(|_| ApiError::bad_field("steppers", "non-negative stepper indices", None))?;
        check_exists(sh, s)?;
    }
    let message = req.opt_str("message")?.map(str::to_string);
    let id_v = req.args.get("operation_id").filter(|v| !v.is_null());
    let given = match id_v {
        None => None,
        Some(v) => Some(
            v.as_str()
                .and_then(|s| Uuid::parse_str(s).ok())
                .ok_or_else(|| ApiError::bad_field("operation_id", "a UUID", Some(v)))?,
        ),
    };
    let operation_id = match (given, status) {
        (Some(id), _) => id,
        (None, OperationStatus::Started) => Uuid::new_v4(),
        (None, s) => {
            return Err(ApiError::bad_field(
                "operation_id",
                &format!("the id returned when it started (status {})", s.as_str()),
                None,
            ))
        }
    };
    let now = Utc::now();
    let recorded_at = {
        let mut r = sh.reported.lock().unwrap_or_else(|e| e.into_inner());
        if status.is_terminal() {
            r.remove(&operation_id).unwrap_or(now)
        } else {
            if r.len() >= REPORTED_KEPT {
                if let Some(oldest) = r.iter().min_by_key(|(_, t)| **t).map(|(k, _)| *k) {
                    r.remove(&oldest);
                }
            }
            *r.entry(operation_id).or_insert(now)
        }
    };
    // The row references the state it started from when one can be captured now.
    let state_id = match status {
        OperationStatus::Started => sh
            .parts
            .snapshots
            .snapshot(format!("{} reported started", kind.as_str()))
            .await
            .ok(),
        _ => None,
    };
    let event = OperationEvent {
        operation_id,
        state_id,
        host: sh.parts.machine.host.clone(),
        recorded_at,
        operation_type: kind,
        operation_status: status,
        message,
        stepper_indices: steppers,
        final_positions,
        completed_at: status.is_terminal().then_some(now),
    };
    sh.parts
        .spool
        .append(vec![Record::Operation { event }])
        .await
        .map_err(|e| ApiError::new("record_failed", e.to_string()))?;
    let mut m = Map::new();
    m.insert(
        "phase".into(),
        json!(if status.is_terminal() {
            "ended"
        } else {
            "started"
        }),
    );
    m.insert("kind".into(), json!(kind.as_str()));
    m.insert("reported".into(), json!(true));
    m.insert("operation_id".into(), json!(operation_id));
    m.insert("status".into(), json!(status.as_str()));
    let _ = sh.op_events.send(super::protocol::event("operation", m));
    Ok(json!({"operation_id": operation_id, "status": status.as_str()}))
}
