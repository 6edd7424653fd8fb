//! `stringdriverctl`: the control client of a running `stringdriverd`. It
//! sends one request over the control socket (see `stringdriverd::control`)
//! and prints the reply readably, or as raw JSON with `--json`.
//!
//! Exit codes: 0 success, 1 the daemon answered with an error (printed on
//! stderr as `kind: message`), 2 the daemon could not be reached.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use serde_json::{json, Value};

#[derive(Parser)]
#[command(
    name = "stringdriverctl",
    version,
    about = "Control a running stringdriverd"
)]
struct Cli {
    /// The daemon's control socket.
    #[arg(long, global = true, default_value = "/run/stringdriver/control.sock")]
    socket: PathBuf,
    /// Print the raw result JSON.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Boards, enables, settings, feed, spool, shipper, operation, snapshots.
    Status,
    /// Take an event snapshot now and print its state_id.
    Snapshot,
    /// Move a stepper by DELTA steps (or to POS with --abs).
    #[command(allow_negative_numbers = true)]
    Move {
        /// Move to an absolute position instead.
        #[arg(long)]
        abs: bool,
        /// Global stepper index.
        stepper: usize,
        /// Steps (or the target with --abs).
        value: i32,
    },
    /// Set a stepper's counter without moving it.
    #[command(allow_negative_numbers = true)]
    SetPosition {
        /// Global stepper index.
        stepper: usize,
        /// The counter value.
        position: i32,
    },
    /// Enable a stepper.
    Enable {
        /// Global stepper index.
        stepper: usize,
    },
    /// Disable a stepper.
    Disable {
        /// Global stepper index.
        stepper: usize,
    },
    /// Print one run-time setting, or all of them.
    Get {
        /// The setting's name.
        setting: Option<String>,
    },
    /// Change a run-time setting (kept across restarts).
    #[command(allow_negative_numbers = true)]
    Set {
        /// The setting's name.
        setting: String,
        /// The value, as JSON (`0.5`, `[1,2]`, `true`); otherwise taken as a string.
        value: String,
    },
    /// Print the per-channel thresholds.
    Thresholds,
    /// Operations.
    Op {
        #[command(subcommand)]
        op: OpCmd,
    },
    /// Motor parameters: speed, acceleration and the boards' limits.
    Motor {
        #[command(subcommand)]
        motor: MotorCmd,
    },
    /// Follow the daemon's events until interrupted.
    Events,
}

#[derive(Subcommand)]
enum MotorCmd {
    /// The parameters in force and what each board holds.
    Show,
    /// Change one parameter (kept across restarts), e.g. `motor set z speed 120`.
    #[command(allow_negative_numbers = true)]
    Set {
        /// x, z, tuners, or a stepper number (speed and accel only).
        target: String,
        /// speed (steps/s), accel (steps/s²), min or max (the board's limits).
        param: String,
        /// The value.
        value: i64,
    },
}

#[derive(Subcommand)]
enum OpCmd {
    /// Start an operation: bump_check, z_calibrate or z_adjust.
    Run {
        /// The operation.
        kind: String,
        /// Only this stepper.
        #[arg(long)]
        stepper: Option<usize>,
        /// Wait for the outcome.
        #[arg(long)]
        wait: bool,
    },
    /// Cancel the running operation.
    Cancel,
    /// Wait for the running operation (or print the last one's outcome).
    Wait,
    /// Record an operation run by another program.
    Report {
        /// bump_check, z_calibrate or z_adjust.
        #[arg(long)]
        kind: String,
        /// started, completed, failed or cancelled.
        #[arg(long)]
        status: String,
        /// Steppers involved, e.g. 1,2.
        #[arg(long, value_delimiter = ',', allow_negative_numbers = true)]
        steppers: Vec<i32>,
        /// Their positions, e.g. 3,4.
        #[arg(long, value_delimiter = ',', allow_negative_numbers = true)]
        final_positions: Vec<i32>,
        /// Result message.
        #[arg(long)]
        message: Option<String>,
        /// The id printed when it was reported started.
        #[arg(long)]
        operation_id: Option<String>,
    },
}

