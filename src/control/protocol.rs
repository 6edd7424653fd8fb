//! The wire format of the control socket: request parsing, replies, errors
//! and the typed access to request fields (see the module doc of
//! [`crate::control`] for the protocol itself).

use serde_json::{json, Map, Value};

/// The protocol version this daemon speaks.
pub const VERSION: u64 = 1;

/// The longest request line accepted, in bytes (without the newline).
pub const MAX_LINE: usize = 64 * 1024;

/// The commands the daemon knows, in the order `unknown_command` lists them.
pub const COMMANDS: &[&str] = &[
    "status",
    "snapshot",
    "move",
    "set_position",
    "enable",
    "disable",
    "get",
    "set",
    "unset",
    "op_run",
    "op_cancel",
    "op_wait",
    "op_report",
    "steppers",
    "stop",
    "motor",
    "motor_set",
    "events",
];

/// An error reply: a stable snake_case `kind` for programs, a message for people.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    /// Stable machine-readable kind (`bad_json`, `refused`, ...).
    pub kind: &'static str,
    /// What went wrong, for the operator.
    pub message: String,
}

impl ApiError {
    /// An error of `kind` with `message`.
    pub fn new(kind: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            kind,
            message: message.into(),
        }
    }

    /// A request field is missing or has the wrong type.
    pub fn bad_field(field: &str, expected: &str, got: Option<&Value>) -> ApiError {
        match got {
            None => ApiError::new(
                "bad_request",
                format!("field `{field}` is required ({expected})"),
            ),
            Some(v) => ApiError::new(
                "bad_request",
                format!("field `{field}` must be {expected}, not {v}"),
            ),
        }
    }
}

/// A parsed request: its id (echoed), its command and its whole object
/// (the arguments are the other members).
#[derive(Debug, Clone)]
pub struct Request {
    /// Echoed in the reply; `null` when absent.
    pub id: Value,
    /// The command name.
    pub cmd: String,
    /// The whole request object.
    pub args: Map<String, Value>,
}

/// Parses one request line. The error carries the id when it could be read,
/// so that even a refused request is answered under its id.
pub fn parse(line: &str) -> Result<Request, (Value, ApiError)> {
    let value: Value = serde_json::from_str(line)
        .map_err(|e| (Value::Null, ApiError::new("bad_json", e.to_string())))?;
    let Value::Object(args) = value else {
        return Err((
            Value::Null,
            ApiError::new(
                "bad_request",
                format!("a request must be a JSON object, not {value}"),
            ),
        ));
    };
    let id = args.get("id").cloned().unwrap_or(Value::Null);
    match args.get("v") {
        Some(v) if v.as_u64() == Some(VERSION) => {}
        Some(v) => {
            return Err((
                id,
                ApiError::new(
                    "unsupported_version",
                    format!("protocol version {v} is not supported; this daemon speaks {VERSION}"),
                ),
            ))
        }
        None => {
            return Err((
                id,
                ApiError::bad_field("v", "the protocol version, 1", None),
            ))
        }
    }
    let cmd = match args.get("cmd") {
        Some(Value::String(s)) => s.clone(),
        other => {
            return Err((
                id,
                ApiError::bad_field("cmd", "a command name (a string)", other),
            ))
        }
    };
    Ok(Request { id, cmd, args })
}

/// The reply line (without newline) for `result`.
pub fn reply(id: &Value, result: Result<Value, ApiError>) -> String {
    let v = match result {
        Ok(result) => json!({"v": VERSION, "id": id, "ok": true, "result": result}),
        Err(e) => json!({
            "v": VERSION,
            "id": id,
            "ok": false,
            "error": {"kind": e.kind, "message": e.message},
        }),
    };
    v.to_string()
}

/// A line sent before the reply to a request that asked for it (`move` with
/// `announce`): what the request is waiting for, so that a client can say
/// so before the wait rather than after. It has no `ok`: the reply follows.
pub fn interim(id: &Value, body: Value) -> String {
    json!({"v": VERSION, "id": id, "interim": body}).to_string()
}

/// An event line (without newline) of an `events` stream.
pub fn event(name: &str, mut body: Map<String, Value>) -> String {
    body.insert("v".into(), json!(VERSION));
    body.insert("event".into(), json!(name));
    Value::Object(body).to_string()
}

