//! `stringdriverctl`: the control client of a running `stringdriverd`. It
//! sends one request over the control socket (see `stringdriverd::control`)
//! and prints the reply readably, or as raw JSON with `--json`.
//!
//! Exit codes: 0 success, 1 the daemon answered with an error (printed on
//! stderr as `kind: message`) or an operation waited for failed or was
//! cancelled, 2 the daemon could not be reached, 130 interrupted by Ctrl-C.
//!
//! Ctrl-C means stop: during `op run --wait` it cancels the operation this
//! command started and waits for its outcome (a second Ctrl-C leaves without
//! waiting); during `op wait` it stops waiting and says how to cancel.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::builder::{PossibleValue, PossibleValuesParser};
use clap::{CommandFactory, Parser, Subcommand};
use serde_json::{json, Value};
use stringdriverd::ctl::progress::{event_line, wait_line, Filter};
use stringdriverd::state::SETTINGS;
use stringdriverd::store::{OperationStatus, OperationType};

#[derive(Parser)]
#[command(
    name = "stringdriverctl",
    version,
    about = "Control a running stringdriverd"
)]
struct Cli {
    /// The daemon's control socket.
    #[arg(
        long,
        global = true,
        env = "STRINGDRIVER_SOCKET",
        default_value = "/run/stringdriver/control.sock"
    )]
    socket: PathBuf,
    /// Print the raw result JSON.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// The machine at a glance: capturing or the one reason not, the
    /// operation, boards, feed, storage, then every stepper and channel.
    Status {
        /// Print one line and exit 0 when the daemon captures rows, 1 when
        /// it does not (2: unreachable): for scripts and monitoring.
        #[arg(long)]
        check: bool,
    },
    /// The stepper map with live positions: index, name, role, board,
    /// position, trusted, enabled, touching, limits.
    Steppers,
    /// Emergency stop: cancel the running operation, drop every move still
    /// waiting in the daemon, and answer when nothing of ours moves.
    Stop,
    /// Take an event snapshot now and print its state_id.
    Snapshot,
    /// Move a stepper by DELTA steps (or to POS with --abs).
    #[command(allow_negative_numbers = true)]
    Move {
        /// Move to an absolute position instead.
        #[arg(long)]
        abs: bool,
        /// The stepper: its name (x, z2in, z2out, tuner3; `steppers` lists
        /// them) or its global index.
        stepper: String,
        /// Steps (or the target with --abs).
        value: i32,
    },
    /// Set a stepper's counter without moving it.
    #[command(allow_negative_numbers = true)]
    SetPosition {
        /// The stepper: its name (x, z2in, z2out, tuner3; `steppers` lists
        /// them) or its global index.
        stepper: String,
        /// The counter value.
        position: i32,
    },
    /// Enable a stepper.
    Enable {
        /// The stepper: its name (x, z2in, z2out, tuner3; `steppers` lists
        /// them) or its global index; `all` for every stepper.
        stepper: String,
    },
    /// Disable a stepper.
    Disable {
        /// The stepper: its name (x, z2in, z2out, tuner3; `steppers` lists
        /// them) or its global index; `all` for every stepper.
        stepper: String,
    },
    /// Print one run-time setting, or all of them.
    Get {
        /// The setting's name.
        #[arg(value_parser = setting_parser(), hide_possible_values = true)]
        setting: Option<String>,
    },
    /// Change a run-time setting (kept across restarts).
    #[command(allow_negative_numbers = true, after_long_help = settings_long_help())]
    Set {
        /// The setting's name (`set --help` lists them with their units).
        #[arg(value_parser = setting_parser(), hide_possible_values = true)]
        setting: String,
        /// The value, as JSON (`0.5`, `[1,2]`, `true`); otherwise taken as a string.
        value: String,
    },
    /// Drop a setting's run-time change: the configuration file's value
    /// applies again, now and after restarts.
    Unset {
        /// The setting's name.
        #[arg(value_parser = setting_parser(), hide_possible_values = true)]
        setting: String,
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
    /// Follow the daemon's events until interrupted, one readable line each
    /// (--json: the raw event lines). Without a filter: operations, board
    /// links and touch sensors; snapshots only with --snapshots.
    Events {
        /// Operations: started, steps, a sweep's passes, ended.
        #[arg(long)]
        operations: bool,
        /// Board link changes.
        #[arg(long)]
        boards: bool,
        /// Snapshot counters.
        #[arg(long)]
        snapshots: bool,
        /// Touch sensor changes.
        #[arg(long)]
        touch: bool,
    },
    /// Print a shell completion script on stdout, e.g.
    /// `stringdriverctl completions bash > /etc/bash_completion.d/stringdriverctl`.
    #[command(hide = true)]
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff) on stdout, e.g. `stringdriverctl man | man -l -`.
    #[command(hide = true)]
    Man {
        /// Write every page (the program's and one per subcommand) into
        /// this directory instead.
        #[arg(long)]
        out_dir: Option<PathBuf>,
    },
}

