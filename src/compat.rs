//! The GUI compatibility sockets: the existing GUI tools talk to whatever
//! owns a board through a Unix socket named after the board's port.
//!
//! # Transport
//!
//! One socket per board at `<compat.dir>/arduino_connection_<port>.sock`,
//! where `<port>` is the board's port path with every `/` replaced by `_`
//! (see [`socket_path`]). Served only when `compat.enabled`. At start a stale
//! socket file (nobody answers on it) is removed; if something answers there
//! that board's socket is not served (logged). The file gets mode 0660 and is
//! removed at shutdown.
//!
//! # Requests
//!
//! One JSON request per connection, ended by a newline, by closing the
//! writing side, or simply by being complete JSON:
//!
//! ```json
//! {"RelMove": {"stepper": 3, "delta": -10}}
//! {"AbsMove": {"stepper": 3, "position": 120}}
//! {"Reset": {"stepper": 3, "position": 0}}
//! ```
//!
//! `stepper` is the index on that board. The reply is `"Ok"` or
//! `{"Error": "text"}` followed by a newline, then the connection closes.
//! Every request passes the motion gate as [`Origin::Compat`]: rests, limits,
//! enables and "one operation at a time" apply as for the control socket.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

use crate::config::{BoardConfig, CompatConfig};
use crate::daemon::Parts;
use crate::motion::Origin;

/// Longest request accepted, in bytes.
pub const MAX_REQUEST: usize = 4096;
/// How long a client may take to send its request: a silent client must not
/// hold its task forever.
const READ_TIMEOUT: Duration = Duration::from_secs(30);
/// How long writing the reply may take.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once per socket; more are refused until one ends.
const MAX_CLIENTS: usize = 64;
/// Permission bits of every compatibility socket.
const MODE: u32 = 0o660;

/// Why a board's compatibility socket was not started.
#[derive(Debug, thiserror::Error)]
pub enum CompatError {
    /// Something (another daemon, the old tool) answers on the socket.
    #[error("something already answers on {0}; not serving it")]
    InUse(PathBuf),
    /// The socket could not be created or prepared.
    #[error("compat socket {path}: {what}: {error}")]
    Io {
        /// The socket path.
        path: PathBuf,
        /// The step that failed.
        what: &'static str,
        /// The error.
        error: std::io::Error,
    },
}

/// The socket of the board on `port` inside `dir`: every `/` of the port
/// path becomes `_` (`/dev/ttyACM0` → `arduino_connection__dev_ttyACM0.sock`).
pub fn socket_path(dir: &Path, port: &Path) -> PathBuf {
    let name = port.to_string_lossy().replace('/', "_");
    dir.join(format!("arduino_connection_{name}.sock"))
}

/// One request as the GUI tools send it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
enum Request {
    RelMove { stepper: usize, delta: i32 },
    AbsMove { stepper: usize, position: i32 },
    Reset { stepper: usize, position: i32 },
}

/// Starts one socket per board of `boards` (in configured order, matching
/// `parts.boards`). A board whose socket cannot be served is logged and
/// skipped: the daemon and the other sockets go on without it. Each server
/// stops when `cancel` fires and removes its socket file.
pub async fn start(
    cfg: &CompatConfig,
    boards: &[BoardConfig],
    parts: Parts,
    cancel: CancellationToken,
) -> Vec<JoinHandle<()>> {
    let mut tasks = Vec::new();
    for (index, board) in boards.iter().enumerate() {
        let path = socket_path(&cfg.dir, &board.port);
        match start_board(path, index, parts.clone(), cancel.clone()).await {
            Ok(t) => tasks.push(t),
            Err(e) => tracing::error!(board = %board.name, error = %e, "compat socket not started"),
        }
    }
    tasks
}

/// Prepares the socket at `path` for board `board` (stale file removed, mode
/// set) and spawns its server.
pub async fn start_board(
    path: PathBuf,
    board: usize,
    parts: Parts,
    cancel: CancellationToken,
) -> Result<JoinHandle<()>, CompatError> {
    let io = |what: &'static str| {
        let path = path.clone();
        move |error| CompatError::Io { path, what, error }
    };
    let listener = crate::files::bind_fresh(&path).await.map_err(|e| match e {
        crate::files::BindError::InUse(p) => CompatError::InUse(p),
        crate::files::BindError::Io { path, what, error } => CompatError::Io { path, what, error },
    })?;
    if let Err(e) = tokio::fs::set_permissions(&path, std::fs::Permissions::from_mode(MODE)).await {
        crate::files::remove_socket(&path);
        return Err(io("chmod")(e));
    }
    tracing::info!(socket = %path.display(), board, "compat socket listening");
    Ok(tokio::spawn(serve(listener, path, board, parts, cancel)))
}

async fn serve(
    listener: UnixListener,
    path: PathBuf,
    board: usize,
    parts: Parts,
    cancel: CancellationToken,
) {
    let mut clients = JoinSet::new();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            Some(_) = clients.join_next(), if !clients.is_empty() => {}
            r = listener.accept() => match r {
                Ok((mut stream, _)) => {
                    if clients.len() >= MAX_CLIENTS {
                        let reply = error_reply(format!("busy: at most {MAX_CLIENTS} connections at once"));
                        let _ = write_reply(&mut stream, &reply).await;
                        continue;
                    }
                    clients.spawn(client(stream, board, parts.clone()));
                }
                Err(e) => {
                    // Out of descriptors and the like: pause instead of spinning.
                    tracing::warn!(error = %e, "compat socket: accept failed");
                    tokio::select! {
                        _ = cancel.cancelled() => break,
                        _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                    }
                }
            }
        }
    }
    drop(listener);
    crate::files::remove_socket(&path);
    clients.shutdown().await;
}