fn request(cmd: &Cmd) -> Value {
    let mut r = match cmd {
        Cmd::Status => json!({"cmd": "status"}),
        Cmd::Snapshot => json!({"cmd": "snapshot"}),
        Cmd::Move {
            abs: false,
            stepper,
            value,
        } => json!({"cmd": "move", "stepper": stepper, "delta": value}),
        Cmd::Move {
            abs: true,
            stepper,
            value,
        } => json!({"cmd": "move", "stepper": stepper, "position": value}),
        Cmd::SetPosition { stepper, position } => {
            json!({"cmd": "set_position", "stepper": stepper, "position": position})
        }
        Cmd::Enable { stepper } => json!({"cmd": "enable", "stepper": stepper}),
        Cmd::Disable { stepper } => json!({"cmd": "disable", "stepper": stepper}),
        Cmd::Get { setting } => json!({"cmd": "get", "name": setting}),
        Cmd::Set { setting, value } => {
            let v = serde_json::from_str::<Value>(value).unwrap_or_else(|_| json!(value));
            json!({"cmd": "set", "name": setting, "value": v})
        }
        Cmd::Thresholds => json!({"cmd": "get"}),
        Cmd::Op { op } => match op {
            OpCmd::Run {
                kind,
                stepper,
                wait,
            } => json!({"cmd": "op_run", "kind": kind, "stepper": stepper, "wait": wait}),
            OpCmd::Cancel => json!({"cmd": "op_cancel"}),
            OpCmd::Wait => json!({"cmd": "op_wait"}),
            OpCmd::Report {
                kind,
                status,
                steppers,
                final_positions,
                message,
                operation_id,
            } => json!({
                "cmd": "op_report", "kind": kind, "status": status, "steppers": steppers,
                "final_positions": final_positions, "message": message, "operation_id": operation_id,
            }),
        },
        Cmd::Motor { motor } => match motor {
            MotorCmd::Show => json!({"cmd": "motor"}),
            MotorCmd::Set {
                target,
                param,
                value,
            } => json!({"cmd": "motor_set", "target": target, "param": param, "value": value}),
        },
        Cmd::Events => json!({"cmd": "events"}),
    };
    if let Value::Object(m) = &mut r {
        m.insert("v".into(), json!(1));
        m.insert("id".into(), json!(1));
    }
    r
}