/// Setting names as clap's possible values: checked before anything is
/// sent, with "did you mean" on a typo (the list is the daemon's own).
fn setting_parser() -> PossibleValuesParser {
    PossibleValuesParser::new(SETTINGS)
}

/// Motor parameters as clap's possible values, from the daemon's own list
/// (`acceleration`, which it also takes, hidden).
fn motor_param_parser() -> PossibleValuesParser {
    use stringdriverd::config::MotorParam;
    PossibleValuesParser::new(
        MotorParam::ALL
            .map(|p| PossibleValue::new(p.name()))
            .into_iter()
            .chain([PossibleValue::new("acceleration").hide(true)]),
    )
}

/// Operation kinds as clap's possible values, from the daemon's own list.
fn kind_parser() -> PossibleValuesParser {
    PossibleValuesParser::new(OperationType::ALL.map(OperationType::as_str))
}

/// The `set --help` table: every setting with its unit and range.
fn settings_long_help() -> String {
    format!(
        "Settings (the value's unit and range in parentheses):\n{}",
        stringdriverd::state::settings_help()
    )
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
        #[arg(value_parser = motor_param_parser())]
        param: String,
        /// The value.
        value: i64,
    },
}

#[derive(Subcommand)]
enum OpCmd {
    /// Start an operation. With --wait, a sweep's progress is printed after
    /// every pass.
    Run {
        /// The operation.
        #[arg(value_parser = kind_parser())]
        kind: String,
        /// Only this stepper (a name such as z2in, or an index).
        #[arg(long)]
        stepper: Option<String>,
        /// Wait for the outcome.
        #[arg(long)]
        wait: bool,
        /// Run it again lap_rest after each run until cancelled (`op
        /// cancel`), a run does not complete, or (bump_check)
        /// bump_check_enable is off. Each run is its own operation.
        #[arg(long)]
        repeat: bool,
    },
    /// Cancel the running operation.
    Cancel,
    /// Wait for the running operation (or print the last one's outcome).
    Wait,
    /// Record an operation run by another program.
    Report {
        /// The operation.
        #[arg(long, value_parser = kind_parser())]
        kind: String,
        /// Its status.
        #[arg(long, value_parser = PossibleValuesParser::new(OperationStatus::ALL.map(OperationStatus::as_str)))]
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
        Cmd::Status { .. } => json!({"cmd": "status"}),
        Cmd::Snapshot => json!({"cmd": "snapshot"}),
        Cmd::Move {
            abs: false,
            stepper,
            value,
        } => {
            json!({"cmd": "move", "stepper": stepper_value(stepper), "delta": value, "announce": true})
        }
        Cmd::Move {
            abs: true,
            stepper,
            value,
        } => {
            json!({"cmd": "move", "stepper": stepper_value(stepper), "position": value, "announce": true})
        }
        Cmd::SetPosition { stepper, position } => {
            json!({"cmd": "set_position", "stepper": stepper_value(stepper), "position": position})
        }
        Cmd::Enable { stepper } => json!({"cmd": "enable", "stepper": stepper_value(stepper)}),
        Cmd::Disable { stepper } => json!({"cmd": "disable", "stepper": stepper_value(stepper)}),
        Cmd::Steppers => json!({"cmd": "steppers"}),
        Cmd::Stop => json!({"cmd": "stop"}),
        Cmd::Get { setting } => json!({"cmd": "get", "name": setting}),
        Cmd::Set { setting, value } => {
            let v = serde_json::from_str::<Value>(value).unwrap_or_else(|_| json!(value));
            json!({"cmd": "set", "name": setting, "value": v})
        }
        Cmd::Unset { setting } => json!({"cmd": "unset", "name": setting}),
        Cmd::Thresholds => json!({"cmd": "get"}),
        Cmd::Op { op } => match op {
            OpCmd::Run {
                kind,
                stepper,
                wait,
                repeat,
            } => json!({
                "cmd": "op_run", "kind": kind,
                "stepper": stepper.as_deref().map(stepper_value), "wait": wait, "repeat": repeat,
            }),
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
        Cmd::Events { .. } => json!({"cmd": "events"}),
        // Answered by the client itself (`local`), never sent.
        Cmd::Completions { .. } | Cmd::Man { .. } => json!({}),
    };
    if let Value::Object(m) = &mut r {
        m.insert("v".into(), json!(1));
        m.insert("id".into(), json!(1));
    }
    r
}

/// A stepper argument as the daemon takes it: an index as a number, a
/// name as a string (the daemon resolves names with its own stepper map).
fn stepper_value(s: &str) -> Value {
    match s.trim().parse::<u64>() {
        Ok(i) => json!(i),
        Err(_) => json!(s),
    }
}

/// The stepper map with live positions, one line per stepper (the same
/// table as in `status`).
fn print_steppers(r: &Value) {
    print!("{}", stringdriverd::ctl::status_view::stepper_table(r));
}

fn show(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        // Lists read as everywhere else: `0, 20, 20`, not `[0,20,20]`.
        Value::Array(items) => items.iter().map(show).collect::<Vec<_>>().join(", "),
        other => other.to_string(),
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

/// An interim line of the daemon, said when the wait starts: "waiting 4.7 s
/// (x_rest) before moving stepper 0 (X)".
fn print_interim(note: &Value) {
    if let Some(w) = note["waiting_s"].as_f64() {
        eprintln!(
            "waiting {:.1} s ({}) before moving stepper {} ({})",
            w,
            show(&note["setting"]),
            show(&note["stepper"]),
            show(&note["role"])
        );
    }
}

fn print_readable(cmd: &Cmd, r: &Value) {
    match cmd {
        Cmd::Motor { .. } => print_motor(r),
        Cmd::Status { .. } => print!(
            "{}",
            stringdriverd::ctl::status_view::render(r, chrono::Utc::now())
        ),
        Cmd::Steppers => print_steppers(r),
        Cmd::Snapshot => println!("snapshot {}", show(&r["state_id"])),
        Cmd::Move { .. } => {
            println!(
                "stepper {} at {} (board: {})",
                show(&r["stepper"]),
                show(&r["position"]),
                show(&r["board_positions"])
            )
        }
        Cmd::SetPosition { .. } => println!(
            "stepper {} at {} (board: {})",
            show(&r["stepper"]),
            show(&r["position"]),
            show(&r["board_positions"])
        ),
        Cmd::Stop => {
            match r["operation_cancelled"].as_str() {
                Some(k) => println!("stopped: operation {k} cancelled"),
                None => println!("stopped: no operation was running"),
            }
            let moving: Vec<String> = r["still_moving"]
                .as_array()
                .into_iter()
                .flatten()
                .map(show)
                .collect();
            if moving.is_empty() {
                println!(
                    "nothing moves (waited {:.1} s)",
                    r["waited_s"].as_f64().unwrap_or(0.0)
                );
            } else {
                println!("still moving after the wait: {}", moving.join(", "));
            }
        }
        Cmd::Enable { .. } | Cmd::Disable { .. } if r["steppers"].is_array() => println!(
            "steppers {} {}",
            r["steppers"]
                .as_array()
                .into_iter()
                .flatten()
                .map(show)
                .collect::<Vec<_>>()
                .join(", "),
            if r["enabled"].as_bool() == Some(true) {
                "enabled"
            } else {
                "disabled"
            }
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
        Cmd::Get { setting: Some(_) } => {
            println!("{}", stringdriverd::ctl::settings_view::setting_line(r))
        }
        Cmd::Set { .. } => println!("{} = {}", show(&r["name"]), r["value"]),
        Cmd::Unset { .. } => println!("{}", stringdriverd::ctl::settings_view::unset_line(r)),
        Cmd::Get { setting: None } => {
            for l in stringdriverd::ctl::settings_view::all_lines(r) {
                println!("{l}");
            }
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
            OpCmd::Run { wait: false, .. } => println!(
                "started {}{}",
                show(&r["started"]),
                if r["repeat"] == json!(true) {
                    " (repeat)"
                } else {
                    ""
                }
            ),
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
            OpCmd::Run { wait: true, .. } | OpCmd::Wait => {
                println!(
                    "{} {}: {} (operation {})",
                    show(&r["kind"]),
                    show(&r["status"]),
                    show(&r["message"]),
                    show(&r["operation_id"])
                );
                if r["repeat"].is_object() {
                    println!(
                        "repeat: {} runs; {}",
                        show(&r["repeat"]["runs"]),
                        show(&r["repeat"]["ended"])
                    );
                }
            }
        },
        Cmd::Events { .. } => println!("{r}"),
        // Answered locally before any connection (`local`).
        Cmd::Completions { .. } | Cmd::Man { .. } => {}
    }
}

/// Subscribes to the daemon's events and prints progress on stderr while
/// an operation runs, from a second connection (the operation's start,
/// steps, a sweep's passes and its end, and board link changes, as
/// [`stringdriverd::ctl::progress`] writes them; with `json` the operation
/// events as they came, one JSON line each). The subscription is
/// confirmed before the caller sends its request, so the operation's first
/// event cannot be missed; the receiver hears when an operation's `ended`
/// event has been printed. Best effort: without it the wait still works.
fn show_progress(socket: &std::path::Path, json: bool) -> Option<std::sync::mpsc::Receiver<()>> {
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
            // The operation and real board link changes: not the snapshot
            // counters, not the links as they were when the wait began.
            let text = match ev["event"].as_str() {
                Some("operation") if json => line.clone(),
                _ if json => continue,
                _ if !Filter::WAIT.passes(&ev) => continue,
                _ => match wait_line(&ev) {
                    Some(t) => t,
                    None => continue,
                },
            };
            if json {
                eprintln!("{text}");
            } else {
                eprintln!("  ... {text}");
            }
            if ev["event"] == "operation" && ev["phase"] == "ended" {
                let _ = ended_tx.send(());
            }
        }
    });
    Some(ended)
}

