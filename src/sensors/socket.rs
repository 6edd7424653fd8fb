//! Simulated touch sensors read from another process: the client of
//! [`crate::sim::touch`] (wire format there), one socket per board
//! (`sensors.simulator_sockets`).
//!
//! Every failure is an error naming the socket and what went wrong, never a
//! reading: a sensor that cannot be read must not look like "not touching",
//! or an operation would press the mechanism into its string.

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{SwitchReader, TouchReader};
use crate::sim::XSwitchState;

/// How long a read waits for the simulator, per attempt (a read makes at
/// most two: the cached connection, then a fresh one).
pub const READ_TIMEOUT: Duration = Duration::from_millis(200);

/// Longest reply accepted: one character per stepper (at most
/// `config::defaults::MAX_STEPPERS`) and the `\n`, with room to spare.
const MAX_REPLY: u64 = 256;

/// One board's socket and the connection kept to it between reads.
pub(super) struct Board {
    path: PathBuf,
    conn: Mutex<Option<BufReader<UnixStream>>>,
}

impl Board {
    /// Sends `request` (`touch` or `switches`) and reads the 0/1 reply.
    fn read(&self, request: &[u8]) -> Result<Vec<bool>, String> {
        // A poisoned lock only means a reader panicked; the worst left
        // behind is a connection that fails and is replaced.
        let mut conn = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = conn.as_mut() {
            match exchange(c, request) {
                Ok(readings) => return Ok(readings),
                // The server closes idle connections and may have been
                // restarted since: one fresh connection decides.
                Err(_) => *conn = None,
            }
        }
        let mut fresh = connect(&self.path)?;
        let readings = exchange(&mut fresh, request)?;
        *conn = Some(fresh);
        Ok(readings)
    }
}

fn connect(path: &Path) -> Result<BufReader<UnixStream>, String> {
    let fail = |what: &str, e: std::io::Error| format!("{what}: {e}");
    // A Unix connect completes without the server's accept, so it does not
    // wait on a stopped or busy simulator (only on a backlog of thousands of
    // unaccepted connections); the timeouts below bound the exchange.
    let stream = UnixStream::connect(path).map_err(|e| fail("cannot connect", e))?;
    stream
        .set_read_timeout(Some(READ_TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(READ_TIMEOUT)))
        .map_err(|e| fail("cannot set its timeouts", e))?;
    Ok(BufReader::new(stream))
}

/// Sends `request` and reads the readings. The error is the detail without
/// the path (the caller adds it).
fn exchange(conn: &mut BufReader<UnixStream>, request: &[u8]) -> Result<Vec<bool>, String> {
    let timed_out =
        |e: &std::io::Error| matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut);
    let mut line = request.to_vec();
    line.push(b'\n');
    conn.get_mut().write_all(&line).map_err(|e| {
        if timed_out(&e) {
            format!("the request was not taken within {READ_TIMEOUT:?}")
        } else {
            format!("cannot send the request: {e}")
        }
    })?;
    let mut line = Vec::new();
    let n = conn
        .by_ref()
        .take(MAX_REPLY)
        .read_until(b'\n', &mut line)
        .map_err(|e| {
            if timed_out(&e) {
                format!("no reply within {READ_TIMEOUT:?}")
            } else {
                format!("cannot read the reply: {e}")
            }
        })?;
    if n == 0 {
        return Err("the simulator closed the connection without a reply".to_string());
    }
    let Some(body) = line.strip_suffix(b"\n") else {
        return Err(format!(
            "bad reply {:?}: no end of line within {MAX_REPLY} bytes",
            String::from_utf8_lossy(&line)
        ));
    };
    if let Some(reason) = body.strip_prefix(b"error ") {
        return Err(format!(
            "the simulator refused the request: {}",
            String::from_utf8_lossy(reason)
        ));
    }
    body.iter()
        .map(|&b| match b {
            b'1' => Ok(true),
            b'0' => Ok(false),
            _ => Err(format!(
                "bad reply {:?} (expected one 0 or 1 per reading)",
                String::from_utf8_lossy(body)
            )),
        })
        .collect()
}

/// Every board's socket, in board order (`None`: no socket for it). Nothing
/// connects until the first read; the touch and switch readers share the
/// connections.
pub(super) type Boards = Arc<Vec<Option<Board>>>;

/// The sockets at `paths`, one per board in board order.
pub(super) fn boards(paths: Vec<Option<PathBuf>>) -> Boards {
    Arc::new(
        paths
            .into_iter()
            .map(|p| {
                p.map(|path| Board {
                    path,
                    conn: Mutex::new(None),
                })
            })
            .collect(),
    )
}

/// Asks `board`'s socket for `request`'s readings.
fn ask(boards: &Boards, board: usize, request: &[u8]) -> Result<Vec<bool>, String> {
    match boards.get(board) {
        Some(Some(b)) => b
            .read(request)
            .map_err(|e| format!("touch socket {}: {e}", b.path.display())),
        Some(None) => Err(format!(
            "board {board} has no touch socket (its sensors.simulator_sockets entry is \"\")"
        )),
        None => Err(format!(
            "board {board} has no entry in sensors.simulator_sockets ({} entries)",
            boards.len()
        )),
    }
}

/// The [`TouchReader`] of one socket per board (`touch` requests).
pub(super) fn reader(boards: Boards) -> TouchReader {
    Arc::new(move |board| ask(&boards, board, b"touch"))
}

/// The [`SwitchReader`] of one socket per board (`switches` requests): an
/// empty reply is a board without a carriage.
pub(super) fn switch_reader(boards: Boards) -> SwitchReader {
    Arc::new(move |board| {
        let r = ask(&boards, board, b"switches")?;
        match r.as_slice() {
            [] => Ok(None),
            [home, away] => Ok(Some(XSwitchState {
                home: *home,
                away: *away,
            })),
            other => Err(format!(
                "bad switches reply: {} readings, expected 2 (home, away) or none",
                other.len()
            )),
        }
    })
}