fn show(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn print_status(r: &Value) {
    println!("boards:");
    for b in r["boards"].as_array().into_iter().flatten() {
        println!(
            "  {:<10} {:<14} positions {} trusted {} polls {}/{} failed, resets {}, last good poll {}",
            show(&b["name"]),
            show(&b["link"]),
            show(&b["positions"]),
            show(&b["trusted"]),
            show(&b["polls_ok"]),
            show(&b["polls_failed"]),
            show(&b["resets"]),
            show(&b["last_good_poll"]),
        );
        if !b["moving"].is_null() {
            let m = &b["moving"];
            println!(
                "    in transit: stepper {} {} {} -> {} since {} (expected {} s); silent since {}",
                show(&m["stepper"]),
                show(&m["op"]),
                show(&m["from"]),
                show(&m["target"]),
                show(&m["since"]),
                show(&m["expected_s"]),
                show(&b["silent_since"]),
            );
        }
    }
    println!("enabled: {}", show(&r["enabled"]));
    let f = &r["feed"];
    println!(
        "feed: {} (voice_count {}, amp_sum {})",
        show(&f["detail"]),
        show(&f["voice_count"]),
        show(&f["amp_sum"])
    );
    let s = &r["snapshots"];
    println!(
        "snapshots: {} timer, {} event, last {}{}",
        show(&s["timer"]),
        show(&s["events"]),
        show(&s["last_state_id"]),
        s["unknown"]
            .as_str()
            .map(|u| format!("; paused: {u}"))
            .unwrap_or_default()
    );
    let sp = &r["spool"];
    println!(
        "spool: backlog {}, dead letters {}, {} of {} bytes{}",
        show(&sp["backlog"]),
        show(&sp["dead_letters"]),
        show(&sp["used_bytes"]),
        show(&sp["limit_bytes"]),
        match sp["lost_captures"].as_u64() {
            Some(n) if n > 0 => format!(", {n} captures lost ({})", show(&sp["lost"])),
            _ => String::new(),
        }
    );
    let sh = &r["shipper"];
    println!(
        "shipper: {}, shipped {}{}",
        if sh["connected"].as_bool() == Some(true) {
            "connected"
        } else {
            "not connected"
        },
        show(&sh["shipped"]),
        sh["last_error"]
            .as_str()
            .map(|e| format!(", error since {}: {e}", show(&sh["error_since"])))
            .unwrap_or_default()
    );
    if let Some(n) = sh["stalls"].as_u64().filter(|n| *n > 0) {
        println!(
            "shipper stalls: {n}, the latest at {} (connection dropped and reopened)",
            show(&sh["last_stall_at"])
        );
    }
    println!(
        "operation: {}",
        r["operation"]["running"].as_str().unwrap_or("none running")
    );
    println!("settings:");
    for (k, v) in r["settings"].as_object().into_iter().flatten() {
        println!("  {k} = {v}");
    }
}

fn print_motor(r: &Value) {
    let p = &r["params"];
    for axis in ["x", "z", "tuners"] {
        let a = &p[axis];
        if a.is_null() {
            continue;
        }
        println!(
            "{axis:<7} speed {} steps/s, accel {} steps/s², limits {} to {}",
            show(&a["speed"]),
            show(&a["accel"]),
            show(&a["min"]),
            show(&a["max"])
        );
    }
    for s in p["stepper"].as_array().into_iter().flatten() {
        println!(
            "stepper {:<3} speed {}, accel {}",
            show(&s["index"]),
            show(&s["speed"]),
            show(&s["accel"])
        );
    }
    for b in r["boards"].as_array().into_iter().flatten() {
        let holds = &b["holds"];
        if holds.is_null() {
            println!(
                "board {:<10} not sent since its last connect or reset (moves refused)",
                show(&b["name"])
            );
        } else {
            println!(
                "board {:<10} holds them since {} ({} commands, {} batches, {} sends since start)",
                show(&b["name"]),
                show(&holds["at"]),
                holds["writes"].as_array().map_or(0, Vec::len),
                show(&holds["batches"]),
                show(&b["sends"])
            );
        }
    }
}

fn print_readable(cmd: &Cmd, r: &Value) {
    match cmd {
        Cmd::Motor { .. } => print_motor(r),
        Cmd::Status => print_status(r),
        Cmd::Snapshot => println!("snapshot {}", show(&r["state_id"])),
        Cmd::Move { .. } | Cmd::SetPosition { .. } => println!(
            "stepper {} at {} (board: {})",
            show(&r["stepper"]),
            show(&r["position"]),
            show(&r["board_positions"])
        ),
        Cmd::Enable { .. } | Cmd::Disable { .. } => println!(
            "stepper {} {}",
            show(&r["stepper"]),
            if r["enabled"].as_bool() == Some(true) {
                "enabled"
            } else {
                "disabled"
            }
        ),
        Cmd::Get { setting: Some(_) } | Cmd::Set { .. } => {
            println!("{} = {}", show(&r["name"]), r["value"])
        }
        Cmd::Get { setting: None } => {
            for (k, v) in r["settings"].as_object().into_iter().flatten() {
                println!("{k} = {v}");
            }
            println!("enabled = {}", r["enabled"]);
        }
        Cmd::Thresholds => {
            for k in [
                "voice_count_min",
                "voice_count_max",
                "amp_sum_min",
                "amp_sum_max",
            ] {
                println!("{k} = {}", r["settings"][k]);
            }
        }
        Cmd::Op { op } => match op {
            OpCmd::Run { wait: false, .. } => println!("started {}", show(&r["started"])),
            OpCmd::Cancel => println!(
                "{}",
                if r["cancelled"].as_bool() == Some(true) {
                    "cancelled"
                } else {
                    "no operation was running"
                }
            ),
            OpCmd::Report { .. } => {
                println!(
                    "operation {} {}",
                    show(&r["operation_id"]),
                    show(&r["status"])
                )
            }
            OpCmd::Run { wait: true, .. } | OpCmd::Wait => println!(
                "{} {}: {} (operation {})",
                show(&r["kind"]),
                show(&r["status"]),
                show(&r["message"]),
                show(&r["operation_id"])
            ),
        },
        Cmd::Events => println!("{r}"),
    }
}

/// While an operation runs, prints its progress (snapshots taken, operations
/// started and ended, board links) to stderr from a second connection that
/// streams events. Best effort: without it the wait still works.
/// Subscribes to the daemon's events and prints progress lines on stderr
/// while an operation runs. The subscription is confirmed before the caller
/// sends its request, so the operation's first event cannot be missed; the
/// receiver hears when an operation's `ended` event has been printed.
fn show_progress(socket: &std::path::Path) -> Option<std::sync::mpsc::Receiver<()>> {
    let events = UnixStream::connect(socket).ok()?;
    let mut req = json!({"v": 1, "id": "progress", "cmd": "events"}).to_string();
    req.push('\n');
    (&events).write_all(req.as_bytes()).ok()?;
    let mut reader = BufReader::new(events);
    let mut ack = String::new();
    reader.read_line(&mut ack).ok()?;
    let ack: Value = serde_json::from_str(&ack).ok()?;
    if ack["ok"].as_bool() != Some(true) {
        return None;
    }
    let (ended_tx, ended) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in reader.lines() {
            let Ok(line) = line else { break };
            let Ok(ev) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            let text = match ev["event"].as_str() {
                Some("operation") => format!(
                    "operation {} {} {}",
                    show(&ev["kind"]),
                    show(&ev["phase"]),
                    ev["status"]
                        .as_str()
                        .or(ev["message"].as_str())
                        .unwrap_or("")
                ),
                Some("snapshot") => format!(
                    "snapshots: {} timer, {} event",
                    show(&ev["status"]["timer"]),
                    show(&ev["status"]["events"])
                ),
                Some("board") => format!("board {} {}", show(&ev["board"]), show(&ev["link"])),
                _ => continue,
            };
            eprintln!("  ... {text}");
            if ev["event"] == "operation" && ev["phase"] == "ended" {
                let _ = ended_tx.send(());
            }
        }
    });
    Some(ended)
}