/// Warns (stderr) when this client and the daemon differ in version or
/// protocol: fields may be missing or mean something else.
fn warn_version_skew(status: &Value) {
    let d = &status["daemon"];
    let mine = env!("CARGO_PKG_VERSION");
    if d["protocol"].as_u64() != Some(1) {
        eprintln!(
            "warning: the daemon speaks control protocol {}, this stringdriverctl 1",
            show(&d["protocol"])
        );
    } else if d["version"].as_str() != Some(mine) {
        eprintln!(
            "warning: stringdriverd is version {}, this stringdriverctl {mine}",
            show(&d["version"])
        );
    }
}

/// One request on a connection of its own; the result, or the error text.
fn one_request(socket: &std::path::Path, cmd: &str) -> Result<Value, String> {
    let stream = UnixStream::connect(socket).map_err(|e| e.to_string())?;
    let mut line = json!({"v": 1, "id": 1, "cmd": cmd}).to_string();
    line.push('\n');
    (&stream)
        .write_all(line.as_bytes())
        .map_err(|e| e.to_string())?;
    let mut reply = String::new();
    BufReader::new(&stream)
        .read_line(&mut reply)
        .map_err(|e| e.to_string())?;
    let v: Value = serde_json::from_str(&reply).map_err(|e| e.to_string())?;
    if v["ok"].as_bool() == Some(true) {
        Ok(v["result"].clone())
    } else {
        Err(format!(
            "{}: {}",
            show(&v["error"]["kind"]),
            show(&v["error"]["message"])
        ))
    }
}

