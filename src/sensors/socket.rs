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

use super::TouchReader;

/// How long a read waits for the simulator, per attempt (a read makes at
/// most two: the cached connection, then a fresh one).
pub const READ_TIMEOUT: Duration = Duration::from_millis(200);

/// Longest reply accepted: one character per stepper (at most
/// `config::defaults::MAX_STEPPERS`) and the `\n`, with room to spare.
const MAX_REPLY: u64 = 256;

/// One board's socket and the connection kept to it between reads.
struct Board {
    path: PathBuf,
    conn: Mutex<Option<BufReader<UnixStream>>>,
}

impl Board {
    fn read(&self) -> Result<Vec<bool>, String> {
        // A poisoned lock only means a reader panicked; the worst left
        // behind is a connection that fails and is replaced.
        let mut conn = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = conn.as_mut() {
            match exchange(c) {
                Ok(readings) => return Ok(readings),
                // The server closes idle connections and may have been
                // restarted since: one fresh connection decides.
                Err(_) => *conn = None,
            }
        }
        let mut fresh = connect(&self.path)?;
        let readings = exchange(&mut fresh)?;
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

/// Sends `touch` and reads the readings. The error is the detail without
/// the path (the caller adds it).
fn exchange(conn: &mut BufReader<UnixStream>) -> Result<Vec<bool>, String> {
    let timed_out =
        |e: &std::io::Error| matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut);
    conn.get_mut().write_all(b"touch\n").map_err(|e| {
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
                "bad reply {:?} (expected one 0 or 1 per stepper)",
                String::from_utf8_lossy(body)
            )),
        })
        .collect()
}

/// The [`TouchReader`] of one socket per board, in board order (`None`: the
/// board has no simulated sensors). Nothing connects until the first read.
pub(super) fn reader(paths: Vec<Option<PathBuf>>) -> TouchReader {
    let boards: Vec<Option<Board>> = paths
        .into_iter()
        .map(|p| {
            p.map(|path| Board {
                path,
                conn: Mutex::new(None),
            })
        })
        .collect();
    Arc::new(move |board| match boards.get(board) {
        Some(Some(b)) => b
            .read()
            .map_err(|e| format!("touch socket {}: {e}", b.path.display())),
        Some(None) => Err(format!(
            "board {board} has no touch socket (its sensors.simulator_sockets entry is \"\")"
        )),
        None => Err(format!(
            "board {board} has no entry in sensors.simulator_sockets ({} entries)",
            boards.len()
        )),
    })
}
