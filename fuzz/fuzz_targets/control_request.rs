//! Any text as control-socket request lines, the way the server sees them:
//! the parser, every typed field accessor, the reply line, and the pure part
//! of each command's handling (argument checks, setting validation). Nothing
//! may panic; errors must name their field; a reply is one line of JSON that
//! echoes the id; a setting accepted by `set` reads back through `get` as a
//! value that `set` accepts again with the same effect.
//!
//! `control::handlers::handle` itself needs the daemon's `Parts` (board
//! tasks, motion gate, spool, snapshot engine), so it is not run here; the
//! accessors and `state::apply` are what it calls on a request's arguments.
#![no_main]

use std::path::Path;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use stringdriverd::control::protocol::{self, ApiError, Request, COMMANDS, MAX_LINE};
use stringdriverd::daemon::{initial_enables, setting_value};
use stringdriverd::snapshot::Settings;
use stringdriverd::state;
use stringdriverd::store::{OperationStatus, OperationType};

/// Field names the handlers read, plus a few that no handler reads.
const FIELDS: &[&str] = &[
    "v",
    "id",
    "cmd",
    "stepper",
    "delta",
    "position",
    "name",
    "value",
    "kind",
    "wait",
    "status",
    "steppers",
    "final_positions",
    "message",
    "operation_id",
    "",
    "nope",
];

fuzz_target!(|data: &[u8]| {
    // The server frames with `LinesCodec`: a line that is not UTF-8 closes
    // the connection before anything is parsed, so only text gets this far.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for line in text.split('\n') {
        // `LinesCodec` drops a trailing "\r" and refuses longer lines.
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.len() > MAX_LINE || line.trim().is_empty() {
            continue;
        }
        request_line(line);
    }
});

fn request_line(line: &str) {
    match protocol::parse(line) {
        Err((id, e)) => {
            check_error(&e, None);
            check_reply(&id, Err(e));
        }
        Ok(req) => {
            assert_eq!(
                req.args.get("cmd").and_then(Value::as_str),
                Some(req.cmd.as_str())
            );
            assert_eq!(
                req.args.get("v").and_then(Value::as_u64),
                Some(protocol::VERSION)
            );
            let keys: Vec<String> = req.args.keys().take(8).cloned().collect();
            for field in FIELDS
                .iter()
                .copied()
                .chain(keys.iter().map(String::as_str))
            {
                accessors(&req, field);
            }
            let result = dispatch(&req);
            if let Err(e) = &result {
                check_error(e, None);
            }
            check_reply(&req.id, result);
        }
    }
}

/// Every typed accessor on `field`, and that they agree with one another.
fn accessors(req: &Request, field: &str) {
    let index = req.index(field);
    let opt_index = req.opt_index(field);
    match (&index, &opt_index) {
        (Ok(n), o) => assert_eq!(o, &Ok(Some(*n))),
        (Err(e), _) => check_error(e, Some(field)),
    }
    if let Err(e) = &opt_index {
        check_error(e, Some(field));
    }
    let i = req.i32(field);
    let opt_i = req.opt_i32(field);
    match (&i, &opt_i) {
        (Ok(n), o) => assert_eq!(o, &Ok(Some(*n))),
        (Err(e), _) => check_error(e, Some(field)),
    }
    if let (Ok(n), Ok(k)) = (&index, &i) {
        assert_eq!(usize::try_from(*k).ok(), Some(*n));
    }
    match (req.str(field), req.opt_str(field)) {
        (Ok(s), o) => assert_eq!(o, Ok(Some(s))),
        (Err(e), o) => {
            check_error(&e, Some(field));
            if let Err(e) = o {
                check_error(&e, Some(field));
            }
        }
    }
    if let Err(e) = req.flag(field) {
        check_error(&e, Some(field));
    }
    match req.any(field) {
        Ok(v) => assert_eq!(Some(v), req.args.get(field)),
        Err(e) => check_error(&e, Some(field)),
    }
    match req.i32_list(field) {
        Ok(list) => assert_eq!(
            req.args.get(field).and_then(Value::as_array).map(Vec::len),
            Some(list.len())
        ),
        Err(e) => check_error(&e, Some(field)),
    }
}

/// An error a client can act on: a stable kind and a message naming the
/// field it is about.
fn check_error(e: &ApiError, field: Option<&str>) {
    assert!(!e.kind.is_empty(), "{e:?}");
    assert!(!e.message.trim().is_empty(), "{e:?}");
    if let Some(f) = field {
        assert!(e.message.contains(&format!("`{f}`")), "{f}: {e:?}");
    }
}