/// Ctrl-C while waiting for an operation. For one this command started: the
/// first cancels it (the wait goes on to print the `cancelled` outcome), the
/// second leaves at once. For one it did not start (`op wait`): leave, and
/// say how to cancel it. Returns the flag that says a Ctrl-C came.
fn on_ctrl_c(
    socket: &std::path::Path,
    started_here: bool,
) -> std::sync::Arc<std::sync::atomic::AtomicBool> {
    use std::sync::atomic::{AtomicBool, Ordering};
    let flag = std::sync::Arc::new(AtomicBool::new(false));
    let Ok(mut signals) = signal_hook::iterator::Signals::new([signal_hook::consts::SIGINT]) else {
        return flag;
    };
    let (socket, seen) = (socket.to_path_buf(), flag.clone());
    std::thread::spawn(move || {
        for _ in signals.forever() {
            if !started_here {
                eprintln!(
                    "stopped waiting; the operation goes on (cancel it with `stringdriverctl op cancel`, \
                     or stop everything with `stringdriverctl stop`)"
                );
                std::process::exit(130);
            }
            if seen.swap(true, Ordering::SeqCst) {
                eprintln!("leaving without waiting for the cancel to finish");
                std::process::exit(130);
            }
            eprintln!(
                "Ctrl-C: cancelling the operation this command started (Ctrl-C again to leave without waiting)"
            );
            match one_request(&socket, "op_cancel") {
                Ok(r) if r["cancelled"].as_bool() == Some(true) => {}
                Ok(_) => eprintln!("no operation was running any more"),
                Err(e) => eprintln!("cannot cancel: {e}"),
            }
        }
    });
    flag
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

/// Ends with an error: `kind: message` on stderr, or with `--json` the
/// object `{"error": {"kind", "message"}}` on stdout, so that a script reads
/// errors where it reads results; the exit code is the same either way.
fn fail(json: bool, code: u8, kind: &str, message: &str) -> ExitCode {
    if json {
        println!("{}", json!({"error": {"kind": kind, "message": message}}));
    } else {
        eprintln!("{kind}: {message}");
    }
    ExitCode::from(code)
}

/// The commands the client answers without a daemon: completion scripts
/// and the manual page, generated from these very definitions.
fn local(cmd: &Cmd) -> Option<ExitCode> {
    let mut out = std::io::stdout().lock();
    let written = match cmd {
        Cmd::Completions { shell } => {
            clap_complete::generate(*shell, &mut Cli::command(), "stringdriverctl", &mut out);
            Ok(())
        }
        Cmd::Man { out_dir } => {
            stringdriverd::ctl::docs::man(Cli::command(), out_dir.as_deref(), &mut out)
        }
        _ => return None,
    };
    Some(match written.and_then(|()| out.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("stringdriverctl: cannot write to stdout: {e}");
            ExitCode::FAILURE
        }
    })
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // With --json a script gets JSON for a usage error too (a
            // mistyped kind or setting), with clap's exit code 2; help and
            // version stay text.
            let json = std::env::args_os().any(|a| a == "--json");
            if json && e.use_stderr() {
                let message = e.render().to_string();
                let message = message.trim_end().trim_start_matches("error: ");
                return fail(true, 2, "usage", message);
            }
            e.exit()
        }
    };
    if let Some(code) = local(&cli.command) {
        return code;
    }
    let fail_connect = |e: std::io::Error| {
        let path = &cli.socket;
        let not_a_socket = std::fs::metadata(path)
            .is_ok_and(|m| !std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()));
        let message = if not_a_socket {
            format!(
                "{} is not a socket (give the daemon's control socket: --socket or STRINGDRIVER_SOCKET; \
                 [control] socket in its configuration)",
                path.display()
            )
        } else {
            format!(
                "cannot reach stringdriverd at {}: {e} ({})",
                path.display(),
                connect_hint(&e)
            )
        };
        fail(cli.json, 2, "unreachable", &message)
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
    let interrupted = waits.then(|| {
        on_ctrl_c(
            &cli.socket,
            matches!(
                &cli.command,
                Cmd::Op {
                    op: OpCmd::Run { .. }
                }
            ),
        )
    });
    let progress = if waits {
        show_progress(&cli.socket, cli.json)
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
        fail(
            cli.json,
            2,
            "closed",
            &format!(
                "stringdriverd at {} accepted the connection and then closed it without a reply: {e}",
                cli.socket.display()
            ),
        )
    };
    let reply: Value = loop {
        reply.clear();
        match reader.read_line(&mut reply) {
            Ok(0) => {
                return closed(written.err().unwrap_or_else(|| {
                    std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "end of stream")
                }))
            }
            Ok(_) => {}
            Err(e) => return closed(written.err().unwrap_or(e)),
        }
        let v: Value = match serde_json::from_str(&reply) {
            Ok(v) => v,
            Err(e) => {
                return fail(
                    cli.json,
                    2,
                    "bad_reply",
                    &format!("the daemon's reply is not JSON: {e}: {}", reply.trim_end()),
                );
            }
        };
        // Said before the daemon waits (a move's rest), on stderr in both
        // modes like progress; the reply follows.
        match v.get("interim") {
            Some(note) => print_interim(note),
            None => break v,
        }
    };
    if reply["ok"].as_bool() != Some(true) {
        let e = &reply["error"];
        if matches!(
            e["kind"].as_str(),
            Some("too_many_clients" | "forbidden" | "idle_timeout")
        ) {
            return fail(
                cli.json,
                2,
                &show(&e["kind"]),
                &format!(
                    "stringdriverd at {} refused the connection: {}",
                    cli.socket.display(),
                    show(&e["message"])
                ),
            );
        }
        return fail(cli.json, 1, &show(&e["kind"]), &show(&e["message"]));
    }
    let result = &reply["result"];
    if let Cmd::Status { .. } = cli.command {
        warn_version_skew(result);
    }
    if let Cmd::Status { check: true } = cli.command {
        let capturing = stringdriverd::ctl::status_view::capturing(result);
        if cli.json {
            println!(
                "{}",
                json!({"capturing": capturing, "reason": result["health"]["reason"]})
            );
        } else if capturing {
            println!("capturing");
        } else {
            println!("paused: {}", show(&result["health"]["reason"]));
        }
        return ExitCode::from(if capturing { 0 } else { 1 });
    }
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
    if let Cmd::Events {
        operations,
        boards,
        snapshots,
        touch,
    } = cli.command
    {
        // Every further line is an event, until the daemon goes away.
        let filter = Filter::events(operations, boards, snapshots, touch);
        let mut out = std::io::stdout().lock();
        for l in reader.lines() {
            let Ok(l) = l else { break };
            let text = if cli.json {
                l
            } else {
                match serde_json::from_str::<Value>(&l) {
                    Ok(ev) if filter.passes(&ev) => match event_line(&ev) {
                        Some(t) => t,
                        None => continue,
                    },
                    _ => continue,
                }
            };
            if writeln!(out, "{text}").and_then(|_| out.flush()).is_err() {
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
    if interrupted.is_some_and(|f| f.load(std::sync::atomic::Ordering::SeqCst)) {
        return ExitCode::from(130);
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