impl Request {
    fn get(&self, field: &str) -> Option<&Value> {
        self.args.get(field).filter(|v| !v.is_null())
    }

    /// A required non-negative integer (a stepper index).
    pub fn index(&self, field: &str) -> Result<usize, ApiError> {
        let v = self.get(field);
        v.and_then(Value::as_u64)
            .and_then(|n| usize::try_from(n).ok())
            .ok_or_else(|| ApiError::bad_field(field, "a non-negative integer", v))
    }

    /// An optional non-negative integer.
    pub fn opt_index(&self, field: &str) -> Result<Option<usize>, ApiError> {
        match self.get(field) {
            None => Ok(None),
            Some(_) => self.index(field).map(Some),
        }
    }

    /// An optional 32-bit integer.
    pub fn opt_i32(&self, field: &str) -> Result<Option<i32>, ApiError> {
        match self.get(field) {
            None => Ok(None),
            Some(v) => v
                .as_i64()
                .and_then(|n| i32::try_from(n).ok())
                .map(Some)
                .ok_or_else(|| ApiError::bad_field(field, "a 32-bit integer", Some(v))),
        }
    }

    /// A required 32-bit integer.
    pub fn i32(&self, field: &str) -> Result<i32, ApiError> {
        self.opt_i32(field)?
            .ok_or_else(|| ApiError::bad_field(field, "a 32-bit integer", None))
    }

    /// An optional string.
    pub fn opt_str(&self, field: &str) -> Result<Option<&str>, ApiError> {
        match self.get(field) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(v) => Err(ApiError::bad_field(field, "a string", Some(v))),
        }
    }

    /// A required string.
    pub fn str(&self, field: &str) -> Result<&str, ApiError> {
        self.opt_str(field)?
            .ok_or_else(|| ApiError::bad_field(field, "a string", None))
    }

    /// An optional boolean (absent: false).
    pub fn flag(&self, field: &str) -> Result<bool, ApiError> {
        match self.get(field) {
            None => Ok(false),
            Some(Value::Bool(b)) => Ok(*b),
            Some(v) => Err(ApiError::bad_field(field, "true or false", Some(v))),
        }
    }

    /// A required value of any JSON type (`null` included).
    pub fn any(&self, field: &str) -> Result<&Value, ApiError> {
        self.args
            .get(field)
            .ok_or_else(|| ApiError::bad_field(field, "a JSON value", None))
    }

    /// A required array of 32-bit integers.
    pub fn i32_list(&self, field: &str) -> Result<Vec<i32>, ApiError> {
        let v = self.get(field);
        let bad = || ApiError::bad_field(field, "an array of 32-bit integers", v);
        match v {
            Some(Value::Array(items)) => items
                .iter()
                .map(|x| x.as_i64().and_then(|n| i32::try_from(n).ok()))
                .collect::<Option<Vec<i32>>>()
                .ok_or_else(bad),
            _ => Err(bad()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_checked_and_errors_keep_the_id() {
        let r = parse(r#"{"v":1,"id":7,"cmd":"move","stepper":3,"delta":-5}"#).expect("ok");
        assert_eq!((r.id.clone(), r.cmd.as_str()), (json!(7), "move"));
        assert_eq!(r.index("stepper"), Ok(3));
        assert_eq!(r.i32("delta"), Ok(-5));
        assert!(r
            .i32("position")
            .unwrap_err()
            .message
            .contains("`position`"));
        assert_eq!(parse("{nope").unwrap_err().1.kind, "bad_json");
        let (id, e) = parse(r#"{"v":2,"id":"a","cmd":"status"}"#).unwrap_err();
        assert_eq!((id, e.kind), (json!("a"), "unsupported_version"));
        assert_eq!(
            parse(r#"{"v":1,"id":1}"#).unwrap_err().1.kind,
            "bad_request"
        );
        assert_eq!(parse("[1]").unwrap_err().1.kind, "bad_request");
        let r = parse(r#"{"v":1,"cmd":"move","stepper":-1,"delta":1e12}"#).expect("ok");
        assert!(r.index("stepper").is_err() && r.i32("delta").is_err());
    }
}