/// A reply is exactly one line of JSON, protocol version 1, with the id.
fn check_reply(id: &Value, result: Result<Value, ApiError>) {
    let ok = result.is_ok();
    let line = protocol::reply(id, result);
    assert!(!line.contains('\n'), "{line}");
    let v: Value = serde_json::from_str(&line).expect("a reply is JSON");
    assert_eq!(v["v"], Value::from(protocol::VERSION));
    assert_eq!(v["ok"], Value::Bool(ok));
    // Only where the id itself survives a print and a parse (a float may
    // come back one ULP off without serde_json's float_roundtrip feature).
    if serde_json::from_str::<Value>(&id.to_string()).ok().as_ref() == Some(id) {
        assert_eq!(&v["id"], id);
    }
}

/// The settings the daemon starts with for `config/demo.toml`.
fn settings() -> &'static Settings {
    static S: OnceLock<Settings> = OnceLock::new();
    S.get_or_init(|| {
        let cfg = stringdriverd::config::parse(
            include_str!("../../config/demo.toml"),
            Path::new("config/demo.toml"),
        )
        .expect("config/demo.toml is valid");
        Settings {
            enabled: initial_enables(&cfg),
            operations: cfg.operations,
            thresholds: cfg.thresholds,
        }
    })
}

/// What `control::handlers::handle` checks of a request before it touches
/// the daemon, in the same order, with the same calls.
fn dispatch(req: &Request) -> Result<Value, ApiError> {
    let total = settings().enabled.len();
    match req.cmd.as_str() {
        "status" | "snapshot" | "op_cancel" | "op_wait" | "events" => Ok(Value::Null),
        "move" => {
            req.index("stepper")?;
            match (req.opt_i32("delta")?, req.opt_i32("position")?) {
                (Some(_), None) | (None, Some(_)) => Ok(Value::Null),
                _ => Err(ApiError::new(
                    "bad_request",
                    "exactly one of delta, position",
                )),
            }
        }
        "set_position" => {
            req.index("stepper")?;
            req.i32("position").map(Value::from)
        }
        "enable" | "disable" => {
            let stepper = req.index("stepper")?;
            if stepper >= total {
                return Err(ApiError::new("refused", format!("no stepper {stepper}")));
            }
            Ok(Value::from(stepper))
        }
        "get" => {
            let s = settings();
            match req.opt_str("name")? {
                Some(name) if state::SETTINGS.contains(&name) => Ok(setting_value(s, name)),
                Some(name) => Err(ApiError::new("invalid_setting", format!("unknown {name}"))),
                None => Ok(Value::Null),
            }
        }
        "set" => set(req),
        "op_run" => {
            kind(req)?;
            req.opt_index("stepper")?;
            req.flag("wait").map(Value::from)
        }
        "op_report" => {
            kind(req)?;
            let status = req.args.get("status");
            status
                .and_then(|s| serde_json::from_value::<OperationStatus>(s.clone()).ok())
                .ok_or_else(|| ApiError::bad_field("status", "an operation status", status))?;
            let steppers = req.i32_list("steppers")?;
            let finals = req.i32_list("final_positions")?;
            if steppers.len() != finals.len() {
                return Err(ApiError::new("bad_request", "one position per stepper"));
            }
            req.opt_str("message")?;
            if let Some(v) = req.args.get("operation_id").filter(|v| !v.is_null()) {
                v.as_str()
                    .and_then(|s| uuid::Uuid::parse_str(s).ok())
                    .ok_or_else(|| ApiError::bad_field("operation_id", "a UUID", Some(v)))?;
            }
            Ok(Value::Null)
        }
        other => {
            assert!(
                !COMMANDS.contains(&other),
                "`{other}` is listed but not handled"
            );
            Err(ApiError::new("unknown_command", format!("unknown {other}")))
        }
    }
}

fn kind(req: &Request) -> Result<OperationType, ApiError> {
    let v = req.args.get("kind");
    v.and_then(|k| serde_json::from_value::<OperationType>(k.clone()).ok())
        .ok_or_else(|| ApiError::bad_field("kind", "an operation kind", v))
}

/// `set`: `state::apply` on a copy. A refusal leaves nothing half-applied
/// for the handler to swap in; an accepted value reads back (`get`) as a
/// value that is accepted again and changes nothing more.
fn set(req: &Request) -> Result<Value, ApiError> {
    let name = req.str("name")?.to_string();
    let value = req.any("value")?.clone();
    let before = settings().clone();
    let mut next = before.clone();
    match state::apply(&mut next, &name, &value) {
        Err(e) => {
            assert!(!e.trim().is_empty());
            assert!(e.contains(name.as_str()), "{name}: {e}");
            Err(ApiError::new("invalid_setting", e))
        }
        Ok(()) => {
            assert!(state::SETTINGS.contains(&name.as_str()), "{name} accepted");
            assert_eq!(next.enabled, before.enabled);
            let now = setting_value(&next, &name);
            let mut again = next.clone();
            state::apply(&mut again, &name, &now)
                .unwrap_or_else(|e| panic!("{name} = {now} (read back from {value}): {e}"));
            assert_eq!(again, next, "{name}: {value} then {now}");
            Ok(now)
        }
    }
}