/// What to do about a failed connect: a permission error is about who runs
/// stringdriverctl, not about whether the daemon runs.
fn connect_hint(e: &std::io::Error) -> &'static str {
    if e.kind() == std::io::ErrorKind::PermissionDenied {
        "only root and members of the daemon's control group (stringdriver under the unit) \
         may use the socket: `sudo usermod -aG stringdriver $USER`, then log in again \
         (a new group membership needs a new login session)"
    } else {
        "is the daemon running? see --socket"
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let fail_connect = |e: std::io::Error| {
        eprintln!(
            "stringdriverctl: cannot reach stringdriverd at {}: {e} ({})",
            cli.socket.display(),
            connect_hint(&e)
        );
        ExitCode::from(2)
    };
    let stream = match UnixStream::connect(&cli.socket) {
        Ok(s) => s,
        Err(e) => return fail_connect(e),
    };
    let waits = matches!(
        &cli.command,
        Cmd::Op {
            op: OpCmd::Run { wait: true, .. } | OpCmd::Wait
        }
    );
    let progress = if waits && !cli.json {
        show_progress(&cli.socket)
    } else {
        None
    };
    let mut line = request(&cli.command).to_string();
    line.push('\n');
    // A daemon that refuses the connection says why at once and closes: the
    // request may then not go out, but the reason is there to read.
    let written = (&stream).write_all(line.as_bytes());
    let mut reader = BufReader::new(&stream);
    let mut reply = String::new();
    let closed = |e: std::io::Error| {
        eprintln!(
            "stringdriverctl: stringdriverd at {} accepted the connection and then closed it without a reply: {e}",
            cli.socket.display()
        );
        ExitCode::from(2)
    };
    match reader.read_line(&mut reply) {
        Ok(0) => {
            return closed(written.err().unwrap_or_else(|| {
                std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "end of stream")
            }))
        }
        Ok(_) => {}
        Err(e) => return closed(written.err().unwrap_or(e)),
    }
    let reply: Value = match serde_json::from_str(&reply) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("stringdriverctl: the daemon's reply is not JSON: {e}: {reply}");
            return ExitCode::from(2);
        }
    };
    if reply["ok"].as_bool() != Some(true) {
        let e = &reply["error"];
        if matches!(
            e["kind"].as_str(),
            Some("too_many_clients" | "forbidden" | "idle_timeout")
        ) {
            eprintln!(
                "stringdriverctl: stringdriverd at {} refused the connection ({}): {}",
                cli.socket.display(),
                show(&e["kind"]),
                show(&e["message"])
            );
            return ExitCode::from(2);
        }
        eprintln!("{}: {}", show(&e["kind"]), show(&e["message"]));
        return ExitCode::from(1);
    }
    let result = &reply["result"];
    if let (
        Some(ended),
        Cmd::Op {
            op: OpCmd::Run { wait: true, .. },
        },
    ) = (&progress, &cli.command)
    {
        // The progress lines of this operation come before its outcome; the
        // bound only matters if the events connection was lost.
        let _ = ended.recv_timeout(std::time::Duration::from_secs(2));
    }
    if let Cmd::Events = cli.command {
        // Every further line is an event, until the daemon goes away.
        let mut out = std::io::stdout().lock();
        for l in reader.lines() {
            let Ok(l) = l else { break };
            if writeln!(out, "{l}").and_then(|_| out.flush()).is_err() {
                break;
            }
        }
        return ExitCode::SUCCESS;
    }
    if cli.json {
        println!(
            "{}",
            serde_json::to_string_pretty(result).unwrap_or_else(|_| result.to_string())
        );
    } else {
        print_readable(&cli.command, result);
    }
    // Scripts rely on the exit code: an operation waited for that failed or
    // was cancelled is not a success.
    let waited = matches!(
        &cli.command,
        Cmd::Op {
            op: OpCmd::Run { wait: true, .. } | OpCmd::Wait
        }
    );
    if waited && matches!(result["status"].as_str(), Some("failed" | "cancelled")) {
        return ExitCode::from(1);
    }
    ExitCode::SUCCESS
}