fn error_reply(text: impl Into<String>) -> Value {
    json!({ "Error": text.into() })
}

async fn write_reply(stream: &mut UnixStream, reply: &Value) -> std::io::Result<()> {
    let line = format!("{reply}\n");
    let write = async {
        stream.write_all(line.as_bytes()).await?;
        stream.shutdown().await
    };
    tokio::time::timeout(WRITE_TIMEOUT, write)
        .await
        .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
}

async fn client(mut stream: UnixStream, board: usize, parts: Parts) {
    let reply = match tokio::time::timeout(READ_TIMEOUT, read_request(&mut stream)).await {
        Err(_) => error_reply(format!(
            "no complete request within {} s",
            READ_TIMEOUT.as_secs()
        )),
        Ok(Err(text)) => error_reply(text),
        Ok(Ok(req)) => match handle(req, board, &parts).await {
            Ok(()) => json!("Ok"),
            Err(text) => error_reply(text),
        },
    };
    if let Err(e) = write_reply(&mut stream, &reply).await {
        tracing::debug!(error = %e, "compat socket: reply not delivered");
    }
}

/// Reads one request: up to a newline, the end of the stream, or the end of
/// a complete JSON value (some tools neither end the line nor close their
/// side before they wait for the answer).
async fn read_request(stream: &mut UnixStream) -> Result<Request, String> {
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|e| format!("cannot read the request: {e}"))?;
        if n == 0 {
            if buf.iter().all(u8::is_ascii_whitespace) {
                return Err("empty request".into());
            }
            return parse(&buf);
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.iter().position(|&b| b == b'\n') {
            if end > MAX_REQUEST {
                return Err(too_long());
            }
            return parse(&buf[..end]);
        }
        if buf.len() > MAX_REQUEST {
            return Err(too_long());
        }
        match serde_json::from_slice::<Value>(&buf) {
            // Not complete yet: wait for more.
            Err(e) if e.is_eof() => {}
            _ => return parse(&buf),
        }
    }
}

fn too_long() -> String {
    format!("request too long: at most {MAX_REQUEST} bytes")
}

fn parse(bytes: &[u8]) -> Result<Request, String> {
    serde_json::from_slice(bytes).map_err(|e| {
        format!(
            "malformed request ({e}); expected {{\"RelMove\":{{\"stepper\":N,\"delta\":D}}}}, \
             {{\"AbsMove\":{{\"stepper\":N,\"position\":P}}}} or {{\"Reset\":{{\"stepper\":N,\"position\":P}}}}"
        )
    })
}

async fn handle(req: Request, board: usize, parts: &Parts) -> Result<(), String> {
    let local = match &req {
        Request::RelMove { stepper, .. }
        | Request::AbsMove { stepper, .. }
        | Request::Reset { stepper, .. } => *stepper,
    };
    let layout = &parts.machine.layout;
    let Some(global) = layout.try_global(board, local) else {
        let (name, count) = parts.boards.get(board).map_or_else(
            || (format!("#{board}"), 0),
            |b| (b.name().to_string(), b.steppers()),
        );
        return Err(format!(
            "refused: stepper {local} does not exist on board {name} (it has {count} steppers)"
        ));
    };
    let gate = &parts.gate;
    let origin = Origin::Compat;
    let done = match req {
        Request::RelMove { delta, .. } => gate.move_rel(&origin, global, delta).await,
        Request::AbsMove { position, .. } => gate.move_abs(&origin, global, position).await,
        Request::Reset { position, .. } => gate.set_counter(&origin, global, position).await,
    };
    done.map(|_| ()).map_err(|e| {
        if e.is_refusal() {
            format!("refused: {e}")
        } else {
            e.to_string()
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_path_replaces_every_slash() {
        assert_eq!(
            socket_path(Path::new("/tmp"), Path::new("/dev/ttyACM0")),
            Path::new("/tmp/arduino_connection__dev_ttyACM0.sock")
        );
        assert_eq!(
            socket_path(
                Path::new("/run/stringdriver"),
                Path::new("/dev/serial/by-id/usb-x")
            ),
            Path::new("/run/stringdriver/arduino_connection__dev_serial_by-id_usb-x.sock")
        );
        assert_eq!(
            socket_path(Path::new("d"), Path::new("ttyUSB1")),
            Path::new("d/arduino_connection_ttyUSB1.sock")
        );
    }

    #[test]
    fn requests_parse_and_bad_ones_say_why() {
        assert!(matches!(
            parse(br#"{"RelMove":{"stepper":2,"delta":-5}}"#),
            Ok(Request::RelMove {
                stepper: 2,
                delta: -5
            })
        ));
        assert!(matches!(
            parse(br#"{"Reset":{"stepper":0,"position":7}}"#),
            Ok(Request::Reset {
                stepper: 0,
                position: 7
            })
        ));
        let e = parse(b"{nope").err().unwrap_or_default();
        assert!(e.starts_with("malformed request"), "{e}");
        let e = parse(br#"{"Spin":{"stepper":1}}"#)
            .err()
            .unwrap_or_default();
        assert!(e.contains("malformed request"), "{e}");
    }
}
